//! The controller's own check of a spec: the third validation layer, after the OpenAPI
//! schema and the CEL rules. API servers older than 1.25 ignore CEL rules, so every rule
//! is checked again here; a spec that passes becomes a [`ValidIncident`] that the rest of
//! the controller works with, so no later step can act on an unchecked field.

use super::{
    incident::{Escalation, LabelOperator, LabelRequirement, MailIncidentSpec, Mode, Targets},
    scope::{DomainPattern, MAX_SCOPE_DOMAINS},
    time_span::TimeSpan,
};
use k8s_openapi::jiff::Timestamp;
use kube::core::{Expression, Selector};
use std::fmt;

/// Longest queue lifetime accepted (Postfix accepts more, but past 100 days a message is
/// better returned than kept). The CEL rules say the same in seconds: 8640000.
pub const MAX_QUEUE_LIFETIME: TimeSpan = TimeSpan::from_days(100);
/// Longest an incident may last, by spec.duration or spec.expiresAt, counted from its
/// start: what a queue can hold. A longer outage takes a new incident, a new decision.
pub const MAX_INCIDENT_DURATION: TimeSpan = MAX_QUEUE_LIFETIME;
/// Furthest ahead of its creation an incident may be scheduled (spec.startsAt): a window
/// further off is a plan, not an incident.
pub const MAX_SCHEDULE_AHEAD: TimeSpan = TimeSpan::from_days(100);
/// Largest spec.escalation.maxOldestMessageAge: an older message has been returned to its
/// sender already, whatever the lifetimes.
pub const MAX_OLDEST_MESSAGE_AGE: TimeSpan = MAX_QUEUE_LIFETIME;
/// Largest spec.escalation.maxQueuedMessages (also in the schema): far past any real MTA
/// queue, so a larger limit can only be a typo.
pub const MAX_QUEUED_MESSAGES: u64 = 100_000_000;
/// Longest reply text: with the longest codes (`452 4.123.123 `, 14 characters) the reply
/// line stays within the 75 characters Exim sends on one line (it wraps a longer ACL
/// message at spaces, where Postfix sends any length whole), so senders read the same
/// reply from every MTA.
pub const MAX_REPLY_TEXT: usize = 61;
const TEMP_FAIL_CODES: [u16; 4] = [421, 450, 451, 452];
const HARD_REJECT_CODES: [u16; 6] = [521, 550, 552, 553, 554, 556];

/// One problem with one field, named by its path from the object root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The SMTP reply an MTA gives at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced_code: String,
    pub text: String,
}

impl Reply {
    /// The reply used for a mode when the spec leaves a field out.
    pub fn default_for(mode: Mode) -> Self {
        match mode {
            Mode::AcceptAndQueue | Mode::TempFail => Self {
                code: 452,
                enhanced_code: "4.3.1".into(),
                text: "Mailbox storage temporarily unavailable, try again later".into(),
            },
            Mode::HardReject => Self {
                code: 550,
                enhanced_code: "5.3.2".into(),
                text: "Mailbox storage unavailable, message not accepted".into(),
            },
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced_code, self.text)
    }
}

/// A spec that passed every check, with its fields parsed.
#[derive(Debug, Clone)]
pub struct ValidIncident {
    pub mode: Mode,
    /// The reply for TempFail and HardReject; for AcceptAndQueue, the reply an escalation
    /// to TempFail uses.
    pub reply: Reply,
    pub queue_lifetime: TimeSpan,
    pub bounce_lifetime: TimeSpan,
    pub selector: Selector,
    /// The recipient domains covered, as written (sorted); `None`: every recipient.
    pub scope: Option<Vec<DomainPattern>>,
    /// When the incident takes effect, if it was scheduled.
    pub starts_at: Option<Timestamp>,
    /// When the incident ends by itself, if it does.
    pub expires_at: Option<Timestamp>,
    pub resolved: bool,
    /// Queue limits turning AcceptAndQueue targets into TempFail.
    pub escalation: Option<EscalationLimits>,
    /// Deliveries each MTA runs at once while releasing held mail.
    pub release_concurrency: u16,
}

/// The range of spec.release.concurrency (also in the schema).
pub const RELEASE_CONCURRENCY: std::ops::RangeInclusive<u16> = 1..=100;

/// spec.escalation, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscalationLimits {
    pub max_queued_messages: Option<u64>,
    pub max_oldest_message_age: Option<TimeSpan>,
}

