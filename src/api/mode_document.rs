//! The mode document: the versioned record the controller keeps for each target workload
//! and the agent (or, in restart delivery, the MTA's start-up script) reads. It is the one
//! contract between the two halves, so it lives here, with a content hash both sides use
//! to say which version they mean.

use super::{
    Mode, MtaKind,
    scope::{self, DomainPattern},
    validation::Reply,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `apiVersion` of the document; bump it on any incompatible change.
pub const MODE_DOCUMENT_VERSION: &str = "mailops.dev/v1alpha2";
/// The version before scopes (one mode for every recipient): still read, so that an
/// agent upgraded mid-incident understands its saved state.
pub const MODE_DOCUMENT_VERSION_V1ALPHA1: &str = "mailops.dev/v1alpha1";
/// `kind` of the document.
pub const MODE_DOCUMENT_KIND: &str = "ModeDocument";
/// The ConfigMap key holding the document (JSON).
pub const MODE_DOCUMENT_KEY: &str = "mode.json";

/// Workload annotation choosing how a mode reaches its MTAs: `reload` (default) or `restart`.
pub const DELIVERY_ANNOTATION: &str = "mailops.dev/delivery";
/// Workload annotation naming its MTA software: `Postfix`, `Exim` or `Generic`.
pub const MTA_ANNOTATION: &str = "mailops.dev/mta";
/// Workload annotation naming the MTA container (default: the first container).
pub const MTA_CONTAINER_ANNOTATION: &str = "mailops.dev/mta-container";
/// Workload annotation giving the MTA's queue directory (default by MTA: Postfix
/// `/var/spool/postfix`, Exim `/var/spool/exim4`).
pub const QUEUE_PATH_ANNOTATION: &str = "mailops.dev/queue-path";
/// Annotation carrying a mode document's hash: on the document's ConfigMap, and on the
/// pod template in restart delivery.
pub const MODE_HASH_ANNOTATION: &str = "mailops.dev/mode-hash";
/// Annotation naming the incident whose mode a document or pod template carries.
pub const INCIDENT_ANNOTATION: &str = "mailops.dev/incident";
/// Annotation on documents and reports naming their workload (`Kind/name`).
pub const WORKLOAD_ANNOTATION: &str = "mailops.dev/workload";
/// Label telling our ConfigMaps apart: `mode-document` or `mode-report`.
pub const ROLE_LABEL: &str = "mailops.dev/role";
pub const ROLE_DOCUMENT: &str = "mode-document";
pub const ROLE_REPORT: &str = "mode-report";
/// Label on every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "mail-incident-operator";

/// The name of a workload's mode document ConfigMap. Its report ConfigMap is the same
/// name with [`REPORT_SUFFIX`]. Long names are cut and made unique with a hash, so both
/// stay within the 253 characters of an object name.
pub fn document_name(kind: &str, workload: &str) -> String {
    const MAX: usize = 253 - REPORT_SUFFIX.len();
    let name = format!("mail-mode-{}-{workload}", kind.to_ascii_lowercase());
    if name.len() <= MAX {
        return name;
    }
    let digest = Sha256::digest(name.as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{tag}", name[..MAX - 9].trim_end_matches(['-', '.']))
}

/// Appended to a document's name to name the ConfigMap its agents report to.
pub const REPORT_SUFFIX: &str = "-report";

/// The name of the report ConfigMap of the mode document named `document`.
pub fn report_name(document: &str) -> String {
    format!("{document}{REPORT_SUFFIX}")
}

/// The hash of a stored document's text, as [`ModeDocument::hash`] makes it: what the
/// controller compares a document's content and annotation with.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The prefix of the env vars restart delivery sets on the MTA container.
pub const RESTART_ENV_PREFIX: &str = "MAIL_INCIDENT_";

/// What one agent writes under its pod's name in the report ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// Hash of the mode document the agent has applied; empty once the incident has
    /// ended for it (see `after`).
    pub hash: String,
    /// Where the MTA stands once its incident has ended: releasing the held mail (the
    /// queue figures count what is left), then back to normal service. The controller
    /// keeps the report until every pod's agent says Normal, so that the release can be
    /// followed to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<AfterIncident>,
    /// The MTA's queue as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueFigures>,
    /// What the agent found changed in its MTA by another hand, if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftReport>,
}

/// Where an agent's MTA stands after its incident ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterIncident {
    /// Delivering the mail the incident held.
    Releasing,
    /// The held mail is delivered: the MTA's own configuration again.
    Normal,
}

