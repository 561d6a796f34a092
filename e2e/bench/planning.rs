//! Planning one namespace, no cluster: the controller's pure decision for a fleet of
//! targets under scoped incidents, timed over repeated runs. Scopes are compared and
//! documents built once per set of deciding incidents, so the time should follow the
//! number of targets, not targets × domains².
//!
//! `cargo bench --bench planning` (part of `make bench`). Prints one line per case:
//! targets, incidents, domains per scope, and the median and slowest of the runs.
//!
//! Then the cost of one sync by the size of the fleet, as the controller plans (keeping
//! each target's decision between syncs, [`Planner`]): after one report changes (an agent
//! acknowledges the mode) and after one workload changes (scaled), under one incident
//! selecting every target (the fleet benchmark's case), against planning from scratch.
//! The planner decides one target again; what grows with the fleet is summing up the
//! incident's status over the decisions kept.

use k8s_openapi::jiff::Timestamp;
use mail_incident_operator::{
    api::MailIncident,
    plan::{
        Delivery, Namespace, Plan, Planner, QueueStorage, Target, TargetRef, WorkloadKind, Write,
        plan,
    },
};
use std::{collections::BTreeMap, sync::Arc, time::Instant};

const RUNS: usize = 9;

fn incident(name: &str, created: &str, spec_yaml: &str) -> MailIncident {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec_yaml).expect("spec YAML");
    let mut incident: MailIncident = serde_json::from_value(serde_json::json!({
        "apiVersion": "mailops.dev/v1alpha1",
        "kind": "MailIncident",
        "metadata": {"name": name, "namespace": "mail", "uid": format!("uid-{name}"),
                     "generation": 1, "creationTimestamp": created},
        "spec": spec,
    }))
    .expect("incident");
    // Seen before: planned, not only initialised.
    incident.status = Some(
        serde_json::from_value(serde_json::json!({
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Initializing",
                            "message": "", "lastTransitionTime": created}],
        }))
        .expect("status"),
    );
    incident
}

fn target(index: usize) -> Target {
    Target {
        target: TargetRef {
            kind: WorkloadKind::Deployment,
            name: format!("mta-{index:05}"),
        },
        labels: BTreeMap::from([("app".to_string(), "mta".to_string())]).into(),
        delivery: Delivery::Reload,
        mta: None,
        document_hash: None,
        document_mismatch: None,
        document_owners: vec![],
        report_owned: false,
        template_env: vec![],
        changed_by: None,
        drifts: vec![],
        departed_reports: vec![],
        unreleased_pods: vec![],
        template_hash: None,
        source_incidents: vec![],
        report_exists: false,
        pod_reports: vec![None],
        queues: vec![],
        replicas: 1,
        ready_replicas: 1,
        rollout_complete: true,
        mta_container: Some("mta".into()),
        queue: QueueStorage::Persistent,
    }
}

fn scoped(mode: &str, prefix: &str, domains: usize) -> String {
    let list: Vec<String> = (0..domains)
        .map(|i| format!("'{prefix}{i}.example.it'"))
        .collect();
    let extra = if mode == "HardReject" {
        "\nhardReject: {acknowledgeBounces: true}"
    } else {
        ""
    };
    format!(
        "mode: {mode}\nreason: bench\ntargets: {{matchLabels: {{app: mta}}}}\nscope: {{recipientDomains: [{}, '*.{prefix}.example.it']}}{extra}",
        list.join(", ")
    )
}

fn main() {
    let now: Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
    println!("targets incidents domains_per_scope median_ms slowest_ms");
    for (targets, domains) in [(1000, 10), (1000, 999), (5000, 999)] {
        let incidents = [
            incident(
                "storage",
                "2026-12-06T10:00:00Z",
                &scoped("TempFail", "u", domains),
            ),
            incident(
                "pec",
                "2026-12-06T10:05:00Z",
                &scoped("HardReject", "u", domains / 2),
            ),
            incident(
                "queue",
                "2026-12-06T10:10:00Z",
                "mode: AcceptAndQueue\nreason: bench\ntargets: {matchLabels: {app: mta}}",
            ),
        ];
        let fleet: Vec<Arc<Target>> = (0..targets).map(|i| Arc::new(target(i))).collect();
        let failures = BTreeMap::new();
        let mut times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                let planned = plan(&Namespace {
                    name: "mail",
                    incidents: incidents.iter().collect(),
                    targets: &fleet,
                    write_failures: &failures,
                    orphaned_documents: &[],
                    signing_key: None,
                    now,
                });
                assert_eq!(planned.writes.len(), targets, "one document per target");
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{targets} {} {} {:.1} {:.1}",
            incidents.len(),
            domains + 1,
            times[RUNS / 2],
            times[RUNS - 1]
        );
    }
    per_sync(now);
}

