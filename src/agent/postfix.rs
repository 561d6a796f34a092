//! Postfix rendering: which `main.cf` parameters (and which `master.cf` field) a state
//! sets, and how normal service restores the baseline exactly. `render` is pure; the
//! [`Postfix`] handle applies its result with `postconf` and `postfix reload`.
//!
//! The RCPT answer does not go through `main.cf`: the agent's policy service (see
//! [`super::policy`]) gives TempFail's and HardReject's reply at the next RCPT, with no
//! reload. What `main.cf` carries is what must outlive a request: every incident mode
//! holds the mail already queued (storage is down in all three): the mailbox transport is
//! listed in `defer_transports`, the queue lifetimes are the incident's, and
//! `soft_bounce = yes` turns any delivery failure into a retry. HardReject sets
//! `soft_bounce = no`, because with `yes` the Postfix SMTP server turns every 5xx reply,
//! the policy service's included, into a 4xx.
//!
//! Releasing lifts the hold but keeps the incident's lifetimes and `soft_bounce = yes`,
//! and caps the mailbox transport's process limit (`master.cf`) at the release
//! concurrency; `postqueue -f` then retries every deferred message at once. Deferred mail
//! keeps its arrival time, so the lifetimes must stay long until it is all delivered.

use super::{
    Mta,
    command::{for_each_output_line, run_command},
    files,
    state::{Held, Release},
};
use crate::api::{
    Mode,
    mode_document::{ModeDocument, QueueFigures},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

/// The `main.cf` parameters the agent manages; nothing else in `main.cf` is touched.
pub const MANAGED: [&str; 4] = [
    "soft_bounce",
    "defer_transports",
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
];

/// Command-line settings for Postfix.
#[derive(Clone, Debug, clap::Args)]
pub struct PostfixSettings {
    /// Postfix: the configuration directory (shared with the MTA container).
    #[arg(long, env = "POSTFIX_CONFIG_DIR", default_value = "/etc/postfix")]
    pub postfix_config: PathBuf,

    /// Postfix: the master.cf transport that delivers to mailbox storage, held while an
    /// incident lasts.
    #[arg(long, env = "MAILBOX_TRANSPORT", default_value = "lmtp")]
    pub mailbox_transport: String,

    /// Postfix: where the agent serves the policy delegation protocol; main.cf's
    /// smtpd_recipient_restrictions must start with
    /// `check_policy_service { inet:ADDRESS, default_action=DUNNO }`.
    #[arg(long, env = "POSTFIX_POLICY_LISTEN", default_value = "127.0.0.1:10040")]
    pub postfix_policy_listen: SocketAddr,
}

/// The managed settings as they were before any incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Each managed parameter's value if `main.cf` sets it, `None` if Postfix's default
    /// applies.
    main: BTreeMap<String, Option<String>>,
    /// The mailbox transport's `master.cf` process limit (`-`: default_process_limit).
    process_limit: String,
}

impl Baseline {
    /// Reads the baseline out of `postconf -n` (`name = value` lines) and `postconf -F
    /// TRANSPORT/unix/process_limit` output.
    pub fn read(postconf_n: &str, process_limit: &str) -> Self {
        let explicit: BTreeMap<&str, &str> = postconf_n
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        Self {
            main: MANAGED
                .iter()
                .map(|name| (name.to_string(), explicit.get(name).map(|v| v.to_string())))
                .collect(),
            process_limit: process_limit
                .split_once('=')
                .map_or("-", |(_, value)| value.trim())
                .to_string(),
        }
    }

    /// What the instance in `config_dir` runs now (`postconf -n`, `postconf -F`).
    fn of_instance(config_dir: &Path, mailbox_transport: &str) -> std::io::Result<Self> {
        Ok(Self::read(
            &run_command(postconf(config_dir).arg("-n"))?,
            &run_command(
                postconf(config_dir)
                    .arg("-F")
                    .arg(process_limit_field(mailbox_transport)),
            )?,
        ))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.main.get(name).and_then(|v| v.as_deref())
    }
}

