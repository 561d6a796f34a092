//! The floors: the fastest the API server takes a change's requests, with nothing deciding
//! anything (the operator, the fake agents and the bench's watches stopped).

use crate::watches::AbortOnDrop;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use mail_incident_e2e_support::control_plane::ControlPlaneCpu;
use mail_incident_operator::{
    api::mode_document::{ROLE_LABEL, ROLE_REPORT},
    controller::WRITE_CONCURRENCY,
};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Marks the ConfigMaps the floors patch, for the watch that stands for the bench's.
pub const FLOOR_LABEL: &str = "bench-floor";
pub const FLOOR_CONCURRENCY: [usize; 3] = [16, 64, 256];

/// The fastest N merge PATCHes the API server takes, over a few concurrency levels, each
/// carrying a mode-document-sized payload.
pub async fn floor(client: &Client, namespace: &str, size: usize) -> (Duration, usize) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut best = (Duration::MAX, 0);
    for (round, concurrency) in FLOOR_CONCURRENCY.into_iter().enumerate() {
        let start = Instant::now();
        patch_documents(&config_maps, size, &round.to_string(), concurrency).await;
        let elapsed = start.elapsed();
        if elapsed < best.0 {
            best = (elapsed, concurrency);
        }
    }
    best
}

/// One mode-document-sized merge PATCH of each of the `size` floor ConfigMaps, marked
/// with `round` so that every one changes, `concurrency` in flight.
async fn patch_documents(
    config_maps: &Api<ConfigMap>,
    size: usize,
    round: &str,
    concurrency: usize,
) {
    stream::iter(0..size)
        .map(|i| async move {
            let document = format!(
                "{{\"round\": \"{round}\", \"padding\": \"{}\"}}",
                "x".repeat(600)
            );
            let patch = Patch::Merge(json!({"data": {"mode.json": document}}));
            config_maps
                .patch(&format!("manual-{i:04}"), &PatchParams::default(), &patch)
                .await
                .expect("patch");
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// The floor with the agents' load: N document-sized PATCHes (as in [`floor`]) and, at
/// the same time, one PATCH of each target's report (what the agents send while the
/// operator writes), each stream with `WRITE_CONCURRENCY` in flight like the operator's
/// writes and the fake agents' reports. The request count of a mode change on an idle
/// server, without the watch deliveries, or (`watched`) with as many as a change makes
/// besides the garbage collector's (see [`watches_like_a_change`]). The faster of two
/// rounds (the first also opens the connections), with the control plane's CPU in it.
pub async fn documents_and_reports_floor(
    client: &Client,
    namespace: &str,
    size: usize,
    watched: bool,
) -> (Duration, Option<ControlPlaneCpu>) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let reports: Vec<String> = config_maps
        .list_metadata(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_REPORT}")))
        .await
        .expect("list the reports")
        .items
        .into_iter()
        .map(|report| report.name_any())
        .collect();
    assert_eq!(reports.len(), size, "one report per target");
    let _watches = if watched {
        watches_like_a_change(client, namespace).await
    } else {
        Vec::new()
    };
    let mut best = (Duration::MAX, None);
    for round in 0..2 {
        let before = ControlPlaneCpu::now();
        let label = format!("{round} {watched}");
        let elapsed = documents_and_reports(&config_maps, size, &reports, &label).await;
        if elapsed < best.0 {
            best = (elapsed, ControlPlaneCpu::since(before));
        }
    }
    best
}

/// Watches that receive what a change sends the operator (every document and report), the
/// fake agents (every ConfigMap) and the bench (every document): two over every ConfigMap
/// of the namespace and one over the floor's, each drained as it comes, until dropped.
async fn watches_like_a_change(client: &Client, namespace: &str) -> Vec<AbortOnDrop> {
    let mut watches = Vec::new();
    for labels in ["", FLOOR_LABEL, ""] {
        let config_maps: Api<PartialObjectMeta<ConfigMap>> =
            Api::namespaced(client.clone(), namespace);
        let events =
            watcher(config_maps, watcher::Config::default().labels(labels)).default_backoff();
        let (listed, mut listed_rx) = watch::channel(false);
        watches.push(AbortOnDrop(tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    listed.send_replace(true);
                }
            }
        })));
        listed_rx
            .wait_for(|l| *l)
            .await
            .expect("a floor watch lists");
    }
    watches
}

async fn documents_and_reports(
    config_maps: &Api<ConfigMap>,
    size: usize,
    reports: &[String],
    round: &str,
) -> Duration {
    let label = format!("reports {round}");
    let start = Instant::now();
    let documents = patch_documents(config_maps, size, &label, WRITE_CONCURRENCY);
    let reports = stream::iter(reports)
        .map(|report| {
            let config_maps = config_maps.clone();
            async move {
                let patch =
                    Patch::Merge(json!({"data": {"bench": format!("{{\"hash\": \"{round}\"}}")}}));
                config_maps
                    .patch(report, &PatchParams::default(), &patch)
                    .await
                    .expect("patch a report");
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect::<Vec<()>>();
    futures::join!(documents, reports);
    start.elapsed()
}
