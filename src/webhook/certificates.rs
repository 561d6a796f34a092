//! Keeping the webhook's certificates: every replica watches the Secret (and, when it
//! keeps its own CA, the MutatingWebhookConfigurations), asks [`decide`] what the Secret
//! needs, writes it with optimistic concurrency, publishes the CA bundle as caBundle and
//! swaps the served certificate in place. Replicas race safely: a write is a create or a
//! replace at the resource version observed, and the loser takes the winner's Secret.

use super::{
    CA_BUNDLE, CA_CRT, CA_KEY, FIELD_MANAGER, TLS_CRT, TLS_KEY,
    certificate_steps::{self, Step},
    pki::{self, Material, Names, Stored},
    server::server_config,
};
use crate::{
    Error, Result,
    retry::{WatchBackoff, retry_delays},
};
use axum_server::tls_rustls::RustlsConfig;
use futures::{FutureExt, StreamExt, stream::BoxStream};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use kube::{
    Api, Client, Resource,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    future::Future,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{sync::oneshot, time::Instant};
use tracing::{debug, info, warn};

/// Every replica looks at least this often, whatever its watches say.
const RESYNC: Duration = Duration::from_secs(60);
/// Waits before looking again after a failed look.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LONGEST: Duration = Duration::from_secs(60);
/// Writes one look makes at most (a creation is one; a rotation step is one per look).
const WRITES_PER_LOOK: usize = 4;

/// Who keeps the certificate the webhook serves.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertificateSource {
    /// The operator makes and rotates its CA and serving certificate, and sets caBundle.
    #[default]
    #[value(name = "self")]
    Operator,
    /// Another tool (cert-manager) keeps tls.crt/tls.key in the Secret, and caBundle
    /// (its cainjector): the operator only serves what the Secret holds.
    External,
}

/// Command-line settings of the webhook's TLS.
#[derive(clap::Args, Debug, Clone)]
pub struct CertificateSettings {
    /// Address the webhook serves HTTPS on.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub webhook_listen: SocketAddr,

    /// Secret (in the operator's namespace) holding the webhook's CA and serving
    /// certificate: ca.crt, ca.key, tls.crt, tls.key and ca-bundle.crt.
    #[arg(long, default_value = "mail-incident-operator-webhook-tls")]
    pub webhook_secret: String,

    /// Service the API server calls the webhook through: the certificate names
    /// <service>.<namespace>.svc (and .svc.cluster.local).
    #[arg(long, default_value = "mail-incident-operator-webhook")]
    pub webhook_service: String,

    /// Extra IP addresses in the certificate (a webhook reached by URL, e.g. 127.0.0.1
    /// out of cluster). Repeatable.
    #[arg(long = "webhook-ip")]
    pub webhook_ips: Vec<IpAddr>,

    /// MutatingWebhookConfigurations whose webhooks get the CA bundle as caBundle.
    /// Repeatable.
    #[arg(
        long = "webhook-configuration",
        default_value = "mail-incident-operator"
    )]
    pub webhook_configurations: Vec<String>,

    /// `self`: the operator makes and rotates its CA and certificate; `external`: read
    /// tls.crt/tls.key from the Secret as another tool (cert-manager) keeps it, and leave
    /// caBundle alone (cert-manager's cainjector sets it).
    #[arg(long, value_enum, default_value_t)]
    pub webhook_certificates: CertificateSource,

    /// Seconds a new CA must have been in every caBundle before certificates from it are
    /// served, and a new serving certificate must have existed before the CA it replaces
    /// is no longer trusted: time for every API server to see the caBundle, and every
    /// replica the Secret.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub webhook_rotation_settle_seconds: u64,
}

