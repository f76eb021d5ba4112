//! API errors and their `metav1.Status` bodies, with the reasons and codes clients act on.

use serde_json::{json, Map, Value};

use crate::admission::FieldError;
use crate::resources::Resource;
use crate::store::StoreError;

/// An error answered to a client as a `metav1.Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
    /// `details` of the Status, if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401, for requests without a valid bearer token.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 404 for a path that names no resource.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({what})"),
        )
    }

    /// 404 for a named object.
    pub fn not_found(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(resource)),
            )
        }
    }

    /// 409 when creating an object whose name is taken.
    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource)),
            )
        }
    }

    /// 409 for an update against a stale resourceVersion or a failed precondition.
    pub fn conflict(resource: &Resource, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {why}",
                    qualified(resource)
                ),
            )
        }
    }

    /// 409 for the usual optimistic-concurrency failure.
    pub fn stale(resource: &Resource, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with the field errors upstream would report.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let what = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let messages: Vec<String> = errors.iter().map(FieldError::message).collect();
        let joined = if messages.len() == 1 {
            messages[0].clone()
        } else {
            format!("[{}]", messages.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| {
                let mut cause = Map::new();
                cause.insert("reason".into(), json!(e.reason()));
                cause.insert("message".into(), json!(e.body()));
                if !e.field.is_empty() {
                    cause.insert("field".into(), json!(e.field));
                }
                Value::Object(cause)
            })
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{what} \"{name}\" is invalid: {joined}"),
            details: Some(details_of(name, group, kind, causes)),
        }
    }

    /// 403 for requests policy refuses (e.g. creating in a terminating namespace).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 403 about one object, as upstream's `NewForbidden`: `namespaces "default" is forbidden: why`.
    pub fn forbidden_object(resource: &Resource, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::forbidden(format!(
                "{} \"{name}\" is forbidden: {why}",
                qualified(resource)
            ))
        }
    }

    /// 410 for a watch or list continuation older than the retained history.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 for a body encoding the server cannot read.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 413 for bodies over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 500 for failures inside the server whose `message` we wrote ourselves and clients may
    /// read (a full service range), worded as upstream's `Internal error occurred: ...`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 500 for a failure whose text is not for clients (SQL, file paths): the whole cause is
    /// logged once with a correlation id, and the client gets `what` and that id.
    pub fn internal_logged(what: &str, cause: &dyn std::error::Error) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        tracing::error!(correlation_id = %id, error = %error_chain(cause), "{what}");
        Self::internal(format!("{what} (correlation id {id})"))
    }

    /// The `metav1.Status` body, its fields in upstream's order (`code` after `details`), empty
    /// ones left out.
    pub fn status(&self) -> Value {
        let mut status = Map::new();
        status.insert("kind".into(), json!("Status"));
        status.insert("apiVersion".into(), json!("v1"));
        status.insert("metadata".into(), json!({}));
        status.insert("status".into(), json!("Failure"));
        if !self.message.is_empty() {
            status.insert("message".into(), json!(self.message));
        }
        if !self.reason.is_empty() {
            status.insert("reason".into(), json!(self.reason));
        }
        if let Some(details) = &self.details {
            status.insert("details".into(), details.clone());
        }
        status.insert("code".into(), json!(self.code));
        Value::Object(status)
    }

    /// Maps a store error, naming the object the request was about.
    pub fn from_store(error: StoreError, resource: &Resource, name: &str) -> Self {
        match error {
            StoreError::NotFound { .. } => Self::not_found(resource, name),
            StoreError::AlreadyExists { .. } => Self::already_exists(resource, name),
            StoreError::Expired { requested, oldest } => {
                Self::gone(format!("too old resource version: {requested} ({oldest})"))
            }
            other => Self::internal_logged("the object store failed", &other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Expired { requested, oldest } => {
                Self::gone(format!("too old resource version: {requested} ({oldest})"))
            }
            StoreError::NotFound {
                resource,
                namespace,
                name,
            } => Self::new(
                404,
                "NotFound",
                format!("{resource} {namespace}/{name} not found"),
            ),
            other => Self::internal_logged("the object store failed", &other),
        }
    }
}

use protocol::error::error_chain;

/// `deployments.apps` or `pods`, as upstream names resources in messages.
pub fn qualified(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.plural.to_owned()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

fn details(resource: &Resource, name: &str) -> Value {
    details_of(name, resource.group, resource.plural, Vec::new())
}

/// `StatusDetails` without the fields upstream omits when empty (`group` of core kinds).
fn details_of(name: &str, group: &str, kind: &str, causes: Vec<Value>) -> Value {
    let mut details = Map::new();
    for (field, value) in [("name", name), ("group", group), ("kind", kind)] {
        if !value.is_empty() {
            details.insert(field.into(), json!(value));
        }
    }
    if !causes.is_empty() {
        details.insert("causes".into(), Value::Array(causes));
    }
    Value::Object(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_hide_sql_behind_a_correlation_id() {
        let sql = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some("no such table: objects_secret_sauce".into()),
        );
        let error = ApiError::from(StoreError::Sql {
            action: "insert",
            source: sql,
        });
        assert_eq!(error.code, 500);
        assert_eq!(error.reason, "InternalError");
        assert!(
            error.message.starts_with("Internal error occurred: "),
            "{}",
            error.message
        );
        assert!(!error.message.contains("secret_sauce"), "{}", error.message);
        assert!(!error.message.contains("database"), "{}", error.message);
        let id = error
            .message
            .split("(correlation id ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(')'))
            .expect("a correlation id");
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        let status = error.status();
        assert_eq!(status["message"], error.message);
    }

    #[test]
    fn status_fields_follow_upstreams_order_and_omit_empty_ones() {
        let error = ApiError::new(400, "BadRequest", "no");
        assert_eq!(
            error.status().to_string(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"no","reason":"BadRequest","code":400}"#
        );
    }

    #[test]
    fn invalid_causes_name_their_field_once() {
        let errors = [crate::admission::FieldError::new(
            crate::admission::FieldErrorKind::Invalid,
            "metadata.name",
            Some("a[b".to_owned()),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters",
        )];
        let status = ApiError::invalid("Namespace", "", "a[b", &errors).status();
        assert_eq!(
            status["message"],
            "Namespace \"a[b\" is invalid: metadata.name: Invalid value: \"a[b\": a lowercase \
             RFC 1123 label must consist of lower case alphanumeric characters"
        );
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "Invalid value: \"a[b\": a lowercase RFC 1123 label must consist of lower case \
             alphanumeric characters"
        );
    }
}
