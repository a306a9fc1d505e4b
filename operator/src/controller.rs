//! The StaticPodSet controller: reconcile, error policy, and the wiring of watches and stores.
//!
//! One watch per kind feeds a reflector store: StaticPodSets (the controller's own), Nodes
//! (trimmed to labels and readiness) and NodeStaticPods. Node and NodeStaticPods events are
//! narrowed to the sets they concern ([`crate::triggers`]) and fed to the controller with
//! `reconcile_on`. Reconcile reads only the stores and writes only where something differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{future, stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use staticpodset_api::config_files::ConfigKind;
use staticpodset_api::keys::{ANNOTATION_ROLLBACK_TO, FINALIZER, LABEL_SET_NAME};
use staticpodset_api::validation;
use staticpodset_api::{AssignedPod, NodeStaticPods, StaticPodRevision, StaticPodSet};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::config;
use crate::deletion::cleanup_decision;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::node_match::{trim_node, NodeSelector};
use crate::node_writes::{self, WriteMode, OPERATOR_MANAGER};
use crate::planner::{self, entry_of, report_of, MatchedNode, NodeWrite, Plan};
use crate::render::{render, Rendered};
use crate::revisions::{self, Ensure, RollbackProblem};
use crate::rollout::{self, NodeFacts, RolloutInput};
use crate::rollout_state;
use crate::status::{
    self, Invalid, NodeState, Observed, REASON_INVALID_NODE_SELECTOR, REASON_INVALID_TEMPLATE,
    REASON_INVALID_UPDATE_STRATEGY,
};
use crate::triggers::{
    changed_sets, node_fingerprint, node_object_fingerprint, set_ref, sets_for_node, SetKey,
    Tracker,
};
use crate::Error;

/// How long a reconcile waits for the Node and NodeStaticPods caches before failing.
const STORE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a deleted set checks again whether its nodes let go of it.
const DELETION_POLL: Duration = Duration::from_secs(3);
/// Events' notes are limited to 1 KiB by the API.
const MAX_EVENT_NOTE: usize = 1024;

/// Tunables of the controller, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A deleted set stops waiting for a node whose agent has not synced for this long.
    pub node_gone_timeout: Duration,
    /// How entries are written into node objects.
    pub write_mode: WriteMode,
    /// Node object writes in flight per reconcile.
    pub write_concurrency: usize,
    /// Sets reconciled in parallel.
    pub reconcile_concurrency: u16,
    /// Every set is reconciled at least this often, as a safety net for missed events.
    pub resync: Duration,
    /// Where the configuration bundles (Secrets) live.
    pub config_namespace: String,
}

/// Everything a reconcile needs. One per leadership term; no global state.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on sets.
    pub recorder: Recorder,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Cache of StaticPodSets.
    pub sets: Store<StaticPodSet>,
    /// Cache of Nodes, trimmed to what matters (see [`trim_node`]).
    pub nodes: Store<Node>,
    /// Cache of NodeStaticPods.
    pub node_objects: Store<NodeStaticPods>,
    /// Cache of StaticPodRevisions, trimmed (see [`revisions::trim_revision`]).
    pub revisions: Store<StaticPodRevision>,
    /// Tunables.
    pub settings: Settings,
    /// Consecutive failures per set, for the error policy's exponential backoff.
    failures: Mutex<HashMap<ObjectRef<StaticPodSet>, u32>>,
    /// Data of the ConfigMaps and Secrets sets name, while unchanged.
    pub config_cache: Arc<config::ConfigCache>,
}

impl Context {
    /// Creates a context over the given stores.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Metrics,
        stores: (
            Store<StaticPodSet>,
            Store<Node>,
            Store<NodeStaticPods>,
            Store<StaticPodRevision>,
        ),
        settings: Settings,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            sets: stores.0,
            nodes: stores.1,
            node_objects: stores.2,
            revisions: stores.3,
            settings,
            failures: Mutex::default(),
            config_cache: Arc::default(),
        }
    }

    fn objects_by_name(&self) -> BTreeMap<String, Arc<NodeStaticPods>> {
        self.node_objects
            .state()
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect()
    }

    async fn wait_for_stores(&self) -> Result<(), Error> {
        let ready = async {
            self.nodes.wait_until_ready().await.is_ok()
                && self.node_objects.wait_until_ready().await.is_ok()
                && self.revisions.wait_until_ready().await.is_ok()
        };
        match tokio::time::timeout(STORE_SYNC_TIMEOUT, ready).await {
            Ok(true) => Ok(()),
            _ => Err(Error::StoresNotReady(STORE_SYNC_TIMEOUT)),
        }
    }

    /// Next retry delay for a failing set: 1s doubling up to 5 minutes.
    fn next_backoff(&self, set: &ObjectRef<StaticPodSet>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(set.clone()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    fn reset_backoff(&self, set: &ObjectRef<StaticPodSet>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(set);
    }

    async fn publish(&self, set: &StaticPodSet, warning: bool, reason: &str, note: &str) {
        let event = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(truncate(note, MAX_EVENT_NOTE)),
            action: event_action(note),
            secondary: None,
        };
        // An Event that cannot be published is logged, never a reason to fail the reconcile.
        if let Err(error) = self.recorder.publish(&event, &set.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an Event");
        }
    }
}

