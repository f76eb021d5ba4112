//! Startup, liveness and readiness probes, and the handlers they share with preStop hooks.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use crate::runtime::containers::Attempt;
use crate::runtime::monitor::Started;

use super::worker::{spec, PodWorker, DEFAULT_GRACE_SECONDS};
use super::NodeContext;

/// Where a running container's probes stand.
#[derive(Debug, Default)]
pub(super) struct ProbeState {
    pub(super) attempt: u32,
    pub(super) started: bool,
    pub(super) ready: bool,
    startup_failures: u32,
    liveness_failures: u32,
    readiness_failures: u32,
    readiness_successes: u32,
    next_startup: Option<Instant>,
    next_liveness: Option<Instant>,
    next_readiness: Option<Instant>,
}

fn period(probe: &Probe) -> Duration {
    Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64)
}

fn failure_threshold(probe: &Probe) -> u32 {
    probe.failure_threshold.unwrap_or(3).max(1) as u32
}

fn success_threshold(probe: &Probe) -> u32 {
    probe.success_threshold.unwrap_or(1).max(1) as u32
}

impl PodWorker {
    /// Runs the container's due probes; returns when the next one is due.
    pub(super) async fn run_probes(
        &mut self,
        pod: &Pod,
        container: &Container,
        attempt: &Attempt,
        started: &Started,
    ) -> Option<Duration> {
        let name = &container.name;
        let now = Instant::now();
        // Initial delays count from the container's start.
        let ran = started
            .started_at
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|at| Duration::try_from(self.ctx.clock.now().duration_since(at)).ok())
            .unwrap_or_default();
        let startup = container.startup_probe.as_ref();
        let liveness = container.liveness_probe.as_ref();
        let readiness = container.readiness_probe.as_ref();
        let state = self.probes.entry(name.clone()).or_default();
        if state.attempt != attempt.number
            || (state.next_startup.is_none()
                && state.next_liveness.is_none()
                && state.next_readiness.is_none()
                && !state.started)
        {
            let initial = |probe: &Probe| {
                let delay =
                    Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
                now + delay.saturating_sub(ran)
            };
            *state = ProbeState {
                attempt: attempt.number,
                started: startup.is_none(),
                ready: readiness.is_none(),
                next_startup: startup.map(initial),
                next_liveness: liveness.map(initial),
                next_readiness: readiness.map(initial),
                ..Default::default()
            };
        }
        let pod_ip = self.pod_ip_text(pod);
        let mut kill: Option<(String, Option<i64>)> = None;
        let due = Due {
            name,
            container,
            pod_ip: &pod_ip,
            attempt,
            now,
        };
        if !self.probes[name].started {
            if let Some((probe, result)) = self.run_if_due(startup, next_startup, &due).await {
                let state = self.probes.get_mut(name).expect("present");
                match result {
                    Ok(()) => {
                        state.started = true;
                        state.next_startup = None;
                    }
                    Err(message) => {
                        state.startup_failures += 1;
                        if state.startup_failures >= failure_threshold(probe) {
                            kill = Some((
                                format!("Startup probe failed: {message}"),
                                probe.termination_grace_period_seconds,
                            ));
                        }
                    }
                }
            }
        } else {
            if let Some((probe, result)) = self.run_if_due(liveness, next_liveness, &due).await {
                let state = self.probes.get_mut(name).expect("present");
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
                        if failures >= failure_threshold(probe) {
                            kill = Some((
                                format!(
                                    "Container {name} failed liveness probe, will be restarted"
                                ),
                                probe.termination_grace_period_seconds,
                            ));
                        }
                    }
                }
            }
            if let Some((probe, result)) = self.run_if_due(readiness, next_readiness, &due).await {
                let state = self.probes.get_mut(name).expect("present");
                match result {
                    Ok(()) => {
                        state.readiness_failures = 0;
                        state.readiness_successes += 1;
                        if state.readiness_successes >= success_threshold(probe) {
                            state.ready = true;
                        }
                    }
                    Err(message) => {
                        state.readiness_successes = 0;
                        state.readiness_failures += 1;
                        if state.readiness_failures >= failure_threshold(probe) || !state.ready {
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
        if let Some((reason, probe_grace)) = kill {
            self.event(pod, "Normal", "Killing", &reason).await;
            let grace = probe_grace
                .or(spec(pod).termination_grace_period_seconds)
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            self.stop_container(attempt, Duration::from_secs(grace.max(0) as u64))
                .await;
            self.probes.remove(name);
            self.wake.notify_one();
            return Some(Duration::from_millis(50));
        }
        let state = &self.probes[name];
        // Until the startup probe passes, only it runs: the others' due times wait (counting
        // them made the worker spin while a container was starting).
        let due = match state.started {
            false => [state.next_startup, None, None],
            true => [None, state.next_liveness, state.next_readiness],
        };
        due.into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .min()
    }
}

/// Where a probe connects: its `host`, or the pod's IP when it names none.
fn probe_host(host: Option<&str>, pod_ip: &str) -> String {
    host.filter(|h| !h.is_empty()).unwrap_or(pod_ip).to_owned()
}

/// One container's probe round: which container, where, and the round's instant.
struct Due<'a> {
    name: &'a str,
    container: &'a Container,
    pod_ip: &'a str,
    attempt: &'a Attempt,
    now: Instant,
}

fn next_startup(state: &mut ProbeState) -> &mut Option<Instant> {
    &mut state.next_startup
}

fn next_liveness(state: &mut ProbeState) -> &mut Option<Instant> {
    &mut state.next_liveness
}

fn next_readiness(state: &mut ProbeState) -> &mut Option<Instant> {
    &mut state.next_readiness
}

impl PodWorker {
    /// Runs `probe` when its next run (`next` of the container's probe state) is due, and
    /// schedules the one after: the probe and its result, or `None` when it was not due.
    async fn run_if_due<'p>(
        &mut self,
        probe: Option<&'p Probe>,
        next: fn(&mut ProbeState) -> &mut Option<Instant>,
        due: &Due<'_>,
    ) -> Option<(&'p Probe, Result<(), String>)> {
        let probe = probe?;
        let state = self.probes.get_mut(due.name)?;
        if !next(state).is_some_and(|t| t <= due.now) {
            return None;
        }
        let result = run_handler(
            &handler(probe),
            due.container,
            due.pod_ip,
            due.attempt,
            &self.ctx,
        )
        .await;
        *next(self.probes.get_mut(due.name).expect("present")) = Some(due.now + period(probe));
        Some((probe, result))
    }
}

