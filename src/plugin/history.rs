//! `history NAME`: what happened to an incident, oldest first: its mode transitions
//! (`status.history`, the last 20) and its Events (core/v1 Events whose involvedObject is
//! the incident), merged on time. `-o json|yaml` prints a `MailIncidentHistory` whose
//! `entries` are [`Entry`]s.

use super::{
    Connection, ConnectionArgs, Format, OutputArgs, PluginError, Table,
    look_style::{Colour, render_painted, stdout_is_terminal},
};
use crate::api::{EffectiveMode, MailIncident, Transition};
use k8s_openapi::{api::core::v1::Event, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kubectl mail-incident history storage-outage -n mail\n  \
                        kubectl mail-incident history storage-outage -o json"
)]
pub struct HistoryArgs {
    /// The incident.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// RFC 3339; absent for an event that carries no time.
    pub time: Option<Timestamp>,
    pub kind: EntryKind,
    /// Who made a transition, as the admission webhook recorded (events name theirs in
    /// their message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub reason: String,
    pub message: String,
    /// How many times the API server counted the event (1 for a transition).
    pub count: i32,
}

/// A mode transition, or an event by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum EntryKind {
    Transition,
    Normal,
    Warning,
}

crate::api::names::named_variants!(
    EntryKind,
    "history entry kind",
    [Transition, Normal, Warning]
);

fn mode_name(mode: Option<EffectiveMode>) -> String {
    mode.map_or_else(|| "nothing".into(), |m| m.to_string())
}

/// The transitions and events of an incident, oldest first; at one instant a transition
/// comes before the events it caused.
pub fn entries(transitions: &[Transition], events: &[Event]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = transitions
        .iter()
        .map(|t| Entry {
            time: Some(t.at.0),
            kind: EntryKind::Transition,
            by: t.by.clone(),
            reason: t.reason.clone(),
            message: format!("{} -> {}", mode_name(t.from), mode_name(Some(t.to))),
            count: 1,
        })
        .collect();
    entries.extend(events.iter().map(|e| {
        Entry {
            // The newest sighting of a repeated event: when it last happened.
            time: e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            kind: if e.type_.as_deref() == Some("Warning") {
                EntryKind::Warning
            } else {
                EntryKind::Normal
            },
            by: None,
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1).max(1),
        }
    }));
    entries.sort_by_key(|e| (e.time, e.kind));
    entries
}

pub fn table(entries: &[Entry]) -> Table {
    let mut table = Table::new(&["TIME", "KIND", "BY", "REASON", "MESSAGE"]);
    for entry in entries {
        let message = if entry.count > 1 {
            format!("{} (x{})", entry.message, entry.count)
        } else {
            entry.message.clone()
        };
        table.push(vec![
            // To the second, as kubectl shows times; JSON and YAML keep the precision.
            entry
                .time
                .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default(),
            entry.kind.to_string(),
            entry.by.clone().unwrap_or_default(),
            entry.reason.clone(),
            message,
        ]);
    }
    table
}

fn colour(header: &str, cell: &str) -> Option<Colour> {
    match (header, cell) {
        ("KIND", "Warning") => Some(Colour::Yellow),
        ("KIND", "Transition") => Some(Colour::Green),
        _ => None,
    }
}

/// The text of `entries` in `-o` format.
pub fn format_entries(
    namespace: &str,
    name: &str,
    entries: &[Entry],
    output: OutputArgs,
    colour_on: bool,
) -> Result<String, PluginError> {
    let document = || {
        serde_json::json!({
            "apiVersion": "mailops.dev/v1alpha1",
            "kind": "MailIncidentHistory",
            "metadata": {"namespace": namespace, "name": name},
            "entries": entries,
        })
    };
    Ok(match output.output {
        Format::Table | Format::Wide => {
            render_painted(&table(entries), !output.no_headers, colour_on, colour)
        }
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&document())
                .map_err(|e| PluginError::Refused(e.to_string()))?
        ),
        Format::Yaml => {
            serde_yaml::to_string(&document()).map_err(|e| PluginError::Refused(e.to_string()))?
        }
        Format::Name => format!("mailincident.mailops.dev/{name}\n"),
    })
}

