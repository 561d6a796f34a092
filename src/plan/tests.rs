use super::*;
use crate::api::MailIncident;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

const CREATED: &str = "2026-01-22T08:00:00Z";

fn at(offset_minutes: i64) -> Timestamp {
    CREATED.parse::<Timestamp>().unwrap() + SignedDuration::from_mins(offset_minutes)
}

fn incident(generation: i64, spec_yaml: &str) -> MailIncident {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec_yaml).expect("test YAML parses");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mailops.dev/v1alpha1",
        "kind": "MailIncident",
        "metadata": {
            "name": "outage", "namespace": "mail", "generation": generation,
            "creationTimestamp": CREATED,
        },
        "spec": spec,
    }))
    .expect("test incident deserializes")
}

fn workload(kind: WorkloadKind, name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        kind,
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn fleet() -> Vec<Workload> {
    vec![
        workload(WorkloadKind::Deployment, "postfix-a", &[("app", "mta")]),
        workload(
            WorkloadKind::Deployment,
            "postfix-b",
            &[("app", "mta"), ("tier", "edge")],
        ),
        workload(WorkloadKind::StatefulSet, "exim", &[("app", "mta")]),
        workload(WorkloadKind::Deployment, "webmail", &[("app", "webmail")]),
    ]
}

const TEMP_FAIL: &str =
    "mode: TempFail\nreason: INC-7 storage down\ntargets: {matchLabels: {app: mta}}";

/// Runs the controller's loop: decide, "write" the status, decide again.
fn settle(
    mut object: MailIncident,
    workloads: &[Workload],
    now: Timestamp,
) -> (MailIncident, Vec<Note>) {
    let mut events = Vec::new();
    for _ in 0..5 {
        let decision = decide(&object, workloads, now);
        events.extend(decision.events);
        if object.status.as_ref() == Some(&decision.status) {
            return (object, events);
        }
        object.status = Some(decision.status);
    }
    panic!("status never settled: the controller would wake itself up forever");
}

fn condition<'a>(
    object: &'a MailIncident,
    kind: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    object
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

fn reasons(events: &[Note]) -> Vec<&str> {
    events.iter().map(|e| e.reason).collect()
}

#[test]
fn first_sight_sets_every_condition_unknown_and_nothing_else() {
    let decision = decide(&incident(1, TEMP_FAIL), &fleet(), at(0));
    let status = &decision.status;
    assert_eq!(status.observed_generation, None);
    assert_eq!(status.effective_mode, None);
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
    assert!(decision.events.is_empty());
}

#[test]
fn a_valid_incident_counts_its_targets_and_claims_nothing_applied() {
    let (object, events) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let status = object.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.effective_mode, Some(EffectiveMode::TempFail));
    let targets = status.targets.as_ref().unwrap();
    assert_eq!(
        (targets.matched, targets.applied, targets.summary.as_str()),
        (3, 0, "0/3")
    );
    assert_eq!(condition(&object, "Ready").status, "False");
    assert_eq!(condition(&object, "Ready").reason, "AwaitingDelivery");
    assert_eq!(condition(&object, "Reconciling").status, "True");
    assert_eq!(condition(&object, "Stalled").status, "False");
    assert_eq!(reasons(&events), ["Accepted", "ModeChanged"]);
    assert!(
        events[0].message.contains("452 4.3.1"),
        "{}",
        events[0].message
    );
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].to, EffectiveMode::TempFail);
    assert_eq!(status.history[0].from, None);
}

