//! What the operator writes is its own: hand edits, deletions and forgeries of mode
//! documents, reports and restart env vars are put back within seconds, with an event
//! naming who changed them; an invalid edit never outlives the incident's end; events
//! tell the current story.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap, events::v1::Event};
use kube::{Api, Client, ResourceExt, api::ListParams};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    support::{
        Mta, apply_incident, condition, eventually, eventually_within, ready_because, status,
        wait_for, wait_for_within,
    },
    world::{Scene, rand_suffix},
};
use mail_incident_operator::api::{
    EffectiveMode, MailIncident,
    mode_document::{
        MANAGED_BY_LABEL, MODE_DOCUMENT_KEY, MODE_HASH_ANNOTATION, document_name, report_name,
    },
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How long a hand edit may stand before the operator has put it back.
const RESTORE_BOUND: Duration = Duration::from_secs(10);

/// The ways the tests change what the operator owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tampering {
    /// mode.json rewritten to a HardReject with a 550, hash annotation left alone.
    ForgeContent,
    /// Only the hash annotation changed.
    ForgeAnnotation,
    /// Content and annotation changed consistently.
    ForgeBoth,
    /// The managed-by label taken off (the operator's watch no longer selects it).
    DropLabel,
    /// The owner references removed.
    DropOwners,
    DeleteDocument,
    DropReportOwner,
    DeleteReport,
    /// One of restart delivery's env vars removed from the pod template.
    DropEnvVar,
}

impl Tampering {
    const ALL: [Self; 9] = [
        Self::ForgeContent,
        Self::ForgeAnnotation,
        Self::ForgeBoth,
        Self::DropLabel,
        Self::DropOwners,
        Self::DeleteDocument,
        Self::DropReportOwner,
        Self::DeleteReport,
        Self::DropEnvVar,
    ];

    /// Whether a Restored event follows, and the field manager it names (a change that
    /// only removes fields leaves its manager owning none, so it is "another hand").
    fn event(self) -> Option<&'static str> {
        match self {
            Self::ForgeContent | Self::ForgeAnnotation | Self::ForgeBoth => {
                Some("field manager \"kubectl-patch\"")
            }
            Self::DropOwners => Some("another hand"),
            _ => None,
        }
    }
}

/// What the operator stored for the reload target, as a person reads it back.
#[derive(Debug, PartialEq)]
struct Stored {
    content: Option<String>,
    hash: Option<String>,
    labelled: bool,
    owners: usize,
    report_owned: bool,
}

async fn stored(config_maps: &Api<ConfigMap>, document: &str) -> Stored {
    let got = config_maps.get_opt(document).await.expect("get document");
    let report = config_maps
        .get_opt(&report_name(document))
        .await
        .expect("get report");
    let uid = got.as_ref().and_then(|d| d.metadata.uid.clone());
    Stored {
        content: got
            .as_ref()
            .and_then(|d| d.data.as_ref()?.get(MODE_DOCUMENT_KEY).cloned()),
        hash: got
            .as_ref()
            .and_then(|d| d.annotations().get(MODE_HASH_ANNOTATION).cloned()),
        labelled: got
            .as_ref()
            .is_some_and(|d| d.labels().contains_key(MANAGED_BY_LABEL)),
        owners: got.as_ref().map_or(0, |d| d.owner_references().len()),
        report_owned: report.is_some_and(|r| {
            r.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        }),
    }
}

async fn restart_env_count(deployments: &Api<Deployment>, name: &str) -> usize {
    let deployment = deployments.get(name).await.expect("get deployment");
    deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("MAIL_INCIDENT_"))
        .count()
}

/// Notes of the events of `reason` regarding `incident`, oldest first.
async fn event_notes(
    client: &Client,
    namespace: &str,
    incident: &str,
    reason: &str,
) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut listed: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(incident)
        })
        .collect();
    listed.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    listed.into_iter().filter_map(|e| e.note).collect()
}

/// A pseudo-random order and pause, from a seed the failure message names.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// A scene of its own with the Deployment `mx` (label group=mta) of `replicas` pods a fake
/// kubelet plays, and fake agents acknowledging every mode when `agents`.
struct MxScene {
    scene: Scene,
    _kubelet: FakeKubelet,
    _agents: Option<FakeAgents>,
}

