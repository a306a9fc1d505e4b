//! The agent's loop, wiring only: watch the node's NodeStaticPods, mirror pods (and Node), run the
//! sync pipeline ([`crate::pipeline`]) whenever something changes or its next deadline comes, and
//! report back in the status.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use staticpodset_api::{ManifestSource, NodeStaticPods, NodeStaticPodsStatus, PodReport, SetKey};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::api_reads;
use crate::blocking;
use crate::config_bundles::ConfigBundles;
use crate::config_files;
use crate::cri::{CriImages, CriRuntime, PullResult, Puller};
use crate::dir_watcher::DirWatcher;
use crate::fallback::{self, FallbackMemory};
use crate::fallback_check;
use crate::http::Readiness;
use crate::last_known::LastKnown;
use crate::manifest_dir::ManifestDir;
use crate::metrics::Metrics;
use crate::mirror_pods::{self, NodePods};
use crate::pipeline::{self, NodeDirs, Observed, SyncMemory};
use crate::prepull::PrePull;
use crate::report::{self, LastPatch};
use crate::resources_dir::ResourcesDir;
use crate::revisions::RevisionCache;
use crate::state_file::{StateFile, StateStore};
use crate::url_mode;
use crate::url_source::{UrlResponse, UrlSource};

/// The field manager of the agent's status patches.
pub const FIELD_MANAGER: &str = "staticpodset-node-agent";

/// How soon a failed image pre-pull is tried again (within the pre-pull timeout).
const PULL_RETRY: Duration = Duration::from_secs(5);

/// How long a starting agent waits for the API server's first list before it acts on its saved
/// state, unless the watch fails sooner: with the API server up, a state saved before a long
/// stop must not be acted on for even a moment.
const SAVED_STATE_GRACE: Duration = Duration::from_secs(10);

