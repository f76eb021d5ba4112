//! Fakes of the worker's effects for unit tests: a scripted container runtime that records
//! what it was told and when, an API server that keeps status patches and events, images,
//! network, services and a clock that follows tokio's paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::host_ports::HostPort;
use crate::image::{Credentials, Image, ImageError, PullPolicy, RunConfig};
use crate::network::{Cidr, NetworkError};
use crate::runtime::containers::{Attempt, AttemptState};
use crate::runtime::exec::ExecOutput;
use crate::runtime::monitor::{Exited, Started};
use crate::runtime::spec::{ContainerPlan, PodNamespaces};

use super::effects::{
    ApiError, Clock, ContainerRuntime, Effect, PodApi, PodImages, PodNetworking, PodServices,
    RuntimeError,
};
use super::{IpAllocator, NodeContext};

/// Wall time that moves with tokio's (paused) clock.
pub struct TestClock {
    wall: jiff::Timestamp,
    base: Instant,
}

impl TestClock {
    pub fn new() -> TestClock {
        TestClock {
            wall: "2026-01-01T00:00:00Z".parse().unwrap(),
            base: Instant::now(),
        }
    }

    /// Time since the test began.
    pub fn elapsed(&self) -> Duration {
        self.base.elapsed()
    }
}

impl Clock for TestClock {
    fn now(&self) -> jiff::Timestamp {
        self.wall + self.base.elapsed()
    }
}

/// How a fake container behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// It exits on its own after this long; `None`: it runs until signalled.
    pub runs_for: Option<Duration>,
    /// Its exit code when it exits on its own.
    pub exit_code: i32,
    /// SIGTERM does not stop it (a PID 1 without a handler).
    pub ignores_sigterm: bool,
}

struct FakeAttempt {
    attempt: Attempt,
    state: AttemptState,
    ended: watch::Sender<bool>,
}

#[derive(Default)]
struct RuntimeState {
    attempts: BTreeMap<PathBuf, FakeAttempt>,
    sandboxes: HashSet<PathBuf>,
    behaviour: HashMap<String, Behaviour>,
    /// (container, command) → whether the command succeeds; absent: it does.
    commands: HashMap<(String, String), bool>,
    log: Vec<(u64, String)>,
    /// The plan of each container's latest start.
    plans: HashMap<String, ContainerPlan>,
}

/// A container runtime that runs nothing and remembers everything.
pub struct FakeRuntime {
    clock: Arc<TestClock>,
    state: Arc<Mutex<RuntimeState>>,
}

impl FakeRuntime {
    pub fn new(clock: Arc<TestClock>) -> FakeRuntime {
        FakeRuntime {
            clock,
            state: Arc::default(),
        }
    }

    /// Sets how the container `name` behaves from its next start on.
    pub fn behave(&self, name: &str, behaviour: Behaviour) {
        let mut state = self.state.lock().unwrap();
        state.behaviour.insert(name.to_owned(), behaviour);
    }

    /// Makes `command` (its first word) in container `name` succeed or fail.
    pub fn command(&self, name: &str, command: &str, ok: bool) {
        let mut state = self.state.lock().unwrap();
        state
            .commands
            .insert((name.to_owned(), command.to_owned()), ok);
    }

    /// The plan the container `name` was last started with.
    pub fn plan(&self, name: &str) -> Option<ContainerPlan> {
        self.state.lock().unwrap().plans.get(name).cloned()
    }

    /// What happened, as "second: what" lines.
    pub fn log(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .map(|(t, what)| format!("{t}: {what}"))
            .collect()
    }

    /// The log lines containing `needle`.
    pub fn log_of(&self, needle: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    fn note(state: &mut RuntimeState, clock: &TestClock, what: String) {
        state.log.push((clock.elapsed().as_secs(), what));
    }

    fn end(
        state: &mut RuntimeState,
        clock: &TestClock,
        dir: &Path,
        exit_code: i32,
        signal: Option<i32>,
    ) {
        let Some(fake) = state.attempts.get_mut(dir) else {
            return;
        };
        let AttemptState::Running(started) = &fake.state else {
            return;
        };
        fake.state = AttemptState::Exited(Exited {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: started.started_at.clone(),
            finished_at: clock.now().to_string(),
        });
        let _ = fake.ended.send(true);
        let label = format!("{}.{}", fake.attempt.name, fake.attempt.number);
        Self::note(state, clock, format!("exit {label} {exit_code}"));
    }
}

impl ContainerRuntime for FakeRuntime {
    fn attempts(&self, pod_dir: &Path) -> Vec<Attempt> {
        let state = self.state.lock().unwrap();
        let mut attempts: Vec<Attempt> = state
            .attempts
            .values()
            .map(|f| f.attempt.clone())
            .filter(|a| a.dir.starts_with(pod_dir))
            .collect();
        attempts.sort_by(|a, b| (&a.name, a.number).cmp(&(&b.name, b.number)));
        attempts
    }

