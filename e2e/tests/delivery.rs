//! Delivery of modes to MTA workloads, against the real API server: by reload (mode
//! documents acknowledged by agents) and by restart (env vars and a real rollout), with
//! precedence, every way of ending an incident, and the refusals that protect mail.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    support::{
        Mta, Queue, apply_incident, condition, eventually, eventually_within, mode_document,
        observed, ready_because, status, summary, wait_for,
    },
    world::{Operator, Scene, TestNamespace, World},
};
use mail_incident_operator::api::{
    EffectiveMode, MailIncident, Mode,
    mode_document::{MODE_HASH_ANNOTATION, ROLE_DOCUMENT, ROLE_LABEL, document_name},
};
use serde_json::json;
use std::time::Duration;

/// The env vars restart delivery set on a Deployment's MTA container.
async fn restart_env(api: &Api<Deployment>, name: &str) -> Vec<(String, String)> {
    let deployment = api.get(name).await.expect("get deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("MAIL_INCIDENT_"))
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

async fn mode_documents(scene: &Scene) -> Vec<String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    let listed = config_maps
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}")))
        .await
        .expect("list mode documents");
    let mut names: Vec<String> = listed.items.iter().map(|c| c.name_any()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn reload_delivers_each_mode_to_one_and_to_many_targets() {
    let scene = Scene::start("reload").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    Mta::deployment("solo", json!({"group": "solo"}))
        .create(client, &ns.name)
        .await;
    for name in ["in-a", "in-b", "in-c"] {
        Mta::deployment(name, json!({"group": "fleet"}))
            .replicas(2)
            .create(client, &ns.name)
            .await;
    }
    Mta::statefulset("relay", json!({"group": "fleet"}))
        .create(client, &ns.name)
        .await;

    for (mode, extra, code) in [
        (
            "AcceptAndQueue",
            "queue: {lifetime: 30d, bounceLifetime: 30d}",
            452,
        ),
        (
            "TempFail",
            "smtpReply: {code: 451, enhancedCode: '4.3.0'}",
            451,
        ),
        ("HardReject", "hardReject: {acknowledgeBounces: true}", 550),
    ] {
        for (incident, group, count) in [("one", "solo", "1/1"), ("many", "fleet", "4/4")] {
            let spec = format!(
                "mode: {mode}\nreason: INC-1 {mode}\ntargets: {{matchLabels: {{group: {group}}}}}\n{extra}"
            );
            apply_incident(world, &ns.name, incident, &spec);
            let done = wait_for(incidents, incident, &format!("applying {mode}"), |i| {
                ready_because("Applied")(i) && summary(i) == Some(count)
            })
            .await;
            assert_eq!(format!("{:?}", status(&done).effective_mode.unwrap()), mode);
        }
        for (kind, name) in [
            ("Deployment", "solo"),
            ("Deployment", "in-a"),
            ("Deployment", "in-c"),
            ("StatefulSet", "relay"),
        ] {
            let document = mode_document(client, &ns.name, kind, name)
                .await
                .expect("a mode document");
            let rule = document.headline();
            assert_eq!(format!("{:?}", rule.mode), mode, "{kind}/{name}");
            assert_eq!(rule.reply.code, code, "{kind}/{name}");
        }
    }
    let hold = mode_document(client, &ns.name, "Deployment", "in-b")
        .await
        .unwrap();
    assert_eq!(hold.headline().mode, Mode::HardReject);
    assert_eq!(hold.headline().reply.enhanced_code, "5.3.2");
    assert_eq!(hold.headline().incident.name, "many");
    let described = world.kubectl_ok(&["describe", "mailinc", "many", "-n", &ns.name]);
    assert!(
        described.contains("Applied") && described.contains("4/4 targets answer HardReject"),
        "{described}"
    );
}

#[tokio::test]
async fn restart_delivers_each_mode_to_one_and_to_many_targets_then_restores() {
    let scene = Scene::start("restart").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    Mta::deployment("solo", json!({"group": "solo"}))
        .annotate("mailops.dev/delivery", "restart")
        .create(client, &ns.name)
        .await;
    for name in ["edge-a", "edge-b"] {
        Mta::deployment(name, json!({"group": "fleet"}))
            .annotate("mailops.dev/delivery", "restart")
            .replicas(2)
            .create(client, &ns.name)
            .await;
    }
    Mta::statefulset("relay", json!({"group": "fleet"}))
        .annotate("mailops.dev/delivery", "restart")
        .create(client, &ns.name)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    for (mode, extra, code) in [
        ("AcceptAndQueue", "", "452"),
        ("TempFail", "smtpReply: {code: 421}", "421"),
        (
            "HardReject",
            "hardReject: {acknowledgeBounces: true}",
            "550",
        ),
    ] {
        for (incident, group, count) in [("one", "solo", "1/1"), ("many", "fleet", "3/3")] {
            let spec = format!(
                "mode: {mode}\nreason: INC-2 {mode}\ntargets: {{matchLabels: {{group: {group}}}}}\n{extra}"
            );
            apply_incident(world, &ns.name, incident, &spec);
            wait_for(incidents, incident, &format!("rolling out {mode}"), |i| {
                ready_because("Applied")(i) && summary(i) == Some(count)
            })
            .await;
        }
        for name in ["solo", "edge-a", "edge-b"] {
            let env = restart_env(&deployments, name).await;
            assert!(
                env.contains(&("MAIL_INCIDENT_MODE".into(), mode.into())),
                "{name}: {env:?}"
            );
            assert!(
                env.contains(&("MAIL_INCIDENT_REPLY_CODE".into(), code.into())),
                "{name}: {env:?}"
            );
        }
    }
    let deployment = deployments.get("edge-a").await.unwrap();
    let status = deployment.status.clone().unwrap();
    assert_eq!(
        (status.updated_replicas, status.available_replicas),
        (Some(2), Some(2)),
        "rollout complete"
    );
    let template_annotations = deployment
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert!(template_annotations.contains_key(MODE_HASH_ANNOTATION));
    let managers: Vec<(String, String)> = deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("mail-incident-operator".into(), "Apply".into())),
        "{managers:?}"
    );

    for (incident, group) in [("one", "solo"), ("many", "fleet")] {
        let spec = format!(
            "mode: HardReject\nreason: INC-2 over\ntargets: {{matchLabels: {{group: {group}}}}}\nhardReject: {{acknowledgeBounces: true}}\nresolved: true"
        );
        apply_incident(world, &ns.name, incident, &spec);
        wait_for(incidents, incident, "restored", ready_because("Resolved")).await;
    }
    for name in ["solo", "edge-a", "edge-b"] {
        assert_eq!(
            restart_env(&deployments, name).await,
            vec![],
            "{name} keeps incident env vars"
        );
    }
}

