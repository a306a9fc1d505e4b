//! What a StaticPodSet may not contain, because the kubelet would refuse to run it as a static pod
//! or could not publish its mirror pod.
//!
//! The rules live in one table (`FORBIDDEN`) that is used twice:
//! - as CEL rules (`x-kubernetes-validations`) in the generated CRD, so the API server rejects a
//!   bad set when it is created or updated (see [`crate::crds`]);
//! - as plain Rust in [`template_problems`] and [`set_problems`], so the operator can report sets
//!   that reached the cluster without those rules (an older CRD, a CRD applied by hand) as a
//!   condition or an Event instead of writing manifests the kubelet refuses.
//!
//! Background (kubelet 1.34+): a static pod may not reference any other API object. The kubelet
//! refuses such a manifest outright ("static pods may not reference ..."), and on older kubelets
//! the NodeRestriction admission plugin refuses its mirror pod, so the pod runs unseen by the API.

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Map, Value};

use crate::{StaticPodSet, StaticPodSetSpec};

/// Longest StaticPodSet name accepted. The kubelet names the mirror pod `<set name>-<node name>`
/// and uses that name, cut to 63 characters, as the pod's hostname; 40 characters keep the whole
/// set name and part of the node name in it.
pub const MAX_SET_NAME_LENGTH: usize = 40;
/// Most items in each of `containers`, `initContainers` and `ephemeralContainers` of the template.
pub const MAX_CONTAINERS: usize = 64;
/// Most items in `volumes` of the template.
pub const MAX_VOLUMES: usize = 256;
/// Most items in `env` of one container.
pub const MAX_ENV: usize = 512;
/// Most items in `envFrom` of one container.
pub const MAX_ENV_FROM: usize = 64;
/// Most items in `projected.sources` of one volume.
pub const MAX_PROJECTED_SOURCES: usize = 64;

/// The message for a set name that breaks the naming rule; also the CEL rule's message.
pub(crate) const SET_NAME_MESSAGE: &str = "metadata.name must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, no dots) of at most 40 characters: it names the static pod, whose mirror pods are named and hostnamed <set name>-<node name>";

/// The CEL rule enforcing [`SET_NAME_MESSAGE`] on the root of a StaticPodSet.
pub(crate) const SET_NAME_RULE: &str =
    "size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// The pod spec's container lists, with the item limit the CRD puts on each.
pub(crate) const CONTAINER_LISTS: [&str; 3] =
    ["containers", "initContainers", "ephemeralContainers"];

/// Where in a pod spec a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The pod spec itself (`spec.template.spec`).
    PodSpec,
    /// One item of `volumes`.
    Volume,
    /// One item of `volumes[].projected.sources`.
    ProjectedSource,
    /// `valueFrom` of one `env` item, in any container list.
    EnvValueFrom,
    /// One `envFrom` item, in any container list.
    EnvFrom,
}

/// What makes a field forbidden.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Forbid {
    /// The field is set at all.
    Present,
    /// The list or string is set and not empty.
    NonEmpty,
    /// The boolean is `true`.
    True,
    /// The object is set and has this field set.
    Child(&'static str),
}

/// One field a static pod may not use.
#[derive(Debug)]
pub(crate) struct Forbidden {
    /// Where the field sits.
    pub scope: Scope,
    /// The field's JSON name within its scope.
    pub field: &'static str,
    /// When it is a problem.
    pub forbid: Forbid,
    /// What the user reads; names the field.
    pub message: &'static str,
}

const fn forbid(
    scope: Scope,
    field: &'static str,
    forbid: Forbid,
    message: &'static str,
) -> Forbidden {
    Forbidden {
        scope,
        field,
        forbid,
        message,
    }
}

