//! Exim rendering. Exim's configuration is one file the site owns, so the agent does not
//! edit it: the site's configuration reads two small files the agent writes (the
//! stanzas to add are marked "mail-incident" in `examples/images/exim/exim4.conf`):
//!
//! - the **mode file**, an `nwildlsearch` lookup file: one line per recipient domain
//!   pattern of the document's rules, in their order of precedence, `KEY: MODE REPLY`
//!   (`pec.example.it: tempfail 452 4.3.1 text`; `*.example.it` for subdomains, `*` for a
//!   rule without a scope). Exim takes the first line whose key matches, so a recipient
//!   gets the first rule covering its domain, as the document says. MODE is `queue`,
//!   `tempfail` or `reject`; the reply is the incident's full SMTP reply, taken exactly
//!   as written, with no quoting for any character to break (a reply is printable ASCII,
//!   so never holds a line break, and keys never need quotes). In normal service the
//!   file is the one word `normal`: a key with no data, which holds and refuses nothing.
//!   The RCPT ACL looks the recipient's `$domain` up and answers `defer` or `deny` with
//!   the reply for `tempfail` and `reject`; a router defers delivery for every domain
//!   found, whatever the mode, so held mail stays queued while other domains' mail is
//!   delivered.
//!
//!   The file is replaced whole (a rename), so that no reader ever sees half of it.
//!   Exim keeps a looked-up file open, and caches results, until the message being
//!   received ends: the site's lookup says `cache=no_rd` so that each lookup reads the
//!   file again, but an SMTP session in the middle of a message still reads the file it
//!   opened, and gets the new rules from its next message on (a new session at once).
//! - the **retry file**, `.include`d at the top of the configuration, sets the macro
//!   `MAIL_INCIDENT_LIFETIME` used as the final time of the retry rule for local
//!   deliveries, so held mail does not bounce before the incident's queue lifetime. Retry
//!   rules are read when Exim starts, so a change of lifetime needs a reload: SIGHUP to
//!   the daemon, which re-executes itself with the new configuration (listening sockets
//!   and queued mail are untouched). The configuration is checked first (`exim -bV`),
//!   because a daemon whose re-execution fails is gone. Exim's retry rules name no
//!   recipient domain here: the lifetime is every local delivery's while an incident lasts.
//!
//! - the **release file**, present only while releasing: an `nwildlsearch` file of the
//!   held domains' patterns (`*` when every domain was held), which the site's
//!   `hold_domains` reads. Exim holds those domains' mail in every delivery but a forced
//!   one, so the release's queue runners are the only deliveries of held mail: the
//!   daemon's own queue runs, and the immediate delivery of new mail, would go beyond the
//!   release's concurrency.
//!
//! Releasing writes the release file, then `normal` with the incident's lifetime still
//! in the retry file, then starts as many queue runners (`exim -qff`, forced, which
//! `hold_domains` does not stop) as the release concurrency: each delivers one message
//! at a time. The agent starts another pass when they have all ended with held mail left
//! (see [`Held::release_pass`]): a runner passes over a message another process has
//! locked, and mail for held domains that arrives during the release waits for it. When scoped rules change during an incident (one of two ends),
//! the same runners deliver the mail of the domains no longer held at once rather than at
//! its next retry; what is still held the router defers again. Exim times retries and
//! expiry from the first failure of each address, which the release does not reset.

use super::{
    Difference, DriftKind, Mta,
    command::{at_low_priority, hang_up, main_process, run_command},
    differs,
    error::AgentError,
    files,
    state::Held,
};
use crate::api::{
    Mode,
    mode_document::{ModeDocument, QueueFigures},
    scope::DomainPattern,
};
use std::collections::BTreeSet;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tracing::warn;

/// The macro the retry file defines.
pub const LIFETIME_MACRO: &str = "MAIL_INCIDENT_LIFETIME";

/// Command-line settings for Exim.
#[derive(Clone, Debug, clap::Args)]
pub struct EximSettings {
    /// Exim: the binary.
    #[arg(long, env = "EXIM_BINARY", default_value = "exim4")]
    pub exim_binary: PathBuf,

