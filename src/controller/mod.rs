//! The Kubernetes side of the controller: watches, the reconcile loop, writes, status,
//! events and the finalizer. Decisions are made in [`crate::plan`]; this module observes,
//! asks the plan, and carries it out.
//!
//! A reconcile syncs one namespace ([`triggers`] says why and when). Every replica keeps
//! its caches warm and runs the loop; only the one whose Lease claim holds writes, and
//! each write checks the claim first ([`leader`]).

mod apply;
mod cache;
mod cached;
mod events;
mod field_manager;
mod finalizers;
#[cfg(test)]
mod fixtures;
mod leader;
mod metrics;
mod namespace_state;
mod observe;
mod report_pacing;
pub mod signing_key;
mod triggers;
mod versions;

/// The objects the operator writes, for tests that plant what it would have written.
pub use apply::{WRITE_CONCURRENCY, document_object, report_object};
pub use field_manager::FIELD_MANAGER;

use crate::{
    Error, Result,
    api::{MailIncident, MailIncidentStatus, admission::SigningKey},
    http::{self, Readiness},
    plan::{self, TargetRef, Write},
    shutdown,
    telemetry::LogFormat,
    webhook::{self, admission::Reviewer},
};
use cache::Caches;
use events::Events;
use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::core::v1::Namespace,
    jiff::{RoundMode, Timestamp, TimestampRound, Unit},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
    },
};
use leader::Leadership;
use metrics::Metrics;
use namespace_state::NamespaceState;
use std::{
    any::Any,
    collections::HashMap,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{debug, error, info, warn};
use versions::Versions;

/// How often every namespace is synced with nothing changed: a backstop for anything a
/// watch missed, so drift never outlives this period.
const RESYNC_PERIOD: Duration = Duration::from_secs(300);

/// How long in-flight reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a sync waits, at most, for the caches to show its writes (normally a few
/// milliseconds; longer only when the API server is overloaded).
const ECHO_WAIT: Duration = Duration::from_secs(1);

/// Command-line settings of `mail-incident-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Namespaces synced at the same time, at most (1 to 256; 0 would mean no bound).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,

    /// Name of this instance in events and in the leader Lease (the pod name in a
    /// cluster; default: host name and process id). Must differ between replicas.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// The Lease replicas hold to lead: only the holder writes.
    #[arg(long, env = "LEASE_NAME", default_value = "mail-incident-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (in a cluster, the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mail-incident-operator")]
    pub lease_namespace: String,

    /// Seconds a leader may go without renewing before another replica takes over
    /// (3 to 300). The leader renews when two thirds are left and stops writing when a
    /// fifth is left.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_seconds: u64,

    #[command(flatten)]
    pub webhook: webhook::CertificateSettings,
}

/// What every reconcile shares.
struct Context {
    client: Client,
    events: Events,
    metrics: Metrics,
    caches: Caches,
    leadership: Leadership,
    /// The key admission records are checked with (see [`signing_key`]).
    signing_key: SigningKey,
    /// What the controller keeps about each namespace between its syncs.
    namespace_states: Mutex<HashMap<String, NamespaceState>>,
}

impl Context {
    /// Runs `work` on what is kept about `namespace`, under the lock; `work` only updates
    /// the state (nothing in it can panic), so the lock is never poisoned.
    fn namespace_state<T>(
        &self,
        namespace: &str,
        work: impl FnOnce(&mut NamespaceState) -> T,
    ) -> T {
        let mut states = self.namespace_states.lock().expect("lock poisoned");
        work(states.entry(namespace.to_string()).or_default())
    }
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    let http = http::Server::start(settings.listen, metrics.registry(), readiness.clone()).await?;
    let namespace = settings.namespace.as_deref();
    let identity = settings.instance.clone().unwrap_or_else(default_identity);
    info!(listen = %settings.listen, namespace = namespace.unwrap_or("(all)"), %identity, "starting");
    let stop = shutdown::signal().shared();

    let (leadership, elector) = leader::start(
        client.clone(),
        leader::LeaseSettings {
            namespace: settings.lease_namespace.clone(),
            name: settings.lease_name.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(settings.lease_seconds),
        },
        metrics.clone(),
    );