/// Starts keeping the certificates (a background task until `stop`) and returns the TLS
/// configuration that serves the current one, swapped in place whenever the Secret
/// changes. Waits until there is a certificate to serve: in `self` mode the first look
/// makes one if need be; in `external` mode the Secret must come to hold one. Errors
/// meanwhile are logged and retried with backoff; `stop` ends the wait with an error.
pub async fn start(
    client: Client,
    namespace: &str,
    settings: &CertificateSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RustlsConfig> {
    let (first, served) = oneshot::channel();
    let keeper = Keeper {
        secrets: Api::namespaced(client.clone(), namespace),
        configurations: Api::all(client),
        namespace: namespace.to_string(),
        secret_name: settings.webhook_secret.clone(),
        configuration_names: settings.webhook_configurations.clone(),
        source: settings.webhook_certificates,
        names: Names::of_service(&settings.webhook_service, namespace, &settings.webhook_ips),
        settle: Duration::from_secs(settings.webhook_rotation_settle_seconds),
        tls: None,
        first: Some(first),
        offered: None,
        published: None,
        publications: HashMap::new(),
        retry: None,
    };
    tokio::spawn(keeper.run(stop));
    served
        .await
        .map_err(|_| Error::Webhook("stopped before there was a certificate to serve".into()))
}

struct Keeper {
    secrets: Api<Secret>,
    configurations: Api<MutatingWebhookConfiguration>,
    namespace: String,
    secret_name: String,
    configuration_names: Vec<String>,
    source: CertificateSource,
    names: Names,
    settle: Duration,
    /// The TLS configuration handed out, once there was a certificate to serve.
    tls: Option<RustlsConfig>,
    /// Where the first TLS configuration goes, until there is one.
    first: Option<oneshot::Sender<RustlsConfig>>,
    /// tls.crt and tls.key as last offered to the server, served or refused.
    offered: Option<(Vec<u8>, Vec<u8>)>,
    /// The bundle every caBundle was last seen to hold, and since when.
    published: Option<(Vec<u8>, SystemTime)>,
    /// What was last seen of each MutatingWebhookConfiguration, to log each change once.
    publications: HashMap<String, Publication>,
    /// Waits after failed looks, until one succeeds.
    retry: Option<backon::ExponentialBackoff>,
}

impl Keeper {
    async fn run(mut self, stop: impl Future<Output = ()> + Send + 'static) {
        let (secret, secret_changes) = watch_named(self.secrets.clone(), &self.secret_name);
        let mut changes = vec![secret_changes];
        let mut configurations = Vec::new();
        if self.source == CertificateSource::Operator {
            for name in &self.configuration_names {
                let (store, configuration_changes) = watch_named(self.configurations.clone(), name);
                configurations.push((name.clone(), store));
                changes.push(configuration_changes);
            }
        }
        let mut changes = futures::stream::select_all(changes);
        let mut wake = Instant::now() + RESYNC;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(()) = changes.next() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            // A write's echo comes from several watches at once: one look for all.
            while let Some(Some(())) = changes.next().now_or_never() {}
            if !is_ready(&secret) || !configurations.iter().all(|(_, s)| is_ready(s)) {
                wake = Instant::now() + RESYNC;
                continue;
            }
            let observed = secret
                .get(&ObjectRef::new(&self.secret_name).within(&self.namespace))
                .map(|s| Secret::clone(&s));
            let configurations: Vec<_> = configurations
                .iter()
                .map(|(name, store)| (name.clone(), store.get(&ObjectRef::new(name))))
                .collect();
            tokio::select! {
                () = &mut stop => break,
                next = self.look(observed, &configurations) => wake = next,
            }
        }
        debug!("webhook certificate keeping stopped");
    }

    /// One look at everything; returns when to look again at the latest.
    async fn look(&mut self, secret: Option<Secret>, configurations: &[Configuration]) -> Instant {
        let looked = match self.source {
            CertificateSource::Operator => self.keep(secret, configurations).await,
            CertificateSource::External => {
                self.serve_external(secret.as_ref());
                Ok(None)
            }
        };
        let now = Instant::now();
        match looked {
            Ok(recheck) => {
                self.retry = None;
                recheck.map_or(now + RESYNC, |at| at.min(now + RESYNC))
            }
            Err(error) => {
                let delay = self
                    .retry
                    .get_or_insert_with(|| retry_delays(RETRY_FIRST, RETRY_LONGEST))
                    .next()
                    .unwrap_or(RETRY_LONGEST);
                warn!(%error, ?delay, "webhook certificates: retrying");
                now + delay
            }
        }
    }

    /// `self` mode: brings the Secret to what it needs, step by step, then serves and
    /// publishes it. Returns when the decisions want another look.
    async fn keep(
        &mut self,
        mut secret: Option<Secret>,
        configurations: &[Configuration],
    ) -> Result<Option<Instant>> {
        for _ in 0..WRITES_PER_LOOK {
            let material = secret.as_ref().map(material_in).unwrap_or_default();
            let stored = pki::read(&material);
            let now = SystemTime::now();
            let published_since = self.note_publication(&material.ca_bundle, configurations, now);
            let step = certificate_steps::next_step(
                &stored,
                &self.names,
                published_since,
                self.settle,
                now,
            );
            if let Step::Keep { recheck_at } = step {
                self.offer(&material);
                self.publish(&material.ca_bundle, configurations).await;
                let wait = recheck_at.duration_since(now).unwrap_or_default();
                return Ok(Some(Instant::now() + wait));
            }
            info!(
                secret = self.secret_name,
                ?step,
                "webhook certificates: writing"
            );
            let next = material_after(&step, &material, &stored, &self.names, now)
                .map_err(|error| Error::Webhook(format!("cannot make a certificate: {error}")))?;
            secret = self.write(secret, next).await?;
        }
        // Our writes' echoes bring the next look.
        Ok(None)
    }

    /// Creates the Secret or replaces it at the version observed. When it changed since
    /// (another replica wrote first), returns it as it is now.
    async fn write(&self, observed: Option<Secret>, material: Material) -> Result<Option<Secret>> {
        let name = &self.secret_name;
        let written = match observed {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            FIELD_MANAGER.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    ..Secret::default()
                };
                let secret = with_material(secret, material);
                self.secrets.create(&PostParams::default(), &secret).await
            }
            Some(secret) => {
                let secret = with_material(secret, material);
                self.secrets
                    .replace(name, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(secret) => Ok(Some(secret)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(
                    secret = name,
                    "the Secret changed since it was read (another replica, or a watch behind a write of ours); taking it as it is"
                );
                self.secrets
                    .get_opt(name)
                    .await
                    .map_err(Error::api(format!("get Secret {}/{name}", self.namespace)))
            }
            Err(error) => Err(Error::api(format!(
                "write Secret {}/{name}",
                self.namespace
            ))(error)),
        }
    }

    /// Since when every existing webhook configuration has held `bundle` as the caBundle
    /// of each of its webhooks, as this replica saw it.
    fn note_publication(
        &mut self,
        bundle: &[u8],
        configurations: &[Configuration],
        now: SystemTime,
    ) -> Option<SystemTime> {
        let everywhere = configurations
            .iter()
            .filter_map(|(_, configuration)| configuration.as_deref())
            .all(|configuration| {
                certificate_steps::stale_webhooks(configuration, bundle).is_empty()
            });
        if !everywhere || bundle.is_empty() {
            self.published = None;
            return None;
        }
        match &self.published {
            Some((published, since)) if published == bundle => Some(*since),
            _ => {
                self.published = Some((bundle.to_vec(), now));
                Some(now)
            }
        }
    }

    /// Sets `bundle` as the caBundle of every webhook of every configuration where it
    /// differs. Trouble with one configuration is logged (once per change) and left to
    /// the next look: it stops nothing else.
    async fn publish(&mut self, bundle: &[u8], configurations: &[Configuration]) {
        for (name, configuration) in configurations {
            let publication = match configuration {
                None => Publication::Absent,
                Some(configuration) => {
                    let stale = certificate_steps::stale_webhooks(configuration, bundle);
                    if stale.is_empty() {
                        Publication::Held
                    } else {
                        let apply = certificate_steps::ca_bundle_apply(configuration, bundle);
                        let params = PatchParams::apply(FIELD_MANAGER);
                        match self
                            .configurations
                            .patch(name, &params, &Patch::Apply(&apply))
                            .await
                        {
                            Ok(_) => Publication::Set(stale.join(", ")),
                            Err(error) => Publication::Refused(error.to_string()),
                        }
                    }
                }
            };
            if self.publications.get(name) == Some(&publication) {
                continue;
            }
            match &publication {
                Publication::Absent => info!(
                    configuration = name,
                    "no such MutatingWebhookConfiguration (yet); its caBundle is set once it exists"
                ),
                Publication::Held => {
                    debug!(configuration = name, "every webhook holds the CA bundle")
                }
                Publication::Set(webhooks) => info!(configuration = name, webhooks, "caBundle set"),
                Publication::Refused(error) => warn!(
                    configuration = name,
                    error, "caBundle cannot be set; trying again on the next look"
                ),
            }
            self.publications.insert(name.clone(), publication);
        }
    }

    /// `external` mode: serves whatever certificate the Secret holds.
    fn serve_external(&mut self, secret: Option<&Secret>) {
        match secret {
            Some(secret) => self.offer(&material_in(secret)),
            None if self.offered.is_none() => warn!(
                secret = self.secret_name,
                "the webhook's Secret does not exist (yet); waiting for it"
            ),
            None => {}
        }
    }

    /// Serves tls.crt and tls.key from `material` if they changed and make a TLS
    /// configuration; otherwise keeps serving what it did. In `self` mode it is called
    /// only once [`certificate_steps::next_step`] said [`Step::Keep`], which it says only of a
    /// servable certificate: a planted or half-written one is replaced, never served.
    fn offer(&mut self, material: &Material) {
        let offered = (material.tls_crt.clone(), material.tls_key.clone());
        if self.offered.as_ref() == Some(&offered) {
            return;
        }
        let config = server_config(&material.tls_crt, &material.tls_key);
        match config {
            Ok(config) => {
                match &self.tls {
                    Some(tls) => tls.reload_from_config(config),
                    None => {
                        let tls = RustlsConfig::from_config(config);
                        if let Some(first) = self.first.take() {
                            first.send(tls.clone()).ok();
                        }
                        self.tls = Some(tls);
                    }
                }
                info!(
                    secret = self.secret_name,
                    "serving the Secret's certificate"
                );
            }
            Err(why) => warn!(
                secret = self.secret_name,
                "not serving the Secret's certificate: {why}; keeping the one served"
            ),
        }
        self.offered = Some(offered);
    }
}

