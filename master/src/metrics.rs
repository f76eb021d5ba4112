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
use protocol::selector::LabelSelector;

/// Reports older than this are no longer served.
const MAX_AGE: Duration = Duration::from_secs(90);

/// One container's usage: (name, CPU in nanocores, memory in bytes). Held as numbers, not
/// JSON: 30,000 pods' worth must stay small.
type ContainerUsage = (String, i64, i64);

struct PodUsage {
    node: String,
    received: Instant,
    timestamp: String,
    window: String,
    containers: Vec<ContainerUsage>,
}

struct NodeUsage {
    received: Instant,
    timestamp: String,
    window: String,
    cpu: i64,
    memory: i64,
}

#[derive(Default)]
struct Usage {
    nodes: HashMap<String, NodeUsage>,
    pods: HashMap<(String, String), PodUsage>,
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

fn amount(value: &Value, scale: f64) -> i64 {
    value
        .as_str()
        .and_then(protocol::quantity::parse)
        .map(|q| (q * scale).round() as i64)
        .unwrap_or(0)
}

fn usage_json(cpu_nanos: i64, memory: i64) -> Value {
    json!({"cpu": format!("{cpu_nanos}n"), "memory": format!("{}Ki", memory / 1024)})
}

impl MetricsRegistry {
    /// Takes a node's report: its NodeMetrics with the PodMetrics of its pods under `pods`.
    pub fn report(&self, node: &str, report: Value) -> Result<Value, ApiError> {
        if !report.is_object() || !report["usage"].is_object() {
            return Err(ApiError::bad_request("a NodeMetrics report needs usage"));
        }
        let now = Instant::now();
        let text = |v: &Value, default: &str| v.as_str().unwrap_or(default).to_owned();
        let mut usage = self.usage.write().expect("metrics lock");
        usage.pods.retain(|_, pod| pod.node != node);
        for pod in report["pods"].as_array().into_iter().flatten() {
            let namespace = text(&pod["metadata"]["namespace"], "");
            let name = text(&pod["metadata"]["name"], "");
            if namespace.is_empty() || name.is_empty() {
                continue;
            }
            let containers = pod["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        text(&c["name"], ""),
                        amount(&c["usage"]["cpu"], 1e9),
                        amount(&c["usage"]["memory"], 1.0),
                    )
                })
                .collect();
            usage.pods.insert(
                (namespace, name),
                PodUsage {
                    node: node.to_owned(),
                    received: now,
                    timestamp: text(
                        &pod["timestamp"],
                        report["timestamp"].as_str().unwrap_or_default(),
                    ),
                    window: text(&pod["window"], "15s"),
                    containers,
                },
            );
        }
        let entry = NodeUsage {
            received: now,
            timestamp: text(&report["timestamp"], ""),
            window: text(&report["window"], "15s"),
            cpu: amount(&report["usage"]["cpu"], 1e9),
            memory: amount(&report["usage"]["memory"], 1.0),
        };
        let rendered = render_node(node, &entry);
        usage.nodes.insert(node.to_owned(), entry);
        Ok(rendered)
    }

    /// The usage of one pod's containers summed: (CPU millicores, memory bytes), if reported lately.
    pub fn pod_usage(&self, namespace: &str, name: &str) -> Option<(i64, i64)> {
        let usage = self.usage.read().expect("metrics lock");
        let pod = usage.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        if pod.received.elapsed() > MAX_AGE {
            return None;
        }
        let cpu: i64 = pod.containers.iter().map(|c| c.1).sum();
        let memory: i64 = pod.containers.iter().map(|c| c.2).sum();
        Some(((cpu as f64 / 1e6).round() as i64, memory))
    }

    fn node_list(&self) -> Vec<Value> {
        let usage = self.usage.read().expect("metrics lock");
        let mut names: Vec<&String> = usage
            .nodes
            .iter()
            .filter(|(_, n)| n.received.elapsed() <= MAX_AGE)
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| render_node(name, &usage.nodes[name]))
            .collect()
    }

    fn pod_list(&self, namespace: Option<&str>) -> Vec<Value> {
        let usage = self.usage.read().expect("metrics lock");
        let mut keys: Vec<&(String, String)> = usage
            .pods
            .iter()
            .filter(|((ns, _), pod)| {
                namespace.is_none_or(|n| n == ns) && pod.received.elapsed() <= MAX_AGE
            })
            .map(|(key, _)| key)
            .collect();
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let pod = &usage.pods[key];
                json!({
                    "apiVersion": "metrics.k8s.io/v1beta1",
                    "kind": "PodMetrics",
                    "metadata": {"name": key.1, "namespace": key.0},
                    "timestamp": pod.timestamp,
                    "window": pod.window,
                    "containers": pod.containers.iter().map(|(name, cpu, memory)| json!({"name": name, "usage": usage_json(*cpu, *memory)})).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}

fn render_node(name: &str, node: &NodeUsage) -> Value {
    json!({
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "NodeMetrics",
        "metadata": {"name": name},
        "timestamp": node.timestamp,
        "window": node.window,
        "usage": usage_json(node.cpu, node.memory),
    })
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
