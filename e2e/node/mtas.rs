//! The example MTAs with their agents as real pods: a Postfix Deployment and an Exim
//! StatefulSet from `examples/`, with only what a one-machine node forces changed (images
//! imported rather than pulled, hostPath stores the test can break and count, hostPath
//! PersistentVolumes for their queues). Over SMTP from the host each answers 250 normally,
//! the incident's exact reply in TempFail and HardReject, holds mail in AcceptAndQueue with
//! its store broken and delivers all of it after resolve, its configuration then back to
//! its baseline.

use crate::node::{
    Node, container_pid, count_files, pod_ip, pod_logs, pods_ready, set_mode, smtp_address,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use mail_incident_e2e_support::{
    mta::{Smtp, SmtpSession, maildir_count},
    support::{apply_incident, apply_yaml, eventually_within, ready_because, wait_for_within},
    world::TestNamespace,
};
use mail_incident_operator::api::MailIncident;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Agents apply within a second or two; Postfix's reload reaches new smtpd processes only.
const CONVERGE: Duration = Duration::from_secs(60);
/// A release delivers at once (Postfix: `postqueue -f`; Exim: `exim -qff` runners). Well
/// under the agent's 50-second second try, and under Exim's own retry schedule, which
/// would otherwise deliver the mail of a release that failed.
const RELEASE: Duration = Duration::from_secs(20);
const HELD: usize = 5;

/// One example MTA running on the node.
pub struct PodMta {
    pub label: &'static str,
    selector: &'static str,
    /// Its pod's name, once it runs.
    pub pod: String,
    /// Its SMTP address (its pod's IP, set once the pod runs) and recipient.
    pub smtp: Smtp,
    /// The hostPath directory its Maildir store is in.
    pub store: PathBuf,
    /// The store's Maildir (where `new/` fills).
    pub maildir: PathBuf,
    /// The MTA's main process, for reading its configuration through /proc.
    process_word: &'static str,
    /// Its configuration files, as the MTA container sees them.
    configuration: &'static [&'static str],
    /// What the MTA puts between a refusal's codes and the incident's text.
    refusal_words: &'static str,
    /// The agent's state file, on the queue's PersistentVolume.
    state_file: PathBuf,
    /// Where, under the queue's PersistentVolume, the MTA writes why it defers each
    /// message, and the words that say the incident's hold deferred it.
    hold_log: (PathBuf, &'static str),
}

impl PodMta {
    /// Its configuration files, each line's fields separated by one space: `postconf -F`
    /// rewrites a master.cf line it edits with its own spacing, and fields are what count.
    fn configuration(&self, pod: &Pod) -> String {
        let pid = container_pid(pod, self.process_word)
            .unwrap_or_else(|| panic!("{}: no {} process", self.label, self.process_word));
        self.configuration
            .iter()
            .map(|file| {
                let path = format!("/proc/{pid}/root{file}");
                let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "(absent)".into());
                let lines: Vec<String> = text
                    .lines()
                    .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                format!("== {file}\n{}\n", lines.join("\n"))
            })
            .collect()
    }

    /// Sends one message; the MTA's reply to it.
    pub async fn send(&self, subject: String) -> String {
        let smtp = self.smtp.clone();
        tokio::task::spawn_blocking(move || smtp.send(&subject))
            .await
            .expect("SMTP task")
    }

    /// The MTA's reply to RCPT, if it answered.
    pub async fn rcpt_reply(&self) -> Option<String> {
        let smtp = self.smtp.clone();
        tokio::task::spawn_blocking(move || smtp.try_rcpt_reply().ok())
            .await
            .expect("SMTP task")
    }

    fn delivered(&self) -> usize {
        maildir_count(&self.maildir)
    }

    /// How many copies of each message (by its subject) the store received.
    fn copies_by_subject(&self) -> BTreeMap<String, usize> {
        let mut copies = BTreeMap::new();
        for entry in std::fs::read_dir(self.maildir.join("new"))
            .into_iter()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(entry.expect("a maildir entry").path()) else {
                continue;
            };
            let subject = text
                .lines()
                .find_map(|line| line.strip_prefix("Subject: "))
                .unwrap_or_default();
            *copies.entry(subject.to_string()).or_default() += 1;
        }
        copies
    }

    /// Messages the MTA says it defers because the incident holds them (not because the
    /// store fails).
    fn held(&self) -> usize {
        let (log, words) = &self.hold_log;
        count_files(log, &|entry| {
            std::fs::read_to_string(entry).is_ok_and(|text| text.contains(words))
        })
    }
}

