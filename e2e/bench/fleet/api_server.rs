//! What the API server counted: the requests it served and the watch events it sent.

use kube::Client;
use std::collections::HashMap;

/// The API server's request and watch-event counters: requests by verb, resource and
/// subresource (any code), watch events sent by kind.
pub async fn api_server_counters(client: &Client) -> HashMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET of /metrics");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    let mut counters = HashMap::new();
    for line in text.lines() {
        let (key, labels) = if let Some(rest) = line.strip_prefix("apiserver_request_total{") {
            (["verb", "resource", "subresource"], rest)
        } else if let Some(rest) = line.strip_prefix("apiserver_watch_events_total{") {
            (["kind", "", ""], rest)
        } else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let name = if key[1].is_empty() {
            format!("watch event {}", label(key[0]))
        } else {
            let subresource = label(key[2]);
            let resource = label(key[1]);
            let resource = if subresource.is_empty() {
                resource
            } else {
                format!("{resource}/{subresource}")
            };
            format!("{} {resource}", label(key[0]))
        };
        *counters.entry(name).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    counters
}

/// The counters that grew from `before` to `after`, by how much, largest first.
pub fn counter_increments(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut grown: Vec<(String, f64)> = after
        .iter()
        .map(|(name, value)| (name.clone(), value - before.get(name).unwrap_or(&0.0)))
        .filter(|(_, increment)| *increment >= 1.0)
        .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    grown
}
