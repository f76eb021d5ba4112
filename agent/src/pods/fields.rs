//! Which PodSpec and Container fields the agent honours and which it ignores, in one table
//! that a unit test holds against k8s-openapi's field list.

use serde_json::Value;

/// What bramble does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The agent does what the field says (maybe in part; the note says which part).
    Honoured,
    /// The master acts on it (scheduler, admission, controllers); a node has nothing to do.
    Master,
    /// Nothing acts on it: a pod that sets it is warned.
    Ignored,
    /// Nothing acts on it, but the API default (this JSON) is harmless: warned otherwise.
    IgnoredUnless(&'static str),
}

use Support::*;

/// PodSpec fields (JSON names; a dotted name is a part of a field that is treated apart).
pub const POD_SPEC: &[(&str, Support, &str)] = &[
    (
        "activeDeadlineSeconds",
        Ignored,
        "pods are not stopped at a deadline",
    ),
    ("affinity", Master, "scheduler"),
    (
        "automountServiceAccountToken",
        Master,
        "admission adds the kube-api-access projected volume",
    ),
    ("containers", Honoured, ""),
    ("dnsConfig", Honoured, "resolv.conf"),
    ("dnsPolicy", Honoured, "resolv.conf"),
    ("enableServiceLinks", Honoured, "service variables"),
    (
        "ephemeralContainers",
        Ignored,
        "kubectl debug is not supported",
    ),
    ("evictionResponders", Ignored, ""),
    ("hostAliases", Honoured, "/etc/hosts"),
    (
        "hostIPC",
        Honoured,
        "containers stay in the node's IPC namespace",
    ),
    ("hostNetwork", Honoured, ""),
    (
        "hostPID",
        Honoured,
        "containers stay in the node's PID namespace",
    ),
    (
        "hostUsers",
        Honoured,
        "own user namespace with a 65536-id range, id-mapped root and volumes",
    ),
    ("hostname", Honoured, ""),
    ("hostnameOverride", Ignored, ""),
    ("imagePullSecrets", Honoured, ""),
    (
        "initContainers",
        Honoured,
        "in order; sidecars (restartPolicy) are not",
    ),
    (
        "nodeName",
        Master,
        "scheduler; the agent follows pods bound to it",
    ),
    ("nodeSelector", Master, "scheduler"),
    ("os", Ignored, ""),
    ("overhead", Master, "admission"),
    ("preemptionPolicy", Master, "scheduler"),
    ("priority", Master, "scheduler"),
    ("priorityClassName", Master, "scheduler"),
    ("readinessGates", Ignored, "Ready ignores them"),
    ("resourceClaims", Ignored, "no dynamic resource allocation"),
    (
        "resources",
        Ignored,
        "no pod-level limits; container limits apply",
    ),
    ("restartPolicy", Honoured, ""),
    ("runtimeClassName", Ignored, "one runtime"),
    ("schedulerName", Master, "scheduler"),
    ("schedulingGates", Master, "scheduler"),
    ("schedulingGroup", Master, "scheduler"),
    (
        "securityContext",
        Honoured,
        "runAsUser, runAsGroup, runAsNonRoot, supplementalGroups, supplementalGroupsPolicy, \
         seccompProfile, sysctls (the safe set and --allowed-unsafe-sysctls); appArmorProfile \
         (pods asking for one are refused where the kernel has no AppArmor; Localhost \
         profiles are applied, RuntimeDefault runs unconfined); fsGroup and \
         fsGroupChangePolicy on emptyDir, configMap, secret and local volumes (as kubelet: not \
         hostPath or NFS)",
    ),
    ("securityContext.seLinuxOptions", Ignored, "no SELinux"),
    ("securityContext.seLinuxChangePolicy", Ignored, "no SELinux"),
    ("serviceAccount", Master, "admission"),
    (
        "serviceAccountName",
        Honoured,
        "downward API; projected tokens are requested for it",
    ),
    ("setHostnameAsFQDN", Ignored, ""),
    ("shareProcessNamespace", Ignored, ""),
    ("subdomain", Honoured, "/etc/hosts"),
    ("terminationGracePeriodSeconds", Honoured, ""),
    ("tolerations", Master, "scheduler and taint eviction"),
    ("topologySpreadConstraints", Master, "scheduler"),
    (
        "volumes",
        Honoured,
        "emptyDir, hostPath, configMap, secret, nfs, persistentVolumeClaim (hostPath, local \
         and nfs PVs)",
    ),
];

