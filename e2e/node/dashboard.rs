//! The Grafana dashboard (`charts/mail-incident-operator/files/grafana/`) proven on real
//! data: a real Prometheus (Debian's) on the host scrapes the operator's two pods and the
//! agents of the example Postfix and Exim pods every second while an incident runs its
//! course: declared a few seconds ahead (nothing changes until it starts) and scoped to
//! the MTAs' recipient domains, AcceptAndQueue with escalation limits and the mailbox
//! storage broken (mail held), an escalation, a transition to TempFail, and the resolve
//! whose release drains the backlog once the storage works again. Then every panel query and annotation of
//! the dashboard, its variables substituted as Grafana substitutes them, must return
//! series with values through Prometheus' HTTP API, and every variable its values.
//!
//! Prometheus listens on 127.0.0.1 only, on the world's port base + 20 (cluster.sh takes
//! +0 to +2, node.sh +3 and +4), with its storage under the world's state directory; it
//! is killed, and its storage removed, when the test ends, pass or fail.

use crate::{
    mtas::{PodMta, start_examples},
    node::{Node, OPERATOR_NAMESPACE, operator_pods_ready, pod_ip, set_mode},
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use mail_incident_e2e_support::{
    mta::maildir_count,
    support::{apply_incident, eventually_within, ready_because, wait_for_within},
    world::{TestNamespace, http_get},
};
use mail_incident_operator::api::MailIncident;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const DASHBOARD: &str = "charts/mail-incident-operator/files/grafana/mail-incident-operator.json";
/// Prometheus' port, above the world's port base.
const PROMETHEUS_PORT_OFFSET: u16 = 20;
/// What Grafana makes of its interval variables for a Prometheus scraping every second
/// and a query step of one second: `$__rate_interval` is max(`$__interval` + the scrape
/// interval, 4 × the scrape interval).
const INTERVAL: &str = "1s";
const RATE_INTERVAL: &str = "4s";
const CONVERGE: Duration = Duration::from_secs(60);
/// Prometheus starts in a second or two; a target is up at its first scrape.
const PROMETHEUS_START: Duration = Duration::from_secs(30);
/// The release delivers at the agent's next try after the storage works again (its
/// queue is measured, and a stalled release applied again, every second here).
const RELEASE: Duration = Duration::from_secs(30);
const HELD: usize = 3;
const INCIDENT: &str = "outage";
const TARGETS: &str = "targets: {matchLabels: {app.kubernetes.io/component: mta}}\n\
     scope: {recipientDomains: [e2e.test, local.test]}";

/// A real Prometheus on loopback, scraping what it is given every second; killed, and its
/// storage removed, when dropped (its log printed if the test failed).
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
}

