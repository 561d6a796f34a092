//! The reasons an incident's conditions and events give, as users, `kubectl wait`,
//! GitOps tools and alerts read them: one enum each, rendered in one place.

use crate::api::names::named_variants;

/// The `reason` of an incident's Ready, Reconciling and Stalled conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionReason {
    /// Seen for the first time, not decided yet.
    Initializing,
    /// Its spec breaks a rule of the API.
    InvalidSpec,
    /// A HardReject whose author is not known to be allowed to bounce mail.
    BounceNotApproved,
    /// Its selector matches no workload.
    NoTargets,
    /// Every target follows another incident.
    Superseded,
    /// Every target it decides answers in its mode.
    Applied,
    /// Some targets have yet to answer in its mode.
    Applying,
    /// Some targets cannot take its mode until something changes.
    TargetsFailed,
    /// It takes effect later.
    Scheduled,
    /// It ended by `spec.resolved`.
    Resolved,
    /// It ended at its expiry.
    Expired,
    /// It ended by deletion.
    Deleted,
    /// Stalled is False: nothing in the spec stops progress.
    SpecValid,
}

named_variants!(
    ConditionReason,
    "condition reason",
    [
        Initializing,
        InvalidSpec,
        BounceNotApproved,
        NoTargets,
        Superseded,
        Applied,
        Applying,
        TargetsFailed,
        Scheduled,
        Resolved,
        Expired,
        Deleted,
        SpecValid,
    ]
);

/// The `reason` of an event on an incident or on one of the operator's own objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventReason {
    /// A new generation of the spec was accepted.
    Accepted,
    /// The effective mode changed.
    ModeChanged,
    /// The number of targets matched changed.
    TargetsChanged,
    /// Targets newly failed to take the mode.
    TargetFailed,
    /// Targets follow another incident.
    Superseded,
    /// Every target it decides now answers in its mode.
    Applied,
    /// Its selector matches no workload.
    NoTargets,
    /// It ended and no target runs its mode any more; or an object of the operator's
    /// changed by another hand was put back.
    Restored,
    /// Targets switched from AcceptAndQueue to TempFail.
    Escalated,
    /// Its spec breaks a rule of the API.
    InvalidSpec,
    /// A HardReject whose author is not known to be allowed to bounce mail.
    BounceNotApproved,
    /// An agent found its MTA changed by another hand.
    MtaDrifted,
    /// The admission records' signing key was put back.
    SigningKeyRestored,
}

named_variants!(
    EventReason,
    "event reason",
    [
        Accepted,
        ModeChanged,
        TargetsChanged,
        TargetFailed,
        Superseded,
        Applied,
        NoTargets,
        Restored,
        Escalated,
        InvalidSpec,
        BounceNotApproved,
        MtaDrifted,
        SigningKeyRestored,
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_name_in_any_case() {
        for &reason in ConditionReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
            assert_eq!(reason.as_str().to_lowercase().parse(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        for &reason in EventReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(ConditionReason::ALL.len(), 13);
        assert_eq!(EventReason::ALL.len(), 13);
    }

    #[test]
    fn reasons_render_as_kubernetes_spells_them() {
        assert_eq!(ConditionReason::TargetsFailed.as_str(), "TargetsFailed");
        assert_eq!(ConditionReason::SpecValid.to_string(), "SpecValid");
        assert_eq!(EventReason::MtaDrifted.as_str(), "MtaDrifted");
        let unknown = "Bogus".parse::<EventReason>().unwrap_err();
        assert_eq!(unknown.found, "Bogus");
        assert!(unknown.to_string().starts_with(
            r#""Bogus" names no event reason: expected one of Accepted, ModeChanged"#
        ));
    }
}
