//! Who is asking (authentication) and what they ask to do (request attributes).
//!
//! Every request that is not public is authenticated to a [`UserInfo`] by, in order:
//!
//! ```text
//!   Authorization: Bearer <token>
//!     the admin token (DIR/admin.token)        → user "admin", group system:masters
//!     a node's token (DIR/node-tokens)         → system:node:<name>, group system:nodes
//!     a service-account JWT (service_account)  → system:serviceaccount:<ns>:<name>
//!   a client certificate from the cluster CA   → CN = user, O = groups (client_cert)
//! ```
//!
//! then `Impersonate-*` headers may swap the user for another (impersonation), and the
//! request's path and verb become [`RequestAttributes`], which the node authorizer
//! (`api::node_auth`, for nodes) or RBAC (`rbac`, for everyone else) allows or refuses.
//! TokenReview asks the same token authenticators, for the audiences it names
//! ([`authenticate_token`]); TokenRequest (`token_request`) issues service-account tokens.

pub mod client_cert;
pub mod impersonation;
pub mod revocation;
pub mod service_account;
pub mod token_request;

use std::collections::{BTreeMap, HashMap};

use http::{header, Method, Request};

use crate::api::error::ApiError;
use crate::api::node_auth;

/// Group of the cluster's administrators: allowed everything without consulting RBAC.
pub const MASTERS: &str = "system:masters";
/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group of nodes.
pub const NODES: &str = "system:nodes";
/// Group of all service accounts.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// Prefix of service-account user names: `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated identity, as upstream's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name (`alice`, `system:node:pi-1`, `system:serviceaccount:ns:sa`).
    pub name: String,
    /// A unique id, when the authenticator knows one (service accounts: the account's uid).
    pub uid: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// Extra attributes (a service-account token's pod name and uid, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups` plus `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        UserInfo {
            name: name.into(),
            groups,
            ..UserInfo::default()
        }
    }

    /// The master itself (controllers, bootstrap): a member of `system:masters`.
    pub fn master() -> UserInfo {
        UserInfo::new("system:apiserver", &[MASTERS])
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node name of a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node(&self) -> Option<&str> {
        self.name
            .strip_prefix(node_auth::NODE_USER_PREFIX)
            .filter(|_| self.in_group(NODES))
    }
}

/// Credentials the master accepts besides node tokens.
pub struct AuthState {
    /// Static bearer tokens (the admin token) and the user each stands for.
    pub tokens: HashMap<String, UserInfo>,
    /// Client certificates signed by the cluster CA.
    pub client_certs: client_cert::ClientCertificates,
    /// The service-account token issuer (signs and verifies JWTs).
    pub service_accounts: service_account::Issuer,
}

impl AuthState {
    /// The credentials of the master whose data directory is `data_dir`: the admin token (when
    /// given), the CA's client certificates and the service-account issuer.
    pub fn load(
        data_dir: &std::path::Path,
        ca_pem: &str,
        admin_token: Option<&str>,
    ) -> Result<AuthState, crate::pki::PkiError> {
        let mut tokens = HashMap::new();
        if let Some(token) = admin_token {
            tokens.insert(token.to_owned(), UserInfo::new("admin", &[MASTERS]));
        }
        Ok(AuthState {
            tokens,
            client_certs: client_cert::ClientCertificates::new(ca_pem),
            service_accounts: service_account::Issuer::load(data_dir)?,
        })
    }
}

/// Authenticates a request: its bearer token, else the connection's client certificate
/// (`peer`, verified at the handshake, unless revoked since). 401 when neither names a user.
pub fn authenticate<B>(
    state: &crate::api::ApiState,
    request: &Request<B>,
    peer: Option<&client_cert::ClientIdentity>,
) -> Result<UserInfo, ApiError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return peer
            .filter(|peer| !revocation::is_revoked(&state.store, &peer.serial))
            .map(|peer| peer.user.clone())
            .ok_or_else(ApiError::unauthorized);
    };
    let token = bearer_token(header).ok_or_else(ApiError::unauthorized)?;
    let audiences = state.auth.service_accounts.api_audiences();
    authenticate_token(state, token, &audiences)
        .map(|authenticated| authenticated.user)
        .map_err(|_| ApiError::unauthorized())
}

