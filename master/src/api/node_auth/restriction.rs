//! What a node may write on its own Node: upstream's NodeRestriction admission
//! (`plugin/pkg/admission/noderestriction/admission.go`, `admitNode`), and one rule stricter
//! than upstream: only the master's pod CIDR allocation sets `spec.podCIDR(s)`, never the node
//! (a node that could pick its own range could route another node's pods, or the LAN, to
//! itself on every other agent).
//!
//! | request by node `a` on its Node | refused (403, `nodes "a" is forbidden: …`) when |
//! |---|---|
//! | create | `spec.configSource` set; `spec.podCIDR(s)` set; a forbidden label ([`forbidden_labels`]) |
//! | update | `spec.configSource` set anew; `spec.taints` changed; `spec.podCIDR(s)` changed; a forbidden label added, removed or changed |
//!
//! Updates are judged on the object the request would store against the stored one, so a
//! partial PATCH body and a whole PUT are held to the same rules.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::error::ApiError;
use crate::auth::UserInfo;
use crate::resources::Resource;
use protocol::node::forbidden_labels;

/// The label keys added, removed or changed between two objects.
fn modified_labels<'a>(old: &'a Value, new: &'a Value) -> BTreeSet<&'a str> {
    let labels = |object: &'a Value| {
        object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
    };
    let (old, new) = (labels(old), labels(new));
    let mut modified = BTreeSet::new();
    for (one, other) in [(old, new), (new, old)] {
        for (key, value) in one.into_iter().flatten() {
            if other.and_then(|o| o.get(key)) != Some(value) {
                modified.insert(key.as_str());
            }
        }
    }
    modified
}

/// A Node's pod CIDRs as the API holds them: `podCIDRs`, else `[podCIDR]` (the v1 → internal
/// conversion upstream), empty when neither is set.
pub fn pod_cidrs(node: &Value) -> Vec<&str> {
    let list: Vec<&str> = node
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !list.is_empty() {
        return list;
    }
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|cidr| !cidr.is_empty())
        .into_iter()
        .collect()
}