    fn state(&self, attempt: &Attempt) -> AttemptState {
        let state = self.state.lock().unwrap();
        state
            .attempts
            .get(&attempt.dir)
            .map_or(AttemptState::Creating, |f| f.state.clone())
    }

    fn start<'a>(
        &'a self,
        attempt: &'a Attempt,
        _pod_uid: &'a str,
        _layers: &'a [PathBuf],
        plan: ContainerPlan,
    ) -> Effect<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            state.plans.insert(attempt.name.clone(), plan);
            let behaviour = state
                .behaviour
                .get(&attempt.name)
                .cloned()
                .unwrap_or_default();
            let (ended, _) = watch::channel(false);
            state.attempts.insert(
                attempt.dir.clone(),
                FakeAttempt {
                    attempt: attempt.clone(),
                    state: AttemptState::Running(Started {
                        pid: 1,
                        started_at: self.clock.now().to_string(),
                    }),
                    ended,
                },
            );
            let label = format!("{}.{}", attempt.name, attempt.number);
            Self::note(&mut state, &self.clock, format!("start {label}"));
            match behaviour.runs_for {
                Some(Duration::ZERO) => Self::end(
                    &mut state,
                    &self.clock,
                    &attempt.dir,
                    behaviour.exit_code,
                    None,
                ),
                Some(run) => {
                    let shared = self.state.clone();
                    let clock = self.clock.clone();
                    let dir = attempt.dir.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(run).await;
                        let mut state = shared.lock().unwrap();
                        Self::end(&mut state, &clock, &dir, behaviour.exit_code, None);
                    });
                }
                None => {}
            }
            Ok(())
        })
    }

    fn signal(&self, attempt: &Attempt, signal: Signal) {
        let mut state = self.state.lock().unwrap();
        let running = state
            .attempts
            .get(&attempt.dir)
            .is_some_and(|f| matches!(f.state, AttemptState::Running(_)));
        if !running {
            return;
        }
        let label = format!("{}.{}", attempt.name, attempt.number);
        Self::note(&mut state, &self.clock, format!("{signal:?} {label}"));
        let ignores = state
            .behaviour
            .get(&attempt.name)
            .is_some_and(|b| b.ignores_sigterm);
        match signal {
            Signal::SIGKILL => Self::end(&mut state, &self.clock, &attempt.dir, 137, Some(9)),
            Signal::SIGTERM if !ignores => {
                Self::end(&mut state, &self.clock, &attempt.dir, 143, Some(15))
            }
            _ => {}
        }
    }

    fn stopped(&self, attempt: &Attempt) -> Effect<'static, ()> {
        let state = self.state.lock().unwrap();
        let ended = state
            .attempts
            .get(&attempt.dir)
            .map(|f| f.ended.subscribe());
        Box::pin(async move {
            if let Some(mut ended) = ended {
                let _ = ended.wait_for(|e| *e).await;
            }
        })
    }

    fn exec<'a>(
        &'a self,
        attempt: &'a Attempt,
        command: &'a [String],
        _timeout: Duration,
    ) -> Effect<'a, Result<ExecOutput, String>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            let first = command.first().cloned().unwrap_or_default();
            let label = format!("{}.{}", attempt.name, attempt.number);
            Self::note(&mut state, &self.clock, format!("exec {label} {first}"));
            let ok = state
                .commands
                .get(&(attempt.name.clone(), first))
                .copied()
                .unwrap_or(true);
            Ok(ExecOutput {
                exit_code: if ok { 0 } else { 1 },
                output: if ok {
                    Vec::new()
                } else {
                    b"unhealthy".to_vec()
                },
            })
        })
    }

    fn remove(&self, attempt: &Attempt) {
        self.state.lock().unwrap().attempts.remove(&attempt.dir);
    }

    fn sandbox_exists(&self, pod_dir: &Path) -> bool {
        self.state.lock().unwrap().sandboxes.contains(pod_dir)
    }

    fn create_sandbox(
        &self,
        pod_dir: &Path,
        _hostname: &str,
        _host_network: bool,
        _own_users: bool,
    ) -> std::io::Result<PodNamespaces> {
        self.state
            .lock()
            .unwrap()
            .sandboxes
            .insert(pod_dir.to_owned());
        Ok(crate::runtime::sandbox::namespaces(pod_dir))
    }

    fn remove_sandbox(&self, pod_dir: &Path) {
        self.state.lock().unwrap().sandboxes.remove(pod_dir);
    }

    fn remove_pod(&self, _pod_uid: &str) {}
}

