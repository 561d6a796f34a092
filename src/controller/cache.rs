//! The controller's caches, filled by watches: the workloads incidents can target, their
//! pods (metadata only: only existence and labels matter), and the operator's own mode
//! documents and agent reports. Every cached object is stripped of its managedFields,
//! which would otherwise be most of the memory.

use crate::{
    Error, Result,
    api::{MailIncident, mode_document},
    retry::WatchBackoff,
};
use futures::{
    FutureExt, Stream, StreamExt, future,
    future::{BoxFuture, Shared},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Container, Pod, PodSpec, PodTemplateSpec, Volume},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher::{self, watcher},
    },
};
use serde::de::DeserializeOwned;
use std::{fmt::Debug, pin::Pin};
use tracing::warn;

/// kubectl's copy of the whole last applied manifest: large, and never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Objects per page of a watch's initial listing.
const LIST_PAGE_SIZE: u32 = 100;

/// A stream of changed objects that keeps a cache filled as it is polled. Watch errors
/// stop at the cache: its watch retries within seconds on its own, and what waits for
/// changes sees only objects, so one watch's trouble never delays another's triggers.
pub type Changes<K> = Pin<Box<dyn Stream<Item = K> + Send>>;

/// Every cache the plan reads; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub incidents: Store<MailIncident>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Only the operator's ConfigMaps (mode documents and reports), by label.
    pub config_maps: Store<ConfigMap>,
    /// Resolves once every cache holds a complete first listing (or names the one that
    /// never will). Shared because kube's `Store::wait_until_ready` wakes only the last
    /// of several tasks waiting at once: a reconcile waiting beside another waiter could
    /// sleep forever.
    ready: Shared<BoxFuture<'static, Result<(), &'static str>>>,
}

impl Caches {
    pub fn new(
        incidents: Store<MailIncident>,
        deployments: Store<Deployment>,
        statefulsets: Store<StatefulSet>,
        pods: Store<PartialObjectMeta<Pod>>,
        config_maps: Store<ConfigMap>,
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
            ready,
        }
    }

    /// Waits until every cache holds a complete first listing. Any number of tasks may wait.
    pub async fn wait_until_ready(&self) -> Result<()> {
        self.ready.clone().await.map_err(Error::CacheNeverReady)
    }
}

/// Starts a watch of `K` filling a cache: the cache, and the stream of changes that must
/// be polled to fill it.
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, Changes<K>)
where
    K: Resource + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    // Small pages, so a listing of thousands of workloads is never in memory at once. A
    // list served from the API server's watch cache (`resourceVersion=0`, kube's "any"
    // semantic) ignores the page size and comes as one response: at 5000 targets that
    // one response was most of the operator's peak memory. A consistent list is paged.
    let changes = watcher(api, config.page_size(LIST_PAGE_SIZE))
        .backoff(WatchBackoff::new())
        .modify(|object| {
            object.managed_fields_mut().clear();
            object.annotations_mut().remove(LAST_APPLIED);
            object.slim();
        })
        .reflect(writer)
        .touched_objects()
        .filter_map(|change| {
            future::ready(change.map_err(|error| {
                // A 410 Expired after an API server restart is routine: the watch relists.
                warn!(kind = K::kind(&K::DynamicType::default()).as_ref(), %error, "watch failed; retrying");
            })
            .ok())
        });
    (store, Box::pin(changes))
}

/// Drops, before caching, every field planning never reads: at a thousand targets the
/// caches are most of the operator's memory.
pub trait Slim {
    fn slim(&mut self);
}

/// Keeps only the annotations the operator reads (`mailops.dev/...`).
fn keep_our_annotations(meta: &mut ObjectMeta) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| key.starts_with("mailops.dev/"));
    }
}

/// Keeps of a pod template what the queue check and restart delivery read: our
/// annotations, containers' names and volume mounts, volumes' names and kinds.
fn slim_template(template: &mut PodTemplateSpec) {
    if let Some(meta) = &mut template.metadata {
        keep_our_annotations(meta);
        meta.labels = None;
    }
    if let Some(pod) = &mut template.spec {
        let containers = std::mem::take(&mut pod.containers);
        let volumes = pod.volumes.take();
        *pod = PodSpec {
            containers: containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    volume_mounts: c.volume_mounts,
                    ..Container::default()
                })
                .collect(),
            volumes: volumes.map(|volumes| {
                volumes
                    .into_iter()
                    .map(|v| Volume {
                        name: v.name,
                        empty_dir: v.empty_dir,
                        persistent_volume_claim: v.persistent_volume_claim,
                        ..Volume::default()
                    })
                    .collect()
            }),
            ..PodSpec::default()
        };
    }
}

impl Slim for Deployment {
    fn slim(&mut self) {
        keep_our_annotations(&mut self.metadata);
        if let Some(spec) = &mut self.spec {
            slim_template(&mut spec.template);
            spec.strategy = None;
        }
        if let Some(status) = &mut self.status {
            status.conditions = None;
        }
    }
}

impl Slim for StatefulSet {
    fn slim(&mut self) {
        keep_our_annotations(&mut self.metadata);
        if let Some(spec) = &mut self.spec {
            slim_template(&mut spec.template);
            for claim in spec.volume_claim_templates.iter_mut().flatten() {
                claim.spec = None;
                claim.status = None;
            }
        }
        if let Some(status) = &mut self.status {
            status.conditions = None;
        }
    }
}

impl Slim for PartialObjectMeta<Pod> {
    /// A pod matters only by name, labels and whether it is being deleted.
    fn slim(&mut self) {
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
        self.metadata.finalizers = None;
        self.metadata.generate_name = None;
    }
}

impl Slim for MailIncident {
    /// Everything of an incident is read: its spec, its status (the last decision).
    fn slim(&mut self) {}
}

impl Slim for ConfigMap {
    /// A mode document's content is known by its hash annotation; reports keep their data.
    fn slim(&mut self) {
        let role = self
            .labels()
            .get(mode_document::ROLE_LABEL)
            .map(String::as_str);
        if role == Some(mode_document::ROLE_DOCUMENT) {
            self.data = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two tasks wait at once, as the start-up log and the first reconcile do: both must
    /// wake when the listings complete.
    #[tokio::test]
    async fn every_waiter_wakes_when_the_caches_fill() {
        let (incidents, mut incident_writer) = reflector::store();
        let (deployments, mut deployment_writer) = reflector::store();
        let (statefulsets, mut statefulset_writer) = reflector::store();
        let (pods, mut pod_writer) = reflector::store();
        let (config_maps, mut config_map_writer) = reflector::store();
        let caches = Caches::new(incidents, deployments, statefulsets, pods, config_maps);
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
}
