//! One incident's status and events, from the plan of its namespace.

use super::{
    ConditionReason, ConditionType, Decision, EventReason, HISTORY_LIMIT, Invalidity,
    LISTED_TARGETS_LIMIT, Namespace, Note, Phase, Standing, TargetOutcome, Uptake, set_conditions,
};
use crate::api::{
    EffectiveMode, MailIncident, MailIncidentStatus, Supersession, TargetCounts, TargetProblem,
    Transition,
    admission::{Admitted, NotAdmitted},
    scope::DomainPattern,
    validation::FieldError,
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use std::collections::BTreeMap;

pub(super) fn decide(
    incident: &MailIncident,
    index: usize,
    standing: &Standing,
    admission: &Result<Admitted, NotAdmitted>,
    ns: &Namespace<'_>,
    outcomes: &[&TargetOutcome],
) -> Decision {
    let mut previous = incident.status.clone().unwrap_or_default();
    let generation = incident.metadata.generation;
    let admitted = admission.as_ref().ok();
    previous.changed_by = admitted.map(|a| a.user.clone());
    if previous.declared_by.is_none() {
        previous.declared_by = admitted
            .filter(|a| a.operation == "CREATE")
            .map(|a| a.user.clone());
    }
    // A change of the spec made this round's transition, unless it is a deletion (which
    // the webhook does not see).
    let author = admitted
        .filter(|_| {
            previous.observed_generation != generation
                && incident.metadata.deletion_timestamp.is_none()
        })
        .map(|a| a.user.clone());
    match standing {
        Standing::New => {
            // Say the controller has seen the object before anything else, so kstatus
            // and Argo CD read "in progress" rather than "no status".
            let mut status = previous;
            let message = "The controller has seen this incident and is evaluating it";
            let updates =
                ConditionType::ALL.map(|kind| (kind, None, ConditionReason::Initializing, message));
            set_conditions(&mut status.conditions, &updates, generation, ns.now);
            Decision {
                status,
                events: vec![],
                transition: None,
                escalations: 0,
                newly_applied: false,
                queue_watch: None,
                scheduled_start: None,
                scope_domains: None,
                restored: vec![],
                agent_drifts: vec![],
            }
        }
        Standing::Invalid {
            errors,
            ended,
            cause,
        } => invalid(
            incident,
            errors,
            ended.as_deref(),
            *cause,
            previous,
            author,
            ns,
        ),
        Standing::Valid { spec, phase } => {
            let mut builder = Builder::new(incident, &previous, ns.now, author);
            builder.status.expires_at = spec.expires_at.map(Time);
            builder.status.starts_at = spec.starts_at.map(Time);
            builder.status.scope = Some(scope_summary(spec.scope.as_deref()));
            if previous.observed_generation != generation {
                let start = spec
                    .starts_at
                    .map(|at| format!(", starting at {at}"))
                    .unwrap_or_default();
                let by = builder.by_author();
                builder.note(
                    false,
                    EventReason::Accepted,
                    format!(
                        "Generation {}{by} accepted: {} for targets {}, {}{start}, reply {} ({})",
                        generation.unwrap_or_default(),
                        spec.mode,
                        spec.selector,
                        scope_listing(spec.scope.as_deref()),
                        spec.reply,
                        incident.spec.reason
                    ),
                );
            }
            let effective = match phase {
                Phase::Active => spec.mode.into(),
                Phase::Scheduled | Phase::Ended => EffectiveMode::Normal,
            };
            let why = if incident.metadata.deletion_timestamp.is_some() {
                format!("deleted: {}", incident.spec.reason)
            } else if spec.resolved {
                format!("resolved: {}", incident.spec.reason)
            } else if *phase == Phase::Ended {
                format!(
                    "expired at {}",
                    spec.expires_at.map(|t| t.to_string()).unwrap_or_default()
                )
            } else if *phase == Phase::Scheduled {
                format!(
                    "scheduled to start at {}: {}",
                    spec.starts_at.map(|t| t.to_string()).unwrap_or_default(),
                    incident.spec.reason
                )
            } else {
                incident.spec.reason.clone()
            };
            builder.transition_to(effective, why);
            let matched: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, outcome)| outcome.selected_by.contains(&index))
                .map(|(t, _)| t)
                .collect();
            match phase {
                Phase::Active => builder.active(index, &matched, ns, outcomes, effective),
                Phase::Scheduled => builder.scheduled(&matched, ns, spec.starts_at),
                Phase::Ended => builder.ended(&matched, ns, spec.resolved),
            }
            builder.finish()
        }
    }
}

