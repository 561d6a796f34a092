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
//!   with; the first floor is kept as the yardstick.
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

mod agents;
mod api_server;
mod floor;
mod kubectl_loop;
mod measure;
mod report;
mod steady;
mod watches;
mod world;

use agents::Agents;
use api_server::{api_server_counters, counter_increments};
use floor::{documents_and_reports_floor, floor};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use mail_incident_e2e_support::{
    control_plane::{ControlPlaneCpu, wait_control_plane_quiet},
    world::{Operator, TestNamespace, World},
};
use mail_incident_operator::api::MailIncident;
use measure::{
    caches_filled, current_rss_mib, process_usage, reconcile_metrics, reconciles_since,
    self_cpu_seconds, write_log,
};
use report::{Row, print_tables};
use serde_json::json;
use std::time::{Instant, SystemTime};
use steady::steady_state;
use watches::{DocumentWatch, IncidentWatch};
use world::{apply_incident, create_fleet, timeout, wait_namespace_gone};

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

    let (kubectl_loop, kubectl_loop_sampled) = kubectl_loop::by_hand(world, &ns.name, size);
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
