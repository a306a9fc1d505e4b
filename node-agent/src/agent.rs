//! The agent's loop: watch the node's NodeStaticPods and mirror pods, sync the directory whenever
//! something changes (or the resync interval passes), and report back in the status.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{stream, FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use staticpodset_api::config_files::bundle_name;
use staticpodset_api::{
    AssignedPod, NodeStaticPods, NodeStaticPodsStatus, PodReport, StaticPodRevision,
};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config_files::{self, ResourcesDir};
use crate::cri::{CriImages, PullResult, Puller};
use crate::dir_watcher::DirWatcher;
use crate::http::Readiness;
use crate::manifest_dir::{ManifestDir, PodKey};
use crate::metrics::Metrics;
use crate::mirror_pods;
use crate::plan::{Assignment, Plan, SetKey};
use crate::prepull::PrePull;
use crate::report::{self, LastPatch};
use crate::revisions::{RevisionCache, RevisionKey};
use crate::served_pods::{self, ServedPods};
use crate::stop_first::StopFirst;
use crate::sync::{execute_plan, scan_and_plan, DirSync};
use crate::url_source::{UrlResponse, UrlSource};

/// The field manager of the agent's status patches.
pub const FIELD_MANAGER: &str = "staticpodset-node-agent";

/// How long one read of a StaticPodRevision may take: an unreachable API server must not hold up
/// the sync, which meanwhile restores drifted files from what the agent has.
const REVISION_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// StaticPodRevisions read in parallel (many at once only on start).
const REVISION_READS_IN_FLIGHT: usize = 8;
/// How soon a failed image pre-pull is tried again (within the pre-pull timeout).
const PULL_RETRY: Duration = Duration::from_secs(5);
/// The longest a set moving from the URL to a file waits for the URL pod to stop, when
/// stop-first is off (otherwise `--stop-first-timeout`).
const URL_HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon configuration files that could not be written are tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(5);

/// A failure talking to the API server.
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
    /// The blocking directory sync panicked or was cancelled.
    #[error("the directory sync task of node {node} did not complete: {source}")]
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
    /// The periodic resync, also the minimum interval between status heartbeats.
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
}

/// What the loop remembers between syncs (owned by the loop, never shared).
struct LoopState {
    last_patch: Option<LastPatch>,
    last_reports: Vec<PodReport>,
    dir_watcher: Option<DirWatcher>,
    warned_missing: bool,
    revisions: RevisionCache,
    prepull: Option<PrePulling>,
    stop_first: Option<StopFirst>,
    /// What the URL endpoint serves.
    served: ServedPods,
    /// The last mode warning logged, so it is logged once.
    mode_warning: Option<String>,
    /// When to try again configuration files that could not be written.
    config_retry: Option<std::time::Instant>,
    /// Configuration bundles read, for repairs without the API server.
    config: ConfigBook,
    /// Sets moving from the URL to a file, waiting for the URL pod to stop, since when.
    url_handover: BTreeMap<SetKey, std::time::Instant>,
}

/// Pre-pull, when on: the pure book of waits, and the background puller feeding it.
struct PrePulling {
    book: PrePull,
    puller: Puller,
    results: tokio::sync::mpsc::UnboundedReceiver<PullResult>,
}

/// The caches the watchers fill.
struct Caches {
    node_static_pods: Store<NodeStaticPods>,
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
    let nsp_task = tokio::spawn(
        forward(nsp_events, wake.clone(), |_: &NodeStaticPods| true)
            .instrument(info_span!("watch", kind = "NodeStaticPods", node = %node)),
    );
    let pod_task = tokio::spawn(
        forward(pod_events, wake.clone(), mirror_pods::is_ours)
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
        pods: pod_store,
        node: node_store,
    };
    let mut state = LoopState {
        last_patch: None,
        last_reports: Vec::new(),
        dir_watcher: None,
        warned_missing: false,
        revisions: RevisionCache::for_node(&node),
        stop_first: ctx.stop_first.map(StopFirst::new),
        served: ServedPods::new(),
        mode_warning: None,
        config_retry: None,
        config: ConfigBook::default(),
        url_handover: BTreeMap::new(),
        prepull: ctx.cri.clone().map(|cri| {
            info!(socket = %cri.socket().display(), timeout_s = ctx.prepull_timeout.as_secs(),
                  "image pre-pull on: writes that change a revision wait for their images");
            let (puller, results) =
                Puller::new(cri, ctx.prepull_timeout, wake.clone(), ctx.metrics.clone());
            PrePulling {
                book: PrePull::new(ctx.prepull_timeout, PULL_RETRY),
                puller,
                results,
            }
        }),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let recheck = sync_once(&ctx, &caches, &nsp_api, &wake, &mut state)
            .instrument(info_span!("sync", node = %node))
            .await;
        let deadline = Instant::now()
            + recheck
                .map(|d| d.min(ctx.resync_interval))
                .unwrap_or(ctx.resync_interval);
        tokio::select! {
            () = &mut shutdown => break,
            () = wake.notified() => debug!("woken by a change"),
            () = tokio::time::sleep_until(deadline) => debug!("periodic resync"),
        }
    }
    nsp_task.abort();
    pod_task.abort();
    if let Some(task) = node_task {
        task.abort();
    }
    info!("agent stopped");
}

