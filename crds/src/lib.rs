//! API types of StaticPodSet (`staticpods.dev/v1alpha1`), shared by the operator and the node agent.
//!
//! Two kinds live here:
//! - [`StaticPodSet`]: what users write — a pod template and the nodes that must run it as a static pod.
//! - [`NodeStaticPods`]: one per node, written by the operator and read by that node's agent only;
//!   it carries exactly the manifests that node must run, and the agent reports back in its status.
//!
//! The CRD YAML under `crds/` is generated from these types by `cargo run -p staticpodset-api --bin crdgen`.

pub mod keys;
pub mod node_static_pods;
pub mod static_pod_set;

pub use node_static_pods::*;
pub use static_pod_set::*;