/// How a MutatingWebhookConfiguration stood at the last look.
#[derive(Debug, PartialEq, Eq)]
enum Publication {
    Absent,
    /// Every webhook holds the bundle.
    Held,
    /// The bundle was applied to these webhooks.
    Set(String),
    /// The API server refused the apply.
    Refused(String),
}

/// A configuration's name and, if it exists, its cached state.
type Configuration = (String, Option<Arc<MutatingWebhookConfiguration>>);

/// The material after `step`: new keys and certificates where it calls for them, the
/// bundle as [`certificate_steps::bundle_after`] says.
fn material_after(
    step: &Step,
    material: &Material,
    stored: &Stored,
    names: &Names,
    now: SystemTime,
) -> Result<Material, rcgen::Error> {
    let mut next = material.clone();
    if matches!(step, Step::Create { .. } | Step::RotateCa) {
        let (ca_crt, ca_key) = pki::new_ca(now)?;
        next.ca_crt = ca_crt.into_bytes();
        next.ca_key = ca_key.into_bytes();
    }
    if matches!(step, Step::Create { .. } | Step::RenewServing { .. }) {
        let (tls_crt, tls_key) = pki::new_serving(&next.ca_crt, &next.ca_key, names, now)?;
        next.tls_crt = tls_crt.into_bytes();
        next.tls_key = tls_key.into_bytes();
    }
    let ca = pki::pem_certificates(&next.ca_crt)
        .into_iter()
        .next()
        .ok_or(rcgen::Error::CouldNotParseCertificate)?;
    next.ca_bundle = pki::pem_of(&certificate_steps::bundle_after(step, &stored.bundle, &ca));
    Ok(next)
}

