//! Postfix rendering: which `main.cf` parameters (and which `master.cf` field) a state
//! sets, and how normal service restores the baseline exactly. `render` is pure; the
//! [`Postfix`] handle applies its result with `postconf` and a reload (see
//! [`apply_edits`]).
//!
//! The RCPT answer does not go through `main.cf`: the agent's policy service (see
//! [`super::policy`]) gives each recipient the reply of its rule at the next RCPT, with
//! no reload. What `main.cf` carries is what must outlive a request: every incident mode
//! holds the mail already queued for the recipients it covers (their storage is down in
//! all three), with the incident's queue lifetimes.
//!
//! **Everyone's mail** (a rule without a scope): the mailbox transport is listed in
//! `defer_transports`, and `soft_bounce = yes` turns any delivery failure into a retry.
//!
//! **Only some domains' mail** (every rule scoped): `transport_maps` gets, ahead of the
//! site's own maps, a `regexp:` table routing each held domain (`/@pec\.example\.it$/`,
//! and `/\.example\.it$/` for `*.example.it`) to the transport [`HOLD_TRANSPORT`], which
//! `defer_transports` lists and no `master.cf` defines. The queue manager splits a
//! message by transport, so a recipient in a held domain waits in the queue while the
//! message's other recipients are delivered at once. A regexp table is asked with the
//! full address before any table is asked with a domain, so the site's own entries (an
//! address, a subdomain) cannot route held mail around the hold. Postfix's `retry:`
//! transport, which always defers, would do it too, but the SMTP server refuses a
//! recipient whose transport is `error` or `retry` with a 4xx at RCPT, so AcceptAndQueue
//! would refuse mail. A flush (`postqueue -f`) ignores `defer_transports`; it then finds
//! no such service and defers that mail again ("mail transport unavailable"): held mail
//! is never delivered by a flush, nor bounced. So after each apply that changes a scoped
//! hold the agent flushes: when the held domains shrink (one of two incidents ends), the
//! released domains' mail goes out at once instead of at its next retry. It never
//! flushes while the mailbox transport itself is held: that hold a flush would lift.
//!
//! Queue lifetimes are global in Postfix: while a scoped incident holds, mail for other
//! domains that happens to be deferred (a remote site down) also lives as long as the
//! incident's lifetime says. `soft_bounce` is `yes` while everyone's mail is held; with
//! scoped rules only it is the site's, since the held mail never reaches a delivery agent
//! and the rest is delivered as usual.
//!
//! HardReject sets `soft_bounce = no` in both cases, because with `yes` the Postfix SMTP
//! server turns every 5xx reply, the policy service's included, into a 4xx.
//!
//! **When the reload comes.** A reload ends trivial-rewrite at once, and an smtpd whose
//! address rewrite or resolve request was under way sleeps a second before it asks
//! again: the sender's session stalls. The RCPT answer changes with the intent, before
//! any edit, so the agent makes the reload at a moment no SMTP session is open (see
//! [`wait_for_no_smtp_session`]), after at most two seconds on an MTA that is never idle.
//! Until then the hold and lifetimes are the previous state's, as they were while the
//! document travelled. An smtpd started before the reload keeps its `soft_bounce`: going
//! from `yes` to HardReject it answers 450 for the policy service's 550 until then (the
//! sender tries again, nothing bounces); smtpd processes started after the edit read
//! `no` already.
//!
//! Releasing lifts the hold but keeps the incident's lifetimes and `soft_bounce = yes`,
//! and caps the mailbox transport's process limit (`master.cf`) at the release
//! concurrency; `postqueue -f` then retries every deferred message at once. Deferred mail
//! keeps its arrival time, so the lifetimes must stay long until it is all delivered.
//!
//! While a rule covering everyone refuses mail, the agent's `check_policy_service`
//! restriction falls back to a 4xx (see [`super::policy::fallback_action`]) rather than
//! the site's `DUNNO`, so a dead agent leaves Postfix refusing softly, not accepting.
//!
//! **Whose value is it?** The agent reads the managed settings back (see
//! [`read_back`]). During an incident or its release the incident's values win: any
//! other value is put back. A value that is neither the baseline's nor one the agent has
//! written since (a human's `maximal_queue_lifetime = 9d`, a new image's `main.cf`) is
//! also the site's newer choice: it becomes the baseline, so that the end of the incident
//! restores it rather than the older one. Three exceptions keep that safe: a
//! `defer_transports` holding the mailbox transport or [`HOLD_TRANSPORT`] and a
//! `transport_maps` naming [`HOLD_TRANSPORT`] (normal service would never deliver that
//! mail again), and recipient restrictions without the agent's policy clause (no incident
//! could refuse mail) are never learned during an incident. In normal service, every
//! value the agent did not write is the site's and is learned, never put back.

use super::{
    Difference, DriftKind, Mta,
    command::{at_low_priority, children_named, hang_up, main_process, run_command},
    differs,
    error::{AgentError, FileAction},
    files,
    policy::fallback_action,
    postfix_queue,
    state::{Held, Release},
};
use crate::api::{
    Mode,
    mode_document::{ModeDocument, QueueFigures},
    scope::DomainPattern,
};
use procfs::net::TcpState;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};
use tracing::{info, warn};

/// The `main.cf` parameters the agent manages; nothing else in `main.cf` is touched.
pub const MANAGED: [&str; 6] = [
    "soft_bounce",
    "defer_transports",
    TRANSPORT_MAPS,
    "maximal_queue_lifetime",
    "bounce_queue_lifetime",
    RESTRICTIONS,
];

/// Routes the held domains to [`HOLD_TRANSPORT`] while scoped rules hold their mail.
const TRANSPORT_MAPS: &str = "transport_maps";

/// The transport the mail of held domains is routed to: listed in `defer_transports`, so
/// the queue manager defers it without asking any delivery agent, and never defined in
/// `master.cf`, so that a flush, which ignores `defer_transports`, finds no agent to
/// deliver it either.
pub const HOLD_TRANSPORT: &str = "mail-incident-hold";

/// Holds the agent's policy clause, whose fallback follows the incident.
const RESTRICTIONS: &str = "smtpd_recipient_restrictions";

