//! The verdicts and lines of `rollout status`.

use super::*;
use crate::conditions::{AVAILABLE, PROGRESSING, REASON_INVALID_TEMPLATE, REASON_ROLLING_UPDATE};
use crate::plugin::fixtures::{mk_condition, mk_node, mk_set, with_failure};

fn progressing(reason: &str, message: &str, generation: i64) -> Condition {
    let status = match reason {
        REASON_ROLLING_UPDATE => "True",
        REASON_PAUSED => "Unknown",
        _ => "False",
    };
    mk_condition(PROGRESSING, status, reason, message, generation)
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

#[test]
fn complete_for_the_current_generation_is_done() {
    let set = mk_set(
        2,
        2,
        (2, 2),
        vec![progressing(REASON_ROLLOUT_COMPLETE, "2/2", 2)],
    );
    assert_eq!(
        assess(&set, None),
        Verdict::Done("StaticPodSet ns/web successfully rolled out".into())
    );
}

#[test]
fn an_unobserved_generation_is_waited_for_whatever_the_old_conditions_say() {
    for reason in [REASON_ROLLOUT_COMPLETE, REASON_PROGRESS_DEADLINE_EXCEEDED] {
        let set = mk_set(3, 2, (2, 2), vec![progressing(reason, "old", 2)]);
        assert_eq!(
            assess(&set, None),
            Verdict::Waiting(
                "Waiting for StaticPodSet ns/web spec update to be observed...".into()
            ),
            "{reason}"
        );
    }
    // A status observed at this generation but a condition from an older one: not yet judged.
    let set = mk_set(
        3,
        3,
        (2, 2),
        vec![progressing(REASON_ROLLOUT_COMPLETE, "old", 2)],
    );
    assert!(matches!(assess(&set, None), Verdict::Waiting(_)));
    // No status at all.
    let mut set = mk_set(1, 1, (0, 0), vec![]);
    set.status = None;
    assert!(matches!(assess(&set, None), Verdict::Waiting(_)));
}

#[test]
fn a_halted_rollout_fails_with_the_conditions_message() {
    let set = mk_set(
        2,
        2,
        (1, 2),
        vec![progressing(
            REASON_PROGRESS_DEADLINE_EXCEEDED,
            "revision rev-new failed on spsnode-a; the rollout is halted",
            2,
        )],
    );
    assert_eq!(
        assess(&set, None),
        Verdict::Failed(
            "StaticPodSet ns/web exceeded its progress deadline: revision rev-new failed on \
             spsnode-a; the rollout is halted"
                .into()
        )
    );
}

#[test]
fn an_invalid_spec_fails() {
    let set = mk_set(
        2,
        2,
        (0, 2),
        vec![
            mk_condition(VALID, "False", REASON_INVALID_TEMPLATE, "no containers", 2),
            progressing(REASON_INVALID_TEMPLATE, "no containers", 2),
        ],
    );
    assert_eq!(
        assess(&set, None),
        Verdict::Failed("StaticPodSet ns/web is not valid (InvalidTemplate): no containers".into())
    );
}

#[test]
fn a_partitioned_rollout_is_done_and_a_paused_one_waits() {
    let set = mk_set(
        2,
        2,
        (1, 2),
        vec![progressing(REASON_PARTITION_ROLLED_OUT, "", 2)],
    );
    assert!(
        matches!(assess(&set, None), Verdict::Done(l) if l.contains("partitioned roll out complete: 1 of 2"))
    );
    let set = mk_set(2, 2, (0, 2), vec![progressing(REASON_PAUSED, "", 2)]);
    assert_eq!(
        assess(&set, None),
        Verdict::Waiting(
            "Waiting for StaticPodSet ns/web rollout to finish: the rollout is paused, 0 of 2 \
             nodes updated..."
                .into()
        )
    );
}

#[test]
fn a_rolling_update_counts_nodes_handed_then_available() {
    let conditions = || {
        vec![
            mk_condition(AVAILABLE, "True", "MinimumNodesAvailable", "", 2),
            progressing(REASON_ROLLING_UPDATE, "1/2", 2),
        ]
    };
    let set = mk_set(2, 2, (0, 2), conditions());
    let one_handed = [
        mk_node("a", "rev-new", Some(("rev-old", false))),
        mk_node("b", "rev-old", Some(("rev-old", true))),
    ];
    assert_eq!(
        assess(&set, Some(&one_handed)),
        Verdict::Waiting(
            "Waiting for StaticPodSet ns/web rollout to finish: 1 out of 2 new nodes have been \
             updated..."
                .into()
        )
    );
    let set = mk_set(2, 2, (1, 2), conditions());
    let both_handed = [
        mk_node("a", "rev-new", Some(("rev-new", true))),
        mk_node("b", "rev-new", Some(("rev-old", true))),
    ];
    let available = Verdict::Waiting(
        "Waiting for StaticPodSet ns/web rollout to finish: 1 of 2 updated nodes are available..."
            .into(),
    );
    assert_eq!(assess(&set, Some(&both_handed)), available);
    // Without the nodes' objects (no right to read them), the status alone.
    assert_eq!(assess(&set, None), available);
}

#[test]
fn node_lines_name_every_node_not_yet_available_at_the_update() {
    let set = mk_set(2, 2, (1, 4), vec![]);
    let mut busy = mk_node("c", "rev-new", Some(("rev-old", true)));
    if let Some(status) = busy.status.as_mut() {
        status.pods[0].message = Some("Pending: pre-pulling nginx before writing revision".into());
    }
    let nodes = [
        mk_node("d", "rev-new", Some(("rev-new", true))),
        mk_node("b", "rev-old", Some(("rev-old", true))),
        busy,
        mk_node("a", "rev-new", Some(("rev-new", false))),
        with_failure(
            mk_node("e", "rev-new", None),
            "rev-new",
            "ProgressDeadlineExceeded",
        ),
    ];
    assert_eq!(
        node_lines(&set, &nodes),
        vec![
            "node a: revision rev-new is not Ready yet",
            "node b: waiting for revision rev-new, runs rev-old",
            "node c: updating to revision rev-new, runs rev-old: Pending: pre-pulling nginx \
             before writing revision",
            "node e: failed revision rev-new (ProgressDeadlineExceeded), no pod yet",
        ]
    );
}

#[test]
fn a_watch_prints_each_line_once() {
    let first = vec!["x".to_string(), "y".to_string()];
    let second = vec!["y".to_string(), "z".to_string()];
    assert_eq!(fresh_lines(&[], &first), vec!["x", "y"]);
    assert_eq!(fresh_lines(&first, &second), vec!["z"]);
}
