//! ResourceQuota: admission that refuses what would exceed a namespace's quota, and `status.used`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::view::{Key, PodInfo, View};
use super::{key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::resources::Resource;
use crate::store::Change;
use protocol::quantity::format_millicores;

/// Keeps `status.hard` and `status.used` of quotas current.
pub struct QuotaStatusController;

fn format_bytes(bytes: i64) -> String {
    for (suffix, unit) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The quota resource names a kind is counted under.
fn count_names(resource: &Resource) -> Vec<String> {
    let group_suffix = if resource.group.is_empty() {
        String::new()
    } else {
        format!(".{}", resource.group)
    };
    let mut names = vec![format!("count/{}{group_suffix}", resource.plural)];
    if resource.group.is_empty()
        && matches!(
            resource.plural,
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "replicationcontrollers"
                | "resourcequotas"
                | "persistentvolumeclaims"
        )
    {
        names.push(resource.plural.to_owned());
    }
    names
}

/// What one pod uses of each pod-related quota resource, in base units (millicores for CPU).
fn pod_usage(pod: &PodInfo) -> BTreeMap<&'static str, i64> {
    BTreeMap::from([
        ("pods", 1),
        ("count/pods", 1),
        ("requests.cpu", pod.cpu_request),
        ("cpu", pod.cpu_request),
        ("requests.memory", pod.memory_request),
        ("memory", pod.memory_request),
        ("limits.cpu", pod.cpu_limit),
        ("limits.memory", pod.memory_limit),
    ])
}

fn is_cpu(name: &str) -> bool {
    name == "cpu" || name.ends_with(".cpu")
}

fn is_memory(name: &str) -> bool {
    name == "memory" || name.ends_with(".memory")
}

fn parse_hard(name: &str, value: &Value) -> i64 {
    let text = value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    if is_cpu(name) {
        protocol::quantity::millicores(&text).unwrap_or(0)
    } else {
        protocol::quantity::parse(&text)
            .map(|q| q.round() as i64)
            .unwrap_or(0)
    }
}

fn format_amount(name: &str, amount: i64) -> String {
    if is_cpu(name) {
        format_millicores(amount)
    } else if is_memory(name) {
        format_bytes(amount)
    } else {
        amount.to_string()
    }
}

/// Current use, in a namespace, of each resource the quota's `hard` names.
fn usage(
    api: &ApiState,
    namespace: &str,
    hard: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let mut used: BTreeMap<String, i64> = hard.keys().map(|k| (k.clone(), 0)).collect();
    let pod_related = hard
        .keys()
        .any(|k| pod_usage(&dummy_pod()).contains_key(k.as_str()));
    if pod_related {
        let pods = api
            .store
            .list("core/pods", Some(namespace), None, 0, &|_| true)?;
        for pod in pods
            .items
            .iter()
            .map(PodInfo::from_object)
            .filter(|p| p.is_active())
        {
            for (name, amount) in pod_usage(&pod) {
                if let Some(total) = used.get_mut(name) {
                    *total += amount;
                }
            }
        }
    }
    for resource in crate::api::objects::namespaced_storage_keys() {
        if resource.kind == "Pod" {
            continue;
        }
        let names = count_names(resource);
        if !names.iter().any(|n| hard.contains_key(n)) {
            continue;
        }
        let count = api
            .store
            .list(&resource.storage_key(), Some(namespace), None, 0, &|_| true)?
            .items
            .len() as i64;
        for name in names {
            if let Some(total) = used.get_mut(&name) {
                *total = count;
            }
        }
    }
    Ok(used)
}

fn dummy_pod() -> PodInfo {
    PodInfo::from_object(&json!({}))
}

/// "requests.cpu for: web; limits.memory for: web": what a pod leaves out that a quota limits.
fn missing_amounts(pod: &Value, hard: &serde_json::Map<String, Value>) -> String {
    let mut parts = Vec::new();
    for (tracked, kind, name) in [
        ("requests.cpu", "requests", "cpu"),
        ("cpu", "requests", "cpu"),
        ("requests.memory", "requests", "memory"),
        ("memory", "requests", "memory"),
        ("limits.cpu", "limits", "cpu"),
        ("limits.memory", "limits", "memory"),
    ] {
        if !hard.contains_key(tracked) {
            continue;
        }
        let lacking: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let amount = &c["resources"][kind][name];
                // Upstream defaults a missing request to the limit.
                amount.is_null() && (kind == "limits" || c["resources"]["limits"][name].is_null())
            })
            .filter_map(|c| c["name"].as_str())
            .collect();
        if !lacking.is_empty() {
            parts.push(format!("{tracked} for: {}", lacking.join(",")));
        }
    }
    // Upstream names the resources in order.
    parts.sort();
    parts.join("; ")
}

