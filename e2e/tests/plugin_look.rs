//! `kubectl mail-incident` as a person sees it: status, history, completion, in a terminal.
//!
//! A real Postfix and its agent hold mail for an AcceptAndQueue incident while the store
//! is broken; `status` shows the mode, the pod applied and the queue, in a table (also
//! inside tmux, aligned and coloured, and `--watch` redrawn in place) and in JSON; after
//! the resolve it shows the release and normal service; `history` the transitions and
//! events in order. Tab completes in bash, zsh and fish with the scripts the plugin
//! prints, and the kubectl completion shim answers subcommands and incident names from
//! the API.

use crate::{
    plugin::{PLUGIN, plugin_as, plugin_ok},
    terminal::Tmux,
};
use k8s_openapi::jiff::Timestamp;
use mail_incident_e2e_support::{
    fakes::{FakeAgents, FakeKubelet},
    mta::{maildir_count, run},
    postfix::PostfixWithAgent,
    support::{Mta, Queue, apply_incident, ready_because, summary, wait_for},
    world::Scene,
};
use serde_json::json;
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// Asserts that every cell of `row` starts at the column of its header (`header` is the
/// table's header line): the table is aligned as kubectl aligns its own.
fn assert_aligned(header: &str, row: &str) {
    let mut starts = vec![];
    let mut previous = ' ';
    for (at, c) in header.char_indices() {
        if c != ' ' && previous == ' ' && (at == 0 || header[..at].ends_with("   ")) {
            starts.push(at);
        }
        previous = c;
    }
    let cells: Vec<&str> = row.split("   ").filter(|c| !c.trim().is_empty()).collect();
    let mut row_starts = vec![];
    let mut from = 0;
    for cell in &cells {
        let cell = cell.trim();
        let at = from + row[from..].find(cell).unwrap();
        row_starts.push(at);
        from = at + cell.len();
    }
    assert_eq!(row_starts, starts, "columns misaligned:\n{header}\n{row}");
}

/// Asserts that a `--watch` frame on a 10-row screen starts at the top with the first
/// incident's line, shows 9 rows at most (the last saying what is left out) and that its
/// wide lines were cut at the edge.
fn assert_cut_to_the_screen(screen: &str) {
    let lines: Vec<&str> = screen.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("Incident "), "{screen}");
    assert!(lines.len() <= 9, "{screen}");
    assert!(
        lines.last().unwrap().contains("more line(s) below"),
        "{screen}"
    );
    assert_eq!(screen.matches("WORKLOAD ").count(), 1, "{screen}");
    assert!(lines.iter().any(|l| l.ends_with('…')), "{screen}");
}

