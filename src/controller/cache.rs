//! The controller's caches, filled by watches: the workloads incidents can target, their
//! pods (metadata only: only existence and labels matter), and the operator's own mode
//! documents and agent reports. Workloads and ConfigMaps are held in the slim shapes of
//! [`super::cached`]; incidents and pods are stripped of their managedFields, which
//! would otherwise be most of their memory.

use super::{
    cached::{CachedConfigMap, CachedDeployment, CachedStatefulSet, CachedWorkload},
    versions::{Echo, EchoKind},
};
use crate::{
    Error, Result,
    api::{
        MailIncident,
        mode_document::{MANAGED_BY, MANAGED_BY_LABEL},
    },
    http::Readiness,
    plan::WorkloadKind,
    retry::WatchBackoff,
};
use futures::{
    FutureExt, Stream, StreamExt, future,
    future::{BoxFuture, Shared},
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use serde::de::DeserializeOwned;
use std::{
    collections::BTreeMap,
    fmt::Debug,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};
use tracing::{debug, error, info, warn};

/// kubectl's copy of the whole last applied manifest: large, and never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Objects per page of a watch's initial listing.
const LIST_PAGE_SIZE: u32 = 100;

/// A stream of changed objects that keeps a cache filled as it is polled. Watch errors
/// stop at the cache: its watch retries within seconds on its own, and what waits for
/// changes sees only objects, so one watch's trouble never delays another's triggers.
pub type Changes<K> = Pin<Box<dyn Stream<Item = K> + Send>>;

/// How long a watch may keep failing (it retries within seconds) before the operator
/// reports itself unready, and how often that is checked.
const WATCH_FAILING_UNREADY: Duration = Duration::from_secs(10);
const WATCH_HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Every cache the plan reads; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub incidents: Store<MailIncident>,
    pub deployments: Store<CachedDeployment>,
    pub statefulsets: Store<CachedStatefulSet>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Only the operator's ConfigMaps (mode documents and reports), by label.
    pub config_maps: Store<CachedConfigMap>,
    /// Marks every change of any cache, once cached.
    changed: tokio::sync::watch::Receiver<()>,
    /// Resolves once every cache holds a complete first listing (or names the one that
    /// never will). Shared because kube's `Store::wait_until_ready` wakes only the last
    /// of several tasks waiting at once: a reconcile waiting beside another waiter could
    /// sleep forever.
    ready: Shared<BoxFuture<'static, Result<(), &'static str>>>,
}

impl Caches {
    pub fn new(
        incidents: Store<MailIncident>,
        deployments: Store<CachedDeployment>,
        statefulsets: Store<CachedStatefulSet>,
        pods: Store<PartialObjectMeta<Pod>>,
        config_maps: Store<CachedConfigMap>,
        changed: tokio::sync::watch::Receiver<()>,
    ) -> Self {
        let ready = {
            let (incidents, deployments, statefulsets, pods, config_maps) = (
                incidents.clone(),
                deployments.clone(),
                statefulsets.clone(),
                pods.clone(),
                config_maps.clone(),
            );
            async move {
                let ready =
                    |r: Result<(), reflector::store::WriterDropped>, what| r.map_err(|_| what);
                ready(incidents.wait_until_ready().await, "mailincidents")?;
                ready(deployments.wait_until_ready().await, "deployments")?;
                ready(statefulsets.wait_until_ready().await, "statefulsets")?;
                ready(pods.wait_until_ready().await, "pods")?;
                ready(config_maps.wait_until_ready().await, "configmaps")
            }
            .boxed()
            .shared()
        };
        Self {
            incidents,
            deployments,
            statefulsets,
            pods,
            config_maps,
            changed,
            ready,
        }
    }

