//! The node agent (`bramble agent`): registers the Node, keeps its lease and status fresh,
//! wires pod networking once the master gives the node a pod CIDR, runs a worker per pod
//! bound here, routes to other nodes' pods, and obeys the chaos hook.
//!
//! ```text
//!  start ─► register Node ─► wait for spec.podCIDR ─► bridge + image store ─► follow pods/nodes
//!                                                                                 │
//!            chaos=kill on the Node: containers killed, heartbeats stop ◄─────────┤
//!            chaos removed: heartbeats resume, pods restart per policy ──────────►┘
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::image::{ImageError, ImageStore, Platform};
use crate::network::{Cidr, NetworkError, PodNetwork};
use crate::node_server::{ensure_identity, AgentIdentity, NodeServer, AGENT_PORT};
use crate::panel::{ButtonAction, ButtonPress, NodePanel, Panel, PanelConfig};
use crate::pods::security::{SecuritySettings, SysctlAllowlist};
use crate::pods::{spawn_worker, IpAllocator, NodeContext, PodHandle, SystemClock};
use crate::runtime::containers::{Attempt, AttemptState, ContainerRunner};
use crate::services::proxy::NodeFacts;
use crate::services::resolv::ClusterDns;
use crate::services::ServicesConfig;
use protocol::chaos::CHAOS_ANNOTATION;
use protocol::client::{now_time, renew_node_lease, Client, ClientError, Event};
use protocol::node::{CERT_ANNOTATION, STORAGE_DIR_ANNOTATION};

