//! LimitRange: its defaults and validation, and the LimitRanger admission that fills in default
//! requests and limits of new pods and refuses pods and claims outside the ranges.
//!
//! Upstream's `SetDefaults_LimitRangeItem`, `ValidateLimitRange` and
//! `plugin/pkg/admission/limitranger`. Admission runs in two phases, as upstream's: defaults
//! (mutating, before validation) and checks (validating, before quotas).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::admission::{FieldError, FieldErrorKind};
use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::controllers::view::string_map as resource_map;
use crate::resources::Resource;
use protocol::quantity;

/// The annotation naming what the plugin defaulted.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ei", 60),
    ("Pi", 50),
    ("Ti", 40),
    ("Gi", 30),
    ("Mi", 20),
    ("Ki", 10),
];
const DECIMAL_SUFFIXES: [(&str, u32); 6] = [
    ("E", 18),
    ("P", 15),
    ("T", 12),
    ("G", 9),
    ("M", 6),
    ("k", 3),
];

/// A quantity in thousandths of its unit, so `100m` CPU and `1Gi` of memory compare exactly.
fn milli(text: &str) -> Option<i128> {
    quantity::parse(text).map(|q| (q * 1000.0).round() as i128)
}

/// A quantity as upstream's `Quantity.String()` writes it: binary suffixes stay binary
/// (`1024Mi` is `1Gi`), anything else takes the largest decimal suffix that keeps an integer.
pub fn canonical(text: &str) -> String {
    let Some(millis) = milli(text) else {
        return text.to_owned();
    };
    if millis % 1000 != 0 {
        return format!("{millis}m");
    }
    let units = millis / 1000;
    let binary = BINARY_SUFFIXES
        .iter()
        .any(|(suffix, _)| text.trim().ends_with(suffix));
    if units == 0 {
        return "0".into();
    }
    if binary {
        for (suffix, shift) in BINARY_SUFFIXES {
            let size = 1i128 << shift;
            if units % size == 0 {
                return format!("{}{suffix}", units / size);
            }
        }
        return units.to_string();
    }
    for (suffix, exponent) in DECIMAL_SUFFIXES {
        let size = 10i128.pow(exponent);
        if units % size == 0 {
            return format!("{}{suffix}", units / size);
        }
    }
    units.to_string()
}

// ----- the object ----------------------------------------------------------------------------

/// `SetDefaults_LimitRangeItem` for `type: Container`: a default limit from `max`, a default
/// request from the default limit, else from `min`.
pub fn apply_defaults(limit_range: &mut Value) {
    for item in limit_range
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if item["type"] != "Container" {
            continue;
        }
        let fill = |item: &mut Value, from: &str, to: &str| {
            let source = resource_map(&item[from]);
            for (name, amount) in source {
                if item[to].get(&name).is_none() {
                    if !item[to].is_object() {
                        item[to] = json!({});
                    }
                    item[to][name] = json!(amount);
                }
            }
        };
        fill(item, "max", "default");
        fill(item, "default", "defaultRequest");
        fill(item, "min", "defaultRequest");
    }
}

