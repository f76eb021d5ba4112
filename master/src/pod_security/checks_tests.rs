//! Each check's reason and detail, word for word as upstream's, the order of the results and
//! what changed between versions.

use super::*;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Value};

fn spec(value: Value) -> PodSpec {
    serde_json::from_value(value).expect("a pod spec")
}

/// The violations of `level:version` for a pod with `annotations` and `spec`.
fn violations_with(level_version: &str, annotations: Value, spec_json: Value) -> Vec<Violation> {
    let (level, version) = level_version.split_once(':').unwrap();
    let lv = LevelVersion {
        level: Level::parse(level).unwrap(),
        version: Version::parse(version).unwrap(),
    };
    let annotations: BTreeMap<String, String> = serde_json::from_value(annotations).unwrap();
    let spec = spec(spec_json);
    evaluate(lv, &PodView::new(&annotations, &spec)).violations
}

fn violations(level_version: &str, spec_json: Value) -> Vec<Violation> {
    violations_with(level_version, json!({}), spec_json)
}

/// The one violation with `reason`, as `reason (detail)`.
fn only(level_version: &str, spec_json: Value, reason: &str) -> String {
    let found: Vec<Violation> = violations(level_version, spec_json)
        .into_iter()
        .filter(|v| v.reason == reason)
        .collect();
    assert_eq!(found.len(), 1, "one {reason}: {found:?}");
    found[0].detail.clone()
}

/// A container that passes restricted.
fn good(name: &str) -> Value {
    json!({
        "name": name, "image": "x",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn with_context(name: &str, context: Value) -> Value {
    let mut c = good(name);
    let sc = c["securityContext"].as_object_mut().unwrap();
    for (k, v) in context.as_object().unwrap() {
        sc.insert(k.clone(), v.clone());
    }
    c
}

#[test]
fn a_bare_pod_gets_upstreams_four_restricted_reasons() {
    let pod = json!({"containers": [{"name": "c", "image": "x"}]});
    let outcome = Outcome {
        violations: violations("restricted:latest", pod.clone()),
    };
    assert_eq!(
        outcome.forbidden_detail(),
        "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
         unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
         runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
         seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert_eq!(
        outcome.forbidden_reason(),
        "allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
    assert!(violations("baseline:latest", pod.clone()).is_empty());
    assert!(violations("privileged:latest", pod).is_empty());
    assert!(violations("restricted:latest", json!({"containers": [good("c")]})).is_empty());
}

#[test]
fn a_privileged_container_comes_first() {
    let pod = json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]});
    let outcome = Outcome {
        violations: violations("restricted:latest", pod.clone()),
    };
    assert!(outcome.forbidden_detail().starts_with(
        "privileged (container \"c\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false ("
    ));
    assert_eq!(
        Outcome {
            violations: violations("baseline:v1.30", pod)
        }
        .forbidden_detail(),
        "privileged (container \"c\" must not set securityContext.privileged=true)"
    );
}

#[test]
fn results_follow_upstreams_check_order() {
    let pod = json!({
        "hostNetwork": true,
        "hostPID": true,
        "securityContext": {
            "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
            "seLinuxOptions": {"user": "u"},
            "appArmorProfile": {"type": "Unconfined"},
            "windowsOptions": {"hostProcess": true},
            "runAsUser": 0,
        },
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{
            "name": "c", "image": "x",
            "ports": [{"containerPort": 80, "hostPort": 80}],
            "livenessProbe": {"httpGet": {"host": "1.2.3.4", "port": 80}},
            "securityContext": {
                "privileged": true,
                "procMount": "Unmasked",
                "capabilities": {"add": ["SYS_ADMIN"]},
                "seccompProfile": {"type": "Unconfined"},
            },
        }],
    });
    let reasons = |lv: &str| -> Vec<String> {
        violations(lv, pod.clone())
            .into_iter()
            .map(|v| v.reason)
            .collect()
    };
    assert_eq!(
        reasons("baseline:latest"),
        [
            "forbidden AppArmor profile",
            "non-default capabilities",
            "host namespaces",
            "hostPath volumes",
            "hostPort",
            "probe or lifecycle host",
            "privileged",
            "procMount",
            "seLinuxOptions",
            "seccompProfile",
            "forbidden sysctls",
            "hostProcess",
        ]
    );
    assert_eq!(
        reasons("restricted:latest"),
        [
            "forbidden AppArmor profile",
            "host namespaces",
            "hostPort",
            "probe or lifecycle host",
            "privileged",
            "seLinuxOptions",
            "forbidden sysctls",
            "hostProcess",
            "allowPrivilegeEscalation != false",
            "unrestricted capabilities",
            "procMount",
            "restricted volume types",
            "runAsNonRoot != true",
            "runAsUser=0",
            "seccompProfile",
        ]
    );
}

#[test]
fn app_armor() {
    let pod = json!({
        "securityContext": {"appArmorProfile": {"type": "Unconfined"}},
        "containers": [
            with_context("a", json!({"appArmorProfile": {"type": "Unconfined"}})),
            with_context("b", json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}})),
        ],
    });
    assert_eq!(
        only("baseline:latest", pod, "forbidden AppArmor profile"),
        "pod and container \"a\" must not set AppArmor profile type to \"Unconfined\""
    );
    let found = violations_with(
        "baseline:latest",
        json!({
            "container.apparmor.security.beta.kubernetes.io/b": "unconfined",
            "container.apparmor.security.beta.kubernetes.io/a": "localhost/x",
            "container.apparmor.security.beta.kubernetes.io/c": "runtime/default",
        }),
        json!({"containers": [with_context("a", json!({"appArmorProfile": {"type": "Foo"}}))]}),
    );
    assert_eq!(found[0].reason, "forbidden AppArmor profiles");
    assert_eq!(
        found[0].detail,
        "container \"a\" and annotation must not set AppArmor profile type to \"Foo\", \"container.apparmor.security.beta.kubernetes.io/b=\"unconfined\"\""
    );
}

