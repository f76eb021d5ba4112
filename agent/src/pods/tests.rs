//! The pod life cycle drawn in [`super::worker`], driven with fakes under paused time.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
use serde_json::{json, Value};
use tokio::time::sleep;

use super::fake::{Behaviour, FakeNode};
use super::{spawn_worker, PodHandle};

const UID: &str = "0f1e2d3c";

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": spec,
    })
}

fn start(node: &FakeNode, pod: Value) -> PodHandle {
    spawn_worker(node.ctx.clone(), UID.into(), Some(pod))
}

/// Lets the worker run until `seconds` after the test began.
async fn until(node: &FakeNode, seconds: u64) {
    let at = Duration::from_secs(seconds);
    let now = node.clock.elapsed();
    assert!(now <= at, "already at {now:?}");
    sleep(at - now).await;
}

fn container<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
        .expect("a status for the container")
}

fn waiting_reason(status: &ContainerStatus) -> Option<&str> {
    status.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}

fn condition(status: &PodStatus, kind: &str) -> String {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn starts(node: &FakeNode, name: &str) -> Vec<String> {
    node.runtime.log_of(&format!("start {name}."))
}

#[tokio::test(start_paused = true)]
async fn a_running_pod_reports_running_and_ready() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "busybox:1"}]})),
    );
    until(&node, 1).await;
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Ready"), "True");
    assert_eq!(condition(&status, "Initialized"), "True");
    assert_eq!(condition(&status, "PodReadyToStartContainers"), "True");
    assert_eq!(status.pod_ip.as_deref(), Some("10.42.1.2"));
    let app = container(&status, "app");
    assert!(app.state.as_ref().unwrap().running.is_some());
    assert_eq!(
        (app.ready, app.restart_count, app.started),
        (true, 0, Some(true))
    );
    assert_eq!(app.image_id, "busybox:1@sha256:0123");
    assert_eq!(
        app.container_id.as_deref(),
        Some("bramble://0f1e2d3c-app-0")
    );
    assert_eq!(node.api.reasons(), ["Started"]);
}

#[tokio::test(start_paused = true)]
async fn crashing_containers_back_off_10s_doubling_to_5_minutes() {
    let node = FakeNode::new();
    node.runtime.behave(
        "app",
        Behaviour {
            runs_for: Some(Duration::ZERO),
            exit_code: 1,
            ..Default::default()
        },
    );
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "busybox:1"}]})),
    );
    until(&node, 1000).await;
    assert_eq!(
        starts(&node, "app"),
        [
            "0: start app.0",
            "10: start app.1",
            "30: start app.2",
            "70: start app.3",
            "150: start app.4",
            "310: start app.5",
            "610: start app.6",
            "910: start app.7",
        ]
    );
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Ready"), "False");
    let app = container(&status, "app");
    assert_eq!(waiting_reason(app), Some("CrashLoopBackOff"));
    assert_eq!(app.restart_count, 7);
    assert!(!app.ready);
    let last = app
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
}

