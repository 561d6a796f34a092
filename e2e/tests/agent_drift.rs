//! The agent owns what the MTA runs: at random moments, hands change a real Postfix's
//! managed settings and policy restriction during a TempFail, and a real Exim's mode and
//! retry files in each incident mode; each time the agent puts the incident back within a stated bound (measured), counts
//! the drift and reports it, and once the incident ends the configuration is the
//! baseline (the site's own newer values included). The agent's SMTP probe hears what
//! senders hear, and sends nothing. And a dead agent leaves Postfix refusing softly,
//! never accepting.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use mail_incident_e2e_support::{
    exim::EximInstance,
    fakes::FakeKubelet,
    mta::{AgentProcess, Smtp, admitted_character_texts, mta_with_agent_rbac, run},
    postfix::PostfixInstance,
    support::{apply_incident, eventually_within, ready_because, summary, wait_for},
    world::{Scene, http_get, rand_suffix},
};
use mail_incident_operator::api::mode_document::{AgentReport, DriftReport};
use std::{
    collections::BTreeMap,
    ffi::OsString,
    time::{Duration, Instant},
};

/// How long a hand's change may stay in force: the agent's read-back period (2 s by
/// default) plus one apply (a `postfix reload` or a file write), with room for a loaded
/// machine.
const RESTORE_BOUND: Duration = Duration::from_secs(10);
/// Hand edits per kind of change, each at a random moment.
const REPETITIONS: usize = 3;
const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
const REPORT: &str = "mail-mode-deployment-postfix-inbound-report";

/// A random wait of up to 1.5 s: the next edit lands anywhere in the agent's period.
fn random_moment() -> Duration {
    Duration::from_millis(u64::from(rand_suffix() % 1500))
}

/// Times a restoration: how long after the change (made at `changed`) `restored` first
/// holds (polled every 100 ms), failing beyond [`RESTORE_BOUND`].
async fn restored_after(changed: Instant, what: &str, restored: impl Fn() -> bool) -> Duration {
    eventually_within(RESTORE_BOUND, what, || async { restored().then_some(()) }).await;
    changed.elapsed()
}

