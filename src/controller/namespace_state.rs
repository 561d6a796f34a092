//! What the controller keeps about each namespace from one sync to the next, and the
//! small decisions made on it: what to announce, how long to wait, since when an
//! incident's generation is being delivered.

use super::{apply::Outcome, observe::Observations, versions::Echo};
use crate::{
    plan::{self, TargetRef},
    retry::retry_delays,
};
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

/// First and longest wait before a failed sync of a namespace is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LONGEST: Duration = Duration::from_secs(120);

/// Everything the controller keeps about one namespace between its syncs.
#[derive(Default)]
pub struct NamespaceState {
    /// What the next sync builds on.
    pub remembered: Remembered,
    /// Writes the API server refused, per target, until they succeed.
    pub write_failures: BTreeMap<TargetRef, String>,
    /// The next waits before retrying the namespace while its syncs fail.
    retries: Option<backon::ExponentialBackoff>,
    /// The drift count of each agent (target, pod) last announced in an event.
    drifts_announced: HashMap<(String, String), u64>,
    /// Each incident's generation and when it was first seen, to time its delivery.
    first_seen: HashMap<String, (i64, Instant)>,
}

/// The targets and decisions of the last sync, so that the next one's work follows what
/// changed.
#[derive(Default)]
pub struct Remembered {
    pub observations: Observations,
    pub planner: plan::Planner,
}

impl NamespaceState {
    /// How long to wait before syncing again after a failed sync: growing while syncs
    /// keep failing, so one namespace's trouble neither floods the API server nor delays
    /// the others.
    pub fn next_retry_delay(&mut self) -> Duration {
        self.retries
            .get_or_insert_with(|| retry_delays(RETRY_FIRST, RETRY_LONGEST))
            .next()
            .unwrap_or(RETRY_LONGEST)
    }

    /// A sync succeeded: the next failure waits the shortest time again.
    pub fn sync_succeeded(&mut self) {
        self.retries = None;
    }

    /// Notes what became of a sync's writes to the `written` targets: a target written no
    /// longer fails, unless its write was refused this time. Returns the objects the stored
    /// writes changed.
    pub fn note_write_outcomes(
        &mut self,
        written: Vec<TargetRef>,
        outcomes: Vec<Outcome>,
    ) -> Vec<Echo> {
        for target in written {
            self.write_failures.remove(&target);
        }
        let mut echoes = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Done(done) => echoes.extend(done),
                Outcome::Refused(target, reason) => {
                    self.write_failures.insert(target, reason);
                }
                Outcome::Stale => {}
            }
        }
        echoes
    }

    /// When `incident`'s `generation` was first seen: `now` for a generation not seen
    /// before.
    pub fn generation_first_seen(
        &mut self,
        incident: &str,
        generation: i64,
        now: Instant,
    ) -> Instant {
        let (seen, at) = self
            .first_seen
            .entry(incident.to_string())
            .or_insert((generation, now));
        if *seen != generation {
            (*seen, *at) = (generation, now);
        }
        *at
    }

    /// The incident is gone: nothing of it is timed any longer.
    pub fn forget_incident(&mut self, incident: &str) {
        self.first_seen.remove(incident);
    }

    /// A Warning event for each agent whose drift count grew since it was last announced.
    pub fn new_drifts(&mut self, drifts: &[plan::AgentDrift]) -> Vec<plan::Note> {
        drifts
            .iter()
            .filter_map(|d| {
                let key = (d.target.to_string(), d.pod.clone());
                let before = self.drifts_announced.insert(key, d.drift.count);
                // First seen (a new agent, or this replica just started): only a drift
                // still being put back is news.
                let news = match before {
                    Some(count) => count < d.drift.count,
                    None => d.drift.since.is_some(),
                };
                news.then(|| drift_note(d))
            })
            .collect()
    }
}

