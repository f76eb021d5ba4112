//! A cluster for controller tests: a real store on a temporary SQLite file behind the API's
//! admission path, and a view fed from the store's change feed, with no threads.
//!
//! A test writes objects as a client (or the scheduler, or a node) would, runs one reconcile
//! of one controller, and looks at what it wrote. Nothing runs between two calls, so every
//! step of a controller can be checked on its own.
//!
//! While a test cluster lives, the controllers' clock on its thread is tokio's: frozen in a
//! `#[tokio::test(start_paused = true)]` test until the test calls `tokio::time::advance`,
//! and starting on a whole second, so times and delays come out exact.

use std::cell::Cell;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use serde_json::{json, Value};

use super::view::{Key, View};
use super::{events, resource_of, Action, Context, Reconciler, Shared};
use crate::api::error::ApiError;
use crate::api::objects::{self, DeleteOptions, Part};
use crate::api::ApiState;
use crate::store::{Change, Store};
use crate::{resources, ClusterSettings, HealthTimings};

thread_local! {
    /// The wall time the test clock started at, and tokio's instant then.
    static CLOCK: Cell<Option<(jiff::Timestamp, tokio::time::Instant)>> = const { Cell::new(None) };
}

/// The controllers' time on this thread, while a test cluster lives on it.
pub fn now() -> Option<jiff::Timestamp> {
    let (start, at) = CLOCK.get()?;
    let elapsed = jiff::SignedDuration::try_from(tokio::time::Instant::now() - at)
        .expect("a test runs for less than centuries");
    Some(start + elapsed)
}

/// The cluster CA certificate of test clusters (not a real certificate: only its text matters).
pub const TEST_CA_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nTUlJQnRlc3Q=\n-----END CERTIFICATE-----\n";

/// One store, one view, one temporary directory; dropped with the test.
pub struct TestCluster {
    shared: Shared,
    changes: Receiver<Arc<Change>>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// An empty cluster with the `default` namespace.
    pub fn new() -> TestCluster {
        TestCluster::with_settings(ClusterSettings::default())
    }

    /// An empty cluster with the `default` namespace and these cluster settings.
    pub fn with_settings(settings: ClusterSettings) -> TestCluster {
        let whole_second = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .expect("now is a valid time");
        CLOCK.set(Some((whole_second, tokio::time::Instant::now())));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let volatile = resources::volatile_storage_keys();
        let volatile: Vec<&str> = volatile.iter().map(String::as_str).collect();
        let store = Store::open(
            &dir.path().join("store.db"),
            &volatile,
            crate::store::DEFAULT_HISTORY_REVISIONS,
        )
        .expect("a store in the temporary directory");
        let nodes = crate::api::node_auth::NodeCredentials::load(
            dir.path(),
            TEST_CA_PEM,
            "https://127.0.0.1:6443",
        )
        .expect("node credentials in the temporary directory");
        let metrics = Arc::new(crate::metrics::MetricsRegistry::default());
        let api = ApiState {
            store: Arc::new(store),
            auth: crate::auth::AuthState::load(dir.path(), "", None)
                .expect("credentials in the temporary directory"),
            rbac: crate::rbac::Authorizer::default(),
            cluster: settings,
            allocation: Mutex::new(()),
            admission: Mutex::new(()),
            metrics: metrics.clone(),
            node_client: None,
            nodes,
        };
        let changes = api.store.follow();
        let cluster = TestCluster {
            shared: Shared {
                api: Arc::new(api),
                view: RwLock::new(View::default()),
                seen: Mutex::new(0),
                seen_changed: Condvar::new(),
                events: events::EventRecorder::default(),
                timings: HealthTimings::standard(),
                metrics,
            },
            changes,
            _dir: dir,
        };
        cluster.create("core/namespaces", json!({"metadata": {"name": "default"}}));
        cluster
    }

    /// The API state, for calls the helpers do not cover.
    pub fn api(&self) -> &ApiState {
        &self.shared.api
    }

    /// The API state shared, for async API functions that take it so.
    pub fn shared_api(&self) -> Arc<ApiState> {
        self.shared.api.clone()
    }

    /// Brings the view up to date with every committed change, as the informer does.
    pub fn sync(&self) {
        self.apply_changes(None);
    }

    /// Brings the view up to date and returns the keys the committed changes would queue for
    /// `controller`, first come first, without repeats.
    pub fn queued(&self, controller: &dyn Reconciler) -> Vec<Key> {
        self.apply_changes(Some(controller))
    }

    /// Every key `controller` would reconcile on its periodic resync, over an up-to-date view.
    pub fn all_keys(&self, controller: &dyn Reconciler) -> Vec<Key> {
        self.sync();
        controller.all_keys(&self.shared.view.read().expect("view lock"))
    }

