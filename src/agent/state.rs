//! What the agent holds its MTA in, and how that follows the mode document. Pure: the
//! agent's loop reads documents and queues and applies the result.
//!
//! An incident ends in two steps. When its document goes away the MTA enters
//! `Releasing`: it delivers the held mail again, at the incident's release concurrency,
//! with the incident's queue lifetimes still in force so that no held message expires on
//! its way out. Once no message older than the release is left, it returns to `Normal`,
//! the MTA's own configuration.

use crate::api::{
    TimeSpan,
    mode_document::{ModeDocument, QueueFigures},
};
use serde::{Deserialize, Serialize};

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

    /// The name shown in the agent's `mail_incident_agent_mode` metric and logs.
    pub fn label(&self) -> String {
        match self {
            Held::Normal => "Normal".into(),
            Held::Incident { document } => format!("{:?}", document.headline().mode),
            Held::Releasing { .. } => "Releasing".into(),
        }
    }
}

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
        assert_eq!(held.label(), "AcceptAndQueue");
        let released = held.next(None, 1000);
        assert_eq!(
            released,
            Held::Releasing {
                release: Release {
                    concurrency: 4,
                    lifetime: "30d".into(),
                    bounce_lifetime: "10d".into(),
                    since: 1000,
                }
            }
        );
        // The document staying away changes nothing; a new incident holds mail again.
        assert_eq!(released.next(None, 2000), released);
        assert_eq!(
            released.next(Some(&document(Mode::TempFail)), 2000).label(),
            "TempFail"
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
    fn measuring_leaves_incidents_and_normal_service_alone() {
        let incident = Held::Normal.next(Some(&document(Mode::TempFail)), 0);
        assert_eq!(incident.after_measuring(Some(&queue(0, 0)), 10), incident);
        assert_eq!(Held::Normal.after_measuring(None, 10), Held::Normal);
        assert_eq!(Held::Normal.next(None, 10), Held::Normal);
        assert!(incident.hash().is_some() && Held::Normal.hash().is_none());
    }
}
