//! `status [NAME] [--watch]`: what every target of an incident answers now. One line per
//! target workload (the Deployments and StatefulSets the incident's selector matches):
//! the mode it answers and from which incident (its mode document's first rule), its
//! pods applied out of its replicas (the agents' report entries carrying the document's
//! hash), its queue (the largest of its pods' figures), whether the controller escalated
//! it, and, once the incident is over, how much held mail its agents still report; then
//! the incident's conditions and problems.
//!
//! `-o json|yaml` prints a `MailIncidentStatusList` (see [`IncidentView`] and
//! [`TargetView`] for every field); `-o name` the incidents' names.

use super::{
    Connection, ConnectionArgs, Format, OutputArgs, PluginError, Table,
    list::age,
    look_style::{
        Colour, finish_redraw, fit_to_screen, paint, redraw, render_painted, stdout_is_terminal,
        terminal_size,
    },
};
use crate::api::{
    MailIncident,
    mode_document::{
        AgentReport, DELIVERY_ANNOTATION, INCIDENT_ANNOTATION, MODE_DOCUMENT_KEY,
        MODE_HASH_ANNOTATION, MTA_ANNOTATION, ModeDocument, document_name, report_name,
    },
    validation::selector_of,
};
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, PodTemplateSpec},
};
use kube::{Api, Client, ResourceExt, api::ListParams, runtime::watcher};
use serde::Serialize;
use std::{collections::BTreeMap, io::Write, time::Duration};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kubectl mail-incident status storage-outage -n mail\n  \
                        kubectl mail-incident status -A\n  \
                        kubectl mail-incident status storage-outage --watch\n  \
                        kubectl mail-incident status storage-outage -o json"
)]
pub struct StatusArgs {
    /// The incident (default: every incident of the namespace, or of every namespace
    /// with -A).
    pub name: Option<String>,
    /// Redraw whenever the incident, its mode documents or reports change (Ctrl-C stops).
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One incident as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentView {
    pub namespace: String,
    pub name: String,
    /// The spec's mode.
    pub mode: String,
    /// `status.effectiveMode`: the spec's mode, or `Normal` once resolved or expired.
    pub effective_mode: String,
    /// `status.targets.summary`: applied/(matched - superseded - idle).
    pub applied: String,
    pub targets: Vec<TargetView>,
    pub conditions: Vec<ConditionView>,
    /// Failed, escalated and superseded targets, each said in one sentence.
    pub problems: Vec<String>,
}

/// One target workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    /// `Deployment/NAME` or `StatefulSet/NAME`.
    pub workload: String,
    /// Postfix, Exim or Generic, when the document, the workload or the incident says.
    pub mta: Option<String>,
    /// What the MTAs answer: the most severe rule's mode, `Normal` without a document.
    pub mode: String,
    /// How many recipient domains that rule covers; absent: every recipient.
    pub domains: Option<usize>,
    /// The incident of that rule.
    pub from: Option<String>,
    /// Every incident with a rule in the document, most severe first.
    pub incidents: Vec<String>,
    /// Pods whose agent reports the document's hash (and no drift being put back).
    pub pods_applied: u32,
    /// The workload's replicas.
    pub pods_total: u32,
    /// The largest queue among the pods' reports, absent when none reports one.
    pub queued_messages: Option<u64>,
    pub oldest_message_age_seconds: Option<u64>,
    /// In `status.escalatedTargets`: switched to TempFail by the controller.
    pub escalated: bool,
    /// `holding` while a document holds mail, `releasing` while agents of a target
    /// without a document still report queued mail, `normal` otherwise.
    pub release: Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Release {
    Holding,
    Releasing { messages_left: u64 },
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// What is read from the cluster about one target workload.
#[derive(Debug, Clone, Default)]
pub struct TargetFacts {
    pub kind: &'static str,
    pub name: String,
    pub replicas: u32,
    pub mta_annotation: Option<String>,
    /// The document's `mode.json` and its `mailops.dev/mode-hash` annotation.
    pub document: Option<(String, String)>,
    /// The report ConfigMap's data: pod name → `AgentReport` JSON.
    pub report: Option<BTreeMap<String, String>>,
    /// Set for a workload in restart delivery (`mailops.dev/delivery: restart`).
    pub restart: Option<RestartFacts>,
}

/// A restart-delivery workload carries its mode in its pod template, not in a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartFacts {
    /// `MAIL_INCIDENT_MODE` of the template's containers; absent: normal service.
    pub mode: Option<String>,
    /// The template's `mailops.dev/incident` annotation.
    pub incident: Option<String>,
    /// Pods updated to the template (its rollout's progress).
    pub updated: u32,
}

/// The line of one target, from what was read about it.
pub fn target_view(incident: &MailIncident, facts: &TargetFacts) -> TargetView {
    let workload = format!("{}/{}", facts.kind, facts.name);
    let document = facts.document.as_ref().and_then(|(text, hash)| {
        serde_json::from_str::<ModeDocument>(text)
            .ok()
            .map(|d| (d, hash))
    });
    // Entries that do not parse are an agent of another version: not counted, not fatal.
    let reports: Vec<AgentReport> = facts
        .report
        .iter()
        .flat_map(|data| data.values())
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    let queued_messages = reports
        .iter()
        .filter_map(|r| r.queue.as_ref())
        .map(|q| q.messages)
        .max();
    let oldest_message_age_seconds = reports
        .iter()
        .filter_map(|r| r.queue.as_ref())
        .map(|q| q.oldest_age_seconds)
        .max();
    let pods_applied = document.as_ref().map_or(0, |(_, hash)| {
        let applied = reports
            .iter()
            .filter(|r| &&r.hash == hash && r.drift.as_ref().is_none_or(|d| d.since.is_none()))
            .count();
        u32::try_from(applied).unwrap_or(u32::MAX)
    });
    let status = incident.status.clone().unwrap_or_default();
    let escalated = status
        .escalated_targets
        .iter()
        .any(|t| t.target == workload);
    let spec_mta = incident.spec.targets.mta.map(|m| m.to_string());
    match document {
        Some((document, _)) => {
            let headline = document.headline();
            TargetView {
                mta: document
                    .mta
                    .map(|m| m.to_string())
                    .or(facts.mta_annotation.clone())
                    .or(spec_mta),
                mode: headline.mode.to_string(),
                domains: headline.recipient_domains.as_ref().map(Vec::len),
                from: Some(headline.incident.name.clone()),
                incidents: document
                    .rules
                    .iter()
                    .map(|r| r.incident.name.clone())
                    .collect(),
                pods_applied,
                pods_total: facts.replicas,
                queued_messages,
                oldest_message_age_seconds,
                escalated,
                release: Release::Holding,
                workload,
            }
        }
        None => match &facts.restart {
            Some(RestartFacts {
                mode: Some(mode),
                incident,
                updated,
            }) => TargetView {
                mta: facts.mta_annotation.clone().or(spec_mta),
                mode: mode.clone(),
                domains: None,
                from: incident.clone(),
                incidents: incident.iter().cloned().collect(),
                pods_applied: (*updated).min(facts.replicas),
                pods_total: facts.replicas,
                queued_messages: None,
                oldest_message_age_seconds: None,
                escalated,
                release: Release::Holding,
                workload,
            },
            _ => normal_view(
                facts,
                workload,
                spec_mta,
                escalated,
                queued_messages,
                oldest_message_age_seconds,
            ),
        },
    }
}

/// A target no incident mode reaches: normal service, or the release of what it held.
fn normal_view(
    facts: &TargetFacts,
    workload: String,
    spec_mta: Option<String>,
    escalated: bool,
    queued_messages: Option<u64>,
    oldest_message_age_seconds: Option<u64>,
) -> TargetView {
    TargetView {
        mta: facts.mta_annotation.clone().or(spec_mta),
        mode: "Normal".into(),
        domains: None,
        from: None,
        incidents: vec![],
        pods_applied: 0,
        pods_total: facts.replicas,
        release: match queued_messages {
            Some(left) if left > 0 => Release::Releasing {
                messages_left: left,
            },
            _ => Release::Normal,
        },
        queued_messages,
        oldest_message_age_seconds,
        escalated,
        workload,
    }
}

/// The incident with its targets' lines.
pub fn incident_view(incident: &MailIncident, targets: &[TargetFacts]) -> IncidentView {
    let status = incident.status.clone().unwrap_or_default();
    let mut problems = vec![];
    for failed in &status.failed_targets {
        problems.push(format!("{} failed: {}", failed.target, failed.reason));
    }
    for escalated in &status.escalated_targets {
        problems.push(format!(
            "{} escalated to TempFail: {}",
            escalated.target, escalated.reason
        ));
    }
    for superseded in &status.superseded_by {
        let domains = if superseded.domains.is_empty() {
            String::new()
        } else {
            format!(" for {}", superseded.domains.join(", "))
        };
        problems.push(format!(
            "{} follow{} incident {}{domains}",
            superseded.targets.join(", "),
            if superseded.targets.len() == 1 {
                "s"
            } else {
                ""
            },
            superseded.incident,
        ));
    }
    IncidentView {
        namespace: incident.namespace().unwrap_or_default(),
        name: incident.name_any(),
        mode: incident.spec.mode.to_string(),
        effective_mode: status
            .effective_mode
            .map_or_else(|| "Unknown".into(), |m| m.to_string()),
        applied: status.targets.map(|t| t.summary).unwrap_or_default(),
        targets: targets.iter().map(|t| target_view(incident, t)).collect(),
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        problems,
    }
}

/// `TempFail (2 domains)`.
fn mode_cell(target: &TargetView) -> String {
    match target.domains {
        Some(1) => format!("{} (1 domain)", target.mode),
        Some(n) => format!("{} ({n} domains)", target.mode),
        None => target.mode.clone(),
    }
}

fn release_cell(release: Release) -> String {
    match release {
        Release::Holding => "holding".into(),
        Release::Releasing { messages_left } => format!("releasing, {messages_left} left"),
        Release::Normal => "normal".into(),
    }
}

/// The table of an incident's targets.
pub fn targets_table(view: &IncidentView, wide: bool) -> Table {
    let mut header = vec![
        "WORKLOAD",
        "MTA",
        "MODE",
        "FROM",
        "PODS",
        "QUEUED",
        "OLDEST",
        "ESCALATED",
        "RELEASE",
    ];
    if wide {
        header.push("INCIDENTS");
    }
    let mut table = Table::new(&header);
    for target in &view.targets {
        let mut row = vec![
            target.workload.clone(),
            target.mta.clone().unwrap_or_else(|| "-".into()),
            mode_cell(target),
            target.from.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", target.pods_applied, target.pods_total),
            target
                .queued_messages
                .map_or_else(|| "-".into(), |m| m.to_string()),
            target
                .oldest_message_age_seconds
                .map_or_else(|| "-".into(), |s| age(i64::try_from(s).unwrap_or(i64::MAX))),
            if target.escalated { "yes" } else { "no" }.into(),
            release_cell(target.release),
        ];
        if wide {
            row.push(if target.incidents.is_empty() {
                "-".into()
            } else {
                target.incidents.join(",")
            });
        }
        table.push(row);
    }
    table
}

/// The colour of a cell of the targets' table.
fn target_colour(header: &str, cell: &str) -> Option<Colour> {
    match header {
        "PODS" => {
            let (applied, total) = cell.split_once('/')?;
            Some(if applied == total {
                Colour::Green
            } else {
                Colour::Yellow
            })
        }
        "ESCALATED" if cell == "yes" => Some(Colour::Red),
        "RELEASE" if cell.starts_with("releasing") => Some(Colour::Yellow),
        "RELEASE" if cell == "normal" => Some(Colour::Green),
        _ => None,
    }
}

fn condition_colour(header: &str, cell: &str) -> Option<Colour> {
    match (header, cell) {
        ("STATUS", "True") => Some(Colour::Green),
        ("STATUS", "False") => Some(Colour::Red),
        ("REASON", "Applied" | "Resolved" | "Expired" | "Scheduled") => Some(Colour::Green),
        ("REASON", "Failed" | "InvalidSpec") => Some(Colour::Red),
        _ => None,
    }
}

/// The text `status` prints in table or wide output, coloured when `colour`.
pub fn render(views: &[IncidentView], wide: bool, headers: bool, colour: bool) -> String {
    let mut out = String::new();
    for (n, view) in views.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mode = if view.mode == view.effective_mode {
            view.mode.clone()
        } else {
            format!("{} (now {})", view.mode, view.effective_mode)
        };
        let applied = if view.applied.is_empty() {
            String::new()
        } else {
            format!(", {} targets applied", view.applied)
        };
        out.push_str(&format!(
            "Incident {}/{}: {mode}{applied}\n",
            view.namespace, view.name
        ));
        if view.targets.is_empty() {
            out.push_str("No target workload matches its selector.\n");
        } else {
            out.push_str(&render_painted(
                &targets_table(view, wide),
                headers,
                colour,
                target_colour,
            ));
        }
        if !view.conditions.is_empty() {
            let mut conditions = Table::new(&["CONDITION", "STATUS", "REASON", "MESSAGE"]);
            for c in &view.conditions {
                conditions.push(vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]);
            }
            out.push('\n');
            out.push_str(&render_painted(
                &conditions,
                headers,
                colour,
                condition_colour,
            ));
        }
        if !view.problems.is_empty() {
            out.push_str("\nProblems:\n");
            for problem in &view.problems {
                out.push_str(&format!(
                    "  {}\n",
                    paint(problem, Some(Colour::Red), colour)
                ));
            }
        }
    }
    out
}