/// The status of `name` in JSON, as the plugin prints it.
fn status_json(scene: &Scene, name: &str) -> serde_json::Value {
    let text = plugin_ok(
        scene.world,
        &["status", name, "-n", &scene.ns.name, "-o", "json"],
    );
    serde_json::from_str(&text).expect("status -o json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_history_and_the_terminal_through_a_hold_and_its_release() {
    let scene = Scene::start("pl-look").await;
    let ns = scene.ns.name.clone();
    let mta = PostfixWithAgent::start(&scene, "pl").await;
    let postfix = &mta.postfix;
    let store = postfix.mailbox().parent().unwrap().to_path_buf();

    // The store breaks; the incident holds the mail.
    run(Command::new("chmod").arg("000").arg(&store));
    let spec = "mode: AcceptAndQueue\nreason: INC-9 mailbox storage down\n\
                targets: {matchLabels: {app.kubernetes.io/component: mta}}\nduration: 2h";
    apply_incident(scene.world, &ns, "outage", spec);
    wait_for(
        &scene.incidents,
        "outage",
        "applied",
        ready_because("Applied"),
    )
    .await;
    const HELD: u64 = 3;
    for m in 1..=HELD {
        let answer = postfix.smtp.send(&format!("held {m}"));
        assert!(answer.starts_with("250"), "{answer}");
    }
    // The agent measures its queue every second; the plugin shows the figures reported.
    let deadline = Instant::now() + Duration::from_secs(30);
    let json = loop {
        let json = status_json(&scene, "outage");
        if json["items"][0]["targets"][0]["queuedMessages"].as_u64() == Some(HELD) {
            break json;
        }
        assert!(
            Instant::now() < deadline,
            "no queue of {HELD} reported: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("$ kubectl mail-incident status outage -o json\n{json:#}");
    let target = &json["items"][0]["targets"][0];
    assert_eq!(json["kind"], "MailIncidentStatusList");
    assert_eq!(target["workload"], "Deployment/postfix-inbound");
    assert_eq!(target["mode"], "AcceptAndQueue");
    assert_eq!(target["from"], "outage");
    assert_eq!(
        (target["podsApplied"].as_u64(), target["podsTotal"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(target["oldestMessageAgeSeconds"].as_u64().is_some());
    assert_eq!(target["release"]["state"], "holding");
    assert_eq!(target["escalated"], false);

    let table = plugin_ok(scene.world, &["status", "outage", "-n", &ns]);
    eprintln!("$ kubectl mail-incident status outage\n{table}");
    assert!(!table.contains('\x1b'), "colour in a pipe: {table:?}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "Incident {ns}/outage: AcceptAndQueue, 1/1 targets applied".replace("{ns}", &ns)
    );
    assert!(lines[1].starts_with("WORKLOAD "), "{table}");
    let row = lines[2];
    for cell in [
        "Deployment/postfix-inbound",
        "AcceptAndQueue",
        "outage",
        "1/1",
        " 3 ",
        "holding",
    ] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }
    assert_aligned(lines[1], row);
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["Ready", "True", "Applied"])),
        "{table}"
    );

    // The shim answers `kubectl mail-incident status <TAB>` with the incident's name.
    let shim = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugins/kubectl_complete-mail_incident"
    );
    let plugin_dir = Path::new(PLUGIN).parent().unwrap();
    let completed = run(Command::new(shim)
        .args(["--kubeconfig"])
        .arg(&scene.world.kubeconfig)
        .args(["-n", &ns, "status", "o"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin_dir.display(),
                std::env::var("PATH").unwrap()
            ),
        ));
    eprintln!("$ kubectl_complete-mail_incident -n {ns} status o\n{completed}");
    assert_eq!(completed, "outage\n:4\n");

    // In a terminal: the table aligned and coloured, then --watch redrawn in place.
    let tmux = Tmux::shell("look", (200, 50));
    let kubeconfig = scene.world.kubeconfig.display().to_string();
    tmux.type_line(&format!(
        "kubectl-mail_incident --kubeconfig {kubeconfig} -n {ns} status outage"
    ));
    let screen = tmux
        .wait_for_screen("the status table", |s| {
            s.contains("Problems") || s.contains("Reconciling")
        })
        .await;
    let screen_lines: Vec<&str> = screen.lines().collect();
    let header = screen_lines
        .iter()
        .position(|l| l.starts_with("WORKLOAD "))
        .unwrap();
    assert_aligned(screen_lines[header], screen_lines[header + 1]);
    let coloured = tmux.screen(true);
    assert!(
        coloured.contains("\x1b[32m1/1"),
        "no green 1/1 on the terminal:\n{coloured:?}"
    );
    eprintln!("--- tmux, status outage:\n{screen}");
    // The same command piped, in the same terminal: no colour.
    tmux.clear().await;
    tmux.type_line(&format!(
        "kubectl-mail_incident --kubeconfig {kubeconfig} -n {ns} status outage | cat"
    ));
    tmux.wait_for_screen("the piped status", |s| s.contains("Stalled"))
        .await;
    let piped = tmux.screen(true);
    assert!(
        !piped.contains("\x1b[32m"),
        "colour through a pipe:\n{piped:?}"
    );
    tmux.clear().await;
    tmux.type_line(&format!(
        "kubectl-mail_incident --kubeconfig {kubeconfig} -n {ns} status outage --watch"
    ));
    tmux.wait_for_screen("the watch", |s| s.contains("holding"))
        .await;
    assert!(
        !tmux.cursor_shown(),
        "the cursor is hidden while frames are redrawn"
    );

    // The store is back, the incident resolved: the held mail is delivered and the
    // watch redraws the target as normal, in place.
    run(Command::new("chmod").arg("755").arg(&store));
    let resolved = format!("{spec}\nresolved: true");
    apply_incident(scene.world, &ns, "outage", &resolved);
    let mut releasing_seen = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let json = status_json(&scene, "outage");
        let target = &json["items"][0]["targets"][0];
        if target["release"]["state"] == "releasing" {
            releasing_seen.get_or_insert(target.clone());
        }
        if target["release"]["state"] == "normal"
            && maildir_count(&postfix.mailbox()) == HELD as usize
        {
            assert_eq!(target["mode"], "Normal");
            break;
        }
        assert!(Instant::now() < deadline, "never back to normal: {json:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("releasing seen in status during the release: {releasing_seen:?}");
    let watched = tmux
        .wait_for_screen("the watch redrawn as normal", |s| {
            s.contains(" normal") && s.contains("Normal")
        })
        .await;
    eprintln!("--- tmux, status outage --watch after the resolve:\n{watched}");
    assert_eq!(
        watched.matches("WORKLOAD ").count(),
        1,
        "a stale frame is left on the screen:\n{watched}"
    );
    assert_eq!(watched.matches("Incident ").count(), 1, "{watched}");
    assert!(!watched.contains("holding"), "{watched}");
    tmux.press("C-c");
    let after = tmux
        .wait_for_screen("the prompt after the watch", |s| {
            s.trim_end().ends_with(['$', '#'])
        })
        .await;
    assert!(
        tmux.cursor_shown(),
        "the cursor is shown again after the watch"
    );
    assert_eq!(after.matches("WORKLOAD ").count(), 1, "{after}");
    drop(tmux);

    let after_table = plugin_ok(scene.world, &["status", "outage", "-n", &ns]);
    eprintln!("$ kubectl mail-incident status outage (after the resolve)\n{after_table}");
    assert!(after_table.contains("Incident"), "{after_table}");

    // History: the transitions and events, oldest first.
    let history = plugin_ok(scene.world, &["history", "outage", "-n", &ns]);
    eprintln!("$ kubectl mail-incident history outage\n{history}");
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("TIME "), "{history}");
    // Transitions fill every column (events leave BY empty, which the check cannot place).
    for line in lines[1..].iter().filter(|l| l.contains(" Transition ")) {
        assert_aligned(lines[0], line);
    }
    assert!(
        lines.iter().any(|l| l.contains(" Transition   admin ")),
        "the author of each transition: {history}"
    );
    let json: serde_json::Value = serde_json::from_str(&plugin_ok(
        scene.world,
        &["history", "outage", "-n", &ns, "-o", "json"],
    ))
    .unwrap();
    let entries = json["entries"].as_array().unwrap();
    let times: Vec<Timestamp> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    let transitions: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "Transition")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        transitions.first().copied(),
        Some("nothing -> AcceptAndQueue"),
        "{history}"
    );
    assert_eq!(
        transitions.last().copied(),
        Some("AcceptAndQueue -> Normal"),
        "{history}"
    );
    assert!(
        entries.iter().any(|e| e["kind"] == "Normal"),
        "no event in the history: {history}"
    );
    // YAML says what JSON says.
    let yaml: serde_json::Value = serde_yaml::from_str(&plugin_ok(
        scene.world,
        &["history", "outage", "-n", &ns, "-o", "yaml"],
    ))
    .unwrap();
    assert_eq!(yaml["entries"].as_array().unwrap().len(), entries.len());
    assert_eq!(
        plugin_ok(scene.world, &["history", "outage", "-n", &ns, "-o", "name"]),
        "mailincident.mailops.dev/outage\n"
    );
    let missing = plugin_as(&scene.world.kubeconfig, &["history", "nothing", "-n", &ns]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no MailIncident \"nothing\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// Completion as a person types it: in bash, zsh and fish, each with the script the
/// plugin prints for it loaded, Tab completes a subcommand, a flag's fixed values and a
/// flag (in an empty directory, so that no file name is offered instead).
#[tokio::test]
async fn tab_completes_subcommands_flags_and_values_in_bash_zsh_and_fish() {
    let empty = tempfile::tempdir().unwrap();
    let shells = [
        (
            "bash",
            "bash --norc --noprofile",
            "source <(kubectl-mail_incident completion bash)",
        ),
        (
            "zsh",
            "zsh -f",
            "autoload -U compinit && compinit -u && source <(kubectl-mail_incident completion zsh)",
        ),
        (
            "fish",
            "fish --no-config",
            "kubectl-mail_incident completion fish | source",
        ),
    ];
    for (shell, command, load) in shells {
        let found = Command::new(shell).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{shell} is missing: install it with `apt-get install {shell}` (e2e/install-deps.sh does)"
        );
        let tmux = Tmux::start(&format!("tab-{shell}"), (120, 30), command, empty.path());
        tmux.type_line(load);
        tmux.type_text("kubectl-mail_incident esc");
        tmux.press("Tab");
        tmux.wait_for_screen(&format!("{shell}: the subcommand completed"), |s| {
            s.contains("kubectl-mail_incident escalate")
        })
        .await;
        tmux.type_text(" outage --to ");
        tmux.press("Tab");
        tmux.press("Tab");
        let values = tmux
            .wait_for_screen(&format!("{shell}: the values of --to"), |s| {
                s.contains("TempFail") && s.contains("HardReject")
            })
            .await;
        // The line erased by an editing key (not Ctrl-C, whose signal can reach the shell
        // after the next keys have).
        tmux.press("C-u");
        tmux.type_text("kubectl-mail_incident escalate outage --ack");
        tmux.press("Tab");
        let flag = tmux
            .wait_for_screen(&format!("{shell}: the flag completed"), |s| {
                s.contains("--acknowledge-bounces")
            })
            .await;
        eprintln!(
            "--- {shell}, after Tab:\n{}\n{}",
            values.trim_end(),
            flag.trim_end()
        );
        for screen in [&values, &flag] {
            assert!(
                !screen.contains("not found") && !screen.contains("rror"),
                "{shell}: {screen}"
            );
        }
    }
}

#[test]
fn the_bash_script_registers_and_the_kubectl_shim_completes_subcommands_and_flags() {
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({PLUGIN} completion bash) && complete -p kubectl-mail_incident"
        ))
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&bash.stdout);
    eprintln!(
        "$ source <(kubectl-mail_incident completion bash); complete -p kubectl-mail_incident\n{registered}"
    );
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    assert!(
        registered.trim_end().ends_with(" kubectl-mail_incident"),
        "{registered}"
    );
    assert!(registered.contains("-F _"), "{registered}");
    // kubectl runs the shim with the words typed after `kubectl mail-incident`.
    let shim = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugins/kubectl_complete-mail_incident"
    );
    let path = format!(
        "{}:{}",
        Path::new(PLUGIN).parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let complete = |args: &[&str]| run(Command::new(shim).args(args).env("PATH", &path));
    let subcommands = complete(&["e"]);
    eprintln!("$ kubectl_complete-mail_incident e\n{subcommands}");
    assert_eq!(
        subcommands,
        "extend\tMove an incident's end, within its 100-day bound\n\
         escalate\tSwitch an incident to a more severe mode\n:4\n"
    );
    assert_eq!(complete(&["-n", "mail", "status", "-o", "y"]), "yaml\n:4\n");
    assert_eq!(
        complete(&["list", "--no-h"]),
        "--no-headers\tPrint tables without their header line\n:4\n"
    );
    // No cluster to ask: no incident names, and no error either.
    let nothing = Command::new(shim)
        .args(["--kubeconfig", "/nonexistent", "history", ""])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(nothing.status.success());
    assert_eq!(String::from_utf8_lossy(&nothing.stdout), ":4\n");
    assert!(nothing.stderr.is_empty());
}

