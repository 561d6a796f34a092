//! The Kubernetes side of the controller: watches, the reconcile loop, writes, status,
//! events and the finalizer. Decisions are made in [`crate::plan`]; this module observes,
//! asks the plan, and carries it out.
//!
//! A reconcile of any incident syncs its whole namespace: precedence between incidents
//! makes one incident's change another's business. Syncs of one namespace are serialized;
//! different namespaces proceed concurrently, up to `--concurrency`.

mod apply;
mod cache;
mod leader;
mod observe;

use crate::{
    Error, Result,
    api::{MailIncident, MailIncidentStatus, mode_document},
    http::{self, Readiness},
    metrics::Metrics,
    plan::{self, TargetRef},
    shutdown,
    telemetry::LogFormat,
};
use cache::Caches;
use futures::{FutureExt, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Pod},
    },
    jiff::{Timestamp, TimestampRound, Unit},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{self, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use std::{
    any::Any,
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

/// The field manager of every write the controller makes. GitOps tools can be told to
/// ignore the fields this manager owns.
pub const FIELD_MANAGER: &str = "mail-incident-operator";

/// The finalizer that lets the controller return an incident's targets to normal service
/// (or to the next incident's mode) before the incident disappears.
pub const FINALIZER: &str = "mailops.dev/restore-targets";

/// How long in-flight reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a failed reconcile is retried.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

/// Command-line settings of `mail-incident-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Namespaces synced at the same time, at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,

    /// Name of this instance in events and in the leader Lease (the pod name in a
    /// cluster; default: host name and process id). Must differ between replicas.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// The Lease replicas hold to lead: only the holder watches and writes.
    #[arg(long, env = "LEASE_NAME", default_value = "mail-incident-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (in a cluster, the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mail-incident-operator")]
    pub lease_namespace: String,

    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
}

/// What every reconcile shares.
struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    incidents: Store<MailIncident>,
    caches: Caches,
    /// Serializes the syncs of each namespace.
    namespace_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Writes the API server refused, per namespace and target, until they succeed.
    write_failures: Mutex<HashMap<String, BTreeMap<TargetRef, String>>>,
    /// When each incident generation was first seen, to time its delivery.
    first_seen: Mutex<HashMap<(String, String), (i64, Instant)>>,
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

    // Stand by until this replica holds the Lease; only the leader watches and writes.
    let lease_duration = Duration::from_secs(settings.lease_seconds.max(3));
    let elector = leader::LeaderElector::new(
        Api::namespaced(client.clone(), &settings.lease_namespace),
        settings.lease_name.clone(),
        identity.clone(),
        lease_duration,
        lease_duration / 3,
    );
    readiness.set_ready();
    let leadership = tokio::select! {
        leadership = elector.acquire() => leadership?,
        () = stop.clone() => {
            http.stop().await;
            return Ok(());
        }
    };
    metrics.leader.set(1);
    info!(lease = %settings.lease_name, "leading");

    let incidents: Api<MailIncident> = scoped(&client, namespace);
    let controller = Controller::new(incidents, watcher::Config::default().any_semantic())
        .with_config(
            // No debounce: it would delay every mode change; bursts of changes are folded
            // anyway, since a queued reconcile is not queued twice and syncs of one
            // namespace run one at a time.
            controller::Config::default().concurrency(settings.concurrency),
        );
    let incident_store = controller.store();
    let (deployments, deployment_changes) =
        cache::watch::<Deployment>(scoped(&client, namespace), watcher::Config::default());
    let (statefulsets, statefulset_changes) =
        cache::watch::<StatefulSet>(scoped(&client, namespace), watcher::Config::default());
    let (pods, pod_changes) = cache::watch::<PartialObjectMeta<Pod>>(
        scoped(&client, namespace),
        watcher::Config::default(),
    );
    let (config_maps, config_map_changes) = cache::watch::<ConfigMap>(
        scoped(&client, namespace),
        watcher::Config::default().labels(&format!(
            "{}={}",
            mode_document::MANAGED_BY_LABEL,
            mode_document::MANAGED_BY
        )),
    );
    let caches = Caches::new(deployments, statefulsets, pods, config_maps);
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(identity),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: metrics.clone(),
        incidents: incident_store.clone(),
        caches: caches.clone(),
        namespace_locks: Mutex::default(),
        write_failures: Mutex::default(),
        first_seen: Mutex::default(),
    });

    tokio::spawn(async move {
        if caches.wait_until_ready().await.is_ok() {
            info!("caches filled");
        }
    });
    let controller = controller
        .watches_stream(deployment_changes, incidents_of_namespace(&incident_store))
        .watches_stream(statefulset_changes, incidents_of_namespace(&incident_store))
        .watches_stream(pod_changes, incidents_of_namespace(&incident_store))
        .watches_stream(config_map_changes, incidents_of_namespace(&incident_store))
        .graceful_shutdown_on(stop.clone())
        .graceful_shutdown_on(leadership.lost())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
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
    metrics.leader.set(0);
    // Lost leadership means another replica may already be writing: exit at once and
    // let the restart stand by again.
    let lost = leadership.lost().now_or_never().is_some() && stop.clone().now_or_never().is_none();
    if !lost {
        leadership.release().await;
    }
    info!("controller stopped; shutting down");
    http.stop().await;
    if lost {
        return Err(Error::LeadershipLost);
    }
    Ok(())
}

