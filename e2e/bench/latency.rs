//! `make bench`: how long senders wait for a mode change, from `kubectl apply` to the new
//! answer at RCPT, on a real Postfix and a real Exim, each with its agent, against a real
//! API server and the operator. Each transition starts from a settled MTA (the agent
//! reports the previous state applied). Prints p50 and p99 per MTA and transition
//! against the goal (p99 under one second).
//!
//! The rounds start once the control plane is quiet (after the fleet benchmark it is still
//! deleting that bench's ConfigMaps for a while, and agents would learn of each change
//! late); its CPU during the rounds is printed. Meanwhile a paced sender opens a session
//! every [`SENDER_EVERY`] and times it up to its RCPT answer: what the switches cost
//! senders who are not waiting for the new answer (a session caught by a Postfix reload
//! stalls for a second).

use k8s_openapi::jiff::Timestamp;
use mail_incident_e2e_support::control_plane::{ControlPlaneCpu, wait_control_plane_quiet};
use mail_incident_e2e_support::exim::EximInstance;
use mail_incident_e2e_support::mta::{AgentProcess, Smtp, mta_with_agent_rbac};
use mail_incident_e2e_support::postfix::PostfixInstance;
use mail_incident_e2e_support::support::apply_incident;
use mail_incident_e2e_support::world::{Scene, http_get};
use std::{
    ffi::OsString,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Measured changes per MTA and transition (BENCH_LATENCY_ROUNDS).
const DEFAULT_ROUNDS: usize = 20;
const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
/// Every transition's p99 from `kubectl apply` to the new answer stays under this.
const GOAL: Duration = Duration::from_secs(1);
/// How long the control plane may take to become quiet (a 5000-target fleet's deletion).
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// How often the paced sender opens a session.
const SENDER_EVERY: Duration = Duration::from_millis(100);
/// A sender's session slower than this to its RCPT answer counts as stalled.
const STALLED: Duration = Duration::from_millis(500);

/// One transition: the incident spec to apply (`None`: resolve it), the reply prefix it
/// must bring, the intent the agent takes on (its log says when), and the agent state to
/// wait for before the next one.
struct Transition {
    name: &'static str,
    spec: Option<&'static str>,
    answer: &'static str,
    intent: &'static str,
    settled: &'static str,
}

const TRANSITIONS: [Transition; 4] = [
    Transition {
        name: "Normal → TempFail",
        spec: Some("mode: TempFail"),
        answer: "452",
        intent: "TempFail",
        settled: "TempFail",
    },
    Transition {
        name: "TempFail → Normal",
        spec: None,
        answer: "250",
        intent: "Releasing",
        settled: "Normal",
    },
    Transition {
        name: "Normal → HardReject",
        spec: Some("mode: HardReject\nhardReject: {acknowledgeBounces: true}"),
        answer: "550",
        intent: "HardReject",
        settled: "HardReject",
    },
    Transition {
        name: "HardReject → Normal",
        spec: None,
        answer: "250",
        intent: "Releasing",
        settled: "Normal",
    },
];

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("BENCH_LATENCY_ROUNDS").map_or(DEFAULT_ROUNDS, |r| {
        r.parse().expect("BENCH_LATENCY_ROUNDS is a number")
    });
    let mut rows = Vec::new();
    let mut others = Vec::new();
    {
        let scene = Scene::start("latency-postfix").await;
        let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
        let postfix = PostfixInstance::start(&format!("latency-{}", scene.ns.name));
        let agent =
            AgentProcess::start(scene.world, &scene.ns.name, &pod, &postfix.agent_args()).await;
        let (samples, other) = measure("Postfix", &scene, &agent, &postfix.smtp, rounds).await;
        rows.extend(samples);
        others.push(other);
    }
    {
        let scene = Scene::start("latency-exim").await;
        let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
        let exim = EximInstance::start(&format!("latency-{}", scene.ns.name));
        let args: Vec<OsString> = exim.agent_args();
        let agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &args).await;
        let (samples, other) = measure("Exim", &scene, &agent, &exim.smtp, rounds).await;
        rows.extend(samples);
        others.push(other);
    }
    println!();
    println!("`kubectl apply` to the new RCPT answer, {rounds} changes each:");
    println!();
    println!(
        "| MTA | transition | p50 | p99 | max | agent told (p50 / p99) | goal p99 < {} s |",
        GOAL.as_secs_f64()
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    for (mta, transition, mut samples, mut told) in rows {
        samples.sort();
        told.sort();
        let p99 = percentile(&samples, 99);
        println!(
            "| {mta} | {transition} | {:.3} s | {:.3} s | {:.3} s | {:.3} s / {:.3} s | {} |",
            percentile(&samples, 50).as_secs_f64(),
            p99.as_secs_f64(),
            samples.last().copied().unwrap_or_default().as_secs_f64(),
            percentile(&told, 50).as_secs_f64(),
            percentile(&told, 99).as_secs_f64(),
            if p99 < GOAL { "met" } else { "missed" },
        );
    }
    println!();
    println!("(agent told: from `kubectl apply` to the agent's log line taking on the new intent)");
    println!();
    println!(
        "During the rounds: the control plane's CPU (kube-apiserver / etcd / \
         kube-controller-manager) and a paced sender's sessions (one every {} ms, timed to \
         their RCPT answer; stalled: over {} ms):",
        SENDER_EVERY.as_millis(),
        STALLED.as_millis()
    );
    println!();
    println!(
        "| MTA | rounds took | control plane CPU | sender sessions | p99 | max | stalled | no answer |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for other in others {
        let mut sessions = other.sender;
        sessions.sort();
        println!(
            "| {} | {:.0} s | {} | {} | {:.3} s | {:.3} s | {} | {} |",
            other.mta,
            other.elapsed.as_secs_f64(),
            ControlPlaneCpu::show(other.control_plane),
            sessions.len(),
            percentile(&sessions, 99).as_secs_f64(),
            sessions.last().copied().unwrap_or_default().as_secs_f64(),
            sessions.iter().filter(|s| **s > STALLED).count(),
            other.sender_failed,
        );
    }
}