pub async fn run(connection: &ConnectionArgs, args: &HistoryArgs) -> Result<(), PluginError> {
    let cluster = Connection::open(connection).await?;
    let namespace = cluster.namespace.as_str();
    let incidents: Api<MailIncident> = Api::namespaced(cluster.client.clone(), namespace);
    let Some(incident) = incidents
        .get_opt(&args.name)
        .await
        .map_err(|e| PluginError::from_api(e, "get", "mailincidents", Some(namespace)))?
    else {
        let elsewhere = Api::<MailIncident>::all(cluster.client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={}", args.name)))
            .await
            .map(|l| l.items.iter().filter_map(|i| i.namespace()).collect())
            .unwrap_or_default();
        return Err(PluginError::NotFound {
            name: args.name.clone(),
            namespace: namespace.into(),
            elsewhere,
        });
    };
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let uid = incident.uid().unwrap_or_default();
    let mine = ListParams::default().fields(&format!(
        "involvedObject.kind=MailIncident,involvedObject.name={},involvedObject.uid={uid}",
        args.name
    ));
    let events = events
        .list(&mine)
        .await
        .map_err(|e| PluginError::from_api(e, "list", "events", Some(namespace)))?
        .items;
    let history = incident.status.map(|s| s.history).unwrap_or_default();
    let entries = entries(&history, &events);
    print!(
        "{}",
        format_entries(
            namespace,
            &args.name,
            &entries,
            args.output,
            stdout_is_terminal()
        )?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn event(second: i64, type_: &str, reason: &str, count: i32) -> Event {
        Event {
            last_timestamp: Some(at(second)),
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some(format!("{reason} said")),
            count: Some(count),
            ..Event::default()
        }
    }

    #[test]
    fn transitions_and_events_merge_oldest_first_a_transition_before_its_events() {
        let transitions = vec![
            Transition {
                from: None,
                to: EffectiveMode::TempFail,
                at: at(0),
                reason: "Declared".into(),
                by: Some("lead".into()),
            },
            Transition {
                from: Some(EffectiveMode::TempFail),
                to: EffectiveMode::Normal,
                at: at(60),
                reason: "Resolved".into(),
                by: None,
            },
        ];
        let events = vec![
            event(60, "Normal", "ModeChanged", 1),
            event(30, "Warning", "Drift", 3),
        ];
        let merged = entries(&transitions, &events);
        let seen: Vec<(EntryKind, &str)> =
            merged.iter().map(|e| (e.kind, e.reason.as_str())).collect();
        assert_eq!(
            seen,
            [
                (EntryKind::Transition, "Declared"),
                (EntryKind::Warning, "Drift"),
                (EntryKind::Transition, "Resolved"),
                (EntryKind::Normal, "ModeChanged"),
            ]
        );
        assert_eq!(merged[0].message, "nothing -> TempFail");
        let text = table(&merged).render(true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                   KIND         BY     REASON        MESSAGE"
        );
        assert_eq!(
            lines[1],
            "2027-01-15T08:00:00Z   Transition   lead   Declared      nothing -> TempFail"
        );
        assert_eq!(
            lines[2],
            "2027-01-15T08:00:30Z   Warning             Drift         Drift said (x3)"
        );
    }

    #[test]
    fn json_carries_every_entry_and_no_colour() {
        let merged = entries(&[], &[event(5, "Warning", "Escalated", 1)]);
        let output = OutputArgs {
            output: Format::Json,
            no_headers: false,
        };
        let json: serde_json::Value =
            serde_json::from_str(&format_entries("mail", "outage", &merged, output, true).unwrap())
                .unwrap();
        assert_eq!(json["kind"], "MailIncidentHistory");
        assert_eq!(json["entries"][0]["kind"], "Warning");
        assert_eq!(json["entries"][0]["time"], "2027-01-15T08:00:05Z");
        let table = OutputArgs {
            output: Format::Table,
            no_headers: false,
        };
        let painted = format_entries("mail", "outage", &merged, table, true).unwrap();
        assert!(painted.contains("\x1b[33mWarning\x1b[0m"), "{painted:?}");
    }
}
