//! The reporter: writes this pod's entry (applied hash and queue) in the report object the
//! controller created, off the control path. It always sends the latest entry the loop
//! gave it; a failed write is retried with backoff until it succeeds or a newer entry
//! replaces it. A missing report object is not retried on a timer: the controller
//! re-creates it, and the next measurement brings a new entry to write.

use super::{Action, metrics::AgentMetrics};
use crate::api::mode_document::AgentReport;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report object does not exist (the incident is ending, or someone deleted it).
    #[error("the report object does not exist")]
    Missing,
    /// The entry could not be encoded as JSON.
    #[error("cannot encode the report entry: {0}")]
    Unencodable(#[source] serde_json::Error),
    /// The merge patch of this pod's key was refused or got no answer.
    #[error("patch ConfigMap {report}: {source}")]
    Patch {
        report: String,
        #[source]
        source: kube::Error,
    },
}

/// Where entries are written.
pub trait ReportSink: Send + Sync {
    fn write<'a>(&'a self, entry: &'a AgentReport) -> BoxFuture<'a, Result<(), ReportError>>;
}

/// The report ConfigMap: a merge patch of one key, this pod's name.
pub struct ReportConfigMap {
    pub config_maps: Api<ConfigMap>,
    pub name: String,
    pub pod: String,
}

impl ReportSink for ReportConfigMap {
    fn write<'a>(&'a self, entry: &'a AgentReport) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let text = serde_json::to_string(entry).map_err(ReportError::Unencodable)?;
            let patch = Patch::Merge(serde_json::json!({"data": {&self.pod: text}}));
            match self
                .config_maps
                .patch(&self.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Err(ReportError::Missing),
                Err(source) => Err(ReportError::Patch {
                    report: self.name.clone(),
                    source,
                }),
            }
        })
    }
}

/// Writes each entry the loop publishes, until the loop drops its sender.
pub async fn run(
    sink: impl ReportSink,
    mut entries: watch::Receiver<Option<AgentReport>>,
    metrics: AgentMetrics,
    retry_max: Duration,
) {
    let backoff = || crate::retry::retry_delays(Duration::from_millis(200), retry_max);
    'entries: loop {
        if entries.changed().await.is_err() {
            return;
        }
        let mut delays = backoff();
        loop {
            let Some(entry) = entries.borrow_and_update().clone() else {
                continue 'entries;
            };
            let error = match sink.write(&entry).await {
                Ok(()) => continue 'entries,
                Err(error) => error,
            };
            metrics
                .errors
                .with_label_values(&[Action::Report.label()])
                .inc();
            let wait = match error {
                ReportError::Missing => {
                    debug!("no report object to write to; waiting for the next entry");
                    continue 'entries;
                }
                error => {
                    let wait = delays.next().unwrap_or(retry_max);
                    warn!(%error, retry_in = ?wait, "cannot report");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = entries.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    delays = backoff();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
    };
    use tokio::time::Instant;

    /// A fake API: answers each write with the next scripted outcome (then success) and
    /// records what was written successfully.
    #[derive(Clone, Default)]
    struct FakeApi {
        script: Arc<Mutex<VecDeque<Option<u16>>>>,
        attempts: Arc<Mutex<Vec<String>>>,
        written: Arc<Mutex<Vec<String>>>,
    }

    impl ReportSink for FakeApi {
        fn write<'a>(&'a self, entry: &'a AgentReport) -> BoxFuture<'a, Result<(), ReportError>> {
            Box::pin(async move {
                self.attempts.lock().unwrap().push(entry.hash.clone());
                match self.script.lock().unwrap().pop_front().flatten() {
                    None => {
                        self.written.lock().unwrap().push(entry.hash.clone());
                        Ok(())
                    }
                    Some(404) => Err(ReportError::Missing),
                    Some(code) => Err(ReportError::Patch {
                        report: "mail-report-deployment-postfix".into(),
                        source: kube::Error::Api(
                            kube::core::Status::failure("refused", "InternalError")
                                .with_code(code)
                                .boxed(),
                        ),
                    }),
                }
            })
        }
    }

    fn entry(hash: &str) -> Option<AgentReport> {
        Some(AgentReport {
            hash: hash.into(),
            after: None,
            queue: None,
            drift: None,
        })
    }

    fn start(
        script: &[Option<u16>],
    ) -> (
        FakeApi,
        watch::Sender<Option<AgentReport>>,
        tokio::task::JoinHandle<()>,
    ) {
        let api = FakeApi::default();
        api.script.lock().unwrap().extend(script.iter().copied());
        let (entries, receiver) = watch::channel(None);
        let task = tokio::spawn(run(
            api.clone(),
            receiver,
            AgentMetrics::default(),
            Duration::from_millis(400),
        ));
        (api, entries, task)
    }

    async fn until(what: &str, probe: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !probe() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn server_errors_and_conflicts_are_retried_until_written() {
        let (api, entries, task) = start(&[Some(500), Some(409), Some(503)]);
        entries.send_replace(entry("a"));
        until("written after three failures", || {
            *api.written.lock().unwrap() == ["a"]
        })
        .await;
        assert_eq!(api.attempts.lock().unwrap().len(), 4);
        drop(entries);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_report_is_not_retried_until_a_new_entry_comes() {
        let (api, entries, task) = start(&[Some(404)]);
        entries.send_replace(entry("a"));
        until("a first attempt", || {
            !api.attempts.lock().unwrap().is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(api.attempts.lock().unwrap().len(), 1);
        assert!(api.written.lock().unwrap().is_empty());
        // The next measurement: the controller has re-created the report.
        entries.send_replace(entry("a"));
        until("written on the next entry", || {
            !api.written.lock().unwrap().is_empty()
        })
        .await;
        drop(entries);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_newer_entry_replaces_one_that_keeps_failing() {
        let (api, entries, task) = start(&[Some(500); 3]);
        entries.send_replace(entry("old"));
        until("a first attempt", || {
            !api.attempts.lock().unwrap().is_empty()
        })
        .await;
        entries.send_replace(entry("new"));
        until("the new entry written", || {
            api.written.lock().unwrap().last().map(String::as_str) == Some("new")
        })
        .await;
        assert!(!api.written.lock().unwrap().contains(&"old".to_string()));
        drop(entries);
        task.await.unwrap();
    }

    #[test]
    fn a_failed_write_names_the_report_it_patched() {
        let error = ReportError::Patch {
            report: "mail-report-deployment-postfix".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                    .with_code(500)
                    .boxed(),
            ),
        };
        assert!(
            error.to_string().starts_with(
                "patch ConfigMap mail-report-deployment-postfix: \
                 ApiError: etcdserver: request timed out: InternalError"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_reporter_ends_with_the_loop_even_while_failing() {
        let (_api, entries, task) = start(&[Some(500); 100]);
        entries.send_replace(entry("a"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(entries);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends at once")
            .unwrap();
    }
}
