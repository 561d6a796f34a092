//! `make bench`: releasing a large held queue, on a real Postfix and a real Exim, each
//! with its agent, against a real API server and the operator. The mailbox store is an
//! LMTP/SMTP sink in this process that refuses (4xx) while storage is down and accepts
//! again after, counting the deliveries in flight at every moment.
//!
//! Per MTA: an AcceptAndQueue incident holds BENCH_RELEASE_MESSAGES messages (20 000 by
//! default); the incident is resolved with `release.concurrency` C, and the bench times
//! resolve → last delivery → the agent back in Normal → the release reported over (the
//! agent's report entry says Normal, or the controller deleted the report: what
//! `kubectl mail-incident resolve --wait` waits for besides Ready, which the controller
//! sets as soon as the mode document is gone). Then the same
//! MTA, with the same number of messages queued while the store refused, delivers them
//! unpaced by the agent at its own concurrency limit C (Postfix: the store transport's
//! process limit and `postqueue -f`; Exim: C queue runners): the physical limit here.
//! The agent runs with the default `--report-seconds` (30), as deployed. Exim's daemon
//! runs its own queue every EXIM_QUEUE_INTERVAL (e2e/bench.sh: 30m, Debian's default):
//! while a release holds the daemon's queue runs off held mail, each run still looks at
//! every held message once (a fork each), and at the e2e instances' 10 s that work is a
//! core's worth on a small machine, which the table's header states.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use mail_incident_e2e_support::exim::EximInstance;
use mail_incident_e2e_support::mta::{AgentProcess, SmtpSession, mta_with_agent_rbac, run};
use mail_incident_e2e_support::postfix::PostfixInstance;
use mail_incident_e2e_support::support::{apply_incident, ready_because, summary, wait_for};
use mail_incident_e2e_support::world::{Scene, http_get};
use mail_incident_operator::api::mode_document::AgentReport;
use std::{
    collections::HashSet,
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Messages held per MTA (BENCH_RELEASE_MESSAGES).
const DEFAULT_MESSAGES: usize = 20_000;
/// The incident's `release.concurrency`, and the unpaced run's concurrency limit.
const CONCURRENCY: usize = 4;
/// What the store takes to write one message: enough that every allowed delivery slot
/// is busy during a release, so that the cap is what is measured.
const STORE_WRITE: Duration = Duration::from_millis(2);
/// The goal for the paced rate against the unpaced one.
const RATE_GOAL: f64 = 0.9;
/// The bound for "about immediate": from the last delivery to the release reported over.
const READY_BOUND: Duration = Duration::from_secs(5);
/// How long one release may take at most before the bench gives up.
const RELEASE_BOUND: Duration = Duration::from_secs(900);
const SENDER: &str = "sender@example.net";
const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
const HOLD: &str = "mode: AcceptAndQueue\nreason: bench storage down";
/// The example workload's report object.
const REPORT: &str = "mail-mode-deployment-postfix-inbound-report";

fn main() {
    let messages: usize = std::env::var("BENCH_RELEASE_MESSAGES").map_or(DEFAULT_MESSAGES, |n| {
        n.parse().expect("BENCH_RELEASE_MESSAGES is a number")
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let rows =
        runtime.block_on(async { vec![bench_postfix(messages).await, bench_exim(messages).await] });
    println!();
    println!(
        "Releasing {messages} held messages per MTA at release.concurrency {CONCURRENCY} \
         (store write {} ms; agent --report-seconds 30; Exim's daemon -q{}), {:.0} s in all:",
        STORE_WRITE.as_millis(),
        std::env::var("EXIM_QUEUE_INTERVAL").unwrap_or_else(|_| "10s".into()),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| MTA | held | delivered | bounced | max in flight (C = {CONCURRENCY}) | paced msg/s | unpaced msg/s | ratio (goal ≥ {RATE_GOAL}) | resolve → Ready | resolve → last delivery | last delivery → agent Normal | last delivery → release reported over (goal ≤ {} s) | verdict |",
        READY_BOUND.as_secs()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        row.print();
    }
    println!();
    println!(
        "(max in flight: paced / unpaced, exact at each MAIL; mean of 10 ms samples in brackets. \
         Rates: messages over first to last delivery.)"
    );
}

/// One MTA's figures.
struct Row {
    mta: &'static str,
    held: usize,
    paced: Run,
    unpaced: Run,
    timings: Timings,
    /// Bounces the MTA generated (its log, its queue or the store).
    bounced: usize,
}

impl Row {
    fn print(&self) {
        let ratio = self.paced.rate() / self.unpaced.rate();
        let mut misses = Vec::new();
        if self.paced.unique != self.held || self.paced.delivered != self.held {
            misses.push("delivered ≠ held");
        }
        if self.bounced > 0 {
            misses.push("bounces");
        }
        if self.paced.max_in_flight > CONCURRENCY {
            misses.push("over C");
        }
        if ratio < RATE_GOAL {
            misses.push("rate");
        }
        if self.timings.last_to_over.is_none_or(|d| d > READY_BOUND) {
            misses.push("end late");
        }
        let seconds =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!(
            "| {} | {} | {} | {} | {} [{:.1}] / {} [{:.1}] | {:.0} | {:.0} | {:.2} | {:.2} s | {:.1} s | {} | {} | {} |",
            self.mta,
            self.held,
            self.paced.delivered,
            self.bounced,
            self.paced.max_in_flight,
            self.paced.mean_in_flight,
            self.unpaced.max_in_flight,
            self.unpaced.mean_in_flight,
            self.paced.rate(),
            self.unpaced.rate(),
            ratio,
            self.timings.resolve_to_ready.as_secs_f64(),
            self.timings.resolve_to_last.as_secs_f64(),
            seconds(self.timings.last_to_normal),
            seconds(self.timings.last_to_over),
            if misses.is_empty() {
                "met".to_string()
            } else {
                format!("missed: {}", misses.join(", "))
            }
        );
    }
}

/// How the paced release ended.
struct Timings {
    resolve_to_ready: Duration,
    resolve_to_last: Duration,
    last_to_normal: Option<Duration>,
    /// `None` if it was reported over before the last delivery.
    last_to_over: Option<Duration>,
}

/// What the store saw during one release.
struct Run {
    delivered: usize,
    unique: usize,
    max_in_flight: usize,
    mean_in_flight: f64,
    first: Instant,
    last: Instant,
}

impl Run {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.last.duration_since(self.first).as_secs_f64().max(1e-3)
    }
}

// --- The store -------------------------------------------------------------------------

/// The mailbox store: an LMTP (Postfix) and SMTP (Exim) server that takes each message in
/// `STORE_WRITE`, or refuses MAIL with a 4xx while storage is down.
#[derive(Default)]
struct Store {
    accepting: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delivered: AtomicUsize,
    /// Messages from the null sender: bounces.
    bounces: AtomicUsize,
    refused: AtomicUsize,
    seen: Mutex<HashSet<String>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<(Instant, Timestamp)>>,
    samples: Mutex<Vec<usize>>,
    sampling: AtomicBool,
}

impl Store {
    /// Serves on a free loopback port, and samples the deliveries in flight every 10 ms.
    fn start() -> (Arc<Store>, SocketAddr) {
        let store = Arc::new(Store::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let serving = store.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let store = serving.clone();
                std::thread::spawn(move || store.serve(stream).ok());
            }
        });
        let sampled = store.clone();
        std::thread::spawn(move || {
            loop {
                if sampled.sampling.load(Ordering::SeqCst) {
                    let now = sampled.in_flight.load(Ordering::SeqCst);
                    sampled.samples.lock().unwrap().push(now);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        (store, address)
    }

    /// Accepts (or refuses) from now on, with the counts of a new run.
    fn begin(&self, accepting: bool) {
        self.max_in_flight.store(0, Ordering::SeqCst);
        self.delivered.store(0, Ordering::SeqCst);
        self.seen.lock().unwrap().clear();
        *self.first.lock().unwrap() = None;
        *self.last.lock().unwrap() = None;
        self.samples.lock().unwrap().clear();
        self.sampling.store(accepting, Ordering::SeqCst);
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }

    /// The run so far (once something was delivered).
    fn run(&self) -> Run {
        let samples = self.samples.lock().unwrap();
        let last = self
            .last
            .lock()
            .unwrap()
            .expect("something was delivered")
            .0;
        Run {
            delivered: self.delivered(),
            unique: self.seen.lock().unwrap().len(),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            mean_in_flight: samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64,
            first: self.first.lock().unwrap().unwrap_or(last),
            last,
        }
    }

    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        writer.write_all(b"220 store.bench ESMTP\r\n")?;
        // The open transaction, counted in flight until it is stored or dropped.
        let mut transaction: Option<InFlight> = None;
        let mut null_sender = false;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "LHLO" | "EHLO" | "HELO" => b"250 store.bench\r\n",
                "MAIL" if !self.accepting.load(Ordering::SeqCst) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    b"451 4.3.0 mailbox storage unavailable\r\n"
                }
                "MAIL" => {
                    null_sender = line.contains("<>");
                    transaction.replace(InFlight::open(self));
                    b"250 2.1.0 Ok\r\n"
                }
                "RCPT" => b"250 2.1.5 Ok\r\n",
                "DATA" => {
                    writer.write_all(b"354 go ahead\r\n")?;
                    let subject = read_message(&mut reader)?;
                    std::thread::sleep(STORE_WRITE);
                    self.stored(subject, null_sender);
                    // Out of flight before the answer: the MTA may start its next
                    // delivery as soon as it reads it.
                    // One recipient per message: one reply in LMTP too.
                    transaction.take();
                    b"250 2.0.0 stored\r\n"
                }
                "RSET" => {
                    transaction.take();
                    b"250 2.0.0 Ok\r\n"
                }
                "NOOP" => b"250 2.0.0 Ok\r\n",
                "QUIT" => {
                    writer.write_all(b"221 2.0.0 bye\r\n")?;
                    return Ok(());
                }
                _ => b"502 5.5.2 unknown command\r\n",
            };
            writer.write_all(reply)?;
        }
    }

    fn stored(&self, subject: String, null_sender: bool) {
        let now = Instant::now();
        self.first.lock().unwrap().get_or_insert(now);
        *self.last.lock().unwrap() = Some((now, Timestamp::now()));
        if null_sender {
            self.bounces.fetch_add(1, Ordering::SeqCst);
        }
        self.seen.lock().unwrap().insert(subject);
        self.delivered.fetch_add(1, Ordering::SeqCst);
    }
}

