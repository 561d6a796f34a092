//! The MTA side (`mail-incident-operator agent`), a sidecar next to the MTA: it watches
//! its workload's mode document through the API (a mounted ConfigMap would take the
//! kubelet up to a minute), converges the MTA on it (see [`converge`]) and reports the
//! applied hash in the report object the controller created (see [`report`]). Its token
//! needs only get, list and watch on the document and patch on the report, both by name.
//!
//! When an incident ends, the agent releases the held mail (see [`state`]) and only then
//! returns the MTA to its own configuration.

mod command;
pub mod converge;
mod error;
pub mod exim;
mod files;
pub mod generic;
mod install;
pub mod metrics;
pub mod policy;
pub mod postfix;
mod postfix_queue;
pub mod probe;
pub mod report;
pub mod state;

use crate::{
    Error, Result,
    api::{
        MtaKind,
        mode_document::{
            MODE_DOCUMENT_KEY, ModeDocument, QueueFigures, document_name, report_name,
        },
    },
    http::{self, Readiness},
    telemetry::LogFormat,
};
pub use error::{AgentError, FileAction};
use futures::{Stream, StreamExt};
pub use install::install_agent;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use metrics::AgentMetrics;
use state::Held;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::sync::watch;
use tracing::{info, warn};

/// In the state directory: the state the agent holds the MTA in, saved before each
/// apply, so that a restarted agent picks up where it was (and still releases the mail
/// of an incident that ended while it was down).
const STATE_FILE: &str = "agent-state.json";
/// In the state directory: the Postfix settings from before any incident.
const POSTFIX_BASELINE_FILE: &str = "postfix-baseline.json";

/// What the agent needs of an MTA. All run on blocking threads.
pub trait Mta: Send + Sync {
    /// Configures the MTA for `held` and makes it take effect without a restart; for
    /// `Releasing`, also starts delivering the held mail. Idempotent: an apply cut short
    /// by a crash is simply made again.
    fn apply(&self, held: &Held) -> std::result::Result<(), AgentError>;
    /// The queue as it is now, or `None` if this MTA's queue cannot be measured: the
    /// messages `held` holds (see [`state::Held::held_scope`]).
    fn queue(&self, held: &Held) -> std::result::Result<Option<QueueFigures>, AgentError>;
    /// Reads back what the agent is responsible for and says where it differs from what
    /// `apply(held)` makes it (empty: the MTA runs `held`). Another hand's change is only
    /// found here; the loop then applies `held` again.
    fn drift(&self, held: &Held) -> std::result::Result<Vec<Difference>, AgentError>;
    /// Whether the deliveries the last apply started still run, for an MTA that delivers
    /// a release in passes (see [`state::Held::release_pass`]); `None` for one that
    /// delivers on its own.
    fn delivering(&self) -> Option<bool> {
        None
    }
}

/// One thing the MTA runs that differs from what the agent applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub kind: DriftKind,
    /// In a few words, what it is and what it should be (`main.cf soft_bounce = no, want yes`).
    pub what: String,
}

/// What a difference touches, the same for every MTA (the label of
/// `mail_incident_agent_drift_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftKind {
    /// What decides the answer at RCPT: Postfix's policy restriction, Exim's and the
    /// generic mode file.
    Answer,
    /// What holds queued mail: Postfix's managed main.cf and master.cf settings, Exim's
    /// retry file.
    Queue,
}

impl DriftKind {
    pub fn label(self) -> &'static str {
        match self {
            DriftKind::Answer => "answer",
            DriftKind::Queue => "queue",
        }
    }
}

/// What the agent was doing when it failed: the `action` label of
/// `mail_incident_agent_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Applying a state to the MTA.
    Apply,
    /// Reading back what the MTA runs.
    Verify,
    /// Measuring the queue.
    Queue,
    /// Asking the MTA over SMTP.
    Probe,
    /// Writing the report.
    Report,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Apply => "apply",
            Action::Verify => "verify",
            Action::Queue => "queue",
            Action::Probe => "probe",
            Action::Report => "report",
        }
    }
}

/// `name = found, want wanted`: one difference in a drift message.
fn differs(name: &str, found: Option<&str>, wanted: Option<&str>) -> String {
    format!("{name} = {}, want {}", shown(found), shown(wanted))
}

/// A value as a drift message shows it: quoted, absent values named, long ones cut.
fn shown(value: Option<&str>) -> String {
    const LONGEST: usize = 80;
    match value {
        None => "(absent)".into(),
        Some(text) if text.chars().count() > LONGEST => {
            format!("{:?}...", text.chars().take(LONGEST).collect::<String>())
        }
        Some(text) => format!("{text:?}"),
    }
}

