//! Who may bounce mail, and who did. Real users from the API server's token file: `oncall`
//! (group mail-oncall) with only the built-in `edit` role, and `lead` with `edit` and the
//! ClusterRole granting `bounce`. The admission webhook refuses a HardReject to anyone
//! without `bounce`; every change names its author in the history, the events and
//! `kubectl get -o wide`. With the webhook unreachable, everything but a HardReject still
//! goes through, and a HardReject reaches no MTA, whoever wrote it, even with a record
//! copied from another incident, and is not applied once the webhook is back.

use crate::plugin::{plugin_as, plugin_ok};
use kube::{Api, ResourceExt};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    postfix::PostfixWithAgent,
    support::{Mta, condition, mode_document, observed, ready_because, wait_for},
    world::{Operator, PrivateControlPlane, Scene, TestNamespace, World, free_port},
};
use mail_incident_operator::api::{MailIncident, admission::ADMISSION_ANNOTATION};
use std::{process::Output, time::Duration};

const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
const HARD_REJECT: &str = "mode: HardReject\nhardReject: {acknowledgeBounces: true}";

/// The refusal `user` reads, word for word.
fn refusal(user: &str, namespace: &str) -> String {
    format!(
        "user \"{user}\" may not make MTAs bounce mail: mode HardReject needs the verb \"bounce\" on mailincidents.mailops.dev in namespace {namespace}, which the ClusterRole mail-incident-operator-bounce grants (edit does not)"
    )
}

/// oncall gets edit; lead gets edit and bounce, in `namespace`.
fn bind_people(world: &World, namespace: &str) {
    world.kubectl_ok(&[
        "create",
        "rolebinding",
        "oncall-edit",
        "-n",
        namespace,
        "--clusterrole=edit",
        "--group=mail-oncall",
    ]);
    world.kubectl_ok(&[
        "create",
        "rolebinding",
        "lead-edit",
        "-n",
        namespace,
        "--clusterrole=edit",
        "--user=lead",
    ]);
    world.kubectl_ok(&[
        "create",
        "rolebinding",
        "lead-bounce",
        "-n",
        namespace,
        "--clusterrole=mail-incident-operator-bounce",
        "--user=lead",
    ]);
}

