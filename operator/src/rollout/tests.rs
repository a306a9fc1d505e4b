//! The rolling-update planner, and the conditions told from its plans.

use super::*;
use crate::conditions::*;
use std::collections::BTreeSet;

const NOW: i64 = 1_000_000;
const LONG_AGO: i64 = NOW - 100_000;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

/// A node available at `rev` for a long time.
fn healthy(name: &str, rev: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        assignment: Some(Assignment {
            revision: rev.into(),
            since: t(LONG_AGO),
        }),
        mirror_pod: Some(MirrorPod {
            revision: Some(rev.into()),
            ready: true,
            ready_since: Some(t(LONG_AGO)),
        }),
        health: NodeHealth::Ready {
            since: Some(t(LONG_AGO)),
        },
        failed_revision: None,
        fallback: None,
        previous_pod: None,
    }
}

/// A Ready node the set has not assigned anything yet.
fn new_node(name: &str) -> NodeFacts {
    NodeFacts {
        assignment: None,
        mirror_pod: None,
        ..healthy(name, "-")
    }
}

/// A node handed `rev` at `at`, whose mirror pod shows `mirror` (revision, ready).
fn handed(name: &str, rev: &str, at: i64, mirror: Option<(&str, bool)>) -> NodeFacts {
    NodeFacts {
        assignment: Some(Assignment {
            revision: rev.into(),
            since: t(at),
        }),
        mirror_pod: mirror.map(|(r, ready)| MirrorPod {
            revision: Some(r.into()),
            ready,
            ready_since: ready.then(|| t(at + 5)),
        }),
        ..healthy(name, rev)
    }
}

fn not_ready(mut node: NodeFacts, since: i64) -> NodeFacts {
    node.health = NodeHealth::NotReady {
        since: Some(t(since)),
    };
    node
}

fn input(update: &str, nodes: Vec<NodeFacts>) -> RolloutInput {
    RolloutInput {
        update_revision: update.into(),
        last_healthy_revision: Some("r1".into()),
        revision_numbers: [("r1", 1), ("r2", 2), ("r3", 3), ("r4", 4)]
            .into_iter()
            .map(|(r, n)| (r.to_string(), n))
            .collect(),
        strategy: Strategy::default(),
        nodes,
        now: t(NOW),
    }
}

fn all_at(rev: &str, names: &[&str]) -> Vec<NodeFacts> {
    names.iter().map(|n| healthy(n, rev)).collect()
}

fn writes(plan: &RolloutPlan) -> Vec<(&str, &str)> {
    plan.writes
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect()
}

fn cond(plan: &RolloutPlan, type_: &str) -> (ConditionStatus, &'static str, &'static str) {
    let c = rollout_conditions(plan)
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    // Leaked so the tests can compare tuples of &str; a test process is short-lived.
    (c.status, c.reason, Box::leak(c.message.into_boxed_str()))
}

fn node<'a>(plan: &'a RolloutPlan, name: &str) -> &'a NodePlan {
    plan.nodes.iter().find(|n| n.name == name).unwrap()
}

// --- maxUnavailable ---

#[test]
fn max_unavailable_percentages_round_up() {
    let p = MaxUnavailable::Percent;
    assert_eq!(p(25).resolve(5), 2, "1.25 rounds up");
    assert_eq!(p(10).resolve(3), 1, "0.3 rounds up");
    assert_eq!(p(33).resolve(10), 4, "3.3 rounds up");
    assert_eq!(p(50).resolve(4), 2, "exact stays");
    assert_eq!(p(1).resolve(1000), 10);
    assert_eq!(p(100).resolve(7), 7);
    assert_eq!(p(100).resolve(1), 1);
    assert_eq!(
        MaxUnavailable::Count(3).resolve(2),
        3,
        "a count is not capped"
    );
    assert_eq!(MaxUnavailable::default().resolve(5000), 1);
}

#[test]
fn max_unavailable_zero_means_one_and_no_nodes_means_zero() {
    assert_eq!(MaxUnavailable::Count(0).resolve(4), 1);
    assert_eq!(MaxUnavailable::Percent(0).resolve(4), 1);
    assert_eq!(MaxUnavailable::Percent(25).resolve(0), 0);
    assert_eq!(MaxUnavailable::Count(2).resolve(0), 2);
}

#[test]
fn max_unavailable_parses_like_an_int_or_string() {
    assert_eq!("25%".parse(), Ok(MaxUnavailable::Percent(25)));
    assert_eq!("0%".parse(), Ok(MaxUnavailable::Percent(0)));
    assert_eq!("100%".parse(), Ok(MaxUnavailable::Percent(100)));
    for bad in ["3", "101%", "-1%", "%", "2.5%", "abc%", " 5%", ""] {
        let err = bad.parse::<MaxUnavailable>().unwrap_err();
        assert_eq!(err.value, bad);
    }
    let from = |v: IntOrString| MaxUnavailable::try_from(&v);
    assert_eq!(from(IntOrString::Int(2)), Ok(MaxUnavailable::Count(2)));
    assert_eq!(
        from(IntOrString::String("10%".into())),
        Ok(MaxUnavailable::Percent(10))
    );
    assert!(from(IntOrString::Int(-1)).is_err());
    assert!(from(IntOrString::String("7".into()))
        .unwrap_err()
        .to_string()
        .contains("percentage"));
}

// --- handing out ---

#[test]
fn a_new_set_hands_every_node_the_revision_at_once() {
    let mut i = input("r1", vec![new_node("b"), new_node("a"), new_node("c")]);
    i.last_healthy_revision = None;
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("a", "r1"), ("b", "r1"), ("c", "r1")]);
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "sorted by name");
    assert_eq!(plan.counts.unavailable, 3);
    assert!(!plan.halted && !plan.complete);
    assert_eq!(cond(&plan, AVAILABLE).0, ConditionStatus::False);
    assert_eq!(cond(&plan, PROGRESSING).1, REASON_ROLLING_UPDATE);
}

#[test]
fn available_nodes_are_handed_the_revision_within_the_budget_in_name_order() {
    let plan = plan_rollout(&input("r2", all_at("r1", &["c", "a", "b"])));
    assert_eq!(plan.max_unavailable, 1);
    assert_eq!(writes(&plan), [("a", "r2")]);
    assert_eq!(
        node(&plan, "a").unavailable,
        Some(Unavailable::Handed {
            revision: "r2".into()
        })
    );
    assert_eq!(plan.counts.unavailable, 1, "counted after the write");
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_ROLLING_UPDATE)
    );
    assert!(message.contains("updating: a"), "{message}");
    assert!(message.contains("2 nodes waiting"), "{message}");

    // Next pass: a switches; nothing else moves until it is available.
    let mut nodes = all_at("r1", &["b", "c"]);
    nodes.push(handed("a", "r2", NOW - 20, Some(("r2", false))));
    assert!(plan_rollout(&input("r2", nodes.clone())).writes.is_empty());
    nodes[2] = handed("a", "r2", NOW - 20, Some(("r2", true)));
    assert_eq!(writes(&plan_rollout(&input("r2", nodes))), [("b", "r2")]);
}

