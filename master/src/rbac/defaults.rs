//! The default ClusterRoles and ClusterRoleBindings every cluster starts with (upstream's
//! `bootstrappolicy`), created at start and reconciled as upstream's RBAC post-start hook does:
//! missing ones are created; those annotated `rbac.authorization.kubernetes.io/autoupdate:
//! "true"` get missing rules, selectors, subjects, labels and annotations added back.

use serde_json::{json, Map, Value};

use super::rule::{uncovered, Rule};
use crate::api::error::ApiError;
use crate::api::objects;
use crate::api::ApiState;
use crate::resources;

/// Label every default role and binding carries.
pub const BOOTSTRAPPING: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// Annotation that lets the reconciler add back what is missing.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// Labels the aggregated roles select.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
/// See [`AGGREGATE_TO_ADMIN`].
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
/// See [`AGGREGATE_TO_ADMIN`].
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Rule>) -> Value {
    let mut label_map = Map::new();
    label_map.insert(BOOTSTRAPPING.0.into(), json!(BOOTSTRAPPING.1));
    for (key, value) in labels {
        label_map.insert((*key).into(), json!(value));
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": label_map, "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], selects: &str) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {selects: "true"}}]});
    role
}

fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| {
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name})
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role, "labels": {BOOTSTRAPPING.0: BOOTSTRAPPING.1},
                     "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn r(verbs: &[&str], group: &str, resources: &[&str]) -> Rule {
    Rule::resource(verbs, &[group], resources)
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![
                Rule::resource(&["*"], &["*"], &["*"]),
                Rule::urls(&["*"], &["*"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                r(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![Rule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        aggregated("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            vec![
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["localsubjectaccessreviews"],
                ),
                r(
                    READ_WRITE,
                    "rbac.authorization.k8s.io",
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            vec![
                r(
                    READ,
                    "",
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                r(&["impersonate"], "", &["serviceaccounts"]),
                r(
                    WRITE,
                    "",
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                r(&["create"], "", &["pods/eviction"]),
                r(
                    WRITE,
                    "",
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], "", &["serviceaccounts/token"]),
                r(
                    WRITE,
                    "apps",
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, "autoscaling", &["horizontalpodautoscalers"]),
                r(WRITE, "batch", &["cronjobs", "jobs"]),
                r(
                    WRITE,
                    "extensions",
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(WRITE, "policy", &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    "networking.k8s.io",
                    &["ingresses", "networkpolicies"],
                ),
                r(READ_WRITE, "coordination.k8s.io", &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![
                r(
                    READ,
                    "",
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                r(
                    READ,
                    "",
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                r(READ, "", &["namespaces"]),
                r(READ, "discovery.k8s.io", &["endpointslices"]),
                r(
                    READ,
                    "apps",
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    "autoscaling",
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    "batch",
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    "extensions",
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(
                    READ,
                    "policy",
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    "networking.k8s.io",
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                r(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                r(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                r(&["list", "watch"], "", &["endpoints", "services"]),
                r(&["get", "list", "watch"], "", &["nodes"]),
                r(&["create", "patch", "update"], "", &["events"]),
                r(&["create", "patch", "update"], "events.k8s.io", &["events"]),
                r(&["list", "watch"], "discovery.k8s.io", &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![Rule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", &[("Group", "system:masters")]),
        binding("system:basic-user", &[("Group", "system:authenticated")]),
        binding("system:discovery", &[("Group", "system:authenticated")]),
        binding("system:monitoring", &[("Group", "system:monitoring")]),
        binding(
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding("system:node-proxier", &[("User", "system:kube-proxy")]),
        binding(
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
    ]
}

/// Creates the missing defaults and adds back what autoupdated ones lack.
pub fn reconcile(state: &ApiState) -> Result<(), ApiError> {
    let roles = resources::by_kind("rbac.authorization.k8s.io", "ClusterRole")
        .expect("cluster roles are served");
    let bindings = resources::by_kind("rbac.authorization.k8s.io", "ClusterRoleBinding")
        .expect("cluster role bindings are served");
    for (resource, wanted) in cluster_roles()
        .into_iter()
        .map(|role| (roles, role))
        .chain(cluster_role_bindings().into_iter().map(|b| (bindings, b)))
    {
        let name = wanted["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match objects::create_object(state, resource, wanted.clone(), false) {
            Ok(_) => continue,
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        let current = state
            .store
            .get(&resource.storage_key(), "", &name)?
            .unwrap_or_default();
        if current["metadata"]["annotations"][AUTOUPDATE] != "true" {
            continue;
        }
        let Some(next) = reconciled(&current, &wanted) else {
            continue;
        };
        objects::update_object(
            state,
            resource,
            "",
            &name,
            objects::Part::Main,
            false,
            move |_| Ok(next),
        )?;
    }
    Ok(())
}

/// `current` with what `wanted` has and it lacks, or `None` when nothing is missing.
fn reconciled(current: &Value, wanted: &Value) -> Option<Value> {
    let mut next = current.clone();
    for field in ["labels", "annotations"] {
        for (key, value) in wanted["metadata"][field].as_object().into_iter().flatten() {
            if next["metadata"][field].get(key).is_none() {
                if !next["metadata"][field].is_object() {
                    next["metadata"][field] = json!({});
                }
                next["metadata"][field][key] = value.clone();
            }
        }
    }
    if let Some(selectors) = wanted.pointer("/aggregationRule/clusterRoleSelectors") {
        let have = next
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut merged = have.clone();
        for selector in selectors.as_array().into_iter().flatten() {
            if !merged.contains(selector) {
                merged.push(selector.clone());
            }
        }
        if merged != have {
            next["aggregationRule"] = json!({"clusterRoleSelectors": merged});
        }
    } else if wanted.get("rules").is_some() {
        let missing = uncovered(&Rule::all_of(current), &Rule::all_of(wanted));
        if !missing.is_empty() {
            let mut rules = current["rules"].as_array().cloned().unwrap_or_default();
            rules.extend(missing.iter().map(|rule| json!(rule)));
            next["rules"] = json!(rules);
        }
    }
    if let Some(subjects) = wanted["subjects"].as_array() {
        let mut have = current["subjects"].as_array().cloned().unwrap_or_default();
        let before = have.len();
        for subject in subjects {
            let same = |s: &Value| s["kind"] == subject["kind"] && s["name"] == subject["name"];
            if !have.iter().any(same) {
                have.push(subject.clone());
            }
        }
        if have.len() != before {
            next["subjects"] = json!(have);
        }
    }
    (next != *current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoupdate_adds_back_missing_rules_subjects_and_labels() {
        let wanted = cluster_roles()
            .into_iter()
            .find(|r| r["metadata"]["name"] == "system:basic-user")
            .unwrap();
        let mut current = wanted.clone();
        current["rules"] = json!([{"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
                                  "resources": ["selfsubjectaccessreviews"]},
                                 {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        current["metadata"]["labels"] = json!({"team": "a"});
        let next = reconciled(&current, &wanted).unwrap();
        let rules = Rule::all_of(&next);
        assert!(uncovered(&rules, &Rule::all_of(&wanted)).is_empty());
        assert!(
            rules.contains(&Rule::resource(&["get"], &[""], &["pods"])),
            "kept"
        );
        assert_eq!(next["metadata"]["labels"]["team"], "a");
        assert_eq!(next["metadata"]["labels"][BOOTSTRAPPING.0], BOOTSTRAPPING.1);
        assert!(reconciled(&next, &wanted).is_none(), "nothing left to add");

        let wanted = binding("cluster-admin", &[("Group", "system:masters")]);
        let mut current = wanted.clone();
        current["subjects"] = json!([{"kind": "User", "name": "alice"}]);
        let next = reconciled(&current, &wanted).unwrap();
        assert_eq!(next["subjects"].as_array().unwrap().len(), 2);
    }
}
