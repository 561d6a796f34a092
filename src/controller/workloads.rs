//! Metadata-only caches of the Deployments and StatefulSets incidents can target. Only
//! labels matter for matching, so pod templates are never downloaded or kept.

use crate::{Error, Result, api::MailIncident, plan};
use futures::Stream;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::{
    Api, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// The workload caches; cheap to clone.
#[derive(Clone)]
pub struct WorkloadCache {
    deployments: Store<PartialObjectMeta<Deployment>>,
    statefulsets: Store<PartialObjectMeta<StatefulSet>>,
}

/// A stream of changed workloads that keeps a cache filled as it is polled.
pub type Changes<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send>>;

impl WorkloadCache {
    pub fn new(
        deployments: Store<PartialObjectMeta<Deployment>>,
        statefulsets: Store<PartialObjectMeta<StatefulSet>>,
    ) -> Self {
        Self {
            deployments,
            statefulsets,
        }
    }

    /// Waits until both caches hold a complete first listing.
    pub async fn wait_until_ready(&self) -> Result<()> {
        self.deployments
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNeverReady("deployments"))?;
        self.statefulsets
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNeverReady("statefulsets"))?;
        Ok(())
    }

    /// The workloads of one namespace, for planning.
    pub fn in_namespace(&self, namespace: &str) -> Vec<plan::Workload> {
        let deployments = self
            .deployments
            .state_filter(|d| d.namespace().as_deref() == Some(namespace))
            .into_iter()
            .map(|d| workload(plan::WorkloadKind::Deployment, &d));
        let statefulsets = self
            .statefulsets
            .state_filter(|s| s.namespace().as_deref() == Some(namespace))
            .into_iter()
            .map(|s| workload(plan::WorkloadKind::StatefulSet, &s));
        let mut all: Vec<_> = deployments.chain(statefulsets).collect();
        all.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        all
    }
}

fn workload<K: Resource>(kind: plan::WorkloadKind, meta: &PartialObjectMeta<K>) -> plan::Workload {
    plan::Workload {
        kind,
        name: meta.name_any(),
        labels: meta.labels().clone(),
    }
}

/// Starts a metadata-only watch of `K`: the cache it fills, and the stream of changes that
/// must be polled to fill it.
pub fn watch<K>(api: Api<PartialObjectMeta<K>>) -> (Store<PartialObjectMeta<K>>, Changes<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, Box::pin(changes))
}

/// Maps a changed workload to every incident of its namespace. Matching is decided in the
/// reconcile: a workload whose labels changed may have left an incident's selector, and
/// only the incident can tell. Incidents per namespace are few, so this stays cheap.
pub fn incidents_of_namespace<K: Resource>(
    incidents: Store<MailIncident>,
) -> impl Fn(PartialObjectMeta<K>) -> Vec<ObjectRef<MailIncident>> + Send + Sync + 'static {
    move |workload| {
        let namespace = workload.namespace();
        incidents
            .state_filter(|incident| incident.namespace() == namespace)
            .iter()
            .map(|incident| ObjectRef::from_obj(incident.as_ref()))
            .collect()
    }
}
