//! The pod lifecycle on a node: one worker per pod bound here, level-driven like a
//! controller. Each pass looks at the pod object and at the pod's directory and moves the
//! containers one step toward the spec, then reports the status it sees.
//!
//! ```text
//!            ┌──────────── deletionTimestamp set (any time) ───────────────┐
//!            │                                                             ▼
//!  (bound) ─► sandbox: namespaces, veth, IP ─► init containers in order ─► containers ─► terminating:
//!                 │                              │ exit≠0: back-off/restart   │ exit: restart    SIGTERM, grace,
//!                 │                              │ (Never: pod Failed)        │ per policy       SIGKILL, free IP,
//!                 │                              ▼                            ▼                  delete the pod
//!                 └──────── every container finished and none restarts: Succeeded / Failed
//! ```
//!
//! The pod directory (`pods/<uid>/`) is the worker's memory: attempts, their exit files, the
//! pod IP and volumes are all on disk, so a restarted agent adopts running pods unchanged.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::client::{now_time, string_array, Client};
use crate::image::{Credentials, ImageStore, PullPolicy, Reference};
use crate::network::{Cidr, PodNetwork};
use crate::pod_config::{container_env, prepare_volumes, volume_mounts, ObjectSource, PodFacts};
use crate::runtime::containers::{Attempt, AttemptState, ContainerRunner};
use crate::runtime::monitor::Exited;
use crate::runtime::sandbox;
use crate::runtime::spec::{resolve_args, BindMount, ContainerPlan};
use crate::services::NodeServices;
use crate::sim::parse_quantity;

/// What every pod worker on the node shares.
pub struct NodeContext {
    /// The API client (the node's credentials).
    pub client: Arc<Client>,
    /// This node's name.
    pub node_name: String,
    /// This node's address.
    pub node_ip: Ipv4Addr,
    /// `pods/` under the agent's data directory.
    pub pods_dir: PathBuf,
    /// Starts containers.
    pub runner: ContainerRunner,
    /// The node's images.
    pub images: Arc<ImageStore>,
    /// Pod networking, once the node has a pod CIDR.
    pub network: Arc<PodNetwork>,
    /// Pod IPs in use.
    pub ips: Mutex<IpAllocator>,
    /// The first restart back-off; doubles per restart up to five minutes.
    pub crash_backoff: Duration,
    /// Services: the environment variables and resolv.conf of new pods.
    pub services: Arc<NodeServices>,
    /// Set while the chaos hook holds the node down: workers leave pods alone.
    pub paused: Arc<std::sync::atomic::AtomicBool>,
}

/// Hands out pod IPs from the node's pod CIDR (.1 is the bridge), round-robin: a pod's
/// address is not given to the next pod at once, so neighbour caches and conntrack entries
/// that still name the old pod cannot send a new pod's traffic astray.
pub struct IpAllocator {
    cidr: Cidr,
    used: HashSet<Ipv4Addr>,
    /// Where the next search starts (an offset into the CIDR).
    next: u32,
}

impl IpAllocator {
    /// An allocator for `cidr` with nothing in use.
    pub fn new(cidr: Cidr) -> IpAllocator {
        IpAllocator {
            cidr,
            used: HashSet::new(),
            next: 2,
        }
    }

    /// Marks an address as used (adopted pods).
    pub fn claim(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// The first free address after the last one handed out.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let last = self.cidr.size().saturating_sub(1);
        let start = self.next.clamp(2, last.max(2));
        let offset = (start..last)
            .chain(2..start)
            .find(|n| !self.used.contains(&self.cidr.nth(*n)))?;
        let ip = self.cidr.nth(offset);
        self.used.insert(ip);
        self.next = offset + 1;
        Some(ip)
    }

