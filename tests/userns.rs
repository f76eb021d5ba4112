//! A real container of a pod with `hostUsers: false`: libcontainer under `bramble monitor`
//! joins the pod's user namespace, runs as root inside and as the pod's first host ID
//! outside, and writes to its id-mapped root file system and volume.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::runtime::containers::{Attempt, ContainerRunner};
use agent::runtime::sandbox;
use agent::runtime::spec::{all_capabilities, capabilities, BindMount, ContainerPlan};
use agent::runtime::userns;

/// A one-layer image: a static busybox and the applets the test runs.
fn busybox_layer(dir: &Path) {
    let share = std::env::var("BRAMBLE_SHARE").unwrap_or("/usr/local/share/bramble".into());
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let busybox = Path::new(&share).join("busybox").join(arch).join("busybox");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "sleep", "ls", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/image-file"), "from the image\n").unwrap();
}

/// Unmounts whatever the test mounted and removes its cgroups, even after a failed assertion.
struct Cleanup {
    root: PathBuf,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        agent::runtime::containers::kill_cgroup_tree(&self.cgroup);
        std::thread::sleep(Duration::from_millis(200));
        agent::mounts::unmount_under(&self.root);
        agent::runtime::containers::remove_cgroup_tree(&self.cgroup);
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A user-namespaced pod with one running container.
struct Pod {
    // Unmounts before the directory goes: fields drop in this order.
    _cleanup: Cleanup,
    work: tempfile::TempDir,
    runner: ContainerRunner,
    pod_dir: PathBuf,
    attempt: Attempt,
    mapping: userns::IdMapping,
    pid: i32,
}

impl Pod {
    /// Starts `script` as the container's shell script, with a volume at `/data`.
    async fn start(script: &str) -> Pod {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().to_path_buf();
        // The pod's root (an unmapped stranger to the node's files) walks to its files.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // One cgroup per test: the tests run side by side and clean-up kills what it holds.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup = format!("/bramble-test-userns-{}-{n}", std::process::id());
        let cleanup = Cleanup {
            root: root.clone(),
            cgroup: cgroup.clone(),
        };
        let layer = root.join("layer");
        busybox_layer(&layer);
        let volume = root.join("volume");
        std::fs::create_dir_all(&volume).unwrap();

        let pods = root.join("pods");
        let pod_dir = pods.join("uid-u1");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let mapping = userns::mapping_for_pod(&pods, &pod_dir).unwrap();
        assert_eq!(mapping.host_id, 65536);
        let namespaces =
            sandbox::create_in_user_namespace(&pod_dir, "userns-pod", mapping).unwrap();

        let runner = ContainerRunner {
            monitor_exe: env!("CARGO_BIN_EXE_bramble").into(),
            state_root: root.join("state"),
            cgroup_parent: cgroup,
        };
        let attempt = Attempt::new(&pod_dir, "main", 0);
        let plan = ContainerPlan {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rootfs: Default::default(),
            pod_namespaces: namespaces,
            mounts: vec![BindMount {
                destination: "/data".into(),
                source: volume,
                read_only: false,
            }],
            cgroup_path: String::new(),
            memory_limit: None,
            cpu_limit_millis: None,
            cpu_request_millis: 100,
            terminal: false,
            privileged: false,
            capabilities: capabilities(&[], &[], false, &all_capabilities()),
            no_new_privileges: false,
            read_only_root: false,
            unmasked_proc: false,
            seccomp: None,
            // What every pod with its own network gets (containerd's defaults).
            sysctls: [
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            apparmor_profile: None,
            host_devices: vec![],
            host_pid: false,
            host_ipc: false,
        };
        let started = match runner.start(&attempt, "uid-u1", &[layer], plan).await {
            Ok(started) => started,
            Err(error) => {
                let log =
                    std::fs::read_to_string(attempt.dir.join("monitor.log")).unwrap_or_default();
                panic!("{error}\n{log}");
            }
        };
        assert!(started.pid > 0);
        Pod {
            _cleanup: cleanup,
            work,
            runner,
            pod_dir,
            attempt,
            mapping,
            pid: started.pid,
        }
    }

    /// Stops and removes the container and the pod's namespaces; returns the test's
    /// directory, still there.
    async fn stop(self) -> tempfile::TempDir {
        // `sleep` as PID 1 has no SIGTERM handler, so the kernel drops the signal: SIGKILL
        // ends it.
        let exited = self
            .attempt
            .stop(Duration::from_millis(500))
            .await
            .expect("it ran");
        assert_eq!(exited.exit_code, 137, "{exited:?}");
        self.attempt.remove().unwrap();
        sandbox::remove(&self.pod_dir).unwrap();
        agent::runtime::containers::remove_cgroup_tree(&self.runner.cgroup_parent);
        self.work
    }
}

#[tokio::test]
async fn a_user_namespaced_pods_root_is_an_unprivileged_id_on_the_node() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // The volume is written after a pause: the node's staging mounts are gone by then.
    let script = "id -u; id -g; echo hello > /written; ls /sys/class/net > /net-devices; \
                  cat /etc/image-file >> /written; sleep 1; echo vol > /data/out; \
                  echo done > /done; exec sleep 60";
    let pod = Pod::start(script).await;
    let (attempt, mapping) = (&pod.attempt, pod.mapping);
    let volume = pod.work.path().join("volume");
    let upper = attempt.dir.join("upper");
    let staged = agent::mounts::table()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(attempt.dir.join("idmapped")))
        .count();
    assert_eq!(staged, 0, "the id-mapped volume stays mounted on the node");
    wait_for("the container's script", || upper.join("done").exists());

