//! Paces the syncs that queue reports cause. While an incident holds, every agent
//! reports its queue every `--report-seconds` (30 by default): at 1000 targets that is 33
//! report changes a second, and each sync re-plans the whole namespace (about 20 ms), so
//! syncing on each kept most of a core busy for the length of the incident. Queue figures
//! only feed escalation and the queue watch, whose limits are minutes long, so a
//! namespace syncs for them at most once per [`QUEUE_SYNC_EVERY`], the last one always
//! coming through. A report whose acknowledgements changed (a pod applied another
//! document, a pod came or went), or that was deleted, still syncs at once: it can
//! complete a mode change or need re-creating.

use super::cached::{CachedConfigMap, Reported, owner_uids};
use crate::api::mode_document::REPORT_SUFFIX;
use futures::{Stream, StreamExt, stream};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};
use tokio::time::Instant;

/// The shortest time between two syncs of a namespace caused by queue figures alone.
pub const QUEUE_SYNC_EVERY: Duration = Duration::from_secs(5);

/// How a change of a ConfigMap of ours is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Now,
    /// Only queue figures changed: paced.
    Paced,
}

/// What each report acknowledges (its pods and the hashes they applied), by report, to
/// tell a change of queue figures from one of acknowledgements.
#[derive(Default)]
pub struct Acknowledgements(HashMap<String, u64>);

impl Acknowledgements {
    /// How `config_map`'s change is to be synced; `exists` is false when it was deleted.
    pub fn pace(&mut self, config_map: &CachedConfigMap, exists: bool) -> Pace {
        let name = config_map.metadata.name.as_deref().unwrap_or_default();
        if !name.ends_with(REPORT_SUFFIX) {
            return Pace::Now;
        }
        let key = format!(
            "{}/{name}",
            config_map.metadata.namespace.as_deref().unwrap_or_default()
        );
        if !exists {
            self.0.remove(&key);
            return Pace::Now;
        }
        let acknowledged = acknowledged(config_map);
        match self.0.insert(key, acknowledged) {
            Some(before) if before == acknowledged => Pace::Paced,
            _ => Pace::Now,
        }
    }
}

/// A digest of each pod's applied hash and drift (or, for an unreadable entry, its text),
/// and of the report's owners (one taken away by hand is put back at once).
fn acknowledged(report: &CachedConfigMap) -> u64 {
    let mut digest = DefaultHasher::new();
    for owner in owner_uids(&report.metadata) {
        owner.hash(&mut digest);
    }
    for entry in report.entries() {
        entry.pod.hash(&mut digest);
        match &entry.reported {
            Reported::Read(agent) => {
                agent.hash.hash(&mut digest);
                // A drift being put back, or its count, changes what the pod acknowledges.
                agent
                    .drift
                    .as_ref()
                    .map(|d| (d.count, d.since.is_some()))
                    .hash(&mut digest);
            }
            Reported::Unreadable(text) => text.hash(&mut digest),
        }
    }
    digest.finish()
}

/// When each namespace may next sync for queue figures, and which are waiting to.
struct Pacer {
    every: Duration,
    /// When each namespace last synced (for queue figures or anything else).
    last: HashMap<String, Instant>,
    /// Namespaces held back, and when they are due.
    waiting: BTreeMap<String, Instant>,
}

impl Pacer {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
            waiting: BTreeMap::new(),
        }
    }

    /// A change of `namespace` at `now`: whether it syncs now.
    fn offer(&mut self, namespace: String, pace: Pace, now: Instant) -> Option<String> {
        let due = match pace {
            Pace::Now => now,
            Pace::Paced => self
                .last
                .get(&namespace)
                .map_or(now, |last| *last + self.every),
        };
        if due <= now {
            // A sync reads every queue figure cached: nothing waits any longer.
            self.waiting.remove(&namespace);
            self.last.insert(namespace.clone(), now);
            Some(namespace)
        } else {
            self.waiting.entry(namespace).or_insert(due);
            None
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }

    /// The namespaces due at `now`, which sync now.
    fn due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(namespace, _)| namespace.clone())
            .collect();
        for namespace in &due {
            self.waiting.remove(namespace);
            self.last.insert(namespace.clone(), now);
        }
        due
    }
}

