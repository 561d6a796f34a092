//! What the controller decides, as pure functions: from the incidents and workloads of one
//! namespace and the time, the mode each target must run (precedence), the writes that get
//! it there, each incident's status and events, and when to look again. Nothing here
//! talks to Kubernetes; tests build every input by hand.

mod conditions;
mod reasons;
mod status;
mod target;

pub use conditions::{ConditionType, set_conditions};
pub use reasons::{ConditionReason, EventReason};
pub use target::{Delivery, QueueLoad, QueueStorage, Target, TargetRef, Uptake, WorkloadKind};

use crate::api::{
    MailIncident, MailIncidentSpec, MailIncidentStatus, Mode, MtaKind, TimeSpan, Transition,
    admission::{self, Admitted, NotAdmitted, SigningKey},
    mode_document::{
        DELIVERY_ANNOTATION, DocumentIncident, DocumentQueue, DocumentRelease, DriftReport,
        MODE_DOCUMENT_KEY, MODE_DOCUMENT_KIND, MODE_DOCUMENT_VERSION, ModeDocument,
        RESTART_ENV_PREFIX, Rule, document_name, report_name,
    },
    scope::DomainPattern,
    validation::{self, EscalationLimits, ValidIncident},
};
use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, core::SelectorExt};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

/// How many transitions the status keeps.
pub const HISTORY_LIMIT: usize = 20;
/// How many targets a status lists by name in each list (counts are always complete).
pub const LISTED_TARGETS_LIMIT: usize = 20;

/// Everything one namespace holds that planning needs.
pub struct Namespace<'a> {
    pub name: &'a str,
    pub incidents: Vec<&'a MailIncident>,
    /// Shared with the caller's view between syncs: an unchanged target is the same `Arc`,
    /// which a [`Planner`] recognises at the cost of a pointer comparison.
    pub targets: &'a [Arc<Target>],
    /// Targets whose last write was refused by the API server, and why (e.g. a
    /// server-side apply conflict with a GitOps tool).
    pub write_failures: &'a BTreeMap<TargetRef, String>,
    /// Workloads that no longer exist but still have a mode document or report.
    pub orphaned_documents: &'a [TargetRef],
    /// The key the admission webhook signs its records with: a HardReject is applied
    /// only under a record it verifies (see [`crate::api::admission`]).
    pub signing_key: Option<&'a SigningKey>,
    pub now: Timestamp,
}

/// The decisions for one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// One per incident of the namespace, in the order given.
    pub incidents: Vec<Decision>,
    /// When the namespace must be looked at again even if nothing changes (an expiry).
    pub wake_at: Option<Timestamp>,
}

/// A change to make on a target so that it runs the mode planned for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create or update the target's mode document (reload delivery).
    PutDocument {
        target: TargetRef,
        /// Shared by every target decided alike.
        document: Arc<ModeDocument>,
        /// Every active incident selecting the target: if all of them disappear without
        /// the controller (say, their finalizers removed by hand), garbage collection
        /// removes the document and the agents restore normal service.
        owners: Vec<Owner>,
        /// The document exists already (and only needs its content replaced).
        exists: bool,
        /// Also create the report ConfigMap the target's agents write to.
        create_report: bool,
    },
    /// Remove the target's mode document: normal service.
    DeleteDocument {
        target: TargetRef,
        /// Keep its report (orphaned from the document) for the agents to say how their
        /// release of the held mail goes, until every one says it is over.
        keep_report: bool,
    },
    /// Remove the report of a target whose agents have all released their held mail and
    /// returned to normal service (or that runs no pod to report).
    DeleteReport { target: TargetRef },
    /// Set the mode as env vars on the MTA container's pod template (restart delivery).
    SetRestartEnv {
        target: TargetRef,
        container: String,
        document: Arc<ModeDocument>,
    },
    /// Remove our env vars from the pod template: normal service.
    ClearRestartEnv { target: TargetRef },
    /// Remove the report entries of pods that are gone: a long incident with rollouts
    /// would otherwise grow its reports without bound.
    PruneReport {
        target: TargetRef,
        pods: Vec<String>,
    },
}

/// An incident owning a mode document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

/// One of the operator's own objects, found changed by another hand and put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Restored {
    /// A mode document: its content, hash annotation or owners.
    ModeDocument,
    /// A report ConfigMap: its owner (its labels bring it back as a missing report).
    Report,
    /// Restart delivery's env vars on a pod template.
    RestartEnv,
}

impl Restored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModeDocument => "ModeDocument",
            Self::Report => "Report",
            Self::RestartEnv => "RestartEnv",
        }
    }
}

/// An agent's word that its MTA drifted from the mode, on a target an incident decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDrift {
    pub target: TargetRef,
    pub pod: String,
    pub drift: DriftReport,
}

