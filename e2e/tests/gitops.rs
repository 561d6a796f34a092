//! GitOps tools reading incidents as the real controller writes them: Argo CD's health
//! script and actions from `deploy/argocd/`, run on Lua 5.1 in the sandbox of
//! `e2e/argocd/sandbox.lua` (Argo CD's libraries only), and kstatus, which Flux's health
//! checks use.

use futures::StreamExt;
use kube::{
    Api,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    support::{
        Mta, Queue, WAIT, apply_incident, condition, observed, ready_because, status, wait_for,
    },
    world::{Scene, World},
};
use mail_incident_operator::api::MailIncident;
use serde_json::{Map, Value, json};
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const CUSTOMIZATIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/argocd/resource_customizations/mailops.dev/MailIncident"
);
const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/argocd/sandbox.lua");

/// Runs the Argo CD script at `script` (relative to the customizations) on `object`, with
/// the clock frozen at `now` if given: what it returned, or its error.
fn run_lua(script: &str, object: &Value, now: Option<u64>) -> Result<Value, String> {
    let mut lua = Command::new("lua5.1");
    lua.arg(SANDBOX).arg(format!("{CUSTOMIZATIONS}/{script}"));
    if let Some(now) = now {
        lua.arg(now.to_string());
    }
    let mut child = lua
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run lua5.1 ({e}): apt-get install lua5.1"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(object.to_string().as_bytes())
        .expect("lua5.1 reads the object");
    let output = child.wait_with_output().expect("lua5.1 runs");
    assert!(
        output.status.success(),
        "the sandbox failed on {script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut outcome: Value =
        serde_json::from_slice(&output.stdout).expect("the sandbox prints JSON");
    match outcome["error"].take() {
        Value::String(error) => Err(error),
        _ => Ok(outcome["result"].take()),
    }
}

/// Argo CD's health of `object`: status and message.
fn argo_health(object: &Value) -> (String, String) {
    let health = run_lua("health.lua", object, None).expect("health.lua runs");
    let text = |key: &str| health[key].as_str().unwrap_or_default().to_string();
    (text("status"), text("message"))
}

/// The actions Argo CD offers for `object`, each with whether it is disabled.
fn argo_actions(object: &Value) -> Vec<(String, bool)> {
    let actions = run_lua("actions/discovery.lua", object, None).expect("discovery.lua runs");
    let mut offered: Vec<(String, bool)> = actions
        .as_object()
        .expect("discovery returns a table of actions")
        .iter()
        .map(|(name, action)| (name.clone(), action["disabled"] == json!(true)))
        .collect();
    offered.sort();
    offered
}

/// What Argo CD patches when it runs `action` on `live`: the JSON merge patch from the
/// live object to the one the script returned (server/application/application.go), after
/// undoing the script's empty arrays where the live object had empty maps
/// (util/lua/lua.go, cleanReturnedObj).
fn argo_action_patch(action: &str, live: &Value) -> Result<Value, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let returned = run_lua(&format!("actions/{action}/action.lua"), live, Some(now))?;
    let cleaned = clean_returned(returned, live);
    Ok(merge_patch(live, &cleaned).unwrap_or_else(|| json!({})))
}

/// Argo CD's cleanReturnedObj: Lua cannot tell an empty map from an empty array, so an
/// empty array where the live object has a map becomes an empty map again.
fn clean_returned(returned: Value, live: &Value) -> Value {
    match (returned, live) {
        (Value::Object(fields), Value::Object(live_fields)) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let cleaned = match live_fields.get(&key) {
                        Some(old) => clean_returned(value, old),
                        None => value,
                    };
                    (key, cleaned)
                })
                .collect(),
        ),
        (Value::Array(items), Value::Object(_)) if items.is_empty() => Value::Object(Map::new()),
        (Value::Array(items), Value::Array(live_items)) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match live_items.get(i) {
                    Some(old) => clean_returned(item, old),
                    None => item,
                })
                .collect(),
        ),
        (returned, _) => returned,
    }
}

