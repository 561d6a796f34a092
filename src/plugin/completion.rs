//! `completion`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &CompletionArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("completion is not built yet".into()))
}
