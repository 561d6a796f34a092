//! Real Postfix, from Debian's package, as a private instance on a loopback port: each
//! mode the agent renders is answered on the wire exactly, and normal service restores
//! the configuration exactly (`postconf -n` before and after).

use crate::{
    fakes::FakeKubelet,
    operations::promtool_check,
    support::{apply_incident, eventually, ready_because, summary, wait_for},
    world::{Scene, World, http_get, service_account_kubeconfig},
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use mail_incident_operator::agent::postfix::{Baseline, Edits, render};
use mail_incident_operator::api::mode_document::AgentReport;
use mail_incident_operator::api::{
    Mode,
    mode_document::{
        DocumentIncident, DocumentQueue, DocumentReply, MODE_DOCUMENT_KIND, MODE_DOCUMENT_VERSION,
        ModeDocument,
    },
};
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

struct PostfixInstance {
    name: String,
    conf: PathBuf,
    port: u16,
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e}; e2e/install-deps.sh installs postfix")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One SMTP client session; QUIT is sent when it is dropped.
struct SmtpSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpSession {
    /// Connects and reads the greeting.
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut session = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        session.reply();
        session
    }

    /// Sends one line; the last line of the reply.
    fn command(&mut self, line: &str) -> String {
        write!(self.writer, "{line}\r\n").unwrap();
        self.reply()
    }

    /// A reply's last line has a space, not a dash, after the code.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.trim_end().to_string();
            }
        }
    }
}

impl Drop for SmtpSession {
    fn drop(&mut self) {
        write!(self.writer, "QUIT\r\n").ok();
    }
}

fn instance_script() -> Command {
    Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/e2e/postfix-instance.sh"
    ))
}

impl PostfixInstance {
    /// Starts a private instance (see e2e/postfix-instance.sh) on a free loopback port.
    fn start(name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = run(instance_script().args(["start", name, &port.to_string()]));
        Self {
            name: name.into(),
            conf: PathBuf::from(conf.trim()),
            port,
        }
    }

    fn postfix(&self) -> Command {
        let mut command = Command::new("postfix");
        command.arg("-c").arg(&self.conf);
        command
    }

    fn postconf(&self) -> Command {
        let mut command = Command::new("postconf");
        command.arg("-c").arg(&self.conf);
        command
    }

    /// Applies rendered edits the way the agent does: postconf, then a reload.
    fn apply(&self, edits: &Edits) {
        for (name, value) in edits {
            match value {
                Some(value) => run(self.postconf().arg("-e").arg(format!("{name} = {value}"))),
                None => run(self.postconf().arg("-X").arg(name)),
            };
        }
        run(self.postfix().arg("reload"));
    }

    /// Sends one message to user@e2e.test; the reply to the end of DATA.
    fn send(&self, subject: &str) -> String {
        let mut session = SmtpSession::open(self.port);
        for command in [
            "EHLO client.e2e.test",
            "MAIL FROM:<sender@example.net>",
            "RCPT TO:<user@e2e.test>",
            "DATA",
        ] {
            session.command(command);
        }
        session.command(&format!(
            "Subject: {subject}\r\n\r\nHeld while storage is down.\r\n."
        ))
    }

    /// The reply to RCPT TO in a fresh SMTP session.
    fn rcpt_reply(&self) -> String {
        let mut session = SmtpSession::open(self.port);
        for command in ["EHLO client.e2e.test", "MAIL FROM:<sender@example.net>"] {
            assert!(session.command(command).starts_with("250"));
        }
        session.command("RCPT TO:<user@e2e.test>")
    }
}

impl PostfixInstance {
    /// The RCPT reply once it starts with `prefix`: a reload reaches new smtpd processes
    /// only, so an idle old one may answer once more with the old configuration.
    fn rcpt_reply_once(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self.rcpt_reply();
            if answer.starts_with(prefix) || Instant::now() > deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        let _ = instance_script().args(["stop", &self.name]).output();
    }
}

fn document(mode: Mode, code: u16, enhanced: &str, text: &str) -> ModeDocument {
    ModeDocument {
        api_version: MODE_DOCUMENT_VERSION.into(),
        kind: MODE_DOCUMENT_KIND.into(),
        mode,
        reply: DocumentReply {
            code,
            enhanced_code: enhanced.into(),
            text: text.into(),
        },
        queue: DocumentQueue {
            lifetime: "30d".into(),
            bounce_lifetime: "30d".into(),
        },
        mta: None,
        incident: DocumentIncident {
            name: "outage".into(),
            uid: "u".into(),
            reason: "r".into(),
        },
    }
}

