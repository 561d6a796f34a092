//! `make bench`: how fast a mode change reaches a fleet of N target workloads, against a
//! real API server, compared with what an SRE does by hand (a shell loop of `kubectl
//! patch`) and with the floor (the fastest concurrent raw PATCHes the server accepts).
//! Also the operator's peak RSS and CPU seconds. Prints one table.

// The shared fakes; the benchmark needs only the agents (pods need not run).
#[allow(dead_code)]
#[path = "../tests/fakes.rs"]
mod fakes;
// The shared test world; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/world.rs"]
mod world;

use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use mail_incident_operator::api::{
    MailIncident,
    mode_document::{MODE_DOCUMENT_KEY, ROLE_DOCUMENT, ROLE_LABEL},
};
use serde_json::json;
use std::{
    process::Command,
    time::{Duration, Instant},
};
use world::{Operator, TestNamespace, World};

const CREATE_CONCURRENCY: usize = 32;
const FLOOR_CONCURRENCY: [usize; 3] = [16, 64, 256];

struct Row {
    targets: usize,
    documents: Duration,
    ready: Duration,
    kubectl_loop: Duration,
    floor: Duration,
    floor_concurrency: usize,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10 100 1000".into())
        .split_whitespace()
        .map(|s| s.parse().expect("BENCH_SIZES holds numbers"))
        .collect();
    let world = World::get();
    let mut rows = Vec::new();
    for size in sizes {
        eprintln!("[bench] {size} targets");
        rows.push(run(world, size).await);
    }
    println!();
    println!(
        "| targets | mode documents updated | Ready (agents acked) | kubectl patch loop | raw PATCH floor | documents / floor | peak RSS | CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s (x{}) | {:.2}x | {:.1} MiB | {:.2} s |",
            r.targets,
            r.documents.as_secs_f64(),
            r.ready.as_secs_f64(),
            r.kubectl_loop.as_secs_f64(),
            r.floor.as_secs_f64(),
            r.floor_concurrency,
            r.documents.as_secs_f64() / r.floor.as_secs_f64(),
            r.peak_rss_mib,
            r.cpu_seconds,
        );
    }
}

async fn run(world: &'static World, size: usize) -> Row {
    let ns = TestNamespace::new(world, &format!("bench-{size}"));
    let client = world.admin().await;
    create_fleet(&client, &ns.name, size).await;

    let operator = Operator::start(world, &ns.name).await;
    let _agents = fakes::FakeAgents::start(client.clone(), &ns.name).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);

    // Warm-up: the incident is declared and every target applies it.
    apply_incident(world, &ns.name, "TempFail", "");
    wait_ready(&incidents, size, 1).await;

    // Measured: a mode change, from `kubectl apply` to every document, then to Ready.
    let documents = watch_documents(&client, &ns.name).await;
    let start = Instant::now();
    apply_incident(
        world,
        &ns.name,
        "HardReject",
        "\n  hardReject: {acknowledgeBounces: true}",
    );
    wait_documents(&documents, size, "HardReject").await;
    let documents = start.elapsed();
    wait_ready(&incidents, size, 2).await;
    let ready = start.elapsed();
    let (peak_rss_mib, cpu_seconds) = process_usage(operator.pid());
    drop(operator);

    let kubectl_loop = kubectl_patch_loop(world, &ns.name, size);
    let (floor, floor_concurrency) = floor(&client, &ns.name, size).await;
    Row {
        targets: size,
        documents,
        ready,
        kubectl_loop,
        floor,
        floor_concurrency,
        peak_rss_mib,
        cpu_seconds,
    }
}

