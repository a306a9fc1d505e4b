//! One process playing the node agents of many simulated (kwok) nodes, for the scale benchmark
//! (tests/scale/bench-scale.sh).
//!
//! For every NodeStaticPods object whose name starts with `--node-prefix` it does what the real
//! agent's loop does with the API, without a disk or a kubelet: each entry counts as written the
//! moment it is seen, its mirror pod shows that revision at once and turns Ready `--ready-delay`
//! later (never, for a `--failure-fraction` of the (node, set, revision) triples). The status is
//! built by the agent crate's own [`report::build`], patched with the agent's field manager and
//! patch type (server-side apply on the status subresource, forced), and only when
//! [`report::should_patch`] says so: when the content differs from the API's copy, as after the
//! real agent's every sync (its periodic resync included, which writes nothing when nothing
//! changed).
//!
//! One shared watch over all NodeStaticPods rather than one watch per node by name (as each real
//! agent has): thousands of watches from one process would measure this process's connections, not
//! the operator; the API server's watch cache serves either from the same event stream.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use staticpodset_api::keys::{kubelet, ANNOTATION_REVISION, ANNOTATION_SET};
use staticpodset_api::{ManifestPhase, ManifestSource, NodeStaticPods, SetKey};
use staticpodset_node_agent::agent::FIELD_MANAGER;
use staticpodset_node_agent::manifest_dir::PodKey;
use staticpodset_node_agent::report::{self, LastPatch, SetOutcome};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Plays the node agents of many simulated nodes against a real API server.
#[derive(Parser, Debug)]
#[command(name = "staticpodset-fleet-sim", version, about)]
struct Args {
    /// Simulate the nodes whose names start with this (every NodeStaticPods object when empty).
    #[arg(long, default_value = "")]
    node_prefix: String,

    /// How long after an entry is seen until its simulated mirror pod counts as Ready (e.g. 2s).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    ready_delay: Duration,

    /// The fraction (0 to 1) of (node, set, revision) whose pod never becomes Ready.
    #[arg(long, default_value_t = 0.0)]
    failure_fraction: f64,

    /// The real agent's resync interval: a sync per node at least this often, and how long a
    /// status write counts as the API's copy before the watch shows it (the agent's default: 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,

    /// Status patches in flight at once, over all simulated nodes.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// How often to log the counters (status patches, errors).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    log_interval: Duration,
}

/// What one simulated node has "written", per set: the revision and when it was first seen.
#[derive(Debug, Clone)]
struct Written {
    revision: String,
    at: SystemTime,
}

/// One simulated agent.
#[derive(Default)]
struct SimNode {
    object: Option<Arc<NodeStaticPods>>,
    written: BTreeMap<SetKey, Written>,
    last_patch: Option<LastPatch>,
    /// When this node syncs next (stale heap entries are skipped against it).
    wake: Option<Instant>,
    /// When the periodic resync is due.
    resync_at: Option<Instant>,
    in_flight: bool,
    dirty: bool,
}

/// A finished status patch: the node, what was sent, and whether it went through.
struct Done {
    node: String,
    sent: LastPatch,
    ok: bool,
}

