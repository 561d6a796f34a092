//! What the bench reads of the operator (its /proc, its /metrics, its log) and of itself.

use k8s_openapi::jiff::Timestamp;
use mail_incident_e2e_support::{
    control_plane::cpu_seconds_of,
    world::{Operator, http_get},
};
use std::time::{Duration, Instant, SystemTime};

/// What the operator's log says about the measured change.
pub struct WriteLog {
    /// Syncs that wrote targets, and their writes in all.
    pub syncs: usize,
    pub writes: usize,
    /// The sync with the most writes: from the new generation reaching the bench's watch
    /// to its writes starting, and how long its writes took.
    pub before_writes: Duration,
    pub writing: Duration,
    /// From that sync's writes ending to the last document reaching the bench's watch.
    pub after_writes: Duration,
}

/// Waits (20 s at most) for the operator to log that its caches are filled; false if it
/// did not say so.
pub async fn caches_filled(operator: &Operator) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if operator.log().contains("caches filled") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The operator's reconciles so far and the seconds they took in all, from its /metrics;
/// None if it does not say.
pub async fn reconcile_metrics(operator: &Operator) -> Option<(f64, f64)> {
    let (_, metrics) = http_get(&format!("{}/metrics", operator.http)).await?;
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    Some((
        value("mail_incident_reconcile_duration_seconds_count")?,
        value("mail_incident_reconcile_duration_seconds_sum")?,
    ))
}

/// The reconciles since `before` (from [`reconcile_metrics`]) and the seconds they took.
pub async fn reconciles_since(
    operator: &Operator,
    before: Option<(f64, f64)>,
) -> Option<(f64, f64)> {
    let ((n0, s0), (n1, s1)) = (before?, reconcile_metrics(operator).await?);
    Some((n1 - n0, s1 - s0))
}

/// Reads, from the operator's log lines of the measured window, its syncs that wrote
/// targets ("targets written", with writes= and elapsed_ms=). None if
/// the log says nothing usable (its format is the operator's business, not the bench's).
pub fn write_log(
    log: &str,
    namespace: &str,
    stored: SystemTime,
    documents: SystemTime,
) -> Option<WriteLog> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(&format!(" {key}="))? + key.len() + 2..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut syncs = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.contains(namespace) && l.contains("targets written"))
    {
        let at: Timestamp = line.split_whitespace().next()?.parse().ok()?;
        let at = SystemTime::from(at);
        syncs.push((at, field(line, "writes")?, field(line, "elapsed_ms")?));
    }
    let &(end, _, elapsed_ms) = syncs.iter().max_by_key(|(_, writes, _)| *writes)?;
    let writing = Duration::from_millis(elapsed_ms);
    let since = |later: SystemTime, earlier: SystemTime| {
        later.duration_since(earlier).unwrap_or(Duration::ZERO)
    };
    Some(WriteLog {
        syncs: syncs.len(),
        writes: syncs.iter().map(|(_, w, _)| *w as usize).sum(),
        before_writes: since(end - writing, stored),
        writing,
        after_writes: since(documents, end),
    })
}

/// The operator's peak resident memory (MiB) and CPU time (user + system seconds) since it
/// started, from /proc.
pub fn process_usage(pid: u32) -> (f64, f64) {
    let peak_kib = status_kib(pid, "VmHWM:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    (peak_kib / 1024.0, cpu_seconds_of(&stat))
}

pub fn current_rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

fn status_kib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/PID/status"))
}

/// The bench process's own CPU seconds (fake agents, watches, floor client).
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds_of(&std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat"))
}
