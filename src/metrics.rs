//! Every metric the operator exports, defined once and registered in one registry.
//! Labels name incidents, never pods or targets, so cardinality follows the number of
//! incidents, not the size of the fleet.

use crate::api::{EffectiveMode, MailIncidentStatus};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::Collector,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

const MODES: [EffectiveMode; 4] = [
    EffectiveMode::Normal,
    EffectiveMode::AcceptAndQueue,
    EffectiveMode::TempFail,
    EffectiveMode::HardReject,
];

/// The operator's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by error category.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile wall time.
    pub reconcile_duration: HistogramVec,
    /// Mode transitions of incidents, by from and to.
    pub transitions: IntCounterVec,
    /// Targets switched from AcceptAndQueue to TempFail by an escalation limit.
    pub escalations: IntCounterVec,
    /// Time from an incident generation's first sight to every target applying it.
    pub apply_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    incidents_by_mode: IntGaugeVec,
    targets: IntGaugeVec,
    expiry: IntGaugeVec,
    /// The effective mode of each incident, to count incidents by mode.
    modes: Arc<Mutex<HashMap<(String, String), EffectiveMode>>>,
}

/// A registry holding the standard `process_*` metrics (resident memory, CPU seconds...).
fn registry_with_process_metrics() -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");
    registry
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = registry_with_process_metrics();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Self {
            reconciles: counter(
                "mail_incident_reconciles_total",
                "Finished MailIncident reconciles, by result.",
                &["result"],
            ),
            reconcile_errors: counter(
                "mail_incident_reconcile_errors_total",
                "Failed MailIncident reconciles, by error category.",
                &["category"],
            ),
            reconcile_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "mail_incident_reconcile_duration_seconds",
                        "Time taken by one reconcile (a sync of the incident's namespace).",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                    &[],
                )
                .expect("valid metric"),
            ),
            transitions: counter(
                "mail_incident_transitions_total",
                "Mode transitions of incidents, by previous and new effective mode.",
                &["from", "to"],
            ),
            escalations: counter(
                "mail_incident_escalations_total",
                "Targets switched from AcceptAndQueue to TempFail because their queue passed spec.escalation.",
                &["namespace", "incident"],
            ),
            apply_duration: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "mail_incident_apply_duration_seconds",
                        "Time from the first sight of an incident generation to every target applying its mode.",
                    )
                    .buckets(vec![0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
                )
                .expect("valid metric"),
            ),
            leader: register(
                &registry,
                IntGauge::new(
                    "mail_incident_leader",
                    "1 while this replica holds the leader Lease and writes, 0 otherwise.",
                )
                .expect("valid metric"),
            ),
            incidents_by_mode: gauge(
                "mail_incident_incidents",
                "Incidents by effective mode (Normal: resolved or expired, kept as records).",
                &["mode"],
            ),
            targets: gauge(
                "mail_incident_targets",
                "Targets of each incident by state: matched, applied, failed, superseded.",
                &["namespace", "incident", "state"],
            ),
            expiry: gauge(
                "mail_incident_expiry_timestamp_seconds",
                "When each incident ends by itself, as a Unix timestamp.",
                &["namespace", "incident"],
            ),
            modes: Arc::default(),
            registry,
        }
    }
}

impl Metrics {
    /// The registry every metric above is in.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Records the status just decided for an incident.
    pub fn observe_incident(&self, namespace: &str, incident: &str, status: &MailIncidentStatus) {
        if let Some(targets) = &status.targets {
            for (state, count) in [
                ("matched", targets.matched),
                ("applied", targets.applied),
                ("failed", targets.failed),
                ("superseded", targets.superseded),
            ] {
                self.targets
                    .with_label_values(&[namespace, incident, state])
                    .set(count.into());
            }
        }
        match &status.expires_at {
            Some(at) => self
                .expiry
                .with_label_values(&[namespace, incident])
                .set(at.0.as_second()),
            None => {
                self.expiry.remove_label_values(&[namespace, incident]).ok();
            }
        }
        let mut modes = self.modes.lock().expect("lock poisoned");
        match status.effective_mode {
            Some(mode) => modes.insert((namespace.into(), incident.into()), mode),
            None => modes.remove(&(namespace.into(), incident.into())),
        };
        self.count_modes(&modes);
    }

    /// Drops every series of an incident that no longer exists.
    pub fn forget_incident(&self, namespace: &str, incident: &str) {
        for state in ["matched", "applied", "failed", "superseded"] {
            self.targets
                .remove_label_values(&[namespace, incident, state])
                .ok();
        }
        self.expiry.remove_label_values(&[namespace, incident]).ok();
        let mut modes = self.modes.lock().expect("lock poisoned");
        modes.remove(&(namespace.into(), incident.into()));
        self.count_modes(&modes);
    }