impl MxScene {
    async fn start(prefix: &str, replicas: i32, agents: bool) -> Self {
        let scene = Scene::start(prefix).await;
        let (client, ns) = (&scene.client, &scene.ns.name);
        let kubelet = FakeKubelet::start(client.clone(), ns).await;
        let agents = match agents {
            true => Some(FakeAgents::start(client.clone(), ns).await),
            false => None,
        };
        Mta::deployment("mx", json!({"group": "mta"}))
            .replicas(replicas)
            .create(client, ns)
            .await;
        Self {
            scene,
            _kubelet: kubelet,
            _agents: agents,
        }
    }
}

#[tokio::test]
async fn hand_edits_of_what_the_operator_writes_are_put_back_and_named() {
    let mx = MxScene::start("owned", 2, true).await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &mx.scene;
    Mta::deployment("rx", json!({"group": "mta"}))
        .annotate("mailops.dev/delivery", "restart")
        .create(client, &ns.name)
        .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let document = document_name("Deployment", "mx");
    let seed = u64::from(rand_suffix());
    let mut dice = Dice(seed);
    let mut worst: BTreeMap<Tampering, Duration> = BTreeMap::new();
    // One round in each mode, every kind of tampering in a random order at random moments.
    const ROUNDS: [(&str, &str, &str); 3] = [
        ("AcceptAndQueue", "", "HardReject"),
        ("TempFail", "", "HardReject"),
        (
            "HardReject",
            "\nhardReject: {acknowledgeBounces: true}",
            "AcceptAndQueue",
        ),
    ];
    for (round, (mode, extra, forged_mode)) in ROUNDS.into_iter().enumerate() {
        apply_incident(
            world,
            &ns.name,
            "outage",
            &format!(
                "mode: {mode}\nreason: INC-18 storage down\ntargets: {{matchLabels: {{group: mta}}}}{extra}"
            ),
        );
        wait_for(incidents, "outage", &format!("applied in {mode}"), |i| {
            ready_because("Applied")(i)
                && mail_incident_e2e_support::support::summary(i) == Some("2/2")
                && status(i)
                    .effective_mode
                    .map(|m| format!("{m:?}"))
                    .as_deref()
                    == Some(mode)
        })
        .await;
        let planned = stored(&config_maps, &document).await;
        assert!(planned.content.is_some() && planned.labelled && planned.owners == 1);
        assert!(planned.report_owned);
        let planned_env = restart_env_count(&deployments, "rx").await;
        assert!(planned_env > 0);
        let forged = planned
            .content
            .as_deref()
            .unwrap()
            .replace(&format!("\"{mode}\""), &format!("\"{forged_mode}\""));
        let mut order = Tampering::ALL.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, dice.next(i as u64 + 1) as usize);
        }
        for tampering in order {
            tokio::time::sleep(Duration::from_millis(dice.next(500))).await;
            let ns = ns.name.as_str();
            let before = event_notes(client, ns, "outage", "Restored").await.len();
            let patch = |body: serde_json::Value, kind: &str| {
                world.kubectl_ok(&[
                    "patch",
                    "configmap",
                    kind,
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    &body.to_string(),
                ]);
            };
            match tampering {
                Tampering::ForgeContent => {
                    patch(json!({"data": {MODE_DOCUMENT_KEY: forged}}), &document);
                }
                Tampering::ForgeAnnotation => patch(
                    json!({"metadata": {"annotations": {MODE_HASH_ANNOTATION: "0123456789abcdef"}}}),
                    &document,
                ),
                Tampering::ForgeBoth => patch(
                    json!({"metadata": {"annotations": {MODE_HASH_ANNOTATION:
                        mail_incident_operator::api::mode_document::content_hash(&forged)}},
                           "data": {MODE_DOCUMENT_KEY: forged}}),
                    &document,
                ),
                Tampering::DropLabel => {
                    world.kubectl_ok(&[
                        "label",
                        "configmap",
                        &document,
                        "-n",
                        ns,
                        &format!("{MANAGED_BY_LABEL}-"),
                    ]);
                }
                Tampering::DropOwners => {
                    patch(json!({"metadata": {"ownerReferences": null}}), &document);
                }
                Tampering::DeleteDocument => {
                    world.kubectl_ok(&["delete", "configmap", &document, "-n", ns]);
                }
                Tampering::DropReportOwner => {
                    patch(
                        json!({"metadata": {"ownerReferences": null}}),
                        &report_name(&document),
                    );
                }
                Tampering::DeleteReport => {
                    world.kubectl_ok(&["delete", "configmap", &report_name(&document), "-n", ns]);
                }
                Tampering::DropEnvVar => {
                    world.kubectl_ok(&[
                        "patch",
                        "deployment",
                        "rx",
                        "-n",
                        ns,
                        "--type=json",
                        "-p",
                        r#"[{"op": "remove", "path": "/spec/template/spec/containers/0/env/0"}]"#,
                    ]);
                }
            }
            let changed = Instant::now();
            eventually_within(
                RESTORE_BOUND,
                &format!("round {round}: {tampering:?} put back (seed {seed})"),
                || async {
                    let now = stored(&config_maps, &document).await;
                    let env = restart_env_count(&deployments, "rx").await;
                    (now == planned && env == planned_env).then_some(())
                },
            )
            .await;
            let took = changed.elapsed();
            let slot = worst.entry(tampering).or_default();
            *slot = (*slot).max(took);
            if let Some(by) = tampering.event() {
                let note = eventually(&format!("a Restored event after {tampering:?}"), || async {
                    let notes = event_notes(client, ns, "outage", "Restored").await;
                    notes.get(before..)?.last().cloned()
                })
                .await;
                assert!(
                    note.contains(&format!("{document} was changed by {by}")),
                    "{tampering:?}: {note}"
                );
            }
        }
    }
    eprintln!("worst time to put back, over one round per mode (seed {seed}): {worst:?}");
    wait_for(incidents, "outage", "applied after the edits", |i| {
        ready_because("Applied")(i) && mail_incident_e2e_support::support::summary(i) == Some("2/2")
    })
    .await;
    let metrics =
        mail_incident_e2e_support::world::http_get(&format!("{}/metrics", mx.scene.operator.http))
            .await
            .expect("metrics")
            .1;
    assert!(
        metrics.contains("mail_incident_restored_objects_total{object=\"ModeDocument\"}"),
        "{metrics}"
    );

    // Rollouts leave no entries of departed pods behind in the report.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let report = report_name(&document);
    for round in 0..3 {
        let mx_pods = pods
            .list(&ListParams::default().labels("workload=mx"))
            .await
            .expect("list pods");
        let victim = mx_pods.items[0].name_any();
        world.kubectl_ok(&["delete", "pod", &victim, "-n", &ns.name, "--wait=false"]);
        eventually(
            &format!("round {round}: {victim}'s report entry pruned"),
            || async {
                let live: Vec<String> = pods
                    .list(&ListParams::default().labels("workload=mx"))
                    .await
                    .ok()?
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(ResourceExt::name_any)
                    .collect();
                let entries: Vec<String> = config_maps
                    .get(&report)
                    .await
                    .ok()?
                    .data
                    .unwrap_or_default()
                    .into_keys()
                    .collect();
                let mut live_sorted = live.clone();
                live_sorted.sort();
                (live.len() == 2 && entries == live_sorted && !entries.contains(&victim))
                    .then_some(())
            },
        )
        .await;
    }

    // A value of ours changed by another field manager is theirs now: never taken back by
    // force, but shown, naming them, until they give it up.
    let planned_env = restart_env_count(&deployments, "rx").await;
    world.kubectl_ok(&[
        "set",
        "env",
        "deployment/rx",
        "-n",
        &ns.name,
        "MAIL_INCIDENT_MODE=Normal",
    ]);
    let failed = wait_for(incidents, "outage", "failing on the conflict", |i| {
        status(i)
            .failed_targets
            .iter()
            .any(|f| f.reason.contains("kubectl-set"))
    })
    .await;
    assert_eq!(condition(&failed, "Ready").map(|c| c.0), Some("False"));
    world.kubectl_ok(&[
        "set",
        "env",
        "deployment/rx",
        "-n",
        &ns.name,
        "MAIL_INCIDENT_MODE-",
    ]);
    wait_for(
        incidents,
        "outage",
        "applied once the conflict is given up",
        |i| ready_because("Applied")(i) && status(i).failed_targets.is_empty(),
    )
    .await;
    assert_eq!(restart_env_count(&deployments, "rx").await, planned_env);

    // Once the incident has ended, a forged document is a leftover: removed at once.
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-18 over\ntargets: {matchLabels: {group: mta}}\nresolved: true",
    );
    wait_for(incidents, "outage", "resolved", ready_because("Resolved")).await;
    let forged = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": document, "labels": {MANAGED_BY_LABEL: "mail-incident-operator",
                     "mailops.dev/role": "mode-document"},
                     "annotations": {"mailops.dev/workload": "Deployment/mx"}},
        "data": {MODE_DOCUMENT_KEY: "{\"mode\": \"HardReject\"}"},
    });
    mail_incident_e2e_support::support::apply_yaml(world, &ns.name, &forged.to_string());
    let planted = Instant::now();
    eventually_within(RESTORE_BOUND, "the forged document removed", || async {
        config_maps
            .get_opt(&document)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!(
        "a document forged after the end removed in {:.2} s",
        planted.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn an_invalid_edit_does_not_keep_targets_past_the_incidents_end() {
    let mx = MxScene::start("invalid-expiry", 1, true).await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &mx.scene;
    let targets = "targets: {matchLabels: {group: mta}}";
    apply_incident(
        world,
        &ns.name,
        "window",
        &format!("mode: TempFail\nreason: INC-18\n{targets}\nduration: 25s"),
    );
    let applied = wait_for(incidents, "window", "applied", ready_because("Applied")).await;
    let expires_at = status(&applied).expires_at.clone().expect("an end").0;
    // HardReject without acknowledgement: valid for the API server, invalid for the
    // controller, which keeps the last valid mode meanwhile.
    apply_incident(
        world,
        &ns.name,
        "window",
        &format!("mode: HardReject\nreason: INC-18\n{targets}\nduration: 25s"),
    );
    wait_for(incidents, "window", "stalled", |i| {
        condition(i, "Stalled").map(|c| c.1) == Some("InvalidSpec")
    })
    .await;
    assert!(
        mail_incident_e2e_support::support::mode_document(client, &ns.name, "Deployment", "mx")
            .await
            .is_some(),
        "the last valid mode stays until the end"
    );
    let ended = wait_for_within(Duration::from_secs(60), incidents, "window", "ended", |i| {
        status(i).effective_mode == Some(EffectiveMode::Normal)
    })
    .await;
    let document_gone = eventually("the mode document removed", || async {
        mail_incident_e2e_support::support::mode_document(client, &ns.name, "Deployment", "mx")
            .await
            .is_none()
            .then(k8s_openapi::jiff::Timestamp::now)
    })
    .await;
    let late = document_gone.duration_since(expires_at);
    // The controller's clock is rounded to the second: the end may come up to 0.5 s early.
    eprintln!(
        "targets restored {:+.3} s from the last valid end",
        late.as_secs_f64()
    );
    assert!(
        late < k8s_openapi::jiff::SignedDuration::from_secs(5),
        "restored {late:?} after expiresAt"
    );
    let last = status(&ended).history.last().expect("a transition");
    assert!(
        last.reason.contains("expired at") && last.reason.contains("spec invalid"),
        "{}",
        last.reason
    );
}

#[tokio::test]
async fn events_tell_each_transition_with_its_own_message_within_the_api_limit() {
    let mx = MxScene::start("events", 1, false).await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &mx.scene;
    let modes = ["TempFail", "AcceptAndQueue"];
    const TRANSITIONS: usize = 50;
    for n in 0..TRANSITIONS {
        let mode = modes[n % 2];
        apply_incident(
            world,
            &ns.name,
            "flip",
            &format!("mode: {mode}\nreason: change {n}\ntargets: {{matchLabels: {{group: mta}}}}"),
        );
        wait_for(
            incidents,
            "flip",
            &format!("in {mode} ({n})"),
            |i: &MailIncident| {
                i.status.as_ref().is_some_and(|s| {
                    s.effective_mode.map(|m| format!("{m:?}")).as_deref() == Some(mode)
                        && s.history
                            .last()
                            .is_some_and(|t| t.reason == format!("change {n}"))
                })
            },
        )
        .await;
    }
    let notes = eventually("every ModeChanged event", || async {
        let notes = event_notes(client, &ns.name, "flip", "ModeChanged").await;
        (notes.len() >= TRANSITIONS).then_some(notes)
    })
    .await;
    assert_eq!(notes[0], "(none) -> TempFail by admin: change 0");
    let last = notes.last().unwrap();
    assert_eq!(
        last,
        &format!(
            "TempFail -> AcceptAndQueue by admin: change {}",
            TRANSITIONS - 1
        )
    );
    let described = world.kubectl_ok(&["describe", "mailincident", "flip", "-n", &ns.name]);
    assert!(described.contains(last.as_str()), "{described}");

    // The longest reason the API allows makes notes over the API's limit: cut, not lost.
    let reason = "é".repeat(512);
    apply_incident(
        world,
        &ns.name,
        "flip",
        &format!("mode: TempFail\nreason: {reason}\ntargets: {{matchLabels: {{group: mta}}}}"),
    );
    let accepted = eventually("a long Accepted event", || async {
        event_notes(client, &ns.name, "flip", "Accepted")
            .await
            .into_iter()
            .find(|note| note.contains("éé"))
    })
    .await;
    assert!(
        accepted.len() <= 1024 && accepted.ends_with("..."),
        "{} bytes",
        accepted.len()
    );
    let changed = eventually("a long ModeChanged event", || async {
        event_notes(client, &ns.name, "flip", "ModeChanged")
            .await
            .into_iter()
            .find(|note| note.contains("éé"))
    })
    .await;
    assert!(
        changed.starts_with("AcceptAndQueue -> TempFail by admin: éé"),
        "{changed}"
    );
    assert!(changed.len() <= 1024);
}

#[tokio::test]
async fn a_deleted_crd_makes_the_operator_unready_saying_why_until_it_is_back() {
    // Declared first, dropped last: everything else goes before its control plane.
    let plane = mail_incident_e2e_support::world::PrivateControlPlane::start(43443).await;
    let world = &plane.world;
    let ns = mail_incident_e2e_support::world::TestNamespace::new(world, "crd-gone");
    let operator = mail_incident_e2e_support::world::Operator::start(world, &ns.name).await;
    let readyz = format!("{}/readyz", operator.http);
    let crd = "mailincidents.mailops.dev";
    world.kubectl_ok(&["delete", "crd", crd]);
    let unready = Instant::now();
    eventually_within(Duration::from_secs(40), "/readyz 503", || async {
        let (code, _) = mail_incident_e2e_support::world::http_get(&readyz).await?;
        (code == 503).then_some(())
    })
    .await;
    eprintln!(
        "unready {:.1} s after the CRD was deleted",
        unready.elapsed().as_secs_f64()
    );
    let log = operator.log();
    assert!(
        log.contains("not ready: watches keep failing") && log.contains("MailIncident"),
        "{}",
        operator.log_tail(20)
    );
    // Kubernetes 1.20's kubectl does not know x-kubernetes-validations (1.25+), which
    // its API server drops.
    world.kubectl_ok(&[
        "apply",
        "--validate=false",
        "-f",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/mailincidents.mailops.dev.yaml"
        ),
    ]);
    eventually_within(Duration::from_secs(40), "/readyz 200 again", || async {
        let (code, _) = mail_incident_e2e_support::world::http_get(&readyz).await?;
        (code == 200).then_some(())
    })
    .await;
    assert!(operator.log().contains("ready: every watch works again"));
}

#[tokio::test]
async fn an_agent_reporting_drift_holds_its_target_back_and_is_announced_once() {
    let mx = MxScene::start("drift", 1, false).await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &mx.scene;
    apply_incident(
        world,
        &ns.name,
        "outage",
        "mode: TempFail\nreason: INC-18\ntargets: {matchLabels: {group: mta}}",
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let document = document_name("Deployment", "mx");
    let (pod, hash) = eventually("a pod and its mode document", || async {
        let pod = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .first()?
            .name_any();
        let stored = config_maps.get_opt(&document).await.ok()??;
        Some((pod, stored.annotations().get(MODE_HASH_ANNOTATION)?.clone()))
    })
    .await;
    // This pod's agent, played by hand: applied, then drifted, then put back.
    let report = |entry: serde_json::Value| {
        world.kubectl_ok(&[
            "patch",
            "configmap",
            &report_name(&document),
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            &json!({"data": {&pod: entry.to_string()}}).to_string(),
        ]);
    };
    let what = "Exim mode file is normal, want tempfail";
    report(json!({"hash": hash}));
    wait_for(incidents, "outage", "applied", ready_because("Applied")).await;
    report(json!({"hash": hash, "drift": {"count": 1, "what": what, "since": 1_700_000_000}}));
    let held = wait_for(incidents, "outage", "held back by the drift", |i| {
        mail_incident_e2e_support::support::summary(i) == Some("0/1")
    })
    .await;
    assert_eq!(condition(&held, "Ready").map(|c| c.0), Some("False"));
    let note = eventually("an MtaDrifted event", || async {
        event_notes(client, &ns.name, "outage", "MtaDrifted")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert!(
        note.contains(&pod) && note.contains(what) && note.contains("is putting it back"),
        "{note}"
    );
    report(json!({"hash": hash, "drift": {"count": 1, "what": what}}));
    wait_for(
        incidents,
        "outage",
        "applied again",
        ready_because("Applied"),
    )
    .await;
    report(json!({"hash": hash, "drift": {"count": 2, "what": what}}));
    eventually("a second MtaDrifted event", || async {
        let notes = event_notes(client, &ns.name, "outage", "MtaDrifted").await;
        (notes.len() == 2 && notes[1].contains("put it back (drift 2")).then_some(())
    })
    .await;
}