#[derive(Default)]
struct Counters {
    patches: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failure_fraction),
        "--failure-fraction must be between 0 and 1"
    );
    anyhow::ensure!(
        !args.resync_interval.is_zero() && args.concurrency > 0,
        "--resync-interval and --concurrency must be positive"
    );
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let api: Api<NodeStaticPods> = Api::all(client);
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut nodes: HashMap<String, SimNode> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut log_tick = tokio::time::interval(args.log_interval);
    info!(prefix = %args.node_prefix, ready_delay = ?args.ready_delay,
          failure_fraction = args.failure_fraction, "fleet simulator starting");
    loop {
        let next_wake = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { anyhow::bail!("the watch ended") };
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        if !name.starts_with(&args.node_prefix) {
                            continue;
                        }
                        let now = Instant::now();
                        let node = nodes.entry(name.clone()).or_default();
                        if node.resync_at.is_none() {
                            // Agents start at different times: spread the first resyncs.
                            node.resync_at = Some(now + spread(&name, args.resync_interval));
                        }
                        node.object = Some(Arc::new(o));
                        schedule(&mut heap, &name, node, now);
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(name) = o.metadata.name {
                            nodes.remove(&name);
                        }
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => warn!(error = %e, "watch error"),
                }
            }
            Some(done) = done_rx.recv() => {
                if let Some(node) = nodes.get_mut(&done.node) {
                    node.in_flight = false;
                    if done.ok {
                        node.last_patch = Some(done.sent);
                    }
                    if node.dirty || !done.ok {
                        node.dirty = false;
                        let at = Instant::now() + if done.ok { Duration::ZERO } else { Duration::from_secs(1) };
                        schedule(&mut heap, &done.node, node, at);
                    }
                }
            }
            () = sleep_until(next_wake) => {
                let now = Instant::now();
                while let Some(Reverse((at, _))) = heap.peek() {
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((at, name))) = heap.pop() else { break };
                    let Some(node) = nodes.get_mut(&name) else { continue };
                    if node.wake != Some(at) {
                        continue;
                    }
                    node.wake = None;
                    if node.in_flight {
                        node.dirty = true;
                        continue;
                    }
                    let next = sync(&args, &name, node, &api, &permits, &done_tx, &counters);
                    schedule(&mut heap, &name, node, next);
                }
            }
            _ = log_tick.tick() => {
                info!(nodes = nodes.len(),
                      status_patches = counters.patches.load(Ordering::Relaxed),
                      errors = counters.errors.load(Ordering::Relaxed), "counters");
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Wakes `node` at `at`, unless it already wakes earlier.
fn schedule(
    heap: &mut BinaryHeap<Reverse<(Instant, String)>>,
    name: &str,
    node: &mut SimNode,
    at: Instant,
) {
    if node.wake.is_some_and(|w| w <= at) {
        return;
    }
    node.wake = Some(at);
    heap.push(Reverse((at, name.to_owned())));
}

/// A stable offset in `[0, interval)` for `name`.
fn spread(name: &str, interval: Duration) -> Duration {
    interval.mul_f64(unit(&[name]))
}

/// A stable number in `[0, 1)` from `parts`.
fn unit(parts: &[&str]) -> f64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One sync of one simulated agent: notes new entries as written, builds the report and patches it
/// when worth it. Returns when to sync again.
fn sync(
    args: &Args,
    name: &str,
    node: &mut SimNode,
    api: &Api<NodeStaticPods>,
    permits: &Arc<Semaphore>,
    done_tx: &mpsc::UnboundedSender<Done>,
    counters: &Arc<Counters>,
) -> Instant {
    let now_instant = Instant::now();
    let now = SystemTime::now();
    let Some(object) = node.object.clone() else {
        return now_instant + args.resync_interval;
    };
    // The "manifest directory": exactly the assigned entries, each written when first seen.
    let mut written = BTreeMap::new();
    for entry in &object.spec.pods {
        let set = SetKey::of(entry);
        let kept = node
            .written
            .get(&set)
            .filter(|w| w.revision == entry.revision)
            .cloned();
        let w = kept.unwrap_or_else(|| Written {
            revision: entry.revision.clone(),
            at: now,
        });
        written.insert(set, w);
    }
    node.written = written;
    let outcomes: Vec<SetOutcome> = node
        .written
        .iter()
        .map(|(set, w)| SetOutcome {
            set: set.clone(),
            phase: ManifestPhase::Written,
            written_revision: Some(w.revision.clone()),
            written_at: Some(w.at),
            pod: Some(PodKey {
                namespace: set.namespace.clone(),
                name: set.name.clone(),
            }),
            message: None,
            source: Some(ManifestSource::File),
            previous_pod: None,
        })
        .collect();
    let mut next_ready: Option<SystemTime> = None;
    let mirror_pods: HashMap<String, Arc<Pod>> = node
        .written
        .iter()
        .map(|(set, w)| {
            let ready_at = w.at + args.ready_delay;
            let fails = unit(&[name, &set.to_string(), &w.revision]) < args.failure_fraction;
            let ready = !fails && ready_at <= now;
            if !fails && !ready {
                next_ready = Some(next_ready.map_or(ready_at, |r| r.min(ready_at)));
            }
            let pod = mirror_pod(name, set, &w.revision, ready.then_some(ready_at));
            (pod.metadata.name.clone().unwrap_or_default(), Arc::new(pod))
        })
        .collect();
    let built = report::build(
        name,
        object.metadata.generation,
        &outcomes,
        &[],
        |key| mirror_pods.get(&key.name).cloned(),
        now,
    );
    if node
        .resync_at
        .is_none_or(|r| r <= now_instant + Duration::from_millis(5))
    {
        node.resync_at = Some(now_instant + args.resync_interval);
    }
    if report::should_patch(
        object.status.as_ref(),
        node.last_patch.as_ref(),
        &built.status,
        now,
        args.resync_interval,
    ) {
        node.in_flight = true;
        let sent = LastPatch {
            status: built.status,
            at: now,
        };
        let (api, permits, done_tx, counters) = (
            api.clone(),
            permits.clone(),
            done_tx.clone(),
            counters.clone(),
        );
        let node_name = name.to_owned();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let body = serde_json::json!({
                "apiVersion": NodeStaticPods::api_version(&()),
                "kind": NodeStaticPods::kind(&()),
                "metadata": { "name": node_name },
                "status": sent.status,
            });
            let result = api
                .patch_status(
                    &node_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await;
            let ok = match result {
                Ok(_) => {
                    counters.patches.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %node_name, error = %e, "status not reported");
                    false
                }
            };
            let _ = done_tx.send(Done {
                node: node_name,
                sent,
                ok,
            });
        });
    }
    let mut next = node.resync_at.unwrap_or(now_instant + args.resync_interval);
    if let Some(ready_at) = next_ready {
        let left = ready_at.duration_since(now).unwrap_or_default();
        next = next.min(now_instant + left + Duration::from_millis(10));
    }
    next
}

/// The mirror pod the kubelet would publish for `set` at `revision` on `node`, Ready since
/// `ready_since` when that is set.
fn mirror_pod(node: &str, set: &SetKey, revision: &str, ready_since: Option<SystemTime>) -> Pod {
    let key = PodKey {
        namespace: set.namespace.clone(),
        name: set.name.clone(),
    };
    let mirror = staticpodset_node_agent::mirror_pods::mirror_pod_key(&key, node);
    let annotations = [
        (kubelet::CONFIG_MIRROR, "sim".to_owned()),
        (ANNOTATION_SET, set.to_string()),
        (ANNOTATION_REVISION, revision.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(mirror.name),
            namespace: Some(mirror.namespace),
            uid: Some(format!("sim-{node}-{}-{revision}", set.name)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready_since.is_some() {
                    "True"
                } else {
                    "False"
                }
                .into(),
                last_transition_time: ready_since.map(report::to_time),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}
