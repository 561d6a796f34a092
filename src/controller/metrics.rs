//! The controller's metrics. Labels name incidents, never pods or targets, so cardinality
//! follows the number of incidents, not the size of the fleet.
//!
//! The series of each incident are not kept in gauges set as decisions come: they are
//! written at each scrape from the last decision recorded per incident
//! ([`IncidentSeries`]), so an incident forgotten takes all of its series with it, and a
//! standby, which records nothing, exports none.

use crate::{
    api::EffectiveMode,
    metrics::{register, registry_with_process_metrics},
    plan::{Decision, QueueWatch},
};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

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
    /// Objects of ours found changed by another hand and put back, by kind.
    pub restored: IntCounterVec,
    /// Time from an incident generation's first sight to every target applying it.
    pub apply_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    leader: IntGauge,
    incidents: IncidentSeries,
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
            incidents: register(&registry, IncidentSeries::default()),
            registry,
        }
    }
}

impl Metrics {
    /// The registry every metric above is in.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Records what was just decided for an incident created at `created` (Unix seconds):
    /// its series show it from the next scrape.
    pub fn record_decision(
        &self,
        namespace: &str,
        incident: &str,
        created: Option<i64>,
        decision: &Decision,
    ) {
        self.incidents
            .book()
            .record(namespace, incident, created, decision);
    }

    /// Drops every series of an incident that no longer exists.
    pub fn forget_incident(&self, namespace: &str, incident: &str) {
        self.incidents.book().forget(namespace, incident);
    }

    /// Records whether this replica leads. One that stops leading drops every incident's
    /// series: the leader exports them now, and a copy frozen here would be read as
    /// current for as long as this pod lives (alerts take the max across replicas).
    pub fn set_leading(&self, leading: bool) {
        self.leader.set(leading.into());
        self.incidents.book().set_leading(leading);
    }
}

/// The `figure` label values of the queue gauges.
const MESSAGES: &str = "messages";
const OLDEST_MESSAGE_AGE: &str = "oldest_message_age_seconds";

/// What the series of one incident show, from its last decision.
#[derive(Debug, Clone, Default, PartialEq)]
struct IncidentRecord {
    created: Option<i64>,
    mode: Option<EffectiveMode>,
    /// By state, as the `state` label names them; absent before targets are counted.
    targets: Option<[(&'static str, u32); 6]>,
    expiry: Option<i64>,
    scheduled_start: Option<i64>,
    scope_domains: Option<u32>,
    queue_watch: Option<QueueWatch>,
    /// Mode transitions counted while this replica leads, by from (`None`: the first
    /// mode) and to; a few at most.
    transitions: Vec<(Option<EffectiveMode>, EffectiveMode, u64)>,
    /// Targets escalated while this replica leads; no series before the first.
    escalations: u64,
}

impl IncidentRecord {
    /// Takes in `decision`: its figures replace the last ones, its transition and
    /// escalations add to the counts.
    fn update(&mut self, created: Option<i64>, decision: &Decision) {
        let status = &decision.status;
        self.created = created;
        self.mode = status.effective_mode;
        self.targets = status.targets.as_ref().map(|t| {
            [
                ("matched", t.matched),
                ("applied", t.applied),
                ("failed", t.failed),
                ("superseded", t.superseded),
                ("idle", t.idle),
                ("unready", t.unready),
            ]
        });
        self.expiry = status.expires_at.as_ref().map(|at| at.0.as_second());
        self.scheduled_start = decision.scheduled_start.map(|at| at.as_second());
        self.scope_domains = decision.scope_domains;
        self.queue_watch = decision.queue_watch;
        if let Some(t) = &decision.transition {
            let counted = self
                .transitions
                .iter_mut()
                .find(|(from, to, _)| (*from, *to) == (t.from, t.to));
            match counted {
                Some((_, _, count)) => *count += 1,
                None => self.transitions.push((t.from, t.to, 1)),
            }
        }
        self.escalations += u64::from(decision.escalations);
    }
}

/// The last decision of each incident, while this replica leads.
#[derive(Debug, Default)]
struct Book {
    leading: bool,
    /// By namespace and name.
    incidents: BTreeMap<(String, String), IncidentRecord>,
}

impl Book {
    fn record(
        &mut self,
        namespace: &str,
        incident: &str,
        created: Option<i64>,
        decision: &Decision,
    ) {
        self.incidents
            .entry((namespace.to_string(), incident.to_string()))
            .or_default()
            .update(created, decision);
    }

    fn forget(&mut self, namespace: &str, incident: &str) {
        self.incidents
            .remove(&(namespace.to_string(), incident.to_string()));
    }

    fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
        if !leading {
            self.incidents.clear();
        }
    }
}

/// The per-incident series, as a [`Collector`] that writes them from the [`Book`] at each
/// scrape; cheap to clone.
#[derive(Clone)]
struct IncidentSeries {
    book: Arc<Mutex<Book>>,
    /// The families' descriptions, which the registry checks once at registration.
    described: Arc<Families>,
}

impl Default for IncidentSeries {
    fn default() -> Self {
        Self {
            book: Arc::default(),
            described: Arc::new(Families::new()),
        }
    }
}

impl IncidentSeries {
    /// The book, under its lock; the updates made under it cannot panic, so it is never
    /// poisoned.
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("lock poisoned")
    }
}

