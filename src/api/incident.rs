//! The `MailIncident` custom resource: what an SRE declares, and what the controller reports.

use super::names::named_variants;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pattern every time span field shares; `TimeSpan` parses the same grammar.
const TIME_SPAN_PATTERN: &str = "^[0-9]{1,7}[smhdw]$";

/// spec.expiresAt lies in the years 2000 to 2999. Every API server enforces this, unlike
/// the controller's bound of 100 days after creation; it keeps out the last hours of year
/// 9999, which the API server stores but the controller cannot read, and one unreadable
/// object would fail the controller's whole watch.
const EXPIRES_AT_PATTERN: &str = "^2[0-9]{3}-";

/// A recipient domain of a scope: a lower-case DNS name, or `*.` and one for its
/// subdomains. Lengths are checked by the controller (a label at most 63 characters, the
/// name at most 253).
const RECIPIENT_DOMAIN_PATTERN: &str =
    r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The CEL expression turning a `TimeSpan` string into seconds, for range rules.
macro_rules! time_span_seconds {
    () => {
        "int(self.substring(0, size(self) - 1)) * {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}[self.substring(size(self) - 1)]"
    };
}

/// The CEL rule of a time span field: positive (a digit other than 0; the pattern admits
/// `0d`, `TimeSpan` does not) and at most `$max_seconds`.
macro_rules! time_span_at_most {
    ($max_seconds:literal) => {
        concat!(
            "self.matches('[1-9]') && ",
            time_span_seconds!(),
            " <= ",
            $max_seconds
        )
    };
}

/// A declared mail incident: which MTA workloads it covers, which mode they must run in,
/// and why.
///
/// Applying one moves every matched MTA into the mode; resolving or deleting it (or
/// reaching `expiresAt`) moves them back.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
// Each printcolumn(...) repeats `type_ = "string"`; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "mailops.dev",
    version = "v1alpha1",
    kind = "MailIncident",
    namespaced,
    status = "MailIncidentStatus",
    shortname = "mailinc",
    category = "mail",
    cel,
    doc = "A declared mail incident: the mode a set of MTA workloads must answer in, and why.",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".status.effectiveMode",
        description = "The mode this incident currently asks its targets for"
    ),
    printcolumn(
        name = "Scope",
        type_ = "string",
        json_path = ".status.scope",
        description = "Which recipients the incident covers: all, or how many domains"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every matched target answers in the mode"
    ),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.targets.summary",
        description = "Targets that apply the mode / targets matched"
    ),
    printcolumn(
        name = "Starts",
        type_ = "string",
        json_path = ".status.startsAt",
        description = "When a scheduled incident takes effect"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the incident ends by itself"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".spec.reason",
        priority = "1",
        description = "Why the incident was declared"
    ),
    printcolumn(
        name = "Declared By",
        type_ = "string",
        json_path = ".status.declaredBy",
        priority = "1",
        description = "The user who created the incident, as the admission webhook recorded"
    ),
    printcolumn(
        name = "Changed By",
        type_ = "string",
        json_path = ".status.changedBy",
        priority = "1",
        description = "The user who wrote the spec as it is now, as the admission webhook recorded"
    )
)]
#[x_kube(validation = Rule::new(
    "self.mode != 'HardReject' || (has(self.hardReject) && self.hardReject.acknowledgeBounces)"
).message("spec.hardReject.acknowledgeBounces must be true for mode HardReject: every 5xx answer makes the sender bounce the mail for good").field_path(".hardReject.acknowledgeBounces"))]
#[x_kube(validation = Rule::new(
    "!has(self.smtpReply) || !has(self.smtpReply.code) || (self.mode == 'HardReject' ? self.smtpReply.code in [521, 550, 552, 553, 554, 556] : self.smtpReply.code in [421, 450, 451, 452])"
).message("spec.smtpReply.code must be 421, 450, 451 or 452 for TempFail and AcceptAndQueue (its escalation reply), and 521, 550, 552, 553, 554 or 556 for HardReject").field_path(".smtpReply.code"))]
#[x_kube(validation = Rule::new(
    "!has(self.smtpReply) || !has(self.smtpReply.enhancedCode) || self.smtpReply.enhancedCode.startsWith(self.mode == 'HardReject' ? '5.' : '4.')"
).message("spec.smtpReply.enhancedCode must start with the class of the mode: 4. for TempFail and AcceptAndQueue, 5. for HardReject").field_path(".smtpReply.enhancedCode"))]
#[x_kube(validation = Rule::new("!has(self.escalation) || self.mode == 'AcceptAndQueue'")
    .message("spec.escalation applies to mode AcceptAndQueue only").field_path(".escalation"))]