/// Drives a reflector stream and wakes the loop on events that matter. Errors are logged; the
/// watcher's backoff retries, and the caches keep their last state meanwhile.
async fn forward<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    wake: Arc<Notify>,
    matters: impl Fn(&K) -> bool,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) if matters(&obj) => {
                wake.notify_one()
            }
            Ok(watcher::Event::InitDone) => wake.notify_one(),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watch failed; retrying with backoff, cached state kept"),
        }
    }
}

/// One sync. Returns how soon to look again if something will change by itself.
async fn sync_once(
    ctx: &Context,
    caches: &Caches,
    api: &Api<NodeStaticPods>,
    wake: &Arc<Notify>,
    state: &mut LoopState,
) -> Option<Duration> {
    let node = &ctx.node_name;
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

    // Until the first complete list, an empty cache means "unknown", not "nothing assigned".
    if !matches!(
        caches.node_static_pods.wait_until_ready().now_or_never(),
        Some(Ok(()))
    ) {
        not_ready(
            ctx,
            format!(
                "waiting for the first list of NodeStaticPods {node} from the API server; the \
                 manifest directory is left as it is"
            ),
        );
        return None;
    }
    let Some(object) = caches.node_static_pods.get(&ObjectRef::new(node)) else {
        if !state.warned_missing {
            warn!("NodeStaticPods {node} does not exist; the manifest directory is left as it is");
            state.warned_missing = true;
        }
        not_ready(
            ctx,
            format!(
                "NodeStaticPods {node} does not exist; the manifest directory is left as it is"
            ),
        );
        return None;
    };
    state.warned_missing = false;
    let Some(mode) = node_mode(ctx, caches, state) else {
        not_ready(
            ctx,
            format!(
                "waiting for the first read of Node {node} (its {} label chooses the manifest \
                 source); the manifest directory is left as it is",
                staticpodset_api::keys::MANIFEST_SOURCE
            ),
        );
        return None;
    };

    // Observed when dropped, on every return path.
    let _timer = ctx.metrics.sync_duration.start_timer();
    ctx.metrics.syncs.inc();
    let entries = object.spec.pods.clone();
    read_revisions(ctx, &entries, &mut state.revisions).await;
    let assigned = state.revisions.resolve(&entries);
    state.revisions.retain(&entries);
    let assigned = prepare_config(ctx, state, assigned).await;
    let (file_assigned, url_assigned) = served_pods::split(mode, &assigned);
    let assigned_all = assigned;
    let file_assigned = if ctx.static_pod_url.is_some() {
        let pods_listed = caches.pods.wait_until_ready().now_or_never().is_some();
        served_pods::hold_for_url_pods(
            file_assigned,
            |set| state.served.contains_key(set) || (pods_listed && runs_from_url(caches, set)),
            &mut state.url_handover,
            std::time::Instant::now(),
            ctx.stop_first.unwrap_or(URL_HANDOVER_TIMEOUT),
        )
    } else {
        file_assigned
    };
    let now = SystemTime::now();
    let dir = ctx.dir.clone();
    let planned = blocking(node, move || {
        scan_and_plan(&dir, &file_assigned).map(|plan| (plan, file_assigned))
    })
    .await;
    let executed = match planned {
        Ok(Ok((mut plan, assigned))) => {
            if let Some(prepull) = &mut state.prepull {
                hold_for_images(prepull, &mut plan, &assigned, &ctx.metrics);
            }
            if let Some(stop_first) = &mut state.stop_first {
                stop_before_start(stop_first, &mut plan, caches, node, &ctx.metrics);
            }
            let dir = ctx.dir.clone();
            blocking(node, move || execute_plan(&dir, &plan, now)).await
        }
        Ok(Err(unreadable)) => Ok(unreadable),
        Err(e) => Err(e),
    };
    let mut dir_sync = match executed {
        Ok(dir_sync) => dir_sync,
        Err(e) => {
            warn!(error = %e, "sync failed");
            ctx.metrics.sync_errors.inc();
            return None;
        }
    };
    if let Some(prepull) = &state.prepull {
        prepull.book.annotate(&mut dir_sync.sets);
    }
    record(&ctx.metrics, &dir_sync);
    let mut set_outcomes = dir_sync.sets.clone();
    if let Some(url) = &ctx.static_pod_url {
        let plan = served_pods::plan_url(
            &url_assigned,
            &state.served,
            &dir_sync.foreign_pods,
            |set| may_run_from_url(caches, node, set),
            now,
        );
        let response = match (&plan.incomplete, served_pods::pod_list_body(&plan.served)) {
            (Some(why), _) => UrlResponse::Unavailable(why.clone()),
            (None, Err(why)) => UrlResponse::Unavailable(why),
            (None, Ok(body)) => UrlResponse::Pods(Arc::new(body)),
        };
        publish(url, response);
        ctx.metrics
            .url_served_pods
            .set(i64::try_from(plan.served.len()).unwrap_or(i64::MAX));
        state.served = plan.served;
        set_outcomes = served_pods::merge_outcomes(set_outcomes, plan.outcomes);
    }
    ctx.readiness.send_replace(Readiness::Ready);

    // Without the pod list every mirror pod would look missing.
    caches.pods.wait_until_ready().now_or_never()?.ok()?;
    let mut built = report::build(
        node,
        object.meta().generation,
        &set_outcomes,
        &dir_sync.removals,
        |key: &PodKey| {
            caches
                .pods
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
        },
        now,
    );
    if ctx.static_pod_url.is_some() {
        built.status.manifest_source = Some(mode);
    }
    clean_config(ctx, caches, &assigned_all, &state.served).await;
    log_changes(&state.last_reports, &built.status.pods);
    state.last_reports = built.status.pods.clone();

    if report::should_patch(
        object.status.as_ref(),
        state.last_patch.as_ref(),
        &built.status,
        now,
        ctx.resync_interval,
    ) {
        match patch_status(api, node, &built.status).await {
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
    let recheck = built
        .recheck_at
        .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
    // Revisions are read, not watched: nothing but this wakes the loop for a failed read's retry.
    let retry = state
        .revisions
        .next_retry()
        .map(|t| t.saturating_duration_since(std::time::Instant::now()));
    let pull = state
        .prepull
        .as_ref()
        .and_then(|p| p.book.next_wakeup())
        .map(|t| t.saturating_duration_since(std::time::Instant::now()));
    let swap = state
        .stop_first
        .as_ref()
        .and_then(StopFirst::next_wakeup)
        .map(|t| t.saturating_duration_since(std::time::Instant::now()));
    let handover = state.url_handover.values().min().map(|since| {
        (*since + ctx.stop_first.unwrap_or(URL_HANDOVER_TIMEOUT))
            .saturating_duration_since(std::time::Instant::now())
    });
    let config = state
        .config_retry
        .take()
        .map(|t| t.saturating_duration_since(std::time::Instant::now()));
    [recheck, retry, pull, swap, config, handover]
        .into_iter()
        .flatten()
        .min()
}

/// Whether the kubelet runs set `set`'s pod from its URL source: its mirror pod says so.
fn runs_from_url(caches: &Caches, set: &SetKey) -> bool {
    let owner = set.to_string();
    caches.pods.state().iter().any(|pod| {
        let a = pod.metadata.annotations.as_ref();
        mirror_pods::is_ours(pod)
            && a.and_then(|a| a.get(staticpodset_api::keys::ANNOTATION_SET)) == Some(&owner)
            && a.and_then(|a| a.get(staticpodset_api::keys::kubelet::CONFIG_SOURCE))
                .map(String::as_str)
                == Some("http")
    })
}

/// Writes the configuration files of every assigned revision that has them (when not on disk
/// yet) and points its manifest at them. A set whose files cannot be written keeps what it runs:
/// its manifest becomes unavailable with the reason, and the write is retried.
async fn prepare_config(
    ctx: &Context,
    state: &mut LoopState,
    assigned: Vec<Assignment>,
) -> Vec<Assignment> {
    let mut out = Vec::with_capacity(assigned.len());
    let mut used = BTreeSet::new();
    for mut assignment in assigned {
        let set = SetKey::of(&assignment.entry);
        if let Ok(manifest) = &assignment.manifest {
            if let Some(hash) = config_files::config_hash(manifest).map(str::to_owned) {
                used.insert((set.clone(), hash.clone()));
                assignment.manifest = match ensure_config(ctx, &mut state.config, &set, &hash).await
                {
                    Ok(()) => Ok(Arc::new(config_files::localize(
                        manifest,
                        &set,
                        &hash,
                        &ctx.resources.host,
                    ))),
                    Err(why) => {
                        warn!(set = %set, hash = %hash, error = %why, "configuration files not written; retrying");
                        ctx.metrics.sync_errors.inc();
                        ctx.metrics
                            .config_files
                            .with_label_values(&["failed"])
                            .inc();
                        state.config_retry = Some(std::time::Instant::now() + CONFIG_RETRY);
                        Err(why)
                    }
                };
            }
        }
        out.push(assignment);
    }
    state.config.files.retain(|k, _| used.contains(k));
    state.config.unread.retain(|k, _| used.contains(k));
    out
}

/// What the agent keeps of configuration bundles between syncs.
#[derive(Default)]
struct ConfigBook {
    /// The files of every assigned config hash the agent has read, to put edits on the node
    /// right without the API server.
    files: BTreeMap<(SetKey, String), Arc<config_files::Files>>,
    /// Hashes found on disk whose bundle could not be read (API server down), and when that was
    /// last tried: the files are used as they are meanwhile.
    unread: BTreeMap<(SetKey, String), std::time::Instant>,
}

/// How soon a bundle that could not be read is tried again when its files are on disk already.
const BUNDLE_REREAD: Duration = Duration::from_secs(60);

/// Makes sure the files of `set` at `hash` are on disk and as the bundle says: written when
/// missing, put right when edited on the node. The bundle is read once per config hash.
async fn ensure_config(
    ctx: &Context,
    book: &mut ConfigBook,
    set: &SetKey,
    hash: &str,
) -> Result<(), String> {
    let key = (set.clone(), hash.to_string());
    let dir = ctx.resources.clone();
    let (probe_set, probe_hash) = (set.clone(), hash.to_string());
    let on_disk = blocking(&ctx.node_name, move || dir.has(&probe_set, &probe_hash))
        .await
        .unwrap_or(false);
    let files = match book.files.get(&key) {
        Some(files) => files.clone(),
        None => {
            if on_disk
                && book
                    .unread
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < BUNDLE_REREAD)
            {
                return Ok(());
            }
            match read_bundle(ctx, set, hash).await {
                Ok(files) => {
                    book.unread.remove(&key);
                    let files = Arc::new(files);
                    book.files.insert(key.clone(), files.clone());
                    files
                }
                // The files are there: use them as they are until the bundle can be read.
                Err(why) if on_disk => {
                    debug!(set = %set, error = %why, "bundle not read; using the files on disk as they are");
                    book.unread.insert(key, std::time::Instant::now());
                    return Ok(());
                }
                Err(why) => return Err(why),
            }
        }
    };
    let (dir, set, hash) = (ctx.resources.clone(), set.clone(), hash.to_string());
    let (log_set, log_hash) = (set.clone(), hash.clone());
    let outcome = blocking(&ctx.node_name, move || {
        if on_disk {
            dir.repair(&set, &hash, &files)
        } else {
            dir.write(&set, &hash, &files).map(|()| Vec::new())
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("writing configuration files: {e}"))?;
    if !on_disk {
        ctx.metrics
            .config_files
            .with_label_values(&["written"])
            .inc();
        info!(set = %log_set, hash = %log_hash, "configuration files written");
    }
    if !outcome.is_empty() {
        ctx.metrics
            .config_files
            .with_label_values(&["restored"])
            .inc_by(outcome.len() as u64);
        warn!(set = %log_set, hash = %log_hash, restored = ?outcome, "configuration files had changed on the node; put back");
    }
    Ok(())
}

/// Reads the bundle of `set` at `hash`.
async fn read_bundle(
    ctx: &Context,
    set: &SetKey,
    hash: &str,
) -> Result<config_files::Files, String> {
    let name = bundle_name(&set.namespace, &set.name, hash);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config_namespace);
    let ns = &ctx.config_namespace;
    let bundle = tokio::time::timeout(REVISION_READ_TIMEOUT, api.get(&name))
        .await
        .map_err(|_| format!("reading configuration bundle {ns}/{name}: timed out"))?
        .map_err(|e| {
            format!(
                "reading configuration bundle {ns}/{name}: {}",
                error_text(&e)
            )
        })?;
    config_files::files_of(&bundle, hash).map_err(|e| e.to_string())
}

/// Removes configuration files nothing on the node names any more: not the assigned revision,
/// not an owned manifest on disk, not a served pod, not a running (mirror) pod. Failures are
/// logged and retried on the next sync.
async fn clean_config(
    ctx: &Context,
    caches: &Caches,
    assigned: &[Assignment],
    served: &ServedPods,
) {
    let mut referenced: BTreeMap<SetKey, Option<BTreeSet<String>>> = BTreeMap::new();
    fn name(
        referenced: &mut BTreeMap<SetKey, Option<BTreeSet<String>>>,
        set: SetKey,
        hash: Option<&str>,
    ) {
        let entry = referenced
            .entry(set)
            .or_insert_with(|| Some(BTreeSet::new()));
        if let (Some(known), Some(hash)) = (entry.as_mut(), hash) {
            known.insert(hash.to_string());
        }
    }
    for a in assigned {
        match &a.manifest {
            Ok(m) => name(
                &mut referenced,
                SetKey::of(&a.entry),
                config_files::config_hash(m),
            ),
            Err(_) => {
                referenced.insert(SetKey::of(&a.entry), None);
            }
        }
    }
    for (set, s) in served {
        name(
            &mut referenced,
            set.clone(),
            config_files::config_hash(&s.manifest),
        );
    }
    for pod in caches.pods.state() {
        if !mirror_pods::is_ours(&pod) {
            continue;
        }
        let annotations = pod.metadata.annotations.as_ref();
        let set = annotations
            .and_then(|a| a.get(staticpodset_api::keys::ANNOTATION_SET))
            .and_then(|s| s.split_once('/'))
            .map(|(namespace, name)| SetKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        if let Some(set) = set {
            let hash = annotations.and_then(|a| a.get(staticpodset_api::config_files::CONFIG_HASH));
            name(&mut referenced, set, hash.map(String::as_str));
        }
    }
    let (dir, resources) = (ctx.dir.clone(), ctx.resources.clone());
    let done = blocking(&ctx.node_name, move || {
        let on_disk = resources.on_disk().map_err(|e| e.to_string())?;
        // The manifests on disk are read again only when there are configuration files that
        // they might name: nodes without any pay nothing on every sync.
        if on_disk.is_empty() {
            return Ok(Vec::new());
        }
        let scan = dir.scan().map_err(|e| e.to_string())?;
        for file in &scan.files {
            if let Some(set) = crate::plan::owner(file) {
                name(&mut referenced, set, file.info.config_hash.as_deref());
            }
        }
        let mut done = Vec::new();
        for step in config_files::cleanup(&on_disk, &referenced) {
            resources.apply(&step).map_err(|e| e.to_string())?;
            done.push(step);
        }
        Ok::<_, String>(done)
    })
    .await;
    match done {
        Ok(Ok(done)) => {
            for step in done {
                let action = match &step {
                    config_files::Cleanup::Prune(_, hashes) => {
                        ctx.metrics
                            .config_files
                            .with_label_values(&["pruned"])
                            .inc_by(hashes.len() as u64);
                        "pruned"
                    }
                    config_files::Cleanup::RemoveSet(_) => {
                        ctx.metrics
                            .config_files
                            .with_label_values(&["removed"])
                            .inc();
                        "removed"
                    }
                };
                info!(?step, action, "configuration files no longer needed");
            }
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cleaning up configuration files; retried on the next sync")
        }
        Err(e) => warn!(error = %e, "configuration file cleanup did not complete"),
    }
}

/// Applies [`StopFirst`] to the plan, with the mirror pods as the watch shows them. Before the
/// pod list is complete nothing is known to run, so manifests are replaced in place.
fn stop_before_start(
    stop_first: &mut StopFirst,
    plan: &mut Plan,
    caches: &Caches,
    node: &str,
    metrics: &Metrics,
) {
    let listed = caches.pods.wait_until_ready().now_or_never().is_some();
    let stopped = stop_first.gate(
        plan,
        |set_plan| {
            listed
                && set_plan.pod.as_ref().is_some_and(|pod| {
                    let mirror = mirror_pods::mirror_pod_key(pod, node);
                    caches
                        .pods
                        .get(&ObjectRef::new(&mirror.name).within(&mirror.namespace))
                        .is_some_and(|p| {
                            mirror_pods::mirror_report(&p, &set_plan.set.to_string(), None)
                                .is_some()
                        })
                })
        },
        std::time::Instant::now(),
    );
    for set in &stopped.started {
        info!(set = %set, "revision change: removing the old manifest first, writing the new one once the old pod has stopped");
    }
    for (set, waited, timed_out) in &stopped.finished {
        let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        let result = if *timed_out { "timeout" } else { "stopped" };
        metrics.stop_first_swaps.with_label_values(&[result]).inc();
        if *timed_out {
            warn!(set = %set, waited_ms, "the old pod did not stop in time; writing the new manifest anyway");
        } else {
            info!(set = %set, waited_ms, "old pod stopped; writing the new manifest");
        }
    }
}

/// Runs blocking directory work on the blocking pool, inside the current span (the blocking
/// thread does not inherit it, and its logs should name the node).
async fn blocking<T: Send + 'static>(
    node: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|source| AgentError::SyncTask {
            node: node.to_owned(),
            source,
        })
}

/// Takes in finished pulls, holds back the writes whose images are not on the node yet, and
/// starts the pulls they need. Never waits for a pull.
fn hold_for_images(
    prepull: &mut PrePulling,
    plan: &mut Plan,
    assigned: &[Assignment],
    metrics: &Metrics,
) {
    while let Ok(done) = prepull.results.try_recv() {
        prepull.book.record(&done.image, done.result, done.at);
    }
    let gate = prepull.book.gate(plan, assigned, std::time::Instant::now());
    for (set, revision) in &gate.held {
        info!(set = %set, %revision, "manifest write held until the node has the new pod's images");
    }
    for released in &gate.released {
        let waited_ms = u64::try_from(released.waited.as_millis()).unwrap_or(u64::MAX);
        match &released.deadline_passed {
            None => {
                metrics
                    .prepull_waits
                    .with_label_values(&["images_ready"])
                    .inc();
                info!(set = %released.set, revision = %released.revision, waited_ms,
                      "images on the node; writing the manifest");
            }
            Some(note) => {
                metrics
                    .prepull_waits
                    .with_label_values(&["deadline_passed"])
                    .inc();
                warn!(set = %released.set, revision = %released.revision, waited_ms, %note,
                      "writing the manifest without its images");
            }
        }
    }
    for job in gate.pulls {
        prepull.puller.start(job);
    }
    metrics
        .prepull_waiting
        .set(i64::try_from(prepull.book.waiting()).unwrap_or(i64::MAX));
}

/// Not ready, and no answer for the kubelet's URL source either: an error keeps its pods.
fn not_ready(ctx: &Context, why: String) {
    if let Some(url) = &ctx.static_pod_url {
        publish(url, UrlResponse::Unavailable(why.clone()));
    }
    ctx.readiness.send_replace(Readiness::NotReady(why));
}

/// Hands the endpoint a new answer, logging when it changes.
fn publish(url: &UrlSource, response: UrlResponse) {
    let changed = url.response.send_if_modified(|current| {
        let changed = *current != response;
        if changed {
            *current = response.clone();
        }
        changed
    });
    if changed {
        match &response {
            UrlResponse::Unavailable(why) => {
                warn!(reason = %why, "the static pod URL answers an error; the kubelet keeps its pods")
            }
            UrlResponse::Pods(body) => debug!(bytes = body.len(), "static pod URL list changed"),
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
        let label = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(staticpodset_api::keys::MANIFEST_SOURCE))
            .cloned();
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = last.as_ref() != Some(&label);
        *last = Some(label);
        changed
    };
    let task = tokio::spawn(
        forward(events, wake, label_changed)
            .instrument(info_span!("watch", kind = "Node", node = %node)),
    );
    (store, task)
}

/// The node's mode, or `None` while the Node that chooses it has not been read yet.
fn node_mode(
    ctx: &Context,
    caches: &Caches,
    state: &mut LoopState,
) -> Option<staticpodset_api::ManifestSource> {
    let Some(url) = &ctx.static_pod_url else {
        return Some(staticpodset_api::ManifestSource::File);
    };
    let label = match &caches.node {
        None => None,
        Some(store) => {
            store.wait_until_ready().now_or_never()?.ok()?;
            store.get(&ObjectRef::new(&ctx.node_name)).and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()?
                    .get(staticpodset_api::keys::MANIFEST_SOURCE)
                    .cloned()
            })
        }
    };
    let mode = served_pods::effective_mode(url.default_mode, label.as_deref(), true);
    if mode.warning != state.mode_warning {
        if let Some(w) = &mode.warning {
            warn!(warning = %w, "manifest source");
        }
        state.mode_warning = mode.warning.clone();
    }
    Some(mode.source)
}

