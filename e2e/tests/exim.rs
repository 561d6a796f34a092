//! Real Exim, from Debian's exim4-daemon-light, as a private daemon on a loopback port
//! with a Maildir store (e2e/exim-instance.sh, e2e/exim.conf), switched only by
//! MailIncidents through the agent (`agent --mta exim`).

use crate::stories::{
    a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message,
    scoped_incidents_answer_each_recipient_by_its_domain,
};
use mail_incident_e2e_support::{
    exim::EximInstance,
    mta::{AgentProcess, admitted_character_texts, mta_with_agent_rbac, run},
    support::{apply_incident, eventually_within, ready_because, summary, wait_for},
    world::Scene,
};
use std::time::Duration;

#[tokio::test]
async fn a_mail_incident_switches_a_real_exim_and_its_held_mail_is_all_delivered() {
    let scene = Scene::start("exim").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let (_kubelet, pod) = mta_with_agent_rbac(world, client, &ns.name).await;
    let exim = EximInstance::start(&format!("exim-{}", ns.name));
    let config_before = std::fs::read_to_string(exim.root.join("exim.conf")).unwrap();
    let agent = AgentProcess::start(world, &ns.name, &pod, &exim.agent_args()).await;
    let targets = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";

    // Normal: delivered to the store.
    assert!(exim.smtp.send("before").starts_with("250 OK id="));
    eventually_within(Duration::from_secs(10), "normal delivery", || async {
        (exim.delivered() == 1).then_some(())
    })
    .await;

    // TempFail and HardReject: exactly the incident's reply at RCPT, whatever characters
    // its text holds.
    // In two texts: a text is at most 61 characters, so that it stays on one line.
    let [first, second] = admitted_character_texts();
    let tempfail_with = |text: &str| {
        let quoted = serde_json::to_string(text).unwrap();
        (
            "TempFail",
            format!("smtpReply: {{code: 451, enhancedCode: 4.3.0, text: {quoted}}}"),
            format!("451 4.3.0 {text}"),
        )
    };
    for (mode, extra, expected) in [
        tempfail_with(&first),
        tempfail_with(&second),
        (
            "TempFail",
            "smtpReply: {code: 452, enhancedCode: 4.3.1, text: 'Mailbox storage down, try later'}"
                .into(),
            "452 4.3.1 Mailbox storage down, try later".into(),
        ),
        (
            "HardReject",
            "hardReject: {acknowledgeBounces: true}".into(),
            "550 5.3.2 Mailbox storage unavailable, message not accepted".into(),
        ),
    ] {
        let started = std::time::Instant::now();
        apply_incident(
            world,
            &ns.name,
            "outage",
            &format!("mode: {mode}\nreason: INC-50\n{targets}\n{extra}"),
        );
        // The whole reply: from the first text to the second only the text changes.
        let answer = exim.smtp.rcpt_reply_once(&expected);
        assert_eq!(answer, expected, "{mode}");
        eprintln!(
            "Exim {mode}: kubectl apply to the new SMTP answer in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        wait_for(incidents, "outage", "acknowledged by the agent", |i| {
            ready_because("Applied")(i) && summary(i) == Some("1/1")
        })
        .await;
    }

    // AcceptAndQueue: every message taken and held, none delivered, none bounced; the
    // retry rule's final time is the incident's lifetime.
    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!(
            "mode: AcceptAndQueue\nreason: INC-50\n{targets}\nqueue: {{lifetime: 40d}}\nrelease: {{concurrency: 3}}\nescalation: {{maxQueuedMessages: 8}}"
        ),
    );
    assert!(exim.smtp.rcpt_reply_once("250").starts_with("250"));
    wait_for(incidents, "outage", "holding mail", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    let retry = std::fs::read_to_string(exim.root.join("mail-incident/retry.conf")).unwrap();
    assert_eq!(retry, "MAIL_INCIDENT_LIFETIME = 40d\n");
    const HELD: usize = 6;
    for n in 1..=HELD {
        let answer = exim.smtp.send(&format!("held {n}"));
        assert!(answer.starts_with("250 OK id="), "message {n}: {answer}");
    }
    // Force a delivery attempt of each: the hold router defers them all.
    run(exim.exim().arg("-qf"));
    assert_eq!(exim.queued(), HELD);
    assert_eq!(
        exim.delivered(),
        1,
        "nothing delivered while storage is held"
    );
    assert_eq!(exim.bounced(), 0);

    // Escalation: more than 8 queued switches the target to TempFail on its own.
    for n in 1..=3 {
        assert!(
            exim.smtp
                .send(&format!("more {n}"))
                .starts_with("250 OK id=")
        );
    }
    let answer = exim.smtp.rcpt_reply_once("452");
    assert!(answer.starts_with("452 4.3.1 "), "{answer}");
    wait_for(incidents, "outage", "escalated", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| !s.escalated_targets.is_empty())
    })
    .await;

    // Resolve: all held mail delivered, count in = count delivered; config as before.
    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!(
            "mode: AcceptAndQueue\nreason: INC-50\n{targets}\nqueue: {{lifetime: 40d}}\nrelease: {{concurrency: 3}}\nresolved: true"
        ),
    );
    wait_for(incidents, "outage", "resolved", ready_because("Resolved")).await;
    eventually_within(
        Duration::from_secs(30),
        "every held message delivered",
        || async { (exim.delivered() == 1 + HELD + 3 && exim.queued() == 0).then_some(()) },
    )
    .await;
    assert_eq!(exim.bounced(), 0);
    eventually_within(
        Duration::from_secs(10),
        "the incident lifetime dropped",
        || async { (!exim.root.join("mail-incident/retry.conf").exists()).then_some(()) },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(exim.root.join("mail-incident/mode")).unwrap(),
        "normal\n",
        "a key without data: no rule for any domain"
    );
    assert_eq!(
        std::fs::read_to_string(exim.root.join("exim.conf")).unwrap(),
        config_before,
        "the site's configuration is never edited"
    );
    assert!(exim.smtp.rcpt_reply().starts_with("250"));
    assert!(agent.log().contains("state=Releasing"), "{}", agent.log());
}

/// The scoped incident's answer per recipient in one SMTP session, driven through the
/// controller and the agent: see [`scoped_incidents_answer_each_recipient_by_its_domain`].
#[tokio::test]
async fn scoped_incidents_answer_each_recipient_by_its_domain_on_a_real_exim() {
    scoped_incidents_answer_each_recipient_by_its_domain("scope-ex-answers", EximInstance::start)
        .await;
}

/// A scoped AcceptAndQueue holds only its domains' mail, on a real Exim: see
/// [`a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message`].
#[tokio::test]
async fn scoped_hold_delivers_other_domains_and_releases_domain_by_domain_on_a_real_exim() {
    a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message(
        "scope-ex-hold",
        EximInstance::start,
    )
    .await;
}
