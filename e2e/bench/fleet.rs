//! `make bench`: how fast a mode change reaches a fleet of N target workloads (by default
//! 10, 100, 1000 and 5000; `BENCH_SIZES` overrides), against a real API server, compared
//! with what an SRE does by hand (a shell loop of `kubectl patch`) and with the floor (the
//! fastest concurrent raw PATCHes the server accepts). Also the operator's peak RSS and
//! CPU seconds. Prints three tables: the measurements, their growth from the smallest size
//! (what each target adds), and where the operator's time goes (from its own log).
//!
//! What is timed, per size, for one mode change (TempFail → HardReject) of one incident
//! selecting every target:
//!
//! - "apply → documents": from just before `kubectl apply` starts (so kubectl's own
//!   start-up, discovery, GET and PATCH are included) to the moment the bench's watch on
//!   the mode documents has delivered the last document carrying the new mode.
//! - "stored → documents": from the moment the bench's watch on the MailIncident delivers
//!   the new generation (the API server has stored it; the operator's own watch learns of
//!   it at the same time) to the same end. This is the operator's own cost, comparable
//!   like for like with the floor: both start from a request the server has to act on and
//!   both write N ConfigMaps. The documents' end includes one watch delivery (a few ms)
//!   that the floor, ending on its last PATCH response, does not.
//! - "Ready": the same two starts, to the incident's `Ready` condition for the new
//!   generation with every target counted (`N/N`), i.e. every fake agent has acknowledged
//!   the new document and the operator has written the status saying so.
//! - The floor: N merge PATCHes of N ConfigMaps (one per target), each carrying a
//!   mode-document-sized value, sent by the bench itself at 16, 64 and 256 at once; the
//!   fastest. Measured with the operator, the fake agents and the bench's watches stopped:
//!   what the API server can do at best. (So nobody watches those ConfigMaps, while each
//!   document the operator writes goes out to three watches, the operator's, the fake
//!   agents' and the bench's, and carries an ownerReference the garbage collector tracks.)
//! - The floor with reports: the same N PATCHes and, at the same time, one PATCH of each
//!   target's report, as the agents send while the operator writes: the requests a mode
//!   change costs the API server, still on an idle server and without watch deliveries.
//!   On a machine whose cores the API server saturates, this is the floor to compare
//!   with; the first floor is kept as the issue's yardstick.
//! - The floor with watches: the floor with reports while three watches take what a
//!   change's watches take (two over every ConfigMap of the namespace, as the operator's
//!   and the fake agents', one over the floor's ConfigMaps, as the bench's): the API
//!   server's whole work in a change, with nothing deciding anything.
//!
//! The fake agents (`FakeAgents`, shared with the e2e tests) write their reports while the
//! operator is still writing documents, loading the same API server: that is what real
//! agents do, so it stays. They do run in the bench's process on the same cores, which
//! real agents (on other nodes) would not: the third table shows their CPU during the
//! measured change so that this cost is visible, not hidden in the operator's. They run
//! on a runtime, threads and connection of their own, so that however busy they are, the
//! bench's watches (whose event times are the measurements) are not queued behind them.
//!
//! The change is measured once the control plane is quiet after the warm-up (its CPU
//! read from the pid files `e2e/cluster.sh` keeps), and the third table gives the API
//! server's, etcd's and kube-controller-manager's CPU in the change and in the floor with
//! reports; a last list gives the requests and watch events the API server counted in the
//! change: where a change costs more than its floor.
//!
//! `BENCH_LOG_DIR=dir` keeps each size's operator log there (`operator-N.log`; the
//! directory is made if missing).

use futures::{StreamExt, stream};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, reflector, watcher},
};
use mail_incident_e2e_support::control_plane::{
    ControlPlaneCpu, cpu_seconds_of, wait_control_plane_quiet,
};
use mail_incident_e2e_support::world::{Operator, TestNamespace, World};
use mail_incident_operator::{
    api::{
        MailIncident,
        mode_document::{
            AgentReport, MODE_DOCUMENT_KEY, QueueFigures, ROLE_DOCUMENT, ROLE_LABEL, ROLE_REPORT,
        },
    },
    controller::WRITE_CONCURRENCY,
};
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    time::{Duration, Instant, SystemTime},
};
use tokio::{sync::watch, task::JoinHandle};

const CREATE_CONCURRENCY: usize = 32;
/// Marks the ConfigMaps the floors patch, for the watch that stands for the bench's.
const FLOOR_LABEL: &str = "bench-floor";
const FLOOR_CONCURRENCY: [usize; 3] = [16, 64, 256];
/// The `kubectl patch` loop is one kubectl process per target, one after the other (what
/// a shell loop does): 50 to 100 ms each on a 2-core machine, so at 5000 targets it would
/// run for five to ten minutes and tell nothing new. Above this size it runs on the first
/// `KUBECTL_LOOP_SAMPLE` targets only and the table shows that time extrapolated
/// linearly to the size (each patch is independent, so linear is what a full run gives).
const KUBECTL_LOOP_MAX: usize = 1000;
const KUBECTL_LOOP_SAMPLE: usize = 100;
/// How long kube-controller-manager may take to create a size's pods, and a namespace
/// to disappear, plus this much per target; the fake agents and the operator likewise.
const BASE_TIMEOUT: Duration = Duration::from_secs(120);
const TIMEOUT_PER_TARGET: Duration = Duration::from_millis(100);

