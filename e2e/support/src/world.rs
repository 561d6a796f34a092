//! The real test world: a Kubernetes API server (`E2E_KUBECONFIG`, started by
//! `e2e/run-tests.sh` when not given), `kubectl`, `deploy/` installed with kustomize, and
//! the operator binary run as the ServiceAccount `deploy/` creates.
//!
//! Tests that stop the API server itself get a control plane of their own
//! ([`PrivateControlPlane`]), so the shared one stays up for every other test.

use crate::admission_webhook::InProcessWebhook;
use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use mail_incident_operator::api::MailIncident;
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

pub const OPERATOR_NAMESPACE: &str = "mail-incident-operator";
pub const OPERATOR_ACCOUNT: &str = "mail-incident-operator";
/// The repository's root (this crate is its `e2e/support`).
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[derive(Clone)]
pub struct World {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// The admission webhook of this control plane (see [`InProcessWebhook`]).
    pub webhook: Option<Arc<InProcessWebhook>>,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The operator's binary, also the agent's. Cargo builds it for every test and bench of
/// the package beside them: the running `target/<profile>/deps/<test>` finds it in
/// `target/<profile>`.
pub fn operator_binary() -> PathBuf {
    let running = std::env::current_exe().expect("the running test's path");
    running
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .join("mail-incident-operator")
}

impl World {
    /// The shared world; the first call installs `deploy/`. Panics, saying how to provide
    /// one, when there is no cluster: e2e tests never skip.
    pub fn get() -> &'static World {
        WORLD.get_or_init(|| {
            let kubeconfig = std::env::var_os("E2E_KUBECONFIG").map(PathBuf::from).expect(
                "E2E_KUBECONFIG is not set: run the e2e tests with `make e2e` (it starts a local \
                 control plane), or point E2E_KUBECONFIG at a cluster",
            );
            assert!(
                kubeconfig.is_file(),
                "E2E_KUBECONFIG={} is not a file",
                kubeconfig.display()
            );
            World::install(kubeconfig, kubectl_path())
        })
    }

    /// The world of the cluster `kubeconfig` names, with `deploy/` installed in it and the
    /// MailIncident API ready to use (`kubectl explain` included).
    pub fn install(kubeconfig: PathBuf, kubectl: PathBuf) -> World {
        let mut world = World {
            kubeconfig,
            kubectl,
            webhook: None,
        };
        // kubectl 1.20 validates client-side against a schema that predates
        // x-kubernetes-validations; the server is the judge here.
        world.kubectl_ok(&["apply", "--validate=false", "-k", &format!("{REPO}/deploy")]);
        world.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/mailincidents.mailops.dev",
        ]);
        // The API server publishes a new CRD's OpenAPI (what `kubectl explain` reads)
        // a few seconds after it is Established.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !world
            .kubectl(&["explain", "mailincident.spec"], None)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "MailIncident OpenAPI not published within 30s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        world.webhook = Some(Arc::new(InProcessWebhook::start(&world)));
        world
    }

    /// A client with the cluster administrator's credentials, for test set-up and checks.
    pub async fn admin(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// Runs kubectl; returns its output whatever the exit code.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; `e2e/build-kubernetes.sh` builds kubectl, or set E2E_KUBECTL",
                    self.kubectl.display()
                )
            });
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("kubectl reads stdin");
        }
        drop(input);
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs kubectl, panics unless it succeeds, returns its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args, None);
        assert!(
            output.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
    }
}