#[x_kube(validation = Rule::new("!(has(self.expiresAt) && has(self.duration))")
    .message("spec.expiresAt and spec.duration are alternatives: set at most one").field_path(".duration"))]
#[serde(rename_all = "camelCase")]
pub struct MailIncidentSpec {
    /// The mode every matched MTA must answer in: AcceptAndQueue (take mail, hold it in the
    /// queue until storage is back), TempFail (answer RCPT with a 4xx so senders retry),
    /// or HardReject (answer RCPT with a 5xx so senders bounce; needs
    /// hardReject.acknowledgeBounces).
    pub mode: Mode,

    /// Why the incident was declared: a ticket reference or a sentence. Shown in events,
    /// in the status history and in `kubectl get mailinc -o wide`.
    #[schemars(length(min = 1, max = 512))]
    pub reason: String,

    /// Which MTA workloads (Deployments and StatefulSets in this namespace) the incident
    /// covers.
    pub targets: Targets,

    /// Which recipients the incident is about. Absent: every recipient of the targets.
    /// With several incidents on one target, each recipient gets the most severe mode
    /// among the incidents covering its domain (then the oldest incident's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,

    /// When the incident takes effect (RFC 3339, in the years 2000 to 2999), at most 100d
    /// after its creation. Until then nothing changes on any MTA; expiresAt and duration
    /// count from it. Absent: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = EXPIRES_AT_PATTERN))]
    pub starts_at: Option<Time>,

    /// How long accepted mail may wait in the queue before it is returned to the sender.
    #[serde(default)]
    pub queue: QueueLifetimes,

    /// The SMTP reply MTAs give at RCPT in TempFail and HardReject (and in AcceptAndQueue
    /// once an escalation turns it into TempFail). Every field defaults by mode: TempFail
    /// `452 4.3.1 Mailbox storage temporarily unavailable, try again later`, HardReject
    /// `550 5.3.2 Mailbox storage unavailable, message not accepted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<SmtpReply>,

    /// Queue limits for AcceptAndQueue: a target whose MTAs report more queued messages,
    /// or an older message, is switched to TempFail by the controller (never to
    /// HardReject), before its queue is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,

    /// Safety catch for HardReject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_reject: Option<HardRejectSettings>,

    /// When the incident ends by itself (RFC 3339, in the years 2000 to 2999), after
    /// startsAt and at most 100d after it (or after the creation, without startsAt;
    /// checked by the controller: no schema rule can see the creation time). Alternative
    /// to duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = EXPIRES_AT_PATTERN))]
    pub expires_at: Option<Time>,

    /// How long after its start (startsAt, or its creation) the incident ends by itself
    /// (number and unit s, m, h, d or w, e.g. 36h), at most 100d. Alternative to
    /// expiresAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TIME_SPAN_PATTERN))]
    #[x_kube(validation = Rule::new(time_span_at_most!(8640000)).message("spec.duration must be more than 0 and at most 100d"))]
    pub duration: Option<String>,

    /// True ends the incident (targets go back to normal service) while keeping the object
    /// as the record of what happened.
    #[serde(default)]
    pub resolved: bool,

    /// How the mail held during the incident goes to mailbox storage once the incident
    /// ends: at a pace the recovering storage can take, with the incident's queue
    /// lifetimes kept until it is all delivered, so that no held message expires on its
    /// way out.
    #[serde(default)]
    pub release: Release,
}

/// The recipients an incident covers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Recipient domains, lower-case: `example.com` covers exactly that domain,
    /// `*.example.com` every subdomain of it (not example.com itself). 1 to 1000 entries,
    /// no duplicates. In AcceptAndQueue only their mail is held; in TempFail and
    /// HardReject only their RCPTs are refused; other recipients get normal service.
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(inner(regex(pattern = RECIPIENT_DOMAIN_PATTERN), length(min = 1, max = 253)))]
    // A set: the API server refuses duplicates (a CEL rule comparing every pair would
    // exceed the cost budget at 1000 entries).
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub recipient_domains: Vec<String>,
}

/// The three incident modes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Mode {
    /// Accept every message and hold it in the queue (delivery to mailbox storage
    /// deferred, queue lifetimes extended). Nothing bounces while the queue has room.
    AcceptAndQueue,
    /// Refuse at RCPT with a 4xx: the sender keeps the message in its own queue and retries.
    TempFail,
    /// Refuse at RCPT with a 5xx: the sender bounces the message for good.
    HardReject,
}

