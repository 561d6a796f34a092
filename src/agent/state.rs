//! What the agent holds its MTA in, and how that follows the mode document. Pure: the
//! agent's loop reads documents and queues and applies the result.
//!
//! An incident ends in two steps. When its document goes away the MTA enters
//! `Releasing`: it delivers the held mail again, at the incident's release concurrency,
//! with the incident's queue lifetimes still in force so that no held message expires on
//! its way out. Once no message older than the release is left, it returns to `Normal`,
//! the MTA's own configuration.
//!
//! A document whose rules are all scoped holds only the mail of its domains (see
//! [`Held::held_scope`]): the queue figures the agent reports count that mail only, so
//! that escalation and the end of a release are judged on what was held, not on mail
//! for other domains that happens to be queued.

use crate::api::{
    Mode, TimeSpan,
    mode_document::{ModeDocument, QueueFigures},
    scope::{DomainPattern, recipient_domain},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// While a release runs, the queue is measured again after this many times as long as the
/// last measurement took: scanning takes at most a tenth of the time, so a huge queue is
/// not scanned back to back, and a small one is measured within a fraction of a second.
const RELEASE_SCAN_SHARE: u32 = 10;

/// The shortest wait between two measurements while a release runs, however small the
/// queue: a few MTA commands a second at most.
const RELEASE_MEASURE_FLOOR: Duration = Duration::from_millis(250);

/// See [`Held::release_pass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasePass {
    /// Nothing to start: a pass still runs, the release is over, or no release runs.
    Running,
    /// The last pass ended having delivered some of the held mail: another, now.
    AgainNow,
    /// The last pass ended having delivered none: another, after a backoff.
    AgainLater,
}

/// The state of the MTA as the agent has configured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum Held {
    /// The MTA's own configuration.
    Normal,
    /// An incident's mode.
    Incident { document: Box<ModeDocument> },
    /// Delivering the mail held by an incident that has ended.
    Releasing { release: Release },
}

/// How held mail goes out once its incident ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// Deliveries to mailbox storage at once.
    pub concurrency: u16,
    /// The incident's queue lifetimes (MTA notation, e.g. `5d`), kept until the held mail
    /// is delivered.
    pub lifetime: String,
    pub bounce_lifetime: String,
    /// When the release began (seconds since the epoch): mail older than this is held mail.
    pub since: i64,
    /// The domains whose mail was held (`*.example.com` for subdomains), when the incident
    /// held only theirs; absent when it held every recipient's (and in state files
    /// written before scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_domains: Option<Vec<String>>,
}

impl Held {
    /// The state that follows `self` when the document becomes `document` at `now`.
    pub fn next(&self, document: Option<&ModeDocument>, now: i64) -> Held {
        match (document, self) {
            (Some(document), _) => Held::Incident {
                document: Box::new(document.clone()),
            },
            (None, Held::Incident { document }) => Held::Releasing {
                release: Release {
                    concurrency: document.release.concurrency,
                    lifetime: document.queue.lifetime.clone(),
                    bounce_lifetime: document.queue.bounce_lifetime.clone(),
                    since: now,
                    held_domains: (!document.covers_everyone()).then(|| {
                        document
                            .held_domains()
                            .iter()
                            .map(ToString::to_string)
                            .collect()
                    }),
                },
            },
            (None, other) => other.clone(),
        }
    }

    /// After a queue measurement: `Normal` once a release has nothing older than itself
    /// left in the queue (or the MTA cannot tell its queue); otherwise unchanged.
    pub fn after_measuring(&self, queue: Option<&QueueFigures>, now: i64) -> Held {
        match self {
            Held::Releasing { release } => {
                let drained = queue.is_none_or(|q| {
                    q.messages == 0
                        || i64::try_from(q.oldest_age_seconds).unwrap_or(i64::MAX)
                            < now - release.since
                });
                if drained { Held::Normal } else { self.clone() }
            }
            other => other.clone(),
        }
    }

    /// How long after the start of a queue measurement that took `scan` the next one
    /// starts, for a period of `period`. While releasing, sooner than the period, so that
    /// the end of the held mail is noticed at once rather than at the next report: after
    /// [`RELEASE_SCAN_SHARE`] times the scan (a shrinking queue is measured more and more
    /// often), at least [`RELEASE_MEASURE_FLOOR`], never later than the period. Otherwise
    /// the period: nothing waits on the queue.
    pub fn measure_after(&self, scan: Duration, period: Duration) -> Duration {
        match self {
            Held::Releasing { .. } => scan
                .saturating_mul(RELEASE_SCAN_SHARE)
                .max(RELEASE_MEASURE_FLOOR)
                .min(period),
            _ => period,
        }
    }

