//! The pod worker: level-driven like a controller, each pass looks at the pod object and at
//! the pod's directory and moves the containers one step toward the spec, then reports the
//! status it sees.
//!
//! ```text
//!            ┌──────────── deletionTimestamp set (any time) ───────────────┐
//!            │                                                             ▼
//!  (bound) ─► sandbox: namespaces, veth, IP ─► init containers in order ─► containers ─► terminating:
//!                 │                              │ exit≠0: back-off/restart   │ exit: restart    preStop, SIGTERM,
//!                 │                              │ (Never: pod Failed)        │ per policy       grace, SIGKILL,
//!                 │                              ▼                            ▼                  free IP, delete
//!                 └──────── every container finished and none restarts: Succeeded / Failed
//! ```
//!
//! The pod directory (`pods/<uid>/`) is the worker's memory: attempts, their exit files, the
//! pod IP and volumes are all on disk, so a restarted agent adopts running pods unchanged.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::pod_config::{prepare_volumes, ObjectSource};
use crate::projected::ServiceAccountTokens;
use crate::runtime::containers::{Attempt, AttemptState};
use crate::volumes::{unmount_pod_volumes, PreparedVolume};

use super::error::{SandboxError, StartError};
use super::probes::ProbeState;
use super::NodeContext;
use protocol::error::error_chain;

/// How often a pod is looked at without news.
pub(super) const RESYNC: Duration = Duration::from_secs(10);
/// How long a pod's containers get to stop when neither the pod nor the delete says.
pub(super) const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The first and the longest wait before volumes that failed are tried again (a change to
/// a PersistentVolume on the node wakes the worker sooner).
const VOLUME_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(32));

