use super::*;
use crate::api::{EffectiveMode, MailIncident};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use std::{cell::RefCell, sync::Arc};

const CREATED: &str = "2026-01-22T08:00:00Z";

fn at(offset_minutes: i64) -> Timestamp {
    CREATED.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(offset_minutes)
}

/// An incident created `age` minutes after CREATED, from the YAML of its spec.
fn incident(name: &str, created: i64, generation: i64, spec_yaml: &str) -> MailIncident {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec_yaml).expect("test YAML parses");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mailops.dev/v1alpha1",
        "kind": "MailIncident",
        "metadata": {
            "name": name, "namespace": "mail", "uid": format!("uid-{name}"),
            "generation": generation, "creationTimestamp": at(created).to_string(),
        },
        "spec": spec,
    }))
    .expect("test incident deserializes")
}

fn target(kind: WorkloadKind, name: &str, labels: &[(&str, &str)]) -> Target {
    Target {
        target: TargetRef {
            kind,
            name: name.into(),
        },
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        delivery: Delivery::Reload,
        mta: None,
        document_hash: None,
        document_mismatch: None,
        document_owners: vec![],
        report_owned: false,
        template_env: vec![],
        changed_by: None,
        drifts: vec![],
        departed_reports: vec![],
        unreleased_pods: vec![],
        template_hash: None,
        source_incidents: vec![],
        report_exists: false,
        pod_reports: vec![None],
        queues: vec![],
        replicas: 1,
        ready_replicas: 1,
        rollout_complete: true,
        mta_container: Some("mta".into()),
        queue: QueueStorage::Persistent,
    }
}

fn fleet() -> Vec<Target> {
    vec![
        target(WorkloadKind::Deployment, "postfix-a", &[("app", "mta")]),
        target(
            WorkloadKind::Deployment,
            "postfix-b",
            &[("app", "mta"), ("tier", "edge")],
        ),
        target(WorkloadKind::StatefulSet, "exim", &[("app", "mta")]),
        target(WorkloadKind::Deployment, "webmail", &[("app", "webmail")]),
    ]
}

const TEMP_FAIL: &str =
    "mode: TempFail\nreason: INC-7 storage down\ntargets: {matchLabels: {app: mta}}";
const HARD_REJECT: &str = "mode: HardReject\nreason: INC-8 rebuild\ntargets: {matchLabels: {tier: edge}}\nhardReject: {acknowledgeBounces: true}";

/// A small simulated cluster: incidents and targets that writes and statuses change as
/// the API server and the agents would.
pub(super) struct World {
    pub(super) incidents: Vec<MailIncident>,
    pub(super) targets: Vec<Target>,
    pub(super) failures: BTreeMap<TargetRef, String>,
    events: Vec<(String, Note)>,
    /// The incidents of the decisions that said every target newly applied their mode.
    newly_applied: Vec<String>,
    /// The mode document last written for each target, by name.
    pub(super) documents: BTreeMap<String, ModeDocument>,
    /// The admission webhook is up: an incident without a record is planned as if a user
    /// allowed to bounce mail had just written it.
    pub(super) webhook_up: bool,
    /// Plans every round incrementally too, which must give the same plan as from scratch.
    planner: RefCell<Planner>,
    /// The targets as last planned, shared with the planner as the controller shares them:
    /// an unchanged target is the same `Arc`.
    planned_targets: RefCell<BTreeMap<TargetRef, Arc<Target>>>,
}

/// The key the simulated admission webhook signs its records with.
pub(super) fn webhook_key() -> SigningKey {
    SigningKey::new(&[42; 32]).expect("a long enough key")
}

/// `incident` with the record the admission webhook makes when `user` updates it.
pub(super) fn admitted_by(incident: &MailIncident, user: &str, may_bounce: bool) -> MailIncident {
    let mut admitted = incident.clone();
    let record = admission::Admission {
        namespace: "mail",
        name: &incident.name_any(),
        uid: incident.metadata.uid.as_deref().unwrap_or_default(),
        user,
        operation: "UPDATE",
        may_bounce,
        at: incident
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        spec: &incident.spec,
    }
    .sign(&webhook_key());
    admitted.annotations_mut().insert(
        admission::ADMISSION_ANNOTATION.into(),
        serde_json::to_string(&record).expect("a record serializes"),
    );
    admitted
}

impl World {
    pub(super) fn new(incidents: Vec<MailIncident>, targets: Vec<Target>) -> Self {
        Self {
            incidents,
            targets,
            failures: BTreeMap::new(),
            events: vec![],
            newly_applied: vec![],
            documents: BTreeMap::new(),
            webhook_up: true,
            planner: RefCell::default(),
            planned_targets: RefCell::default(),
        }
    }

    pub(super) fn plan(&self, now: Timestamp) -> Plan {
        let incidents: Vec<MailIncident> = self
            .incidents
            .iter()
            .map(|incident| {
                let recorded = incident
                    .annotations()
                    .contains_key(admission::ADMISSION_ANNOTATION);
                if self.webhook_up && !recorded {
                    admitted_by(incident, "sre", true)
                } else {
                    incident.clone()
                }
            })
            .collect();
        let key = webhook_key();
        let mut planned_targets = self.planned_targets.borrow_mut();
        let targets: Vec<Arc<Target>> = self
            .targets
            .iter()
            .map(|target| match planned_targets.get(&target.target) {
                Some(before) if **before == *target => before.clone(),
                _ => Arc::new(target.clone()),
            })
            .collect();
        *planned_targets = targets
            .iter()
            .map(|t| (t.target.clone(), t.clone()))
            .collect();
        let ns = Namespace {
            name: "mail",
            incidents: incidents.iter().collect(),
            targets: &targets,
            write_failures: &self.failures,
            orphaned_documents: &[],
            signing_key: Some(&key),
            now,
        };
        let from_scratch = plan(&ns);
        let incremental = self.planner.borrow_mut().plan(&ns);
        assert_eq!(
            incremental, from_scratch,
            "planning incrementally differs from planning from scratch"
        );
        from_scratch
    }

    /// The targets as planning sees them.
    pub(super) fn shared_targets(&self) -> Vec<Arc<Target>> {
        self.targets.iter().cloned().map(Arc::new).collect()
    }