/// The documents of an example file, with what the one-machine node forces: every image
/// taken from the node (no registry), and the agent reaching the API server through the
/// bridge's gateway (no kube-proxy makes the `kubernetes` Service's ClusterIP work).
pub fn example(file: &str) -> Vec<Value> {
    let api = |name| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let api_env = json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": api("E2E_NODE_API_HOST")},
        {"name": "KUBERNETES_SERVICE_PORT", "value": api("E2E_NODE_API_PORT")},
    ]);
    let text = std::fs::read_to_string(format!("{REPO}/examples/{file}")).expect("example");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut doc = Value::deserialize(d).expect("example parses");
            for list in ["initContainers", "containers"] {
                if let Some(Value::Array(containers)) =
                    doc.pointer_mut(&format!("/spec/template/spec/{list}"))
                {
                    for container in containers {
                        container["imagePullPolicy"] = json!("Never");
                        if container["name"] == "agent" {
                            let env = container["env"].as_array_mut().expect("agent env");
                            env.extend(api_env.as_array().unwrap().iter().cloned());
                        }
                    }
                }
            }
            doc
        })
        .collect()
}

/// Replaces the named volume of a workload document with a hostPath directory.
pub fn host_volume(workload: &mut Value, name: &str, path: &Path) {
    let volumes = workload
        .pointer_mut("/spec/template/spec/volumes")
        .and_then(Value::as_array_mut)
        .expect("volumes");
    let volume = volumes
        .iter_mut()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"));
    *volume = json!({"name": name, "hostPath": {"path": path, "type": "Directory"}});
}

/// A hostPath PersistentVolume bound in advance to the claim `claim` of `namespace`, and
/// its directory.
pub fn volume_for(node: &Node, namespace: &str, claim: &str, mode: u32) -> (Value, PathBuf) {
    let path = node.volume(&format!("{namespace}-{claim}"));
    set_mode(&path, mode);
    let volume = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{namespace}-{claim}")},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": path, "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
        }
    });
    (volume, path)
}

pub fn apply_values(node: &Node, namespace: &str, documents: &[Value]) {
    let yaml: String = documents
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    apply_yaml(&node.world, namespace, &yaml);
}

