//! The webhook's TLS against a real API server: the certificate keeper and the HTTPS
//! server run in this process on loopback (as a replica would), and the API server calls
//! them through a MutatingWebhookConfiguration of the test's own that fails closed and
//! matches only the test's labelled ConfigMaps. Each call adds a marker annotation, so a
//! created ConfigMap shows the webhook was called.

use axum::{
    Router,
    body::Bytes,
    http::header::{CONNECTION, CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::post,
};
use futures::{FutureExt, future::Shared};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration, core::v1::ConfigMap,
        core::v1::Secret,
    },
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use mail_incident_e2e_support::{
    support::{eventually_within, served_certificate},
    world::{TestNamespace, World, free_port, rand_suffix},
};
use mail_incident_operator::webhook::{
    self, CA_BUNDLE, CA_CRT, CA_KEY, CertificateSettings, CertificateSource, TLS_CRT, TLS_KEY,
    WebhookServer,
};
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::oneshot;

const MARKER: &str = "e2e.mailops.dev/webhook";
const SECRET: &str = "webhook-tls";
/// Short, so a whole CA rotation takes seconds rather than minutes.
const SETTLE_SECONDS: u64 = 2;
const BOUND: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_webhook_once_its_ca_bundle_is_set_and_a_deleted_one_comes_back() {
    let world = World::get();
    let ns = TestNamespace::new(world, "webhook-tls");
    let client = world.admin().await;
    let port = free_port();
    let hooks = WebhookConfiguration::create(world, &client, port).await;

    // Served, but without the caBundle (the keeper told of another configuration): the
    // API server does not trust the certificate, so it does verify it.
    let settings_elsewhere = settings_named(&format!("{}-other", hooks.name), port);
    let untrusted = Replica::start(&client, &ns.name, &settings_elsewhere, "untrusted").await;
    let refused = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &labelled_config_map("untrusted", &hooks.label),
        )
        .await
        .expect_err("refused: the webhook's certificate is not trusted yet");
    assert!(refused.to_string().contains("x509"), "{refused}");
    untrusted.stop().await;

    let replica = Replica::start(&client, &ns.name, &settings(&hooks, port), "replica-a").await;
    let bundle = secret_key(&client, &ns.name, CA_BUNDLE).await;
    hooks.wait_for_ca_bundle(&client, &bundle).await;
    let created = eventually_admitted(&client, &ns.name, &hooks).await;
    assert_eq!(marker(&created), Some("replica-a"));

    // By hand, as `kubectl edit` would: the caBundle goes, calls fail; it is put back.
    let remove = json!([{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            &hooks.name,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(remove).unwrap()),
        )
        .await
        .expect("caBundle removed by hand");
    hooks.wait_for_ca_bundle(&client, &bundle).await;
    let created = eventually_admitted(&client, &ns.name, &hooks).await;
    assert_eq!(marker(&created), Some("replica-a"));

    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_refused_while_the_serving_certificate_is_renewed_and_the_ca_rotates() {
    let world = World::get();
    let ns = TestNamespace::new(world, "webhook-rotate");
    let client = world.admin().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let port = free_port();
    let hooks = WebhookConfiguration::create(world, &client, port).await;
    let replica = Replica::start(&client, &ns.name, &settings(&hooks, port), "replica-a").await;
    hooks
        .wait_for_ca_bundle(&client, &secret_key(&client, &ns.name, CA_BUNDLE).await)
        .await;
    eventually_admitted(&client, &ns.name, &hooks).await;
    let mut served = served_certificate_of_secret(&client, &ns.name, port, None).await;

    let load = Load::start(
        Api::namespaced(client.clone(), &ns.name),
        hooks.label.clone(),
    );

    // An expired serving certificate, then one for another name, both from the CA: each
    // is refused by the server (it keeps serving the one it had) and renewed.
    for (what, dns, ended) in [
        ("expired", "mail-incident-operator-webhook.x.svc", true),
        ("misnamed", "wrong.example", false),
    ] {
        let ca_crt = secret_key(&client, &ns.name, CA_CRT).await;
        let ca_key = secret_key(&client, &ns.name, CA_KEY).await;
        let (crt, key) = serving_certificate(&ca_crt, &ca_key, dns, ended);
        rewrite_secret(&secrets, |data| {
            data.insert(TLS_CRT.into(), ByteString(crt.clone()));
            data.insert(TLS_KEY.into(), ByteString(key.clone()));
        })
        .await;
        let renewed = served_certificate_of_secret(&client, &ns.name, port, Some(&served)).await;
        assert_ne!(
            renewed,
            first_der(&crt),
            "{what}: the planted certificate is not served"
        );
        served = renewed;
    }

    // A CA with a third of its life left planted as the current one, the keeper's CA
    // still trusted beside it and still signing the served certificate: the keeper moves
    // the serving certificate to it, drops the old CA, then rotates it for a new one.
    let keeper_ca = first_der(&secret_key(&client, &ns.name, CA_CRT).await);
    // 300 days into a life of 330: less than a third left.
    let (near_crt, near_key) = certificate_authority(300, 30);
    rewrite_secret(&secrets, |data| {
        let bundle = [near_crt.clone(), data[CA_BUNDLE].0.clone()].concat();
        data.insert(CA_CRT.into(), ByteString(near_crt.clone()));
        data.insert(CA_KEY.into(), ByteString(near_key.clone()));
        data.insert(CA_BUNDLE.into(), ByteString(bundle));
    })
    .await;
    let near_ca = first_der(&near_crt);
    let rotated = eventually_within(BOUND, "the CA rotated twice, to a CA trusted alone", || {
        let client = client.clone();
        let ns = ns.name.clone();
        let (near_ca, keeper_ca) = (near_ca.clone(), keeper_ca.clone());
        async move {
            let ca = first_der(&secret_key(&client, &ns, CA_CRT).await);
            let bundle = pem_certificates(&secret_key(&client, &ns, CA_BUNDLE).await);
            (ca != near_ca && ca != keeper_ca && bundle == [ca.clone()]).then_some(ca)
        }
    })
    .await;
    hooks
        .wait_for_ca_bundle(&client, &secret_key(&client, &ns.name, CA_BUNDLE).await)
        .await;
    let last = served_certificate_of_secret(&client, &ns.name, port, Some(&served)).await;
    assert_ne!(last, served);
    assert_ne!(rotated, keeper_ca);

    // Calls on fresh connections after the last caBundle change, then the tally.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    eprintln!(
        "webhook rotation: {} ConfigMaps admitted through the webhook, {} refused, {} unmarked",
        tally.admitted,
        tally.refused.len(),
        tally.unmarked
    );
    assert!(tally.refused.is_empty(), "refused: {:#?}", tally.refused);
    assert_eq!(tally.unmarked, 0, "created without the webhook's marker");
    assert!(
        tally.admitted >= 50,
        "too few calls to tell: {}",
        tally.admitted
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_converge_on_one_secret() {
    let world = World::get();
    let ns = TestNamespace::new(world, "webhook-replicas");
    let client = world.admin().await;
    // No such configuration: nothing to publish to, which stops nothing.
    let absent = format!("e2e-webhook-tls-absent-{:06x}", rand_suffix());
    let (port_a, port_b) = (free_port(), free_port());
    let (settings_a, settings_b) = (
        settings_named(&absent, port_a),
        settings_named(&absent, port_b),
    );
    let (a, b) = tokio::join!(
        Replica::start(&client, &ns.name, &settings_a, "replica-a"),
        Replica::start(&client, &ns.name, &settings_b, "replica-b"),
    );
    let served_a = served_certificate_of_secret(&client, &ns.name, port_a, None).await;
    let served_b = served_certificate_of_secret(&client, &ns.name, port_b, None).await;
    assert_eq!(
        served_a, served_b,
        "both replicas serve the Secret's one certificate"
    );

    // Settled: neither rewrites what the other wrote.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let version = secrets.get(SECRET).await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secrets.get(SECRET).await.unwrap().metadata.resource_version,
        version
    );
    tokio::join!(a.stop(), b.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_external_mode_the_secret_is_served_as_another_tool_keeps_it_and_nothing_is_written() {
    let world = World::get();
    let ns = TestNamespace::new(world, "webhook-external");
    let client = world.admin().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let port = free_port();
    let hooks = WebhookConfiguration::create(world, &client, port).await;
    // As cert-manager leaves it: tls.crt and tls.key, with the CA beside them in ca.crt.
    let (ca_crt, ca_key) = certificate_authority(1, 365);
    let (first_crt, first_key) = serving_certificate(&ca_crt, &ca_key, "hook.example", false);
    let planted: Secret = serde_json::from_value(json!({
        "metadata": {"name": SECRET},
        "type": "kubernetes.io/tls",
        "data": {
            CA_CRT: ByteString(ca_crt.clone()),
            TLS_CRT: ByteString(first_crt.clone()),
            TLS_KEY: ByteString(first_key),
        },
    }))
    .expect("a TLS Secret");
    secrets
        .create(&PostParams::default(), &planted)
        .await
        .expect("Secret planted");
    let settings = CertificateSettings {
        webhook_certificates: CertificateSource::External,
        ..settings(&hooks, port)
    };
    let replica = Replica::start(&client, &ns.name, &settings, "external").await;
    let served = |expected: Vec<u8>| {
        let ca_crt = ca_crt.clone();
        async move {
            let served =
                served_certificate((Ipv4Addr::LOCALHOST, port).into(), "127.0.0.1", &ca_crt)
                    .await?;
            (served == expected).then_some(())
        }
    };
    eventually_within(BOUND, "the planted certificate served", || {
        served(first_der(&first_crt))
    })
    .await;

    // Renewed by the other tool: served in its place.
    let (second_crt, second_key) = serving_certificate(&ca_crt, &ca_key, "hook.example", false);
    rewrite_secret(&secrets, |data| {
        data.insert(TLS_CRT.into(), ByteString(second_crt.clone()));
        data.insert(TLS_KEY.into(), ByteString(second_key.clone()));
    })
    .await;
    eventually_within(BOUND, "the renewed certificate served", || {
        served(first_der(&second_crt))
    })
    .await;

    // Nothing written: the Secret stays as the other tool left it, caBundle unset.
    let version = secrets.get(SECRET).await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        secrets.get(SECRET).await.unwrap().metadata.resource_version,
        version
    );
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&hooks.name)
        .await
        .unwrap();
    let webhook = &configuration.webhooks.unwrap()[0];
    assert_eq!(webhook.client_config.ca_bundle, None);
    replica.stop().await;
}

fn settings(hooks: &WebhookConfiguration, port: u16) -> CertificateSettings {
    settings_named(&hooks.name, port)
}

fn settings_named(configuration: &str, port: u16) -> CertificateSettings {
    CertificateSettings {
        webhook_listen: (Ipv4Addr::LOCALHOST, port).into(),
        webhook_secret: SECRET.into(),
        webhook_service: "mail-incident-operator-webhook".into(),
        webhook_ips: vec![Ipv4Addr::LOCALHOST.into()],
        webhook_configurations: vec![configuration.into()],
        webhook_certificates: CertificateSource::Operator,
        webhook_rotation_settle_seconds: SETTLE_SECONDS,
    }
}

/// The keeper and the server of one replica, stopped when dropped.
struct Replica {
    stop: oneshot::Sender<()>,
    server: WebhookServer,
}

impl Replica {
    async fn start(
        client: &Client,
        namespace: &str,
        settings: &CertificateSettings,
        marker: &str,
    ) -> Self {
        // The keeper's log, shown when a test fails.
        tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("mail_incident_operator::webhook=debug")
            .try_init()
            .ok();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped: Shared<_> = async move {
            stopped.await.ok();
        }
        .boxed()
        .shared();
        let tls = tokio::time::timeout(
            BOUND,
            webhook::certificates::start(client.clone(), namespace, settings, stopped.clone()),
        )
        .await
        .expect("a certificate to serve within the bound")
        .expect("certificate keeping starts");
        let server = webhook::server::serve(settings.webhook_listen, tls, router(marker), stopped)
            .await
            .expect("the webhook server binds");
        Self { stop, server }
    }

    async fn stop(self) {
        drop(self.stop);
        tokio::time::timeout(Duration::from_secs(15), self.server.stopped())
            .await
            .expect("the webhook server stops within its grace period");
    }
}

/// Allows every object, adding the annotation [`MARKER`] = `marker`.
fn router(marker: &str) -> Router {
    let marker = marker.to_string();
    Router::new().route(
        "/mutate",
        post(move |body: Bytes| {
            let marker = marker.clone();
            async move { admit(&body, &marker) }
        }),
    )
}

fn admit(body: &[u8], marker: &str) -> Response {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let request = &review["request"];
    let patch = if request["object"]["metadata"]["annotations"].is_object() {
        let path = format!("/metadata/annotations/{}", MARKER.replace('/', "~1"));
        json!([{"op": "add", "path": path, "value": marker}])
    } else {
        json!([{"op": "add", "path": "/metadata/annotations", "value": {MARKER: marker}}])
    };
    let response = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": ByteString(patch.to_string().into_bytes()),
        },
    });
    // A new connection, so a new TLS handshake, for every call: each call checks the
    // certificate served then against the caBundle the API server holds then.
    let headers = [(CONTENT_TYPE, "application/json"), (CONNECTION, "close")];
    (headers, response.to_string()).into_response()
}

