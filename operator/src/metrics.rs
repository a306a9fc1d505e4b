//! Prometheus metrics of the operator, registered in one place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::set_metrics::{SetCollector, SetStoreSlot};

/// Every metric the operator exports, on its own registry (no process-global default registry).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result: `success`, `error`, `waiting` (a deleted set waiting for nodes).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by error kind.
    pub reconcile_errors: IntCounterVec,
    /// Duration of reconciles.
    pub reconcile_duration: Histogram,
    /// StaticPodSets in the cache.
    pub sets: IntGauge,
    /// Set entries written into NodeStaticPods objects, by operation: `apply`, `remove`.
    pub node_object_writes: IntCounterVec,
    /// Requests that wrote node objects' entries: one carries every set's change to its node.
    pub node_object_requests: IntCounter,
    /// NodeStaticPods objects created for nodes, or given the owner reference to their Node.
    pub node_objects_ensured: IntCounter,
    /// Writes of StaticPodRevisions and rollbacks, by operation: `create`, `renumber`, `delete`,
    /// `rollback`.
    pub revision_writes: IntCounterVec,
    /// 1 while this instance runs the controllers (leader, or leader election off).
    pub leader: IntGauge,
    /// ConfigMaps and Secrets that sets' volumes name, by where their data came from: `api` (a
    /// read) or `cache` (unchanged since the last read, as their watch shows).
    pub config_reads: IntCounterVec,
    /// Configuration bundle Secrets created and deleted, by operation: `create`, `delete`.
    pub bundle_writes: IntCounterVec,
    /// Admission dry runs of sets' mirror pods, by result.
    pub admission_checks: IntCounterVec,
    /// The set cache the per-set families are read from ([`crate::set_metrics`]), filled while
    /// this replica runs the controllers.
    pub set_store: SetStoreSlot,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_reconciles_total",
                "StaticPodSet reconciles by result",
            ),
            &["result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_reconcile_errors_total",
                "Failed StaticPodSet reconciles by error kind",
            ),
            &["kind"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "staticpodset_operator_reconcile_duration_seconds",
                "Duration of StaticPodSet reconciles",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
            ]),
        )?;
        let sets = IntGauge::new(
            "staticpodset_operator_staticpodsets",
            "StaticPodSets known to the operator",
        )?;
        let node_object_writes = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_node_object_writes_total",
                "Set entries written into NodeStaticPods objects, by operation",
            ),
            &["op"],
        )?;
        let node_object_requests = IntCounter::new(
            "staticpodset_operator_node_object_requests_total",
            "Requests that wrote entries into NodeStaticPods objects; one carries every set's change to its node",
        )?;
        let node_objects_ensured = IntCounter::new(
            "staticpodset_operator_node_objects_ensured_total",
            "NodeStaticPods objects created for nodes, or given the owner reference to their Node",
        )?;
        let revision_writes = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_revision_writes_total",
                "StaticPodRevisions created, renumbered and deleted, and rollbacks done",
            ),
            &["op"],
        )?;
        let leader = IntGauge::new(
            "staticpodset_operator_leader",
            "1 while this instance runs the controllers",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(sets.clone()))?;
        registry.register(Box::new(node_object_writes.clone()))?;
        registry.register(Box::new(node_object_requests.clone()))?;
        registry.register(Box::new(node_objects_ensured.clone()))?;
        registry.register(Box::new(revision_writes.clone()))?;
        let config_reads = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_config_reads_total",
                "ConfigMaps and Secrets named by sets' volumes, by where the data came from: api, cache",
            ),
            &["source"],
        )?;
        let bundle_writes = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_bundle_writes_total",
                "Configuration bundle Secrets created and deleted, by operation",
            ),
            &["op"],
        )?;
        let admission_checks = IntCounterVec::new(
            Opts::new(
                "staticpodset_operator_admission_checks_total",
                "Verdicts on sets' mirror pods by the cluster's admission chain, by result: admitted \
                 and denied (a server-side dry run), cached (a verdict reused), error (no verdict)",
            ),
            &["result"],
        )?;
        for result in ["admitted", "denied", "cached", "error"] {
            admission_checks.with_label_values(&[result]);
        }
        for source in ["api", "cache"] {
            config_reads.with_label_values(&[source]);
        }
        for op in ["create", "delete"] {
            bundle_writes.with_label_values(&[op]);
        }
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(config_reads.clone()))?;
        registry.register(Box::new(bundle_writes.clone()))?;
        registry.register(Box::new(admission_checks.clone()))?;
        let set_store: SetStoreSlot = Arc::new(Mutex::new(None));
        registry.register(Box::new(SetCollector::new(set_store.clone())?))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            sets,
            node_object_writes,
            node_object_requests,
            node_objects_ensured,
            revision_writes,
            leader,
            config_reads,
            bundle_writes,
            admission_checks,
            set_store,
        })
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, elapsed: Duration, error: Option<&crate::Error>) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let result = match error {
            None => "success",
            Some(e) if e.is_waiting() => "waiting",
            Some(e) => {
                self.reconcile_errors.with_label_values(&[e.kind()]).inc();
                "error"
            }
        };
        self.reconciles.with_label_values(&[result]).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families() {
        let m = Metrics::new().unwrap();
        m.observe_reconcile(Duration::from_millis(3), None);
        m.observe_reconcile(
            Duration::from_millis(3),
            Some(&crate::Error::StoresNotReady(Duration::from_secs(1))),
        );
        m.node_object_writes.with_label_values(&["apply"]).inc();
        m.node_objects_ensured.inc();
        m.revision_writes.with_label_values(&["create"]).inc();
        let text = m.render().unwrap();
        for needle in [
            "staticpodset_operator_reconciles_total{result=\"success\"} 1",
            "staticpodset_operator_reconciles_total{result=\"error\"} 1",
            "staticpodset_operator_reconcile_errors_total{kind=\"stores_not_ready\"} 1",
            "staticpodset_operator_reconcile_duration_seconds_count 2",
            "staticpodset_operator_staticpodsets 0",
            "staticpodset_operator_node_object_writes_total{op=\"apply\"} 1",
            "staticpodset_operator_node_objects_ensured_total 1",
            "staticpodset_operator_revision_writes_total{op=\"create\"} 1",
            "staticpodset_operator_leader 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