/// What to change. In `main`, `Some(value)` sets a parameter (`postconf -e`) and `None`
/// removes it from `main.cf` so that Postfix's default applies again (`postconf -X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edits {
    pub main: BTreeMap<&'static str, Option<String>>,
    /// The mailbox transport's `master.cf` process limit.
    pub process_limit: String,
}

impl Edits {
    /// The value a managed parameter gets (`None`: removed or not managed).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.main.get(name).and_then(|v| v.as_deref())
    }
}

/// The edits that put Postfix in `held`. `mailbox_transport` is the `master.cf`
/// transport that delivers to mailbox storage.
pub fn render(held: &Held, baseline: &Baseline, mailbox_transport: &str) -> Edits {
    let restore = |name: &'static str| (name, baseline.get(name).map(str::to_string));
    let mut edits = Edits {
        main: MANAGED.into_iter().map(restore).collect(),
        process_limit: baseline.process_limit.clone(),
    };
    match held {
        Held::Normal => {}
        Held::Incident { document } => {
            render_incident(&mut edits, document, baseline, mailbox_transport)
        }
        Held::Releasing { release } => render_release(&mut edits, release),
    }
    edits
}

fn render_incident(
    edits: &mut Edits,
    document: &ModeDocument,
    baseline: &Baseline,
    mailbox_transport: &str,
) {
    let defer_transports = match baseline.get("defer_transports") {
        Some(existing) if list_contains(existing, mailbox_transport) => existing.to_string(),
        Some(existing) if !existing.is_empty() => format!("{existing}, {mailbox_transport}"),
        _ => mailbox_transport.to_string(),
    };
    let soft_bounce = if document.mode == Mode::HardReject {
        "no"
    } else {
        "yes"
    };
    edits.main.extend([
        ("soft_bounce", Some(soft_bounce.to_string())),
        ("defer_transports", Some(defer_transports)),
        (
            "maximal_queue_lifetime",
            Some(document.queue.lifetime.clone()),
        ),
        (
            "bounce_queue_lifetime",
            Some(document.queue.bounce_lifetime.clone()),
        ),
    ]);
}

fn render_release(edits: &mut Edits, release: &Release) {
    edits.main.extend([
        ("soft_bounce", Some("yes".to_string())),
        ("maximal_queue_lifetime", Some(release.lifetime.clone())),
        (
            "bounce_queue_lifetime",
            Some(release.bounce_lifetime.clone()),
        ),
    ]);
    edits.process_limit = release.concurrency.to_string();
}

/// One message of `postqueue -j` output (one JSON object per line), `None` for a line
/// that cannot be read (the queue changes while it is listed).
pub fn queued_message(line: &str) -> Option<(String, i64)> {
    #[derive(Deserialize)]
    struct Message {
        queue_name: String,
        arrival_time: i64,
    }
    let message: Message = serde_json::from_str(line).ok()?;
    Some((message.queue_name, message.arrival_time))
}

/// A Postfix instance, driven through its own commands.
pub struct Postfix {
    config_dir: PathBuf,
    mailbox_transport: String,
    baseline: Baseline,
}