/// A delivery in flight at the store, from MAIL until stored, reset or cut off.
struct InFlight<'a>(&'a Store);

impl<'a> InFlight<'a> {
    fn open(store: &'a Store) -> Self {
        let now = store.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        store.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(store)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads a message up to its lone dot; its Subject.
fn read_message(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut subject = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let text = line.trim_end();
        if text == "." {
            return Ok(subject);
        }
        if let Some(s) = text.strip_prefix("Subject: ") {
            subject = s.to_string();
        }
    }
}

// --- Postfix ---------------------------------------------------------------------------

async fn bench_postfix(messages: usize) -> Row {
    let (store, address) = Store::start();
    let scene = Scene::start("release-postfix").await;
    let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
    let postfix = PostfixInstance::start(&format!("release-{}", scene.ns.name));
    // The store is reached over LMTP: its transport is `lmtp`, whose process limit a
    // release caps.
    run(postfix
        .postconf()
        .args(["-e", &format!("virtual_transport = lmtp:inet:{address}")]));
    let postfix_command = || {
        let mut command = Command::new("postfix");
        command.arg("-c").arg(&postfix.conf);
        command
    };
    run(postfix_command().arg("reload"));
    let mut args = postfix.agent_args();
    let transport = args
        .iter()
        .position(|a| a == "--mailbox-transport")
        .unwrap()
        + 1;
    args[transport] = "lmtp".into();
    let agent = start_agent(&scene, &pod, &args).await;
    let inject = |n: usize| inject_smtp(postfix.smtp.address, n);
    let queued = || postfix.queue().len();

    let (paced, timings) = paced_release(&scene, &agent, &store, messages, inject, queued).await;

    // Unpaced: the same number queued while the store refuses, then delivered at the
    // transport's own process limit by a plain flush.
    store.begin(false);
    inject(messages);
    let deferred = wait_until("every message deferred by the refusing store", || {
        let queue = postfix.queue();
        (queue.len() == messages && queue.iter().all(|m| m["queue_name"] == "deferred"))
            .then_some(())
    });
    deferred.await;
    run(postfix
        .postconf()
        .args(["-F", &format!("lmtp/unix/process_limit = {CONCURRENCY}")]));
    run(postfix_command().arg("reload"));
    store.begin(true);
    run(Command::new("postqueue")
        .arg("-c")
        .arg(&postfix.conf)
        .arg("-f"));
    let unpaced = delivered_all(&store, messages).await;

    let log = std::fs::read_to_string(postfix.conf.parent().unwrap().join("log/maillog"))
        .unwrap_or_default();
    let bounced = log.matches("status=bounced").count()
        + postfix
            .queue()
            .iter()
            .filter(|m| m["sender"] == "MAILER-DAEMON")
            .count()
        + store.bounces.load(Ordering::SeqCst);
    drop(agent);
    Row {
        mta: "Postfix",
        held: messages,
        paced,
        unpaced,
        timings,
        bounced,
    }
}

/// `n` messages over SMTP, in eight sessions at once.
fn inject_smtp(address: SocketAddr, n: usize) {
    const SESSIONS: usize = 8;
    std::thread::scope(|scope| {
        for session in 0..SESSIONS {
            scope.spawn(move || {
                let mut smtp = SmtpSession::open(address);
                smtp.command("EHLO client.e2e.test");
                for i in (session..n).step_by(SESSIONS) {
                    for command in [
                        &format!("MAIL FROM:<{SENDER}>") as &str,
                        "RCPT TO:<user@e2e.test>",
                        "DATA",
                    ] {
                        smtp.command(command);
                    }
                    let answer = smtp.command(&format!(
                        "Subject: held {i} {}\r\n\r\nHeld while storage is down.\r\n.",
                        Timestamp::now().as_millisecond()
                    ));
                    assert!(answer.starts_with("250"), "message {i}: {answer}");
                }
            });
        }
    });
}

// --- Exim ------------------------------------------------------------------------------

async fn bench_exim(messages: usize) -> Row {
    let (store, address) = Store::start();
    let scene = Scene::start("release-exim").await;
    let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
    let exim = EximInstance::start(&format!("release-{}", scene.ns.name));
    store_over_smtp(&exim, address);
    let agent = start_agent(&scene, &pod, &exim.agent_args()).await;
    let inject = |n: usize| inject_bsmtp(&exim, n);
    let queued = || exim.queued();

    let (paced, timings) = paced_release(&scene, &agent, &store, messages, inject, queued).await;

    // Unpaced: the same number queued while the store refuses, then delivered by as many
    // queue runners as the release's concurrency, started by hand.
    store.begin(false);
    inject(messages);
    store.begin(true);
    let runners: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            exim.exim()
                .arg("-qff")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("exim -qff starts")
        })
        .collect();
    let unpaced = delivered_all(&store, messages).await;
    for mut runner in runners {
        runner.wait().ok();
    }

    let log = std::fs::read_to_string(exim.root.join("log/mainlog")).unwrap_or_default();
    let bounced = log.lines().filter(|l| l.contains(" ** ")).count()
        + exim.bounced()
        + store.bounces.load(Ordering::SeqCst);
    drop(agent);
    Row {
        mta: "Exim",
        held: messages,
        paced,
        unpaced,
        timings,
        bounced,
    }
}