/// A failure talking to the API server or running the sync.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Patching the NodeStaticPods status failed.
    #[error("cannot patch the status of NodeStaticPods {node}: {source}")]
    PatchStatus {
        /// The node (and object) name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The blocking sync panicked or was cancelled.
    #[error("the sync task of node {node} did not complete: {source}")]
    SyncTask {
        /// The node name.
        node: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Everything the loop needs, built once in `main`.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// This node's name (and the name of its NodeStaticPods).
    pub node_name: String,
    /// The kubelet's manifest directory.
    pub dir: ManifestDir,
    /// The agent's metrics.
    pub metrics: Metrics,
    /// What `/readyz` answers.
    pub readiness: watch::Sender<Readiness>,
    /// The periodic resync; also how long a status write counts as the API's copy before the
    /// watch cache shows it (see [`report::should_patch`]).
    pub resync_interval: Duration,
    /// The node's container runtime, when writes that change a revision wait for its images to
    /// be pulled (`--cri-socket`); `None` turns pre-pull off.
    pub cri: Option<CriImages>,
    /// The longest a write waits for a pre-pull (`--prepull-timeout`).
    pub prepull_timeout: Duration,
    /// Stop a running pod before writing its new revision, waiting at most this long
    /// (`--stop-first`, `--stop-first-timeout`); `None` replaces manifests in place.
    pub stop_first: Option<Duration>,
    /// The kubelet's URL source, when this agent serves one (`--static-pod-url-addr`).
    pub static_pod_url: Option<UrlSource>,
    /// Where configuration files go (`--resources-dir`, `--resources-host-dir`).
    pub resources: ResourcesDir,
    /// The namespace of the configuration bundles, the only one whose Secrets the agent reads.
    pub config_namespace: String,
    /// Where the node's last-known state is kept (`--state-dir`); `None`: not kept.
    pub state_file: Option<StateFile>,
}

/// What the loop remembers between syncs (owned by the loop, never shared).
struct LoopState {
    last_patch: Option<LastPatch>,
    last_reports: Vec<PodReport>,
    dir_watcher: Option<DirWatcher>,
    warned_missing: bool,
    revisions: RevisionCache,
    /// The background puller and its results, when pre-pull is on.
    pulls: Option<(Puller, mpsc::UnboundedReceiver<PullResult>)>,
    /// The configuration bundles read and written.
    bundles: ConfigBundles,
    /// What the pipeline remembers.
    memory: SyncMemory,
    /// The last mode warning logged, so it is logged once.
    mode_warning: Option<String>,
    /// The state loaded on start, until the API server's first list replaces it.
    saved: Option<Arc<LastKnown>>,
    /// Where the node's state is saved.
    store: StateStore,
    /// The sets' phases last logged while acting on the saved state.
    saved_phases: Vec<(SetKey, String)>,
    /// Whether the agent has acted on the saved state yet (logged once).
    acting_on_saved: bool,
    /// When the loop started: the saved state waits [`SAVED_STATE_GRACE`] for the API server.
    started: Instant,
    /// Node-local fallback's memory.
    fallback: FallbackMemory,
    /// Per set, the revision the last sync left written (or served) and since when.
    written: std::collections::BTreeMap<SetKey, (String, SystemTime)>,
    /// The container runtime, to judge a revision that may need a fallback.
    runtime: Option<CriRuntime>,
    /// When the next fallback deadline passes.
    fallback_next: Option<SystemTime>,
}

/// The caches the watchers fill.
struct Caches {
    node_static_pods: Store<NodeStaticPods>,
    /// Set while the NodeStaticPods watch fails (the API server does not answer).
    node_static_pods_failing: Arc<AtomicBool>,
    pods: Store<Pod>,
    /// This node's Node (labels only), when the mode comes from its label.
    node: Option<Store<Node>>,
}

/// Runs until `shutdown` completes; a sync in progress finishes first.
pub async fn run(ctx: Context, shutdown: impl Future<Output = ()>) {
    let node = ctx.node_name.clone();
    let wake = Arc::new(Notify::new());

    let dir = ctx.dir.clone();
    match tokio::task::spawn_blocking(move || dir.remove_stale_temp_files()).await {
        Ok(Ok(removed)) if !removed.is_empty() => info!(?removed, "removed stale temp files"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot clean up stale temp files"),
        Err(e) => warn!(error = %e, "temp file cleanup did not complete"),
    }

    let nsp_api: Api<NodeStaticPods> = Api::all(ctx.client.clone());
    let (nsp_store, nsp_writer) = reflector::store();
    let nsp_events = reflector::reflector(
        nsp_writer,
        watcher(
            nsp_api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={node}")),
        )
        .default_backoff(),
    );
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(
            Api::<Pod>::all(ctx.client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        // Only metadata and status are read; the rest would only take memory.
        .modify(|pod: &mut Pod| {
            pod.spec = None;
            pod.metadata.managed_fields = None;
        })
        .default_backoff(),
    );
    let nsp_failing = Arc::new(AtomicBool::new(false));
    let nsp_task = tokio::spawn(
        forward(
            nsp_events,
            wake.clone(),
            |_: &NodeStaticPods| true,
            Some(nsp_failing.clone()),
        )
        .instrument(info_span!("watch", kind = "NodeStaticPods", node = %node)),
    );
    let pod_task = tokio::spawn(
        forward(pod_events, wake.clone(), mirror_pods::is_ours, None)
            .instrument(info_span!("watch", kind = "Pod", node = %node)),
    );

    let (node_store, node_task) = match &ctx.static_pod_url {
        Some(url) if url.node_label => {
            let (store, task) = watch_own_node(&ctx.client, &node, wake.clone());
            (Some(store), Some(task))
        }
        _ => (None, None),
    };
    let caches = Caches {
        node_static_pods: nsp_store,
        node_static_pods_failing: nsp_failing,
        pods: pod_store,
        node: node_store,
    };
    let pulls = ctx.cri.clone().map(|cri| {
        info!(socket = %cri.socket().display(), timeout_s = ctx.prepull_timeout.as_secs(),
              "image pre-pull on: writes that change a revision wait for their images");
        Puller::new(cri, ctx.prepull_timeout, wake.clone(), ctx.metrics.clone())
    });
    let store = StateStore::new(ctx.state_file.clone(), ctx.metrics.clone());
    let saved = store.load().await;
    let mut state = LoopState {
        last_patch: None,
        last_reports: Vec::new(),
        dir_watcher: None,
        warned_missing: false,
        revisions: RevisionCache::for_node(&node),
        pulls,
        bundles: ConfigBundles::new(
            ctx.client.clone(),
            &ctx.config_namespace,
            ctx.resources.clone(),
            ctx.metrics.clone(),
        ),
        memory: fresh_memory(&ctx),
        mode_warning: None,
        saved: None,
        store,
        saved_phases: Vec::new(),
        acting_on_saved: false,
        started: Instant::now(),
        fallback: FallbackMemory::default(),
        written: std::collections::BTreeMap::new(),
        runtime: ctx.cri.as_ref().map(CriImages::runtime),
        fallback_next: None,
    };
    if let Some(saved) = saved {
        for refusal in
            state
                .revisions
                .restore(&saved.revisions, &saved.pods, std::time::Instant::now())
        {
            warn!(%refusal, "a revision of the saved state is refused; its set waits for the API server");
        }
        state.fallback.last_ready = saved.verified_last_ready();
        state.fallback.fallbacks = saved
            .fallbacks
            .iter()
            .map(|f| (f.set(), f.clone()))
            .collect();
        state.saved = Some(Arc::new(*saved));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let wait = sync_once(&ctx, &caches, &nsp_api, &wake, &mut state)
            .instrument(info_span!("sync", node = %node))
            .await;
        tokio::select! {
            () = &mut shutdown => break,
            () = wake.notified() => debug!("woken by a change"),
            () = tokio::time::sleep_until(Instant::now() + wait) => debug!("periodic resync"),
        }
    }
    nsp_task.abort();
    pod_task.abort();
    if let Some(task) = node_task {
        task.abort();
    }
    info!("agent stopped");
}

/// The pipeline's memory as on start: nothing waits, nothing is served.
fn fresh_memory(ctx: &Context) -> SyncMemory {
    let prepull = ctx
        .cri
        .as_ref()
        .map(|_| PrePull::new(ctx.prepull_timeout, PULL_RETRY));
    SyncMemory::new(prepull, ctx.stop_first)
}

/// Drives a reflector stream and wakes the loop on events that matter. Errors are logged; the
/// watcher's backoff retries, and the caches keep their last state meanwhile.
/// `failing`, when given, is set while the watch fails and cleared by its next list; its first
/// failure wakes the loop too (a starting agent may then act on its saved state).
async fn forward<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    wake: Arc<Notify>,
    matters: impl Fn(&K) -> bool,
    failing: Option<Arc<AtomicBool>>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) if matters(&obj) => {
                wake.notify_one()
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(failing) = &failing {
                    failing.store(false, Ordering::Relaxed);
                }
                wake.notify_one()
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "watch failed; retrying with backoff, cached state kept");
                if let Some(failing) = &failing {
                    if !failing.swap(true, Ordering::Relaxed) {
                        wake.notify_one();
                    }
                }
            }
        }
    }
}

