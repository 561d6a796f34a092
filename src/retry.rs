//! Delays between retries, shared by the controller and the agent: exponential with
//! jitter, and a watch backoff that stays within seconds.

use std::time::Duration;

/// Waits from `first`, doubling, never giving up and never longer than `longest`, jitter
/// included. backon adds its jitter (up to as much again) on top of the capped delay, so
/// the doubling is capped at half of `longest`: each wait is its step plus up to as much
/// again, from `first` to `2 first` at the start and from `longest / 2` to `longest` once
/// capped. (Capped at `longest` itself, waits reached twice the documented maximum.)
pub(crate) fn retry_delays(first: Duration, longest: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    let capped_step = longest / 2;
    backon::ExponentialBuilder::default()
        .with_min_delay(first.min(capped_step))
        .with_max_delay(capped_step)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Backoff of every watch: 0.25 s doubling to at most 2 s, jitter included. kube's
/// default grows to 30 s (and up to twice that with its jitter), so a cache
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
        assert!(delays[0] <= Duration::from_millis(500), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
    }

    #[test]
    fn retry_delays_stay_within_their_maximum_over_many_draws_and_keep_their_jitter() {
        let (first, longest) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut capped = Vec::new();
        for _ in 0..200 {
            let delays: Vec<Duration> = retry_delays(first, longest).take(30).collect();
            assert!(delays[0] >= first && delays[0] <= first * 2, "{delays:?}");
            assert!(delays.iter().all(|d| *d <= longest), "{delays:?}");
            capped.extend_from_slice(&delays[20..]);
        }
        // Once capped, waits still spread over the upper half rather than all being equal.
        assert!(capped.iter().all(|d| *d >= longest / 2), "{capped:?}");
        let (shortest, longest_drawn) = (capped.iter().min(), capped.iter().max());
        assert!(
            longest_drawn.unwrap().saturating_sub(*shortest.unwrap()) > Duration::from_secs(5),
            "{shortest:?}..{longest_drawn:?}"
        );
    }
}