#[test]
fn postfix_answers_each_rendered_mode_and_returns_to_its_baseline() {
    let postfix = PostfixInstance::start("render");
    let before = run(postfix.postconf().arg("-n"));
    let baseline = Baseline::from_postconf_n(&before);
    assert!(
        postfix.rcpt_reply().starts_with("250 2.1.5"),
        "normal service accepts"
    );

    let temp_fail = document(
        Mode::TempFail,
        452,
        "4.3.1",
        "Mailbox storage temporarily unavailable, try again later",
    );
    postfix.apply(&render(Some(&temp_fail), &baseline, "lmtp"));
    let answer = postfix.rcpt_reply_once("452");
    assert!(answer.starts_with("452 4.3.1 "), "{answer}");
    assert!(
        answer.ends_with("Mailbox storage temporarily unavailable, try again later"),
        "{answer}"
    );

    let hard_reject = document(
        Mode::HardReject,
        550,
        "5.3.2",
        "Mailbox storage unavailable, message not accepted",
    );
    postfix.apply(&render(Some(&hard_reject), &baseline, "lmtp"));
    let answer = postfix.rcpt_reply_once("550");
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
    postfix.apply(&render(Some(&hold), &baseline, "lmtp"));
    assert!(
        postfix.rcpt_reply_once("250").starts_with("250 2.1.5"),
        "AcceptAndQueue keeps accepting"
    );
    let held = run(postfix.postconf().args([
        "-h",
        "maximal_queue_lifetime",
        "defer_transports",
        "soft_bounce",
    ]));
    assert_eq!(held.lines().collect::<Vec<_>>(), ["30d", "lmtp", "yes"]);

    postfix.apply(&render(None, &baseline, "lmtp"));
    assert_eq!(
        run(postfix.postconf().arg("-n")),
        before,
        "normal service must restore main.cf exactly"
    );
    assert!(postfix.rcpt_reply_once("250").starts_with("250 2.1.5"));
}

/// The agent binary, running as the example's agent ServiceAccount next to a Postfix
/// instance, for one pod. Killed when dropped; its log is printed if the test failed.
struct AgentProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
    http: String,
}

impl AgentProcess {
    async fn start(
        world: &World,
        namespace: &str,
        pod: &str,
        postfix: &PostfixInstance,
        mailbox_transport: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("agent.kubeconfig");
        let config = service_account_kubeconfig(world, namespace, "postfix-inbound-agent").await;
        std::fs::write(&kubeconfig, config).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_mail-incident-operator"))
            .args([
                "agent",
                "--workload",
                "Deployment/postfix-inbound",
                "--namespace",
                namespace,
                "--pod",
                pod,
            ])
            .arg("--postfix-config")
            .arg(&postfix.conf)
            .args([
                "--report-seconds",
                "1",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--mailbox-transport", mailbox_transport])
            .env("KUBECONFIG", &kubeconfig)
            .env("NO_COLOR", "1")
            .stderr(log)
            .spawn()
            .expect("the agent starts");
        Self {
            child,
            dir,
            http: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!("--- agent log\n{log}");
        }
    }
}

/// The example MTA (examples/postfix-with-agent.yaml: the Deployment and the agent's
/// ServiceAccount and Role) applied in `namespace`, with a kubelet stand-in; returns it and
/// the name of the pod whose agent the test runs.
async fn mta_with_agent_rbac(
    world: &World,
    client: &Client,
    namespace: &str,
) -> (FakeKubelet, String) {
    let kubelet = FakeKubelet::start(client.clone(), namespace).await;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/postfix-with-agent.yaml"
    );
    world.kubectl_ok(&["apply", "-n", namespace, "-f", example]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = eventually("the MTA pod", || async {
        let selected = ListParams::default().labels("app.kubernetes.io/instance=postfix-inbound");
        pods.list(&selected)
            .await
            .ok()?
            .items
            .first()
            .map(|p| p.name_any())
    })
    .await;
    (kubelet, pod)
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
    let before = run(postfix.postconf().arg("-n"));
    let agent = AgentProcess::start(world, &ns.name, &pod, &postfix, "lmtp").await;
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
        let answer = postfix.rcpt_reply_once(&expected[..3]);
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
    assert!(postfix.rcpt_reply_once("250").starts_with("250 2.1.5"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(postfix.postconf().arg("-n")) != before {
        assert!(
            Instant::now() < deadline,
            "main.cf not back to its baseline"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    // This instance delivers to its mailboxes with the `local` transport: that is what
    // the incident holds.
    let _agent = AgentProcess::start(world, &ns.name, &pod, &postfix, "local").await;

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
        let answer = postfix.send(&format!("message {n}"));
        assert!(
            answer.starts_with("250 2.0.0 Ok: queued"),
            "message {n}: {answer}"
        );
    }

    // The agent reports 3 queued messages; past the limit of 2 the controller switches
    // the target to TempFail, and Postfix refuses new mail with the incident's 4xx.
    let answer = postfix.rcpt_reply_once("452");
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
    let held = run(Command::new("postqueue")
        .arg("-c")
        .arg(&postfix.conf)
        .arg("-j"));
    assert_eq!(
        held.lines().count(),
        3,
        "the queued mail is still held, none bounced:\n{held}"
    );
}
