//! TokenRequest: `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` issues a
//! service-account token (`kubectl create token`), as upstream's `TokenREST`.
//!
//! Defaults and checks as upstream: `expirationSeconds` 3600, at least 600 and at most 2^32;
//! audiences default to the API audience; a `boundObjectRef` names a Pod (which must run as
//! this service account; its node goes into the token too), a Secret or a Node of the cluster,
//! and its uid, when given, must be the object's.

use k8s_openapi::api::authentication::v1 as authentication;
use serde_json::{json, Value};

use super::service_account::{unix_now, Grant, ObjectRef};
use crate::admission::{FieldError, FieldErrorKind};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::resources;

/// Default token lifetime (upstream's v1 defaulting).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Shortest lifetime a client may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest lifetime a client may ask for.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Issues a token for service account `namespace/name` as `request` (a TokenRequest) asks,
/// and answers with the TokenRequest, its spec defaulted and its status holding the token.
pub fn create(
    state: &ApiState,
    namespace: &str,
    name: &str,
    request: Value,
) -> Result<Value, ApiError> {
    let token_request: authentication::TokenRequest =
        serde_json::from_value(request).map_err(|error| {
            ApiError::bad_request(format!(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {error}"
            ))
        })?;
    let mut spec = token_request.spec.unwrap_or_default();
    let expiration = spec
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let invalid = |field: &str, value: String, detail: &str| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            &[FieldError {
                kind: FieldErrorKind::Invalid,
                field: field.into(),
                value: Some(value),
                detail: detail.into(),
            }],
        )
    };
    let metadata = &token_request.metadata;
    if let Some(given) = metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty() && *n != name)
    {
        return Err(invalid(
            "metadata.name",
            format!("\"{given}\""),
            "must match the service account name if specified",
        ));
    }
    if let Some(given) = metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty() && *n != namespace)
    {
        return Err(invalid(
            "metadata.namespace",
            format!("\"{given}\""),
            "must match the service account namespace if specified",
        ));
    }
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let get = |kind: &str, namespace: &str, object: &str| -> Result<Value, ApiError> {
        let resource = resources::by_kind("", kind)
            .ok_or_else(|| ApiError::internal(format!("no resource for {kind}")))?;
        state
            .store
            .get(&resource.storage_key(), namespace, object)
            .map_err(|error| ApiError::from_store(error, resource, object))?
            .ok_or_else(|| ApiError::not_found(resource, object))
    };
    let reference = |object: &Value| ObjectRef {
        name: crate::api::objects::meta_str(object, "name"),
        uid: crate::api::objects::meta_str(object, "uid"),
    };
    let service_account = get("ServiceAccount", namespace, name)?;
    let mut grant = Grant {
        namespace: namespace.to_owned(),
        service_account: reference(&service_account),
        expiration_seconds: expiration,
        ..Grant::default()
    };
    if let Some(bound) = &spec.bound_object_ref {
        let api_version = bound.api_version.as_deref().unwrap_or_default();
        let kind = bound.kind.as_deref().unwrap_or_default();
        let object_name = bound.name.as_deref().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let object = match (group, kind) {
            ("", "Pod") => {
                let pod = get("Pod", namespace, object_name)?;
                let runs_as = pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                if runs_as != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                    )));
                }
                let node_name = pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !node_name.is_empty() {
                    // A node that cannot be read still goes in by name, as upstream.
                    grant.node = Some(match get("Node", "", node_name) {
                        Ok(node) => reference(&node),
                        Err(_) => ObjectRef {
                            name: node_name.to_owned(),
                            uid: String::new(),
                        },
                    });
                }
                let pod = reference(&pod);
                grant.pod = Some(pod.clone());
                pod
            }
            ("", "Secret") => {
                let secret = reference(&get("Secret", namespace, object_name)?);
                grant.secret = Some(secret.clone());
                secret
            }
            ("", "Node") => {
                let node = reference(&get("Node", "", object_name)?);
                grant.node = Some(node.clone());
                node
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {group}/{version}, Kind={kind}"
                )));
            }
        };
        if let Some(uid) = bound.uid.as_deref().filter(|u| !u.is_empty()) {
            if uid != object.uid {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {kind} \"{object_name}\": the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
        }
    }
    let issuer = &state.auth.service_accounts;
    let audiences = spec.audiences.take().unwrap_or_default();
    grant.audiences = if audiences.is_empty() {
        issuer.api_audiences()
    } else {
        audiences
    };
    spec.audiences = Some(grant.audiences.clone());
    spec.expiration_seconds = Some(expiration);
    let now = unix_now();
    let token = issuer
        .sign(&grant, now)
        .map_err(|_| ApiError::internal("failed to generate token: signing failed"))?;
    let expires = jiff::Timestamp::from_second(now + expiration)
        .map_err(|_| ApiError::internal("failed to generate token: expiry out of range"))?;
    let mut metadata = serde_json::to_value(&token_request.metadata).unwrap_or_else(|_| json!({}));
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(namespace);
    if metadata.get("creationTimestamp").is_none() {
        metadata["creationTimestamp"] = Value::Null;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "token": token,
            "expirationTimestamp": expires.to_string(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{bare_pod, TestCluster};

    fn request(spec: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    }

    #[test]
    fn tokens_are_issued_with_upstream_defaults_and_checks() {
        let cluster = TestCluster::new();
        let state = cluster.api();
        let answer = create(state, "default", "default", request(json!({}))).unwrap();
        assert_eq!(answer["spec"]["expirationSeconds"], 3600);
        assert_eq!(
            answer["spec"]["audiences"],
            json!(["https://kubernetes.default.svc.cluster.local"])
        );
        assert_eq!(answer["metadata"]["name"], "default");
        let token = answer["status"]["token"].as_str().unwrap();
        let user = state
            .auth
            .service_accounts
            .authenticate(&state.store, token)
            .unwrap();
        assert_eq!(user.name, "system:serviceaccount:default:default");
        let expires: jiff::Timestamp = answer["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((expires.as_second() - unix_now() - 3600).abs() < 5);

        let short = create(
            state,
            "default",
            "default",
            request(json!({"expirationSeconds": 60})),
        )
        .unwrap_err();
        assert_eq!(short.code, 422);
        assert_eq!(
            short.message,
            "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
        );
        let missing = create(state, "default", "ghost", request(json!({}))).unwrap_err();
        assert_eq!(
            (missing.code, missing.message.as_str()),
            (404, "serviceaccounts \"ghost\" not found")
        );

        let pod = cluster.create("core/pods", bare_pod("web", json!({})));
        let bound = |uid: &str| {
            request(
                json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web",
                "uid": uid}}),
            )
        };
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let answer = create(state, "default", "default", bound(uid)).unwrap();
        let user = state
            .auth
            .service_accounts
            .authenticate(&state.store, answer["status"]["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(user.extra["authentication.kubernetes.io/pod-name"], ["web"]);
        let conflict = create(state, "default", "default", bound("other")).unwrap_err();
        assert_eq!(conflict.code, 409, "{}", conflict.message);
        let wrong_kind = create(
            state,
            "default",
            "default",
            request(
                json!({"boundObjectRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "web"}}),
            ),
        )
        .unwrap_err();
        assert_eq!(
            wrong_kind.message,
            "cannot bind token to object of type apps/v1, Kind=Deployment"
        );
        let audiences = create(
            state,
            "default",
            "default",
            request(json!({"audiences": ["vault"]})),
        )
        .unwrap();
        assert!(state
            .auth
            .service_accounts
            .authenticate(&state.store, audiences["status"]["token"].as_str().unwrap())
            .is_none());
    }
}
