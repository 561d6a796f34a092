//! `extend`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct ExtendArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &ExtendArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("extend is not built yet".into()))
}
