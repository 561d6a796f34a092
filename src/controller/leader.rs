//! Leader election over a `coordination.k8s.io/v1` Lease, so that several replicas can run
//! and only one of them writes. kube has no leader election of its own.
//!
//! Every write of the Lease is a create or a `replace` that carries the resourceVersion we
//! read, so of two replicas racing for it one gets 409 Conflict and simply reads again.
//! What to write is decided by `decide`, a pure function; the rest is I/O.
//!
//! Expiry compares the holder's `renewTime` (its wall clock) with ours, so clocks of the
//! replicas must roughly agree; the leader gives up a quarter of a lease before others may
//! take over, which covers skew of that order.

use super::FIELD_MANAGER;
use crate::Result;
use futures::{
    FutureExt,
    channel::oneshot,
    future::{Future, Shared},
};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use std::time::Duration;
use tokio::{
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout, timeout_at},
};
use tracing::{debug, info, warn};

/// Competes for, holds and renews one Lease on behalf of this replica.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
}

/// Proof that this replica leads. Renews the Lease in the background until
/// [`release`](Self::release)d or dropped; dropping stops renewing without releasing, so
/// a successor then waits for the Lease to expire.
pub struct Leadership {
    lost: Shared<oneshot::Receiver<()>>,
    stop: oneshot::Sender<()>,
    renewer: JoinHandle<Option<Lease>>,
    elector: LeaderElector,
}

