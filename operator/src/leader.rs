//! Leader election on a `coordination.k8s.io/v1` Lease, so only one replica writes.
//!
//! The lease itself is held by `kube-lease-manager` (the maintained crate built on kube 5): it
//! acquires, renews `grace` seconds before expiry, and releases on shutdown. What it does not do
//! is step down when renewing fails: while the API server is unreachable it keeps reporting
//! "leader" past the lease's expiry, when another replica may already have taken over. So this
//! module adds a renew deadline on top, like client-go's: we lead only while the crate says so AND
//! a recent read of the Lease shows us as holder with a renewTime young enough. The deadline
//! falls between the crate's renewal point and expiry, so a healthy leader never flaps and a cut
//! off leader stops before anyone else can start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the election is run.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Lease duration in seconds: how long a silent leader blocks others.
    pub lease_duration_secs: u64,
}

impl LeaderConfig {
    /// Seconds before expiry at which the holder renews: a third of the duration, at least 1.
    pub fn grace_secs(&self) -> u64 {
        (self.lease_duration_secs / 3).max(1)
    }

    /// How long after the Lease's renewTime we keep leading without seeing a newer renewal:
    /// past the crate's renewal point (`duration - grace`) by half the grace, so the poll has
    /// time to see the renewal, and half the grace before expiry.
    pub fn renew_deadline(&self) -> Duration {
        let grace_ms = self.grace_secs() * 1000;
        Duration::from_millis(self.lease_duration_secs * 1000 - grace_ms / 2)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis((self.grace_secs() * 1000 / 4).clamp(250, 2000))
    }
}

/// Errors starting the election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease manager could not be built (usually: the Lease could not be read or created).
    #[error("setting up Lease {namespace}/{name}: {source}")]
    Setup {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// What the lease manager reported.
        #[source]
        source: LeaseManagerError,
    },
    /// The lease duration is too short to leave room for a renew deadline.
    #[error("--lease-duration must be at least 3 seconds, got {0}")]
    DurationTooShort(u64),
}

/// A running election. `leading` is true while this replica may run the controllers.
pub struct Election {
    /// Whether this replica may lead now.
    pub leading: watch::Receiver<bool>,
    supervisor: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Election {
    /// Stops campaigning and releases the Lease if held, so a standby takes over at once rather
    /// than after the lease expires.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.leading);
        if tokio::time::timeout(Duration::from_secs(5), self.supervisor)
            .await
            .is_err()
        {
            tracing::warn!("releasing the lease took longer than 5s; it will expire instead");
        }
    }
}

/// Whether `lease` shows `identity` as holder with a renewal younger than `deadline` at `now`.
pub fn lease_confirms(lease: &Lease, identity: &str, now: Timestamp, deadline: Duration) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return false;
    }
    let Some(renewed) = &spec.renew_time else {
        return false;
    };
    let Ok(deadline) = SignedDuration::try_from(deadline) else {
        return false;
    };
    now < renewed.0.saturating_add(deadline).unwrap_or(renewed.0)
}

/// Starts campaigning for the Lease.
pub async fn start(client: Client, config: LeaderConfig) -> Result<Election, LeaderError> {
    if config.lease_duration_secs < 3 {
        return Err(LeaderError::DurationTooShort(config.lease_duration_secs));
    }
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration_secs)
        .with_grace(config.grace_secs())
        .build()
        .await
        .map_err(|source| LeaderError::Setup {
            namespace: config.namespace.clone(),
            name: config.lease_name.clone(),
            source,
        })?;
    let (held, manager_task) = manager.watch().await;
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
    let supervisor = tokio::spawn(supervise(
        config,
        leases,
        held,
        manager_task,
        leading_tx,
        stop_rx,
    ));
    Ok(Election {
        leading,
        supervisor,
        stop,
    })
}

async fn supervise(
    config: LeaderConfig,
    leases: Api<Lease>,
    mut held: watch::Receiver<bool>,
    manager_task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let deadline = config.renew_deadline();
    // The last Lease we read while holding it. A failed read keeps it: one failed read is no
    // reason to stop, but the deadline is measured from its renewTime, so a leader that cannot
    // read its Lease any more steps down once that renewal is too old.
    let mut last_seen: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            changed = held.changed() => if changed.is_err() {
                tracing::error!("the lease manager stopped; stepping down");
                let _ = leading.send(false);
                break;
            },
            _ = tokio::time::sleep(config.poll_interval()) => {}
        }
        let holds = *held.borrow();
        if holds {
            // Bounded, so an API server that does not answer cannot hold us past the deadline.
            match tokio::time::timeout(config.poll_interval() * 2, leases.get(&config.lease_name))
                .await
            {
                Ok(Ok(lease)) => last_seen = Some(lease),
                Ok(Err(error)) => tracing::debug!(%error, "reading the lease"),
                Err(_) => tracing::debug!("reading the lease timed out"),
            }
        } else {
            last_seen = None;
        }
        let confirmed = last_seen
            .as_ref()
            .is_some_and(|l| lease_confirms(l, &config.identity, Timestamp::now(), deadline));
        let may_lead = holds && confirmed;
        leading.send_if_modified(|current| {
            if *current != may_lead {
                tracing::info!(identity = %config.identity, leading = may_lead, "leadership changed");
                *current = may_lead;
                true
            } else {
                false
            }
        });
    }
    let _ = leading.send(false);
    // Dropping the last receiver makes the lease manager release the Lease and return.
    drop(held);
    match manager_task.await {
        Ok(Ok(_)) => tracing::info!("released the lease"),
        Ok(Err(error)) => tracing::warn!(%error, "releasing the lease"),
        Err(error) => tracing::warn!(%error, "the lease manager task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed_at: Option<i64>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed_at.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn deadline_sits_between_renewal_and_expiry() {
        let c = LeaderConfig {
            lease_name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration_secs: 15,
        };
        assert_eq!(c.grace_secs(), 5);
        // The crate renews 10s after the last renewal; the lease expires after 15s.
        assert_eq!(c.renew_deadline(), Duration::from_millis(12_500));
        assert!(c.poll_interval() <= Duration::from_millis(1250));
        let short = LeaderConfig {
            lease_duration_secs: 3,
            ..c
        };
        assert_eq!(short.grace_secs(), 1);
        assert_eq!(short.renew_deadline(), Duration::from_millis(2500));
    }

    #[test]
    fn confirmation_needs_us_as_holder_and_a_fresh_renewal() {
        let d = Duration::from_millis(12_500);
        assert!(lease_confirms(
            &lease(Some("me"), Some(100)),
            "me",
            at(105),
            d
        ));
        assert!(lease_confirms(
            &lease(Some("me"), Some(100)),
            "me",
            at(112),
            d
        ));
        assert!(!lease_confirms(
            &lease(Some("me"), Some(100)),
            "me",
            at(113),
            d
        ));
        assert!(!lease_confirms(
            &lease(Some("other"), Some(100)),
            "me",
            at(101),
            d
        ));
        assert!(!lease_confirms(&lease(None, Some(100)), "me", at(101), d));
        assert!(!lease_confirms(&lease(Some("me"), None), "me", at(101), d));
        assert!(!lease_confirms(&Lease::default(), "me", at(101), d));
    }
}
