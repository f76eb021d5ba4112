//! Role-based access control (rbac.authorization.k8s.io/v1): the authorizer every request
//! from a person or a service account passes (nodes pass `api::node_auth` instead).
//!
//! ```text
//!   store change feed ─► Index (roles, bindings by subject) ◄─ authorize / rules_for
//!                        caught up before every decision, and every second in the background
//! ```
//!
//! `defaults` creates and reconciles the bootstrap roles and bindings, `escalation` keeps users
//! from granting what they do not hold, `validation` checks the four kinds.

pub mod defaults;
pub mod escalation;
mod index;
pub mod rule;
pub mod validation;

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde_json::json;

use crate::api::error::ApiError;
use crate::auth::{RequestAttributes, UserInfo, MASTERS};
use crate::store::{Change, Store, StoreError};
use index::{Index, Source};
pub use index::{CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS};
use rule::Rule;

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

/// A decision with the reason reviews report (`RBAC: allowed by ...` when allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Upstream's reason text, empty when there is none.
    pub reason: String,
}

/// The RBAC authorizer. Until [`Authorizer::follow`] attaches it to a store it knows no roles
/// (only `system:masters` is allowed anything).
#[derive(Default)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    feed: Mutex<Option<Receiver<Arc<Change>>>>,
    index: RwLock<Index>,
}

const KINDS: [&str; 4] = [ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS];

impl Inner {
    /// Applies every change committed so far. Writes publish before they answer, so a
    /// decision after a write sees it.
    fn catch_up(&self) {
        let feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(feed) = feed.as_ref() else {
            return;
        };
        let mut changes = Vec::new();
        while let Ok(change) = feed.try_recv() {
            if KINDS.contains(&change.resource.as_str()) {
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return;
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            let deleted = change.event == crate::store::EventType::Deleted;
            index.apply(&change.resource, &change.object, deleted);
        }
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.catch_up();
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Authorizer {
    /// Loads the RBAC objects of `store` and follows its changes from then on.
    pub fn follow(&self, store: &Store) -> Result<(), StoreError> {
        let feed = store.follow();
        let mut index = Index::default();
        let mut listed = HashMap::new();
        for kind in KINDS {
            let page = store.list(kind, None, None, 0, &|_| true)?;
            for object in &page.items {
                index.apply(kind, object, false);
            }
            listed.insert(kind, page.revision);
        }
        // Changes the lists already hold are skipped; later ones are applied.
        while let Ok(change) = feed.try_recv() {
            if let Some(revision) = listed.get(change.resource.as_str()) {
                if change.revision > *revision {
                    let deleted = change.event == crate::store::EventType::Deleted;
                    index.apply(&change.resource, &change.object, deleted);
                }
            }
        }
        *self.inner.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        let first = self
            .inner
            .feed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(feed)
            .is_none();
        if first {
            // Changes pile up in the feed between requests: drain it now and then.
            let inner: Weak<Inner> = Arc::downgrade(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("rbac-follower".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(1));
                    match inner.upgrade() {
                        Some(inner) => inner.catch_up(),
                        None => return,
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "the RBAC follower thread did not start");
            }
        }
        Ok(())
    }

    /// Whether `user` may do what `request` asks. Members of `system:masters` may do anything
    /// without a look at roles.
    pub fn authorize(&self, user: &UserInfo, request: &RequestAttributes) -> Decision {
        let verdict = self.review(user, request);
        if verdict.allowed {
            Decision::Allow
        } else {
            Decision::Deny {
                reason: verdict.reason,
            }
        }
    }

    /// The decision with upstream's reason: `RBAC: allowed by ClusterRoleBinding "x" of
    /// ClusterRole "y" to User "alice"`, or, refused, the roles that could not be found.
    pub fn review(&self, user: &UserInfo, request: &RequestAttributes) -> Verdict {
        if user.in_group(MASTERS) {
            return Verdict {
                allowed: true,
                reason: String::new(),
            };
        }
        let index = self.inner.index();
        let mut allowed_by = None;
        let mut errors = Vec::new();
        index.visit(user, &request.namespace, |source| match source {
            Source::Rules(binding, subject, rules) => {
                if rules.iter().any(|rule| rule.allows(request)) {
                    allowed_by = Some(binding.describe(subject));
                    return false;
                }
                true
            }
            Source::Missing(error) => {
                errors.push(error);
                true
            }
        });
        match allowed_by {
            Some(source) => Verdict {
                allowed: true,
                reason: format!("RBAC: allowed by {source}"),
            },
            None => Verdict {
                allowed: false,
                reason: if errors.is_empty() {
                    String::new()
                } else {
                    format!("RBAC: {}", aggregate(&errors))
                },
            },
        }
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included), and the bindings
    /// whose roles could not be found.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        self.inner.index().rules_for(user, namespace)
    }

    /// The rules a role reference grants (`Role` in `namespace`, or `ClusterRole`), or
    /// upstream's error text.
    pub fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> Result<Vec<Rule>, String> {
        self.inner
            .index()
            .role_rules(kind, name, namespace)
            .map(|rules| rules.to_vec())
    }
}

/// A WebSocket `get` of `pods/exec`, `pods/attach` or `pods/portforward` opens an interactive
/// session: as upstream with `AuthorizePodWebsocketUpgradeCreatePermission` (on by default
/// since 1.35), it must also be allowed as `create`. This is the second request to authorize.
pub fn connect_as_create(request: &RequestAttributes) -> Option<RequestAttributes> {
    let connect = request.resource_request
        && request.verb == "get"
        && request.api_group.is_empty()
        && request.resource == "pods"
        && matches!(
            request.subresource.as_str(),
            "exec" | "attach" | "portforward"
        );
    connect.then(|| RequestAttributes {
        verb: "create".into(),
        ..request.clone()
    })
}

/// Upstream's aggregate error text: one error as is, several as `[a, b]`.
pub fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Starts RBAC on a master: the authorizer follows the store, then the default roles and
/// bindings are created or brought up to date.
pub fn start(state: &crate::api::ApiState) -> Result<(), ApiError> {
    state.rbac.follow(&state.store)?;
    defaults::reconcile(state)
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

#[cfg(test)]
mod tests_store;
