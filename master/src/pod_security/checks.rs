//! The Pod Security Standards' checks, each with the versions it changed in, and the evaluator
//! that picks the checks of a level at a version (upstream's `pod-security-admission/policy`).
//!
//! A check reads the typed pod (metadata annotations and spec) and says why it refuses, in
//! upstream's exact words: a short reason (`runAsNonRoot != true`) and a detail naming the
//! containers, volumes or values (`pod or container "web" must set
//! securityContext.runAsNonRoot=true`). Results come in upstream's order: baseline check IDs
//! sorted byte-wise, then restricted ones; a restricted check may replace baseline ones
//! (`restrictedVolumes` replaces `hostPathVolumes`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ContainerPort, Lifecycle, LifecycleHandler, PodSpec, Probe, SecurityContext,
};

use super::policy::{go_quote, Level, LevelVersion, Version};

/// Why one check refuses a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The short reason (`privileged`).
    pub reason: String,
    /// What exactly (`container "c" must not set securityContext.privileged=true`); may be empty.
    pub detail: String,
}

/// The refusals of all the checks of a level, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One per failed check.
    pub violations: Vec<Violation>,
}

impl Outcome {
    /// Nothing refused.
    pub fn allowed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The reasons, `, `-joined (what the namespace dry-run reports per pod).
    pub fn forbidden_reason(&self) -> String {
        let reasons: Vec<&str> = self.violations.iter().map(|v| v.reason.as_str()).collect();
        reasons.join(", ")
    }

    /// `reason (detail), reason, ...` (what denials and warnings say).
    pub fn forbidden_detail(&self) -> String {
        let parts: Vec<String> = self
            .violations
            .iter()
            .map(|v| {
                if v.detail.is_empty() {
                    v.reason.clone()
                } else {
                    format!("{} ({})", v.reason, v.detail)
                }
            })
            .collect();
        parts.join(", ")
    }
}

/// The parts of a pod the checks read.
pub struct PodView<'a> {
    /// `metadata.annotations` (AppArmor and seccomp annotations).
    pub annotations: &'a BTreeMap<String, String>,
    /// The spec.
    pub spec: &'a PodSpec,
    containers: Vec<ContainerView<'a>>,
}

/// What the checks read of a container, init container or ephemeral container alike.
struct ContainerView<'a> {
    name: &'a str,
    security_context: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
    probes: [Option<&'a Probe>; 3],
    lifecycle: Option<&'a Lifecycle>,
}

impl<'a> PodView<'a> {
    /// A view of a pod; containers in upstream's visiting order: init, regular, ephemeral.
    pub fn new(annotations: &'a BTreeMap<String, String>, spec: &'a PodSpec) -> Self {
        let mut containers = Vec::new();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            containers.push(ContainerView {
                name: &c.name,
                security_context: c.security_context.as_ref(),
                ports: c.ports.as_deref().unwrap_or_default(),
                probes: [
                    c.liveness_probe.as_ref(),
                    c.readiness_probe.as_ref(),
                    c.startup_probe.as_ref(),
                ],
                lifecycle: c.lifecycle.as_ref(),
            });
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            containers.push(ContainerView {
                name: &c.name,
                security_context: c.security_context.as_ref(),
                ports: c.ports.as_deref().unwrap_or_default(),
                probes: [
                    c.liveness_probe.as_ref(),
                    c.readiness_probe.as_ref(),
                    c.startup_probe.as_ref(),
                ],
                lifecycle: c.lifecycle.as_ref(),
            });
        }
        PodView {
            annotations,
            spec,
            containers,
        }
    }

    fn pod_context(&self) -> Option<&k8s_openapi::api::core::v1::PodSecurityContext> {
        self.spec.security_context.as_ref()
    }

    fn windows(&self) -> bool {
        self.spec.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// `hostUsers: false`: the pod runs in a user namespace (relaxations from v1.35).
    fn in_user_namespace(&self) -> bool {
        self.spec.host_users == Some(false)
    }
}

type CheckFn = fn(&PodView) -> Option<Violation>;

