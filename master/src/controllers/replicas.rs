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
    // Ready times rank only ready pods (one without a time first); when a pod stopped being
    // ready says nothing, its restarts do.
    let ready_rank = |p: &PodInfo| match (p.ready, p.ready_since) {
        (true, Some(since)) => Reverse(since),
        (true, None) => Reverse(i64::MAX),
        (false, _) => Reverse(0),
    };
    pods.sort_by_key(|p| {
        (
            !p.node.is_empty(),
            phase_rank(p),
            p.ready,
            ready_rank(p),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::{self, DeleteOptions};
    use crate::controllers::testing::{bare_pod, key, pod_spec, seconds_ago, TestCluster};

    fn replica_set(replicas: i64) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "front"}},
                    "spec": pod_spec(),
                },
            },
        })
    }

    fn scale(cluster: &TestCluster, replicas: i64) {
        cluster.update("apps/replicasets", &key("web"), |rs| {
            rs["spec"]["replicas"] = json!(replicas)
        });
    }

    fn names(pods: &[Value]) -> Vec<String> {
        let mut names: Vec<String> = pods
            .iter()
            .map(|p| str_of(&p["metadata"]["name"]))
            .collect();
        names.sort();
        names
    }

    fn str_of(value: &Value) -> String {
        value.as_str().unwrap_or_default().to_owned()
    }

    fn rs_status(cluster: &TestCluster) -> Value {
        cluster.get("apps/replicasets", &key("web")).unwrap()["status"].clone()
    }

    #[test]
    fn scaling_up_creates_the_missing_pods_from_the_template() {
        let cluster = TestCluster::new();
        let rs = cluster.create("apps/replicasets", replica_set(3));
        let controller = ReplicaController::replica_sets();

        let action = cluster.reconcile(&controller, &key("web"));
        let pods = cluster.live_pods();
        assert_eq!(pods.len(), 3);
        for pod in &pods {
            let name = str_of(&pod["metadata"]["name"]);
            assert_eq!(pod["metadata"]["generateName"], "web-");
            assert!(
                name.starts_with("web-") && name.len() == "web-".len() + 5,
                "{name}"
            );
            assert_eq!(
                pod["metadata"]["labels"],
                json!({"app": "web", "tier": "front"})
            );
            assert_eq!(
                pod["metadata"]["ownerReferences"],
                json!([{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": rs["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
                }])
            );
            assert_eq!(
                pod["spec"]["containers"][0]["image"],
                "registry.local/app:1"
            );
        }
        let mut created = names(&pods);
        created.dedup();
        assert_eq!(created.len(), 3, "generated names differ");
        let events = cluster.events_about("web");
        for name in &created {
            assert!(
                events.contains(&("SuccessfulCreate".into(), format!("Created pod: {name}"))),
                "{events:?}"
            );
        }
        assert_eq!(
            action,
            Action::RequeueAfter(Duration::from_millis(10)),
            "short of replicas when it looked: look again"
        );

        assert_eq!(cluster.reconcile(&controller, &key("web")), Action::Done);
        assert_eq!(
            names(&cluster.live_pods()),
            created,
            "nothing more to create"
        );
        let status = rs_status(&cluster);
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["fullyLabeledReplicas"], 3);
        assert_eq!(status["readyReplicas"], 0);
        assert_eq!(status["availableReplicas"], 0);
        assert_eq!(status["observedGeneration"], 1);
    }

    #[test]
    fn a_replication_controller_without_a_selector_uses_its_template_labels() {
        let cluster = TestCluster::new();
        let mut rc = replica_set(2);
        rc["spec"]["selector"] = Value::Null;
        let rc = cluster.create("core/replicationcontrollers", rc);
        let controller = ReplicaController::replication_controllers();
        cluster.reconcile(&controller, &key("web"));
        let pods = cluster.live_pods();
        assert_eq!(pods.len(), 2);
        assert!(pods.iter().all(|p| {
            p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController"
                && p["metadata"]["ownerReferences"][0]["uid"] == rc["metadata"]["uid"]
        }));
        cluster.reconcile(&controller, &key("web"));
        let status = cluster
            .get("core/replicationcontrollers", &key("web"))
            .unwrap()["status"]
            .clone();
        assert_eq!(status["replicas"], 2);
    }

    #[test]
    fn scaling_down_deletes_unscheduled_then_pending_then_not_ready_then_newly_ready_pods() {
        let cluster = TestCluster::new();
        cluster.create("apps/replicasets", replica_set(5));
        let controller = ReplicaController::replica_sets();
        cluster.reconcile(&controller, &key("web"));
        let pods: Vec<Key> = cluster.live_pods().iter().map(key_of).collect();
        let [unscheduled, pending, not_ready, ready_lately, ready_long] = &pods[..] else {
            panic!("five pods: {pods:?}");
        };
        objects::bind_pod(cluster.api(), "default", &pending.1, "pi-1").unwrap();
        cluster.run_pod(not_ready, "pi-1", "10.42.0.3", None);
        cluster.run_pod(ready_lately, "pi-1", "10.42.0.4", Some(&seconds_ago(60)));
        cluster.run_pod(ready_long, "pi-1", "10.42.0.5", Some(&seconds_ago(3600)));
        // Restarts, the next criterion, point the other way each time: only the state ranks.
        for (pod, restarts) in [(pending, 3), (not_ready, 5), (ready_long, 7)] {
            cluster.update_status("core/pods", pod, |p| {
                p["status"]["containerStatuses"] =
                    json!([{"name": "app", "restartCount": restarts}])
            });
        }
        let live = |cluster: &TestCluster| -> Vec<Key> {
            let mut live: Vec<Key> = cluster.live_pods().iter().map(key_of).collect();
            live.sort();
            live
        };

        let mut expected = pods.clone();
        for (replicas, victim) in [
            (4, unscheduled),
            (3, pending),
            (2, not_ready),
            (1, ready_lately),
        ] {
            scale(&cluster, replicas);
            cluster.reconcile(&controller, &key("web"));
            expected.retain(|p| p != victim);
            let mut sorted = expected.clone();
            sorted.sort();
            assert_eq!(
                live(&cluster),
                sorted,
                "scaled to {replicas}: {victim:?} goes"
            );
            assert!(cluster.events_about("web").contains(&(
                "SuccessfulDelete".into(),
                format!("Deleted pod: {}", victim.1)
            )));
        }
        assert!(
            cluster.get("core/pods", unscheduled).is_none(),
            "a pod on no node goes at once"
        );
        assert_eq!(
            cluster.get("core/pods", not_ready).unwrap()["metadata"]["deletionGracePeriodSeconds"],
            30,
            "a pod on a node is given its grace period"
        );
        assert_eq!(rs_status(&cluster)["observedGeneration"], 5);
    }

    #[test]
    fn ready_times_rank_only_ready_pods() {
        let pod = |name: &str, ready: &str, since: Option<&str>, restarts: i64| {
            let mut condition = json!({"type": "Ready", "status": ready});
            if let Some(since) = since {
                condition["lastTransitionTime"] = json!(since);
            }
            Arc::new(PodInfo::from_object(&json!({
                "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": "pi-1"},
                "status": {"phase": "Running", "conditions": [condition],
                           "containerStatuses": [{"name": "app", "restartCount": restarts}]},
            })))
        };
        let order = |mut pods: Vec<Arc<PodInfo>>| {
            deletion_order(&mut pods);
            pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            order(vec![
                pod("unready-lately", "False", Some("2026-01-01T02:00:00Z"), 0),
                pod("crashing", "False", Some("2026-01-01T01:00:00Z"), 3),
            ]),
            ["crashing", "unready-lately"],
            "between pods not ready, restarts decide"
        );
        assert_eq!(
            order(vec![
                pod("ready-long", "True", Some("2026-01-01T01:00:00Z"), 0),
                pod("ready-lately", "True", Some("2026-01-01T02:00:00Z"), 0),
                pod("ready-when", "True", None, 0),
            ]),
            ["ready-when", "ready-lately", "ready-long"],
            "no ready time < less time < more time"
        );
    }

    #[test]
    fn orphans_that_match_are_adopted_and_pods_relabelled_away_are_released() {
        let cluster = TestCluster::new();
        let stray = cluster.create(
            "core/pods",
            bare_pod("stray", json!({"app": "web", "tier": "front"})),
        );
        cluster.create("core/pods", bare_pod("db", json!({"app": "db"})));
        let mut taken = bare_pod("taken", json!({"app": "web"}));
        taken["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "other", "uid": "0b3c-other", "controller": true}]);
        cluster.create("core/pods", taken);
        let mut deleting = bare_pod("leaving", json!({"app": "web"}));
        deleting["metadata"]["finalizers"] = json!(["example.com/hold"]);
        cluster.create("core/pods", deleting);
        cluster.delete("core/pods", &key("leaving"), &DeleteOptions::default());
        let rs = cluster.create("apps/replicasets", replica_set(2));
        let uid = rs["metadata"]["uid"].clone();
        let controller = ReplicaController::replica_sets();

        cluster.reconcile(&controller, &key("web"));
        let owner_uids = |name: &str| -> Vec<Value> {
            cluster.get("core/pods", &key(name)).unwrap()["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["uid"].clone())
                .collect()
        };
        assert_eq!(owner_uids("stray"), vec![uid.clone()], "adopted");
        assert_eq!(
            cluster.get("core/pods", &key("stray")).unwrap()["metadata"]["uid"],
            stray["metadata"]["uid"],
            "adopted, not replaced"
        );
        assert!(owner_uids("db").is_empty(), "labels do not match");
        assert_eq!(
            owner_uids("taken"),
            [json!("0b3c-other")],
            "has a controller"
        );
        assert!(owner_uids("leaving").is_empty(), "being deleted");
        let ours = |cluster: &TestCluster| -> Vec<String> {
            let pods: Vec<Value> = cluster
                .live_pods()
                .into_iter()
                .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid)
                .collect();
            names(&pods)
        };
        let before = ours(&cluster);
        assert_eq!(before.len(), 2, "the orphan and one new pod: {before:?}");
        assert!(before.contains(&"stray".to_owned()));

        // Taking a pod out for debugging: it is let go and replaced.
        cluster.update("core/pods", &key("stray"), |pod| {
            pod["metadata"]["labels"]["app"] = json!("debug")
        });
        cluster.reconcile(&controller, &key("web"));
        assert!(owner_uids("stray").is_empty(), "released");
        assert!(
            cluster.get("core/pods", &key("stray")).is_some(),
            "not deleted"
        );
        let after = ours(&cluster);
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(!after.contains(&"stray".to_owned()));
    }

    #[test]
    fn a_replica_set_being_deleted_neither_adopts_nor_creates() {
        let cluster = TestCluster::new();
        cluster.create("core/pods", bare_pod("stray", json!({"app": "web"})));
        let mut rs = replica_set(3);
        rs["metadata"]["finalizers"] = json!(["example.com/hold"]);
        cluster.create("apps/replicasets", rs);
        cluster.delete("apps/replicasets", &key("web"), &DeleteOptions::default());
        cluster.reconcile(&ReplicaController::replica_sets(), &key("web"));
        let pods = cluster.live_pods();
        assert_eq!(names(&pods), ["stray"]);
        assert!(pods[0]["metadata"]["ownerReferences"].is_null());
    }

    #[tokio::test(start_paused = true)]
    async fn status_counts_ready_available_and_fully_labelled_pods() {
        let cluster = TestCluster::new();
        cluster.create(
            "core/pods",
            bare_pod("partly-labelled", json!({"app": "web"})),
        );
        let mut rs = replica_set(4);
        rs["spec"]["minReadySeconds"] = json!(30);
        cluster.create("apps/replicasets", rs);
        let controller = ReplicaController::replica_sets();
        cluster.reconcile(&controller, &key("web"));
        let mut pods: Vec<Key> = cluster.live_pods().iter().map(key_of).collect();
        pods.retain(|k| k.1 != "partly-labelled");
        cluster.run_pod(
            &key("partly-labelled"),
            "pi-1",
            "10.42.0.2",
            Some(&seconds_ago(300)),
        );
        cluster.run_pod(&pods[0], "pi-1", "10.42.0.3", Some(&seconds_ago(30)));
        cluster.run_pod(&pods[1], "pi-1", "10.42.0.4", Some(&seconds_ago(10)));
        cluster.run_pod(&pods[2], "pi-1", "10.42.0.5", None);
        cluster.update("apps/replicasets", &key("web"), |rs| {
            rs["spec"]["template"]["metadata"]["annotations"] = json!({"note": "v2"})
        });

        let action = cluster.reconcile(&controller, &key("web"));
        let status = rs_status(&cluster);
        assert_eq!(status["replicas"], 4);
        assert_eq!(status["fullyLabeledReplicas"], 3, "one lacks tier=front");
        assert_eq!(status["readyReplicas"], 3);
        assert_eq!(status["availableReplicas"], 2, "ready for minReadySeconds");
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(
            action,
            Action::RequeueAfter(Duration::from_secs(21)),
            "when the pod ready for 10 s of 30 becomes available"
        );

        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(cluster.reconcile(&controller, &key("web")), Action::Done);
        assert_eq!(rs_status(&cluster)["availableReplicas"], 3);
    }

    #[test]
    fn a_refused_create_is_reported_and_retried() {
        let cluster = TestCluster::new();
        cluster.create(
            "core/resourcequotas",
            json!({"metadata": {"name": "pods", "namespace": "default"}, "spec": {"hard": {"pods": "2"}}}),
        );
        cluster.create("apps/replicasets", replica_set(3));
        let controller = ReplicaController::replica_sets();
        let action = cluster.reconcile(&controller, &key("web"));
        assert_eq!(action, Action::RequeueAfter(Duration::from_secs(5)));
        assert_eq!(cluster.live_pods().len(), 2);
        let failure = super::super::condition(
            &cluster.get("apps/replicasets", &key("web")).unwrap(),
            "ReplicaFailure",
        )
        .cloned()
        .expect("a ReplicaFailure condition");
        assert_eq!(failure["status"], "True");
        assert_eq!(failure["reason"], "FailedCreate");
        let message = failure["message"].as_str().unwrap();
        assert!(message.contains("exceeded quota: pods"), "{message}");
        assert!(cluster
            .events_about("web")
            .iter()
            .any(|(reason, message)| reason == "FailedCreate"
                && message.starts_with("Error creating: pods \"web-")));

        scale(&cluster, 2);
        cluster.reconcile(&controller, &key("web"));
        let rs = cluster.get("apps/replicasets", &key("web")).unwrap();
        assert!(
            super::super::condition(&rs, "ReplicaFailure").is_none(),
            "cleared once the set is whole: {rs}"
        );
    }
}
