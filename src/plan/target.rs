//! A target workload as planning sees it, and whether it has taken up a mode.

use crate::api::{
    MtaKind,
    mode_document::{DriftReport, QueueFigures},
    validation::EscalationLimits,
};
use std::{collections::BTreeMap, fmt, sync::Arc};

/// The kinds of workload an incident can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        }
    }
}

/// A workload by kind and name, within the namespace being planned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetRef {
    pub kind: WorkloadKind,
    pub name: String,
}

impl TargetRef {
    /// Reads back what [`Display`](fmt::Display) writes (`Deployment/name`), as the
    /// operator's objects record their workload.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once('/')?;
        let kind = [WorkloadKind::Deployment, WorkloadKind::StatefulSet]
            .into_iter()
            .find(|k| k.as_str() == kind)?;
        (!name.is_empty()).then(|| Self {
            kind,
            name: name.into(),
        })
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// How a mode reaches a workload's MTAs (annotation `mailops.dev/delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// An agent sidecar watches the mode document and reconfigures the MTA in place.
    #[default]
    Reload,
    /// The mode goes into `MAIL_INCIDENT_*` env vars on the pod template: a rollout.
    Restart,
}

/// Where the MTA container keeps its queue, as far as a restart is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueStorage {
    /// A volume that survives a pod restart (PVC, volume claim template, host path...).
    Persistent,
    /// An `emptyDir` volume: gone with the pod.
    EmptyDir { volume: String, path: String },
    /// No volume is mounted at the queue path: the container's own filesystem.
    ContainerFilesystem { path: String },
    /// The queue location cannot be established (unknown container or queue path).
    Unknown { why: String },
}

impl QueueStorage {
    /// Why restarting this MTA would lose mail, if it would.
    pub fn restart_refusal(&self) -> Option<String> {
        match self {
            Self::Persistent => None,
            Self::EmptyDir { volume, path } => Some(format!(
                "queue directory {path} is on emptyDir volume {volume:?}: a restart would lose the queued mail; use a persistent volume or reload delivery"
            )),
            Self::ContainerFilesystem { path } => Some(format!(
                "queue directory {path} is on the container's own filesystem: a restart would lose the queued mail; use a persistent volume or reload delivery"
            )),
            Self::Unknown { why } => Some(format!(
                "cannot tell where the queue lives ({why}), so a restart is not safe"
            )),
        }
    }
}

/// How full one MTA's queue is, as its agent last reported: what escalation and the
/// queue watch read of the report's figures (not its counts by queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueLoad {
    pub messages: u64,
    pub oldest_age_seconds: u64,
}

impl QueueLoad {
    /// The fullest of `loads`: the most messages one MTA reported queued, and the age of
    /// the oldest message any reported (none: zero).
    pub fn peak_of<'a>(loads: impl IntoIterator<Item = &'a QueueLoad>) -> Self {
        loads.into_iter().fold(Self::default(), |peak, load| Self {
            messages: peak.messages.max(load.messages),
            oldest_age_seconds: peak.oldest_age_seconds.max(load.oldest_age_seconds),
        })
    }
}

impl From<&QueueFigures> for QueueLoad {
    fn from(figures: &QueueFigures) -> Self {
        Self {
            messages: figures.messages,
            oldest_age_seconds: figures.oldest_age_seconds,
        }
    }
}

