//! Status conditions in the Kubernetes convention, kept deterministic: a condition's
//! lastTransitionTime moves only when its status does, so rewriting an unchanged status is
//! a no-op and the controller does not wake itself up.

use super::ConditionReason;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// The conditions every incident carries (the kstatus set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    /// Every matched target answers in the incident's mode (or the incident has ended).
    Ready,
    /// The controller is moving targets towards the mode.
    Reconciling,
    /// The controller cannot make progress without a change to the spec.
    Stalled,
}

impl ConditionType {
    pub const ALL: [Self; 3] = [Self::Ready, Self::Reconciling, Self::Stalled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
        }
    }
}

/// One condition to set: its type, status (None means Unknown), reason and message.
pub type ConditionUpdate<'a> = (ConditionType, Option<bool>, ConditionReason, &'a str);

/// Sets each condition of `updates`, stamped with `generation`.
pub fn set_conditions(
    conditions: &mut Vec<Condition>,
    updates: &[ConditionUpdate<'_>],
    generation: Option<i64>,
    now: Timestamp,
) {
    for &(kind, status, reason, message) in updates {
        set_condition(conditions, kind, status, reason, message, generation, now);
    }
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: ConditionType,
    status: Option<bool>,
    reason: ConditionReason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let existing = conditions.iter_mut().find(|c| c.type_ == kind.as_str());
    let last_transition_time = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: kind.as_str().to_string(),
        status: status.to_string(),
        reason: reason.as_str().to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}
