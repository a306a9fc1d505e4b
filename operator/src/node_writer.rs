//! The one writer of node objects' entries: sets decide, this writes, one node at a time.
//!
//! A set's reconcile does not write node objects itself; it hands its writes to the
//! [`NodeWriter`] and returns. The writer keeps, per node, what each set wants there
//! ([`Queue`]), and a bounded number of workers write one node each: every set's pending change
//! to that node goes out in one request ([`crate::node_writes::write_entries`]). A node is never
//! written by two workers at once; changes that arrive while it is written wait for the next
//! request. So nine sets created together cost one write per node, not nine, and a node that
//! joins a cluster of twenty sets gets its twenty entries in one write.
//!
//! Expectations ([`crate::sent_writes`]) are set when a write is handed over, so a reconcile that
//! runs before the write shows in the cache does not hand it over again. A failed write drops its
//! expectations, is held back from the set for a growing delay (1 s, 2 s, 4 s... as the error
//! policy's), and its set is reconciled at once so that the failure shows as the set's error,
//! condition and Event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use staticpodset_api::{NodeStaticPods, SetKey};
use tokio::sync::mpsc;

use crate::backoff::backoff_delay;
use crate::metrics::Metrics;
use crate::node_writes::{self, EntryChanges};
use crate::planner::NodeWrite;
use crate::sent_writes::SentWrites;
use crate::Error;

/// A write that failed, held back from its set until `retry_at`.
#[derive(Clone, Debug)]
struct Failed {
    attempts: u32,
    retry_at: Instant,
    removal: bool,
    error: Arc<kube::Error>,
}

/// What is waiting to be written, per node, and what failed. Pure bookkeeping, no I/O.
#[derive(Debug, Default)]
pub struct Queue {
    pending: HashMap<String, EntryChanges>,
    /// Nodes queued for a worker or being written: not queued again until done.
    busy: HashSet<String>,
    failed: HashMap<SetKey, BTreeMap<String, Failed>>,
}

/// What [`Queue::submit`] did with a set's writes.
#[derive(Debug, Default, PartialEq)]
pub struct Submitted {
    /// Nodes to queue for a worker (they were idle).
    pub wake: Vec<String>,
    /// Writes held back after a failure; the set should look again after this long.
    pub held_for: Option<Duration>,
    /// Writes handed over.
    pub accepted: Vec<NodeWrite>,
}

impl Queue {
    /// Takes over `set`'s writes at `now`, except those held back after a failure. Failures of
    /// the set on nodes it no longer writes to are forgotten: they are no longer its problem.
    pub fn submit(&mut self, set: &SetKey, writes: Vec<NodeWrite>, now: Instant) -> Submitted {
        let mut out = Submitted::default();
        if let Some(failed) = self.failed.get_mut(set) {
            let wanted: HashSet<&str> = writes.iter().map(|w| w.node.as_str()).collect();
            failed.retain(|node, _| wanted.contains(node.as_str()));
        }
        for write in writes {
            if let Some(f) = self.failed.get(set).and_then(|f| f.get(&write.node)) {
                if f.retry_at > now {
                    let left = f.retry_at - now;
                    out.held_for = Some(out.held_for.map_or(left, |h| h.min(left)));
                    continue;
                }
            }
            self.pending
                .entry(write.node.clone())
                .or_default()
                .insert(set.clone(), write.entry.clone());
            if self.busy.insert(write.node.clone()) {
                out.wake.push(write.node.clone());
            }
            out.accepted.push(write);
        }
        if self.failed.get(set).is_some_and(BTreeMap::is_empty) {
            self.failed.remove(set);
        }
        out
    }

    /// Everything pending for `node`, for a worker to write; the node stays busy.
    pub fn take(&mut self, node: &str) -> EntryChanges {
        self.pending.remove(node).unwrap_or_default()
    }

    /// Records the outcome of writing `changes` to `node` at `now`. Returns whether the node has
    /// more pending (queue it again) or is idle now.
    pub fn finish(
        &mut self,
        node: &str,
        changes: &EntryChanges,
        outcome: Result<(), Arc<kube::Error>>,
        now: Instant,
    ) -> bool {
        for (set, entry) in changes {
            match &outcome {
                Ok(()) => {
                    if let Some(failed) = self.failed.get_mut(set) {
                        failed.remove(node);
                        if failed.is_empty() {
                            self.failed.remove(set);
                        }
                    }
                }
                Err(error) => {
                    let failed = self.failed.entry(set.clone()).or_default();
                    let attempts = failed.get(node).map_or(0, |f| f.attempts) + 1;
                    failed.insert(
                        node.to_owned(),
                        Failed {
                            attempts,
                            retry_at: now + backoff_delay(attempts),
                            removal: entry.is_none(),
                            error: error.clone(),
                        },
                    );
                }
            }
        }
        let more = self.pending.get(node).is_some_and(|p| !p.is_empty());
        if !more {
            self.pending.remove(node);
            self.busy.remove(node);
        }
        more
    }

