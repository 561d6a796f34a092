//! The agent's control loop, a small controller of its own. The mode document (from the
//! watch) decides the **intent**, the [`Held`] state the MTA must run; the loop applies
//! the intent until what the MTA runs (**applied**) matches it, retrying a failed apply
//! with backoff on its own.
//!
//! Level-triggered: "applied" means observed equal, not applied once. The loop reads
//! back what the MTA runs ([`Mta::drift`]) right after each apply and every
//! `verify_every`; a difference (another hand's edit, a deleted file) is logged, counted,
//! reported (with since when) and applied again with backoff, and the MTA counts as
//! diverged (`converged` 0, `/readyz` failing after `ready_within`) until a read-back
//! finds it equal again.
//!
//! Crash safety: the intent is saved to the state file (durably) before the MTA is
//! touched, and applies are idempotent, so an agent killed at any instant restarts from
//! the saved intent, applies it again and then follows the document. Nothing waits on
//! the API: reports go to the reporter through a channel that never blocks, and MTA
//! commands and queue scans run on blocking threads, so SIGTERM, the watch and
//! `/healthz` are served whatever the MTA or the API server do.

use super::{
    Action, Difference, Mta,
    error::AgentError,
    files,
    metrics::AgentMetrics,
    probe::{self, Probe},
    state::{Held, ReleasePass},
};
use crate::{
    api::mode_document::{AfterIncident, AgentReport, DriftReport, ModeDocument, QueueFigures},
    http::Readiness,
};
use backon::ExponentialBackoff;
use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{info, warn};

/// The loop's clocks.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the queue is measured (and reported while an incident is applied);
    /// sooner while a release runs (see [`Held::measure_after`]).
    pub measure_every: Duration,
    /// How often what the MTA runs is read back (also right after each apply).
    pub verify_every: Duration,
    /// How often the SMTP probe asks, if there is one (also right after each apply).
    pub probe_every: Duration,
    /// How long the MTA may differ from the intent before `/readyz` fails.
    pub ready_within: Duration,
    /// First and longest wait before retrying a failed apply.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Timing {
    fn backoff(&self) -> ExponentialBackoff {
        crate::retry::retry_delays(self.retry_min, self.retry_max)
    }

    /// The waits before a release's next pass after passes that delivered nothing: never
    /// longer than a measuring period, after which the release would be judged stalled.
    fn pass_backoff(&self) -> ExponentialBackoff {
        crate::retry::retry_delays(self.retry_min, self.measure_every)
    }
}

/// Everything the loop acts on.
pub struct Loop {
    pub mta: Arc<dyn Mta>,
    /// Where the intent is saved before each apply.
    pub state_file: PathBuf,
    pub metrics: AgentMetrics,
    pub readiness: Readiness,
    /// What the agent asks its MTA over SMTP, if the site named a probe recipient.
    pub probe: Option<Probe>,
    pub timing: Timing,
    /// The intent as soon as it is decided, for what follows it live (the Postfix policy
    /// service answers from it).
    pub intents: watch::Sender<Held>,
    /// This pod's report entry, taken by the reporter when it can.
    pub reports: watch::Sender<Option<AgentReport>>,
}

/// The outcome of one apply, on its blocking thread.
type Applying = JoinHandle<(Held, Result<(), AgentError>)>;
type Measuring = JoinHandle<Result<Option<QueueFigures>, AgentError>>;
type Verifying = JoinHandle<ReadBack>;

/// What a read-back changed.
enum Finding {
    /// Nothing: the MTA runs what was applied, as it did.
    Same,
    /// The MTA differs: apply the state again after `apply_in`.
    Differs { apply_in: Duration },
    /// The MTA runs what was applied again: the drift is over.
    EqualAgain,
}

/// What a read-back of `held` found, on its blocking thread: the MTA's own read-back
/// and, when it was due, the RCPT answer the SMTP probe heard.
struct ReadBack {
    held: Held,
    differences: Result<Vec<Difference>, AgentError>,
    heard: Option<std::io::Result<String>>,
}

