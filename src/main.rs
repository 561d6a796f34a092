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
    Run(controller::Settings),
    /// Run the MTA sidecar: apply the workload's mode document to its Postfix, Exim or other MTA.
    Agent(Box<agent::Settings>),
    /// Copy this binary into DIRECTORY (an init container's step: the agent then runs
    /// from the site's own MTA image, next to that image's MTA tools).
    InstallAgent { directory: PathBuf },
    /// Print the MailIncident CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
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
            controller::run(settings).await
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
