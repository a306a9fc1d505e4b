//! What a sync reads from the API server rather than watches: StaticPodRevisions (immutable, read
//! once while an entry names them) and configuration bundles (read once per config hash). Every
//! read has a deadline: an unreachable API server must not hold up the sync, which meanwhile
//! restores drifted files from what the agent has.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use staticpodset_api::config_files::bundle_name;
use staticpodset_api::{AssignedPod, SetKey, StaticPodRevision};
use tracing::{debug, warn};

use crate::config_files::{self, Files};
use crate::metrics::Metrics;
use crate::revisions::{ReadError, RevisionCache, RevisionKey};

/// How long one read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// StaticPodRevisions read in parallel (many at once only on start).
const REVISION_READS_IN_FLIGHT: usize = 8;

/// Reads the StaticPodRevisions `entries` name that the cache lacks (and whose retry is due), a few
/// at a time, each with a deadline. A failed read, or a revision that is not what its entries ask
/// for (refused, logged as a warning), leaves its entries unavailable (nothing written, nothing
/// removed) until a later read succeeds.
pub async fn read_revisions(
    client: &Client,
    metrics: &Metrics,
    entries: &[AssignedPod],
    cache: &mut RevisionCache,
) {
    let missing = cache.missing(entries, Instant::now());
    if missing.is_empty() {
        return;
    }
    let reads: Vec<(RevisionKey, Result<Option<StaticPodRevision>, String>)> =
        stream::iter(missing)
            .map(|key| {
                let api: Api<StaticPodRevision> = Api::namespaced(client.clone(), &key.0);
                async move {
                    let result = match tokio::time::timeout(READ_TIMEOUT, api.get_opt(&key.1)).await
                    {
                        Ok(Ok(revision)) => Ok(revision),
                        Ok(Err(e)) => Err(error_text(&e)),
                        Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
                    };
                    (key, result)
                }
            })
            .buffer_unordered(REVISION_READS_IN_FLIGHT)
            .collect()
            .await;
    for (key, result) in reads {
        metrics.revision_reads.inc();
        match cache.record(key.clone(), result, entries, Instant::now()) {
            Ok(()) => debug!(namespace = %key.0, name = %key.1, "read revision"),
            // Not the pod the operator rendered: someone else made this object. Reported as the
            // set's Error; read again with the backoff, so a repaired object is picked up.
            Err(ReadError::Refused(refusal)) => {
                metrics.revision_read_failures.inc();
                if refusal.is_digest_mismatch() {
                    metrics.revision_digest_mismatches.inc();
                }
                warn!(namespace = %key.0, name = %key.1, %refusal, "refused a StaticPodRevision");
            }
            // Reported (and logged once) as the set's Pending message; retried every few seconds.
            Err(ReadError::Unavailable(message)) => {
                metrics.revision_read_failures.inc();
                debug!(%message, "revision not available");
            }
        }
    }
}

/// Reads the bundle of set `set` at `hash` from `api` (the bundles' namespace `namespace`).
/// The error is a message for the set's report.
pub async fn read_bundle(
    api: &Api<Secret>,
    namespace: &str,
    set: &SetKey,
    hash: &str,
) -> Result<Files, String> {
    let name = bundle_name(&set.namespace, &set.name, hash);
    let bundle = tokio::time::timeout(READ_TIMEOUT, api.get(&name))
        .await
        .map_err(|_| format!("reading configuration bundle {namespace}/{name}: timed out"))?
        .map_err(|e| {
            format!(
                "reading configuration bundle {namespace}/{name}: {}",
                error_text(&e)
            )
        })?;
    config_files::files_of(&bundle, hash).map_err(|e| e.to_string())
}

/// An API error in words for a status message: the server's own message for API errors (their
/// Debug form repeats it several times).
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
