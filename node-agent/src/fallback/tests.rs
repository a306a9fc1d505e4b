use super::*;
use serde_json::json;
use staticpodset_api::{AssignedPod, ManifestPhase, MirrorPodReport};

fn t(s: u64) -> SystemTime {
    from_epoch_seconds(1_000_000 + s)
}

fn manifest(rev: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "vip", "namespace": "ns", "annotations": {ANNOTATION_REVISION: rev}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "side", "image": "busybox"}]}})
}

fn assignment(rev: &str, deadline: Option<i32>) -> Assignment {
    Assignment::available(
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: "vip".into(),
            revision: rev.into(),
            revision_name: format!("vip-{rev}"),
            file_name: "staticpodset_ns_vip.yaml".into(),
            fallback_deadline_seconds: deadline,
            ..AssignedPod::default()
        },
        manifest(rev),
    )
}

fn set() -> SetKey {
    SetKey::new("ns", "vip")
}

fn report(mirror_rev: &str, ready: bool) -> PodReport {
    PodReport {
        set_namespace: "ns".into(),
        set_name: "vip".into(),
        phase: ManifestPhase::Written,
        written_revision: Some(mirror_rev.into()),
        mirror_pod: Some(MirrorPodReport {
            revision: Some(mirror_rev.into()),
            ready,
            ..MirrorPodReport::default()
        }),
        ..PodReport::default()
    }
}

fn running(name: &str, attempt: u32, created: SystemTime) -> ContainerView {
    ContainerView {
        name: name.into(),
        attempt,
        running: true,
        created,
    }
}

fn sandbox(rev: &str, containers: Vec<ContainerView>) -> SandboxView {
    SandboxView {
        ready: true,
        revision: Some(rev.into()),
        containers,
    }
}

/// A node that ran r1 Ready, then was handed r2 with a 20 s fallback deadline, written at t(0).
fn handed_r2() -> (
    Vec<Assignment>,
    BTreeMap<SetKey, (String, SystemTime)>,
    FallbackMemory,
) {
    let mut memory = FallbackMemory::default();
    assert!(observe_ready(
        &[assignment("r1", Some(20))],
        &[report("r1", true)],
        &mut memory
    ));
    assert_eq!(memory.last_ready[&set()].revision, "r1");
    let written = BTreeMap::from([(set(), ("r2".to_string(), t(0)))]);
    (vec![assignment("r2", Some(20))], written, memory)
}

#[test]
fn health_needs_every_container_of_the_revision_running_for_a_while() {
    let names = container_names(&manifest("r2"));
    assert_eq!(names, vec!["main".to_string(), "side".to_string()]);
    let now = t(100);
    let healthy = sandbox(
        "r2",
        vec![running("main", 0, t(50)), running("side", 3, t(80))],
    );
    assert_eq!(
        health("r2", &names, std::slice::from_ref(&healthy), now),
        Ok(())
    );
    // Another revision's sandbox does not count.
    let e = health("r3", &names, std::slice::from_ref(&healthy), now).expect_err("no r3");
    assert!(e.contains("no pod sandbox of revision r3"), "{e}");
    // A sandbox that is not ready.
    let mut not_ready = healthy.clone();
    not_ready.ready = false;
    assert!(health("r2", &names, &[not_ready], now).is_err());
    // The newest attempt counts: an older running one does not save a crashed newer one.
    let mut crashed = healthy.clone();
    crashed.containers.push(ContainerView {
        name: "side".into(),
        attempt: 4,
        running: false,
        created: t(95),
    });
    let e = health("r2", &names, &[crashed], now).expect_err("crashed");
    assert!(
        e.contains("container side is not running (attempt 4)"),
        "{e}"
    );
    // Restarted 5 s ago: not yet.
    let restarted = sandbox(
        "r2",
        vec![running("main", 0, t(50)), running("side", 5, t(95))],
    );
    let e = health("r2", &names, &[restarted], now).expect_err("young");
    assert!(e.contains("has run 5s of the 10s"), "{e}");
    // A container missing altogether.
    let partial = sandbox("r2", vec![running("main", 0, t(50))]);
    assert!(health("r2", &names, &[partial], now).is_err());
}

