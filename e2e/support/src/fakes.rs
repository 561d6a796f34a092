//! Stand-ins for what the test world lacks: a kubelet (there are no nodes) and a fast
//! agent (acknowledging modes without an MTA). Both work only through the API, as the
//! real ones do, with the administrator's credentials.

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{Selector, SelectorExt},
    runtime::{WatchStreamExt, reflector, watcher},
};
use mail_incident_operator::{
    api::mode_document::{
        MODE_HASH_ANNOTATION, REPORT_SUFFIX, ROLE_LABEL, ROLE_REPORT, WORKLOAD_ANNOTATION,
    },
    controller::WRITE_CONCURRENCY,
};
use serde_json::json;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;

pub const NODE: &str = "e2e-node";

/// How long a fake agent leaves a report entry it wrote to reach its cache before writing
/// it again: a pass every 50 ms would otherwise resend what a loaded API server has not
/// yet echoed, which real agents, writing once per change, do not.
const REPORT_ECHO_GRACE: Duration = Duration::from_secs(2);

/// Plays the kubelet for one namespace: binds new pods to a fake Node, marks them
/// running and Ready through `pods/status`, and confirms graceful deletions, so that
/// rollouts really complete. Stops when dropped.
pub struct FakeKubelet(JoinHandle<()>);

impl FakeKubelet {
    pub async fn start(client: Client, namespace: &str) -> Self {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap();
        match Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("cannot register the fake node: {e}"),
        }
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        Self(tokio::spawn(async move {
            let events = watcher(pods.clone(), watcher::Config::default()).applied_objects();
            futures::pin_mut!(events);
            while let Ok(Some(pod)) = events.try_next().await {
                if let Err(error) = play_kubelet(&pods, &pod).await {
                    eprintln!("fake kubelet: {}: {error}", pod.name_any());
                }
            }
        }))
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn play_kubelet(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.name_any();
    if pod.metadata.deletion_timestamp.is_some() {
        return match pods
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
    }
    let spec = pod.spec.as_ref().expect("pods have a spec");
    if spec.node_name.is_none() {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        });
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await?;
        return Ok(());
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        let containers: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                })
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "containerStatuses": containers,
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}

/// Plays every agent of one namespace, fast: as soon as a mode document exists, each
/// live pod of its workload reports the document's hash as applied, in the report object
/// the controller created, as a real agent does once its MTA is reconfigured; once the
/// document is gone, that its release is over and its MTA back to normal: once per
/// change, unless its report still lacks the entry a while after it was written (deleted
/// and created again, say). Stops when dropped.
pub struct FakeAgents(JoinHandle<()>);