/// `ValidateLimitRange`: types, what a type may carry, and min ≤ default request ≤ default ≤ max.
pub fn validate(limit_range: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen_types: Vec<String> = Vec::new();
    let items = limit_range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (index, item) in items.iter().enumerate() {
        let path = format!("spec.limits[{index}]");
        let kind = item["type"].as_str().unwrap_or_default();
        if seen_types.iter().any(|t| t == kind) {
            errors.push(FieldError::new(
                FieldErrorKind::Duplicate,
                &format!("{path}.type"),
                Some(kind.to_owned()),
                "",
            ));
        } else {
            seen_types.push(kind.to_owned());
        }
        if !matches!(kind, "Pod" | "Container" | "PersistentVolumeClaim") && !kind.contains('/') {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                &format!("{path}.type"),
                Some(kind.to_owned()),
                "must be a standard limit type or fully qualified",
            ));
        }
        let [max, min, default, default_request, ratio] = [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ]
        .map(|field| resource_map(&item[field]));
        if kind == "Pod" {
            for (field, values) in [("default", &default), ("defaultRequest", &default_request)] {
                if !values.is_empty() {
                    errors.push(FieldError::new(
                        FieldErrorKind::Forbidden,
                        &format!("{path}.{field}"),
                        None,
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        }
        if kind == "PersistentVolumeClaim"
            && !min.contains_key("storage")
            && !max.contains_key("storage")
        {
            errors.push(FieldError::new(
                FieldErrorKind::Required,
                &format!("{path}.limits"),
                None,
                "either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let mut names: Vec<&String> = max
            .keys()
            .chain(min.keys())
            .chain(default.keys())
            .chain(default_request.keys())
            .chain(ratio.keys())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let value = |map: &BTreeMap<String, String>| map.get(name).and_then(|v| milli(v));
            let shown = |map: &BTreeMap<String, String>| canonical(&map[name]);
            let mut invalid = |field: &str, map: &BTreeMap<String, String>, detail: String| {
                errors.push(FieldError::new(
                    FieldErrorKind::Invalid,
                    &format!("{path}.{field}[{name}]"),
                    Some(shown(map)),
                    &detail,
                ));
            };
            let (mx, mn, df, dr, ra) = (
                value(&max),
                value(&min),
                value(&default),
                value(&default_request),
                value(&ratio),
            );
            if let (Some(mn), Some(mx)) = (mn, mx) {
                if mn > mx {
                    invalid(
                        "min",
                        &min,
                        format!(
                            "min value {} is greater than max value {}",
                            shown(&min),
                            shown(&max)
                        ),
                    );
                }
            }
            if let Some(dr) = dr {
                if mn.is_some_and(|mn| mn > dr) {
                    invalid(
                        "defaultRequest",
                        &default_request,
                        format!(
                            "min value {} is greater than default request value {}",
                            shown(&min),
                            shown(&default_request)
                        ),
                    );
                }
                if mx.is_some_and(|mx| dr > mx) {
                    invalid(
                        "defaultRequest",
                        &default_request,
                        format!(
                            "default request value {} is greater than max value {}",
                            shown(&default_request),
                            shown(&max)
                        ),
                    );
                }
                if df.is_some_and(|df| dr > df) {
                    invalid(
                        "defaultRequest",
                        &default_request,
                        format!(
                            "default request value {} is greater than default limit value {}",
                            shown(&default_request),
                            shown(&default)
                        ),
                    );
                }
            }
            if let Some(df) = df {
                if mn.is_some_and(|mn| mn > df) {
                    invalid(
                        "default",
                        &default,
                        format!(
                            "min value {} is greater than default value {}",
                            shown(&min),
                            shown(&default)
                        ),
                    );
                }
                if mx.is_some_and(|mx| df > mx) {
                    invalid(
                        "default",
                        &default,
                        format!(
                            "default value {} is greater than max value {}",
                            shown(&default),
                            shown(&max)
                        ),
                    );
                }
            }
            if let Some(ra) = ra {
                if ra < 1000 {
                    invalid(
                        "maxLimitRequestRatio",
                        &ratio,
                        format!("ratio {} is less than 1", shown(&ratio)),
                    );
                }
                if let (Some(mx), Some(mn)) = (mx, mn) {
                    if mn > 0 && ra * mn > mx * 1000 {
                        invalid(
                            "maxLimitRequestRatio",
                            &ratio,
                            format!(
                                "ratio {} is greater than max/min = {:.6}",
                                shown(&ratio),
                                mx as f64 / mn as f64
                            ),
                        );
                    }
                }
            }
        }
    }
    errors
}

// ----- admission -----------------------------------------------------------------------------

/// Upstream's pod defaulting (`SetDefaults_Pod`): a container with a limit but no request for a
/// resource requests its limit. Runs before LimitRanger, which then defaults only the rest.
pub fn requests_from_limits(spec: &mut Value) {
    for field in ["containers", "initContainers"] {
        for container in spec
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let limits = resource_map(&container["resources"]["limits"]);
            if limits.is_empty() || !container.is_object() {
                continue;
            }
            if !container["resources"]["requests"].is_object() {
                if !container["resources"].is_object() {
                    container["resources"] = json!({});
                }
                container["resources"]["requests"] = json!({});
            }
            for (name, amount) in limits {
                if container["resources"]["requests"].get(&name).is_none() {
                    container["resources"]["requests"][name] = json!(amount);
                }
            }
        }
    }
}

fn limit_ranges(state: &ApiState, namespace: &str) -> Result<Vec<Value>, ApiError> {
    Ok(state
        .store
        .list("core/limitranges", Some(namespace), None, 0, &|_| true)?
        .items)
}

fn items_of<'a>(limit_range: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    limit_range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |item| item["type"] == kind)
}

/// The mutating phase on pod create: each container and init container gets the default
/// limits and requests of every `type: Container` range for what it does not set itself.
pub fn admit_defaults(
    state: &ApiState,
    resource: &Resource,
    object: &mut Value,
) -> Result<(), ApiError> {
    if !resource.group.is_empty() || resource.kind != "Pod" || !object["spec"].is_object() {
        return Ok(());
    }
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for limit_range in limit_ranges(state, &namespace)? {
        let mut limits: BTreeMap<String, String> = BTreeMap::new();
        let mut requests: BTreeMap<String, String> = BTreeMap::new();
        for item in items_of(&limit_range, "Container") {
            limits.extend(resource_map(&item["default"]));
            requests.extend(resource_map(&item["defaultRequest"]));
        }
        if limits.is_empty() && requests.is_empty() {
            continue;
        }
        let mut notes: Vec<String> = Vec::new();
        for (field, label) in [
            ("containers", "container"),
            ("initContainers", "init container"),
        ] {
            for container in object["spec"]
                .get_mut(field)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !container.is_object() {
                    continue;
                }
                let name = container["name"].as_str().unwrap_or_default().to_owned();
                if !container["resources"].is_object() {
                    container["resources"] = json!({});
                }
                for (part, defaults, word) in [
                    ("requests", &requests, "request"),
                    ("limits", &limits, "limit"),
                ] {
                    let mut set: Vec<&str> = Vec::new();
                    for (resource_name, amount) in defaults {
                        if container["resources"][part].get(resource_name).is_none() {
                            if !container["resources"][part].is_object() {
                                container["resources"][part] = json!({});
                            }
                            container["resources"][part][resource_name] = json!(amount);
                            set.push(resource_name);
                        }
                    }
                    if !set.is_empty() {
                        notes.push(format!("{} {word} for {label} {name}", set.join(", ")));
                    }
                }
            }
        }
        if !notes.is_empty() {
            if !object["metadata"]["annotations"].is_object() {
                object["metadata"]["annotations"] = json!({});
            }
            object["metadata"]["annotations"][ANNOTATION] =
                json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
        }
    }
    Ok(())
}

/// What one container (or the pod, summed) asks for one resource: (request, limit).
type Amounts = (Option<String>, Option<String>);

/// Checks one set of amounts against one `min`/`max`/`maxLimitRequestRatio` item.
fn check_amounts(
    item: &Value,
    scope: &str,
    amounts: &dyn Fn(&str) -> Amounts,
    problems: &mut Vec<String>,
) {
    for (name, min) in resource_map(&item["min"]) {
        let (request, limit) = amounts(&name);
        let Some(min_value) = milli(&min) else {
            continue;
        };
        let min = canonical(&min);
        match request.as_deref() {
            None => problems.push(format!(
                "minimum {name} usage per {scope} is {min}.  No request is specified"
            )),
            Some(request) if milli(request).is_some_and(|r| r < min_value) => {
                problems.push(format!(
                    "minimum {name} usage per {scope} is {min}, but request is {}",
                    canonical(request)
                ))
            }
            _ => {}
        }
        if let Some(limit) = limit.as_deref() {
            if milli(limit).is_some_and(|l| l < min_value) {
                problems.push(format!(
                    "minimum {name} usage per {scope} is {min}, but limit is {}",
                    canonical(limit)
                ));
            }
        }
    }
    for (name, max) in resource_map(&item["max"]) {
        let (request, limit) = amounts(&name);
        let Some(max_value) = milli(&max) else {
            continue;
        };
        let max = canonical(&max);
        match limit.as_deref() {
            None => problems.push(format!(
                "maximum {name} usage per {scope} is {max}.  No limit is specified"
            )),
            Some(limit) if milli(limit).is_some_and(|l| l > max_value) => problems.push(format!(
                "maximum {name} usage per {scope} is {max}, but limit is {}",
                canonical(limit)
            )),
            _ => {}
        }
        if let Some(request) = request.as_deref() {
            if milli(request).is_some_and(|r| r > max_value) {
                problems.push(format!(
                    "maximum {name} usage per {scope} is {max}, but request is {}",
                    canonical(request)
                ));
            }
        }
    }
    for (name, ratio) in resource_map(&item["maxLimitRequestRatio"]) {
        let (request, limit) = amounts(&name);
        let Some(ratio_value) = quantity::parse(&ratio) else {
            continue;
        };
        let ratio = canonical(&ratio);
        let request = request.as_deref().and_then(milli).filter(|r| *r > 0);
        let limit = limit.as_deref().and_then(milli).filter(|l| *l > 0);
        match (request, limit) {
            (None, _) => problems.push(format!("{name} max limit to request ratio per {scope} is {ratio}, but no request is specified or request is 0")),
            (_, None) => problems.push(format!("{name} max limit to request ratio per {scope} is {ratio}, but no limit is specified or limit is 0")),
            (Some(request), Some(limit)) => {
                let actual = limit as f64 / request as f64;
                if actual > ratio_value {
                    problems.push(format!("{name} max limit to request ratio per {scope} is {ratio}, but provided ratio is {actual:.6}"));
                }
            }
        }
    }
}

/// A pod's total of one resource over its containers (init containers: the largest counts),
/// `None` when no container sets it.
fn pod_total(spec: &Value, part: &str, name: &str) -> Option<String> {
    let amount = |c: &Value| c["resources"][part][name].as_str().and_then(milli);
    let containers: Vec<i128> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(amount)
        .collect();
    let init_max = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(amount)
        .max();
    if containers.is_empty() && init_max.is_none() {
        return None;
    }
    let total = containers.iter().sum::<i128>().max(init_max.unwrap_or(0));
    Some(format!("{total}m"))
}

/// The validating phase on pod and claim create: the first range the object breaks refuses it
/// (403), naming every limit it breaks.
pub fn admit_limits(
    state: &ApiState,
    resource: &Resource,
    object: &Value,
    name: &str,
) -> Result<(), ApiError> {
    let claim = match (resource.group, resource.kind) {
        ("", "Pod") => false,
        ("", "PersistentVolumeClaim") => true,
        _ => return Ok(()),
    };
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    for limit_range in limit_ranges(state, namespace)? {
        let mut problems = Vec::new();
        if claim {
            for item in items_of(&limit_range, "PersistentVolumeClaim") {
                let request = object
                    .pointer("/spec/resources/requests/storage")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let limited = Map::from_iter([
                    (
                        "min".to_owned(),
                        item["min"]
                            .get("storage")
                            .map_or(json!({}), |v| json!({"storage": v})),
                    ),
                    (
                        "max".to_owned(),
                        item["max"]
                            .get("storage")
                            .map_or(json!({}), |v| json!({"storage": v})),
                    ),
                ]);
                // A claim has no limit: the request stands for both.
                let amounts = |_: &str| (request.clone(), request.clone());
                let mut found = Vec::new();
                check_amounts(
                    &Value::Object(limited),
                    "PersistentVolumeClaim",
                    &amounts,
                    &mut found,
                );
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| {
                            p.replace(".  No limit is specified", ".  No request is specified")
                        })
                        .filter(|p| !p.contains("but limit is")),
                );
            }
        } else {
            let spec = &object["spec"];
            for item in items_of(&limit_range, "Container") {
                for field in ["containers", "initContainers"] {
                    for container in spec[field].as_array().into_iter().flatten() {
                        let amounts = |resource_name: &str| {
                            let get = |part: &str| {
                                container["resources"][part][resource_name]
                                    .as_str()
                                    .map(str::to_owned)
                            };
                            (get("requests"), get("limits"))
                        };
                        check_amounts(item, "Container", &amounts, &mut problems);
                    }
                }
            }
            for item in items_of(&limit_range, "Pod") {
                let amounts = |resource_name: &str| {
                    (
                        pod_total(spec, "requests", resource_name),
                        pod_total(spec, "limits", resource_name),
                    )
                };
                check_amounts(item, "Pod", &amounts, &mut problems);
            }
        }
        problems.dedup();
        if !problems.is_empty() {
            let joined = if problems.len() == 1 {
                problems.remove(0)
            } else {
                format!("[{}]", problems.join(", "))
            };
            return Err(ApiError::forbidden_object(resource, name, &joined));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::controllers::testing::{bare_pod, TestCluster};

    fn limited(cluster: &TestCluster) -> Value {
        cluster.create(
            "core/limitranges",
            json!({"metadata": {"name": "cpu", "namespace": "default"},
                   "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"},
                                        "maxLimitRequestRatio": {"cpu": "2"}}]}}),
        )
    }

    #[test]
    fn quantities_read_as_upstream_writes_them() {
        assert_eq!(canonical("0.5"), "500m");
        assert_eq!(canonical("1024Mi"), "1Gi");
        assert_eq!(canonical("1536Mi"), "1536Mi");
        assert_eq!(canonical("2000"), "2k");
        assert_eq!(canonical("1"), "1");
    }

    #[test]
    fn the_maximum_becomes_the_default_limit_and_request() {
        let cluster = TestCluster::new();
        let range = limited(&cluster);
        let item = &range["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(item["defaultRequest"], json!({"cpu": "1"}));
        let pod = cluster.create("core/pods", bare_pod("web", json!({})));
        let resources = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(resources["limits"]["cpu"], "1");
        assert_eq!(resources["requests"]["cpu"], "1");
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu request for container app; cpu limit for container app"
        );
    }

    #[test]
    fn pods_outside_the_range_are_forbidden() {
        let cluster = TestCluster::new();
        limited(&cluster);
        let mut pod = bare_pod("small", json!({}));
        pod["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": "50m"}, "limits": {"cpu": "100m"}});
        let error = cluster.try_create("core/pods", pod).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(error.reason, "Forbidden");
        assert_eq!(
            error.message,
            "pods \"small\" is forbidden: minimum cpu usage per Container is 100m, but request is 50m"
        );
        let mut pod = bare_pod("big", json!({}));
        pod["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}});
        let error = cluster.try_create("core/pods", pod).unwrap_err();
        assert_eq!(
            error.message,
            "pods \"big\" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000]"
        );
    }

    #[test]
    fn a_pod_range_may_not_carry_defaults() {
        let cluster = TestCluster::new();
        let error = cluster
            .try_create(
                "core/limitranges",
                json!({"metadata": {"name": "pods", "namespace": "default"},
                       "spec": {"limits": [{"type": "Pod", "default": {"cpu": "1"}}]}}),
            )
            .unwrap_err();
        assert_eq!(
            error.message,
            "LimitRange \"pods\" is invalid: spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'"
        );
    }
}
