//! Stopping containers: the preStop hook, SIGTERM, SIGKILL once the grace period is over; and
//! the end of a deleted pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::runtime::containers::{Attempt, AttemptState};

use super::effects::ApiError;
use super::probes::pre_stop;
use super::worker::{app_containers, name, namespace, spec, PodWorker, DEFAULT_GRACE_SECONDS};

/// How long to wait for a SIGKILLed container's runtime to notice before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl PodWorker {
    /// SIGTERM, then SIGKILL once `grace` has passed (a PID 1 without a handler never sees
    /// SIGTERM).
    pub(super) async fn stop_container(&self, attempt: &Attempt, grace: Duration) {
        let runtime = &self.ctx.runtime;
        runtime.signal(attempt, Signal::SIGTERM);
        if tokio::time::timeout(grace, runtime.stopped(attempt))
            .await
            .is_ok()
        {
            return;
        }
        runtime.signal(attempt, Signal::SIGKILL);
        // The runtime's record says what it last knew if the process does not go away.
        let _ = tokio::time::timeout(KILL_WAIT, runtime.stopped(attempt)).await;
    }

    /// Stops every container: its preStop hook first (when `pod` is given), then SIGTERM,
    /// then SIGKILL once `grace` (which the hook's time counts against) runs out.
    pub(super) async fn stop_all(&self, pod: Option<&Pod>, grace: Duration) {
        let mut stops = Vec::new();
        for attempt in self.ctx.runtime.attempts(&self.dir) {
            let state = self.ctx.runtime.state(&attempt);
            if !matches!(state, AttemptState::Running(_) | AttemptState::Creating) {
                continue;
            }
            let container =
                pod.and_then(|pod| app_containers(pod).iter().find(|c| c.name == attempt.name));
            let hook = container
                .and_then(|c| c.lifecycle.as_ref())
                .and_then(|l| l.pre_stop.as_ref());
            let pod_ip = pod.map(|pod| self.pod_ip_text(pod)).unwrap_or_default();
            let running = matches!(state, AttemptState::Running(_));
            stops.push(async move {
                let started = Instant::now();
                if let (Some(hook), Some(container), true) = (hook, container, running) {
                    let result =
                        pre_stop(hook, container, &pod_ip, &attempt, &self.ctx, grace).await;
                    if let Err(message) = result {
                        tracing::info!(container = attempt.name, message, "preStop hook failed");
                    }
                }
                self.stop_container(&attempt, grace.saturating_sub(started.elapsed()))
                    .await
            });
        }
        futures_util::future::join_all(stops).await;
    }

    /// The pod is being deleted: stop everything within its grace period, free its sandbox,
    /// report the final status and delete the object.
    pub(super) async fn terminate(&mut self, pod: &Pod) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(spec(pod).termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .max(0) as u64;
        let running = self
            .ctx
            .runtime
            .attempts(&self.dir)
            .iter()
            .any(|a| matches!(self.ctx.runtime.state(a), AttemptState::Running(_)));
        if running {
            for container in app_containers(pod) {
                self.event(
                    pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {}", container.name),
                )
                .await;
            }
        }
        self.stop_all(Some(pod), Duration::from_secs(grace)).await;
        self.teardown().await;
        self.report(pod).await;
        let deleted = self
            .ctx
            .api
            .delete_pod(namespace(pod), name(pod), &self.uid)
            .await;
        match deleted {
            Ok(()) | Err(ApiError::NotFound) | Err(ApiError::Conflict) => {}
            Err(error) => {
                tracing::warn!(
                    pod = format!("{}/{}", namespace(pod), name(pod)),
                    error = protocol::error::error_chain(&error),
                    "final delete failed"
                )
            }
        }
    }
}