    /// Waits, at most `longest`, until the caches hold the changes `echoes` made in
    /// `namespace`. A sync planned before the echoes of the last one's writes arrive
    /// would write them all again (each a request refused as stale, a thousand of them
    /// after a mode change, while the API server is busiest).
    pub async fn wait_for_echoes(&self, namespace: &str, mut echoes: Vec<Echo>, longest: Duration) {
        let mut changed = self.changed.clone();
        changed.mark_unchanged();
        let waiting = async {
            loop {
                echoes.retain(|echo| {
                    let cached = self.cached_version(namespace, echo);
                    cached == echo.before && cached != echo.after
                });
                if echoes.is_empty() || changed.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(longest, waiting).await.is_err() {
            debug!(
                namespace,
                "writes not all echoed in the caches yet; planning anyway"
            );
        }
    }

    /// The resource version of the object `echo` is of, as cached (none: absent).
    fn cached_version(&self, namespace: &str, echo: &Echo) -> Option<String> {
        fn version_in<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<String>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let key = ObjectRef::new(name).within(namespace);
            store.get(&key)?.meta().resource_version.clone()
        }
        match echo.kind {
            EchoKind::ConfigMap => version_in(&self.config_maps, namespace, &echo.name),
            EchoKind::Workload(WorkloadKind::Deployment) => {
                version_in(&self.deployments, namespace, &echo.name)
            }
            EchoKind::Workload(WorkloadKind::StatefulSet) => {
                version_in(&self.statefulsets, namespace, &echo.name)
            }
        }
    }

    /// Waits until every cache holds a complete first listing. Any number of tasks may wait.
    pub async fn wait_until_ready(&self) -> Result<()> {
        self.ready.clone().await.map_err(Error::CacheNeverReady)
    }
}

/// The changes of every cache, as they come.
pub struct AllChanges {
    pub incidents: Changes<MailIncident>,
    pub deployments: Changes<CachedDeployment>,
    pub statefulsets: Changes<CachedStatefulSet>,
    pub pods: Changes<PartialObjectMeta<Pod>>,
    pub config_maps: Changes<CachedConfigMap>,
}

/// The caches with what fills them: the changes, which must be polled, and the watches'
/// health.
pub struct Started {
    pub caches: Caches,
    pub changes: AllChanges,
    pub health: WatchHealth,
}

/// Starts every watch the plan reads, over `namespace` or all of them: incidents,
/// workloads, pods, and only the ConfigMaps labelled as the operator's own.
pub fn start(client: &Client, namespace: Option<&str>) -> Started {
    // Marked by every cache once it holds a change, for a sync waiting for its writes' echoes.
    let (cached, changed) = tokio::sync::watch::channel(());
    let health = WatchHealth::default();
    let every = watcher::Config::default;
    let (incidents, incident_changes) = watch::<MailIncident>(
        scoped(client, namespace),
        every(),
        cached.clone(),
        health.clone(),
    );
    let (deployments, deployment_changes) = watch::<CachedDeployment>(
        scoped(client, namespace),
        every(),
        cached.clone(),
        health.clone(),
    );
    let (statefulsets, statefulset_changes) = watch::<CachedStatefulSet>(
        scoped(client, namespace),
        every(),
        cached.clone(),
        health.clone(),
    );
    let (pods, pod_changes) = watch::<PartialObjectMeta<Pod>>(
        scoped(client, namespace),
        every(),
        cached.clone(),
        health.clone(),
    );
    let (config_maps, config_map_changes) = watch::<CachedConfigMap>(
        scoped(client, namespace),
        every().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        cached,
        health.clone(),
    );
    Started {
        caches: Caches::new(
            incidents,
            deployments,
            statefulsets,
            pods,
            config_maps,
            changed,
        ),
        changes: AllChanges {
            incidents: incident_changes,
            deployments: deployment_changes,
            statefulsets: statefulset_changes,
            pods: pod_changes,
            config_maps: config_map_changes,
        },
        health,
    }
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

/// Keeps `readiness` true once the caches are filled and while no watch keeps failing
/// (leading or standing by: a standby is a replica that can take over at once).
pub async fn follow_readiness(caches: Caches, health: WatchHealth, readiness: Readiness) {
    if caches.wait_until_ready().await.is_err() {
        return;
    }
    info!("caches filled");
    let mut checks = tokio::time::interval(WATCH_HEALTH_CHECK);
    let mut was_failing = false;
    loop {
        checks.tick().await;
        let failing = health.failing_for(WATCH_FAILING_UNREADY);
        if !failing.is_empty() && !was_failing {
            let watches: Vec<String> = failing
                .iter()
                .map(|(kind, error)| format!("{kind}: {error}"))
                .collect();
            error!(
                watches = watches.join("; "),
                "not ready: watches keep failing, so the caches no longer follow the cluster (is the MailIncident CRD installed, and is the operator allowed to watch?)"
            );
        } else if failing.is_empty() && was_failing {
            info!("ready: every watch works again");
        }
        was_failing = !failing.is_empty();
        readiness.set(!was_failing);
    }
}

/// Starts a watch of `K` filling a cache: the cache, and the stream of changes that must
/// be polled to fill it. `changed` is marked after each event is cached (a relist's end
/// included), for syncs waiting for their writes' echoes.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: tokio::sync::watch::Sender<()>,
    health: WatchHealth,
) -> (Store<K>, Changes<K>)
where
    K: Resource + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    // Small pages, so a listing of thousands of workloads is never in memory at once. A
    // list served from the API server's watch cache (`resourceVersion=0`, kube's "any"
    // semantic) ignores the page size and comes as one response: at 5000 targets that
    // one response was most of the operator's peak memory. A consistent list is paged.
    let changes = watcher(api, config.page_size(LIST_PAGE_SIZE))
        .backoff(WatchBackoff::new())
        .modify(|object| {
            object.annotations_mut().remove(LAST_APPLIED);
            object.slim();
        })
        .reflect(writer)
        .inspect(move |event| {
            changed.send_replace(());
            // Any event, an empty relist's included, says the watch works.
            match event {
                Ok(_) => health.succeeded(&kind),
                Err(error) => health.failed(&kind, error.to_string()),
            }
        })
        .touched_objects()
        .filter_map(|change| {
            future::ready(change.map_err(|error| {
                // A 410 Expired after an API server restart is routine: the watch relists.
                // One that keeps failing makes the operator unready (WatchHealth).
                warn!(kind = K::kind(&K::DynamicType::default()).as_ref(), %error, "watch failed; retrying");
            })
            .ok())
        });
    (store, Box::pin(changes))
}

