//! Logging setup: human-readable text or one JSON object per line.

use tracing_subscriber::EnvFilter;

/// Log line format, chosen with `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG`, defaulting to
/// `info` for us and `warn` for the libraries (kube's watch restarts are noisy at info).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,staticpodset_operator=info,kube_lease_manager=info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