/// Every field a static pod may not use. Mirrors `HasAPIObjectReference` and
/// `VisitPodSecretNames` of `k8s.io/kubernetes/pkg/api/pod`, which the kubelet and NodeRestriction use.
pub(crate) const FORBIDDEN: &[Forbidden] = &[
    // The pod spec.
    forbid(Scope::PodSpec, "serviceAccountName", Forbid::NonEmpty,
        "serviceAccountName must be empty: static pods cannot use a ServiceAccount"),
    forbid(Scope::PodSpec, "serviceAccount", Forbid::NonEmpty,
        "serviceAccount (the deprecated serviceAccountName) must be empty: static pods cannot use a ServiceAccount"),
    forbid(Scope::PodSpec, "automountServiceAccountToken", Forbid::True,
        "automountServiceAccountToken cannot be true: static pods never get a service account token"),
    forbid(Scope::PodSpec, "imagePullSecrets", Forbid::NonEmpty,
        "imagePullSecrets must be empty: static pods cannot reference Secrets; give the node's container runtime the registry credentials instead"),
    forbid(Scope::PodSpec, "ephemeralContainers", Forbid::NonEmpty,
        "ephemeralContainers must be empty: static pods cannot have ephemeral containers"),
    forbid(Scope::PodSpec, "resourceClaims", Forbid::NonEmpty,
        "resourceClaims must be empty: static pods cannot reference ResourceClaims"),
    // Volumes.
    // ConfigMap and Secret volumes become files on the node (see `config_files`); every key is
    // written, so `items` (a selection and renaming of keys) is not supported.
    forbid(Scope::Volume, "secret", Forbid::Child("items"),
        "secret.items is not supported: StaticPodSet writes every key of the Secret as a file of the volume"),
    forbid(Scope::Volume, "configMap", Forbid::Child("items"),
        "configMap.items is not supported: StaticPodSet writes every key of the ConfigMap as a file of the volume"),
    forbid(Scope::Volume, "persistentVolumeClaim", Forbid::Present,
        "persistentVolumeClaim volumes are not allowed: static pods cannot reference PersistentVolumeClaims"),
    forbid(Scope::Volume, "ephemeral", Forbid::Present,
        "ephemeral volumes are not allowed: static pods cannot use PersistentVolumeClaims"),
    forbid(Scope::Volume, "csi", Forbid::Present,
        "csi volumes are not allowed: static pods cannot use CSI inline volumes"),
    forbid(Scope::Volume, "glusterfs", Forbid::Present,
        "glusterfs volumes are not allowed: static pods cannot reference Endpoints"),
    forbid(Scope::Volume, "azureFile", Forbid::Present,
        "azureFile volumes are not allowed: they need a Secret, and static pods cannot reference Secrets"),
    forbid(Scope::Volume, "cephfs", Forbid::Child("secretRef"), "cephfs.secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::Volume, "cinder", Forbid::Child("secretRef"), "cinder.secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::Volume, "flexVolume", Forbid::Child("secretRef"), "flexVolume.secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::Volume, "iscsi", Forbid::Child("secretRef"), "iscsi.secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::Volume, "rbd", Forbid::Child("secretRef"), "rbd.secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::Volume, "scaleIO", Forbid::Child("secretRef"),
        "scaleIO.secretRef is not allowed: static pods cannot reference Secrets, so they cannot use scaleIO volumes"),
    forbid(Scope::Volume, "storageos", Forbid::Child("secretRef"), "storageos.secretRef is not allowed: static pods cannot reference Secrets"),
    // Projected volume sources; only downwardAPI remains.
    forbid(Scope::ProjectedSource, "secret", Forbid::Present, "secret is not allowed in projected volumes: static pods cannot reference Secrets"),
    forbid(Scope::ProjectedSource, "configMap", Forbid::Present,
        "configMap is not allowed in projected volumes: static pods cannot reference ConfigMaps"),
    forbid(Scope::ProjectedSource, "serviceAccountToken", Forbid::Present,
        "serviceAccountToken is not allowed in projected volumes: static pods never get a service account token"),
    forbid(Scope::ProjectedSource, "clusterTrustBundle", Forbid::Present,
        "clusterTrustBundle is not allowed in projected volumes: static pods cannot reference ClusterTrustBundles"),
    forbid(Scope::ProjectedSource, "podCertificate", Forbid::Present,
        "podCertificate is not allowed in projected volumes: static pods cannot request pod certificates"),
    // Environment, in every container list.
    forbid(Scope::EnvValueFrom, "secretKeyRef", Forbid::Present, "env valueFrom.secretKeyRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::EnvValueFrom, "configMapKeyRef", Forbid::Present,
        "env valueFrom.configMapKeyRef is not allowed: static pods cannot reference ConfigMaps"),
    forbid(Scope::EnvFrom, "secretRef", Forbid::Present, "envFrom secretRef is not allowed: static pods cannot reference Secrets"),
    forbid(Scope::EnvFrom, "configMapRef", Forbid::Present, "envFrom configMapRef is not allowed: static pods cannot reference ConfigMaps"),
];

