//! The pipeline's steps and its wake-up, on plain values and on temp directories.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use staticpodset_api::config_files::{volume_path, CONFIG_HASH, DEFAULT_RESOURCES_ROOT};
use staticpodset_api::{AssignedPod, ManifestPhase, ManifestSource, SetKey};

use super::*;
use crate::config_files::files_of;
use crate::config_files::tests::bundle;
use crate::cri::PullResult;
use crate::manifest_dir::ManifestDir;
use crate::prepull::{PrePull, PullJob};
use crate::resources_dir::ResourcesDir;
use crate::revisions::tests::{entry, manifest, manifest_with};
use crate::url_source::UrlResponse;

const NODE: &str = "node-1";
const HOST_ROOT: &str = "/var/lib/node-1/resources";
const PREPULL_TIMEOUT: Duration = Duration::from_secs(120);

fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn key(set: &str) -> SetKey {
    SetKey::new("ns", set)
}

/// A manifest directory and a resources directory inside `tmp`.
fn mk_dirs(tmp: &tempfile::TempDir) -> NodeDirs {
    let manifests = tmp.path().join("manifests");
    fs::create_dir(&manifests).expect("mkdir");
    NodeDirs {
        manifests: ManifestDir::new(manifests),
        resources: ResourcesDir::new(tmp.path().join("resources"), HOST_ROOT),
    }
}

/// The revisions each owned manifest in the directory holds, by set name.
fn on_disk(dirs: &NodeDirs) -> Vec<(String, Option<String>)> {
    let scan = dirs.manifests.scan().expect("scan");
    scan.files
        .iter()
        .filter_map(|f| {
            let set = crate::dir_plan::owner(f)?;
            Some((set.name, f.info.revision.clone()))
        })
        .collect()
}

fn mk_assignment(set: &str, rev: &str) -> Assignment {
    Assignment::available(entry(set, rev), manifest(set, rev))
}

fn mk_with_image(set: &str, rev: &str, image: &str) -> Assignment {
    Assignment::available(
        entry(set, rev),
        manifest_with(set, rev, json!([{"name": "c", "image": image}])),
    )
}

/// An assignment whose manifest mounts its configuration files at `hash`.
fn mk_with_config(set: &str, rev: &str, hash: &str) -> Assignment {
    let mut m = manifest(set, rev);
    m["metadata"]["annotations"][CONFIG_HASH] = hash.into();
    m["spec"]["volumes"] = json!([{
        "name": "conf",
        "hostPath": {"path": volume_path(DEFAULT_RESOURCES_ROOT, "ns", set, hash, "conf")},
    }]);
    Assignment::available(entry(set, rev), m)
}

fn mk_unavailable(set: &str, rev: &str) -> Assignment {
    Assignment {
        entry: entry(set, rev),
        manifest: Err(format!("cannot read StaticPodRevision ns/{set}-{rev}: 503").into()),
    }
}

/// The mirror pod the kubelet shows for set `set` at revision `rev`, from `source` (`file` or
/// `http`).
fn mk_mirror(set: &str, rev: &str, source: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("{set}-{NODE}"),
                "namespace": "ns",
                "annotations": {
                    "kubernetes.io/config.mirror": "h",
                    "kubernetes.io/config.source": source,
                    "staticpods.dev/set": format!("ns/{set}"),
                    "staticpods.dev/revision": rev,
                },
            },
        }))
        .expect("pod"),
    )
}

fn observed(assigned: Vec<Assignment>, now: Instant) -> Observed {
    Observed::files_only(NODE, assigned, wall(), now)
}

fn with_pods(mut o: Observed, pods: Vec<Arc<Pod>>) -> Observed {
    o.pods = Some(NodePods::new(pods));
    o
}

fn prepull_on() -> SyncMemory {
    SyncMemory::new(
        Some(PrePull::new(PREPULL_TIMEOUT, Duration::from_secs(5))),
        None,
    )
}