/// N Deployments labelled as MTAs with one pod each, and N ConfigMaps for the references
/// to patch; waits until kube-controller-manager has created every pod.
async fn create_fleet(client: &Client, namespace: &str, size: usize) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    stream::iter(0..size)
        .map(|i| {
            let (deployments, config_maps) = (deployments.clone(), config_maps.clone());
            async move {
                let name = format!("mta-{i:04}");
                let deployment: Deployment = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "mta"}},
                    "spec": {
                        "replicas": 1,
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
                    "metadata": {"name": format!("manual-{i:04}")},
                    "data": {"mode": "TempFail"},
                }))
                .unwrap();
                config_maps.create(&PostParams::default(), &manual).await.expect("create configmap");
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(300);
    while pods
        .list_metadata(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .len()
        < size
    {
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager did not create {size} pods"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn apply_incident(world: &World, namespace: &str, mode: &str, extra: &str) {
    let yaml = format!(
        "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata:\n  name: bench\nspec:\n  mode: {mode}\n  reason: benchmark\n  targets: {{matchLabels: {{app: mta}}}}{extra}\n"
    );
    let output = world.kubectl(
        &["apply", "--validate=false", "-n", namespace, "-f", "-"],
        Some(&yaml),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A cache of the mode documents, filled by a watch, so that waiting for them puts no
/// load on the API server during the measurement.
async fn watch_documents(client: &Client, namespace: &str) -> reflector::Store<ConfigMap> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}"));
    tokio::spawn(
        watcher(config_maps, config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await.expect("document watch");
    store
}

async fn wait_documents(documents: &reflector::Store<ConfigMap>, size: usize, mode: &str) {
    let wanted = format!("\"mode\": \"{mode}\"");
    loop {
        let done = documents
            .state()
            .iter()
            .filter(|c| {
                c.data
                    .as_ref()
                    .and_then(|d| d.get(MODE_DOCUMENT_KEY))
                    .is_some_and(|d| d.contains(&wanted))
            })
            .count();
        if done == size {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_ready(incidents: &Api<MailIncident>, size: usize, generation: i64) {
    let summary = format!("{size}/{size}");
    loop {
        let incident = incidents.get("bench").await.expect("get incident");
        let status = incident.status.unwrap_or_default();
        let applied = status.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "True"
                && c.reason == "Applied"
                && c.observed_generation == Some(generation)
        });
        if applied && status.targets.is_some_and(|t| t.summary == summary) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an SRE does by hand: one `kubectl patch` per target, one after the other.
fn kubectl_patch_loop(world: &World, namespace: &str, size: usize) -> Duration {
    let start = Instant::now();
    for i in 0..size {
        let status = Command::new(&world.kubectl)
            .arg("--kubeconfig")
            .arg(&world.kubeconfig)
            .args([
                "-n",
                namespace,
                "patch",
                "configmap",
                &format!("manual-{i:04}"),
                "--type",
                "merge",
            ])
            .args(["-p", r#"{"data":{"mode":"HardReject"}}"#])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("kubectl runs");
        assert!(status.success());
    }
    start.elapsed()
}

/// The fastest N merge PATCHes the API server takes, over a few concurrency levels, each
/// carrying a mode-document-sized payload.
async fn floor(client: &Client, namespace: &str, size: usize) -> (Duration, usize) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut best = (Duration::MAX, 0);
    for (round, concurrency) in FLOOR_CONCURRENCY.into_iter().enumerate() {
        let start = Instant::now();
        stream::iter(0..size)
            .map(|i| {
                let config_maps = config_maps.clone();
                async move {
                    let document = format!(
                        "{{\"round\": {round}, \"padding\": \"{}\"}}",
                        "x".repeat(600)
                    );
                    let patch = Patch::Merge(json!({"data": {"mode.json": document}}));
                    config_maps
                        .patch(&format!("manual-{i:04}"), &PatchParams::default(), &patch)
                        .await
                        .expect("patch");
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
        let elapsed = start.elapsed();
        if elapsed < best.0 {
            best = (elapsed, concurrency);
        }
    }
    best
}

/// The operator's peak resident memory (MiB) and CPU time (user + system seconds) since it
/// started, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s on Linux.
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    (peak_kib / 1024.0, ticks / 100.0)
}
