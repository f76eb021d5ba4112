//! A cluster in a known state for the unit and snapshot tests: three Pis, a few owners, every pod state.

use std::time::{Duration, Instant};

use protocol::chaos::MonkeyPolicy;
use protocol::client::WatchKind;
use serde_json::{json, Value};

use crate::app::{App, Message};
use crate::cluster::Resource;
use crate::feed::Update;
use crate::look::{Colours, Look};

/// The wall clock of every fixture.
pub const WALL: &str = "2026-11-23T12:00:00Z";

pub fn node(name: &str, ip: &str, ready: &str) -> Value {
    json!({
        "metadata": {"name": name, "creationTimestamp": "2026-11-23T11:00:00Z",
            "annotations": {"bramble.dev/board-model": "Raspberry Pi 4 Model B Rev 1.4"},
            "labels": {"kubernetes.io/arch": "arm64"}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "addresses": [{"type": "InternalIP", "address": ip}],
            "allocatable": {"cpu": "4", "memory": "1848Mi"},
            "nodeInfo": {"architecture": "arm64", "kernelVersion": "6.12.47-v8+"},
        },
    })
}

/// A pod owned by a Deployment (through its ReplicaSet), a DaemonSet or nothing.
pub fn pod(name: &str, owner: (&str, &str), node: Option<&str>, state: &str) -> Value {
    let (kind, owner_name) = owner;
    let mut labels = json!({"app": owner_name});
    let mut references = json!([{"kind": kind, "name": owner_name, "controller": true}]);
    if kind == "Deployment" {
        labels["pod-template-hash"] = json!("5d8f7c");
        references = json!([{"kind": "ReplicaSet", "name": format!("{owner_name}-5d8f7c"), "controller": true}]);
    }
    if kind == "Pod" {
        references = json!([]);
    }
    let (phase, ready, waiting) = match state {
        "Running" => ("Running", true, None),
        "NotReady" => ("Running", false, None),
        "Creating" => ("Pending", false, Some("ContainerCreating")),
        "Crash" => ("Running", false, Some("CrashLoopBackOff")),
        "Pending" => ("Pending", false, None),
        "Completed" => ("Succeeded", false, None),
        other => panic!("no fixture state {other}"),
    };
    let mut container = json!({"name": "main", "ready": ready, "restartCount": 0});
    if let Some(reason) = waiting {
        container["state"] = json!({"waiting": {"reason": reason}});
        container["restartCount"] = json!(if reason == "CrashLoopBackOff" { 5 } else { 0 });
    }
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-11-23T11:55:00Z", "labels": labels,
            "ownerReferences": references},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "10.99.0.1:5000/bramble/demo:1"}]},
        "status": {"phase": phase, "podIP": node.map(|_| "10.42.1.7"),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [container]},
    })
}

fn deployment(name: &str, desired: i64, ready: i64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": desired},
        "status": {"readyReplicas": ready, "updatedReplicas": desired, "availableReplicas": ready},
    })
}

fn event(
    uid: &str,
    time: &str,
    kind: &str,
    reason: &str,
    object: (&str, &str),
    message: &str,
) -> Value {
    json!({
        "metadata": {"uid": uid, "namespace": "default"}, "type": kind, "reason": reason,
        "involvedObject": {"kind": object.0, "name": object.1}, "message": message,
        "lastTimestamp": time, "count": 1,
    })
}

/// A look that does not depend on the machine running the tests.
pub fn look() -> Look {
    Look {
        colours: Colours::TrueColour,
        unicode: true,
    }
}

