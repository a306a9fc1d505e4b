//! The agent's Prometheus metrics, registered in one place on a registry of its own.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the agent exports, and the registry that serves them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Syncs run (directory compared with the spec).
    pub syncs: IntCounter,
    /// Syncs in which anything failed: scanning, a write or removal, or the status patch.
    pub sync_errors: IntCounter,
    /// Wall time of one sync.
    pub sync_duration: Histogram,
    /// Manifests written (created or replaced).
    pub manifests_written: IntCounter,
    /// Manifests removed.
    pub manifests_removed: IntCounter,
    /// Assigned sets currently in conflict with a foreign file or pod.
    pub conflicts: IntGauge,
    /// NodeStaticPods status patches sent.
    pub status_patches: IntCounter,
    /// StaticPodRevisions read from the API server (each is read once while an entry names it).
    pub revision_reads: IntCounter,
    /// Reads of StaticPodRevisions that failed, found none, or found one not matching its entry.
    pub revision_read_failures: IntCounter,
    /// Reads of StaticPodRevisions whose manifest does not have the content digest the operator
    /// handed out for it: not a pod the operator rendered, so refused (also counted in
    /// `revision_read_failures`).
    pub revision_digest_mismatches: IntCounter,
    /// Image pre-pull jobs by result: `present` (the runtime had it), `pulled`, `error`, `timeout`.
    pub image_pulls: IntCounterVec,
    /// Wall time of image pulls that downloaded something.
    pub image_pull_duration: Histogram,
    /// Writes that waited for a pre-pull, by how the wait ended: `images_ready` or
    /// `deadline_passed` (written without the images).
    pub prepull_waits: IntCounterVec,
    /// Sets whose write waits for a pre-pull right now.
    pub prepull_waiting: IntGauge,
    /// Revision changes done stop-first, by how the wait for the old pod ended: `stopped` or
    /// `timeout`.
    pub stop_first_swaps: IntCounterVec,
    /// Requests to the static pod URL endpoint, by HTTP status code.
    pub url_requests: IntCounterVec,
    /// Pods in the list the static pod URL endpoint serves.
    pub url_served_pods: IntGauge,
    /// Configuration file operations, by action: `written` (a config hash directory), `restored`
    /// (a file edited, removed or added on the node, put back), `pruned` (a hash directory
    /// nothing names), `removed` (a set's directory), `failed`.
    pub config_files: IntCounterVec,
    /// Loads of the last-known state on start, by result: `loaded`, `missing`, `invalid`.
    pub state_loads: IntCounterVec,
    /// Saves of the last-known state, by result: `ok`, `failed`.
    pub state_saves: IntCounterVec,
    /// 1 while the agent acts on its saved state because the API server has not answered.
    pub saved_state_in_use: IntGauge,
    /// Node-local fallbacks: a new revision given up for the last Ready one while the API server
    /// was unreachable.
    pub fallbacks: IntCounter,
    /// Assigned sets whose pod does not run the revision the node is assigned (or does not run).
    pub pods_not_current: IntGauge,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let syncs = IntCounter::new(
            "staticpodset_agent_syncs_total",
            "Syncs of the manifest directory with the node's NodeStaticPods",
        )?;
        let sync_errors = IntCounter::new(
            "staticpodset_agent_sync_errors_total",
            "Syncs in which reading the directory, a write, a removal or the status patch failed",
        )?;
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "staticpodset_agent_sync_duration_seconds",
                "Duration of one sync, status patch included",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let manifests_written = IntCounter::new(
            "staticpodset_agent_manifests_written_total",
            "Manifests written into the kubelet's directory",
        )?;
        let manifests_removed = IntCounter::new(
            "staticpodset_agent_manifests_removed_total",
            "Owned manifests removed from the kubelet's directory",
        )?;
        let conflicts = IntGauge::new(
            "staticpodset_agent_conflicts",
            "Assigned pods not written because a foreign file or pod is in the way",
        )?;
        let status_patches = IntCounter::new(
            "staticpodset_agent_status_patches_total",
            "NodeStaticPods status patches sent to the API server",
        )?;
        let revision_reads = IntCounter::new(
            "staticpodset_agent_revision_reads_total",
            "StaticPodRevisions read from the API server",
        )?;
        let revision_read_failures = IntCounter::new(
            "staticpodset_agent_revision_read_failures_total",
            "StaticPodRevision reads that failed, found none, or found one not matching its entry",
        )?;
        let revision_digest_mismatches = IntCounter::new(
            "staticpodset_agent_revision_digest_mismatches_total",
            "StaticPodRevision reads refused because the manifest's content digest is not the one \
             the operator handed out for it (not a pod the operator rendered)",
        )?;
        let image_pulls = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_image_pulls_total",
                "Image pre-pull jobs (ImageStatus, then PullImage) by result: present, pulled, \
                 error, timeout",
            ),
            &["result"],
        )?;
        let image_pull_duration = Histogram::with_opts(
            HistogramOpts::new(
                "staticpodset_agent_image_pull_duration_seconds",
                "Duration of image pre-pulls that downloaded the image",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )?;
        let prepull_waits = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_prepull_waits_total",
                "Manifest writes held back for an image pre-pull, by how the wait ended: \
                 images_ready, deadline_passed",
            ),
            &["outcome"],
        )?;
        let prepull_waiting = IntGauge::new(
            "staticpodset_agent_prepull_waiting",
            "Sets whose manifest write waits for an image pre-pull",
        )?;
        let stop_first_swaps = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_stop_first_swaps_total",
                "Revision changes that removed the old manifest first and wrote the new one once \
                 the old pod had stopped, by how the wait ended: stopped, timeout",
            ),
            &["result"],
        )?;
        for result in ["stopped", "timeout"] {
            stop_first_swaps.with_label_values(&[result]);
        }
        for result in ["present", "pulled", "error", "timeout"] {
            image_pulls.with_label_values(&[result]);
        }
        for outcome in ["images_ready", "deadline_passed"] {
            prepull_waits.with_label_values(&[outcome]);
        }
        let url_requests = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_url_requests_total",
                "Requests to the static pod URL endpoint (the kubelet's polls), by status code",
            ),
            &["code"],
        )?;
        let url_served_pods = IntGauge::new(
            "staticpodset_agent_url_served_pods",
            "Pods in the list the static pod URL endpoint serves",
        )?;
        let config_files = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_config_files_total",
                "Configuration file operations (ConfigMap and Secret volumes), by action: written, \
                 restored, pruned, removed, failed",
            ),
            &["action"],
        )?;
        for action in ["written", "restored", "pruned", "removed", "failed"] {
            config_files.with_label_values(&[action]);
        }
        let state_loads = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_state_loads_total",
                "Loads of the node's last-known state on start, by result: loaded, missing, \
                 invalid (unreadable, wrong checksum, another node's or another format)",
            ),
            &["result"],
        )?;
        for result in ["loaded", "missing", "invalid"] {
            state_loads.with_label_values(&[result]);
        }
        let state_saves = IntCounterVec::new(
            Opts::new(
                "staticpodset_agent_state_saves_total",
                "Saves of the node's last-known state, by result: ok, failed",
            ),
            &["result"],
        )?;
        for result in ["ok", "failed"] {
            state_saves.with_label_values(&[result]);
        }
        let saved_state_in_use = IntGauge::new(
            "staticpodset_agent_saved_state_in_use",
            "1 while the agent acts on its saved last-known state because the API server has not \
             answered since it started",
        )?;
        let fallbacks = IntCounter::new(
            "staticpodset_agent_fallbacks_total",
            "Node-local fallbacks: a new revision that did not become healthy while the API server \
             was unreachable, replaced by the revision last Ready on the node",
        )?;
        let pods_not_current = IntGauge::new(
            "staticpodset_agent_pods_not_current",
            "Sets assigned to this node whose mirror pod does not run the assigned revision (a \
             rollout under way, a pod that does not start, a node-local fallback)",
        )?;
        registry.register(Box::new(pods_not_current.clone()))?;
        registry.register(Box::new(state_loads.clone()))?;
        registry.register(Box::new(state_saves.clone()))?;
        registry.register(Box::new(saved_state_in_use.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(url_requests.clone()))?;
        registry.register(Box::new(url_served_pods.clone()))?;
        registry.register(Box::new(config_files.clone()))?;
        registry.register(Box::new(syncs.clone()))?;
        registry.register(Box::new(sync_errors.clone()))?;
        registry.register(Box::new(sync_duration.clone()))?;
        registry.register(Box::new(manifests_written.clone()))?;
        registry.register(Box::new(manifests_removed.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        registry.register(Box::new(status_patches.clone()))?;
        registry.register(Box::new(revision_reads.clone()))?;
        registry.register(Box::new(revision_read_failures.clone()))?;
        registry.register(Box::new(revision_digest_mismatches.clone()))?;
        registry.register(Box::new(image_pulls.clone()))?;
        registry.register(Box::new(image_pull_duration.clone()))?;
        registry.register(Box::new(prepull_waits.clone()))?;
        registry.register(Box::new(stop_first_swaps.clone()))?;
        registry.register(Box::new(prepull_waiting.clone()))?;
        Ok(Self {
            registry,
            syncs,
            sync_errors,
            sync_duration,
            manifests_written,
            manifests_removed,
            conflicts,
            status_patches,
            revision_reads,
            revision_read_failures,
            revision_digest_mismatches,
            image_pulls,
            image_pull_duration,
            prepull_waits,
            prepull_waiting,
            stop_first_swaps,
            url_requests,
            url_served_pods,
            config_files,
            state_loads,
            state_saves,
            saved_state_in_use,
            fallbacks,
            pods_not_current,
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// A count as a gauge value.
pub(crate) fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric() {
        let m = Metrics::new().expect("metrics");
        m.syncs.inc();
        m.sync_duration.observe(0.02);
        let text = m.encode().expect("encode");
        for name in [
            "staticpodset_agent_syncs_total 1",
            "staticpodset_agent_sync_errors_total 0",
            "staticpodset_agent_sync_duration_seconds_bucket",
            "staticpodset_agent_manifests_written_total 0",
            "staticpodset_agent_manifests_removed_total 0",
            "staticpodset_agent_conflicts 0",
            "staticpodset_agent_status_patches_total 0",
            "staticpodset_agent_revision_reads_total 0",
            "staticpodset_agent_revision_read_failures_total 0",
            "# HELP staticpodset_agent_revision_digest_mismatches_total StaticPodRevision reads refused",
            "staticpodset_agent_revision_digest_mismatches_total 0",
            "staticpodset_agent_image_pulls_total{result=\"pulled\"} 0",
            "staticpodset_agent_image_pulls_total{result=\"error\"} 0",
            "staticpodset_agent_image_pull_duration_seconds_count 0",
            "staticpodset_agent_prepull_waits_total{outcome=\"deadline_passed\"} 0",
            "staticpodset_agent_prepull_waiting 0",
            "staticpodset_agent_url_served_pods 0",
            "staticpodset_agent_config_files_total{action=\"restored\"} 0",
            "staticpodset_agent_state_loads_total{result=\"invalid\"} 0",
            "staticpodset_agent_state_saves_total{result=\"failed\"} 0",
            "staticpodset_agent_saved_state_in_use 0",
            "staticpodset_agent_fallbacks_total 0",
            "staticpodset_agent_pods_not_current 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