#[test]
fn a_percentage_budget_is_of_the_targeted_nodes() {
    let mut i = input("r2", all_at("r1", &["a", "b", "c", "d", "e"]));
    i.strategy.max_unavailable = MaxUnavailable::Percent(25);
    let plan = plan_rollout(&i);
    assert_eq!(plan.max_unavailable, 2);
    assert_eq!(writes(&plan), [("a", "r2"), ("b", "r2")]);
    i.strategy.max_unavailable = MaxUnavailable::Percent(100);
    assert_eq!(plan_rollout(&i).writes.len(), 5);
}

#[test]
fn unhealthy_nodes_go_first_and_cost_no_budget() {
    let mut crashing = healthy("d", "r1");
    crashing.mirror_pod.as_mut().unwrap().ready = false;
    let mut nodes = all_at("r1", &["a", "b", "c"]);
    nodes.push(crashing);
    nodes.push(not_ready(healthy("e", "r1"), NOW - 50));
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Count(3);
    let plan = plan_rollout(&i);
    // d and e were unavailable already; one unit of budget is left for a.
    assert_eq!(writes(&plan), [("a", "r2"), ("d", "r2"), ("e", "r2")]);
    assert_eq!(plan.counts.unavailable, 3);
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("d", "r2"), ("e", "r2")]);
    assert_eq!(
        node(&plan, "e").unavailable,
        Some(Unavailable::NodeNotReady {
            since: Some(t(NOW - 50))
        }),
        "a Node that is down is reported as such, not as being handed a revision"
    );
}

#[test]
fn nodes_unhealthy_before_the_rollout_count_against_the_budget() {
    // c is below the partition, so not a candidate, but its crashing pod uses the budget.
    let mut crashing = healthy("a", "r1");
    crashing.mirror_pod = None;
    let mut nodes = all_at("r1", &["b", "c", "d"]);
    nodes.push(crashing);
    let mut i = input("r2", nodes);
    i.strategy.partition = 1;
    let plan = plan_rollout(&i);
    assert!(plan.writes.is_empty());
    let message = cond(&plan, PROGRESSING).2;
    assert!(
        message.contains("maxUnavailable is 1 and unavailable are: a (no mirror pod)"),
        "{message}"
    );
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    assert_eq!(writes(&plan_rollout(&i)), [("b", "r2")]);
}

#[test]
fn the_oldest_revision_goes_first_among_available_nodes() {
    let mut nodes = vec![
        healthy("a", "r2"),
        healthy("b", "r1"),
        healthy("c", "r1"),
        healthy("d", "pruned"),
    ];
    let mut i = input("r3", nodes.clone());
    let plan = plan_rollout(&i);
    assert_eq!(
        writes(&plan),
        [("d", "r3")],
        "a revision out of history is oldest"
    );
    nodes.pop();
    i.nodes = nodes;
    assert_eq!(writes(&plan_rollout(&i)), [("b", "r3")]);
}

#[test]
fn a_newer_revision_supersedes_the_one_in_flight() {
    // r2 was rolling: a switched and is Ready, b was handed r2 and is restarting. r3 arrives.
    let nodes = vec![
        handed("a", "r2", NOW - 300, Some(("r2", true))),
        handed("b", "r2", NOW - 10, Some(("r1", true))),
        healthy("c", "r1"),
        healthy("d", "r1"),
    ];
    let mut i = input("r3", nodes);
    let plan = plan_rollout(&i);
    // b is down anyway: it goes straight to r3, and holds the only unit of budget.
    assert_eq!(writes(&plan), [("b", "r3")]);
    assert_eq!(
        plan.counts.updated, 0,
        "a runs r2, which is no longer the update"
    );
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    // With one more unit, the oldest revision goes first: c (r1) before a (r2).
    assert_eq!(writes(&plan_rollout(&i)), [("b", "r3"), ("c", "r3")]);
}

#[test]
fn a_superseded_revision_that_failed_does_not_halt_the_new_one() {
    let mut failed = handed("a", "r1", LONG_AGO, Some(("r1", true)));
    failed.failed_revision = Some("r2".into());
    let plan = plan_rollout(&input("r3", vec![failed, healthy("b", "r1")]));
    assert!(!plan.halted);
    assert_eq!(writes(&plan), [("a", "r3")]);
}

#[test]
fn partition_makes_a_canary() {
    let names = ["a", "b", "c", "d"];
    let mut i = input("r2", all_at("r1", &names));
    i.strategy.partition = 3;
    i.strategy.max_unavailable = MaxUnavailable::Count(4);
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("d", "r2")], "only the last node");

    i.nodes[3] = handed("d", "r2", NOW - 100, Some(("r2", true)));
    let plan = plan_rollout(&i);
    assert!(plan.writes.is_empty());
    assert!(!plan.complete, "the partition holds the rest back");
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!(
        (status, reason),
        (ConditionStatus::False, REASON_PARTITION_ROLLED_OUT)
    );
    assert!(message.contains("holds back: a, b, c"), "{message}");

    i.strategy.partition = 0;
    assert_eq!(
        writes(&plan_rollout(&i)),
        [("a", "r2"), ("b", "r2"), ("c", "r2")]
    );
}

#[test]
fn partition_leaves_nodes_below_it_alone() {
    let mut crashing = healthy("b", "r3");
    crashing.mirror_pod.as_mut().unwrap().ready = false;
    let nodes = vec![
        healthy("a", "r3"),
        crashing,
        new_node("c"),
        healthy("d", "r1"),
    ];
    let mut i = input("r2", nodes);
    i.strategy.partition = 3;
    i.strategy.max_unavailable = MaxUnavailable::Count(4);
    let plan = plan_rollout(&i);
    // a and b keep r3 (newer, and even though b is down); the new node c gets the last healthy
    // revision; d, at the partition, gets the update.
    assert_eq!(writes(&plan), [("c", "r1"), ("d", "r2")]);
    i.last_healthy_revision = None;
    assert_eq!(writes(&plan_rollout(&i)), [("c", "r2"), ("d", "r2")]);
    i.strategy.partition = 100;
    assert_eq!(writes(&plan_rollout(&i)), [("c", "r2")]);
}