    /// Plans and carries out writes and statuses until nothing changes; agents and
    /// rollouts take up every mode at once when `agents_ack`.
    pub(super) fn settle(&mut self, now: Timestamp, agents_ack: bool) -> Plan {
        for _ in 0..10 {
            let plan = self.plan(now);
            let mut changed = !plan.writes.is_empty();
            for write in &plan.writes {
                self.carry_out(write);
            }
            for (incident, decision) in self.incidents.iter_mut().zip(&plan.incidents) {
                self.events.extend(
                    decision
                        .events
                        .iter()
                        .map(|e| (incident.name_any(), e.clone())),
                );
                if decision.newly_applied {
                    self.newly_applied.push(incident.name_any());
                }
                if incident.status.as_ref() != Some(&decision.status) {
                    incident.status = Some(decision.status.clone());
                    changed = true;
                }
            }
            if agents_ack {
                for t in &mut self.targets {
                    let hash = t.document_hash.clone();
                    for report in &mut t.pod_reports {
                        if *report != hash {
                            *report = hash.clone();
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                return plan;
            }
        }
        panic!("the plan never settled: the controller would wake itself up forever");
    }

    fn carry_out(&mut self, write: &Write) {
        let find = |targets: &mut Vec<Target>, r: &TargetRef| {
            targets
                .iter()
                .position(|t| &t.target == r)
                .expect("write to a known target")
        };
        match write {
            Write::PutDocument {
                target,
                document,
                owners,
                ..
            } => {
                let i = find(&mut self.targets, target);
                self.documents
                    .insert(target.name.clone(), (**document).clone());
                self.targets[i].document_hash = Some(document.hash());
                self.targets[i].document_mismatch = None;
                self.targets[i].document_owners = owners.iter().map(|o| o.uid.clone()).collect();
                self.targets[i].changed_by = None;
                self.targets[i].source_incidents = document
                    .rules
                    .iter()
                    .map(|r| r.incident.name.clone())
                    .collect();
                self.targets[i].report_exists = true;
                self.targets[i].report_owned = true;
            }
            Write::DeleteDocument {
                target,
                keep_report,
            } => {
                let i = find(&mut self.targets, target);
                self.documents.remove(&target.name);
                self.targets[i].document_hash = None;
                self.targets[i].document_mismatch = None;
                self.targets[i].document_owners.clear();
                self.targets[i].source_incidents.clear();
                self.targets[i].report_exists &= *keep_report;
                self.targets[i].report_owned = false;
            }
            Write::DeleteReport { target } => {
                let i = find(&mut self.targets, target);
                self.targets[i].report_exists = false;
            }
            Write::SetRestartEnv {
                target, document, ..
            } => {
                let i = find(&mut self.targets, target);
                self.targets[i].template_hash = Some(document.hash());
                self.targets[i].template_env = document
                    .env()
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect();
                self.targets[i].source_incidents = document
                    .rules
                    .iter()
                    .map(|r| r.incident.name.clone())
                    .collect();
            }
            Write::PruneReport { target, pods } => {
                let i = find(&mut self.targets, target);
                self.targets[i]
                    .departed_reports
                    .retain(|p| !pods.contains(p));
            }
            Write::ClearRestartEnv { target } => {
                let i = find(&mut self.targets, target);
                self.targets[i].template_hash = None;
                self.targets[i].template_env.clear();
                self.targets[i].source_incidents.clear();
            }
        }
    }

    fn incident(&self, name: &str) -> &MailIncident {
        self.incidents
            .iter()
            .find(|i| i.name_any() == name)
            .unwrap()
    }

    fn status(&self, name: &str) -> &MailIncidentStatus {
        self.incident(name).status.as_ref().unwrap()
    }

    fn condition(&self, name: &str, kind: &str) -> &Condition {
        self.status(name)
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition on {name}"))
    }

    fn target(&self, name: &str) -> &Target {
        self.targets.iter().find(|t| t.target.name == name).unwrap()
    }

    fn event_reasons(&self, incident: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|(i, _)| i == incident)
            .map(|(_, e)| e.reason.as_str())
            .collect()
    }

    fn replace(&mut self, updated: MailIncident) {
        let i = self
            .incidents
            .iter()
            .position(|x| x.name_any() == updated.name_any())
            .unwrap();
        let status = self.incidents[i].status.take();
        self.incidents[i] = updated;
        self.incidents[i].status = status;
    }
}

#[test]
fn first_sight_sets_every_condition_unknown_and_writes_nothing() {
    let world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    let plan = world.plan(at(0));
    assert!(plan.writes.is_empty());
    let status = &plan.incidents[0].status;
    assert_eq!(status.observed_generation, None);
    let kinds: Vec<(&str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Ready", "Unknown"),
            ("Reconciling", "Unknown"),
            ("Stalled", "Unknown")
        ]
    );
}

#[test]
fn a_mode_is_written_to_every_matched_target_and_ready_once_agents_ack() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), false);
    for name in ["postfix-a", "postfix-b", "exim"] {
        assert!(
            world.target(name).document_hash.is_some(),
            "{name} has no mode document"
        );
    }
    assert_eq!(world.target("webmail").document_hash, None);
    let targets = world.status("outage").targets.clone().unwrap();
    assert_eq!(
        (targets.matched, targets.applied, targets.summary.as_str()),
        (3, 0, "0/3")
    );
    assert_eq!(world.condition("outage", "Reconciling").status, "True");

    world.settle(at(1), true);
    assert_eq!(
        world.status("outage").targets.as_ref().unwrap().summary,
        "3/3"
    );
    let ready = world.condition("outage", "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Applied")
    );
    assert_eq!(
        world.event_reasons("outage"),
        ["Accepted", "ModeChanged", "Applied"]
    );
}

#[test]
fn a_decision_says_when_every_target_newly_applied_each_generation() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), false);
    assert!(world.newly_applied.is_empty());
    world.settle(at(1), true);
    assert_eq!(world.newly_applied, ["outage"]);
    // Still applied: nothing new to time.
    world.settle(at(2), true);
    assert_eq!(world.newly_applied, ["outage"]);
    // A new generation is timed again once its mode is applied.
    world.replace(incident(
        "outage",
        0,
        2,
        &format!("{TEMP_FAIL}\nsmtpReply: {{code: 451}}"),
    ));
    world.settle(at(3), false);
    assert_eq!(world.newly_applied, ["outage"]);
    world.settle(at(4), true);
    assert_eq!(world.newly_applied, ["outage", "outage"]);
}

#[test]
fn the_mode_document_carries_reply_lifetimes_and_source() {
    let spec = "mode: AcceptAndQueue\nreason: INC-9\ntargets: {matchLabels: {app: mta}, mta: Exim}\nqueue: {lifetime: 30d, bounceLifetime: 10d}";
    let world = {
        let mut w = World::new(vec![incident("hold", 0, 1, spec)], fleet());
        w.settle(at(0), false);
        w
    };
    let plan = World::new(world.incidents.clone(), fleet()).plan(at(0));
    let Some(Write::PutDocument {
        document,
        owners,
        create_report,
        ..
    }) = plan.writes.first()
    else {
        panic!("expected a document write, got {:?}", plan.writes);
    };
    assert_eq!(document.headline().mode, Mode::AcceptAndQueue);
    assert_eq!(
        (
            document.queue.lifetime.as_str(),
            document.queue.bounce_lifetime.as_str()
        ),
        ("30d", "10d")
    );
    assert_eq!(
        (
            document.headline().reply.code,
            document.headline().reply.enhanced_code.as_str()
        ),
        (452, "4.3.1")
    );
    assert_eq!(document.mta, Some(crate::api::MtaKind::Exim));
    assert_eq!(document.headline().incident.name, "hold");
    assert_eq!(
        owners,
        &[Owner {
            name: "hold".into(),
            uid: "uid-hold".into()
        }]
    );
    assert!(create_report);
}

#[test]
fn a_settled_namespace_is_a_fixed_point_at_any_later_time() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let later = world.plan(at(90));
    assert!(later.writes.is_empty());
    assert_eq!(
        Some(&later.incidents[0].status),
        world.incident("outage").status.as_ref()
    );
    assert!(later.incidents[0].events.is_empty());
}