/// `all recipients`, or how many domains: the status field `kubectl get` shows.
fn scope_summary(scope: Option<&[DomainPattern]>) -> String {
    match scope {
        None => "all recipients".into(),
        Some([_]) => "1 domain".into(),
        Some(domains) => format!("{} domains", domains.len()),
    }
}

/// The scope in an event: every recipient, or the first domains by name.
fn scope_listing(scope: Option<&[DomainPattern]>) -> String {
    const LISTED: usize = 5;
    match scope {
        None => "all recipients".into(),
        Some(domains) => {
            let mut listed: Vec<String> = domains
                .iter()
                .take(LISTED)
                .map(ToString::to_string)
                .collect();
            if domains.len() > LISTED {
                listed.push(format!("and {} more", domains.len() - LISTED));
            }
            format!("recipients in {}", listed.join(", "))
        }
    }
}

fn invalid(
    incident: &MailIncident,
    errors: &[FieldError],
    ended: Option<&str>,
    cause: Invalidity,
    previous: MailIncidentStatus,
    author: Option<String>,
    ns: &Namespace<'_>,
) -> Decision {
    let generation = incident.metadata.generation;
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let newly_seen = previous.observed_generation != generation;
    let mut builder = Builder::new(incident, &previous, ns.now, author);
    let message = match ended {
        // Targets keep whatever the last valid spec asked for: nothing is half-applied.
        None => format!("{}, nothing was changed: {message}", cause.summary()),
        Some(how) => {
            // Ended all the same: its targets return to normal service.
            builder.transition_to(EffectiveMode::Normal, format!("{how} (spec invalid)"));
            let name = incident.name_any();
            let still = ns
                .targets
                .iter()
                .filter(|t| t.source_incidents.contains(&name))
                .count();
            format!(
                "{}, but the incident has ended ({how}); {still} target(s) still run its mode: {message}",
                cause.summary()
            )
        }
    };
    let reason = cause.condition_reason();
    set_conditions(
        &mut builder.status.conditions,
        &[
            (ConditionType::Stalled, Some(true), reason, &message),
            (ConditionType::Ready, Some(false), reason, &message),
            (ConditionType::Reconciling, Some(false), reason, &message),
        ],
        generation,
        ns.now,
    );
    if newly_seen {
        builder.note(true, cause.event_reason(), message);
    }
    builder.finish()
}

struct Builder<'a> {
    incident: &'a MailIncident,
    previous: &'a MailIncidentStatus,
    status: MailIncidentStatus,
    events: Vec<Note>,
    transition: Option<Transition>,
    escalations: u32,
    /// Whether this decision announces that every target it decides applied its mode.
    newly_applied: bool,
    now: Timestamp,
    /// The user whose change of the spec this decision answers, if known.
    author: Option<String>,
}

impl<'a> Builder<'a> {
    /// A decision on `incident` that starts from its `previous` status, now describing
    /// its current generation, written by `author`.
    fn new(
        incident: &'a MailIncident,
        previous: &'a MailIncidentStatus,
        now: Timestamp,
        author: Option<String>,
    ) -> Self {
        let mut status = previous.clone();
        status.observed_generation = incident.metadata.generation;
        Self {
            incident,
            previous,
            status,
            events: vec![],
            transition: None,
            escalations: 0,
            newly_applied: false,
            now,
            author,
        }
    }

    /// ` by USER` when the author is known, for event messages.
    fn by_author(&self) -> String {
        self.author
            .as_ref()
            .map(|user| format!(" by {user}"))
            .unwrap_or_default()
    }

    fn note(&mut self, warning: bool, reason: EventReason, message: String) {
        self.events.push(Note {
            warning,
            reason,
            message,
        });
    }