/// The example Postfix Deployment (with deploy/agent's identity) and Exim StatefulSet,
/// each workload changed by `adjust` first, running and ready.
pub async fn start_examples(
    node: &Node,
    namespace: &str,
    adjust: impl Fn(&mut Value),
) -> Vec<PodMta> {
    node.world.kubectl_ok(&[
        "apply",
        "-n",
        namespace,
        "-k",
        &format!("{REPO}/deploy/agent"),
    ]);
    let postfix_store = node.volume(&format!("{namespace}-postfix-mailboxes"));
    // The virtual transport writes as vmail (5000).
    std::os::unix::fs::chown(&postfix_store, Some(5000), Some(5000)).expect("chown");
    let exim_store = node.volume(&format!("{namespace}-exim-mailboxes"));

    let mut postfix = example("postfix-with-agent.yaml");
    host_volume(&mut postfix[1], "mailboxes", &postfix_store);
    adjust(&mut postfix[1]);
    // Postfix wants its queue directory root-owned and closed to others.
    let (queue_volume, postfix_queue) = volume_for(node, namespace, "postfix-inbound-queue", 0o755);
    postfix.push(queue_volume);
    let mut exim = example("exim-with-agent.yaml");
    host_volume(&mut exim[3], "mailboxes", &exim_store);
    adjust(&mut exim[3]);
    let (spool_volume, exim_spool) = volume_for(node, namespace, "spool-exim-inbound-0", 0o777);
    exim.push(spool_volume);
    apply_values(node, namespace, &postfix);
    apply_values(node, namespace, &exim);

    let pods: Api<Pod> = Api::namespaced(node.client().await, namespace);
    let mut started = Vec::new();
    for mut mta in [
        PodMta {
            label: "Postfix",
            pod: String::new(),
            selector: "app.kubernetes.io/instance=postfix-inbound",
            smtp: Smtp {
                address: smtp_address([0, 0, 0, 0].into()),
                recipient: "user@e2e.test",
            },
            store: postfix_store.clone(),
            maildir: postfix_store.join("user"),
            process_word: "/master",
            configuration: &["/etc/postfix/main.cf", "/etc/postfix/master.cf"],
            refusal_words: "<user@e2e.test>: Recipient address rejected: ",
            state_file: postfix_queue.join("mail-incident-agent/agent-state.json"),
            // defer_transports: qmgr's "deferred transport".
            hold_log: (postfix_queue.join("defer"), "deferred transport"),
        },
        PodMta {
            label: "Exim",
            pod: String::new(),
            selector: "app.kubernetes.io/instance=exim-inbound",
            smtp: Smtp {
                address: smtp_address([0, 0, 0, 0].into()),
                recipient: "user@local.test",
            },
            store: exim_store.clone(),
            maildir: exim_store.join("Maildir"),
            process_word: "exim4",
            configuration: &[
                "/etc/exim4/mail-incident/mode",
                "/etc/exim4/mail-incident/retry.conf",
                "/etc/exim4/mail-incident/release",
            ],
            refusal_words: "",
            state_file: exim_spool.join("mail-incident-agent/agent-state.json"),
            // The hold router's :defer: text (examples/images/exim/exim4.conf).
            hold_log: (exim_spool.join("msglog"), "held by a mail incident"),
        },
    ] {
        mta.pod = pods_ready(&pods, mta.selector, 1).await.remove(0);
        mta.smtp.address = smtp_address(pod_ip(&pods, &mta.pod).await);
        started.push(mta);
    }
    started
}

/// Waits until the MTA's configuration is its baseline again; panics showing both if not.
async fn back_to_baseline(mta: &PodMta, pod: &Pod, baseline: &str) {
    let deadline = std::time::Instant::now() + CONVERGE;
    while mta.configuration(pod) != baseline && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        mta.configuration(pod),
        baseline,
        "{}: its configuration back to its baseline",
        mta.label
    );
}

async fn the_pod(client: &Client, namespace: &str, mta: &PodMta) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = pods_ready(&pods, mta.selector, 1).await.remove(0);
    pods.get(&name).await.expect("pod")
}

/// Every MTA's RCPT answer, once each starts with `code` (or panics with the last one).
async fn answer_all(mtas: &[PodMta], code: &str) -> Vec<String> {
    let mut answers = Vec::new();
    for mta in mtas {
        let answer = eventually_within(
            CONVERGE,
            &format!("{} answering RCPT with {code}", mta.label),
            || async { mta.rcpt_reply().await.filter(|a| a.starts_with(code)) },
        )
        .await;
        answers.push(answer);
    }
    answers
}

/// Each MTA's configuration before any incident.
async fn baselines(client: &Client, namespace: &str, mtas: &[PodMta]) -> Vec<String> {
    let mut baselines = Vec::new();
    for mta in mtas {
        baselines.push(mta.configuration(&the_pod(client, namespace, mta).await));
    }
    baselines
}