    /// Returns an address.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

/// The handle the agent keeps per pod worker.
pub struct PodHandle {
    /// The latest pod object; `None` once it left the API.
    pub object: watch::Sender<Option<Value>>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const SUCCESS_RESET: Duration = Duration::from_secs(600);
const DEFAULT_GRACE_SECONDS: u64 = 30;
const RESYNC: Duration = Duration::from_secs(10);

/// Starts the worker of one pod.
pub fn spawn_worker(ctx: Arc<NodeContext>, uid: String, pod: Option<Value>) -> PodHandle {
    let (sender, receiver) = watch::channel(pod);
    tokio::spawn(async move {
        let mut worker = PodWorker::new(ctx, uid);
        worker.run(receiver).await;
    });
    PodHandle { object: sender }
}

#[derive(Default)]
struct ProbeState {
    attempt: u32,
    started: bool,
    ready: bool,
    startup_failures: u32,
    liveness_failures: u32,
    readiness_failures: u32,
    readiness_successes: u32,
    next_startup: Option<Instant>,
    next_liveness: Option<Instant>,
    next_readiness: Option<Instant>,
}

struct PodWorker {
    ctx: Arc<NodeContext>,
    uid: String,
    dir: PathBuf,
    pod_ip: Option<Ipv4Addr>,
    probes: HashMap<String, ProbeState>,
    /// Why a container is waiting, when it is not simply being created.
    waiting: HashMap<String, (String, String)>,
    /// Image pulls that failed, and when to try again.
    pull_backoff: HashMap<String, (Instant, Duration)>,
    image_ids: HashMap<String, String>,
    watched_monitors: HashSet<PathBuf>,
    wake: Arc<Notify>,
    last_status: Option<Value>,
    transitions: HashMap<String, (String, String)>,
    start_time: Option<String>,
    torn_down: bool,
}

fn pod_key(pod: &Value) -> (String, String) {
    (
        pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn containers(pod: &Value, field: &str) -> Vec<Value> {
    pod["spec"][field].as_array().cloned().unwrap_or_default()
}

fn name_of(container: &Value) -> String {
    container["name"].as_str().unwrap_or("").to_owned()
}

fn parse_time(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

/// The restart delay after `restarts` restarts, kubelet-style: 10 s doubling to 5 min, back to
/// the start after a run of ten minutes.
pub fn restart_delay(base: Duration, restarts: u32, last_run: Duration) -> Duration {
    if last_run >= SUCCESS_RESET || restarts == 0 {
        return if restarts == 0 { Duration::ZERO } else { base };
    }
    let factor = 1u32 << restarts.saturating_sub(1).min(10);
    (base * factor).min(MAX_BACKOFF)
}

impl PodWorker {
    fn new(ctx: Arc<NodeContext>, uid: String) -> PodWorker {
        let dir = ctx.pods_dir.join(&uid);
        let pod_ip = std::fs::read_to_string(dir.join("ip"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(ip) = pod_ip {
            ctx.ips.lock().expect("ip lock").claim(ip);
        }
        PodWorker {
            ctx,
            uid,
            dir,
            pod_ip,
            probes: HashMap::new(),
            waiting: HashMap::new(),
            pull_backoff: HashMap::new(),
            image_ids: HashMap::new(),
            watched_monitors: HashSet::new(),
            wake: Arc::new(Notify::new()),
            last_status: None,
            transitions: HashMap::new(),
            start_time: None,
            torn_down: false,
        }
    }

    async fn run(&mut self, mut object: watch::Receiver<Option<Value>>) {
        loop {
            let pod = object.borrow_and_update().clone();
            let Some(pod) = pod else {
                // Gone from the API (or never there: left over from before a restart).
                self.stop_all(None, Duration::ZERO).await;
                self.teardown().await;
                let _ = std::fs::remove_dir_all(&self.dir);
                self.ctx.runner.remove_pod_cgroup(&self.uid);
                return;
            };
            let paused = self.ctx.paused.load(std::sync::atomic::Ordering::SeqCst);
            let next = if paused && !pod["metadata"]["deletionTimestamp"].is_string() {
                RESYNC
            } else if pod["metadata"]["deletionTimestamp"].is_string() {
                self.terminate(&pod).await;
                RESYNC
            } else {
                match self.sync(&pod).await {
                    Ok(next) => next,
                    Err(error) => {
                        let (namespace, name) = pod_key(&pod);
                        tracing::warn!(pod = format!("{namespace}/{name}"), %error, "pod sync failed");
                        Duration::from_secs(2)
                    }
                }
            };
            tokio::select! {
                changed = object.changed() => {
                    if changed.is_err() {
                        // The agent dropped the handle: it is shutting down; leave pods running.
                        return;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    // ---- sandbox -------------------------------------------------------------------------

    async fn ensure_sandbox(&mut self, pod: &Value) -> Result<(), String> {
        let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
        if sandbox::exists(&self.dir) && (host_network || self.pod_ip.is_some()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("pod directory: {e}"))?;
        let hostname = pod["spec"]["hostname"]
            .as_str()
            .or(pod["metadata"]["name"].as_str())
            .unwrap_or("pod");
        let hostname = if host_network {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| self.ctx.node_name.clone())
        } else {
            hostname.chars().take(63).collect()
        };
        let namespaces = sandbox::create(&self.dir, &hostname, host_network)
            .map_err(|e| format!("cannot create the pod's namespaces: {e}"))?;
        if host_network {
            return Ok(());
        }
        let ip = match self.pod_ip {
            Some(ip) => ip,
            None => {
                let ip = self
                    .ctx
                    .ips
                    .lock()
                    .expect("ip lock")
                    .allocate()
                    .ok_or("the node has no free pod IP")?;
                std::fs::write(self.dir.join("ip"), ip.to_string())
                    .map_err(|e| format!("recording the pod IP: {e}"))?;
                self.pod_ip = Some(ip);
                ip
            }
        };
        self.ctx
            .network
            .attach(&self.uid, &namespaces.network, ip)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect the pod to the network: {:#}",
                    error_chain(&e)
                )
            })?;
        Ok(())
    }

    async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        let _ = self.ctx.network.detach(&self.uid).await;
        let _ = sandbox::remove(&self.dir);
        if let Some(ip) = self.pod_ip.take() {
            self.ctx.ips.lock().expect("ip lock").release(ip);
            let _ = std::fs::remove_file(self.dir.join("ip"));
        }
        for attempt in Attempt::all(&self.dir) {
            let _ = nix::mount::umount2(
                &attempt.dir.join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
        self.torn_down = true;
    }

    // ---- the main pass -------------------------------------------------------------------

    async fn sync(&mut self, pod: &Value) -> Result<Duration, String> {
        if self.start_time.is_none() {
            self.start_time = Some(
                pod["status"]["startTime"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(now_time),
            );
        }
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded") | Some("Failed")
        ) && self.last_status.is_some();
        if finished {
            self.teardown().await;
            self.report(pod).await;
            return Ok(RESYNC * 6);
        }
        let mut next = RESYNC;
        let sandbox = self.ensure_sandbox(pod).await;
        if let Err(message) = &sandbox {
            for container in containers(pod, "initContainers")
                .iter()
                .chain(containers(pod, "containers").iter())
            {
                self.waiting.insert(
                    name_of(container),
                    ("ContainerCreating".into(), message.clone()),
                );
            }
            self.event(pod, "Warning", "FailedCreatePodSandBox", message)
                .await;
            self.report(pod).await;
            return Ok(Duration::from_secs(5));
        }
        self.torn_down = false;
        let ctx = self.ctx.clone();
        let mut objects = ObjectSource::new(&ctx.client, &pod_key(pod).0);
        let volumes = match prepare_volumes(pod, &self.dir, &mut objects).await {
            Ok(volumes) => volumes,
            Err(error) => {
                for container in containers(pod, "initContainers")
                    .iter()
                    .chain(containers(pod, "containers").iter())
                {
                    self.waiting.insert(
                        name_of(container),
                        ("ContainerCreating".into(), error.0.clone()),
                    );
                }
                self.event(pod, "Warning", "FailedMount", &error.0).await;
                self.report(pod).await;
                return Ok(Duration::from_secs(5));
            }
        };
        let policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_owned();

        // Init containers, one at a time, each to a zero exit.
        let mut initialized = true;
        for container in containers(pod, "initContainers") {
            let name = name_of(&container);
            let latest = self.latest_attempt(&name);
            match latest.as_ref().map(|a| (a, a.state())) {
                Some((_, AttemptState::Exited(exited))) if exited.exit_code == 0 => continue,
                Some((_, AttemptState::Running(_))) | Some((_, AttemptState::Creating)) => {
                    self.watch_exit(latest.as_ref().expect("some"));
                    initialized = false;
                    break;
                }
                Some((attempt, AttemptState::Exited(exited))) => {
                    initialized = false;
                    if policy == "Never" {
                        break;
                    }
                    let number = attempt.number + 1;
                    if let Some(wait) = self.backoff_left(&name, attempt, &exited) {
                        next = next.min(wait);
                        break;
                    }
                    self.start(pod, &container, number, &volumes, &mut objects)
                        .await;
                    next = next.min(Duration::from_millis(200));
                    break;
                }
                None => {
                    initialized = false;
                    self.start(pod, &container, 0, &volumes, &mut objects).await;
                    next = next.min(Duration::from_millis(200));
                    break;
                }
            }
        }

        if initialized {
            for container in containers(pod, "containers") {
                let name = name_of(&container);
                let latest = self.latest_attempt(&name);
                match latest.as_ref().map(|a| (a, a.state())) {
                    None => {
                        self.start(pod, &container, 0, &volumes, &mut objects).await;
                    }
                    Some((attempt, AttemptState::Running(_))) => {
                        self.watch_exit(attempt);
                        if let Some(wait) = self.run_probes(pod, &container, attempt).await {
                            next = next.min(wait);
                        }
                    }
                    Some((attempt, AttemptState::Creating)) => {
                        self.watch_exit(attempt);
                        next = next.min(Duration::from_millis(500));
                    }
                    Some((attempt, AttemptState::Exited(exited))) => {
                        self.probes.remove(&name);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => exited.exit_code != 0,
                            _ => true,
                        };
                        if !restart {
                            continue;
                        }
                        if let Some(wait) = self.backoff_left(&name, attempt, &exited) {
                            next = next.min(wait);
                            continue;
                        }
                        self.waiting.remove(&name);
                        let number = attempt.number + 1;
                        self.start(pod, &container, number, &volumes, &mut objects)
                            .await;
                    }
                }
            }
        }
        self.prune_attempts();
        self.report(pod).await;
        Ok(next)
    }

    fn latest_attempt(&self, name: &str) -> Option<Attempt> {
        Attempt::all(&self.dir)
            .into_iter()
            .filter(|a| a.name == name)
            .max_by_key(|a| a.number)
    }

    /// Keeps the current and the previous attempt of each container (for `logs --previous`).
    fn prune_attempts(&self) {
        let attempts = Attempt::all(&self.dir);
        let mut latest: HashMap<&str, u32> = HashMap::new();
        for attempt in &attempts {
            let entry = latest.entry(attempt.name.as_str()).or_insert(0);
            *entry = (*entry).max(attempt.number);
        }
        for attempt in &attempts {
            if attempt.number + 1 < latest[attempt.name.as_str()] {
                let _ = attempt.remove();
                let _ = std::fs::remove_file(attempt.log_path());
            }
        }
    }

    /// How long the container must still wait before its next start, if at all; sets the
    /// CrashLoopBackOff waiting reason meanwhile.
    fn backoff_left(&mut self, name: &str, attempt: &Attempt, exited: &Exited) -> Option<Duration> {
        let finished = parse_time(&exited.finished_at)?;
        let ran = parse_time(&exited.started_at)
            .map(|s| Duration::try_from(finished.duration_since(s)).unwrap_or_default())
            .unwrap_or_default();
        let delay = restart_delay(self.ctx.crash_backoff, attempt.number + 1, ran);
        let elapsed =
            Duration::try_from(jiff::Timestamp::now().duration_since(finished)).unwrap_or_default();
        if elapsed >= delay {
            return None;
        }
        self.waiting.insert(
            name.to_owned(),
            (
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container={name} pod={}",
                    delay.as_secs(),
                    self.uid
                ),
            ),
        );
        Some(delay - elapsed)
    }

    fn watch_exit(&mut self, attempt: &Attempt) {
        if !self.watched_monitors.insert(attempt.dir.clone()) {
            return;
        }
        let Some(pid) = std::fs::read_to_string(attempt.dir.join("monitor.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            self.watched_monitors.remove(&attempt.dir);
            return;
        };
        let wake = self.wake.clone();
        tokio::spawn(async move {
            wait_for_exit(pid).await;
            wake.notify_one();
        });
    }

    // ---- starting a container ------------------------------------------------------------

    async fn start(
        &mut self,
        pod: &Value,
        container: &Value,
        number: u32,
        volumes: &HashMap<String, PathBuf>,
        objects: &mut ObjectSource<'_>,
    ) {
        let name = name_of(container);
        match self
            .try_start(pod, container, number, volumes, objects)
            .await
        {
            Ok(()) => {
                self.waiting.remove(&name);
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {name}"),
                )
                .await;
            }
            Err((reason, message)) => {
                let kind = if reason == "ContainerCreating" {
                    "Normal"
                } else {
                    "Warning"
                };
                self.event(
                    pod,
                    kind,
                    if reason == "ErrImagePull" {
                        "Failed"
                    } else {
                        &reason
                    },
                    &message,
                )
                .await;
                self.waiting.insert(name, (reason, message));
            }
        }
    }

    async fn pull_secrets(
        &self,
        pod: &Value,
        objects: &mut ObjectSource<'_>,
    ) -> HashMap<String, Credentials> {
        let mut credentials = HashMap::new();
        for secret in pod["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = secret["name"].as_str() else {
                continue;
            };
            let Ok(Some(data)) = objects.data("secrets", name).await else {
                continue;
            };
            let Some(config) = data
                .get(".dockerconfigjson")
                .or_else(|| data.get(".dockercfg"))
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            else {
                continue;
            };
            let auths = config.get("auths").unwrap_or(&config);
            for (host, entry) in auths.as_object().into_iter().flatten() {
                let host = host
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let (username, password) =
                    match (entry["username"].as_str(), entry["password"].as_str()) {
                        (Some(u), Some(p)) => (u.to_owned(), p.to_owned()),
                        _ => {
                            use base64::Engine;
                            let decoded = base64::engine::general_purpose::STANDARD
                                .decode(entry["auth"].as_str().unwrap_or(""))
                                .unwrap_or_default();
                            let text = String::from_utf8_lossy(&decoded).into_owned();
                            match text.split_once(':') {
                                Some((u, p)) => (u.to_owned(), p.to_owned()),
                                None => continue,
                            }
                        }
                    };
                let host = if host == "index.docker.io" {
                    "docker.io".to_owned()
                } else {
                    host
                };
                credentials.insert(host, Credentials { username, password });
            }
        }
        credentials
    }

    async fn try_start(
        &mut self,
        pod: &Value,
        container: &Value,
        number: u32,
        volumes: &HashMap<String, PathBuf>,
        objects: &mut ObjectSource<'_>,
    ) -> Result<(), (String, String)> {
        let name = name_of(container);
        let image_name = container["image"].as_str().unwrap_or("");
        let reference =
            Reference::parse(image_name).map_err(|e| ("InvalidImageName".to_string(), e))?;
        let policy = PullPolicy::for_container(container["imagePullPolicy"].as_str(), &reference);
        if let Some((until, delay)) = self.pull_backoff.get(&name) {
            if Instant::now() < *until {
                return Err((
                    "ImagePullBackOff".into(),
                    format!(
                        "Back-off {}s pulling image \"{image_name}\"",
                        delay.as_secs()
                    ),
                ));
            }
        }
        let credentials = self.pull_secrets(pod, objects).await;
        if self.ctx.images.local(image_name).is_none() {
            self.event(
                pod,
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image_name}\""),
            )
            .await;
        }
        let pulled = Instant::now();
        let image = match self
            .ctx
            .images
            .ensure(image_name, policy, &credentials)
            .await
        {
            Ok(image) => {
                self.pull_backoff.remove(&name);
                image
            }
            Err(error) => {
                let delay = self
                    .pull_backoff
                    .get(&name)
                    .map(|(_, d)| (*d * 2).min(MAX_BACKOFF))
                    .unwrap_or(Duration::from_secs(5));
                self.pull_backoff
                    .insert(name.clone(), (Instant::now() + delay, delay));
                let mut message = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                return Err((error.reason().to_owned(), message));
            }
        };
        if pulled.elapsed() > Duration::from_millis(500) {
            self.event(
                pod,
                "Normal",
                "Pulled",
                &format!(
                    "Successfully pulled image \"{image_name}\" in {:.1}s",
                    pulled.elapsed().as_secs_f64()
                ),
            )
            .await;
        }
        self.image_ids.insert(name.clone(), image.digest.clone());
        let config_error =
            |e: crate::pod_config::ConfigError| ("CreateContainerConfigError".to_string(), e.0);
        self.ctx.services.wait_synced().await;
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let service_links = pod["spec"]["enableServiceLinks"] != false;
        let facts = PodFacts {
            pod,
            pod_ip: self.pod_ip_text(pod),
            host_ip: self.ctx.node_ip.to_string(),
            service_env: self.ctx.services.env(namespace, service_links),
        };
        let env = container_env(container, &image.config.env, &facts, objects)
            .await
            .map_err(config_error)?;
        let mut env = env;
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!(
                "HOSTNAME={}",
                pod["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let mut mounts = volume_mounts(container, volumes).map_err(config_error)?;
        mounts.extend(
            self.etc_files(pod)
                .map_err(|e| ("CreateContainerConfigError".to_string(), e))?,
        );
        let vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let expand_all = |items: Vec<String>| -> Vec<String> {
            items
                .iter()
                .map(|s| crate::runtime::spec::expand(s, &vars))
                .collect()
        };
        let args = resolve_args(
            &expand_all(string_array(&container["command"])),
            &expand_all(string_array(&container["args"])),
            &image.config.entrypoint,
            &image.config.cmd,
        );
        if args.is_empty() {
            return Err((
                "CreateContainerConfigError".into(),
                "the image has no command and the container gives none".into(),
            ));
        }
        let layers: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| self.ctx.images.layer_dir(l))
            .collect();
        let security = |field: &str| {
            container["securityContext"][field]
                .as_u64()
                .or(pod["spec"]["securityContext"][field].as_u64())
        };
        let (mut uid, mut gid) = resolve_user(&image.config.user, &layers);
        if let Some(run_as) = security("runAsUser") {
            uid = run_as as u32;
        }
        if let Some(run_as) = security("runAsGroup") {
            gid = run_as as u32;
        }
        let quantity = |section: &str, resource: &str| {
            container["resources"][section][resource]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    container["resources"][section][resource]
                        .as_f64()
                        .map(|n| n.to_string())
                })
                .and_then(|q| parse_quantity(&q))
        };
        let plan = ContainerPlan {
            args,
            env,
            cwd: container["workingDir"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(&image.config.working_dir)
                .to_owned(),
            uid,
            gid,
            rootfs: PathBuf::new(),
            pod_namespaces: sandbox::namespaces(&self.dir),
            mounts,
            cgroup_path: String::new(),
            memory_limit: quantity("limits", "memory").map(|m| m as i64),
            cpu_limit_millis: quantity("limits", "cpu").map(|c| (c * 1000.0).ceil() as i64),
            cpu_request_millis: quantity("requests", "cpu")
                .or(quantity("limits", "cpu"))
                .map(|c| (c * 1000.0).ceil() as i64)
                .unwrap_or(2),
            terminal: container["tty"].as_bool() == Some(true),
            privileged: container["securityContext"]["privileged"].as_bool() == Some(true),
        };
        let attempt = Attempt::new(&self.dir, &name, number);
        match self
            .ctx
            .runner
            .start(&attempt, &self.uid, &layers, plan)
            .await
        {
            Ok(_) => {
                // Image garbage collection keeps what attempts on disk still name.
                let _ = std::fs::write(attempt.dir.join("image"), image_name);
                self.watch_exit(&attempt);
                Ok(())
            }
            Err(message) => {
                // The attempt's exit file records the failure; it counts as a restart.
                if !attempt.dir.join("exit.json").exists() {
                    let _ = std::fs::create_dir_all(&attempt.dir);
                    let exited = Exited {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        message: message.clone(),
                        started_at: String::new(),
                        finished_at: now_time(),
                    };
                    let _ = crate::runtime::monitor::write_atomic(
                        &attempt.dir.join("exit.json"),
                        &serde_json::to_vec(&exited).expect("serializes"),
                    );
                }
                Err(("RunContainerError".into(), message))
            }
        }
    }

    fn pod_ip_text(&self, pod: &Value) -> String {
        if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
            return self.ctx.node_ip.to_string();
        }
        self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// /etc/hosts, /etc/hostname and /etc/resolv.conf for the pod's containers.
    fn etc_files(&self, pod: &Value) -> Result<Vec<BindMount>, String> {
        let dir = self.dir.join("etc");
        std::fs::create_dir_all(&dir).map_err(|e| format!("pod etc files: {e}"))?;
        let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
        let hostname = pod["spec"]["hostname"]
            .as_str()
            .or(pod["metadata"]["name"].as_str())
            .unwrap_or("pod")
            .to_owned();
        let mut hosts = String::from("# Kubernetes-managed hosts file (bramble).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if !host_network {
            hosts.push_str(&format!("{}\t{hostname}\n", self.pod_ip_text(pod)));
        }
        for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
            let names: Vec<&str> = alias["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            hosts.push_str(&format!(
                "{}\t{}\n",
                alias["ip"].as_str().unwrap_or(""),
                names.join(" ")
            ));
        }
        let resolv = self.ctx.services.resolv_conf(pod).into_bytes();
        let files = [
            ("hosts", "/etc/hosts", hosts.into_bytes()),
            (
                "hostname",
                "/etc/hostname",
                format!("{hostname}\n").into_bytes(),
            ),
            ("resolv.conf", "/etc/resolv.conf", resolv),
        ];
        let mut mounts = Vec::new();
        for (file, destination, content) in files {
            let path = dir.join(file);
            if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
                std::fs::write(&path, &content).map_err(|e| format!("pod {file}: {e}"))?;
            }
            mounts.push(BindMount {
                destination: destination.into(),
                source: path,
                read_only: false,
            });
        }
        Ok(mounts)
    }

    // ---- probes --------------------------------------------------------------------------

    /// Runs the container's due probes; returns when the next one is due.
    async fn run_probes(
        &mut self,
        pod: &Value,
        container: &Value,
        attempt: &Attempt,
    ) -> Option<Duration> {
        let name = name_of(container);
        let now = Instant::now();
        let has = |kind: &str| container.get(kind).is_some_and(|p| p.is_object());
        let state = self.probes.entry(name.clone()).or_default();
        if state.attempt != attempt.number
            || (state.next_startup.is_none()
                && state.next_liveness.is_none()
                && state.next_readiness.is_none()
                && !state.started)
        {
            *state = ProbeState {
                attempt: attempt.number,
                started: !has("startupProbe"),
                ready: !has("readinessProbe"),
                ..Default::default()
            };
            let initial = |kind: &str| {
                now + Duration::from_secs(
                    container[kind]["initialDelaySeconds"].as_u64().unwrap_or(0),
                )
            };
            if has("startupProbe") {
                state.next_startup = Some(initial("startupProbe"));
            }
            if has("livenessProbe") {
                state.next_liveness = Some(initial("livenessProbe"));
            }
            if has("readinessProbe") {
                state.next_readiness = Some(initial("readinessProbe"));
            }
        }
        let pod_ip = self.pod_ip_text(pod);
        let period = |kind: &str| {
            Duration::from_secs(
                container[kind]["periodSeconds"]
                    .as_u64()
                    .unwrap_or(10)
                    .max(1),
            )
        };
        let threshold = |kind: &str, field: &str, default: u64| {
            container[kind][field].as_u64().unwrap_or(default) as u32
        };
        let mut kill_reason: Option<String> = None;

        if !self.probes[&name].started {
            if self.probes[&name].next_startup.is_some_and(|t| t <= now) {
                let result = probe(&container["startupProbe"], &pod_ip, attempt, &self.ctx).await;
                let state = self.probes.get_mut(&name).expect("present");
                state.next_startup = Some(now + period("startupProbe"));
                match result {
                    Ok(()) => {
                        state.started = true;
                        state.next_startup = None;
                    }
                    Err(message) => {
                        state.startup_failures += 1;
                        if state.startup_failures
                            >= threshold("startupProbe", "failureThreshold", 3)
                        {
                            kill_reason = Some(format!("Startup probe failed: {message}"));
                        }
                    }
                }
            }
        } else {
            if self.probes[&name].next_liveness.is_some_and(|t| t <= now) {
                let result = probe(&container["livenessProbe"], &pod_ip, attempt, &self.ctx).await;
                let state = self.probes.get_mut(&name).expect("present");
                state.next_liveness = Some(now + period("livenessProbe"));
                match result {
                    Ok(()) => state.liveness_failures = 0,
                    Err(message) => {
                        state.liveness_failures += 1;
                        let failures = state.liveness_failures;
                        self.event(
                            pod,
                            "Warning",
                            "Unhealthy",
                            &format!("Liveness probe failed: {message}"),
                        )
                        .await;
                        if failures >= threshold("livenessProbe", "failureThreshold", 3) {
                            kill_reason = Some(format!(
                                "Container {name} failed liveness probe, will be restarted"
                            ));
                        }
                    }
                }
            }
            if self.probes[&name].next_readiness.is_some_and(|t| t <= now) {
                let result = probe(&container["readinessProbe"], &pod_ip, attempt, &self.ctx).await;
                let state = self.probes.get_mut(&name).expect("present");
                state.next_readiness = Some(now + period("readinessProbe"));
                match result {
                    Ok(()) => {
                        state.readiness_failures = 0;
                        state.readiness_successes += 1;
                        if state.readiness_successes
                            >= threshold("readinessProbe", "successThreshold", 1)
                        {
                            state.ready = true;
                        }
                    }
                    Err(message) => {
                        state.readiness_successes = 0;
                        state.readiness_failures += 1;
                        if state.readiness_failures
                            >= threshold("readinessProbe", "failureThreshold", 3)
                            || !state.ready
                        {
                            let was_ready = state.ready;
                            state.ready = false;
                            if was_ready || state.readiness_failures == 1 {
                                self.event(
                                    pod,
                                    "Warning",
                                    "Unhealthy",
                                    &format!("Readiness probe failed: {message}"),
                                )
                                .await;
                            }
                        }
                    }
                }
            }
        }
        if let Some(reason) = kill_reason {
            self.event(pod, "Normal", "Killing", &reason).await;
            let grace = pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            attempt.stop(Duration::from_secs(grace)).await;
            self.probes.remove(&name);
            self.wake.notify_one();
            return Some(Duration::from_millis(50));
        }
        let state = &self.probes[&name];
        [
            state.next_startup,
            state.next_liveness,
            state.next_readiness,
        ]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_duration_since(Instant::now()))
        .min()
    }

