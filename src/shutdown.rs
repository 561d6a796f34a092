//! Graceful shutdown, for the controller and the agent alike.

use tracing::info;

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received; shutting down"),
    }
}