/// Who a bearer token names, for `audiences` (upstream's token authenticator union, as the
/// API server and TokenReview use it). Static and node tokens are not audience-aware: they
/// hold for the API's own audiences only. The error is what TokenReview reports (empty when
/// no authenticator knows the token).
pub fn authenticate_token(
    state: &crate::api::ApiState,
    token: &str,
    audiences: &[String],
) -> Result<service_account::Authenticated, String> {
    let service_accounts = &state.auth.service_accounts;
    let api_audiences = service_accounts.api_audiences();
    let implicit: Vec<String> = audiences
        .iter()
        .filter(|a| api_audiences.contains(a))
        .cloned()
        .collect();
    // Compare against every token without stopping early, so timing does not reveal prefixes.
    let mut user = None;
    for (known, name) in &state.auth.tokens {
        if constant_time_eq(known.as_bytes(), token.as_bytes()) {
            user = Some(name.clone());
        }
    }
    if user.is_none() {
        user = state
            .nodes
            .node_of(token)
            .map(|node| UserInfo::new(format!("{}{node}", node_auth::NODE_USER_PREFIX), &[NODES]));
    }
    if let Some(user) = user {
        if implicit.is_empty() {
            return Err(String::new());
        }
        return Ok(service_account::Authenticated {
            user,
            audiences: implicit,
        });
    }
    let now = service_account::unix_now();
    match service_accounts.review(&state.store, token, audiences, now) {
        Ok(authenticated) => Ok(authenticated),
        Err(service_account::Rejection::NotOurs) => Err(String::new()),
        Err(service_account::Rejection::Invalid(message)) => Err(message),
    }
}

/// The token of an `Authorization: Bearer <token>` header. Like upstream, the scheme is
/// case-insensitive and the token is the first word after it.
pub fn bearer_token(header: &str) -> Option<&str> {
    let mut words = header.split_whitespace();
    let scheme = words.next()?;
    let token = words.next()?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Byte comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// What a request asks to do, as upstream's `RequestInfo`: the input of every authorizer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for
    /// paths that name no resource, the lower-cased HTTP method.
    pub verb: String,
    /// Whether the path names an API resource (else a non-resource URL such as `/apis`).
    pub resource_request: bool,
    /// The request path (what non-resource rules match).
    pub path: String,
    /// API group (empty for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `status`, `log`.
    pub subresource: String,
    /// Namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// Object name, empty for collections (or the `metadata.name` of a field selector).
    pub name: String,
}

/// Subresources of a namespace (`namespaces/{ns}/status`), not resources inside it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

impl RequestAttributes {
    /// The attributes of `method` on `path` with `query`, as upstream's `RequestInfoFactory`.
    pub fn of(method: &Method, path: &str, query: &HashMap<String, String>) -> RequestAttributes {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let non_resource = || RequestAttributes {
            verb: method.as_str().to_ascii_lowercase(),
            resource_request: false,
            path: path.to_owned(),
            ..RequestAttributes::default()
        };
        let (api_group, api_version, mut rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return non_resource(),
        };
        if rest.is_empty() {
            return non_resource();
        }
        let mut attributes = RequestAttributes {
            resource_request: true,
            path: path.to_owned(),
            api_group: api_group.to_owned(),
            api_version: api_version.to_owned(),
            ..RequestAttributes::default()
        };
        let mut legacy_watch = false;
        if rest[0] == "watch" {
            legacy_watch = true;
            rest = &rest[1..];
        }
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            attributes.namespace = rest[1].to_owned();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        attributes.resource = rest.first().map(|s| (*s).to_owned()).unwrap_or_default();
        attributes.name = rest.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
        attributes.subresource = rest.get(2).map(|s| (*s).to_owned()).unwrap_or_default();
        let watch_param = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let collection = attributes.name.is_empty();
        attributes.verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if collection => "deletecollection",
            Method::DELETE => "delete",
            Method::GET | Method::HEAD if legacy_watch => "watch",
            Method::GET | Method::HEAD if collection && watch_param => "watch",
            Method::GET | Method::HEAD if collection => "list",
            Method::GET | Method::HEAD => "get",
            _ => "",
        }
        .to_owned();
        if attributes.verb.is_empty() {
            attributes.verb = method.as_str().to_ascii_lowercase();
        }
        // A list or watch of one object by field selector names it, as upstream does.
        if matches!(
            attributes.verb.as_str(),
            "list" | "watch" | "deletecollection"
        ) && collection
        {
            if let Some(selector) = query.get("fieldSelector") {
                if let Some(name) = selector
                    .split(',')
                    .find_map(|term| term.trim().strip_prefix("metadata.name="))
                {
                    attributes.name = name.trim().to_owned();
                }
            }
        }
        attributes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(method: Method, path: &str, query: &str) -> RequestAttributes {
        RequestAttributes::of(&method, path, &protocol::query::map(query))
    }