/// The key of the mailbox transport's process limit among the values the agent wrote.
const PROCESS_LIMIT: &str = "master.cf process_limit";

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

/// The managed settings as they were before any incident (or as the site has set them
/// since), and what the agent has written over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Each managed parameter's value if `main.cf` sets it, `None` if Postfix's default
    /// applies.
    main: BTreeMap<String, Option<String>>,
    /// The mailbox transport's `master.cf` process limit (`-`: default_process_limit).
    process_limit: String,
    /// Every value other than the baseline's the agent has written to each setting since
    /// normal service was last applied: a value read back from this set is the agent's
    /// own, never the site's (an apply cut short leaves any of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    written: BTreeMap<String, BTreeSet<String>>,
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
            written: BTreeMap::new(),
        }
    }

    /// Records the values of `edits` other than the baseline's as the agent's own; whether
    /// any was new.
    fn note_written(&mut self, edits: &Edits) -> bool {
        let mut values: Vec<(&str, &str)> = edits
            .main
            .iter()
            .filter_map(|(name, value)| Some((*name, value.as_deref()?)))
            .filter(|(name, value)| self.get(name) != Some(value))
            .collect();
        if edits.process_limit != self.process_limit {
            values.push((PROCESS_LIMIT, &edits.process_limit));
        }
        let mut added = false;
        for (name, value) in values {
            added |= self
                .written
                .entry(name.to_string())
                .or_default()
                .insert(value.to_string());
        }
        added
    }

    fn wrote(&self, name: &str, value: Option<&str>) -> bool {
        value.is_some_and(|value| {
            self.written
                .get(name)
                .is_some_and(|set| set.contains(value))
        })
    }

    /// A baseline recorded before `name` was managed lacks it: the agent never wrote it,
    /// so what the instance runs is the site's.
    fn complete_from(&mut self, current: &Baseline) {
        for name in MANAGED {
            self.main
                .entry(name.to_string())
                .or_insert_with(|| current.get(name).map(str::to_string));
        }
    }

    /// What the instance in `config_dir` runs now (`postconf -n`, `postconf -F`).
    fn of_instance(config_dir: &Path, mailbox_transport: &str) -> Result<Self, AgentError> {
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

/// What the agent's edits act on: the `master.cf` transport that delivers to mailbox
/// storage, and the agent's policy service as `smtpd_recipient_restrictions` names it
/// (`inet:127.0.0.1:10040`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mailbox_transport: String,
    pub policy_service: String,
}

impl Target {
    pub fn new(mailbox_transport: &str, policy_listen: SocketAddr) -> Self {
        Self {
            mailbox_transport: mailbox_transport.into(),
            policy_service: format!("inet:{policy_listen}"),
        }
    }
}

/// The edits that put Postfix in `held`.
pub fn render(held: &Held, baseline: &Baseline, target: &Target) -> Edits {
    let restore = |name: &'static str| (name, baseline.get(name).map(str::to_string));
    let mut edits = Edits {
        main: MANAGED.into_iter().map(restore).collect(),
        process_limit: baseline.process_limit.clone(),
    };
    match held {
        Held::Normal => {}
        Held::Incident { document } => {
            render_incident(&mut edits, document, baseline, &target.mailbox_transport)
        }
        Held::Releasing { release } => render_release(&mut edits, release),
    }
    if let Some(action) = fallback_action(held) {
        let fallback = baseline.get(RESTRICTIONS).and_then(|restrictions| {
            with_policy_fallback(restrictions, &target.policy_service, &action)
        });
        if let Some(restrictions) = fallback {
            edits.main.insert(RESTRICTIONS, Some(restrictions));
        }
    }
    edits
}

/// `restrictions` with the agent's policy clause (`check_policy_service` naming
/// `service`) falling back to `action` when the service does not answer, its other
/// attributes kept; `None` if there is no such clause or the braces do not balance.
/// The action holds spaces and commas, so it goes in a `{ default_action = ... }` group,
/// Postfix's syntax for such values (SMTPD_POLICY_README, "Advanced policy client
/// configuration"); a reply text never holds `{`, `}` or `$` (the API refuses them).
pub fn with_policy_fallback(restrictions: &str, service: &str, action: &str) -> Option<String> {
    let items = list_items(restrictions)?;
    let at = items.windows(2).position(|pair| {
        &restrictions[pair[0].clone()] == "check_policy_service"
            && endpoint(&restrictions[pair[1].clone()]) == Some(service)
    })?;
    let clause = items[at + 1].clone();
    let mut rewritten = format!("{{ {service}");
    if let Some(inner) = group_inner(&restrictions[clause.clone()]) {
        for attribute in list_items(inner)?.into_iter().skip(1) {
            if !is_default_action(&inner[attribute.clone()]) {
                rewritten.push_str(", ");
                rewritten.push_str(&inner[attribute]);
            }
        }
    }
    rewritten.push_str(&format!(", {{ default_action = {action} }} }}"));
    Some(format!(
        "{}{rewritten}{}",
        &restrictions[..clause.start],
        &restrictions[clause.end..]
    ))
}

/// The byte ranges of a Postfix list's items (separated by commas or whitespace), a
/// `{ ... }` group being one item; `None` if the braces do not balance.
fn list_items(list: &str) -> Option<Vec<Range<usize>>> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    for (at, c) in list.char_indices() {
        match c {
            '{' => {
                start.get_or_insert(at);
                depth += 1;
            }
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    items.push(start.take()?..at + 1);
                }
            }
            ',' | ' ' | '\t' | '\n' | '\r' if depth == 0 => {
                if let Some(start) = start.take() {
                    items.push(start..at);
                }
            }
            _ => {
                start.get_or_insert(at);
            }
        }
    }
    if depth != 0 {
        return None;
    }
    items.extend(start.map(|start| start..list.len()));
    Some(items)
}

/// What is inside a `{ ... }` group, `None` for a plain item.
fn group_inner(item: &str) -> Option<&str> {
    item.strip_prefix('{')?.strip_suffix('}')
}

/// The service a `check_policy_service` argument names: the item itself, or the first
/// item of its `{ ... }` group.
fn endpoint(argument: &str) -> Option<&str> {
    match group_inner(argument) {
        Some(inner) => {
            let first = list_items(inner)?.into_iter().next()?;
            Some(&inner[first])
        }
        None => Some(argument),
    }
}

