//! However and whenever an incident ends, the MTA comes back to normal service: real
//! Postfix and real Exim, each with its agent, driven by MailIncidents through kubectl
//! against the real API server and the operator.
//!
//! - Incidents ended 0, 0.5, 1 and 2 s after they are applied, or once the agent reports
//!   them applied, by resolve and by delete, many times over, some with the report object
//!   deleted right after it is created: every time the MTA answers 250 afterwards, its
//!   configuration is the baseline and the agent is ready.
//! - The agent SIGKILLed mid-incident (the incident ends while it is down) and during
//!   the release of held mail: restarted on the same state directory, it ends the
//!   incident and delivers every held message.
//! - The API server unreachable from the agent for 30 s (refused, then blackholed),
//!   with the incident resolved meanwhile: the agent keeps serving and converges once
//!   the API server is back, without a restart.
//!
//! Each test prints what it counted and timed (run with `--nocapture` to see it).

use crate::fault_proxy::FaultProxy;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::DeleteParams};
use mail_incident_e2e_support::{
    exim::EximInstance,
    mta::{AgentProcess, Smtp, maildir_count, mta_with_agent_rbac, run},
    postfix::PostfixInstance,
    support::{
        apply_incident, eventually_within, last_lines, mode_document, ready_because, summary,
        wait_for,
    },
    world::{Scene, http_get},
};
use std::{
    ffi::OsString,
    process::Command,
    time::{Duration, Instant},
};

const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
/// The example workload's report object (examples/postfix-with-agent.yaml).
const REPORT: &str = "mail-mode-deployment-postfix-inbound-report";
/// How long an MTA may take to be back to normal service once its incident has ended.
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    HardReject,
    TempFail,
    AcceptAndQueue,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::HardReject, Mode::TempFail, Mode::AcceptAndQueue];

    fn spec(self) -> String {
        let extra = match self {
            Mode::HardReject => "\nhardReject: {acknowledgeBounces: true}",
            Mode::TempFail => "",
            Mode::AcceptAndQueue => "\nqueue: {lifetime: 40d, bounceLifetime: 8d}",
        };
        format!("mode: {self:?}\nreason: INC-7 storage down\n{TARGETS}{extra}")
    }

    /// The code the MTA answers RCPT with while the incident is applied.
    fn answer(self) -> &'static str {
        match self {
            Mode::HardReject => "550",
            Mode::TempFail => "452",
            Mode::AcceptAndQueue => "250",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Resolve,
    Delete,
}

/// When an incident of the loop ends.
#[derive(Clone, Copy, Debug)]
enum Delay {
    /// This long after `kubectl apply` returned.
    Seconds(f64),
    /// Once the status says the agent applied it (1/1).
    Applied,
}

/// What the tests need of a real MTA next to its agent.
trait Mta {
    fn label(&self) -> &'static str;
    fn smtp(&self) -> &Smtp;
    fn agent_args(&self) -> Vec<OsString>;
    /// Everything the agent may change, as text.
    fn configuration(&self) -> String;
    /// What [`Mta::configuration`] is in normal service. Read before the agent starts.
    fn baseline(&self) -> String;
    /// Messages delivered to mailbox storage.
    fn delivered(&self) -> usize;
    /// The end of the MTA's own log, for failure messages.
    fn log_tail(&self) -> String;
    /// Messages in the queue.
    fn queued(&self) -> usize;
    /// The directory to make unwritable to break mailbox storage.
    fn store(&self) -> std::path::PathBuf;
}