    fn apply_changes(&self, controller: Option<&dyn Reconciler>) -> Vec<Key> {
        let mut keys = Vec::new();
        let mut view = self.shared.view.write().expect("view lock");
        while let Ok(change) = self.changes.try_recv() {
            view.apply(&change);
            for key in controller
                .map(|c| c.keys_for(&change, &view))
                .unwrap_or_default()
            {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// One reconcile of `key` by `controller` over an up-to-date view.
    pub fn try_reconcile(
        &self,
        controller: &dyn Reconciler,
        key: &Key,
    ) -> Result<Action, ApiError> {
        self.sync();
        let ctx = Context {
            shared: &self.shared,
            component: controller.name(),
            written: Cell::new(0),
        };
        let result = controller.reconcile(&ctx, key);
        self.sync();
        result
    }

    /// One reconcile that must succeed.
    pub fn reconcile(&self, controller: &dyn Reconciler, key: &Key) -> Action {
        self.try_reconcile(controller, key)
            .unwrap_or_else(|e| panic!("reconcile of {key:?} failed: {}", e.message))
    }

    /// Creates an object through admission, as a client would; `apiVersion` and `kind` may
    /// be left out.
    pub fn try_create(&self, storage_key: &str, mut object: Value) -> Result<Value, ApiError> {
        let resource = resource_of(storage_key);
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        objects::create_object(self.api(), resource, object, false)
    }

    /// Creates an object that admission must accept.
    pub fn create(&self, storage_key: &str, object: Value) -> Value {
        self.try_create(storage_key, object)
            .unwrap_or_else(|e| panic!("creating in {storage_key}: {}", e.message))
    }

    /// Changes an object (not its status) through admission.
    pub fn update(&self, storage_key: &str, key: &Key, change: impl FnOnce(&mut Value)) -> Value {
        self.write(storage_key, key, Part::Main, change)
    }

    /// Changes an object's status, as its controller or node would.
    pub fn update_status(
        &self,
        storage_key: &str,
        key: &Key,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        self.write(storage_key, key, Part::Status, change)
    }

    fn write(
        &self,
        storage_key: &str,
        key: &Key,
        part: Part,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        objects::update_object(
            self.api(),
            resource_of(storage_key),
            &key.0,
            &key.1,
            part,
            false,
            |current| {
                let mut next = current.clone();
                change(&mut next);
                Ok(next)
            },
        )
        .unwrap_or_else(|e| panic!("updating {storage_key} {key:?}: {}", e.message))
    }

    /// Deletes an object as a client would.
    pub fn delete(&self, storage_key: &str, key: &Key, options: &DeleteOptions) -> Value {
        objects::delete_object(
            self.api(),
            resource_of(storage_key),
            &key.0,
            &key.1,
            options,
        )
        .unwrap_or_else(|e| panic!("deleting {storage_key} {key:?}: {}", e.message))
    }

    /// An object as stored now.
    pub fn get(&self, storage_key: &str, key: &Key) -> Option<Value> {
        self.api()
            .store
            .get(storage_key, &key.0, &key.1)
            .expect("reading the store")
    }

    /// Every object of a kind in a namespace ("" for cluster-scoped kinds).
    pub fn list(&self, storage_key: &str, namespace: &str) -> Vec<Value> {
        let scope = (!namespace.is_empty()).then_some(namespace);
        self.api()
            .store
            .list(storage_key, scope, None, 0, &|_| true)
            .expect("listing the store")
            .items
    }

    /// The pods of the `default` namespace that are not being deleted, by name.
    pub fn live_pods(&self) -> Vec<Value> {
        self.list("core/pods", "default")
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    /// The reasons and messages of the events about an object, oldest first.
    pub fn events_about(&self, name: &str) -> Vec<(String, String)> {
        self.list("core/events", "default")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Does what the scheduler and the node do: binds the pod to `node` and reports it
    /// Running at `ip`, Ready (since `ready_since`, RFC 3339) or not.
    pub fn run_pod(&self, key: &Key, node: &str, ip: &str, ready_since: Option<&str>) -> Value {
        objects::bind_pod(self.api(), &key.0, &key.1, node)
            .unwrap_or_else(|e| panic!("binding {key:?}: {}", e.message));
        self.set_pod_status(key, "Running", ip, ready_since)
    }

    /// Sets a pod's phase, IP and Ready condition as its node reports them.
    pub fn set_pod_status(
        &self,
        key: &Key,
        phase: &str,
        ip: &str,
        ready_since: Option<&str>,
    ) -> Value {
        let ready = match ready_since {
            Some(since) => json!({"type": "Ready", "status": "True", "lastTransitionTime": since}),
            None => json!({"type": "Ready", "status": "False"}),
        };
        self.update_status("core/pods", key, |pod| {
            pod["status"]["phase"] = json!(phase);
            pod["status"]["podIP"] = json!(ip);
            pod["status"]["conditions"] = json!([ready]);
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        CLOCK.set(None);
    }
}

/// `(namespace, name)` in the `default` namespace.
pub fn key(name: &str) -> Key {
    ("default".to_owned(), name.to_owned())
}

/// A time `seconds` before now on the controllers' clock, as RFC 3339.
pub fn seconds_ago(seconds: i64) -> String {
    (super::now() - jiff::SignedDuration::from_secs(seconds)).to_string()
}

/// A minimal pod spec with one container.
pub fn pod_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "registry.local/app:1"}]})
}

/// A bare pod with labels (no owner), as `kubectl run` makes.
pub fn bare_pod(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": pod_spec(),
    })
}
