//! The controllers' shared in-memory view of the cluster, kept current from the store's change feed.
//!
//! Pods are the one resource that grows with the cluster, so they are held as a compact
//! [`PodInfo`] (what the controllers and the scheduler decide on) rather than whole objects;
//! everything else the controllers read is held as the stored object itself, shared with the
//! change feed (`Arc<Value>`), never copied and never mutated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::store::{Change, EventType};
use protocol::quantity;

/// A namespaced object's key: (namespace, name); cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

/// Storage keys of the resources the view holds whole.
pub const CACHED: &[&str] = &[
    "core/nodes",
    "core/namespaces",
    "core/services",
    "core/replicationcontrollers",
    "core/resourcequotas",
    "core/persistentvolumeclaims",
    "apps/replicasets",
    "apps/deployments",
    "apps/daemonsets",
    "apps/statefulsets",
    "apps/controllerrevisions",
    "batch/jobs",
    "batch/cronjobs",
    "autoscaling/horizontalpodautoscalers",
    "core/persistentvolumes",
    "core/persistentvolumeclaims",
    "storage.k8s.io/storageclasses",
    "policy/poddisruptionbudgets",
    "certificates.k8s.io/certificatesigningrequests",
    "rbac.authorization.k8s.io/clusterroles",
];

/// A reference from an object to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// The owner's kind.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// Whether the owner is the managing controller.
    pub controller: bool,
    /// Whether the owner's foreground deletion waits for this dependent.
    pub block_owner_deletion: bool,
}

/// A toleration, as the taint checks need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Toleration {
    /// Empty matches every key (with operator Exists).
    pub key: String,
    /// `Equal` or `Exists`.
    pub operator: String,
    /// Compared with Equal.
    pub value: String,
    /// Empty matches every effect.
    pub effect: String,
    /// For NoExecute: how long the pod may stay; `None` is forever.
    pub seconds: Option<i64>,
}

impl Toleration {
    /// The tolerations of a pod spec.
    pub fn of_spec(spec: &Value) -> Vec<Toleration> {
        spec["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| Toleration {
                key: str_of(&t["key"]),
                operator: t["operator"].as_str().unwrap_or("Equal").to_owned(),
                value: str_of(&t["value"]),
                effect: str_of(&t["effect"]),
                seconds: t["tolerationSeconds"].as_i64(),
            })
            .collect()
    }

    /// Whether this toleration tolerates a taint.
    pub fn tolerates(&self, taint: &Value) -> bool {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if !self.effect.is_empty() && self.effect != effect {
            return false;
        }
        let key = taint["key"].as_str().unwrap_or_default();
        if self.key.is_empty() {
            return self.operator == "Exists";
        }
        if self.key != key {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => true,
            _ => self.value == taint["value"].as_str().unwrap_or_default(),
        }
    }
}

/// What the controllers and the scheduler need to know of a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// uid.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Owner references.
    pub owners: Vec<OwnerRef>,
    /// The node it is bound to, or empty.
    pub node: String,
    /// `status.phase`.
    pub phase: String,
    /// Whether the Ready condition is True.
    pub ready: bool,
    /// When the Ready condition last changed, as Unix seconds.
    pub ready_since: Option<i64>,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// Creation time, as Unix seconds.
    pub created: i64,
    /// Requested CPU in millicores (containers summed, init containers as the maximum).
    pub cpu_request: i64,
    /// Requested memory in bytes.
    pub memory_request: i64,
    /// CPU limit in millicores (0 when a container has none).
    pub cpu_limit: i64,
    /// Memory limit in bytes (0 when a container has none).
    pub memory_limit: i64,
    /// Host ports it takes: (protocol, port).
    pub host_ports: Vec<(String, i64)>,
    /// Its pod IP, or empty.
    pub ip: String,
    /// Named container ports: (name, port, protocol).
    pub ports: Vec<(String, i64, String)>,
    /// Its tolerations.
    pub tolerations: Vec<Toleration>,
    /// `spec.affinity` when it holds pod (anti-)affinity, which placement of other pods checks.
    pub pod_affinity: Option<Value>,
    /// `spec.hostname` and `spec.subdomain`.
    pub hostname: (String, String),
    /// Container restarts, summed.
    pub restarts: i64,
    /// The PersistentVolumeClaims its volumes name (ephemeral ones as `<pod>-<volume>`).
    pub claims: Vec<String>,
    /// `status.nominatedNodeName`: where preemption is making room for it, while unbound.
    pub nominated_node: String,
    /// `spec.priority` (0 when unset).
    pub priority: i64,
    /// `spec.preemptionPolicy` is `Never`.
    pub never_preempts: bool,
    /// The pod's `DisruptionTarget` condition is True (the scheduler or an eviction is
    /// removing it).
    pub disruption_target: bool,
}