/// What a probe or a lifecycle hook does, and how long it may take.
pub(super) struct Handler<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
    timeout: Duration,
}

fn handler(probe: &Probe) -> Handler<'_> {
    Handler {
        exec: probe.exec.as_ref(),
        http_get: probe.http_get.as_ref(),
        tcp_socket: probe.tcp_socket.as_ref(),
        timeout: Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64),
    }
}

/// Runs a container's preStop hook (`exec`, `httpGet` or `sleep`), within `grace`.
pub(super) async fn pre_stop(
    hook: &LifecycleHandler,
    container: &Container,
    pod_ip: &str,
    attempt: &Attempt,
    ctx: &NodeContext,
    grace: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(grace)).await;
        return Ok(());
    }
    // A hook is a probe handler with the grace period as its timeout.
    let handler = Handler {
        exec: hook.exec.as_ref(),
        http_get: hook.http_get.as_ref(),
        tcp_socket: hook.tcp_socket.as_ref(),
        timeout: grace.max(Duration::from_secs(1)),
    };
    run_handler(&handler, container, pod_ip, attempt, ctx).await
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// Runs one probe or hook handler against a running container.
async fn run_handler(
    handler: &Handler<'_>,
    container: &Container,
    pod_ip: &str,
    attempt: &Attempt,
    ctx: &NodeContext,
) -> Result<(), String> {
    let timeout = handler.timeout;
    if let Some(action) = handler.http_get {
        let port = port_of(&action.port, container)?;
        let host = probe_host(action.host.as_deref(), pod_ip);
        let path = action.path.as_deref().unwrap_or("/").to_owned();
        let request = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let mut headers = String::new();
            for header in action.http_headers.iter().flatten() {
                headers.push_str(&format!("{}: {}\r\n", header.name, header.value));
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
    if let Some(action) = handler.tcp_socket {
        let port = port_of(&action.port, container)?;
        let host = probe_host(action.host.as_deref(), pod_ip);
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
    if let Some(action) = handler.exec {
        let command = action.command.clone().unwrap_or_default();
        let output = ctx.runtime.exec(attempt, &command, timeout).await?;
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
