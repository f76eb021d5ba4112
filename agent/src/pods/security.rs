//! A pod's `securityContext` as kubelet and containerd apply it: the container's effective
//! context, the user and groups the process runs as, the runAsNonRoot check, seccomp and
//! AppArmor choices, and the sysctls and AppArmor requests the node admits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};

use crate::seccomp::Choice;

use super::worker::{init_containers, name, namespace, spec};

/// What the agent's settings say about pods' security.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// `--seccomp-default`: containers that name no seccomp profile get `RuntimeDefault`.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are (`<data dir>/seccomp`).
    pub seccomp_dir: PathBuf,
    /// `--allowed-unsafe-sysctls` with the safe set.
    pub sysctls: SysctlAllowlist,
    /// Whether the kernel enforces AppArmor.
    pub apparmor_enabled: bool,
}

/// kubelet's `DetermineEffectiveSecurityContext`: the pod's runAsUser, runAsGroup,
/// runAsNonRoot, seLinuxOptions and windowsOptions, each replaced by the container's when it
/// sets it, with the container-only fields.
pub fn effective(pod: &Pod, container: &Container) -> SecurityContext {
    let mut merged = SecurityContext::default();
    if let Some(pod_context) = spec(pod).security_context.as_ref() {
        merged.se_linux_options = pod_context.se_linux_options.clone();
        merged.windows_options = pod_context.windows_options.clone();
        merged.run_as_user = pod_context.run_as_user;
        merged.run_as_group = pod_context.run_as_group;
        merged.run_as_non_root = pod_context.run_as_non_root;
    }
    let Some(own) = container.security_context.as_ref() else {
        return merged;
    };
    if own.capabilities.is_some() {
        merged.capabilities = own.capabilities.clone();
    }
    if own.privileged.is_some() {
        merged.privileged = own.privileged;
    }
    if own.se_linux_options.is_some() {
        merged.se_linux_options = own.se_linux_options.clone();
    }
    if let Some(windows) = &own.windows_options {
        let mut options = merged.windows_options.take().unwrap_or_default();
        if windows.gmsa_credential_spec_name.is_some() {
            options.gmsa_credential_spec_name = windows.gmsa_credential_spec_name.clone();
        }
        if windows.gmsa_credential_spec.is_some() {
            options.gmsa_credential_spec = windows.gmsa_credential_spec.clone();
        }
        if windows.run_as_user_name.is_some() {
            options.run_as_user_name = windows.run_as_user_name.clone();
        }
        if windows.host_process.is_some() {
            options.host_process = windows.host_process;
        }
        merged.windows_options = Some(options);
    }
    for (mine, theirs) in [
        (&mut merged.run_as_user, own.run_as_user),
        (&mut merged.run_as_group, own.run_as_group),
    ] {
        if theirs.is_some() {
            *mine = theirs;
        }
    }
    for (mine, theirs) in [
        (&mut merged.run_as_non_root, own.run_as_non_root),
        (
            &mut merged.read_only_root_filesystem,
            own.read_only_root_filesystem,
        ),
        (
            &mut merged.allow_privilege_escalation,
            own.allow_privilege_escalation,
        ),
    ] {
        if theirs.is_some() {
            *mine = theirs;
        }
    }
    if own.proc_mount.is_some() {
        merged.proc_mount = own.proc_mount.clone();
    }
    merged
}

/// The image's user as the runtime reports it to kubelet: only the part before `:`; a number
/// is a uid, anything else a user name. No user is root.
pub fn image_user(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (Some(0), String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

/// kubelet's `format.Pod`: `name_namespace(uid)`.
fn pod_label(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    format!("{}_{}({uid})", name(pod), namespace(pod))
}

/// kubelet's `verifyRunAsNonRoot`, with its messages: with `runAsNonRoot: true` the container
/// must not run as uid 0, and an image user that is a name cannot be checked.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    context: &SecurityContext,
    image_uid: Option<i64>,
    image_username: &str,
) -> Result<(), String> {
    if context.run_as_non_root != Some(true) {
        return Ok(());
    }
    let which = format!("(pod: {:?}, container: {})", pod_label(pod), container.name);
    if let Some(uid) = context.run_as_user {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy {which}"
            ));
        }
        return Ok(());
    }
    match image_uid {
        Some(0) => Err(format!(
            "container has runAsNonRoot and image will run as root {which}"
        )),
        None if !image_username.is_empty() => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_username}), \
             cannot verify user is non-root {which}"
        )),
        _ => Ok(()),
    }
}