/// The status and events of one incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: MailIncidentStatus,
    pub events: Vec<Note>,
    /// What of ours this decision puts back after another hand changed it.
    pub restored: Vec<Restored>,
    /// What the agents of the targets it decides said of their MTAs' drift.
    pub agent_drifts: Vec<AgentDrift>,
    /// The mode transition this decision records, if any.
    pub transition: Option<Transition>,
    /// Targets this decision newly switches from AcceptAndQueue to TempFail.
    pub escalations: u32,
    /// Whether every target it decides answers in its mode since this decision (it
    /// announces Applied): the time its generation took to apply ends here.
    pub newly_applied: bool,
    /// The queue figures the incident is watched by, while its spec is valid.
    pub queue_watch: Option<QueueWatch>,
    /// When it takes effect, while it is scheduled.
    pub scheduled_start: Option<Timestamp>,
    /// How many recipient domains it covers, when its spec is valid and scoped.
    pub scope_domains: Option<u32>,
}

/// What an incident's queue alerts compare: its lifetime and escalation limits, and the
/// fullest queues among the targets whose mode it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueWatch {
    pub lifetime: TimeSpan,
    pub escalation: Option<EscalationLimits>,
    /// The peak (see [`QueueLoad::peak_of`]) over every target it decides, escalated
    /// ones included: their held mail still ages towards the lifetime.
    pub peak: QueueLoad,
    /// The peak over the targets it keeps in AcceptAndQueue (not escalated): the ones the
    /// escalation limits can still switch.
    pub accepting_peak: QueueLoad,
}

/// An event to record on an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: EventReason,
    pub message: String,
}

/// How an incident takes part in planning.
enum Standing {
    /// Seen for the first time: it only gets its Unknown conditions this round.
    New,
    /// Its spec is invalid, or a HardReject nobody allowed to bounce mail admitted: it
    /// changes nothing, and targets carrying its mode keep it, until it ends all the same
    /// (`ended` says how): resolved, deleted, or past the end of its last valid
    /// generation. An edit must never keep a fleet in a mode forever.
    Invalid {
        errors: Vec<validation::FieldError>,
        ended: Option<String>,
        cause: Invalidity,
    },
    /// Valid, at one point of its life.
    Valid { spec: ValidIncident, phase: Phase },
}

/// Why an incident changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalidity {
    /// Its spec breaks a rule of the API.
    Spec,
    /// A HardReject without an admission record that checks out and says its author may
    /// bounce mail: fail closed.
    BounceNotApproved,
}

impl Invalidity {
    /// The reason of its conditions.
    fn condition_reason(self) -> ConditionReason {
        match self {
            Self::Spec => ConditionReason::InvalidSpec,
            Self::BounceNotApproved => ConditionReason::BounceNotApproved,
        }
    }

    /// The reason of its event.
    fn event_reason(self) -> EventReason {
        match self {
            Self::Spec => EventReason::InvalidSpec,
            Self::BounceNotApproved => EventReason::BounceNotApproved,
        }
    }

    /// What its condition message starts with.
    fn summary(self) -> &'static str {
        match self {
            Self::Spec => "Invalid spec",
            Self::BounceNotApproved => "Not approved",
        }
    }
}

/// Where a valid incident stands in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Declared ahead of time: nothing changes on any MTA until `spec.startsAt`.
    Scheduled,
    /// It asks for its mode.
    Active,
    /// Resolved, expired or deleted.
    Ended,
}

impl Standing {
    fn active(&self) -> Option<&ValidIncident> {
        match self {
            Standing::Valid {
                spec,
                phase: Phase::Active,
            } => Some(spec),
            _ => None,
        }
    }
}

/// Plans one namespace from scratch.
pub fn plan(ns: &Namespace<'_>) -> Plan {
    Planner::default().plan(ns)
}

/// Plans one namespace sync after sync, keeping each target's decision in between: a plan
/// decides again only the targets whose inputs changed (the target as observed, its last
/// write's failure), or every target when the incidents changed in what decides targets,
/// and sums up each incident's status from the kept decisions. A change of one report or
/// one workload thus costs one target's decision, whatever the size of the fleet. Plan
/// for plan, the same as [`plan`] from scratch (a property test holds it to that).
#[derive(Default)]
pub struct Planner {
    incidents: Vec<IncidentKey>,
    decided: HashMap<TargetRef, Decided>,
    /// Shared by the targets with the same candidates, while the incidents stay the same.
    layerings: HashMap<Vec<usize>, Arc<Layered>>,
    /// Shared by the targets decided alike (a scope of 1000 domains makes a document tens
    /// of kilobytes of JSON to build and hash), while the incidents stay the same.
    documents: HashMap<DocumentKey, (Arc<ModeDocument>, String)>,
    redecided: usize,
}

