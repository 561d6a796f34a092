//! The real-node world: the cluster, the node's addresses, the operator installed from
//! `deploy/` through the `e2e/real-node` overlay, and what the host can see of pods (their
//! IPs, their containers' processes and logs, their hostPath volumes).

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use mail_incident_e2e_support::{support::last_lines, world::World};
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

pub const OPERATOR_NAMESPACE: &str = "mail-incident-operator";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=mail-incident-operator";
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long a pod may take to start here (image already on the node).
pub const POD_START: Duration = Duration::from_secs(90);

pub struct Node {
    pub world: World,
    /// Where the tests' hostPath volumes live (under the world's state directory).
    pub volumes: PathBuf,
}

static NODE: OnceLock<Node> = OnceLock::new();

impl Node {
    /// The shared node world; the first call installs the operator.
    pub fn get() -> &'static Node {
        NODE.get_or_init(|| {
            let var = |name: &str| {
                std::env::var(name).unwrap_or_else(|_| {
                    panic!(
                        "{name} is not set: run these tests with `make e2e-node` \
                         (e2e/run-node-tests.sh starts a control plane with a real node)"
                    )
                })
            };
            // The operator's pods serve the admission webhook here, by Service.
            let world = World {
                kubeconfig: var("E2E_KUBECONFIG").into(),
                kubectl: var("E2E_KUBECTL").into(),
                webhook: None,
            };
            let node = Node {
                world,
                volumes: PathBuf::from(var("E2E_STATE")).join("volumes"),
            };
            std::fs::create_dir_all(&node.volumes).expect("volumes directory");
            node.install_operator(&var("E2E_NODE_API_HOST"), &var("E2E_NODE_API_PORT"));
            node
        })
    }

    /// `kubectl apply -k e2e/real-node` with the API server's address on the node filled in.
    fn install_operator(&self, api_host: &str, api_port: &str) {
        let rendered = self
            .world
            .kubectl_ok(&["kustomize", &format!("{REPO}/e2e/real-node")])
            .replace("@API_HOST@", api_host)
            .replace("@API_PORT@", api_port);
        self.apply_manifests(&rendered, "installing the operator");
        self.world.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/mailincidents.mailops.dev",
        ]);
    }

    /// `kubectl apply` of rendered manifests that include our CRD; panics naming `what`.
    pub fn apply_manifests(&self, manifests: &str, what: &str) {
        // kubectl 1.20 validates client-side against a schema that predates
        // x-kubernetes-validations; the server is the judge.
        let output = self
            .world
            .kubectl(&["apply", "--validate=false", "-f", "-"], Some(manifests));
        assert!(
            output.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn client(&self) -> Client {
        self.world.admin().await
    }

    /// A hostPath directory of the test's own, emptied, open to every user of the pods.
    pub fn volume(&self, name: &str) -> PathBuf {
        let path = self.volumes.join(name);
        std::fs::remove_dir_all(&path).ok();
        std::fs::create_dir_all(&path).expect("hostPath directory");
        set_mode(&path, 0o777);
        path
    }
}

/// A Deployment `mx` (labelled app=mx, annotated as a Postfix) of `replicas` pause
/// containers: a target with no MTA, for tests of what the operator writes.
pub fn pause_target(replicas: u32) -> String {
    format!(
        "
apiVersion: apps/v1
kind: Deployment
metadata: {{name: mx, labels: {{app: mx}}, annotations: {{mailops.dev/mta: Postfix}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: mx}}}}
  template:
    metadata: {{labels: {{app: mx}}}}
    spec:
      containers:
      - {{name: pause, image: k8s.gcr.io/pause:3.2, imagePullPolicy: Never}}
"
    )
}

/// The files under `directory`, at any depth, for which `counts` holds (a queue's
/// messages, a log's entries); 0 for a directory that does not exist (yet).
pub fn count_files(
    directory: &std::path::Path,
    counts: &dyn Fn(&std::path::Path) -> bool,
) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => count_files(&e.path(), counts),
                _ => usize::from(counts(&e.path())),
            })
            .sum()
    })
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The operator's pods, once `count` of them run with every container ready; their names.
pub async fn operator_pods_ready(client: &Client, count: usize) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    pods_ready(&pods, OPERATOR_SELECTOR, count).await
}

/// The pods `selector` matches, once exactly `count` of them run, none terminating, all
/// ready (the kubelet's own probes said so); their names. Panics with their states after
/// [`POD_START`].
pub async fn pods_ready(pods: &Api<Pod>, selector: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + POD_START;
    loop {
        let listed = pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect("pods list");
        let ready: Vec<String> = listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .map(|p| p.name_any())
            .collect();
        if ready.len() == count && listed.items.len() == count {
            return ready;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = listed
                .items
                .iter()
                .map(|p| format!("{}: {:?}\n{}", p.name_any(), p.status, pod_logs(p)))
                .collect();
            panic!("{count} ready pods for {selector} not within {POD_START:?}: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP on the node's bridge.
pub async fn pod_ip(pods: &Api<Pod>, name: &str) -> IpAddr {
    let pod = pods.get(name).await.expect("pod");
    pod.status
        .and_then(|s| s.pod_ip)
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("pod {name} has no IP"))
}

pub fn smtp_address(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 25)
}

/// The holder of the operator's leader Lease, if any.
pub async fn leader(client: &Client) -> Option<String> {
    lease_holder(client, OPERATOR_NAMESPACE, "mail-incident-operator").await
}

/// The holder of the Lease `name` in `namespace`, if any.
pub async fn lease_holder(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    leases
        .get_opt(name)
        .await
        .expect("lease get")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// The host's pid of a process of the pod's containers, found by the pod name the kubelet
/// mounts as every container's /etc/hostname (an MTA may clear its environment), the
/// pod's uid in the paths of the volumes the kubelet mounts into it (a StatefulSet's pod
/// has the same name in every test's namespace, and one still terminating has processes),
/// and a word its command line ends with.
pub fn container_pid(pod: &Pod, command_word: &str) -> Option<u32> {
    let name = pod.name_any();
    let uid = pod.uid()?;
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let hostname = std::fs::read_to_string(format!("/proc/{pid}/root/etc/hostname")).ok()?;
        let matches = hostname.trim() == name
            && cmdline
                .split(|b| *b == 0)
                .any(|w| w.ends_with(command_word.as_bytes()))
            && std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .is_ok_and(|mounts| mounts.contains(&format!("/pods/{uid}/")));
        matches.then_some(pid)
    })
}

/// The last lines each container of the pod logged, as the kubelet keeps them
/// (`kubectl logs` needs a routable node), for a failure's message.
pub fn pod_logs(pod: &Pod) -> String {
    let dir = PathBuf::from(format!(
        "/var/log/pods/{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|container| {
            std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|log| log.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            format!("--- {}\n{}\n", file.display(), last_lines(&text, 20))
        })
        .collect()
}