/// One workload of the namespace: what it is, and what the cluster shows of its mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub target: TargetRef,
    /// Shared with the cached workload: a map is over 500 bytes, however few its labels.
    pub labels: Arc<BTreeMap<String, String>>,
    pub delivery: Delivery,
    /// The MTA software, from annotation `mailops.dev/mta`.
    pub mta: Option<MtaKind>,
    /// Hash of the mode document stored for it (reload channel), if any: of its content,
    /// which is what its agents apply.
    pub document_hash: Option<String>,
    /// How the stored document disagrees with itself (its hash annotation with its
    /// content), if it does: someone edited one of them.
    pub document_mismatch: Option<String>,
    /// The uids of the incidents the stored document names as its owners.
    pub document_owners: Vec<String>,
    /// Whether the report ConfigMap names the stored document as its owner.
    pub report_owned: bool,
    /// Our `MAIL_INCIDENT_*` env vars on the MTA container of its pod template.
    pub template_env: Vec<(String, String)>,
    /// Who last wrote the stored document (reload) or the workload (restart), when that
    /// was not this operator: a field manager.
    pub changed_by: Option<String>,
    /// The live pods whose agents report that their MTA drifted from the mode, by pod.
    pub drifts: Vec<(String, DriftReport)>,
    /// Report entries of pods that no longer exist, terminating or not.
    pub departed_reports: Vec<String>,
    /// Live pods whose agents have not yet said, in the report, that their incident is
    /// over for them and its held mail delivered (entries of pods that never reported
    /// are not counted).
    pub unreleased_pods: Vec<String>,
    /// Hash our env vars carry on its pod template (restart channel), if any.
    pub template_hash: Option<String>,
    /// The incidents named on its stored document or pod template: whose modes it runs.
    pub source_incidents: Vec<String>,
    /// Whether the ConfigMap its agents report to exists.
    pub report_exists: bool,
    /// For each live pod, the mode document hash its agent reports applied.
    pub pod_reports: Vec<Option<String>>,
    /// The queues the agents of live pods last reported.
    pub queues: Vec<QueueLoad>,
    /// Desired replicas.
    pub replicas: i32,
    /// Replicas whose pods are ready (their MTA and agent answer their probes).
    pub ready_replicas: i32,
    /// The latest pod template is rolled out to every replica.
    pub rollout_complete: bool,
    /// The container restart delivery puts env vars on.
    pub mta_container: Option<String>,
    pub queue: QueueStorage,
}

impl Target {
    /// Why the target's queue has passed the escalation limits, if it has.
    pub fn escalation(&self, limits: &EscalationLimits) -> Option<String> {
        let QueueLoad {
            messages: most,
            oldest_age_seconds: oldest,
        } = QueueLoad::peak_of(&self.queues);
        if let Some(max) = limits.max_queued_messages.filter(|max| most > *max) {
            return Some(format!(
                "queue holds {most} messages, over the limit of {max}"
            ));
        }
        if let Some(max) = limits
            .max_oldest_message_age
            .filter(|max| oldest > max.seconds())
        {
            return Some(format!(
                "oldest queued message is {oldest} s old, over the limit of {max}"
            ));
        }
        None
    }
}

/// Where a target stands with respect to the mode it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uptake {
    /// Every MTA of the target answers in the mode.
    Applied,
    /// The mode is delivered, but the target runs no pod (scaled to zero): no MTA of it
    /// answers anything, and any pod it starts takes up the mode.
    Idle,
    /// The mode is on its way: written, not yet taken up everywhere.
    Pending(String),
    /// The mode cannot be delivered until someone changes something.
    Failed(String),
}

impl Target {
    /// Whether the mode with document hash `hash` has reached this target's MTAs.
    pub fn uptake(&self, hash: &str) -> Uptake {
        match self.delivery {
            Delivery::Reload => {
                if self.document_hash.as_deref() != Some(hash) {
                    return Uptake::Pending("mode document not yet written".into());
                }
                if self.pod_reports.is_empty() {
                    return if self.replicas == 0 {
                        Uptake::Idle
                    } else {
                        Uptake::Pending("no live pod yet".into())
                    };
                }
                let reported = self
                    .pod_reports
                    .iter()
                    .filter(|r| r.as_deref() == Some(hash))
                    .count();
                if reported == self.pod_reports.len() {
                    Uptake::Applied
                } else {
                    Uptake::Pending(format!(
                        "{reported}/{} pods report the mode applied",
                        self.pod_reports.len()
                    ))
                }
            }
            Delivery::Restart => {
                if self.template_hash.as_deref() != Some(hash) {
                    match self.queue.restart_refusal() {
                        Some(refusal) => Uptake::Failed(refusal),
                        None => Uptake::Pending("pod template not yet updated".into()),
                    }
                } else if self.replicas == 0 {
                    Uptake::Idle
                } else if self.rollout_complete {
                    Uptake::Applied
                } else {
                    Uptake::Pending("rollout in progress".into())
                }
            }
        }
    }
}