impl Mta for PostfixInstance {
    fn label(&self) -> &'static str {
        "Postfix"
    }

    fn smtp(&self) -> &Smtp {
        &self.smtp
    }

    fn agent_args(&self) -> Vec<OsString> {
        PostfixInstance::agent_args(self)
    }

    /// `postconf -n` and `postconf -M`: main.cf's settings and master.cf's services.
    fn configuration(&self) -> String {
        PostfixInstance::configuration(self)
    }

    fn baseline(&self) -> String {
        PostfixInstance::configuration(self)
    }

    fn delivered(&self) -> usize {
        maildir_count(&self.mailbox())
    }

    fn log_tail(&self) -> String {
        tail(&self.conf.parent().unwrap().join("log/maillog"), 15)
    }

    fn queued(&self) -> usize {
        self.queue().len()
    }

    /// The Maildir's parent: the `virtual` transport cannot create or reach it.
    fn store(&self) -> std::path::PathBuf {
        self.mailbox().parent().unwrap().to_path_buf()
    }
}

impl Mta for EximInstance {
    fn label(&self) -> &'static str {
        "Exim"
    }

    fn smtp(&self) -> &Smtp {
        &self.smtp
    }

    fn agent_args(&self) -> Vec<OsString> {
        EximInstance::agent_args(self)
    }

    /// The mode file, the retry file and the site's exim.conf (never edited).
    fn configuration(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.root.join(file)).ok();
        exim_configuration(
            read("mail-incident/mode").as_deref(),
            read("mail-incident/retry.conf").as_deref(),
            &read("exim.conf").unwrap_or_default(),
        )
    }

    /// Mode `normal`, no retry file (the site's own retry rules), exim.conf as it is.
    fn baseline(&self) -> String {
        let config = std::fs::read_to_string(self.root.join("exim.conf")).unwrap();
        exim_configuration(Some("normal\n"), None, &config)
    }

    fn delivered(&self) -> usize {
        EximInstance::delivered(self)
    }

    fn log_tail(&self) -> String {
        tail(&self.root.join("log/mainlog"), 15)
    }

    fn queued(&self) -> usize {
        EximInstance::queued(self)
    }

    fn store(&self) -> std::path::PathBuf {
        self.root.join("Maildir")
    }
}

/// The last `lines` lines of a file.
fn tail(path: &std::path::Path, lines: usize) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

