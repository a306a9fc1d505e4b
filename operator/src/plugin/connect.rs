//! The client and namespace from kubectl's flags, read as kubectl reads them: `--kubeconfig`,
//! else `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account; the context
//! `--context` or the current one; the namespace `-n` or the context's.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::plugin::cli::Connection;
use crate::plugin::error::PluginError;

/// A client for the cluster the flags name, and the namespace commands act in.
pub async fn connect(flags: &Connection) -> Result<(Client, String), PluginError> {
    let options = KubeConfigOptions {
        context: flags.context.clone(),
        ..Default::default()
    };
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PluginError::Kubeconfig {
        context: flags.context.clone(),
        source,
    };
    let config = match (&flags.kubeconfig, &flags.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| failed(Box::new(e)))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| failed(Box::new(e)))?
        }
        // A context can only be found in a kubeconfig: no in-cluster fallback then.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| failed(Box::new(e)))?,
        (None, None) => Config::infer().await.map_err(|e| failed(Box::new(e)))?,
    };
    let namespace = flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(PluginError::Client)?;
    Ok((client, namespace))
}