#[test]
fn paused_hands_out_nothing_but_new_nodes_get_the_last_healthy_revision() {
    let mut nodes = all_at("r1", &["a", "b"]);
    nodes.push(new_node("c"));
    let mut i = input("r2", nodes);
    i.strategy.paused = true;
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("c", "r1")]);
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!((status, reason), (ConditionStatus::Unknown, REASON_PAUSED));
    assert!(
        message.contains("0/3 nodes updated to revision r2"),
        "{message}"
    );

    i.last_healthy_revision = None;
    let plan = plan_rollout(&i);
    assert!(plan.writes.is_empty());
    assert_eq!(node(&plan, "c").revision, None);

    // Unpaused: c gets r2 at once, and as it is unavailable it holds the only unit of budget.
    i.strategy.paused = false;
    assert_eq!(writes(&plan_rollout(&i)), [("c", "r2")]);
}

// --- deadline, halt, rollback ---

fn stuck(name: &str, handed_at: i64) -> NodeFacts {
    handed(name, "r2", handed_at, Some(("r2", false)))
}

#[test]
fn a_missed_deadline_marks_the_node_failed_and_halts_the_rollout() {
    let nodes = vec![
        stuck("a", NOW - 601),
        healthy("b", "r1"),
        healthy("c", "r1"),
    ];
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    let plan = plan_rollout(&i);
    assert_eq!(plan.newly_failed.len(), 1);
    let failure = &plan.newly_failed[0];
    assert_eq!(
        (failure.node.as_str(), failure.revision.as_str(),),
        ("a", "r2")
    );
    assert!(
        failure.message.contains("within 600s"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("pod not Ready"),
        "{}",
        failure.message
    );
    assert!(plan.halted);
    assert!(
        plan.writes.is_empty(),
        "no further node is touched, budget or not; without autoRollback a keeps r2"
    );
    assert!(node(&plan, "a").failed);
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!(
        (status, reason),
        (ConditionStatus::False, REASON_PROGRESS_DEADLINE_EXCEEDED)
    );
    assert!(message.contains("revision r2 failed on a"), "{message}");
    assert!(message.contains("autoRollback is off"), "{message}");
    let (status, reason, _) = cond(&plan, DEGRADED);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_REVISION_FAILED)
    );
}

#[test]
fn what_does_not_miss_the_deadline() {
    let check = |node: NodeFacts, tweak: &dyn Fn(&mut RolloutInput)| {
        let mut i = input("r2", vec![node, healthy("b", "r1")]);
        tweak(&mut i);
        let plan = plan_rollout(&i);
        assert!(plan.newly_failed.is_empty() && !plan.halted, "{plan:#?}");
    };
    check(stuck("a", NOW - 600), &|_| {});
    // Ready in time, only minReadySeconds to go.
    check(handed("a", "r2", NOW - 700, Some(("r2", true))), &|i| {
        i.strategy.min_ready_seconds = 10_000
    });
    check(stuck("a", LONG_AGO), &|i| {
        i.strategy.progress_deadline_seconds = None
    });
    // A revision that completed a rollout before is not failed by the deadline.
    check(stuck("a", LONG_AGO), &|i| {
        i.last_healthy_revision = Some("r2".into())
    });
    // Handed another revision: not the update's deadline.
    check(handed("a", "r3", LONG_AGO, None), &|_| {});
}

#[test]
fn a_pod_that_crashes_during_the_rollout_fails_it() {
    // a was Ready at r2 before, and crashed after its deadline.
    let plan = plan_rollout(&input(
        "r2",
        vec![stuck("a", NOW - 5_000), healthy("b", "r1")],
    ));
    assert_eq!(plan.newly_failed.len(), 1);
}

#[test]
fn a_recorded_failure_keeps_the_rollout_halted() {
    let mut failed = stuck("a", LONG_AGO);
    failed.failed_revision = Some("r2".into());
    let nodes = vec![
        failed,
        stuck("b", NOW - 700),
        healthy("c", "r1"),
        new_node("d"),
    ];
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Count(10);
    let plan = plan_rollout(&i);
    assert!(plan.halted);
    // b, in flight when a failed, is still watched, and fails on its own; a is not reported
    // again. c is not touched; the new node d gets the last healthy revision.
    let failed: Vec<&str> = plan.newly_failed.iter().map(|f| f.node.as_str()).collect();
    assert_eq!(failed, ["b"]);
    assert_eq!(writes(&plan), [("d", "r1")]);
    let message = cond(&plan, PROGRESSING).2;
    assert!(message.contains("failed on a, b"), "{message}");

    i.last_healthy_revision = None;
    assert!(plan_rollout(&i).writes.is_empty(), "no revision for d");
}

#[test]
fn auto_rollback_returns_failed_nodes_to_the_last_healthy_revision() {
    let nodes = vec![stuck("a", NOW - 601), healthy("b", "r1")];
    let mut i = input("r2", nodes);
    i.strategy.auto_rollback = true;
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("a", "r1")]);
    assert!(plan.halted);
    assert!(cond(&plan, PROGRESSING)
        .2
        .contains("failed nodes are returned to revision r1"));

    // Next pass: a is back at r1 and available; the rollout stays halted.
    let mut back = healthy("a", "r1");
    back.failed_revision = Some("r2".into());
    i.nodes[0] = back;
    let plan = plan_rollout(&i);
    assert!(plan.halted && plan.writes.is_empty() && plan.newly_failed.is_empty());
    assert_eq!(
        cond(&plan, PROGRESSING).1,
        REASON_PROGRESS_DEADLINE_EXCEEDED
    );
    assert_eq!(cond(&plan, DEGRADED).0, ConditionStatus::False, "a serves");
    assert_eq!(cond(&plan, AVAILABLE).1, REASON_ALL_NODES_AVAILABLE);

    // A new template lifts the halt.
    i.update_revision = "r3".into();
    let plan = plan_rollout(&i);
    assert!(!plan.halted);
    assert_eq!(writes(&plan), [("a", "r3")]);
}

#[test]
fn auto_rollback_limits() {
    let mut i = input("r2", vec![stuck("a", NOW - 601), healthy("b", "r1")]);
    i.strategy.auto_rollback = true;
    i.strategy.paused = true;
    let plan = plan_rollout(&i);
    assert!(
        plan.halted && plan.writes.is_empty(),
        "no rollback while paused"
    );
    assert_eq!(plan.newly_failed.len(), 1, "but the failure is reported");
    assert!(cond(&plan, PROGRESSING).2.contains("while paused"));

    i.strategy.paused = false;
    i.last_healthy_revision = None;
    let plan = plan_rollout(&i);
    assert!(plan.halted && plan.writes.is_empty());
    assert!(cond(&plan, PROGRESSING)
        .2
        .contains("no healthy revision to return failed nodes to"));

    // A failed node that came up after all is left running.
    i.last_healthy_revision = Some("r1".into());
    let mut recovered = handed("a", "r2", LONG_AGO, Some(("r2", true)));
    recovered.failed_revision = Some("r2".into());
    i.nodes[0] = recovered;
    let plan = plan_rollout(&i);
    assert!(plan.halted && plan.writes.is_empty());
}

