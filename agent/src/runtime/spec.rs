//! The OCI runtime spec (`config.json`) for one container of a pod.
//!
//! The pod's network, IPC and UTS namespaces already exist (see `sandbox`), so every container
//! joins them by path; PID, mount and cgroup namespaces are the container's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Where it appears in the container.
    pub destination: String,
    /// The host path.
    pub source: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to write one container's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    /// argv, already resolved from command/args and the image's entrypoint/cmd.
    pub args: Vec<String>,
    /// `NAME=value` pairs, image env first, then the container's.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User and group IDs the process runs as.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (the pod's `supplementalGroups` and `fsGroup`).
    pub additional_gids: Vec<u32>,
    /// The overlay-mounted root file system.
    pub rootfs: PathBuf,
    /// Namespace files of the pod: network, IPC, UTS.
    pub pod_namespaces: PodNamespaces,
    /// Volumes, /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub mounts: Vec<BindMount>,
    /// The container's cgroup, relative to the cgroup root.
    pub cgroup_path: String,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (becomes the relative weight).
    pub cpu_request_millis: i64,
    /// Allocate a terminal (container `tty: true`).
    pub terminal: bool,
    /// Run with all devices, /sys and the cgroup file system writable and nothing masked
    /// (`securityContext.privileged`; the capabilities are in `capabilities`).
    pub privileged: bool,
    /// The process's bounding, effective and permitted capabilities (see [`capabilities`]);
    /// inheritable and ambient stay empty.
    pub capabilities: Vec<String>,
    /// `allowPrivilegeEscalation: false`: the process and its children gain no privileges.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `procMount: Unmasked`: no masked or read-only paths under /proc and /sys.
    pub unmasked_proc: bool,
    /// The seccomp filter; `None` runs unconfined.
    pub seccomp: Option<LinuxSeccomp>,
    /// The pod's kernel parameters, written in its network and IPC namespaces as the
    /// container starts (every container writes the same values).
    pub sysctls: BTreeMap<String, String>,
    /// The AppArmor profile the process runs under.
    pub apparmor_profile: Option<String>,
    /// The node's device nodes (privileged containers get them all, as containerd gives).
    pub host_devices: Vec<HostDevice>,
    /// `hostPID`: the container stays in the node's PID namespace.
    pub host_pid: bool,
    /// `hostIPC`: the container stays in the node's IPC namespace.
    pub host_ipc: bool,
}

/// A device node of the host, as `linux.devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Where it is, under /dev.
    pub path: PathBuf,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub file_mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Paths of the pod-wide namespaces a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNamespaces {
    /// The network namespace file.
    pub network: PathBuf,
    /// The IPC namespace file.
    pub ipc: PathBuf,
    /// The UTS namespace file (holds the pod's hostname).
    pub uts: PathBuf,
}

/// The capabilities a container gets by default: the same set container engines give.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// CPU shares for a request, as kubelet computes them (1024 per core, at least 2).
pub fn cpu_shares(request_millis: i64) -> u64 {
    ((request_millis * 1024) / 1000).max(2) as u64
}

const CFS_PERIOD_MICROS: i64 = 100_000;

/// Every capability name, in number order (`CAP_CHECKPOINT_RESTORE` is 40).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability the running kernel knows, in number order: what `add: [ALL]` and
/// privileged containers get.
pub fn all_capabilities() -> Vec<String> {
    // The capabilities the running kernel knows: a privileged container gets every one of them.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    CAPABILITY_NAMES
        .iter()
        .take(last as usize + 1)
        .map(|s| s.to_string())
        .collect()
}

/// A container's capabilities as containerd computes them from `securityContext`: the
/// default set; `add: [ALL]` gives `all`, then `drop: [ALL]` empties it; every other added
/// name (`CAP_` + upper case) is appended if missing, then every other dropped name removed.
/// A privileged container gets `all` whatever add and drop say.
pub fn capabilities(
    add: &[String],
    drop: &[String],
    privileged: bool,
    all: &[String],
) -> Vec<String> {
    if privileged {
        return all.to_vec();
    }
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if add.iter().any(is_all) {
        caps = all.to_vec();
    }
    if drop.iter().any(is_all) {
        caps.clear();
    }
    for name in add.iter().filter(|n| !is_all(n)) {
        let cap = format!("CAP_{}", name.to_uppercase());
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        let cap = format!("CAP_{}", name.to_uppercase());
        caps.retain(|c| *c != cap);
    }
    caps
}

