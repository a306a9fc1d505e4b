//! The whole agent loop against an in-process fake API server (list, watch, status patch, revision
//! reads) and a real temp directory: nothing is touched without API data, nothing while the object
//! is missing, the assigned state once it exists, nothing for an entry whose revision cannot be
//! read, and drift is restored from the cache while the API server is down. In URL mode: an error
//! until the state is loaded, then the pod list, no files, and the list kept through outages.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use staticpodset_api::digest::manifest_digest;
use staticpodset_api::keys::{manifest_file_name, ANNOTATION_REVISION, ANNOTATION_SET};
use staticpodset_node_agent::agent::{self, Context};
use staticpodset_node_agent::http::Readiness;
use staticpodset_node_agent::manifest_dir::ManifestDir;
use staticpodset_node_agent::metrics::Metrics;
use staticpodset_node_agent::state_file::StateFile;
use staticpodset_node_agent::url_source::{UrlResponse, UrlSource};
use tokio::sync::{mpsc, oneshot, watch};

const NODE: &str = "node-1";
const DEADLINE: Duration = Duration::from_secs(30);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the fake API server serves and what it received.
#[derive(Default)]
struct ApiState {
    down: bool,
    node_static_pods: Option<Value>,
    pods: Vec<Value>,
    nsp_watches: Vec<mpsc::UnboundedSender<Bytes>>,
    pod_watches: Vec<mpsc::UnboundedSender<Bytes>>,
    // Events since the list's resourceVersion, replayed to every new watch as the API server
    // would, so an event is not lost to a watch that connects late.
    nsp_history: Vec<Bytes>,
    pod_history: Vec<Bytes>,
    requests: Vec<String>,
    patches: Vec<(String, Value)>,
    /// StaticPodRevisions in kube-system by name; others are 404.
    revisions: BTreeMap<String, Value>,
    /// Revisions whose reads fail with 500.
    failing_revisions: BTreeSet<String>,
}

type Shared = Arc<Mutex<ApiState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, ApiState> {
    state.lock().expect("fake API state")
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("response")
}

fn stream(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("response")
}

fn watch_event(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

async fn handle(state: Shared, req: Request<kube::client::Body>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = req.into_body().collect_bytes().await.unwrap_or_default();
    let mut s = lock(&state);
    s.requests.push(format!("{method} {uri}"));
    if s.down {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "ServiceUnavailable", "code": 503, "message": "down"}),
        );
    }
    let path = uri.path();
    let query = uri.query().unwrap_or_default();
    let watching = query.contains("watch=true");
    match (method.as_str(), path) {
        ("GET", "/apis/staticpods.dev/v1alpha1/nodestaticpods") => {
            assert!(
                query.contains(&format!("metadata.name%3D{NODE}")),
                "{query}"
            );
            if watching {
                let (tx, rx) = mpsc::unbounded_channel();
                for event in &s.nsp_history {
                    let _ = tx.send(event.clone());
                }
                s.nsp_watches.push(tx);
                return stream(rx);
            }
            let items: Vec<Value> = s.node_static_pods.iter().cloned().collect();
            full(
                StatusCode::OK,
                &json!({"apiVersion": "staticpods.dev/v1alpha1", "kind": "NodeStaticPodsList",
                        "metadata": {"resourceVersion": "10"}, "items": items}),
            )
        }
        ("GET", "/api/v1/pods") => {
            assert!(
                query.contains(&format!("spec.nodeName%3D{NODE}")),
                "{query}"
            );
            if watching {
                let (tx, rx) = mpsc::unbounded_channel();
                for event in &s.pod_history {
                    let _ = tx.send(event.clone());
                }
                s.pod_watches.push(tx);
                return stream(rx);
            }
            full(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": "10"}, "items": s.pods}),
            )
        }
        ("GET", p) if p.starts_with(REVISIONS) => {
            let name = &p[REVISIONS.len()..];
            if s.failing_revisions.contains(name) {
                return full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "InternalError", "code": 500, "message": "etcd is sad"}),
                );
            }
            match s.revisions.get(name) {
                Some(revision) => full(StatusCode::OK, revision),
                None => full(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404,
                            "message": format!("staticpodrevisions {name:?} not found")}),
                ),
            }
        }
        ("PATCH", p)
            if p == format!("/apis/staticpods.dev/v1alpha1/nodestaticpods/{NODE}/status") =>
        {
            let patch: Value = serde_json::from_slice(&body).expect("patch body is JSON");
            s.patches.push((query.to_owned(), patch.clone()));
            let mut object = s.node_static_pods.clone().unwrap_or(Value::Null);
            object["status"] = patch["status"].clone();
            full(StatusCode::OK, &object)
        }
        _ => full(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": format!("{method} {path}")}),
        ),
    }
}

