//! Rendering a StaticPodSet into the static pod manifest every selected node receives.
//!
//! The manifest is the same for every node: the kubelet itself appends `-<node name>` to the pod's
//! name for the mirror pod and sets `spec.nodeName`. So a set renders once per revision, and the
//! only per-node question is whether the mirror pod's name is acceptable ([`name_problem`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use staticpodset_api::digest::manifest_digest;
// Re-exported: the operator hashes other things (configuration bundles, long field managers) the
// same way, and the agent checks manifests with this very implementation.
pub use staticpodset_api::digest::{canonical_json, revision_of, REVISION_LEN};
use staticpodset_api::keys::{
    manifest_file_name, revision_object_name, ANNOTATION_REVISION, ANNOTATION_SET, LABEL_SET_NAME,
};
use staticpodset_api::AssignedPod;

/// The longest mirror pod name (`<set name>-<node name>`) we accept: a DNS label. The kubelet
/// derives the pod's hostname from its name and truncates it past 63 characters, and tools that
/// copy pod names into label values break past 63 too. Rejecting early beats a pod whose hostname
/// silently differs from its name.
pub const MAX_MIRROR_POD_NAME: usize = 63;

/// A set rendered at one revision.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// First [`REVISION_LEN`] hex characters of the SHA-256 of the canonical manifest without its
    /// revision annotation: the first characters of `digest`.
    pub revision: String,
    /// The full digest of the manifest ([`manifest_digest`]): what nodes check the manifest
    /// against before they run it.
    pub digest: String,
    /// The complete Pod manifest, revision annotation included.
    pub manifest: Value,
    /// The file the agent writes it to.
    pub file_name: String,
}

impl Rendered {
    /// The entry this set puts into every selected node's `NodeStaticPods.spec.pods`: it names
    /// the StaticPodRevision that holds the manifest.
    pub fn assigned_pod(&self, namespace: &str, name: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: namespace.to_string(),
            set_name: name.to_string(),
            revision: self.revision.clone(),
            revision_name: revision_object_name(name, &self.revision),
            digest: Some(self.digest.clone()),
            file_name: self.file_name.clone(),
            ..Default::default()
        }
    }
}

/// Why a template cannot be rendered at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The template has no pod spec.
    #[error("spec.template.spec: required")]
    MissingSpec,
    /// The pod did not serialize into a JSON object (a bug in the types, never user input).
    #[error("rendering the pod of {set}: {message}")]
    Serialize {
        /// `<namespace>/<name>` of the set.
        set: String,
        /// What serde reported.
        message: String,
    },
}

/// Renders the static pod of set `namespace/name`.
///
/// The pod is named after the set, lives in the set's namespace, carries the template's labels
/// plus [`LABEL_SET_NAME`], and the template's annotations plus [`ANNOTATION_SET`] and
/// [`ANNOTATION_REVISION`]. Our keys win over the template's, since the agent and status rely on
/// them. Other template metadata (generateName, finalizers, owner references...) means nothing
/// to a static pod and is dropped.
pub fn render(
    namespace: &str,
    name: &str,
    template: &PodTemplateSpec,
) -> Result<Rendered, RenderError> {
    let spec = template.spec.clone().ok_or(RenderError::MissingSpec)?;
    let template_meta = template.metadata.clone().unwrap_or_default();

    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    labels.insert(LABEL_SET_NAME.to_string(), name.to_string());
    let mut annotations: BTreeMap<String, String> = template_meta.annotations.unwrap_or_default();
    annotations.insert(ANNOTATION_SET.to_string(), format!("{namespace}/{name}"));
    // The revision is a hash of everything else, so it cannot be part of its own input.
    annotations.remove(ANNOTATION_REVISION);

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let mut manifest = serde_json::to_value(&pod).map_err(|e| RenderError::Serialize {
        set: format!("{namespace}/{name}"),
        message: e.to_string(),
    })?;
    let digest = manifest_digest(&manifest);
    let revision = digest.chars().take(REVISION_LEN).collect::<String>();
    let annotations = manifest
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RenderError::Serialize {
            set: format!("{namespace}/{name}"),
            message: "metadata.annotations is not an object".into(),
        })?;
    annotations.insert(
        ANNOTATION_REVISION.to_string(),
        Value::String(revision.clone()),
    );
    Ok(Rendered {
        revision,
        digest,
        manifest,
        file_name: manifest_file_name(namespace, name),
    })
}

