//! Shell completion, two ways.
//!
//! - `completion bash|zsh|fish` prints a script (clap_complete) completing the binary
//!   `kubectl-mail_incident` by its own name: subcommands, flags and their fixed values.
//! - `__complete WORDS...` (hidden) answers as cobra's `__complete` does, for
//!   `kubectl mail-incident <TAB>`: kubectl ≥ 1.26 runs the shim
//!   `kubectl_complete-mail_incident` (plugins/, installed next to the binary) with the
//!   words typed after `kubectl mail-incident`, the last one being completed; the answer
//!   is one candidate per line (`candidate<TAB>description`), then `:<directive>`
//!   (4: no file completion; 0: files). Incident names, namespaces and contexts come from
//!   the cluster and the kubeconfig, best effort: an error completes nothing, silently.

use super::{Cli, Connection, ConnectionArgs, PluginError};
use crate::api::MailIncident;
use clap::CommandFactory;
use clap_complete::Shell;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt, api::ListParams, config::Kubeconfig};
use std::path::PathBuf;

/// The name completion scripts complete: the binary kubectl finds on the PATH.
pub const BINARY: &str = "kubectl-mail_incident";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  source <(kubectl-mail_incident completion bash)\n  \
                        kubectl-mail_incident completion zsh > \"${fpath[1]}/_kubectl-mail_incident\"\n  \
                        kubectl-mail_incident completion fish > ~/.config/fish/completions/kubectl-mail_incident.fish\n\n\
                        `kubectl mail-incident <TAB>` (kubectl 1.26 and later) needs the shim\n\
                        kubectl_complete-mail_incident on the PATH instead (make plugin installs it)."
)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    pub shell: String,
}

#[derive(clap::Args, Debug)]
pub struct CompleteArgs {
    /// The words after `kubectl mail-incident`, the last one (maybe empty) being typed.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub words: Vec<String>,
}

pub async fn run(_connection: &ConnectionArgs, args: &CompletionArgs) -> Result<(), PluginError> {
    let shell = match args.shell.as_str() {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        _ => Shell::Fish,
    };
    print!("{}", script(shell));
    Ok(())
}

/// The completion script for `shell`. clap_complete lists hidden subcommands too, so the
/// script is made from the CLI without them (the `__complete` protocol is no user's word).
pub fn script(shell: Shell) -> String {
    let cli = Cli::command();
    let mut command = clap::Command::new(BINARY)
        .version(env!("CARGO_PKG_VERSION"))
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut out = Vec::new();
    if shell != Shell::Bash {
        clap_complete::generate(shell, &mut command, BINARY, &mut out);
        return String::from_utf8_lossy(&out).into_owned();
    }
    // clap_complete's bash script names a subcommand's case `kubectl__subcmd__mail_incident…`
    // where its dispatch says `kubectl__mail_incident…` when the binary's name has a `-`:
    // no flag of any subcommand would complete. Made for a name without one, then bound
    // to the binary.
    let unhyphenated = BINARY.replace('-', "_");
    clap_complete::generate(shell, &mut command, &unhyphenated, &mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .map(
            |line| match line.strip_suffix(&format!(" {unhyphenated}")) {
                Some(head) if line.trim_start().starts_with("complete ") => {
                    format!("{head} {BINARY}\n")
                }
                _ => format!("{line}\n"),
            },
        )
        .collect()
}

/// Answers kubectl's plugin completion.
pub async fn complete(
    _connection: &ConnectionArgs,
    args: &CompleteArgs,
) -> Result<(), PluginError> {
    let plan = plan(&args.words);
    let mut candidates = plan.candidates.clone();
    let found = match plan.lookup {
        Lookup::Nothing | Lookup::Files => vec![],
        Lookup::Incidents => incident_names(&plan.connection).await,
        Lookup::Namespaces => namespace_names(&plan.connection).await,
        Lookup::Contexts => context_names(&plan.connection),
    };
    candidates.extend(
        found
            .into_iter()
            .filter(|name| name.starts_with(&plan.prefix))
            .map(|name| (name, String::new())),
    );
    print!("{}", answer(&candidates, plan.directive()));
    Ok(())
}

/// What the cluster or kubeconfig must be asked for, after the fixed candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Nothing,
    Incidents,
    Namespaces,
    Contexts,
    /// A path: the shell's own file completion.
    Files,
}

/// What to complete, decided from the words alone.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Fixed candidates (subcommands, flags, enum values) with their descriptions.
    pub candidates: Vec<(String, String)>,
    pub lookup: Lookup,
    /// The word being completed.
    pub prefix: String,
    /// The connection flags among the words, for the lookups.
    pub connection: ConnectionArgs,
}

impl Plan {
    /// cobra's directive: 0 lets the shell complete files, 4 does not.
    pub fn directive(&self) -> u8 {
        if self.lookup == Lookup::Files { 0 } else { 4 }
    }
}

