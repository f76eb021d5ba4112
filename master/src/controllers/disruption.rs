//! The disruption controller: keeps each PodDisruptionBudget's status (how many of its pods are
//! healthy, how many must be, how many may be disrupted now), and the budget's own rules.
//!
//! Upstream's `pkg/controller/disruption`: the expected pod count comes from the scale of the
//! pods' controllers (`spec.replicas` of a Deployment, ReplicaSet, ReplicationController,
//! StatefulSet or any kind with a scale subresource) unless `minAvailable` is a plain number;
//! percentages round up. An eviction the API accepted is remembered in `status.disruptedPods`
//! until the pod is seen terminating, or for two minutes, so it is not counted healthy twice.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::view::{PodInfo, View};
use super::{now_seconds, now_time, Action, Context, Key, Reconciler};
use crate::admission::{FieldError, FieldErrorKind};
use crate::api::error::ApiError;
use crate::resources::RESOURCES;
use crate::store::{Change, EventType};
use protocol::selector::LabelSelector;

/// Where budgets live in the store.
pub const STORAGE_KEY: &str = "policy/poddisruptionbudgets";
/// How long an accepted eviction keeps its pod out of the healthy count (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT_SECONDS: i64 = 120;
/// The condition the controller keeps.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

// ----- the object ----------------------------------------------------------------------------

/// Whether a budget selects pods with these labels: a missing selector selects nothing, an
/// empty one everything in the namespace (policy/v1).
pub fn selects(pdb: &Value, labels: &BTreeMap<String, String>) -> bool {
    let selector = &pdb["spec"]["selector"];
    if selector.is_null() {
        return false;
    }
    LabelSelector::from_json(selector).is_ok_and(|s| s.matches_map(labels))
}

/// An int-or-percent resolved against `total`, rounding up as upstream does for budgets.
pub fn scaled_value(value: &Value, total: i64) -> Result<i64, String> {
    if let Some(number) = value.as_i64() {
        return Ok(number);
    }
    let text = value.as_str().unwrap_or_default();
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("invalid value for IntOrString: invalid value {text:?}"))?;
    Ok((percent * total + 99) / 100)
}

const PERCENT_DETAIL: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

fn check_int_or_percent(value: &Value, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(number) = value.as_i64() {
        if number < 0 {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                field,
                Some(number.to_string()),
                "must be greater than or equal to 0",
            ));
        }
        return;
    }
    let Some(text) = value.as_str() else { return };
    let percent = text
        .strip_suffix('%')
        .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    match percent.and_then(|p| p.parse::<u64>().ok()) {
        None => errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            field,
            Some(text.to_owned()),
            PERCENT_DETAIL,
        )),
        Some(p) if p > 100 => errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            field,
            Some(text.to_owned()),
            "must not be greater than 100%",
        )),
        Some(_) => {}
    }
}

/// `ValidatePodDisruptionBudgetSpec` (and the status counts, which must not be negative).
pub fn validate(pdb: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &pdb["spec"];
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec",
            Some(spec.to_string()),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    if let Some(min) = min {
        check_int_or_percent(min, "spec.minAvailable", &mut errors);
    }
    if let Some(max) = max {
        check_int_or_percent(max, "spec.maxUnavailable", &mut errors);
    }
    if !spec["selector"].is_null() {
        if let Err(error) = LabelSelector::from_json(&spec["selector"]) {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                "spec.selector",
                None,
                &error.to_string(),
            ));
        }
    }
    match spec["unhealthyPodEvictionPolicy"].as_str() {
        None | Some("AlwaysAllow" | "IfHealthyBudget") => {}
        Some(other) => errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            "spec.unhealthyPodEvictionPolicy",
            Some(other.to_owned()),
            "supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
        )),
    }
    for field in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        if let Some(number) = pdb["status"][field].as_i64().filter(|n| *n < 0) {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                &format!("status.{field}"),
                Some(number.to_string()),
                "must be greater than or equal to 0",
            ));
        }
    }
    errors
}

/// The status a new budget answers with: the counts at zero until the controller syncs.
pub fn initial_status() -> Value {
    json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0})
}