fn material_in(secret: &Secret) -> Material {
    let data = secret.data.as_ref();
    let key = |key: &str| {
        data.and_then(|data| data.get(key))
            .map(|bytes| bytes.0.clone())
            .unwrap_or_default()
    };
    Material {
        ca_crt: key(CA_CRT),
        ca_key: key(CA_KEY),
        tls_crt: key(TLS_CRT),
        tls_key: key(TLS_KEY),
        ca_bundle: key(CA_BUNDLE),
    }
}

/// `secret` holding `material` under its five keys; other keys are kept.
fn with_material(mut secret: Secret, material: Material) -> Secret {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_CRT, material.ca_crt),
        (CA_KEY, material.ca_key),
        (TLS_CRT, material.tls_crt),
        (TLS_KEY, material.tls_key),
        (CA_BUNDLE, material.ca_bundle),
    ] {
        data.insert(key.to_string(), ByteString(value));
    }
    secret
}

/// A cache of the one object `name` of `api`, and the stream of its changes (one `()`
/// each) that must be polled to fill it. Watch errors are logged; the watch retries.
fn watch_named<K>(api: Api<K>, name: &str) -> (Store<K>, BoxStream<'static, ()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_string();
    let changes = watcher(api, config)
        .backoff(WatchBackoff::new())
        .reflect(writer)
        .map(move |event| {
            if let Err(error) = event {
                warn!(kind, name, %error, "watch failed; retrying");
            }
        })
        .boxed();
    (store, changes)
}

