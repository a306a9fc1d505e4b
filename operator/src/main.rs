//! `staticpodset-operator`: wiring of client, HTTP server, leader election and controllers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::Reporter;
use kube::Client;
use staticpodset_operator::cli::Args;
use staticpodset_operator::context::Settings;
use staticpodset_operator::controller;
use staticpodset_operator::http::{self, Health};
use staticpodset_operator::leader::{self, LeaderConfig};
use staticpodset_operator::metrics::Metrics;
use staticpodset_operator::telemetry;
use tokio::sync::watch;

/// How long a graceful shutdown may take before the process exits anyway; below the default
/// 30s termination grace period of a pod.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);

    let client = Client::try_default()
        .await
        .context("configuring the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let health = Arc::new(Health::default());
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("staticpodset-operator-{}", std::process::id()));
    let reporter = Reporter {
        controller: "staticpodset-operator".into(),
        instance: Some(identity.clone()),
    };
    let settings = Settings {
        node_gone_timeout: args.node_gone_timeout,
        write_concurrency: args.node_write_concurrency,
        reconcile_concurrency: args.concurrency,
        reconcile_debounce: args.reconcile_debounce,
        resync: args.resync,
        config_namespace: args
            .config_namespace
            .clone()
            .or_else(|| args.lease_namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string()),
    };

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let listener = http::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the HTTP server to {}", args.http_addr))?;
    let http_server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        fired(shutdown.clone()),
    ));

    let run_term = || {
        controller::run(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            health.clone(),
            reporter.clone(),
            fired(shutdown.clone()),
        )
    };
    let start_term = || {
        tracing::info!(%identity, "running the controllers");
        health.set_leading(true);
        metrics.leader.set(1);
    };
    let end_term = || {
        health.set_leading(false);
        metrics.leader.set(0);
    };

    if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let election = leader::start(
            client.clone(),
            LeaderConfig {
                lease_name: args.lease_name.clone(),
                namespace: namespace.clone(),
                identity: identity.clone(),
                lease_duration_secs: args.lease_duration,
            },
        )
        .await
        .context("starting leader election")?;
        tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), %identity, "waiting to lead");
        let mut leading = election.leading.clone();
        while !*shutdown.borrow() {
            tokio::select! {
                _ = leading.wait_for(|l| *l) => {}
                _ = fired(shutdown.clone()) => break,
            }
            start_term();
            tokio::select! {
                _ = bounded(run_term(), shutdown.clone()) => {}
                // Dropping the controllers cancels in-flight reconciles at once: past this point
                // another replica may lead, and two writers must not overlap.
                _ = leading.wait_for(|l| !*l) => tracing::warn!("lost the lease; stopped the controllers"),
            }
            end_term();
        }
        election.stop().await;
    } else {
        start_term();
        bounded(run_term(), shutdown.clone()).await;
        end_term();
    }

    let _ = http_server.await;
    Ok(())
}

/// Runs `term` until it ends, or until [`SHUTDOWN_GRACE`] after a shutdown was requested.
async fn bounded(term: impl Future<Output = ()>, shutdown: watch::Receiver<bool>) {
    let deadline = async {
        fired(shutdown).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("graceful shutdown took too long; stopping now");
    };
    tokio::select! {
        _ = term => {}
        _ = deadline => {}
    }
}

/// Resolves once shutdown was requested (or the sender is gone).
async fn fired(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
