//! Impersonation: `Impersonate-User`, `Impersonate-Group` (repeated), `Impersonate-Uid` and
//! `Impersonate-Extra-<key>` headers (`kubectl --as`, `--as-group`, `--as-uid`), as upstream's
//! `WithImpersonation` filter.
//!
//! Each thing asked for is authorized for the requesting user with verb `impersonate`:
//!
//! ```text
//!   Impersonate-User: alice                        users "alice"          (group "")
//!   Impersonate-User: system:serviceaccount:ns:sa  serviceaccounts "sa"   in namespace ns
//!   Impersonate-Group: dev                         groups "dev"
//!   Impersonate-Uid: 1234                          uids "1234"            (authentication.k8s.io)
//!   Impersonate-Extra-Scopes: view                 userextras/scopes "view" (authentication.k8s.io)
//! ```
//!
//! The request then acts as the impersonated user alone (nothing of the requester carries
//! over); it is in `system:authenticated` unless the groups asked for name it or
//! `system:unauthenticated`, and a service account without groups asked for gets its own.

use std::collections::BTreeMap;

use http::Request;

use super::service_account::{groups_of_namespace, split_user_name};
use super::{RequestAttributes, UserInfo, AUTHENTICATED};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::rbac::Decision;

const USER_HEADER: &str = "impersonate-user";
const GROUP_HEADER: &str = "impersonate-group";
const UID_HEADER: &str = "impersonate-uid";
const EXTRA_HEADER_PREFIX: &str = "impersonate-extra-";
const UNAUTHENTICATED: &str = "system:unauthenticated";

/// One thing a request asks to impersonate, and what authorizing it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    User(String),
    ServiceAccount { namespace: String, name: String },
    Group(String),
    Extra { key: String, value: String },
    Uid(String),
}

impl Asked {
    /// The attributes upstream authorizes for this request (verb `impersonate`).
    fn attributes(&self) -> RequestAttributes {
        let (api_group, resource, subresource, namespace, name) = match self {
            Asked::User(name) => ("", "users", "", "", name.as_str()),
            Asked::ServiceAccount { namespace, name } => {
                ("", "serviceaccounts", "", namespace.as_str(), name.as_str())
            }
            Asked::Group(name) => ("", "groups", "", "", name.as_str()),
            Asked::Extra { key, value } => (
                "authentication.k8s.io",
                "userextras",
                key.as_str(),
                "",
                value.as_str(),
            ),
            Asked::Uid(uid) => ("authentication.k8s.io", "uids", "", "", uid.as_str()),
        };
        RequestAttributes {
            verb: "impersonate".into(),
            resource_request: true,
            api_group: api_group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..RequestAttributes::default()
        }
    }

    /// How upstream prints it in the "without impersonating a user" error.
    fn describe(&self) -> String {
        match self {
            Asked::User(name) => format!("User {name}"),
            Asked::ServiceAccount { namespace, name } => {
                format!("ServiceAccount {namespace}/{name}")
            }
            Asked::Group(name) => format!("Group {name}"),
            Asked::Extra { key, value } => format!("UserExtra {key}={value}"),
            Asked::Uid(uid) => format!("UID {uid}"),
        }
    }
}

/// What the headers of `request` ask to impersonate, in upstream's order (user, groups,
/// extras, uid); an error when they ask for groups, extras or a uid without a user.
fn asked<B>(request: &Request<B>) -> Result<Vec<Asked>, ApiError> {
    let headers = request.headers();
    let text = |value: &http::HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let mut asked = Vec::new();
    let user = headers
        .get(USER_HEADER)
        .map(text)
        .filter(|user| !user.is_empty());
    if let Some(user) = &user {
        asked.push(match split_user_name(user) {
            Some((namespace, name)) => Asked::ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            },
            None => Asked::User(user.clone()),
        });
    }
    for group in headers.get_all(GROUP_HEADER) {
        asked.push(Asked::Group(text(group)));
    }
    let mut extra_headers: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|name| name.starts_with(EXTRA_HEADER_PREFIX))
        .collect();
    extra_headers.sort_unstable();
    for name in extra_headers {
        // Keys are case-insensitive and percent-encoded in header names (e.g. `%2F` for `/`).
        let key = protocol::query::decode_segment(&name[EXTRA_HEADER_PREFIX.len()..]);
        for value in headers.get_all(name) {
            asked.push(Asked::Extra {
                key: key.to_ascii_lowercase(),
                value: text(value),
            });
        }
    }
    if let Some(uid) = headers.get(UID_HEADER).map(text).filter(|u| !u.is_empty()) {
        asked.push(Asked::Uid(uid));
    }
    if user.is_none() && !asked.is_empty() {
        let described: Vec<String> = asked.iter().map(Asked::describe).collect();
        return Err(ApiError::internal(format!(
            "requested [{}] without impersonating a user",
            described.join(" ")
        )));
    }
    Ok(asked)
}

