//! Garbage collection through ownerReferences, and namespace deletion.
//!
//! When an owner goes (background propagation) its dependents are deleted; a dependent with
//! another live owner only loses its reference. An owner deleted with
//! `propagationPolicy: Foreground` waits, marked with the `foregroundDeletion` finalizer,
//! until the dependents that block it (`blockOwnerDeletion`) are gone. Orphan propagation is
//! done by the API server before the owner goes. Dependents whose owner vanished while the
//! master was down are found by the resync.

use serde_json::Value;

use super::view::{self, Key, View, CACHED};
use super::{key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::{namespaced_storage_keys, DeleteOptions};
use crate::store::{Change, EventType};

/// The finalizer an owner carries while its dependents are deleted in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";

/// The garbage collector. Its keys are (namespace, owner uid).
pub struct GarbageCollector;

fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// Whether changes of this resource can matter to ownership (not the high-churn bookkeeping).
fn may_own(resource: &str) -> bool {
    !matches!(
        resource,
        "core/events" | "coordination.k8s.io/leases" | "events.k8s.io/events"
    )
}

/// The owner references of a dependent: from the view for pods and the kinds it holds (no
/// read per pod of a large owner), from the store for the rest. `None` once it is gone.
fn owners_of(
    ctx: &Context,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<view::OwnerRef>>, ApiError> {
    if resource == "core/pods" {
        let key = (namespace.to_owned(), name.to_owned());
        return Ok(ctx.view().pods.get(&key).map(|p| p.owners.clone()));
    }
    if CACHED.contains(&resource) {
        return Ok(ctx
            .view()
            .get(resource, namespace, name)
            .map(|o| view::owner_refs(o)));
    }
    Ok(ctx
        .get(resource, namespace, name)?
        .map(|o| view::owner_refs(&o)))
}

impl GarbageCollector {
    /// Every dependent of `uid`: (storage key, key).
    fn dependents(
        &self,
        ctx: &Context,
        namespace: &str,
        uid: &str,
    ) -> Result<Vec<(String, Key)>, ApiError> {
        let mut found: Vec<(String, Key)> = {
            let view = ctx.view();
            view.pods_owned_by(uid)
                .map(|p| {
                    (
                        "core/pods".to_owned(),
                        (p.namespace.clone(), p.name.clone()),
                    )
                })
                .chain(
                    view.dependents
                        .get(uid)
                        .into_iter()
                        .flatten()
                        .map(|(resource, key)| ((*resource).to_owned(), key.clone())),
                )
                .collect()
        };
        if namespace.is_empty() {
            return Ok(found);
        }
        // Kinds the view does not hold (config maps, secrets, services' slices...).
        let owned_by = |object: &Value| {
            object["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        };
        for resource in namespaced_storage_keys() {
            let storage_key = resource.storage_key();
            if storage_key == "core/pods"
                || !may_own(&storage_key)
                || CACHED.contains(&storage_key.as_str())
            {
                continue;
            }
            let page =
                ctx.shared
                    .api
                    .store
                    .list(&storage_key, Some(namespace), None, 0, &owned_by)?;
            found.extend(page.items.iter().map(|o| (storage_key.clone(), key_of(o))));
        }
        Ok(found)
    }
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        if !may_own(&change.resource) {
            return Vec::new();
        }
        let uid = view::str_of(&change.object["metadata"]["uid"]);
        let mut keys = Vec::new();
        let foreground = change.event != EventType::Deleted
            && has_finalizer(&change.object, FOREGROUND)
            && !change.object["metadata"]["deletionTimestamp"].is_null();
        let has_dependents =
            view.pods_by_owner.contains_key(&uid) || view.dependents.contains_key(&uid);
        let gone = change.event == EventType::Deleted
            && (has_dependents || change.resource != "core/pods");
        if foreground || gone {
            keys.push((change.namespace.clone(), uid));
        }
        // A dependent created with an owner that is already gone.
        if change.event == EventType::Added {
            for owner in view::owner_refs(&change.object) {
                if view.owner_exists(&change.namespace, &owner) == Some(false) {
                    keys.push((change.namespace.clone(), owner.uid));
                }
            }
        }
        keys
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        let mut keys = Vec::new();
        for pod in view.pods.values() {
            for owner in &pod.owners {
                if view.owner_exists(&pod.namespace, owner) == Some(false) {
                    keys.push((pod.namespace.clone(), owner.uid.clone()));
                }
            }
        }
        for resource in CACHED {
            for object in view.list(resource) {
                let namespace = view::str_of(&object["metadata"]["namespace"]);
                for owner in view::owner_refs(object) {
                    if view.owner_exists(&namespace, &owner) == Some(false) {
                        keys.push((namespace.clone(), owner.uid));
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let (namespace, uid) = key;
        let owner = {
            let view = ctx.view();
            view.uids.get(uid).and_then(|(resource, key)| {
                view.get(resource, &key.0, &key.1)
                    .map(|o| (*resource, o.clone()))
            })
        };
        let foreground = match &owner {
            Some((_, object))
                if !object["metadata"]["deletionTimestamp"].is_null()
                    && has_finalizer(object, FOREGROUND) =>
            {
                true
            }
            Some(_) => return Ok(Action::Done),
            None => {
                // Not a kind the view holds: make sure it is really gone before collecting.
                if ctx.view().pods.values().any(|p| p.uid == *uid) {
                    return Ok(Action::Done);
                }
                false
            }
        };
        let dependents = self.dependents(ctx, namespace, uid)?;
        for (resource, (ns, name)) in &dependents {
            let Some(owners) = owners_of(ctx, resource, ns, name)? else {
                continue;
            };
            // A dependent with another live owner only loses the reference to this one.
            let other_owner_alive = {
                let view = ctx.view();
                owners
                    .iter()
                    .any(|r| r.uid != *uid && view.owner_exists(ns, r) != Some(false))
            };
            if other_owner_alive {
                ctx.update(resource, ns, name, |o| {
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != uid.as_str());
                    }
                    Ok(())
                })?;
                continue;
            }
            let propagation = if foreground {
                "Foreground"
            } else {
                "Background"
            };
            ctx.delete(
                resource,
                ns,
                name,
                &DeleteOptions {
                    propagation: Some(propagation.into()),
                    ..DeleteOptions::default()
                },
            )?;
        }
        if let Some((resource, object)) = owner {
            // Foreground: the owner goes once no dependent that blocks it is left (upstream
            // waits only for references with blockOwnerDeletion).
            let mut blocked = false;
            for (resource, (ns, name)) in self.dependents(ctx, namespace, uid)? {
                blocked |= owners_of(ctx, &resource, &ns, &name)?.is_some_and(|owners| {
                    owners
                        .iter()
                        .any(|r| r.uid == *uid && r.block_owner_deletion)
                });
            }
            if !blocked {
                let (ns, name) = key_of(&object);
                match ctx.update(resource, &ns, &name, |o| {
                    if let Some(finalizers) = o["metadata"]["finalizers"].as_array_mut() {
                        finalizers.retain(|f| f != FOREGROUND);
                    }
                    Ok(())
                }) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
                return Ok(Action::Done);
            }
            return Ok(Action::RequeueAfter(std::time::Duration::from_millis(500)));
        }
        Ok(Action::Done)
    }
}

/// Empties namespaces being deleted, then lets them go.
pub struct NamespaceController;

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace-controller"
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        if change.resource == "core/namespaces"
            && change.event != EventType::Deleted
            && !change.object["metadata"]["deletionTimestamp"].is_null()
        {
            return vec![(String::new(), change.name.clone())];
        }
        Vec::new()
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("core/namespaces")
            .filter(|ns| !ns["metadata"]["deletionTimestamp"].is_null())
            .map(|ns| key_of(ns))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        crate::lifecycle::finalize_namespace(&ctx.shared.api.store, &key.1)?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::controllers::testing::{bare_pod, key, pod_spec, seconds_ago, TestCluster};

    fn replica_set(cluster: &TestCluster, name: &str) -> Value {
        cluster.create(
            "apps/replicasets",
            json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec()}},
            }),
        )
    }

    fn reference(owner: &Value, controller: bool, block: bool) -> Value {
        json!({
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": controller, "blockOwnerDeletion": block,
        })
    }

    fn owned_pod(cluster: &TestCluster, name: &str, owners: Value) -> Value {
        let mut pod = bare_pod(name, json!({"app": "web"}));
        pod["metadata"]["ownerReferences"] = owners;
        cluster.create("core/pods", pod)
    }

    fn owned_config_map(cluster: &TestCluster, name: &str, owners: Value) -> Value {
        cluster.create(
            "core/configmaps",
            json!({"metadata": {"name": name, "namespace": "default", "ownerReferences": owners}}),
        )
    }

    fn owner_key(owner: &Value) -> Key {
        (
            "default".to_owned(),
            owner["metadata"]["uid"].as_str().unwrap().to_owned(),
        )
    }

    fn is_deleting(object: &Value) -> bool {
        !object["metadata"]["deletionTimestamp"].is_null()
    }

    fn foreground() -> DeleteOptions {
        DeleteOptions {
            propagation: Some("Foreground".into()),
            ..DeleteOptions::default()
        }
    }

    #[test]
    fn dependents_of_a_deleted_owner_are_deleted_in_the_background() {
        let cluster = TestCluster::new();
        let web = replica_set(&cluster, "web");
        let api = replica_set(&cluster, "api");
        owned_pod(&cluster, "waiting", json!([reference(&web, true, true)]));
        owned_pod(&cluster, "running", json!([reference(&web, true, true)]));
        cluster.run_pod(&key("running"), "pi-1", "10.42.0.2", Some(&seconds_ago(60)));
        owned_config_map(&cluster, "settings", json!([reference(&web, false, false)]));
        owned_pod(&cluster, "other", json!([reference(&api, true, true)]));
        cluster.sync();

        cluster.delete("apps/replicasets", &key("web"), &DeleteOptions::default());
        assert_eq!(cluster.queued(&GarbageCollector), [owner_key(&web)]);
        assert_eq!(
            cluster.reconcile(&GarbageCollector, &owner_key(&web)),
            Action::Done
        );
        assert!(cluster.get("core/pods", &key("waiting")).is_none());
        assert!(
            is_deleting(&cluster.get("core/pods", &key("running")).unwrap()),
            "a pod on a node is given its grace period"
        );
        assert!(
            cluster.get("core/configmaps", &key("settings")).is_none(),
            "kinds the view does not hold too"
        );
        assert!(!is_deleting(
            &cluster.get("core/pods", &key("other")).unwrap()
        ));
    }

    #[test]
    fn a_dependent_with_another_live_owner_only_loses_the_reference() {
        let cluster = TestCluster::new();
        let web = replica_set(&cluster, "web");
        let api = replica_set(&cluster, "api");
        let both = json!([reference(&web, true, true), reference(&api, false, false)]);
        owned_pod(&cluster, "shared", both.clone());
        owned_config_map(&cluster, "settings", both);

        cluster.delete("apps/replicasets", &key("web"), &DeleteOptions::default());
        cluster.reconcile(&GarbageCollector, &owner_key(&web));
        for (resource, name) in [("core/pods", "shared"), ("core/configmaps", "settings")] {
            let object = cluster
                .get(resource, &key(name))
                .unwrap_or_else(|| panic!("{name} was deleted"));
            assert!(!is_deleting(&object), "{name}");
            assert_eq!(
                object["metadata"]["ownerReferences"],
                json!([reference(&api, false, false)]),
                "{name}"
            );
        }
    }

    #[test]
    fn orphan_propagation_releases_the_dependents() {
        let cluster = TestCluster::new();
        let web = replica_set(&cluster, "web");
        owned_pod(&cluster, "a", json!([reference(&web, true, true)]));
        owned_config_map(&cluster, "settings", json!([reference(&web, false, false)]));
        cluster.sync();

        cluster.delete(
            "apps/replicasets",
            &key("web"),
            &DeleteOptions {
                propagation: Some("Orphan".into()),
                ..DeleteOptions::default()
            },
        );
        assert!(cluster.get("apps/replicasets", &key("web")).is_none());
        for key in cluster.queued(&GarbageCollector) {
            cluster.reconcile(&GarbageCollector, &key);
        }
        let pod = cluster.get("core/pods", &key("a")).expect("the pod stays");
        assert!(!is_deleting(&pod));
        // Released, with the emptied list left out as upstream omits empty fields.
        assert_eq!(pod["metadata"].get("ownerReferences"), None);
        let settings = cluster
            .get("core/configmaps", &key("settings"))
            .expect("the config map stays");
        assert_eq!(settings["metadata"].get("ownerReferences"), None);
    }

    #[test]
    fn foreground_deletion_waits_for_the_dependents_that_block_it() {
        let cluster = TestCluster::new();
        let web = replica_set(&cluster, "web");
        owned_pod(&cluster, "running", json!([reference(&web, true, true)]));
        cluster.run_pod(&key("running"), "pi-1", "10.42.0.2", Some(&seconds_ago(60)));
        cluster.create(
            "core/configmaps",
            json!({"metadata": {"name": "held", "namespace": "default",
                "ownerReferences": [reference(&web, false, false)], "finalizers": ["example.com/hold"]}}),
        );
        cluster.sync();

        cluster.delete("apps/replicasets", &key("web"), &foreground());
        let marked = cluster.get("apps/replicasets", &key("web")).unwrap();
        assert!(is_deleting(&marked));
        assert_eq!(marked["metadata"]["finalizers"], json!([FOREGROUND]));
        assert_eq!(cluster.queued(&GarbageCollector), [owner_key(&web)]);

        let action = cluster.reconcile(&GarbageCollector, &owner_key(&web));
        assert_eq!(
            action,
            Action::RequeueAfter(std::time::Duration::from_millis(500))
        );
        assert!(is_deleting(
            &cluster.get("core/pods", &key("running")).unwrap()
        ));
        assert!(is_deleting(
            &cluster.get("core/configmaps", &key("held")).unwrap()
        ));
        assert!(
            cluster.get("apps/replicasets", &key("web")).is_some(),
            "waits for its pod"
        );

        // The node finishes the pod; the config map does not block its owner.
        cluster.delete(
            "core/pods",
            &key("running"),
            &DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            },
        );
        assert_eq!(
            cluster.reconcile(&GarbageCollector, &owner_key(&web)),
            Action::Done
        );
        assert!(cluster.get("apps/replicasets", &key("web")).is_none());
        assert!(cluster.get("core/configmaps", &key("held")).is_some());
    }

    #[test]
    fn a_dependent_of_an_owner_already_gone_is_collected() {
        let cluster = TestCluster::new();
        let gone = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                          "uid": "5d1c-gone", "controller": true});
        let stray = owned_pod(&cluster, "stray", json!([gone]));
        let stray_key = ("default".to_owned(), "5d1c-gone".to_owned());
        assert_eq!(cluster.queued(&GarbageCollector), vec![stray_key.clone()]);
        assert_eq!(
            cluster.all_keys(&GarbageCollector),
            vec![stray_key.clone()],
            "and on every resync, for owners that went while the master was down"
        );
        cluster.reconcile(&GarbageCollector, &stray_key);
        assert!(cluster.get("core/pods", &key_of(&stray)).is_none());
    }
}
