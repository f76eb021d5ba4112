//! The pod `eviction` subresource: a delete that honours the pod's PodDisruptionBudget.
//!
//! Upstream's `pkg/registry/core/pod/storage/eviction.go`:
//!
//! ```text
//!   pod finished, pending or already terminating ──────────────────────────▶ delete
//!   no budget selects it ──────────────────────────────────────────────────▶ delete
//!   two or more budgets ───────────────────────────────────────────────────▶ 500
//!   pod not Ready and (AlwaysAllow, or the budget is healthy) ─────────────▶ delete
//!   budget not yet synced (observedGeneration behind) ─────────────────────▶ 429, retry in 10 s
//!   no disruption allowed ─────────────────────────────────────────────────▶ 429
//!   otherwise: disruptionsAllowed - 1 and disruptedPods[pod] = now,
//!              in one read-modify-write of the budget's status ────────────▶ delete
//! ```
//!
//! Every delete first marks the pod with the DisruptionTarget condition.

use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::{self, meta_str, DeleteOptions, Part};
use super::ApiState;
use crate::controllers::disruption::{self, set_disruption_condition};
use crate::lifecycle;
use crate::resources::{self, Resource};

/// The 429 message every refusal by a budget carries.
pub const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// The 500 message for a pod under several budgets.
pub const MULTIPLE_BUDGETS: &str = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";
/// The most unconfirmed evictions a budget may carry.
const MAX_DISRUPTED_PODS: usize = 2000;

fn pods() -> &'static Resource {
    resources::by_kind("", "Pod").expect("pods are served")
}

fn budgets() -> &'static Resource {
    resources::by_kind("policy", "PodDisruptionBudget").expect("budgets are served")
}

fn too_many_requests(cause: String, retry_after: i64) -> ApiError {
    let mut details = json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]});
    if retry_after > 0 {
        details["retryAfterSeconds"] = json!(retry_after);
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(429, "TooManyRequests", REFUSED)
    }
}

