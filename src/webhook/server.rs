//! The webhook's HTTPS server: an axum router served over rustls (ring, the provider the
//! Kubernetes client uses too), with a certificate swapped in place by
//! [`super::certificates`].

use crate::{Error, Result};
use axum_server::{Handle, tls_rustls::RustlsConfig};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

/// How long requests in flight may go on after `stop`: an API server gives a webhook at
/// most 30 s, and usually 10 or less.
const GRACE: Duration = Duration::from_secs(10);

/// The running server.
pub struct WebhookServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookServer {
    /// Where it listens (the port given, or the one picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Waits until it has stopped: `stop` resolved and the requests in flight finished
    /// (or [`GRACE`] passed).
    pub async fn stopped(self) {
        self.task.await.ok();
    }
}

/// Binds now (a clash fails start-up) and serves `router` over TLS until `stop`;
/// connections in flight finish.
pub async fn serve(
    listen: SocketAddr,
    tls: RustlsConfig,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<WebhookServer> {
    let listening = |source| Error::Listen {
        address: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listening)?
        .into_std()
        .map_err(listening)?;
    let address = listener.local_addr().map_err(listening)?;
    let handle = Handle::new();
    let server = axum_server::tls_rustls::from_tcp_rustls(listener, tls)
        .map_err(listening)?
        .http1_only()
        .handle(handle.clone());
    let task = tokio::spawn(async move {
        let serving = server.serve(router.into_make_service());
        tokio::pin!(serving);
        let served = tokio::select! {
            served = &mut serving => served,
            () = stop => {
                handle.graceful_shutdown(Some(GRACE));
                serving.await
            }
        };
        if let Err(error) = served {
            tracing::error!(%error, %address, "webhook server failed");
        }
    });
    Ok(WebhookServer { address, task })
}

/// A TLS configuration serving the PEM certificate chain `cert` with the PEM private key
/// `key`; why not, when they are no such thing or do not match.
pub(crate) fn server_config(cert: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("tls.crt: {error}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| format!("tls.key: {error}"))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| error.to_string())?;
    // HTTP/1.1 only, as controller-runtime's webhook servers by default: HTTP/2's rapid
    // reset (CVE-2023-44487) lets one client keep a server busy cheaply.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::pki::tests::{fresh_material, now};

    #[test]
    fn a_matching_certificate_and_key_make_a_config_and_anything_else_is_named() {
        let material = fresh_material(now());
        let other = fresh_material(now());
        assert!(server_config(&material.tls_crt, &material.tls_key).is_ok());
        assert!(server_config(&material.tls_crt, &other.tls_key).is_err());
        assert_eq!(
            server_config(b"", &material.tls_key).unwrap_err(),
            "tls.crt holds no certificate"
        );
        assert!(server_config(&material.tls_crt, b"junk").is_err());
    }
}
