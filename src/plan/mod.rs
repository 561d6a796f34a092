//! What the controller decides, as pure functions: from an incident, the workloads it can
//! see and the time, the status to write, the events to emit and when to look again.
//! Nothing here talks to Kubernetes; tests build every input by hand.

mod conditions;

pub use conditions::{ConditionType, set_conditions};

use crate::api::{
    EffectiveMode, MailIncident, MailIncidentStatus, TargetCounts, Transition,
    validation::{self, FieldError, ValidIncident},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, core::SelectorExt};
use std::collections::BTreeMap;

/// How many transitions the status keeps.
pub const HISTORY_LIMIT: usize = 20;

/// A Deployment or StatefulSet, as far as planning needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// Everything a reconcile of one incident decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: MailIncidentStatus,
    pub events: Vec<Note>,
    /// When the incident must be looked at again even if nothing changes (its expiry).
    pub wake_at: Option<Timestamp>,
}

/// An event to record on the incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Decides the status of `incident`, given the workloads of its namespace.
pub fn decide(incident: &MailIncident, workloads: &[Workload], now: Timestamp) -> Decision {
    let previous = incident.status.clone().unwrap_or_default();
    let generation = incident.metadata.generation;

    // First sight: say the controller has seen the object before doing anything else, so
    // kstatus and Argo CD read "in progress" rather than "no status".
    if previous.conditions.is_empty() {
        let mut status = previous;
        let message = "The controller has seen this incident and is evaluating it";
        let updates = ConditionType::ALL.map(|kind| (kind, None, "Initializing", message));
        set_conditions(&mut status.conditions, &updates, generation, now);
        return Decision {
            status,
            events: vec![],
            wake_at: None,
        };
    }

    let created = incident.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match validation::validate(&incident.spec, created) {
        Ok(valid) => decide_valid(incident, &valid, workloads, previous, now),
        Err(errors) => decide_invalid(generation, &errors, previous, now),
    }
}

fn decide_invalid(
    generation: Option<i64>,
    errors: &[FieldError],
    previous: MailIncidentStatus,
    now: Timestamp,
) -> Decision {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let newly_seen = previous.observed_generation != generation;
    // The targets keep whatever the last valid spec asked for: nothing is half-applied.
    let mut status = previous;
    status.observed_generation = generation;
    let message = format!("Invalid spec, nothing was changed: {message}");
    set_conditions(
        &mut status.conditions,
        &[
            (ConditionType::Stalled, Some(true), "InvalidSpec", &message),
            (ConditionType::Ready, Some(false), "InvalidSpec", &message),
            (
                ConditionType::Reconciling,
                Some(false),
                "InvalidSpec",
                &message,
            ),
        ],
        generation,
        now,
    );
    let events = if newly_seen {
        vec![Note {
            warning: true,
            reason: "InvalidSpec",
            message,
        }]
    } else {
        vec![]
    };
    Decision {
        status,
        events,
        wake_at: None,
    }
}

fn decide_valid(
    incident: &MailIncident,
    valid: &ValidIncident,
    workloads: &[Workload],
    previous: MailIncidentStatus,
    now: Timestamp,
) -> Decision {
    let generation = incident.metadata.generation;
    let namespace = incident.namespace().unwrap_or_default();
    let expired = valid.expires_at.is_some_and(|at| at <= now);
    let effective = if valid.resolved || expired {
        EffectiveMode::Normal
    } else {
        valid.mode.into()
    };
    let matched = workloads
        .iter()
        .filter(|w| valid.selector.matches(&w.labels))
        .count() as u32;
    // Nothing delivers modes to MTAs yet, so no target may be counted as applied.
    let applied = 0;

    let mut events = Vec::new();
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.effective_mode = Some(effective);
    status.expires_at = valid.expires_at.map(Time);
    status.targets = Some(TargetCounts {
        matched,
        applied,
        summary: format!("{applied}/{matched}"),
    });

    if previous.observed_generation != generation {
        events.push(Note {
            warning: false,
            reason: "Accepted",
            message: format!(
                "Generation {} accepted: {:?} for targets {}, reply {} ({})",
                generation.unwrap_or_default(),
                valid.mode,
                valid.selector,
                valid.reply,
                incident.spec.reason
            ),
        });
    }
    let previous_matched = previous.targets.as_ref().map(|t| t.matched);
    if previous_matched.is_some_and(|m| m != matched) {
        events.push(Note {
            warning: false,
            reason: "TargetsChanged",
            message: format!(
                "Targets matched: {} -> {matched}",
                previous_matched.unwrap_or_default()
            ),
        });
    }

    if previous.effective_mode != Some(effective) {
        let why = if valid.resolved {
            format!("resolved: {}", incident.spec.reason)
        } else if expired {
            format!(
                "expired at {}",
                valid.expires_at.map(|t| t.to_string()).unwrap_or_default()
            )
        } else {
            incident.spec.reason.clone()
        };
        events.push(Note {
            warning: false,
            reason: "ModeChanged",
            message: format!(
                "{} -> {effective:?}: {why}",
                mode_name(previous.effective_mode)
            ),
        });
        status.history.push(Transition {
            from: previous.effective_mode,
            to: effective,
            at: Time(now),
            reason: why,
        });
        let excess = status.history.len().saturating_sub(HISTORY_LIMIT);
        status.history.drain(..excess);
    }

    let (ready, reason, message) = match effective {
        EffectiveMode::Normal if valid.resolved => (
            true,
            "Resolved",
            "The incident is resolved and asks nothing of its targets".to_string(),
        ),
        EffectiveMode::Normal => (
            true,
            "Expired",
            "The incident has expired and asks nothing of its targets".to_string(),
        ),
        _ if matched == 0 => (
            false,
            "NoTargets",
            format!("spec.targets matches no Deployment or StatefulSet in namespace {namespace}"),
        ),
        mode => (
            false,
            "AwaitingDelivery",
            format!("{applied}/{matched} targets apply {mode:?}"),
        ),
    };
    let reconciling = !ready && matched > 0;
    set_conditions(
        &mut status.conditions,
        &[
            (
                ConditionType::Stalled,
                Some(false),
                "SpecValid",
                "The spec is valid",
            ),
            (ConditionType::Ready, Some(ready), reason, &message),
            (
                ConditionType::Reconciling,
                Some(reconciling),
                reason,
                &message,
            ),
        ],
        generation,
        now,
    );

    let wake_at = valid
        .expires_at
        .filter(|at| *at > now && effective != EffectiveMode::Normal);
    Decision {
        status,
        events,
        wake_at,
    }
}

fn mode_name(mode: Option<EffectiveMode>) -> String {
    mode.map_or_else(|| "(none)".to_string(), |m| format!("{m:?}"))
}

#[cfg(test)]
mod tests;
