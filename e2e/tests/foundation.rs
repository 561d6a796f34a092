//! The foundation: the CRD and `deploy/` install on a real API server, kubectl shows what
//! an SRE needs, bad input is refused or stalled with the field named, and the status
//! follows the workloads an incident selects.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use mail_incident_e2e_support::{
    support::{
        Mta, apply_incident, apply_yaml, condition, incident_yaml, mode_document, observed, status,
        summary, wait_for,
    },
    world::{OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, Scene, TestNamespace, World, http_get},
};
use mail_incident_operator::api::{EffectiveMode, MailIncident};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn deploy_installs_a_hardened_operator_with_least_privilege_rbac() {
    let world = World::get();
    let crd = world.kubectl_ok(&[
        "get",
        "crd",
        "mailincidents.mailops.dev",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(crd, "True");

    let client = world.admin().await;
    let deployment = Api::<Deployment>::namespaced(client, OPERATOR_NAMESPACE)
        .get("mail-incident-operator")
        .await
        .expect("deploy/ created the operator Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(OPERATOR_ACCOUNT));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );

    let account = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}");
    let can = |verb: &str, resource: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let output = world.kubectl(
            &[
                "auth",
                "can-i",
                verb,
                resource,
                "--subresource",
                subresource,
                "--all-namespaces",
                "--as",
                &account,
            ],
            None,
        );
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    for (verb, resource) in [
        ("watch", "mailincidents.mailops.dev"),
        ("patch", "mailincidents.mailops.dev"),
        ("patch", "mailincidents.mailops.dev/status"),
        ("list", "deployments.apps"),
        ("watch", "statefulsets.apps"),
        ("patch", "deployments.apps"),
        ("watch", "pods"),
        ("patch", "configmaps"),
        ("delete", "configmaps"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can(verb, resource), "the operator needs {verb} {resource}");
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("delete", "mailincidents.mailops.dev"),
        ("update", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("create", "pods/exec"),
        ("create", "events"),
        ("patch", "leases.coordination.k8s.io"),
    ] {
        assert!(
            !can(verb, resource),
            "the operator must not {verb} {resource} in every namespace"
        );
    }
    let lease = world.kubectl(
        &[
            "auth",
            "can-i",
            "patch",
            "leases.coordination.k8s.io",
            "-n",
            OPERATOR_NAMESPACE,
            "--as",
            &account,
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&lease.stdout).trim(),
        "yes",
        "leader election needs its Lease"
    );
}

#[tokio::test]
async fn kubectl_shows_columns_names_and_docs_for_an_applied_example() {
    let scene = Scene::start("kubectl").await;
    let Scene {
        world,
        ns,
        client,
        incidents: api,
        ..
    } = &scene;
    Mta::deployment("postfix-a", json!({"app.kubernetes.io/component": "mta"}))
        .create(client, &ns.name)
        .await;
    world.kubectl_ok(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/tempfail-incident.yaml"
        ),
    ]);
    wait_for(api, "storage-outage", "counting its target", |i| {
        observed(i) && summary(i) == Some("0/1")
    })
    .await;

    let table = world.kubectl_ok(&["get", "mailinc", "-n", &ns.name]);
    // A column starts where its header does; a cell may hold a space, or be empty.
    let mut lines = table.lines();
    let header_line = lines.next().unwrap();
    let starts: Vec<usize> = header_line
        .char_indices()
        .filter(|&(at, c)| c != ' ' && (at == 0 || header_line.as_bytes()[at - 1] == b' '))
        .map(|(at, _)| at)
        .collect();
    let cells = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let to = starts
                    .get(i + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line.get(from.min(line.len())..to)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let header = cells(header_line);
    assert_eq!(
        header,
        [
            "NAME", "MODE", "SCOPE", "READY", "APPLIED", "STARTS", "EXPIRES", "AGE"
        ]
    );
    let row = cells(lines.next().unwrap());
    assert_eq!(
        &row[..6],
        [
            "storage-outage",
            "TempFail",
            "all recipients",
            "False",
            "0/1",
            ""
        ]
    );
    assert!(row[6].ends_with('Z'), "Expires shows a timestamp: {row:?}");

    let wide = world.kubectl_ok(&[
        "get",
        "mailincidents.mailops.dev",
        "-n",
        &ns.name,
        "-o",
        "wide",
    ]);
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .ends_with("DECLARED BY   CHANGED BY"),
        "{wide}"
    );
    assert!(
        wide.lines()
            .nth(1)
            .unwrap()
            .ends_with("admin         admin"),
        "{wide}"
    );
    assert!(
        wide.contains("INC-2041: mailbox storage cluster unreachable"),
        "{wide}"
    );

    // The `mail` category lists incidents (the same table: the only kind in it).
    let by_category = world.kubectl_ok(&["get", "mail", "-n", &ns.name]);
    assert!(
        by_category.starts_with("NAME") && by_category.contains("storage-outage"),
        "{by_category}"
    );

    let explained = world.kubectl_ok(&["explain", "mailincident.spec.smtpReply.code"]);
    assert!(
        explained.contains("421, 450, 451 or 452 for TempFail"),
        "{explained}"
    );
    let explained = world.kubectl_ok(&["explain", "mailinc.spec.hardReject"]);
    assert!(explained.contains("acknowledgeBounces"), "{explained}");
}

#[tokio::test]
async fn the_api_server_refuses_schema_violations_naming_the_field() {
    let world = World::get();
    let ns = TestNamespace::new(world, "schema");
    let base = "reason: r\ntargets: {matchLabels: {app: mta}}";
    for (spec, field) in [
        (format!("mode: Panic\n{base}"), "spec.mode"),
        (
            "mode: TempFail\ntargets: {matchLabels: {app: mta}}".to_string(),
            "spec.reason",
        ),
        (
            format!("mode: TempFail\n{base}\nsmtpReply: {{code: 999}}"),
            "spec.smtpReply.code",
        ),
        (
            format!("mode: TempFail\n{base}\nsmtpReply: {{enhancedCode: '4.3'}}"),
            "spec.smtpReply.enhancedCode",
        ),
        (
            format!("mode: TempFail\n{base}\nsmtpReply: {{text: \"try\\r\\nRCPT TO:<x>\"}}"),
            "spec.smtpReply.text",
        ),
        (
            format!(
                "mode: TempFail\n{base}\nsmtpReply: {{text: \"{}\"}}",
                "x".repeat(62)
            ),
            "spec.smtpReply.text",
        ),
        (
            format!("mode: TempFail\n{base}\nsmtpReply: {{text: \"closes the map }} early\"}}"),
            "spec.smtpReply.text",
        ),
        (
            format!("mode: AcceptAndQueue\n{base}\nqueue: {{lifetime: 5 days}}"),
            "spec.queue.lifetime",
        ),
        (
            format!("mode: TempFail\n{base}\nduration: 1.5d"),
            "spec.duration",
        ),
        (
            format!("mode: TempFail\n{base}\nexpiresAt: tomorrow"),
            "spec.expiresAt",
        ),
        (
            // A valid date-time the controller could not read: one such object would
            // fail the controller's whole watch.
            format!("mode: TempFail\n{base}\nexpiresAt: '9999-12-31T23:59:59Z'"),
            "spec.expiresAt",
        ),
        (
            "mode: TempFail\nreason: r\ntargets: {matchExpressions: [{key: app, operator: Like}]}"
                .to_string(),
            "operator",
        ),
        (
            format!("mode: TempFail\n{base}\nscope: {{recipientDomains: [PEC.example.it]}}"),
            "spec.scope.recipientDomains",
        ),
        (
            format!("mode: TempFail\n{base}\nscope: {{recipientDomains: ['user@example.it']}}"),
            "spec.scope.recipientDomains",
        ),
        (
            format!("mode: TempFail\n{base}\nscope: {{recipientDomains: [a.it, b.it, a.it]}}"),
            "spec.scope.recipientDomains",
        ),
        (
            format!("mode: TempFail\n{base}\nscope: {{recipientDomains: []}}"),
            "spec.scope.recipientDomains",
        ),
        (
            format!("mode: TempFail\n{base}\nstartsAt: '9999-12-31T23:59:59Z'"),
            "spec.startsAt",
        ),
    ] {
        let yaml = incident_yaml("bad", &spec);
        // A plain `kubectl apply` refuses it (kubectl itself refuses some, by other names).
        let plain = world.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(!plain.status.success(), "kubectl apply accepted:\n{spec}");
        let output = world.kubectl(
            // The server is the judge: without kubectl's own check, it refuses each too.
            &["apply", "--validate=false", "-n", &ns.name, "-f", "-"],
            Some(&yaml),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the API server accepted:\n{spec}");
        assert!(
            stderr.contains(field),
            "rejection of\n{spec}\ndoes not name {field}: {stderr}"
        );
    }
    let listed = world.kubectl_ok(&["get", "mailinc", "-n", &ns.name, "-o", "name"]);
    assert_eq!(listed, "", "nothing invalid was stored");
}

#[tokio::test]
async fn kubectl_apply_refuses_a_misspelt_field_naming_it() {
    let world = World::get();
    let ns = TestNamespace::new(world, "typo");
    let base = "reason: INC-14 storage down\ntargets: {matchLabels: {app: mta}}";
    // Without client-side validation, a 1.20 server prunes unknown fields silently: the
    // second would be stored without its duration, an incident that never expires.
    for (spec, field) in [
        (format!("modee: TempFail\n{base}"), "modee"),
        (format!("mode: TempFail\n{base}\nduraton: 2h"), "duraton"),
        (
            format!("mode: TempFail\n{base}\nsmtpReply: {{code: 451, txet: try later}}"),
            "txet",
        ),
    ] {
        let output = world.kubectl(
            &["apply", "-n", &ns.name, "-f", "-"],
            Some(&incident_yaml("typo", &spec)),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "kubectl apply accepted:\n{spec}");
        assert!(
            stderr.contains(&format!("unknown field \"{field}\"")),
            "the refusal of\n{spec}\ndoes not name {field}: {stderr}"
        );
    }
    let listed = world.kubectl_ok(&["get", "mailinc", "-n", &ns.name, "-o", "name"]);
    assert_eq!(listed, "", "an incident with a misspelt field was stored");

    // The same incident spelt right goes through a plain `kubectl apply`.
    apply_incident(
        world,
        &ns.name,
        "typo",
        &format!("mode: TempFail\n{base}\nduration: 2h"),
    );
    let stored = world.kubectl_ok(&[
        "get",
        "mailinc",
        "typo",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.spec.duration}",
    ]);
    assert_eq!(stored, "2h");
}

/// Waits until incident `name` is Stalled for an invalid spec whose message names
/// `field`, with its mode left alone; the incident as it then is.
async fn stalled_naming(api: &Api<MailIncident>, name: &str, field: &str) -> MailIncident {
    let stalled = wait_for(api, name, "Stalled", |i| {
        observed(i) && condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains(field),
        "{name}: Stalled message does not name {field}: {message}"
    );
    assert_eq!(
        status(&stalled).effective_mode,
        None,
        "{name}: an invalid spec changed the mode"
    );
    stalled
}

#[tokio::test]
async fn the_controller_stalls_cross_field_errors_naming_the_field_then_recovers() {
    let scene = Scene::start("stall").await;
    let Scene {
        world,
        ns,
        client,
        incidents: api,
        ..
    } = &scene;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;

    // Each passes the 1.20 server's schema (it drops CEL rules); kube's client-side CEL
    // evaluation refuses it, and so does the controller.
    let base = "reason: INC-9 storage down\ntargets: {matchLabels: {app: mta}}";
    for (name, spec, field) in [
        (
            "no-ack",
            format!("mode: HardReject\n{base}"),
            "spec.hardReject.acknowledgeBounces",
        ),
        (
            "wrong-class",
            format!("mode: TempFail\n{base}\nsmtpReply: {{code: 550}}"),
            "spec.smtpReply.code",
        ),
        (
            "no-such-user",
            format!(
                "mode: HardReject\n{base}\nhardReject: {{acknowledgeBounces: true}}\nsmtpReply: {{enhancedCode: '5.1.1'}}"
            ),
            "spec.smtpReply.enhancedCode",
        ),
        (
            "too-long",
            format!("mode: AcceptAndQueue\n{base}\nqueue: {{lifetime: 101d}}"),
            "spec.queue.lifetime",
        ),
    ] {
        let yaml = incident_yaml(name, &spec);
        let object: MailIncident = serde_yaml::from_str(&yaml).unwrap();
        assert!(
            object.validate_cel().is_err(),
            "client-side CEL accepted {name}"
        );
        apply_yaml(world, &ns.name, &yaml);
        let stalled = stalled_naming(api, name, field).await;
        assert_eq!(condition(&stalled, "Ready").unwrap().0, "False");
        let described = world.kubectl_ok(&["describe", "mailinc", name, "-n", &ns.name]);
        assert!(
            described.contains("Warning")
                && described.contains("InvalidSpec")
                && described.contains(field),
            "{described}"
        );
    }

    // Fixing the spec clears the stall.
    apply_incident(
        world,
        &ns.name,
        "no-ack",
        &format!("mode: HardReject\n{base}\nhardReject: {{acknowledgeBounces: true}}"),
    );
    let fixed = wait_for(api, "no-ack", "recovered", |i| {
        observed(i) && condition(i, "Stalled").is_some_and(|c| c.0 == "False")
    })
    .await;
    assert_eq!(fixed.metadata.generation, Some(2));
    assert_eq!(
        status(&fixed).effective_mode,
        Some(EffectiveMode::HardReject)
    );
    assert_eq!(summary(&fixed), Some("0/1"));
    let described = world.kubectl_ok(&["describe", "mailinc", "no-ack", "-n", &ns.name]);
    assert!(
        described.contains("Accepted")
            && described.contains("Generation 2 by admin accepted: HardReject"),
        "{described}"
    );
}

#[tokio::test]
async fn incidents_past_the_time_bounds_stall_and_the_operator_serves_the_next_one() {
    let scene = Scene::start("bounds").await;
    let Scene {
        operator,
        world,
        ns,
        client,
        incidents: api,
    } = &scene;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;

    // The 1.20 server drops the CEL rules and stores each of these. The first used to
    // panic the operator (9999999 weeks overflow the creation time), in a loop.
    let base = "reason: INC-13 storage down\ntargets: {matchLabels: {app: mta}}";
    for (name, spec, field) in [
        (
            "forever",
            format!("mode: TempFail\n{base}\nduration: 9999999w"),
            "spec.duration",
        ),
        (
            "centuries",
            format!("mode: TempFail\n{base}\nduration: 999999d"),
            "spec.duration",
        ),
        (
            "far",
            format!("mode: TempFail\n{base}\nexpiresAt: '2999-01-01T00:00:00Z'"),
            "spec.expiresAt",
        ),
    ] {
        apply_incident(world, &ns.name, name, &spec);
        stalled_naming(api, name, field).await;
    }

    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!("mode: TempFail\n{base}\nduration: 100d"),
    );
    let active = wait_for(api, "outage", "active", |i| {
        observed(i) && status(i).effective_mode == Some(EffectiveMode::TempFail)
    })
    .await;
    assert_eq!(
        status(&active).expires_at.clone().expect("expiresAt").0,
        active.metadata.creation_timestamp.clone().unwrap().0 + Duration::from_secs(100 * 86_400)
    );
    let document = mode_document(client, &ns.name, "Deployment", "postfix")
        .await
        .expect("the valid incident's mode document");
    assert_eq!(document.incident_names(), "outage");
    let health = http_get(&format!("{}/healthz", operator.http)).await;
    assert_eq!(health.map(|(code, _)| code), Some(200));
    assert!(!operator.log().contains("panicked"), "{}", operator.log());
}

#[tokio::test]
async fn status_follows_workloads_as_they_come_go_and_change_labels() {
    let scene = Scene::start("targets").await;
    let Scene {
        world,
        ns,
        client,
        incidents: api,
        ..
    } = &scene;

    apply_incident(
        world,
        &ns.name,
        "fleet",
        "mode: AcceptAndQueue\nreason: INC-3 storage degraded\ntargets: {matchLabels: {app: mta}}",
    );
    let none = wait_for(api, "fleet", "without targets", |i| {
        observed(i) && summary(i) == Some("0/0")
    })
    .await;
    assert_eq!(
        condition(&none, "Ready").map(|c| (c.0, c.1)),
        Some(("False", "NoTargets"))
    );

    Mta::deployment("postfix-a", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;
    Mta::deployment("postfix-b", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;
    Mta::statefulset("exim", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;
    Mta::deployment("webmail", json!({"app": "webmail"}))
        .create(client, &ns.name)
        .await;
    let three = wait_for(api, "fleet", "matching 3", |i| summary(i) == Some("0/3")).await;
    assert_eq!(
        condition(&three, "Ready").map(|c| (c.0, c.1)),
        Some(("False", "Applying"))
    );
    assert_eq!(condition(&three, "Reconciling").map(|c| c.0), Some("True"));

    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .delete("postfix-b", &DeleteParams::default())
        .await
        .expect("delete deployment");
    wait_for(api, "fleet", "matching 2 after a delete", |i| {
        summary(i) == Some("0/2")
    })
    .await;

    let relabel = |labels: serde_json::Value| Patch::Merge(json!({"metadata": {"labels": labels}}));
    Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .patch(
            "exim",
            &PatchParams::default(),
            &relabel(json!({"app": "retired"})),
        )
        .await
        .expect("relabel statefulset");
    wait_for(api, "fleet", "matching 1 after a relabel out", |i| {
        summary(i) == Some("0/1")
    })
    .await;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .patch(
            "webmail",
            &PatchParams::default(),
            &relabel(json!({"app": "mta"})),
        )
        .await
        .expect("relabel deployment");
    let last = wait_for(api, "fleet", "matching 2 after a relabel in", |i| {
        summary(i) == Some("0/2")
    })
    .await;
    assert_eq!(status(&last).observed_generation, Some(1));
    let described = world.kubectl_ok(&["describe", "mailinc", "fleet", "-n", &ns.name]);
    assert!(described.contains("TargetsChanged"), "{described}");

    let history = api.get("fleet").await.unwrap();
    assert_eq!(
        status(&history).history.len(),
        1,
        "target changes are not mode transitions"
    );
}

#[tokio::test]
async fn first_status_is_unknown_and_no_status_ever_claims_an_applied_target() {
    let scene = Scene::start("unknown").await;
    let Scene {
        world,
        ns,
        client,
        incidents: api,
        ..
    } = &scene;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;

    let (sender, mut statuses) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(incident)) = stream.next().await {
                if let Some(status) = incident.status {
                    sender.send(status).ok();
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    apply_incident(
        world,
        &ns.name,
        "watched",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}",
    );
    wait_for(api, "watched", "settled", |i| {
        observed(i) && summary(i) == Some("0/1")
    })
    .await;
    watch.abort();

    let mut seen = Vec::new();
    while let Ok(status) = statuses.try_recv() {
        seen.push(status);
    }
    let first = seen.first().expect("the watch saw a status");
    assert_eq!(first.observed_generation, None);
    assert_eq!(first.conditions.len(), 3);
    assert!(
        first.conditions.iter().all(|c| c.status == "Unknown"),
        "{:?}",
        first.conditions
    );
    for status in &seen {
        assert_eq!(
            status.targets.as_ref().map_or(0, |t| t.applied),
            0,
            "a status claimed an applied target"
        );
    }
}

#[tokio::test]
async fn expiry_and_resolution_end_incidents_on_time() {
    let scene = Scene::start("ending").await;
    let Scene {
        world,
        ns,
        client,
        incidents: api,
        ..
    } = &scene;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;

    apply_incident(
        world,
        &ns.name,
        "short",
        "mode: TempFail\nreason: maintenance window\ntargets: {matchLabels: {app: mta}}\nduration: 5s",
    );
    let active = wait_for(api, "short", "active", |i| {
        observed(i) && status(i).effective_mode == Some(EffectiveMode::TempFail)
    })
    .await;
    let expires_at = status(&active)
        .expires_at
        .clone()
        .expect("expiresAt in status")
        .0;
    assert_eq!(
        expires_at,
        active.metadata.creation_timestamp.clone().unwrap().0 + Duration::from_secs(5)
    );

    // Ready again once no target runs the incident's mode any more.
    let ended = wait_for(api, "short", "expired and restored", |i| {
        status(i).effective_mode == Some(EffectiveMode::Normal)
            && condition(i, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&ended, "Ready").map(|c| (c.0, c.1)),
        Some(("True", "Expired"))
    );
    let transition = status(&ended).history.last().unwrap();
    assert_eq!(transition.from, Some(EffectiveMode::TempFail));
    assert!(transition.at.0 >= expires_at, "ended before its expiry");
    assert!(
        transition.at.0 <= expires_at + Duration::from_secs(5),
        "ended at {} for an expiry at {expires_at}: not timed on the expiry",
        transition.at.0
    );

    apply_incident(
        world,
        &ns.name,
        "manual",
        "mode: AcceptAndQueue\nreason: INC-12\ntargets: {matchLabels: {app: mta}}",
    );
    wait_for(api, "manual", "active", |i| {
        observed(i) && status(i).effective_mode == Some(EffectiveMode::AcceptAndQueue)
    })
    .await;
    apply_incident(
        world,
        &ns.name,
        "manual",
        "mode: AcceptAndQueue\nreason: INC-12\ntargets: {matchLabels: {app: mta}}\nresolved: true",
    );
    let resolved = wait_for(api, "manual", "resolved and restored", |i| {
        observed(i)
            && status(i).effective_mode == Some(EffectiveMode::Normal)
            && condition(i, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&resolved, "Ready").map(|c| (c.0, c.1)),
        Some(("True", "Resolved"))
    );
    let modes: Vec<_> = status(&resolved).history.iter().map(|t| t.to).collect();
    assert_eq!(
        modes,
        [EffectiveMode::AcceptAndQueue, EffectiveMode::Normal]
    );
    assert_eq!(
        resolved.name_any(),
        "manual",
        "a resolved incident stays as a record"
    );
}