    /// Exim: the configuration file, if not the binary's compiled-in one (passed as -C).
    #[arg(long, env = "EXIM_CONFIG")]
    pub exim_config: Option<PathBuf>,

    /// Exim: the mode file the configuration reads.
    #[arg(
        long,
        env = "EXIM_MODE_FILE",
        default_value = "/etc/exim4/mail-incident/mode"
    )]
    pub exim_mode_file: PathBuf,

    /// Exim: the retry file the configuration includes.
    #[arg(
        long,
        env = "EXIM_RETRY_FILE",
        default_value = "/etc/exim4/mail-incident/retry.conf"
    )]
    pub exim_retry_file: PathBuf,

    /// Exim: the release file the configuration's `hold_domains` reads.
    #[arg(
        long,
        env = "EXIM_RELEASE_FILE",
        default_value = "/etc/exim4/mail-incident/release"
    )]
    pub exim_release_file: PathBuf,

    /// Exim: the spool directory, where the queue is measured.
    #[arg(long, env = "EXIM_SPOOL_DIR", default_value = "/var/spool/exim4")]
    pub exim_spool_dir: PathBuf,

    /// Exim: the daemon's pid file, for the reload signal.
    #[arg(long, env = "EXIM_PID_FILE", default_value = "/run/exim4/exim.pid")]
    pub exim_pid_file: PathBuf,
}

/// The mode file in normal service: a lone key without data, which matches no rule.
pub const NORMAL: &str = "normal\n";

/// The two files' contents for `held`. `None` for the retry file: no incident lifetime,
/// the configuration's own retry rules apply.
pub fn render(held: &Held) -> (String, Option<String>) {
    let lifetime = |lifetime: &str| Some(format!("{LIFETIME_MACRO} = {lifetime}\n"));
    match held {
        Held::Normal => (NORMAL.into(), None),
        Held::Releasing { release } => (NORMAL.into(), lifetime(&release.lifetime)),
        Held::Incident { document } => (rules(document), lifetime(&document.queue.lifetime)),
    }
}

/// The release file for `held` (`None`: absent): while releasing, one line per held
/// domain pattern, or `*` when every recipient's mail was held.
pub fn release_holds(held: &Held) -> Option<String> {
    let Held::Releasing { .. } = held else {
        return None;
    };
    Some(match held.held_scope() {
        None => "*\n".into(),
        Some(patterns) => patterns
            .iter()
            .map(|pattern| format!("{pattern}\n"))
            .collect(),
    })
}

/// The mode file of a document: its rules' lines, in order.
fn rules(document: &ModeDocument) -> String {
    let mut text = String::new();
    for rule in &document.rules {
        let mode = match rule.mode {
            Mode::AcceptAndQueue => "queue",
            Mode::TempFail => "tempfail",
            Mode::HardReject => "reject",
        };
        let reply = &rule.reply;
        let data = format!(
            "{mode} {} {} {}",
            reply.code, reply.enhanced_code, reply.text
        );
        let keys: Vec<String> = match rule.scope() {
            None => vec!["*".into()],
            Some(patterns) => patterns.iter().map(ToString::to_string).collect(),
        };
        for key in keys {
            text.push_str(&format!("{key}: {data}\n"));
        }
    }
    text
}

/// How many queue runners an apply of `held` starts: a release's concurrency, and as
/// many when scoped rules have just changed (`rules_changed`), since domains may have
/// left the hold and their mail should go out now; none otherwise.
pub fn queue_runners(held: &Held, rules_changed: bool) -> u16 {
    match held {
        Held::Releasing { release } => release.concurrency,
        Held::Incident { document } if rules_changed && !document.covers_everyone() => {
            document.release.concurrency
        }
        _ => 0,
    }
}

