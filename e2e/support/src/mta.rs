//! What the real-MTA tests and benches share: an SMTP client, the agent process, the
//! example MTA workload with the agent's RBAC, counting a Maildir, and the trait the
//! scoped-incident stories see each real MTA through.

use crate::{
    fakes::FakeKubelet,
    support::eventually,
    world::{REPO, World, free_port, operator_binary, service_account_kubeconfig},
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};
use mail_incident_operator::api::validation::MAX_REPLY_TEXT;
use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// Runs a command that must succeed; its standard output.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e}; e2e/install-deps.sh installs the MTAs")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One of the e2e scripts that run private MTA instances (`postfix-instance.sh`,
/// `exim-instance.sh`).
pub fn instance_script(script: &str) -> Command {
    Command::new(Path::new(REPO).join("e2e").join(script))
}

/// Messages delivered to a Maildir (files in its `new/`).
pub fn maildir_count(maildir: &Path) -> usize {
    std::fs::read_dir(maildir.join("new")).map_or(0, |entries| entries.count())
}

/// Every character a reply text may hold (printable ASCII less `{ } $ \\`), between two
/// letters so that no space leads or trails.
pub fn every_admitted_character() -> String {
    let middle: String = (' '..='~')
        .filter(|c| !matches!(c, '{' | '}' | '$' | '\\'))
        .collect();
    format!("a{middle}z")
}

/// [`every_admitted_character`] in two reply texts the API admits (each at most
/// `MAX_REPLY_TEXT` characters, between two letters).
pub fn admitted_character_texts() -> [String; 2] {
    let every = every_admitted_character();
    let (first, second) = every.split_at(every.len() / 2);
    let texts = [format!("{first}z"), format!("a{second}")];
    assert!(texts.iter().all(|t| t.len() <= MAX_REPLY_TEXT));
    texts
}

/// One SMTP client session; QUIT is sent when it is dropped.
pub struct SmtpSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpSession {
    /// Connects and reads the greeting. A refused or reset connection is retried for a
    /// while, as a sending MTA would: Exim re-executing itself on SIGHUP listens again
    /// ~0.1 s later.
    pub fn open(address: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Self::try_open(address) {
                Ok(session) => return session,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::UnexpectedEof
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("SMTP session with {address}: {e}"),
            }
        }
    }

    /// One attempt: connected and greeted. A connection queued on a listening socket that
    /// Exim closes to re-execute itself is reset (or closed) before the greeting.
    pub fn try_open(address: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // Each command goes out whole in one write (see `try_command`).
        stream.set_nodelay(true)?;
        let mut session = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        if session.try_reply()?.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(session)
    }

    /// Sends one line; the last line of the reply.
    pub fn command(&mut self, line: &str) -> String {
        self.try_command(line)
            .unwrap_or_else(|e| panic!("SMTP {line}: {e}"))
    }

    /// Sends one line; the last line of the reply (empty if the server closed).
    pub fn try_command(&mut self, line: &str) -> std::io::Result<String> {
        // One write: `write!` would send the line and its CRLF apart, and the server,
        // waiting for the line's end, delays the ACK the CRLF waits for (40 ms a command).
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.try_reply()
    }

    /// A reply's last line has a space, not a dash, after the code.
    fn try_reply(&mut self) -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(line.trim_end().to_string());
            }
        }
    }
}

impl Drop for SmtpSession {
    fn drop(&mut self) {
        self.writer.write_all(b"QUIT\r\n").ok();
    }
}

/// An MTA's SMTP address, for one recipient address.
#[derive(Clone)]
pub struct Smtp {
    pub address: SocketAddr,
    pub recipient: &'static str,
}

impl Smtp {
    /// Sends one message; the reply to the end of DATA.
    pub fn send(&self, subject: &str) -> String {
        let mut session = SmtpSession::open(self.address);
        for command in [
            "EHLO client.e2e.test",
            "MAIL FROM:<sender@example.net>",
            &format!("RCPT TO:<{}>", self.recipient),
            "DATA",
        ] {
            session.command(command);
        }
        session.command(&format!(
            "Subject: {subject}\r\n\r\nHeld while storage is down.\r\n."
        ))
    }