    /// Whether a release applied since the `previous` measurement has delivered nothing
    /// at all while held mail is still queued: its flush may have been lost (a reload
    /// cut short, the agent restarted in the middle), and the MTA would otherwise wait
    /// for its own next queue scan, minutes away. The agent then applies it again.
    pub fn release_stalled(
        &self,
        previous: Option<&QueueFigures>,
        now: Option<&QueueFigures>,
    ) -> bool {
        matches!(self, Held::Releasing { .. })
            && matches!((previous, now), (Some(before), Some(after))
                if after.messages > 0 && after.messages >= before.messages)
    }

    /// What a release does next on an MTA whose deliveries run in passes (Exim's queue
    /// runners), once the queue is measured `now`: `delivering` says whether the last
    /// pass still runs (`None`: the MTA delivers on its own, as Postfix's queue manager
    /// does), `started_with` how many held messages were queued when it began. One pass
    /// is not a release: a runner skips a message another process has locked, and a
    /// delivery may fail once. So while held mail is left another pass starts when the
    /// last ends: at once if it delivered some, after a backoff if it delivered none.
    pub fn release_pass(
        &self,
        delivering: Option<bool>,
        started_with: Option<u64>,
        now: Option<&QueueFigures>,
    ) -> ReleasePass {
        let (Held::Releasing { .. }, Some(false), Some(now)) = (self, delivering, now) else {
            return ReleasePass::Running;
        };
        match started_with {
            _ if now.messages == 0 => ReleasePass::Running,
            Some(before) if now.messages < before => ReleasePass::AgainNow,
            _ => ReleasePass::AgainLater,
        }
    }

    /// Whose mail the MTA holds, or held before this release: `None` for every recipient's
    /// (and in normal service, where the whole queue is reported), otherwise the domains
    /// of the scoped rules.
    pub fn held_scope(&self) -> Option<Vec<DomainPattern>> {
        match self {
            Held::Normal => None,
            Held::Incident { document } => {
                (!document.covers_everyone()).then(|| document.held_domains())
            }
            Held::Releasing { release } => release.held_domains.as_ref().map(|domains| {
                domains
                    .iter()
                    .filter_map(|d| DomainPattern::parse(d).ok())
                    .collect()
            }),
        }
    }

    /// Whether a queued message with these not yet delivered `recipients` is held mail in
    /// this state: any message when every recipient's mail is held (see
    /// [`Held::held_scope`]), otherwise one with a recipient in a held domain.
    pub fn counts<'a>(
        scope: Option<&[DomainPattern]>,
        mut recipients: impl Iterator<Item = &'a str>,
    ) -> bool {
        match scope {
            None => true,
            Some(scope) => recipients.any(|recipient| {
                recipient_domain(recipient)
                    .is_some_and(|domain| scope.iter().any(|pattern| pattern.covers(&domain)))
            }),
        }
    }

    /// The mode document's hash while an incident is applied: what the agent reports.
    pub fn hash(&self) -> Option<String> {
        match self {
            Held::Incident { document } => Some(document.hash()),
            _ => None,
        }
    }

    /// The queue lifetime in force while an incident's mode or its release is applied
    /// (`None` in Normal: the MTA's own setting, which the agent does not read).
    pub fn queue_lifetime(&self) -> Option<TimeSpan> {
        let lifetime = match self {
            Held::Normal => return None,
            Held::Incident { document } => &document.queue.lifetime,
            Held::Releasing { release } => &release.lifetime,
        };
        lifetime.parse().ok()
    }

    /// What it runs, as the agent's `mail_incident_agent_mode` metric and logs name it.
    pub fn state(&self) -> MtaState {
        match self {
            Held::Normal => MtaState::Normal,
            Held::Incident { document } => match document.headline().mode {
                Mode::AcceptAndQueue => MtaState::AcceptAndQueue,
                Mode::TempFail => MtaState::TempFail,
                Mode::HardReject => MtaState::HardReject,
            },
            Held::Releasing { .. } => MtaState::Releasing,
        }
    }
}

/// What an MTA runs: its own configuration, an incident's mode (the most severe rule's),
/// or the release after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtaState {
    Normal,
    AcceptAndQueue,
    TempFail,
    HardReject,
    Releasing,
}