struct Row {
    targets: usize,
    fleet_created: Duration,
    /// `kubectl apply` from spawn to exit.
    kubectl_apply: Duration,
    /// From `kubectl apply`'s start to the new generation reaching the bench's watch.
    stored_after: Duration,
    documents_from_apply: Duration,
    documents_from_stored: Duration,
    ready_from_apply: Duration,
    ready_from_stored: Duration,
    kubectl_loop: Duration,
    kubectl_loop_sampled: Option<usize>,
    floor: Duration,
    floor_concurrency: usize,
    floor_with_reports: Duration,
    floor_with_watches: Duration,
    peak_rss_mib: f64,
    /// The operator's RSS once its caches hold the fleet (workloads and pods, no
    /// documents yet), and just before the measured change.
    rss_caches_filled_mib: Option<f64>,
    rss_before_change_mib: f64,
    cpu_seconds: f64,
    change_cpu_seconds: f64,
    bench_change_cpu_seconds: f64,
    agents_change_cpu_seconds: f64,
    log: Option<WriteLog>,
    /// The control plane's CPU seconds (API server, etcd, controller-manager) during the
    /// measured change and during the faster round of the floor with reports; `None` on a
    /// cluster the bench did not start.
    control_plane_change_cpu: Option<ControlPlaneCpu>,
    control_plane_floor_cpu: Option<ControlPlaneCpu>,
    /// The requests the API server served and the watch events it sent during the
    /// measured change (from its /metrics).
    api_server_work: Vec<(String, f64)>,
    /// Reconciles during the measured change, and the seconds they took in all (the
    /// operator's reconcile-duration histogram).
    reconciles: Option<(f64, f64)>,
    steady: Steady,
}

/// The operator while an incident holds: every pod's agent reporting its queue.
struct Steady {
    reports_per_second: f64,
    /// The operator's CPU seconds per second.
    cores: f64,
    /// Reconciles per second, and the seconds each took on average.
    reconciles: Option<(f64, f64)>,
}

/// What the operator's log says about the measured change.
struct WriteLog {
    /// Syncs that wrote targets, and their writes in all.
    syncs: usize,
    writes: usize,
    /// The sync with the most writes: from the new generation reaching the bench's watch
    /// to its writes starting, and how long its writes took.
    before_writes: Duration,
    writing: Duration,
    /// From that sync's writes ending to the last document reaching the bench's watch.
    after_writes: Duration,
}

