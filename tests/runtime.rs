//! A real container through the whole node runtime: the demo image from a real registry,
//! a pod sandbox with its own network namespace on a bridge, libcontainer under `bramble
//! monitor`, output in the log, and a clean exit code after SIGTERM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use agent::image::demo::{push_demo_image, Busybox};
use agent::image::local_registry::{LocalRegistry, PushAccess};
use agent::image::{ImageStore, Platform, PullPolicy, Registry};
use agent::network::{in_netns, Cidr, PodNetwork};
use agent::runtime::containers::{Attempt, AttemptState, ContainerRunner};
use agent::runtime::sandbox;
use agent::runtime::spec::{all_capabilities, capabilities, resolve_args, ContainerPlan};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn busyboxes() -> Vec<Busybox> {
    let share = std::env::var("BRAMBLE_SHARE").unwrap_or("/usr/local/share/bramble".into());
    vec![Busybox {
        platform: Platform::host(),
        path: Path::new(&share)
            .join("busybox")
            .join(match std::env::consts::ARCH {
                "aarch64" => "arm64",
                _ => "amd64",
            })
            .join("busybox"),
    }]
}

fn http_get(netns: &Path, ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    in_netns(Some(netns), move || {
        let mut stream = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// Unmounts whatever the test mounted under its directory and removes its cgroups, even when
/// an assertion failed half-way.
struct Cleanup {
    root: std::path::PathBuf,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let procs = format!("/sys/fs/cgroup/pids{}", self.cgroup);
        if let Ok(output) = std::process::Command::new("find")
            .args([&procs, "-name", "cgroup.procs"])
            .output()
        {
            for file in String::from_utf8_lossy(&output.stdout).lines() {
                for pid in std::fs::read_to_string(file).unwrap_or_default().lines() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        agent::mounts::unmount_under(&self.root);
        agent::runtime::containers::remove_cgroup_tree(&self.cgroup);
    }
}

#[tokio::test]
async fn a_pod_container_runs_serves_on_its_ip_and_stops_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let _cleanup = Cleanup {
        root: root.to_path_buf(),
        cgroup: format!("/bramble-test-{}", std::process::id()),
    };
    let registry_dir = root.join("registry");
    let address = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let registry = LocalRegistry::start(&registry_dir, address, PushAccess::default())
        .await
        .unwrap();
    let client = Registry::new(&registry.host(), true, Some(registry.seeder()));
    push_demo_image(&client, "bramble/demo", "1", &busyboxes())
        .await
        .unwrap();
    let images =
        ImageStore::open(&root.join("images"), Platform::host(), [registry.host()]).unwrap();
    let image = images
        .ensure(
            &format!("{}/bramble/demo:1", registry.host()),
            PullPolicy::IfNotPresent,
            &HashMap::new(),
        )
        .await
        .unwrap();

    // The "node": its own network namespace, kept alive the same way pods' are.
    let node_dir = root.join("node");
    let node = sandbox::create(&node_dir, "node", false).unwrap();
    let cidr = Cidr::parse("10.244.7.0/24").unwrap();
    let network = PodNetwork::setup(Some(&node.network), "brtest0", cidr)
        .await
        .unwrap();
    let pod_dir = root.join("pods/uid-1");
    let pod = sandbox::create(&pod_dir, "web-7f9c", false).unwrap();
    let pod_ip = cidr.nth(5);
    network.attach("uid-1", &pod.network, pod_ip).await.unwrap();

    let runner = ContainerRunner {
        monitor_exe: env!("CARGO_BIN_EXE_bramble").into(),
        state_root: root.join("state"),
        cgroup_parent: format!("/bramble-test-{}", std::process::id()),
    };
    let attempt = Attempt::new(&pod_dir, "web", 0);
    let mut env = image.config.env.clone();
    env.push("VERSION=7".into());
    let plan_template = ContainerPlan {
        // The demo server, as PID 1 that ignores SIGTERM: stopping must escalate to SIGKILL.
        args: resolve_args(
            &["sh".into()],
            &["-c".into(), "trap '' TERM; exec /bin/demo-server".into()],
            &image.config.entrypoint,
            &image.config.cmd,
        ),
        env,
        cwd: image.config.working_dir.clone(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        rootfs: Default::default(),
        pod_namespaces: pod.clone(),
        mounts: vec![],
        cgroup_path: String::new(),
        memory_limit: Some(64 << 20),
        cpu_limit_millis: Some(500),
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
    let layers: Vec<_> = image.layers.iter().map(|l| images.layer_dir(l)).collect();
    let plan = plan_template.clone();
    let started = match runner.start(&attempt, "uid-1", &layers, plan).await {
        Ok(started) => started,
        Err(error) => {
            let log = std::fs::read_to_string(attempt.dir.join("monitor.log")).unwrap_or_default();
            panic!("{error}\n{log}");
        }
    };
    assert!(started.pid > 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match http_get(&node.network, pod_ip, 8080) {
            Ok(answer) if answer.contains("version=") => break answer,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer from the pod: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(answer.contains("hello from web-7f9c version=7"), "{answer}");
    // The plan's sysctls were written in the pod's network namespace (the host keeps 1024).
    let port_start = in_netns(Some(&pod.network), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    })
    .unwrap();
    assert_eq!(port_start.trim(), "0");
    let log = std::fs::read_to_string(attempt.log_path()).unwrap();
    assert!(
        log.contains("stdout F demo server web-7f9c version=7 listening on :8080"),
        "{log}"
    );

    // The shell ignores SIGTERM (and so does the demo server it became): it needs the SIGKILL
    // after the grace period.
    let exited = attempt
        .stop(Duration::from_millis(500))
        .await
        .expect("it ran");
    assert_eq!(exited.signal, Some(9), "{exited:?}");
    assert_eq!(exited.exit_code, 137);
    assert_eq!(exited.reason, "Error");

    attempt.remove().unwrap();

    // A second container of the pod with a locked-down security context: libcontainer applies
    // what the spec says (user and groups, no capabilities, no new privileges, read-only root).
    let checks = Attempt::new(&pod_dir, "checks", 0);
    let locked = ContainerPlan {
        args: vec![
            "sh".into(),
            "-c".into(),
            "touch /written 2>/dev/null && echo root-writable; \
             grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status"
                .into(),
        ],
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1000, 2000],
        capabilities: vec![],
        no_new_privileges: true,
        read_only_root: true,
        memory_limit: None,
        cpu_limit_millis: None,
        ..plan_template.clone()
    };
    runner
        .start(&checks, "uid-1", &layers, locked)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(checks.state(), AttemptState::Exited(_)) {
        assert!(Instant::now() < deadline, "the checks did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(checks.log_path()).unwrap();
    assert!(!log.contains("root-writable"), "{log}");
    for line in [
        "Uid:\t1000\t1000\t1000\t1000",
        "Gid:\t1000\t1000\t1000\t1000",
        "Groups:\t1000 2000",
        "NoNewPrivs:\t1",
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
    ] {
        assert!(log.contains(line), "{line:?} in {log}");
    }
    checks.remove().unwrap();
    network.detach("uid-1").await.unwrap();
    sandbox::remove(&pod_dir).unwrap();
    sandbox::remove(&node_dir).unwrap();
    agent::runtime::containers::remove_cgroup_tree(&runner.cgroup_parent);
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{}", runner.cgroup_parent)).exists());
}
