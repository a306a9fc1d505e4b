//! `staticpodset-node-agent`: runs on every node (a DaemonSet with the kubelet's manifest directory
//! mounted), writes the static pod manifests its NodeStaticPods assigns, and reports back.
//!
//! RBAC (least privilege; the chart turns this into a ClusterRole, see README-rbac.md):
//!
//! | API group        | resource               | verbs       | why                                    |
//! |------------------|------------------------|-------------|----------------------------------------|
//! | staticpods.dev   | nodestaticpods         | list, watch | its own object, by field selector      |
//! | staticpods.dev   | nodestaticpods/status  | patch       | the status report (server-side apply)  |
//! | staticpods.dev   | staticpodrevisions     | get         | the manifest an entry names, read once |
//! | "" (core)        | pods                   | list, watch | its node's mirror pods, by spec.nodeName |
//! | "" (core)        | nodes                  | list, watch | only with `--manifest-source-from-node-label`: its own Node's labels |
//!
//! The agent emits no Events and never reads Secrets, ConfigMaps or Nodes. `get` on
//! staticpodrevisions is cluster-wide (RBAC cannot narrow it to the names an entry lists); revisions
//! hold pod specs, which carry no Secret data since the CRD rejects references to Secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kube::Client;
use staticpodset_api::config_files::DEFAULT_RESOURCES_ROOT;
use staticpodset_api::duration::parse_flag;
use staticpodset_api::ManifestSource;
use staticpodset_node_agent::agent::{self, Context};
use staticpodset_node_agent::cri::CriImages;
use staticpodset_node_agent::http::{self, Readiness};
use staticpodset_node_agent::manifest_dir::ManifestDir;
use staticpodset_node_agent::metrics::Metrics;
use staticpodset_node_agent::resources_dir::ResourcesDir;
use staticpodset_node_agent::served_pods::parse_source;
use staticpodset_node_agent::state_file::StateFile;
use staticpodset_node_agent::url_source::{self, parse_required_header, RequiredHeader, UrlSource};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Writes a node's StaticPodSet manifests into the kubelet's static pod directory.
#[derive(Parser, Debug)]
#[command(name = "staticpodset-node-agent", version, about)]
struct Args {
    /// This node's name, from the downward API (fieldRef spec.nodeName).
    #[arg(long, env = "NODE_NAME", value_parser = parse_node_name)]
    node_name: String,

    /// The kubelet's staticPodPath.
    #[arg(
        long,
        env = "MANIFEST_DIR",
        default_value = "/etc/kubernetes/manifests"
    )]
    manifest_dir: PathBuf,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:9102")]
    http_addr: SocketAddr,

    /// How often to compare the directory with the spec even without any event (e.g. 30s, 5m).
    /// Also how long the agent trusts its own status write before its watch cache shows it.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    resync_interval: Duration,

    /// The node's CRI socket (the kubelet's containerRuntimeEndpoint, e.g.
    /// /run/containerd/containerd.sock). When set, a manifest write that changes a set's revision
    /// waits until the runtime has the new pod's images, so the node's outage does not include the
    /// pull. Empty: pre-pull off.
    #[arg(long, env = "CRI_SOCKET", default_value = "")]
    cri_socket: String,

    /// The longest a manifest write waits for its images to be pre-pulled; after that it is
    /// written anyway and the kubelet pulls (e.g. 2m, 90s).
    #[arg(long, env = "PREPULL_TIMEOUT", default_value = "2m", value_parser = positive_duration)]
    prepull_timeout: Duration,

    /// Change a running pod's revision by removing its old manifest first and writing the new
    /// one once the kubelet has stopped the old pod (its mirror pod is gone): the kubelet then
    /// starts the new pod at once instead of after a ~10 s back-off. `false`: replace in place.
    #[arg(long, env = "STOP_FIRST", default_value_t = true, action = clap::ArgAction::Set)]
    stop_first: bool,

    /// The longest a new manifest waits for the old pod to stop (e.g. 60s); then it is written
    /// anyway.
    #[arg(long, env = "STOP_FIRST_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    stop_first_timeout: Duration,

    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Serve the node's static pods to the kubelet's URL source (`staticPodURL`) at
    /// http://ADDR/static-pods. Unset: no endpoint, and the agent only writes files.
    #[arg(long, env = "STATIC_POD_URL_ADDR")]
    static_pod_url_addr: Option<SocketAddr>,

    /// A header every request to the static pod URL must carry (the kubelet's
    /// `staticPodURLHeader`); others get 401. Needs --static-pod-url-header-value-file.
    #[arg(long, requires = "static_pod_url_header_value_file")]
    static_pod_url_header_name: Option<String>,

    /// File holding the value of --static-pod-url-header-name (a mounted Secret key), read at
    /// start. A file rather than an environment variable from a Secret: a container with such a
    /// variable cannot restart while the API server is down.
    #[arg(long, requires = "static_pod_url_header_name")]
    static_pod_url_header_value_file: Option<PathBuf>,

    /// How this node's pods reach the kubelet: file, url or both (both: a set goes to the URL
    /// when its template has the annotation staticpods.dev/manifest-source=url). url and both
    /// need --static-pod-url-addr.
    #[arg(long, env = "MANIFEST_SOURCE", default_value = "file", value_parser = parse_manifest_source)]
    manifest_source: ManifestSource,

    /// Let the Node's label staticpods.dev/manifest-source override --manifest-source (the agent
    /// then watches its own Node: RBAC list/watch on nodes).
    #[arg(long, env = "MANIFEST_SOURCE_FROM_NODE_LABEL")]
    manifest_source_from_node_label: bool,

    /// Where the agent writes the configuration files of sets (their ConfigMap and Secret
    /// volumes): `<dir>/<namespace>/<set>/<config hash>/<volume>/`.
    #[arg(long, env = "RESOURCES_DIR", default_value = DEFAULT_RESOURCES_ROOT)]
    resources_dir: PathBuf,

    /// The same directory as the kubelet sees it on the node, when the agent's mount of it is
    /// elsewhere; manifests then mount it from there. Defaults to --resources-dir.
    #[arg(long, env = "RESOURCES_HOST_DIR")]
    resources_host_dir: Option<String>,

    /// Namespace of the configuration bundles (the operator's --config-namespace); the agent
    /// reads Secrets there and nowhere else. Defaults to the pod's namespace.
    #[arg(long, env = "CONFIG_NAMESPACE")]
    config_namespace: Option<String>,

    /// A directory of the agent's own on the node (never the kubelet's staticPodPath) where it
    /// keeps the node's last-known state, `<dir>/<node>.json`: restarted while the API server is
    /// down, it acts on that state (heals drift, serves the static pod URL) instead of waiting.
    /// Empty: no state is kept.
    #[arg(long, env = "STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Where the node's last-known state is kept unless `--state-dir` says otherwise.