    // ---- termination ---------------------------------------------------------------------

    /// Stops every container: its preStop hook first (when `pod` is given), then SIGTERM,
    /// then SIGKILL once `grace` (which the hook's time counts against) runs out.
    async fn stop_all(&self, pod: Option<&Value>, grace: Duration) {
        let mut stops = Vec::new();
        for attempt in Attempt::all(&self.dir) {
            if !matches!(
                attempt.state(),
                AttemptState::Running(_) | AttemptState::Creating
            ) {
                continue;
            }
            let hook = pod.and_then(|pod| {
                containers(pod, "containers")
                    .into_iter()
                    .find(|c| name_of(c) == attempt.name)
                    .map(|c| c["lifecycle"]["preStop"].clone())
                    .filter(|hook| hook.is_object())
            });
            let pod_ip = pod.map(|pod| self.pod_ip_text(pod)).unwrap_or_default();
            let ctx = &self.ctx;
            stops.push(async move {
                let started = Instant::now();
                if let Some(hook) = hook {
                    if let AttemptState::Running(_) = attempt.state() {
                        if let Err(message) = pre_stop(&hook, &pod_ip, &attempt, ctx, grace).await {
                            tracing::info!(
                                container = attempt.name,
                                message,
                                "preStop hook failed"
                            );
                        }
                    }
                }
                attempt.stop(grace.saturating_sub(started.elapsed())).await
            });
        }
        futures_util::future::join_all(stops).await;
    }

