//! What every reconcile gets: the tunables from the command line ([`Settings`]) and the one
//! [`Context`] per leadership term (client, Event recorder, metrics, caches, backoff). No global
//! state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodRevision, StaticPodSet};

use crate::admission::VerdictCache;
use crate::backoff::backoff_delay;
use crate::config;
use crate::metrics::Metrics;
use crate::node_writer::NodeWriter;
use crate::sent_writes::SentWrites;
use crate::Error;

/// How long a reconcile waits for the Node and NodeStaticPods caches before failing.
const STORE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Events' notes are limited to 1 KiB by the API.
const MAX_EVENT_NOTE: usize = 1024;

/// Tunables of the controller, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A deleted set stops waiting for a node whose agent has not synced for this long.
    pub node_gone_timeout: Duration,
    /// Node object writes in flight (the node writer's workers).
    pub write_concurrency: usize,
    /// Sets reconciled in parallel.
    pub reconcile_concurrency: u16,
    /// The controller's trailing debounce of reconcile requests (`--reconcile-debounce`).
    pub reconcile_debounce: Duration,
    /// Every set is reconciled at least this often, as a safety net for missed events.
    pub resync: Duration,
    /// Where the configuration bundles (Secrets) live.
    pub config_namespace: String,
}

/// The reflector stores a [`Context`] reads: sets, Nodes, node objects, revisions, Namespaces.
pub type Stores = (
    Store<StaticPodSet>,
    Store<Node>,
    Store<NodeStaticPods>,
    Store<StaticPodRevision>,
    Store<PartialObjectMeta<Namespace>>,
);

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
    /// Cache of Nodes, trimmed to what matters (see [`crate::node_match::trim_node`]).
    pub nodes: Store<Node>,
    /// Cache of NodeStaticPods.
    pub node_objects: Store<NodeStaticPods>,
    /// Cache of StaticPodRevisions, trimmed (see [`crate::revisions::trim_revision`]).
    pub revisions: Store<StaticPodRevision>,
    /// Tunables.
    pub settings: Settings,
    /// Consecutive failures per set, for the error policy's exponential backoff.
    failures: Mutex<HashMap<ObjectRef<StaticPodSet>, u32>>,
    /// Data of the ConfigMaps and Secrets sets name, while unchanged.
    pub config_cache: Arc<config::ConfigCache>,
    /// Cache of Namespaces, metadata only: their labels decide what admission allows.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Admission verdicts on sets' mirror pods, while their revision and namespace are unchanged.
    pub admission: VerdictCache,
    /// Node-object writes sent that the cache may not show yet (see [`crate::sent_writes`]).
    pub sent_writes: Arc<SentWrites>,
    /// The one writer of node objects' entries (see [`crate::node_writer`]).
    pub node_writer: Arc<NodeWriter>,
}

impl Context {
    /// Creates a context over the given stores.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Metrics,
        stores: Stores,
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
            namespaces: stores.4,
            admission: VerdictCache::default(),
            sent_writes: Arc::default(),
            node_writer: NodeWriter::new(Arc::default()).0,
        }
    }

    pub(crate) fn objects_by_name(&self) -> BTreeMap<String, Arc<NodeStaticPods>> {
        self.node_objects
            .state()
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect()
    }

    /// The set's StaticPodRevisions as the cache holds them (see [`crate::revisions::history_of`]).
    pub(crate) fn history(&self, set: &StaticPodSet, key: &SetKey) -> Vec<Arc<StaticPodRevision>> {
        crate::revisions::history_of(
            &self.revisions.state(),
            &key.namespace,
            &key.name,
            set.metadata.uid.as_deref(),
        )
    }

    pub(crate) async fn wait_for_stores(&self) -> Result<(), Error> {
        let ready = async {
            self.nodes.wait_until_ready().await.is_ok()
                && self.namespaces.wait_until_ready().await.is_ok()
                && self.node_objects.wait_until_ready().await.is_ok()
                && self.revisions.wait_until_ready().await.is_ok()
        };
        match tokio::time::timeout(STORE_SYNC_TIMEOUT, ready).await {
            Ok(true) => Ok(()),
            _ => Err(Error::StoresNotReady(STORE_SYNC_TIMEOUT)),
        }
    }

    /// Next retry delay for a failing set: 1s doubling up to 5 minutes.
    pub(crate) fn next_backoff(&self, set: &ObjectRef<StaticPodSet>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(set.clone()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    pub(crate) fn reset_backoff(&self, set: &ObjectRef<StaticPodSet>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(set);
    }

    pub(crate) async fn publish(
        &self,
        set: &StaticPodSet,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