#[tokio::main(worker_threads = 4)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10 100 1000 5000".into())
        .split_whitespace()
        .map(|s| s.parse().expect("BENCH_SIZES holds numbers"))
        .collect();
    let world = World::get();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        eprintln!("[bench] {size} targets");
        let (row, namespace) = run(world, size).await;
        rows.push(row);
        // The namespace is being deleted (kube-controller-manager's namespace controller
        // removes every Deployment, ReplicaSet, Pod and ConfigMap in it). A size must not
        // be measured while the previous one's thousands of deletions load the API server:
        // wait until it is gone unless this was the last size.
        if i + 1 < sizes.len() {
            wait_namespace_gone(world, &namespace, size).await;
        }
    }
    let wall = started.elapsed();
    print_tables(&rows);
    println!();
    println!(
        "fleet bench wall time: {:.0} s (sizes {})",
        wall.as_secs_f64(),
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

async fn run(world: &'static World, size: usize) -> (Row, String) {
    let ns = TestNamespace::new(world, &format!("bench-{size}"));
    let client = world.admin().await;
    let created = Instant::now();
    create_fleet(&client, &ns.name, size).await;
    let fleet_created = created.elapsed();
    eprintln!(
        "[bench] {size} targets: fleet created in {:.1} s",
        fleet_created.as_secs_f64()
    );

    let operator = Operator::start(world, &ns.name).await;
    let agents = Agents::start(world, &ns.name);
    // The measuring watches have a connection of their own.
    let watching = world.admin().await;
    let incident = IncidentWatch::start(&watching, &ns.name, size).await;
    let documents = DocumentWatch::start(&watching, &ns.name).await;

    let rss_caches_filled_mib = caches_filled(&operator)
        .await
        .then(|| current_rss_mib(operator.pid()));

    // Warm-up: the incident is declared and every target applies it.
    apply_incident(world, &ns.name, "TempFail", "").await;
    incident.wait_ready(1, timeout(size)).await;
    documents
        .wait_complete("TempFail", size, timeout(size))
        .await;

    wait_control_plane_quiet(timeout(size)).await;

    // Measured: a mode change, from `kubectl apply` (and from its new generation stored)
    // to every document, then to Ready.
    let log_offset = operator.log().len();
    let (_, cpu_before) = process_usage(operator.pid());
    let rss_before_change_mib = current_rss_mib(operator.pid());
    let bench_cpu_before = self_cpu_seconds();
    let agents_cpu_before = Agents::cpu_seconds();
    let reconciles_before = reconcile_metrics(&operator).await;
    let start = Instant::now();
    let start_wall = SystemTime::now();
    let kubectl_apply = apply_incident(
        world,
        &ns.name,
        "HardReject",
        "\n  hardReject: {acknowledgeBounces: true}",
    )
    .await;
    let stored = incident.wait_generation(2, timeout(size)).await;
    // From the new generation stored, as "stored →": kubectl's discovery and its OpenAPI
    // download are not the operator's work.
    let control_plane_before = ControlPlaneCpu::now();
    let api_server_before = api_server_counters(&client).await;
    let documents_done = documents
        .wait_complete("HardReject", size, timeout(size))
        .await;
    let ready = incident.wait_ready(2, timeout(size)).await;
    let control_plane_change_cpu = ControlPlaneCpu::since(control_plane_before);
    let api_server_work =
        counter_increments(&api_server_before, &api_server_counters(&client).await);
    let (peak_rss_mib, cpu_seconds) = process_usage(operator.pid());
    let bench_change_cpu_seconds = self_cpu_seconds() - bench_cpu_before;
    let agents_change_cpu_seconds = Agents::cpu_seconds() - agents_cpu_before;
    let reconciles = reconciles_since(&operator, reconciles_before).await;
    let stored_wall = start_wall + (stored - start);
    let documents_wall = start_wall + (documents_done - start);
    let log = write_log(
        &operator.log()[log_offset..],
        &ns.name,
        stored_wall,
        documents_wall,
    );
    // The fake agents would answer the queue reports below by rewriting their bare entries.
    drop(agents);
    let steady = steady_state(&client, &ns.name, &operator).await;
    if let Some(dir) = std::env::var_os("BENCH_LOG_DIR") {
        std::fs::create_dir_all(&dir).expect("BENCH_LOG_DIR made");
        let path = std::path::Path::new(&dir).join(format!("operator-{size}.log"));
        std::fs::write(&path, operator.log()).expect("operator log kept");
    }
    drop(operator);
    // Nothing of the bench's own but the floor and the loop runs from here on.
    drop((incident, documents));

    let (kubectl_loop, kubectl_loop_sampled) = if size > KUBECTL_LOOP_MAX {
        let sample = KUBECTL_LOOP_SAMPLE.min(size);
        let elapsed = kubectl_patch_loop(world, &ns.name, sample);
        (elapsed.mul_f64(size as f64 / sample as f64), Some(sample))
    } else {
        (kubectl_patch_loop(world, &ns.name, size), None)
    };
    let (floor, floor_concurrency) = floor(&client, &ns.name, size).await;
    let (floor_with_reports, control_plane_floor_cpu) =
        documents_and_reports_floor(&client, &ns.name, size, false).await;
    let (floor_with_watches, _) = documents_and_reports_floor(&client, &ns.name, size, true).await;
    // With the operator gone nothing would remove its finalizer from the incident, and
    // the namespace would stay Terminating for ever: drop it so the namespace can go.
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    let no_finalizers = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    incidents
        .patch("bench", &PatchParams::default(), &no_finalizers)
        .await
        .expect("remove the incident's finalizers");
    let row = Row {
        targets: size,
        fleet_created,
        kubectl_apply,
        stored_after: stored - start,
        documents_from_apply: documents_done - start,
        documents_from_stored: documents_done - stored,
        ready_from_apply: ready - start,
        ready_from_stored: ready - stored,
        kubectl_loop,
        kubectl_loop_sampled,
        floor,
        floor_concurrency,
        floor_with_reports,
        floor_with_watches,
        peak_rss_mib,
        rss_caches_filled_mib,
        rss_before_change_mib,
        cpu_seconds,
        change_cpu_seconds: cpu_seconds - cpu_before,
        bench_change_cpu_seconds,
        agents_change_cpu_seconds,
        log,
        control_plane_change_cpu,
        control_plane_floor_cpu,
        api_server_work,
        reconciles,
        steady,
    };
    (row, ns.name.clone())
}

fn timeout(size: usize) -> Duration {
    BASE_TIMEOUT + TIMEOUT_PER_TARGET * size as u32
}

/// N Deployments labelled as MTAs with one pod each, and N ConfigMaps for the references
/// to patch; waits until kube-controller-manager has created every pod (a ReplicaSet and
/// a Pod per Deployment, at its `--kube-api-qps`; about a minute or two at 5000).
async fn create_fleet(client: &Client, namespace: &str, size: usize) {
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
async fn wait_namespace_gone(world: &World, namespace: &str, size: usize) {
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
async fn apply_incident(
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

/// The fake agents of one namespace, on a runtime of their own (threads named
/// `AGENT_THREADS`, whose CPU time the bench reads) with a client of their own. Stopped,
/// every task of theirs with them, when dropped.
struct Agents {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const AGENT_THREADS: &str = "fake-agents";

impl Agents {
    fn start(world: &'static World, namespace: &str) -> Self {
        let namespace = namespace.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(AGENT_THREADS)
                .enable_all()
                .build()
                .expect("the fake agents' runtime");
            runtime.block_on(async move {
                let client = world.admin().await;
                let _agents =
                    mail_incident_e2e_support::fakes::FakeAgents::start(client, &namespace).await;
                stopped.await.ok();
            });
            // Dropping the runtime ends the tasks the agents spawned for their watches.
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// CPU seconds the agents' runtime threads have used.
    fn cpu_seconds() -> f64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0.0;
        };
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == AGENT_THREADS)
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .map(|stat| cpu_seconds_of(&stat))
            .sum()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop.take().map(|stop| stop.send(()));
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// Waits (20 s at most) for the operator to log that its caches are filled; false if it
/// did not say so.
async fn caches_filled(operator: &Operator) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if operator.log().contains("caches filled") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The operator's reconciles so far and the seconds they took in all, from its /metrics;
/// None if it does not say.
async fn reconcile_metrics(operator: &Operator) -> Option<(f64, f64)> {
    let (_, metrics) =
        mail_incident_e2e_support::world::http_get(&format!("{}/metrics", operator.http)).await?;
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    Some((
        value("mail_incident_reconcile_duration_seconds_count")?,
        value("mail_incident_reconcile_duration_seconds_sum")?,
    ))
}

/// The reconciles since `before` (from [`reconcile_metrics`]) and the seconds they took.
async fn reconciles_since(operator: &Operator, before: Option<(f64, f64)>) -> Option<(f64, f64)> {
    let ((n0, s0), (n1, s1)) = (before?, reconcile_metrics(operator).await?);
    Some((n1 - n0, s1 - s0))
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When the bench's watch on the incident first delivered each generation, and when it
/// first showed Ready for each generation with every target counted. The instants are
/// taken as each event arrives, so a waiter that looks later still gets the event's time.
#[derive(Default)]
struct IncidentSeen {
    generation: BTreeMap<i64, Instant>,
    ready: BTreeMap<i64, Instant>,
}

struct IncidentWatch {
    seen: watch::Receiver<IncidentSeen>,
    _task: AbortOnDrop,
}

impl IncidentWatch {
    async fn start(client: &Client, namespace: &str, size: usize) -> Self {
        let incidents: Api<MailIncident> = Api::namespaced(client.clone(), namespace);
        let (sender, seen) = watch::channel(IncidentSeen::default());
        let summary = format!("{size}/{size}");
        let events = watcher(
            incidents,
            watcher::Config::default().fields("metadata.name=bench"),
        )
        .default_backoff();
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let (Ok(watcher::Event::Apply(incident)) | Ok(watcher::Event::InitApply(incident))) =
                    event
                else {
                    continue;
                };
                let now = Instant::now();
                let generation = incident.metadata.generation.unwrap_or_default();
                let status = incident.status.unwrap_or_default();
                let ready = status.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.reason == "Applied"
                        && c.observed_generation == Some(generation)
                }) && status.targets.is_some_and(|t| t.summary == summary);
                sender.send_modify(|seen| {
                    seen.generation.entry(generation).or_insert(now);
                    if ready {
                        seen.ready.entry(generation).or_insert(now);
                    }
                });
            }
        });
        Self {
            seen,
            _task: AbortOnDrop(task),
        }
    }

    async fn wait_generation(&self, generation: i64, limit: Duration) -> Instant {
        self.wait(limit, "the new generation", |s| {
            s.generation.get(&generation).copied()
        })
        .await
    }

    async fn wait_ready(&self, generation: i64, limit: Duration) -> Instant {
        self.wait(limit, "Ready", |s| s.ready.get(&generation).copied())
            .await
    }

    async fn wait(
        &self,
        limit: Duration,
        what: &str,
        found: impl Fn(&IncidentSeen) -> Option<Instant>,
    ) -> Instant {
        let mut seen = self.seen.clone();
        let waited = tokio::time::timeout(limit, seen.wait_for(|s| found(s).is_some())).await;
        let seen = waited
            .unwrap_or_else(|_| panic!("incident: no {what} within {limit:?}"))
            .expect("incident watch running");
        found(&seen).expect("found")
    }
}

/// The mode each mode document carries, by a watch, and when each mode was first carried
/// by a given number of documents: waiting on it puts no load on the API server, and the
/// time is that of the event completing the count.
#[derive(Default)]
struct DocumentsSeen {
    /// The document's mode, by name.
    modes: HashMap<String, String>,
    /// Documents by mode.
    counts: HashMap<String, usize>,
    /// (mode, count) → when that many documents first carried the mode.
    reached: HashMap<(String, usize), Instant>,
    listed: bool,
}

impl DocumentsSeen {
    fn set(&mut self, name: String, mode: Option<String>, now: Instant) {
        if let Some(old) = self.modes.remove(&name) {
            *self.counts.entry(old).or_default() -= 1;
        }
        if let Some(mode) = mode {
            let count = self.counts.entry(mode.clone()).or_default();
            *count += 1;
            self.reached.entry((mode.clone(), *count)).or_insert(now);
            self.modes.insert(name, mode);
        }
    }
}

struct DocumentWatch {
    seen: watch::Receiver<DocumentsSeen>,
    _task: AbortOnDrop,
}

impl DocumentWatch {
    async fn start(client: &Client, namespace: &str) -> Self {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}"));
        let events = watcher(config_maps, config).default_backoff();
        let (sender, mut seen) = watch::channel(DocumentsSeen::default());
        let task = tokio::spawn(async move {
            futures::pin_mut!(events);
            let mut relisted: Vec<(String, Option<String>)> = Vec::new();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(c)) => {
                        sender.send_modify(|s| s.set(c.name_any(), mode_of(&c), now));
                    }
                    Ok(watcher::Event::Delete(c)) => {
                        sender.send_modify(|s| s.set(c.name_any(), None, now));
                    }
                    Ok(watcher::Event::Init) => relisted.clear(),
                    Ok(watcher::Event::InitApply(c)) => relisted.push((c.name_any(), mode_of(&c))),
                    Ok(watcher::Event::InitDone) => sender.send_modify(|s| {
                        let names: Vec<String> = s.modes.keys().cloned().collect();
                        for name in names {
                            s.set(name, None, now);
                        }
                        for (name, mode) in relisted.drain(..) {
                            s.set(name, mode, now);
                        }
                        s.listed = true;
                    }),
                    Err(_) => {}
                }
            }
        });
        seen.wait_for(|s| s.listed)
            .await
            .expect("document watch lists");
        Self {
            seen,
            _task: AbortOnDrop(task),
        }
    }

    async fn wait_complete(&self, mode: &str, size: usize, limit: Duration) -> Instant {
        let key = (mode.to_string(), size);
        let mut seen = self.seen.clone();
        let waited =
            tokio::time::timeout(limit, seen.wait_for(|s| s.reached.contains_key(&key))).await;
        let seen = waited
            .unwrap_or_else(|_| {
                let counts = self.seen.borrow().counts.clone();
                panic!("documents: not {size} in {mode} within {limit:?}: {counts:?}")
            })
            .expect("document watch running");
        seen.reached[&key]
    }
}

