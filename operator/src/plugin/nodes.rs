//! `nodes`: per node, what a set asks of it and what it runs, from the NodeStaticPods objects
//! (the entry the operator wrote, the report the node's agent wrote). Pure.

use serde::Serialize;
use staticpodset_api::{ManifestSource, NodeStaticPods, SetKey};

use crate::plugin::table::{self, or_none};

/// One node of a set.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// The node (and NodeStaticPods object) name.
    pub node: String,
    /// The revision the node's entry names; absent while the pod is being removed from the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The revision the mirror pod shows: what the kubelet runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The last revision the node failed, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
    /// How the agent hands the pod to the kubelet: `File` or `URL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the mirror pod is Ready; absent without a mirror pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The agent's words on the pod, or on its node-local fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A failed revision on one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failed {
    /// The revision (hash) that failed.
    pub revision: String,
    /// `ProgressDeadlineExceeded` or `NodeFallback`.
    pub reason: String,
    /// What happened.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The rows of set `set`, one per node whose object has an entry or a report of it, by name.
pub fn rows(objects: &[NodeStaticPods], set: &SetKey) -> Vec<NodeRow> {
    let of_set = |namespace: &str, name: &str| namespace == set.namespace && name == set.name;
    let mut rows: Vec<NodeRow> = objects
        .iter()
        .filter_map(|object| {
            let entry = object
                .spec
                .pods
                .iter()
                .find(|p| of_set(&p.set_namespace, &p.set_name));
            let report = object.status.as_ref().and_then(|s| {
                s.pods
                    .iter()
                    .find(|p| of_set(&p.set_namespace, &p.set_name))
            });
            if entry.is_none() && report.is_none() {
                return None;
            }
            let mirror = report.and_then(|r| r.mirror_pod.as_ref());
            let fallback = report.and_then(|r| r.fallback.as_ref()).map(|f| {
                let told = if f.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", f.message)
                };
                format!(
                    "fell back from revision {} to {}{told}",
                    f.from_revision, f.to_revision
                )
            });
            Some(NodeRow {
                node: object.metadata.name.clone().unwrap_or_default(),
                target: entry.map(|e| e.revision.clone()),
                running: mirror.and_then(|m| m.revision.clone()),
                failed: entry.and_then(|e| e.last_failure.as_ref()).map(|f| Failed {
                    revision: f.revision.clone(),
                    reason: f.reason.clone(),
                    message: f.message.clone(),
                }),
                source: report.and_then(|r| r.source).map(source_name),
                ready: mirror.map(|m| m.ready),
                message: report
                    .and_then(|r| r.message.clone())
                    .filter(|m| !m.is_empty())
                    .or(fallback),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

/// The nodes table: NODE, TARGET, RUNNING, FAILED (`<revision> (<reason>)`), SOURCE, READY,
/// MESSAGE.
pub fn table(rows: &[NodeRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                or_none(r.target.as_deref()),
                or_none(r.running.as_deref()),
                r.failed
                    .as_ref()
                    .map(|f| format!("{} ({})", f.revision, f.reason))
                    .unwrap_or_else(|| table::NONE.to_string()),
                or_none(r.source.as_deref()),
                r.ready
                    .map(|ready| ready.to_string())
                    .unwrap_or_else(|| table::NONE.to_string()),
                r.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(
        &[
            "NODE", "TARGET", "RUNNING", "FAILED", "SOURCE", "READY", "MESSAGE",
        ],
        &cells,
    )
}

/// The source as the API writes it.
fn source_name(source: ManifestSource) -> String {
    match source {
        ManifestSource::File => "File",
        ManifestSource::Url => "URL",
        ManifestSource::Both => "Both",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::fixtures::{at, mk_node, with_failure};
    use staticpodset_api::{FallbackReport, NodeStaticPodsSpec};

    fn web() -> SetKey {
        SetKey::new("ns", "web")
    }

    #[test]
    fn one_row_per_node_of_the_set_by_name() {
        let mut fell_back = with_failure(
            mk_node("c", "bbbbbbbbbb", Some(("aaaaaaaaaa", true))),
            "bbbbbbbbbb",
            "NodeFallback",
        );
        if let Some(status) = fell_back.status.as_mut() {
            status.pods[0].fallback = Some(FallbackReport {
                from_revision: "bbbbbbbbbb".into(),
                to_revision: "aaaaaaaaaa".into(),
                time: at(0),
                message: "container web exited".into(),
            });
        }
        let mut busy = mk_node("b", "bbbbbbbbbb", Some(("aaaaaaaaaa", false)));
        if let Some(status) = busy.status.as_mut() {
            status.pods[0].message = Some("Pending: pre-pulling nginx".into());
        }
        let mut other_set = mk_node("d", "zzzzzzzzzz", None);
        other_set.spec.pods[0].set_name = "other".into();
        let empty = NodeStaticPods::new("e", NodeStaticPodsSpec::default());
        let objects = [
            fell_back,
            busy,
            mk_node("a", "bbbbbbbbbb", None),
            other_set,
            empty,
        ];
        let rows = rows(&objects, &web());
        assert_eq!(
            rows.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            table(&rows),
            "NODE   TARGET       RUNNING      FAILED                      SOURCE   READY    MESSAGE\n\
             a      bbbbbbbbbb   <none>       <none>                      <none>   <none>\n\
             b      bbbbbbbbbb   aaaaaaaaaa   <none>                      File     false    Pending: pre-pulling nginx\n\
             c      bbbbbbbbbb   aaaaaaaaaa   bbbbbbbbbb (NodeFallback)   File     true     fell back from revision bbbbbbbbbb to aaaaaaaaaa: container web exited\n"
        );
        assert_eq!(
            serde_json::to_value(&rows[2]).unwrap(),
            serde_json::json!({
                "node": "c", "target": "bbbbbbbbbb", "running": "aaaaaaaaaa",
                "failed": {"revision": "bbbbbbbbbb", "reason": "NodeFallback",
                           "message": "not Ready in time"},
                "source": "File", "ready": true,
                "message": "fell back from revision bbbbbbbbbb to aaaaaaaaaa: container web exited",
            })
        );
    }

    #[test]
    fn a_node_being_removed_has_a_report_and_no_target() {
        let mut leaving = mk_node("a", "aaaaaaaaaa", Some(("aaaaaaaaaa", true)));
        leaving.spec.pods.clear();
        let rows = rows(&[leaving], &web());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].target, None);
        assert_eq!(rows[0].running.as_deref(), Some("aaaaaaaaaa"));
    }
}
