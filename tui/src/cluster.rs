//! The cluster as the dashboard sees it: compact nodes, pods, deployments and events, kept from watch events.
//!
//! Objects arrive as JSON from the watches and are boiled down at once to the few fields the
//! screens show (a pod is a few hundred bytes here, not the 5-10 KB of its JSON), so watching
//! 3,000 pods stays cheap. Changes are stamped with the dashboard's clock: a pod that appears,
//! moves or changes state "pulses" for [`PULSE`], and a pod that goes is kept as a ghost on its
//! old node for [`GHOST`], so the audience sees the cluster heal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use hardware::status::NodeHealth;
use protocol::chaos::{is_master_node, CHAOS_ANNOTATION};
use protocol::client::WatchKind;
use protocol::pod_view::{app_of, owner_of, pod_state, str_at};
pub use protocol::pod_view::{Owner, PodState};
use serde_json::Value;

/// How long a change stays highlighted.
pub const PULSE: Duration = Duration::from_millis(2500);
/// How long a deleted pod stays on screen as a ghost.
pub const GHOST: Duration = Duration::from_secs(3);
/// Events kept for the event pane.
const EVENTS_KEPT: usize = 200;

/// The kinds the dashboard watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Nodes.
    Nodes,
    /// Pods in every namespace.
    Pods,
    /// Deployments in every namespace.
    Deployments,
    /// Core events in every namespace.
    Events,
}

impl Resource {
    /// Every watched kind.
    pub const ALL: [Resource; 4] = [
        Resource::Nodes,
        Resource::Pods,
        Resource::Deployments,
        Resource::Events,
    ];

    /// The collection path.
    pub fn path(self) -> &'static str {
        match self {
            Resource::Nodes => "/api/v1/nodes",
            Resource::Pods => "/api/v1/pods",
            Resource::Deployments => "/apis/apps/v1/deployments",
            Resource::Events => "/api/v1/events",
        }
    }
}

/// A node card's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Ready, NotReady or Unknown (from its Ready condition).
    pub condition: Condition,
    /// Killed through the chaos hook.
    pub killed: bool,
    /// Cordoned.
    pub unschedulable: bool,
    /// The master's own node (never killed by the monkey).
    pub is_master: bool,
    /// CPU architecture (`arm64`).
    pub arch: String,
    /// Board model without the vendor (`Pi 4 Model B Rev 1.4`), or the OS image.
    pub board: String,
    /// Its address.
    pub address: String,
    /// Allocatable CPU in millicores.
    pub cpu_allocatable: i64,
    /// Allocatable memory in bytes.
    pub memory_allocatable: i64,
    /// Kernel version.
    pub kernel: String,
    /// Taint keys with effects.
    pub taints: Vec<String>,
    /// When the node was created (RFC 3339).
    pub created: String,
    /// When its state last changed on screen.
    pub changed_at: Instant,
}

/// A node's Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Ready=True.
    Ready,
    /// Ready=False.
    NotReady,
    /// Ready=Unknown or missing.
    Unknown,
}

impl Node {
    /// The node as its status LED sees it.
    pub fn health(&self, pods_starting: bool) -> NodeHealth {
        match (self.killed, self.condition) {
            (true, _) | (false, Condition::NotReady) => NodeHealth::NotReady,
            (false, Condition::Unknown) => NodeHealth::Unknown,
            (false, Condition::Ready) if pods_starting => NodeHealth::Starting,
            (false, Condition::Ready) => NodeHealth::Ready,
        }
    }

    /// The word for its Ready condition, as `kubectl get nodes` says it (the master's view:
    /// a killed node stays Ready until the master notices).
    pub fn status_word(&self) -> &'static str {
        match self.condition {
            Condition::Ready => "Ready",
            Condition::NotReady | Condition::Unknown => "NotReady",
        }
    }
}

/// A pod block's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// The pod's UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it is bound to.
    pub node: Option<String>,
    /// What owns it.
    pub owner: Owner,
    /// Its `app` label (or owner name): the colour key, as the pod LEDs use it.
    pub app: String,
    /// Its labels (for the label filter).
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub state: PodState,
    /// Ready containers.
    pub ready: u32,
    /// All containers.
    pub containers: u32,
    /// Container restarts.
    pub restarts: u32,
    /// Pod IP.
    pub ip: String,
    /// Container images.
    pub images: Vec<String>,
    /// Its volumes and what backs each (`data: claim data-db-0`), for the details pane.
    pub volumes: Vec<String>,
    /// When the pod was created (RFC 3339).
    pub created: String,
    /// When it appeared, moved or changed state on screen.
    pub changed_at: Instant,
}