    async fn terminate(&mut self, pod: &Value) {
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or(pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        let running = Attempt::all(&self.dir)
            .iter()
            .any(|a| matches!(a.state(), AttemptState::Running(_)));
        if running {
            for container in containers(pod, "containers") {
                self.event(
                    pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {}", name_of(&container)),
                )
                .await;
            }
        }
        self.stop_all(Some(pod), Duration::from_secs(grace)).await;
        self.teardown().await;
        self.report(pod).await;
        let (namespace, name) = pod_key(pod);
        let deleted = self
            .ctx
            .client
            .delete(
                &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                &json!({"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}),
            )
            .await;
        if let Err(error) = deleted {
            if !matches!(error.code(), Some(404) | Some(409)) {
                tracing::warn!(pod = format!("{namespace}/{name}"), %error, "final delete failed");
            }
        }
    }

    // ---- status --------------------------------------------------------------------------

    fn container_status(
        &self,
        pod: &Value,
        container: &Value,
        init: bool,
    ) -> (Value, bool, bool, bool) {
        let name = name_of(container);
        let image = container["image"].as_str().unwrap_or("");
        let attempts: Vec<Attempt> = Attempt::all(&self.dir)
            .into_iter()
            .filter(|a| a.name == name)
            .collect();
        let latest = attempts.last();
        let previous = attempts.len().checked_sub(2).map(|i| &attempts[i]);
        let container_id = |a: &Attempt| format!("bramble://{}", a.id(&self.uid));
        let terminated = |exited: &Exited, a: &Attempt| {
            let mut t = json!({
                "exitCode": exited.exit_code,
                "reason": exited.reason,
                "finishedAt": exited.finished_at,
                "containerID": container_id(a),
            });
            if !exited.started_at.is_empty() {
                t["startedAt"] = json!(exited.started_at);
            }
            if let Some(signal) = exited.signal {
                t["signal"] = json!(signal);
            }
            if !exited.message.is_empty() {
                t["message"] = json!(exited.message);
            }
            json!({"terminated": t})
        };
        let waiting = |reason: &str, message: &str| {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        };
        let mut running = false;
        let mut succeeded = false;
        let mut ready = false;
        let state = match latest.map(|a| (a, a.state())) {
            Some((_, AttemptState::Running(started))) => {
                running = true;
                let probes = self.probes.get(&name);
                ready = !init
                    && probes.is_none_or(|p| p.ready && p.attempt == latest.expect("some").number);
                if probes.is_none()
                    && container
                        .get("readinessProbe")
                        .is_some_and(|p| p.is_object())
                {
                    ready = false;
                }
                json!({"running": {"startedAt": started.started_at}})
            }
            Some((attempt, AttemptState::Exited(exited))) => {
                succeeded = exited.exit_code == 0;
                match self.waiting.get(&name) {
                    Some((reason, message))
                        if reason == "CrashLoopBackOff"
                            || reason.starts_with("Err")
                            || reason.ends_with("Error")
                            || reason == "ImagePullBackOff" =>
                    {
                        waiting(reason, message)
                    }
                    _ => terminated(&exited, attempt),
                }
            }
            Some((_, AttemptState::Creating)) => waiting("ContainerCreating", ""),
            None => match self.waiting.get(&name) {
                Some((reason, message)) => waiting(reason, message),
                None if init => waiting("PodInitializing", ""),
                None => waiting("ContainerCreating", ""),
            },
        };
        let last_state = match (latest.map(|a| (a, a.state())), previous) {
            (Some((attempt, AttemptState::Exited(exited))), _)
                if state.get("waiting").is_some() =>
            {
                terminated(&exited, attempt)
            }
            (_, Some(previous)) => match previous.state() {
                AttemptState::Exited(exited) => terminated(&exited, previous),
                _ => json!({}),
            },
            _ => json!({}),
        };
        let mut status = json!({
            "name": name,
            "image": image,
            "imageID": self.image_ids.get(&name).map(|d| format!("{}@{d}", image.split('@').next().unwrap_or(image))).unwrap_or_default(),
            "ready": ready,
            "restartCount": latest.map(|a| a.number).unwrap_or(0),
            "state": state,
            "lastState": last_state,
            "started": running && self.probes.get(&name).is_none_or(|p| p.started),
        });
        if let Some(attempt) = latest {
            status["containerID"] = json!(container_id(attempt));
        }
        let _ = pod;
        (status, running, succeeded, ready)
    }

    fn condition(&mut self, kind: &str, ok: bool, reason: Option<&str>) -> Value {
        let status = if ok { "True" } else { "False" };
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (status.to_owned(), now_time()));
        if entry.0 != status {
            *entry = (status.to_owned(), now_time());
        }
        let mut condition = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let (false, Some(reason)) = (ok, reason) {
            condition["reason"] = json!(reason);
        }
        condition
    }

    async fn report(&mut self, pod: &Value) {
        let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        let init = containers(pod, "initContainers");
        let apps = containers(pod, "containers");
        let mut init_statuses = Vec::new();
        let mut initialized = true;
        let mut init_failed = false;
        for container in &init {
            let (status, _, succeeded, _) = self.container_status(pod, container, true);
            let done = status["state"]["terminated"]["exitCode"].as_i64() == Some(0) && succeeded;
            if !done {
                initialized = false;
                if policy == "Never" && status["state"]["terminated"].is_object() {
                    init_failed = true;
                }
            }
            init_statuses.push(status);
        }
        let mut statuses = Vec::new();
        let mut all_ready = !apps.is_empty();
        let mut any_running = false;
        let mut all_terminated = !apps.is_empty();
        let mut all_succeeded = true;
        let mut all_started_once = true;
        for container in &apps {
            let (status, running, succeeded, ready) = self.container_status(pod, container, false);
            all_ready &= ready;
            any_running |= running;
            let terminated = status["state"]["terminated"].is_object();
            let will_restart = match policy {
                "Never" => false,
                "OnFailure" => !succeeded,
                _ => true,
            };
            if !terminated || will_restart {
                all_terminated = false;
            }
            all_succeeded &= succeeded;
            if status.get("containerID").is_none() {
                all_started_once = false;
            }
            statuses.push(status);
        }
        let phase = if init_failed {
            "Failed"
        } else if initialized && all_terminated {
            if all_succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if initialized && all_started_once && (any_running || policy != "Never") {
            "Running"
        } else {
            "Pending"
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        let sandbox_ready = sandbox::exists(&self.dir) && !terminal;
        let not_ready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let mut conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox_ready, None),
            self.condition(
                "Initialized",
                initialized || terminal,
                Some("ContainersNotInitialized"),
            ),
            self.condition("Ready", all_ready && !terminal, Some(not_ready_reason)),
            self.condition(
                "ContainersReady",
                all_ready && !terminal,
                Some(not_ready_reason),
            ),
        ];
        let scheduled = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled")
            .cloned()
            .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_time()}));
        conditions.push(scheduled);
        let host_ip = self.ctx.node_ip.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        let pod_ip = self.pod_ip_text(pod);
        let recorded_ip = pod["status"]["podIP"].as_str().unwrap_or("");
        if !pod_ip.is_empty() {
            status["podIP"] = json!(pod_ip);
            status["podIPs"] = json!([{"ip": pod_ip}]);
        } else if !recorded_ip.is_empty() {
            status["podIP"] = json!(recorded_ip);
            status["podIPs"] = pod["status"]["podIPs"].clone();
        }
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let (namespace, name) = pod_key(pod);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        match self
            .ctx
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(error) if error.code() == Some(404) => {}
            Err(error) => {
                tracing::warn!(pod = format!("{namespace}/{name}"), %error, "status report failed");
                self.wake.notify_one();
            }
        }
    }

    async fn event(&self, pod: &Value, kind: &str, reason: &str, message: &str) {
        let (namespace, name) = pod_key(pod);
        let now = now_time();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": self.uid},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.ctx.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.ctx.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let path = format!("/api/v1/namespaces/{namespace}/events");
        if let Err(error) = self.ctx.client.create(&path, &event).await {
            tracing::debug!(%error, "event not recorded");
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Waits until the process `pid` has exited (through a pidfd, so it works for processes that
/// are not our children, such as monitors adopted after an agent restart).
pub async fn wait_for_exit(pid: i32) {
    let Some(owned) = crate::runtime::monitor::pidfd_open(pid) else {
        return;
    };
    // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(_) => {
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The user and group an image's `USER` names: numeric, or looked up in the image's
/// /etc/passwd and /etc/group (top layer first). Root when unset or unknown.
pub fn resolve_user(user: &str, layers: &[PathBuf]) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (user, group) = user
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((user, None));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        layers.iter().rev().find_map(|layer| {
            let text = std::fs::read_to_string(layer.join(file)).ok()?;
            text.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.first() == Some(&name)).then(|| {
                    let id = fields.get(2).and_then(|f| f.parse().ok()).unwrap_or(0);
                    let gid = fields.get(3).and_then(|f| f.parse().ok()).unwrap_or(id);
                    (id, gid)
                })
            })
        })
    };
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup_gid_for_uid(uid, layers).unwrap_or(uid)),
        Err(_) => lookup("etc/passwd", user).unwrap_or((0, 0)),
    };
    if let Some(group) = group {
        gid = group
            .parse()
            .ok()
            .or_else(|| lookup("etc/group", group).map(|(id, _)| id))
            .unwrap_or(gid);
    }
    (uid, gid)
}

