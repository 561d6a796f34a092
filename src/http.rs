//! The HTTP endpoints of the controller and of the agent: `/metrics`, `/healthz` (the
//! process serves) and `/readyz` (it does its job).

use crate::{Error, Result};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::Registry;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Shared between the controller or the agent, which flips it, and `/readyz`, which
/// reads it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.set(true);
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Endpoints {
    registry: Registry,
    readiness: Readiness,
}

/// The running HTTP server; [`Server::stop`] ends it gracefully.
pub struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `address` now (so a port clash fails start-up) and serves in the background.
    pub async fn start(
        address: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| Error::Listen { address, source })?;
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(Endpoints {
                registry,
                readiness,
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                stopped.await.ok();
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        Ok(Self { stop, task })
    }

    /// Stops serving, letting requests in flight finish.
    pub async fn stop(self) {
        self.stop.send(()).ok();
        self.task.await.ok();
    }
}

async fn readyz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    if endpoints.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus::TextEncoder::new()
            .encode_to_string(&endpoints.registry.gather())
            .expect("metrics encode as text"),
    )
}
