//! Per-set gauges in the manner of kube-state-metrics' DaemonSet family: each set's status, read
//! from the controller's cache at scrape time, so a deleted set's series go with it and no
//! reconcile pays for them. Only the leading replica has the cache; the others export none.

use std::sync::{Arc, Mutex, PoisonError};

use kube::runtime::reflector::Store;
use kube::ResourceExt;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use staticpodset_api::{StaticPodSet, StaticPodSetStatus};

/// The status counts exported per set: metric name suffix, help text, and the field.
type Count = (&'static str, &'static str, fn(&StaticPodSetStatus) -> i32);

const COUNTS: [Count; 8] = [
    (
        "desired_number_scheduled",
        "Nodes the set selects and whose taints it tolerates (status.desiredNumberScheduled)",
        |s| s.desired_number_scheduled,
    ),
    (
        "current_number_scheduled",
        "Selected nodes where the kubelet runs the set's pod at any revision",
        |s| s.current_number_scheduled,
    ),
    (
        "number_ready",
        "Selected nodes whose Node and pod are Ready, at any revision",
        |s| s.number_ready,
    ),
    (
        "updated_number_scheduled",
        "Selected nodes available at the revision the set asks for",
        |s| s.updated_number_scheduled,
    ),
    (
        "number_available",
        "Selected nodes available at their revision",
        |s| s.number_available,
    ),
    (
        "number_unavailable",
        "Selected nodes not available (desired minus available)",
        |s| s.number_unavailable,
    ),
    (
        "number_misscheduled",
        "Selected nodes reporting a problem: a conflict, a write error, no mirror pod",
        |s| s.number_misscheduled,
    ),
    (
        "number_excluded_by_taints",
        "Nodes the selector matches that the set leaves out for their taints",
        |s| s.number_excluded_by_taints,
    ),
];

/// The set cache the collector reads, filled while this replica runs the controllers.
pub type SetStoreSlot = Arc<Mutex<Option<Store<StaticPodSet>>>>;

/// A collector of the per-set families.
pub struct SetCollector {
    slot: SetStoreSlot,
    descs: Vec<Desc>,
}

impl SetCollector {
    /// A collector reading the sets in `slot`.
    pub fn new(slot: SetStoreSlot) -> Result<Self, prometheus::Error> {
        let descs = vectors()?
            .iter()
            .flat_map(|v| v.desc().into_iter().cloned())
            .collect();
        Ok(Self { slot, descs })
    }
}

impl Collector for SetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sets = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Store::state)
            .unwrap_or_default();
        families(&sets).unwrap_or_default()
    }
}

/// The families' vectors, empty: one per status count, then generations and conditions.
fn vectors() -> Result<Vec<IntGaugeVec>, prometheus::Error> {
    let mut out = Vec::new();
    for (name, help, _) in COUNTS {
        out.push(IntGaugeVec::new(
            Opts::new(format!("staticpodset_set_status_{name}"), help),
            &["namespace", "set"],
        )?);
    }
    out.push(IntGaugeVec::new(
        Opts::new(
            "staticpodset_set_metadata_generation",
            "The set's metadata.generation",
        ),
        &["namespace", "set"],
    )?);
    out.push(IntGaugeVec::new(
        Opts::new(
            "staticpodset_set_status_observed_generation",
            "The generation the set's status describes (behind metadata_generation while the \
             operator has not acted on a change)",
        ),
        &["namespace", "set"],
    )?);
    out.push(IntGaugeVec::new(
        Opts::new(
            "staticpodset_set_status_condition",
            "The set's conditions (Available, Progressing, Degraded, Valid, ...): 1 for the \
             condition's current status and reason, 0 for the other statuses",
        ),
        &["namespace", "set", "condition", "status", "reason"],
    )?);
    Ok(out)
}