impl PodInfo {
    /// Whether it still runs or will: not being deleted and not finished.
    pub fn is_active(&self) -> bool {
        !self.deleting && self.phase != "Succeeded" && self.phase != "Failed"
    }

    /// The uid of its managing controller, if any.
    pub fn controller_uid(&self) -> Option<&str> {
        self.owners
            .iter()
            .find(|o| o.controller)
            .map(|o| o.uid.as_str())
    }

    /// Whether it has been Ready for at least `min_ready_seconds` at `now` (Unix seconds).
    pub fn is_available(&self, min_ready_seconds: i64, now: i64) -> bool {
        self.ready
            && (min_ready_seconds == 0
                || self
                    .ready_since
                    .is_some_and(|since| since + min_ready_seconds <= now))
    }

    /// Reads a stored pod.
    pub fn from_object(pod: &Value) -> PodInfo {
        let meta = &pod["metadata"];
        let spec = &pod["spec"];
        let status = &pod["status"];
        let ready_condition = protocol::node::condition(pod, "Ready");
        let containers = spec["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let init = spec["initContainers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let resource = |c: &Value, kind: &str, name: &str, scale: f64| -> Option<i64> {
            c["resources"][kind][name]
                .as_str()
                .and_then(quantity::parse)
                .map(|q| (q * scale).ceil() as i64)
        };
        let total = |kind: &str, name: &str, scale: f64, all_or_nothing: bool| -> i64 {
            let values: Vec<Option<i64>> = containers
                .iter()
                .map(|c| resource(c, kind, name, scale))
                .collect();
            if all_or_nothing && values.iter().any(Option::is_none) {
                return 0;
            }
            let sum: i64 = values.into_iter().flatten().sum();
            let init_max = init
                .iter()
                .filter_map(|c| resource(c, kind, name, scale))
                .max()
                .unwrap_or(0);
            sum.max(init_max)
        };
        let mut host_ports = Vec::new();
        let mut ports = Vec::new();
        for container in containers {
            for port in container["ports"].as_array().into_iter().flatten() {
                let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
                if let Some(host_port) = port["hostPort"].as_i64().filter(|p| *p > 0) {
                    host_ports.push((protocol.clone(), host_port));
                }
                if let Some(number) = port["containerPort"].as_i64() {
                    ports.push((str_of(&port["name"]), number, protocol));
                }
            }
        }
        let affinity = &spec["affinity"];
        let pod_affinity = (affinity.get("podAffinity").is_some()
            || affinity.get("podAntiAffinity").is_some())
        .then(|| affinity.clone());
        PodInfo {
            namespace: str_of(&meta["namespace"]),
            name: str_of(&meta["name"]),
            uid: str_of(&meta["uid"]),
            labels: string_map(&meta["labels"]),
            owners: owner_refs(pod),
            node: str_of(&spec["nodeName"]),
            phase: status["phase"].as_str().unwrap_or("Pending").to_owned(),
            ready: ready_condition.is_some_and(|c| c["status"] == "True"),
            ready_since: ready_condition
                .and_then(|c| c["lastTransitionTime"].as_str())
                .and_then(unix_seconds),
            deleting: meta.get("deletionTimestamp").is_some_and(|d| !d.is_null()),
            created: meta["creationTimestamp"]
                .as_str()
                .and_then(unix_seconds)
                .unwrap_or(0),
            cpu_request: total("requests", "cpu", 1000.0, false),
            memory_request: total("requests", "memory", 1.0, false),
            cpu_limit: total("limits", "cpu", 1000.0, true),
            memory_limit: total("limits", "memory", 1.0, true),
            host_ports,
            ip: str_of(&status["podIP"]),
            ports,
            tolerations: Toleration::of_spec(spec),
            pod_affinity,
            hostname: (str_of(&spec["hostname"]), str_of(&spec["subdomain"])),
            restarts: status["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum(),
            claims: claims_of(pod),
            nominated_node: str_of(&status["nominatedNodeName"]),
            priority: spec["priority"].as_i64().unwrap_or(0),
            never_preempts: spec["preemptionPolicy"] == "Never",
            disruption_target: status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True"),
        }
    }
}

/// The claims a pod's volumes use: `persistentVolumeClaim.claimName`, and for an ephemeral
/// volume the claim made for it, `<pod>-<volume>`.
pub fn claims_of(pod: &Value) -> Vec<String> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|volume| {
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                return Some(claim.to_owned());
            }
            let name = volume["name"].as_str()?;
            volume["ephemeral"]
                .is_object()
                .then(|| format!("{pod_name}-{name}"))
        })
        .collect()
}

