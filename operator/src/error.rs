//! Errors of the operator, each naming the object and the operation that failed.

use std::time::Duration;

use staticpodset_api::SetKey;

use crate::conditions::{
    REASON_ADMISSION_CHECK_FAILED, REASON_BUNDLE_WRITE_FAILED, REASON_CONFIG_READ_FAILED,
    REASON_FINALIZER_WRITE_FAILED, REASON_NODE_WRITE_FAILED, REASON_REVISION_HISTORY_CONFLICT,
    REASON_REVISION_NAME_TAKEN, REASON_REVISION_WRITE_FAILED, REASON_ROLLBACK_WRITE_FAILED,
};

/// Why one reconcile of a StaticPodSet did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write into one node object failed.
    #[error("{op} the entry of set {set} in NodeStaticPods {node}: {source}")]
    NodeWrite {
        /// "writing" or "removing".
        op: &'static str,
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The node object (= node) name.
        node: String,
        /// The API error (shared: one request carries several sets' entries).
        #[source]
        source: std::sync::Arc<kube::Error>,
    },

    /// Some of a set's node writes failed; the others went through.
    #[error("{failed} of {total} node writes for set {set} failed, the first: {first}")]
    NodeWrites {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// How many failed.
        failed: usize,
        /// How many were attempted.
        total: usize,
        /// The first failure.
        #[source]
        first: Box<Error>,
    },

    /// The status write failed.
    #[error("patching the status of StaticPodSet {set}: {source}")]
    StatusPatch {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// The caches of Nodes and NodeStaticPods did not fill in time; reconciling against empty
    /// caches would remove every entry and report zero nodes.
    #[error("the Node and NodeStaticPods caches are not synced after {0:?}")]
    StoresNotReady(Duration),

    /// A deleted set still has its pod on live nodes; not a failure, the finalizer waits.
    #[error("set {set} is being deleted; waiting for the agents of {nodes} to remove its pod")]
    WaitingForNodes {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The nodes waited for, listed for a human.
        nodes: String,
    },

    /// Adding or removing the finalizer failed, or the wrapped reconcile did.
    #[error("StaticPodSet {set}: {source}")]
    Finalizer {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// What the finalizer helper reported.
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },

    /// The object from the watch lacks a field every stored object has.
    #[error("StaticPodSet {0} has no namespace")]
    MissingNamespace(String),

    /// Reading, creating, renumbering or deleting a StaticPodRevision failed.
    #[error("{op} StaticPodRevision {namespace}/{revision} of set {set}: {source}")]
    RevisionWrite {
        /// "listing", "creating", "renumbering", "deleting".
        op: &'static str,
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The revision's namespace.
        namespace: String,
        /// The revision object's name (or the set's label selector when listing).
        revision: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// The history cannot take the rendered pod (see the problem).
    #[error("set {set}: {problem}")]
    History {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// What is wrong.
        problem: crate::revisions::HistoryProblem,
    },

    /// The StaticPodRevision for the rendered pod exists but belongs to another set of the same
    /// name (deleted, waiting for the garbage collector).
    #[error(
        "set {set}: StaticPodRevision {revision} exists but belongs to another StaticPodSet (an \
         earlier one of the same name?); retrying until the garbage collector removes it"
    )]
    RevisionTaken {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The revision object's name.
        revision: String,
    },

    /// Reading a ConfigMap or Secret that a set's volumes name failed (not "not found": that is
    /// a condition on the set).
    #[error("reading the ConfigMaps and Secrets of set {set}: {source}")]
    ConfigRead {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Creating, listing or deleting a configuration bundle Secret failed.
    #[error("configuration bundle {bundle} of set {set}: {source}")]
    BundleWrite {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The bundle's name (or the label selector of a set's bundles).
        bundle: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// Restoring a revision's template into the set failed.
    /// The admission dry run of a set's mirror pod gave no verdict.
    #[error(
        "asking the admission chain about the mirror pod of set {set} (a server-side dry run; \
         nodes keep what they run until it answers): {source}"
    )]
    AdmissionCheck {
        /// The set.
        set: SetKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    #[error("rolling back set {set}: {source}")]
    Rollback {
        /// `<namespace>/<name>` of the set.
        set: SetKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The innermost error, looking through the finalizer wrapper.
    pub fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer { source, .. } => match source.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Whether this is the finalizer waiting for nodes rather than a failure.
    pub fn is_waiting(&self) -> bool {
        matches!(self.inner(), Error::WaitingForNodes { .. })
    }

    /// The reason the set shows (condition `ReconcileFailure`, Warning Event) when this error
    /// stops it from progressing, or `None` when it is not the set's to show: waiting for nodes,
    /// caches not synced yet, the status write itself, the API server unreachable or busy (429,
    /// 503, 504), or a write that lost a race (409, retried at once). Everything else the API
    /// server refused — an object too large for etcd, a name or field it rejects, RBAC — and
    /// every history conflict is shown, with the server's message.
    pub fn set_reason(&self) -> Option<&'static str> {
        use kube::runtime::finalizer::Error as F;
        let shown = |e: &kube::Error| {
            api_error(e).is_some_and(|s| !matches!(s.code, 409 | 429 | 503 | 504))
        };
        match self.inner() {
            Error::NodeWrite { source, .. } => shown(source).then_some(REASON_NODE_WRITE_FAILED),
            Error::NodeWrites { first, .. } => first.set_reason(),
            Error::RevisionWrite { source, .. } => {
                shown(source).then_some(REASON_REVISION_WRITE_FAILED)
            }
            Error::History { .. } => Some(REASON_REVISION_HISTORY_CONFLICT),
            Error::RevisionTaken { .. } => Some(REASON_REVISION_NAME_TAKEN),
            Error::Rollback { source, .. } => shown(source).then_some(REASON_ROLLBACK_WRITE_FAILED),
            Error::ConfigRead { source, .. } => shown(source).then_some(REASON_CONFIG_READ_FAILED),
            Error::BundleWrite { source, .. } => {
                shown(source).then_some(REASON_BUNDLE_WRITE_FAILED)
            }
            Error::AdmissionCheck { source, .. } => {
                shown(source).then_some(REASON_ADMISSION_CHECK_FAILED)
            }
            Error::Finalizer { source, .. } => match source.as_ref() {
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => {
                    shown(e).then_some(REASON_FINALIZER_WRITE_FAILED)
                }
                _ => None,
            },
            Error::StatusPatch { .. }
            | Error::StoresNotReady(_)
            | Error::WaitingForNodes { .. }
            | Error::MissingNamespace(_) => None,
        }
    }

    /// A short, bounded label for the errors metric.
    pub fn kind(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self.inner() {
            Error::NodeWrite { .. } | Error::NodeWrites { .. } => "node_write",
            Error::StatusPatch { .. } => "status_patch",
            Error::StoresNotReady(_) => "stores_not_ready",
            Error::WaitingForNodes { .. } => "waiting_for_nodes",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::RevisionWrite { .. } => "revision_write",
            Error::History { .. } | Error::RevisionTaken { .. } => "history",
            Error::Rollback { .. } => "rollback",
            Error::ConfigRead { .. } => "config_read",
            Error::BundleWrite { .. } => "bundle_write",
            Error::AdmissionCheck { .. } => "admission_check",
            Error::Finalizer { source, .. } => match source.as_ref() {
                F::AddFinalizer(_) => "add_finalizer",
                F::RemoveFinalizer(_) => "remove_finalizer",
                _ => "finalizer",
            },
        }
    }
}

