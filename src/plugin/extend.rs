//! `extend`: moves an incident's end, never past its 100-day bound and never earlier
//! unless asked, by a precise patch of spec.expiresAt (removing spec.duration, its
//! alternative) under the plugin's field manager. The same rules as the Argo CD extend
//! action (deploy/argocd).

use super::{
    Connection, ConnectionArgs, OutputArgs, PluginError,
    write_common::{
        check_spec, fetch_incident, merge_spec, one_namespace, parse_span, parse_time,
        print_written, start_of,
    },
};
use crate::api::{EffectiveMode, MailIncident, TimeSpan, validation::latest_expiry};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("end").required(true).args(["by", "until"])),
    after_help = "Examples:
  # Six more hours:
  kubectl mail-incident extend storage-outage -n mail --by 6h
  # Until a time (at most 100 days after the incident's start):
  kubectl mail-incident extend storage-outage -n mail --until 2026-12-09T18:00:00Z
  # An earlier end than the current one:
  kubectl mail-incident extend storage-outage -n mail --until 2026-12-07T12:00:00Z --allow-shorter"
)]
pub struct ExtendArgs {
    /// The incident's name.
    pub name: String,
    /// Move the end later by this span (number and s, m, h, d or w), from the current end
    /// (or from now, for an incident without one).
    #[arg(long, value_name = "SPAN")]
    pub by: Option<String>,
    /// The new end (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Accept an end earlier than the current one.
    #[arg(long)]
    pub allow_shorter: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What the user asked the end to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    By(TimeSpan),
    Until(Timestamp),
}

pub async fn run(connection: &ConnectionArgs, args: &ExtendArgs) -> Result<(), PluginError> {
    one_namespace(connection)?;
    let change = match (&args.by, &args.until) {
        (Some(by), _) => Change::By(parse_span("--by", by)?),
        (None, Some(until)) => Change::Until(parse_time("--until", until)?),
        (None, None) => return Err(PluginError::Refused("give --by or --until".into())),
    };
    let cluster = Connection::open(connection).await?;
    let incident = fetch_incident(&cluster, &args.name).await?;
    let now = Timestamp::now();
    extendable(&incident, now).map_err(PluginError::Refused)?;
    let current = current_end(&incident);
    let start = start_of(&incident).ok_or_else(|| {
        PluginError::Refused(format!(
            "MailIncident {:?} has no creation time yet; try again in a moment",
            args.name
        ))
    })?;
    let end =
        new_end(change, current, start, now, args.allow_shorter).map_err(PluginError::Refused)?;
    let mut spec = incident.spec.clone();
    spec.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(end));
    spec.duration = None;
    let created = incident
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(start, |t| t.0);
    check_spec(&args.name, &spec, created)?;
    let stored = merge_spec(
        &cluster,
        &args.name,
        incident.resource_version().as_deref(),
        serde_json::json!({"expiresAt": end.to_string(), "duration": null}),
    )
    .await?;
    let before = current.map_or_else(|| "no end".to_string(), |t| t.to_string());
    print_written(
        &stored,
        &format!(
            "MailIncident {:?} now ends at {end} (was {before}; at most {} allowed).",
            stored.name_any(),
            latest_expiry(start)
        ),
        args.output,
    )
}

/// Whether the incident's end may move now: not once it ended (resolved, being deleted,
/// or past its end: a new outage takes a new incident), and not before the controller has
/// seen its latest change (the current end would be stale).
pub fn extendable(incident: &MailIncident, now: Timestamp) -> Result<(), String> {
    if incident.spec.resolved {
        return Err("the incident is resolved; declare a new one".into());
    }
    if incident.metadata.deletion_timestamp.is_some() {
        return Err("the incident is being deleted; declare a new one".into());
    }
    let status = incident.status.clone().unwrap_or_default();
    if status.observed_generation.is_none()
        || status.observed_generation != incident.metadata.generation
    {
        return Err(
            "the controller has not yet seen the latest change to this incident; try again in a moment"
                .into(),
        );
    }
    match status.expires_at {
        Some(end) if end.0 <= now => Err(format!(
            "the incident ended at {}; declare a new one",
            end.0
        )),
        _ if status.effective_mode == Some(EffectiveMode::Normal) => {
            Err("the incident has ended; declare a new one".into())
        }
        _ => Ok(()),
    }
}

/// The incident's current end: as the controller computed it, else its spec.expiresAt.
fn current_end(incident: &MailIncident) -> Option<Timestamp> {
    incident
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_ref())
        .or(incident.spec.expires_at.as_ref())
        .map(|t| t.0)
}

