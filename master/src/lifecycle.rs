//! Server-side object lifecycle: what the API server itself does to objects of particular kinds
//! when they are created, updated and deleted (generation, status on create, cluster IP and node
//! port allocation, Job selectors, graceful deletion, namespace termination).
//!
//! Deletion of one object:
//!
//! ```text
//!   DELETE ──▶ finalizers? / pod on a node with grace > 0?
//!                 │ no                         │ yes
//!                 ▼                            ▼
//!              removed            deletionTimestamp set ("Terminating")
//!                                   │ last finalizer removed (update), or
//!                                   │ pod deleted again with grace 0 (its agent)
//!                                   ▼
//!                                removed
//! ```
//!
//! A namespace being deleted is marked Terminating; its contents are removed, then the namespace.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::objects::{meta_str, namespaced_storage_keys, DeleteOptions};
use crate::api::ApiState;
use crate::resources::{self, Resource};
use crate::store::Store;

/// Whether `metadata.generation` is kept for the kind (objects with a spec controllers act on).
pub fn has_generation(resource: &Resource) -> bool {
    matches!(
        resource.kind,
        "Pod"
            | "ReplicationController"
            | "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "CronJob"
            | "HorizontalPodAutoscaler"
            | "ResourceQuota"
            | "PodDisruptionBudget"
            | "PriorityClass"
    )
}

/// Server-set state of a new object: the status it starts with (clients cannot create objects
/// with a made-up status, except nodes, whose agent reports status at registration) and the
/// kind's own fields (a namespace's name label, a Job's selector).
///
/// The statuses are what upstream's create answers: the fields its Go types always serialise
/// (no `omitempty`), at zero. Clients built from those types, such as the Python client,
/// refuse an object without them.
pub fn prepare_on_create(resource: &Resource, object: &mut Value) {
    let status = match resource.kind {
        "Pod" => json!({"phase": "Pending"}),
        "Namespace" => json!({"phase": "Active"}),
        "Service" => json!({"loadBalancer": {}}),
        "ReplicationController" | "ReplicaSet" => json!({"replicas": 0}),
        "StatefulSet" => json!({"replicas": 0, "availableReplicas": 0}),
        "DaemonSet" => json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        }),
        // Stored as autoscaling/v2, where `currentReplicas` is omitted at zero; the v1 view
        // adds it back (conversion.rs).
        "HorizontalPodAutoscaler" => json!({"desiredReplicas": 0}),
        "Deployment" | "Job" | "CronJob" | "ResourceQuota" => json!({}),
        "Node" => node_status(&object["status"]),
        // Upstream's strategies drop what the client sent; a volume records when its phase began.
        "PersistentVolume" => json!({"phase": "Pending", "lastPhaseTransitionTime": now_second()}),
        "PersistentVolumeClaim" => json!({"phase": "Pending"}),
        "PodDisruptionBudget" => crate::controllers::disruption::initial_status(),
        _ => Value::Null,
    };
    if !status.is_null() {
        object["status"] = status;
    }
    prepare_kind_on_create(resource, object);
}