#[tokio::test]
async fn restart_is_refused_when_the_queue_is_on_an_empty_dir() {
    let scene = Scene::start("emptydir").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    Mta::deployment("ephemeral", json!({"app": "mta"}))
        .annotate("mailops.dev/delivery", "restart")
        .queue(Queue::EmptyDir)
        .create(client, &ns.name)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let generation = deployments
        .get("ephemeral")
        .await
        .unwrap()
        .metadata
        .generation;

    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-3\ntargets: {matchLabels: {app: mta}}",
    );
    let refused = wait_for(incidents, "outage", "refusing the restart", |i| {
        observed(i) && status(i).targets.as_ref().is_some_and(|t| t.failed == 1)
    })
    .await;
    let problem = &status(&refused).failed_targets[0];
    assert_eq!(problem.target, "Deployment/ephemeral");
    assert!(
        problem.reason.contains("emptyDir volume \"queue\""),
        "{}",
        problem.reason
    );
    assert_eq!(
        condition(&refused, "Stalled").map(|c| (c.0, c.1)),
        Some(("True", "TargetsFailed"))
    );
    let described = world.kubectl_ok(&["describe", "mailinc", "outage", "-n", &ns.name]);
    assert!(
        described.contains("Warning") && described.contains("TargetFailed"),
        "{described}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        deployments
            .get("ephemeral")
            .await
            .unwrap()
            .metadata
            .generation,
        generation,
        "the MTA was restarted"
    );
    assert_eq!(restart_env(&deployments, "ephemeral").await, vec![]);
}