impl Postfix {
    /// The instance `settings` describe. Its baseline is read the first time and kept in
    /// `baseline_file` from then on: an agent restarted during an incident must not take
    /// the incident's settings for the MTA's own, so only a missing file means "first
    /// start". Refuses an instance whose recipient restrictions do not ask the agent's
    /// policy service, which would never refuse a recipient.
    pub fn open(settings: &PostfixSettings, baseline_file: &Path) -> std::io::Result<Self> {
        let config_dir = &settings.postfix_config;
        let restrictions =
            run_command(postconf(config_dir).args(["-hx", "smtpd_recipient_restrictions"]))?;
        let service = format!("inet:{}", settings.postfix_policy_listen);
        if !restrictions.contains(&service) {
            return Err(std::io::Error::other(format!(
                "{}/main.cf: smtpd_recipient_restrictions must start with \
                 `check_policy_service {{ {service}, default_action=DUNNO }}` so that the agent \
                 can answer RCPT in TempFail and HardReject; it is `{}`",
                config_dir.display(),
                restrictions.trim()
            )));
        }
        let baseline = match files::read_if_exists(baseline_file)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", baseline_file.display())))?,
            None => {
                let baseline = Baseline::of_instance(config_dir, &settings.mailbox_transport)?;
                let text =
                    serde_json::to_string_pretty(&baseline).map_err(std::io::Error::other)?;
                files::write_durably(baseline_file, &text)?;
                baseline
            }
        };
        Ok(Self {
            config_dir: config_dir.clone(),
            mailbox_transport: settings.mailbox_transport.clone(),
            baseline,
        })
    }
}

impl Mta for Postfix {
    fn apply(&self, held: &Held) -> std::io::Result<()> {
        apply_edits(
            &self.config_dir,
            &self.mailbox_transport,
            &render(held, &self.baseline, &self.mailbox_transport),
        )?;
        if let Held::Releasing { .. } = held {
            // Retry every deferred message now rather than at its next scheduled attempt.
            run_command(
                Command::new("postqueue")
                    .arg("-c")
                    .arg(&self.config_dir)
                    .arg("-f"),
            )?;
        }
        Ok(())
    }

    /// `postqueue -j` reads the queue files itself when the showq service is down, so
    /// this also works on a stopped MTA. Its output is read line by line: a huge queue is
    /// counted, never held in memory.
    fn queue(&self) -> std::io::Result<Option<QueueFigures>> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let mut figures = QueueFigures::default();
        for_each_output_line(
            Command::new("postqueue")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-j"),
            |line| {
                if let Some((queue, arrival)) = queued_message(line) {
                    figures.add(&queue, arrival, now);
                }
            },
        )?;
        Ok(Some(figures))
    }
}

/// `postconf` for the instance in `config_dir`.
fn postconf(config_dir: &Path) -> Command {
    let mut command = Command::new("postconf");
    command.arg("-c").arg(config_dir);
    command
}

fn process_limit_field(transport: &str) -> String {
    format!("{transport}/unix/process_limit")
}

/// The `postconf` edits that take Postfix from `current` (read just now) to `edits`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `name = value` for `postconf -e`.
    pub set: Vec<String>,
    /// Names for `postconf -X`.
    pub unset: Vec<&'static str>,
    /// The mailbox transport's new process limit, for `postconf -F -e`.
    pub process_limit: Option<String>,
}

/// Only what differs is edited: an unchanged file keeps its time stamp (see [`settle`]).
pub fn changes(current: &Baseline, edits: &Edits) -> Changes {
    let mut changes = Changes::default();
    for (name, wanted) in &edits.main {
        match (wanted, current.get(name)) {
            (Some(value), now) if now != Some(value.as_str()) => {
                changes.set.push(format!("{name} = {value}"))
            }
            (None, Some(_)) => changes.unset.push(name),
            _ => {}
        }
    }
    if current.process_limit != edits.process_limit {
        changes.process_limit = Some(edits.process_limit.clone());
    }
    changes
}

