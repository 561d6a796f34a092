//! The MTA side (`mail-incident-operator agent`), a sidecar next to the MTA: it watches
//! its workload's mode document through the API (a mounted ConfigMap would take the
//! kubelet up to a minute), renders it for the MTA, applies it in place and reports the
//! applied hash in the report object the controller created. Its token needs only get,
//! list and watch on the document and patch on the report, both by name.
//!
//! When an incident ends, the agent releases the held mail (see [`state`]) and only then
//! returns the MTA to its own configuration.

pub mod exim;
pub mod generic;
pub mod postfix;
pub mod state;

use crate::{
    Error, Result,
    api::mode_document::{
        AgentReport, MODE_DOCUMENT_KEY, ModeDocument, QueueFigures, REPORT_SUFFIX, document_name,
    },
    http::{self, Readiness},
    metrics::AgentMetrics,
    telemetry::LogFormat,
};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::watcher::{self, Event, watcher},
};
use state::Held;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};
use tracing::{info, warn};

/// In the state directory: what the agent holds the MTA in, so that a restarted agent
/// still releases the mail of an incident that ended while it was down.
const STATE_FILE: &str = "agent-state.json";
/// In the state directory: the Postfix settings from before any incident.
const POSTFIX_BASELINE_FILE: &str = "postfix-baseline.json";

/// How long to wait before retrying a failed apply or report.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// What the agent needs of an MTA.
pub trait Mta: Send + Sync {
    /// Configures the MTA for `held` and makes it take effect without a restart; for
    /// `Releasing`, also starts delivering the held mail.
    fn apply(&self, held: &Held) -> std::io::Result<()>;
    /// The queue as it is now, or `None` if this MTA's queue cannot be measured.
    fn queue(&self) -> std::io::Result<Option<QueueFigures>>;
}

/// The MTA software next to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Software {
    Postfix,
    Exim,
    Generic,
}

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

    /// The MTA software.
    #[arg(long, value_enum, env = "MAIL_INCIDENT_MTA", default_value = "postfix")]
    pub mta: Software,

    /// Where the agent keeps its state and the MTA's baseline: keep it on the queue's
    /// volume, so that it lives exactly as long as the mail it is about.
    #[arg(
        long,
        env = "AGENT_STATE_DIR",
        default_value = "/var/spool/mail-incident-agent"
    )]
    pub state_dir: PathBuf,

    /// Postfix: the configuration directory (shared with the MTA container).
    #[arg(long, env = "POSTFIX_CONFIG_DIR", default_value = "/etc/postfix")]
    pub postfix_config: PathBuf,

    /// Postfix: the master.cf transport that delivers to mailbox storage, held while an
    /// incident lasts.
    #[arg(long, env = "MAILBOX_TRANSPORT", default_value = "lmtp")]
    pub mailbox_transport: String,

    #[command(flatten)]
    pub exim: exim::EximSettings,

    /// Generic: the file the agent writes the state to (JSON).
    #[arg(
        long,
        env = "MAIL_INCIDENT_MODE_FILE",
        default_value = "/run/mail-incident/mode.json"
    )]
    pub mode_file: PathBuf,

    /// Generic: the command (run with sh -c) that reconfigures the MTA from the mode file.
    #[arg(long, env = "MAIL_INCIDENT_HOOK")]
    pub hook: Option<String>,

    /// How often the queue is measured (and reported while a mode is applied).
    #[arg(long, default_value_t = 30)]
    pub report_seconds: u64,

    /// Address of the agent's /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "AGENT_LISTEN_ADDRESS", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,
}

