//! The last steps of every process bramble starts in a container, the init (see `monitor`) and
//! each `exec-in` process (see `exec`): the container's seccomp filter, loaded by bramble
//! because libcontainer is built without libseccomp, then the container's own command.
//!
//! A filter needs either `no_new_privs` or `CAP_SYS_ADMIN` to be loaded. With
//! `noNewPrivileges: true` libcontainer has set the flag and the filter is loaded after the
//! capability drop, as late as possible (runc's order). Without it, the container usually lacks
//! `CAP_SYS_ADMIN` once libcontainer has applied its capabilities, so libcontainer is handed a
//! process whose bounding, effective and permitted sets also hold `CAP_SYS_ADMIN` and
//! `CAP_SETPCAP`; the executor loads the filter, then drops to the container's real sets (runc's
//! other order: filter first, capabilities after). The real sets travel in the executor and, for
//! later `exec-in` processes, in the bundle's `config.json` annotation [`REAL_CAPABILITIES`].
//!
//! Both steps run in the executor's `setup_envs`, the last hook before the process reports
//! itself ready: a filter that cannot be loaded fails the container's creation with the reason,
//! as runc's does, instead of a process that runs unconfined or exits without a word.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use libcontainer::capabilities::CapabilityExt;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, Process};
use serde_json::Value;

use crate::seccomp::Filter;

/// The `config.json` annotation that keeps the container's own capability sets (JSON, the
/// shape of `process.capabilities`) when `process.capabilities` was widened for loading the
/// filter.
pub const REAL_CAPABILITIES: &str = "dev.bramble.capabilities";

/// What a process without `no_new_privs` needs to load a filter (`CAP_SYS_ADMIN`) and then to
/// shrink its bounding set (`CAP_SETPCAP`).
const LOADING_CAPABILITIES: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// What the executor does before it runs the container's command.
#[derive(Clone, Default)]
pub struct Confinement {
    /// The compiled filter; `None` runs unconfined.
    filter: Option<Arc<Filter>>,
    /// Set when the process was given the loading capabilities: its real sets.
    drop_to: Option<CapabilitySets>,
}

/// A process's capability sets as bit masks (bit n = capability n); `None` for a set the spec
/// leaves out, which libcontainer leaves as it is (except bounding: out means empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CapabilitySets {
    bounding: u64,
    effective: Option<u64>,
    permitted: Option<u64>,
    inheritable: Option<u64>,
}

impl CapabilitySets {
    fn of(caps: &LinuxCapabilities) -> CapabilitySets {
        CapabilitySets {
            bounding: caps.bounding().as_ref().map_or(0, mask),
            effective: caps.effective().as_ref().map(mask),
            permitted: caps.permitted().as_ref().map(mask),
            inheritable: caps.inheritable().as_ref().map(mask),
        }
    }
}

fn mask(set: &Capabilities) -> u64 {
    set.iter()
        .fold(0, |bits, cap| bits | 1u64 << cap.to_cap().index())
}

/// The process libcontainer should set up for a container process whose real settings are
/// `process`, with the seccomp profile `seccomp`, and what the executor does afterwards.
/// Compiling happens here, before libcontainer forks: a profile that cannot be compiled is an
/// error, never an unconfined container.
pub fn confine(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
) -> Result<(Process, Confinement), String> {
    let Some(profile) = seccomp else {
        return Ok((process.clone(), Confinement::default()));
    };
    let filter = Filter::compile(profile).map_err(|e| format!("unable to init seccomp: {e}"))?;
    let mut confinement = Confinement {
        filter: Some(Arc::new(filter)),
        drop_to: None,
    };
    let mut process = process.clone();
    if process.no_new_privileges() == Some(true) {
        return Ok((process, confinement));
    }
    // Without capabilities in the spec libcontainer leaves the process's (full) sets alone.
    let Some(real) = process.capabilities().clone() else {
        return Ok((process, confinement));
    };
    let mut widened = real.clone();
    let add = |set: Option<&Capabilities>| -> Capabilities {
        let mut set = set.cloned().unwrap_or_default();
        set.extend(LOADING_CAPABILITIES);
        set
    };
    widened.set_bounding(Some(add(real.bounding().as_ref())));
    // Effective and permitted only where the spec sets them: absent sets keep everything.
    if real.effective().is_some() {
        widened.set_effective(Some(add(real.effective().as_ref())));
    }
    if real.permitted().is_some() {
        widened.set_permitted(Some(add(real.permitted().as_ref())));
    }
    if widened != real {
        confinement.drop_to = Some(CapabilitySets::of(&real));
        process.set_capabilities(Some(widened));
    }
    Ok((process, confinement))
}

