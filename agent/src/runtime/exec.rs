//! Running a command inside a running container (`kubectl exec`, exec probes): the agent
//! starts `bramble exec-in`, a short-lived single-threaded helper that joins the container
//! through libcontainer's tenant builder and exits with the command's exit code. The helper's
//! standard streams are the command's.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};

use super::containers::{Attempt, ContainerRunner};

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
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .map(|b| {
            b.as_tenant()
                .with_container_args(args.command.clone())
                .with_detach(false)
                .build()
        });
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(error)) => {
            eprintln!("cannot exec {:?} in the container: {error}", args.command);
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
