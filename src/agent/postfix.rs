//! Postfix rendering: which `main.cf` parameters a mode document sets, and how normal
//! service restores the baseline exactly. Pure: applying the result (`postconf -e`,
//! `postconf -X`, `postfix reload`) is the agent's I/O.
//!
//! Every incident mode holds the mail already queued (storage is down in all three): the
//! mailbox transport is listed in `defer_transports`, the queue lifetimes are the
//! incident's, and `soft_bounce = yes` turns any delivery failure into a retry. TempFail
//! and HardReject also answer RCPT with the incident's reply, from a
//! `check_recipient_access static:{...}` placed ahead of the existing recipient
//! restrictions. HardReject sets `soft_bounce = no`, because with `yes` the Postfix SMTP
//! server turns its own 5xx replies into 4xx.

use crate::api::{
    Mode,
    mode_document::{ModeDocument, QueueFigures},
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path, process::Command};

/// The parameters the agent manages; nothing else in `main.cf` is touched.
pub const MANAGED: [&str; 5] = [
    "soft_bounce",
    "defer_transports",
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
    "smtpd_recipient_restrictions",
];

/// The managed parameters as `postconf -n` showed them before any incident: a value if
/// `main.cf` sets it, `None` if Postfix's default applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Baseline(BTreeMap<String, Option<String>>);

impl Baseline {
    /// Reads the managed parameters out of `postconf -n` output (`name = value` lines).
    pub fn from_postconf_n(output: &str) -> Self {
        let explicit: BTreeMap<&str, &str> = output
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        Self(
            MANAGED
                .iter()
                .map(|name| (name.to_string(), explicit.get(name).map(|v| v.to_string())))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.as_deref())
    }
}

/// One `postconf` edit: `Some(value)` sets the parameter (`postconf -e`), `None` removes
/// it from `main.cf` so that Postfix's default applies again (`postconf -X`).
pub type Edits = BTreeMap<&'static str, Option<String>>;

/// The edits that make Postfix run `document`'s mode, or (for `None`) normal service.
/// `mailbox_transport` is the master.cf transport that delivers to mailbox storage.
pub fn render(
    document: Option<&ModeDocument>,
    baseline: &Baseline,
    mailbox_transport: &str,
) -> Edits {
    let restore = |name: &'static str| (name, baseline.get(name).map(str::to_string));
    let Some(document) = document else {
        return MANAGED.into_iter().map(restore).collect();
    };
    let defer_transports = match baseline.get("defer_transports") {
        Some(existing) if list_contains(existing, mailbox_transport) => existing.to_string(),
        Some(existing) if !existing.is_empty() => format!("{existing}, {mailbox_transport}"),
        _ => mailbox_transport.to_string(),
    };
    let restrictions = match document.mode {
        Mode::AcceptAndQueue => baseline
            .get("smtpd_recipient_restrictions")
            .map(str::to_string),
        Mode::TempFail | Mode::HardReject => {
            let reply = &document.reply;
            let check = format!(
                "check_recipient_access static:{{{} {} {}}}",
                reply.code, reply.enhanced_code, reply.text
            );
            Some(match baseline.get("smtpd_recipient_restrictions") {
                Some(existing) if !existing.is_empty() => format!("{check}, {existing}"),
                _ => check,
            })
        }
    };
    let soft_bounce = if document.mode == Mode::HardReject {
        "no"
    } else {
        "yes"
    };
    Edits::from([
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
        ("smtpd_recipient_restrictions", restrictions),
    ])
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
    let mut figures = QueueFigures::default();
    for message in listing
        .lines()
        .filter_map(|l| serde_json::from_str::<Message>(l).ok())
    {
        figures.messages += 1;
        *figures.by_queue.entry(message.queue_name).or_default() += 1;
        let age = u64::try_from(now - message.arrival_time).unwrap_or(0);
        figures.oldest_age_seconds = figures.oldest_age_seconds.max(age);
    }
    figures
}

/// A Postfix instance, driven through its own commands.
pub struct Postfix<'a> {
    pub config_dir: &'a Path,
}

impl Postfix<'_> {
    /// `postconf -n`: the parameters main.cf sets.
    pub fn explicit_parameters(&self) -> std::io::Result<String> {
        run(Command::new("postconf")
            .arg("-c")
            .arg(self.config_dir)
            .arg("-n"))
    }

    /// `postqueue -j`: the queue, one JSON object per message. It reads the queue files
    /// itself when the showq service is down, so it also works on a stopped MTA.
    pub fn queue_listing(&self) -> std::io::Result<String> {
        run(Command::new("postqueue")
            .arg("-c")
            .arg(self.config_dir)
            .arg("-j"))
    }

    /// Applies `edits` to main.cf and reloads: running smtpd processes finish their
    /// sessions, new ones answer in the new mode; nothing restarts, no mail is lost.
    pub fn apply(&self, edits: &Edits) -> std::io::Result<()> {
        let set: Vec<String> = edits
            .iter()
            .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} = {v}")))
            .collect();
        let unset: Vec<&str> = edits
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| *name)
            .collect();
        let postconf = || {
            let mut command = Command::new("postconf");
            command.arg("-c").arg(self.config_dir);
            command
        };
        if !set.is_empty() {
            run(postconf().arg("-e").args(&set))?;
        }
        if !unset.is_empty() {
            run(postconf().arg("-X").args(&unset))?;
        }
        run(Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir)
            .arg("reload"))?;
        Ok(())
    }
}