/// One line of /etc/passwd.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: fields.first()?,
            uid: fields.get(2)?.trim().parse().ok()?,
            gid: fields.get(3)?.trim().parse().ok()?,
        })
    })
}

/// One line of /etc/group: name, gid, members.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let members = fields
            .get(3)
            .map(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Some((
            *fields.first()?,
            fields.get(2)?.trim().parse().ok()?,
            members,
        ))
    })
}

/// The image's /etc/passwd and /etc/group, each from the topmost layer that has it.
#[derive(Debug, Default)]
pub struct ImageAccounts {
    /// /etc/passwd, if any layer has it.
    pub passwd: Option<String>,
    /// /etc/group, if any layer has it.
    pub group: Option<String>,
}

impl ImageAccounts {
    /// Reads them from the layers (lowest first).
    pub fn read(layers: &[PathBuf]) -> ImageAccounts {
        let read = |file: &str| {
            layers
                .iter()
                .rev()
                .find_map(|layer| std::fs::read_to_string(layer.join(file)).ok())
        };
        ImageAccounts {
            passwd: read("etc/passwd"),
            group: read("etc/group"),
        }
    }

    /// containerd's `WithUser`: `uid`, `name`, `uid:gid` or names in either place. A uid
    /// takes its gid from /etc/passwd, or 0 when it is not listed there; a name must be
    /// listed; `user:group` takes the group as given, looked up when a name.
    pub fn resolve(&self, user: &str) -> Result<(u32, u32), String> {
        let passwd = self.passwd.as_deref().unwrap_or_default();
        let by_name = |name: &str| {
            passwd_entries(passwd)
                .find(|e| e.name == name)
                .ok_or_else(|| format!("no users found for {name:?} in the image's /etc/passwd"))
        };
        let parts: Vec<&str> = user.split(':').collect();
        match parts[..] {
            [one] => match one.parse::<u32>() {
                Ok(uid) => Ok(passwd_entries(passwd)
                    .find(|e| e.uid == uid)
                    .map_or((uid, 0), |e| (e.uid, e.gid))),
                Err(_) => by_name(one).map(|e| (e.uid, e.gid)),
            },
            [user_part, group_part] => {
                let uid = match user_part.parse::<u32>() {
                    Ok(uid) => uid,
                    Err(_) => by_name(user_part)?.uid,
                };
                let gid = match group_part.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => group_entries(self.group.as_deref().unwrap_or_default())
                        .find(|(name, _, _)| *name == group_part)
                        .map(|(_, gid, _)| gid)
                        .ok_or_else(|| {
                            format!("no groups found for {group_part:?} in the image's /etc/group")
                        })?,
                };
                Ok((uid, gid))
            }
            _ => Err(format!("invalid USER value {user}")),
        }
    }

    /// containerd's `WithAdditionalGIDs` (supplementalGroupsPolicy `Merge`): the groups of
    /// /etc/group that list the user as a member, except the one named like the user.
    pub fn member_groups(&self, user: &str) -> Vec<u32> {
        let user = user.split(':').next().unwrap_or_default();
        let passwd = self.passwd.as_deref().unwrap_or_default();
        let name = match user.parse::<u32>() {
            Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
                Some(entry) => entry.name,
                None => return Vec::new(),
            },
            Err(_) => user,
        };
        group_entries(self.group.as_deref().unwrap_or_default())
            .filter(|(group, _, members)| *group != name && members.contains(&name))
            .map(|(_, gid, _)| gid)
            .collect()
    }
}