/// Applies `edits` to `main.cf` and `master.cf` (`postconf -e`, `-X`, `-F -e`, only what
/// differs from what the files say now) and reloads: running smtpd processes finish
/// their sessions, new ones answer in the new mode; nothing restarts. The reload is
/// always made, so that an apply cut short between the edit and the reload is completed.
pub fn apply_edits(
    config_dir: &Path,
    mailbox_transport: &str,
    edits: &Edits,
) -> std::io::Result<()> {
    let current = Baseline::of_instance(config_dir, mailbox_transport)?;
    let changes = changes(&current, edits);
    if !changes.set.is_empty() {
        run_command(postconf(config_dir).arg("-e").args(&changes.set))?;
    }
    if !changes.unset.is_empty() {
        run_command(postconf(config_dir).arg("-X").args(&changes.unset))?;
    }
    if !changes.set.is_empty() || !changes.unset.is_empty() {
        settle(&config_dir.join("main.cf"))?;
    }
    if let Some(limit) = &changes.process_limit {
        let field = process_limit_field(mailbox_transport);
        run_command(postconf(config_dir).args(["-F", "-e", &format!("{field}={limit}")]))?;
        settle(&config_dir.join("master.cf"))?;
    }
    run_command(
        Command::new("postfix")
            .arg("-c")
            .arg(config_dir)
            .arg("reload"),
    )?;
    Ok(())
}

/// Marks a configuration file `postconf` has just replaced as settled. Every Postfix
/// process that reads a configuration file changed less than about two seconds ago
/// waits, 300 ms at a time, until it is older (a guard against half-edited files); the
/// new smtpd processes of a reload would hold each new SMTP session that long, the
/// RCPT answer of the policy service included. `postconf` replaces the file whole, so
/// there is nothing to wait for.
fn settle(path: &Path) -> std::io::Result<()> {
    let settled = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(settled)
}