/// `restartPolicy`: which exits a container is restarted after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub(super) fn of(pod: &Pod) -> RestartPolicy {
        match spec(pod).restart_policy.as_deref() {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` starts again.
    pub(super) fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Why a container waits, when it is not simply being created.
#[derive(Debug)]
pub(super) enum Waiting {
    /// The sandbox or the volumes are not ready (`ContainerCreating`, with why).
    Creating { message: String },
    /// It exited and waits out its restart back-off.
    CrashLoopBackOff { message: String },
    /// It could not be started.
    StartFailed(StartError),
}

impl Waiting {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Waiting::Creating { .. } => "ContainerCreating",
            Waiting::CrashLoopBackOff { .. } => "CrashLoopBackOff",
            Waiting::StartFailed(error) => error.reason(),
        }
    }

    pub(super) fn message(&self) -> String {
        match self {
            Waiting::Creating { message } | Waiting::CrashLoopBackOff { message } => {
                message.clone()
            }
            Waiting::StartFailed(error) => error_chain(error),
        }
    }
}

pub(super) fn spec(pod: &Pod) -> &PodSpec {
    static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
    pod.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
}

pub(super) fn init_containers(pod: &Pod) -> &[Container] {
    spec(pod).init_containers.as_deref().unwrap_or_default()
}

pub(super) fn app_containers(pod: &Pod) -> &[Container] {
    &spec(pod).containers
}

pub(super) fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

pub(super) fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

pub(super) fn host_network(pod: &Pod) -> bool {
    spec(pod).host_network == Some(true)
}

/// Whether the pod runs in its own user namespace (`hostUsers: false`); a pod on the node's
/// network shares the node's users, as upstream's validation requires.
fn own_user_namespace(pod: &Pod) -> bool {
    spec(pod).host_users == Some(false) && !host_network(pod)
}

/// The pod as JSON, for the parts that still read it that way (resolv.conf, the table of
/// honoured fields).
pub(super) fn raw(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap_or_default()
}

pub(super) struct PodWorker {
    pub(super) ctx: Arc<NodeContext>,
    pub(super) uid: String,
    pub(super) dir: PathBuf,
    pub(super) pod_ip: Option<Ipv4Addr>,
    pub(super) probes: HashMap<String, ProbeState>,
    pub(super) waiting: HashMap<String, Waiting>,
    /// Image pulls that failed: when to try again, and the current back-off.
    pub(super) pull_backoff: HashMap<String, (tokio::time::Instant, Duration)>,
    pub(super) image_ids: HashMap<String, String>,
    pub(super) watched: HashSet<PathBuf>,
    pub(super) wake: Arc<Notify>,
    pub(super) last_status: Option<Value>,
    pub(super) transitions: HashMap<String, (bool, String)>,
    pub(super) start_time: Option<String>,
    pub(super) torn_down: bool,
    pub(super) warned_fields: bool,
    /// Volumes set up once for the pod's life (claims, NFS, emptyDir, hostPath).
    pub(super) volumes: HashMap<String, PreparedVolume>,
    /// While volumes fail: the current wait before the next try.
    pub(super) volume_retry: Option<Duration>,
    /// The service-account tokens of the pod's projected volumes, refreshed when due.
    pub(super) tokens: ServiceAccountTokens,
    /// The user and groups each container was last started with (`status.user`).
    pub(super) users: HashMap<String, super::security::Identity>,
    /// Why the node refused the pod at admission (reason, message): it never starts.
    pub(super) rejected: Option<(&'static str, String)>,
}

impl PodWorker {
    pub(super) fn new(ctx: Arc<NodeContext>, uid: String) -> PodWorker {
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
            watched: HashSet::new(),
            wake: Arc::new(Notify::new()),
            last_status: None,
            transitions: HashMap::new(),
            start_time: None,
            torn_down: false,
            warned_fields: false,
            volumes: HashMap::new(),
            volume_retry: None,
            tokens: ServiceAccountTokens::default(),
            users: HashMap::new(),
            rejected: None,
        }
    }

    pub(super) async fn run(&mut self, mut object: watch::Receiver<Option<Value>>) {
        let mut volume_changes = self.ctx.volume_changes.subscribe();
        loop {
            let raw = object.borrow_and_update().clone();
            let Some(raw) = raw else {
                // Gone from the API (or never there: left over from before a restart).
                self.stop_all(None, Duration::ZERO).await;
                self.teardown().await;
                if unmount_pod_volumes(&self.dir) {
                    let _ = std::fs::remove_dir_all(&self.dir);
                } else {
                    // Removing it would reach into a share that is still mounted.
                    tracing::error!(
                        uid = self.uid,
                        "a volume of the pod stays mounted; its directory is kept"
                    );
                }
                self.ctx.runtime.remove_pod(&self.uid);
                return;
            };
            let next = match serde_json::from_value::<Pod>(raw) {
                Ok(pod) => self.pass(&pod).await,
                Err(error) => {
                    tracing::warn!(uid = self.uid, %error, "pod object unreadable");
                    RESYNC
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
                Ok(()) = volume_changes.changed(), if self.volume_retry.is_some() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// One look at the pod; returns when the next is due without news.
    pub(super) async fn pass(&mut self, pod: &Pod) -> Duration {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if deleting {
            self.terminate(pod).await;
            return RESYNC;
        }
        if self.ctx.paused.load(Ordering::SeqCst) {
            return RESYNC;
        }
        if !self.warned_fields {
            self.warned_fields = true;
            let ignored = super::fields::ignored(&raw(pod)["spec"]);
            if !ignored.is_empty() {
                let message = format!("bramble ignores {}", ignored.join(", "));
                tracing::warn!(pod = format!("{}/{}", namespace(pod), name(pod)), message);
                self.event(pod, "Warning", "IgnoredFields", &message).await;
            }
        }
        self.sync(pod).await
    }

    // ---- sandbox -------------------------------------------------------------------------

    async fn ensure_sandbox(&mut self, pod: &Pod) -> Result<(), SandboxError> {
        let host_network = host_network(pod);
        if self.ctx.runtime.sandbox_exists(&self.dir) && (host_network || self.pod_ip.is_some()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(SandboxError::Directory)?;
        let hostname = if host_network {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| self.ctx.node_name.clone())
        } else {
            pod_hostname(pod).chars().take(63).collect()
        };
        let namespaces = self
            .ctx
            .runtime
            .create_sandbox(&self.dir, &hostname, host_network, own_user_namespace(pod))
            .map_err(SandboxError::Namespaces)?;
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
                    .ok_or(SandboxError::NoFreeIp)?;
                std::fs::write(self.dir.join("ip"), ip.to_string())
                    .map_err(SandboxError::Directory)?;
                self.pod_ip = Some(ip);
                ip
            }
        };
        self.ctx
            .network
            .attach(&self.uid, &namespaces.network, ip)
            .await
            .map_err(SandboxError::Network)?;
        let host_ports = crate::host_ports::of_pod(pod);
        if host_ports.is_empty() {
            return Ok(());
        }
        self.ctx
            .network
            .publish_host_ports(&self.uid, ip, &host_ports)
            .map_err(SandboxError::Network)
    }

    pub(super) async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        let _ = self.ctx.network.detach(&self.uid).await;
        self.ctx.runtime.remove_sandbox(&self.dir);
        // The containers are gone: shares mounted for them go too, as kubelet unmounts the
        // volumes of a finished pod.
        unmount_pod_volumes(&self.dir);
        self.volumes.clear();
        if let Some(ip) = self.pod_ip.take() {
            self.ctx.ips.lock().expect("ip lock").release(ip);
            let _ = std::fs::remove_file(self.dir.join("ip"));
        }
        self.torn_down = true;
    }

    /// Every container waits for the same reason (the sandbox or the volumes).
    fn all_waiting(&mut self, pod: &Pod, message: &str) {
        for container in init_containers(pod).iter().chain(app_containers(pod)) {
            self.waiting.insert(
                container.name.clone(),
                Waiting::Creating {
                    message: message.to_owned(),
                },
            );
        }
    }

    // ---- the main pass -------------------------------------------------------------------

    async fn sync(&mut self, pod: &Pod) -> Duration {
        if self.start_time.is_none() {
            let recorded = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
            self.start_time = Some(super::effects::time_text(
                recorded.map_or_else(|| self.ctx.clock.now(), |t| t.0),
            ));
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished =
            matches!(phase, Some("Succeeded") | Some("Failed")) && self.last_status.is_some();
        if finished {
            self.teardown().await;
            self.report(pod).await;
            return RESYNC * 6;
        }
        // kubelet's admission, before anything is made for the pod.
        if self.rejected.is_none() && self.ctx.runtime.attempts(&self.dir).is_empty() {
            let refusal = super::security::admission_refusal(pod, &self.ctx.security);
            if let Some((reason, message)) = refusal {
                self.event(pod, "Warning", reason, &message).await;
                self.rejected = Some((reason, message));
            }
        }
        if self.rejected.is_some() {
            self.report(pod).await;
            return RESYNC * 6;
        }
        let mut next = RESYNC;
        if let Err(error) = self.ensure_sandbox(pod).await {
            let message = error_chain(&error);
            self.all_waiting(pod, &message);
            self.event(pod, "Warning", "FailedCreatePodSandBox", &message)
                .await;
            self.report(pod).await;
            return Duration::from_secs(5);
        }
        self.torn_down = false;
        let ctx = self.ctx.clone();
        let mut objects = ObjectSource::new(&*ctx.api, namespace(pod));
        let started = !self.ctx.runtime.attempts(&self.dir).is_empty();
        let now = self.ctx.clock.now();
        let prepared = prepare_volumes(
            pod,
            &self.dir,
            started,
            &mut objects,
            &mut self.volumes,
            &mut self.tokens,
            now,
        )
        .await;
        let volumes = match prepared {
            Ok(volumes) => {
                self.volume_retry = None;
                volumes
            }
            Err(error) => {
                // Not a tight loop: the wait doubles, and a PV change wakes the worker.
                let wait = self
                    .volume_retry
                    .map_or(VOLUME_RETRY.0, |w| (w * 2).min(VOLUME_RETRY.1));
                self.volume_retry = Some(wait);
                self.all_waiting(pod, &error.0);
                self.event(pod, "Warning", "FailedMount", &error.0).await;
                self.report(pod).await;
                return wait;
            }
        };
        // Wake when a projected token is due, even if that is before the next resync.
        if let Some(due) = self.tokens.next_refresh() {
            let wait = Duration::try_from(due.duration_since(now)).unwrap_or_default();
            next = next.min(wait.max(Duration::from_secs(1)));
        }
        let policy = RestartPolicy::of(pod);

        // Init containers, one at a time, each to a zero exit.
        let mut initialized = true;
        for container in init_containers(pod) {
            let latest = self.latest_attempt(&container.name);
            let state = latest.as_ref().map(|a| self.ctx.runtime.state(a));
            match (latest, state) {
                (Some(_), Some(AttemptState::Exited(exited))) if exited.exit_code == 0 => continue,
                (Some(attempt), Some(AttemptState::Exited(exited))) => {
                    initialized = false;
                    if policy == RestartPolicy::Never {
                        break;
                    }
                    if let Some(wait) = self.backoff_left(&container.name, &attempt, &exited) {
                        next = next.min(wait);
                        break;
                    }
                    let number = attempt.number + 1;
                    let wait = self
                        .start(pod, container, number, &volumes, &mut objects)
                        .await;
                    next = next.min(wait);
                    break;
                }
                (Some(attempt), _) => {
                    self.watch_exit(&attempt);
                    initialized = false;
                    break;
                }
                (None, _) => {
                    initialized = false;
                    let wait = self.start(pod, container, 0, &volumes, &mut objects).await;
                    next = next.min(wait);
                    break;
                }
            }
        }

        if initialized {
            for container in app_containers(pod) {
                let name = &container.name;
                let latest = self.latest_attempt(name);
                let state = latest.as_ref().map(|a| self.ctx.runtime.state(a));
                match (latest, state) {
                    (Some(attempt), Some(AttemptState::Running(started))) => {
                        self.watch_exit(&attempt);
                        let probes = self.run_probes(pod, container, &attempt, &started);
                        if let Some(wait) = probes.await {
                            next = next.min(wait);
                        }
                    }
                    (Some(attempt), Some(AttemptState::Creating)) => {
                        self.watch_exit(&attempt);
                        next = next.min(Duration::from_millis(500));
                    }
                    (Some(attempt), Some(AttemptState::Exited(exited))) => {
                        self.probes.remove(name);
                        if !policy.restarts(exited.exit_code) {
                            continue;
                        }
                        if let Some(wait) = self.backoff_left(name, &attempt, &exited) {
                            next = next.min(wait);
                            continue;
                        }
                        self.waiting.remove(name);
                        let number = attempt.number + 1;
                        let wait = self
                            .start(pod, container, number, &volumes, &mut objects)
                            .await;
                        next = next.min(wait);
                    }
                    _ => {
                        let wait = self.start(pod, container, 0, &volumes, &mut objects).await;
                        next = next.min(wait);
                    }
                }
            }
        }
        self.prune_attempts();
        self.report(pod).await;
        next
    }

    pub(super) fn attempts_of(&self, name: &str) -> Vec<Attempt> {
        self.ctx
            .runtime
            .attempts(&self.dir)
            .into_iter()
            .filter(|a| a.name == name)
            .collect()
    }

    pub(super) fn latest_attempt(&self, name: &str) -> Option<Attempt> {
        self.attempts_of(name).into_iter().max_by_key(|a| a.number)
    }

    /// Keeps the current and the previous attempt of each container (for `logs --previous`).
    fn prune_attempts(&self) {
        let attempts = self.ctx.runtime.attempts(&self.dir);
        let mut latest: HashMap<&str, u32> = HashMap::new();
        for attempt in &attempts {
            let entry = latest.entry(attempt.name.as_str()).or_insert(0);
            *entry = (*entry).max(attempt.number);
        }
        for attempt in &attempts {
            if attempt.number + 1 < latest[attempt.name.as_str()] {
                self.ctx.runtime.remove(attempt);
            }
        }
    }

    /// Wakes the worker when the attempt's process ends.
    pub(super) fn watch_exit(&mut self, attempt: &Attempt) {
        if !self.watched.insert(attempt.dir.clone()) {
            return;
        }
        let stopped = self.ctx.runtime.stopped(attempt);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            stopped.await;
            wake.notify_one();
        });
    }

    pub(super) fn pod_ip_text(&self, pod: &Pod) -> String {
        if host_network(pod) {
            return self.ctx.node_ip.to_string();
        }
        self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

/// The pod's host name: `spec.hostname`, else its name.
pub(super) fn pod_hostname(pod: &Pod) -> &str {
    spec(pod)
        .hostname
        .as_deref()
        .or(pod.metadata.name.as_deref())
        .unwrap_or("pod")
}
