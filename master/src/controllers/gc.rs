//! Garbage collection through ownerReferences, and namespace deletion.
//!
//! When an owner goes (background propagation) its dependents are deleted; an owner deleted
//! with `propagationPolicy: Foreground` waits, marked with the `foregroundDeletion` finalizer,
//! until its dependents are gone. Orphan propagation is done by the API server before the owner
//! goes. Dependents whose owner vanished while the master was down are found by the resync.

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
            let object = if resource == "core/pods" {
                None
            } else {
                ctx.view().get(resource, ns, name).cloned()
            };
            // A dependent with another live owner only loses the reference to this one.
            let other_owner_alive = object.as_deref().is_some_and(|o| {
                let view = ctx.view();
                view::owner_refs(o)
                    .iter()
                    .any(|r| r.uid != *uid && view.owner_exists(ns, r) != Some(false))
            });
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
            // Foreground: the owner goes once no dependent is left.
            let remaining = self.dependents(ctx, namespace, uid)?;
            if remaining.is_empty() {
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