/// Whether a policy clause attribute is `default_action=...` or `{ default_action = ... }`.
fn is_default_action(attribute: &str) -> bool {
    let bare = group_inner(attribute).unwrap_or(attribute).trim_start();
    bare.strip_prefix("default_action")
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

fn render_incident(
    edits: &mut Edits,
    document: &ModeDocument,
    baseline: &Baseline,
    mailbox_transport: &str,
) {
    let hard_reject = document
        .rules
        .iter()
        .any(|rule| rule.mode == Mode::HardReject);
    let held_transport = if document.covers_everyone() {
        edits.main.insert(
            "soft_bounce",
            Some(if hard_reject { "no" } else { "yes" }.to_string()),
        );
        mailbox_transport
    } else {
        if hard_reject {
            edits.main.insert("soft_bounce", Some("no".to_string()));
        }
        edits.main.insert(
            TRANSPORT_MAPS,
            Some(with_hold_map(
                &document.held_domains(),
                baseline.get(TRANSPORT_MAPS),
            )),
        );
        HOLD_TRANSPORT
    };
    let defer_transports = match baseline.get("defer_transports") {
        Some(existing) if list_contains(existing, held_transport) => existing.to_string(),
        Some(existing) if !existing.is_empty() => format!("{existing}, {held_transport}"),
        _ => held_transport.to_string(),
    };
    edits.main.extend([
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

/// `transport_maps` routing every recipient in a `held` domain to [`HOLD_TRANSPORT`],
/// ahead of the `site`'s own maps: an inline `regexp:` table matching the end of the
/// full address (`$$` is a `$` once `main.cf` is read; a domain holds no other character
/// a regular expression or `main.cf` would take for syntax but the escaped dot).
pub fn with_hold_map(held: &[DomainPattern], site: Option<&str>) -> String {
    let rules: Vec<String> = held
        .iter()
        .map(|pattern| {
            let (lead, domain) = match pattern {
                DomainPattern::Exact(domain) => ("@", domain),
                DomainPattern::Subdomains(parent) => ("\\.", parent),
            };
            format!(
                "{{/{lead}{}$$/ {HOLD_TRANSPORT}:}}",
                domain.replace('.', "\\.")
            )
        })
        .collect();
    let map = format!("regexp:{{ {} }}", rules.join(", "));
    match site {
        Some(site) if !site.trim().is_empty() => format!("{map}, {site}"),
        _ => map,
    }
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

/// A Postfix instance, driven through its own commands.
pub struct Postfix {
    config_dir: PathBuf,
    /// `queue_directory`, read once: Postfix itself reads it only when it starts.
    queue_directory: PathBuf,
    target: Target,
    baseline_file: PathBuf,
    /// The baseline as recorded in `baseline_file`, learning the site's new values.
    baseline: Mutex<Baseline>,
}

impl Postfix {
    /// The instance `settings` describe, which the agent holds in `saved`. Its baseline
    /// is read the first time and kept in `baseline_file` from then on: an agent
    /// restarted during an incident must not take the incident's settings for the MTA's
    /// own, so only a missing file means "first start". A recorded baseline learns what
    /// the site has changed since (a new pod's fresh `main.cf`, see [`read_back`]).
    /// Refuses an instance whose recipient restrictions do not ask the agent's policy
    /// service, which would never refuse a recipient.
    pub fn open(
        settings: &PostfixSettings,
        baseline_file: &Path,
        saved: &Held,
    ) -> Result<Self, AgentError> {
        let config_dir = &settings.postfix_config;
        let target = Target::new(&settings.mailbox_transport, settings.postfix_policy_listen);
        let restrictions =
            run_command(postconf(config_dir).args(["-hx", "smtpd_recipient_restrictions"]))?;
        let service = &target.policy_service;
        if !restrictions.contains(service.as_str()) {
            return Err(AgentError::NoPolicyService {
                main_cf: config_dir.join("main.cf"),
                service: service.clone(),
                restrictions: restrictions.trim().to_string(),
            });
        }
        let current = Baseline::of_instance(config_dir, &target.mailbox_transport)?;
        let clause_found = current
            .get(RESTRICTIONS)
            .and_then(|restrictions| with_policy_fallback(restrictions, service, "DUNNO"))
            .is_some();
        if !clause_found {
            warn!(
                "smtpd_recipient_restrictions asks {service} only through another parameter: \
                 the agent cannot set its fallback, so while it is down Postfix does what \
                 the site's default_action says, in every mode"
            );
        }
        let baseline = match files::read_if_exists(baseline_file)? {
            Some(text) => {
                let mut recorded: Baseline =
                    serde_json::from_str(&text).map_err(|source| AgentError::Unparsable {
                        path: baseline_file.to_path_buf(),
                        source,
                    })?;
                recorded.complete_from(&current);
                let read = read_back(&recorded, &current, saved, &target);
                log_learned(&read.learned);
                read.baseline
            }
            None => current,
        };
        save_baseline(baseline_file, &baseline)?;
        let queue_directory = run_command(postconf(config_dir).args(["-hx", "queue_directory"]))?;
        Ok(Self {
            config_dir: config_dir.clone(),
            queue_directory: PathBuf::from(queue_directory.trim()),
            target,
            baseline_file: baseline_file.to_path_buf(),
            baseline: Mutex::new(baseline),
        })
    }
}

impl Postfix {
    /// `postqueue -f`: every deferred message is tried again now.
    fn flush(&self) -> Result<(), AgentError> {
        run_command(
            Command::new("postqueue")
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-f"),
        )?;
        Ok(())
    }
}

fn save_baseline(path: &Path, baseline: &Baseline) -> Result<(), AgentError> {
    let text =
        serde_json::to_string_pretty(baseline).map_err(|source| AgentError::Unencodable {
            what: "the Postfix baseline",
            source,
        })?;
    files::write_durably(path, &text)
}

fn log_learned(learned: &[String]) {
    for setting in learned {
        info!(%setting, "the site changed a managed setting: kept as its own, restored when no incident holds the MTA");
    }
}

impl Mta for Postfix {
    /// Notes the values about to be written as the agent's own (durably, before
    /// `postconf` runs), then applies them; normal service, once applied, leaves nothing
    /// of the agent's in the files.
    fn apply(&self, held: &Held) -> Result<(), AgentError> {
        let edits = {
            let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
            let edits = render(held, &baseline, &self.target);
            if baseline.note_written(&edits) {
                save_baseline(&self.baseline_file, &baseline)?;
            }
            edits
        };
        let changed = apply_edits(
            &self.config_dir,
            &self.queue_directory,
            &self.target.mailbox_transport,
            &edits,
        )?;
        match held {
            // Retry every deferred message now rather than at its next scheduled attempt.
            Held::Releasing { .. } => self.flush()?,
            // The held domains changed: the mail of those released goes out now; what is
            // still held is deferred again (see the module's documentation).
            Held::Incident { document } if changed && !document.covers_everyone() => {
                self.flush()?
            }
            Held::Normal => {
                let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
                if !baseline.written.is_empty() {
                    baseline.written.clear();
                    save_baseline(&self.baseline_file, &baseline)?;
                }
            }
            Held::Incident { .. } => {}
        }
        Ok(())
    }

    /// Read from the queue files (see [`super::postfix_queue`]), so this also works on a
    /// stopped MTA, at a lower priority; a huge queue is counted, never held in memory.
    /// While scoped rules hold, only messages with a recipient in a held domain are
    /// counted (see [`Held::counts`]).
    fn queue(&self, held: &Held) -> Result<Option<QueueFigures>, AgentError> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let scope = held.held_scope();
        at_low_priority(|| postfix_queue::measure(&self.queue_directory, scope.as_deref(), now))
            .map(Some)
    }

    /// The managed settings as `postconf -n` and `postconf -F` show them now; the site's
    /// new values are learned into the baseline on the way (see [`read_back`]).
    fn drift(&self, held: &Held) -> Result<Vec<Difference>, AgentError> {
        let current = Baseline::of_instance(&self.config_dir, &self.target.mailbox_transport)?;
        let mut baseline = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        let read = read_back(&baseline, &current, held, &self.target);
        if read.baseline != *baseline {
            save_baseline(&self.baseline_file, &read.baseline)?;
            log_learned(&read.learned);
            *baseline = read.baseline;
        }
        Ok(read.differences)
    }
}

/// What reading the managed settings back found.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadBack {
    /// The recorded baseline, with the site's new values learned.
    pub baseline: Baseline,
    /// The settings learned, as `name = value` in a few words.
    pub learned: Vec<String>,
    /// Where the instance differs from what `held` needs (to be put back).
    pub differences: Vec<Difference>,
}

/// Compares what the instance runs (`current`) with the `recorded` baseline and what
/// `held` needs. A value that is neither the baseline's nor one the agent wrote is the
/// site's: learned into the baseline, except, while an incident or its release holds the
/// MTA, a `defer_transports` listing the mailbox transport or recipient restrictions
/// without the agent's policy clause (see the module's documentation). Every value other
/// than what `held` needs is a difference, learned or not.
pub fn read_back(
    recorded: &Baseline,
    current: &Baseline,
    held: &Held,
    target: &Target,
) -> ReadBack {
    let mut baseline = recorded.clone();
    let mut learned = Vec::new();
    let in_normal = *held == Held::Normal;
    for name in MANAGED {
        let found = current.get(name);
        if found == recorded.get(name) || recorded.wrote(name, found) {
            continue;
        }
        let safe_to_keep = match name {
            "defer_transports" => !found.is_some_and(|list| {
                list_contains(list, HOLD_TRANSPORT)
                    || list_contains(list, &target.mailbox_transport)
                        && !recorded
                            .get(name)
                            .is_some_and(|list| list_contains(list, &target.mailbox_transport))
            }),
            TRANSPORT_MAPS => !found.is_some_and(|maps| maps.contains(HOLD_TRANSPORT)),
            RESTRICTIONS => found.is_some_and(|restrictions| {
                with_policy_fallback(restrictions, &target.policy_service, "DUNNO").is_some()
            }),
            _ => true,
        };
        if in_normal || safe_to_keep {
            baseline
                .main
                .insert(name.to_string(), found.map(str::to_string));
            learned.push(format!("main.cf {name} = {}", found.unwrap_or("(absent)")));
        }
    }
    if current.process_limit != recorded.process_limit
        && !recorded.wrote(PROCESS_LIMIT, Some(&current.process_limit))
    {
        baseline.process_limit.clone_from(&current.process_limit);
        learned.push(format!(
            "master.cf {} process_limit = {}",
            target.mailbox_transport, current.process_limit
        ));
    }
    let wanted = render(held, &baseline, target);
    let mut differences: Vec<Difference> = wanted
        .main
        .iter()
        .filter(|(name, value)| current.get(name) != value.as_deref())
        .map(|(name, value)| Difference {
            kind: if *name == RESTRICTIONS {
                DriftKind::Answer
            } else {
                DriftKind::Queue
            },
            what: differs(
                &format!("main.cf {name}"),
                current.get(name),
                value.as_deref(),
            ),
        })
        .collect();
    if current.process_limit != wanted.process_limit {
        differences.push(Difference {
            kind: DriftKind::Queue,
            what: differs(
                &format!("master.cf {} process_limit", target.mailbox_transport),
                Some(&current.process_limit),
                Some(&wanted.process_limit),
            ),
        });
    }
    ReadBack {
        baseline,
        learned,
        differences,
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
/// their sessions, new ones answer in the new mode; nothing restarts. The reload waits
/// for a moment with no SMTP session open (see [`wait_for_no_smtp_session`]). It is
/// always made, so that an apply cut short between the edit and the reload is completed.
/// Whether any setting was changed.
///
/// The reload is the master's SIGHUP (its pid file is `pid/master.pid` in the
/// `queue_directory`), which is all `postfix reload` does for a configuration, without
/// the `postsuper` that script then starts in the background: a check of every queue
/// file's name and place, which on a queue of a million messages reads the whole spool
/// for minutes at each switch, and renames files under the agent's queue scan. The apply
/// ends when the master runs a new queue manager (see [`wait_for_new_queue_manager`]).
pub fn apply_edits(
    config_dir: &Path,
    queue_directory: &Path,
    mailbox_transport: &str,
    edits: &Edits,
) -> Result<bool, AgentError> {
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
    wait_for_no_smtp_session(config_dir)?;
    let pid_file = queue_directory.join("pid/master.pid");
    let master = main_process(&pid_file)?;
    let before = children_named(master, QUEUE_MANAGER);
    hang_up(master, &pid_file)?;
    if let Some(before) = before {
        wait_for_new_queue_manager(master, &before);
    }
    Ok(changes != Changes::default())
}

/// The queue manager's command name.
const QUEUE_MANAGER: &str = "qmgr";
/// How long an apply waits for the master to replace its queue manager, at most.
const QUEUE_MANAGER_WAIT: Duration = Duration::from_secs(5);

/// Waits (at most [`QUEUE_MANAGER_WAIT`]) until the `master` runs a queue manager that is
/// none of those it ran `before` its SIGHUP. The master reads the signal in its own time
/// (tens of milliseconds) and then replaces its children: a flush (`postqueue -f`) made
/// before that is served by the old queue manager under the old settings, which defers a
/// domain just released again, to its next retry minutes later. Where the processes
/// cannot be read, it returns at once.
fn wait_for_new_queue_manager(master: rustix::process::Pid, before: &[i32]) {
    let deadline = Instant::now() + QUEUE_MANAGER_WAIT;
    while let Some(now) = children_named(master, QUEUE_MANAGER)
        && !now.iter().any(|pid| !before.contains(pid))
    {
        if Instant::now() >= deadline {
            warn!(
                waited = ?QUEUE_MANAGER_WAIT,
                "the Postfix master runs no new queue manager since the reload"
            );
            return;
        }
        std::thread::sleep(QUIET_POLL);
    }
}

/// How long a reload waits for a moment with no SMTP session open, at most: the hold of
/// queued mail (`defer_transports`) takes effect with the reload, so it is not put off
/// for long on an MTA that is never idle.
const QUIET_WAIT: Duration = Duration::from_secs(2);
const QUIET_POLL: Duration = Duration::from_millis(10);

/// Waits (at most [`QUIET_WAIT`]) until no SMTP session is open on any of Postfix's
/// `inet` services. A reload ends trivial-rewrite at once (a `multi_server` exits when
/// the master closes its status pipe); an smtpd whose address rewrite or resolve request
/// is under way then gets no answer and sleeps a whole second before it asks again, so
/// the session in flight stalls for a second at MAIL FROM or RCPT TO. The RCPT answer
/// itself follows the intent without a reload (see [`super::policy`]): nothing a sender
/// sees waits for this. Sessions are read from the socket table of the network namespace
/// the agent shares with Postfix; where it cannot be read, the reload is made at once.
fn wait_for_no_smtp_session(config_dir: &Path) -> Result<(), AgentError> {
    let ports = smtp_ports(
        &run_command(postconf(config_dir).arg("-M"))?,
        &std::fs::read_to_string("/etc/services").unwrap_or_default(),
    );
    let deadline = Instant::now() + QUIET_WAIT;
    loop {
        let Ok(v4) = procfs::net::tcp() else {
            return Ok(());
        };
        // A namespace without IPv6 has no tcp6 table.
        let v6 = procfs::net::tcp6().unwrap_or_default();
        let open = open_sessions(
            v4.iter()
                .chain(&v6)
                .map(|socket| (socket.local_address.port(), socket.state.clone())),
            &ports,
        );
        if open == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            info!(
                open,
                "SMTP sessions stayed open for {QUIET_WAIT:?}; reloading Postfix while they run"
            );
            return Ok(());
        }
        std::thread::sleep(QUIET_POLL);
    }
}

/// The ports of the `inet` services in `postconf -M` output (`smtp`, `127.0.0.1:2525`,
/// `[::1]:submission`), a name's port read from `services` (`/etc/services`).
fn smtp_ports(postconf_m: &str, services: &str) -> BTreeSet<u16> {
    let named: BTreeMap<&str, u16> = services
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let port = fields.next()?.strip_suffix("/tcp")?.parse().ok()?;
            Some(
                std::iter::once(name)
                    .chain(fields)
                    .map(move |alias| (alias, port)),
            )
        })
        .flatten()
        .collect();
    postconf_m
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let service = fields.next()?;
            (fields.next()? == "inet").then_some(service)
        })
        .filter_map(|service| {
            let port = service.rsplit_once(':').map_or(service, |(_, port)| port);
            port.parse().ok().or_else(|| named.get(port).copied())
        })
        .collect()
}