/// `E2E_KUBECTL`, or `kubectl` on the PATH.
fn kubectl_path() -> PathBuf {
    std::env::var_os("E2E_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

/// A namespace of one's own, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    /// The world it was made in (the shared one, or a private control plane's).
    world: World,
}

impl TestNamespace {
    pub fn new(world: &World, prefix: &str) -> Self {
        let suffix: u32 = rand_suffix();
        let name = format!("e2e-{prefix}-{suffix:06x}");
        world.kubectl_ok(&["create", "namespace", &name]);
        Self {
            name,
            world: world.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        self.world
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

pub fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(Instant::now()) & 0xff_ffff) as u32
}

/// A namespace of its own with the operator watching it: where most tests start.
pub struct Scene {
    /// Declared first so that it is dropped first: the operator stops before its namespace goes.
    pub operator: Operator,
    pub world: &'static World,
    pub ns: TestNamespace,
    pub client: Client,
    pub incidents: Api<MailIncident>,
}

impl Scene {
    pub async fn start(prefix: &str) -> Self {
        let world = World::get();
        let ns = TestNamespace::new(world, prefix);
        let client = world.admin().await;
        let operator = Operator::start(world, &ns.name).await;
        let incidents = Api::namespaced(client.clone(), &ns.name);
        Self {
            operator,
            world,
            ns,
            client,
            incidents,
        }
    }
}

/// The operator binary, running as the ServiceAccount from `deploy/`, watching one
/// namespace. Killed when dropped (continued first if frozen); its log is printed if the
/// test failed.
pub struct Operator {
    child: Child,
    dir: tempfile::TempDir,
    pub http: String,
    /// Its name in the leader Lease.
    pub identity: String,
    /// Stopped with SIGSTOP and not yet continued.
    frozen: bool,
}

impl Operator {
    /// Starts one and waits until it answers /readyz 200 (leader or hot standby).
    pub async fn start(world: &World, namespace: &str) -> Self {
        let operator = Self::spawn(world, namespace, None).await;
        operator.wait_ready().await;
        operator
    }

    /// Starts one under a given Lease identity (the pod name, which a container restarted
    /// in its pod keeps) and waits until it answers /readyz 200.
    pub async fn start_as(world: &World, namespace: &str, identity: &str) -> Self {
        let operator = Self::spawn(world, namespace, Some(identity)).await;
        operator.wait_ready().await;
        operator
    }

    /// Starts one without waiting for anything: it may not answer yet.
    pub async fn spawn(world: &World, namespace: &str, identity: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("operator.kubeconfig");
        let config = service_account_kubeconfig(world, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
        std::fs::write(&kubeconfig, config).expect("kubeconfig written");
        let port = free_port();
        let identity = identity.map_or_else(|| format!("operator-{port}"), str::to_string);
        let log = std::fs::File::create(dir.path().join("operator.log")).expect("log file");
        // Replicas for one namespace share its Lease; a short lease keeps failover quick.
        let child = Command::new(operator_binary())
            .args(["run", "--namespace", namespace, "--lease-seconds", "4"])
            .args([
                "--lease-name",
                &lease_name(namespace),
                "--instance",
                &identity,
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            // The world's webhook is the one the API server calls (see InProcessWebhook);
            // this one serves its certificate on a port of its own, unused.
            .args([
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-certificates",
                "external",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,mail_incident_operator=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("operator binary starts");
        Self {
            child,
            dir,
            http: format!("http://127.0.0.1:{port}"),
            identity,
            frozen: false,
        }
    }

    /// Waits (at most 30 s) until it answers /readyz 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/readyz", self.http);
        while Instant::now() < deadline {
            if http_get(&url)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("operator not ready within 30s; log:\n{}", self.log());
    }

    /// Its process id (the benchmark reads its CPU time and peak RSS from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has (it is reaped then; a killed one too).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .expect("the operator can be waited for")
    }

    /// SIGKILL, as an OOM kill or a node loss does: no shutdown of any kind. Waits for it.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        self.frozen = false;
    }

    /// SIGSTOP: the process stays, frozen, as on a paused VM or a long GC pause; its
    /// sockets stay open and it notices nothing until [`Operator::thaw`].
    pub fn freeze(&mut self) {
        signal(self.pid(), "STOP");
        self.frozen = true;
    }

    /// SIGCONT: it runs on from where it was frozen, its timers all due at once.
    pub fn thaw(&mut self) {
        signal(self.pid(), "CONT");
        self.frozen = false;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::support::last_lines(&self.log(), lines)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.frozen {
            signal(self.pid(), "CONT");
        }
        self.child.kill().ok();
        self.child.wait().ok();
        if std::thread::panicking() {
            eprintln!("--- operator {} log\n{}", self.identity, self.log());
        }
    }
}

/// Sends `SIG<name>` to a process of ours with kill(1).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The Lease the operators of one test namespace share.
pub fn lease_name(namespace: &str) -> String {
    format!("mail-incident-operator-{namespace}")
}

/// A kubeconfig for a ServiceAccount: the admin's cluster entry with a fresh token from
/// the TokenRequest API, so the RBAC shipped (the operator's in `deploy/`, the agent's in
/// `examples/`) is what the tests exercise.
pub async fn service_account_kubeconfig(world: &World, namespace: &str, account: &str) -> String {
    let admin = world.admin().await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600},
    }))
    .expect("token request");
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("a token for the ServiceAccount")
        .status
        .expect("token request has a status")
        .token;
    let admin_config = std::fs::read_to_string(&world.kubeconfig).expect("admin kubeconfig");
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&admin_config).expect("kubeconfig YAML");
    config["users"] =
        serde_yaml::from_str(&format!("[{{name: operator, user: {{token: {token}}}}}]")).unwrap();
    let context = config["current-context"]
        .as_str()
        .expect("current context")
        .to_string();
    for entry in config["contexts"].as_sequence_mut().expect("contexts") {
        if entry["name"].as_str() == Some(&context) {
            entry["context"]["user"] = "operator".into();
        }
    }
    serde_yaml::to_string(&config).expect("kubeconfig serializes")
}

/// Where [`free_port`] hands out ports: below Linux's ephemeral range (32768–60999).
const FREE_PORTS: std::ops::Range<u16> = 20000..32000;