/// The host name and process id: unique per replica when no pod name is given.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// An `Api` over one namespace, or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Maps a changed object to every incident of its namespace: each sync covers the whole
/// namespace, and only the plan can tell which incidents a change concerns.
fn incidents_of_namespace<K: Resource>(
    incidents: &Store<MailIncident>,
) -> impl Fn(K) -> Vec<ObjectRef<MailIncident>> + Send + Sync + 'static {
    let incidents = incidents.clone();
    move |object| {
        let namespace = object.namespace();
        incidents
            .state_filter(|incident| incident.namespace() == namespace)
            .iter()
            .map(|incident| ObjectRef::from_obj(incident.as_ref()))
            .collect()
    }
}

async fn reconcile(incident: Arc<MailIncident>, context: Arc<Context>) -> Result<Action> {
    let timer = context
        .metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let result = guard_panics(reconcile_incident(incident, &context)).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    context
        .metrics
        .reconciles
        .with_label_values(&[outcome])
        .inc();
    result
}

/// Turns a panic inside `work` into [`Error::Panic`]. Uncaught, a panic in one reconcile
/// unwinds through the controller's stream and stops the operator, and after the restart
/// the same object stops it again; caught, it fails that reconcile alone, which
/// error_policy counts and retries with the others still served.
async fn guard_panics<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    // Unwind safety: a reconcile shares metrics (atomics), caches (locks that do not
    // poison) and the Context's std mutexes, which are held only around map updates that
    // cannot panic, so a panic leaves none of them poisoned or half-written.
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

async fn reconcile_incident(incident: Arc<MailIncident>, context: &Context) -> Result<Action> {
    let namespace = incident.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "MailIncident",
        name: incident.name_any(),
    })?;
    debug!(%namespace, incident = %incident.name_any(), generation = incident.metadata.generation, "reconciling");
    let api: Api<MailIncident> = Api::namespaced(context.client.clone(), &namespace);
    // Both a live and a deleted incident sync the namespace; the finalizer is removed once
    // the sync that no longer counts the deleted one has gone through.
    finalizer(&api, FINALIZER, incident, |_event| {
        sync_namespace(context, &namespace)
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    })
}

/// Plans the namespace and carries the plan out: target writes first, then statuses and
/// events (which describe what the caches show, so they follow the writes' echoes).
async fn sync_namespace(context: &Context, namespace: &str) -> Result<Action> {
    let lock = context
        .namespace_locks
        .lock()
        .expect("lock poisoned")
        .entry(namespace.to_string())
        .or_default()
        .clone();
    let _serialized = lock.lock().await;
    context.caches.wait_until_ready().await?;

    let incidents = context
        .incidents
        .state_filter(|i| i.namespace().as_deref() == Some(namespace));
    let targets = observe::targets(&context.caches, namespace);
    let failures = context
        .write_failures
        .lock()
        .expect("lock poisoned")
        .get(namespace)
        .cloned()
        .unwrap_or_default();
    let now = Timestamp::now()
        .round(TimestampRound::new().smallest(Unit::Second))
        .expect("rounding to seconds stays in range");
    let plan = plan::plan(&plan::Namespace {
        name: namespace,
        incidents: incidents.iter().map(AsRef::as_ref).collect(),
        targets: &targets,
        write_failures: &failures,
        now,
    });

    let written: Vec<TargetRef> = plan.writes.iter().map(write_target).cloned().collect();
    let started = Instant::now();
    let outcomes = apply::apply_all(&context.client, namespace, plan.writes).await?;
    if !written.is_empty() {
        info!(
            namespace,
            writes = written.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "targets written"
        );
    }
    {
        let mut all = context.write_failures.lock().expect("lock poisoned");
        let failures = all.entry(namespace.to_string()).or_default();
        for target in written {
            failures.remove(&target);
        }
        for outcome in outcomes {
            if let apply::Outcome::Refused(target, reason) = outcome {
                warn!(namespace, %target, reason, "write refused");
                failures.insert(target, reason);
            }
        }
    }

    for (incident, decision) in incidents.iter().zip(plan.incidents) {
        record(context, incident, &decision);
        if incident.status.as_ref() != Some(&decision.status) {
            write_status(&context.client, incident, &decision.status).await?;
        }
        publish(context, incident, &decision.events).await;
    }
    Ok(match plan.wake_at {
        Some(at) => Action::requeue(Duration::from_secs(
            (at.as_second() - now.as_second()).max(1) as u64,
        )),
        None => Action::await_change(),
    })
}

