//! Files the agent depends on after a crash (its state, the Postfix baseline) and files
//! an MTA reads while it runs (Exim's mode and retry files, the generic mode file).

use super::error::{AgentError, FileAction};
use std::{
    fs::Permissions,
    io::{ErrorKind, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
};

/// Replaces `path` with `text` durably: written aside in the same directory, flushed to
/// disk, renamed over `path`, and the rename itself flushed, so that neither the MTA nor
/// a restarted agent ever reads half a file, and a crash or power loss leaves the old
/// file or the new one. Readable by all (0644): the MTA may run as another user.
pub fn write_durably(path: &Path, text: &str) -> Result<(), AgentError> {
    replace_durably(path, text.as_bytes(), 0o644)
}

/// Replaces `path` with `bytes` durably (as [`write_durably`]), with permissions `mode`.
pub fn replace_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    replace(path, bytes, mode).map_err(AgentError::file(FileAction::Write, path))
}

fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let directory = directory_of(path);
    let mut aside = tempfile::Builder::new()
        .prefix(".mail-incident-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(directory)?;
    aside.write_all(bytes)?;
    // The mode asked for, whatever the umask took from it at creation.
    aside
        .as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    aside.as_file().sync_all()?;
    aside.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(directory)?.sync_all()
}

/// The file's text, `None` if it does not exist. Any other failure is an error: a file
/// that exists but cannot be read must not be taken for a missing one.
pub fn read_if_exists(path: &Path) -> Result<Option<String>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(AgentError::file(FileAction::Read, path)(error)),
    }
}

/// Removes `path` durably; a missing file is already removed.
pub fn remove_durably(path: &Path) -> Result<(), AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(AgentError::file(FileAction::Remove, path)(error)),
    }
    std::fs::File::open(directory_of(path))
        .and_then(|directory| directory.sync_all())
        .map_err(AgentError::file(FileAction::Remove, path))
}

/// The directory holding `path`, whose entry a rename or removal changes.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Calls `visit` with every entry under `directory` that is not a directory,
/// subdirectories included (a spool split into hashed subdirectories). Symbolic links are
/// not followed into. A directory that is gone counts as empty: an MTA creates its queue
/// directories with their first message and removes hashed ones while they are read.
pub fn for_each_file_under(
    directory: &Path,
    mut visit: impl FnMut(&Path),
) -> Result<(), AgentError> {
    let mut directories = vec![directory.to_path_buf()];
    while let Some(directory) = directories.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            entries => entries.map_err(AgentError::file(FileAction::List, &directory))?,
        };
        for entry in entries {
            let entry = entry.map_err(AgentError::file(FileAction::List, &directory))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(AgentError::file(FileAction::Read, &path))?;
            if file_type.is_dir() {
                directories.push(path);
            } else {
                visit(&path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_replaces_the_whole_file_readable_by_all_and_leaves_nothing_aside() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state.json");
        write_durably(&path, "first").unwrap();
        write_durably(&path, "second").unwrap();
        assert_eq!(read_if_exists(&path).unwrap().as_deref(), Some("second"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn only_a_missing_file_reads_as_none() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(
            read_if_exists(&directory.path().join("absent")).unwrap(),
            None
        );
        // A directory where a file is expected cannot be read: an error, not "absent".
        let error = read_if_exists(directory.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot read {}: Is a directory (os error 21)",
                directory.path().display()
            )
        );
        remove_durably(&directory.path().join("absent")).unwrap();
    }
}
