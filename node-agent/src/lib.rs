//! The StaticPodSet node agent: makes the kubelet's static pod directory match the node's
//! NodeStaticPods, and reports what the kubelet runs.
//!
//! Pure decisions over plain data sit in the middle ([`plan`], [`revisions`], [`prepull`],
//! [`stop_first`], [`mirror_pods`], [`report`], [`manifest_yaml`], [`served_pods`]); I/O is at the
//! edges ([`manifest_dir`], [`dir_watcher`], [`cri`], [`agent`], [`http`], [`url_source`]).

pub mod agent;
pub mod config_files;
pub mod cri;
pub mod dir_watcher;
pub mod http;
pub mod manifest_dir;
pub mod manifest_yaml;
pub mod metrics;
pub mod mirror_pods;
pub mod plan;
pub mod prepull;
pub mod report;
pub mod revisions;
pub mod served_pods;
pub mod stop_first;
pub mod sync;
pub mod url_source;