#[test]
fn the_krew_manifest_installs_the_plugin_on_each_platform_from_its_templated_release() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugins/mail-incident.yaml"
    ))
    .unwrap();
    let manifest: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "mail-incident");
    let spec = &manifest["spec"];
    assert_eq!(spec["version"], "v${VERSION}");
    for field in ["homepage", "shortDescription", "description"] {
        assert!(
            spec[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }
    let platforms = spec["platforms"].as_sequence().unwrap();
    let mut seen = vec![];
    for platform in platforms {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        seen.push(format!("{os}/{arch}"));
        let uri = platform["uri"].as_str().unwrap();
        assert!(
            uri.ends_with(&format!(
                "/v${{VERSION}}/kubectl-mail_incident_v${{VERSION}}_{os}_{arch}.tar.gz"
            )),
            "{uri}"
        );
        assert_eq!(
            platform["sha256"],
            format!("${{SHA256_{}_{}}}", os.to_uppercase(), arch.to_uppercase()),
            "each platform its own checksum"
        );
        assert_eq!(platform["bin"], "kubectl-mail_incident");
        let files: Vec<&str> = platform["files"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["from"].as_str().unwrap())
            .collect();
        assert_eq!(
            files,
            ["kubectl-mail_incident", "kubectl_complete-mail_incident"]
        );
    }
    assert_eq!(
        seen,
        ["linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64"]
    );
    // Rendered as a release renders it, it is a manifest with no placeholder left.
    let sha = "0".repeat(64);
    let mut rendered = text.replace("${VERSION}", "0.1.0");
    for platform in &seen {
        let (os, arch) = platform.split_once('/').unwrap();
        rendered = rendered.replace(
            &format!("${{SHA256_{}_{}}}", os.to_uppercase(), arch.to_uppercase()),
            &sha,
        );
    }
    let rendered_lines: Vec<&str> = rendered
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !rendered_lines.iter().any(|l| l.contains("${")),
        "{rendered}"
    );
    let release: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(release["spec"]["version"], "v0.1.0");
    assert_eq!(release["spec"]["platforms"][0]["sha256"], sha.as_str());
}

