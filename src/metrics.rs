//! Every metric the operator exports, defined once and registered in one registry.
//! Labels name incidents, never pods or targets, so cardinality follows the number of
//! incidents, not the size of the fleet.

use crate::{
    agent::state::MtaState,
    api::{EffectiveMode, TimeSpan},
    plan::Decision,
};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::Collector,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// The `figure` label values of the queue gauges.
const MESSAGES: &str = "messages";
const OLDEST_MESSAGE_AGE: &str = "oldest_message_age_seconds";

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Sets the series of `labels` to `value`, or removes it when there is none.
fn set_or_remove(gauge: &IntGaugeVec, labels: &[&str], value: Option<i64>) {
    match value {
        Some(value) => gauge.with_label_values(labels).set(value),
        None => {
            gauge.remove_label_values(labels).ok();
        }
    }
}

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
    /// Mode transitions of incidents, by incident, from and to.
    pub transitions: IntCounterVec,
    /// Targets switched from AcceptAndQueue to TempFail by an escalation limit.
    pub escalations: IntCounterVec,
    /// Objects of ours found changed by another hand and put back, by kind.
    pub restored: IntCounterVec,
    /// Time from an incident generation's first sight to every target applying it.
    pub apply_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    leader: IntGauge,
    incidents_by_mode: IntGaugeVec,
    mode: IntGaugeVec,
    targets: IntGaugeVec,
    expiry: IntGaugeVec,
    scheduled_start: IntGaugeVec,
    scope_domains: IntGaugeVec,
    created: IntGaugeVec,
    queue_lifetime: IntGaugeVec,
    escalation_limit: IntGaugeVec,
    queue_peak: IntGaugeVec,
    accepting_queue_peak: IntGaugeVec,
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
                "Mode transitions of incidents, by incident, previous and new effective mode.",
                &["namespace", "incident", "from", "to"],
            ),
            escalations: counter(
                "mail_incident_escalations_total",
                "Targets switched from AcceptAndQueue to TempFail because their queue passed spec.escalation.",
                &["namespace", "incident"],
            ),
            restored: counter(
                "mail_incident_restored_objects_total",
                "Objects of the operator's (mode documents, reports, restart env vars) found changed by another hand and put back.",
                &["object"],
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
            mode: gauge(
                "mail_incident_mode",
                "1 for the effective mode of each incident (Normal once it has ended), 0 for the other modes.",
                &["namespace", "incident", "mode"],
            ),
            targets: gauge(
                "mail_incident_targets",
                "Targets of each incident by state: matched, applied, failed, superseded, idle (scaled to zero), unready (while scheduled: fewer ready pods than desired).",
                &["namespace", "incident", "state"],
            ),
            expiry: gauge(
                "mail_incident_expiry_timestamp_seconds",
                "When each incident ends by itself, as a Unix timestamp.",
                &["namespace", "incident"],
            ),
            scheduled_start: gauge(
                "mail_incident_scheduled_start_timestamp_seconds",
                "When each scheduled incident takes effect (spec.startsAt), as a Unix timestamp; only until it does.",
                &["namespace", "incident"],
            ),
            scope_domains: gauge(
                "mail_incident_scope_domains",
                "How many recipient domains each scoped incident covers (spec.scope.recipientDomains); absent for an incident covering every recipient.",
                &["namespace", "incident"],
            ),
            created: gauge(
                "mail_incident_created_timestamp_seconds",
                "When each incident was declared (its creation), as a Unix timestamp.",
                &["namespace", "incident"],
            ),
            queue_lifetime: gauge(
                "mail_incident_queue_lifetime_seconds",
                "The queue lifetime each incident gives accepted mail (spec.queue.lifetime).",
                &["namespace", "incident"],
            ),
            escalation_limit: gauge(
                "mail_incident_escalation_limit",
                "Each incident's escalation limits, by figure: messages (spec.escalation.maxQueuedMessages) and oldest_message_age_seconds (spec.escalation.maxOldestMessageAge).",
                &["namespace", "incident", "figure"],
            ),
            queue_peak: gauge(
                "mail_incident_queue_peak",
                "The fullest queue among the targets whose mode each incident decides, as their agents report it, by figure: messages, oldest_message_age_seconds.",
                &["namespace", "incident", "figure"],
            ),
            accepting_queue_peak: gauge(
                "mail_incident_accepting_queue_peak",
                "The fullest queue among the targets each incident keeps in AcceptAndQueue (not escalated), by figure: what its escalation limits are compared with; only while limits are set.",
                &["namespace", "incident", "figure"],
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

    /// Records what was just decided for an incident created at `created` (Unix seconds).
    pub fn observe_incident(
        &self,
        namespace: &str,
        incident: &str,
        created: Option<i64>,
        decision: &Decision,
    ) {
        let status = &decision.status;
        let labels = [namespace, incident];
        if let Some(targets) = &status.targets {
            for (state, count) in [
                ("matched", targets.matched),
                ("applied", targets.applied),
                ("failed", targets.failed),
                ("superseded", targets.superseded),
                ("idle", targets.idle),
                ("unready", targets.unready),
            ] {
                self.targets
                    .with_label_values(&[namespace, incident, state])
                    .set(count.into());
            }
        }
        set_or_remove(
            &self.expiry,
            &labels,
            status.expires_at.as_ref().map(|at| at.0.as_second()),
        );
        set_or_remove(&self.created, &labels, created);
        set_or_remove(
            &self.scheduled_start,
            &labels,
            decision.scheduled_start.map(|at| at.as_second()),
        );
        set_or_remove(
            &self.scope_domains,
            &labels,
            decision.scope_domains.map(i64::from),
        );
        let watch = decision.queue_watch.as_ref();
        set_or_remove(
            &self.queue_lifetime,
            &labels,
            watch.map(|w| saturating_i64(w.lifetime.seconds())),
        );
        let limits = watch.and_then(|w| w.escalation);
        let peak = watch.map(|w| w.peak);
        // The peak the limits are compared with exists only where limits do.
        let accepting = watch
            .filter(|w| w.escalation.is_some())
            .map(|w| w.accepting_peak);
        for (figure, limit, peak, accepting) in [
            (
                MESSAGES,
                limits.and_then(|l| l.max_queued_messages),
                peak.map(|p| p.messages),
                accepting.map(|p| p.messages),
            ),
            (
                OLDEST_MESSAGE_AGE,
                limits.and_then(|l| l.max_oldest_message_age.map(|age| age.seconds())),
                peak.map(|p| p.oldest_age_seconds),
                accepting.map(|p| p.oldest_age_seconds),
            ),
        ] {
            let labels = [namespace, incident, figure];
            set_or_remove(&self.escalation_limit, &labels, limit.map(saturating_i64));
            set_or_remove(&self.queue_peak, &labels, peak.map(saturating_i64));
            set_or_remove(
                &self.accepting_queue_peak,
                &labels,
                accepting.map(saturating_i64),
            );
        }
        for &mode in EffectiveMode::ALL {
            let labels = [namespace, incident, mode.as_str()];
            set_or_remove(
                &self.mode,
                &labels,
                status.effective_mode.map(|m| i64::from(m == mode)),
            );
        }
        let mut modes = self.modes.lock().expect("lock poisoned");
        match status.effective_mode {
            Some(mode) => modes.insert((namespace.into(), incident.into()), mode),
            None => modes.remove(&(namespace.into(), incident.into())),
        };
        self.count_modes(&modes);
    }

    /// Records whether this replica leads. One that stops leading drops every incident's
    /// series: the leader exports them now, and a copy frozen here would be read as
    /// current for as long as this pod lives (alerts take the max across replicas).
    pub fn set_leading(&self, leading: bool) {
        self.leader.set(leading.into());
        if leading {
            return;
        }
        for gauge in [
            &self.mode,
            &self.targets,
            &self.expiry,
            &self.scheduled_start,
            &self.scope_domains,
            &self.created,
            &self.queue_lifetime,
            &self.escalation_limit,
            &self.queue_peak,
            &self.accepting_queue_peak,
        ] {
            gauge.reset();
        }
        self.transitions.reset();
        self.escalations.reset();
        let mut modes = self.modes.lock().expect("lock poisoned");
        modes.clear();
        self.count_modes(&modes);
    }

    /// Counts a mode transition of an incident (`None`: its first mode).
    pub fn count_transition(
        &self,
        namespace: &str,
        incident: &str,
        from: Option<EffectiveMode>,
        to: EffectiveMode,
    ) {
        self.transitions
            .with_label_values(&[
                namespace,
                incident,
                from.map_or("None", EffectiveMode::as_str),
                to.as_str(),
            ])
            .inc();
    }

    /// Drops every series of an incident that no longer exists.
    pub fn forget_incident(&self, namespace: &str, incident: &str) {
        let labels = [namespace, incident];
        for state in [
            "matched",
            "applied",
            "failed",
            "superseded",
            "idle",
            "unready",
        ] {
            self.targets
                .remove_label_values(&[namespace, incident, state])
                .ok();
        }
        for gauge in [
            &self.expiry,
            &self.scheduled_start,
            &self.scope_domains,
            &self.created,
            &self.queue_lifetime,
        ] {
            gauge.remove_label_values(&labels).ok();
        }
        for figure in [MESSAGES, OLDEST_MESSAGE_AGE] {
            for gauge in [
                &self.escalation_limit,
                &self.queue_peak,
                &self.accepting_queue_peak,
            ] {
                gauge
                    .remove_label_values(&[namespace, incident, figure])
                    .ok();
            }
        }
        for &mode in EffectiveMode::ALL {
            self.mode
                .remove_label_values(&[namespace, incident, mode.as_str()])
                .ok();
        }
        for from in EffectiveMode::ALL.iter().copied().map(Some).chain([None]) {
            for &to in EffectiveMode::ALL {
                let from = from.map_or("None", EffectiveMode::as_str);
                self.transitions
                    .remove_label_values(&[namespace, incident, from, to.as_str()])
                    .ok();
            }
        }
        self.escalations.remove_label_values(&labels).ok();
        let mut modes = self.modes.lock().expect("lock poisoned");
        modes.remove(&(namespace.into(), incident.into()));
        self.count_modes(&modes);
    }

    fn count_modes(&self, modes: &HashMap<(String, String), EffectiveMode>) {
        for &mode in EffectiveMode::ALL {
            let count = modes.values().filter(|m| **m == mode).count();
            self.incidents_by_mode
                .with_label_values(&[mode.as_str()])
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
    /// The queue lifetime the applied mode gives mail (absent in Normal).
    queue_lifetime: IntGaugeVec,
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
    /// Times the agent found its MTA changed by another hand, by what was changed.
    drift: IntCounterVec,
    /// The RCPT reply code the MTA last gave the agent's SMTP probe (absent without one).
    probe_reply_code: IntGaugeVec,
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
            queue_lifetime: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mail_incident_agent_queue_lifetime_seconds",
                        "The queue lifetime the MTA gives mail under the applied incident mode or release; absent in Normal.",
                    ),
                    &[],
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
            drift: register(
                &registry,
                counter_with_labels(IntCounterVec::new(
                    Opts::new(
                        "mail_incident_agent_drift_total",
                        "Times the agent found its MTA running something other than what it applied (another hand's edit, a deleted file) and applied it again, by kind (answer: what decides the RCPT reply; queue: what holds queued mail).",
                    ),
                    &["kind"],
                )
                .expect("valid metric"), &["answer", "queue"]),
            ),
            probe_reply_code: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mail_incident_agent_probe_reply_code",
                        "The RCPT reply code the MTA last gave the agent's SMTP probe on loopback (0: no answer); absent without --probe-recipient.",
                    ),
                    &[],
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }
}

