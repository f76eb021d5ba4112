//! The container monitor: a small single-threaded process per container, the agent's binary
//! re-executed (`bramble monitor`), that creates the container with libcontainer, copies its
//! output into the log file and records how it ended.
//!
//! libcontainer forks its caller and makes the container's init the caller's child, which is
//! unsafe inside the agent's multi-threaded runtime; the monitor also outlives the agent, so a
//! restarted agent finds its containers running and their exit codes kept.
//!
//! ```text
//!  agent ──spawn──► monitor ──fork──► monitor (setsid)   first process exits at once
//!                                         │ compile the seccomp filter
//!                                         │ libcontainer create + start
//!                                         │ prints "started <pid>" to the agent's pipe
//!                                         │ relays stdout/stderr → log file (CRI format, rotated)
//!                                         │ waits for init, writes exit.json, deletes container
//!                                         ▼ exits
//! ```
//!
//! Files in the container directory: `monitor.pid`, `started.json`, `exit.json`,
//! `monitor.log` (libcontainer's own messages), `bundle/config.json` (which the monitor widens
//! for loading a seccomp filter, keeping the container's own capabilities in an annotation:
//! see `executor`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::executor::{prepare_bundle, ContainerExecutor};

/// Where and how to run one container.
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    /// The container directory (holds `bundle/`).
    pub dir: PathBuf,
    /// The container ID (unique on the node).
    pub id: String,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The log file to append to.
    pub log: PathBuf,
    /// Rotate the log once it is this big.
    pub log_max_bytes: u64,
    /// Rotated files to keep besides the current one.
    pub log_keep: usize,
}

/// How a container started, written to `started.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The container's init process, as seen from the host.
    pub pid: i32,
    /// RFC 3339.
    pub started_at: String,
}

/// How a container ended, written to `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    /// The exit code (128 + signal for a signal).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, or `StartError` when it never ran.
    pub reason: String,
    /// For start errors: why.
    #[serde(default)]
    pub message: String,
    /// RFC 3339; empty when it never started.
    #[serde(default)]
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
}

impl Exited {
    /// A container that never ran: `StartError` with why.
    pub fn start_error(message: String) -> Exited {
        Exited {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message,
            started_at: String::new(),
            finished_at: now(),
        }
    }

    /// Records it as the container directory's `exit.json`.
    pub fn write_to(&self, container_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).expect("an Exited serializes");
        write_atomic(&container_dir.join("exit.json"), &bytes)
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Writes a file atomically (temp + rename), so a reader never sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The monitor's entry point; never returns.
pub fn run(args: MonitorArgs) -> ! {
    // Detach: the agent reaps the first process right away and the monitor lives on its own.
    // SAFETY: the process is single-threaded here (no runtime has been started).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(error) => {
            println!("failed cannot fork the monitor: {error}");
            std::process::exit(1);
        }
    }
    let _ = nix::unistd::setsid();
    let _ = write_atomic(
        &args.dir.join("monitor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    let (pid, out, err) = match start(&args) {
        Ok(started) => started,
        Err(message) => {
            let _ = Exited::start_error(message.clone()).write_to(&args.dir);
            println!("failed {}", message.replace('\n', " "));
            let _ = cleanup(&args);
            std::process::exit(1);
        }
    };
    let started = Started {
        pid: pid.as_raw(),
        started_at: now(),
    };
    let _ = write_atomic(
        &args.dir.join("started.json"),
        &serde_json::to_vec(&started).expect("serializes"),
    );
    println!("started {}", pid.as_raw());
    let _ = std::io::stdout().flush();
    detach_stdout();
    let mut log = LogWriter::open(&args.log, args.log_max_bytes, args.log_keep);
    let status = relay(pid, out, err, &mut log);
    let oom = oom_killed(&args);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let reason = if oom && signal == Some(9) {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let exited = Exited {
        exit_code,
        signal,
        reason: reason.into(),
        message: String::new(),
        started_at: started.started_at,
        finished_at: now(),
    };
    let _ = exited.write_to(&args.dir);
    let _ = cleanup(&args);
    std::process::exit(0)
}

fn detach_stdout() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // Onto our own stdout; the agent's pipe may be gone.
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn start(args: &MonitorArgs) -> Result<(Pid, OwnedFd, OwnedFd), String> {
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let stdin = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    // The seccomp filter is compiled here, before libcontainer forks the container's init.
    let confinement = prepare_bundle(&args.dir.join("bundle"))?;
    let builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_executor(ContainerExecutor::new(confinement))
        .with_root_path(&args.state_root)
        .map_err(|e| format!("container state directory: {e}"))?
        .with_stdin(OwnedFd::from(stdin))
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()
        .map_err(|e| format!("container id: {e}"))?;
    let mut container = builder
        .as_init(args.dir.join("bundle"))
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| protocol::error::error_chain(&e))?;
    container
        .start()
        .map_err(|e| protocol::error::error_chain(&e))?;
    let pid = container
        .pid()
        .ok_or_else(|| "the container has no process".to_string())?;
    Ok((pid, out_r, err_r))
}