/// The per-set families for `sets`.
pub fn families(sets: &[Arc<StaticPodSet>]) -> Result<Vec<MetricFamily>, prometheus::Error> {
    let vectors = vectors()?;
    let (counts, rest) = vectors.split_at(COUNTS.len());
    let [generation, observed, conditions] = rest else {
        return Ok(Vec::new());
    };
    for set in sets {
        let namespace = set.namespace().unwrap_or_default();
        let name = set.name_any();
        let labels = [namespace.as_str(), name.as_str()];
        let status = set.status.clone().unwrap_or_default();
        for ((_, _, field), vector) in COUNTS.iter().zip(counts) {
            vector
                .with_label_values(&labels)
                .set(i64::from(field(&status)));
        }
        generation
            .with_label_values(&labels)
            .set(set.metadata.generation.unwrap_or(0));
        observed
            .with_label_values(&labels)
            .set(status.observed_generation.unwrap_or(0));
        for c in &status.conditions {
            for value in ["True", "False", "Unknown"] {
                let reason = if c.status == value {
                    c.reason.as_str()
                } else {
                    ""
                };
                conditions
                    .with_label_values(&[
                        namespace.as_str(),
                        name.as_str(),
                        c.type_.as_str(),
                        &value.to_lowercase(),
                        reason,
                    ])
                    .set(i64::from(c.status == value));
            }
        }
    }
    // A family without series (no set has conditions yet) cannot be encoded.
    Ok(vectors
        .iter()
        .flat_map(Collector::collect)
        .filter(|family| !family.get_metric().is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use prometheus::{Registry, TextEncoder};
    use staticpodset_api::StaticPodSetSpec;

    fn set(name: &str, degraded: &str) -> Arc<StaticPodSet> {
        let mut s = StaticPodSet::new(name, StaticPodSetSpec::default());
        s.metadata.namespace = Some("ns".into());
        s.metadata.generation = Some(3);
        s.status = Some(StaticPodSetStatus {
            observed_generation: Some(2),
            desired_number_scheduled: 5,
            number_available: 4,
            number_unavailable: 1,
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: degraded.into(),
                reason: "RevisionFailed".into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..StaticPodSetStatus::default()
        });
        Arc::new(s)
    }

    #[test]
    fn every_set_gets_its_counts_generations_and_conditions() {
        let slot: SetStoreSlot = Arc::new(Mutex::new(None));
        let registry = Registry::new();
        registry
            .register(Box::new(SetCollector::new(slot).expect("collector")))
            .expect("register");
        // Without the cache (not leading): no series, and the registry still encodes.
        assert!(registry.gather().is_empty());
        // A set without conditions: its counts, no empty condition family.
        let bare = Arc::new(StaticPodSet::new("bare", StaticPodSetSpec::default()));
        let only_counts = families(&[bare]).expect("families");
        assert!(only_counts.iter().all(|f| !f.get_metric().is_empty()));
        TextEncoder::new()
            .encode_to_string(&only_counts)
            .expect("encodes");

        let families = families(&[set("vip", "True"), set("dns", "False")]).expect("families");
        let text = TextEncoder::new()
            .encode_to_string(&families)
            .expect("encode");
        for line in [
            r#"staticpodset_set_status_desired_number_scheduled{namespace="ns",set="vip"} 5"#,
            r#"staticpodset_set_status_number_unavailable{namespace="ns",set="dns"} 1"#,
            r#"staticpodset_set_metadata_generation{namespace="ns",set="vip"} 3"#,
            r#"staticpodset_set_status_observed_generation{namespace="ns",set="vip"} 2"#,
            r#"staticpodset_set_status_condition{condition="Degraded",namespace="ns",reason="RevisionFailed",set="vip",status="true"} 1"#,
            r#"staticpodset_set_status_condition{condition="Degraded",namespace="ns",reason="",set="vip",status="false"} 0"#,
            r#"staticpodset_set_status_condition{condition="Degraded",namespace="ns",reason="RevisionFailed",set="dns",status="false"} 1"#,
            "# HELP staticpodset_set_status_number_ready ",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