fn drift_note(d: &plan::AgentDrift) -> plan::Note {
    plan::Note {
        warning: true,
        reason: plan::EventReason::MtaDrifted,
        message: format!(
            "The MTA of pod {} ({}) differed from its mode: {}; {} (drift {} of this agent)",
            d.pod,
            d.target,
            d.drift.what,
            if d.drift.since.is_some() {
                "its agent is putting it back"
            } else {
                "its agent put it back"
            },
            d.drift.count
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::mode_document::DriftReport, controller::versions::EchoKind, plan::WorkloadKind,
    };

    fn target(name: &str) -> TargetRef {
        TargetRef {
            kind: WorkloadKind::Deployment,
            name: name.into(),
        }
    }

    fn drift(pod: &str, count: u64, since: Option<i64>) -> plan::AgentDrift {
        plan::AgentDrift {
            target: target("mx"),
            pod: pod.into(),
            drift: DriftReport {
                count,
                what: "main.cf soft_bounce = no, want yes".into(),
                since,
            },
        }
    }

    fn pods_of(notes: &[plan::Note]) -> Vec<&str> {
        notes
            .iter()
            .map(|n| {
                assert!(
                    n.warning && n.reason == plan::EventReason::MtaDrifted,
                    "{n:?}"
                );
                n.message
                    .strip_prefix("The MTA of pod ")
                    .and_then(|rest| rest.split(' ').next())
                    .expect("the message names the pod")
            })
            .collect()
    }

    #[test]
    fn a_drift_is_announced_once_per_count_and_an_old_one_only_while_being_put_back() {
        let mut state = NamespaceState::default();
        // First sight: a drift being put back is news, one already put back is not.
        let first = state.new_drifts(&[drift("mx-1", 3, Some(100)), drift("mx-2", 2, None)]);
        assert_eq!(pods_of(&first), ["mx-1"]);
        assert_eq!(
            first[0].message,
            "The MTA of pod mx-1 (Deployment/mx) differed from its mode: main.cf soft_bounce = no, want yes; its agent is putting it back (drift 3 of this agent)"
        );
        // Unchanged counts: nothing; a grown count is news, put back or not.
        assert!(
            state
                .new_drifts(&[drift("mx-1", 3, Some(100)), drift("mx-2", 2, None)])
                .is_empty()
        );
        let grown = state.new_drifts(&[drift("mx-1", 3, None), drift("mx-2", 3, None)]);
        assert_eq!(pods_of(&grown), ["mx-2"]);
        assert!(grown[0].message.contains("its agent put it back"));
    }

    #[test]
    fn a_written_target_fails_only_while_its_writes_are_refused() {
        let mut state = NamespaceState {
            write_failures: [
                (target("fixed"), "was refused".to_string()),
                (target("unwritten"), "was refused".to_string()),
            ]
            .into(),
            ..NamespaceState::default()
        };
        let echo = Echo {
            kind: EchoKind::ConfigMap,
            name: "mail-mode-deployment-fixed".into(),
            before: Some("1".into()),
            after: Some("2".into()),
        };
        let echoes = state.note_write_outcomes(
            vec![target("fixed"), target("refused"), target("stale")],
            vec![
                Outcome::Done(vec![echo]),
                Outcome::Refused(target("refused"), "a conflict with kubectl".into()),
                Outcome::Stale,
            ],
        );
        let echoed: Vec<&str> = echoes.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(echoed, ["mail-mode-deployment-fixed"]);
        assert_eq!(
            state.write_failures,
            [
                (target("refused"), "a conflict with kubectl".to_string()),
                (target("unwritten"), "was refused".to_string()),
            ]
            .into(),
            "a target not written this time keeps its failure"
        );
    }

    #[test]
    fn a_generation_is_timed_from_its_first_sight_until_the_next_one() {
        let mut state = NamespaceState::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(state.generation_first_seen("outage", 1, at(0)), at(0));
        assert_eq!(state.generation_first_seen("outage", 1, at(5)), at(0));
        assert_eq!(state.generation_first_seen("other", 1, at(6)), at(6));
        assert_eq!(state.generation_first_seen("outage", 2, at(7)), at(7));
        assert_eq!(state.generation_first_seen("outage", 2, at(9)), at(7));
        state.forget_incident("outage");
        assert_eq!(state.generation_first_seen("outage", 2, at(10)), at(10));
    }

    #[test]
    fn retry_delays_grow_while_syncs_fail_and_start_over_after_a_success() {
        let mut state = NamespaceState::default();
        let first = state.next_retry_delay();
        assert!(
            first >= RETRY_FIRST && first <= RETRY_FIRST * 2,
            "{first:?}"
        );
        let later: Vec<Duration> = (0..12).map(|_| state.next_retry_delay()).collect();
        assert!(later.iter().all(|d| *d <= RETRY_LONGEST), "{later:?}");
        assert!(later[11] >= RETRY_LONGEST / 2, "{later:?}");
        state.sync_succeeded();
        let again = state.next_retry_delay();
        assert!(again <= RETRY_FIRST * 2, "{again:?}");
    }
}
