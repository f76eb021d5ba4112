//! Preemption: when a pod fits on no node, the scheduler may remove lower-priority pods from one
//! node to make room (upstream's DefaultPreemption PostFilter plugin).
//!
//! ```text
//!   fits nowhere ─▶ preemptionPolicy Never? ─▶ stays Pending ("not eligible ...")
//!        │
//!        ▼ per node whose failure removing pods could cure (cpu, memory, pod count, ports):
//!   remove every pod of lower priority ─▶ still no fit? ─▶ node rejected
//!        │ fits
//!        ▼
//!   put pods back, most important first, PodDisruptionBudget-protected ones before the rest;
//!   whatever cannot go back is a victim (a protected one counts as a violation)
//!        │
//!        ▼ best node: fewest violations, lowest top victim priority, smallest priority sum,
//!          fewest victims, latest earliest start
//!   victims: DisruptionTarget condition, deleted, "Preempted" event;
//!   the pod: status.nominatedNodeName, bound once the room is there
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::disruption::STORAGE_KEY as BUDGETS;
use super::scheduler::{filter, AffinityRules, Candidate, DEFAULT_SCHEDULER};
use super::view::{NodeUsage, PodInfo, View};
use super::Context;
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use protocol::selector::LabelSelector;

const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// What preemption did for a pod that fits nowhere.
#[derive(Debug, Default)]
pub struct Preemption {
    /// The node room is being made on, for `status.nominatedNodeName`.
    pub nominated: Option<String>,
    /// Why preemption could not help (upstream's PostFilter message), when it could not.
    pub refusal: Option<String>,
}

impl Preemption {
    /// The FailedScheduling message: the filters' verdict, then preemption's when it failed.
    pub fn fit_error(&self, filters: &str) -> String {
        match &self.refusal {
            Some(refusal) => format!("{filters} preemption: {refusal}"),
            None => filters.to_owned(),
        }
    }
}

/// Filter failures that removing pods from the node can cure (upstream: `Unschedulable`, as
/// opposed to `UnschedulableAndUnresolvable`).
fn resolvable(reason: &str) -> bool {
    matches!(
        reason,
        "Too many pods" | "Insufficient cpu" | "Insufficient memory"
    ) || reason.contains("didn't have free ports")
}

/// Upstream's `MoreImportantPod`: higher priority, then the one that started first.
fn more_important_first(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then(a.created.cmp(&b.created))
}

/// One node's dry run.
struct NodePlan {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    violations: usize,
}

/// Splits victims into those whose eviction would break a budget and the rest, spending each
/// budget's allowed disruptions in order (upstream's `filterPodsWithPDBViolation`).
fn split_by_budgets(
    view: &View,
    victims: Vec<Arc<PodInfo>>,
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let budgets: Vec<&Arc<Value>> = view.list(BUDGETS).collect();
    let mut allowed: Vec<i64> = budgets
        .iter()
        .map(|b| b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0))
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for pod in victims {
        let mut violates = false;
        for (index, budget) in budgets.iter().enumerate() {
            let selector = &budget["spec"]["selector"];
            // Here an empty selector selects nothing, as upstream's preemption reads it.
            let empty = ["matchLabels", "matchExpressions"].iter().all(|field| {
                let part = &selector[*field];
                part.is_null()
                    || part.as_object().is_some_and(|m| m.is_empty())
                    || part.as_array().is_some_and(|a| a.is_empty())
            });
            if budget["metadata"]["namespace"] != pod.namespace.as_str()
                || empty
                || pod.labels.is_empty()
                || !LabelSelector::from_json(selector).is_ok_and(|s| s.matches_map(&pod.labels))
            {
                continue;
            }
            if budget["status"]["disruptedPods"].get(&pod.name).is_some() {
                continue;
            }
            allowed[index] -= 1;
            if allowed[index] < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(pod);
        } else {
            fine.push(pod);
        }
    }
    (violating, fine)
}

/// The fewest pods to remove from `node` so the candidate fits, or why none will do.
fn plan_node(
    candidate: &Candidate,
    node: &Value,
    view: &View,
    rules: &AffinityRules,
) -> Result<NodePlan, String> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let capacity = view.node_allocatable.get(name).copied().unwrap_or_default();
    let mut usage: NodeUsage = view.node_usage.get(name).cloned().unwrap_or_default();
    let mut potential: Vec<Arc<PodInfo>> = view
        .pods_on(name)
        .filter(|p| p.is_active() && p.priority < candidate.info.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return Err(NO_VICTIMS.into());
    }
    for pod in &potential {
        usage.add(pod, -1);
    }
    filter(candidate, node, capacity, &usage, rules)?;
    potential.sort_by(|a, b| more_important_first(a, b));
    let (violating, fine) = split_by_budgets(view, potential);
    let mut victims = Vec::new();
    let mut violations = 0;
    for (group, protected) in [(violating, true), (fine, false)] {
        for pod in group {
            usage.add(&pod, 1);
            if filter(candidate, node, capacity, &usage, rules).is_err() {
                usage.add(&pod, -1);
                if protected {
                    violations += 1;
                }
                victims.push(pod);
            }
        }
    }
    victims.sort_by(|a, b| more_important_first(a, b));
    Ok(NodePlan {
        node: name.to_owned(),
        victims,
        violations,
    })
}