/// Runs a command; its standard output, or an error carrying its standard error.
fn run(command: &mut Command) -> std::io::Result<String> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether a Postfix list (comma or whitespace separated) holds `item`.
fn list_contains(list: &str, item: &str) -> bool {
    list.split([',', ' ', '\t']).any(|entry| entry == item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mode_document::{
        DocumentIncident, DocumentQueue, DocumentReply, MODE_DOCUMENT_KIND, MODE_DOCUMENT_VERSION,
    };

    const BASELINE: &str = "\
alias_maps = hash:/etc/aliases
maximal_queue_lifetime = 3d
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
mydestination = example.org
";

    fn document(mode: Mode, code: u16, enhanced: &str) -> ModeDocument {
        ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            mode,
            reply: DocumentReply {
                code,
                enhanced_code: enhanced.into(),
                text: "Mailbox storage temporarily unavailable, try again later".into(),
            },
            queue: DocumentQueue {
                lifetime: "30d".into(),
                bounce_lifetime: "10d".into(),
            },
            mta: None,
            incident: DocumentIncident {
                name: "outage".into(),
                uid: "u".into(),
                reason: "r".into(),
            },
        }
    }

    fn value<'a>(edits: &'a Edits, name: &str) -> Option<&'a str> {
        edits.get(name).and_then(|v| v.as_deref())
    }

    #[test]
    fn the_baseline_keeps_only_the_managed_parameters_set_in_main_cf() {
        let baseline = Baseline::from_postconf_n(BASELINE);
        assert_eq!(baseline.get("maximal_queue_lifetime"), Some("3d"));
        assert_eq!(baseline.get("soft_bounce"), None);
        assert_eq!(baseline.get("alias_maps"), None, "not a managed parameter");
    }

    #[test]
    fn normal_service_restores_the_baseline_exactly() {
        let baseline = Baseline::from_postconf_n(BASELINE);
        let edits = render(None, &baseline, "lmtp");
        assert_eq!(edits.len(), MANAGED.len());
        assert_eq!(value(&edits, "maximal_queue_lifetime"), Some("3d"));
        assert_eq!(
            value(&edits, "smtpd_recipient_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination")
        );
        // Not set before the incident: removed, so Postfix's default applies again.
        assert_eq!(edits.get("soft_bounce"), Some(&None));
        assert_eq!(edits.get("defer_transports"), Some(&None));
    }

    #[test]
    fn accept_and_queue_holds_mail_with_the_incident_lifetimes() {
        let baseline = Baseline::from_postconf_n(BASELINE);
        let edits = render(
            Some(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert_eq!(value(&edits, "defer_transports"), Some("lmtp"));
        assert_eq!(value(&edits, "soft_bounce"), Some("yes"));
        assert_eq!(value(&edits, "maximal_queue_lifetime"), Some("30d"));
        assert_eq!(value(&edits, "bounce_queue_lifetime"), Some("10d"));
        assert_eq!(
            value(&edits, "smtpd_recipient_restrictions"),
            Some("permit_mynetworks, reject_unauth_destination"),
            "mail is still accepted"
        );
    }

    #[test]
    fn temp_fail_answers_rcpt_with_the_reply_ahead_of_existing_restrictions() {
        let baseline = Baseline::from_postconf_n(BASELINE);
        let edits = render(
            Some(&document(Mode::TempFail, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert_eq!(
            value(&edits, "smtpd_recipient_restrictions"),
            Some(
                "check_recipient_access static:{452 4.3.1 Mailbox storage temporarily unavailable, try again later}, permit_mynetworks, reject_unauth_destination"
            )
        );
        assert_eq!(value(&edits, "soft_bounce"), Some("yes"));
        assert_eq!(
            value(&edits, "defer_transports"),
            Some("lmtp"),
            "queued mail stays held"
        );
    }

    #[test]
    fn hard_reject_turns_soft_bounce_off_so_the_5xx_is_not_softened() {
        let edits = render(
            Some(&document(Mode::HardReject, 550, "5.3.2")),
            &Baseline::default(),
            "lmtp",
        );
        assert_eq!(value(&edits, "soft_bounce"), Some("no"));
        assert_eq!(
            value(&edits, "smtpd_recipient_restrictions"),
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
        let baseline = Baseline::from_postconf_n("defer_transports = smtp\n");
        let edits = render(
            Some(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &baseline,
            "lmtp",
        );
        assert_eq!(value(&edits, "defer_transports"), Some("smtp, lmtp"));
        let already = Baseline::from_postconf_n("defer_transports = lmtp smtp\n");
        let edits = render(
            Some(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &already,
            "lmtp",
        );
        assert_eq!(value(&edits, "defer_transports"), Some("lmtp smtp"));
    }
}
