//! The StaticPodSet operator: renders each StaticPodSet into a static pod manifest and
//! distributes it to the selected nodes through one NodeStaticPods object per node, then sums
//! what the node agents report back into the set's status.
//!
//! Pure logic (tested without a server): [`node_match`], [`render`], [`planner`], [`revisions`],
//! [`rollout`], [`rollout_state`], [`status`], [`deletion`], [`triggers`]. What a static pod may contain is decided by
//! the API crate's `validation` module, shared with the CRD's CEL rules. I/O, kept thin:
//! [`controller`], [`node_writes`], [`node_objects`], [`leader`], [`http`].

pub mod cli;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod decide;
pub mod deletion;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod node_match;
pub mod node_objects;
pub mod node_writes;
pub mod planner;
pub mod render;
pub mod revision_writes;
pub mod revisions;
pub mod rollback;
pub mod rollout;
pub mod rollout_state;
pub mod status;
pub mod telemetry;
pub mod triggers;

pub use error::Error;