/// An API server that keeps what the worker wrote.
#[derive(Default)]
pub struct FakeApi {
    /// Status patches, in order.
    pub statuses: Mutex<Vec<Value>>,
    /// Events as (type, reason, message).
    pub events: Mutex<Vec<(String, String, String)>>,
    /// Pods deleted, by name.
    pub deleted: Mutex<Vec<String>>,
    /// Config maps and secrets by (kind, name).
    pub objects: Mutex<HashMap<(String, String), Value>>,
    /// TokenRequests as (namespace, account, request), in order.
    pub token_requests: Mutex<Vec<(String, String, Value)>>,
    /// The time tokens are issued at (their expiry counts from it).
    pub token_clock: Mutex<Option<jiff::Timestamp>>,
    /// Whether TokenRequests fail.
    pub tokens_fail: AtomicBool,
}

impl FakeApi {
    /// Issues the next tokens at `now`.
    pub fn set_token_clock(&self, now: jiff::Timestamp) {
        *self.token_clock.lock().unwrap() = Some(now);
    }

    /// Makes TokenRequests fail (or work again).
    pub fn fail_tokens(&self, fail: bool) {
        self.tokens_fail
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// The last status written.
    pub fn status(&self) -> k8s_openapi::api::core::v1::PodStatus {
        let statuses = self.statuses.lock().unwrap();
        super::status::as_status(statuses.last().expect("a status was written"))
    }

    /// The reasons of the events recorded.
    pub fn reasons(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events.iter().map(|(_, reason, _)| reason.clone()).collect()
    }
}

impl PodApi for FakeApi {
    fn patch_pod_status<'a>(
        &'a self,
        _namespace: &'a str,
        _name: &'a str,
        status: &'a Value,
    ) -> Effect<'a, Result<(), ApiError>> {
        self.statuses.lock().unwrap().push(status.clone());
        Box::pin(async { Ok(()) })
    }

    fn delete_pod<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        _uid: &'a str,
    ) -> Effect<'a, Result<(), ApiError>> {
        self.deleted.lock().unwrap().push(name.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn create_event<'a>(
        &'a self,
        _namespace: &'a str,
        event: &'a Value,
    ) -> Effect<'a, Result<(), ApiError>> {
        let text = |key: &str| event[key].as_str().unwrap_or("").to_owned();
        self.events
            .lock()
            .unwrap()
            .push((text("type"), text("reason"), text("message")));
        Box::pin(async { Ok(()) })
    }

    fn get_object<'a>(
        &'a self,
        _namespace: &'a str,
        kind: &'a str,
        name: &'a str,
    ) -> Effect<'a, Result<Option<Value>, ApiError>> {
        let found = self
            .objects
            .lock()
            .unwrap()
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(async { Ok(found) })
    }

    fn create_token<'a>(
        &'a self,
        namespace: &'a str,
        account: &'a str,
        request: &'a Value,
    ) -> Effect<'a, Result<Value, ApiError>> {
        let mut requests = self.token_requests.lock().unwrap();
        requests.push((namespace.to_owned(), account.to_owned(), request.clone()));
        if self.tokens_fail.load(std::sync::atomic::Ordering::SeqCst) {
            let refused: Box<dyn std::error::Error + Send + Sync> = "refused".into();
            return Box::pin(async move { Err(ApiError::Failed(refused)) });
        }
        let issued = self
            .token_clock
            .lock()
            .unwrap()
            .unwrap_or_else(jiff::Timestamp::now);
        let seconds = request["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(3600);
        let answer = serde_json::json!({
            "spec": request["spec"],
            "status": {
                "token": format!("token-{}", requests.len()),
                "expirationTimestamp": (issued + jiff::SignedDuration::from_secs(seconds)).to_string(),
            },
        });
        Box::pin(async move { Ok(answer) })
    }
}