impl AgentReport {
    /// Whether this entry says its MTA is done with every incident: released, normal.
    pub fn released(&self) -> bool {
        released(&self.hash, self.after)
    }
}

/// Whether a report with the applied `hash` and `after` says its MTA is done with every
/// incident: no mode applied, and normal service again.
pub fn released(hash: &str, after: Option<AfterIncident>) -> bool {
    hash.is_empty() && after == Some(AfterIncident::Normal)
}

/// What an agent found its MTA running that differed from the mode it had applied
/// (a hand edit of a managed setting, a deleted or rewritten mode file, a wrong answer
/// over SMTP), and how often. The controller turns a new one into a Warning event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftReport {
    /// Drifts found since the agent started (never goes down while it runs).
    pub count: u64,
    /// What differed the last time, in a few words (`main.cf soft_bounce = no, want yes`).
    pub what: String,
    /// Since when (seconds since the epoch) the MTA differs and is being put back; absent
    /// once it is observed equal again. While present the pod does not count as applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

/// An MTA's queue: what escalation limits are checked against.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueFigures {
    /// Messages in the queue, all queues together.
    pub messages: u64,
    /// Messages by queue (Postfix: incoming, active, deferred, hold).
    pub by_queue: BTreeMap<String, u64>,
    /// Age of the oldest message, in seconds (0 when the queue is empty).
    pub oldest_age_seconds: u64,
}

impl QueueFigures {
    /// Counts one message of `queue` that arrived at `arrival` (seconds since the epoch),
    /// measured at `now`.
    pub fn add(&mut self, queue: &str, arrival: i64, now: i64) {
        self.messages = self.messages.saturating_add(1);
        match self.by_queue.get_mut(queue) {
            Some(count) => *count = count.saturating_add(1),
            None => {
                self.by_queue.insert(queue.to_string(), 1);
            }
        }
        let age = u64::try_from(now.saturating_sub(arrival)).unwrap_or(0);
        self.oldest_age_seconds = self.oldest_age_seconds.max(age);
    }
}

/// What one workload's MTAs must do now. Absent document = normal service.
///
/// Since `mailops.dev/v1alpha2` it holds **rules**, in order of precedence: a recipient
/// gets the first rule whose scope covers its domain (a rule without a scope covers every
/// recipient), and normal service if none does. The controller orders them (most severe
/// mode first, then the oldest incident) and drops those no recipient can reach. Reading
/// one checks it whole: an unknown version, no rules or a malformed domain is an error,
/// and the agent keeps its MTA where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "serde_json::Value")]
pub struct ModeDocument {
    pub api_version: String,
    pub kind: String,
    /// At least one; the first is the most severe.
    pub rules: Vec<Rule>,
    /// Queue lifetimes, in Postfix notation (`5d`), in force while any rule holds mail
    /// and until its release is over: the longest of the rules' incidents.
    pub queue: DocumentQueue,
    /// How the held mail is released once the incidents end.
    pub release: DocumentRelease,
    /// The MTA software, when the workload or incident says; the agent has its own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta: Option<MtaKind>,
}

/// One incident's mode, for the recipients of its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The incident mode to apply.
    pub mode: Mode,
    /// The RCPT reply for TempFail and HardReject (for AcceptAndQueue: the reply an
    /// escalation to TempFail uses).
    pub reply: DocumentReply,
    /// The recipient domains covered (`example.com`, `*.example.com`); absent: every
    /// recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_domains: Option<Vec<String>>,
    /// The incident this rule comes from.
    pub incident: DocumentIncident,
}