/// The arrival time (seconds since the epoch) in a spool header file (`<id>-H`): its
/// fourth line starts with it.
pub fn arrival_time(header: &str) -> Option<i64> {
    header
        .lines()
        .nth(3)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The recipients a spool header file (`<id>-H`) has not delivered yet: its recipients
/// less those in its non-recipients tree. `None` for a file that cannot be read so far
/// (being written, or cut short). After the first four lines come `-` option lines,
/// among which an ACL variable (`-aclc NAME LENGTH`, `-aclm ...`) is followed by its
/// value, LENGTH bytes that may hold line breaks; then the tree (`XX` when empty,
/// otherwise one `YN address` line per node), the number of recipients and the
/// recipients, one per line (`address` or, with DSN data, `address orcpt ...#flags`).
pub fn pending_recipients(header: &[u8]) -> Option<Vec<String>> {
    let mut lines = Lines(header);
    for _ in 0..4 {
        lines.next()?;
    }
    let mut line = lines.next()?;
    while line.starts_with(b"-") {
        if line.starts_with(b"-acl") {
            let length: usize = std::str::from_utf8(line)
                .ok()?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            lines.skip_value(length)?;
        }
        line = lines.next()?;
    }
    let mut delivered = BTreeSet::new();
    if line == b"XX" {
        line = lines.next()?;
    } else {
        while let Some(address) = tree_node(line) {
            delivered.insert(String::from_utf8_lossy(address).into_owned());
            line = lines.next()?;
        }
    }
    let count: usize = std::str::from_utf8(line).ok()?.trim().parse().ok()?;
    let mut pending = Vec::new();
    for _ in 0..count {
        let line = String::from_utf8_lossy(lines.next()?).into_owned();
        // With DSN data the address is followed by a space and fields ending `#flags`.
        let address = match line.split_once(' ') {
            Some((address, _)) if line.contains('#') => address.to_string(),
            _ => line,
        };
        if !delivered.contains(&address) {
            pending.push(address);
        }
    }
    Some(pending)
}

/// The address of a non-recipients tree line (`YN address`), if it is one.
fn tree_node(line: &[u8]) -> Option<&[u8]> {
    match line {
        [b'Y' | b'N', b'Y' | b'N', b' ', address @ ..] if !address.is_empty() => Some(address),
        _ => None,
    }
}

/// The lines of a spool header file, each without its line break; a last line without
/// one is cut short and is not a line.
struct Lines<'a>(&'a [u8]);

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == b'\n')?;
        let line = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(line)
    }

    /// Skips a value of `length` bytes and the line break after it.
    fn skip_value(&mut self, length: usize) -> Option<()> {
        self.0 = self.0.get(length..)?.strip_prefix(b"\n")?;
        Some(())
    }
}

/// Queue figures read straight from the spool's `input` directory (also split into
/// subdirectories when `split_spool_directory` is set): one `-H` file per message. Cheaper
/// than `exim -bp` on a huge queue, and exact to the second. With a `scope`, only the
/// messages with a recipient left in a held domain count (see [`Held::counts`]).
pub fn spool_figures(
    spool: &Path,
    now: i64,
    scope: Option<&[DomainPattern]>,
) -> Result<QueueFigures, AgentError> {
    let mut figures = QueueFigures::default();
    // Exim creates `input` with the first message.
    files::for_each_file_under(&spool.join("input"), |path| {
        if !path.to_string_lossy().ends_with("-H") {
            return;
        }
        // A message delivered meanwhile takes its files with it.
        let Ok(header) = std::fs::read(path) else {
            return;
        };
        let held = scope.is_none()
            || pending_recipients(&header)
                .is_some_and(|pending| Held::counts(scope, pending.iter().map(String::as_str)));
        if let Some(arrival) = arrival_time(&String::from_utf8_lossy(&header))
            && held
        {
            figures.add("queue", arrival, now);
        }
    })?;
    Ok(figures)
}

/// An Exim installation, driven through its binary and its daemon's pid file.
pub struct Exim {
    settings: EximSettings,
    /// The queue runners started and not yet ended.
    runners: Arc<AtomicUsize>,
}

impl Exim {
    pub fn new(settings: &EximSettings) -> Self {
        Self {
            settings: settings.clone(),
            runners: Arc::default(),
        }
    }

    fn exim(&self) -> Command {
        let mut command = Command::new(&self.settings.exim_binary);
        if let Some(config) = &self.settings.exim_config {
            command.arg("-C").arg(config);
        }
        command
    }