/// The Event's `action`, which carries a hash of the note.
///
/// kube's Recorder folds Events into a series by type, action, reason and object, not by note,
/// and a series keeps its first note: "rolling out revision B" would show as another count of
/// "rolling out revision A". Varying the action with the note keeps different notes apart while
/// repeats of the same note still fold into one series.
pub fn event_action(note: &str) -> String {
    format!(
        "Reconcile-{}",
        &crate::render::revision_of(&serde_json::Value::String(note.into()))[..8]
    )
}

/// Delay before retry number `failures` (1-based): 1s, 2s, 4s... capped at 300s.
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exp).min(300))
}

fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Runs the StaticPodSet controller and the node-objects loop until `shutdown` resolves (then
/// gracefully: running reconciles finish). Dropping the returned future stops everything at
/// once, which is what losing the lease does.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    health: Arc<Health>,
    reporter: Reporter,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (objects, objects_writer) = reflector::store::<NodeStaticPods>();
    let (revisions, revisions_writer) = reflector::store::<StaticPodRevision>();
    let controller = Controller::new(
        Api::<StaticPodSet>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(
        controller::Config::default()
            // Coalesces the burst of events a rollout causes into fewer reconciles per set.
            .debounce(Duration::from_millis(500))
            .concurrency(settings.reconcile_concurrency),
    );
    let sets = controller.store();
    let wake = Arc::new(Notify::new());

    let node_triggers = {
        let (sets, nodes_store, objects) = (sets.clone(), nodes.clone(), objects.clone());
        let wake = wake.clone();
        let mut tracker = Tracker::default();
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(trim_node)
        .reflect(nodes_writer)
        .filter_map(move |event| {
            let keys = match event {
                Ok(event) => {
                    let changes = tracker.observe(&event, node_fingerprint);
                    let deleted = match &event {
                        Event::Delete(node) => Some(Arc::new(node.clone())),
                        _ => None,
                    };
                    if changes.iter().any(|c| c.old.is_none() || c.new.is_none()) {
                        wake.notify_one();
                    }
                    let all_sets = sets.state();
                    let mut keys = BTreeSet::new();
                    for change in changes {
                        let node = if change.new.is_some() {
                            nodes_store.get(&ObjectRef::new(&change.name))
                        } else {
                            deleted.clone()
                        };
                        let object = objects.get(&ObjectRef::new(&change.name));
                        keys.extend(sets_for_node(node.as_deref(), object.as_deref(), &all_sets));
                    }
                    keys
                }
                Err(error) => {
                    tracing::warn!(%error, "watching Nodes");
                    BTreeSet::new()
                }
            };
            future::ready(Some(stream::iter(keys.into_iter().map(set_ref))))
        })
        .flatten()
    };

    let object_triggers = {
        let wake = wake.clone();
        let mut tracker = Tracker::default();
        watcher(
            Api::<NodeStaticPods>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        // With a field manager per set, managedFields can outweigh the data: not kept in memory.
        .modify(|o: &mut NodeStaticPods| {
            o.metadata.managed_fields = None;
        })
        .reflect(objects_writer)
        .filter_map(move |event| {
            let keys: BTreeSet<SetKey> = match event {
                Ok(event) => {
                    let changes = tracker.observe(&event, node_object_fingerprint);
                    if changes.iter().any(|c| c.old.is_none() || c.new.is_none()) {
                        wake.notify_one();
                    }
                    changes.iter().flat_map(changed_sets).collect()
                }
                Err(error) => {
                    tracing::warn!(%error, "watching NodeStaticPods");
                    BTreeSet::new()
                }
            };
            future::ready(Some(stream::iter(keys.into_iter().map(set_ref))))
        })
        .flatten()
    };

    // A revision created, renumbered or deleted (by us, by a user, by the garbage collector)
    // reconciles its set: a deleted revision that nodes still need is created again.
    let revision_triggers = watcher(
        Api::<StaticPodRevision>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(revisions::trim_revision)
    .reflect(revisions_writer)
    .filter_map(|event| {
        let keys: Vec<SetKey> = match event {
            Ok(Event::Apply(r) | Event::Delete(r)) => r
                .namespace()
                .map(|ns| (ns, r.spec.set_name.clone()))
                .into_iter()
                .collect(),
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(%error, "watching StaticPodRevisions");
                Vec::new()
            }
        };
        future::ready(Some(stream::iter(keys.into_iter().map(set_ref))))
    })
    .flatten();

    // A changed, created or deleted ConfigMap or Secret reconciles the sets whose volumes name
    // it. Metadata only: the operator never holds the cluster's Secrets in memory.
    let config_cache = Arc::new(config::ConfigCache::default());
    let configmap_triggers =
        config_triggers::<ConfigMap>(&client, ConfigKind::ConfigMap, &sets, &config_cache);
    let secret_triggers =
        config_triggers::<Secret>(&client, ConfigKind::Secret, &sets, &config_cache);

    let mut ctx = Context::new(
        client.clone(),
        reporter,
        metrics.clone(),
        (
            sets.clone(),
            nodes.clone(),
            objects.clone(),
            revisions.clone(),
        ),
        settings.clone(),
    );
    ctx.config_cache = config_cache;
    let ctx = Arc::new(ctx);

    let controller_done = controller
        .reconcile_on(node_triggers)
        .reconcile_on(object_triggers)
        .reconcile_on(revision_triggers)
        .reconcile_on(configmap_triggers)
        .reconcile_on(secret_triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                // Object-level failures are logged by the error policy; this is the queue.
                tracing::debug!(%error, "controller");
            }
            future::ready(())
        });

    let synced = {
        let (sets, nodes, objects, health) = (sets.clone(), nodes.clone(), objects.clone(), health);
        async move {
            if sets.wait_until_ready().await.is_ok()
                && nodes.wait_until_ready().await.is_ok()
                && objects.wait_until_ready().await.is_ok()
                && revisions.wait_until_ready().await.is_ok()
            {
                tracing::info!("caches synced");
                health.set_synced(true);
            }
            // Keep this branch pending: only the controller ends the term.
            future::pending::<()>().await
        }
    };

    let node_objects = async move {
        crate::node_objects::run(
            client,
            settings.write_mode,
            nodes,
            objects,
            sets,
            metrics,
            wake,
        )
        .await;
        future::pending::<()>().await
    };

    tokio::select! {
        _ = controller_done => {}
        _ = synced => {}
        _ = node_objects => {}
    }
}

