//! `kubectl mail-incident` run as a user runs it: the binary, with the world's
//! kubeconfig (or another user's), its output as printed when piped.

use mail_incident_e2e_support::{
    support::{apply_incident, wait_for},
    world::{Scene, World},
};
use std::process::{Command, Output};

/// The plugin binary, as kubectl would find it on the PATH.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-mail_incident");

/// Runs the plugin with `kubeconfig`; its output whatever the exit status.
pub fn plugin_as(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new(PLUGIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("the plugin runs")
}

/// Runs the plugin as the cluster administrator; panics unless it succeeds; its stdout.
pub fn plugin_ok(world: &World, args: &[&str]) -> String {
    let output = plugin_as(&world.kubeconfig, args);
    assert!(
        output.status.success(),
        "kubectl mail-incident {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the plugin prints UTF-8")
}

#[tokio::test]
async fn list_shows_incidents_as_kubectl_does_in_every_output() {
    let scene = Scene::start("plugin-list").await;
    let Scene {
        world,
        ns,
        incidents,
        ..
    } = &scene;
    let spec = "mode: TempFail\nreason: INC-3 storage down\ntargets: {matchLabels: {app: none}}\n\
                scope: {recipientDomains: [pec.example.it]}\nduration: 2h";
    apply_incident(world, &ns.name, "outage", spec);
    wait_for(incidents, "outage", "seen", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some())
    })
    .await;
    let table = plugin_ok(world, &["list", "-n", &ns.name]);
    eprintln!("$ kubectl mail-incident list -n {}\n{table}", ns.name);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("NAME     MODE       SCOPE      READY   APPLIED   STARTS   EXPIRES"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("outage   TempFail   1 domain   False   0/0"),
        "{table}"
    );
    let wide = plugin_ok(
        world,
        &["list", "-n", &ns.name, "-o", "wide", "--no-headers"],
    );
    assert!(wide.trim_end().ends_with("INC-3 storage down"), "{wide}");
    assert_eq!(wide.lines().count(), 1);
    let everywhere = plugin_ok(world, &["list", "-A"]);
    assert!(everywhere.starts_with("NAMESPACE "), "{everywhere}");
    assert!(everywhere.contains(&ns.name));
    assert_eq!(
        plugin_ok(world, &["list", "-n", &ns.name, "-o", "name"]),
        "mailincident.mailops.dev/outage\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&plugin_ok(world, &["list", "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["metadata"]["name"], "outage");
    assert_eq!(json["items"][0]["status"]["scope"], "1 domain");
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&plugin_ok(world, &["list", "-n", &ns.name, "-o", "yaml"])).unwrap();
    assert_eq!(yaml["items"][0]["spec"]["mode"], "TempFail");
    // Nothing to list: said on stderr, nothing on stdout, success.
    let empty = plugin_as(&world.kubeconfig, &["list", "-n", "default"]);
    assert!(empty.status.success());
    assert!(empty.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No MailIncident in namespace default")
    );
}
