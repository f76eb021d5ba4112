//! Deployments: a ReplicaSet per pod template revision, rolled by RollingUpdate or Recreate.
//!
//! ```text
//!   template changes ──▶ new ReplicaSet "<name>-<template hash>" (revision = highest + 1)
//!                        │   (an old ReplicaSet with the same template is reused: rollback)
//!   RollingUpdate: scale new up while total ≤ replicas + maxSurge,
//!                  scale old down while available ≥ replicas − maxUnavailable
//!   Recreate:      scale old to 0, wait for their pods to go, then scale new up
//!   done when updated = available = replicas and no old pods remain
//! ```
//!
//! The ReplicaSets carry `deployment.kubernetes.io/revision`, which `kubectl rollout history`
//! and `rollout undo` read; `rollout undo` itself is kubectl copying an old template back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::replicas::selector_of;
use super::view::{Key, View};
use super::{
    condition, controller_ref, key_of, now_seconds, set_condition, view, Action, Context,
    Reconciler,
};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::store::Change;

const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// How long `revision-history` may grow, as upstream's `maxRevHistoryLengthInChars`.
const REVISION_HISTORY_CHARS: usize = 2000;
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// The Deployment controller.
pub struct DeploymentController;

/// A stable hash of a pod template (and the collision count), in upstream's name-safe alphabet.
pub fn template_hash(template: &Value, collisions: i64) -> String {
    fn feed(hash: &mut u32, bytes: &[u8]) {
        for byte in bytes {
            *hash ^= u32::from(*byte);
            *hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    fn walk(hash: &mut u32, value: &Value) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                feed(hash, b"{");
                for key in keys {
                    feed(hash, key.as_bytes());
                    feed(hash, b":");
                    walk(hash, &map[key]);
                }
                feed(hash, b"}");
            }
            Value::Array(items) => {
                feed(hash, b"[");
                for item in items {
                    walk(hash, item);
                    feed(hash, b",");
                }
                feed(hash, b"]");
            }
            other => feed(hash, other.to_string().as_bytes()),
        }
    }
    let mut hash = 0x811c_9dc5u32;
    walk(&mut hash, template);
    if collisions > 0 {
        feed(&mut hash, collisions.to_string().as_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|digit| ALPHABET[usize::from(digit - b'0')] as char)
        .collect()
}

/// A ReplicaSet's template without the hash label, to compare with a Deployment's.
fn template_without_hash(set: &Value) -> Value {
    let mut template = set["spec"]["template"].clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    template
}