/// Sets the DisruptionAllowed condition as `apimeta.SetStatusCondition`: the transition time
/// moves only when the status does.
pub fn set_disruption_condition(status: &mut Value, allowed: bool, reason: &str, message: &str) {
    let observed = status["observedGeneration"].clone();
    let status_text = if allowed { "True" } else { "False" };
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let previous = conditions
        .iter()
        .position(|c| c["type"] == DISRUPTION_ALLOWED);
    let transition = match previous.map(|i| &conditions[i]) {
        Some(old) if old["status"] == status_text => old["lastTransitionTime"].clone(),
        _ => json!(now_time()),
    };
    let mut condition = Map::new();
    condition.insert("type".into(), json!(DISRUPTION_ALLOWED));
    condition.insert("status".into(), json!(status_text));
    if !observed.is_null() {
        condition.insert("observedGeneration".into(), observed);
    }
    condition.insert("lastTransitionTime".into(), transition);
    condition.insert("reason".into(), json!(reason));
    condition.insert("message".into(), json!(message));
    match previous {
        Some(index) => conditions[index] = Value::Object(condition),
        None => conditions.push(Value::Object(condition)),
    }
    status["conditions"] = json!(conditions);
}

// ----- the controller ------------------------------------------------------------------------

/// The disruption controller. Its keys are budget keys.
pub struct DisruptionController;

/// The budgets of a namespace that select a pod with these labels.
fn budgets_for<'a>(
    view: &'a View,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a std::sync::Arc<Value>> + 'a {
    view.list_in(STORAGE_KEY, namespace)
        .filter(move |pdb| selects(pdb, labels))
}

/// What the budget's status should say, and when to look again.
struct Computed {
    expected: i64,
    desired: i64,
    healthy: i64,
    disrupted: Map<String, Value>,
    recheck: Option<Duration>,
}

/// The scale of a pod's controller: (controller uid, replicas).
fn controller_scale(ctx: &Context, pod: &PodInfo) -> Result<Option<(String, i64)>, String> {
    let Some(owner) = pod.owners.iter().find(|o| o.controller) else {
        return Ok(None);
    };
    let not_found = || format!("found no controllers for pod {:?}", pod.name);
    let Some(resource) = RESOURCES
        .iter()
        .find(|r| r.kind == owner.kind && r.storage_version.is_none())
    else {
        return Err(not_found());
    };
    let object = ctx
        .get(&resource.storage_key(), &pod.namespace, &owner.name)
        .map_err(|e| e.message)?
        .filter(|o| o["metadata"]["uid"] == owner.uid.as_str())
        .ok_or_else(not_found)?;
    if owner.kind == "ReplicaSet" {
        // A Deployment's ReplicaSet: the Deployment's scale counts.
        let parent = super::view::owner_refs(&object)
            .into_iter()
            .find(|o| o.controller && o.kind == "Deployment");
        if let Some(parent) = parent {
            let deployment = ctx
                .get("apps/deployments", &pod.namespace, &parent.name)
                .map_err(|e| e.message)?
                .filter(|d| d["metadata"]["uid"] == parent.uid.as_str())
                .ok_or_else(not_found)?;
            let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
            return Ok(Some((parent.uid, replicas)));
        }
    }
    if !resource.subresources.contains(&"scale") {
        return Err(format!(
            "{} does not implement the scale subresource",
            crate::api::error::qualified(resource)
        ));
    }
    let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
    Ok(Some((owner.uid.clone(), replicas)))
}

fn expected_scale(ctx: &Context, pods: &[std::sync::Arc<PodInfo>]) -> Result<(i64, bool), String> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut unmanaged = false;
    for pod in pods {
        match pod.controller_uid() {
            None => unmanaged = true,
            Some(uid) if seen.contains(uid) => {}
            Some(_) => {
                if let Some((uid, replicas)) = controller_scale(ctx, pod)? {
                    if seen.insert(uid) {
                        total += replicas;
                    }
                }
            }
        }
    }
    Ok((total, unmanaged))
}

