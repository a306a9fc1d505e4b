//! The command line of `kubectl staticpodset`, following `kubectl rollout`'s flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use staticpodset_api::duration::parse_flag;

use crate::plugin::output::Format;

/// Rollouts and per-node state of StaticPodSets, as `kubectl rollout` shows them for
/// DaemonSets. Installed on the PATH as `kubectl-staticpodset`, it runs as
/// `kubectl staticpodset`.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-staticpodset",
    bin_name = "kubectl staticpodset",
    version
)]
pub struct Cli {
    /// Which cluster and namespace.
    #[command(flatten)]
    pub connection: Connection,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's flags that choose the cluster, the user and the namespace.
#[derive(Debug, Args)]
pub struct Connection {
    /// The namespace of the set; default: the kubeconfig context's namespace.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// The kubeconfig context to use; default: the current context.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// The kubeconfig file; default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the rollout of a StaticPodSet.
    Rollout {
        /// The rollout command.
        #[command(subcommand)]
        command: Rollout,
    },
    /// Per node: the revision the set asks for, the one the kubelet runs, the last failed one.
    Nodes {
        /// The StaticPodSet.
        set: String,
        /// Print the rows as json or yaml instead of a table.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Format>,
    },
}

/// The rollout commands.
#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// Watch the rollout until it completes (exit 0), halts at its progress deadline or the
    /// spec is invalid (exit 1), or --timeout passes (exit 1).
    Status {
        /// The StaticPodSet.
        set: String,
        /// How long to wait before giving up (e.g. 90s, 5m); 0 waits for ever.
        #[arg(long, default_value = "0s", value_parser = parse_flag)]
        timeout: Duration,
        /// Watch until the rollout ends; `--watch=false` prints the status once.
        #[arg(
            short = 'w',
            long,
            default_value_t = true,
            action = clap::ArgAction::Set,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true"
        )]
        watch: bool,
    },
    /// List the set's revisions (StaticPodRevisions), or show one revision's pod template.
    History {
        /// The StaticPodSet.
        set: String,
        /// Show the pod template of this revision number.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        revision: Option<i64>,
        /// Print as json or yaml: the rows, or with --revision the template.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Format>,
    },
    /// Roll back to an earlier revision (the previous one by default), through the
    /// staticpods.dev/rollback-to annotation the operator acts on.
    Undo {
        /// The StaticPodSet.
        set: String,
        /// The revision number to roll back to; 0 means the previous one.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        to_revision: i64,
    },
    /// Stop handing new revisions to nodes (spec.paused: true).
    Pause {
        /// The StaticPodSet.
        set: String,
    },
    /// Let a paused rollout go on (spec.paused: false).
    Resume {
        /// The StaticPodSet.
        set: String,
    },
    /// Redeploy the set as it is: a new staticpods.dev/restartedAt on the pod template makes a
    /// new revision, which every node restarts its pod for.
    Restart {
        /// The StaticPodSet.
        set: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kubectl-staticpodset").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_as_kubectl_takes_them() {
        let cli = parse(&["rollout", "status", "web", "-n", "ns", "--timeout", "5m"]);
        assert_eq!(cli.connection.namespace.as_deref(), Some("ns"));
        let Command::Rollout {
            command:
                Rollout::Status {
                    set,
                    timeout,
                    watch,
                },
        } = cli.command
        else {
            panic!("not rollout status");
        };
        assert_eq!(
            (set.as_str(), timeout, watch),
            ("web", Duration::from_secs(300), true)
        );

        // `--watch` takes its value after `=` only, so the set's name is never taken for it.
        let cli = parse(&["rollout", "status", "--watch", "web", "--context", "c"]);
        assert!(matches!(
            cli.command,
            Command::Rollout {
                command: Rollout::Status { watch: true, .. }
            }
        ));
        assert_eq!(cli.connection.context.as_deref(), Some("c"));
        let cli = parse(&["-n", "ns", "rollout", "status", "web", "--watch=false"]);
        assert!(matches!(
            cli.command,
            Command::Rollout {
                command: Rollout::Status { watch: false, .. }
            }
        ));

        let cli = parse(&[
            "rollout",
            "undo",
            "web",
            "--to-revision=2",
            "--kubeconfig",
            "/k",
        ]);
        assert!(matches!(
            cli.command,
            Command::Rollout {
                command: Rollout::Undo { to_revision: 2, .. }
            }
        ));
        let cli = parse(&["nodes", "web", "-o", "yaml"]);
        assert!(matches!(
            cli.command,
            Command::Nodes {
                output: Some(Format::Yaml),
                ..
            }
        ));
        let cli = parse(&["rollout", "history", "web", "--revision", "3", "-o", "json"]);
        assert!(matches!(
            cli.command,
            Command::Rollout {
                command: Rollout::History {
                    revision: Some(3),
                    output: Some(Format::Json),
                    ..
                }
            }
        ));
        assert!(
            Cli::try_parse_from(["k", "rollout", "history", "web", "--revision", "0"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["k", "rollout", "status", "web", "--timeout", "soon"]).is_err()
        );
    }
}
