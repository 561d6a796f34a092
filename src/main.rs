use clap::{Parser, Subcommand};
use mail_incident_operator::{agent, api, controller, telemetry};
use std::{path::PathBuf, process::ExitCode};

/// Switches a fleet of MTAs among mail incident modes from one MailIncident resource.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<controller::Settings>),
    /// Run the MTA sidecar: apply the workload's mode document to its Postfix, Exim or other MTA.
    Agent(Box<agent::Settings>),
    /// Copy this binary into DIRECTORY (an init container's step: the agent then runs
    /// from the site's own MTA image, next to that image's MTA tools).
    InstallAgent { directory: PathBuf },
    /// Print the MailIncident CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> ExitCode {
    one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts")
        .block_on(run(Cli::parse()))
}

/// Makes glibc's malloc keep one arena for every thread, before any thread starts. By
/// default each thread that meets contention gets an arena of its own (up to eight per
/// core), and memory freed in one arena serves only that arena's later allocations:
/// with caches filled on one worker and a mode change's transient writes on another,
/// peak RSS at a thousand targets was 3-4 MiB higher. Allocation here is far too light
/// for one arena's lock to be contended.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before any other thread
    // exists, so no allocation runs concurrently with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Crd => {
            print!("{}", api::crd_yaml());
            Ok(())
        }
        Command::InstallAgent { directory } => match agent::install_agent(&directory) {
            Ok(installed) => {
                println!("installed {}", installed.display());
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                eprintln!(
                    "cannot install the agent into {}: {error}",
                    directory.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Command::Run(settings) => {
            telemetry::init(settings.log_format);
            controller::run(*settings).await
        }
        Command::Agent(settings) => {
            telemetry::init(settings.log_format);
            agent::run(*settings).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(category = error.category(), "{error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// clap checks a command line's definition only when it is parsed: check it here.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