#[tokio::test]
async fn restart_never_takes_fields_another_manager_owns() {
    let scene = Scene::start("conflict").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    Mta::deployment("gitops", json!({"app": "mta"}))
        .annotate("mailops.dev/delivery", "restart")
        .create(client, &ns.name)
        .await;
    // A GitOps tool owns the MTA container's MAIL_INCIDENT_MODE.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let theirs = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gitops"},
        "spec": {"template": {"spec": {"containers": [{"name": "postfix", "env": [{"name": "MAIL_INCIDENT_MODE", "value": "Normal"}]}]}}},
    });
    deployments
        .patch(
            "gitops",
            &PatchParams::apply("argocd-controller"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();

    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-4\ntargets: {matchLabels: {app: mta}}",
    );
    let refused = wait_for(incidents, "outage", "reporting the conflict", |i| {
        observed(i) && status(i).targets.as_ref().is_some_and(|t| t.failed == 1)
    })
    .await;
    let reason = &status(&refused).failed_targets[0].reason;
    assert!(
        reason.contains("conflict") && reason.contains("argocd-controller"),
        "{reason}"
    );
    assert_eq!(
        restart_env(&deployments, "gitops").await,
        vec![("MAIL_INCIDENT_MODE".to_string(), "Normal".to_string())]
    );
}

