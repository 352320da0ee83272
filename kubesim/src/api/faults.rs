//! Fault injection for tests: added latency on every Kubernetes API request, and a period
//! during which they all fail with HTTP 500. The `/sim/v1` surface is never affected.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Shared;
use crate::error::ApiError;

/// Faults to inject, as set through `/sim/v1/faults` or `Running::inject_faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added to every API request.
    #[serde(default)]
    pub latency_ms: u64,
    /// Every API request fails with 500 for this many wall seconds from now.
    #[serde(default)]
    pub errors_for_seconds: f64,
}

#[derive(Debug, Default)]
pub(crate) struct FaultState(Mutex<Active>);

#[derive(Debug, Default, Clone, Copy)]
struct Active {
    latency: Duration,
    errors_until: Option<Instant>,
}

impl FaultState {
    pub(crate) fn set(&self, faults: &Faults) {
        let errors_until = (faults.errors_for_seconds > 0.0
            && faults.errors_for_seconds.is_finite())
        .then(|| Instant::now() + Duration::from_secs_f64(faults.errors_for_seconds));
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Active {
            latency: Duration::from_millis(faults.latency_ms),
            errors_until,
        };
    }

    /// What is in force now.
    pub(crate) fn current(&self) -> Faults {
        let active = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let remaining = active.errors_until.map_or(0.0, |t| {
            t.saturating_duration_since(Instant::now()).as_secs_f64()
        });
        Faults {
            latency_ms: active.latency.as_millis() as u64,
            errors_for_seconds: remaining,
        }
    }

    fn snapshot(&self) -> Active {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) async fn inject(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let active = shared.faults.snapshot();
    if !active.latency.is_zero() {
        tokio::time::sleep(active.latency).await;
    }
    if active
        .errors_until
        .is_some_and(|until| Instant::now() < until)
    {
        return ApiError::internal("injected fault: the simulated API server is failing requests")
            .into_response();
    }
    next.run(request).await
}
