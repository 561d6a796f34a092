//! The operator as `deploy/` ships it: two replicas from its image, probed by the kubelet,
//! one leading; a deleted leader pod hands over and changes still converge; both serve the
//! admission webhook with the certificate they made.

use crate::node::{Node, OPERATOR_NAMESPACE, leader, operator_pods_ready, pause_target, pod_ip};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Pod, Secret},
};
use kube::{Api, ResourceExt};
use mail_incident_e2e_support::{
    support::{apply_incident, eventually_within, mode_document, served_certificate},
    world::TestNamespace,
};
use mail_incident_operator::api::{MailIncident, Mode, admission::ADMISSION_ANNOTATION};
use std::time::Duration;

/// A failover waits for the deleted leader's Lease (15 s) to run out, then a renewal.
const FAILOVER: Duration = Duration::from_secs(60);

fn incident(mode: Mode) -> String {
    format!("mode: {mode:?}\nreason: INC-1 storage down\ntargets: {{matchLabels: {{app: mx}}}}")
}

async fn document_says(client: &kube::Client, namespace: &str, mode: Mode) {
    eventually_within(
        FAILOVER,
        &format!("the mode document saying {mode:?}"),
        || async {
            mode_document(client, namespace, "Deployment", "mx")
                .await
                .filter(|d| d.headline().mode == mode)
        },
    )
    .await;
}

#[tokio::test]
async fn two_replicas_run_from_the_image_one_leads_and_a_deleted_leader_hands_over() {
    let node = Node::get();
    let client = node.client().await;
    // Running and Ready through the kubelet's own /readyz probes, both of them (the
    // standby's caches are warm too).
    let pods = operator_pods_ready(&client, 2).await;
    let first = eventually_within(FAILOVER, "one of the two pods leading", || async {
        leader(&client).await.filter(|holder| pods.contains(holder))
    })
    .await;

    let ns = TestNamespace::new(&node.world, "node-operator");
    mail_incident_e2e_support::support::apply_yaml(&node.world, &ns.name, &pause_target(1));
    apply_incident(&node.world, &ns.name, "outage", &incident(Mode::TempFail));
    document_says(&client, &ns.name, Mode::TempFail).await;

    node.world.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        OPERATOR_NAMESPACE,
        &first,
        "--wait=false",
    ]);
    // The deleted leader releases the Lease as it stops; the standby (or, if it is quicker,
    // the pod replacing the deleted one) takes it.
    eventually_within(FAILOVER, "another pod leading", || async {
        leader(&client).await.filter(|holder| *holder != first)
    })
    .await;
    apply_incident(
        &node.world,
        &ns.name,
        "outage",
        &incident(Mode::AcceptAndQueue),
    );
    document_says(&client, &ns.name, Mode::AcceptAndQueue).await;
    // The Deployment replaced the deleted pod: two replicas again.
    operator_pods_ready(&client, 2).await;
}

/// The admission webhook as `deploy/` ships it: served by both operator pods, over the
/// certificate they made themselves (their CA in the configuration's caBundle), called by
/// the API server through its Service; it refuses a HardReject to a user without `bounce`
/// and records who wrote the one it admits, which the controller then applies.
#[tokio::test]
async fn every_operator_pod_serves_the_webhook_with_the_certificate_it_made() {
    let node = Node::get();
    let client = node.client().await;
    let pods = operator_pods_ready(&client, 2).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let (bundle, serving) = eventually_within(FAILOVER, "the webhook's certificates", || async {
        let secret = secrets
            .get_opt("mail-incident-operator-webhook-tls")
            .await
            .ok()??;
        let data = secret.data?;
        Some((
            data.get("ca-bundle.crt")?.0.clone(),
            data.get("tls.crt")?.0.clone(),
        ))
    })
    .await;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually_within(
        FAILOVER,
        "the CA bundle in the webhook configuration",
        || async {
            let configuration = configurations.get("mail-incident-operator").await.ok()?;
            let webhook = configuration.webhooks?.into_iter().next()?;
            (webhook.client_config.ca_bundle?.0 == bundle).then_some(())
        },
    )
    .await;
    let serving_der = pem::parse(&serving)
        .expect("tls.crt is PEM")
        .into_contents();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    for pod in &pods {
        let ip = pod_ip(&pod_api, pod).await;
        let served = eventually_within(FAILOVER, &format!("{pod} serving the webhook"), || {
            served_certificate(
                (ip, 8443).into(),
                "mail-incident-operator-webhook.mail-incident-operator.svc",
                &bundle,
            )
        })
        .await;
        assert!(
            served == serving_der,
            "{pod} serves another certificate than the Secret's"
        );
    }

    // Through the API server and the Service: refused without bounce, recorded with it.
    let ns = TestNamespace::new(&node.world, "node-bounce");
    mail_incident_e2e_support::support::apply_yaml(&node.world, &ns.name, &pause_target(1));
    for (binding, role, subject) in [
        ("oncall-edit", "edit", "--group=mail-oncall"),
        ("lead-edit", "edit", "--user=lead"),
        (
            "lead-bounce",
            "mail-incident-operator-bounce",
            "--user=lead",
        ),
    ] {
        node.world.kubectl_ok(&[
            "create",
            "rolebinding",
            binding,
            "-n",
            &ns.name,
            &format!("--clusterrole={role}"),
            subject,
        ]);
    }
    let purge = mail_incident_e2e_support::support::incident_yaml(
        "purge",
        &format!(
            "{}\nhardReject: {{acknowledgeBounces: true}}",
            incident(Mode::HardReject)
        ),
    );
    let apply_as = |user: &str| {
        node.world.kubectl(
            &["--context", user, "apply", "-n", &ns.name, "-f", "-"],
            Some(&purge),
        )
    };
    let refused = apply_as("oncall");
    let said = String::from_utf8_lossy(&refused.stderr);
    eprintln!("$ kubectl (oncall) apply purge\n{said}");
    assert!(!refused.status.success());
    assert!(
        said.contains("user \"oncall\" may not make MTAs bounce mail"),
        "{said}"
    );
    let admitted = apply_as("lead");
    assert!(
        admitted.status.success(),
        "{}",
        String::from_utf8_lossy(&admitted.stderr)
    );
    document_says(&client, &ns.name, Mode::HardReject).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    let stored = incidents.get("purge").await.unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&stored.annotations()[ADMISSION_ANNOTATION]).unwrap();
    assert_eq!(record["user"], "lead");
    assert_eq!(record["mayBounce"], true);
}
