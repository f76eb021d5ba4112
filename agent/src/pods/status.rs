//! The pod status the worker reports (phase, conditions, container states) and its events.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, ContainerUser, HostIP, LinuxContainerUser, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::runtime::containers::{Attempt, AttemptState};
use crate::runtime::monitor::Exited;

use super::effects::{time_text, ApiError};
use super::worker::{
    app_containers, init_containers, name, namespace, PodWorker, RestartPolicy, Waiting,
};

fn time(text: &str) -> Option<Time> {
    text.parse().ok().map(Time)
}

/// What one container's status says about the pod's phase.
struct Seen {
    status: ContainerStatus,
    running: bool,
    succeeded: bool,
    terminated: bool,
}

impl PodWorker {
    fn terminated(&self, exited: &Exited, attempt: &Attempt) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exited.exit_code,
                reason: Some(exited.reason.clone()),
                message: Some(exited.message.clone()).filter(|m| !m.is_empty()),
                started_at: time(&exited.started_at),
                finished_at: time(&exited.finished_at),
                signal: exited.signal,
                container_id: Some(self.container_id(attempt)),
            }),
            ..Default::default()
        }
    }

    fn container_id(&self, attempt: &Attempt) -> String {
        format!("bramble://{}", attempt.id(&self.uid))
    }

    fn container_status(&self, container: &Container, init: bool) -> Seen {
        let name = &container.name;
        let image = container.image.clone().unwrap_or_default();
        let attempts = self.attempts_of(name);
        let latest = attempts.last();
        let previous = attempts.len().checked_sub(2).map(|i| &attempts[i]);
        let waiting = |reason: &str, message: String| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message: Some(message).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        };
        let shown_waiting = self
            .waiting
            .get(name)
            .filter(|w| !matches!(w, Waiting::Creating { .. }));
        let mut running = false;
        let mut succeeded = false;
        let mut ready = false;
        let latest_state = latest.map(|a| (a, self.ctx.runtime.state(a)));
        let state = match &latest_state {
            Some((attempt, AttemptState::Running(started))) => {
                running = true;
                let probes = self.probes.get(name);
                ready = !init
                    && match probes {
                        Some(p) => p.ready && p.attempt == attempt.number,
                        None => container.readiness_probe.is_none(),
                    };
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: time(&started.started_at),
                    }),
                    ..Default::default()
                }
            }
            Some((attempt, AttemptState::Exited(exited))) => {
                succeeded = exited.exit_code == 0;
                match shown_waiting {
                    Some(w) => waiting(w.reason(), w.message()),
                    None => self.terminated(exited, attempt),
                }
            }
            Some((_, AttemptState::Creating)) => waiting("ContainerCreating", String::new()),
            None => match self.waiting.get(name) {
                Some(w) => waiting(w.reason(), w.message()),
                None if init => waiting("PodInitializing", String::new()),
                None => waiting("ContainerCreating", String::new()),
            },
        };
        let last_state = match (&latest_state, previous) {
            (Some((attempt, AttemptState::Exited(exited))), _) if state.waiting.is_some() => {
                self.terminated(exited, attempt)
            }
            (_, Some(previous)) => match self.ctx.runtime.state(previous) {
                AttemptState::Exited(exited) => self.terminated(&exited, previous),
                _ => ContainerState::default(),
            },
            _ => ContainerState::default(),
        };
        let terminated = state.terminated.is_some();
        let image_id = self
            .image_ids
            .get(name)
            .map(|digest| format!("{}@{digest}", image.split('@').next().unwrap_or(&image)))
            .unwrap_or_default();
        let status = ContainerStatus {
            name: name.clone(),
            image,
            image_id,
            ready,
            restart_count: latest.map_or(0, |a| a.number as i32),
            state: Some(state),
            last_state: Some(last_state),
            started: Some(
                running
                    && match self.probes.get(name) {
                        Some(p) => p.started,
                        None => container.startup_probe.is_none(),
                    },
            ),
            container_id: latest.map(|a| self.container_id(a)),
            user: match &latest_state {
                Some((attempt, AttemptState::Running(_) | AttemptState::Exited(_))) => {
                    self.user(name, attempt)
                }
                _ => None,
            },
            ..Default::default()
        };
        Seen {
            status,
            running,
            succeeded,
            terminated,
        }
    }

    /// The user a started container runs as (`status.user.linux`): as started by this
    /// worker, else as its spec on disk says (an attempt adopted after a restart).
    fn user(&self, name: &str, attempt: &Attempt) -> Option<ContainerUser> {
        let (uid, gid, groups) = match self.users.get(name) {
            Some(identity) => (identity.uid, identity.gid, identity.groups.clone()),
            None => {
                let spec = std::fs::read(attempt.dir.join("bundle/config.json")).ok()?;
                let spec: serde_json::Value = serde_json::from_slice(&spec).ok()?;
                let user = &spec["process"]["user"];
                let number = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
                let groups = user["additionalGids"].as_array().into_iter().flatten();
                (
                    number(&user["uid"])?,
                    number(&user["gid"])?,
                    groups.filter_map(number).collect(),
                )
            }
        };
        Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: uid.into(),
                gid: gid.into(),
                supplemental_groups: Some(groups.into_iter().map(i64::from).collect()),
            }),
        })
    }

    fn condition(&mut self, kind: &str, ok: bool, reason: Option<&str>) -> PodCondition {
        let now = self.ctx.clock.now();
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (ok, time_text(now)));
        if entry.0 != ok {
            *entry = (ok, time_text(now));
        }
        PodCondition {
            type_: kind.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            last_transition_time: time(&entry.1),
            reason: reason.filter(|_| !ok).map(str::to_owned),
            ..Default::default()
        }
    }

    /// The status the pod's containers are in, as kubelet would write it.
    pub(super) fn status(&mut self, pod: &Pod) -> PodStatus {
        if let Some((reason, message)) = &self.rejected {
            // kubelet's rejectPod: only the phase and why (the scheduler's condition stays).
            return PodStatus {
                phase: Some("Failed".into()),
                reason: Some((*reason).to_owned()),
                message: Some(format!("Pod was rejected: {message}")),
                start_time: self.start_time.as_deref().and_then(time),
                ..Default::default()
            };
        }
        let policy = RestartPolicy::of(pod);
        let mut init_statuses = Vec::new();
        let mut initialized = true;
        let mut init_failed = false;
        for container in init_containers(pod) {
            let seen = self.container_status(container, true);
            let done = seen.terminated && seen.succeeded;
            if !done {
                initialized = false;
                if policy == RestartPolicy::Never && seen.terminated {
                    init_failed = true;
                }
            }
            init_statuses.push(seen.status);
        }
        let apps = app_containers(pod);
        let mut statuses = Vec::new();
        let mut all_ready = !apps.is_empty();
        let mut any_running = false;
        let mut all_terminated = !apps.is_empty();
        let mut all_succeeded = true;
        let mut all_started_once = true;
        for container in apps {
            let seen = self.container_status(container, false);
            all_ready &= seen.status.ready;
            any_running |= seen.running;
            let will_restart = match policy {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => !seen.succeeded,
                RestartPolicy::Always => true,
            };
            if !seen.terminated || will_restart {
                all_terminated = false;
            }
            all_succeeded &= seen.succeeded;
            if seen.status.container_id.is_none() {
                all_started_once = false;
            }
            statuses.push(seen.status);
        }
        let phase = if init_failed {
            "Failed"
        } else if initialized && all_terminated {
            if all_succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if initialized && all_started_once && (any_running || policy != RestartPolicy::Never)
        {
            "Running"
        } else {
            "Pending"
        };
        let terminal = phase == "Succeeded" || phase == "Failed";
        let sandbox_ready = self.ctx.runtime.sandbox_exists(&self.dir) && !terminal;
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
        let recorded = pod.status.as_ref();
        let scheduled = recorded
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .cloned()
            .unwrap_or_else(|| PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(Time(self.ctx.clock.now())),
                ..Default::default()
            });
        conditions.push(scheduled);
        let host_ip = self.ctx.node_ip.to_string();
        let mut status = PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            start_time: self.start_time.as_deref().and_then(time),
            container_statuses: Some(statuses),
            init_container_statuses: Some(init_statuses).filter(|s| !s.is_empty()),
            ..Default::default()
        };
        let pod_ip = self.pod_ip_text(pod);
        if !pod_ip.is_empty() {
            status.pod_ip = Some(pod_ip.clone());
            status.pod_ips = Some(vec![PodIP { ip: pod_ip }]);
        } else if let Some(recorded) = recorded.filter(|s| s.pod_ip.is_some()) {
            status.pod_ip = recorded.pod_ip.clone();
            status.pod_ips = recorded.pod_ips.clone();
        }
        status
    }

    /// Writes the status when it changed since the last report.
    pub(super) async fn report(&mut self, pod: &Pod) {
        let status = self.status(pod);
        let status = serde_json::to_value(&status).expect("statuses serialize");
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let (namespace, name) = (namespace(pod), name(pod));
        match self
            .ctx
            .api
            .patch_pod_status(namespace, name, &status)
            .await
        {
            Ok(()) => self.last_status = Some(status),
            Err(ApiError::NotFound) => {}
            Err(error) => {
                tracing::warn!(
                    pod = format!("{namespace}/{name}"),
                    error = protocol::error::error_chain(&error),
                    "status report failed"
                );
                self.wake.notify_one();
            }
        }
    }

    /// Records an event about the pod, as kubelet does.
    pub(super) async fn event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let (namespace, name) = (namespace(pod), name(pod));
        let now = time_text(self.ctx.clock.now());
        let node = &self.ctx.node_name;
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": self.uid},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        if let Err(error) = self.ctx.api.create_event(namespace, &event).await {
            tracing::debug!(
                error = protocol::error::error_chain(&error),
                "event not recorded"
            );
        }
    }
}

/// The JSON of a status, for callers that compare it.
#[cfg(test)]
pub(super) fn as_status(value: &serde_json::Value) -> PodStatus {
    serde_json::from_value(value.clone()).expect("a pod status")
}