fn write_target(write: &plan::Write) -> &TargetRef {
    match write {
        plan::Write::PutDocument { target, .. }
        | plan::Write::DeleteDocument { target }
        | plan::Write::SetRestartEnv { target, .. }
        | plan::Write::ClearRestartEnv { target } => target,
    }
}

/// Updates the metrics an incident's decision affects.
fn record(context: &Context, incident: &MailIncident, decision: &plan::Decision) {
    let metrics = &context.metrics;
    let namespace = incident.namespace().unwrap_or_default();
    let name = incident.name_any();
    if let Some(t) = &decision.transition {
        let from = t
            .from
            .map_or_else(|| "None".to_string(), |m| format!("{m:?}"));
        metrics
            .transitions
            .with_label_values(&[from.as_str(), &format!("{:?}", t.to)])
            .inc();
    }
    let key = (namespace, name);
    if incident.metadata.deletion_timestamp.is_some() {
        // The finalizer goes once this sync succeeds: the incident's series go with it.
        metrics.forget_incident(&key.0, &key.1);
        context
            .first_seen
            .lock()
            .expect("lock poisoned")
            .remove(&key);
        return;
    }
    metrics.observe_incident(&key.0, &key.1, &decision.status);
    if decision.escalations > 0 {
        metrics
            .escalations
            .with_label_values(&[key.0.as_str(), key.1.as_str()])
            .inc_by(decision.escalations.into());
    }

    // Time from a generation's first sight to every target applying it.
    let generation = incident.metadata.generation.unwrap_or_default();
    let mut first_seen = context.first_seen.lock().expect("lock poisoned");
    let since = first_seen
        .entry(key.clone())
        .and_modify(|(g, at)| {
            if *g != generation {
                *g = generation;
                *at = Instant::now();
            }
        })
        .or_insert((generation, Instant::now()))
        .1;
    let applied = decision.status.conditions.iter().any(|c| {
        c.type_ == "Ready"
            && c.status == "True"
            && c.reason == "Applied"
            && c.observed_generation == Some(generation)
    });
    if applied && decision.events.iter().any(|e| e.reason == "Applied") {
        metrics
            .apply_duration
            .observe(since.elapsed().as_secs_f64());
    }
}

async fn publish(context: &Context, incident: &MailIncident, notes: &[plan::Note]) {
    let reference = incident.object_ref(&());
    for note in notes {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(truncate(&note.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            // The status already carries the facts; a lost event is not worth a retry.
            warn!(%error, incident = %incident.name_any(), reason = note.reason, "cannot record event");
        }
    }
}

/// Server-side apply of the whole status. The status is the controller's alone, so
/// `force` takes it back from anyone who wrote to it by hand.
async fn write_status(
    client: &Client,
    incident: &MailIncident,
    status: &MailIncidentStatus,
) -> Result<()> {
    let api: Api<MailIncident> =
        Api::namespaced(client.clone(), &incident.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": MailIncident::api_version(&()),
        "kind": MailIncident::kind(&()),
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
        Ok(_) => Ok(()),
        // Deleted since the cache saw it: nothing left to describe.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn error_policy(incident: Arc<MailIncident>, error: &Error, context: Arc<Context>) -> Action {
    context
        .metrics
        .reconcile_errors
        .with_label_values(&[error.category()])
        .inc();
    warn!(incident = %incident.name_any(), category = error.category(), %error, "reconcile error; retrying");
    Action::requeue(RETRY_AFTER_ERROR)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let failed: Result<()> = guard_panics(async { Err(Error::LeadershipLost) }).await;
        assert!(matches!(failed, Err(Error::LeadershipLost)));
    }
}