    let cache::Started {
        caches,
        changes,
        health,
    } = cache::start(&client, namespace);
    let namespaces = triggers::Namespaces::new();
    let to_sync = triggers::namespaces_to_sync(namespaces.clone(), &caches, changes);
    let signing_key = signing_key::start(
        client.clone(),
        &settings.lease_namespace,
        identity.clone(),
        stop.clone().boxed(),
    )
    .await?;
    let webhook = serve_webhook(
        client.clone(),
        &settings,
        Reviewer {
            client: client.clone(),
            signing_key: signing_key.clone(),
        },
        stop.clone(),
    );
    let context = Arc::new(Context {
        events: Events::new(client.clone(), identity),
        signing_key,
        client,
        metrics: metrics.clone(),
        caches: caches.clone(),
        leadership: leadership.clone(),
        namespace_states: Mutex::default(),
    });
    tokio::spawn(cache::follow_readiness(caches, health, readiness));

    let controller = Controller::for_stream(to_sync, namespaces.store())
        .with_config(
            // No debounce: it would delay every mode change; bursts of changes fold anyway,
            // since a namespace queued or being synced is not queued twice.
            controller::Config::default().concurrency(settings.concurrency),
        )
        // Whatever happened while another replica led, or none did, is caught up on.
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(stop.clone())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                // error_policy has logged and counted it.
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!(%error, "controller error"),
            }
        });
    let deadline = {
        let stop = stop.clone();
        async move {
            stop.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        () = controller => {},
        () = deadline => warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; exiting anyway"),
    }
    elector.stop().await;
    info!("controller stopped; shutting down");
    webhook.await.ok();
    http.stop().await;
    Ok(())
}

/// Serves the admission webhook beside the controller, never in its way: a webhook that
/// cannot serve yet (no certificate from cert-manager, say) leaves the controller at its
/// work, and HardRejects fail closed meanwhile.
fn serve_webhook(
    client: Client,
    settings: &Settings,
    reviewer: Reviewer,
    stop: impl Future<Output = ()> + Clone + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let namespace = settings.lease_namespace.clone();
    let webhook = settings.webhook.clone();
    tokio::spawn(async move {
        match webhook::start(client, &namespace, &webhook, reviewer, stop).await {
            Ok(server) => {
                info!(address = %server.local_addr(), "serving the admission webhook");
                server.stopped().await;
            }
            Err(error) => error!(%error, "the admission webhook does not serve"),
        }
    })
}

/// The host name and process id: unique per replica when no pod name is given.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn reconcile(key: Arc<Namespace>, context: Arc<Context>) -> Result<Action> {
    // A standby syncs nothing; taking the lead syncs every namespace.
    if !context.leadership.holds() {
        return Ok(Action::await_change());
    }
    let namespace = triggers::name_of(&key);
    let timer = context
        .metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let result = guard_panics(sync_namespace(&context, &namespace)).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    context
        .metrics
        .reconciles
        .with_label_values(&[outcome])
        .inc();
    if result.is_ok() {
        context.namespace_state(&namespace, NamespaceState::sync_succeeded);
    }
    result
}

/// Turns a panic inside `work` into [`Error::Panic`]. Uncaught, a panic in one reconcile
/// unwinds through the controller's stream and stops the operator, and after the restart
/// the same object stops it again; caught, it fails that reconcile alone, which
/// error_policy counts and retries with the others still served.
async fn guard_panics<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    // Unwind safety: a reconcile shares metrics (atomics), caches (locks that do not
    // poison) and the Context's std mutex, which is held only around updates that cannot
    // panic, so a panic leaves none of them poisoned or half-written.
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| Err(Error::Panic(panic_message(payload.as_ref()))))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Plans the namespace and carries the plan out: finalizers on new incidents, target
/// writes, then statuses and events (which describe what the caches show, so they follow
/// the writes' echoes), then finalizers off deleted incidents whose targets are restored.
async fn sync_namespace(context: &Context, namespace: &str) -> Result<Action> {
    context.caches.wait_until_ready().await?;
    let started = Instant::now();
    let incidents = incidents_in(&context.caches, namespace);
    let api: Api<MailIncident> = Api::namespaced(context.client.clone(), namespace);
    add_finalizers(context, &api, &incidents).await?;
    let Planned {
        observed,
        plan,
        precise_now,
        observe_time,
        plan_time,
        redecided,
    } = plan_namespace(context, namespace, &incidents);
    write_targets(context, namespace, &observed.versions, plan.writes).await?;
    publish_decisions(context, namespace, &incidents, plan.incidents).await?;
    remove_finalizers(context, &api, &incidents).await?;
    debug!(
        namespace,
        incidents = incidents.len(),
        targets = observed.targets.len(),
        rebuilt = observed.rebuilt,
        redecided,
        observe_ms = observe_time.as_secs_f64() * 1e3,
        plan_ms = plan_time.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "synced"
    );
    Ok(next_sync(plan.wake_at, precise_now))
}