/// The MTA handle `settings` describe.
fn open_mta(settings: &Settings) -> Result<Box<dyn Mta>> {
    let failed = |e: std::io::Error| Error::Agent(e.to_string());
    Ok(match settings.mta {
        Software::Postfix => Box::new(
            postfix::Postfix::open(
                &settings.postfix_config,
                &settings.mailbox_transport,
                &settings.state_dir.join(POSTFIX_BASELINE_FILE),
            )
            .map_err(failed)?,
        ),
        Software::Exim => Box::new(exim::Exim::new(&settings.exim)),
        Software::Generic => Box::new(generic::Generic {
            mode_file: settings.mode_file.clone(),
            hook: settings
                .hook
                .clone()
                .ok_or_else(|| Error::Agent("--mta generic needs --hook".into()))?,
        }),
    })
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
    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|e| Error::Agent(format!("{}: {e}", settings.state_dir.display())))?;
    let state_file = settings.state_dir.join(STATE_FILE);
    let metrics = AgentMetrics::default();
    let readiness = Readiness::default();
    let http = http::Server::start(settings.listen, metrics.registry(), readiness.clone()).await?;
    info!(%document, pod = %settings.pod, mta = ?settings.mta, "agent started");

    let mut agent = Agent {
        config_maps: Api::namespaced(client, &settings.namespace),
        report: format!("{document}{REPORT_SUFFIX}"),
        pod: &settings.pod,
        mta: open_mta(&settings)?,
        held: load_state(&state_file)?,
        state_file,
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
    // The first listing always applies, so that an agent restarted mid-incident or after
    // one puts the MTA where it must be.
    let mut applied_once = false;
    loop {
        let event = tokio::select! {
            event = events.try_next() => event,
            _ = ticks.tick() => {
                agent.measure().await;
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
        let document = match current.as_ref().map(parse_document).transpose() {
            Ok(document) => document,
            Err(error) => {
                warn!(%error, "unreadable mode document; keeping the current mode");
                continue;
            }
        };
        let next = agent
            .held
            .next(document.as_ref(), Timestamp::now().as_second());
        if applied_once && next == agent.held {
            continue;
        }
        if agent.enter(next).await {
            applied_once = true;
            readiness.set_ready();
        }
    }
    http.stop().await;
    Ok(())
}

/// What the agent's loop acts on.
struct Agent<'a> {
    config_maps: Api<ConfigMap>,
    report: String,
    pod: &'a str,
    mta: Box<dyn Mta>,
    held: Held,
    state_file: PathBuf,
    metrics: AgentMetrics,
}

impl Agent<'_> {
    /// Applies `next` and records it; on failure keeps the current state, to be tried
    /// again with the next change or measurement. Returns whether it applied.
    async fn enter(&mut self, next: Held) -> bool {
        if let Err(error) = self.mta.apply(&next) {
            self.metrics.errors.with_label_values(&["apply"]).inc();
            warn!(%error, state = %next.label(), "cannot apply; keeping the previous state");
            return false;
        }
        if let Err(error) = save_state(&self.state_file, &next) {
            warn!(%error, "cannot save the agent state");
        }
        self.metrics.applies.inc();
        self.metrics.set_mode(&next.label());
        info!(state = %next.label(), hash = next.hash().as_deref().unwrap_or("-"), "applied");
        self.held = next;
        if let Some(hash) = self.held.hash() {
            let queue = self.queue();
            self.report(&hash, queue).await;
        }
        true
    }

    /// Measures the queue: reports it while a mode is applied, and ends a release once
    /// the held mail is out.
    async fn measure(&mut self) {
        let Ok(queue) = self.queue_or_error() else {
            return;
        };
        if let Some(hash) = self.held.hash() {
            self.report(&hash, queue.clone()).await;
        }
        let next = self
            .held
            .after_measuring(queue.as_ref(), Timestamp::now().as_second());
        if next != self.held {
            self.enter(next).await;
        }
    }

    fn queue(&self) -> Option<QueueFigures> {
        self.queue_or_error().ok().flatten()
    }

    fn queue_or_error(&self) -> std::io::Result<Option<QueueFigures>> {
        match self.mta.queue() {
            Ok(queue) => {
                if let Some(figures) = &queue {
                    self.metrics.set_queue(figures);
                }
                Ok(queue)
            }
            Err(error) => {
                self.metrics.errors.with_label_values(&["queue"]).inc();
                warn!(%error, "cannot read the queue");
                Err(error)
            }
        }
    }

    /// Writes this pod's entry in the report: the applied hash and the queue. Retries
    /// until the API server takes it (the controller creates the report right after the
    /// document).
    async fn report(&self, hash: &str, queue: Option<QueueFigures>) {
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

fn parse_document(config_map: &ConfigMap) -> std::result::Result<ModeDocument, String> {
    let text = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(MODE_DOCUMENT_KEY))
        .ok_or_else(|| format!("no {MODE_DOCUMENT_KEY} key"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The state saved by the last agent, or `Normal` for a first start.
fn load_state(path: &Path) -> Result<Held> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::Agent(format!("{}: {e}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Held::Normal),
        Err(error) => Err(Error::Agent(format!("{}: {error}", path.display()))),
    }
}

fn save_state(path: &Path, held: &Held) -> std::io::Result<()> {
    write_atomically(
        path,
        &serde_json::to_string_pretty(held).map_err(std::io::Error::other)?,
    )
}

/// Replaces `path` with `text`, written aside and then renamed, so that neither the MTA
/// nor a restarted agent ever reads half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// Runs a command; its standard output, or an error carrying its standard error.
fn run_command(command: &mut Command) -> std::io::Result<String> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Mode documents for the renderers' and the state's unit tests.
#[cfg(test)]
mod fixtures {
    use super::state::Held;
    use crate::api::{
        Mode,
        mode_document::{
            DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply, MODE_DOCUMENT_KIND,
            MODE_DOCUMENT_VERSION, ModeDocument,
        },
    };

    /// A document for `mode` with the given reply codes, lifetimes 30d and 10d, and a
    /// release concurrency of 4.
    pub fn document(mode: Mode, code: u16, enhanced: &str) -> ModeDocument {
        ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            mode,
            reply: DocumentReply {
                code,
                enhanced_code: enhanced.into(),
                text: "Mailbox storage temporarily unavailable, try again later".into(),
            },
            queue: DocumentQueue {
                lifetime: "30d".into(),
                bounce_lifetime: "10d".into(),
            },
            release: DocumentRelease { concurrency: 4 },
            mta: None,
            incident: DocumentIncident {
                name: "outage".into(),
                uid: "u".into(),
                reason: "r".into(),
            },
        }
    }

    /// The state once `document` has been applied.
    pub fn held(document: &ModeDocument) -> Held {
        Held::Normal.next(Some(document), 0)
    }
}