fn revision_of(set: &Value) -> i64 {
    set["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Gives a ReplicaSet a newer revision (a rollback to it). The revision it had is appended
/// to `revision-history`, as upstream keeps it; the oldest entries go when the list would pass
/// its length limit.
fn bump_revision(set: &mut Value, revision: i64) {
    let annotations = &mut set["metadata"]["annotations"];
    let previous = annotations[REVISION].as_str().map(str::to_owned);
    annotations[REVISION] = json!(revision.to_string());
    let Some(previous) = previous else {
        return;
    };
    let history = annotations[REVISION_HISTORY].as_str().unwrap_or_default();
    if let Some(history) = append_revision(history, &previous) {
        annotations[REVISION_HISTORY] = json!(history);
    }
}

/// `history` (comma-separated) with `revision` at the end, within the length limit; `None`
/// when even `revision` alone does not fit.
fn append_revision(history: &str, revision: &str) -> Option<String> {
    if history.is_empty() {
        return Some(revision.to_owned());
    }
    let mut kept: Vec<&str> = history.split(',').collect();
    let mut length = history.len() + 1 + revision.len();
    let mut dropped = 0;
    while length > REVISION_HISTORY_CHARS && dropped < kept.len() {
        length -= kept[dropped].len() + 1;
        dropped += 1;
    }
    if length > REVISION_HISTORY_CHARS {
        return None;
    }
    kept.drain(..dropped);
    kept.push(revision);
    Some(kept.join(","))
}

fn spec_replicas(set: &Value) -> i64 {
    set["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn status_count(set: &Value, field: &str) -> i64 {
    set["status"][field].as_i64().unwrap_or(0)
}

/// An int-or-percent value resolved against `total`, rounding up or down.
pub fn int_or_percent(value: &Value, total: i64, round_up: bool, default: &str) -> i64 {
    let text = match value {
        Value::Number(n) => return n.as_i64().unwrap_or(0),
        Value::String(s) => s.as_str(),
        _ => default,
    };
    match text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(percent) => {
            let scaled = percent * total;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        None => text.parse().unwrap_or(0),
    }
}

/// (maxSurge, maxUnavailable) of a rolling Deployment.
fn surge_and_unavailable(deployment: &Value, replicas: i64) -> (i64, i64) {
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&rolling["maxSurge"], replicas, true, "25%");
    let mut unavailable = int_or_percent(&rolling["maxUnavailable"], replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

impl DeploymentController {
    fn owned_sets(&self, ctx: &Context, deployment: &Value) -> Result<Vec<Arc<Value>>, ApiError> {
        let uid = deployment["metadata"]["uid"].as_str().unwrap_or_default();
        let namespace = deployment["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let selector = selector_of(deployment);
        let (mut owned, orphans) = {
            let view = ctx.view();
            let mut owned = Vec::new();
            let mut orphans = Vec::new();
            for set in view.list_in("apps/replicasets", namespace) {
                let refs = view::owner_refs(set);
                match refs.iter().find(|r| r.controller) {
                    Some(r) if r.uid == uid => owned.push(set.clone()),
                    None if selector.matches_object(set)
                        && set["metadata"]["deletionTimestamp"].is_null() =>
                    {
                        orphans.push(set.clone())
                    }
                    _ => {}
                }
            }
            (owned, orphans)
        };
        for orphan in orphans {
            let reference = controller_ref(deployment);
            let (ns, name) = key_of(&orphan);
            let adopted = ctx.update("apps/replicasets", &ns, &name, |set| {
                let mut refs = set["metadata"]["ownerReferences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if refs.iter().any(|r| r["controller"] == true) {
                    return Err(ApiError::conflict(
                        super::resource_of("apps/replicasets"),
                        &name,
                        "already controlled",
                    ));
                }
                refs.push(reference);
                set["metadata"]["ownerReferences"] = json!(refs);
                Ok(())
            });
            match adopted {
                Ok(set) => owned.push(Arc::new(set)),
                Err(e) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        owned.sort_by_key(|s| {
            (
                revision_of(s),
                s["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        });
        Ok(owned)
    }

    fn scale(
        &self,
        ctx: &Context,
        deployment: &Value,
        set: &Value,
        replicas: i64,
        max_replicas: i64,
    ) -> Result<bool, ApiError> {
        let current = spec_replicas(set);
        let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let annotations_current = set["metadata"]["annotations"][DESIRED].as_str()
            == Some(&desired.to_string())
            && set["metadata"]["annotations"][MAX_REPLICAS].as_str()
                == Some(&max_replicas.to_string());
        if current == replicas && annotations_current {
            return Ok(false);
        }
        let (ns, name) = key_of(set);
        ctx.update("apps/replicasets", &ns, &name, |set| {
            set["spec"]["replicas"] = json!(replicas);
            if !set["metadata"]["annotations"].is_object() {
                set["metadata"]["annotations"] = json!({});
            }
            set["metadata"]["annotations"][DESIRED] = json!(desired.to_string());
            set["metadata"]["annotations"][MAX_REPLICAS] = json!(max_replicas.to_string());
            Ok(())
        })?;
        if current != replicas {
            let direction = if replicas > current { "up" } else { "down" };
            ctx.event(
                deployment,
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled {direction} replica set {name} from {current} to {replicas}"),
            );
        }
        Ok(current != replicas)
    }

    fn create_new_set(
        &self,
        ctx: &Context,
        deployment: &Value,
        hash: &str,
        revision: i64,
        replicas: i64,
        max_replicas: i64,
    ) -> Result<Option<Arc<Value>>, ApiError> {
        let name = format!(
            "{}-{hash}",
            deployment["metadata"]["name"].as_str().unwrap_or_default()
        );
        let namespace = deployment["metadata"]["namespace"].clone();
        let mut template = deployment["spec"]["template"].clone();
        if !template["metadata"].is_object() {
            template["metadata"] = json!({});
        }
        if !template["metadata"]["labels"].is_object() {
            template["metadata"]["labels"] = json!({});
        }
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = deployment["spec"]["selector"].clone();
        if !selector["matchLabels"].is_object() {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut annotations = serde_json::Map::new();
        for (key, value) in deployment["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if !NOT_COPIED.contains(&key.as_str()) {
                annotations.insert(key.clone(), value.clone());
            }
        }
        annotations.insert(REVISION.into(), json!(revision.to_string()));
        annotations.insert(
            DESIRED.into(),
            json!(deployment["spec"]["replicas"]
                .as_i64()
                .unwrap_or(1)
                .to_string()),
        );
        annotations.insert(MAX_REPLICAS.into(), json!(max_replicas.to_string()));
        let set = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [controller_ref(deployment)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": deployment["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        match ctx.create("apps/replicasets", set) {
            Ok(created) => {
                ctx.event(
                    deployment,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                Ok(Some(Arc::new(created)))
            }
            Err(e) if e.code == 409 => {
                // A set of that name with another template or owner: a hash collision.
                let (ns, deployment_name) = key_of(deployment);
                ctx.update_status("apps/deployments", &ns, &deployment_name, |d| {
                    let collisions = d["status"]["collisionCount"].as_i64().unwrap_or(0) + 1;
                    d["status"]["collisionCount"] = json!(collisions);
                    Ok(())
                })?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "apps/deployments" => vec![(change.namespace.clone(), change.name.clone())],
            "apps/replicasets" => {
                let mut keys: Vec<Key> = std::iter::once(&change.object)
                    .chain(change.previous.iter())
                    .flat_map(|o| view::owner_refs(o))
                    .filter(|o| o.kind == "Deployment")
                    .map(|o| (change.namespace.clone(), o.name))
                    .collect();
                if keys.is_empty() {
                    for deployment in view.list_in("apps/deployments", &change.namespace) {
                        if selector_of(deployment).matches_object(&change.object) {
                            keys.push(key_of(deployment));
                        }
                    }
                }
                keys.sort();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("apps/deployments").map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(deployment) = ctx.view().get("apps/deployments", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        if !deployment["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let paused = deployment["spec"]["paused"] == true;
        let recreate = deployment["spec"]["strategy"]["type"] == "Recreate";
        let (surge, max_unavailable) = if recreate {
            (0, 0)
        } else {
            surge_and_unavailable(&deployment, replicas)
        };
        let max_total = replicas + surge;
        let sets = self.owned_sets(ctx, &deployment)?;
        let template = &deployment["spec"]["template"];
        let mut new_set = sets
            .iter()
            .find(|s| template_without_hash(s) == *template)
            .cloned();
        let mut old_sets: Vec<Arc<Value>> = sets
            .iter()
            .filter(|s| new_set.as_ref().is_none_or(|n| !Arc::ptr_eq(n, s)))
            .cloned()
            .collect();
        let highest_old = old_sets.iter().map(|s| revision_of(s)).max().unwrap_or(0);
        let mut progressed = false;
        let mut created_new = false;

        if !paused {
            match &new_set {
                None => {
                    let collisions = deployment["status"]["collisionCount"].as_i64().unwrap_or(0);
                    let hash = template_hash(template, collisions);
                    let initial = if recreate {
                        0
                    } else {
                        let total: i64 = old_sets.iter().map(|s| spec_replicas(s)).sum();
                        (max_total - total).clamp(0, replicas)
                    };
                    match self.create_new_set(
                        ctx,
                        &deployment,
                        &hash,
                        highest_old + 1,
                        initial,
                        max_total,
                    )? {
                        Some(set) => {
                            new_set = Some(set);
                            progressed = true;
                            created_new = true;
                        }
                        None => return Ok(Action::RequeueAfter(Duration::from_millis(10))),
                    }
                }
                Some(set) if revision_of(set) <= highest_old => {
                    // An old template came back (rollback): it becomes the newest revision.
                    let (ns, name) = key_of(set);
                    let updated = ctx.update("apps/replicasets", &ns, &name, |s| {
                        bump_revision(s, highest_old + 1);
                        Ok(())
                    })?;
                    new_set = Some(Arc::new(updated));
                    progressed = true;
                }
                Some(_) => {}
            }
        }

        if let Some(new) = &new_set {
            if paused {
                // Paused: only scaling, and only when there is nothing else to roll.
                if old_sets.iter().all(|s| spec_replicas(s) == 0) {
                    progressed |= self.scale(ctx, &deployment, new, replicas, max_total)?;
                }
            } else if recreate {
                let old_running: i64 = old_sets
                    .iter()
                    .map(|s| {
                        let uid = s["metadata"]["uid"].as_str().unwrap_or_default();
                        ctx.view()
                            .pods_owned_by(uid)
                            .filter(|p| !matches!(p.phase.as_str(), "Succeeded" | "Failed"))
                            .count() as i64
                    })
                    .sum();
                for old in &old_sets {
                    progressed |= self.scale(ctx, &deployment, old, 0, max_total)?;
                }
                if old_running == 0 {
                    progressed |= self.scale(ctx, &deployment, new, replicas, max_total)?;
                }
            } else {
                // Scale the new set up, within the surge.
                let new_replicas = spec_replicas(new);
                let total: i64 = sets_total(new, &old_sets);
                let target = if new_replicas > replicas {
                    replicas
                } else if total < max_total {
                    new_replicas + (max_total - total).min(replicas - new_replicas)
                } else {
                    new_replicas
                };
                progressed |= self.scale(ctx, &deployment, new, target, max_total)?;
                let new_spec = target;
                // Scale old sets down, keeping at least replicas − maxUnavailable available.
                let min_available = replicas - max_unavailable;
                let new_unavailable = (new_spec - status_count(new, "availableReplicas")).max(0);
                let all_pods = new_spec + old_sets.iter().map(|s| spec_replicas(s)).sum::<i64>();
                let mut budget = all_pods - min_available - new_unavailable;
                // First the old pods that are not available anyway.
                let mut scaled: Vec<i64> = old_sets.iter().map(|s| spec_replicas(s)).collect();
                for (index, old) in old_sets.iter().enumerate() {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = (scaled[index] - status_count(old, "availableReplicas")).max(0);
                    let cut = unhealthy.min(budget);
                    scaled[index] -= cut;
                    budget -= cut;
                }
                // Then available ones, as far as availability allows.
                let available: i64 = status_count(new, "availableReplicas")
                    + old_sets
                        .iter()
                        .zip(&scaled)
                        .map(|(s, spec)| status_count(s, "availableReplicas").min(*spec))
                        .sum::<i64>();
                let mut can_remove = (available - min_available).max(0);
                for (index, _) in old_sets.iter().enumerate() {
                    if can_remove <= 0 {
                        break;
                    }
                    let cut = scaled[index].min(can_remove);
                    scaled[index] -= cut;
                    can_remove -= cut;
                }
                for (old, replicas) in old_sets.iter().zip(&scaled) {
                    progressed |= self.scale(ctx, &deployment, old, *replicas, max_total)?;
                }
            }
        }

        // Old sets beyond the history limit go once they are empty.
        let limit = deployment["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let empty: Vec<&Arc<Value>> = old_sets
            .iter()
            .filter(|s| spec_replicas(s) == 0 && status_count(s, "replicas") == 0)
            .collect();
        if empty.len() > limit {
            for set in &empty[..empty.len() - limit] {
                let (ns, name) = key_of(set);
                ctx.delete("apps/replicasets", &ns, &name, &DeleteOptions::default())?;
            }
        }
        old_sets.retain(|s| spec_replicas(s) > 0 || status_count(s, "replicas") > 0);

        // Status, from the sets as the view holds them now.
        let view = ctx.view();
        let fresh = |set: &Arc<Value>| -> Arc<Value> {
            let (ns, name) = key_of(set);
            view.get("apps/replicasets", &ns, &name)
                .cloned()
                .unwrap_or_else(|| set.clone())
        };
        let new_fresh = new_set.as_ref().map(fresh);
        let all: Vec<Arc<Value>> = old_sets
            .iter()
            .map(fresh)
            .chain(new_fresh.clone())
            .collect();
        drop(view);
        let total_replicas: i64 = all.iter().map(|s| status_count(s, "replicas")).sum();
        let updated = new_fresh
            .as_ref()
            .map(|s| status_count(s, "replicas"))
            .unwrap_or(0);
        let ready: i64 = all.iter().map(|s| status_count(s, "readyReplicas")).sum();
        let available: i64 = all
            .iter()
            .map(|s| status_count(s, "availableReplicas"))
            .sum();
        let new_name = new_fresh
            .as_ref()
            .and_then(|s| s["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        let complete = updated == replicas
            && available >= replicas
            && total_replicas == updated
            && new_fresh
                .as_ref()
                .is_some_and(|s| spec_replicas(s) == replicas);
        let deadline = deployment["spec"]["progressDeadlineSeconds"]
            .as_i64()
            .unwrap_or(600);
        let previous = &deployment["status"];
        let counts_moved = [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ]
        .iter()
        .zip([total_replicas, updated, ready, available])
        .any(|(field, value)| previous[*field].as_i64().unwrap_or(0) != value);
        let generation = deployment["metadata"]["generation"].clone();
        let revision = new_fresh.as_ref().map(|s| revision_of(s)).unwrap_or(0);
        let now = now_seconds();
        let progressing_since = condition(&deployment, "Progressing")
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(view::unix_seconds)
            .unwrap_or(now);
        let timed_out = !complete
            && !paused
            && !progressed
            && !counts_moved
            && now - progressing_since > deadline;

        if revision > 0
            && deployment["metadata"]["annotations"][REVISION].as_str()
                != Some(&revision.to_string())
        {
            let revision_text = revision.to_string();
            let change_cause = new_fresh
                .as_ref()
                .map(|s| s["metadata"]["annotations"]["kubernetes.io/change-cause"].clone());
            ctx.update("apps/deployments", &key.0, &key.1, |d| {
                if !d["metadata"]["annotations"].is_object() {
                    d["metadata"]["annotations"] = json!({});
                }
                d["metadata"]["annotations"][REVISION] = json!(revision_text);
                if let Some(cause) = change_cause.filter(Value::is_string) {
                    d["metadata"]["annotations"]["kubernetes.io/change-cause"] = cause;
                }
                Ok(())
            })?;
        }
        let result = ctx.update_status("apps/deployments", &key.0, &key.1, |d| {
            if !d["status"].is_object() {
                d["status"] = json!({});
            }
            let status = &mut d["status"];
            status["observedGeneration"] = generation;
            status["replicas"] = json!(total_replicas);
            status["updatedReplicas"] = json!(updated);
            status["readyReplicas"] = json!(ready);
            status["availableReplicas"] = json!(available);
            status["unavailableReplicas"] = json!((replicas - available).max(0));
            for field in [
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
            ] {
                if status[field] == 0 {
                    status.as_object_mut().expect("an object").remove(field);
                }
            }
            if available >= replicas - max_unavailable {
                set_condition(
                    d,
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                );
            } else {
                set_condition(
                    d,
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                );
            }
            if paused {
                set_condition(
                    d,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                );
            } else if complete {
                set_condition(
                    d,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                );
            } else if created_new {
                set_condition(
                    d,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{new_name}\""),
                );
            } else if progressed || counts_moved {
                set_condition(
                    d,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("ReplicaSet \"{new_name}\" is progressing."),
                );
                // Progress moves the deadline even when the message stays the same.
                if let Some(c) = d["status"]["conditions"]
                    .as_array_mut()
                    .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Progressing"))
                {
                    c["lastUpdateTime"] = json!(super::now_time());
                }
            } else if timed_out {
                set_condition(
                    d,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                );
            }
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        if complete || paused {
            return Ok(Action::Done);
        }
        let left = (progressing_since + deadline - now).max(1);
        Ok(Action::RequeueAfter(Duration::from_secs(left as u64)))
    }
}

fn sets_total(new: &Arc<Value>, old: &[Arc<Value>]) -> i64 {
    spec_replicas(new) + old.iter().map(|s| spec_replicas(s)).sum::<i64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_ignore_key_order_and_use_the_safe_alphabet() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let b = json!({"spec": {"containers": [{"image": "x", "name": "c"}]}, "metadata": {"labels": {"app": "web"}}});
        assert_eq!(template_hash(&a, 0), template_hash(&b, 0));
        assert_ne!(template_hash(&a, 0), template_hash(&a, 1));
        assert!(template_hash(&a, 0)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn a_rolled_back_set_keeps_its_old_revisions() {
        let mut set = json!({"metadata": {"annotations": {REVISION: "1"}}});
        bump_revision(&mut set, 3);
        assert_eq!(set["metadata"]["annotations"][REVISION], "3");
        assert_eq!(set["metadata"]["annotations"][REVISION_HISTORY], "1");
        bump_revision(&mut set, 5);
        assert_eq!(set["metadata"]["annotations"][REVISION], "5");
        assert_eq!(set["metadata"]["annotations"][REVISION_HISTORY], "1,3");

        let mut unnumbered = json!({"metadata": {}});
        bump_revision(&mut unnumbered, 2);
        assert_eq!(unnumbered["metadata"]["annotations"][REVISION], "2");
        assert!(unnumbered["metadata"]["annotations"][REVISION_HISTORY].is_null());
    }

    #[test]
    fn revision_history_drops_its_oldest_entries_at_the_limit() {
        // 400 five-character entries plus commas: 2399 characters, over the limit.
        let long: Vec<String> = (10000..10400).map(|r| r.to_string()).collect();
        let history = append_revision(&long[..333].join(","), "99999").unwrap();
        assert!(history.len() <= REVISION_HISTORY_CHARS);
        assert!(history.ends_with(",10332,99999"));
        assert!(history.starts_with("10001,"), "only the oldest goes");
        assert_eq!(append_revision("", "7").as_deref(), Some("7"));
        assert_eq!(append_revision("1,2", &"9".repeat(2001)), None);
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(int_or_percent(&json!("25%"), 6, true, "0"), 2);
        assert_eq!(int_or_percent(&json!("25%"), 6, false, "0"), 1);
        assert_eq!(int_or_percent(&json!(3), 6, false, "0"), 3);
        let d =
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}});
        assert_eq!(surge_and_unavailable(&d, 4), (0, 1));
    }
}