/// What of an incident its targets' decisions read. Its status is not part of it (only
/// through its standing): rewritten whenever its counts change, it would otherwise make
/// every report that completes a count decide the whole fleet again.
#[derive(PartialEq)]
struct IncidentKey {
    name: Option<String>,
    uid: Option<String>,
    created: Option<Timestamp>,
    spec: MailIncidentSpec,
    standing: StandingClass,
}

/// A [`Standing`] without what follows from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StandingClass {
    New,
    Invalid { ended: bool, cause: Invalidity },
    Valid(Phase),
}

impl From<&Standing> for StandingClass {
    fn from(standing: &Standing) -> Self {
        match standing {
            Standing::New => Self::New,
            Standing::Invalid { ended, cause, .. } => Self::Invalid {
                ended: ended.is_some(),
                cause: *cause,
            },
            Standing::Valid { phase, .. } => Self::Valid(*phase),
        }
    }
}

/// One target's decision, with the inputs it was made from.
struct Decided {
    target: Arc<Target>,
    failure: Option<String>,
    writes: Vec<Write>,
    /// Put-backs of what another hand changed, by the index of the incident deciding.
    restorations: Vec<(usize, Restoration)>,
    outcome: TargetOutcome,
}

/// What every target's decision reads of the namespace's incidents.
struct Incidents<'n, 'a> {
    ns: &'n Namespace<'a>,
    standings: &'n [Standing],
    /// Every active incident, most severe first, then the oldest: the order of the rules.
    by_precedence: &'n [usize],
    /// Incidents whose targets keep the mode they carry (see [`carries_mode_of`]).
    frozen: &'n BTreeSet<&'n str>,
}

impl Planner {
    /// How many targets the last plan decided again.
    pub fn redecided(&self) -> usize {
        self.redecided
    }