/// The user a request acts as: `user` itself, or whom its headers impersonate once each part
/// is authorized for `user` (403 as upstream otherwise).
pub fn apply<B>(
    state: &ApiState,
    request: &Request<B>,
    user: UserInfo,
) -> Result<UserInfo, ApiError> {
    let asked = asked(request)?;
    if asked.is_empty() {
        return Ok(user);
    }
    let groups_asked = asked.iter().any(|a| matches!(a, Asked::Group(_)));
    let mut impersonated = UserInfo::default();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for wanted in &asked {
        let attributes = wanted.attributes();
        if let Decision::Deny { reason } = state.rbac.authorize(&user, &attributes) {
            return Err(crate::rbac::forbidden(&user, &attributes, &reason));
        }
        match wanted {
            Asked::User(name) => impersonated.name = name.clone(),
            Asked::ServiceAccount { namespace, name } => {
                impersonated.name = format!("{}{namespace}:{name}", super::SERVICE_ACCOUNT_PREFIX);
                if !groups_asked {
                    impersonated.groups = groups_of_namespace(namespace);
                }
            }
            Asked::Group(group) => impersonated.groups.push(group.clone()),
            Asked::Extra { key, value } => {
                extra.entry(key.clone()).or_default().push(value.clone())
            }
            Asked::Uid(uid) => impersonated.uid = uid.clone(),
        }
    }
    let marked = impersonated
        .groups
        .iter()
        .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED);
    if !marked {
        impersonated.groups.push(AUTHENTICATED.to_owned());
    }
    impersonated.extra = extra;
    Ok(impersonated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MASTERS;
    use crate::controllers::testing::TestCluster;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/api/v1/pods");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn headers_become_the_impersonated_user() {
        let cluster = TestCluster::new();
        let admin = UserInfo::new("admin", &[MASTERS]);
        let plain = apply(cluster.api(), &request(&[]), admin.clone()).unwrap();
        assert_eq!(plain, admin);
        let bob = apply(
            cluster.api(),
            &request(&[
                ("Impersonate-User", "bob"),
                ("Impersonate-Group", "dev"),
                ("Impersonate-Group", "ops"),
                ("Impersonate-Uid", "u-1"),
                ("Impersonate-Extra-Scopes", "view"),
                ("Impersonate-Extra-Scopes", "edit"),
                ("Impersonate-Extra-Example.com%2Fteam", "a"),
            ]),
            admin.clone(),
        )
        .unwrap();
        assert_eq!(bob.name, "bob");
        assert_eq!(bob.uid, "u-1");
        assert_eq!(bob.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(bob.extra["scopes"], ["view", "edit"]);
        assert_eq!(bob.extra["example.com/team"], ["a"]);
        let account = apply(
            cluster.api(),
            &request(&[("Impersonate-User", "system:serviceaccount:ci:builder")]),
            admin.clone(),
        )
        .unwrap();
        assert_eq!(
            account.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ci",
                "system:authenticated"
            ]
        );
        let anonymous_group = apply(
            cluster.api(),
            &request(&[
                ("Impersonate-User", "carol"),
                ("Impersonate-Group", "system:unauthenticated"),
            ]),
            admin.clone(),
        )
        .unwrap();
        assert_eq!(anonymous_group.groups, ["system:unauthenticated"]);
        let headless = apply(
            cluster.api(),
            &request(&[("Impersonate-Group", "dev")]),
            admin,
        )
        .unwrap_err();
        assert_eq!(headless.code, 500);
        assert_eq!(
            headless.message,
            "Internal error occurred: requested [Group dev] without impersonating a user"
        );
    }

    #[test]
    fn each_part_is_authorized_as_upstream_names_it() {
        let attributes = Asked::ServiceAccount {
            namespace: "ci".into(),
            name: "builder".into(),
        }
        .attributes();
        assert_eq!(
            (
                attributes.verb.as_str(),
                attributes.resource.as_str(),
                attributes.namespace.as_str(),
                attributes.name.as_str()
            ),
            ("impersonate", "serviceaccounts", "ci", "builder")
        );
        let alice = UserInfo::new("alice", &[]);
        let denied = crate::rbac::forbidden(&alice, &Asked::User("bob".into()).attributes(), "");
        assert_eq!(
            denied.message,
            "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let extra = Asked::Extra {
            key: "scopes".into(),
            value: "view".into(),
        }
        .attributes();
        assert_eq!(
            (
                extra.api_group.as_str(),
                extra.resource.as_str(),
                extra.subresource.as_str(),
                extra.name.as_str()
            ),
            ("authentication.k8s.io", "userextras", "scopes", "view")
        );
    }
}