/// A descriptor that becomes readable when process `pid` exits; `None` when it has gone (or
/// the kernel is older than 5.3).
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Copies the container's output into the log until its init exits; returns how it exited.
fn relay(pid: Pid, out: OwnedFd, err: OwnedFd, log: &mut LogWriter) -> WaitStatus {
    let pidfd = pidfd_open(pid.as_raw());
    let mut streams = [
        Some((File::from(out), "stdout", Vec::new())),
        Some((File::from(err), "stderr", Vec::new())),
    ];
    let mut exited: Option<WaitStatus> = None;
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        if exited.is_none() {
            if let Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                exited = Some(status);
            }
        }
        let open: Vec<usize> = (0..2).filter(|i| streams[*i].is_some()).collect();
        if open.is_empty() && exited.is_some() {
            break;
        }
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|i| {
                PollFd::new(
                    streams[*i].as_ref().expect("open").0.as_fd(),
                    PollFlags::POLLIN,
                )
            })
            .collect();
        let watch_exit = exited.is_none() && pidfd.is_some();
        if watch_exit {
            fds.push(PollFd::new(
                pidfd.as_ref().expect("checked").as_fd(),
                PollFlags::POLLIN,
            ));
        }
        // Once the init is gone, other processes of its PID namespace die with it and the
        // pipes close; a short timeout guards against a descendant that escaped holding them.
        let timeout = if exited.is_some() {
            PollTimeout::from(2000u16)
        } else if pidfd.is_none() {
            PollTimeout::from(500u16)
        } else {
            PollTimeout::NONE
        };
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => 0,
        };
        if ready == 0 && exited.is_some() {
            break;
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|fd| {
                fd.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        drop(fds);
        for (slot, index) in open.iter().enumerate() {
            if !readable[slot] {
                continue;
            }
            let stream = streams[*index].as_mut().expect("open");
            match stream.0.read(&mut buffer) {
                Ok(0) | Err(_) => {
                    let (_, name, pending) = streams[*index].take().expect("open");
                    if !pending.is_empty() {
                        log.line(name, &pending, false);
                    }
                }
                Ok(n) => {
                    let (_, name, pending) = stream;
                    pending.extend_from_slice(&buffer[..n]);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        log.line(name, &line[..line.len() - 1], true);
                    }
                    if pending.len() >= 16 * 1024 {
                        let chunk = std::mem::take(pending);
                        log.line(name, &chunk, false);
                    }
                }
            }
        }
    }
    match exited {
        Some(status) => status,
        None => waitpid(pid, None).unwrap_or(WaitStatus::Exited(pid, 255)),
    }
}

/// Whether the kernel's OOM killer killed a process of the container's cgroup.
fn oom_killed(args: &MonitorArgs) -> bool {
    let Ok(config) = std::fs::read(args.dir.join("bundle/config.json")) else {
        return false;
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&config) else {
        return false;
    };
    let Some(path) = spec["linux"]["cgroupsPath"].as_str() else {
        return false;
    };
    let path = path.trim_start_matches('/');
    let candidates = [
        format!("/sys/fs/cgroup/{path}/memory.events"),
        format!("/sys/fs/cgroup/memory/{path}/memory.oom_control"),
    ];
    candidates.iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

fn cleanup(args: &MonitorArgs) -> Result<(), String> {
    let state = args.state_root.join(&args.id);
    if let Ok(mut container) = libcontainer::container::Container::load(state.clone()) {
        container
            .delete(true)
            .map_err(|e| protocol::error::error_chain(&e))?;
    }
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// Appends CRI-format lines (`<time> <stream> <F|P> <text>`) and rotates by size.
pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl LogWriter {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> LogWriter {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let file = File::options().create(true).append(true).open(path).ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep,
        }
    }

    /// Writes one line; `full` is false for a partial line (no newline yet, or too long).
    pub fn line(&mut self, stream: &str, text: &[u8], full: bool) {
        let mut record = Vec::with_capacity(text.len() + 48);
        record.extend_from_slice(
            format!(
                "{} {stream} {} ",
                jiff::Timestamp::now(),
                if full { 'F' } else { 'P' }
            )
            .as_bytes(),
        );
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.size + record.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if let Some(file) = self.file.as_mut() {
            if file.write_all(&record).is_ok() {
                self.size += record.len() as u64;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        for n in (1..=self.keep).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                rotated(&self.path, n - 1)
            };
            let _ = std::fs::rename(&from, rotated(&self.path, n));
        }
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file = File::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

/// The name of the `n`th rotated log file.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_by_size_and_keep_a_few_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut log = LogWriter::open(&path, 4096, 2);
        for i in 0..300 {
            log.line(
                "stdout",
                format!("line {i:04} {}", "x".repeat(40)).as_bytes(),
                true,
            );
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 4096);
        assert!(current
            .trim_end()
            .ends_with(&format!("line 0299 {}", "x".repeat(40))));
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let first = current.lines().next().unwrap();
        let parts: Vec<&str> = first.splitn(4, ' ').collect();
        assert_eq!(parts[1], "stdout");
        assert_eq!(parts[2], "F");
    }
}
