//! Real Postfix, from Debian's package, as a private instance on a loopback port with a
//! Maildir store: each mode the agent renders is answered on the wire exactly, held mail
//! survives a storage outage and is all delivered when the incident ends, and normal
//! service restores the configuration exactly (`postconf -n` and `-M` before and after).

use crate::{
    operations::promtool_check,
    stories::{
        a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message,
        scoped_incidents_answer_each_recipient_by_its_domain,
    },
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use mail_incident_e2e_support::{
    mta::{AgentProcess, every_admitted_character, maildir_count, mta_with_agent_rbac, run},
    postfix::{MAILBOX_TRANSPORT, PostfixInstance},
    support::{apply_incident, eventually_within, ready_because, summary, wait_for},
    world::{Scene, http_get},
};
use mail_incident_operator::agent::metrics::AgentMetrics;
use mail_incident_operator::agent::{
    policy::PolicyService,
    postfix::{Baseline, Target, apply_edits, render},
    state::Held,
};
use mail_incident_operator::api::mode_document::AgentReport;
use mail_incident_operator::api::{
    Mode,
    mode_document::{
        DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply, MODE_DOCUMENT_KIND,
        MODE_DOCUMENT_VERSION, ModeDocument, Rule,
    },
};
use std::{
    process::Command,
    time::{Duration, Instant},
};
use tokio::sync::watch;

fn document(mode: Mode, code: u16, enhanced: &str, text: &str) -> ModeDocument {
    ModeDocument {
        api_version: MODE_DOCUMENT_VERSION.into(),
        kind: MODE_DOCUMENT_KIND.into(),
        rules: vec![Rule {
            mode,
            reply: DocumentReply {
                code,
                enhanced_code: enhanced.into(),
                text: text.into(),
            },
            recipient_domains: None,
            incident: DocumentIncident {
                name: "outage".into(),
                uid: "u".into(),
                reason: "r".into(),
            },
        }],
        queue: DocumentQueue {
            lifetime: "30d".into(),
            bounce_lifetime: "30d".into(),
        },
        release: DocumentRelease { concurrency: 4 },
        mta: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_answers_each_mode_through_the_policy_service_and_returns_to_its_baseline() {
    let postfix = PostfixInstance::start("render");
    let before = postfix.configuration();
    let baseline = Baseline::read(
        &run(postfix.postconf().arg("-n")),
        &run(postfix
            .postconf()
            .args(["-F", "virtual/unix/process_limit"])),
    );
    let (intents, answers) = watch::channel(Held::Normal);
    let service = PolicyService::bind(postfix.policy).await.unwrap();
    let policy = tokio::spawn(service.serve(answers, AgentMetrics::default()));
    let target = Target::new(MAILBOX_TRANSPORT, postfix.policy);
    let apply = |held: &Held| {
        intents.send_replace(held.clone());
        apply_edits(
            &postfix.conf,
            &postfix.queue_directory(),
            MAILBOX_TRANSPORT,
            &render(held, &baseline, &target),
        )
        .unwrap()
    };
    let incident = |document: &ModeDocument| Held::Normal.next(Some(document), 0);
    assert!(
        postfix.smtp.rcpt_reply().starts_with("250 2.1.5"),
        "normal service accepts"
    );

    let temp_fail = document(
        Mode::TempFail,
        452,
        "4.3.1",
        "Mailbox storage temporarily unavailable, try again later",
    );
    // Postfix puts the recipient and its own words between the code and the text.
    let rejected = "<user@e2e.test>: Recipient address rejected:";
    apply(&incident(&temp_fail));
    assert_eq!(
        postfix.smtp.rcpt_reply(),
        format!("452 4.3.1 {rejected} Mailbox storage temporarily unavailable, try again later"),
        "the policy service answers the very next RCPT"
    );
    let every = every_admitted_character();
    apply(&incident(&document(Mode::TempFail, 451, "4.3.0", &every)));
    assert_eq!(
        postfix.smtp.rcpt_reply(),
        format!("451 4.3.0 {rejected} {every}")
    );

    let hard_reject = document(
        Mode::HardReject,
        550,
        "5.3.2",
        "Mailbox storage unavailable, message not accepted",
    );
    apply(&incident(&hard_reject));
    let answer = postfix.smtp.rcpt_reply_once("550");
    assert!(
        answer.starts_with("550 5.3.2 "),
        "soft_bounce must not turn the 5xx into 4xx: {answer}"
    );

    let hold = document(
        Mode::AcceptAndQueue,
        452,
        "4.3.1",
        "Mailbox storage temporarily unavailable, try again later",
    );
    apply(&incident(&hold));
    assert!(
        postfix.smtp.rcpt_reply_once("250").starts_with("250 2.1.5"),
        "AcceptAndQueue keeps accepting"
    );
    let held = run(postfix.postconf().args([
        "-h",
        "maximal_queue_lifetime",
        "defer_transports",
        "soft_bounce",
    ]));
    assert_eq!(held.lines().collect::<Vec<_>>(), ["30d", "virtual", "yes"]);

    apply(&Held::Normal);
    assert_eq!(
        postfix.configuration(),
        before,
        "normal service must restore main.cf and master.cf exactly"
    );
    assert!(postfix.smtp.rcpt_reply_once("250").starts_with("250 2.1.5"));

    // With no policy service, Postfix goes on as the site chose (DUNNO): it accepts.
    policy.abort();
    policy.await.ok();
    assert!(postfix.smtp.rcpt_reply().starts_with("250 2.1.5"));
}

#[tokio::test]
async fn a_mail_incident_switches_a_real_postfix_through_the_agent() {
    let scene = Scene::start("agent").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let (_kubelet, pod) = mta_with_agent_rbac(world, client, &ns.name).await;

    // The agent's token may read its document and patch its report, nothing else.
    let agent = format!("system:serviceaccount:{}:postfix-inbound-agent", ns.name);
    let can = |verb: &str, what: &str| {
        let output = world.kubectl(
            &["auth", "can-i", verb, what, "-n", &ns.name, "--as", &agent],
            None,
        );
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    assert!(can(
        "watch",
        "configmaps/mail-mode-deployment-postfix-inbound"
    ));
    assert!(can(
        "patch",
        "configmaps/mail-mode-deployment-postfix-inbound-report"
    ));
    assert!(
        !can("patch", "configmaps/mail-mode-deployment-postfix-inbound"),
        "an MTA pod must not change its own mode"
    );
    assert!(!can("get", "configmaps/mail-mode-deployment-other"));
    assert!(!can("patch", "pods"));

    let postfix = PostfixInstance::start(&format!("agent-{}", ns.name));
    let before = postfix.configuration();
    let agent = AgentProcess::start(world, &ns.name, &pod, &postfix.agent_args()).await;
    let targets = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";

    for (mode, extra, expected) in [
        ("TempFail", "", "452 4.3.1 "),
        (
            "HardReject",
            "hardReject: {acknowledgeBounces: true}",
            "550 5.3.2 ",
        ),
    ] {
        let started = Instant::now();
        apply_incident(
            world,
            &ns.name,
            "outage",
            &format!("mode: {mode}\nreason: INC-20\n{targets}\n{extra}"),
        );
        let answer = postfix.smtp.rcpt_reply_once(&expected[..3]);
        let elapsed = started.elapsed();
        assert!(answer.starts_with(expected), "{mode}: {answer}");
        eprintln!(
            "{mode}: kubectl apply to the new SMTP answer in {:.2} s",
            elapsed.as_secs_f64()
        );
        wait_for(incidents, "outage", "acknowledged by the agent", |i| {
            ready_because("Applied")(i) && summary(i) == Some("1/1")
        })
        .await;
    }

    // The agent reports its queue with the hash, and its metrics pass promtool.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let report = config_maps
        .get("mail-mode-deployment-postfix-inbound-report")
        .await
        .unwrap();
    let entry: AgentReport = serde_json::from_str(&report.data.unwrap()[&pod]).unwrap();
    assert_eq!(
        entry.queue.map(|q| q.messages),
        Some(0),
        "an empty queue, measured"
    );
    let (_, metrics) = http_get(&format!("{}/metrics", agent.http))
        .await
        .expect("agent /metrics");
    assert!(
        metrics.contains("mail_incident_agent_mode{mode=\"HardReject\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mail_incident_agent_oldest_message_age_seconds 0"),
        "{metrics}"
    );
    promtool_check(&metrics);

    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!(
            "mode: HardReject\nreason: INC-20\n{targets}\nhardReject: {{acknowledgeBounces: true}}\nresolved: true"
        ),
    );
    wait_for(incidents, "outage", "restored", ready_because("Resolved")).await;
    assert!(postfix.smtp.rcpt_reply_once("250").starts_with("250 2.1.5"));
    eventually_within(
        Duration::from_secs(10),
        "main.cf and master.cf back to their baseline",
        || async { (postfix.configuration() == before).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_queue_past_its_limit_turns_accept_and_queue_into_temp_fail_by_itself() {
    let scene = Scene::start("escalate").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let (_kubelet, pod) = mta_with_agent_rbac(world, client, &ns.name).await;
    let postfix = PostfixInstance::start(&format!("escalate-{}", ns.name));
    let _agent = AgentProcess::start(world, &ns.name, &pod, &postfix.agent_args()).await;

    apply_incident(
        world,
        &ns.name,
        "hold",
        "mode: AcceptAndQueue\nreason: INC-30 storage down\ntargets: {matchLabels: {app.kubernetes.io/component: mta}}\nescalation: {maxQueuedMessages: 2}",
    );
    wait_for(incidents, "hold", "holding mail", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    for n in 1..=3 {
        let answer = postfix.smtp.send(&format!("message {n}"));
        assert!(
            answer.starts_with("250 2.0.0 Ok: queued"),
            "message {n}: {answer}"
        );
    }

    // The agent reports 3 queued messages; past the limit of 2 the controller switches
    // the target to TempFail, and Postfix refuses new mail with the incident's 4xx.
    let answer = postfix.smtp.rcpt_reply_once("452");
    assert!(answer.starts_with("452 4.3.1 "), "{answer}");
    let escalated = wait_for(incidents, "hold", "escalated", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| !s.escalated_targets.is_empty())
    })
    .await;
    let status = escalated.status.unwrap();
    assert_eq!(
        status.escalated_targets[0].target,
        "Deployment/postfix-inbound"
    );
    assert!(
        status.escalated_targets[0]
            .reason
            .contains("3 messages, over the limit of 2"),
        "{:?}",
        status.escalated_targets
    );
    assert_eq!(
        format!("{:?}", status.effective_mode.unwrap()),
        "AcceptAndQueue"
    );
    let described = world.kubectl_ok(&["describe", "mailinc", "hold", "-n", &ns.name]);
    assert!(
        described.contains("Escalated") && described.contains("AcceptAndQueue to TempFail"),
        "{described}"
    );
    let held = postfix.queue();
    assert_eq!(
        held.len(),
        3,
        "the queued mail is still held, none bounced: {held:?}"
    );
}

#[tokio::test]
async fn mail_held_through_a_storage_outage_is_all_delivered_when_the_incident_ends() {
    let scene = Scene::start("outage").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let (_kubelet, pod) = mta_with_agent_rbac(world, client, &ns.name).await;
    let postfix = PostfixInstance::start(&format!("outage-{}", ns.name));
    let before = postfix.configuration();
    let agent = AgentProcess::start(world, &ns.name, &pod, &postfix.agent_args()).await;
    let mailbox = postfix.mailbox();

    // Normal service delivers to the store.
    assert!(
        postfix
            .smtp
            .send("before")
            .starts_with("250 2.0.0 Ok: queued")
    );
    eventually_within(Duration::from_secs(10), "normal delivery", || async {
        (maildir_count(&mailbox) == 1).then_some(())
    })
    .await;

    // The store breaks: any delivery attempt would now fail.
    let store = mailbox.parent().unwrap();
    run(Command::new("chmod").arg("000").arg(store));
    let targets = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
    apply_incident(
        world,
        &ns.name,
        "storage",
        &format!(
            "mode: AcceptAndQueue\nreason: INC-40 storage down\n{targets}\nqueue: {{lifetime: 40d, bounceLifetime: 8d}}\nrelease: {{concurrency: 2}}"
        ),
    );
    wait_for(incidents, "storage", "holding mail", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    const HELD: usize = 12;
    for n in 1..=HELD {
        let answer = postfix.smtp.send(&format!("held {n}"));
        assert!(
            answer.starts_with("250 2.0.0 Ok: queued"),
            "message {n}: {answer}"
        );
    }
    let lifetimes =
        run(postfix
            .postconf()
            .args(["-h", "maximal_queue_lifetime", "bounce_queue_lifetime"]));
    assert_eq!(lifetimes.lines().collect::<Vec<_>>(), ["40d", "8d"]);
    // Give the queue manager time to try them: every one stays queued, from its sender.
    std::thread::sleep(Duration::from_secs(2));
    let queue = postfix.queue();
    assert_eq!(queue.len(), HELD, "{queue:?}");
    assert!(
        queue.iter().all(|m| m["sender"] == "sender@example.net"),
        "no bounce was generated: {queue:?}"
    );
    assert_eq!(
        maildir_count(&mailbox),
        1,
        "nothing delivered while storage is down"
    );

    // Storage is back and the incident is resolved: the agent releases the held mail at
    // two deliveries at a time, then restores the configuration.
    run(Command::new("chmod").arg("755").arg(store));
    apply_incident(
        world,
        &ns.name,
        "storage",
        &format!(
            "mode: AcceptAndQueue\nreason: INC-40 storage down\n{targets}\nqueue: {{lifetime: 40d, bounceLifetime: 8d}}\nrelease: {{concurrency: 2}}\nresolved: true"
        ),
    );
    wait_for(incidents, "storage", "resolved", ready_because("Resolved")).await;
    eventually_within(
        Duration::from_secs(30),
        "every held message delivered",
        || async {
            (maildir_count(&mailbox) == HELD + 1 && postfix.queue().is_empty()).then_some(())
        },
    )
    .await;
    eventually_within(
        Duration::from_secs(10),
        "main.cf and master.cf back to their baseline",
        || async { (postfix.configuration() == before).then_some(()) },
    )
    .await;
    let log = agent.log();
    assert!(log.contains("state=Releasing"), "{log}");
    assert!(
        postfix
            .smtp
            .send("after")
            .starts_with("250 2.0.0 Ok: queued")
    );
}

/// The scoped incident's answer per recipient in one SMTP session, driven through the
/// controller and the agent: see [`scoped_incidents_answer_each_recipient_by_its_domain`].
#[tokio::test]
async fn scoped_incidents_answer_each_recipient_by_its_domain_on_a_real_postfix() {
    scoped_incidents_answer_each_recipient_by_its_domain(
        "scope-pf-answers",
        PostfixInstance::start,
    )
    .await;
}

/// A scoped AcceptAndQueue holds only its domains' mail, on a real Postfix: see
/// [`a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message`].
#[tokio::test]
async fn scoped_hold_delivers_other_domains_and_releases_domain_by_domain_on_a_real_postfix() {
    a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message(
        "scope-pf-hold",
        PostfixInstance::start,
    )
    .await;
}