/// Upstream's `pickOneNodeForPreemption`, its tie-breakers in order.
fn pick(plans: Vec<NodePlan>) -> Option<NodePlan> {
    let key = |plan: &NodePlan| {
        let top = plan.victims.first().map_or(i64::MIN, |v| v.priority);
        let sum: i128 = plan
            .victims
            .iter()
            .map(|v| v.priority as i128 + (1i128 << 31))
            .sum();
        let earliest = plan.victims.iter().map(|v| v.created).min().unwrap_or(0);
        (
            plan.violations,
            top,
            sum,
            plan.victims.len(),
            std::cmp::Reverse(earliest),
        )
    };
    plans.into_iter().min_by_key(key)
}

/// Tries to make room for `pod`, which fits on no node: picks a node and victims, removes the
/// victims, and says which node the pod is nominated to (or why preemption cannot help).
pub(super) fn preempt(
    ctx: &Context,
    pod: &Value,
    candidate: &Candidate,
) -> Result<Preemption, ApiError> {
    if candidate.info.never_preempts {
        return Ok(Preemption {
            nominated: None,
            refusal: Some("not eligible due to preemptionPolicy=Never.".into()),
        });
    }
    let (plan, refusal) = {
        let view = ctx.view();
        if let Some(nominated) = pod["status"]["nominatedNodeName"].as_str() {
            let terminating_victim = view
                .pods_on(nominated)
                .any(|p| p.deleting && p.disruption_target && p.priority < candidate.info.priority);
            if terminating_victim {
                return Ok(Preemption {
                    nominated: Some(nominated.to_owned()),
                    refusal: Some(
                        "not eligible due to a terminating pod on the nominated node.".into(),
                    ),
                });
            }
        }
        let rules = AffinityRules::resolve(candidate, &view);
        let empty = NodeUsage::default();
        let mut plans = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut total = 0;
        for node in view.list("core/nodes") {
            total += 1;
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let usage = view.node_usage.get(name).unwrap_or(&empty);
            let capacity = view.node_allocatable.get(name).copied().unwrap_or_default();
            let verdict = match filter(candidate, node, capacity, usage, &rules) {
                Err(reason) if resolvable(&reason) => plan_node(candidate, node, &view, &rules),
                _ => Err(NOT_HELPFUL.to_owned()),
            };
            match verdict {
                Ok(plan) => plans.push(plan),
                Err(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
        let refusal = format!(
            "0/{total} nodes are available: {}.",
            reasons
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        (pick(plans), refusal)
    };
    let Some(plan) = plan else {
        return Ok(Preemption {
            nominated: None,
            refusal: Some(refusal),
        });
    };
    let scheduler = pod["spec"]["schedulerName"]
        .as_str()
        .unwrap_or(DEFAULT_SCHEDULER);
    let preemptor_uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    for victim in &plan.victims {
        evict_victim(ctx, victim, scheduler, preemptor_uid, &plan.node)?;
    }
    Ok(Preemption {
        nominated: Some(plan.node),
        refusal: None,
    })
}

fn evict_victim(
    ctx: &Context,
    victim: &PodInfo,
    scheduler: &str,
    preemptor_uid: &str,
    node: &str,
) -> Result<(), ApiError> {
    let marked = ctx.update_status("core/pods", &victim.namespace, &victim.name, |p| {
        crate::lifecycle::set_condition(
            p,
            "DisruptionTarget",
            "True",
            Some("PreemptionByScheduler"),
            Some(&format!(
                "{scheduler}: preempting to accommodate a higher priority pod"
            )),
        );
        Ok(())
    });
    let marked = match marked {
        Ok(marked) => marked,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    ctx.delete(
        "core/pods",
        &victim.namespace,
        &victim.name,
        &DeleteOptions::default(),
    )?;
    ctx.event(
        &marked,
        "Normal",
        "Preempted",
        &format!("Preempted by pod {preemptor_uid} on node {node}"),
    );
    Ok(())
}

/// A node's usage counting the pods nominated to it that matter to `pod` (as important or
/// more, not `pod` itself): room made by preemption is kept for the pod it was made for.
pub(super) fn with_nominated<'a>(
    view: &View,
    node: &str,
    usage: &'a NodeUsage,
    pod: &PodInfo,
) -> std::borrow::Cow<'a, NodeUsage> {
    let Some(nominated) = view.nominated_pods.get(node) else {
        return std::borrow::Cow::Borrowed(usage);
    };
    let mut counted = usage.clone();
    for other in nominated.iter().filter_map(|key| view.pods.get(key)) {
        let itself = other.namespace == pod.namespace && other.name == pod.name;
        if !itself && other.priority >= pod.priority {
            counted.add(other, 1);
        }
    }
    std::borrow::Cow::Owned(counted)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::scheduler::Scheduler;
    use super::*;
    use crate::controllers::testing::{key, seconds_ago, TestCluster};

    fn full_cluster() -> TestCluster {
        let cluster = TestCluster::new();
        for name in ["n1", "n2"] {
            cluster.create(
                "core/nodes",
                json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                       "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"},
                                  "conditions": [{"type": "Ready", "status": "True"}]}}),
            );
        }
        for (name, value) in [("low", 10), ("high", 1000)] {
            cluster.create(
                "scheduling.k8s.io/priorityclasses",
                json!({"metadata": {"name": name}, "value": value}),
            );
        }
        for (name, node) in [("low-1", "n1"), ("low-2", "n2")] {
            cluster.create("core/pods", pod(name, "low", "800m", json!({"app": name})));
            cluster.run_pod(&key(name), node, "10.0.0.1", Some(&seconds_ago(60)));
        }
        cluster
    }

    fn pod(name: &str, class: &str, cpu: &str, labels: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"priorityClassName": class, "containers": [{"name": "app", "image": "registry.local/app:1",
                     "resources": {"requests": {"cpu": cpu}}}]},
        })
    }

    fn condition(pod: &Value, kind: &str) -> Value {
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_priority_pod_evicts_a_lower_one_and_is_nominated() {
        let cluster = full_cluster();
        let high = cluster.create("core/pods", pod("urgent", "high", "500m", json!({})));
        let scheduler = Scheduler::default();
        cluster.reconcile(&scheduler, &key("urgent"));
        let urgent = cluster.get("core/pods", &key("urgent")).unwrap();
        assert_eq!(urgent["status"]["nominatedNodeName"], "n1");
        assert_eq!(
            condition(&urgent, "PodScheduled")["message"],
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        let victim = cluster.get("core/pods", &key("low-1")).unwrap();
        assert!(victim["metadata"]["deletionTimestamp"].is_string());
        let target = condition(&victim, "DisruptionTarget");
        assert_eq!(target["reason"], "PreemptionByScheduler");
        assert_eq!(
            target["message"],
            "default-scheduler: preempting to accommodate a higher priority pod"
        );
        let uid = high["metadata"]["uid"].as_str().unwrap();
        assert!(cluster.events_about("low-1").contains(&(
            "Preempted".into(),
            format!("Preempted by pod {uid} on node n1")
        )));
        assert!(
            cluster.get("core/pods", &key("low-2")).unwrap()["metadata"]["deletionTimestamp"]
                .is_null()
        );
        // The room made is kept for the pod it was made for: a lower-priority pod does not
        // take it.
        cluster.create("core/pods", pod("sneaky", "low", "600m", json!({})));
        cluster.reconcile(&Scheduler::default(), &key("sneaky"));
        let sneaky = cluster.get("core/pods", &key("sneaky")).unwrap();
        assert!(sneaky["spec"]["nodeName"].is_null(), "{sneaky}");
        // With the victim going, the next attempt (once its backoff is over) binds the pod
        // where room was made.
        cluster.reconcile(&Scheduler::default(), &key("urgent"));
        assert_eq!(
            cluster.get("core/pods", &key("urgent")).unwrap()["spec"]["nodeName"],
            "n1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pods_protected_by_a_budget_are_spared_when_another_node_will_do() {
        let cluster = full_cluster();
        cluster.create(
            "policy/poddisruptionbudgets",
            json!({"metadata": {"name": "guard", "namespace": "default"},
                   "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "low-1"}}}}),
        );
        cluster.reconcile(
            &super::super::disruption::DisruptionController,
            &key("guard"),
        );
        cluster.create("core/pods", pod("urgent", "high", "500m", json!({})));
        cluster.reconcile(&Scheduler::default(), &key("urgent"));
        let urgent = cluster.get("core/pods", &key("urgent")).unwrap();
        assert_eq!(urgent["status"]["nominatedNodeName"], "n2");
        assert!(
            cluster.get("core/pods", &key("low-1")).unwrap()["metadata"]["deletionTimestamp"]
                .is_null()
        );
        assert!(
            cluster.get("core/pods", &key("low-2")).unwrap()["metadata"]["deletionTimestamp"]
                .is_string()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn preemption_that_cannot_help_says_why() {
        let cluster = full_cluster();
        // Equal priority: nothing to preempt.
        cluster.create("core/pods", pod("peer", "low", "500m", json!({})));
        let scheduler = Scheduler::default();
        cluster.reconcile(&scheduler, &key("peer"));
        let peer = cluster.get("core/pods", &key("peer")).unwrap();
        assert_eq!(
            condition(&peer, "PodScheduled")["message"],
            "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
        assert!(peer["status"].get("nominatedNodeName").is_none());
        // A pod that may not preempt stays pending and evicts nothing.
        cluster.create(
            "scheduling.k8s.io/priorityclasses",
            json!({"metadata": {"name": "polite"}, "value": 1000, "preemptionPolicy": "Never"}),
        );
        cluster.create("core/pods", pod("polite", "polite", "500m", json!({})));
        cluster.reconcile(&scheduler, &key("polite"));
        let polite = cluster.get("core/pods", &key("polite")).unwrap();
        assert_eq!(
            condition(&polite, "PodScheduled")["message"],
            "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
        assert_eq!(cluster.live_pods().len(), 4);
    }
}