#[test]
fn the_wake_up_is_the_earliest_deadline_and_never_later_than_the_resync() {
    let now = Instant::now();
    let resync = Duration::from_secs(30);
    assert_eq!(
        next_wakeup(&Deadlines::default(), now, wall(), resync),
        resync
    );
    // Every clock counts, whichever it is.
    let soon = now + Duration::from_secs(4);
    let each: [Deadlines; 6] = [
        Deadlines {
            mirror_grace: Some(wall() + Duration::from_secs(4)),
            ..Deadlines::default()
        },
        Deadlines {
            revision_retry: Some(soon),
            ..Deadlines::default()
        },
        Deadlines {
            prepull: Some(soon),
            ..Deadlines::default()
        },
        Deadlines {
            stop_first: Some(soon),
            ..Deadlines::default()
        },
        Deadlines {
            url_handover: Some(soon),
            ..Deadlines::default()
        },
        Deadlines {
            config_retry: Some(soon),
            ..Deadlines::default()
        },
    ];
    for deadlines in &each {
        assert_eq!(
            next_wakeup(deadlines, now, wall(), resync),
            Duration::from_secs(4),
            "{deadlines:?}"
        );
    }
    let mixed = Deadlines {
        mirror_grace: Some(wall() + Duration::from_secs(9)),
        revision_retry: Some(now + Duration::from_secs(12)),
        prepull: Some(now + Duration::from_secs(20)),
        stop_first: Some(now + Duration::from_secs(7)),
        url_handover: Some(now + Duration::from_secs(90)),
        config_retry: None,
        surge_retire: Some(wall() + Duration::from_secs(8)),
    };
    assert_eq!(
        next_wakeup(&mixed, now, wall(), resync),
        Duration::from_secs(7)
    );
    let far = Deadlines {
        url_handover: Some(now + Duration::from_secs(90)),
        ..Deadlines::default()
    };
    assert_eq!(next_wakeup(&far, now, wall(), resync), resync);
    // A deadline already past (the sync took longer) means at once, on either clock.
    let later = now + Duration::from_secs(10);
    assert_eq!(next_wakeup(&each[2], later, wall(), resync), Duration::ZERO);
    assert_eq!(
        next_wakeup(&each[0], now, wall() + Duration::from_secs(60), resync),
        Duration::ZERO
    );
}

#[test]
fn configuration_files_in_place_point_the_manifest_at_them_and_missing_ones_hold_the_set() {
    let now = Instant::now();
    let mut memory = SyncMemory::new(None, None);
    let mut o = observed(
        vec![
            mk_with_config("ready", "r1", "0123456789"),
            mk_with_config("broken", "r1", "1111111111"),
            mk_with_config("unprepared", "r1", "2222222222"),
            mk_assignment("plain", "r1"),
        ],
        now,
    );
    o.config = ConfigReadiness::from([
        ((key("ready"), "0123456789".to_string()), Ok(())),
        (
            (key("broken"), "1111111111".to_string()),
            Err("writing configuration files: disk full".to_string()),
        ),
    ]);
    let routed = route(&o, HOST_ROOT, &mut memory);
    let ready = routed.all[0].manifest.as_ref().expect("ready");
    assert_eq!(
        ready["spec"]["volumes"][0]["hostPath"]["path"],
        json!(volume_path(HOST_ROOT, "ns", "ready", "0123456789", "conf"))
    );
    assert_eq!(
        routed.all[1].manifest,
        Err(crate::dir_plan::Unavailable::Waiting(
            "writing configuration files: disk full".to_string()
        ))
    );
    assert!(routed.all[2].manifest.is_err());
    assert_eq!(routed.all[3], mk_assignment("plain", "r1"));
    // File mode: everything to the directory, as gated; a held set stays wherever it is, so it
    // is listed for the URL too (which removes nothing of it).
    assert_eq!(routed.files, routed.all);
    let url: Vec<&str> = routed
        .url
        .iter()
        .map(|a| a.entry.set_name.as_str())
        .collect();
    assert_eq!(url, ["broken", "unprepared"]);
}