const PER_SYNC_SIZES: [usize; 4] = [10, 100, 1000, 5000];
/// Syncs timed per size and change; the median is printed.
const PER_SYNC_RUNS: usize = 51;
/// One change must cost at 5000 targets at most this many times what it costs at 10.
const PER_SYNC_GROWTH_GOAL: f64 = 10.0;

/// The per-sync cost by size: one incident over the whole fleet, every target settled
/// (its document written, its agent reporting the mode), then one target changes.
fn per_sync(now: Timestamp) {
    let incident = incident(
        "bench",
        "2026-12-06T10:00:00Z",
        "mode: TempFail\nreason: bench\ntargets: {matchLabels: {app: mta}}",
    );
    let failures = BTreeMap::new();
    let namespace = |targets: &[Arc<Target>]| -> Plan {
        Planner::default().plan(&Namespace {
            name: "mail",
            incidents: vec![&incident],
            targets,
            write_failures: &failures,
            orphaned_documents: &[],
            signing_key: None,
            now,
        })
    };
    let mut rows = Vec::new();
    for size in PER_SYNC_SIZES {
        // Settled: every target holds the document planned and reports it applied.
        let mut fleet: Vec<Arc<Target>> = (0..size).map(|i| Arc::new(target(i))).collect();
        let Some(Write::PutDocument { document, .. }) = namespace(&fleet).writes.first().cloned()
        else {
            panic!("a document is planned");
        };
        let hash = document.hash();
        for target in &mut fleet {
            let target = Arc::make_mut(target);
            target.document_hash = Some(hash.clone());
            target.document_owners = vec!["uid-bench".into()];
            target.report_exists = true;
            target.report_owned = true;
            target.source_incidents = vec!["bench".into()];
            target.pod_reports = vec![Some(hash.clone())];
        }
        let mut planner = Planner::default();
        let plan_with = |planner: &mut Planner, fleet: &[Arc<Target>]| {
            planner.plan(&Namespace {
                name: "mail",
                incidents: vec![&incident],
                targets: fleet,
                write_failures: &failures,
                orphaned_documents: &[],
                signing_key: None,
                now,
            })
        };
        let settled = plan_with(&mut planner, &fleet);
        assert!(settled.writes.is_empty(), "the fleet is settled");
        let changed = size / 2;
        let mut time_change = |change: &dyn Fn(&mut Target, usize)| {
            let mut times: Vec<f64> = (0..PER_SYNC_RUNS)
                .map(|run| {
                    change(Arc::make_mut(&mut fleet[changed]), run);
                    let started = Instant::now();
                    plan_with(&mut planner, &fleet);
                    let elapsed = started.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(planner.redecided(), 1, "one target decided again");
                    elapsed
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[PER_SYNC_RUNS / 2]
        };
        // An agent's report flips between applied and pending; a workload is scaled.
        let report = time_change(&|target, run| {
            target.pod_reports = vec![(run % 2 == 0).then(|| "pending".to_string())];
        });
        let workload = time_change(&|target, run| {
            target.replicas = 2 + (run % 2) as i32;
        });
        let mut scratch: Vec<f64> = (0..PER_SYNC_RUNS.min(9))
            .map(|_| {
                let started = Instant::now();
                namespace(&fleet);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        scratch.sort_by(f64::total_cmp);
        rows.push((size, report, workload, scratch[scratch.len() / 2]));
    }
    println!();
    println!(
        "| targets | one report changed (ms) | one workload changed (ms) | from scratch (ms) |"
    );
    println!("|---:|---:|---:|---:|");
    for (size, report, workload, scratch) in &rows {
        println!("| {size} | {report:.3} | {workload:.3} | {scratch:.3} |");
    }
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!();
    println!("| goal | measured | met |");
    println!("|---|---:|---|");
    for (what, small, large) in [
        ("one report", first.1, last.1),
        ("one workload", first.2, last.2),
    ] {
        let growth = large / small;
        println!(
            "| {what} at {} targets ≤ {PER_SYNC_GROWTH_GOAL}x its cost at {} | {growth:.1}x ({large:.3} ms / {small:.3} ms) | {} |",
            last.0,
            first.0,
            if growth <= PER_SYNC_GROWTH_GOAL {
                "yes"
            } else {
                "no"
            }
        );
    }
}
