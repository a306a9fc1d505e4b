//! API types of StaticPodSet (`staticpods.dev/v1alpha1`), shared by the operator and the node agent.
//!
//! Three kinds live here:
//! - [`StaticPodSet`]: what users write — a pod template and the nodes that must run it as a static pod.
//! - [`StaticPodRevision`]: one immutable, numbered revision of a set (the rendered manifest and the
//!   template it came from), owned by the set; the history rollback restores from.
//! - [`NodeStaticPods`]: one per node, written by the operator and read by that node's agent only;
//!   it names the revision of every set the node must run, and the agent reports back in its status.
//!
//! The CRD YAML under `crds/` is generated from these types by
//! `cargo run -p staticpodset-api --bin crdgen -- crds/`; use [`crds`], not `StaticPodSet::crd()`,
//! wherever a CRD is needed (see [`crds`] for why).
//!
//! [`validation`] holds what a static pod may not contain, as CEL rules in the CRD and as Rust.
//! [`digest`] is the content address of a rendered pod, computed by the operator and checked by
//! the agent.

#![deny(missing_docs)]

pub mod config_files;
mod crd_schema;
pub mod digest;
pub mod duration;
pub mod keys;
pub mod node_static_pods;
mod set_key;
pub mod static_pod_revision;
pub mod static_pod_set;
pub mod validation;

pub use node_static_pods::*;
pub use set_key::SetKey;
pub use static_pod_revision::*;
pub use static_pod_set::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CustomResourceDefinitions of StaticPodSet, as they are installed: what `crdgen` prints and
/// what is checked in under `crds/`.
///
/// `StaticPodSet::crd()` alone is the raw derive output: it embeds the whole upstream
/// PodTemplateSpec schema with all its descriptions (about 340 KB of JSON, more than the 256 KiB
/// `kubectl apply` can store in its last-applied-configuration annotation) and lacks the CEL rules
/// that reject what a static pod may not contain. This function drops the upstream descriptions
/// below `spec.template` (the structural validation stays), bounds the lists the rules iterate
/// and adds the rules; see the `crd_schema` module. It also joins our wrapped doc lines into
/// paragraphs for `kubectl explain`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut static_pod_set = StaticPodSet::crd();
    crd_schema::finish_static_pod_set(&mut static_pod_set);
    let mut crds = vec![
        static_pod_set,
        StaticPodRevision::crd(),
        NodeStaticPods::crd(),
    ];
    for crd in &mut crds {
        crd_schema::unwrap_descriptions(crd);
    }
    crds
}

/// The checked-in CRD files: `(file name, YAML)` per CRD of [`crds`], one CRD per file, named
/// `<crd name>.yaml` (for example `staticpodsets.staticpods.dev.yaml`).
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd
                .metadata
                .name
                .as_deref()
                .unwrap_or(&crd.spec.names.plural);
            let yaml = serde_yaml::to_string(crd)?;
            Ok((format!("{name}.yaml"), format!("{CRD_FILE_HEADER}{yaml}")))
        })
        .collect()
}

/// First lines of every generated CRD file.
const CRD_FILE_HEADER: &str = "# Generated from the Rust types in crds/src by \
`cargo run -p staticpodset-api --bin crdgen -- crds/`. Do not edit.\n";