#[tokio::test]
async fn the_most_severe_incident_wins_and_ending_it_hands_targets_back() {
    let scene = Scene::start("precedence").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    for (name, tier) in [("a", "core"), ("b", "core"), ("c", "edge"), ("d", "edge")] {
        Mta::deployment(name, json!({"app": "mta", "tier": tier}))
            .create(client, &ns.name)
            .await;
    }
    apply_incident(
        world,
        &ns.name,
        "queue",
        "mode: TempFail\nreason: INC-5 storage\ntargets: {matchLabels: {app: mta}}",
    );
    wait_for(incidents, "queue", "applied", ready_because("Applied")).await;
    apply_incident(
        world,
        &ns.name,
        "reject",
        "mode: HardReject\nreason: INC-6 edge rebuild\ntargets: {matchLabels: {tier: edge}}\nhardReject: {acknowledgeBounces: true}",
    );
    wait_for(incidents, "reject", "applied", |i| {
        ready_because("Applied")(i) && summary(i) == Some("2/2")
    })
    .await;
    let loser = wait_for(incidents, "queue", "superseded", |i| {
        summary(i) == Some("2/2")
    })
    .await;
    let by = &status(&loser).superseded_by;
    assert_eq!((by[0].incident.as_str(), by[0].count), ("reject", 2));
    assert_eq!(by[0].targets, ["Deployment/c", "Deployment/d"]);
    assert_eq!(
        mode_document(client, &ns.name, "Deployment", "c")
            .await
            .unwrap()
            .headline()
            .mode,
        Mode::HardReject
    );
    assert_eq!(
        mode_document(client, &ns.name, "Deployment", "a")
            .await
            .unwrap()
            .headline()
            .mode,
        Mode::TempFail
    );

    incidents
        .delete("reject", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(incidents, "queue", "taking its targets back", |i| {
        summary(i) == Some("4/4") && ready_because("Applied")(i)
    })
    .await;
    assert_eq!(
        mode_document(client, &ns.name, "Deployment", "d")
            .await
            .unwrap()
            .incident_names(),
        "queue"
    );
    eventually("the deleted incident gone", || async {
        incidents
            .get_opt("reject")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn delete_resolve_and_expiry_each_return_targets_to_normal() {
    let scene = Scene::start("endings").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    for group in ["deleted", "resolved", "expired"] {
        Mta::deployment(group, json!({"group": group}))
            .create(client, &ns.name)
            .await;
        let duration = if group == "expired" {
            "\nduration: 6s"
        } else {
            ""
        };
        apply_incident(
            world,
            &ns.name,
            group,
            &format!(
                "mode: TempFail\nreason: ending by {group}\ntargets: {{matchLabels: {{group: {group}}}}}{duration}"
            ),
        );
    }
    for group in ["deleted", "resolved", "expired"] {
        eventually("documents written", || async {
            mode_document(client, &ns.name, "Deployment", group).await
        })
        .await;
    }
    let finalizers = incidents
        .get("deleted")
        .await
        .unwrap()
        .metadata
        .finalizers
        .unwrap_or_default();
    assert_eq!(finalizers, ["mailops.dev/restore-targets"]);

    incidents
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    apply_incident(
        world,
        &ns.name,
        "resolved",
        "mode: TempFail\nreason: ending by resolved\ntargets: {matchLabels: {group: resolved}}\nresolved: true",
    );
    for group in ["deleted", "resolved", "expired"] {
        eventually(&format!("{group}: back to normal"), || async {
            mode_document(client, &ns.name, "Deployment", group)
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }
    eventually("the deleted incident gone", || async {
        incidents
            .get_opt("deleted")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let resolved = wait_for(incidents, "resolved", "restored", ready_because("Resolved")).await;
    assert_eq!(
        status(&resolved).effective_mode,
        Some(EffectiveMode::Normal)
    );
    let expired = wait_for(incidents, "expired", "restored", ready_because("Expired")).await;
    let ended_at = status(&expired).history.last().unwrap().at.0;
    assert!(
        ended_at >= status(&expired).expires_at.clone().unwrap().0,
        "ended before its expiry"
    );
    assert_eq!(
        mode_documents(&scene).await,
        Vec::<String>::new(),
        "leftover mode documents"
    );
}

#[tokio::test]
async fn hard_reject_without_acknowledgement_reaches_no_mta() {
    let scene = Scene::start("noack").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(client, &ns.name)
        .await;
    apply_incident(
        world,
        &ns.name,
        "reckless",
        "mode: HardReject\nreason: INC-7\ntargets: {matchLabels: {app: mta}}",
    );
    let stalled = wait_for(incidents, "reckless", "stalled", |i| {
        observed(i) && condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(
        condition(&stalled, "Stalled")
            .unwrap()
            .2
            .contains("spec.hardReject.acknowledgeBounces")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mode_documents(&scene).await, Vec::<String>::new());
}

#[tokio::test]
async fn an_operator_restarted_mid_transition_converges_without_leftovers() {
    let world = World::get();
    let ns = TestNamespace::new(world, "restart-op");
    let client = world.admin().await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..12 {
        Mta::deployment(&format!("mta-{i:02}"), json!({"app": "mta"}))
            .create(&client, &ns.name)
            .await;
    }
    let first = Operator::start(world, &ns.name).await;
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-8\ntargets: {matchLabels: {app: mta}}",
    );
    eventually("the first documents", || async {
        mode_document(&client, &ns.name, "Deployment", "mta-00")
            .await
            .map(drop)
    })
    .await;
    drop(first);
    // While no operator runs: the mode changes and two workloads leave the selector.
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: HardReject\nreason: INC-8 escalated\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}",
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for name in ["mta-10", "mta-11"] {
        deployments
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "retired"}}})),
            )
            .await
            .unwrap();
    }

    let _second = Operator::start(world, &ns.name).await;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    wait_for(&incidents, "outage", "converged", |i| {
        ready_because("Applied")(i) && summary(i) == Some("10/10")
    })
    .await;
    for i in 0..10 {
        let document = mode_document(&client, &ns.name, "Deployment", &format!("mta-{i:02}"))
            .await
            .unwrap();
        assert_eq!(document.headline().mode, Mode::HardReject, "mta-{i:02}");
    }
    for name in ["mta-10", "mta-11"] {
        assert!(
            mode_document(&client, &ns.name, "Deployment", name)
                .await
                .is_none(),
            "{name} kept a mode"
        );
    }
}

#[tokio::test]
async fn incidents_deleted_while_the_operator_is_gone_still_release_their_mtas() {
    let world = World::get();
    let ns = TestNamespace::new(world, "orphan");
    let client = world.admin().await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(&client, &ns.name)
        .await;
    let operator = Operator::start(world, &ns.name).await;
    apply_incident(
        world,
        &ns.name,
        "reject",
        "mode: HardReject\nreason: INC-11\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}",
    );
    eventually("the HardReject document", || async {
        mode_document(&client, &ns.name, "Deployment", "postfix")
            .await
            .map(drop)
    })
    .await;
    drop(operator);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owners = config_maps
        .get(&document_name("Deployment", "postfix"))
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default();
    let incident_uid = incidents.get("reject").await.unwrap().metadata.uid.unwrap();
    let owners: Vec<(&str, &str)> = owners
        .iter()
        .map(|o| (o.kind.as_str(), o.uid.as_str()))
        .collect();
    assert_eq!(owners, [("MailIncident", incident_uid.as_str())]);

    // Without the operator, someone removes the finalizer and deletes the incident: the
    // document, owned by the incident, is garbage-collected and agents restore service.
    incidents
        .patch(
            "reject",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    incidents
        .delete("reject", &DeleteParams::default())
        .await
        .unwrap();
    // kube-controller-manager's garbage collector learns of a new CRD on its 30 s
    // discovery resync, so on a fresh control plane collection can take that long.
    eventually_within(
        Duration::from_secs(90),
        "the document collected",
        || async {
            mode_document(&client, &ns.name, "Deployment", "postfix")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}
