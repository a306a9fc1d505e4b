//! `kubectl staticpodset`: a kubectl plugin that shows and steers StaticPodSet rollouts the way
//! `kubectl rollout` does for DaemonSets, and lists each node's revisions. The binary is
//! `src/bin/kubectl-staticpodset.rs`; how to install it: docs/kubectl-plugin.md.
//!
//! Pure (tested without a server): [`rollout_status`] (the verdict and lines of `rollout
//! status`, from the operator's own condition reasons), [`history`], [`undo`] (which revision a
//! rollback asks for), [`patches`], [`nodes`], [`table`], [`age`], [`output`], [`cli`]. I/O:
//! [`connect`] (kubeconfig), [`status_watch`] (the watch of `rollout status`), [`commands`] (the
//! conductor).

pub mod age;
pub mod cli;
pub mod commands;
pub mod connect;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod history;
pub mod nodes;
pub mod output;
pub mod patches;
pub mod rollout_status;
pub mod status_watch;
pub mod table;
pub mod undo;

pub use error::PluginError;

use std::io::Write;

/// Writes `text` to standard output; a closed pipe is an error, not a panic.
pub fn print(text: &str) -> Result<(), PluginError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(PluginError::Stdout)
}
