//! Simulated nodes, in the spirit of kwok: Node objects with leases and pods that "run" without containers.
//!
//! `bramble sim` registers N nodes, renews their leases, marks pods bound to them Running (with
//! a pod IP from the node's pod CIDR), reports CPU and memory usage to the metrics API, and
//! finishes pods that are being deleted. The master cannot tell them from real agents, which is
//! the point: the controllers, the scheduler and the scale benchmarks run against them.
//!
//! A simulated node dies and comes back through the same chaos hook as a real agent: the
//! `bramble.dev/chaos` annotation on its Node (`kill`, removed to revive). A dead node stops
//! renewing its lease and stops touching its pods; when it revives it heartbeats again, reports
//! Ready, and finishes the pods the master evicted while it was gone.
//!
//! Pod annotations steer a simulated pod:
//! - `sim.bramble.dev/cpu`, `sim.bramble.dev/memory`: reported usage (default: a twentieth of the
//!   request, at least 1m, and 8Mi);
//! - `sim.bramble.dev/ready-after-seconds`: delay before Ready (default: the largest readiness
//!   probe `initialDelaySeconds`);
//! - `sim.bramble.dev/exit-after-seconds` and `sim.bramble.dev/exit-code`: the containers exit.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use protocol::chaos::CHAOS_ANNOTATION;
use protocol::client::{now_micro_time, now_time, Client, ClientError, Event};
use protocol::quantity;

use crate::usage::{container_usage, Sample};

/// The label every simulated node carries.
pub const SIMULATED_LABEL: &str = "node.bramble.dev/simulated";

const CPU_ANNOTATION: &str = "sim.bramble.dev/cpu";
const MEMORY_ANNOTATION: &str = "sim.bramble.dev/memory";
const READY_AFTER_ANNOTATION: &str = "sim.bramble.dev/ready-after-seconds";
const EXIT_AFTER_ANNOTATION: &str = "sim.bramble.dev/exit-after-seconds";
const EXIT_CODE_ANNOTATION: &str = "sim.bramble.dev/exit-code";
/// How many API calls the simulator has in flight at once.
const CONCURRENT_CALLS: usize = 64;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub nodes: usize,
    /// Node names are this prefix and a number from 1.
    pub prefix: String,
    /// CPU capacity of each node (a Kubernetes quantity).
    pub cpu: String,
    /// Memory capacity of each node (a Kubernetes quantity).
    pub memory: String,
    /// Pods each node takes.
    pub max_pods: u32,
    /// Nodes are spread round-robin over this many `topology.kubernetes.io/zone` values.
    pub zones: usize,
    /// Extra labels for every node.
    pub labels: Vec<(String, String)>,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A node could not be registered.
    #[error("cannot register node {node}")]
    Register {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
}

/// Timings the master publishes for nodes in `kube-system/bramble-settings`.
#[derive(Debug, Clone, Copy)]
struct Timings {
    lease_renew: Duration,
    metrics_interval: Duration,
}

impl Timings {
    async fn fetch(client: &Client) -> Timings {
        let seconds = |data: &Value, key: &str, default: f64| {
            data[key]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .unwrap_or(default)
        };
        let data = client
            .get("/api/v1/namespaces/kube-system/configmaps/bramble-settings")
            .await
            .map(|cm| cm["data"].clone())
            .unwrap_or(Value::Null);
        Timings {
            lease_renew: Duration::from_secs_f64(seconds(&data, "nodeLeaseRenewSeconds", 10.0)),
            metrics_interval: Duration::from_secs_f64(seconds(
                &data,
                "metricsIntervalSeconds",
                15.0,
            )),
        }
    }
}

#[derive(Debug)]
struct SimNode {
    alive: bool,
    host_ip: String,
    pod_network: Option<(u32, u32)>,
    used_ips: HashSet<u32>,
    last_ready_patch: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Nothing,
    Running,
    Ready,
    Finished,
    Deleting,
}