/// A MutatingWebhookConfiguration of the test's own, with no caBundle, failing closed,
/// for the creation of ConfigMaps carrying its unique label; deleted when dropped.
struct WebhookConfiguration {
    name: String,
    label: String,
    world: &'static World,
}

impl WebhookConfiguration {
    async fn create(world: &'static World, client: &Client, port: u16) -> Self {
        let label = format!("{:06x}", rand_suffix());
        let name = format!("e2e-webhook-tls-{label}");
        let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "tls.e2e.mailops.dev",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["configmaps"],
                }],
                "objectSelector": {"matchLabels": {"e2e.mailops.dev/webhook-tls": label}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        }))
        .expect("a webhook configuration");
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &configuration)
            .await
            .expect("webhook configuration created");
        Self { name, label, world }
    }

    async fn wait_for_ca_bundle(&self, client: &Client, bundle: &[u8]) {
        let configurations = Api::<MutatingWebhookConfiguration>::all(client.clone());
        eventually_within(BOUND, "caBundle set to the Secret's bundle", || {
            let configurations = configurations.clone();
            async move {
                let configuration = configurations.get(&self.name).await.ok()?;
                let webhook = configuration.webhooks?.into_iter().next()?;
                (webhook.client_config.ca_bundle?.0 == bundle).then_some(())
            }
        })
        .await;
    }
}