/// Watches this node's Node by name, keeping only its labels, and wakes the loop when the manifest
/// source label changes.
fn watch_own_node(
    client: &Client,
    node: &str,
    wake: Arc<Notify>,
) -> (Store<Node>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node}")),
        )
        .modify(|n: &mut Node| {
            n.spec = None;
            n.status = None;
            n.metadata.managed_fields = None;
            n.metadata.annotations = None;
        })
        .default_backoff(),
    );
    let last = std::sync::Mutex::new(None::<Option<String>>);
    let label_changed = move |n: &Node| {
        let label = url_mode::source_label(n).map(str::to_owned);
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = last.as_ref() != Some(&label);
        *last = Some(label);
        changed
    };
    let task = tokio::spawn(
        forward(events, wake, label_changed, None)
            .instrument(info_span!("watch", kind = "Node", node = %node)),
    );
    (store, task)
}

/// One sync: observe, run the pipeline, hand out its results, report. Returns how long to wait
/// for an event before the next one.
async fn sync_once(
    ctx: &Context,
    caches: &Caches,
    api: &Api<NodeStaticPods>,
    wake: &Arc<Notify>,
    state: &mut LoopState,
) -> Duration {
    if state.dir_watcher.as_ref().is_none_or(DirWatcher::is_broken) {
        state.dir_watcher = match DirWatcher::start(ctx.dir.path(), wake.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, dir = %ctx.dir.path().display(),
                      "cannot watch the manifest directory; relying on the periodic resync");
                None
            }
        };
    }
    let (object, mode, from_saved) = match known_state(ctx, caches, state) {
        Ok(known) => known,
        Err(why) => {
            not_ready(ctx, why);
            // A saved state waits for the API server's first list only so long.
            let grace_left = state
                .saved
                .as_ref()
                .map(|_| SAVED_STATE_GRACE.saturating_sub(state.started.elapsed()))
                .filter(|left| !left.is_zero());
            return grace_left.map_or(ctx.resync_interval, |left| {
                left.min(ctx.resync_interval) + Duration::from_millis(10)
            });
        }
    };
    // Observed when dropped, on every return path.
    let _timer = ctx.metrics.sync_duration.start_timer();
    ctx.metrics.syncs.inc();

    let mut observed = observe(ctx, caches, state, &object, mode).await;
    let now = SystemTime::now();
    let (due, next) = fallback::due(
        &observed.assigned,
        &ctx.node_name,
        &state.written,
        &state.fallback,
        now,
    );
    state.fallback_next = next;
    if let (false, Some(runtime)) = (due.is_empty(), &state.runtime) {
        fallback_check::judge(
            &ctx.client,
            runtime,
            &ctx.metrics,
            &due,
            &mut state.fallback,
            now,
        )
        .await;
    }
    let wanted: std::collections::BTreeMap<SetKey, String> = observed
        .assigned
        .iter()
        .map(|a| (SetKey::of(&a.entry), a.entry.revision.clone()))
        .collect();
    let (assigned, in_place) =
        fallback::apply(std::mem::take(&mut observed.assigned), &mut state.fallback);
    observed.assigned = assigned.clone();
    observed.in_place = in_place;
    let Some(mut outcome) = run_pipeline(ctx, state, observed).await else {
        return ctx.resync_interval;
    };
    state.written = outcome
        .sets
        .iter()
        .filter_map(|s| Some((s.set.clone(), (s.written_revision.clone()?, s.written_at?))))
        .collect();
    if let Some(report) = &mut outcome.report {
        fallback::observe_ready(&assigned, &report.status.pods, &mut state.fallback);
        fallback::annotate(&mut report.status.pods, &state.fallback);
        ctx.metrics.pods_not_current.set(
            i64::try_from(report::not_current(&report.status.pods, &wanted)).unwrap_or(i64::MAX),
        );
    }
    hand_out(ctx, state, &outcome);
    if from_saved {
        log_saved_outcome(&outcome, &mut state.saved_phases);
    } else {
        let current = LastKnown::capture(
            &ctx.node_name,
            &object,
            mode,
            state.revisions.saved(&object.spec.pods),
            state.fallback.ready_revisions(),
            state.fallback.fallbacks.values().cloned().collect(),
            SystemTime::now(),
        );
        state.store.save(current).await;
    }
    if let Some(built) = &outcome.report {
        report_status(ctx, api, &object, built, state, SystemTime::now()).await;
    }
    let wait = pipeline::next_wakeup(
        &outcome.deadlines,
        std::time::Instant::now(),
        SystemTime::now(),
        ctx.resync_interval,
    );
    match state.fallback_next {
        Some(at) => wait.min(
            at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(10),
        ),
        None => wait,
    }
}