/// A quota resource that would be exceeded: (name, requested, used, limit).
type Exceeded = (String, i64, i64, i64);

/// Refuses a create that would take a namespace over one of its quotas (403), or a pod that
/// does not say how much CPU or memory it needs when a quota limits them.
pub fn admit(api: &ApiState, resource: &Resource, object: &Value) -> Result<(), ApiError> {
    if !resource.namespaced || resource.group == "metrics.k8s.io" {
        return Ok(());
    }
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let quotas = api
        .store
        .list("core/resourcequotas", Some(namespace), None, 0, &|_| true)?;
    if quotas.items.is_empty() {
        return Ok(());
    }
    let mut requested: BTreeMap<String, i64> =
        count_names(resource).into_iter().map(|n| (n, 1)).collect();
    let pod = (resource.kind == "Pod").then(|| PodInfo::from_object(object));
    if let Some(pod) = &pod {
        for (name, amount) in pod_usage(pod) {
            requested.insert(name.to_owned(), amount);
        }
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let forbidden = |detail: String| {
        ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {detail}",
            resource.plural
        ))
    };
    for quota in &quotas.items {
        let quota_name = quota["metadata"]["name"].as_str().unwrap_or_default();
        let Some(hard) = quota["spec"]["hard"].as_object() else {
            continue;
        };
        if pod.is_some() {
            let missing = missing_amounts(object, hard);
            if !missing.is_empty() {
                return Err(forbidden(format!(
                    "failed quota: {quota_name}: must specify {missing}"
                )));
            }
        }
        let relevant: Vec<(&String, &Value)> = hard
            .iter()
            .filter(|(k, _)| requested.get(k.as_str()).is_some_and(|r| *r > 0))
            .collect();
        if relevant.is_empty() {
            continue;
        }
        let used = usage(api, namespace, hard)?;
        let mut exceeded: Vec<Exceeded> = Vec::new();
        for (resource_name, limit) in relevant {
            let limit = parse_hard(resource_name, limit);
            let asked = requested[resource_name.as_str()];
            let now = used.get(resource_name).copied().unwrap_or(0);
            if now + asked > limit {
                exceeded.push((resource_name.clone(), asked, now, limit));
            }
        }
        if !exceeded.is_empty() {
            // Upstream lists the resources in name order, whatever order `hard` has.
            exceeded.sort();
            let list = |pick: &dyn Fn(&Exceeded) -> i64| {
                exceeded
                    .iter()
                    .map(|e| format!("{}={}", e.0, format_amount(&e.0, pick(e))))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(forbidden(format!(
                "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                list(&|e| e.1),
                list(&|e| e.2),
                list(&|e| e.3)
            )));
        }
    }
    Ok(())
}

