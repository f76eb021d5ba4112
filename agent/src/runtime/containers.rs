//! One container attempt on disk: its bundle, overlay root, monitor and what it left behind.
//!
//! A pod's container `web` started for the third time lives in `containers/web.2/` (attempts
//! count from 0, which is also its restart count). The directory is the source of truth: a
//! restarted agent reads `started.json`, `exit.json` and `monitor.pid` to learn what is running
//! and how earlier attempts ended.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;

use super::monitor::{write_atomic, Exited, Started};
use super::spec::{host_devices, runtime_spec, ContainerPlan};

/// Log rotation: rotate at 10 MiB, keep 2 old files.
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// How many rotated files to keep.
pub const LOG_KEEP: usize = 2;

/// What the directory says about an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptState {
    /// Created but its monitor has not reported yet (or died before doing so).
    Creating,
    /// The process runs.
    Running(Started),
    /// It ended (or never ran: reason `StartError`).
    Exited(Exited),
}

/// One attempt of one container.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `containers/<name>.<n>`.
    pub dir: PathBuf,
    /// The container name.
    pub name: String,
    /// The attempt number (its restart count).
    pub number: u32,
}

/// Where and how containers are run on this node.
#[derive(Debug, Clone)]
pub struct ContainerRunner {
    /// The executable re-run as the monitor (the agent's own binary).
    pub monitor_exe: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The cgroup under which pods' cgroups are made (`/bramble/<node>`).
    pub cgroup_parent: String,
}

/// The container monitors still running for the pods under `pods_dir` (see
/// [`crate::node::pods_dir`]): what is left to kill when a node is wiped. A recorded process
/// ID counts only while it is still a `bramble monitor`, never a process that reused it.
pub fn recorded_monitors(pods_dir: &Path) -> Vec<i32> {
    let pods = std::fs::read_dir(pods_dir).into_iter().flatten().flatten();
    pods.flat_map(|pod| Attempt::all(&pod.path()))
        .filter_map(|attempt| attempt.monitor_pid())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| line.split('\0').any(|arg| arg == "monitor"))
        })
        .collect()
}

impl Attempt {
    /// The attempt `number` of container `name` in a pod directory.
    pub fn new(pod_dir: &Path, name: &str, number: u32) -> Attempt {
        Attempt {
            dir: pod_dir.join("containers").join(format!("{name}.{number}")),
            name: name.to_owned(),
            number,
        }
    }

