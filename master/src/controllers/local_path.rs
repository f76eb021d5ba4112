//! The built-in provisioner `bramble.dev/local-path`: a directory on one node per claim, as
//! k3s's local-path provisioner makes them, but run by the master with no helper pod.
//!
//! The PV controller asks for a volume by annotating the claim with the provisioner's name.
//! Once the node is known (WaitForFirstConsumer: the scheduler's `selected-node` annotation;
//! Immediate: a Ready node picked here), this creates the PersistentVolume `pvc-<claim uid>`: a
//! `hostPath` (DirectoryOrCreate) under the node's storage directory, pinned to the node by
//! node affinity, already naming the claim; the PV controller then completes the binding. The
//! node's agent makes the directory when a pod mounts it, and removes it (then the volume)
//! when the volume is Released with reclaim policy Delete.

use serde_json::{json, Value};

use super::view::{str_of, Key, View};
use super::volumes::{
    claim_class, claim_reference, is_local_path, CLAIMS, CLASSES, LOCAL_PATH, PROVISIONED_BY,
    SELECTED_NODE, STORAGE_PROVISIONER, VOLUMES,
};
use super::{Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::{Change, EventType};

/// The annotation an agent reports its storage directory in (an absolute path).
pub use protocol::node::STORAGE_DIR_ANNOTATION;
/// Where a node that reports no storage directory keeps volumes.
pub const DEFAULT_STORAGE_DIR: &str = "/var/lib/bramble/storage";

/// The provisioner. Its keys are claim keys.
pub struct LocalPathProvisioner;

/// Whether this provisioner was asked for a volume for the claim and none is bound yet.
fn wants_volume(claim: &Value) -> bool {
    is_local_path(&str_of(
        &claim["metadata"]["annotations"][STORAGE_PROVISIONER],
    )) && str_of(&claim["spec"]["volumeName"]).is_empty()
        && claim["metadata"]["deletionTimestamp"].is_null()
}

impl Reconciler for LocalPathProvisioner {
    fn name(&self) -> &'static str {
        LOCAL_PATH
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            CLAIMS if change.event != EventType::Deleted && wants_volume(&change.object) => {
                vec![(change.namespace.clone(), change.name.clone())]
            }
            // A node became Ready (Immediate claims wait for one) or reported its directory.
            "core/nodes"
                if change.previous.as_ref().is_none_or(|p| {
                    protocol::node::is_ready(p) != protocol::node::is_ready(&change.object)
                }) =>
            {
                self.all_keys(view)
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(CLAIMS)
            .filter(|c| wants_volume(c))
            .map(|c| super::key_of(c))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(claim) = ctx.view().get(CLAIMS, &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        if !wants_volume(&claim) {
            return Ok(Action::Done);
        }
        let volume_name = format!("pvc-{}", str_of(&claim["metadata"]["uid"]));
        if ctx.get(VOLUMES, "", &volume_name)?.is_some() {
            return Ok(Action::Done);
        }
        let class_name = claim_class(&claim).unwrap_or_default();
        let Some(class) = ctx.view().get(CLASSES, "", &class_name).cloned() else {
            return Ok(Action::Done);
        };
        if !is_local_path(&str_of(&class["provisioner"])) {
            return Ok(Action::Done);
        }
        let node = match choose_node(ctx, &claim, &class) {
            Ok(Some(node)) => node,
            Ok(None) => return Ok(Action::Done),
            Err(why) => {
                fail(ctx, &claim, &class_name, &why);
                return Ok(Action::Done);
            }
        };
        ctx.event(
            &claim,
            "Normal",
            "Provisioning",
            &format!(
                "External provisioner is provisioning volume for claim \"{}/{}\"",
                key.0, key.1
            ),
        );
        let volume = volume_for(&claim, &class, &node, &volume_name);
        match ctx.create(VOLUMES, volume) {
            Ok(_) => ctx.event(
                &claim,
                "Normal",
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {volume_name}"),
            ),
            Err(e) if e.code == 409 => {}
            Err(e) => {
                fail(ctx, &claim, &class_name, &e.message);
                return Err(e);
            }
        }
        Ok(Action::Done)
    }
}

fn fail(ctx: &Context, claim: &Value, class: &str, why: &str) {
    ctx.event(
        claim,
        "Warning",
        "ProvisioningFailed",
        &format!("failed to provision volume with StorageClass \"{class}\": {why}"),
    );
}

/// The node the volume goes on: the scheduler's choice, or for Immediate binding the Ready,
/// schedulable node holding the fewest local-path volumes. `Ok(None)`: wait.
fn choose_node(ctx: &Context, claim: &Value, class: &Value) -> Result<Option<Value>, String> {
    if claim["spec"]["selector"].is_object() {
        return Err("claim.Spec.Selector is not supported".into());
    }
    let modes = claim["spec"]["accessModes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if modes
        .iter()
        .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
    {
        return Err(
            "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes".into(),
        );
    }
    let view = ctx.view();
    if let Some(selected) = claim["metadata"]["annotations"][SELECTED_NODE].as_str() {
        return match view.get("core/nodes", "", selected) {
            Some(node) => Ok(Some((**node).clone())),
            None => Err(format!("nodes \"{selected}\" not found")),
        };
    }
    if class["volumeBindingMode"] == "WaitForFirstConsumer" {
        return Ok(None);
    }
    let held_by = |node: &str| {
        view.list(VOLUMES)
            .filter(|v| {
                v["metadata"]["annotations"][PROVISIONED_BY] == LOCAL_PATH
                    && node_of_volume(v).as_deref() == Some(node)
            })
            .count()
    };
    let best = view
        .list("core/nodes")
        .filter(|n| protocol::node::is_ready(n) && n["spec"]["unschedulable"] != true)
        .min_by_key(|n| {
            let name = str_of(&n["metadata"]["name"]);
            (held_by(&name), name)
        })
        .map(|n| (**n).clone());
    match best {
        Some(node) => Ok(Some(node)),
        None => Ok(None),
    }
}

/// The node a local volume is pinned to: the first value of its first `In` node-affinity
/// expression, as the local-path provisioner reads it back.
pub fn node_of_volume(volume: &Value) -> Option<String> {
    volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|t| t["matchExpressions"].as_array().into_iter().flatten())
        .find(|e| e["operator"] == "In")
        .and_then(|e| e["values"][0].as_str())
        .map(str::to_owned)
}

/// The PersistentVolume for a claim on a node.
fn volume_for(claim: &Value, class: &Value, node: &Value, volume_name: &str) -> Value {
    let node_name = str_of(&node["metadata"]["name"]);
    let hostname = node["metadata"]["labels"]["kubernetes.io/hostname"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| node_name.clone());
    let base = node["metadata"]["annotations"][STORAGE_DIR_ANNOTATION]
        .as_str()
        .filter(|dir| dir.starts_with('/'))
        .unwrap_or(DEFAULT_STORAGE_DIR)
        .trim_end_matches('/');
    let directory = format!(
        "{volume_name}_{}_{}",
        str_of(&claim["metadata"]["namespace"]),
        str_of(&claim["metadata"]["name"])
    );
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name,
            "annotations": {PROVISIONED_BY: LOCAL_PATH},
        },
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class["metadata"]["name"],
            "volumeMode": claim["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "hostPath": {"path": format!("{base}/{directory}"), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]},
            ]}]}},
            "claimRef": claim_reference(claim),
        },
    })
}