#[test]
fn a_failure_holds_until_every_node_is_updated() {
    let mut recovered = handed("a", "r2", LONG_AGO, Some(("r2", true)));
    recovered.failed_revision = Some("r2".into());
    let mut i = input("r2", vec![recovered, healthy("b", "r1")]);
    let plan = plan_rollout(&i);
    assert!(plan.halted, "sticky: a human should look first");
    assert!(plan.writes.is_empty());
    i.nodes[1] = healthy("b", "r2");
    let plan = plan_rollout(&i);
    assert!(plan.complete && !plan.halted);
    assert_eq!(cond(&plan, PROGRESSING).1, REASON_ROLLOUT_COMPLETE);
    assert_eq!(cond(&plan, DEGRADED).0, ConditionStatus::False);
}

// --- node-local fallback ---

/// A node handed `from` whose agent gave it up and put `to` back, which now runs Ready.
fn fallen_back(name: &str, from: &str, to: &str) -> NodeFacts {
    NodeFacts {
        fallback: Some(Fallback {
            from_revision: from.into(),
            to_revision: to.into(),
            time: t(NOW - 20),
            message: "container c: CrashLoopBackOff".into(),
        }),
        ..handed(name, from, NOW - 90, Some((to, true)))
    }
}

#[test]
fn a_node_that_fell_back_fails_the_revision_and_halts_the_rollout() {
    let mut i = input(
        "r2",
        vec![
            fallen_back("a", "r2", "r1"),
            healthy("b", "r1"),
            healthy("c", "r1"),
        ],
    );
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    let plan = plan_rollout(&i);
    assert_eq!(
        plan.newly_failed.len(),
        1,
        "well inside the progress deadline"
    );
    let failure = &plan.newly_failed[0];
    assert_eq!(
        (
            failure.node.as_str(),
            failure.revision.as_str(),
            failure.cause
        ),
        ("a", "r2", FailureCause::NodeFallback)
    );
    assert_eq!(failure_reason(failure.cause), REASON_NODE_FALLBACK);
    for part in ["put back revision r1", "CrashLoopBackOff", "API server"] {
        assert!(
            failure.message.contains(part),
            "{part}: {}",
            failure.message
        );
    }
    assert!(plan.halted);
    assert!(
        plan.writes.is_empty(),
        "no other node is handed r2, budget or not"
    );
    assert_eq!(node(&plan, "a").fell_back_to.as_deref(), Some("r1"));
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!(
        (status, reason),
        (ConditionStatus::False, REASON_PROGRESS_DEADLINE_EXCEEDED)
    );
    assert!(
        message.contains("failed on a (its agent fell back to revision r1)"),
        "{message}"
    );
    let (status, reason, message) = cond(&plan, DEGRADED);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_REVISION_FAILED)
    );
    assert!(
        message.contains("a (its agent fell back to revision r1)"),
        "{message}"
    );

    // Recorded: not reported again, still halted, still named.
    i.nodes[0].failed_revision = Some("r2".into());
    let plan = plan_rollout(&i);
    assert!(plan.newly_failed.is_empty() && plan.halted && plan.writes.is_empty());
    assert!(cond(&plan, DEGRADED).2.contains("fell back"));
}

#[test]
fn with_auto_rollback_the_fallen_back_node_is_returned_to_the_healthy_revision() {
    let mut i = input("r2", vec![fallen_back("a", "r2", "r1"), healthy("b", "r1")]);
    i.strategy.auto_rollback = true;
    let plan = plan_rollout(&i);
    assert_eq!(plan.newly_failed.len(), 1);
    assert_eq!(writes(&plan), [("a", "r1")], "free: a does not run r2");
    assert!(cond(&plan, PROGRESSING)
        .2
        .contains("failed nodes are returned to revision r1"));
}

#[test]
fn a_fallback_report_for_an_older_revision_is_ignored() {
    // a fell back from r2 earlier; its entry has since moved on to r3.
    let mut moved_on = fallen_back("a", "r2", "r1");
    moved_on.assignment = Some(Assignment {
        revision: "r3".into(),
        since: t(NOW - 10),
    });
    let plan = plan_rollout(&input("r3", vec![moved_on, healthy("b", "r1")]));
    assert!(plan.newly_failed.is_empty() && !plan.halted, "{plan:#?}");
    assert_eq!(node(&plan, "a").fell_back_to, None);
    assert_eq!(cond(&plan, DEGRADED).0, ConditionStatus::False);
}

#[test]
fn a_fallback_from_an_older_revision_the_entry_still_names_is_recorded_without_halting() {
    // Below the partition, a keeps r1 while r2 rolls out, and its agent gave r1 up.
    let mut i = input("r2", vec![fallen_back("a", "r1", "r0"), healthy("b", "r1")]);
    i.strategy.partition = 1;
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    let plan = plan_rollout(&i);
    let failed: Vec<(&str, &str)> = plan
        .newly_failed
        .iter()
        .map(|f| (f.node.as_str(), f.revision.as_str()))
        .collect();
    assert_eq!(failed, [("a", "r1")]);
    assert!(!plan.halted && !node(&plan, "a").failed);
    assert_eq!(writes(&plan), [("b", "r2")]);
}

#[test]
fn a_fallback_fails_the_revision_whatever_the_deadline_and_node_state() {
    // No progress deadline, the rollout paused, the Node NotReady: the agent's report is a fact.
    let mut i = input(
        "r2",
        vec![
            not_ready(fallen_back("a", "r2", "r1"), NOW - 5),
            healthy("b", "r1"),
        ],
    );
    i.strategy.progress_deadline_seconds = None;
    i.strategy.paused = true;
    assert_eq!(plan_rollout(&i).newly_failed.len(), 1);
    // But a gone Node's entry is never written, so its failure could never be recorded.
    i.nodes[0].health = NodeHealth::Gone;
    assert!(plan_rollout(&i).newly_failed.is_empty());
    // A deadline failure already recorded for the revision is not repeated as a fallback.
    i.nodes[0].health = NodeHealth::Ready { since: None };
    i.nodes[0].failed_revision = Some("r2".into());
    assert!(plan_rollout(&i).newly_failed.is_empty());
}

// --- Nodes that are down, gone, joining, leaving ---

