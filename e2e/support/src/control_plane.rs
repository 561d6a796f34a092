//! The control plane's CPU, read from the pid files `e2e/cluster.sh` keeps in `E2E_STATE`,
//! shared by the benches: a measurement waits until the control plane is quiet (what an
//! earlier bench left it doing would otherwise be paid for), and shows what it used.

use std::time::{Duration, Instant};

/// CPU seconds of the control plane's processes: where a mode change's cost lands on a
/// machine whose cores the API server saturates.
#[derive(Clone, Copy)]
pub struct ControlPlaneCpu {
    pub api_server: f64,
    pub etcd: f64,
    pub controller_manager: f64,
}

impl ControlPlaneCpu {
    /// So far; `None` when the bench did not start the cluster (`E2E_KUBECONFIG` given).
    pub fn now() -> Option<Self> {
        let state = std::env::var("E2E_STATE").ok()?;
        let cpu = |name: &str| -> Option<f64> {
            let pid = std::fs::read_to_string(format!("{state}/{name}.pid")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
            Some(cpu_seconds_of(&stat))
        };
        Some(Self {
            api_server: cpu("kube-apiserver")?,
            etcd: cpu("etcd")?,
            controller_manager: cpu("kube-controller-manager")?,
        })
    }

    /// Used since `before`.
    pub fn since(before: Option<Self>) -> Option<Self> {
        let (before, now) = (before?, Self::now()?);
        Some(Self {
            api_server: now.api_server - before.api_server,
            etcd: now.etcd - before.etcd,
            controller_manager: now.controller_manager - before.controller_manager,
        })
    }

    pub fn total(&self) -> f64 {
        self.api_server + self.etcd + self.controller_manager
    }

    pub fn show(cpu: Option<Self>) -> String {
        cpu.map_or_else(
            || "n/a".to_string(),
            |c| {
                format!(
                    "{:.2} / {:.2} / {:.2} s",
                    c.api_server, c.etcd, c.controller_manager
                )
            },
        )
    }
}

/// Waits (at most `limit`) until the control plane has used less than a tenth of a core
/// over half a second: after a fleet is made or deleted, kube-controller-manager's garbage
/// collector and the API server still work through its documents and reports for a few
/// seconds, and after 5000 targets kube-controller-manager still posts the fleet's events,
/// rate limited, for minutes; a change measured meanwhile would pay for them. Where the
/// bench did not start the cluster, waits five seconds.
pub async fn wait_control_plane_quiet(limit: Duration) {
    const WINDOW: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let deadline = started + limit;
    let mut before = ControlPlaneCpu::now();
    if before.is_none() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return;
    }
    loop {
        tokio::time::sleep(WINDOW).await;
        let now = ControlPlaneCpu::now();
        let used = ControlPlaneCpu::since(before).map_or(0.0, |c| c.total());
        if used < 0.1 * WINDOW.as_secs_f64() {
            eprintln!(
                "[bench] the control plane is quiet after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "[bench] the control plane is still busy ({used:.2} CPU s per 0.5 s); measuring anyway"
            );
            return;
        }
        before = now;
    }
}

/// User + system CPU seconds from a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) line.
pub fn cpu_seconds_of(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s on Linux.
    let after_name = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