/// A node's taints for comparison: absent, null and empty are the same (upstream compares
/// with `Semantic.DeepEqual`, which does not tell nil from empty).
fn taints(node: &Value) -> &[Value] {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn config_source(node: &Value) -> Option<&Value> {
    node.pointer("/spec/configSource").filter(|v| !v.is_null())
}

fn refuse(name: &str, why: String) -> ApiError {
    let nodes = crate::resources::find("", "v1", "nodes").expect("nodes are a resource");
    ApiError::forbidden_object(nodes, name, &why)
}

/// Checks a Node that node `node` creates (its own: the authorizer saw to the name).
pub fn admit_create(node: &str, object: &Value) -> Result<(), ApiError> {
    if config_source(object).is_some() {
        // Upstream's text, "pods" included.
        return Err(refuse(
            node,
            format!("node {node:?} is not allowed to create pods with a non-nil configSource"),
        ));
    }
    if !pod_cidrs(object).is_empty() {
        return Err(refuse(
            node,
            format!(
                "node {node:?} is not allowed to set spec.podCIDR: the master assigns pod CIDRs"
            ),
        ));
    }
    let keys = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(key, _)| key.as_str());
    let forbidden = forbidden_labels(keys);
    if !forbidden.is_empty() {
        return Err(refuse(
            node,
            format!(
                "node {node:?} is not allowed to set the following labels: {}",
                forbidden.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}

/// Checks what node `node` would store as its Node (`new`) against the stored one (`old`).
pub fn check_update(node: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    if let Some(source) = config_source(new) {
        if config_source(old) != Some(source) {
            return Err(refuse(
                node,
                format!(
                    "node {node:?} is not allowed to update configSource to a new non-nil configSource"
                ),
            ));
        }
    }
    if taints(old) != taints(new) {
        return Err(refuse(
            node,
            format!("node {node:?} is not allowed to modify taints"),
        ));
    }
    let single = |node: &'_ Value| {
        node.pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if pod_cidrs(old) != pod_cidrs(new) || single(old) != single(new) {
        return Err(refuse(
            node,
            format!(
                "node {node:?} is not allowed to modify spec.podCIDR: the master assigns pod CIDRs"
            ),
        ));
    }
    let forbidden = forbidden_labels(modified_labels(old, new));
    if !forbidden.is_empty() {
        // Upstream's text names no node here.
        return Err(refuse(
            node,
            format!(
                "is not allowed to modify labels: {}",
                forbidden.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}

/// The admission step of an update: for a node user changing a Node (not its status, which
/// carries none of these fields), [`check_update`]; everyone else passes.
pub fn admit_update(
    user: &UserInfo,
    resource: &Resource,
    subresource: Option<&str>,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(node) = user.node() else {
        return Ok(());
    };
    if (resource.group, resource.kind) != ("", "Node") || subresource.is_some() {
        return Ok(());
    }
    check_update(node, old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: Value, spec: Value) -> Value {
        json!({"metadata": {"name": "pi-1", "labels": labels}, "spec": spec})
    }

    #[test]
    fn a_node_creates_itself_with_its_own_labels_and_taints_only() {
        let own = node(
            json!({"kubernetes.io/hostname": "pi-1", "node.bramble.dev/board": "pi4"}),
            json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
        );
        admit_create("pi-1", &own).expect("kubelet labels and taints at creation");

        let labelled = node(
            json!({"node-role.kubernetes.io/worker": "", "node-restriction.kubernetes.io/x": "y",
                   "kubernetes.io/os": "linux"}),
            json!({}),
        );
        let error = admit_create("pi-1", &labelled).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(
            error.message,
            "nodes \"pi-1\" is forbidden: node \"pi-1\" is not allowed to set the following labels: node-restriction.kubernetes.io/x, node-role.kubernetes.io/worker"
        );

        for spec in [
            json!({"podCIDR": "10.42.9.0/24"}),
            json!({"podCIDRs": ["0.0.0.0/0"]}),
        ] {
            let error = admit_create("pi-1", &node(json!({}), spec)).unwrap_err();
            assert_eq!(
                error.message,
                "nodes \"pi-1\" is forbidden: node \"pi-1\" is not allowed to set spec.podCIDR: the master assigns pod CIDRs"
            );
        }
        let configured = node(json!({}), json!({"configSource": {"configMap": {}}}));
        assert!(admit_create("pi-1", &configured)
            .unwrap_err()
            .message
            .ends_with("is not allowed to create pods with a non-nil configSource"));
    }

    #[test]
    fn a_node_updates_no_taints_pod_cidrs_or_forbidden_labels() {
        let stored = node(
            json!({"kubernetes.io/hostname": "pi-1", "node-role.kubernetes.io/worker": ""}),
            json!({"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}),
        );
        // Its own labels change freely; the admin's node-role label stays untouched.
        let mut relabelled = stored.clone();
        relabelled["metadata"]["labels"]["bramble.dev/x"] = json!("1");
        relabelled["metadata"]["labels"]["kubernetes.io/hostname"] = json!("pi-one");
        check_update("pi-1", &stored, &relabelled).expect("allowed labels");

        let mut role = stored.clone();
        role["metadata"]["labels"]["node-role.kubernetes.io/worker"] = json!("yes");
        role["metadata"]["labels"]["node-restriction.kubernetes.io/x"] = json!("y");
        let error = check_update("pi-1", &stored, &role).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(
            error.message,
            "nodes \"pi-1\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/x, node-role.kubernetes.io/worker"
        );
        let mut removed = stored.clone();
        removed["metadata"]["labels"] = json!({"kubernetes.io/hostname": "pi-1"});
        assert!(check_update("pi-1", &stored, &removed)
            .unwrap_err()
            .message
            .ends_with("is not allowed to modify labels: node-role.kubernetes.io/worker"));

        let mut tainted = stored.clone();
        tainted["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
        assert_eq!(
            check_update("pi-1", &stored, &tainted).unwrap_err().message,
            "nodes \"pi-1\" is forbidden: node \"pi-1\" is not allowed to modify taints"
        );
        let mut empty_taints = stored.clone();
        empty_taints["spec"]["taints"] = json!([]);
        check_update("pi-1", &stored, &empty_taints).expect("no taints either way");

        for (field, value) in [
            ("podCIDR", json!("0.0.0.0/0")),
            ("podCIDRs", json!(["10.42.2.0/24"])),
            ("podCIDR", Value::Null),
        ] {
            let mut moved = stored.clone();
            moved["spec"][field] = value;
            assert_eq!(
                check_update("pi-1", &stored, &moved).unwrap_err().message,
                "nodes \"pi-1\" is forbidden: node \"pi-1\" is not allowed to modify spec.podCIDR: the master assigns pod CIDRs",
                "{field}"
            );
        }
        let mut blank = stored.clone();
        blank["spec"] = json!({});
        let mut also_blank = blank.clone();
        also_blank["spec"] = json!({"podCIDR": "", "podCIDRs": [], "taints": null});
        check_update("pi-1", &blank, &also_blank).expect("empty is empty");
        let unassigned = node(json!({}), json!({}));
        let mut claimed = unassigned.clone();
        claimed["spec"]["podCIDR"] = json!("10.42.7.0/24");
        assert!(check_update("pi-1", &unassigned, &claimed).is_err());
    }

    #[test]
    fn only_node_users_changing_a_node_are_restricted() {
        let nodes = crate::resources::find("", "v1", "nodes").unwrap();
        let old = node(json!({}), json!({}));
        let new = node(json!({"node-role.kubernetes.io/worker": ""}), json!({}));
        let pi = UserInfo::new("system:node:pi-1", &["system:nodes"]);
        let admin = UserInfo::new("admin", &["system:masters"]);
        assert!(admit_update(&pi, nodes, None, &old, &new).is_err());
        assert!(admit_update(&pi, nodes, Some("status"), &old, &new).is_ok());
        assert!(admit_update(&admin, nodes, None, &old, &new).is_ok());
    }
}