/// A pod that went away, shown for a moment where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Ghost {
    /// The pod as it was last seen.
    pub pod: Pod,
    /// When it went.
    pub gone_at: Instant,
}

/// A deployment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.replicas`.
    pub desired: i64,
    /// `status.readyReplicas`.
    pub ready: i64,
    /// `status.updatedReplicas`.
    pub up_to_date: i64,
    /// `status.availableReplicas`.
    pub available: i64,
}

/// A line of the event pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// When (RFC 3339), if known.
    pub time: String,
    /// A Warning rather than Normal.
    pub warning: bool,
    /// The reason (`Scheduled`, `Killing`, `NodeNotReady`, ...), or `dashboard`.
    pub reason: String,
    /// `pod/web-1`, `node/pi-2`, ...
    pub object: String,
    /// The message.
    pub message: String,
}

/// CPU and memory in use on a node (from the metrics API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
}

/// A list arriving in pages: what it held so far.
#[derive(Debug, Default)]
struct Listing {
    /// Keys of the listed objects.
    seen: BTreeSet<String>,
    /// Listed events (kept aside: only the latest make it to the pane).
    events: Vec<(String, EventLine)>,
}

/// Everything the dashboard knows about the cluster.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods by UID.
    pub pods: BTreeMap<String, Pod>,
    /// Pod UIDs by node (`None`: not scheduled yet), so a card reads only its own pods.
    pods_by_node: BTreeMap<Option<String>, BTreeSet<String>>,
    /// Pods that went recently.
    pub ghosts: Vec<Ghost>,
    /// Deployments by (namespace, name).
    pub deployments: BTreeMap<(String, String), Deployment>,
    /// Recent events, oldest first.
    pub events: VecDeque<EventLine>,
    /// Node usage by node name.
    pub usage: BTreeMap<String, Usage>,
    /// Event UIDs already shown, so a re-list does not repeat them.
    seen_events: BTreeSet<String>,
    /// The lists being received, page by page (the feeds list at the same time).
    listings: BTreeMap<Resource, Listing>,
    /// Something visible changed since the last [`Cluster::take_changes`].
    changed: bool,
    /// The API server's host, to recognise the master's node.
    master_host: String,
}

impl Cluster {
    /// An empty cluster whose master answers at `master_host`.
    pub fn new(master_host: &str) -> Self {
        Cluster {
            master_host: master_host.to_owned(),
            ..Cluster::default()
        }
    }

