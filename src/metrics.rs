//! What the metrics of both programs share: a registry that starts with the process's
//! own figures. Each program's metrics live beside it (`controller::metrics`,
//! `agent::metrics`).

use prometheus::{Registry, core::Collector};

/// A registry holding the standard `process_*` metrics (resident memory, CPU seconds...).
pub fn registry_with_process_metrics() -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");
    registry
}

/// Registers `collector` in `registry` and returns it, to keep a handle on it.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

#[cfg(test)]
pub mod tests {
    use prometheus::{Registry, TextEncoder};

    /// What `/metrics` serves for `registry`.
    pub fn exposition(registry: &Registry) -> String {
        TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    }

    /// The lines of `text` that are samples of the metric `name`.
    pub fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .collect()
    }
}