/// The sets to reconcile when objects of kind `K` (ConfigMap or Secret) change.
fn config_triggers<K>(
    client: &Client,
    kind: ConfigKind,
    sets: &Store<StaticPodSet>,
    cache: &Arc<config::ConfigCache>,
) -> impl futures::Stream<Item = ObjectRef<StaticPodSet>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let (sets, cache) = (sets.clone(), cache.clone());
    watcher(
        Api::<kube::core::PartialObjectMeta<K>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .filter_map(move |event| {
        let keys: Vec<SetKey> = match event {
            Ok(Event::Apply(m) | Event::InitApply(m)) => {
                let Some(ns) = m.namespace() else {
                    return future::ready(Some(stream::iter(Vec::new().into_iter().map(set_ref))));
                };
                let keys = config::sets_referencing(&sets.state(), kind, &ns, &m.name_any());
                // Only objects some set names are remembered.
                let version = (!keys.is_empty()).then(|| m.resource_version()).flatten();
                cache.observe((kind, ns, m.name_any()), version);
                keys
            }
            Ok(Event::Delete(m)) => match m.namespace() {
                Some(ns) => {
                    cache.observe((kind, ns.clone(), m.name_any()), None);
                    config::sets_referencing(&sets.state(), kind, &ns, &m.name_any())
                }
                None => Vec::new(),
            },
            // A relist: deletions during the gap come as no event, so forget what was seen.
            Ok(Event::Init) => {
                cache.forget_seen();
                Vec::new()
            }
            Ok(Event::InitDone) => Vec::new(),
            Err(error) => {
                tracing::warn!(%error, ?kind, "watching ConfigMaps or Secrets");
                Vec::new()
            }
        };
        future::ready(Some(stream::iter(keys.into_iter().map(set_ref))))
    })
    .flatten()
}

/// Reconciles one set: distributes it (or, when it is being deleted, withdraws it) and writes
/// its status.
pub async fn reconcile(set: Arc<StaticPodSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = set.name_any();
    let Some(namespace) = set.namespace() else {
        return Err(Error::MissingNamespace(name));
    };
    let span = tracing::info_span!("reconcile", namespace = %namespace, name = %name);
    let result = async {
        ctx.wait_for_stores().await?;
        let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), &namespace);
        finalizer(&api, FINALIZER, set.clone(), |event| async {
            match event {
                Finalizer::Apply(set) => apply(&set, &namespace, &name, &ctx).await,
                Finalizer::Cleanup(set) => cleanup(&set, &namespace, &name, &ctx).await,
            }
        })
        .await
        .map_err(|source| Error::Finalizer {
            set: format!("{namespace}/{name}"),
            source: Box::new(source),
        })
    }
    .instrument(span)
    .await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err());
    ctx.metrics.sets.set(ctx.sets.state().len() as i64);
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(&*set));
    }
    result
}

