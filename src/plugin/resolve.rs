//! `resolve`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &ResolveArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("resolve is not built yet".into()))
}
