//! The profiles a container can ask for: containerd's RuntimeDefault (computed for the host and
//! the container's bounding capabilities from `containerd_default.json`) and Localhost files.

use std::path::{Component, Path};
use std::sync::OnceLock;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};
use serde::Deserialize;

/// containerd's `DefaultProfile`, as data (see the file's `comment` and `source`).
const CONTAINERD_DEFAULT: &str = include_str!("containerd_default.json");

/// `containerd_default.json`: OCI `LinuxSeccomp` fields plus, per rule, the conditions
/// containerd's Go code decides on.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileTemplate {
    #[allow(dead_code)]
    comment: Vec<String>,
    #[allow(dead_code)]
    source: serde_json::Value,
    default_action: LinuxSeccompAction,
    /// GOARCH → the architectures the profile lists on such a host.
    arch_map: std::collections::BTreeMap<String, Vec<Arch>>,
    syscalls: Vec<RuleTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleTemplate {
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Conditions,
    #[serde(default)]
    excludes: Conditions,
}

/// When a rule applies. `includes`: every listed capability is in the bounding set, the host's
/// GOARCH is listed, the kernel is at least `minKernel`. `excludes`: any listed capability is in
/// the bounding set, or the host's GOARCH is listed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Conditions {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What the default profile depends on besides the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// Go's name for the architecture (`GOARCH`), as containerd's code switches on it.
    pub(crate) goarch: &'static str,
    /// The running kernel's (major, minor), if it could be read.
    pub(crate) kernel: Option<(u32, u32)>,
}

impl Host {
    /// This machine.
    pub(crate) fn current() -> Host {
        let goarch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else if cfg!(target_arch = "aarch64") {
            "arm64"
        } else if cfg!(target_arch = "x86") {
            "386"
        } else if cfg!(target_arch = "arm") {
            "arm"
        } else {
            "unknown"
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| parse_kernel_version(&release));
        Host { goarch, kernel }
    }
}

/// "6.8.0-45-generic" → (6, 8).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// containerd's RuntimeDefault profile for a container with these bounding capabilities.
pub(crate) fn runtime_default(
    bounding_caps: &[String],
    host: &Host,
) -> Result<LinuxSeccomp, String> {
    static TEMPLATE: OnceLock<Result<ProfileTemplate, String>> = OnceLock::new();
    let template = TEMPLATE
        .get_or_init(|| {
            serde_json::from_str(CONTAINERD_DEFAULT)
                .map_err(|err| format!("the built-in RuntimeDefault profile is malformed: {err}"))
        })
        .as_ref()?;
    let has_cap = |cap: &String| bounding_caps.contains(cap);
    let applies = |rule: &RuleTemplate| {
        let includes = &rule.includes;
        let excludes = &rule.excludes;
        if !includes.caps.iter().all(has_cap) || excludes.caps.iter().any(has_cap) {
            return false;
        }
        if !includes.arches.is_empty() && !includes.arches.iter().any(|a| a == host.goarch) {
            return false;
        }
        if excludes.arches.iter().any(|a| a == host.goarch) {
            return false;
        }
        match includes.min_kernel.as_deref().map(parse_kernel_version) {
            None => true,
            // containerd leaves the rule out when the kernel version cannot be read.
            Some(wanted) => {
                matches!((host.kernel, wanted), (Some(have), Some(want)) if have >= want)
            }
        }
    };
    let syscalls = template
        .syscalls
        .iter()
        .filter(|rule| applies(rule))
        .map(|rule| {
            let mut syscall = LinuxSyscall::default();
            syscall.set_names(rule.names.clone());
            syscall.set_action(rule.action);
            syscall.set_errno_ret(rule.errno_ret);
            syscall.set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
            syscall
        })
        .collect();
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(template.default_action);
    profile.set_architectures(Some(
        template
            .arch_map
            .get(host.goarch)
            .cloned()
            .unwrap_or_default(),
    ));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// Reads the Localhost profile `name` under `profiles_dir`. `name` must be a relative path
/// without `..` (the API server's rule for `localhostProfile`) and must not lead out of
/// `profiles_dir` through a symbolic link. Errors are worded as containerd's.
pub(crate) fn localhost(name: &str, profiles_dir: &Path) -> Result<LinuxSeccomp, String> {
    let relative = Path::new(name);
    if name.is_empty()
        || !relative
            .components()
            .all(|component| matches!(component, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "invalid localhost seccomp profile {name:?}: must be a relative path inside the profiles directory, without \"..\""
        ));
    }
    let path = profiles_dir.join(relative);
    let shown = path.display().to_string();
    let cannot_load = |err: String| format!("cannot load seccomp profile {shown:?}: {err}");
    let real_path = path
        .canonicalize()
        .map_err(|err| cannot_load(format!("open {shown}: {}", go_error_text(&err))))?;
    let real_dir = profiles_dir
        .canonicalize()
        .map_err(|err| cannot_load(format!("open {shown}: {}", go_error_text(&err))))?;
    if !real_path.starts_with(&real_dir) {
        return Err(cannot_load(format!(
            "{} is outside {}",
            real_path.display(),
            real_dir.display()
        )));
    }
    let bytes = std::fs::read(&real_path).map_err(|err| {
        let verb = if real_path.is_dir() { "read" } else { "open" };
        cannot_load(format!("{verb} {shown}: {}", go_error_text(&err)))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|err| format!("decoding seccomp profile failed {shown:?}: {err}"))
}

/// An OS error as Go prints it ("no such file or directory"), not as Rust does ("No such file
/// or directory (os error 2)").
fn go_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
