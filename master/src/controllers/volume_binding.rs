//! The scheduler's view of a pod's PersistentVolumeClaims (upstream's VolumeBinding plugin).
//!
//! Before any node is tried, every claim must exist, not be going away, and be bound, unless
//! its class waits for the first consumer ("PreFilter"). A node fits when the volumes of bound
//! claims may be reached from it (their node affinity), and when each waiting claim either has a
//! free volume reachable from it or can be provisioned there ("Filter"). Once a node is chosen,
//! waiting claims are given a volume (its claimRef) or a node to provision on (the
//! `selected-node` annotation), and the pod is bound only when every claim is bound: the claims'
//! changes bring the pod back to the scheduler ("PreBind", without blocking other pods).

use std::sync::Arc;

use serde_json::Value;

use super::scheduler::node_term_matches;
use super::view::{str_of, PodInfo, View};
use super::volumes::{
    claim_is_bound, claim_reference, delays_binding, find_matching_volume, BOUND_BY_CONTROLLER,
    CLAIMS, CLASSES, SELECTED_NODE, VOLUMES,
};
use super::Context;
use crate::api::error::ApiError;

/// A pod's claims, resolved for one scheduling decision.
pub struct PodVolumes {
    /// Volumes of bound claims; `None` for a claim whose volume is missing.
    bound: Vec<Option<Arc<Value>>>,
    /// Unbound claims whose class waits for the first consumer.
    waiting: Vec<Arc<Value>>,
}

/// Why no node will do, before any is tried, as upstream's PreFilter says it.
pub type PreFilterFailure = String;

const NO_VOLUMES_TO_BIND: &str = "node(s) didn't find available persistent volumes to bind";

