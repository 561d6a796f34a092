//! The terminal look shared by `status` and `history`: colour only on a terminal, laid
//! over a table after it is aligned (so escape codes never count as width), and the
//! in-place redraw of `--watch`.

use super::Table;
use std::io::IsTerminal;

/// The colours the plugin uses: good news, bad news, and what needs an eye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Red,
    Yellow,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Self::Green => "\x1b[32m",
            Self::Red => "\x1b[31m",
            Self::Yellow => "\x1b[33m",
        }
    }
}

const RESET: &str = "\x1b[0m";

/// Whether stdout is a terminal: colour and in-place redraws only then.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// `text` in `colour` when `enabled`, else as is.
pub fn paint(text: &str, colour: Option<Colour>, enabled: bool) -> String {
    match colour {
        Some(colour) if enabled && !text.is_empty() => format!("{}{text}{RESET}", colour.code()),
        _ => text.to_string(),
    }
}

/// The table aligned as [`Table::render`] aligns it, each cell then painted with
/// `colour_of(column header, cell)` when `enabled`.
pub fn render_painted(
    table: &Table,
    headers: bool,
    enabled: bool,
    colour_of: impl Fn(&str, &str) -> Option<Colour>,
) -> String {
    let plain = table.render(headers);
    if !enabled {
        return plain;
    }
    let mut out = String::new();
    let body = plain.lines().skip(usize::from(headers));
    if headers && let Some(first) = plain.lines().next() {
        out.push_str(first);
        out.push('\n');
    }
    for (line, row) in body.zip(&table.rows) {
        // Cells are found in the aligned line from the left, each after the previous one,
        // so a cell's text repeated in an earlier column cannot be painted by mistake.
        let mut painted = String::new();
        let mut rest = line;
        for (header, cell) in table.header.iter().zip(row) {
            if cell.is_empty() {
                continue;
            }
            let Some(at) = rest.find(cell.as_str()) else {
                continue;
            };
            painted.push_str(&rest[..at]);
            painted.push_str(&paint(cell, colour_of(header, cell), true));
            rest = &rest[at + cell.len()..];
        }
        painted.push_str(rest);
        out.push_str(&painted);
        out.push('\n');
    }
    out
}

/// What `--watch` writes to show `frame` after a previous frame of `previous_lines`
/// lines. On a terminal the previous frame is erased and the new one drawn where it was
/// (cursor up, clear to the end of the screen), so stale frames never scroll by; piped,
/// frames are appended, separated by a blank line.
pub fn redraw(previous_lines: usize, frame: &str, terminal: bool) -> String {
    match (terminal, previous_lines) {
        (true, 0) => format!("{HIDE_CURSOR}{frame}"),
        (true, lines) => format!("\x1b[{lines}F\x1b[J{frame}"),
        (false, 0) => frame.to_string(),
        (false, _) => format!("\n{frame}"),
    }
}

/// The size of the terminal stdout is, as (rows, columns); None off a terminal or when it
/// does not say.
pub fn terminal_size() -> Option<(usize, usize)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then(|| (size.ws_row.into(), size.ws_col.into()))
}

/// `frame` cut to fit a terminal of `rows` x `columns`. Redrawn in place, a frame taller
/// than the screen would scroll its top away and a line wider than it would wrap; either
/// leaves stale lines behind, since the redraw moves up by the frame's line count. Wide
/// lines end in `…` at the edge (colour codes kept and closed); when lines are left
/// out, the last row says how many. One row stays free for the cursor.
pub fn fit_to_screen(frame: &str, rows: usize, columns: usize) -> String {
    let lines: Vec<&str> = frame.lines().collect();
    let room = rows.saturating_sub(1).max(1);
    let (shown, hidden) = if lines.len() > room {
        let shown = room - 1;
        (&lines[..shown], lines.len() - shown)
    } else {
        (&lines[..], 0)
    };
    let mut out = String::new();
    for line in shown {
        out.push_str(&cut_to_width(line, columns));
        out.push('\n');
    }
    if hidden > 0 {
        let more = format!(
            "… {hidden} more line(s) below: a taller terminal shows them, or run without --watch"
        );
        out.push_str(&cut_to_width(&more, columns));
        out.push('\n');
    }
    out
}

