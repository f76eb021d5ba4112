//! HorizontalPodAutoscaler: scales a Deployment, ReplicaSet or ReplicationController on reported CPU or memory.
//!
//! Each sync: utilization = usage of the target's ready pods / their requests; desired =
//! ceil(ready pods × utilization / target), unchanged within 10 % of the target; clamped to
//! min/max and to the scaling policies, and smoothed by the stabilization windows (scale-down
//! waits 5 minutes by default, as upstream).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::replicas::selector_of;
use super::view::{Key, View};
use super::{key_of, now_time, set_condition, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;
use crate::HealthTimings;

/// Changes within this fraction of the target do nothing.
const TOLERANCE: f64 = 0.1;

/// The autoscaler.
pub struct AutoscalerController {
    timings: HealthTimings,
    /// Recent recommendations per HPA, for the stabilization windows.
    recommendations: Mutex<HashMap<Key, Vec<(Instant, i64)>>>,
}

impl AutoscalerController {
    /// An autoscaler syncing at the profile's interval.
    pub fn new(timings: HealthTimings) -> Self {
        AutoscalerController {
            timings,
            recommendations: Mutex::new(HashMap::new()),
        }
    }
}

fn target_storage_key(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" => Some("apps/deployments"),
        "ReplicaSet" => Some("apps/replicasets"),
        "ReplicationController" => Some("core/replicationcontrollers"),
        "StatefulSet" => Some("apps/statefulsets"),
        _ => None,
    }
}

/// The most the policies allow to add (`up`) or remove from `current` replicas.
fn policy_limit(rules: &Value, current: i64, up: bool) -> i64 {
    let policies = rules["policies"].as_array();
    let select = rules["selectPolicy"].as_str().unwrap_or("Max");
    if select == "Disabled" {
        return 0;
    }
    let defaults = if up {
        vec![
            json!({"type": "Percent", "value": 100}),
            json!({"type": "Pods", "value": 4}),
        ]
    } else {
        vec![json!({"type": "Percent", "value": 100})]
    };
    let policies = policies.cloned().unwrap_or(defaults);
    let limits = policies.iter().map(|p| {
        let value = p["value"].as_i64().unwrap_or(0);
        match p["type"].as_str() {
            Some("Percent") => (current * value + 99) / 100,
            _ => value,
        }
    });
    if select == "Min" {
        limits.min().unwrap_or(0)
    } else {
        limits.max().unwrap_or(0)
    }
}