    /// Takes one page of a fresh list of `resource` (after a (re)connect). Lists come in
    /// pages so a big cluster never sits in memory as JSON all at once; when the last page
    /// is in, what the list no longer holds goes.
    pub fn list_page(
        &mut self,
        resource: Resource,
        items: &[Value],
        first: bool,
        last: bool,
        now: Instant,
    ) {
        if first {
            self.listings.insert(resource, Listing::default());
        }
        let listing = self.listings.entry(resource).or_default();
        for item in items {
            match resource {
                Resource::Events => listing.events.push((event_key(item), event_from(item))),
                Resource::Nodes | Resource::Pods | Resource::Deployments => {
                    listing.seen.insert(list_key(resource, item));
                }
            }
        }
        if resource != Resource::Events {
            for item in items {
                self.apply(resource, WatchKind::Added, item, now);
            }
        }
        if !last {
            return;
        }
        let Listing { seen, mut events } = self.listings.remove(&resource).unwrap_or_default();
        match resource {
            Resource::Nodes => {
                let before = self.nodes.len();
                self.nodes.retain(|name, _| seen.contains(name));
                self.changed |= self.nodes.len() != before;
            }
            Resource::Pods => {
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.remove_pod(&uid, now);
                }
            }
            Resource::Deployments => {
                let before = self.deployments.len();
                self.deployments
                    .retain(|(namespace, name), _| seen.contains(&format!("{namespace}/{name}")));
                self.changed |= self.deployments.len() != before;
            }
            Resource::Events => {
                // A list comes in name order; the pane wants the latest, oldest first.
                events.sort_by(|a, b| a.1.time.cmp(&b.1.time));
                let skip = events.len().saturating_sub(EVENTS_KEPT);
                for (key, line) in events.into_iter().skip(skip) {
                    if self.seen_events.insert(key) {
                        self.push_event(line);
                    }
                }
            }
        }
    }

    /// Applies one watch event (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn apply(&mut self, resource: Resource, kind: WatchKind, object: &Value, now: Instant) {
        let deleted = kind == WatchKind::Deleted;
        match resource {
            Resource::Nodes => {
                let Some(name) = object["metadata"]["name"].as_str() else {
                    return;
                };
                if deleted {
                    self.nodes.remove(name);
                    self.usage.remove(name);
                    self.changed = true;
                    return;
                }
                let mut node = node_from(object, &self.master_host, now);
                if let Some(old) = self.nodes.get(name) {
                    let same_state = old.condition == node.condition
                        && old.killed == node.killed
                        && old.unschedulable == node.unschedulable;
                    if same_state {
                        node.changed_at = old.changed_at;
                    }
                    if *old == node {
                        // A heartbeat: nothing on screen changes.
                        return;
                    }
                }
                self.changed = true;
                self.nodes.insert(name.to_owned(), node);
            }
            Resource::Pods => {
                let Some(uid) = object["metadata"]["uid"].as_str() else {
                    return;
                };
                if deleted {
                    self.remove_pod(uid, now);
                    return;
                }
                let mut pod = pod_from(object, now);
                if let Some(old) = self.pods.get(uid) {
                    if old.node == pod.node && old.state == pod.state {
                        pod.changed_at = old.changed_at;
                    }
                    if *old == pod {
                        return;
                    }
                }
                self.changed = true;
                if let Some(old) = self.pods.get(uid).filter(|old| old.node != pod.node) {
                    if let Some(uids) = self.pods_by_node.get_mut(&old.node) {
                        uids.remove(uid);
                    }
                }
                self.pods_by_node
                    .entry(pod.node.clone())
                    .or_default()
                    .insert(uid.to_owned());
                self.pods.insert(uid.to_owned(), pod);
            }
            Resource::Deployments => {
                let key = (
                    str_at(object, "/metadata/namespace"),
                    str_at(object, "/metadata/name"),
                );
                let deployment = (!deleted).then(|| deployment_from(key.clone(), object));
                if self.deployments.get(&key) != deployment.as_ref() {
                    self.changed = true;
                    match deployment {
                        Some(deployment) => self.deployments.insert(key, deployment),
                        None => self.deployments.remove(&key),
                    };
                }
            }
            Resource::Events => {
                if deleted {
                    return;
                }
                if self.seen_events.insert(event_key(object)) {
                    self.push_event(event_from(object));
                }
            }
        }
    }

    /// Adds a line to the event pane (the dashboard's own, or the cluster's).
    pub fn push_event(&mut self, event: EventLine) {
        self.changed = true;
        self.events.push_back(event);
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        if self.seen_events.len() > EVENTS_KEPT * 20 {
            self.seen_events.clear();
        }
    }

    /// Replaces node usage with a metrics list (`metrics.k8s.io` NodeMetrics).
    pub fn set_usage(&mut self, items: &[Value]) {
        let usage: BTreeMap<String, Usage> = items
            .iter()
            .filter_map(|item| {
                let name = item["metadata"]["name"].as_str()?;
                let usage = Usage {
                    cpu: quantity_millicores(&item["usage"]["cpu"]),
                    memory: quantity_bytes(&item["usage"]["memory"]),
                };
                Some((name.to_owned(), usage))
            })
            .collect();
        if usage != self.usage {
            self.usage = usage;
            self.changed = true;
        }
    }

    /// A node's CPU and memory in use (zero until its first report).
    pub fn usage_of(&self, node: &str) -> Usage {
        self.usage.get(node).copied().unwrap_or_default()
    }

    /// Whether anything on screen changed since the last call (heartbeats that change nothing
    /// visible do not count), so the runtime redraws only when there is something to show.
    pub fn take_changes(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The pods bound to `node`, or not scheduled yet (`None`).
    pub fn pods_on<'a>(&'a self, node: Option<&String>) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_by_node
            .get(&node.cloned())
            .into_iter()
            .flatten()
            .filter_map(|uid| self.pods.get(uid))
    }

    /// Forgets ghosts older than [`GHOST`].
    pub fn expire(&mut self, now: Instant) {
        let before = self.ghosts.len();
        self.ghosts
            .retain(|ghost| now.saturating_duration_since(ghost.gone_at) < GHOST);
        self.changed |= self.ghosts.len() != before;
    }

    /// Whether anything on screen is animating (a pulse or a ghost).
    pub fn is_animating(&self, now: Instant) -> bool {
        let recent = |at: Instant| now.saturating_duration_since(at) < PULSE;
        !self.ghosts.is_empty()
            || self.pods.values().any(|p| recent(p.changed_at))
            || self.nodes.values().any(|n| recent(n.changed_at))
    }

    fn remove_pod(&mut self, uid: &str, now: Instant) {
        if let Some(pod) = self.pods.remove(uid) {
            self.changed = true;
            if let Some(uids) = self.pods_by_node.get_mut(&pod.node) {
                uids.remove(uid);
                if uids.is_empty() {
                    self.pods_by_node.remove(&pod.node);
                }
            }
            if pod.node.is_some() {
                self.ghosts.push(Ghost { pod, gone_at: now });
            }
        }
    }
}

