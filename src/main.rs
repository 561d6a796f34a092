use clap::{Parser, Subcommand};
use mail_incident_operator::{api, controller, telemetry};
use std::process::ExitCode;

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
    /// Print the MailIncident CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => print!("{}", api::crd_yaml()),
        Command::Run(settings) => {
            telemetry::init(settings.log_format);
            if let Err(error) = controller::run(settings).await {
                tracing::error!(category = error.category(), "{error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