#[tokio::test(start_paused = true)]
async fn the_back_off_starts_over_after_ten_minutes_of_running() {
    let node = FakeNode::new();
    let crash = Behaviour {
        runs_for: Some(Duration::ZERO),
        exit_code: 1,
        ..Default::default()
    };
    node.runtime.behave("app", crash.clone());
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "busybox:1"}]})),
    );
    until(&node, 35).await;
    node.runtime.behave(
        "app",
        Behaviour {
            runs_for: Some(Duration::from_secs(600)),
            exit_code: 1,
            ..Default::default()
        },
    );
    until(&node, 669).await;
    node.runtime.behave("app", crash);
    until(&node, 700).await;
    assert_eq!(
        starts(&node, "app"),
        [
            "0: start app.0",
            "10: start app.1",
            "30: start app.2",
            "70: start app.3",
            // app.3 ran 600 s (to 670): 10 s again, not 80 s.
            "680: start app.4",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn restart_policy_decides_what_restarts() {
    for (policy, exit_code, restarts, phase) in [
        ("Never", 1, false, "Failed"),
        ("Never", 0, false, "Succeeded"),
        ("OnFailure", 0, false, "Succeeded"),
        ("OnFailure", 1, true, "Running"),
        ("Always", 0, true, "Running"),
    ] {
        let node = FakeNode::new();
        node.runtime.behave(
            "app",
            Behaviour {
                runs_for: Some(Duration::from_secs(5)),
                exit_code,
                ..Default::default()
            },
        );
        let _pod = start(
            &node,
            pod(
                json!({"restartPolicy": policy, "containers": [{"name": "app", "image": "busybox:1"}]}),
            ),
        );
        until(&node, 16).await;
        let status = node.api.status();
        let case = format!("{policy} after exit {exit_code}");
        assert_eq!(
            starts(&node, "app").len(),
            if restarts { 2 } else { 1 },
            "{case}"
        );
        assert_eq!(status.phase.as_deref(), Some(phase), "{case}");
        if !restarts {
            let app = container(&status, "app");
            let state = app.state.as_ref().unwrap().terminated.as_ref().unwrap();
            assert_eq!(state.exit_code, exit_code, "{case}");
            assert_eq!(condition(&status, "Ready"), "False", "{case}");
        }
    }
}

fn init_pod(policy: &str) -> Value {
    pod(json!({
        "restartPolicy": policy,
        "initContainers": [
            {"name": "first", "image": "busybox:1"},
            {"name": "second", "image": "busybox:1"},
        ],
        "containers": [{"name": "app", "image": "busybox:1"}],
    }))
}

fn runs(seconds: u64, exit_code: i32) -> Behaviour {
    Behaviour {
        runs_for: Some(Duration::from_secs(seconds)),
        exit_code,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_app() {
    let node = FakeNode::new();
    node.runtime.behave("first", runs(5, 0));
    node.runtime.behave("second", runs(5, 0));
    let _pod = start(&node, init_pod("Always"));
    until(&node, 3).await;
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&status, "Initialized"), "False");
    assert_eq!(
        waiting_reason(container(&status, "second")),
        Some("PodInitializing")
    );
    assert_eq!(
        waiting_reason(container(&status, "app")),
        Some("ContainerCreating")
    );
    until(&node, 20).await;
    let log: Vec<String> = node
        .runtime
        .log()
        .into_iter()
        .filter(|l| l.contains("start") || l.contains("exit"))
        .collect();
    assert_eq!(
        log,
        [
            "0: start first.0",
            "5: exit first.0 0",
            "5: start second.0",
            "10: exit second.0 0",
            "10: start app.0",
        ]
    );
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Initialized"), "True");
    let first = container(&status, "first");
    let done = first.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(done.reason.as_deref(), Some("Completed"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_blocks_the_app_and_restarts_with_back_off() {
    let node = FakeNode::new();
    node.runtime.behave("first", runs(0, 0));
    node.runtime.behave("second", runs(0, 1));
    let _pod = start(&node, init_pod("Always"));
    until(&node, 65).await;
    assert_eq!(
        starts(&node, "second"),
        [
            "0: start second.0",
            "10: start second.1",
            "30: start second.2"
        ]
    );
    assert!(starts(&node, "app").is_empty());
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&status, "Initialized"), "False");
    assert_eq!(
        waiting_reason(container(&status, "second")),
        Some("CrashLoopBackOff")
    );
    node.runtime.behave("second", runs(0, 0));
    until(&node, 75).await;
    assert_eq!(starts(&node, "app"), ["70: start app.0"]);
    assert_eq!(condition(&node.api.status(), "Initialized"), "True");
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_fails_a_never_restarting_pod() {
    let node = FakeNode::new();
    node.runtime.behave("first", runs(1, 2));
    let _pod = start(&node, init_pod("Never"));
    until(&node, 60).await;
    assert_eq!(starts(&node, "first"), ["0: start first.0"]);
    assert!(starts(&node, "second").is_empty());
    assert!(starts(&node, "app").is_empty());
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let first = container(&status, "first");
    assert_eq!(
        first
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        2
    );
}

fn probed(probe: &str, settings: Value) -> Value {
    let mut handler = json!({"exec": {"command": [probe]}});
    for (key, value) in settings.as_object().unwrap() {
        handler[key] = value.clone();
    }
    let mut app = json!({"name": "app", "image": "busybox:1"});
    app[probe] = handler;
    pod(json!({"containers": [app], "terminationGracePeriodSeconds": 5}))
}

#[tokio::test(start_paused = true)]
async fn liveness_failures_past_the_threshold_restart_the_container() {
    let node = FakeNode::new();
    node.runtime.command("app", "livenessProbe", false);
    let _pod = start(
        &node,
        probed(
            "livenessProbe",
            json!({"initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 3}),
        ),
    );
    until(&node, 31).await;
    let log: Vec<String> = node
        .runtime
        .log()
        .into_iter()
        .filter(|l| !l.contains("exit "))
        .collect();
    assert_eq!(
        log,
        [
            "0: start app.0",
            "10: exec app.0 livenessProbe",
            "15: exec app.0 livenessProbe",
            "20: exec app.0 livenessProbe",
            "20: SIGTERM app.0",
            "30: start app.1",
        ]
    );
    let reasons = node.api.reasons();
    assert_eq!(reasons.iter().filter(|r| *r == "Unhealthy").count(), 3);
    assert!(reasons.contains(&"Killing".to_owned()));
    let app = container(&node.api.status(), "app").clone();
    assert_eq!(app.restart_count, 1);
    let last = app.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 143);
}

#[tokio::test(start_paused = true)]
async fn a_liveness_probe_that_recovers_before_the_threshold_does_not_restart() {
    let node = FakeNode::new();
    node.runtime.command("app", "livenessProbe", false);
    let _pod = start(
        &node,
        probed(
            "livenessProbe",
            json!({"periodSeconds": 5, "failureThreshold": 3}),
        ),
    );
    until(&node, 7).await;
    node.runtime.command("app", "livenessProbe", true);
    until(&node, 12).await;
    node.runtime.command("app", "livenessProbe", false);
    until(&node, 22).await;
    assert!(
        node.runtime.log_of("SIGTERM").is_empty(),
        "{:?}",
        node.runtime.log()
    );
    assert_eq!(starts(&node, "app").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_the_ready_condition_without_restarting() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        probed(
            "readinessProbe",
            json!({"initialDelaySeconds": 2, "periodSeconds": 5, "failureThreshold": 2}),
        ),
    );
    until(&node, 1).await;
    assert_eq!(
        condition(&node.api.status(), "Ready"),
        "False",
        "before the first probe"
    );
    until(&node, 3).await;
    assert_eq!(condition(&node.api.status(), "Ready"), "True");
    node.runtime.command("app", "readinessProbe", false);
    until(&node, 8).await;
    assert_eq!(
        condition(&node.api.status(), "Ready"),
        "True",
        "one failure is not enough"
    );
    until(&node, 13).await;
    let status = node.api.status();
    assert_eq!(condition(&status, "Ready"), "False");
    assert_eq!(condition(&status, "ContainersReady"), "False");
    assert!(!container(&status, "app").ready);
    node.runtime.command("app", "readinessProbe", true);
    until(&node, 18).await;
    assert_eq!(condition(&node.api.status(), "Ready"), "True");
    assert_eq!(starts(&node, "app").len(), 1);
    assert!(node.runtime.log_of("SIGTERM").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_startup_probe_holds_liveness_back_and_kills_past_its_threshold() {
    let node = FakeNode::new();
    node.runtime.command("app", "startupProbe", false);
    let mut spec = probed(
        "startupProbe",
        json!({"periodSeconds": 10, "failureThreshold": 3}),
    );
    spec["spec"]["containers"][0]["livenessProbe"] =
        json!({"exec": {"command": ["livenessProbe"]}});
    let _pod = start(&node, spec);
    until(&node, 5).await;
    let status = node.api.status();
    assert_eq!(container(&status, "app").started, Some(false));
    until(&node, 21).await;
    let log: Vec<String> = node
        .runtime
        .log()
        .into_iter()
        .filter(|l| !l.contains("exit "))
        .collect();
    assert_eq!(
        log,
        [
            "0: start app.0",
            "0: exec app.0 startupProbe",
            "10: exec app.0 startupProbe",
            "20: exec app.0 startupProbe",
            "20: SIGTERM app.0",
        ]
    );
}

fn deleting(mut pod: Value, grace: u64) -> Value {
    pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    pod
}

#[tokio::test(start_paused = true)]
async fn deletion_runs_pre_stop_then_sigterm_then_sigkill_after_the_grace_period() {
    let node = FakeNode::new();
    node.runtime.behave(
        "app",
        Behaviour {
            ignores_sigterm: true,
            ..Default::default()
        },
    );
    let spec = pod(json!({
        "terminationGracePeriodSeconds": 20,
        "containers": [{
            "name": "app",
            "image": "busybox:1",
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        }],
    }));
    let handle = start(&node, spec.clone());
    until(&node, 60).await;
    handle.object.send(Some(deleting(spec, 20))).unwrap();
    until(&node, 100).await;
    assert_eq!(
        node.runtime.log(),
        [
            "0: start app.0",
            "65: SIGTERM app.0",
            "80: SIGKILL app.0",
            "80: exit app.0 137",
        ]
    );
    // (The fake API keeps the pod, so the worker deletes it again on each pass.)
    assert_eq!(node.api.deleted.lock().unwrap()[0], "web");
    let status = node.api.status();
    let app = container(&status, "app");
    let ended = app.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((ended.exit_code, ended.signal), (137, Some(9)));
    assert!(node.api.reasons().contains(&"Killing".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_container_that_stops_on_sigterm_is_not_killed() {
    let node = FakeNode::new();
    let spec = pod(json!({
        "containers": [{
            "name": "app",
            "image": "busybox:1",
            "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}},
        }],
    }));
    let handle = start(&node, spec.clone());
    until(&node, 10).await;
    handle.object.send(Some(deleting(spec, 30))).unwrap();
    until(&node, 60).await;
    assert_eq!(
        node.runtime.log(),
        [
            "0: start app.0",
            "10: exec app.0 drain",
            "10: SIGTERM app.0",
            "10: exit app.0 143",
        ]
    );
    // (The fake API keeps the pod, so the worker deletes it again on each pass.)
    assert_eq!(node.api.deleted.lock().unwrap()[0], "web");
}

#[tokio::test(start_paused = true)]
async fn the_pod_grace_period_applies_when_the_delete_names_none() {
    let node = FakeNode::new();
    node.runtime.behave(
        "app",
        Behaviour {
            ignores_sigterm: true,
            ..Default::default()
        },
    );
    let spec = pod(json!({
        "terminationGracePeriodSeconds": 7,
        "containers": [{"name": "app", "image": "busybox:1"}],
    }));
    let handle = start(&node, spec.clone());
    until(&node, 10).await;
    let mut gone = spec;
    gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:10Z");
    handle.object.send(Some(gone)).unwrap();
    until(&node, 30).await;
    assert_eq!(
        node.runtime.log_of("SIG"),
        ["10: SIGTERM app.0", "17: SIGKILL app.0"]
    );
}

#[tokio::test(start_paused = true)]
async fn image_pull_failures_wait_in_err_image_pull_then_back_off() {
    let node = FakeNode::new();
    node.images.missing.lock().unwrap().insert("ghost:1".into());
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "ghost:1"}]})),
    );
    until(&node, 1).await;
    let first = super::status::as_status(&node.api.statuses.lock().unwrap()[0]);
    let app = container(&first, "app");
    assert_eq!(waiting_reason(app), Some("ErrImagePull"));
    let message = app
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert_eq!(
        message.as_deref(),
        Some("Failed to pull image \"ghost:1\": image ghost:1: manifest unknown")
    );
    assert_eq!(first.phase.as_deref(), Some("Pending"));
    // The next pass finds the pull backing off (5 s, then 10, 20...).
    let status = node.api.status();
    let app = container(&status, "app");
    assert_eq!(waiting_reason(app), Some("ImagePullBackOff"));
    let message = app
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert_eq!(
        message.as_deref(),
        Some("Back-off 5s pulling image \"ghost:1\"")
    );
    node.images.missing.lock().unwrap().clear();
    until(&node, 60).await;
    assert_eq!(starts(&node, "app").len(), 1);
    let reasons = node.api.reasons();
    assert!(reasons.contains(&"Failed".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"BackOff".to_owned()), "{reasons:?}");
}

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_key_is_a_create_container_config_error() {
    let node = FakeNode::new();
    node.api.objects.lock().unwrap().insert(
        ("configmaps".into(), "settings".into()),
        json!({"data": {"mode": "fast"}}),
    );
    let _pod = start(
        &node,
        pod(json!({"containers": [{
            "name": "app",
            "image": "busybox:1",
            "env": [{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}}],
        }]})),
    );
    until(&node, 1).await;
    let status = node.api.status();
    let app = container(&status, "app");
    assert_eq!(waiting_reason(app), Some("CreateContainerConfigError"));
    assert!(starts(&node, "app").is_empty());
    node.api.objects.lock().unwrap().insert(
        ("configmaps".into(), "settings".into()),
        json!({"data": {"level": "3"}}),
    );
    until(&node, 15).await;
    assert_eq!(starts(&node, "app").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_image_name_is_reported_as_such() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "Not A Name"}]})),
    );
    until(&node, 1).await;
    let status = node.api.status();
    assert_eq!(
        waiting_reason(container(&status, "app")),
        Some("InvalidImageName")
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_fields_are_reported_once() {
    let node = FakeNode::new();
    let spec = pod(json!({
        "shareProcessNamespace": true,
        "containers": [{"name": "app", "image": "busybox:1"}],
    }));
    let handle = start(&node, spec.clone());
    until(&node, 1).await;
    handle.object.send(Some(spec)).unwrap();
    until(&node, 2).await;
    let events = node.api.events.lock().unwrap().clone();
    let ignored: Vec<_> = events.iter().filter(|e| e.1 == "IgnoredFields").collect();
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0].2, "bramble ignores spec.shareProcessNamespace");
}

