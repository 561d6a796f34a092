//! `declare`: builds a MailIncident from flags, checks it as the controller and the API
//! server would (refusing before anything is written), and server-side applies it under
//! the plugin's field manager. `--dry-run` shows instead what it would select and what
//! each MTA would answer (or, with `-o yaml|json`, the object, for a GitOps repository);
//! `--wait` follows it until every target answers in the mode.

use super::{
    Connection, ConnectionArgs, FIELD_MANAGER, Format, OutputArgs, PluginError, Table,
    output::{print_object, print_objects},
    write_common::{
        Look, MatchedWorkload, bar, check_may_bounce, check_spec, current_ready, follow,
        matched_workloads, one_namespace, parse_span, parse_time,
    },
};
use crate::api::{
    HardRejectSettings, LabelOperator, LabelRequirement, MailIncident, MailIncidentSpec, Mode,
    MtaKind, QueueLifetimes, Scope, SmtpReply, Targets,
    mode_document::{DELIVERY_ANNOTATION, MTA_ANNOTATION, document_name, report_name},
    scope::recipient_domain,
    validation::{Reply, ValidIncident},
};
use k8s_openapi::{
    api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("end").required(true).args(["for_span", "until"])),
    after_help = "Examples:
  # Hold mail for every MTA labelled app=mta for 12 hours:
  kubectl mail-incident declare storage-outage -n mail --mode AcceptAndQueue \\
      --targets app=mta --reason 'INC-4711 mailbox storage down' --for 12h --wait
  # See first what it would select and what each MTA would answer:
  kubectl mail-incident declare storage-outage -n mail --mode TempFail \\
      --targets 'app=mta,tier in (edge)' --reason INC-4711 --for 12h --dry-run
  # The same incident as YAML, to commit where GitOps applies it:
  kubectl mail-incident declare storage-outage -n mail --mode TempFail \\
      --targets app=mta --reason INC-4711 --for 12h --dry-run -o yaml > storage-outage.yaml
  # Refuse mail for good (senders bounce it) until a time:
  kubectl mail-incident declare purge -n mail --mode HardReject --targets app=mta \\
      --reason INC-4712 --until 2026-12-08T06:00:00Z --acknowledge-bounces"
)]
pub struct DeclareArgs {
    /// The incident's name.
    pub name: String,
    /// The mode every selected MTA answers in.
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// The MTA workloads, as a kubectl label selector: `app=mta,tier in (edge),!canary`.
    #[arg(long, value_name = "SELECTOR")]
    pub targets: String,
    /// Why: a ticket reference or a sentence.
    #[arg(long)]
    pub reason: String,
    /// How long it lasts from its start: a number and s, m, h, d or w (at most 100d).
    #[arg(long = "for", value_name = "SPAN")]
    pub for_span: Option<String>,
    /// When it ends (RFC 3339, at most 100 days after its start).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The MTA software of workloads without a mailops.dev/mta annotation.
    #[arg(long, value_enum)]
    pub mta: Option<MtaKind>,
    /// The SMTP reply for TempFail and HardReject: `CODE [ENHANCED] [TEXT]`, e.g. `452
    /// 4.3.1 Mailbox storage down, try later`.
    #[arg(long, value_name = "REPLY")]
    pub reply: Option<String>,
    /// How long accepted mail may stay queued before it returns to its sender (default 5d).
    #[arg(long, value_name = "SPAN")]
    pub queue_lifetime: Option<String>,
    /// Cover only recipients of this domain (`*.example.com`: its subdomains); repeat it.
    #[arg(long = "scope-domain", value_name = "DOMAIN")]
    pub scope_domains: Vec<String>,
    /// When it takes effect (RFC 3339, at most 100 days ahead); default: at once.
    #[arg(long, value_name = "TIME")]
    pub starts_at: Option<String>,
    /// Required for HardReject: every 5xx makes the sender bounce the mail for good.
    #[arg(long)]
    pub acknowledge_bounces: bool,
    /// Write nothing: show the workloads selected, how each receives modes, whether its
    /// agents report, and the RCPT answer of each MTA; with -o yaml or json, print the
    /// incident instead, to keep in Git.
    #[arg(long)]
    pub dry_run: bool,
    /// The recipient whose RCPT answer --dry-run shows.
    #[arg(long, value_name = "ADDRESS", default_value = "user@example.com")]
    pub recipient: String,
    /// Follow the incident until every target answers in the mode.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "SPAN", default_value = "5m", requires = "wait")]
    pub timeout: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--mode`, spelled as in the spec.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    #[value(name = "AcceptAndQueue")]
    AcceptAndQueue,
    #[value(name = "TempFail")]
    TempFail,
    #[value(name = "HardReject")]
    HardReject,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::AcceptAndQueue => Self::AcceptAndQueue,
            ModeArg::TempFail => Self::TempFail,
            ModeArg::HardReject => Self::HardReject,
        }
    }
}

pub async fn run(connection: &ConnectionArgs, args: &DeclareArgs) -> Result<(), PluginError> {
    one_namespace(connection)?;
    let spec = build_spec(args)?;
    // Read before writing: a typo in --timeout must not leave a declared incident behind.
    let timeout = parse_span("--timeout", &args.timeout)?;
    let now = Timestamp::now();
    let valid = check_spec(&args.name, &spec, now)?;
    let cluster = Connection::open(connection).await?;
    if args.dry_run {
        let workloads = selected_workloads(&cluster, &valid, spec.targets.mta).await?;
        match args.output.output {
            Format::Table | Format::Wide => print!(
                "{}",
                dry_run_table(&workloads, &valid, &args.recipient).render(!args.output.no_headers)
            ),
            // As `kubectl create --dry-run=client -o yaml`: the object, to keep in Git.
            _ => {
                let mut object = MailIncident::new(&args.name, spec);
                object.metadata.namespace = Some(cluster.namespace.clone());
                print_object(&object, args.output.output)?;
            }
        }
        eprintln!(
            "Dry run: nothing written. {} workload(s) selected by {:?} in namespace {}.",
            workloads.len(),
            args.targets,
            cluster.namespace
        );
        return Ok(());
    }
    if spec.mode == Mode::HardReject && !spec.resolved {
        check_may_bounce(&cluster).await?;
    }
    let api: Api<MailIncident> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let object = MailIncident::new(&args.name, spec);
    // No force: a field another manager (GitOps, kubectl apply) owns is a conflict the
    // user must see, not something to take over silently.
    let stored = api
        .patch(
            &args.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 409 => PluginError::Refused(format!(
                "MailIncident {:?} has fields another manager set: {}; change it with that tool, or resolve it and declare a new one",
                args.name, status.message
            )),
            _ => PluginError::from_api(error, "patch", "mailincidents", Some(&cluster.namespace)),
        })?;
    print_objects(
        std::slice::from_ref(&stored),
        &declared_table(&stored, &args.targets, &valid),
        args.output,
    )?;
    if args.wait {
        follow(
            &cluster,
            &args.name,
            timeout,
            args.output.output,
            async |incident| Ok(applying_look(incident)),
        )
        .await?;
        if matches!(args.output.output, Format::Table | Format::Wide) {
            println!("MailIncident {:?} is Ready.", args.name);
        } else {
            eprintln!("MailIncident {:?} is Ready.", args.name);
        }
    }
    Ok(())
}

/// The spec the flags describe; refuses flags that cannot be read.
pub fn build_spec(args: &DeclareArgs) -> Result<MailIncidentSpec, PluginError> {
    let mode = Mode::from(args.mode);
    let mut targets = parse_selector(&args.targets)
        .map_err(|why| PluginError::Refused(format!("--targets {:?}: {why}", args.targets)))?;
    targets.mta = args.mta;
    let smtp_reply = args
        .reply
        .as_deref()
        .map(parse_reply)
        .transpose()
        .map_err(|why| PluginError::Refused(format!("--reply: {why}")))?;
    let time = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| parse_time(flag, t).map(Time))
            .transpose()
    };
    let queue = match &args.queue_lifetime {
        Some(lifetime) => QueueLifetimes {
            lifetime: lifetime.clone(),
            ..QueueLifetimes::default()
        },
        None => QueueLifetimes::default(),
    };
    Ok(MailIncidentSpec {
        mode,
        reason: args.reason.clone(),
        targets,
        scope: (!args.scope_domains.is_empty()).then(|| Scope {
            recipient_domains: args.scope_domains.clone(),
        }),
        starts_at: time("--starts-at", &args.starts_at)?,
        queue,
        smtp_reply,
        escalation: None,
        hard_reject: args.acknowledge_bounces.then_some(HardRejectSettings {
            acknowledge_bounces: true,
        }),
        expires_at: time("--until", &args.until)?,
        duration: args.for_span.clone(),
        resolved: false,
        release: Default::default(),
    })
}

/// A kubectl label selector (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) as spec.targets.
pub fn parse_selector(text: &str) -> Result<Targets, String> {
    let mut targets = Targets::default();
    for term in split_top_level(text)? {
        let term = term.trim();
        if term.is_empty() {
            return Err("an empty requirement (two commas, or a trailing one)".into());
        }
        let requirement = |key: &str, operator, values: Vec<String>| {
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("{term:?} has no valid label key"));
            }
            Ok(LabelRequirement {
                key: key.into(),
                operator,
                values,
            })
        };
        if let Some(key) = term.strip_prefix('!') {
            targets
                .match_expressions
                .push(requirement(key, LabelOperator::DoesNotExist, vec![])?);
        } else if let Some((key, values)) = set_requirement(term, " notin ")? {
            targets
                .match_expressions
                .push(requirement(key, LabelOperator::NotIn, values)?);
        } else if let Some((key, values)) = set_requirement(term, " in ")? {
            targets
                .match_expressions
                .push(requirement(key, LabelOperator::In, values)?);
        } else if let Some((key, value)) = term.split_once("!=") {
            let value = value.trim().to_string();
            targets
                .match_expressions
                .push(requirement(key, LabelOperator::NotIn, vec![value])?);
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            let LabelRequirement { key, .. } = requirement(key, LabelOperator::In, vec![])?;
            let value = value.trim().to_string();
            if let Some(before) = targets.match_labels.get(&key).filter(|v| **v != value) {
                return Err(format!("{key} cannot equal both {before:?} and {value:?}"));
            }
            targets.match_labels.insert(key, value);
        } else {
            targets
                .match_expressions
                .push(requirement(term, LabelOperator::Exists, vec![])?);
        }
    }
    Ok(targets)
}

/// The terms of a selector: split at commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let (mut terms, mut depth, mut from) = (vec![], 0u32, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("a ')' without its '(' at {at}"))?;
            }
            ',' if depth == 0 => {
                terms.push(&text[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("a '(' without its ')'".into());
    }
    terms.push(&text[from..]);
    Ok(terms)
}

/// `key in (a, b)` split at `operator` (with its spaces), if the term is one.
fn set_requirement<'a>(
    term: &'a str,
    operator: &str,
) -> Result<Option<(&'a str, Vec<String>)>, String> {
    let Some((key, rest)) = term.split_once(operator) else {
        return Ok(None);
    };
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("{term:?}: the values go in parentheses: (a,b)"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(format!("{term:?} lists no value"));
    }
    Ok(Some((key, values)))
}

/// `--reply "452 4.3.1 Some text"`: the code, then an enhanced code if one follows, then
/// the text; the fields left out take the mode's defaults.
pub fn parse_reply(text: &str) -> Result<SmtpReply, String> {
    let text = text.trim();
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    let code: u16 = code
        .parse()
        .map_err(|_| format!("{text:?} does not start with a 3-digit reply code such as 452"))?;
    let rest = rest.trim_start();
    let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let is_enhanced = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let (enhanced_code, rest) = if is_enhanced {
        (Some(first.to_string()), after.trim_start())
    } else {
        (None, rest)
    };
    Ok(SmtpReply {
        code: Some(code),
        enhanced_code,
        text: (!rest.is_empty()).then(|| rest.to_string()),
    })
}

/// A workload the selector matches, with what the dry run tells about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedWorkload {
    /// `Deployment/name`.
    pub target: String,
    /// Its delivery annotation: `reload` (agent) or `restart`.
    pub delivery: String,
    pub mta: MtaKind,
    /// Whether the MTA came from its annotation, or the default.
    pub mta_annotated: bool,
    pub replicas: i32,
    /// Pods whose agent has an entry in the report; `None`: no report object.
    pub reporting: Option<usize>,
}

async fn selected_workloads(
    cluster: &Connection,
    valid: &ValidIncident,
    mta: Option<MtaKind>,
) -> Result<Vec<SelectedWorkload>, PluginError> {
    let ns = cluster.namespace.as_str();
    let found = matched_workloads(cluster, &valid.selector).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
    let mut workloads = vec![];
    for MatchedWorkload {
        kind,
        name,
        annotations,
        replicas,
    } in found
    {
        let annotated = annotations.get(MTA_ANNOTATION).and_then(|m| m.parse().ok());
        let report = config_maps
            .get_opt(&report_name(&document_name(kind, &name)))
            .await
            .map_err(|e| PluginError::from_api(e, "get", "configmaps", Some(ns)))?;
        workloads.push(SelectedWorkload {
            target: format!("{kind}/{name}"),
            delivery: annotations
                .get(DELIVERY_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "reload".into()),
            mta: annotated.or(mta).unwrap_or(MtaKind::Postfix),
            mta_annotated: annotated.is_some(),
            replicas,
            reporting: report.map(|r| r.data.map_or(0, |d| d.len())),
        });
    }
    Ok(workloads)
}

/// The dry run's table: one line per selected workload.
pub fn dry_run_table(
    workloads: &[SelectedWorkload],
    valid: &ValidIncident,
    recipient: &str,
) -> Table {
    let mut table = Table::new(&["TARGET", "DELIVERY", "MTA", "AGENTS", "RCPT ANSWER"]);
    for w in workloads {
        let delivery = match w.delivery.as_str() {
            "restart" => "restart (pods restarted with the mode)".to_string(),
            "reload" => "agent (reload)".to_string(),
            other => format!("{other:?}: unknown, the controller refuses it"),
        };
        let agents = match (w.delivery.as_str(), w.reporting) {
            ("restart", _) => "no agent (restart delivery)".to_string(),
            (_, None) => "no report yet (reported during incidents)".to_string(),
            (_, Some(n)) => format!("{n}/{} pods reporting", w.replicas),
        };
        let mta = if w.mta_annotated {
            w.mta.to_string()
        } else {
            format!("{} (default)", w.mta)
        };
        table.push(vec![
            w.target.clone(),
            delivery,
            mta,
            agents,
            rcpt_answer(w.mta, valid, recipient),
        ]);
    }
    table
}

/// The line an MTA answers to `RCPT TO:<recipient>` under the incident, as it sends it.
pub fn rcpt_answer(mta: MtaKind, valid: &ValidIncident, recipient: &str) -> String {
    let covered = match (&valid.scope, recipient_domain(recipient)) {
        (None, _) => true,
        (Some(patterns), Some(domain)) => patterns.iter().any(|p| p.covers(&domain)),
        (Some(_), None) => false,
    };
    let accepted = match mta {
        MtaKind::Postfix => "250 2.1.5 Ok".to_string(),
        MtaKind::Exim => "250 Accepted".to_string(),
        MtaKind::Generic => "250 (as the MTA accepts)".to_string(),
    };
    if !covered {
        return format!("{accepted} (not in scope: normal service)");
    }
    let Reply {
        code,
        enhanced_code,
        text,
    } = &valid.reply;
    match (valid.mode, mta) {
        (Mode::AcceptAndQueue, _) => format!("{accepted} (held in the queue)"),
        // Postfix puts the recipient and its own words between the codes and the text.
        (_, MtaKind::Postfix) => {
            format!("{code} {enhanced_code} <{recipient}>: Recipient address rejected: {text}")
        }
        (_, MtaKind::Exim) => format!("{code} {enhanced_code} {text}"),
        (_, MtaKind::Generic) => format!("{code} {enhanced_code} {text} (as its hook renders it)"),
    }
}

/// The table printed after declaring.
fn declared_table(stored: &MailIncident, selector: &str, valid: &ValidIncident) -> Table {
    let mut table = Table::new(&["NAME", "MODE", "TARGETS", "STARTS", "EXPIRES", "REASON"]);
    // The end counted from the stored creation time, as the controller counts it (a
    // re-declared incident keeps its first creation).
    let created = stored.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let expires_at = crate::api::validation::validate(&stored.spec, created)
        .ok()
        .and_then(|v| v.expires_at);
    table.push(vec![
        stored.name_any(),
        stored.spec.mode.to_string(),
        selector.to_string(),
        valid
            .starts_at
            .map_or_else(|| "now".to_string(), |t| t.to_string()),
        expires_at.map_or_else(|| "never".to_string(), |t| t.to_string()),
        stored.spec.reason.clone(),
    ]);
    table
}

/// Where an incident being applied stands: done once Ready for its current spec.
pub fn applying_look(incident: &MailIncident) -> Look {
    let status = incident.status.clone().unwrap_or_default();
    let (matched, applied) = status
        .targets
        .as_ref()
        .map_or((0, 0), |t| (t.matched, t.applied));
    let ready = current_ready(incident);
    let state = ready.map_or_else(
        || "waiting for the controller".to_string(),
        |c| format!("{} ({})", c.reason, c.message),
    );
    // No count before the controller has counted the targets: 0/0 is not done.
    let line = match ready {
        None => format!("{state} to see the incident"),
        Some(_) if matched > 0 => format!(
            "{} {applied}/{matched} targets applied: {state}",
            bar(u64::from(applied), u64::from(matched), 20)
        ),
        Some(_) => format!("{applied}/{matched} targets applied: {state}"),
    };
    let left = match ready {
        Some(c) if c.status == "True" => None,
        _ => {
            let failed: Vec<String> = status
                .failed_targets
                .iter()
                .map(|f| format!("{}: {}", f.target, f.reason))
                .collect();
            Some(if failed.is_empty() {
                format!("{applied}/{matched} targets applied; {state}")
            } else {
                format!(
                    "{applied}/{matched} targets applied; failed: {}",
                    failed.join("; ")
                )
            })
        }
    };
    Look { line, left }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validation::validate;
    use clap::Parser;

    fn args(line: &[&str]) -> Result<DeclareArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: DeclareArgs,
        }
        Wrapper::try_parse_from(std::iter::once("declare").chain(line.iter().copied()))
            .map(|w| w.args)
    }

    const BASE: [&str; 7] = [
        "outage",
        "--mode",
        "TempFail",
        "--targets",
        "app=mta",
        "--reason",
        "INC-1",
    ];

    fn with(extra: &[&str]) -> Result<DeclareArgs, clap::Error> {
        args(&[&BASE[..], extra].concat())
    }

    #[test]
    fn selectors_read_as_kubectl_reads_them() {
        let targets =
            parse_selector("app=mta, tier in (edge, core),env!=dev,canary,!legacy,zone notin (a)")
                .unwrap();
        assert_eq!(targets.match_labels, [("app".into(), "mta".into())].into());
        let expressions: Vec<(&str, LabelOperator, Vec<&str>)> = targets
            .match_expressions
            .iter()
            .map(|r| {
                (
                    r.key.as_str(),
                    r.operator,
                    r.values.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            expressions,
            [
                ("tier", LabelOperator::In, vec!["edge", "core"]),
                ("env", LabelOperator::NotIn, vec!["dev"]),
                ("canary", LabelOperator::Exists, vec![]),
                ("legacy", LabelOperator::DoesNotExist, vec![]),
                ("zone", LabelOperator::NotIn, vec!["a"]),
            ]
        );
        assert_eq!(
            parse_selector("app==mta").unwrap().match_labels["app"],
            "mta"
        );
        for bad in [
            "app=mta,",
            "tier in (edge",
            "tier in edge",
            "tier in ()",
            "a)",
            "app=a,app=b",
            "=x",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_take_code_enhanced_code_and_text() {
        assert_eq!(
            parse_reply("452 4.3.1 Storage down, try later").unwrap(),
            SmtpReply {
                code: Some(452),
                enhanced_code: Some("4.3.1".into()),
                text: Some("Storage down, try later".into()),
            }
        );
        assert_eq!(
            parse_reply("451 try later").unwrap(),
            SmtpReply {
                code: Some(451),
                enhanced_code: None,
                text: Some("try later".into()),
            }
        );
        assert_eq!(parse_reply("550").unwrap().text, None);
        assert!(parse_reply("soon").is_err());
        assert!(parse_reply("99999 x").is_err());
    }

    #[test]
    fn the_flags_build_the_spec_the_controller_accepts() {
        let spec = build_spec(
            &with(&[
                "--for",
                "12h",
                "--mta",
                "Exim",
                "--reply",
                "451 4.3.2 Later",
                "--scope-domain",
                "pec.example.it",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(spec.mode, Mode::TempFail);
        assert_eq!(spec.duration.as_deref(), Some("12h"));
        assert_eq!(spec.targets.mta, Some(MtaKind::Exim));
        assert_eq!(
            spec.scope.unwrap().recipient_domains,
            vec!["pec.example.it"]
        );
        let valid = check_spec(
            "outage",
            &build_spec(&with(&["--for", "12h"]).unwrap()).unwrap(),
            Timestamp::now(),
        );
        assert!(valid.is_ok());
    }

    #[test]
    fn an_end_is_required_and_only_one() {
        assert!(with(&[]).is_err());
        assert!(with(&["--for", "1h", "--until", "2030-01-01T00:00:00Z"]).is_err());
        assert!(
            with(&["--timeout", "1m", "--for", "1h"]).is_err(),
            "--timeout needs --wait"
        );
    }

    #[test]
    fn bad_input_is_refused_in_the_controllers_words_before_anything_is_written() {
        let now = Timestamp::now();
        let refused = |extra: &[&str], mode: &str| {
            let mut line = BASE.to_vec();
            line[2] = mode;
            let args = args(&[&line[..], extra].concat()).unwrap();
            let spec = build_spec(&args).unwrap();
            check_spec("outage", &spec, now).unwrap_err().to_string()
        };
        let hard = refused(&["--for", "1h"], "HardReject");
        assert!(
            hard.contains("spec.hardReject.acknowledgeBounces: must be true for mode HardReject"),
            "{hard}"
        );
        let reply = refused(&["--for", "1h", "--reply", "550 5.3.2 No"], "TempFail");
        assert!(reply.contains("spec.smtpReply"), "{reply}");
        let long = refused(&["--for", "101d"], "TempFail");
        assert!(long.contains("spec.duration"), "{long}");
    }

    fn valid(extra: &[&str], mode: &str) -> ValidIncident {
        let mut line = BASE.to_vec();
        line[2] = mode;
        let spec =
            build_spec(&args(&[&line[..], &["--for", "1h"], extra].concat()).unwrap()).unwrap();
        validate(&spec, Some(Timestamp::now())).unwrap()
    }

    #[test]
    fn the_rcpt_answer_is_written_as_each_mta_sends_it() {
        let temp_fail = valid(&[], "TempFail");
        assert_eq!(
            rcpt_answer(MtaKind::Postfix, &temp_fail, "user@e2e.test"),
            "452 4.3.1 <user@e2e.test>: Recipient address rejected: Mailbox storage temporarily unavailable, try again later"
        );
        assert_eq!(
            rcpt_answer(MtaKind::Exim, &temp_fail, "user@e2e.test"),
            "452 4.3.1 Mailbox storage temporarily unavailable, try again later"
        );
        let hard = valid(
            &["--acknowledge-bounces", "--reply", "554 5.3.0 Gone"],
            "HardReject",
        );
        assert_eq!(rcpt_answer(MtaKind::Exim, &hard, "a@b.c"), "554 5.3.0 Gone");
        let hold = valid(&[], "AcceptAndQueue");
        assert_eq!(
            rcpt_answer(MtaKind::Postfix, &hold, "a@b.c"),
            "250 2.1.5 Ok (held in the queue)"
        );
        let scoped = valid(&["--scope-domain", "pec.example.it"], "TempFail");
        assert_eq!(
            rcpt_answer(MtaKind::Exim, &scoped, "a@other.org"),
            "250 Accepted (not in scope: normal service)"
        );
        assert!(rcpt_answer(MtaKind::Exim, &scoped, "a@pec.example.it").starts_with("452 "));
    }

    #[test]
    fn the_dry_run_says_honestly_what_it_knows_of_each_workload() {
        let workload = |target: &str, delivery: &str, reporting| SelectedWorkload {
            target: target.into(),
            delivery: delivery.into(),
            mta: MtaKind::Postfix,
            mta_annotated: false,
            replicas: 2,
            reporting,
        };
        let table = dry_run_table(
            &[
                workload("Deployment/a", "reload", None),
                workload("Deployment/b", "reload", Some(2)),
                workload("StatefulSet/c", "restart", None),
            ],
            &valid(&[], "TempFail"),
            "u@x.org",
        );
        let agents: Vec<&str> = table.rows.iter().map(|r| r[3].as_str()).collect();
        assert_eq!(
            agents,
            [
                "no report yet (reported during incidents)",
                "2/2 pods reporting",
                "no agent (restart delivery)"
            ]
        );
        assert_eq!(table.rows[0][2], "Postfix (default)");
    }
}
