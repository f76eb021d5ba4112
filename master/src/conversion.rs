//! Conversion between served versions and the stored version, and the `autoscaling/v1` Scale view of scalable objects.
//!
//! Only HorizontalPodAutoscaler is served in two versions: it is stored as `autoscaling/v2` and
//! converted for `autoscaling/v1` clients. v1 can express only a CPU utilisation target, so an
//! update through v1 replaces the metrics list with that one target.

use serde_json::{json, Map, Value};

use crate::resources::Resource;

/// Converts a stored object to the version `resource` serves.
pub fn from_storage(resource: &Resource, mut object: Value) -> Value {
    if resource.kind == "HorizontalPodAutoscaler" && resource.version == "v1" {
        object = hpa_v2_to_v1(object);
    }
    if let Some(map) = object.as_object_mut() {
        set_type_meta(map, &resource.api_version(), resource.kind);
    }
    object
}

/// Converts an object of the version `resource` serves to the stored version.
pub fn to_storage(resource: &Resource, mut object: Value) -> Value {
    if resource.kind == "HorizontalPodAutoscaler" && resource.version == "v1" {
        object = hpa_v1_to_v2(object);
    }
    if let Some(map) = object.as_object_mut() {
        set_type_meta(map, &resource.storage_api_version(), resource.kind);
    }
    object
}

fn set_type_meta(map: &mut Map<String, Value>, api_version: &str, kind: &str) {
    // Keep apiVersion and kind first, as upstream prints them.
    let rest: Vec<(String, Value)> = std::mem::take(map)
        .into_iter()
        .filter(|(k, _)| k != "apiVersion" && k != "kind")
        .collect();
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(kind));
    map.extend(rest);
}

fn hpa_v2_to_v1(mut object: Value) -> Value {
    let cpu_target = object
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .and_then(|metrics| {
            metrics.iter().find(|m| {
                m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu"))
            })
        })
        .and_then(|m| m.pointer("/resource/target/averageUtilization").cloned());
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(target) = cpu_target {
            spec.insert("targetCPUUtilizationPercentage".into(), target);
        }
    }
    let current_cpu = object
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .and_then(|metrics| {
            metrics.iter().find(|m| {
                m["type"] == "Resource" && m.pointer("/resource/name") == Some(&json!("cpu"))
            })
        })
        .and_then(|m| m.pointer("/resource/current/averageUtilization").cloned());
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("currentMetrics");
        status.remove("conditions");
        // v1 always carries both counts; v2 omits `currentReplicas` at zero.
        for field in ["currentReplicas", "desiredReplicas"] {
            status.entry(field).or_insert(json!(0));
        }
        if let Some(current) = current_cpu {
            status.insert("currentCPUUtilizationPercentage".into(), current);
        }
    }
    object
}

fn hpa_v1_to_v2(mut object: Value) -> Value {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(target) = spec.remove("targetCPUUtilizationPercentage") {
            spec.insert(
                "metrics".into(),
                json!([{
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
                }]),
            );
        }
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        if let Some(current) = status.remove("currentCPUUtilizationPercentage") {
            status.insert(
                "currentMetrics".into(),
                json!([{
                    "type": "Resource",
                    "resource": {"name": "cpu", "current": {"averageUtilization": current}},
                }]),
            );
        }
    }
    object
}

/// The `autoscaling/v1` Scale of a Deployment, ReplicaSet, ReplicationController or StatefulSet.
pub fn scale_of(resource: &Resource, object: &Value) -> Value {
    let metadata = &object["metadata"];
    let mut scale_metadata = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field) {
            scale_metadata.insert(field.into(), value.clone());
        }
    }
    let selector = match resource.kind {
        "ReplicationController" => object
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => label_selector_string(object.pointer("/spec/selector").unwrap_or(&Value::Null)),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_metadata,
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// A `metav1.LabelSelector` in its query-string form (`app=web,tier in (a,b)`).
pub fn label_selector_string(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in labels {
            parts.push(format!("{key}={}", value.as_str().unwrap_or_default()));
        }
    }
    for expression in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expression["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expression["operator"].as_str().unwrap_or_default() {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_owned()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.sort();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn hpa_round_trips_between_v1_and_v2() {
        let v1 = resources::find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let object = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50},
        });
        let stored = to_storage(v1, object.clone());
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(from_storage(v1, stored), object);
    }

    #[test]
    fn scale_shows_replicas_and_selector() {
        let deployments = resources::find("apps", "v1", "deployments").unwrap();
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2},
        });
        let scale = scale_of(deployments, &deployment);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["selector"], "app=web,tier in (a,b)");
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
    }
}
