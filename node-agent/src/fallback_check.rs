//! Node-local fallback at the edge: asks the container runtime how each due set's new revision
//! runs and, when it does not run healthy, whether the API server answers; the decisions are
//! [`crate::fallback`]'s.

use std::time::{Duration, SystemTime};

use kube::Client;
use tracing::{debug, warn};

use crate::cri::CriRuntime;
use crate::fallback::{self, Due, FallbackMemory};
use crate::metrics::Metrics;

/// How long each question to the container runtime or to the API server may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Judges every set of `due` and puts the fallbacks decided in force in `memory`. A set whose
/// revision the runtime cannot be asked about is not judged this time: the agent never falls back
/// blind.
pub async fn judge(
    client: &Client,
    runtime: &CriRuntime,
    metrics: &Metrics,
    due: &[Due],
    memory: &mut FallbackMemory,
    now: SystemTime,
) {
    // Asked once per sync, and only when a revision is unhealthy.
    let mut api_reachable: Option<bool> = None;
    for d in due {
        let health = match runtime
            .pod(&d.set.namespace, &d.pod_name, CALL_TIMEOUT)
            .await
        {
            Ok(sandboxes) => {
                fallback::health(&d.revision, &d.containers, &sandboxes, SystemTime::now())
            }
            Err(e) => {
                warn!(set = %d.set, error = %e, "cannot ask the container runtime about the revision; no fallback judged");
                continue;
            }
        };
        if health.is_err() && api_reachable.is_none() {
            api_reachable = Some(api_answers(client).await);
        }
        let reachable = api_reachable.unwrap_or(true);
        if let Some(f) = fallback::decide(d, &health, reachable, memory, now) {
            metrics.fallbacks.inc();
            warn!(set = %d.set, from = %f.from, to = %f.to, message = %f.message,
                  "node-local fallback: revision given up, the last Ready one put back");
        } else if let Err(why) = &health {
            debug!(set = %d.set, revision = %d.revision, %why,
                   "revision not healthy yet; the API server answers, so the operator judges it");
        }
    }
}

/// Whether the API server answers a request within [`CALL_TIMEOUT`].
async fn api_answers(client: &Client) -> bool {
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, client.apiserver_version()).await,
        Ok(Ok(_))
    )
}
