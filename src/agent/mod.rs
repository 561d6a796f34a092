//! The MTA side (`mail-incident-operator agent`), a sidecar next to the MTA: it watches
//! its workload's mode document through the API (a mounted ConfigMap would take the
//! kubelet up to a minute), renders it for the MTA, applies it in place and reports the
//! applied hash in the report object the controller created. Its token needs only get,
//! list and watch on the document and patch on the report, both by name.

pub mod postfix;

use crate::{
    Error, Result,
    api::mode_document::{
        AgentReport, MODE_DOCUMENT_KEY, ModeDocument, REPORT_SUFFIX, document_name,
    },
    http::{self, Readiness},
    metrics::AgentMetrics,
    telemetry::LogFormat,
};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::watcher::{self, Event, watcher},
};
use postfix::{Baseline, Postfix};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tracing::{info, warn};

/// The baseline is kept next to main.cf: an agent restarted during an incident must not
/// take the incident's settings for the MTA's own.
const BASELINE_FILE: &str = "mail-incident-baseline.json";

/// How long to wait before retrying a failed apply or report.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Command-line settings of `mail-incident-operator agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// The workload this pod belongs to, as Kind/name (e.g. Deployment/postfix-inbound).
    #[arg(long, env = "MAIL_INCIDENT_WORKLOAD")]
    pub workload: String,

    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// The pod's name: the key of this agent's entry in the report.
    #[arg(long, env = "POD_NAME")]
    pub pod: String,

    /// The Postfix configuration directory (shared with the MTA container).
    #[arg(long, env = "POSTFIX_CONFIG_DIR", default_value = "/etc/postfix")]
    pub postfix_config: PathBuf,

    /// The master.cf transport that delivers to mailbox storage, held while an incident lasts.
    #[arg(long, env = "MAILBOX_TRANSPORT", default_value = "lmtp")]
    pub mailbox_transport: String,

    /// How often the queue figures are measured and reported while a mode is applied.
    #[arg(long, default_value_t = 30)]
    pub report_seconds: u64,

    /// Address of the agent's /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "AGENT_LISTEN_ADDRESS", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,
}

/// Runs the agent until the watch ends or SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let (kind, workload) = settings.workload.split_once('/').ok_or_else(|| {
        Error::Agent(format!(
            "--workload {:?} is not Kind/name",
            settings.workload
        ))
    })?;
    let document = document_name(kind, workload);
    let postfix = Postfix {
        config_dir: &settings.postfix_config,
    };
    let baseline = load_baseline(&postfix, &settings.postfix_config)?;
    let metrics = AgentMetrics::default();
    let readiness = Readiness::default();
    let http = http::Server::start(settings.listen, metrics.registry(), readiness.clone()).await?;
    info!(%document, pod = %settings.pod, "agent started");

    let agent = Agent {
        config_maps: Api::namespaced(client, &settings.namespace),
        report: format!("{document}{REPORT_SUFFIX}"),
        pod: &settings.pod,
        postfix,
        metrics,
    };
    let events = watcher(
        agent.config_maps.clone(),
        watcher::Config::default().fields(&format!("metadata.name={document}")),
    );
    futures::pin_mut!(events);
    let mut ticks = tokio::time::interval(Duration::from_secs(settings.report_seconds.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = crate::shutdown::signal();
    futures::pin_mut!(stop);
    let mut listed: Option<ConfigMap> = None;
    // What was last applied: None until the first apply, which always happens, so that
    // an agent restarted after its document went away still restores the baseline.
    let mut applied: Option<Option<String>> = None;
    loop {
        let event = tokio::select! {
            event = events.try_next() => event,
            _ = ticks.tick() => {
                if let Some(Some(hash)) = &applied {
                    agent.report(hash).await;
                }
                continue;
            }
            _ = &mut stop => break,
        };
        let current = match event {
            Ok(Some(Event::Init)) => {
                listed = None;
                continue;
            }
            Ok(Some(Event::InitApply(object))) => {
                listed = Some(object);
                continue;
            }
            Ok(Some(Event::InitDone)) => listed.take(),
            Ok(Some(Event::Apply(object))) => Some(object),
            Ok(Some(Event::Delete(_))) => None,
            Ok(None) => break,
            Err(error) => {
                warn!(%error, "watch failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        let wanted = current.as_ref().and_then(parse_document);
        let hash = wanted.as_ref().map(ModeDocument::hash);
        if applied.as_ref() == Some(&hash) {
            continue;
        }
        let edits = postfix::render(wanted.as_ref(), &baseline, &settings.mailbox_transport);
        if let Err(error) = agent.postfix.apply(&edits) {
            agent.metrics.errors.with_label_values(&["apply"]).inc();
            warn!(%error, "cannot apply the mode; keeping the previous one");
            continue;
        }
        agent.metrics.applies.inc();
        agent.metrics.set_mode(wanted.as_ref().map(|d| d.mode));
        readiness.set_ready();
        info!(mode = ?wanted.as_ref().map(|d| d.mode), hash = hash.as_deref().unwrap_or("normal"), "applied");
        if let Some(hash) = &hash {
            agent.report(hash).await;
        }
        applied = Some(hash);
    }
    http.stop().await;
    Ok(())
}

/// What the agent's loop acts on.
struct Agent<'a> {
    config_maps: Api<ConfigMap>,
    report: String,
    pod: &'a str,
    postfix: Postfix<'a>,
    metrics: AgentMetrics,
}

impl Agent<'_> {
    /// Writes this pod's entry in the report: the applied hash and the queue as measured
    /// now. Retries until the API server takes it (the controller creates the report
    /// right after the document).
    async fn report(&self, hash: &str) {
        let queue = match self.postfix.queue_listing() {
            Ok(listing) => {
                let figures = postfix::queue_figures(&listing, jiff::Timestamp::now().as_second());
                self.metrics.set_queue(&figures);
                Some(figures)
            }
            Err(error) => {
                self.metrics.errors.with_label_values(&["queue"]).inc();
                warn!(%error, "cannot read the queue");
                None
            }
        };
        let entry = AgentReport {
            hash: hash.into(),
            queue,
        };
        let entry = serde_json::to_string(&entry).expect("a report serializes");
        let patch = Patch::Merge(serde_json::json!({"data": {self.pod: entry}}));
        loop {
            match self
                .config_maps
                .patch(&self.report, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => return,
                Err(error) => {
                    self.metrics.errors.with_label_values(&["report"]).inc();
                    warn!(%error, report = %self.report, "cannot report; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }
}

fn parse_document(config_map: &ConfigMap) -> Option<ModeDocument> {
    let text = config_map.data.as_ref()?.get(MODE_DOCUMENT_KEY)?;
    match serde_json::from_str(text) {
        Ok(document) => Some(document),
        Err(error) => {
            warn!(%error, "unreadable mode document; keeping the current mode");
            None
        }
    }
}

/// The MTA's own configuration of the managed parameters, recorded once.
fn load_baseline(postfix: &Postfix<'_>, dir: &std::path::Path) -> Result<Baseline> {
    let path = dir.join(BASELINE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text)
            .map_err(|e| Error::Agent(format!("{}: {e}", path.display())));
    }
    let explicit = postfix
        .explicit_parameters()
        .map_err(|e| Error::Agent(e.to_string()))?;
    let baseline = Baseline::from_postconf_n(&explicit);
    let text = serde_json::to_string_pretty(&baseline).expect("a baseline serializes");
    std::fs::write(&path, text).map_err(|e| Error::Agent(format!("{}: {e}", path.display())))?;
    Ok(baseline)
}
