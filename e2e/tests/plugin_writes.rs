//! `kubectl mail-incident` commands that write: declare, extend, escalate, resolve, run as
//! the binary against the real API server and controller, with a real Postfix and its
//! agent answering on the wire.

use crate::{
    plugin::{PLUGIN, plugin_as, plugin_ok},
    terminal::Tmux,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    mta::{maildir_count, run},
    postfix::PostfixWithAgent,
    support::{Mta, condition, observed, ready_because, summary, wait_for},
    world::{Scene, World, service_account_kubeconfig},
};
use mail_incident_operator::api::Mode;
use std::{process::Command, time::Duration};

const TARGETS: &str = "app.kubernetes.io/component=mta";

/// Runs the plugin as the administrator, expecting it to fail; its stderr.
fn plugin_refused(world: &World, args: &[&str]) -> String {
    let output = plugin_as(&world.kubeconfig, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "kubectl mail-incident {} succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    eprintln!("$ kubectl mail-incident {}\n{stderr}", args.join(" "));
    stderr
}

/// Runs the plugin as the administrator, printing the command and its output.
fn plugin_shown(world: &World, args: &[&str]) -> String {
    let stdout = plugin_ok(world, args);
    eprintln!("$ kubectl mail-incident {}\n{stdout}", args.join(" "));
    stdout
}

/// The cell of `column` in the first row of a table the plugin printed (the last column
/// runs to the end of the line).
fn cell<'a>(table: &'a str, column: &str) -> &'a str {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let at = header.find(column).expect("the column");
    let row = lines.next().expect("a row");
    let rest = &row[at..];
    if header[at..].trim_end() == column {
        rest
    } else {
        rest.split("   ").next().unwrap().trim_end()
    }
}