impl Prometheus {
    fn start(state: &Path, port: u16, scrape_configs: Value) -> Self {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            std::net::TcpListener::bind(address).is_ok(),
            "{address} (the world's port base + {PROMETHEUS_PORT_OFFSET}) is taken: set \
             E2E_PORT_BASE to another base"
        );
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir_in(state)
            .expect("a directory for Prometheus under the world's state directory");
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml::to_string(&config).unwrap())
            .expect("Prometheus configuration written");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect(
                "/usr/bin/prometheus starts (apt-get install prometheus; e2e/install-deps.sh does)",
            );
        Self {
            child,
            dir,
            address,
        }
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        mail_incident_e2e_support::support::last_lines(&log, 30)
    }

    async fn ready(&self) {
        let url = format!("http://{}/-/ready", self.address);
        eventually_within(PROMETHEUS_START, "Prometheus ready", || async {
            http_get(&url)
                .await
                .filter(|(status, _)| *status == 200)
                .map(drop)
        })
        .await;
    }

    /// The `data` of an API call's answer; panics unless it succeeded.
    async fn api(&self, path: &str, parameters: &[(&str, &str)]) -> Value {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(parameters)
            .finish();
        let url = format!("http://{}{path}?{query}", self.address);
        let (status, body) = http_get(&url)
            .await
            .unwrap_or_else(|| panic!("Prometheus does not answer {path}"));
        let mut answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} answered {status} with no JSON ({e}): {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "{path} {parameters:?}: {status} {body}"
        );
        answer["data"].take()
    }

    /// The series `expr` returns now.
    async fn query(&self, expr: &str) -> Vec<Value> {
        series(self.api("/api/v1/query", &[("query", expr)]).await)
    }

    /// The series `expr` returns over a time range, at every step of [`INTERVAL`].
    async fn query_range(&self, expr: &str, start: f64, end: f64) -> Vec<Value> {
        let (start, end) = (start.to_string(), end.to_string());
        let parameters = [
            ("query", expr),
            ("start", &start),
            ("end", &end),
            ("step", INTERVAL),
        ];
        series(self.api("/api/v1/query_range", &parameters).await)
    }

    /// Waits until `expr` returns at least `count` series.
    async fn until(&self, what: &str, expr: &str, count: usize, bound: Duration) {
        eventually_within(bound, &format!("Prometheus seeing {what}"), || async {
            (self.query(expr).await.len() >= count).then_some(())
        })
        .await;
    }

    /// Its scrape targets' health: (the target's pod, whether it is up), once every one of
    /// the `count` targets has been scraped at least once.
    async fn targets(&self, count: usize) -> Vec<(String, bool)> {
        eventually_within(PROMETHEUS_START, "every target scraped", || async {
            let data = self.api("/api/v1/targets", &[("state", "active")]).await;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let health: Vec<(String, bool)> = targets
                .iter()
                .filter(|t| t["health"] != "unknown")
                .map(|t| {
                    let pod = t["labels"]["pod"].as_str().unwrap_or("?").to_string();
                    (pod, t["health"] == "up")
                })
                .collect();
            (health.len() == count).then_some(health)
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if std::thread::panicking() {
            eprintln!("--- Prometheus log (last lines)\n{}", self.log_tail());
        }
    }
}

/// The result of a query as a list of series (a vector or a matrix).
fn series(mut data: Value) -> Vec<Value> {
    match data["result"].take() {
        Value::Array(series) => series,
        other => panic!("a query result that is not series: {other}"),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// `expr` with each `$name` and `${name}` replaced by its value, as Grafana sends it.
fn substitute(expr: &str, values: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').expect("a closed ${...}"),
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let value = values
            .iter()
            .find(|(known, _)| *known == name)
            .unwrap_or_else(|| panic!("no value for ${name} in {expr}"));
        out.push_str(&value.1);
        rest = tail;
    }
    out + rest
}

/// A query of one of the dashboard's panels.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    /// Grafana runs it at the end of the time range only.
    instant: bool,
}

/// Every query of the dashboard's panels, rows' nested panels included.
fn panel_queries(panels: &[Value], found: &mut Vec<PanelQuery>) {
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            found.push(PanelQuery {
                panel: panel["title"]
                    .as_str()
                    .expect("a panel's title")
                    .to_string(),
                ref_id: target["refId"]
                    .as_str()
                    .expect("a target's refId")
                    .to_string(),
                expr: target["expr"]
                    .as_str()
                    .expect("a target's expr")
                    .to_string(),
                instant: target["instant"] == true,
            });
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_queries(nested, found);
        }
    }
}