impl Loop {
    /// Converges the MTA on `intent` (the saved state, at start) and then on what each
    /// update of the mode document makes it (`None`: no document, normal service), until
    /// `stop` resolves.
    pub async fn run(
        self,
        mut intent: Held,
        documents: impl Stream<Item = Option<ModeDocument>>,
        stop: impl Future<Output = ()>,
    ) {
        futures::pin_mut!(documents);
        futures::pin_mut!(stop);
        self.intents.send_replace(intent.clone());
        let mut applied: Option<Held> = None;
        // What another hand changed in the MTA, as reported; `since` is set while it
        // differs.
        let mut drift: Option<DriftReport> = None;
        // Since when the MTA has differed from the intent (`None` while it does not).
        let mut diverged_since: Option<Instant> = None;
        let mut applying: Option<Applying> = None;
        let mut measuring: Option<Measuring> = None;
        let mut verifying: Option<Verifying> = None;
        let mut retry_at = Instant::now();
        let mut verify_at = Instant::now();
        let mut probe_at = Instant::now();
        let mut backoff = self.timing.backoff();
        let mut queue: Option<QueueFigures> = None;
        // The measurement a release is judged stalled against, and when it was taken: the
        // first after the last apply, then one a whole period before the next judgement
        // (measurements come sooner while releasing, deliveries do not).
        let mut stall_reference: Option<(Instant, Option<QueueFigures>)> = None;
        // A release delivered in passes (see `Held::release_pass`): the held messages
        // queued when the last pass began, when the next one starts, and the wait after
        // a pass that delivered nothing.
        let mut pass_started_with: Option<u64> = None;
        let mut next_pass_at: Option<Instant> = None;
        let mut pass_backoff = self.timing.pass_backoff();
        let mut documents_open = true;
        let mut measure_at = Instant::now();
        let mut scan_started = Instant::now();
        let mut last_scan = Duration::ZERO;
        loop {
            let applied_intent = applied.as_ref() == Some(&intent);
            let drifting = is_drifting(&drift);
            let converged = applied_intent && !drifting;
            if converged {
                diverged_since = None;
            } else {
                diverged_since.get_or_insert_with(Instant::now);
            }
            let ready_until = diverged_since.map(|since| since + self.timing.ready_within);
            self.readiness
                .set(ready_until.is_none_or(|until| Instant::now() < until));
            self.metrics.set_convergence(converged, diverged_since);
            tokio::select! {
                biased;
                _ = &mut stop => break,
                outcome = finished(&mut applying), if applying.is_some() => {
                    applying = None;
                    match apply_outcome(outcome) {
                        Ok(held) => {
                            info!(state = %held.state(), hash = held.hash().as_deref().unwrap_or("-"), "applied");
                            self.metrics.applies.inc();
                            self.metrics.set_mode(held.state());
                            self.metrics.set_queue_lifetime(held.queue_lifetime());
                            // While putting back a drift, the backoff goes on until a
                            // read-back finds the MTA equal: an edit made again and again
                            // is not fought at full speed.
                            if !drifting {
                                backoff = self.timing.backoff();
                            }
                            retry_at = Instant::now();
                            verify_at = Instant::now();
                            probe_at = Instant::now();
                            stall_reference = None;
                            pass_started_with = queue.as_ref().map(|queue| queue.messages);
                            next_pass_at = None;
                            // A release is followed from its start.
                            measure_at = measure_at.min(
                                Instant::now() + held.measure_after(last_scan, self.timing.measure_every),
                            );
                            applied = Some(held);
                            self.report(&intent, applied.as_ref(), &drift, &queue);
                        }
                        Err((state, error)) => {
                            let wait = backoff.next().unwrap_or(self.timing.retry_max);
                            warn!(%error, %state, retry_in = ?wait, "cannot apply; retrying");
                            self.metrics.errors.with_label_values(&[Action::Apply.label()]).inc();
                            // Part of the change may have been made: what the MTA runs is unknown.
                            applied = None;
                            retry_at = Instant::now() + wait;
                        }
                    }
                }
                update = documents.next(), if documents_open => match update {
                    Some(document) => {
                        let next = intent.next(document.as_ref(), Timestamp::now().as_second());
                        self.set_intent(&mut intent, next);
                    }
                    None => documents_open = false,
                },
                verified = finished(&mut verifying), if verifying.is_some() => {
                    verifying = None;
                    verify_at = Instant::now() + self.timing.verify_every;
                    match verified {
                        // Only a read-back of what is applied, with nothing being applied,
                        // says anything about another hand.
                        Ok(read) if applying.is_none() && applied.as_ref() == Some(&read.held) && read.held == intent => {
                            match self.take_read_back(read, &mut drift, &mut backoff) {
                                Ok(Finding::Same) => {}
                                Ok(finding) => {
                                    if let Finding::Differs { apply_in } = finding {
                                        applied = None;
                                        retry_at = Instant::now() + apply_in;
                                    }
                                    self.report(&intent, applied.as_ref(), &drift, &queue);
                                }
                                Err(error) => {
                                    self.metrics.errors.with_label_values(&[Action::Verify.label()]).inc();
                                    warn!(%error, "cannot read back what the MTA runs");
                                }
                            }
                        }
                        _ => {}
                    }
                }
                measured = finished(&mut measuring), if measuring.is_some() => {
                    measuring = None;
                    last_scan = scan_started.elapsed();
                    match measured.map_err(AgentError::Task).and_then(|queue| queue) {
                        Ok(figures) => {
                            if let Some(figures) = &figures {
                                self.metrics.set_queue(figures);
                            }
                            // A measurement a period after the reference (every one
                            // outside a release) judges the release and is reported; the
                            // ones in between only look for its end, so that a release
                            // writes no more reports than the period allows.
                            let periodic = stall_reference
                                .as_ref()
                                .is_none_or(|(at, _)| scan_started.duration_since(*at) >= self.timing.measure_every);
                            if periodic {
                                let previous = stall_reference.take().and_then(|(_, figures)| figures);
                                if applied.as_ref() == Some(&intent)
                                    && intent.release_stalled(previous.as_ref(), figures.as_ref())
                                {
                                    info!("the release delivered nothing over a measuring period; applying it again");
                                    applied = None;
                                }
                                stall_reference = Some((scan_started, figures.clone()));
                            }
                            if applied.as_ref() == Some(&intent) && applying.is_none() && next_pass_at.is_none() {
                                match intent.release_pass(self.mta.delivering(), pass_started_with, figures.as_ref()) {
                                    ReleasePass::Running => {}
                                    ReleasePass::AgainNow => {
                                        pass_backoff = self.timing.pass_backoff();
                                        next_pass_at = Some(Instant::now());
                                    }
                                    ReleasePass::AgainLater => {
                                        let wait = pass_backoff.next().unwrap_or(self.timing.measure_every);
                                        info!(retry_in = ?wait, "the release's last pass delivered nothing; another follows");
                                        next_pass_at = Some(Instant::now() + wait);
                                    }
                                }
                            }
                            let next = intent.after_measuring(figures.as_ref(), Timestamp::now().as_second());
                            queue = figures;
                            if periodic {
                                self.report(&intent, applied.as_ref(), &drift, &queue);
                            }
                            self.set_intent(&mut intent, next);
                        }
                        Err(error) => {
                            self.metrics.errors.with_label_values(&[Action::Queue.label()]).inc();
                            warn!(%error, "cannot read the queue");
                        }
                    }
                    measure_at = scan_started + intent.measure_after(last_scan, self.timing.measure_every);
                }
                _ = tokio::time::sleep_until(measure_at), if measuring.is_none() => {
                    let mta = self.mta.clone();
                    let held = intent.clone();
                    scan_started = Instant::now();
                    measuring = Some(tokio::task::spawn_blocking(move || mta.queue(&held)));
                }
                _ = tokio::time::sleep_until(next_pass_at.unwrap_or(retry_at)), if next_pass_at.is_some() && applying.is_none() => {
                    next_pass_at = None;
                    if applied.as_ref() == Some(&intent) && matches!(intent, Held::Releasing { .. }) {
                        applying = Some(self.start_apply(intent.clone()));
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if applying.is_none() && !applied_intent => {
                    applying = Some(self.start_apply(intent.clone()));
                }
                _ = tokio::time::sleep_until(verify_at), if applying.is_none() && verifying.is_none() && applied_intent => {
                    let mta = self.mta.clone();
                    let held = intent.clone();
                    let probe = self.probe.clone().filter(|_| Instant::now() >= probe_at);
                    if probe.is_some() {
                        probe_at = Instant::now() + self.timing.probe_every;
                    }
                    verifying = Some(tokio::task::spawn_blocking(move || {
                        // The probe asks first: a change made between the two is then
                        // read in the files too, and the drift names its cause, not only
                        // what senders heard.
                        let heard = probe.map(|probe| probe.ask());
                        ReadBack {
                            differences: mta.drift(&held),
                            heard,
                            held,
                        }
                    }));
                }
                _ = tokio::time::sleep_until(ready_until.unwrap_or(retry_at)), if ready_until.is_some_and(|until| until > Instant::now()) => {}
            }
        }
        if let Some(apply) = applying {
            // Let a change under way finish rather than leave it to the next start.
            tokio::time::timeout(Duration::from_secs(10), apply)
                .await
                .ok();
        }
    }

    /// Takes in a read-back of the applied state: records what the probe heard, brings the
    /// drift record up to date and says what changed. A new drift is applied again at once,
    /// one that keeps coming back with `backoff`, which only a read-back finding the MTA
    /// equal resets.
    fn take_read_back(
        &self,
        read: ReadBack,
        drift: &mut Option<DriftReport>,
        backoff: &mut ExponentialBackoff,
    ) -> Result<Finding, AgentError> {
        let heard = self.heard(&read.held, read.heard);
        let mut differences = read.differences?;
        differences.extend(heard);
        let was_drifting = is_drifting(drift);
        *drift = after_read_back(drift.take(), &differences, Timestamp::now().as_second());
        let state = read.held.state();
        if !differences.is_empty() {
            let what = drift.as_ref().map_or("", |d| d.what.as_str());
            let apply_in = if was_drifting {
                backoff.next().unwrap_or(self.timing.retry_max)
            } else {
                Duration::ZERO
            };
            warn!(%what, %state, ?apply_in, "the MTA differs from what the agent applied; applying it again");
            self.metrics.count_drift(drift_kind(&differences).label());
            Ok(Finding::Differs { apply_in })
        } else if was_drifting {
            info!(%state, "the MTA runs what the agent applied again");
            *backoff = self.timing.backoff();
            Ok(Finding::EqualAgain)
        } else {
            Ok(Finding::Same)
        }
    }

    /// Records what the SMTP probe heard (if it asked) and judges it against `held`: a
    /// wrong answer is a difference; a session that went wrong is an error, not drift.
    fn heard(&self, held: &Held, heard: Option<std::io::Result<String>>) -> Option<Difference> {
        let recipient = &self.probe.as_ref()?.recipient;
        match heard? {
            Ok(answer) => {
                self.metrics
                    .set_probe_reply_code(probe::reply_code(&answer).unwrap_or(0));
                probe::judge(held, recipient, &answer)
            }
            Err(error) => {
                self.metrics.set_probe_reply_code(0);
                self.metrics
                    .errors
                    .with_label_values(&[Action::Probe.label()])
                    .inc();
                warn!(%error, "the SMTP probe got no answer");
                None
            }
        }
    }

    /// Makes `next` the intent, and tells what follows it live.
    fn set_intent(&self, intent: &mut Held, next: Held) {
        if next == *intent {
            return;
        }
        info!(from = %intent.state(), to = %next.state(), "new intent");
        *intent = next;
        self.intents.send_replace(intent.clone());
    }

    /// Saves `held` as the intent, then applies it, on a blocking thread.
    fn start_apply(&self, held: Held) -> Applying {
        let mta = self.mta.clone();
        let state_file = self.state_file.clone();
        tokio::task::spawn_blocking(move || {
            let result = save_state(&state_file, &held).and_then(|()| mta.apply(&held));
            (held, result)
        })
    }

    /// Hands the reporter this pod's entry while an incident is applied: the applied
    /// hash, the queue and any drift. While the MTA drifts the entry names the intent's
    /// hash with the drift's `since`, so that it never claims a converged MTA (the
    /// controller does not count a pod applied while `since` is set). Never waits.
    fn report(
        &self,
        intent: &Held,
        applied: Option<&Held>,
        drift: &Option<DriftReport>,
        queue: &Option<QueueFigures>,
    ) {
        let reported = if is_drifting(drift) {
            Some(intent)
        } else {
            applied
        };
        let Some(held) = reported else {
            return;
        };
        let entry = match held {
            Held::Incident { .. } => AgentReport {
                hash: held.hash().unwrap_or_default(),
                after: None,
                queue: queue.clone(),
                drift: drift.clone(),
            },
            // What is left of the held mail, until it is delivered: the controller keeps
            // the report for it, and `kubectl mail-incident resolve --wait` follows it.
            Held::Releasing { .. } => AgentReport {
                hash: String::new(),
                after: Some(AfterIncident::Releasing),
                queue: queue.clone(),
                drift: drift.clone(),
            },
            Held::Normal => AgentReport {
                hash: String::new(),
                after: Some(AfterIncident::Normal),
                queue: None,
                drift: None,
            },
        };
        // During an incident and its release every measurement sends the entry again (a
        // write that met no report object is made again then). In normal service only a
        // change is: with no report object to write to, one attempt is made, not one per
        // measurement.
        if entry.released() {
            self.reports.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&entry);
                if changed {
                    *current = Some(entry);
                }
                changed
            });
        } else {
            self.reports.send_replace(Some(entry));
        }
    }
}

