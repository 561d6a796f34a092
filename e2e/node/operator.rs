//! The operator as `deploy/` ships it: two replicas from its image, probed by the kubelet,
//! one leading; a deleted leader pod hands over and changes still converge.

use crate::{
    node::{Node, OPERATOR_NAMESPACE, leader, operator_pods_ready, pause_target},
    support::{apply_incident, eventually_within, mode_document},
    world::TestNamespace,
};
use mail_incident_operator::api::Mode;
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
    crate::support::apply_yaml(&node.world, &ns.name, &pause_target(1));
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