/// The node's NodeStaticPods and mode, once the agent knows them, and whether they come from the
/// saved state; otherwise why the manifest directory is left as it is.
fn known_state(
    ctx: &Context,
    caches: &Caches,
    state: &mut LoopState,
) -> Result<(Arc<NodeStaticPods>, ManifestSource, bool), String> {
    let node = &ctx.node_name;
    // Until the first complete list, an empty cache means "unknown", not "nothing assigned".
    if !is_listed(&caches.node_static_pods) {
        let api_silent = caches.node_static_pods_failing.load(Ordering::Relaxed)
            || state.started.elapsed() >= SAVED_STATE_GRACE;
        if let Some(saved) = state.saved.as_ref().filter(|_| api_silent) {
            if !state.acting_on_saved {
                state.acting_on_saved = true;
                ctx.metrics.saved_state_in_use.set(1);
                info!(saved_at = %saved.saved_at_text(), generation = ?saved.generation,
                      pods = saved.pods.len(), revisions = saved.revisions.len(), mode = ?saved.mode,
                      "no answer from the API server: acting on the last-known state until it answers");
            }
            return Ok((Arc::new(saved.to_object()), saved.mode, true));
        }
        return Err(format!(
            "waiting for the first list of NodeStaticPods {node} from the API server; the \
             manifest directory is left as it is"
        ));
    }
    if state.saved.take().is_some() || state.acting_on_saved {
        if state.acting_on_saved {
            info!("the API server answered: its state replaces the last-known state");
        }
        state.acting_on_saved = false;
        ctx.metrics.saved_state_in_use.set(0);
    }
    let Some(object) = caches.node_static_pods.get(&ObjectRef::new(node)) else {
        if !state.warned_missing {
            warn!("NodeStaticPods {node} does not exist; the manifest directory is left as it is");
            state.warned_missing = true;
        }
        return Err(format!(
            "NodeStaticPods {node} does not exist; the manifest directory is left as it is"
        ));
    };
    state.warned_missing = false;
    let Some(mode) = node_mode(ctx, caches, state).or_else(|| saved_mode(state)) else {
        return Err(format!(
            "waiting for the first read of Node {node} (its {} label chooses the manifest \
             source); the manifest directory is left as it is",
            staticpodset_api::keys::MANIFEST_SOURCE
        ));
    };
    Ok((object, mode, false))
}