fn manifest(set: &str, rev: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": set,
            "namespace": "kube-system",
            "annotations": {ANNOTATION_SET: format!("kube-system/{set}"), ANNOTATION_REVISION: rev},
        },
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    })
}

const REVISIONS: &str = "/apis/staticpods.dev/v1alpha1/namespaces/kube-system/staticpodrevisions/";

fn revision(set: &str, rev: &str) -> Value {
    json!({
        "apiVersion": "staticpods.dev/v1alpha1",
        "kind": "StaticPodRevision",
        "metadata": {"name": format!("{set}-{rev}"), "namespace": "kube-system", "resourceVersion": "5"},
        "spec": {"setName": set, "revision": 1, "hash": rev, "template": {}, "manifest": manifest(set, rev)},
    })
}

/// The entry for `set` at `rev`, with the digest of its revision's manifest, as the operator
/// hands it out: the agent writes nothing whose digest is not the entry's.
fn entry(set: &str, rev: &str) -> Value {
    json!({
        "setNamespace": "kube-system",
        "setName": set,
        "revision": rev,
        "revisionName": format!("{set}-{rev}"),
        "digest": manifest_digest(&manifest(set, rev)),
        "fileName": manifest_file_name("kube-system", set),
    })
}

fn node_static_pods(sets: &[&str], rv: u32) -> Value {
    let at_r1: Vec<(&str, &str)> = sets.iter().map(|s| (*s, "r1")).collect();
    node_static_pods_at(&at_r1, rv)
}

fn node_static_pods_at(entries: &[(&str, &str)], rv: u32) -> Value {
    let pods: Vec<Value> = entries.iter().map(|(set, rev)| entry(set, rev)).collect();
    json!({
        "apiVersion": "staticpods.dev/v1alpha1",
        "kind": "NodeStaticPods",
        "metadata": {"name": NODE, "resourceVersion": rv.to_string(), "generation": 1},
        "spec": {"pods": pods},
    })
}

fn listing(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().into_string().expect("utf-8"),
                fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the agent and waits until it has.
async fn shut_down(stop: oneshot::Sender<()>, agent: tokio::task::JoinHandle<()>) {
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("the agent stops on shutdown")
        .expect("agent task");
}

/// The agent's context against the fake API server `state`, writing into `dir`.
fn context(
    state: &Shared,
    dir: &Path,
    readiness: watch::Sender<Readiness>,
    static_pod_url: Option<UrlSource>,
) -> Context {
    let service = {
        let state = state.clone();
        tower::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req).await) }
        })
    };
    Context {
        client: kube::Client::new(service, "default"),
        node_name: NODE.into(),
        dir: ManifestDir::new(dir),
        metrics: Metrics::new().expect("metrics"),
        readiness,
        resync_interval: Duration::from_secs(3600),
        cri: None,
        prepull_timeout: Duration::from_secs(120),
        // No kubelet here deletes mirror pods; stop-first is proven on the real cluster.
        stop_first: None,
        static_pod_url,
        resources: staticpodset_node_agent::resources_dir::ResourcesDir::new(
            dir.join("resources"),
            "/etc/kubernetes/static-pod-resources",
        ),
        config_namespace: "staticpodset-system".into(),
        state_file: None,
    }
}

