//! Delays between retries, shared by the controller and the agent: exponential with
//! jitter, and a watch backoff that stays within seconds.

use std::time::Duration;

/// Waits from `first`, doubling to `longest`, each with jitter, never giving up.
pub(crate) fn retry_delays(first: Duration, longest: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Backoff of every watch: 0.25 s doubling to 2 s, each with up to as much again of
/// jitter. kube's default grows to 30 s (and up to twice that with its jitter), so a cache
/// could learn of a change up to a minute after an API server outage ended. A restarting
/// API server refuses, then forbids (its RBAC caches not yet filled) for several seconds:
/// a watch must not be asleep for long when it is back. One relist per watch every
/// couple of seconds is little for a recovering server.
pub(crate) struct WatchBackoff(backon::ExponentialBackoff);

impl WatchBackoff {
    pub(crate) fn new() -> Self {
        Self(retry_delays(
            Duration::from_millis(250),
            Duration::from_secs(2),
        ))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_retries_within_seconds_however_long_the_outage() {
        let delays: Vec<Duration> = WatchBackoff::new().take(20).collect();
        assert!(delays[0] <= Duration::from_secs(1), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
    }
}