fn is_drifting(drift: &Option<DriftReport>) -> bool {
    drift.as_ref().is_some_and(|drift| drift.since.is_some())
}

/// The longest `what` a report carries: it goes into an event message.
const WHAT_LONGEST: usize = 512;

/// The drift report once a read-back at `now` found `differences`: each finding counts
/// once, says what differed and keeps the time the MTA first differed; a read-back that
/// finds nothing ends the drift (`since` cleared) and keeps the rest for the record.
fn after_read_back(
    previous: Option<DriftReport>,
    differences: &[Difference],
    now: i64,
) -> Option<DriftReport> {
    if differences.is_empty() {
        return previous.map(|drift| DriftReport {
            since: None,
            ..drift
        });
    }
    let what: Vec<&str> = differences.iter().map(|d| d.what.as_str()).collect();
    let mut what = what.join("; ");
    if what.len() > WHAT_LONGEST {
        let mut cut = WHAT_LONGEST;
        while !what.is_char_boundary(cut) {
            cut -= 1;
        }
        what.truncate(cut);
        what.push_str("...");
    }
    let previous = previous.unwrap_or_default();
    Some(DriftReport {
        count: previous.count.saturating_add(1),
        what,
        since: previous.since.or(Some(now)),
    })
}

/// The kind a finding is counted under: what decides the RCPT answer first.
fn drift_kind(differences: &[Difference]) -> super::DriftKind {
    differences
        .iter()
        .map(|d| d.kind)
        .min()
        .unwrap_or(super::DriftKind::Queue)
}

