//! Root CA publisher: a `kube-root-ca.crt` config map with the cluster CA in every namespace,
//! so that pods can check the API server's certificate (upstream's `rootcacertpublisher`).
//!
//! The config map is made when a namespace appears, made again when someone deletes it, and
//! set back when its `ca.crt` or its description annotation is changed. Other keys and
//! annotations someone adds are left alone only while the CA is right: a reset writes
//! exactly `ca.crt`, as upstream does.

use serde_json::{json, Value};

use super::view::{Key, View};
use super::{Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::{Change, EventType};

/// The config map's name in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The annotation that says what the config map is for.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's description, word for word.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

const CONFIG_MAPS: &str = "core/configmaps";
const NAMESPACES: &str = "core/namespaces";

/// The root CA publisher. Its keys are `(namespace, "kube-root-ca.crt")`.
pub struct RootCaPublisher;

fn key_in(namespace: &str) -> Key {
    (namespace.to_owned(), ROOT_CA_CONFIG_MAP.to_owned())
}

fn is_active(namespace: &Value) -> bool {
    namespace["metadata"]["deletionTimestamp"].is_null()
}

/// Whether a stored config map already says what it should.
fn is_current(config_map: &Value, ca_pem: &str) -> bool {
    config_map["data"] == json!({"ca.crt": ca_pem})
        && config_map["metadata"]["annotations"][DESCRIPTION_ANNOTATION]
            .as_str()
            .is_some_and(|d| !d.is_empty())
}

impl Reconciler for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            NAMESPACES if change.event != EventType::Deleted && is_active(&change.object) => {
                vec![key_in(&change.name)]
            }
            // Upstream does not watch its own creations: an added config map is already right.
            CONFIG_MAPS
                if change.name == ROOT_CA_CONFIG_MAP && change.event != EventType::Added =>
            {
                vec![key_in(&change.namespace)]
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(NAMESPACES)
            .filter(|ns| is_active(ns))
            .filter_map(|ns| ns["metadata"]["name"].as_str().map(key_in))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let namespace = &key.0;
        let active = ctx
            .view()
            .get(NAMESPACES, "", namespace)
            .is_some_and(|ns| is_active(ns));
        if !active {
            return Ok(Action::Done);
        }
        let ca_pem = ctx.shared.api.nodes.ca_pem().to_owned();
        let Some(existing) = ctx.get(CONFIG_MAPS, namespace, ROOT_CA_CONFIG_MAP)? else {
            let config_map = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": ROOT_CA_CONFIG_MAP,
                    "namespace": namespace,
                    "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION},
                },
                "data": {"ca.crt": ca_pem},
            });
            return match ctx.create(CONFIG_MAPS, config_map) {
                // Gone or terminating since the view saw it: nothing to publish into.
                Err(e) if e.code == 404 || e.code == 403 => Ok(Action::Done),
                // Made meanwhile (by an earlier run whose write the view has not seen yet).
                Err(e) if e.code == 409 => Ok(Action::Done),
                Err(e) => Err(e),
                Ok(_) => Ok(Action::Done),
            };
        };
        if is_current(&existing, &ca_pem) {
            return Ok(Action::Done);
        }
        let result = ctx.update(CONFIG_MAPS, namespace, ROOT_CA_CONFIG_MAP, |config_map| {
            let Some(object) = config_map.as_object_mut() else {
                return Err(ApiError::internal("a stored config map is not an object"));
            };
            object.insert("data".into(), json!({"ca.crt": ca_pem}));
            let metadata = object
                .entry("metadata")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .ok_or_else(|| ApiError::internal("a stored config map has no metadata"))?;
            let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
            if !annotations.is_object() {
                *annotations = json!({});
            }
            annotations[DESCRIPTION_ANNOTATION] = json!(DESCRIPTION);
            Ok(())
        });
        match result {
            Ok(_) => Ok(Action::Done),
            // Deleted meanwhile: its deletion queues the key again.
            Err(e) if e.code == 404 => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::DeleteOptions;
    use crate::controllers::testing::{key, TestCluster, TEST_CA_PEM};

    fn published(cluster: &TestCluster, namespace: &str) -> Option<Value> {
        cluster.get(CONFIG_MAPS, &key_in(namespace))
    }

    #[tokio::test(start_paused = true)]
    async fn every_new_namespace_gets_the_ca_with_upstreams_description() {
        let cluster = TestCluster::new();
        cluster.sync();
        cluster.create(NAMESPACES, json!({"metadata": {"name": "shop"}}));
        let queued = cluster.queued(&RootCaPublisher);
        assert_eq!(queued, [key_in("shop")]);
        for key in cluster.all_keys(&RootCaPublisher) {
            cluster.reconcile(&RootCaPublisher, &key);
        }
        for namespace in ["default", "shop"] {
            let config_map = published(&cluster, namespace).expect("published");
            assert_eq!(config_map["data"], json!({"ca.crt": TEST_CA_PEM}));
            assert_eq!(
                config_map["metadata"]["annotations"][DESCRIPTION_ANNOTATION],
                DESCRIPTION
            );
        }
        assert!(
            cluster.queued(&RootCaPublisher).is_empty(),
            "its own creations need no second look"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_config_map_comes_back() {
        let cluster = TestCluster::new();
        cluster.reconcile(&RootCaPublisher, &key_in("default"));
        cluster.sync();
        cluster.delete(
            CONFIG_MAPS,
            &key(ROOT_CA_CONFIG_MAP),
            &DeleteOptions::default(),
        );
        assert_eq!(cluster.queued(&RootCaPublisher), [key_in("default")]);
        assert!(published(&cluster, "default").is_none());
        cluster.reconcile(&RootCaPublisher, &key_in("default"));
        let config_map = published(&cluster, "default").expect("published again");
        assert_eq!(config_map["data"]["ca.crt"], TEST_CA_PEM);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_ca_or_description_is_set_back_and_other_annotations_stay() {
        let cluster = TestCluster::new();
        cluster.reconcile(&RootCaPublisher, &key_in("default"));
        cluster.sync();
        cluster.update(CONFIG_MAPS, &key(ROOT_CA_CONFIG_MAP), |cm| {
            cm["data"] = json!({"ca.crt": "forged", "extra": "x"});
            cm["metadata"]["annotations"] = json!({"team": "blue"});
        });
        assert_eq!(cluster.queued(&RootCaPublisher), [key_in("default")]);
        cluster.reconcile(&RootCaPublisher, &key_in("default"));
        let config_map = published(&cluster, "default").unwrap();
        assert_eq!(config_map["data"], json!({"ca.crt": TEST_CA_PEM}));
        assert_eq!(
            config_map["metadata"]["annotations"],
            json!({"team": "blue", DESCRIPTION_ANNOTATION: DESCRIPTION})
        );
        // Right again: a second look changes nothing.
        let revision = config_map["metadata"]["resourceVersion"].clone();
        cluster.queued(&RootCaPublisher);
        cluster.reconcile(&RootCaPublisher, &key_in("default"));
        assert_eq!(
            published(&cluster, "default").unwrap()["metadata"]["resourceVersion"],
            revision
        );
    }

    #[tokio::test(start_paused = true)]
    async fn terminating_or_missing_namespaces_get_nothing() {
        let cluster = TestCluster::new();
        cluster.create(NAMESPACES, json!({"metadata": {"name": "going"}}));
        cluster.delete(
            NAMESPACES,
            &("".into(), "going".into()),
            &DeleteOptions::default(),
        );
        assert!(!cluster
            .all_keys(&RootCaPublisher)
            .contains(&key_in("going")));
        cluster.reconcile(&RootCaPublisher, &key_in("going"));
        cluster.reconcile(&RootCaPublisher, &key_in("nowhere"));
        assert!(published(&cluster, "going").is_none());
        assert!(published(&cluster, "nowhere").is_none());
    }
}
