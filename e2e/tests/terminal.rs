//! A terminal as a person has one: a private tmux server (its own socket), keys typed
//! into it and its screen read back with `capture-pane`. Its shell finds the plugin and
//! its completion shim on the PATH. Killed when dropped, so no tmux process outlives a test.

use crate::plugin::PLUGIN;
use mail_incident_e2e_support::mta::run;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

pub struct Tmux {
    socket: String,
    /// The server's socket file, which `kill-server` leaves behind.
    socket_path: PathBuf,
}

impl Tmux {
    /// A `columns`x`rows` terminal running `shell` (a command line) in `directory`.
    pub fn start(name: &str, (columns, rows): (u16, u16), shell: &str, directory: &Path) -> Self {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "tmux is missing: install it with `apt-get install tmux` (e2e/install-deps.sh does)"
        );
        let mut tmux = Self {
            socket: format!("mio-{name}-{}", std::process::id()),
            socket_path: PathBuf::new(),
        };
        let path = format!(
            "{}:{}:{}",
            Path::new(PLUGIN).parent().unwrap().display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/plugins"),
            std::env::var("PATH").unwrap()
        );
        // The server, started by this first command, gives its environment to the shell.
        run(Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &columns.to_string(), "-y", &rows.to_string()])
            .arg("-c")
            .arg(directory)
            .arg(shell)
            .env("PATH", path)
            .env("PS1", "$ ")
            .env("TERM", "xterm-256color"));
        tmux.socket_path = tmux
            .run(&["display-message", "-p", "#{socket_path}"])
            .trim()
            .into();
        tmux
    }

    /// A shell (`sh`) in a `columns`x`rows` terminal.
    pub fn shell(name: &str, size: (u16, u16)) -> Self {
        Self::start(name, size, "sh", Path::new("/"))
    }

    pub fn run(&self, args: &[&str]) -> String {
        run(Command::new("tmux").args(["-L", &self.socket]).args(args))
    }

    /// Types `text` as it is, without Enter.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "0", "-l", "--", text]);
    }

    /// Presses one key, named as tmux names them (`Tab`, `Enter`, `C-c`).
    pub fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "0", key]);
    }

    /// Types `line` and Enter.
    pub fn type_line(&self, line: &str) {
        self.type_text(line);
        self.press("Enter");
    }

    /// Runs `clear` and waits until the screen shows the prompt alone: what is typed next,
    /// and its output, are then all there is (typed sooner, the keys echo before the
    /// clear and vanish with it, and the old screen still shows what a test looks for).
    pub async fn clear(&self) {
        self.type_line("clear");
        self.wait_for_screen("a cleared screen", |s| {
            s.lines().filter(|l| !l.trim().is_empty()).count() <= 1
        })
        .await;
    }

    /// The screen as a person sees it (with `colours`, its colours as escape codes).
    pub fn screen(&self, colours: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "0"];
        if colours {
            args.push("-e");
        }
        self.run(&args)
    }

    /// Whether the terminal's cursor is shown.
    pub fn cursor_shown(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "0", "#{cursor_flag}"])
            .trim()
            == "1"
    }

    /// Waits (at most 60 s) until the screen satisfies `done`; the screen.
    pub async fn wait_for_screen(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen(false);
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what} never shown:\n{screen}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}
