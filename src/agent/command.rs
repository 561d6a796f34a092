//! The MTA's own commands (`postconf`, `postqueue`, `exim -bV`, a site's hook), run
//! with a deadline: a command that hangs fails the apply, which the agent retries with
//! backoff, instead of holding the MTA in the middle of a change for good. Called from
//! blocking threads only, never from the async workers.

use super::error::{AgentError, FileAction};
use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};
use wait_timeout::ChildExt;

/// How long one MTA command may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// How much a queue scan's niceness is raised: a scan of a million messages takes CPU
/// for seconds, and the agent's async workers (`/healthz`, the policy service, a mode
/// switch) and the MTA itself must win the CPU from it on a small node.
const SCAN_NICENESS: i32 = 10;

/// Runs `scan` on a thread of its own at a lower priority (see [`SCAN_NICENESS`]); the
/// commands it starts inherit it. A thread of its own, because a priority once lowered
/// cannot be raised again without `CAP_SYS_NICE`, and the blocking pool's threads go on
/// to apply modes.
pub fn at_low_priority<T: Send>(scan: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|threads| {
        threads
            .spawn(|| {
                // Linux keeps a niceness per thread: this one's only. Failing to lower it
                // costs nothing but the CPU the scan then shares evenly.
                rustix::process::nice(SCAN_NICENESS).ok();
                scan()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sends a reload's SIGHUP to the MTA's main process `pid`, as its `pid_file` named it
/// (see [`main_process`]). Sent by the agent itself: an MTA image need not have a `kill`
/// program (Debian's slim has none).
pub fn hang_up(pid: rustix::process::Pid, pid_file: &Path) -> Result<(), AgentError> {
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
        AgentError::HangUp {
            pid: pid.as_raw_nonzero().get(),
            pid_file: pid_file.to_path_buf(),
            source: e.into(),
        }
    })
}

/// The process a `pid_file` names.
pub fn main_process(pid_file: &Path) -> Result<rustix::process::Pid, AgentError> {
    let text =
        std::fs::read_to_string(pid_file).map_err(AgentError::file(FileAction::Read, pid_file))?;
    // A positive process id only: 0, -1 or -N would signal a whole process group.
    text.trim()
        .parse::<u32>()
        .ok()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| AgentError::NotAProcessId {
            pid_file: pid_file.to_path_buf(),
            found: text.clone(),
        })
}

/// The children of process `parent` whose command name is `name`; `None` where the
/// processes cannot be listed.
pub fn children_named(parent: rustix::process::Pid, name: &str) -> Option<Vec<i32>> {
    let parent = parent.as_raw_nonzero().get();
    let processes = procfs::process::all_processes().ok()?;
    Some(
        processes
            .filter_map(|process| process.ok()?.stat().ok())
            .filter(|stat| stat.ppid == parent && stat.comm == name)
            .map(|stat| stat.pid)
            .collect(),
    )
}

/// Runs `command` to its end within [`COMMAND_DEADLINE`]; its standard output, or an
/// error carrying its status and standard error.
pub fn run_command(command: &mut Command) -> Result<String, AgentError> {
    let described = format!("{command:?}");
    let cannot_run = |source| AgentError::CannotRun {
        command: described.clone(),
        source,
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    // Both pipes are drained on their own threads, so a chatty command cannot block on a
    // full pipe while we wait for it.
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let Some(status) = child.wait_timeout(COMMAND_DEADLINE).map_err(cannot_run)? else {
        child.kill().map_err(cannot_run)?;
        child.wait().map_err(cannot_run)?;
        return Err(AgentError::TimedOut {
            command: described,
            after: COMMAND_DEADLINE,
        });
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(AgentError::CommandFailed {
            command: described,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).ok();
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_main_process_is_found_from_its_pid_file_and_its_children_by_name() {
        let directory = tempfile::tempdir().unwrap();
        let pid_file = directory.path().join("main.pid");
        std::fs::write(&pid_file, format!("{:>10}\n", std::process::id())).unwrap();
        let me = main_process(&pid_file).unwrap();
        assert_eq!(
            u32::try_from(me.as_raw_nonzero().get()).unwrap(),
            std::process::id()
        );
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let found = children_named(me, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, Some(vec![i32::try_from(child.id()).unwrap()]));
        assert_eq!(children_named(me, "qmgr"), Some(vec![]));
        for pid in ["-1", "0", "x", ""] {
            std::fs::write(&pid_file, pid).unwrap();
            assert!(
                matches!(main_process(&pid_file), Err(AgentError::NotAProcessId { found, .. }) if found == pid),
                "{pid:?}"
            );
        }
        std::fs::write(&pid_file, "-1\n").unwrap();
        assert_eq!(
            main_process(&pid_file).unwrap_err().to_string(),
            format!("{}: not a process id: \"-1\\n\"", pid_file.display())
        );
    }

    #[test]
    fn a_missing_pid_file_is_named_and_nothing_is_signalled() {
        let directory = tempfile::tempdir().unwrap();
        let pid_file = directory.path().join("master.pid");
        let error = main_process(&pid_file).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                pid_file.display()
            )
        );
    }

    #[test]
    fn output_and_failures_are_reported() {
        assert_eq!(
            run_command(Command::new("sh").args(["-c", "echo out"])).unwrap(),
            "out\n"
        );
        let failed = run_command(Command::new("sh").args(["-c", "echo why >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            failed,
            "\"sh\" \"-c\" \"echo why >&2; exit 3\": exit status: 3: why"
        );
        let killed = run_command(Command::new("sh").args(["-c", "echo dying >&2; kill -9 $$"]))
            .unwrap_err()
            .to_string();
        assert!(killed.ends_with(": signal: 9 (SIGKILL): dying"), "{killed}");
        let missing = run_command(&mut Command::new("/nonexistent/postconf")).unwrap_err();
        assert!(
            matches!(&missing, AgentError::CannotRun { command, source }
                if command == "\"/nonexistent/postconf\"" && source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
    }

    #[test]
    fn a_scan_runs_at_a_lower_priority_on_a_thread_of_its_own() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let during = at_low_priority(|| rustix::process::getpriority_process(None).unwrap());
        assert_eq!(during, (before + SCAN_NICENESS).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }
}