/// One version of a check: from which release it applies, and which baseline checks it replaces.
struct Versioned {
    minimum: u64,
    check: CheckFn,
    overrides: &'static [&'static str],
}

/// A check and its versions, oldest first.
struct Check {
    id: &'static str,
    level: Level,
    versions: &'static [Versioned],
}

const fn v(minimum: u64, check: CheckFn) -> Versioned {
    Versioned {
        minimum,
        check,
        overrides: &[],
    }
}

const fn v_over(minimum: u64, check: CheckFn, overrides: &'static [&'static str]) -> Versioned {
    Versioned {
        minimum,
        check,
        overrides,
    }
}

/// Every check upstream registers by default.
const CHECKS: &[Check] = &[
    Check {
        id: "allowPrivilegeEscalation",
        level: Level::Restricted,
        versions: &[
            v(8, allow_privilege_escalation),
            v(25, allow_privilege_escalation_unless_windows),
        ],
    },
    Check {
        id: "appArmorProfile",
        level: Level::Baseline,
        versions: &[v(0, app_armor_profile)],
    },
    Check {
        id: "capabilities_baseline",
        level: Level::Baseline,
        versions: &[v(0, capabilities_baseline)],
    },
    Check {
        id: "capabilities_restricted",
        level: Level::Restricted,
        versions: &[
            v_over(22, capabilities_restricted, &["capabilities_baseline"]),
            v_over(
                25,
                capabilities_restricted_unless_windows,
                &["capabilities_baseline"],
            ),
        ],
    },
    Check {
        id: "hostNamespaces",
        level: Level::Baseline,
        versions: &[v(0, host_namespaces)],
    },
    Check {
        id: "hostPathVolumes",
        level: Level::Baseline,
        versions: &[v(0, host_path_volumes)],
    },
    Check {
        id: "hostPorts",
        level: Level::Baseline,
        versions: &[v(0, host_ports)],
    },
    Check {
        id: "hostProbesAndHostLifecycle",
        level: Level::Baseline,
        versions: &[v(34, host_probes_and_lifecycle)],
    },
    Check {
        id: "privileged",
        level: Level::Baseline,
        versions: &[v(0, privileged)],
    },
    Check {
        id: "procMount",
        level: Level::Baseline,
        versions: &[v(0, proc_mount), v(35, proc_mount_unless_user_namespace)],
    },
    Check {
        id: "procMount_restricted",
        level: Level::Restricted,
        versions: &[v_over(35, proc_mount, &["procMount"])],
    },
    Check {
        id: "restrictedVolumes",
        level: Level::Restricted,
        versions: &[v_over(0, restricted_volumes, &["hostPathVolumes"])],
    },
    Check {
        id: "runAsNonRoot",
        level: Level::Restricted,
        versions: &[
            v(0, run_as_non_root),
            v(35, run_as_non_root_unless_user_namespace),
        ],
    },
    Check {
        id: "runAsUser",
        level: Level::Restricted,
        versions: &[v(23, run_as_user), v(35, run_as_user_unless_user_namespace)],
    },
    Check {
        id: "seLinuxOptions",
        level: Level::Baseline,
        versions: &[v(0, se_linux_options_1_0), v(31, se_linux_options_1_31)],
    },
    Check {
        id: "seccompProfile_baseline",
        level: Level::Baseline,
        versions: &[v(0, seccomp_annotations), v(19, seccomp_profile_baseline)],
    },
    Check {
        id: "seccompProfile_restricted",
        level: Level::Restricted,
        versions: &[
            v_over(19, seccomp_profile_restricted, &["seccompProfile_baseline"]),
            v_over(
                25,
                seccomp_profile_restricted_unless_windows,
                &["seccompProfile_baseline"],
            ),
        ],
    },
    Check {
        id: "sysctls",
        level: Level::Baseline,
        versions: &[
            v(0, sysctls_1_0),
            v(27, sysctls_1_27),
            v(29, sysctls_1_29),
            v(32, sysctls_1_32),
            v(37, sysctls_1_37),
        ],
    },
    Check {
        id: "windowsHostProcess",
        level: Level::Baseline,
        versions: &[v(0, windows_host_process)],
    },
];