/// The agent's drift count, all kinds, from its /metrics.
async fn drift_total(agent: &AgentProcess) -> u64 {
    let (_, metrics) = http_get(&format!("{}/metrics", agent.http))
        .await
        .expect("agent /metrics");
    metrics
        .lines()
        .filter(|line| line.starts_with("mail_incident_agent_drift_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// This pod's drift as its report entry shows it.
async fn reported_drift(config_maps: &Api<ConfigMap>, pod: &str) -> Option<DriftReport> {
    let report = config_maps.get(REPORT).await.ok()?;
    let entry: AgentReport = serde_json::from_str(report.data?.get(pod)?).ok()?;
    entry.drift
}

/// A scene with the example MTA's agent identity and its pod, where the incident
/// `outage` is applied and resolved.
struct Outage {
    /// Declared first so that it is dropped first, as a test's later local would be.
    _kubelet: FakeKubelet,
    scene: Scene,
    pod: String,
    config_maps: Api<ConfigMap>,
}

impl Outage {
    async fn start(prefix: &str) -> Self {
        let scene = Scene::start(prefix).await;
        let (kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
        let config_maps = Api::namespaced(scene.client.clone(), &scene.ns.name);
        Self {
            scene,
            _kubelet: kubelet,
            pod,
            config_maps,
        }
    }

    /// The agent for this pod, with `args` for its MTA.
    async fn agent(&self, args: &[OsString]) -> AgentProcess {
        AgentProcess::start(self.scene.world, &self.scene.ns.name, &self.pod, args).await
    }

    /// Applies `outage` with `spec` (its targets added), waiting until its one target is
    /// applied, or, with `resolved: true` in `spec`, until it is resolved.
    async fn apply(&self, spec: &str) {
        let scene = &self.scene;
        apply_incident(
            scene.world,
            &scene.ns.name,
            "outage",
            &format!("reason: INC-18\n{TARGETS}\n{spec}"),
        );
        let resolved = spec.contains("resolved: true");
        let (what, reason) = if resolved {
            ("resolved", "Resolved")
        } else {
            ("applied", "Applied")
        };
        wait_for(&scene.incidents, "outage", what, |i| {
            ready_because(reason)(i) && (resolved || summary(i) == Some("1/1"))
        })
        .await;
    }

    /// Waits until the agent's metric and report entry have counted a drift past
    /// `before`, the report naming `named`.
    async fn drift_seen(&self, agent: &AgentProcess, before: u64, named: &str) {
        let deadline = Instant::now() + RESTORE_BOUND;
        loop {
            let counted = drift_total(agent).await;
            let reported = reported_drift(&self.config_maps, &self.pod).await;
            if counted > before
                && reported
                    .as_ref()
                    .is_some_and(|drift| drift.count > before && drift.what.contains(named))
            {
                return;
            }
            // What the agent counted, reported and said is what tells a lost drift from
            // a slow report.
            assert!(
                Instant::now() < deadline,
                "no drift of {named} counted and reported within {RESTORE_BOUND:?}: counted {counted} (before {before}), reported {reported:?}; the agent's log ends:\n{}",
                agent.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The agent's arguments for an MTA (`args`), with the SMTP probe asking it about
/// `smtp`'s recipient every second.
fn with_probe(mut args: Vec<OsString>, smtp: &Smtp) -> Vec<OsString> {
    args.extend([
        "--probe-recipient".into(),
        smtp.recipient.into(),
        "--probe-address".into(),
        smtp.address.to_string().into(),
        "--probe-seconds".into(),
        "1".into(),
    ]);
    args
}

/// Waits until the agent's probe last heard `code` from its MTA.
async fn probe_heard(agent: &AgentProcess, code: u16) {
    eventually_within(
        RESTORE_BOUND,
        &format!("the probe hearing {code}"),
        || async {
            let (_, metrics) = http_get(&format!("{}/metrics", agent.http)).await?;
            metrics
                .contains(&format!("mail_incident_agent_probe_reply_code {code}\n"))
                .then_some(())
        },
    )
    .await;
}

/// `postconf -h NAME`: the value main.cf gives a parameter.
fn postconf_value(postfix: &PostfixInstance, name: &str) -> String {
    run(postfix.postconf().args(["-h", name]))
        .trim()
        .to_string()
}

fn reload(postfix: &PostfixInstance) {
    run(std::process::Command::new("postfix")
        .arg("-c")
        .arg(&postfix.conf)
        .arg("reload"));
}

/// Whether a fresh SMTP session gets the default TempFail's 452 at RCPT.
fn refuses_in_temp_fail(postfix: &PostfixInstance) -> bool {
    postfix
        .smtp
        .try_rcpt_reply()
        .is_ok_and(|answer| answer.starts_with("452 4.3.1 "))
}

/// The worst restoration time per kind of change, printed for the record.
fn print_worst<K: std::fmt::Display>(mta: &str, worst: &BTreeMap<K, Duration>) {
    for (kind, time) in worst {
        eprintln!(
            "{mta}: {kind} put back within {:.2} s at worst ({REPETITIONS} repetitions)",
            time.as_secs_f64()
        );
    }
}

#[tokio::test]
async fn hand_edits_of_a_real_postfix_during_temp_fail_are_put_back_and_the_end_restores_the_sites_values()
 {
    let outage = Outage::start("pfdrift").await;
    let postfix = PostfixInstance::start(&format!("pfdrift-{}", outage.scene.ns.name));
    let before_main = run(postfix.postconf().arg("-n"));
    let before_master = run(postfix.postconf().arg("-M"));
    let agent = outage
        .agent(&with_probe(postfix.agent_args(), &postfix.smtp))
        .await;
    outage.apply("mode: TempFail").await;
    probe_heard(&agent, 452).await;
    let refuses = || refuses_in_temp_fail(&postfix);
    assert!(refuses(), "{:?}", postfix.smtp.try_rcpt_reply());
    let value = |name: &str| postconf_value(&postfix, name);
    let incident_restrictions = value("smtpd_recipient_restrictions");
    assert!(
        incident_restrictions.contains("{ default_action = 452 4.3.1 "),
        "the fallback follows the incident: {incident_restrictions}"
    );
    let hand = |setting: &str| {
        run(postfix.postconf().args(["-e", setting]));
        // As a human would, so that the edit reaches new SMTP sessions.
        reload(&postfix);
    };
    let site_restrictions = before_main
        .lines()
        .find_map(|line| line.strip_prefix("smtpd_recipient_restrictions = "))
        .expect("the site's restrictions")
        .to_string();

    let mut worst: BTreeMap<&str, Duration> = BTreeMap::new();
    for repetition in 0..REPETITIONS {
        // (kind, the hand's edit, what the report names)
        let edits = [
            (
                "soft_bounce = no",
                "soft_bounce = no".to_string(),
                "soft_bounce",
            ),
            (
                "maximal_queue_lifetime = 9d",
                "maximal_queue_lifetime = 9d".to_string(),
                "maximal_queue_lifetime",
            ),
            (
                "policy restriction deleted",
                "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination"
                    .to_string(),
                "smtpd_recipient_restrictions",
            ),
            (
                "policy fallback rewritten to DUNNO",
                format!("smtpd_recipient_restrictions = {site_restrictions}"),
                "smtpd_recipient_restrictions",
            ),
        ];
        for (kind, edit, named) in edits {
            tokio::time::sleep(random_moment()).await;
            let before = drift_total(&agent).await;
            let changed = Instant::now();
            hand(&edit);
            let took = restored_after(changed, &format!("{kind} put back ({repetition})"), || {
                value("soft_bounce") == "yes"
                    && value("maximal_queue_lifetime") == "5d"
                    && value("smtpd_recipient_restrictions") == incident_restrictions
                    && refuses()
            })
            .await;
            let slowest = worst.entry(kind).or_default();
            *slowest = (*slowest).max(took);
            outage.drift_seen(&agent, before, named).await;
        }
    }
    print_worst("Postfix", &worst);
    let log = agent.log();
    assert!(
        log.contains("main.cf maximal_queue_lifetime = \"9d\", want \"5d\""),
        "the warning names what differed: {log}"
    );

    // The end: the site's own values, including those a hand set during the incident
    // (soft_bounce, the 9d lifetime); the policy clause is the site's again.
    outage.apply("mode: TempFail\nresolved: true").await;
    let expected_main = {
        let mut lines: Vec<String> = before_main
            .lines()
            .filter(|line| !line.starts_with("maximal_queue_lifetime = "))
            .map(str::to_string)
            .chain([
                "maximal_queue_lifetime = 9d".into(),
                "soft_bounce = no".into(),
            ])
            .collect();
        lines.sort();
        lines.join("\n") + "\n"
    };
    eventually_within(
        Duration::from_secs(30),
        "main.cf back to the site's values and master.cf to its own",
        || async {
            (run(postfix.postconf().arg("-n")) == expected_main
                && run(postfix.postconf().arg("-M")) == before_master)
                .then_some(())
        },
    )
    .await;
    assert!(postfix.smtp.rcpt_reply_once("250").starts_with("250 2.1.5"));
    probe_heard(&agent, 250).await;
    assert!(postfix.queue().is_empty(), "the probe never sent a message");
}

#[tokio::test]
async fn a_new_main_cf_from_the_site_during_an_incident_is_what_its_end_restores() {
    let outage = Outage::start("pfnew").await;
    let postfix = PostfixInstance::start(&format!("pfnew-{}", outage.scene.ns.name));
    let main_cf = postfix.conf.join("main.cf");
    let site_file = std::fs::read_to_string(&main_cf).unwrap();
    let before_main = run(postfix.postconf().arg("-n"));
    let before_master = run(postfix.postconf().arg("-M"));
    let mut agent = outage.agent(&postfix.agent_args()).await;
    outage.apply("mode: TempFail").await;
    assert!(refuses_in_temp_fail(&postfix));

    // A new pod: the site's new image brings its own main.cf with a new lifetime, and the
    // agent starts again on it with the baseline it recorded before the incident.
    agent.kill();
    let new_lifetime =
        |text: &str| text.replace("maximal_queue_lifetime = 3d", "maximal_queue_lifetime = 7d");
    std::fs::write(&main_cf, new_lifetime(&site_file)).unwrap();
    reload(&postfix);
    let restarted = Instant::now();
    agent.restart();
    eventually_within(
        RESTORE_BOUND,
        "the incident applied over the new main.cf",
        || async {
            (postconf_value(&postfix, "maximal_queue_lifetime") == "5d"
                && postconf_value(&postfix, "smtpd_recipient_restrictions")
                    .contains("{ default_action = 452 4.3.1 ")
                && refuses_in_temp_fail(&postfix))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "Postfix: the incident over a new main.cf within {:.2} s of the agent's start",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        agent.log().contains("main.cf maximal_queue_lifetime = 7d"),
        "the new value is logged as the site's: {}",
        agent.log()
    );

    // The end restores the site's new configuration, not the one before the incident.
    outage.apply("mode: TempFail\nresolved: true").await;
    eventually_within(
        Duration::from_secs(30),
        "main.cf as the site's new image has it",
        || async {
            (run(postfix.postconf().arg("-n")) == new_lifetime(&before_main)
                && run(postfix.postconf().arg("-M")) == before_master)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_dead_agent_leaves_postfix_refusing_softly_in_temp_fail_and_hard_reject() {
    let outage = Outage::start("pfdead").await;
    let postfix = PostfixInstance::start(&format!("pfdead-{}", outage.scene.ns.name));
    let before = postfix.configuration();
    let mut agent = outage.agent(&postfix.agent_args()).await;
    // The fallback carries the reply in main.cf: any character the API admits must get
    // through Postfix's parsing of it unchanged.
    let rejected = "<user@e2e.test>: Recipient address rejected:";
    let temp_fail_with = |text: &str| {
        (
            "TempFail",
            format!(
                "smtpReply: {{code: 451, enhancedCode: 4.3.0, text: {}}}",
                serde_json::to_string(text).unwrap()
            ),
            "451 4.3.0 ".to_string(),
            format!("451 4.3.0 {rejected} {text}"),
        )
    };
    let [first, second] = admitted_character_texts();
    for (mode, extra, alive, dead) in [
        temp_fail_with(&first),
        temp_fail_with(&second),
        (
            "HardReject",
            "hardReject: {acknowledgeBounces: true}".into(),
            "550 5.3.2 ".into(),
            format!("451 4.3.0 {rejected} Mailbox storage unavailable, message not accepted"),
        ),
    ] {
        outage.apply(&format!("mode: {mode}\n{extra}")).await;
        let answer = postfix.smtp.rcpt_reply_once(&alive[..3]);
        assert!(
            answer.starts_with(&alive),
            "{mode} with the agent: {answer}"
        );
        agent.kill();
        // Every RCPT while the agent is gone: the soft fallback, never a 250 or a 5xx.
        let killed = Instant::now();
        let mut slowest = Duration::ZERO;
        while killed.elapsed() < Duration::from_secs(5) {
            let asked = Instant::now();
            let answer = postfix.smtp.rcpt_reply();
            slowest = slowest.max(asked.elapsed());
            assert_eq!(answer, dead, "{mode} without the agent must refuse softly");
        }
        eprintln!(
            "Postfix {mode}, agent dead: {} at every RCPT, the slowest after {:.2} s",
            &dead[..9],
            slowest.as_secs_f64()
        );
        agent.restart();
    }
    outage
        .apply("mode: HardReject\nhardReject: {acknowledgeBounces: true}\nresolved: true")
        .await;
    eventually_within(
        Duration::from_secs(30),
        "main.cf and master.cf back to their baseline, the site's DUNNO fallback included",
        || async { (postfix.configuration() == before).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_or_rewritten_exim_mode_or_retry_file_is_put_back_in_every_mode() {
    let outage = Outage::start("eximdrift").await;
    let exim = EximInstance::start(&format!("eximdrift-{}", outage.scene.ns.name));
    let config_before = std::fs::read_to_string(exim.root.join("exim.conf")).unwrap();
    let agent = outage
        .agent(&with_probe(exim.agent_args(), &exim.smtp))
        .await;
    let mode_file = exim.root.join("mail-incident/mode");
    let retry_file = exim.root.join("mail-incident/retry.conf");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).ok();

    let mut worst: BTreeMap<String, Duration> = BTreeMap::new();
    for (mode, extra, answer, code) in [
        (
            "TempFail",
            "",
            "452 4.3.1 Mailbox storage temporarily unavailable, try again later",
            452,
        ),
        (
            "HardReject",
            "hardReject: {acknowledgeBounces: true}",
            "550 5.3.2 Mailbox storage unavailable, message not accepted",
            550,
        ),
        // Accepting, as in normal service: only the files tell the hold apart.
        ("AcceptAndQueue", "", "250 ", 250),
    ] {
        outage.apply(&format!("mode: {mode}\n{extra}")).await;
        probe_heard(&agent, code).await;
        assert!(exim.smtp.rcpt_reply_once(&answer[..3]).starts_with(answer));
        let (incident_mode, incident_retry) = (read(&mode_file), read(&retry_file));
        assert!(
            incident_retry.is_some(),
            "{mode} holds mail with its lifetime"
        );
        // Exim reads the mode file at each RCPT: a hand's change is what senders see now.
        let restored = || {
            read(&mode_file) == incident_mode
                && read(&retry_file) == incident_retry
                && exim
                    .smtp
                    .try_rcpt_reply()
                    .is_ok_and(|reply| reply.starts_with(answer))
        };
        for repetition in 0..REPETITIONS {
            for (kind, named) in [
                ("mode file deleted", "Exim mode file"),
                ("mode file rewritten to normal", "Exim mode file"),
                ("retry file deleted", "Exim retry file"),
            ] {
                tokio::time::sleep(random_moment()).await;
                let before = drift_total(&agent).await;
                let changed = Instant::now();
                match kind {
                    "mode file deleted" => std::fs::remove_file(&mode_file).unwrap(),
                    "mode file rewritten to normal" => {
                        std::fs::write(&mode_file, "normal\n").unwrap()
                    }
                    _ => std::fs::remove_file(&retry_file).unwrap(),
                }
                let what = format!("{mode}: {kind}");
                let took = restored_after(
                    changed,
                    &format!("{what} put back ({repetition})"),
                    restored,
                )
                .await;
                let slowest = worst.entry(what).or_default();
                *slowest = (*slowest).max(took);
                outage.drift_seen(&agent, before, named).await;
            }
        }
    }
    print_worst("Exim", &worst);

    outage.apply("mode: AcceptAndQueue\nresolved: true").await;
    eventually_within(
        Duration::from_secs(30),
        "the mode file normal and the retry file gone",
        || async {
            (read(&mode_file).as_deref() == Some("normal\n") && read(&retry_file).is_none())
                .then_some(())
        },
    )
    .await;
    assert_eq!(read(&exim.root.join("exim.conf")), Some(config_before));
    assert!(exim.smtp.rcpt_reply().starts_with("250"));
    probe_heard(&agent, 250).await;
    assert_eq!(exim.queued(), 0, "the probe never sent a message");
}