impl Forbidden {
    /// The CEL expression, true when the object in scope (`self`) is acceptable.
    pub(crate) fn cel_rule(&self) -> String {
        let f = self.field;
        match self.forbid {
            Forbid::Present => format!("!has(self.{f})"),
            Forbid::NonEmpty => format!("!has(self.{f}) || size(self.{f}) == 0"),
            Forbid::True => format!("!has(self.{f}) || !self.{f}"),
            Forbid::Child(c) => format!("!has(self.{f}) || !has(self.{f}.{c})"),
        }
    }

    /// The offending field relative to the scope, as `.field` or `.field.child`; used as the CEL
    /// rule's `fieldPath` so the API server names it in the error.
    pub(crate) fn field_path(&self) -> String {
        match self.forbid {
            Forbid::Child(c) => format!(".{}.{c}", self.field),
            _ => format!(".{}", self.field),
        }
    }

    /// Whether `obj`, a JSON object in this rule's scope, breaks the rule. Same logic as
    /// [`Self::cel_rule`].
    fn broken_by(&self, obj: &Map<String, Value>) -> bool {
        let value = match obj.get(self.field) {
            None | Some(Value::Null) => return false,
            Some(value) => value,
        };
        match self.forbid {
            Forbid::Present => true,
            Forbid::NonEmpty => match value {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            },
            Forbid::True => value == &Value::Bool(true),
            Forbid::Child(c) => value.get(c).is_some_and(|v| !v.is_null()),
        }
    }
}

/// Every reason `spec` cannot run as the static pod of a StaticPodSet, one `path: message` line
/// each, with paths from the set (`spec.template.spec.volumes[0].secret: ...`). Empty means valid.
///
/// Reports what the CRD's CEL rules reject plus what they cannot (see [`pod_spec_problems`]).
pub fn template_problems(spec: &PodSpec) -> Vec<String> {
    pod_spec_problems(spec, "spec.template.spec")
}

/// Like [`template_problems`], for a pod spec found at `at` (for example `spec` in a rendered Pod).
///
/// Beyond the CRD's CEL rules and list limits it reports:
/// - a template without containers;
/// - volumes and projected sources of no type this API version knows: the API server drops fields
///   it does not know, and the kubelet refuses volumes of unknown type.
///
/// It does not repeat the rest of Pod validation (names, ports, resources, ...), which the kubelet
/// applies to the manifest as it does to any pod.
pub fn pod_spec_problems(spec: &PodSpec, at: &str) -> Vec<String> {
    match serde_json::to_value(spec) {
        Ok(Value::Object(spec)) => json_pod_spec_problems(&spec, at),
        Ok(_) => vec![format!("{at}: is not an object")],
        Err(e) => vec![format!("{at}: cannot be inspected: {e}")],
    }
}

/// The message for a template that cannot run twice on one node while the set updates with
/// surge; also the CEL rule's message.
pub(crate) const SURGE_PORTS_MESSAGE: &str = "with maxSurge, two pods of the set run on a node at once during an update, and they cannot share a hostPort: remove hostPort from every container port (with hostNetwork, every containerPort becomes a hostPort, so declare no ports; the pod itself must then be able to run twice, e.g. listening with SO_REUSEPORT), or set maxSurge to 0";