#[derive(Debug)]
struct SimPod {
    uid: String,
    node: String,
    ip: Option<u32>,
    start_time: String,
    started: Instant,
    ready_after: Duration,
    exit_after: Option<Duration>,
    exit_code: i64,
    containers: Vec<(String, String)>,
    cpu_milli: u64,
    memory_bytes: u64,
    reported: Reported,
    deleting: bool,
}

#[derive(Default)]
struct SimState {
    nodes: HashMap<String, SimNode>,
    pods: HashMap<(String, String), SimPod>,
}

/// The running simulator.
pub struct Simulator {
    client: Arc<Client>,
    config: SimConfig,
    state: Mutex<SimState>,
    calls: Semaphore,
}

impl Simulator {
    /// Registers the nodes and keeps them alive until the future is dropped.
    pub async fn run(client: Arc<Client>, config: SimConfig) -> Result<(), SimError> {
        let timings = Timings::fetch(&client).await;
        let sim = Arc::new(Simulator {
            client,
            config,
            state: Mutex::new(SimState::default()),
            calls: Semaphore::new(CONCURRENT_CALLS),
        });
        sim.register_all().await?;
        tracing::info!(
            nodes = sim.config.nodes,
            lease_renew_seconds = timings.lease_renew.as_secs_f64(),
            "simulated nodes registered"
        );
        let heartbeats = tokio::spawn(sim.clone().renew_leases(timings.lease_renew));
        let metrics = tokio::spawn(sim.clone().report_metrics(timings.metrics_interval));
        let timers = tokio::spawn(sim.clone().run_timers());
        let nodes = tokio::spawn(sim.clone().follow("/api/v1/nodes", Simulator::on_node));
        let pods = tokio::spawn(sim.clone().follow("/api/v1/pods", Simulator::on_pod));
        let _ = tokio::join!(heartbeats, metrics, timers, nodes, pods);
        Ok(())
    }

    fn node_name(&self, index: usize) -> String {
        format!("{}{}", self.config.prefix, index + 1)
    }