/// The one error policy: a deleted set waiting for its nodes polls quietly; anything else is
/// retried with a per-set exponential backoff.
pub fn error_policy(set: Arc<StaticPodSet>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        tracing::debug!(namespace = %set.namespace().unwrap_or_default(), name = %set.name_any(), %error, "waiting");
        return Action::requeue(DELETION_POLL);
    }
    let delay = ctx.next_backoff(&ObjectRef::from_obj(&*set));
    tracing::warn!(
        namespace = %set.namespace().unwrap_or_default(),
        name = %set.name_any(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Validates and renders the set. Returns the compiled selector (if usable) and the rendered pod
/// or why the spec is invalid.
///
/// The rules for what a static pod may contain live in the API crate
/// (`staticpodset_api::validation`), shared with the CRD's CEL rules: a set that reached the
/// cluster without them (an older CRD, one applied by hand) is reported here instead of being
/// written to nodes whose kubelet would refuse it. A name breaking the naming rule is reported
/// with the template's problems, under the same reason.
fn evaluate(
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    config: &Result<Option<config::Resolved>, config::ConfigProblem>,
) -> (
    Option<NodeSelector>,
    Result<crate::render::Rendered, Invalid>,
) {
    let selector = NodeSelector::compile(set.spec.node_selector.as_ref());
    let mut template_problems = validation::set_name_problems(name);
    match &set.spec.template.spec {
        Some(spec) => template_problems.extend(validation::template_problems(spec)),
        None => template_problems.push(crate::render::RenderError::MissingSpec.to_string()),
    }
    let strategy_problem = crate::rollout_state::strategy_of(&set.spec)
        .err()
        .map(|e| format!("spec.updateStrategy.rollingUpdate.{e}"));
    let rendered = if let (true, Some(problem)) = (template_problems.is_empty(), strategy_problem) {
        Err(Invalid {
            reason: REASON_INVALID_UPDATE_STRATEGY,
            problems: vec![problem],
        })
    } else if !template_problems.is_empty() {
        let mut problems = template_problems;
        if let Err(selector_problems) = &selector {
            problems.extend(selector_problems.iter().cloned());
        }
        Err(Invalid {
            reason: REASON_INVALID_TEMPLATE,
            problems,
        })
    } else if let Err(problems) = &selector {
        Err(Invalid {
            reason: REASON_INVALID_NODE_SELECTOR,
            problems: problems.clone(),
        })
    } else {
        match config {
            Err(problem) => Err(Invalid {
                reason: problem.reason,
                problems: problem.problems.clone(),
            }),
            Ok(resolved) => render(
                namespace,
                name,
                &config::localize(&set.spec.template, namespace, name, resolved.as_ref()),
            )
            .map_err(|e| Invalid {
                reason: REASON_INVALID_TEMPLATE,
                problems: vec![e.to_string()],
            }),
        }
    };
    (selector.ok(), rendered)
}

async fn apply(
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let mut rollback_failed = None;
    if let Some(value) = set.annotations().get(ANNOTATION_ROLLBACK_TO) {
        match rollback(set, namespace, name, value, ctx).await? {
            // The set changed (or is changing): its watch brings the next reconcile.
            Rollback::Restored | Rollback::Superseded => {
                return Ok(Action::requeue(ctx.settings.resync))
            }
            Rollback::Refused(problem) => rollback_failed = Some(problem),
        }
    }
    let config_volumes = config::config_volumes(&set.spec.template);
    let config = if config_volumes.is_empty() {
        Ok(None)
    } else {
        let fetched = config::fetch(
            &ctx.client,
            &ctx.config_cache,
            &ctx.metrics,
            namespace,
            &config_volumes,
        )
        .await
        .map_err(|source| Error::ConfigRead {
            set: format!("{namespace}/{name}"),
            source,
        })?;
        config::resolve(namespace, &config_volumes, &fetched)
    };
    let (selector, rendered) = evaluate(set, namespace, name, &config);
    let config = config.ok().flatten();
    let previous = set.status.as_ref();
    // The bundle and then the revision object come first: agents read the revision as soon as
    // an entry names it, and the bundle as soon as they have the revision.
    if let (Ok(_), Some(resolved)) = (&rendered, &config) {
        let bundle = config::bundle(namespace, name, resolved, &ctx.settings.config_namespace);
        if config::ensure_bundle(&ctx.client, &bundle)
            .await
            .map_err(|source| Error::BundleWrite {
                set: format!("{namespace}/{name}"),
                bundle: bundle.metadata.name.clone().unwrap_or_default(),
                source,
            })?
        {
            ctx.metrics
                .bundle_writes
                .with_label_values(&["create"])
                .inc();
            tracing::info!(hash = %resolved.hash, "configuration bundle created");
        }
    }
    let revision_number = match &rendered {
        Ok(r) => Some(ensure_revision(ctx, set, namespace, name, r).await?),
        Err(_) => previous.and_then(|s| s.update_revision_number),
    };
    let objects = ctx.objects_by_name();
    let now = Timestamp::now();
    let nodes = ctx.nodes.state();
    let matched = match &selector {
        Some(selector) => planner::matched(name, selector, &nodes),
        None => objects
            .iter()
            .filter(|(_, o)| entry_of(o, namespace, name).is_some())
            .map(|(node, _)| MatchedNode {
                name: node.clone(),
                name_problem: None,
            })
            .collect(),
    };
    let revision = match &rendered {
        Ok(r) => Some(r.revision.clone()),
        Err(_) => previous.and_then(|s| s.update_revision.clone()),
    };
    let strategy = rollout_state::strategy_of(&set.spec).unwrap_or_default();
    let nodes_by_name: BTreeMap<String, Arc<Node>> =
        nodes.iter().map(|n| (n.name_any(), n.clone())).collect();
    let facts: Vec<NodeFacts> = matched
        .iter()
        .filter(|m| m.name_problem.is_none())
        .map(|m| {
            rollout_state::node_facts(
                &m.name,
                nodes_by_name.get(&m.name).map(|n| &**n),
                objects.get(&m.name).map(|o| &**o),
                namespace,
                name,
                now,
            )
        })
        .collect();
    let rollout = revision.as_ref().map(|update| {
        rollout::plan_rollout(&RolloutInput {
            update_revision: update.clone(),
            last_healthy_revision: previous.and_then(|s| s.current_revision.clone()),
            revision_numbers: revisions::numbers(
                &ctx.revisions.state(),
                namespace,
                name,
                set.metadata.uid.as_deref(),
            ),
            strategy: strategy.clone(),
            nodes: facts.clone(),
            now,
        })
    });
    let plan = match (&selector, &rendered, &rollout) {
        (Some(selector), Ok(_), Some(rollout)) => {
            let current: BTreeMap<String, AssignedPod> = objects
                .iter()
                .filter_map(|(node, o)| Some((node.clone(), entry_of(o, namespace, name)?.clone())))
                .collect();
            let wanted = rollout_state::desired_entries(rollout, namespace, name, &current, now);
            planner::plan(namespace, name, selector, Some(&wanted), &nodes, &objects)
        }
        _ => Plan {
            matched: matched.clone(),
            writes: vec![],
        },
    };
    if let Err(invalid) = &rendered {
        tracing::info!(problems = ?invalid.problems, "spec is invalid; nothing is written to nodes");
    }
    if let Some(rollout) = &rollout {
        for failure in &rollout.newly_failed {
            tracing::warn!(node = %failure.node, revision = %failure.revision, "{}", failure.message);
            ctx.publish(set, true, failure.reason, &failure.message)
                .await;
        }
    }
    let write_result = execute(ctx, namespace, name, plan.writes).await;

    let states: Vec<NodeState<'_>> = matched
        .iter()
        .map(|m| NodeState {
            node: &m.name,
            report: objects
                .get(&m.name)
                .and_then(|o| report_of(o, namespace, name)),
            name_problem: m.name_problem.as_deref(),
        })
        .collect();
    let revision = revision.as_deref();
    // A rollout's clocks (progress deadline, minReadySeconds) run out without any event.
    let requeue = rollout
        .as_ref()
        .and_then(|r| rollout_state::next_check(r, &facts, &strategy))
        .and_then(|at| Duration::try_from(at.duration_since(Timestamp::now())).ok())
        .map_or(ctx.settings.resync, |wait| {
            wait.clamp(Duration::from_secs(1), ctx.settings.resync)
        });
    let observed = Observed {
        generation: set.metadata.generation,
        revision,
        revision_number,
        invalid: rendered.as_ref().err().cloned(),
        rollback_failed,
        nodes: states,
        rollout,
    };
    let next = status::aggregate(previous, &observed, &Time(Timestamp::now()));
    if previous != Some(&next) {
        let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), namespace);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": next })),
        )
        .await
        .map_err(|source| Error::StatusPatch {
            set: format!("{namespace}/{name}"),
            source,
        })?;
        // Only after the status is written: a failed write retries, and must not repeat Events.
        for notice in status::notices(previous, &next) {
            ctx.publish(set, notice.warning, &notice.reason, &notice.note)
                .await;
        }
    }
    write_result?;
    if let Ok(rendered) = &rendered {
        let mut keep = revisions::in_use(&objects, namespace, name);
        keep.insert(rendered.revision.clone());
        keep.extend(next.current_revision.clone());
        let deleted = prune_history(ctx, set, namespace, name, &keep).await;
        prune_config(ctx, set, namespace, name, config.as_ref(), &deleted).await;
    }
    Ok(Action::requeue(requeue))
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..Default::default()
    }
}

