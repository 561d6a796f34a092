//! The controller's caches, filled by watches: the workloads incidents can target, their
//! pods (metadata only: only existence and labels matter), and the operator's own mode
//! documents and agent reports. Every cached object is stripped of its managedFields,
//! which would otherwise be most of the memory.

use crate::{Error, Result};
use futures::Stream;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Pod},
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

/// kubectl's copy of the whole last applied manifest: large, and never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A stream of changed objects that keeps a cache filled as it is polled.
pub type Changes<K> = Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// Every cache the plan reads; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Only the operator's ConfigMaps (mode documents and reports), by label.
    pub config_maps: Store<ConfigMap>,
}

impl Caches {
    /// Waits until every cache holds a complete first listing.
    pub async fn wait_until_ready(&self) -> Result<()> {
        let ready = |r: Result<(), reflector::store::WriterDropped>, what| {
            r.map_err(|_| Error::CacheNeverReady(what))
        };
        ready(self.deployments.wait_until_ready().await, "deployments")?;
        ready(self.statefulsets.wait_until_ready().await, "statefulsets")?;
        ready(self.pods.wait_until_ready().await, "pods")?;
        ready(self.config_maps.wait_until_ready().await, "configmaps")?;
        Ok(())
    }
}

/// Starts a watch of `K` filling a cache: the cache, and the stream of changes that must
/// be polled to fill it.
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, Changes<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let changes = watcher(api, config.any_semantic())
        .default_backoff()
        .modify(|object| {
            object.managed_fields_mut().clear();
            object.annotations_mut().remove(LAST_APPLIED);
        })
        .reflect(writer)
        .touched_objects();
    (store, Box::pin(changes))
}