fn in_days(days: i64) -> String {
    Timestamp::now()
        .checked_add(SignedDuration::from_hours(24 * days))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_predicts_the_rcpt_answer_then_extend_and_escalate_keep_their_bounds() {
    let scene = Scene::start("pw-declare").await;
    let Scene {
        world,
        ns,
        incidents,
        ..
    } = &scene;
    let mta = PostfixWithAgent::start(&scene, "pw-declare").await;
    let postfix = &mta.postfix;
    let n = ns.name.as_str();
    let declare = [
        "declare",
        "pw-declared",
        "-n",
        n,
        "--mode",
        "TempFail",
        "--targets",
        TARGETS,
        "--reason",
        "INC-50 mailbox storage down",
        "--for",
        "2h",
    ];

    // The dry run writes nothing and predicts the answer.
    let dry_run = plugin_shown(
        world,
        &[&declare[..], &["--dry-run", "--recipient", "user@e2e.test"]].concat(),
    );
    assert_eq!(cell(&dry_run, "TARGET"), "Deployment/postfix-inbound");
    assert_eq!(cell(&dry_run, "DELIVERY"), "agent (reload)");
    assert_eq!(cell(&dry_run, "MTA"), "Postfix");
    assert_eq!(
        cell(&dry_run, "AGENTS"),
        "no report yet (reported during incidents)"
    );
    let predicted = cell(&dry_run, "RCPT ANSWER").to_string();
    assert!(incidents.get_opt("pw-declared").await.unwrap().is_none());

    // As YAML the dry run prints the incident itself, which the API server takes as it is
    // (named otherwise here, selecting nothing, so that it leaves the MTA alone).
    let mut elsewhere = declare.to_vec();
    elsewhere[1] = "pw-gitops";
    elsewhere[7] = "app=none";
    let yaml = plugin_ok(
        world,
        &[&elsewhere[..], &["--dry-run", "-o", "yaml"]].concat(),
    );
    eprintln!(
        "$ kubectl mail-incident {} --dry-run -o yaml\n{yaml}",
        elsewhere.join(" ")
    );
    let object: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(object["kind"], "MailIncident");
    assert_eq!(object["metadata"]["namespace"], n);
    assert!(incidents.get_opt("pw-gitops").await.unwrap().is_none());
    let applied = world.kubectl(&["apply", "-f", "-"], Some(&yaml));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let stored = incidents.get("pw-gitops").await.unwrap();
    assert_eq!(
        serde_json::to_value(&stored.spec).unwrap(),
        serde_json::to_value(
            serde_yaml::from_value::<mail_incident_operator::api::MailIncidentSpec>(
                object["spec"].clone()
            )
            .unwrap()
        )
        .unwrap()
    );
    wait_for(incidents, "pw-gitops", "seen, selecting nothing", |i| {
        observed(i) && condition(i, "Ready").is_some_and(|c| c.1 == "NoTargets")
    })
    .await;

    // Bad input is refused in the controller's words, and nothing is written.
    let mut hard_reject = declare.to_vec();
    hard_reject[5] = "HardReject";
    let refused = plugin_refused(world, &hard_reject);
    assert!(
        refused.contains("spec.hardReject.acknowledgeBounces: must be true for mode HardReject"),
        "{refused}"
    );
    let refused = plugin_refused(
        world,
        &[&declare[..], &["--reply", "550 5.3.2 Gone"]].concat(),
    );
    assert!(
        refused.contains("spec.smtpReply.code: 550 is not allowed for mode TempFail"),
        "{refused}"
    );
    assert!(incidents.get_opt("pw-declared").await.unwrap().is_none());

    // Declared and followed until Ready; then Postfix answers exactly the prediction.
    let declared = plugin_shown(
        world,
        &[&declare[..], &["--wait", "--timeout", "1m"]].concat(),
    );
    let header: Vec<&str> = declared
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "MODE", "TARGETS", "STARTS", "EXPIRES", "REASON"]
    );
    let row: Vec<&str> = declared
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..4],
        ["pw-declared", "TempFail", TARGETS, "now"],
        "{declared}"
    );
    assert!(declared.contains("1/1 targets applied"), "{declared}");
    assert!(declared.trim_end().ends_with("is Ready."), "{declared}");
    let answer = postfix.smtp.rcpt_reply_once("452");
    eprintln!("predicted: {predicted}\nanswered:  {answer}");
    assert_eq!(answer, predicted);

    // Declared again, as JSON: the same object, applied under the plugin's field manager.
    let printed = plugin_ok(world, &[&declare[..], &["-o", "json"]].concat());
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    eprintln!(
        "$ kubectl mail-incident {} -o json | head -12\n{}",
        declare.join(" "),
        printed.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    let object = &json["items"][0];
    assert_eq!(object["spec"]["mode"], "TempFail");
    assert_eq!(object["spec"]["duration"], "2h");
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl-mail-incident"), "{managers:?}");

    // extend: not past 100 days from the start, not shorter unless asked; --by moves it.
    let refused = plugin_refused(
        world,
        &["extend", "pw-declared", "-n", n, "--until", &in_days(101)],
    );
    assert!(refused.contains("bound of 100 days"), "{refused}");
    let sooner = Timestamp::now()
        .checked_add(SignedDuration::from_mins(30))
        .unwrap()
        .to_string();
    let refused = plugin_refused(
        world,
        &["extend", "pw-declared", "-n", n, "--until", &sooner],
    );
    assert!(refused.contains("add --allow-shorter"), "{refused}");
    let before = incidents.get("pw-declared").await.unwrap();
    let end_before = before.status.unwrap().expires_at.unwrap().0;
    let extended = plugin_shown(world, &["extend", "pw-declared", "-n", n, "--by", "6h"]);
    let after = incidents.get("pw-declared").await.unwrap();
    let end_after = after.spec.expires_at.unwrap().0;
    assert_eq!(
        end_after,
        end_before
            .checked_add(SignedDuration::from_hours(6))
            .unwrap()
    );
    assert_eq!(after.spec.duration, None, "expiresAt replaces duration");
    assert!(
        extended.contains(&format!("now ends at {end_after}")),
        "{extended}"
    );
    // extend refuses while the controller has not seen the last change: let it.
    wait_for(incidents, "pw-declared", "seen", observed).await;
    let printed = plugin_ok(
        world,
        &["extend", "pw-declared", "-n", n, "--by", "1h", "-o", "json"],
    );
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let end_json = end_after
        .checked_add(SignedDuration::from_hours(1))
        .unwrap()
        .to_string();
    eprintln!(
        "$ kubectl mail-incident extend pw-declared -n {n} --by 1h -o json | grep expiresAt\n{}",
        printed
            .lines()
            .filter(|l| l.contains("expiresAt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(json["items"][0]["spec"]["expiresAt"], end_json.as_str());

    // escalate: HardReject needs the flag, and confirmation (none off a terminal).
    let escalate = ["escalate", "pw-declared", "-n", n, "--to", "HardReject"];
    let refused = plugin_refused(world, &escalate);
    assert!(refused.contains("add --acknowledge-bounces"), "{refused}");
    let refused = plugin_refused(world, &[&escalate[..], &["--acknowledge-bounces"]].concat());
    assert!(
        refused.contains("HardReject: 1 MTA workload(s), 1 pod(s), will answer"),
        "{refused}"
    );
    assert!(refused.contains("add --yes"), "{refused}");
    assert_eq!(
        incidents.get("pw-declared").await.unwrap().spec.mode,
        Mode::TempFail
    );
    let escalated = plugin_ok(
        world,
        &[
            &escalate[..],
            &["--acknowledge-bounces", "--yes", "-o", "json"],
        ]
        .concat(),
    );
    let json: serde_json::Value = serde_json::from_str(&escalated).unwrap();
    assert_eq!(
        json["items"][0]["spec"]["mode"], "HardReject",
        "{escalated}"
    );
    assert_eq!(
        json["items"][0]["spec"]["hardReject"]["acknowledgeBounces"],
        true
    );
    let answer = postfix.smtp.rcpt_reply_once("550");
    eprintln!("after escalate: {answer}");
    assert_eq!(
        answer,
        "550 5.3.2 <user@e2e.test>: Recipient address rejected: Mailbox storage unavailable, message not accepted"
    );

    // An incident looked for in the wrong namespace: where it is instead.
    let refused = plugin_refused(
        world,
        &["extend", "pw-declared", "-n", "default", "--by", "1h"],
    );
    assert!(
        refused.contains(&format!(
            "no MailIncident \"pw-declared\" in namespace default; there is one in namespace {n}: add -n {n}"
        )),
        "{refused}"
    );

    let refused = plugin_refused(world, &["resolve", "pw-declared", "-A"]);
    assert!(
        refused.contains("a write acts in one namespace: use -n"),
        "{refused}"
    );

    // --wait gives up at its timeout, naming what is pending.
    let refused = plugin_refused(
        world,
        &[
            "declare",
            "nothing",
            "-n",
            n,
            "--mode",
            "TempFail",
            "--targets",
            "app=none",
            "--reason",
            "INC-51",
            "--for",
            "1h",
            "--wait",
            "--timeout",
            "3s",
        ],
    );
    assert!(
        refused.contains(
            "timed out: after 3s, MailIncident \"nothing\": 0/0 targets applied; NoTargets"
        ),
        "{refused}"
    );

    // A user with only the view role is told what they may not do and which role grants it.
    world.kubectl_ok(&["create", "serviceaccount", "viewer", "-n", n]);
    world.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer-view",
        "-n",
        n,
        "--clusterrole=view",
        &format!("--serviceaccount={n}:viewer"),
    ]);
    let viewer_dir = tempfile::tempdir().unwrap();
    let viewer = viewer_dir.path().join("viewer.kubeconfig");
    std::fs::write(
        &viewer,
        service_account_kubeconfig(world, n, "viewer").await,
    )
    .unwrap();
    let output = plugin_as(&viewer, &declare);
    let forbidden = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "$ kubectl mail-incident {} (as a viewer)\n{forbidden}",
        declare.join(" ")
    );
    assert!(!output.status.success());
    assert!(
        forbidden.contains(&format!(
            "forbidden: you may not patch mailincidents in namespace {n}; the ClusterRole mail-incident-operator-edit (or the edit role) grants it"
        )),
        "{forbidden}"
    );
    let output = plugin_as(&viewer, &["resolve", "pw-declared", "-n", n]);
    let forbidden = String::from_utf8_lossy(&output.stderr);
    eprintln!("$ kubectl mail-incident resolve pw-declared -n {n} (as a viewer)\n{forbidden}");
    assert!(forbidden.contains("forbidden: you may not "), "{forbidden}");
    assert!(!incidents.get("pw-declared").await.unwrap().spec.resolved);

    let resolved = plugin_ok(world, &["resolve", "pw-declared", "-n", n, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&resolved).unwrap();
    assert_eq!(json["items"][0]["spec"]["resolved"], true, "{resolved}");
    let answer = postfix.smtp.rcpt_reply_once("250");
    eprintln!("after resolve -o json: {answer}");
    assert!(answer.starts_with("250 2.1.5"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_wait_follows_the_release_of_held_mail() {
    let scene = Scene::start("pw-resolve").await;
    let Scene {
        world,
        ns,
        incidents,
        ..
    } = &scene;
    let mta = PostfixWithAgent::start(&scene, "pw-resolve").await;
    let postfix = &mta.postfix;
    let n = ns.name.as_str();
    let mailbox = postfix.mailbox();
    let store = mailbox.parent().unwrap().to_path_buf();

    // The store breaks; the incident holds mail.
    run(Command::new("chmod").arg("000").arg(&store));
    plugin_shown(
        world,
        &[
            "declare",
            "storage",
            "-n",
            n,
            "--mode",
            "AcceptAndQueue",
            "--targets",
            TARGETS,
            "--reason",
            "INC-60 storage down",
            "--for",
            "4h",
            "--wait",
        ],
    );
    wait_for(incidents, "storage", "holding mail", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    const HELD: usize = 6;
    for k in 1..=HELD {
        let answer = postfix.smtp.send(&format!("held {k}"));
        assert!(answer.starts_with("250 2.0.0 Ok: queued"), "{answer}");
    }
    // The agent reports the queue every second.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(postfix.queue().len(), HELD);

    run(Command::new("chmod").arg("755").arg(&store));
    let output = plugin_as(
        &world.kubeconfig,
        &["resolve", "storage", "-n", n, "--wait", "--timeout", "2m"],
    );
    let delivered_at_return = maildir_count(&mailbox);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "$ kubectl mail-incident resolve storage -n {n} --wait --timeout 2m\n{stdout}{stderr}\
         delivered when it returned: {delivered_at_return}/{HELD}"
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("held mail: Deployment/postfix-inbound"),
        "{stdout}"
    );
    // It returns only once the held mail has been delivered: the controller keeps the
    // report until the agent says its release is over.
    assert!(
        stdout.contains(&format!(
            "the {HELD} held message(s) reported were delivered"
        )),
        "{stdout}"
    );
    assert_eq!(
        delivered_at_return, HELD,
        "delivered when resolve --wait returned"
    );
}

/// Whether the screen shows the exit status the typed line echoes (`EXIT=$?` as typed).
fn exited(screen: &str) -> bool {
    screen.contains("EXIT=0") || screen.contains("EXIT=1")
}

#[tokio::test]
async fn on_a_terminal_progress_is_redrawn_in_place_and_hard_reject_asks_for_a_yes() {
    let scene = Scene::start("pw-tty").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let n = ns.name.as_str();
    let _kubelet = FakeKubelet::start(client.clone(), n).await;
    let _agents = FakeAgents::start(client.clone(), n).await;
    for name in ["mta-a", "mta-b"] {
        Mta::deployment(name, serde_json::json!({"app": "mta"}))
            .create(client, n)
            .await;
    }
    let plugin = format!(
        "{PLUGIN} --kubeconfig {} -n {n}",
        world.kubeconfig.display()
    );

    let declaring = Tmux::shell(&format!("pw-{n}-declare"), (160, 40));
    declaring.type_line(&format!(
        "{plugin} declare outage --mode TempFail --targets app=mta --reason INC-70 --for 1h --wait; echo EXIT=$?"
    ));
    let screen = declaring
        .wait_for_screen("declare's exit status", exited)
        .await;
    eprintln!(
        "--- the terminal after declare --wait\n{}",
        screen.trim_end()
    );
    assert!(screen.contains("EXIT=0"), "{screen}");
    let progress: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("targets applied"))
        .collect();
    assert_eq!(
        progress,
        ["[####################] 2/2 targets applied: Applied (2/2 targets answer TempFail)"],
        "one line, redrawn in place:\n{screen}"
    );

    let escalating = Tmux::shell(&format!("pw-{n}-escalate"), (160, 40));
    escalating.type_line(&format!(
        "{plugin} escalate outage --to HardReject --acknowledge-bounces; echo EXIT=$?"
    ));
    let asked = escalating
        .wait_for_screen("the question", |s| s.contains("Type yes"))
        .await;
    assert!(
        asked.contains("HardReject: 2 MTA workload(s), 2 pod(s), will answer"),
        "{asked}"
    );
    assert_eq!(
        incidents.get("outage").await.unwrap().spec.mode,
        Mode::TempFail
    );
    escalating.type_line("yes");
    let screen = escalating
        .wait_for_screen("escalate's exit status", exited)
        .await;
    eprintln!(
        "--- the terminal after escalate, answered yes\n{}",
        screen.trim_end()
    );
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        screen.contains("escalated from TempFail to HardReject"),
        "{screen}"
    );
    assert_eq!(
        incidents.get("outage").await.unwrap().spec.mode,
        Mode::HardReject
    );
}
