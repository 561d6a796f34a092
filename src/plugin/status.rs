//! `status`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &StatusArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("status is not built yet".into()))
}
