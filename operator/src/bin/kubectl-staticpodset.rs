//! `kubectl-staticpodset`: the kubectl plugin (`kubectl staticpodset rollout status web`).
//! Exit codes as kubectl's: 0 success, 1 any failure (usage errors included).

use std::process::ExitCode;

use clap::Parser;
use staticpodset_operator::plugin::cli::Cli;
use staticpodset_operator::plugin::commands;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not failures; everything else clap refuses is.
            let failed = e.use_stderr();
            let _ = e.print();
            return if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