/// Capability sets as JSON with each set's names sorted, so writing the same sets twice
/// writes the same text.
fn sorted(caps: &Option<LinuxCapabilities>) -> Value {
    let mut value = serde_json::to_value(caps).expect("capabilities serialize");
    if let Value::Object(sets) = &mut value {
        for set in sets.values_mut() {
            if let Value::Array(names) = set {
                names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    value
}

/// The container's own capability sets: the annotation's when `config.json` was widened.
fn real_capabilities(config: &Value) -> Result<Option<LinuxCapabilities>, String> {
    let kept = config
        .get("annotations")
        .and_then(|a| a.get(REAL_CAPABILITIES))
        .and_then(Value::as_str);
    match kept {
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("annotation {REAL_CAPABILITIES}: {e}")),
        None => match config.get("process").and_then(|p| p.get("capabilities")) {
            None | Some(Value::Null) => Ok(None),
            Some(caps) => serde_json::from_value(caps.clone())
                .map(Some)
                .map_err(|e| format!("process.capabilities: {e}")),
        },
    }
}

/// The container's own process (capabilities as the container has them) and seccomp profile,
/// read from a bundle's `config.json`.
pub fn container_process(config: &Value) -> Result<(Process, Option<LinuxSeccomp>), String> {
    let mut process: Process = serde_json::from_value(
        config
            .get("process")
            .cloned()
            .ok_or("the container spec has no process")?,
    )
    .map_err(|e| format!("the container spec's process: {e}"))?;
    process.set_capabilities(real_capabilities(config)?);
    let seccomp = match config.get("linux").and_then(|l| l.get("seccomp")) {
        None | Some(Value::Null) => None,
        Some(profile) => Some(
            serde_json::from_value(profile.clone())
                .map_err(|e| format!("the container spec's linux.seccomp: {e}"))?,
        ),
    };
    Ok((process, seccomp))
}

/// Prepares the bundle's `config.json` for libcontainer's container init and returns the
/// init's confinement: when the filter needs the loading capabilities, `process.capabilities`
/// is widened in place and the real sets kept in the [`REAL_CAPABILITIES`] annotation (doing
/// it again finds the annotation and changes nothing).
pub fn prepare_bundle(bundle: &Path) -> Result<Confinement, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut config: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    let (process, seccomp) = container_process(&config)?;
    let (for_runtime, confinement) = confine(&process, seccomp.as_ref())?;
    if confinement.drop_to.is_none() {
        return Ok(confinement);
    }
    let real = sorted(process.capabilities()).to_string();
    let widened = sorted(for_runtime.capabilities());
    let before = config.clone();
    let Value::Object(spec) = &mut config else {
        return Err(format!("{} is not a JSON object", path.display()));
    };
    let annotations = spec
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(annotations) = annotations else {
        return Err(format!("{}: annotations is not an object", path.display()));
    };
    annotations.insert(REAL_CAPABILITIES.to_owned(), Value::String(real));
    match spec.get_mut("process") {
        Some(Value::Object(process)) => process.insert("capabilities".to_owned(), widened),
        _ => return Err(format!("{}: process is not an object", path.display())),
    };
    if config != before {
        let bytes = serde_json::to_vec(&config).expect("a spec serializes");
        super::monitor::write_atomic(&path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(confinement)
}

impl Confinement {
    /// Loads the filter and, if the process holds the loading capabilities, drops to the real
    /// sets. Runs in the container's process, after libcontainer applied user and capabilities.
    fn apply(&self) -> Result<(), String> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        filter
            .install()
            .map_err(|e| format!("unable to init seccomp: {e}"))?;
        if let Some(real) = self.drop_to {
            drop_capabilities(real)
                .map_err(|e| format!("cannot drop the capabilities used to load seccomp: {e}"))?;
        }
        Ok(())
    }
}

/// The kernel's capset/capget records (`_LINUX_CAPABILITY_VERSION_3`: two 32-bit halves).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> std::io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a valid version-3 header and two data records, as the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | u64::from(high) << 32;
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |bits: u64, high: bool| (if high { bits >> 32 } else { bits }) as u32;
    let data = [false, true].map(|high| CapData {
        effective: half(effective, high),
        permitted: half(permitted, high),
        inheritable: half(inheritable, high),
    });
    // SAFETY: a valid version-3 header and two data records, as the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drops to `real`: the bounding set first (needs CAP_SETPCAP, still effective), then
/// effective, permitted and inheritable in one capset. Ambient capabilities outside the new
/// permitted and inheritable sets go with them (the kernel clears them).
fn drop_capabilities(real: CapabilitySets) -> std::io::Result<()> {
    for cap in 0..64 {
        if real.bounding & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
        if present < 0 {
            break; // past the last capability the kernel knows
        }
        // SAFETY: as above.
        if present == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    let (effective, permitted, inheritable) = capget()?;
    let permitted = real.permitted.unwrap_or(permitted);
    let effective = real.effective.unwrap_or(effective) & permitted;
    let inheritable = real.inheritable.unwrap_or(inheritable);
    capset(effective, permitted, inheritable)
}

/// Runs a container process: its confinement, then its command with the signal state a fresh
/// process expects (Rust ignores SIGPIPE and the command would inherit that).
#[derive(Clone)]
pub struct ContainerExecutor {
    confinement: Confinement,
}

impl ContainerExecutor {
    /// An executor that applies `confinement` before the command runs.
    pub fn new(confinement: Confinement) -> ContainerExecutor {
        ContainerExecutor { confinement }
    }
}

impl Executor for ContainerExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
        for sig in Signal::iterator() {
            if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
                // SAFETY: resetting to the default disposition just before exec.
                let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            }
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<std::ffi::CString> = args
            .iter()
            .map(|a| std::ffi::CString::new(a.as_bytes()).unwrap_or_default())
            .collect();
        let error = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        Err(ExecutorError::Execution(
            format!("cannot run {:?}: {error}", args[0]).into(),
        ))
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }

    /// The environment as libcontainer sets it, then the confinement: the last step before the
    /// process tells its creator it is ready, so a failure fails the creation.
    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        libcontainer::workload::default::get_executor().setup_envs(envs)?;
        self.confinement
            .apply()
            .map_err(ExecutorSetEnvsError::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deny_unshare() -> LinuxSeccomp {
        serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}],
        }))
        .unwrap()
    }

    fn process(extra: Value) -> Process {
        let mut process = json!({
            "user": {"uid": 1000, "gid": 1000},
            "args": ["sh"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                             "permitted": ["CAP_CHOWN"]},
        });
        for (key, value) in extra.as_object().unwrap() {
            process[key] = value.clone();
        }
        serde_json::from_value(process).unwrap()
    }

    fn names(set: &Option<Capabilities>) -> Vec<String> {
        let mut names: Vec<String> = set.iter().flatten().map(|c| c.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn without_a_profile_the_process_is_left_alone() {
        let process = process(json!({}));
        let (for_runtime, confinement) = confine(&process, None).unwrap();
        assert_eq!(for_runtime, process);
        assert!(confinement.filter.is_none() && confinement.drop_to.is_none());
    }

    #[test]
    fn with_no_new_privs_the_filter_needs_no_capability() {
        let process = process(json!({"noNewPrivileges": true}));
        let (for_runtime, confinement) = confine(&process, Some(&deny_unshare())).unwrap();
        assert_eq!(for_runtime, process);
        assert!(confinement.filter.is_some());
        assert!(confinement.drop_to.is_none());
    }

    #[test]
    fn without_no_new_privs_the_runtime_keeps_the_loading_capabilities_until_the_filter_is_in() {
        for extra in [json!({}), json!({"noNewPrivileges": false})] {
            let process = process(extra);
            let (for_runtime, confinement) = confine(&process, Some(&deny_unshare())).unwrap();
            let caps = for_runtime.capabilities().clone().unwrap();
            let widened = ["CHOWN", "SETPCAP", "SYS_ADMIN"];
            assert_eq!(names(caps.bounding()), widened);
            assert_eq!(names(caps.effective()), widened);
            assert_eq!(names(caps.permitted()), widened);
            assert!(caps.inheritable().is_none());
            let chown = 1 << 0;
            assert_eq!(
                confinement.drop_to,
                Some(CapabilitySets {
                    bounding: chown,
                    effective: Some(chown),
                    permitted: Some(chown),
                    inheritable: None,
                })
            );
            // Everything but the capabilities is the container's.
            let mut back = for_runtime.clone();
            back.set_capabilities(process.capabilities().clone());
            assert_eq!(back, process);
        }
    }

    #[test]
    fn a_process_that_already_holds_the_loading_capabilities_is_not_widened() {
        let all = ["CAP_SYS_ADMIN", "CAP_SETPCAP"];
        let process = process(json!({"capabilities": {
            "bounding": all, "effective": all, "permitted": all}}));
        let (for_runtime, confinement) = confine(&process, Some(&deny_unshare())).unwrap();
        assert_eq!(for_runtime, process);
        assert!(confinement.drop_to.is_none());
    }

    #[test]
    fn a_profile_that_cannot_be_compiled_is_an_error_not_an_unconfined_process() {
        let profile: LinuxSeccomp = serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_NOTIFY"}],
        }))
        .unwrap();
        let error = confine(&process(json!({})), Some(&profile))
            .err()
            .expect("refused");
        assert!(error.starts_with("unable to init seccomp: "), "{error}");
    }

    #[test]
    fn the_bundle_is_widened_once_and_keeps_the_real_sets_for_exec() {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({
            "ociVersion": "1.0.2",
            "process": serde_json::to_value(process(json!({}))).unwrap(),
            "root": {"path": "/rootfs"},
            "linux": {"seccomp": serde_json::to_value(deny_unshare()).unwrap(),
                      "cgroupsPath": "/x"},
            "unknownField": 1,
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let read = || -> Value {
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap()
        };
        let first = prepare_bundle(dir.path()).unwrap();
        let once = read();
        let second = prepare_bundle(dir.path()).unwrap();
        assert_eq!(read(), once, "preparing again changes nothing");
        assert_eq!(first.drop_to, second.drop_to);
        let caps = &once["process"]["capabilities"];
        assert_eq!(
            caps["bounding"].as_array().unwrap().len(),
            3,
            "CHOWN, SETPCAP, SYS_ADMIN: {caps}"
        );
        assert_eq!(once["unknownField"], 1, "other fields are kept");
        let (real, seccomp) = container_process(&once).unwrap();
        assert_eq!(real.capabilities(), process(json!({})).capabilities());
        assert_eq!(seccomp, Some(deny_unshare()));
    }

    #[test]
    fn a_bundle_without_seccomp_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let text = json!({"ociVersion": "1.0.2",
            "process": serde_json::to_value(process(json!({}))).unwrap()})
        .to_string();
        std::fs::write(dir.path().join("config.json"), &text).unwrap();
        let confinement = prepare_bundle(dir.path()).unwrap();
        assert!(confinement.filter.is_none());
        let after = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert_eq!(after, text);
    }
}

