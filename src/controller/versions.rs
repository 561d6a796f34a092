//! Resource-version bookkeeping between a sync's view and its writes: the versions a
//! sync saw, which its writes are conditional on, and the versions its writes left, which
//! the next sync waits to see in the caches.

use crate::plan::WorkloadKind;

/// The resource versions a sync saw for one workload: a write made on this view fails
/// with 409 Conflict if the object changed since, so a write that was delayed (a leader
/// frozen mid-sync) can never overwrite a newer one.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub document: Option<String>,
    pub report: Option<String>,
    pub workload: Option<String>,
}

/// An object a write changed: its resource version (none: absent) in the caches the
/// write was planned from, and as the write left it. The caches hold the write once they
/// show it as left, or as anything but what they showed before (a newer change).
pub struct Echo {
    pub kind: EchoKind,
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The cache an [`Echo`] shows in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    ConfigMap,
    Workload(WorkloadKind),
}