/// The user and groups a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// Every group, the primary one included, sorted.
    pub groups: Vec<u32>,
}

/// The user kubelet asks for and containerd resolves: `runAsUser` (else the image's user,
/// before any `:`; root without one), then `:runAsGroup` when set. The groups are the primary
/// group, the image's memberships of the user (unless the pod's supplementalGroupsPolicy is
/// `Strict`), fsGroup and supplementalGroups.
pub fn identity(
    pod: &Pod,
    context: &SecurityContext,
    image_user_text: &str,
    accounts: &ImageAccounts,
) -> Result<Identity, String> {
    let user = match context.run_as_user {
        Some(uid) => uid.to_string(),
        None => {
            let (uid, name) = image_user(image_user_text);
            uid.map_or(name, |uid| uid.to_string())
        }
    };
    let requested = match context.run_as_group {
        Some(gid) => format!("{user}:{gid}"),
        None => user.clone(),
    };
    let (uid, gid) = accounts.resolve(&requested)?;
    let pod_context = spec(pod).security_context.as_ref();
    let mut groups = vec![gid];
    if pod_context.and_then(|c| c.supplemental_groups_policy.as_deref()) != Some("Strict") {
        groups.extend(accounts.member_groups(&user));
    }
    let requested_groups = pod_context.and_then(|c| c.fs_group).into_iter().chain(
        pod_context
            .and_then(|c| c.supplemental_groups.clone())
            .into_iter()
            .flatten(),
    );
    groups.extend(requested_groups.filter_map(|g| u32::try_from(g).ok()));
    groups.sort_unstable();
    groups.dedup();
    Ok(Identity { uid, gid, groups })
}

/// kubelet's seccomp choice: the container's profile, else the pod's, else `RuntimeDefault`
/// when the node defaults to it (`--seccomp-default`), else unconfined.
pub fn seccomp_choice(pod: &Pod, container: &Container, runtime_default: bool) -> Choice {
    let profile = container
        .security_context
        .as_ref()
        .and_then(|c| c.seccomp_profile.as_ref())
        .or_else(|| {
            spec(pod)
                .security_context
                .as_ref()
                .and_then(|c| c.seccomp_profile.as_ref())
        });
    match profile.map(|p| p.type_.as_str()) {
        Some("RuntimeDefault") => Choice::RuntimeDefault,
        Some("Localhost") => Choice::Localhost(
            profile
                .and_then(|p| p.localhost_profile.clone())
                .unwrap_or_default(),
        ),
        Some(_) => Choice::Unconfined,
        None if runtime_default => Choice::RuntimeDefault,
        None => Choice::Unconfined,
    }
}

/// The annotation that asked for a container's AppArmor profile before the field existed.
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// A container's AppArmor request: the container's field, else the pod's, else the
/// annotation, as (`RuntimeDefault` | `Unconfined` | `Localhost`, profile name).
fn apparmor_request(pod: &Pod, container: &Container) -> Option<(String, String)> {
    let field = container
        .security_context
        .as_ref()
        .and_then(|c| c.app_armor_profile.as_ref())
        .or_else(|| {
            spec(pod)
                .security_context
                .as_ref()
                .and_then(|c| c.app_armor_profile.as_ref())
        });
    if let Some(profile) = field {
        let name = profile.localhost_profile.clone().unwrap_or_default();
        return Some((profile.type_.clone(), name));
    }
    let key = format!("{APPARMOR_ANNOTATION_PREFIX}{}", container.name);
    let annotation = pod.metadata.annotations.as_ref()?.get(&key)?;
    Some(match annotation.as_str() {
        "unconfined" => ("Unconfined".into(), String::new()),
        "runtime/default" => ("RuntimeDefault".into(), String::new()),
        other => match other.strip_prefix("localhost/") {
            Some(name) => ("Localhost".into(), name.to_owned()),
            None => ("Unknown".into(), other.to_owned()),
        },
    })
}

