//! The I/O layer on real temp directories: atomic writes, foreign files left alone byte for byte and
//! mtime for mtime, drift restored, identical content not rewritten, inotify wake-ups.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use staticpodset_api::keys::{manifest_file_name, ANNOTATION_REVISION, ANNOTATION_SET};
use staticpodset_api::{AssignedPod, ManifestPhase};
use staticpodset_node_agent::dir_plan::{render_manifest, Assignment, Rendered};
use staticpodset_node_agent::dir_watcher::DirWatcher;
use staticpodset_node_agent::manifest_dir::{Action, DirError, ManifestDir};
use staticpodset_node_agent::pipeline::{self, NodeDirs, Observed, SyncMemory, SyncOutcome};
use staticpodset_node_agent::resources_dir::ResourcesDir;
use tokio::sync::Notify;

const KUBE_APISERVER: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - name: kube-apiserver
    image: registry.k8s.io/kube-apiserver:v1.36.0
";

fn assigned(ns: &str, set: &str, rev: &str, image: &str) -> Assignment {
    Assignment::available(
        AssignedPod {
            set_namespace: ns.into(),
            set_name: set.into(),
            revision: rev.into(),
            revision_name: format!("{set}-{rev}"),
            file_name: manifest_file_name(ns, set),
            ..Default::default()
        },
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": set,
                "namespace": ns,
                "annotations": {ANNOTATION_SET: format!("{ns}/{set}"), ANNOTATION_REVISION: rev},
            },
            "spec": {"containers": [{"name": "c", "image": image}]},
        }),
    )
}

fn render(a: &Assignment) -> Result<Rendered, String> {
    render_manifest(
        &a.entry,
        a.manifest.as_ref().expect("available"),
        staticpodset_api::keys::Slot::Primary,
    )
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// One sync of `dir` to `assigned` through the agent's own pipeline, as a node in file mode with
/// pre-pull and stop-first off sees it (no pod list, no configuration files).
fn sync_directory(dir: &ManifestDir, assigned: &[Assignment], wall: SystemTime) -> SyncOutcome {
    let dirs = NodeDirs {
        manifests: dir.clone(),
        resources: ResourcesDir::new(
            dir.path().join("resources-never-written"),
            "/etc/kubernetes/static-pod-resources",
        ),
    };
    let observed = Observed::files_only("node-1", assigned.to_vec(), wall, Instant::now());
    pipeline::run(&dirs, observed, &mut SyncMemory::new(None, None))
}

/// Every entry of the directory, dot-files included, with its bytes.
fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            let bytes = fs::read(e.path()).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

/// A file's identity: bytes, inode and mtime. Any rewrite or rename over it changes one of them.
fn fingerprint(path: &Path) -> (Vec<u8>, u64, SystemTime) {
    let meta = fs::metadata(path).expect("metadata");
    (
        fs::read(path).expect("read"),
        meta.ino(),
        meta.modified().expect("mtime"),
    )
}

/// Backdates a file, so that a rewrite in the same clock tick still shows as a changed mtime.
fn backdate(path: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
}

#[test]
fn atomic_write_leaves_only_the_finished_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let pod = assigned("ns", "a", "r1", "img:1");
    let content = render(&pod).expect("render").content;
    let results = dir.execute(&[Action::Write {
        file_name: pod.entry.file_name.clone(),
        content: content.clone(),
        expected: None,
    }]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        listing(tmp.path()),
        BTreeMap::from([(pod.entry.file_name.clone(), content)])
    );
}

#[test]
fn a_write_whose_precondition_fails_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let results = dir.execute(&[Action::Write {
        file_name: manifest_file_name("ns", "a"),
        content: b"new".to_vec(),
        expected: Some(b"what the scan saw".to_vec()),
    }]);
    assert!(
        matches!(results[0], Err(DirError::Changed { .. })),
        "{results:?}"
    );
    assert!(listing(tmp.path()).is_empty());
}

#[test]
fn forbidden_names_are_refused_by_the_executor_too() {
    let outer = tempfile::tempdir().expect("tempdir");
    let inner = outer.path().join("manifests");
    fs::create_dir(&inner).expect("mkdir");
    let dir = ManifestDir::new(&inner);
    for name in [
        "../staticpodset_ns_a.yaml",
        "kube-apiserver.yaml",
        "staticpodset_ns_a/b.yaml",
    ] {
        let results = dir.execute(&[Action::Write {
            file_name: name.into(),
            content: b"x".to_vec(),
            expected: None,
        }]);
        assert!(
            matches!(results[0], Err(DirError::ForbiddenName { .. })),
            "{name}"
        );
    }
    assert!(listing(&inner).is_empty());
    assert_eq!(listing(outer.path()).len(), 1); // just the manifests directory
}