/// Checks a spec; `created` is the object's creation time, the start of `spec.duration`.
/// Returns every problem found, not only the first, so one round trip fixes them all.
pub fn validate(
    spec: &MailIncidentSpec,
    created: Option<Timestamp>,
) -> Result<ValidIncident, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut fail =
        |field: &'static str, message: String| errors.push(FieldError { field, message });

    if spec.reason.trim().is_empty() {
        fail(
            "spec.reason",
            "must say why the incident was declared".into(),
        );
    }
    if spec.mode == Mode::HardReject
        && !spec
            .hard_reject
            .as_ref()
            .is_some_and(|h| h.acknowledge_bounces)
    {
        fail(
            "spec.hardReject.acknowledgeBounces",
            "must be true for mode HardReject: every 5xx answer makes the sender bounce the mail for good".into(),
        );
    }

    let selector = match selector_of(&spec.targets) {
        Ok(selector) => Some(selector),
        Err(e) => {
            fail(e.field, e.message);
            None
        }
    };

    let queue_lifetime = bounded_span(
        "spec.queue.lifetime",
        &spec.queue.lifetime,
        MAX_QUEUE_LIFETIME,
        &mut fail,
    );
    let bounce_lifetime = bounded_span(
        "spec.queue.bounceLifetime",
        &spec.queue.bounce_lifetime,
        MAX_QUEUE_LIFETIME,
        &mut fail,
    );

    let reply = reply_of(spec, &mut fail);
    let escalation = spec
        .escalation
        .as_ref()
        .and_then(|e| escalation_of(spec.mode, e, &mut fail));

    if !RELEASE_CONCURRENCY.contains(&spec.release.concurrency) {
        fail(
            "spec.release.concurrency",
            format!(
                "{} is outside {}..={}",
                spec.release.concurrency,
                RELEASE_CONCURRENCY.start(),
                RELEASE_CONCURRENCY.end()
            ),
        );
    }

    let scope = spec
        .scope
        .as_ref()
        .and_then(|scope| scope_of(&scope.recipient_domains, &mut fail));

    let starts_at = spec
        .starts_at
        .as_ref()
        .and_then(|at| start_at(at.0, created, &mut fail));
    // Expiry counts from the start: the scheduled one, or the creation.
    let start = starts_at.or(created);
    let expires_at = match (&spec.expires_at, &spec.duration) {
        (Some(_), Some(_)) => {
            fail(
                "spec.duration",
                "spec.expiresAt and spec.duration are alternatives: set at most one".into(),
            );
            None
        }
        (Some(at), None) => expiry_at(at.0, start, starts_at.is_some(), &mut fail),
        (None, Some(text)) => bounded_span("spec.duration", text, MAX_INCIDENT_DURATION, &mut fail)
            .and_then(|span| expiry_after(span, start?, &mut fail)),
        (None, None) => None,
    };

    match (selector, queue_lifetime, bounce_lifetime) {
        (Some(selector), Some(queue_lifetime), Some(bounce_lifetime)) if errors.is_empty() => {
            Ok(ValidIncident {
                mode: spec.mode,
                reply,
                queue_lifetime,
                bounce_lifetime,
                selector,
                scope,
                starts_at,
                expires_at,
                resolved: spec.resolved,
                escalation,
                release_concurrency: spec.release.concurrency,
            })
        }
        _ => Err(errors),
    }
}