/// Breaks every store, declares AcceptAndQueue (released `concurrency` at a time), and
/// sends [`HELD`] messages to each MTA, every one answered 250.
async fn hold_mail(
    node: &Node,
    namespace: &str,
    incidents: &Api<MailIncident>,
    mtas: &[PodMta],
    concurrency: u32,
    store_broken: bool,
) {
    for mta in mtas.iter().filter(|_| store_broken) {
        set_mode(&mta.store, 0o000);
    }
    apply_incident(
        &node.world,
        namespace,
        "outage",
        &format!(
            "mode: AcceptAndQueue\nreason: INC-9 storage down\n{TARGETS}\nqueue: {{lifetime: 40d, \
             bounceLifetime: 8d}}\nrelease: {{concurrency: {concurrency}}}"
        ),
    );
    wait_for_within(
        CONVERGE,
        incidents,
        "outage",
        "Ready with both MTAs",
        ready_because("Applied"),
    )
    .await;
    answer_all(mtas, "250").await;
    for mta in mtas {
        for n in 0..HELD {
            let reply = mta.send(format!("held {n}")).await;
            assert!(reply.starts_with("250"), "{}: {reply}", mta.label);
        }
    }
    for mta in mtas {
        eventually_within(
            CONVERGE,
            &format!("{}: {HELD} messages deferred by the hold", mta.label),
            || async { (mta.held() == HELD).then_some(()) },
        )
        .await;
        assert_eq!(
            mta.delivered(),
            0,
            "{}: nothing delivered while held",
            mta.label
        );
    }
}

/// How a release's deliveries may have been interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Deliveries {
    /// Nothing killed them: each held message is delivered exactly once.
    Undisturbed,
    /// Delivery processes were killed (the agent's release runners die with its
    /// container): a delivery killed after the store took the message and before the MTA
    /// recorded it is made again, as an MTA must rather than lose it. A duplicate is then
    /// allowed, and printed; a lost message never is.
    Killed,
}

/// Every held message delivered by each MTA (each subject sent reaches the store), its
/// configuration back to its baseline, and normal answers.
async fn delivered_and_back_to_baseline(
    client: &Client,
    namespace: &str,
    mtas: &[PodMta],
    baselines: &[String],
    deliveries: Deliveries,
) {
    for (mta, baseline) in mtas.iter().zip(baselines) {
        let delivered = tokio::time::timeout(RELEASE, async {
            while mta.copies_by_subject().len() != HELD {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let pod = the_pod(client, namespace, mta).await;
        // What a failure needs to be understood: which messages arrived how often, and
        // what the agent and the MTA logged.
        let copies = mta.copies_by_subject();
        assert!(
            delivered.is_ok(),
            "{}: not all {HELD} held messages delivered within {RELEASE:?}: {copies:?}\n{}",
            mta.label,
            pod_logs(&pod)
        );
        let duplicated: Vec<_> = copies.iter().filter(|(_, count)| **count > 1).collect();
        match deliveries {
            Deliveries::Undisturbed => assert!(
                duplicated.is_empty(),
                "{}: delivered more than once: {duplicated:?}\n{}",
                mta.label,
                pod_logs(&pod)
            ),
            Deliveries::Killed if !duplicated.is_empty() => eprintln!(
                "{}: delivered again after a delivery was killed: {duplicated:?}",
                mta.label
            ),
            Deliveries::Killed => {}
        }
        back_to_baseline(mta, &pod, baseline).await;
    }
    answer_all(mtas, "250").await;
}

const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";

#[tokio::test]
async fn postfix_and_exim_pods_answer_each_mode_hold_mail_and_deliver_it_after_resolve() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-mtas");
    let mtas = start_examples(node, &ns.name, |_| {}).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);

    // Normal service, and the configuration it starts from.
    answer_all(&mtas, "250").await;
    let baselines = baselines(&client, &ns.name, &mtas).await;

    for (spec, codes, text) in [
        (
            "mode: TempFail\nsmtpReply: {code: 452, enhancedCode: 4.3.1, text: 'Mailbox storage down, try later'}",
            "452 4.3.1",
            "Mailbox storage down, try later",
        ),
        (
            "mode: HardReject\nhardReject: {acknowledgeBounces: true}",
            "550 5.3.2",
            "Mailbox storage unavailable, message not accepted",
        ),
    ] {
        apply_incident(
            &node.world,
            &ns.name,
            "outage",
            &format!("{spec}\nreason: INC-9 storage down\n{TARGETS}"),
        );
        wait_for_within(
            CONVERGE,
            &incidents,
            "outage",
            "Ready with both MTAs",
            ready_because("Applied"),
        )
        .await;
        let answers = answer_all(&mtas, &codes[..3]).await;
        for (mta, answer) in mtas.iter().zip(answers) {
            assert_eq!(answer, format!("{codes} {}{text}", mta.refusal_words));
        }
    }

    // AcceptAndQueue with the stores working: mail is accepted and held (deferred by the
    // hold, not by a failing store), none delivered.
    hold_mail(node, &ns.name, &incidents, &mtas, 2, false).await;
    // Resolve: every held message is delivered, the MTAs are back to their own
    // configuration.
    node.world
        .kubectl_ok(&["delete", "mailincident", "-n", &ns.name, "outage"]);
    delivered_and_back_to_baseline(
        &client,
        &ns.name,
        &mtas,
        &baselines,
        Deliveries::Undisturbed,
    )
    .await;
}

/// SIGKILLs the agent process of the MTA's pod; the kubelet restarts its container.
async fn kill_agent(client: &Client, namespace: &str, mta: &PodMta) -> i32 {
    let pod = the_pod(client, namespace, mta).await;
    let restarts = agent_restarts(&pod);
    let pid = container_pid(&pod, "/mail-incident-operator")
        .unwrap_or_else(|| panic!("{}: no agent process", mta.label));
    mail_incident_e2e_support::mta::run(
        std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
    );
    restarts
}

fn agent_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "agent"))
        .map_or(0, |c| c.restart_count)
}