fn quantity_millicores(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(protocol::quantity::millicores)
        .unwrap_or(0)
}

fn quantity_bytes(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(protocol::quantity::parse)
        .map_or(0, |bytes| bytes as i64)
}

fn node_from(object: &Value, master_host: &str, now: Instant) -> Node {
    let condition = object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map_or(Condition::Unknown, |c| match c["status"].as_str() {
            Some("True") => Condition::Ready,
            Some("False") => Condition::NotReady,
            _ => Condition::Unknown,
        });
    let model = str_at(object, "/metadata/annotations/bramble.dev~1board-model");
    let board = match model.strip_prefix("Raspberry ") {
        Some(short) => short.to_owned(),
        None if !model.is_empty() => model,
        None => str_at(object, "/status/nodeInfo/osImage"),
    };
    let address = object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_owned();
    let taints = object["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{}:{}", str_at(t, "/key"), str_at(t, "/effect")))
        .collect();
    let arch = match str_at(object, "/status/nodeInfo/architecture") {
        arch if arch.is_empty() => str_at(object, "/metadata/labels/kubernetes.io~1arch"),
        arch => arch,
    };
    Node {
        name: str_at(object, "/metadata/name"),
        condition,
        killed: object["metadata"]["annotations"][CHAOS_ANNOTATION] == "kill",
        unschedulable: object["spec"]["unschedulable"] == true,
        is_master: is_master_node(object, master_host),
        arch,
        board,
        address,
        cpu_allocatable: quantity_millicores(&object["status"]["allocatable"]["cpu"]),
        memory_allocatable: quantity_bytes(&object["status"]["allocatable"]["memory"]),
        kernel: str_at(object, "/status/nodeInfo/kernelVersion"),
        taints,
        created: str_at(object, "/metadata/creationTimestamp"),
        changed_at: now,
    }
}

fn pod_from(object: &Value, now: Instant) -> Pod {
    let owner = owner_of(object);
    let labels: BTreeMap<String, String> = object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let app = app_of(object, &owner);
    let statuses: Vec<&Value> = object["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let images = object["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| str_at(c, "/image"))
        .collect::<Vec<_>>();
    Pod {
        uid: str_at(object, "/metadata/uid"),
        namespace: str_at(object, "/metadata/namespace"),
        name: str_at(object, "/metadata/name"),
        node: object["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        owner,
        app,
        labels,
        state: pod_state(object),
        ready: statuses.iter().filter(|s| s["ready"] == true).count() as u32,
        containers: images.len() as u32,
        restarts: statuses
            .iter()
            .map(|s| s["restartCount"].as_u64().unwrap_or(0) as u32)
            .sum(),
        ip: str_at(object, "/status/podIP"),
        images,
        volumes: object["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(volume_summary)
            .collect(),
        created: str_at(object, "/metadata/creationTimestamp"),
        changed_at: now,
    }
}

/// A volume in a few words: its name and its source (`www: claim www-web-0`).
fn volume_summary(volume: &Value) -> String {
    let name = str_at(volume, "/name");
    let source = volume
        .as_object()
        .into_iter()
        .flatten()
        .find(|(key, _)| key.as_str() != "name");
    let backing = match source {
        Some((kind, spec)) if kind == "persistentVolumeClaim" => {
            format!("claim {}", str_at(spec, "/claimName"))
        }
        Some((kind, spec)) if kind == "configMap" || kind == "secret" => {
            let named = str_at(spec, "/name");
            let named = if named.is_empty() {
                str_at(spec, "/secretName")
            } else {
                named
            };
            format!("{kind} {named}")
        }
        Some((kind, spec)) if kind == "hostPath" => format!("hostPath {}", str_at(spec, "/path")),
        Some((kind, spec)) if kind == "nfs" => {
            format!("nfs {}:{}", str_at(spec, "/server"), str_at(spec, "/path"))
        }
        Some((kind, _)) => kind.clone(),
        None => "emptyDir".to_owned(),
    };
    format!("{name}: {backing}")
}

fn deployment_from((namespace, name): (String, String), object: &Value) -> Deployment {
    let count = |pointer: &str| object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0);
    Deployment {
        namespace,
        name,
        desired: object
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1),
        ready: count("/status/readyReplicas"),
        up_to_date: count("/status/updatedReplicas"),
        available: count("/status/availableReplicas"),
    }
}