/// How a node agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The kubeconfig with the node's credentials.
    pub kubeconfig: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// The address other nodes reach this one on; found from the route to the master if unset.
    pub node_ip: Option<Ipv4Addr>,
    /// Where pods, images and container state live.
    pub data_dir: PathBuf,
    /// Where local-path volumes live (`pvc-…` directories); reported on the Node.
    pub storage_dir: PathBuf,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra node labels.
    pub labels: Vec<(String, String)>,
    /// Pods the node accepts.
    pub max_pods: u32,
    /// The pod bridge's name.
    pub bridge: String,
    /// The binary re-run as container monitor (the agent's own).
    pub monitor_exe: PathBuf,
    /// The resolv.conf given to pods.
    pub resolv_conf: PathBuf,
    /// LEDs and buttons on GPIO.
    pub panel: PanelConfig,
    /// `--seccomp-default`: containers without a seccomp profile get `RuntimeDefault`.
    pub seccomp_default: bool,
    /// `--allowed-unsafe-sysctls`: namespaced sysctls (or `prefix*` patterns) pods may set
    /// beyond the safe set.
    pub allowed_unsafe_sysctls: Vec<String>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API could not be used.
    #[error("talking to the master")]
    Api(#[from] ClientError),
    /// The Node could not be registered.
    #[error("registering node {node}")]
    Register {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// Pod networking could not be set up.
    #[error("setting up pod networking")]
    Network(#[from] NetworkError),
    /// The image store could not be opened.
    #[error("opening the image store")]
    Images(#[from] ImageError),
    /// An `--allowed-unsafe-sysctls` pattern names no namespaced sysctl.
    #[error("invalid --allowed-unsafe-sysctls: {0}")]
    UnsafeSysctls(String),
    /// The node's address could not be found.
    #[error("cannot tell this node's address (give --node-ip): {0}")]
    NodeIp(String),
    /// The data directory is unusable.
    #[error("data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The address this machine uses to reach the master: what other nodes can reach it on.
fn detect_node_ip(server: &str) -> Result<Ipv4Addr, String> {
    let address = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let target: SocketAddr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{address} has no IPv4 address"))?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.connect(target).map_err(|e| e.to_string())?;
    match socket.local_addr().map_err(|e| e.to_string())? {
        SocketAddr::V4(local) if !local.ip().is_loopback() => Ok(*local.ip()),
        SocketAddr::V4(local) => Ok(*local.ip()),
        SocketAddr::V6(_) => Err("no IPv4 route to the master".into()),
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// The board model from the device tree (`Raspberry Pi 4 Model B Rev 1.4`), if any.
pub fn board_model() -> Option<String> {
    let raw = std::fs::read("/proc/device-tree/model").ok()?;
    let text = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

/// Timings the master publishes in `kube-system/bramble-settings`.
#[derive(Debug, Clone)]
struct Timings {
    lease_renew: Duration,
    crash_backoff: Duration,
    metrics_interval: Duration,
    cluster_cidr: Option<Cidr>,
    cluster_domain: String,
}

async fn timings(client: &Client) -> Timings {
    let data = client
        .get("/api/v1/namespaces/kube-system/configmaps/bramble-settings")
        .await
        .map(|cm| cm["data"].clone())
        .unwrap_or(Value::Null);
    let seconds = |key: &str, default: f64| {
        data[key]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(default)
    };
    Timings {
        lease_renew: Duration::from_secs_f64(seconds("nodeLeaseRenewSeconds", 10.0)),
        crash_backoff: Duration::from_secs_f64(seconds("crashLoopBackOffSeconds", 10.0)),
        metrics_interval: Duration::from_secs_f64(seconds("metricsIntervalSeconds", 10.0)),
        cluster_cidr: data["clusterCIDR"].as_str().and_then(Cidr::parse),
        cluster_domain: data["clusterDomain"]
            .as_str()
            .unwrap_or("cluster.local")
            .to_owned(),
    }
}

struct Agent {
    config: AgentConfig,
    client: Arc<Client>,
    node_ip: Ipv4Addr,
    /// Set while the chaos hook holds the node down (shared with the pod workers).
    dead: Arc<AtomicBool>,
    /// Wakes the lease and status loops when the node comes back, so it is Ready at once.
    revived: tokio::sync::Notify,
    /// Set while the chaos hook has the node's link down.
    cable_pulled: AtomicBool,
    data_usage: Mutex<f64>,
    images: Mutex<Option<Arc<ImageStore>>>,
    /// The certificate the agent serves logs and exec with.
    identity: AgentIdentity,
}

impl Agent {
    fn capacity(&self) -> Value {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory = meminfo("MemTotal").unwrap_or(1 << 30);
        let disk = nix::sys::statvfs::statvfs(&self.config.data_dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        json!({
            "cpu": cpus.to_string(),
            "memory": format!("{}Ki", memory / 1024),
            "pods": self.config.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk / 1024),
        })
    }

    fn allocatable(&self) -> Value {
        let mut allocatable = self.capacity();
        // Keep a little memory for the system and the agent itself.
        let memory = meminfo("MemTotal").unwrap_or(1 << 30);
        let reserved = (memory / 10).min(256 << 20);
        allocatable["memory"] = json!(format!("{}Ki", (memory - reserved) / 1024));
        allocatable
    }

    fn status(&self) -> Value {
        let now = now_time();
        let available = meminfo("MemAvailable").unwrap_or(u64::MAX);
        let memory_pressure = available < 100 << 20;
        let disk_pressure = *self.data_usage.lock().expect("usage lock") > 0.90;
        let condition =
            |kind: &str, bad: bool, ok_reason: &str, bad_reason: &str, message: &str| {
                json!({"type": kind, "status": if bad { "True" } else { "False" },
                   "reason": if bad { bad_reason } else { ok_reason }, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
            };
        let arch = Platform::host().architecture;
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_owned())
                })
            })
            .unwrap_or_else(|| "Linux".into());
        let images: Vec<Value> = self
            .images
            .lock()
            .expect("images lock")
            .as_ref()
            .map(|store| {
                store
                    .list()
                    .into_iter()
                    .map(|i| json!({"names": [i.reference, format!("{}@{}", i.reference.split(':').next().unwrap_or(""), i.digest)], "sizeBytes": i.size}))
                    .collect()
            })
            .unwrap_or_default();
        let mut ready = condition(
            "Ready",
            false,
            "KubeletReady",
            "KubeletNotReady",
            "bramble agent is posting ready status",
        );
        ready["status"] = json!("True");
        json!({
            "capacity": self.capacity(),
            "allocatable": self.allocatable(),
            "conditions": [
                condition("MemoryPressure", memory_pressure, "KubeletHasSufficientMemory", "KubeletHasInsufficientMemory",
                    if memory_pressure { "the node has under 100Mi of memory available" } else { "kubelet has sufficient memory available" }),
                condition("DiskPressure", disk_pressure, "KubeletHasNoDiskPressure", "KubeletHasDiskPressure",
                    if disk_pressure { "the data disk is over 90% full" } else { "kubelet has no disk pressure" }),
                condition("PIDPressure", false, "KubeletHasSufficientPID", "KubeletHasInsufficientPID", "kubelet has sufficient PID available"),
                ready,
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip.to_string()},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": AGENT_PORT}},
            "nodeInfo": {
                "machineID": std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim(),
                "systemUUID": "", "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
                "kernelVersion": kernel, "osImage": os_image,
                "containerRuntimeVersion": "libcontainer://0.7.0", "kubeletVersion": "v1.37.0-bramble",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": arch,
            },
            "images": images,
        })
    }

    async fn register(&self) -> Result<Value, AgentError> {
        let name = &self.config.node_name;
        let platform = Platform::host();
        let mut labels = json!({
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": platform.architecture,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": platform.architecture,
        });
        let mut annotations = json!({
            "node.alpha.kubernetes.io/ttl": "0",
            CERT_ANNOTATION: self.identity.fingerprint,
            STORAGE_DIR_ANNOTATION: self.config.storage_dir.display().to_string(),
        });
        if let Some(model) = board_model() {
            labels[protocol::node::BOARD_LABEL] = json!(protocol::node::label_value(&model));
            annotations[protocol::node::BOARD_MODEL_ANNOTATION] = json!(model);
        }
        for (key, value) in &self.config.labels {
            labels[key] = json!(value);
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {},
        });
        let register = |source| AgentError::Register {
            node: name.clone(),
            source,
        };
        match self.client.create("/api/v1/nodes", &node).await {
            Ok(_) => tracing::info!(node = name, ip = %self.node_ip, "node registered"),
            Err(e) if e.code() == Some(409) => {
                self.client
                    .merge_patch(
                        &format!("/api/v1/nodes/{name}"),
                        &json!({"metadata": {"labels": labels, "annotations": annotations}}),
                    )
                    .await
                    .map_err(register)?;
                tracing::info!(node = name, ip = %self.node_ip, "node re-joined");
            }
            Err(e) => return Err(register(e)),
        }
        self.client
            .merge_patch(
                &format!("/api/v1/nodes/{name}/status"),
                &json!({"status": self.status()}),
            )
            .await
            .map_err(register)
    }

    async fn renew_lease(&self) {
        if let Err(error) = renew_node_lease(&self.client, &self.config.node_name).await {
            tracing::warn!(%error, "lease renewal failed");
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

async fn wait_for_pod_cidr(client: &Client, node: &str) -> Cidr {
    let mut logged = false;
    loop {
        if let Ok(object) = client.get(&format!("/api/v1/nodes/{node}")).await {
            if let Some(cidr) = object["spec"]["podCIDR"].as_str().and_then(Cidr::parse) {
                return cidr;
            }
        }
        if !logged {
            tracing::info!(node, "waiting for the master to give this node a pod CIDR");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Kills every container on the node at once (the chaos hook's "pulled plug").
fn kill_all_containers(pods_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return;
    };
    for pod in entries.flatten() {
        for attempt in Attempt::all(&pod.path()) {
            if matches!(attempt.state(), AttemptState::Running(_)) {
                attempt.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Where an agent with this data directory keeps its pods: one directory per pod UID.
pub fn pods_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pods")
}

/// Runs the agent until the process is stopped. Pods keep running when the agent stops; a
/// restarted agent adopts them.
pub async fn run(mut config: AgentConfig) -> Result<(), AgentError> {
    let sysctls =
        SysctlAllowlist::new(&config.allowed_unsafe_sysctls).map_err(AgentError::UnsafeSysctls)?;
    let client = Client::from_kubeconfig(&config.kubeconfig)?;
    let pods_dir = pods_dir(&config.data_dir);
    // The Node says where volumes are as an absolute path: the master writes it into PVs.
    config.storage_dir =
        std::path::absolute(&config.storage_dir).map_err(|source| AgentError::DataDir {
            path: config.storage_dir.clone(),
            source,
        })?;
    for dir in [
        &pods_dir,
        &config.data_dir.join("containers"),
        &config.storage_dir,
    ] {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let node_ip = match config.node_ip {
        Some(ip) => ip,
        None => detect_node_ip(&client.server_address()).map_err(AgentError::NodeIp)?,
    };
    let pki_dir = config.data_dir.join("pki");
    let identity = ensure_identity(&pki_dir, &config.node_name, node_ip).map_err(|source| {
        AgentError::DataDir {
            path: pki_dir.clone(),
            source,
        }
    })?;
    let agent = Arc::new(Agent {
        identity,
        config: config.clone(),
        client: client.clone(),
        node_ip,
        dead: Arc::new(AtomicBool::new(false)),
        revived: tokio::sync::Notify::new(),
        cable_pulled: AtomicBool::new(false),
        data_usage: Mutex::new(0.0),
        images: Mutex::new(None),
    });
    let panel = start_panel(&config.panel, &client, &config.node_name);
    let registered = agent.register().await?;
    let down = registered["metadata"]["annotations"][CHAOS_ANNOTATION].is_string();
    agent.dead.store(down, Ordering::SeqCst);
    if let Some(panel) = &panel {
        panel.set_dead(down);
        panel.node_changed(&registered);
    }
    let timings = timings(&client).await;
    agent.renew_lease().await;
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timings.lease_renew);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = agent.revived.notified() => {}
                }
                if !agent.is_dead() {
                    agent.renew_lease().await;
                }
            }
        });
    }
    let cidr = wait_for_pod_cidr(&client, &config.node_name).await;
    let network = Arc::new(PodNetwork::setup(None, &config.bridge, cidr).await?);
    tracing::info!(node = config.node_name, pod_cidr = %cidr, bridge = config.bridge, "pod network ready");
    match timings.cluster_cidr {
        Some(cluster) => {
            if let Err(error) = crate::network::masquerade(cidr, cluster, &config.bridge) {
                tracing::warn!(%error, "pods cannot reach addresses outside the cluster (install nftables)");
            }
        }
        None => tracing::warn!("the master publishes no cluster CIDR: no outbound NAT for pods"),
    }
    let node_resolv_conf = std::fs::read_to_string(&config.resolv_conf).unwrap_or_else(|error| {
        tracing::warn!(path = %config.resolv_conf.display(), %error, "no upstream resolvers for pods");
        String::new()
    });
    let services = crate::services::start(ServicesConfig {
        client: client.clone(),
        node: NodeFacts {
            node_name: config.node_name.clone(),
            pod_cidr: cidr,
            cluster_cidr: timings.cluster_cidr,
        },
        node_ip,
        dns: ClusterDns {
            server: network.cidr().nth(1),
            domain: timings.cluster_domain.clone(),
        },
        node_resolv_conf,
        dead: agent.dead.clone(),
    });
    let images = Arc::new(ImageStore::open(
        &config.data_dir.join("images"),
        Platform::host(),
        config.insecure_registries.clone(),
    )?);
    *agent.images.lock().expect("images lock") = Some(images.clone());
    // Monitors and exec-in processes enter containers: they run from a read-only view of
    // the binary, which a container cannot overwrite through /proc/<pid>/exe.
    let bin_dir = config.data_dir.join("bin");
    let monitor_exe = crate::runtime::containers::protected_exe(&config.monitor_exe, &bin_dir)
        .map_err(|source| AgentError::DataDir {
            path: bin_dir.clone(),
            source,
        })?;
    let runner = ContainerRunner {
        monitor_exe,
        state_root: config.data_dir.join("containers"),
        cgroup_parent: format!("/bramble/{}", config.node_name),
    };
    let volume_changes = tokio::sync::watch::channel(0u64).0;
    let ctx = Arc::new(NodeContext {
        api: client.clone(),
        node_name: config.node_name.clone(),
        node_ip,
        pods_dir: pods_dir.clone(),
        runtime: Arc::new(runner.clone()),
        images: images.clone(),
        network: network.clone(),
        ips: Mutex::new(IpAllocator::new(cidr)),
        crash_backoff: timings.crash_backoff,
        services: services.clone(),
        clock: Arc::new(SystemClock),
        paused: agent.dead.clone(),
        volume_changes: volume_changes.clone(),
        security: SecuritySettings {
            seccomp_default: config.seccomp_default,
            seccomp_dir: crate::pods::security::seccomp_dir(&config.data_dir),
            sysctls,
            apparmor_enabled: crate::pods::security::apparmor_enabled(),
        },
    });

    // Local-path volumes of this node: reclaimed when released; PV changes wake pod workers.
    tokio::spawn(crate::reclaim::follow_volumes(
        client.clone(),
        config.node_name.clone(),
        config.storage_dir.clone(),
        volume_changes,
    ));

    // Node status, and image garbage collection when the disk fills.
    {
        let agent = agent.clone();
        let images = images.clone();
        let pods_dir = pods_dir.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = agent.revived.notified() => {}
                }
                if let Some(usage) = images.disk_usage() {
                    *agent.data_usage.lock().expect("usage lock") = usage;
                    if usage > 0.85 {
                        let in_use = images_in_use(&pods_dir);
                        images.collect_garbage(&in_use, 0.85, 0.80);
                    }
                }
                if agent.is_dead() {
                    continue;
                }
                let path = format!("/api/v1/nodes/{}/status", agent.config.node_name);
                if let Err(error) = agent
                    .client
                    .merge_patch(&path, &json!({"status": agent.status()}))
                    .await
                {
                    tracing::warn!(%error, "node status update failed");
                }
            }
        });
    }

    // Other nodes: routes to their pod CIDRs; this node: the chaos hook.
    let workers: Arc<Mutex<HashMap<String, PodHandle>>> = Arc::new(Mutex::new(HashMap::new()));
    {
        let agent = agent.clone();
        let network = network.clone();
        let pods_dir = pods_dir.clone();
        let workers = workers.clone();
        let panel = panel.clone();
        tokio::spawn(async move {
            let mut routes: BTreeMap<String, (Cidr, Ipv4Addr)> = BTreeMap::new();
            let (changed_tx, mut changed_rx) = tokio::sync::watch::channel(0u64);
            let desired = Arc::new(Mutex::new(Vec::new()));
            {
                let network = network.clone();
                let desired = desired.clone();
                tokio::spawn(async move {
                    while changed_rx.changed().await.is_ok() {
                        let wanted: Vec<(Cidr, Ipv4Addr)> =
                            desired.lock().expect("routes lock").clone();
                        if let Err(error) = network.sync_routes(&wanted).await {
                            tracing::warn!(error = %protocol::error::error_chain(&error), "route sync failed");
                        }
                    }
                });
            }
            let own = agent.config.node_name.clone();
            let mut counter = 0u64;
            agent
                .client
                .clone()
                .follow("/api/v1/nodes", |event| {
                    let Some(node) = event.object() else {
                        return;
                    };
                    let name = node["metadata"]["name"].as_str().unwrap_or("").to_owned();
                    if name == own {
                        if let Some(panel) = &panel {
                            panel.node_changed(node);
                        }
                        let chaos = node["metadata"]["annotations"][CHAOS_ANNOTATION].as_str();
                        if let Some(seconds) = chaos.and_then(|c| c.strip_prefix("link-down")) {
                            let seconds = seconds.trim_start_matches(':').parse().unwrap_or(20u64);
                            pull_the_cable(agent.clone(), Duration::from_secs(seconds.clamp(1, 600)));
                            return;
                        }
                        let kill = chaos == Some("kill");
                        let dead = agent.dead.swap(kill, Ordering::SeqCst);
                        if let Some(panel) = &panel {
                            panel.set_dead(kill);
                        }
                        if kill != dead {
                            services.nudge();
                        }
                        if kill && !dead {
                            tracing::warn!("chaos: this node is going down (containers killed, heartbeats stopped)");
                            kill_all_containers(&pods_dir);
                        } else if !kill && dead {
                            tracing::info!("chaos: this node is back");
                            agent.revived.notify_waiters();
                            for handle in workers.lock().expect("workers lock").values() {
                                handle.object.send_modify(|_| {});
                            }
                        }
                        return;
                    }
                    let before = routes.clone();
                    if matches!(event, Event::Delete(_)) {
                        routes.remove(&name);
                    } else {
                        let cidr = node["spec"]["podCIDR"].as_str().and_then(Cidr::parse);
                        let ip = protocol::node::internal_ipv4(node);
                        match (cidr, ip) {
                            (Some(cidr), Some(ip)) => {
                                routes.insert(name, (cidr, ip));
                            }
                            _ => {
                                routes.remove(&name);
                            }
                        }
                    }
                    if routes != before {
                        *desired.lock().expect("routes lock") = routes.values().cloned().collect();
                        counter += 1;
                        let _ = changed_tx.send(counter);
                    }
                })
                .await;
        });
    }

    // Usage of the node and its containers for `kubectl top` and autoscaling.
    {
        let agent = agent.clone();
        let workers = workers.clone();
        let runner = runner.clone();
        tokio::spawn(async move {
            let mut sampler = crate::usage::UsageSampler::default();
            let interval = timings.metrics_interval;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if agent.is_dead() {
                    continue;
                }
                let pods: Vec<crate::usage::PodCgroups> = {
                    let workers = workers.lock().expect("workers lock");
                    workers
                        .iter()
                        .filter_map(|(uid, handle)| {
                            let pod = handle.object.borrow();
                            let pod = pod.as_ref()?;
                            Some(crate::usage::PodCgroups {
                                namespace: pod["metadata"]["namespace"].as_str()?.to_owned(),
                                name: pod["metadata"]["name"].as_str()?.to_owned(),
                                containers: pod["spec"]["containers"]
                                    .as_array()?
                                    .iter()
                                    .filter_map(|c| c["name"].as_str())
                                    .map(|name| crate::usage::ContainerCgroup {
                                        name: name.to_owned(),
                                        cgroup: format!("{}/{name}", runner.pod_cgroup(uid)),
                                    })
                                    .collect(),
                            })
                        })
                        .collect()
                };
                let report = tokio::task::block_in_place(|| {
                    sampler.report(&agent.config.node_name, &pods, interval.as_secs().max(1))
                });
                let path = format!(
                    "/apis/metrics.k8s.io/v1beta1/nodes/{}",
                    agent.config.node_name
                );
                if let Err(error) = agent.client.replace(&path, &report).await {
                    tracing::debug!(%error, "usage report failed");
                }
            }
        });
    }

    // Logs and exec for the master.
    {
        let server = Arc::new(NodeServer {
            workers: workers.clone(),
            pods_dir: pods_dir.clone(),
            runner: runner.clone(),
            panel: panel.clone(),
        });
        let agent = agent.clone();
        tokio::spawn(async move {
            let address = SocketAddr::from((agent.node_ip, AGENT_PORT));
            if let Err(error) =
                crate::node_server::serve(server, address, &agent.identity, agent.client.ca_pem())
                    .await
            {
                tracing::error!(%address, %error, "cannot serve logs and exec");
            }
        });
    }

    // Pods bound here: one worker each; leftovers of deleted pods are cleaned up.
    let selector = format!(
        "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
        config.node_name
    );
    let mut first_sync = true;
    let mut listed = std::collections::HashSet::new();
    let dead_agent = agent.clone();
    client
        .follow(&selector, |event| {
            if let Some(panel) = &panel {
                panel.pod_event(event);
            }
            let mut workers = workers.lock().expect("workers lock");
            let pod = match event {
                Event::Init => {
                    listed.clear();
                    return;
                }
                Event::InitApply(pod) => {
                    if let Some(uid) = pod["metadata"]["uid"].as_str() {
                        listed.insert(uid.to_owned());
                    }
                    pod
                }
                Event::Apply(pod) | Event::Delete(pod) => pod,
                Event::InitDone => {
                    if !first_sync {
                        // A fresh list after a long disconnection: pods deleted meanwhile go.
                        let gone: Vec<String> = workers
                            .keys()
                            .filter(|uid| !listed.contains(*uid))
                            .cloned()
                            .collect();
                        for uid in gone {
                            if let Some(handle) = workers.remove(&uid) {
                                tracing::info!(
                                    uid,
                                    "pod deleted while the master was out of reach"
                                );
                                let _ = handle.object.send(None);
                            }
                        }
                    }
                    if first_sync {
                        first_sync = false;
                        let known: Vec<String> = workers.keys().cloned().collect();
                        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
                            for entry in entries.flatten() {
                                let uid = entry.file_name().to_string_lossy().into_owned();
                                if !known.contains(&uid) {
                                    tracing::info!(
                                        uid,
                                        "cleaning up a pod deleted while the agent was away"
                                    );
                                    workers
                                        .insert(uid.clone(), spawn_worker(ctx.clone(), uid, None));
                                }
                            }
                        }
                    }
                    return;
                }
            };
            let Some(uid) = pod["metadata"]["uid"].as_str() else {
                return;
            };
            if matches!(event, Event::Delete(_)) {
                if let Some(handle) = workers.remove(uid) {
                    let _ = handle.object.send(None);
                }
                return;
            }
            if dead_agent.is_dead() && pod["metadata"]["deletionTimestamp"].is_null() {
                // A dead node does nothing for its pods until it is revived.
                if let Some(handle) = workers.get(uid) {
                    let _ = handle.object.send(Some(pod.clone()));
                }
                return;
            }
            match workers.get(uid) {
                Some(handle) => {
                    let _ = handle.object.send(Some(pod.clone()));
                }
                None => {
                    workers.insert(
                        uid.to_owned(),
                        spawn_worker(ctx.clone(), uid.to_owned(), Some(pod.clone())),
                    );
                }
            }
        })
        .await;
    Ok(())
}

/// Starts the node's front panel, if it has one, and acts on its buttons: a press kills the
/// node through the chaos hook, a long press revives it. A panel that cannot start is logged
/// and the node runs without it.
fn start_panel(config: &PanelConfig, client: &Arc<Client>, node: &str) -> Option<Arc<NodePanel>> {
    let (panel, mut presses) = match Panel::start(config) {
        Ok(Some(started)) => started,
        Ok(None) => return None,
        Err(error) => {
            tracing::error!("{error}; this node runs without its LEDs and buttons");
            return None;
        }
    };
    let client = client.clone();
    let node = node.to_owned();
    tokio::spawn(async move {
        while let Some(ButtonPress { action, long }) = presses.recv().await {
            if action == ButtonAction::Monkey {
                tracing::warn!("the monkey button works on the master's panel; ignored here");
                continue;
            }
            let (alive, what) = if long {
                (true, "reviving it")
            } else {
                (false, "killing it")
            };
            tracing::warn!(node, "chaos: the node's button was pressed: {what}");
            match protocol::chaos::set_node_alive(&client, &node, alive).await {
                Ok(()) => {
                    node_event(
                        &client,
                        &node,
                        if long { "ButtonRevive" } else { "ButtonKill" },
                        &format!("the button on {node} was pressed: {what}"),
                    )
                    .await
                }
                Err(error) => {
                    tracing::error!(error = %protocol::error::error_chain(&error), "the button could not change the node")
                }
            }
        }
    });
    Some(Arc::new(NodePanel::new(panel)))
}

/// Records an event about this node (the dashboard's event pane shows it).
async fn node_event(client: &Client, node: &str, reason: &str, message: &str) {
    let now = now_time();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{node}."), "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node},
        "reason": reason,
        "message": message,
        "type": "Warning",
        "source": {"component": "bramble-agent", "host": node},
        "reportingComponent": "bramble-agent",
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    if let Err(error) = client
        .create("/api/v1/namespaces/default/events", &event)
        .await
    {
        tracing::debug!(%error, "event not recorded");
    }
}