impl Drop for WebhookConfiguration {
    fn drop(&mut self) {
        // Left behind, it would refuse this test's ConfigMaps only, but clutter the cluster.
        self.world.kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--wait=false",
            ],
            None,
        );
    }
}

fn labelled_config_map(name: &str, label: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"e2e.mailops.dev/webhook-tls": label}},
        "data": {"k": "v"},
    }))
    .expect("a ConfigMap")
}

fn marker(config_map: &ConfigMap) -> Option<&str> {
    config_map
        .metadata
        .annotations
        .as_ref()?
        .get(MARKER)
        .map(String::as_str)
}

/// A labelled ConfigMap created through the webhook, trying until the API server uses the
/// caBundle it was just given.
async fn eventually_admitted(
    client: &Client,
    namespace: &str,
    hooks: &WebhookConfiguration,
) -> ConfigMap {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let attempt = std::sync::atomic::AtomicU32::new(0);
    eventually_within(BOUND, "a ConfigMap admitted by the webhook", || {
        let name = format!("probe-{}", attempt.fetch_add(1, Ordering::Relaxed));
        let config_maps = config_maps.clone();
        let config_map = labelled_config_map(&name, &hooks.label);
        async move {
            config_maps
                .create(&PostParams::default(), &config_map)
                .await
                .ok()
        }
    })
    .await
}

