//! What goes wrong between the agent and its MTA, each error with what it was about: the
//! command with its status and what it said, the file with what was being done to it,
//! the pid file and the process. A log line or a failed apply then says what failed
//! without a second look, and a test can tell one failure from another.

use std::{fmt, path::PathBuf, process::ExitStatus, time::Duration};

/// Why the agent could not drive its MTA or keep its own files.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A command could not be started, waited for or killed.
    #[error("{command}: {source}")]
    CannotRun {
        /// The command line, as `Command`'s debug form shows it (program and arguments
        /// quoted).
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// A command ended with a failure: its exit status, or the signal that ended it.
    #[error("{command}: {status}: {stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// A command still ran at its deadline, and was killed.
    #[error("{command}: still running after {after:?}; killed")]
    TimedOut { command: String, after: Duration },

    /// A file or directory could not be read, written, listed or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: FileAction,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file the agent wrote (its state, the Postfix baseline) does not parse: taking it
    /// for a missing one would forget an incident's hold or the site's settings.
    #[error("cannot parse {}: {source}", path.display())]
    Unparsable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// What the agent writes down (its state, the Postfix baseline, the generic mode
    /// file) could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Unencodable {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A pid file holds no positive process id (`0` or `-1` would signal a whole group).
    #[error("{}: not a process id: {found:?}", pid_file.display())]
    NotAProcessId { pid_file: PathBuf, found: String },

    /// The reload's SIGHUP could not be sent to the process a pid file names.
    #[error("SIGHUP to process {pid} ({}): {source}", pid_file.display())]
    HangUp {
        pid: i32,
        pid_file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Postfix's recipient restrictions do not ask the agent's policy service, which
    /// then could never refuse a recipient.
    #[error(
        "{}: smtpd_recipient_restrictions must start with \
         `check_policy_service {{ {service}, default_action=DUNNO }}` so that the agent can \
         answer RCPT in TempFail and HardReject; it is `{restrictions}`",
        main_cf.display()
    )]
    NoPolicyService {
        main_cf: PathBuf,
        /// The agent's policy service, as `main.cf` names it (`inet:127.0.0.1:10040`).
        service: String,
        /// `smtpd_recipient_restrictions` as Postfix reads it, trimmed.
        restrictions: String,
    },

    /// A blocking task of the loop (an apply, a queue scan) panicked or was cancelled:
    /// what it did to the MTA is unknown.
    #[error(transparent)]
    Task(tokio::task::JoinError),
}

impl AgentError {
    /// A failure to `action` the file or directory at `path`, for `map_err`.
    pub fn file(
        action: FileAction,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File {
            action,
            path,
            source,
        }
    }
}

/// What was being done to a file or directory that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Read,
    Write,
    Remove,
    List,
    Create,
    /// Backdating a configuration file (see `postfix::settle`).
    Backdate,
}

impl fmt::Display for FileAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileAction::Read => "read",
            FileAction::Write => "write",
            FileAction::Remove => "remove",
            FileAction::List => "list",
            FileAction::Create => "create",
            FileAction::Backdate => "backdate",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_the_command_and_the_deadline() {
        let error = AgentError::TimedOut {
            command: "\"postqueue\" \"-f\"".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(
            error.to_string(),
            "\"postqueue\" \"-f\": still running after 60s; killed"
        );
    }

    #[test]
    fn a_postfix_without_the_policy_clause_is_told_what_to_write_where() {
        let error = AgentError::NoPolicyService {
            main_cf: "/etc/postfix/main.cf".into(),
            service: "inet:127.0.0.1:10040".into(),
            restrictions: "permit_mynetworks, reject_unauth_destination".into(),
        };
        assert_eq!(
            error.to_string(),
            "/etc/postfix/main.cf: smtpd_recipient_restrictions must start with \
             `check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO }` so that the \
             agent can answer RCPT in TempFail and HardReject; it is \
             `permit_mynetworks, reject_unauth_destination`"
        );
    }

    #[test]
    fn a_file_error_names_what_was_done_to_which_path_and_keeps_its_cause() {
        let error = AgentError::file(FileAction::Write, "/var/spool/agent/agent-state.json")(
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(
            error.to_string(),
            "cannot write /var/spool/agent/agent-state.json: permission denied"
        );
        let cause = std::error::Error::source(&error).expect("the io error is its source");
        assert_eq!(cause.to_string(), "permission denied");
    }
}
