//! The controllers and the scheduler: level-driven reconcile loops over a shared view of the cluster.
//!
//! ```text
//!   Store ──change feed──▶ informer thread ──applies──▶ View (RwLock)
//!                                 │
//!                                 └─ asks each controller which keys the change touches
//!                                        │
//!                                        ▼
//!        per-controller queue (deduplicated keys, delays, backoff) ──▶ worker thread
//!                                                                     reconcile(key)
//!                                                                     writes through the API path
//! ```
//!
//! Controllers never mutate the view; they write through the same admission path as API
//! clients ([`crate::api::objects`]), so defaults, validation and quotas apply to them too.
//! After a reconcile that wrote something, its worker waits until the view has caught up with
//! its own writes before taking the next key: that is what keeps a ReplicaSet from creating
//! the same pod twice, without upstream's "expectations" bookkeeping.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::objects::{self, DeleteOptions};
use crate::api::ApiState;
use crate::metrics::MetricsRegistry;
use crate::resources::{self, Resource};
use crate::store::Change;
use crate::HealthTimings;
use protocol::error::error_chain;

pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod csr_signing;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod loadbalancer;
pub mod local_path;
pub mod nodes;
pub mod preemption;
pub mod quota;
pub mod replicas;
pub mod root_ca;
pub mod scheduler;
pub mod statefulset;
#[cfg(test)]
pub(crate) mod testing;
pub mod ttl_after_finished;
pub mod view;
pub mod volume_binding;
pub mod volumes;

use view::{Key, View, CACHED};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes (or the periodic resync).
    Done,
    /// Look again after this long (e.g. when a pod's minReadySeconds runs out).
    RequeueAfter(Duration),
}

/// One controller: which keys a change touches, and how to move one key toward its spec.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name, as events and logs show it.
    fn name(&self) -> &'static str;
    /// How often every key is reconciled even without changes.
    fn resync_every(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// The keys a change (already applied to the view) may affect.
    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key>;
    /// Every key, for the periodic resync.
    fn all_keys(&self, view: &View) -> Vec<Key>;
    /// Looks at the world and moves one key a step toward its spec.
    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError>;
    /// How many queued keys one [`Reconciler::reconcile_batch`] takes.
    fn batch_size(&self) -> usize {
        1
    }
    /// Reconciles several keys; a controller that can share work between keys (the scheduler
    /// commits a batch of bindings at once) overrides this.
    fn reconcile_batch(&self, ctx: &Context, keys: &[Key]) -> Vec<Result<Action, ApiError>> {
        keys.iter().map(|key| self.reconcile(ctx, key)).collect()
    }
}

/// What controllers share: the API state, the view and the event recorder.
pub struct Shared {
    /// The API server's state (the store, cluster settings).
    pub api: Arc<ApiState>,
    view: RwLock<View>,
    seen: Mutex<u64>,
    seen_changed: Condvar,
    /// Records events that `kubectl describe` shows.
    pub events: events::EventRecorder,
    /// Failure detection and sync timings of the profile.
    pub timings: HealthTimings,
    /// Resource usage reported by nodes.
    pub metrics: Arc<MetricsRegistry>,
}

/// What one reconcile works with.
pub struct Context<'a> {
    /// What all controllers share.
    pub shared: &'a Shared,
    component: &'static str,
    written: Cell<u64>,
}

fn revision_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The resource of a storage key such as `apps/replicasets`.
pub fn resource_of(storage_key: &str) -> &'static Resource {
    resources::RESOURCES
        .iter()
        .find(|r| r.storage_key() == storage_key)
        .unwrap_or_else(|| panic!("unknown storage key {storage_key}"))
}

