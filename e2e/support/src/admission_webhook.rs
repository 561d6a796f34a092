//! The admission webhook of a test world, served in this test process. In a cluster every
//! operator replica serves it, reached through a Service; the operators tests start run
//! outside any pod network, where the API server cannot reach them by Service. So one
//! webhook per control plane runs here (as the operator's ServiceAccount, on 127.0.0.1
//! with a certificate naming that address, kept by the operator's own code), the webhook
//! configuration from `deploy/` is pointed at it by URL, and the test operators only
//! serve what its Secret holds (`--webhook-certificates external`).

use crate::world::{OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, World, service_account_kubeconfig};
use clap::Parser;
use futures::FutureExt;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use mail_incident_operator::{
    controller::signing_key,
    webhook::{self, CertificateSettings, admission::Reviewer},
};
use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The webhook configuration `deploy/` installs.
const CONFIGURATION: &str = "mail-incident-operator";

/// Its thread; stopped when dropped.
pub struct InProcessWebhook {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    webhook: CertificateSettings,
}

impl InProcessWebhook {
    /// Starts it for `world` (whose `deploy/` is installed), points the webhook
    /// configuration at it and returns once the API server's writes go through it.
    pub fn start(world: &World) -> Self {
        let (ready, port) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let owned = world.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the webhook");
            runtime.block_on(async move {
                let client = operator_client(&owned).await;
                let stop = async move {
                    stopped.await.ok();
                }
                .shared();
                let keys = signing_key::start(
                    client.clone(),
                    OPERATOR_NAMESPACE,
                    "e2e-webhook".into(),
                    stop.clone().boxed(),
                )
                .await
                .expect("the signing key loads");
                let settings = Settings::parse_from([
                    "webhook",
                    "--webhook-listen",
                    "127.0.0.1:0",
                    "--webhook-ip",
                    "127.0.0.1",
                ]);
                let reviewer = Reviewer {
                    client: client.clone(),
                    signing_key: keys,
                };
                let server = webhook::start(
                    client,
                    OPERATOR_NAMESPACE,
                    &settings.webhook,
                    reviewer,
                    stop,
                )
                .await
                .expect("the webhook serves");
                ready
                    .send(server.local_addr().port())
                    .expect("the test waits for the port");
                server.stopped().await;
            });
        });
        let port = port
            .recv_timeout(Duration::from_secs(60))
            .expect("the in-process webhook serves within 60 s");
        // Reached by URL: the Service reference goes, the caBundle the keeper set stays.
        world.kubectl_ok(&[
            "patch",
            "mutatingwebhookconfiguration",
            CONFIGURATION,
            "--type=json",
            "-p",
            &serde_json::json!([
                {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
                {"op": "add", "path": "/webhooks/0/clientConfig/url",
                 "value": format!("https://127.0.0.1:{port}/mutate-mailincidents")},
            ])
            .to_string(),
        ]);
        let webhook = Self {
            stop: Some(stop),
            thread: Some(thread),
            port,
        };
        wait_until_stamping(world);
        webhook
    }
}

impl Drop for InProcessWebhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

async fn operator_client(world: &World) -> Client {
    let text = service_account_kubeconfig(world, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
    let kubeconfig: Kubeconfig = serde_yaml::from_str(&text).expect("a kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    Client::try_from(config).expect("a client")
}

/// Waits (at most 60 s) until a dry-run creation of an incident comes back stamped: the
/// API server trusts the certificate (caBundle set) and calls the webhook.
fn wait_until_stamping(world: &World) {
    let probe = "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata: {name: webhook-probe, namespace: default}\n\
                 spec: {mode: TempFail, reason: probe, targets: {matchLabels: {app: none}}}\n";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = world.kubectl(
            &["create", "--dry-run=server", "-o", "yaml", "-f", "-"],
            Some(probe),
        );
        let printed = String::from_utf8_lossy(&output.stdout);
        if printed.contains("mailops.dev/admission") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API server never called the in-process webhook: {}{}",
            printed,
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