/// The demo cluster: pi-1 and pi-3 Ready (pi-3 cordoned), pi-2 killed and NotReady; web (5),
/// db (2) and a DaemonSet; one pod crash-looping, one creating, one unscheduled, one ghost.
/// The clock stands 10 s after the feeds arrived, so nothing pulses.
pub fn demo_app() -> App {
    let start = Instant::now();
    let mut app = App::new(
        "https://10.99.0.1:6443",
        "10.99.0.1",
        look(),
        false,
        MonkeyPolicy::default(),
        start,
    );
    app.set_clock(start, WALL.parse().unwrap());
    let mut killed = node("pi-2", "10.99.0.12", "Unknown");
    killed["metadata"]["annotations"]["bramble.dev/chaos"] = json!("kill");
    let mut cordoned = node("pi-3", "10.99.0.13", "True");
    cordoned["spec"]["unschedulable"] = json!(true);
    let nodes = vec![node("pi-1", "10.99.0.11", "True"), killed, cordoned];
    let web = ("Deployment", "web");
    let db = ("Deployment", "db");
    let logs = ("DaemonSet", "log-shipper");
    let pods = vec![
        pod("web-5d8f7c-a1b2c", web, Some("pi-1"), "Running"),
        pod("web-5d8f7c-d3e4f", web, Some("pi-1"), "Running"),
        pod("web-5d8f7c-g5h6i", web, Some("pi-3"), "Creating"),
        pod("web-5d8f7c-j7k8l", web, Some("pi-3"), "Running"),
        pod("web-5d8f7c-m9n0p", web, Some("pi-2"), "NotReady"),
        pod("db-5d8f7c-q1r2s", db, Some("pi-1"), "Running"),
        pod("db-5d8f7c-t3u4v", db, Some("pi-3"), "Crash"),
        pod("log-shipper-w5x6y", logs, Some("pi-1"), "Running"),
        pod("log-shipper-z7a8b", logs, Some("pi-2"), "NotReady"),
        pod("log-shipper-c9d0e", logs, Some("pi-3"), "Running"),
        pod("batch-once", ("Pod", "batch-once"), None, "Pending"),
    ];
    let events = vec![
        event(
            "e1",
            "2026-11-23T11:59:40Z",
            "Normal",
            "Scheduled",
            ("Pod", "web-5d8f7c-j7k8l"),
            "Successfully assigned default/web-5d8f7c-j7k8l to pi-3",
        ),
        event(
            "e2",
            "2026-11-23T11:59:50Z",
            "Warning",
            "NodeNotReady",
            ("Node", "pi-2"),
            "Node pi-2 status is now: NodeNotReady",
        ),
        event(
            "e3",
            "2026-11-23T11:59:55Z",
            "Warning",
            "BackOff",
            ("Pod", "db-5d8f7c-t3u4v"),
            "Back-off restarting failed container main",
        ),
        event(
            "e4",
            "2026-11-23T11:59:58Z",
            "Warning",
            "FailedScheduling",
            ("Pod", "batch-once"),
            "0/3 nodes are available: 3 Insufficient memory.",
        ),
    ];
    let usage = vec![
        json!({"metadata": {"name": "pi-1"}, "usage": {"cpu": "1200m", "memory": "900Mi"}}),
        json!({"metadata": {"name": "pi-3"}, "usage": {"cpu": "3800m", "memory": "1500Mi"}}),
    ];
    let feeds = [
        (Resource::Nodes, nodes),
        (Resource::Pods, pods),
        (
            Resource::Deployments,
            vec![deployment("web", 5, 3), deployment("db", 2, 1)],
        ),
        (Resource::Events, events),
    ];
    for (resource, items) in feeds {
        app.handle(Message::Feed(Update::whole_list(resource, items)));
    }
    app.handle(Message::Feed(Update::Usage(usage)));
    // A pod that just left pi-1 (still a ghost at the snapshot's time).
    let gone = pod("web-5d8f7c-x0x0x", web, Some("pi-1"), "Running");
    app.set_clock(start + Duration::from_secs(8), WALL.parse().unwrap());
    app.handle(Message::Feed(Update::Changed {
        resource: Resource::Pods,
        kind: WatchKind::Added,
        object: gone.clone(),
    }));
    app.handle(Message::Feed(Update::Changed {
        resource: Resource::Pods,
        kind: WatchKind::Deleted,
        object: gone,
    }));
    app.set_clock(
        start + Duration::from_secs(10),
        "2026-11-23T12:00:10Z".parse().unwrap(),
    );
    app.handle(Message::Tick);
    app
}