impl Collector for IncidentSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.described.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let book = self.book();
        if !book.leading {
            return vec![];
        }
        Families::from_book(&book).collect()
    }
}

/// The per-incident metric families, filled from scratch at each scrape.
struct Families {
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
    transitions: IntCounterVec,
    escalations: IntCounterVec,
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Families {
    fn new() -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        Self {
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
        }
    }

    /// Every family's description, in a fixed order.
    fn desc(&self) -> Vec<&Desc> {
        self.gauges()
            .into_iter()
            .flat_map(Collector::desc)
            .chain(self.transitions.desc())
            .chain(self.escalations.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauges()
            .into_iter()
            .flat_map(Collector::collect)
            .chain(self.transitions.collect())
            .chain(self.escalations.collect())
            .collect()
    }

    fn gauges(&self) -> [&IntGaugeVec; 11] {
        [
            &self.incidents_by_mode,
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
        ]
    }

    /// The series of every incident in `book`, and the count of incidents by mode.
    fn from_book(book: &Book) -> Self {
        let families = Self::new();
        for &mode in EffectiveMode::ALL {
            let count = book
                .incidents
                .values()
                .filter(|r| r.mode == Some(mode))
                .count();
            families
                .incidents_by_mode
                .with_label_values(&[mode.as_str()])
                .set(count as i64);
        }
        for ((namespace, incident), record) in &book.incidents {
            families.add(namespace, incident, record);
        }
        families
    }

    fn add(&self, namespace: &str, incident: &str, record: &IncidentRecord) {
        let labels = [namespace, incident];
        let set = |gauge: &IntGaugeVec, labels: &[&str], value: Option<i64>| {
            if let Some(value) = value {
                gauge.with_label_values(labels).set(value);
            }
        };
        for (state, count) in record.targets.iter().flatten() {
            set(
                &self.targets,
                &[namespace, incident, state],
                Some((*count).into()),
            );
        }
        set(&self.expiry, &labels, record.expiry);
        set(&self.created, &labels, record.created);
        set(&self.scheduled_start, &labels, record.scheduled_start);
        set(
            &self.scope_domains,
            &labels,
            record.scope_domains.map(i64::from),
        );
        let watch = record.queue_watch.as_ref();
        set(
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
            set(&self.escalation_limit, &labels, limit.map(saturating_i64));
            set(&self.queue_peak, &labels, peak.map(saturating_i64));
            set(
                &self.accepting_queue_peak,
                &labels,
                accepting.map(saturating_i64),
            );
        }
        if let Some(current) = record.mode {
            for &mode in EffectiveMode::ALL {
                set(
                    &self.mode,
                    &[namespace, incident, mode.as_str()],
                    Some(i64::from(mode == current)),
                );
            }
        }
        for &(from, to, count) in &record.transitions {
            let from = from.map_or("None", EffectiveMode::as_str);
            self.transitions
                .with_label_values(&[namespace, incident, from, to.as_str()])
                .inc_by(count);
        }
        if record.escalations > 0 {
            self.escalations
                .with_label_values(&labels)
                .inc_by(record.escalations);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{MailIncidentStatus, Transition, validation::EscalationLimits},
        metrics::tests::{exposition, series},
        plan::QueueLoad,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// The metrics of a replica that leads.
    fn leading() -> Metrics {
        let metrics = Metrics::default();
        metrics.set_leading(true);
        metrics
    }

    /// A decision that makes the incident's first transition, to `to`.
    fn first_transition(to: EffectiveMode) -> Decision {
        let mut first = decision(to, None);
        first.transition = Some(Transition {
            from: None,
            to,
            at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            reason: "INC-7".into(),
            by: None,
        });
        first
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
        let metrics = leading();
        let mut window = decision(EffectiveMode::Normal, None);
        window.scheduled_start =
            Some(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        window.scope_domains = Some(2);
        metrics.record_decision("mail", "window", None, &window);
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
        metrics.record_decision("mail", "window", None, &window);
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
        let metrics = leading();
        let watch = QueueWatch {
            lifetime: "5d".parse().unwrap(),
            escalation: Some(EscalationLimits {
                max_queued_messages: Some(1_000),
                max_oldest_message_age: None,
            }),
            peak: QueueLoad {
                messages: 250,
                oldest_age_seconds: 3_600,
            },
            accepting_peak: QueueLoad {
                messages: 120,
                oldest_age_seconds: 600,
            },
        };
        let mut hold = first_transition(EffectiveMode::AcceptAndQueue);
        hold.queue_watch = Some(watch);
        metrics.record_decision("mail", "hold", Some(1_700_000_000), &hold);
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
        metrics.record_decision(
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
        let metrics = leading();
        metrics.record_decision(
            "mail",
            "bounce",
            Some(1_700_000_000),
            &first_transition(EffectiveMode::HardReject),
        );
        let text = exposition(&metrics.registry());
        assert_eq!(series(&text, "mail_incident_mode").len(), 4);

        metrics.set_leading(false);
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_leader"),
            ["mail_incident_leader 0"]
        );
        assert_no_incident_series(&metrics);
    }

    /// No per-incident series at all, and no count of incidents by mode.
    fn assert_no_incident_series(metrics: &Metrics) {
        let text = exposition(&metrics.registry());
        for name in [
            "mail_incident_incidents",
            "mail_incident_mode",
            "mail_incident_targets",
            "mail_incident_created_timestamp_seconds",
            "mail_incident_transitions_total",
            "mail_incident_escalations_total",
        ] {
            assert!(series(&text, name).is_empty(), "{name} is left:\n{text}");
        }
    }

    #[test]
    fn a_standby_exports_no_incident_series_even_for_a_decision_recorded() {
        let metrics = Metrics::default();
        metrics.record_decision(
            "mail",
            "outage",
            Some(1_700_000_000),
            &first_transition(EffectiveMode::TempFail),
        );
        assert_no_incident_series(&metrics);
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_leader"),
            ["mail_incident_leader 0"]
        );
    }

    #[test]
    fn transitions_and_escalations_add_up_over_decisions_and_incidents_are_counted_by_mode() {
        let metrics = leading();
        metrics.record_decision(
            "mail",
            "hold",
            None,
            &first_transition(EffectiveMode::AcceptAndQueue),
        );
        metrics.record_decision(
            "mail",
            "other",
            None,
            &decision(EffectiveMode::AcceptAndQueue, None),
        );
        let mut escalating = decision(EffectiveMode::AcceptAndQueue, None);
        escalating.escalations = 2;
        metrics.record_decision("mail", "hold", None, &escalating);
        escalating.escalations = 1;
        metrics.record_decision("mail", "hold", None, &escalating);
        // A decision without news keeps the counts.
        metrics.record_decision(
            "mail",
            "hold",
            None,
            &decision(EffectiveMode::AcceptAndQueue, None),
        );
        let text = exposition(&metrics.registry());
        assert_eq!(
            series(&text, "mail_incident_escalations_total"),
            [r#"mail_incident_escalations_total{incident="hold",namespace="mail"} 3"#]
        );
        assert_eq!(
            series(&text, "mail_incident_transitions_total"),
            [
                r#"mail_incident_transitions_total{from="None",incident="hold",namespace="mail",to="AcceptAndQueue"} 1"#
            ]
        );
        assert_eq!(
            series(&text, "mail_incident_incidents"),
            [
                r#"mail_incident_incidents{mode="AcceptAndQueue"} 2"#,
                r#"mail_incident_incidents{mode="HardReject"} 0"#,
                r#"mail_incident_incidents{mode="Normal"} 0"#,
                r#"mail_incident_incidents{mode="TempFail"} 0"#,
            ]
        );
        assert!(text.contains("# TYPE mail_incident_escalations_total counter"));
        assert!(text.contains("# HELP mail_incident_mode 1 for the effective mode of each incident (Normal once it has ended), 0 for the other modes."));
    }
}