/// kubectl as `user` (a context of the world's kubeconfig).
fn kubectl_as(world: &World, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let output = world.kubectl(&[&["--context", user], args].concat(), stdin);
    eprintln!(
        "$ kubectl ({user}) {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refused(output: Output) -> String {
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Applies `name` in `namespace` as `user`.
fn apply_as(world: &World, user: &str, namespace: &str, name: &str, spec: &str) -> Output {
    let yaml = mail_incident_e2e_support::support::incident_yaml(name, spec);
    kubectl_as(
        world,
        user,
        &["apply", "-n", namespace, "-f", "-"],
        Some(&yaml),
    )
}

fn patch_as(world: &World, user: &str, namespace: &str, name: &str, patch: &str) -> Output {
    kubectl_as(
        world,
        user,
        &[
            "patch",
            "mailincident",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            patch,
        ],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_reject_needs_bounce_and_every_change_names_its_author() {
    let scene = Scene::start("bounce").await;
    let world = scene.world;
    let n = scene.ns.name.as_str();
    let mta = PostfixWithAgent::start(&scene, "bounce").await;
    let postfix = &mta.postfix;
    bind_people(world, n);

    // oncall declares a TempFail and extends it.
    ok(apply_as(
        world,
        "oncall",
        n,
        "outage",
        &format!("mode: TempFail\nreason: INC-80 storage down\n{TARGETS}\nduration: 2h"),
    ));
    wait_for(
        &scene.incidents,
        "outage",
        "applied",
        ready_because("Applied"),
    )
    .await;
    assert!(postfix.smtp.rcpt_reply_once("452").starts_with("452"));
    ok(patch_as(
        world,
        "oncall",
        n,
        "outage",
        r#"{"spec":{"duration":"4h"}}"#,
    ));

    // oncall may not make the fleet bounce mail: neither a new HardReject nor this one.
    let said = refused(apply_as(
        world,
        "oncall",
        n,
        "purge",
        &format!("{HARD_REJECT}\nreason: INC-81\n{TARGETS}"),
    ));
    assert!(said.contains(&refusal("oncall", n)), "{said}");
    let said = refused(patch_as(
        world,
        "oncall",
        n,
        "outage",
        r#"{"spec":{"mode":"HardReject","hardReject":{"acknowledgeBounces":true}}}"#,
    ));
    assert!(said.contains(&refusal("oncall", n)), "{said}");
    assert!(scene.incidents.get_opt("purge").await.unwrap().is_none());
    // The plugin says so before asking anything.
    let output = plugin_as(
        &world.kubeconfig,
        &[
            "--context",
            "oncall",
            "escalate",
            "outage",
            "-n",
            n,
            "--to",
            "HardReject",
            "--acknowledge-bounces",
            "--yes",
        ],
    );
    let said = String::from_utf8_lossy(&output.stderr);
    eprintln!("$ kubectl mail-incident escalate outage --to HardReject ... (oncall)\n{said}");
    assert!(!output.status.success());
    assert_eq!(
        said.trim_end(),
        format!(
            "error: you may not make MTAs bounce mail: mode HardReject needs the verb \"bounce\" on mailincidents.mailops.dev in namespace {n}, which the ClusterRole mail-incident-operator-bounce grants (edit does not)"
        )
    );

    // lead may: the MTA answers 550.
    ok(patch_as(
        world,
        "lead",
        n,
        "outage",
        r#"{"spec":{"mode":"HardReject","hardReject":{"acknowledgeBounces":true}}}"#,
    ));
    wait_for(&scene.incidents, "outage", "escalated", |i| {
        ready_because("Applied")(i) && i.spec.mode == mail_incident_operator::api::Mode::HardReject
    })
    .await;
    let answer = postfix.smtp.rcpt_reply_once("550");
    assert!(answer.starts_with("550 5.3.2"), "{answer}");
    // A HardReject in force is changed only by someone who may bounce.
    let said = refused(patch_as(
        world,
        "oncall",
        n,
        "outage",
        r#"{"spec":{"duration":"8h"}}"#,
    ));
    assert!(said.contains(&refusal("oncall", n)), "{said}");

    // oncall resolves it.
    ok(patch_as(
        world,
        "oncall",
        n,
        "outage",
        r#"{"spec":{"resolved":true}}"#,
    ));
    wait_for(
        &scene.incidents,
        "outage",
        "resolved",
        ready_because("Resolved"),
    )
    .await;
    assert!(postfix.smtp.rcpt_reply_once("250").starts_with("250"));

    let incident = scene.incidents.get("outage").await.unwrap();
    let status = incident.status.clone().unwrap();
    let history: Vec<(String, Option<String>)> = status
        .history
        .iter()
        .map(|t| (format!("{:?}", t.to), t.by.clone()))
        .collect();
    assert_eq!(
        history,
        [
            ("TempFail".into(), Some("oncall".into())),
            ("HardReject".into(), Some("lead".into())),
            ("Normal".into(), Some("oncall".into())),
        ]
    );
    assert_eq!(status.declared_by.as_deref(), Some("oncall"));
    assert_eq!(status.changed_by.as_deref(), Some("oncall"));
    let wide = world.kubectl_ok(&["get", "mailinc", "outage", "-n", n, "-o", "wide"]);
    eprintln!("$ kubectl get mailinc outage -o wide\n{wide}");
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .contains("DECLARED BY   CHANGED BY"),
        "{wide}"
    );
    assert!(
        wide.lines()
            .nth(1)
            .unwrap()
            .trim_end()
            .ends_with("oncall        oncall"),
        "{wide}"
    );
    let printed = plugin_ok(world, &["history", "outage", "-n", n]);
    eprintln!("$ kubectl mail-incident history outage\n{printed}");
    let transitions: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains(" Transition "))
        .collect();
    assert_eq!(transitions.len(), 3, "{printed}");
    assert!(transitions[1].contains("Transition   lead"), "{printed}");
    assert!(
        printed.contains("TempFail -> HardReject by lead"),
        "{printed}"
    );
    assert!(
        printed.contains("HardReject -> Normal by oncall: resolved"),
        "{printed}"
    );
}

/// The record of `name`, as the webhook stamped it.
async fn record(incidents: &Api<MailIncident>, name: &str) -> String {
    incidents.get(name).await.unwrap().annotations()[ADMISSION_ANNOTATION].clone()
}

fn stalled_because(why: &'static str) -> impl Fn(&MailIncident) -> bool {
    move |i| {
        observed(i)
            && condition(i, "Stalled")
                .is_some_and(|c| c.1 == "BounceNotApproved" && c.2.contains(why))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_webhook_is_down_oncall_still_acts_and_no_hard_reject_reaches_an_mta() {
    // Declared first, dropped last: its own control plane, so that the webhook outage
    // concerns no other test.
    let plane = PrivateControlPlane::start(42443).await;
    let world = &plane.world;
    let ns = TestNamespace::new(world, "webhook-down");
    let n = ns.name.as_str();
    let client = world.admin().await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), n);
    let _kubelet = FakeKubelet::start(client.clone(), n).await;
    let _agents = FakeAgents::start(client.clone(), n).await;
    for (name, app) in [("mta-a", "edge"), ("mta-b", "core")] {
        Mta::deployment(name, serde_json::json!({"app": app}))
            .create(&client, n)
            .await;
    }
    bind_people(world, n);
    let _operator = Operator::start(world, n).await;
    let document = |name: &'static str| {
        let client = client.clone();
        async move { mode_document(&client, n, "Deployment", name).await }
    };

    // Approved while the webhook is up.
    ok(apply_as(
        world,
        "lead",
        n,
        "approved",
        &format!("{HARD_REJECT}\nreason: INC-90\ntargets: {{matchLabels: {{app: edge}}}}"),
    ));
    wait_for(&incidents, "approved", "applied", ready_because("Applied")).await;
    let edge_hard_reject = document("mta-a").await.expect("mta-a's document");

    // The webhook unreachable: its URL now leads to a port nobody listens on.
    let url = |port: u16| format!("https://127.0.0.1:{port}/mutate-mailincidents");
    let point_at = |port: u16| {
        world.kubectl_ok(&[
            "patch", "mutatingwebhookconfiguration", "mail-incident-operator", "--type=json", "-p",
            &serde_json::json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url(port)}]).to_string(),
        ]);
    };
    point_at(free_port());

    // oncall still declares a TempFail, and resolves it.
    ok(apply_as(
        world,
        "oncall",
        n,
        "hold",
        "mode: TempFail\nreason: INC-91\ntargets: {matchLabels: {app: core}}",
    ));
    wait_for(&incidents, "hold", "applied", ready_because("Applied")).await;
    ok(patch_as(
        world,
        "oncall",
        n,
        "hold",
        r#"{"spec":{"resolved":true}}"#,
    ));
    wait_for(&incidents, "hold", "resolved", ready_because("Resolved")).await;
    let hold = incidents.get("hold").await.unwrap();
    assert_eq!(
        hold.status.unwrap().history.last().unwrap().by,
        None,
        "the webhook saw nobody"
    );

    // A HardReject written meanwhile, by anyone: no MTA gets it.
    ok(kubectl_as(
        world,
        "e2e",
        &["apply", "-n", n, "-f", "-"],
        Some(&mail_incident_e2e_support::support::incident_yaml(
            "unapproved",
            &format!("{HARD_REJECT}\nreason: INC-92\ntargets: {{matchLabels: {{app: core}}}}"),
        )),
    ));
    wait_for(
        &incidents,
        "unapproved",
        "stalled",
        stalled_because("the admission webhook left no record on it"),
    )
    .await;
    // oncall copies lead's record onto an incident of its own.
    let copied = record(&incidents, "approved").await;
    let forged = format!(
        "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata:\n  name: copy\n  annotations:\n    {ADMISSION_ANNOTATION}: '{copied}'\nspec:\n  mode: HardReject\n  hardReject: {{acknowledgeBounces: true}}\n  reason: INC-90\n  targets: {{matchLabels: {{app: core}}}}\n"
    );
    ok(kubectl_as(
        world,
        "oncall",
        &["apply", "-n", n, "-f", "-"],
        Some(&forged),
    ));
    wait_for(
        &incidents,
        "copy",
        "stalled",
        stalled_because("was not signed by this operator"),
    )
    .await;
    // oncall widens lead's approved HardReject to every MTA.
    ok(patch_as(
        world,
        "oncall",
        n,
        "approved",
        r#"{"spec":{"targets":{"matchLabels":null,"matchExpressions":[{"key":"app","operator":"In","values":["edge","core"]}]}}}"#,
    ));
    wait_for(
        &incidents,
        "approved",
        "stalled",
        stalled_because("its spec was changed after the admission webhook saw it"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        document("mta-b").await.is_none(),
        "mta-b got a HardReject nobody approved"
    );
    assert_eq!(
        document("mta-a").await,
        Some(edge_hard_reject.clone()),
        "what lead approved stays"
    );
    for name in ["unapproved", "copy", "approved"] {
        let incident = incidents.get(name).await.unwrap();
        let (_, reason, message) = condition(&incident, "Stalled").unwrap();
        eprintln!("{name}: Stalled {reason}: {message}");
    }

    // The webhook back: nothing is applied silently.
    point_at(world.webhook.as_ref().unwrap().port);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(document("mta-b").await.is_none());
    assert!(stalled_because("no record")(
        &incidents.get("unapproved").await.unwrap()
    ));
    // Until someone who may bounce applies it again.
    ok(patch_as(
        world,
        "lead",
        n,
        "unapproved",
        r#"{"spec":{"reason":"INC-92 confirmed by the lead"}}"#,
    ));
    wait_for(
        &incidents,
        "unapproved",
        "applied",
        ready_because("Applied"),
    )
    .await;
    assert!(document("mta-b").await.is_some());
}
