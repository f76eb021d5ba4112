//! ReplicaSets and ReplicationControllers: keep exactly N matching pods, adopting and releasing.
//!
//! One controller serves both kinds; they differ only in how the selector is written. A pod
//! belongs to the set that is its controller owner. Orphans that match the selector are
//! adopted; owned pods whose labels stop matching are released (and so replaced): the classic
//! "relabel a pod to take it out for debugging" demo.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::view::{Key, PodInfo, View};
use super::{controller_ref, key_of, now_seconds, set_condition, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;
use protocol::selector::LabelSelector;

/// Pods created in one pass; the rest follow on the next.
const CREATE_BURST: usize = 500;

/// The ReplicaSet or ReplicationController controller.
pub struct ReplicaController {
    storage_key: &'static str,
    kind: &'static str,
    name: &'static str,
}

impl ReplicaController {
    /// The ReplicaSet controller.
    pub fn replica_sets() -> Self {
        ReplicaController {
            storage_key: "apps/replicasets",
            kind: "ReplicaSet",
            name: "replicaset-controller",
        }
    }

    /// The ReplicationController controller.
    pub fn replication_controllers() -> Self {
        ReplicaController {
            storage_key: "core/replicationcontrollers",
            kind: "ReplicationController",
            name: "replication-controller",
        }
    }

    fn selector(&self, object: &Value) -> LabelSelector {
        selector_of(object)
    }
}

/// The pod selector of a ReplicaSet, ReplicationController, Deployment, Job or DaemonSet.
pub fn selector_of(object: &Value) -> LabelSelector {
    let selector = &object["spec"]["selector"];
    if object["kind"] == "ReplicationController" {
        let map = match selector.as_object().filter(|m| !m.is_empty()) {
            Some(map) => map.clone(),
            None => object["spec"]["template"]["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        return LabelSelector::from_map(&map);
    }
    LabelSelector::from_json(selector)
        .unwrap_or_else(|_| LabelSelector::from_map(&Default::default()))
}

/// Keys of the owners of `kind` named by a pod's owner references (before and after a change),
/// plus, for orphans, the owners whose selector matches the pod.
pub fn owners_of_pod_change(
    change: &Change,
    view: &View,
    storage_key: &'static str,
    kind: &str,
) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut orphan = false;
    for object in std::iter::once(&change.object).chain(change.previous.iter()) {
        let owners = super::view::owner_refs(object);
        orphan |= !owners.iter().any(|o| o.controller);
        for owner in owners.iter().filter(|o| o.kind == kind) {
            keys.push((change.namespace.clone(), owner.name.clone()));
        }
    }
    if orphan && change.object["metadata"]["deletionTimestamp"].is_null() {
        let labels = super::view::string_map(&change.object["metadata"]["labels"]);
        for candidate in view.list_in(storage_key, &change.namespace) {
            if selector_of(candidate).matches_map(&labels) {
                keys.push(key_of(candidate));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The pods that should be deleted first when scaling down: unscheduled before scheduled,
/// pending before running, not ready before ready, recently ready before long ready, more
/// restarts before fewer, newer before older (upstream's ranking).
pub fn deletion_order(pods: &mut [Arc<PodInfo>]) {
    let phase_rank = |p: &PodInfo| match p.phase.as_str() {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    pods.sort_by_key(|p| {
        (
            !p.node.is_empty(),
            phase_rank(p),
            p.ready,
            Reverse(p.ready_since.unwrap_or(0)),
            Reverse(p.restarts),
            Reverse(p.created),
        )
    });
}

/// A pod made from a controller's pod template.
pub fn pod_from_template(owner: &Value, template: &Value, name_prefix: &str) -> Value {
    let mut metadata = json!({
        "generateName": format!("{name_prefix}-"),
        "namespace": owner["metadata"]["namespace"],
        "ownerReferences": [controller_ref(owner)],
    });
    for field in ["labels", "annotations"] {
        if let Some(value) = template["metadata"].get(field).filter(|v| !v.is_null()) {
            metadata[field] = value.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// Creates an owner's pods in one commit, recording SuccessfulCreate and FailedCreate events
/// on the owner; returns how many were created and the first refusal (a quota, say).
pub fn create_pods(ctx: &Context, owner: &Value, pods: Vec<Value>) -> (usize, Option<ApiError>) {
    let mut created = 0;
    let mut failure = None;
    for result in ctx.create_many("core/pods", pods) {
        match result {
            Ok(pod) => {
                created += 1;
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                ctx.event(
                    owner,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {name}"),
                );
            }
            Err(error) if failure.is_none() => {
                ctx.event(
                    owner,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {}", error.message),
                );
                failure = Some(error);
            }
            Err(_) => {}
        }
    }
    (created, failure)
}

/// Adopts matching orphans and releases owned pods that no longer match; returns the pods
/// the owner now controls.
pub fn claim_pods(
    ctx: &Context,
    owner: &Value,
    selector: &LabelSelector,
) -> Result<Vec<Arc<PodInfo>>, ApiError> {
    let uid = owner["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = owner["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (mut owned, adopt, release) = {
        let view = ctx.view();
        let mut owned = Vec::new();
        let mut adopt = Vec::new();
        let mut release = Vec::new();
        for pod in view.pods_owned_by(&uid) {
            if pod.controller_uid() != Some(uid.as_str()) {
                continue;
            }
            if selector.matches_map(&pod.labels) {
                owned.push(pod.clone());
            } else {
                release.push(pod.clone());
            }
        }
        for pod in view.orphans_in(&namespace) {
            if !pod.deleting && selector.matches_map(&pod.labels) {
                adopt.push(pod.clone());
            }
        }
        (owned, adopt, release)
    };
    let owning = owner["metadata"]["deletionTimestamp"].is_null();
    for pod in adopt.into_iter().filter(|_| owning) {
        let reference = controller_ref(owner);
        let adopted = ctx.update("core/pods", &pod.namespace, &pod.name, |object| {
            if object["metadata"]["uid"] != pod.uid.as_str() {
                return Err(ApiError::conflict(
                    super::resource_of("core/pods"),
                    &pod.name,
                    "the pod was replaced",
                ));
            }
            let refs = object["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if refs.iter().any(|r| r["controller"] == true) {
                return Err(ApiError::conflict(
                    super::resource_of("core/pods"),
                    &pod.name,
                    "the pod has another controller",
                ));
            }
            let mut refs = refs;
            refs.push(reference);
            object["metadata"]["ownerReferences"] = json!(refs);
            Ok(())
        });
        match adopted {
            Ok(object) => owned.push(Arc::new(PodInfo::from_object(&object))),
            Err(e) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    for pod in release {
        let released = ctx.update("core/pods", &pod.namespace, &pod.name, |object| {
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid.as_str());
            }
            Ok(())
        });
        match released {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(owned)
}

impl Reconciler for ReplicaController {
    fn name(&self) -> &'static str {
        self.name
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        if change.resource == self.storage_key {
            return vec![(change.namespace.clone(), change.name.clone())];
        }
        if change.resource == "core/pods" {
            return owners_of_pod_change(change, view, self.storage_key, self.kind);
        }
        Vec::new()
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(self.storage_key).map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(set) = ctx.view().get(self.storage_key, &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        let selector = self.selector(&set);
        let owned = claim_pods(ctx, &set, &selector)?;
        let active: Vec<Arc<PodInfo>> = owned.iter().filter(|p| p.is_active()).cloned().collect();
        let wanted = set["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let deleting = !set["metadata"]["deletionTimestamp"].is_null();
        let mut failure = None;
        if !deleting && active.len() < wanted {
            let missing = (wanted - active.len()).min(CREATE_BURST);
            let template = &set["spec"]["template"];
            let pods: Vec<Value> = (0..missing)
                .map(|_| pod_from_template(&set, template, &key.1))
                .collect();
            failure = create_pods(ctx, &set, pods).1;
        } else if !deleting && active.len() > wanted {
            let mut victims = active.clone();
            deletion_order(&mut victims);
            for pod in victims.iter().take(active.len() - wanted) {
                ctx.delete_pod(pod)?;
                ctx.event(
                    &set,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", pod.name),
                );
            }
        }
        let min_ready = set["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = now_seconds();
        let template_labels =
            super::view::string_map(&set["spec"]["template"]["metadata"]["labels"]);
        let fully_labeled = active
            .iter()
            .filter(|p| {
                template_labels
                    .iter()
                    .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .count();
        let ready = active.iter().filter(|p| p.ready).count();
        let available = active
            .iter()
            .filter(|p| p.is_available(min_ready, now))
            .count();
        let generation = set["metadata"]["generation"].clone();
        let failure_message = failure.as_ref().map(|e| e.message.clone());
        let updated = ctx.update_status(self.storage_key, &key.0, &key.1, |object| {
            let status = &mut object["status"];
            if !status.is_object() {
                *status = json!({});
            }
            status["replicas"] = json!(active.len());
            status["fullyLabeledReplicas"] = json!(fully_labeled);
            status["readyReplicas"] = json!(ready);
            status["availableReplicas"] = json!(available);
            status["observedGeneration"] = generation;
            match &failure_message {
                Some(message) => {
                    set_condition(object, "ReplicaFailure", "True", "FailedCreate", message)
                }
                None => {
                    if let Some(conditions) = object["status"]["conditions"].as_array_mut() {
                        conditions.retain(|c| c["type"] != "ReplicaFailure");
                    }
                }
            }
            Ok(())
        });
        match updated {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        if let Some(error) = failure {
            // Quota or admission refusals clear up when something else changes; look again soon.
            tracing::debug!(error = %error.message, "pod creation refused");
            return Ok(Action::RequeueAfter(Duration::from_secs(5)));
        }
        if active.len() < wanted {
            return Ok(Action::RequeueAfter(Duration::from_millis(10)));
        }
        // Pods that are ready but not yet available become available without any change.
        let soonest = active
            .iter()
            .filter(|p| p.ready && !p.is_available(min_ready, now))
            .filter_map(|p| p.ready_since.map(|since| since + min_ready - now))
            .min();
        Ok(match soonest {
            Some(seconds) => Action::RequeueAfter(Duration::from_secs(seconds.max(0) as u64 + 1)),
            None => Action::Done,
        })
    }
}