/// The manifest source of the last saved state, while the Node that chooses it cannot be read.
fn saved_mode(state: &LoopState) -> Option<ManifestSource> {
    state
        .saved
        .as_ref()
        .map(|s| s.mode)
        .or_else(|| state.store.last_mode())
}

/// The local report while the agent acts on its saved state: there is no API server to patch,
/// and no pod list to build a status from, so each set's phase goes to the log when it changes.
fn log_saved_outcome(outcome: &pipeline::SyncOutcome, last: &mut Vec<(SetKey, String)>) {
    let now: Vec<(SetKey, String)> = outcome
        .sets
        .iter()
        .map(|o| {
            (
                o.set.clone(),
                format!("{:?} {}", o.phase, o.message.as_deref().unwrap_or("")),
            )
        })
        .collect();
    for (set, phase) in &now {
        if !last.contains(&(set.clone(), phase.clone())) {
            info!(set = %set, phase = %phase.trim_end(), "set on the last-known state");
        }
    }
    *last = now;
}

/// Observe: reads the revisions and puts the configuration files in place (the API side), and
/// takes what the watches and the puller have.
async fn observe(
    ctx: &Context,
    caches: &Caches,
    state: &mut LoopState,
    object: &NodeStaticPods,
    mode: ManifestSource,
) -> Observed {
    let entries = &object.spec.pods;
    api_reads::read_revisions(&ctx.client, &ctx.metrics, entries, &mut state.revisions).await;
    let assigned = state.revisions.resolve(entries);
    state.revisions.retain(entries);
    let config = state
        .bundles
        .prepare(&config_files::needed(&assigned))
        .await;
    let mut pulls = Vec::new();
    if let Some((_, results)) = &mut state.pulls {
        while let Ok(done) = results.try_recv() {
            pulls.push(done);
        }
    }
    Observed {
        node: ctx.node_name.clone(),
        generation: object.meta().generation,
        mode,
        url_enabled: ctx.static_pod_url.is_some(),
        assigned,
        config,
        pods: is_listed(&caches.pods).then(|| NodePods::new(caches.pods.state())),
        pulls,
        revision_retry: state.revisions.next_retry(),
        wall: SystemTime::now(),
        now: std::time::Instant::now(),
        // Filled in once fallbacks are applied.
        in_place: std::collections::BTreeSet::new(),
    }
}

/// Plan, gate, execute: the pipeline on the blocking pool, its memory moved there and back.
/// `None` if it did not complete (then what the gates waited for is forgotten).
async fn run_pipeline(
    ctx: &Context,
    state: &mut LoopState,
    observed: Observed,
) -> Option<pipeline::SyncOutcome> {
    let dirs = NodeDirs {
        manifests: ctx.dir.clone(),
        resources: ctx.resources.clone(),
    };
    let mut memory = std::mem::replace(&mut state.memory, fresh_memory(ctx));
    let ran = blocking::in_span(move || {
        let outcome = pipeline::run(&dirs, observed, &mut memory);
        (outcome, memory)
    })
    .await;
    match ran {
        Ok((outcome, memory)) => {
            state.memory = memory;
            Some(outcome)
        }
        Err(source) => {
            let e = AgentError::SyncTask {
                node: ctx.node_name.clone(),
                source,
            };
            warn!(error = %e, "sync failed; what the gates waited for is forgotten");
            ctx.metrics.sync_errors.inc();
            None
        }
    }
}