    /// SIGHUP to the daemon, once its new configuration has been checked.
    fn reload(&self) -> Result<(), AgentError> {
        run_command(self.exim().arg("-bV").stdout(Stdio::null()))?;
        let pid_file = &self.settings.exim_pid_file;
        hang_up(main_process(pid_file)?, pid_file)
    }

    /// Where the agent notes the retry file the daemon last re-read (absent: none): a
    /// reload that failed, or was cut short by a crash, is made again at the next apply.
    fn reloaded_marker(&self) -> PathBuf {
        let mut name = self.settings.exim_retry_file.as_os_str().to_owned();
        name.push(".reloaded");
        PathBuf::from(name)
    }
}

impl Mta for Exim {
    fn apply(&self, held: &Held) -> Result<(), AgentError> {
        let (mode, retry) = render(held);
        let retry_file = &self.settings.exim_retry_file;
        // A retry file another hand changed may have been loaded by a reload of theirs:
        // the daemon re-reads the agent's again.
        let changed_by_hand = files::read_if_exists(retry_file)? != retry;
        match &retry {
            Some(text) => files::write_durably(retry_file, text)?,
            None => files::remove_durably(retry_file)?,
        }
        // The mode file is read at each use: written after the lifetime is in force, so
        // that no message is held under the old, shorter lifetime.
        let marker = self.reloaded_marker();
        if changed_by_hand || retry != files::read_if_exists(&marker)? {
            self.reload()?;
            match &retry {
                Some(text) => files::write_durably(&marker, text)?,
                None => files::remove_durably(&marker)?,
            }
        }
        // Written before the mode file lets the held domains go, removed after it holds
        // them again or ends the release: no delivery but the release's own takes their
        // mail in between.
        let release_file = &self.settings.exim_release_file;
        let release = release_holds(held);
        if let Some(text) = &release {
            files::write_durably(release_file, text)?;
        }
        let mode_file = &self.settings.exim_mode_file;
        let rules_changed = files::read_if_exists(mode_file)?.as_deref() != Some(mode.as_str());
        files::write_durably(mode_file, &mode)?;
        if release.is_none() {
            files::remove_durably(release_file)?;
        }
        for _ in 0..queue_runners(held, rules_changed) {
            // Queue runners work on their own and exit when the queue is done; a thread
            // waits for each, so that none is left a zombie, and counts it out.
            let mut command = self.exim();
            command
                .arg("-qff")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let runner = command.spawn().map_err(|source| AgentError::CannotRun {
                command: format!("{command:?}"),
                source,
            })?;
            let runners = self.runners.clone();
            runners.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                match runner.wait_with_output() {
                    Ok(ended) if !ended.status.success() => warn!(
                        status = %ended.status,
                        stderr = %String::from_utf8_lossy(&ended.stderr).trim(),
                        "an Exim queue runner failed"
                    ),
                    Ok(_) => {}
                    Err(error) => warn!(%error, "cannot wait for an Exim queue runner"),
                }
                runners.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    }

    /// Whether a queue runner the agent started still runs.
    fn delivering(&self) -> Option<bool> {
        Some(self.runners.load(Ordering::SeqCst) > 0)
    }

    fn queue(&self, held: &Held) -> Result<Option<QueueFigures>, AgentError> {
        let scope = held.held_scope();
        at_low_priority(|| {
            spool_figures(
                &self.settings.exim_spool_dir,
                k8s_openapi::jiff::Timestamp::now().as_second(),
                scope.as_deref(),
            )
        })
        .map(Some)
    }

    /// The three files as they are now. A deleted or rewritten mode file is what Exim's ACL
    /// reads at the next RCPT; a changed retry file is what its next reload would take; a
    /// changed release file paces the release wrong, or holds mail in normal service.
    fn drift(&self, held: &Held) -> Result<Vec<Difference>, AgentError> {
        Ok(file_differences(
            held,
            files::read_if_exists(&self.settings.exim_mode_file)?.as_deref(),
            files::read_if_exists(&self.settings.exim_retry_file)?.as_deref(),
            files::read_if_exists(&self.settings.exim_release_file)?.as_deref(),
        ))
    }
}

/// Where the mode, retry and release files read back (`None`: absent) differ from what
/// [`render`] and [`release_holds`] make for `held`.
fn file_differences(
    held: &Held,
    mode: Option<&str>,
    retry: Option<&str>,
    release: Option<&str>,
) -> Vec<Difference> {
    let (want_mode, want_retry) = render(held);
    let mut differences = Vec::new();
    if mode != Some(want_mode.as_str()) {
        differences.push(Difference {
            kind: DriftKind::Answer,
            what: differs("Exim mode file", mode, Some(&want_mode)),
        });
    }
    if retry != want_retry.as_deref() {
        differences.push(Difference {
            kind: DriftKind::Queue,
            what: differs("Exim retry file", retry, want_retry.as_deref()),
        });
    }
    let want_release = release_holds(held);
    if release != want_release.as_deref() {
        differences.push(Difference {
            kind: DriftKind::Queue,
            what: differs("Exim release file", release, want_release.as_deref()),
        });
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{
        error::FileAction,
        fixtures::{document, held, rules},
    };

    /// An Exim in a directory: `true` accepts any configuration check, and the daemon is a
    /// shell that counts the SIGHUPs it gets.
    fn exim_in(directory: &Path) -> Exim {
        Exim::new(&EximSettings {
            exim_binary: "true".into(),
            exim_config: None,
            exim_mode_file: directory.join("mode"),
            exim_retry_file: directory.join("retry.conf"),
            exim_release_file: directory.join("release"),
            exim_spool_dir: directory.join("spool"),
            exim_pid_file: directory.join("exim.pid"),
        })
    }

    #[test]
    fn a_reload_that_failed_is_made_at_the_next_apply_and_only_a_change_reloads() {
        let directory = tempfile::tempdir().unwrap();
        let exim = exim_in(directory.path());
        let holding = held(&document(Mode::AcceptAndQueue, 452, "4.3.1"));
        // No daemon (no pid file): the lifetime is written, the reload fails.
        let pid_file = directory.path().join("exim.pid");
        assert!(matches!(
            exim.apply(&holding),
            Err(AgentError::File { action: FileAction::Read, path, .. }) if path == pid_file
        ));
        assert!(directory.path().join("retry.conf").exists());

        let hangups = directory.path().join("hangups");
        let trapping = directory.path().join("trapping");
        // A shell cannot trap a signal ignored when it started (as under `nohup`), so the
        // fake daemon starts with SIGHUP's default action whatever the test inherited.
        let daemon = Command::new("env")
            .args(["--default-signal=HUP", "sh", "-c"])
            .arg(format!(
                "trap 'echo >> {}' HUP; : > {}; while :; do sleep 0.05; done",
                hangups.display(),
                trapping.display()
            ))
            .spawn()
            .unwrap();
        let daemon = KilledWhenDropped(daemon);
        std::fs::write(
            directory.path().join("exim.pid"),
            format!("{}\n", daemon.0.id()),
        )
        .unwrap();
        // Polled rather than slept for: on a loaded machine the shell may take long to
        // start, and a hangup before its trap is set would end it.
        let within_10_s = |done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        within_10_s(&|| trapping.exists());
        let count = || std::fs::read_to_string(&hangups).map_or(0, |t| t.lines().count());
        let count_once_at = |least: usize| {
            within_10_s(&|| count() >= least);
            count()
        };
        // The same apply again: the retry file is already there, yet the daemon is reloaded.
        exim.apply(&holding).unwrap();
        assert_eq!(count_once_at(1), 1);
        // Nothing changed: no reload (given the time to show, a wrong one would be counted
        // here rather than merged with the next into one pending signal).
        exim.apply(&holding).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(count(), 1);
        // Normal service drops the lifetime: a reload.
        exim.apply(&Held::Normal).unwrap();
        assert_eq!(count_once_at(2), 2);
        assert!(!directory.path().join("retry.conf").exists());
        // A retry file written by another hand (and maybe loaded by a reload of theirs)
        // is put back and reloaded, though the agent's marker says it is loaded.
        std::fs::write(
            directory.path().join("retry.conf"),
            "MAIL_INCIDENT_LIFETIME = 1h\n",
        )
        .unwrap();
        exim.apply(&Held::Normal).unwrap();
        assert_eq!(count_once_at(3), 3);
        assert!(!directory.path().join("retry.conf").exists());
        // A pid file that names no single process is refused, never sent a signal.
        for pid in ["-1", "0", "x"] {
            std::fs::write(directory.path().join("exim.pid"), pid).unwrap();
            assert!(
                matches!(exim.apply(&holding), Err(AgentError::NotAProcessId { .. })),
                "{pid}"
            );
        }
    }

    /// A child process killed and reaped when dropped, so a failed assertion leaves none.
    struct KilledWhenDropped(std::process::Child);

    impl Drop for KilledWhenDropped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn each_mode_sets_the_acl_switch_reply_and_lifetime() {
        let (mode, retry) = render(&held(&document(Mode::TempFail, 452, "4.3.1")));
        assert_eq!(
            mode,
            "*: tempfail 452 4.3.1 Mailbox storage temporarily unavailable, try again later\n"
        );
        assert_eq!(retry.as_deref(), Some("MAIL_INCIDENT_LIFETIME = 30d\n"));
        let (mode, _) = render(&held(&document(Mode::HardReject, 550, "5.3.2")));
        assert!(mode.starts_with("*: reject 550 5.3.2 "), "{mode}");
        let (mode, _) = render(&held(&document(Mode::AcceptAndQueue, 452, "4.3.1")));
        assert!(mode.starts_with("*: queue 452 4.3.1 "), "{mode}");
    }

    #[test]
    fn a_deleted_or_rewritten_mode_file_and_a_changed_retry_file_are_drift() {
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        let (mode, retry) = render(&temp_fail);
        assert_eq!(
            file_differences(&temp_fail, Some(&mode), retry.as_deref(), None),
            []
        );
        let deleted = file_differences(&temp_fail, None, retry.as_deref(), None);
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].kind, DriftKind::Answer);
        assert!(
            deleted[0]
                .what
                .starts_with("Exim mode file = (absent), want \"*: tempfail 452 4.3.1 "),
            "{deleted:?}"
        );
        let rewritten = file_differences(&temp_fail, Some("normal\n"), retry.as_deref(), None);
        assert!(
            rewritten[0]
                .what
                .starts_with("Exim mode file = \"normal\\n\", want "),
            "{rewritten:?}"
        );
        let retry_gone = file_differences(&temp_fail, Some(&mode), None, None);
        assert_eq!(retry_gone.len(), 1);
        assert_eq!(retry_gone[0].kind, DriftKind::Queue);
        // Normal service: the mode file says normal and no retry file is left.
        assert_eq!(
            file_differences(&Held::Normal, Some("normal\n"), None, None),
            []
        );
        assert_eq!(
            file_differences(&Held::Normal, Some("normal\n"), retry.as_deref(), None).len(),
            1
        );
    }