impl Reconciler for AutoscalerController {
    fn name(&self) -> &'static str {
        "horizontal-pod-autoscaler"
    }

    fn resync_every(&self) -> Duration {
        self.timings.hpa_sync
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        if change.resource == "autoscaling/horizontalpodautoscalers" {
            return vec![(change.namespace.clone(), change.name.clone())];
        }
        Vec::new()
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("autoscaling/horizontalpodautoscalers")
            .map(|h| key_of(h))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(hpa) = ctx
            .view()
            .get("autoscaling/horizontalpodautoscalers", &key.0, &key.1)
            .cloned()
        else {
            self.recommendations.lock().expect("hpa lock").remove(key);
            return Ok(Action::Done);
        };
        let reference = &hpa["spec"]["scaleTargetRef"];
        let kind = reference["kind"].as_str().unwrap_or_default();
        let target_name = reference["name"].as_str().unwrap_or_default();
        let storage_key = target_storage_key(kind);
        let target = storage_key.and_then(|k| ctx.view().get(k, &key.0, target_name).cloned());
        // A failure shows as AbleToScale=False (no target) or ScalingActive=False (no usable
        // metrics), as upstream reports them.
        let fail = |condition: &str,
                    reason: &str,
                    message: String,
                    current: Option<i64>|
         -> Result<Action, ApiError> {
            ctx.event(&hpa, "Warning", reason, &message);
            let result = ctx.update_status(
                "autoscaling/horizontalpodautoscalers",
                &key.0,
                &key.1,
                |h| {
                    if !h["status"].is_object() {
                        h["status"] = json!({"desiredReplicas": 0});
                    }
                    if let Some(current) = current {
                        h["status"]["currentReplicas"] = json!(current);
                        h["status"]["desiredReplicas"] = json!(current);
                    }
                    set_condition(h, condition, "False", reason, &message);
                    Ok(())
                },
            );
            match result {
                Ok(_) | Err(ApiError { code: 404, .. }) => {
                    Ok(Action::RequeueAfter(self.timings.hpa_sync))
                }
                Err(e) => Err(e),
            }
        };
        let (Some(storage_key), Some(target)) = (storage_key, target) else {
            return fail("AbleToScale", "FailedGetScale", format!("the HPA controller was unable to get the target's current scale: {} \"{target_name}\" not found", kind.to_lowercase()), None);
        };
        let current = target["spec"]["replicas"].as_i64().unwrap_or(1);
        let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
        let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1);
        let selector = selector_of(&target);
        let pods: Vec<_> = ctx
            .view()
            .pods_in(&key.0)
            .filter(|p| p.is_active() && selector.matches_map(&p.labels))
            .cloned()
            .collect();

        // The first metric the HPA names that we can compute (CPU or memory, by utilization
        // or average value).
        let metric = hpa["spec"]["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["type"] == "Resource" && matches!(m["resource"]["name"].as_str(), Some("cpu" | "memory")))
            .cloned()
            .unwrap_or_else(|| json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}));
        let resource = metric["resource"]["name"]
            .as_str()
            .unwrap_or("cpu")
            .to_owned();
        let goal = &metric["resource"]["target"];
        let (mut used, mut requested, mut counted) = (0i64, 0i64, 0i64);
        for pod in pods.iter().filter(|p| p.ready) {
            let Some((cpu, memory)) = ctx.shared.metrics.pod_usage(&pod.namespace, &pod.name)
            else {
                continue;
            };
            let (usage, request) = if resource == "cpu" {
                (cpu, pod.cpu_request)
            } else {
                (memory, pod.memory_request)
            };
            used += usage;
            requested += request;
            counted += 1;
        }
        if counted == 0 {
            return fail("ScalingActive", "FailedGetResourceMetric", format!("failed to get {resource} utilization: unable to get metrics for resource {resource}: no metrics returned from resource metrics API"), Some(current));
        }
        let average = used / counted;
        let (ratio, current_metric) = match goal["type"].as_str() {
            Some("AverageValue") => {
                let wanted = goal["averageValue"]
                    .as_str()
                    .and_then(protocol::quantity::parse)
                    .unwrap_or(1.0);
                let wanted = if resource == "cpu" {
                    wanted * 1000.0
                } else {
                    wanted
                };
                let value = if resource == "cpu" {
                    protocol::quantity::format_millicores(average)
                } else {
                    average.to_string()
                };
                (
                    average as f64 / wanted.max(1.0),
                    json!({"averageValue": value}),
                )
            }
            _ => {
                if requested == 0 {
                    return fail(
                        "ScalingActive",
                        "FailedGetResourceMetric",
                        format!(
                            "failed to get {resource} utilization: missing request for {resource}"
                        ),
                        Some(current),
                    );
                }
                let utilization = (used * 100) / requested;
                let wanted = goal["averageUtilization"].as_i64().unwrap_or(80).max(1);
                let value = if resource == "cpu" {
                    protocol::quantity::format_millicores(average)
                } else {
                    average.to_string()
                };
                (
                    utilization as f64 / wanted as f64,
                    json!({"averageUtilization": utilization, "averageValue": value}),
                )
            }
        };
        let recommendation = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (ratio * counted as f64).ceil() as i64
        };

        // Stabilization: scale down to the highest recommendation of the window, up to the lowest.
        let behavior = &hpa["spec"]["behavior"];
        let down_window = behavior["scaleDown"]["stabilizationWindowSeconds"]
            .as_i64()
            .unwrap_or(300)
            .max(0) as u64;
        let up_window = behavior["scaleUp"]["stabilizationWindowSeconds"]
            .as_i64()
            .unwrap_or(0)
            .max(0) as u64;
        let stabilized = {
            let mut all = self.recommendations.lock().expect("hpa lock");
            let history = all.entry(key.clone()).or_default();
            let now = Instant::now();
            history.push((now, recommendation));
            let keep = Duration::from_secs(down_window.max(up_window));
            history.retain(|(at, _)| now.duration_since(*at) <= keep);
            let within = |window: u64| {
                history
                    .iter()
                    .filter(move |(at, _)| now.duration_since(*at) <= Duration::from_secs(window))
                    .map(|(_, r)| *r)
            };
            let highest = within(down_window).max().unwrap_or(recommendation);
            let lowest = within(up_window).min().unwrap_or(recommendation);
            if recommendation < current {
                highest.min(current)
            } else if recommendation > current {
                lowest.max(current)
            } else {
                current
            }
        };
        let mut desired = stabilized;
        if desired > current {
            desired = desired.min(current + policy_limit(&behavior["scaleUp"], current, true));
        } else if desired < current {
            desired = desired.max(current - policy_limit(&behavior["scaleDown"], current, false));
        }
        let limited = desired.clamp(min, max);
        let (limited_status, limited_reason, limited_message) = if desired > max {
            (
                "True",
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        } else if desired < min {
            (
                "True",
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else {
            (
                "False",
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        let desired = limited;
        let rescaled = desired != current;
        if rescaled {
            ctx.update(storage_key, &key.0, target_name, |t| {
                t["spec"]["replicas"] = json!(desired);
                Ok(())
            })?;
            let direction = if desired > current { "above" } else { "below" };
            let what = if goal["type"] == "AverageValue" {
                format!("{resource} resource")
            } else {
                format!("{resource} resource utilization (percentage of request)")
            };
            ctx.event(
                &hpa,
                "Normal",
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {what} {direction} target"),
            );
        }
        let generation = hpa["metadata"]["generation"].clone();
        let result = ctx.update_status("autoscaling/horizontalpodautoscalers", &key.0, &key.1, |h| {
            let last_scale = if rescaled { json!(now_time()) } else { h["status"]["lastScaleTime"].clone() };
            let conditions = h["status"]["conditions"].clone();
            h["status"] = json!({
                "observedGeneration": generation,
                "currentReplicas": current,
                "desiredReplicas": desired,
                "currentMetrics": [{"type": "Resource", "resource": {"name": resource, "current": current_metric}}],
                "conditions": conditions,
            });
            if !last_scale.is_null() {
                h["status"]["lastScaleTime"] = last_scale;
            }
            if h["status"]["conditions"].is_null() {
                h["status"]["conditions"] = json!([]);
            }
            let (reason, message) = if rescaled {
                ("SucceededRescale", format!("the HPA controller was able to update the target scale to {desired}"))
            } else {
                ("ReadyForNewScale", "recommended size matches current size".to_owned())
            };
            set_condition(h, "AbleToScale", "True", reason, &message);
            set_condition(h, "ScalingActive", "True", "ValidMetricFound", &format!("the HPA was able to successfully calculate a replica count from {resource} resource utilization (percentage of request)"));
            set_condition(h, "ScalingLimited", limited_status, limited_reason, limited_message);
            Ok(())
        });
        match result {
            Ok(_) | Err(ApiError { code: 404, .. }) => {
                Ok(Action::RequeueAfter(self.timings.hpa_sync))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_double_or_add_four() {
        assert_eq!(policy_limit(&Value::Null, 2, true), 4);
        assert_eq!(policy_limit(&Value::Null, 10, true), 10);
        assert_eq!(policy_limit(&Value::Null, 10, false), 10);
        let pods_only = json!({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]});
        assert_eq!(policy_limit(&pods_only, 10, false), 1);
    }
}
