//! The OCI runtime spec (`config.json`) for one container of a pod.
//!
//! The pod's network, IPC and UTS namespaces already exist (see `sandbox`), so every container
//! joins them by path; PID, mount and cgroup namespaces are the container's own.

use std::path::PathBuf;

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
    /// Run with every capability and all devices (`securityContext.privileged`).
    pub privileged: bool,
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
const DEFAULT_CAPABILITIES: &[&str] = &[
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

fn all_capabilities() -> Vec<String> {
    // The capabilities the running kernel knows: a privileged container gets every one of them.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    const NAMES: &[&str] = &[
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
    NAMES
        .iter()
        .take(last as usize + 1)
        .map(|s| s.to_string())
        .collect()
}

/// Builds the `config.json` document.
pub fn runtime_spec(plan: &ContainerPlan) -> Value {
    let capabilities: Vec<String> = if plan.privileged {
        all_capabilities()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
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
               "options": ["nosuid", "noexec", "nodev", if plan.privileged { "rw" } else { "ro" }]}),
        // The container's own cgroup, read-only. libcontainer also needs it to find the cgroup
        // setup when it execs into the container (kubectl exec, exec probes).
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
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
    let masked: Vec<&str> = if plan.privileged {
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
    let readonly: Vec<&str> = if plan.privileged {
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
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": plan.terminal,
            "user": {"uid": plan.uid, "gid": plan.gid, "additionalGids": plan.additional_gids},
            "args": plan.args,
            "env": plan.env,
            "cwd": if plan.cwd.is_empty() { "/" } else { plan.cwd.as_str() },
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "noNewPrivileges": false,
        },
        "root": {"path": plan.rootfs, "readonly": false},
        "mounts": mounts,
        "linux": {
            "cgroupsPath": plan.cgroup_path,
            "resources": resources,
            "namespaces": [
                {"type": "pid"},
                {"type": "mount"},
                {"type": "cgroup"},
                {"type": "network", "path": plan.pod_namespaces.network},
                {"type": "ipc", "path": plan.pod_namespaces.ipc},
                {"type": "uts", "path": plan.pod_namespaces.uts},
            ],
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
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

    #[test]
    fn limits_become_cgroup_settings() {
        let plan = ContainerPlan {
            args: strings(&["/bin/sh"]),
            env: strings(&["PATH=/bin"]),
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![2000],
            rootfs: "/r".into(),
            pod_namespaces: PodNamespaces {
                network: "/n".into(),
                ipc: "/i".into(),
                uts: "/u".into(),
            },
            mounts: vec![],
            cgroup_path: "/bramble/p/c".into(),
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: 250,
            terminal: false,
            privileged: false,
        };
        let spec = runtime_spec(&plan);
        let resources = &spec["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["cpu"]["quota"], 50_000);
        assert_eq!(resources["cpu"]["shares"], 256);
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([2000]));
        assert_eq!(spec["linux"]["namespaces"][3]["path"], "/n");
    }
}
