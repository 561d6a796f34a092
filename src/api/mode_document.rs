//! The mode document: the versioned record the controller keeps for each target workload
//! and the agent (or, in restart delivery, the MTA's start-up script) reads. It is the one
//! contract between the two halves, so it lives here, with a content hash both sides use
//! to say which version they mean.

use super::{Mode, MtaKind, validation::Reply};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `apiVersion` of the document; bump it on any incompatible change.
pub const MODE_DOCUMENT_VERSION: &str = "mailops.dev/v1alpha1";
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
    /// Hash of the mode document the agent has applied.
    pub hash: String,
    /// The MTA's queue as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueFigures>,
    /// What the agent found changed in its MTA by another hand, if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftReport>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeDocument {
    pub api_version: String,
    pub kind: String,
    /// The incident mode to apply.
    pub mode: Mode,
    /// The RCPT reply for TempFail and HardReject (for AcceptAndQueue: the reply an
    /// escalation to TempFail uses).
    pub reply: DocumentReply,
    /// Queue lifetimes, in Postfix notation (`5d`).
    pub queue: DocumentQueue,
    /// How the held mail is released once the incident ends.
    pub release: DocumentRelease,
    /// The MTA software, when the workload or incident says; the agent has its own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta: Option<MtaKind>,
    /// The incident this mode comes from.
    pub incident: DocumentIncident,
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

    /// The environment variables restart delivery sets on the MTA container.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MAIL_INCIDENT_MODE", format!("{:?}", self.mode)),
            ("MAIL_INCIDENT_REPLY_CODE", self.reply.code.to_string()),
            (
                "MAIL_INCIDENT_REPLY_ENHANCED_CODE",
                self.reply.enhanced_code.clone(),
            ),
            ("MAIL_INCIDENT_REPLY_TEXT", self.reply.text.clone()),
            ("MAIL_INCIDENT_QUEUE_LIFETIME", self.queue.lifetime.clone()),
            (
                "MAIL_INCIDENT_BOUNCE_LIFETIME",
                self.queue.bounce_lifetime.clone(),
            ),
            ("MAIL_INCIDENT_NAME", self.incident.name.clone()),
            ("MAIL_INCIDENT_HASH", self.hash()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> ModeDocument {
        ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            mode: Mode::TempFail,
            reply: DocumentReply {
                code: 452,
                enhanced_code: "4.3.1".into(),
                text: "Mailbox storage temporarily unavailable, try again later".into(),
            },
            queue: DocumentQueue {
                lifetime: "5d".into(),
                bounce_lifetime: "5d".into(),
            },
            release: DocumentRelease { concurrency: 4 },
            mta: Some(MtaKind::Postfix),
            incident: DocumentIncident {
                name: "outage".into(),
                uid: "0b6f".into(),
                reason: "INC-1".into(),
            },
        }
    }

    #[test]
    fn the_hash_is_pinned_so_upgrades_do_not_reapply_every_mode() {
        // If this changes, every agent reapplies and every restart-delivered MTA rolls:
        // only change it together with MODE_DOCUMENT_VERSION.
        assert_eq!(document().hash(), "dbd7076966862e70");
    }

    #[test]
    fn the_hash_follows_the_content() {
        let mut other = document();
        other.reply.code = 451;
        assert_ne!(other.hash(), document().hash());
    }

    #[test]
    fn the_document_round_trips_through_its_json() {
        let parsed: ModeDocument = serde_json::from_str(&document().to_json()).unwrap();
        assert_eq!(parsed, document());
        assert!(document().to_json().contains("\"enhancedCode\": \"4.3.1\""));
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
