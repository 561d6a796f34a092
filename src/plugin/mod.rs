//! `kubectl mail-incident`: the on-call SRE's cockpit. A kubectl plugin (the binary
//! `kubectl-mail_incident`) sharing this crate's types, validation and bounds, so that it
//! refuses exactly what the controller would, in the same words. Every write is a
//! server-side apply or a precise patch under the field manager [`FIELD_MANAGER`].
//!
//! It follows kubectl's conventions: `--kubeconfig`, `--context`, `-n`, `-A`, `-o
//! table|wide|json|yaml|name`, `--no-headers`, colour only on a terminal, exit status 0 on
//! success and 1 on any error (2 for a command line clap refuses).

mod connect;
mod error;
mod look_style;
mod output;
mod write_common;

pub mod completion;
pub mod declare;
pub mod escalate;
pub mod extend;
pub mod history;
pub mod list;
pub mod resolve;
pub mod status;

pub use connect::Connection;
pub use error::PluginError;
pub use output::{Format, Table};

use clap::{Args, Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

/// The field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-mail-incident";

/// Declare, watch, extend, escalate and resolve mail incidents.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl mail-incident",
    bin_name = "kubectl mail-incident",
    version,
    about,
    after_help = "Examples:\n  kubectl mail-incident list -A\n  kubectl mail-incident status storage-outage -n mail"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster, as kubectl takes it.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (list and status).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

/// How to print what a command shows.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// Print tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Declare an incident: switch the selected MTAs to a mode.
    Declare(declare::DeclareArgs),
    /// What every target of an incident answers now: mode, pods applied, queues, release.
    Status(status::StatusArgs),
    /// List incidents: mode, scope, targets applied, start, end, reason.
    #[command(
        after_help = "Examples:\n  kubectl mail-incident list\n  kubectl mail-incident list -A -o wide\n  kubectl mail-incident list -o name"
    )]
    List(list::ListArgs),
    /// Move an incident's end, within its 100-day bound.
    Extend(extend::ExtendArgs),
    /// Switch an incident to a more severe mode.
    Escalate(escalate::EscalateArgs),
    /// End an incident (kept as the record) and follow the release of the held mail.
    Resolve(resolve::ResolveArgs),
    /// An incident's transitions and events, oldest first.
    History(history::HistoryArgs),
    /// Shell completion for bash, zsh or fish.
    Completion(completion::CompletionArgs),
    /// kubectl's plugin completion (cobra's protocol), run by kubectl_complete-mail_incident.
    #[command(name = "__complete", hide = true)]
    Complete(completion::CompleteArgs),
}

/// Runs the plugin; what it prints goes to stdout, errors to stderr.
pub async fn run(cli: Cli) -> ExitCode {
    let connection = &cli.connection;
    let result = match &cli.command {
        Command::Declare(args) => declare::run(connection, args).await,
        Command::Status(args) => status::run(connection, args).await,
        Command::List(args) => list::run(connection, args).await,
        Command::Extend(args) => extend::run(connection, args).await,
        Command::Escalate(args) => escalate::run(connection, args).await,
        Command::Resolve(args) => resolve::run(connection, args).await,
        Command::History(args) => history::run(connection, args).await,
        Command::Completion(args) => completion::run(connection, args).await,
        Command::Complete(args) => completion::complete(connection, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
