//! The node-object writes the operator sent that its cache may not show yet.
//!
//! A set's reconcile plans its writes from the NodeStaticPods cache. Under load the watch lags
//! behind the writes, and the next reconcile (a node's report arrives meanwhile) would plan the
//! same writes again from the stale copies: at 1,000 nodes a quarter of all entry applies were
//! such repeats, each a server-side apply of a whole node object. So every successful write is
//! remembered with the resourceVersion of the copy it was planned from; while the cache still
//! holds exactly that copy, the same write is not sent again. Once the cache moves on (our write
//! arrived, or anyone else's), it is the truth again: a write someone undid is repaired.
//!
//! Resource versions are only compared for equality, as the API asks of clients.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use staticpodset_api::{AssignedPod, SetKey};

/// What was sent for one (set, node): the entry's fingerprint (`None` for a removal) and the
/// resourceVersion of the node object the write was planned from (`None`: no object yet).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    entry: Option<u64>,
    planned_from: Option<String>,
}

/// Remembered writes, per (set, node). One per leadership term.
#[derive(Debug, Default)]
pub struct SentWrites(Mutex<HashMap<(SetKey, String), Sent>>);

/// A fingerprint of an entry (or of its removal), so memory stays small with 100,000 entries.
/// `assignedTime` is left out: a reconcile that plans from a copy without the entry hands the
/// same revision over again with a later time, and that is the very repeat to avoid.
fn fingerprint(entry: Option<&AssignedPod>) -> Option<u64> {
    entry.map(|e| {
        let timeless = AssignedPod {
            assigned_time: None,
            ..e.clone()
        };
        let mut h = DefaultHasher::new();
        serde_json::to_string(&timeless)
            .unwrap_or_default()
            .hash(&mut h);
        h.finish()
    })
}

impl SentWrites {
    /// Whether the write of `entry` (`None`: the removal) for `set` on `node` was already sent
    /// while the cache still shows the copy it was planned from, `current`. A record the cache has
    /// moved past is forgotten.
    pub fn already_sent(
        &self,
        set: &SetKey,
        node: &str,
        entry: Option<&AssignedPod>,
        current: Option<&str>,
    ) -> bool {
        let mut sent = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (set.clone(), node.to_owned());
        match sent.get(&key) {
            Some(s) if s.planned_from.as_deref() == current => s.entry == fingerprint(entry),
            Some(_) => {
                sent.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers a successful write planned from the copy at resourceVersion `planned_from`.
    pub fn record(
        &self,
        set: &SetKey,
        node: &str,
        entry: Option<&AssignedPod>,
        planned_from: Option<&str>,
    ) {
        let mut sent = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sent.insert(
            (set.clone(), node.to_owned()),
            Sent {
                entry: fingerprint(entry),
                planned_from: planned_from.map(str::to_owned),
            },
        );
    }

    /// Forgets a set's writes (it is gone).
    pub fn forget_set(&self, set: &SetKey) {
        let mut sent = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sent.retain(|(s, _), _| s != set);
    }

    /// How many writes are remembered.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: "s".into(),
            revision: revision.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_write_is_not_repeated_while_the_cache_shows_the_copy_it_was_planned_from() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        let e = entry("r1");
        assert!(!sent.already_sent(&set, "n1", Some(&e), Some("10")));
        sent.record(&set, "n1", Some(&e), Some("10"));
        assert!(sent.already_sent(&set, "n1", Some(&e), Some("10")));
        // Another node, another set, another entry: not sent.
        assert!(!sent.already_sent(&set, "n2", Some(&e), Some("10")));
        assert!(!sent.already_sent(&SetKey::new("ns", "t"), "n1", Some(&e), Some("10")));
        assert!(!sent.already_sent(&set, "n1", Some(&entry("r2")), Some("10")));
        assert!(!sent.already_sent(&set, "n1", None, Some("10")));
        // The same revision handed over again from the same stale copy, at a later time: a repeat.
        let later = AssignedPod {
            assigned_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
            )),
            ..e.clone()
        };
        assert!(sent.already_sent(&set, "n1", Some(&later), Some("10")));
    }

    #[test]
    fn the_cache_moving_on_makes_it_the_truth_again() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        let e = entry("r1");
        sent.record(&set, "n1", Some(&e), Some("10"));
        // The cache now shows a newer copy that still lacks the entry (someone removed it):
        // the write is planned again, and sent.
        assert!(!sent.already_sent(&set, "n1", Some(&e), Some("11")));
        assert!(
            sent.is_empty(),
            "the record the cache moved past is forgotten"
        );
    }

    #[test]
    fn creation_and_removal_are_remembered_too() {
        let sent = SentWrites::default();
        let set = SetKey::new("ns", "s");
        // The apply that creates the node object: planned from no object.
        sent.record(&set, "n1", Some(&entry("r1")), None);
        assert!(sent.already_sent(&set, "n1", Some(&entry("r1")), None));
        sent.record(&set, "n2", None, Some("7"));
        assert!(sent.already_sent(&set, "n2", None, Some("7")));
        sent.forget_set(&set);
        assert!(sent.is_empty());
    }
}