/// The text of `views` in `-o` format (table and wide coloured when `colour`).
pub fn format_views(
    views: &[IncidentView],
    output: OutputArgs,
    colour: bool,
) -> Result<String, PluginError> {
    let list = || {
        serde_json::json!({
            "apiVersion": "mailops.dev/v1alpha1",
            "kind": "MailIncidentStatusList",
            "items": views,
        })
    };
    Ok(match output.output {
        Format::Table | Format::Wide => render(
            views,
            output.output == Format::Wide,
            !output.no_headers,
            colour,
        ),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&list())
                .map_err(|e| PluginError::Refused(e.to_string()))?
        ),
        Format::Yaml => {
            serde_yaml::to_string(&list()).map_err(|e| PluginError::Refused(e.to_string()))?
        }
        Format::Name => views
            .iter()
            .map(|v| format!("mailincident.mailops.dev/{}\n", v.name))
            .collect(),
    })
}

pub async fn run(connection: &ConnectionArgs, args: &StatusArgs) -> Result<(), PluginError> {
    let cluster = Connection::open(connection).await?;
    let scope = Scope {
        client: cluster.client.clone(),
        namespace: (!connection.all_namespaces || args.name.is_some())
            .then(|| cluster.namespace.clone()),
        name: args.name.clone(),
    };
    let colour = stdout_is_terminal();
    if !args.watch {
        let views = scope.read().await?;
        if views.is_empty() && matches!(args.output.output, Format::Table | Format::Wide) {
            eprintln!("{}", scope.nothing());
            return Ok(());
        }
        print!("{}", format_views(&views, args.output, colour)?);
        return Ok(());
    }
    watch(&scope, args.output, colour).await
}