/// The AppArmor profile a container runs under when the kernel has AppArmor: a `Localhost`
/// profile must be loaded; the runtime's default profile is not generated here, so
/// `RuntimeDefault` (and no request) run without one. Privileged containers get none.
pub fn apparmor_profile(
    pod: &Pod,
    container: &Container,
    privileged: bool,
    enabled: bool,
) -> Result<Option<String>, String> {
    if privileged || !enabled {
        return Ok(None);
    }
    match apparmor_request(pod, container) {
        Some((kind, name)) if kind == "Localhost" => {
            let loaded = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
                .unwrap_or_default();
            let found = loaded
                .lines()
                .any(|line| line.split(" (").next() == Some(name.as_str()));
            if !found {
                return Err(format!("apparmor profile not found {name}"));
            }
            Ok(Some(name))
        }
        _ => Ok(None),
    }
}

/// Whether the running kernel enforces AppArmor.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|text| text.trim_start().starts_with('Y'))
}

/// The kernel namespace a sysctl lives in, as kubelet knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    /// The IPC namespace.
    Ipc,
    /// The network namespace.
    Net,
}

impl SysctlNamespace {
    /// `kernel.sem`, `kernel.shm*`, `kernel.msg*` and `fs.mqueue.*` are IPC, `net.*` network;
    /// nothing else is known to be namespaced.
    fn of(name: &str) -> Option<SysctlNamespace> {
        if name == "kernel.sem" {
            return Some(SysctlNamespace::Ipc);
        }
        if ["kernel.shm", "kernel.msg", "fs.mqueue."]
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Some(SysctlNamespace::Ipc);
        }
        name.starts_with("net.").then_some(SysctlNamespace::Net)
    }
}

/// The sysctls every pod may set (kubelet's safe set).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

/// A sysctl name with `.` separators: a name whose first separator is `/` has its dots and
/// slashes swapped (`net/ipv4/conf/eth0.1/forwarding` is `net.ipv4.conf.eth0/1.forwarding`).
pub fn dotted(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(at) if name.as_bytes()[at] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                other => other,
            })
            .collect(),
        _ => name.to_owned(),
    }
}

/// The sysctls this node admits: the safe set and the `--allowed-unsafe-sysctls` patterns
/// (names, or prefixes ending in `*`), each of a known namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlAllowlist {
    names: BTreeMap<String, SysctlNamespace>,
    prefixes: BTreeMap<String, SysctlNamespace>,
}

impl SysctlAllowlist {
    /// The safe set and `unsafe_patterns`; a pattern outside the known namespaces is refused
    /// with kubelet's words.
    pub fn new(unsafe_patterns: &[String]) -> Result<SysctlAllowlist, String> {
        let mut list = SysctlAllowlist::default();
        let safe = SAFE_SYSCTLS.iter().map(|s| s.to_string());
        for pattern in safe.chain(unsafe_patterns.iter().cloned()) {
            let pattern = dotted(&pattern);
            match pattern.strip_suffix('*') {
                Some(prefix) => {
                    let namespace = SysctlNamespace::of(prefix).ok_or_else(|| {
                        format!("the sysctls {pattern:?} are not known to be namespaced")
                    })?;
                    list.prefixes.insert(prefix.to_owned(), namespace);
                }
                None => {
                    let namespace = SysctlNamespace::of(&pattern).ok_or_else(|| {
                        format!("the sysctl {pattern:?} are not known to be namespaced")
                    })?;
                    list.names.insert(pattern, namespace);
                }
            }
        }
        Ok(list)
    }

