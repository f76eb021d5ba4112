//! Reviews: request objects answered at once and never stored, as upstream's
//! `authorization.k8s.io` and `authentication.k8s.io` groups.
//!
//! ```text
//!   SelfSubjectReview            who am I (kubectl auth whoami)
//!   TokenReview                  who does this token name (components that delegate)
//!   SelfSubjectAccessReview      may I ... (kubectl auth can-i)
//!   LocalSubjectAccessReview     may this user ... in this namespace
//!   SubjectAccessReview          may this user ...
//!   SelfSubjectRulesReview       what may I do in this namespace (kubectl auth can-i --list)
//! ```

use http::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::Call;
use super::{codec, respond_value, Body};
use crate::auth::UserInfo;

/// Answers a POST of a review object.
pub async fn create(call: Call) -> Result<Response<Body>, ApiError> {
    let resource = call.target.resource;
    if call.target.name.is_some() {
        return Err(ApiError::method_not_allowed("POST on an object"));
    }
    let review = codec::decode_object(call.content_type.as_deref(), &call.body, resource.kind)?;
    let answered = match (resource.group, resource.kind) {
        ("authentication.k8s.io", "SelfSubjectReview") => json!({
            "status": {"userInfo": user_info(&call.user)},
        }),
        _ => return Err(ApiError::no_route(resource.plural)),
    };
    let mut answer = json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind,
        "metadata": review.get("metadata").cloned().unwrap_or_else(|| json!({})),
    });
    if answer["metadata"]["creationTimestamp"].is_null() {
        answer["metadata"]["creationTimestamp"] = Value::Null;
    }
    if let (Some(answer), Some(answered)) = (answer.as_object_mut(), answered.as_object()) {
        for (field, value) in answered {
            answer.insert(field.clone(), value.clone());
        }
    }
    if let Some(spec) = review.get("spec") {
        answer
            .as_object_mut()
            .expect("an object")
            .entry("spec")
            .or_insert_with(|| spec.clone());
    }
    Ok(respond_value(201, &answer, call.plain_format()))
}

/// A user as the `userInfo` of reviews spells it (empty fields omitted).
pub fn user_info(user: &UserInfo) -> Value {
    let mut info = json!({"username": user.name});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.groups.is_empty() {
        info["groups"] = json!(user.groups);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}