/// The newest version any check changed in: `latest`, and anything newer, means this one.
pub fn newest_checks() -> u64 {
    CHECKS
        .iter()
        .filter_map(|c| c.versions.last())
        .map(|v| v.minimum)
        .max()
        .unwrap_or(0)
}

/// The version of a check in force at `minor`, if the check exists by then.
fn at(check: &Check, minor: u64) -> Option<&Versioned> {
    check.versions.iter().rev().find(|v| v.minimum <= minor)
}

/// The checks of a level at a version, in upstream's order (baseline IDs sorted, then
/// restricted IDs sorted), overridden baseline checks left out.
fn checks_for(level_version: LevelVersion) -> Vec<CheckFn> {
    let newest = newest_checks();
    let minor = match level_version.version {
        Version::Latest => newest,
        Version::Minor(minor) => minor.min(newest),
    };
    let mut baseline: Vec<(&str, &Versioned)> = Vec::new();
    let mut restricted: Vec<(&str, &Versioned)> = Vec::new();
    for check in CHECKS {
        if let Some(versioned) = at(check, minor) {
            match check.level {
                Level::Restricted => restricted.push((check.id, versioned)),
                _ => baseline.push((check.id, versioned)),
            }
        }
    }
    baseline.sort_by(|a, b| a.0.cmp(b.0));
    restricted.sort_by(|a, b| a.0.cmp(b.0));
    match level_version.level {
        Level::Privileged => Vec::new(),
        Level::Baseline => baseline.iter().map(|(_, v)| v.check).collect(),
        Level::Restricted => {
            let overridden: BTreeSet<&str> = restricted
                .iter()
                .flat_map(|(_, v)| v.overrides.iter().copied())
                .collect();
            baseline
                .iter()
                .filter(|(id, _)| !overridden.contains(id))
                .chain(restricted.iter())
                .map(|(_, v)| v.check)
                .collect()
        }
    }
}

/// Runs the checks of `level_version` on a pod.
pub fn evaluate(level_version: LevelVersion, pod: &PodView) -> Outcome {
    let violations = checks_for(level_version)
        .into_iter()
        .filter_map(|check| check(pod))
        .map(|mut violation| {
            if violation.reason.is_empty() {
                violation.reason = "unknown forbidden reason".to_owned();
            }
            violation
        })
        .collect();
    Outcome { violations }
}

// ----- helpers -------------------------------------------------------------------------------

/// `"a", "b"`.
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, count: usize) -> &'a str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase<S: AsRef<str>>(names: &[S]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn violation(reason: &str, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.to_owned(),
        detail,
    })
}

// ----- baseline ------------------------------------------------------------------------------

fn app_armor_profile(pod: &PodView) -> Option<Violation> {
    let allowed_type = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut bad_setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(profile) = pod.pod_context().and_then(|s| s.app_armor_profile.as_ref()) {
        if !allowed_type(&profile.type_) {
            bad_setters.push("pod".to_owned());
            bad_values.insert(profile.type_.clone());
        }
    }
    let mut bad_containers = Vec::new();
    for c in &pod.containers {
        if let Some(profile) = c
            .security_context
            .and_then(|s| s.app_armor_profile.as_ref())
        {
            if !allowed_type(&profile.type_) {
                bad_containers.push(c.name);
                bad_values.insert(profile.type_.clone());
            }
        }
    }
    if !bad_containers.is_empty() {
        bad_setters.push(containers_phrase(&bad_containers));
    }
    let mut forbidden_annotations: Vec<String> = pod
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .filter(|(_, v)| {
            !(v.is_empty() || v.as_str() == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    let mut bad_value_list: Vec<String> = bad_values.into_iter().collect();
    if !forbidden_annotations.is_empty() {
        forbidden_annotations.sort();
        bad_setters
            .push(pluralize("annotation", "annotations", forbidden_annotations.len()).to_owned());
        bad_value_list.extend(forbidden_annotations);
    }
    if bad_setters.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            bad_value_list.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            bad_setters.join(" and "),
            join_quote(&bad_value_list)
        ),
    )
}

/// Capabilities a baseline container may add (containerd's defaults without NET_RAW).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_baseline(pod: &PodView) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut non_default = BTreeSet::new();
    for c in &pod.containers {
        let Some(capabilities) = c.security_context.and_then(|s| s.capabilities.as_ref()) else {
            continue;
        };
        let mut valid = true;
        for added in capabilities.add.iter().flatten() {
            if !BASELINE_CAPABILITIES.contains(&added.as_str()) {
                valid = false;
                non_default.insert(added.as_str());
            }
        }
        if !valid {
            bad_containers.push(c.name);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let non_default: Vec<&str> = non_default.into_iter().collect();
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&non_default)
        ),
    )
}

