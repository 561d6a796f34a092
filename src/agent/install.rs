//! `mail-incident-operator install-agent DIR`: the init container's copy of this binary
//! into a volume shared with the agent's container. The agent runs from the site's own MTA
//! image, whose `postconf`, `postfix` and `exim4` are the very versions the MTA runs; the
//! operator's image has no shell, so the copy is this binary's own.

use super::{
    error::{AgentError, FileAction},
    files,
};
use std::path::{Path, PathBuf};

/// The name of the installed copy in `directory`.
pub const INSTALLED_NAME: &str = "mail-incident-operator";

/// Copies the running binary to `directory/mail-incident-operator`, executable by all and
/// replaced whole: an agent container starting at the same moment runs the old copy or
/// the new one, never half of one. Returns the installed path.
pub fn install_agent(directory: &Path) -> Result<PathBuf, AgentError> {
    // Where Linux names the running binary, which `current_exe` reads.
    let binary =
        std::env::current_exe().map_err(AgentError::file(FileAction::Read, "/proc/self/exe"))?;
    install_from(&binary, directory)
}

/// Copies `binary` to `directory/mail-incident-operator`, as [`install_agent`].
fn install_from(binary: &Path, directory: &Path) -> Result<PathBuf, AgentError> {
    let bytes = std::fs::read(binary).map_err(AgentError::file(FileAction::Read, binary))?;
    let target = directory.join(INSTALLED_NAME);
    files::replace_durably(&target, &bytes, 0o755)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_installed_copy_is_the_binary_executable_by_all_with_nothing_aside() {
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), b"\x7fELF a binary").unwrap();
        let directory = tempfile::tempdir().unwrap();
        let installed = install_from(source.path(), directory.path()).unwrap();
        // A second install replaces the first (an init container that ran before).
        std::fs::write(source.path(), b"\x7fELF a newer binary").unwrap();
        let installed_again = install_from(source.path(), directory.path()).unwrap();
        assert_eq!(installed, installed_again);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            b"\x7fELF a newer binary"
        );
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(INSTALLED_NAME)]);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let source = tempfile::NamedTempFile::new().unwrap();
        let absent = directory.path().join("absent");
        let error = install_from(source.path(), &absent).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot write {}: ",
                absent.join(INSTALLED_NAME).display()
            )),
            "{error}"
        );
    }
}