/// The set's revisions as the API server has them now (not as the cache has them): for the rare
/// decisions that write, where a cache lagging behind our own last write would mis-number.
async fn live_history(
    ctx: &Context,
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
) -> Result<Vec<Arc<StaticPodRevision>>, Error> {
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{LABEL_SET_NAME}={name}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::RevisionWrite {
            op: "listing",
            set: format!("{namespace}/{name}"),
            namespace: namespace.to_string(),
            revision: selector.clone(),
            source,
        })?;
    let all: Vec<Arc<StaticPodRevision>> = list.items.into_iter().map(Arc::new).collect();
    Ok(revisions::history_of(
        &all,
        namespace,
        name,
        set.metadata.uid.as_deref(),
    ))
}

/// Makes sure the StaticPodRevision of `rendered` exists and is the set's newest; returns its
/// number. Costs no API call when the cache shows it is already.
async fn ensure_revision(
    ctx: &Context,
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    rendered: &Rendered,
) -> Result<i64, Error> {
    let set_key = format!("{namespace}/{name}");
    let history_error = |problem| Error::History {
        set: set_key.clone(),
        problem,
    };
    let cached = revisions::history_of(
        &ctx.revisions.state(),
        namespace,
        name,
        set.metadata.uid.as_deref(),
    );
    if let Ensure::Current { number, .. } =
        revisions::ensure(&cached, name, rendered).map_err(history_error)?
    {
        return Ok(number);
    }
    let history = live_history(ctx, set, namespace, name).await?;
    let decision = revisions::ensure(&history, name, rendered).map_err(history_error)?;
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), namespace);
    let write_error = |op: &'static str, revision: &str| {
        let (set, namespace, revision) =
            (set_key.clone(), namespace.to_string(), revision.to_string());
        move |source| Error::RevisionWrite {
            op,
            set,
            namespace,
            revision,
            source,
        }
    };
    match &decision {
        Ensure::Current { .. } => {}
        Ensure::Create {
            name: object,
            number,
        } => {
            let revision = revisions::revision_object(set, rendered, *number)
                .ok_or_else(|| history_error(revisions::HistoryProblem::NoUid))?;
            let params = PostParams {
                field_manager: Some(OPERATOR_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&params, &revision).await {
                Ok(_) => {}
                // Not in the set's history, yet there: another set's of the same name.
                Err(e) if node_writes::is_already_exists(&e) => {
                    return Err(Error::RevisionTaken {
                        set: set_key.clone(),
                        revision: object.clone(),
                    })
                }
                Err(e) => return Err(write_error("creating", object)(e)),
            }
            ctx.metrics
                .revision_writes
                .with_label_values(&["create"])
                .inc();
            tracing::info!(revision = number, hash = %rendered.revision, "created revision");
        }
        Ensure::Renumber {
            name: object,
            from,
            to,
            adopt,
        } => {
            let Some(existing) = history.iter().find(|r| r.name_any() == *object) else {
                // `ensure` renumbers only what the history holds.
                return Err(history_error(revisions::HistoryProblem::NotInHistory(
                    object.clone(),
                )));
            };
            let mut metadata = json!({ "resourceVersion": existing.resource_version() });
            if *adopt {
                let mut owners = existing.owner_references().to_vec();
                owners.extend(revisions::owner_reference(set));
                metadata["ownerReferences"] = json!(owners);
            }
            let patch = json!({ "metadata": metadata, "spec": { "revision": to } });
            api.patch(object, &patch_params(), &Patch::Merge(patch))
                .await
                .map_err(write_error("renumbering", object))?;
            ctx.metrics
                .revision_writes
                .with_label_values(&["renumber"])
                .inc();
            tracing::info!(from, to, adopt, hash = %rendered.revision, "reused an earlier revision as the newest");
        }
    }
    Ok(decision.number())
}