fn host_namespaces(pod: &PodView) -> Option<Violation> {
    let mut shared = Vec::new();
    if pod.spec.host_network == Some(true) {
        shared.push("hostNetwork=true");
    }
    if pod.spec.host_pid == Some(true) {
        shared.push("hostPID=true");
    }
    if pod.spec.host_ipc == Some(true) {
        shared.push("hostIPC=true");
    }
    if shared.is_empty() {
        return None;
    }
    violation("host namespaces", shared.join(", "))
}

fn host_path_volumes(pod: &PodView) -> Option<Violation> {
    let host_volumes: Vec<&str> = pod
        .spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    if host_volumes.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", host_volumes.len()),
            join_quote(&host_volumes)
        ),
    )
}

fn host_ports(pod: &PodView) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut ports = BTreeSet::new();
    for c in &pod.containers {
        let mut valid = true;
        for port in c.ports {
            if let Some(host_port) = port.host_port.filter(|p| *p != 0) {
                valid = false;
                ports.insert(host_port.to_string());
            }
        }
        if !valid {
            bad_containers.push(c.name);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn host_probes_and_lifecycle(pod: &PodView) -> Option<Violation> {
    fn probe_hosts(probe: Option<&Probe>) -> Vec<&str> {
        let Some(probe) = probe else {
            return Vec::new();
        };
        let http = probe.http_get.as_ref().and_then(|h| h.host.as_deref());
        let tcp = probe.tcp_socket.as_ref().and_then(|t| t.host.as_deref());
        [http, tcp]
            .into_iter()
            .flatten()
            .filter(|h| !h.is_empty())
            .collect()
    }
    fn handler_hosts(handler: Option<&LifecycleHandler>) -> Vec<&str> {
        let Some(handler) = handler else {
            return Vec::new();
        };
        let http = handler.http_get.as_ref().and_then(|h| h.host.as_deref());
        let tcp = handler.tcp_socket.as_ref().and_then(|t| t.host.as_deref());
        [http, tcp]
            .into_iter()
            .flatten()
            .filter(|h| !h.is_empty())
            .collect()
    }
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in &pod.containers {
        let mut found: Vec<&str> = c.probes.iter().flat_map(|p| probe_hosts(*p)).collect();
        if let Some(lifecycle) = c.lifecycle {
            found.extend(handler_hosts(lifecycle.post_start.as_ref()));
            found.extend(handler_hosts(lifecycle.pre_stop.as_ref()));
        }
        if !found.is_empty() {
            bad_containers.insert(c.name);
            hosts.extend(found);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let bad_containers: Vec<&str> = bad_containers.into_iter().collect();
    let hosts: Vec<&str> = hosts.into_iter().collect();
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

fn privileged(pod: &PodView) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| c.security_context.and_then(|s| s.privileged) == Some(true))
        .map(|c| c.name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

fn proc_mount(pod: &PodView) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut types = BTreeSet::new();
    for c in &pod.containers {
        if let Some(mount) = c.security_context.and_then(|s| s.proc_mount.as_deref()) {
            if mount != "Default" {
                bad_containers.push(c.name);
                types.insert(mount);
            }
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let types: Vec<&str> = types.into_iter().collect();
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad_containers),
            join_quote(&types)
        ),
    )
}

fn proc_mount_unless_user_namespace(pod: &PodView) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    proc_mount(pod)
}

fn se_linux_options_with(pod: &PodView, allowed_types: &[&str]) -> Option<Violation> {
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |options: &k8s_openapi::api::core::v1::SELinuxOptions| {
        let mut ok = true;
        let kind = options.type_.as_deref().unwrap_or_default();
        if !allowed_types.contains(&kind) {
            ok = false;
            bad_types.insert(kind.to_owned());
        }
        if options.user.as_deref().is_some_and(|u| !u.is_empty()) {
            ok = false;
            set_user = true;
        }
        if options.role.as_deref().is_some_and(|r| !r.is_empty()) {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut bad_setters = Vec::new();
    if let Some(options) = pod.pod_context().and_then(|s| s.se_linux_options.as_ref()) {
        if !valid(options) {
            bad_setters.push("pod".to_owned());
        }
    }
    let mut bad_containers = Vec::new();
    for c in &pod.containers {
        if let Some(options) = c.security_context.and_then(|s| s.se_linux_options.as_ref()) {
            if !valid(options) {
                bad_containers.push(c.name);
            }
        }
    }
    if !bad_containers.is_empty() {
        bad_setters.push(containers_phrase(&bad_containers));
    }
    if bad_setters.is_empty() {
        return None;
    }
    let mut bad_data = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        bad_data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if set_user {
        bad_data.push("user may not be set".to_owned());
    }
    if set_role {
        bad_data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            bad_setters.join(" and "),
            bad_data.join("; ")
        ),
    )
}

fn se_linux_options_1_0(pod: &PodView) -> Option<Violation> {
    se_linux_options_with(
        pod,
        &["", "container_t", "container_init_t", "container_kvm_t"],
    )
}

fn se_linux_options_1_31(pod: &PodView) -> Option<Violation> {
    se_linux_options_with(
        pod,
        &[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ],
    )
}

/// Before v1.19 seccomp was chosen by annotations.
fn seccomp_annotations(pod: &PodView) -> Option<Violation> {
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let mut forbidden = BTreeSet::new();
    let pod_key = "seccomp.security.alpha.kubernetes.io/pod";
    if let Some(value) = pod.annotations.get(pod_key) {
        if !valid(value) {
            forbidden.insert(format!("{pod_key}={}", go_quote(value)));
        }
    }
    for c in &pod.containers {
        let key = format!("container.seccomp.security.alpha.kubernetes.io/{}", c.name);
        if let Some(value) = pod.annotations.get(&key) {
            if !valid(value) {
                forbidden.insert(format!("{key}={}", go_quote(value)));
            }
        }
    }
    if forbidden.is_empty() {
        return None;
    }
    let forbidden: Vec<String> = forbidden.into_iter().collect();
    violation(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            pluralize("annotation", "annotations", forbidden.len()),
            forbidden.join(", ")
        ),
    )
}

fn valid_seccomp(kind: &str) -> bool {
    kind == "Localhost" || kind == "RuntimeDefault"
}

/// The seccomp check of both levels: explicit bad types always; with `require`, containers
/// that set nothing under a pod that sets nothing (restricted).
fn seccomp_profile(pod: &PodView, require: bool) -> Option<Violation> {
    let mut bad_setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let mut pod_set = false;
    if let Some(profile) = pod.pod_context().and_then(|s| s.seccomp_profile.as_ref()) {
        if valid_seccomp(&profile.type_) {
            pod_set = true;
        } else {
            bad_setters.push("pod".to_owned());
            bad_values.insert(profile.type_.clone());
        }
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in &pod.containers {
        match c.security_context.and_then(|s| s.seccomp_profile.as_ref()) {
            Some(profile) if !valid_seccomp(&profile.type_) => {
                explicitly_bad.push(c.name);
                bad_values.insert(profile.type_.clone());
            }
            Some(_) => {}
            None if !pod_set => implicitly_bad.push(c.name),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        bad_setters.push(containers_phrase(&explicitly_bad));
    }
    if !bad_setters.is_empty() {
        let values: Vec<String> = bad_values.into_iter().collect();
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                bad_setters.join(" and "),
                join_quote(&values)
            ),
        );
    }
    if require && !implicitly_bad.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicitly_bad)
            ),
        );
    }
    None
}