/// Images that are all present, except those named missing.
#[derive(Default)]
pub struct FakeImages {
    pub missing: Mutex<HashSet<String>>,
    /// The `USER` of images, by reference (default: none, root).
    pub users: Mutex<HashMap<String, String>>,
}

impl PodImages for FakeImages {
    fn present(&self, reference: &str) -> bool {
        !self.missing.lock().unwrap().contains(reference)
    }

    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        _policy: PullPolicy,
        _credentials: &'a HashMap<String, Credentials>,
    ) -> Effect<'a, Result<Image, ImageError>> {
        let present = self.present(reference);
        let user = self
            .users
            .lock()
            .unwrap()
            .get(reference)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            if !present {
                return Err(ImageError::Malformed {
                    reference: reference.to_owned(),
                    problem: "manifest unknown".into(),
                });
            }
            Ok(Image {
                reference: reference.to_owned(),
                digest: "sha256:0123".into(),
                config: RunConfig {
                    cmd: vec!["sleep".into(), "infinity".into()],
                    user,
                    ..Default::default()
                },
                layers: Vec::new(),
                size: 0,
                last_used: 0,
            })
        })
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        PathBuf::from("/nonexistent").join(digest)
    }
}

/// A network that connects every pod.
pub struct FakeNetwork;

impl PodNetworking for FakeNetwork {
    fn attach<'a>(
        &'a self,
        _pod_uid: &'a str,
        _netns: &'a Path,
        _ip: Ipv4Addr,
    ) -> Effect<'a, Result<(), NetworkError>> {
        Box::pin(async { Ok(()) })
    }

    fn detach<'a>(&'a self, _pod_uid: &'a str) -> Effect<'a, Result<(), NetworkError>> {
        Box::pin(async { Ok(()) })
    }

    fn publish_host_ports(
        &self,
        _pod_uid: &str,
        _ip: Ipv4Addr,
        _ports: &[HostPort],
    ) -> Result<(), NetworkError> {
        Ok(())
    }
}

/// No services.
pub struct FakeServices;

impl PodServices for FakeServices {
    fn wait_synced(&self) -> Effect<'_, ()> {
        Box::pin(async {})
    }

    fn env(&self, _namespace: &str, _service_links: bool) -> Vec<(String, String)> {
        Vec::new()
    }

    fn resolv_conf(&self, _pod: &k8s_openapi::api::core::v1::Pod) -> String {
        "nameserver 10.42.0.1\n".into()
    }

    fn cluster_domain(&self) -> String {
        "cluster.local".into()
    }
}

/// A node of fakes with its own pod directory.
pub struct FakeNode {
    pub ctx: Arc<NodeContext>,
    pub runtime: Arc<FakeRuntime>,
    pub api: Arc<FakeApi>,
    pub images: Arc<FakeImages>,
    pub clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

impl FakeNode {
    pub fn new() -> FakeNode {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock::new());
        let runtime = Arc::new(FakeRuntime::new(clock.clone()));
        let api = Arc::new(FakeApi::default());
        let images = Arc::new(FakeImages::default());
        let ctx = Arc::new(NodeContext {
            api: api.clone(),
            node_name: "pi-1".into(),
            node_ip: Ipv4Addr::new(192, 168, 1, 11),
            pods_dir: dir.path().to_owned(),
            runtime: runtime.clone(),
            images: images.clone(),
            network: Arc::new(FakeNetwork),
            ips: Mutex::new(IpAllocator::new(Cidr::parse("10.42.1.0/24").unwrap())),
            crash_backoff: Duration::from_secs(10),
            services: Arc::new(FakeServices),
            clock: clock.clone(),
            paused: Arc::new(AtomicBool::new(false)),
            volume_changes: watch::channel(0).0,
            security: super::security::SecuritySettings {
                seccomp_dir: dir.path().join("seccomp"),
                sysctls: super::security::SysctlAllowlist::new(&[]).unwrap(),
                ..Default::default()
            },
        });
        FakeNode {
            ctx,
            runtime,
            api,
            images,
            clock,
            _dir: dir,
        }
    }
}