/// A string or empty.
pub fn str_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A JSON object of strings as a sorted map.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// An RFC 3339 time as Unix seconds.
pub fn unix_seconds(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// The owner references of an object.
pub fn owner_refs(object: &Value) -> Vec<OwnerRef> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| OwnerRef {
            kind: str_of(&r["kind"]),
            name: str_of(&r["name"]),
            uid: str_of(&r["uid"]),
            controller: r["controller"] == true,
            block_owner_deletion: r["blockOwnerDeletion"] == true,
        })
        .collect()
}

/// What the active pods on one node request, for the scheduler.
#[derive(Debug, Clone, Default)]
pub struct NodeUsage {
    /// CPU requested, millicores.
    pub cpu: i64,
    /// Memory requested, bytes.
    pub memory: i64,
    /// Active pods.
    pub pods: i64,
    /// Host ports taken: (protocol, port).
    pub host_ports: Vec<(String, i64)>,
}

impl NodeUsage {
    /// Counts a pod in (`sign` 1) or out (-1).
    pub fn add(&mut self, pod: &PodInfo, sign: i64) {
        self.cpu += sign * pod.cpu_request;
        self.memory += sign * pod.memory_request;
        self.pods += sign;
        for port in &pod.host_ports {
            if sign > 0 {
                self.host_ports.push(port.clone());
            } else if let Some(index) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(index);
            }
        }
    }
}

