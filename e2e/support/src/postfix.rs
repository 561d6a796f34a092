//! A real Postfix, from Debian's package, as a private instance on a loopback port with a
//! Maildir store (e2e/postfix-instance.sh), and the example Postfix workload with its agent.

use crate::{
    fakes::FakeKubelet,
    mta::{
        AgentProcess, ScopedMta, Smtp, instance_script, maildir_count, mta_with_agent_rbac, run,
    },
    world::{Scene, free_port},
};
use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::Command};

/// The transport of the instance's mailbox store.
pub const MAILBOX_TRANSPORT: &str = "virtual";

pub struct PostfixInstance {
    name: String,
    pub conf: PathBuf,
    pub smtp: Smtp,
    /// Where its recipient restrictions ask the agent's policy service.
    pub policy: SocketAddr,
}

const INSTANCE_SCRIPT: &str = "postfix-instance.sh";

impl PostfixInstance {
    /// Starts a private instance (see e2e/postfix-instance.sh) on a free loopback port,
    /// asking a policy service on another.
    pub fn start(name: &str) -> Self {
        let port = free_port();
        let policy_port = free_port();
        let conf = run(instance_script(INSTANCE_SCRIPT).args([
            "start",
            name,
            &port.to_string(),
            &policy_port.to_string(),
        ]));
        Self {
            name: name.into(),
            conf: PathBuf::from(conf.trim()),
            smtp: Smtp {
                address: ([127, 0, 0, 1], port).into(),
                recipient: "user@e2e.test",
            },
            policy: SocketAddr::from(([127, 0, 0, 1], policy_port)),
        }
    }

    pub fn postconf(&self) -> Command {
        let mut command = Command::new("postconf");
        command.arg("-c").arg(&self.conf);
        command
    }

    /// `postconf -n` and `postconf -M`: main.cf's settings and master.cf's services.
    pub fn configuration(&self) -> String {
        run(self.postconf().arg("-n")) + &run(self.postconf().arg("-M"))
    }

    /// Its `queue_directory` (e2e/postfix-instance.sh).
    pub fn queue_directory(&self) -> PathBuf {
        self.conf.parent().unwrap().join("queue")
    }

    /// The instance's Maildir store.
    pub fn mailbox(&self) -> PathBuf {
        self.conf.parent().unwrap().join("mailboxes/user")
    }

    /// `postqueue -j`: one JSON line per queued message.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        run(Command::new("postqueue")
            .arg("-c")
            .arg(&self.conf)
            .arg("-j"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }

    /// The agent's command-line arguments for this instance.
    pub fn agent_args(&self) -> Vec<OsString> {
        vec![
            "--postfix-config".into(),
            self.conf.clone().into(),
            "--mailbox-transport".into(),
            MAILBOX_TRANSPORT.into(),
            "--postfix-policy-listen".into(),
            self.policy.to_string().into(),
        ]
    }
}

impl ScopedMta for PostfixInstance {
    fn label(&self) -> &'static str {
        "Postfix"
    }

    fn address(&self) -> SocketAddr {
        self.smtp.address
    }

    fn domain(&self) -> &'static str {
        "e2e.test"
    }

    /// e2e/postfix-instance.sh delivers each scoped domain to mailboxes/DOMAIN/.
    fn store(&self, domain: &str) -> PathBuf {
        self.conf.parent().unwrap().join("mailboxes").join(domain)
    }

    fn delivered(&self, domain: &str) -> usize {
        if domain == self.domain() {
            maildir_count(&self.mailbox())
        } else {
            maildir_count(&self.store(domain))
        }
    }

    fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Bounces to sender@example.net cannot leave (no DNS here): they wait in the queue.
    fn bounced(&self) -> usize {
        self.queue()
            .iter()
            .filter(|m| m["sender"] == "MAILER-DAEMON")
            .count()
    }

    fn run_queue(&self) {
        run(Command::new("postqueue")
            .arg("-c")
            .arg(&self.conf)
            .arg("-f"));
    }

    fn configuration(&self) -> String {
        PostfixInstance::configuration(self)
    }

    /// The agent changes nothing in normal service: main.cf and master.cf as they are.
    fn baseline(&self) -> String {
        PostfixInstance::configuration(self)
    }

    fn agent_args(&self) -> Vec<OsString> {
        PostfixInstance::agent_args(self)
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        let _ = instance_script(INSTANCE_SCRIPT)
            .args(["stop", &self.name])
            .output();
    }
}

/// The example Postfix workload in a scene's namespace (with a kubelet stand-in), a real
/// instance named `PREFIX-<namespace>`, and its agent: what a test of a whole switch, from
/// the API to the wire, starts from. Stopped when dropped, the agent first.
pub struct PostfixWithAgent {
    _agent: AgentProcess,
    pub postfix: PostfixInstance,
    _kubelet: FakeKubelet,
}

impl PostfixWithAgent {
    pub async fn start(scene: &Scene, prefix: &str) -> Self {
        let namespace = &scene.ns.name;
        let (kubelet, pod) = mta_with_agent_rbac(scene.world, &scene.client, namespace).await;
        let postfix = PostfixInstance::start(&format!("{prefix}-{namespace}"));
        let agent = AgentProcess::start(scene.world, namespace, &pod, &postfix.agent_args()).await;
        Self {
            _agent: agent,
            postfix,
            _kubelet: kubelet,
        }
    }
}
