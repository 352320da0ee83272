//! What an eviction answer means, and how long to wait before asking again.
//!
//! A refusal (429) is retried until the drain's deadline: the budget recovers
//! when replacements become Ready, which is the cluster's business, not ours.
//! The engine retries as soon as the budget's watched status allows a
//! disruption; the backoff here only caps how long it waits without news.

use std::time::Duration;

/// Backoff between attempts: `first`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// One second doubling to five: never slower than kubectl's fixed 5 s,
    /// and a blocked pod is reported at least every 5 s.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };

    /// The wait after the `attempt`-th refusal (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.first.min(self.max))
    }
}

/// An eviction request's answer, as the drain acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The API server accepted: the pod is being deleted.
    Accepted,
    /// No pod with this name and UID any more (404, or the UID precondition
    /// failed: a StatefulSet recreated it under the same name).
    Gone,
    /// 429: a budget refused. `pdb` is the budget's name when the API named it.
    Refused {
        pdb: Option<String>,
        /// (current, desired) healthy pods as the server counted them.
        healthy: Option<(i32, i32)>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Worth retrying: server errors, transport failures, conflicts.
    Transient(String),
    /// Will not change by retrying.
    Fatal(Fatal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// 500: the pod is covered by several budgets, which the Eviction API refuses.
    MultipleBudgets,
    /// 403: RBAC, or a budget in a state the server will not evict against.
    Forbidden(String),
    /// Anything else the server rejects outright (400, 401, 422...).
    Rejected { code: u16, message: String },
}

/// What the API server says when a pod has more than one budget.
const MULTIPLE_BUDGETS: &str = "more than one PodDisruptionBudget";
/// A 409 from the UID precondition: the pod under this name is another one.
/// The eviction handler says it in its own words (eviction.go,
/// addConditionAndDeletePod); the storage layer in others (interfaces.go,
/// Preconditions.Check).
const UID_PRECONDITION: [&str; 2] = ["UID in the precondition", "UID in precondition"];
/// The cause message naming the budget: "The disruption budget web needs 3
/// healthy pods and has 3 currently" (eviction.go).
const BUDGET_CAUSE_PREFIX: &str = "The disruption budget ";

/// Reads an eviction request's outcome.
pub fn classify(result: &Result<(), kube::Error>) -> Answer {
    let error = match result {
        Ok(()) => return Answer::Accepted,
        Err(error) => error,
    };
    let kube::Error::Api(status) = error else {
        return if super::error::is_transient(error) {
            Answer::Transient(error.to_string())
        } else {
            Answer::Fatal(Fatal::Rejected {
                code: 0,
                message: error.to_string(),
            })
        };
    };
    let message = status.message.clone();
    match status.code {
        404 => Answer::Gone,
        409 if UID_PRECONDITION.iter().any(|m| message.contains(m)) => Answer::Gone,
        429 => {
            let details = status.details.as_ref();
            let causes = || details.into_iter().flat_map(|d| &d.causes);
            let pdb = causes().find_map(|cause| budget_named_in(&cause.message));
            let healthy = causes().find_map(|cause| healthy_counts_in(&cause.message));
            let retry_after = details
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            let cause = causes()
                .map(|cause| cause.message.as_str())
                .find(|m| !m.is_empty());
            Answer::Refused {
                pdb,
                healthy,
                message: match cause {
                    Some(cause) => format!("{message} {cause}"),
                    None => message,
                },
                retry_after,
            }
        }
        403 => Answer::Fatal(Fatal::Forbidden(message)),
        500 if message.contains(MULTIPLE_BUDGETS) => Answer::Fatal(Fatal::MultipleBudgets),
        409 | 500..=599 => Answer::Transient(format!("{} {}", status.code, message)),
        code => Answer::Fatal(Fatal::Rejected { code, message }),
    }
}

/// (current, desired) from "... needs 3 healthy pods and has 2 currently".
fn healthy_counts_in(message: &str) -> Option<(i32, i32)> {
    let rest = message.strip_prefix(BUDGET_CAUSE_PREFIX)?;
    let (_, rest) = rest.split_once(" needs ")?;
    let (desired, rest) = rest.split_once(" healthy pods and has ")?;
    let current = rest.strip_suffix(" currently")?;
    Some((current.trim().parse().ok()?, desired.trim().parse().ok()?))
}

/// The budget's name in a 429 cause message, if it is one.
fn budget_named_in(message: &str) -> Option<String> {
    let rest = message.strip_prefix(BUDGET_CAUSE_PREFIX)?;
    let name = rest.split_whitespace().next()?;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn api_error(
        code: u16,
        message: &str,
        details: Option<StatusDetails>,
    ) -> Result<(), kube::Error> {
        Err(kube::Error::Api(
            kube::core::Status {
                code,
                message: message.into(),
                details,
                ..kube::core::Status::failure(message, "")
            }
            .boxed(),
        ))
    }

    fn budget_429(cause: &str, retry_after: u32) -> Result<(), kube::Error> {
        api_error(
            429,
            "Cannot evict pod as it would violate the pod's disruption budget.",
            Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "DisruptionBudget".into(),
                    message: cause.into(),
                    field: String::new(),
                }],
                retry_after_seconds: retry_after,
                name: String::new(),
                group: "policy".into(),
                kind: "poddisruptionbudget".into(),
                uid: String::new(),
            }),
        )
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = RetryPolicy::DEFAULT;
        let delays: Vec<u64> = (1..=6).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
        assert_eq!(policy.delay(0), Duration::from_secs(1));
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(5));
        let fast = RetryPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_millis(250),
        };
        assert_eq!(fast.delay(3), Duration::from_millis(250));
    }

    #[test]
    fn a_budget_refusal_names_the_budget_and_keeps_the_cause() {
        let answer = classify(&budget_429(
            "The disruption budget web needs 3 healthy pods and has 3 currently",
            0,
        ));
        let Answer::Refused {
            pdb,
            healthy,
            message,
            retry_after,
        } = answer
        else {
            panic!("{answer:?}")
        };
        assert_eq!(pdb.as_deref(), Some("web"));
        assert_eq!(healthy, Some((3, 3)));
        assert!(message.contains("needs 3 healthy pods"), "{message}");
        assert_eq!(retry_after, None);
    }

    #[test]
    fn an_unobserved_budget_says_when_to_retry() {
        let answer = classify(&budget_429(
            "The disruption budget web is still being processed by the server.",
            10,
        ));
        assert!(matches!(
            answer,
            Answer::Refused { pdb: Some(ref p), retry_after: Some(d), healthy: None, .. }
                if p == "web" && d == Duration::from_secs(10)
        ));
    }

    #[test]
    fn multiple_budgets_and_forbidden_are_fatal() {
        let several = classify(&api_error(
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            None,
        ));
        assert_eq!(several, Answer::Fatal(Fatal::MultipleBudgets));
        let forbidden = classify(&api_error(403, "pdb disruptions allowed is negative", None));
        assert!(matches!(forbidden, Answer::Fatal(Fatal::Forbidden(m)) if m.contains("negative")));
        assert!(matches!(
            classify(&api_error(422, "invalid", None)),
            Answer::Fatal(Fatal::Rejected { code: 422, .. })
        ));
    }

    #[test]
    fn other_server_errors_and_conflicts_are_retried() {
        for code in [409, 500, 503, 504] {
            assert!(
                matches!(
                    classify(&api_error(code, "busy", None)),
                    Answer::Transient(_)
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn not_found_is_gone_and_success_is_accepted() {
        assert_eq!(
            classify(&api_error(404, "pods \"x\" not found", None)),
            Answer::Gone
        );
        let recreated = "Precondition failed: UID in precondition: a, UID in object meta: b";
        assert_eq!(classify(&api_error(409, recreated, None)), Answer::Gone);
        // kube-apiserver 1.36's eviction handler.
        let evicted = "Operation cannot be fulfilled on Pod \"db-0\": the UID in the precondition (a) \
                       does not match the UID in record (b). The object might have been deleted and \
                       then recreated";
        assert_eq!(classify(&api_error(409, evicted, None)), Answer::Gone);
        assert_eq!(classify(&Ok(())), Answer::Accepted);
    }
}
