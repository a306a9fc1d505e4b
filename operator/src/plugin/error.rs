//! Errors of `kubectl staticpodset`, each naming the object and the operation that failed. Every
//! one of them ends the command with exit code 1.

use std::time::Duration;

use staticpodset_api::SetKey;

/// Why a `kubectl staticpodset` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No usable kubeconfig (or in-cluster configuration) was found.
    #[error("loading the kubeconfig{}: {source}", context_note(.context))]
    Kubeconfig {
        /// The `--context` asked for, if any.
        context: Option<String>,
        /// What the loader reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The kubeconfig was read but no client could be built from it.
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] kube::Error),

    /// A request to the API server failed.
    #[error("{action}: {}", api_message(.source))]
    Api {
        /// What was being done, naming the object, e.g. `getting StaticPodSet ns/web`.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// The rollout will not finish without a change: the halt's or the invalid spec's message.
    #[error("{0}")]
    RolloutFailed(String),

    /// `rollout status --timeout` passed before the rollout finished.
    #[error("timed out after {after:?} waiting for StaticPodSet {set} to finish its rollout")]
    TimedOut {
        /// The set waited for.
        set: SetKey,
        /// The `--timeout` given.
        after: Duration,
    },

    /// The set was deleted while its rollout was watched.
    #[error("StaticPodSet {0} was deleted")]
    Deleted(SetKey),

    /// `rollout undo` or `rollout history --revision` named a revision the set does not have,
    /// or the set has none to roll back to.
    #[error("StaticPodSet {set}: {reason}")]
    Revision {
        /// The set.
        set: SetKey,
        /// What is missing.
        reason: crate::plugin::undo::UndoError,
    },

    /// `rollout pause` of a paused set, or `rollout resume` of a running one (as kubectl refuses
    /// both).
    #[error("staticpodsets.staticpods.dev \"{name}\" {state}")]
    PauseUnchanged {
        /// The set's name.
        name: String,
        /// `is already paused` or `is not paused`.
        state: &'static str,
    },

    /// A value could not be printed as JSON or YAML.
    #[error("printing {what} as {format}: {message}")]
    Output {
        /// What was printed.
        what: &'static str,
        /// `json` or `yaml`.
        format: &'static str,
        /// The serializer's error.
        message: String,
    },

    /// Writing to standard output failed (a closed pipe, a full disk).
    #[error("writing to standard output: {0}")]
    Stdout(#[source] std::io::Error),
}

/// The API server's own words when it answered, else the client's error: what kubectl prints.
pub fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn context_note(context: &Option<String>) -> String {
    context
        .as_deref()
        .map(|c| format!(" (context {c:?})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_quote_the_api_server() {
        let status = kube::core::Status::failure(
            "staticpodsets.staticpods.dev \"web\" not found",
            "NotFound",
        )
        .with_code(404);
        let error = PluginError::Api {
            action: "getting StaticPodSet ns/web".into(),
            source: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            error.to_string(),
            "getting StaticPodSet ns/web: staticpodsets.staticpods.dev \"web\" not found"
        );
    }
}