/// The mode of a document's first rule (the most severe; the benchmark's one incident
/// covers every recipient, so it is the only rule).
fn mode_of(document: &ConfigMap) -> Option<String> {
    let json = document.data.as_ref()?.get(MODE_DOCUMENT_KEY)?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(
        value
            .get("rules")?
            .get(0)?
            .get("mode")?
            .as_str()?
            .to_string(),
    )
}

/// What an SRE does by hand: one `kubectl patch` per target, one after the other, here
/// over the first `count` targets.
fn kubectl_patch_loop(world: &World, namespace: &str, count: usize) -> Duration {
    let start = Instant::now();
    for i in 0..count {
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
        patch_documents(&config_maps, size, &round.to_string(), concurrency).await;
        let elapsed = start.elapsed();
        if elapsed < best.0 {
            best = (elapsed, concurrency);
        }
    }
    best
}

/// One mode-document-sized merge PATCH of each of the `size` floor ConfigMaps, marked
/// with `round` so that every one changes, `concurrency` in flight.
async fn patch_documents(
    config_maps: &Api<ConfigMap>,
    size: usize,
    round: &str,
    concurrency: usize,
) {
    stream::iter(0..size)
        .map(|i| async move {
            let document = format!(
                "{{\"round\": \"{round}\", \"padding\": \"{}\"}}",
                "x".repeat(600)
            );
            let patch = Patch::Merge(json!({"data": {"mode.json": document}}));
            config_maps
                .patch(&format!("manual-{i:04}"), &PatchParams::default(), &patch)
                .await
                .expect("patch");
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// The floor with the agents' load: N document-sized PATCHes (as in [`floor`]) and, at
/// the same time, one PATCH of each target's report (what the agents send while the
/// operator writes), each stream with `WRITE_CONCURRENCY` in flight like the operator's
/// writes and the fake agents' reports. The request count of a mode change on an idle
/// server, without the watch deliveries, or (`watched`) with as many as a change makes
/// besides the garbage collector's (see [`watches_like_a_change`]). The faster of two
/// rounds (the first also opens the connections), with the control plane's CPU in it.
async fn documents_and_reports_floor(
    client: &Client,
    namespace: &str,
    size: usize,
    watched: bool,
) -> (Duration, Option<ControlPlaneCpu>) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let reports: Vec<String> = config_maps
        .list_metadata(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_REPORT}")))
        .await
        .expect("list the reports")
        .items
        .into_iter()
        .map(|report| report.name_any())
        .collect();
    assert_eq!(reports.len(), size, "one report per target");
    let _watches = if watched {
        watches_like_a_change(client, namespace).await
    } else {
        Vec::new()
    };
    let mut best = (Duration::MAX, None);
    for round in 0..2 {
        let before = ControlPlaneCpu::now();
        let label = format!("{round} {watched}");
        let elapsed = documents_and_reports(&config_maps, size, &reports, &label).await;
        if elapsed < best.0 {
            best = (elapsed, ControlPlaneCpu::since(before));
        }
    }
    best
}

/// Watches that receive what a change sends the operator (every document and report), the
/// fake agents (every ConfigMap) and the bench (every document): two over every ConfigMap
/// of the namespace and one over the floor's, each drained as it comes, until dropped.
async fn watches_like_a_change(client: &Client, namespace: &str) -> Vec<AbortOnDrop> {
    let mut watches = Vec::new();
    for labels in ["", FLOOR_LABEL, ""] {
        let config_maps: Api<PartialObjectMeta<ConfigMap>> =
            Api::namespaced(client.clone(), namespace);
        let events =
            watcher(config_maps, watcher::Config::default().labels(labels)).default_backoff();
        let (listed, mut listed_rx) = watch::channel(false);
        watches.push(AbortOnDrop(tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    listed.send_replace(true);
                }
            }
        })));
        listed_rx
            .wait_for(|l| *l)
            .await
            .expect("a floor watch lists");
    }
    watches
}