fn claim_pod() -> Value {
    pod(json!({
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "seen", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}},
        ],
        "containers": [{
            "name": "app",
            "image": "busybox:1",
            "volumeMounts": [
                {"name": "data", "mountPath": "/srv", "subPath": "www"},
                {"name": "seen", "mountPath": "/seen"},
            ],
        }],
    }))
}

fn failed_mounts(node: &FakeNode) -> Vec<String> {
    let events = node.api.events.lock().unwrap();
    events
        .iter()
        .filter(|(_, reason, _)| reason == "FailedMount")
        .map(|(_, _, message)| message.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_pod_waits_for_its_claim_to_be_bound_then_mounts_its_volume() {
    let node = FakeNode::new();
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().join("pvc-c1_default_data");
    node.api.objects.lock().unwrap().insert(
        ("persistentvolumeclaims".into(), "data".into()),
        json!({"metadata": {"name": "data", "namespace": "default", "uid": "c1"},
               "spec": {}, "status": {"phase": "Pending"}}),
    );
    let _pod = start(&node, claim_pod());
    until(&node, 20).await;
    assert!(starts(&node, "app").is_empty());
    let status = node.api.status();
    let app = container(&status, "app");
    assert_eq!(waiting_reason(app), Some("ContainerCreating"));
    let failures = failed_mounts(&node);
    assert_eq!(
        failures[0],
        "Unable to attach or mount volumes: unmounted volumes=[data], unattached volumes=[], \
         failed to process volumes=[data]: error processing PVC default/data: PVC default/data \
         has non-bound phase (\"Pending\") or empty pvc.Spec.VolumeName (\"\")"
    );
    // Tries at 0, 1, 3, 7 and 15 s: the wait doubles.
    assert_eq!(failures.len(), 5, "{failures:?}");

    // The PV controller binds it; the PV's change wakes the worker before its next try.
    {
        let mut objects = node.api.objects.lock().unwrap();
        objects.insert(
            ("persistentvolumeclaims".into(), "data".into()),
            json!({"metadata": {"name": "data", "namespace": "default", "uid": "c1"},
               "spec": {"volumeName": "pvc-c1"}, "status": {"phase": "Bound"}}),
        );
        objects.insert(
        ("persistentvolumes".into(), "pvc-c1".into()),
        json!({"metadata": {"name": "pvc-c1",
                            "annotations": {"pv.kubernetes.io/provisioned-by": "bramble.dev/local-path"}},
               "spec": {"hostPath": {"path": dir, "type": "DirectoryOrCreate"},
                        "claimRef": {"name": "data", "namespace": "default", "uid": "c1"}},
               "status": {"phase": "Bound"}}),
    );
    }
    node.ctx.volume_changes.send_modify(|n| *n += 1);
    until(&node, 21).await;
    assert_eq!(starts(&node, "app"), ["20: start app.0"]);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "made as local-path-provisioner makes it");
    let plan = node.runtime.plan("app").unwrap();
    let mounts: Vec<(&str, PathBuf, bool)> = plan
        .mounts
        .iter()
        .filter(|m| !m.destination.starts_with("/etc/"))
        .map(|m| (m.destination.as_str(), m.source.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/srv", dir.join("www").canonicalize().unwrap(), false),
            ("/seen", dir.clone(), true),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_bound_to_a_volume_of_another_claim_is_refused() {
    let node = FakeNode::new();
    {
        let mut objects = node.api.objects.lock().unwrap();
        objects.insert(
            ("persistentvolumeclaims".into(), "data".into()),
            json!({"metadata": {"name": "data", "namespace": "default", "uid": "c1"},
               "spec": {"volumeName": "pv-x"}, "status": {"phase": "Bound"}}),
        );
        objects.insert(
            ("persistentvolumes".into(), "pv-x".into()),
            json!({"metadata": {"name": "pv-x"},
               "spec": {"local": {"path": "/nonexistent/disk"},
                        "claimRef": {"name": "data", "namespace": "default", "uid": "c0"}}}),
        );
    }
    let _pod = start(&node, claim_pod());
    until(&node, 1).await;
    assert!(starts(&node, "app").is_empty());
    assert!(failed_mounts(&node)[0].ends_with(
        "found PV object \"pv-x\" but its pv.Spec.ClaimRef.UID (\"c0\") does not point to claim.UID (\"c1\")"
    ));
    node.api.objects.lock().unwrap().insert(
        ("persistentvolumes".into(), "pv-x".into()),
        json!({"metadata": {"name": "pv-x"},
               "spec": {"local": {"path": "/nonexistent/disk"},
                        "claimRef": {"name": "data", "namespace": "default", "uid": "c1"}}}),
    );
    until(&node, 2).await;
    assert_eq!(
        failed_mounts(&node).last().unwrap(),
        "MountVolume.NewMounter initialization failed for volume \"pv-x\" : path \"/nonexistent/disk\" does not exist"
    );
}

fn events_of(node: &FakeNode, reason: &str) -> Vec<(String, String)> {
    let events = node.api.events.lock().unwrap();
    events
        .iter()
        .filter(|(_, r, _)| r == reason)
        .map(|(kind, _, message)| (kind.clone(), message.clone()))
        .collect()
}

fn waiting_message(status: &ContainerStatus) -> Option<&str> {
    status.state.as_ref()?.waiting.as_ref()?.message.as_deref()
}

#[tokio::test(start_paused = true)]
async fn run_as_non_root_with_a_root_image_is_a_config_error_retried_every_10s() {
    let node = FakeNode::new();
    let spec = json!({"securityContext": {"runAsNonRoot": true},
                      "containers": [{"name": "app", "image": "busybox:1"}]});
    let handle = start(&node, pod(spec.clone()));
    until(&node, 25).await;
    let text = "container has runAsNonRoot and image will run as root (pod: \
                \"web_default(0f1e2d3c)\", container: app)";
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let app = container(&status, "app");
    assert_eq!(waiting_reason(app), Some("CreateContainerConfigError"));
    assert_eq!(waiting_message(app), Some(text));
    assert!(starts(&node, "app").is_empty());
    let failed = events_of(&node, "Failed");
    assert_eq!(failed[0], ("Warning".to_owned(), format!("Error: {text}")));
    // Tried at 0 (and once more when its own status report comes back), 10 and 20 s.
    assert!((3..=4).contains(&failed.len()), "{failed:?}");

    // The image's user named by the pod: it starts.
    let mut fixed = pod(spec);
    fixed["spec"]["securityContext"]["runAsUser"] = json!(1000);
    handle.object.send(Some(fixed)).unwrap();
    until(&node, 26).await;
    assert_eq!(starts(&node, "app").len(), 1);
    let plan = node.runtime.plan("app").unwrap();
    assert_eq!(
        (plan.uid, plan.gid, plan.additional_gids),
        (1000, 0, vec![0])
    );
    let app = container(&node.api.status(), "app").clone();
    let user = app.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1000, 0));
    assert_eq!(user.supplemental_groups, Some(vec![0]));
}

#[tokio::test(start_paused = true)]
async fn run_as_non_root_cannot_check_an_image_user_name() {
    let node = FakeNode::new();
    node.images
        .users
        .lock()
        .unwrap()
        .insert("nginx:1".into(), "nginx".into());
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "nginx:1",
                                   "securityContext": {"runAsNonRoot": true}}]})),
    );
    until(&node, 1).await;
    let app = container(&node.api.status(), "app").clone();
    assert_eq!(waiting_reason(&app), Some("CreateContainerConfigError"));
    assert_eq!(
        waiting_message(&app),
        Some(
            "container has runAsNonRoot and image has non-numeric user (nginx), cannot verify \
             user is non-root (pod: \"web_default(0f1e2d3c)\", container: app)"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn an_image_user_missing_from_its_passwd_is_a_create_container_error() {
    let node = FakeNode::new();
    node.images
        .users
        .lock()
        .unwrap()
        .insert("nginx:1".into(), "nginx".into());
    let _pod = start(
        &node,
        pod(json!({"containers": [{"name": "app", "image": "nginx:1"}]})),
    );
    until(&node, 1).await;
    let app = container(&node.api.status(), "app").clone();
    assert_eq!(waiting_reason(&app), Some("CreateContainerError"));
    assert_eq!(
        waiting_message(&app),
        Some("no users found for \"nginx\" in the image's /etc/passwd")
    );
}

#[tokio::test(start_paused = true)]
async fn a_seccomp_profile_that_cannot_be_loaded_is_a_create_container_error() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(
            json!({"containers": [{"name": "app", "image": "busybox:1", "securityContext":
            {"seccompProfile": {"type": "Localhost", "localhostProfile": "missing.json"}}}]}),
        ),
    );
    until(&node, 1).await;
    let app = container(&node.api.status(), "app").clone();
    assert_eq!(waiting_reason(&app), Some("CreateContainerError"));
    assert!(starts(&node, "app").is_empty());
    let failed = events_of(&node, "Failed");
    let message = waiting_message(&app).unwrap();
    assert_eq!(failed[0].1, format!("Error: {message}"));
}