/// The device nodes under `dev` as containerd's `WithHostDevices` lists them: recursively,
/// skipping pts, shm, fd, mqueue and a few runtime directories, `console`, symbolic links and
/// FIFOs.
pub fn host_devices(dev: &Path) -> Vec<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dev) else {
        return found;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let skipped = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
            if !skipped.iter().any(|s| name == *s) {
                found.extend(host_devices(&path));
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let kind = if kind.is_char_device() {
            'c'
        } else if kind.is_block_device() {
            'b'
        } else {
            continue;
        };
        let rdev = meta.rdev();
        found.push(HostDevice {
            path,
            kind,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    found
}

/// Builds the `config.json` document.
pub fn runtime_spec(plan: &ContainerPlan) -> Value {
    let capabilities = &plan.capabilities;
    let writable_when_privileged = if plan.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", writable_when_privileged]}),
        // The container's own cgroup, read-only unless privileged. libcontainer also needs it
        // to find the cgroup setup when it execs into the container (kubectl exec, probes).
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", writable_when_privileged]}),
    ];
    for mount in &plan.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if mount.read_only { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": mount.destination,
            "type": "bind",
            "source": mount.source,
            "options": options,
        }));
    }
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "cpu": {"shares": cpu_shares(plan.cpu_request_millis)},
    });
    if plan.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
    } else {
        let allowed = [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, -1),
        ];
        let devices = resources["devices"]
            .as_array_mut()
            .expect("devices is a list");
        for (major, minor) in allowed {
            let mut rule = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
            if minor >= 0 {
                rule["minor"] = json!(minor);
            }
            devices.push(rule);
        }
    }
    if let Some(limit) = plan.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    if let Some(millis) = plan.cpu_limit_millis {
        // At least 1 ms per period: the kernel refuses smaller quotas.
        let quota = (millis * CFS_PERIOD_MICROS / 1000).max(1000);
        resources["cpu"]["quota"] = json!(quota);
        resources["cpu"]["period"] = json!(CFS_PERIOD_MICROS);
    }
    let unmasked = plan.privileged || plan.unmasked_proc;
    let masked: Vec<&str> = if unmasked {
        vec![]
    } else {
        vec![
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ]
    };
    let readonly: Vec<&str> = if unmasked {
        vec![]
    } else {
        vec![
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]
    };
    let mut namespaces = vec![json!({"type": "mount"}), json!({"type": "cgroup"})];
    if !plan.host_pid {
        namespaces.insert(0, json!({"type": "pid"}));
    }
    namespaces.push(json!({"type": "network", "path": plan.pod_namespaces.network}));
    if !plan.host_ipc {
        namespaces.push(json!({"type": "ipc", "path": plan.pod_namespaces.ipc}));
    }
    namespaces.push(json!({"type": "uts", "path": plan.pod_namespaces.uts}));
    let mut process = json!({
        "terminal": plan.terminal,
        "user": {"uid": plan.uid, "gid": plan.gid, "additionalGids": plan.additional_gids},
        "args": plan.args,
        "env": plan.env,
        "cwd": if plan.cwd.is_empty() { "/" } else { plan.cwd.as_str() },
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
            "inheritable": [],
            "ambient": [],
        },
    });
    // Only a `true` is written: libcontainer handles a present `false` unlike an absent key
    // (it loads seccomp after dropping capabilities).
    if plan.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    if let Some(profile) = &plan.apparmor_profile {
        process["apparmorProfile"] = json!(profile);
    }
    let mut linux = json!({
        "cgroupsPath": plan.cgroup_path,
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if !plan.host_devices.is_empty() {
        let devices: Vec<Value> = plan
            .host_devices
            .iter()
            .map(|d| {
                json!({"path": d.path, "type": d.kind.to_string(), "major": d.major,
                       "minor": d.minor, "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid})
            })
            .collect();
        linux["devices"] = json!(devices);
    }
    if !plan.sysctls.is_empty() {
        linux["sysctl"] = json!(plan.sysctls);
    }
    if let Some(seccomp) = &plan.seccomp {
        linux["seccomp"] = serde_json::to_value(seccomp).unwrap_or(Value::Null);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": plan.rootfs, "readonly": plan.read_only_root},
        "mounts": mounts,
        "linux": linux,
    })
}

/// Resolves the process arguments as Kubernetes does: `command` replaces the image's
/// ENTRYPOINT (and drops its CMD), `args` replaces CMD.
pub fn resolve_args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
    }
}