    /// Plans the namespace, deciding again only what changed since the last plan.
    pub fn plan(&mut self, ns: &Namespace<'_>) -> Plan {
        let admissions: Vec<Result<Admitted, NotAdmitted>> = ns
            .incidents
            .iter()
            .map(|i| admission::admitted(i, ns.signing_key))
            .collect();
        let standings: Vec<Standing> = ns
            .incidents
            .iter()
            .zip(&admissions)
            .map(|(i, admission)| standing(i, ns.now, admission))
            .collect();
        // An ended incident never freezes its targets, whatever its spec: a deleted one,
        // once gone, could never restore them.
        let frozen: BTreeSet<&str> = ns
            .incidents
            .iter()
            .zip(&standings)
            .filter(|(_, s)| matches!(s, Standing::Invalid { ended: None, .. }))
            .map(|(i, _)| i.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let mut by_precedence: Vec<usize> = (0..standings.len())
            .filter(|&i| standings[i].active().is_some())
            .collect();
        by_precedence.sort_by(|&a, &b| {
            precedence(ns.incidents[b], &standings[b])
                .cmp(&precedence(ns.incidents[a], &standings[a]))
        });
        let incidents: Vec<IncidentKey> = ns
            .incidents
            .iter()
            .zip(&standings)
            .map(|(incident, standing)| IncidentKey {
                name: incident.metadata.name.clone(),
                uid: incident.metadata.uid.clone(),
                created: incident.metadata.creation_timestamp.as_ref().map(|t| t.0),
                spec: incident.spec.clone(),
                standing: standing.into(),
            })
            .collect();
        if incidents != self.incidents {
            self.incidents = incidents;
            self.decided.clear();
            self.layerings.clear();
            self.documents.clear();
        }
        let context = Incidents {
            ns,
            standings: &standings,
            by_precedence: &by_precedence,
            frozen: &frozen,
        };

        let mut writes = Vec::new();
        let mut restorations: Vec<(usize, Restoration)> = Vec::new();
        self.redecided = 0;
        for target in ns.targets {
            let failure = ns.write_failures.get(&target.target);
            let kept = self.decided.get(&target.target).is_some_and(|d| {
                (Arc::ptr_eq(&d.target, target) || d.target == *target)
                    && d.failure.as_ref() == failure
            });
            if !kept {
                let decided = self.decide(&context, target, failure);
                self.decided.insert(target.target.clone(), decided);
                self.redecided += 1;
            }
            let decided = &self.decided[&target.target];
            writes.extend(decided.writes.iter().cloned());
            restorations.extend(decided.restorations.iter().cloned());
        }
        // Every target is in the map now: anything more is a target that is gone.
        if self.decided.len() != ns.targets.len() {
            let present: BTreeSet<&TargetRef> = ns.targets.iter().map(|t| &t.target).collect();
            self.decided.retain(|target, _| present.contains(target));
        }
        let outcomes: Vec<&TargetOutcome> = ns
            .targets
            .iter()
            .map(|t| &self.decided[&t.target].outcome)
            .collect();

        // Nothing can run a document whose workload is gone; one with its name created
        // later would start in that mode.
        writes.extend(
            ns.orphaned_documents
                .iter()
                .map(|target| Write::DeleteDocument {
                    target: target.clone(),
                    keep_report: false,
                }),
        );

        let incidents = ns
            .incidents
            .iter()
            .zip(&standings)
            .enumerate()
            .map(|(index, (incident, standing))| {
                let mut decision =
                    status::decide(incident, index, standing, &admissions[index], ns, &outcomes);
                if let Some(spec) = standing.active() {
                    decision.queue_watch = Some(queue_watch(spec, index, ns.targets, &outcomes));
                }
                if let Standing::Valid { spec, phase } = standing {
                    decision.scheduled_start =
                        spec.starts_at.filter(|_| *phase == Phase::Scheduled);
                    decision.scope_domains = spec
                        .scope
                        .as_ref()
                        .map(|scope| u32::try_from(scope.len()).unwrap_or(u32::MAX));
                }
                for (_, restoration) in restorations.iter().filter(|(i, _)| *i == index) {
                    decision.restored.push(restoration.object);
                    decision.events.push(restoration.note());
                }
                decision.agent_drifts = agent_drifts(index, ns.targets, &outcomes);
                decision
            })
            .collect();
        let wake_at = standings
            .iter()
            .zip(&ns.incidents)
            .filter_map(|(s, incident)| match s {
                Standing::Valid {
                    spec,
                    phase: Phase::Active,
                } => spec.expires_at,
                Standing::Valid {
                    spec,
                    phase: Phase::Scheduled,
                } => spec.starts_at,
                // Its last valid generation's end still ends it.
                Standing::Invalid { ended: None, .. } => incident
                    .status
                    .as_ref()
                    .and_then(|s| s.expires_at.as_ref())
                    .map(|at| at.0),
                _ => None,
            })
            .filter(|at| *at > ns.now)
            .min();
        Plan {
            writes,
            incidents,
            wake_at,
        }
    }

    /// Decides one target: the mode it must run, the writes that get it there, and what
    /// it tells its incidents' statuses.
    fn decide(
        &mut self,
        context: &Incidents<'_, '_>,
        target: &Arc<Target>,
        failure: Option<&String>,
    ) -> Decided {
        let Incidents {
            ns,
            standings,
            by_precedence,
            frozen,
        } = *context;
        let selected_by: Vec<usize> = standings
            .iter()
            .enumerate()
            .filter(|(_, standing)| match standing {
                Standing::Valid { spec, .. } => spec.selector.matches(&target.labels),
                _ => false,
            })
            .map(|(index, _)| index)
            .collect();
        let mut decided = Decided {
            target: target.clone(),
            failure: failure.cloned(),
            writes: vec![],
            restorations: vec![],
            outcome: TargetOutcome {
                selected_by,
                ..TargetOutcome::default()
            },
        };
        let candidates: Vec<usize> = by_precedence
            .iter()
            .copied()
            .filter(|&i| decided.outcome.selected_by.contains(&i))
            .collect();
        // Comparing scopes is quadratic in their domains: done once per set of
        // candidates, which most targets of a fleet share.
        let layered = self
            .layerings
            .entry(candidates.clone())
            .or_insert_with(|| {
                let scopes: Vec<Option<&[DomainPattern]>> = candidates
                    .iter()
                    .map(|&i| standings[i].active().and_then(|spec| spec.scope.as_deref()))
                    .collect();
                Arc::new(Layered {
                    layers: layer(&scopes),
                    candidates: candidates.clone(),
                })
            })
            .clone();
        let deciding: Vec<usize> = layered
            .layers
            .iter()
            .zip(&candidates)
            .filter(|(layer, _)| layer.decides)
            .map(|(_, &index)| index)
            .collect();
        let Some(&headline) = deciding.first() else {
            if !carries_mode_of(target, frozen) {
                decided.writes = restore_normal(target);
            }
            return decided;
        };
        let escalated: BTreeMap<usize, String> = deciding
            .iter()
            .filter_map(|&index| {
                let limits = standings[index].active()?.escalation.as_ref()?;
                Some((index, target.escalation(limits)?))
            })
            .collect();
        let mta = target.mta.or(ns.incidents[headline].spec.targets.mta);
        let escalated_indices: Vec<usize> = escalated.keys().copied().collect();
        let (document, hash) = self
            .documents
            .entry((deciding.clone(), escalated_indices, mta))
            .or_insert_with(|| {
                let document = document_for(ns, standings, &deciding, mta, &escalated);
                let hash = document.hash();
                (Arc::new(document), hash)
            })
            .clone();
        let scoped = !document.rules.iter().all(|r| r.recipient_domains.is_none());
        let owners = candidates
            .iter()
            .map(|&c| Owner {
                name: ns.incidents[c].name_any(),
                uid: ns.incidents[c].metadata.uid.clone().unwrap_or_default(),
            })
            .collect();
        let refusal = (scoped && target.delivery == Delivery::Restart).then(|| {
            format!(
                "restart delivery gives every recipient one mode, so it cannot carry a scoped incident: annotate the workload {DELIVERY_ANNOTATION}: reload"
            )
        });
        if !carries_mode_of(target, frozen) && refusal.is_none() {
            let delivery = deliver(target, document, &hash, owners);
            decided.writes = delivery.writes;
            // A target whose last write was refused is not put back (its TargetFailed
            // event says why): announcing each retry would repeat a restoration that fails.
            if failure.is_none() {
                decided.restorations = delivery
                    .restorations
                    .into_iter()
                    .map(|r| (headline, r))
                    .collect();
            }
        }
        let uptake = match (failure, refusal) {
            (Some(failure), _) => Uptake::Failed(failure.clone()),
            (None, Some(refusal)) => Uptake::Failed(refusal),
            (None, None) => target.uptake(&hash),
        };
        decided.outcome.deciding = deciding;
        decided.outcome.layered = Some(layered);
        decided.outcome.uptake = Some(uptake);
        decided.outcome.escalated = escalated;
        decided
    }
}

/// The active incidents selecting a target, in order of precedence, and how their
/// scopes layer.
#[derive(Debug)]
struct Layered {
    candidates: Vec<usize>,
    layers: Vec<Layer>,
}

impl TargetOutcome {
    /// The incidents some of whose recipients `index`'s follow on this target, with those
    /// recipients' domains (empty: every recipient it covers).
    fn follows(&self, index: usize) -> impl Iterator<Item = (usize, &[String])> {
        self.layered.iter().flat_map(move |layered| {
            let position = layered.candidates.iter().position(|&c| c == index);
            position.into_iter().flat_map(move |p| {
                layered.layers[p]
                    .follows
                    .iter()
                    .map(move |(earlier, domains)| {
                        (layered.candidates[*earlier], domains.as_slice())
                    })
            })
        })
    }