/// The MTA software a target runs, when its workload does not say.
// Also the agent's and the plugin's `--mta`, spelled as here.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, clap::ValueEnum,
)]
#[value(rename_all = "verbatim")]
pub enum MtaKind {
    /// Postfix, reconfigured with postconf and postfix reload.
    Postfix,
    /// Exim, reconfigured through flag files read by its ACLs.
    Exim,
    /// Any other MTA: the mode document is written to a file and a hook command runs.
    Generic,
}

named_variants!(Mode, "mode", [AcceptAndQueue, TempFail, HardReject]);
named_variants!(MtaKind, "MTA", [Postfix, Exim, Generic]);

/// A label selector over the Deployments and StatefulSets in the incident's namespace.
/// At least one of matchLabels and matchExpressions must be set, so that an incident
/// never covers every workload by accident.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
).message("spec.targets needs matchLabels or matchExpressions: an empty selector would cover every workload in the namespace"))]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Labels a workload must carry, all of them, to be a target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,

    /// Label requirements a workload must meet, all of them, to be a target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<LabelRequirement>,

    /// The MTA software the targets run, used when a workload has no
    /// `mailops.dev/mta` annotation. Defaults to Postfix in the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta: Option<MtaKind>,
}

/// One label requirement, as in a Kubernetes label selector.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)"
).message("values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"))]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How the label's value is compared with values.
    pub operator: LabelOperator,
    /// The values for In and NotIn; empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

/// Label selector operators.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LabelOperator {
    /// The label's value is one of values.
    In,
    /// The label is absent or its value is none of values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Queue lifetimes applied while the incident holds mail (Postfix
/// `maximal_queue_lifetime` and `bounce_queue_lifetime`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueLifetimes {
    /// How long a message may stay queued before it is returned to its sender. Number and
    /// unit (s, m, h, d, w); default 5d, at most 100d.
    #[serde(default = "default_lifetime")]
    #[schemars(regex(pattern = TIME_SPAN_PATTERN))]
    #[x_kube(validation = Rule::new(time_span_at_most!(8640000)).message("spec.queue.lifetime must be more than 0 and at most 100d"))]
    pub lifetime: String,

    /// How long a bounce (a non-delivery notice) may stay queued. Number and unit (s, m,
    /// h, d, w); default 5d, at most 100d.
    #[serde(default = "default_lifetime")]
    #[schemars(regex(pattern = TIME_SPAN_PATTERN))]
    #[x_kube(validation = Rule::new(time_span_at_most!(8640000)).message("spec.queue.bounceLifetime must be more than 0 and at most 100d"))]
    pub bounce_lifetime: String,
}

fn default_lifetime() -> String {
    "5d".to_string()
}

impl Default for QueueLifetimes {
    fn default() -> Self {
        Self {
            lifetime: default_lifetime(),
            bounce_lifetime: default_lifetime(),
        }
    }
}

/// The release of held mail when an incident ends.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// Deliveries to mailbox storage each MTA runs at once while it works off the held
    /// mail (Postfix: the process limit of the mailbox transport; Exim: parallel queue
    /// runners). Default 4, at most 100.
    #[serde(default = "default_release_concurrency")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency: u16,
}

fn default_release_concurrency() -> u16 {
    4
}

impl Default for Release {
    fn default() -> Self {
        Self {
            concurrency: default_release_concurrency(),
        }
    }
}

/// Queue limits past which AcceptAndQueue turns into TempFail, per target.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.maxQueuedMessages) || has(self.maxOldestMessageAge)")
    .message("spec.escalation needs maxQueuedMessages or maxOldestMessageAge"))]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// Messages queued on any one MTA of a target (all queues together), at most
    /// 100000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub max_queued_messages: Option<u64>,

    /// Age of the oldest message queued on any one MTA of a target (number and unit s,
    /// m, h, d, w), at most 100d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TIME_SPAN_PATTERN))]
    #[x_kube(validation = Rule::new(time_span_at_most!(8640000)).message("spec.escalation.maxOldestMessageAge must be more than 0 and at most 100d"))]
    pub max_oldest_message_age: Option<String>,
}

/// An SMTP reply: basic code, RFC 3463 enhanced code and text.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SmtpReply {
    /// The basic reply code: 421, 450, 451 or 452 for TempFail; 521, 550, 552, 553, 554
    /// or 556 for HardReject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [421, 450, 451, 452, 521, 550, 552, 553, 554, 556]))]
    pub code: Option<u16>,

    /// The enhanced status code (RFC 3463, class.subject.detail), in the class of the
    /// mode. Addressing codes (x.1.y, such as 5.1.1 "no such user") are refused: the
    /// mailbox exists, only its storage is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[45]\.[0-9]{1,3}\.[0-9]{1,3}$"))]
    #[x_kube(validation = Rule::new("!self.matches('^[45][.]1[.]')").message("spec.smtpReply.enhancedCode must not be an addressing code (x.1.y such as 5.1.1 'no such user'): the mailbox exists, its storage is unavailable"))]
    pub enhanced_code: Option<String>,

    /// The human-readable text after the codes: printable ASCII, at most 61 characters
    /// (so that every MTA sends the reply on one line), without { } $ or \ (the text is
    /// written into MTA configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 61), regex(pattern = r"^[ -#%-\[\]-z|~]+$"))]
    pub text: Option<String>,
}

