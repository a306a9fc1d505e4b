//! The StaticPodSet node agent: makes the kubelet's static pod directory match the node's
//! NodeStaticPods, and reports what the kubelet runs.
//!
//! One sync is one pipeline, [`pipeline`]: observe → plan → gates → execute. Pure decisions over
//! plain data sit in the middle ([`dir_plan`], [`revisions`], [`config_files`], [`last_known`], [`fallback`], [`prepull`],
//! [`stop_first`], [`served_pods`], [`mirror_pods`], [`report`], [`manifest_yaml`]); I/O is at
//! the edges ([`manifest_dir`], [`resources_dir`], [`dir_watcher`], [`api_reads`],
//! [`config_bundles`], [`state_file`], [`fallback_check`], [`cri`], [`url_mode`], [`url_source`], [`http`]); [`agent`] wires the loop.

#![deny(missing_docs)]

pub mod agent;
pub mod api_reads;
pub mod blocking;
pub mod config_bundles;
pub mod config_files;
pub mod cri;
pub mod dir_plan;
pub mod dir_watcher;
pub mod fallback;
pub mod fallback_check;
pub mod http;
pub mod last_known;
pub mod manifest_dir;
pub mod manifest_yaml;
pub mod metrics;
pub mod mirror_pods;
pub mod pipeline;
pub mod prepull;
pub mod report;
pub mod resources_dir;
pub mod revisions;
pub mod served_pods;
pub mod state_file;
pub mod stop_first;
pub mod surge;
pub mod url_mode;
pub mod url_source;