/// Real containers started by the `bramble` binary's `monitor` and `exec-in` (root only):
/// `BRAMBLE_BIN=$PWD/.bramble-bin cargo test -p agent --lib executor -- --ignored
/// --test-threads=1`. The root file system is the static busybox the demo image is made of.
#[cfg(test)]
mod real_containers {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use oci_spec::runtime::Capability;
    use serde_json::{json, Value};

    use super::mask;
    use crate::runtime::containers::remove_cgroup_tree;
    use crate::runtime::spec::{runtime_spec, ContainerPlan, PodNamespaces};

    const CGROUP: &str = "bramble-executor-test";

    fn bramble() -> PathBuf {
        PathBuf::from(
            std::env::var_os("BRAMBLE_BIN")
                .expect("BRAMBLE_BIN must name the bramble binary (/work/notes/hbuild)"),
        )
    }

    fn busybox() -> PathBuf {
        let arch = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        crate::image::demo::installed_busyboxes()
            .into_iter()
            .find(|b| b.platform.to_string().contains(arch))
            .expect("a busybox for this machine")
            .path
    }

    /// One running container; killed and cleaned up on drop.
    struct Running {
        dir: tempfile::TempDir,
        id: String,
        pid: i32,
        /// From starting the monitor to its report that the container runs.
        took: Duration,
    }

