//! The node-object writes the operator sent that its cache does not show yet: expectations.
//!
//! A set's reconcile plans its writes from the NodeStaticPods cache. Under load the watch lags
//! behind the writes, and the next reconcile (a node's report, or another set's write to the same
//! node, arrives meanwhile) would plan the same writes again from copies that predate them: at
//! 1,000 nodes a quarter of all entry applies were such repeats, each a write of a whole node
//! object. So, as Kubernetes' own controllers do with their expectations, every write is expected
//! when it is handed to the node writer (before it is sent), and the expectation is met when the watch delivers a copy of the
//! node object that shows the write (the entry as written, or no entry for a removal). While a
//! write is expected, the same write is not sent again.
//!
//! An expectation that is never met (the write landed, then someone undid it while the watch was
//! re-listing, so no copy with it ever arrived) lapses after [`EXPECTATION_TTL`]; the reconcile that
//! skipped a write is requeued for then, so nothing waits for an event that will not come. Every
//! other undoing of a write arrives after the write itself, which met its expectation: it is
//! repaired at once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use staticpodset_api::{AssignedPod, NodeStaticPods, SetKey};

use crate::node_writes::timeless;

/// How long a sent write is expected to show in the cache before it may be sent again. Longer
/// than the watch lags under load (tens of seconds at 1,000 nodes on a saturated API server).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// One expected write: the entry's fingerprint (`None` for a removal) and when it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    entry: Option<u64>,
    sent: Instant,
}

/// Expected writes, per node and set. One per leadership term.
#[derive(Debug, Default)]
pub struct SentWrites(Mutex<HashMap<String, HashMap<SetKey, Expected>>>);

/// A fingerprint of an entry (or of its removal), so memory stays small with 100,000 entries.
/// `assignedTime` is left out: a reconcile that plans from a copy without the entry hands the
/// same revision over again with a later time, and that is the very repeat to avoid.
fn fingerprint(entry: Option<&AssignedPod>) -> Option<u64> {
    entry.map(|e| {
        let mut h = DefaultHasher::new();
        serde_json::to_string(&timeless(e))
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    })
}