#[test]
fn capabilities() {
    let pod = json!({"containers": [
        with_context("a", json!({"capabilities": {"add": ["NET_RAW", "CHOWN"], "drop": ["ALL"]}})),
        with_context("b", json!({"capabilities": {"add": ["SYS_ADMIN", "CAP_CHOWN"]}})),
        with_context("c", json!({"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}})),
    ]});
    assert_eq!(
        only("baseline:latest", pod.clone(), "non-default capabilities"),
        "containers \"a\", \"b\" must not include \"CAP_CHOWN\", \"NET_RAW\", \"SYS_ADMIN\" in securityContext.capabilities.add"
    );
    assert_eq!(
        only("restricted:latest", pod.clone(), "unrestricted capabilities"),
        "container \"b\" must set securityContext.capabilities.drop=[\"ALL\"]; \
         containers \"a\", \"b\" must not include \"CAP_CHOWN\", \"CHOWN\", \"NET_RAW\", \"SYS_ADMIN\" in securityContext.capabilities.add"
    );
    // Before v1.22 restricted used the baseline capabilities check.
    assert_eq!(
        only("restricted:v1.21", pod, "non-default capabilities"),
        "containers \"a\", \"b\" must not include \"CAP_CHOWN\", \"NET_RAW\", \"SYS_ADMIN\" in securityContext.capabilities.add"
    );
}

#[test]
fn host_namespaces_paths_and_ports() {
    let pod = json!({
        "hostIPC": true,
        "hostNetwork": false,
        "volumes": [
            {"name": "a", "hostPath": {"path": "/a"}},
            {"name": "b", "emptyDir": {}},
            {"name": "c", "hostPath": {"path": "/c"}},
        ],
        "initContainers": [{"name": "i", "image": "x", "ports": [{"containerPort": 1, "hostPort": 9090}]}],
        "containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 1, "hostPort": 8080}, {"containerPort": 2, "hostPort": 0}]},
            {"name": "b", "image": "x", "ports": [{"containerPort": 3}]},
        ],
    });
    assert_eq!(
        only("baseline:latest", pod.clone(), "host namespaces"),
        "hostIPC=true"
    );
    assert_eq!(
        only("baseline:latest", pod.clone(), "hostPath volumes"),
        "volumes \"a\", \"c\""
    );
    assert_eq!(
        only("baseline:latest", pod.clone(), "hostPort"),
        "containers \"i\", \"a\" use hostPorts 8080, 9090"
    );
    let one = json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 1, "hostPort": 10000}]}]});
    assert_eq!(
        only("baseline:latest", one, "hostPort"),
        "container \"a\" uses hostPort 10000"
    );
    assert_eq!(
        only("restricted:latest", pod, "restricted volume types"),
        "volumes \"a\", \"c\" use restricted volume type \"hostPath\""
    );
}

#[test]
fn probe_and_lifecycle_hosts_from_v1_34() {
    let pod = json!({"containers": [
        {"name": "b", "image": "x",
         "readinessProbe": {"tcpSocket": {"host": "5.6.7.8", "port": 1}},
         "lifecycle": {"preStop": {"httpGet": {"host": "1.2.3.4", "port": 1}}}},
        {"name": "a", "image": "x", "startupProbe": {"httpGet": {"host": "1.2.3.4", "port": 1}}},
        {"name": "c", "image": "x", "livenessProbe": {"httpGet": {"host": "", "port": 1}}},
    ]});
    assert_eq!(
        only("baseline:v1.34", pod.clone(), "probe or lifecycle host"),
        "containers \"a\", \"b\" use probe or lifecycle hosts \"1.2.3.4\", \"5.6.7.8\""
    );
    assert!(violations("baseline:v1.33", pod).is_empty());
}

