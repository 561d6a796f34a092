//! The tables the bench prints: the measurements, their growth from the smallest size,
//! where the operator's time goes, the steady state, and the API server's work.

use crate::{
    floor::FLOOR_CONCURRENCY,
    measure::WriteLog,
    steady::{REPORT_PERIOD, STEADY_FOR, Steady},
};
use mail_incident_e2e_support::control_plane::ControlPlaneCpu;
use mail_incident_operator::controller::WRITE_CONCURRENCY;
use std::time::Duration;

pub struct Row {
    pub targets: usize,
    pub fleet_created: Duration,
    /// `kubectl apply` from spawn to exit.
    pub kubectl_apply: Duration,
    /// From `kubectl apply`'s start to the new generation reaching the bench's watch.
    pub stored_after: Duration,
    pub documents_from_apply: Duration,
    pub documents_from_stored: Duration,
    pub ready_from_apply: Duration,
    pub ready_from_stored: Duration,
    pub kubectl_loop: Duration,
    pub kubectl_loop_sampled: Option<usize>,
    pub floor: Duration,
    pub floor_concurrency: usize,
    pub floor_with_reports: Duration,
    pub floor_with_watches: Duration,
    pub peak_rss_mib: f64,
    /// The operator's RSS once its caches hold the fleet (workloads and pods, no
    /// documents yet), and just before the measured change.
    pub rss_caches_filled_mib: Option<f64>,
    pub rss_before_change_mib: f64,
    pub cpu_seconds: f64,
    pub change_cpu_seconds: f64,
    pub bench_change_cpu_seconds: f64,
    pub agents_change_cpu_seconds: f64,
    pub log: Option<WriteLog>,
    /// The control plane's CPU seconds (API server, etcd, controller-manager) during the
    /// measured change and during the faster round of the floor with reports; `None` on a
    /// cluster the bench did not start.
    pub control_plane_change_cpu: Option<ControlPlaneCpu>,
    pub control_plane_floor_cpu: Option<ControlPlaneCpu>,
    /// The requests the API server served and the watch events it sent during the
    /// measured change (from its /metrics).
    pub api_server_work: Vec<(String, f64)>,
    /// Reconciles during the measured change, and the seconds they took in all (the
    /// operator's reconcile-duration histogram).
    pub reconciles: Option<(f64, f64)>,
    pub steady: Steady,
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

pub fn print_tables(rows: &[Row]) {
    println!();
    println!("Mode change TempFail → HardReject, N target Deployments (one pod each):");
    println!(
        "\"apply →\" counts from just before `kubectl apply` starts; \"stored →\" from the new \
         generation reaching a watch (the operator's own cost). The floor: N raw concurrent \
         merge PATCHes by the bench (best of {FLOOR_CONCURRENCY:?} at once). The floor \
         with reports: those N PATCHes and, at the same time, one PATCH of each target's \
         report, as the agents send during a change ({WRITE_CONCURRENCY} + \
         {WRITE_CONCURRENCY} in flight): the requests of a mode change, on an idle server. \
         The floor with watches: the same, with the watch deliveries of a change (two \
         watches over every ConfigMap, one over the floor's): a change's API server work \
         without the operator, the agents' logic and the bench's own."
    );
    println!();
    println!(
        "| targets | apply → documents | stored → documents | apply → Ready | stored → Ready | kubectl patch loop | raw PATCH floor | documents / floor (stored) | Ready / floor (stored) | floor with reports | documents / floor with reports | Ready / floor with reports | floor with watches | documents / floor with watches | Ready / floor with watches | peak RSS | CPU |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let kubectl_loop = match r.kubectl_loop_sampled {
            None => secs(r.kubectl_loop),
            Some(sample) => format!(
                "not run (~{:.0} s extrapolated from {sample})",
                r.kubectl_loop.as_secs_f64()
            ),
        };
        let floor = r.floor.as_secs_f64();
        let with_reports = r.floor_with_reports.as_secs_f64();
        let with_watches = r.floor_with_watches.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} (x{}) | {:.2}x | {:.2}x | {} | {:.2}x | {:.2}x | {} | {:.2}x | {:.2}x | {:.1} MiB | {:.2} s |",
            r.targets,
            secs(r.documents_from_apply),
            secs(r.documents_from_stored),
            secs(r.ready_from_apply),
            secs(r.ready_from_stored),
            kubectl_loop,
            secs(r.floor),
            r.floor_concurrency,
            r.documents_from_stored.as_secs_f64() / floor,
            r.ready_from_stored.as_secs_f64() / floor,
            secs(r.floor_with_reports),
            r.documents_from_stored.as_secs_f64() / with_reports,
            r.ready_from_stored.as_secs_f64() / with_reports,
            secs(r.floor_with_watches),
            r.documents_from_stored.as_secs_f64() / with_watches,
            r.ready_from_stored.as_secs_f64() / with_watches,
            r.peak_rss_mib,
            r.cpu_seconds,
        );
    }

    let Some(first) = rows.first() else { return };
    println!();
    println!(
        "Growth from {} targets (x: times the smallest size's value; per target: the increment \
         between this size and the previous one, divided by the targets added):",
        first.targets
    );
    println!();
    println!(
        "| targets | stored → documents | x | ms / target | floor ms / target | stored → Ready | x | ms / target | peak RSS | x | MiB / 1000 targets | RSS, caches filled: MiB / 1000 targets | CPU (whole run) | ms / target | CPU of the change | ms / target |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut previous: Option<&Row> = None;
    for r in rows {
        let ratio = |a: f64, b: f64| format!("x{:.1}", a / b);
        let per = |f: &dyn Fn(&Row) -> f64, scale: f64| match previous {
            Some(p) if r.targets > p.targets => {
                let increment = (f(r) - f(p)) / (r.targets - p.targets) as f64 * scale;
                if increment.is_finite() {
                    format!("{increment:.3}")
                } else {
                    "n/a".to_string()
                }
            }
            _ => "—".to_string(),
        };
        let documents = |r: &Row| r.documents_from_stored.as_secs_f64();
        let ready = |r: &Row| r.ready_from_stored.as_secs_f64();
        let floor = |r: &Row| r.floor.as_secs_f64();
        let rss = |r: &Row| r.peak_rss_mib;
        let rss_filled = |r: &Row| r.rss_caches_filled_mib.unwrap_or(f64::NAN);
        let cpu = |r: &Row| r.cpu_seconds;
        let change_cpu = |r: &Row| r.change_cpu_seconds;
        println!(
            "| {} | {:.3} s | {} | {} | {} | {:.3} s | {} | {} | {:.1} MiB | {} | {} | {} | {:.2} s | {} | {:.2} s | {} |",
            r.targets,
            documents(r),
            ratio(documents(r), documents(first)),
            per(&documents, 1000.0),
            per(&floor, 1000.0),
            ready(r),
            ratio(ready(r), ready(first)),
            per(&ready, 1000.0),
            rss(r),
            ratio(rss(r), rss(first)),
            per(&rss, 1000.0),
            per(&rss_filled, 1000.0),
            cpu(r),
            per(&cpu, 1000.0),
            change_cpu(r),
            per(&change_cpu, 1000.0),
        );
        previous = Some(r);
    }

    println!();
    println!(
        "Where the time goes (the operator's log: the sync that wrote the most documents; \
         \"stored\" is when the new generation reached the bench's watch):"
    );
    println!();
    println!(
        "| targets | fleet created | kubectl apply ran | apply → stored | stored → writes start | writes (log) | writes end → last document seen | syncs writing / writes | reconciles / their seconds | documents → Ready | RSS: caches filled / before change | bench CPU in change (fake agents) | API server / etcd / controller-manager CPU: change | the same: floor with reports |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let log = match &r.log {
            Some(l) => format!(
                "{} | {} | {} | {} / {}",
                secs(l.before_writes),
                secs(l.writing),
                secs(l.after_writes),
                l.syncs,
                l.writes,
            ),
            None => "n/a | n/a | n/a | n/a".to_string(),
        };
        let reconciles = r.reconciles.map_or_else(
            || "n/a".to_string(),
            |(count, seconds)| format!("{count:.0} / {seconds:.2} s"),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {:.1} MiB | {:.2} s ({:.2} s) | {} | {} |",
            r.targets,
            secs(r.fleet_created),
            secs(r.kubectl_apply),
            secs(r.stored_after),
            log,
            reconciles,
            secs(r.ready_from_stored - r.documents_from_stored),
            r.rss_caches_filled_mib
                .map_or_else(|| "n/a".to_string(), |m| format!("{m:.1}")),
            r.rss_before_change_mib,
            r.bench_change_cpu_seconds,
            r.agents_change_cpu_seconds,
            ControlPlaneCpu::show(r.control_plane_change_cpu),
            ControlPlaneCpu::show(r.control_plane_floor_cpu),
        );
    }

    println!();
    println!(
        "While the incident holds: every pod's agent reports a changed queue every {} s \
         (`--report-seconds`' default), played for {} s after the change:",
        REPORT_PERIOD.as_secs(),
        STEADY_FOR.as_secs()
    );
    println!();
    println!("| targets | reports / s | operator CPU (cores) | reconciles / s | seconds each |");
    println!("|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.steady;
        let (per_second, each) = s.reconciles.map_or_else(
            || ("n/a".to_string(), "n/a".to_string()),
            |(n, each)| (format!("{n:.1}"), format!("{:.1} ms", each * 1000.0)),
        );
        println!(
            "| {} | {:.1} | {:.3} | {per_second} | {each} |",
            r.targets, s.reports_per_second, s.cores
        );
    }

    println!();
    println!(
        "What the API server did in the measured change, from the new generation stored to \
         Ready (requests by verb and resource, any code; watch events sent, to every \
         watcher: the operator's, the fake agents' and the bench's):"
    );
    println!();
    for r in rows {
        let work: Vec<String> = r
            .api_server_work
            .iter()
            .map(|(name, count)| format!("{name}: {count:.0}"))
            .collect();
        println!("- {} targets: {}", r.targets, work.join(", "));
    }
}