    /// Which layering it shares with other targets: the same one gives the same domains.
    fn layering_id(&self) -> Option<*const Layered> {
        self.layered.as_ref().map(Arc::as_ptr)
    }
}

/// Where one candidate incident stands among those before it on a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Layer {
    /// Some recipient it covers gets its rule: it has a rule in the document.
    decides: bool,
    /// The domains it covers that follow an earlier candidate instead, by that candidate's
    /// position; empty domains: every recipient it covers.
    follows: Vec<(usize, Vec<String>)>,
}

/// Layers the scopes of a target's candidates, in order of precedence (`None`: every
/// recipient). A recipient gets the first candidate covering its domain, so each one is
/// decided wherever no earlier one covers it: it has a rule unless every pattern of it is
/// included in an earlier scope (or an earlier candidate covers everyone).
fn layer(scopes: &[Option<&[DomainPattern]>]) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Vec::with_capacity(scopes.len());
    for (position, scope) in scopes.iter().enumerate() {
        let earlier = &scopes[..position];
        let mut layer = Layer::default();
        if let Some(everyone) = earlier.iter().position(Option::is_none) {
            layer.follows.push((everyone, vec![]));
            layers.push(layer);
            continue;
        }
        let mut follows: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        match scope {
            None => {
                // Everyone but the earlier scopes' domains (of those that decide: the
                // others' domains are inside them).
                layer.decides = true;
                for (at, earlier_scope) in earlier.iter().enumerate() {
                    if !layers[at].decides {
                        continue;
                    }
                    let domains = earlier_scope.unwrap_or_default();
                    follows
                        .entry(at)
                        .or_default()
                        .extend(domains.iter().map(ToString::to_string));
                }
            }
            Some(patterns) => {
                for pattern in *patterns {
                    let including = earlier
                        .iter()
                        .position(|s| s.unwrap_or_default().iter().any(|e| e.includes(pattern)));
                    match including {
                        Some(at) => follows.entry(at).or_default().push(pattern.to_string()),
                        None => {
                            layer.decides = true;
                            // Narrower earlier patterns inside it take their part.
                            for (at, earlier_scope) in earlier.iter().enumerate() {
                                if !layers[at].decides {
                                    continue;
                                }
                                follows.entry(at).or_default().extend(
                                    earlier_scope
                                        .unwrap_or_default()
                                        .iter()
                                        .filter(|e| pattern.includes(e))
                                        .map(ToString::to_string),
                                );
                            }
                        }
                    }
                }
            }
        }
        layer.follows = follows
            .into_iter()
            .filter(|(_, domains)| !domains.is_empty())
            .map(|(at, mut domains)| {
                domains.sort();
                domains.dedup();
                (at, domains)
            })
            .collect();
        layers.push(layer);
    }
    layers
}

