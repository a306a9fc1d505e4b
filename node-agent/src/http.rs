//! The agent's HTTP endpoints: `/metrics`, `/healthz` (the process serves) and `/readyz` (the agent
//! has synced the directory with its NodeStaticPods at least once).

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::metrics::Metrics;

/// Whether the agent has acted on API state yet, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The directory has been synced with the node's NodeStaticPods.
    Ready,
    /// Not yet; the text says what the agent waits for.
    NotReady(String),
}

/// The routes, for [`serve`] and for tests.
pub fn routes(
    metrics: Metrics,
    readiness: watch::Receiver<Readiness>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(move || match metrics.encode() {
            Ok(text) => warp::reply::with_header(
                warp::reply::with_status(text, StatusCode::OK),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response(),
            Err(e) => warp::reply::with_status(e.to_string(), StatusCode::INTERNAL_SERVER_ERROR)
                .into_response(),
        });
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .map(move || match &*readiness.borrow() {
            Readiness::Ready => warp::reply::with_status("ready".to_owned(), StatusCode::OK),
            Readiness::NotReady(why) => warp::reply::with_status(
                format!("not ready: {why}"),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        });
    metrics.or(healthz).or(readyz)
}

/// Serves `routes` on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: watch::Receiver<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(metrics, readiness))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let metrics = Metrics::new().expect("metrics");
        let (ready_tx, ready_rx) = watch::channel(Readiness::NotReady("waiting".into()));
        let api = routes(metrics, ready_rx);

        let res = warp::test::request().path("/healthz").reply(&api).await;
        assert_eq!(res.status(), StatusCode::OK);

        let res = warp::test::request().path("/readyz").reply(&api).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(res.body()).contains("waiting"));

        ready_tx.send_replace(Readiness::Ready);
        let res = warp::test::request().path("/readyz").reply(&api).await;
        assert_eq!(res.status(), StatusCode::OK);

        let res = warp::test::request().path("/metrics").reply(&api).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(String::from_utf8_lossy(res.body()).contains("staticpodset_agent_syncs_total"));

        let res = warp::test::request().path("/nope").reply(&api).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