    #[test]
    fn a_release_keeps_the_lifetime_and_normal_service_drops_it() {
        let releasing = held(&document(Mode::AcceptAndQueue, 452, "4.3.1")).next(None, 10);
        assert_eq!(
            render(&releasing),
            (
                "normal\n".to_string(),
                Some("MAIL_INCIDENT_LIFETIME = 30d\n".to_string())
            )
        );
        assert_eq!(render(&Held::Normal), ("normal\n".to_string(), None));
    }

    #[test]
    fn a_release_holds_what_was_held_from_all_but_its_own_runners() {
        let everyone = held(&document(Mode::AcceptAndQueue, 452, "4.3.1"));
        assert_eq!(release_holds(&everyone), None, "the router holds it");
        assert_eq!(
            release_holds(&everyone.next(None, 10)).as_deref(),
            Some("*\n")
        );
        let scoped = held(&rules(&[
            (Mode::TempFail, 452, "4.3.1", &["pec.local.test"]),
            (
                Mode::AcceptAndQueue,
                452,
                "4.3.1",
                &["*.storage.local.test"],
            ),
        ]));
        let releasing = scoped.next(None, 10);
        let release = release_holds(&releasing);
        assert_eq!(
            release.as_deref(),
            Some("pec.local.test\n*.storage.local.test\n")
        );
        assert_eq!(release_holds(&Held::Normal), None);

        // Deleted, the daemon delivers held mail beyond the concurrency; forged, it
        // holds mail in normal service: both are drift.
        let (mode, retry) = render(&releasing);
        let same = |release: Option<&str>| {
            file_differences(&releasing, Some(&mode), retry.as_deref(), release)
        };
        assert_eq!(same(release.as_deref()), []);
        let deleted = same(None);
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].kind, DriftKind::Queue);
        assert!(
            deleted[0]
                .what
                .starts_with("Exim release file = (absent), want \"pec.local.test\\n"),
            "{deleted:?}"
        );
        let forged = file_differences(&Held::Normal, Some("normal\n"), None, Some("*\n"));
        assert_eq!(forged.len(), 1);
        assert_eq!(forged[0].kind, DriftKind::Queue);
    }

    #[test]
    fn the_release_file_is_there_from_before_the_release_to_its_end() {
        let directory = tempfile::tempdir().unwrap();
        let exim = exim_in(directory.path());
        let release = directory.path().join("release");
        let releasing = held(&document(Mode::AcceptAndQueue, 452, "4.3.1")).next(None, 10);
        // The retry file is written already, as after the incident's apply: no reload.
        let (_, retry) = render(&releasing);
        std::fs::write(
            directory.path().join("retry.conf"),
            retry.as_deref().unwrap(),
        )
        .unwrap();
        std::fs::write(directory.path().join("retry.conf.reloaded"), retry.unwrap()).unwrap();
        // `true` stands for Exim: its queue runners exit at once.
        exim.apply(&releasing).unwrap();
        assert_eq!(std::fs::read_to_string(&release).unwrap(), "*\n");
        assert_eq!(
            std::fs::read_to_string(directory.path().join("mode")).unwrap(),
            NORMAL
        );
        // A new incident during the release holds through the router again.
        let incident = held(&document(Mode::TempFail, 452, "4.3.1"));
        exim.apply(&incident).unwrap();
        assert!(!release.exists());
        exim.apply(&releasing).unwrap();
        assert!(release.exists());
    }

    #[test]
    fn the_queue_is_read_from_the_spool_headers() {
        let spool = tempfile::tempdir().unwrap();
        let input = spool.path().join("input");
        std::fs::create_dir_all(input.join("A")).unwrap();
        let header = |id: &str, arrival: i64| {
            format!("{id}-H\nDebian-exim 101 101\n<a@example.org>\n{arrival} 0\n-local\n")
        };
        std::fs::write(
            input.join("1tAbCd-000ABC-12-H"),
            header("1tAbCd-000ABC-12", 1000),
        )
        .unwrap();
        std::fs::write(input.join("1tAbCd-000ABC-12-D"), "body").unwrap();
        // split_spool_directory puts messages in one-letter subdirectories.
        std::fs::write(
            input.join("A/1tAbCe-000ABC-34-H"),
            header("1tAbCe-000ABC-34", 4000),
        )
        .unwrap();
        std::fs::write(input.join("A/1tAbCf-000ABC-56-H"), "cut short\n").unwrap();
        let figures = spool_figures(spool.path(), 5000, None).unwrap();
        assert_eq!(figures.messages, 2);
        assert_eq!(figures.oldest_age_seconds, 4000);
        assert_eq!(figures.by_queue.get("queue"), Some(&2));
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(
            spool_figures(fresh.path(), 5000, None).unwrap(),
            QueueFigures::default()
        );
    }

    #[test]
    fn scoped_rules_become_one_line_per_domain_in_order_and_a_rule_for_everyone_a_star() {
        let (mode, retry) = render(&held(&rules(&[
            (Mode::HardReject, 550, "5.3.2", &["a.storage.local.test"]),
            (
                Mode::TempFail,
                452,
                "4.3.1",
                &["*.storage.local.test", "pec.local.test"],
            ),
            (Mode::AcceptAndQueue, 452, "4.3.1", &[]),
        ])));
        let text = "Mailbox storage temporarily unavailable, try again later";
        assert_eq!(
            mode,
            format!(
                "a.storage.local.test: reject 550 5.3.2 {text}\n\
                 *.storage.local.test: tempfail 452 4.3.1 {text}\n\
                 pec.local.test: tempfail 452 4.3.1 {text}\n\
                 *: queue 452 4.3.1 {text}\n"
            )
        );
        assert_eq!(retry.as_deref(), Some("MAIL_INCIDENT_LIFETIME = 30d\n"));
    }

    /// A spool header file as Exim 4.96 wrote it for a message to three recipients, one
    /// delivered, with the ACL variable the site's configuration sets.
    const HEADER: &str = "1xa9EC-000498-0q-H