/// The RCPT answer once it starts with `code` (at most 10 s); otherwise the last
/// answer, or why there was none, with the MTA's log.
fn answers(mta: &dyn Mta, code: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = mta.smtp().try_rcpt_reply();
        if probe.as_ref().is_ok_and(|a| a.starts_with(code)) {
            return probe;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} does not answer {code} at RCPT within 10 s: {probe:?}\n--- {} log (tail)\n{}",
                mta.label(),
                mta.label(),
                mta.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exim_configuration(mode: Option<&str>, retry: Option<&str>, config: &str) -> String {
    format!("mode file: {mode:?}\nretry file: {retry:?}\n{config}")
}

/// Lines of `expected` missing from `actual`, and lines of `actual` not in `expected`.
fn difference(expected: &str, actual: &str) -> String {
    let missing: Vec<&str> = expected
        .lines()
        .filter(|line| !actual.lines().any(|a| a == *line))
        .collect();
    let extra: Vec<&str> = actual
        .lines()
        .filter(|line| !expected.lines().any(|e| e == *line))
        .collect();
    format!("missing {missing:?}, unexpected {extra:?}")
}

/// How an MTA came back to normal service.
#[derive(Debug)]
struct Settled {
    took: Duration,
    /// RCPT answers other than 250 on the way (each probe is a new SMTP session).
    refusals: usize,
}

/// Waits (at most `bound`) until the MTA answers RCPT with 250, its configuration is the
/// baseline and the agent's /readyz answers 200; how long that took, or what was last
/// seen.
async fn settles(
    mta: &dyn Mta,
    baseline: &str,
    agent: &AgentProcess,
    bound: Duration,
) -> Result<Settled, String> {
    let started = Instant::now();
    let mut refusals = 0;
    loop {
        let answer = mta
            .smtp()
            .try_rcpt_reply()
            .unwrap_or_else(|e| format!("no answer: {e}"));
        let configuration = mta.configuration();
        let ready = http_get(&format!("{}/readyz", agent.http))
            .await
            .map(|(status, _)| status);
        if answer.starts_with("250") && configuration == baseline && ready == Some(200) {
            return Ok(Settled {
                took: started.elapsed(),
                refusals,
            });
        }
        refusals += usize::from(!answer.starts_with("250"));
        if started.elapsed() > bound {
            return Err(format!(
                "after {:.1} s: RCPT answered {answer:?}; configuration {}; /readyz {ready:?}\n\
                 --- {} log (tail)\n{}",
                started.elapsed().as_secs_f64(),
                if configuration == baseline {
                    "is the baseline".to_string()
                } else {
                    format!("differs: {}", difference(baseline, &configuration))
                },
                mta.label(),
                mta.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state the agent last started from (its `agent started` log line).
fn started_state(agent: &AgentProcess) -> String {
    agent
        .log()
        .lines()
        .rev()
        .find(|line| line.contains("agent started"))
        .and_then(|line| line.split("state=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn end_incident(scene: &Scene, name: &str, spec: &str, ending: Ending) {
    match ending {
        Ending::Resolve => apply_incident(
            scene.world,
            &scene.ns.name,
            name,
            &format!("{spec}\nresolved: true"),
        ),
        Ending::Delete => {
            scene.world.kubectl_ok(&[
                "delete",
                "mailincident",
                name,
                "-n",
                &scene.ns.name,
                "--timeout=60s",
            ]);
        }
    }
}

/// Deletes the report object as soon as the controller has created it (at most 5 s
/// after the incident was applied): whether it did.
async fn delete_report_once_created(scene: &Scene) -> bool {
    let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if config_maps.get_opt(REPORT).await.ok().flatten().is_some() {
            return match config_maps.delete(REPORT, &DeleteParams::default()).await {
                Ok(_) => true,
                Err(kube::Error::Api(status)) if status.code == 404 => false,
                Err(error) => panic!("delete {REPORT}: {error}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn applied_by_the_agent(scene: &Scene, name: &str) {
    wait_for(&scene.incidents, name, "applied by the agent (1/1)", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
}

/// What a loop counted.
#[derive(Default)]
struct Tally {
    runs: usize,
    stuck: Vec<String>,
    report_deletions: usize,
    /// Incidents that reached 1/1 after their report object was deleted.
    reported_again: usize,
    settle_times: Vec<f64>,
    /// RCPT answers other than 250 seen after the end of an incident.
    refusals_on_the_way: usize,
}

impl Tally {
    fn print(&self, what: &str, took: Duration) {
        let max = self.settle_times.iter().copied().fold(0.0, f64::max);
        let mean = self.settle_times.iter().sum::<f64>() / self.settle_times.len().max(1) as f64;
        eprintln!(
            "{what}: {} repetitions, {} stuck; report deleted {} times, 1/1 reached again {} \
             times; back to normal in {mean:.2} s on average, {max:.2} s at most ({} non-250 \
             RCPT answers on the way); {:.0} s in all",
            self.runs,
            self.stuck.len(),
            self.report_deletions,
            self.reported_again,
            self.refusals_on_the_way,
            took.as_secs_f64()
        );
        for stuck in &self.stuck {
            eprintln!("  stuck: {stuck}");
        }
    }
}

/// Applies and ends incidents `repetitions` times for every delay and ending, alternating
/// the modes, and checks after each that the MTA is back to normal service.
async fn end_incidents_in_a_loop(
    scene: &Scene,
    mta: &dyn Mta,
    baseline: &str,
    agent: &AgentProcess,
    repetitions: usize,
) -> Tally {
    let delays = [
        Delay::Seconds(0.0),
        Delay::Seconds(0.5),
        Delay::Seconds(1.0),
        Delay::Seconds(2.0),
        Delay::Applied,
    ];
    let mut tally = Tally::default();
    let mut n = 0;
    for repetition in 0..repetitions {
        for (d, delay) in delays.iter().enumerate() {
            for (e, ending) in [Ending::Resolve, Ending::Delete].into_iter().enumerate() {
                n += 1;
                let mode = Mode::ALL[n % 3];
                let name = format!("inc-{n}");
                let spec = mode.spec();
                // Every run that waits for the agent's report, and half the others,
                // spread over every delay and ending across repetitions.
                let delete_report =
                    matches!(delay, Delay::Applied) || (repetition + d + e) % 2 == 1;
                apply_incident(scene.world, &scene.ns.name, &name, &spec);
                let deleted = delete_report && delete_report_once_created(scene).await;
                tally.report_deletions += usize::from(deleted);
                match delay {
                    Delay::Seconds(seconds) => {
                        tokio::time::sleep(Duration::from_secs_f64(*seconds)).await;
                    }
                    Delay::Applied => {
                        // Also after the report object was deleted: the controller
                        // re-creates it and the agent reports again.
                        applied_by_the_agent(scene, &name).await;
                        tally.reported_again += usize::from(deleted);
                        if let Err(why) = answers(mta, mode.answer()) {
                            panic!("{name} {mode:?} applied: {why}");
                        }
                    }
                }
                end_incident(scene, &name, &spec, ending);
                tally.runs += 1;
                let what = format!(
                    "{} #{n} {mode:?} ended by {ending:?} after {delay:?}{}",
                    mta.label(),
                    if deleted { ", report deleted" } else { "" }
                );
                match settles(mta, baseline, agent, SETTLE).await {
                    Ok(settled) => {
                        tally.settle_times.push(settled.took.as_secs_f64());
                        tally.refusals_on_the_way += settled.refusals;
                    }
                    Err(why) => {
                        // How long it stays stuck, for the record, then go on.
                        let extra = settles(mta, baseline, agent, Duration::from_secs(60)).await;
                        let stuck = format!(
                            "{what}: not back to normal within {SETTLE:?}: {why}; 60 s later: \
                             {extra:?}\n--- agent log (tail)\n{}",
                            agent.log_tail(40)
                        );
                        eprintln!("STUCK {stuck}");
                        tally.stuck.push(stuck);
                    }
                }
            }
        }
    }
    tally
}

/// A scene with the example MTA workload, the agent's RBAC and a kubelet stand-in.
async fn mta_scene(prefix: &str) -> (Scene, mail_incident_e2e_support::fakes::FakeKubelet, String) {
    let scene = Scene::start(prefix).await;
    let (kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
    (scene, kubelet, pod)
}

async fn ready(agent: &AgentProcess) {
    eventually_within(Duration::from_secs(30), "the agent ready", || async {
        http_get(&format!("{}/readyz", agent.http))
            .await
            .filter(|(status, _)| *status == 200)
            .map(drop)
    })
    .await;
}

async fn loop_on(scene: &Scene, pod: &str, mta: &dyn Mta, repetitions: usize) {
    let baseline = mta.baseline();
    let agent = AgentProcess::start(scene.world, &scene.ns.name, pod, &mta.agent_args()).await;
    ready(&agent).await;
    settles(mta, &baseline, &agent, SETTLE)
        .await
        .expect("normal service before any incident");
    let started = Instant::now();
    let tally = end_incidents_in_a_loop(scene, mta, &baseline, &agent, repetitions).await;
    let took = started.elapsed();
    tally.print(&format!("{} end-of-incident loop", mta.label()), took);
    assert!(
        tally.stuck.is_empty(),
        "{} of {} incidents left {} out of normal service:\n{}",
        tally.stuck.len(),
        tally.runs,
        mta.label(),
        tally.stuck.join("\n")
    );
    // Mail flows to the store again.
    let before = mta.delivered();
    assert!(mta.smtp().send("after the loop").starts_with("250"));
    eventually_within(
        Duration::from_secs(15),
        "delivery after the loop",
        || async { (mta.delivered() == before + 1).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_is_back_to_normal_however_and_whenever_an_incident_ends() {
    let (scene, _kubelet, pod) = mta_scene("conv-pf").await;
    let postfix = PostfixInstance::start(&format!("conv-{}", scene.ns.name));
    loop_on(&scene, &pod, &postfix, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_is_back_to_normal_however_and_whenever_an_incident_ends() {
    let (scene, _kubelet, pod) = mta_scene("conv-ex").await;
    let exim = EximInstance::start(&format!("conv-{}", scene.ns.name));
    loop_on(&scene, &pod, &exim, 6).await;
}

/// Every mode, ended by resolve and by delete while the agent is SIGKILLed; the agent
/// restarted on the same state directory ends it.
async fn incidents_ended_while_the_agent_is_down<M: Mta>(
    start: impl FnOnce(&str) -> M,
    prefix: &str,
) {
    let (scene, _kubelet, pod) = mta_scene(prefix).await;
    let mta = &start(&format!("conv-{}", scene.ns.name));
    let baseline = mta.baseline();
    let mut agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &mta.agent_args()).await;
    ready(&agent).await;
    let started = Instant::now();
    let mut times = Vec::new();
    let mut n = 0;
    for mode in Mode::ALL {
        for ending in [Ending::Resolve, Ending::Delete] {
            n += 1;
            let name = format!("killed-{n}");
            let spec = mode.spec();
            apply_incident(scene.world, &scene.ns.name, &name, &spec);
            applied_by_the_agent(&scene, &name).await;
            if let Err(why) = answers(mta, mode.answer()) {
                panic!("{name} {mode:?} applied: {why}");
            }

            agent.kill();
            let saved = agent.saved_state().unwrap_or_default();
            assert!(
                saved.contains(&format!("\"{mode:?}\"")),
                "the agent saved {mode:?} before it was killed: {saved}"
            );
            end_incident(&scene, &name, &spec, ending);
            if ending == Ending::Resolve {
                wait_for(
                    &scene.incidents,
                    &name,
                    "resolved",
                    ready_because("Resolved"),
                )
                .await;
            }
            eventually_within(
                Duration::from_secs(30),
                "the mode document gone",
                || async {
                    mode_document(
                        &scene.client,
                        &scene.ns.name,
                        "Deployment",
                        "postfix-inbound",
                    )
                    .await
                    .is_none()
                    .then_some(())
                },
            )
            .await;
            // With the agent down, Postfix's policy lookup says DUNNO (250) and Exim
            // still reads the incident's mode file.
            let while_down = mta.smtp().try_rcpt_reply().unwrap_or_else(|e| e);

            agent.restart();
            let settled = settles(mta, &baseline, &agent, SETTLE).await;
            let restarted_from = started_state(&agent);
            eprintln!(
                "{} {mode:?} ended by {ending:?} with the agent killed: RCPT while down {:?}; \
                 restarted from {restarted_from}; {settled:?}",
                mta.label(),
                &while_down[..while_down.len().min(3)],
            );
            let settled = settled.unwrap_or_else(|why| {
                panic!(
                    "{} {mode:?} ended by {ending:?} while the agent was down, agent \
                     restarted: not back to normal: {why}\n--- agent log (tail)\n{}",
                    mta.label(),
                    agent.log_tail(40)
                )
            });
            assert_eq!(
                restarted_from,
                format!("{mode:?}"),
                "the restarted agent starts from the state it saved"
            );
            times.push(settled.took.as_secs_f64());
        }
    }
    eprintln!(
        "{}: {n} incidents ended while the agent was killed, 0 stuck; back to normal {:.2} s \
         at most after the restart; {:.0} s in all",
        mta.label(),
        times.iter().copied().fold(0.0, f64::max),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_incidents_ended_while_the_agent_is_killed_end_when_it_restarts() {
    incidents_ended_while_the_agent_is_down(PostfixInstance::start, "conv-kill-pf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_incidents_ended_while_the_agent_is_killed_end_when_it_restarts() {
    incidents_ended_while_the_agent_is_down(EximInstance::start, "conv-kill-ex").await;
}

/// When the agent is killed after the resolve.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// As soon as its log says it turned to Releasing (before it saves that state).
    OnReleasingIntent,
    /// This many milliseconds after its state file says Releasing: the state is saved
    /// and the apply under way (Postfix: postconf, postfix reload, postqueue -f; Exim:
    /// the retry and mode files, exim -qff runners).
    OnReleasingSaved(u64),
    /// This many milliseconds after `kubectl apply` of the resolve returned.
    AfterResolve(u64),
}

/// AcceptAndQueue with the store broken, messages held, the store back, the incident
/// resolved and the agent SIGKILLed at moments around and during its Releasing apply;
/// restarted on the same state directory, it delivers every held message.
async fn held_mail_is_delivered_despite_a_kill_during_the_release<M: Mta>(
    start: impl FnOnce(&str) -> M,
    prefix: &str,
) {
    let (scene, _kubelet, pod) = mta_scene(prefix).await;
    let mta = &start(&format!("conv-{}", scene.ns.name));
    let baseline = mta.baseline();
    let mut agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &mta.agent_args()).await;
    ready(&agent).await;
    let store = mta.store();
    const HELD: usize = 10;
    let started = Instant::now();
    let mut delivered = 0;
    let kills = [
        Kill::OnReleasingIntent,
        Kill::OnReleasingSaved(0),
        Kill::OnReleasingSaved(10),
        Kill::OnReleasingSaved(25),
        Kill::OnReleasingSaved(50),
        Kill::OnReleasingSaved(75),
        Kill::OnReleasingSaved(100),
        Kill::AfterResolve(0),
        Kill::AfterResolve(100),
        Kill::AfterResolve(200),
        Kill::AfterResolve(300),
        Kill::OnReleasingSaved(0),
        Kill::OnReleasingSaved(25),
        Kill::OnReleasingSaved(50),
    ];
    for (n, kill) in kills.into_iter().enumerate() {
        let name = format!("release-{n}");
        let spec = format!(
            "mode: AcceptAndQueue\nreason: INC-7 storage down\n{TARGETS}\nqueue: {{lifetime: 40d, \
             bounceLifetime: 8d}}\nrelease: {{concurrency: 2}}"
        );
        // The store breaks; the incident holds the mail.
        run(Command::new("chmod").arg("000").arg(&store));
        apply_incident(scene.world, &scene.ns.name, &name, &spec);
        applied_by_the_agent(&scene, &name).await;
        for m in 1..=HELD {
            let answer = mta.smtp().send(&format!("{name} held {m}"));
            assert!(answer.starts_with("250"), "{answer}");
        }
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(mta.queued(), HELD, "every message held");
        assert_eq!(mta.delivered(), delivered, "none delivered");

        // The store is back; the incident is resolved and the agent killed meanwhile.
        run(Command::new("chmod").arg("755").arg(&store));
        let log_before = agent.log().len();
        let resolve = format!("{spec}\nresolved: true");
        let released_seen;
        let resolving = {
            let (world, namespace) = (scene.world, scene.ns.name.clone());
            let (name, resolve) = (name.clone(), resolve.clone());
            std::thread::spawn(move || apply_incident(world, &namespace, &name, &resolve))
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let until = |what: &str, done: &dyn Fn() -> bool| {
            while !done() {
                assert!(
                    Instant::now() < deadline,
                    "{what} never came:\n{}",
                    agent.log_tail(20)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        match kill {
            Kill::OnReleasingIntent => until("the Releasing intent", &|| {
                agent.log()[log_before..].contains("to=Releasing")
            }),
            Kill::OnReleasingSaved(millis) => {
                until("the Releasing state saved", &|| {
                    agent
                        .saved_state()
                        .is_some_and(|saved| saved.contains("\"Releasing\""))
                });
                std::thread::sleep(Duration::from_millis(millis));
            }
            Kill::AfterResolve(millis) => {
                until("kubectl apply of the resolve", &|| resolving.is_finished());
                std::thread::sleep(Duration::from_millis(millis));
            }
        }
        agent.kill();
        resolving.join().expect("kubectl apply of the resolve");
        {
            let log = agent.log();
            let since = &log[log_before..];
            released_seen = (
                since.contains("to=Releasing"),
                since.contains("applied state=Releasing"),
            );
        }
        let saved_state = agent
            .saved_state()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|saved| saved["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "nothing".into());
        wait_for(
            &scene.incidents,
            &name,
            "resolved",
            ready_because("Resolved"),
        )
        .await;

        agent.restart();
        let restarted = Instant::now();
        delivered += HELD;
        let all_delivered = async |bound: Duration| {
            let deadline = Instant::now() + bound;
            loop {
                if mta.delivered() == delivered && mta.queued() == 0 {
                    return Some(restarted.elapsed());
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let Some(all_delivered) = all_delivered(Duration::from_secs(30)).await else {
            // For the record: the state of things now, and whether the MTA gets there by
            // itself within a few more minutes (Postfix scans its deferred queue every
            // queue_run_delay, 300 s by default).
            let (delivered_now, queued) = (mta.delivered(), mta.queued());
            let mta_log = mta.log_tail();
            let agent_log = agent.log_tail(30);
            let later = all_delivered(Duration::from_secs(330)).await;
            panic!(
                "{} release #{n}, agent killed {kill:?} (it had seen (Releasing intent, \
                 Releasing applied) = {released_seen:?}, saved {saved_state}; restarted from \
                 {}): 30 s after the restart {} of {HELD} held messages delivered, {queued} \
                 queued; everything delivered {later:?} after the restart\n--- {} log at 30 s \
                 (tail)\n{mta_log}\n--- agent log at 30 s (tail)\n{agent_log}",
                mta.label(),
                started_state(&agent),
                delivered_now + HELD - delivered,
                mta.label(),
            )
        };
        let settled = settles(mta, &baseline, &agent, SETTLE).await;
        eprintln!(
            "{} release #{n}, agent killed {kill:?}: it had seen (Releasing intent, Releasing \
             applied) = {released_seen:?}, saved {saved_state}; restarted from {}; {HELD} of \
             {HELD} held messages delivered {:.2} s after the restart; {settled:?}",
            mta.label(),
            started_state(&agent),
            all_delivered.as_secs_f64()
        );
        settled.unwrap_or_else(|why| {
            panic!(
                "{} release #{n} ({kill:?}): not back to normal: {why}\n--- agent log (tail)\n{}",
                mta.label(),
                agent.log_tail(40)
            )
        });
    }
    assert_eq!(mta.delivered(), delivered);
    eprintln!(
        "{}: {} releases with the agent SIGKILLed, {delivered} messages held and {} \
         delivered, 0 lost; {:.0} s in all",
        mta.label(),
        kills.len(),
        mta.delivered(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_delivers_all_held_mail_when_the_agent_is_killed_during_the_release() {
    held_mail_is_delivered_despite_a_kill_during_the_release(PostfixInstance::start, "conv-rel-pf")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exim_delivers_all_held_mail_when_the_agent_is_killed_during_the_release() {
    held_mail_is_delivered_despite_a_kill_during_the_release(EximInstance::start, "conv-rel-ex")
        .await;
}

/// How the API server is lost.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Connections refused, as from a stopped API server.
    Refused,
    /// Connections hang, as across a network partition.
    Blackholed,
}

/// The API server unreachable from the agent (only) for 30 s while a TempFail incident is
/// applied, the incident resolved meanwhile: the agent keeps serving, the MTA keeps the
/// incident's answer, and once the API server is back the agent ends the incident on
/// its own.
async fn api_server_lost_for_30_seconds(outage: Outage, prefix: &str) {
    const OUTAGE: Duration = Duration::from_secs(30);
    let (scene, _kubelet, pod) = mta_scene(prefix).await;
    let postfix = PostfixInstance::start(&format!("conv-{}", scene.ns.name));
    let baseline = Mta::baseline(&postfix);
    let proxy = FaultProxy::to_api_server(&scene.world.kubeconfig);
    let mut agent = AgentProcess::start_through(
        scene.world,
        &scene.ns.name,
        &pod,
        &postfix.agent_args(),
        Some(&proxy.url()),
    )
    .await;
    ready(&agent).await;
    let spec = Mode::TempFail.spec();
    apply_incident(scene.world, &scene.ns.name, "outage", &spec);
    applied_by_the_agent(&scene, "outage").await;
    answers(&postfix, "452 4.3.1").unwrap();
    let pid = agent.pid();

    match outage {
        Outage::Refused => proxy.cut(),
        Outage::Blackholed => proxy.blackhole(),
    }
    let cut = Instant::now();
    let accepted_before = proxy.accepted();
    let mut answers = 0;
    let mut health_checks = 0;
    let mut resolved_after = None;
    while cut.elapsed() < OUTAGE {
        let health = http_get(&format!("{}/healthz", agent.http)).await;
        assert_eq!(
            health.as_ref().map(|(status, _)| *status),
            Some(200),
            "/healthz {:.1} s into the outage",
            cut.elapsed().as_secs_f64()
        );
        health_checks += 1;
        let answer = postfix.smtp.try_rcpt_reply().unwrap_or_else(|e| e);
        assert!(
            answer.starts_with("452 4.3.1"),
            "the MTA keeps the incident's answer while its agent cannot know it ended \
             ({:.1} s into the outage): {answer}",
            cut.elapsed().as_secs_f64()
        );
        answers += 1;
        if resolved_after.is_none() && cut.elapsed() > Duration::from_secs(2) {
            // Through the real API server: the operator is unaffected.
            apply_incident(
                scene.world,
                &scene.ns.name,
                "outage",
                &format!("{spec}\nresolved: true"),
            );
            wait_for(
                &scene.incidents,
                "outage",
                "resolved",
                ready_because("Resolved"),
            )
            .await;
            assert!(
                mode_document(
                    &scene.client,
                    &scene.ns.name,
                    "Deployment",
                    "postfix-inbound"
                )
                .await
                .is_none(),
                "the controller deleted the mode document"
            );
            resolved_after = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held_connections = proxy.accepted() - accepted_before;
    proxy.restore();
    let settled = settles(&postfix, &baseline, &agent, Duration::from_secs(60)).await;
    eprintln!(
        "Postfix agent, API server {outage:?} for {:.0} s (incident resolved {:.1} s into it): \
         {health_checks} /healthz checks all 200, {} RCPT answers all 452, {held_connections} \
         connections held by the proxy; after the restore: {settled:?}",
        OUTAGE.as_secs_f64(),
        resolved_after.unwrap_or_default().as_secs_f64(),
        answers,
    );
    let Settled { took, .. } = settled.unwrap_or_else(|why| {
        panic!(
            "API server {outage:?} for 30 s: not back to normal 60 s after the restore: {why}\n\
             --- agent log (tail)\n{}",
            agent.log_tail(40)
        )
    });
    assert!(
        agent.running() && agent.pid() == pid,
        "the agent converged without a restart"
    );
    assert!(
        took <= Duration::from_secs(30),
        "back to normal {:.1} s after the API server came back: over 30 s",
        took.as_secs_f64()
    );
    assert!(
        agent.log().contains("to=Releasing"),
        "the agent released the incident"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_a_stopped_api_server_ends_the_incident_once_it_is_back() {
    api_server_lost_for_30_seconds(Outage::Refused, "conv-api-refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_partitioned_from_the_api_server_ends_the_incident_once_it_heals() {
    api_server_lost_for_30_seconds(Outage::Blackholed, "conv-api-hole").await;
}