/// The view itself: read under the lock of [`super::Runtime`].
#[derive(Default)]
pub struct View {
    /// The store revision everything here reflects.
    pub revision: u64,
    /// Every pod.
    pub pods: HashMap<Key, Arc<PodInfo>>,
    /// Pods by the node they are bound to.
    pub pods_by_node: HashMap<String, HashSet<Key>>,
    /// Pods by namespace.
    pub pods_by_namespace: HashMap<String, HashSet<Key>>,
    /// Pods by the uid of each owner.
    pub pods_by_owner: HashMap<String, HashSet<Key>>,
    /// Pods without a controlling owner, by namespace (candidates for adoption).
    pub orphan_pods: HashMap<String, HashSet<Key>>,
    /// Pods that carry pod affinity or anti-affinity terms.
    pub pods_with_affinity: HashSet<Key>,
    /// Unbound pods nominated to a node by preemption, by that node.
    pub nominated_pods: HashMap<String, HashSet<Key>>,
    /// Whole objects of the [`CACHED`] resources, by storage key.
    pub objects: HashMap<&'static str, BTreeMap<Key, Arc<Value>>>,
    /// Cached objects by the uid of each owner: (storage key, key).
    pub dependents: HashMap<String, HashSet<(&'static str, Key)>>,
    /// Cached objects by uid.
    pub uids: HashMap<String, (&'static str, Key)>,
    /// What the active pods bound to each node request.
    pub node_usage: HashMap<String, NodeUsage>,
    /// Each node's allocatable (CPU millicores, memory bytes, pods), parsed once.
    pub node_allocatable: HashMap<String, (i64, i64, i64)>,
    /// When each node was last heard from (lease renewal or status heartbeat), on this
    /// master's clock: node clocks are not trusted (a Pi has no real-time clock).
    pub node_seen: HashMap<String, Instant>,
}

impl View {
    /// The cached objects of one resource.
    pub fn list(&self, resource: &str) -> impl Iterator<Item = &Arc<Value>> {
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The cached objects of one resource in one namespace.
    pub fn list_in<'a>(
        &'a self,
        resource: &str,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        self.objects.get(resource).into_iter().flat_map(move |m| {
            m.range((namespace.to_owned(), String::new())..)
                .take_while(move |((ns, _), _)| ns == namespace)
                .map(|(_, v)| v)
        })
    }

    /// One cached object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects
            .get(resource)?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The pods of a namespace.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.pods_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// The pods that name `uid` as an owner.
    pub fn pods_owned_by<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.pods_by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// Pods of a namespace without a controlling owner.
    pub fn orphans_in<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.orphan_pods
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// The pods bound to a node.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// Whether any object the view knows (cached or pod) has this uid; `None` when the owner's
    /// kind is not one the view holds.
    pub fn owner_exists(&self, namespace: &str, owner: &OwnerRef) -> Option<bool> {
        let resource = match owner.kind.as_str() {
            "Node" => "core/nodes",
            "Namespace" => "core/namespaces",
            "Service" => "core/services",
            "ReplicationController" => "core/replicationcontrollers",
            "ReplicaSet" => "apps/replicasets",
            "Deployment" => "apps/deployments",
            "DaemonSet" => "apps/daemonsets",
            "StatefulSet" => "apps/statefulsets",
            "Job" => "batch/jobs",
            "CronJob" => "batch/cronjobs",
            "Pod" => {
                return Some(
                    self.pods
                        .get(&(namespace.to_owned(), owner.name.clone()))
                        .is_some_and(|p| p.uid == owner.uid),
                )
            }
            _ => return None,
        };
        let scope = if resource == "core/nodes" || resource == "core/namespaces" {
            ""
        } else {
            namespace
        };
        Some(
            self.get(resource, scope, &owner.name)
                .is_some_and(|o| o["metadata"]["uid"] == owner.uid.as_str()),
        )
    }

    /// Applies one change from the store.
    pub fn apply(&mut self, change: &Change) {
        let key = (change.namespace.clone(), change.name.clone());
        if change.resource == "core/pods" {
            self.remove_pod(&key);
            if change.event != EventType::Deleted {
                self.insert_pod(key, PodInfo::from_object(&change.object));
            }
        } else if change.resource == "coordination.k8s.io/leases" {
            if change.namespace == "kube-node-lease" && change.event != EventType::Deleted {
                self.node_seen.insert(change.name.clone(), Instant::now());
            }
        } else if let Some(resource) = CACHED.iter().find(|r| **r == change.resource) {
            if *resource == "core/nodes" && heartbeat_changed(change) {
                self.node_seen.insert(change.name.clone(), Instant::now());
            }
            self.remove_object(resource, &key);
            if change.event == EventType::Deleted {
                if *resource == "core/nodes" {
                    self.node_seen.remove(&change.name);
                }
            } else {
                self.insert_object(resource, key, change.object.clone());
            }
        }
        self.revision = self.revision.max(change.revision);
    }

    /// Puts a pod in the view.
    pub fn insert_pod(&mut self, key: Key, pod: PodInfo) {
        if !pod.node.is_empty() && pod.is_active() {
            self.node_usage
                .entry(pod.node.clone())
                .or_default()
                .add(&pod, 1);
        }
        if !pod.node.is_empty() {
            self.pods_by_node
                .entry(pod.node.clone())
                .or_default()
                .insert(key.clone());
        }
        self.pods_by_namespace
            .entry(pod.namespace.clone())
            .or_default()
            .insert(key.clone());
        for owner in &pod.owners {
            self.pods_by_owner
                .entry(owner.uid.clone())
                .or_default()
                .insert(key.clone());
        }
        if pod.controller_uid().is_none() {
            self.orphan_pods
                .entry(pod.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        if pod.pod_affinity.is_some() {
            self.pods_with_affinity.insert(key.clone());
        }
        if pod.node.is_empty() && !pod.nominated_node.is_empty() && pod.is_active() {
            self.nominated_pods
                .entry(pod.nominated_node.clone())
                .or_default()
                .insert(key.clone());
        }
        self.pods.insert(key, Arc::new(pod));
    }

    /// Takes a pod out of the view; returns it.
    pub fn remove_pod(&mut self, key: &Key) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(key)?;
        if !pod.node.is_empty() && pod.is_active() {
            if let Some(usage) = self.node_usage.get_mut(&pod.node) {
                usage.add(&pod, -1);
                if usage.pods == 0 {
                    self.node_usage.remove(&pod.node);
                }
            }
        }
        remove_from(&mut self.pods_by_node, &pod.node, key);
        remove_from(&mut self.pods_by_namespace, &pod.namespace, key);
        for owner in &pod.owners {
            remove_from(&mut self.pods_by_owner, &owner.uid, key);
        }
        remove_from(&mut self.orphan_pods, &pod.namespace, key);
        self.pods_with_affinity.remove(key);
        remove_from(&mut self.nominated_pods, &pod.nominated_node, key);
        Some(pod)
    }

    /// Puts a whole object in the view.
    pub fn insert_object(&mut self, resource: &'static str, key: Key, object: Arc<Value>) {
        for owner in owner_refs(&object) {
            self.dependents
                .entry(owner.uid)
                .or_default()
                .insert((resource, key.clone()));
        }
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            self.uids.insert(uid.to_owned(), (resource, key.clone()));
        }
        if resource == "core/nodes" {
            self.node_allocatable
                .insert(key.1.clone(), allocatable(&object));
        }
        self.objects
            .entry(resource)
            .or_default()
            .insert(key, object);
    }

    fn remove_object(&mut self, resource: &'static str, key: &Key) {
        let Some(object) = self.objects.get_mut(resource).and_then(|m| m.remove(key)) else {
            return;
        };
        for owner in owner_refs(&object) {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(&(resource, key.clone()));
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            self.uids.remove(uid);
        }
        if resource == "core/nodes" {
            self.node_allocatable.remove(&key.1);
        }
    }
}

/// A node's allocatable (CPU millicores, memory bytes, pods), falling back to its capacity.
fn allocatable(node: &Value) -> (i64, i64, i64) {
    let amount = |resource: &str| {
        node["status"]["allocatable"][resource]
            .as_str()
            .or_else(|| node["status"]["capacity"][resource].as_str())
    };
    (
        amount("cpu").and_then(quantity::millicores).unwrap_or(0),
        amount("memory")
            .and_then(quantity::parse)
            .map(|q| q as i64)
            .unwrap_or(0),
        amount("pods")
            .and_then(quantity::parse)
            .map(|q| q as i64)
            .unwrap_or(0),
    )
}

fn remove_from(index: &mut HashMap<String, HashSet<Key>>, at: &str, key: &Key) {
    if let Some(set) = index.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            index.remove(at);
        }
    }
}

fn ready_heartbeat(node: &Value) -> Option<&Value> {
    protocol::node::condition(node, "Ready").map(|c| &c["lastHeartbeatTime"])
}

/// Whether a node change carries a new heartbeat from the node itself.
fn heartbeat_changed(change: &Change) -> bool {
    if change.event == EventType::Deleted {
        return false;
    }
    let now = ready_heartbeat(&change.object);
    match &change.previous {
        Some(previous) => now.is_some() && now != ready_heartbeat(previous),
        None => change.event == EventType::Added,
    }
}