/// The CEL rule enforcing [`SURGE_PORTS_MESSAGE`] on `spec` of a StaticPodSet.
pub(crate) const SURGE_PORTS_RULE: &str = "!has(self.updateStrategy) || !has(self.updateStrategy.rollingUpdate) || !has(self.updateStrategy.rollingUpdate.maxSurge) || (type(self.updateStrategy.rollingUpdate.maxSurge) == int ? self.updateStrategy.rollingUpdate.maxSurge == 0 : self.updateStrategy.rollingUpdate.maxSurge == '0%') || !has(self.template.spec) || ((!has(self.template.spec.containers) || self.template.spec.containers.all(c, !has(c.ports) || c.ports.all(p, !(has(self.template.spec.hostNetwork) && self.template.spec.hostNetwork) && (!has(p.hostPort) || p.hostPort == 0)))) && (!has(self.template.spec.initContainers) || self.template.spec.initContainers.all(c, !has(c.ports) || c.ports.all(p, !(has(self.template.spec.hostNetwork) && self.template.spec.hostNetwork) && (!has(p.hostPort) || p.hostPort == 0)))))";

/// Most items in `ports` of one container (bounds the cost of [`SURGE_PORTS_RULE`]).
pub const MAX_PORTS: usize = 256;

/// Whether the set updates with surge: `maxSurge` is set and not zero.
pub fn surges(spec: &StaticPodSetSpec) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref())
    {
        None => false,
        Some(IntOrString::Int(i)) => *i != 0,
        Some(IntOrString::String(s)) => s != "0%",
    }
}

/// Why `spec`'s template cannot run twice on one node while the set updates with surge, one
/// `path: message` line per offending port; empty without surge.
pub fn surge_problems(spec: &StaticPodSetSpec) -> Vec<String> {
    let Some(pod) = spec.template.spec.as_ref().filter(|_| surges(spec)) else {
        return Vec::new();
    };
    let host_network = pod.host_network == Some(true);
    let lists = [
        ("containers", Some(&pod.containers)),
        ("initContainers", pod.init_containers.as_ref()),
    ];
    let mut out = Vec::new();
    for (list, containers) in lists {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                if host_network || p.host_port.is_some_and(|h| h != 0) {
                    out.push(format!(
                        "spec.template.spec.{list}[{i}].ports[{j}]: {SURGE_PORTS_MESSAGE}"
                    ));
                }
            }
        }
    }
    out
}

/// Whether `name` breaks the StaticPodSet naming rule; one `metadata.name: message` line if so.
pub fn set_name_problems(name: &str) -> Vec<String> {
    if name.len() <= MAX_SET_NAME_LENGTH && is_dns1123_label(name) {
        Vec::new()
    } else {
        vec![format!("metadata.name: {SET_NAME_MESSAGE} (got {name:?})")]
    }
}

/// Every reason `set` cannot be rendered into static pods: its name and its pod template.
pub fn set_problems(set: &StaticPodSet) -> Vec<String> {
    let mut problems = set
        .metadata
        .name
        .as_deref()
        .map(set_name_problems)
        .unwrap_or_default();
    match &set.spec.template.spec {
        Some(spec) => problems.extend(template_problems(spec)),
        None => problems.push("spec.template.spec: is required".into()),
    }
    problems.extend(surge_problems(&set.spec));
    problems
}

/// Whether `s` is a DNS-1123 label: 1 to 63 of `a-z`, `0-9` and `-`, alphanumeric at both ends.
fn is_dns1123_label(s: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// The objects in the list `field` of `obj`, with their indexes. Non-objects are skipped.
fn objects<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> impl Iterator<Item = (usize, &'a Map<String, Value>)> {
    obj.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| v.as_object().map(|o| (i, o)))
}

/// Appends a problem for the list `field` of `obj` if it has more than `max` items.
fn check_len(obj: &Map<String, Value>, field: &str, max: usize, at: &str, out: &mut Vec<String>) {
    let len = obj.get(field).and_then(Value::as_array).map_or(0, Vec::len);
    if len > max {
        out.push(format!(
            "{at}.{field}: must have at most {max} items, has {len}"
        ));
    }
}

/// Appends a problem for every rule of `scope` that `obj`, found at `at`, breaks.
fn check_scope(scope: Scope, obj: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    for rule in FORBIDDEN.iter().filter(|r| r.scope == scope) {
        if rule.broken_by(obj) {
            out.push(format!("{at}{}: {}", rule.field_path(), rule.message));
        }
    }
}