/// Which incidents `status` shows.
struct Scope {
    client: Client,
    /// `None`: every namespace.
    namespace: Option<String>,
    name: Option<String>,
}

impl Scope {
    fn nothing(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("No MailIncident in namespace {namespace}."),
            None => "No MailIncident in any namespace.".into(),
        }
    }

    /// Every incident in scope, with its targets, as now.
    async fn read(&self) -> Result<Vec<IncidentView>, PluginError> {
        let namespace = self.namespace.as_deref();
        let incidents = match (&self.name, namespace) {
            (Some(name), Some(namespace)) => {
                let api: Api<MailIncident> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(name).await.map_err(|e| {
                    PluginError::from_api(e, "get", "mailincidents", Some(namespace))
                })? {
                    Some(incident) => vec![incident],
                    None => return Err(self.not_found(name, namespace).await),
                }
            }
            _ => {
                let api: Api<MailIncident> = match namespace {
                    Some(namespace) => Api::namespaced(self.client.clone(), namespace),
                    None => Api::all(self.client.clone()),
                };
                let mut incidents = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| PluginError::from_api(e, "list", "mailincidents", namespace))?
                    .items;
                incidents.sort_by_key(|i| (i.namespace().unwrap_or_default(), i.name_any()));
                incidents
            }
        };
        let mut views = vec![];
        for incident in &incidents {
            let targets = read_targets(&self.client, incident).await?;
            views.push(incident_view(incident, &targets));
        }
        Ok(views)
    }

    /// No incident `name` here: which namespaces have one, if the user may list them.
    async fn not_found(&self, name: &str, namespace: &str) -> PluginError {
        let all: Api<MailIncident> = Api::all(self.client.clone());
        let elsewhere = all
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .map(|list| {
                list.items
                    .iter()
                    .filter_map(|i| i.namespace())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        PluginError::NotFound {
            name: name.into(),
            namespace: namespace.into(),
            elsewhere,
        }
    }
}

/// The workloads `incident` selects, with their documents and reports.
async fn read_targets(
    client: &Client,
    incident: &MailIncident,
) -> Result<Vec<TargetFacts>, PluginError> {
    let namespace = incident.namespace().unwrap_or_default();
    // An invalid selector selects nothing: the controller says why in the conditions.
    let Ok(selector) = selector_of(&incident.spec.targets) else {
        return Ok(vec![]);
    };
    let selected = ListParams::default().labels_from(&selector);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut targets = vec![];
    for d in deployments
        .list(&selected)
        .await
        .map_err(|e| PluginError::from_api(e, "list", "deployments", Some(&namespace)))?
        .items
    {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let updated = d.status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let template = d.spec.map(|s| s.template);
        targets.push(("Deployment", d.metadata, replicas, template, updated));
    }
    for s in statefulsets
        .list(&selected)
        .await
        .map_err(|e| PluginError::from_api(e, "list", "statefulsets", Some(&namespace)))?
        .items
    {
        let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let updated = s.status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let template = s.spec.map(|s| s.template);
        targets.push(("StatefulSet", s.metadata, replicas, template, updated));
    }
    let mut facts = vec![];
    for (kind, metadata, replicas, template, updated) in targets {
        let name = metadata.name.clone().unwrap_or_default();
        let document_cm = document_name(kind, &name);
        let get = |name: String| {
            let config_maps = config_maps.clone();
            let namespace = namespace.clone();
            async move {
                config_maps
                    .get_opt(&name)
                    .await
                    .map_err(|e| PluginError::from_api(e, "get", "configmaps", Some(&namespace)))
            }
        };
        let document = get(document_cm.clone()).await?.and_then(|cm| {
            let hash = cm.annotations().get(MODE_HASH_ANNOTATION).cloned()?;
            let text = cm.data?.remove(MODE_DOCUMENT_KEY)?;
            Some((text, hash))
        });
        let report = get(report_name(&document_cm))
            .await?
            .map(|cm| cm.data.unwrap_or_default());
        let restart = metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELIVERY_ANNOTATION))
            .is_some_and(|d| d == "restart")
            .then(|| restart_facts(template.as_ref(), updated));
        facts.push(TargetFacts {
            restart,
            kind,
            mta_annotation: metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MTA_ANNOTATION).cloned()),
            name,
            replicas: u32::try_from(replicas).unwrap_or(0),
            document,
            report,
        });
    }
    facts.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(facts)
}