/// Deletes the set's old revisions beyond `spec.revisionHistoryLimit`, sparing every hash in
/// `keep`. Failures are logged, not returned: the next reconcile tries again, and a revision kept
/// a little longer harms nothing.
async fn prune_history(
    ctx: &Context,
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    keep: &std::collections::BTreeSet<String>,
) -> BTreeSet<String> {
    let mut deleted = BTreeSet::new();
    let history = revisions::history_of(
        &ctx.revisions.state(),
        namespace,
        name,
        set.metadata.uid.as_deref(),
    );
    let limit = revisions::history_limit(set);
    let api: Api<StaticPodRevision> = Api::namespaced(ctx.client.clone(), namespace);
    for old in revisions::prune(&history, keep, limit) {
        // Only the very object we looked at: not one renumbered (reused) since.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.uid(),
                resource_version: old.resource_version(),
            }),
            ..Default::default()
        };
        let object = old.name_any();
        match api.delete(&object, &params).await {
            Ok(_) => {
                ctx.metrics
                    .revision_writes
                    .with_label_values(&["delete"])
                    .inc();
                tracing::info!(revision = old.spec.revision, hash = %old.spec.hash, limit, "deleted an old revision beyond the history limit");
                deleted.insert(object.clone());
            }
            Err(e) if node_writes::is_not_found(&e) || node_writes::is_conflict(&e) => {}
            Err(error) => {
                tracing::warn!(%error, revision = %object, "deleting an old revision; retried on the next reconcile")
            }
        }
    }
    deleted
}

/// Deletes the configuration bundles of a set that no revision of its history names any more
/// (`deleted`: revision objects deleted just now, which the cache may still hold). Only for sets
/// that have or had configuration, so other sets cost no API call. Failures are logged: a bundle
/// kept a little longer harms nothing.
async fn prune_config(
    ctx: &Context,
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    current: Option<&config::Resolved>,
    deleted: &BTreeSet<String>,
) {
    let history = revisions::history_of(
        &ctx.revisions.state(),
        namespace,
        name,
        set.metadata.uid.as_deref(),
    );
    let had_config = !revisions::config_hashes(history.iter().map(|r| &**r)).is_empty();
    let mut keep = revisions::config_hashes(
        history
            .iter()
            .filter(|r| !deleted.contains(&r.name_any()))
            .map(|r| &**r),
    );
    if current.is_none() && !had_config {
        return;
    }
    keep.extend(current.map(|c| c.hash.clone()));
    match config::prune_bundles(
        &ctx.client,
        &ctx.settings.config_namespace,
        namespace,
        name,
        &keep,
    )
    .await
    {
        Ok(gone) if !gone.is_empty() => {
            ctx.metrics
                .bundle_writes
                .with_label_values(&["delete"])
                .inc_by(gone.len() as u64);
            tracing::info!(bundles = ?gone, "deleted configuration bundles no revision names");
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "pruning configuration bundles; retried on the next reconcile");
        }
    }
}