    /// kubelet's sysctl admission: `None` when every sysctl of the pod is allowed, else the
    /// message of the first refused one.
    pub fn refusal(&self, pod: &Pod) -> Option<String> {
        let pod_spec = spec(pod);
        let host_network = pod_spec.host_network == Some(true);
        let host_ipc = pod_spec.host_ipc == Some(true);
        let sysctls = pod_spec
            .security_context
            .as_ref()
            .and_then(|c| c.sysctls.as_ref());
        for sysctl in sysctls.into_iter().flatten() {
            let name = dotted(&sysctl.name);
            let namespace = self.names.get(&name).copied().or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                    .map(|(_, namespace)| *namespace)
            });
            let problem = match namespace {
                None => format!("{name:?} not allowlisted"),
                Some(SysctlNamespace::Ipc) if host_ipc => {
                    format!("{name:?} not allowed with host ipc enabled")
                }
                Some(SysctlNamespace::Net) if host_network => {
                    format!("{name:?} not allowed with host net enabled")
                }
                Some(_) => continue,
            };
            return Some(format!("forbidden sysctl: {problem}"));
        }
        None
    }
}

/// The kernel parameters of a pod's namespaces: its sysctls, and containerd's defaults for
/// pods with their own network (unprivileged ports from 0, ICMP echo sockets for every group)
/// unless the pod sets them.
pub fn pod_sysctls(pod: &Pod) -> BTreeMap<String, String> {
    let pod_spec = spec(pod);
    let mut sysctls = BTreeMap::new();
    if pod_spec.host_network != Some(true) {
        sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        sysctls.insert("net.ipv4.ping_group_range".into(), "0 2147483647".into());
    }
    let set = pod_spec
        .security_context
        .as_ref()
        .and_then(|c| c.sysctls.as_ref());
    for sysctl in set.into_iter().flatten() {
        sysctls.insert(dotted(&sysctl.name), sysctl.value.clone());
    }
    sysctls
}

/// Kubelet's admission of a pod on this node: `(reason, message)` when it is rejected, for
/// a forbidden sysctl or an AppArmor profile the kernel cannot enforce.
pub fn admission_refusal(pod: &Pod, settings: &SecuritySettings) -> Option<(&'static str, String)> {
    if let Some(message) = settings.sysctls.refusal(pod) {
        return Some(("SysctlForbidden", message));
    }
    if !settings.apparmor_enabled && apparmor_required(pod) {
        return Some((
            "AppArmor",
            "Cannot enforce AppArmor: AppArmor is not enabled on the host".into(),
        ));
    }
    None
}

/// kubelet's test for pods that need AppArmor: a pod or container field other than
/// `Unconfined`, or an annotation other than `unconfined`.
fn apparmor_required(pod: &Pod) -> bool {
    let confined = |profile: Option<&k8s_openapi::api::core::v1::AppArmorProfile>| {
        profile.is_some_and(|p| p.type_ != "Unconfined")
    };
    let pod_spec = spec(pod);
    let pod_profile = pod_spec.security_context.as_ref();
    if confined(pod_profile.and_then(|c| c.app_armor_profile.as_ref())) {
        return true;
    }
    let containers = init_containers(pod).iter().chain(&pod_spec.containers);
    if containers.into_iter().any(|c| {
        confined(
            c.security_context
                .as_ref()
                .and_then(|s| s.app_armor_profile.as_ref()),
        )
    }) {
        return true;
    }
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .any(|(key, value)| key.starts_with(APPARMOR_ANNOTATION_PREFIX) && value != "unconfined")
}

