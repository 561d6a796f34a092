//! `declare`: not built yet.

use super::{ConnectionArgs, PluginError};

#[derive(clap::Args, Debug)]
pub struct DeclareArgs {}

pub async fn run(_connection: &ConnectionArgs, _args: &DeclareArgs) -> Result<(), PluginError> {
    Err(PluginError::Refused("declare is not built yet".into()))
}