fn lookup_gid_for_uid(uid: u32, layers: &[PathBuf]) -> Option<u32> {
    layers.iter().rev().find_map(|layer| {
        let text = std::fs::read_to_string(layer.join("etc/passwd")).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| fields.get(3)?.parse().ok())?
        })
    })
}

/// Runs a container's preStop hook (`exec`, `httpGet` or `sleep`), within `grace`.
async fn pre_stop(
    hook: &Value,
    pod_ip: &str,
    attempt: &Attempt,
    ctx: &NodeContext,
    grace: Duration,
) -> Result<(), String> {
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(seconds).min(grace)).await;
        return Ok(());
    }
    // A hook is a probe handler with the grace period as its timeout.
    let mut handler = hook.clone();
    handler["timeoutSeconds"] = json!(grace.as_secs().max(1));
    probe(&handler, pod_ip, attempt, ctx).await
}

/// Runs one probe against a running container.
async fn probe(
    spec: &Value,
    pod_ip: &str,
    attempt: &Attempt,
    ctx: &NodeContext,
) -> Result<(), String> {
    let timeout = Duration::from_secs(spec["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let port_of = |action: &Value| -> Result<u16, String> {
        match &action["port"] {
            Value::Number(n) => n.as_u64().map(|p| p as u16).ok_or("bad port".into()),
            Value::String(s) => s
                .parse()
                .map_err(|_| format!("named port {s:?} is not supported in probes")),
            _ => Err("probe without a port".into()),
        }
    };
    if let Some(action) = spec.get("httpGet") {
        let port = port_of(action)?;
        let host = action["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(pod_ip)
            .to_owned();
        let path = action["path"].as_str().unwrap_or("/").to_owned();
        let request = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let mut headers = String::new();
            for header in action["httpHeaders"].as_array().into_iter().flatten() {
                headers.push_str(&format!(
                    "{}: {}\r\n",
                    header["name"].as_str().unwrap_or(""),
                    header["value"].as_str().unwrap_or("")
                ));
            }
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n{headers}\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]).into_owned();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or("no HTTP answer")?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return tokio::time::timeout(timeout, request)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Get \"http://{host}:{port}{path}\": context deadline exceeded"
                ))
            });
    }
    if let Some(action) = spec.get("tcpSocket") {
        let port = port_of(action)?;
        let host = action["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(pod_ip)
            .to_owned();
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(action) = spec.get("exec") {
        let command: Vec<String> = action["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        let output =
            crate::runtime::exec::run_captured(&ctx.runner, attempt, &command, timeout).await?;
        return if output.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command {command:?} exited with {}: {}",
                output.exit_code,
                String::from_utf8_lossy(&output.output).trim()
            ))
        };
    }
    Err("probe has no handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_back_off_doubles_and_resets() {
        let base = Duration::from_secs(10);
        assert_eq!(restart_delay(base, 0, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            restart_delay(base, 1, Duration::ZERO),
            Duration::from_secs(10)
        );
        assert_eq!(
            restart_delay(base, 2, Duration::ZERO),
            Duration::from_secs(20)
        );
        assert_eq!(
            restart_delay(base, 3, Duration::ZERO),
            Duration::from_secs(40)
        );
        assert_eq!(restart_delay(base, 9, Duration::ZERO), MAX_BACKOFF);
        assert_eq!(restart_delay(base, 9, Duration::from_secs(900)), base);
    }

    #[test]
    fn pod_ips_skip_the_bridge_and_broadcast() {
        let mut ips = IpAllocator::new(Cidr::parse("10.42.1.0/30").unwrap());
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 2)));
        assert_eq!(ips.allocate(), None);
        ips.release(Ipv4Addr::new(10, 42, 1, 2));
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 2)));
    }

    #[test]
    fn a_released_pod_ip_is_not_handed_out_again_at_once() {
        let mut ips = IpAllocator::new(Cidr::parse("10.42.1.0/29").unwrap());
        let first = ips.allocate().unwrap();
        let second = ips.allocate().unwrap();
        ips.release(first);
        let third = ips.allocate().unwrap();
        assert_eq!(
            [first, second, third].map(|ip| ip.octets()[3]),
            [2, 3, 4],
            "round-robin, not the lowest free"
        );
        ips.claim(Ipv4Addr::new(10, 42, 1, 5));
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 6)));
        assert_eq!(
            ips.allocate(),
            Some(Ipv4Addr::new(10, 42, 1, 2)),
            "wraps around"
        );
    }

    #[test]
    fn users_resolve_from_the_image() {
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(layer.path().join("etc")).unwrap();
        std::fs::write(
            layer.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nweb:x:101:102::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(layer.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![layer.path().to_path_buf()];
        assert_eq!(resolve_user("", &layers), (0, 0));
        assert_eq!(resolve_user("web", &layers), (101, 102));
        assert_eq!(resolve_user("101", &layers), (101, 102));
        assert_eq!(resolve_user("web:staff", &layers), (101, 50));
        assert_eq!(resolve_user("1000:1000", &layers), (1000, 1000));
    }
}
