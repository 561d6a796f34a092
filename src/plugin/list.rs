//! `list`: the incidents of a namespace (or every namespace with `-A`), as
//! `kubectl get mailinc` shows them, with the Reason in `-o wide`.

use super::{
    Connection, ConnectionArgs, Format, OutputArgs, PluginError, Table, output::print_objects,
};
use crate::api::MailIncident;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt, api::ListParams};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(connection: &ConnectionArgs, args: &ListArgs) -> Result<(), PluginError> {
    let cluster = Connection::open(connection).await?;
    let (api, namespace): (Api<MailIncident>, Option<&str>) = if connection.all_namespaces {
        (Api::all(cluster.client.clone()), None)
    } else {
        (
            Api::namespaced(cluster.client.clone(), &cluster.namespace),
            Some(cluster.namespace.as_str()),
        )
    };
    let mut incidents = api
        .list(&ListParams::default())
        .await
        .map_err(|e| PluginError::from_api(e, "list", "mailincidents", namespace))?
        .items;
    incidents.sort_by_key(|i| (i.namespace().unwrap_or_default(), i.name_any()));
    if incidents.is_empty() && matches!(args.output.output, Format::Table | Format::Wide) {
        match namespace {
            Some(namespace) => eprintln!("No MailIncident in namespace {namespace}."),
            None => eprintln!("No MailIncident in any namespace."),
        }
        return Ok(());
    }
    let table = table(
        &incidents,
        connection.all_namespaces,
        args.output.output == Format::Wide,
        Timestamp::now(),
    );
    print_objects(&incidents, &table, args.output)
}

/// The table of `incidents` at `now`.
pub fn table(incidents: &[MailIncident], namespaces: bool, wide: bool, now: Timestamp) -> Table {
    let mut header = vec![];
    if namespaces {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME", "MODE", "SCOPE", "READY", "APPLIED", "STARTS", "EXPIRES", "AGE",
    ]);
    if wide {
        header.push("REASON");
    }
    let mut table = Table::new(&header);
    for incident in incidents {
        let status = incident.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
            .unwrap_or_default();
        let mut row = vec![];
        if namespaces {
            row.push(incident.namespace().unwrap_or_default());
        }
        row.extend([
            incident.name_any(),
            status
                .effective_mode
                .map(|m| m.to_string())
                .unwrap_or_default(),
            status.scope.clone().unwrap_or_default(),
            ready,
            status.targets.map(|t| t.summary).unwrap_or_default(),
            status
                .starts_at
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            status
                .expires_at
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            incident
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| age(now.as_second() - t.0.as_second()))
                .unwrap_or_default(),
        ]);
        if wide {
            row.push(incident.spec.reason.clone());
        }
        table.push(row);
    }
    table
}

/// A duration in seconds as kubectl shows ages: `45s`, `5m12s`, `3h`, `2d4h`, `40d`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if d < 2 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_writes_them() {
        for (seconds, shown) in [
            (45, "45s"),
            (312, "5m12s"),
            (1800, "30m"),
            (4 * 3600 + 600, "4h10m"),
            (30 * 3600, "30h"),
            (2 * 86_400 + 4 * 3600, "2d4h"),
            (40 * 86_400, "40d"),
            (-5, "0s"),
        ] {
            assert_eq!(age(seconds), shown, "{seconds}");
        }
    }
}