/// Container fields, as [`POD_SPEC`].
pub const CONTAINER: &[(&str, Support, &str)] = &[
    ("args", Honoured, ""),
    ("command", Honoured, ""),
    ("env", Honoured, ""),
    ("envFrom", Honoured, ""),
    ("image", Honoured, ""),
    ("imagePullPolicy", Honoured, ""),
    ("lifecycle", Honoured, "preStop"),
    ("lifecycle.postStart", Ignored, ""),
    ("livenessProbe", Honoured, "exec, httpGet, tcpSocket"),
    ("name", Honoured, ""),
    (
        "ports",
        Honoured,
        "named probe ports; hostPort published with nftables DNAT",
    ),
    ("readinessProbe", Honoured, "exec, httpGet, tcpSocket"),
    ("resizePolicy", Ignored, ""),
    ("resources", Honoured, "cpu and memory limits, cpu requests"),
    (
        "restartPolicy",
        Ignored,
        "sidecar init containers run to completion like others",
    ),
    ("restartPolicyRules", Ignored, ""),
    (
        "securityContext",
        Honoured,
        "runAsUser, runAsGroup, runAsNonRoot, privileged, capabilities, \
         readOnlyRootFilesystem, allowPrivilegeEscalation, procMount, seccompProfile, \
         appArmorProfile (as the pod's)",
    ),
    ("securityContext.seLinuxOptions", Ignored, "no SELinux"),
    ("startupProbe", Honoured, "exec, httpGet, tcpSocket"),
    ("stdin", Ignored, "no attach"),
    ("stdinOnce", Ignored, "no attach"),
    (
        "terminationMessagePath",
        IgnoredUnless("\"/dev/termination-log\""),
        "",
    ),
    ("terminationMessagePolicy", IgnoredUnless("\"File\""), ""),
    ("tty", Honoured, ""),
    ("volumeDevices", Ignored, ""),
    (
        "volumeMounts",
        Honoured,
        "readOnly, subPath, subPathExpr; not mountPropagation or recursiveReadOnly",
    ),
    ("workingDir", Honoured, ""),
];

/// Whether a value says anything (not null, false, 0, "" or empty).
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn ignored_in(
    object: &Value,
    table: &[(&str, Support, &str)],
    prefix: &str,
    found: &mut Vec<String>,
) {
    for (path, support, _) in table {
        let value = path.split('.').fold(object, |v, key| &v[key]);
        let warn = match support {
            Ignored => is_set(value),
            IgnoredUnless(harmless) => {
                is_set(value)
                    && serde_json::from_str::<Value>(harmless).ok().as_ref() != Some(value)
            }
            Honoured | Master => false,
        };
        if warn {
            found.push(format!("{prefix}{path}"));
        }
    }
}