/// Whether a Postfix list (comma or whitespace separated) holds `item`.
fn list_contains(list: &str, item: &str) -> bool {
    list.split([',', ' ', '\t']).any(|entry| entry == item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{document, held};

    const BASELINE: &str = "\
alias_maps = hash:/etc/aliases
maximal_queue_lifetime = 3d
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
mydestination = example.org
";

    fn baseline(postconf_n: &str) -> Baseline {
        Baseline::read(postconf_n, "lmtp/unix/process_limit = -")
    }

    #[test]
    fn the_baseline_keeps_only_the_managed_parameters_set_in_main_cf() {
        let baseline = baseline(BASELINE);
        assert_eq!(baseline.get("maximal_queue_lifetime"), Some("3d"));
        assert_eq!(baseline.get("soft_bounce"), None);
        assert_eq!(baseline.get("alias_maps"), None, "not a managed parameter");
    }

    #[test]
    fn normal_service_restores_the_baseline_exactly() {
        let baseline = baseline(BASELINE);
        let edits = render(&Held::Normal, &baseline, "lmtp");
        assert_eq!(edits.main.len(), MANAGED.len());
        assert_eq!(edits.value("maximal_queue_lifetime"), Some("3d"));
        // Not set before the incident: removed, so Postfix's default applies again.
        assert_eq!(edits.main.get("soft_bounce"), Some(&None));
        assert_eq!(edits.main.get("defer_transports"), Some(&None));
    }

    #[test]
    fn accept_and_queue_holds_mail_with_the_incident_lifetimes() {
        let baseline = baseline(BASELINE);
        let edits = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert_eq!(edits.value("defer_transports"), Some("lmtp"));
        assert_eq!(edits.value("soft_bounce"), Some("yes"));
        assert_eq!(edits.value("maximal_queue_lifetime"), Some("30d"));
        assert_eq!(edits.value("bounce_queue_lifetime"), Some("10d"));
    }

    #[test]
    fn temp_fail_holds_queued_mail_and_leaves_the_answer_to_the_policy_service() {
        let baseline = baseline(BASELINE);
        let edits = render(
            &held(&document(Mode::TempFail, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert!(!edits.main.contains_key("smtpd_recipient_restrictions"));
        assert_eq!(edits.value("soft_bounce"), Some("yes"));
        assert_eq!(
            edits.value("defer_transports"),
            Some("lmtp"),
            "queued mail stays held"
        );
    }

    #[test]
    fn hard_reject_turns_soft_bounce_off_so_the_5xx_is_not_softened() {
        let edits = render(
            &held(&document(Mode::HardReject, 550, "5.3.2")),
            &baseline(""),
            "lmtp",
        );
        assert_eq!(edits.value("soft_bounce"), Some("no"));
        assert_eq!(edits.value("defer_transports"), Some("lmtp"));
    }

    #[test]
    fn queue_figures_count_by_queue_and_find_the_oldest_message() {
        let listing = r#"{"queue_name": "deferred", "queue_id": "A1", "arrival_time": 1000, "message_size": 512}
{"queue_name": "deferred", "queue_id": "A2", "arrival_time": 4000, "message_size": 512}
{"queue_name": "active", "queue_id": "A3", "arrival_time": 4500, "message_size": 512}
not json: the queue changed while it was listed
"#;
        let mut figures = QueueFigures::default();
        for (queue, arrival) in listing.lines().filter_map(queued_message) {
            figures.add(&queue, arrival, 5000);
        }
        assert_eq!(figures.messages, 3);
        assert_eq!(figures.by_queue.get("deferred"), Some(&2));
        assert_eq!(figures.by_queue.get("active"), Some(&1));
        assert_eq!(figures.oldest_age_seconds, 4000);
    }

    #[test]
    fn only_what_differs_is_edited() {
        let now = baseline(BASELINE);
        let unchanged = render(&Held::Normal, &now, "lmtp");
        assert_eq!(changes(&now, &unchanged), Changes::default());
        let hold = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &now,
            "lmtp",
        );
        let changed = changes(&now, &hold);
        assert_eq!(
            changed.set,
            [
                "bounce_queue_lifetime = 10d",
                "defer_transports = lmtp",
                "maximal_queue_lifetime = 30d",
                "soft_bounce = yes"
            ]
        );
        assert!(changed.unset.is_empty() && changed.process_limit.is_none());
        // And back: what the incident added is removed, its lifetime restored.
        let during = Baseline::read(&changed.set.join("\n"), "lmtp/unix/process_limit = 4");
        let back = changes(&during, &unchanged);
        assert_eq!(back.set, ["maximal_queue_lifetime = 3d"]);
        assert_eq!(
            back.unset,
            ["bounce_queue_lifetime", "defer_transports", "soft_bounce"]
        );
        assert_eq!(back.process_limit.as_deref(), Some("-"));
    }

    #[test]
    fn an_existing_defer_list_is_extended_not_replaced() {
        let smtp = baseline("defer_transports = smtp\n");
        let edits = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &smtp,
            "lmtp",
        );
        assert_eq!(edits.value("defer_transports"), Some("smtp, lmtp"));
        let already = baseline("defer_transports = lmtp smtp\n");
        let edits = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &already,
            "lmtp",
        );
        assert_eq!(edits.value("defer_transports"), Some("lmtp smtp"));
    }

    #[test]
    fn a_release_lifts_the_hold_but_keeps_the_lifetimes_and_paces_delivery() {
        let baseline = baseline(BASELINE);
        let releasing = held(&document(Mode::TempFail, 452, "4.3.1")).next(None, 100);
        let edits = render(&releasing, &baseline, "lmtp");
        assert_eq!(
            edits.main.get("defer_transports"),
            Some(&None),
            "no longer held"
        );
        assert_eq!(edits.value("maximal_queue_lifetime"), Some("30d"));
        assert_eq!(edits.value("bounce_queue_lifetime"), Some("10d"));
        assert_eq!(edits.value("soft_bounce"), Some("yes"));
        assert_eq!(edits.process_limit, "4");
        // Then normal service puts the transport's own limit back.
        assert_eq!(render(&Held::Normal, &baseline, "lmtp").process_limit, "-");
        let limited = Baseline::read("", "lmtp/unix/process_limit = 20");
        assert_eq!(render(&Held::Normal, &limited, "lmtp").process_limit, "20");
    }
}