fn queue_watch(
    spec: &ValidIncident,
    index: usize,
    targets: &[Arc<Target>],
    outcomes: &[&TargetOutcome],
) -> QueueWatch {
    let governed = || {
        targets
            .iter()
            .zip(outcomes)
            .filter(move |(_, outcome)| outcome.deciding.contains(&index))
    };
    QueueWatch {
        lifetime: spec.queue_lifetime,
        escalation: spec.escalation,
        peak: QueueLoad::peak_of(governed().flat_map(|(target, _)| &target.queues)),
        accepting_peak: QueueLoad::peak_of(
            governed()
                .filter(|(_, outcome)| !outcome.escalated.contains_key(&index))
                .flat_map(|(target, _)| &target.queues),
        ),
    }
}

/// What planning concluded for one target.
#[derive(Default)]
struct TargetOutcome {
    /// The valid incidents (in any phase) whose `spec.targets` select it.
    selected_by: Vec<usize>,
    /// The incidents with a rule in its document, in the rules' order.
    deciding: Vec<usize>,
    /// How the scopes of the incidents selecting it layer, shared by every target with
    /// the same incidents.
    layered: Option<Arc<Layered>>,
    uptake: Option<Uptake>,
    /// Deciding incidents whose AcceptAndQueue the target's queue switched to TempFail,
    /// and why.
    escalated: BTreeMap<usize, String>,
}

fn standing(
    incident: &MailIncident,
    now: Timestamp,
    admission: &Result<Admitted, NotAdmitted>,
) -> Standing {
    if incident
        .status
        .as_ref()
        .is_none_or(|s| s.conditions.is_empty())
    {
        return Standing::New;
    }
    let created = incident.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match validation::validate(&incident.spec, created) {
        Err(errors) => Standing::Invalid {
            errors,
            ended: ended_while_invalid(incident, now),
            cause: Invalidity::Spec,
        },
        Ok(spec) => {
            let ended = spec.resolved
                || spec.expires_at.is_some_and(|at| at <= now)
                || incident.metadata.deletion_timestamp.is_some();
            let phase = if ended {
                Phase::Ended
            } else if spec.starts_at.is_some_and(|at| at > now) {
                Phase::Scheduled
            } else {
                Phase::Active
            };
            if spec.mode == Mode::HardReject
                && phase != Phase::Ended
                && let Some(refusal) = bounce_refusal(admission)
            {
                return Standing::Invalid {
                    errors: vec![validation::FieldError {
                        field: "spec.mode",
                        message: refusal,
                    }],
                    ended: None,
                    cause: Invalidity::BounceNotApproved,
                };
            }
            Standing::Valid { spec, phase }
        }
    }
}

/// Why a HardReject may not be applied, if it may not: no admission record checks out
/// for it as it is now, or the one that does says its author may not bounce mail.
fn bounce_refusal(admission: &Result<Admitted, NotAdmitted>) -> Option<String> {
    let why = match admission {
        Ok(admitted) if admitted.may_bounce => return None,
        Ok(admitted) => format!(
            "its admission record says {:?} may not bounce mail",
            admitted.user
        ),
        Err(not_admitted) => not_admitted.to_string(),
    };
    Some(format!(
        "HardReject is applied to no MTA: {why}; a user allowed to bounce mail (verb \"bounce\" on mailincidents.mailops.dev, which the ClusterRole {BOUNCE_ROLE} grants) must apply it again"
    ))
}

/// The ClusterRole that grants the `bounce` verb (deploy/user-roles.yaml, the chart).
pub const BOUNCE_ROLE: &str = "mail-incident-operator-bounce";

/// How an incident whose spec is invalid has ended all the same, if it has: deleted,
/// resolved (a field validation never doubts), or past the end its last valid generation
/// set, which its status keeps.
fn ended_while_invalid(incident: &MailIncident, now: Timestamp) -> Option<String> {
    let last_valid_end = incident.status.as_ref().and_then(|s| s.expires_at.as_ref());
    if incident.metadata.deletion_timestamp.is_some() {
        Some(format!("deleted: {}", incident.spec.reason))
    } else if incident.spec.resolved {
        Some(format!("resolved: {}", incident.spec.reason))
    } else {
        last_valid_end
            .filter(|at| at.0 <= now)
            .map(|at| format!("expired at {}", at.0))
    }
}

/// The order of precedence: the most severe mode wins, then the oldest incident, then
/// the first name, so the choice never depends on the order of a cache.
fn precedence(
    incident: &MailIncident,
    standing: &Standing,
) -> (u8, std::cmp::Reverse<(Option<Timestamp>, String)>) {
    let severity = standing.active().map_or(0, |spec| severity(spec.mode));
    let created = incident.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (severity, std::cmp::Reverse((created, incident.name_any())))
}