    async fn register_all(self: &Arc<Self>) -> Result<(), SimError> {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.config.nodes {
            let sim = self.clone();
            tasks.spawn(async move { sim.register(index).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("registration task panicked")?;
        }
        Ok(())
    }

    async fn register(self: Arc<Self>, index: usize) -> Result<(), SimError> {
        let _permit = self.calls.acquire().await.expect("semaphore open");
        let name = self.node_name(index);
        let host_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 0, 0)) + index as u32 + 1);
        let mut labels = json!({
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "arm64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "arm64",
            SIMULATED_LABEL: "true",
        });
        if self.config.zones > 0 {
            labels["topology.kubernetes.io/zone"] =
                json!(format!("zone-{}", index % self.config.zones));
        }
        for (key, value) in &self.config.labels {
            labels[key] = json!(value);
        }
        // Where a real agent would keep local-path volumes: the master provisions claims of
        // simulated pods there (nothing is written; simulated pods mount nothing).
        let annotations = json!({
            protocol::node::STORAGE_DIR_ANNOTATION: format!("/var/lib/bramble/sim/{name}/storage"),
        });
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {},
            "status": self.node_status(&host_ip.to_string(), &name),
        });
        let register = |source| SimError::Register {
            node: name.clone(),
            source,
        };
        let created = match self.client.create("/api/v1/nodes", &node).await {
            Ok(created) => created,
            Err(e) if e.code() == Some(409) => self
                .client
                .merge_patch(
                    &format!("/api/v1/nodes/{name}"),
                    &json!({"metadata": {"labels": labels}}),
                )
                .await
                .map_err(register)?,
            Err(e) => return Err(register(e)),
        };
        self.client
            .merge_patch(
                &format!("/api/v1/nodes/{name}/status"),
                &json!({"status": self.node_status(&host_ip.to_string(), &name)}),
            )
            .await
            .map_err(register)?;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro_time()},
        });
        match self
            .client
            .create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                &lease,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(register(e)),
        }
        let alive = created
            .pointer(&format!(
                "/metadata/annotations/{}",
                CHAOS_ANNOTATION.replace('/', "~1")
            ))
            .is_none();
        let mut state = self.state.lock().expect("sim state lock");
        state.nodes.insert(
            name,
            SimNode {
                alive,
                host_ip: host_ip.to_string(),
                pod_network: pod_network(&created),
                used_ips: HashSet::new(),
                last_ready_patch: None,
            },
        );
        Ok(())
    }

    fn node_status(&self, host_ip: &str, name: &str) -> Value {
        let now = now_time();
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let resources = json!({
            "cpu": self.config.cpu,
            "memory": self.config.memory,
            "pods": self.config.max_pods.to_string(),
            "ephemeral-storage": "32Gi",
        });
        json!({
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated)"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "simulated", "osImage": "bramble simulated node",
                "containerRuntimeVersion": "sim://1", "kubeletVersion": "v1.37.0-bramble",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "arm64",
            },
        })
    }

    async fn follow(
        self: Arc<Self>,
        collection: &'static str,
        handle: fn(&Arc<Self>, Change, &Value),
    ) {
        let client = self.client.clone();
        client
            .follow(collection, |event| match event {
                Event::InitApply(object) | Event::Apply(object) => {
                    handle(&self, Change::Applied, object)
                }
                Event::Delete(object) => handle(&self, Change::Deleted, object),
                Event::Init | Event::InitDone => {}
            })
            .await;
    }

    fn on_node(self: &Arc<Self>, _change: Change, node: &Value) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let dead = node["metadata"]["annotations"][CHAOS_ANNOTATION] == "kill";
        let ready = protocol::node::is_ready(node);
        let mut revived = false;
        let mut report_ready = None;
        {
            let mut state = self.state.lock().expect("sim state lock");
            let Some(sim_node) = state.nodes.get_mut(name) else {
                return;
            };
            if sim_node.pod_network.is_none() {
                sim_node.pod_network = pod_network(node);
            }
            if sim_node.alive == dead {
                sim_node.alive = !dead;
                revived = !dead;
                tracing::info!(node = name, alive = !dead, "chaos");
            }
            let recently = sim_node
                .last_ready_patch
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
            if sim_node.alive && (!ready || revived) && !recently {
                sim_node.last_ready_patch = Some(Instant::now());
                report_ready = Some(sim_node.host_ip.clone());
            }
        }
        if revived {
            let sim = self.clone();
            let node = name.to_owned();
            tokio::spawn(async move { sim.renew_lease(&node).await });
        }
        if let Some(host_ip) = report_ready {
            let sim = self.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let status = sim.node_status(&host_ip, &name);
                let patch = json!({"status": {"conditions": status["conditions"]}});
                sim.call(|client| async move {
                    client
                        .merge_patch(&format!("/api/v1/nodes/{name}/status"), &patch)
                        .await
                })
                .await;
            });
        }
        if revived {
            self.reconcile_node_pods(name);
        }
    }

    fn on_pod(self: &Arc<Self>, change: Change, pod: &Value) {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let key = (namespace.to_owned(), name.to_owned());
        let mut state = self.state.lock().expect("sim state lock");
        if change == Change::Deleted {
            if let Some(gone) = state.pods.remove(&key) {
                release_ip(&mut state, &gone);
            }
            return;
        }
        if node.is_empty() || !state.nodes.contains_key(node) {
            return;
        }
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        if state.pods.get(&key).is_some_and(|p| p.uid != uid) {
            if let Some(old) = state.pods.remove(&key) {
                release_ip(&mut state, &old);
            }
        }
        if !state.pods.contains_key(&key) {
            let phase = pod["status"]["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_owned();
            let existing_ip = pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .map(u32::from);
            let reported = match phase.as_str() {
                "Running" if pod_ready(pod) => Reported::Ready,
                "Running" => Reported::Running,
                "Succeeded" | "Failed" => Reported::Finished,
                _ => Reported::Nothing,
            };
            let sim_pod = SimPod {
                uid: uid.to_owned(),
                node: node.to_owned(),
                ip: existing_ip,
                start_time: pod["status"]["startTime"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(now_time),
                started: Instant::now(),
                ready_after: ready_delay(pod),
                exit_after: annotation(pod, EXIT_AFTER_ANNOTATION)
                    .and_then(|s| s.parse::<f64>().ok())
                    .map(Duration::from_secs_f64),
                exit_code: annotation(pod, EXIT_CODE_ANNOTATION)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                containers: pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or_default().to_owned(),
                            c["image"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
                cpu_milli: 0,
                memory_bytes: 0,
                reported,
                deleting: false,
            };
            if let Some(ip) = existing_ip {
                if let Some(n) = state.nodes.get_mut(node) {
                    n.used_ips.insert(ip);
                }
            }
            state.pods.insert(key.clone(), sim_pod);
        }
        let (cpu, memory) = usage(pod);
        let sim_pod = state.pods.get_mut(&key).expect("inserted above");
        sim_pod.cpu_milli = cpu;
        sim_pod.memory_bytes = memory;
        sim_pod.deleting = pod["metadata"]["deletionTimestamp"].is_string();
        drop(state);
        self.advance(&key);
    }

    fn reconcile_node_pods(self: &Arc<Self>, node: &str) {
        let keys: Vec<_> = {
            let state = self.state.lock().expect("sim state lock");
            state
                .pods
                .iter()
                .filter(|(_, p)| p.node == node)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in keys {
            self.advance(&key);
        }
    }

    /// Moves one pod a step along its simulated life, if its node is alive.
    fn advance(self: &Arc<Self>, key: &(String, String)) {
        let mut state = self.state.lock().expect("sim state lock");
        let SimState { nodes, pods } = &mut *state;
        let Some(pod) = pods.get_mut(key) else {
            return;
        };
        let Some(node) = nodes.get_mut(&pod.node) else {
            return;
        };
        if !node.alive {
            return;
        }
        let (namespace, name) = key.clone();
        if pod.deleting {
            if pod.reported != Reported::Deleting {
                pod.reported = Reported::Deleting;
                let options = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}});
                drop(state);
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
                let sim = self.clone();
                tokio::spawn(async move {
                    sim.call(|client| async move { client.delete(&path, &options).await })
                        .await;
                });
            }
            return;
        }
        if pod.reported == Reported::Finished {
            return;
        }
        if pod.ip.is_none() {
            pod.ip = allocate_ip(node);
        }
        let elapsed = pod.started.elapsed();
        let exited = pod.exit_after.is_some_and(|after| elapsed >= after);
        let want = if exited {
            Reported::Finished
        } else if elapsed >= pod.ready_after {
            Reported::Ready
        } else {
            Reported::Running
        };
        if want == pod.reported {
            return;
        }
        pod.reported = want;
        let status = pod_status(pod, &node.host_ip, want);
        drop(state);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        let sim = self.clone();
        tokio::spawn(async move {
            let patch = json!({"status": status});
            sim.call(|client| async move { client.merge_patch(&path, &patch).await })
                .await;
        });
    }

    /// Runs one API call under the concurrency limit; failures are logged, not retried: the
    /// next event or timer tick for the object tries again.
    async fn call<F, Fut>(&self, call: F)
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<Value, ClientError>>,
    {
        let _permit = self.calls.acquire().await.expect("semaphore open");
        match call(self.client.clone()).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) || e.code() == Some(409) => {}
            Err(error) => tracing::warn!(%error, "simulated node call failed"),
        }
    }

    async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let due: Vec<_> = {
                let state = self.state.lock().expect("sim state lock");
                state
                    .pods
                    .iter()
                    .filter(|(_, p)| {
                        !p.deleting
                            && ((p.reported == Reported::Running
                                && p.started.elapsed() >= p.ready_after)
                                || (p.reported != Reported::Finished
                                    && p.exit_after.is_some_and(|a| p.started.elapsed() >= a)))
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for key in due {
                self.advance(&key);
            }
        }
    }

    /// Renews a node's lease, creating it when it is missing: leases live in the master's
    /// memory between checkpoints, so a master that lost power comes back without them.
    async fn renew_lease(&self, node: &str) {
        let _permit = self.calls.acquire().await.expect("semaphore open");
        if let Err(error) = protocol::client::renew_node_lease(&self.client, node).await {
            tracing::warn!(%error, node, "lease renewal failed");
        }
    }

    async fn renew_leases(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let alive: Vec<String> = {
                let state = self.state.lock().expect("sim state lock");
                state
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.alive)
                    .map(|(name, _)| name.clone())
                    .collect()
            };
            let mut renewals = tokio::task::JoinSet::new();
            for node in alive {
                let sim = self.clone();
                renewals.spawn(async move { sim.renew_lease(&node).await });
            }
            while renewals.join_next().await.is_some() {}
        }
    }

    async fn report_metrics(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let reports: Vec<(String, Value)> = {
                let state = self.state.lock().expect("sim state lock");
                state
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.alive)
                    .map(|(name, _)| (name.clone(), node_metrics(&state, name, every)))
                    .collect()
            };
            let mut sends = tokio::task::JoinSet::new();
            for (node, report) in reports {
                let sim = self.clone();
                sends.spawn(async move {
                    let path = format!("/apis/metrics.k8s.io/v1beta1/nodes/{node}");
                    sim.call(|client| async move { client.replace(&path, &report).await })
                        .await;
                });
            }
            while sends.join_next().await.is_some() {}
        }
    }
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