#[test]
fn a_failing_revision_falls_back_only_after_its_deadline_and_only_without_an_api_server() {
    let (assigned, written, mut memory) = handed_r2();
    // Before the deadline: nothing due, but the loop is told when to look.
    let (due_now, next) = due(&assigned, "node-a", &written, &memory, t(19));
    assert!(due_now.is_empty());
    assert_eq!(next, Some(t(20)));
    let (due_now, _) = due(&assigned, "node-a", &written, &memory, t(20));
    assert_eq!(due_now.len(), 1);
    let d = &due_now[0];
    assert_eq!(d.pod_name, "vip-node-a");
    assert_eq!(d.to.revision, "r1");
    let unhealthy = Err("container main is not running (attempt 3)".to_string());
    // The API server answers: the operator's progress deadline decides, not the node.
    assert_eq!(decide(d, &unhealthy, true, &mut memory, t(20)), None);
    assert!(memory.fallbacks.is_empty());
    // It does not: r1 goes back in place, and the entry is rewritten to it.
    let f = decide(d, &unhealthy, false, &mut memory, t(21)).expect("falls back");
    assert_eq!((f.from.as_str(), f.to.as_str()), ("r2", "r1"));
    assert!(
        f.message.contains("not running (attempt 3)"),
        "{}",
        f.message
    );
    let (applied, in_place) = apply(assigned.clone(), &mut memory);
    assert_eq!(applied[0].entry.revision, "r1");
    assert_eq!(
        applied[0].manifest.as_deref().ok(),
        Some(&manifest("r1")),
        "r1's own manifest"
    );
    assert_eq!(in_place, BTreeSet::from([set()]));
    // Reported while it lasts.
    let mut reports = vec![report("r1", true)];
    annotate(&mut reports, &memory);
    let shown = reports[0].fallback.as_ref().expect("reported");
    assert_eq!(
        (shown.from_revision.as_str(), shown.to_revision.as_str()),
        ("r2", "r1")
    );
    // Not due again, and r1 running Ready under the fallback does not make r2 "passed".
    let written_r1 = BTreeMap::from([(set(), ("r1".to_string(), t(22)))]);
    assert!(due(&assigned, "node-a", &written_r1, &memory, t(100))
        .0
        .is_empty());
    observe_ready(&applied, &reports, &mut memory);
    assert!(!memory.passed.contains(&(set(), "r2".to_string())));
    // A new revision ends the fallback.
    let (applied, in_place) = apply(vec![assignment("r3", Some(20))], &mut memory);
    assert_eq!(applied[0].entry.revision, "r3");
    assert!(in_place.is_empty());
    assert!(memory.fallbacks.is_empty());
}

#[test]
fn a_healthy_revision_is_never_given_up_and_sets_without_fallback_are_left_alone() {
    let (assigned, written, mut memory) = handed_r2();
    let (due_now, _) = due(&assigned, "node-a", &written, &memory, t(30));
    assert_eq!(
        decide(&due_now[0], &Ok(()), false, &mut memory, t(30)),
        None
    );
    assert!(due(&assigned, "node-a", &written, &memory, t(300))
        .0
        .is_empty());

    let (_, written, memory) = handed_r2();
    let off = vec![assignment("r2", None)];
    assert!(due(&off, "node-a", &written, &memory, t(300)).0.is_empty());
    // Nothing ran Ready before: nothing to go back to.
    let fresh = FallbackMemory::default();
    assert!(due(&assigned, "node-a", &written, &fresh, t(300))
        .0
        .is_empty());
    // The agent has not written r2 (held for images, say): its clock has not started.
    let older = BTreeMap::from([(set(), ("r1".to_string(), t(0)))]);
    assert!(due(&assigned, "node-a", &older, &memory, t(300))
        .0
        .is_empty());
}

#[test]
fn the_last_ready_revision_follows_the_mirror_pod() {
    let mut memory = FallbackMemory::default();
    // Not Ready, or Ready at another revision than the entry's: nothing learned.
    assert!(!observe_ready(
        &[assignment("r1", None)],
        &[report("r1", false)],
        &mut memory
    ));
    assert!(!observe_ready(
        &[assignment("r2", None)],
        &[report("r1", true)],
        &mut memory
    ));
    assert!(observe_ready(
        &[assignment("r1", None)],
        &[report("r1", true)],
        &mut memory
    ));
    assert!(
        !observe_ready(
            &[assignment("r1", None)],
            &[report("r1", true)],
            &mut memory
        ),
        "unchanged"
    );
    let kept = &memory.last_ready[&set()];
    assert_eq!(kept.digest, manifest_digest(&manifest("r1")));
    // The set leaves the node: forgotten.
    assert!(observe_ready(&[], &[], &mut memory));
    assert!(memory.last_ready.is_empty());
}