#[test]
fn a_node_not_ready_for_a_long_time_never_fails_the_revision() {
    let down = not_ready(handed("c", "r2", LONG_AGO, Some(("r1", true))), LONG_AGO);
    let mut i = input("r2", vec![healthy("a", "r1"), healthy("b", "r1"), down]);
    let plan = plan_rollout(&i);
    assert!(plan.newly_failed.is_empty() && !plan.halted);
    // It holds the budget (maxUnavailable 1): the rollout waits and says for what.
    assert!(plan.writes.is_empty());
    let (status, reason, message) = cond(&plan, PROGRESSING);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_ROLLING_UPDATE)
    );
    assert!(message.contains("c (Node NotReady since"), "{message}");
    let (status, reason, message) = cond(&plan, DEGRADED);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_NODES_NOT_READY)
    );
    assert!(message.contains("c (Node NotReady"), "{message}");
    assert!(!node(&plan, "c").ready);
    // With room in the budget, the rest proceeds.
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    assert_eq!(writes(&plan_rollout(&i)), [("a", "r2")]);
}

#[test]
fn a_node_back_from_not_ready_gets_the_full_deadline() {
    let mut back = handed("c", "r2", LONG_AGO, Some(("r2", false)));
    back.health = NodeHealth::Ready {
        since: Some(t(NOW - 300)),
    };
    let mut i = input("r2", vec![healthy("a", "r1"), back]);
    assert!(plan_rollout(&i).newly_failed.is_empty());
    i.now = t(NOW + 301);
    let plan = plan_rollout(&i);
    assert_eq!(plan.newly_failed.len(), 1);
    assert!(plan.newly_failed[0]
        .message
        .contains("the Node became Ready"));
}

#[test]
fn a_gone_node_counts_unavailable_and_is_never_written() {
    let mut gone = healthy("b", "r1");
    gone.health = NodeHealth::Gone;
    let mut gone_new = new_node("c");
    gone_new.health = NodeHealth::Gone;
    let mut i = input("r2", vec![healthy("a", "r1"), gone, gone_new]);
    i.strategy.max_unavailable = MaxUnavailable::Count(3);
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("a", "r2")]);
    assert_eq!(node(&plan, "c").revision, None);
    assert_eq!(node(&plan, "b").unavailable, Some(Unavailable::NodeGone));
    assert_eq!(
        plan.counts.current, 1,
        "a still runs r1; b's mirror pod does not count"
    );
    let message = cond(&plan, DEGRADED).2;
    assert!(
        message.contains("b (Node gone), c (Node gone)"),
        "{message}"
    );
    let message = cond(&plan, PROGRESSING).2;
    assert!(
        message.contains("not handed: b (Node gone), c (Node gone)"),
        "{message}"
    );
}

#[test]
fn nodes_joining_mid_rollout_get_the_revision_at_once_and_slow_the_rest() {
    let nodes = vec![
        handed("a", "r2", NOW - 100, Some(("r2", true))),
        healthy("b", "r1"),
        healthy("c", "r1"),
        new_node("d"),
    ];
    let mut i = input("r2", nodes);
    let plan = plan_rollout(&i);
    // d is handed r2 without budget, but as it is unavailable b and c wait.
    assert_eq!(writes(&plan), [("d", "r2")]);
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    assert_eq!(writes(&plan_rollout(&i)), [("b", "r2"), ("d", "r2")]);
}

#[test]
fn nodes_leaving_mid_rollout_are_dropped() {
    // b was in flight and holds the budget; it leaves the target set, and the budget frees.
    let mut i = input(
        "r2",
        vec![healthy("a", "r1"), stuck("b", NOW - 10), healthy("c", "r1")],
    );
    assert!(plan_rollout(&i).writes.is_empty());
    i.nodes.remove(1);
    let plan = plan_rollout(&i);
    assert_eq!(writes(&plan), [("a", "r2")]);
    assert_eq!(plan.counts.desired, 2);
    assert!(plan.nodes.iter().all(|n| n.name != "b"));
}

#[test]
fn a_node_selector_change_mid_rollout_is_a_new_node_set() {
    // Rolling r2 at 50% over a..d: a done, b in flight. The selector now matches c..f.
    let before = vec![
        handed("a", "r2", NOW - 300, Some(("r2", true))),
        stuck("b", NOW - 10),
        healthy("c", "r1"),
        healthy("d", "r1"),
    ];
    let mut i = input("r2", before);
    i.strategy.max_unavailable = MaxUnavailable::Percent(50);
    let plan = plan_rollout(&i);
    assert_eq!(plan.max_unavailable, 2);
    assert_eq!(writes(&plan), [("c", "r2")]);

    let mut i = input(
        "r2",
        vec![
            healthy("c", "r1"),
            healthy("d", "r1"),
            healthy("e", "r1"), // ran r1 for another reason: an old entry kept
            new_node("f"),
        ],
    );
    i.strategy.max_unavailable = MaxUnavailable::Percent(50);
    let plan = plan_rollout(&i);
    // f is handed r2 at once and takes one unit; the other goes to c.
    assert_eq!(writes(&plan), [("c", "r2"), ("f", "r2")]);
    assert_eq!(plan.counts.desired, 4);
    i.strategy.max_unavailable = MaxUnavailable::Percent(10);
    assert_eq!(writes(&plan_rollout(&i)), [("f", "r2")]);
}

// --- counts and conditions ---

#[test]
fn counts_are_those_of_a_daemonset() {
    let mut crashing = healthy("c", "r2");
    crashing.mirror_pod.as_mut().unwrap().ready = false;
    let nodes = vec![
        healthy("a", "r2"),                              // updated
        healthy("b", "r1"),                              // available, old
        crashing,                                        // running, not ready
        not_ready(healthy("d", "r1"), NOW - 10),         // running, Node down
        new_node("e"),                                   // nothing yet
        handed("f", "r2", NOW - 10, Some(("r1", true))), // switching
    ];
    let mut i = input("r2", nodes);
    i.strategy.paused = true;
    let plan = plan_rollout(&i);
    assert_eq!(
        plan.counts,
        Counts {
            desired: 6,
            current: 5,
            updated: 1,
            ready: 3,
            available: 2,
            unavailable: 4,
        }
    );
    let updated: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.updated)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(updated, ["a"]);
    assert_eq!(
        node(&plan, "f").unavailable,
        Some(Unavailable::RunsOtherRevision {
            running: Some("r1".into())
        })
    );
}