fn pod_ready(pod: &Value) -> bool {
    protocol::node::condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

fn ready_delay(pod: &Value) -> Duration {
    if let Some(seconds) =
        annotation(pod, READY_AFTER_ANNOTATION).and_then(|s| s.parse::<f64>().ok())
    {
        return Duration::from_secs_f64(seconds.max(0.0));
    }
    let probe_delay = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["readinessProbe"]["initialDelaySeconds"].as_u64())
        .max()
        .unwrap_or(0);
    Duration::from_secs(probe_delay)
}

/// Reported (CPU millicores, memory bytes) of a pod: its annotations, or a little of what it asked for.
fn usage(pod: &Value) -> (u64, u64) {
    let mut cpu_request = 0;
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if let Some(cpu) = container["resources"]["requests"]["cpu"].as_str() {
            cpu_request += quantity::parse(cpu)
                .map(|q| (q * 1000.0) as u64)
                .unwrap_or(0);
        }
    }
    let cpu = annotation(pod, CPU_ANNOTATION)
        .and_then(quantity::parse)
        .map(|q| (q * 1000.0).round() as u64)
        .unwrap_or((cpu_request / 20).max(1));
    let memory = annotation(pod, MEMORY_ANNOTATION)
        .and_then(quantity::parse)
        .map(|q| q as u64)
        .unwrap_or(8 << 20);
    (cpu, memory)
}

