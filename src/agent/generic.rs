//! Any other MTA: the agent writes what the MTA must do to a file, as JSON, and runs a hook
//! command that reconfigures the MTA from it. The file holds a [`Held`]:
//! `{"state": "Normal"}`, `{"state": "Incident", "document": {...mode document...}}` or
//! `{"state": "Releasing", "release": {"concurrency": 4, "lifetime": "5d", ...}}`.
//! The hook also gets `MAIL_INCIDENT_STATE` (Normal, AcceptAndQueue, TempFail, HardReject
//! or Releasing) and `MAIL_INCIDENT_FILE` in its environment; a non-zero exit is a failed
//! apply, retried with backoff. The agent cannot measure such an MTA's queue.

use super::{Mta, command::run_command, files, state::Held};
use crate::api::mode_document::QueueFigures;
use std::{path::PathBuf, process::Command};

pub struct Generic {
    pub mode_file: PathBuf,
    /// Run with `sh -c`.
    pub hook: String,
}

impl Mta for Generic {
    fn apply(&self, held: &Held) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(held).map_err(std::io::Error::other)?;
        files::write_durably(&self.mode_file, &text)?;
        run_command(
            Command::new("sh")
                .arg("-c")
                .arg(&self.hook)
                .env("MAIL_INCIDENT_STATE", held.label())
                .env("MAIL_INCIDENT_FILE", &self.mode_file),
        )?;
        Ok(())
    }

    fn queue(&self) -> std::io::Result<Option<QueueFigures>> {
        Ok(None)
    }
}