Debian-exim 999 995
<sender@example.net>
1796551940 0
-received_time_usec .262361
--helo_name c
-host_address [127.0.0.1]:48120
-aclm _mail_incident 36
queue 452 4.3.1 Mailbox storage down
-aclc _two_lines 9
NN x\n3
yz
-body_linecount 1
NN u@local.test
3
u@pec.local.test
u@local.test
v@pec.local.test rfc822;v@pec.local.test 22,0  0,-1#3

169P Received: from [127.0.0.1] (helo=c)
";

    #[test]
    fn the_recipients_left_are_read_from_the_spool_header_past_its_acl_variables() {
        assert_eq!(
            pending_recipients(HEADER.as_bytes()),
            Some(vec![
                "u@pec.local.test".to_string(),
                "v@pec.local.test".to_string()
            ])
        );
        let none_delivered = HEADER.replace("NN u@local.test\n", "XX\n");
        assert_eq!(
            pending_recipients(none_delivered.as_bytes()).map(|p| p.len()),
            Some(3)
        );
        // Cut short while being written: not read, never a panic.
        for cut in [40, 200, 330, HEADER.len() - 60] {
            assert_eq!(pending_recipients(&HEADER.as_bytes()[..cut]), None, "{cut}");
        }
        let lying = HEADER.replace("_mail_incident 36", "_mail_incident 9999");
        assert_eq!(pending_recipients(lying.as_bytes()), None);
    }

    #[test]
    fn a_scoped_hold_counts_only_messages_with_a_held_recipient_left() {
        let spool = tempfile::tempdir().unwrap();
        let input = spool.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join("1xa9EC-000498-0q-H"), HEADER).unwrap();
        let other = HEADER
            .replace("1796551940 0", "1796550000 0")
            .replace("pec.local.test", "other.test");
        std::fs::write(input.join("1xa9ED-000498-0q-H"), other).unwrap();
        let pec = [DomainPattern::parse("pec.local.test").unwrap()];
        let figures = spool_figures(spool.path(), 1796552000, Some(&pec)).unwrap();
        assert_eq!(figures.messages, 1);
        assert_eq!(figures.oldest_age_seconds, 60);
        let everyone = spool_figures(spool.path(), 1796552000, None).unwrap();
        assert_eq!(everyone.messages, 2);
        assert_eq!(everyone.oldest_age_seconds, 2000);
    }

    #[test]
    fn queue_runners_start_for_a_release_and_for_changed_scoped_rules_only() {
        let scoped = held(&rules(&[(
            Mode::AcceptAndQueue,
            452,
            "4.3.1",
            &["pec.local.test"],
        )]));
        assert_eq!(queue_runners(&scoped, true), 4);
        assert_eq!(queue_runners(&scoped, false), 0, "the same rules again");
        let everyone = held(&document(Mode::AcceptAndQueue, 452, "4.3.1"));
        assert_eq!(queue_runners(&everyone, true), 0, "everything is held");
        assert_eq!(queue_runners(&scoped.next(None, 1), false), 4);
        assert_eq!(queue_runners(&Held::Normal, true), 0);
    }
}