    /// The reply to RCPT TO in a fresh SMTP session (a refused connect is retried).
    pub fn rcpt_reply(&self) -> String {
        self.ask_rcpt(&mut SmtpSession::open(self.address))
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// The reply to RCPT TO in a fresh SMTP session, or why there was none: an MTA that
    /// is not listening is an answer here, not a panic.
    pub fn try_rcpt_reply(&self) -> Result<String, String> {
        let mut session = SmtpSession::try_open(self.address)
            .map_err(|e| format!("connect to {}: {e}", self.address))?;
        self.ask_rcpt(&mut session)
    }

    /// EHLO and MAIL FROM, each answered 250, then RCPT TO: its reply.
    fn ask_rcpt(&self, session: &mut SmtpSession) -> Result<String, String> {
        for command in ["EHLO client.e2e.test", "MAIL FROM:<sender@example.net>"] {
            let answer = session
                .try_command(command)
                .map_err(|e| format!("{command}: {e}"))?;
            if !answer.starts_with("250") {
                return Err(format!("{command}: {answer}"));
            }
        }
        let rcpt = format!("RCPT TO:<{}>", self.recipient);
        session
            .try_command(&rcpt)
            .map_err(|e| format!("{rcpt}: {e}"))
    }

    /// The RCPT reply once it starts with `prefix` (or the last one after 10 s): a
    /// Postfix reload reaches new smtpd processes only, so an idle old one may answer
    /// once more with the old configuration.
    pub fn rcpt_reply_once(&self, prefix: &str) -> String {
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

/// The agent binary, running as the example's agent ServiceAccount next to a local MTA,
/// for one pod. Killed when dropped; its log is printed if the test failed.
pub struct AgentProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
    /// Everything after the binary on its command line, for [`AgentProcess::restart`].
    args: Vec<OsString>,
    pub http: String,
}

impl AgentProcess {
    /// Starts `agent` with the MTA-specific `args`, reporting every second, with a state
    /// directory of its own.
    pub async fn start(world: &World, namespace: &str, pod: &str, args: &[OsString]) -> Self {
        Self::start_through(world, namespace, pod, args, None).await
    }

    /// [`AgentProcess::start`], reaching the API server at `api_server` (an `https://`
    /// URL, say a fault proxy's) instead of the kubeconfig's own address when given.
    pub async fn start_through(
        world: &World,
        namespace: &str,
        pod: &str,
        args: &[OsString],
        api_server: Option<&str>,
    ) -> Self {
        Self::start_reporting_every(world, namespace, pod, args, api_server, 1).await
    }

    /// [`AgentProcess::start_through`], measuring its queue every `report_seconds` (the
    /// tests take 1 s; a benchmark of what a deployment sees takes the default).
    pub async fn start_reporting_every(
        world: &World,
        namespace: &str,
        pod: &str,
        args: &[OsString],
        api_server: Option<&str>,
        report_seconds: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("agent.kubeconfig");
        let mut config =
            service_account_kubeconfig(world, namespace, "postfix-inbound-agent").await;
        if let Some(server) = api_server {
            let mut parsed: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
            for cluster in parsed["clusters"].as_sequence_mut().expect("clusters") {
                cluster["cluster"]["server"] = server.into();
            }
            config = serde_yaml::to_string(&parsed).unwrap();
        }
        std::fs::write(&kubeconfig, config).unwrap();
        let port = free_port();
        let mut full: Vec<OsString> = [
            "agent",
            "--workload",
            "Deployment/postfix-inbound",
            "--namespace",
            namespace,
            "--pod",
            pod,
            "--report-seconds",
            &report_seconds.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        full.push(dir.path().join("state").into());
        full.extend(args.iter().cloned());
        let child = Self::spawn(dir.path(), &full);
        Self {
            child,
            dir,
            args: full,
            http: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs the agent binary with `args` in `dir` (its kubeconfig), appending to its log.
    fn spawn(dir: &Path, args: &[OsString]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        Command::new(operator_binary())
            .args(args)
            .env("KUBECONFIG", dir.join("agent.kubeconfig"))
            .env("NO_COLOR", "1")
            .stderr(log)
            .spawn()
            .expect("the agent starts")
    }

    /// SIGKILL: the agent gets no chance to finish anything. Its state directory stays.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Starts the agent again, killing it first if it still runs, with the same command
    /// line but its HTTP port: the same state directory, kubeconfig, policy port and log
    /// (appended to).
    pub fn restart(&mut self) {
        self.kill();
        // A fresh HTTP port: the old one may be some client socket's ephemeral port by
        // now (the policy port stays: Postfix's main.cf names it).
        let port = free_port();
        if let Some(at) = self.args.iter().position(|a| a == "--listen") {
            self.args[at + 1] = format!("127.0.0.1:{port}").into();
            self.http = format!("http://127.0.0.1:{port}");
        }
        self.child = Self::spawn(self.dir.path(), &self.args);
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state the agent saved last (its state file), if any.
    pub fn saved_state(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state/agent-state.json")).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::support::last_lines(&self.log(), lines)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent log\n{}", self.log());
        }
    }
}

/// The example MTA (examples/postfix-with-agent.yaml) and the agent's ServiceAccount and
/// Role (deploy/agent) applied in `namespace`, with a kubelet stand-in; returns it and
/// the name of the pod whose agent the test runs.
pub async fn mta_with_agent_rbac(
    world: &World,
    client: &Client,
    namespace: &str,
) -> (FakeKubelet, String) {
    let kubelet = FakeKubelet::start(client.clone(), namespace).await;
    let example = format!("{REPO}/examples/postfix-with-agent.yaml");
    let agent_rbac = format!("{REPO}/deploy/agent");
    world.kubectl_ok(&["apply", "-n", namespace, "-k", &agent_rbac]);
    world.kubectl_ok(&["apply", "-n", namespace, "-f", &example]);
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

/// Runs `commands` in one SMTP session (QUIT when done); the reply to each, in order.
pub fn session(address: SocketAddr, commands: &[String]) -> Vec<String> {
    let mut session = SmtpSession::open(address);
    commands
        .iter()
        .map(|command| session.command(command))
        .collect()
}

/// [`session`] again until `expected` holds for its replies (or 10 s have passed: a
/// Postfix reload reaches new smtpd processes only); then prints the transcript, commands
/// and replies, for `--nocapture`, and returns the replies.
pub fn transcript(
    label: &str,
    address: SocketAddr,
    commands: &[String],
    expected: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let replies = loop {
        let replies = session(address, commands);
        if expected(&replies) || Instant::now() > deadline {
            break replies;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("--- {label}");
    for (command, reply) in commands.iter().zip(&replies) {
        let shown = command.lines().next().unwrap_or_default();
        eprintln!("C: {shown}\nS: {reply}");
    }
    replies
}

/// A real MTA as the scoped-incident scenarios see it: recipient domains below its own
/// (`pec.`, `storage.`, `a.storage.`, `b.storage.`), each with a store of its own.
pub trait ScopedMta {
    fn label(&self) -> &'static str;
    fn address(&self) -> SocketAddr;
    /// The domain normal mail goes to; the scoped ones are below it.
    fn domain(&self) -> &'static str;
    /// The directory holding `domain`'s Maildir: made unwritable, its store is down.
    fn store(&self, domain: &str) -> PathBuf;
    /// Messages delivered to `domain`'s Maildir.
    fn delivered(&self, domain: &str) -> usize;
    /// Messages in the queue.
    fn queued(&self) -> usize;
    /// Bounces the MTA generated.
    fn bounced(&self) -> usize;
    /// Tries every queued message now, as a site's operator would with a flush.
    fn run_queue(&self);
    /// What the agent may change, as it is now.
    fn configuration(&self) -> String;
    /// [`ScopedMta::configuration`] in normal service, as the site made it.
    fn baseline(&self) -> String;
    /// The agent's command-line arguments for this MTA.
    fn agent_args(&self) -> Vec<OsString>;
}
