//! A real Exim, from Debian's exim4-daemon-light, as a private daemon on a loopback port
//! with a Maildir store (e2e/exim-instance.sh, e2e/exim.conf).

use crate::{
    mta::{ScopedMta, Smtp, instance_script, maildir_count, run},
    world::free_port,
};
use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::Command};

pub struct EximInstance {
    name: String,
    pub root: PathBuf,
    pub smtp: Smtp,
}

const INSTANCE_SCRIPT: &str = "exim-instance.sh";
/// The copy of Exim's binary the instances run (see e2e/exim-instance.sh).
const EXIM: &str = "/tmp/mail-incident-operator-exim/.bin/exim4";

impl EximInstance {
    pub fn start(name: &str) -> Self {
        let port = free_port();
        let root = run(instance_script(INSTANCE_SCRIPT).args(["start", name, &port.to_string()]));
        Self {
            name: name.into(),
            root: PathBuf::from(root.trim()),
            smtp: Smtp {
                address: ([127, 0, 0, 1], port).into(),
                recipient: "user@local.test",
            },
        }
    }

    pub fn exim(&self) -> Command {
        let mut command = Command::new(EXIM);
        command.arg("-C").arg(self.root.join("exim.conf"));
        command
    }

    /// Messages in the queue (`exim -bpc`).
    pub fn queued(&self) -> usize {
        run(self.exim().arg("-bpc")).trim().parse().unwrap()
    }

    pub fn delivered(&self) -> usize {
        maildir_count(&self.root.join("Maildir"))
    }

    pub fn bounced(&self) -> usize {
        maildir_count(&self.root.join("Bounces"))
    }

    pub fn agent_args(&self) -> Vec<OsString> {
        let path = |p: &str| OsString::from(self.root.join(p));
        vec![
            "--mta".into(),
            "exim".into(),
            "--exim-binary".into(),
            EXIM.into(),
            "--exim-config".into(),
            path("exim.conf"),
            "--exim-mode-file".into(),
            path("mail-incident/mode"),
            "--exim-retry-file".into(),
            path("mail-incident/retry.conf"),
            "--exim-release-file".into(),
            path("mail-incident/release"),
            "--exim-spool-dir".into(),
            path("spool"),
            "--exim-pid-file".into(),
            path("exim.pid"),
        ]
    }
}

impl ScopedMta for EximInstance {
    fn label(&self) -> &'static str {
        "Exim"
    }

    fn address(&self) -> SocketAddr {
        self.smtp.address
    }

    fn domain(&self) -> &'static str {
        "local.test"
    }

    /// e2e/exim-instance.sh delivers each scoped domain to domains/DOMAIN/Maildir.
    fn store(&self, domain: &str) -> PathBuf {
        self.root.join("domains").join(domain)
    }

    fn delivered(&self, domain: &str) -> usize {
        if domain == self.domain() {
            EximInstance::delivered(self)
        } else {
            maildir_count(&self.store(domain).join("Maildir"))
        }
    }

    fn queued(&self) -> usize {
        EximInstance::queued(self)
    }

    fn bounced(&self) -> usize {
        EximInstance::bounced(self)
    }

    fn run_queue(&self) {
        run(self.exim().arg("-qff"));
    }

    /// The mode, retry and release files and the site's exim.conf (never edited).
    fn configuration(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.root.join(file)).ok();
        format!(
            "mode: {:?}\nretry: {:?}\nrelease: {:?}\n{}",
            read("mail-incident/mode"),
            read("mail-incident/retry.conf"),
            read("mail-incident/release"),
            read("exim.conf").unwrap_or_default()
        )
    }

    /// `normal`, no retry file (the site's own retry rules), no release file, exim.conf as
    /// the site wrote it.
    fn baseline(&self) -> String {
        format!(
            "mode: {:?}\nretry: None\nrelease: None\n{}",
            Some("normal\n"),
            std::fs::read_to_string(self.root.join("exim.conf")).unwrap()
        )
    }

    fn agent_args(&self) -> Vec<OsString> {
        EximInstance::agent_args(self)
    }
}

impl Drop for EximInstance {
    fn drop(&mut self) {
        let _ = instance_script(INSTANCE_SCRIPT)
            .args(["stop", &self.name])
            .output();
    }
}