/// What a restart-delivery workload's pod template carries.
fn restart_facts(template: Option<&PodTemplateSpec>, updated: i32) -> RestartFacts {
    let mode = template
        .and_then(|t| t.spec.as_ref())
        .into_iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(|c| c.env.iter().flatten())
        .find(|env| env.name == RESTART_MODE_ENV)
        .and_then(|env| env.value.clone());
    let incident = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(INCIDENT_ANNOTATION).cloned());
    RestartFacts {
        mode,
        incident,
        updated: u32::try_from(updated).unwrap_or(0),
    }
}

/// The env var restart delivery names the mode in.
const RESTART_MODE_ENV: &str = "MAIL_INCIDENT_MODE";

/// Draws the status again whenever the incidents or the ConfigMaps of their namespace
/// change (through watches), and every 2 s for the ages and replicas no watch here sees;
/// a frame equal to the last is not drawn again. On a terminal each frame is cut to the
/// screen. Ctrl-C stops it, leaving the last frame.
async fn watch(scope: &Scope, output: OutputArgs, colour: bool) -> Result<(), PluginError> {
    let terminal = stdout_is_terminal();
    let incidents: Api<MailIncident> = match &scope.namespace {
        Some(namespace) => Api::namespaced(scope.client.clone(), namespace),
        None => Api::all(scope.client.clone()),
    };
    let config_maps: Api<ConfigMap> = match &scope.namespace {
        Some(namespace) => Api::namespaced(scope.client.clone(), namespace),
        None => Api::all(scope.client.clone()),
    };
    let mut changes = futures::stream::select(
        watcher(incidents, watcher::Config::default()).map(|_| ()),
        watcher(config_maps, watcher::Config::default()).map(|_| ()),
    )
    .boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut shown: Option<String> = None;
    let mut stdout = std::io::stdout();
    let result = loop {
        let frame = match scope.read().await {
            Ok(views) if views.is_empty() => format!("{}\n", scope.nothing()),
            Ok(views) => format_views(&views, output, colour)?,
            Err(error) => break Err(error),
        };
        // Read each time: a resized terminal gets a frame cut to its new size.
        let frame = match terminal.then(terminal_size).flatten() {
            Some((rows, columns)) => fit_to_screen(&frame, rows, columns),
            None => frame,
        };
        if shown.as_deref() != Some(frame.as_str()) {
            let previous = shown.as_deref().map_or(0, |f| f.lines().count());
            let written = stdout
                .write_all(redraw(previous, &frame, terminal).as_bytes())
                .and_then(|()| stdout.flush());
            if written.is_err() {
                // The reader went away (a closed pipe): nothing left to show.
                break Ok(());
            }
            shown = Some(frame);
        }
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = tick.tick() => {}
            _ = changes.next() => {
                // A burst of events (a mode change touches every document) is drawn once.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    print!("{}", finish_redraw(terminal));
    let _ = stdout.flush();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        MailIncidentSpec, MailIncidentStatus, Mode,
        mode_document::{
            DocumentIncident, DocumentQueue, DocumentRelease, DocumentReply, DriftReport,
            MODE_DOCUMENT_KIND, MODE_DOCUMENT_VERSION, QueueFigures, Rule,
        },
    };

    fn incident(status: MailIncidentStatus) -> MailIncident {
        let spec: MailIncidentSpec = serde_json::from_value(serde_json::json!({
            "mode": "TempFail",
            "reason": "INC-1 storage down",
            "targets": {"matchLabels": {"app": "mta"}},
        }))
        .unwrap();
        let mut incident = MailIncident::new("outage", spec);
        incident.metadata.namespace = Some("mail".into());
        incident.status = Some(status);
        incident
    }

    fn rule(mode: Mode, incident: &str, domains: Option<&[&str]>) -> Rule {
        Rule {
            mode,
            reply: DocumentReply {
                code: 452,
                enhanced_code: "4.3.1".into(),
                text: "later".into(),
            },
            recipient_domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
            incident: DocumentIncident {
                name: incident.into(),
                uid: "u".into(),
                reason: "r".into(),
            },
        }
    }

    fn document(rules: Vec<Rule>) -> (String, String) {
        let document = ModeDocument {
            api_version: MODE_DOCUMENT_VERSION.into(),
            kind: MODE_DOCUMENT_KIND.into(),
            rules,
            queue: DocumentQueue {
                lifetime: "5d".into(),
                bounce_lifetime: "5d".into(),
            },
            release: DocumentRelease { concurrency: 4 },
            mta: None,
        };
        (document.to_json(), document.hash())
    }

    fn entry(hash: &str, messages: u64, oldest: u64, drifting: bool) -> String {
        serde_json::to_string(&AgentReport {
            hash: hash.into(),
            after: None,
            queue: Some(QueueFigures {
                messages,
                by_queue: BTreeMap::new(),
                oldest_age_seconds: oldest,
            }),
            drift: drifting.then(|| DriftReport {
                count: 1,
                what: "main.cf".into(),
                since: Some(5),
            }),
        })
        .unwrap()
    }

    fn facts(document: Option<(String, String)>, entries: &[(&str, String)]) -> TargetFacts {
        TargetFacts {
            kind: "Deployment",
            name: "postfix".into(),
            replicas: 3,
            mta_annotation: Some("Postfix".into()),
            document,
            restart: None,
            report: Some(
                entries
                    .iter()
                    .map(|(pod, e)| (pod.to_string(), e.clone()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_target_answers_its_first_rule_with_pods_applied_and_the_largest_queue() {
        let (text, hash) = document(vec![
            rule(Mode::TempFail, "outage", Some(&["a.example", "b.example"])),
            rule(Mode::AcceptAndQueue, "older", None),
        ]);
        let facts = facts(
            Some((text, hash.clone())),
            &[
                ("p1", entry(&hash, 3, 40, false)),
                ("p2", entry(&hash, 7, 12, false)),
                ("p3", entry(&hash, 1, 90, true)),
                ("p4", entry("stale", 0, 0, false)),
            ],
        );
        let view = target_view(&incident(MailIncidentStatus::default()), &facts);
        assert_eq!(mode_cell(&view), "TempFail (2 domains)");
        assert_eq!(view.from.as_deref(), Some("outage"));
        assert_eq!(view.incidents, ["outage", "older"]);
        assert_eq!((view.pods_applied, view.pods_total), (2, 3));
        assert_eq!(view.queued_messages, Some(7));
        assert_eq!(view.oldest_message_age_seconds, Some(90));
        assert_eq!(view.release, Release::Holding);
        assert_eq!(view.mta.as_deref(), Some("Postfix"));
    }

    #[test]
    fn a_target_without_a_document_is_releasing_while_its_agents_report_queued_mail() {
        let incident = incident(MailIncidentStatus::default());
        let releasing = target_view(
            &incident,
            &facts(
                None,
                &[
                    ("p1", entry("", 4, 30, false)),
                    ("p2", entry("", 9, 3, false)),
                ],
            ),
        );
        assert_eq!(releasing.mode, "Normal");
        assert_eq!(releasing.release, Release::Releasing { messages_left: 9 });
        assert_eq!(release_cell(releasing.release), "releasing, 9 left");
        let drained = target_view(&incident, &facts(None, &[("p1", entry("", 0, 0, false))]));
        assert_eq!(drained.release, Release::Normal);
        let no_report = TargetFacts {
            report: None,
            ..facts(None, &[])
        };
        let normal = target_view(&incident, &no_report);
        assert_eq!(
            (normal.release, normal.queued_messages),
            (Release::Normal, None)
        );
    }

    #[test]
    fn a_restart_delivery_target_answers_the_mode_of_its_pod_template() {
        let incident = incident(MailIncidentStatus::default());
        let restarting = TargetFacts {
            restart: Some(RestartFacts {
                mode: Some("TempFail".into()),
                incident: Some("outage".into()),
                updated: 2,
            }),
            report: None,
            ..facts(None, &[])
        };
        let view = target_view(&incident, &restarting);
        assert_eq!(
            (view.mode.as_str(), view.from.as_deref()),
            ("TempFail", Some("outage"))
        );
        assert_eq!((view.pods_applied, view.pods_total), (2, 3));
        let normal = TargetFacts {
            restart: Some(RestartFacts::default()),
            report: None,
            ..facts(None, &[])
        };
        assert_eq!(target_view(&incident, &normal).mode, "Normal");
    }

    #[test]
    fn problems_name_failed_escalated_and_superseded_targets() {
        let status: MailIncidentStatus = serde_json::from_value(serde_json::json!({
            "failedTargets": [{"target": "Deployment/a", "reason": "queue on emptyDir"}],
            "escalatedTargets": [{"target": "Deployment/postfix", "reason": "1200 messages queued"}],
            "supersededBy": [{"incident": "wider", "count": 1, "targets": ["Deployment/b"], "domains": ["x.example"]}],
        }))
        .unwrap();
        let incident = incident(status);
        let view = incident_view(&incident, &[facts(None, &[])]);
        assert_eq!(
            view.problems,
            [
                "Deployment/a failed: queue on emptyDir",
                "Deployment/postfix escalated to TempFail: 1200 messages queued",
                "Deployment/b follows incident wider for x.example",
            ]
        );
        assert!(view.targets[0].escalated);
    }

    #[test]
    fn the_table_shows_one_aligned_line_per_target_and_json_every_field() {
        let (text, hash) = document(vec![rule(Mode::TempFail, "outage", None)]);
        let view = incident_view(
            &incident(MailIncidentStatus::default()),
            &[facts(
                Some((text, hash.clone())),
                &[("p1", entry(&hash, 2, 75, false))],
            )],
        );
        let text = render(std::slice::from_ref(&view), false, true, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Incident mail/outage: TempFail (now Unknown)");
        assert_eq!(
            lines[1],
            "WORKLOAD             MTA       MODE       FROM     PODS   QUEUED   OLDEST   ESCALATED   RELEASE"
        );
        assert_eq!(
            lines[2],
            "Deployment/postfix   Postfix   TempFail   outage   1/3    2        75s      no          holding"
        );
        let json: serde_json::Value = serde_json::from_str(
            &format_views(
                &[view],
                OutputArgs {
                    output: Format::Json,
                    no_headers: false,
                },
                true,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["kind"], "MailIncidentStatusList");
        let target = &json["items"][0]["targets"][0];
        assert_eq!(target["workload"], "Deployment/postfix");
        assert_eq!(target["podsApplied"], 1);
        assert_eq!(target["queuedMessages"], 2);
        assert_eq!(target["release"]["state"], "holding");
        assert!(!json.to_string().contains('\x1b'), "no colour in JSON");
    }

    #[test]
    fn colour_marks_pods_applied_and_escalations() {
        assert_eq!(target_colour("PODS", "3/3"), Some(Colour::Green));
        assert_eq!(target_colour("PODS", "1/3"), Some(Colour::Yellow));
        assert_eq!(target_colour("ESCALATED", "yes"), Some(Colour::Red));
        assert_eq!(target_colour("ESCALATED", "no"), None);
        assert_eq!(
            target_colour("RELEASE", "releasing, 3 left"),
            Some(Colour::Yellow)
        );
        assert_eq!(condition_colour("STATUS", "True"), Some(Colour::Green));
    }
}