    fn transition_to(&mut self, effective: EffectiveMode, why: String) {
        let from = self.previous.effective_mode;
        self.status.effective_mode = Some(effective);
        if from == Some(effective) {
            return;
        }
        let from_name = from.map_or("(none)", EffectiveMode::as_str);
        let by = self.by_author();
        self.note(
            false,
            EventReason::ModeChanged,
            format!("{from_name} -> {effective}{by}: {why}"),
        );
        let transition = Transition {
            from,
            to: effective,
            at: Time(self.now),
            reason: why,
            by: self.author.clone(),
        };
        self.push_history(transition.clone());
        self.transition = Some(transition);
    }

    /// Appends to the history, keeping its latest HISTORY_LIMIT entries.
    fn push_history(&mut self, transition: Transition) {
        self.status.history.push(transition);
        let excess = self.status.history.len().saturating_sub(HISTORY_LIMIT);
        self.status.history.drain(..excess);
    }

    fn counts(&mut self, matched: u32, applied: u32, failed: u32, superseded: u32, idle: u32) {
        self.counts_with_unready(matched, applied, failed, superseded, idle, 0);
    }

    fn counts_with_unready(
        &mut self,
        matched: u32,
        applied: u32,
        failed: u32,
        superseded: u32,
        idle: u32,
        unready: u32,
    ) {
        let previous_matched = self.previous.targets.as_ref().map(|t| t.matched);
        if let Some(before) = previous_matched.filter(|m| *m != matched) {
            self.note(
                false,
                EventReason::TargetsChanged,
                format!("Targets matched: {before} -> {matched}"),
            );
        }
        self.status.targets = Some(TargetCounts {
            matched,
            applied,
            failed,
            superseded,
            idle,
            unready,
            summary: format!(
                "{applied}/{}",
                matched.saturating_sub(superseded).saturating_sub(idle)
            ),
        });
    }

    fn active(
        &mut self,
        index: usize,
        matched: &[usize],
        ns: &Namespace<'_>,
        outcomes: &[&TargetOutcome],
        effective: EffectiveMode,
    ) {
        let mut applied = 0;
        let mut idle = 0;
        let mut pending = 0;
        let mut failures = Vec::new();
        // By the incident followed: the targets, and the domains of ours that follow it.
        let mut superseded: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let mut superseded_count = 0;
        let mut merged_layerings = std::collections::HashSet::new();
        let mut escalated = Vec::new();
        for &t in matched {
            let outcome = outcomes[t];
            // Named only where listed: most targets are counted, not named.
            let target = || ns.targets[t].target.to_string();
            if let Some(reason) = outcome.escalated.get(&index) {
                escalated.push(TargetProblem {
                    target: target(),
                    reason: reason.clone(),
                });
            }
            // Targets sharing a layering share its domains: merged once.
            let first_of_its_layering = outcome
                .layering_id()
                .is_some_and(|id| merged_layerings.insert(id));
            for (followed, domains) in outcome.follows(index) {
                let (targets, listed) = superseded
                    .entry(ns.incidents[followed].name_any())
                    .or_default();
                targets.push(target());
                if first_of_its_layering {
                    listed.extend(domains.iter().cloned());
                }
            }
            if !outcome.deciding.contains(&index) {
                superseded_count += 1;
                continue;
            }
            match &outcome.uptake {
                Some(Uptake::Applied) => applied += 1,
                Some(Uptake::Idle) => idle += 1,
                Some(Uptake::Failed(reason)) => failures.push(TargetProblem {
                    target: target(),
                    reason: reason.clone(),
                }),
                _ => pending += 1,
            }
        }
        self.escalated(escalated);
        let failed = failures.len();
        self.counts(
            matched.len() as u32,
            applied,
            failed as u32,
            superseded_count as u32,
            idle,
        );

        let new_failures: Vec<&TargetProblem> = failures
            .iter()
            .filter(|f| !self.previous.failed_targets.contains(f))
            .collect();
        if !new_failures.is_empty() {
            let listed: Vec<String> = new_failures
                .iter()
                .take(5)
                .map(|f| format!("{}: {}", f.target, f.reason))
                .collect();
            self.note(true, EventReason::TargetFailed, listed.join("; "));
        }
        failures.truncate(LISTED_TARGETS_LIMIT);
        self.status.failed_targets = failures;

        let supersessions: Vec<Supersession> = superseded
            .into_iter()
            .map(|(incident, (mut targets, mut domains))| {
                let count = targets.len() as u32;
                targets.truncate(LISTED_TARGETS_LIMIT);
                domains.sort();
                domains.dedup();
                domains.truncate(LISTED_TARGETS_LIMIT);
                Supersession {
                    incident,
                    count,
                    targets,
                    domains,
                }
            })
            .collect();
        if supersessions != self.previous.superseded_by && !supersessions.is_empty() {
            let by: Vec<String> = supersessions
                .iter()
                .map(|s| {
                    let which = if s.domains.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", s.domains.join(", "))
                    };
                    format!(
                        "{} target(s) follow incident {}{which}",
                        s.count, s.incident
                    )
                })
                .collect();
            self.note(false, EventReason::Superseded, by.join("; "));
        }
        self.status.superseded_by = supersessions;

