//! Any other MTA: the agent writes what the MTA must do to a file, as JSON, and runs a hook
//! command that reconfigures the MTA from it. The file holds a [`Held`]:
//! `{"state": "Normal"}`, `{"state": "Incident", "document": {...mode document...}}` or
//! `{"state": "Releasing", "release": {"concurrency": 4, "lifetime": "5d", ...}}`.
//! The document's `rules` are in order of precedence: a recipient gets the first rule
//! whose `recipientDomains` cover its domain (`example.com` exactly, `*.example.com` its
//! subdomains; a rule without them covers everyone) and normal service if none does;
//! every rule's recipients have their queued mail held. A release names the
//! `heldDomains` when only theirs was held, so that the hook releases that mail only.
//! The hook also gets `MAIL_INCIDENT_STATE` (Normal, AcceptAndQueue, TempFail, HardReject
//! or Releasing) and `MAIL_INCIDENT_FILE` in its environment; a non-zero exit is a failed
//! apply, retried with backoff. The agent cannot measure such an MTA's queue. The file is
//! the agent's: the hook reads it and leaves it in place, since a changed or missing file
//! is drift, written again and the hook run again.

use super::{
    Difference, DriftKind, Mta, command::run_command, differs, error::AgentError, files,
    state::Held,
};
use crate::api::mode_document::QueueFigures;
use std::{path::PathBuf, process::Command};

pub struct Generic {
    pub mode_file: PathBuf,
    /// Run with `sh -c`.
    pub hook: String,
}

impl Mta for Generic {
    fn apply(&self, held: &Held) -> Result<(), AgentError> {
        files::write_durably(&self.mode_file, &render(held)?)?;
        run_command(
            Command::new("sh")
                .arg("-c")
                .arg(&self.hook)
                .env("MAIL_INCIDENT_STATE", held.state().as_str())
                .env("MAIL_INCIDENT_FILE", &self.mode_file),
        )?;
        Ok(())
    }

    fn queue(&self, _: &Held) -> Result<Option<QueueFigures>, AgentError> {
        Ok(None)
    }

    /// The mode file as it is now: the hook's MTA reads its state from it. What the hook
    /// made of it cannot be read back; a changed file is applied again, hook included.
    fn drift(&self, held: &Held) -> Result<Vec<Difference>, AgentError> {
        let found = files::read_if_exists(&self.mode_file)?;
        let wanted = render(held)?;
        Ok(if found.as_deref() == Some(wanted.as_str()) {
            vec![]
        } else {
            vec![Difference {
                kind: DriftKind::Answer,
                what: differs("mode file", found.as_deref(), Some(&wanted)),
            }]
        })
    }
}

/// The mode file's text for `held`.
fn render(held: &Held) -> Result<String, AgentError> {
    serde_json::to_string_pretty(held).map_err(|source| AgentError::Unencodable {
        what: "the mode file",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_rewritten_mode_file_is_drift_until_applied_again() {
        let directory = tempfile::tempdir().unwrap();
        let generic = Generic {
            mode_file: directory.path().join("mode.json"),
            hook: "true".into(),
        };
        let held = crate::agent::fixtures::held(&crate::agent::fixtures::document(
            crate::api::Mode::TempFail,
            452,
            "4.3.1",
        ));
        generic.apply(&held).unwrap();
        assert_eq!(generic.drift(&held).unwrap(), []);
        std::fs::write(&generic.mode_file, "{\"state\": \"Normal\"}").unwrap();
        let rewritten = generic.drift(&held).unwrap();
        assert_eq!(rewritten.len(), 1);
        assert!(
            rewritten[0]
                .what
                .starts_with("mode file = \"{\\\"state\\\": \\\"Normal\\\"}\", want "),
            "{rewritten:?}"
        );
        std::fs::remove_file(&generic.mode_file).unwrap();
        assert!(
            generic.drift(&held).unwrap()[0]
                .what
                .starts_with("mode file = (absent)")
        );
        generic.apply(&held).unwrap();
        assert_eq!(generic.drift(&held).unwrap(), []);
    }

    #[test]
    fn a_failing_hook_is_a_failed_apply_with_its_status_and_what_it_said() {
        let directory = tempfile::tempdir().unwrap();
        let generic = Generic {
            mode_file: directory.path().join("mode.json"),
            hook: "echo 'mta: no such queue' >&2; exit 2".into(),
        };
        let error = generic.apply(&Held::Normal).unwrap_err();
        assert!(
            matches!(&error, AgentError::CommandFailed { status, stderr, .. }
                if status.code() == Some(2) && stderr == "mta: no such queue"),
            "{error:?}"
        );
        // The command line comes after the environment it was given.
        let text = error.to_string();
        assert!(
            text.ends_with(
                "\"sh\" \"-c\" \"echo 'mta: no such queue' >&2; exit 2\": exit status: 2: \
                 mta: no such queue"
            ),
            "{text}"
        );
    }
}