#[tokio::test]
async fn status_shows_each_target_of_several_incidents_and_what_each_answers() {
    let scene = Scene::start("pl-many").await;
    let ns = scene.ns.name.clone();
    let _kubelet = FakeKubelet::start(scene.client.clone(), &ns).await;
    let _agents = FakeAgents::start(scene.client.clone(), &ns).await;
    Mta::deployment("mta-a", json!({"app": "mta"}))
        .replicas(2)
        .create(&scene.client, &ns)
        .await;
    Mta::statefulset("mta-b", json!({"app": "mta"}))
        .create(&scene.client, &ns)
        .await;
    // Restart delivery with its queue on an emptyDir: the controller refuses it.
    Mta::deployment("mta-c", json!({"app": "mta"}))
        .annotate("mailops.dev/delivery", "restart")
        .queue(Queue::EmptyDir)
        .create(&scene.client, &ns)
        .await;
    apply_incident(
        scene.world,
        &ns,
        "outage",
        "mode: AcceptAndQueue\nreason: INC-10 storage slow\ntargets: {matchLabels: {app: mta}}\nduration: 2h",
    );
    apply_incident(
        scene.world,
        &ns,
        "pec",
        "mode: TempFail\nreason: INC-11 PEC storage down\ntargets: {matchLabels: {app: mta}}\n\
         scope: {recipientDomains: [pec.example.it, pec.example.com]}\nduration: 2h",
    );
    for name in ["outage", "pec"] {
        wait_for(&scene.incidents, name, "both targets applied", |i| {
            summary(i).is_some_and(|s| s.starts_with("2/"))
        })
        .await;
    }
    let all = plugin_ok(scene.world, &["status", "-n", &ns]);
    eprintln!("$ kubectl mail-incident status -n {ns}\n{all}");
    assert_eq!(all.matches("Incident ").count(), 2, "{all}");
    let outage = plugin_ok(scene.world, &["status", "outage", "-n", &ns, "-o", "wide"]);
    eprintln!("$ kubectl mail-incident status outage -o wide\n{outage}");
    let lines: Vec<&str> = outage.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("WORKLOAD "))
        .unwrap();
    let rows = &lines[header + 1..header + 4];
    for row in rows {
        assert_aligned(lines[header], row);
    }
    // The scoped TempFail is the most severe rule on every target it reaches.
    assert!(rows[0].starts_with("Deployment/mta-a "), "{outage}");
    for cell in [
        "TempFail (2 domains)",
        "pec ",
        "2/2",
        "holding",
        "pec,outage",
    ] {
        assert!(rows[0].contains(cell), "{cell} not in {}", rows[0]);
    }
    assert!(rows[1].starts_with("Deployment/mta-c "), "{outage}");
    assert!(rows[1].contains(" Normal "), "{}", rows[1]);
    assert!(rows[2].starts_with("StatefulSet/mta-b "), "{outage}");
    assert!(rows[2].contains("1/1"), "{}", rows[2]);
    assert!(outage.contains("Problems:"), "{outage}");
    assert!(outage.contains("Deployment/mta-c failed: "), "{outage}");
    assert!(
        outage.contains("follow incident pec for pec.example.com, pec.example.it"),
        "{outage}"
    );
    let everywhere = plugin_ok(scene.world, &["status", "-A", "-o", "name"]);
    assert!(
        everywhere.contains("mailincident.mailops.dev/outage\n"),
        "{everywhere}"
    );
    assert!(
        everywhere.contains("mailincident.mailops.dev/pec\n"),
        "{everywhere}"
    );

    let yaml: serde_yaml::Value = serde_yaml::from_str(&plugin_ok(
        scene.world,
        &["status", "pec", "-n", &ns, "-o", "yaml"],
    ))
    .unwrap();
    assert_eq!(yaml["items"][0]["targets"][0]["domains"], 2);
    assert_eq!(yaml["items"][0]["targets"][0]["podsTotal"], 2);
    let missing = plugin_as(&scene.world.kubeconfig, &["status", "pec", "-n", "default"]);
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains(&ns) && said.contains("add -n"), "{said}");

    // --watch in a terminal smaller than both incidents: each frame is cut to the screen,
    // its top kept, so it is redrawn in place rather than scrolled away.
    let small = Tmux::shell("small", (72, 10));
    small.type_line(&format!(
        "clear; kubectl-mail_incident --kubeconfig {} -n {ns} status --watch",
        scene.world.kubeconfig.display()
    ));
    let first = small
        .wait_for_screen("the watch, cut to the screen", |s| {
            s.contains("more line(s) below")
        })
        .await;
    eprintln!("--- tmux 72x10, status --watch:\n{first}");
    assert_cut_to_the_screen(&first);
    assert!(first.contains("TempFail"), "{first}");
    apply_incident(
        scene.world,
        &ns,
        "pec",
        "mode: TempFail\nreason: INC-11 PEC storage down\ntargets: {matchLabels: {app: mta}}\n\
         scope: {recipientDomains: [pec.example.it, pec.example.com]}\nduration: 2h\nresolved: true",
    );
    let redrawn = small
        .wait_for_screen("the watch redrawn without pec's TempFail", |s| {
            !s.contains("TempFail") && s.contains("more line(s) below")
        })
        .await;
    eprintln!("--- tmux 72x10, status --watch after pec is resolved:\n{redrawn}");
    assert_cut_to_the_screen(&redrawn);
    drop(small);
}