/// How many TCP connections (`(local port, state)`) are SMTP sessions on `ports`,
/// opening or open.
fn open_sessions(sockets: impl Iterator<Item = (u16, TcpState)>, ports: &BTreeSet<u16>) -> usize {
    sockets
        .filter(|(port, state)| {
            ports.contains(port)
                && matches!(
                    state,
                    TcpState::Established | TcpState::SynRecv | TcpState::NewSynRecv
                )
        })
        .count()
}

/// Marks a configuration file `postconf` has just replaced as settled. Every Postfix
/// process that reads a configuration file changed less than about two seconds ago
/// waits, 300 ms at a time, until it is older (a guard against half-edited files); the
/// new smtpd processes of a reload would hold each new SMTP session that long, the
/// RCPT answer of the policy service included. `postconf` replaces the file whole, so
/// there is nothing to wait for.
fn settle(path: &Path) -> Result<(), AgentError> {
    let settled = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(settled))
        .map_err(AgentError::file(FileAction::Backdate, path))
}

/// Whether a Postfix list (comma or whitespace separated) holds `item`.
fn list_contains(list: &str, item: &str) -> bool {
    list.split([',', ' ', '\t']).any(|entry| entry == item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fixtures::{document, held, rules};

    const BASELINE: &str = "\
alias_maps = hash:/etc/aliases
maximal_queue_lifetime = 3d
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
mydestination = example.org
";

    fn baseline(postconf_n: &str) -> Baseline {
        Baseline::read(postconf_n, "lmtp/unix/process_limit = -")
    }

    fn target() -> Target {
        Target::new("lmtp", "127.0.0.1:10040".parse().unwrap())
    }

    /// A site's main.cf with the agent's policy clause, as `postconf -n` shows it.
    const WITH_POLICY: &str = "\
maximal_queue_lifetime = 3d
smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination
";

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
        let edits = render(&Held::Normal, &baseline, &target());
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
            &target(),
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
            &target(),
        );
        assert_eq!(
            edits.value(RESTRICTIONS),
            Some("permit_mynetworks, reject_unauth_destination"),
            "no policy clause to fall back from: the site's own restrictions"
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
            &target(),
        );
        assert_eq!(edits.value("soft_bounce"), Some("no"));
        assert_eq!(edits.value("defer_transports"), Some("lmtp"));
    }

    #[test]
    fn only_what_differs_is_edited() {
        let now = baseline(BASELINE);
        let unchanged = render(&Held::Normal, &now, &target());
        assert_eq!(changes(&now, &unchanged), Changes::default());
        let hold = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &now,
            &target(),
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
        let during = Baseline::read(
            &format!(
                "{}\nsmtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination",
                changed.set.join("\n")
            ),
            "lmtp/unix/process_limit = 4",
        );
        let back = changes(&during, &unchanged);
        assert_eq!(back.set, ["maximal_queue_lifetime = 3d"]);
        assert_eq!(
            back.unset,
            ["bounce_queue_lifetime", "defer_transports", "soft_bounce"]
        );
        assert_eq!(back.process_limit.as_deref(), Some("-"));
    }

    #[test]
    fn the_smtp_ports_are_those_of_the_inet_services_by_number_or_name() {
        let master = "\
smtp       inet  n       -       y       -       -       smtpd
127.0.0.1:2525 inet n    -       n       -       -       smtpd
[::1]:submission inet n  -       n       -       -       smtpd -o syslog_name=postfix/submission
pickup     unix  n       -       y       60      1       pickup
unknown    inet  n       -       n       -       -       smtpd
";
        let services = "\
# Network services, Internet style
smtp\t\t25/tcp\t\tmail
submissions\t465/tcp\t\tssmtp smtps # over TLS
submission\t587/tcp
syslog\t\t514/udp
";
        assert_eq!(
            smtp_ports(master, services),
            BTreeSet::from([25, 587, 2525]),
            "an unknown name has no port; unix services are not SMTP"
        );
    }

    #[test]
    fn only_sessions_on_the_smtp_ports_count() {
        let ports = BTreeSet::from([25]);
        let sockets = [
            (25, TcpState::Listen),
            (25, TcpState::Established),
            (25, TcpState::SynRecv),
            (25, TcpState::TimeWait),
            (10040, TcpState::Established),
        ];
        assert_eq!(open_sessions(sockets.into_iter(), &ports), 2);
        assert_eq!(
            open_sessions([(25, TcpState::CloseWait)].into_iter(), &ports),
            0,
            "a session the client has ended holds no request"
        );
    }

    #[test]
    fn an_existing_defer_list_is_extended_not_replaced() {
        let smtp = baseline("defer_transports = smtp\n");
        let edits = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &smtp,
            &target(),
        );
        assert_eq!(edits.value("defer_transports"), Some("smtp, lmtp"));
        let already = baseline("defer_transports = lmtp smtp\n");
        let edits = render(
            &held(&document(Mode::AcceptAndQueue, 452, "4.3.1")),
            &already,
            &target(),
        );
        assert_eq!(edits.value("defer_transports"), Some("lmtp smtp"));
    }

    #[test]
    fn a_release_lifts_the_hold_but_keeps_the_lifetimes_and_paces_delivery() {
        let baseline = baseline(BASELINE);
        let releasing = held(&document(Mode::TempFail, 452, "4.3.1")).next(None, 100);
        let edits = render(&releasing, &baseline, &target());
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
        assert_eq!(
            render(&Held::Normal, &baseline, &target()).process_limit,
            "-"
        );
        let limited = Baseline::read("", "lmtp/unix/process_limit = 20");
        assert_eq!(
            render(&Held::Normal, &limited, &target()).process_limit,
            "20"
        );
    }

    /// What `postconf -n` and `-F` show once `edits` are applied.
    fn running(edits: &Edits) -> Baseline {
        Baseline {
            main: edits
                .main
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone()))
                .collect(),
            process_limit: edits.process_limit.clone(),
            written: BTreeMap::new(),
        }
    }

    /// `instance` with `name` set to `value` by another hand.
    fn edited(instance: &Baseline, name: &str, value: Option<&str>) -> Baseline {
        let mut edited = instance.clone();
        edited
            .main
            .insert(name.to_string(), value.map(str::to_string));
        edited
    }

    #[test]
    fn the_policy_clause_falls_back_to_the_action_given_keeping_its_other_attributes() {
        let service = "inet:127.0.0.1:10040";
        let action = "452 4.3.1 Mailbox storage down, try later";
        assert_eq!(
            with_policy_fallback(
                "check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }, permit_mynetworks",
                service,
                action
            )
            .as_deref(),
            Some(
                "check_policy_service { inet:127.0.0.1:10040, { default_action = 452 4.3.1 Mailbox storage down, try later } }, permit_mynetworks"
            )
        );
        // Other attributes stay; a braced default_action is replaced as a bare one is.
        assert_eq!(
            with_policy_fallback(
                "reject_unauth_pipelining check_policy_service {inet:127.0.0.1:10040,timeout=10s, { default_action = DUNNO }}",
                service,
                "451 4.3.0 x"
            )
            .as_deref(),
            Some(
                "reject_unauth_pipelining check_policy_service { inet:127.0.0.1:10040, timeout=10s, { default_action = 451 4.3.0 x } }"
            )
        );
        // The plain form gets a group.
        assert_eq!(
            with_policy_fallback(
                "check_policy_service inet:127.0.0.1:10040, permit",
                service,
                "451 4.3.0 x"
            )
            .as_deref(),
            Some(
                "check_policy_service { inet:127.0.0.1:10040, { default_action = 451 4.3.0 x } }, permit"
            )
        );
        // Another policy service is not the agent's; no clause, or unbalanced braces: nothing.
        let other = "check_policy_service { inet:127.0.0.1:9998, default_action=DUNNO }, permit";
        assert_eq!(with_policy_fallback(other, service, "451 4.3.0 x"), None);
        assert_eq!(
            with_policy_fallback("permit_mynetworks", service, "x"),
            None
        );
        assert_eq!(
            with_policy_fallback("check_policy_service { inet:127.0.0.1:10040", service, "x"),
            None
        );
    }

    #[test]
    fn refusing_modes_make_the_policy_fallback_soft_and_others_keep_the_sites_own() {
        let site = baseline(WITH_POLICY);
        let restrictions = |held: &Held| {
            render(held, &site, &target())
                .value(RESTRICTIONS)
                .unwrap()
                .to_string()
        };
        assert!(
            restrictions(&held(&document(Mode::TempFail, 452, "4.3.1")))
                .starts_with("check_policy_service { inet:127.0.0.1:10040, { default_action = 452 4.3.1 Mailbox storage temporarily unavailable, try again later } }, permit_mynetworks"),
        );
        assert!(
            restrictions(&held(&document(Mode::HardReject, 550, "5.3.2")))
                .contains("{ default_action = 451 4.3.0 Mailbox storage"),
            "HardReject fails soft without the agent"
        );
        let own = site.get(RESTRICTIONS).unwrap();
        assert_eq!(
            restrictions(&held(&document(Mode::AcceptAndQueue, 452, "4.3.1"))),
            own
        );
        assert_eq!(restrictions(&Held::Normal), own);
    }

    #[test]
    fn a_read_back_of_what_was_applied_finds_nothing_and_learns_nothing() {
        let mut recorded = baseline(WITH_POLICY);
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        let edits = render(&temp_fail, &recorded, &target());
        assert!(recorded.note_written(&edits));
        let read = read_back(&recorded, &running(&edits), &temp_fail, &target());
        assert_eq!(read.differences, []);
        assert_eq!(read.baseline, recorded);
    }

    #[test]
    fn a_hand_edit_during_an_incident_is_put_back_and_kept_for_after_it() {
        let mut recorded = baseline(WITH_POLICY);
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        let edits = render(&temp_fail, &recorded, &target());
        recorded.note_written(&edits);
        let instance = edited(&running(&edits), "maximal_queue_lifetime", Some("9d"));
        let read = read_back(&recorded, &instance, &temp_fail, &target());
        assert_eq!(read.differences.len(), 1);
        assert_eq!(read.differences[0].kind, DriftKind::Queue);
        assert_eq!(
            read.differences[0].what,
            "main.cf maximal_queue_lifetime = \"9d\", want \"30d\""
        );
        // The incident's value is put back; the end of the incident restores the 9d.
        assert_eq!(
            render(&temp_fail, &read.baseline, &target()),
            edits,
            "the incident's values win while it holds"
        );
        assert_eq!(
            render(&Held::Normal, &read.baseline, &target()).value("maximal_queue_lifetime"),
            Some("9d")
        );
        assert_eq!(read.learned, ["main.cf maximal_queue_lifetime = 9d"]);
    }

    #[test]
    fn values_the_agent_wrote_or_that_would_hold_mail_for_good_are_never_learned() {
        let mut recorded = baseline(WITH_POLICY);
        let reject = held(&document(Mode::HardReject, 550, "5.3.2"));
        recorded.note_written(&render(&reject, &recorded, &target()));
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        let edits = render(&temp_fail, &recorded, &target());
        recorded.note_written(&edits);
        // HardReject's soft_bounce = no, left by an apply cut short: the agent's own.
        let instance = edited(&running(&edits), "soft_bounce", Some("no"));
        let read = read_back(&recorded, &instance, &temp_fail, &target());
        assert_eq!(read.learned, Vec::<String>::new());
        assert_eq!(read.differences.len(), 1);
        // A defer list holding the mailbox transport would never deliver again.
        let instance = edited(&running(&edits), "defer_transports", Some("smtp, lmtp"));
        let read = read_back(&recorded, &instance, &temp_fail, &target());
        assert_eq!(read.baseline, recorded);
        assert_eq!(read.differences.len(), 1);
        // Restrictions without the policy clause: the incident could not refuse mail.
        let instance = edited(&running(&edits), RESTRICTIONS, Some("permit_mynetworks"));
        let read = read_back(&recorded, &instance, &temp_fail, &target());
        assert_eq!(read.baseline, recorded);
        assert_eq!(read.differences[0].kind, DriftKind::Answer);
        assert!(
            read.differences[0]
                .what
                .starts_with("main.cf smtpd_recipient_restrictions = \"permit_mynetworks\", want "),
            "{:?}",
            read.differences
        );
    }

    #[test]
    fn a_new_main_cf_from_the_site_becomes_the_baseline_and_in_normal_service_stays() {
        let mut recorded = baseline(WITH_POLICY);
        let temp_fail = held(&document(Mode::TempFail, 452, "4.3.1"));
        recorded.note_written(&render(&temp_fail, &recorded, &target()));
        // A new pod: the site's fresh main.cf, with a new lifetime and restrictions.
        let fresh = baseline(
            "maximal_queue_lifetime = 7d\nsmtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }, permit_mynetworks, reject_rbl_client rbl.example\n",
        );
        let read = read_back(&recorded, &fresh, &temp_fail, &target());
        assert_eq!(read.learned.len(), 2, "{:?}", read.learned);
        let back = render(&Held::Normal, &read.baseline, &target());
        assert_eq!(back.value("maximal_queue_lifetime"), Some("7d"));
        assert_eq!(back.value(RESTRICTIONS), fresh.get(RESTRICTIONS));
        assert!(
            render(&temp_fail, &read.baseline, &target())
                .value(RESTRICTIONS)
                .unwrap()
                .ends_with("default_action = 452 4.3.1 Mailbox storage temporarily unavailable, try again later } }, permit_mynetworks, reject_rbl_client rbl.example")
        );
        // In normal service the site's edits are its own: learned, never put back.
        let mut normal = baseline(WITH_POLICY);
        normal.note_written(&render(&Held::Normal, &normal, &target()));
        let site = edited(&fresh, "soft_bounce", Some("yes"));
        let read = read_back(&normal, &site, &Held::Normal, &target());
        assert_eq!(read.differences, []);
        assert_eq!(read.baseline.get("soft_bounce"), Some("yes"));
        // A site's new process limit is learned as well.
        let mut limited = running(&render(&temp_fail, &recorded, &target()));
        limited.process_limit = "20".into();
        let read = read_back(&recorded, &limited, &temp_fail, &target());
        assert_eq!(read.baseline.process_limit, "20");
        assert_eq!(read.differences, []);
    }

    #[test]
    fn a_baseline_recorded_before_a_setting_was_managed_takes_the_instances_value() {
        let mut old: Baseline = serde_json::from_str(
            r#"{"main": {"soft_bounce": null, "defer_transports": null, "maximal_queue_lifetime": "3d", "bounce_queue_lifetime": null}, "processLimit": "-"}"#,
        )
        .unwrap();
        old.complete_from(&baseline(WITH_POLICY));
        assert_eq!(old, baseline(WITH_POLICY));
    }

    fn scoped(mode: Mode) -> Held {
        held(&rules(&[(
            mode,
            452,
            "4.3.1",
            &["pec.e2e.test", "*.storage.e2e.test"],
        )]))
    }

    const HOLD_MAP: &str = "regexp:{ {/@pec\\.e2e\\.test$$/ mail-incident-hold:}, {/\\.storage\\.e2e\\.test$$/ mail-incident-hold:} }";

    #[test]
    fn a_scoped_hold_routes_only_its_domains_to_the_deferred_hold_transport() {
        let site = baseline(&format!(
            "{WITH_POLICY}transport_maps = hash:/etc/postfix/transport\ndefer_transports = smtp\n"
        ));
        let edits = render(&scoped(Mode::AcceptAndQueue), &site, &target());
        assert_eq!(
            edits.value(TRANSPORT_MAPS),
            Some(format!("{HOLD_MAP}, hash:/etc/postfix/transport").as_str()),
            "ours first, the site's after"
        );
        assert_eq!(
            edits.value("defer_transports"),
            Some("smtp, mail-incident-hold"),
            "the mailbox transport keeps delivering other domains"
        );
        assert_eq!(edits.main.get("soft_bounce"), Some(&None), "the site's own");
        assert_eq!(edits.value("maximal_queue_lifetime"), Some("30d"));
        assert_eq!(
            edits.value(RESTRICTIONS),
            site.get(RESTRICTIONS),
            "no fallback: nobody's mail is refused for a dead agent"
        );
        // Without a site map, ours alone; a scoped HardReject turns soft_bounce off.
        let edits = render(&scoped(Mode::HardReject), &baseline(WITH_POLICY), &target());
        assert_eq!(edits.value(TRANSPORT_MAPS), Some(HOLD_MAP));
        assert_eq!(edits.value("soft_bounce"), Some("no"));
        // A rule for everyone behind a scoped one: the whole mailbox transport is held.
        let everyone = held(&rules(&[
            (Mode::HardReject, 550, "5.3.2", &["pec.e2e.test"]),
            (Mode::AcceptAndQueue, 452, "4.3.1", &[]),
        ]));
        let edits = render(&everyone, &baseline(WITH_POLICY), &target());
        assert_eq!(edits.main.get(TRANSPORT_MAPS), Some(&None));
        assert_eq!(edits.value("defer_transports"), Some("lmtp"));
        assert_eq!(edits.value("soft_bounce"), Some("no"));
    }

    #[test]
    fn a_scoped_release_and_normal_service_give_the_site_its_transport_maps_back() {
        let site = baseline("transport_maps = hash:/etc/postfix/transport\n");
        let releasing = scoped(Mode::TempFail).next(None, 100);
        let edits = render(&releasing, &site, &target());
        assert_eq!(
            edits.value(TRANSPORT_MAPS),
            Some("hash:/etc/postfix/transport")
        );
        assert_eq!(edits.main.get("defer_transports"), Some(&None));
        assert_eq!(edits.process_limit, "4");
        assert_eq!(edits.value("soft_bounce"), Some("yes"));
        let back = render(&Held::Normal, &site, &target());
        assert_eq!(
            back.value(TRANSPORT_MAPS),
            Some("hash:/etc/postfix/transport")
        );
        assert_eq!(back.main.get("soft_bounce"), Some(&None));
    }

    #[test]
    fn a_hold_map_is_read_back_as_the_agents_own_and_never_learned_from_another_hand() {
        let mut recorded = baseline(WITH_POLICY);
        let holding = scoped(Mode::AcceptAndQueue);
        let edits = render(&holding, &recorded, &target());
        recorded.note_written(&edits);
        let read = read_back(&recorded, &running(&edits), &holding, &target());
        assert_eq!(read.differences, []);
        assert_eq!(read.baseline, recorded);
        // A hold map left behind (a copy of ours, a restore from a backup) is put back
        // to the baseline's, never kept as the site's.
        let stale = format!("{HOLD_MAP}, hash:/old");
        for (name, value) in [
            (TRANSPORT_MAPS, stale.as_str()),
            ("defer_transports", "smtp, mail-incident-hold"),
        ] {
            let instance = edited(&running(&edits), name, Some(value));
            let read = read_back(&recorded, &instance, &holding, &target());
            assert_eq!(read.baseline, recorded, "{name}");
            assert_eq!(read.learned, Vec::<String>::new(), "{name}");
            assert_eq!(read.differences.len(), 1, "{name}");
        }
        // The site's own new map is learned and kept behind ours.
        let instance = edited(
            &running(&edits),
            TRANSPORT_MAPS,
            Some("hash:/etc/postfix/transport"),
        );
        let read = read_back(&recorded, &instance, &holding, &target());
        assert_eq!(
            read.learned,
            ["main.cf transport_maps = hash:/etc/postfix/transport"]
        );
        assert_eq!(
            render(&holding, &read.baseline, &target()).value(TRANSPORT_MAPS),
            Some(format!("{HOLD_MAP}, hash:/etc/postfix/transport").as_str())
        );
    }
}
