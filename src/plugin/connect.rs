//! Reaching the cluster as kubectl does: the kubeconfig (`--kubeconfig`, else
//! `$KUBECONFIG`, else `~/.kube/config`), its context (`--context`, else the current one)
//! and namespace (`-n`, else the context's, else `default`).

use super::{ConnectionArgs, PluginError};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client and the namespace commands work in.
pub struct Connection {
    pub client: Client,
    pub namespace: String,
}

impl Connection {
    pub async fn open(args: &ConnectionArgs) -> Result<Self, PluginError> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    PluginError::Connect(format!("cannot read {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| PluginError::Connect(e.to_string()))?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| PluginError::Connect(e.to_string()))?;
        Ok(Self { client, namespace })
    }
}
