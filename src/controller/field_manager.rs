//! The name the controller writes under, read by the write layer and by the caches (to
//! tell its own writes from another hand's).

/// The field manager of every write the controller makes. GitOps tools can be told to
/// ignore the fields this manager owns.
pub const FIELD_MANAGER: &str = "mail-incident-operator";