/// Whether `store` holds a complete first listing.
fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::pki::tests::{fresh_material, names, now};

    fn after(step: &Step, material: &Material, at: SystemTime) -> Material {
        material_after(step, material, &pki::read(material), &names(), at).unwrap()
    }

    fn settings(args: &[&str]) -> CertificateSettings {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            settings: CertificateSettings,
        }
        use clap::Parser;
        Command::parse_from(std::iter::once("operator").chain(args.iter().copied())).settings
    }

    #[test]
    fn settings_default_to_the_operators_names_and_its_own_certificates() {
        let defaults = settings(&[]);
        assert_eq!(defaults.webhook_listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(
            defaults.webhook_secret,
            "mail-incident-operator-webhook-tls"
        );
        assert_eq!(defaults.webhook_configurations, ["mail-incident-operator"]);
        assert_eq!(defaults.webhook_certificates, CertificateSource::Operator);
        let given = settings(&[
            "--webhook-ip",
            "127.0.0.1",
            "--webhook-ip",
            "::1",
            "--webhook-certificates",
            "external",
        ]);
        assert_eq!(given.webhook_ips.len(), 2);
        assert_eq!(given.webhook_certificates, CertificateSource::External);
        assert_eq!(
            settings(&["--webhook-certificates", "self"]).webhook_certificates,
            CertificateSource::Operator
        );
    }

    /// A whole CA rotation, step by step, with real certificates: at every step the
    /// certificate served chains to a CA of the bundle published before it.
    #[test]
    fn a_rotation_keeps_every_served_certificate_trusted_by_the_bundle_before_it() {
        let settle = Duration::from_secs(60);
        let start = now();
        let first = fresh_material(start);
        let old_ca = pki::read(&first).ca.unwrap().der;

        // Eight months on, the CA has a third of its life left.
        let at = start + pki::CA_LIFE * 2 / 3 + Duration::from_secs(1);
        let mut material = first;
        let step = certificate_steps::next_step(&pki::read(&material), &names(), None, settle, at);
        assert!(matches!(step, Step::RenewServing { .. }), "{step:?}");
        material = after(&step, &material, at);
        let step = certificate_steps::next_step(&pki::read(&material), &names(), None, settle, at);
        assert_eq!(step, Step::RotateCa);

        let rotated = after(&step, &material, at);
        let stored = pki::read(&rotated);
        let new_ca = stored.ca.clone().unwrap().der;
        assert_eq!(stored.bundle, vec![new_ca.clone(), old_ca.clone()]);
        assert_eq!(
            rotated.tls_crt, material.tls_crt,
            "the served certificate stays"
        );
        assert_eq!(
            stored.serving.as_ref().unwrap().signer,
            Some(old_ca.clone())
        );

        // The bundle of both has been in every caBundle long enough.
        let published = at;
        let at = at + settle;
        let step = certificate_steps::next_step(&stored, &names(), Some(published), settle, at);
        assert!(matches!(step, Step::RenewServing { .. }), "{step:?}");
        let moved = after(&step, &rotated, at);
        let stored = pki::read(&moved);
        assert_eq!(stored.bundle, vec![new_ca.clone(), old_ca]);
        assert_eq!(
            stored.serving.as_ref().unwrap().signer,
            Some(new_ca.clone())
        );

        let at = at + settle;
        let step = certificate_steps::next_step(&stored, &names(), Some(published), settle, at);
        assert_eq!(step, Step::TrustOnlyCa);
        let done = after(&step, &moved, at);
        let stored = pki::read(&done);
        assert_eq!(stored.bundle, vec![new_ca]);
        assert!(certificate_steps::servable(&stored, &names(), at).is_ok());
        assert!(matches!(
            certificate_steps::next_step(&stored, &names(), None, settle, at),
            Step::Keep { .. }
        ));
    }

    #[test]
    fn a_secret_of_garbage_is_made_anew() {
        let garbage = Material {
            ca_crt: b"garbage".to_vec(),
            tls_key: vec![0; 3],
            ..Material::default()
        };
        let step = certificate_steps::next_step(
            &pki::read(&garbage),
            &names(),
            None,
            Duration::ZERO,
            now(),
        );
        assert!(matches!(step, Step::Create { .. }), "{step:?}");
        let made = pki::read(&after(&step, &garbage, now()));
        assert!(certificate_steps::servable(&made, &names(), now()).is_ok());
        assert_eq!(made.bundle, vec![made.ca.unwrap().der]);
    }

    #[test]
    fn material_round_trips_through_a_secret_keeping_other_keys() {
        let material = fresh_material(now());
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "note".to_string(),
                ByteString(b"kept".to_vec()),
            )])),
            ..Secret::default()
        };
        let secret = with_material(secret, material.clone());
        assert_eq!(material_in(&secret), material);
        let keys: Vec<_> = secret.data.unwrap().into_keys().collect();
        assert_eq!(keys, [CA_BUNDLE, CA_CRT, CA_KEY, "note", TLS_CRT, TLS_KEY]);
    }
}