/// The chaos hook's link-down: clears the request (so it runs once), then takes the node's
/// interface down for `duration` and brings it back.
fn pull_the_cable(agent: Arc<Agent>, duration: Duration) {
    if agent.cable_pulled.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let path = format!("/api/v1/nodes/{}", agent.config.node_name);
        let cleared = agent
            .client
            .merge_patch(
                &path,
                &json!({"metadata": {"annotations": {CHAOS_ANNOTATION: null}}}),
            )
            .await;
        if let Err(error) = cleared {
            tracing::warn!(%error, "chaos: cannot clear the link-down request; not pulling the cable");
        } else {
            tracing::warn!(
                seconds = duration.as_secs(),
                "chaos: taking this node's link down"
            );
            match crate::network::link_down_for(agent.node_ip, duration).await {
                Ok(link) => tracing::info!(link, "chaos: link back up"),
                Err(error) => {
                    tracing::error!(error = %protocol::error::error_chain(&error), "chaos: link-down failed")
                }
            }
            agent.revived.notify_waiters();
        }
        agent.cable_pulled.store(false, Ordering::SeqCst);
    });
}

fn images_in_use(pods_dir: &Path) -> std::collections::HashSet<String> {
    let mut in_use = std::collections::HashSet::new();
    if let Ok(entries) = std::fs::read_dir(pods_dir) {
        for pod in entries.flatten() {
            for attempt in Attempt::all(&pod.path()) {
                if let Ok(spec) = std::fs::read(attempt.dir.join("image")) {
                    in_use.insert(String::from_utf8_lossy(&spec).into_owned());
                }
            }
        }
    }
    in_use
}