    /// The process ID its monitor recorded, if it started one.
    pub fn monitor_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("monitor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every attempt of every container recorded in a pod directory, oldest first per name.
    pub fn all(pod_dir: &Path) -> Vec<Attempt> {
        let Ok(entries) = std::fs::read_dir(pod_dir.join("containers")) else {
            return Vec::new();
        };
        let mut attempts: Vec<Attempt> = entries
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name().into_string().ok()?;
                let (name, number) = file.rsplit_once('.')?;
                Some(Attempt {
                    dir: entry.path(),
                    name: name.to_owned(),
                    number: number.parse().ok()?,
                })
            })
            .collect();
        attempts.sort_by(|a, b| (&a.name, a.number).cmp(&(&b.name, b.number)));
        attempts
    }

    /// The container ID: unique on the node, valid for libcontainer.
    pub fn id(&self, pod_uid: &str) -> String {
        format!("{pod_uid}-{}-{}", self.name, self.number)
    }

    /// The UID of the pod the attempt belongs to (its directory's grandparent's name).
    pub fn pod_uid(&self) -> String {
        self.dir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The log file of this attempt.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .join("logs")
            .join(&self.name)
            .join(format!("{}.log", self.number))
    }

    /// Reads the attempt's state from its files.
    pub fn state(&self) -> AttemptState {
        let read = |file: &str| std::fs::read(self.dir.join(file)).ok();
        if let Some(exited) = read("exit.json").and_then(|b| serde_json::from_slice(&b).ok()) {
            return AttemptState::Exited(exited);
        }
        let started: Option<Started> =
            read("started.json").and_then(|b| serde_json::from_slice(&b).ok());
        let monitor_alive = read("monitor.pid")
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(|pid| nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok());
        match started {
            Some(started) if monitor_alive => AttemptState::Running(started),
            Some(started) => AttemptState::Exited(Exited {
                exit_code: 137,
                signal: Some(9),
                reason: "Error".into(),
                message: "the container's monitor disappeared".into(),
                started_at: started.started_at,
                finished_at: jiff::Timestamp::now().to_string(),
            }),
            None if monitor_alive || !self.dir.join("monitor.pid").exists() => {
                AttemptState::Creating
            }
            None => AttemptState::Exited(Exited {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: "the container's monitor stopped before starting it".into(),
                started_at: String::new(),
                finished_at: jiff::Timestamp::now().to_string(),
            }),
        }
    }

    /// Sends a signal to the container's init process if it runs.
    pub fn signal(&self, signal: Signal) {
        if let AttemptState::Running(started) = self.state() {
            let _ = nix::sys::signal::kill(Pid::from_raw(started.pid), signal);
        }
    }

    /// Stops the container: SIGTERM, then SIGKILL once `grace` has passed (a PID 1 without a
    /// handler never sees SIGTERM). Returns how it ended, or `None` if it never ran.
    pub async fn stop(&self, grace: Duration) -> Option<Exited> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut killed = false;
        self.signal(Signal::SIGTERM);
        loop {
            match self.state() {
                AttemptState::Exited(exited) => return Some(exited),
                AttemptState::Creating if !self.dir.join("monitor.pid").exists() => return None,
                _ => {}
            }
            if !killed && tokio::time::Instant::now() >= deadline {
                self.signal(Signal::SIGKILL);
                killed = true;
            }
            if killed && tokio::time::Instant::now() >= deadline + Duration::from_secs(10) {
                // The monitor is gone or stuck; the directory says what it last knew.
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Unmounts the root file system and deletes the attempt's directory (not its log).
    pub fn remove(&self) -> std::io::Result<()> {
        let rootfs = self.dir.join("rootfs");
        let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
        super::userns::unmount_attempt(&self.dir);
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A read-only view of the agent's own binary for the processes that enter containers (the
/// monitor, which runs youki's init, and `exec-in`): against CVE-2019-5736, where a container
/// process opens `/proc/<pid>/exe` of such a process and, once it has exited, writes through
/// that handle to replace the host's binary. The view is a read-only bind mount of `binary`
/// at `dir/bramble`, so every write through it fails with `EROFS`; it shares the page cache
/// with the binary (no 27 MB memfd copy per process; runc 1.2 prefers a read-only overlay
/// view over its memfd copy for the same reason). A view left by an earlier agent is
/// replaced, so an upgraded binary is used.
pub fn protected_exe(binary: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let view = dir.join("bramble");
    while umount2(&view, MntFlags::MNT_DETACH).is_ok() {}
    if std::fs::symlink_metadata(&view).is_err() {
        std::fs::File::create(&view)?;
    }
    mount(
        Some(binary),
        &view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let read_only = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Err(error) = mount(None::<&str>, &view, None::<&str>, read_only, None::<&str>) {
        let _ = umount2(&view, MntFlags::MNT_DETACH);
        return Err(error.into());
    }
    // Never run from a view that could be written. (Opening it for writing would not tell:
    // a running binary answers ETXTBSY before the mount is asked.)
    let mounted_read_only = nix::sys::statvfs::statvfs(&view)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    match mounted_read_only {
        true => Ok(view),
        false => {
            let _ = umount2(&view, MntFlags::MNT_DETACH);
            Err(std::io::Error::other(format!(
                "{} is not read-only after a read-only remount",
                view.display()
            )))
        }
    }
}

/// Mounts an overlay at `rootfs` of `layers` (bottom first; the top one wins) under `upper`.
pub(super) fn mount_overlay(
    layers: &[String],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
) -> nix::Result<()> {
    let lower: Vec<&str> = layers.iter().rev().map(String::as_str).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
}

impl ContainerRunner {
    /// The cgroup of a pod.
    pub fn pod_cgroup(&self, pod_uid: &str) -> String {
        format!("{}/pod{pod_uid}", self.cgroup_parent)
    }

    /// Removes a pod's cgroup once its containers are gone.
    pub fn remove_pod_cgroup(&self, pod_uid: &str) {
        remove_cgroup_tree(&self.pod_cgroup(pod_uid));
    }

    /// Prepares the attempt's root file system and bundle and starts it under a monitor.
    /// Returns once the container runs (or failed to start, with the reason).
    pub async fn start(
        &self,
        attempt: &Attempt,
        pod_uid: &str,
        layers: &[PathBuf],
        mut plan: ContainerPlan,
    ) -> Result<Started, String> {
        attempt
            .remove()
            .map_err(|e| format!("cannot clear {}: {e}", attempt.dir.display()))?;
        let rootfs = attempt.dir.join("rootfs");
        let upper = attempt.dir.join("upper");
        let work = attempt.dir.join("work");
        let bundle = attempt.dir.join("bundle");
        for dir in [&rootfs, &upper, &work, &bundle] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // A pod with `hostUsers: false` mounts its files id-mapped (see `userns`).
        let user_namespace =
            super::userns::prepare_attempt(&attempt.dir, layers, &mut plan.mounts)?;
        if user_namespace.is_none() {
            let layers: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
            mount_overlay(&layers, &upper, &work, &rootfs)
                .map_err(|e| format!("cannot mount the container's root file system: {e}"))?;
        }
        plan.rootfs = rootfs;
        plan.cgroup_path = format!("{}/{}", self.pod_cgroup(pod_uid), attempt.name);
        if plan.privileged {
            plan.host_devices = host_devices(Path::new("/dev"));
        }
        let mut spec = runtime_spec(&plan);
        if let Some(user_namespace) = &user_namespace {
            super::userns::add_to_spec(&mut spec, user_namespace);
        }
        write_atomic(
            &bundle.join("config.json"),
            &serde_json::to_vec_pretty(&spec).expect("specs serialize"),
        )
        .map_err(|e| format!("cannot write the container spec: {e}"))?;
        let log = attempt.log_path();
        let mut child = tokio::process::Command::new(&self.monitor_exe)
            .arg("monitor")
            .arg("--dir")
            .arg(&attempt.dir)
            .arg("--id")
            .arg(attempt.id(pod_uid))
            .arg("--state-root")
            .arg(&self.state_root)
            .arg("--log")
            .arg(&log)
            .arg("--log-max-bytes")
            .arg(LOG_MAX_BYTES.to_string())
            .arg("--log-keep")
            .arg(LOG_KEEP.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the container monitor: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        // The first monitor process exits as soon as it has forked; reap it.
        let _ = child.wait().await;
        // The container has its own copies of id-mapped volumes by now (or never will).
        super::userns::unmount_attempt(&attempt.dir);
        match first {
            Ok(Ok(Some(line))) if line.starts_with("started ") => match attempt.state() {
                AttemptState::Running(started) => Ok(started),
                AttemptState::Exited(exited) => Ok(Started {
                    pid: 0,
                    started_at: exited.started_at,
                }),
                AttemptState::Creating => {
                    Err("the container's monitor did not record its start".into())
                }
            },
            Ok(Ok(Some(line))) => Err(line.trim_start_matches("failed ").to_owned()),
            Ok(_) => Err("the container's monitor stopped without a word".into()),
            Err(_) => Err("the container did not start within 60 s".into()),
        }
    }
}

/// Removes a cgroup and its empty children in every mounted hierarchy (cgroup v2, and each v1
/// controller on hybrid systems). Cgroups that still hold processes stay.
pub fn remove_cgroup_tree(relative: &str) {
    let relative = relative.trim_start_matches('/');
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let top = root.join(relative);
        if top.is_dir() {
            remove_empty_dirs(&top);
        }
    }
}

/// SIGKILLs every process in a cgroup and its children, in every mounted hierarchy. Returns
/// how many processes were signalled.
pub fn kill_cgroup_tree(relative: &str) -> usize {
    fn kill_in(dir: &Path) -> usize {
        let mut killed = 0;
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed += 1;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    killed += kill_in(&entry.path());
                }
            }
        }
        killed
    }
    let relative = relative.trim_start_matches('/');
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    roots
        .iter()
        .map(|root| root.join(relative))
        .filter(|top| top.is_dir())
        .map(|top| kill_in(&top))
        .sum()
}

fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_binary_cannot_be_overwritten_through_proc_exe() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounts need root");
            return;
        }
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("bramble-binary");
        std::fs::copy("/bin/sleep", &binary).unwrap();
        let original = std::fs::read(&binary).unwrap();
        let exe = protected_exe(&binary, &dir.path().join("bin")).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), original);
        // What a container process does: hold the runtime's /proc/<pid>/exe, wait for the
        // runtime to exit (ETXTBSY no longer protects it), then write through the handle.
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(format!("/proc/{}/exe", child.id()))
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", held.as_raw_fd()));
        let refused = reopened.as_ref().err().and_then(|e| e.raw_os_error());
        // A second start replaces the view; then clean up.
        let again = protected_exe(&binary, &dir.path().join("bin")).unwrap();
        while umount2(&again, MntFlags::MNT_DETACH).is_ok() {}
        assert_eq!(refused, Some(libc::EROFS), "{reopened:?}");
        assert_eq!(std::fs::read(&binary).unwrap(), original);
    }
}