pub fn severity(mode: Mode) -> u8 {
    match mode {
        Mode::AcceptAndQueue => 1,
        Mode::TempFail => 2,
        Mode::HardReject => 3,
    }
}

/// Whether the target currently runs the mode of an incident whose spec became invalid:
/// such targets are left as they are.
fn carries_mode_of(target: &Target, frozen: &BTreeSet<&str>) -> bool {
    !frozen.is_empty()
        && target
            .source_incidents
            .iter()
            .any(|name| frozen.contains(name.as_str()))
}

/// The document for `target`: one rule per deciding incident, in order of precedence; an
/// escalated AcceptAndQueue rule is TempFail, with the incident's reply (validation keeps
/// it a 4xx). The lifetimes are the longest of the rules' (no held message may expire
/// early), the release the most gentle.
/// What decides a target's document: its deciding incidents, those escalated, its MTA.
type DocumentKey = (Vec<usize>, Vec<usize>, Option<MtaKind>);

fn document_for(
    ns: &Namespace<'_>,
    standings: &[Standing],
    deciding: &[usize],
    mta: Option<MtaKind>,
    escalated: &BTreeMap<usize, String>,
) -> ModeDocument {
    let specs: Vec<(&MailIncident, &ValidIncident)> = deciding
        .iter()
        .filter_map(|&i| Some((ns.incidents[i], standings[i].active()?)))
        .collect();
    let rules = deciding
        .iter()
        .zip(&specs)
        .map(|(index, (incident, spec))| Rule {
            mode: if escalated.contains_key(index) {
                Mode::TempFail
            } else {
                spec.mode
            },
            reply: (&spec.reply).into(),
            recipient_domains: spec
                .scope
                .as_ref()
                .map(|scope| scope.iter().map(ToString::to_string).collect()),
            incident: DocumentIncident {
                name: incident.name_any(),
                uid: incident.metadata.uid.clone().unwrap_or_default(),
                reason: incident.spec.reason.clone(),
            },
        })
        .collect();
    let longest = |span: fn(&ValidIncident) -> TimeSpan| {
        specs
            .iter()
            .map(|(_, spec)| span(spec))
            .max()
            .map(|span| span.to_string())
            .unwrap_or_default()
    };
    ModeDocument {
        api_version: MODE_DOCUMENT_VERSION.into(),
        kind: MODE_DOCUMENT_KIND.into(),
        rules,
        queue: DocumentQueue {
            lifetime: longest(|spec| spec.queue_lifetime),
            bounce_lifetime: longest(|spec| spec.bounce_lifetime),
        },
        release: DocumentRelease {
            concurrency: specs
                .iter()
                .map(|(_, spec)| spec.release_concurrency)
                .min()
                .unwrap_or(1),
        },
        mta,
    }
}

/// What delivering a mode to a target takes: the writes, and what of ours they put back.
struct Delivered {
    writes: Vec<Write>,
    restorations: Vec<Restoration>,
}

/// One of our objects found changed by another hand: which, its name, how, and who.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Restoration {
    object: Restored,
    name: String,
    how: String,
    by: Option<String>,
}

impl Restoration {
    fn note(&self) -> Note {
        let by = self.by.as_deref().map_or_else(
            || "another hand".to_string(),
            |m| format!("field manager {m:?}"),
        );
        let (kind, put_back) = match self.object {
            Restored::ModeDocument => ("ConfigMap", "written back"),
            Restored::Report => ("ConfigMap", "applied again"),
            Restored::RestartEnv => ("workload", "applied again"),
        };
        Note {
            warning: true,
            reason: EventReason::Restored,
            message: format!(
                "{kind} {} was changed by {by} ({}); {put_back}",
                self.name, self.how
            ),
        }
    }
}