/// RFC 7386 merge patch from `from` to `to` (what jsonpatch.CreateMergePatch makes), or
/// None when they are equal.
fn merge_patch(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, value) in to {
                let change = match from.get(key) {
                    Some(old) => merge_patch(old, value),
                    None => Some(value.clone()),
                };
                if let Some(change) = change {
                    patch.insert(key.clone(), change);
                }
            }
            for key in from.keys().filter(|key| !to.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => (from != to).then(|| to.clone()),
    }
}

/// kstatus's reading of a resource.
#[derive(Debug, PartialEq, Eq)]
enum Kstatus {
    InProgress,
    Failed,
    Current,
    Terminating,
}

/// kstatus's `status.Compute` for a kind without built-in rules, which is how Flux's
/// health checks read a MailIncident: sigs.k8s.io/cli-utils pkg/kstatus/status/status.go
/// (Compute, checkReadyCondition) and generic.go (checkGenericProperties,
/// checkGeneration). Debian ships no kstatus, hence this transcription.
fn kstatus(object: &Value) -> Kstatus {
    if object["metadata"]["deletionTimestamp"]
        .as_str()
        .is_some_and(|at| !at.is_empty())
    {
        return Kstatus::Terminating;
    }
    // Without status.observedGeneration kstatus cannot compare, and goes on.
    if let (Some(generation), Some(observed)) = (
        object["metadata"]["generation"].as_i64(),
        object["status"]["observedGeneration"].as_i64(),
    ) && generation != observed
    {
        return Kstatus::InProgress;
    }
    let conditions = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is = |c: &Value, kind: &str, value: &str| c["type"] == kind && c["status"] == value;
    // The first abnormal-true condition in list order decides.
    for c in &conditions {
        if is(c, "Reconciling", "True") {
            return Kstatus::InProgress;
        }
        if is(c, "Stalled", "True") {
            return Kstatus::Failed;
        }
    }
    for c in conditions.iter().filter(|c| c["type"] == "Ready") {
        match c["status"].as_str() {
            Some("True") => return Kstatus::Current,
            Some("False" | "Unknown") => return Kstatus::InProgress,
            _ => {}
        }
    }
    // No known condition: kstatus assumes the resource is current.
    Kstatus::Current
}

/// The incident as the API server serves it, as JSON (what Argo CD and Flux read).
fn fetch(world: &World, namespace: &str, name: &str) -> Value {
    let json = world.kubectl_ok(&["get", "mailincident", name, "-n", namespace, "-o", "json"]);
    serde_json::from_str(&json).expect("kubectl prints JSON")
}

/// Applies an Argo CD action's merge patch, as Argo CD does.
fn patch(world: &World, namespace: &str, name: &str, patch: &Value) {
    world.kubectl_ok(&[
        "patch",
        "mailincident",
        name,
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ]);
}

/// Condition `kind`'s message in a fetched incident.
fn message_of(object: &Value, kind: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_else(|| panic!("no {kind} condition in {object}"))
        .to_string()
}

/// One Deployment `mta` labelled `app: mta`, run by the fakes returned (kubelet, agents).
async fn one_mta(client: &kube::Client, namespace: &str) -> (FakeKubelet, FakeAgents) {
    let fakes = (
        FakeKubelet::start(client.clone(), namespace).await,
        FakeAgents::start(client.clone(), namespace).await,
    );
    Mta::deployment("mta", json!({"app": "mta"}))
        .create(client, namespace)
        .await;
    fakes
}

fn progressing(message: &str) -> (String, String) {
    ("Progressing".into(), message.into())
}