/// Expands `$(VAR)` references against earlier variables, as kubelet does; `$$(VAR)` escapes.
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    expand_with(text, |name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, value)| value.clone())
    })
}

/// Kubelet's `$(VAR)` syntax with the values from `value_of`: `$$` is a `$`, and a reference
/// `value_of` answers `None` for stays as written.
pub fn expand_with(text: &str, mut value_of: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|body| body.split_once(')'))
        {
            match value_of(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let entry = strings(&["/entry"]);
        let cmd = strings(&["serve"]);
        assert_eq!(
            resolve_args(&[], &[], &entry, &cmd),
            strings(&["/entry", "serve"])
        );
        assert_eq!(
            resolve_args(&[], &strings(&["x"]), &entry, &cmd),
            strings(&["/entry", "x"])
        );
        assert_eq!(
            resolve_args(&strings(&["sh"]), &[], &entry, &cmd),
            strings(&["sh"])
        );
        assert_eq!(
            resolve_args(&strings(&["sh", "-c"]), &strings(&["echo"]), &entry, &cmd),
            strings(&["sh", "-c", "echo"])
        );
    }

    #[test]
    fn variable_references_expand() {
        let vars = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5", &vars), "cost $5");
    }

    fn plan() -> ContainerPlan {
        ContainerPlan {
            args: strings(&["/bin/sh"]),
            env: strings(&["PATH=/bin"]),
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![0, 2000],
            rootfs: "/r".into(),
            pod_namespaces: PodNamespaces {
                network: "/n".into(),
                ipc: "/i".into(),
                uts: "/u".into(),
            },
            mounts: vec![],
            cgroup_path: "/bramble/p/c".into(),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: 250,
            terminal: false,
            privileged: false,
            capabilities: strings(&["CAP_CHOWN"]),
            no_new_privileges: false,
            read_only_root: false,
            unmasked_proc: false,
            seccomp: None,
            sysctls: BTreeMap::new(),
            apparmor_profile: None,
            host_devices: vec![],
            host_pid: false,
            host_ipc: false,
        }
    }

    #[test]
    fn limits_become_cgroup_settings() {
        let plan = ContainerPlan {
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(500),
            ..plan()
        };
        let spec = runtime_spec(&plan);
        let resources = &spec["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["cpu"]["quota"], 50_000);
        assert_eq!(resources["cpu"]["shares"], 256);
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([0, 2000]));
        assert_eq!(spec["linux"]["namespaces"][3]["path"], "/n");
    }

    fn all() -> Vec<String> {
        strings(&[
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_NET_ADMIN",
            "CAP_SYS_ADMIN",
        ])
    }

    #[test]
    fn capabilities_follow_containerd_add_then_drop() {
        let default = capabilities(&[], &[], false, &all());
        assert_eq!(default.len(), 14);
        assert_eq!(default[0], "CAP_CHOWN");
        assert_eq!(default[13], "CAP_AUDIT_WRITE");
        assert_eq!(
            capabilities(
                &strings(&["NET_BIND_SERVICE"]),
                &strings(&["ALL"]),
                false,
                &all()
            ),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(
            capabilities(&strings(&["all"]), &strings(&["chown"]), false, &all()),
            ["CAP_DAC_OVERRIDE", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        let added = capabilities(
            &strings(&["net_admin", "CHOWN"]),
            &strings(&["KILL"]),
            false,
            &all(),
        );
        assert_eq!(added.len(), 14, "CHOWN is not added twice, KILL is gone");
        assert_eq!(added.last().unwrap(), "CAP_NET_ADMIN");
        assert!(!added.contains(&"CAP_KILL".to_owned()));
        // A name written with its prefix is not a capability the kernel knows.
        let prefixed = capabilities(&strings(&["CAP_SYS_TIME"]), &[], false, &all());
        assert_eq!(prefixed.last().unwrap(), "CAP_CAP_SYS_TIME");
        assert_eq!(
            capabilities(&[], &strings(&["ALL"]), true, &all()),
            all(),
            "privileged wins over drop"
        );
    }

    #[test]
    fn the_process_gets_its_capabilities_and_no_new_privileges_only_when_asked() {
        let spec = runtime_spec(&plan());
        assert_eq!(
            spec["process"]["capabilities"],
            json!({"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                   "permitted": ["CAP_CHOWN"], "inheritable": [], "ambient": []})
        );
        let process = spec["process"].as_object().unwrap();
        assert!(
            !process.contains_key("noNewPrivileges"),
            "absent, not false"
        );
        assert!(!process.contains_key("apparmorProfile"));
        assert_eq!(spec["root"], json!({"path": "/r", "readonly": false}));
        let linux = spec["linux"].as_object().unwrap();
        for key in ["seccomp", "sysctl", "devices"] {
            assert!(!linux.contains_key(key), "{key}");
        }
        let spec = runtime_spec(&ContainerPlan {
            no_new_privileges: true,
            read_only_root: true,
            apparmor_profile: Some("k8s-nginx".into()),
            ..plan()
        });
        assert_eq!(spec["process"]["noNewPrivileges"], json!(true));
        assert_eq!(spec["process"]["apparmorProfile"], json!("k8s-nginx"));
        assert_eq!(spec["root"], json!({"path": "/r", "readonly": true}));
    }

    #[test]
    fn seccomp_and_sysctls_go_into_linux() {
        let seccomp: LinuxSeccomp = serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_AARCH64"],
            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
        }))
        .unwrap();
        let mut sysctls = BTreeMap::new();
        sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        sysctls.insert("kernel.shm_rmid_forced".into(), "1".into());
        let spec = runtime_spec(&ContainerPlan {
            seccomp: Some(seccomp),
            sysctls,
            ..plan()
        });
        assert_eq!(
            spec["linux"]["sysctl"],
            json!({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "0"})
        );
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            spec["linux"]["seccomp"]["architectures"],
            json!(["SCMP_ARCH_AARCH64"])
        );
        assert_eq!(
            spec["linux"]["seccomp"]["syscalls"][0]["names"],
            json!(["read", "write"])
        );
    }

    #[test]
    fn masked_paths_go_with_unmasked_proc_and_privileged() {
        let spec = runtime_spec(&plan());
        assert_eq!(spec["linux"]["maskedPaths"].as_array().unwrap().len(), 11);
        assert_eq!(
            spec["linux"]["readonlyPaths"],
            json!([
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ])
        );
        let unmasked = runtime_spec(&ContainerPlan {
            unmasked_proc: true,
            ..plan()
        });
        assert_eq!(unmasked["linux"]["maskedPaths"], json!([]));
        assert_eq!(unmasked["linux"]["readonlyPaths"], json!([]));
        assert_eq!(
            unmasked["mounts"][6]["options"][4], "ro",
            "the cgroup mount"
        );
    }

    #[test]
    fn privileged_containers_get_the_host_devices_and_a_writable_cgroup() {
        let spec = runtime_spec(&ContainerPlan {
            privileged: true,
            host_devices: vec![HostDevice {
                path: "/dev/gpiochip0".into(),
                kind: 'c',
                major: 254,
                minor: 0,
                file_mode: 0o660,
                uid: 0,
                gid: 997,
            }],
            ..plan()
        });
        assert_eq!(
            spec["linux"]["devices"],
            json!([{"path": "/dev/gpiochip0", "type": "c", "major": 254, "minor": 0,
                    "fileMode": 0o660, "uid": 0, "gid": 997}])
        );
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(spec["mounts"][5]["options"][3], "rw", "sysfs");
        assert_eq!(spec["mounts"][6]["destination"], "/sys/fs/cgroup");
        assert_eq!(spec["mounts"][6]["options"][4], "rw");
        assert_eq!(spec["linux"]["maskedPaths"], json!([]));
    }

    #[test]
    fn host_pid_and_ipc_leave_out_those_namespaces() {
        let kinds = |plan: &ContainerPlan| -> Vec<String> {
            runtime_spec(plan)["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["type"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            kinds(&plan()),
            ["pid", "mount", "cgroup", "network", "ipc", "uts"]
        );
        let host = ContainerPlan {
            host_pid: true,
            host_ipc: true,
            ..plan()
        };
        assert_eq!(kinds(&host), ["mount", "cgroup", "network", "uts"]);
    }

    #[test]
    fn host_devices_are_the_device_nodes_of_dev() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices
            .iter()
            .find(|d| d.path == Path::new("/dev/null"))
            .expect("/dev/null is a device");
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        assert_eq!(null.file_mode, 0o666);
        assert!(devices.iter().all(|d| !d.path.starts_with("/dev/pts")));
        assert!(devices.iter().all(|d| d.path != Path::new("/dev/console")));
    }
}