/// A time span field, parsed and at most `max`.
fn bounded_span(
    field: &'static str,
    text: &str,
    max: TimeSpan,
    fail: &mut impl FnMut(&'static str, String),
) -> Option<TimeSpan> {
    match text.parse::<TimeSpan>() {
        Ok(span) if span <= max => Some(span),
        Ok(_) => {
            fail(field, format!("{text} is longer than the maximum of {max}"));
            None
        }
        Err(e) => {
            fail(field, e.to_string());
            None
        }
    }
}

/// The latest end an incident starting at `start` may have. Saturates rather than
/// overflows, for a time near the end of representable time.
pub fn latest_expiry(start: Timestamp) -> Timestamp {
    start
        .checked_add(MAX_INCIDENT_DURATION.as_duration())
        .unwrap_or(Timestamp::MAX)
}

/// spec.expiresAt, at most MAX_INCIDENT_DURATION after the start, and after a scheduled
/// start. Without a start (an object no API server has stored) there is nothing to count
/// from.
fn expiry_at(
    at: Timestamp,
    start: Option<Timestamp>,
    scheduled: bool,
    fail: &mut impl FnMut(&'static str, String),
) -> Option<Timestamp> {
    let from = if scheduled {
        "spec.startsAt"
    } else {
        "the incident's creation"
    };
    match start {
        Some(start) if at > latest_expiry(start) => {
            fail(
                "spec.expiresAt",
                format!(
                    "{at} is more than {MAX_INCIDENT_DURATION} after {from} at {start}: an incident lasts at most {MAX_INCIDENT_DURATION}"
                ),
            );
            None
        }
        Some(start) if scheduled && at <= start => {
            fail(
                "spec.expiresAt",
                format!("{at} is not after spec.startsAt {start}: the window would never open"),
            );
            None
        }
        _ => Some(at),
    }
}

/// spec.startsAt, at most MAX_SCHEDULE_AHEAD after creation. A start before the creation
/// (a window re-applied from Git after it opened) takes effect at once.
fn start_at(
    at: Timestamp,
    created: Option<Timestamp>,
    fail: &mut impl FnMut(&'static str, String),
) -> Option<Timestamp> {
    let latest = created.map(|created| {
        created
            .checked_add(MAX_SCHEDULE_AHEAD.as_duration())
            .unwrap_or(Timestamp::MAX)
    });
    match (created, latest) {
        (Some(created), Some(latest)) if at > latest => {
            fail(
                "spec.startsAt",
                format!(
                    "{at} is more than {MAX_SCHEDULE_AHEAD} after the incident's creation at {created}: declare a window at most {MAX_SCHEDULE_AHEAD} ahead"
                ),
            );
            None
        }
        _ => Some(at),
    }
}

/// spec.scope.recipientDomains, each entry parsed, sorted; every problem is named.
fn scope_of(
    domains: &[String],
    fail: &mut impl FnMut(&'static str, String),
) -> Option<Vec<DomainPattern>> {
    const FIELD: &str = "spec.scope.recipientDomains";
    if domains.is_empty() || domains.len() > MAX_SCOPE_DOMAINS {
        fail(
            FIELD,
            format!(
                "lists {} domains: 1 to {MAX_SCOPE_DOMAINS} are allowed (leave spec.scope out to cover every recipient)",
                domains.len()
            ),
        );
        return None;
    }
    let mut patterns = Vec::with_capacity(domains.len());
    let mut problems = Vec::new();
    for domain in domains {
        match DomainPattern::parse(domain) {
            Ok(pattern) => patterns.push(pattern),
            Err(problem) => problems.push(problem),
        }
    }
    patterns.sort();
    let duplicates: Vec<String> = patterns
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0].to_string())
        .collect();
    if !duplicates.is_empty() {
        problems.push(format!("lists {} more than once", duplicates.join(", ")));
    }
    if !problems.is_empty() {
        problems.truncate(5);
        fail(FIELD, problems.join("; "));
        return None;
    }
    Some(patterns)
}

/// The end of an incident lasting `span` from `start`, if it can be represented.
fn expiry_after(
    span: TimeSpan,
    start: Timestamp,
    fail: &mut impl FnMut(&'static str, String),
) -> Option<Timestamp> {
    match start.checked_add(span.as_duration()) {
        Ok(at) => Some(at),
        Err(_) => {
            fail(
                "spec.duration",
                format!("{span} after the start at {start} is past the last representable time"),
            );
            None
        }
    }
}

fn escalation_of(
    mode: Mode,
    escalation: &Escalation,
    fail: &mut impl FnMut(&'static str, String),
) -> Option<EscalationLimits> {
    if mode != Mode::AcceptAndQueue {
        fail(
            "spec.escalation",
            "applies to mode AcceptAndQueue only".into(),
        );
        return None;
    }
    if escalation.max_queued_messages.is_none() && escalation.max_oldest_message_age.is_none() {
        fail(
            "spec.escalation",
            "needs maxQueuedMessages or maxOldestMessageAge".into(),
        );
        return None;
    }
    if let Some(max) = escalation
        .max_queued_messages
        .filter(|max| !(1..=MAX_QUEUED_MESSAGES).contains(max))
    {
        fail(
            "spec.escalation.maxQueuedMessages",
            format!("{max} is outside 1..={MAX_QUEUED_MESSAGES}"),
        );
        return None;
    }
    let max_oldest_message_age = match escalation.max_oldest_message_age.as_deref() {
        Some(text) => Some(bounded_span(
            "spec.escalation.maxOldestMessageAge",
            text,
            MAX_OLDEST_MESSAGE_AGE,
            fail,
        )?),
        None => None,
    };
    Some(EscalationLimits {
        max_queued_messages: escalation.max_queued_messages,
        max_oldest_message_age,
    })
}

fn reply_of(spec: &MailIncidentSpec, fail: &mut impl FnMut(&'static str, String)) -> Reply {
    let mut reply = Reply::default_for(spec.mode);
    let Some(given) = &spec.smtp_reply else {
        return reply;
    };
    let (class, codes): (char, &[u16]) = match spec.mode {
        Mode::HardReject => ('5', &HARD_REJECT_CODES),
        Mode::AcceptAndQueue | Mode::TempFail => ('4', &TEMP_FAIL_CODES),
    };
    if let Some(code) = given.code {
        if codes.contains(&code) {
            reply.code = code;
        } else {
            fail(
                "spec.smtpReply.code",
                format!(
                    "{code} is not allowed for mode {}; use one of {codes:?}",
                    spec.mode
                ),
            );
        }
    }
    if let Some(enhanced) = &given.enhanced_code {
        match enhanced_code_problem(enhanced, class) {
            None => reply.enhanced_code = enhanced.clone(),
            Some(problem) => fail("spec.smtpReply.enhancedCode", problem),
        }
    }
    if let Some(text) = &given.text {
        match reply_text_problem(text) {
            None => reply.text = text.clone(),
            Some(problem) => fail("spec.smtpReply.text", problem),
        }
    }
    reply
}

fn enhanced_code_problem(code: &str, class: char) -> Option<String> {
    let parts: Vec<&str> = code.split('.').collect();
    let well_formed = parts.len() == 3
        && parts[0].len() == 1
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Some(format!(
            "{code:?} is not an RFC 3463 code class.subject.detail"
        ));
    }
    if !code.starts_with(class) {
        return Some(format!("{code} must start with {class}. for this mode"));
    }
    if parts[1] == "1" {
        return Some(format!(
            "{code} is an addressing code (x.1.y, such as 5.1.1 'no such user'): the mailbox exists, its storage is unavailable"
        ));
    }
    None
}

/// Printable ASCII, no CR/LF, and none of the characters MTA configuration gives meaning
/// to (`{ }` close a Postfix static map, `$` expands, `\` escapes).
fn reply_text_problem(text: &str) -> Option<String> {
    if text.is_empty() || text.len() > MAX_REPLY_TEXT {
        return Some(format!("must be 1 to {MAX_REPLY_TEXT} characters long"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(' '..='~').contains(c) || matches!(c, '{' | '}' | '$' | '\\'))
    {
        return Some(format!(
            "contains {bad:?}: only printable ASCII without {{ }} $ or \\ may go on the wire and into MTA configuration"
        ));
    }
    None
}

/// The selector as kube evaluates it; refuses a selector that would match everything.
pub fn selector_of(targets: &Targets) -> Result<Selector, FieldError> {
    if targets.match_labels.is_empty() && targets.match_expressions.is_empty() {
        return Err(FieldError {
            field: "spec.targets",
            message: "needs matchLabels or matchExpressions: an empty selector would cover every workload in the namespace".into(),
        });
    }
    let mut selector = Selector::default();
    for (key, value) in &targets.match_labels {
        label_key_and_values("spec.targets.matchLabels", key, [value])?;
        selector.extend(Expression::Equal(key.clone(), value.clone()));
    }
    for requirement in &targets.match_expressions {
        label_key_and_values(
            "spec.targets.matchExpressions",
            &requirement.key,
            &requirement.values,
        )?;
        selector.extend(expression_of(requirement)?);
    }
    Ok(selector)
}

/// Refuses a label key or value the API server would refuse on a workload: such a
/// selector could never match anything.
fn label_key_and_values<'a>(
    field: &'static str,
    key: &str,
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), FieldError> {
    let fail = |message: String| FieldError { field, message };
    if let Some(why) = label_key_problem(key) {
        return Err(fail(format!("label key {key:?} {why}")));
    }
    for value in values {
        if !value.is_empty() && !is_label_name(value) {
            return Err(fail(format!(
                "label value {value:?} of {key} must be at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
            )));
        }
    }
    Ok(())
}

/// Why `key` is not a qualified name (`[prefix/]name`, the prefix a DNS subdomain), if
/// it is not.
fn label_key_problem(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if !is_label_name(name) {
        return Some(
            "must be a name of at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional DNS-subdomain prefix and '/'",
        );
    }
    if let Some(prefix) = prefix {
        let subdomain = prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !subdomain {
            return Some("has a prefix that is not a lower-case DNS subdomain");
        }
    }
    None
}

/// A label name or value: 1 to 63 characters, alphanumeric at both ends, `-_.` within.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(inner)
}

fn expression_of(requirement: &LabelRequirement) -> Result<Expression, FieldError> {
    let LabelRequirement {
        key,
        operator,
        values,
    } = requirement;
    let values_needed = matches!(operator, LabelOperator::In | LabelOperator::NotIn);
    if values_needed == values.is_empty() {
        return Err(FieldError {
            field: "spec.targets.matchExpressions",
            message: format!(
                "{key} {operator:?}: values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"
            ),
        });
    }
    let set = || values.iter().cloned().collect();
    Ok(match operator {
        LabelOperator::In => Expression::In(key.clone(), set()),
        LabelOperator::NotIn => Expression::NotIn(key.clone(), set()),
        LabelOperator::Exists => Expression::Exists(key.clone()),
        LabelOperator::DoesNotExist => Expression::DoesNotExist(key.clone()),
    })
}
