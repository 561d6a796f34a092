//! Postfix's queue, measured by reading its queue files the way `showq` does, without
//! `postqueue -j`. The listing goes through one single-threaded `showq` process that
//! formats every recipient and every deferral reason as JSON: about 80 s for a million
//! messages, which is longer than a report period. Reading the files here needs only
//! the few records that say when a message arrived and whom it is still for.
//!
//! A queue file is a sequence of records: a type byte, a length in 7-bit groups (low
//! first) and the data (`src/global/record.c`). The agent reads:
//! - `C`, the size record: its first field is the size of the message content, skipped
//!   at `M` without being read;
//! - `T`, the arrival time (seconds, then microseconds);
//! - `R`, a recipient not yet delivered (a delivered one is rewritten in place to `D`);
//! - `p`, a pointer to where reading goes on (recipients appended later), `0` for none;
//! - `E`, the end.
//!
//! Like `showq`, it lists the `maildrop`, `active`, `incoming`, `deferred` and `hold`
//! queues, hashed subdirectories included, and skips a file whose owner permissions are
//! not `rwx`: `cleanup` is still writing it. A file gone between the directory listing
//! and its opening was delivered meanwhile.

use crate::api::{mode_document::QueueFigures, scope::DomainPattern};
use std::{
    fs::File,
    io::{BufRead, BufReader, ErrorKind, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use super::{
    error::{AgentError, FileAction},
    files,
    state::Held,
};

/// The queues `showq` lists, in its order.
const QUEUES: [&str; 5] = ["maildrop", "active", "incoming", "deferred", "hold"];

/// The longest record whose data the agent keeps (an arrival time, an address, a size or
/// a pointer); Postfix bounds addresses far below this. A file with a longer one of
/// these is not a queue file the agent can read, and is left out.
const MAX_KEPT_RECORD: usize = 64 * 1024;

/// How many backward jumps one file may make, as `rec_goto` allows: one per appended
/// batch of recipients, so a file that makes more loops.
const MAX_REVERSE_JUMPS: usize = 10_000;

/// Counts the messages queued under `queue_directory` into figures, each with its queue
/// and age at `now` (seconds since the epoch). Only messages with a recipient left that
/// `scope` holds count when it is given (see [`Held::counts`]). A queue directory that
/// cannot be read is an error; a file that cannot be read is left out, as `showq` does.
pub fn measure(
    queue_directory: &Path,
    scope: Option<&[DomainPattern]>,
    now: i64,
) -> Result<QueueFigures, AgentError> {
    std::fs::read_dir(queue_directory)
        .map_err(AgentError::file(FileAction::List, queue_directory))?;
    let mut figures = QueueFigures::default();
    for queue in QUEUES {
        files::for_each_file_under(&queue_directory.join(queue), |path| {
            if let Some(arrival) = counted_arrival(path, scope) {
                figures.add(queue, arrival, now);
            }
        })?;
    }
    Ok(figures)
}

/// The arrival time of the message in the queue file at `path`, if it is a complete
/// queue file that counts under `scope`.
fn counted_arrival(path: &Path, scope: Option<&[DomainPattern]>) -> Option<i64> {
    let file = File::open(path).ok()?;
    let metadata = file.metadata().ok()?;
    // `cleanup` makes a file rwx for its owner once it is complete (MAIL_QUEUE_STAT_READY).
    if metadata.permissions().mode() & 0o700 != 0o700 {
        return None;
    }
    let message = read_message(BufReader::new(file), scope).ok()??;
    Some(if message.arrival > 0 {
        message.arrival
    } else {
        metadata.mtime()
    })
}

/// What the agent needs of one queue file.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    /// Seconds since the epoch, 0 when the file has no arrival time.
    arrival: i64,
}

/// Reads one queue file: `None` when it does not count under `scope`; an error when it
/// is malformed.
fn read_message<R: BufRead + Seek>(
    reader: R,
    scope: Option<&[DomainPattern]>,
) -> std::io::Result<Option<Message>> {
    let mut records = Records::new(reader);
    let mut arrival = 0;
    let mut content_size = None;
    let mut counts = scope.is_none();
    while let Some(kind) = records.next_kind()? {
        match kind {
            b'T' if arrival == 0 => arrival = leading_number(&records.data()?).unwrap_or(0),
            b'C' if content_size.is_none() => {
                content_size = leading_number(&records.data()?).and_then(|n| u64::try_from(n).ok())
            }
            b'R' if !counts => {
                let recipient = records.data()?;
                counts = Held::counts(
                    scope,
                    std::iter::once(&*String::from_utf8_lossy(&recipient)),
                );
            }
            b'p' => records.follow_pointer()?,
            b'M' => {
                records.skip_data()?;
                if let Some(size) = content_size {
                    records.skip(size)?;
                }
            }
            b'E' => break,
            _ => records.skip_data()?,
        }
        if counts && arrival > 0 {
            break;
        }
    }
    Ok(counts.then_some(Message { arrival }))
}

/// The number at the start of a record's text (`1765038033 262361`), after spaces.
fn leading_number(data: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(data).ok()?.trim_start();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..digits].parse().ok()
}

