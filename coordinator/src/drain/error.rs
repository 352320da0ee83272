//! Why cordoning, planning or starting a drain failed. Failures once a drain
//! runs are outcomes (FAILED, TIMED_OUT) in its result instead.

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("node {node:?} does not exist in the cluster")]
    NodeNotFound { node: String },
    #[error("{action} failed")]
    Kubernetes {
        /// What was being done: "cordoning worker-1".
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the API server does not offer the Eviction API (no pods/eviction in /api/v1); \
         k3sfleet does not delete pods behind PodDisruptionBudgets' backs"
    )]
    NoEvictionApi,
    #[error("node {node:?} kept changing while {action}; try again")]
    Conflict { node: String, action: &'static str },
}

impl DrainError {
    pub(crate) fn kubernetes(action: impl Into<String>, source: kube::Error) -> Self {
        DrainError::Kubernetes {
            action: action.into(),
            source,
        }
    }

    /// Whether trying again later may succeed (the API server was unreachable,
    /// overloaded or busy), as opposed to a request that will keep failing.
    pub fn is_transient(&self) -> bool {
        match self {
            DrainError::Kubernetes { source, .. } => is_transient(source),
            DrainError::Conflict { .. } => true,
            DrainError::NodeNotFound { .. } | DrainError::NoEvictionApi => false,
        }
    }

    /// The HTTP status the API server answered with, if it answered.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            DrainError::Kubernetes {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Server errors, throttling, conflicts and transport failures pass; the rest
/// (401, 403, 404, 400, 422, a client-side bug) do not.
pub(crate) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            matches!(status.code, 409 | 429) || (500..600).contains(&status.code)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// An error and its causes on one line, for result messages.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
