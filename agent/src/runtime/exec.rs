//! Running a command inside a running container (`kubectl exec`, exec probes): the agent
//! starts `bramble exec-in`, a short-lived single-threaded helper that joins the container
//! through libcontainer's tenant builder, as the container's own process (user, groups,
//! capabilities, no_new_privs, seccomp), and exits with the command's exit code. The helper's
//! standard streams are the command's.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};

use super::containers::{Attempt, ContainerRunner};
use super::executor::{confine, container_process, Confinement, ContainerExecutor};

/// What the helper needs.
#[derive(Debug, Clone)]
pub struct ExecArgs {
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The container ID.
    pub id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// The helper's entry point: runs the command in the container and exits with its code
/// (126 when it cannot be started, as shells do).
pub fn run_helper(args: ExecArgs) -> ! {
    if let Err(error) = enter_user_namespace(&args) {
        eprintln!("cannot exec in the container: {error}");
        std::process::exit(126);
    }
    let (process_file, confinement) = match exec_process(&args) {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("cannot exec in the container: {error}");
            std::process::exit(126);
        }
    };
    let process_path = PathBuf::from(format!("/proc/self/fd/{}", process_file.as_raw_fd()));
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_executor(ContainerExecutor::new(confinement))
        .with_root_path(&args.state_root)
        .map(|b| {
            b.as_tenant()
                .with_process(Some(&process_path))
                .with_detach(false)
                .build()
        });
    drop(process_file);
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(error)) => {
            eprintln!(
                "cannot exec {:?} in the container: {}",
                args.command,
                protocol::error::error_chain(&error)
            );
            std::process::exit(126);
        }
        Err(error) => {
            eprintln!("cannot exec in the container: {error}");
            std::process::exit(126);
        }
    };
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    std::process::exit(code)
}

/// Enters the user namespace of a container that has its own (a `hostUsers: false` pod).
/// libcontainer 0.7's tenant builder joins every namespace of the container but that one, so
/// the command would run as the node's root inside the pod's other namespaces. The helper is
/// single-threaded, as setns(CLONE_NEWUSER) requires.
fn enter_user_namespace(args: &ExecArgs) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let container = Container::load(args.state_root.join(&args.id))
        .map_err(|e| format!("container {}: {e}", args.id))?;
    let pid = container
        .pid()
        .ok_or_else(|| format!("container {} is not running", args.id))?;
    let theirs = format!("/proc/{pid}/ns/user");
    let namespace = File::open(&theirs).map_err(|e| format!("{theirs}: {e}"))?;
    let own = std::fs::metadata("/proc/self/ns/user").map_err(|e| e.to_string())?;
    let other = namespace.metadata().map_err(|e| e.to_string())?;
    if (own.dev(), own.ino()) == (other.dev(), other.ino()) {
        return Ok(());
    }
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("cannot enter the container's user namespace: {e}"))
}

/// The process an exec'd command runs as, as containerd builds it: the container's own process
/// (user and groups, capabilities, no_new_privs, AppArmor profile, rlimits, working directory,
/// environment) with only the command replaced and no terminal of its own (the helper's
/// standard streams are the command's). libcontainer's tenant builder would otherwise start
/// it as root with no groups, and without the container's seccomp filter, which the executor
/// loads. Returns the process as JSON in an anonymous file for the tenant builder to read.
fn exec_process(args: &ExecArgs) -> Result<(File, Confinement), String> {
    let container = Container::load(args.state_root.join(&args.id))
        .map_err(|e| format!("container {}: {e}", args.id))?;
    let config_path = container.bundle().join("config.json");
    let config: serde_json::Value = std::fs::read(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let (mut process, seccomp) = container_process(&config)?;
    if args.command.is_empty() {
        return Err("no command".into());
    }
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(false));
    process.set_console_size(None);
    process.set_command_line(None);
    let (process, confinement) = confine(&process, seccomp.as_ref())?;
    let json = serde_json::to_vec(&process).expect("a process serializes");
    // SAFETY: a NUL-terminated name and valid flags.
    let fd = unsafe { libc::memfd_create(c"bramble-exec-process".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot create the process file: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&json)
        .map_err(|e| format!("cannot write the process file: {e}"))?;
    Ok((file, confinement))
}

/// A finished command's exit code and combined output.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// The exit code.
    pub exit_code: i32,
    /// stdout followed by stderr.
    pub output: Vec<u8>,
}

/// Runs `command` in the attempt's container and collects its output, killing the helper
/// after `timeout`.
pub async fn run_captured(
    runner: &ContainerRunner,
    attempt: &Attempt,
    command: &[String],
    timeout: Duration,
) -> Result<ExecOutput, String> {
    let child = exec_command(runner, attempt, command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the exec helper: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let mut combined = output.stdout;
            combined.extend_from_slice(&output.stderr);
            Ok(ExecOutput {
                exit_code: output.status.code().unwrap_or(255),
                output: combined,
            })
        }
        Ok(Err(e)) => Err(format!("exec helper failed: {e}")),
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
    }
}

/// The helper command line for `command` in the attempt's container; the caller wires stdio.
pub fn exec_command(
    runner: &ContainerRunner,
    attempt: &Attempt,
    command: &[String],
) -> tokio::process::Command {
    let mut process = tokio::process::Command::new(&runner.monitor_exe);
    process
        .arg("exec-in")
        .arg("--state-root")
        .arg(&runner.state_root)
        .arg("--id")
        .arg(attempt.id(&attempt.pod_uid()))
        .arg("--")
        .args(command);
    process
}
