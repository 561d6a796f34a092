//! The fleet of one size: its Deployments and the ConfigMaps the by-hand loop and the
//! floors patch, the bench's incident applied with kubectl, and the namespace's end.

use crate::floor::FLOOR_LABEL;
use crate::watches::AbortOnDrop;
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Pod},
};
use kube::{
    Api, Client,
    api::PostParams,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, watcher},
};
use mail_incident_e2e_support::world::World;
use serde_json::json;
use std::time::{Duration, Instant};

const CREATE_CONCURRENCY: usize = 32;
/// How long kube-controller-manager may take to create a size's pods, and a namespace
/// to disappear, plus this much per target; the fake agents and the operator likewise.
const BASE_TIMEOUT: Duration = Duration::from_secs(120);
const TIMEOUT_PER_TARGET: Duration = Duration::from_millis(100);

pub fn timeout(size: usize) -> Duration {
    BASE_TIMEOUT + TIMEOUT_PER_TARGET * size as u32
}

/// N Deployments labelled as MTAs with one pod each, and N ConfigMaps for the references
/// to patch; waits until kube-controller-manager has created every pod (a ReplicaSet and
/// a Pod per Deployment, at its `--kube-api-qps`; about a minute or two at 5000).
pub async fn create_fleet(client: &Client, namespace: &str, size: usize) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    // Counts pods through a metadata-only watch: polling a list of thousands of pods
    // would load the API server while kube-controller-manager works.
    let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), namespace);
    let (pod_store, writer) = reflector::store();
    let pod_watch = AbortOnDrop(tokio::spawn(
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    ));
    stream::iter(0..size)
        .map(|i| {
            let (deployments, config_maps) = (deployments.clone(), config_maps.clone());
            async move {
                let name = format!("mta-{i:04}");
                // No kubelet runs the pods, so no rollout ever completes; without a long
                // progress deadline kube-controller-manager would mark every Deployment
                // ProgressDeadlineExceeded ten minutes after creation, a wave of N status
                // writes (and operator syncs) that could land in a later measurement.
                let deployment: Deployment = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "mta"}},
                    "spec": {
                        "replicas": 1,
                        "progressDeadlineSeconds": 86400,
                        "selector": {"matchLabels": {"workload": name}},
                        "template": {
                            "metadata": {"labels": {"workload": name}},
                            "spec": {"containers": [{"name": "postfix", "image": "registry.invalid/postfix:3.7"}]},
                        },
                    },
                }))
                .unwrap();
                deployments.create(&PostParams::default(), &deployment).await.expect("create deployment");
                let manual: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("manual-{i:04}"), "labels": {FLOOR_LABEL: "true"}},
                    "data": {"mode": "TempFail"},
                }))
                .unwrap();
                config_maps.create(&PostParams::default(), &manual).await.expect("create configmap");
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let deadline = Instant::now() + timeout(size);
    while pod_store.len() < size {
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager created {} of {size} pods within {:?}",
            pod_store.len(),
            timeout(size)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(pod_watch);
}

/// Waits until the namespace (deleted when its `TestNamespace` dropped) is gone.
pub async fn wait_namespace_gone(world: &World, namespace: &str, size: usize) {
    let namespaces: Api<Namespace> = Api::all(world.admin().await);
    let start = Instant::now();
    while namespaces
        .get_opt(namespace)
        .await
        .expect("get namespace")
        .is_some()
    {
        if start.elapsed() > timeout(size) {
            eprintln!(
                "[bench] warning: namespace {namespace} still there after {:.0} s; going on",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "[bench] {size} targets: namespace deleted in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// `kubectl apply` of the bench's incident, off the runtime's threads; returns how long
/// kubectl ran.
pub async fn apply_incident(
    world: &'static World,
    namespace: &str,
    mode: &str,
    extra: &str,
) -> Duration {
    let yaml = format!(
        "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata:\n  name: bench\nspec:\n  mode: {mode}\n  reason: benchmark\n  targets: {{matchLabels: {{app: mta}}}}{extra}\n"
    );
    let namespace = namespace.to_string();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let output = world.kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&yaml));
        assert!(
            output.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        start.elapsed()
    })
    .await
    .expect("kubectl apply task")
}
