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
    #[error("{node} is cordoned by k3sfleet for {}: leave it to that, or abort it first", describe_owner(&.claim.owner))]
    Claimed {
        node: String,
        claim: super::claim::Claim,
    },
}

fn describe_owner(owner: &super::claim::Owner) -> String {
    match owner {
        super::claim::Owner::Rollout(id) => format!("rollout {id}, which is under way"),
        super::claim::Owner::Drain(actor) => format!("a drain by {actor}, which is running"),
    }
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
            DrainError::NodeNotFound { .. }
            | DrainError::NoEvictionApi
            | DrainError::Claimed { .. } => false,
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
/// An answer of the API server reads as its message and HTTP code (kube's
/// own text of it embeds a debug dump of the Status).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            text.push_str(&api_status(status));
            break;
        }
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

fn api_status(status: &kube::core::Status) -> String {
    let message = if status.message.is_empty() {
        "the API server refused the request"
    } else {
        &status.message
    };
    format!("{message} (HTTP {})", status.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_answer_reads_as_its_message_and_code() {
        let status = kube::core::Status {
            code: 403,
            message: r#"volumes.longhorn.io is forbidden: User "k3sfleet-coordinator" cannot list resource "volumes""#.into(),
            reason: "Forbidden".into(),
            ..Default::default()
        };
        let err = DrainError::kubernetes(
            "listing Longhorn volumes",
            kube::Error::Api(Box::new(status)),
        );
        let text = one_line(&err);
        assert_eq!(
            text,
            r#"listing Longhorn volumes failed: volumes.longhorn.io is forbidden: User "k3sfleet-coordinator" cannot list resource "volumes" (HTTP 403)"#
        );
        assert!(!text.contains("Status {"), "{text}");
    }
}
