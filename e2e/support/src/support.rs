//! Helpers the e2e tests share: waiting on incidents, applying manifests with kubectl,
//! creating MTA workloads.

use crate::world::World;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, api::PostParams};
use mail_incident_operator::api::{
    MailIncident, MailIncidentStatus,
    mode_document::{MODE_DOCUMENT_KEY, ModeDocument, document_name},
};
use serde_json::json;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

/// Polls the incident until `done` holds; on timeout, panics showing what it last saw.
pub async fn wait_for(
    api: &Api<MailIncident>,
    name: &str,
    what: &str,
    done: impl Fn(&MailIncident) -> bool,
) -> MailIncident {
    wait_for_within(WAIT, api, name, what, done).await
}

/// [`wait_for`] with a bound of its own.
pub async fn wait_for_within(
    bound: Duration,
    api: &Api<MailIncident>,
    name: &str,
    what: &str,
    done: impl Fn(&MailIncident) -> bool,
) -> MailIncident {
    let deadline = Instant::now() + bound;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(incident) = api.get_opt(name).await.expect("get incident") {
            if done(&incident) {
                return incident;
            }
            last = Some(incident);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name}: not {what} within {bound:?}; last status:\n{}",
        serde_yaml::to_string(&last.and_then(|i| i.status)).unwrap()
    );
}

/// Polls `probe` until it yields a value; on timeout, panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(WAIT, what, probe).await
}

/// [`eventually`] with a bound of its own.
pub async fn eventually_within<T, F, Fut>(bound: Duration, what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not {what} within {bound:?}");
}

/// The mode document stored for a workload, if any.
pub async fn mode_document(
    client: &Client,
    namespace: &str,
    kind: &str,
    workload: &str,
) -> Option<ModeDocument> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let stored = config_maps
        .get_opt(&document_name(kind, workload))
        .await
        .expect("get mode document")?;
    let text = stored.data?.remove(MODE_DOCUMENT_KEY)?;
    Some(serde_json::from_str(&text).expect("a stored mode document parses"))
}

/// The last `lines` lines of `text` (a process's log, say).
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn status(incident: &MailIncident) -> &MailIncidentStatus {
    incident.status.as_ref().expect("incident has a status")
}

pub fn condition<'a>(
    incident: &'a MailIncident,
    kind: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    incident
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

pub fn observed(incident: &MailIncident) -> bool {
    incident.status.as_ref().and_then(|s| s.observed_generation) == incident.metadata.generation
}

pub fn summary(incident: &MailIncident) -> Option<&str> {
    incident
        .status
        .as_ref()?
        .targets
        .as_ref()
        .map(|t| t.summary.as_str())
}

/// `kubectl apply`, validated by kubectl against the schema the server publishes, so a
/// misspelt field is refused rather than silently dropped.
pub fn apply_yaml(world: &World, namespace: &str, yaml: &str) {
    let output = world.kubectl(&["apply", "-n", namespace, "-f", "-"], Some(yaml));
    assert!(
        output.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kubectl apply` of a MailIncident named `name` with the spec given as YAML.
pub fn apply_incident(world: &World, namespace: &str, name: &str, spec: &str) {
    apply_yaml(world, namespace, &incident_yaml(name, spec));
}

/// Whether the incident's current generation is Ready for `reason`.
pub fn ready_because(reason: &'static str) -> impl Fn(&MailIncident) -> bool {
    move |i| observed(i) && condition(i, "Ready").is_some_and(|c| c.0 == "True" && c.1 == reason)
}

pub fn incident_yaml(name: &str, spec: &str) -> String {
    let spec = spec.lines().map(|l| format!("  {l}\n")).collect::<String>();
    format!(
        "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// Where an MTA workload keeps its queue directory (/var/spool/postfix).
pub enum Queue {
    /// A PersistentVolumeClaim (a volume claim template for a StatefulSet).
    Claim,
    /// An emptyDir: lost on restart.
    EmptyDir,
}

/// An MTA workload to create: a Deployment or StatefulSet with one `postfix` container.
pub struct Mta {
    kind: &'static str,
    name: String,
    labels: serde_json::Value,
    annotations: serde_json::Value,
    replicas: i32,
    queue: Queue,
}

impl Mta {
    pub fn deployment(name: &str, labels: serde_json::Value) -> Self {
        Self::new("Deployment", name, labels)
    }

    pub fn statefulset(name: &str, labels: serde_json::Value) -> Self {
        Self::new("StatefulSet", name, labels)
    }

    fn new(kind: &'static str, name: &str, labels: serde_json::Value) -> Self {
        Self {
            kind,
            name: name.into(),
            labels,
            annotations: json!({}),
            replicas: 1,
            queue: Queue::Claim,
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations[key] = value.into();
        self
    }

    pub fn replicas(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        self
    }

    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = queue;
        self
    }

    pub async fn create(self, client: &Client, namespace: &str) {
        let name = &self.name;
        let mount = json!([{"name": "queue", "mountPath": "/var/spool/postfix"}]);
        let mut pod = json!({"containers": [{
            "name": "postfix", "image": "registry.invalid/postfix:3.7", "volumeMounts": mount,
        }]});
        let mut spec = json!({
            "replicas": self.replicas,
            "selector": {"matchLabels": {"workload": name}},
        });
        match (self.kind, self.queue) {
            (_, Queue::EmptyDir) => pod["volumes"] = json!([{"name": "queue", "emptyDir": {}}]),
            ("StatefulSet", Queue::Claim) => {
                spec["volumeClaimTemplates"] = json!([{
                    "metadata": {"name": "queue"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }]);
            }
            (_, Queue::Claim) => {
                pod["volumes"] = json!([{"name": "queue", "persistentVolumeClaim": {"claimName": format!("{name}-queue")}}]);
            }
        }
        spec["template"] = json!({"metadata": {"labels": {"workload": name}}, "spec": pod});
        let object = json!({
            "metadata": {"name": name, "labels": self.labels, "annotations": self.annotations},
            "spec": spec,
        });
        let created = match self.kind {
            "Deployment" => create::<Deployment>(client, namespace, object)
                .await
                .map(drop),
            _ => {
                let mut object = object;
                object["spec"]["serviceName"] = name.as_str().into();
                create::<StatefulSet>(client, namespace, object)
                    .await
                    .map(drop)
            }
        };
        created.unwrap_or_else(|e| panic!("create {} {name}: {e}", self.kind));
    }
}

async fn create<K>(
    client: &Client,
    namespace: &str,
    object: serde_json::Value,
) -> Result<K, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).expect("workload object");
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
}

/// The certificate a TLS server at `address` presents for `server_name` (a DNS name or an
/// IP address), if it is one `bundle` (PEM CAs) vouches for; None when the handshake
/// fails or takes over 5 s.
pub async fn served_certificate(
    address: std::net::SocketAddr,
    server_name: &str,
    bundle: &[u8],
) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle) {
        roots.add(ca.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).ok()?;
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()
    };
    let tls = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .ok()??;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}