/// The subcommands whose first argument is an existing incident.
const TAKES_AN_INCIDENT: [&str; 5] = ["status", "history", "extend", "escalate", "resolve"];

/// Decides the completion of the last of `words` (the words after the plugin's name).
pub fn plan(words: &[String]) -> Plan {
    let mut root = Cli::command();
    root.build();
    let (typed, done) = match words.split_last() {
        Some((last, done)) => (last.clone(), done),
        None => (String::new(), &[][..]),
    };
    let mut connection = ConnectionArgs::default();
    let mut subcommand: Option<clap::Command> = None;
    let mut positionals = 0;
    let mut value_of: Option<clap::Arg> = None;
    for word in done {
        let current = subcommand.as_ref().unwrap_or(&root);
        if let Some(arg) = value_of.take() {
            remember(&mut connection, arg.get_id().as_str(), word);
            continue;
        }
        if let Some(flag) = word.strip_prefix('-').filter(|_| word.len() > 1) {
            let (flag, inline) = match flag.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (flag, None),
            };
            if let Some(arg) = find_flag(current, flag) {
                match inline {
                    Some(value) => remember(&mut connection, arg.get_id().as_str(), value),
                    None if arg.get_action().takes_values() => value_of = Some(arg.clone()),
                    None => remember(&mut connection, arg.get_id().as_str(), ""),
                }
            }
            continue;
        }
        match &subcommand {
            None => {
                subcommand = root
                    .get_subcommands()
                    .find(|s| s.get_name() == word && !s.is_hide_set())
                    .cloned();
            }
            Some(_) => positionals += 1,
        }
    }
    let current = subcommand.as_ref().unwrap_or(&root);
    let mut plan = Plan {
        candidates: vec![],
        lookup: Lookup::Nothing,
        prefix: typed.clone(),
        connection,
    };
    if let Some(arg) = value_of {
        match arg.get_id().as_str() {
            "namespace" => plan.lookup = Lookup::Namespaces,
            "context" => plan.lookup = Lookup::Contexts,
            "kubeconfig" => plan.lookup = Lookup::Files,
            _ => plan.candidates = values(&arg, &typed),
        }
        return plan;
    }
    if typed.starts_with('-') {
        plan.candidates = flags(current, &typed);
        return plan;
    }
    match &subcommand {
        None => {
            plan.candidates = root
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name().starts_with(&typed))
                .map(|s| (s.get_name().to_string(), about(s)))
                .collect();
        }
        Some(sub) if positionals == 0 && TAKES_AN_INCIDENT.contains(&sub.get_name()) => {
            plan.lookup = Lookup::Incidents;
        }
        Some(sub) => {
            if let Some(arg) = sub.get_positionals().nth(positionals) {
                plan.candidates = values(arg, &typed);
            }
        }
    }
    plan
}

fn about(command: &clap::Command) -> String {
    command
        .get_about()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// The flag `flag` (without its first `-`: `-n` is `n`, `--namespace` is `-namespace`).
fn find_flag<'a>(command: &'a clap::Command, flag: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| match flag.strip_prefix('-') {
            Some(long) => arg.get_long() == Some(long),
            None => flag.chars().count() == 1 && arg.get_short() == flag.chars().next(),
        })
}

/// Records the connection flags the lookups need.
fn remember(connection: &mut ConnectionArgs, id: &str, value: &str) {
    match id {
        "namespace" => connection.namespace = Some(value.into()),
        "context" => connection.context = Some(value.into()),
        "kubeconfig" => connection.kubeconfig = Some(PathBuf::from(value)),
        "all_namespaces" => connection.all_namespaces = true,
        _ => {}
    }
}

/// The long flags of `command` starting with `typed`, with their help.
fn flags(command: &clap::Command, typed: &str) -> Vec<(String, String)> {
    let mut flags: Vec<(String, String)> = command
        .get_arguments()
        .filter(|arg| !arg.is_positional() && !arg.is_hide_set())
        .filter_map(|arg| {
            let long = format!("--{}", arg.get_long()?);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            long.starts_with(typed).then_some((long, help))
        })
        .collect();
    for (long, help) in [("--help", "Print help"), ("--version", "Print version")] {
        if long.starts_with(typed) && !flags.iter().any(|(f, _)| f == long) {
            flags.push((long.into(), help.into()));
        }
    }
    flags.sort();
    flags
}

/// The fixed values of `arg` starting with `typed`.
fn values(arg: &clap::Arg, typed: &str) -> Vec<(String, String)> {
    arg.get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set() && v.get_name().starts_with(typed))
        .map(|v| {
            let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
            (v.get_name().to_string(), help)
        })
        .collect()
}

