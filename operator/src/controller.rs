//! The StaticPodSet controller: the watches and stores, reconcile, and the one error policy.
//!
//! One watch per kind feeds a reflector store: StaticPodSets (the controller's own), Nodes
//! (trimmed to labels and readiness), NodeStaticPods and StaticPodRevisions, plus metadata-only
//! watches of ConfigMaps and Secrets. Their events are narrowed to the sets they concern
//! ([`crate::triggers`]) and fed to the controller with `reconcile_on`. A reconcile reads the
//! stores, lets [`crate::decide`] decide, and carries the decision out: it writes only where
//! something differs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{future, stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use staticpodset_api::config_files::ConfigKind;
use staticpodset_api::keys::{ANNOTATION_ROLLBACK_TO, FINALIZER};
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodRevision, StaticPodSet};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::admission::{self, Verdict};
use crate::admission_check;
use crate::conditions;
use crate::conditions::{failure_reason, Invalid, EVENT_SKIPPED_NODES, REASON_ADMISSION_DENIED};
use crate::config;
use crate::context::{Context, Settings};
use crate::decide::{decide, evaluate, Snapshot};
use crate::deletion::cleanup_decision;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::node_match::trim_node;
use crate::node_writer::NodeWriter;
use crate::planner;
use crate::revision_writes;
use crate::revisions;
use crate::rollback::{self, Rollback};
use crate::sent_writes::SentWrites;
use crate::triggers::{
    changed_sets, node_fingerprint, node_object_fingerprint, set_ref, sets_for_node, Tracker,
};
use crate::Error;

/// How soon a deleted set checks again whether its nodes let go of it.
const DELETION_POLL: Duration = Duration::from_secs(3);

/// Objects per page of the initial and every later list of the per-node kinds (Nodes,
/// NodeStaticPods). A page is read and decoded whole, managedFields included, before the
/// watcher hands its objects on to be trimmed; at kube-runtime's 500, a relist of 20-set node
/// objects held ~10 MB of JSON and its decoding at once, and the heap kept that peak afterwards.
const PER_NODE_LIST_PAGE: u32 = 100;

/// The watch of a per-node kind: from any cached version, listed [`PER_NODE_LIST_PAGE`] a page.
fn per_node_watch() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(PER_NODE_LIST_PAGE)
}

/// Runs the StaticPodSet controller and the node-objects loop until `shutdown` resolves (then
/// gracefully: running reconciles finish). Dropping the returned future stops everything at
/// once, which is what losing the lease does.
/// The set cache exported as per-set metrics while the controllers run; dropped (the lease
/// lost, the controllers stopped), the series go.
struct ExportedSets(crate::set_metrics::SetStoreSlot);

impl ExportedSets {
    fn new(metrics: &Metrics, sets: reflector::Store<StaticPodSet>) -> Self {
        *metrics
            .set_store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sets);
        Self(metrics.set_store.clone())
    }
}