/// `line` cut to `columns` visible characters (escape codes take none), its last one `…`
/// when cut.
fn cut_to_width(line: &str, columns: usize) -> String {
    let mut out = String::new();
    let mut seen = 0;
    let mut in_escape = false;
    let mut coloured = false;
    let mut cut = false;
    for (at, c) in line.char_indices() {
        if in_escape || c == '\x1b' {
            in_escape = c != 'm';
            coloured = true;
            out.push(c);
            continue;
        }
        if seen + 1 == columns && has_text(&line[at + c.len_utf8()..]) {
            out.push('…');
            cut = true;
            break;
        }
        out.push(c);
        seen += 1;
    }
    if cut && coloured {
        out.push_str(RESET);
    }
    out
}

/// Whether `rest` shows any character (rather than only escape codes).
fn has_text(rest: &str) -> bool {
    let mut in_escape = false;
    rest.chars().any(|c| {
        let text = !in_escape && c != '\x1b';
        in_escape = (in_escape || c == '\x1b') && c != 'm';
        text
    })
}

/// Hidden while frames are redrawn, so it does not flicker over the table.
const HIDE_CURSOR: &str = "\x1b[?25l";

/// What `--watch` writes when it stops: on a terminal the cursor is shown again below the
/// last frame, which stays on screen as the final state.
pub fn finish_redraw(terminal: bool) -> &'static str {
    if terminal { "\x1b[?25h" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut table = Table::new(&["WORKLOAD", "MODE", "PODS"]);
        table.push(vec!["Deployment/a".into(), "TempFail".into(), "1/1".into()]);
        table.push(vec!["Deployment/b".into(), "Normal".into(), "0/2".into()]);
        table
    }

    #[test]
    fn painting_keeps_the_alignment_of_the_plain_table() {
        let colour = |header: &str, cell: &str| match (header, cell) {
            ("PODS", "1/1") => Some(Colour::Green),
            ("PODS", _) => Some(Colour::Red),
            _ => None,
        };
        let painted = render_painted(&table(), true, true, colour);
        let stripped = painted
            .replace("\x1b[32m", "")
            .replace("\x1b[31m", "")
            .replace(RESET, "");
        assert_eq!(stripped, table().render(true));
        assert!(painted.contains("\x1b[32m1/1\x1b[0m"), "{painted:?}");
        assert!(painted.contains("\x1b[31m0/2\x1b[0m"), "{painted:?}");
        assert_eq!(
            render_painted(&table(), true, false, colour),
            table().render(true)
        );
    }

    #[test]
    fn a_cell_is_painted_in_its_own_column_even_when_an_earlier_one_has_its_text() {
        let mut table = Table::new(&["A", "B"]);
        table.push(vec!["x1".into(), "1".into()]);
        let painted = render_painted(&table, false, true, |h, _| {
            (h == "B").then_some(Colour::Red)
        });
        assert_eq!(painted, "x1   \x1b[31m1\x1b[0m\n");
    }

    #[test]
    fn a_frame_is_cut_to_the_screen_and_says_what_it_left_out() {
        let frame = "HEADER\nrow 1\nrow 2\nrow 3\nrow 4\n";
        assert_eq!(fit_to_screen(frame, 10, 80), frame);
        assert_eq!(fit_to_screen(frame, 6, 80), frame, "one row stays free");
        let fitted = fit_to_screen(frame, 4, 80);
        assert_eq!(
            fitted,
            "HEADER\nrow 1\n… 3 more line(s) below: a taller terminal shows them, or run without --watch\n"
        );
        assert_eq!(fitted.lines().count(), 3);
        assert_eq!(
            fit_to_screen(frame, 4, 12).lines().last(),
            Some("… 3 more li…")
        );
        assert_eq!(
            fit_to_screen("abcdef\n", 5, 6),
            "abcdef\n",
            "exactly the width"
        );
        assert_eq!(fit_to_screen("abcdefg\n", 5, 6), "abcde…\n");
        // Colour codes take no width, and a cut closes the colour it cut into.
        let painted = "ab\x1b[32mcdefg\x1b[0m\n";
        assert_eq!(fit_to_screen(painted, 5, 7), painted);
        assert_eq!(fit_to_screen(painted, 5, 4), "ab\x1b[32mc…\x1b[0m\n");
    }

    #[test]
    fn a_terminal_redraws_in_place_and_a_pipe_appends() {
        assert_eq!(redraw(0, "a\nb\n", true), "\x1b[?25la\nb\n");
        assert_eq!(redraw(2, "c\n", true), "\x1b[2F\x1b[Jc\n");
        assert_eq!(redraw(0, "a\n", false), "a\n");
        assert_eq!(redraw(1, "c\n", false), "\nc\n");
        assert_eq!(finish_redraw(true), "\x1b[?25h");
        assert_eq!(finish_redraw(false), "");
    }
}