impl SentWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<SetKey, Expected>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// If the write of `entry` (`None`: the removal) for `set` on `node` is still expected at
    /// `now`, how long until it lapses; `None` when it is not expected (send it). A lapsed or
    /// different expectation is dropped.
    pub fn expected(
        &self,
        set: &SetKey,
        node: &str,
        entry: Option<&AssignedPod>,
        now: Instant,
    ) -> Option<Duration> {
        let mut all = self.lock();
        let per_node = all.get_mut(node)?;
        let expected = per_node.get(set)?;
        let left = EXPECTATION_TTL.checked_sub(now.saturating_duration_since(expected.sent));
        match left {
            Some(left) if !left.is_zero() && expected.entry == fingerprint(entry) => Some(left),
            _ => {
                per_node.remove(set);
                if per_node.is_empty() {
                    all.remove(node);
                }
                None
            }
        }
    }

    /// Expects a write about to be sent at `now`.
    pub fn expect(&self, set: &SetKey, node: &str, entry: Option<&AssignedPod>, now: Instant) {
        self.lock().entry(node.to_owned()).or_default().insert(
            set.clone(),
            Expected {
                entry: fingerprint(entry),
                sent: now,
            },
        );
    }

    /// Drops the expectation of a write that failed: nothing of it will show.
    pub fn sending_failed(&self, set: &SetKey, node: &str) {
        let mut all = self.lock();
        if let Some(per_node) = all.get_mut(node) {
            per_node.remove(set);
            if per_node.is_empty() {
                all.remove(node);
            }
        }
    }

    /// Meets the expectations a copy of a node object, as the watch delivered it, shows; drops
    /// the node's lapsed ones.
    pub fn observe(&self, object: &NodeStaticPods, now: Instant) {
        let node = object.name_any();
        let mut all = self.lock();
        let Some(per_node) = all.get_mut(&node) else {
            return;
        };
        per_node.retain(|set, expected| {
            let shown = object
                .spec
                .pods
                .iter()
                .find(|p| p.set_namespace == set.namespace && p.set_name == set.name);
            let met = fingerprint(shown) == expected.entry;
            let lapsed = now.saturating_duration_since(expected.sent) >= EXPECTATION_TTL;
            !met && !lapsed
        });
        if per_node.is_empty() {
            all.remove(&node);
        }
    }

    /// A node object was deleted: whatever was expected of it, the cache is the truth again.
    pub fn observe_deleted(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Forgets a set's expectations (it is gone).
    pub fn forget_set(&self, set: &SetKey) {
        let mut all = self.lock();
        all.retain(|_, per_node| {
            per_node.remove(set);
            !per_node.is_empty()
        });
    }

    /// How many writes are expected.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use staticpodset_api::NodeStaticPodsSpec;

    fn entry(revision: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: "s".into(),
            revision: revision.into(),
            ..Default::default()
        }
    }

    fn object(node: &str, pods: Vec<AssignedPod>) -> NodeStaticPods {
        NodeStaticPods {
            metadata: ObjectMeta {
                name: Some(node.into()),
                ..Default::default()
            },
            spec: NodeStaticPodsSpec { pods },
            status: None,
        }
    }

    #[test]
    fn a_write_is_not_repeated_until_the_watch_shows_it() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        let e = entry("r1");
        let t0 = Instant::now();
        assert_eq!(sent.expected(&set, "n1", Some(&e), t0), None);
        sent.expect(&set, "n1", Some(&e), t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            sent.expected(&set, "n1", Some(&e), t1),
            Some(EXPECTATION_TTL - Duration::from_secs(5))
        );
        // Another node, another set, another entry: not expected.
        assert_eq!(sent.expected(&set, "n2", Some(&e), t1), None);
        assert_eq!(
            sent.expected(&SetKey::new("ns", "t"), "n1", Some(&e), t1),
            None
        );
        sent.expect(&set, "n1", Some(&e), t0);
        // The same revision handed over again from a stale copy, at a later time: a repeat.
        let later = AssignedPod {
            assigned_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
            )),
            ..e.clone()
        };
        assert!(sent.expected(&set, "n1", Some(&later), t1).is_some());
        // Copies that do not show it yet (another set's write moved the object on) leave it
        // expected; the copy that shows it meets it.
        let other = AssignedPod {
            set_name: "t".into(),
            ..entry("r9")
        };
        sent.observe(&object("n1", vec![other.clone()]), t1);
        assert!(sent.expected(&set, "n1", Some(&e), t1).is_some());
        sent.observe(&object("n1", vec![other, e.clone()]), t1);
        assert!(sent.is_empty());
        // Undone after that: planned again and sent.
        assert_eq!(sent.expected(&set, "n1", Some(&e), t1), None);
    }

    #[test]
    fn a_different_write_or_a_lapsed_one_is_sent() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        let t0 = Instant::now();
        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        assert_eq!(sent.expected(&set, "n1", Some(&entry("r2")), t0), None);
        assert!(
            sent.is_empty(),
            "a different write replaces the expectation"
        );
        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        assert_eq!(
            sent.expected(&set, "n1", Some(&entry("r1")), t0 + EXPECTATION_TTL),
            None
        );
        assert!(sent.is_empty());
        // Lapsed ones also go when their node is next seen.
        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        sent.observe(&object("n1", vec![]), t0 + EXPECTATION_TTL);
        assert!(sent.is_empty());
    }

    #[test]
    fn removals_failures_deletions_and_sets_going() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        let t0 = Instant::now();
        sent.expect(&set, "n1", None, t0);
        assert!(sent.expected(&set, "n1", None, t0).is_some());
        sent.observe(&object("n1", vec![entry("r1")]), t0);
        assert!(sent.expected(&set, "n1", None, t0).is_some());
        sent.observe(&object("n1", vec![]), t0);
        assert!(sent.is_empty(), "a copy without the entry meets a removal");

        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        sent.sending_failed(&set, "n1");
        assert!(sent.is_empty());

        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        sent.observe_deleted("n1");
        assert!(sent.is_empty());

        sent.expect(&set, "n1", Some(&entry("r1")), t0);
        sent.expect(&SetKey::new("ns", "t"), "n2", None, t0);
        sent.forget_set(&set);
        assert_eq!(sent.len(), 1);
    }
}
