//! `escalate`: switches an incident to a more severe mode by a precise patch under the
//! plugin's field manager, keeping the spec valid (a reply or escalation limits the new
//! mode cannot use are dropped, and said so). HardReject makes senders bounce mail for
//! good: it needs `--acknowledge-bounces`, says how many MTAs will bounce, and asks for
//! confirmation on a terminal unless `--yes`.

use super::{
    Connection, ConnectionArgs, OutputArgs, PluginError,
    write_common::{
        check_may_bounce, check_spec, fetch_incident, matched_workloads, merge_spec, one_namespace,
        print_written,
    },
};
use crate::api::{
    HardRejectSettings, MailIncidentSpec, Mode,
    validation::{Reply, selector_of},
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  # Refuse mail with a 4xx instead of holding it:
  kubectl mail-incident escalate storage-outage -n mail --to TempFail
  # Refuse mail for good (senders bounce it); asks for confirmation on a terminal:
  kubectl mail-incident escalate storage-outage -n mail --to HardReject --acknowledge-bounces
  # The same from a script:
  kubectl mail-incident escalate storage-outage -n mail --to HardReject --acknowledge-bounces --yes")]
pub struct EscalateArgs {
    /// The incident's name.
    pub name: String,
    /// The more severe mode.
    #[arg(long, value_enum)]
    pub to: Severer,
    /// Required for HardReject: every 5xx makes the sender bounce the mail for good.
    #[arg(long)]
    pub acknowledge_bounces: bool,
    /// Do not ask for confirmation (required off a terminal for HardReject).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The modes an incident can be escalated to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severer {
    #[value(name = "TempFail")]
    TempFail,
    #[value(name = "HardReject")]
    HardReject,
}

impl From<Severer> for Mode {
    fn from(mode: Severer) -> Self {
        match mode {
            Severer::TempFail => Self::TempFail,
            Severer::HardReject => Self::HardReject,
        }
    }
}

/// How severe a mode is for senders: held, retried, bounced.
fn severity(mode: Mode) -> u8 {
    match mode {
        Mode::AcceptAndQueue => 0,
        Mode::TempFail => 1,
        Mode::HardReject => 2,
    }
}

/// An escalation decided: the spec after it, the merge patch writing it, and what was
/// dropped on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub spec: MailIncidentSpec,
    pub patch: serde_json::Value,
    pub notes: Vec<String>,
}

/// The escalation of `spec` to `to`: only to a more severe mode, HardReject only
/// acknowledged; a reply in the old mode's class and queue limits (AcceptAndQueue only)
/// are dropped so the spec stays valid.
pub fn escalate(
    spec: &MailIncidentSpec,
    to: Mode,
    acknowledged: bool,
) -> Result<Escalation, String> {
    if severity(to) <= severity(spec.mode) {
        return Err(format!(
            "the incident is in {} already; escalate goes to a more severe mode only (AcceptAndQueue, then TempFail, then HardReject)",
            spec.mode
        ));
    }
    if to == Mode::HardReject && !acknowledged {
        return Err("HardReject makes every sender bounce the mail for good: add --acknowledge-bounces to confirm you mean it".into());
    }
    let mut next = spec.clone();
    let mut patch = serde_json::json!({"mode": to});
    let mut notes = vec![];
    next.mode = to;
    if to == Mode::HardReject {
        next.hard_reject = Some(HardRejectSettings {
            acknowledge_bounces: true,
        });
        patch["hardReject"] = serde_json::json!({"acknowledgeBounces": true});
    }
    if next.escalation.take().is_some() {
        patch["escalation"] = serde_json::Value::Null;
        notes
            .push("spec.escalation dropped: queue limits apply to AcceptAndQueue only".to_string());
    }
    let class = if to == Mode::HardReject { '5' } else { '4' };
    if let Some(reply) = &spec.smtp_reply {
        let code_fits = reply.code.is_none_or(|c| c.to_string().starts_with(class));
        let enhanced_fits = reply
            .enhanced_code
            .as_deref()
            .is_none_or(|e| e.starts_with(class));
        if !(code_fits && enhanced_fits) {
            next.smtp_reply = None;
            patch["smtpReply"] = serde_json::Value::Null;
            notes.push(format!(
                "spec.smtpReply dropped: a {}xx reply cannot answer {to}; MTAs answer the default {}",
                if class == '5' { '4' } else { '5' },
                Reply::default_for(to)
            ));
        }
    }
    Ok(Escalation {
        spec: next,
        patch,
        notes,
    })
}

/// What HardReject will do, for the confirmation.
pub fn bounce_warning(workloads: usize, pods: i64, reply: &Reply) -> String {
    format!(
        "HardReject: {workloads} MTA workload(s), {pods} pod(s), will answer every covered RCPT with \"{reply}\": senders bounce that mail for good and it never reaches the recipients."
    )
}