/// The name the kubelet gives the mirror pod: `<set name>-<node name, lowercased>`.
pub fn mirror_pod_name(set_name: &str, node_name: &str) -> String {
    format!("{set_name}-{}", node_name.to_lowercase())
}

/// Why set `set_name` cannot run on node `node_name`, if it cannot: the mirror pod's name would
/// exceed [`MAX_MIRROR_POD_NAME`]. The naming rule: `len(set name) + 1 + len(node name) <= 63`.
pub fn name_problem(set_name: &str, node_name: &str) -> Option<String> {
    let name = mirror_pod_name(set_name, node_name);
    (name.len() > MAX_MIRROR_POD_NAME).then(|| {
        format!(
            "mirror pod name {name:?} would be {} characters, over the limit of {MAX_MIRROR_POD_NAME}; \
             shorten the set name to at most {} characters for this node",
            name.len(),
            MAX_MIRROR_POD_NAME.saturating_sub(node_name.len() + 1)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use serde_json::json;

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "vip".to_string())])),
                annotations: Some(BTreeMap::from([("team".to_string(), "net".to_string())])),
                name: Some("ignored".into()),
                namespace: Some("ignored-too".into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "vip".into(),
                    image: Some("registry.example/vip:1.0".into()),
                    ..Default::default()
                }],
                host_network: Some(true),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn renders_name_namespace_labels_annotations() {
        let r = render("kube-system", "vip", &template()).unwrap();
        let m = &r.manifest;
        assert_eq!(m["apiVersion"], "v1");
        assert_eq!(m["kind"], "Pod");
        assert_eq!(m["metadata"]["name"], "vip");
        assert_eq!(m["metadata"]["namespace"], "kube-system");
        assert_eq!(m["metadata"]["labels"]["app"], "vip");
        assert_eq!(m["metadata"]["labels"][LABEL_SET_NAME], "vip");
        assert_eq!(m["metadata"]["annotations"]["team"], "net");
        assert_eq!(
            m["metadata"]["annotations"][ANNOTATION_SET],
            "kube-system/vip"
        );
        assert_eq!(
            m["metadata"]["annotations"][ANNOTATION_REVISION],
            r.revision.as_str()
        );
        assert_eq!(m["spec"]["hostNetwork"], true);
        assert_eq!(
            m["spec"]["containers"][0]["image"],
            "registry.example/vip:1.0"
        );
        assert!(m.get("status").is_none());
        assert_eq!(r.file_name, "staticpodset_kube-system_vip.yaml");
        let entry = r.assigned_pod("kube-system", "vip");
        assert_eq!(entry.revision, r.revision);
        assert_eq!(entry.revision_name, format!("vip-{}", r.revision));
        assert_eq!(entry.file_name, r.file_name);
        assert_eq!(r.revision.len(), REVISION_LEN);
        assert!(r.revision.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn revision_is_the_hash_of_the_manifest_without_itself() {
        let r = render("ns", "set", &template()).unwrap();
        let mut without = r.manifest.clone();
        without["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(ANNOTATION_REVISION);
        assert_eq!(revision_of(&without), r.revision);
    }

    #[test]
    fn the_digest_is_of_the_stamped_manifest_and_begins_with_the_revision() {
        let r = render("ns", "set", &template()).unwrap();
        assert_eq!(r.digest.len(), 64);
        assert!(
            r.digest.starts_with(&r.revision),
            "{} {}",
            r.digest,
            r.revision
        );
        // What the agent recomputes from the manifest it is handed, annotation and all.
        assert_eq!(manifest_digest(&r.manifest), r.digest);
        assert_eq!(revision_of(&r.manifest), r.revision);
        assert_eq!(
            r.assigned_pod("ns", "set").digest.as_deref(),
            Some(r.digest.as_str())
        );
    }

    #[test]
    fn our_keys_win_over_the_template() {
        let mut t = template();
        let meta = t.metadata.as_mut().unwrap();
        meta.labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SET_NAME.into(), "evil".into());
        let annotations = meta.annotations.as_mut().unwrap();
        annotations.insert(ANNOTATION_SET.into(), "other/set".into());
        annotations.insert(ANNOTATION_REVISION.into(), "0000000000".into());
        let r = render("ns", "set", &t).unwrap();
        assert_eq!(r.manifest["metadata"]["labels"][LABEL_SET_NAME], "set");
        assert_eq!(
            r.manifest["metadata"]["annotations"][ANNOTATION_SET],
            "ns/set"
        );
        assert_eq!(
            r.manifest["metadata"]["annotations"][ANNOTATION_REVISION],
            r.revision.as_str()
        );
        // A revision annotation in the template does not feed the hash.
        assert_eq!(
            r.revision,
            render("ns", "set", &template()).unwrap().revision
        );
    }

    #[test]
    fn revision_is_stable() {
        let a = render("ns", "set", &template()).unwrap();
        let b = render("ns", "set", &template()).unwrap();
        assert_eq!(a, b);
        // Template metadata that is dropped does not change the revision.
        let mut t = template();
        t.metadata.as_mut().unwrap().name = Some("different".into());
        assert_eq!(render("ns", "set", &t).unwrap().revision, a.revision);
    }

    #[test]
    fn revision_changes_with_content_and_identity() {
        let base = render("ns", "set", &template()).unwrap().revision;
        let mut image = template();
        image.spec.as_mut().unwrap().containers[0].image = Some("registry.example/vip:1.1".into());
        let mut label = template();
        label
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "x".into());
        let mut annotation = template();
        annotation
            .metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .insert("note".into(), "y".into());
        let others = [
            render("ns", "set", &image).unwrap().revision,
            render("ns", "set", &label).unwrap().revision,
            render("ns", "set", &annotation).unwrap().revision,
            render("ns2", "set", &template()).unwrap().revision,
            render("ns", "set2", &template()).unwrap().revision,
        ];
        for other in &others {
            assert_ne!(*other, base);
        }
    }

    #[test]
    fn missing_spec_is_an_error() {
        let mut t = template();
        t.spec = None;
        assert_eq!(render("ns", "set", &t), Err(RenderError::MissingSpec));
        t.metadata = None;
        assert_eq!(render("ns", "set", &t), Err(RenderError::MissingSpec));
    }

    #[test]
    fn template_without_metadata_renders() {
        let mut t = template();
        t.metadata = None;
        let r = render("ns", "set", &t).unwrap();
        assert_eq!(r.manifest["metadata"]["labels"][LABEL_SET_NAME], "set");
    }

    #[test]
    fn known_revision_value() {
        // Pins the hash function and the canonical form: changing either restarts every static
        // pod in every cluster on upgrade, so it must be a deliberate decision.
        assert_eq!(revision_of(&json!({"b": 1, "a": "x"})), "cdab067e9f");
    }

    #[test]
    fn known_rendered_revision_value() {
        // Pinned from the implementation before the digest moved into the API crate: a rendered
        // set keeps its revision across that move (and any later one), so no node restarts its
        // pod on upgrade.
        assert_eq!(
            render("kube-system", "vip", &template()).unwrap().revision,
            "1fdd584077"
        );
        assert_eq!(revision_of(&Value::String("ns/vip".into())), "3fd4bc2a74");
    }

    #[test]
    fn naming_rule() {
        assert_eq!(mirror_pod_name("vip", "Node-1"), "vip-node-1");
        let node = "n".repeat(50);
        // 12 + 1 + 50 = 63: the limit itself is fine.
        assert_eq!(name_problem(&"s".repeat(12), &node), None);
        let problem = name_problem(&"s".repeat(13), &node).unwrap();
        assert!(problem.contains("64 characters"), "{problem}");
        assert!(problem.contains("at most 12 characters"), "{problem}");
        // A node name that alone is too long still yields a sensible message.
        let problem = name_problem("a", &"n".repeat(70)).unwrap();
        assert!(problem.contains("at most 0 characters"), "{problem}");
    }
}
