//! Escalation prevention, as upstream's policy-based RBAC storage: a user may write a Role or
//! ClusterRole only with rules they hold themselves (or with `escalate` on it), and a binding
//! only to a role whose rules they hold (or with `bind` on it). Members of `system:masters`
//! and in-process writers are never checked.

use serde_json::Value;

use super::rule::{compact, go_quote, quoted_list, uncovered, Rule};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::auth::{RequestAttributes, UserInfo, MASTERS};
use crate::resources::Resource;

const GROUP: &str = "rbac.authorization.k8s.io";

/// What `*` on `*.*` and on every path is: needed to write an aggregation rule.
fn full_authority() -> Vec<Rule> {
    vec![
        Rule::resource(&["*"], &["*"], &["*"]),
        Rule::urls(&["*"], &["*"]),
    ]
}

/// Checks a create (`old` is `None`) or update of `new` by `user`. Other kinds pass.
pub fn check(
    state: &ApiState,
    user: &UserInfo,
    resource: &Resource,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if resource.group != GROUP || user.in_group(MASTERS) {
        return Ok(());
    }
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = new["metadata"]["namespace"].as_str().unwrap_or_default();
    if old.is_some_and(|old| only_gc_fields_change(old, new)) {
        return Ok(());
    }
    let authorizer = &state.rbac;
    let allowed = |verb: &str, resource: &str, name: &str| {
        let request = RequestAttributes {
            verb: verb.into(),
            resource_request: true,
            api_group: GROUP.into(),
            api_version: "*".into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..RequestAttributes::default()
        };
        authorizer.review(user, &request).allowed
    };
    let refuse = |why: String| ApiError::forbidden_object(resource, name, &why);
    match resource.kind {
        "Role" | "ClusterRole" => {
            if allowed("escalate", resource.plural, name) {
                return Ok(());
            }
            confirm_no_escalation(state, user, namespace, &Rule::all_of(new)).map_err(refuse)?;
            let aggregates = |role: &Value| !role["aggregationRule"].is_null();
            if resource.kind == "ClusterRole"
                && (aggregates(new) || old.is_some_and(aggregates))
                && confirm_no_escalation(state, user, namespace, &full_authority()).is_err()
            {
                return Err(refuse(
                    "must have cluster-admin privileges to use the aggregationRule".into(),
                ));
            }
            Ok(())
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_ref = &new["roleRef"];
            let kind = role_ref["kind"].as_str().unwrap_or_default();
            let role_name = role_ref["name"].as_str().unwrap_or_default();
            let plural = match kind {
                "Role" => "roles",
                "ClusterRole" => "clusterroles",
                _ => "",
            };
            if !plural.is_empty() && allowed("bind", plural, role_name) {
                return Ok(());
            }
            let rules = authorizer
                .role_rules(kind, role_name, namespace)
                .map_err(|error| ApiError::new(404, "NotFound", error))?;
            confirm_no_escalation(state, user, namespace, &rules).map_err(refuse)
        }
        _ => Ok(()),
    }
}

/// Upstream's `ConfirmNoEscalation`: the rules `user` holds in `namespace` must cover `rules`.
fn confirm_no_escalation(
    state: &ApiState,
    user: &UserInfo,
    namespace: &str,
    rules: &[Rule],
) -> Result<(), String> {
    let (held, errors) = state.rbac.rules_for(user, namespace);
    let missing = uncovered(&held, rules);
    if missing.is_empty() {
        return Ok(());
    }
    let mut described: Vec<String> = compact(missing).iter().map(Rule::compact_string).collect();
    described.sort();
    described.dedup();
    let mut message = format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&user.name),
        quoted_list(&user.groups),
        described.join("\n")
    );
    if !errors.is_empty() {
        message.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
    }
    Err(message)
}

/// Whether an update only touches what the garbage collector writes (finalizers, owner
/// references), which needs no escalation check (upstream's `IsOnlyMutatingGCFields`).
fn only_gc_fields_change(old: &Value, new: &Value) -> bool {
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "finalizers",
                "ownerReferences",
                "resourceVersion",
                "managedFields",
            ] {
                metadata.remove(field);
            }
        }
        object
    };
    strip(old) == strip(new)
}