#[test]
fn the_most_severe_incident_wins_and_the_loser_says_by_whom() {
    let mut world = World::new(
        vec![
            incident("queue", 0, 1, TEMP_FAIL),
            incident("reject", 5, 1, HARD_REJECT),
        ],
        fleet(),
    );
    world.settle(at(5), true);
    assert_eq!(
        world
            .target("postfix-b")
            .source_incidents
            .first()
            .map(String::as_str),
        Some("reject")
    );
    assert_eq!(
        world
            .target("postfix-a")
            .source_incidents
            .first()
            .map(String::as_str),
        Some("queue")
    );
    let loser = world.status("queue");
    let counts = loser.targets.as_ref().unwrap();
    assert_eq!(
        (
            counts.matched,
            counts.superseded,
            counts.applied,
            counts.summary.as_str()
        ),
        (3, 1, 2, "2/2")
    );
    assert_eq!(loser.superseded_by.len(), 1);
    assert_eq!(loser.superseded_by[0].incident, "reject");
    assert_eq!(loser.superseded_by[0].targets, ["Deployment/postfix-b"]);
    assert!(world.event_reasons("queue").contains(&"Superseded"));
    assert_eq!(
        world.status("reject").targets.as_ref().unwrap().summary,
        "1/1"
    );
}

#[test]
fn between_equal_modes_the_oldest_incident_wins() {
    let younger =
        "mode: TempFail\nreason: later\ntargets: {matchLabels: {app: mta}}\nsmtpReply: {code: 451}";
    let mut world = World::new(
        vec![
            incident("young", 10, 1, younger),
            incident("old", 0, 1, TEMP_FAIL),
        ],
        fleet(),
    );
    world.settle(at(10), true);
    assert!(
        world
            .targets
            .iter()
            .filter(|t| t.document_hash.is_some())
            .all(|t| t.source_incidents.first().map(String::as_str) == Some("old"))
    );
    assert_eq!(world.condition("young", "Ready").reason, "Superseded");
}

#[test]
fn resolving_moves_targets_to_the_next_incident_or_back_to_normal() {
    let mut world = World::new(
        vec![
            incident("queue", 0, 1, TEMP_FAIL),
            incident("reject", 5, 1, HARD_REJECT),
        ],
        fleet(),
    );
    world.settle(at(5), true);
    world.replace(incident(
        "reject",
        5,
        2,
        &format!("{HARD_REJECT}\nresolved: true"),
    ));
    world.settle(at(30), true);
    assert_eq!(
        world
            .target("postfix-b")
            .source_incidents
            .first()
            .map(String::as_str),
        Some("queue")
    );
    assert_eq!(
        world.status("queue").targets.as_ref().unwrap().summary,
        "3/3"
    );
    assert!(world.status("queue").superseded_by.is_empty());
    let reject = world.status("reject");
    assert_eq!(reject.effective_mode, Some(EffectiveMode::Normal));
    assert_eq!(world.condition("reject", "Ready").reason, "Resolved");
    assert_eq!(
        reject.history.last().unwrap().reason,
        "resolved: INC-8 rebuild"
    );

    world.replace(incident(
        "queue",
        0,
        2,
        &format!("{TEMP_FAIL}\nresolved: true"),
    ));
    world.settle(at(40), true);
    assert!(
        world
            .targets
            .iter()
            .all(|t| t.document_hash.is_none() && t.source_incidents.is_empty())
    );
    assert_eq!(world.condition("queue", "Ready").reason, "Resolved");
    assert!(world.event_reasons("queue").contains(&"Restored"));
}

#[test]
fn a_deleted_incident_releases_its_targets() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let mut deleting = incident("outage", 0, 1, TEMP_FAIL);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(3)));
    world.replace(deleting);
    world.settle(at(3), true);
    assert!(world.targets.iter().all(|t| t.document_hash.is_none()));
    assert_eq!(
        world.status("outage").history.last().unwrap().reason,
        "deleted: INC-7 storage down"
    );
}

#[test]
fn an_incident_deleted_while_its_spec_is_invalid_releases_its_targets() {
    let mut targets = fleet();
    targets[0].delivery = Delivery::Restart;
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], targets);
    world.settle(at(0), true);
    let invalid = "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}";
    world.replace(incident("outage", 0, 2, invalid));
    world.settle(at(1), true);
    assert!(world.target("postfix-a").template_hash.is_some());
    let mut deleting = incident("outage", 0, 2, invalid);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(2)));
    world.replace(deleting);
    world.settle(at(2), true);
    assert!(
        world
            .targets
            .iter()
            .all(|t| t.document_hash.is_none() && t.template_hash.is_none()),
        "a deleted invalid incident left its mode on {:?}",
        world.targets
    );
}

#[test]
fn leftovers_no_incident_accounts_for_are_restored() {
    let mut targets = fleet();
    targets[0].document_hash = Some("h1".into());
    targets[0].source_incidents = vec!["gone".into()];
    targets[1].delivery = Delivery::Restart;
    targets[1].template_hash = Some("h2".into());
    let plan = World::new(vec![], targets).plan(at(0));
    assert_eq!(
        plan.writes,
        [
            Write::DeleteDocument {
                target: TargetRef {
                    kind: WorkloadKind::Deployment,
                    name: "postfix-a".into()
                },
                keep_report: false,
            },
            Write::ClearRestartEnv {
                target: TargetRef {
                    kind: WorkloadKind::Deployment,
                    name: "postfix-b".into()
                }
            },
        ]
    );
}

#[test]
fn documents_of_workloads_that_are_gone_are_deleted() {
    let world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    let gone = TargetRef::parse("StatefulSet/old-mx").expect("a workload reference");
    let plan = plan(&Namespace {
        name: "mail",
        incidents: world.incidents.iter().collect(),
        targets: &world.shared_targets(),
        write_failures: &BTreeMap::new(),
        orphaned_documents: std::slice::from_ref(&gone),
        signing_key: None,
        now: at(0),
    });
    assert!(plan.writes.contains(&Write::DeleteDocument {
        target: gone,
        keep_report: false
    }));
    for text in ["", "Deployment/", "Pod/x", "deployment/x", "x"] {
        assert_eq!(TargetRef::parse(text), None, "{text:?}");
    }
}

#[test]
fn expiry_wakes_the_controller_exactly_then_and_restores_targets() {
    let mut world = World::new(
        vec![incident(
            "window",
            0,
            1,
            &format!("{TEMP_FAIL}\nduration: 2h"),
        )],
        fleet(),
    );
    world.settle(at(0), true);
    assert_eq!(world.plan(at(30)).wake_at, Some(at(120)));
    assert_eq!(
        world.status("window").expires_at.as_ref().unwrap().0,
        at(120)
    );
    world.settle(at(120), true);
    assert!(world.targets.iter().all(|t| t.document_hash.is_none()));
    assert_eq!(world.condition("window", "Ready").reason, "Expired");
    assert_eq!(world.plan(at(121)).wake_at, None);
}

#[test]
fn hard_reject_without_acknowledgement_changes_nothing() {
    let unacknowledged = "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}";
    let mut world = World::new(vec![incident("reckless", 0, 1, unacknowledged)], fleet());
    world.settle(at(0), true);
    assert!(world.targets.iter().all(|t| t.document_hash.is_none()));
    let stalled = world.condition("reckless", "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        stalled
            .message
            .contains("spec.hardReject.acknowledgeBounces")
    );
    assert_eq!(world.event_reasons("reckless"), ["InvalidSpec"]);
}

#[test]
fn an_invalid_edit_keeps_targets_in_the_last_valid_mode() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let before: Vec<Option<String>> = world
        .targets
        .iter()
        .map(|t| t.document_hash.clone())
        .collect();
    world.replace(incident(
        "outage",
        0,
        2,
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}",
    ));
    let plan = world.settle(at(5), true);
    assert!(plan.writes.is_empty());
    let after: Vec<Option<String>> = world
        .targets
        .iter()
        .map(|t| t.document_hash.clone())
        .collect();
    assert_eq!(before, after, "an invalid spec moved targets");
    assert_eq!(
        world.status("outage").effective_mode,
        Some(EffectiveMode::TempFail)
    );
    assert_eq!(world.condition("outage", "Stalled").status, "True");
}

