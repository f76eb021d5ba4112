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
        ("authentication.k8s.io", "TokenReview") => token_review(&call, &review).await?,
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

/// TokenReview: who `spec.token` names, for `spec.audiences` (default: the API's), as
/// upstream's `TokenReview` REST: `status.authenticated`, `user` and `audiences`, or `error`.
async fn token_review(call: &Call, review: &Value) -> Result<Value, ApiError> {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let state = call.state.clone();
    let mut audiences: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = state.auth.service_accounts.api_audiences();
    }
    let outcome = super::objects::blocking(move || {
        Ok(crate::auth::authenticate_token(&state, &token, &audiences))
    })
    .await?;
    Ok(match outcome {
        Ok(authenticated) => json!({"status": {
            "authenticated": true,
            "user": user_info(&authenticated.user),
            "audiences": authenticated.audiences,
        }}),
        Err(error) if error.is_empty() => json!({"status": {"user": {}}}),
        Err(error) => json!({"status": {"user": {}, "error": error}}),
    })
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