/// An event's identity for the pane: an aggregated event that comes back with a higher
/// count is shown again.
fn event_key(object: &Value) -> String {
    format!(
        "{}/{}",
        str_at(object, "/metadata/uid"),
        object["count"].as_i64().unwrap_or(1)
    )
}

/// What a list entry is known by: nodes by name, pods by UID, deployments by namespace/name.
fn list_key(resource: Resource, object: &Value) -> String {
    match resource {
        Resource::Pods => str_at(object, "/metadata/uid"),
        Resource::Deployments => format!(
            "{}/{}",
            str_at(object, "/metadata/namespace"),
            str_at(object, "/metadata/name")
        ),
        Resource::Nodes | Resource::Events => str_at(object, "/metadata/name"),
    }
}

/// When an event last happened.
fn event_time(object: &Value) -> String {
    [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .map(|pointer| str_at(object, pointer))
    .find(|time| !time.is_empty())
    .unwrap_or_default()
}

fn event_from(object: &Value) -> EventLine {
    let time = event_time(object);
    let kind = str_at(object, "/involvedObject/kind").to_lowercase();
    EventLine {
        time,
        warning: object["type"] == "Warning",
        reason: str_at(object, "/reason"),
        object: format!("{kind}/{}", str_at(object, "/involvedObject/name")),
        message: str_at(object, "/message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pods_volumes_are_named_with_their_source() {
        let mut object = pod_json("u1", "web-0", Some("pi-1"), "Running");
        object["spec"]["volumes"] = json!([
            {"name": "www", "persistentVolumeClaim": {"claimName": "www-web-0"}},
            {"name": "conf", "configMap": {"name": "nginx"}},
            {"name": "certs", "secret": {"secretName": "tls"}},
            {"name": "share", "nfs": {"server": "10.0.0.5", "path": "/exports"}},
            {"name": "scratch", "emptyDir": {}},
        ]);
        assert_eq!(
            pod_from(&object, Instant::now()).volumes,
            [
                "www: claim www-web-0",
                "conf: configMap nginx",
                "certs: secret tls",
                "share: nfs 10.0.0.5:/exports",
                "scratch: emptyDir",
            ]
        );
    }

    fn pod_json(uid: &str, name: &str, node: Option<&str>, phase: &str) -> Value {
        json!({
            "metadata": {"uid": uid, "name": name, "namespace": "default",
                "labels": {"app": "web", "pod-template-hash": "5d8f"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "demo:1"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"ready": true, "restartCount": 2}]},
        })
    }

    #[test]
    fn pods_boil_down_to_what_the_screen_shows() {
        let now = Instant::now();
        let pod = pod_from(
            &pod_json("u1", "web-5d8f-abcde", Some("pi-1"), "Running"),
            now,
        );
        assert_eq!(
            pod.owner,
            Owner {
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(pod.state, PodState::Running);
        assert_eq!((pod.ready, pod.containers, pod.restarts), (1, 1, 2));
        assert_eq!(pod.app, "web");
        let mut crashing = pod_json("u2", "x", Some("pi-1"), "Running");
        crashing["status"]["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff"}});
        assert_eq!(pod_state(&crashing), PodState::CrashLoopBackOff);
        let mut creating = pod_json("u3", "x", Some("pi-1"), "Pending");
        creating["status"]["conditions"] = json!([]);
        assert_eq!(pod_state(&creating), PodState::ContainerCreating);
        assert_eq!(
            pod_state(&pod_json("u4", "x", None, "Pending")),
            PodState::Pending
        );
        let mut going = pod_json("u5", "x", Some("pi-1"), "Running");
        going["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
        assert_eq!(pod_state(&going), PodState::Terminating);
    }

    #[test]
    fn deleted_pods_linger_as_ghosts_and_moves_pulse() {
        let start = Instant::now();
        let mut cluster = Cluster::new("10.99.0.1");
        let pod = pod_json("u1", "web-1", Some("pi-1"), "Running");
        cluster.apply(Resource::Pods, WatchKind::Added, &pod, start);
        let later = start + Duration::from_secs(10);
        assert!(!cluster.is_animating(later));
        assert!(cluster.take_changes());
        cluster.apply(Resource::Pods, WatchKind::Modified, &pod, later);
        assert_eq!(cluster.pods["u1"].changed_at, start, "no change, no pulse");
        assert!(!cluster.take_changes(), "nothing to redraw");
        cluster.apply(Resource::Pods, WatchKind::Deleted, &pod, later);
        assert_eq!(cluster.ghosts.len(), 1);
        assert!(cluster.is_animating(later));
        cluster.expire(later + GHOST);
        assert!(cluster.ghosts.is_empty());
        // A re-list that no longer holds a pod removes it too.
        cluster.apply(Resource::Pods, WatchKind::Added, &pod, later);
        cluster.list_page(Resource::Pods, &[], true, true, later);
        assert!(cluster.pods.is_empty());
        assert_eq!(cluster.pods_on(Some(&"pi-1".to_owned())).count(), 0);
        assert_eq!(cluster.ghosts.len(), 1);
        // Lists of different kinds arrive interleaved, page by page.
        let other = pod_json("u2", "web-2", Some("pi-2"), "Running");
        cluster.list_page(
            Resource::Pods,
            std::slice::from_ref(&pod),
            true,
            false,
            later,
        );
        cluster.list_page(Resource::Events, &[], true, true, later);
        cluster.list_page(Resource::Pods, &[other], false, true, later);
        assert_eq!(cluster.pods.len(), 2);
    }

    #[test]
    fn nodes_know_chaos_cordons_and_the_master() {
        let now = Instant::now();
        let mut cluster = Cluster::new("10.99.0.1");
        let node = json!({
            "metadata": {"name": "pi-1", "annotations": {"bramble.dev/chaos": "kill",
                "bramble.dev/board-model": "Raspberry Pi 4 Model B Rev 1.4"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.99.0.1"}],
                "allocatable": {"cpu": "4", "memory": "1Gi"},
                "nodeInfo": {"architecture": "arm64"}},
        });
        cluster.apply(Resource::Nodes, WatchKind::Added, &node, now);
        let pi = &cluster.nodes["pi-1"];
        assert!(pi.killed && pi.unschedulable && pi.is_master);
        assert_eq!(pi.status_word(), "Ready");
        assert_eq!(pi.health(false), NodeHealth::NotReady);
        assert_eq!(
            (pi.board.as_str(), pi.cpu_allocatable, pi.memory_allocatable),
            ("Pi 4 Model B Rev 1.4", 4000, 1 << 30)
        );
    }

    #[test]
    fn events_are_shown_once_per_count() {
        let now = Instant::now();
        let mut cluster = Cluster::new("");
        let mut event = json!({"metadata": {"uid": "e1"}, "type": "Warning", "reason": "BackOff",
            "involvedObject": {"kind": "Pod", "name": "web-1"}, "message": "restarting", "count": 1});
        cluster.apply(Resource::Events, WatchKind::Added, &event, now);
        cluster.apply(Resource::Events, WatchKind::Added, &event, now);
        event["count"] = json!(2);
        cluster.apply(Resource::Events, WatchKind::Modified, &event, now);
        assert_eq!(cluster.events.len(), 2);
        assert_eq!(cluster.events[0].object, "pod/web-1");
        assert!(cluster.events[0].warning);
    }
}