const DEFAULT_STATE_DIR: &str = "/var/lib/staticpodset-agent";

fn read_required_header(name: &str, file: &std::path::Path) -> anyhow::Result<RequiredHeader> {
    let value = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the header value from {}", file.display()))?;
    parse_required_header(&format!("{name}:{}", value.trim()))
        .map_err(|e| anyhow::anyhow!("--static-pod-url-header-name/-value-file: {e}"))
}

fn parse_manifest_source(s: &str) -> Result<ManifestSource, String> {
    parse_source(s).ok_or_else(|| format!("{s:?} is not file, url or both"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    info!(node = %args.node_name, dir = %args.manifest_dir.display(), "starting");

    let metrics = Metrics::new().context("cannot register metrics")?;
    let (readiness, readiness_rx) = watch::channel(Readiness::NotReady("starting".to_owned()));
    let (stop, stop_rx) = watch::channel(false);

    let listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    let server = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        readiness_rx,
        stopped(stop_rx.clone()),
    ));

    if args.manifest_source != ManifestSource::File && args.static_pod_url_addr.is_none() {
        anyhow::bail!("--manifest-source url or both needs --static-pod-url-addr");
    }
    let required_header = match (
        &args.static_pod_url_header_name,
        &args.static_pod_url_header_value_file,
    ) {
        (Some(name), Some(file)) => Some(read_required_header(name, file)?),
        _ => None,
    };
    let static_pod_url = match args.static_pod_url_addr {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the static pod URL"))?;
            let (response, response_rx) = watch::channel(url_source::UrlResponse::Unavailable(
                "the agent is starting".to_owned(),
            ));
            info!(%addr, header = ?required_header, "serving the static pod URL");
            tokio::spawn(url_source::serve(
                listener,
                response_rx,
                required_header,
                metrics.clone(),
                stopped(stop_rx.clone()),
            ));
            Some(UrlSource {
                response,
                default_mode: args.manifest_source,
                node_label: args.manifest_source_from_node_label,
            })
        }
    };

    // Builds the configuration only; no request is made, so a down API server does not stop the
    // agent from starting (and leaving the directory alone).
    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;

    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        stop.send_replace(true);
    });

    let config_namespace = args
        .config_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let state_file = state_file(&args.state_dir, &args.manifest_dir, &args.node_name)?;
    let ctx = Context {
        client,
        node_name: args.node_name,
        dir: ManifestDir::new(args.manifest_dir),
        metrics,
        readiness,
        resync_interval: args.resync_interval,
        cri: (!args.cri_socket.is_empty()).then(|| CriImages::new(Path::new(&args.cri_socket))),
        prepull_timeout: args.prepull_timeout,
        stop_first: args.stop_first.then_some(args.stop_first_timeout),
        static_pod_url,
        resources: ResourcesDir::new(
            args.resources_dir.clone(),
            args.resources_host_dir
                .clone()
                .unwrap_or_else(|| args.resources_dir.to_string_lossy().into_owned()),
        ),
        config_namespace,
        state_file,
    };
    agent::run(ctx, stopped(stop_rx)).await;
    server.await.context("the HTTP server task failed")?;
    Ok(())
}

