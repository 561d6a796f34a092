//! Restarts for real: restart delivery rolling out a Postfix whose queue is on a
//! PersistentVolume (the mail queued before the rollout is delivered after it), the
//! refusal of restart delivery for a queue on an emptyDir, and SIGTERM of the operator's
//! pods in the middle of a change.

use crate::{
    mtas::{apply_values, example, volume_for},
    node::{Node, OPERATOR_NAMESPACE, leader, operator_pods_ready, pods_ready, set_mode},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::Api;
use mail_incident_e2e_support::{
    support::{
        apply_incident, condition, eventually_within, mode_document, observed, wait_for_within,
    },
    world::TestNamespace,
};
use mail_incident_operator::api::{MailIncident, Mode};
use serde_json::{Value, json};
use std::time::Duration;

const ROLLOUT: Duration = Duration::from_secs(120);
const QUEUED: usize = 4;

/// The example Postfix as an image without the agent: restart delivery, no sidecar.
fn postfix_without_agent(name: &str, queue: Value) -> Value {
    let text = serde_json::to_string(&example("postfix-with-agent.yaml")[1])
        .unwrap()
        .replace("postfix-inbound", name);
    let mut deployment: Value = serde_json::from_str(&text).unwrap();
    deployment["metadata"]["annotations"]["mailops.dev/delivery"] = json!("restart");
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "install-agent");
    spec["containers"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "agent");
    let volumes = spec["volumes"].as_array_mut().unwrap();
    volumes.retain(|v| v["name"] != "agent");
    for volume in volumes.iter_mut().filter(|v| v["name"] == "queue") {
        *volume = json!({"name": "queue"});
        let source = queue.as_object().expect("a volume source").clone();
        volume.as_object_mut().unwrap().extend(source);
    }
    spec.as_object_mut().unwrap().remove("serviceAccountName");
    deployment
}

/// Messages waiting in a Postfix queue, counted from the host through the MTA's process.
fn queued(pod: &Pod) -> usize {
    let pid = crate::node::container_pid(pod, "/master").expect("the Postfix master");
    let deferred = format!("/proc/{pid}/root/var/spool/postfix/deferred");
    crate::node::count_files(std::path::Path::new(&deferred), &|_| true)
}

#[tokio::test]
async fn restart_delivery_rolls_out_and_the_mail_queued_before_it_is_delivered_after_it() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-restart");
    let store = node.volume(&format!("{}-store", ns.name));
    std::os::unix::fs::chown(&store, Some(5000), Some(5000)).expect("chown");
    let (queue_volume, _) = volume_for(node, &ns.name, "postfix-restart-queue", 0o755);
    let mut with_claim = postfix_without_agent(
        "postfix-restart",
        json!({"persistentVolumeClaim": {"claimName": "postfix-restart-queue"}}),
    );
    crate::mtas::host_volume(&mut with_claim, "mailboxes", &store);
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "postfix-restart-queue"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    let on_empty_dir = postfix_without_agent("postfix-scratch", json!({"emptyDir": {}}));
    apply_values(node, &ns.name, &[queue_volume, claim, with_claim]);
    apply_values(node, &ns.name, &[on_empty_dir]);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let selector = "app.kubernetes.io/instance=postfix-restart";
    let before = pods_ready(&pods, selector, 1).await.remove(0);
    let before_pod = pods.get(&before).await.unwrap();
    let ip = crate::node::pod_ip(&pods, &before).await;

    // Storage breaks before anyone declares an incident: mail piles up in the queue.
    set_mode(&store, 0o000);
    for n in 0..QUEUED {
        let smtp = mail_incident_e2e_support::mta::Smtp {
            address: crate::node::smtp_address(ip),
            recipient: "user@e2e.test",
        };
        let reply = tokio::task::spawn_blocking(move || smtp.send(&format!("queued {n}")))
            .await
            .unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    }
    eventually_within(ROLLOUT, "the mail deferred in the queue", || async {
        (queued(&before_pod) == QUEUED).then_some(())
    })
    .await;

    apply_incident(
        &node.world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-3 storage down\ntargets: {matchLabels: {app.kubernetes.io/component: mta}}",
    );
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    // The emptyDir queue is refused (nothing changed there); the PersistentVolume one rolls out.
    let incident = wait_for_within(
        ROLLOUT,
        &incidents,
        "outage",
        "with the claim's workload rolled out and the emptyDir one refused",
        |i| {
            observed(i)
                && condition(i, "Stalled").is_some_and(|c| c.0 == "True")
                && i.status
                    .as_ref()
                    .and_then(|s| s.targets.as_ref())
                    .is_some_and(|t| t.applied == 1)
        },
    )
    .await;
    let failed = &incident.status.as_ref().unwrap().failed_targets;
    assert!(
        failed
            .iter()
            .any(|f| f.target == "Deployment/postfix-scratch"),
        "the emptyDir workload is named as failed: {failed:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let scratch = deployments.get("postfix-scratch").await.unwrap();
    assert!(
        !serde_json::to_string(&scratch.spec)
            .unwrap()
            .contains("MAIL_INCIDENT_"),
        "nothing changed on the refused workload"
    );
    let after = pods_ready(&pods, selector, 1).await.remove(0);
    assert_ne!(after, before, "the workload rolled out a new pod");
    let after_pod = pods.get(&after).await.unwrap();
    let env = serde_json::to_string(&after_pod.spec).unwrap();
    assert!(
        env.contains("MAIL_INCIDENT_MODE"),
        "the new pod has the env vars"
    );
    assert_eq!(queued(&after_pod), QUEUED, "the queue survived the rollout");

    // Storage is back: the new pod delivers what the old one queued, once asked to retry
    // (`postqueue -f` in the MTA container, as an SRE would with kubectl exec; deferred
    // mail otherwise waits out Postfix's 5-minute backoff).
    // The incident's end rolls the workload out once more, without the env vars: flush in
    // that pod, once it runs.
    set_mode(&store, 0o777);
    node.world
        .kubectl_ok(&["delete", "mailincident", "-n", &ns.name, "outage"]);
    let normal_pod = eventually_within(ROLLOUT, "a pod without the env vars", || async {
        let name = pods_ready(&pods, selector, 1).await.remove(0);
        let pod = pods.get(&name).await.ok()?;
        let spec = serde_json::to_string(&pod.spec).unwrap();
        (!spec.contains("MAIL_INCIDENT_MODE")).then_some(pod)
    })
    .await;
    assert_eq!(
        queued(&normal_pod),
        QUEUED,
        "the queue survived both rollouts"
    );
    let pid = crate::node::container_pid(&normal_pod, "/master").expect("the Postfix master");
    mail_incident_e2e_support::mta::run(std::process::Command::new("nsenter").args([
        "--target",
        &pid.to_string(),
        "--mount",
        "--",
        "postqueue",
        "-f",
    ]));
    let maildir = store.join("user");
    eventually_within(ROLLOUT, "every queued message delivered", || async {
        (mail_incident_e2e_support::mta::maildir_count(&maildir) == QUEUED).then_some(())
    })
    .await;
}