/// What a `staticpods.dev/rollback-to` annotation led to.
enum Rollback {
    /// The template was restored and the annotation removed, in one write.
    Restored,
    /// The annotation changed while it was acted on; its new value gets its own reconcile.
    Superseded,
    /// Refused: the annotation was removed and a Warning Event published.
    Refused(RollbackProblem),
}

/// Restores the template of revision `value` into the set (a JSON patch replacing
/// `spec.template` whole and removing the annotation), or refuses.
async fn rollback(
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    value: &str,
    ctx: &Context,
) -> Result<Rollback, Error> {
    let history = live_history(ctx, set, namespace, name).await?;
    let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), namespace);
    let target = match revisions::rollback_target(value, &history) {
        Ok(target) => target,
        Err(problem) => return refuse_rollback(ctx, set, &api, value, problem).await,
    };
    let (number, hash) = (target.spec.revision, target.spec.hash.clone());
    if !target.spec.template.is_object() {
        let problem = RollbackProblem {
            reason: "RollbackRevisionUnusable",
            message: format!("revision {number} ({hash}) holds no pod template to restore"),
        };
        return refuse_rollback(ctx, set, &api, value, problem).await;
    }
    let patch = revisions::rollback_patch(ANNOTATION_ROLLBACK_TO, value, &target.spec.template);
    let set_key = format!("{namespace}/{name}");
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Rollback {
        set: set_key.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api
        .patch(name, &patch_params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            ctx.metrics
                .revision_writes
                .with_label_values(&["rollback"])
                .inc();
            let asked = set
                .status
                .as_ref()
                .and_then(|s| s.update_revision.as_deref());
            let note = if asked == Some(hash.as_str()) {
                format!("revision {number} ({hash}) is what the set already asks for; removed {ANNOTATION_ROLLBACK_TO}")
            } else {
                format!("restored spec.template from revision {number} ({hash}); it rolls out as the newest revision")
            };
            tracing::info!(%note, "rolled back");
            ctx.publish(set, false, "RolledBack", &note).await;
            Ok(Rollback::Restored)
        }
        // The annotation changed under us (its `test` failed), or today's rules reject the old
        // template; refusing tells them apart, since its own `test` fails in the first case.
        Err(e) if node_writes::is_invalid(&e) => {
            let problem = RollbackProblem {
                reason: "RollbackRejected",
                message: format!(
                    "the API server rejected the template of revision {number} ({hash}): {}",
                    api_message(&e)
                ),
            };
            refuse_rollback(ctx, set, &api, value, problem).await
        }
        Err(source) => Err(Error::Rollback {
            set: set_key,
            source,
        }),
    }
}