/// The node's state file in `dir`, or none when `dir` is empty. Refused inside the kubelet's
/// directory, whose every file the kubelet reads as a manifest.
fn state_file(dir: &Path, manifest_dir: &Path, node: &str) -> anyhow::Result<Option<StateFile>> {
    if dir.as_os_str().is_empty() {
        return Ok(None);
    }
    if dir.starts_with(manifest_dir) {
        anyhow::bail!(
            "--state-dir {} is inside the kubelet's static pod directory {}, which reads every \
             file there as a manifest; give the agent a directory of its own",
            dir.display(),
            manifest_dir.display()
        );
    }
    Ok(Some(StateFile::new(dir, node)))
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    // An Err means the sender is gone, which only happens at exit: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Node names are DNS subdomains; anything else is a misconfigured downward API.
fn parse_node_name(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a node name"))
    }
}

/// A duration flag as [`parse_flag`] reads it (`500ms`, `30s`, `5m`, `1h`, or bare seconds),
/// refused when zero: a zero resync interval would spin the loop, a zero timeout would never wait.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_flag(s)?;
    if d.is_zero() {
        return Err("the interval must be positive".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(positive_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(positive_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(positive_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        for zero in ["0", "0s", "0ms"] {
            assert_eq!(
                positive_duration(zero),
                Err("the interval must be positive".to_owned()),
                "{zero}"
            );
        }
        for bad in ["", "s", "-1s", "five"] {
            assert!(positive_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_and_defaults() {
        let args = Args::try_parse_from(["agent", "--node-name", "node-1"]).expect("args");
        assert_eq!(
            args.manifest_dir,
            PathBuf::from("/etc/kubernetes/manifests")
        );
        assert_eq!(args.http_addr, "0.0.0.0:9102".parse().expect("addr"));
        assert_eq!(args.resync_interval, Duration::from_secs(30));
        assert!(args.cri_socket.is_empty(), "pre-pull off by default");
        assert_eq!(args.prepull_timeout, Duration::from_secs(120));
        let on = Args::try_parse_from([
            "agent",
            "--node-name",
            "n",
            "--cri-socket",
            "/run/containerd/containerd.sock",
            "--prepull-timeout",
            "90s",
        ])
        .expect("args");
        assert_eq!(on.cri_socket, "/run/containerd/containerd.sock");
        assert_eq!(on.prepull_timeout, Duration::from_secs(90));
        assert!(Args::try_parse_from(["agent", "--node-name", "../x"]).is_err());
        assert!(
            Args::try_parse_from(["agent", "--node-name", "n", "--log-format", "json"]).is_ok()
        );
        assert_eq!(args.static_pod_url_addr, None);
        assert_eq!(args.manifest_source, ManifestSource::File);
        assert!(!args.manifest_source_from_node_label);
        assert_eq!(args.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn the_state_stays_out_of_the_kubelets_directory() {
        let manifests = Path::new("/etc/kubernetes/manifests");
        assert!(state_file(Path::new(""), manifests, "n")
            .expect("off")
            .is_none());
        let file = state_file(Path::new("/var/lib/sps"), manifests, "n")
            .expect("ok")
            .expect("on");
        assert_eq!(file.path(), PathBuf::from("/var/lib/sps/n.json"));
        for inside in [
            "/etc/kubernetes/manifests",
            "/etc/kubernetes/manifests/state",
        ] {
            let e = state_file(Path::new(inside), manifests, "n").expect_err(inside);
            assert!(e.to_string().contains("static pod directory"), "{e}");
        }
    }

    #[test]
    fn the_required_header_value_comes_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let h = read_required_header("X-Token", &file).expect("header");
        assert_eq!((h.name.as_str(), h.value.as_str()), ("x-token", "s3cret"));
        assert!(read_required_header("X-Token", &dir.path().join("missing")).is_err());
        std::fs::write(&file, "\n").expect("write");
        assert!(read_required_header("X-Token", &file).is_err());
    }

    #[test]
    fn static_pod_url_flags() {
        let args = Args::try_parse_from([
            "agent",
            "--node-name",
            "n",
            "--static-pod-url-addr",
            "127.0.0.1:10280",
            "--static-pod-url-header-name",
            "X-Token",
            "--static-pod-url-header-value-file",
            "/run/token",
            "--manifest-source",
            "url",
            "--manifest-source-from-node-label",
        ])
        .expect("args");
        assert_eq!(
            args.static_pod_url_addr,
            Some("127.0.0.1:10280".parse().expect("addr"))
        );
        assert_eq!(args.manifest_source, ManifestSource::Url);
        assert!(args.manifest_source_from_node_label);
        assert_eq!(args.static_pod_url_header_name.as_deref(), Some("X-Token"));
        for bad in [
            ["--manifest-source", "URL"],
            ["--static-pod-url-header-name", "X-Token"],
        ] {
            let mut argv = vec!["agent", "--node-name", "n"];
            argv.extend(bad);
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
