//! Finishes the StaticPodSet schema that `#[derive(CustomResource)]` generates.
//!
//! Why: the derived schema embeds the complete PodTemplateSpec schema with every upstream field
//! description, about 340 KB of JSON. `kubectl apply` (client-side) copies the whole object into
//! the `kubectl.kubernetes.io/last-applied-configuration` annotation, and the API server caps all
//! annotations of an object at 262,144 bytes, so such a CRD cannot be applied that way. The
//! upstream descriptions add nothing over `kubectl explain pod.spec`, so they are dropped below
//! `spec.template`; the structure, types and formats stay, so the pod template is still fully
//! validated. Our own field docs stay: they are what `kubectl explain staticpodset` prints.
//!
//! It also adds what the derive cannot express:
//! - CEL rules (`x-kubernetes-validations`) rejecting what a static pod may not contain, from the
//!   table in [`crate::validation`], placed on the object that holds the field so the API server's
//!   error names the exact path;
//! - `maxItems` on the lists those rules sit under: the API server estimates the worst-case cost
//!   of every rule times the number of places it may run, and refuses the CRD ("estimated rule cost
//!   exceeds budget") if a rule sits under unbounded lists;
//! - the naming rule for the set itself (see [`crate::validation::MAX_SET_NAME_LENGTH`]);
//! - the rules on `maxUnavailable` and `maxSurge` (see [`MAX_UNAVAILABLE_RULE`] and
//!   [`MAX_SURGE_RULE`]), and the refusal of host ports with surge
//!   ([`crate::validation::SURGE_PORTS_MESSAGE`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};

use crate::validation::{
    Scope, CONTAINER_LISTS, FORBIDDEN, MAX_CONTAINERS, MAX_ENV, MAX_ENV_FROM, MAX_PORTS,
    MAX_PROJECTED_SOURCES, MAX_VOLUMES, SET_NAME_MESSAGE, SET_NAME_RULE, SURGE_PORTS_MESSAGE,
    SURGE_PORTS_RULE,
};

/// maxUnavailable is an integer of at least 1 or a percentage from 1% to 100%. Zero is refused
/// as a DaemonSet refuses it (with no surge possible, 0 would never update anything); a bare
/// number in a string is refused as Kubernetes refuses it.
pub(crate) const MAX_UNAVAILABLE_RULE: &str = "!has(self.maxUnavailable) || (type(self.maxUnavailable) == int ? self.maxUnavailable >= 1 : self.maxUnavailable.matches('^(100|[1-9][0-9]?)%$'))";
/// The message of [`MAX_UNAVAILABLE_RULE`].
pub(crate) const MAX_UNAVAILABLE_MESSAGE: &str =
    "must be an integer of at least 1 or a percentage from \"1%\" to \"100%\"";

/// maxSurge is a non-negative integer or a percentage from 0% to 100%.
pub(crate) const MAX_SURGE_RULE: &str = "!has(self.maxSurge) || (type(self.maxSurge) == int ? self.maxSurge >= 0 : self.maxSurge.matches('^(100|[1-9]?[0-9])%$'))";
/// The message of [`MAX_SURGE_RULE`].
pub(crate) const MAX_SURGE_MESSAGE: &str =
    "must be a non-negative integer or a percentage from \"0%\" to \"100%\"";

/// Applies everything described in the module docs to every version of the StaticPodSet CRD.
pub(crate) fn finish_static_pod_set(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            finish_root(root);
        }
    }
}

fn finish_root(root: &mut JSONSchemaProps) {
    // Declaring metadata.name lets the name rule point at it (`fieldPath`); at the root of a CRD
    // only name and generateName may be declared.
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        ..Default::default()
    };
    root.properties.get_or_insert_default().insert(
        "metadata".into(),
        JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some([("name".to_string(), name)].into()),
            ..Default::default()
        },
    );
    root.x_kubernetes_validations
        .get_or_insert_default()
        .push(ValidationRule {
            rule: SET_NAME_RULE.into(),
            message: Some(SET_NAME_MESSAGE.into()),
            field_path: Some(".metadata.name".into()),
            ..Default::default()
        });

    if let Some(rolling) = property(root, "spec")
        .and_then(|spec| property(spec, "updateStrategy"))
        .and_then(|strategy| property(strategy, "rollingUpdate"))
    {
        rolling
            .x_kubernetes_validations
            .get_or_insert_default()
            .push(ValidationRule {
                rule: MAX_UNAVAILABLE_RULE.into(),
                message: Some(MAX_UNAVAILABLE_MESSAGE.into()),
                field_path: Some(".maxUnavailable".into()),
                reason: Some("FieldValueInvalid".into()),
                ..Default::default()
            });
        rolling
            .x_kubernetes_validations
            .get_or_insert_default()
            .push(ValidationRule {
                rule: MAX_SURGE_RULE.into(),
                message: Some(MAX_SURGE_MESSAGE.into()),
                field_path: Some(".maxSurge".into()),
                reason: Some("FieldValueInvalid".into()),
                ..Default::default()
            });
    }
    if let Some(spec) = property(root, "spec") {
        spec.x_kubernetes_validations
            .get_or_insert_default()
            .push(ValidationRule {
                rule: SURGE_PORTS_RULE.into(),
                message: Some(SURGE_PORTS_MESSAGE.into()),
                field_path: Some(".template.spec".into()),
                reason: Some("FieldValueForbidden".into()),
                ..Default::default()
            });
    }

    let Some(template) = property(root, "spec").and_then(|spec| property(spec, "template")) else {
        return;
    };
    // Keep the description of `template` itself (ours), drop all below it (upstream's).
    for child in template.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(child);
    }
    require(template, "spec");
    if let Some(pod) = property(template, "spec") {
        finish_pod_spec(pod);
    }
}

