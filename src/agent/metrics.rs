//! The agent's metrics: what its MTA runs and holds, and what the agent did about it.

use super::state::MtaState;
use crate::{
    api::{TimeSpan, mode_document::QueueFigures},
    metrics::{register, registry_with_process_metrics},
};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    pub fn set_queue(&self, figures: &QueueFigures) {
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
    use crate::metrics::tests::{exposition, series};

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
