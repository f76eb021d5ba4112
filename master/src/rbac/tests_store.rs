//! The authorizer over a real store: decisions at a thousand bindings, live changes, reasons.

use serde_json::{json, Value};

use super::*;
use crate::controllers::testing::TestCluster;

fn attributes(verb: &str, group: &str, resource: &str, namespace: &str) -> RequestAttributes {
    RequestAttributes {
        verb: verb.into(),
        resource_request: true,
        api_group: group.into(),
        resource: resource.into(),
        namespace: namespace.into(),
        ..RequestAttributes::default()
    }
}

fn binding(namespace: &str, name: &str, role: (&str, &str), subjects: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role.0, "name": role.1},
           "subjects": subjects})
}

fn following() -> TestCluster {
    let cluster = TestCluster::new();
    cluster.api().rbac.follow(&cluster.api().store).unwrap();
    cluster
}

fn allowed(cluster: &TestCluster, user: &UserInfo, request: &RequestAttributes) -> bool {
    cluster.api().rbac.authorize(user, request) == Decision::Allow
}

#[test]
fn a_thousand_bindings_each_grant_only_their_subject() {
    let cluster = following();
    for n in 0..50 {
        cluster.create(
            "core/namespaces",
            json!({"metadata": {"name": format!("ns-{n}")}}),
        );
    }
    for i in 0..1000 {
        let namespace = format!("ns-{}", i % 50);
        cluster.create(
            ROLES,
            json!({"metadata": {"name": format!("role-{i}"), "namespace": namespace},
                   "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": [format!("things{i}")]}]}),
        );
        let subject = match i % 3 {
            0 => json!({"kind": "User", "name": format!("user-{i}")}),
            1 => json!({"kind": "Group", "name": format!("group-{i}")}),
            _ => json!({"kind": "ServiceAccount", "name": format!("sa-{i}")}),
        };
        cluster.create(
            ROLE_BINDINGS,
            binding(
                &namespace,
                &format!("binding-{i}"),
                ("Role", &format!("role-{i}")),
                json!([subject]),
            ),
        );
    }
    for i in [0, 1, 2, 499, 500, 998, 999] {
        let namespace = format!("ns-{}", i % 50);
        let user = match i % 3 {
            0 => UserInfo::new(format!("user-{i}"), &[]),
            1 => UserInfo::new("someone", &[&format!("group-{i}")]),
            _ => UserInfo::new(
                format!("system:serviceaccount:{namespace}:sa-{i}"),
                &["system:serviceaccounts"],
            ),
        };
        let own = attributes("list", "", &format!("things{i}"), &namespace);
        assert!(allowed(&cluster, &user, &own), "binding {i}");
        let other_namespace = attributes("list", "", &format!("things{i}"), "ns-other");
        assert!(
            !allowed(&cluster, &user, &other_namespace),
            "binding {i} elsewhere"
        );
        let other_thing = attributes("list", "", &format!("things{}", i + 1), &namespace);
        assert!(
            !allowed(&cluster, &user, &other_thing),
            "binding {i}, another resource"
        );
        assert!(!allowed(
            &cluster,
            &user,
            &attributes("delete", "", &format!("things{i}"), &namespace)
        ));
        let (rules, errors) = cluster.api().rbac.rules_for(&user, &namespace);
        assert_eq!((rules.len(), errors.len()), (1, 0), "exactly its own rule");
    }
    assert!(!allowed(
        &cluster,
        &UserInfo::new("user-1", &[]),
        &attributes("list", "", "things1", "ns-1")
    ));
}

#[test]
fn decisions_follow_changes_and_name_their_binding() {
    let cluster = following();
    let alice = UserInfo::new("alice", &["team"]);
    let list_pods = attributes("list", "", "pods", "default");
    assert!(!allowed(&cluster, &alice, &list_pods));
    cluster.create(
        CLUSTER_ROLES,
        json!({"metadata": {"name": "pod-reader"},
               "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
    );
    cluster.create(
        CLUSTER_ROLE_BINDINGS,
        binding(
            "",
            "readers",
            ("ClusterRole", "pod-reader"),
            json!([{"kind": "Group", "name": "team", "apiGroup": "rbac.authorization.k8s.io"}]),
        ),
    );
    let verdict = cluster.api().rbac.review(&alice, &list_pods);
    assert_eq!(
        verdict.reason,
        "RBAC: allowed by ClusterRoleBinding \"readers\" of ClusterRole \"pod-reader\" to Group \"team\""
    );
    assert!(verdict.allowed);
    cluster.delete(
        CLUSTER_ROLE_BINDINGS,
        &(String::new(), "readers".into()),
        &Default::default(),
    );
    assert!(!allowed(&cluster, &alice, &list_pods));

    // A RoleBinding to a ServiceAccount without a namespace means the binding's namespace.
    cluster.create(
        ROLE_BINDINGS,
        binding(
            "default",
            "robots",
            ("ClusterRole", "pod-reader"),
            json!([{"kind": "ServiceAccount", "name": "robot"}]),
        ),
    );
    let robot = UserInfo::new("system:serviceaccount:default:robot", &[]);
    assert_eq!(
        cluster.api().rbac.review(&robot, &list_pods).reason,
        "RBAC: allowed by RoleBinding \"robots/default\" of ClusterRole \"pod-reader\" to ServiceAccount \"robot/default\""
    );
    assert!(!allowed(
        &cluster,
        &robot,
        &attributes("list", "", "pods", "kube-system")
    ));

    // A binding to a missing role refuses with upstream's resolution error.
    cluster.create(
        ROLE_BINDINGS,
        binding(
            "default",
            "ghost",
            ("Role", "missing"),
            json!([{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]),
        ),
    );
    assert_eq!(
        cluster.api().rbac.authorize(&alice, &list_pods),
        Decision::Deny {
            reason: "RBAC: role.rbac.authorization.k8s.io \"missing\" not found".into()
        }
    );
    // Masters need no role.
    assert!(allowed(
        &cluster,
        &UserInfo::master(),
        &attributes("delete", "x", "y", "z")
    ));
}

#[test]
fn websocket_exec_is_also_a_create() {
    let exec = RequestAttributes::of(
        &http::Method::GET,
        "/api/v1/namespaces/a/pods/web/exec",
        &Default::default(),
    );
    let create = connect_as_create(&exec).unwrap();
    assert_eq!(
        (create.verb.as_str(), create.subresource.as_str()),
        ("create", "exec")
    );
    let log = RequestAttributes::of(
        &http::Method::GET,
        "/api/v1/namespaces/a/pods/web/log",
        &Default::default(),
    );
    assert!(connect_as_create(&log).is_none());
}