/// A series' values as numbers, NaN left out, each run of equal values once: the
/// states a timeline shows, in order.
fn distinct_values(series: &Value) -> Vec<f64> {
    let mut values: Vec<f64> = Vec::new();
    for point in series["values"].as_array().into_iter().flatten() {
        let value: f64 = point[1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        if !value.is_nan() && values.last() != Some(&value) {
            values.push(value);
        }
    }
    values
}

/// Whether any series has a value other than NaN: something a panel would draw.
fn has_values(series: &[Value]) -> bool {
    series.iter().any(|s| {
        let points = s["values"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![s["value"].clone()]);
        points.iter().any(|point| point[1] != "NaN")
    })
}

/// Whether any series is above 0 at some step: what Grafana draws an annotation for.
fn has_positive_values(series: &[Value]) -> bool {
    series
        .iter()
        .any(|s| distinct_values(s).iter().any(|v| *v > 0.0))
}

/// The agent measures and reports its queue every second rather than every 30: what a
/// one-second scrape and a two-minute test can follow.
fn report_every_second(workload: &mut Value) {
    let containers = workload
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
        .expect("containers");
    let agent = containers
        .iter_mut()
        .find(|c| c["name"] == "agent")
        .expect("an agent container");
    agent["command"]
        .as_array_mut()
        .expect("the agent's command")
        .push(json!("--report-seconds=1"));
}

/// What Prometheus scrapes: the operator's pods (`honor_labels`, so that an incident's
/// series keep the incident's `namespace`) and the agents. In a cluster the chart's
/// PodMonitors (`metrics.podMonitor`, `metrics.agentPodMonitor`) make the same targets
/// from the pods' named ports; here they are written from the pod IPs the API gives.
async fn scrape_configs(node: &Node, namespace: &str, mtas: &[PodMta]) -> Value {
    let client = node.client().await;
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let mut operators = Vec::new();
    for pod in operator_pods_ready(&client, 2).await {
        let ip = pod_ip(&operator_pods, &pod).await;
        operators.push(json!({"targets": [format!("{ip}:8080")], "labels": {"pod": pod}}));
    }
    let agents: Vec<Value> = mtas
        .iter()
        .map(|mta| {
            json!({
                "targets": [format!("{}:8081", mta.smtp.address.ip())],
                "labels": {"namespace": namespace, "pod": mta.pod},
            })
        })
        .collect();
    json!([
        {"job_name": "mail-incident-operator", "honor_labels": true, "static_configs": operators},
        {"job_name": "mail-incident-agent", "static_configs": agents},
    ])
}

fn hold_spec(max_queued_messages: usize) -> String {
    format!(
        "mode: AcceptAndQueue\nreason: INC-10 mailbox storage down\n{TARGETS}\nduration: 1h\n\
         queue: {{lifetime: 40d, bounceLifetime: 8d}}\nrelease: {{concurrency: 2}}\n\
         escalation: {{maxQueuedMessages: {max_queued_messages}, maxOldestMessageAge: 1d}}"
    )
}

fn tempfail_spec() -> String {
    format!(
        "mode: TempFail\nreason: INC-10 mailbox storage down, queues full\n{TARGETS}\nduration: 1h\n\
         queue: {{lifetime: 40d, bounceLifetime: 8d}}\nrelease: {{concurrency: 2}}"
    )
}

/// Drives the incident the dashboard shows, step by step, each seen by Prometheus.
async fn run_the_incident(node: &Node, namespace: &str, mtas: &[PodMta], prometheus: &Prometheus) {
    let incidents: Api<MailIncident> = Api::namespaced(node.client().await, namespace);

    // AcceptAndQueue, the storage broken: every message is accepted and held. Declared a
    // few seconds ahead: until then the MTAs answer as usual and hold nothing.
    for mta in mtas {
        set_mode(&mta.store, 0o000);
    }
    let starts_at = k8s_openapi::jiff::Timestamp::from_second(now() as i64 + 20)
        .expect("a time")
        .to_string();
    apply_incident(
        &node.world,
        namespace,
        INCIDENT,
        &format!("{}\nstartsAt: '{starts_at}'", hold_spec(1000)),
    );
    wait_for_within(
        CONVERGE,
        &incidents,
        INCIDENT,
        "Ready (Scheduled)",
        ready_because("Scheduled"),
    )
    .await;
    prometheus
        .until(
            &format!("the upcoming window for {RATE_INTERVAL}"),
            &format!(
                "min_over_time(mail_incident_scheduled_start_timestamp_seconds{{namespace=\"{namespace}\"}}[{RATE_INTERVAL}]) > 0"
            ),
            1,
            CONVERGE,
        )
        .await;
    let postfix = mtas.iter().find(|m| m.label == "Postfix").expect("Postfix");
    let before = postfix.rcpt_reply().await.unwrap_or_default();
    assert!(before.starts_with("250"), "before the window: {before}");
    wait_for_within(
        CONVERGE,
        &incidents,
        INCIDENT,
        "Ready (Applied)",
        ready_because("Applied"),
    )
    .await;
    for mta in mtas {
        for n in 0..HELD {
            let reply = mta.send(format!("held {n}")).await;
            assert!(reply.starts_with("250"), "{}: {reply}", mta.label);
        }
    }
    prometheus
        .until(
            &format!("{HELD} messages queued on each MTA"),
            &format!("sum by (pod) (mail_incident_agent_queue_messages{{namespace=\"{namespace}\"}}) == {HELD}"),
            mtas.len(),
            CONVERGE,
        )
        .await;

    // The queues pass a lowered limit: the operator escalates both targets to TempFail.
    apply_incident(&node.world, namespace, INCIDENT, &hold_spec(HELD - 1));
    wait_for_within(
        CONVERGE,
        &incidents,
        INCIDENT,
        "escalated on both MTAs",
        |i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.escalated_targets.len() == mtas.len())
        },
    )
    .await;
    prometheus
        .until(
            "the escalation",
            &format!("mail_incident_escalations_total{{namespace=\"{namespace}\"}}"),
            1,
            CONVERGE,
        )
        .await;

    // The incident itself moves to TempFail; Postfix's policy service answers 452.
    apply_incident(&node.world, namespace, INCIDENT, &tempfail_spec());
    wait_for_within(
        CONVERGE,
        &incidents,
        INCIDENT,
        "Ready (Applied) in TempFail",
        ready_because("Applied"),
    )
    .await;
    let postfix = mtas.iter().find(|m| m.label == "Postfix").expect("Postfix");
    eventually_within(CONVERGE, "Postfix answering RCPT with 452", || async {
        postfix.rcpt_reply().await.filter(|a| a.starts_with("452"))
    })
    .await;
    // Held for a rate window, as every other phase: a phase Prometheus scraped once can
    // fall between two steps of a range query, and the mode panel would miss it.
    prometheus
        .until(
            &format!("the incident in TempFail for {RATE_INTERVAL}, its transition and Postfix's 4xx answers"),
            &format!(
                "min_over_time(mail_incident_mode{{namespace=\"{namespace}\", incident=\"{INCIDENT}\", mode=\"TempFail\"}}[{RATE_INTERVAL}]) == 1 \
                 and on () mail_incident_transitions_total{{namespace=\"{namespace}\", to=\"TempFail\"}} \
                 and on () mail_incident_agent_policy_answers_total{{namespace=\"{namespace}\", answer=\"tempfail\"}}"
            ),
            1,
            CONVERGE,
        )
        .await;

    // Resolved with the storage still broken: the MTAs release, and the backlog waits.
    apply_incident(
        &node.world,
        namespace,
        INCIDENT,
        &format!("{}\nresolved: true", tempfail_spec()),
    );
    prometheus
        .until(
            &format!("both MTAs releasing for {RATE_INTERVAL}, their backlog held"),
            &format!(
                "min_over_time(mail_incident_agent_mode{{namespace=\"{namespace}\", mode=\"Releasing\"}}[{RATE_INTERVAL}]) == 1"
            ),
            mtas.len(),
            CONVERGE,
        )
        .await;
    // The storage is back: the release delivers every held message and ends.
    for mta in mtas {
        set_mode(&mta.store, 0o777);
    }
    for mta in mtas {
        eventually_within(
            RELEASE,
            &format!("{}: all {HELD} held messages delivered", mta.label),
            || async { (maildir_count(&mta.maildir) == HELD).then_some(()) },
        )
        .await;
    }
    // Until the rate windows after the drain are scraped too.
    prometheus
        .until(
            &format!("both MTAs back to Normal for {RATE_INTERVAL}"),
            &format!(
                "min_over_time(mail_incident_agent_mode{{namespace=\"{namespace}\", mode=\"Normal\"}}[{RATE_INTERVAL}]) == 1"
            ),
            mtas.len(),
            CONVERGE,
        )
        .await;
}