pub async fn run(connection: &ConnectionArgs, args: &EscalateArgs) -> Result<(), PluginError> {
    one_namespace(connection)?;
    let cluster = Connection::open(connection).await?;
    let incident = fetch_incident(&cluster, &args.name).await?;
    if incident.spec.resolved {
        return Err(PluginError::Refused(format!(
            "MailIncident {:?} is resolved; declare a new incident instead",
            args.name
        )));
    }
    let to = Mode::from(args.to);
    let escalation =
        escalate(&incident.spec, to, args.acknowledge_bounces).map_err(PluginError::Refused)?;
    let created = incident
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let valid = check_spec(&args.name, &escalation.spec, created)?;
    if to == Mode::HardReject {
        check_may_bounce(&cluster).await?;
        let (workloads, pods) = selected_mtas(&cluster, &escalation.spec).await?;
        eprintln!("{}", bounce_warning(workloads, pods, &valid.reply));
        if !args.yes {
            confirm()?;
        }
    }
    for note in &escalation.notes {
        eprintln!("note: {note}");
    }
    let stored = merge_spec(
        &cluster,
        &args.name,
        incident.resource_version().as_deref(),
        escalation.patch,
    )
    .await?;
    print_written(
        &stored,
        &format!(
            "MailIncident {:?} escalated from {} to {}; MTAs answer {}.",
            stored.name_any(),
            incident.spec.mode,
            stored.spec.mode,
            valid.reply
        ),
        args.output,
    )
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm() -> Result<(), PluginError> {
    if !std::io::stdin().is_terminal() {
        return Err(PluginError::Refused(
            "not on a terminal, so nobody can confirm: add --yes to escalate to HardReject".into(),
        ));
    }
    eprint!("Type yes to make them bounce mail: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| PluginError::Refused(format!("cannot read the confirmation: {e}")))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(PluginError::Refused(
            "not confirmed: nothing changed".into(),
        ))
    }
}

/// The Deployments and StatefulSets the spec selects, and their pods (desired replicas).
async fn selected_mtas(
    cluster: &Connection,
    spec: &MailIncidentSpec,
) -> Result<(usize, i64), PluginError> {
    let selector = selector_of(&spec.targets).map_err(|e| PluginError::Invalid(vec![e]))?;
    let workloads = matched_workloads(cluster, &selector).await?;
    let replicas: Vec<i32> = workloads.iter().map(|w| w.replicas).collect();
    Ok((replicas.len(), replicas.iter().map(|r| i64::from(*r)).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Escalation as Limits, SmtpReply, validation::validate};

    fn spec(yaml: &str) -> MailIncidentSpec {
        serde_yaml::from_str(&format!(
            "reason: INC-1\ntargets: {{matchLabels: {{app: mta}}}}\n{yaml}"
        ))
        .unwrap()
    }

    #[test]
    fn only_to_a_more_severe_mode() {
        let temp_fail = spec("mode: TempFail");
        assert!(escalate(&temp_fail, Mode::TempFail, false).is_err());
        let hard = spec("mode: HardReject\nhardReject: {acknowledgeBounces: true}");
        assert!(escalate(&hard, Mode::TempFail, true).is_err());
        let up = escalate(&temp_fail, Mode::HardReject, true).unwrap();
        assert_eq!(up.spec.mode, Mode::HardReject);
        assert!(validate(&up.spec, Some(Timestamp::now())).is_ok());
    }

    #[test]
    fn hard_reject_needs_the_acknowledgement() {
        let refused = escalate(&spec("mode: TempFail"), Mode::HardReject, false).unwrap_err();
        assert!(refused.contains("--acknowledge-bounces"), "{refused}");
    }

    #[test]
    fn what_the_new_mode_cannot_use_is_dropped_and_said() {
        let mut hold =
            spec("mode: AcceptAndQueue\nsmtpReply: {code: 451, enhancedCode: 4.3.2, text: Later}");
        hold.escalation = Some(Limits {
            max_queued_messages: Some(10),
            max_oldest_message_age: None,
        });
        let to_temp_fail = escalate(&hold, Mode::TempFail, false).unwrap();
        assert_eq!(
            to_temp_fail.spec.smtp_reply, hold.smtp_reply,
            "a 4xx fits TempFail"
        );
        assert_eq!(to_temp_fail.spec.escalation, None);
        assert_eq!(
            to_temp_fail.patch,
            serde_json::json!({"mode": "TempFail", "escalation": null})
        );
        let to_hard = escalate(&hold, Mode::HardReject, true).unwrap();
        assert_eq!(to_hard.spec.smtp_reply, None);
        assert_eq!(to_hard.patch["smtpReply"], serde_json::Value::Null);
        assert_eq!(to_hard.patch["hardReject"]["acknowledgeBounces"], true);
        assert!(
            to_hard.notes.iter().any(|n| n.contains("550 5.3.2")),
            "{:?}",
            to_hard.notes
        );
        assert!(validate(&to_hard.spec, Some(Timestamp::now())).is_ok());
        let text_only = MailIncidentSpec {
            smtp_reply: Some(SmtpReply {
                text: Some("Storage down".into()),
                ..SmtpReply::default()
            }),
            ..spec("mode: TempFail")
        };
        let kept = escalate(&text_only, Mode::HardReject, true).unwrap();
        assert_eq!(kept.spec.smtp_reply, text_only.smtp_reply);
        assert!(kept.notes.is_empty());
    }

    #[test]
    fn the_warning_counts_mtas_and_pods() {
        let warning = bounce_warning(2, 5, &Reply::default_for(Mode::HardReject));
        assert!(
            warning.starts_with("HardReject: 2 MTA workload(s), 5 pod(s), will answer"),
            "{warning}"
        );
    }
}