#[test]
fn proc_mount_and_user_namespaces() {
    let containers = json!([
        with_context("a", json!({"procMount": "Unmasked"})),
        with_context("b", json!({"procMount": "Default"})),
    ]);
    let host = json!({"containers": containers});
    let userns = json!({"hostUsers": false, "containers": containers});
    let detail = "container \"a\" must not set securityContext.procMount to \"Unmasked\"";
    assert_eq!(only("baseline:latest", host.clone(), "procMount"), detail);
    assert_eq!(only("baseline:v1.34", userns.clone(), "procMount"), detail);
    assert!(
        violations("baseline:v1.35", userns.clone()).is_empty(),
        "relaxed"
    );
    // Restricted keeps refusing it: procMount_restricted replaces the relaxed check.
    assert_eq!(only("restricted:latest", userns, "procMount"), detail);
    assert_eq!(only("restricted:latest", host, "procMount"), detail);
}

#[test]
fn run_as_non_root_and_run_as_user() {
    let implicit = json!({"containers": [
        with_context("a", json!({"runAsNonRoot": null})),
        with_context("b", json!({"runAsNonRoot": null})),
    ]});
    assert_eq!(
        only(
            "restricted:latest",
            implicit.clone(),
            "runAsNonRoot != true"
        ),
        "pod or containers \"a\", \"b\" must set securityContext.runAsNonRoot=true"
    );
    let mut covered = implicit.clone();
    covered["securityContext"] = json!({"runAsNonRoot": true});
    assert!(violations("restricted:latest", covered).is_empty());

    let explicit = json!({
        "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
        "containers": [
            with_context("a", json!({"runAsNonRoot": false, "runAsUser": 0})),
            with_context("b", json!({"runAsNonRoot": null, "runAsUser": 1000})),
        ],
    });
    assert_eq!(
        only(
            "restricted:latest",
            explicit.clone(),
            "runAsNonRoot != true"
        ),
        "pod and container \"a\" must not set securityContext.runAsNonRoot=false"
    );
    assert_eq!(
        only("restricted:latest", explicit.clone(), "runAsUser=0"),
        "pod and container \"a\" must not set runAsUser=0"
    );
    // runAsUser=0 is checked from v1.23.
    assert!(violations("restricted:v1.22", explicit.clone())
        .iter()
        .all(|v| v.reason != "runAsUser=0"));
    // In a user namespace both are allowed from v1.35.
    let mut userns = explicit;
    userns["hostUsers"] = json!(false);
    assert!(violations("restricted:v1.35", userns.clone()).is_empty());
    let old: Vec<String> = violations("restricted:v1.34", userns)
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(old, ["runAsNonRoot != true", "runAsUser=0"]);
}

#[test]
fn se_linux_options() {
    let pod = json!({
        "securityContext": {"seLinuxOptions": {"type": "spc_t"}},
        "containers": [
            with_context("a", json!({"seLinuxOptions": {"user": "u", "role": "r"}})),
            with_context("b", json!({"seLinuxOptions": {"type": "container_engine_t"}})),
        ],
    });
    assert_eq!(
        only("baseline:latest", pod.clone(), "seLinuxOptions"),
        "pod and container \"a\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set; role may not be set"
    );
    assert_eq!(
        only("baseline:v1.30", pod, "seLinuxOptions"),
        "pod and containers \"a\", \"b\" set forbidden securityContext.seLinuxOptions: types \"container_engine_t\", \"spc_t\"; user may not be set; role may not be set"
    );
}

