//! The kubectl plugin `kubectl mail-incident` (see `mail_incident_operator::plugin`).

use clap::Parser;
use mail_incident_operator::plugin::{Cli, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts")
        .block_on(run(cli))
}