#[test]
fn restart_delivery_sets_env_and_waits_for_the_rollout() {
    let mut targets = fleet();
    for t in &mut targets {
        t.delivery = Delivery::Restart;
        t.rollout_complete = false;
    }
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], targets);
    world.settle(at(0), false);
    assert!(world.target("postfix-a").template_hash.is_some());
    assert_eq!(world.target("postfix-a").document_hash, None);
    assert_eq!(world.condition("outage", "Reconciling").status, "True");
    for t in &mut world.targets {
        t.rollout_complete = true;
    }
    world.settle(at(1), false);
    assert_eq!(world.condition("outage", "Ready").reason, "Applied");

    world.replace(incident(
        "outage",
        0,
        2,
        &format!("{TEMP_FAIL}\nresolved: true"),
    ));
    world.settle(at(2), false);
    assert!(world.targets.iter().all(|t| t.template_hash.is_none()));
}

#[test]
fn restart_delivery_refuses_to_restart_an_mta_whose_queue_would_be_lost() {
    let mut targets = fleet();
    targets[0].delivery = Delivery::Restart;
    targets[0].queue = QueueStorage::EmptyDir {
        volume: "spool".into(),
        path: "/var/spool/postfix".into(),
    };
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], targets);
    world.settle(at(0), true);
    assert_eq!(
        world.target("postfix-a").template_hash,
        None,
        "an emptyDir MTA was restarted"
    );
    let status = world.status("outage");
    assert_eq!(status.targets.as_ref().unwrap().failed, 1);
    assert_eq!(status.failed_targets[0].target, "Deployment/postfix-a");
    assert!(
        status.failed_targets[0]
            .reason
            .contains("emptyDir volume \"spool\"")
    );
    assert_eq!(world.condition("outage", "Ready").status, "False");
    assert_eq!(world.condition("outage", "Stalled").reason, "TargetsFailed");
    let warnings: Vec<_> = world.events.iter().filter(|(_, e)| e.warning).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one Warning event, not one per reconcile: {warnings:?}"
    );
}

#[test]
fn switching_delivery_clears_the_other_channel() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets[0].delivery = Delivery::Restart;
    world.settle(at(1), true);
    assert_eq!(world.targets[0].document_hash, None);
    assert!(world.targets[0].template_hash.is_some());
}

#[test]
fn a_refused_write_fails_its_target_until_it_succeeds() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.failures.insert(
        world.targets[0].target.clone(),
        "Apply failed with 1 conflict: conflict with \"argocd-controller\"".into(),
    );
    world.settle(at(1), true);
    assert_eq!(world.status("outage").targets.as_ref().unwrap().failed, 1);
    assert!(
        world.status("outage").failed_targets[0]
            .reason
            .contains("argocd-controller")
    );
}

#[test]
fn a_new_pod_without_a_report_makes_its_target_pending_again() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets[0].pod_reports.push(None);
    world.settle(at(1), false);
    assert_eq!(
        world.status("outage").targets.as_ref().unwrap().summary,
        "2/3"
    );
    assert_eq!(world.condition("outage", "Ready").reason, "Applying");
}

#[test]
fn a_deleted_report_is_created_again_with_the_unchanged_document() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets[0].report_exists = false;
    world.targets[0].pod_reports = vec![None];
    let plan = world.plan(at(1));
    let [
        Write::PutDocument {
            target,
            document,
            exists,
            create_report,
            ..
        },
    ] = plan.writes.as_slice()
    else {
        panic!("expected one document write, got {:?}", plan.writes);
    };
    assert_eq!(target, &world.targets[0].target);
    assert_eq!(Some(document.hash()), world.targets[0].document_hash);
    assert!(*exists && *create_report);

    world.settle(at(1), true);
    assert!(world.targets[0].report_exists);
    assert_eq!(world.condition("outage", "Ready").reason, "Applied");
    assert!(world.plan(at(2)).writes.is_empty());
}

#[test]
fn an_incident_past_the_time_bounds_stalls_while_its_neighbours_are_served() {
    let mut world = World::new(
        vec![
            incident(
                "forever",
                0,
                1,
                "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nduration: 9999999w",
            ),
            incident(
                "far",
                0,
                1,
                "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nexpiresAt: '4764-01-01T00:00:00Z'",
            ),
            incident("outage", 0, 1, TEMP_FAIL),
        ],
        fleet(),
    );
    world.settle(at(0), true);
    for (name, field) in [("forever", "spec.duration"), ("far", "spec.expiresAt")] {
        let stalled = world.condition(name, "Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidSpec"),
            "{name}"
        );
        assert!(
            stalled.message.contains(field),
            "{name}: {}",
            stalled.message
        );
        assert_eq!(world.event_reasons(name), ["InvalidSpec"]);
    }
    assert_eq!(world.condition("outage", "Ready").reason, "Applied");
    assert_eq!(
        world
            .target("postfix-b")
            .source_incidents
            .first()
            .map(String::as_str),
        Some("outage")
    );
}

#[test]
fn targets_coming_and_going_are_counted_and_announced() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets.retain(|t| t.target.name != "exim");
    world.settle(at(1), true);
    assert_eq!(
        world.status("outage").targets.as_ref().unwrap().summary,
        "2/2"
    );
    assert!(world.event_reasons("outage").contains(&"TargetsChanged"));
}

#[test]
fn no_targets_is_not_ready_and_not_reconciling() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], vec![]);
    world.settle(at(0), true);
    let ready = world.condition("outage", "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoTargets")
    );
    assert!(ready.message.contains("namespace mail"));
    assert_eq!(world.condition("outage", "Reconciling").status, "False");
    // Warned once, not at every sync.
    world.settle(at(5), true);
    assert_eq!(
        world.event_reasons("outage"),
        ["Accepted", "ModeChanged", "NoTargets"]
    );
}

