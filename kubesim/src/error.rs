//! Kubernetes API errors, answered as real `meta/v1` `Status` objects.
//!
//! Wording follows k8s.io/apimachinery/pkg/api/errors so that clients which match on reason,
//! code or message (kubectl prints the message verbatim) behave as against a real API server.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// One failure reason in `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: Option<String>,
}

/// A `Status` with `status: Failure`; the HTTP status code is `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    /// Empty for statuses the real server sends without a reason (e.g. the 500 for several PDBs).
    pub reason: &'static str,
    pub message: String,
    /// Boxed: errors travel in every `Result` of the request path and should stay small.
    details: Box<Details>,
}

/// `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Details {
    name: Option<String>,
    group: Option<String>,
    kind: Option<String>,
    causes: Vec<Cause>,
    retry_after_seconds: Option<u32>,
}

/// The identity of the object an error is about: plural resource, API group, name.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub plural: &'a str,
    pub group: &'a str,
    pub name: &'a str,
}

impl ObjectRef<'_> {
    /// `pods` for the core group, `deployments.apps` otherwise, as the API server qualifies them.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, obj: ObjectRef<'_>) -> Self {
        self.details.name = Some(obj.name.to_owned());
        self.details.group = Some(obj.group.to_owned());
        self.details.kind = Some(obj.plural.to_owned());
        self
    }

    pub fn causes(&self) -> &[Cause] {
        &self.details.causes
    }

    pub fn retry_after_seconds(&self) -> Option<u32> {
        self.details.retry_after_seconds
    }

    pub fn not_found(obj: ObjectRef<'_>) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", obj.qualified(), obj.name),
        )
        .about(obj)
    }

    pub fn already_exists(obj: ObjectRef<'_>) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", obj.qualified(), obj.name),
        )
        .about(obj)
    }

    /// Optimistic-concurrency failure (stale resourceVersion or failed precondition).
    pub fn conflict(obj: ObjectRef<'_>, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {why}",
                obj.qualified(),
                obj.name
            ),
        )
        .about(obj)
    }

    /// 422 Invalid: `Kind "name" is invalid: field: message`.
    pub fn invalid(kind: &str, obj: ObjectRef<'_>, causes: Vec<Cause>) -> Self {
        let detail = causes
            .iter()
            .map(|c| match &c.field {
                Some(f) => format!("{f}: {}", c.message),
                None => c.message.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{}\" is invalid: {detail}", obj.name),
        )
        .about(obj);
        err.details.kind = Some(kind.to_owned());
        err.details.causes = causes;
        err
    }

    /// 422 for a patch that cannot be applied (a failed `test` op, a missing path).
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 404 for a path the server does not serve at all.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let mut err = Self::new(429, "TooManyRequests", message);
        err.details.retry_after_seconds = (retry_after_seconds > 0).then_some(retry_after_seconds);
        err
    }

    pub fn forbidden(obj: ObjectRef<'_>, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("{} \"{}\" is forbidden: {why}", obj.qualified(), obj.name),
        )
        .about(obj)
    }

    /// 410 Gone, reason Expired: the requested resourceVersion was compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// A 500 without a reason, as the eviction REST handler answers for several matching PDBs.
    pub fn plain_failure(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, "", message)
    }

    pub fn with_cause(mut self, reason: &str, message: impl Into<String>) -> Self {
        self.details.causes.push(Cause {
            reason: reason.to_owned(),
            message: message.into(),
            field: None,
        });
        self
    }

    /// The `Status` object as JSON.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        if !self.reason.is_empty() {
            status["reason"] = json!(self.reason);
        }
        let mut details = serde_json::Map::new();
        let d = &self.details;
        if let Some(name) = &d.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = d.group.as_ref().filter(|g| !g.is_empty()) {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &d.kind {
            details.insert("kind".into(), json!(kind));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| {
                    let mut v = json!({ "reason": c.reason, "message": c.message });
                    if let Some(f) = &c.field {
                        v["field"] = json!(f);
                    }
                    v
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(secs) = d.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(secs));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = crate::api::json_response(code, &self.to_status());
        if let Some(secs) = self.details.retry_after_seconds {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_api_server_wording() {
        let err = ApiError::not_found(ObjectRef {
            plural: "pods",
            group: "",
            name: "web-1",
        });
        let status = err.to_status();
        assert_eq!(status["message"], "pods \"web-1\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "pods");
        assert!(status["details"].get("group").is_none());
    }

    #[test]
    fn grouped_resources_are_qualified() {
        let err = ApiError::not_found(ObjectRef {
            plural: "daemonsets",
            group: "apps",
            name: "x",
        });
        assert_eq!(err.message, "daemonsets.apps \"x\" not found");
    }

    #[test]
    fn retry_after_only_when_positive() {
        assert_eq!(
            ApiError::too_many_requests("m", 0).to_status()["details"],
            Value::Null
        );
        assert_eq!(
            ApiError::too_many_requests("m", 10).to_status()["details"]["retryAfterSeconds"],
            10
        );
    }
}