impl Context<'_> {
    /// The view, for reading.
    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        self.shared.view.read().expect("view lock")
    }

    /// Records a write made outside these helpers, so the worker waits for the view to see it.
    pub fn note_written(&self, object: &Value) {
        self.note(object);
    }

    fn note(&self, object: &Value) {
        self.written
            .set(self.written.get().max(revision_of(object)));
    }

    /// Reads an object from the store (the view may be a moment behind).
    pub fn get(
        &self,
        storage_key: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        Ok(self.shared.api.store.get(storage_key, namespace, name)?)
    }

    /// Creates an object through admission.
    pub fn create(&self, storage_key: &str, object: Value) -> Result<Value, ApiError> {
        let created =
            objects::create_object(&self.shared.api, resource_of(storage_key), object, false)?;
        self.note(&created);
        Ok(created)
    }

    /// Creates several objects of one kind in one namespace, committed together.
    pub fn create_many(
        &self,
        storage_key: &str,
        objects: Vec<Value>,
    ) -> Vec<Result<Value, ApiError>> {
        let results = objects::create_objects(&self.shared.api, resource_of(storage_key), objects);
        for created in results.iter().flatten() {
            self.note(created);
        }
        results
    }

    /// Changes an object (not its status) through admission; `change` edits a copy of the
    /// current object. Returns the stored result.
    pub fn update(
        &self,
        storage_key: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        self.write(storage_key, namespace, name, objects::Part::Main, change)
    }

    /// Changes an object's status; `change` edits a copy of the current object.
    pub fn update_status(
        &self,
        storage_key: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        self.write(storage_key, namespace, name, objects::Part::Status, change)
    }

    fn write(
        &self,
        storage_key: &str,
        namespace: &str,
        name: &str,
        part: objects::Part,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let updated = objects::update_object(
            &self.shared.api,
            resource_of(storage_key),
            namespace,
            name,
            part,
            false,
            |current| {
                let mut next = current.clone();
                change(&mut next)?;
                Ok(next)
            },
        )?;
        self.note(&updated);
        Ok(updated)
    }

    /// Deletes an object (gracefully, for pods on nodes). A missing object is not an error.
    pub fn delete(
        &self,
        storage_key: &str,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<(), ApiError> {
        match objects::delete_object(
            &self.shared.api,
            resource_of(storage_key),
            namespace,
            name,
            options,
        ) {
            Ok(last) => {
                self.note(&last);
                Ok(())
            }
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts a pod into the view as the scheduler has just placed it, before the binding is
    /// committed, so the next decision in the same batch counts it. The informer replaces it
    /// with the committed pod. Returns what the view held before.
    pub fn assume_pod(&self, key: &Key, pod: view::PodInfo) -> Option<Arc<view::PodInfo>> {
        let mut view = self.shared.view.write().expect("view lock");
        let previous = view.remove_pod(key);
        view.insert_pod(key.clone(), pod);
        previous
    }

    /// Undoes [`Context::assume_pod`] after a binding failed, unless the view moved on.
    pub fn forget_assumed(&self, key: &Key, node: &str, previous: Option<Arc<view::PodInfo>>) {
        let mut view = self.shared.view.write().expect("view lock");
        if view.pods.get(key).is_some_and(|p| p.node == node) {
            view.remove_pod(key);
            if let Some(previous) = previous {
                view.insert_pod(key.clone(), (*previous).clone());
            }
        }
    }

    /// Deletes a pod the way controllers do: gracefully when it runs on a node.
    pub fn delete_pod(&self, pod: &view::PodInfo) -> Result<(), ApiError> {
        self.delete(
            "core/pods",
            &pod.namespace,
            &pod.name,
            &DeleteOptions::default(),
        )
    }

    /// Records an event about `object` for `kubectl describe`.
    pub fn event(&self, object: &Value, kind: &str, reason: &str, message: &str) {
        if let Some(revision) = self.shared.events.record(
            &self.shared.api,
            self.component,
            object,
            kind,
            reason,
            message,
        ) {
            self.written.set(self.written.get().max(revision));
        }
    }
}

/// The longest a key waits in the queue.
const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A deduplicating work queue with delayed entries.
#[derive(Default)]
struct Queue {
    inner: Mutex<QueueInner>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueInner {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    delayed: BTreeMap<(Instant, u64), Key>,
    sequence: u64,
    failures: HashMap<Key, u32>,
}

impl Queue {
    fn add(&self, key: Key) {
        let mut inner = self.inner.lock().expect("queue lock");
        if inner.queued.insert(key.clone()) {
            inner.ready.push_back(key);
            self.wake.notify_one();
        }
    }

    fn add_after(&self, key: Key, delay: Duration) {
        // Delays come from objects (a toleration of i64::MAX seconds): capped, so that adding
        // them to the clock cannot overflow; a periodic resync comes long before anyway.
        let delay = delay.min(MAX_REQUEUE_DELAY);
        let mut inner = self.inner.lock().expect("queue lock");
        inner.sequence += 1;
        let sequence = inner.sequence;
        inner
            .delayed
            .insert((Instant::now() + delay, sequence), key);
        self.wake.notify_one();
    }

    /// Up to `max` keys, waiting for the first until `deadline`.
    fn next_batch(&self, deadline: Instant, max: usize) -> Vec<Key> {
        let Some(first) = self.next(deadline) else {
            return Vec::new();
        };
        let mut keys = vec![first];
        let mut inner = self.inner.lock().expect("queue lock");
        while keys.len() < max {
            let Some(key) = inner.ready.pop_front() else {
                break;
            };
            inner.queued.remove(&key);
            keys.push(key);
        }
        keys
    }

    /// The next key, waiting for one until `deadline`.
    fn next(&self, deadline: Instant) -> Option<Key> {
        let mut inner = self.inner.lock().expect("queue lock");
        loop {
            let now = Instant::now();
            while let Some(entry) = inner.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let key = entry.remove();
                if inner.queued.insert(key.clone()) {
                    inner.ready.push_back(key);
                }
            }
            if let Some(key) = inner.ready.pop_front() {
                inner.queued.remove(&key);
                return Some(key);
            }
            if now >= deadline {
                return None;
            }
            let mut wait_until = deadline;
            if let Some(((due, _), _)) = inner.delayed.first_key_value() {
                wait_until = wait_until.min(*due);
            }
            let (guard, _) = self
                .wake
                .wait_timeout(inner, wait_until.saturating_duration_since(now))
                .expect("queue lock");
            inner = guard;
        }
    }

    fn backoff(&self, key: &Key) -> Duration {
        let mut inner = self.inner.lock().expect("queue lock");
        let failures = inner.failures.entry(key.clone()).or_insert(0);
        *failures += 1;
        Duration::from_millis(5 << (*failures).min(12)).min(Duration::from_secs(30))
    }

    fn forget(&self, key: &Key) {
        self.inner.lock().expect("queue lock").failures.remove(key);
    }
}

/// The running controllers.
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Starts the informer, the controllers and the scheduler on their own threads.
    pub fn start(
        api: Arc<ApiState>,
        timings: HealthTimings,
        metrics: Arc<MetricsRegistry>,
    ) -> Runtime {
        let shared = Arc::new(Shared {
            api,
            view: RwLock::new(View::default()),
            seen: Mutex::new(0),
            seen_changed: Condvar::new(),
            events: events::EventRecorder::default(),
            timings,
            metrics,
        });
        let reconcilers: Vec<Arc<dyn Reconciler>> = vec![
            Arc::new(replicas::ReplicaController::replica_sets()),
            Arc::new(replicas::ReplicaController::replication_controllers()),
            Arc::new(deployment::DeploymentController),
            Arc::new(daemonset::DaemonSetController),
            Arc::new(statefulset::StatefulSetController),
            Arc::new(job::JobController),
            Arc::new(cronjob::CronJobController),
            Arc::new(ttl_after_finished::TtlAfterFinishedController),
            Arc::new(csr_signing::CsrSigningController::new(
                shared.api.auth.certificate_authority.clone(),
            )),
            Arc::new(clusterrole_aggregation::ClusterRoleAggregationController),
            Arc::new(endpoints::EndpointsController),
            Arc::new(loadbalancer::LoadBalancerController::new(
                shared.api.cluster.load_balancer_pool.clone(),
            )),
            Arc::new(gc::GarbageCollector),
            Arc::new(gc::NamespaceController),
            Arc::new(root_ca::RootCaPublisher),
            Arc::new(nodes::NodeLifecycle::new(timings)),
            Arc::new(quota::QuotaStatusController),
            Arc::new(disruption::DisruptionController),
            Arc::new(hpa::AutoscalerController::new(timings)),
            Arc::new(volumes::VolumeController),
            Arc::new(local_path::LocalPathProvisioner),
            Arc::new(scheduler::Scheduler::default()),
        ];
        let queues: Vec<Arc<Queue>> = reconcilers
            .iter()
            .map(|_| Arc::new(Queue::default()))
            .collect();
        let changes = shared.api.store.follow();
        let loaded = Arc::new((Mutex::new(false), Condvar::new()));
        {
            let shared = shared.clone();
            let pairs: Vec<_> = reconcilers
                .iter()
                .cloned()
                .zip(queues.iter().cloned())
                .collect();
            let loaded = loaded.clone();
            std::thread::Builder::new()
                .name("informer".into())
                .spawn(move || run_informer(&shared, &pairs, changes, &loaded))
                .expect("spawning the informer thread");
        }
        for (reconciler, queue) in reconcilers.into_iter().zip(queues) {
            let shared = shared.clone();
            let loaded = loaded.clone();
            std::thread::Builder::new()
                .name(reconciler.name().into())
                .spawn(move || {
                    let (lock, ready) = &*loaded;
                    let mut done = lock.lock().expect("load lock");
                    while !*done {
                        done = ready.wait(done).expect("load lock");
                    }
                    drop(done);
                    run_worker(&shared, reconciler.as_ref(), &queue)
                })
                .expect("spawning a controller thread");
        }
        Runtime { shared }
    }

    /// What the controllers share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

fn load_view(shared: &Shared) -> HashMap<&'static str, u64> {
    let store = &shared.api.store;
    let view = std::cell::RefCell::new(View::default());
    let mut loaded_at = HashMap::new();
    let now = Instant::now();
    for resource in CACHED.iter().copied().chain(["core/pods"]) {
        // Objects go into the view one at a time as they are read (the filter keeps none), so
        // loading 30,000 pods never holds 30,000 parsed objects at once.
        let page = store.list(resource, None, None, 0, &|object: &Value| {
            let key = (
                view::str_of(&object["metadata"]["namespace"]),
                view::str_of(&object["metadata"]["name"]),
            );
            let mut view = view.borrow_mut();
            if resource == "core/pods" {
                view.insert_pod(key, view::PodInfo::from_object(object));
            } else {
                if resource == "core/nodes" {
                    // Every node gets a full grace period from the master's start.
                    view.node_seen.insert(key.1.clone(), now);
                }
                view.insert_object(resource, key, Arc::new(object.clone()));
            }
            false
        });
        match page {
            Ok(page) => {
                loaded_at.insert(resource, page.revision);
                let mut view = view.borrow_mut();
                view.revision = view.revision.max(page.revision);
            }
            Err(error) => {
                tracing::error!(resource, error = %error_chain(&error), "cannot load the view");
            }
        }
    }
    let mut view = view.into_inner();
    let revision = view.revision.max(store.current_revision());
    view.revision = revision;
    *shared.view.write().expect("view lock") = view;
    *shared.seen.lock().expect("seen lock") = revision;
    shared.seen_changed.notify_all();
    loaded_at
}

fn run_informer(
    shared: &Shared,
    controllers: &[(Arc<dyn Reconciler>, Arc<Queue>)],
    changes: std::sync::mpsc::Receiver<Arc<Change>>,
    loaded: &(Mutex<bool>, Condvar),
) {
    let loaded_at = load_view(shared);
    *loaded.0.lock().expect("load lock") = true;
    loaded.1.notify_all();
    loop {
        let Ok(change) = changes.recv() else {
            return;
        };
        let stale = loaded_at
            .get(change.resource.as_str())
            .is_some_and(|at| change.revision <= *at);
        {
            let mut view = shared.view.write().expect("view lock");
            if !stale {
                view.apply(&change);
            }
            view.revision = view.revision.max(change.revision);
        }
        if !stale {
            let view = shared.view.read().expect("view lock");
            for (reconciler, queue) in controllers {
                for key in reconciler.keys_for(&change, &view) {
                    queue.add(key);
                }
            }
        }
        let mut seen = shared.seen.lock().expect("seen lock");
        *seen = (*seen).max(change.revision);
        shared.seen_changed.notify_all();
    }
}

fn run_worker(shared: &Shared, reconciler: &dyn Reconciler, queue: &Queue) {
    let every = reconciler.resync_every();
    let mut next_resync = Instant::now();
    loop {
        if Instant::now() >= next_resync {
            let keys = reconciler.all_keys(&shared.view.read().expect("view lock"));
            for key in keys {
                queue.add(key);
            }
            next_resync = Instant::now() + every;
        }
        let keys = queue.next_batch(next_resync, reconciler.batch_size());
        if keys.is_empty() {
            continue;
        }
        let ctx = Context {
            shared,
            component: reconciler.name(),
            written: Cell::new(0),
        };
        let results = reconciler.reconcile_batch(&ctx, &keys);
        for (key, result) in keys.into_iter().zip(results) {
            match result {
                Ok(Action::Done) => queue.forget(&key),
                Ok(Action::RequeueAfter(delay)) => {
                    queue.forget(&key);
                    queue.add_after(key, delay);
                }
                Err(error) if error.code == 409 => queue.add_after(key, Duration::from_millis(10)),
                Err(error) => {
                    let delay = queue.backoff(&key);
                    tracing::warn!(
                        controller = reconciler.name(),
                        namespace = key.0,
                        name = key.1,
                        error = %error.message,
                        retry_in_ms = delay.as_millis() as u64,
                        "reconcile failed"
                    );
                    queue.add_after(key, delay);
                }
            }
        }
        wait_until_seen(shared, ctx.written.get());
    }
}

/// Blocks until the view reflects `revision` (or a few seconds pass).
fn wait_until_seen(shared: &Shared, revision: u64) {
    if revision == 0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = shared.seen.lock().expect("seen lock");
    while *seen < revision {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                revision,
                "the view did not catch up with a controller's write"
            );
            return;
        }
        seen = shared
            .seen_changed
            .wait_timeout(seen, left)
            .expect("seen lock")
            .0;
    }
}