/// The namespace's incidents as cached, by name.
fn incidents_in(caches: &Caches, namespace: &str) -> Vec<Arc<MailIncident>> {
    let mut incidents = caches
        .incidents
        .state_filter(|i| i.namespace().as_deref() == Some(namespace));
    incidents.sort_by_key(|i| i.name_any());
    incidents
}

/// Puts the finalizer on incidents that lack it, before anything is written for them.
async fn add_finalizers(
    context: &Context,
    api: &Api<MailIncident>,
    incidents: &[Arc<MailIncident>],
) -> Result<()> {
    for incident in incidents.iter().filter(|i| finalizers::missing(i)) {
        context.leadership.fence()?;
        finalizers::add(api, incident).await?;
    }
    Ok(())
}

/// Takes the finalizer off deleted incidents whose targets are decided.
async fn remove_finalizers(
    context: &Context,
    api: &Api<MailIncident>,
    incidents: &[Arc<MailIncident>],
) -> Result<()> {
    for incident in incidents.iter().filter(|i| finalizers::awaited(i)) {
        context.leadership.fence()?;
        finalizers::remove(api, incident).await?;
    }
    Ok(())
}

/// A namespace's plan, what it was made from, and what making it took.
struct Planned {
    observed: observe::Observed,
    plan: plan::Plan,
    /// The time the plan was made at, before it was truncated to the second for the plan.
    precise_now: Timestamp,
    /// From the start of observing to its end, and to the end of planning.
    observe_time: Duration,
    plan_time: Duration,
    /// How many targets the planner decided again.
    redecided: usize,
}

/// Observes the namespace in the caches and plans it, building on what its last sync
/// left.
fn plan_namespace(context: &Context, namespace: &str, incidents: &[Arc<MailIncident>]) -> Planned {
    let planning = Instant::now();
    // Taken out while in use (syncs of one namespace never overlap): a sync that panics
    // leaves nothing half-updated behind, and the next one starts from scratch.
    let mut remembered =
        context.namespace_state(namespace, |state| std::mem::take(&mut state.remembered));
    let observed = observe::observe(&context.caches, namespace, &mut remembered.observations);
    let observe_time = planning.elapsed();
    let failures = context.namespace_state(namespace, |state| state.write_failures.clone());
    // Statuses carry whole seconds (so an unchanged one is written once); truncated, not
    // rounded, so that nothing starts or ends before its second has begun.
    let precise_now = Timestamp::now();
    let now = precise_now
        .round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Trunc),
        )
        .expect("truncating to seconds stays in range");
    let plan = remembered.planner.plan(&plan::Namespace {
        name: namespace,
        incidents: incidents.iter().map(AsRef::as_ref).collect(),
        targets: &observed.targets,
        write_failures: &failures,
        orphaned_documents: &observed.orphans,
        signing_key: Some(&context.signing_key),
        now,
    });
    let plan_time = planning.elapsed();
    let redecided = remembered.planner.redecided();
    context.namespace_state(namespace, |state| state.remembered = remembered);
    Planned {
        observed,
        plan,
        precise_now,
        observe_time,
        plan_time,
        redecided,
    }
}