    /// The set's failed writes as one error (the first by node name), if any failed.
    pub fn failures(&self, set: &SetKey, total: usize) -> Option<Error> {
        let failed = self.failed.get(set)?;
        let (node, first) = failed.iter().next()?;
        Some(Error::NodeWrites {
            set: set.clone(),
            failed: failed.len(),
            total: total.max(failed.len()),
            first: Box::new(Error::NodeWrite {
                op: if first.removal { "removing" } else { "writing" },
                set: set.clone(),
                node: node.clone(),
                source: first.error.clone(),
            }),
        })
    }

    /// Forgets a set that is gone.
    pub fn forget_set(&mut self, set: &SetKey) {
        self.failed.remove(set);
    }
}

/// The writer: its queue, the expectations it sets, and the channels to its workers and back
/// to the sets' controller. One per leadership term.
pub struct NodeWriter {
    queue: Mutex<Queue>,
    sent_writes: Arc<SentWrites>,
    nodes_tx: mpsc::UnboundedSender<String>,
    retry_tx: mpsc::UnboundedSender<SetKey>,
}

/// The receiving ends of a [`NodeWriter`]'s channels: nodes for its workers ([`NodeWriter::run`]),
/// sets whose writes failed for the controller to reconcile.
pub struct Receivers {
    /// Nodes to write.
    pub nodes: mpsc::UnboundedReceiver<String>,
    /// Sets to reconcile because a write of theirs failed.
    pub retries: mpsc::UnboundedReceiver<SetKey>,
}