#[test]
fn a_settled_status_is_a_fixed_point_at_any_later_time() {
    let (object, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let later = decide(&object, &fleet(), at(90));
    assert_eq!(Some(&later.status), object.status.as_ref());
    assert!(later.events.is_empty());
}

#[test]
fn match_expressions_select_targets() {
    let spec = "mode: AcceptAndQueue\nreason: r\ntargets: {matchExpressions: [{key: app, operator: In, values: [mta]}, {key: tier, operator: DoesNotExist}]}";
    let (object, _) = settle(incident(1, spec), &fleet(), at(0));
    assert_eq!(object.status.unwrap().targets.unwrap().matched, 2);
}

#[test]
fn targets_coming_and_going_are_counted_and_announced() {
    let (object, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let fewer: Vec<Workload> = fleet().into_iter().filter(|w| w.name != "exim").collect();
    let (object, events) = settle(object, &fewer, at(1));
    assert_eq!(
        object
            .status
            .as_ref()
            .unwrap()
            .targets
            .as_ref()
            .unwrap()
            .summary,
        "0/2"
    );
    assert_eq!(reasons(&events), ["TargetsChanged"]);
    assert!(events[0].message.contains("3 -> 2"));
}

#[test]
fn no_targets_is_not_ready_and_not_reconciling() {
    let (object, _) = settle(incident(1, TEMP_FAIL), &[], at(0));
    let ready = condition(&object, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoTargets")
    );
    assert!(ready.message.contains("namespace mail"));
    assert_eq!(condition(&object, "Reconciling").status, "False");
}

#[test]
fn an_invalid_spec_stalls_names_the_field_and_changes_nothing() {
    let (valid, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let before = valid.status.clone().unwrap();
    let mut edited = incident(
        2,
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}",
    );
    edited.status = valid.status;
    let (object, events) = settle(edited, &fleet(), at(5));
    let status = object.status.as_ref().unwrap();
    let stalled = condition(&object, "Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        stalled
            .message
            .contains("spec.hardReject.acknowledgeBounces"),
        "{}",
        stalled.message
    );
    assert_eq!(condition(&object, "Ready").status, "False");
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.effective_mode, before.effective_mode);
    assert_eq!(status.history, before.history);
    assert_eq!(status.targets, before.targets);
    assert_eq!(reasons(&events), ["InvalidSpec"]);
    assert!(events[0].warning);
}

#[test]
fn an_invalid_first_generation_has_no_mode() {
    let (object, events) = settle(
        incident(
            1,
            "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nsmtpReply: {code: 550}",
        ),
        &fleet(),
        at(0),
    );
    assert_eq!(object.status.as_ref().unwrap().effective_mode, None);
    assert!(
        condition(&object, "Stalled")
            .message
            .contains("spec.smtpReply.code")
    );
    assert_eq!(reasons(&events), ["InvalidSpec"]);
}

#[test]
fn resolving_returns_to_normal_and_records_the_transition() {
    let (object, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let mut resolved = incident(2, &format!("{TEMP_FAIL}\nresolved: true"));
    resolved.status = object.status;
    let (object, events) = settle(resolved, &fleet(), at(30));
    let status = object.status.as_ref().unwrap();
    assert_eq!(status.effective_mode, Some(EffectiveMode::Normal));
    let ready = condition(&object, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Resolved")
    );
    assert_eq!(condition(&object, "Reconciling").status, "False");
    let last = status.history.last().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(EffectiveMode::TempFail), EffectiveMode::Normal)
    );
    assert_eq!(last.at.0, at(30));
    assert!(last.reason.starts_with("resolved: "));
    assert_eq!(reasons(&events), ["Accepted", "ModeChanged"]);
}

#[test]
fn expiry_wakes_the_controller_exactly_then_and_ends_the_incident() {
    let spec = format!("{TEMP_FAIL}\nduration: 2h");
    let (object, _) = settle(incident(1, &spec), &fleet(), at(0));
    let early = decide(&object, &fleet(), at(30));
    assert_eq!(early.wake_at, Some(at(120)));
    assert_eq!(
        object
            .status
            .as_ref()
            .unwrap()
            .expires_at
            .as_ref()
            .unwrap()
            .0,
        at(120)
    );

    let (object, events) = settle(object, &fleet(), at(120));
    let status = object.status.as_ref().unwrap();
    assert_eq!(status.effective_mode, Some(EffectiveMode::Normal));
    assert_eq!(condition(&object, "Ready").reason, "Expired");
    assert_eq!(reasons(&events), ["ModeChanged"]);
    assert_eq!(decide(&object, &fleet(), at(121)).wake_at, None);
}

#[test]
fn history_keeps_the_latest_transitions_only() {
    let (mut object, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    for generation in 2..40 {
        let mode = if generation % 2 == 0 {
            "AcceptAndQueue"
        } else {
            "TempFail"
        };
        let mut next = incident(
            generation,
            &format!(
                "mode: {mode}\nreason: flip {generation}\ntargets: {{matchLabels: {{app: mta}}}}"
            ),
        );
        next.status = object.status;
        object = settle(next, &fleet(), at(generation)).0;
    }
    let history = &object.status.as_ref().unwrap().history;
    assert_eq!(history.len(), HISTORY_LIMIT);
    assert_eq!(history.last().unwrap().reason, "flip 39");
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let (object, _) = settle(incident(1, TEMP_FAIL), &fleet(), at(0));
    let first = condition(&object, "Ready").last_transition_time.clone();
    let (object, _) = settle(object, &fleet()[..1], at(10));
    assert_eq!(
        condition(&object, "Ready").last_transition_time,
        first,
        "still False"
    );
    let mut resolved = incident(2, &format!("{TEMP_FAIL}\nresolved: true"));
    resolved.status = object.status;
    let (object, _) = settle(resolved, &fleet(), at(20));
    assert_eq!(condition(&object, "Ready").last_transition_time.0, at(20));
}
