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
use crate::admission::{FieldError, FieldErrorKind};
use crate::auth::{RequestAttributes, UserInfo};

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
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            check_access_spec(resource.kind, &review, false)?;
            access_status(&call, &call.user, &review["spec"])
        }
        ("authorization.k8s.io", "SubjectAccessReview") => {
            check_access_spec(resource.kind, &review, true)?;
            access_status(&call, &subject_of(&review["spec"]), &review["spec"])
        }
        ("authorization.k8s.io", "LocalSubjectAccessReview") => {
            let review = local_review(&call, review.clone())?;
            check_access_spec(resource.kind, &review, true)?;
            let mut answered = access_status(&call, &subject_of(&review["spec"]), &review["spec"]);
            answered["metadata"] = review["metadata"].clone();
            answered
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            let namespace = review["spec"]["namespace"].as_str().unwrap_or_default();
            rules_status(&call, namespace)
        }
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

/// Upstream's validation of an access review's spec: one of resource or non-resource
/// attributes; for reviews about someone else, a user or a group; empty metadata.
fn check_access_spec(kind: &str, review: &Value, about_someone: bool) -> Result<(), ApiError> {
    let spec = &review["spec"];
    let (resource, non_resource) = (&spec["resourceAttributes"], &spec["nonResourceAttributes"]);
    let mut errors = Vec::new();
    if resource.is_object() && non_resource.is_object() {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.nonResourceAttributes",
            Some(non_resource.to_string()),
            "cannot be specified in combination with resourceAttributes",
        ));
    }
    if !resource.is_object() && !non_resource.is_object() {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.resourceAttributes",
            Some("null".into()),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let empty =
        |v: &Value| v.as_str().is_none_or(str::is_empty) && v.as_array().is_none_or(Vec::is_empty);
    if about_someone && empty(&spec["user"]) && empty(&spec["groups"]) {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.user",
            Some(spec["user"].as_str().unwrap_or_default().to_owned()),
            "at least one of user or group must be specified",
        ));
    }
    if kind == "LocalSubjectAccessReview" {
        let namespace = review["metadata"]["namespace"].as_str().unwrap_or_default();
        let asked = resource["namespace"].as_str().unwrap_or_default();
        if resource.is_object() && asked != namespace {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                "spec.resourceAttributes.namespace",
                Some(asked.to_owned()),
                "must match metadata.namespace",
            ));
        }
        if non_resource.is_object() {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                "spec.nonResourceAttributes",
                Some(non_resource.to_string()),
                "disallowed on this kind of request",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, "authorization.k8s.io", "", &errors))
    }
}

/// A LocalSubjectAccessReview takes the namespace of its path; one naming another is refused.
fn local_review(call: &Call, mut review: Value) -> Result<Value, ApiError> {
    let namespace = call.target.namespace.clone().unwrap_or_default();
    if namespace.is_empty() {
        return Err(ApiError::bad_request(format!(
            "namespace is required on this type: {namespace}"
        )));
    }
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    match review["metadata"]["namespace"].as_str().unwrap_or_default() {
        "" => review["metadata"]["namespace"] = json!(namespace),
        named if named != namespace => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {}
    }
    Ok(review)
}

/// The user a SubjectAccessReview asks about.
fn subject_of(spec: &Value) -> UserInfo {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().to_owned(),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        groups: strings(&spec["groups"]),
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, values)| (key.clone(), strings(values)))
            .collect(),
    }
}

/// The request an access review describes (upstream's `AuthorizationAttributesFrom`).
fn attributes_of(spec: &Value) -> RequestAttributes {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let resource = &spec["resourceAttributes"];
    if resource.is_object() {
        return RequestAttributes {
            verb: text(&resource["verb"]),
            resource_request: true,
            api_group: text(&resource["group"]),
            api_version: text(&resource["version"]),
            resource: text(&resource["resource"]),
            subresource: text(&resource["subresource"]),
            namespace: text(&resource["namespace"]),
            name: text(&resource["name"]),
            path: String::new(),
        };
    }
    let non_resource = &spec["nonResourceAttributes"];
    RequestAttributes {
        verb: text(&non_resource["verb"]),
        path: text(&non_resource["path"]),
        ..RequestAttributes::default()
    }
}

/// `status` of an access review: `allowed`, and the authorizer's `reason` when it gave one.
fn access_status(call: &Call, user: &UserInfo, spec: &Value) -> Value {
    let verdict = call.state.rbac.review(user, &attributes_of(spec));
    let mut status = json!({"allowed": verdict.allowed});
    if !verdict.reason.is_empty() {
        status["reason"] = json!(verdict.reason);
    }
    json!({"status": status})
}

/// `status` of a SelfSubjectRulesReview: the caller's rules in `namespace`.
fn rules_status(call: &Call, namespace: &str) -> Value {
    let (rules, errors) = call.state.rbac.rules_for(&call.user, namespace);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        if !rule.resources.is_empty() {
            let mut entry = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups,
                                   "resources": rule.resources});
            if !rule.resource_names.is_empty() {
                entry["resourceNames"] = json!(rule.resource_names);
            }
            resource_rules.push(entry);
        }
        if !rule.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(crate::rbac::aggregate(&errors));
    }
    json!({"status": status})
}