/// Hands out what the pipeline decided beyond the directory: metrics and logs, the pulls to
/// start, the URL answer, readiness.
fn hand_out(ctx: &Context, state: &LoopState, outcome: &pipeline::SyncOutcome) {
    outcome.record(&ctx.metrics);
    pipeline::log_events(outcome);
    if let (Some((puller, _)), Some(gate)) = (&state.pulls, &outcome.gates.prepull) {
        for job in &gate.pulls {
            puller.start(job.clone());
        }
    }
    if let (Some(url), Some(answer)) = (&ctx.static_pod_url, &outcome.url) {
        url_mode::publish(url, answer.response.clone());
    }
    ctx.readiness.send_replace(Readiness::Ready);
}

/// Whether a watch cache holds its first complete list.
fn is_listed<K: Resource + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Logs what changed and patches the status when it is worth an API write.
async fn report_status(
    ctx: &Context,
    api: &Api<NodeStaticPods>,
    object: &NodeStaticPods,
    built: &report::Report,
    state: &mut LoopState,
    now: SystemTime,
) {
    log_changes(&state.last_reports, &built.status.pods);
    state.last_reports = built.status.pods.clone();
    if !report::should_patch(
        object.status.as_ref(),
        state.last_patch.as_ref(),
        &built.status,
        now,
        ctx.resync_interval,
    ) {
        return;
    }
    match patch_status(api, &ctx.node_name, &built.status).await {
        Ok(()) => {
            ctx.metrics.status_patches.inc();
            state.last_patch = Some(LastPatch {
                status: built.status.clone(),
                at: now,
            });
        }
        Err(e) => {
            // The directory is already right; the next sync retries the report.
            warn!(error = %e, "status not reported");
            ctx.metrics.sync_errors.inc();
        }
    }
}

/// Not ready, and no answer for the kubelet's URL source either: an error keeps its pods.
fn not_ready(ctx: &Context, why: String) {
    if let Some(url) = &ctx.static_pod_url {
        url_mode::publish(url, UrlResponse::Unavailable(why.clone()));
    }
    ctx.readiness.send_replace(Readiness::NotReady(why));
}

/// The node's mode, or `None` while the Node that chooses it has not been read yet.
fn node_mode(ctx: &Context, caches: &Caches, state: &mut LoopState) -> Option<ManifestSource> {
    let node = match &caches.node {
        Some(store) if ctx.static_pod_url.is_some() => {
            store.wait_until_ready().now_or_never()?.ok()?;
            store.get(&ObjectRef::new(&ctx.node_name))
        }
        _ => None,
    };
    Some(url_mode::node_mode(
        ctx.static_pod_url.as_ref(),
        node.as_deref().and_then(url_mode::source_label),
        &mut state.mode_warning,
    ))
}

/// Server-side apply on the status subresource, owned by [`FIELD_MANAGER`]: only the status
/// fields the agent sends are its own, the operator's spec is never touched.
async fn patch_status(
    api: &Api<NodeStaticPods>,
    node: &str,
    status: &NodeStaticPodsStatus,
) -> Result<(), AgentError> {
    let body = serde_json::json!({
        "apiVersion": NodeStaticPods::api_version(&()),
        "kind": NodeStaticPods::kind(&()),
        "metadata": { "name": node },
        "status": status,
    });
    api.patch_status(
        node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| AgentError::PatchStatus {
        node: node.to_owned(),
        source,
    })
}

/// Logs each set whose phase or message changed, once, rather than every sync.
fn log_changes(before: &[PodReport], after: &[PodReport]) {
    for report in after {
        let previous = before
            .iter()
            .find(|b| b.set_namespace == report.set_namespace && b.set_name == report.set_name);
        let changed =
            previous.is_none_or(|p| p.phase != report.phase || p.message != report.message);
        if !changed {
            continue;
        }
        let set = SetKey::new(report.set_namespace.clone(), report.set_name.clone());
        match &report.message {
            Some(message) => {
                warn!(set = %set, phase = ?report.phase, %message, "pod needs attention")
            }
            None => info!(set = %set, phase = ?report.phase, "pod state changed"),
        }
    }
}