/// The fields a pod sets that nothing in bramble acts on (`spec` is the pod's spec as JSON).
pub fn ignored(spec: &Value) -> Vec<String> {
    let mut found = Vec::new();
    ignored_in(spec, POD_SPEC, "spec.", &mut found);
    for kind in ["initContainers", "containers"] {
        for container in spec[kind].as_array().into_iter().flatten() {
            let name = container["name"].as_str().unwrap_or("");
            ignored_in(
                container,
                CONTAINER,
                &format!("spec.{kind}[{name}]."),
                &mut found,
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use std::collections::BTreeSet;

    fn some<T: Default>() -> Option<T> {
        Some(T::default())
    }

    /// Every field set, so that it serializes. Written without `..Default::default()`: a field
    /// added to k8s-openapi stops this from compiling until the table says what happens to it.
    fn full_spec() -> PodSpec {
        PodSpec {
            active_deadline_seconds: some(),
            affinity: some(),
            automount_service_account_token: some(),
            containers: Vec::new(),
            dns_config: some(),
            dns_policy: some(),
            enable_service_links: some(),
            ephemeral_containers: some(),
            eviction_responders: some(),
            host_aliases: some(),
            host_ipc: some(),
            host_network: some(),
            host_pid: some(),
            host_users: some(),
            hostname: some(),
            hostname_override: some(),
            image_pull_secrets: some(),
            init_containers: some(),
            node_name: some(),
            node_selector: some(),
            os: some(),
            overhead: some(),
            preemption_policy: some(),
            priority: some(),
            priority_class_name: some(),
            readiness_gates: some(),
            resource_claims: some(),
            resources: some(),
            restart_policy: some(),
            runtime_class_name: some(),
            scheduler_name: some(),
            scheduling_gates: some(),
            scheduling_group: some(),
            security_context: some(),
            service_account: some(),
            service_account_name: some(),
            set_hostname_as_fqdn: some(),
            share_process_namespace: some(),
            subdomain: some(),
            termination_grace_period_seconds: some(),
            tolerations: some(),
            topology_spread_constraints: some(),
            volumes: some(),
        }
    }

    fn full_container() -> Container {
        Container {
            args: some(),
            command: some(),
            env: some(),
            env_from: some(),
            image: some(),
            image_pull_policy: some(),
            lifecycle: some(),
            liveness_probe: some(),
            name: String::new(),
            ports: some(),
            readiness_probe: some(),
            resize_policy: some(),
            resources: some(),
            restart_policy: some(),
            restart_policy_rules: some(),
            security_context: some(),
            startup_probe: some(),
            stdin: some(),
            stdin_once: some(),
            termination_message_path: some(),
            termination_message_policy: some(),
            tty: some(),
            volume_devices: some(),
            volume_mounts: some(),
            working_dir: some(),
        }
    }

    fn keys(value: Value) -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }

    fn top_level(table: &[(&str, Support, &str)]) -> BTreeSet<String> {
        table
            .iter()
            .map(|(path, _, _)| path.to_string())
            .filter(|path| !path.contains('.'))
            .collect()
    }

    #[test]
    fn the_table_names_every_pod_spec_field() {
        let fields = keys(serde_json::to_value(full_spec()).unwrap());
        assert_eq!(top_level(POD_SPEC), fields);
    }

    #[test]
    fn the_table_names_every_container_field() {
        let fields = keys(serde_json::to_value(full_container()).unwrap());
        assert_eq!(top_level(CONTAINER), fields);
    }

    #[test]
    fn dotted_rows_name_real_sub_fields() {
        let spec = serde_json::to_value(full_spec()).unwrap();
        let container = serde_json::to_value(full_container()).unwrap();
        for (table, object) in [(POD_SPEC, &spec), (CONTAINER, &container)] {
            for (path, _, _) in table.iter().filter(|(p, _, _)| p.contains('.')) {
                let (parent, _) = path.split_once('.').unwrap();
                assert!(object.get(parent).is_some(), "{path}");
            }
        }
    }

    #[test]
    fn ignored_fields_are_found_and_defaults_pass() {
        let spec = serde_json::json!({
            "shareProcessNamespace": true,
            "hostIPC": false,
            "schedulerName": "default-scheduler",
            "containers": [{
                "name": "web",
                "image": "nginx",
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "lifecycle": {"postStart": {"exec": {"command": ["true"]}}, "preStop": {"sleep": {"seconds": 1}}},
            }],
        });
        assert_eq!(
            ignored(&spec),
            [
                "spec.shareProcessNamespace",
                "spec.containers[web].lifecycle.postStart",
                "spec.containers[web].terminationMessagePolicy",
            ]
        );
    }
}
