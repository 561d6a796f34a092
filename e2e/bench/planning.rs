//! Planning one namespace, no cluster: the controller's pure decision for a fleet of
//! targets under scoped incidents, timed over repeated runs. Scopes are compared and
//! documents built once per set of deciding incidents, so the time should follow the
//! number of targets, not targets × domains².
//!
//! `cargo bench --bench planning` (part of `make bench`). Prints one line per case:
//! targets, incidents, domains per scope, and the median and slowest of the runs.

use k8s_openapi::jiff::Timestamp;
use mail_incident_operator::{
    api::MailIncident,
    plan::{Delivery, Namespace, QueueStorage, Target, TargetRef, WorkloadKind, plan},
};
use std::{collections::BTreeMap, time::Instant};

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
        labels: BTreeMap::from([("app".to_string(), "mta".to_string())]),
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
        let fleet: Vec<Target> = (0..targets).map(target).collect();
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
}