impl PodVolumes {
    /// Looks the pod's claims up; fails when one is missing, going, lost or unbound without
    /// waiting for its first consumer.
    pub fn resolve(pod: &PodInfo, view: &View) -> Result<PodVolumes, PreFilterFailure> {
        let mut volumes = PodVolumes {
            bound: Vec::new(),
            waiting: Vec::new(),
        };
        let mut unbound_immediate = false;
        for name in &pod.claims {
            let Some(claim) = view.get(CLAIMS, &pod.namespace, name) else {
                return Err(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if !claim["metadata"]["deletionTimestamp"].is_null() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let volume_name = str_of(&claim["spec"]["volumeName"]);
            if claim["status"]["phase"] == "Lost" {
                return Err(format!(
                    "persistentvolumeclaim \"{name}\" bound to non-existent persistentvolume \"{volume_name}\""
                ));
            }
            if claim_is_bound(claim) {
                volumes
                    .bound
                    .push(view.get(VOLUMES, "", &volume_name).cloned());
            } else if volume_name.is_empty() && delays_binding(claim, view) {
                volumes.waiting.push(claim.clone());
            } else {
                unbound_immediate = true;
            }
        }
        if unbound_immediate {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        Ok(volumes)
    }

    /// Whether the pod's volumes can be used from `node`; the reason if not.
    pub fn check(&self, node: &Value, view: &View) -> Result<(), String> {
        let name = str_of(&node["metadata"]["name"]);
        for volume in &self.bound {
            let Some(volume) = volume else {
                return Err(
                    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
                        .into(),
                );
            };
            if !reachable_from(volume, node) {
                return Err("node(s) didn't match PersistentVolume's node affinity".into());
            }
        }
        let mut taken: Vec<String> = Vec::new();
        for claim in &self.waiting {
            if let Some(selected) = claim["metadata"]["annotations"][SELECTED_NODE].as_str() {
                if selected != name {
                    return Err(NO_VOLUMES_TO_BIND.into());
                }
            }
            let fits = |v: &Value| reachable_from(v, node);
            match find_matching_volume(claim, view.list(VOLUMES), false, &fits, &taken) {
                Some(volume) => taken.push(str_of(&volume["metadata"]["name"])),
                None if provisionable(claim, view) => {}
                None => return Err(NO_VOLUMES_TO_BIND.into()),
            }
        }
        Ok(())
    }

    /// Whether every claim is bound already.
    pub fn all_bound(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Whether a volume's required node affinity admits the node (no affinity admits every node).
fn reachable_from(volume: &Value, node: &Value) -> bool {
    let Some(terms) = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].as_array()
    else {
        return true;
    };
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let empty = serde_json::Map::new();
    let labels = node["metadata"]["labels"].as_object().unwrap_or(&empty);
    terms.iter().any(|t| node_term_matches(t, name, labels))
}

/// Whether the claim's class can make a volume for it.
fn provisionable(claim: &Value, view: &View) -> bool {
    let class = str_of(&claim["spec"]["storageClassName"]);
    view.get(CLASSES, "", &class).is_some_and(|c| {
        let provisioner = str_of(&c["provisioner"]);
        !provisioner.is_empty() && provisioner != "kubernetes.io/no-provisioner"
    })
}

/// After the scheduler chose `node` for the pod: gives each waiting claim a free volume
/// reachable from the node or asks for one there. `true` when the pod may be bound now.
pub fn prepare_volumes(ctx: &Context, pod: &PodInfo, node_name: &str) -> Result<bool, ApiError> {
    let (volumes, node) = {
        let view = ctx.view();
        match PodVolumes::resolve(pod, &view) {
            Ok(volumes) => (volumes, view.get("core/nodes", "", node_name).cloned()),
            // Changed since the decision: the next attempt says why.
            Err(_) => return Ok(false),
        }
    };
    if volumes.all_bound() {
        return Ok(true);
    }
    let Some(node) = node else {
        return Ok(false);
    };
    let mut taken: Vec<String> = Vec::new();
    for claim in &volumes.waiting {
        let chosen = {
            let view = ctx.view();
            let fits = |v: &Value| reachable_from(v, &node);
            find_matching_volume(claim, view.list(VOLUMES), false, &fits, &taken).cloned()
        };
        let (namespace, name) = (
            str_of(&claim["metadata"]["namespace"]),
            str_of(&claim["metadata"]["name"]),
        );
        match chosen {
            Some(volume) => {
                let volume_name = str_of(&volume["metadata"]["name"]);
                taken.push(volume_name.clone());
                if volume["spec"]["claimRef"].is_null() {
                    ctx.update(VOLUMES, "", &volume_name, |v| {
                        if !v["spec"]["claimRef"].is_null() {
                            return Err(ApiError::conflict(
                                super::resource_of(VOLUMES),
                                &volume_name,
                                "the volume was claimed meanwhile",
                            ));
                        }
                        v["spec"]["claimRef"] = claim_reference(claim);
                        if !v["metadata"]["annotations"].is_object() {
                            v["metadata"]["annotations"] = serde_json::json!({});
                        }
                        v["metadata"]["annotations"][BOUND_BY_CONTROLLER] =
                            serde_json::json!("yes");
                        Ok(())
                    })?;
                }
            }
            None => {
                if claim["metadata"]["annotations"][SELECTED_NODE].is_null() {
                    ctx.update(CLAIMS, &namespace, &name, |c| {
                        if !c["metadata"]["annotations"].is_object() {
                            c["metadata"]["annotations"] = serde_json::json!({});
                        }
                        // Another pod of the same claim may have chosen first: it stays.
                        if c["metadata"]["annotations"][SELECTED_NODE].is_null() {
                            c["metadata"]["annotations"][SELECTED_NODE] =
                                serde_json::json!(node_name);
                        }
                        Ok(())
                    })?;
                }
            }
        }
    }
    Ok(false)
}

/// The unscheduled pods that use a claim: a change to it may let them go on.
pub fn pods_waiting_for(view: &View, namespace: &str, claim: &str) -> Vec<super::view::Key> {
    view.pods_in(namespace)
        .filter(|p| p.node.is_empty() && p.is_active() && p.claims.iter().any(|c| c == claim))
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect()
}