fn seccomp_profile_baseline(pod: &PodView) -> Option<Violation> {
    seccomp_profile(pod, false)
}

/// Safe sysctls of v1.0.
const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
/// Added in v1.27.
const SYSCTLS_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
/// Added in v1.29.
const SYSCTLS_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// Added in v1.32.
const SYSCTLS_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];
/// Added in v1.37.
const SYSCTLS_1_37: &[&str] = &[
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

fn sysctls_with(pod: &PodView, allowed: &[&[&str]]) -> Option<Violation> {
    let forbidden: Vec<&str> = pod
        .pod_context()
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| s.name.as_str())
        .filter(|name| !allowed.iter().any(|set| set.contains(name)))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    violation("forbidden sysctls", forbidden.join(", "))
}

fn sysctls_1_0(pod: &PodView) -> Option<Violation> {
    sysctls_with(pod, &[SYSCTLS_1_0])
}

fn sysctls_1_27(pod: &PodView) -> Option<Violation> {
    sysctls_with(pod, &[SYSCTLS_1_0, SYSCTLS_1_27])
}

fn sysctls_1_29(pod: &PodView) -> Option<Violation> {
    sysctls_with(pod, &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29])
}

fn sysctls_1_32(pod: &PodView) -> Option<Violation> {
    sysctls_with(
        pod,
        &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29, SYSCTLS_1_32],
    )
}