/// Since when each watch has been failing, and with what error: a watch that keeps
/// failing (its resource gone, say the CRD deleted, or access to it revoked) leaves its
/// cache frozen, and the operator must not claim to be ready on it.
#[derive(Clone, Default)]
pub struct WatchHealth(Arc<Mutex<BTreeMap<String, (Instant, String)>>>);

impl WatchHealth {
    fn succeeded(&self, kind: &str) {
        let mut failing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if failing.remove(kind).is_some() {
            info!(kind, "watch recovered");
        }
    }

    fn failed(&self, kind: &str, error: String) {
        let mut failing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let since = failing
            .get(kind)
            .map_or_else(Instant::now, |(since, _)| *since);
        failing.insert(kind.to_string(), (since, error));
    }

    /// The watches failing for at least `longer_than`, each with its last error.
    pub fn failing_for(&self, longer_than: Duration) -> Vec<(String, String)> {
        let failing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failing
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= longer_than)
            .map(|(kind, (_, error))| (kind.clone(), error.clone()))
            .collect()
    }
}

/// Drops, before caching, what planning never reads and the cached shape still holds
/// (the managedFields of full objects, most of their memory; the slim shapes keep only
/// who wrote last).
pub trait Slim {
    fn slim(&mut self);
}

impl<K> Slim for CachedWorkload<K> {
    /// Decoded slim already.
    fn slim(&mut self) {}
}

impl Slim for PartialObjectMeta<Pod> {
    /// A pod matters only by name, labels and whether it is being deleted.
    fn slim(&mut self) {
        self.types = None;
        // Also what the store keys it by, besides its name.
        self.metadata.resource_version = None;
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
        self.metadata.finalizers = None;
        self.metadata.generate_name = None;
        self.metadata.creation_timestamp = None;
        self.metadata.uid = None;
    }
}

impl Slim for MailIncident {
    /// Everything of an incident is read but its managedFields: its spec, its status
    /// (the last decision).
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
    }
}

