//! Leadership over a `coordination.k8s.io/v1` Lease, so that several replicas can run and
//! only one of them writes, with every replica's caches warm.
//!
//! `kube-lease-manager` competes for and renews the Lease; it is driven here with short
//! retries, so a renewal that fails is tried again within a second or two, well inside
//! the lease. What the crate believes is not what fences writes: a watch of the Lease
//! keeps the claim as the API server last recorded it, and a write may go out only while
//! that claim names this replica and its `renewTime` plus the lease, less a safety margin,
//! is still ahead (linkerd's policy controller checks its claim the same way). A replica
//! that was frozen, or cut off from the API server, finds its claim expired the moment it
//! runs again, before a standby may take over, and writes nothing.
//!
//! Expiry compares the holder's `renewTime` (its wall clock) with ours, so clocks of the
//! replicas must roughly agree; the margin covers skew of that order.

use super::metrics::Metrics;
use crate::{
    Error, Result,
    retry::{WatchBackoff, retry_delays},
};
use futures::{Stream, StreamExt, stream};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::{sync::Arc, time::Duration};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep},
};
use tracing::{info, warn};

/// Waits between failed attempts to read or renew the Lease: short, so that renewal
/// succeeds within a second or two of the API server answering again.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_LONGEST: Duration = Duration::from_secs(1);

/// This replica's standing in the Lease: whether it may write, now.
#[derive(Clone)]
pub struct Leadership {
    identity: Arc<str>,
    /// Given up before the lease runs out, for clock skew and request latency.
    margin: Duration,
    /// The Lease as the API server last showed it (`None`: absent or not seen yet).
    lease: watch::Receiver<Option<LeaseSpec>>,
}

#[cfg(test)]
impl Leadership {
    /// A standing that does not change: a claim renewed now for an hour (`holds`), or
    /// none, for tests of the code that writes.
    pub fn fixed(holds: bool) -> Self {
        let lease = holds.then(|| LeaseSpec {
            holder_identity: Some("me".into()),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                Timestamp::now(),
            )),
            lease_duration_seconds: Some(3600),
            ..LeaseSpec::default()
        });
        Self {
            identity: "me".into(),
            margin: Duration::ZERO,
            lease: watch::channel(lease).1,
        }
    }
}

/// The tasks that hold and watch the Lease; [`stop`](Self::stop) releases it.
pub struct Elector {
    manager: Arc<tokio::sync::OnceCell<LeaseManager>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Settings of the Lease.
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a claim lasts without renewal.
    pub duration: Duration,
}

/// Starts competing for the Lease and watching it. Returns at once: this replica stands by
/// (caches filling, no writes) until its claim holds.
pub fn start(client: Client, settings: LeaseSettings, metrics: Metrics) -> (Leadership, Elector) {
    let duration_seconds = settings.duration.as_secs().max(3);
    // Renew when two thirds of the lease are left, so a failed renewal has most of the
    // lease to be retried in; stop writing with a fifth left.
    let grace_seconds = duration_seconds * 2 / 3;
    let margin = Duration::from_secs(duration_seconds) / 5;
    let (lease_tx, lease_rx) = watch::channel(None);
    let leadership = Leadership {
        identity: settings.identity.clone().into(),
        margin,
        lease: lease_rx,
    };
    let manager = Arc::new(tokio::sync::OnceCell::new());
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lease_name = settings.name.clone();
    let tasks = vec![
        tokio::spawn(compete(
            client,
            settings,
            duration_seconds,
            grace_seconds,
            manager.clone(),
        )),
        tokio::spawn(watch_lease(api, lease_name, lease_tx)),
        tokio::spawn(report(leadership.clone(), metrics)),
    ];
    (leadership, Elector { manager, tasks })
}

impl Leadership {
    /// Whether this replica may write now.
    pub fn holds(&self) -> bool {
        self.holds_for().is_some()
    }

