//! The resource metrics API (`metrics.k8s.io/v1beta1`): node and pod usage that nodes report, held in memory.
//!
//! Upstream, metrics-server scrapes every kubelet; here each node pushes one report per interval
//! (`PUT /apis/metrics.k8s.io/v1beta1/nodes/NAME`, a NodeMetrics with an extra `pods` list of
//! PodMetrics), which replaces everything that node said before. Reads are the standard API, so
//! `kubectl top` and the autoscaler work unchanged. Nothing here touches the disk: usage is
//! only worth its last few reports.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::selector::LabelSelector;

/// Reports older than this are no longer served.
const MAX_AGE: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Usage {
    nodes: HashMap<String, (Value, Instant)>,
    pods: HashMap<(String, String), (Value, Instant, String)>,
}

/// The latest usage each node reported, for itself and its pods.
#[derive(Default)]
pub struct MetricsRegistry {
    usage: RwLock<Usage>,
}

fn not_found(kind: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{kind}.metrics.k8s.io \"{name}\" not found"),
    )
}

impl MetricsRegistry {
    /// Takes a node's report: its NodeMetrics with the PodMetrics of its pods under `pods`.
    pub fn report(&self, node: &str, mut report: Value) -> Result<Value, ApiError> {
        if !report.is_object() || !report["usage"].is_object() {
            return Err(ApiError::bad_request("a NodeMetrics report needs usage"));
        }
        let pods = report
            .as_object_mut()
            .and_then(|r| r.remove("pods"))
            .unwrap_or_else(|| json!([]));
        let pods = pods.as_array().cloned().unwrap_or_default();
        report["apiVersion"] = json!("metrics.k8s.io/v1beta1");
        report["kind"] = json!("NodeMetrics");
        report["metadata"] =
            json!({"name": node, "creationTimestamp": crate::controllers::now_time()});
        let now = Instant::now();
        let mut usage = self.usage.write().expect("metrics lock");
        usage.pods.retain(|_, (_, _, reporter)| reporter != node);
        for mut pod in pods {
            let namespace = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if namespace.is_empty() || name.is_empty() {
                continue;
            }
            pod["apiVersion"] = json!("metrics.k8s.io/v1beta1");
            pod["kind"] = json!("PodMetrics");
            usage
                .pods
                .insert((namespace, name), (pod, now, node.to_owned()));
        }
        usage.nodes.insert(node.to_owned(), (report.clone(), now));
        Ok(report)
    }

    /// The usage of one pod's containers summed: (CPU millicores, memory bytes), if reported lately.
    pub fn pod_usage(&self, namespace: &str, name: &str) -> Option<(i64, i64)> {
        let usage = self.usage.read().expect("metrics lock");
        let (pod, at, _) = usage.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        if at.elapsed() > MAX_AGE {
            return None;
        }
        let mut cpu = 0.0;
        let mut memory = 0.0;
        for container in pod["containers"].as_array().into_iter().flatten() {
            cpu += container["usage"]["cpu"]
                .as_str()
                .and_then(crate::quantity::parse)
                .unwrap_or(0.0);
            memory += container["usage"]["memory"]
                .as_str()
                .and_then(crate::quantity::parse)
                .unwrap_or(0.0);
        }
        Some(((cpu * 1000.0).round() as i64, memory as i64))
    }

    fn node_list(&self) -> Vec<Value> {
        let usage = self.usage.read().expect("metrics lock");
        let mut nodes: Vec<Value> = usage
            .nodes
            .values()
            .filter(|(_, at)| at.elapsed() <= MAX_AGE)
            .map(|(v, _)| v.clone())
            .collect();
        nodes.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        nodes
    }

    fn pod_list(&self, namespace: Option<&str>) -> Vec<Value> {
        let usage = self.usage.read().expect("metrics lock");
        let mut pods: Vec<(&(String, String), Value)> = usage
            .pods
            .iter()
            .filter(|((ns, _), (_, at, _))| {
                namespace.is_none_or(|n| n == ns) && at.elapsed() <= MAX_AGE
            })
            .map(|(key, (v, _, _))| (key, v.clone()))
            .collect();
        pods.sort_by(|a, b| a.0.cmp(b.0));
        pods.into_iter().map(|(_, v)| v).collect()
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
}

/// Serves `/apis/metrics.k8s.io/v1beta1/...`: GET of nodes and pods, PUT of node reports.
/// Pod lists honour `labelSelector` against the pods' labels in the store.
pub fn serve(
    api: &crate::api::ApiState,
    method: &http::Method,
    rest: &[&str],
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let registry = &api.metrics;
    let selector = match query.get("labelSelector").filter(|s| !s.is_empty()) {
        Some(text) => {
            Some(LabelSelector::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?)
        }
        None => None,
    };
    let labels_of = |namespace: &str, name: &str| -> Value {
        api.store
            .get("core/pods", namespace, name)
            .ok()
            .flatten()
            .map(|p| p["metadata"]["labels"].clone())
            .unwrap_or(Value::Null)
    };
    let with_labels = |mut pods: Vec<Value>| -> Vec<Value> {
        pods.retain_mut(|pod| {
            let namespace = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let labels = labels_of(&namespace, &name);
            if labels.is_object() {
                pod["metadata"]["labels"] = labels;
            }
            selector.as_ref().is_none_or(|s| s.matches_object(pod))
        });
        pods
    };
    match (method.as_str(), rest) {
        ("GET", ["nodes"]) => {
            let mut nodes = registry.node_list();
            if let Some(selector) = &selector {
                nodes.retain(|n| {
                    let name = n["metadata"]["name"].as_str().unwrap_or_default();
                    api.store
                        .get("core/nodes", "", name)
                        .ok()
                        .flatten()
                        .is_some_and(|node| selector.matches_object(&node))
                });
            }
            Ok(list("NodeMetricsList", nodes))
        }
        ("GET", ["nodes", name]) => registry
            .node_list()
            .into_iter()
            .find(|n| n["metadata"]["name"] == *name)
            .ok_or_else(|| not_found("nodemetrics", name)),
        ("PUT", ["nodes", name]) => {
            let report: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("cannot decode the NodeMetrics report: {e}"))
            })?;
            registry.report(name, report)
        }
        ("GET", ["pods"]) => Ok(list("PodMetricsList", with_labels(registry.pod_list(None)))),
        ("GET", ["namespaces", namespace, "pods"]) => Ok(list(
            "PodMetricsList",
            with_labels(registry.pod_list(Some(namespace))),
        )),
        ("GET", ["namespaces", namespace, "pods", name]) => {
            with_labels(registry.pod_list(Some(namespace)))
                .into_iter()
                .find(|p| p["metadata"]["name"] == *name)
                .ok_or_else(|| not_found("podmetrics", name))
        }
        ("GET" | "PUT", _) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        (other, _) => Err(ApiError::method_not_allowed(other)),
    }
}