impl Rule {
    /// The rule's scope, parsed (`None`: every recipient). A document is checked when it
    /// is read, so an entry that does not parse here is skipped.
    pub fn scope(&self) -> Option<Vec<DomainPattern>> {
        self.recipient_domains.as_ref().map(|domains| {
            domains
                .iter()
                .filter_map(|d| DomainPattern::parse(d).ok())
                .collect()
        })
    }

    /// Whether the rule covers a recipient in `domain` (lower-case; `None`: an address
    /// without a domain, covered only by an unscoped rule).
    pub fn covers(&self, domain: Option<&str>) -> bool {
        match (&self.recipient_domains, domain) {
            (None, _) => true,
            (Some(_), None) => false,
            // Asked at every RCPT: the checked entries are matched as written, no
            // scope is built.
            (Some(domains), Some(domain)) => domains
                .iter()
                .any(|entry| scope::entry_covers(entry, domain)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReply {
    pub code: u16,
    pub enhanced_code: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentQueue {
    pub lifetime: String,
    pub bounce_lifetime: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRelease {
    /// Deliveries to mailbox storage run at once while the held mail drains.
    pub concurrency: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentIncident {
    pub name: String,
    pub uid: String,
    pub reason: String,
}

impl From<&Reply> for DocumentReply {
    fn from(reply: &Reply) -> Self {
        Self {
            code: reply.code,
            enhanced_code: reply.enhanced_code.clone(),
            text: reply.text.clone(),
        }
    }
}

impl ModeDocument {
    /// The rule a recipient in `domain` gets, if any covers it.
    pub fn rule_for(&self, domain: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.covers(domain))
    }

    /// The most severe rule: what the document is named by in metrics and logs.
    pub fn headline(&self) -> &Rule {
        &self.rules[0]
    }

    /// Whether some rule covers every recipient: the MTA holds all its mail, as before
    /// scopes.
    pub fn covers_everyone(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.recipient_domains.is_none())
    }

    /// The domains whose mail is held, when not everyone's is: every scoped rule's (each
    /// incident mode holds the mail already queued for its recipients).
    pub fn held_domains(&self) -> Vec<DomainPattern> {
        let mut held: Vec<DomainPattern> = self
            .rules
            .iter()
            .flat_map(|r| r.scope().unwrap_or_default())
            .collect();
        held.sort();
        held.dedup();
        held
    }

    /// The incidents whose rules it holds, in order, comma-separated: the
    /// `mailops.dev/incident` annotation (object names hold no comma).
    pub fn incident_names(&self) -> String {
        let names: Vec<&str> = self
            .rules
            .iter()
            .map(|r| r.incident.name.as_str())
            .collect();
        names.join(",")
    }

    /// The canonical JSON text: what is stored and what the hash covers.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a mode document serializes")
    }

    /// A short content hash of the canonical JSON. Stable across operator versions and
    /// restarts (a changed hash makes every agent reapply, and in restart delivery rolls
    /// every MTA), so it is SHA-256, not a std hasher.
    pub fn hash(&self) -> String {
        content_hash(&self.to_json())
    }

    /// The environment variables restart delivery sets on the MTA container: the first
    /// rule's mode (restart delivery carries no scope; the controller refuses scoped rules
    /// for it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let rule = self.headline();
        vec![
            ("MAIL_INCIDENT_MODE", rule.mode.to_string()),
            ("MAIL_INCIDENT_REPLY_CODE", rule.reply.code.to_string()),
            (
                "MAIL_INCIDENT_REPLY_ENHANCED_CODE",
                rule.reply.enhanced_code.clone(),
            ),
            ("MAIL_INCIDENT_REPLY_TEXT", rule.reply.text.clone()),
            ("MAIL_INCIDENT_QUEUE_LIFETIME", self.queue.lifetime.clone()),
            (
                "MAIL_INCIDENT_BOUNCE_LIFETIME",
                self.queue.bounce_lifetime.clone(),
            ),
            ("MAIL_INCIDENT_NAME", rule.incident.name.clone()),
            ("MAIL_INCIDENT_HASH", self.hash()),
        ]
    }
}

/// A document as stored, before its version is known.
impl TryFrom<serde_json::Value> for ModeDocument {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        let version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let document = match version.as_str() {
            MODE_DOCUMENT_VERSION => serde_json::from_value::<Wire>(value)
                .map_err(|e| e.to_string())?
                .into(),
            MODE_DOCUMENT_VERSION_V1ALPHA1 => serde_json::from_value::<WireV1Alpha1>(value)
                .map_err(|e| e.to_string())?
                .into(),
            other => {
                return Err(format!(
                    "mode document apiVersion {other:?} is not one this agent understands ({MODE_DOCUMENT_VERSION} or {MODE_DOCUMENT_VERSION_V1ALPHA1}): upgrade the agent"
                ));
            }
        };
        check(&document)?;
        Ok(document)
    }
}

/// What a document must hold beyond its shape.
fn check(document: &ModeDocument) -> Result<(), String> {
    if document.kind != MODE_DOCUMENT_KIND {
        return Err(format!(
            "mode document kind {:?} is not {MODE_DOCUMENT_KIND}",
            document.kind
        ));
    }
    if document.rules.is_empty() {
        return Err("mode document has no rules".into());
    }
    for (index, rule) in document.rules.iter().enumerate() {
        match &rule.recipient_domains {
            Some(domains) if domains.is_empty() => {
                return Err(format!(
                    "mode document rule {index} has an empty recipientDomains"
                ));
            }
            Some(domains) => {
                for domain in domains {
                    DomainPattern::parse(domain)
                        .map_err(|e| format!("mode document rule {index}: {e}"))?;
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// The v1alpha2 shape, read without the conversion.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    api_version: String,
    kind: String,
    rules: Vec<Rule>,
    queue: DocumentQueue,
    release: DocumentRelease,
    #[serde(default)]
    mta: Option<MtaKind>,
}

impl From<Wire> for ModeDocument {
    fn from(wire: Wire) -> Self {
        Self {
            api_version: wire.api_version,
            kind: wire.kind,
            rules: wire.rules,
            queue: wire.queue,
            release: wire.release,
            mta: wire.mta,
        }
    }
}

/// A v1alpha1 document: one mode for every recipient. Read as one unscoped rule (its
/// version is kept, so its hash stays the one it was written with).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireV1Alpha1 {
    api_version: String,
    kind: String,
    mode: Mode,
    reply: DocumentReply,
    queue: DocumentQueue,
    release: DocumentRelease,
    #[serde(default)]
    mta: Option<MtaKind>,
    incident: DocumentIncident,
}

impl From<WireV1Alpha1> for ModeDocument {
    fn from(wire: WireV1Alpha1) -> Self {
        Self {
            api_version: wire.api_version,
            kind: wire.kind,
            rules: vec![Rule {
                mode: wire.mode,
                reply: wire.reply,
                recipient_domains: None,
                incident: wire.incident,
            }],
            queue: wire.queue,
            release: wire.release,
            mta: wire.mta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> ModeDocument {
        ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            rules: vec![Rule {
                mode: Mode::TempFail,
                reply: DocumentReply {
                    code: 452,
                    enhanced_code: "4.3.1".into(),
                    text: "Mailbox storage temporarily unavailable, try again later".into(),
                },
                recipient_domains: None,
                incident: DocumentIncident {
                    name: "outage".into(),
                    uid: "0b6f".into(),
                    reason: "INC-1".into(),
                },
            }],
            queue: DocumentQueue {
                lifetime: "5d".into(),
                bounce_lifetime: "5d".into(),
            },
            release: DocumentRelease { concurrency: 4 },
            mta: Some(MtaKind::Postfix),
        }
    }

    #[test]
    fn the_hash_is_pinned_so_upgrades_do_not_reapply_every_mode() {
        // If this changes, every agent reapplies and every restart-delivered MTA rolls:
        // only change it together with MODE_DOCUMENT_VERSION.
        assert_eq!(document().hash(), "17d52510816783af");
    }

    #[test]
    fn the_hash_follows_the_content() {
        let mut other = document();
        other.rules[0].reply.code = 451;
        assert_ne!(other.hash(), document().hash());
    }

    #[test]
    fn the_document_round_trips_through_its_json() {
        let parsed: ModeDocument = serde_json::from_str(&document().to_json()).unwrap();
        assert_eq!(parsed, document());
        assert!(document().to_json().contains("\"enhancedCode\": \"4.3.1\""));
    }

    fn scoped(mode: Mode, name: &str, domains: &[&str]) -> Rule {
        let mut rule = document().rules[0].clone();
        rule.mode = mode;
        rule.incident.name = name.into();
        rule.recipient_domains = Some(domains.iter().map(|d| d.to_string()).collect());
        rule
    }

    #[test]
    fn a_recipient_gets_the_first_rule_covering_its_domain() {
        let mut two = document();
        two.rules = vec![
            scoped(Mode::HardReject, "pec", &["pec.example.it"]),
            scoped(Mode::TempFail, "storage", &["*.example.it", "example.it"]),
        ];
        let rule = |domain: &str| two.rule_for(Some(domain)).map(|r| r.incident.name.as_str());
        assert_eq!(rule("pec.example.it"), Some("pec"));
        assert_eq!(rule("mx.example.it"), Some("storage"));
        assert_eq!(rule("example.it"), Some("storage"));
        assert_eq!(rule("example.com"), None);
        assert_eq!(two.rule_for(None), None);
        assert!(!two.covers_everyone());
        assert_eq!(
            two.held_domains()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["example.it", "pec.example.it", "*.example.it"]
        );
        assert!(document().covers_everyone());
        assert!(document().rule_for(None).is_some());
    }

    #[test]
    fn a_document_is_read_whole_or_refused_with_the_reason() {
        let read =
            |text: &str| serde_json::from_str::<ModeDocument>(text).map_err(|e| e.to_string());
        assert_eq!(read(&document().to_json()).unwrap(), document());
        let v1 = r#"{"apiVersion": "mailops.dev/v1alpha1", "kind": "ModeDocument", "mode": "TempFail",
            "reply": {"code": 452, "enhancedCode": "4.3.1", "text": "t"},
            "queue": {"lifetime": "5d", "bounceLifetime": "5d"}, "release": {"concurrency": 4},
            "incident": {"name": "old", "uid": "u", "reason": "r"}}"#;
        let old = read(v1).unwrap();
        assert_eq!(old.rules.len(), 1);
        assert_eq!(old.headline().incident.name, "old");
        assert!(old.covers_everyone());
        let future = document().to_json().replace("v1alpha2", "v1beta1");
        assert!(
            read(&future)
                .unwrap_err()
                .contains("\"mailops.dev/v1beta1\" is not one this agent understands")
        );
        let mut empty = document();
        empty.rules.clear();
        assert!(read(&empty.to_json()).unwrap_err().contains("no rules"));
        let mut bad = document();
        bad.rules = vec![scoped(Mode::TempFail, "x", &["Bad_Domain"])];
        assert!(read(&bad.to_json()).unwrap_err().contains("Bad_Domain"));
    }

    #[test]
    fn document_names_fit_an_object_name_and_stay_distinct() {
        assert_eq!(
            document_name("Deployment", "postfix"),
            "mail-mode-deployment-postfix"
        );
        let long_a = document_name("StatefulSet", &"a".repeat(300));
        let long_b = document_name("StatefulSet", &format!("{}b", "a".repeat(299)));
        assert!(long_a.len() + REPORT_SUFFIX.len() <= 253);
        assert_ne!(long_a, long_b);
    }

    #[test]
    fn restart_delivery_env_carries_the_whole_mode() {
        let env = document().env();
        let get = |name: &str| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("MAIL_INCIDENT_MODE"), Some("TempFail"));
        assert_eq!(get("MAIL_INCIDENT_REPLY_CODE"), Some("452"));
        assert_eq!(get("MAIL_INCIDENT_HASH"), Some(document().hash().as_str()));
    }
}