/// Mode-document targets for the SIGTERM test: Deployments with no pods, so only the
/// operator's writes are measured.
const TARGETS: usize = 60;

#[tokio::test]
async fn sigterm_of_the_operator_pods_mid_change_hands_over_and_the_change_converges() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-sigterm");
    let workloads: Vec<Value> = (0..TARGETS)
        .map(|n| {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("mx-{n:03}"), "labels": {"app": "mx"},
                             "annotations": {"mailops.dev/mta": "Postfix"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "mx"}},
                    "template": {"metadata": {"labels": {"app": "mx"}},
                                 "spec": {"containers": [{"name": "mta", "image": "k8s.gcr.io/pause:3.2"}]}},
                },
            })
        })
        .collect();
    apply_values(node, &ns.name, &workloads);
    let spec = |mode: Mode| {
        format!("mode: {mode:?}\nreason: INC-5 storage down\ntargets: {{matchLabels: {{app: mx}}}}")
    };
    apply_incident(&node.world, &ns.name, "outage", &spec(Mode::TempFail));
    let all_say = |mode: Mode| {
        let client = client.clone();
        let namespace = ns.name.clone();
        async move {
            for n in 0..TARGETS {
                let document =
                    mode_document(&client, &namespace, "Deployment", &format!("mx-{n:03}")).await;
                if document.is_none_or(|d| d.headline().mode != mode) {
                    return None;
                }
            }
            Some(())
        }
    };
    eventually_within(ROLLOUT, "every document saying TempFail", || {
        all_say(Mode::TempFail)
    })
    .await;

    let old_pods = operator_pods_ready(&client, 2).await;
    // The change and the rollout restart at once: the leader is terminated mid-change.
    apply_incident(&node.world, &ns.name, "outage", &spec(Mode::AcceptAndQueue));
    node.world.kubectl_ok(&[
        "rollout",
        "restart",
        "-n",
        OPERATOR_NAMESPACE,
        "deployment/mail-incident-operator",
    ]);
    eventually_within(ROLLOUT, "every document saying AcceptAndQueue", || {
        all_say(Mode::AcceptAndQueue)
    })
    .await;
    node.world.kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        OPERATOR_NAMESPACE,
        "deployment/mail-incident-operator",
        "--timeout=120s",
    ]);
    let new_pods = operator_pods_ready(&client, 2).await;
    assert!(new_pods.iter().all(|p| !old_pods.contains(p)));
    eventually_within(ROLLOUT, "a new pod leading", || async {
        leader(&client).await.filter(|h| new_pods.contains(h))
    })
    .await;
    // And the new leader carries on: one more change converges.
    apply_incident(&node.world, &ns.name, "outage", &spec(Mode::TempFail));
    eventually_within(ROLLOUT, "every document saying TempFail again", || {
        all_say(Mode::TempFail)
    })
    .await;
}
