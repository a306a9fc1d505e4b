//! The `StaticPodRevision` kind: one immutable, numbered revision of a StaticPodSet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One revision of a StaticPodSet: the rendered static pod, and the template it came from.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "staticpods.dev",
    version = "v1alpha1",
    kind = "StaticPodRevision",
    plural = "staticpodrevisions",
    shortname = "spr",
    namespaced,
    doc = "One revision of a StaticPodSet: the static pod every node of the set runs at that revision, and the set's pod template it was rendered from. The operator creates one per distinct rendered pod, named `<set name>-<hash>`, labelled `staticpods.dev/set-name: <set name>` and owned by the set, so deleting the set deletes its history. The hash, template and manifest never change; the revision number does: applying a template equal to an older revision reuses that revision and gives it the next number, as DaemonSets do with ControllerRevisions. Node agents read the manifest from here (NodeStaticPods entries name the revision). History: `kubectl get staticpodrevisions -l staticpods.dev/set-name=<set>`; rollback: annotate the set with `staticpods.dev/rollback-to: \"<revision number>\"`.",
    printcolumn = r#"{"name":"Set","type":"string","jsonPath":".spec.setName"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","jsonPath":".spec.hash"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.digest) || self.digest.startsWith(self.hash)",
    "message": "digest must begin with hash: the hash is the digest's first 10 characters",
}]))]
pub struct StaticPodRevisionSpec {
    /// The StaticPodSet (in the same namespace) this is a revision of. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [immutable("setName")]))]
    pub set_name: String,

    /// The revision number: 1 for the set's first revision, then one more than the newest for
    /// every new one. When the set's template goes back to an older revision, that revision gets
    /// the next number instead of a copy being made, so the highest number is always the newest.
    /// This number is what `staticpods.dev/rollback-to` names.
    pub revision: i64,

    /// The content hash of `manifest`: the first 10 hex characters of the SHA-256 of the
    /// rendered pod without its revision annotation, which carries this same value. NodeStaticPods
    /// entries and mirror pods show it as `revision`. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [immutable("hash")]))]
    pub hash: String,

    /// The set's `spec.template` this revision was rendered from, kept so that a rollback
    /// restores it exactly. Immutable. Its fields are those of a pod template: see
    /// `kubectl explain staticpodset.spec.template`.
    #[schemars(
        schema_with = "crate::node_static_pods::any_object",
        extend("x-kubernetes-validations" = [immutable("template")])
    )]
    pub template: serde_json::Value,

    /// The complete static pod manifest (a Pod) nodes run at this revision, as the node agents
    /// write it into the kubelet's staticPodPath. Immutable.
    #[schemars(
        schema_with = "crate::node_static_pods::any_object",
        extend("x-kubernetes-validations" = [immutable("manifest")])
    )]
    pub manifest: serde_json::Value,

    /// The full content digest of `manifest`: the lowercase hex SHA-256 (64 characters) of the
    /// rendered pod without its revision annotation, of which `hash` is the first 10 characters.
    /// Written by the operator when it creates the revision; absent from revisions created by
    /// operators from before it. The operator copies it into the NodeStaticPods entries that name
    /// this revision, and node agents write or serve the manifest only if its digest is the
    /// entry's. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[0-9a-f]{64}$"),
        extend("x-kubernetes-validations" = [immutable("digest")])
    )]
    pub digest: Option<String>,
}

/// The CEL transition rule that keeps field `name` as it was created.
fn immutable(name: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "self == oldSelf",
        "message": format!("{name} is immutable: a revision never changes; a different pod is a new revision"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn hash_template_manifest_and_set_name_are_immutable_and_required() {
        let crd = serde_json::to_value(StaticPodRevision::crd()).expect("CRD serializes");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for field in ["setName", "hash", "template", "manifest"] {
            let rules = &spec["properties"][field]["x-kubernetes-validations"];
            assert_eq!(rules[0]["rule"], "self == oldSelf", "{field}");
            assert!(
                rules[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("{field} is immutable"))),
                "{field}"
            );
        }
        // The number is bumped when an old revision is reused.
        assert!(spec["properties"]["revision"]
            .get("x-kubernetes-validations")
            .is_none());
        // A transition rule does not run when the field is removed, so every field is required.
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for field in ["setName", "revision", "hash", "template", "manifest"] {
            assert!(required.contains(&field), "{field}: {required:?}");
        }
        assert_eq!(
            spec["properties"]["template"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn the_digest_is_optional_immutable_and_extends_the_hash() {
        let crd = serde_json::to_value(StaticPodRevision::crd()).expect("CRD serializes");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let digest = &spec["properties"]["digest"];
        assert_eq!(digest["pattern"], "^[0-9a-f]{64}$");
        assert_eq!(
            digest["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        // Revisions created before the field existed have none.
        let required = spec["required"].as_array().expect("required");
        assert!(!required.iter().any(|f| f == "digest"), "{required:?}");
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "!has(self.digest) || self.digest.startsWith(self.hash)"
        );
        let old: StaticPodRevisionSpec = serde_json::from_value(serde_json::json!({
            "setName": "s", "revision": 1, "hash": "h", "template": {}, "manifest": {}
        }))
        .expect("a revision without a digest parses");
        assert_eq!(old.digest, None);
        assert!(serde_json::to_value(&old).expect("serializes")["digest"].is_null());
    }
}