#[test]
fn readers_never_see_a_partial_manifest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let name = manifest_file_name("ns", "big");
    // Large enough that a non-atomic write would be observable mid-way.
    let versions = [vec![b'a'; 1 << 20], vec![b'b'; (1 << 20) + 7]];
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done, versions) = (tmp.path().to_owned(), done.clone(), versions.clone());
        std::thread::spawn(move || {
            let mut seen = 0usize;
            loop {
                // Read the flag first so the last pass runs after the last write.
                let last_pass = done.load(Ordering::Acquire);
                for (file, bytes) in listing(&path) {
                    if file.starts_with('.') {
                        continue;
                    }
                    assert_eq!(file, manifest_file_name("ns", "big"));
                    assert!(
                        versions.contains(&bytes),
                        "partial read of {} bytes",
                        bytes.len()
                    );
                    seen += 1;
                }
                if last_pass {
                    return seen;
                }
            }
        })
    };
    let mut expected = None;
    for i in 0..40 {
        let content = versions[i % 2].clone();
        let results = dir.execute(&[Action::Write {
            file_name: name.clone(),
            content: content.clone(),
            expected: expected.clone(),
        }]);
        assert!(results[0].is_ok(), "{results:?}");
        expected = Some(content);
    }
    done.store(true, Ordering::Release);
    let seen = reader.join().expect("reader saw only complete files");
    assert!(seen > 0);
    assert_eq!(listing(tmp.path()).len(), 1, "no temp file left behind");
}

#[test]
fn stale_temp_files_of_ours_are_cleaned_up_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keep = [
        ".kube-apiserver.yaml.swp",
        ".staticpodset_notes",
        "kube-apiserver.yaml",
        "x.tmp",
    ];
    for name in keep {
        fs::write(tmp.path().join(name), "foreign").expect("write");
    }
    fs::write(
        tmp.path().join(".staticpodset_ns_a.yaml.Xy12z.tmp"),
        "half a manif",
    )
    .expect("write");
    let removed = ManifestDir::new(tmp.path())
        .remove_stale_temp_files()
        .expect("cleanup");
    assert_eq!(
        removed,
        vec![".staticpodset_ns_a.yaml.Xy12z.tmp".to_owned()]
    );
    let left: Vec<_> = listing(tmp.path()).into_keys().collect();
    let mut expected: Vec<_> = keep.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected);
}

#[test]
fn foreign_files_are_untouched_byte_for_byte_and_mtime_for_mtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let other_set = render(&assigned("ns", "d", "r1", "i"))
        .expect("render")
        .content;
    let foreign: Vec<(String, Vec<u8>)> = vec![
        ("kube-apiserver.yaml".into(), KUBE_APISERVER.into()),
        // Named like ours, but without our annotation.
        (
            "staticpodset_kube-system_impostor.yaml".into(),
            KUBE_APISERVER.replace("kube-apiserver", "impostor").into(),
        ),
        // Named like ours, annotated for another set.
        ("staticpodset_ns_c.yaml".into(), other_set),
        ("notes.txt".into(), b"not even YAML: [".to_vec()),
        (".hidden".into(), b"dot-file".to_vec()),
    ];
    for (name, content) in &foreign {
        let path = tmp.path().join(name);
        fs::write(&path, content).expect("write");
        backdate(&path);
    }
    let before: Vec<_> = foreign
        .iter()
        .map(|(name, _)| fingerprint(&tmp.path().join(name)))
        .collect();

    let specs = [
        // Same pod as kubeadm's kube-apiserver.yaml: conflict.
        vec![assigned("kube-system", "kube-apiserver", "r1", "evil:1")],
        // Same file name as the impostor: conflict.
        vec![assigned("kube-system", "impostor", "r1", "evil:1")],
        // Ordinary sets, including one named like the mismatched file's set.
        vec![
            assigned("ns", "a", "r1", "img:1"),
            assigned("ns", "c", "r1", "img:1"),
        ],
        // Nothing assigned: every owned file goes, foreign ones stay.
        vec![],
    ];
    for spec in &specs {
        let sync = sync_directory(&dir, spec, now());
        for (i, (name, _)) in foreign.iter().enumerate() {
            assert_eq!(
                fingerprint(&tmp.path().join(name)),
                before[i],
                "{name} after {spec:?}"
            );
        }
        assert!(!sync.files.failed, "{sync:?}");
    }

    let conflict = sync_directory(&dir, &specs[0], now());
    assert_eq!(conflict.sets[0].phase, ManifestPhase::Conflict);
    assert!(conflict.sets[0]
        .message
        .as_deref()
        .is_some_and(|m| m.contains("kube-apiserver.yaml")));
    assert!(!tmp.path().join(&specs[0][0].entry.file_name).exists());

    let taken = sync_directory(&dir, &specs[1], now());
    assert_eq!(taken.sets[0].phase, ManifestPhase::Conflict);

    let ordinary = sync_directory(&dir, &specs[2], now());
    assert_eq!(ordinary.sets[0].phase, ManifestPhase::Written);
    assert_eq!(
        ordinary.sets[1].phase,
        ManifestPhase::Conflict,
        "{ordinary:?}"
    );
}