impl Reconciler for QuotaStatusController {
    fn name(&self) -> &'static str {
        "resourcequota-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        if change.resource == "core/resourcequotas" {
            return vec![(change.namespace.clone(), change.name.clone())];
        }
        if change.namespace.is_empty()
            || matches!(
                change.resource.as_str(),
                "core/events" | "coordination.k8s.io/leases"
            )
        {
            return Vec::new();
        }
        view.list_in("core/resourcequotas", &change.namespace)
            .map(|q| key_of(q))
            .collect()
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("core/resourcequotas")
            .map(|q| key_of(q))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(quota) = ctx
            .view()
            .get("core/resourcequotas", &key.0, &key.1)
            .cloned()
        else {
            return Ok(Action::Done);
        };
        let hard = quota["spec"]["hard"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let used = usage(&ctx.shared.api, &key.0, &hard)?;
        let used: serde_json::Map<String, Value> = used
            .into_iter()
            .map(|(name, amount)| {
                let text = format_amount(&name, amount);
                (name, json!(text))
            })
            .collect();
        let result = ctx.update_status("core/resourcequotas", &key.0, &key.1, |q| {
            q["status"] = json!({"hard": hard, "used": used});
            Ok(())
        });
        match result {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::DeleteOptions;
    use crate::controllers::testing::{key, TestCluster};

    fn pod(name: &str, requests: Value, limits: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1",
                "resources": {"requests": requests, "limits": limits}}]},
        })
    }

    fn quota(cluster: &TestCluster, name: &str, hard: Value) {
        cluster.create(
            "core/resourcequotas",
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"hard": hard}}),
        );
    }

    fn refusal(cluster: &TestCluster, storage_key: &str, object: Value) -> String {
        let name = object["metadata"]["name"].clone();
        let error = cluster
            .try_create(storage_key, object)
            .expect_err("over the quota");
        assert_eq!((error.code, error.reason), (403, "Forbidden"));
        assert!(
            cluster
                .get(storage_key, &key(name.as_str().unwrap()))
                .is_none(),
            "nothing stored"
        );
        error.message
    }

    #[test]
    fn creates_over_a_quota_are_refused_with_upstreams_message() {
        let cluster = TestCluster::new();
        // Not in name order: upstream lists the resources sorted.
        quota(
            &cluster,
            "compute",
            json!({"requests.memory": "1Gi", "requests.cpu": "1", "pods": "2"}),
        );
        cluster.create(
            "core/pods",
            pod("a", json!({"cpu": "500m", "memory": "512Mi"}), json!({})),
        );
        assert_eq!(
            refusal(
                &cluster,
                "core/pods",
                pod("b", json!({"cpu": "600m", "memory": "768Mi"}), json!({}))
            ),
            "pods \"b\" is forbidden: exceeded quota: compute, \
             requested: requests.cpu=600m,requests.memory=768Mi, \
             used: requests.cpu=500m,requests.memory=512Mi, \
             limited: requests.cpu=1,requests.memory=1Gi"
        );
        cluster.create(
            "core/pods",
            pod("c", json!({"cpu": "500m", "memory": "512Mi"}), json!({})),
        );
        assert_eq!(
            refusal(&cluster, "core/pods", pod("d", json!({"cpu": "0", "memory": "0"}), json!({}))),
            "pods \"d\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
        );
    }

    #[test]
    fn a_pod_must_say_what_it_needs_of_what_a_quota_limits() {
        let cluster = TestCluster::new();
        quota(
            &cluster,
            "compute",
            json!({"requests.cpu": "4", "limits.cpu": "4", "limits.memory": "4Gi"}),
        );
        assert_eq!(
            refusal(
                &cluster,
                "core/pods",
                pod("bare", json!({}), json!({"memory": "1Gi"}))
            ),
            "pods \"bare\" is forbidden: failed quota: compute: \
             must specify limits.cpu for: app; requests.cpu for: app"
        );
        // A limit stands in for the request it implies.
        cluster.create(
            "core/pods",
            pod("limited", json!({}), json!({"cpu": "1", "memory": "1Gi"})),
        );
    }

    #[test]
    fn object_counts_are_limited_too() {
        let cluster = TestCluster::new();
        quota(&cluster, "objects", json!({"count/configmaps": "1"}));
        let config_map =
            |name: &str| json!({"metadata": {"name": name, "namespace": "default"}, "data": {}});
        cluster.create("core/configmaps", config_map("first"));
        assert_eq!(
            refusal(&cluster, "core/configmaps", config_map("second")),
            "configmaps \"second\" is forbidden: exceeded quota: objects, \
             requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
        );
        cluster.create(
            "core/secrets",
            json!({"metadata": {"name": "s", "namespace": "default"}}),
        );
    }

    #[test]
    fn status_used_follows_what_the_namespace_holds() {
        let cluster = TestCluster::new();
        let hard = json!({"pods": "10", "requests.cpu": "2", "requests.memory": "2Gi",
                          "limits.memory": "4Gi", "count/configmaps": "5"});
        quota(&cluster, "compute", hard.clone());
        let controller = QuotaStatusController;
        assert_eq!(cluster.queued(&controller), [key("compute")]);
        assert_eq!(
            cluster.reconcile(&controller, &key("compute")),
            Action::Done
        );
        let status = |cluster: &TestCluster| {
            cluster.get("core/resourcequotas", &key("compute")).unwrap()["status"].clone()
        };
        assert_eq!(
            status(&cluster),
            json!({"hard": hard, "used": {"pods": "0", "requests.cpu": "0", "requests.memory": "0",
                                          "limits.memory": "0", "count/configmaps": "0"}})
        );

        cluster.create(
            "core/pods",
            pod(
                "a",
                json!({"cpu": "500m", "memory": "512Mi"}),
                json!({"memory": "1Gi"}),
            ),
        );
        cluster.create(
            "core/pods",
            pod(
                "b",
                json!({"cpu": "250m", "memory": "256Mi"}),
                json!({"memory": "512Mi"}),
            ),
        );
        cluster.create(
            "core/configmaps",
            json!({"metadata": {"name": "x", "namespace": "default"}}),
        );
        assert_eq!(cluster.queued(&controller), [key("compute")]);
        cluster.reconcile(&controller, &key("compute"));
        assert_eq!(
            status(&cluster)["used"],
            json!({"pods": "2", "requests.cpu": "750m", "requests.memory": "768Mi",
                   "limits.memory": "1536Mi", "count/configmaps": "1"})
        );

        cluster.set_pod_status(&key("a"), "Succeeded", "", None);
        cluster.delete("core/pods", &key("b"), &DeleteOptions::default());
        cluster.reconcile(&controller, &key("compute"));
        assert_eq!(
            status(&cluster)["used"],
            json!({"pods": "0", "requests.cpu": "0", "requests.memory": "0",
                   "limits.memory": "0", "count/configmaps": "1"}),
            "finished and deleted pods no longer count"
        );
    }
}
