//! Postfix rendering: which `main.cf` parameters (and which `master.cf` field) a state
//! sets, and how normal service restores the baseline exactly. `render` is pure; the
//! [`Postfix`] handle applies its result with `postconf` and `postfix reload`.
//!
//! Every incident mode holds the mail already queued (storage is down in all three): the
//! mailbox transport is listed in `defer_transports`, the queue lifetimes are the
//! incident's, and `soft_bounce = yes` turns any delivery failure into a retry. TempFail
//! and HardReject also answer RCPT with the incident's reply, from a
//! `check_recipient_access static:{...}` placed ahead of the existing recipient
//! restrictions. HardReject sets `soft_bounce = no`, because with `yes` the Postfix SMTP
//! server turns its own 5xx replies into 4xx.
//!
//! Releasing lifts the hold but keeps the incident's lifetimes and `soft_bounce = yes`,
//! and caps the mailbox transport's process limit (`master.cf`) at the release
//! concurrency; `postqueue -f` then retries every deferred message at once. Deferred mail
//! keeps its arrival time, so the lifetimes must stay long until it is all delivered.

use super::{
    Mta, run_command,
    state::{Held, Release},
    write_atomically,
};
use crate::api::{
    Mode,
    mode_document::{ModeDocument, QueueFigures},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

/// The `main.cf` parameters the agent manages; nothing else in `main.cf` is touched.
pub const MANAGED: [&str; 5] = [
    "soft_bounce",
    "defer_transports",
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
    "smtpd_recipient_restrictions",
];

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
    if matches!(document.mode, Mode::TempFail | Mode::HardReject) {
        let reply = &document.reply;
        let check = format!(
            "check_recipient_access static:{{{} {} {}}}",
            reply.code, reply.enhanced_code, reply.text
        );
        let restrictions = match baseline.get("smtpd_recipient_restrictions") {
            Some(existing) if !existing.is_empty() => format!("{check}, {existing}"),
            _ => check,
        };
        edits
            .main
            .insert("smtpd_recipient_restrictions", Some(restrictions));
    }
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

/// Queue figures from `postqueue -j` output: one JSON object per queued message, with
/// `queue_name` and `arrival_time` (seconds since the epoch). Unreadable lines (the
/// queue changes while it is listed) are skipped.
pub fn queue_figures(listing: &str, now: i64) -> QueueFigures {
    #[derive(Deserialize)]
    struct Message {
        queue_name: String,
        arrival_time: i64,
    }
    let messages: Vec<Message> = listing
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    QueueFigures::from_arrivals(
        messages
            .iter()
            .map(|m| (m.queue_name.as_str(), m.arrival_time)),
        now,
    )
}

/// A Postfix instance, driven through its own commands.
pub struct Postfix {
    config_dir: PathBuf,
    mailbox_transport: String,
    baseline: Baseline,
}

impl Postfix {
    /// The instance whose `main.cf` is in `config_dir`. Its baseline is read the first
    /// time and kept in `baseline_file` from then on: an agent restarted during an
    /// incident must not take the incident's settings for the MTA's own.
    pub fn open(
        config_dir: &Path,
        mailbox_transport: &str,
        baseline_file: &Path,
    ) -> std::io::Result<Self> {
        let baseline = match std::fs::read_to_string(baseline_file) {
            Ok(text) => serde_json::from_str(&text).map_err(std::io::Error::other)?,
            Err(_) => {
                let baseline = Baseline::read(
                    &run_command(postconf(config_dir).arg("-n"))?,
                    &run_command(
                        postconf(config_dir)
                            .arg("-F")
                            .arg(process_limit_field(mailbox_transport)),
                    )?,
                );
                let text =
                    serde_json::to_string_pretty(&baseline).map_err(std::io::Error::other)?;
                write_atomically(baseline_file, &text)?;
                baseline
            }
        };
        Ok(Self {
            config_dir: config_dir.into(),
            mailbox_transport: mailbox_transport.into(),
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
    /// this also works on a stopped MTA.
    fn queue(&self) -> std::io::Result<Option<QueueFigures>> {
        let listing = run_command(
            Command::new("postqueue")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-j"),
        )?;
        Ok(Some(queue_figures(
            &listing,
            k8s_openapi::jiff::Timestamp::now().as_second(),
        )))
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

/// Applies `edits` to `main.cf` and `master.cf` (`postconf -e`, `-X`, `-F -e`) and
/// reloads: running smtpd processes finish their sessions, new ones answer in the new
/// mode; nothing restarts.
pub fn apply_edits(
    config_dir: &Path,
    mailbox_transport: &str,
    edits: &Edits,
) -> std::io::Result<()> {
    let set: Vec<String> = edits
        .main
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} = {v}")))
        .collect();
    let unset: Vec<&str> = edits
        .main
        .iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !set.is_empty() {
        run_command(postconf(config_dir).arg("-e").args(&set))?;
    }
    if !unset.is_empty() {
        run_command(postconf(config_dir).arg("-X").args(&unset))?;
    }
    run_command(postconf(config_dir).args([
        "-F".to_string(),
        "-e".to_string(),
        format!(
            "{}={}",
            process_limit_field(mailbox_transport),
            edits.process_limit
        ),
    ]))?;
    run_command(
        Command::new("postfix")
            .arg("-c")
            .arg(config_dir)
            .arg("reload"),
    )?;
    Ok(())
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
        assert_eq!(
            edits.value("smtpd_recipient_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination")
        );
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
        assert_eq!(
            edits.value("smtpd_recipient_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination"),
            "mail is still accepted"
        );
    }

    #[test]
    fn temp_fail_answers_rcpt_with_the_reply_ahead_of_existing_restrictions() {
        let baseline = baseline(BASELINE);
        let edits = render(
            &held(&document(Mode::TempFail, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert_eq!(
            edits.value("smtpd_recipient_restrictions"),
            Some(
                "check_recipient_access static:{452 4.3.1 Mailbox storage temporarily unavailable, try again later}, permit_mynetworks, reject_unauth_destination"
            )
        );
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
        assert_eq!(
            edits.value("smtpd_recipient_restrictions"),
            Some(
                "check_recipient_access static:{550 5.3.2 Mailbox storage temporarily unavailable, try again later}"
            )
        );
    }

    #[test]
    fn queue_figures_count_by_queue_and_find_the_oldest_message() {
        let listing = r#"{"queue_name": "deferred", "queue_id": "A1", "arrival_time": 1000, "message_size": 512}
{"queue_name": "deferred", "queue_id": "A2", "arrival_time": 4000, "message_size": 512}
{"queue_name": "active", "queue_id": "A3", "arrival_time": 4500, "message_size": 512}
not json: the queue changed while it was listed
"#;
        let figures = queue_figures(listing, 5000);
        assert_eq!(figures.messages, 3);
        assert_eq!(figures.by_queue.get("deferred"), Some(&2));
        assert_eq!(figures.by_queue.get("active"), Some(&1));
        assert_eq!(figures.oldest_age_seconds, 4000);
        assert_eq!(queue_figures("", 5000), QueueFigures::default());
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
        assert_eq!(
            edits.value("smtpd_recipient_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination"),
            "mail is accepted again"
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