/// The MTA a document names when it is not the one the agent drives (`drives`).
fn other_mta(document: &ModeDocument, drives: MtaKind) -> Option<MtaKind> {
    document.mta.filter(|named| *named != drives)
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

    /// The MTA software, in any case (`postfix`, `Postfix`).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        env = "MAIL_INCIDENT_MTA",
        default_value = "postfix"
    )]
    pub mta: MtaKind,

    /// Where the agent keeps its state and the MTA's baseline: keep it on the queue's
    /// volume, so that it lives exactly as long as the mail it is about.
    #[arg(
        long,
        env = "AGENT_STATE_DIR",
        default_value = "/var/spool/mail-incident-agent"
    )]
    pub state_dir: PathBuf,

    #[command(flatten)]
    pub postfix: postfix::PostfixSettings,

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

    /// How often the queue is measured (and reported while a mode is applied), in
    /// seconds (1 to 3600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub report_seconds: u64,

    /// How often, in seconds, the agent reads back what the MTA runs (its managed
    /// settings, mode and retry files) and puts back whatever another hand changed
    /// (1 to 3600; also right after each apply). A hand edit stays in force at most this
    /// long, plus one apply.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub verify_seconds: u64,

    /// A recipient the MTA accepts in normal service. The agent asks its MTA about it over
    /// SMTP (EHLO, MAIL FROM:<>, RCPT TO, RSET, QUIT: nothing is ever sent) and treats an
    /// answer other than the one its state promises as drift. No probe without it.
    #[arg(long, env = "MAIL_INCIDENT_PROBE_RECIPIENT")]
    pub probe_recipient: Option<String>,

    /// The MTA's SMTP listener the probe asks, on loopback.
    #[arg(
        long,
        env = "MAIL_INCIDENT_PROBE_ADDRESS",
        default_value = "127.0.0.1:25"
    )]
    pub probe_address: SocketAddr,

    /// How often, in seconds, the probe asks (1 to 3600; also right after each apply).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub probe_seconds: u64,

    /// How long, in seconds, the MTA may differ from its mode document before /readyz
    /// fails (1 to 3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ready_within_seconds: u64,

    /// The longest wait, in seconds, between retries of a failed apply or report (1 to 600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub retry_max_seconds: u64,

    /// Address of the agent's /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "AGENT_LISTEN_ADDRESS", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,
}

/// The MTA handle `settings` describe, for an MTA the agent holds in `saved`. Runs MTA
/// commands: call from a blocking thread.
fn open_mta(settings: &Settings, saved: &Held) -> Result<Arc<dyn Mta>> {
    let failed = |e: AgentError| Error::Agent(e.to_string());
    Ok(match settings.mta {
        MtaKind::Postfix => Arc::new(
            postfix::Postfix::open(
                &settings.postfix,
                &settings.state_dir.join(POSTFIX_BASELINE_FILE),
                saved,
            )
            .map_err(failed)?,
        ),
        MtaKind::Exim => Arc::new(exim::Exim::new(&settings.exim)),
        MtaKind::Generic => Arc::new(generic::Generic {
            mode_file: settings.mode_file.clone(),
            hook: settings
                .hook
                .clone()
                .ok_or_else(|| Error::Agent("--mta generic needs --hook".into()))?,
        }),
    })
}