fn compute(
    ctx: &Context,
    pdb: &Value,
    pods: &[std::sync::Arc<PodInfo>],
) -> Result<(Computed, bool), String> {
    let spec = &pdb["spec"];
    let (expected, desired, unmanaged) =
        if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null()) {
            let (expected, unmanaged) = expected_scale(ctx, pods)?;
            let max = scaled_value(max, expected)?;
            (expected, (expected - max).max(0), unmanaged)
        } else if let Some(min) = spec.get("minAvailable").filter(|v| !v.is_null()) {
            if let Some(number) = min.as_i64() {
                (pods.len() as i64, number, false)
            } else {
                let (expected, unmanaged) = expected_scale(ctx, pods)?;
                (expected, scaled_value(min, expected)?, unmanaged)
            }
        } else {
            (pods.len() as i64, 0, false)
        };
    let now = now_seconds();
    let mut disrupted = Map::new();
    let mut recheck: Option<i64> = None;
    let by_name: BTreeMap<&str, &PodInfo> =
        pods.iter().map(|p| (p.name.as_str(), p.as_ref())).collect();
    for (name, since) in pdb["status"]["disruptedPods"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let Some(pod) = by_name.get(name.as_str()) else {
            continue;
        };
        if pod.deleting {
            continue;
        }
        let Some(at) = since.as_str().and_then(super::view::unix_seconds) else {
            continue;
        };
        let expires = at + DELETION_TIMEOUT_SECONDS;
        if expires > now {
            disrupted.insert(name.clone(), since.clone());
            recheck = Some(recheck.map_or(expires - now, |r| r.min(expires - now)));
        } else {
            let namespace = &pod.namespace;
            if let Ok(Some(object)) = ctx.get("core/pods", namespace, name) {
                ctx.event(
                    &object,
                    "Warning",
                    "NotDeleted",
                    &format!("Pod was expected by PDB {namespace}/{namespace} to be deleted but it wasn't"),
                );
            }
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| !p.deleting && p.ready && !disrupted.contains_key(&p.name))
        .count() as i64;
    Ok((
        Computed {
            expected,
            desired,
            healthy,
            disrupted,
            recheck: recheck.map(|s| Duration::from_secs(s.max(1) as u64)),
        },
        unmanaged,
    ))
}