#[test]
fn a_set_leaving_the_url_waits_for_its_url_pod_only_when_the_agent_serves_one() {
    let now = Instant::now();
    let assigned = vec![
        mk_assignment("served", "r1"),
        mk_assignment("mirrored", "r1"),
    ];
    let mut memory = SyncMemory::new(None, None);
    memory.served = ServedPods::from([(
        key("served"),
        served_pods::Served {
            revision: "r1".into(),
            manifest: Arc::new(manifest("served", "r1")),
            since: wall(),
        },
    )]);

    // Without a URL source nothing is held.
    let routed = route(&observed(assigned.clone(), now), HOST_ROOT, &mut memory);
    assert!(routed.files.iter().all(|a| a.manifest.is_ok()));
    assert!(memory.url_handover.is_empty());

    let mut o = with_pods(
        observed(assigned.clone(), now),
        vec![mk_mirror("mirrored", "r1", "http")],
    );
    o.url_enabled = true;
    let routed = route(&o, HOST_ROOT, &mut memory);
    assert!(routed.files.iter().all(|a| a.manifest.is_err()));
    // The whole list, not the held one, is what the node needs.
    assert!(routed.all.iter().all(|a| a.manifest.is_ok()));
    assert_eq!(
        memory.url_handover.keys().cloned().collect::<Vec<_>>(),
        [key("mirrored"), key("served")]
    );

    // The kubelet stopped both URL pods: written.
    memory.served.clear();
    let mut o = with_pods(observed(assigned, now), vec![]);
    o.url_enabled = true;
    let routed = route(&o, HOST_ROOT, &mut memory);
    assert!(routed.files.iter().all(|a| a.manifest.is_ok()));
    assert!(memory.url_handover.is_empty());
}

#[test]
fn a_held_write_asks_for_its_images_and_goes_ahead_once_they_are_pulled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = prepull_on();
    let t0 = Instant::now();
    let spec = vec![mk_with_image("web", "r1", "reg/web:1")];

    let first = run(
        &dirs,
        with_pods(observed(spec.clone(), t0), vec![]),
        &mut memory,
    );
    assert!(on_disk(&dirs).is_empty());
    let gate = first.gates.prepull.as_ref().expect("pre-pull on");
    assert_eq!(
        gate.pulls,
        [PullJob {
            image: "reg/web:1".into(),
            always: false
        }]
    );
    assert_eq!(gate.held, [(key("web"), "r1".to_string())]);
    assert_eq!(first.sets[0].phase, ManifestPhase::Pending);
    assert_eq!(first.waiting_for_images, Some(1));
    assert_eq!(first.deadlines.prepull, Some(t0 + PREPULL_TIMEOUT));

    let t1 = t0 + Duration::from_secs(3);
    let mut pulled = with_pods(observed(spec, t1), vec![]);
    pulled.pulls = vec![PullResult {
        image: "reg/web:1".into(),
        result: Ok(()),
        at: t1,
    }];
    let second = run(&dirs, pulled, &mut memory);
    assert_eq!(
        on_disk(&dirs),
        [("web".to_string(), Some("r1".to_string()))]
    );
    let gate = second.gates.prepull.expect("pre-pull on");
    assert_eq!(gate.released.len(), 1);
    assert_eq!(gate.released[0].waited, Duration::from_secs(3));
    assert_eq!(gate.released[0].deadline_passed, None);
    assert_eq!(second.sets[0].phase, ManifestPhase::Written);
    assert_eq!(second.files.written, 1);
    assert_eq!(second.deadlines.prepull, None);
}

