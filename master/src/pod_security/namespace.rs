//! Pod Security admission of namespaces: their labels are checked (bad ones refused with 422
//! on create, and on update only when they newly go bad), and a stricter enforce level is
//! tried on the pods already in the namespace, which the change does not touch: the client is
//! warned which would now be refused.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::checks::{evaluate, PodView};
use super::policy::{
    policy_to_evaluate, Level, LevelVersion, Policy, AUDIT_LEVEL_LABEL, AUDIT_VERSION_LABEL,
    ENFORCE_LEVEL_LABEL, ENFORCE_VERSION_LABEL, WARN_LEVEL_LABEL, WARN_VERSION_LABEL,
};
use super::{Configuration, Operation, Request};
use crate::api::error::ApiError;
use crate::api::ApiState;

/// At most this many existing pods are tried against a new enforce level.
const MAX_PODS_TO_CHECK: usize = 3000;
/// For at most this long.
const POD_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn labels_of(namespace: &Value) -> Option<&Map<String, Value>> {
    namespace
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
}

/// Upstream's `ValidateNamespace`.
pub(super) fn admit(
    state: &ApiState,
    config: &Configuration,
    request: &Request,
    object: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    if request.subresource.is_some() {
        return Ok(Vec::new());
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(request.name);
    let labels = labels_of(object);
    let (policy, errors) = policy_to_evaluate(labels, &config.defaults);
    let invalid =
        |errors: &[crate::admission::FieldError]| ApiError::invalid("Namespace", "", name, errors);
    match (request.operation, old) {
        (Operation::Create, _) | (Operation::Update, None) => {
            if !errors.is_empty() {
                return Err(invalid(&errors));
            }
            if config.exempt_namespace(request.namespace) {
                return Ok(exempt_warning(name, &policy, labels, config)
                    .into_iter()
                    .collect());
            }
            Ok(Vec::new())
        }
        (Operation::Update, Some(old)) => {
            let (old_policy, old_errors) = policy_to_evaluate(labels_of(old), &config.defaults);
            if !errors.is_empty() && (old_errors.is_empty() || errors != old_errors) {
                return Err(invalid(&errors));
            }
            let (new, previous) = (policy.enforce, old_policy.enforce);
            if new == previous || new.level == Level::Privileged {
                return Ok(Vec::new());
            }
            // Relaxing the level at the same version cannot refuse a pod that passed before.
            if new.version == previous.version && new.level <= previous.level {
                return Ok(Vec::new());
            }
            if config.exempt_namespace(request.namespace) {
                return Ok(exempt_warning(name, &policy, labels, config)
                    .into_iter()
                    .collect());
            }
            Ok(check_existing_pods(
                state,
                config,
                name,
                new,
                MAX_PODS_TO_CHECK,
                POD_CHECK_TIMEOUT,
            ))
        }
    }
}

/// `namespace "x" is exempt from Pod Security, and the policy (enforce=baseline:latest) will be
/// ignored`: the modes labels set to something stricter than privileged. Nothing when the
/// policy is privileged or the cluster's default anyway.
fn exempt_warning(
    name: &str,
    policy: &Policy,
    labels: Option<&Map<String, Value>>,
    config: &Configuration,
) -> Option<String> {
    if policy.fully_privileged() || policy.equivalent(&config.defaults) {
        return None;
    }
    let has = |key: &str| labels.is_some_and(|l| l.contains_key(key));
    let modes = [
        (
            "enforce",
            policy.enforce,
            ENFORCE_LEVEL_LABEL,
            ENFORCE_VERSION_LABEL,
        ),
        (
            "audit",
            policy.audit,
            AUDIT_LEVEL_LABEL,
            AUDIT_VERSION_LABEL,
        ),
        ("warn", policy.warn, WARN_LEVEL_LABEL, WARN_VERSION_LABEL),
    ];
    let parts: Vec<String> = modes
        .iter()
        .filter(|(_, lv, level, version)| {
            lv.level != Level::Privileged && (has(level) || has(version))
        })
        .map(|(mode, lv, _, _)| format!("{mode}={lv}"))
        .collect();
    Some(format!(
        "namespace \"{name}\" is exempt from Pod Security, and the policy ({}) will be ignored",
        parts.join(", ")
    ))
}

/// Upstream's `EvaluatePodsInNamespace`: the pods of the namespace against the new enforce
/// level, one per controller first, within `limit` pods and `timeout`; one warning per distinct
/// set of reasons, naming the lexically first pod and how many others share it.
pub(super) fn check_existing_pods(
    state: &ApiState,
    config: &Configuration,
    namespace: &str,
    enforce: LevelVersion,
    limit: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let listed = state
        .store
        .list("core/pods", Some(namespace), None, 0, &|_| true);
    let Ok(page) = listed else {
        return vec!["failed to list pods while checking new PodSecurity enforce level".into()];
    };
    let pods: Vec<Pod> = page
        .items
        .iter()
        .filter_map(|p| Pod::deserialize(p).ok())
        .collect();
    let pods = prioritized(config, pods);
    let total = pods.len();
    let mut checked = total.min(limit);

    /// The first pod (by name) with a set of reasons and how many pods have it.
    struct Seen {
        first_pod: String,
        count: usize,
    }
    let mut order: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for (index, pod) in pods.iter().take(limit).enumerate() {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let empty = Default::default();
        let spec = pod.spec.as_ref().unwrap_or(&empty);
        let outcome = evaluate(enforce, &PodView::new(&annotations, spec));
        if !outcome.allowed() {
            let reasons = outcome.forbidden_reason();
            let name = pod.metadata.name.clone().unwrap_or_default();
            match seen.get_mut(&reasons) {
                Some(entry) => {
                    if name < entry.first_pod {
                        entry.first_pod = name;
                    }
                    entry.count += 1;
                }
                None => {
                    order.push(reasons.clone());
                    seen.insert(
                        reasons,
                        Seen {
                            first_pod: name,
                            count: 1,
                        },
                    );
                }
            }
        }
        if Instant::now() >= deadline {
            checked = index + 1;
            break;
        }
    }

    let mut warnings = Vec::new();
    if checked < total {
        warnings.push(format!(
            "new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"
        ));
    }
    if !order.is_empty() {
        warnings.push(format!(
            "existing pods in namespace \"{namespace}\" violate the new PodSecurity enforce level \"{enforce}\""
        ));
    }
    let mut pod_warnings: Vec<String> = order
        .into_iter()
        .map(|reasons| {
            let entry = &seen[&reasons];
            match entry.count {
                1 => format!("{}: {reasons}", entry.first_pod),
                2 => format!("{} (and 1 other pod): {reasons}", entry.first_pod),
                n => format!("{} (and {} other pods): {reasons}", entry.first_pod, n - 1),
            }
        })
        .collect();
    pod_warnings.sort();
    warnings.extend(pod_warnings);
    warnings
}

/// One pod per controller first, then the rest; pods of exempt runtime classes left out.
fn prioritized(config: &Configuration, pods: Vec<Pod>) -> Vec<Pod> {
    let mut first = Vec::new();
    let mut duplicates = Vec::new();
    let mut controllers = HashSet::new();
    for pod in pods {
        let class = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref());
        if config.exempt_runtime_class(class) {
            continue;
        }
        let controller = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone());
        match controller {
            None => first.push(pod),
            Some(uid) if controllers.contains(&uid) => duplicates.push(pod),
            Some(uid) => {
                controllers.insert(uid);
                first.push(pod);
            }
        }
    }
    first.extend(duplicates);
    first
}
