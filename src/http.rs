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

/// Shared between the controller, which flips it, and `/readyz`, which reads it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
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

/// Binds `address` now (so a port clash fails start-up) and serves until `shutdown`.
pub async fn serve(
    address: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
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
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "HTTP server failed");
        }
    }))
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
