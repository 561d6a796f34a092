//! Any other MTA (`agent --mta generic`): the agent writes the state to a file and runs
//! the site's hook, which here keeps a log of what it was told.

use mail_incident_e2e_support::{
    mta::{AgentProcess, mta_with_agent_rbac},
    support::{apply_incident, eventually, ready_because, summary, wait_for},
    world::Scene,
};
use std::ffi::OsString;

#[tokio::test]
async fn a_generic_mta_gets_the_state_in_a_file_and_its_hook_run() {
    let scene = Scene::start("generic").await;
    let Scene {
        world,
        ns,
        client,
        incidents,
        ..
    } = &scene;
    let (_kubelet, pod) = mta_with_agent_rbac(world, client, &ns.name).await;
    let dir = tempfile::tempdir().unwrap();
    let mode_file = dir.path().join("mode.json");
    let hook_log = dir.path().join("hook.log");
    let hook = format!(
        "echo \"$MAIL_INCIDENT_STATE $(cat \"$MAIL_INCIDENT_FILE\" | tr -d ' \\n')\" >> {}",
        hook_log.display()
    );
    let args: Vec<OsString> = vec![
        "--mta".into(),
        "generic".into(),
        "--mode-file".into(),
        mode_file.into(),
        "--hook".into(),
        hook.into(),
    ];
    let _agent = AgentProcess::start(world, &ns.name, &pod, &args).await;
    let hook_lines = || std::fs::read_to_string(&hook_log).unwrap_or_default();
    let targets = "targets: {matchLabels: {app.kubernetes.io/component: mta}}";

    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!("mode: TempFail\nreason: INC-60\n{targets}"),
    );
    wait_for(incidents, "outage", "applied by the hook", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    let told = hook_lines();
    let last = told.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("TempFail {\"state\":\"Incident\",\"document\":{")
            && last.contains("\"code\":452"),
        "{told}"
    );

    apply_incident(
        world,
        &ns.name,
        "outage",
        &format!("mode: TempFail\nreason: INC-60\n{targets}\nresolved: true"),
    );
    wait_for(incidents, "outage", "resolved", ready_because("Resolved")).await;
    // No queue to measure: the release ends at once and the MTA is told Normal.
    let told = eventually("the hook told Normal", || async {
        let told = hook_lines();
        told.lines()
            .last()
            .is_some_and(|l| l == "Normal {\"state\":\"Normal\"}")
            .then_some(told)
    })
    .await;
    assert!(
        told.contains("\nReleasing {\"state\":\"Releasing\",\"release\":{\"concurrency\":4"),
        "{told}"
    );

    // Scoped: the rules carry their domains, and the release names the held ones.
    let scoped = format!(
        "mode: AcceptAndQueue\nreason: INC-61\n{targets}\nscope: {{recipientDomains: [pec.e2e.test, '*.storage.e2e.test']}}"
    );
    apply_incident(world, &ns.name, "scoped", &scoped);
    wait_for(incidents, "scoped", "applied by the hook", |i| {
        ready_because("Applied")(i) && summary(i) == Some("1/1")
    })
    .await;
    let last = hook_lines().lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("AcceptAndQueue ")
            && last.contains("\"recipientDomains\":[\"pec.e2e.test\",\"*.storage.e2e.test\"]"),
        "{last}"
    );
    apply_incident(
        world,
        &ns.name,
        "scoped",
        &format!("{scoped}\nresolved: true"),
    );
    let told = eventually("the hook told Normal again", || async {
        let told = hook_lines();
        told.ends_with("Normal {\"state\":\"Normal\"}\n")
            .then_some(told)
    })
    .await;
    assert!(
        told.contains("\"heldDomains\":[\"pec.e2e.test\",\"*.storage.e2e.test\"]"),
        "{told}"
    );
}
