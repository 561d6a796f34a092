//! What the writing commands (declare, extend, escalate, resolve) share: finding the
//! incident, parsing times and spans as a user types them, the precise patches they
//! write, and following an incident until it is done, drawn as a terminal user or a
//! script wants it.

use super::{
    Connection, ConnectionArgs, FIELD_MANAGER, Format, OutputArgs, PluginError, Table,
    output::print_objects,
};
use crate::{
    api::{MailIncident, MailIncidentSpec, TimeSpan, validation},
    webhook::admission::{BOUNCE_VERB, refusal},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

/// Refuses before anything is written, or asked, when the user may not make MTAs bounce
/// mail in the namespace (the verb `bounce`, which the admission webhook checks too).
pub async fn check_may_bounce(cluster: &Connection) -> Result<(), PluginError> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("mailops.dev".into()),
                resource: Some("mailincidents".into()),
                verb: Some(BOUNCE_VERB.into()),
                namespace: Some(cluster.namespace.clone()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(cluster.client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| PluginError::from_api(e, "create", "selfsubjectaccessreviews", None))?;
    if answer.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        Err(PluginError::Refused(refusal(
            "you",
            &cluster.namespace,
            false,
        )))
    }
}

/// Writes act in one namespace: `-A`, which lists across them, is refused rather than
/// ignored.
pub fn one_namespace(connection: &ConnectionArgs) -> Result<(), PluginError> {
    if connection.all_namespaces {
        return Err(PluginError::Refused(
            "-A (every namespace) is for list and status; a write acts in one namespace: use -n"
                .into(),
        ));
    }
    Ok(())
}

/// The incident `name` in the connection's namespace; NotFound names the namespaces that
/// have one of that name (when the user may list across namespaces).
pub async fn fetch_incident(cluster: &Connection, name: &str) -> Result<MailIncident, PluginError> {
    let api: Api<MailIncident> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match api.get_opt(name).await {
        Ok(Some(incident)) => Ok(incident),
        Ok(None) => Err(PluginError::NotFound {
            name: name.into(),
            namespace: cluster.namespace.clone(),
            elsewhere: namespaces_with(cluster, name).await,
        }),
        Err(error) => Err(PluginError::from_api(
            error,
            "get",
            "mailincidents",
            Some(&cluster.namespace),
        )),
    }
}

/// Namespaces holding an incident named `name`; none when listing across namespaces is
/// not permitted (the NotFound message then points at `list -A`).
async fn namespaces_with(cluster: &Connection, name: &str) -> Vec<String> {
    let all: Api<MailIncident> = Api::all(cluster.client.clone());
    let named = ListParams::default().fields(&format!("metadata.name={name}"));
    let mut found: Vec<String> = all
        .list(&named)
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter_map(|i| i.metadata.namespace)
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Checks `spec` as the controller and the API server would, `created` being the
/// object's creation (its start without spec.startsAt): the controller's words first,
/// then the CEL rules the API server runs.
pub fn check_spec(
    name: &str,
    spec: &MailIncidentSpec,
    created: Timestamp,
) -> Result<validation::ValidIncident, PluginError> {
    let valid = validation::validate(spec, Some(created)).map_err(PluginError::Invalid)?;
    MailIncident::new(name, spec.clone())
        .validate_cel()
        .map_err(|e| PluginError::Refused(format!("the API server would refuse it: {e}")))?;
    Ok(valid)
}

/// A merge patch of the incident `name` under [`FIELD_MANAGER`], only if it is still at
/// `resource_version` (a concurrent change makes it a conflict rather than lost).
pub async fn merge_spec(
    cluster: &Connection,
    name: &str,
    resource_version: Option<&str>,
    spec_patch: serde_json::Value,
) -> Result<MailIncident, PluginError> {
    let api: Api<MailIncident> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": spec_patch,
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 409 => PluginError::Refused(format!(
                "MailIncident {name:?} changed while this command ran; run it again to act on the new version"
            )),
            _ => PluginError::from_api(error, "patch", "mailincidents", Some(&cluster.namespace)),
        })
}

/// A time as typed after `--until` or `--starts-at`: RFC 3339 (`2026-12-07T08:00:00Z`).
pub fn parse_time(flag: &str, text: &str) -> Result<Timestamp, PluginError> {
    text.parse::<Timestamp>().map_err(|e| {
        PluginError::Refused(format!(
            "{flag} {text:?} is not an RFC 3339 time such as 2026-12-07T08:00:00Z: {e}"
        ))
    })
}

/// A span as typed after `--for`, `--by` or `--timeout`: a number and one unit of s, m,
/// h, d, w.
pub fn parse_span(flag: &str, text: &str) -> Result<TimeSpan, PluginError> {
    text.parse::<TimeSpan>()
        .map_err(|e| PluginError::Refused(format!("{flag} {text:?}: {e}")))
}

