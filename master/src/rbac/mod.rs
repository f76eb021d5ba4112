//! Role-based access control (rbac.authorization.k8s.io/v1): the authorizer every request
//! from a person or a service account passes (nodes pass `api::node_auth` instead).
//!
//! (Being built: until then every authenticated request is allowed, as before RBAC.)

use serde_json::json;

use crate::api::error::ApiError;
use crate::auth::{RequestAttributes, UserInfo, MASTERS};

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Not allowed; `reason` (often empty) is appended to the 403 message.
    Deny {
        /// Why, when there is more to say than "cannot".
        reason: String,
    },
}

/// The RBAC authorizer.
#[derive(Default)]
pub struct Authorizer {}

impl Authorizer {
    /// Whether `user` may do what `request` asks. Members of `system:masters` may do anything
    /// without a look at roles.
    pub fn authorize(&self, user: &UserInfo, _request: &RequestAttributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow;
        }
        Decision::Allow
    }
}

/// The 403 upstream answers a refused request with: `pods is forbidden: User "alice" cannot
/// list resource "pods" in API group "" in the namespace "kube-system"`.
pub fn forbidden(user: &UserInfo, request: &RequestAttributes, reason: &str) -> ApiError {
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if !request.resource_request {
        return ApiError::forbidden(format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"{suffix}",
            user.name, request.verb, request.path
        ));
    }
    let mut resource = request.resource.clone();
    if !request.subresource.is_empty() {
        resource = format!("{resource}/{}", request.subresource);
    }
    let scope = if request.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", request.namespace)
    };
    let why = format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}{suffix}",
        user.name, request.verb, request.api_group
    );
    let qualified = if request.api_group.is_empty() {
        request.resource.clone()
    } else {
        format!("{}.{}", request.resource, request.api_group)
    };
    let message = if request.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} \"{}\" is forbidden: {why}", request.name)
    };
    let mut details = json!({"group": request.api_group, "kind": request.resource});
    if !request.name.is_empty() {
        details["name"] = json!(request.name);
    }
    ApiError {
        details: Some(details),
        ..ApiError::forbidden(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_upstream_writes_them() {
        let alice = UserInfo::new("alice", &[]);
        let query = Default::default();
        let list = RequestAttributes::of(
            &http::Method::GET,
            "/api/v1/namespaces/kube-system/pods",
            &query,
        );
        assert_eq!(
            forbidden(&alice, &list, "").message,
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" \
             in the namespace \"kube-system\""
        );
        let get = RequestAttributes::of(&http::Method::GET, "/apis/apps/v1/deployments", &query);
        assert_eq!(
            forbidden(&alice, &get, "").message,
            "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" \
             in API group \"apps\" at the cluster scope"
        );
        let named = RequestAttributes::of(
            &http::Method::DELETE,
            "/api/v1/namespaces/a/pods/web/status",
            &query,
        );
        let refused = forbidden(&alice, &named, "");
        assert_eq!(
            refused.message,
            "pods \"web\" is forbidden: User \"alice\" cannot delete resource \"pods/status\" in \
             API group \"\" in the namespace \"a\""
        );
        assert_eq!(refused.details.unwrap()["name"], "web");
        let path = RequestAttributes::of(&http::Method::GET, "/healthz/etcd", &query);
        assert_eq!(
            forbidden(&alice, &path, "").message,
            "forbidden: User \"alice\" cannot get path \"/healthz/etcd\""
        );
    }
}