    // Root inside …
    let log = std::fs::read_to_string(attempt.log_path()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(lines[..2], ["0", "0"], "{log}");
    // … the pod's first host ID outside.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pod.pid)).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid:"), vec![mapping.host_id; 4], "{status}");
    assert_eq!(ids("Gid:"), vec![mapping.host_id; 4], "{status}");

    // What it wrote to its root file system is the pod's on the node, next to the image's
    // file it could read.
    let written = upper.join("written");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "hello\nfrom the image\n"
    );
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), mapping.host_id);
    assert_eq!(std::fs::metadata(&written).unwrap().gid(), mapping.host_id);
    // Its volume is id-mapped: its root's file is root's on disk.
    assert_eq!(
        std::fs::read_to_string(volume.join("out")).unwrap(),
        "vol\n"
    );
    assert_eq!(std::fs::metadata(volume.join("out")).unwrap().uid(), 0);
    // It mounted its own sysfs: the pod's network namespace has only its loopback.
    let devices = std::fs::read_to_string(upper.join("net-devices")).unwrap();
    assert_eq!(devices.trim(), "lo");

    let _work = pod.stop().await;
    assert!(
        volume.join("out").exists(),
        "removing the attempt kept the volume"
    );
}

/// youki 0.7's tenant builder joins ipc, uts, net, pid, mnt, cgroup and time but never the
/// init's user namespace (`NAMESPACE_TYPES` in `container/tenant_builder.rs`): `bramble
/// exec-in` enters it itself, or the command would run as the node's root inside the pod's
/// other namespaces.
#[tokio::test]
async fn kubectl_exec_joins_the_pods_user_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pod = Pod::start("exec sleep 60").await;
    let command: Vec<String> = ["sh", "-c", "id -u; cat /proc/self/uid_map"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let exec = agent::runtime::exec::run_captured(
        &pod.runner,
        &pod.attempt,
        &command,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let output = String::from_utf8_lossy(&exec.output).into_owned();
    pod.stop().await;
    assert_eq!(exec.exit_code, 0, "{output}");
    let words: Vec<&str> = output.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "65536", "65536"], "{output}");
}