/// The writes that put `document` on the target's delivery channel and clear the other;
/// whatever differs from it is written back, whoever changed it.
fn deliver(
    target: &Target,
    document: Arc<ModeDocument>,
    hash: &str,
    owners: Vec<Owner>,
) -> Delivered {
    let target_ref = target.target.clone();
    let mut restorations = Vec::new();
    let writes = match target.delivery {
        Delivery::Reload => {
            let name = document_name(target_ref.kind.as_str(), &target_ref.name);
            let exists = target.document_hash.is_some();
            let mut owners_wanted: Vec<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
            let mut owners_stored: Vec<&str> =
                target.document_owners.iter().map(String::as_str).collect();
            owners_wanted.sort_unstable();
            owners_stored.sort_unstable();
            let content_stale = target.document_hash.as_deref() != Some(hash);
            let owners_stale = owners_wanted != owners_stored;
            let stale = content_stale || owners_stale || target.document_mismatch.is_some();
            // Our own updates leave us the last writer, and never leave a document without
            // owners; anything else is another hand's (one that only removed fields owns
            // none, so it is not named).
            let how = if let Some(mismatch) = &target.document_mismatch {
                Some(mismatch.clone())
            } else if owners_stale && target.document_owners.is_empty() {
                Some("its owner references were removed".to_string())
            } else if target.changed_by.is_none() {
                None
            } else if content_stale {
                Some(format!(
                    "its {MODE_DOCUMENT_KEY} is not the mode planned: hash {}, planned {hash}",
                    target.document_hash.as_deref().unwrap_or_default()
                ))
            } else if owners_stale {
                Some("its owner references are not the incidents selecting it".to_string())
            } else {
                None
            };
            if let Some(how) = how.filter(|_| exists) {
                restorations.push(Restoration {
                    object: Restored::ModeDocument,
                    name: name.clone(),
                    how,
                    by: target.changed_by.clone(),
                });
            }
            // A report deleted by anyone while the incident runs is created again
            // (agents may only patch it), and one that lost its owner is owned again.
            let report_lost_owner = exists && target.report_exists && !target.report_owned;
            if report_lost_owner && !stale {
                restorations.push(Restoration {
                    object: Restored::Report,
                    name: report_name(&name),
                    how: format!("it does not name ConfigMap {name} as its owner"),
                    by: None,
                });
            }
            // A report left from an earlier incident's release is owned again.
            let create_report = !target.report_exists || !target.report_owned;
            let put = (stale || create_report).then_some(Write::PutDocument {
                target: target_ref,
                document,
                owners,
                exists,
                create_report,
            });
            let prune = (put.is_none() && !target.departed_reports.is_empty()).then(|| {
                Write::PruneReport {
                    target: target.target.clone(),
                    pods: target.departed_reports.clone(),
                }
            });
            put.into_iter()
                .chain(prune)
                .chain(clear_restart_env(target))
                .collect()
        }
        Delivery::Restart => {
            let safe = target.queue.restart_refusal().is_none();
            let env_stale = !same_env(&target.template_env, &document.env());
            let hash_stale = target.template_hash.as_deref() != Some(hash);
            if env_stale && !hash_stale {
                restorations.push(Restoration {
                    object: Restored::RestartEnv,
                    name: target_ref.to_string(),
                    how: format!(
                        "its {RESTART_ENV_PREFIX}* env vars are not those of the mode planned"
                    ),
                    by: target.changed_by.clone(),
                });
            }
            let set = target
                .mta_container
                .clone()
                .filter(|_| safe && (hash_stale || env_stale))
                .map(|container| Write::SetRestartEnv {
                    target: target_ref,
                    container,
                    document,
                });
            clear_document(target).into_iter().chain(set).collect()
        }
    };
    Delivered {
        writes,
        restorations,
    }
}

/// Whether the env vars `cached` on a pod template are exactly `wanted`, in any order.
fn same_env(cached: &[(String, String)], wanted: &[(&'static str, String)]) -> bool {
    cached.len() == wanted.len()
        && wanted.iter().all(|(name, value)| {
            cached
                .iter()
                .any(|(n, v)| n.as_str() == *name && v == value)
        })
}

/// The drift the agents of the targets incident `index` decides report.
fn agent_drifts(
    index: usize,
    targets: &[Arc<Target>],
    outcomes: &[&TargetOutcome],
) -> Vec<AgentDrift> {
    targets
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.deciding.first() == Some(&index))
        .flat_map(|(target, _)| {
            target.drifts.iter().map(|(pod, drift)| AgentDrift {
                target: target.target.clone(),
                pod: pod.clone(),
                drift: drift.clone(),
            })
        })
        .collect()
}

/// The writes that return a target to normal service.
fn restore_normal(target: &Target) -> Vec<Write> {
    clear_document(target)
        .into_iter()
        .chain(clear_restart_env(target))
        .collect()
}

/// Removes the target's mode document, if it has one, keeping its report for the agents
/// to report their release; then, once every live pod's agent says its release is over
/// (or none runs), the report.
fn clear_document(target: &Target) -> Option<Write> {
    if target.document_hash.is_some() {
        Some(Write::DeleteDocument {
            target: target.target.clone(),
            keep_report: target.report_exists,
        })
    } else if target.report_exists && target.unreleased_pods.is_empty() {
        Some(Write::DeleteReport {
            target: target.target.clone(),
        })
    } else {
        None
    }
}

/// Removes our env vars from the target's pod template, if it carries them and the
/// restart this causes is safe: an MTA whose queue would be lost keeps them, and the
/// refusal shows in the incident's status.
fn clear_restart_env(target: &Target) -> Option<Write> {
    let carries = target.template_hash.is_some() || !target.template_env.is_empty();
    (carries && target.queue.restart_refusal().is_none()).then(|| Write::ClearRestartEnv {
        target: target.target.clone(),
    })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
