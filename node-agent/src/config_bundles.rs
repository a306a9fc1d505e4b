//! Configuration bundles from the API server to the node: before a sync plans, the files every
//! assigned manifest mounts are put in place from the operator's bundle Secret, each bundle read
//! once per config hash and kept, so files edited on the node are put right without the API
//! server. I/O at the edge; what goes where is [`crate::config_files`], the directory
//! [`crate::resources_dir`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use staticpodset_api::SetKey;
use tracing::{debug, info, warn};

use crate::api_reads;
use crate::blocking;
use crate::config_files::{ConfigKey, ConfigReadiness, Files};
use crate::metrics::Metrics;
use crate::resources_dir::ResourcesDir;

/// How soon a bundle that could not be read is tried again when its files are on disk already.
const BUNDLE_REREAD: Duration = Duration::from_secs(60);

/// The agent's configuration bundles: where they are read and written, and what it keeps of them
/// between syncs.
pub struct ConfigBundles {
    api: Api<Secret>,
    namespace: String,
    resources: ResourcesDir,
    metrics: Metrics,
    /// The files of every assigned config hash the agent has read.
    files: BTreeMap<ConfigKey, Arc<Files>>,
    /// Hashes found on disk whose bundle could not be read (API server down), and when that was
    /// last tried: the files are used as they are meanwhile.
    unread: BTreeMap<ConfigKey, Instant>,
}

impl ConfigBundles {
    /// Bundles read from namespace `namespace`, written into `resources`.
    pub fn new(client: Client, namespace: &str, resources: ResourcesDir, metrics: Metrics) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            resources,
            metrics,
            files: BTreeMap::new(),
            unread: BTreeMap::new(),
        }
    }

    /// Makes sure the files of every key in `needed` are on disk and as their bundle says, and
    /// says for each whether they are in place. A failure is logged and counted here; the set's
    /// manifest then waits (see [`crate::config_files::gate`]) and the write is retried. Bundles
    /// no longer needed are forgotten.
    pub async fn prepare(&mut self, needed: &BTreeSet<ConfigKey>) -> ConfigReadiness {
        let mut ready = ConfigReadiness::new();
        for (set, hash) in needed {
            let result = self.ensure(set, hash).await;
            if let Err(why) = &result {
                warn!(set = %set, hash = %hash, error = %why, "configuration files not written; retrying");
                self.metrics.sync_errors.inc();
                self.metrics
                    .config_files
                    .with_label_values(&["failed"])
                    .inc();
            }
            ready.insert((set.clone(), hash.clone()), result);
        }
        self.files.retain(|k, _| needed.contains(k));
        self.unread.retain(|k, _| needed.contains(k));
        ready
    }

    /// Makes sure the files of `set` at `hash` are on disk and as the bundle says: written when
    /// missing, put right when edited on the node.
    async fn ensure(&mut self, set: &SetKey, hash: &str) -> Result<(), String> {
        let key = (set.clone(), hash.to_string());
        let (dir, probe_set, probe_hash) = (self.resources.clone(), set.clone(), hash.to_owned());
        let on_disk = blocking::in_span(move || dir.has(&probe_set, &probe_hash))
            .await
            .unwrap_or(false);
        let files = match self.files.get(&key) {
            Some(files) => files.clone(),
            None => {
                if on_disk
                    && self
                        .unread
                        .get(&key)
                        .is_some_and(|at| at.elapsed() < BUNDLE_REREAD)
                {
                    return Ok(());
                }
                match api_reads::read_bundle(&self.api, &self.namespace, set, hash).await {
                    Ok(files) => {
                        self.unread.remove(&key);
                        let files = Arc::new(files);
                        self.files.insert(key.clone(), files.clone());
                        files
                    }
                    // The files are there: use them as they are until the bundle can be read.
                    Err(why) if on_disk => {
                        debug!(set = %set, error = %why, "bundle not read; using the files on disk as they are");
                        self.unread.insert(key, Instant::now());
                        return Ok(());
                    }
                    Err(why) => return Err(why),
                }
            }
        };
        let (dir, write_set, write_hash) = (self.resources.clone(), set.clone(), hash.to_owned());
        let restored = blocking::in_span(move || {
            if on_disk {
                dir.repair(&write_set, &write_hash, &files)
            } else {
                dir.write(&write_set, &write_hash, &files)
                    .map(|()| Vec::new())
            }
        })
        .await
        .map_err(|e| format!("the configuration file task did not complete: {e}"))?
        .map_err(|e| format!("writing configuration files: {e}"))?;
        if !on_disk {
            self.metrics
                .config_files
                .with_label_values(&["written"])
                .inc();
            info!(set = %set, hash = %hash, "configuration files written");
        }
        if !restored.is_empty() {
            self.metrics
                .config_files
                .with_label_values(&["restored"])
                .inc_by(restored.len() as u64);
            warn!(set = %set, hash = %hash, restored = ?restored, "configuration files had changed on the node; put back");
        }
        Ok(())
    }
}