impl NodeWriter {
    /// A writer setting expectations in `sent_writes`.
    pub fn new(sent_writes: Arc<SentWrites>) -> (Arc<Self>, Receivers) {
        let (nodes_tx, nodes) = mpsc::unbounded_channel();
        let (retry_tx, retries) = mpsc::unbounded_channel();
        let writer = Arc::new(Self {
            queue: Mutex::default(),
            sent_writes,
            nodes_tx,
            retry_tx,
        });
        (writer, Receivers { nodes, retries })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands over a set's writes: those already sent and not yet shown in the cache are skipped
    /// (see [`crate::sent_writes`]), as are those held back after a failure. Returns when the set
    /// should look again (an expectation may lapse, a held write may be retried), and the set's
    /// earlier failed writes as its error.
    pub fn submit(
        &self,
        set: &SetKey,
        writes: Vec<NodeWrite>,
    ) -> Result<Option<Duration>, Box<Error>> {
        let now = Instant::now();
        let planned = writes.len();
        let mut recheck: Option<Duration> = None;
        let writes: Vec<NodeWrite> = writes
            .into_iter()
            .filter(|w| {
                match self
                    .sent_writes
                    .expected(set, &w.node, w.entry.as_ref(), now)
                {
                    Some(left) => {
                        recheck = Some(recheck.map_or(left, |r| r.min(left)));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        if planned > writes.len() {
            tracing::debug!(
                repeats = planned - writes.len(),
                "not repeating writes the cache does not show yet"
            );
        }
        let (submitted, failures) = {
            let mut queue = self.lock();
            let submitted = queue.submit(set, writes, now);
            // Expected before a worker can send them: the watch may deliver a write before
            // its response.
            for w in &submitted.accepted {
                self.sent_writes.expect(set, &w.node, w.entry.as_ref(), now);
            }
            (submitted, queue.failures(set, planned))
        };
        for w in submitted.accepted.iter().filter(|w| w.repair) {
            tracing::info!(node = %w.node, "replacing the set's entry, edited outside the set");
        }
        if !submitted.accepted.is_empty() {
            tracing::debug!(writes = submitted.accepted.len(), "handed writes over");
        }
        for node in submitted.wake {
            // The workers outlive every reconcile; a closed channel means the term is ending.
            let _ = self.nodes_tx.send(node);
        }
        if let Some(held) = submitted.held_for {
            recheck = Some(recheck.map_or(held, |r| r.min(held)));
        }
        match failures {
            Some(error) => Err(Box::new(error)),
            None => Ok(recheck),
        }
    }

    /// Forgets a set that is gone.
    pub fn forget_set(&self, set: &SetKey) {
        self.lock().forget_set(set);
    }

    /// Writes nodes as they are queued, `concurrency` at a time, until the queue's sender is
    /// dropped with the writer.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        objects: Store<NodeStaticPods>,
        metrics: Metrics,
        concurrency: usize,
        nodes: mpsc::UnboundedReceiver<String>,
    ) {
        let api: Api<NodeStaticPods> = Api::all(client);
        stream::unfold(
            nodes,
            |mut rx| async move { rx.recv().await.map(|n| (n, rx)) },
        )
        .map(|node| self.write_node(&api, &objects, &metrics, node))
        .buffer_unordered(concurrency.max(1))
        .for_each(|()| async {})
        .await;
    }

    #[tracing::instrument(skip_all, fields(%node))]
    async fn write_node(
        &self,
        api: &Api<NodeStaticPods>,
        objects: &Store<NodeStaticPods>,
        metrics: &Metrics,
        node: String,
    ) {
        let changes = self.lock().take(&node);
        let outcome = if changes.is_empty() {
            Ok(())
        } else {
            let cached = objects.get(&ObjectRef::new(&node));
            node_writes::write_entries(api, &node, &changes, cached).await
        };
        match &outcome {
            Ok(()) => {
                metrics.node_object_requests.inc();
                for entry in changes.values() {
                    let op = if entry.is_some() { "apply" } else { "remove" };
                    metrics.node_object_writes.with_label_values(&[op]).inc();
                }
            }
            Err(error) => {
                tracing::warn!(%error, sets = changes.len(), "writing node object");
                for set in changes.keys() {
                    self.sent_writes.sending_failed(set, &node);
                }
            }
        }
        let failed = outcome.is_err();
        let more = self
            .lock()
            .finish(&node, &changes, outcome.map_err(Arc::new), Instant::now());
        if failed {
            for set in changes.keys() {
                let _ = self.retry_tx.send(set.clone());
            }
        }
        if more {
            let _ = self.nodes_tx.send(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::entry;

    fn key(name: &str) -> SetKey {
        SetKey::new("ns", name)
    }

    fn put(node: &str, set: &str) -> NodeWrite {
        NodeWrite {
            node: node.into(),
            entry: Some(entry(set, "1")),
            repair: false,
        }
    }

    fn refused() -> Arc<kube::Error> {
        Arc::new(kube::Error::Api(
            kube::core::Status::failure("denied", "Forbidden")
                .with_code(403)
                .boxed(),
        ))
    }

    #[test]
    fn writes_of_many_sets_to_a_node_wait_together() {
        let mut q = Queue::default();
        let t = Instant::now();
        let a = q.submit(&key("a"), vec![put("n1", "a"), put("n2", "a")], t);
        assert_eq!(a.wake, ["n1", "n2"]);
        // n1 is queued already: b's write joins a's, nothing more to queue.
        let b = q.submit(&key("b"), vec![put("n1", "b")], t);
        assert!(b.wake.is_empty());
        assert_eq!(b.accepted.len(), 1);
        let n1 = q.take("n1");
        assert_eq!(n1.keys().cloned().collect::<Vec<_>>(), [key("a"), key("b")]);
        // While n1 is written, c's write waits for the next request.
        let c = q.submit(&key("c"), vec![put("n1", "c")], t);
        assert!(c.wake.is_empty());
        assert!(q.finish("n1", &n1, Ok(()), t), "c is pending: write again");
        assert_eq!(q.take("n1").len(), 1);
        assert!(!q.finish("n1", &EntryChanges::new(), Ok(()), t));
        // Idle again: the next write wakes it.
        assert_eq!(q.submit(&key("d"), vec![put("n1", "d")], t).wake, ["n1"]);
    }

    #[test]
    fn a_later_change_of_the_same_set_replaces_its_pending_one() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.submit(&key("a"), vec![put("n1", "a")], t);
        let removal = NodeWrite {
            node: "n1".into(),
            entry: None,
            repair: false,
        };
        q.submit(&key("a"), vec![removal], t);
        assert_eq!(q.take("n1"), EntryChanges::from([(key("a"), None)]));
    }

    #[test]
    fn a_failed_write_is_held_back_reported_and_forgotten_when_done() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.submit(&key("a"), vec![put("n1", "a"), put("n2", "a")], t);
        let n1 = q.take("n1");
        q.finish("n1", &n1, Err(refused()), t);
        let n2 = q.take("n2");
        q.finish("n2", &n2, Ok(()), t);
        let error = q.failures(&key("a"), 2).expect("a failure");
        assert!(error
            .to_string()
            .starts_with("1 of 2 node writes for set ns/a failed"));
        assert!(error.to_string().contains("NodeStaticPods n1"), "{error}");
        // Held back for the first backoff step, then handed over again.
        let held = q.submit(
            &key("a"),
            vec![put("n1", "a")],
            t + Duration::from_millis(500),
        );
        assert!(held.accepted.is_empty());
        assert_eq!(held.held_for, Some(Duration::from_millis(500)));
        let again = q.submit(&key("a"), vec![put("n1", "a")], t + Duration::from_secs(1));
        assert_eq!(again.accepted.len(), 1);
        let n1 = q.take("n1");
        q.finish("n1", &n1, Ok(()), t + Duration::from_secs(2));
        assert!(q.failures(&key("a"), 1).is_none());
    }

    #[test]
    fn failures_back_off_and_go_when_the_set_no_longer_writes_there() {
        let mut q = Queue::default();
        let t = Instant::now();
        for attempt in 0..3u64 {
            let now = t + Duration::from_secs(100 * attempt);
            q.submit(&key("a"), vec![put("n1", "a")], now);
            let n1 = q.take("n1");
            q.finish("n1", &n1, Err(refused()), now);
        }
        let held = q.submit(
            &key("a"),
            vec![put("n1", "a")],
            t + Duration::from_secs(200),
        );
        assert_eq!(held.held_for, Some(backoff_delay(3)));
        // The set wants nothing of n1 any more: the failure is no longer its problem.
        q.submit(&key("a"), vec![], t + Duration::from_secs(201));
        assert!(q.failures(&key("a"), 0).is_none());
    }
}