    /// The spec of a busybox container running `args` as root with the default capabilities;
    /// `edit` changes it.
    fn spec(rootfs: &Path, id: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Value {
        let plan = ContainerPlan {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "FOO=from-the-spec".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rootfs: rootfs.to_path_buf(),
            pod_namespaces: PodNamespaces {
                network: PathBuf::new(),
                ipc: PathBuf::new(),
                uts: PathBuf::new(),
            },
            mounts: vec![],
            cgroup_path: format!("/{CGROUP}/{id}"),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: 100,
            terminal: false,
            privileged: false,
            capabilities: DEFAULT.iter().map(|c| c.to_string()).collect(),
            no_new_privileges: false,
            read_only_root: false,
            unmasked_proc: false,
            seccomp: None,
            sysctls: Default::default(),
            apparmor_profile: None,
            host_devices: vec![],
            host_pid: false,
            host_ipc: false,
        };
        let mut spec = runtime_spec(&plan);
        spec["linux"]["namespaces"] =
            json!(["pid", "mount", "cgroup", "network", "ipc", "uts"].map(|t| json!({"type": t})));
        edit(&mut spec);
        spec
    }

    /// Starts a container whose spec `edit` shapes; the monitor's error when it does not start.
    fn start(args: &[&str], edit: impl FnOnce(&mut Value)) -> Result<Running, String> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("executor-test-{}-{n}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for sub in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "id", "grep", "sleep", "unshare", "pwd", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let container = dir.path().join("container");
        std::fs::create_dir_all(container.join("bundle")).unwrap();
        let spec = spec(&rootfs, &id, args, edit);
        std::fs::write(
            container.join("bundle/config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        let began = Instant::now();
        let mut monitor = Command::new(bramble())
            .arg("monitor")
            .arg("--dir")
            .arg(&container)
            .arg("--id")
            .arg(&id)
            .arg("--state-root")
            .arg(dir.path().join("state"))
            .arg("--log")
            .arg(dir.path().join("log"))
            .args(["--log-max-bytes", "1000000", "--log-keep", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(monitor.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let took = began.elapsed();
        monitor.wait().unwrap();
        match line.trim().strip_prefix("started ") {
            Some(pid) => Ok(Running {
                dir,
                id,
                pid: pid.parse().unwrap(),
                took,
            }),
            None => {
                remove_cgroup_tree(&format!("{CGROUP}/{id}"));
                Err(line.trim().trim_start_matches("failed ").to_owned())
            }
        }
    }

    impl Running {
        /// Runs `command` through `bramble exec-in`; its stdout, or its stderr on failure.
        fn exec(&self, command: &[&str]) -> Result<String, String> {
            let output = Command::new(bramble())
                .arg("exec-in")
                .arg("--state-root")
                .arg(self.dir.path().join("state"))
                .arg("--id")
                .arg(&self.id)
                .arg("--")
                .args(command)
                .output()
                .unwrap();
            if output.status.success() {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&output.stderr).into_owned())
            }
        }

        /// The container's output so far, waiting until it holds `marker`.
        fn log_until(&self, marker: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.splitn(4, ' ').nth(3))
                    .collect();
                let output = lines.join("\n");
                if output.contains(marker) || Instant::now() > deadline {
                    return output;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let exited = self.dir.path().join("container/exit.json");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !exited.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            remove_cgroup_tree(&format!("{CGROUP}/{}", self.id));
        }
    }

    /// `Key: value` lines of /proc/<pid>/status as the process printed them.
    fn status(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    fn hex(bits: u64) -> String {
        format!("{bits:016x}")
    }

    const REPORT: &str = "grep -E '^(CapBnd|CapEff|CapPrm|CapAmb|NoNewPrivs|Seccomp):' \
                          /proc/self/status; id; pwd; echo FOO=$FOO; \
                          unshare -U true 2>/dev/null; echo unshare=$?";

    /// Starts a container whose init prints the report, then "done", then sleeps.
    fn start_reporting(edit: impl FnOnce(&mut Value)) -> Result<Running, String> {
        let script = format!("{REPORT}; echo done; exec sleep 600");
        start(&["sh", "-c", &script], edit)
    }

    fn caps(names: &[&str]) -> Value {
        json!({"bounding": names, "effective": names, "permitted": names})
    }

    fn deny_unshare() -> Value {
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}]})
    }

    const DEFAULT: &[&str] = &["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL", "CAP_SETUID"];

    fn mask_of(names: &[&str]) -> u64 {
        let set: oci_spec::runtime::Capabilities = names
            .iter()
            .map(|n| n.trim_start_matches("CAP_").parse::<Capability>().unwrap())
            .collect();
        mask(&set)
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn exec_runs_as_the_containers_user_groups_and_capabilities() {
        let running = start(&["sleep", "600"], |spec| {
            spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000]});
            spec["process"]["capabilities"] = caps(&[]);
            spec["process"]["noNewPrivileges"] = json!(true);
            spec["process"]["cwd"] = json!("/tmp");
        })
        .unwrap();
        let out = running.exec(&["sh", "-c", REPORT]).unwrap();
        let status = status(&out);
        assert!(
            out.contains("uid=1000 gid=1000 groups=") && out.contains("2000"),
            "{out}"
        );
        assert_eq!(status["CapEff"], hex(0), "{out}");
        assert_eq!(status["CapPrm"], hex(0), "{out}");
        assert_eq!(status["CapBnd"], hex(0), "{out}");
        assert_eq!(status["NoNewPrivs"], "1", "{out}");
        assert_eq!(status["Seccomp"], "0", "no filter asked for: {out}");
        assert!(
            out.contains("\n/tmp\n"),
            "the container's working directory: {out}"
        );
        assert!(
            out.contains("FOO=from-the-spec"),
            "the container's environment: {out}"
        );
    }

    /// Init and exec'd process of a container with a filter, for one spec shape.
    fn assert_filtered(uid: u32, no_new_privs: Option<bool>, kept: &[&str]) {
        let running = start_reporting(|spec| {
            spec["process"]["user"] = json!({"uid": uid, "gid": uid});
            spec["process"]["capabilities"] = caps(kept);
            match no_new_privs {
                Some(value) => spec["process"]["noNewPrivileges"] = json!(value),
                None => {
                    spec["process"]
                        .as_object_mut()
                        .unwrap()
                        .remove("noNewPrivileges");
                }
            }
            spec["linux"]["seccomp"] = deny_unshare();
        })
        .unwrap_or_else(|e| panic!("uid {uid}, no_new_privs {no_new_privs:?}: {e}"));
        let init = running.log_until("done");
        let exec = running.exec(&["sh", "-c", REPORT]).unwrap();
        let bounding = mask_of(kept);
        let expected_eff = if uid == 0 { bounding } else { 0 };
        for (who, out) in [("init", &init), ("exec", &exec)] {
            let context = format!("{who}, uid {uid}, no_new_privs {no_new_privs:?}:\n{out}");
            let status = status(out);
            assert_eq!(status["Seccomp"], "2", "{context}");
            assert!(out.contains("unshare=1"), "unshare is denied: {context}");
            assert_eq!(status["CapBnd"], hex(bounding), "{context}");
            assert_eq!(status["CapEff"], hex(expected_eff), "{context}");
            assert_eq!(status["CapPrm"], hex(expected_eff), "{context}");
            assert_eq!(status["CapAmb"], hex(0), "{context}");
            let nnp = if no_new_privs == Some(true) { "1" } else { "0" };
            assert_eq!(status["NoNewPrivs"], nnp, "{context}");
        }
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn the_filter_holds_in_init_and_exec_with_and_without_no_new_privs() {
        assert_filtered(0, Some(true), DEFAULT);
        assert_filtered(0, None, DEFAULT);
        assert_filtered(0, Some(false), DEFAULT);
        assert_filtered(0, None, &[]);
        assert_filtered(1000, None, DEFAULT);
        assert_filtered(1000, Some(true), DEFAULT);
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn without_a_filter_unshare_works_so_the_probe_can_fail() {
        let running = start_reporting(|spec| {
            spec["process"]["capabilities"] = caps(DEFAULT);
        })
        .unwrap();
        let init = running.log_until("done");
        assert!(init.contains("unshare=0"), "{init}");
        assert!(init.contains("Seccomp:\t0") || status(&init)["Seccomp"] == "0");
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn a_filter_that_cannot_take_effect_fails_the_start() {
        // Loaded before the capability drop (no no_new_privs), a profile denying capset
        // leaves the process with CAP_SYS_ADMIN: the start fails instead.
        let error = start(&["sleep", "600"], |spec| {
            spec["process"]["capabilities"] = caps(DEFAULT);
            spec["process"]
                .as_object_mut()
                .unwrap()
                .remove("noNewPrivileges");
            spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["capset"], "action": "SCMP_ACT_ERRNO"}]});
        })
        .err()
        .expect("the start fails");
        assert!(
            error.contains("cannot drop the capabilities used to load seccomp"),
            "{error}"
        );
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn a_profile_bramble_cannot_enforce_fails_the_start() {
        let error = start(&["sleep", "600"], |spec| {
            spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_NOTIFY"}]});
        })
        .err()
        .expect("the start fails");
        assert!(error.starts_with("unable to init seccomp: "), "{error}");
    }

    #[test]
    #[ignore = "needs root; prints timings"]
    fn what_the_executor_steps_cost() {
        // The monitor's part: read the bundle, compile, widen and rewrite it.
        let dir = tempfile::tempdir().unwrap();
        let mut config: Value = serde_json::from_str(
            r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0},
                "args": ["sh"], "cwd": "/"}, "linux": {}}"#,
        )
        .unwrap();
        config["process"]["capabilities"] = caps(DEFAULT);
        config["linux"]["seccomp"] = runtime_default(DEFAULT);
        let mut prepare = vec![];
        for _ in 0..50 {
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            let began = Instant::now();
            let confinement = super::prepare_bundle(dir.path()).unwrap();
            prepare.push(began.elapsed());
            assert!(confinement.drop_to.is_some());
        }
        prepare.sort();
        let mut without_write = vec![];
        config["process"]["noNewPrivileges"] = json!(true);
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        for _ in 0..50 {
            let began = Instant::now();
            super::prepare_bundle(dir.path()).unwrap();
            without_write.push(began.elapsed());
        }
        without_write.sort();
        config["process"]
            .as_object_mut()
            .unwrap()
            .remove("noNewPrivileges");
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        // The container's part, in a child: load the filter, drop the capabilities.
        let confinement = super::prepare_bundle(dir.path()).unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        // SAFETY: the child makes system calls and writes eight bytes, then exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let began = Instant::now();
                let ok = confinement.apply().is_ok();
                let took = if ok {
                    began.elapsed().as_nanos() as u64
                } else {
                    0
                };
                let _ = nix::unistd::write(&write, &took.to_le_bytes());
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(write);
                let mut bytes = [0u8; 8];
                let mut file = std::fs::File::from(read);
                std::io::Read::read_exact(&mut file, &mut bytes).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                let took = u64::from_le_bytes(bytes);
                assert!(took > 0, "the confinement failed in the child");
                println!(
                    "prepare the bundle (read, compile, widen, write): median {:?}\n\
                     prepare the bundle (read, compile; no_new_privs): median {:?}\n\
                     load the filter and drop the capabilities: {:?}",
                    prepare[prepare.len() / 2],
                    without_write[without_write.len() / 2],
                    Duration::from_nanos(took)
                );
            }
        }
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN"]
    fn the_runtime_default_profile_confines_init_and_exec() {
        let profile = runtime_default(DEFAULT);
        let dropped = runtime_default(&[]);
        for (uid, no_new_privs, kept, profile) in [
            (0, None, DEFAULT, &profile),
            (0, Some(true), DEFAULT, &profile),
            (0, None, &[][..], &dropped),
            (1000, None, DEFAULT, &profile),
            (1000, Some(true), &[][..], &dropped),
        ] {
            let running = start_reporting(|spec| {
                spec["process"]["user"] = json!({"uid": uid, "gid": uid});
                spec["process"]["capabilities"] = caps(kept);
                spec["process"]
                    .as_object_mut()
                    .unwrap()
                    .remove("noNewPrivileges");
                if let Some(value) = no_new_privs {
                    spec["process"]["noNewPrivileges"] = json!(value);
                }
                spec["linux"]["seccomp"] = serde_json::to_value(profile).unwrap();
            })
            .unwrap_or_else(|e| panic!("uid {uid}, no_new_privs {no_new_privs:?}: {e}"));
            let init = running.log_until("done");
            let exec = running.exec(&["sh", "-c", REPORT]).unwrap();
            for (who, out) in [("init", &init), ("exec", &exec)] {
                let context = format!("{who}, uid {uid}, no_new_privs {no_new_privs:?}:\n{out}");
                let status = status(out);
                assert_eq!(status["Seccomp"], "2", "{context}");
                assert!(out.contains("unshare=1"), "unshare is denied: {context}");
                assert_eq!(status["CapBnd"], hex(mask_of(kept)), "{context}");
            }
        }
    }

    /// containerd's default profile for a container with these bounding capabilities.
    fn runtime_default(bounding: &[&str]) -> Value {
        let bounding: Vec<String> = bounding.iter().map(|c| c.to_string()).collect();
        let choice = crate::seccomp::Choice::RuntimeDefault;
        let profile = crate::seccomp::resolve(&choice, &bounding, Path::new("/nonexistent"))
            .unwrap()
            .expect("a profile");
        serde_json::to_value(profile).unwrap()
    }

    #[test]
    #[ignore = "runs real containers: needs root and BRAMBLE_BIN; prints timings"]
    fn what_the_filter_costs_a_start() {
        // Interleaved, so that every kind sees the same machine.
        let kinds = [
            ("no filter", false, None),
            ("filter, no_new_privs", true, Some(true)),
            ("filter, capability dance", true, None),
        ];
        let mut times = vec![vec![]; kinds.len()];
        for _ in 0..30 {
            for (kind, (_, seccomp, nnp)) in kinds.iter().enumerate() {
                let running = start(&["sleep", "600"], |spec| {
                    spec["process"]["capabilities"] = caps(DEFAULT);
                    match nnp {
                        Some(v) => spec["process"]["noNewPrivileges"] = json!(v),
                        None => {
                            spec["process"]
                                .as_object_mut()
                                .unwrap()
                                .remove("noNewPrivileges");
                        }
                    }
                    if *seccomp {
                        spec["linux"]["seccomp"] = runtime_default(DEFAULT);
                    }
                })
                .unwrap();
                times[kind].push(running.took);
                drop(running);
            }
        }
        for ((name, _, _), times) in kinds.iter().zip(&mut times) {
            times.sort();
            println!("{name}: median {:?}", times[times.len() / 2]);
        }
    }
}
