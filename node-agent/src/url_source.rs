//! The endpoint the kubelet's URL source polls (`staticPodURL`): `GET /static-pods` answers the
//! PodList [`crate::served_pods`] decided, or `503` while the agent has no complete answer.
//!
//! It listens on its own address (`--static-pod-url-addr`), apart from `/metrics`, so it can be
//! bound to loopback or published only as a host port on the node. With
//! `--static-pod-url-header-name` and `--static-pod-url-header-value-file` a request must carry that
//! header with that value (the kubelet's `staticPodURLHeader`); others get `401`, which the kubelet,
//! like any error, answers by keeping the pods it runs.

use std::future::Future;
use std::sync::Arc;

use staticpodset_api::ManifestSource;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::metrics::Metrics;

/// The path the kubelet's `staticPodURL` names.
pub const PATH: &str = "static-pods";

/// What the endpoint answers right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlResponse {
    /// The complete PodList (JSON) of the pods the node runs from the URL source.
    Pods(Arc<Vec<u8>>),
    /// No complete answer; the text says why. Served as `503`, which keeps the kubelet's pods.
    Unavailable(String),
}

/// The agent's side of the URL source, built in `main` when `--static-pod-url-addr` is set.
pub struct UrlSource {
    /// Where the loop publishes the answer.
    pub response: watch::Sender<UrlResponse>,
    /// The mode when the Node has no valid `staticpods.dev/manifest-source` label.
    pub default_mode: ManifestSource,
    /// Whether to read the mode label from this node's Node object (needs `list`/`watch` on
    /// nodes); without it the mode is always `default_mode`.
    pub node_label: bool,
}

/// A header every request must carry, `Name: value` as the kubelet's `staticPodURLHeader` sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct RequiredHeader {
    /// Lowercased header name.
    pub name: String,
    /// The exact value.
    pub value: String,
}

impl std::fmt::Debug for RequiredHeader {
    // The value is a shared secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequiredHeader({}: <redacted>)", self.name)
    }
}

/// Parses `Name:value` (spaces around the value trimmed).
pub fn parse_required_header(text: &str) -> Result<RequiredHeader, String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| "expected NAME:VALUE".to_owned())?;
    let name = name.trim();
    let value = value.trim();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not an HTTP header name"));
    }
    if value.is_empty() {
        return Err("the header value is empty".to_owned());
    }
    Ok(RequiredHeader {
        name: name.to_ascii_lowercase(),
        value: value.to_owned(),
    })
}

/// Whether `headers` carry the required header, compared without an early exit on the first
/// differing byte.
fn authorized(required: Option<&RequiredHeader>, headers: &HeaderMap) -> bool {
    let Some(required) = required else {
        return true;
    };
    headers.get_all(required.name.as_str()).iter().any(|v| {
        let (a, b) = (v.as_bytes(), required.value.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

/// The route, for [`serve`] and for tests.
pub fn routes(
    response: watch::Receiver<UrlResponse>,
    required: Option<RequiredHeader>,
    metrics: Metrics,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path(PATH)
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .map(move |headers: HeaderMap| {
            let reply = if !authorized(required.as_ref(), &headers) {
                warp::reply::with_status(
                    b"missing or wrong header\n".to_vec(),
                    StatusCode::UNAUTHORIZED,
                )
                .into_response()
            } else {
                match &*response.borrow() {
                    UrlResponse::Pods(body) => warp::reply::with_header(
                        warp::reply::with_status(body.as_ref().clone(), StatusCode::OK),
                        "content-type",
                        "application/json",
                    )
                    .into_response(),
                    UrlResponse::Unavailable(why) => warp::reply::with_status(
                        format!("not ready: {why}\n").into_bytes(),
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response(),
                }
            };
            metrics
                .url_requests
                .with_label_values(&[reply.status().as_str()])
                .inc();
            reply
        })
}

/// Serves [`routes`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    response: watch::Receiver<UrlResponse>,
    required: Option<RequiredHeader>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(response, required, metrics))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(body: &str) -> UrlResponse {
        UrlResponse::Pods(Arc::new(body.as_bytes().to_vec()))
    }

    #[tokio::test]
    async fn answers_an_error_until_the_state_is_loaded_then_the_list() {
        let metrics = Metrics::new().expect("metrics");
        let (tx, rx) = watch::channel(UrlResponse::Unavailable("starting".into()));
        let api = routes(rx, None, metrics.clone());

        let res = warp::test::request().path("/static-pods").reply(&api).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(res.body()).contains("starting"));

        tx.send_replace(pods(r#"{"kind":"PodList","items":[]}"#));
        let res = warp::test::request().path("/static-pods").reply(&api).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.body().as_ref(), br#"{"kind":"PodList","items":[]}"#);

        for path in ["/", "/static-pods/x", "/metrics"] {
            let res = warp::test::request().path(path).reply(&api).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let res = warp::test::request()
            .method("POST")
            .path("/static-pods")
            .reply(&api)
            .await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let text = metrics.encode().expect("metrics");
        assert!(
            text.contains(r#"staticpodset_agent_url_requests_total{code="503"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"staticpodset_agent_url_requests_total{code="200"} 1"#));
    }

    #[tokio::test]
    async fn a_required_header_must_match_exactly() {
        let required = parse_required_header("X-Sps-Token: s3cret").expect("header");
        assert_eq!(required.name, "x-sps-token");
        assert!(!format!("{required:?}").contains("s3cret"));
        let (_tx, rx) = watch::channel(pods("{}"));
        let api = routes(rx, Some(required), Metrics::new().expect("metrics"));
        let get = |value: Option<&'static str>| {
            let mut req = warp::test::request().path("/static-pods");
            if let Some(v) = value {
                req = req.header("x-sps-token", v);
            }
            req
        };
        assert_eq!(
            get(None).reply(&api).await.status(),
            StatusCode::UNAUTHORIZED
        );
        for wrong in ["s3cre", "s3cret!", "S3CRET", ""] {
            assert_eq!(
                get(Some(wrong)).reply(&api).await.status(),
                StatusCode::UNAUTHORIZED,
                "{wrong}"
            );
        }
        assert_eq!(
            get(Some("s3cret")).reply(&api).await.status(),
            StatusCode::OK
        );
    }

    #[test]
    fn header_flags_parse() {
        assert!(parse_required_header("novalue").is_err());
        assert!(parse_required_header("X-A:").is_err());
        assert!(parse_required_header("bad name: v").is_err());
        assert!(parse_required_header(": v").is_err());
        let h = parse_required_header("Authorization: Bearer abc:def").expect("header");
        assert_eq!(h.name, "authorization");
        assert_eq!(h.value, "Bearer abc:def");
    }
}
