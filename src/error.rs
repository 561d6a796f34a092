//! The crate's error type. Every error has a stable category, used as a metric label and
//! in logs, so dashboards can tell API trouble from bad input.

/// Errors the controller can meet while reconciling or starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server that failed, named with its verb and object. There is no
    /// `From<kube::Error>`: a bare `?` would lose which call it was.
    #[error("{call}: {source}")]
    Api {
        call: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),

    #[error("cannot serve HTTP on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("the watch of {0} ended before its cache was filled")]
    CacheNeverReady(&'static str),

    #[error("this replica does not hold the leader Lease (any more); it writes nothing")]
    NotLeader,

    #[error("agent: {0}")]
    Agent(String),

    #[error("reconcile panicked: {0}")]
    Panic(String),

    /// The webhook's certificates could not be made, kept or served.
    #[error("webhook certificates: {0}")]
    Webhook(String),
}

impl Error {
    /// A stable, low-cardinality name for the kind of failure.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Api { .. } => "kube_api",
            Self::Connect(_) => "connect",
            Self::Listen { .. } => "startup",
            Self::CacheNeverReady(_) => "cache",
            Self::NotLeader => "leadership",
            Self::Agent(_) => "agent",
            Self::Panic(_) => "panic",
            Self::Webhook(_) => "webhook",
        }
    }
}

impl Error {
    /// Wraps a failed API call with what it was: `call` names the verb and the object.
    pub fn api(call: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let call = call.into();
        move |source| Self::Api { call, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