/// An RFC 1123 label, as Kubernetes validates volume names.
const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

fn finish_pod_spec(pod: &mut JSONSchemaProps) {
    add_rules(pod, Scope::PodSpec);
    if let Some(containers) = property(pod, "containers") {
        containers.min_items = Some(1);
    }
    for list in CONTAINER_LISTS {
        let Some(containers) = property(pod, list) else {
            continue;
        };
        containers.max_items = Some(MAX_CONTAINERS as i64);
        let Some(container) = items(containers) else {
            continue;
        };
        if let Some(ports) = property(container, "ports") {
            ports.max_items = Some(MAX_PORTS as i64);
        }
        if let Some(env) = property(container, "env") {
            env.max_items = Some(MAX_ENV as i64);
            if let Some(value_from) = items(env).and_then(|e| property(e, "valueFrom")) {
                add_rules(value_from, Scope::EnvValueFrom);
            }
        }
        if let Some(env_from) = property(container, "envFrom") {
            env_from.max_items = Some(MAX_ENV_FROM as i64);
            if let Some(item) = items(env_from) {
                add_rules(item, Scope::EnvFrom);
            }
        }
    }
    if let Some(volumes) = property(pod, "volumes") {
        volumes.max_items = Some(MAX_VOLUMES as i64);
        if let Some(volume) = items(volumes) {
            add_rules(volume, Scope::Volume);
            // A volume's name becomes a directory on the node (configuration files) and a key of
            // the configuration bundle: the Pod validation's DNS-label rule, here at admission,
            // before any node or bundle sees it.
            if let Some(name) = property(volume, "name") {
                name.pattern = Some(DNS_LABEL_PATTERN.into());
                name.max_length = Some(63);
            }
            if let Some(sources) =
                property(volume, "projected").and_then(|p| property(p, "sources"))
            {
                sources.max_items = Some(MAX_PROJECTED_SOURCES as i64);
                if let Some(source) = items(sources) {
                    add_rules(source, Scope::ProjectedSource);
                }
            }
        }
    }
}

/// Adds the CEL rule of every table entry of `scope` to `schema`.
fn add_rules(schema: &mut JSONSchemaProps, scope: Scope) {
    let rules = schema.x_kubernetes_validations.get_or_insert_default();
    for forbidden in FORBIDDEN.iter().filter(|f| f.scope == scope) {
        rules.push(ValidationRule {
            rule: forbidden.cel_rule(),
            message: Some(forbidden.message.into()),
            field_path: Some(forbidden.field_path()),
            reason: Some("FieldValueForbidden".into()),
            ..Default::default()
        });
    }
}

/// Removes `description` from `schema` and every schema nested in it.
fn strip_descriptions(schema: &mut JSONSchemaProps) {
    visit(schema, &mut |s| s.description = None);
}

/// Joins the lines of every description in `crd` into paragraphs. Doc comments wrap at 100
/// columns, and `kubectl explain` wraps again, so kept line breaks would cut its output mid-line.
/// Blank lines and lines starting with `- ` stay as they are.
pub(crate) fn unwrap_descriptions(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            visit(root, &mut |s| {
                if let Some(d) = s.description.as_mut() {
                    *d = unwrap_lines(d);
                }
            });
        }
    }
}

fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        match lines.peek() {
            None => {}
            Some(next)
                if line.trim().is_empty() || next.trim().is_empty() || next.starts_with("- ") =>
            {
                out.push('\n')
            }
            Some(_) => out.push(' '),
        }
    }
    out
}

/// Calls `f` on `schema` and on every schema nested in it.
fn visit(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    let mut nested: Vec<&mut JSONSchemaProps> = Vec::new();
    nested.extend(schema.properties.iter_mut().flat_map(|p| p.values_mut()));
    nested.extend(
        schema
            .pattern_properties
            .iter_mut()
            .flat_map(|p| p.values_mut()),
    );
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        nested.extend(list.iter_mut().flatten());
    }
    nested.extend(schema.not.as_deref_mut());
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => nested.push(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => nested.extend(items.iter_mut()),
        None => {}
    }
    for more in [
        &mut schema.additional_properties,
        &mut schema.additional_items,
    ] {
        if let Some(JSONSchemaPropsOrBool::Schema(s)) = more {
            nested.push(s);
        }
    }
    for child in nested {
        visit(child, f);
    }
}

