//! DaemonSets: one pod on every eligible node, replaced node by node on template changes.
//!
//! Pods are placed by the controller itself (`spec.nodeName`), as DaemonSets did before the
//! default scheduler took them over upstream: a Pi cluster has few nodes, and a daemon must run
//! on a node even when the scheduler would call it full. Eligibility follows nodeSelector,
//! required node affinity and NoSchedule/NoExecute taints; DaemonSet pods tolerate the node
//! condition taints, so they stay on a node that is merely unreachable.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::deployment::{int_or_percent, template_hash};
use super::replicas::{claim_pods, create_pods, pod_from_template, selector_of};
use super::view::{str_of, Key, PodInfo, Toleration, View};
use super::{key_of, now_seconds, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;

const HASH_LABEL: &str = "controller-revision-hash";

/// The DaemonSet controller.
pub struct DaemonSetController;

/// Tolerations every DaemonSet pod gets, as upstream adds them.
fn daemon_tolerations() -> Vec<Value> {
    let mut tolerations = vec![
        json!({"key": super::nodes::NOT_READY, "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": super::nodes::UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}),
    ];
    for key in [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        super::nodes::UNSCHEDULABLE,
    ] {
        tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoSchedule"}));
    }
    tolerations
}

fn eligible(template: &Value, node: &Value) -> bool {
    let labels = node["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let selector_ok = template["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = template["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array();
    let affinity_ok = terms.is_none_or(|terms| {
        terms
            .iter()
            .any(|t| super::scheduler::node_term_matches(t, name, &labels))
    });
    let mut tolerations = Toleration::of_spec(&template["spec"]);
    tolerations.extend(Toleration::of_spec(
        &json!({"tolerations": daemon_tolerations()}),
    ));
    let taints_ok = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tol.tolerates(t)));
    selector_ok && affinity_ok && taints_ok
}

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "apps/daemonsets" => vec![(change.namespace.clone(), change.name.clone())],
            "core/pods" => {
                super::replicas::owners_of_pod_change(change, view, "apps/daemonsets", "DaemonSet")
            }
            "core/nodes" => self.all_keys(view),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("apps/daemonsets").map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(set) = ctx.view().get("apps/daemonsets", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        if !set["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let template = &set["spec"]["template"];
        let hash = template_hash(template, 0);
        let owned = claim_pods(ctx, &set, &selector_of(&set))?;
        let nodes: Vec<Arc<Value>> = ctx.view().list("core/nodes").cloned().collect();
        let mut by_node: HashMap<String, Vec<Arc<PodInfo>>> = HashMap::new();
        for pod in owned.iter().filter(|p| p.is_active()) {
            by_node
                .entry(pod.node.clone())
                .or_default()
                .push(pod.clone());
        }
        let min_ready = set["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = now_seconds();
        let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
            (0, 0, 0, 0, 0, 0);
        let mut old_pods: Vec<Arc<PodInfo>> = Vec::new();
        let mut new_pods: Vec<Value> = Vec::new();
        for node in &nodes {
            let name = str_of(&node["metadata"]["name"]);
            let pods = by_node.remove(&name).unwrap_or_default();
            if !eligible(template, node) {
                misscheduled += i64::from(!pods.is_empty());
                for pod in pods {
                    ctx.delete_pod(&pod)?;
                }
                continue;
            }
            desired += 1;
            if pods.is_empty() {
                let mut pod = pod_from_template(&set, template, &key.1);
                pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
                pod["spec"]["nodeName"] = json!(name);
                let mut tolerations = pod["spec"]["tolerations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                tolerations.extend(daemon_tolerations());
                pod["spec"]["tolerations"] = json!(tolerations);
                new_pods.push(pod);
                continue;
            }
            current += 1;
            // One daemon per node: the oldest stays.
            let mut pods = pods;
            pods.sort_by_key(|p| p.created);
            for extra in &pods[1..] {
                ctx.delete_pod(extra)?;
            }
            let pod = &pods[0];
            ready += i64::from(pod.ready);
            available += i64::from(pod.is_available(min_ready, now));
            if pod.labels.get(HASH_LABEL) == Some(&hash) {
                updated += 1;
            } else {
                old_pods.push(pod.clone());
            }
        }
        if let (_, Some(error)) = create_pods(ctx, &set, new_pods) {
            return Err(error);
        }
        // Pods on nodes that no longer exist are left to the node controller's clean-up.
        let rolling = set["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling && !old_pods.is_empty() {
            let max_unavailable = int_or_percent(
                &set["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
                desired,
                false,
                "1",
            )
            .max(1);
            let mut unavailable = desired - available;
            // Old pods that are not available anyway go first.
            old_pods.sort_by_key(|p| p.is_available(min_ready, now));
            for pod in old_pods {
                let counts = pod.is_available(min_ready, now);
                if counts && unavailable >= max_unavailable {
                    break;
                }
                ctx.delete_pod(&pod)?;
                if counts {
                    unavailable += 1;
                }
            }
        }
        let generation = set["metadata"]["generation"].clone();
        let result = ctx.update_status("apps/daemonsets", &key.0, &key.1, |ds| {
            ds["status"] = json!({
                "currentNumberScheduled": current,
                "numberMisscheduled": misscheduled,
                "desiredNumberScheduled": desired,
                "numberReady": ready,
                "observedGeneration": generation,
                "updatedNumberScheduled": updated,
                "numberAvailable": available,
                "numberUnavailable": (desired - available).max(0),
            });
            Ok(())
        });
        match result {
            Ok(_) => Ok(Action::Done),
            Err(e) if e.code == 404 => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}
