//! `rollout history`: a set's StaticPodRevisions as kubectl lists a DaemonSet's history. Pure.
//!
//! The change cause is the `kubernetes.io/change-cause` annotation of the revision object, or
//! else of the pod template the revision keeps. The operator copies no annotation of the set
//! onto its revisions, so in practice it is the template's: annotate the template
//! (`spec.template.metadata.annotations`) to give a revision its cause.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use staticpodset_api::StaticPodRevision;

use crate::plugin::age;
use crate::plugin::table::{self, or_none};

/// The annotation kubectl reads a revision's change cause from.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// One revision of a set, as `rollout history` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    /// The revision number (`spec.revision`).
    pub revision: i64,
    /// The content hash: what node entries and mirror pods show as the revision.
    pub hash: String,
    /// The StaticPodRevision object's name.
    pub name: String,
    /// When the revision object was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
    /// The change cause, if one was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
}

/// The rows of `revisions`, by revision number.
pub fn rows(revisions: &[StaticPodRevision]) -> Vec<HistoryRow> {
    let mut rows: Vec<HistoryRow> = revisions
        .iter()
        .map(|r| HistoryRow {
            revision: r.spec.revision,
            hash: r.spec.hash.clone(),
            name: r.metadata.name.clone().unwrap_or_default(),
            created: r.metadata.creation_timestamp.clone(),
            change_cause: change_cause(r),
        })
        .collect();
    rows.sort_by(|a, b| a.revision.cmp(&b.revision).then(a.hash.cmp(&b.hash)));
    rows
}

/// The change cause of a revision: its own annotation, else its template's.
pub fn change_cause(revision: &StaticPodRevision) -> Option<String> {
    let own = revision
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CHANGE_CAUSE))
        .cloned();
    let template = || {
        revision
            .spec
            .template
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CHANGE_CAUSE))
            .and_then(|c| c.as_str())
            .map(str::to_string)
    };
    own.or_else(template).filter(|c| !c.is_empty())
}

/// The history table: REVISION, HASH, AGE (at `now`), CHANGE-CAUSE.
pub fn table(rows: &[HistoryRow], now: Timestamp) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.hash.clone(),
                age::since(r.created.as_ref(), now),
                or_none(r.change_cause.as_deref()),
            ]
        })
        .collect();
    table::render(&["REVISION", "HASH", "AGE", "CHANGE-CAUSE"], &cells)
}

/// The revision numbered `number`, if the history has it.
pub fn find(revisions: &[StaticPodRevision], number: i64) -> Option<&StaticPodRevision> {
    revisions.iter().find(|r| r.spec.revision == number)
}

/// What `rollout history --revision N` prints without `-o`: a title and the revision's pod
/// template as YAML, indented as kubectl indents a template under its title.
pub fn revision_text(set_name: &str, revision: &StaticPodRevision, template_yaml: &str) -> String {
    let mut out = format!(
        "staticpodset.staticpods.dev/{set_name} with revision #{} (hash {})\nPod Template:\n",
        revision.spec.revision, revision.spec.hash
    );
    for line in template_yaml.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::fixtures::{at, mk_revision};

    #[test]
    fn rows_are_sorted_by_number_with_hash_age_and_cause() {
        let mut annotated = mk_revision(1, "aaaaaaaaaa", 0, serde_json::json!({}));
        annotated.metadata.annotations =
            Some([(CHANGE_CAUSE.to_string(), "on the object".to_string())].into());
        let revisions = [
            mk_revision(
                10,
                "cccccccccc",
                3_500,
                serde_json::json!({CHANGE_CAUSE: "image nginx:1.28"}),
            ),
            annotated,
            mk_revision(2, "bbbbbbbbbb", 1_000, serde_json::json!(null)),
        ];
        let rows = rows(&revisions);
        assert_eq!(
            rows.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [1, 2, 10]
        );
        assert_eq!(rows[0].change_cause.as_deref(), Some("on the object"));
        assert_eq!(rows[2].change_cause.as_deref(), Some("image nginx:1.28"));
        assert_eq!(rows[1].name, "web-bbbbbbbbbb");
        let now = Timestamp::from_second(3_600).unwrap();
        assert_eq!(
            table(&rows, now),
            "REVISION   HASH         AGE    CHANGE-CAUSE\n\
             1          aaaaaaaaaa   60m    on the object\n\
             2          bbbbbbbbbb   43m    <none>\n\
             10         cccccccccc   100s   image nginx:1.28\n"
        );
    }

    #[test]
    fn rows_serialize_for_json_and_yaml() {
        let rows = rows(&[mk_revision(4, "dddddddddd", 5, serde_json::json!({}))]);
        assert_eq!(
            serde_json::to_value(&rows).unwrap(),
            serde_json::json!([{
                "revision": 4, "hash": "dddddddddd", "name": "web-dddddddddd",
                "created": at(5),
            }])
        );
    }

    #[test]
    fn a_revision_is_found_by_number_and_shown_with_its_template() {
        let revisions = [
            mk_revision(1, "aaaaaaaaaa", 0, serde_json::json!({})),
            mk_revision(2, "bbbbbbbbbb", 0, serde_json::json!({})),
        ];
        let found = find(&revisions, 2).unwrap();
        assert_eq!(found.spec.hash, "bbbbbbbbbb");
        assert!(find(&revisions, 3).is_none());
        assert_eq!(
            revision_text("web", found, "spec:\n  containers: []\n"),
            "staticpodset.staticpods.dev/web with revision #2 (hash bbbbbbbbbb)\nPod Template:\n  \
             spec:\n    containers: []\n"
        );
    }
}