    fn count_modes(&self, modes: &HashMap<(String, String), EffectiveMode>) {
        for mode in MODES {
            let count = modes.values().filter(|m| **m == mode).count();
            self.incidents_by_mode
                .with_label_values(&[format!("{mode:?}").as_str()])
                .set(count as i64);
        }
    }
}

/// The agent's metrics.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// 1 for the mode the MTA runs now (`Normal` outside incidents), 0 for the others.
    pub mode: IntGaugeVec,
    /// Messages in the MTA's queue, by queue.
    pub queue_messages: IntGaugeVec,
    /// Age of the oldest queued message.
    pub oldest_message_age: IntGauge,
    /// Modes applied to the MTA (a reconfiguration and reload each).
    pub applies: prometheus::IntCounter,
    /// Failed attempts to apply a mode or to report it.
    pub errors: IntCounterVec,
    /// 1 while the MTA runs the state the mode document asks for, 0 while it differs.
    converged: IntGauge,
    /// When the MTA began to differ from what the document asks (Unix seconds), 0 while
    /// it does not: `time() - x` is how long an agent has been stuck.
    diverged_since: IntGauge,
    /// Postfix policy service answers, by kind.
    policy_answers: IntCounterVec,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let registry = registry_with_process_metrics();
        Self {
            mode: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mail_incident_agent_mode",
                        "1 for the mode the MTA runs now (Releasing: held mail going out after an incident).",
                    ),
                    &["mode"],
                )
                .expect("valid metric"),
            ),
            queue_messages: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mail_incident_agent_queue_messages",
                        "Messages in the MTA's queue, by queue.",
                    ),
                    &["queue"],
                )
                .expect("valid metric"),
            ),
            oldest_message_age: register(
                &registry,
                IntGauge::new(
                    "mail_incident_agent_oldest_message_age_seconds",
                    "Age of the oldest message in the MTA's queue.",
                )
                .expect("valid metric"),
            ),
            applies: register(
                &registry,
                prometheus::IntCounter::new(
                    "mail_incident_agent_applies_total",
                    "Modes applied to the MTA.",
                )
                .expect("valid metric"),
            ),
            errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "mail_incident_agent_errors_total",
                        "Failed applies and reports, by what failed.",
                    ),
                    &["action"],
                )
                .expect("valid metric"),
            ),
            converged: register(
                &registry,
                IntGauge::new(
                    "mail_incident_agent_converged",
                    "1 while the MTA runs the state its mode document asks for, 0 while it differs.",
                )
                .expect("valid metric"),
            ),
            diverged_since: register(
                &registry,
                IntGauge::new(
                    "mail_incident_agent_diverged_since_seconds",
                    "When the MTA began to differ from what its mode document asks (Unix time), 0 while it does not.",
                )
                .expect("valid metric"),
            ),
            policy_answers: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "mail_incident_agent_policy_answers_total",
                        "Postfix policy service answers, by kind (dunno, tempfail, reject).",
                    ),
                    &["answer"],
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }
}

impl AgentMetrics {
    /// The registry every agent metric is in.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Records the state now applied: Normal, an incident mode, or Releasing.
    pub fn set_mode(&self, current: &str) {
        for name in [
            "Normal",
            "AcceptAndQueue",
            "TempFail",
            "HardReject",
            "Releasing",
        ] {
            self.mode
                .with_label_values(&[name])
                .set(i64::from(name == current));
        }
    }

    /// Records whether the MTA runs what the document asks, and since when it does not.
    pub fn set_convergence(&self, converged: bool, diverged_since: Option<tokio::time::Instant>) {
        self.converged.set(i64::from(converged));
        let since = diverged_since.map_or(0, |since| {
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            now.saturating_sub(i64::try_from(since.elapsed().as_secs()).unwrap_or(i64::MAX))
        });
        self.diverged_since.set(since);
    }

    /// Counts one answer of the Postfix policy service (`DUNNO` or an SMTP reply).
    pub fn count_policy_answer(&self, action: &str) {
        let kind = match action.as_bytes().first() {
            Some(b'4') => "tempfail",
            Some(b'5') => "reject",
            _ => "dunno",
        };
        self.policy_answers.with_label_values(&[kind]).inc();
    }

    /// Records a queue measurement.
    pub fn set_queue(&self, figures: &crate::api::mode_document::QueueFigures) {
        self.queue_messages.reset();
        for (queue, count) in &figures.by_queue {
            self.queue_messages
                .with_label_values(&[queue.as_str()])
                .set(*count as i64);
        }
        self.oldest_message_age
            .set(figures.oldest_age_seconds as i64);
    }
}