fn property<'a>(schema: &'a mut JSONSchemaProps, name: &str) -> Option<&'a mut JSONSchemaProps> {
    schema.properties.as_mut()?.get_mut(name)
}

fn items(schema: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
    match schema.items.as_mut()? {
        JSONSchemaPropsOrArray::Schema(item) => Some(item),
        JSONSchemaPropsOrArray::Schemas(_) => None,
    }
}

fn require(schema: &mut JSONSchemaProps, field: &str) {
    let required = schema.required.get_or_insert_default();
    if !required.iter().any(|r| r == field) {
        required.push(field.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticPodSet;
    use kube::CustomResourceExt;

    fn finished() -> serde_json::Value {
        let mut crd = StaticPodSet::crd();
        finish_static_pod_set(&mut crd);
        unwrap_descriptions(&mut crd);
        serde_json::to_value(&crd).expect("CRD serializes")
    }

    /// Every JSON object in `v`, depth first.
    fn objects(v: &serde_json::Value, out: &mut Vec<serde_json::Map<String, serde_json::Value>>) {
        match v {
            serde_json::Value::Object(o) => {
                out.push(o.clone());
                o.values().for_each(|v| objects(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| objects(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_rule_lands_where_its_scope_is() {
        let crd = finished();
        let mut all = Vec::new();
        objects(&crd, &mut all);
        let rules: Vec<&serde_json::Value> = all
            .iter()
            .filter_map(|o| o.get("x-kubernetes-validations"))
            .flat_map(|r| r.as_array().into_iter().flatten())
            .collect();
        for forbidden in FORBIDDEN {
            let expected = match forbidden.scope {
                Scope::PodSpec | Scope::Volume | Scope::ProjectedSource => 1,
                // In containers, initContainers and ephemeralContainers.
                Scope::EnvValueFrom | Scope::EnvFrom => 3,
            };
            let found = rules
                .iter()
                .filter(|r| {
                    r["rule"] == forbidden.cel_rule().as_str() && r["message"] == forbidden.message
                })
                .count();
            assert_eq!(found, expected, "{forbidden:?}");
        }
        assert_eq!(
            rules.iter().filter(|r| r["rule"] == SET_NAME_RULE).count(),
            1
        );
    }

    #[test]
    fn template_keeps_its_own_description_only() {
        let crd = finished();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let template = &schema["properties"]["spec"]["properties"]["template"];
        assert!(template["description"]
            .as_str()
            .is_some_and(|d| d.contains("static pod")));
        let mut below = Vec::new();
        objects(&template["properties"], &mut below);
        // `description` as a key of a schema object (not as a property name) must be gone.
        assert!(below
            .iter()
            .all(|o| !o.get("description").is_some_and(|d| d.is_string())));
        // Our own docs outside the template remain.
        assert!(
            schema["properties"]["spec"]["properties"]["nodeSelector"]["description"].is_string()
        );
        assert!(
            schema["properties"]["status"]["properties"]["numberReady"]["description"].is_string()
        );
    }

    #[test]
    fn descriptions_are_paragraphs() {
        assert_eq!(unwrap_lines("a\nb\n\nc\n- d\n- e"), "a b\n\nc\n- d\n- e");
        let crd = finished();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let template =
            schema["properties"]["spec"]["properties"]["template"]["description"].as_str();
        assert!(template.is_some_and(|d| !d.contains('\n')), "{template:?}");
    }

    #[test]
    fn volume_names_are_dns_labels() {
        let crd = finished();
        let name = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["template"]["properties"]["spec"]["properties"]["volumes"]["items"]
            ["properties"]["name"];
        assert_eq!(name["pattern"], DNS_LABEL_PATTERN);
        assert_eq!(name["maxLength"], 63);
    }

    #[test]
    fn lists_under_rules_are_bounded() {
        let crd = finished();
        let pod = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["template"]["properties"]["spec"];
        assert_eq!(pod["properties"]["containers"]["minItems"], 1);
        for list in CONTAINER_LISTS {
            let container = &pod["properties"][list];
            assert_eq!(container["maxItems"], MAX_CONTAINERS, "{list}");
            assert_eq!(
                container["items"]["properties"]["env"]["maxItems"], MAX_ENV,
                "{list}"
            );
            assert_eq!(
                container["items"]["properties"]["envFrom"]["maxItems"], MAX_ENV_FROM,
                "{list}"
            );
        }
        assert_eq!(pod["properties"]["volumes"]["maxItems"], MAX_VOLUMES);
        assert_eq!(
            pod["properties"]["volumes"]["items"]["properties"]["projected"]["properties"]
                ["sources"]["maxItems"],
            MAX_PROJECTED_SOURCES
        );
    }
}
