//! What to sync. The unit of work is a namespace: precedence between incidents makes one
//! incident's change another's business, so a sync plans all of a namespace at once.
//! Keying reconciles on the namespace lets kube's controller do what a lock did before,
//! without holding a slot while waiting: a namespace is synced by one task at a time,
//! changes arriving meanwhile fold into one more sync, and different namespaces proceed
//! concurrently.
//!
//! Every change the caches see is routed to its namespace, or dropped when it cannot
//! matter: a workload or pod in a namespace with no incident is none of ours, unless the
//! workload still carries our marks (a leftover to sweep). The operator's own ConfigMaps
//! always count, so documents and reports left behind are swept too, at start (the first
//! listing is a change of every object) as at any later time. Reports whose queue figures
//! alone changed are paced ([`super::report_pacing`]).

use super::{
    cache::{AllChanges, Caches},
    report_pacing::{Acknowledgements, Pace, QUEUE_SYNC_EVERY, paced},
};
use futures::{Stream, StreamExt, future, stream};
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use std::sync::{Arc, Mutex};

/// The namespaces there is something to sync in, as objects kube's controller can key
/// its reconciles on (a name only; no Namespace is read from the API server).
#[derive(Clone)]
pub struct Namespaces {
    store: Store<Namespace>,
    writer: Arc<Mutex<Writer<Namespace>>>,
}

impl Namespaces {
    pub fn new() -> Self {
        let (store, mut writer) = reflector::store();
        // Complete from the start: a namespace is known once something names it.
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Self {
            store,
            writer: Arc::new(Mutex::new(writer)),
        }
    }

    pub fn store(&self) -> Store<Namespace> {
        self.store.clone()
    }

    /// The key of namespace `name`, registered for the controller to find. Namespaces
    /// are few and tiny, so keys are never removed.
    fn key(&self, name: &str) -> Namespace {
        let key = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        if self.store.get(&ObjectRef::new(name)).is_none() {
            self.writer
                .lock()
                .expect("lock poisoned")
                .apply_watcher_event(&watcher::Event::Apply(key.clone()));
        }
        key
    }
}

/// The namespaces to sync, one per change that can matter, in the form kube's
/// controller takes (it never errs: watch errors stop at the caches).
pub fn namespaces_to_sync(
    namespaces: Namespaces,
    caches: &Caches,
    changes: AllChanges,
) -> impl Stream<Item = Result<Namespace, watcher::Error>> + Send + 'static {
    let with_incidents = {
        let incidents = caches.incidents.clone();
        move |namespace: &str| {
            incidents
                .find(|i| i.namespace().as_deref() == Some(namespace))
                .is_some()
        }
    };
    let workload = {
        let with_incidents = with_incidents.clone();
        move |meta: &ObjectMeta, marked: bool| {
            let namespace = meta.namespace.as_deref()?;
            (with_incidents(namespace) || marked).then(|| namespace.into())
        }
    };
    let deployment_workload = workload.clone();
    let config_maps = caches.config_maps.clone();
    let mut acknowledgements = Acknowledgements::default();
    let now = |namespace: Option<String>| namespace.map(|n| (n, Pace::Now));
    let routed: Vec<stream::BoxStream<'static, Option<(String, Pace)>>> = vec![
        changes.incidents.map(move |i| now(i.namespace())).boxed(),
        changes
            .config_maps
            .map(move |c| {
                let exists = config_maps.get(&ObjectRef::from_obj(&c)).is_some();
                let pace = acknowledgements.pace(&c, exists);
                c.namespace().map(|n| (n, pace))
            })
            .boxed(),
        changes
            .deployments
            .map(move |d| now(deployment_workload(&d.metadata, d.carries_our_marks())))
            .boxed(),
        changes
            .statefulsets
            .map(move |s| now(workload(&s.metadata, s.carries_our_marks())))
            .boxed(),
        changes
            .pods
            .map(move |p| now(p.namespace().filter(|namespace| with_incidents(namespace))))
            .boxed(),
    ];
    let changed = stream::select_all(routed).filter_map(future::ready);
    paced(changed, QUEUE_SYNC_EVERY).map(move |name| Ok(namespaces.key(&name)))
}

/// The namespace of a synced key.
pub fn name_of(key: &Namespace) -> String {
    key.meta().name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{MailIncident, mode_document::MODE_HASH_ANNOTATION},
        controller::cached::CachedDeployment,
    };
    use futures::stream::BoxStream;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).expect("test object deserializes")
    }

    fn changes<K: Send + 'static>(items: Vec<K>) -> BoxStream<'static, K> {
        stream::iter(items).boxed()
    }

    /// Caches holding one incident, in namespace `mail`.
    fn caches() -> Caches {
        let (incidents, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(object::<MailIncident>(json!({
            "apiVersion": "mailops.dev/v1alpha1", "kind": "MailIncident",
            "metadata": {"name": "outage", "namespace": "mail"},
            "spec": {"mode": "TempFail", "reason": "r", "targets": {"matchLabels": {"app": "mta"}}},
        }))));
        Caches::new(
            incidents,
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
            reflector::store().0,
            tokio::sync::watch::channel(()).1,
        )
    }

    fn deployment(
        namespace: &str,
        name: &str,
        template_annotations: serde_json::Value,
    ) -> CachedDeployment {
        object(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"annotations": template_annotations}},
            },
        }))
    }

    #[tokio::test]
    async fn changes_route_to_their_namespace_only_when_they_can_matter() {
        let namespaces = Namespaces::new();
        let pod = |namespace: &str| -> PartialObjectMeta<Pod> {
            object(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace}}),
            )
        };
        let all = AllChanges {
            incidents: changes(vec![]),
            deployments: changes(vec![
                deployment("mail", "in-incident-namespace", json!({})),
                deployment("web", "unrelated", json!({})),
                deployment("old", "leftover", json!({MODE_HASH_ANNOTATION: "h"})),
            ]),
            statefulsets: changes(vec![]),
            pods: changes(vec![pod("mail"), pod("web")]),
            config_maps: changes(vec![object(
                json!({"metadata": {"name": "d", "namespace": "gone"}}),
            )]),
        };
        let mut synced: Vec<String> = namespaces_to_sync(namespaces.clone(), &caches(), all)
            .map(|key| name_of(&key.expect("never an error")))
            .collect()
            .await;
        synced.sort();
        assert_eq!(synced, ["gone", "mail", "mail", "old"]);
        for name in ["gone", "mail", "old"] {
            assert!(
                namespaces.store().get(&ObjectRef::new(name)).is_some(),
                "{name} is not registered for the controller to find"
            );
        }
        assert!(namespaces.store().get(&ObjectRef::new("web")).is_none());
    }
}
