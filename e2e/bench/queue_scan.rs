//! `make bench`: the agent measuring a queue of a million messages (BENCH_SCAN_MESSAGES)
//! on a real Postfix and a real Exim, each against the real API server and operator.
//! The spool is written here in each MTA's own on-disk format: Postfix queue files
//! (records as `cleanup` writes them, in the `hold` queue, which the queue manager leaves
//! alone, so that Postfix's own delivery attempts are not what is measured) and Exim
//! `-H`/`-D` pairs (in a spool of their own that the agent is pointed at, since the
//! daemon's queue runner would otherwise work through them every 10 s).
//!
//! The agent runs as the e2e harness starts it, measuring every second: one scan follows
//! the other, so every probe below meets a scan. Back to back (10 ms apart) while idle
//! and while scanning: `/healthz`, the RCPT answer (Postfix: a policy delegation request
//! on the agent's policy port; Exim: an SMTP RCPT, which reads the mode file the agent
//! writes), and mode switches (`kubectl apply` of a TempFail and of its resolution, timed
//! until the answer changes). The agent's RSS is sampled throughout. Prints one table per
//! MTA with the goals: p99 under 50 ms (a switch: the scan adds under 50 ms to the p99 of
//! its part after `kubectl apply` returned, which is all a scan could delay), a scan
//! shorter than the default report period (30 s), memory bounded.