/// `metadata.name` and `metadata.namespace` of an object as a key.
pub fn key_of(object: &Value) -> Key {
    (
        view::str_of(&object["metadata"]["namespace"]),
        view::str_of(&object["metadata"]["name"]),
    )
}

/// An owner reference to `owner` marking it as the managing controller.
pub fn controller_ref(owner: &Value) -> Value {
    serde_json::json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Now, on the controllers' clock: the system's, or in a unit test tokio's (paused) clock.
fn now() -> jiff::Timestamp {
    #[cfg(test)]
    if let Some(now) = testing::now() {
        return now;
    }
    jiff::Timestamp::now()
}

/// Now as Unix seconds.
pub fn now_seconds() -> i64 {
    now().as_second()
}

/// Now as an RFC 3339 time to the second, cut as upstream writes `metav1.Time` (a time is
/// never written as later than it is: a CronJob created at 09:00:59.6 was not created at 09:01).
pub fn now_time() -> String {
    let now = now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Sets (or refreshes) a condition in `status.conditions`; the transition time changes only
/// when the status does. Deployments' conditions also carry `lastUpdateTime`.
pub fn set_condition(object: &mut Value, kind: &str, status: &str, reason: &str, message: &str) {
    let update_time = object["kind"] == "Deployment";
    let now = now_time();
    if !object["status"].is_object() {
        object["status"] = serde_json::json!({});
    }
    if !object["status"]["conditions"].is_array() {
        object["status"]["conditions"] = serde_json::json!([]);
    }
    let conditions = object["status"]["conditions"]
        .as_array_mut()
        .expect("made an array");
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(condition) => {
            if condition["status"] != status {
                condition["lastTransitionTime"] = serde_json::json!(now);
            }
            if update_time && (condition["reason"] != reason || condition["message"] != message) {
                condition["lastUpdateTime"] = serde_json::json!(now);
            }
            condition["status"] = serde_json::json!(status);
            condition["reason"] = serde_json::json!(reason);
            condition["message"] = serde_json::json!(message);
        }
        None => {
            let mut condition = serde_json::json!({
                "type": kind, "status": status,
                "lastTransitionTime": now, "reason": reason, "message": message,
            });
            if update_time {
                condition["lastUpdateTime"] = serde_json::json!(now);
            }
            conditions.push(condition);
        }
    }
}

pub use protocol::node::condition;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_from_objects_cannot_overflow_the_clock() {
        let queue = Queue::default();
        let key: Key = ("default".into(), "web".into());
        queue.add_after(key.clone(), Duration::MAX);
        queue.add_after(key, Duration::from_secs(i64::MAX as u64));
        assert_eq!(queue.inner.lock().unwrap().delayed.len(), 2);
    }
}