/// `counter` with a series at 0 for each of `labels` (its only label), so that a
/// dashboard or a rate sees it before the first count.
fn counter_with_labels(counter: IntCounterVec, labels: &[&str]) -> IntCounterVec {
    for label in labels {
        counter.with_label_values(&[label]);
    }
    counter
}

impl AgentMetrics {
    /// The registry every agent metric is in.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Records the state now applied: Normal, an incident mode, or Releasing.
    pub fn set_mode(&self, current: MtaState) {
        for &state in MtaState::ALL {
            self.mode
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == current));
        }
    }

    /// Records the queue lifetime now in force (`None`: the MTA's own).
    pub fn set_queue_lifetime(&self, lifetime: Option<TimeSpan>) {
        set_or_remove(
            &self.queue_lifetime,
            &[],
            lifetime.map(|l| saturating_i64(l.seconds())),
        );
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

    /// Counts one drift found, of `kind` (`answer` or `queue`).
    pub fn count_drift(&self, kind: &str) {
        self.drift.with_label_values(&[kind]).inc();
    }

    /// Records the reply code the SMTP probe last heard (0: none).
    pub fn set_probe_reply_code(&self, code: u16) {
        set_or_remove(&self.probe_reply_code, &[], Some(i64::from(code)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{MailIncidentStatus, validation::EscalationLimits},
        plan::{QueuePeak, QueueWatch},
    };
    use prometheus::{Encoder, TextEncoder};

    fn exposition(registry: &Registry) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .collect()
    }

    fn decision(mode: EffectiveMode, watch: Option<QueueWatch>) -> Decision {
        Decision {
            status: MailIncidentStatus {
                effective_mode: Some(mode),
                ..Default::default()
            },
            events: vec![],
            transition: None,
            escalations: 0,
            newly_applied: false,
            queue_watch: watch,
            scheduled_start: None,
            scope_domains: None,
            restored: vec![],
            agent_drifts: vec![],
        }
    }

    #[test]
    fn a_scheduled_scoped_incident_exports_its_start_and_scope_until_it_starts() {
        let metrics = Metrics::default();
        let mut window = decision(EffectiveMode::Normal, None);
        window.scheduled_start =
            Some(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        window.scope_domains = Some(2);
        metrics.observe_incident("mail", "window", None, &window);
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_scheduled_start_timestamp_seconds"),
            [
                r#"mail_incident_scheduled_start_timestamp_seconds{incident="window",namespace="mail"} 1800000000"#
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_scope_domains"),
            [r#"mail_incident_scope_domains{incident="window",namespace="mail"} 2"#]
        );
        // Started: the start is no longer upcoming.
        window.scheduled_start = None;
        window.status.effective_mode = Some(EffectiveMode::TempFail);
        metrics.observe_incident("mail", "window", None, &window);
        let text = exposition(&metrics.registry());
        assert!(series(&text, "mail_incident_scheduled_start_timestamp_seconds").is_empty());
        metrics.forget_incident("mail", "window");
        let text = exposition(&metrics.registry());
        assert!(series(&text, "mail_incident_scope_domains").is_empty());
    }

    /// No series of any incident is left, and the incident that had `mode` is no longer
    /// counted in it.
    fn assert_incident_series_gone(metrics: &Metrics, mode: &str) {
        let text = exposition(&metrics.registry());
        for name in [
            "mail_incident_mode",
            "mail_incident_created_timestamp_seconds",
            "mail_incident_transitions_total",
        ] {
            assert!(series(&text, name).is_empty(), "{name} is left:\n{text}");
        }
        assert!(text.contains(&format!(r#"mail_incident_incidents{{mode="{mode}"}} 0"#)));
    }

    #[test]
    fn an_incident_exports_its_mode_queue_watch_and_creation_until_forgotten() {
        let metrics = Metrics::default();
        let watch = QueueWatch {
            lifetime: "5d".parse().unwrap(),
            escalation: Some(EscalationLimits {
                max_queued_messages: Some(1_000),
                max_oldest_message_age: None,
            }),
            peak: QueuePeak {
                messages: 250,
                oldest_age_seconds: 3_600,
            },
            accepting_peak: QueuePeak {
                messages: 120,
                oldest_age_seconds: 600,
            },
        };
        let hold = decision(EffectiveMode::AcceptAndQueue, Some(watch));
        metrics.observe_incident("mail", "hold", Some(1_700_000_000), &hold);
        metrics.count_transition("mail", "hold", None, EffectiveMode::AcceptAndQueue);
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_mode"),
            [
                r#"mail_incident_mode{incident="hold",mode="AcceptAndQueue",namespace="mail"} 1"#,
                r#"mail_incident_mode{incident="hold",mode="HardReject",namespace="mail"} 0"#,
                r#"mail_incident_mode{incident="hold",mode="Normal",namespace="mail"} 0"#,
                r#"mail_incident_mode{incident="hold",mode="TempFail",namespace="mail"} 0"#,
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_queue_lifetime_seconds"),
            [r#"mail_incident_queue_lifetime_seconds{incident="hold",namespace="mail"} 432000"#]
        );
        // Only the limit that is set has a series: an alert on the other finds none.
        assert_eq!(
            series(&text, "mail_incident_escalation_limit"),
            [
                r#"mail_incident_escalation_limit{figure="messages",incident="hold",namespace="mail"} 1000"#
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_queue_peak"),
            [
                r#"mail_incident_queue_peak{figure="messages",incident="hold",namespace="mail"} 250"#,
                r#"mail_incident_queue_peak{figure="oldest_message_age_seconds",incident="hold",namespace="mail"} 3600"#,
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_accepting_queue_peak"),
            [
                r#"mail_incident_accepting_queue_peak{figure="messages",incident="hold",namespace="mail"} 120"#,
                r#"mail_incident_accepting_queue_peak{figure="oldest_message_age_seconds",incident="hold",namespace="mail"} 600"#,
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_created_timestamp_seconds"),
            [
                r#"mail_incident_created_timestamp_seconds{incident="hold",namespace="mail"} 1700000000"#
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_transitions_total"),
            [
                r#"mail_incident_transitions_total{from="None",incident="hold",namespace="mail",to="AcceptAndQueue"} 1"#
            ]
        );

        // An invalid edit: the watch goes, the mode stays.
        metrics.observe_incident(
            "mail",
            "hold",
            Some(1_700_000_000),
            &decision(EffectiveMode::AcceptAndQueue, None),
        );
        let text = exposition(&metrics.registry());
        assert!(series(&text, "mail_incident_queue_peak").is_empty());
        assert!(series(&text, "mail_incident_queue_lifetime_seconds").is_empty());
        assert_eq!(series(&text, "mail_incident_mode").len(), 4);

        metrics.forget_incident("mail", "hold");
        assert_incident_series_gone(&metrics, "AcceptAndQueue");
    }

    #[test]
    fn a_replica_that_stops_leading_drops_every_incident_series() {
        let metrics = Metrics::default();
        metrics.set_leading(true);
        metrics.observe_incident(
            "mail",
            "bounce",
            Some(1_700_000_000),
            &decision(EffectiveMode::HardReject, None),
        );
        metrics.count_transition("mail", "bounce", None, EffectiveMode::HardReject);
        let text = exposition(&metrics.registry());
        assert_eq!(series(&text, "mail_incident_mode").len(), 4);

        metrics.set_leading(false);
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_leader"),
            ["mail_incident_leader 0"]
        );
        assert_incident_series_gone(&metrics, "HardReject");
    }

    #[test]
    fn the_agent_exports_a_queue_lifetime_only_while_one_is_applied() {
        let metrics = AgentMetrics::default();
        metrics.set_queue_lifetime(Some("7d".parse().unwrap()));
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_agent_queue_lifetime_seconds"),
            ["mail_incident_agent_queue_lifetime_seconds 604800"]
        );
        metrics.set_queue_lifetime(None);
        let text = exposition(&metrics.registry());
        assert!(series(&text, "mail_incident_agent_queue_lifetime_seconds").is_empty());
    }
}