/// Whether the kubelet may be running `set`'s pod from the URL source: its mirror pod says so, or
/// the pod cache cannot tell yet.
fn may_run_from_url(caches: &Caches, node: &str, set: &crate::plan::SetKey) -> bool {
    if !matches!(caches.pods.wait_until_ready().now_or_never(), Some(Ok(()))) {
        return true;
    }
    let key = mirror_pods::mirror_pod_key(
        &PodKey {
            namespace: set.namespace.clone(),
            name: set.name.clone(),
        },
        node,
    );
    caches
        .pods
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .is_some_and(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(staticpodset_api::keys::kubelet::CONFIG_SOURCE))
                .is_some_and(|s| s == "http")
        })
}

/// Reads the StaticPodRevisions `entries` name that the cache lacks (and whose retry is due), a few
/// at a time, each with a deadline. A failed read leaves its entries unavailable (nothing written,
/// nothing removed) until a later read succeeds.
async fn read_revisions(ctx: &Context, entries: &[AssignedPod], cache: &mut RevisionCache) {
    let missing = cache.missing(entries, std::time::Instant::now());
    if missing.is_empty() {
        return;
    }
    let reads: Vec<(RevisionKey, Result<Option<StaticPodRevision>, String>)> =
        stream::iter(missing)
            .map(|key| {
                let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), &key.0);
                async move {
                    let result = match tokio::time::timeout(
                        REVISION_READ_TIMEOUT,
                        api.get_opt(&key.1),
                    )
                    .await
                    {
                        Ok(Ok(revision)) => Ok(revision),
                        Ok(Err(e)) => Err(error_text(&e)),
                        Err(_) => Err(format!(
                            "no answer within {}s",
                            REVISION_READ_TIMEOUT.as_secs()
                        )),
                    };
                    (key, result)
                }
            })
            .buffer_unordered(REVISION_READS_IN_FLIGHT)
            .collect()
            .await;
    for (key, result) in reads {
        ctx.metrics.revision_reads.inc();
        match cache.record(key.clone(), result, entries, std::time::Instant::now()) {
            Ok(()) => debug!(namespace = %key.0, name = %key.1, "read revision"),
            // Reported (and logged once) as the set's Pending message; retried every few seconds.
            Err(message) => {
                ctx.metrics.revision_read_failures.inc();
                debug!(%message, "revision not available");
            }
        }
    }
}

fn record(metrics: &Metrics, dir_sync: &DirSync) {
    metrics.manifests_written.inc_by(dir_sync.written);
    metrics.manifests_removed.inc_by(dir_sync.removed);
    metrics
        .conflicts
        .set(i64::try_from(dir_sync.conflicts()).unwrap_or(i64::MAX));
    if dir_sync.failed {
        metrics.sync_errors.inc();
    }
}

/// An API error in words for a status message: the server's own message for API errors (their
/// Debug form repeats it several times).
fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
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
        let set = format!("{}/{}", report.set_namespace, report.set_name);
        match &report.message {
            Some(message) => {
                warn!(set = %set, phase = ?report.phase, %message, "pod needs attention")
            }
            None => info!(set = %set, phase = ?report.phase, "pod state changed"),
        }
    }
}