#[test]
fn history_keeps_the_latest_transitions_only() {
    let mut world = World::new(vec![incident("flip", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    for generation in 2..40 {
        let mode = if generation % 2 == 0 {
            "AcceptAndQueue"
        } else {
            "TempFail"
        };
        world.replace(incident(
            "flip",
            0,
            generation,
            &format!(
                "mode: {mode}\nreason: flip {generation}\ntargets: {{matchLabels: {{app: mta}}}}"
            ),
        ));
        world.settle(at(generation), true);
    }
    let history = &world.status("flip").history;
    assert_eq!(history.len(), HISTORY_LIMIT);
    assert_eq!(history.last().unwrap().reason, "flip 39");
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), false);
    let first = world
        .condition("outage", "Ready")
        .last_transition_time
        .clone();
    world.targets.truncate(1);
    world.settle(at(10), false);
    assert_eq!(
        world.condition("outage", "Ready").last_transition_time,
        first,
        "still False"
    );
    world.settle(at(20), true);
    assert_eq!(
        world.condition("outage", "Ready").last_transition_time.0,
        at(20)
    );
}

#[test]
fn a_queue_past_the_limit_switches_accept_and_queue_to_temp_fail() {
    let spec = "mode: AcceptAndQueue\nreason: INC-9 hold\ntargets: {matchLabels: {app: mta}}\nescalation: {maxQueuedMessages: 100, maxOldestMessageAge: 2d}";
    let mut world = World::new(vec![incident("hold", 0, 1, spec)], fleet());
    world.settle(at(0), true);
    let figures = |messages, oldest_age_seconds| QueueLoad {
        messages,
        oldest_age_seconds,
    };
    world.targets[0].queues = vec![figures(50, 60), figures(101, 60)];
    world.targets[2].queues = vec![figures(3, 3 * 86_400)];
    let plan = world.plan(at(1));
    let modes: Vec<(String, Mode)> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::PutDocument {
                target, document, ..
            } => Some((target.name.clone(), document.headline().mode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("postfix-a".to_string(), Mode::TempFail),
            ("exim".to_string(), Mode::TempFail)
        ]
    );
    assert_eq!(plan.incidents[0].escalations, 2);

    world.settle(at(1), true);
    let status = world.status("hold");
    assert_eq!(status.effective_mode, Some(EffectiveMode::AcceptAndQueue));
    let escalated: Vec<&str> = status
        .escalated_targets
        .iter()
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(escalated, ["Deployment/postfix-a", "StatefulSet/exim"]);
    assert!(
        status.escalated_targets[0]
            .reason
            .contains("101 messages, over the limit of 100")
    );
    assert!(
        status.escalated_targets[1]
            .reason
            .contains("over the limit of 2d")
    );
    let last = status.history.last().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(EffectiveMode::AcceptAndQueue), EffectiveMode::TempFail)
    );
    let escalations: Vec<_> = world
        .events
        .iter()
        .filter(|(_, e)| e.reason == EventReason::Escalated)
        .collect();
    assert_eq!(
        escalations.len(),
        1,
        "one event for the escalation, not one per sync"
    );
    assert!(escalations[0].1.warning);
    assert_eq!(
        world.status("hold").targets.as_ref().unwrap().summary,
        "3/3"
    );
}

#[test]
fn the_queue_watch_peaks_over_the_targets_an_incident_decides_and_apart_over_those_not_escalated() {
    let hold = "mode: AcceptAndQueue\nreason: INC-9 hold\ntargets: {matchLabels: {app: mta}}\nqueue: {lifetime: 7d}\nescalation: {maxQueuedMessages: 500}";
    let mut world = World::new(
        vec![
            incident("hold", 0, 1, hold),
            incident("reject", 5, 1, HARD_REJECT),
        ],
        fleet(),
    );
    world.settle(at(5), true);
    let figures = |messages, oldest_age_seconds| QueueLoad {
        messages,
        oldest_age_seconds,
    };
    world.targets[0].queues = vec![figures(40, 600), figures(90, 60)];
    // postfix-b is decided by the HardReject incident: its queue is not the hold's.
    world.targets[1].queues = vec![figures(10_000, 86_400)];
    // exim is past the limit: escalated to TempFail, its held mail still ageing.
    world.targets[2].queues = vec![figures(600, 3_600)];
    let plan = world.plan(at(6));

    let watch = plan.incidents[0]
        .queue_watch
        .expect("a valid incident is watched");
    assert_eq!(watch.lifetime, "7d".parse().unwrap());
    assert_eq!(
        watch.escalation.and_then(|e| e.max_queued_messages),
        Some(500)
    );
    let peak = |messages, oldest_age_seconds| QueueLoad {
        messages,
        oldest_age_seconds,
    };
    assert_eq!(watch.peak, peak(600, 3_600));
    // What the limit is compared with: postfix-a alone, the target it can still switch.
    assert_eq!(watch.accepting_peak, peak(90, 600));
    let reject = plan.incidents[1].queue_watch.expect("watched");
    assert_eq!(
        (reject.peak, reject.escalation),
        (peak(10_000, 86_400), None)
    );
}

#[test]
fn an_invalid_incident_has_no_queue_watch() {
    let invalid = "mode: HardReject\nreason: INC-8 no ack\ntargets: {matchLabels: {app: mta}}";
    let mut world = World::new(vec![incident("reject", 0, 1, invalid)], fleet());
    let plan = world.settle(at(0), true);
    assert_eq!(plan.incidents[0].queue_watch, None);
}

/// An invalid edit (HardReject without acknowledgement) of `outage`, as generation 2.
fn invalid_edit(extra: &str) -> MailIncident {
    incident(
        "outage",
        0,
        2,
        &format!("mode: HardReject\nreason: r\ntargets: {{matchLabels: {{app: mta}}}}{extra}"),
    )
}

#[test]
fn an_invalid_edit_does_not_outlive_the_last_valid_end() {
    let mut world = World::new(
        vec![incident(
            "outage",
            0,
            1,
            &format!("{TEMP_FAIL}\nduration: 40m"),
        )],
        fleet(),
    );
    world.settle(at(0), true);
    world.replace(invalid_edit(""));
    world.settle(at(10), true);
    assert!(world.targets[0].document_hash.is_some(), "frozen meanwhile");
    assert_eq!(
        world.plan(at(10)).wake_at,
        Some(at(40)),
        "the last valid end still wakes the controller"
    );
    world.settle(at(40), true);
    assert!(
        world.targets.iter().all(|t| t.document_hash.is_none()),
        "past its last valid end, the invalid incident still ends"
    );
    let status = world.status("outage");
    assert_eq!(status.effective_mode, Some(EffectiveMode::Normal));
    let last = status.history.last().unwrap();
    assert!(last.reason.starts_with("expired at"), "{}", last.reason);
    assert_eq!(world.condition("outage", "Stalled").reason, "InvalidSpec");
    assert!(world.event_reasons("outage").contains(&"ModeChanged"));
}

#[test]
fn resolving_an_incident_whose_spec_is_invalid_ends_it() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.replace(invalid_edit(""));
    world.settle(at(1), true);
    world.replace(invalid_edit("\nresolved: true"));
    world.settle(at(2), true);
    assert!(world.targets.iter().all(|t| t.document_hash.is_none()));
    assert_eq!(
        world.status("outage").effective_mode,
        Some(EffectiveMode::Normal)
    );
}

#[test]
fn a_hand_edited_document_is_written_back_naming_who_changed_it() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let planned = world.targets[0].document_hash.clone();
    // mode.json edited by hand, its annotation left alone.
    world.targets[0].document_hash = Some("f0f0f0f0f0f0f0f0".into());
    world.targets[0].document_mismatch =
        Some("its annotation says one hash and its mode.json another".into());
    world.targets[0].changed_by = Some("kubectl-patch".into());
    let plan = world.plan(at(1));
    assert!(
        matches!(&plan.writes[..], [Write::PutDocument { target, exists: true, .. }] if target.name == "postfix-a"),
        "{:?}",
        plan.writes
    );
    let decision = &plan.incidents[0];
    assert_eq!(decision.restored, [Restored::ModeDocument]);
    let note = decision
        .events
        .iter()
        .find(|e| e.reason == EventReason::Restored)
        .expect("a Restored event");
    assert!(note.warning);
    assert!(
        note.message.contains("mail-mode-deployment-postfix-a")
            && note.message.contains("\"kubectl-patch\""),
        "{}",
        note.message
    );
    world.settle(at(1), true);
    assert_eq!(world.targets[0].document_hash, planned);

    // Content and annotation both forged consistently: still not the mode planned.
    world.targets[1].document_hash = Some("0123456789abcdef".into());
    world.targets[1].changed_by = Some("kubectl-edit".into());
    let plan = world.plan(at(2));
    assert_eq!(plan.incidents[0].restored, [Restored::ModeDocument]);
    assert!(plan.incidents[0].events[0].message.contains("planned"));
}

