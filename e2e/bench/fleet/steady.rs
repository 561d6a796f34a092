//! The operator while an incident holds: every pod's agent reporting its queue.

use crate::measure::{process_usage, reconcile_metrics, reconciles_since};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use mail_incident_e2e_support::world::Operator;
use mail_incident_operator::{
    api::mode_document::{AgentReport, QueueFigures, ROLE_LABEL, ROLE_REPORT},
    controller::WRITE_CONCURRENCY,
};
use serde_json::json;
use std::time::Duration;

pub struct Steady {
    pub reports_per_second: f64,
    /// The operator's CPU seconds per second.
    pub cores: f64,
    /// Reconciles per second, and the seconds each took on average.
    pub reconciles: Option<(f64, f64)>,
}

/// How often agents report their queue while a mode is applied (`--report-seconds`'s
/// default), and how long the bench plays that.
pub const REPORT_PERIOD: Duration = Duration::from_secs(30);
pub const STEADY_FOR: Duration = Duration::from_secs(10);

/// Plays every pod's agent reporting a changed queue once per [`REPORT_PERIOD`], spread
/// evenly, for [`STEADY_FOR`], and measures what the operator spends on it.
pub async fn steady_state(client: &Client, namespace: &str, operator: &Operator) -> Steady {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let reports = config_maps
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_REPORT}")))
        .await
        .expect("list the reports");
    let entries: Vec<(String, String, String)> = reports
        .items
        .iter()
        .flat_map(|report| {
            let name = report.name_any();
            report.data.iter().flatten().filter_map(move |(pod, text)| {
                let entry: AgentReport = serde_json::from_str(text).ok()?;
                Some((name.clone(), pod.clone(), entry.hash))
            })
        })
        .collect();
    assert!(!entries.is_empty(), "the agents have reported");
    let every = REPORT_PERIOD / u32::try_from(entries.len()).expect("entries fit u32");
    let count = (STEADY_FOR.as_secs_f64() / every.as_secs_f64()) as usize;
    let (_, cpu_before) = process_usage(operator.pid());
    let reconciles_before = reconcile_metrics(operator).await;
    let start = tokio::time::Instant::now();
    stream::iter(entries.iter().cycle().take(count).enumerate())
        .for_each_concurrent(WRITE_CONCURRENCY, |(i, (report, pod, hash))| {
            let config_maps = config_maps.clone();
            async move {
                tokio::time::sleep_until(start + every * u32::try_from(i).expect("fits")).await;
                let entry = AgentReport {
                    hash: hash.clone(),
                    after: None,
                    queue: Some(QueueFigures {
                        messages: i as u64 + 1,
                        oldest_age_seconds: 600,
                        ..QueueFigures::default()
                    }),
                    drift: None,
                };
                let text = serde_json::to_string(&entry).expect("a report entry");
                let patch = Patch::Merge(json!({"data": {pod: text}}));
                config_maps
                    .patch(report, &PatchParams::default(), &patch)
                    .await
                    .expect("patch a report");
            }
        })
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let (_, cpu_after) = process_usage(operator.pid());
    let reconciles = reconciles_since(operator, reconciles_before)
        .await
        .filter(|(count, _)| *count > 0.0)
        .map(|(count, seconds)| (count / elapsed, seconds / count));
    Steady {
        reports_per_second: count as f64 / elapsed,
        cores: (cpu_after - cpu_before) / elapsed,
        reconciles,
    }
}