/// Carries out the plan's writes, keeps the refused ones for the next plan, and waits
/// until the caches show the stored ones: the next sync (changes arriving meanwhile fold
/// into it) then plans from caches that hold these writes.
async fn write_targets(
    context: &Context,
    namespace: &str,
    versions: &HashMap<TargetRef, Versions>,
    writes: Vec<Write>,
) -> Result<()> {
    let written: Vec<TargetRef> = writes.iter().map(apply::write_target).cloned().collect();
    let writing = Instant::now();
    let outcomes = apply::apply_all(
        &context.client,
        &context.leadership,
        namespace,
        versions,
        writes,
    )
    .await?;
    if !written.is_empty() {
        info!(
            namespace,
            writes = written.len(),
            elapsed_ms = writing.elapsed().as_millis() as u64,
            "targets written"
        );
    }
    for outcome in &outcomes {
        if let apply::Outcome::Refused(target, reason) = outcome {
            warn!(namespace, %target, reason, "write refused");
        }
    }
    let echoes = context.namespace_state(namespace, |state| {
        state.note_write_outcomes(written, outcomes)
    });
    context
        .caches
        .wait_for_echoes(namespace, echoes, ECHO_WAIT)
        .await;
    Ok(())
}

/// Writes each incident's status where it changed; a decision stored (or unchanged) is
/// then counted and announced.
async fn publish_decisions(
    context: &Context,
    namespace: &str,
    incidents: &[Arc<MailIncident>],
    decisions: Vec<plan::Decision>,
) -> Result<()> {
    for (incident, decision) in incidents.iter().zip(decisions) {
        if incident.status.as_ref() != Some(&decision.status) {
            context.leadership.fence()?;
            if !write_status(&context.client, incident, &decision.status).await? {
                // Decided on an older view of the incident: the sync its change brings
                // decides again, and only a stored decision is counted and announced.
                continue;
            }
        }
        record(context, incident, &decision);
        let drift_notes =
            context.namespace_state(namespace, |state| state.new_drifts(&decision.agent_drifts));
        for note in decision.events.iter().chain(&drift_notes) {
            context.leadership.fence()?;
            context.events.publish(incident.as_ref(), note).await;
        }
    }
    Ok(())
}

/// When to sync again with nothing changed: right at the plan's next start or end, from
/// the precise clock, and at least every [`RESYNC_PERIOD`].
fn next_sync(wake_at: Option<Timestamp>, now: Timestamp) -> Action {
    let until_wake = wake_at.map(|at| {
        at.duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(50))
    });
    Action::requeue(until_wake.map_or(RESYNC_PERIOD, |wait| wait.min(RESYNC_PERIOD)))
}

/// Updates the metrics an incident's decision affects.
fn record(context: &Context, incident: &MailIncident, decision: &plan::Decision) {
    // A sync that outlived this replica's claim leaves the incident series to the leader
    // (Metrics::set_leading forgot them here).
    if !context.leadership.holds() {
        return;
    }
    let metrics = &context.metrics;
    let namespace = incident.namespace().unwrap_or_default();
    let name = incident.name_any();
    for restored in &decision.restored {
        metrics
            .restored
            .with_label_values(&[restored.as_str()])
            .inc();
    }
    if incident.metadata.deletion_timestamp.is_some() {
        // The finalizer goes once this sync succeeds: the incident's series go with it.
        metrics.forget_incident(&namespace, &name);
        context.namespace_state(&namespace, |state| state.forget_incident(&name));
        return;
    }
    let created = incident
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|at| at.0.as_second());
    metrics.record_decision(&namespace, &name, created, decision);

    // Time from a generation's first sight to every target applying it.
    let generation = incident.metadata.generation.unwrap_or_default();
    let since = context.namespace_state(&namespace, |state| {
        state.generation_first_seen(&name, generation, Instant::now())
    });
    if decision.newly_applied {
        metrics
            .apply_duration
            .observe(since.elapsed().as_secs_f64());
    }
}