#[test]
fn a_mode_change_of_our_own_is_no_restoration() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.replace(incident(
        "outage",
        0,
        2,
        &TEMP_FAIL.replace("TempFail", "AcceptAndQueue"),
    ));
    let plan = world.plan(at(1));
    assert_eq!(plan.writes.len(), 3);
    assert!(plan.incidents[0].restored.is_empty());
    assert!(
        !plan.incidents[0]
            .events
            .iter()
            .any(|e| e.reason == EventReason::Restored)
    );
}

#[test]
fn owners_and_a_report_that_lost_its_owner_are_put_back() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets[0].document_owners.clear();
    world.targets[0].changed_by = Some("kubectl-edit".into());
    world.targets[1].report_owned = false;
    let plan = world.plan(at(1));
    assert_eq!(plan.writes.len(), 2, "{:?}", plan.writes);
    assert!(matches!(
        &plan.writes[1],
        Write::PutDocument {
            create_report: true,
            ..
        }
    ));
    assert_eq!(
        plan.incidents[0].restored,
        [Restored::ModeDocument, Restored::Report]
    );
    world.settle(at(1), true);
    assert!(world.plan(at(2)).writes.is_empty());
}

#[test]
fn hand_edited_restart_env_vars_are_applied_again() {
    let mut targets = fleet();
    for t in &mut targets {
        t.delivery = Delivery::Restart;
    }
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], targets);
    world.settle(at(0), true);
    let env = &mut world.targets[0].template_env;
    let mode = env
        .iter_mut()
        .find(|(name, _)| name == "MAIL_INCIDENT_MODE")
        .unwrap();
    mode.1 = "Normal".into();
    world.targets[0].changed_by = Some("kubectl-set".into());
    let plan = world.plan(at(1));
    assert!(matches!(&plan.writes[..], [Write::SetRestartEnv { .. }]));
    assert_eq!(plan.incidents[0].restored, [Restored::RestartEnv]);
    // Refused (another field manager owns the value): retried, but not announced again.
    world.failures.insert(
        world.targets[0].target.clone(),
        "conflict with \"kubectl-set\"".into(),
    );
    let plan = world.plan(at(1));
    assert!(matches!(&plan.writes[..], [Write::SetRestartEnv { .. }]));
    assert!(plan.incidents[0].restored.is_empty());
    world.failures.clear();
    // A leftover env var of ours on a target no incident selects is cleared.
    world.targets[3].template_env = vec![("MAIL_INCIDENT_MODE".into(), "HardReject".into())];
    let plan = world.settle(at(2), true);
    assert!(plan.writes.is_empty());
    assert!(world.targets[3].template_env.is_empty());
}

#[test]
fn agents_reporting_drift_are_told_to_the_incident_deciding_their_target() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let drift = DriftReport {
        count: 2,
        what: "main.cf soft_bounce = no, want yes".into(),
        since: Some(at(1).as_second()),
    };
    world.targets[2].drifts = vec![("exim-0".into(), drift.clone())];
    world.targets[3].drifts = vec![("webmail-0".into(), drift.clone())];
    let plan = world.plan(at(1));
    assert_eq!(
        plan.incidents[0].agent_drifts,
        [AgentDrift {
            target: world.targets[2].target.clone(),
            pod: "exim-0".into(),
            drift
        }],
        "only targets the incident decides"
    );
}

#[test]
fn report_entries_of_departed_pods_are_pruned_once_the_document_is_settled() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    world.targets[0].departed_reports = vec!["mx-old-1".into(), "mx-old-2".into()];
    let plan = world.plan(at(1));
    assert!(
        matches!(&plan.writes[..], [Write::PruneReport { pods, .. }] if pods.len() == 2),
        "{:?}",
        plan.writes
    );
    world.settle(at(1), true);
    assert!(world.targets[0].departed_reports.is_empty());
    assert!(world.plan(at(2)).writes.is_empty());
}

#[test]
fn a_target_scaled_to_zero_is_idle_not_applied() {
    let mut targets = fleet();
    targets[0].replicas = 0;
    targets[0].pod_reports.clear();
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], targets);
    world.settle(at(0), true);
    assert!(
        world.targets[0].document_hash.is_some(),
        "its mode is delivered for the pods it may start"
    );
    let counts = world.status("outage").targets.clone().unwrap();
    assert_eq!(
        (
            counts.matched,
            counts.applied,
            counts.idle,
            counts.summary.as_str()
        ),
        (3, 2, 1, "2/2")
    );
    let ready = world.condition("outage", "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Applied")
    );
    assert_eq!(
        ready.message,
        "2/2 targets answer TempFail; 1 scaled to zero (no MTA to answer)"
    );
}

/// A target's rules as (incident, mode, domains): what its agents apply.
fn rules(world: &World, target: &str) -> Vec<(String, Mode, Option<Vec<String>>)> {
    world
        .documents
        .get(target)
        .map_or_else(Vec::new, |document| {
            document
                .rules
                .iter()
                .map(|r| (r.incident.name.clone(), r.mode, r.recipient_domains.clone()))
                .collect()
        })
}

fn domains(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|d| d.to_string()).collect())
}

#[test]
fn a_scoped_incident_carries_its_domains_and_shows_its_scope() {
    let scoped = format!(
        "{TEMP_FAIL}\nscope: {{recipientDomains: ['*.storage.example.it', 'pec.example.it']}}"
    );
    let mut world = World::new(vec![incident("storage", 0, 1, &scoped)], fleet());
    world.settle(at(0), true);
    assert_eq!(
        rules(&world, "postfix-a"),
        [(
            "storage".to_string(),
            Mode::TempFail,
            domains(&["pec.example.it", "*.storage.example.it"])
        )]
    );
    let status = world.status("storage");
    assert_eq!(status.scope.as_deref(), Some("2 domains"));
    assert_eq!(status.targets.as_ref().unwrap().summary, "3/3");
    let accepted = world
        .events
        .iter()
        .find(|(_, e)| e.reason == EventReason::Accepted)
        .unwrap();
    assert!(
        accepted
            .1
            .message
            .contains("recipients in pec.example.it, *.storage.example.it"),
        "{}",
        accepted.1.message
    );
    let whole = World::new(vec![incident("all", 0, 1, TEMP_FAIL)], fleet());
    let mut whole = whole;
    whole.settle(at(0), true);
    assert_eq!(whole.status("all").scope.as_deref(), Some("all recipients"));
}