    #[test]
    fn paths_become_upstream_request_attributes() {
        let list = attributes(Method::GET, "/api/v1/namespaces/kube-system/pods", "");
        assert_eq!(
            (
                list.verb.as_str(),
                list.namespace.as_str(),
                list.resource.as_str()
            ),
            ("list", "kube-system", "pods")
        );
        assert!(list.resource_request);
        let watch = attributes(Method::GET, "/apis/apps/v1/deployments", "watch=true");
        assert_eq!(
            (watch.verb.as_str(), watch.api_group.as_str()),
            ("watch", "apps")
        );
        let status = attributes(
            Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/web/status",
            "",
        );
        assert_eq!(
            (
                status.verb.as_str(),
                status.name.as_str(),
                status.subresource.as_str()
            ),
            ("patch", "web", "status")
        );
        let collection = attributes(Method::DELETE, "/api/v1/namespaces/a/pods", "");
        assert_eq!(collection.verb, "deletecollection");
        let by_name = attributes(
            Method::GET,
            "/api/v1/namespaces/a/secrets",
            "fieldSelector=metadata.name%3Dtoken",
        );
        assert_eq!(
            (by_name.verb.as_str(), by_name.name.as_str()),
            ("list", "token")
        );
        let namespace = attributes(Method::DELETE, "/api/v1/namespaces/team-a", "");
        assert_eq!(
            (
                namespace.verb.as_str(),
                namespace.resource.as_str(),
                namespace.name.as_str()
            ),
            ("delete", "namespaces", "team-a")
        );
        let finalize = attributes(Method::PUT, "/api/v1/namespaces/team-a/finalize", "");
        assert_eq!(
            (
                finalize.resource.as_str(),
                finalize.name.as_str(),
                finalize.subresource.as_str()
            ),
            ("namespaces", "team-a", "finalize")
        );
        let exec = attributes(
            Method::GET,
            "/api/v1/namespaces/a/pods/web/exec",
            "command=sh",
        );
        assert_eq!(
            (exec.verb.as_str(), exec.subresource.as_str()),
            ("get", "exec")
        );
        let discovery = attributes(Method::GET, "/apis/apps", "");
        assert!(!discovery.resource_request);
        assert_eq!(
            (discovery.verb.as_str(), discovery.path.as_str()),
            ("get", "/apis/apps")
        );
        let version = attributes(Method::GET, "/api/v1", "");
        assert!(!version.resource_request);
    }

    #[test]
    fn node_users_are_recognised_only_in_the_nodes_group() {
        assert_eq!(
            UserInfo::new("system:node:pi-1", &[NODES]).node(),
            Some("pi-1")
        );
        assert_eq!(UserInfo::new("system:node:pi-1", &[]).node(), None);
        assert!(UserInfo::new("alice", &[]).in_group(AUTHENTICATED));
    }
}