/// Where `Localhost` seccomp profiles live under the agent's data directory.
pub fn seccomp_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("seccomp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "1f2e"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn first(pod: &Pod) -> &Container {
        &spec(pod).containers[0]
    }

    #[test]
    fn the_container_context_wins_over_the_pods() {
        let pod = pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                                "fsGroup": 2000},
            "containers": [{"name": "app", "securityContext": {
                "runAsUser": 2000, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false, "procMount": "Unmasked",
                "capabilities": {"drop": ["ALL"]}}}],
        }));
        let merged = effective(&pod, first(&pod));
        assert_eq!(merged.run_as_user, Some(2000));
        assert_eq!(merged.run_as_group, Some(3000));
        assert_eq!(merged.run_as_non_root, Some(true));
        assert_eq!(merged.read_only_root_filesystem, Some(true));
        assert_eq!(merged.allow_privilege_escalation, Some(false));
        assert_eq!(merged.proc_mount.as_deref(), Some("Unmasked"));
        assert_eq!(
            merged.capabilities.unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
    }

    /// A base layer and a layer above it that replaces /etc/passwd and /etc/group.
    fn layered() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        for (layer, passwd, group) in [
            (
                &base,
                "root:x:0:0::/:/bin/sh\nweb:x:101:102::/:/bin/false\n",
                "root:x:0:\n",
            ),
            (
                &top,
                "root:x:0:0::/:/bin/sh\nweb:x:201:202::/:/bin/false\nbackup:x:34:34::/:/bin/false\n",
                "root:x:0:\nstaff:x:50:web,backup\nweb:x:202:web\naudio:x:29:web\n",
            ),
        ] {
            std::fs::create_dir_all(layer.join("etc")).unwrap();
            std::fs::write(layer.join("etc/passwd"), passwd).unwrap();
            std::fs::write(layer.join("etc/group"), group).unwrap();
        }
        (dir, vec![base, top])
    }

    #[test]
    fn users_resolve_as_containerd_resolves_them() {
        let (_dir, layers) = layered();
        let accounts = ImageAccounts::read(&layers);
        assert_eq!(
            accounts.resolve("web"),
            Ok((201, 202)),
            "the top layer's file"
        );
        assert_eq!(accounts.resolve("201"), Ok((201, 202)));
        assert_eq!(
            accounts.resolve("1234"),
            Ok((1234, 0)),
            "gid 0, not the uid"
        );
        assert_eq!(accounts.resolve("web:staff"), Ok((201, 50)));
        assert_eq!(accounts.resolve("web:7"), Ok((201, 7)));
        assert_eq!(accounts.resolve("1234:5678"), Ok((1234, 5678)));
        assert_eq!(
            accounts.resolve("ghost"),
            Err("no users found for \"ghost\" in the image's /etc/passwd".into())
        );
        assert_eq!(
            accounts.resolve("web:ghosts"),
            Err("no groups found for \"ghosts\" in the image's /etc/group".into())
        );
        assert_eq!(
            accounts.resolve("a:b:c"),
            Err("invalid USER value a:b:c".into())
        );
        assert_eq!(accounts.member_groups("web"), [50, 29]);
        assert_eq!(accounts.member_groups("201"), [50, 29]);
        assert_eq!(accounts.member_groups("1234"), Vec::<u32>::new());
        let bare = ImageAccounts::default();
        assert_eq!(bare.resolve("0"), Ok((0, 0)));
        assert_eq!(bare.resolve("1000"), Ok((1000, 0)));
    }

    fn identity_of(spec: serde_json::Value, image_user: &str) -> Result<Identity, String> {
        let (_dir, layers) = layered();
        let pod = pod(spec);
        let context = effective(&pod, first(&pod));
        identity(&pod, &context, image_user, &ImageAccounts::read(&layers))
    }

    #[test]
    fn the_identity_merges_image_groups_unless_strict() {
        let plain = json!({"containers": [{"name": "app"}]});
        assert_eq!(
            identity_of(plain.clone(), ""),
            Ok(Identity {
                uid: 0,
                gid: 0,
                groups: vec![0]
            })
        );
        // The image's group is not passed on: kubelet asks for the user only.
        assert_eq!(
            identity_of(plain.clone(), "web:audio"),
            Ok(Identity {
                uid: 201,
                gid: 202,
                groups: vec![29, 50, 202]
            })
        );
        assert!(identity_of(plain, "ghost").is_err());
        // runAsUser names the uid again: its gid comes from /etc/passwd.
        let run_as = json!({"securityContext": {"runAsUser": 201, "fsGroup": 2000,
                                                "supplementalGroups": [3000, 50]},
                            "containers": [{"name": "app"}]});
        assert_eq!(
            identity_of(run_as, "root"),
            Ok(Identity {
                uid: 201,
                gid: 202,
                groups: vec![29, 50, 202, 2000, 3000]
            })
        );
        let strict = json!({"securityContext": {"runAsUser": 201, "runAsGroup": 7,
                                                "supplementalGroupsPolicy": "Strict",
                                                "supplementalGroups": [3000]},
                            "containers": [{"name": "app"}]});
        assert_eq!(
            identity_of(strict, ""),
            Ok(Identity {
                uid: 201,
                gid: 7,
                groups: vec![7, 3000]
            })
        );
    }

    #[test]
    fn run_as_non_root_refuses_root_with_kubelets_words() {
        let check = |spec: serde_json::Value, image: &str| {
            let pod = pod(spec);
            let context = effective(&pod, first(&pod));
            let (uid, name) = image_user(image);
            verify_run_as_non_root(&pod, first(&pod), &context, uid, &name)
        };
        let non_root = |extra: serde_json::Value| {
            let mut context = json!({"runAsNonRoot": true});
            for (k, v) in extra.as_object().unwrap() {
                context[k] = v.clone();
            }
            json!({"securityContext": context, "containers": [{"name": "app"}]})
        };
        assert_eq!(
            check(non_root(json!({"runAsUser": 0})), "1000"),
            Err(
                "container's runAsUser breaks non-root policy (pod: \"web_default(1f2e)\", \
                 container: app)"
                    .into()
            )
        );
        assert_eq!(
            check(non_root(json!({})), ""),
            Err(
                "container has runAsNonRoot and image will run as root (pod: \
                 \"web_default(1f2e)\", container: app)"
                    .into()
            )
        );
        assert_eq!(
            check(non_root(json!({})), "0:0"),
            check(non_root(json!({})), ""),
        );
        assert_eq!(
            check(non_root(json!({})), "nginx:nginx"),
            Err(
                "container has runAsNonRoot and image has non-numeric user (nginx), cannot \
                 verify user is non-root (pod: \"web_default(1f2e)\", container: app)"
                    .into()
            )
        );
        assert_eq!(check(non_root(json!({})), "1000"), Ok(()));
        assert_eq!(check(non_root(json!({"runAsUser": 1000})), "nginx"), Ok(()));
        let allowed = json!({"securityContext": {"runAsNonRoot": true},
                             "containers": [{"name": "app",
                                             "securityContext": {"runAsNonRoot": false}}]});
        assert_eq!(check(allowed, ""), Ok(()));
    }

    fn sysctl_pod(extra: serde_json::Value, names: &[&str]) -> Pod {
        let sysctls: Vec<_> = names
            .iter()
            .map(|n| json!({"name": n, "value": "1"}))
            .collect();
        let mut spec = json!({"securityContext": {"sysctls": sysctls},
                              "containers": [{"name": "app"}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        pod(spec)
    }

    #[test]
    fn sysctls_are_admitted_as_kubelet_admits_them() {
        let safe_only = SysctlAllowlist::new(&[]).unwrap();
        let plain = json!({});
        let safe = sysctl_pod(
            plain.clone(),
            &["kernel.shm_rmid_forced", "net/ipv4/tcp_syncookies"],
        );
        assert_eq!(safe_only.refusal(&safe), None);
        let unsafe_pod = sysctl_pod(plain.clone(), &["net.ipv4.tcp_syncookies", "kernel.msgmax"]);
        assert_eq!(
            safe_only.refusal(&unsafe_pod).as_deref(),
            Some("forbidden sysctl: \"kernel.msgmax\" not allowlisted")
        );
        let allowing =
            SysctlAllowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()]).unwrap();
        assert_eq!(allowing.refusal(&unsafe_pod), None);
        let host_net = sysctl_pod(json!({"hostNetwork": true}), &["net.core.somaxconn"]);
        assert_eq!(
            allowing.refusal(&host_net).as_deref(),
            Some("forbidden sysctl: \"net.core.somaxconn\" not allowed with host net enabled")
        );
        let host_ipc = sysctl_pod(json!({"hostIPC": true}), &["kernel.shm_rmid_forced"]);
        assert_eq!(
            safe_only.refusal(&host_ipc).as_deref(),
            Some("forbidden sysctl: \"kernel.shm_rmid_forced\" not allowed with host ipc enabled")
        );
        assert_eq!(
            SysctlAllowlist::new(&["kernel.panic".into()]),
            Err("the sysctl \"kernel.panic\" are not known to be namespaced".into())
        );
        assert_eq!(
            SysctlAllowlist::new(&["vm.*".into()]),
            Err("the sysctls \"vm.*\" are not known to be namespaced".into())
        );
        assert_eq!(
            dotted("net/ipv4/conf/eth0.100/forwarding"),
            "net.ipv4.conf.eth0/100.forwarding"
        );
    }

    #[test]
    fn pods_with_their_own_network_get_containerds_sysctl_defaults() {
        let own = sysctl_pod(json!({}), &["net.ipv4.ping_group_range"]);
        let sysctls: Vec<(String, String)> = pod_sysctls(&own).into_iter().collect();
        assert_eq!(
            sysctls,
            [
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "1".into()),
            ]
        );
        let host = sysctl_pod(json!({"hostNetwork": true}), &["kernel.shm_rmid_forced"]);
        let sysctls: Vec<(String, String)> = pod_sysctls(&host).into_iter().collect();
        assert_eq!(sysctls, [("kernel.shm_rmid_forced".into(), "1".into())]);
    }

    #[test]
    fn seccomp_profiles_come_from_the_container_the_pod_or_the_node() {
        let pod = pod(json!({
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {"name": "own", "securityContext": {"seccompProfile":
                    {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}},
                {"name": "free", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
                {"name": "inherits"},
            ],
        }));
        let containers = &spec(&pod).containers;
        assert_eq!(
            seccomp_choice(&pod, &containers[0], false),
            Choice::Localhost("profiles/audit.json".into())
        );
        assert_eq!(
            seccomp_choice(&pod, &containers[1], true),
            Choice::Unconfined
        );
        assert_eq!(
            seccomp_choice(&pod, &containers[2], false),
            Choice::RuntimeDefault
        );
        let bare = super::tests::pod(json!({"containers": [{"name": "app"}]}));
        assert_eq!(
            seccomp_choice(&bare, first(&bare), false),
            Choice::Unconfined
        );
        assert_eq!(
            seccomp_choice(&bare, first(&bare), true),
            Choice::RuntimeDefault
        );
    }

    #[test]
    fn apparmor_requests_are_refused_where_the_kernel_has_none() {
        let settings = SecuritySettings::default();
        let refused = Some((
            "AppArmor",
            "Cannot enforce AppArmor: AppArmor is not enabled on the host".to_owned(),
        ));
        let annotated = |value: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "annotations": {
                    "container.apparmor.security.beta.kubernetes.io/app": value}},
                "spec": {"containers": [{"name": "app"}]},
            }))
            .unwrap()
        };
        assert_eq!(
            admission_refusal(&annotated("localhost/k8s-nginx"), &settings),
            refused
        );
        assert_eq!(admission_refusal(&annotated("unconfined"), &settings), None);
        let field = pod(json!({"containers": [{"name": "app", "securityContext":
            {"appArmorProfile": {"type": "RuntimeDefault"}}}]}));
        assert_eq!(admission_refusal(&field, &settings), refused);
        let at_pod_level = pod(json!({
            "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext":
                {"appArmorProfile": {"type": "Unconfined"}}}]}));
        assert_eq!(admission_refusal(&at_pod_level, &settings), refused);
        let unconfined = pod(json!({"containers": [{"name": "app", "securityContext":
            {"appArmorProfile": {"type": "Unconfined"}}}]}));
        assert_eq!(admission_refusal(&unconfined, &settings), None);
        let enabled = SecuritySettings {
            apparmor_enabled: true,
            ..SecuritySettings::default()
        };
        assert_eq!(admission_refusal(&field, &enabled), None);
        assert_eq!(
            apparmor_profile(&field, first(&field), false, true),
            Ok(None),
            "RuntimeDefault: no profile is generated here"
        );
    }
}