/// Waits until the kubelet has restarted the agent container (after `before` restarts)
/// and the pod is ready again.
async fn agent_restarted(client: &Client, namespace: &str, mta: &PodMta, before: i32) {
    eventually_within(
        CONVERGE,
        &format!("{}: the agent container restarted and ready", mta.label),
        || async {
            let pod = the_pod(client, namespace, mta).await;
            (agent_restarts(&pod) > before).then_some(())
        },
    )
    .await;
}

/// How long the crash-loop test keeps each MTA's agent down, killing every process of it
/// the kubelet starts.
const AGENT_DOWN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_agent_crash_looping_during_temp_fail_leaves_its_mta_refusing_softly() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-crashloop");
    let mtas = start_examples(node, &ns.name, |_| {}).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    answer_all(&mtas, "250").await;
    let baselines = baselines(&client, &ns.name, &mtas).await;
    apply_incident(
        &node.world,
        &ns.name,
        "outage",
        &format!("mode: TempFail\nreason: INC-18 storage down\n{TARGETS}"),
    );
    wait_for_within(
        CONVERGE,
        &incidents,
        "outage",
        "applied",
        ready_because("Applied"),
    )
    .await;
    answer_all(&mtas, "452").await;

    // Every agent process the kubelet starts is killed at once, for AGENT_DOWN: the
    // kubelet's back-off grows, the MTA runs alone, and every RCPT meanwhile must be
    // refused softly: never accepted, never bounced.
    for mta in &mtas {
        let pod = the_pod(&client, &ns.name, mta).await;
        let before = agent_restarts(&pod);
        let (mut asked, mut kills, mut slowest) = (0, 0, Duration::ZERO);
        let down = std::time::Instant::now();
        while down.elapsed() < AGENT_DOWN {
            if let Some(pid) = container_pid(&pod, "/mail-incident-operator") {
                mail_incident_e2e_support::mta::run(
                    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
                );
                kills += 1;
            }
            let started = std::time::Instant::now();
            let answer = mta.rcpt_reply().await;
            slowest = slowest.max(started.elapsed());
            asked += 1;
            assert!(
                answer.as_deref().is_some_and(|a| a.starts_with("452 ")),
                "{}: RCPT answered {answer:?} while its agent was down",
                mta.label
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{}: agent killed {kills} times over {} s; {asked} RCPTs meanwhile, each 452, the slowest in {:.2} s",
            mta.label,
            AGENT_DOWN.as_secs(),
            slowest.as_secs_f64()
        );
        assert!(
            kills >= 2,
            "{}: the kubelet restarted the agent {kills} time(s)",
            mta.label
        );
        agent_restarted(&client, &ns.name, mta, before).await;
        // Back after the kubelet's back-off (up to 40 s by now), before the next MTA.
        eventually_within(
            Duration::from_secs(90),
            &format!("{}: its agent running again", mta.label),
            || async { container_pid(&pod, "/mail-incident-operator").map(drop) },
        )
        .await;
    }

    node.world
        .kubectl_ok(&["delete", "mailincident", "-n", &ns.name, "outage"]);
    for (mta, baseline) in mtas.iter().zip(&baselines) {
        let pod = the_pod(&client, &ns.name, mta).await;
        back_to_baseline(mta, &pod, baseline).await;
    }
    answer_all(&mtas, "250").await;
}

