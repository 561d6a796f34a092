//! The real test world: a Kubernetes API server (`E2E_KUBECONFIG`, started by
//! `e2e/run-tests.sh` when not given), `kubectl`, `deploy/` installed with kustomize, and
//! the operator binary run as the ServiceAccount `deploy/` creates.

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
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub const OPERATOR_NAMESPACE: &str = "mail-incident-operator";
pub const OPERATOR_ACCOUNT: &str = "mail-incident-operator";
const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub struct World {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

static WORLD: OnceLock<World> = OnceLock::new();

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
            let kubectl = std::env::var_os("E2E_KUBECTL")
                .map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
            let world = World {
                kubeconfig,
                kubectl,
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
            world
        })
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
}

impl TestNamespace {
    pub fn new(world: &World, prefix: &str) -> Self {
        let suffix: u32 = rand_suffix();
        let name = format!("e2e-{prefix}-{suffix:06x}");
        world.kubectl_ok(&["create", "namespace", &name]);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        World::get().kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

fn rand_suffix() -> u32 {
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
/// namespace. Killed when dropped; its log is printed if the test failed.
pub struct Operator {
    child: Child,
    dir: tempfile::TempDir,
    pub http: String,
    /// Its name in the leader Lease.
    pub identity: String,
}

impl Operator {
    pub async fn start(world: &World, namespace: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("operator.kubeconfig");
        let config = service_account_kubeconfig(world, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
        std::fs::write(&kubeconfig, config).expect("kubeconfig written");
        let port = free_port();
        let identity = format!("operator-{port}");
        let log = std::fs::File::create(dir.path().join("operator.log")).expect("log file");
        // Replicas for one namespace share its Lease; a short lease keeps failover quick.
        let child = Command::new(env!("CARGO_BIN_EXE_mail-incident-operator"))
            .args(["run", "--namespace", namespace, "--lease-seconds", "4"])
            .args([
                "--lease-name",
                &lease_name(namespace),
                "--instance",
                &identity,
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,mail_incident_operator=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("operator binary starts");
        let operator = Self {
            child,
            dir,
            http: format!("http://127.0.0.1:{port}"),
            identity,
        };
        operator.wait_ready().await;
        operator
    }

    async fn wait_ready(&self) {
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
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if std::thread::panicking() {
            eprintln!("--- operator log\n{}", self.log());
        }
    }
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
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