#[test]
fn seccomp() {
    let explicit = json!({
        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
        "containers": [
            with_context("a", json!({"seccompProfile": {"type": "Unconfined"}})),
            with_context("b", json!({"seccompProfile": null})),
        ],
    });
    let detail = "pod and container \"a\" must not set securityContext.seccompProfile.type to \"Unconfined\"";
    assert_eq!(
        only("baseline:latest", explicit.clone(), "seccompProfile"),
        detail
    );
    assert_eq!(
        only("restricted:latest", explicit, "seccompProfile"),
        detail
    );
    let implicit = json!({"containers": [
        with_context("a", json!({"seccompProfile": null})),
        with_context("b", json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}})),
    ]});
    assert_eq!(
        only("restricted:latest", implicit.clone(), "seccompProfile"),
        "pod or container \"a\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\""
    );
    assert!(violations("baseline:latest", implicit.clone()).is_empty());
    // Windows pods need neither seccomp nor the Linux-only restricted fields from v1.25.
    let mut windows = json!({"os": {"name": "windows"}, "containers": [{"name": "w", "image": "x", "securityContext": {"runAsNonRoot": true}}]});
    assert!(violations("restricted:v1.25", windows.clone()).is_empty());
    assert_eq!(violations("restricted:v1.24", windows.clone()).len(), 3);
    windows["os"]["name"] = json!("linux");
    assert_eq!(violations("restricted:latest", windows).len(), 3);
    // Before v1.19 seccomp came from annotations.
    let annotated = violations_with(
        "baseline:v1.18",
        json!({
            "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
            "container.seccomp.security.alpha.kubernetes.io/a": "docker/default",
            "container.seccomp.security.alpha.kubernetes.io/b": "foo",
        }),
        json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]}),
    );
    assert_eq!(annotated[0].reason, "seccompProfile");
    assert_eq!(
        annotated[0].detail,
        "forbidden annotations container.seccomp.security.alpha.kubernetes.io/b=\"foo\", seccomp.security.alpha.kubernetes.io/pod=\"unconfined\""
    );
}

#[test]
fn sysctls_per_version() {
    let pod = |name: &str| {
        json!({
            "securityContext": {"sysctls": [
                {"name": name, "value": "1"},
                {"name": "kernel.msgmax", "value": "1"},
            ]},
            "containers": [good("c")],
        })
    };
    let detail = |lv: &str, name: &str| only(lv, pod(name), "forbidden sysctls");
    let both = |name: &str| format!("{name}, kernel.msgmax");
    for (name, since) in [
        ("net.ipv4.ip_unprivileged_port_start", 0),
        ("net.ipv4.ip_local_reserved_ports", 27),
        ("net.ipv4.tcp_keepalive_probes", 29),
        ("net.ipv4.tcp_wmem", 32),
        ("net.ipv4.tcp_notsent_lowat", 37),
        ("net.ipv4.tcp_slow_start_after_idle", 37),
    ] {
        assert_eq!(
            detail(&format!("baseline:v1.{since}"), name),
            "kernel.msgmax"
        );
        assert_eq!(detail("restricted:latest", name), "kernel.msgmax");
        if since > 0 {
            assert_eq!(
                detail(&format!("baseline:v1.{}", since - 1), name),
                both(name)
            );
        }
    }
    // Versions newer than the newest checks mean the newest.
    assert_eq!(
        detail("baseline:v1.99", "net.ipv4.tcp_notsent_lowat"),
        "kernel.msgmax"
    );
    assert_eq!(newest_checks(), 37);
}

#[test]
fn privileged_windows_host_process_and_privilege_escalation() {
    let pod = json!({
        "initContainers": [with_context("i", json!({"privileged": true, "allowPrivilegeEscalation": true}))],
        "containers": [
            with_context("a", json!({"privileged": true, "windowsOptions": {"hostProcess": true}})),
            with_context("b", json!({"allowPrivilegeEscalation": null})),
        ],
        "ephemeralContainers": [with_context("e", json!({"privileged": true}))],
    });
    assert_eq!(
        only("baseline:latest", pod.clone(), "privileged"),
        "containers \"i\", \"a\", \"e\" must not set securityContext.privileged=true"
    );
    assert_eq!(
        only("baseline:latest", pod.clone(), "hostProcess"),
        "container \"a\" must not set securityContext.windowsOptions.hostProcess=true"
    );
    assert_eq!(
        only(
            "restricted:latest",
            pod,
            "allowPrivilegeEscalation != false"
        ),
        "containers \"i\", \"b\" must set securityContext.allowPrivilegeEscalation=false"
    );
    let pod_level = json!({"securityContext": {"windowsOptions": {"hostProcess": true}}, "containers": [good("c")]});
    assert_eq!(
        only("baseline:latest", pod_level, "hostProcess"),
        "pod must not set securityContext.windowsOptions.hostProcess=true"
    );
}

#[test]
fn restricted_volume_types() {
    let pod = json!({
        "volumes": [
            {"name": "a", "nfs": {"server": "s", "path": "/"}},
            {"name": "b", "configMap": {"name": "x"}},
            {"name": "c"},
            {"name": "d", "image": {"reference": "r"}},
            {"name": "e", "projected": {"sources": []}},
        ],
        "containers": [good("c")],
    });
    assert_eq!(
        only("restricted:latest", pod.clone(), "restricted volume types"),
        "volumes \"a\", \"c\" use restricted volume types \"nfs\", \"unknown\""
    );
    assert!(violations("baseline:latest", pod).is_empty());
}
