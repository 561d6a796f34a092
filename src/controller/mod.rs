//! The Kubernetes side of the controller: watches, the reconcile loop, status writes and
//! events. Decisions are made in [`crate::plan`]; this module only observes and applies.

mod workloads;

use crate::{
    Error, Result,
    api::{MailIncident, MailIncidentStatus},
    http::{self, Readiness},
    metrics::Metrics,
    plan,
    telemetry::LogFormat,
};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::jiff::{Timestamp, TimestampRound, Unit};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing::{info, warn};
use workloads::WorkloadCache;

/// The field manager of every write the controller makes. GitOps tools can be told to
/// ignore the fields this manager owns.
pub const FIELD_MANAGER: &str = "mail-incident-operator";

/// How long in-flight reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a failed reconcile is retried.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

/// Command-line settings of `mail-incident-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Incidents reconciled at the same time, at most.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,

    /// Log line format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t)]
    pub log_format: LogFormat,

    /// Name of this instance in events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
}

/// What every reconcile shares.
struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    workloads: WorkloadCache,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = http::serve(settings.listen, metrics.clone(), readiness.clone(), async {
        http_stopped.await.ok();
    })
    .await?;
    info!(listen = %settings.listen, namespace = settings.namespace.as_deref().unwrap_or("(all)"), "starting");

    let incidents: Api<MailIncident> = scoped(&client, settings.namespace.as_deref());
    let controller = Controller::new(incidents, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let incident_store = controller.store();
    let namespace = settings.namespace.as_deref();
    let (deployments, deployment_changes) =
        workloads::watch::<Deployment>(scoped(&client, namespace));
    let (statefulsets, statefulset_changes) =
        workloads::watch::<StatefulSet>(scoped(&client, namespace));
    let workloads = WorkloadCache::new(deployments, statefulsets);
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: settings.instance.clone(),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        workloads: workloads.clone(),
    });

    tokio::spawn(async move {
        if workloads.wait_until_ready().await.is_ok() {
            readiness.set_ready();
            info!("workload caches filled; ready");
        }
    });
    let stop = shutdown_signal().shared();
    let controller = controller
        .watches_stream(
            deployment_changes,
            workloads::incidents_of_namespace(incident_store.clone()),
        )
        .watches_stream(
            statefulset_changes,
            workloads::incidents_of_namespace(incident_store),
        )
        .graceful_shutdown_on(stop.clone())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        });
    let deadline = async {
        stop.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = controller => {},
        () = deadline => warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; exiting anyway"),
    }
    info!("controller stopped; shutting down");
    stop_http.send(()).ok();
    http.await.ok();
    Ok(())
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

async fn reconcile(incident: Arc<MailIncident>, context: Arc<Context>) -> Result<Action> {
    let timer = context
        .metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let result = reconcile_incident(&incident, &context).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    context
        .metrics
        .reconciles
        .with_label_values(&[outcome])
        .inc();
    result
}

async fn reconcile_incident(incident: &MailIncident, context: &Context) -> Result<Action> {
    let name = incident.name_any();
    let namespace = incident.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "MailIncident",
        name: name.clone(),
    })?;
    context.workloads.wait_until_ready().await?;
    let workloads = context.workloads.in_namespace(&namespace);
    let now = Timestamp::now()
        .round(TimestampRound::new().smallest(Unit::Second))
        .expect("rounding to seconds stays in range");
    let decision = plan::decide(incident, &workloads, now);

    if incident.status.as_ref() != Some(&decision.status) {
        write_status(&context.client, &namespace, &name, &decision.status).await?;
    }
    let reference = incident.object_ref(&());
    for note in &decision.events {
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
            // Status already carries the facts; a lost event is not worth a retry loop.
            warn!(%error, incident = %name, reason = note.reason, "cannot record event");
        }
    }
    Ok(match decision.wake_at {
        Some(at) => Action::requeue(Duration::from_secs(
            (at.as_second() - now.as_second()).max(1) as u64,
        )),
        None => Action::await_change(),
    })
}

/// Server-side apply of the whole status. The status is ours alone, so `force` takes it
/// back from anyone who wrote to it by hand.
async fn write_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &MailIncidentStatus,
) -> Result<()> {
    let api: Api<MailIncident> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": MailIncident::api_version(&()),
        "kind": MailIncident::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
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

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received; shutting down"),
    }
}