impl LeaderElector {
    /// An elector for the Lease `name` in the namespace of `api`. `identity` must be unique
    /// per running replica (the pod name): two processes with one identity both lead.
    ///
    /// # Panics
    ///
    /// If `renew_every` is zero or not shorter than three quarters of `lease_duration`
    /// (the time a renewal is trusted), because then leadership could never be kept.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
        renew_every: Duration,
    ) -> Self {
        assert!(
            !renew_every.is_zero() && renew_every < trusted_for(lease_duration),
            "renew_every ({renew_every:?}) must be above zero and below three quarters of \
             lease_duration ({lease_duration:?})"
        );
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_every,
        }
    }

    /// Waits until this replica holds the Lease, then keeps renewing it in the background.
    ///
    /// Network trouble and server errors are retried; other API errors (missing RBAC, say)
    /// are returned, since waiting will not fix them.
    pub async fn acquire(&self) -> Result<Leadership> {
        let mut waiting_for: Option<String> = None;
        loop {
            let observed = match self.api.get_opt(&self.name).await {
                Ok(observed) => observed,
                Err(error) if is_transient(&error) => {
                    warn!(lease = %self.name, %error, "cannot read the lease; retrying");
                    sleep(self.renew_every).await;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            // A Lease without a spec is an unheld Lease, not a missing one: creating it
            // again would fail forever with AlreadyExists.
            let spec = observed
                .as_ref()
                .map(|lease| lease.spec.clone().unwrap_or_default());
            // Taken before `now` is read, so the trusted time we derive from it is never
            // later than what others compute from the renewTime we write.
            let started = Instant::now();
            let now = Timestamp::now();
            let spec = match decide(spec.as_ref(), &self.identity, now, self.lease_duration) {
                Step::Wait { until } => {
                    let holder = spec.and_then(|spec| spec.holder_identity);
                    if holder != waiting_for {
                        info!(lease = %self.name, holder = holder.as_deref().unwrap_or_default(), %until, "another replica leads; waiting");
                        waiting_for = holder;
                    }
                    let left = Duration::try_from(until.duration_since(now)).unwrap_or_default();
                    sleep(left.min(self.renew_every)).await;
                    continue;
                }
                Step::Create { spec } | Step::Renew { spec } | Step::TakeOver { spec } => spec,
            };
            match self.write(observed, spec).await {
                Ok(lease) => {
                    info!(lease = %self.name, identity = %self.identity, "leadership acquired");
                    return Ok(self.lead(lease, started));
                }
                Err(error) if wrote_first(&error) => {
                    debug!(lease = %self.name, "another replica wrote the lease first; reading it again");
                }
                Err(error) if is_transient(&error) => {
                    warn!(lease = %self.name, %error, "cannot write the lease; retrying");
                    sleep(self.renew_every).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Starts renewing `lease`, written by us in a request that began at `started`.
    fn lead(&self, lease: Lease, started: Instant) -> Leadership {
        let (lost_tx, lost_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let renewer = tokio::spawn(self.clone().keep(lease, started, lost_tx, stop_rx));
        Leadership {
            lost: lost_rx.shared(),
            stop: stop_tx,
            renewer,
            elector: self.clone(),
        }
    }

    /// The renew loop. Returns the last Lease it wrote when stopped, or `None` once
    /// leadership is lost (after telling `lost`).
    async fn keep(
        self,
        mut lease: Lease,
        started: Instant,
        lost: oneshot::Sender<()>,
        mut stop: oneshot::Receiver<()>,
    ) -> Option<Lease> {
        let mut trusted_until = started + trusted_for(self.lease_duration);
        let mut next = started + self.renew_every;
        loop {
            let attempt = async {
                sleep_until(next).await;
                let started = Instant::now();
                (started, self.renew(&lease).await)
            };
            // The whole attempt, waiting included, is bounded by the trusted time: a hung
            // request must not keep us believing we lead.
            let outcome = tokio::select! {
                _ = &mut stop => None,
                outcome = timeout_at(trusted_until, attempt) => Some(outcome),
            };
            let Some(outcome) = outcome else {
                return Some(lease);
            };
            match outcome {
                Ok((started, Ok(Renewal::Held(renewed)))) => {
                    debug!(lease = %self.name, "lease renewed");
                    lease = *renewed;
                    trusted_until = started + trusted_for(self.lease_duration);
                    next = started + self.renew_every;
                }
                Ok((_, Ok(Renewal::Lost { holder }))) => {
                    info!(lease = %self.name, holder = holder.as_deref().unwrap_or_default(), "leadership lost: the lease is no longer ours");
                    break;
                }
                Ok((started, Err(error))) => {
                    let left = trusted_until.saturating_duration_since(Instant::now());
                    warn!(lease = %self.name, %error, ?left, "cannot renew the lease; retrying");
                    next = started + self.renew_every;
                }
                Err(_) => {
                    info!(lease = %self.name, "leadership lost: the lease could not be renewed in time");
                    break;
                }
            }
        }
        lost.send(()).ok();
        None
    }

    /// Renews `lease` if it is still ours. A conflict means someone wrote it since we
    /// last did, so we read it again and decide once more.
    async fn renew(&self, lease: &Lease) -> kube::Result<Renewal> {
        match self.renew_observed(lease).await {
            Err(error) if wrote_first(&error) => match self.api.get_opt(&self.name).await? {
                Some(current) => self.renew_observed(&current).await,
                None => Ok(Renewal::Lost { holder: None }),
            },
            outcome => outcome,
        }
    }

    async fn renew_observed(&self, lease: &Lease) -> kube::Result<Renewal> {
        let observed = lease.spec.clone().unwrap_or_default();
        let now = Timestamp::now();
        match decide(Some(&observed), &self.identity, now, self.lease_duration) {
            Step::Renew { spec } => Ok(Renewal::Held(Box::new(
                self.write(Some(lease.clone()), spec).await?,
            ))),
            // Even if the other holder's lease has expired, it may have led meanwhile.
            _ => Ok(Renewal::Lost {
                holder: observed.holder_identity,
            }),
        }
    }

    /// Clears the holder of `lease` if it is still ours. Returns whether it was.
    async fn clear(&self, mut lease: Lease) -> kube::Result<bool> {
        let mut retried = false;
        loop {
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            match self.write(Some(lease), spec).await {
                Ok(_) => return Ok(true),
                Err(error) if wrote_first(&error) && !retried => {
                    retried = true;
                    match self.api.get_opt(&self.name).await? {
                        Some(current) => lease = current,
                        None => return Ok(false),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Creates the Lease, or replaces `observed` with `spec` on condition that nobody
    /// wrote it since we read it (its resourceVersion goes along).
    async fn write(&self, observed: Option<Lease>, spec: LeaseSpec) -> kube::Result<Lease> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match observed {
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api.replace(&self.name, &params, &lease).await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&params, &lease).await
            }
        }
    }
}

impl Leadership {
    /// Resolves once this replica may no longer be the leader: another identity holds the
    /// Lease, or renewals failed for too long. Also resolves after release. The controller
    /// must stop writing when it does. `Sync`, so it can go to
    /// `Controller::graceful_shutdown_on` as is.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.lost.clone().map(|_| ())
    }

    /// Stops renewing and clears the holder, so a successor takes over at its next look
    /// (within its `renew_every`) instead of waiting for the Lease to expire. Call it only
    /// after the controller has stopped writing. Failures are logged: the Lease then simply
    /// expires.
    pub async fn release(self) {
        let elector = self.elector;
        self.stop.send(()).ok();
        let lease = match self.renewer.await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                info!(lease = %elector.name, "leadership was already lost; nothing to release");
                return;
            }
            Err(error) => {
                warn!(lease = %elector.name, %error, "the renew task failed; the lease will expire");
                return;
            }
        };
        // Past the lease duration the Lease expires anyway; waiting longer buys nothing.
        match timeout(elector.lease_duration, elector.clear(lease)).await {
            Ok(Ok(true)) => info!(lease = %elector.name, "leadership released"),
            Ok(Ok(false)) => {
                info!(lease = %elector.name, "the lease was no longer ours; nothing to release");
            }
            Ok(Err(error)) => {
                warn!(lease = %elector.name, %error, "cannot release the lease; it will expire");
            }
            Err(_) => warn!(lease = %elector.name, "releasing the lease timed out; it will expire"),
        }
    }
}

/// What a renewal found.
enum Renewal {
    Held(Box<Lease>),
    Lost { holder: Option<String> },
}

/// What to do with the Lease as observed. The write variants carry the spec to write.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// There is no Lease: create one naming us.
    Create { spec: LeaseSpec },
    /// We hold the Lease: extend it.
    Renew { spec: LeaseSpec },
    /// The Lease is unheld or expired: claim it.
    TakeOver { spec: LeaseSpec },
    /// Another replica holds a live Lease, until the given time unless it renews.
    Wait { until: Timestamp },
}

/// Decides what to do with the `observed` Lease spec (`None`: no Lease object).
fn decide(
    observed: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Step {
    let claimed = LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(whole_seconds(lease_duration)),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..observed.cloned().unwrap_or_default()
    };
    let Some(observed) = observed else {
        return Step::Create {
            spec: LeaseSpec {
                lease_transitions: Some(0),
                ..claimed
            },
        };
    };
    let holder = observed.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Step::Renew {
            spec: LeaseSpec {
                acquire_time: observed.acquire_time.clone().or(claimed.acquire_time),
                ..claimed
            },
        };
    }
    if !holder.is_empty() {
        let until = expiry(observed, now, lease_duration);
        if now < until {
            return Step::Wait { until };
        }
    }
    Step::TakeOver {
        spec: LeaseSpec {
            lease_transitions: Some(observed.lease_transitions.unwrap_or(0).saturating_add(1)),
            ..claimed
        },
    }
}

/// When a held Lease expires. Missing fields are read so as never to take a Lease from a
/// live holder, at the price of waiting on one a person broke by hand:
/// - no `leaseDurationSeconds`: our own duration, which all our replicas share (reading
///   it as zero would let anyone take a live Lease; as infinite, no one ever could);
/// - no `renewTime`: the `acquireTime`, else "just now". Our writers always set it, and a
///   holder still alive restores it at its next renewal; a dead one's Lease must then be
///   deleted by hand.
fn expiry(lease: &LeaseSpec, now: Timestamp, lease_duration: Duration) -> Timestamp {
    let duration = match lease.lease_duration_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().into()),
        _ => lease_duration,
    };
    let renewed = lease
        .renew_time
        .as_ref()
        .or(lease.acquire_time.as_ref())
        .map_or(now, |time| time.0);
    renewed.checked_add(duration).unwrap_or(Timestamp::MAX)
}

/// How long after a successful renewal we still trust that we lead: the lease minus a
/// quarter, a margin for clock skew between replicas and for the controller to stop
/// writing once [`Leadership::lost`] resolves.
fn trusted_for(lease_duration: Duration) -> Duration {
    lease_duration - lease_duration / 4
}

/// The lease duration as the Lease states it: whole seconds, rounded up so that others
/// never wait less than we assume.
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds).unwrap_or(i32::MAX).max(1)
}

