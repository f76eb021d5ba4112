//! StatefulSets: pods with stable names `<set>-<ordinal>` and claims, started in order, replaced
//! from the highest ordinal down.
//!
//! ```text
//!   ordinals start .. start+replicas-1 ─ replicas; other ordinals of the set ─ condemned
//!   one pass (OrderedReady; Parallel does not stop and deletes condemned pods all at once):
//!     replicas, lowest first: failed or succeeded → delete, stop
//!                             missing → claims, then the pod, stop
//!                             terminating, not Running+Ready, not available → stop
//!                             identity labels or claim owners wrong → fix
//!     condemned, highest first: delete one, only while the others are healthy, stop
//!     RollingUpdate: delete up to maxUnavailable outdated pods with index ≥ partition,
//!                    highest first, when no more than that are unavailable
//!     OnDelete: nothing; a deleted pod comes back at the update revision
//! ```
//!
//! The pod templates are the ones of the set's ControllerRevisions ([`super::history`]): a pod
//! made below the partition gets the current revision, the others the update revision; each
//! pod is labelled with its revision's name. Claims are made through the API before their pod
//! and outlive it; the retention policy only sets their owner references, and the garbage
//! collector does the deleting.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::deployment::int_or_percent;
use super::history::{self, Flavor};
use super::replicas::{claim_pods, owners_of_pod_change, selector_of};
use super::view::{str_of, Key, PodInfo, View};
use super::{controller_ref, key_of, now_seconds, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;

/// The label naming a StatefulSet pod (and the key of per-pod services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

const STORAGE_KEY: &str = "apps/statefulsets";
const CLAIMS: &str = "core/persistentvolumeclaims";

/// How StatefulSet revisions are named: upstream's hash of the data.
const FLAVOR: Flavor = Flavor {
    hash_label: "controller.kubernetes.io/hash",
    hash: |_, data, collisions| history::stateful_set_hash(data, collisions),
};

/// The StatefulSet controller.
pub struct StatefulSetController;

/// The set a pod name belongs to and its ordinal: `web-2` → (`web`, 2).
fn parent_and_ordinal(name: &str) -> Option<(&str, i64)> {
    let (parent, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ordinal.parse().ok()?))
}

fn running_and_ready(pod: &PodInfo) -> bool {
    pod.phase == "Running" && pod.ready
}

fn available(pod: &PodInfo, min_ready: i64, now: i64) -> bool {
    running_and_ready(pod) && pod.is_available(min_ready, now)
}

/// Who owns a claim under the retention policy: the set while its pod is in range and
/// `whenDeleted` is Delete; the pod once it is condemned and `whenScaled` is Delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimOwner {
    Nobody,
    Set,
    Pod,
}

fn claim_owner(set: &Value, condemned: bool) -> ClaimOwner {
    let policy = &set["spec"]["persistentVolumeClaimRetentionPolicy"];
    if condemned && policy["whenScaled"] == "Delete" {
        ClaimOwner::Pod
    } else if policy["whenDeleted"] == "Delete" {
        ClaimOwner::Set
    } else {
        ClaimOwner::Nobody
    }
}

/// What one pass knows about the set.
struct Pass<'a> {
    ctx: &'a Context<'a>,
    set: &'a Value,
    name: String,
    namespace: String,
    monotonic: bool,
    min_ready: i64,
    now: i64,
    current: Value,
    update: Value,
}