async fn documents_and_reports(
    config_maps: &Api<ConfigMap>,
    size: usize,
    reports: &[String],
    round: &str,
) -> Duration {
    let label = format!("reports {round}");
    let start = Instant::now();
    let documents = patch_documents(config_maps, size, &label, WRITE_CONCURRENCY);
    let reports = stream::iter(reports)
        .map(|report| {
            let config_maps = config_maps.clone();
            async move {
                let patch =
                    Patch::Merge(json!({"data": {"bench": format!("{{\"hash\": \"{round}\"}}")}}));
                config_maps
                    .patch(report, &PatchParams::default(), &patch)
                    .await
                    .expect("patch a report");
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect::<Vec<()>>();
    futures::join!(documents, reports);
    start.elapsed()
}

/// Reads, from the operator's log lines of the measured window, its syncs that wrote
/// targets ("targets written", with writes= and elapsed_ms=). None if
/// the log says nothing usable (its format is the operator's business, not the bench's).
fn write_log(
    log: &str,
    namespace: &str,
    stored: SystemTime,
    documents: SystemTime,
) -> Option<WriteLog> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(&format!(" {key}="))? + key.len() + 2..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut syncs = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains(namespace) && l.contains("targets written"))
    {
        let at: Timestamp = line.split_whitespace().next()?.parse().ok()?;
        let at = SystemTime::from(at);
        syncs.push((at, field(line, "writes")?, field(line, "elapsed_ms")?));
    }
    let &(end, _, elapsed_ms) = syncs.iter().max_by_key(|(_, writes, _)| *writes)?;
    let writing = Duration::from_millis(elapsed_ms);
    let since = |later: SystemTime, earlier: SystemTime| {
        later.duration_since(earlier).unwrap_or(Duration::ZERO)
    };
    Some(WriteLog {
        syncs: syncs.len(),
        writes: syncs.iter().map(|(_, w, _)| *w as usize).sum(),
        before_writes: since(end - writing, stored),
        writing,
        after_writes: since(documents, end),
    })
}

/// The operator's peak resident memory (MiB) and CPU time (user + system seconds) since it
/// started, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let peak_kib = status_kib(pid, "VmHWM:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    (peak_kib / 1024.0, cpu_seconds_of(&stat))
}