/// Labelled ConfigMaps created one every 50 ms until stopped (two minutes at most).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

#[derive(Default)]
struct Tally {
    admitted: usize,
    unmarked: usize,
    refused: Vec<String>,
}

impl Load {
    fn start(config_maps: Api<ConfigMap>, label: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(120);
            for i in 0.. {
                if stopping.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let config_map = labelled_config_map(&format!("load-{i}"), &label);
                match config_maps
                    .create(&PostParams::default(), &config_map)
                    .await
                {
                    Ok(created) if marker(&created).is_some() => tally.admitted += 1,
                    Ok(_) => tally.unmarked += 1,
                    Err(error) => tally.refused.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tally
        });
        Self { stop, task }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load loop ends")
    }
}

/// Waits until the server on `port` serves the Secret's tls.crt, and it differs from
/// `other`; returns it (DER). The connection trusts only the Secret's bundle and checks
/// the name 127.0.0.1, as the API server would.
async fn served_certificate_of_secret(
    client: &Client,
    namespace: &str,
    port: u16,
    other: Option<&[u8]>,
) -> Vec<u8> {
    eventually_within(
        BOUND,
        "the Secret's new certificate served",
        || async move {
            let stored = first_der(&secret_key(client, namespace, TLS_CRT).await);
            let bundle = secret_key(client, namespace, CA_BUNDLE).await;
            let served =
                served_certificate((Ipv4Addr::LOCALHOST, port).into(), "127.0.0.1", &bundle)
                    .await?;
            (served == stored && Some(&served[..]) != other).then_some(served)
        },
    )
    .await
}

