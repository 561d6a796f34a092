//! The bench's watches, whose event times are the measurements: the incident's generations
//! and Ready, and the modes the mode documents carry.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use mail_incident_operator::api::{
    MailIncident,
    mode_document::{MODE_DOCUMENT_KEY, ROLE_DOCUMENT, ROLE_LABEL},
};
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};
use tokio::{sync::watch, task::JoinHandle};

/// Aborts a spawned task when dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When the bench's watch on the incident first delivered each generation, and when it
/// first showed Ready for each generation with every target counted. The instants are
/// taken as each event arrives, so a waiter that looks later still gets the event's time.
#[derive(Default)]
struct IncidentSeen {
    generation: BTreeMap<i64, Instant>,
    ready: BTreeMap<i64, Instant>,
}

pub struct IncidentWatch {
    seen: watch::Receiver<IncidentSeen>,
    _task: AbortOnDrop,
}

impl IncidentWatch {
    pub async fn start(client: &Client, namespace: &str, size: usize) -> Self {
        let incidents: Api<MailIncident> = Api::namespaced(client.clone(), namespace);
        let (sender, seen) = watch::channel(IncidentSeen::default());
        let summary = format!("{size}/{size}");
        let events = watcher(
            incidents,
            watcher::Config::default().fields("metadata.name=bench"),
        )
        .default_backoff();
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let (Ok(watcher::Event::Apply(incident)) | Ok(watcher::Event::InitApply(incident))) =
                    event
                else {
                    continue;
                };
                let now = Instant::now();
                let generation = incident.metadata.generation.unwrap_or_default();
                let status = incident.status.unwrap_or_default();
                let ready = status.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.reason == "Applied"
                        && c.observed_generation == Some(generation)
                }) && status.targets.is_some_and(|t| t.summary == summary);
                sender.send_modify(|seen| {
                    seen.generation.entry(generation).or_insert(now);
                    if ready {
                        seen.ready.entry(generation).or_insert(now);
                    }
                });
            }
        });
        Self {
            seen,
            _task: AbortOnDrop(task),
        }
    }

    pub async fn wait_generation(&self, generation: i64, limit: Duration) -> Instant {
        self.wait(limit, "the new generation", |s| {
            s.generation.get(&generation).copied()
        })
        .await
    }

    pub async fn wait_ready(&self, generation: i64, limit: Duration) -> Instant {
        self.wait(limit, "Ready", |s| s.ready.get(&generation).copied())
            .await
    }

    async fn wait(
        &self,
        limit: Duration,
        what: &str,
        found: impl Fn(&IncidentSeen) -> Option<Instant>,
    ) -> Instant {
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(limit, seen.wait_for(|s| found(s).is_some())).await;
        let seen = waited
            .unwrap_or_else(|_| panic!("incident: no {what} within {limit:?}"))
            .expect("incident watch running");
        found(&seen).expect("found")
    }
}

/// The mode each mode document carries, by a watch, and when each mode was first carried
/// by a given number of documents: waiting on it puts no load on the API server, and the
/// time is that of the event completing the count.
#[derive(Default)]
struct DocumentsSeen {
    /// The document's mode, by name.
    modes: HashMap<String, String>,
    /// Documents by mode.
    counts: HashMap<String, usize>,
    /// (mode, count) → when that many documents first carried the mode.
    reached: HashMap<(String, usize), Instant>,
    listed: bool,
}

impl DocumentsSeen {
    fn set(&mut self, name: String, mode: Option<String>, now: Instant) {
        if let Some(old) = self.modes.remove(&name) {
            *self.counts.entry(old).or_default() -= 1;
        }
        if let Some(mode) = mode {
            let count = self.counts.entry(mode.clone()).or_default();
            *count += 1;
            self.reached.entry((mode.clone(), *count)).or_insert(now);
            self.modes.insert(name, mode);
        }
    }
}

pub struct DocumentWatch {
    seen: watch::Receiver<DocumentsSeen>,
    _task: AbortOnDrop,
}

impl DocumentWatch {
    pub async fn start(client: &Client, namespace: &str) -> Self {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}"));
        let events = watcher(config_maps, config).default_backoff();
        let (sender, mut seen) = watch::channel(DocumentsSeen::default());
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            let mut relisted: Vec<(String, Option<String>)> = Vec::new();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(c)) => {
                        sender.send_modify(|s| s.set(c.name_any(), mode_of(&c), now));
                    }
                    Ok(watcher::Event::Delete(c)) => {
                        sender.send_modify(|s| s.set(c.name_any(), None, now));
                    }
                    Ok(watcher::Event::Init) => relisted.clear(),
                    Ok(watcher::Event::InitApply(c)) => relisted.push((c.name_any(), mode_of(&c))),
                    Ok(watcher::Event::InitDone) => sender.send_modify(|s| {
                        let names: Vec<String> = s.modes.keys().cloned().collect();
                        for name in names {
                            s.set(name, None, now);
                        }
                        for (name, mode) in relisted.drain(..) {
                            s.set(name, mode, now);
                        }
                        s.listed = true;
                    }),
                    Err(_) => {}
                }
            }
        });
        seen.wait_for(|s| s.listed)
            .await
            .expect("document watch lists");
        Self {
            seen,
            _task: AbortOnDrop(task),
        }
    }

    pub async fn wait_complete(&self, mode: &str, size: usize, limit: Duration) -> Instant {
        let key = (mode.to_string(), size);
        let mut seen = self.seen.clone();
        let waited =
            tokio::time::timeout(limit, seen.wait_for(|s| s.reached.contains_key(&key))).await;
        let seen = waited
            .unwrap_or_else(|_| {
                let counts = self.seen.borrow().counts.clone();
                panic!("documents: not {size} in {mode} within {limit:?}: {counts:?}")
            })
            .expect("document watch running");
        seen.reached[&key]
    }
}

/// The mode of a document's first rule (the most severe; the benchmark's one incident
/// covers every recipient, so it is the only rule).
fn mode_of(document: &ConfigMap) -> Option<String> {
    let json = document.data.as_ref()?.get(MODE_DOCUMENT_KEY)?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(
        value
            .get("rules")?
            .get(0)?
            .get("mode")?
            .as_str()?
            .to_string(),
    )
}
