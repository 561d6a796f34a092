//! What can go wrong, each said with what to do about it.

use crate::api::validation::FieldError;
use std::fmt;

/// What the API server puts before an admission webhook's message.
const DENIED: &str = "denied the request: ";

#[derive(Debug)]
pub enum PluginError {
    /// The kubeconfig cannot be read or used.
    Connect(String),
    /// No such incident; `elsewhere` names the namespaces that have one of that name.
    NotFound {
        name: String,
        namespace: String,
        elsewhere: Vec<String>,
    },
    /// RBAC refused a request.
    Forbidden {
        verb: String,
        resource: String,
        namespace: Option<String>,
    },
    /// The spec the command would write is invalid: the controller's own words.
    Invalid(Vec<FieldError>),
    /// A refusal the command makes itself, with why.
    Refused(String),
    /// Waiting ran out; what is still left.
    Timeout(String),
    /// Any other API error.
    Api(kube::Error),
}

impl PluginError {
    /// The API error of `verb` on `resource` (in `namespace`), said helpfully when it is
    /// a refusal a user can act on; an admission webhook's refusal in its own words.
    pub fn from_api(
        error: kube::Error,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Self {
        match &error {
            kube::Error::Api(response) if response.code == 403 => Self::Forbidden {
                verb: verb.into(),
                resource: resource.into(),
                namespace: namespace.map(String::from),
            },
            // The admission webhook's own words, without the API server's wrapping.
            kube::Error::Api(response) if response.message.contains(DENIED) => Self::Refused(
                response
                    .message
                    .split_once(DENIED)
                    .map_or_else(|| response.message.clone(), |(_, why)| why.to_string()),
            ),
            _ => Self::Api(error),
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(why) => write!(f, "cannot reach the cluster: {why}"),
            Self::NotFound {
                name,
                namespace,
                elsewhere,
            } => {
                write!(f, "no MailIncident {name:?} in namespace {namespace}")?;
                match elsewhere.as_slice() {
                    [] => write!(f, "; `kubectl mail-incident list -A` lists every incident"),
                    [only] => write!(f, "; there is one in namespace {only}: add -n {only}"),
                    found => write!(
                        f,
                        "; there are ones in namespaces {}: add -n and one of them",
                        found.join(", ")
                    ),
                }
            }
            Self::Forbidden {
                verb,
                resource,
                namespace,
            } => {
                let place = namespace.as_deref().map_or_else(
                    || "across namespaces".to_string(),
                    |n| format!("in namespace {n}"),
                );
                let role = if matches!(verb.as_str(), "get" | "list" | "watch") {
                    "mail-incident-operator-view (or the view role)"
                } else {
                    "mail-incident-operator-edit (or the edit role)"
                };
                write!(
                    f,
                    "forbidden: you may not {verb} {resource} {place}; the ClusterRole {role} grants it (deploy/user-roles.yaml)"
                )
            }
            Self::Invalid(errors) => {
                let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
                write!(f, "the incident would be invalid: {}", listed.join("; "))
            }
            Self::Refused(why) => f.write_str(why),
            Self::Timeout(left) => write!(f, "timed out: {left}"),
            Self::Api(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for PluginError {}
