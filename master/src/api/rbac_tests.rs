//! RBAC through the API: a user other than the admin is refused, granted, reviewed, and kept
//! from granting what they do not hold.

use serde_json::{json, Value};

use super::server_tests::{Reply, TestServer};
use super::ServeLimits;
use crate::auth::UserInfo;

const ALICE: &str = "alice-token";

async fn server() -> TestServer {
    let alice = UserInfo::new("alice", &["dev"]);
    TestServer::start_with_users(ServeLimits::default(), vec![(ALICE.to_owned(), alice)]).await
}

async fn as_alice(server: &TestServer, method: &str, path: &str, body: Value) -> Reply {
    let auth = format!("Bearer {ALICE}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    server
        .call_with(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await
}

async fn as_admin(server: &TestServer, method: &str, path: &str, body: Value) -> Reply {
    let reply = server
        .call(
            method,
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
        .await;
    assert!(reply.code < 300, "{method} {path}: {}", reply.text());
    reply
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

async fn grant_role_writing(server: &TestServer) {
    as_admin(
        server,
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": "team-a"}}),
    )
    .await;
    as_admin(
        server,
        "POST",
        &format!("{RBAC}/namespaces/team-a/roles"),
        json!({"metadata": {"name": "writer"}, "rules": [
            {"verbs": ["create", "update", "patch", "get"], "apiGroups": ["rbac.authorization.k8s.io"],
             "resources": ["roles", "rolebindings"]},
            {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
    )
    .await;
    as_admin(
        server,
        "POST",
        &format!("{RBAC}/namespaces/team-a/rolebindings"),
        json!({"metadata": {"name": "alice-writes"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
               "subjects": [{"kind": "User", "name": "alice"}]}),
    )
    .await;
}

#[tokio::test]
async fn users_are_refused_until_bound_and_reviews_say_why() {
    let server = server().await;
    let refused = as_alice(
        &server,
        "GET",
        "/api/v1/namespaces/team-a/pods",
        Value::Null,
    )
    .await;
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.json()["message"],
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"team-a\""
    );
    // Discovery is open to every authenticated user (system:discovery).
    assert_eq!(
        as_alice(&server, "GET", "/apis", Value::Null).await.code,
        200
    );
    grant_role_writing(&server).await;
    assert_eq!(
        as_alice(
            &server,
            "GET",
            "/api/v1/namespaces/team-a/pods",
            Value::Null
        )
        .await
        .code,
        200
    );
    assert_eq!(
        as_alice(
            &server,
            "GET",
            "/api/v1/namespaces/default/pods",
            Value::Null
        )
        .await
        .code,
        403
    );

    let review = |verb: &str, namespace: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"verb": verb, "resource": "pods", "namespace": namespace}}})
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let yes = as_alice(&server, "POST", path, review("list", "team-a")).await;
    assert_eq!(yes.code, 201, "{}", yes.text());
    assert_eq!(
        yes.json()["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"alice-writes/team-a\" of Role \"writer\" to User \"alice\""})
    );
    let no = as_alice(&server, "POST", path, review("delete", "team-a")).await;
    assert_eq!(no.json()["status"], json!({"allowed": false}));

    let rules = as_alice(
        &server,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
               "spec": {"namespace": "team-a"}}),
    )
    .await
    .json();
    let status = &rules["status"];
    assert_eq!(status["incomplete"], false);
    assert!(status["resourceRules"]
        .as_array()
        .unwrap()
        .contains(&json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]})));
    assert!(status["nonResourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["nonResourceURLs"]
            .as_array()
            .unwrap()
            .contains(&json!("/apis/*"))));

    // About someone else: the admin asks for alice; a namespace other than the path's is refused.
    let local = |namespace: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
               "spec": {"user": "alice", "groups": ["dev"],
                        "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": namespace}}})
    };
    let reply = as_admin(
        &server,
        "POST",
        "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews",
        local("team-a"),
    )
    .await;
    assert_eq!(reply.json()["status"]["allowed"], true);
    let mismatch = server
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews",
            "application/json",
            local("default").to_string().as_bytes(),
        )
        .await;
    assert_eq!(mismatch.code, 422, "{}", mismatch.text());
    assert_eq!(
        mismatch.json()["message"],
        "LocalSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes.namespace: Invalid value: \"default\": must match metadata.namespace"
    );
    let nobody = server
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            "application/json",
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                   "spec": {"nonResourceAttributes": {"verb": "get", "path": "/healthz"}}})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(nobody.code, 422);
    let healthz = as_admin(
        &server,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": "bob", "groups": ["system:unauthenticated"],
                        "nonResourceAttributes": {"verb": "get", "path": "/healthz"}}}),
    )
    .await;
    assert_eq!(
        healthz.json()["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"system:public-info-viewer\" of ClusterRole \"system:public-info-viewer\" to Group \"system:unauthenticated\""})
    );
}

#[tokio::test]
async fn users_grant_only_what_they_hold() {
    let server = server().await;
    grant_role_writing(&server).await;
    let roles = format!("{RBAC}/namespaces/team-a/roles");
    let held = json!({"metadata": {"name": "pod-reader"},
                      "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]});
    assert_eq!(as_alice(&server, "POST", &roles, held).await.code, 201);
    let more = json!({"metadata": {"name": "pod-killer"},
                      "rules": [{"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]}]});
    let refused = as_alice(&server, "POST", &roles, more).await;
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.json()["message"],
        "roles.rbac.authorization.k8s.io \"pod-killer\" is forbidden: user \"alice\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
    );

    let bindings = format!("{RBAC}/namespaces/team-a/rolebindings");
    let to_admin = json!({"metadata": {"name": "bob-admin"},
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                          "subjects": [{"kind": "User", "name": "bob"}]});
    let refused = as_alice(&server, "POST", &bindings, to_admin.clone()).await;
    assert_eq!(refused.code, 403);
    assert!(refused.json()["message"].as_str().unwrap().starts_with(
        "rolebindings.rbac.authorization.k8s.io \"bob-admin\" is forbidden: user \"alice\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"
    ), "{}", refused.text());
    let to_reader = json!({"metadata": {"name": "bob-reads"},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                           "subjects": [{"kind": "User", "name": "bob"}]});
    assert_eq!(
        as_alice(&server, "POST", &bindings, to_reader).await.code,
        201
    );

    // With `bind` on cluster-admin, the binding is allowed although alice does not hold it.
    as_admin(
        &server,
        "POST",
        &roles,
        json!({"metadata": {"name": "binder"}, "rules": [{"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"],
               "resources": ["clusterroles"], "resourceNames": ["cluster-admin"]}]}),
    )
    .await;
    as_admin(
        &server,
        "POST",
        &bindings,
        json!({"metadata": {"name": "alice-binds"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binder"},
               "subjects": [{"kind": "User", "name": "alice"}]}),
    )
    .await;
    assert_eq!(
        as_alice(&server, "POST", &bindings, to_admin).await.code,
        201
    );

    // roleRef may not change.
    let changed = server
        .call(
            "PATCH",
            &format!("{bindings}/bob-reads"),
            "application/merge-patch+json",
            json!({"roleRef": {"name": "writer"}})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(changed.code, 422, "{}", changed.text());
    assert!(changed.json()["message"]
        .as_str()
        .unwrap()
        .ends_with("cannot change roleRef"));
}