#[tokio::test]
async fn an_agent_killed_mid_incident_and_mid_release_is_restarted_and_no_message_is_lost() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-kills");
    let mtas = start_examples(node, &ns.name, |_| {}).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    answer_all(&mtas, "250").await;
    let baselines = baselines(&client, &ns.name, &mtas).await;

    hold_mail(node, &ns.name, &incidents, &mtas, 1, true).await;

    // Mid-incident: the restarted agent holds the MTA where it was.
    for mta in &mtas {
        let before = kill_agent(&client, &ns.name, mta).await;
        agent_restarted(&client, &ns.name, mta, before).await;
    }
    answer_all(&mtas, "250").await;
    for mta in &mtas {
        set_mode(&mta.store, 0o777);
    }
    // The restarted agents keep the hold in force: their MTAs do not run their baseline,
    // and the store, working again, has received nothing.
    for (mta, baseline) in mtas.iter().zip(&baselines) {
        let pod = the_pod(&client, &ns.name, mta).await;
        assert_ne!(
            mta.configuration(&pod),
            *baseline,
            "{}: still held",
            mta.label
        );
        assert_eq!(
            mta.delivered(),
            0,
            "{}: still held after the kill",
            mta.label
        );
    }

    // Mid-release: every agent killed as soon as both saved states say Releasing (one
    // agent's restart takes long enough for the other MTA to finish its release).
    node.world
        .kubectl_ok(&["delete", "mailincident", "-n", &ns.name, "outage"]);
    eventually_within(CONVERGE, "both MTAs releasing", || async {
        mtas.iter()
            .all(|mta| {
                std::fs::read_to_string(&mta.state_file)
                    .is_ok_and(|state| state.contains("Releasing"))
            })
            .then_some(())
    })
    .await;
    let killed: Vec<_> = {
        let mut killed = Vec::new();
        for mta in &mtas {
            killed.push(kill_agent(&client, &ns.name, mta).await);
        }
        killed
    };
    for (mta, before) in mtas.iter().zip(killed) {
        agent_restarted(&client, &ns.name, mta, before).await;
    }
    delivered_and_back_to_baseline(&client, &ns.name, &mtas, &baselines, Deliveries::Killed).await;
}

/// One SMTP session to `mta`: EHLO, MAIL FROM, then RCPT to each of `recipients`; the
/// RCPT replies, printed as a transcript.
async fn rcpt_session(mta: &PodMta, recipients: &[&str]) -> Vec<String> {
    let address = mta.smtp.address;
    let label = mta.label;
    let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut session = SmtpSession::open(address);
        session.command("EHLO client.e2e.test");
        session.command("MAIL FROM:<sender@example.net>");
        let replies: Vec<String> = recipients
            .iter()
            .map(|r| session.command(&format!("RCPT TO:<{r}>")))
            .collect();
        eprintln!("--- {label}");
        for (recipient, reply) in recipients.iter().zip(&replies) {
            eprintln!("C: RCPT TO:<{recipient}>\nS: {reply}");
        }
        replies
    })
    .await
    .expect("SMTP task")
}

/// One message to every recipient of `recipients`, each RCPT and the DATA answered 250.
async fn send_to(mta: &PodMta, recipients: &[&str], subject: &str) {
    let address = mta.smtp.address;
    let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    let subject = subject.to_string();
    let label = mta.label;
    tokio::task::spawn_blocking(move || {
        let mut session = SmtpSession::open(address);
        session.command("EHLO client.e2e.test");
        session.command("MAIL FROM:<sender@example.net>");
        for recipient in &recipients {
            let reply = session.command(&format!("RCPT TO:<{recipient}>"));
            assert!(
                reply.starts_with("250"),
                "{label} RCPT {recipient}: {reply}"
            );
        }
        session.command("DATA");
        let reply = session.command(&format!("Subject: {subject}\r\n\r\nscoped\r\n."));
        assert!(reply.starts_with("250"), "{label} DATA: {reply}");
    })
    .await
    .expect("SMTP task")
}