impl Pass<'_> {
    fn pod_name(&self, ordinal: i64) -> String {
        format!("{}-{ordinal}", self.name)
    }

    fn claim_templates(&self) -> Vec<&Value> {
        self.set["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            })
            .collect()
    }

    fn claim_name(&self, template: &Value, ordinal: i64) -> String {
        format!(
            "{}-{}-{ordinal}",
            str_of(&template["metadata"]["name"]),
            self.name
        )
    }

    /// Records `verb` on a pod as upstream's `recordPodEvent` words it.
    fn pod_event(&self, verb: &str, pod: &str, error: Option<&ApiError>) {
        let title = format!("{}{}", verb[..1].to_uppercase(), &verb[1..]);
        match error {
            None => self.ctx.event(
                self.set,
                "Normal",
                &format!("Successful{title}"),
                &format!("{verb} Pod {pod} in StatefulSet {} successful", self.name),
            ),
            Some(error) => self.ctx.event(
                self.set,
                "Warning",
                &format!("Failed{title}"),
                &format!(
                    "{verb} Pod {pod} in StatefulSet {} failed error: {}",
                    self.name, error.message
                ),
            ),
        }
    }

    fn delete_pod(&self, pod: &PodInfo) -> Result<(), ApiError> {
        let result = self.ctx.delete_pod(pod);
        self.pod_event("delete", &pod.name, result.as_ref().err());
        result
    }

    /// The pod of `ordinal` made from `revision`'s template.
    fn new_pod(&self, ordinal: i64, revision: &Value) -> Value {
        let template = history::template_of(revision);
        let name = self.pod_name(ordinal);
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert(POD_NAME_LABEL.into(), json!(name));
        labels.insert(POD_INDEX_LABEL.into(), json!(ordinal.to_string()));
        labels.insert(
            REVISION_LABEL.into(),
            json!(str_of(&revision["metadata"]["name"])),
        );
        let mut metadata = json!({
            "name": name,
            "namespace": self.namespace,
            "labels": labels,
            "ownerReferences": [controller_ref(self.set)],
        });
        for field in ["annotations", "finalizers"] {
            if let Some(value) = template["metadata"].get(field).filter(|v| !v.is_null()) {
                metadata[field] = value.clone();
            }
        }
        let mut spec = template["spec"].clone();
        if !spec.is_object() {
            spec = json!({});
        }
        spec["hostname"] = json!(name);
        if let Some(service) = self.set["spec"]["serviceName"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            spec["subdomain"] = json!(service);
        }
        let claim_templates = self.claim_templates();
        if !claim_templates.is_empty() {
            let mut volumes: Vec<Value> = claim_templates
                .iter()
                .map(|t| {
                    json!({
                        "name": t["metadata"]["name"],
                        "persistentVolumeClaim": {"claimName": self.claim_name(t, ordinal)},
                    })
                })
                .collect();
            for volume in spec["volumes"].as_array().into_iter().flatten() {
                if !volumes.iter().any(|v| v["name"] == volume["name"]) {
                    volumes.push(volume.clone());
                }
            }
            spec["volumes"] = json!(volumes);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    /// Whether a claim of `ordinal` still names an earlier pod of that name as its owner: the
    /// garbage collector is about to delete it, so its pod must wait (upstream's
    /// `PodClaimIsStale`).
    fn claims_are_stale(&self, ordinal: i64) -> bool {
        if self.set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] != "Delete" {
            return false;
        }
        let view = self.ctx.view();
        let pod = self.pod_name(ordinal);
        self.claim_templates().iter().any(|t| {
            view.get(CLAIMS, &self.namespace, &self.claim_name(t, ordinal))
                .is_some_and(|claim| {
                    super::view::owner_refs(claim)
                        .iter()
                        .any(|o| o.kind == "Pod" && o.name == pod)
                })
        })
    }

    /// Creates the claims of `ordinal` that do not exist yet.
    fn create_claims(&self, ordinal: i64) -> Result<(), ApiError> {
        let pod = self.pod_name(ordinal);
        for template in self.claim_templates() {
            let name = self.claim_name(template, ordinal);
            let existing = self.ctx.view().get(CLAIMS, &self.namespace, &name).cloned();
            if let Some(existing) = existing {
                if !existing["metadata"]["deletionTimestamp"].is_null() {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!("pvc {name} is being deleted"),
                    ));
                }
                continue;
            }
            let mut claim = template.clone();
            let mut labels = template["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (key, value) in self.set["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                labels.insert(key.clone(), value.clone());
            }
            claim["apiVersion"] = json!("v1");
            claim["kind"] = json!("PersistentVolumeClaim");
            claim["metadata"]["name"] = json!(name);
            claim["metadata"]["namespace"] = json!(self.namespace);
            if labels.is_empty() {
                claim["metadata"]
                    .as_object_mut()
                    .map(|m| m.shift_remove("labels"));
            } else {
                claim["metadata"]["labels"] = json!(labels);
            }
            if claim_owner(self.set, false) == ClaimOwner::Set {
                claim["metadata"]["ownerReferences"] = json!([controller_ref(self.set)]);
            }
            if let Some(map) = claim.as_object_mut() {
                map.shift_remove("status");
            }
            match self.ctx.create(CLAIMS, claim) {
                Ok(_) => self.ctx.event(
                    self.set,
                    "Normal",
                    "SuccessfulCreate",
                    &format!(
                        "create Claim {name} Pod {pod} in StatefulSet {} success",
                        self.name
                    ),
                ),
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    self.ctx.event(
                        self.set,
                        "Warning",
                        "FailedCreate",
                        &format!(
                            "create Claim {name} for Pod {pod} in StatefulSet {} failed error: {}",
                            self.name, e.message
                        ),
                    );
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sets the owner references of a pod's claims as the retention policy wants them.
    fn sync_claim_owners(&self, pod: &PodInfo, condemned: bool) -> Result<(), ApiError> {
        let Some((_, ordinal)) = parent_and_ordinal(&pod.name) else {
            return Ok(());
        };
        let owner = claim_owner(self.set, condemned);
        let policy = &self.set["spec"]["persistentVolumeClaimRetentionPolicy"];
        let retain_all = policy["whenDeleted"] != "Delete" && policy["whenScaled"] != "Delete";
        let set_uid = str_of(&self.set["metadata"]["uid"]);
        let pod_ref = json!({
            "apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid,
            "controller": true, "blockOwnerDeletion": true,
        });
        for template in self.claim_templates() {
            let name = self.claim_name(template, ordinal);
            let Some(claim) = self.ctx.view().get(CLAIMS, &self.namespace, &name).cloned() else {
                continue;
            };
            let refs = claim["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ours = |r: &Value| {
                r["uid"] == set_uid.as_str() || (r["kind"] == "Pod" && r["name"] == pod.name)
            };
            if !retain_all && refs.iter().any(|r| r["controller"] == true && !ours(r)) {
                self.ctx.event(
                    self.set,
                    "Warning",
                    "ConflictingController",
                    &format!("PersistentVolumeClaim {name} has a conflicting OwnerReference that acts as a manging controller, the retention policy is ignored for this claim"),
                );
                continue;
            }
            let mut wanted: Vec<Value> = refs.iter().filter(|r| !ours(r)).cloned().collect();
            match owner {
                ClaimOwner::Set => wanted.push(controller_ref(self.set)),
                ClaimOwner::Pod => wanted.push(pod_ref.clone()),
                ClaimOwner::Nobody => {}
            }
            if wanted == refs {
                continue;
            }
            let result = self.ctx.update(CLAIMS, &self.namespace, &name, |claim| {
                claim["metadata"]["ownerReferences"] = json!(wanted);
                Ok(())
            });
            match result {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Puts back the identity labels of a pod (upstream's `updateIdentity`).
    fn repair_identity(&self, pod: &PodInfo, ordinal: i64) -> Result<(), ApiError> {
        let result = self
            .ctx
            .update("core/pods", &pod.namespace, &pod.name, |object| {
                if !object["metadata"]["labels"].is_object() {
                    object["metadata"]["labels"] = json!({});
                }
                object["metadata"]["labels"][POD_NAME_LABEL] = json!(pod.name);
                object["metadata"]["labels"][POD_INDEX_LABEL] = json!(ordinal.to_string());
                Ok(())
            });
        self.pod_event("update", &pod.name, result.as_ref().err());
        result.map(|_| ())
    }
}

/// What the set's pods count, for its status.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    replicas: i64,
    ready: i64,
    available: i64,
    current: i64,
    updated: i64,
}

impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            STORAGE_KEY => vec![(change.namespace.clone(), change.name.clone())],
            "core/pods" => owners_of_pod_change(change, view, STORAGE_KEY, "StatefulSet"),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(STORAGE_KEY).map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(set) = ctx.view().get(STORAGE_KEY, &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        let spec = &set["spec"];
        let owned = claim_pods(ctx, &set, &selector_of(&set))?;
        let start = spec["ordinals"]["start"].as_i64().unwrap_or(0).max(0);
        let wanted = spec["replicas"].as_i64().unwrap_or(1).max(0);
        let mut replicas: Vec<Option<Arc<PodInfo>>> = vec![None; wanted as usize];
        let mut condemned: Vec<Arc<PodInfo>> = Vec::new();
        for pod in owned {
            let Some((parent, ordinal)) = parent_and_ordinal(&pod.name) else {
                continue;
            };
            if parent != key.1 {
                continue;
            }
            if (start..start + wanted).contains(&ordinal) {
                replicas[(ordinal - start) as usize] = Some(pod);
            } else {
                condemned.push(pod);
            }
        }
        condemned.sort_by_key(|p| std::cmp::Reverse(parent_and_ordinal(&p.name).map(|p| p.1)));
        let deleting = !set["metadata"]["deletionTimestamp"].is_null();
        let revisions = if deleting {
            None
        } else {
            Some(history::sync_revisions(ctx, &set, &FLAVOR)?)
        };
        let update = match &revisions {
            Some(revisions) => revisions.update.clone(),
            None => Value::Null,
        };
        let update_name = str_of(&update["metadata"]["name"]);
        let current = revisions
            .as_ref()
            .and_then(|r| {
                let name = set["status"]["currentRevision"].as_str()?;
                r.all
                    .iter()
                    .find(|rev| rev["metadata"]["name"] == name)
                    .cloned()
            })
            .unwrap_or_else(|| update.clone());
        let current_name = str_of(&current["metadata"]["name"]);
        let min_ready = spec["minReadySeconds"].as_i64().unwrap_or(0);
        let now = now_seconds();

        let counts = count(
            replicas.iter().flatten().chain(condemned.iter()),
            &current_name,
            &update_name,
            min_ready,
            now,
        );
        if !deleting {
            let pass = Pass {
                ctx,
                set: &set,
                name: key.1.clone(),
                namespace: key.0.clone(),
                monotonic: spec["podManagementPolicy"] != "Parallel",
                min_ready,
                now,
                current: current.clone(),
                update: update.clone(),
            };
            pass.run(&replicas, &condemned, start)?;
        }
        let generation = set["metadata"]["generation"].clone();
        let collisions = revisions.as_ref().map_or(0, |r| r.collisions);
        let rolling = spec["updateStrategy"]["type"] != "OnDelete";
        let (mut current_name, mut current_count) = (current_name, counts.current);
        if rolling
            && counts.updated == counts.ready
            && counts.ready == counts.replicas
            && counts.replicas == wanted
            && !update_name.is_empty()
        {
            current_name = update_name.clone();
            current_count = counts.updated;
        }
        let written = ctx.update_status(STORAGE_KEY, &key.0, &key.1, |object| {
            let mut status = json!({
                "observedGeneration": generation,
                "replicas": counts.replicas,
                "availableReplicas": counts.available,
                "collisionCount": collisions,
            });
            for (field, value) in [
                ("readyReplicas", counts.ready),
                ("currentReplicas", current_count),
                ("updatedReplicas", counts.updated),
            ] {
                if value != 0 {
                    status[field] = json!(value);
                }
            }
            for (field, value) in [
                ("currentRevision", &current_name),
                ("updateRevision", &update_name),
            ] {
                if !value.is_empty() {
                    status[field] = json!(value);
                }
            }
            if deleting {
                for field in ["currentRevision", "updateRevision", "collisionCount"] {
                    if let Some(value) = object["status"].get(field) {
                        status[field] = value.clone();
                    }
                }
            }
            if let Some(conditions) = object["status"].get("conditions") {
                status["conditions"] = conditions.clone();
            }
            object["status"] = status;
            Ok(())
        });
        match written {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        if let Some(revisions) = &revisions {
            let mut live: HashSet<String> = [current_name.clone(), update_name.clone()].into();
            for pod in ctx.view().pods_owned_by(&str_of(&set["metadata"]["uid"])) {
                if let Some(revision) = pod.labels.get(REVISION_LABEL) {
                    live.insert(revision.clone());
                }
            }
            let limit = spec["revisionHistoryLimit"].as_i64().unwrap_or(10);
            history::truncate_history(ctx, &revisions.all, &live, limit)?;
        }
        // Pods that are ready but not yet available become available without any change.
        let soonest = replicas
            .iter()
            .flatten()
            .filter(|p| running_and_ready(p) && !p.is_available(min_ready, now))
            .filter_map(|p| p.ready_since.map(|since| since + min_ready - now))
            .min();
        Ok(match soonest {
            Some(seconds) => Action::RequeueAfter(Duration::from_secs(seconds.max(0) as u64 + 1)),
            None => Action::Done,
        })
    }
}

fn count<'a>(
    pods: impl Iterator<Item = &'a Arc<PodInfo>>,
    current: &str,
    update: &str,
    min_ready: i64,
    now: i64,
) -> Counts {
    let mut counts = Counts::default();
    for pod in pods {
        counts.replicas += 1;
        if running_and_ready(pod) {
            counts.ready += 1;
            counts.available += i64::from(pod.is_available(min_ready, now));
        }
        if !pod.deleting {
            let revision = pod.labels.get(REVISION_LABEL).map(String::as_str);
            counts.current += i64::from(revision == Some(current));
            counts.updated += i64::from(revision == Some(update));
        }
    }
    counts
}

impl Pass<'_> {
    /// One pass over the replicas, the condemned pods and the update; stops where OrderedReady
    /// must wait.
    fn run(
        &self,
        replicas: &[Option<Arc<PodInfo>>],
        condemned: &[Arc<PodInfo>],
        start: i64,
    ) -> Result<(), ApiError> {
        let spec = &self.set["spec"];
        let rolling = spec["updateStrategy"]["type"] != "OnDelete";
        let rolling_update = &spec["updateStrategy"]["rollingUpdate"];
        let partition = rolling_update["partition"].as_i64().unwrap_or(0);
        let below_current = if rolling_update.is_object() {
            partition
        } else {
            self.set["status"]["currentReplicas"].as_i64().unwrap_or(0)
        };
        let unhealthy = |pod: &PodInfo| pod.deleting || !available(pod, self.min_ready, self.now);
        for (index, slot) in replicas.iter().enumerate() {
            let ordinal = start + index as i64;
            let Some(pod) = slot else {
                if self.claims_are_stale(ordinal) {
                    if self.monotonic {
                        return Ok(());
                    }
                    continue;
                }
                let revision = if rolling && (index as i64) < below_current {
                    &self.current
                } else {
                    &self.update
                };
                let pod = self.new_pod(ordinal, revision);
                let name = self.pod_name(ordinal);
                let created = self
                    .create_claims(ordinal)
                    .and_then(|()| self.ctx.create("core/pods", pod));
                match created {
                    Ok(_) => self.pod_event("create", &name, None),
                    Err(e) if e.code == 409 && e.reason == "AlreadyExists" => return Err(e),
                    Err(e) => {
                        self.pod_event("create", &name, Some(&e));
                        return Err(e);
                    }
                }
                if self.monotonic {
                    return Ok(());
                }
                continue;
            };
            if pod.phase == "Failed" || pod.phase == "Succeeded" {
                if !pod.deleting {
                    self.delete_pod(pod)?;
                }
                if self.monotonic {
                    return Ok(());
                }
                continue;
            }
            if pod.phase == "Pending" && !pod.deleting {
                self.create_claims(ordinal)?;
            }
            if self.monotonic && unhealthy(pod) {
                return Ok(());
            }
            if pod.labels.get(POD_NAME_LABEL) != Some(&pod.name)
                || pod.labels.get(POD_INDEX_LABEL) != Some(&ordinal.to_string())
            {
                self.repair_identity(pod, ordinal)?;
            }
            if !pod.deleting {
                self.sync_claim_owners(pod, false)?;
            }
        }
        for pod in condemned {
            self.sync_claim_owners(pod, true)?;
        }
        // The first unhealthy pod may go even while unhealthy: it is the one holding the rest.
        let first_unhealthy = condemned.iter().rev().find(|p| unhealthy(p));
        for pod in condemned {
            if pod.deleting {
                if self.monotonic {
                    return Ok(());
                }
                continue;
            }
            if self.monotonic
                && unhealthy(pod)
                && first_unhealthy.is_some_and(|first| first.name != pod.name)
            {
                return Ok(());
            }
            self.delete_pod(pod)?;
            if self.monotonic {
                return Ok(());
            }
        }
        if !rolling {
            return Ok(());
        }
        let max_unavailable = int_or_percent(
            &rolling_update["maxUnavailable"],
            replicas.len() as i64,
            false,
            "1",
        )
        .max(1);
        let unavailable = replicas
            .iter()
            .filter(|slot| slot.as_ref().is_none_or(|p| unhealthy(p)))
            .count() as i64;
        if unavailable >= max_unavailable {
            return Ok(());
        }
        let update_name = str_of(&self.update["metadata"]["name"]);
        let mut budget = max_unavailable - unavailable;
        for slot in replicas.iter().skip(partition.max(0) as usize).rev() {
            if budget == 0 {
                break;
            }
            let Some(pod) = slot else { continue };
            if pod.labels.get(REVISION_LABEL) != Some(&update_name) && !pod.deleting {
                self.delete_pod(pod)?;
                budget -= 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::DeleteOptions;
    use crate::controllers::testing::{key, pod_spec, seconds_ago, TestCluster};

    fn stateful_set(replicas: i64) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": pod_spec(),
                },
            },
        })
    }

    fn with_claims(mut set: Value, when_deleted: &str, when_scaled: &str) -> Value {
        set["spec"]["volumeClaimTemplates"] = json!([{
            "metadata": {"name": "www"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }]);
        set["spec"]["persistentVolumeClaimRetentionPolicy"] =
            json!({"whenDeleted": when_deleted, "whenScaled": when_scaled});
        set
    }

    /// The names of the live pods, sorted.
    fn pod_names(cluster: &TestCluster) -> Vec<String> {
        let mut names: Vec<String> = cluster
            .live_pods()
            .iter()
            .map(|p| str_of(&p["metadata"]["name"]))
            .collect();
        names.sort();
        names
    }

    fn run(cluster: &TestCluster, name: &str, index: usize) {
        cluster.run_pod(
            &key(name),
            "pi-1",
            &format!("10.42.0.{}", index + 2),
            Some(&seconds_ago(60)),
        );
    }

    /// Reconciles, running each new pod, until nothing changes: a set that has come up.
    fn bring_up(cluster: &TestCluster, controller: &StatefulSetController) {
        for _ in 0..20 {
            cluster.reconcile(controller, &key("web"));
            let mut progressed = false;
            for (index, pod) in cluster.live_pods().iter().enumerate() {
                if pod["status"]["phase"] == "Pending" {
                    run(cluster, pod["metadata"]["name"].as_str().unwrap(), index);
                    progressed = true;
                }
            }
            if !progressed {
                cluster.reconcile(controller, &key("web"));
                return;
            }
        }
        panic!("the set did not settle");
    }

    fn remove_pod(cluster: &TestCluster, name: &str) {
        cluster.delete(
            "core/pods",
            &key(name),
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        );
    }

    fn status(cluster: &TestCluster) -> Value {
        cluster.get(STORAGE_KEY, &key("web")).unwrap()["status"].clone()
    }

    fn revision_of(cluster: &TestCluster, pod: &str) -> String {
        str_of(&cluster.get("core/pods", &key(pod)).unwrap()["metadata"]["labels"][REVISION_LABEL])
    }

    #[test]
    fn names_parse_into_parent_and_ordinal() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-db-12"), Some(("my-db", 12)));
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(parent_and_ordinal("web-x"), None);
        assert_eq!(parent_and_ordinal("web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_in_order() {
        let cluster = TestCluster::new();
        let set = cluster.create(STORAGE_KEY, stateful_set(3));
        let controller = StatefulSetController;

        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"]);
        let pod = cluster.get("core/pods", &key("web-0")).unwrap();
        assert_eq!(pod["spec"]["hostname"], "web-0");
        assert_eq!(pod["spec"]["subdomain"], "nginx");
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[POD_NAME_LABEL], "web-0");
        assert_eq!(labels[POD_INDEX_LABEL], "0");
        let revision = str_of(&labels[REVISION_LABEL]);
        assert!(revision.starts_with("web-"), "{revision}");
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["uid"],
            set["metadata"]["uid"]
        );
        assert_eq!(
            cluster.events_about("web"),
            [(
                "SuccessfulCreate".to_owned(),
                "create Pod web-0 in StatefulSet web successful".to_owned()
            )]
        );

        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"], "web-1 waits for web-0");
        cluster.run_pod(&key("web-0"), "pi-1", "10.42.0.2", None);
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"], "running but not ready");
        cluster.set_pod_status(
            &key("web-0"),
            "Running",
            "10.42.0.2",
            Some(&seconds_ago(60)),
        );
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0", "web-1"]);

        bring_up(&cluster, &controller);
        assert_eq!(pod_names(&cluster), ["web-0", "web-1", "web-2"]);
        let up = status(&cluster);
        assert_eq!(up["replicas"], 3);
        assert_eq!(up["readyReplicas"], 3);
        assert_eq!(up["availableReplicas"], 3);
        assert_eq!(up["updatedReplicas"], 3);
        assert_eq!(up["currentReplicas"], 3);
        assert_eq!(up["currentRevision"], revision.as_str());
        assert_eq!(up["updateRevision"], revision.as_str());
        assert_eq!(up["observedGeneration"], 1);
        assert_eq!(up["collisionCount"], 0);
    }

    #[test]
    fn an_unhealthy_pod_halts_the_rest_until_it_is_back() {
        let cluster = TestCluster::new();
        cluster.create(STORAGE_KEY, stateful_set(3));
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        cluster.set_pod_status(&key("web-1"), "Failed", "", None);
        remove_pod(&cluster, "web-2");

        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"], "failed web-1 deleted");
        assert!(cluster.events_about("web").contains(&(
            "SuccessfulDelete".to_owned(),
            "delete Pod web-1 in StatefulSet web successful".to_owned()
        )));
        if cluster.get("core/pods", &key("web-1")).is_some() {
            remove_pod(&cluster, "web-1");
        }
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(
            pod_names(&cluster),
            ["web-0", "web-1"],
            "web-2 waits for web-1"
        );
    }

    #[test]
    fn scaling_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let cluster = TestCluster::new();
        cluster.create(STORAGE_KEY, stateful_set(3));
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["replicas"] = json!(1)
        });

        cluster.reconcile(&controller, &key("web"));
        let deleting: Vec<String> = cluster
            .list("core/pods", "default")
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| str_of(&p["metadata"]["name"]))
            .collect();
        assert_eq!(deleting, ["web-2"]);
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(
            pod_names(&cluster),
            ["web-0", "web-1"],
            "waits for web-2 to go"
        );
        remove_pod(&cluster, "web-2");
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"]);
    }

    #[test]
    fn parallel_creates_and_deletes_all_at_once() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(3);
        set["spec"]["podManagementPolicy"] = json!("Parallel");
        cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;

        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0", "web-1", "web-2"]);
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["replicas"] = json!(0)
        });
        cluster.reconcile(&controller, &key("web"));
        assert!(
            pod_names(&cluster).is_empty(),
            "not waiting for pending pods"
        );
    }

    #[test]
    fn ordinals_start_where_the_spec_says() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(2);
        set["spec"]["ordinals"] = json!({"start": 5});
        cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        assert_eq!(pod_names(&cluster), ["web-5", "web-6"]);
        let pod = cluster.get("core/pods", &key("web-6")).unwrap();
        assert_eq!(pod["metadata"]["labels"][POD_INDEX_LABEL], "6");
    }

    fn change_image(cluster: &TestCluster) {
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.local/app:2")
        });
    }

    /// Deletes terminating pods (as their node would) and brings the set up again.
    fn settle(cluster: &TestCluster, controller: &StatefulSetController) {
        for _ in 0..10 {
            for pod in cluster.list("core/pods", "default") {
                if !pod["metadata"]["deletionTimestamp"].is_null() {
                    remove_pod(cluster, pod["metadata"]["name"].as_str().unwrap());
                }
            }
            bring_up(cluster, controller);
        }
    }

    #[test]
    fn a_rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(3);
        set["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
        cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        let old = revision_of(&cluster, "web-0");
        change_image(&cluster);

        cluster.reconcile(&controller, &key("web"));
        let terminating: Vec<String> = cluster
            .list("core/pods", "default")
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| str_of(&p["metadata"]["name"]))
            .collect();
        assert_eq!(terminating, ["web-2"], "highest first, one at a time");
        settle(&cluster, &controller);
        let new = revision_of(&cluster, "web-2");
        assert_ne!(new, old);
        assert_eq!(revision_of(&cluster, "web-1"), new);
        assert_eq!(revision_of(&cluster, "web-0"), old, "below the partition");
        let partial = status(&cluster);
        assert_eq!(partial["updatedReplicas"], 2);
        assert_eq!(partial["currentReplicas"], 1);
        assert_eq!(partial["currentRevision"], old.as_str());
        assert_eq!(partial["updateRevision"], new.as_str());

        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(0)
        });
        settle(&cluster, &controller);
        assert_eq!(revision_of(&cluster, "web-0"), new);
        let complete = status(&cluster);
        assert_eq!(
            complete["currentRevision"],
            new.as_str(),
            "the roll completed"
        );
        assert_eq!(complete["currentReplicas"], 3);
    }

    #[test]
    fn on_delete_replaces_only_pods_someone_deleted() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(2);
        set["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        let old = revision_of(&cluster, "web-0");
        change_image(&cluster);
        settle(&cluster, &controller);
        assert_eq!(revision_of(&cluster, "web-0"), old);
        assert_eq!(revision_of(&cluster, "web-1"), old);

        remove_pod(&cluster, "web-0");
        settle(&cluster, &controller);
        assert_ne!(
            revision_of(&cluster, "web-0"),
            old,
            "recreated at the update revision"
        );
        assert_eq!(revision_of(&cluster, "web-1"), old);
        assert_eq!(
            status(&cluster)["currentRevision"],
            old.as_str(),
            "never advances by itself"
        );
    }

    fn claim(cluster: &TestCluster, name: &str) -> Option<Value> {
        cluster.get(CLAIMS, &key(name))
    }

    fn owner_kinds(claim: &Value) -> Vec<String> {
        super::super::view::owner_refs(claim)
            .into_iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect()
    }

    #[test]
    fn claims_are_made_before_their_pods_and_mounted() {
        let cluster = TestCluster::new();
        cluster.create(
            STORAGE_KEY,
            with_claims(stateful_set(2), "Retain", "Retain"),
        );
        let controller = StatefulSetController;
        cluster.reconcile(&controller, &key("web"));
        let www = claim(&cluster, "www-web-0").expect("claim made");
        assert_eq!(www["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(www["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert!(owner_kinds(&www).is_empty(), "Retain: nobody owns it");
        let pod = cluster.get("core/pods", &key("web-0")).unwrap();
        assert_eq!(
            pod["spec"]["volumes"][0],
            json!({"name": "www", "persistentVolumeClaim": {"claimName": "www-web-0"}})
        );
        assert!(cluster.events_about("web").contains(&(
            "SuccessfulCreate".to_owned(),
            "create Claim www-web-0 Pod web-0 in StatefulSet web success".to_owned()
        )));
        assert!(
            claim(&cluster, "www-web-1").is_none(),
            "not before its pod's turn"
        );
    }

    #[test]
    fn retention_policy_sets_the_claims_owners() {
        let cluster = TestCluster::new();
        let set = cluster.create(
            STORAGE_KEY,
            with_claims(stateful_set(2), "Delete", "Delete"),
        );
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        assert_eq!(
            owner_kinds(&claim(&cluster, "www-web-1").unwrap()),
            ["StatefulSet/web"]
        );
        assert_eq!(
            claim(&cluster, "www-web-1").unwrap()["metadata"]["ownerReferences"][0]["uid"],
            set["metadata"]["uid"]
        );

        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["replicas"] = json!(1)
        });
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(
            owner_kinds(&claim(&cluster, "www-web-1").unwrap()),
            ["Pod/web-1"],
            "scaled away: the pod owns it, so it goes with the pod"
        );
        assert_eq!(
            owner_kinds(&claim(&cluster, "www-web-0").unwrap()),
            ["StatefulSet/web"]
        );

        // Scaling back up before the collector ran: the claim is stale, the pod waits.
        remove_pod(&cluster, "web-1");
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["replicas"] = json!(2)
        });
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"]);
        cluster.reconcile(
            &super::super::gc::GarbageCollector,
            &key(&str_of(
                &claim(&cluster, "www-web-1").unwrap()["metadata"]["ownerReferences"][0]["uid"],
            )),
        );
        // The claim's pvc-protection finalizer goes once no pod uses it.
        cluster.reconcile(&super::super::volumes::VolumeController, &key("www-web-1"));
        assert!(
            claim(&cluster, "www-web-1").is_none(),
            "collected with its pod"
        );
        bring_up(&cluster, &controller);
        assert_eq!(pod_names(&cluster), ["web-0", "web-1"]);
        assert_eq!(
            owner_kinds(&claim(&cluster, "www-web-1").unwrap()),
            ["StatefulSet/web"]
        );
    }

    #[test]
    fn retained_claims_outlive_scale_down() {
        let cluster = TestCluster::new();
        cluster.create(
            STORAGE_KEY,
            with_claims(stateful_set(2), "Retain", "Retain"),
        );
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["replicas"] = json!(1)
        });
        settle(&cluster, &controller);
        assert_eq!(pod_names(&cluster), ["web-0"]);
        assert!(owner_kinds(&claim(&cluster, "www-web-1").unwrap()).is_empty());
    }

    fn revisions(cluster: &TestCluster) -> Vec<(i64, String)> {
        let mut revisions: Vec<(i64, String)> = cluster
            .list("apps/controllerrevisions", "default")
            .iter()
            .map(|r| {
                (
                    r["revision"].as_i64().unwrap(),
                    str_of(&r["metadata"]["name"]),
                )
            })
            .collect();
        revisions.sort();
        revisions
    }

    #[test]
    fn revisions_are_kept_renumbered_on_undo_and_pruned() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(1);
        set["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "first"});
        let set = cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        let first = revision_of(&cluster, "web-0");
        let revision = cluster
            .get("apps/controllerrevisions", &key(&first))
            .unwrap();
        assert_eq!(revision["revision"], 1);
        assert_eq!(
            revision["metadata"]["labels"]["app"], "web",
            "the selector finds it"
        );
        assert!(revision["metadata"]["labels"]["controller.kubernetes.io/hash"].is_string());
        assert_eq!(
            revision["metadata"]["annotations"]["kubernetes.io/change-cause"],
            "first"
        );
        assert_eq!(
            revision["metadata"]["ownerReferences"][0]["uid"],
            set["metadata"]["uid"]
        );
        assert_eq!(revision["data"]["spec"]["template"]["$patch"], "replace");

        change_image(&cluster);
        settle(&cluster, &controller);
        let second = revision_of(&cluster, "web-0");
        assert_eq!(
            revisions(&cluster),
            [(1, first.clone()), (2, second.clone())]
        );

        // `kubectl rollout undo`: the first revision's data as a strategic merge patch.
        let current = cluster.get(STORAGE_KEY, &key("web")).unwrap();
        let undone = crate::patch::apply_strategic_merge_patch(
            &current,
            &revision["data"],
            "apps",
            "StatefulSet",
        )
        .unwrap();
        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"] = undone["spec"].clone()
        });
        settle(&cluster, &controller);
        assert_eq!(
            revision_of(&cluster, "web-0"),
            first,
            "back on the first template"
        );
        assert_eq!(
            revisions(&cluster),
            [(2, second.clone()), (3, first.clone())],
            "renumbered, not copied"
        );

        cluster.update(STORAGE_KEY, &key("web"), |s| {
            s["spec"]["revisionHistoryLimit"] = json!(0)
        });
        settle(&cluster, &controller);
        assert_eq!(
            revisions(&cluster),
            [(3, first)],
            "only the live one is left"
        );
    }

    #[test]
    fn deleting_the_set_collects_its_pods_and_revisions() {
        let cluster = TestCluster::new();
        let set = cluster.create(STORAGE_KEY, stateful_set(2));
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        assert_eq!(revisions(&cluster).len(), 1);
        cluster.delete(STORAGE_KEY, &key("web"), &DeleteOptions::default());
        let uid = str_of(&set["metadata"]["uid"]);
        cluster.reconcile(&super::super::gc::GarbageCollector, &key(&uid));
        assert!(pod_names(&cluster).is_empty());
        assert!(revisions(&cluster).is_empty());
    }

    #[test]
    fn a_relabelled_pod_gets_its_identity_back() {
        let cluster = TestCluster::new();
        cluster.create(STORAGE_KEY, stateful_set(1));
        let controller = StatefulSetController;
        bring_up(&cluster, &controller);
        cluster.update("core/pods", &key("web-0"), |p| {
            p["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(POD_NAME_LABEL);
        });
        cluster.reconcile(&controller, &key("web"));
        let pod = cluster.get("core/pods", &key("web-0")).unwrap();
        assert_eq!(pod["metadata"]["labels"][POD_NAME_LABEL], "web-0");
        assert!(cluster.events_about("web").contains(&(
            "SuccessfulUpdate".to_owned(),
            "update Pod web-0 in StatefulSet web successful".to_owned()
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn min_ready_seconds_holds_the_next_pod_and_requeues() {
        let cluster = TestCluster::new();
        let mut set = stateful_set(2);
        set["spec"]["minReadySeconds"] = json!(10);
        cluster.create(STORAGE_KEY, set);
        let controller = StatefulSetController;
        cluster.reconcile(&controller, &key("web"));
        cluster.run_pod(&key("web-0"), "pi-1", "10.42.0.2", Some(&seconds_ago(0)));
        let action = cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0"]);
        assert_eq!(action, Action::RequeueAfter(Duration::from_secs(11)));
        assert_eq!(status(&cluster)["availableReplicas"], 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(pod_names(&cluster), ["web-0", "web-1"]);
        assert_eq!(status(&cluster)["availableReplicas"], 1);
    }
}
