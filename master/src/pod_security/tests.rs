//! Pod Security admission through the master's write path: a real store, namespaces with
//! labels, pods, controllers and their templates.

use serde_json::{json, Value};

use super::policy::{Level, LevelVersion, Version};
use super::*;
use crate::api::objects::{self, Admitted, Part, Requester};
use crate::controllers::replicas::ReplicaController;
use crate::controllers::testing::TestCluster;
use crate::resources::by_kind;
use crate::ClusterSettings;

const BARE_POD_REASONS: &str = "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

fn namespace(cluster: &TestCluster, name: &str, labels: Value) {
    cluster.create(
        "core/namespaces",
        json!({"metadata": {"name": name, "labels": labels}}),
    );
}

fn pod(namespace: &str, name: &str, container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [container]},
    })
}

fn bare(name: &str) -> Value {
    json!({"name": name, "image": "registry.local/app:1"})
}

fn restricted(name: &str) -> Value {
    json!({
        "name": name, "image": "registry.local/app:1",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn create_as(
    cluster: &TestCluster,
    kind: (&str, &str),
    mut object: Value,
    user: Option<&str>,
) -> Result<Admitted, ApiError> {
    let resource = by_kind(kind.0, kind.1).unwrap();
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    let requester = Requester {
        user,
        subresource: None,
    };
    objects::create_object_as(cluster.api(), resource, object, false, requester)
}

fn create_pod(cluster: &TestCluster, pod: Value) -> Result<Vec<String>, ApiError> {
    create_as(cluster, ("", "Pod"), pod, Some("alice")).map(|a| a.warnings)
}

/// Sets labels on a namespace as `kubectl label` would; the warnings it gets.
fn label(cluster: &TestCluster, name: &str, labels: Value) -> Result<Vec<String>, ApiError> {
    let resource = by_kind("", "Namespace").unwrap();
    let requester = Requester {
        user: Some("alice"),
        subresource: None,
    };
    objects::update_object_as(
        cluster.api(),
        resource,
        "",
        name,
        Part::Main,
        false,
        requester,
        |current| {
            let mut next = current.clone();
            for (k, v) in labels.as_object().unwrap() {
                if v.is_null() {
                    next["metadata"]["labels"]
                        .as_object_mut()
                        .map(|l| l.remove(k));
                } else {
                    next["metadata"]["labels"][k] = v.clone();
                }
            }
            Ok(next)
        },
    )
    .map(|a| a.warnings)
}

#[test]
fn a_restricted_namespace_refuses_with_upstreams_403() {
    let cluster = TestCluster::new();
    namespace(&cluster, "secure", json!({ENFORCE: "restricted"}));
    let error = create_pod(&cluster, pod("secure", "x", bare("c"))).unwrap_err();
    assert_eq!(error.code, 403);
    assert_eq!(error.reason, "Forbidden");
    assert_eq!(
        error.message,
        format!("pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": {BARE_POD_REASONS}")
    );
    assert_eq!(error.details, Some(json!({"name": "x", "kind": "pods"})));

    let mut privileged = bare("c");
    privileged["securityContext"] = json!({"privileged": true});
    let error = create_pod(&cluster, pod("secure", "p", privileged)).unwrap_err();
    assert_eq!(
        error.message,
        format!(
            "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true), {BARE_POD_REASONS}"
        )
    );
    assert_eq!(
        create_pod(&cluster, pod("secure", "ok", restricted("c"))).unwrap(),
        Vec::<String>::new()
    );
    assert!(cluster
        .get("core/pods", &("secure".into(), "ok".into()))
        .is_some());
    assert!(cluster
        .get("core/pods", &("secure".into(), "x".into()))
        .is_none());
}

#[test]
fn the_label_names_the_version_it_asked_for() {
    let cluster = TestCluster::new();
    namespace(
        &cluster,
        "old",
        json!({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.99"}),
    );
    let mut privileged = bare("c");
    privileged["securityContext"] = json!({"privileged": true});
    let error = create_pod(&cluster, pod("old", "p", privileged)).unwrap_err();
    assert_eq!(
        error.message,
        "pods \"p\" is forbidden: violates PodSecurity \"baseline:v1.99\": privileged (container \"c\" must not set securityContext.privileged=true)"
    );
}

#[test]
fn warn_returns_a_warning_and_admits() {
    let cluster = TestCluster::new();
    namespace(&cluster, "loose", json!({WARN: "restricted"}));
    let warnings = create_pod(&cluster, pod("loose", "x", bare("c"))).unwrap();
    assert_eq!(
        warnings,
        [format!(
            "would violate PodSecurity \"restricted:latest\": {BARE_POD_REASONS}"
        )]
    );
    assert!(cluster
        .get("core/pods", &("loose".into(), "x".into()))
        .is_some());
    // An enforce level implies the same warn level: nothing more to say once refused.
    namespace(
        &cluster,
        "both",
        json!({ENFORCE: "baseline", WARN: "restricted"}),
    );
    let warnings = create_pod(&cluster, pod("both", "b", bare("c"))).unwrap();
    assert_eq!(warnings.len(), 1);
}

#[test]
fn pod_controllers_are_warned_about_but_never_refused() {
    let cluster = TestCluster::new();
    namespace(&cluster, "secure", json!({ENFORCE: "restricted"}));
    let deployment = json!({
        "metadata": {"name": "web", "namespace": "secure"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [bare("c")]}},
        },
    });
    let created = create_as(&cluster, ("apps", "Deployment"), deployment, Some("alice")).unwrap();
    // Warn follows the enforce label.
    assert_eq!(
        created.warnings,
        [format!(
            "would violate PodSecurity \"restricted:latest\": {BARE_POD_REASONS}"
        )]
    );
    let cron = json!({
        "metadata": {"name": "nightly", "namespace": "secure"},
        "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}],
        }}}}},
    });
    let created = create_as(&cluster, ("batch", "CronJob"), cron, Some("alice")).unwrap();
    assert!(created.warnings[0].starts_with(
        "would violate PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true), "
    ));
}