/// Whether another writer got there first (the object changed or already exists since we
/// read it): read again and decide again.
fn wrote_first(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 409 || status.is_conflict() || status.is_already_exists())
}

/// Whether retrying the same request later may succeed.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "operator-a";
    const OTHER: &str = "operator-b";
    const LEASE: Duration = Duration::from_secs(15);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn held(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(100))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn written(step: Step) -> LeaseSpec {
        match step {
            Step::Create { spec } | Step::Renew { spec } | Step::TakeOver { spec } => spec,
            Step::Wait { until } => panic!("expected a write, got a wait until {until}"),
        }
    }

    #[test]
    fn no_lease_is_created_naming_us() {
        let step = decide(None, ME, at(1000), LEASE);
        let expected = LeaseSpec {
            holder_identity: Some(ME.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(1000))),
            renew_time: Some(MicroTime(at(1000))),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        assert_eq!(step, Step::Create { spec: expected });
    }

    #[test]
    fn our_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let step = decide(Some(&held(ME, 990)), ME, at(1000), LEASE);
        let expected = LeaseSpec {
            renew_time: Some(MicroTime(at(1000))),
            ..held(ME, 990)
        };
        assert_eq!(step, Step::Renew { spec: expected });
    }

    #[test]
    fn our_lease_is_renewed_even_if_expired() {
        let step = decide(Some(&held(ME, 900)), ME, at(1000), LEASE);
        assert!(matches!(step, Step::Renew { .. }), "{step:?}");
    }

    #[test]
    fn fresh_lease_of_another_means_waiting_until_it_expires() {
        let step = decide(Some(&held(OTHER, 990)), ME, at(1000), LEASE);
        assert_eq!(step, Step::Wait { until: at(1005) });
    }

    #[test]
    fn wait_follows_the_holders_duration_not_ours() {
        let lease = LeaseSpec {
            lease_duration_seconds: Some(60),
            ..held(OTHER, 990)
        };
        let step = decide(Some(&lease), ME, at(1000), LEASE);
        assert_eq!(step, Step::Wait { until: at(1050) });
    }

    #[test]
    fn expired_lease_of_another_is_taken_over() {
        let step = decide(Some(&held(OTHER, 900)), ME, at(1000), LEASE);
        let expected = LeaseSpec {
            holder_identity: Some(ME.into()),
            acquire_time: Some(MicroTime(at(1000))),
            renew_time: Some(MicroTime(at(1000))),
            lease_transitions: Some(4),
            ..held(OTHER, 900)
        };
        assert_eq!(step, Step::TakeOver { spec: expected });
    }

    #[test]
    fn lease_is_taken_over_exactly_when_it_expires() {
        let step = decide(Some(&held(OTHER, 985)), ME, at(1000), LEASE);
        assert!(matches!(step, Step::TakeOver { .. }), "{step:?}");
        let step = decide(
            Some(&held(OTHER, 985)),
            ME,
            at(1000) - Duration::from_micros(1),
            LEASE,
        );
        assert_eq!(step, Step::Wait { until: at(1000) });
    }

    #[test]
    fn released_lease_is_taken_over_at_once() {
        for holder in [None, Some(String::new())] {
            let lease = LeaseSpec {
                holder_identity: holder,
                ..held(OTHER, 999)
            };
            let spec = written(decide(Some(&lease), ME, at(1000), LEASE));
            assert_eq!(spec.holder_identity.as_deref(), Some(ME));
            assert_eq!(spec.lease_transitions, Some(4));
            assert_eq!(spec.acquire_time, Some(MicroTime(at(1000))));
        }
    }

    #[test]
    fn lease_without_spec_fields_is_taken_over_from_zero_transitions() {
        let spec = written(decide(Some(&LeaseSpec::default()), ME, at(1000), LEASE));
        assert_eq!(spec.lease_transitions, Some(1));
    }

    #[test]
    fn missing_duration_reads_as_ours() {
        let lease = LeaseSpec {
            lease_duration_seconds: None,
            ..held(OTHER, 990)
        };
        let step = decide(Some(&lease), ME, at(1000), Duration::from_secs(30));
        assert_eq!(step, Step::Wait { until: at(1020) });
    }

    #[test]
    fn missing_renew_time_falls_back_to_acquire_time_then_now() {
        let lease = LeaseSpec {
            renew_time: None,
            ..held(OTHER, 0)
        };
        let step = decide(Some(&lease), ME, at(1000), LEASE);
        assert!(matches!(step, Step::TakeOver { .. }), "{step:?}");
        let lease = LeaseSpec {
            acquire_time: None,
            ..lease
        };
        let step = decide(Some(&lease), ME, at(1000), LEASE);
        assert_eq!(step, Step::Wait { until: at(1015) });
    }

    #[test]
    fn duration_is_stated_in_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
        assert_eq!(whole_seconds(Duration::from_millis(15_001)), 16);
        assert_eq!(whole_seconds(Duration::from_millis(10)), 1);
        assert_eq!(whole_seconds(Duration::MAX), i32::MAX);
    }

    #[test]
    fn renewal_is_trusted_for_three_quarters_of_the_lease() {
        assert_eq!(
            trusted_for(Duration::from_secs(16)),
            Duration::from_secs(12)
        );
    }
}