#[tokio::test]
async fn scoped_incidents_answer_and_hold_each_recipient_by_its_domain_in_real_pods() {
    let node = Node::get();
    let client = node.client().await;
    let ns = TestNamespace::new(&node.world, "node-scope");
    let mtas = start_examples(node, &ns.name, |_| {}).await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    answer_all(&mtas, "250").await;
    let baselines = baselines(&client, &ns.name, &mtas).await;
    // Each MTA delivers its own domain and pec. below it; the incidents cover pec. only.
    let recipients = |mta: &PodMta| {
        let domain = mta.smtp.recipient.split_once('@').expect("an address").1;
        (format!("user@pec.{domain}"), mta.smtp.recipient.to_string())
    };
    let scope = "scope: {recipientDomains: [pec.e2e.test, pec.local.test]}";
    // Declares incident `pec` (INC-11, every MTA) and waits until both MTAs apply it.
    let declare = async |spec: &str| {
        apply_incident(
            &node.world,
            &ns.name,
            "pec",
            &format!("{spec}\nreason: INC-11 PEC storage down\n{TARGETS}"),
        );
        wait_for_within(
            CONVERGE,
            &incidents,
            "pec",
            "Ready with both MTAs",
            ready_because("Applied"),
        )
        .await;
    };

    for (spec, code) in [
        ("mode: TempFail", "452 4.3.1 "),
        (
            "mode: HardReject\nhardReject: {acknowledgeBounces: true}",
            "550 5.3.2 ",
        ),
    ] {
        declare(&format!("{spec}\n{scope}")).await;
        for mta in &mtas {
            let (scoped, unscoped) = recipients(mta);
            let replies = eventually_within(
                CONVERGE,
                &format!("{}: {code} for {scoped} and 250 for {unscoped}", mta.label),
                || async {
                    let replies = rcpt_session(mta, &[&scoped, &unscoped]).await;
                    (replies[0].starts_with(code) && replies[1].starts_with("250"))
                        .then_some(replies)
                },
            )
            .await;
            assert!(replies[0].contains("Mailbox storage"), "{replies:?}");
        }
    }

    // AcceptAndQueue, every store working: pec mail is held, the rest delivered at once,
    // a message to both split by recipient.
    declare(&format!("mode: AcceptAndQueue\n{scope}")).await;
    for mta in &mtas {
        let (scoped, unscoped) = recipients(mta);
        send_to(mta, &[&scoped], "pec only").await;
        send_to(mta, &[&unscoped], "base only").await;
        send_to(mta, &[&scoped, &unscoped], "both").await;
    }
    for mta in &mtas {
        eventually_within(
            CONVERGE,
            &format!("{}: the 2 copies outside the scope delivered", mta.label),
            || async { (mta.delivered() == 2).then_some(()) },
        )
        .await;
        eventually_within(
            CONVERGE,
            &format!("{}: the 2 pec messages held", mta.label),
            || async { (mta.held() == 2).then_some(()) },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for mta in &mtas {
        assert_eq!(
            mta.delivered(),
            2,
            "{}: nothing in scope delivered",
            mta.label
        );
    }
    apply_incident(
        &node.world,
        &ns.name,
        "pec",
        &format!(
            "mode: AcceptAndQueue\n{scope}\nresolved: true\nreason: INC-11 PEC storage down\n{TARGETS}"
        ),
    );
    for (mta, baseline) in mtas.iter().zip(&baselines) {
        eventually_within(
            RELEASE,
            &format!("{}: the 2 held pec messages delivered", mta.label),
            || async { (mta.delivered() == 4).then_some(()) },
        )
        .await;
        let pod = the_pod(&client, &ns.name, mta).await;
        back_to_baseline(mta, &pod, baseline).await;
        eprintln!(
            "{}: 4 recipients' copies delivered of 4 sent, 2 of them held until the resolve",
            mta.label
        );
    }
    answer_all(&mtas, "250").await;
}