/// Runs the agent until SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let (kind, workload) = settings.workload.split_once('/').ok_or_else(|| {
        Error::Agent(format!(
            "--workload {:?} is not Kind/name",
            settings.workload
        ))
    })?;
    let document = document_name(kind, workload);
    let probe = match &settings.probe_recipient {
        // A recipient goes on the RCPT line as it is: nothing that could end or bend it.
        Some(recipient)
            if recipient.is_empty()
                || recipient
                    .chars()
                    .any(|c| c.is_control() || "<> ".contains(c)) =>
        {
            return Err(Error::Agent(format!(
                "--probe-recipient {recipient:?} is not a plain address"
            )));
        }
        Some(recipient) => Some(probe::Probe {
            address: settings.probe_address,
            recipient: recipient.clone(),
        }),
        None => None,
    };
    let state_file = settings.state_dir.join(STATE_FILE);
    let (mta, saved) = {
        let settings = settings.clone();
        let state_file = state_file.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            std::fs::create_dir_all(&settings.state_dir)
                .map_err(AgentError::file(FileAction::Create, &settings.state_dir))
                .map_err(|e| Error::Agent(e.to_string()))?;
            let saved =
                converge::load_state(&state_file).map_err(|e| Error::Agent(e.to_string()))?;
            Ok((open_mta(&settings, &saved)?, saved))
        })
        .await
        .map_err(|e| Error::Agent(e.to_string()))??
    };
    let metrics = AgentMetrics::default();
    let readiness = Readiness::default();
    let http = http::Server::start(settings.listen, metrics.registry(), readiness.clone()).await?;
    let (intents, intents_rx) = watch::channel(saved.clone());
    let policy = match settings.mta {
        MtaKind::Postfix => {
            let address = settings.postfix.postfix_policy_listen;
            let service = policy::PolicyService::bind(address)
                .await
                .map_err(|source| Error::Listen { address, source })?;
            Some(tokio::spawn(service.serve(intents_rx, metrics.clone())))
        }
        _ => None,
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &settings.namespace);
    let (reports, reports_rx) = watch::channel(None);
    let retry_max = Duration::from_secs(settings.retry_max_seconds);
    let reporter = tokio::spawn(report::run(
        report::ReportConfigMap {
            config_maps: config_maps.clone(),
            name: report_name(&document),
            pod: settings.pod.clone(),
        },
        reports_rx,
        metrics.clone(),
        retry_max,
    ));
    info!(%document, pod = %settings.pod, mta = %settings.mta, state = %saved.state(), "agent started");
    let drives = settings.mta;
    let documents = document_updates(watcher(
        config_maps,
        watcher::Config::default().fields(&format!("metadata.name={document}")),
    ))
    .inspect(move |update| {
        // The document's MTA comes from the workload's annotation or the incident: a
        // mismatch is a misconfiguration the agent cannot fix, only report.
        if let Some(named) = update.as_ref().and_then(|d| other_mta(d, drives)) {
            warn!(%named, %drives, "the mode document names another MTA than the one this agent drives (--mta); applying it to the MTA driven");
        }
    });
    converge::Loop {
        mta,
        state_file,
        metrics,
        readiness,
        probe,
        timing: converge::Timing {
            measure_every: Duration::from_secs(settings.report_seconds),
            verify_every: Duration::from_secs(settings.verify_seconds),
            probe_every: Duration::from_secs(settings.probe_seconds),
            ready_within: Duration::from_secs(settings.ready_within_seconds),
            retry_min: Duration::from_millis(500),
            retry_max,
        },
        intents,
        reports,
    }
    .run(saved, documents, crate::shutdown::signal())
    .await;
    if let Some(policy) = policy {
        policy.abort();
    }
    reporter.abort();
    http.stop().await;
    Ok(())
}

/// The document as the watch sees it: `Some` while it exists, `None` once it is gone,
/// one item per change (a relist yields the listed state once it is complete). A
/// document that cannot be read is skipped, keeping the current mode; watch errors are
/// retried with [`crate::retry::WatchBackoff`].
fn document_updates(
    events: impl Stream<Item = watcher::Result<Event<ConfigMap>>>,
) -> impl Stream<Item = Option<ModeDocument>> {
    events
        .backoff(crate::retry::WatchBackoff::new())
        .scan(None, |listed: &mut Option<ConfigMap>, event| {
            let update = match event {
                Ok(Event::Init) => {
                    *listed = None;
                    None
                }
                Ok(Event::InitApply(object)) => {
                    *listed = Some(object);
                    None
                }
                Ok(Event::InitDone) => Some(listed.take()),
                Ok(Event::Apply(object)) => Some(Some(object)),
                Ok(Event::Delete(_)) => Some(None),
                Err(error) => {
                    warn!(%error, "watch of the mode document failed; retrying");
                    None
                }
            };
            futures::future::ready(Some(update))
        })
        .filter_map(|update| {
            futures::future::ready(update.and_then(|current| {
                match current.as_ref().map(parse_document).transpose() {
                    Ok(document) => Some(document),
                    Err(error) => {
                        warn!(%error, "unreadable mode document; keeping the current mode");
                        None
                    }
                }
            }))
        })
}