/// What a followed object went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Listed, added or modified.
    Applied,
    /// Deleted.
    Deleted,
}

fn pod_network(node: &Value) -> Option<(u32, u32)> {
    let cidr = node["spec"]["podCIDR"].as_str()?;
    let (address, bits) = cidr.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    if bits > 30 {
        return None;
    }
    Some((u32::from(address), 1u32 << (32 - bits)))
}

fn allocate_ip(node: &mut SimNode) -> Option<u32> {
    let (base, size) = node.pod_network?;
    // .0 is the network, .1 the node's bridge, the last the broadcast address.
    let ip = (2..size - 1)
        .map(|offset| base + offset)
        .find(|ip| !node.used_ips.contains(ip))?;
    node.used_ips.insert(ip);
    Some(ip)
}

fn release_ip(state: &mut SimState, pod: &SimPod) {
    if let (Some(ip), Some(node)) = (pod.ip, state.nodes.get_mut(&pod.node)) {
        node.used_ips.remove(&ip);
    }
}

fn pod_status(pod: &SimPod, host_ip: &str, reported: Reported) -> Value {
    let now = now_time();
    let ready = reported == Reported::Ready;
    let finished = reported == Reported::Finished;
    let succeeded = pod.exit_code == 0;
    let phase = if !finished {
        "Running"
    } else if succeeded {
        "Succeeded"
    } else {
        "Failed"
    };
    let flag = |value: bool| if value { "True" } else { "False" };
    let condition = |kind: &str, status: bool| {
        let mut condition = json!({"type": kind, "status": flag(status), "lastProbeTime": null, "lastTransitionTime": now});
        if !status {
            condition["reason"] = json!(if finished {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            });
        }
        condition
    };
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|(name, image)| {
            let state = if finished {
                json!({"terminated": {"exitCode": pod.exit_code,
                    "reason": if succeeded { "Completed" } else { "Error" },
                    "startedAt": pod.start_time, "finishedAt": now,
                    "containerID": format!("sim://{}/{name}", pod.uid)}})
            } else {
                json!({"running": {"startedAt": pod.start_time}})
            };
            json!({
                "name": name, "image": image, "imageID": format!("sim://{image}"),
                "containerID": format!("sim://{}/{name}", pod.uid),
                "ready": ready, "started": !finished, "restartCount": 0, "state": state,
            })
        })
        .collect();
    let mut status = json!({
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": pod.start_time,
        "conditions": [
            condition("PodReadyToStartContainers", !finished),
            condition("Initialized", true),
            condition("Ready", ready),
            condition("ContainersReady", ready),
            condition("PodScheduled", true),
        ],
        "containerStatuses": containers,
    });
    if let Some(ip) = pod.ip {
        let ip = Ipv4Addr::from(ip).to_string();
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

fn node_metrics(state: &SimState, node: &str, window: Duration) -> Value {
    let timestamp = now_time();
    let window = format!("{}s", window.as_secs().max(1));
    let sample = Sample {
        timestamp: &timestamp,
        window: &window,
    };
    let mut node_cpu = 50; // the node's own work, in millicores
    let mut node_memory: u64 = 256 << 20;
    let mut pods = Vec::new();
    for ((namespace, name), pod) in &state.pods {
        if pod.node != node || pod.deleting || pod.reported == Reported::Finished {
            continue;
        }
        node_cpu += pod.cpu_milli;
        node_memory += pod.memory_bytes;
        let share = pod.containers.len().max(1) as u64;
        let containers: Vec<Value> = pod
            .containers
            .iter()
            .map(|(container, _)| {
                let cpu_nanos = pod.cpu_milli * 1_000_000 / share;
                container_usage(container, cpu_nanos, pod.memory_bytes / share)
            })
            .collect();
        pods.push(sample.pod(namespace, name, containers));
    }
    sample.node(node, node_cpu * 1_000_000, node_memory, pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_skip_network_bridge_and_broadcast() {
        let mut node = SimNode {
            alive: true,
            host_ip: "10.99.0.1".into(),
            pod_network: pod_network(&json!({"spec": {"podCIDR": "10.42.1.0/30"}})),
            used_ips: HashSet::new(),
            last_ready_patch: None,
        };
        assert_eq!(
            allocate_ip(&mut node),
            Some(u32::from(Ipv4Addr::new(10, 42, 1, 2)))
        );
        assert_eq!(allocate_ip(&mut node), None);
    }
}