/// What a blocking task returned, once it has finished; never, if there is none.
async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The applied state, or the label of the state that could not be applied and why.
fn apply_outcome(
    outcome: Result<(Held, Result<(), AgentError>), tokio::task::JoinError>,
) -> Result<Held, (String, AgentError)> {
    match outcome {
        Ok((held, Ok(()))) => Ok(held),
        Ok((held, Err(error))) => Err((held.state().to_string(), error)),
        // The apply panicked: what it did is unknown, so the intent is applied again.
        Err(error) => Err(("unknown".into(), AgentError::Task(error))),
    }
}

/// The intent saved by the last agent, `Normal` for a first start. A state file that
/// exists but cannot be read or parsed is an error: starting from `Normal` would release
/// an incident's hold on a guess.
pub fn load_state(path: &std::path::Path) -> Result<Held, AgentError> {
    match files::read_if_exists(path)? {
        Some(text) => serde_json::from_str(&text).map_err(|source| AgentError::Unparsable {
            path: path.to_path_buf(),
            source,
        }),
        None => Ok(Held::Normal),
    }
}

fn save_state(path: &std::path::Path, held: &Held) -> Result<(), AgentError> {
    let text = serde_json::to_string_pretty(held).map_err(|source| AgentError::Unencodable {
        what: "the agent's state",
        source,
    })?;
    files::write_durably(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::{fixtures::document, state::MtaState},
        api::{Mode, mode_document::QueueFigures},
    };
    use futures::channel::mpsc;
    use std::sync::Mutex;

    /// An MTA that records what it is told, reads the state file at each apply (to see
    /// that the intent was saved first), fails the first `failures` applies and takes
    /// `apply_time` for each. What another hand changed (`tampered`) reads back as drift
    /// until an apply puts it back; `refights` more applies leave it in place, as a tool
    /// fighting the agent would.
    #[derive(Default)]
    struct FakeMta {
        applied: Mutex<Vec<Held>>,
        applied_at: Mutex<Vec<Instant>>,
        tampered: Mutex<Vec<Difference>>,
        refights: Mutex<u32>,
        saved_at_apply: Mutex<Vec<Held>>,
        failures: Mutex<u32>,
        apply_time: Duration,
        queue: Mutex<QueueFigures>,
        /// What `delivering` answers: `None` for an MTA that delivers on its own.
        delivering: Mutex<Option<bool>>,
        state_file: PathBuf,
    }

    impl Mta for FakeMta {
        fn apply(&self, held: &Held) -> Result<(), AgentError> {
            self.saved_at_apply
                .lock()
                .unwrap()
                .push(load_state(&self.state_file).unwrap());
            std::thread::sleep(self.apply_time);
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(AgentError::CommandFailed {
                    command: "\"postfix\" \"reload\"".into(),
                    status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                    stderr: "postfix: fatal".into(),
                });
            }
            self.applied.lock().unwrap().push(held.clone());
            self.applied_at.lock().unwrap().push(Instant::now());
            let mut refights = self.refights.lock().unwrap();
            match refights.checked_sub(1) {
                Some(left) => *refights = left,
                None => self.tampered.lock().unwrap().clear(),
            }
            Ok(())
        }

        fn queue(&self, _: &Held) -> Result<Option<QueueFigures>, AgentError> {
            Ok(Some(self.queue.lock().unwrap().clone()))
        }

        fn drift(&self, _: &Held) -> Result<Vec<Difference>, AgentError> {
            Ok(self.tampered.lock().unwrap().clone())
        }

        fn delivering(&self) -> Option<bool> {
            *self.delivering.lock().unwrap()
        }
    }

    struct Harness {
        mta: Arc<FakeMta>,
        documents: mpsc::UnboundedSender<Option<ModeDocument>>,
        intents: watch::Receiver<Held>,
        reports: watch::Receiver<Option<AgentReport>>,
        readiness: Readiness,
        metrics: AgentMetrics,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<()>,
        _directory: tempfile::TempDir,
    }

    fn timing() -> Timing {
        Timing {
            measure_every: Duration::from_millis(50),
            verify_every: Duration::from_millis(50),
            probe_every: Duration::from_millis(50),
            ready_within: Duration::from_millis(300),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
        }
    }

    /// The metrics as Prometheus reads them.
    fn exposition(metrics: &AgentMetrics) -> String {
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &metrics.registry().gather(),
            &mut text,
        )
        .unwrap();
        String::from_utf8(text).unwrap()
    }

    fn start(saved: Held, configure: impl FnOnce(&mut FakeMta)) -> Harness {
        start_with(saved, configure, None)
    }

    fn start_with(
        saved: Held,
        configure: impl FnOnce(&mut FakeMta),
        probe: Option<Probe>,
    ) -> Harness {
        start_timed(saved, configure, probe, timing())
    }

    fn start_timed(
        saved: Held,
        configure: impl FnOnce(&mut FakeMta),
        probe: Option<Probe>,
        timing: Timing,
    ) -> Harness {
        let directory = tempfile::tempdir().unwrap();
        let state_file = directory.path().join("agent-state.json");
        save_state(&state_file, &saved).unwrap();
        let mut mta = FakeMta {
            state_file: state_file.clone(),
            ..FakeMta::default()
        };
        configure(&mut mta);
        let mta = Arc::new(mta);
        let (documents, updates) = mpsc::unbounded();
        let (intents, intents_rx) = watch::channel(Held::Normal);
        let (reports, reports_rx) = watch::channel(None);
        let readiness = Readiness::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = AgentMetrics::default();
        let agent = Loop {
            mta: mta.clone(),
            state_file,
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            probe,
            timing,
            intents,
            reports,
        };
        let task = tokio::spawn(agent.run(saved, updates, async {
            stopped.await.ok();
        }));
        Harness {
            mta,
            documents,
            intents: intents_rx,
            reports: reports_rx,
            readiness,
            metrics,
            stop: Some(stop),
            task,
            _directory: directory,
        }
    }

    impl Harness {
        /// The states applied to the MTA so far, in order.
        fn applied_labels(&self) -> Vec<String> {
            self.mta
                .applied
                .lock()
                .unwrap()
                .iter()
                .map(|held| held.state().to_string())
                .collect()
        }

        fn send(&self, document: Option<ModeDocument>) {
            self.documents.unbounded_send(document).unwrap();
        }

        fn last_applied(&self) -> Option<Held> {
            self.mta.applied.lock().unwrap().last().cloned()
        }

        /// Waits (at most 5 s) until the MTA last applied a state `matches` accepts.
        async fn settles_on(&self, what: &str, matches: impl Fn(&Held) -> bool) -> Held {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(held) = self.last_applied().filter(|h| matches(h)) {
                    return held;
                }
                assert!(
                    Instant::now() < deadline,
                    "never applied {what}; applied: {:?}",
                    self.mta.applied.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(mut self) -> Arc<FakeMta> {
            self.stop.take().unwrap().send(()).ok();
            tokio::time::timeout(Duration::from_secs(2), self.task)
                .await
                .expect("the loop stops at once")
                .unwrap();
            self.mta
        }
    }

    /// Waits (at most 5 s) until `condition` holds: the loop runs beside the test, later
    /// on a loaded machine.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "never {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_mode(mode: Mode) -> impl Fn(&Held) -> bool {
        move |held| matches!(held, Held::Incident { document } if document.headline().mode == mode)
    }

    fn tempfail() -> ModeDocument {
        document(Mode::TempFail, 452, "4.3.1")
    }

    #[tokio::test]
    async fn reordered_and_duplicated_events_end_on_the_last_document() {
        let agent = start(Held::Normal, |_| {});
        let reject = document(Mode::HardReject, 550, "5.3.2");
        for update in [
            Some(tempfail()),
            Some(tempfail()),
            None,
            Some(reject.clone()),
            Some(tempfail()),
            Some(reject.clone()),
            Some(reject.clone()),
        ] {
            agent.send(update);
        }
        agent
            .settles_on("HardReject", is_mode(Mode::HardReject))
            .await;
        // Duplicates changed nothing: once applied, nothing more is done.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let applies = agent.mta.applied.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(agent.mta.applied.lock().unwrap().len(), applies);
        assert_eq!(
            agent.reports.borrow().as_ref().map(|r| r.hash.clone()),
            Some(reject.hash())
        );
        assert!(agent.readiness.is_ready());
        agent.stop().await;
    }

    #[tokio::test]
    async fn an_incident_that_ends_while_it_is_applied_still_ends() {
        let agent = start(Held::Normal, |mta| {
            mta.apply_time = Duration::from_millis(150);
            *mta.queue.get_mut().unwrap() = QueueFigures {
                messages: 2,
                oldest_age_seconds: 600,
                ..QueueFigures::default()
            };
        });
        agent.send(Some(tempfail()));
        // The document goes away while TempFail is being applied (a fixed sleep instead
        // could end before a loaded machine started the apply at all).
        eventually("applying TempFail", || {
            !agent.mta.saved_at_apply.lock().unwrap().is_empty()
        })
        .await;
        agent.send(None);
        agent
            .settles_on("Releasing", |h| matches!(h, Held::Releasing { .. }))
            .await;
        // The MTA records the release before the loop hears that its apply ended; the
        // report says what is left of the held mail.
        eventually("reporting the release with what is left", || {
            agent.reports.borrow().as_ref().is_some_and(|r| {
                r.hash.is_empty()
                    && r.after == Some(AfterIncident::Releasing)
                    && r.queue.as_ref().is_some_and(|q| q.messages == 2)
            })
        })
        .await;
        // The held mail is delivered: normal service, and the report says so.
        *agent.mta.queue.lock().unwrap() = QueueFigures::default();
        agent
            .settles_on("Normal", |held| *held == Held::Normal)
            .await;
        eventually("reporting normal service", || {
            agent
                .reports
                .borrow()
                .as_ref()
                .is_some_and(AgentReport::released)
        })
        .await;
        let mut labels = agent.applied_labels();
        // A release that delivered nothing between two measurements is applied again;
        // on a loaded machine the queue can be measured twice before the test empties it.
        labels.dedup();
        assert_eq!(labels, ["TempFail", "Releasing", "Normal"]);
        assert_eq!(*agent.intents.borrow(), Held::Normal);
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_failing_apply_is_retried_on_its_own_and_readiness_tells_the_truth() {
        let agent = start(Held::Normal, |mta| *mta.failures.get_mut().unwrap() = 1000);
        agent.send(Some(tempfail()));
        // Failing for longer than ready_within: not ready, and still retrying.
        eventually("not ready and retried 4 times", || {
            !agent.readiness.is_ready() && agent.mta.saved_at_apply.lock().unwrap().len() >= 4
        })
        .await;
        // The fault clears: the very next retry applies, with no new event.
        *agent.mta.failures.lock().unwrap() = 0;
        agent.settles_on("TempFail", is_mode(Mode::TempFail)).await;
        eventually("ready again", || agent.readiness.is_ready()).await;
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_drift_is_put_back_with_backoff_and_reported_with_its_start_until_equal_again() {
        let agent = start(Held::Normal, |_| {});
        agent.send(Some(tempfail()));
        agent.settles_on("TempFail", is_mode(Mode::TempFail)).await;
        eventually("reported applied", || {
            agent.reports.borrow().as_ref().map(|r| r.hash.clone()) == Some(tempfail().hash())
        })
        .await;
        let applies = agent.mta.applied.lock().unwrap().len();
        // Another hand rewrites what decides the answer, and keeps rewriting it for ten
        // more applies: with the backoff (at least 20 + 40 + 8 x 50 ms), longer than
        // ready_within (300 ms).
        let rewritten = "Exim mode file = \"normal\\n\", want \"tempfail\"";
        *agent.mta.refights.lock().unwrap() = 10;
        *agent.mta.tampered.lock().unwrap() = vec![Difference {
            kind: super::super::DriftKind::Answer,
            what: rewritten.into(),
        }];
        let before = Timestamp::now().as_second();
        eventually("reported as drifting", || {
            agent.reports.borrow().as_ref().is_some_and(|report| {
                report.hash == tempfail().hash()
                    && report
                        .drift
                        .as_ref()
                        .is_some_and(|d| d.what == rewritten && d.since >= Some(before))
            })
        })
        .await;
        eventually("not ready while it lasts", || !agent.readiness.is_ready()).await;
        eventually("ready again once equal", || agent.readiness.is_ready()).await;
        let report = agent.reports.borrow().clone().unwrap();
        let drift = report.drift.unwrap();
        assert_eq!(drift.since, None, "equal again: no longer drifting");
        assert_eq!(drift.what, rewritten, "what differed stays on the record");
        // Found before the first apply and after each of the ten that did not put it back.
        assert_eq!(drift.count, 11);
        let applied_at = agent.mta.applied_at.lock().unwrap()[applies..].to_vec();
        assert_eq!(applied_at.len(), 11);
        // The first is made at once, the next ones with backoff (from 20 ms doubling,
        // half of 100 ms and up once capped).
        let last_gap = applied_at[10] - applied_at[9];
        assert!(last_gap >= Duration::from_millis(50), "{last_gap:?}");
        let text = exposition(&agent.metrics);
        assert!(
            text.contains("mail_incident_agent_drift_total{kind=\"answer\"} 11"),
            "{text}"
        );
        assert!(text.contains("mail_incident_agent_converged 1"), "{text}");
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_wrong_answer_on_the_wire_is_drift_and_its_code_is_exported() {
        // The MTA's files are right, but senders hear 250 during a TempFail.
        let mta = probe::fixtures::FakeSmtp::start("250 2.1.5 Ok");
        let agent = start_with(
            Held::Normal,
            |_| {},
            Some(Probe {
                address: mta.address,
                recipient: "probe@e2e.test".into(),
            }),
        );
        agent.send(Some(tempfail()));
        eventually("reported the wrong answer as drift", || {
            agent.reports.borrow().as_ref().is_some_and(|report| {
                report.drift.as_ref().is_some_and(|d| {
                    d.since.is_some()
                        && d.what
                            .starts_with("RCPT TO:<probe@e2e.test> answer = \"250 2.1.5 Ok\"")
                })
            })
        })
        .await;
        // Once senders hear the incident's answer, the drift ends.
        *mta.rcpt_reply.lock().unwrap() =
            "452 4.3.1 <probe@e2e.test>: Recipient address rejected: storage down".into();
        eventually("equal again", || {
            agent
                .reports
                .borrow()
                .as_ref()
                .is_some_and(|report| report.drift.as_ref().is_some_and(|d| d.since.is_none()))
        })
        .await;
        eventually("the last code exported", || {
            exposition(&agent.metrics).contains("mail_incident_agent_probe_reply_code 452")
        })
        .await;
        assert!(
            !mta.heard.lock().unwrap().iter().any(|c| c == "DATA"),
            "nothing is ever sent"
        );
        agent.stop().await;
    }

    #[test]
    fn a_read_back_counts_each_finding_keeps_the_first_time_and_ends_when_equal() {
        let found = |what: &str| Difference {
            kind: super::super::DriftKind::Queue,
            what: what.into(),
        };
        let first = after_read_back(None, &[found("a")], 100).unwrap();
        assert_eq!((first.count, first.since), (1, Some(100)));
        let again = after_read_back(Some(first), &[found("a"), found("b")], 130).unwrap();
        assert_eq!((again.count, again.since), (2, Some(100)));
        assert_eq!(again.what, "a; b");
        let equal = after_read_back(Some(again), &[], 140).unwrap();
        assert_eq!(
            (equal.count, equal.since, equal.what.as_str()),
            (2, None, "a; b")
        );
        assert_eq!(after_read_back(None, &[], 150), None);
        let long = after_read_back(None, &[found(&"é".repeat(400))], 1).unwrap();
        assert!(long.what.len() <= WHAT_LONGEST + 3, "{}", long.what.len());
    }

    #[tokio::test]
    async fn the_intent_is_saved_before_the_mta_is_touched() {
        let agent = start(Held::Normal, |_| {});
        agent.send(Some(tempfail()));
        let held = agent.settles_on("TempFail", is_mode(Mode::TempFail)).await;
        let mta = agent.stop().await;
        assert_eq!(mta.saved_at_apply.lock().unwrap().last(), Some(&held));
    }

    #[tokio::test]
    async fn a_restart_applies_the_saved_intent_before_any_document_arrives() {
        // The API server is unreachable: no document ever comes.
        let saved = crate::agent::fixtures::held(&tempfail());
        let agent = start(saved.clone(), |_| {});
        agent
            .settles_on("the saved TempFail", |h| *h == saved)
            .await;
        assert_eq!(*agent.intents.borrow(), saved);
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_restart_after_the_incident_ended_releases_then_returns_to_normal() {
        // Killed mid-incident; the incident ended while the agent was down.
        let saved = crate::agent::fixtures::held(&tempfail());
        let agent = start(saved, |mta| {
            *mta.queue.get_mut().unwrap() = QueueFigures {
                messages: 3,
                oldest_age_seconds: 3600,
                ..QueueFigures::default()
            }
        });
        agent.send(None);
        agent
            .settles_on("Releasing", |h| matches!(h, Held::Releasing { .. }))
            .await;
        // Held mail is still queued: the release goes on.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(agent.last_applied().unwrap().state(), MtaState::Releasing);
        *agent.mta.queue.lock().unwrap() = QueueFigures::default();
        agent
            .settles_on("Normal", |held| *held == Held::Normal)
            .await;
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_release_that_delivers_nothing_is_flushed_again() {
        let saved = crate::agent::fixtures::held(&tempfail());
        let agent = start(saved, |mta| {
            *mta.queue.get_mut().unwrap() = QueueFigures {
                messages: 10,
                oldest_age_seconds: 3600,
                ..QueueFigures::default()
            }
        });
        agent.send(None);
        // Measured every 50 ms with nothing delivered: Releasing is applied again.
        eventually("applied the stalled release again", || {
            let applied = agent.mta.applied.lock().unwrap();
            applied
                .iter()
                .filter(|h| h.state() == MtaState::Releasing)
                .count()
                >= 2
        })
        .await;
        agent.stop().await;
    }

    /// An agent that held a TempFail with three messages queued, measuring every 30 s,
    /// on an MTA whose `delivering` answers `delivering`.
    fn releasing_three_held(delivering: Option<bool>) -> Harness {
        start_timed(
            crate::agent::fixtures::held(&tempfail()),
            |mta| {
                *mta.queue.get_mut().unwrap() = QueueFigures {
                    messages: 3,
                    oldest_age_seconds: 3600,
                    ..QueueFigures::default()
                };
                *mta.delivering.get_mut().unwrap() = delivering;
            },
            None,
            Timing {
                measure_every: Duration::from_secs(30),
                ..timing()
            },
        )
    }

    #[tokio::test]
    async fn a_release_in_passes_starts_another_pass_when_one_ends_with_held_mail_left() {
        // Each pass ends at once: as a runner that skipped every message.
        let agent = releasing_three_held(Some(false));
        let releases = || {
            agent
                .applied_labels()
                .iter()
                .filter(|label| *label == "Releasing")
                .count()
        };
        agent.send(None);
        // Passes that deliver nothing follow one another after a backoff, long before the
        // 30 s period would judge the release stalled.
        eventually("three passes", || releases() >= 3).await;
        // A pass that delivered some is followed at once; the end stops the passes.
        agent.mta.queue.lock().unwrap().messages = 2;
        let before = releases();
        eventually("a pass after progress", || releases() > before).await;
        *agent.mta.queue.lock().unwrap() = QueueFigures::default();
        agent
            .settles_on("Normal", |held| *held == Held::Normal)
            .await;
        let passes = releases();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(releases(), passes, "no pass after the release");
        agent.stop().await;
    }

    #[tokio::test]
    async fn a_release_ends_as_soon_as_its_queue_is_empty_not_at_the_next_report() {
        let agent = releasing_three_held(None);
        agent.send(None);
        agent
            .settles_on("Releasing", |h| matches!(h, Held::Releasing { .. }))
            .await;
        // The first measurement of the release is reported.
        eventually("reporting the release", || {
            agent
                .reports
                .borrow()
                .as_ref()
                .is_some_and(|r| r.after == Some(AfterIncident::Releasing))
        })
        .await;
        *agent.mta.queue.lock().unwrap() = QueueFigures::default();
        // Seen within the 5 s `settles_on` waits, not after the 30 s period.
        agent
            .settles_on("Normal", |held| *held == Held::Normal)
            .await;
        // Measured sooner, but judged stalled only over a whole period: applied once.
        let labels: Vec<String> = agent
            .applied_labels()
            .into_iter()
            .filter(|label| label != "TempFail")
            .collect();
        assert_eq!(labels, ["Releasing", "Normal"]);
        agent.stop().await;
    }

    #[tokio::test]
    async fn stop_is_served_while_an_apply_keeps_failing() {
        let agent = start(Held::Normal, |mta| *mta.failures.get_mut().unwrap() = 1000);
        agent.send(Some(tempfail()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        agent.stop().await;
    }

    #[test]
    fn an_unreadable_state_file_is_an_error_not_a_first_start() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("agent-state.json");
        assert_eq!(load_state(&path).unwrap(), Held::Normal);
        std::fs::write(&path, "{\"state\": \"Incid").unwrap();
        let error = load_state(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "cannot parse {}: EOF while parsing",
                path.display()
            )),
            "{error}"
        );
        // A state file that cannot be read at all names its path too.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let error = load_state(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot read {}: ", path.display())),
            "{error}"
        );
        let error = save_state(&path.join("absent/agent-state.json"), &Held::Normal)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot write {}: ",
                path.join("absent/agent-state.json").display()
            )),
            "{error}"
        );
    }
}