#[test]
fn a_pull_result_is_kept_even_when_the_directory_cannot_be_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let gone = NodeDirs {
        manifests: ManifestDir::new(tmp.path().join("absent")),
        resources: dirs.resources.clone(),
    };
    let mut memory = prepull_on();
    let t0 = Instant::now();
    let spec = vec![mk_with_image("web", "r1", "reg/web:1")];
    run(&dirs, observed(spec.clone(), t0), &mut memory);

    let mut pulled = observed(spec.clone(), t0 + Duration::from_secs(1));
    pulled.pulls = vec![PullResult {
        image: "reg/web:1".into(),
        result: Ok(()),
        at: t0,
    }];
    let unreadable = run(&gone, pulled, &mut memory);
    assert!(unreadable.files.failed);
    assert_eq!(unreadable.sets[0].phase, ManifestPhase::Error);

    let after = run(
        &dirs,
        observed(spec, t0 + Duration::from_secs(2)),
        &mut memory,
    );
    assert_eq!(after.files.written, 1, "{after:?}");
    assert!(after.gates.prepull.expect("on").pulls.is_empty());
}

#[test]
fn stop_first_removes_a_running_pods_manifest_before_writing_its_new_revision() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = SyncMemory::new(None, Some(Duration::from_secs(60)));
    let t0 = Instant::now();
    run(
        &dirs,
        observed(vec![mk_assignment("web", "r1")], t0),
        &mut memory,
    );
    assert_eq!(
        on_disk(&dirs),
        [("web".to_string(), Some("r1".to_string()))]
    );

    let r2 = vec![mk_assignment("web", "r2")];
    let running = vec![mk_mirror("web", "r1", "file")];
    let swap = run(
        &dirs,
        with_pods(observed(r2.clone(), t0), running.clone()),
        &mut memory,
    );
    assert!(on_disk(&dirs).is_empty());
    assert_eq!(swap.gates.stopped.expect("on").started, [key("web")]);
    assert_eq!(swap.sets[0].phase, ManifestPhase::Pending);
    assert_eq!(swap.files.removed, 1);
    assert_eq!(
        swap.deadlines.stop_first,
        Some(t0 + Duration::from_secs(60))
    );

    // Still running: held.
    let held = run(
        &dirs,
        with_pods(observed(r2.clone(), t0 + Duration::from_secs(2)), running),
        &mut memory,
    );
    assert!(on_disk(&dirs).is_empty());
    assert_eq!(held.sets[0].phase, ManifestPhase::Pending);

    // Gone: written.
    let done = run(
        &dirs,
        with_pods(observed(r2, t0 + Duration::from_secs(5)), vec![]),
        &mut memory,
    );
    assert_eq!(
        on_disk(&dirs),
        [("web".to_string(), Some("r2".to_string()))]
    );
    assert_eq!(
        done.gates.stopped.expect("on").finished,
        [(key("web"), Duration::from_secs(5), false)]
    );
    assert_eq!(done.deadlines.stop_first, None);
}

#[test]
fn without_the_pod_list_stop_first_replaces_in_place_and_nothing_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = SyncMemory::new(None, Some(Duration::from_secs(60)));
    let t0 = Instant::now();
    run(
        &dirs,
        observed(vec![mk_assignment("web", "r1")], t0),
        &mut memory,
    );
    let outcome = run(
        &dirs,
        observed(vec![mk_assignment("web", "r2")], t0),
        &mut memory,
    );
    assert_eq!(
        on_disk(&dirs),
        [("web".to_string(), Some("r2".to_string()))]
    );
    assert_eq!(outcome.gates.stopped, Some(Stopped::default()));
    assert_eq!(outcome.report, None);
    assert_eq!(outcome.config_cleanup, None);
    // No report, no clocks: the pod watch's first list wakes the loop.
    assert_eq!(outcome.deadlines, Deadlines::default());
}