/// The incident's start: status.startsAt (a scheduled one), else its creation.
pub fn start_of(incident: &MailIncident) -> Option<Timestamp> {
    incident
        .status
        .as_ref()
        .and_then(|s| s.starts_at.as_ref())
        .or(incident.spec.starts_at.as_ref())
        .or(incident.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// The Ready condition, if the controller wrote one for the incident's current spec.
pub fn current_ready(incident: &MailIncident) -> Option<&Condition> {
    let status = incident.status.as_ref()?;
    let current = status.observed_generation.is_some()
        && status.observed_generation == incident.metadata.generation;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .filter(|_| current)
}

/// Where progress goes: one line redrawn in place on a terminal, or a new line each time
/// it changes when piped (so a log holds every step and no control characters). With
/// `-o json`, `yaml` or `name` stdout holds only the objects, so progress goes to stderr.
pub struct Progress {
    to_stderr: bool,
    terminal: bool,
    last: Option<String>,
}

impl Progress {
    pub fn new(output: Format) -> Self {
        let to_stderr = !matches!(output, Format::Table | Format::Wide);
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Self {
            to_stderr,
            terminal,
            last: None,
        }
    }

    fn out(&self) -> Box<dyn Write> {
        if self.to_stderr {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        }
    }

    pub fn show(&mut self, line: &str) {
        if self.last.as_deref() == Some(line) {
            return;
        }
        let mut out = self.out();
        // Printing progress is best effort: a closed stream must not stop the wait.
        if self.terminal {
            let _ = write!(out, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        self.last = Some(line.to_string());
    }

    /// Ends the redrawn line, so what follows starts on a line of its own.
    pub fn finish(&mut self) {
        if self.terminal && self.last.is_some() {
            let _ = writeln!(self.out());
        }
        self.last = None;
    }
}

/// Prints what a write stored: `message` in a table's place, else the object as `-o`
/// asks (JSON or YAML as a List, or its name).
pub fn print_written(
    stored: &MailIncident,
    message: &str,
    output: OutputArgs,
) -> Result<(), PluginError> {
    match output.output {
        Format::Table | Format::Wide => {
            println!("{message}");
            Ok(())
        }
        _ => print_objects(std::slice::from_ref(stored), &Table::new(&[]), output),
    }
}

/// Polls the incident every second, showing `look`'s line, until `look` says it is done
/// (`Ok(line)`), or `timeout` passes: then the error names what `look` last said was left.
pub async fn follow(
    cluster: &Connection,
    name: &str,
    timeout: TimeSpan,
    output: Format,
    mut look: impl AsyncFnMut(&MailIncident) -> Result<Look, PluginError>,
) -> Result<(), PluginError> {
    let deadline = Instant::now() + timeout.as_duration();
    let mut progress = Progress::new(output);
    loop {
        let incident = fetch_incident(cluster, name).await?;
        let Look { line, left } = look(&incident).await?;
        progress.show(&line);
        match left {
            None => {
                progress.finish();
                return Ok(());
            }
            Some(left) if Instant::now() >= deadline => {
                progress.finish();
                return Err(PluginError::Timeout(format!(
                    "after {timeout}, MailIncident {name:?}: {left}"
                )));
            }
            Some(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// One look at an incident being followed: its progress line, and what is left (`None`:
/// done).
pub struct Look {
    pub line: String,
    pub left: Option<String>,
}

/// A bar of `width` cells, `done` of `total` filled: `[#####.....]`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        let share = u128::from(done.min(total)) * width as u128 / u128::from(total);
        usize::try_from(share).unwrap_or(width)
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// A Deployment or StatefulSet a selector matches: kind, name, annotations and desired
/// replicas.
pub struct MatchedWorkload {
    pub kind: &'static str,
    pub name: String,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub replicas: i32,
}

/// The Deployments and StatefulSets of the connection's namespace that `selector` matches.
pub async fn matched_workloads(
    cluster: &Connection,
    selector: &kube::core::Selector,
) -> Result<Vec<MatchedWorkload>, PluginError> {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use kube::ResourceExt;
    let selected = ListParams::default().labels_from(selector);
    let ns = cluster.namespace.as_str();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), ns);
    let mut workloads: Vec<MatchedWorkload> = deployments
        .list(&selected)
        .await
        .map_err(|e| PluginError::from_api(e, "list", "deployments.apps", Some(ns)))?
        .items
        .iter()
        .map(|d| MatchedWorkload {
            kind: "Deployment",
            name: d.name_any(),
            annotations: d.annotations().clone(),
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        })
        .collect();
    workloads.extend(
        stateful_sets
            .list(&selected)
            .await
            .map_err(|e| PluginError::from_api(e, "list", "statefulsets.apps", Some(ns)))?
            .items
            .iter()
            .map(|s| MatchedWorkload {
                kind: "StatefulSet",
                name: s.name_any(),
                annotations: s.annotations().clone(),
                replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            }),
    );
    Ok(workloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_are_read_as_typed_or_refused_with_the_flag() {
        assert_eq!(
            parse_time("--until", "2026-12-07T08:00:00Z")
                .unwrap()
                .as_second(),
            1_796_630_400
        );
        let refused = parse_time("--until", "tomorrow").unwrap_err().to_string();
        assert!(refused.contains("--until \"tomorrow\""), "{refused}");
        assert_eq!(parse_span("--by", "6h").unwrap().seconds(), 21_600);
        assert!(parse_span("--by", "6 hours").is_err());
        assert!(parse_span("--by", "0h").is_err());
    }

    #[test]
    fn a_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(bar(0, 10, 10), "[..........]");
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(12, 10, 10), "[##########]");
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(bar(u64::MAX, u64::MAX, 3), "[###]");
    }
}
