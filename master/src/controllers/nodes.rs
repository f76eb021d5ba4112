//! Node health: lease monitoring, NotReady and taints, eviction, pod CIDRs, and pods of deleted nodes.
//!
//! ```text
//!             lease renewed / heartbeat            no word for the grace period
//!   Ready ◀───────────────────────────────── Unknown ◀────────────────────────── Ready
//!   (agent reports)                          │ conditions Unknown, pods NotReady,
//!                                            │ taint node.kubernetes.io/unreachable
//!                                            ▼ (NoSchedule + NoExecute)
//!                       pods not tolerating the taint (or whose tolerationSeconds ran out)
//!                       are deleted; their controllers replace them on other nodes.
//!   A node that reports Ready=False gets node.kubernetes.io/not-ready instead; a cordoned node
//!   node.kubernetes.io/unschedulable:NoSchedule.
//! ```
//!
//! Times are this master's observations (when it saw the lease change), never the node's own
//! clock: a Pi without a real-time clock may think it is 1970.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::view::{Key, View};
use super::{condition, key_of, now_time, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::store::Change;
use crate::HealthTimings;

/// The taint of a node the master has not heard from.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports it is not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a cordoned node.
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The node lifecycle controller. Its keys are ("", node name).
pub struct NodeLifecycle {
    timings: HealthTimings,
    missing_since: Mutex<HashMap<String, Instant>>,
}

impl NodeLifecycle {
    /// A controller with the profile's timings.
    pub fn new(timings: HealthTimings) -> Self {
        NodeLifecycle {
            timings,
            missing_since: Mutex::new(HashMap::new()),
        }
    }

    /// Force-deletes pods bound to a node that no longer exists, once it has stayed gone for a
    /// grace period (it may be re-registering).
    fn collect_orphaned_pods(&self, ctx: &Context, node: &str) -> Result<Action, ApiError> {
        let since = *self
            .missing_since
            .lock()
            .expect("missing lock")
            .entry(node.to_owned())
            .or_insert_with(Instant::now);
        let wait = self.timings.node_monitor_grace;
        if since.elapsed() < wait {
            return Ok(Action::RequeueAfter(wait - since.elapsed()));
        }
        let pods: Vec<_> = ctx.view().pods_on(node).cloned().collect();
        for pod in pods {
            ctx.delete(
                "core/pods",
                &pod.namespace,
                &pod.name,
                &DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..DeleteOptions::default()
                },
            )?;
        }
        self.missing_since
            .lock()
            .expect("missing lock")
            .remove(node);
        Ok(Action::Done)
    }
}

/// An IPv4 CIDR as (network, prefix length), or `None` when it is not one.
fn ipv4_network(cidr: &str) -> Option<(u32, u32)> {
    let (address, bits) = cidr.split_once('/')?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some((u32::from(address.parse::<Ipv4Addr>().ok()?) & mask, bits))
}

/// The next free pod CIDR of `mask_bits` in `cluster_cidr` that overlaps none of `taken`
/// (an administrator may have given a Node a range of another size).
pub fn next_pod_cidr(
    cluster_cidr: &str,
    mask_bits: u32,
    taken: &HashSet<String>,
) -> Option<String> {
    let (network, bits) = ipv4_network(cluster_cidr)?;
    if bits > mask_bits || mask_bits > 30 {
        return None;
    }
    let taken: Vec<(u32, u32)> = taken.iter().filter_map(|c| ipv4_network(c)).collect();
    let overlaps = |(a, a_bits): (u32, u32), (b, b_bits): (u32, u32)| {
        let shorter = a_bits.min(b_bits);
        let mask = u32::MAX.checked_shl(32 - shorter).unwrap_or(0);
        a & mask == b & mask
    };
    let count = 1u32 << (mask_bits - bits);
    let size = 1u32 << (32 - mask_bits);
    (0..count)
        .map(|i| (network + i * size, mask_bits))
        .find(|candidate| !taken.iter().any(|t| overlaps(*candidate, *t)))
        .map(|(address, bits)| format!("{}/{bits}", Ipv4Addr::from(address)))
}

fn taint(key: &str, effect: &str) -> Value {
    let mut taint = json!({"key": key, "effect": effect});
    if effect == "NoExecute" {
        taint["timeAdded"] = json!(now_time());
    }
    taint
}