crate::api::names::named_variants!(
    MtaState,
    "MTA state",
    [Normal, AcceptAndQueue, TempFail, HardReject, Releasing]
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{agent::fixtures, api::Mode};

    fn document(mode: Mode) -> ModeDocument {
        fixtures::document(mode, 452, "4.3.1")
    }

    fn queue(messages: u64, oldest_age_seconds: u64) -> QueueFigures {
        QueueFigures {
            messages,
            oldest_age_seconds,
            ..QueueFigures::default()
        }
    }

    #[test]
    fn the_queue_lifetime_follows_the_incident_into_its_release_and_ends_in_normal() {
        let hold = Held::Normal.next(Some(&document(Mode::AcceptAndQueue)), 100);
        let lifetime = Some(
            document(Mode::AcceptAndQueue)
                .queue
                .lifetime
                .parse()
                .unwrap(),
        );
        assert_eq!(hold.queue_lifetime(), lifetime);
        let releasing = hold.next(None, 200);
        assert!(matches!(releasing, Held::Releasing { .. }));
        assert_eq!(releasing.queue_lifetime(), lifetime);
        assert_eq!(Held::Normal.queue_lifetime(), None);
    }

    #[test]
    fn an_ended_incident_releases_with_its_own_lifetimes_and_concurrency() {
        let held = Held::Normal.next(Some(&document(Mode::AcceptAndQueue)), 100);
        assert_eq!(held.state(), MtaState::AcceptAndQueue);
        let released = held.next(None, 1000);
        assert_eq!(
            released,
            Held::Releasing {
                release: Release {
                    concurrency: 4,
                    lifetime: "30d".into(),
                    bounce_lifetime: "10d".into(),
                    since: 1000,
                    held_domains: None,
                }
            }
        );
        // The document staying away changes nothing; a new incident holds mail again.
        assert_eq!(released.next(None, 2000), released);
        assert_eq!(
            released.next(Some(&document(Mode::TempFail)), 2000).state(),
            MtaState::TempFail
        );
    }

    #[test]
    fn a_release_ends_only_when_no_held_message_is_left() {
        let releasing = Held::Normal
            .next(Some(&document(Mode::AcceptAndQueue)), 0)
            .next(None, 1000);
        // At 1060, a message 500 s old arrived before the release: still held mail.
        assert_eq!(
            releasing.after_measuring(Some(&queue(10, 500)), 1060),
            releasing
        );
        // Only mail younger than the release (new traffic) is left.
        assert_eq!(
            releasing.after_measuring(Some(&queue(2, 30)), 1060),
            Held::Normal
        );
        assert_eq!(
            releasing.after_measuring(Some(&queue(0, 0)), 1001),
            Held::Normal
        );
        // An MTA that cannot measure its queue has nothing to wait for.
        assert_eq!(releasing.after_measuring(None, 1001), Held::Normal);
    }

    #[test]
    fn a_release_in_passes_starts_another_when_the_last_ends_with_held_mail_left() {
        let releasing = Held::Normal
            .next(Some(&document(Mode::AcceptAndQueue)), 0)
            .next(None, 1000);
        let (ten, seven, none) = (queue(10, 500), queue(7, 500), queue(0, 0));
        let pass =
            |delivering, started_with, now| releasing.release_pass(delivering, started_with, now);
        assert_eq!(
            pass(Some(true), Some(10), Some(&seven)),
            ReleasePass::Running
        );
        assert_eq!(
            pass(Some(false), Some(10), Some(&seven)),
            ReleasePass::AgainNow
        );
        assert_eq!(
            pass(Some(false), Some(10), Some(&ten)),
            ReleasePass::AgainLater
        );
        assert_eq!(
            pass(Some(false), None, Some(&ten)),
            ReleasePass::AgainLater,
            "restarted: nothing known of the pass"
        );
        assert_eq!(
            pass(Some(false), Some(10), Some(&none)),
            ReleasePass::Running,
            "over"
        );
        assert_eq!(
            pass(Some(false), Some(10), None),
            ReleasePass::Running,
            "not measured"
        );
        assert_eq!(
            pass(None, Some(10), Some(&ten)),
            ReleasePass::Running,
            "no passes"
        );
        let incident = Held::Normal.next(Some(&document(Mode::TempFail)), 0);
        assert_eq!(
            incident.release_pass(Some(false), Some(10), Some(&ten)),
            ReleasePass::Running,
            "holding"
        );
    }

    #[test]
    fn a_release_that_delivers_nothing_between_two_measurements_is_stalled() {
        let releasing = Held::Normal
            .next(Some(&document(Mode::AcceptAndQueue)), 0)
            .next(None, 1000);
        let (ten, seven) = (queue(10, 500), queue(7, 500));
        assert!(releasing.release_stalled(Some(&ten), Some(&ten)));
        assert!(
            !releasing.release_stalled(Some(&ten), Some(&seven)),
            "progress"
        );
        assert!(
            !releasing.release_stalled(None, Some(&ten)),
            "first measurement"
        );
        assert!(!releasing.release_stalled(Some(&ten), Some(&queue(0, 0))));
        let incident = Held::Normal.next(Some(&document(Mode::TempFail)), 0);
        assert!(!incident.release_stalled(Some(&ten), Some(&ten)), "holding");
    }

    #[test]
    fn a_release_is_measured_sooner_the_smaller_its_queue_but_never_back_to_back() {
        let period = Duration::from_secs(30);
        let releasing = Held::Normal
            .next(Some(&document(Mode::AcceptAndQueue)), 0)
            .next(None, 1000);
        let after = |scan_ms: u64| {
            releasing
                .measure_after(Duration::from_millis(scan_ms), period)
                .as_millis()
        };
        // A huge queue: ten times its scan; an enormous one: the period, as before.
        assert_eq!(after(800), 8_000);
        assert_eq!(after(20_000), 30_000);
        // A small or empty queue: a few times a second, never more often.
        assert_eq!(after(40), 400);
        assert_eq!(after(0), 250);
        assert_eq!(
            releasing.measure_after(Duration::MAX, period).as_secs(),
            30,
            "no overflow"
        );
        // A period shorter than the floor is kept.
        assert_eq!(
            releasing.measure_after(Duration::ZERO, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
        // Holding mail or in normal service, nothing waits on the queue: the period.
        let holding = Held::Normal.next(Some(&document(Mode::AcceptAndQueue)), 0);
        assert_eq!(holding.measure_after(Duration::ZERO, period), period);
        assert_eq!(Held::Normal.measure_after(Duration::ZERO, period), period);
    }

    #[test]
    fn measuring_leaves_incidents_and_normal_service_alone() {
        let incident = Held::Normal.next(Some(&document(Mode::TempFail)), 0);
        assert_eq!(incident.after_measuring(Some(&queue(0, 0)), 10), incident);
        assert_eq!(Held::Normal.after_measuring(None, 10), Held::Normal);
        assert_eq!(Held::Normal.next(None, 10), Held::Normal);
        assert!(incident.hash().is_some() && Held::Normal.hash().is_none());
    }

    #[test]
    fn a_scoped_hold_and_its_release_name_the_held_domains_and_old_state_files_still_read() {
        let mut scoped = document(Mode::AcceptAndQueue);
        scoped.rules[0].recipient_domains = Some(vec!["pec.example.it".into()]);
        let mut second = scoped.rules[0].clone();
        second.recipient_domains = Some(vec!["*.example.it".into(), "pec.example.it".into()]);
        scoped.rules.push(second);
        let holding = Held::Normal.next(Some(&scoped), 0);
        let names = |scope: Option<Vec<DomainPattern>>| {
            scope.map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let held = Some(vec![
            "pec.example.it".to_string(),
            "*.example.it".to_string(),
        ]);
        assert_eq!(names(holding.held_scope()), held);
        let releasing = holding.next(None, 10);
        assert_eq!(names(releasing.held_scope()), held);
        // Everyone's mail: the whole queue, as in normal service.
        let everyone = Held::Normal.next(Some(&document(Mode::TempFail)), 0);
        assert_eq!(everyone.held_scope(), None);
        assert_eq!(everyone.next(None, 10).held_scope(), None);
        assert_eq!(Held::Normal.held_scope(), None);
        // A state file from before scopes releases every recipient's mail.
        let old: Held = serde_json::from_str(
            r#"{"state": "Releasing", "release": {"concurrency": 4, "lifetime": "5d", "bounceLifetime": "5d", "since": 7}}"#,
        )
        .unwrap();
        assert_eq!(old.held_scope(), None);
    }

    #[test]
    fn a_message_counts_as_held_by_any_recipient_left_in_a_held_domain() {
        let scope = [
            DomainPattern::parse("pec.example.it").unwrap(),
            DomainPattern::parse("*.storage.example.it").unwrap(),
        ];
        let counts = |recipients: &[&str]| Held::counts(Some(&scope), recipients.iter().copied());
        assert!(counts(&["a@example.com", "b@PEC.example.it"]));
        assert!(counts(&["c@x.storage.example.it"]));
        assert!(!counts(&["c@storage.example.it", "d@example.com"]));
        assert!(!counts(&[]), "every recipient delivered");
        assert!(
            Held::counts(None, std::iter::empty()),
            "everyone's mail held"
        );
    }
}