/// The API server's Status, when the error is one.
pub(crate) fn api_error(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// 409 Conflict: a precondition or resourceVersion did not hold (someone wrote in between).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.is_conflict())
}

/// 404 Not Found.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.is_not_found())
}

/// 422 Invalid: validation refused the object, or a JSON patch's `test` failed.
pub(crate) fn is_invalid(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.is_invalid() || s.code == 422)
}

/// 409 AlreadyExists.
pub(crate) fn is_already_exists(e: &kube::Error) -> bool {
    api_error(e).is_some_and(|s| s.is_already_exists())
}

/// The API server's own message for an error (what users should read), or the error itself.
pub(crate) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    fn api(code: u16) -> kube::Error {
        let mut status = kube::core::Status::failure("the server says no", "Reason");
        status.code = code;
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn refusals_are_shown_and_races_are_not() {
        let key = || SetKey::new("ns", "a");
        let revision = |code| Error::RevisionWrite {
            op: "creating",
            set: key(),
            namespace: "ns".into(),
            revision: "a-1".into(),
            source: api(code),
        };
        for code in [400, 403, 413, 422, 500] {
            assert_eq!(
                revision(code).set_reason(),
                Some(REASON_REVISION_WRITE_FAILED),
                "{code}"
            );
        }
        for code in [409, 429, 503, 504] {
            assert_eq!(revision(code).set_reason(), None, "{code}");
        }
        let unreachable = Error::ConfigRead {
            set: key(),
            source: kube::Error::LinesCodecMaxLineLengthExceeded,
        };
        assert_eq!(unreachable.set_reason(), None, "not an API server answer");
        let wrapped = Error::Finalizer {
            set: key(),
            source: Box::new(F::ApplyFailed(Error::BundleWrite {
                set: key(),
                bundle: "b".into(),
                source: api(422),
            })),
        };
        assert_eq!(wrapped.set_reason(), Some(REASON_BUNDLE_WRITE_FAILED));
        let writes = Error::NodeWrites {
            set: key(),
            failed: 1,
            total: 2,
            first: Box::new(Error::NodeWrite {
                op: "writing",
                set: key(),
                node: "n".into(),
                source: std::sync::Arc::new(api(403)),
            }),
        };
        assert_eq!(writes.set_reason(), Some(REASON_NODE_WRITE_FAILED));
        assert_eq!(
            Error::StatusPatch {
                set: key(),
                source: api(422)
            }
            .set_reason(),
            None,
            "the status cannot carry its own failure"
        );
        assert_eq!(
            Error::RevisionTaken {
                set: key(),
                revision: "a-1".into()
            }
            .set_reason(),
            Some(REASON_REVISION_NAME_TAKEN)
        );
    }

    #[test]
    fn waiting_is_seen_through_the_finalizer_wrapper() {
        let waiting = Error::Finalizer {
            set: SetKey::new("ns", "a"),
            source: Box::new(F::CleanupFailed(Error::WaitingForNodes {
                set: SetKey::new("ns", "a"),
                nodes: "n1".into(),
            })),
        };
        assert!(waiting.is_waiting());
        assert_eq!(waiting.kind(), "waiting_for_nodes");
        let other = Error::Finalizer {
            set: SetKey::new("ns", "a"),
            source: Box::new(F::UnnamedObject),
        };
        assert!(!other.is_waiting());
        assert_eq!(other.kind(), "finalizer");
        assert_eq!(
            Error::StoresNotReady(Duration::from_secs(1)).kind(),
            "stores_not_ready"
        );
    }
}