/// A loopback port nobody listens on, for a process a test starts. Not one the kernel
/// picks (port 0): between its release here and the process binding it, any outgoing
/// connection could take it (an agent once failed with "Address already in use"), while
/// no connection takes a port below the ephemeral range. Each port is handed out once per
/// test process, from an offset of its own, so concurrent tests never share one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    let offset = std::process::id() % span;
    for _ in 0..span {
        let next = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = FREE_PORTS.start + u16::try_from((offset + next) % span).expect("within span");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FREE_PORTS:?}");
}

/// A bare HTTP/1.0 GET on loopback: status code and body, or None if nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A control plane of one test's own (etcd, kube-apiserver and kube-controller-manager,
/// started by `e2e/cluster.sh up` on a state directory and port base of its own), with
/// `deploy/` installed: for tests that stop its API server while the shared one serves
/// every other test. Stopped, and its state deleted, when dropped, pass or fail.
pub struct PrivateControlPlane {
    pub world: World,
    state: PathBuf,
    pub port_base: u16,
}

/// Port bases handed out in this process (cluster.sh itself refuses ports in use).
static PORT_BASES: Mutex<Vec<u16>> = Mutex::new(Vec::new());

impl PrivateControlPlane {
    /// Starts one on `preferred_port_base` (API server; +1 and +2 for etcd) or, when one
    /// of those ports is taken, the next free base 10 below it. Takes some 10-30 s.
    pub async fn start(preferred_port_base: u16) -> Self {
        let port_base = free_port_base(preferred_port_base);
        let shared_state = std::env::var("E2E_STATE")
            .unwrap_or_else(|_| "/tmp/mail-incident-operator-e2e".to_string());
        let state = PathBuf::from(format!("{shared_state}-private-{port_base}"));
        let mut plane = Self {
            world: World {
                kubeconfig: state.join("admin.kubeconfig"),
                kubectl: kubectl_path(),
                webhook: None,
            },
            state,
            port_base,
        };
        let started = Instant::now();
        let output = plane.cluster_sh("up").await;
        let kubeconfig = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .map(PathBuf::from)
            .expect("cluster.sh up prints the kubeconfig path");
        let world = {
            let (kubeconfig, kubectl) = (kubeconfig, plane.world.kubectl.clone());
            tokio::task::spawn_blocking(move || World::install(kubeconfig, kubectl))
                .await
                .expect("deploy/ installs in the private control plane")
        };
        plane.world = world;
        eprintln!(
            "private control plane on port base {port_base} ({}) up in {:.1} s",
            plane.state.display(),
            started.elapsed().as_secs_f64()
        );
        plane
    }

    /// Stops its kube-apiserver (SIGTERM, SIGKILL after 5 s); etcd and its data stay.
    pub async fn stop_api_server(&self) {
        self.cluster_sh("stop-apiserver").await;
    }

    /// Starts its kube-apiserver again and returns once it answers /readyz.
    pub async fn start_api_server(&self) {
        self.cluster_sh("start-apiserver").await;
    }

    /// Runs `e2e/cluster.sh <command>` for this control plane off the test's runtime (the
    /// test's tasks, fake agents included, keep running); panics with its output unless
    /// it succeeds.
    async fn cluster_sh(&self, command: &'static str) -> Output {
        let mut cluster = Command::new(format!("{REPO}/e2e/cluster.sh"));
        cluster
            .arg(command)
            .env("E2E_STATE", &self.state)
            .env("E2E_PORT_BASE", self.port_base.to_string())
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || cluster.output())
            .await
            .expect("cluster.sh runs")
            .expect("cluster.sh starts");
        assert!(
            output.status.success(),
            "e2e/cluster.sh {command} (E2E_STATE={}, E2E_PORT_BASE={}) failed: {}",
            self.state.display(),
            self.port_base,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        // Its webhook first, while the API server still answers its watches.
        self.world.webhook.take();
        let stopped = Command::new(format!("{REPO}/e2e/cluster.sh"))
            .arg("down")
            .env("E2E_STATE", &self.state)
            .env("E2E_PORT_BASE", self.port_base.to_string())
            .stdin(Stdio::null())
            .output();
        if !stopped.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "cannot stop the private control plane in {}: {stopped:?}",
                self.state.display()
            );
        }
        PORT_BASES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|base| *base != self.port_base);
    }
}

/// A port base whose three ports are free on loopback and that no other private control
/// plane of this process holds: `preferred`, or the first free one 10, 20, ... below.
fn free_port_base(preferred: u16) -> u16 {
    let mut held = PORT_BASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let base = (0..100)
        .map(|step| preferred - 10 * step)
        .find(|base| {
            !held.iter().any(|h| h.abs_diff(*base) < 3)
                && (*base..*base + 3)
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .unwrap_or_else(|| panic!("no free port base at or below {preferred}"));
    held.push(base);
    base
}
