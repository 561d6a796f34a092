//! Files the agent depends on after a crash (its state, the Postfix baseline) and files
//! an MTA reads while it runs (Exim's mode and retry files, the generic mode file).

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
pub fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    replace_durably(path, text.as_bytes(), 0o644)
}

/// Replaces `path` with `bytes` durably (as [`write_durably`]), with permissions `mode`.
pub fn replace_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
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
pub fn read_if_exists(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Removes `path` durably; a missing file is already removed.
pub fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    }
    std::fs::File::open(directory_of(path))?.sync_all()
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
pub fn for_each_file_under(directory: &Path, mut visit: impl FnMut(&Path)) -> std::io::Result<()> {
    let mut directories = vec![directory.to_path_buf()];
    while let Some(directory) = directories.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            entries => entries.map_err(|e| with_path(e, &directory))?,
        };
        for entry in entries {
            let entry = entry.map_err(|e| with_path(e, &directory))?;
            let path = entry.path();
            if entry.file_type().map_err(|e| with_path(e, &path))?.is_dir() {
                directories.push(path);
            } else {
                visit(&path);
            }
        }
    }
    Ok(())
}

/// `e`, saying which path it is about.
pub fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
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
        assert!(read_if_exists(directory.path()).is_err());
        remove_durably(&directory.path().join("absent")).unwrap();
    }
}