#[tokio::test]
async fn argo_cd_health_and_kstatus_follow_an_incident_through_its_life() {
    let mut scene = Scene::start("gitops").await;
    let world = scene.world;
    let ns = scene.ns.name.clone();
    let client = scene.client.clone();
    let incidents = scene.incidents.clone();
    let _kubelet = FakeKubelet::start(client.clone(), &ns).await;
    for name in ["mta-a", "mta-b"] {
        Mta::deployment(name, json!({"app": "mta"}))
            .create(&client, &ns)
            .await;
    }

    // Every version of the incident the API server serves, to find the controller's
    // first, short-lived status.
    let (sender, mut versions) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let resource = ApiResource::erase::<MailIncident>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(object)) = stream.next().await {
                sender.send(serde_json::to_value(object).unwrap()).ok();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Applied while the controller is frozen: no status yet.
    let spec = "mode: TempFail\nreason: INC-2041 storage down\ntargets: {matchLabels: {app: mta}}\nduration: 12h";
    scene.operator.freeze();
    apply_incident(world, &ns, "outage", spec);
    let unseen = fetch(world, &ns, "outage");
    scene.operator.thaw();
    assert_eq!(unseen["status"], Value::Null, "{unseen}");
    assert_eq!(
        argo_health(&unseen),
        progressing("Waiting for the controller to see this incident")
    );
    // kstatus reads an object without status as Current: the controller's first status,
    // written as soon as it sees the incident, closes that gap (next).
    assert_eq!(kstatus(&unseen), Kstatus::Current);

    // No agent reports yet: the targets are pending.
    let pending = wait_for(&incidents, "outage", "reconciling", |i| {
        observed(i) && condition(i, "Reconciling").is_some_and(|c| c.0 == "True")
    })
    .await;
    let first_seen = loop {
        let version = tokio::time::timeout(WAIT, versions.recv())
            .await
            .expect("the watch sees the controller's first status")
            .expect("the watch runs");
        if version["status"].is_object() {
            break version;
        }
    };
    watch.abort();
    assert_eq!(first_seen["status"]["observedGeneration"], Value::Null);
    assert_eq!(
        argo_health(&first_seen),
        progressing("The controller has seen this incident and is evaluating it")
    );
    assert_eq!(kstatus(&first_seen), Kstatus::InProgress);

    let reconciling = fetch(world, &ns, "outage");
    assert_eq!(
        condition(&pending, "Reconciling").map(|c| c.2),
        Some("0/2 targets answer TempFail; 0 failed")
    );
    assert_eq!(
        argo_health(&reconciling),
        progressing(&message_of(&reconciling, "Reconciling"))
    );
    assert_eq!(kstatus(&reconciling), Kstatus::InProgress);

    let _agents = FakeAgents::start(client.clone(), &ns).await;
    wait_for(&incidents, "outage", "applied", ready_because("Applied")).await;
    let applied = fetch(world, &ns, "outage");
    assert_eq!(
        argo_health(&applied),
        ("Healthy".into(), "2/2 targets answer TempFail".into())
    );
    assert_eq!(kstatus(&applied), Kstatus::Current);

    // An edit the 1.20 API server lets through (it drops the CEL rules), read before the
    // controller has seen it, then once it has.
    let invalid = spec.replace("TempFail", "HardReject");
    scene.operator.freeze();
    apply_incident(world, &ns, "outage", &invalid);
    let unobserved = fetch(world, &ns, "outage");
    scene.operator.thaw();
    assert_eq!(unobserved["metadata"]["generation"], 2);
    assert_eq!(
        argo_health(&unobserved),
        progressing(
            "Waiting for the controller to observe generation 2 (the status describes generation 1)"
        )
    );
    assert_eq!(kstatus(&unobserved), Kstatus::InProgress);

    wait_for(&incidents, "outage", "stalled", |i| {
        observed(i) && condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    let stalled = fetch(world, &ns, "outage");
    let (health, message) = argo_health(&stalled);
    assert_eq!(health, "Degraded");
    assert_eq!(message, message_of(&stalled, "Stalled"));
    assert!(
        message.contains("spec.hardReject.acknowledgeBounces"),
        "{message}"
    );
    assert_eq!(kstatus(&stalled), Kstatus::Failed);

    apply_incident(
        world,
        &ns,
        "outage",
        &format!("{invalid}\nhardReject: {{acknowledgeBounces: true}}"),
    );
    wait_for(&incidents, "outage", "fixed and applied", |i| {
        i.metadata.generation == Some(3) && ready_because("Applied")(i)
    })
    .await;
    let fixed = fetch(world, &ns, "outage");
    assert_eq!(
        argo_health(&fixed),
        ("Healthy".into(), "2/2 targets answer HardReject".into())
    );
    assert_eq!(kstatus(&fixed), Kstatus::Current);

    // A target the mode cannot reach: a restart would lose its queue.
    Mta::deployment("mta-fragile", json!({"app": "mta"}))
        .annotate("mailops.dev/delivery", "restart")
        .queue(Queue::EmptyDir)
        .create(&client, &ns)
        .await;
    wait_for(&incidents, "outage", "refusing a target", |i| {
        observed(i)
            && condition(i, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "TargetsFailed")
    })
    .await;
    let failing = fetch(world, &ns, "outage");
    let (health, message) = argo_health(&failing);
    assert_eq!(health, "Degraded");
    assert!(
        message.starts_with("2/3 targets answer HardReject; 1 cannot be delivered; Deployment/mta-fragile: queue directory /var/spool/postfix is on emptyDir"),
        "{message}"
    );
    assert_eq!(kstatus(&failing), Kstatus::Failed);

    apply_incident(
        world,
        &ns,
        "outage",
        &format!("{invalid}\nhardReject: {{acknowledgeBounces: true}}\nresolved: true"),
    );
    wait_for(&incidents, "outage", "resolved", ready_because("Resolved")).await;
    let resolved = fetch(world, &ns, "outage");
    assert_eq!(resolved["status"]["effectiveMode"], "Normal");
    assert_eq!(
        argo_health(&resolved),
        (
            "Healthy".into(),
            "Resolved: no target runs this incident's mode any more".into()
        )
    );
    assert_eq!(kstatus(&resolved), Kstatus::Current);

    // Deleted: held by the controller's finalizer until its targets are restored. (Argo CD
    // says "Pending deletion" itself, without the health script.)
    scene.operator.freeze();
    world.kubectl_ok(&[
        "delete",
        "mailincident",
        "outage",
        "-n",
        &ns,
        "--wait=false",
    ]);
    let deleting = fetch(world, &ns, "outage");
    scene.operator.thaw();
    assert_eq!(kstatus(&deleting), Kstatus::Terminating);
}

#[tokio::test]
async fn argo_cd_actions_extend_within_the_bound_and_resolve_a_real_incident() {
    let scene = Scene::start("gitops-actions").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    for name in ["mta", "mta-long"] {
        Mta::deployment(name, json!({"app": name}))
            .create(client, &ns.name)
            .await;
    }
    let spec = |app: &str, duration: &str| {
        format!(
            "mode: AcceptAndQueue\nreason: INC-77 storage degraded\ntargets: {{matchLabels: {{app: {app}}}}}\nduration: {duration}"
        )
    };
    apply_incident(world, &ns.name, "outage", &spec("mta", "36h"));
    let active = wait_for(incidents, "outage", "applied", ready_because("Applied")).await;
    let ends = status(&active).expires_at.clone().expect("an end").0;
    let live = fetch(world, &ns.name, "outage");
    assert_eq!(
        argo_actions(&live),
        [("extend".into(), false), ("resolve".into(), false)]
    );

    // Extend: one day more, as an end of its own instead of the duration.
    let one_day_later = ends + Duration::from_secs(86_400);
    let extended = extend_to(world, &ns.name, incidents, "outage", &live, one_day_later).await;
    assert_eq!(extended.spec.duration, None);

    // Up to the controller's bound, 100 days after creation, and not a second past it.
    apply_incident(world, &ns.name, "long", &spec("mta-long", "2399h"));
    let long = wait_for(incidents, "long", "applied", ready_because("Applied")).await;
    let bound =
        long.metadata.creation_timestamp.clone().unwrap().0 + Duration::from_secs(100 * 86_400);
    let live = fetch(world, &ns.name, "long");
    extend_to(world, &ns.name, incidents, "long", &live, bound).await;
    let live = fetch(world, &ns.name, "long");
    assert_eq!(
        argo_action_patch("extend", &live),
        Err(format!(
            "cannot extend: the incident already ends at {bound}, 100 days after its creation: the longest an incident may last"
        ))
    );

    // Resolve: the record stays, and nothing more is offered.
    let live = fetch(world, &ns.name, "outage");
    let resolution = argo_action_patch("resolve", &live).expect("resolve runs");
    assert_eq!(resolution, json!({"spec": {"resolved": true}}));
    patch(world, &ns.name, "outage", &resolution);
    wait_for(incidents, "outage", "resolved", ready_because("Resolved")).await;
    let resolved = fetch(world, &ns.name, "outage");
    assert_eq!(
        argo_actions(&resolved),
        [("extend".into(), true), ("resolve".into(), true)]
    );
    assert_eq!(argo_health(&resolved).0, "Healthy");
    assert_eq!(
        argo_action_patch("extend", &resolved),
        Err("cannot extend: the incident is resolved".into())
    );
}

/// Runs Argo CD's extend action on the live incident `name`, checks that it asks for
/// `until` in place of the duration, applies its patch and waits for the controller to
/// take `until` as the incident's end.
async fn extend_to(
    world: &World,
    namespace: &str,
    incidents: &kube::Api<MailIncident>,
    name: &str,
    live: &Value,
    until: k8s_openapi::jiff::Timestamp,
) -> MailIncident {
    let extension = argo_action_patch("extend", live).expect("extend runs");
    assert_eq!(
        extension,
        json!({"spec": {"duration": null, "expiresAt": until.to_string()}})
    );
    patch(world, namespace, name, &extension);
    let extended = wait_for(incidents, name, "extended", |i| {
        i.metadata.generation == Some(2) && ready_because("Applied")(i)
    })
    .await;
    assert_eq!(
        status(&extended).expires_at.as_ref().map(|t| t.0),
        Some(until)
    );
    extended
}

#[tokio::test]
async fn argo_cd_health_reads_incidents_that_protect_nothing_yield_or_have_expired() {
    let scene = Scene::start("gitops-ends").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _fakes = one_mta(client, &ns.name).await;
    let spec = |mode: &str, app: &str| {
        format!(
            "mode: {mode}\nreason: INC-88 storage maintenance\ntargets: {{matchLabels: {{app: {app}}}}}"
        )
    };

    // A selector that matches nothing: the incident protects nothing.
    apply_incident(world, &ns.name, "typo", &spec("TempFail", "mtaa"));
    wait_for(incidents, "typo", "matching nothing", |i| {
        observed(i) && condition(i, "Ready").is_some_and(|c| c.1 == "NoTargets")
    })
    .await;
    let protects_nothing = fetch(world, &ns.name, "typo");
    assert_eq!(
        argo_health(&protects_nothing),
        (
            "Degraded".into(),
            format!(
                "spec.targets matches no Deployment or StatefulSet in namespace {}",
                ns.name
            )
        )
    );
    assert_eq!(kstatus(&protects_nothing), Kstatus::InProgress);

    // The less severe of two incidents on one target yields it to the other.
    apply_incident(world, &ns.name, "severe", &spec("TempFail", "mta"));
    wait_for(incidents, "severe", "applied", ready_because("Applied")).await;
    apply_incident(
        world,
        &ns.name,
        "mild",
        &format!("{}\nduration: 3s", spec("AcceptAndQueue", "mta")),
    );
    wait_for(incidents, "mild", "superseded", ready_because("Superseded")).await;
    let yielding = fetch(world, &ns.name, "mild");
    assert_eq!(
        argo_health(&yielding),
        (
            "Healthy".into(),
            "Every target follows a more severe or older incident".into()
        )
    );
    assert_eq!(kstatus(&yielding), Kstatus::Current);

    // Expired: a record of what happened, healthy.
    wait_for(incidents, "mild", "expired", ready_because("Expired")).await;
    let expired = fetch(world, &ns.name, "mild");
    assert_eq!(expired["status"]["effectiveMode"], "Normal");
    assert_eq!(
        argo_health(&expired),
        (
            "Healthy".into(),
            "Expired: no target runs this incident's mode any more".into()
        )
    );
    assert_eq!(kstatus(&expired), Kstatus::Current);
    assert_eq!(
        argo_actions(&expired),
        [("extend".into(), true), ("resolve".into(), false)]
    );
}

/// RFC 3339 for `seconds` from now, to the second.
fn seconds_from_now(seconds: u64) -> String {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    k8s_openapi::jiff::Timestamp::from_second(at as i64)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_window_declared_for_tomorrow_is_healthy_and_current_today_and_touches_nothing() {
    let scene = Scene::start("gitops-window").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _fakes = one_mta(client, &ns.name).await;
    let tomorrow = seconds_from_now(86_400);
    let spec = |starts_at: &str| {
        format!(
            "mode: TempFail\nreason: CHG-311 storage firmware upgrade\ntargets: {{matchLabels: {{app: mta}}}}\n\
             scope: {{recipientDomains: [pec.example.it, '*.storage.example.it']}}\nstartsAt: '{starts_at}'\nduration: 4h"
        )
    };
    apply_incident(world, &ns.name, "window", &spec(&tomorrow));
    wait_for(incidents, "window", "scheduled", ready_because("Scheduled")).await;
    let scheduled = fetch(world, &ns.name, "window");
    let message = message_of(&scheduled, "Ready");
    assert_eq!(
        message,
        format!(
            "Starts at {tomorrow}: nothing changes on any MTA until then; 1/1 matched targets have every pod ready"
        )
    );
    // What Argo CD's sync and Flux's health checks wait for is already there today.
    assert_eq!(argo_health(&scheduled), ("Healthy".into(), message));
    assert_eq!(kstatus(&scheduled), Kstatus::Current);
    assert_eq!(scheduled["status"]["effectiveMode"], "Normal");
    assert_eq!(scheduled["status"]["scope"], "2 domains");
    let documents = world.kubectl_ok(&[
        "get",
        "configmaps",
        "-n",
        &ns.name,
        "-l",
        "mailops.dev/role=mode-document",
        "-o",
        "name",
    ]);
    assert_eq!(documents.trim(), "", "no mode document before the start");
    let listed = world.kubectl_ok(&["get", "mailinc", "-n", &ns.name]);
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "MODE", "SCOPE", "READY", "APPLIED", "STARTS", "EXPIRES", "AGE"
        ]
    );
    assert!(
        listed.contains("2 domains") && listed.contains(&tomorrow),
        "{listed}"
    );

    // Moved to a few seconds from now: it starts by itself, with no edit or poll.
    apply_incident(world, &ns.name, "window", &spec(&seconds_from_now(3)));
    wait_for(incidents, "window", "started and applied", |i| {
        ready_because("Applied")(i)
            && status(i).effective_mode
                == Some(mail_incident_operator::api::EffectiveMode::TempFail)
    })
    .await;
    let started = fetch(world, &ns.name, "window");
    assert_eq!(argo_health(&started).0, "Healthy");
    assert_eq!(kstatus(&started), Kstatus::Current);
}
