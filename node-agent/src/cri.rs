//! The node's container runtime at the edge: the CRI ImageService over its unix socket and the
//! pull jobs [`crate::prepull`] asks for, and the RuntimeService's view of one static pod that
//! node-local fallback ([`crate::fallback`]) judges.
//!
//! The agent asks the runtime the kubelet uses (containerd's or CRI-O's socket), so an image it
//! pulls is exactly what the kubelet finds: same image store, same registry configuration
//! (mirrors, `hosts.toml`). It passes no credentials; images behind pull secrets cannot be
//! pre-pulled (static pods cannot use pull secrets anyway).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{info, info_span, warn, Instrument};

use crate::fallback::{ContainerView, SandboxView};
use crate::metrics::Metrics;
use crate::prepull::PullJob;
use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use api::{
    ContainerFilter, ContainerState, ImageSpec, ImageStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxFilter, PodSandboxState, PullImageRequest,
};
use staticpodset_api::keys::ANNOTATION_REVISION;

/// The CRI API (`runtime.v1`) as `build.rs` generates it from the vendored
/// `proto/runtime/v1/api.proto`: its messages, and clients only.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

/// A failed call to the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The CRI call returned an error (an unreachable socket shows as `Unavailable`).
    #[error("CRI {call} of image {image} through {}: {} ({:?})", socket.display(), status.message(), status.code())]
    Call {
        /// `ImageStatus` or `PullImage`.
        call: &'static str,
        /// The image.
        image: String,
        /// The runtime's socket.
        socket: PathBuf,
        /// What the runtime (or the transport) answered.
        #[source]
        status: tonic::Status,
    },
    /// The call did not finish in time.
    #[error("CRI {call} of image {image} through {}: no answer within {}s", socket.display(), timeout.as_secs())]
    Timeout {
        /// `ImageStatus` or `PullImage`.
        call: &'static str,
        /// The image.
        image: String,
        /// The runtime's socket.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// A RuntimeService call about a pod failed or timed out.
    #[error("CRI {call} for pod {pod} through {}: {why}", socket.display())]
    Pod {
        /// `ListPodSandbox` or `ListContainers`.
        call: &'static str,
        /// `<namespace>/<pod name>`.
        pod: String,
        /// The runtime's socket.
        socket: PathBuf,
        /// The runtime's answer, or the timeout.
        why: String,
    },
}

/// The runtime's unix socket as a path (`unix://` dropped), and a lazy channel to it.
fn connect(socket: &Path) -> (PathBuf, Channel) {
    let socket = socket
        .to_str()
        .and_then(|s| s.strip_prefix("unix://"))
        .map_or_else(|| socket.to_path_buf(), PathBuf::from);
    let path = socket.clone();
    // The URI is a placeholder: every connection goes to the socket.
    let channel = Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }),
    );
    (socket, channel)
}

/// A client of the runtime's ImageService. Cheap to clone; connects on first use and reconnects
/// after failures, so a runtime that is not up yet only fails the calls made meanwhile.
#[derive(Debug, Clone)]
pub struct CriImages {
    socket: PathBuf,
    client: ImageServiceClient<Channel>,
}

/// What a pull job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// The runtime had the image; nothing was downloaded.
    AlreadyPresent,
    /// The image was pulled.
    Pulled,
}

impl CriImages {
    /// A client for the CRI socket at `socket` (a path, or `unix://` + path). Makes no call.
    pub fn new(socket: &Path) -> Self {
        let (socket, channel) = connect(socket);
        Self {
            socket,
            client: ImageServiceClient::new(channel),
        }
    }

    /// A RuntimeService client on the same socket.
    pub fn runtime(&self) -> CriRuntime {
        let (socket, channel) = connect(&self.socket);
        CriRuntime {
            socket,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// The runtime's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the runtime has `image` (`ImageStatus`).
    pub async fn is_present(&self, image: &str, timeout: Duration) -> Result<bool, CriError> {
        let request = ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        let mut client = self.client.clone();
        let response = self
            .bounded("ImageStatus", image, timeout, client.image_status(request))
            .await?;
        Ok(response.image.is_some())
    }

    /// Pulls `image` (`PullImage`, no credentials); returns the image reference the runtime
    /// resolved it to.
    pub async fn pull(&self, image: &str, timeout: Duration) -> Result<String, CriError> {
        let request = PullImageRequest {
            image: Some(spec(image)),
            auth: None,
            sandbox_config: None,
        };
        let mut client = self.client.clone();
        let response = self
            .bounded("PullImage", image, timeout, client.pull_image(request))
            .await?;
        Ok(response.image_ref)
    }

    /// Runs a pull job: `ImageStatus`, then `PullImage` if the image is missing (or at once for a
    /// policy-`Always` image). `timeout` bounds each call.
    pub async fn run(&self, job: &PullJob, timeout: Duration) -> Result<Pulled, CriError> {
        if !job.always && self.is_present(&job.image, timeout).await? {
            return Ok(Pulled::AlreadyPresent);
        }
        self.pull(&job.image, timeout).await.map(|_| Pulled::Pulled)
    }

    async fn bounded<T>(
        &self,
        call: &'static str,
        image: &str,
        timeout: Duration,
        request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CriError::Call {
                call,
                image: image.to_owned(),
                socket: self.socket.clone(),
                status,
            }),
            Err(_) => Err(CriError::Timeout {
                call,
                image: image.to_owned(),
                socket: self.socket.clone(),
                timeout,
            }),
        }
    }
}

/// A client of the runtime's RuntimeService, read-only: what node-local fallback needs to judge a
/// static pod while its mirror pod cannot be seen.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    socket: PathBuf,
    client: RuntimeServiceClient<Channel>,
}