impl Slim for CachedConfigMap {
    /// Decoded slim already.
    fn slim(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_watch_counts_as_failing_from_its_first_error_until_any_event() {
        let health = WatchHealth::default();
        health.failed("MailIncident", "404 first".into());
        std::thread::sleep(Duration::from_millis(30));
        health.failed("MailIncident", "404 again".into());
        health.failed("Pod", "403".into());
        let failing = health.failing_for(Duration::from_millis(20));
        assert_eq!(
            failing,
            [("MailIncident".to_string(), "404 again".to_string())],
            "failing since its first error, with its last one"
        );
        assert_eq!(health.failing_for(Duration::ZERO).len(), 2);
        health.succeeded("MailIncident");
        health.succeeded("Pod");
        assert!(health.failing_for(Duration::ZERO).is_empty());
    }

    /// Two tasks wait at once, as the start-up log and the first reconcile do: both must
    /// wake when the listings complete.
    #[tokio::test]
    async fn every_waiter_wakes_when_the_caches_fill() {
        let (incidents, mut incident_writer) = reflector::store();
        let (deployments, mut deployment_writer) = reflector::store();
        let (statefulsets, mut statefulset_writer) = reflector::store();
        let (pods, mut pod_writer) = reflector::store();
        let (config_maps, mut config_map_writer) = reflector::store();
        let caches = Caches::new(
            incidents,
            deployments,
            statefulsets,
            pods,
            config_maps,
            tokio::sync::watch::channel(()).1,
        );
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.wait_until_ready().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "ready before any listing"
        );

        incident_writer.apply_watcher_event(&watcher::Event::InitDone);
        deployment_writer.apply_watcher_event(&watcher::Event::InitDone);
        statefulset_writer.apply_watcher_event(&watcher::Event::InitDone);
        pod_writer.apply_watcher_event(&watcher::Event::InitDone);
        config_map_writer.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert!(matches!(woke, Ok(Ok(Ok(())))), "a waiter slept on");
        }
    }

    fn config_map(name: &str, version: &str) -> CachedConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "mail", "resourceVersion": version},
        }))
        .expect("a ConfigMap decodes")
    }

    /// Caches whose ConfigMap cache holds `cached`, with its writer and change marker.
    fn caches_holding(
        cached: &[CachedConfigMap],
    ) -> (
        Caches,
        reflector::store::Writer<CachedConfigMap>,
        tokio::sync::watch::Sender<()>,
    ) {
        let (config_maps, mut writer) = reflector::store();
        for config_map in cached {
            writer.apply_watcher_event(&watcher::Event::Apply(config_map.clone()));
        }
        let (mark, changed) = tokio::sync::watch::channel(());
        let caches = Caches::new(
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
            config_maps,
            changed,
        );
        (caches, writer, mark)
    }

    fn echo(name: &str, before: Option<&str>, after: Option<&str>) -> Echo {
        Echo {
            kind: EchoKind::ConfigMap,
            name: name.into(),
            before: before.map(Into::into),
            after: after.map(Into::into),
        }
    }

    #[tokio::test]
    async fn echoes_already_cached_are_not_waited_for() {
        let (caches, _writer, _changed) =
            caches_holding(&[config_map("updated", "2"), config_map("unchanged", "5")]);
        let echoes = vec![
            // Cached as the write left it.
            echo("updated", Some("1"), Some("2")),
            // A write that changed nothing leaves the version as it was.
            echo("unchanged", Some("5"), Some("5")),
            // Deleted, and gone from the cache.
            echo("deleted", Some("3"), None),
        ];
        let started = tokio::time::Instant::now();
        caches
            .wait_for_echoes("mail", echoes, Duration::from_secs(5))
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_sync_waits_for_its_echo_and_no_longer_than_it_may() {
        let (caches, mut writer, changed) = caches_holding(&[config_map("document", "1")]);
        let waiting = {
            let caches = caches.clone();
            tokio::spawn(async move {
                let echoes = vec![echo("document", Some("1"), Some("2"))];
                caches
                    .wait_for_echoes("mail", echoes, Duration::from_secs(30))
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "finished before the echo");
        // A newer change than the write's own counts as well.
        writer.apply_watcher_event(&watcher::Event::Apply(config_map("document", "3")));
        changed.send_replace(());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the echo")
            .expect("the waiter ran");

        let never_echoed = vec![echo("document", Some("3"), Some("4"))];
        let started = tokio::time::Instant::now();
        caches
            .wait_for_echoes("mail", never_echoed, Duration::from_millis(200))
            .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "waited {waited:?}"
        );
    }

    /// A workload's echo is looked for in its own kind's cache, not in another's.
    #[tokio::test]
    async fn a_workload_echo_is_waited_for_in_its_kinds_cache() {
        let deployment = |version: &str| -> CachedDeployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "mta", "namespace": "mail", "resourceVersion": version},
            }))
            .expect("a Deployment decodes")
        };
        let (deployments, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("1")));
        let (mark, changed) = tokio::sync::watch::channel(());
        let caches = Caches::new(
            reflector::store().0,
            deployments,
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
            changed,
        );
        let restart = |kind| Echo {
            kind: EchoKind::Workload(kind),
            name: "mta".into(),
            before: Some("1".into()),
            after: Some("2".into()),
        };
        // No StatefulSet of that name is cached: nothing to wait for.
        let started = tokio::time::Instant::now();
        caches
            .wait_for_echoes(
                "mail",
                vec![restart(WorkloadKind::StatefulSet)],
                Duration::from_secs(5),
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));

        let waiting = {
            let caches = caches.clone();
            tokio::spawn(async move {
                let echoes = vec![restart(WorkloadKind::Deployment)];
                caches
                    .wait_for_echoes("mail", echoes, Duration::from_secs(30))
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "finished before the echo");
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("2")));
        mark.send_replace(());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the echo")
            .expect("the waiter ran");
    }
}
