//! The Helm chart on the real node: rendered by Helm's own engine (`e2e/chart/render.py`,
//! helm-python-sdk) and applied with kubectl, as a GitOps pipeline that renders charts
//! does. Its operator comes up from the image and converges an incident; the built-in
//! `edit` and `view` roles gain MailIncidents through its aggregated ClusterRoles; taking
//! the release away keeps the CRD and every incident.
//!
//! The `deploy/` installation is scaled to zero meanwhile (two operators would both
//! write), and scaled back before the test ends, pass or fail.

use crate::node::{
    Node, OPERATOR_NAMESPACE, lease_holder, operator_pods_ready, pause_target, pods_ready,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use mail_incident_e2e_support::{
    support::{apply_incident, apply_yaml, ready_because, wait_for_within},
    world::{TestNamespace, World},
};
use mail_incident_operator::api::MailIncident;
use serde_json::json;
use std::{process::Command, time::Duration};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "mio-chart";
/// The chart's full name for a release whose name does not contain the chart's.
const FULLNAME: &str = "mio-chart-mail-incident-operator";
const CONVERGE: Duration = Duration::from_secs(90);

/// The chart's manifests for the node, by Helm's engine: only what a one-machine node
/// forces differs from the defaults (images imported, not pulled; the API server reached
/// through the bridge's gateway, as `e2e/real-node` sets for `deploy/`).
fn render(api_host: &str, api_port: &str) -> String {
    let python = std::env::var("E2E_PYTHON")
        .expect("E2E_PYTHON is not set: run these tests with `make e2e-node`");
    let values = json!({
        "image": {"pullPolicy": "Never"},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
        ],
    });
    let output = Command::new(&python)
        .arg(format!("{REPO}/e2e/chart/render.py"))
        .args([RELEASE, RELEASE, &values.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; e2e/install-deps.sh creates it"));
    assert!(
        output.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("YAML is UTF-8")
}

/// Whether `user` may `verb` MailIncidents (`subresource`: `""` for the objects) in
/// `namespace`, as the API server's authorizer says.
fn can(world: &World, user: &str, verb: &str, subresource: &str, namespace: &str) -> bool {
    let subresource = format!("--subresource={subresource}");
    let output = world.kubectl(
        &[
            "auth",
            "can-i",
            verb,
            "mailincidents.mailops.dev",
            &subresource,
            "-n",
            namespace,
            "--as",
            user,
        ],
        None,
    );
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

/// Scales the `deploy/` operator back to its two replicas when dropped.
struct DeployOperatorBack<'a>(&'a World);

impl Drop for DeployOperatorBack<'_> {
    fn drop(&mut self) {
        self.0.kubectl_ok(&[
            "scale",
            "-n",
            OPERATOR_NAMESPACE,
            "deployment/mail-incident-operator",
            "--replicas=2",
        ]);
    }
}

#[tokio::test]
async fn the_chart_rendered_by_helm_installs_an_operator_that_converges_and_its_removal_keeps_the_crd()
 {
    let node = Node::get();
    let world = &node.world;
    let client = node.client().await;
    world.kubectl_ok(&[
        "scale",
        "-n",
        OPERATOR_NAMESPACE,
        "deployment/mail-incident-operator",
        "--replicas=0",
    ]);
    let back = DeployOperatorBack(world);
    operator_pods_ready(&client, 0).await;

    let manifests = render(
        &std::env::var("E2E_NODE_API_HOST").expect("E2E_NODE_API_HOST"),
        &std::env::var("E2E_NODE_API_PORT").expect("E2E_NODE_API_PORT"),
    );
    // What `helm install --create-namespace` does first.
    world.kubectl_ok(&["create", "namespace", RELEASE]);
    node.apply_manifests(&manifests, "kubectl apply of the rendered chart");

    // Both replicas Ready through the kubelet's probes, one of them leading.
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE);
    let replicas = pods_ready(&pods, &format!("app.kubernetes.io/instance={RELEASE}"), 2).await;
    mail_incident_e2e_support::support::eventually_within(
        CONVERGE,
        "one of the chart's pods leading",
        || async {
            lease_holder(&client, RELEASE, FULLNAME)
                .await
                .filter(|holder| replicas.contains(holder))
        },
    )
    .await;

    let ns = TestNamespace::new(world, "node-chart");
    // No pods: the incident is Ready once its mode document is written, the operator's part.
    apply_yaml(world, &ns.name, &pause_target(0));
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-1 storage down\ntargets: {matchLabels: {app: mx}}",
    );
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    wait_for_within(
        CONVERGE,
        &incidents,
        "outage",
        "Ready (Applied) under the chart's operator",
        ready_because("Applied"),
    )
    .await;

    // The built-in roles, through the aggregation controller: a namespace's `edit` user
    // declares and resolves incidents, its `view` user reads them, neither writes status.
    let editor = format!("system:serviceaccount:{}:editor", ns.name);
    let viewer = format!("system:serviceaccount:{}:viewer", ns.name);
    for (who, role) in [(&editor, "edit"), (&viewer, "view")] {
        world.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("{role}-binding"),
            "-n",
            &ns.name,
            &format!("--clusterrole={role}"),
            &format!("--user={who}"),
        ]);
    }
    mail_incident_e2e_support::support::eventually_within(
        Duration::from_secs(30),
        "the edit role aggregating MailIncidents",
        || async { can(world, &editor, "create", "", &ns.name).then_some(()) },
    )
    .await;
    assert!(can(world, &editor, "patch", "", &ns.name));
    assert!(!can(world, &editor, "patch", "status", &ns.name));
    assert!(can(world, &viewer, "list", "", &ns.name));
    assert!(!can(world, &viewer, "create", "", &ns.name));

    // Uninstall as Helm would: everything but the CRD, which the chart marks
    // helm.sh/resource-policy: keep. The incidents, the record of what happened, remain.
    assert!(
        manifests.contains("helm.sh/resource-policy: keep"),
        "the rendered CRD is marked to be kept"
    );
    let without_crd: Vec<&str> = manifests
        .split("\n---\n")
        .filter(|document| !document.contains("kind: CustomResourceDefinition"))
        .collect();
    let deleted = world.kubectl(
        &["delete", "--wait=true", "-f", "-"],
        Some(&without_crd.join("\n---\n")),
    );
    assert!(
        deleted.status.success(),
        "kubectl delete of the release: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    world.kubectl_ok(&["delete", "namespace", RELEASE, "--wait=true"]);
    world.kubectl_ok(&["get", "crd", "mailincidents.mailops.dev"]);
    let kept = incidents
        .get("outage")
        .await
        .expect("the incident outlives the release");
    assert_eq!(
        kept.status.and_then(|s| s.effective_mode),
        Some(mail_incident_operator::api::EffectiveMode::TempFail)
    );
    drop(back);
    operator_pods_ready(&client, 2).await;
}