#[test]
fn min_ready_seconds_delays_available_and_updated() {
    let mut i = input(
        "r2",
        vec![
            handed("a", "r2", NOW - 30, Some(("r2", true))),
            healthy("b", "r1"),
        ],
    );
    // Ready since NOW - 25.
    i.strategy.min_ready_seconds = 25;
    let plan = plan_rollout(&i);
    assert_eq!(
        node(&plan, "a").unavailable,
        Some(Unavailable::ReadyTooShort)
    );
    assert!(node(&plan, "a").ready && !node(&plan, "a").updated);
    assert!(plan.writes.is_empty());
    i.strategy.min_ready_seconds = 24;
    let plan = plan_rollout(&i);
    assert!(node(&plan, "a").updated);
    assert_eq!(writes(&plan), [("b", "r2")]);
    // Without a Ready time, minReadySeconds cannot be proven.
    i.nodes[0].mirror_pod.as_mut().unwrap().ready_since = None;
    assert_eq!(
        node(&plan_rollout(&i), "a").unavailable,
        Some(Unavailable::ReadyTooShort)
    );
}

#[test]
fn conditions_when_complete_and_when_no_node_is_targeted() {
    let plan = plan_rollout(&input("r2", all_at("r2", &["a", "b"])));
    assert!(plan.complete && !plan.halted && plan.writes.is_empty());
    assert_eq!(
        cond(&plan, PROGRESSING),
        (
            ConditionStatus::False,
            REASON_ROLLOUT_COMPLETE,
            "2/2 nodes updated to revision r2"
        )
    );
    assert_eq!(
        cond(&plan, AVAILABLE),
        (
            ConditionStatus::True,
            REASON_ALL_NODES_AVAILABLE,
            "2/2 nodes available"
        )
    );
    assert_eq!(cond(&plan, DEGRADED).1, REASON_AS_EXPECTED);
    let types: Vec<&str> = rollout_conditions(&plan).iter().map(|c| c.type_).collect();
    assert_eq!(types, [AVAILABLE, PROGRESSING, DEGRADED]);

    let plan = plan_rollout(&input("r2", vec![]));
    assert!(plan.complete);
    assert_eq!(cond(&plan, AVAILABLE).1, REASON_NO_NODES_SELECTED);
    assert_eq!(cond(&plan, PROGRESSING).1, REASON_ROLLOUT_COMPLETE);
}

#[test]
fn available_means_minimum_availability() {
    // One of two handed r2, within maxUnavailable 1.
    let plan = plan_rollout(&input("r2", all_at("r1", &["a", "b"])));
    let (status, reason, message) = cond(&plan, AVAILABLE);
    assert_eq!(
        (status, reason),
        (ConditionStatus::True, REASON_MINIMUM_NODES_AVAILABLE)
    );
    assert!(
        message.contains("a (being handed revision r2)"),
        "{message}"
    );
    // A single node that is down is not "available within budget".
    let plan = plan_rollout(&input("r1", vec![stuck("a", NOW)]));
    assert_eq!(cond(&plan, AVAILABLE).0, ConditionStatus::False);
    // More down than allowed.
    let plan = plan_rollout(&input(
        "r1",
        vec![
            healthy("a", "r1"),
            not_ready(healthy("b", "r1"), NOW),
            not_ready(healthy("c", "r1"), NOW),
        ],
    ));
    assert_eq!(cond(&plan, AVAILABLE).1, REASON_NODES_UNAVAILABLE);
}

#[test]
fn messages_name_at_most_five_nodes_per_group() {
    let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let nodes = names
        .iter()
        .map(|n| not_ready(healthy(n, "r1"), NOW))
        .collect();
    let plan = plan_rollout(&input("r1", nodes));
    let message = cond(&plan, DEGRADED).2;
    assert!(message.contains("n4 (Node NotReady since"), "{message}");
    assert!(!message.contains("n5"), "{message}");
    assert!(message.ends_with(" and 3 more"), "{message}");
}

// --- the simulator ---

/// A small world: the planner's writes land on the nodes, the kubelet kills the old pod and
/// starts the new one after a random delay, and time goes on. Every step checks that the plan
/// took down no more available nodes than the budget allowed.
struct Sim {
    input: RolloutInput,
    /// Revisions whose pods never become Ready.
    bad: Vec<String>,
    /// Per node: the revision the kubelet is starting and when it will be Ready.
    starting: BTreeMap<String, (String, i64)>,
    rng: u64,
    /// Check, besides the per-step budget, that the fleet never has more than maxUnavailable
    /// nodes unavailable (only when nothing but the rollout makes nodes unavailable).
    strict: bool,
    /// Every (node, revision) the planner ever wrote.
    handed: Vec<(String, String)>,
    /// The unavailable nodes right after the last step's writes.
    unavailable_after_writes: usize,
}

const STEP: i64 = 10;

impl Sim {
    fn new(input: RolloutInput, seed: u64) -> Sim {
        Sim {
            input,
            bad: Vec::new(),
            starting: BTreeMap::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            strict: true,
            handed: Vec::new(),
            unavailable_after_writes: 0,
        }
    }