/// The instance's mailbox transport delivers to the store over SMTP instead of to its
/// Maildir; the daemon re-reads its configuration.
fn store_over_smtp(exim: &EximInstance, store: SocketAddr) {
    let path = exim.root.join("exim.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    let start = conf.find("\nmaildir:\n").expect("a maildir transport") + 1;
    let end = start + conf[start..].find("\n\n").expect("its end");
    let transport = format!(
        "maildir:\n  driver = smtp\n  hosts = {}\n  hosts_override\n  port = {}\n  allow_localhost",
        store.ip(),
        store.port()
    );
    std::fs::write(
        &path,
        format!("{}{transport}{}", &conf[..start], &conf[end..]),
    )
    .unwrap();
    run(exim.exim().arg("-bV"));
    let pid = std::fs::read_to_string(exim.root.join("exim.pid")).unwrap();
    run(Command::new("kill").args(["-HUP", pid.trim()]));
    // Listening again once re-executed.
    std::thread::sleep(Duration::from_secs(1));
}

/// `n` messages as batched SMTP to `exim -odq -bS`: queued at once, as fast as Exim
/// takes them.
fn inject_bsmtp(exim: &EximInstance, n: usize) {
    let mut child = exim
        .exim()
        .args(["-odq", "-bS"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("exim -bS starts");
    let mut input = std::io::BufWriter::new(child.stdin.take().unwrap());
    for i in 0..n {
        write!(
            input,
            "MAIL FROM:<{SENDER}>\r\nRCPT TO:<user@local.test>\r\nDATA\r\nSubject: held {i} {}\r\n\r\nHeld while storage is down.\r\n.\r\n",
            Timestamp::now().as_millisecond()
        )
        .unwrap();
    }
    writeln!(input, "QUIT\r").unwrap();
    drop(input);
    assert!(child.wait().unwrap().success(), "exim -bS failed");
}

// --- The paced release -----------------------------------------------------------------

/// The agent of `pod`, measuring its queue at the default period.
async fn start_agent(scene: &Scene, pod: &str, args: &[OsString]) -> AgentProcess {
    let agent =
        AgentProcess::start_reporting_every(scene.world, &scene.ns.name, pod, args, None, 30).await;
    wait_settled(&agent, "Normal").await;
    agent
}

/// Holds `messages` under an AcceptAndQueue incident, resolves it with the store
/// accepting again, and times the release: the store's run and the row's timings.
async fn paced_release(
    scene: &Scene,
    agent: &AgentProcess,
    store: &Store,
    messages: usize,
    inject: impl Fn(usize),
    queued: impl Fn() -> usize,
) -> (Run, Timings) {
    let release = format!("release: {{concurrency: {CONCURRENCY}}}");
    let spec = format!("{HOLD}\n{TARGETS}\n{release}");
    store.begin(false);
    apply_incident(scene.world, &scene.ns.name, "storage", &spec);
    wait_for(&scene.incidents, "storage", "holding mail", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    wait_settled(agent, "AcceptAndQueue").await;
    let injecting = Instant::now();
    inject(messages);
    eprintln!(
        "[bench] {messages} messages queued in {:.1} s",
        injecting.elapsed().as_secs_f64()
    );
    wait_until("every message held", || {
        (queued() == messages).then_some(())
    })
    .await;
    store.begin(true);
    let resolved_at = Instant::now();
    let resolved_wall = Timestamp::now();
    apply_incident(
        scene.world,
        &scene.ns.name,
        "storage",
        &format!("{spec}\nresolved: true"),
    );
    wait_for(
        &scene.incidents,
        "storage",
        "Ready",
        ready_because("Resolved"),
    )
    .await;
    let resolve_to_ready = resolved_at.elapsed();
    let reports: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &scene.ns.name);
    let deadline = Instant::now() + RELEASE_BOUND;
    let over_at = loop {
        let report = reports.get_opt(REPORT).await.expect("get the report");
        let over = report.is_none_or(|r| {
            r.data
                .unwrap_or_default()
                .values()
                .all(|entry| serde_json::from_str::<AgentReport>(entry).is_ok_and(|e| e.released()))
        });
        if over {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the release never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivered = store.delivered();
    let run = delivered_all(store, messages).await;
    let last_wall = store.last.lock().unwrap().unwrap().1;
    let normal_wall = intent_taken(&agent.log(), resolved_wall, "Normal");
    let last_to_over = if delivered >= messages {
        over_at.checked_duration_since(run.last)
    } else {
        eprintln!("[bench] reported over with {delivered} of {messages} delivered");
        None
    };
    eprintln!(
        "[bench] paced: delivered {} in {:.1} s",
        run.delivered,
        run.last.duration_since(run.first).as_secs_f64()
    );
    let timings = Timings {
        resolve_to_ready,
        resolve_to_last: run.last.duration_since(resolved_at),
        last_to_normal: normal_wall
            .and_then(|at| Duration::try_from(at.duration_since(last_wall)).ok()),
        last_to_over,
    };
    (run, timings)
}

/// Waits until the store has taken `messages` (and the run is over).
async fn delivered_all(store: &Store, messages: usize) -> Run {
    let deadline = Instant::now() + RELEASE_BOUND;
    while store.delivered() < messages {
        assert!(
            Instant::now() < deadline,
            "{} of {messages} delivered after {RELEASE_BOUND:?}",
            store.delivered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything delivered twice would come now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.sampling.store(false, Ordering::SeqCst);
    store.run()
}

/// When the agent's log first says it took on the intent `state` after `since`.
fn intent_taken(log: &str, since: Timestamp, state: &str) -> Option<Timestamp> {
    let wanted = format!("to={state}");
    log.lines()
        .filter(|line| line.contains("new intent") && line.contains(&wanted))
        .filter_map(|line| line.split_whitespace().next()?.parse::<Timestamp>().ok())
        .find(|at| *at >= since)
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

/// Polls `probe` (a blocking look at the MTA) every 200 ms until it yields.
async fn wait_until<T>(what: &str, probe: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + RELEASE_BOUND;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {RELEASE_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