    /// The fence before every write: an error once the claim no longer holds.
    pub fn fence(&self) -> Result<()> {
        if self.holds() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Yields each time this replica comes to hold the claim (once at start if it does),
    /// including after a claim that ran out between two looks was renewed.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        stream::unfold(
            (self.clone(), None::<Instant>),
            |(mut this, mut held_until)| async move {
                loop {
                    let left = this.holds_for();
                    let lapsed = held_until.is_none_or(|until| until <= Instant::now());
                    held_until = left.map(|left| Instant::now() + left);
                    if left.is_some() && lapsed {
                        return Some(((), (this, held_until)));
                    }
                    if !this.changed_or(left).await {
                        return None;
                    }
                }
            },
        )
    }

    /// How much longer the claim holds, if it does now.
    fn holds_for(&self) -> Option<Duration> {
        claim_holds(
            self.lease.borrow().as_ref(),
            &self.identity,
            Timestamp::now(),
            self.margin,
        )
    }

    /// Waits for the Lease to change, or for `until` to pass; false once nothing watches
    /// the Lease any more.
    async fn changed_or(&mut self, until: Option<Duration>) -> bool {
        let expiry = async {
            match until {
                Some(left) => sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.lease.changed() => changed.is_ok(),
            () = expiry => true,
        }
    }
}

impl Elector {
    /// Stops competing and, if this replica holds the Lease, releases it so that a standby
    /// takes over at once rather than after the lease runs out.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(manager) = self.manager.get()
            && let Err(error) = manager.release().await
        {
            warn!(%error, "cannot release the lease; a standby takes over when it expires");
        }
    }
}

/// How long the claim in `lease` still holds for `identity` at `now`, keeping `margin` in
/// hand; `None` if it does not hold.
fn claim_holds(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    margin: Duration,
) -> Option<Duration> {
    let lease = lease?;
    if lease.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = lease.renew_time.as_ref()?.0;
    let seconds = u64::try_from(lease.lease_duration_seconds?).ok()?;
    let lasts = Duration::from_secs(seconds).checked_sub(margin)?;
    let until = renewed.checked_add(lasts).ok()?;
    let left = until.duration_since(now);
    Duration::try_from(left).ok().filter(|left| !left.is_zero())
}

/// Competes for the Lease and renews it while held, for as long as the process runs.
/// Every failure is retried after a short backoff: the claim, not this loop, decides
/// whether writes may go out, so retrying can never make two replicas write.
async fn compete(
    client: Client,
    settings: LeaseSettings,
    duration_seconds: u64,
    grace_seconds: u64,
    cell: Arc<tokio::sync::OnceCell<LeaseManager>>,
) {
    let mut delays = retry_delays(RETRY_FIRST, RETRY_LONGEST);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration_seconds)
            .with_grace(grace_seconds)
            .build()
            .await;
        match built {
            Ok(manager) => break manager,
            Err(error) => {
                warn!(lease = %settings.name, %error, "cannot set up the lease; retrying");
                sleep(delays.next().unwrap_or_default()).await;
            }
        }
    };
    let manager = cell.get_or_init(|| async { manager }).await;
    loop {
        match manager.changed().await {
            Ok(_) => delays = retry_delays(RETRY_FIRST, RETRY_LONGEST),
            Err(error) => {
                warn!(lease = %settings.name, %error, "cannot renew or read the lease; retrying");
                sleep(delays.next().unwrap_or_default()).await;
            }
        }
    }
}

/// Keeps `lease` equal to what the API server holds, with a watch that retries within
/// seconds. While the server cannot be reached the last claim stays, and expires by itself.
async fn watch_lease(api: Api<Lease>, name: String, lease: watch::Sender<Option<LeaseSpec>>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).backoff(WatchBackoff::new()).boxed();
    let mut listed = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(object)) => listed = object.spec,
            Ok(watcher::Event::InitDone) => {
                lease.send_replace(listed.take());
            }
            Ok(watcher::Event::Apply(object)) => {
                lease.send_replace(object.spec);
            }
            Ok(watcher::Event::Delete(_)) => {
                lease.send_replace(None);
            }
            Err(error) => warn!(lease = %name, %error, "watch of the lease failed; retrying"),
        }
    }
}