async fn readiness_becomes(
    rx: &mut watch::Receiver<Readiness>,
    what: &str,
    f: impl Fn(&Readiness) -> bool,
) {
    tokio::time::timeout(DEADLINE, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for readiness: {what}"))
        .expect("readiness sender alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_acts_only_on_api_state_and_keeps_pods_through_outages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeadm =
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n";
    fs::write(tmp.path().join("kube-apiserver.yaml"), kubeadm).expect("write");
    // An owned manifest from before the restart, for a set the spec will no longer list.
    let old = staticpodset_node_agent::dir_plan::render_manifest(
        &serde_json::from_value(entry("old", "r1")).expect("assigned pod"),
        &manifest("old", "r1"),
        staticpodset_api::keys::Slot::Primary,
    )
    .expect("render")
    .content;
    fs::write(
        tmp.path().join(manifest_file_name("kube-system", "old")),
        &old,
    )
    .expect("write");
    let before = listing(tmp.path());

    let state: Shared = Arc::new(Mutex::new(ApiState {
        down: true,
        revisions: BTreeMap::from([("vip-r1".to_string(), revision("vip", "r1"))]),
        ..ApiState::default()
    }));
    let (readiness, mut ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
    let ctx = context(&state, tmp.path(), readiness, None);
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(ctx, async move {
        let _ = stopped.await;
    }));

    // 1. No API server: the directory is left alone.
    eventually("a list attempt", || !lock(&state).requests.is_empty()).await;
    readiness_becomes(
        &mut ready_rx,
        "waiting for the first list",
        |r| matches!(r, Readiness::NotReady(m) if m.contains("first list")),
    )
    .await;
    assert_eq!(listing(tmp.path()), before);

    // 2. The API answers, but the object does not exist: still left alone.
    lock(&state).down = false;
    readiness_becomes(
        &mut ready_rx,
        "object missing",
        |r| matches!(r, Readiness::NotReady(m) if m.contains("does not exist")),
    )
    .await;
    assert_eq!(listing(tmp.path()), before);

    // 3. The object appears: the assigned manifest is written, the unlisted owned one removed,
    //    kubeadm's file untouched, and the status reported by server-side apply.
    let object = node_static_pods(&["vip"], 11);
    {
        let mut s = lock(&state);
        s.node_static_pods = Some(object.clone());
        let event = watch_event("ADDED", &object);
        s.nsp_history.push(event.clone());
        for w in &s.nsp_watches {
            let _ = w.send(event.clone());
        }
    }
    readiness_becomes(&mut ready_rx, "ready", |r| *r == Readiness::Ready).await;
    let vip = tmp.path().join(manifest_file_name("kube-system", "vip"));
    eventually("the vip status report", || {
        lock(&state)
            .patches
            .iter()
            .any(|(_, p)| p["status"]["pods"][0]["phase"] == "Written")
    })
    .await;
    let files: Vec<String> = listing(tmp.path()).into_keys().collect();
    assert_eq!(
        files,
        vec![
            "kube-apiserver.yaml".to_owned(),
            manifest_file_name("kube-system", "vip")
        ]
    );
    assert_eq!(
        fs::read(tmp.path().join("kube-apiserver.yaml")).expect("read"),
        kubeadm
    );
    {
        let s = lock(&state);
        let (query, patch) = s.patches.last().expect("a patch");
        assert!(
            query.contains("fieldManager=staticpodset-node-agent"),
            "{query}"
        );
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(patch["kind"], "NodeStaticPods");
        assert_eq!(patch["status"]["observedGeneration"], 1);
        assert_eq!(patch["status"]["summary"]["assigned"], 1);
        assert_eq!(patch["status"]["pods"][0]["writtenRevision"], "r1");
    }

    // 4. The kubelet publishes the mirror pod: the report shows it ready and up to date.
    let mirror = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("vip-{NODE}"), "namespace": "kube-system", "uid": "mirror-uid",
            "resourceVersion": "12",
            "annotations": {"kubernetes.io/config.mirror": "h", "kubernetes.io/config.hash": "h",
                            ANNOTATION_SET: "kube-system/vip", ANNOTATION_REVISION: "r1"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    });
    {
        let mut s = lock(&state);
        s.pods.push(mirror.clone());
        let event = watch_event("ADDED", &mirror);
        s.pod_history.push(event.clone());
        for w in &s.pod_watches {
            let _ = w.send(event.clone());
        }
    }
    eventually("the mirror pod in the report", || {
        lock(&state).patches.iter().any(|(_, p)| {
            p["status"]["summary"]["ready"] == 1
                && p["status"]["pods"][0]["mirrorPod"]["uid"] == "mirror-uid"
                && p["status"]["pods"][0]["mirrorPod"]["upToDate"] == true
        })
    })
    .await;
    // Revisions never change, so each is read once, however many syncs ran.
    let reads = |name: &str| {
        lock(&state)
            .requests
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains(&format!("{REVISIONS}{name}")))
            .count()
    };
    assert_eq!(reads("vip-r1"), 1);

    // 4b. vip moves to r2, whose read fails, and a new set "late" names a revision that does not
    //     exist yet: nothing is written or removed for either, and the report says why.
    let vip_r1 = fs::read(&vip).expect("read");
    let late = tmp.path().join(manifest_file_name("kube-system", "late"));
    lock(&state).failing_revisions.insert("vip-r2".into());
    let moved = node_static_pods_at(&[("vip", "r2"), ("late", "r1")], 12);
    {
        let mut s = lock(&state);
        s.node_static_pods = Some(moved.clone());
        let event = watch_event("MODIFIED", &moved);
        s.nsp_history.push(event.clone());
        for w in &s.nsp_watches {
            let _ = w.send(event.clone());
        }
    }
    let pending_with = |p: &Value, set: &str, text: &str| {
        p["status"]["pods"].as_array().is_some_and(|pods| {
            pods.iter().any(|r| {
                r["setName"] == set
                    && r["phase"] == "Pending"
                    && r["message"].as_str().is_some_and(|m| m.contains(text))
            })
        })
    };
    eventually("both unavailable revisions reported", || {
        lock(&state).patches.iter().any(|(_, p)| {
            pending_with(p, "vip", "cannot read StaticPodRevision kube-system/vip-r2")
                && pending_with(p, "late", "kube-system/late-r1 does not exist")
        })
    })
    .await;
    {
        let s = lock(&state);
        let (_, p) = s.patches.last().expect("a patch");
        let vip_report = p["status"]["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|r| r["setName"] == "vip"))
            .expect("vip report");
        // What is on disk is still r1, and the report says so.
        assert_eq!(vip_report["writtenRevision"], "r1");
    }
    assert_eq!(fs::read(&vip).expect("vip kept"), vip_r1);
    assert!(!late.exists());

    // The revisions become readable: the next retry writes both, without any watch event.
    {
        let mut s = lock(&state);
        s.failing_revisions.clear();
        s.revisions.insert("vip-r2".into(), revision("vip", "r2"));
        s.revisions.insert("late-r1".into(), revision("late", "r1"));
    }
    eventually("both manifests written once readable", || {
        late.exists() && fs::read(&vip).ok().is_some_and(|b| b != vip_r1)
    })
    .await;
    assert!(String::from_utf8(fs::read(&vip).expect("read"))
        .expect("utf-8")
        .contains("r2"));

    // 5. The API server goes away and someone deletes the manifest: restored from the cache.
    {
        let mut s = lock(&state);
        s.down = true;
        s.nsp_watches.clear();
        s.pod_watches.clear();
    }
    let written = fs::read(&vip).expect("read");
    fs::remove_file(&vip).expect("delete");
    eventually("the deleted manifest restored", || {
        fs::read(&vip).ok().as_ref() == Some(&written)
    })
    .await;
    assert_eq!(
        fs::read(tmp.path().join("kube-apiserver.yaml")).expect("read"),
        kubeadm
    );

    // 6. The API server is back and the object was deleted meanwhile: the directory is left alone.
    let push_nsp = |kind: &str, object: &Value| {
        let mut s = lock(&state);
        s.down = false;
        s.node_static_pods = (kind != "DELETED").then(|| object.clone());
        let event = watch_event(kind, object);
        s.nsp_history.push(event.clone());
        for w in &s.nsp_watches {
            let _ = w.send(event.clone());
        }
    };
    push_nsp("DELETED", &node_static_pods(&["vip"], 13));
    readiness_becomes(
        &mut ready_rx,
        "object deleted",
        |r| matches!(r, Readiness::NotReady(m) if m.contains("does not exist")),
    )
    .await;
    assert_eq!(fs::read(&vip).expect("still there"), written);

    // 7. An existing object that no longer lists the set: now, and only now, it is removed.
    push_nsp("ADDED", &node_static_pods(&[], 14));
    eventually("the unassigned manifests removed", || {
        !vip.exists() && !late.exists()
    })
    .await;
    assert_eq!(
        listing(tmp.path()).into_keys().collect::<Vec<_>>(),
        vec!["kube-apiserver.yaml".to_owned()]
    );

    shut_down(stop, agent).await;
}

/// The pods in a URL answer, by name and revision; `None` for an error answer.
fn served(response: &UrlResponse) -> Option<Vec<(String, String)>> {
    let UrlResponse::Pods(body) = response else {
        return None;
    };
    let list: Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(list["kind"], "PodList");
    Some(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().expect("name").to_owned(),
                    p["metadata"]["annotations"][ANNOTATION_REVISION]
                        .as_str()
                        .expect("revision")
                        .to_owned(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_url_mode_the_agent_serves_its_pods_and_writes_no_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeadm =
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n";
    fs::write(tmp.path().join("kube-apiserver.yaml"), kubeadm).expect("write");
    // A file of ours from when the node was in file mode: the URL takes over, the file goes.
    let vip_file = tmp.path().join(manifest_file_name("kube-system", "vip"));
    let rendered = staticpodset_node_agent::dir_plan::render_manifest(
        &serde_json::from_value(entry("vip", "r1")).expect("assigned pod"),
        &manifest("vip", "r1"),
        staticpodset_api::keys::Slot::Primary,
    )
    .expect("render")
    .content;
    fs::write(&vip_file, rendered).expect("write");

    let state: Shared = Arc::new(Mutex::new(ApiState {
        down: true,
        revisions: BTreeMap::from([("vip-r1".to_string(), revision("vip", "r1"))]),
        ..ApiState::default()
    }));
    let (readiness, _ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
    let (response, url_rx) = watch::channel(UrlResponse::Unavailable("starting".into()));
    let url = UrlSource {
        response,
        default_mode: staticpodset_api::ManifestSource::Url,
        node_label: false,
    };
    let ctx = context(&state, tmp.path(), readiness, Some(url));
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(ctx, async move {
        let _ = stopped.await;
    }));
    let watcher = url_rx.clone();
    let url_becomes = move |what: &'static str, f: fn(&UrlResponse) -> bool| {
        let mut rx = watcher.clone();
        async move {
            tokio::time::timeout(DEADLINE, rx.wait_for(f))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for the URL answer: {what}"))
                .expect("sender alive")
                .clone()
        }
    };

    // 1. No API server: an error, never an empty list; the directory untouched.
    eventually("a list attempt", || !lock(&state).requests.is_empty()).await;
    let answer = url_becomes(
        "not loaded",
        |r| matches!(r, UrlResponse::Unavailable(m) if m.contains("first list")),
    )
    .await;
    assert_eq!(served(&answer), None);
    assert!(vip_file.exists());

    // 2. The state arrives: vip is served, its file removed, kubeadm's file untouched.
    let object = node_static_pods(&["vip"], 11);
    {
        let mut s = lock(&state);
        s.down = false;
        s.node_static_pods = Some(object.clone());
        s.nsp_history.push(watch_event("ADDED", &object));
    }
    let answer = url_becomes("the list", |r| matches!(r, UrlResponse::Pods(_))).await;
    assert_eq!(served(&answer), Some(vec![("vip".into(), "r1".into())]));
    eventually("our file removed", || !vip_file.exists()).await;
    assert_eq!(
        fs::read(tmp.path().join("kube-apiserver.yaml")).expect("read"),
        kubeadm
    );
    eventually("the URL report", || {
        lock(&state).patches.iter().any(|(_, p)| {
            p["status"]["manifestSource"] == "URL"
                && p["status"]["pods"][0]["phase"] == "Written"
                && p["status"]["pods"][0]["source"] == "URL"
                && p["status"]["pods"][0]["writtenRevision"] == "r1"
        })
    })
    .await;

    // 3. vip moves to r2, which cannot be read: r1 is still served (an answer without vip would
    //    stop its pod).
    lock(&state).failing_revisions.insert("vip-r2".into());
    let moved = node_static_pods_at(&[("vip", "r2")], 12);
    {
        let mut s = lock(&state);
        s.node_static_pods = Some(moved.clone());
        let event = watch_event("MODIFIED", &moved);
        s.nsp_history.push(event.clone());
        for w in &s.nsp_watches {
            let _ = w.send(event.clone());
        }
    }
    eventually("vip-r2 read attempted", || {
        lock(&state)
            .requests
            .iter()
            .any(|r| r.contains(&format!("{REVISIONS}vip-r2")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        served(&url_rx.borrow()),
        Some(vec![("vip".into(), "r1".into())])
    );

    // 4. The API server goes away: the same list keeps being served, and no file appears.
    {
        let mut s = lock(&state);
        s.down = true;
        s.nsp_watches.clear();
        s.pod_watches.clear();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served(&url_rx.borrow()),
        Some(vec![("vip".into(), "r1".into())])
    );
    assert!(!vip_file.exists());

    // 5. Back, with r2 readable and a second set: both served at their revisions.
    {
        let mut s = lock(&state);
        s.down = false;
        s.failing_revisions.clear();
        s.revisions.insert("vip-r2".into(), revision("vip", "r2"));
        s.revisions.insert("web-r1".into(), revision("web", "r1"));
    }
    let two = node_static_pods_at(&[("vip", "r2"), ("web", "r1")], 13);
    {
        let mut s = lock(&state);
        s.node_static_pods = Some(two.clone());
        let event = watch_event("MODIFIED", &two);
        s.nsp_history.push(event.clone());
        for w in &s.nsp_watches {
            let _ = w.send(event.clone());
        }
    }
    let answer = url_becomes("both sets", |r| {
        served(r)
            == Some(vec![
                ("vip".into(), "r2".into()),
                ("web".into(), "r1".into()),
            ])
    })
    .await;
    assert!(matches!(answer, UrlResponse::Pods(_)));
    assert_eq!(
        listing(tmp.path()).into_keys().collect::<Vec<_>>(),
        vec!["kube-apiserver.yaml".to_owned()]
    );

    shut_down(stop, agent).await;
}

/// Starts an agent on `dir` against the fake API server `state`, keeping its state in `state_dir`,
/// with a URL source when `url` is given. Returns its metrics, readiness, URL answer and stop.
#[allow(clippy::type_complexity)]
fn start_with_state(
    state: &Shared,
    dir: &Path,
    state_dir: &Path,
    url: bool,
) -> (
    Metrics,
    watch::Receiver<Readiness>,
    watch::Receiver<UrlResponse>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (readiness, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
    let (response, url_rx) = watch::channel(UrlResponse::Unavailable("starting".into()));
    let source = url.then_some(UrlSource {
        response,
        default_mode: staticpodset_api::ManifestSource::Both,
        node_label: false,
    });
    let mut ctx = context(state, dir, readiness, source);
    ctx.state_file = Some(StateFile::new(state_dir, NODE));
    let metrics = ctx.metrics.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(ctx, async move {
        let _ = stopped.await;
    }));
    (metrics, ready_rx, url_rx, stop, agent)
}

fn metric(metrics: &Metrics, line: &str) -> bool {
    metrics.encode().expect("encode").lines().any(|l| l == line)
}

/// A manifest annotated to go through the URL source in mode Both.
fn url_manifest(set: &str, rev: &str) -> Value {
    let mut m = manifest(set, rev);
    m["metadata"]["annotations"][staticpodset_api::keys::MANIFEST_SOURCE] = json!("url");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_acts_on_its_saved_state_until_the_api_server_answers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("manifests");
    let state_dir = tmp.path().join("state");
    fs::create_dir(&dir).expect("mkdir");
    let kubeadm =
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n";
    fs::write(dir.join("kube-apiserver.yaml"), kubeadm).expect("write");

    // "vip" goes to a file, "proxy" to the URL.
    let mut proxy_revision = revision("proxy", "r1");
    proxy_revision["spec"]["manifest"] = url_manifest("proxy", "r1");
    let mut proxy_entry = entry("proxy", "r1");
    proxy_entry["digest"] = json!(manifest_digest(&url_manifest("proxy", "r1")));
    let mut object = node_static_pods(&["vip"], 11);
    object["spec"]["pods"]
        .as_array_mut()
        .expect("pods")
        .push(proxy_entry);
    let state: Shared = Arc::new(Mutex::new(ApiState {
        node_static_pods: Some(object.clone()),
        nsp_history: vec![watch_event("ADDED", &object)],
        revisions: BTreeMap::from([
            ("vip-r1".to_string(), revision("vip", "r1")),
            ("proxy-r1".to_string(), proxy_revision),
        ]),
        ..ApiState::default()
    }));

    // 1. With the API server: written, served, and the state saved.
    let (metrics, _ready, url_rx, stop, agent) = start_with_state(&state, &dir, &state_dir, true);
    let vip = dir.join(manifest_file_name("kube-system", "vip"));
    let state_path = state_dir.join(format!("{NODE}.json"));
    eventually("vip written and the state saved", || {
        vip.exists() && state_path.exists()
    })
    .await;
    let served_before = match &*url_rx.borrow() {
        UrlResponse::Pods(body) => body.clone(),
        other => panic!("not serving: {other:?}"),
    };
    assert_eq!(
        served(&UrlResponse::Pods(served_before.clone())),
        Some(vec![("proxy".into(), "r1".into())])
    );
    assert!(metric(
        &metrics,
        r#"staticpodset_agent_state_loads_total{result="missing"} 1"#
    ));
    let written = fs::read(&vip).expect("read");
    shut_down(stop, agent).await;

    // 2. The API server is down, the agent restarts, and vip's manifest was deleted meanwhile:
    //    the saved state puts it back byte for byte and serves the same list.
    {
        let mut s = lock(&state);
        s.down = true;
        s.nsp_watches.clear();
        s.pod_watches.clear();
    }
    fs::remove_file(&vip).expect("delete");
    let earlier_requests = lock(&state).requests.len();
    let (metrics, mut ready, url_rx, stop, agent) =
        start_with_state(&state, &dir, &state_dir, true);
    eventually("the deleted manifest restored from the saved state", || {
        fs::read(&vip).ok().as_ref() == Some(&written)
    })
    .await;
    readiness_becomes(&mut ready, "ready on the saved state", |r| {
        *r == Readiness::Ready
    })
    .await;
    assert_eq!(
        *url_rx.borrow(),
        UrlResponse::Pods(served_before.clone()),
        "the same list, byte for byte"
    );
    assert!(metric(
        &metrics,
        r#"staticpodset_agent_state_loads_total{result="loaded"} 1"#
    ));
    assert!(metric(&metrics, "staticpodset_agent_saved_state_in_use 1"));
    assert_eq!(
        fs::read(dir.join("kube-apiserver.yaml")).expect("read"),
        kubeadm
    );
    assert!(
        !lock(&state)
            .requests
            .iter()
            .skip(earlier_requests)
            .any(|r| r.contains(REVISIONS)),
        "no revision is read while the saved state has it"
    );

    // 3. The API server answers with a state that no longer lists vip: the API's state wins.
    let emptied = node_static_pods(&[], 14);
    {
        let mut s = lock(&state);
        s.down = false;
        s.node_static_pods = Some(emptied.clone());
        s.nsp_history.push(watch_event("MODIFIED", &emptied));
    }
    eventually("vip removed once the API server answers", || !vip.exists()).await;
    eventually("the saved state no longer in use", || {
        metric(&metrics, "staticpodset_agent_saved_state_in_use 0")
    })
    .await;
    shut_down(stop, agent).await;

    // 4. A corrupt state file: reported, treated as no state, nothing removed or written.
    let mut bytes = fs::read(&state_path).expect("saved");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    fs::write(&state_path, &bytes).expect("corrupt");
    fs::write(&vip, &written).expect("a manifest on disk again");
    let before = listing(&dir);
    lock(&state).down = true;
    let (metrics, mut ready, url_rx, stop, agent) =
        start_with_state(&state, &dir, &state_dir, true);
    readiness_becomes(
        &mut ready,
        "waiting for the API server",
        |r| matches!(r, Readiness::NotReady(m) if m.contains("first list")),
    )
    .await;
    assert!(metric(
        &metrics,
        r#"staticpodset_agent_state_loads_total{result="invalid"} 1"#
    ));
    // The sync that said so has run: whatever it would do is done.
    assert_eq!(listing(&dir), before, "nothing removed or written");
    assert!(matches!(&*url_rx.borrow(), UrlResponse::Unavailable(_)));
    shut_down(stop, agent).await;
}