async fn refuse_rollback(
    ctx: &Context,
    set: &StaticPodSet,
    api: &Api<StaticPodSet>,
    value: &str,
    problem: RollbackProblem,
) -> Result<Rollback, Error> {
    let name = set.name_any();
    let set_key = format!("{}/{name}", set.namespace().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_value(revisions::drop_annotation_patch(
        ANNOTATION_ROLLBACK_TO,
        value,
    ))
    .map_err(|e| Error::Rollback {
        set: set_key.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    match api
        .patch(&name, &patch_params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            tracing::warn!(reason = problem.reason, message = %problem.message, "rollback refused");
            ctx.publish(set, true, problem.reason, &problem.message)
                .await;
            Ok(Rollback::Refused(problem))
        }
        Err(e) if node_writes::is_invalid(&e) || node_writes::is_not_found(&e) => {
            Ok(Rollback::Superseded)
        }
        Err(source) => Err(Error::Rollback {
            set: set_key,
            source,
        }),
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

async fn cleanup(
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let objects = ctx.objects_by_name();
    execute(
        ctx,
        namespace,
        name,
        planner::plan_removal(namespace, name, &objects),
    )
    .await?;
    let nodes: BTreeMap<String, Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let decision = cleanup_decision(
        namespace,
        name,
        &objects,
        &nodes,
        Timestamp::now(),
        ctx.settings.node_gone_timeout,
    );
    if !decision.done() {
        return Err(Error::WaitingForNodes {
            set: format!("{namespace}/{name}"),
            nodes: list(decision.waiting.iter().map(String::as_str)),
        });
    }
    if !decision.skipped.is_empty() {
        let skipped: Vec<String> = decision
            .skipped
            .iter()
            .map(|(node, reason)| format!("{node} ({reason})"))
            .collect();
        let note = format!(
            "released without confirmation from {} node(s): {}; their agents remove the pod when they return",
            skipped.len(),
            list(skipped.iter().map(String::as_str))
        );
        tracing::warn!(%note, "skipped nodes while deleting");
        ctx.publish(set, true, "SkippedNodes", &note).await;
    }
    // The nodes let go of the set, so of its files: its bundles may go.
    let gone = config::prune_bundles(
        &ctx.client,
        &ctx.settings.config_namespace,
        namespace,
        name,
        &BTreeSet::new(),
    )
    .await
    .map_err(|source| Error::BundleWrite {
        set: format!("{namespace}/{name}"),
        bundle: config::bundle_selector(namespace, name),
        source,
    })?;
    ctx.metrics
        .bundle_writes
        .with_label_values(&["delete"])
        .inc_by(gone.len() as u64);
    Ok(Action::await_change())
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    let shown = items.len().min(status::MAX_NODES_IN_MESSAGE * 4);
    let mut text = items[..shown].join(", ");
    if items.len() > shown {
        text.push_str(&format!(" and {} more", items.len() - shown));
    }
    text
}

/// Performs a set's node writes, a bounded number at a time. Every write is attempted; the
/// result reports the failures.
async fn execute(
    ctx: &Context,
    namespace: &str,
    name: &str,
    writes: Vec<NodeWrite>,
) -> Result<(), Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let total = writes.len();
    tracing::info!(writes = total, "writing node objects");
    let results: Vec<Result<(), Error>> = stream::iter(writes)
        .map(|w| async move {
            let result =
                node_writes::write(&ctx.client, ctx.settings.write_mode, namespace, name, &w).await;
            if result.is_ok() {
                let op = if w.entry.is_some() { "apply" } else { "remove" };
                ctx.metrics
                    .node_object_writes
                    .with_label_values(&[op])
                    .inc();
            }
            result
        })
        .buffer_unordered(ctx.settings.write_concurrency.max(1))
        .collect()
        .await;
    let mut failures = results.into_iter().filter_map(Result::err);
    match failures.next() {
        None => Ok(()),
        Some(first) => {
            let failed = 1 + failures.count();
            Err(Error::NodeWrites {
                set: format!("{namespace}/{name}"),
                failed,
                total,
                first: Box::new(first),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use staticpodset_api::StaticPodSetSpec;

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=11).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn event_actions_differ_by_note_only() {
        assert_eq!(event_action("a"), event_action("a"));
        assert_ne!(event_action("rolling out A"), event_action("rolling out B"));
        assert!(event_action("x").len() <= 128);
        assert!(event_action("x").starts_with("Reconcile-"));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(600);
        let t = truncate(&long, 1024);
        assert!(t.len() <= 1024);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn lists_are_bounded() {
        let names: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let text = list(names.iter().map(String::as_str));
        assert!(text.ends_with(" and 10 more"), "{text}");
    }

    fn set(spec: Option<PodSpec>, selector: Option<LabelSelector>) -> StaticPodSet {
        let mut s = StaticPodSet::new(
            "vip",
            StaticPodSetSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec,
                },
                node_selector: selector,
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s
    }

    fn pod_spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("img".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn broken_selector() -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "In".into(),
                values: None,
            }]),
        }
    }

    #[test]
    fn evaluation_of_specs() {
        let (selector, rendered) = evaluate(&set(Some(pod_spec()), None), "ns", "vip", &Ok(None));
        assert!(selector.is_some());
        assert_eq!(rendered.unwrap().manifest["metadata"]["name"], "vip");

        let (_, rendered) = evaluate(&set(None, None), "ns", "vip", &Ok(None));
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems, ["spec.template.spec: required"]);

        let (selector, rendered) = evaluate(
            &set(Some(pod_spec()), Some(broken_selector())),
            "ns",
            "vip",
            &Ok(None),
        );
        assert!(selector.is_none());
        assert_eq!(rendered.unwrap_err().reason, REASON_INVALID_NODE_SELECTOR);

        // The API crate's rules apply: a Secret volume, and the set name rule.
        let mut secret = pod_spec();
        secret.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
            name: "s".into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                items: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let (_, rendered) = evaluate(&set(Some(secret), None), "ns", "vip", &Ok(None));
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert!(
            invalid.problems[0].contains("volumes[0]"),
            "{:?}",
            invalid.problems
        );
        let long = "x".repeat(41);
        let (_, rendered) = evaluate(&set(Some(pod_spec()), None), "ns", &long, &Ok(None));
        assert!(rendered.unwrap_err().problems[0].starts_with("metadata.name"));

        // Both broken: the template reason wins and every problem is listed.
        let (_, rendered) = evaluate(
            &set(Some(PodSpec::default()), Some(broken_selector())),
            "ns",
            "vip",
            &Ok(None),
        );
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems.len(), 2);

        // A valid template with a missing ConfigMap: the config's reason, nothing rendered.
        let missing = Err(config::ConfigProblem {
            reason: config::REASON_CONFIG_NOT_FOUND,
            problems: vec!["spec.template.spec.volumes[0].configMap: not found".into()],
        });
        let (_, rendered) = evaluate(&set(Some(pod_spec()), None), "ns", "vip", &missing);
        assert_eq!(
            rendered.unwrap_err().reason,
            config::REASON_CONFIG_NOT_FOUND
        );
        // A broken template still reports the template first.
        let (_, rendered) = evaluate(
            &set(Some(PodSpec::default()), Some(broken_selector())),
            "ns",
            "vip",
            &missing,
        );
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems.len(), 2);
    }
}