/// What some panels must show of this incident, beyond having data: the mode codes and
/// their order (the timelines' value mappings name them), and the release's backlog and
/// drain. Panel title, and what its first query's series must satisfy.
fn shows_the_incident(panel: &str, series: &[Value]) -> Result<(), String> {
    let each = |what: &str, holds: &dyn Fn(&[f64]) -> bool| {
        let seen: Vec<Vec<f64>> = series.iter().map(distinct_values).collect();
        if !seen.is_empty() && seen.iter().all(|values| holds(values)) {
            Ok(())
        } else {
            Err(format!("{panel}: not {what} in every series: {seen:?}"))
        }
    };
    match panel {
        // Normal while scheduled, AcceptAndQueue, TempFail, Normal.
        "Mode of each incident" => each("the modes 0, 1, 2, 0", &|v| v == [0.0, 1.0, 2.0, 0.0]),
        // Normal, AcceptAndQueue, TempFail (escalated, then the incident's), Releasing, Normal.
        "Mode each agent reports" => each("the modes 0, 1, 2, 4, 0", &|v| {
            v == [0.0, 1.0, 2.0, 4.0, 0.0]
        }),
        "Backlog of releasing MTAs" => each(&format!("{HELD} messages at most"), &|v| {
            v.iter().copied().fold(0.0, f64::max) == HELD as f64
        }),
        "Drained per second while releasing" => each("a drain", &|v| v.iter().any(|v| *v > 0.0)),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus_during_an_incident() {
    let node = Node::get();
    let ns = TestNamespace::new(&node.world, "node-dashboard");
    let mtas = start_examples(node, &ns.name, report_every_second).await;

    let state = std::env::var("E2E_STATE").expect("E2E_STATE");
    let port_base: u16 = std::env::var("E2E_PORT_BASE")
        .expect("E2E_PORT_BASE")
        .parse()
        .expect("E2E_PORT_BASE is a port");
    let prometheus = Prometheus::start(
        Path::new(&state),
        port_base + PROMETHEUS_PORT_OFFSET,
        scrape_configs(node, &ns.name, &mtas).await,
    );
    prometheus.ready().await;
    let targets = 2 + mtas.len();
    let health = prometheus.targets(targets).await;
    assert!(
        health.iter().all(|(_, up)| *up),
        "every target up: {health:?}"
    );
    let start = now();
    run_the_incident(node, &ns.name, &mtas, &prometheus).await;
    let end = now();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/{DASHBOARD}")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    // The dashboard's time range is the incident's.
    let variables = [
        ("__interval", INTERVAL.to_string()),
        ("__rate_interval", RATE_INTERVAL.to_string()),
        ("__range", format!("{}s", (end - start).ceil())),
        ("namespace", ns.name.clone()),
        ("incident", INCIDENT.to_string()),
    ];
    let mut failures = Vec::new();

    let mut queries = Vec::new();
    panel_queries(
        dashboard["panels"].as_array().expect("panels"),
        &mut queries,
    );
    assert!(
        queries.len() > 20,
        "the dashboard's queries: {}",
        queries.len()
    );
    for query in &queries {
        let expr = substitute(&query.expr, &variables);
        let series = if query.instant {
            series(
                prometheus
                    .api(
                        "/api/v1/query",
                        &[("query", &expr), ("time", &end.to_string())],
                    )
                    .await,
            )
        } else {
            prometheus.query_range(&expr, start, end).await
        };
        let place = format!("panel {:?} query {}", query.panel, query.ref_id);
        if !has_values(&series) {
            failures.push(format!("{place}: no data from\n{expr}\n{series:?}"));
        } else if query.ref_id == "A"
            && let Err(why) = shows_the_incident(&query.panel, &series)
        {
            failures.push(format!("{place}: {why}\n{expr}"));
        }
    }

    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations");
    assert_eq!(annotations.len(), 2, "transitions and escalations");
    for annotation in annotations {
        let expr = substitute(annotation["expr"].as_str().expect("an expr"), &variables);
        let series = prometheus.query_range(&expr, start, end).await;
        if !has_positive_values(&series) {
            failures.push(format!(
                "annotation {}: nothing to mark from\n{expr}\n{series:?}",
                annotation["name"]
            ));
        }
    }

    // label_values(selector, label): the values of `label` among the selector's series.
    let mut variables_checked = 0;
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let expected = match variable["name"].as_str() {
            Some("namespace") => &ns.name,
            Some("incident") => INCIDENT,
            _ => continue,
        };
        variables_checked += 1;
        let query = variable["query"]["query"]
            .as_str()
            .expect("a variable query");
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
        let selector = substitute(selector, &variables);
        let values = prometheus
            .api(
                &format!("/api/v1/label/{}/values", label.trim()),
                &[
                    ("match[]", &selector),
                    ("start", &start.to_string()),
                    ("end", &end.to_string()),
                ],
            )
            .await;
        if !values
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v == expected))
        {
            failures.push(format!(
                "variable {}: {expected} not among {values}",
                variable["name"]
            ));
        }
    }
    assert_eq!(variables_checked, 2, "the namespace and incident variables");

    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}",
        failures.len(),
        queries.len() + annotations.len() + variables_checked,
        failures.join("\n\n")
    );
    let health = prometheus.targets(targets).await;
    assert!(
        health.iter().all(|(_, up)| *up),
        "every target still up: {health:?}"
    );
}