impl Drop for ExportedSets {
    fn drop(&mut self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

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
    let (namespaces, namespaces_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let controller = Controller::new(
        Api::<StaticPodSet>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(
        controller::Config::default()
            // Coalesces the burst of events a rollout causes into fewer reconciles per set; short,
            // since every hop of a rollout waits for it once.
            .debounce(settings.reconcile_debounce)
            .concurrency(settings.reconcile_concurrency),
    );
    let sets = controller.store();
    let _exported = ExportedSets::new(&metrics, sets.clone());
    let wake = Arc::new(Notify::new());

    let node_triggers = {
        let (sets, nodes_store, objects) = (sets.clone(), nodes.clone(), objects.clone());
        let wake = wake.clone();
        let mut tracker = Tracker::default();
        watcher(Api::<Node>::all(client.clone()), per_node_watch())
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
                            keys.extend(sets_for_node(
                                node.as_deref(),
                                object.as_deref(),
                                &all_sets,
                            ));
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

    let sent_writes = Arc::new(SentWrites::default());
    let object_triggers = {
        let wake = wake.clone();
        let sent_writes = sent_writes.clone();
        let mut tracker = Tracker::default();
        watcher(Api::<NodeStaticPods>::all(client.clone()), per_node_watch())
            .default_backoff()
            .modify(planner::trim_node_object)
            .reflect(objects_writer)
            .filter_map(move |event| {
                let keys: BTreeSet<SetKey> = match event {
                    Ok(event) => {
                        match &event {
                            Event::Apply(o) | Event::InitApply(o) => {
                                sent_writes.observe(o, Instant::now());
                            }
                            Event::Delete(o) => sent_writes.observe_deleted(&o.name_any()),
                            Event::Init | Event::InitDone => {}
                        }
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
                .map(|ns| SetKey::new(ns, r.spec.set_name.clone()))
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

    // A namespace whose labels change (its Pod Security level, what policies select) has its
    // sets' mirror pods judged again. Metadata only.
    let namespace_triggers = {
        let sets = sets.clone();
        let mut tracker = Tracker::default();
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(namespaces_writer)
        .filter_map(move |event| {
            let keys: Vec<SetKey> = match event {
                Ok(event) => {
                    let changed: BTreeSet<String> = tracker
                        .observe(&event, |ns: &PartialObjectMeta<Namespace>| {
                            admission::labels_fingerprint(
                                ns.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                            )
                        })
                        .into_iter()
                        .filter(|c| c.old.is_some() && c.new.is_some())
                        .map(|c| c.name)
                        .collect();
                    sets.state()
                        .iter()
                        .filter(|s| s.namespace().is_some_and(|ns| changed.contains(&ns)))
                        .map(|s| SetKey::new(s.namespace().unwrap_or_default(), s.name_any()))
                        .collect()
                }
                Err(error) => {
                    tracing::warn!(%error, "watching Namespaces");
                    Vec::new()
                }
            };
            future::ready(Some(stream::iter(keys.into_iter().map(set_ref))))
        })
        .flatten()
    };

    let mut ctx = Context::new(
        client.clone(),
        reporter,
        metrics.clone(),
        (
            sets.clone(),
            nodes.clone(),
            objects.clone(),
            revisions.clone(),
            namespaces.clone(),
        ),
        settings.clone(),
    );
    ctx.config_cache = config_cache;
    let (node_writer, writer_channels) = NodeWriter::new(sent_writes.clone());
    ctx.sent_writes = sent_writes;
    ctx.node_writer = node_writer.clone();
    let ctx = Arc::new(ctx);
    // A set whose write failed is reconciled at once, so the failure shows on it.
    let retry_triggers = stream::unfold(writer_channels.retries, |mut rx| async move {
        rx.recv().await.map(|key| (set_ref(key), rx))
    });

    let controller_done = controller
        .reconcile_on(node_triggers)
        .reconcile_on(object_triggers)
        .reconcile_on(revision_triggers)
        .reconcile_on(configmap_triggers)
        .reconcile_on(secret_triggers)
        .reconcile_on(namespace_triggers)
        .reconcile_on(retry_triggers)
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
                && namespaces.wait_until_ready().await.is_ok()
            {
                tracing::info!("caches synced");
                health.set_synced(true);
            }
            // Keep this branch pending: only the controller ends the term.
            future::pending::<()>().await
        }
    };

    let writes = node_writer.clone().run(
        client.clone(),
        objects.clone(),
        metrics.clone(),
        settings.write_concurrency,
        writer_channels.nodes,
    );
    let node_objects = async move {
        crate::node_objects::run(client, node_writer, nodes, objects, sets, metrics, wake).await;
        future::pending::<()>().await
    };

    tokio::select! {
        _ = controller_done => {}
        _ = synced => {}
        _ = node_objects => {}
        _ = writes => {}
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
    let key = SetKey::new(namespace, name);
    let span = tracing::info_span!("reconcile", namespace = %key.namespace, name = %key.name);
    let result = async {
        ctx.wait_for_stores().await?;
        let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
        finalizer(&api, FINALIZER, set.clone(), |event| async {
            match event {
                Finalizer::Apply(set) => apply(&set, &key, &ctx).await,
                Finalizer::Cleanup(set) => cleanup(&set, &key, &ctx).await,
            }
        })
        .await
        .map_err(|source| Error::Finalizer {
            set: key.clone(),
            source: Box::new(source),
        })
    }
    .instrument(span.clone())
    .await;
    if let Err(error) = &result {
        if let Some(reason) = error.set_reason() {
            show_failure(&ctx, &set, &key, reason, error)
                .instrument(span)
                .await;
        }
    }
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err());
    ctx.metrics.sets.set(ctx.sets.state().len() as i64);
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(&*set));
    }
    result
}

/// Shows a failure that stops the set on the set itself: the `ReconcileFailure` condition and a
/// Warning Event, both only when the set does not show this very failure already (a retried
/// failure is told once). Best effort: a failure to tell is logged, the error policy retries the
/// reconcile either way.
async fn show_failure(
    ctx: &Context,
    set: &StaticPodSet,
    key: &SetKey,
    reason: &str,
    error: &Error,
) {
    let message = error.to_string();
    let now = Time(Timestamp::now());
    // Every retry of the same failure ends here: when the cached set shows it already, there is
    // nothing to read or write.
    if conditions::with_failure(set.status.as_ref(), None, reason, &message, &now).is_none() {
        return;
    }
    let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    // The status as it is now: this reconcile may have written it before failing.
    let current = match api.get(&key.name).await {
        Ok(current) => current,
        Err(error) => {
            tracing::warn!(%error, "reading the status to show a failure");
            return;
        }
    };
    let Some(conditions) = conditions::with_failure(
        current.status.as_ref(),
        current.metadata.generation,
        reason,
        &message,
        &now,
    ) else {
        return;
    };
    let patch = json!({ "status": { "conditions": conditions } });
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => ctx.publish(set, true, reason, &message).await,
        Err(error) => tracing::warn!(%error, "writing the failure into the status"),
    }
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

/// Distributes a set that is not being deleted: acts on a rollback request, reads its
/// configuration, makes sure its bundle and revision exist, then carries out [`decide`]'s
/// decision (node writes, Events, status, history).
async fn apply(set: &StaticPodSet, key: &SetKey, ctx: &Context) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let mut rollback_failed = None;
    if let Some(value) = set.annotations().get(ANNOTATION_ROLLBACK_TO) {
        match rollback::rollback(set, key, value, ctx).await? {
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
            set: key.clone(),
            source,
        })?;
        config::resolve(namespace, &config_volumes, &fetched)
    };
    let mut evaluation = evaluate(set, namespace, name, &config);
    let config = config.ok().flatten();
    // Before the bundle, the revision and any node: a set may run only what a Pod in its
    // namespace could.
    let nodes = ctx.nodes.state();
    if let (Ok(rendered), Some(selector)) = (&evaluation.rendered, &evaluation.selector) {
        if let Some(node) = admission::representative_node(selector, &nodes) {
            match admission_check::verdict(ctx, key, rendered, node).await {
                Ok(Verdict::Admitted) => {}
                Ok(Verdict::Denied(message)) => {
                    evaluation.rendered = Err(Invalid {
                        reason: REASON_ADMISSION_DENIED,
                        problems: vec![message],
                    })
                }
                Err(error) => return Err(error),
            }
        }
    }
    // The bundle and then the revision object come first: agents read the revision as soon as
    // an entry names it, and the bundle as soon as they have the revision.
    if let (Ok(_), Some(resolved)) = (&evaluation.rendered, &config) {
        let bundle = config::bundle(namespace, name, resolved, &ctx.settings.config_namespace);
        if config::ensure_bundle(&ctx.client, &bundle)
            .await
            .map_err(|source| Error::BundleWrite {
                set: key.clone(),
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
    let history = ctx.history(set, key);
    let revision_number = match &evaluation.rendered {
        Ok(rendered) => Some(revision_writes::ensure(ctx, set, key, &history, rendered).await?),
        Err(_) => None,
    };
    // Read after the revision write, as the rollout numbers revisions by the history.
    let history = ctx.history(set, key);
    let objects = ctx.objects_by_name();
    let decision = decide(&Snapshot {
        set,
        key,
        evaluation: &evaluation,
        revision_number,
        rollback_failed: rollback_failed.as_ref(),
        nodes: &nodes,
        objects: &objects,
        history: &history,
        now: Timestamp::now(),
        resync: ctx.settings.resync,
    });

    if let Err(invalid) = &evaluation.rendered {
        tracing::info!(problems = ?invalid.problems, "spec is invalid; nothing is written to nodes");
    }
    for failure in &decision.newly_failed {
        let reason = failure_reason(failure.cause);
        tracing::warn!(node = %failure.node, revision = %failure.revision, reason, "{}", failure.message);
        ctx.publish(set, true, reason, &failure.message).await;
    }
    // Handed over, not sent: the writer says when to look again, or what failed before.
    let write_result = ctx.node_writer.submit(key, decision.writes);
    if decision.status_changed {
        let api: Api<StaticPodSet> = Api::namespaced(ctx.client.clone(), namespace);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": decision.status })),
        )
        .await
        .map_err(|source| Error::StatusPatch {
            set: key.clone(),
            source,
        })?;
        // Only after the status is written: a failed write retries, and must not repeat Events.
        for notice in &decision.notices {
            ctx.publish(set, notice.warning, &notice.reason, &notice.note)
                .await;
        }
    }
    let recheck = write_result.map_err(|e| *e)?;
    if let Some(plan) = &decision.history {
        let deleted = revision_writes::prune_history(ctx, key, &plan.prune).await;
        revision_writes::prune_config(ctx, key, &history, config.as_ref(), &deleted).await;
    }
    Ok(Action::requeue(
        recheck.map_or(decision.requeue, |r| r.min(decision.requeue)),
    ))
}

/// Withdraws a set being deleted from every node, waits until their agents let go of it (or
/// gave up on them), then deletes its bundles; the finalizer goes after that.
async fn cleanup(set: &StaticPodSet, key: &SetKey, ctx: &Context) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let objects = ctx.objects_by_name();
    // Removals still expected leave their entries in the cache: the decision below waits.
    ctx.node_writer
        .submit(key, planner::plan_removal(namespace, name, &objects))
        .map_err(|e| *e)?;
    let nodes: BTreeMap<String, Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let now = Timestamp::now();
    let deleted_at = set
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let decision = cleanup_decision(
        namespace,
        name,
        &objects,
        &nodes,
        deleted_at,
        now,
        ctx.settings.node_gone_timeout,
    );
    if !decision.done() {
        return Err(Error::WaitingForNodes {
            set: key.clone(),
            nodes: decision.waiting_list(),
        });
    }
    if let Some(note) = decision.skipped_note() {
        tracing::warn!(%note, "skipped nodes while deleting");
        ctx.publish(set, true, EVENT_SKIPPED_NODES, &note).await;
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
        set: key.clone(),
        bundle: config::bundle_selector(namespace, name),
        source,
    })?;
    ctx.metrics
        .bundle_writes
        .with_label_values(&["delete"])
        .inc_by(gone.len() as u64);
    ctx.sent_writes.forget_set(key);
    ctx.node_writer.forget_set(key);
    Ok(Action::await_change())
}
