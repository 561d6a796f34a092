//! `resolve`: ends an incident (spec.resolved, by a precise patch under the plugin's
//! field manager), keeping the object as the record. `--wait` follows the release: every
//! target back to normal service (Ready, reason Resolved) and the held mail its agents
//! report drained, with the messages left per target.

use super::{
    Connection, ConnectionArgs, Format, OutputArgs, PluginError,
    write_common::{
        Look, bar, current_ready, fetch_incident, follow, matched_workloads, merge_spec,
        one_namespace, parse_span, print_written,
    },
};
use crate::api::{
    MailIncident,
    mode_document::{AgentReport, document_name, report_name},
    validation::selector_of,
};
use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  # End the incident; the MTAs release the held mail and return to normal service:
  kubectl mail-incident resolve storage-outage -n mail
  # And follow the release until the held mail is delivered (exit 1 on timeout):
  kubectl mail-incident resolve storage-outage -n mail --wait --timeout 30m")]
pub struct ResolveArgs {
    /// The incident's name.
    pub name: String,
    /// Follow the release until every target is back to normal and its held mail is
    /// delivered.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "SPAN", default_value = "10m", requires = "wait")]
    pub timeout: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(connection: &ConnectionArgs, args: &ResolveArgs) -> Result<(), PluginError> {
    one_namespace(connection)?;
    let timeout = parse_span("--timeout", &args.timeout)?;
    let cluster = Connection::open(connection).await?;
    let incident = fetch_incident(&cluster, &args.name).await?;
    // Only --wait reads workloads and reports (a user allowed to resolve may not be
    // allowed those); before resolving, to know how much mail is held.
    let (targets, held_before) = if args.wait {
        let targets = matched_targets(&cluster, &incident).await?;
        let held = held_mail(&cluster, &targets).await?;
        (targets, held)
    } else {
        Default::default()
    };
    if incident.spec.resolved {
        print_written(
            &incident,
            &format!("MailIncident {:?} is resolved already.", args.name),
            args.output,
        )?;
    } else {
        let stored = merge_spec(
            &cluster,
            &args.name,
            incident.resource_version().as_deref(),
            serde_json::json!({"resolved": true}),
        )
        .await?;
        print_written(
            &stored,
            &format!(
                "MailIncident {:?} resolved: its targets return to normal service and release the held mail.",
                args.name
            ),
            args.output,
        )?;
    }
    if !args.wait {
        return Ok(());
    }
    let mut peaks: BTreeMap<String, u64> = held_before
        .iter()
        .filter_map(|(t, h)| h.map(|h| (t.clone(), h)))
        .collect();
    let output = args.output.output;
    follow(
        &cluster,
        &args.name,
        timeout,
        output,
        async |incident: &MailIncident| {
            let now = held_mail(&cluster, &targets).await?;
            for (target, held) in &now {
                if let Some(held) = held {
                    let peak = peaks.entry(target.clone()).or_default();
                    *peak = (*peak).max(*held);
                }
            }
            Ok(release_look(current_ready(incident), &now, &peaks))
        },
    )
    .await?;
    // The controller keeps a target's report until each of its agents says its release
    // is over: a report seen with held mail and gone since was released to the end.
    let released: u64 = peaks.values().sum();
    let done = format!(
        "MailIncident {:?}: every target is back to normal service, and the {released} held message(s) reported were delivered.",
        args.name
    );
    if matches!(output, Format::Table | Format::Wide) {
        println!("{done}");
    } else {
        eprintln!("{done}");
    }
    Ok(())
}

/// `Kind/name` of every Deployment and StatefulSet the incident's selector matches.
async fn matched_targets(
    cluster: &Connection,
    incident: &MailIncident,
) -> Result<Vec<(&'static str, String)>, PluginError> {
    // An incident with an invalid spec is resolved all the same (the controller reads
    // spec.resolved whatever else is wrong); it just has no targets to follow.
    let Ok(selector) = selector_of(&incident.spec.targets) else {
        return Ok(vec![]);
    };
    Ok(matched_workloads(cluster, &selector)
        .await?
        .into_iter()
        .map(|w| (w.kind, w.name))
        .collect())
}

/// Messages queued per target (`Kind/name`), summed over its pods' report entries;
/// `None` where the target has no report object.
async fn held_mail(
    cluster: &Connection,
    targets: &[(&'static str, String)],
) -> Result<BTreeMap<String, Option<u64>>, PluginError> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut held = BTreeMap::new();
    for (kind, name) in targets {
        let report = config_maps
            .get_opt(&report_name(&document_name(kind, name)))
            .await
            .map_err(|e| PluginError::from_api(e, "get", "configmaps", Some(&cluster.namespace)))?;
        held.insert(
            format!("{kind}/{name}"),
            report.map(|r| queued_messages(&r.data.unwrap_or_default())),
        );
    }
    Ok(held)
}

/// The messages a report's entries say are queued, over every pod; an entry an agent
/// wrote in a form this plugin cannot read counts as none.
pub fn queued_messages(entries: &BTreeMap<String, String>) -> u64 {
    entries
        .values()
        .filter_map(|text| serde_json::from_str::<AgentReport>(text).ok())
        .filter_map(|report| report.queue)
        .fold(0u64, |sum, queue| sum.saturating_add(queue.messages))
}

/// Where a release stands: done once Ready says Resolved and no target reports held mail.
/// `held`: messages left per target (`None`: no report); `peaks`: the most seen.
pub fn release_look(
    ready: Option<&Condition>,
    held: &BTreeMap<String, Option<u64>>,
    peaks: &BTreeMap<String, u64>,
) -> Look {
    let restored = ready.is_some_and(|c| c.status == "True" && c.reason == "Resolved");
    let state = ready.map_or_else(
        || "waiting for the controller".to_string(),
        |c| c.message.clone(),
    );
    let per_target: Vec<String> = held
        .iter()
        .map(|(target, left)| match left {
            Some(left) => {
                let peak = peaks.get(target).copied().unwrap_or(*left).max(*left);
                format!(
                    "{target} {} {left} left",
                    bar(peak.saturating_sub(*left), peak, 10)
                )
            }
            None => format!("{target} no report"),
        })
        .collect();
    let line = format!("{state}; held mail: {}", per_target.join(", "));
    let still_held: Vec<String> = held
        .iter()
        .filter_map(|(target, left)| match left {
            Some(n) if *n > 0 => Some(format!("{target}: {n} message(s) still held")),
            _ => None,
        })
        .collect();
    let left = if !restored {
        Some(format!("not back to normal service yet: {state}"))
    } else if !still_held.is_empty() {
        Some(still_held.join("; "))
    } else {
        None
    };
    Look { line, left }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn ready(status: &str, reason: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason}: message"),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    #[test]
    fn queued_messages_add_up_over_pods_and_skip_unreadable_entries() {
        let entries: BTreeMap<String, String> = [
            (
                "a".to_string(),
                r#"{"hash":"h","queue":{"messages":3,"byQueue":{},"oldestAgeSeconds":9}}"#
                    .to_string(),
            ),
            (
                "b".to_string(),
                r#"{"hash":"h","queue":{"messages":4,"byQueue":{},"oldestAgeSeconds":1}}"#
                    .to_string(),
            ),
            ("c".to_string(), r#"{"hash":"h"}"#.to_string()),
            ("d".to_string(), "not json".to_string()),
        ]
        .into();
        assert_eq!(queued_messages(&entries), 7);
    }

    #[test]
    fn done_only_when_resolved_and_nothing_held() {
        let held: BTreeMap<String, Option<u64>> = [
            ("Deployment/a".to_string(), Some(4)),
            ("Deployment/b".to_string(), None),
        ]
        .into();
        let peaks: BTreeMap<String, u64> = [("Deployment/a".to_string(), 8)].into();
        let look = release_look(Some(&ready("True", "Resolved")), &held, &peaks);
        assert_eq!(
            look.line,
            "Resolved: message; held mail: Deployment/a [#####.....] 4 left, Deployment/b no report"
        );
        assert_eq!(
            look.left.as_deref(),
            Some("Deployment/a: 4 message(s) still held")
        );
        let releasing = release_look(Some(&ready("False", "Resolved")), &held, &peaks);
        assert!(
            releasing
                .left
                .unwrap()
                .starts_with("not back to normal service yet")
        );
        let drained: BTreeMap<String, Option<u64>> = [
            ("Deployment/a".to_string(), Some(0)),
            ("Deployment/b".to_string(), None),
        ]
        .into();
        assert!(
            release_look(Some(&ready("True", "Resolved")), &drained, &peaks)
                .left
                .is_none()
        );
        assert!(release_look(None, &drained, &peaks).left.is_some());
    }
}