/// cobra's `__complete` answer.
pub fn answer(candidates: &[(String, String)], directive: u8) -> String {
    let mut out = String::new();
    for (candidate, description) in candidates {
        // A description is on the candidate's line; cobra's shells show it, and a line
        // break in it would start a candidate of its own.
        let description = description.lines().next().unwrap_or_default();
        if description.is_empty() {
            out.push_str(&format!("{candidate}\n"));
        } else {
            out.push_str(&format!("{candidate}\t{description}\n"));
        }
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

async fn incident_names(connection: &ConnectionArgs) -> Vec<String> {
    let Ok(cluster) = Connection::open(connection).await else {
        return vec![];
    };
    let api: Api<MailIncident> = if connection.all_namespaces {
        Api::all(cluster.client)
    } else {
        Api::namespaced(cluster.client, &cluster.namespace)
    };
    let mut names: Vec<String> = api
        .list_metadata(&ListParams::default())
        .await
        .map(|list| list.items.iter().map(|i| i.name_any()).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

async fn namespace_names(connection: &ConnectionArgs) -> Vec<String> {
    let Ok(cluster) = Connection::open(connection).await else {
        return vec![];
    };
    Api::<Namespace>::all(cluster.client)
        .list_metadata(&ListParams::default())
        .await
        .map(|list| list.items.iter().map(|n| n.name_any()).collect())
        .unwrap_or_default()
}

fn context_names(connection: &ConnectionArgs) -> Vec<String> {
    let kubeconfig = match &connection.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    };
    kubeconfig
        .map(|k| k.contexts.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        let mut words: Vec<String> = line.split(' ').map(String::from).collect();
        if line.is_empty() {
            words = vec![String::new()];
        }
        words
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.candidates.iter().map(|(c, _)| c.as_str()).collect()
    }

    #[test]
    fn the_first_word_completes_to_the_visible_subcommands() {
        let all = plan(&words(""));
        assert_eq!(
            names(&all),
            [
                "declare",
                "status",
                "list",
                "extend",
                "escalate",
                "resolve",
                "history",
                "completion",
                "help"
            ]
        );
        assert_eq!(all.directive(), 4);
        assert_eq!(names(&plan(&words("s"))), ["status"]);
        assert_eq!(names(&plan(&words("e"))), ["extend", "escalate"]);
        assert!(!names(&all).contains(&"__complete"));
        assert_eq!(
            plan(&words("st")).candidates[0].1,
            "What every target of an incident answers now: mode, pods applied, queues, release"
        );
    }

    #[test]
    fn an_incident_is_looked_up_for_commands_that_take_one_with_the_connection_typed() {
        let status = plan(&words("-n mail status --context=lab o"));
        assert_eq!(status.lookup, Lookup::Incidents);
        assert_eq!(status.prefix, "o");
        assert_eq!(status.connection.namespace.as_deref(), Some("mail"));
        assert_eq!(status.connection.context.as_deref(), Some("lab"));
        assert_eq!(plan(&words("history -A ")).lookup, Lookup::Incidents);
        assert!(plan(&words("history -A ")).connection.all_namespaces);
        // Once named, nothing more to look up.
        assert_eq!(plan(&words("status outage ")).lookup, Lookup::Nothing);
        assert_eq!(plan(&words("list ")).lookup, Lookup::Nothing);
    }

    #[test]
    fn flags_and_their_values_complete() {
        let flags = plan(&words("status --w"));
        assert_eq!(names(&flags), ["--watch"]);
        let output = plan(&words("status -o "));
        assert_eq!(names(&output), ["table", "wide", "json", "yaml", "name"]);
        assert_eq!(names(&plan(&words("list --output=x -o j"))), ["json"]);
        assert_eq!(plan(&words("status -n ")).lookup, Lookup::Namespaces);
        assert_eq!(plan(&words("--context ")).lookup, Lookup::Contexts);
        let kubeconfig = plan(&words("list --kubeconfig "));
        assert_eq!(
            (kubeconfig.lookup, kubeconfig.directive()),
            (Lookup::Files, 0)
        );
        assert_eq!(names(&plan(&words("completion "))), ["bash", "zsh", "fish"]);
        assert!(names(&plan(&words("--"))).contains(&"--namespace"));
    }

    #[test]
    fn the_answer_is_cobras() {
        let candidates = vec![
            (
                "status".to_string(),
                "What every target answers.\nMore.".to_string(),
            ),
            ("outage".to_string(), String::new()),
        ];
        assert_eq!(
            answer(&candidates, 4),
            "status\tWhat every target answers.\noutage\n:4\n"
        );
    }

    #[test]
    fn scripts_complete_the_binary_by_its_name() {
        assert!(script(Shell::Bash).lines().any(|l| {
            l.trim_start().starts_with("complete -F") && l.ends_with(" kubectl-mail_incident")
        }));
        assert!(script(Shell::Bash).contains("history completion help"));
        assert!(script(Shell::Zsh).starts_with("#compdef kubectl-mail_incident"));
        assert!(script(Shell::Fish).contains("complete -c kubectl-mail_incident"));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            assert!(!script(shell).contains("__complete"), "{shell}");
        }
    }
}