/// The new end of an incident that started at `start` and ends at `current` (if it
/// does): never past the 100-day bound, never in the past, never earlier than `current`
/// unless `allow_shorter`.
pub fn new_end(
    change: Change,
    current: Option<Timestamp>,
    start: Timestamp,
    now: Timestamp,
    allow_shorter: bool,
) -> Result<Timestamp, String> {
    let end = match change {
        Change::Until(at) => at,
        Change::By(span) => {
            let by = SignedDuration::try_from(span.as_duration())
                .map_err(|_| format!("--by {span} is too long"))?;
            current
                .unwrap_or(now)
                .checked_add(by)
                .map_err(|_| format!("--by {span} goes past any representable time"))?
        }
    };
    // To the second, as Kubernetes writes times.
    let end = Timestamp::from_second(end.as_second()).map_err(|e| e.to_string())?;
    let latest = latest_expiry(start);
    if end > latest {
        return Err(format!(
            "the new end {end} is past the incident's bound of 100 days after its start {start}: {latest} at the latest; a longer outage takes a new incident"
        ));
    }
    if end <= now {
        return Err(format!(
            "the new end {end} is not in the future; to end the incident now, resolve it"
        ));
    }
    if let Some(current) = current
        && end < current
        && !allow_shorter
    {
        return Err(format!(
            "the new end {end} is earlier than the current end {current}; add --allow-shorter to shorten the incident"
        ));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const START: &str = "2026-12-01T00:00:00Z";
    const NOW: &str = "2026-12-02T00:00:00Z";

    fn end(change: Change, current: Option<&str>, allow_shorter: bool) -> Result<String, String> {
        new_end(change, current.map(at), at(START), at(NOW), allow_shorter).map(|t| t.to_string())
    }

    #[test]
    fn by_moves_the_current_end_or_now() {
        let six_hours: TimeSpan = "6h".parse().unwrap();
        assert_eq!(
            end(Change::By(six_hours), Some("2026-12-02T12:00:00Z"), false).unwrap(),
            "2026-12-02T18:00:00Z"
        );
        assert_eq!(
            end(Change::By(six_hours), None, false).unwrap(),
            "2026-12-02T06:00:00Z"
        );
    }

    #[test]
    fn never_past_the_hundred_day_bound_from_the_start() {
        assert_eq!(
            end(Change::Until(at("2027-03-11T00:00:00Z")), None, false).unwrap(),
            "2027-03-11T00:00:00Z"
        );
        let refused = end(Change::Until(at("2027-03-11T00:00:01Z")), None, false).unwrap_err();
        assert!(
            refused.contains("2027-03-11T00:00:00Z at the latest"),
            "{refused}"
        );
        let long: TimeSpan = "99d".parse().unwrap();
        assert!(end(Change::By(long), Some("2026-12-03T00:00:00Z"), false).is_err());
        let longest: TimeSpan = "9999999w".parse().unwrap();
        assert!(end(Change::By(longest), None, false).is_err());
    }

    fn incident(status: &str, extra_spec: &str) -> MailIncident {
        serde_yaml::from_str(&format!(
            "apiVersion: mailops.dev/v1alpha1\nkind: MailIncident\nmetadata: {{name: x, generation: 2}}\n\
             spec: {{mode: TempFail, reason: r, targets: {{matchLabels: {{a: b}}}}{extra_spec}}}\nstatus: {status}"
        ))
        .unwrap()
    }

    #[test]
    fn only_a_running_incident_the_controller_has_seen_is_extended() {
        let now = at(NOW);
        let running =
            "{observedGeneration: 2, effectiveMode: TempFail, expiresAt: '2026-12-03T00:00:00Z'}";
        assert_eq!(extendable(&incident(running, ""), now), Ok(()));
        let resolved = extendable(&incident(running, ", resolved: true"), now).unwrap_err();
        assert!(resolved.contains("resolved"), "{resolved}");
        let stale = "{observedGeneration: 1, effectiveMode: TempFail}";
        assert!(
            extendable(&incident(stale, ""), now)
                .unwrap_err()
                .contains("not yet seen")
        );
        let ended =
            "{observedGeneration: 2, effectiveMode: TempFail, expiresAt: '2026-12-01T12:00:00Z'}";
        assert!(
            extendable(&incident(ended, ""), now)
                .unwrap_err()
                .contains("ended at 2026-12-01T12:00:00Z")
        );
    }

    #[test]
    fn never_shorter_unless_asked_and_never_in_the_past() {
        let current = Some("2026-12-03T00:00:00Z");
        let earlier = Change::Until(at("2026-12-02T12:00:00Z"));
        let refused = end(earlier, current, false).unwrap_err();
        assert!(refused.contains("--allow-shorter"), "{refused}");
        assert_eq!(end(earlier, current, true).unwrap(), "2026-12-02T12:00:00Z");
        let past = end(Change::Until(at("2026-12-01T12:00:00Z")), current, true).unwrap_err();
        assert!(past.contains("resolve it"), "{past}");
    }
}