fn current_rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

fn status_kib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/PID/status"))
}

/// How often agents report their queue while a mode is applied (`--report-seconds`'s
/// default), and how long the bench plays that.
const REPORT_PERIOD: Duration = Duration::from_secs(30);
const STEADY_FOR: Duration = Duration::from_secs(10);

/// Plays every pod's agent reporting a changed queue once per [`REPORT_PERIOD`], spread
/// evenly, for [`STEADY_FOR`], and measures what the operator spends on it.
async fn steady_state(client: &Client, namespace: &str, operator: &Operator) -> Steady {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let reports = config_maps
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_REPORT}")))
        .await
        .expect("list the reports");
    let entries: Vec<(String, String, String)> = reports
        .items
        .iter()
        .flat_map(|report| {
            let name = report.name_any();
            report.data.iter().flatten().filter_map(move |(pod, text)| {
                let entry: AgentReport = serde_json::from_str(text).ok()?;
                Some((name.clone(), pod.clone(), entry.hash))
            })
        })
        .collect();
    assert!(!entries.is_empty(), "the agents have reported");
    let every = REPORT_PERIOD / u32::try_from(entries.len()).expect("entries fit u32");
    let count = (STEADY_FOR.as_secs_f64() / every.as_secs_f64()) as usize;
    let (_, cpu_before) = process_usage(operator.pid());
    let reconciles_before = reconcile_metrics(operator).await;
    let start = tokio::time::Instant::now();
    stream::iter(entries.iter().cycle().take(count).enumerate())
        .for_each_concurrent(WRITE_CONCURRENCY, |(i, (report, pod, hash))| {
            let config_maps = config_maps.clone();
            async move {
                tokio::time::sleep_until(start + every * u32::try_from(i).expect("fits")).await;
                let entry = AgentReport {
                    hash: hash.clone(),
                    after: None,
                    queue: Some(QueueFigures {
                        messages: i as u64 + 1,
                        oldest_age_seconds: 600,
                        ..QueueFigures::default()
                    }),
                    drift: None,
                };
                let text = serde_json::to_string(&entry).expect("a report entry");
                let patch = Patch::Merge(json!({"data": {pod: text}}));
                config_maps
                    .patch(report, &PatchParams::default(), &patch)
                    .await
                    .expect("patch a report");
            }
        })
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let (_, cpu_after) = process_usage(operator.pid());
    let reconciles = reconciles_since(operator, reconciles_before)
        .await
        .filter(|(count, _)| *count > 0.0)
        .map(|(count, seconds)| (count / elapsed, seconds / count));
    Steady {
        reports_per_second: count as f64 / elapsed,
        cores: (cpu_after - cpu_before) / elapsed,
        reconciles,
    }
}