#[test]
fn overlapping_scopes_give_each_domain_the_most_severe_then_oldest_incident() {
    let storage = "mode: TempFail\nreason: storage\ntargets: {matchLabels: {app: mta}}\nscope: {recipientDomains: ['*.example.it']}";
    let rebuild = "mode: HardReject\nreason: rebuild\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nscope: {recipientDomains: ['a.example.it']}";
    let queue = "mode: AcceptAndQueue\nreason: everyone\ntargets: {matchLabels: {app: mta}}";
    let inside = "mode: TempFail\nreason: inside\ntargets: {matchLabels: {app: mta}}\nscope: {recipientDomains: ['b.example.it']}";
    let mut world = World::new(
        vec![
            incident("storage", 0, 1, storage),
            incident("rebuild", 5, 1, rebuild),
            incident("queue", 10, 1, queue),
            incident("inside", 20, 1, inside),
        ],
        fleet(),
    );
    world.settle(at(20), true);
    // HardReject first; the younger TempFail inside *.example.it adds nothing.
    assert_eq!(
        rules(&world, "exim"),
        [
            (
                "rebuild".to_string(),
                Mode::HardReject,
                domains(&["a.example.it"])
            ),
            (
                "storage".to_string(),
                Mode::TempFail,
                domains(&["*.example.it"])
            ),
            ("queue".to_string(), Mode::AcceptAndQueue, None),
        ]
    );
    let document = &world.documents["exim"];
    let rule = |domain: &str| {
        document
            .rule_for(Some(domain))
            .map(|r| r.incident.name.clone())
    };
    assert_eq!(rule("a.example.it").as_deref(), Some("rebuild"));
    assert_eq!(rule("x.a.example.it").as_deref(), Some("storage"));
    assert_eq!(rule("example.com").as_deref(), Some("queue"));
    assert_eq!(
        world.target("exim").source_incidents,
        ["rebuild", "storage", "queue"]
    );
    // Partly followed: still applied, and the status says for which domains.
    let storage = world.status("storage");
    assert_eq!(storage.targets.as_ref().unwrap().summary, "3/3");
    assert_eq!(storage.superseded_by.len(), 1);
    assert_eq!(storage.superseded_by[0].incident, "rebuild");
    assert_eq!(storage.superseded_by[0].domains, ["a.example.it"]);
    let queue = world.status("queue");
    let followed: Vec<(&str, &[String])> = queue
        .superseded_by
        .iter()
        .map(|s| (s.incident.as_str(), s.domains.as_slice()))
        .collect();
    assert_eq!(
        followed,
        [
            ("rebuild", &["a.example.it".to_string()][..]),
            ("storage", &["*.example.it".to_string()][..])
        ]
    );
    assert_eq!(world.condition("queue", "Ready").reason, "Applied");
    // Wholly inside an older scope of the same severity: superseded, per domain.
    let inside = world.status("inside");
    assert_eq!(world.condition("inside", "Ready").reason, "Superseded");
    assert_eq!(inside.superseded_by[0].incident, "storage");
    assert_eq!(inside.superseded_by[0].domains, ["b.example.it"]);
    assert_eq!(inside.targets.as_ref().unwrap().superseded, 3);

    // Resolving the HardReject hands a.example.it to the TempFail covering it.
    let mut resolved = world.incident("rebuild").clone();
    resolved.spec.resolved = true;
    resolved.metadata.generation = Some(2);
    world.replace(resolved);
    world.settle(at(30), true);
    assert_eq!(
        rules(&world, "exim"),
        [
            (
                "storage".to_string(),
                Mode::TempFail,
                domains(&["*.example.it"])
            ),
            ("queue".to_string(), Mode::AcceptAndQueue, None),
        ]
    );
    assert!(world.status("storage").superseded_by.is_empty());
    assert_eq!(world.condition("rebuild", "Ready").reason, "Resolved");
}

#[test]
fn restart_delivery_cannot_carry_a_scope_and_says_so() {
    let scoped = format!("{TEMP_FAIL}\nscope: {{recipientDomains: [pec.example.it]}}");
    let mut targets = fleet();
    targets[0].delivery = Delivery::Restart;
    let mut world = World::new(vec![incident("storage", 0, 1, &scoped)], targets);
    world.settle(at(0), true);
    assert_eq!(world.target("postfix-a").template_hash, None);
    let status = world.status("storage");
    assert_eq!(status.failed_targets.len(), 1);
    assert!(
        status.failed_targets[0]
            .reason
            .contains("restart delivery gives every recipient one mode"),
        "{:?}",
        status.failed_targets
    );
}

#[test]
fn a_scheduled_incident_changes_nothing_until_its_start_and_is_ready_meanwhile() {
    let window = format!("{TEMP_FAIL}\nstartsAt: '{}'\nduration: 2h", at(60));
    let mut targets = fleet();
    targets[2].ready_replicas = 0;
    let mut world = World::new(vec![incident("window", 0, 1, &window)], targets);
    let plan = world.settle(at(0), true);
    assert!(world.documents.is_empty(), "nothing before the start");
    assert_eq!(plan.wake_at, Some(at(60)), "woken at the start, no polling");
    let status = world.status("window");
    assert_eq!(status.starts_at.as_ref().unwrap().0, at(60));
    assert_eq!(status.expires_at.as_ref().unwrap().0, at(180));
    assert_eq!(status.effective_mode, Some(EffectiveMode::Normal));
    assert_eq!(status.targets.as_ref().unwrap().unready, 1);
    let ready = world.condition("window", "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Scheduled")
    );
    assert!(
        ready
            .message
            .contains("2/3 matched targets have every pod ready")
    );
    assert_eq!(world.condition("window", "Reconciling").status, "False");
    assert_eq!(world.condition("window", "Stalled").status, "False");
    // A minute before, still nothing; at the start, the mode.
    world.settle(at(59), true);
    assert!(world.documents.is_empty());
    let plan = world.settle(at(60), true);
    assert_eq!(world.documents.len(), 3);
    assert_eq!(plan.wake_at, Some(at(180)));
    assert_eq!(
        world.status("window").effective_mode,
        Some(EffectiveMode::TempFail)
    );
    assert_eq!(world.condition("window", "Ready").reason, "Applied");
    let history: Vec<_> = world
        .status("window")
        .history
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        history,
        [
            (None, EffectiveMode::Normal),
            (Some(EffectiveMode::Normal), EffectiveMode::TempFail)
        ]
    );
    world.settle(at(180), true);
    assert!(world.documents.is_empty());
    assert_eq!(world.condition("window", "Ready").reason, "Expired");
}

#[test]
fn a_scheduled_incident_resolved_or_deleted_before_its_start_leaves_no_trace() {
    let window = format!("{TEMP_FAIL}\nstartsAt: '{}'", at(60));
    for end in ["resolve", "delete", "postpone"] {
        let mut world = World::new(vec![incident("window", 0, 1, &window)], fleet());
        world.settle(at(0), true);
        let mut edited = world.incident("window").clone();
        edited.metadata.generation = Some(2);
        match end {
            "resolve" => edited.spec.resolved = true,
            "delete" => edited.metadata.deletion_timestamp = Some(Time(at(30))),
            _ => edited.spec.starts_at = Some(Time(at(120))),
        }
        world.replace(edited);
        let plan = world.settle(at(30), true);
        assert!(plan.writes.is_empty(), "{end}: {:?}", plan.writes);
        let plan = world.settle(at(60), true);
        assert!(world.documents.is_empty(), "{end}: a mode reached an MTA");
        assert!(plan.writes.is_empty(), "{end}");
        assert_ne!(
            world.status("window").effective_mode,
            Some(EffectiveMode::TempFail),
            "{end}"
        );
    }
}

#[test]
fn a_report_outlives_its_document_until_every_agent_has_released_its_held_mail() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    assert!(world.target("exim").report_exists);
    let mut resolved = world.incident("outage").clone();
    resolved.spec.resolved = true;
    resolved.metadata.generation = Some(2);
    world.replace(resolved);
    // Exim's agent is still releasing: the document goes, its report stays, unowned.
    world.targets[2].unreleased_pods = vec!["exim-0".into()];
    let plan = world.plan(at(1));
    assert!(plan.writes.contains(&Write::DeleteDocument {
        target: world.targets[2].target.clone(),
        keep_report: true
    }));
    world.settle(at(1), true);
    assert!(world.target("exim").document_hash.is_none());
    assert!(world.target("exim").report_exists, "kept for the release");
    assert!(
        !world.target("postfix-a").report_exists,
        "released: deleted"
    );
    assert_eq!(world.condition("outage", "Ready").reason, "Resolved");
    // Released: the report goes.
    world.targets[2].unreleased_pods.clear();
    let plan = world.settle(at(2), true);
    assert!(plan.writes.is_empty());
    assert!(!world.target("exim").report_exists);
    // A new incident while a report is left unowned owns it again.
    let mut targets = fleet();
    targets[0].report_exists = true;
    targets[0].unreleased_pods = vec!["postfix-a-1".into()];
    let world = World::new(world.incidents.clone(), targets);
    let mut next = incident("next", 5, 1, TEMP_FAIL);
    next.status = world.incidents[0].status.clone();
    let world = World::new(vec![next], world.targets.clone());
    let plan = world.plan(at(3));
    assert!(plan.writes.iter().any(|w| matches!(w,
        Write::PutDocument { target, create_report: true, .. } if target.name == "postfix-a")));
}

