//! Persistent volumes: binding claims to volumes, reclaiming released volumes, and the protection
//! finalizers (upstream's PV controller, pvc-protection and pv-protection controllers).
//!
//! ```text
//!   claim ──(no bind-completed)──▶ unbound ── a matching volume ──▶ bind: volume.claimRef,
//!     │                               │                              volume Bound, claim
//!     │                               │ none: provision (class)      volumeName + Bound
//!     │                               └ or wait (WaitForFirstConsumer: the scheduler picks)
//!     └─(bind-completed)──▶ bound ── volume gone / taken ──▶ Lost
//!
//!   volume: Pending ─▶ Available (no claimRef) ─▶ Bound ─▶ Released (claim gone)
//!                                                          ├ Retain: stays Released
//!                                                          ├ Delete, provisioned by bramble:
//!                                                          │   the node removes the directory
//!                                                          │   and deletes the volume
//!                                                          └ Delete, otherwise: deleted here
//! ```
//!
//! Keys are claims (`namespace`, `name`) and volumes (`""`, `name`): claims always have a
//! namespace, volumes never do.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::view::{str_of, Key, View};
use super::{Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::store::{Change, EventType, Store};
use protocol::quantity;

/// Storage key of PersistentVolumes.
pub const VOLUMES: &str = "core/persistentvolumes";
/// Storage key of PersistentVolumeClaims.
pub const CLAIMS: &str = "core/persistentvolumeclaims";
/// Storage key of StorageClasses.
pub const CLASSES: &str = "storage.k8s.io/storageclasses";

/// Keeps a claim while a scheduled pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Keeps a volume while it is bound.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// On a claim: it has passed its first binding.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume: the binding was made by the controller, not the user.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a volume: who provisioned it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// On a claim: the node the scheduler chose for its first consumer.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a claim: the provisioner asked to make its volume.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// On a StorageClass: the class claims without one get.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// The provisioner built into the master (see `local_path.rs`).
pub const LOCAL_PATH: &str = "bramble.dev/local-path";

/// The host-path provisioners of other small clusters, which bramble's answers for too, so that
/// manifests written for k3s, minikube, MicroK8s or Docker Desktop bind unchanged.
pub const LOCAL_PATH_ALIASES: &[&str] = &[
    "rancher.io/local-path",
    "k8s.io/minikube-hostpath",
    "microk8s.io/hostpath",
    "docker.io/hostpath",
];

/// Whether bramble's local-path provisioner answers for `provisioner`.
pub fn is_local_path(provisioner: &str) -> bool {
    provisioner == LOCAL_PATH || LOCAL_PATH_ALIASES.contains(&provisioner)
}

// ----- reading claims, volumes and classes ----------------------------------------------------

/// A claim's class: the legacy annotation first, then `spec.storageClassName`; `None` when it
/// names none (a default class may still be assigned), `Some("")` for "no class".
pub fn claim_class(claim: &Value) -> Option<String> {
    if let Some(class) = claim["metadata"]["annotations"][BETA_CLASS].as_str() {
        return Some(class.to_owned());
    }
    claim["spec"]["storageClassName"]
        .as_str()
        .map(str::to_owned)
}

/// A volume's class ("" for none).
pub fn volume_class(volume: &Value) -> String {
    volume["metadata"]["annotations"][BETA_CLASS]
        .as_str()
        .or_else(|| volume["spec"]["storageClassName"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Whether a class is marked as the default.
pub fn is_default_class(class: &Value) -> bool {
    let annotations = &class["metadata"]["annotations"];
    annotations[DEFAULT_CLASS] == "true" || annotations[BETA_DEFAULT_CLASS] == "true"
}

/// The default class among `classes`: the newest, ties by name (upstream's `GetDefaultClass`).
pub fn default_class<'a>(classes: impl Iterator<Item = &'a Value>) -> Option<&'a Value> {
    classes.filter(|c| is_default_class(c)).max_by(|a, b| {
        let created = |c: &Value| str_of(&c["metadata"]["creationTimestamp"]);
        created(a)
            .cmp(&created(b))
            .then_with(|| str_of(&b["metadata"]["name"]).cmp(&str_of(&a["metadata"]["name"])))
    })
}

/// Bytes a claim requests.
pub fn requested_bytes(claim: &Value) -> f64 {
    claim["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .and_then(quantity::parse)
        .unwrap_or(0.0)
}

/// Bytes a volume holds.
pub fn capacity_bytes(volume: &Value) -> f64 {
    volume["spec"]["capacity"]["storage"]
        .as_str()
        .and_then(quantity::parse)
        .unwrap_or(0.0)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Whether the volume offers every access mode the claim asks for.
pub fn modes_fit(claim: &Value, volume: &Value) -> bool {
    let offered = strings(&volume["spec"]["accessModes"]);
    strings(&claim["spec"]["accessModes"])
        .iter()
        .all(|m| offered.contains(m))
}

fn volume_mode(object: &Value) -> &str {
    object["spec"]["volumeMode"]
        .as_str()
        .unwrap_or("Filesystem")
}

fn is_deleting(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    strings(&object["metadata"]["finalizers"]).contains(&finalizer)
}

fn set_annotation(object: &mut Value, key: &str, value: &str) {
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"][key] = json!(value);
}

fn remove_annotation(object: &mut Value, key: &str) {
    if let Some(annotations) = object["metadata"]["annotations"].as_object_mut() {
        annotations.remove(key);
    }
}

fn add_finalizer(object: &mut Value, finalizer: &str) {
    if has_finalizer(object, finalizer) {
        return;
    }
    let mut finalizers = object["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    finalizers.push(json!(finalizer));
    object["metadata"]["finalizers"] = json!(finalizers);
}

fn remove_finalizer(object: &mut Value, finalizer: &str) {
    if let Some(finalizers) = object["metadata"]["finalizers"].as_array_mut() {
        finalizers.retain(|f| f != finalizer);
    }
}

/// Whether a claim is bound as the scheduler counts it: a volume named and binding completed.
pub fn claim_is_bound(claim: &Value) -> bool {
    !str_of(&claim["spec"]["volumeName"]).is_empty() && annotation(claim, BIND_COMPLETED).is_some()
}

/// Whether a volume's claimRef names this claim (and, when it carries a uid, this very claim).
fn refers_to(volume: &Value, claim: &Value) -> bool {
    let reference = &volume["spec"]["claimRef"];
    let uid = str_of(&reference["uid"]);
    reference["name"] == claim["metadata"]["name"]
        && reference["namespace"] == claim["metadata"]["namespace"]
        && (uid.is_empty() || uid == str_of(&claim["metadata"]["uid"]))
}

/// Why a volume cannot serve a claim (upstream's `checkVolumeSatisfyClaim`), if it cannot.
fn mismatch(claim: &Value, volume: &Value) -> Option<String> {
    if capacity_bytes(volume) < requested_bytes(claim) {
        return Some("requested PV is too small".into());
    }
    if claim_class(claim).unwrap_or_default() != volume_class(volume) {
        return Some("storageClassName does not match".into());
    }
    if volume_mode(claim) != volume_mode(volume) {
        return Some("incompatible volumeMode".into());
    }
    if !modes_fit(claim, volume) {
        return Some("incompatible accessMode".into());
    }
    if is_deleting(volume) {
        return Some(format!(
            "the volume is marked for deletion \"{}\"",
            str_of(&volume["metadata"]["name"])
        ));
    }
    None
}

/// Whether a volume's labels satisfy the claim's selector.
fn selector_fits(claim: &Value, volume: &Value) -> bool {
    let selector = &claim["spec"]["selector"];
    if selector.is_null() {
        return true;
    }
    protocol::selector::LabelSelector::from_json(selector).is_ok_and(|s| s.matches_object(volume))
}

/// The volume a claim should bind to (upstream's `FindMatchingVolume`): a volume pre-bound to it
/// first; otherwise, unless binding waits for the first consumer, the smallest Available volume
/// of its class that fits its size, modes and selector. `fits_node` narrows the choice to
/// volumes reachable from a node (the scheduler's use); `taken` are volumes already chosen.
pub fn find_matching_volume<'a>(
    claim: &Value,
    volumes: impl Iterator<Item = &'a Arc<Value>>,
    delay_binding: bool,
    fits_node: &dyn Fn(&Value) -> bool,
    taken: &[String],
) -> Option<&'a Arc<Value>> {
    let request = requested_bytes(claim);
    let class = claim_class(claim).unwrap_or_default();
    let mut best: Option<&'a Arc<Value>> = None;
    for volume in volumes {
        let name = str_of(&volume["metadata"]["name"]);
        if taken.contains(&name) {
            continue;
        }
        let claimed = !volume["spec"]["claimRef"].is_null();
        if claimed && !refers_to(volume, claim) {
            continue;
        }
        if capacity_bytes(volume) < request
            || volume_mode(volume) != volume_mode(claim)
            || is_deleting(volume)
            || !fits_node(volume)
        {
            continue;
        }
        if claimed {
            return Some(volume);
        }
        if delay_binding {
            continue;
        }
        if volume["status"]["phase"] != "Available"
            || !selector_fits(claim, volume)
            || volume_class(volume) != class
            || !modes_fit(claim, volume)
        {
            continue;
        }
        if best.is_none_or(|b| capacity_bytes(volume) < capacity_bytes(b)) {
            best = Some(volume);
        }
    }
    best
}

/// Whether a claim's binding waits for its first consumer: its class exists and says so.
pub fn delays_binding(claim: &Value, view: &View) -> bool {
    match claim_class(claim).filter(|c| !c.is_empty()) {
        Some(class) => view
            .get(CLASSES, "", &class)
            .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer"),
        None => false,
    }
}

// ----- admission ------------------------------------------------------------------------------

/// Upstream's DefaultStorageClass and StorageObjectInUseProtection admission for a new claim:
/// a claim that names no class gets the default one (`""` is "no class" and stays), and every
/// claim gets the pvc-protection finalizer.
pub fn admit_claim(store: &Store, claim: &mut Value) {
    if claim_class(claim).is_none() {
        let classes = store
            .list(CLASSES, None, None, 0, &|c: &Value| is_default_class(c))
            .map(|page| page.items)
            .unwrap_or_default();
        if let Some(default) = default_class(classes.iter()) {
            if claim["spec"].is_object() {
                claim["spec"]["storageClassName"] = default["metadata"]["name"].clone();
            }
        }
    }
    add_finalizer(claim, PVC_PROTECTION);
}

/// StorageObjectInUseProtection for a new volume.
pub fn admit_volume(volume: &mut Value) {
    add_finalizer(volume, PV_PROTECTION);
}

/// Upstream's PersistentVolumeClaimResize admission: only a bound claim whose class allows
/// expansion may ask for more storage. (An unbound claim's spec is refused by validation.)
pub fn admit_claim_resize(store: &Store, current: &Value, next: &Value) -> Result<(), ApiError> {
    if requested_bytes(next) <= requested_bytes(current) || current["status"]["phase"] != "Bound" {
        return Ok(());
    }
    let name = str_of(&current["metadata"]["name"]);
    let class = claim_class(current).unwrap_or_default();
    let expandable = !class.is_empty()
        && store
            .get(CLASSES, "", &class)
            .ok()
            .flatten()
            .is_some_and(|c| c["allowVolumeExpansion"] == true);
    if expandable {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
    )))
}

// ----- the controller -------------------------------------------------------------------------

/// The PV controller: binding, phases, reclaiming, and both protection finalizers.
pub struct VolumeController;

fn claim_key(claim: &Value) -> Key {
    (
        str_of(&claim["metadata"]["namespace"]),
        str_of(&claim["metadata"]["name"]),
    )
}

fn volume_key(name: &str) -> Key {
    (String::new(), name.to_owned())
}

/// Claims waiting for a volume: every claim without a volume name.
fn pending_claims(view: &View) -> Vec<Key> {
    view.list(CLAIMS)
        .filter(|c| str_of(&c["spec"]["volumeName"]).is_empty())
        .map(|c| claim_key(c))
        .collect()
}

impl Reconciler for VolumeController {
    fn name(&self) -> &'static str {
        "persistentvolume-controller"
    }

    fn resync_every(&self) -> Duration {
        Duration::from_secs(15)
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        let object = &change.object;
        match change.resource.as_str() {
            CLAIMS => {
                let mut keys = vec![(change.namespace.clone(), change.name.clone())];
                for claim in std::iter::once(object).chain(change.previous.as_ref()) {
                    let volume = str_of(&claim["spec"]["volumeName"]);
                    if !volume.is_empty() {
                        keys.push(volume_key(&volume));
                    }
                }
                if change.event == EventType::Deleted {
                    // Volumes pre-bound to it by name only learn of its going here.
                    keys.extend(
                        view.list(VOLUMES)
                            .filter(|v| {
                                v["spec"]["claimRef"]["namespace"] == change.namespace.as_str()
                                    && v["spec"]["claimRef"]["name"] == change.name.as_str()
                            })
                            .map(|v| volume_key(&str_of(&v["metadata"]["name"]))),
                    );
                }
                keys
            }
            VOLUMES => {
                let mut keys = vec![volume_key(&change.name)];
                let reference = &object["spec"]["claimRef"];
                if reference.is_object() {
                    keys.push((str_of(&reference["namespace"]), str_of(&reference["name"])));
                } else if change.event != EventType::Deleted {
                    // A new or freed volume may suit a waiting claim.
                    keys.extend(pending_claims(view));
                }
                keys
            }
            // A default class may have appeared, or a class a claim waits for.
            CLASSES => pending_claims(view),
            "core/pods" => {
                // A claim being deleted goes when the last scheduled pod using it goes.
                let pod = object;
                let namespace = &change.namespace;
                super::view::claims_of(pod)
                    .into_iter()
                    .filter(|claim| {
                        view.get(CLAIMS, namespace, claim)
                            .is_some_and(|c| is_deleting(c))
                    })
                    .map(|claim| (namespace.clone(), claim))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(CLAIMS)
            .map(|c| claim_key(c))
            .chain(
                view.list(VOLUMES)
                    .map(|v| volume_key(&str_of(&v["metadata"]["name"]))),
            )
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        if key.0.is_empty() {
            sync_volume(ctx, &key.1)
        } else {
            sync_claim(ctx, key)
        }
    }
}

fn sync_claim(ctx: &Context, key: &Key) -> Result<Action, ApiError> {
    let Some(claim) = ctx.view().get(CLAIMS, &key.0, &key.1).cloned() else {
        return Ok(Action::Done);
    };
    if is_deleting(&claim) {
        return release_claim_when_unused(ctx, &claim);
    }
    if !has_finalizer(&claim, PVC_PROTECTION) {
        ctx.update(CLAIMS, &key.0, &key.1, |c| {
            add_finalizer(c, PVC_PROTECTION);
            Ok(())
        })?;
        return Ok(Action::Done);
    }
    if annotation(&claim, BIND_COMPLETED).is_none() {
        sync_unbound_claim(ctx, &claim)
    } else {
        sync_bound_claim(ctx, &claim)
    }
}

/// The pvc-protection controller: a claim being deleted keeps its finalizer while any pod
/// scheduled to a node names it (the pod's phase does not matter, as upstream).
fn release_claim_when_unused(ctx: &Context, claim: &Value) -> Result<Action, ApiError> {
    if !has_finalizer(claim, PVC_PROTECTION) {
        return Ok(Action::Done);
    }
    let (namespace, name) = claim_key(claim);
    let in_use = ctx
        .view()
        .pods_in(&namespace)
        .any(|pod| !pod.node.is_empty() && pod.claims.contains(&name));
    if in_use {
        return Ok(Action::Done);
    }
    // The view may lag behind a pod just bound: ask the store, as upstream asks the API.
    let pods = ctx
        .shared
        .api
        .store
        .list("core/pods", Some(&namespace), None, 0, &|pod: &Value| {
            !str_of(&pod["spec"]["nodeName"]).is_empty()
                && super::view::claims_of(pod).contains(&name)
        })
        .map_err(|e| ApiError::internal_logged("listing pods failed", &e))?;
    if !pods.items.is_empty() {
        return Ok(Action::Done);
    }
    ctx.update(CLAIMS, &namespace, &name, |c| {
        remove_finalizer(c, PVC_PROTECTION);
        Ok(())
    })?;
    Ok(Action::Done)
}

fn sync_unbound_claim(ctx: &Context, claim: &Value) -> Result<Action, ApiError> {
    let (namespace, name) = claim_key(claim);
    let volume_name = str_of(&claim["spec"]["volumeName"]);
    if !volume_name.is_empty() {
        // Pre-bound by the user to a volume by name.
        let Some(volume) = ctx.view().get(VOLUMES, "", &volume_name).cloned() else {
            return set_claim_phase(ctx, claim, "Pending");
        };
        if volume["spec"]["claimRef"].is_null() {
            if let Some(reason) = mismatch(claim, &volume) {
                ctx.event(
                    claim,
                    "Warning",
                    "VolumeMismatch",
                    &format!("Cannot bind to requested volume \"{volume_name}\": {reason}"),
                );
                return set_claim_phase(ctx, claim, "Pending");
            }
            return bind(ctx, &volume, claim);
        }
        if refers_to(&volume, claim) {
            return bind(ctx, &volume, claim);
        }
        ctx.event(
            claim,
            "Warning",
            "FailedBinding",
            &format!("volume \"{volume_name}\" already bound to a different claim."),
        );
        return set_claim_phase(ctx, claim, "Pending");
    }
    let delay = delays_binding(claim, &ctx.view());
    let found = {
        let view = ctx.view();
        find_matching_volume(claim, view.list(VOLUMES), delay, &|_| true, &[]).cloned()
    };
    if let Some(volume) = found {
        return bind(ctx, &volume, claim);
    }
    let class = claim_class(claim);
    if class.is_none() {
        let default = default_class(ctx.view().list(CLASSES).map(|c| &**c))
            .map(|c| str_of(&c["metadata"]["name"]));
        if let Some(default) = default {
            // A default class appeared after the claim: it gets it now (retroactive default).
            ctx.update(CLAIMS, &namespace, &name, |c| {
                if c["spec"]["storageClassName"].is_null() && c["spec"].is_object() {
                    c["spec"]["storageClassName"] = json!(default);
                }
                Ok(())
            })?;
            return Ok(Action::Done);
        }
    }
    let class = class.unwrap_or_default();
    if delay && annotation(claim, SELECTED_NODE).is_none() {
        let waiting: Vec<String> = ctx
            .view()
            .pods_in(&namespace)
            .filter(|p| p.node.is_empty() && p.is_active() && p.claims.contains(&name))
            .map(|p| p.name.clone())
            .collect();
        match waiting.as_slice() {
            [] => ctx.event(
                claim,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            ),
            [one] => ctx.event(
                claim,
                "Normal",
                "WaitForPodScheduled",
                &format!("waiting for pod {one} to be scheduled"),
            ),
            many => ctx.event(
                claim,
                "Normal",
                "WaitForPodScheduled",
                &format!("waiting for pods {} to be scheduled", many.join(",")),
            ),
        }
    } else if !class.is_empty() {
        ask_provisioner(ctx, claim, &class)?;
    } else {
        ctx.event(
            claim,
            "Normal",
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        );
    }
    set_claim_phase(ctx, claim, "Pending")
}

/// No volume fits: the class's provisioner is asked for one (upstream's `provisionClaim` for
/// provisioners outside the tree, which is what the local-path provisioner is).
fn ask_provisioner(ctx: &Context, claim: &Value, class_name: &str) -> Result<(), ApiError> {
    let Some(class) = ctx.view().get(CLASSES, "", class_name).cloned() else {
        ctx.event(
            claim,
            "Warning",
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
        return Ok(());
    };
    let provisioner = str_of(&class["provisioner"]);
    if provisioner.starts_with("kubernetes.io/") {
        ctx.event(
            claim,
            "Warning",
            "ProvisioningFailed",
            &format!("no volume plugin matched name: {provisioner}"),
        );
        return Ok(());
    }
    let (namespace, name) = claim_key(claim);
    if annotation(claim, STORAGE_PROVISIONER) != Some(provisioner.as_str())
        || annotation(claim, BETA_STORAGE_PROVISIONER) != Some(provisioner.as_str())
    {
        ctx.update(CLAIMS, &namespace, &name, |c| {
            set_annotation(c, STORAGE_PROVISIONER, &provisioner);
            set_annotation(c, BETA_STORAGE_PROVISIONER, &provisioner);
            Ok(())
        })?;
    }
    ctx.event(
        claim,
        "Normal",
        "ExternalProvisioning",
        &format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."),
    );
    Ok(())
}

fn sync_bound_claim(ctx: &Context, claim: &Value) -> Result<Action, ApiError> {
    let volume_name = str_of(&claim["spec"]["volumeName"]);
    if volume_name.is_empty() {
        return lose_claim(
            ctx,
            claim,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        );
    }
    let Some(volume) = ctx.view().get(VOLUMES, "", &volume_name).cloned() else {
        return lose_claim(
            ctx,
            claim,
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        );
    };
    let reference_uid = str_of(&volume["spec"]["claimRef"]["uid"]);
    if volume["spec"]["claimRef"].is_null() || reference_uid == str_of(&claim["metadata"]["uid"]) {
        return bind(ctx, &volume, claim);
    }
    lose_claim(
        ctx,
        claim,
        "ClaimMisbound",
        "Two claims are bound to the same volume, this one is bound incorrectly",
    )
}

fn lose_claim(
    ctx: &Context,
    claim: &Value,
    reason: &str,
    message: &str,
) -> Result<Action, ApiError> {
    if claim["status"]["phase"] != "Lost" {
        set_claim_phase(ctx, claim, "Lost")?;
        ctx.event(claim, "Warning", reason, message);
    }
    Ok(Action::Done)
}

fn set_claim_phase(ctx: &Context, claim: &Value, phase: &str) -> Result<Action, ApiError> {
    if claim["status"]["phase"] == phase {
        return Ok(Action::Done);
    }
    let (namespace, name) = claim_key(claim);
    ctx.update_status(CLAIMS, &namespace, &name, |c| {
        c["status"] = json!({"phase": phase});
        Ok(())
    })?;
    Ok(Action::Done)
}

/// A reference to a claim as a volume's `claimRef` holds it.
pub fn claim_reference(claim: &Value) -> Value {
    json!({
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "namespace": claim["metadata"]["namespace"],
        "name": claim["metadata"]["name"],
        "uid": claim["metadata"]["uid"],
        "resourceVersion": claim["metadata"]["resourceVersion"],
    })
}

/// Binds a volume and a claim, in upstream's order: the volume's claimRef, the volume's phase,
/// the claim's volumeName and annotations, the claim's phase. Each step writes only what
/// differs, so a bind cut short is finished by the next sync.
fn bind(ctx: &Context, volume: &Value, claim: &Value) -> Result<Action, ApiError> {
    let volume_name = str_of(&volume["metadata"]["name"]);
    let (namespace, name) = claim_key(claim);
    let uid = str_of(&claim["metadata"]["uid"]);
    let reference = &volume["spec"]["claimRef"];
    let mut volume = volume.clone();
    if reference["name"] != name.as_str()
        || reference["namespace"] != namespace.as_str()
        || str_of(&reference["uid"]) != uid
    {
        let pre_bound = refers_to(&volume, claim);
        volume = ctx.update(VOLUMES, "", &volume_name, |v| {
            v["spec"]["claimRef"] = claim_reference(claim);
            if !pre_bound {
                set_annotation(v, BOUND_BY_CONTROLLER, "yes");
            }
            Ok(())
        })?;
    }
    if volume["status"]["phase"] != "Bound" {
        volume = ctx.update_status(VOLUMES, "", &volume_name, |v| {
            v["status"]["phase"] = json!("Bound");
            if let Some(status) = v["status"].as_object_mut() {
                status.remove("message");
                status.remove("reason");
            }
            Ok(())
        })?;
    }
    let mut claim = claim.clone();
    if str_of(&claim["spec"]["volumeName"]) != volume_name
        || annotation(&claim, BIND_COMPLETED).is_none()
    {
        claim = ctx.update(CLAIMS, &namespace, &name, |c| {
            if str_of(&c["spec"]["volumeName"]) != volume_name {
                c["spec"]["volumeName"] = json!(volume_name);
                set_annotation(c, BOUND_BY_CONTROLLER, "yes");
            }
            set_annotation(c, BIND_COMPLETED, "yes");
            Ok(())
        })?;
    }
    let modes = volume["spec"]["accessModes"].clone();
    if claim["status"]["phase"] != "Bound" || claim["status"]["accessModes"] != modes {
        let newly_bound = claim["status"]["phase"] != "Bound";
        let capacity = volume["spec"]["capacity"].clone();
        ctx.update_status(CLAIMS, &namespace, &name, |c| {
            c["status"]["phase"] = json!("Bound");
            c["status"]["accessModes"] = modes;
            if newly_bound || c["status"]["capacity"].is_null() {
                c["status"]["capacity"] = capacity;
            }
            Ok(())
        })?;
    }
    Ok(Action::Done)
}

fn set_volume_phase(ctx: &Context, volume: &Value, phase: &str) -> Result<Value, ApiError> {
    if volume["status"]["phase"] == phase {
        return Ok(volume.clone());
    }
    ctx.update_status(VOLUMES, "", &str_of(&volume["metadata"]["name"]), |v| {
        v["status"]["phase"] = json!(phase);
        if let Some(status) = v["status"].as_object_mut() {
            status.remove("message");
        }
        Ok(())
    })
}

fn sync_volume(ctx: &Context, name: &str) -> Result<Action, ApiError> {
    let Some(volume) = ctx.view().get(VOLUMES, "", name).cloned() else {
        return Ok(Action::Done);
    };
    if is_deleting(&volume) {
        // pv-protection: a volume goes once it is no longer Bound.
        if has_finalizer(&volume, PV_PROTECTION) && volume["status"]["phase"] != "Bound" {
            ctx.update(VOLUMES, "", name, |v| {
                remove_finalizer(v, PV_PROTECTION);
                Ok(())
            })?;
            return Ok(Action::Done);
        }
    } else if !has_finalizer(&volume, PV_PROTECTION) {
        ctx.update(VOLUMES, "", name, |v| {
            add_finalizer(v, PV_PROTECTION);
            Ok(())
        })?;
        return Ok(Action::Done);
    }
    let reference = &volume["spec"]["claimRef"];
    if reference.is_null() || str_of(&reference["uid"]).is_empty() {
        set_volume_phase(ctx, &volume, "Available")?;
        return Ok(Action::Done);
    }
    let (namespace, claim_name, uid) = (
        str_of(&reference["namespace"]),
        str_of(&reference["name"]),
        str_of(&reference["uid"]),
    );
    let from_view = ctx.view().get(CLAIMS, &namespace, &claim_name).cloned();
    let claim = match from_view {
        Some(claim) => Some((*claim).clone()),
        // The view may not have the claim yet (just created): ask the store before releasing.
        None => ctx.get(CLAIMS, &namespace, &claim_name)?,
    }
    .filter(|c| str_of(&c["metadata"]["uid"]) == uid);
    let Some(claim) = claim else {
        let volume =
            if volume["status"]["phase"] == "Released" || volume["status"]["phase"] == "Failed" {
                volume.as_ref().clone()
            } else {
                set_volume_phase(ctx, &volume, "Released")?
            };
        return reclaim(ctx, &volume);
    };
    let bound_to = str_of(&claim["spec"]["volumeName"]);
    if bound_to.is_empty() {
        // The claim's own sync binds it (the change to this volume queued it).
        return Ok(Action::Done);
    }
    if bound_to == name {
        set_volume_phase(ctx, &volume, "Bound")?;
        return Ok(Action::Done);
    }
    // The claim is bound to another volume.
    if annotation(&volume, PROVISIONED_BY).is_some()
        && volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    {
        let volume = set_volume_phase(ctx, &volume, "Released")?;
        return reclaim(ctx, &volume);
    }
    let by_controller = annotation(&volume, BOUND_BY_CONTROLLER).is_some();
    let volume = ctx.update(VOLUMES, "", name, |v| {
        if by_controller {
            v["spec"]["claimRef"] = Value::Null;
            remove_annotation(v, BOUND_BY_CONTROLLER);
        } else if let Some(reference) = v["spec"]["claimRef"].as_object_mut() {
            reference.remove("uid");
        }
        Ok(())
    })?;
    set_volume_phase(ctx, &volume, "Available")?;
    Ok(Action::Done)
}

/// What happens to a Released volume, by its reclaim policy.
fn reclaim(ctx: &Context, volume: &Value) -> Result<Action, ApiError> {
    let name = str_of(&volume["metadata"]["name"]);
    match volume["spec"]["persistentVolumeReclaimPolicy"]
        .as_str()
        .unwrap_or("Retain")
    {
        "Retain" => Ok(Action::Done),
        "Delete" => {
            if annotation(volume, PROVISIONED_BY).is_some() || is_deleting(volume) {
                // Its provisioner deletes it: for local-path, the node that holds the directory.
                return Ok(Action::Done);
            }
            // A volume made by hand: bramble has no storage of its own to clean, the object goes.
            ctx.delete(VOLUMES, "", &name, &DeleteOptions::default())?;
            Ok(Action::Done)
        }
        "Recycle" => {
            if volume["status"]["phase"] != "Failed" {
                ctx.update_status(VOLUMES, "", &name, |v| {
                    v["status"]["phase"] = json!("Failed");
                    v["status"]["message"] = json!("No recycler plugin found for the volume!");
                    Ok(())
                })?;
                ctx.event(
                    volume,
                    "Warning",
                    "VolumeFailedRecycle",
                    "No recycler plugin found for the volume!",
                );
            }
            Ok(Action::Done)
        }
        _ => {
            if volume["status"]["phase"] != "Failed" {
                ctx.update_status(VOLUMES, "", &name, |v| {
                    v["status"]["phase"] = json!("Failed");
                    v["status"]["message"] =
                        json!("Volume has unrecognized PersistentVolumeReclaimPolicy");
                    Ok(())
                })?;
                ctx.event(
                    volume,
                    "Warning",
                    "VolumeUnknownReclaimPolicy",
                    "Volume has unrecognized PersistentVolumeReclaimPolicy",
                );
            }
            Ok(Action::Done)
        }
    }
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