/// A node's reported status with what upstream's NodeStatus always carries: the kubelet
/// endpoint and every node-info string (empty when not reported), and allocatable defaulted
/// to capacity (`SetDefaults_NodeStatus`).
fn node_status(reported: &Value) -> Value {
    let mut status = if reported.is_object() {
        reported.clone()
    } else {
        json!({})
    };
    if !status["daemonEndpoints"]["kubeletEndpoint"]["Port"].is_number() {
        status["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(0);
    }
    if !status["nodeInfo"].is_object() {
        status["nodeInfo"] = json!({});
    }
    for field in [
        "machineID",
        "systemUUID",
        "bootID",
        "kernelVersion",
        "osImage",
        "containerRuntimeVersion",
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
    ] {
        if !status["nodeInfo"][field].is_string() {
            status["nodeInfo"][field] = json!("");
        }
    }
    if status["allocatable"].is_null() && status["capacity"].is_object() {
        status["allocatable"] = status["capacity"].clone();
    }
    status
}

fn prepare_kind_on_create(resource: &Resource, object: &mut Value) {
    match resource.kind {
        "Namespace" => {
            let name = meta_str(object, "name");
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        "Job" => prepare_job(object),
        _ => {}
    }
}

/// Upstream labels a Job's pods with its uid and selects them by it unless the user chose a
/// selector (`manualSelector: true`), so two Jobs with the same labels never share pods.
fn prepare_job(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = meta_str(job, "uid");
    let name = meta_str(job, "name");
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if !job["spec"]["template"]["metadata"].is_object() {
        job["spec"]["template"]["metadata"] = json!({});
    }
    let template_labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !template_labels.is_object() {
        *template_labels = json!({});
    }
    if let (Some(target), Some(source)) = (template_labels.as_object_mut(), labels.as_object()) {
        for (key, value) in source {
            target.insert(key.clone(), value.clone());
        }
    }
    if job["spec"].is_object() {
        job["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
}

/// Sets (or replaces) a condition of type `kind` in `status.conditions`.
pub fn set_condition(
    object: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    if !object["status"]["conditions"].is_array() {
        object["status"]["conditions"] = json!([]);
    }
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    let mut condition =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    if let Some(conditions) = object["status"]["conditions"].as_array_mut() {
        match conditions.iter_mut().find(|c| c["type"] == kind) {
            Some(existing) => {
                if existing["status"] == status {
                    condition["lastTransitionTime"] = existing["lastTransitionTime"].clone();
                }
                *existing = condition;
            }
            None => conditions.push(condition),
        }
    }
}

/// Kind-specific admission after defaults and validation: quality of service, service addresses.
pub fn admit_create(
    state: &ApiState,
    resource: &Resource,
    object: &mut Value,
) -> Result<(), ApiError> {
    match resource.kind {
        "Pod" => {
            object["status"]["qosClass"] = json!(qos_class(&object["spec"]));
            add_default_tolerations(object, state.cluster.timings.default_toleration_seconds);
            Ok(())
        }
        "Service" => allocate_service(state, object, None),
        "PersistentVolumeClaim" => {
            crate::controllers::volumes::admit_claim(&state.store, object);
            Ok(())
        }
        "PersistentVolume" => {
            crate::controllers::volumes::admit_volume(object);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Now, to the second, as upstream's `metav1.Now` serialises.
fn now_second() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// What the server does to a status update beyond taking the new status: a PersistentVolume's
/// `lastPhaseTransitionTime` moves when its phase does, unless the writer set it.
pub fn carry_over_on_status_update(resource: &Resource, current: &Value, next: &mut Value) {
    if resource.kind != "PersistentVolume" || !next["status"].is_object() {
        return;
    }
    let time = "lastPhaseTransitionTime";
    if current["status"]["phase"] == next["status"]["phase"] {
        if next["status"][time].is_null() && !current["status"][time].is_null() {
            next["status"][time] = current["status"][time].clone();
        }
    } else if next["status"][time] == current["status"][time] || next["status"][time].is_null() {
        next["status"][time] = json!(now_second());
    }
}

/// Upstream's DefaultTolerationSeconds: pods stay on a not-ready or unreachable node for the
/// profile's time (5 minutes by default, none in the demo profile) unless they say otherwise.
fn add_default_tolerations(pod: &mut Value, seconds: i64) {
    let mut tolerations = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = tolerations.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            let matches_key = t["key"] == key
                || (t["key"].as_str().unwrap_or_default().is_empty() && t["operator"] == "Exists");
            matches_key && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    pod["spec"]["tolerations"] = json!(tolerations);
}

/// Keeps what the server assigned when an update leaves it out (a `kubectl replace` of a
/// manifest without `clusterIP` or `nodePort`), and allocates what a type change needs.
pub fn carry_over_on_update(
    state: &ApiState,
    resource: &Resource,
    current: &Value,
    next: &mut Value,
) -> Result<(), ApiError> {
    if resource.kind == "PersistentVolumeClaim" {
        return crate::controllers::volumes::admit_claim_resize(&state.store, current, next);
    }
    if resource.kind != "Service" {
        return Ok(());
    }
    let cluster_ip = next
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if cluster_ip.is_empty() {
        for field in ["clusterIP", "clusterIPs"] {
            if let Some(value) = current["spec"].get(field) {
                next["spec"][field] = value.clone();
            }
        }
    }
    if let Some(ports) = next["spec"]["ports"].as_array_mut() {
        for port in ports.iter_mut() {
            if port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                let old = current["spec"]["ports"]
                    .as_array()
                    .and_then(|old| old.iter().find(|p| p["port"] == port["port"]))
                    .and_then(|p| p.get("nodePort").cloned());
                if let Some(node_port) = old {
                    port["nodePort"] = node_port;
                }
            }
        }
    }
    allocate_service(state, next, Some(current))
}

/// Pod quality-of-service class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|field| spec.get(*field).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in &containers {
        let requests = container
            .pointer("/resources/requests")
            .and_then(Value::as_object);
        let limits = container
            .pointer("/resources/limits")
            .and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    if prefix > 30 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some((u32::from(ip) & mask, mask))
}

/// The first address of the service range, which the `kubernetes` service holds.
pub fn first_service_ip(cidr: &str) -> Option<Ipv4Addr> {
    parse_cidr(cidr).map(|(network, _)| Ipv4Addr::from(network + 1))
}

fn allocate_service(
    state: &ApiState,
    service: &mut Value,
    current: Option<&Value>,
) -> Result<(), ApiError> {
    let settings = &state.cluster;
    let _serialised = state.allocation.lock().unwrap_or_else(|p| p.into_inner());
    let name = meta_str(service, "name");
    let own_uid = meta_str(service, "uid");
    let others = state
        .store
        .list("core/services", None, None, 0, &|s: &Value| {
            meta_str(s, "uid") != own_uid
        })?;
    let mut used_ips = std::collections::HashSet::new();
    let mut used_ports = std::collections::HashSet::new();
    for other in &others.items {
        if let Some(ip) = other.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_owned());
        }
        for port in other
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(node_port);
            }
        }
    }
    let invalid = |field: &str, value: &str, detail: &str| {
        ApiError::invalid(
            "Service",
            "",
            &name,
            &[crate::admission::FieldError {
                kind: crate::admission::FieldErrorKind::Invalid,
                field: field.into(),
                value: Some(value.into()),
                detail: detail.into(),
            }],
        )
    };
    let kind = service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    let (network, mask) = parse_cidr(&settings.service_cidr).ok_or_else(|| {
        ApiError::internal(format!(
            "the service range {} is not an IPv4 CIDR",
            settings.service_cidr
        ))
    })?;
    if kind != "ExternalName" {
        let requested = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let unchanged = current
            .and_then(|c| c.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            == Some(requested.as_str());
        let ip = if requested == "None" || unchanged && !requested.is_empty() {
            requested
        } else if requested.is_empty() {
            let size = !mask;
            (2..size)
                .map(|offset| Ipv4Addr::from(network + offset).to_string())
                .find(|candidate| !used_ips.contains(candidate))
                .ok_or_else(|| {
                    ApiError::internal(format!(
                        "no free cluster IP left in {}",
                        settings.service_cidr
                    ))
                })?
        } else {
            let parsed: Ipv4Addr = requested.parse().map_err(|_| {
                invalid(
                    "spec.clusterIPs[0]",
                    &requested,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )
            })?;
            if u32::from(parsed) & mask != network {
                return Err(invalid(
                    "spec.clusterIPs[0]",
                    &requested,
                    &format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}", settings.service_cidr),
                ));
            }
            if used_ips.contains(&requested) {
                return Err(invalid(
                    "spec.clusterIPs[0]",
                    &requested,
                    &format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
            }
            requested
        };
        service["spec"]["clusterIP"] = json!(ip);
        service["spec"]["clusterIPs"] = json!([ip]);
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let (low, high) = settings.node_port_range;
        let mut taken = used_ports;
        if let Some(ports) = service["spec"]["ports"].as_array_mut() {
            for (index, port) in ports.iter_mut().enumerate() {
                let requested = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
                if requested == 0 {
                    let free = (low..=high)
                        .find(|p| !taken.contains(p))
                        .ok_or_else(|| ApiError::internal("no free node port left"))?;
                    port["nodePort"] = json!(free);
                    taken.insert(free);
                } else {
                    if requested < low || requested > high {
                        return Err(invalid(
                            &format!("spec.ports[{index}].nodePort"),
                            &requested.to_string(),
                            &format!("provided port is not in the valid range. The range of valid ports is {low}-{high}"),
                        ));
                    }
                    if taken.contains(&requested) {
                        return Err(invalid(
                            &format!("spec.ports[{index}].nodePort"),
                            &requested.to_string(),
                            "provided port is already allocated",
                        ));
                    }
                    taken.insert(requested);
                }
            }
        }
    }
    Ok(())
}

/// The namespaces upstream's NamespaceLifecycle admission keeps from deletion; the master
/// also re-creates them (with `kube-node-lease`) when they are missing.
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Admission of a delete (also a dry run): the immortal namespaces and the system priority
/// classes refuse it.
pub fn admit_delete(resource: &Resource, name: &str) -> Result<(), ApiError> {
    if resource.kind == "PriorityClass" {
        crate::priority::admit_delete(name)?;
    }
    if resource.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden_object(
            resource,
            name,
            "this namespace may not be deleted",
        ));
    }
    Ok(())
}

/// What a delete does to an object.
pub enum Deletion {
    /// Remove it now.
    Now,
    /// Mark it as being deleted; something else finishes the job.
    Graceful {
        /// Turns the current object into the marked one.
        mark: Box<dyn FnOnce(&Value) -> Value + Send>,
    },
}

fn has_finalizers(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Now plus `seconds` (a grace period from the request or the pod), at most the latest
/// time there is: jiff's `+` panics past it.
fn timestamp_after(seconds: i64) -> String {
    let now = jiff::Timestamp::now();
    let then = now
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(jiff::Timestamp::MAX);
    then.round(jiff::Unit::Second).unwrap_or(then).to_string()
}

/// Decides how a delete proceeds for the object's kind and state.
pub fn plan_deletion(resource: &Resource, current: &Value, options: &DeleteOptions) -> Deletion {
    let already = current.pointer("/metadata/deletionTimestamp").is_some();
    if resource.kind == "Namespace" {
        return Deletion::Graceful {
            mark: Box::new(move |ns: &Value| {
                let mut ns = ns.clone();
                if ns.pointer("/metadata/deletionTimestamp").is_none() {
                    ns["metadata"]["deletionTimestamp"] = json!(timestamp_after(0));
                    ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                ns["status"]["phase"] = json!("Terminating");
                ns
            }),
        };
    }
    if resource.kind == "Pod" {
        let on_node = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = current
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let terminal = phase == "Succeeded" || phase == "Failed";
        let default_grace = current
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let mut grace = options.grace_period_seconds.unwrap_or(default_grace).max(0);
        if !on_node || terminal {
            grace = 0;
        }
        if grace == 0 && !has_finalizers(current) {
            return Deletion::Now;
        }
        let existing = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if already && existing.is_some_and(|e| e <= grace) {
            return Deletion::Graceful {
                mark: Box::new(|pod: &Value| pod.clone()),
            };
        }
        return Deletion::Graceful {
            mark: Box::new(move |pod: &Value| {
                let mut pod = pod.clone();
                pod["metadata"]["deletionTimestamp"] = json!(timestamp_after(grace));
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                pod
            }),
        };
    }
    // Foreground waits for the garbage collector, which tracks the kinds the controllers
    // watch; other kinds (config maps, secrets...) rarely own anything and go at once.
    let foreground = options.propagation.as_deref() == Some("Foreground")
        && crate::controllers::view::CACHED.contains(&resource.storage_key().as_str());
    if foreground && !already {
        // The garbage collector deletes the dependents, then removes the finalizer.
        return Deletion::Graceful {
            mark: Box::new(move |object: &Value| {
                let mut object = object.clone();
                object["metadata"]["deletionTimestamp"] = json!(timestamp_after(0));
                object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                let mut finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !finalizers.iter().any(|f| f == "foregroundDeletion") {
                    finalizers.push(json!("foregroundDeletion"));
                }
                object["metadata"]["finalizers"] = json!(finalizers);
                object
            }),
        };
    }
    if has_finalizers(current) {
        return Deletion::Graceful {
            mark: Box::new(move |object: &Value| {
                let mut object = object.clone();
                if !already {
                    object["metadata"]["deletionTimestamp"] = json!(timestamp_after(0));
                    object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                object
            }),
        };
    }
    Deletion::Now
}

/// Whether an updated object being deleted has nothing left holding it.
pub fn deletion_complete(resource: &Resource, object: &Value) -> bool {
    resource.kind != "Pod"
        && resource.kind != "Namespace"
        && object.pointer("/metadata/deletionTimestamp").is_some()
        && !has_finalizers(object)
}

/// After an object is created: a namespace gets its `default` service account.
pub fn after_create(state: &ApiState, resource: &Resource, created: &Value) {
    if resource.kind == "Namespace" {
        let namespace = meta_str(created, "name");
        ensure_default_service_account(state, &namespace);
    }
}

/// Creates the namespace's `default` service account if it is missing.
pub fn ensure_default_service_account(state: &ApiState, namespace: &str) {
    let Some(accounts) = resources::by_kind("", "ServiceAccount") else {
        return;
    };
    if let Ok(Some(_)) = state
        .store
        .get(&accounts.storage_key(), namespace, "default")
    {
        return;
    }
    let account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": namespace},
    });
    match crate::api::objects::create_object(state, accounts, account, false) {
        Ok(_) => {}
        Err(e) if e.code == 409 => {}
        Err(e) => {
            tracing::warn!(namespace, error = %e.message, "cannot create the default service account")
        }
    }
}

/// Removes everything in a terminating namespace, then the namespace itself.
pub fn finalize_namespace(
    store: &Arc<Store>,
    namespace: &str,
) -> Result<(), crate::store::StoreError> {
    for resource in namespaced_storage_keys() {
        let key = resource.storage_key();
        let page = store.list(&key, Some(namespace), None, 0, &|_| true)?;
        for object in page.items {
            let name = meta_str(&object, "name");
            match store.delete::<crate::store::StoreError>(&key, namespace, &name, |_| Ok(())) {
                Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let result = store.update::<crate::store::StoreError>("core/namespaces", "", namespace, |ns| {
        let mut ns = ns.clone();
        if let Some(finalizers) = ns
            .pointer_mut("/spec/finalizers")
            .and_then(Value::as_array_mut)
        {
            finalizers.retain(|f| f != "kubernetes");
        }
        Ok(ns)
    });
    let ns = match result {
        Ok(ns) => ns,
        Err(crate::store::StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !has_finalizers(&ns) {
        match store.delete::<crate::store::StoreError>("core/namespaces", "", namespace, |_| Ok(()))
        {
            Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes the owner's ownerReferences from its dependents (`propagationPolicy: Orphan`).
pub fn orphan_dependents(state: &ApiState, owner: &Value) -> Result<(), ApiError> {
    let uid = meta_str(owner, "uid");
    let namespace = meta_str(owner, "namespace");
    let owned_by = |object: &Value| {
        object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
    };
    for resource in namespaced_storage_keys() {
        let key = resource.storage_key();
        let scope = if namespace.is_empty() {
            None
        } else {
            Some(namespace.as_str())
        };
        let page = state.store.list(&key, scope, None, 0, &owned_by)?;
        for dependent in page.items {
            let ns = meta_str(&dependent, "namespace");
            let name = meta_str(&dependent, "name");
            let result =
                state
                    .store
                    .update::<crate::store::StoreError>(&key, &ns, &name, |object| {
                        let mut object = object.clone();
                        if let Some(refs) = object
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        {
                            refs.retain(|r| r["uid"] != uid.as_str());
                        }
                        crate::admission::omit_empty_metadata(&mut object);
                        Ok(object)
                    });
            match result {
                Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        let guaranteed =
            json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let burstable = json!({"containers": [{"resources": {"requests": {"cpu": "100m"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn new_objects_start_with_upstreams_status() {
        let expected = [
            ("", "Pod", json!({"phase": "Pending"})),
            ("", "Namespace", json!({"phase": "Active"})),
            ("", "Service", json!({"loadBalancer": {}})),
            ("", "ReplicationController", json!({"replicas": 0})),
            ("", "ResourceQuota", json!({})),
            ("apps", "Deployment", json!({})),
            ("apps", "ReplicaSet", json!({"replicas": 0})),
            (
                "apps",
                "DaemonSet",
                json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}),
            ),
            ("batch", "Job", json!({})),
            (
                "apps",
                "StatefulSet",
                json!({"replicas": 0, "availableReplicas": 0}),
            ),
            (
                "autoscaling",
                "HorizontalPodAutoscaler",
                json!({"desiredReplicas": 0}),
            ),
        ];
        for (group, kind, status) in expected {
            let resource = resources::by_kind(group, kind).unwrap();
            let mut object = json!({"metadata": {"name": "x", "uid": "u"}, "spec": {}, "status": {"made": "up"}});
            prepare_on_create(resource, &mut object);
            assert_eq!(object["status"], status, "{kind}");
        }
        let v1 = resources::find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let mut hpa = json!({"metadata": {"name": "x"}, "spec": {}});
        prepare_on_create(v1, &mut hpa);
        assert_eq!(
            crate::conversion::from_storage(v1, hpa)["status"],
            json!({"currentReplicas": 0, "desiredReplicas": 0})
        );
        for kind in [
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "Event",
        ] {
            let mut object = json!({"metadata": {"name": "x"}});
            prepare_on_create(resources::by_kind("", kind).unwrap(), &mut object);
            assert!(object.get("status").is_none(), "{kind}");
        }
    }

    #[test]
    fn a_new_node_keeps_its_reported_status_and_gets_the_rest() {
        let nodes = resources::by_kind("", "Node").unwrap();
        let mut bare = json!({"metadata": {"name": "n"}});
        prepare_on_create(nodes, &mut bare);
        assert_eq!(
            bare["status"]["daemonEndpoints"],
            json!({"kubeletEndpoint": {"Port": 0}})
        );
        assert_eq!(bare["status"]["nodeInfo"]["kubeProxyVersion"], "");
        assert_eq!(bare["status"]["nodeInfo"].as_object().unwrap().len(), 10);

        let mut reported = json!({"metadata": {"name": "n"}, "status": {
            "capacity": {"cpu": "4"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"kubeletVersion": "v1.37.0", "architecture": "arm64"},
        }});
        prepare_on_create(nodes, &mut reported);
        let status = &reported["status"];
        assert_eq!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(status["nodeInfo"]["kubeletVersion"], "v1.37.0");
        assert_eq!(status["nodeInfo"]["machineID"], "");
        assert_eq!(status["allocatable"], json!({"cpu": "4"}));
    }

    #[test]
    fn the_system_namespaces_may_not_be_deleted() {
        let namespaces = resources::by_kind("", "Namespace").unwrap();
        for name in ["default", "kube-system", "kube-public"] {
            let error = admit_delete(namespaces, name).unwrap_err();
            assert_eq!(error.code, 403);
            assert_eq!(error.reason, "Forbidden");
            assert_eq!(
                error.message,
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted")
            );
        }
        assert!(admit_delete(namespaces, "kube-node-lease").is_ok());
        assert!(admit_delete(namespaces, "team-a").is_ok());
        let config_maps = resources::by_kind("", "ConfigMap").unwrap();
        assert!(admit_delete(config_maps, "default").is_ok());
    }

    #[test]
    fn service_range_arithmetic() {
        assert_eq!(
            first_service_ip("10.43.0.0/16"),
            Some(Ipv4Addr::new(10, 43, 0, 1))
        );
        assert_eq!(
            parse_cidr("10.43.7.9/16"),
            Some((u32::from(Ipv4Addr::new(10, 43, 0, 0)), 0xffff_0000))
        );
        assert_eq!(parse_cidr("nonsense"), None);
    }

    #[test]
    fn jobs_select_their_pods_by_uid() {
        let mut job =
            json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"template": {"spec": {}}}});
        prepare_job(&mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
    }

    #[test]
    fn pods_on_nodes_terminate_gracefully() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(matches!(
            plan_deletion(pods, &unscheduled, &DeleteOptions::default()),
            Deletion::Now
        ));
        let running = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        match plan_deletion(pods, &running, &DeleteOptions::default()) {
            Deletion::Graceful { mark } => {
                let marked = mark(&running);
                assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
            }
            Deletion::Now => panic!("a running pod must terminate gracefully"),
        }
        let forced = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        assert!(matches!(
            plan_deletion(pods, &running, &forced),
            Deletion::Now
        ));
    }
}