use mail_incident_e2e_support::exim::EximInstance;
use mail_incident_e2e_support::mta::{AgentProcess, Smtp, mta_with_agent_rbac};
use mail_incident_e2e_support::postfix::PostfixInstance;
use mail_incident_e2e_support::support::apply_incident;
use mail_incident_e2e_support::world::Scene;
use std::{
    ffi::OsString,
    fs::OpenOptions,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const DEFAULT_MESSAGES: u64 = 1_000_000;
/// The agent's default `--report-seconds`: a scan must end within it.
const REPORT_PERIOD: Duration = Duration::from_secs(30);
const GOAL: Duration = Duration::from_millis(50);
/// How long the probes run, idle and while scanning: as long in both, so that the two
/// p99s come from as many samples (with a few dozen switches a p99 is their slowest, and
/// the slowest of more samples is slower).
const PROBING: Duration = Duration::from_secs(40);
/// How long the agent has to count the whole spool once before probing starts anyway.
const COUNT_WAIT: Duration = Duration::from_secs(600);
/// The pause between two probes of one kind: back to back, without the probes becoming
/// the load themselves.
const PROBE_PAUSE: Duration = Duration::from_millis(10);
/// Files written at once while generating a spool.
const WRITERS: u64 = 4;
const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";
/// Blocks a small spool file takes (one 4 KiB block), for the disk check.
const BLOCK: u64 = 4096;

fn main() {
    let messages: u64 = std::env::var("BENCH_SCAN_MESSAGES").map_or(DEFAULT_MESSAGES, |n| {
        n.parse().expect("BENCH_SCAN_MESSAGES is a number")
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let postfix = runtime.block_on(bench_postfix(messages));
    let exim = runtime.block_on(bench_exim(messages));
    println!();
    println!(
        "The agent measuring a queue of {messages} messages every second (scans back to back), \
         probed every {} ms per kind:",
        PROBE_PAUSE.as_millis()
    );
    for table in [postfix, exim] {
        println!();
        print!("{table}");
    }
}

async fn bench_postfix(messages: u64) -> String {
    let scene = Scene::start("scan-postfix").await;
    let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
    let postfix = PostfixInstance::start(&format!("scan-{}", scene.ns.name));
    let agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &postfix.agent_args()).await;
    let hold = postfix.queue_directory().join("hold");
    let owner = user_ids("postfix");
    let answer = Answer::Policy(postfix.policy);
    let report = measure(
        "Postfix",
        &scene,
        &agent,
        &answer,
        messages,
        ("hold", "queue_messages{queue=\"hold\"}"),
        || {
            let bytes = write_spool(messages, &hold, |i| postfix_queue_file(i, owner));
            name_after_inodes(&hold);
            bytes
        },
    );
    let report = report.await;
    remove_files(&hold);
    report
}

async fn bench_exim(messages: u64) -> String {
    let scene = Scene::start("scan-exim").await;
    let (_kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, &scene.ns.name).await;
    let exim = EximInstance::start(&format!("scan-{}", scene.ns.name));
    let spool = exim.root.join("synthetic-spool");
    let input = spool.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let mut args: Vec<OsString> = exim.agent_args();
    let at = args.iter().position(|a| a == "--exim-spool-dir").unwrap();
    args[at + 1] = spool.clone().into();
    let agent = AgentProcess::start(scene.world, &scene.ns.name, &pod, &args).await;
    let answer = Answer::Smtp(Smtp {
        address: exim.smtp.address,
        recipient: exim.smtp.recipient,
    });
    let report = measure(
        "Exim",
        &scene,
        &agent,
        &answer,
        messages,
        ("queue", "queue_messages{queue=\"queue\"}"),
        || write_spool(messages, &input, exim_spool_files),
    )
    .await;
    remove_files(&input);
    report
}

/// Idle probes, then the spool, then probes while the agent scans it; the MTA's table.
async fn measure(
    mta: &str,
    scene: &Scene,
    agent: &AgentProcess,
    answer: &Answer,
    messages: u64,
    (queue, metric): (&str, &str),
    generate: impl FnOnce() -> u64,
) -> String {
    let http = agent.http.trim_start_matches("http://").to_string();
    wait_until(Duration::from_secs(60), || {
        (healthz(&http).is_ok() && mode(&http).is_some_and(|m| m == "Normal")).then_some(())
    });
    let rss_idle = rss(agent.pid()).0;
    eprintln!("[bench] {mta}: probing idle");
    let idle = probe(scene, &http, answer, PROBING, agent.pid());

    let blocks_needed = messages.saturating_mul(if mta == "Exim" { 2 } else { 1 }) * BLOCK;
    let (free, inodes) = disk_free(Path::new("/tmp"));
    assert!(
        free > blocks_needed + (2 << 30) && inodes > messages * 2 + 100_000,
        "the {mta} spool needs about {} GiB and {} inodes free on /tmp; {} GiB and {inodes} are",
        blocks_needed >> 30,
        messages * 2,
        free >> 30
    );
    eprintln!("[bench] {mta}: writing {messages} queued messages");
    let started = Instant::now();
    let bytes = generate();
    let written_in = started.elapsed();
    eprintln!(
        "[bench] {mta}: written in {:.0} s ({} MiB of data)",
        written_in.as_secs_f64(),
        bytes >> 20
    );
    // The first scan that saw the whole spool; a scan that never counts exactly what was
    // written is a miss the table shows, after COUNT_WAIT.
    let counted = Instant::now();
    let mut reported = None;
    while counted.elapsed() < COUNT_WAIT && reported.is_none_or(|(count, _)| count != messages) {
        reported = queue_figures(&http, metric).or(reported);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "[bench] {mta}: the agent reports {} messages in {queue} ({:.0} s after writing)",
        reported.map_or("no".into(), |(count, _)| count.to_string()),
        counted.elapsed().as_secs_f64()
    );
    eprintln!("[bench] {mta}: probing while it scans");
    let scans = Arc::new(Mutex::new(Vec::<(Instant, u64)>::new()));
    let miscounts = Arc::new(Mutex::new(Vec::<u64>::new()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (http, metric, scans, miscounts, watching) = (
            http.clone(),
            metric.to_string(),
            scans.clone(),
            miscounts.clone(),
            watching.clone(),
        );
        std::thread::spawn(move || {
            // Each scan's end moves the oldest message's age (now − its arrival).
            let mut last = None;
            while watching.load(Ordering::Relaxed) {
                if let Some((count, age)) = queue_figures(&http, &metric)
                    && last != Some(age)
                {
                    if count != messages {
                        miscounts.lock().unwrap().push(count);
                    }
                    scans.lock().unwrap().push((Instant::now(), age));
                    last = Some(age);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let scanning = probe(scene, &http, answer, PROBING, agent.pid());
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let scans = scans.lock().unwrap().clone();
    let miscounts = miscounts.lock().unwrap().clone();
    let (rss_now, rss_peak) = rss(agent.pid());
    table(
        mta,
        messages,
        (&scans, &miscounts),
        (rss_idle, rss_now.max(scanning.rss_max), rss_peak),
        &idle,
        &scanning,
    )
}

/// Where the RCPT answer comes from.
enum Answer {
    /// The agent's Postfix policy service.
    Policy(SocketAddr),
    /// An MTA asked over SMTP (Exim reads the agent's mode file at RCPT).
    Smtp(Smtp),
}

impl Answer {
    /// The answer to one request for `user@…` and how long it took.
    fn ask(&self, connection: &mut Option<BufReader<TcpStream>>) -> (String, Duration) {
        let started = Instant::now();
        let answer = match self {
            Answer::Policy(address) => {
                // Postfix keeps its connection to the policy service for later requests.
                let reader = connection.get_or_insert_with(|| {
                    BufReader::new(TcpStream::connect(address).expect("the policy service"))
                });
                reader
                    .get_mut()
                    .write_all(
                        b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
                          client_address=127.0.0.1\nsender=sender@example.net\n\
                          recipient=user@e2e.test\n\n",
                    )
                    .unwrap();
                let mut answer = String::new();
                loop {
                    let mut line = String::new();
                    assert!(reader.read_line(&mut line).unwrap() > 0, "policy closed");
                    if line == "\n" {
                        break answer;
                    }
                    answer.push_str(line.trim_start_matches("action=").trim_end());
                }
            }
            Answer::Smtp(smtp) => smtp.rcpt_reply(),
        };
        (answer, started.elapsed())
    }
}

/// What one probing phase measured.
struct Probed {
    healthz: Vec<Duration>,
    answers: Vec<Duration>,
    switches: Vec<Duration>,
    /// Of each switch, the part after `kubectl apply` returned: the operator's and the
    /// agent's, without kubectl's own start-up and requests.
    after_apply: Vec<Duration>,
    rss_max: u64,
}

/// Probes `/healthz` and the RCPT answer back to back on their own threads, and switches
/// the mode (TempFail, then resolved) again and again on this one, for `length`.
fn probe(scene: &Scene, http: &str, answer: &Answer, length: Duration, pid: u32) -> Probed {
    let until = Instant::now() + length;
    std::thread::scope(|threads| {
        let health = threads.spawn(|| {
            let mut times = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                healthz(http).expect("/healthz answers 200");
                times.push(started.elapsed());
                std::thread::sleep(PROBE_PAUSE);
            }
            times
        });
        let answers = threads.spawn(|| {
            let mut times = Vec::new();
            let mut connection = None;
            while Instant::now() < until {
                times.push(answer.ask(&mut connection).1);
                std::thread::sleep(PROBE_PAUSE);
            }
            times
        });
        let memory = threads.spawn(|| {
            let mut max = 0;
            while Instant::now() < until {
                max = max.max(rss(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        });
        let mut switches = Vec::new();
        let mut after_apply = Vec::new();
        let mut connection = None;
        let mut refusing = answer.ask(&mut connection).0.starts_with("452");
        while Instant::now() < until {
            let spec = if refusing {
                format!("mode: TempFail\nreason: bench\n{TARGETS}\nresolved: true")
            } else {
                format!("mode: TempFail\nreason: bench\n{TARGETS}")
            };
            let started = Instant::now();
            apply_incident(scene.world, &scene.ns.name, "scan", &spec);
            let applied = Instant::now();
            let deadline = started + Duration::from_secs(30);
            loop {
                let now_refusing = answer.ask(&mut connection).0.starts_with("452");
                if now_refusing != refusing {
                    switches.push(started.elapsed());
                    after_apply.push(applied.elapsed());
                    refusing = now_refusing;
                    break;
                }
                assert!(Instant::now() < deadline, "no switch within 30 s");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Probed {
            healthz: health.join().unwrap(),
            answers: answers.join().unwrap(),
            switches,
            after_apply,
            rss_max: memory.join().unwrap(),
        }
    })
}

/// The MTA's markdown table.
fn table(
    mta: &str,
    messages: u64,
    (scans, miscounts): (&[(Instant, u64)], &[u64]),
    (rss_idle, rss_scanning, rss_peak): (u64, u64, u64),
    idle: &Probed,
    scanning: &Probed,
) -> String {
    // Scans end back to back: the time between the first and last end seen, per scan.
    let scan = match (scans.first(), scans.last()) {
        (Some(first), Some(last)) if scans.len() > 1 => {
            Some((last.0 - first.0) / (scans.len() - 1) as u32)
        }
        _ => None,
    };
    let longest = scans
        .windows(2)
        .map(|w| Duration::from_secs(w[1].1.saturating_sub(w[0].1)))
        .max();
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut out = format!("**{mta}**, {messages} queued messages\n\n");
    out += "| figure | idle | during scans | goal | verdict |\n|---|---:|---:|---|---|\n";
    out += &format!(
        "| scan duration (mean / longest, {} scans seen) | – | {} / {} | < {} s (report period) | {} |\n",
        scans.len().saturating_sub(1),
        scan.map_or("?".into(), |s| format!("{:.1} s", s.as_secs_f64())),
        longest.map_or("?".into(), |s| format!("{} s", s.as_secs())),
        REPORT_PERIOD.as_secs(),
        met(scan.is_some_and(|s| s < REPORT_PERIOD) && longest.is_some_and(|s| s < REPORT_PERIOD))
    );
    out += &format!(
        "| messages counted, in scans that miscounted | – | {} of {} scans{} | every message, every scan | {} |\n",
        miscounts.len(),
        scans.len(),
        miscounts
            .iter()
            .min()
            .zip(miscounts.iter().max())
            .map_or(String::new(), |(least, most)| format!(": {least}–{most}")),
        met(miscounts.is_empty() && !scans.is_empty())
    );
    out += &format!(
        "| agent RSS (VmRSS max; VmHWM) | {} | {}; {} | bounded, not growing with the queue | {} |\n",
        mib(rss_idle),
        mib(rss_scanning),
        mib(rss_peak),
        met(rss_peak < rss_idle + 64 * 1024)
    );
    for (what, idle, scanning) in [
        ("`/healthz`", &idle.healthz, &scanning.healthz),
        ("RCPT answer", &idle.answers, &scanning.answers),
    ] {
        let (i50, i99) = percentiles(idle);
        let (s50, s99) = percentiles(scanning);
        out += &format!(
            "| {what} p50 / p99 ({} / {} probes) | {} / {} | {} / {} | p99 < 50 ms | {} |\n",
            idle.len(),
            scanning.len(),
            ms(i50),
            ms(i99),
            ms(s50),
            ms(s99),
            met(s99 < GOAL)
        );
    }
    let (i50, i99) = percentiles(&idle.switches);
    let (s50, s99) = percentiles(&scanning.switches);
    out += &format!(
        "| mode switch, `kubectl apply` → new answer, p50 / p99 ({} / {}) | {} / {} | {} / {} | – | {} |\n",
        idle.switches.len(),
        scanning.switches.len(),
        ms(i50),
        ms(i99),
        ms(s50),
        ms(s99),
        "(kubectl's own start-up and requests included)"
    );
    // What a scan could delay is the operator's and the agent's part: kubectl's own
    // (a process start, discovery) varies with the machine's load alone.
    let (i50, i99) = percentiles(&idle.after_apply);
    let (s50, s99) = percentiles(&scanning.after_apply);
    out += &format!(
        "| of which after `kubectl apply` returned, p50 / p99 | {} / {} | {} / {} | the scan adds < 50 ms to p99 | {} |\n",
        ms(i50),
        ms(i99),
        ms(s50),
        ms(s99),
        met(s99.saturating_sub(i99) < GOAL)
    );
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// p50 and p99.
fn percentiles(samples: &[Duration]) -> (Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |percent: usize| {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (sorted.len() * percent).div_ceil(100).max(1);
        sorted[rank.min(sorted.len()) - 1]
    };
    (at(50), at(99))
}

/// One GET of `/healthz` on its own connection: its time, or why it failed.
fn healthz(http: &str) -> Result<(), String> {
    let body = get(http, "/healthz")?;
    body.starts_with("HTTP/1.1 200")
        .then_some(())
        .ok_or_else(|| body.lines().next().unwrap_or_default().to_string())
}

fn get(http: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(http).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // One write: in pieces, Nagle would hold the rest of the request until the agent
    // acknowledged the first (a delayed ACK, 40 ms), which is not the agent's latency.
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// The mode the agent has applied, from its metrics.
fn mode(http: &str) -> Option<String> {
    let metrics = get(http, "/metrics").ok()?;
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("mail_incident_agent_mode{mode=\"")?;
        let (mode, value) = rest.split_once("\"} ")?;
        (value == "1").then(|| mode.to_string())
    })
}

/// The queue's message count (`metric`) and oldest age as the agent last measured them.
fn queue_figures(http: &str, metric: &str) -> Option<(u64, u64)> {
    let metrics = get(http, "/metrics").ok()?;
    let value = |name: &str| {
        metrics.lines().find_map(|line| {
            line.strip_prefix("mail_incident_agent_")?
                .strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<u64>()
                .ok()
        })
    };
    Some((value(metric)?, value("oldest_message_age_seconds")?))
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn wait_until<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Free bytes and inodes of the file system holding `path`.
fn disk_free(path: &Path) -> (u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=avail,iavail"])
        .arg(path)
        .output()
        .expect("df runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// The uid and gid of `user`.
fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// The files of one queued message: (name, contents, owner).
type SpoolFiles = Vec<(String, Vec<u8>, Option<(u32, u32)>)>;

/// Writes `messages` messages' files into `directory` on [`WRITERS`] threads; the bytes
/// written.
fn write_spool(messages: u64, directory: &Path, files: impl Fn(u64) -> SpoolFiles + Sync) -> u64 {
    std::fs::create_dir_all(directory).unwrap();
    std::thread::scope(|threads| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let files = &files;
                threads.spawn(move || {
                    let mut bytes = 0;
                    for message in (writer..messages).step_by(WRITERS as usize) {
                        for (name, contents, owner) in files(message) {
                            let mut file = OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o700)
                                .open(directory.join(&name))
                                .unwrap();
                            file.write_all(&contents).unwrap();
                            if let Some((uid, gid)) = owner {
                                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).unwrap();
                            }
                            bytes += contents.len() as u64;
                        }
                    }
                    bytes
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

/// Renames each Postfix queue file in `directory` to the short queue ID Postfix would
/// have given it: five hexadecimal digits, then its inode number in hexadecimal.
/// `postsuper`, which `postfix start` runs (and `postfix reload` in the background, as
/// the agent's reload once did at each switch), renames any queue file whose name does
/// not end in its inode number: left as written, the spool was renamed under the agent's
/// scans, which then counted some files twice (1.12–1.16 million of a million).
fn name_after_inodes(directory: &Path) {
    let names: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let share = names.len().div_ceil(WRITERS as usize).max(1);
    std::thread::scope(|threads| {
        for (part, paths) in names.chunks(share).enumerate() {
            threads.spawn(move || {
                for (i, path) in paths.iter().enumerate() {
                    let inode = std::fs::metadata(path).unwrap().ino();
                    let microseconds = (part * share + i) % 1_000_000;
                    std::fs::rename(path, directory.join(format!("{microseconds:05X}{inode:X}")))
                        .unwrap();
                }
            });
        }
    });
}

/// Removes every file in `directory`, on [`WRITERS`] threads.
fn remove_files(directory: &Path) {
    let names: Vec<PathBuf> = std::fs::read_dir(directory)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    let share = names.len().div_ceil(WRITERS as usize).max(1);
    std::thread::scope(|threads| {
        for part in names.chunks(share) {
            threads.spawn(move || {
                for path in part {
                    std::fs::remove_file(path).ok();
                }
            });
        }
    });
}

/// Arrival times spread over the last day, the oldest first.
fn arrival(message: u64) -> i64 {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    now - 86_400 + (message % 86_400) as i64
}

/// One Postfix queue file as `cleanup` writes it for a message from SMTP to two
/// recipients (the records of a real one: `postcat -v`), named by a short queue ID.
fn postfix_queue_file(message: u64, owner: (u32, u32)) -> SpoolFiles {
    // A short queue ID: hexadecimal, as with enable_long_queue_ids = no.
    let id = format!("{:011X}", 0x100_0000_0000u64 + message);
    let arrival = arrival(message);
    let recipients = [
        format!("user{message}@e2e.test"),
        format!("other{message}@pec.e2e.test"),
    ];
    let mut envelope = Vec::new();
    record(&mut envelope, b'T', format!("{arrival} 262361").as_bytes());
    record(
        &mut envelope,
        b'A',
        format!("create_time={arrival}").as_bytes(),
    );
    record(&mut envelope, b'A', format!("log_ident={id}").as_bytes());
    record(&mut envelope, b'A', b"rewrite_context=local");
    record(&mut envelope, b'S', b"sender@example.net");
    for attribute in [
        "log_client_name=localhost",
        "log_client_address=127.0.0.1",
        "log_client_port=50754",
        "log_message_origin=localhost[127.0.0.1]",
        "log_helo_name=[127.0.0.1]",
        "log_protocol_name=ESMTP",
        "client_name=localhost",
        "reverse_client_name=localhost",
        "client_address=127.0.0.1",
        "client_port=50754",
        "server_address=127.0.0.1",
        "server_port=25",
        "helo_name=[127.0.0.1]",
        "protocol_name=ESMTP",
        "client_address_type=2",
    ] {
        record(&mut envelope, b'A', attribute.as_bytes());
    }
    for recipient in &recipients {
        record(
            &mut envelope,
            b'A',
            format!("dsn_orig_rcpt=rfc822;{recipient}").as_bytes(),
        );
        record(&mut envelope, b'O', recipient.as_bytes());
        record(&mut envelope, b'R', recipient.as_bytes());
    }
    record(&mut envelope, b'M', b"");
    let mut content = Vec::new();
    for line in [
        "Received: from [127.0.0.1] (localhost [127.0.0.1])".to_string(),
        format!("\tby mx.e2e.test (Postfix) with ESMTP id {id};"),
        "\tSun,  6 Dec 2026 16:40:33 +0000 (UTC)".to_string(),
        format!("Subject: queued message {message}"),
        format!("Message-ID: <{message}@example.net>"),
        "Date: Sun,  6 Dec 2026 16:40:33 +0000 (UTC)".to_string(),
        "From: sender@example.net".to_string(),
        String::new(),
        "Held while storage is down.".to_string(),
    ] {
        record(&mut content, b'N', line.as_bytes());
    }
    let mut tail = Vec::new();
    record(&mut tail, b'X', b"");
    record(&mut tail, b'E', b"");
    // The size record: content size, offset of the content, recipients, queue manager
    // options, content length, SMTPUTF8 flags; fixed width, so its own length is known.
    let size_record_length = 2 + 95;
    let data_offset = size_record_length + envelope.len();
    let mut file = Vec::new();
    record(
        &mut file,
        b'C',
        format!(
            "{:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
            content.len(),
            data_offset,
            recipients.len(),
            0,
            content.len(),
            0
        )
        .as_bytes(),
    );
    file.extend(envelope);
    file.extend(content);
    file.extend(tail);
    vec![(id, file, Some(owner))]
}

/// A Postfix record: its type, its length in 7-bit groups (low first), its data.
fn record(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.push(kind);
    let mut length = data.len();
    loop {
        let group = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            out.push(group);
            break;
        }
        out.push(group | 0x80);
    }
    out.extend_from_slice(data);
}

/// One Exim message: its `-H` file (as Exim 4.96 writes it for a message from SMTP to
/// two recipients, one delivered) and its `-D` file, named by a message ID.
fn exim_spool_files(message: u64) -> SpoolFiles {
    let arrival = arrival(message);
    let id = format!(
        "{}-{}-{}",
        base62(arrival as u64, 6),
        base62(message, 6),
        base62(message % 62, 2)
    );
    let received = format!(
        "Received: from [127.0.0.1] (helo=c)\n\tby mx.local.test with esmtp (Exim 4.96)\n\t\
         (envelope-from <sender@example.net>)\n\tid {id}\n\tfor user{message}@local.test;\n\t\
         Sun, 06 Dec 2026 16:40:33 +0000\n"
    );
    let subject = format!("Subject: queued message {message}\n");
    let header = format!(
        "{id}-H\nDebian-exim 101 101\n<sender@example.net>\n{arrival} 0\n\
         -received_time_usec .262361\n-helo_name c\n-host_address [127.0.0.1]:48120\n\
         -interface_address [127.0.0.1]:25\n-received_protocol esmtp\n-aclm _mail_incident 36\n\
         queue 452 4.3.1 Mailbox storage down\n-body_linecount 1\n-max_received_linelength 40\n\
         NN user{message}@local.test\n2\nuser{message}@local.test\nother{message}@pec.local.test\n\n\
         {:03}P {received}{:03}  {subject}",
        received.len(),
        subject.len()
    );
    let data = format!("{id}-D\nHeld while storage is down.\n");
    vec![
        (format!("{id}-H"), header.into_bytes(), None),
        (format!("{id}-D"), data.into_bytes(), None),
    ]
}

fn base62(mut value: u64, digits: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; digits];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out).unwrap()
}