#[tokio::test(start_paused = true)]
async fn the_security_context_reaches_the_container_plan() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                                "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [{"name": "app", "image": "busybox:1", "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "procMount": "Unmasked",
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
        })),
    );
    until(&node, 1).await;
    let plan = node.runtime.plan("app").unwrap();
    assert_eq!((plan.uid, plan.gid), (1000, 3000));
    assert_eq!(plan.additional_gids, [2000, 3000]);
    assert_eq!(plan.capabilities, ["CAP_NET_BIND_SERVICE"]);
    assert!(plan.no_new_privileges && plan.read_only_root && plan.unmasked_proc);
    assert!(!plan.privileged && !plan.host_pid && !plan.host_ipc);
    assert_eq!(plan.seccomp, None, "unconfined without --seccomp-default");
    let sysctls: Vec<(&str, &str)> = plan
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        sysctls,
        [
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("net.ipv4.tcp_syncookies", "1"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_sysctl_fails_the_pod_at_admission() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(json!({
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]},
            "containers": [{"name": "app", "image": "busybox:1"}],
        })),
    );
    until(&node, 30).await;
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("SysctlForbidden"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted")
    );
    assert!(status.container_statuses.is_none());
    assert!(starts(&node, "app").is_empty());
    assert!(!node
        .ctx
        .runtime
        .sandbox_exists(&node.ctx.pods_dir.join(UID)));
    assert_eq!(
        events_of(&node, "SysctlForbidden"),
        [(
            "Warning".to_owned(),
            "forbidden sysctl: \"kernel.msgmax\" not allowlisted".to_owned()
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn an_apparmor_profile_fails_the_pod_where_the_kernel_has_no_apparmor() {
    let node = FakeNode::new();
    let _pod = start(
        &node,
        pod(
            json!({"containers": [{"name": "app", "image": "busybox:1", "securityContext":
            {"appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-nginx"}}}]}),
        ),
    );
    until(&node, 1).await;
    let status = node.api.status();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("AppArmor"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host")
    );
    assert!(starts(&node, "app").is_empty());
}