fn sysctls_1_37(pod: &PodView) -> Option<Violation> {
    sysctls_with(
        pod,
        &[
            SYSCTLS_1_0,
            SYSCTLS_1_27,
            SYSCTLS_1_29,
            SYSCTLS_1_32,
            SYSCTLS_1_37,
        ],
    )
}

fn windows_host_process(pod: &PodView) -> Option<Violation> {
    let host_process = |s: Option<&k8s_openapi::api::core::v1::WindowsSecurityContextOptions>| {
        s.and_then(|w| w.host_process) == Some(true)
    };
    let bad: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| host_process(c.security_context.and_then(|s| s.windows_options.as_ref())))
        .map(|c| c.name)
        .collect();
    let mut setters = Vec::new();
    if host_process(pod.pod_context().and_then(|s| s.windows_options.as_ref())) {
        setters.push("pod".to_owned());
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

// ----- restricted ----------------------------------------------------------------------------

fn allow_privilege_escalation(pod: &PodView) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| {
            c.security_context
                .and_then(|s| s.allow_privilege_escalation)
                != Some(false)
        })
        .map(|c| c.name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

fn allow_privilege_escalation_unless_windows(pod: &PodView) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    allow_privilege_escalation(pod)
}

fn capabilities_restricted(pod: &PodView) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in &pod.containers {
        let Some(capabilities) = c.security_context.and_then(|s| s.capabilities.as_ref()) else {
            missing_drop_all.push(c.name);
            continue;
        };
        if !capabilities.drop.iter().flatten().any(|d| d == "ALL") {
            missing_drop_all.push(c.name);
        }
        let mut added_forbidden = false;
        for added in capabilities.add.iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                added_forbidden = true;
                forbidden.insert(added.as_str());
            }
        }
        if added_forbidden {
            adding_forbidden.push(c.name);
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding_forbidden.is_empty() {
        let forbidden: Vec<&str> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn capabilities_restricted_unless_windows(pod: &PodView) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    capabilities_restricted(pod)
}

fn restricted_volumes(pod: &PodView) -> Option<Violation> {
    let mut bad_volumes = Vec::new();
    let mut bad_types = BTreeSet::new();
    for volume in pod.spec.volumes.iter().flatten() {
        let allowed = volume.config_map.is_some()
            || volume.csi.is_some()
            || volume.downward_api.is_some()
            || volume.empty_dir.is_some()
            || volume.ephemeral.is_some()
            || volume.image.is_some()
            || volume.persistent_volume_claim.is_some()
            || volume.projected.is_some()
            || volume.secret.is_some();
        if allowed {
            continue;
        }
        bad_volumes.push(volume.name.as_str());
        let kinds: [(&str, bool); 21] = [
            ("hostPath", volume.host_path.is_some()),
            ("gcePersistentDisk", volume.gce_persistent_disk.is_some()),
            (
                "awsElasticBlockStore",
                volume.aws_elastic_block_store.is_some(),
            ),
            ("gitRepo", volume.git_repo.is_some()),
            ("nfs", volume.nfs.is_some()),
            ("iscsi", volume.iscsi.is_some()),
            ("glusterfs", volume.glusterfs.is_some()),
            ("rbd", volume.rbd.is_some()),
            ("flexVolume", volume.flex_volume.is_some()),
            ("cinder", volume.cinder.is_some()),
            ("cephfs", volume.cephfs.is_some()),
            ("flocker", volume.flocker.is_some()),
            ("fc", volume.fc.is_some()),
            ("azureFile", volume.azure_file.is_some()),
            ("vsphereVolume", volume.vsphere_volume.is_some()),
            ("quobyte", volume.quobyte.is_some()),
            ("azureDisk", volume.azure_disk.is_some()),
            (
                "photonPersistentDisk",
                volume.photon_persistent_disk.is_some(),
            ),
            ("portworxVolume", volume.portworx_volume.is_some()),
            ("scaleIO", volume.scale_io.is_some()),
            ("storageos", volume.storageos.is_some()),
        ];
        let kind = kinds
            .iter()
            .find(|(_, present)| *present)
            .map_or("unknown", |(name, _)| name);
        bad_types.insert(kind);
    }
    if bad_volumes.is_empty() {
        return None;
    }
    let bad_types: Vec<&str> = bad_types.into_iter().collect();
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad_volumes.len()),
            join_quote(&bad_volumes),
            pluralize("uses", "use", bad_volumes.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                bad_types.len()
            ),
            join_quote(&bad_types)
        ),
    )
}