/// `poddisruptionbudget.policy "<name>" is forbidden: ...` (upstream names the resource in the singular).
fn budget_forbidden(name: &str, why: &str) -> ApiError {
    ApiError {
        details: Some(json!({"name": name, "group": "policy", "kind": "poddisruptionbudget"})),
        ..ApiError::forbidden(format!(
            "poddisruptionbudget.policy \"{name}\" is forbidden: {why}"
        ))
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Evicts `name` as the request body `eviction` asks. `dry_run` is the request's `dryRun=All`.
pub fn evict(
    state: &ApiState,
    namespace: &str,
    name: &str,
    eviction: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let named = meta_str(eviction, "name");
    if !named.is_empty() && named != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut options = DeleteOptions::from_body(eviction.get("deleteOptions"))?;
    options.dry_run |= dry_run;
    let pod = state
        .store
        .get("core/pods", namespace, name)?
        .ok_or_else(|| ApiError::not_found(pods(), name))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let terminating = pod["metadata"].get("deletionTimestamp").is_some();
    if terminating || matches!(phase, "Succeeded" | "Failed" | "Pending") {
        if phase == "Pending" && options.precondition_version.is_none() {
            options.precondition_version = Some(meta_str(&pod, "resourceVersion"));
        }
        return mark_and_delete(state, namespace, name, options);
    }
    let labels = crate::controllers::view::string_map(&pod["metadata"]["labels"]);
    let matching: Vec<Value> = state
        .store
        .list(disruption::STORAGE_KEY, Some(namespace), None, 0, &|pdb| {
            disruption::selects(pdb, &labels)
        })?
        .items;
    if matching.len() > 1 {
        return Err(ApiError::new(500, "", MULTIPLE_BUDGETS));
    }
    let Some(budget) = matching.into_iter().next() else {
        return mark_and_delete(state, namespace, name, options);
    };
    if !is_ready(&pod) {
        let status = &budget["status"];
        let always = budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
        let healthy_budget =
            status["currentHealthy"].as_i64().unwrap_or(0) >= desired && desired > 0;
        if always || healthy_budget {
            let caller_gave_version = options.precondition_version.is_some();
            if !caller_gave_version {
                options.precondition_version = Some(meta_str(&pod, "resourceVersion"));
            }
            return match mark_and_delete(state, namespace, name, options) {
                Err(e) if e.code == 409 && !caller_gave_version => Err(still_processing(&budget)),
                other => other,
            };
        }
    }
    take_disruption(state, namespace, name, &budget, options.dry_run)?;
    mark_and_delete(state, namespace, name, options)
}

fn still_processing(budget: &Value) -> ApiError {
    too_many_requests(
        format!(
            "The disruption budget {} is still being processed by the server.",
            meta_str(budget, "name")
        ),
        10,
    )
}

/// Spends one of the budget's allowed disruptions for `pod`, or refuses. The store's
/// read-modify-write makes this atomic against the disruption controller and other evictions.
fn take_disruption(
    state: &ApiState,
    namespace: &str,
    pod: &str,
    budget: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let budget_name = meta_str(budget, "name");
    objects::update_object(
        state,
        budgets(),
        namespace,
        &budget_name,
        Part::Status,
        dry_run,
        |current| {
            let status = &current["status"];
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
                return Err(still_processing(current));
            }
            let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed < 0 {
                return Err(budget_forbidden(
                    &budget_name,
                    "pdb disruptions allowed is negative",
                ));
            }
            let disrupted = status["disruptedPods"].as_object().map_or(0, |m| m.len());
            if disrupted > MAX_DISRUPTED_PODS {
                return Err(budget_forbidden(&budget_name, "DisruptedPods map too big - too many evictions not confirmed by PDB controller"));
            }
            if allowed == 0 {
                return Err(too_many_requests(
                    format!(
                        "The disruption budget {budget_name} needs {} healthy pods and has {} currently",
                        status["desiredHealthy"].as_i64().unwrap_or(0),
                        status["currentHealthy"].as_i64().unwrap_or(0)
                    ),
                    0,
                ));
            }
            let mut next = current.clone();
            next["status"]["disruptionsAllowed"] = json!(allowed - 1);
            if allowed - 1 == 0 {
                set_disruption_condition(&mut next["status"], false, "InsufficientPods", "");
            }
            if !next["status"]["disruptedPods"].is_object() {
                next["status"]["disruptedPods"] = json!({});
            }
            next["status"]["disruptedPods"][pod] = json!(crate::controllers::now_time());
            Ok(next)
        },
    )
    .map(|_| ())
}

/// Marks the pod a disruption target, then deletes it (upstream's `addConditionAndDeletePod`).
fn mark_and_delete(
    state: &ApiState,
    namespace: &str,
    name: &str,
    mut options: DeleteOptions,
) -> Result<(), ApiError> {
    if options.dry_run {
        return objects::delete_object(state, pods(), namespace, name, &options).map(|_| ());
    }
    let marked = objects::update_object(
        state,
        pods(),
        namespace,
        name,
        Part::Status,
        false,
        |current| {
            if let Some(uid) = &options.precondition_uid {
                let actual = meta_str(current, "uid");
                if *uid != actual {
                    return Err(ApiError::conflict(pods(), name, &format!("the UID in the precondition ({uid}) does not match the UID in record ({actual}). The object might have been deleted and then recreated")));
                }
            }
            if let Some(version) = &options.precondition_version {
                let actual = meta_str(current, "resourceVersion");
                if *version != actual {
                    return Err(ApiError::conflict(pods(), name, &format!("the ResourceVersion in the precondition ({version}) does not match the ResourceVersion in record ({actual}). The object might have been modified")));
                }
            }
            let mut next = current.clone();
            lifecycle::set_condition(
                &mut next,
                "DisruptionTarget",
                "True",
                Some("EvictionByEvictionAPI"),
                Some("Eviction API: evicting"),
            );
            Ok(next)
        },
    )?;
    if options.precondition_version.is_some() {
        options.precondition_version = Some(meta_str(&marked, "resourceVersion"));
    }
    objects::delete_object(state, pods(), namespace, name, &options).map(|_| ())
}