/// The records of one queue file, read one at a time: the type first, then either the
/// data or a skip past it.
struct Records<R> {
    reader: R,
    /// The length of the current record's data, not yet read or skipped.
    pending: usize,
    last_jump: u64,
    reverse_jumps: usize,
}

impl<R: BufRead + Seek> Records<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            pending: 0,
            last_jump: 0,
            reverse_jumps: 0,
        }
    }

    /// The next record's type, `None` at the end of the file.
    fn next_kind(&mut self) -> std::io::Result<Option<u8>> {
        let mut kind = [0];
        if self.reader.read(&mut kind)? == 0 {
            return Ok(None);
        }
        let mut length: usize = 0;
        for shift in (0..).step_by(7) {
            let mut byte = [0];
            self.reader.read_exact(&mut byte)?;
            let group = usize::from(byte[0] & 0x7f);
            length = group
                .checked_shl(shift)
                .filter(|shifted| shifted >> shift == group)
                .and_then(|shifted| length.checked_add(shifted))
                .ok_or_else(|| malformed("record length overflows"))?;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        self.pending = length;
        Ok(Some(kind[0]))
    }

    /// The current record's data.
    fn data(&mut self) -> std::io::Result<Vec<u8>> {
        if self.pending > MAX_KEPT_RECORD {
            return Err(malformed("record too long"));
        }
        let mut data = vec![0; self.pending];
        self.reader.read_exact(&mut data)?;
        self.pending = 0;
        Ok(data)
    }

    /// Skips the current record's data.
    fn skip_data(&mut self) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.skip(pending as u64)
    }

    fn skip(&mut self, bytes: u64) -> std::io::Result<()> {
        let bytes = i64::try_from(bytes).map_err(|_| malformed("skip too long"))?;
        self.reader.seek_relative(bytes)
    }

    /// Goes where the current pointer record says, unless it says `0` (a placeholder).
    fn follow_pointer(&mut self) -> std::io::Result<()> {
        let data = self.data()?;
        let offset = leading_number(&data)
            .and_then(|offset| u64::try_from(offset).ok())
            .ok_or_else(|| malformed("pointer record"))?;
        if offset == 0 {
            return Ok(());
        }
        if offset <= self.last_jump {
            self.reverse_jumps += 1;
            if self.reverse_jumps > MAX_REVERSE_JUMPS {
                return Err(malformed("too many reverse jumps"));
            }
        }
        self.last_jump = offset;
        self.reader.seek(SeekFrom::Start(offset))?;
        Ok(())
    }
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, format!("queue file: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A record as Postfix writes it.
    fn record(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
        out.push(kind);
        let mut length = data.len();
        loop {
            let group = (length & 0x7f) as u8;
            length >>= 7;
            if length == 0 {
                out.push(group);
                break;
            }
            out.push(group | 0x80);
        }
        out.extend_from_slice(data);
    }

    /// A queue file: size record, arrival, sender, `recipients` (`(done, address)`), a
    /// placeholder pointer, `content` lines, the end.
    fn queue_file(arrival: i64, recipients: &[(bool, &str)], content: &[&str]) -> Vec<u8> {
        let mut envelope = Vec::new();
        record(&mut envelope, b'T', format!("{arrival} 262361").as_bytes());
        record(&mut envelope, b'S', b"sender@example.net");
        for (done, address) in recipients {
            record(&mut envelope, b'O', address.as_bytes());
            record(
                &mut envelope,
                if *done { b'D' } else { b'R' },
                address.as_bytes(),
            );
        }
        record(&mut envelope, b'p', format!("{:>15}", 0).as_bytes());
        record(&mut envelope, b'M', b"");
        let mut body = Vec::new();
        for line in content {
            record(&mut body, b'N', line.as_bytes());
        }
        let mut file = Vec::new();
        let size = format!("{:>15} {:>15} {:>15}", body.len(), 0, recipients.len());
        record(&mut file, b'C', size.as_bytes());
        file.extend(envelope);
        file.extend(body);
        record(&mut file, b'X', b"");
        record(&mut file, b'E', b"");
        file
    }

    fn scope(patterns: &[&str]) -> Vec<DomainPattern> {
        patterns
            .iter()
            .map(|p| DomainPattern::parse(p).unwrap())
            .collect()
    }

    fn read(file: Vec<u8>, scope: Option<&[DomainPattern]>) -> Option<Message> {
        read_message(Cursor::new(file), scope).unwrap()
    }

    #[test]
    fn the_arrival_is_read_and_the_content_is_not() {
        // A content record that would read as an arrival and a recipient if it were read.
        let mut lying_content = Vec::new();
        record(&mut lying_content, b'T', b"42");
        let file = queue_file(
            1_765_000_000,
            &[(false, "u@e2e.test")],
            &[std::str::from_utf8(&lying_content).unwrap()],
        );
        assert_eq!(
            read(file, None),
            Some(Message {
                arrival: 1_765_000_000
            })
        );
    }

    #[test]
    fn a_scoped_message_counts_only_with_a_held_recipient_left() {
        let held = scope(&["pec.e2e.test"]);
        let left = queue_file(
            1000,
            &[(false, "a@e2e.test"), (false, "b@PEC.e2e.test")],
            &[],
        );
        assert!(read(left, Some(&held)).is_some());
        let delivered = queue_file(
            1000,
            &[(true, "b@pec.e2e.test"), (false, "a@e2e.test")],
            &[],
        );
        assert_eq!(
            read(delivered, Some(&held)),
            None,
            "its held recipient is done"
        );
        let other = queue_file(1000, &[(false, "a@e2e.test")], &["R b@pec.e2e.test"]);
        assert_eq!(read(other, Some(&held)), None, "content is not a recipient");
    }

    #[test]
    fn recipients_appended_behind_a_pointer_are_read() {
        let held = scope(&["pec.e2e.test"]);
        let mut file = queue_file(1000, &[(false, "a@e2e.test")], &["body"]);
        // As cleanup appends: the records at the end of the file, the placeholder pointer
        // turned into a jump there, and a jump back after them.
        let mut placeholder = Vec::new();
        record(&mut placeholder, b'p', format!("{:>15}", 0).as_bytes());
        let at = file
            .windows(placeholder.len())
            .position(|w| w == placeholder)
            .unwrap()
            + 2;
        let resume = at + 15;
        let appended_at = file.len();
        record(&mut file, b'R', b"late@pec.e2e.test");
        record(&mut file, b'p', format!("{resume:>15}").as_bytes());
        file[at..resume].copy_from_slice(format!("{appended_at:>15}").as_bytes());
        assert!(read(file, Some(&held)).is_some());
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        // A pointer to itself, just after the three bytes of the arrival record.
        let mut looping = Vec::new();
        record(&mut looping, b'T', b"0");
        record(&mut looping, b'p', format!("{:>15}", 3).as_bytes());
        let mut overflowing = vec![b'R'];
        overflowing.extend([0xff; 12]);
        let mut huge = vec![b'R', 0x80, 0x80, 0x80, 0x40];
        huge.extend(b"short");
        for (what, file) in [
            ("a pointer loop", looping),
            ("an overflowing length", overflowing),
            ("a recipient longer than any address", huge),
            ("a cut length", vec![b'T', 0x81]),
            ("a pointer that is no number", {
                let mut file = Vec::new();
                record(&mut file, b'p', b"here");
                file
            }),
        ] {
            assert!(
                read_message(Cursor::new(file), Some(&scope(&["x.test"]))).is_err(),
                "{what}"
            );
        }
    }

    #[test]
    fn every_queue_and_hashed_directory_is_measured_and_unfinished_files_are_not() {
        let spool = tempfile::tempdir().unwrap();
        let write = |relative: &str, file: Vec<u8>, mode: u32| {
            let path = spool.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let now = 10_000;
        write(
            "deferred/A/A1B2C3",
            queue_file(4000, &[(false, "u@e2e.test")], &[]),
            0o700,
        );
        write(
            "deferred/B/B1",
            queue_file(9000, &[(false, "u@e2e.test")], &[]),
            0o700,
        );
        write(
            "hold/C1",
            queue_file(8000, &[(false, "u@e2e.test")], &[]),
            0o700,
        );
        write(
            "active/D1",
            queue_file(9500, &[(false, "v@pec.e2e.test")], &[]),
            0o700,
        );
        // Still being written by cleanup.
        write(
            "incoming/E1",
            queue_file(100, &[(false, "u@e2e.test")], &[]),
            0o600,
        );
        // Not a queue the agent lists.
        write(
            "corrupt/F1",
            queue_file(100, &[(false, "u@e2e.test")], &[]),
            0o700,
        );

        let all = measure(spool.path(), None, now).unwrap();
        assert_eq!(all.messages, 4);
        assert_eq!(all.by_queue.get("deferred"), Some(&2));
        assert_eq!(all.by_queue.get("hold"), Some(&1));
        assert_eq!(all.by_queue.get("active"), Some(&1));
        assert_eq!(all.by_queue.get("incoming"), None);
        assert_eq!(all.oldest_age_seconds, 6000);

        let held = scope(&["pec.e2e.test"]);
        let scoped = measure(spool.path(), Some(&held), now).unwrap();
        assert_eq!((scoped.messages, scoped.oldest_age_seconds), (1, 500));
    }

    #[test]
    fn an_unreadable_spool_is_an_error_and_a_missing_queue_is_empty() {
        let spool = tempfile::tempdir().unwrap();
        assert_eq!(
            measure(spool.path(), None, 0).unwrap(),
            QueueFigures::default()
        );
        assert!(measure(&spool.path().join("elsewhere"), None, 0).is_err());
        let unreadable = spool.path().join("hold");
        std::fs::write(&unreadable, b"a file where a directory should be").unwrap();
        assert!(measure(spool.path(), None, 0).is_err());
    }
}