async fn secret_key(client: &Client, namespace: &str, key: &str) -> Vec<u8> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(SECRET)
        .await
        .expect("the webhook's Secret");
    secret
        .data
        .and_then(|mut data| data.remove(key))
        .unwrap_or_else(|| panic!("the Secret has no {key}"))
        .0
}

/// Changes the Secret's data as `change` says, at the version read (again on conflict).
async fn rewrite_secret(
    secrets: &Api<Secret>,
    change: impl Fn(&mut std::collections::BTreeMap<String, ByteString>),
) {
    for _ in 0..10 {
        let mut secret = secrets.get(SECRET).await.expect("the webhook's Secret");
        change(secret.data.get_or_insert_default());
        match secrets
            .replace(SECRET, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => panic!("rewrite the Secret: {error}"),
        }
    }
    panic!("the Secret kept changing under the test");
}

fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .map(|der| der.expect("PEM certificate").to_vec())
        .collect()
}

fn first_der(pem: &[u8]) -> Vec<u8> {
    pem_certificates(pem).remove(0)
}

/// A serving certificate for `dns` and 127.0.0.1 from the CA given, valid for 30 days, or
/// ended yesterday.
fn serving_certificate(ca_crt: &[u8], ca_key: &[u8], dns: &str, ended: bool) -> (Vec<u8>, Vec<u8>) {
    let ca_key = KeyPair::from_pem(std::str::from_utf8(ca_key).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(std::str::from_utf8(ca_crt).unwrap(), ca_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(vec![dns.to_string(), Ipv4Addr::LOCALHOST.to_string()]).unwrap();
    let now = SystemTime::now();
    (params.not_before, params.not_after) = if ended {
        ((now - 31 * DAY).into(), (now - DAY).into())
    } else {
        ((now - DAY).into(), (now + 30 * DAY).into())
    };
    let certificate = params.signed_by(&key, &issuer).unwrap();
    (
        certificate.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
}

/// A CA that began `days_ago` and ends in `days_left`: its certificate and key.
fn certificate_authority(days_ago: u32, days_left: u32) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - days_ago * DAY).into();
    params.not_after = (now + days_left * DAY).into();
    let certificate = params.self_signed(&key).unwrap();
    (
        certificate.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
}