impl Reconciler for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        let key = (change.namespace.clone(), change.name.clone());
        match change.resource.as_str() {
            STORAGE_KEY if change.event != EventType::Deleted => vec![key],
            "core/pods" => {
                let mut keys: Vec<Key> = Vec::new();
                for object in std::iter::once(&*change.object).chain(change.previous.as_deref()) {
                    let labels = super::view::string_map(&object["metadata"]["labels"]);
                    for pdb in budgets_for(view, &change.namespace, &labels) {
                        let key = super::key_of(pdb);
                        if !keys.contains(&key) {
                            keys.push(key);
                        }
                    }
                }
                keys
            }
            "apps/deployments"
            | "apps/replicasets"
            | "apps/statefulsets"
            | "core/replicationcontrollers" => view
                .list_in(STORAGE_KEY, &change.namespace)
                .map(|pdb| super::key_of(pdb))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(STORAGE_KEY)
            .map(|pdb| super::key_of(pdb))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let (pdb, pods) = {
            let view = ctx.view();
            let Some(pdb) = view.get(STORAGE_KEY, &key.0, &key.1).cloned() else {
                return Ok(Action::Done);
            };
            let pods: Vec<_> = view
                .pods_in(&key.0)
                .filter(|p| selects(&pdb, &p.labels))
                .cloned()
                .collect();
            (pdb, pods)
        };
        if pods.is_empty() {
            ctx.event(&pdb, "Normal", "NoPods", "No matching pods found");
        }
        let generation = pdb["metadata"]["generation"].clone();
        let mut status = pdb["status"].clone();
        if !status.is_object() {
            status = initial_status();
        }
        let recheck = match compute(ctx, &pdb, &pods) {
            Ok((computed, unmanaged)) => {
                if unmanaged {
                    let selector = pdb["spec"]["selector"].to_string();
                    ctx.event(&pdb, "Warning", "UnmanagedPods", &format!("Pods selected by this PodDisruptionBudget (selector: {selector}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value."));
                }
                let mut allowed = computed.healthy - computed.desired;
                if computed.expected <= 0 || allowed <= 0 {
                    allowed = 0;
                }
                status["expectedPods"] = json!(computed.expected);
                status["desiredHealthy"] = json!(computed.desired);
                status["currentHealthy"] = json!(computed.healthy);
                status["disruptionsAllowed"] = json!(allowed);
                if computed.disrupted.is_empty() {
                    if let Some(map) = status.as_object_mut() {
                        map.remove("disruptedPods");
                    }
                } else {
                    status["disruptedPods"] = Value::Object(computed.disrupted);
                }
                status["observedGeneration"] = generation;
                let reason = if allowed > 0 {
                    "SufficientPods"
                } else {
                    "InsufficientPods"
                };
                set_disruption_condition(&mut status, allowed > 0, reason, "");
                computed.recheck
            }
            Err(message) => {
                if message.starts_with("found no controllers")
                    || message.contains("does not implement")
                    || message.contains("IntOrString")
                {
                    ctx.event(
                        &pdb,
                        "Warning",
                        "CalculateExpectedPodCountFailed",
                        &format!("Failed to calculate the number of expected pods: {message}"),
                    );
                }
                status["disruptionsAllowed"] = json!(0);
                status["observedGeneration"] = generation;
                set_disruption_condition(&mut status, false, "SyncFailed", &message);
                None
            }
        };
        if status != pdb["status"] {
            let read_version = pdb["metadata"]["resourceVersion"].clone();
            let written = ctx.update_status(STORAGE_KEY, &key.0, &key.1, |current| {
                // Computed from what the view held: an eviction since then must be seen first.
                if current["metadata"]["resourceVersion"] != read_version {
                    return Err(ApiError::stale(super::resource_of(STORAGE_KEY), &key.1));
                }
                current["status"] = status;
                Ok(())
            });
            match written {
                Ok(_) => {}
                Err(e) if e.code == 404 => return Ok(Action::Done),
                Err(e) => return Err(e),
            }
        }
        Ok(recheck.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::eviction::evict;
    use crate::controllers::testing::{key, pod_spec, seconds_ago, TestCluster};

    /// A ReplicaSet of `replicas` and its `running` pods, Ready, labelled `app: web`.
    fn replica_set(cluster: &TestCluster, replicas: i64, running: &[&str]) {
        let set = cluster.create(
            "apps/replicasets",
            json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()}},
            }),
        );
        for (index, name) in running.iter().enumerate() {
            web_pod(cluster, &set, name, &format!("10.0.0.{}", index + 1));
        }
    }

    fn web_pod(cluster: &TestCluster, set: &Value, name: &str, ip: &str) {
        cluster.create(
            "core/pods",
            json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                             "ownerReferences": [super::super::controller_ref(set)]},
                "spec": pod_spec(),
            }),
        );
        cluster.run_pod(&key(name), "n1", ip, Some(&seconds_ago(60)));
    }

    fn budget(cluster: &TestCluster, spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        cluster.create(
            STORAGE_KEY,
            json!({"metadata": {"name": "web-pdb", "namespace": "default"}, "spec": spec}),
        )
    }

    fn status(cluster: &TestCluster) -> Value {
        cluster.get(STORAGE_KEY, &key("web-pdb")).unwrap()["status"].clone()
    }

    fn eviction(name: &str) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}})
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_budget_answers_with_zero_counts_then_the_controller_fills_them() {
        let cluster = TestCluster::new();
        replica_set(&cluster, 3, &["a", "b", "c"]);
        let created = budget(&cluster, json!({"minAvailable": "50%"}));
        assert_eq!(
            created["status"],
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0})
        );
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        let status = status(&cluster);
        // 50% of 3 rounds up to 2.
        assert_eq!(status["expectedPods"], 3);
        assert_eq!(status["desiredHealthy"], 2);
        assert_eq!(status["currentHealthy"], 3);
        assert_eq!(status["disruptionsAllowed"], 1);
        assert_eq!(status["observedGeneration"], 1);
        let condition = &status["conditions"][0];
        assert_eq!(condition["type"], "DisruptionAllowed");
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "SufficientPods");
    }

    #[tokio::test(start_paused = true)]
    async fn max_unavailable_percentages_round_up_against_the_owners_scale() {
        let cluster = TestCluster::new();
        // The ReplicaSet wants 4; only 3 pods exist so far.
        replica_set(&cluster, 4, &["a", "b", "c"]);
        budget(&cluster, json!({"maxUnavailable": "30%"}));
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        let status = status(&cluster);
        // 30% of 4 is 1.2, rounded up to 2 unavailable: 2 must stay healthy.
        assert_eq!(status["expectedPods"], 4);
        assert_eq!(status["desiredHealthy"], 2);
        assert_eq!(status["disruptionsAllowed"], 1);
    }

    #[test]
    fn both_bounds_or_bad_percentages_are_refused() {
        let cluster = TestCluster::new();
        let error = cluster
            .try_create(
                STORAGE_KEY,
                json!({"metadata": {"name": "x", "namespace": "default"},
                       "spec": {"minAvailable": 1, "maxUnavailable": "150%"}}),
            )
            .unwrap_err();
        assert_eq!(error.code, 422);
        assert!(
            error
                .message
                .starts_with("PodDisruptionBudget.policy \"x\" is invalid: ["),
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .contains(": minAvailable and maxUnavailable cannot be both set"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(
                "spec.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%"
            ),
            "{}",
            error.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn evictions_spend_the_budget_and_wait_for_a_ready_replacement() {
        let cluster = TestCluster::new();
        replica_set(&cluster, 3, &["a", "b", "c"]);
        budget(&cluster, json!({"minAvailable": 2}));
        // Until the controller has looked, the budget refuses and asks to come back in 10 s.
        let early = evict(cluster.api(), "default", "a", &eviction("a"), false).unwrap_err();
        assert_eq!(early.code, 429);
        assert_eq!(
            early.message,
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(early.details.as_ref().unwrap()["retryAfterSeconds"], 10);
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        assert_eq!(status(&cluster)["disruptionsAllowed"], 1);

        evict(cluster.api(), "default", "a", &eviction("a"), false).unwrap();
        let a = cluster.get("core/pods", &key("a")).unwrap();
        assert!(a["metadata"]["deletionTimestamp"].is_string());
        let target = a["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "DisruptionTarget")
            .unwrap()
            .clone();
        assert_eq!(target["reason"], "EvictionByEvictionAPI");
        assert_eq!(target["message"], "Eviction API: evicting");
        let after = status(&cluster);
        assert_eq!(after["disruptionsAllowed"], 0);
        assert!(after["disruptedPods"]["a"].is_string());
        assert_eq!(after["conditions"][0]["reason"], "InsufficientPods");
        // The controller sees `a` terminating: no longer healthy, no longer pending.
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        let synced = status(&cluster);
        assert_eq!(synced["currentHealthy"], 2);
        assert!(synced.get("disruptedPods").is_none(), "{synced}");

        let refused = evict(cluster.api(), "default", "b", &eviction("b"), false).unwrap_err();
        assert_eq!(refused.code, 429);
        assert_eq!(refused.reason, "TooManyRequests");
        assert_eq!(
            refused.status().to_string(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Cannot evict pod as it would violate the pod's disruption budget.","reason":"TooManyRequests","details":{"causes":[{"reason":"DisruptionBudget","message":"The disruption budget web-pdb needs 2 healthy pods and has 2 currently"}]},"code":429}"#
        );
        assert!(
            cluster.get("core/pods", &key("b")).unwrap()["metadata"]["deletionTimestamp"].is_null()
        );

        // The node finishes `a`; the ReplicaSet's replacement starts but is not Ready yet.
        cluster.delete(
            "core/pods",
            &key("a"),
            &crate::api::objects::DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        );
        let set = cluster.get("apps/replicasets", &key("web")).unwrap();
        web_pod(&cluster, &set, "d", "10.0.0.4");
        cluster.set_pod_status(&key("d"), "Running", "10.0.0.4", None);
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        let waiting = status(&cluster);
        assert_eq!(waiting["currentHealthy"], 2);
        assert_eq!(waiting["disruptionsAllowed"], 0);
        assert!(waiting.get("disruptedPods").is_none(), "{waiting}");
        assert_eq!(
            evict(cluster.api(), "default", "b", &eviction("b"), false)
                .unwrap_err()
                .code,
            429
        );

        // Once the replacement is Ready, the next eviction goes through.
        cluster.set_pod_status(&key("d"), "Running", "10.0.0.4", Some(&seconds_ago(0)));
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        assert_eq!(status(&cluster)["disruptionsAllowed"], 1);
        evict(cluster.api(), "default", "b", &eviction("b"), false).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_eviction_not_confirmed_in_two_minutes_is_forgotten() {
        let cluster = TestCluster::new();
        replica_set(&cluster, 3, &["a", "b", "c"]);
        budget(&cluster, json!({"minAvailable": 2}));
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        // Recorded as if accepted, but the pod is never deleted.
        cluster.update_status(STORAGE_KEY, &key("web-pdb"), |pdb| {
            pdb["status"]["disruptedPods"] = json!({"a": crate::controllers::now_time()});
            pdb["status"]["disruptionsAllowed"] = json!(0);
        });
        let action = cluster.reconcile(&DisruptionController, &key("web-pdb"));
        assert_eq!(action, Action::RequeueAfter(Duration::from_secs(120)));
        assert_eq!(status(&cluster)["currentHealthy"], 2);
        tokio::time::advance(Duration::from_secs(121)).await;
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        let status = status(&cluster);
        assert_eq!(status["currentHealthy"], 3);
        assert_eq!(status["disruptionsAllowed"], 1);
        assert!(cluster
            .events_about("a")
            .iter()
            .any(|(reason, message)| reason == "NotDeleted"
                && message
                    == "Pod was expected by PDB default/default to be deleted but it wasn't"));
    }

    #[tokio::test(start_paused = true)]
    async fn pods_not_running_go_freely_and_two_budgets_are_an_error() {
        let cluster = TestCluster::new();
        replica_set(&cluster, 3, &["a", "b"]);
        budget(&cluster, json!({"minAvailable": "100%"}));
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        assert_eq!(status(&cluster)["disruptionsAllowed"], 0);
        // A pod still Pending is not protected.
        cluster.create("core/pods", json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": pod_spec()}));
        evict(cluster.api(), "default", "p", &eviction("p"), false).unwrap();
        assert!(cluster.get("core/pods", &key("p")).is_none());
        // A second budget over the same pods: the eviction API does not choose.
        cluster.create(
            STORAGE_KEY,
            json!({"metadata": {"name": "other", "namespace": "default"}, "spec": {"maxUnavailable": 1, "selector": {}}}),
        );
        let error = evict(cluster.api(), "default", "a", &eviction("a"), false).unwrap_err();
        assert_eq!(error.code, 500);
        assert_eq!(
            error.status().to_string(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.","code":500}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_pods_go_when_the_budget_is_healthy_or_always_allowed() {
        let cluster = TestCluster::new();
        replica_set(&cluster, 3, &["a", "b", "c"]);
        budget(&cluster, json!({"minAvailable": 3}));
        cluster.set_pod_status(&key("c"), "Running", "10.0.0.3", None);
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        // 2 healthy of 3 needed: an unready pod is protected (IfHealthyBudget).
        assert_eq!(
            evict(cluster.api(), "default", "c", &eviction("c"), false)
                .unwrap_err()
                .code,
            429
        );
        cluster.update(STORAGE_KEY, &key("web-pdb"), |pdb| {
            pdb["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        });
        cluster.reconcile(&DisruptionController, &key("web-pdb"));
        evict(cluster.api(), "default", "c", &eviction("c"), false).unwrap();
        // The budget was not spent on it.
        assert!(status(&cluster).get("disruptedPods").is_none());
    }
}
