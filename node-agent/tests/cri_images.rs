//! The CRI client and the background puller against a real gRPC ImageService on a unix socket
//! (an in-process server with a fake image store), as the agent talks to containerd. The server
//! speaks gRPC's framing on plain hyper (HTTP/2): the agent builds tonic without its server.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use staticpodset_node_agent::cri::api::{
    Image, ImageSpec, ImageStatusRequest, ImageStatusResponse, PullImageRequest, PullImageResponse,
};
use staticpodset_node_agent::cri::{CriError, CriImages, Pulled, Puller};
use staticpodset_node_agent::metrics::Metrics;
use staticpodset_node_agent::prepull::PullJob;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tonic::Code;

#[derive(Default)]
struct Store {
    present: BTreeSet<String>,
    calls: Vec<String>,
    fail_pulls: Option<String>,
    pull_delay: Duration,
}

#[derive(Clone, Default)]
struct FakeRuntime(Arc<Mutex<Store>>);

impl FakeRuntime {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().expect("store")
    }
}

/// A gRPC error status as the fake runtime answers it.
struct Status {
    code: Code,
    message: String,
}

impl Status {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn image_of(spec: Option<ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::new(Code::InvalidArgument, "no image"))
}

impl FakeRuntime {
    async fn image_status(
        &self,
        request: ImageStatusRequest,
    ) -> Result<ImageStatusResponse, Status> {
        let image = image_of(request.image)?;
        let mut store = self.store();
        store.calls.push(format!("ImageStatus {image}"));
        let found = store.present.contains(&image).then(|| Image {
            id: format!("sha256:{image}"),
            ..Image::default()
        });
        Ok(ImageStatusResponse {
            image: found,
            ..ImageStatusResponse::default()
        })
    }

    async fn pull_image(&self, request: PullImageRequest) -> Result<PullImageResponse, Status> {
        let image = image_of(request.image)?;
        let delay = {
            let mut store = self.store();
            store.calls.push(format!("PullImage {image}"));
            if let Some(message) = &store.fail_pulls {
                return Err(Status::new(Code::NotFound, message.clone()));
            }
            store.pull_delay
        };
        tokio::time::sleep(delay).await;
        self.store().present.insert(image.clone());
        Ok(PullImageResponse {
            image_ref: format!("sha256:{image}"),
        })
    }
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Decodes the one length-prefixed message of a unary call (a compression flag byte and a
/// four-byte length come first).
fn decode<M: Message + Default>(body: &Bytes) -> Result<M, Status> {
    let message = body.get(5..).unwrap_or_default();
    M::decode(message).map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))
}

/// Answers one unary call of the ImageService.
async fn handle(
    runtime: FakeRuntime,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(status_only(Status::new(Code::Internal, e.to_string()))),
    };
    let reply = match path.as_str() {
        "/runtime.v1.ImageService/ImageStatus" => match decode(&body) {
            Ok(request) => runtime
                .image_status(request)
                .await
                .map(|m| m.encode_to_vec()),
            Err(status) => Err(status),
        },
        "/runtime.v1.ImageService/PullImage" => match decode(&body) {
            Ok(request) => runtime.pull_image(request).await.map(|m| m.encode_to_vec()),
            Err(status) => Err(status),
        },
        _ => Err(Status::new(Code::Unimplemented, "not used")),
    };
    Ok(match reply {
        Ok(message) => message_response(&message),
        Err(status) => status_only(status),
    })
}

fn grpc_response(
    frames: Vec<Result<Frame<Bytes>, Infallible>>,
    headers: HeaderMap,
) -> Response<Body> {
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)));
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A reply: the message, then the OK status in the trailers.
fn message_response(message: &[u8]) -> Response<Body> {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).expect("small message"));
    frame.put_slice(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    grpc_response(
        vec![
            Ok(Frame::data(frame.freeze())),
            Ok(Frame::trailers(trailers)),
        ],
        HeaderMap::new(),
    )
}

/// An error: a trailers-only reply, the status in the headers and no body.
fn status_only(status: Status) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(status.code as i32));
    headers.insert(
        "grpc-message",
        HeaderValue::from_str(&status.message).expect("a header value"),
    );
    grpc_response(Vec::new(), headers)
}