/// Server-side apply of the whole status. The status is the controller's alone, so
/// `force` takes it back from anyone who wrote to it by hand. False when the incident
/// changed since the caches showed it, so the status was not stored.
async fn write_status(
    client: &Client,
    incident: &MailIncident,
    status: &MailIncidentStatus,
) -> Result<bool> {
    let api: Api<MailIncident> =
        Api::namespaced(client.clone(), &incident.namespace().unwrap_or_default());
    // Conditional on the incident as seen: a status decided on an older view (a leader
    // frozen mid-sync) never replaces a newer one; the newer view syncs again anyway.
    let patch = serde_json::json!({
        "apiVersion": MailIncident::api_version(&()),
        "kind": MailIncident::kind(&()),
        "metadata": {"resourceVersion": incident.metadata.resource_version},
        "status": status,
    });
    match api
        .patch_status(
            &incident.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        // Deleted since the cache saw it: nothing left to describe.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        // Changed since: the change brings another sync.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(source) => Err(Error::Api {
            call: format!(
                "apply the status of MailIncident {}/{}",
                incident.namespace().unwrap_or_default(),
                incident.name_any()
            ),
            source,
        }),
    }
}

/// Retries a failed sync of a namespace after a delay of its own, growing while it keeps
/// failing: one namespace's trouble neither floods the API server nor delays the others.
fn error_policy(key: Arc<Namespace>, error: &Error, context: Arc<Context>) -> Action {
    let namespace = triggers::name_of(&key);
    if matches!(error, Error::NotLeader) {
        info!(
            namespace,
            "sync stopped: this replica's lease claim ran out; writes stop"
        );
        return Action::await_change();
    }
    context
        .metrics
        .reconcile_errors
        .with_label_values(&[error.category()])
        .inc();
    let delay = context.namespace_state(&namespace, NamespaceState::next_retry_delay);
    warn!(namespace, category = error.category(), %error, retry_in = ?delay, "sync failed; retrying");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::WorkloadKind;
    use fixtures::{
        APPLY_PATCH, Exchange, FilledCaches, NAMESPACE, config_map_path, incident, incident_path,
        serve,
    };
    use serde_json::json;

    /// What a reconcile shares, over the mock API server and caches filled by hand, leading.
    fn context(client: Client, filled: &FilledCaches) -> Context {
        Context {
            events: Events::new(client.clone(), "me".into()),
            client,
            metrics: Metrics::default(),
            caches: filled.caches.clone(),
            leadership: Leadership::fixed(true),
            signing_key: SigningKey::new(&[7; 32]).expect("a long enough key"),
            namespace_states: Mutex::default(),
        }
    }

    fn mx() -> TargetRef {
        TargetRef {
            kind: WorkloadKind::Deployment,
            name: "mx".into(),
        }
    }

    #[tokio::test]
    async fn a_refused_write_is_kept_for_the_next_plan_until_its_target_is_written() {
        let report = config_map_path("mail-mode-deployment-mx-report");
        let (client, server) = serve(vec![
            Exchange::delete(&report).fail(422, "Invalid", "the report is invalid", &[]),
            Exchange::delete(&report)
                .body(json!({"preconditions": {"resourceVersion": "9"}}))
                .not_found(),
        ]);
        let filled = FilledCaches::new();
        let context = context(client.clone(), &filled);
        let versions: HashMap<TargetRef, Versions> = [(
            mx(),
            Versions {
                report: Some("9".into()),
                ..Versions::default()
            },
        )]
        .into();
        let delete = || vec![Write::DeleteReport { target: mx() }];
        let failures = |context: &Context| {
            context.namespace_state(NAMESPACE, |state| state.write_failures.clone())
        };

        write_targets(&context, NAMESPACE, &versions, delete())
            .await
            .expect("a refusal fails the target, not the sync");
        assert_eq!(
            failures(&context),
            [(mx(), "the report is invalid".to_string())].into()
        );
        write_targets(&context, NAMESPACE, &versions, delete())
            .await
            .expect("gone is written");
        assert!(failures(&context).is_empty());
        drop(context);
        server.verify(client).await;
    }

    fn status() -> MailIncidentStatus {
        MailIncidentStatus {
            observed_generation: Some(1),
            ..MailIncidentStatus::default()
        }
    }

    fn status_write() -> Exchange {
        Exchange::patch(format!("{}/status", incident_path("outage")))
            .query("fieldManager", FIELD_MANAGER)
            .query("force", "true")
            .content_type(APPLY_PATCH)
    }

    #[tokio::test]
    async fn the_status_is_applied_whole_with_force_as_the_incident_was_seen() {
        let (client, server) = serve(vec![
            status_write()
                .check(|body| {
                    assert_eq!(
                        body,
                        &json!({"apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
                                "metadata": {"resourceVersion": "7"},
                                "status": {"observedGeneration": 1}})
                    );
                })
                .ok(serde_json::to_value(incident("outage", "8", &[])).unwrap()),
        ]);
        let stored = write_status(&client, &incident("outage", "7", &[]), &status())
            .await
            .expect("the status is written");
        server.verify(client).await;
        assert!(stored);
    }

    #[tokio::test]
    async fn a_status_decided_on_an_older_view_is_not_stored() {
        let (client, server) = serve(vec![
            status_write()
                .body(json!({"metadata": {"resourceVersion": "7"}}))
                .conflict(),
        ]);
        let stored = write_status(&client, &incident("outage", "7", &[]), &status())
            .await
            .expect("a stale status is no error");
        server.verify(client).await;
        assert!(!stored, "the sync the change brings decides again");
    }

    #[tokio::test]
    async fn the_status_of_a_deleted_incident_needs_no_writing() {
        let (client, server) = serve(vec![status_write().not_found()]);
        let stored = write_status(&client, &incident("outage", "7", &[]), &status())
            .await
            .expect("gone is done");
        server.verify(client).await;
        assert!(stored);
    }

    #[tokio::test]
    async fn a_refused_status_fails_the_sync_and_names_the_call() {
        let (client, server) = serve(vec![status_write().fail(
            422,
            "Invalid",
            "MailIncident.mailops.dev \"outage\" is invalid",
            &[],
        )]);
        let result = write_status(&client, &incident("outage", "7", &[]), &status()).await;
        server.verify(client).await;
        match result {
            Err(Error::Api { call, .. }) => {
                assert_eq!(call, "apply the status of MailIncident mail/outage")
            }
            other => panic!("expected the failed call, got {other:?}"),
        }
    }

    #[test]
    fn the_next_sync_comes_at_the_plans_next_change_and_within_the_resync_period() {
        let now: Timestamp = "2026-12-06T10:00:00.25Z".parse().expect("a timestamp");
        let later = |seconds: i64| {
            Some(
                now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                    .expect("in range"),
            )
        };
        assert_eq!(next_sync(None, now), Action::requeue(RESYNC_PERIOD));
        assert_eq!(
            next_sync(later(10), now),
            Action::requeue(Duration::from_secs(10))
        );
        assert_eq!(
            next_sync(later(-5), now),
            Action::requeue(Duration::from_millis(50)),
            "a change already due comes at once, never in a busy loop"
        );
        assert_eq!(next_sync(later(3600), now), Action::requeue(RESYNC_PERIOD));
    }

    #[tokio::test]
    async fn a_panic_in_a_reconcile_becomes_an_error_of_its_own_category() {
        let result: Result<Action> = guard_panics(async {
            let limits: Vec<u32> = vec![];
            panic!("no limit in {limits:?}")
        })
        .await;
        let Err(error) = result else {
            panic!("a panicking reconcile must fail, got {result:?}")
        };
        assert_eq!(error.category(), "panic");
        assert_eq!(error.to_string(), "reconcile panicked: no limit in []");
    }

    #[tokio::test]
    async fn a_panic_with_a_static_message_keeps_it() {
        let result: Result<()> = guard_panics(async { panic!("static message") }).await;
        assert!(matches!(result, Err(Error::Panic(m)) if m == "static message"));
    }

    #[tokio::test]
    async fn results_pass_through_unchanged() {
        let ok = guard_panics(async { Ok(Action::await_change()) }).await;
        assert_eq!(ok.ok(), Some(Action::await_change()));
        let failed: Result<()> = guard_panics(async { Err(Error::NotLeader) }).await;
        assert!(matches!(failed, Err(Error::NotLeader)));
    }
}
