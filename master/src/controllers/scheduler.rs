//! The scheduler: binds pending pods that name the default scheduler to the best node that fits.
//!
//! Filters: node conditions through taints and tolerations, cordoned nodes, nodeSelector and
//! required node affinity, CPU, memory and pod count against allocatable, host ports, and
//! required pod affinity and anti-affinity (any topology key, typically hostname or zone).
//! Scores: spread pods of the same owner across nodes, least allocated, preferred node
//! affinity, fewest untolerated PreferNoSchedule taints. A pod that fits nowhere stays Pending
//! with a PodScheduled=False condition and a FailedScheduling event saying why, and is retried
//! when nodes or pods change. Pods naming another scheduler are left to it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::view::{str_of, string_map, Key, NodeUsage, PodInfo, Toleration, View};
use super::volume_binding::{pods_waiting_for, prepare_volumes, PodVolumes};
use super::{set_condition, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::{Change, EventType};
use protocol::selector::LabelSelector;

/// The name pods use to ask for this scheduler.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Pods decided in one pass, bound in one commit.
const BATCH: usize = 256;

/// The scheduler. Its keys are pod keys.
#[derive(Default)]
pub struct Scheduler {
    unschedulable: Mutex<HashSet<Key>>,
    /// Failed attempts of each unschedulable pod and when it may be tried again: retries
    /// triggered by cluster changes wait out this backoff (1 s doubling, up to the profile's
    /// retry interval), so a pod that fits nowhere does not cost a write per node heartbeat.
    backoff: Mutex<std::collections::HashMap<Key, (u32, std::time::Instant)>>,
}

/// Why a node was filtered out, as upstream words it.
type Reason = String;

/// A required pod (anti-)affinity term, resolved for one scheduling decision.
struct PodTerm {
    selector: LabelSelector,
    namespaces: Vec<String>,
    topology_key: String,
}

impl PodTerm {
    fn parse(term: &Value, own_namespace: &str) -> PodTerm {
        let namespaces: Vec<String> = term["namespaces"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .filter(|n: &Vec<String>| !n.is_empty())
            .unwrap_or_else(|| vec![own_namespace.to_owned()]);
        PodTerm {
            selector: LabelSelector::from_json(&term["labelSelector"])
                .unwrap_or_else(|_| LabelSelector::from_map(&Default::default())),
            namespaces,
            topology_key: str_of(&term["topologyKey"]),
        }
    }

    fn matches(&self, pod: &PodInfo) -> bool {
        self.namespaces.contains(&pod.namespace) && self.selector.matches_map(&pod.labels)
    }

    /// Topology values (of `topology_key`) of the nodes running pods this term matches.
    fn domains(&self, view: &View) -> HashSet<String> {
        let mut domains = HashSet::new();
        for namespace in &self.namespaces {
            for pod in view.pods_in(namespace) {
                if pod.node.is_empty()
                    || !pod.is_active()
                    || !self.selector.matches_map(&pod.labels)
                {
                    continue;
                }
                if let Some(value) = view
                    .get("core/nodes", "", &pod.node)
                    .and_then(|n| n["metadata"]["labels"][&self.topology_key].as_str())
                {
                    domains.insert(value.to_owned());
                }
            }
        }
        domains
    }
}

fn required_terms(affinity: &Value, kind: &str) -> Vec<Value> {
    affinity[kind]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Whether a node's labels and name satisfy a nodeSelectorTerm.
pub(crate) fn node_term_matches(
    term: &Value,
    node_name: &str,
    labels: &serde_json::Map<String, Value>,
) -> bool {
    if let Some(expressions) = term["matchExpressions"]
        .as_array()
        .filter(|e| !e.is_empty())
    {
        let selector = LabelSelector::from_json(&json!({"matchExpressions": expressions}));
        if !selector.is_ok_and(|s| s.matches(labels)) {
            return false;
        }
    }
    for field in term["matchFields"].as_array().into_iter().flatten() {
        if field["key"] != "metadata.name" {
            return false;
        }
        let values: Vec<&str> = field["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let contained = values.contains(&node_name);
        let ok = match field["operator"].as_str() {
            Some("In") => contained,
            Some("NotIn") => !contained,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    term["matchExpressions"]
        .as_array()
        .is_some_and(|e| !e.is_empty())
        || term["matchFields"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
}

/// Everything about the pod being placed that the filters and scores need.
pub(super) struct Candidate {
    pub(super) info: PodInfo,
    node_selector: BTreeMap<String, String>,
    affinity: Value,
    tolerations: Vec<Toleration>,
    owner: Option<String>,
}

impl Candidate {
    pub(super) fn from(pod: &Value) -> Candidate {
        let info = PodInfo::from_object(pod);
        Candidate {
            node_selector: string_map(&pod["spec"]["nodeSelector"]),
            affinity: pod["spec"]["affinity"].clone(),
            tolerations: Toleration::of_spec(&pod["spec"]),
            owner: info.controller_uid().map(str::to_owned),
            info,
        }
    }
}

fn no_labels() -> &'static serde_json::Map<String, Value> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(serde_json::Map::new)
}

/// The filters, in upstream's order of evaluation. `Ok` if the pod fits the node.
pub(super) fn filter(
    candidate: &Candidate,
    node: &Value,
    (cpu, memory, pods): (i64, i64, i64),
    usage: &NodeUsage,
    affinity_rules: &AffinityRules,
) -> Result<(), Reason> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let labels = node["metadata"]["labels"]
        .as_object()
        .unwrap_or(no_labels());
    if node["spec"]["unschedulable"] == true
        && !candidate.tolerations.iter().any(|t| {
            t.tolerates(&json!({"key": super::nodes::UNSCHEDULABLE, "effect": "NoSchedule"}))
        })
    {
        return Err("node(s) were unschedulable".into());
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if effect != "NoSchedule" && effect != "NoExecute" {
            continue;
        }
        if !candidate.tolerations.iter().any(|t| t.tolerates(taint)) {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default()
            ));
        }
    }
    let selector_ok = candidate
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v.as_str()));
    let terms = candidate.affinity["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array();
    let affinity_ok =
        terms.is_none_or(|terms| terms.iter().any(|t| node_term_matches(t, name, labels)));
    if !selector_ok || !affinity_ok {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    if usage.pods + 1 > pods {
        return Err("Too many pods".into());
    }
    if candidate.info.cpu_request > 0 && usage.cpu + candidate.info.cpu_request > cpu {
        return Err("Insufficient cpu".into());
    }
    if candidate.info.memory_request > 0 && usage.memory + candidate.info.memory_request > memory {
        return Err("Insufficient memory".into());
    }
    if candidate
        .info
        .host_ports
        .iter()
        .any(|p| usage.host_ports.contains(p))
    {
        return Err("node(s) didn't have free ports for the requested pod ports".into());
    }
    let domain = |key: &str| labels.get(key).and_then(Value::as_str).map(str::to_owned);
    for (term, domains, allowed_empty) in &affinity_rules.affinity {
        let ok = match domain(&term.topology_key) {
            Some(value) => domains.contains(&value) || (*allowed_empty && domains.is_empty()),
            None => false,
        };
        if !ok {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    for (term, domains) in &affinity_rules.anti_affinity {
        if domain(&term.topology_key).is_some_and(|value| domains.contains(&value)) {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    for (key, value) in &affinity_rules.forbidden_by_others {
        if domain(key).as_deref() == Some(value.as_str()) {
            return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
        }
    }
    Ok(())
}

/// Required pod affinity and anti-affinity, resolved once per decision.
pub(super) struct AffinityRules {
    affinity: Vec<(PodTerm, HashSet<String>, bool)>,
    anti_affinity: Vec<(PodTerm, HashSet<String>)>,
    /// (topology key, value) pairs where a running pod's anti-affinity forbids this pod.
    forbidden_by_others: Vec<(String, String)>,
}

impl AffinityRules {
    pub(super) fn resolve(candidate: &Candidate, view: &View) -> AffinityRules {
        let namespace = &candidate.info.namespace;
        let affinity = required_terms(&candidate.affinity, "podAffinity")
            .iter()
            .map(|t| {
                let term = PodTerm::parse(t, namespace);
                let domains = term.domains(view);
                // The first pod of a group that selects itself may go anywhere.
                let self_match = term.matches(&candidate.info);
                (term, domains, self_match)
            })
            .collect();
        let anti_affinity = required_terms(&candidate.affinity, "podAntiAffinity")
            .iter()
            .map(|t| {
                let term = PodTerm::parse(t, namespace);
                let domains = term.domains(view);
                (term, domains)
            })
            .collect();
        let mut forbidden_by_others = Vec::new();
        for pod in view
            .pods_with_affinity
            .iter()
            .filter_map(|key| view.pods.get(key))
        {
            let Some(affinity) = &pod.pod_affinity else {
                continue;
            };
            if pod.node.is_empty() || !pod.is_active() {
                continue;
            }
            for term in required_terms(affinity, "podAntiAffinity") {
                let term = PodTerm::parse(&term, &pod.namespace);
                if term.matches(&candidate.info) {
                    if let Some(value) = view
                        .get("core/nodes", "", &pod.node)
                        .and_then(|n| n["metadata"]["labels"][&term.topology_key].as_str())
                    {
                        forbidden_by_others.push((term.topology_key.clone(), value.to_owned()));
                    }
                }
            }
        }
        AffinityRules {
            affinity,
            anti_affinity,
            forbidden_by_others,
        }
    }
}

/// Picks a node, or explains why none fits: "0/3 nodes are available: ...".
fn choose_node(candidate: &Candidate, view: &View) -> Result<String, String> {
    let volumes = match PodVolumes::resolve(&candidate.info, view) {
        Ok(volumes) => volumes,
        Err(message) => {
            let total = view.list("core/nodes").count();
            return Err(format!("0/{total} nodes are available: {message}."));
        }
    };
    let rules = AffinityRules::resolve(candidate, view);
    let empty = NodeUsage::default();
    let mut feasible: Vec<(&Arc<Value>, &NodeUsage)> = Vec::new();
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut total = 0;
    for node in view.list("core/nodes") {
        total += 1;
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let usage = view.node_usage.get(name).unwrap_or(&empty);
        let capacity = view.node_allocatable.get(name).copied().unwrap_or_default();
        let with_nominated = super::preemption::with_nominated(view, name, usage, &candidate.info);
        let fits = filter(candidate, node, capacity, &with_nominated, &rules)
            .and_then(|()| volumes.check(node, view));
        match fits {
            Ok(()) => feasible.push((node, usage)),
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    if feasible.is_empty() {
        if total == 0 {
            return Err("no nodes available to schedule pods".into());
        }
        let details: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        return Err(format!(
            "0/{total} nodes are available: {}.",
            details.join(", ")
        ));
    }
    // Pods of the same owner per node, for spreading.
    let mut same_owner: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    if let Some(owner) = &candidate.owner {
        for pod in view.pods_owned_by(owner) {
            if pod.is_active() && !pod.node.is_empty() {
                *same_owner.entry(pod.node.as_str()).or_default() += 1;
            }
        }
    }
    let max_same = feasible
        .iter()
        .map(|(n, _)| {
            same_owner
                .get(n["metadata"]["name"].as_str().unwrap_or_default())
                .copied()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let preferred = candidate.affinity["nodeAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let score = |node: &Value, usage: &NodeUsage| -> f64 {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let labels = node["metadata"]["labels"]
            .as_object()
            .unwrap_or(no_labels());
        let (cpu, memory, _) = view.node_allocatable.get(name).copied().unwrap_or_default();
        let fraction_free = |used: i64, capacity: i64| {
            if capacity <= 0 {
                0.0
            } else {
                ((capacity - used).max(0) as f64) / capacity as f64
            }
        };
        let least_allocated = 50.0 * fraction_free(usage.cpu + candidate.info.cpu_request, cpu)
            + 50.0 * fraction_free(usage.memory + candidate.info.memory_request, memory);
        let same = same_owner.get(name).copied().unwrap_or(0);
        let spread = if max_same == 0 {
            100.0
        } else {
            100.0 * (max_same - same) as f64 / max_same as f64
        };
        let affinity_weight: i64 = preferred
            .iter()
            .filter(|p| node_term_matches(&p["preference"], name, labels))
            .filter_map(|p| p["weight"].as_i64())
            .sum();
        let soft_taints = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["effect"] == "PreferNoSchedule"
                    && !candidate.tolerations.iter().any(|tol| tol.tolerates(t))
            })
            .count();
        // Spreading the same owner's pods first, then preferences, then the emptiest node.
        2.0 * spread + 2.0 * affinity_weight as f64 + least_allocated - 30.0 * soft_taints as f64
    };
    let best = feasible
        .iter()
        .map(|(node, usage)| {
            (
                score(node, usage),
                usage.pods,
                node["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(a.2)))
        .map(|(_, _, name)| name.to_owned())
        .expect("feasible is not empty");
    Ok(best)
}

impl Scheduler {
    fn retry_unschedulable(&self) -> Vec<Key> {
        self.unschedulable
            .lock()
            .expect("unschedulable lock")
            .iter()
            .cloned()
            .collect()
    }
}

fn wants_scheduling(pod: &Value) -> bool {
    pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["spec"]["schedulerName"]
            .as_str()
            .unwrap_or(DEFAULT_SCHEDULER)
            == DEFAULT_SCHEDULER
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        DEFAULT_SCHEDULER
    }

    fn resync_every(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "core/pods" => {
                let mut keys = Vec::new();
                if change.event != EventType::Deleted && wants_scheduling(&change.object) {
                    keys.push((change.namespace.clone(), change.name.clone()));
                }
                // Room may have been made: a pod went, finished or moved.
                let freed = change.event == EventType::Deleted
                    || matches!(
                        change.object["status"]["phase"].as_str(),
                        Some("Succeeded" | "Failed")
                    )
                    || !change.object["metadata"]["deletionTimestamp"].is_null();
                if freed {
                    keys.extend(self.retry_unschedulable());
                }
                keys
            }
            "core/nodes" => self.retry_unschedulable(),
            "core/persistentvolumeclaims" => {
                let mut keys = pods_waiting_for(view, &change.namespace, &change.name);
                keys.extend(self.retry_unschedulable());
                keys
            }
            "core/persistentvolumes" | "storage.k8s.io/storageclasses" => {
                self.retry_unschedulable()
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.pods
            .values()
            .filter(|p| p.node.is_empty() && p.is_active())
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        self.reconcile_batch(ctx, std::slice::from_ref(key))
            .pop()
            .unwrap_or(Ok(Action::Done))
    }

    fn batch_size(&self) -> usize {
        BATCH
    }

    fn reconcile_batch(&self, ctx: &Context, keys: &[Key]) -> Vec<Result<Action, ApiError>> {
        let started = std::time::Instant::now();
        let mut results: Vec<Result<Action, ApiError>> =
            keys.iter().map(|_| Ok(Action::Done)).collect();
        // (index in keys, node, what the view held before the pod was assumed there)
        let mut placed: Vec<(usize, String, Option<Arc<PodInfo>>)> = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            if let Some(wait) = self.backoff_left(key) {
                results[index] = Ok(Action::RequeueAfter(wait));
                continue;
            }
            let pod = match ctx.get("core/pods", &key.0, &key.1) {
                Ok(Some(pod)) if wants_scheduling(&pod) => pod,
                Ok(_) => {
                    self.forget(key);
                    continue;
                }
                Err(error) => {
                    results[index] = Err(error);
                    continue;
                }
            };
            let candidate = Candidate::from(&pod);
            let choice = choose_node(&candidate, &ctx.view());
            match choice {
                Ok(node) => {
                    match prepare_volumes(ctx, &candidate.info, &node) {
                        Ok(true) => {}
                        // Its claims' changes bring it back once they are bound.
                        Ok(false) => continue,
                        Err(error) => {
                            results[index] = Err(error);
                            continue;
                        }
                    }
                    let mut assumed = candidate.info.clone();
                    assumed.node = node.clone();
                    let previous = ctx.assume_pod(key, assumed);
                    placed.push((index, node, previous));
                }
                Err(message) => {
                    results[index] = match super::preemption::preempt(ctx, &pod, &candidate) {
                        Ok(preemption) => self.mark_unschedulable(
                            ctx,
                            key,
                            &preemption.fit_error(&message),
                            preemption.nominated.as_deref(),
                        ),
                        Err(error) => Err(error),
                    }
                }
            }
        }
        if placed.is_empty() {
            return results;
        }
        let bindings: Vec<(String, String, String)> = placed
            .iter()
            .map(|(index, node, _)| (keys[*index].0.clone(), keys[*index].1.clone(), node.clone()))
            .collect();
        let decided_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcomes = match crate::api::objects::bind_pods(&ctx.shared.api, &bindings) {
            Ok(outcomes) => outcomes,
            Err(error) => {
                for (index, node, previous) in placed {
                    ctx.forget_assumed(&keys[index], &node, previous);
                    results[index] = Err(ApiError::internal(error.message.clone()));
                }
                return results;
            }
        };
        let count = placed.len();
        let bound_ms = started.elapsed().as_secs_f64() * 1000.0;
        for ((index, node, previous), outcome) in placed.into_iter().zip(outcomes) {
            let key = &keys[index];
            match outcome {
                Ok(bound) => {
                    ctx.note_written(&bound);
                    self.forget(key);
                    ctx.event(
                        &bound,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {}/{} to {node}", key.0, key.1),
                    );
                }
                Err(error) => {
                    ctx.forget_assumed(key, &node, previous);
                    // Deleted or bound by someone else meanwhile: nothing left to do.
                    if error.code != 404 && error.code != 409 {
                        results[index] = Err(error);
                    }
                }
            }
        }
        if count >= 32 {
            tracing::info!(
                pods = count,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                decided_ms,
                bound_ms,
                "scheduler bound a batch"
            );
        }
        results
    }
}

impl Scheduler {
    fn backoff_left(&self, key: &Key) -> Option<Duration> {
        let backoff = self.backoff.lock().expect("backoff lock");
        let (_, next) = backoff.get(key)?;
        let now = std::time::Instant::now();
        (*next > now).then(|| *next - now)
    }

    fn forget(&self, key: &Key) {
        self.unschedulable
            .lock()
            .expect("unschedulable lock")
            .remove(key);
        self.backoff.lock().expect("backoff lock").remove(key);
    }

    fn mark_unschedulable(
        &self,
        ctx: &Context,
        key: &Key,
        message: &str,
        nominated: Option<&str>,
    ) -> Result<Action, ApiError> {
        // Bound meanwhile (a binding of its own, another scheduler): as upstream, the failure
        // is not written over the binding's PodScheduled=True.
        let bound_meanwhile = Cell::new(false);
        let result = ctx.update_status("core/pods", &key.0, &key.1, |p| {
            if p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            {
                bound_meanwhile.set(true);
                return Ok(());
            }
            set_condition(p, "PodScheduled", "False", "Unschedulable", message);
            match nominated {
                Some(node) => p["status"]["nominatedNodeName"] = json!(node),
                None => {
                    if let Some(status) = p["status"].as_object_mut() {
                        status.remove("nominatedNodeName");
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(_) if bound_meanwhile.get() => {
                self.forget(key);
                return Ok(Action::Done);
            }
            Ok(updated) => ctx.event(&updated, "Warning", "FailedScheduling", message),
            Err(e) if e.code == 404 => {
                self.forget(key);
                return Ok(Action::Done);
            }
            Err(e) => return Err(e),
        }
        self.unschedulable
            .lock()
            .expect("unschedulable lock")
            .insert(key.clone());
        let cap = ctx.shared.timings.scheduler_retry;
        let mut backoff = self.backoff.lock().expect("backoff lock");
        let entry = backoff
            .entry(key.clone())
            .or_insert((0, std::time::Instant::now()));
        entry.0 += 1;
        let wait = (Duration::from_secs(1) * 2u32.saturating_pow(entry.0 - 1)).min(cap);
        entry.1 = std::time::Instant::now() + wait;
        Ok(Action::RequeueAfter(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({
            "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {}, "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}},
        }))
    }

    fn view_with(nodes: &[Arc<Value>]) -> View {
        let mut view = View::default();
        for n in nodes {
            view.insert_object(
                "core/nodes",
                (
                    String::new(),
                    n["metadata"]["name"].as_str().unwrap().to_owned(),
                ),
                n.clone(),
            );
        }
        view
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": spec})
    }

    #[test]
    fn node_selector_that_matches_nothing_explains_itself() {
        let view = view_with(&[node("a", json!({"disk": "hdd"})), node("b", json!({}))]);
        let candidate = Candidate::from(&pod(
            json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c"}]}),
        ));
        let error = choose_node(&candidate, &view).unwrap_err();
        assert_eq!(
            error,
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn requests_beyond_allocatable_do_not_fit() {
        let view = view_with(&[node("a", json!({}))]);
        let big =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]}));
        assert!(choose_node(&Candidate::from(&big), &view)
            .unwrap_err()
            .contains("1 Insufficient cpu"));
        let small =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}));
        assert_eq!(choose_node(&Candidate::from(&small), &view).unwrap(), "a");
    }

    #[test]
    fn taints_need_tolerations() {
        let mut tainted = (*node("a", json!({}))).clone();
        tainted["spec"]["taints"] =
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        let view = view_with(&[Arc::new(tainted)]);
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        assert!(choose_node(&Candidate::from(&plain), &view)
            .unwrap_err()
            .contains("untolerated taint {dedicated: gpu}"));
        let tolerant = pod(
            json!({"containers": [{"name": "c"}], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            choose_node(&Candidate::from(&tolerant), &view).unwrap(),
            "a"
        );
    }

    #[test]
    fn anti_affinity_keeps_replicas_apart() {
        let mut view = view_with(&[
            node("a", json!({"kubernetes.io/hostname": "a"})),
            node("b", json!({"kubernetes.io/hostname": "b"})),
        ]);
        let mut running = PodInfo::from_object(&pod(json!({"containers": [{"name": "c"}]})));
        running.name = "other".into();
        running.node = "a".into();
        view.insert_pod(("default".into(), "other".into()), running);
        let spec = json!({"containers": [{"name": "c"}], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        assert_eq!(
            choose_node(&Candidate::from(&pod(spec)), &view).unwrap(),
            "b"
        );
    }

    #[test]
    fn node_affinity_match_fields_pin_a_node() {
        let view = view_with(&[node("a", json!({})), node("b", json!({}))]);
        let spec = json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}});
        assert_eq!(
            choose_node(&Candidate::from(&pod(spec)), &view).unwrap(),
            "b"
        );
    }

    #[test]
    fn host_ports_are_exclusive() {
        let mut view = view_with(&[node("a", json!({}))]);
        let spec = json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        let mut running = PodInfo::from_object(&pod(spec.clone()));
        running.name = "first".into();
        running.node = "a".into();
        view.insert_pod(("default".into(), "first".into()), running);
        let error = choose_node(&Candidate::from(&pod(spec)), &view).unwrap_err();
        assert!(error.contains("didn't have free ports"), "{error}");
    }

    #[test]
    fn pod_affinity_follows_the_zone_of_its_peers() {
        let mut view = view_with(&[
            node("a", json!({"topology.kubernetes.io/zone": "z1"})),
            node("b", json!({"topology.kubernetes.io/zone": "z2"})),
        ]);
        let mut cache = PodInfo::from_object(
            &json!({"metadata": {"name": "cache", "namespace": "default", "labels": {"app": "cache"}}, "spec": {}}),
        );
        cache.node = "b".into();
        view.insert_pod(("default".into(), "cache".into()), cache);
        let spec = json!({"containers": [{"name": "c"}], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        assert_eq!(
            choose_node(&Candidate::from(&pod(spec)), &view).unwrap(),
            "b"
        );
    }
}
