//! The StaticPodSet operator: renders each StaticPodSet into a static pod manifest and
//! distributes it to the selected nodes through one NodeStaticPods object per node, then sums
//! what the node agents report back into the set's status.
//!
//! One reconcile reads the caches into a [`decide::Snapshot`], lets the pure [`decide`] make
//! the [`decide::Decision`], and has [`controller`] carry it out.
//!
//! Pure logic (tested without a server): [`decide`] (one reconcile), [`admission`] (the mirror pod the cluster must admit), [`rollout`] (the rolling-update
//! planner) with [`rollout_state`] (its input and output), [`planner`] (node-object writes),
//! [`conditions`] (every condition and reason the set shows), [`status`], [`render`],
//! [`revision_size`] (how large a pod may be),
//! [`revisions`], [`node_match`], [`taints`], [`deletion`], [`triggers`]. What a static pod may contain is
//! decided by the API crate's `validation` module, shared with the CRD's CEL rules. I/O, kept
//! thin: [`controller`] (watches, reconcile, error policy), [`admission_check`], [`node_writes`], [`revision_writes`],
//! [`rollback`], [`config`] (its reads and bundles), [`node_objects`], [`leader`], [`http`];
//! [`context`] holds what a reconcile is given.
//!
//! [`plugin`] is the `kubectl staticpodset` plugin, a second binary of this crate that shares the
//! condition and reason constants above.

pub mod admission;
pub mod admission_check;
pub mod backoff;
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
pub mod node_writer;
pub mod node_writes;
pub mod planner;
pub mod plugin;
pub mod render;
pub mod revision_size;
pub mod revision_writes;
pub mod revisions;
pub mod rollback;
pub mod rollout;
pub mod rollout_state;
pub mod sent_writes;
pub mod set_metrics;
pub mod status;
pub mod taints;
pub mod telemetry;
pub mod triggers;

pub use error::Error;
