//! Incidents declared ahead of time (`spec.startsAt`): nothing reaches an MTA before the
//! start, the mode does at the start with no edit and no polling (the controller wakes
//! for it), and a start that fell while no replica led is applied by the next leader at
//! once.

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{Api, api::ListParams};
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    mta::SmtpSession,
    postfix::PostfixWithAgent,
    support::{Mta, apply_incident, ready_because, status, wait_for},
    world::{Operator, Scene},
};
use mail_incident_operator::api::{
    EffectiveMode,
    mode_document::{ROLE_DOCUMENT, ROLE_LABEL},
};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A whole second at least `ahead` from now, as the Unix second and as the wall clock.
fn start_in(ahead: Duration) -> (Timestamp, SystemTime) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let second = (now + ahead).as_secs() + 1;
    (
        Timestamp::from_second(second as i64).unwrap(),
        UNIX_EPOCH + Duration::from_secs(second),
    )
}

/// Signed seconds from `start` to `at` (negative: before the start).
fn seconds_after(start: SystemTime, at: SystemTime) -> f64 {
    match at.duration_since(start) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

async fn mode_documents(api: &Api<ConfigMap>) -> usize {
    api.list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_DOCUMENT}")))
        .await
        .expect("list mode documents")
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_window_changes_the_rcpt_answer_at_its_start_and_not_before() {
    let scene = Scene::start("window").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let mta = PostfixWithAgent::start(&scene, "window").await;
    let postfix = &mta.postfix;
    let (starts_at, start) = start_in(Duration::from_secs(8));
    apply_incident(
        world,
        &ns.name,
        "window",
        &format!(
            "mode: TempFail\nreason: CHG-311 storage firmware upgrade\n\
             targets: {{matchLabels: {{app.kubernetes.io/component: mta}}}}\n\
             startsAt: '{starts_at}'\nduration: 10m"
        ),
    );
    wait_for(incidents, "window", "scheduled", ready_because("Scheduled")).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    // Ask Postfix over and over, each time in a fresh session, until it refuses. Every
    // answer given wholly before the start must be 250; the delay is from the start to
    // the first 452 received.
    let mut answered_before = 0;
    let mut first_answered: Option<SystemTime> = None;
    let (refused_at, refusal) = loop {
        let address = postfix.smtp.address;
        let recipient = postfix.smtp.recipient;
        let (sent_at, answer, answered_at) = tokio::task::spawn_blocking(move || {
            let mut session = SmtpSession::open(address);
            session.command("EHLO client.e2e.test");
            session.command("MAIL FROM:<sender@example.net>");
            let sent_at = SystemTime::now();
            let answer = session.command(&format!("RCPT TO:<{recipient}>"));
            (sent_at, answer, SystemTime::now())
        })
        .await
        .expect("SMTP task");
        if answer.starts_with("452 4.3.1 ") {
            assert!(
                answered_at >= start,
                "refused {:.3} s before the start",
                -seconds_after(start, answered_at)
            );
            break (answered_at, answer);
        }
        assert!(
            answer.starts_with("250"),
            "before the window Postfix accepts: {answer}"
        );
        if answered_at < start {
            answered_before += 1;
            first_answered.get_or_insert(answered_at);
        }
        assert!(
            seconds_after(start, sent_at) < 30.0,
            "no 452 within 30 s of the start; last answer {answer}"
        );
        if seconds_after(start, answered_at) < -1.0 && answered_before % 20 == 0 {
            assert_eq!(
                mode_documents(&config_maps).await,
                0,
                "a mode document before the start"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delay = seconds_after(start, refused_at);
    eprintln!(
        "startsAt {starts_at}: {answered_before} RCPTs answered 250 before it; the first 452 \
         was received {delay:.3} s after startsAt: {refusal}"
    );
    // Enough answers, over long enough, to say the window did not start early; how many
    // fit depends on the machine's load, so both are modest.
    let asked_for = first_answered.map_or(0.0, |first| -seconds_after(start, first));
    assert!(
        answered_before >= 20 && asked_for >= 2.0,
        "asked {answered_before} times over {asked_for:.1} s before the start"
    );
    assert!(delay < 5.0, "the start took {delay:.3} s to reach the wire");
    let started = wait_for(incidents, "window", "applied", ready_because("Applied")).await;
    assert_eq!(
        status(&started).effective_mode,
        Some(EffectiveMode::TempFail)
    );
}

#[tokio::test]
async fn a_start_that_fell_while_no_replica_led_is_applied_at_once_by_the_next_leader() {
    let mut scene = Scene::start("window-failover").await;
    let ns = scene.ns.name.clone();
    let client = scene.client.clone();
    let _kubelet = FakeKubelet::start(client.clone(), &ns).await;
    let _agents = FakeAgents::start(client.clone(), &ns).await;
    for name in ["mta-a", "mta-b", "mta-c"] {
        Mta::deployment(name, json!({"app": "mta"}))
            .create(&client, &ns)
            .await;
    }
    let (starts_at, start) = start_in(Duration::from_secs(4));
    apply_incident(
        scene.world,
        &ns,
        "window",
        &format!(
            "mode: TempFail\nreason: CHG-312\ntargets: {{matchLabels: {{app: mta}}}}\nstartsAt: '{starts_at}'"
        ),
    );
    wait_for(
        &scene.incidents,
        "window",
        "scheduled",
        ready_because("Scheduled"),
    )
    .await;
    // No replica runs across the start.
    scene.operator.kill();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    while SystemTime::now() < start + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mode_documents(&config_maps).await, 0, "nobody led");
    let restarted = Instant::now();
    scene.operator = Operator::start(scene.world, &ns).await;
    wait_for(
        &scene.incidents,
        "window",
        "applied",
        ready_because("Applied"),
    )
    .await;
    assert_eq!(mode_documents(&config_maps).await, 3);
    eprintln!(
        "the start fell {:.1} s before a replica led again; applied {:.2} s after it started",
        seconds_after(start, SystemTime::now()) - restarted.elapsed().as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    assert!(restarted.elapsed() < Duration::from_secs(20));
}
