//! `history`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &HistoryArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("history is not built yet".into()))
}