/// Per MTA, what went on beside the measured switches.
struct During {
    mta: &'static str,
    elapsed: Duration,
    control_plane: Option<ControlPlaneCpu>,
    /// Each paced sender session's time to its RCPT answer.
    sender: Vec<Duration>,
    /// The paced sender's sessions that got no answer.
    sender_failed: usize,
}

/// Opens a session every [`SENDER_EVERY`] until `stop`; the time of each to its RCPT
/// answer (any answer: the modes change under it), and how many got none (Exim
/// re-executing itself on SIGHUP resets a connection it had accepted; a sender tries
/// again later).
fn paced_sender(
    smtp: Smtp,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Duration>, usize)> {
    std::thread::spawn(move || {
        let mut sessions = Vec::new();
        let mut failed = 0;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match smtp.try_rcpt_reply() {
                Ok(_) => sessions.push(started.elapsed()),
                Err(_) => failed += 1,
            }
            std::thread::sleep(SENDER_EVERY.saturating_sub(started.elapsed()));
        }
        (sessions, failed)
    })
}

/// Per transition: the MTA, its name, the times to the new answer and the times until the
/// agent took on the new intent.
type Samples = (&'static str, &'static str, Vec<Duration>, Vec<Duration>);

/// Runs every transition `rounds` times; the samples per transition.
async fn measure(
    mta: &'static str,
    scene: &Scene,
    agent: &AgentProcess,
    smtp: &Smtp,
    rounds: usize,
) -> (Vec<Samples>, During) {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); TRANSITIONS.len()];
    let mut told: Vec<Vec<Duration>> = vec![Vec::new(); TRANSITIONS.len()];
    let mut last_spec = "mode: TempFail";
    wait_settled(agent, "Normal").await;
    wait_control_plane_quiet(QUIET_LIMIT).await;
    let control_plane_before = ControlPlaneCpu::now();
    let started = Instant::now();
    let stop_sender = Arc::new(AtomicBool::new(false));
    let sender = paced_sender(smtp.clone(), stop_sender.clone());
    for round in 0..rounds {
        eprintln!("[bench] {mta}: round {}/{rounds}", round + 1);
        for (i, transition) in TRANSITIONS.iter().enumerate() {
            let spec = match transition.spec {
                Some(spec) => {
                    last_spec = spec;
                    format!("{spec}\nreason: bench\n{TARGETS}")
                }
                None => format!("{last_spec}\nreason: bench\n{TARGETS}\nresolved: true"),
            };
            let started = Instant::now();
            let wall = Timestamp::now();
            apply_incident(scene.world, &scene.ns.name, "latency", &spec);
            samples[i].push(first_answer(smtp, transition.answer, started));
            wait_settled(agent, transition.settled).await;
            told[i].push(intent_taken(&agent.log(), wall, transition.intent));
        }
    }
    stop_sender.store(true, Ordering::Relaxed);
    let (sender, sender_failed) = sender.join().expect("the paced sender");
    let during = During {
        mta,
        elapsed: started.elapsed(),
        control_plane: ControlPlaneCpu::since(control_plane_before),
        sender,
        sender_failed,
    };
    let samples = TRANSITIONS
        .iter()
        .zip(samples.into_iter().zip(told))
        .map(|(t, (s, k))| (mta, t.name, s, k))
        .collect();
    (samples, during)
}

/// How long after `since` the agent's log first says it took on the intent `state`.
fn intent_taken(log: &str, since: Timestamp, state: &str) -> Duration {
    let wanted = format!("to={state}");
    log.lines()
        .filter(|line| line.contains("new intent") && line.contains(&wanted))
        .filter_map(|line| line.split_whitespace().next()?.parse::<Timestamp>().ok())
        .find(|at| *at >= since)
        .and_then(|at| Duration::try_from(at.duration_since(since)).ok())
        .unwrap_or_else(|| panic!("the agent's log never took on {state}:\n{log}"))
}

/// How long after `started` RCPT was first answered with `prefix` (probed back to back).
fn first_answer(smtp: &Smtp, prefix: &str, started: Instant) -> Duration {
    let deadline = started + Duration::from_secs(30);
    loop {
        let answer = smtp.rcpt_reply();
        if answer.starts_with(prefix) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no {prefix} within 30 s; last answer {answer}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the agent reports `state` applied and converged (its metrics).
async fn wait_settled(agent: &AgentProcess, state: &str) {
    let wanted = format!("mail_incident_agent_mode{{mode=\"{state}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, metrics)) = http_get(&format!("{}/metrics", agent.http)).await
            && metrics.contains(&wanted)
            && metrics.contains("mail_incident_agent_converged 1")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never settled on {state}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}