fn json_pod_spec_problems(spec: &Map<String, Value>, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    check_scope(Scope::PodSpec, spec, at, &mut out);
    if spec
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        out.push(format!(
            "{at}.containers: at least one container is required"
        ));
    }
    for list in CONTAINER_LISTS {
        check_len(spec, list, MAX_CONTAINERS, at, &mut out);
        for (i, container) in objects(spec, list) {
            let at = format!("{at}.{list}[{i}]");
            check_len(container, "env", MAX_ENV, &at, &mut out);
            for (j, env) in objects(container, "env") {
                if let Some(value_from) = env.get("valueFrom").and_then(Value::as_object) {
                    check_scope(
                        Scope::EnvValueFrom,
                        value_from,
                        &format!("{at}.env[{j}].valueFrom"),
                        &mut out,
                    );
                }
            }
            check_len(container, "envFrom", MAX_ENV_FROM, &at, &mut out);
            check_len(container, "ports", MAX_PORTS, &at, &mut out);
            for (j, env_from) in objects(container, "envFrom") {
                check_scope(
                    Scope::EnvFrom,
                    env_from,
                    &format!("{at}.envFrom[{j}]"),
                    &mut out,
                );
            }
        }
    }
    check_len(spec, "volumes", MAX_VOLUMES, at, &mut out);
    for (i, volume) in objects(spec, "volumes") {
        let at = format!("{at}.volumes[{i}]");
        check_scope(Scope::Volume, volume, &at, &mut out);
        if volume.keys().all(|k| k == "name") {
            out.push(format!(
                "{at}: has no volume source this API version knows; the kubelet refuses volumes of unknown type"
            ));
        }
        if let Some(projected) = volume.get("projected").and_then(Value::as_object) {
            let at = format!("{at}.projected");
            check_len(projected, "sources", MAX_PROJECTED_SOURCES, &at, &mut out);
            for (j, source) in objects(projected, "sources") {
                let at = format!("{at}.sources[{j}]");
                check_scope(Scope::ProjectedSource, source, &at, &mut out);
                if source.is_empty() {
                    out.push(format!(
                        "{at}: has no projection this API version knows; the kubelet refuses projected sources of unknown type"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, EnvFromSource, EnvVar, EnvVarSource, PodTemplateSpec, SecretEnvSource,
        SecretKeySelector,
    };
    use serde_json::json;

    /// A pod spec from JSON, as a user would write it.
    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("valid PodSpec")
    }

    fn minimal() -> Value {
        json!({"containers": [{"name": "c", "image": "busybox"}]})
    }

    /// `minimal()` with `patch` merged into the pod spec at top level.
    fn with(patch: Value) -> PodSpec {
        let mut v = minimal();
        if let (Some(v), Value::Object(p)) = (v.as_object_mut(), patch) {
            v.extend(p);
        }
        spec(v)
    }

    #[test]
    fn a_plain_pod_is_valid() {
        let s = with(json!({
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "serviceAccountName": "",
            "imagePullSecrets": [],
            "volumes": [
                {"name": "etc", "hostPath": {"path": "/etc/x"}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "info", "downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "p", "projected": {"sources": [{"downwardAPI": {"items": []}}]}},
                {"name": "ceph", "cephfs": {"monitors": ["m"], "user": "u"}},
                {"name": "n", "nfs": {"server": "s", "path": "/"}},
            ],
            "initContainers": [{"name": "i", "image": "x", "env": [
                {"name": "A", "value": "1"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ]}],
        }));
        assert_eq!(template_problems(&s), Vec::<String>::new());
    }

    /// Each forbidden thing alone, with the path the problem must start with.
    #[test]
    fn every_forbidden_field_is_reported_at_its_path() {
        let cases = [
            (
                json!({"serviceAccountName": "default"}),
                "spec.template.spec.serviceAccountName: ",
            ),
            (
                json!({"serviceAccount": "default"}),
                "spec.template.spec.serviceAccount: ",
            ),
            (
                json!({"automountServiceAccountToken": true}),
                "spec.template.spec.automountServiceAccountToken: ",
            ),
            (
                json!({"imagePullSecrets": [{"name": "regcred"}]}),
                "spec.template.spec.imagePullSecrets: ",
            ),
            (
                json!({"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}),
                "spec.template.spec.ephemeralContainers: ",
            ),
            (
                json!({"resourceClaims": [{"name": "gpu", "resourceClaimName": "gpu"}]}),
                "spec.template.spec.resourceClaims: ",
            ),
            (
                json!({"volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": "p"}]}}]}),
                "spec.template.spec.volumes[0].secret.items: ",
            ),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "p"}]}}]}),
                "spec.template.spec.volumes[0].configMap.items: ",
            ),
            (
                json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]}),
                "spec.template.spec.volumes[0].persistentVolumeClaim: ",
            ),
            (
                json!({"volumes": [{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}),
                "spec.template.spec.volumes[0].ephemeral: ",
            ),
            (
                json!({"volumes": [{"name": "v", "csi": {"driver": "d"}}]}),
                "spec.template.spec.volumes[0].csi: ",
            ),
            (
                json!({"volumes": [{"name": "v", "glusterfs": {"endpoints": "e", "path": "p"}}]}),
                "spec.template.spec.volumes[0].glusterfs: ",
            ),
            (
                json!({"volumes": [{"name": "v", "azureFile": {"secretName": "s", "shareName": "x"}}]}),
                "spec.template.spec.volumes[0].azureFile: ",
            ),
            (
                json!({"volumes": [{"name": "v", "cephfs": {"monitors": ["m"], "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].cephfs.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "cinder": {"volumeID": "i", "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].cinder.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "flexVolume": {"driver": "d", "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].flexVolume.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "iscsi": {"iqn": "q", "lun": 0, "targetPortal": "t", "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].iscsi.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "rbd": {"image": "i", "monitors": ["m"], "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].rbd.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].scaleIO.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "storageos": {"secretRef": {"name": "s"}}}]}),
                "spec.template.spec.volumes[0].storageos.secretRef: ",
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "s"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[0].secret: ",
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"downwardAPI": {}}, {"configMap": {"name": "c"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[1].configMap: ",
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[0].serviceAccountToken: ",
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"clusterTrustBundle": {"name": "b", "path": "p"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[0].clusterTrustBundle: ",
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"podCertificate": {"signerName": "a/b", "keyType": "ED25519"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[0].podCertificate: ",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
                "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: ",
            ),
            (
                json!({"initContainers": [{"name": "i", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}]}),
                "spec.template.spec.initContainers[0].env[1].valueFrom.configMapKeyRef: ",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "envFrom": [{"secretRef": {"name": "s"}}]}]}),
                "spec.template.spec.containers[0].envFrom[0].secretRef: ",
            ),
            (
                json!({"initContainers": [{"name": "i", "image": "x", "envFrom": [{"configMapRef": {"name": "c"}}]}]}),
                "spec.template.spec.initContainers[0].envFrom[0].configMapRef: ",
            ),
        ];
        let mut fired = std::collections::BTreeSet::new();
        for (patch, path) in cases {
            let problems = template_problems(&with(patch.clone()));
            assert_eq!(problems.len(), 1, "{patch}: {problems:#?}");
            assert!(problems[0].starts_with(path), "{patch}: {problems:#?}");
            // The message names the field it is about.
            let field = path
                .trim_end_matches(": ")
                .rsplit('.')
                .next()
                .unwrap_or_default();
            let field = field.split('[').next().unwrap_or_default();
            assert!(
                problems[0][path.len()..].contains(field),
                "{patch}: {problems:#?}"
            );
            fired.insert(problems[0][path.len()..].to_string());
        }
        // A rule added to the table needs a case here.
        for rule in FORBIDDEN {
            assert!(fired.contains(rule.message), "no case for {rule:?}");
        }
    }

    #[test]
    fn typed_specs_are_checked_like_json() {
        let s = PodSpec {
            containers: vec![Container {
                name: "c".into(),
                env: Some(vec![EnvVar {
                    name: "P".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "s".into(),
                            key: "k".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                env_from: Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "s".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let problems = template_problems(&s);
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }

    #[test]
    fn what_cel_does_not_check_is_reported_too() {
        let problems = template_problems(&spec(json!({"containers": []})));
        assert_eq!(
            problems,
            ["spec.template.spec.containers: at least one container is required"]
        );

        let s = with(json!({"volumes": [
            {"name": "unknown"},
            {"name": "p", "projected": {"sources": [{}]}},
        ]}));
        let problems = template_problems(&s);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("spec.template.spec.volumes[0]: has no volume source"));
        assert!(problems[1]
            .starts_with("spec.template.spec.volumes[1].projected.sources[0]: has no projection"));
    }

    #[test]
    fn list_limits_match_the_crd() {
        let env: Vec<Value> = (0..=MAX_ENV)
            .map(|i| json!({"name": format!("E{i}"), "value": "x"}))
            .collect();
        let s = spec(json!({"containers": [{"name": "c", "image": "x", "env": env}]}));
        assert_eq!(
            template_problems(&s),
            ["spec.template.spec.containers[0].env: must have at most 512 items, has 513"]
        );
    }

    #[test]
    fn several_problems_are_all_reported() {
        let s = with(json!({
            "serviceAccountName": "sa",
            "volumes": [{"name": "a", "secret": {"items": []}}, {"name": "b", "configMap": {"items": []}}],
        }));
        assert_eq!(template_problems(&s).len(), 3);
        assert_eq!(
            pod_spec_problems(&s, "spec")[0].split(':').next(),
            Some("spec.serviceAccountName")
        );
    }

    #[test]
    fn set_names_are_short_dns_labels() {
        for ok in ["a", "kube-vip", "x1", &"a".repeat(40)] {
            assert_eq!(set_name_problems(ok), Vec::<String>::new(), "{ok}");
        }
        for bad in ["", "vip.manager", "Vip", "-a", "a-", "a_b", &"a".repeat(41)] {
            let problems = set_name_problems(bad);
            assert_eq!(problems.len(), 1, "{bad}");
            assert!(problems[0].starts_with("metadata.name: "), "{bad}");
        }
    }

    #[test]
    fn set_problems_cover_name_and_template() {
        let mut set = StaticPodSet::new(
            "vip.manager",
            crate::StaticPodSetSpec {
                template: PodTemplateSpec::default(),
                ..Default::default()
            },
        );
        assert_eq!(
            set_problems(&set),
            [
                format!("metadata.name: {SET_NAME_MESSAGE} (got \"vip.manager\")"),
                "spec.template.spec: is required".to_string(),
            ]
        );
        set.metadata.name = Some("vip".into());
        set.spec.template.spec = Some(with(json!({})));
        assert!(set_problems(&set).is_empty());
    }

    #[test]
    fn surge_refuses_ports_that_cannot_be_shared() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let spec = |surge: Option<IntOrString>, pod: serde_json::Value| crate::StaticPodSetSpec {
            template: PodTemplateSpec {
                spec: Some(with(pod)),
                ..Default::default()
            },
            update_strategy: Some(crate::UpdateStrategy {
                rolling_update: Some(crate::RollingUpdate {
                    max_surge: surge,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let host_port = json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]});
        let declared = json!({"hostNetwork": true, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]});
        let plain = json!({"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]});
        let one = Some(IntOrString::Int(1));
        let problems = surge_problems(&spec(one.clone(), host_port.clone()));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("spec.template.spec.containers[0].ports[0]: with maxSurge"));
        assert_eq!(
            surge_problems(&spec(one.clone(), declared.clone())).len(),
            1
        );
        assert!(surge_problems(&spec(one, plain)).is_empty());
        for off in [
            None,
            Some(IntOrString::Int(0)),
            Some(IntOrString::String("0%".into())),
        ] {
            assert!(surge_problems(&spec(off.clone(), host_port.clone())).is_empty());
            assert!(surge_problems(&spec(off, declared.clone())).is_empty());
        }
        assert!(surges(&spec(
            Some(IntOrString::String("10%".into())),
            json!({})
        )));
    }
}