/// The labels the kubelet puts on every sandbox and container of a pod.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

impl CriRuntime {
    /// The sandboxes of pod `namespace/name` (a static pod's name as the kubelet knows it,
    /// `<name>-<node>`) with their containers. `timeout` bounds each call.
    pub async fn pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Vec<SandboxView>, CriError> {
        let labels: std::collections::HashMap<String, String> = [
            (POD_NAME_LABEL.to_owned(), name.to_owned()),
            (POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
        ]
        .into();
        let pod = format!("{namespace}/{name}");
        let mut client = self.client.clone();
        let sandboxes = self
            .pod_call(
                "ListPodSandbox",
                &pod,
                timeout,
                client.list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(PodSandboxFilter {
                        label_selector: labels.clone(),
                        ..PodSandboxFilter::default()
                    }),
                }),
            )
            .await?
            .items;
        let mut client = self.client.clone();
        let containers = self
            .pod_call(
                "ListContainers",
                &pod,
                timeout,
                client.list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        label_selector: labels,
                        ..ContainerFilter::default()
                    }),
                }),
            )
            .await?
            .containers;
        Ok(sandboxes
            .into_iter()
            .map(|sandbox| SandboxView {
                ready: sandbox.state == PodSandboxState::SandboxReady as i32,
                revision: sandbox.annotations.get(ANNOTATION_REVISION).cloned(),
                containers: containers
                    .iter()
                    .filter(|c| c.pod_sandbox_id == sandbox.id)
                    .map(|c| ContainerView {
                        name: c
                            .metadata
                            .as_ref()
                            .map(|m| m.name.clone())
                            .unwrap_or_default(),
                        attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
                        running: c.state == ContainerState::ContainerRunning as i32,
                        created: std::time::UNIX_EPOCH
                            + Duration::from_nanos(u64::try_from(c.created_at).unwrap_or(0)),
                    })
                    .collect(),
            })
            .collect())
    }
}

impl CriRuntime {
    async fn pod_call<T>(
        &self,
        call: &'static str,
        pod: &str,
        timeout: Duration,
        request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let why = match tokio::time::timeout(timeout, request).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => format!("{} ({:?})", status.message(), status.code()),
            Err(_) => format!("no answer within {}s", timeout.as_secs()),
        };
        Err(CriError::Pod {
            call,
            pod: pod.to_owned(),
            socket: self.socket.clone(),
            why,
        })
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        user_specified_image: image.to_owned(),
        ..ImageSpec::default()
    }
}

/// The result of one pull job, for [`crate::prepull::PrePull::record`].
#[derive(Debug)]
pub struct PullResult {
    /// The image.
    pub image: String,
    /// `Ok` when the runtime has the image now; the error's text otherwise.
    pub result: Result<(), String>,
    /// When the job finished.
    pub at: Instant,
}

/// Runs pull jobs in the background, at most a few at a time, and hands their results to the
/// agent's loop (waking it), so no sync ever waits for a pull.
#[derive(Debug, Clone)]
pub struct Puller {
    cri: CriImages,
    timeout: Duration,
    limit: Arc<Semaphore>,
    results: mpsc::UnboundedSender<PullResult>,
    wake: Arc<Notify>,
    metrics: Metrics,
}

/// Pulls running at once: the runtime downloads each image's layers in parallel already.
pub const PULLS_IN_FLIGHT: usize = 3;

impl Puller {
    /// A puller whose calls each take at most `timeout`; results arrive on the returned receiver.
    pub fn new(
        cri: CriImages,
        timeout: Duration,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> (Self, mpsc::UnboundedReceiver<PullResult>) {
        let (results, rx) = mpsc::unbounded_channel();
        let puller = Self {
            cri,
            timeout,
            limit: Arc::new(Semaphore::new(PULLS_IN_FLIGHT)),
            results,
            wake,
            metrics,
        };
        (puller, rx)
    }

    /// Starts `job` in the background.
    pub fn start(&self, job: PullJob) {
        let this = self.clone();
        let span = info_span!("prepull", image = %job.image, socket = %self.cri.socket().display());
        tokio::spawn(
            async move {
                let result = {
                    // The semaphore is never closed, so acquiring only waits.
                    let _permit = this.limit.acquire().await;
                    let started = Instant::now();
                    let outcome = this.cri.run(&job, this.timeout).await;
                    let took = started.elapsed();
                    match &outcome {
                        Ok(Pulled::AlreadyPresent) => {
                            this.metrics
                                .image_pulls
                                .with_label_values(&["present"])
                                .inc();
                        }
                        Ok(Pulled::Pulled) => {
                            this.metrics
                                .image_pulls
                                .with_label_values(&["pulled"])
                                .inc();
                            this.metrics.image_pull_duration.observe(took.as_secs_f64());
                            info!(seconds = took.as_secs_f64(), "image pre-pulled");
                        }
                        Err(e) => {
                            let result = match e {
                                CriError::Timeout { .. } => "timeout",
                                CriError::Call { .. } | CriError::Pod { .. } => "error",
                            };
                            this.metrics.image_pulls.with_label_values(&[result]).inc();
                            warn!(error = %e, "image pre-pull failed");
                        }
                    }
                    outcome.map(|_| ()).map_err(|e| e.to_string())
                };
                // The receiver only goes away when the agent stops.
                let _ = this.results.send(PullResult {
                    image: job.image,
                    result,
                    at: Instant::now(),
                });
                this.wake.notify_one();
            }
            .instrument(span),
        );
    }
}