/// Settings that only matter for HardReject.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardRejectSettings {
    /// Must be true for mode HardReject: a 5xx makes every sender bounce the message for
    /// good, and that mail is lost to the recipient.
    #[serde(default)]
    pub acknowledge_bounces: bool,
}

/// What the controller observed and did, as of `observedGeneration`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailIncidentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled, in the Kubernetes convention (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The mode the incident asks its targets for now: its spec.mode while it is active,
    /// Normal once it is resolved or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_mode: Option<EffectiveMode>,

    /// Target counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<TargetCounts>,

    /// Targets the mode cannot reach, with the reason (at most 20 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_targets: Vec<TargetProblem>,

    /// AcceptAndQueue targets switched to TempFail because their queue passed
    /// spec.escalation, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_targets: Vec<TargetProblem>,

    /// Targets that follow another incident instead of this one, by incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_by: Vec<Supersession>,

    /// Which recipients the incident covers, for `kubectl get`: `all recipients`, or
    /// `N domain(s)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,

    /// When the incident takes effect (from spec.startsAt); Ready's reason is Scheduled
    /// until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Time>,

    /// When the incident ends by itself, from spec.expiresAt or its start + spec.duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// The latest mode transitions, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,

    /// The user who created the incident, from the admission webhook's record of the
    /// creation (absent when the webhook did not see it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,

    /// The user who wrote the spec as it is now, from the admission webhook's record
    /// (absent when no record checks out for this spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
}

/// A mode as reported in status: one of the incident modes, or Normal service.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EffectiveMode {
    /// Normal mail service: the incident no longer asks anything of its targets.
    Normal,
    /// See Mode.AcceptAndQueue.
    AcceptAndQueue,
    /// See Mode.TempFail.
    TempFail,
    /// See Mode.HardReject.
    HardReject,
}

named_variants!(
    EffectiveMode,
    "mode",
    [Normal, AcceptAndQueue, TempFail, HardReject]
);

impl From<Mode> for EffectiveMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::AcceptAndQueue => Self::AcceptAndQueue,
            Mode::TempFail => Self::TempFail,
            Mode::HardReject => Self::HardReject,
        }
    }
}

/// How many workloads the incident covers and where they stand.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetCounts {
    /// Deployments and StatefulSets the selector matches.
    pub matched: u32,
    /// Targets whose every MTA answers in this incident's mode.
    pub applied: u32,
    /// Targets the mode cannot reach until something changes (see failedTargets).
    #[serde(default)]
    pub failed: u32,
    /// Matched targets that follow another incident (see supersededBy).
    #[serde(default)]
    pub superseded: u32,
    /// Targets scaled to zero: the mode is delivered, but no MTA of theirs runs to answer.
    #[serde(default)]
    pub idle: u32,
    /// While the incident is scheduled: matched targets with fewer ready pods than
    /// desired (an MTA or its agent not ready), which may not take the mode at the start.
    #[serde(default)]
    pub unready: u32,
    /// `applied/(matched - superseded - idle)`, for `kubectl get`.
    pub summary: String,
}

/// A target the mode cannot reach, and why.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct TargetProblem {
    /// `Kind/name` of the workload.
    pub target: String,
    /// What stops the mode, and what would fix it.
    pub reason: String,
}

/// Recipients of this incident that follow another, more severe or older, incident
/// covering them too.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Supersession {
    /// The incident they follow.
    pub incident: String,
    /// On how many targets.
    pub count: u32,
    /// Which (`Kind/name`; at most 20 listed).
    pub targets: Vec<String>,
    /// Which of this incident's recipient domains follow it there (at most 20 listed);
    /// absent: every recipient.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// One change of the incident's effective mode.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The mode before; absent for the first transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<EffectiveMode>,
    /// The mode after.
    pub to: EffectiveMode,
    /// When the controller made the transition.
    pub at: Time,
    /// Why: the spec reason, resolution or expiry.
    pub reason: String,
    /// The user whose change of the spec made it, as the admission webhook recorded;
    /// absent when time made it (a start, an expiry), for a deletion, and for a change
    /// the webhook did not see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}