#[test]
fn the_report_comes_with_the_pod_list_and_its_mirror_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = SyncMemory::new(None, None);
    let mut o = with_pods(
        observed(vec![mk_assignment("web", "r1")], Instant::now()),
        vec![],
    );
    o.generation = Some(7);
    let retry = Instant::now() + Duration::from_secs(8);
    o.revision_retry = Some(retry);
    let outcome = run(&dirs, o, &mut memory);
    let report = outcome.report.expect("a report");
    assert_eq!(report.status.observed_generation, Some(7));
    assert_eq!(report.status.pods.len(), 1);
    // Written just now, no mirror pod yet: the grace runs out a minute after the write.
    assert_eq!(
        outcome.deadlines.mirror_grace,
        Some(wall() + report::MIRROR_GRACE)
    );
    assert_eq!(outcome.deadlines.revision_retry, Some(retry));
    assert_eq!(report.status.manifest_source, None, "no URL source");
    assert_eq!(outcome.config_cleanup, Some(Ok(Vec::new())));
}

#[test]
fn in_url_mode_the_sets_are_served_and_no_file_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = SyncMemory::new(None, None);
    let mut o = with_pods(
        observed(vec![mk_assignment("a", "r1")], Instant::now()),
        vec![],
    );
    o.mode = ManifestSource::Url;
    o.url_enabled = true;
    let outcome = run(&dirs, o, &mut memory);
    assert!(on_disk(&dirs).is_empty());
    let url = outcome.url.expect("serving");
    assert_eq!(url.served, 1);
    let UrlResponse::Pods(body) = &url.response else {
        panic!("{:?}", url.response)
    };
    let list: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(list["items"][0], manifest("a", "r1"));
    assert_eq!(outcome.sets[0].source, Some(ManifestSource::Url));
    assert_eq!(outcome.sets[0].phase, ManifestPhase::Written);
    assert!(memory.served.contains_key(&key("a")));
    let report = outcome.report.expect("a report");
    assert_eq!(report.status.manifest_source, Some(ManifestSource::Url));

    // A set the kubelet may run from the URL (no pod list yet) whose manifest the agent never
    // had: the answer is an error, and what was served stays.
    let mut o = observed(
        vec![mk_assignment("a", "r1"), mk_unavailable("b", "r1")],
        Instant::now(),
    );
    o.mode = ManifestSource::Url;
    o.url_enabled = true;
    let outcome = run(&dirs, o, &mut memory);
    let url = outcome.url.expect("serving");
    assert!(
        matches!(&url.response, UrlResponse::Unavailable(why) if why.contains("ns/b")),
        "{:?}",
        url.response
    );
    assert!(memory.served.contains_key(&key("a")));
}

#[test]
fn configuration_files_nothing_names_are_removed_once_the_pods_are_known() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let files = files_of(&bundle("0123456789"), "0123456789").expect("bundle");
    dirs.resources
        .write(&key("web"), "0123456789", &files)
        .expect("write");
    let mut memory = SyncMemory::new(None, None);

    // Without the pod list a running pod may mount them: kept.
    let outcome = run(&dirs, observed(vec![], Instant::now()), &mut memory);
    assert_eq!(outcome.config_cleanup, None);
    assert!(dirs.resources.has(&key("web"), "0123456789"));

    // A running pod names them: kept.
    let mut running = (*mk_mirror("web", "r1", "file")).clone();
    if let Some(a) = running.metadata.annotations.as_mut() {
        a.insert(CONFIG_HASH.into(), "0123456789".into());
    }
    let outcome = run(
        &dirs,
        with_pods(observed(vec![], Instant::now()), vec![Arc::new(running)]),
        &mut memory,
    );
    assert_eq!(outcome.config_cleanup, Some(Ok(Vec::new())));
    assert!(dirs.resources.has(&key("web"), "0123456789"));

    // Nothing does: removed.
    let outcome = run(
        &dirs,
        with_pods(observed(vec![], Instant::now()), vec![]),
        &mut memory,
    );
    assert_eq!(
        outcome.config_cleanup,
        Some(Ok(vec![Cleanup::RemoveSet(key("web"))]))
    );
    assert!(!dirs.resources.has(&key("web"), "0123456789"));
}

