//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use warp::http::StatusCode;
use warp::Filter;

use crate::metrics::Metrics;

/// What `/readyz` reports, updated by the controllers.
///
/// Ready means: this instance is a standby (not leading, nothing to be ready for), or it leads
/// and its caches of sets, Nodes and NodeStaticPods are synced. A standby is ready on purpose:
/// readiness gates rollouts of the operator's Deployment, and a rollout must not wait for a
/// standby to become leader, which it never will while the old leader runs.
#[derive(Debug, Default)]
pub struct Health {
    leading: AtomicBool,
    synced: AtomicBool,
}

impl Health {
    /// Records whether this instance runs the controllers.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
        if !leading {
            self.synced.store(false, Ordering::Relaxed);
        }
    }

    /// Records that the leader's caches are synced.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }

    /// See the type's documentation.
    pub fn ready(&self) -> bool {
        !self.leading.load(Ordering::Relaxed) || self.synced.load(Ordering::Relaxed)
    }
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let metrics_route = warp::path!("metrics").map(move || match metrics.render() {
        Ok(text) => warp::reply::with_status(text, StatusCode::OK),
        Err(e) => warp::reply::with_status(
            format!("rendering metrics: {e}"),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    });
    // Liveness: answering at all proves the runtime is not wedged.
    let healthz =
        warp::path!("healthz").map(|| warp::reply::with_status("ok".to_string(), StatusCode::OK));
    let readyz = warp::path!("readyz").map(move || {
        if health.ready() {
            warp::reply::with_status("ok".to_string(), StatusCode::OK)
        } else {
            warp::reply::with_status(
                "caches not synced".to_string(),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let routes = warp::get().and(metrics_route.or(healthz).or(readyz));
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Binds the HTTP address, so a taken port fails at start with a clear error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rules() {
        let h = Health::default();
        assert!(h.ready(), "a standby is ready");
        h.set_leading(true);
        assert!(!h.ready(), "a leader with cold caches is not");
        h.set_synced(true);
        assert!(h.ready());
        h.set_leading(false);
        h.set_leading(true);
        assert!(!h.ready(), "losing the lead drops the synced caches");
    }

    #[tokio::test]
    async fn serves_the_endpoints() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        health.set_leading(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Metrics::new().unwrap(),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_synced(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"));
        assert!(metrics.contains("staticpodset_operator_leader"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