#[test]
fn a_replica_set_in_a_restricted_namespace_records_the_refusal() {
    let cluster = TestCluster::new();
    namespace(&cluster, "secure", json!({ENFORCE: "restricted"}));
    cluster.create(
        "apps/replicasets",
        json!({
            "metadata": {"name": "web", "namespace": "secure"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [bare("c")]}},
            },
        }),
    );
    let controller = ReplicaController::replica_sets();
    cluster.reconcile(&controller, &("secure".into(), "web".into()));
    assert!(cluster.list("core/pods", "secure").is_empty());
    let refusal = cluster
        .list("core/events", "secure")
        .into_iter()
        .find(|e| e["reason"] == "FailedCreate" && e["involvedObject"]["name"] == "web")
        .and_then(|e| e["message"].as_str().map(str::to_owned))
        .expect("a FailedCreate event");
    let rest = refusal
        .strip_prefix("Error creating: pods \"web-")
        .expect(&refusal);
    let (suffix, why) = rest.split_once('"').unwrap();
    assert_eq!(suffix.len(), 5, "a generated name: {refusal}");
    assert_eq!(
        why,
        format!(" is forbidden: violates PodSecurity \"restricted:latest\": {BARE_POD_REASONS}")
    );
}

#[test]
fn bad_labels_are_refused_on_create_and_when_they_newly_go_bad() {
    let cluster = TestCluster::new();
    let resource = by_kind("", "Namespace").unwrap();
    let error = objects::create_object(
        cluster.api(),
        resource,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {ENFORCE: "foo"}}}),
        false,
    )
    .unwrap_err();
    assert_eq!(error.code, 422);
    assert_eq!(
        error.message,
        "Namespace \"x\" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"foo\": must be one of privileged, baseline, restricted"
    );
    namespace(&cluster, "x", json!({}));
    let error = label(&cluster, "x", json!({WARN: "v1.2"})).unwrap_err();
    assert_eq!(
        error.message,
        "Namespace \"x\" is invalid: metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: \"v1.2\": must be one of privileged, baseline, restricted"
    );
    // A label that was already bad (written before) does not block other changes...
    cluster
        .api()
        .store
        .update("core/namespaces", "", "x", |ns: &Value| {
            let mut ns = ns.clone();
            ns["metadata"]["labels"] = json!({ENFORCE: "strict"});
            Ok::<Value, crate::store::StoreError>(ns)
        })
        .unwrap();
    assert_eq!(
        label(&cluster, "x", json!({"team": "a"})).unwrap(),
        Vec::<String>::new()
    );
    // ...and fails closed: pods are held to restricted.
    let error = create_pod(&cluster, pod("x", "p", bare("c"))).unwrap_err();
    assert!(error
        .message
        .starts_with("pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": "));
    assert!(create_pod(&cluster, pod("x", "ok", restricted("c"))).is_ok());
    // A second bad label is a new error.
    assert_eq!(
        label(&cluster, "x", json!({AUDIT: "no"})).unwrap_err().code,
        422
    );
}

#[test]
fn a_stricter_enforce_label_dry_runs_the_existing_pods() {
    let cluster = TestCluster::new();
    namespace(&cluster, "apps", json!({}));
    for name in ["web-2", "web-1"] {
        create_pod(&cluster, pod("apps", name, bare("c"))).unwrap();
    }
    let mut privileged = bare("c");
    privileged["securityContext"] = json!({"privileged": true});
    create_pod(&cluster, pod("apps", "admin", privileged)).unwrap();
    create_pod(&cluster, pod("apps", "fine", restricted("c"))).unwrap();

    let warnings = label(&cluster, "apps", json!({ENFORCE: "restricted"})).unwrap();
    assert_eq!(
        warnings,
        [
            "existing pods in namespace \"apps\" violate the new PodSecurity enforce level \"restricted:latest\"",
            "admin: privileged, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile",
            "web-1 (and 1 other pod): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile",
        ]
    );
    // The label is set all the same, and the same level again says nothing.
    let ns = cluster
        .get("core/namespaces", &(String::new(), "apps".into()))
        .unwrap();
    assert_eq!(ns["metadata"]["labels"][ENFORCE], "restricted");
    assert!(label(&cluster, "apps", json!({WARN: "baseline"}))
        .unwrap()
        .is_empty());
    // Relaxing at the same version, or to privileged, checks nothing.
    assert!(label(&cluster, "apps", json!({ENFORCE: "baseline"}))
        .unwrap()
        .is_empty());
    assert!(label(&cluster, "apps", json!({ENFORCE: "privileged"}))
        .unwrap()
        .is_empty());
    // A new version is checked again even if laxer.
    assert_eq!(
        label(&cluster, "apps", json!({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.30"})).unwrap(),
        [
            "existing pods in namespace \"apps\" violate the new PodSecurity enforce level \"baseline:v1.30\"",
            "admin: privileged",
        ]
    );
}

#[test]
fn the_dry_run_counts_past_its_limit_and_puts_one_pod_per_controller_first() {
    let cluster = TestCluster::new();
    namespace(&cluster, "apps", json!({}));
    let owned = |name: &str, uid: &str| {
        let mut p = pod("apps", name, bare("c"));
        p["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true,
        }]);
        p
    };
    create_pod(&cluster, owned("a-1", "one")).unwrap();
    create_pod(&cluster, owned("a-2", "one")).unwrap();
    create_pod(&cluster, owned("b-1", "two")).unwrap();
    let enforce = LevelVersion {
        level: Level::Restricted,
        version: Version::Latest,
    };
    let config = Configuration::default();
    let warnings = namespace::check_existing_pods(
        cluster.api(),
        &config,
        "apps",
        enforce,
        2,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        warnings,
        [
            "new PodSecurity enforce level only checked against the first 2 of 3 existing pods",
            "existing pods in namespace \"apps\" violate the new PodSecurity enforce level \"restricted:latest\"",
            "a-1 (and 1 other pod): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile",
        ],
        "a-1 and b-1 (one per controller) before a-2"
    );
}

fn settings(configure: impl FnOnce(&mut Configuration)) -> ClusterSettings {
    let mut settings = ClusterSettings::default();
    configure(&mut settings.pod_security);
    settings
}

#[test]
fn exemptions_skip_evaluation() {
    let cluster = TestCluster::with_settings(settings(|c| {
        c.exemptions.namespaces = vec!["system".into()];
        c.exemptions.usernames = vec!["ci-bot".into()];
        c.exemptions.runtime_classes = vec!["kata".into()];
    }));
    namespace(&cluster, "system", json!({}));
    label(&cluster, "system", json!({ENFORCE: "restricted"})).unwrap();
    namespace(&cluster, "secure", json!({ENFORCE: "restricted"}));
    assert!(create_pod(&cluster, pod("system", "a", bare("c")))
        .unwrap()
        .is_empty());
    assert!(create_as(
        &cluster,
        ("", "Pod"),
        pod("secure", "b", bare("c")),
        Some("ci-bot")
    )
    .unwrap()
    .warnings
    .is_empty());
    assert_eq!(
        create_pod(&cluster, pod("secure", "c", bare("c")))
            .unwrap_err()
            .code,
        403
    );
    assert_eq!(
        create_as(&cluster, ("", "Pod"), pod("secure", "d", bare("c")), None)
            .unwrap_err()
            .code,
        403,
        "the master's own controllers are not exempt"
    );
    let mut kata = pod("secure", "e", bare("c"));
    kata["spec"]["runtimeClassName"] = json!("kata");
    assert!(create_pod(&cluster, kata).is_ok());

    // Labelling an exempt namespace with a new enforce level says the labels are ignored.
    assert_eq!(
        label(
            &cluster,
            "system",
            json!({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.30", WARN: "restricted"})
        )
        .unwrap(),
        ["namespace \"system\" is exempt from Pod Security, and the policy (enforce=baseline:v1.30, warn=restricted:latest) will be ignored"]
    );
    // A relaxation at the same version is not checked at all.
    assert!(label(&cluster, "system", json!({ENFORCE: "privileged"}))
        .unwrap()
        .is_empty());
}

#[test]
fn cluster_defaults_apply_where_no_label_is_set() {
    let cluster = TestCluster::with_settings(settings(|c| {
        c.defaults.enforce = LevelVersion {
            level: Level::Baseline,
            version: Version::Latest,
        };
        c.defaults.warn = LevelVersion {
            level: Level::Restricted,
            version: Version::Minor(30),
        };
    }));
    let mut privileged = bare("c");
    privileged["securityContext"] = json!({"privileged": true});
    let error = create_pod(&cluster, pod("default", "p", privileged)).unwrap_err();
    assert!(error.message.starts_with(
        "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": privileged"
    ));
    let warnings = create_pod(&cluster, pod("default", "b", bare("c"))).unwrap();
    assert_eq!(
        warnings,
        [format!(
            "would violate PodSecurity \"restricted:v1.30\": {BARE_POD_REASONS}"
        )]
    );
    // A namespace's labels override the defaults.
    namespace(
        &cluster,
        "free",
        json!({ENFORCE: "privileged", WARN: "privileged"}),
    );
    let mut privileged = bare("c");
    privileged["securityContext"] = json!({"privileged": true});
    assert!(create_pod(&cluster, pod("free", "p", privileged))
        .unwrap()
        .is_empty());
}

#[test]
fn only_significant_pod_updates_are_evaluated() {
    let cluster = TestCluster::new();
    namespace(&cluster, "apps", json!({}));
    create_pod(&cluster, pod("apps", "p", bare("c"))).unwrap();
    label(&cluster, "apps", json!({ENFORCE: "restricted"})).unwrap();
    let pods = by_kind("", "Pod").unwrap();
    let change = |f: fn(&mut Value)| {
        objects::update_object_as(
            cluster.api(),
            pods,
            "apps",
            "p",
            Part::Main,
            false,
            Requester {
                user: Some("alice"),
                subresource: None,
            },
            move |current| {
                let mut next = current.clone();
                f(&mut next);
                Ok(next)
            },
        )
    };
    assert!(change(|p| p["metadata"]["labels"] = json!({"a": "b"})).is_ok());
    let error = change(|p| p["spec"]["containers"][0]["image"] = json!("registry.local/app:2"))
        .unwrap_err();
    assert_eq!(error.code, 403);
    assert!(error
        .message
        .starts_with("pods \"p\" is forbidden: violates PodSecurity"));
    // Status updates (the node's) are never evaluated.
    cluster.update_status("core/pods", &("apps".into(), "p".into()), |p| {
        p["status"]["phase"] = json!("Running")
    });
}

#[test]
fn pods_without_policy_cost_no_evaluation() {
    let cluster = TestCluster::new();
    let mut privileged = bare("c");
    privileged["securityContext"] =
        json!({"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}});
    assert!(create_pod(&cluster, pod("default", "p", privileged))
        .unwrap()
        .is_empty());
}

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
const AUDIT: &str = "pod-security.kubernetes.io/audit";
const WARN: &str = "pod-security.kubernetes.io/warn";