#[test]
fn the_configuration_retry_is_a_deadline_while_files_could_not_be_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = mk_dirs(&tmp);
    let mut memory = SyncMemory::new(None, None);
    let now = Instant::now();
    let mut o = with_pods(
        observed(vec![mk_with_config("web", "r1", "0123456789")], now),
        vec![],
    );
    o.config = ConfigReadiness::from([(
        (key("web"), "0123456789".to_string()),
        Err("reading configuration bundle: timed out".to_string()),
    )]);
    let outcome = run(&dirs, o, &mut memory);
    assert!(on_disk(&dirs).is_empty());
    assert_eq!(outcome.sets[0].phase, ManifestPhase::Pending);
    assert_eq!(outcome.deadlines.config_retry, Some(now + CONFIG_RETRY));
}

#[test]
fn a_forged_revision_is_neither_written_nor_served_and_the_set_reports_an_error() {
    use crate::revisions::tests::{forged, revision};
    use crate::revisions::RevisionCache;
    let evil = json!([{"name": "c", "image": "registry.example/evil:1"}]);
    let revision_key = |rev: &str| ("ns".to_string(), format!("a-{rev}"));
    for url in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = mk_dirs(&tmp);
        let mut memory = SyncMemory::new(None, None);
        let mut cache = RevisionCache::default();
        let sync = |cache: &RevisionCache, entries: &[AssignedPod], memory: &mut SyncMemory| {
            let mut o = with_pods(observed(cache.resolve(entries), Instant::now()), vec![]);
            if url {
                o.mode = ManifestSource::Url;
                o.url_enabled = true;
            }
            run(&dirs, o, memory)
        };
        // The operator's r1 runs.
        let at_r1 = vec![entry("a", "r1")];
        cache
            .record(
                revision_key("r1"),
                Ok(Some(revision("a", "r1"))),
                &at_r1,
                Instant::now(),
            )
            .expect("r1 is the operator's");
        sync(&cache, &at_r1, &mut memory);
        let before = fs::read_dir(dirs.manifests.path())
            .expect("dir")
            .map(|f| fs::read(f.expect("entry").path()).expect("read"))
            .collect::<Vec<_>>();

        // The set moves to r2, whose object someone replaced with a pod of their own.
        let at_r2 = vec![entry("a", "r2")];
        assert!(cache
            .record(
                revision_key("r2"),
                Ok(Some(forged("a", "r2", evil.clone()))),
                &at_r2,
                Instant::now()
            )
            .is_err());
        cache.retain(&at_r2);
        let outcome = sync(&cache, &at_r2, &mut memory);

        let after = fs::read_dir(dirs.manifests.path())
            .expect("dir")
            .map(|f| fs::read(f.expect("entry").path()).expect("read"))
            .collect::<Vec<_>>();
        assert_eq!(after, before, "url {url}: the directory is untouched");
        if url {
            assert!(on_disk(&dirs).is_empty());
            let served = outcome.url.expect("serving");
            let UrlResponse::Pods(body) = &served.response else {
                panic!("{:?}", served.response)
            };
            let list: serde_json::Value = serde_json::from_slice(body).expect("json");
            assert_eq!(
                list["items"],
                json!([manifest("a", "r1")]),
                "r1 still served"
            );
        } else {
            assert_eq!(on_disk(&dirs), [("a".to_string(), Some("r1".to_string()))]);
        }
        let report = outcome.report.expect("a report");
        let pod = &report.status.pods[0];
        assert_eq!(pod.phase, ManifestPhase::Error, "url {url}");
        assert_eq!(pod.written_revision.as_deref(), Some("r1"), "url {url}");
        let message = pod.message.as_deref().unwrap_or_default();
        let expected = entry("a", "r2").digest.expect("a digest");
        let actual = staticpodset_api::digest::manifest_digest(
            &forged("a", "r2", evil.clone()).spec.manifest,
        );
        for part in ["StaticPodRevision ns/a-r2", &expected, &actual] {
            assert!(message.contains(part), "url {url}, {part}: {message}");
        }
    }
}