#[test]
fn a_hard_reject_without_a_record_reaches_no_mta_and_stays_stalled_when_the_webhook_is_back() {
    let mut world = World::new(vec![incident("purge", 0, 1, HARD_REJECT)], fleet());
    world.webhook_up = false;
    world.settle(at(0), true);
    assert!(world.documents.is_empty(), "{:?}", world.documents.keys());
    let stalled = world.condition("purge", "Stalled");
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "BounceNotApproved");
    assert!(
        stalled.message.starts_with(
            "Not approved, nothing was changed: spec.mode: HardReject is applied to no MTA: the admission webhook left no record on it"
        ),
        "{}",
        stalled.message
    );
    assert!(stalled.message.contains("mail-incident-operator-bounce"));
    assert_eq!(world.condition("purge", "Ready").status, "False");
    assert_eq!(world.event_reasons("purge"), ["BounceNotApproved"]);
    // The webhook back, the object unchanged: still nothing, and no event again.
    world.webhook_up = true;
    world.incidents[0]
        .annotations_mut()
        .insert(admission::ADMISSION_ANNOTATION.into(), "{}".into());
    world.settle(at(5), true);
    assert!(world.documents.is_empty());
    assert_eq!(
        world.condition("purge", "Stalled").reason,
        "BounceNotApproved"
    );
    assert_eq!(world.event_reasons("purge"), ["BounceNotApproved"]);
}

#[test]
fn a_hard_reject_is_applied_only_for_an_author_allowed_to_bounce_and_the_spec_they_wrote() {
    let oncall = admitted_by(&incident("purge", 0, 1, HARD_REJECT), "oncall", false);
    let mut world = World::new(vec![oncall], fleet());
    world.settle(at(0), true);
    assert!(world.documents.is_empty());
    assert!(
        world
            .condition("purge", "Stalled")
            .message
            .contains("its admission record says \"oncall\" may not bounce mail"),
        "{}",
        world.condition("purge", "Stalled").message
    );

    let lead = admitted_by(&incident("purge", 0, 2, HARD_REJECT), "lead", true);
    world.replace(lead.clone());
    world.settle(at(1), true);
    assert_eq!(
        world.documents.keys().collect::<Vec<_>>(),
        ["postfix-b"],
        "the edge MTA answers 550"
    );
    assert_eq!(world.condition("purge", "Ready").status, "True");
    let status = world.status("purge");
    assert_eq!(status.changed_by.as_deref(), Some("lead"));
    let last = status.history.last().unwrap();
    assert_eq!(
        (last.to, last.by.as_deref()),
        (EffectiveMode::HardReject, Some("lead"))
    );
    let hard_reject_hash = world.target("postfix-b").document_hash.clone();

    // The spec edited after lead's approval (the webhook down): the edit is not applied,
    // and what lead approved stays as it was.
    let mut edited = lead.clone();
    edited.spec.targets.match_labels = [("app".to_string(), "mta".to_string())].into();
    edited.metadata.generation = Some(3);
    world.replace(edited);
    world.settle(at(2), true);
    assert_eq!(world.documents.keys().collect::<Vec<_>>(), ["postfix-b"]);
    assert_eq!(world.target("postfix-b").document_hash, hard_reject_hash);
    assert_eq!(
        world.condition("purge", "Stalled").reason,
        "BounceNotApproved"
    );
    assert!(
        world
            .condition("purge", "Stalled")
            .message
            .contains("its spec was changed after the admission webhook saw it")
    );
    assert_eq!(world.status("purge").changed_by, None);
}

#[test]
fn an_escalation_nobody_approved_keeps_the_targets_in_the_mode_they_had() {
    let mut world = World::new(vec![incident("outage", 0, 1, TEMP_FAIL)], fleet());
    world.settle(at(0), true);
    let temp_fail: Vec<Option<String>> = world
        .targets
        .iter()
        .map(|t| t.document_hash.clone())
        .collect();
    world.webhook_up = false;
    world.replace(incident(
        "outage",
        0,
        2,
        "mode: HardReject\nreason: INC-7\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}",
    ));
    world.settle(at(1), true);
    let after: Vec<Option<String>> = world
        .targets
        .iter()
        .map(|t| t.document_hash.clone())
        .collect();
    assert_eq!(
        after, temp_fail,
        "the held mail stays held, nothing bounces"
    );
    assert_eq!(
        world.status("outage").effective_mode,
        Some(EffectiveMode::TempFail)
    );
}

#[test]
fn transitions_name_who_declared_changed_and_resolved_and_time_names_nobody() {
    let mut declared = admitted_by(&incident("outage", 0, 1, TEMP_FAIL), "lead", false);
    // A record of the creation.
    let record = admission::Admission {
        namespace: "mail",
        name: "outage",
        uid: "",
        user: "lead",
        operation: "CREATE",
        may_bounce: false,
        at: at(0).as_second(),
        spec: &declared.spec,
    }
    .sign(&webhook_key());
    declared.annotations_mut().insert(
        admission::ADMISSION_ANNOTATION.into(),
        serde_json::to_string(&record).unwrap(),
    );
    let mut world = World::new(vec![declared], fleet());
    world.settle(at(0), true);
    let mut resolved = incident("outage", 0, 2, &format!("{TEMP_FAIL}\nresolved: true"));
    resolved = admitted_by(&resolved, "oncall", false);
    world.replace(resolved);
    world.settle(at(1), true);
    let status = world.status("outage");
    let history: Vec<(EffectiveMode, Option<&str>)> = status
        .history
        .iter()
        .map(|t| (t.to, t.by.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            (EffectiveMode::TempFail, Some("lead")),
            (EffectiveMode::Normal, Some("oncall"))
        ]
    );
    assert_eq!(status.declared_by.as_deref(), Some("lead"));
    assert_eq!(status.changed_by.as_deref(), Some("oncall"));
    let messages: Vec<&str> = world
        .events
        .iter()
        .filter(|(_, e)| e.reason == EventReason::ModeChanged || e.reason == EventReason::Accepted)
        .map(|(_, e)| e.message.as_str())
        .collect();
    assert!(
        messages[0].starts_with("Generation 1 by lead accepted"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("TempFail -> Normal by oncall: resolved")),
        "{messages:?}"
    );

    // An expiry is time's doing, not the last author's.
    let mut world = World::new(
        vec![incident(
            "window",
            0,
            1,
            &format!("{TEMP_FAIL}\nduration: 1h"),
        )],
        fleet(),
    );
    world.settle(at(0), true);
    world.settle(at(61), true);
    let last = world.status("window").history.last().unwrap().clone();
    assert_eq!((last.to, last.by), (EffectiveMode::Normal, None));
}
