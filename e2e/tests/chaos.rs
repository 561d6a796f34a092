//! The controller under faults and at scale (issue 8), against the real API server:
//!
//! - the operator SIGKILLed at random points of a 200-target mode switch, many times
//!   over: once restarted, every mode document carries the latest mode and the status
//!   says so, never before;
//! - the API server itself stopped for 5 s and for 20 s (on a control plane of the test's
//!   own): the operator keeps running, the same process, and converges on the next mode
//!   change;
//! - a leader frozen (SIGSTOP) mid-switch and continued after its standby has taken over
//!   and moved on: it writes nothing;
//! - an incident edited into a spec only the controller refuses, then deleted: its env
//!   vars leave the MTA's pod template;
//! - leftovers planted while no operator runs (mode documents and their reports, for a
//!   workload that exists and for one that is gone; env vars and template annotations
//!   under the operator's field manager): swept at start.
//!
//! Each test prints what it counted and timed (run with `--nocapture` to see it).
//! `E2E_CHAOS_KILLS` raises the number of kills, `E2E_CHAOS_SEED` replays their delays,
//! `E2E_CHAOS_MAX_DELAY_MS` bounds them (default 1500).

use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::ConfigMap};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::watcher,
};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    support::{
        Mta, apply_incident, condition, observed, ready_because, summary, wait_for, wait_for_within,
    },
    world::{
        OPERATOR_NAMESPACE, Operator, PrivateControlPlane, Scene, TestNamespace, World, lease_name,
    },
};
use mail_incident_operator::{
    api::{
        MailIncident, Mode,
        mode_document::{
            DELIVERY_ANNOTATION, DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply,
            INCIDENT_ANNOTATION, MODE_DOCUMENT_KEY, MODE_DOCUMENT_KIND, MODE_DOCUMENT_VERSION,
            MODE_HASH_ANNOTATION, ModeDocument, ROLE_DOCUMENT, ROLE_LABEL, Rule, document_name,
            report_name,
        },
    },
    controller::{document_object, report_object},
    plan::TargetRef,
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// The field manager of the operator's writes (`controller::FIELD_MANAGER`): what it
/// owns on a workload, it can remove.
const FIELD_MANAGER: &str = "mail-incident-operator";
/// What every incident here selects.
const TARGETS: &str = "targets: {matchLabels: {app: mta}}";
/// The fleet of the tests at scale.
const FLEET: usize = 200;
/// How long a fleet may take to reach its first mode: the control plane's controller
/// manager creates a pod per target first (the fake agents report per pod).
const FIRST_MODE: Duration = Duration::from_secs(180);
/// How long a 200-target switch may take once an operator leads.
const SWITCH: Duration = Duration::from_secs(60);

fn spec(mode: Mode, why: &str) -> String {
    let extra = match mode {
        Mode::HardReject => "\nhardReject: {acknowledgeBounces: true}",
        Mode::TempFail | Mode::AcceptAndQueue => "",
    };
    format!("mode: {mode:?}\nreason: INC-8 {why}\n{TARGETS}{extra}")
}

/// `size` reload-delivery Deployments `mta-000`, `mta-001`, ... labelled `app: mta`.
async fn create_fleet(client: &Client, namespace: &str, size: usize) {
    stream::iter(0..size)
        .map(|i| {
            Mta::deployment(&format!("mta-{i:03}"), json!({"app": "mta"})).create(client, namespace)
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// One stored mode document: the mode it carries and its resourceVersion.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    mode: Mode,
    resource_version: String,
}

/// Every mode document of the namespace, by ConfigMap name, in one LIST.
async fn stored_documents(client: &Client, namespace: &str) -> BTreeMap<String, Stored> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let listed = config_maps
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}")))
        .await
        .expect("list mode documents");
    listed
        .items
        .into_iter()
        .filter_map(|c| {
            let mode = document_mode(&c)?;
            Some((
                c.name_any(),
                Stored {
                    mode,
                    resource_version: c.resource_version().unwrap_or_default(),
                },
            ))
        })
        .collect()
}

/// The mode a mode document ConfigMap carries, if it carries one.
fn document_mode(config_map: &ConfigMap) -> Option<Mode> {
    let text = config_map.data.as_ref()?.get(MODE_DOCUMENT_KEY)?;
    let document: ModeDocument = serde_json::from_str(text).expect("a stored mode document parses");
    Some(document.headline().mode)
}

fn carrying(documents: &BTreeMap<String, Stored>, mode: Mode) -> usize {
    documents.values().filter(|d| d.mode == mode).count()
}

/// "HardReject ×12, TempFail ×188": what the documents carry.
fn modes(documents: &BTreeMap<String, Stored>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for document in documents.values() {
        *counts.entry(format!("{:?}", document.mode)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(m, n)| format!("{m} ×{n}")).collect();
    if counts.is_empty() {
        "no document".into()
    } else {
        counts.join(", ")
    }
}

/// What an incident's status says, in one line.
fn describe(incident: Option<&MailIncident>) -> String {
    let Some(incident) = incident else {
        return "the incident is gone".into();
    };
    let ready = condition(incident, "Ready").map_or("no Ready condition".to_string(), |c| {
        format!("Ready {} {}", c.0, c.1)
    });
    format!(
        "generation {:?}, observed {:?}, {ready}, {}",
        incident.metadata.generation,
        incident.status.as_ref().and_then(|s| s.observed_generation),
        summary(incident).unwrap_or("no target count")
    )
}

/// Whether the incident's current generation is Ready, Applied, on all `size` targets.
fn applied_everywhere(incident: &MailIncident, size: usize) -> bool {
    ready_because("Applied")(incident) && summary(incident) == Some(&format!("{size}/{size}"))
}

/// How a fleet came to carry a mode.
struct Convergence {
    converged: bool,
    took: Duration,
    /// Documents not carrying the mode when the wait ended (missing ones included).
    stale: usize,
    /// The most documents not carrying the mode while the status said Applied everywhere.
    stale_while_claimed: usize,
    /// What was last seen, for messages.
    last: String,
}

/// Polls (at most `bound`) until all `size` mode documents carry `mode` and the incident
/// is Ready, Applied on all of them, for its current generation.
async fn converge(
    client: &Client,
    namespace: &str,
    incident: &str,
    mode: Mode,
    size: usize,
    bound: Duration,
) -> Convergence {
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut stale_while_claimed = 0;
    loop {
        let current = incidents.get_opt(incident).await.expect("get incident");
        let documents = stored_documents(client, namespace).await;
        let stale = size.saturating_sub(carrying(&documents, mode));
        let claimed = current
            .as_ref()
            .is_some_and(|i| applied_everywhere(i, size));
        if claimed {
            stale_while_claimed = stale_while_claimed.max(stale);
        }
        let done = claimed && stale == 0;
        if done || started.elapsed() > bound {
            return Convergence {
                converged: done,
                took: started.elapsed(),
                stale,
                stale_while_claimed,
                last: format!(
                    "documents: {} of {size} expected; incident: {}",
                    modes(&documents),
                    describe(current.as_ref())
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches the namespace's mode documents; returns once the watch has listed them, with
/// every write from then on: (ConfigMap name, mode, resourceVersion). Abort the task to
/// stop.
async fn watch_documents(
    client: &Client,
    namespace: &str,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(String, Mode, String)>,
) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let (sender, written) = tokio::sync::mpsc::unbounded_channel();
    let (listed, watching) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(async move {
        let events = watcher(
            config_maps,
            watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}")),
        );
        futures::pin_mut!(events);
        let mut listed = Some(listed);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        listed.send(()).ok();
                    }
                }
                Ok(watcher::Event::Apply(c)) => {
                    if let Some(mode) = document_mode(&c) {
                        let version = c.resource_version().unwrap_or_default();
                        sender.send((c.name_any(), mode, version)).ok();
                    }
                }
                _ => {}
            }
        }
    });
    watching.await.expect("the documents are watched");
    (watch, written)
}

/// A small xorshift generator: the kill delays, replayable with `E2E_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> (Self, u64) {
        let seed = std::env::var("E2E_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(Instant::now())
            });
        (Self(seed.max(1)), seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Waits, within the time a fleet's first mode may take, until the incident `outage`
/// applies to the whole test fleet.
async fn wait_for_first_mode(incidents: &Api<MailIncident>) {
    wait_for_within(
        FIRST_MODE,
        incidents,
        "outage",
        "applied to the whole fleet",
        |i| applied_everywhere(i, FLEET),
    )
    .await;
}

/// A namespace of its own holding the test fleet, with fake agents acknowledging modes.
async fn fleet_with_agents(
    world: &World,
    prefix: &str,
) -> (TestNamespace, Client, Api<MailIncident>, FakeAgents) {
    let ns = TestNamespace::new(world, prefix);
    let client = world.admin().await;
    let incidents = Api::namespaced(client.clone(), &ns.name);
    let agents = FakeAgents::start(client.clone(), &ns.name).await;
    create_fleet(&client, &ns.name, FLEET).await;
    (ns, client, incidents, agents)
}

#[tokio::test]
async fn operator_killed_at_random_points_of_a_200_target_switch() {
    let world = World::get();
    let (ns, client, incidents, _agents) = fleet_with_agents(world, "kill").await;
    let mut operator = Operator::start(world, &ns.name).await;
    // Restarted, it keeps its name in the Lease, as a container restarted in its pod does.
    let identity = operator.identity.clone();
    apply_incident(
        world,
        &ns.name,
        "outage",
        &spec(Mode::AcceptAndQueue, "run 0"),
    );
    wait_for_first_mode(&incidents).await;

    let kills: usize = std::env::var("E2E_CHAOS_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8)
        .max(1);
    let max_delay: u64 = std::env::var("E2E_CHAOS_MAX_DELAY_MS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500)
        .max(1);
    let (mut rng, seed) = Rng::from_env();
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut converged, mut stale, mut stale_while_claimed, mut mid_write) = (0, 0, 0, 0);
    for run in 1..=kills {
        let mode = [Mode::TempFail, Mode::HardReject, Mode::AcceptAndQueue][(run - 1) % 3];
        apply_incident(
            world,
            &ns.name,
            "outage",
            &spec(mode, &format!("run {run}")),
        );
        let delay = Duration::from_millis(rng.below(max_delay));
        tokio::time::sleep(delay).await;
        operator.kill();
        let at_kill = carrying(&stored_documents(&client, &ns.name).await, mode);
        mid_write += usize::from(at_kill < FLEET);
        let restarted = Instant::now();
        operator = Operator::start_as(world, &ns.name, &identity).await;
        let outcome = converge(&client, &ns.name, "outage", mode, FLEET, SWITCH).await;
        let line = format!(
            "run {run}: {mode:?}, killed {:.2} s after kubectl apply with {at_kill}/{FLEET} \
             documents written; {} in {:.1} s after the restart; {}",
            delay.as_secs_f64(),
            if outcome.converged {
                "converged"
            } else {
                "NOT converged"
            },
            restarted.elapsed().as_secs_f64(),
            outcome.last
        );
        eprintln!("{line}");
        converged += usize::from(outcome.converged);
        stale += outcome.stale;
        stale_while_claimed += outcome.stale_while_claimed;
        if !outcome.converged || outcome.stale_while_claimed > 0 {
            failures.push(line);
        }
    }
    // Nothing writes an older mode once the last run has converged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = [Mode::TempFail, Mode::HardReject, Mode::AcceptAndQueue][(kills - 1) % 3];
    let documents = stored_documents(&client, &ns.name).await;
    let stale_after = FLEET.saturating_sub(carrying(&documents, last));
    eprintln!(
        "operator SIGKILLed mid-switch: {kills} runs (seed {seed}, delays below {max_delay} \
         ms), {mid_write} killed before every document was written, {converged} converged, \
         {stale} documents stale when a run ended, at most {stale_while_claimed} stale while \
         the status said Applied, {stale_after} stale 2 s after the last run; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty() && stale_after == 0,
        "{} of {kills} runs did not converge within {SWITCH:?} after the restart, or the \
         status claimed a mode some documents did not carry; {stale_after} documents stale \
         at the end ({}); replay with E2E_CHAOS_SEED={seed}\n{}",
        kills - converged,
        modes(&documents),
        failures.join("\n")
    );
}

/// An incident in force on 20 targets of a private control plane, its API server stopped
/// for `outage` and started again, then a mode change: the operator must still be the
/// same running process and converge within 15 s of the API server answering /readyz.
async fn api_server_outage(outage: Duration, port_base: u16) {
    const SIZE: usize = 20;
    const BOUND: Duration = Duration::from_secs(15);
    // Declared first, dropped last: everything else goes before its control plane.
    let plane = PrivateControlPlane::start(port_base).await;
    let world = &plane.world;
    let ns = TestNamespace::new(world, "apiserver");
    let client = world.admin().await;
    let incidents: Api<MailIncident> = Api::namespaced(client.clone(), &ns.name);
    let agents = FakeAgents::start(client.clone(), &ns.name).await;
    create_fleet(&client, &ns.name, SIZE).await;
    let mut operator = Operator::start(world, &ns.name).await;
    let pid = operator.pid();
    apply_incident(
        world,
        &ns.name,
        "outage",
        &spec(Mode::TempFail, "storage down"),
    );
    wait_for_within(FIRST_MODE, &incidents, "outage", "applied", |i| {
        applied_everywhere(i, SIZE)
    })
    .await;

    // It stops listening at SIGTERM, at once; the outage is counted from there.
    let stopping = Instant::now();
    plane.stop_api_server().await;
    let stopped = Instant::now();
    tokio::time::sleep(outage.saturating_sub(stopped - stopping)).await;
    plane.start_api_server().await;
    let answering = Instant::now();
    // Fresh fake agents: the old ones' watches may be in a backoff of many seconds, and
    // what is timed here is the operator's recovery, not theirs.
    drop(agents);
    let _agents = FakeAgents::start(client.clone(), &ns.name).await;
    apply_incident(
        world,
        &ns.name,
        "outage",
        &spec(Mode::HardReject, "escalated"),
    );
    let bound = BOUND.saturating_sub(answering.elapsed());
    let outcome = converge(&client, &ns.name, "outage", Mode::HardReject, SIZE, bound).await;
    let done = Instant::now();
    let exited = operator.exited();
    eprintln!(
        "API server stopped for {:.1} s, then {:.1} s starting until /readyz: operator pid \
         {pid} {}; {} {:.1} s after /readyz, {:.1} s after the stop; {}",
        outage.as_secs_f64(),
        (answering - stopping).saturating_sub(outage).as_secs_f64(),
        exited.map_or("still running".to_string(), |s| format!("EXITED ({s})")),
        if outcome.converged {
            "converged"
        } else {
            "NOT converged"
        },
        (done - answering).as_secs_f64(),
        (done - stopping).as_secs_f64(),
        outcome.last
    );
    assert!(
        exited.is_none() && operator.pid() == pid,
        "the operator (pid {pid}) exited during or after a {outage:?} API server outage: \
         {exited:?}; its log ends:\n{}",
        operator.log_tail(30)
    );
    assert!(
        outcome.converged,
        "not converged within {BOUND:?} after the API server answered /readyz again: {} \
         documents stale; {}",
        outcome.stale, outcome.last
    );
}

#[tokio::test]
async fn api_server_restarted_for_5s_keeps_the_operator_converging() {
    api_server_outage(Duration::from_secs(5), 45443).await;
}

#[tokio::test]
async fn api_server_restarted_for_20s_keeps_the_operator_converging() {
    api_server_outage(Duration::from_secs(20), 44443).await;
}

#[tokio::test]
async fn a_frozen_leader_writes_nothing_after_failover() {
    let world = World::get();
    let (ns, client, incidents, _agents) = fleet_with_agents(world, "frozen").await;
    let first = Operator::start(world, &ns.name).await;
    let second = Operator::start(world, &ns.name).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let lease = lease_name(&ns.name);
    let holder = || async {
        leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };
    apply_incident(world, &ns.name, "outage", &spec(Mode::TempFail, "A"));
    wait_for_first_mode(&incidents).await;
    let leading = holder().await.expect("a replica holds the Lease");
    let (mut leader, standby) = if leading == first.identity {
        (first, second)
    } else {
        assert_eq!(
            leading, second.identity,
            "the Lease holder is neither replica"
        );
        (second, first)
    };

    // Watch the documents, to freeze the leader at its first write of mode B.
    let (watch, mut written) = watch_documents(&client, &ns.name).await;
    let applied = Instant::now();
    apply_incident(world, &ns.name, "outage", &spec(Mode::HardReject, "B"));
    loop {
        let (_, mode, _) = tokio::time::timeout(Duration::from_secs(30), written.recv())
            .await
            .expect("the leader writes mode B within 30 s")
            .expect("the watch runs");
        if mode == Mode::HardReject {
            break;
        }
    }
    leader.freeze();
    let frozen = Instant::now();
    watch.abort();
    let at_freeze = carrying(&stored_documents(&client, &ns.name).await, Mode::HardReject);
    eprintln!(
        "leader {} frozen {:.2} s after kubectl apply, with {at_freeze}/{FLEET} documents \
         carrying B",
        leader.identity,
        (frozen - applied).as_secs_f64()
    );
    assert!(
        at_freeze < FLEET,
        "the leader wrote all {FLEET} documents before it could be frozen: nothing to test"
    );

    // The standby takes over and finishes B, then C goes through it alone.
    let b = converge(&client, &ns.name, "outage", Mode::HardReject, FLEET, SWITCH).await;
    let successor = holder().await;
    assert!(
        b.converged && successor.as_deref() == Some(standby.identity.as_str()),
        "the standby {} did not take over and finish B within {SWITCH:?} of the freeze: \
         Lease held by {successor:?}; {}",
        standby.identity,
        b.last
    );
    let b_took = frozen.elapsed();
    apply_incident(world, &ns.name, "outage", &spec(Mode::AcceptAndQueue, "C"));
    let c = converge(
        &client,
        &ns.name,
        "outage",
        Mode::AcceptAndQueue,
        FLEET,
        SWITCH,
    )
    .await;
    assert!(c.converged, "C not applied within {SWITCH:?}: {}", c.last);
    let before = stored_documents(&client, &ns.name).await;
    let generation = incidents.get("outage").await.unwrap().metadata.generation;

    let (watch, mut written) = watch_documents(&client, &ns.name).await;
    leader.thaw();
    tokio::time::sleep(Duration::from_secs(10)).await;
    watch.abort();
    // Every write seen meanwhile, by document: the modes it went through.
    let mut flaps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Ok((name, mode, _)) = written.try_recv() {
        flaps.entry(name).or_default().push(format!("{mode:?}"));
    }
    let after = stored_documents(&client, &ns.name).await;
    let rewritten: Vec<String> = before
        .iter()
        .filter(|(name, stored)| after.get(*name) != Some(stored))
        .map(|(name, _)| {
            let now = after.get(name).map_or("deleted".to_string(), |s| {
                format!("{:?} at resourceVersion {}", s.mode, s.resource_version)
            });
            let through = flaps.get(name).map_or("?".to_string(), |m| m.join(" -> "));
            format!("{name}: written {through}; now {now}")
        })
        .collect();
    let to_an_older_mode = flaps
        .values()
        .filter(|modes| modes.iter().any(|m| m != "AcceptAndQueue"))
        .count();
    let not_c = FLEET.saturating_sub(carrying(&after, Mode::AcceptAndQueue));
    let incident = incidents.get("outage").await.unwrap();
    let status_kept = incident.metadata.generation == generation
        && applied_everywhere(&incident, FLEET)
        && incident
            .status
            .as_ref()
            .and_then(|s| s.effective_mode)
            .is_some_and(|m| format!("{m:?}") == "AcceptAndQueue");
    let old_leader = leader.exited();
    eprintln!(
        "frozen leader: B everywhere through the standby {:.1} s after the freeze; C in {:.1} s; \
         after the old leader ran again for 10 s: {} documents rewritten ({} writes seen, \
         {to_an_older_mode} documents set back to an older mode), {not_c} documents not \
         carrying C ({}), incident {}; the old leader {}",
        b_took.as_secs_f64(),
        c.took.as_secs_f64(),
        rewritten.len(),
        flaps.values().map(Vec::len).sum::<usize>(),
        modes(&after),
        describe(Some(&incident)),
        old_leader.map_or("still runs".to_string(), |s| format!("exited ({s})"))
    );
    assert!(
        rewritten.is_empty() && not_c == 0,
        "the old leader, continued after failover, rewrote {} of {FLEET} documents \
         ({to_an_older_mode} set back to an older mode, {not_c} no longer carry C):\n{}\n\
         --- its log ends:\n{}",
        rewritten.len(),
        rewritten
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        leader.log_tail(30)
    );
    assert!(
        status_kept,
        "the incident's status changed after the old leader ran again: {}\n{}",
        describe(Some(&incident)),
        leader.log_tail(30)
    );
}

/// The MAIL_INCIDENT_* env var names on any container of a Deployment's pod template,
/// and its template annotations under `mailops.dev/`.
async fn template_leftovers(api: &Api<Deployment>, name: &str) -> (Vec<String>, Vec<String>) {
    let deployment = api.get(name).await.expect("get deployment");
    let template = deployment.spec.expect("a spec").template;
    let env = template
        .spec
        .iter()
        .flat_map(|pod| &pod.containers)
        .flat_map(|container| container.env.iter().flatten())
        .map(|e| e.name.clone())
        .filter(|name| name.starts_with("MAIL_INCIDENT_"))
        .collect();
    let annotations = template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default()
        .into_keys()
        .filter(|key| key.starts_with("mailops.dev/"))
        .collect();
    (env, annotations)
}

#[tokio::test]
async fn an_invalid_then_deleted_incident_leaves_no_env_var() {
    let scene = Scene::start("invalid-delete").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let _kubelet = FakeKubelet::start(client.clone(), &ns.name).await;
    // Its queue on a PersistentVolumeClaim: safe to restart.
    Mta::deployment("postfix", json!({"app": "mta"}))
        .annotate(DELIVERY_ANNOTATION, "restart")
        .create(client, &ns.name)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    apply_incident(
        world,
        &ns.name,
        "outage",
        &spec(Mode::TempFail, "storage down"),
    );
    wait_for(incidents, "outage", "rolled out", |i| {
        applied_everywhere(i, 1)
    })
    .await;
    let (env, annotations) = template_leftovers(&deployments, "postfix").await;
    assert!(
        env.contains(&"MAIL_INCIDENT_MODE".to_string())
            && annotations.contains(&MODE_HASH_ANNOTATION.to_string()),
        "restart delivery set {env:?} and {annotations:?}"
    );

    // HardReject without acknowledgeBounces: the 1.20 server does not enforce the CEL rule
    // that refuses it; the controller does.
    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!("mode: HardReject\nreason: INC-8 escalated\n{TARGETS}"),
    );
    wait_for(incidents, "outage", "Stalled for its invalid spec", |i| {
        observed(i)
            && condition(i, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "InvalidSpec")
    })
    .await;
    let (stalled_env, _) = template_leftovers(&deployments, "postfix").await;

    incidents
        .delete("outage", &DeleteParams::default())
        .await
        .expect("delete the incident");
    let deleted = Instant::now();
    let bound = Duration::from_secs(30);
    loop {
        let incident = incidents.get_opt("outage").await.expect("get incident");
        let (env, annotations) = template_leftovers(&deployments, "postfix").await;
        if incident.is_none() && env.is_empty() && annotations.is_empty() {
            eprintln!(
                "invalid then deleted: env vars ({} while Stalled) and annotations gone, \
                 incident gone, {:.1} s after the delete",
                stalled_env.len(),
                deleted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            deleted.elapsed() < bound,
            "{bound:?} after deleting the Stalled incident: {} env vars {env:?} and {} \
             template annotations {annotations:?} left on the pod template; {}{}\n\
             --- operator log ends:\n{}",
            env.len(),
            annotations.len(),
            incident
                .as_ref()
                .map_or("the incident is gone".into(), |i| format!(
                    "incident still there: {}",
                    describe(Some(i))
                )),
            incident.as_ref().map_or(String::new(), |i| format!(
                ", finalizers {:?}",
                i.finalizers()
            )),
            scene.operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A mode document of a past incident, as the operator writes it.
fn leftover_document(incident: &str) -> ModeDocument {
    ModeDocument {
        api_version: MODE_DOCUMENT_VERSION.into(),
        kind: MODE_DOCUMENT_KIND.into(),
        rules: vec![Rule {
            mode: Mode::HardReject,
            reply: DocumentReply {
                code: 550,
                enhanced_code: "5.3.2".into(),
                text: "Mailbox storage unavailable".into(),
            },
            recipient_domains: None,
            incident: DocumentIncident {
                name: incident.into(),
                uid: "00000000-0000-0000-0000-000000000000".into(),
                reason: "INC-0 long over".into(),
            },
        }],
        queue: DocumentQueue {
            lifetime: "5d".into(),
            bounce_lifetime: "5d".into(),
        },
        release: DocumentRelease { concurrency: 4 },
        mta: None,
    }
}

/// Plants a mode document and its report for `Deployment/workload` by server-side apply
/// under the operator's field manager, built as the operator builds them. The document has
/// no owner: its incident is long gone, so there is nothing for the garbage collector to
/// follow.
async fn plant_document(config_maps: &Api<ConfigMap>, workload: &str) {
    let document = leftover_document("long-gone");
    let target = TargetRef::parse(&format!("Deployment/{workload}")).expect("a target");
    let force = PatchParams::apply(FIELD_MANAGER).force();
    let stored = config_maps
        .patch(
            &document_name("Deployment", workload),
            &force,
            &Patch::Apply(document_object(&target, &document, &[])),
        )
        .await
        .expect("plant a mode document");
    let mut report = report_object(&target, stored.metadata.uid.clone());
    report["data"] = json!({
        format!("{workload}-5d8f7c-x2x9q"): json!({"hash": document.hash()}).to_string()
    });
    config_maps
        .patch(
            &report_name(&stored.name_any()),
            &force,
            &Patch::Apply(report),
        )
        .await
        .expect("plant a report");
}

#[tokio::test]
async fn leftovers_planted_while_the_operator_is_down_are_swept_at_start() {
    let world = World::get();
    let ns = TestNamespace::new(world, "sweep");
    let client = world.admin().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    Mta::deployment("postfix", json!({"app": "mta"}))
        .create(&client, &ns.name)
        .await;
    Mta::deployment("edge", json!({"app": "mta"}))
        .annotate(DELIVERY_ANNOTATION, "restart")
        .create(&client, &ns.name)
        .await;

    // No operator, no incident: what a crash between writes, or an incident deleted with
    // its finalizer removed by hand, leaves behind. One document for a workload that
    // exists (its agents would keep applying HardReject), one for a workload gone.
    plant_document(&config_maps, "postfix").await;
    plant_document(&config_maps, "retired").await;
    let document = leftover_document("long-gone");
    let env: Vec<_> = document
        .env()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    deployments
        .patch(
            "edge",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "edge"},
                "spec": {"template": {
                    "metadata": {"annotations": {
                        MODE_HASH_ANNOTATION: document.hash(),
                        INCIDENT_ANNOTATION: document.incident_names(),
                    }},
                    "spec": {"containers": [{"name": "postfix", "env": env}]},
                }},
            })),
        )
        .await
        .expect("plant restart env vars under the operator's field manager");
    let planted: Vec<String> = [
        document_name("Deployment", "postfix"),
        report_name(&document_name("Deployment", "postfix")),
        document_name("Deployment", "retired"),
        report_name(&document_name("Deployment", "retired")),
    ]
    .into();
    let left = || async {
        let mut left = Vec::new();
        for name in &planted {
            if config_maps.get_opt(name).await.expect("get").is_some() {
                left.push(name.clone());
            }
        }
        let (env, annotations) = template_leftovers(&deployments, "edge").await;
        (left, env, annotations)
    };
    let (objects, env, annotations) = left().await;
    assert_eq!(
        (objects.len(), env.len(), annotations.len()),
        (4, 8, 2),
        "planted: {objects:?} {env:?} {annotations:?}"
    );

    let operator = Operator::start(world, &ns.name).await;
    let started = Instant::now();
    let bound = Duration::from_secs(30);
    loop {
        let (objects, env, annotations) = left().await;
        if objects.is_empty() && env.is_empty() && annotations.is_empty() {
            eprintln!(
                "leftovers swept {:.1} s after the operator started",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            started.elapsed() < bound,
            "{bound:?} after the operator started, leftovers remain: {} of 4 ConfigMaps \
             {objects:?}, {} env vars {env:?} and {} template annotations {annotations:?} on \
             Deployment/edge\n--- operator log ends:\n{}",
            objects.len(),
            env.len(),
            annotations.len(),
            operator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