impl Reconciler for NodeLifecycle {
    fn name(&self) -> &'static str {
        "node-controller"
    }

    fn resync_every(&self) -> Duration {
        self.timings.node_monitor_period
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "core/nodes" => vec![(String::new(), change.name.clone())],
            "coordination.k8s.io/leases" if change.namespace == "kube-node-lease" => {
                vec![(String::new(), change.name.clone())]
            }
            "core/pods" => {
                let node = change.object["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default();
                let tainted = view.get("core/nodes", "", node).is_some_and(|n| {
                    n["spec"]["taints"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["effect"] == "NoExecute"))
                });
                if tainted || (!node.is_empty() && view.get("core/nodes", "", node).is_none()) {
                    vec![(String::new(), node.to_owned())]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        let mut keys: Vec<Key> = view.list("core/nodes").map(|n| key_of(n)).collect();
        for node in view.pods_by_node.keys() {
            if view.get("core/nodes", "", node).is_none() {
                keys.push((String::new(), node.clone()));
            }
        }
        keys
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let name = &key.1;
        let (node, seen) = {
            let view = ctx.view();
            (
                view.get("core/nodes", "", name).cloned(),
                view.node_seen.get(name).copied(),
            )
        };
        let Some(mut node) = node.map(|n| (*n).clone()) else {
            return self.collect_orphaned_pods(ctx, name);
        };
        self.missing_since
            .lock()
            .expect("missing lock")
            .remove(name);
        let cluster = &ctx.shared.api.cluster;

        // Pod CIDR.
        if node["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            let taken: HashSet<String> = ctx
                .view()
                .list("core/nodes")
                .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_owned))
                .collect();
            match next_pod_cidr(&cluster.cluster_cidr, cluster.node_cidr_mask, &taken) {
                Some(cidr) => {
                    node = ctx.update("core/nodes", "", name, |n| {
                        n["spec"]["podCIDR"] = json!(cidr);
                        n["spec"]["podCIDRs"] = json!([cidr]);
                        Ok(())
                    })?;
                    ctx.event(
                        &node,
                        "Normal",
                        "CIDRAssignmentSucceeded",
                        &format!("Node {name} got pod CIDR {cidr}"),
                    );
                }
                None => ctx.event(
                    &node,
                    "Warning",
                    "CIDRNotAvailable",
                    &format!(
                        "Node {name} status is now: CIDRNotAvailable (the cluster CIDR {} is full)",
                        cluster.cluster_cidr
                    ),
                ),
            }
        }

        // Health.
        let grace = self.timings.node_monitor_grace;
        let silent_for = seen.map(|s| s.elapsed()).unwrap_or(grace);
        let stale = silent_for >= grace;
        let ready = condition(&node, "Ready")
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
            .to_owned();
        if stale && ready != "Unknown" {
            node = ctx.update_status("core/nodes", "", name, |n| {
                let now = now_time();
                for condition in n["status"]["conditions"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if condition["status"] != "Unknown" {
                        condition["lastTransitionTime"] = json!(now);
                    }
                    condition["status"] = json!("Unknown");
                    condition["reason"] = json!("NodeStatusUnknown");
                    condition["message"] = json!("Kubelet stopped posting node status.");
                }
                Ok(())
            })?;
            ctx.event(
                &node,
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            );
            let pods: Vec<_> = ctx
                .view()
                .pods_on(name)
                .filter(|p| p.ready)
                .cloned()
                .collect();
            for pod in pods {
                let marked = ctx.update_status("core/pods", &pod.namespace, &pod.name, |p| {
                    for condition in p["status"]["conditions"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        if condition["type"] == "Ready" && condition["status"] == "True" {
                            condition["status"] = json!("False");
                            condition["lastTransitionTime"] = json!(now_time());
                        }
                    }
                    Ok(())
                });
                match marked {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let ready = condition(&node, "Ready")
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
            .to_owned();
        if ready == "True" && !stale && condition(&node, "Ready").is_some() {
            let was_tainted = node["spec"]["taints"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == UNREACHABLE));
            if was_tainted {
                ctx.event(
                    &node,
                    "Normal",
                    "NodeReady",
                    &format!("Node {name} status is now: NodeReady"),
                );
            }
        }

        // Taints the master manages.
        let mut wanted: Vec<(&str, &str)> = Vec::new();
        match ready.as_str() {
            "Unknown" => wanted.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
            "False" => wanted.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
            _ => {}
        }
        if node["spec"]["unschedulable"] == true {
            wanted.push((UNSCHEDULABLE, "NoSchedule"));
        }
        let managed = |t: &Value| {
            [UNREACHABLE, NOT_READY, UNSCHEDULABLE]
                .iter()
                .any(|k| t["key"] == *k)
        };
        let current: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let have: HashSet<(String, String)> = current
            .iter()
            .filter(|t| managed(t))
            .map(|t| {
                (
                    super::view::str_of(&t["key"]),
                    super::view::str_of(&t["effect"]),
                )
            })
            .collect();
        let want: HashSet<(String, String)> = wanted
            .iter()
            .map(|(k, e)| ((*k).to_owned(), (*e).to_owned()))
            .collect();
        if have != want {
            let mut taints: Vec<Value> = current
                .iter()
                .filter(|t| {
                    !managed(t)
                        || want.contains(&(
                            super::view::str_of(&t["key"]),
                            super::view::str_of(&t["effect"]),
                        ))
                })
                .cloned()
                .collect();
            for (key, effect) in &wanted {
                if !have.contains(&((*key).to_owned(), (*effect).to_owned())) {
                    taints.push(taint(key, effect));
                }
            }
            node = ctx.update("core/nodes", "", name, |n| {
                if taints.is_empty() {
                    if let Some(spec) = n["spec"].as_object_mut() {
                        spec.remove("taints");
                    }
                } else {
                    n["spec"]["taints"] = json!(taints);
                }
                Ok(())
            })?;
        }

        // Eviction of pods that do not tolerate the node's NoExecute taints.
        let no_execute: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == "NoExecute")
            .cloned()
            .collect();
        let mut next_check: Option<Duration> = if stale {
            None
        } else {
            Some(grace - silent_for)
        };
        if !no_execute.is_empty() {
            let now = jiff::Timestamp::now();
            let pods: Vec<_> = ctx
                .view()
                .pods_on(name)
                .filter(|p| !p.deleting)
                .cloned()
                .collect();
            for pod in pods {
                let mut evict_in: Option<i64> = None;
                let mut evict_now = false;
                for taint in &no_execute {
                    let matching: Vec<_> = pod
                        .tolerations
                        .iter()
                        .filter(|t| t.tolerates(taint))
                        .collect();
                    if matching.is_empty() {
                        evict_now = true;
                        break;
                    }
                    if matching.iter().any(|t| t.seconds.is_none()) {
                        continue;
                    }
                    let seconds = matching
                        .iter()
                        .filter_map(|t| t.seconds)
                        .min()
                        .unwrap_or(0)
                        .max(0);
                    let added = taint["timeAdded"]
                        .as_str()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .unwrap_or(now);
                    let left = (added.as_second() + seconds) - now.as_second();
                    if left <= 0 {
                        evict_now = true;
                        break;
                    }
                    evict_in = Some(evict_in.map_or(left, |e| e.min(left)));
                }
                if evict_now {
                    let object = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid}});
                    ctx.event(
                        &object,
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {}/{}", pod.namespace, pod.name),
                    );
                    ctx.delete_pod(&pod)?;
                } else if let Some(left) = evict_in {
                    let wait = Duration::from_secs(left as u64);
                    next_check = Some(next_check.map_or(wait, |n| n.min(wait)));
                }
            }
        }
        Ok(match next_check {
            Some(wait) => Action::RequeueAfter(wait.max(Duration::from_millis(50))),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_handed_out_in_order() {
        let mut taken = HashSet::new();
        assert_eq!(
            next_pod_cidr("10.42.0.0/16", 24, &taken).as_deref(),
            Some("10.42.0.0/24")
        );
        taken.insert("10.42.0.0/24".to_owned());
        assert_eq!(
            next_pod_cidr("10.42.0.0/16", 24, &taken).as_deref(),
            Some("10.42.1.0/24")
        );
        assert_eq!(next_pod_cidr("10.42.0.0/24", 24, &taken), None);
    }

    #[test]
    fn pod_cidrs_overlapping_a_taken_range_are_skipped() {
        // An administrator gave a Node a /23 (two /24s) and another one 10.42.3.7/24.
        let taken: HashSet<String> = ["10.42.0.0/23", "10.42.3.7/24", "garbage"]
            .map(str::to_owned)
            .into();
        assert_eq!(
            next_pod_cidr("10.42.0.0/16", 24, &taken).as_deref(),
            Some("10.42.2.0/24")
        );
        let everything: HashSet<String> = ["0.0.0.0/0".to_owned()].into();
        assert_eq!(next_pod_cidr("10.42.0.0/16", 24, &everything), None);
    }
}