impl FakeAgents {
    pub async fn start(client: Client, namespace: &str) -> Self {
        let namespace = namespace.to_string();
        Self(tokio::spawn(
            async move { run_agents(client, namespace).await },
        ))
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_agents(client: Client, namespace: String) {
    let (config_maps, config_map_events) =
        cached::<ConfigMap>(Api::namespaced(client.clone(), &namespace));
    let (pods, pod_events) = cached::<Pod>(Api::namespaced(client.clone(), &namespace));
    let (deployments, deployment_events) =
        cached::<Deployment>(Api::namespaced(client.clone(), &namespace));
    let (statefulsets, statefulset_events) =
        cached::<StatefulSet>(Api::namespaced(client.clone(), &namespace));
    tokio::spawn(config_map_events);
    tokio::spawn(pod_events);
    tokio::spawn(deployment_events);
    tokio::spawn(statefulset_events);
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    // (report, pod) → the report's uid, the entry written to it and when.
    let mut written: HashMap<(String, String), (String, String, Instant)> = HashMap::new();
    loop {
        // Indexed once per pass, so that a pass costs the size of the namespace, not its
        // square: each document looks up its workload, its report and its pods.
        let config_maps_now = config_maps.state();
        let config_maps_by_name: std::collections::HashMap<String, &ConfigMap> = config_maps_now
            .iter()
            .map(|c| (c.name_any(), c.as_ref()))
            .collect();
        let deployments_now = deployments.state();
        let deployments_by_name: std::collections::HashMap<String, &Deployment> = deployments_now
            .iter()
            .map(|d| (d.name_any(), d.as_ref()))
            .collect();
        let statefulsets_now = statefulsets.state();
        let statefulsets_by_name: std::collections::HashMap<String, &StatefulSet> =
            statefulsets_now
                .iter()
                .map(|s| (s.name_any(), s.as_ref()))
                .collect();
        let pods_now = pods.state();
        let mut pods_by_label: std::collections::HashMap<(&str, &str), Vec<&Pod>> =
            std::collections::HashMap::new();
        for pod in pods_now
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            for (key, value) in pod.labels() {
                pods_by_label.entry((key, value)).or_default().push(pod);
            }
        }
        let mut reports = Vec::new();
        for report in config_maps_now.iter() {
            if report.labels().get(ROLE_LABEL).map(String::as_str) != Some(ROLE_REPORT) {
                continue;
            }
            let Some(workload) = report.annotations().get(WORKLOAD_ANNOTATION) else {
                continue;
            };
            // While its document exists, the agents report its hash applied; once it is
            // gone, that their release is over (a fake MTA holds no mail).
            let report_name = report.name_any();
            let document = report_name
                .strip_suffix(REPORT_SUFFIX)
                .and_then(|name| config_maps_by_name.get(name));
            let entry = match document {
                Some(document) => match document.annotations().get(MODE_HASH_ANNOTATION) {
                    Some(hash) => json!({"hash": hash}).to_string(),
                    None => continue,
                },
                None => json!({"hash": "", "after": "Normal"}).to_string(),
            };
            let label_selector = match workload.split_once('/') {
                Some(("Deployment", name)) => deployments_by_name
                    .get(name)
                    .and_then(|d| d.spec.as_ref().map(|s| s.selector.clone())),
                Some(("StatefulSet", name)) => statefulsets_by_name
                    .get(name)
                    .and_then(|s| s.spec.as_ref().map(|s| s.selector.clone())),
                _ => None,
            };
            let Some(label_selector) = label_selector else {
                continue;
            };
            let first_label = label_selector
                .match_labels
                .as_ref()
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.clone()));
            let Ok(selector) = Selector::try_from(label_selector) else {
                continue;
            };
            let data = report.data.clone().unwrap_or_default();
            let report_uid = report.uid().unwrap_or_default();
            let echo_pending = |pod: &str| {
                written
                    .get(&(report_name.clone(), pod.to_string()))
                    .is_some_and(|(uid, sent, at)| {
                        *uid == report_uid && *sent == entry && at.elapsed() < REPORT_ECHO_GRACE
                    })
            };
            let candidates: Vec<&Pod> = match &first_label {
                Some((k, v)) => pods_by_label
                    .get(&(k.as_str(), v.as_str()))
                    .cloned()
                    .unwrap_or_default(),
                None => pods_now
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(AsRef::as_ref)
                    .collect(),
            };
            let stale: serde_json::Map<String, serde_json::Value> = candidates
                .into_iter()
                .filter(|p| selector.matches(p.labels()))
                .filter(|p| data.get(&p.name_any()) != Some(&entry))
                .filter(|p| !echo_pending(&p.name_any()))
                .map(|p| (p.name_any(), entry.clone().into()))
                .collect();
            if !stale.is_empty() {
                reports.push((report_name, report_uid, stale));
            }
        }
        // Every agent acts on its own, so the reports go out concurrently.
        let sent: Vec<_> = stream::iter(reports)
            .map(|(report_name, report_uid, stale)| {
                let api = api.clone();
                async move {
                    let patch = Patch::Merge(json!({"data": &stale}));
                    match api
                        .patch(&report_name, &PatchParams::default(), &patch)
                        .await
                    {
                        Ok(_) => Some((report_name, report_uid, stale)),
                        Err(error) => {
                            eprintln!("fake agent: {report_name}: {error}");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let now = Instant::now();
        written.retain(|_, (_, _, at)| at.elapsed() < REPORT_ECHO_GRACE);
        for (report_name, report_uid, stale) in sent {
            for (pod, entry) in stale {
                let entry = entry.as_str().unwrap_or_default().to_string();
                written.insert((report_name.clone(), pod), (report_uid.clone(), entry, now));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reflector over `api`: its store, and the future that keeps it filled.
fn cached<K>(
    api: Api<K>,
) -> (
    reflector::Store<K>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let filling = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| async {});
    (store, filling)
}
