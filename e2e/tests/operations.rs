//! Operating the operator: its metrics pass promtool, and two replicas share the work
//! safely through a Lease, only the leader writing.

use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event as KubeEvent};
use kube::Api;
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    support::{apply_incident, eventually, observed, ready_because, summary, wait_for},
    world::{OPERATOR_NAMESPACE, Operator, Scene, TestNamespace, World, http_get, lease_name},
};
use mail_incident_operator::api::MailIncident;
use serde_json::json;
use std::{
    io::Write,
    process::{Command, Stdio},
};

use mail_incident_e2e_support::support::Mta;

/// Fails unless `promtool check metrics` finds nothing to say about `body`.
pub fn promtool_check(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus; e2e/install-deps.sh does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

#[tokio::test]
async fn live_metrics_pass_promtool_and_describe_the_fleet() {
    let scene = Scene::start("metrics").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        operator,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    for name in ["a", "b", "c"] {
        Mta::deployment(name, json!({"app": "mta"}))
            .create(client, &ns.name)
            .await;
    }
    // Within the 100 days an incident may last, to the second.
    let expires = k8s_openapi::jiff::Timestamp::now().as_second() + 30 * 86_400;
    let expires_at = k8s_openapi::jiff::Timestamp::from_second(expires).unwrap();
    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!(
            "mode: TempFail\nreason: INC-10\ntargets: {{matchLabels: {{app: mta}}}}\nexpiresAt: '{expires_at}'"
        ),
    );
    wait_for(incidents, "outage", "applied", |i| {
        ready_because("Applied")(i) && summary(i) == Some("3/3")
    })
    .await;

    let (code, body) = http_get(&format!("{}/metrics", operator.http))
        .await
        .expect("/metrics answers");
    assert_eq!(code, 200);
    promtool_check(&body);

    let ns_label = format!("namespace=\"{}\"", ns.name);
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        sample("mail_incident_incidents", &["mode=\"TempFail\""]),
        Some(1.0)
    );
    assert_eq!(
        sample("mail_incident_targets", &[&ns_label, "state=\"matched\""]),
        Some(3.0)
    );
    assert_eq!(
        sample("mail_incident_targets", &[&ns_label, "state=\"applied\""]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            "mail_incident_transitions_total",
            &[&ns_label, "from=\"None\"", "to=\"TempFail\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample("mail_incident_mode", &[&ns_label, "mode=\"TempFail\""]),
        Some(1.0)
    );
    assert_eq!(
        sample("mail_incident_mode", &[&ns_label, "mode=\"Normal\""]),
        Some(0.0)
    );
    assert!(
        sample("mail_incident_created_timestamp_seconds", &[&ns_label])
            .is_some_and(|at| at > 1.6e9)
    );
    assert_eq!(
        sample("mail_incident_expiry_timestamp_seconds", &[&ns_label]),
        Some(expires as f64)
    );
    assert_eq!(
        sample("mail_incident_apply_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert!(sample("mail_incident_reconciles_total", &["result=\"ok\""]).is_some_and(|n| n >= 1.0));
    assert!(sample("process_resident_memory_bytes", &[]).is_some_and(|n| n > 0.0));
}

/// One sample's value in a Prometheus text body.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn two_replicas_share_one_lease_and_only_the_leader_writes() {
    let world = World::get();
    let ns = TestNamespace::new(world, "replicas");
    let client = &world.admin().await;
    let incidents: &Api<MailIncident> = &Api::namespaced(client.clone(), &ns.name);
    let first = Operator::start(world, &ns.name).await;
    let second = Operator::start(world, &ns.name).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let holder = || async {
        leases
            .get(&lease_name(&ns.name))
            .await
            .ok()?
            .spec?
            .holder_identity
    };
    // Both are ready at once (a standby is ready to take over); the first one leads.
    let leader = eventually("a leader", || async { holder().await }).await;
    assert_eq!(leader, first.identity);
    eventually("the leader says so", || async {
        first.log().contains("leading").then_some(())
    })
    .await;

    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-12\ntargets: {matchLabels: {app: mta}}",
    );
    wait_for(incidents, "outage", "applied", |i| {
        observed(i) && summary(i) == Some("1/1")
    })
    .await;

    let metrics = |operator: &Operator| {
        let url = format!("{}/metrics", operator.http);
        async move { http_get(&url).await.expect("/metrics answers").1 }
    };
    let standby = metrics(&second).await;
    assert_eq!(sample(&standby, "mail_incident_leader"), Some(0.0));
    assert_eq!(
        sample(&standby, "mail_incident_reconciles_total"),
        None,
        "the standby reconciled"
    );
    assert_eq!(
        sample(&metrics(&first).await, "mail_incident_leader"),
        Some(1.0)
    );
    assert!(
        second.log().contains("standing by") || !second.log().contains("leading"),
        "{}",
        second.log()
    );

    // The leader dies without releasing the Lease: the standby takes over once it expires.
    let leader_identity = first.identity.clone();
    drop(first);
    let successor = eventually("a new leader", || async {
        holder().await.filter(|h| *h != leader_identity)
    })
    .await;
    assert_eq!(successor, second.identity);
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: AcceptAndQueue\nreason: INC-12 queue\ntargets: {matchLabels: {app: mta}}",
    );
    wait_for(incidents, "outage", "applied by the new leader", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    assert_eq!(
        sample(&metrics(&second).await, "mail_incident_leader"),
        Some(1.0)
    );
}

/// An incident with the longest name Kubernetes takes still gets its events (kube's
/// Recorder would name them past the limit), and one whose selector matches nothing is
/// warned about, once.
#[tokio::test]
async fn events_reach_the_longest_names_and_warn_of_an_incident_without_targets() {
    let scene = Scene::start("events").await;
    let name = "a".repeat(253);
    apply_incident(
        scene.world,
        &scene.ns.name,
        &name,
        "mode: TempFail\nreason: INC-13 typo in the selector\ntargets: {matchLabels: {app: mtaa}}",
    );
    let events: Api<KubeEvent> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    let reasons = || async {
        let listed = events.list(&Default::default()).await.expect("list events");
        let mut reasons: Vec<(String, String)> = listed
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect();
        reasons.sort();
        reasons
    };
    let seen = eventually("the Warning event NoTargets", || async {
        let seen = reasons().await;
        seen.contains(&("Warning".into(), "NoTargets".into()))
            .then_some(seen)
    })
    .await;
    assert!(
        seen.contains(&("Normal".into(), "Accepted".into())),
        "{seen:?}"
    );
    // Warned once: later syncs (a status echo, a new pod) do not repeat it.
    Mta::deployment("unrelated", json!({"app": "webmail"}))
        .create(&scene.client, &scene.ns.name)
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let warnings = reasons()
        .await
        .into_iter()
        .filter(|(_, reason)| reason == "NoTargets")
        .count();
    assert_eq!(
        warnings,
        1,
        "{:?}\n{}",
        reasons().await,
        scene.operator.log()
    );
}
