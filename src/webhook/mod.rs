//! The admission webhook every replica serves (not only the leader: the API server may
//! call any of them): who may make MTAs bounce mail, and who wrote each incident
//! ([`admission`]), over HTTPS with certificates kept without a human ([`certificates`],
//! [`server`]).
//!
//! The certificates' Secret (`--webhook-secret`, in the operator's namespace) holds, in
//! PEM:
//! - `ca.crt`, `ca.key`: the CA that signs serving certificates now (`self` mode only);
//! - `tls.crt`, `tls.key`: the serving certificate and its key, what every replica serves;
//! - `ca-bundle.crt`: the CAs an API server must trust, the current one first; two during a
//!   CA rotation (`self` mode only). It is every webhook's caBundle.
//!
//! In `external` mode another tool (cert-manager) writes `tls.crt` and `tls.key` and
//! the caBundle; the operator only serves.

pub mod admission;
mod certificate_steps;
pub mod certificates;
mod pki;
pub mod server;

pub use certificates::{CertificateSettings, CertificateSource};
pub use server::WebhookServer;

use crate::Result;
use admission::{MUTATE_PATH, Reviewer};
use axum::{Json, Router, extract::State, routing::post};
use kube::{
    Client,
    core::{DynamicObject, admission::AdmissionReview},
};
use std::future::Future;

/// The CA's certificate.
pub const CA_CRT: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The serving certificate.
pub const TLS_CRT: &str = "tls.crt";
/// The serving certificate's private key.
pub const TLS_KEY: &str = "tls.key";
/// The CAs to trust: the caBundle.
pub const CA_BUNDLE: &str = "ca-bundle.crt";

/// The operator's field manager (the controller's too), owner of the caBundles it sets.
const FIELD_MANAGER: &str = "mail-incident-operator";

/// Keeps the webhook's certificates and serves its reviews at [`MUTATE_PATH`] until
/// `stop`. Returns once it serves (in `self` mode, once the first certificate is made).
pub async fn start(
    client: Client,
    namespace: &str,
    settings: &CertificateSettings,
    reviewer: Reviewer,
    stop: impl Future<Output = ()> + Clone + Send + 'static,
) -> Result<WebhookServer> {
    let tls = certificates::start(client, namespace, settings, stop.clone()).await?;
    let router = Router::new()
        .route(MUTATE_PATH, post(review))
        .with_state(reviewer);
    server::serve(settings.webhook_listen, tls, router, stop).await
}

async fn review(
    State(reviewer): State<Reviewer>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(reviewer.review(review).await)
}