fn run_as_non_root(pod: &PodView) -> Option<Violation> {
    let mut bad_setters = Vec::new();
    let mut pod_non_root = false;
    match pod.pod_context().and_then(|s| s.run_as_non_root) {
        Some(false) => bad_setters.push("pod".to_owned()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in &pod.containers {
        match c.security_context.and_then(|s| s.run_as_non_root) {
            Some(false) => explicitly_bad.push(c.name),
            Some(true) => {}
            None if !pod_non_root => implicitly_bad.push(c.name),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        bad_setters.push(containers_phrase(&explicitly_bad));
    }
    if !bad_setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                bad_setters.join(" and ")
            ),
        );
    }
    if !implicitly_bad.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicitly_bad)
            ),
        );
    }
    None
}

fn run_as_non_root_unless_user_namespace(pod: &PodView) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    run_as_non_root(pod)
}

fn run_as_user(pod: &PodView) -> Option<Violation> {
    let mut bad_setters = Vec::new();
    if pod.pod_context().and_then(|s| s.run_as_user) == Some(0) {
        bad_setters.push("pod".to_owned());
    }
    let bad: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| c.security_context.and_then(|s| s.run_as_user) == Some(0))
        .map(|c| c.name)
        .collect();
    if !bad.is_empty() {
        bad_setters.push(containers_phrase(&bad));
    }
    if bad_setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", bad_setters.join(" and ")),
    )
}

fn run_as_user_unless_user_namespace(pod: &PodView) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    run_as_user(pod)
}

fn seccomp_profile_restricted(pod: &PodView) -> Option<Violation> {
    seccomp_profile(pod, true)
}

fn seccomp_profile_restricted_unless_windows(pod: &PodView) -> Option<Violation> {
    if pod.windows() {
        return None;
    }
    seccomp_profile_restricted(pod)
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
