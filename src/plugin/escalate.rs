//! `escalate`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct EscalateArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &EscalateArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("escalate is not built yet".into()))
}