        // Targets scaled to zero run no MTA: neither answering nor awaited.
        let owned = matched.len() - superseded_count - idle as usize;
        let idle_note = match idle {
            0 => String::new(),
            n => format!("; {n} scaled to zero (no MTA to answer)"),
        };
        let mode = effective;
        let (ready, reconciling, stalled, reason, message) = if matched.is_empty() {
            (
                false,
                false,
                false,
                ConditionReason::NoTargets,
                format!(
                    "spec.targets matches no Deployment or StatefulSet in namespace {}",
                    ns.name
                ),
            )
        } else if owned == 0 && idle == 0 {
            (
                true,
                false,
                false,
                ConditionReason::Superseded,
                "Every target follows a more severe or older incident".to_string(),
            )
        } else if applied as usize == owned {
            (
                true,
                false,
                false,
                ConditionReason::Applied,
                format!("{applied}/{owned} targets answer {mode}{idle_note}"),
            )
        } else if pending > 0 {
            (
                false,
                true,
                false,
                ConditionReason::Applying,
                format!("{applied}/{owned} targets answer {mode}; {failed} failed{idle_note}"),
            )
        } else {
            (
                false,
                false,
                true,
                ConditionReason::TargetsFailed,
                format!(
                    "{applied}/{owned} targets answer {mode}; {failed} cannot be delivered{idle_note}"
                ),
            )
        };
        if reason == ConditionReason::Applied && !self.was_ready_because(ConditionReason::Applied) {
            self.note(false, EventReason::Applied, message.clone());
            self.newly_applied = true;
        }
        if reason == ConditionReason::NoTargets && !self.was_because(ConditionReason::NoTargets) {
            // Most often a typo in spec.targets: the incident protects nothing.
            self.note(true, EventReason::NoTargets, message.clone());
        }
        self.set(ready, reconciling, stalled, reason, &message);
    }

    /// A scheduled incident changes nothing until its start, so nothing is awaited: it is
    /// Ready (GitOps tools apply a window declared for tomorrow today without waiting).
    /// Its targets are counted, with those whose pods are not all ready: an MTA or agent
    /// not ready now may miss the start.
    fn scheduled(
        &mut self,
        matched: &[usize],
        ns: &Namespace<'_>,
        starts_at: Option<k8s_openapi::jiff::Timestamp>,
    ) {
        let unready = matched
            .iter()
            .filter(|&&t| {
                let target = &ns.targets[t];
                target.replicas > 0 && target.ready_replicas < target.replicas
            })
            .count() as u32;
        let total = matched.len() as u32;
        self.counts_with_unready(total, 0, 0, 0, 0, unready);
        self.status.failed_targets.clear();
        self.status.escalated_targets.clear();
        self.status.superseded_by.clear();
        let start = starts_at.map(|t| t.to_string()).unwrap_or_default();
        let message = if matched.is_empty() {
            format!(
                "Starts at {start}: nothing changes on any MTA until then; spec.targets matches no Deployment or StatefulSet in namespace {} yet",
                ns.name
            )
        } else {
            format!(
                "Starts at {start}: nothing changes on any MTA until then; {}/{total} matched targets have every pod ready",
                total - unready
            )
        };
        if matched.is_empty() && !self.was_because(ConditionReason::Scheduled) {
            self.note(true, EventReason::NoTargets, message.clone());
        }
        self.set(true, false, false, ConditionReason::Scheduled, &message);
    }

    /// An ended incident is done once no target runs its mode any more.
    fn ended(&mut self, matched: &[usize], ns: &Namespace<'_>, resolved: bool) {
        let name = self.incident.name_any();
        let still: Vec<&super::Target> = ns
            .targets
            .iter()
            .map(AsRef::as_ref)
            .filter(|t| t.source_incidents.contains(&name))
            .collect();
        self.counts(matched.len() as u32, 0, 0, 0, 0);
        self.status.superseded_by.clear();
        self.status.escalated_targets.clear();
        let ended_by = if self.incident.metadata.deletion_timestamp.is_some() {
            ConditionReason::Deleted
        } else if resolved {
            ConditionReason::Resolved
        } else {
            ConditionReason::Expired
        };
        self.status.failed_targets = still
            .iter()
            .filter_map(|t| {
                t.queue
                    .restart_refusal()
                    .filter(|_| t.template_hash.is_some())
                    .map(|reason| TargetProblem {
                        target: t.target.to_string(),
                        reason: format!("cannot return to normal service: {reason}"),
                    })
            })
            .take(LISTED_TARGETS_LIMIT)
            .collect();
        if still.is_empty() {
            let message = format!("{ended_by}: no target runs this incident's mode any more");
            if !self.was_ready_because(ended_by) {
                self.note(false, EventReason::Restored, message.clone());
            }
            self.set(true, false, false, ended_by, &message);
        } else {
            let message = format!(
                "{ended_by}: {} target(s) still run this incident's mode",
                still.len()
            );
            let stuck = !self.status.failed_targets.is_empty();
            self.set(false, !stuck, stuck, ended_by, &message);
        }
    }

    /// Whether the last status gave `reason` for Ready, whatever its value.
    fn was_because(&self, reason: ConditionReason) -> bool {
        self.previous
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Ready.as_str() && c.reason == reason.as_str())
    }

    fn was_ready_because(&self, reason: ConditionReason) -> bool {
        self.previous.conditions.iter().any(|c| {
            c.type_ == ConditionType::Ready.as_str()
                && c.status == "True"
                && c.reason == reason.as_str()
        })
    }

    fn set(
        &mut self,
        ready: bool,
        reconciling: bool,
        stalled: bool,
        reason: ConditionReason,
        message: &str,
    ) {
        let stalled_reason = if stalled {
            reason
        } else {
            ConditionReason::SpecValid
        };
        let stalled_message = if stalled {
            message
        } else {
            "The spec is valid"
        };
        set_conditions(
            &mut self.status.conditions,
            &[
                (ConditionType::Ready, Some(ready), reason, message),
                (
                    ConditionType::Reconciling,
                    Some(reconciling),
                    reason,
                    message,
                ),
                (
                    ConditionType::Stalled,
                    Some(stalled),
                    stalled_reason,
                    stalled_message,
                ),
            ],
            self.incident.metadata.generation,
            self.now,
        );
    }

    fn finish(self) -> Decision {
        Decision {
            status: self.status,
            events: self.events,
            transition: self.transition,
            escalations: self.escalations,
            newly_applied: self.newly_applied,
            queue_watch: None,
            scheduled_start: None,
            scope_domains: None,
            restored: vec![],
            agent_drifts: vec![],
        }
    }

    /// Records the targets switched from AcceptAndQueue to TempFail: the status lists
    /// them; the newly switched ones get a Warning event and a history entry.
    fn escalated(&mut self, escalated: Vec<TargetProblem>) {
        let new: Vec<&TargetProblem> = escalated
            .iter()
            .filter(|e| {
                !self
                    .previous
                    .escalated_targets
                    .iter()
                    .any(|p| p.target == e.target)
            })
            .collect();
        if !new.is_empty() {
            let listed: Vec<String> = new
                .iter()
                .take(5)
                .map(|e| format!("{}: {}", e.target, e.reason))
                .collect();
            let why = format!(
                "escalated {} target(s) from AcceptAndQueue to TempFail: {}",
                new.len(),
                listed.join("; ")
            );
            self.note(true, EventReason::Escalated, why.clone());
            self.push_history(Transition {
                from: Some(EffectiveMode::AcceptAndQueue),
                to: EffectiveMode::TempFail,
                at: Time(self.now),
                reason: why,
                by: None,
            });
            self.escalations = new.len() as u32;
        }
        let mut escalated = escalated;
        escalated.truncate(LISTED_TARGETS_LIMIT);
        self.status.escalated_targets = escalated;
    }
}