/// Logs and counts each change of standing.
async fn report(mut leadership: Leadership, metrics: Metrics) {
    let mut held = None;
    loop {
        let until = leadership.holds_for();
        if held != Some(until.is_some()) {
            held = Some(until.is_some());
            metrics.set_leading(until.is_some());
            if until.is_some() {
                info!(identity = %leadership.identity, "leading: this replica holds the lease and writes");
            } else {
                info!(identity = %leadership.identity, "standing by: the lease is not ours, or its claim ran out; no writes");
            }
        }
        if !leadership.changed_or(until).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    const LEASE: Duration = Duration::from_secs(15);
    const MARGIN: Duration = Duration::from_secs(3);

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    fn seconds_before(now: Timestamp, seconds: i64) -> Timestamp {
        now.checked_sub(jiff_seconds(seconds)).unwrap()
    }

    fn jiff_seconds(seconds: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(seconds)
    }

    #[test]
    fn a_claim_holds_until_the_margin_before_the_lease_runs_out() {
        let now = Timestamp::now();
        let fresh = lease("me", seconds_before(now, 1), LEASE.as_secs() as i32);
        assert_eq!(
            claim_holds(Some(&fresh), "me", now, MARGIN),
            Some(Duration::from_secs(11))
        );
        let late = lease("me", seconds_before(now, 12), LEASE.as_secs() as i32);
        assert_eq!(claim_holds(Some(&late), "me", now, MARGIN), None);
    }

    #[test]
    fn a_claim_is_never_held_for_another_replica_or_from_an_incomplete_lease() {
        let now = Timestamp::now();
        let theirs = lease("other", now, 15);
        assert_eq!(claim_holds(Some(&theirs), "me", now, MARGIN), None);
        assert_eq!(claim_holds(None, "me", now, MARGIN), None);
        let unrenewed = LeaseSpec {
            renew_time: None,
            ..lease("me", now, 15)
        };
        assert_eq!(claim_holds(Some(&unrenewed), "me", now, MARGIN), None);
        let negative = lease("me", now, -15);
        assert_eq!(claim_holds(Some(&negative), "me", now, MARGIN), None);
        let shorter_than_the_margin = lease("me", now, 2);
        assert_eq!(
            claim_holds(Some(&shorter_than_the_margin), "me", now, MARGIN),
            None
        );
    }

    #[test]
    fn any_lease_a_user_writes_is_judged_without_panicking() {
        let now = Timestamp::now();
        for seconds in [i32::MIN, -1, 0, 1, i32::MAX] {
            for renewed in [Timestamp::MIN, Timestamp::MAX, now] {
                let _ = claim_holds(Some(&lease("me", renewed, seconds)), "me", now, MARGIN);
            }
        }
    }

    /// The claim runs out by itself when the Lease stops changing (a frozen or cut-off
    /// replica), and `gained` yields again once it is renewed.
    #[tokio::test]
    async fn standing_follows_the_lease_and_the_clock() {
        let (lease_tx, lease_rx) = watch::channel(None);
        let leadership = Leadership {
            identity: "me".into(),
            margin: Duration::ZERO,
            lease: lease_rx,
        };
        let mut gained = std::pin::pin!(leadership.gained());
        assert!(!leadership.holds());
        assert!(leadership.fence().is_err());

        lease_tx.send_replace(Some(lease("other", Timestamp::now(), 1)));
        let nothing = tokio::time::timeout(Duration::from_millis(300), gained.next()).await;
        assert!(
            nothing.is_err(),
            "gained while another replica holds the lease"
        );

        lease_tx.send_replace(Some(lease("me", Timestamp::now(), 1)));
        let first = tokio::time::timeout(Duration::from_secs(1), gained.next()).await;
        assert_eq!(first, Ok(Some(())));
        assert!(leadership.fence().is_ok());

        // No renewal: the claim expires after its second, with no event.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!leadership.holds());
        assert!(matches!(leadership.fence(), Err(Error::NotLeader)));

        lease_tx.send_replace(Some(lease("me", Timestamp::now(), 1)));
        let again = tokio::time::timeout(Duration::from_secs(1), gained.next()).await;
        assert_eq!(again, Ok(Some(())), "a renewed claim must be caught up on");
    }
}