/// The API server's request and watch-event counters: requests by verb, resource and
/// subresource (any code), watch events sent by kind.
async fn api_server_counters(client: &Client) -> HashMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET of /metrics");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    let mut counters = HashMap::new();
    for line in text.lines() {
        let (key, labels) = if let Some(rest) = line.strip_prefix("apiserver_request_total{") {
            (["verb", "resource", "subresource"], rest)
        } else if let Some(rest) = line.strip_prefix("apiserver_watch_events_total{") {
            (["kind", "", ""], rest)
        } else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let name = if key[1].is_empty() {
            format!("watch event {}", label(key[0]))
        } else {
            let subresource = label(key[2]);
            let resource = label(key[1]);
            let resource = if subresource.is_empty() {
                resource
            } else {
                format!("{resource}/{subresource}")
            };
            format!("{} {resource}", label(key[0]))
        };
        *counters.entry(name).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    counters
}

/// The counters that grew from `before` to `after`, by how much, largest first.
fn counter_increments(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut grown: Vec<(String, f64)> = after
        .iter()
        .map(|(name, value)| (name.clone(), value - before.get(name).unwrap_or(&0.0)))
        .filter(|(_, increment)| *increment >= 1.0)
        .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    grown
}

/// The bench process's own CPU seconds (fake agents, watches, floor client).
fn self_cpu_seconds() -> f64 {
    cpu_seconds_of(&std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat"))
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn print_tables(rows: &[Row]) {
    println!();
    println!("Mode change TempFail → HardReject, N target Deployments (one pod each):");
    println!(
        "\"apply →\" counts from just before `kubectl apply` starts; \"stored →\" from the new \
         generation reaching a watch (the operator's own cost). The floor: N raw concurrent \
         merge PATCHes by the bench (best of {FLOOR_CONCURRENCY:?} at once). The floor \
         with reports: those N PATCHes and, at the same time, one PATCH of each target's \
         report, as the agents send during a change ({WRITE_CONCURRENCY} + \
         {WRITE_CONCURRENCY} in flight): the requests of a mode change, on an idle server. \
         The floor with watches: the same, with the watch deliveries of a change (two \
         watches over every ConfigMap, one over the floor's): a change's API server work \
         without the operator, the agents' logic and the bench's own."
    );
    println!();
    println!(
        "| targets | apply → documents | stored → documents | apply → Ready | stored → Ready | kubectl patch loop | raw PATCH floor | documents / floor (stored) | Ready / floor (stored) | floor with reports | documents / floor with reports | Ready / floor with reports | floor with watches | documents / floor with watches | Ready / floor with watches | peak RSS | CPU |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let kubectl_loop = match r.kubectl_loop_sampled {
            None => secs(r.kubectl_loop),
            Some(sample) => format!(
                "not run (~{:.0} s extrapolated from {sample})",
                r.kubectl_loop.as_secs_f64()
            ),
        };
        let floor = r.floor.as_secs_f64();
        let with_reports = r.floor_with_reports.as_secs_f64();
        let with_watches = r.floor_with_watches.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} (x{}) | {:.2}x | {:.2}x | {} | {:.2}x | {:.2}x | {} | {:.2}x | {:.2}x | {:.1} MiB | {:.2} s |",
            r.targets,
            secs(r.documents_from_apply),
            secs(r.documents_from_stored),
            secs(r.ready_from_apply),
            secs(r.ready_from_stored),
            kubectl_loop,
            secs(r.floor),
            r.floor_concurrency,
            r.documents_from_stored.as_secs_f64() / floor,
            r.ready_from_stored.as_secs_f64() / floor,
            secs(r.floor_with_reports),
            r.documents_from_stored.as_secs_f64() / with_reports,
            r.ready_from_stored.as_secs_f64() / with_reports,
            secs(r.floor_with_watches),
            r.documents_from_stored.as_secs_f64() / with_watches,
            r.ready_from_stored.as_secs_f64() / with_watches,
            r.peak_rss_mib,
            r.cpu_seconds,
        );
    }

    let Some(first) = rows.first() else { return };
    println!();
    println!(
        "Growth from {} targets (x: times the smallest size's value; per target: the increment \
         between this size and the previous one, divided by the targets added):",
        first.targets
    );
    println!();
    println!(
        "| targets | stored → documents | x | ms / target | floor ms / target | stored → Ready | x | ms / target | peak RSS | x | MiB / 1000 targets | RSS, caches filled: MiB / 1000 targets | CPU (whole run) | ms / target | CPU of the change | ms / target |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut previous: Option<&Row> = None;
    for r in rows {
        let ratio = |a: f64, b: f64| format!("x{:.1}", a / b);
        let per = |f: &dyn Fn(&Row) -> f64, scale: f64| match previous {
            Some(p) if r.targets > p.targets => {
                let increment = (f(r) - f(p)) / (r.targets - p.targets) as f64 * scale;
                if increment.is_finite() {
                    format!("{increment:.3}")
                } else {
                    "n/a".to_string()
                }
            }
            _ => "—".to_string(),
        };
        let documents = |r: &Row| r.documents_from_stored.as_secs_f64();
        let ready = |r: &Row| r.ready_from_stored.as_secs_f64();
        let floor = |r: &Row| r.floor.as_secs_f64();
        let rss = |r: &Row| r.peak_rss_mib;
        let rss_filled = |r: &Row| r.rss_caches_filled_mib.unwrap_or(f64::NAN);
        let cpu = |r: &Row| r.cpu_seconds;
        let change_cpu = |r: &Row| r.change_cpu_seconds;
        println!(
            "| {} | {:.3} s | {} | {} | {} | {:.3} s | {} | {} | {:.1} MiB | {} | {} | {} | {:.2} s | {} | {:.2} s | {} |",
            r.targets,
            documents(r),
            ratio(documents(r), documents(first)),
            per(&documents, 1000.0),
            per(&floor, 1000.0),
            ready(r),
            ratio(ready(r), ready(first)),
            per(&ready, 1000.0),
            rss(r),
            ratio(rss(r), rss(first)),
            per(&rss, 1000.0),
            per(&rss_filled, 1000.0),
            cpu(r),
            per(&cpu, 1000.0),
            change_cpu(r),
            per(&change_cpu, 1000.0),
        );
        previous = Some(r);
    }

    println!();
    println!(
        "Where the time goes (the operator's log: the sync that wrote the most documents; \
         \"stored\" is when the new generation reached the bench's watch):"
    );
    println!();
    println!(
        "| targets | fleet created | kubectl apply ran | apply → stored | stored → writes start | writes (log) | writes end → last document seen | syncs writing / writes | reconciles / their seconds | documents → Ready | RSS: caches filled / before change | bench CPU in change (fake agents) | API server / etcd / controller-manager CPU: change | the same: floor with reports |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let log = match &r.log {
            Some(l) => format!(
                "{} | {} | {} | {} / {}",
                secs(l.before_writes),
                secs(l.writing),
                secs(l.after_writes),
                l.syncs,
                l.writes,
            ),
            None => "n/a | n/a | n/a | n/a".to_string(),
        };
        let reconciles = r.reconciles.map_or_else(
            || "n/a".to_string(),
            |(count, seconds)| format!("{count:.0} / {seconds:.2} s"),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {:.1} MiB | {:.2} s ({:.2} s) | {} | {} |",
            r.targets,
            secs(r.fleet_created),
            secs(r.kubectl_apply),
            secs(r.stored_after),
            log,
            reconciles,
            secs(r.ready_from_stored - r.documents_from_stored),
            r.rss_caches_filled_mib
                .map_or_else(|| "n/a".to_string(), |m| format!("{m:.1}")),
            r.rss_before_change_mib,
            r.bench_change_cpu_seconds,
            r.agents_change_cpu_seconds,
            ControlPlaneCpu::show(r.control_plane_change_cpu),
            ControlPlaneCpu::show(r.control_plane_floor_cpu),
        );
    }

    println!();
    println!(
        "While the incident holds: every pod's agent reports a changed queue every {} s \
         (`--report-seconds`' default), played for {} s after the change:",
        REPORT_PERIOD.as_secs(),
        STEADY_FOR.as_secs()
    );
    println!();
    println!("| targets | reports / s | operator CPU (cores) | reconciles / s | seconds each |");
    println!("|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.steady;
        let (per_second, each) = s.reconciles.map_or_else(
            || ("n/a".to_string(), "n/a".to_string()),
            |(n, each)| (format!("{n:.1}"), format!("{:.1} ms", each * 1000.0)),
        );
        println!(
            "| {} | {:.1} | {:.3} | {per_second} | {each} |",
            r.targets, s.reports_per_second, s.cores
        );
    }

    println!();
    println!(
        "What the API server did in the measured change, from the new generation stored to \
         Ready (requests by verb and resource, any code; watch events sent, to every \
         watcher: the operator's, the fake agents' and the bench's):"
    );
    println!();
    for r in rows {
        let work: Vec<String> = r
            .api_server_work
            .iter()
            .map(|(name, count)| format!("{name}: {count:.0}"))
            .collect();
        println!("- {} targets: {}", r.targets, work.join(", "));
    }
}
