//! Command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use staticpodset_api::duration::parse_flag;

use crate::telemetry::LogFormat;

/// The StaticPodSet operator: distributes StaticPodSets to their nodes' agents through one
/// NodeStaticPods object per node, and reports the nodes' state in each set's status.
#[derive(Debug, Parser)]
#[command(name = "staticpodset-operator", version)]
pub struct Args {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9101")]
    pub http_addr: SocketAddr,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Run the controllers only while holding the Lease; `--leader-elect=false` for a single
    /// replica or local runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "staticpodset-operator")]
    pub lease_name: String,

    /// Namespace of the Lease; defaults to the pod's namespace (POD_NAMESPACE, from the downward
    /// API), then to the client's default namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Namespace of the configuration bundles: the Secrets into which the operator copies the
    /// ConfigMap and Secret data of sets, and which node agents read. Defaults like
    /// --lease-namespace. Agents must be given the same namespace.
    #[arg(long, env = "CONFIG_NAMESPACE")]
    pub config_namespace: Option<String>,

    /// Lease duration in seconds: how long a leader that stopped renewing blocks the others.
    /// The leader renews a third of it before expiry and steps down on its own before expiry
    /// when it cannot renew.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,

    /// A set being deleted for this long stops waiting for nodes whose agents have not let go of
    /// it (deleted and not-Ready nodes are skipped at once). E.g. 300s, 5m, 1h.
    #[arg(long, default_value = "5m", value_parser = parse_flag)]
    pub node_gone_timeout: Duration,

    /// NodeStaticPods writes in flight, over all sets (each carries every set's change to one
    /// node).
    #[arg(long, default_value_t = 16)]
    pub node_write_concurrency: usize,

    /// How long a set's reconcile waits for more events about it before it runs (trailing
    /// debounce; each event restarts the wait). Every hop of a rollout (a node's report, the
    /// next node's entry) waits this long once, so it is kept short; bursts within it still make
    /// one reconcile. 0 turns it off. E.g. 100ms, 1s.
    #[arg(long, default_value = "100ms", value_parser = parse_flag)]
    pub reconcile_debounce: Duration,

    /// StaticPodSets reconciled in parallel.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,

    /// Every set is reconciled at least this often, as a safety net for missed events.
    #[arg(long, default_value = "5m", value_parser = parse_flag)]
    pub resync: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["staticpodset-operator"]).unwrap();
        assert_eq!(a.http_addr, "0.0.0.0:9101".parse().unwrap());
        assert!(a.leader_elect);
        assert_eq!(a.lease_name, "staticpodset-operator");
        assert_eq!(a.node_gone_timeout, Duration::from_secs(300));
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.reconcile_debounce, Duration::from_millis(100));
        let off =
            Args::try_parse_from(["staticpodset-operator", "--reconcile-debounce", "0"]).unwrap();
        assert_eq!(off.reconcile_debounce, Duration::ZERO);
    }

    #[test]
    fn leader_election_can_be_turned_off() {
        let a =
            Args::try_parse_from(["x", "--leader-elect=false", "--log-format", "json"]).unwrap();
        assert!(!a.leader_elect);
        assert_eq!(a.log_format, LogFormat::Json);
        let a = Args::try_parse_from(["x", "--leader-elect"]).unwrap();
        assert!(a.leader_elect);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_flag("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_flag("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_flag("5x").is_err());
        assert!(parse_flag("m").is_err());
        assert!(parse_flag("").is_err());
        assert!(parse_flag(&format!("{}h", u64::MAX)).is_err());
    }
}
