//! The CRI client and the background puller against a real gRPC ImageService on a unix socket
//! (an in-process server with a fake image store), as the agent talks to containerd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::{
    Image, ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use staticpodset_node_agent::cri::{CriError, CriImages, Pulled, Puller};
use staticpodset_node_agent::metrics::Metrics;
use staticpodset_node_agent::prepull::PullJob;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

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

fn image_of(spec: Option<k8s_cri::v1::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("no image"))
}

#[tonic::async_trait]
impl ImageService for FakeRuntime {
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        let mut store = self.store();
        store.calls.push(format!("ImageStatus {image}"));
        let found = store.present.contains(&image).then(|| Image {
            id: format!("sha256:{image}"),
            ..Image::default()
        });
        Ok(Response::new(ImageStatusResponse {
            image: found,
            ..ImageStatusResponse::default()
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        let delay = {
            let mut store = self.store();
            store.calls.push(format!("PullImage {image}"));
            if let Some(message) = &store.fail_pulls {
                return Err(Status::not_found(message.clone()));
            }
            store.pull_delay
        };
        tokio::time::sleep(delay).await;
        self.store().present.insert(image.clone());
        Ok(Response::new(PullImageResponse {
            image_ref: format!("sha256:{image}"),
        }))
    }

    async fn remove_image(
        &self,
        _: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// Serves `runtime` on `socket` until the test ends.
fn serve(runtime: FakeRuntime, socket: &Path) {
    let listener = UnixListener::bind(socket).expect("bind");
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ImageServiceServer::new(runtime))
            .serve_with_incoming(incoming),
    );
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
