//! The stories every real MTA goes through, told once over [`ScopedMta`]: scoped
//! incidents answering each recipient by its domain, and a scoped hold releasing domain by
//! domain. `postfix.rs` and `exim.rs` run them on their MTA, each in a scene of its own
//! with the MTA's agent.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use mail_incident_e2e_support::{
    fakes::FakeKubelet,
    mta::{AgentProcess, ScopedMta, mta_with_agent_rbac, run, session, transcript},
    support::{apply_incident, eventually, eventually_within, ready_because, summary, wait_for},
    world::Scene,
};
use mail_incident_operator::api::mode_document::AgentReport;
use std::{process::Command, time::Duration};

/// A real MTA and its agent, in a scene of its own with the example workload: what each
/// story starts from. Stopped when dropped, the agent first.
struct MtaWithAgent<M> {
    agent: AgentProcess,
    mta: M,
    pod: String,
    _kubelet: FakeKubelet,
    scene: Scene,
}

impl<M: ScopedMta> MtaWithAgent<M> {
    /// A scene named after `prefix`, and an MTA from `start` named after `story` and the
    /// scene's namespace.
    async fn start(prefix: &str, story: &str, start: impl FnOnce(&str) -> M) -> Self {
        let scene = Scene::start(prefix).await;
        let (kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
        let mta = start(&format!("{story}-{}", scene.ns.name));
        let agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &mta.agent_args()).await;
        Self {
            agent,
            mta,
            pod,
            _kubelet: kubelet,
            scene,
        }
    }
}

const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";