#[test]
fn drift_is_restored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let spec = [assigned("ns", "a", "r1", "img:1")];
    let path = tmp.path().join(&spec[0].entry.file_name);
    let want = render(&spec[0]).expect("render").content;

    assert_eq!(sync_directory(&dir, &spec, now()).files.written, 1);
    assert_eq!(fs::read(&path).expect("read"), want);

    fs::remove_file(&path).expect("delete");
    let sync = sync_directory(&dir, &spec, now());
    assert_eq!(
        (sync.files.written, sync.sets[0].phase),
        (1, ManifestPhase::Written)
    );
    assert_eq!(fs::read(&path).expect("read"), want);

    // An edit that keeps our annotation is drift in an owned file: reverted.
    let edited = String::from_utf8(want.clone())
        .expect("utf-8")
        .replace("img:1", "hacked:2");
    fs::write(&path, &edited).expect("edit");
    assert_eq!(sync_directory(&dir, &spec, now()).files.written, 1);
    assert_eq!(fs::read(&path).expect("read"), want);

    // An edit that strips the annotation makes the file foreign: reported, never overwritten.
    fs::write(&path, KUBE_APISERVER.replace("kube-apiserver", "a")).expect("edit");
    let sync = sync_directory(&dir, &spec, now());
    assert_eq!(
        (sync.files.written, sync.sets[0].phase),
        (0, ManifestPhase::Conflict)
    );
    assert_ne!(fs::read(&path).expect("read"), want);
}

#[test]
fn identical_content_is_not_rewritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let spec = [assigned("ns", "a", "r1", "img:1")];
    let path = tmp.path().join(&spec[0].entry.file_name);
    sync_directory(&dir, &spec, now());
    backdate(&path);
    let before = fingerprint(&path);

    let sync = sync_directory(&dir, &spec, now());
    assert_eq!(sync.files.written, 0);
    assert_eq!(sync.sets[0].phase, ManifestPhase::Written);
    assert_eq!(
        sync.sets[0].written_at,
        Some(before.2),
        "written_at is the file's mtime"
    );
    assert_eq!(fingerprint(&path), before);
}

#[test]
fn a_new_revision_replaces_the_file_and_unassigned_sets_are_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    sync_directory(
        &dir,
        &[
            assigned("ns", "a", "r1", "img:1"),
            assigned("ns", "b", "r1", "img:1"),
        ],
        now(),
    );
    let spec = [assigned("ns", "a", "r2", "img:2")];
    let sync = sync_directory(&dir, &spec, now());
    assert_eq!((sync.files.written, sync.files.removed), (1, 1));
    assert_eq!(sync.sets[0].written_revision.as_deref(), Some("r2"));
    assert_eq!(
        listing(tmp.path()).into_keys().collect::<Vec<_>>(),
        vec![manifest_file_name("ns", "a")]
    );
}

#[test]
fn a_symlink_named_like_ours_is_foreign() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let spec = [assigned("ns", "a", "r1", "img:1")];
    let target = tempfile::NamedTempFile::new().expect("target");
    fs::write(target.path(), render(&spec[0]).expect("r").content).expect("write");
    let link = tmp.path().join(&spec[0].entry.file_name);
    std::os::unix::fs::symlink(target.path(), &link).expect("symlink");
    let sync = sync_directory(&dir, &spec, now());
    assert_eq!(sync.sets[0].phase, ManifestPhase::Conflict);
    assert!(fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    // And it is not removed when unassigned either.
    sync_directory(&dir, &[], now());
    assert!(fs::symlink_metadata(&link).is_ok());
}

#[test]
fn a_missing_directory_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path().join("absent"));
    let sync = sync_directory(&dir, &[assigned("ns", "a", "r1", "img:1")], now());
    assert!(sync.files.failed);
    assert_eq!(sync.sets[0].phase, ManifestPhase::Error);
    assert!(sync.sets[0]
        .message
        .as_deref()
        .is_some_and(|m| m.contains("absent")));
}

#[tokio::test]
async fn inotify_wakes_the_loop_when_a_manifest_is_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = ManifestDir::new(tmp.path());
    let spec = [assigned("ns", "a", "r1", "img:1")];
    sync_directory(&dir, &spec, now());

    let wake = Arc::new(Notify::new());
    let _watcher = DirWatcher::start(tmp.path(), wake.clone()).expect("inotify");
    fs::remove_file(tmp.path().join(&spec[0].entry.file_name)).expect("delete");

    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("woken within the deadline");
    assert_eq!(sync_directory(&dir, &spec, now()).files.written, 1);
}