fn parse_document(config_map: &ConfigMap) -> std::result::Result<ModeDocument, String> {
    let text = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(MODE_DOCUMENT_KEY))
        .ok_or_else(|| format!("no {MODE_DOCUMENT_KEY} key"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Mode documents for the renderers' and the state's unit tests.
#[cfg(test)]
mod fixtures {
    use super::state::Held;
    use crate::api::{
        Mode,
        mode_document::{
            DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply, MODE_DOCUMENT_KIND,
            MODE_DOCUMENT_VERSION, ModeDocument, Rule,
        },
    };

    /// A document for `mode` with the given reply codes, lifetimes 30d and 10d, and a
    /// release concurrency of 4.
    pub fn document(mode: Mode, code: u16, enhanced: &str) -> ModeDocument {
        ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            rules: vec![Rule {
                mode,
                reply: DocumentReply {
                    code,
                    enhanced_code: enhanced.into(),
                    text: "Mailbox storage temporarily unavailable, try again later".into(),
                },
                recipient_domains: None,
                incident: DocumentIncident {
                    name: "outage".into(),
                    uid: "u".into(),
                    reason: "r".into(),
                },
            }],
            queue: DocumentQueue {
                lifetime: "30d".into(),
                bounce_lifetime: "10d".into(),
            },
            release: DocumentRelease { concurrency: 4 },
            mta: None,
        }
    }

    /// The state once `document` has been applied.
    pub fn held(document: &ModeDocument) -> Held {
        Held::Normal.next(Some(document), 0)
    }

    /// A document of `rules`, each `(mode, code, enhanced code, domains)` with the text of
    /// [`document`]'s reply and an incident named after its position (`i0`, `i1`...);
    /// no domains: every recipient.
    pub fn rules(rules: &[(Mode, u16, &str, &[&str])]) -> ModeDocument {
        let mut document = document(Mode::TempFail, 452, "4.3.1");
        let template = document.rules[0].clone();
        document.rules = rules
            .iter()
            .enumerate()
            .map(|(at, (mode, code, enhanced, domains))| {
                let mut rule = template.clone();
                rule.mode = *mode;
                rule.reply.code = *code;
                rule.reply.enhanced_code = enhanced.to_string();
                rule.recipient_domains =
                    (!domains.is_empty()).then(|| domains.iter().map(|d| d.to_string()).collect());
                rule.incident.name = format!("i{at}");
                rule
            })
            .collect();
        document
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Mode;
    use futures::stream;

    #[test]
    fn a_document_naming_another_mta_than_the_one_driven_is_told_apart() {
        let mut document = fixtures::document(Mode::TempFail, 452, "4.3.1");
        document.mta = None;
        assert_eq!(other_mta(&document, MtaKind::Exim), None);
        document.mta = Some(MtaKind::Exim);
        assert_eq!(other_mta(&document, MtaKind::Exim), None);
        assert_eq!(other_mta(&document, MtaKind::Postfix), Some(MtaKind::Exim));
    }

    #[test]
    fn the_mta_flag_takes_the_spec_spelling_in_any_case() {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            settings: Settings,
        }
        let parsed = |mta: &[&str]| {
            let arguments = [
                "agent",
                "--workload",
                "Deployment/mta",
                "--namespace",
                "mail",
                "--pod",
                "mta-0",
            ];
            Command::try_parse_from(arguments.iter().chain(mta)).map(|c| c.settings.mta)
        };
        assert_eq!(parsed(&[]).unwrap(), MtaKind::Postfix);
        assert_eq!(parsed(&["--mta", "exim"]).unwrap(), MtaKind::Exim);
        assert_eq!(parsed(&["--mta", "Generic"]).unwrap(), MtaKind::Generic);
        assert!(parsed(&["--mta", "sendmail"]).is_err());
    }

    fn config_map(document: Option<&ModeDocument>) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some("mail-mode-deployment-postfix".into());
        object.data = Some(
            [(
                MODE_DOCUMENT_KEY.to_string(),
                document.map_or_else(|| "{not json".to_string(), ModeDocument::to_json),
            )]
            .into(),
        );
        object
    }

    fn updates(events: Vec<watcher::Result<Event<ConfigMap>>>) -> Vec<Option<Mode>> {
        futures::executor::block_on(
            document_updates(stream::iter(events))
                .map(|update| update.map(|document| document.headline().mode))
                .collect(),
        )
    }

    #[test]
    fn a_relist_yields_what_exists_once_it_is_complete_even_after_a_missed_delete() {
        let tempfail = fixtures::document(Mode::TempFail, 452, "4.3.1");
        let listed = updates(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(config_map(Some(&tempfail)))),
            Ok(Event::InitDone),
            // The watch broke and the Delete was missed: the relist finds nothing.
            Ok(Event::Init),
            Ok(Event::InitDone),
        ]);
        assert_eq!(listed, [Some(Mode::TempFail), None]);
    }

    #[test]
    fn an_unreadable_document_keeps_the_current_mode() {
        let reject = fixtures::document(Mode::HardReject, 550, "5.3.2");
        let seen = updates(vec![
            Ok(Event::Init),
            Ok(Event::InitDone),
            Ok(Event::Apply(config_map(None))),
            Ok(Event::Apply(config_map(Some(&reject)))),
            Ok(Event::Delete(config_map(Some(&reject)))),
        ]);
        assert_eq!(seen, [None, Some(Mode::HardReject), None]);
    }
}