/// Serves `runtime` on `socket` until the test ends.
fn serve(runtime: FakeRuntime, socket: &Path) {
    let listener = UnixListener::bind(socket).expect("bind");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(runtime.clone(), req));
                // A connection the client drops ends here; nothing to report.
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn started(dir: &tempfile::TempDir) -> (FakeRuntime, CriImages, PathBuf) {
    let socket = dir.path().join("cri.sock");
    let runtime = FakeRuntime::default();
    serve(runtime.clone(), &socket);
    let cri = CriImages::new(&socket);
    (runtime, cri, socket)
}

const T: Duration = Duration::from_secs(5);

fn job(image: &str, always: bool) -> PullJob {
    PullJob {
        image: image.into(),
        always,
    }
}

#[tokio::test]
async fn asks_for_the_status_and_pulls_only_missing_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, cri, _) = started(&dir);
    runtime.store().present.insert("reg/there:1".into());

    assert_eq!(
        cri.run(&job("reg/missing:1", false), T).await.expect("run"),
        Pulled::Pulled
    );
    assert_eq!(
        cri.run(&job("reg/there:1", false), T).await.expect("run"),
        Pulled::AlreadyPresent
    );
    assert!(cri.is_present("reg/missing:1", T).await.expect("status"));
    assert_eq!(
        runtime.store().calls,
        vec![
            "ImageStatus reg/missing:1",
            "PullImage reg/missing:1",
            "ImageStatus reg/there:1",
            "ImageStatus reg/missing:1",
        ]
    );
}

#[tokio::test]
async fn an_always_image_is_pulled_without_asking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, cri, _) = started(&dir);
    runtime.store().present.insert("reg/app:latest".into());
    assert_eq!(
        cri.run(&job("reg/app:latest", true), T).await.expect("run"),
        Pulled::Pulled
    );
    assert_eq!(runtime.store().calls, vec!["PullImage reg/app:latest"]);
}

#[tokio::test]
async fn errors_name_the_call_the_image_and_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, cri, socket) = started(&dir);
    runtime.store().fail_pulls = Some("manifest unknown".into());
    let err = cri.run(&job("reg/typo:1", false), T).await.unwrap_err();
    let CriError::Call { status, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code(), Code::NotFound);
    let text = err.to_string();
    for want in [
        "PullImage",
        "reg/typo:1",
        "manifest unknown",
        &socket.display().to_string(),
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }

    // A slow pull hits the call's timeout.
    runtime.store().fail_pulls = None;
    runtime.store().pull_delay = Duration::from_secs(30);
    let err = cri
        .run(&job("reg/slow:1", false), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, CriError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_socket_fails_the_call_not_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nothing-here.sock");
    let cri = CriImages::new(&socket);
    let err = cri.is_present("reg/a:1", T).await.unwrap_err();
    assert!(
        err.to_string().contains("nothing-here.sock"),
        "{}",
        err.to_string()
    );
    // The runtime comes up later: the same client works.
    let runtime = FakeRuntime::default();
    serve(runtime.clone(), &socket);
    let mut present = None;
    for _ in 0..50 {
        if let Ok(p) = cri.is_present("reg/a:1", T).await {
            present = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(present, Some(false));
}

#[tokio::test]
async fn the_puller_reports_results_wakes_the_loop_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, cri, _) = started(&dir);
    runtime.store().present.insert("reg/there:1".into());
    let wake = Arc::new(Notify::new());
    let metrics = Metrics::new().expect("metrics");
    let (puller, mut results) = Puller::new(cri, T, wake.clone(), metrics.clone());

    puller.start(job("reg/new:1", false));
    let first = results.recv().await.expect("a result");
    assert_eq!(first.image, "reg/new:1");
    assert_eq!(first.result, Ok(()));
    tokio::time::timeout(T, wake.notified())
        .await
        .expect("woken");

    puller.start(job("reg/there:1", false));
    assert_eq!(results.recv().await.expect("a result").result, Ok(()));

    runtime.store().fail_pulls = Some("denied".into());
    puller.start(job("reg/denied:1", false));
    let failed = results.recv().await.expect("a result");
    assert!(
        failed.result.as_ref().is_err_and(|e| e.contains("denied")),
        "{failed:?}"
    );

    let text = metrics.encode().expect("encode");
    for want in [
        "staticpodset_agent_image_pulls_total{result=\"pulled\"} 1",
        "staticpodset_agent_image_pulls_total{result=\"present\"} 1",
        "staticpodset_agent_image_pulls_total{result=\"error\"} 1",
        "staticpodset_agent_image_pull_duration_seconds_count 1",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}