    /// xorshift64: enough randomness for kubelet delays without a dependency.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn now(&self) -> i64 {
        self.input.now.as_second()
    }

    /// Unavailable nodes by the module docs' definition, worked out apart from the planner.
    fn unavailable(&self) -> BTreeSet<String> {
        let now = self.now();
        let min_ready = i64::from(self.input.strategy.min_ready_seconds);
        self.input
            .nodes
            .iter()
            .filter(|n| {
                let node_ready = matches!(n.health, NodeHealth::Ready { .. });
                let pod_ok = match (&n.assignment, &n.mirror_pod) {
                    (Some(a), Some(m)) => {
                        m.revision.as_ref() == Some(&a.revision)
                            && m.ready
                            && (min_ready == 0
                                || m.ready_since
                                    .is_some_and(|s| now - s.as_second() > min_ready))
                    }
                    _ => false,
                };
                !(node_ready && pod_ok)
            })
            .map(|n| n.name.clone())
            .collect()
    }

    /// One reconcile: plan, apply, check, then let time pass.
    fn step(&mut self) -> RolloutPlan {
        let before = self.unavailable();
        let plan = plan_rollout(&self.input);
        let now = self.input.now;
        for n in &mut self.input.nodes {
            if let Some(rev) = plan.writes.get(&n.name) {
                n.assignment = Some(Assignment {
                    revision: rev.clone(),
                    since: now,
                });
                self.handed.push((n.name.clone(), rev.clone()));
            }
            if let Some(f) = plan.newly_failed.iter().find(|f| f.node == n.name) {
                n.failed_revision = Some(f.revision.clone());
            }
        }
        let after = self.unavailable();
        let m = plan.max_unavailable;
        let taken_down = after.difference(&before).count();
        assert!(
            taken_down <= m.saturating_sub(before.len()),
            "at {}: took down {taken_down} with {} unavailable before and maxUnavailable {m}",
            self.now(),
            before.len()
        );
        if self.strict {
            assert!(after.len() <= m, "at {}: {after:?} unavailable", self.now());
        }
        self.unavailable_after_writes = after.len();
        self.advance();
        plan
    }

    /// The kubelets act and STEP seconds pass.
    fn advance(&mut self) {
        let now = self.now() + STEP;
        self.input.now = t(now);
        for i in 0..self.input.nodes.len() {
            let n = &self.input.nodes[i];
            if !matches!(n.health, NodeHealth::Ready { .. }) {
                continue; // an unreachable kubelet does nothing we can see
            }
            let Some(want) = n.assignment.as_ref().map(|a| a.revision.clone()) else {
                continue;
            };
            let name = n.name.clone();
            let runs_want = n
                .mirror_pod
                .as_ref()
                .is_some_and(|m| m.revision.as_ref() == Some(&want));
            match self.starting.get(&name).cloned() {
                Some((rev, ready_at)) if rev == want && now >= ready_at => {
                    let good = !self.bad.contains(&rev);
                    self.input.nodes[i].mirror_pod = Some(MirrorPod {
                        revision: Some(rev),
                        ready: good,
                        ready_since: good.then(|| t(now)),
                    });
                    self.starting.remove(&name);
                }
                Some((rev, _)) if rev == want => {} // still pulling and starting
                starting if starting.is_some() || !runs_want => {
                    // The kubelet kills the old pod first, then starts the new one.
                    let delay = STEP * (1 + (self.next() % 4) as i64);
                    self.input.nodes[i].mirror_pod = None;
                    self.starting.insert(name, (want, now + delay));
                }
                _ => {}
            }
        }
    }

    /// Steps until the rollout is complete; returns the number of steps.
    fn run_to_completion(&mut self, max_steps: usize) -> usize {
        for steps in 1..=max_steps {
            let plan = self.step();
            if plan.complete && plan.writes.is_empty() {
                return steps;
            }
        }
        panic!(
            "no convergence in {max_steps} steps: {:#?}",
            self.input.nodes
        );
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeFacts {
        self.input
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap()
    }

    fn assert_all_run(&self, rev: &str) {
        for n in &self.input.nodes {
            assert_eq!(
                n.assignment.as_ref().map(|a| a.revision.as_str()),
                Some(rev),
                "{}",
                n.name
            );
            let m = n.mirror_pod.as_ref().unwrap();
            assert!(m.ready && m.revision.as_deref() == Some(rev), "{}", n.name);
        }
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

#[test]
fn simulated_rollouts_never_exceed_max_unavailable_and_use_all_of_it() {
    let budgets = [
        MaxUnavailable::Count(1),
        MaxUnavailable::Count(2),
        MaxUnavailable::Count(3),
        MaxUnavailable::Percent(25),
        MaxUnavailable::Percent(34),
        MaxUnavailable::Percent(50),
        MaxUnavailable::Percent(100),
    ];
    for size in [1, 2, 3, 4, 5, 8] {
        for budget in budgets {
            for min_ready in [0, 25] {
                for seed in 1..=4 {
                    let nodes = names(size).iter().map(|n| healthy(n, "r1")).collect();
                    let mut i = input("r2", nodes);
                    i.strategy.max_unavailable = budget;
                    i.strategy.min_ready_seconds = min_ready;
                    let mut sim = Sim::new(i, seed);
                    for _ in 0..400 {
                        let plan = sim.step();
                        // The planner's view matches the world's, right after the writes.
                        assert_eq!(plan.counts.unavailable, sim.unavailable_after_writes);
                        let not_handed = sim
                            .input
                            .nodes
                            .iter()
                            .filter(|n| n.assignment.as_ref().unwrap().revision != "r2")
                            .count();
                        // No idle budget: while nodes wait, the budget is all in use.
                        if not_handed > 0 {
                            assert_eq!(plan.counts.unavailable, plan.max_unavailable);
                        }
                        if plan.complete {
                            break;
                        }
                    }
                    sim.assert_all_run("r2");
                    assert_eq!(sim.handed.len(), size, "each node handed r2 once");
                }
            }
        }
    }
}

#[test]
fn simulated_creation_hands_out_everything_at_once() {
    let nodes = names(5).iter().map(|n| new_node(n)).collect();
    let mut i = input("r1", nodes);
    i.last_healthy_revision = None;
    let mut sim = Sim::new(i, 7);
    sim.strict = false; // every node starts unavailable
    let first = sim.step();
    assert_eq!(first.writes.len(), 5);
    sim.run_to_completion(100);
    sim.assert_all_run("r1");
}

#[test]
fn simulated_rollout_with_a_superseding_revision_and_nodes_joining_and_leaving() {
    let nodes = names(6).iter().map(|n| healthy(n, "r1")).collect();
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    i.strategy.min_ready_seconds = 15;
    let mut sim = Sim::new(i, 3);
    sim.strict = false; // the joining node is unavailable for reasons of its own
    for _ in 0..3 {
        sim.step();
    }
    sim.input.update_revision = "r3".into();
    for _ in 0..2 {
        sim.step();
    }
    sim.input.nodes.push(new_node("node-9"));
    for _ in 0..2 {
        sim.step();
    }
    sim.input.nodes.retain(|n| n.name != "node-2");
    sim.run_to_completion(300);
    sim.assert_all_run("r3");
    assert!(sim.handed.contains(&("node-9".into(), "r3".into())));
}

#[test]
fn simulated_rollout_around_a_node_that_was_down_before_it_started() {
    let mut nodes: Vec<NodeFacts> = names(4).iter().map(|n| healthy(n, "r1")).collect();
    nodes[2] = not_ready(healthy("node-2", "r1"), LONG_AGO);
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Count(2);
    let mut sim = Sim::new(i, 11);
    // The dead node counts, so the fleet stays within maxUnavailable throughout.
    for _ in 0..100 {
        let plan = sim.step();
        assert!(!plan.halted && !plan.complete);
    }
    for n in ["node-0", "node-1", "node-3"] {
        assert!(sim.handed.contains(&(n.into(), "r2".into())), "{n}");
    }
    let now = sim.input.now;
    sim.node_mut("node-2").health = NodeHealth::Ready { since: Some(now) };
    sim.run_to_completion(50);
    sim.assert_all_run("r2");
}

#[test]
fn simulated_failed_revision_halts_the_rollout_and_rolls_back() {
    for auto_rollback in [false, true] {
        let nodes = names(3).iter().map(|n| healthy(n, "r1")).collect();
        let mut i = input("r2", nodes);
        i.strategy.progress_deadline_seconds = Some(60);
        i.strategy.auto_rollback = auto_rollback;
        let mut sim = Sim::new(i, 5);
        sim.bad.push("r2".into());
        let mut halted_at = None;
        for step in 0..60 {
            let plan = sim.step();
            if plan.halted && halted_at.is_none() {
                halted_at = Some(step);
            }
        }
        // Halts within the deadline (60 s = 6 steps) plus a step to see it.
        assert!(halted_at.is_some_and(|s| s <= 7), "{halted_at:?}");
        let r2: Vec<&str> = sim
            .handed
            .iter()
            .filter(|(_, r)| r == "r2")
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(r2, ["node-0"], "no other node touched");
        let first = &sim.input.nodes[0];
        assert_eq!(first.failed_revision.as_deref(), Some("r2"));
        let plan = plan_rollout(&sim.input);
        assert_eq!(
            cond(&plan, PROGRESSING).1,
            REASON_PROGRESS_DEADLINE_EXCEEDED
        );
        if auto_rollback {
            // Back at r1 and Ready again.
            assert_eq!(first.assignment.as_ref().unwrap().revision, "r1");
            assert!(plan.nodes.iter().all(|n| n.unavailable.is_none()));
        } else {
            assert_eq!(first.assignment.as_ref().unwrap().revision, "r2");
            assert_eq!(plan.counts.unavailable, 1);
        }
        // The user fixes the template: the rollout resumes and completes.
        sim.input.update_revision = "r3".into();
        sim.run_to_completion(200);
        sim.assert_all_run("r3");
    }
}

#[test]
fn simulated_node_selector_change_mid_rollout() {
    let nodes = names(6).iter().map(|n| healthy(n, "r1")).collect();
    let mut i = input("r2", nodes);
    i.strategy.max_unavailable = MaxUnavailable::Percent(34);
    let mut sim = Sim::new(i, 9);
    for _ in 0..4 {
        sim.step();
    }
    // The selector drops node-0 and node-1 and picks up two nodes that run nothing yet.
    sim.input
        .nodes
        .retain(|n| n.name != "node-0" && n.name != "node-1");
    sim.input.nodes.push(new_node("node-7"));
    sim.input.nodes.push(new_node("node-8"));
    sim.strict = false;
    sim.run_to_completion(300);
    sim.assert_all_run("r2");
    assert_eq!(sim.input.nodes.len(), 6);
}

// --- maxSurge ---

fn surge(n: u32, nodes: Vec<NodeFacts>) -> RolloutInput {
    let mut i = input("r2", nodes);
    i.strategy.max_surge = Some(MaxUnavailable::Count(n));
    i
}

/// A node handed `rev` whose new pod is not Ready yet while its previous pod (`old`) serves.
fn surging(name: &str, rev: &str, old: &str) -> NodeFacts {
    NodeFacts {
        previous_pod: Some(MirrorPod {
            revision: Some(old.into()),
            ready: true,
            ready_since: Some(t(LONG_AGO)),
        }),
        ..handed(name, rev, NOW - 5, Some((rev, false)))
    }
}

#[test]
fn surge_resolves_zero_as_off() {
    assert_eq!(MaxUnavailable::Count(0).resolve_surge(10), 0);
    assert_eq!(MaxUnavailable::Percent(0).resolve_surge(10), 0);
    assert_eq!(MaxUnavailable::Percent(10).resolve_surge(15), 2);
    assert_eq!(MaxUnavailable::Count(2).resolve_surge(10), 2);
}

#[test]
fn surge_hands_available_nodes_the_revision_within_max_surge_and_keeps_them_available() {
    let plan = plan_rollout(&surge(2, all_at("r1", &["a", "b", "c"])));
    assert_eq!(writes(&plan), vec![("a", "r2"), ("b", "r2")]);
    assert_eq!(plan.max_surge, 2);
    assert!(node(&plan, "a").surging && node(&plan, "a").unavailable.is_none());
    assert_eq!(plan.counts.available, 3, "surging nodes still serve");
    assert_eq!(plan.counts.updated, 0);
    assert_eq!(plan.waiting, vec![2]);
    let (_, _, message) = cond(&plan, "Progressing");
    assert!(
        message.contains("a (new pod starting beside the old one)")
            && message
                .contains("1 node waiting, as maxSurge is 2 and 2 nodes are running two pods"),
        "{message}"
    );
}

#[test]
fn a_surging_node_holds_its_unit_until_its_new_pod_is_available() {
    let nodes = vec![surging("a", "r2", "r1"), healthy("b", "r1")];
    let plan = plan_rollout(&surge(1, nodes));
    assert!(writes(&plan).is_empty(), "a holds the only surge unit");
    assert_eq!(plan.counts.available, 2);
    assert_eq!(plan.counts.ready, 2);
    assert_eq!(plan.counts.updated, 0);
    assert!(!plan.complete);

    // a's new pod is available, its previous pod on its way out: b is next.
    let nodes = vec![
        NodeFacts {
            previous_pod: None,
            ..healthy("a", "r2")
        },
        healthy("b", "r1"),
    ];
    let plan = plan_rollout(&surge(1, nodes));
    assert_eq!(writes(&plan), vec![("b", "r2")]);
    assert_eq!(plan.counts.updated, 1);
}

#[test]
fn with_surge_an_unavailable_node_is_updated_in_place_at_once() {
    let mut down = healthy("a", "r1");
    down.mirror_pod.as_mut().unwrap().ready = false;
    let nodes = vec![down, surging("b", "r2", "r1"), healthy("c", "r1")];
    let plan = plan_rollout(&surge(1, nodes));
    assert_eq!(writes(&plan), vec![("a", "r2")]);
    assert!(!node(&plan, "a").surging);
    assert_eq!(plan.counts.available, 2);
}

#[test]
fn a_surge_that_misses_its_deadline_fails_and_rolls_back_to_the_serving_revision() {
    let mut late = surging("a", "r2", "r1");
    late.assignment.as_mut().unwrap().since = t(NOW - 700);
    let mut i = surge(1, vec![late, healthy("b", "r1")]);
    i.strategy.auto_rollback = true;
    let plan = plan_rollout(&i);
    assert!(plan.halted);
    assert_eq!(plan.newly_failed.len(), 1);
    assert_eq!(writes(&plan), vec![("a", "r1")]);
}

#[test]
fn a_node_handed_a_surge_serves_from_its_old_mirror_pod_until_its_agent_reports() {
    // a's entry names r2 but its agent has not written it yet: the report still shows r1 Ready.
    let nodes = vec![
        handed("a", "r2", NOW - 1, Some(("r1", true))),
        healthy("b", "r1"),
    ];
    let plan = plan_rollout(&surge(1, nodes.clone()));
    assert!(writes(&plan).is_empty(), "a holds the only surge unit");
    assert_eq!(plan.counts.available, 2);
    assert!(node(&plan, "a").surging);
    // Without surge the same report is a node on its way down.
    let plan = plan_rollout(&input("r2", nodes));
    assert_eq!(plan.counts.available, 1);
}