/// The namespaces of `changes` to sync, paced as each says, every `every`.
pub fn paced(
    changes: impl Stream<Item = (String, Pace)> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = String> + Send + 'static {
    let state = (
        changes.boxed().fuse(),
        Pacer::new(every),
        VecDeque::<String>::new(),
    );
    stream::unfold(state, |(mut changes, mut pacer, mut ready)| async move {
        loop {
            if let Some(namespace) = ready.pop_front() {
                return Some((namespace, (changes, pacer, ready)));
            }
            let next_due = pacer.next_due();
            if changes.is_done() && next_due.is_none() {
                return None;
            }
            tokio::select! {
                change = changes.next(), if !changes.is_done() => {
                    if let Some((namespace, pace)) = change {
                        ready.extend(pacer.offer(namespace, pace, Instant::now()));
                    }
                }
                () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    ready.extend(pacer.due(Instant::now()));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An agent's entry: `hash` applied, `messages` queued.
    fn entry(hash: &str, messages: u64) -> serde_json::Value {
        json!({"hash": hash, "queue": {"messages": messages, "byQueue": {}, "oldestAgeSeconds": 60}})
    }

    /// A report whose entries are these texts, by pod.
    fn report_of_texts(name: &str, entries: &[(&str, String)]) -> CachedConfigMap {
        let data: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(pod, text)| (pod.to_string(), text.as_str().into()))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "mail", "labels": {"mailops.dev/role": "report"}},
            "data": data,
        }))
        .expect("test report deserializes")
    }

    fn report(name: &str, entries: &[(&str, &str, u64)]) -> CachedConfigMap {
        let texts: Vec<(&str, String)> = entries
            .iter()
            .map(|(pod, hash, messages)| (*pod, entry(hash, *messages).to_string()))
            .collect();
        report_of_texts(name, &texts)
    }

    #[test]
    fn only_a_report_whose_acknowledgements_are_unchanged_is_paced() {
        let mut acks = Acknowledgements::default();
        let name = format!("mta-a{REPORT_SUFFIX}");
        // First sight, then queue figures only, then a new hash, then a new pod.
        assert_eq!(
            acks.pace(&report(&name, &[("p1", "h1", 1)]), true),
            Pace::Now
        );
        assert_eq!(
            acks.pace(&report(&name, &[("p1", "h1", 9)]), true),
            Pace::Paced
        );
        assert_eq!(
            acks.pace(&report(&name, &[("p1", "h2", 9)]), true),
            Pace::Now
        );
        assert_eq!(
            acks.pace(&report(&name, &[("p1", "h2", 9), ("p2", "h2", 0)]), true),
            Pace::Now
        );
        assert_eq!(
            acks.pace(&report(&name, &[("p1", "h2", 3), ("p2", "h2", 4)]), true),
            Pace::Paced
        );
        // A drift being put back, and its end, at once; queue figures beside it, paced.
        let drifting = |since: Option<i64>, messages: u64| {
            let mut p1 = entry("h2", messages);
            p1["drift"] = json!({"count": 1, "what": "mode file", "since": since});
            report_of_texts(
                &name,
                &[("p1", p1.to_string()), ("p2", entry("h2", 4).to_string())],
            )
        };
        assert_eq!(acks.pace(&drifting(Some(1), 3), true), Pace::Now);
        assert_eq!(acks.pace(&drifting(Some(1), 5), true), Pace::Paced);
        assert_eq!(acks.pace(&drifting(None, 5), true), Pace::Now);
        // Deleted: at once, and its next appearance is a first sight.
        let last = report(&name, &[("p1", "h2", 3), ("p2", "h2", 4)]);
        assert_eq!(acks.pace(&last, false), Pace::Now);
        assert_eq!(acks.pace(&last, true), Pace::Now);
        // A document is never paced.
        let document = report("mta-a-document", &[]);
        assert_eq!(acks.pace(&document, true), Pace::Now);
        assert_eq!(acks.pace(&document, true), Pace::Now);
    }

    #[test]
    fn an_unreadable_entry_is_acknowledged_by_its_text() {
        let mut acks = Acknowledgements::default();
        let name = format!("mta-a{REPORT_SUFFIX}");
        let with = |p2: &str| {
            report_of_texts(
                &name,
                &[("p1", entry("h1", 1).to_string()), ("p2", p2.to_string())],
            )
        };
        assert_eq!(acks.pace(&with("not json"), true), Pace::Now);
        assert_eq!(acks.pace(&with("not json"), true), Pace::Paced, "unchanged");
        assert_eq!(acks.pace(&with("{}"), true), Pace::Now, "another text");
        let readable = entry("h1", 5).to_string();
        assert_eq!(acks.pace(&with(&readable), true), Pace::Now, "readable now");
        let queue_only = entry("h1", 9).to_string();
        assert_eq!(acks.pace(&with(&queue_only), true), Pace::Paced);
    }

    #[test]
    fn a_paced_namespace_syncs_once_per_period_and_its_last_change_is_never_lost() {
        let every = Duration::from_secs(5);
        let mut pacer = Pacer::new(every);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mail = || "mail".to_string();
        // The first change of a namespace goes through; the next ones wait their turn.
        assert_eq!(pacer.offer(mail(), Pace::Paced, at(0)), Some(mail()));
        assert_eq!(pacer.offer(mail(), Pace::Paced, at(1)), None);
        assert_eq!(pacer.offer(mail(), Pace::Paced, at(2)), None);
        assert_eq!(pacer.next_due(), Some(at(5)));
        assert!(pacer.due(at(4)).is_empty());
        assert_eq!(pacer.due(at(5)), [mail()]);
        assert_eq!(pacer.next_due(), None);
        // Another namespace is paced on its own.
        assert_eq!(
            pacer.offer("web".into(), Pace::Paced, at(6)),
            Some("web".into())
        );
        // A change that syncs now takes a waiting one with it.
        assert_eq!(pacer.offer(mail(), Pace::Paced, at(7)), None);
        assert_eq!(pacer.offer(mail(), Pace::Now, at(8)), Some(mail()));
        assert_eq!(pacer.next_due(), None);
        assert_eq!(pacer.offer(mail(), Pace::Paced, at(9)), None);
        assert_eq!(pacer.next_due(), Some(at(13)));
    }

    #[tokio::test]
    async fn the_stream_passes_urgent_changes_at_once_and_delivers_what_waits() {
        let changes = stream::iter(vec![
            ("mail".to_string(), Pace::Paced),
            ("mail".to_string(), Pace::Paced),
            ("web".to_string(), Pace::Now),
        ]);
        let start = Instant::now();
        // Long enough that a loaded machine never takes as long between two ready items.
        let every = Duration::from_secs(2);
        let synced: Vec<(String, Duration)> = paced(changes, every)
            .map(|namespace| (namespace, start.elapsed()))
            .collect()
            .await;
        let names: Vec<&str> = synced.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mail", "web", "mail"]);
        assert!(synced[1].1 < every, "web waited: {synced:?}");
        assert!(
            synced[2].1 >= every,
            "the second mail came early: {synced:?}"
        );
    }
}