/// A scoped incident's spec.
fn scoped(mode: &str, reason: &str, domains: &[&str], extra: &str) -> String {
    format!(
        "mode: {mode}\nreason: {reason}\n{TARGETS}\nscope: {{recipientDomains: [{}]}}\n{extra}",
        domains
            .iter()
            .map(|d| format!("'{d}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Applies `spec` as incident `name` and waits until the agent has applied it.
async fn declare(scene: &Scene, name: &str, spec: &str) {
    apply_incident(scene.world, &scene.ns.name, name, spec);
    wait_for(&scene.incidents, name, "applied by the agent", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
}

/// Resolves incident `name` (declared with `spec`) and waits until it is.
async fn resolve(scene: &Scene, name: &str, spec: &str) {
    apply_incident(
        scene.world,
        &scene.ns.name,
        name,
        &format!("{spec}\nresolved: true"),
    );
    wait_for(
        &scene.incidents,
        name,
        "resolved",
        ready_because("Resolved"),
    )
    .await;
}

/// EHLO, MAIL FROM and a RCPT TO for each recipient, then RSET.
fn rcpt_commands(recipients: &[String]) -> Vec<String> {
    let mut commands = vec![
        "EHLO client.e2e.test".to_string(),
        "MAIL FROM:<sender@example.net>".to_string(),
    ];
    commands.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>")));
    commands.push("RSET".into());
    commands
}

/// The RCPT replies, in one session, for `user@` each of `domains`, once each starts
/// with its expected code; printed as a transcript.
fn answers(mta: &dyn ScopedMta, label: &str, expected: &[(&str, &str)]) {
    let recipients: Vec<String> = expected.iter().map(|(d, _)| format!("user@{d}")).collect();
    let matches = |replies: &[String]| {
        expected
            .iter()
            .enumerate()
            .all(|(at, (_, code))| replies.get(at + 2).is_some_and(|r| r.starts_with(code)))
    };
    let replies = transcript(
        &format!("{} {label}", mta.label()),
        mta.address(),
        &rcpt_commands(&recipients),
        matches,
    );
    assert!(matches(&replies), "{label}: {replies:?}");
}

/// In one SMTP session, a recipient in a scoped domain gets the incident's reply and one
/// outside it the MTA's normal answer, in TempFail and in HardReject; two overlapping
/// scoped incidents give each domain the most severe mode covering it and are resolved
/// domain by domain; the configuration ends as it began.
pub async fn scoped_incidents_answer_each_recipient_by_its_domain<M: ScopedMta>(
    prefix: &str,
    start: impl FnOnce(&str) -> M,
) {
    let running = MtaWithAgent::start(prefix, "scope-answers", start).await;
    let (scene, mta) = (&running.scene, &running.mta);
    let base = mta.domain();
    let pec = format!("pec.{base}");
    let storage = format!("storage.{base}");
    let (a, b) = (format!("a.{storage}"), format!("b.{storage}"));
    let before = mta.baseline();

    let pec_spec =
        |mode: &str, extra: &str| scoped(mode, "INC-70 PEC storage down", &[pec.as_str()], extra);
    declare(scene, "pec", &pec_spec("TempFail", "")).await;
    answers(
        mta,
        "TempFail scoped to pec",
        &[(&pec, "452 4.3.1 "), (base, "250"), (&a, "250")],
    );
    let reject = pec_spec("HardReject", "hardReject: {acknowledgeBounces: true}");
    declare(scene, "pec", &reject).await;
    answers(
        mta,
        "HardReject scoped to pec",
        &[(&pec, "550 5.3.2 "), (base, "250"), (&a, "250")],
    );
    resolve(scene, "pec", &reject).await;

    let wildcard = format!("*.{storage}");
    let storage_spec = scoped("TempFail", "INC-71 storage cluster down", &[&wildcard], "");
    let disk_spec = scoped(
        "HardReject",
        "INC-72 disk array A lost",
        &[a.as_str()],
        "hardReject: {acknowledgeBounces: true}",
    );
    declare(scene, "storage", &storage_spec).await;
    declare(scene, "disk-a", &disk_spec).await;
    answers(
        mta,
        "TempFail *.storage and HardReject a.storage",
        &[
            (&a, "550 5.3.2 "),
            (&b, "452 4.3.1 "),
            (&storage, "250"),
            (&pec, "250"),
            (base, "250"),
        ],
    );
    resolve(scene, "disk-a", &disk_spec).await;
    answers(
        mta,
        "HardReject a.storage resolved",
        &[(&a, "452 4.3.1 "), (&b, "452 4.3.1 "), (base, "250")],
    );
    resolve(scene, "storage", &storage_spec).await;
    answers(
        mta,
        "both resolved",
        &[(&a, "250"), (&b, "250"), (&pec, "250"), (base, "250")],
    );
    eventually_within(
        Duration::from_secs(20),
        "the configuration back to its baseline",
        || async { (mta.configuration() == before).then_some(()) },
    )
    .await;
}

/// Sends one message from sender@example.net to `recipients`; the reply to its end.
fn send(mta: &dyn ScopedMta, recipients: &[String], subject: &str, print: bool) -> String {
    let mut commands = rcpt_commands(recipients);
    commands.pop();
    commands.push("DATA".into());
    commands.push(format!(
        "Subject: {subject}\r\n\r\nHeld while storage is down.\r\n."
    ));
    let replies = if print {
        transcript(
            &format!("{} {subject}", mta.label()),
            mta.address(),
            &commands,
            |_| true,
        )
    } else {
        session(mta.address(), &commands)
    };
    replies.last().cloned().unwrap_or_default()
}

/// AcceptAndQueue scoped to two domains by two incidents, their stores down: their mail
/// is held, every other domain's delivered at once, a message to both kinds delivered to
/// the one and held for the other; the agent reports the held mail only. Resolving one
/// incident delivers its domain's mail at once while the other's stays held; resolving
/// the other delivers the rest: count in = count delivered, nothing bounced, the agent
/// released the mail (its log says `Releasing`), and the configuration back to its
/// baseline.
pub async fn a_scoped_hold_holds_only_its_domains_and_delivers_every_held_message<M: ScopedMta>(
    prefix: &str,
    start: impl FnOnce(&str) -> M,
) {
    let running = MtaWithAgent::start(prefix, "scope-hold", start).await;
    let (scene, mta, pod) = (&running.scene, &running.mta, running.pod.as_str());
    let base = mta.domain();
    let pec = format!("pec.{base}");
    let storage = format!("storage.{base}");
    let a = format!("a.{storage}");
    let before = mta.baseline();
    let chmod = |mode: &str, domain: &str| {
        run(Command::new("chmod").arg(mode).arg(mta.store(domain)));
    };
    for domain in [&pec, &a] {
        chmod("000", domain);
    }
    let queue = "queue: {lifetime: 40d, bounceLifetime: 8d}\nrelease: {concurrency: 2}";
    let pec_spec = scoped("AcceptAndQueue", "INC-80 PEC storage down", &[&pec], queue);
    let wildcard = format!("*.{storage}");
    let storage_spec = scoped("AcceptAndQueue", "INC-81 storage down", &[&wildcard], queue);
    declare(scene, "pec", &pec_spec).await;
    declare(scene, "storage", &storage_spec).await;

    const EACH: usize = 4;
    const MIXED: usize = 3;
    for n in 1..=EACH {
        for domain in [&pec, &base.to_string()] {
            let answer = send(
                mta,
                &[format!("user@{domain}")],
                &format!("{domain} {n}"),
                n == 1,
            );
            assert!(answer.starts_with("250"), "{domain} {n}: {answer}");
        }
    }
    for n in 1..=MIXED {
        let recipients = [format!("user@{a}"), format!("user@{base}")];
        let answer = send(mta, &recipients, &format!("mixed {n}"), n == 1);
        assert!(answer.starts_with("250"), "mixed {n}: {answer}");
    }
    eventually_within(
        Duration::from_secs(20),
        "the mail for unscoped recipients delivered at once",
        || async { (mta.delivered(base) == EACH + MIXED).then_some(()) },
    )
    .await;
    // A flush tries every message again: the held mail stays held.
    mta.run_queue();
    std::thread::sleep(Duration::from_secs(2));
    let held = EACH + MIXED;
    assert_eq!(mta.queued(), held, "held: the scoped recipients' mail");
    assert_eq!(mta.delivered(&pec) + mta.delivered(&a), 0);
    assert_eq!(mta.delivered(base), EACH + MIXED);
    assert_eq!(mta.bounced(), 0);
    let reports: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    eventually("the agent reports the held mail", || async {
        let report = reports
            .get("mail-mode-deployment-postfix-inbound-report")
            .await
            .ok()?;
        let entry: AgentReport = serde_json::from_str(report.data?.get(pod)?).ok()?;
        (entry.queue?.messages == held as u64).then_some(())
    })
    .await;
    eprintln!(
        "{}: held {held} messages ({EACH} to {pec}, {MIXED} mixed to {a} and {base}); delivered at once {} to {base}",
        mta.label(),
        mta.delivered(base)
    );

    // One incident ends: its domains' mail goes out now, the other's stays held.
    chmod("755", &a);
    resolve(scene, "storage", &storage_spec).await;
    eventually_within(
        Duration::from_secs(30),
        "the mail of the released domain delivered",
        || async { (mta.delivered(&a) == MIXED && mta.queued() == EACH).then_some(()) },
    )
    .await;
    assert_eq!(mta.delivered(&pec), 0, "still held");
    chmod("755", &pec);
    resolve(scene, "pec", &pec_spec).await;
    eventually_within(
        Duration::from_secs(30),
        "every held message delivered",
        || async { (mta.delivered(&pec) == EACH && mta.queued() == 0).then_some(()) },
    )
    .await;
    assert_eq!(mta.delivered(base), EACH + MIXED);
    assert_eq!(mta.bounced(), 0);
    eprintln!(
        "{}: in {} messages ({} recipients); delivered {} to {pec}, {} to {a}, {} to {base}; queued {}, bounced {}",
        mta.label(),
        2 * EACH + MIXED,
        2 * EACH + 2 * MIXED,
        mta.delivered(&pec),
        mta.delivered(&a),
        mta.delivered(base),
        mta.queued(),
        mta.bounced()
    );
    eventually_within(
        Duration::from_secs(30),
        "the configuration back to its baseline",
        || async { (mta.configuration() == before).then_some(()) },
    )
    .await;
    let log = running.agent.log();
    assert!(log.contains("state=Releasing"), "{log}");
}
