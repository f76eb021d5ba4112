//! The PV controller, the local-path provisioner and the scheduler's volume binding, on a
//! real store.

use serde_json::{json, Value};

use super::*;
use crate::controllers::local_path::LocalPathProvisioner;
use crate::controllers::scheduler::Scheduler;
use crate::controllers::testing::{key, pod_spec, TestCluster};

fn node(cluster: &TestCluster, name: &str, storage_dir: Option<&str>) {
    let mut annotations = json!({});
    if let Some(dir) = storage_dir {
        annotations["bramble.dev/storage-dir"] = json!(dir);
    }
    cluster.create(
        "core/nodes",
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
        }),
    );
}

fn class(cluster: &TestCluster, name: &str, provisioner: &str, mode: &str, default: bool) {
    let mut class = json!({
        "metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode,
    });
    if default {
        class["metadata"]["annotations"] = json!({DEFAULT_CLASS: "true"});
    }
    cluster.create(CLASSES, class);
}

fn volume(cluster: &TestCluster, name: &str, size: &str, class: &str, policy: &str) -> Value {
    cluster.create(
        VOLUMES,
        json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": policy, "storageClassName": class,
                     "hostPath": {"path": format!("/data/{name}")}},
        }),
    )
}

fn claim(cluster: &TestCluster, name: &str, size: &str, class: Option<&str>) -> Value {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    cluster.create(
        CLAIMS,
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
}

fn pod_using(cluster: &TestCluster, name: &str, claim: &str) -> Value {
    let mut spec = pod_spec();
    spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    cluster.create(
        "core/pods",
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
}

/// An update through admission that must be refused; the refusal.
fn refused_update(
    cluster: &TestCluster,
    storage_key: &str,
    (namespace, name): (&str, &str),
    change: impl FnOnce(&mut Value),
) -> crate::api::error::ApiError {
    let resource = super::super::resource_of(storage_key);
    let update = |current: &Value| {
        let mut next = current.clone();
        change(&mut next);
        Ok(next)
    };
    let part = crate::api::objects::Part::Main;
    crate::api::objects::update_object(
        cluster.api(),
        resource,
        namespace,
        name,
        part,
        false,
        update,
    )
    .expect_err("admission refuses the update")
}

fn vkey(name: &str) -> Key {
    (String::new(), name.to_owned())
}

fn get_claim(cluster: &TestCluster, name: &str) -> Value {
    cluster.get(CLAIMS, &key(name)).expect("the claim exists")
}

fn get_volume(cluster: &TestCluster, name: &str) -> Value {
    cluster
        .get(VOLUMES, &vkey(name))
        .expect("the volume exists")
}

/// Claims, volumes and pods as stored (events left out: repeating one is not progress).
fn snapshot(cluster: &TestCluster) -> Vec<Value> {
    let mut all = cluster.list(CLAIMS, "default");
    all.extend(cluster.list(VOLUMES, ""));
    all.extend(cluster.list("core/pods", "default"));
    all
}

/// Reconciles every key of the controllers until none of them writes anything more.
fn settle(cluster: &TestCluster, controllers: &[&dyn Reconciler]) {
    for _ in 0..20 {
        let before = snapshot(cluster);
        for controller in controllers {
            for key in cluster.all_keys(*controller) {
                cluster.reconcile(*controller, &key);
            }
        }
        if snapshot(cluster) == before {
            return;
        }
    }
    panic!("the controllers did not settle");
}

#[test]
fn new_objects_get_upstreams_defaults_status_and_finalizers() {
    let cluster = TestCluster::new();
    class(&cluster, "fast", "example.com/fast", "Immediate", false);
    class(
        &cluster,
        "local-path",
        LOCAL_PATH,
        "WaitForFirstConsumer",
        true,
    );
    let created = claim(&cluster, "data", "1Gi", None);
    assert_eq!(created["spec"]["storageClassName"], "local-path");
    assert_eq!(created["spec"]["volumeMode"], "Filesystem");
    assert_eq!(created["status"], json!({"phase": "Pending"}));
    assert_eq!(created["metadata"]["finalizers"], json!([PVC_PROTECTION]));
    let no_class = claim(&cluster, "plain", "1Gi", Some(""));
    assert_eq!(no_class["spec"]["storageClassName"], "");
    let pv = volume(&cluster, "pv1", "1Gi", "", "Retain");
    assert_eq!(pv["status"]["phase"], "Pending");
    assert!(pv["status"]["lastPhaseTransitionTime"].is_string());
    assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pv["spec"]["hostPath"]["type"], "");
    assert_eq!(pv["metadata"]["finalizers"], json!([PV_PROTECTION]));
    let sc = cluster.get(CLASSES, &vkey("fast")).unwrap();
    assert_eq!(
        (&sc["reclaimPolicy"], &sc["volumeBindingMode"]),
        (&json!("Delete"), &json!("Immediate"))
    );
}

#[test]
fn admission_refuses_the_common_mistakes_in_upstreams_words() {
    let cluster = TestCluster::new();
    let error = cluster
        .try_create(
            CLAIMS,
            json!({"metadata": {"name": "bad", "namespace": "default"}, "spec": {"resources": {}}}),
        )
        .unwrap_err();
    assert_eq!(error.code, 422);
    assert!(
        error
            .message
            .contains("spec.accessModes: Required value: at least 1 access mode is required")
            && error
                .message
                .contains("spec.resources[storage]: Required value"),
        "{}",
        error.message
    );
    claim(&cluster, "data", "1Gi", Some(""));
    let grow = refused_update(&cluster, CLAIMS, ("default", "data"), |c| {
        c["spec"]["resources"]["requests"]["storage"] = json!("2Gi")
    });
    assert!(
        grow.message
            .contains("spec: Forbidden: spec is immutable after creation"),
        "{}",
        grow.message
    );
    class(&cluster, "fast", "example.com/fast", "Immediate", false);
    let change = refused_update(&cluster, CLASSES, ("", "fast"), |c| {
        c["provisioner"] = json!("example.com/slow");
        c["volumeBindingMode"] = json!("WaitForFirstConsumer");
    });
    assert!(
        change
            .message
            .contains("provisioner: Forbidden: updates to provisioner are forbidden.")
            && change.message.contains(
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable"
            ),
        "{}",
        change.message
    );
    let no_source = cluster
        .try_create(
            VOLUMES,
            json!({"metadata": {"name": "x"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}}),
        )
        .unwrap_err();
    assert!(
        no_source
            .message
            .contains("spec: Required value: must specify a volume type"),
        "{}",
        no_source.message
    );
}

#[test]
fn a_claim_binds_the_smallest_volume_that_fits() {
    let cluster = TestCluster::new();
    volume(&cluster, "big", "10Gi", "", "Retain");
    volume(&cluster, "small", "1Gi", "", "Retain");
    volume(&cluster, "right", "3Gi", "", "Retain");
    volume(&cluster, "classy", "2Gi", "gold", "Retain");
    claim(&cluster, "data", "2Gi", Some(""));
    let binder = VolumeController;
    settle(&cluster, &[&binder]);
    let data = get_claim(&cluster, "data");
    assert_eq!(data["spec"]["volumeName"], "right");
    assert_eq!(data["status"]["phase"], "Bound");
    assert_eq!(data["status"]["capacity"]["storage"], "3Gi");
    assert_eq!(data["metadata"]["annotations"][BIND_COMPLETED], "yes");
    assert_eq!(data["metadata"]["annotations"][BOUND_BY_CONTROLLER], "yes");
    let right = get_volume(&cluster, "right");
    assert_eq!(right["status"]["phase"], "Bound");
    assert_eq!(right["spec"]["claimRef"]["uid"], data["metadata"]["uid"]);
    assert_eq!(right["metadata"]["annotations"][BOUND_BY_CONTROLLER], "yes");
    for other in ["big", "small", "classy"] {
        assert_eq!(get_volume(&cluster, other)["status"]["phase"], "Available");
    }
}

#[test]
fn a_claim_without_a_class_and_no_volume_says_so() {
    let cluster = TestCluster::new();
    claim(&cluster, "data", "2Gi", Some(""));
    settle(&cluster, &[&VolumeController]);
    assert_eq!(get_claim(&cluster, "data")["status"]["phase"], "Pending");
    assert!(cluster.events_about("data").contains(&(
        "FailedBinding".into(),
        "no persistent volumes available for this claim and no storage class is set".into()
    )));
}

#[test]
fn a_retained_volume_is_released_and_a_deleted_one_goes() {
    let cluster = TestCluster::new();
    volume(&cluster, "keep", "1Gi", "", "Retain");
    claim(&cluster, "a", "1Gi", Some(""));
    settle(&cluster, &[&VolumeController]);
    volume(&cluster, "drop", "1Gi", "", "Delete");
    claim(&cluster, "b", "1Gi", Some(""));
    settle(&cluster, &[&VolumeController]);
    assert_eq!(get_claim(&cluster, "b")["spec"]["volumeName"], "drop");
    for name in ["a", "b"] {
        cluster.delete(CLAIMS, &key(name), &DeleteOptions::default());
    }
    settle(&cluster, &[&VolumeController]);
    assert!(cluster.get(CLAIMS, &key("a")).is_none());
    let keep = get_volume(&cluster, "keep");
    assert_eq!(keep["status"]["phase"], "Released");
    assert_eq!(keep["spec"]["claimRef"]["name"], "a");
    assert!(
        cluster.get(VOLUMES, &vkey("drop")).is_none(),
        "a hand-made volume with policy Delete is deleted"
    );
}

#[test]
fn a_claim_in_use_stays_until_its_pod_goes() {
    let cluster = TestCluster::new();
    node(&cluster, "pi-1", None);
    volume(&cluster, "pv", "1Gi", "", "Retain");
    claim(&cluster, "data", "1Gi", Some(""));
    settle(&cluster, &[&VolumeController]);
    pod_using(&cluster, "app", "data");
    crate::api::objects::bind_pod(cluster.api(), "default", "app", "pi-1").unwrap();
    cluster.delete(CLAIMS, &key("data"), &DeleteOptions::default());
    settle(&cluster, &[&VolumeController]);
    let data = get_claim(&cluster, "data");
    assert!(!data["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(data["metadata"]["finalizers"], json!([PVC_PROTECTION]));
    assert_eq!(get_volume(&cluster, "pv")["status"]["phase"], "Bound");
    // The volume may not go while bound.
    cluster.delete(VOLUMES, &vkey("pv"), &DeleteOptions::default());
    settle(&cluster, &[&VolumeController]);
    assert!(cluster.get(VOLUMES, &vkey("pv")).is_some());
    cluster.delete(
        "core/pods",
        &key("app"),
        &DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        },
    );
    settle(&cluster, &[&VolumeController]);
    assert!(
        cluster.get(CLAIMS, &key("data")).is_none(),
        "the claim went with its pod"
    );
    assert!(
        cluster.get(VOLUMES, &vkey("pv")).is_none(),
        "the released volume being deleted went too"
    );
}

#[test]
fn wait_for_first_consumer_provisions_on_the_scheduled_node() {
    let cluster = TestCluster::new();
    node(&cluster, "pi-1", Some("/srv/storage"));
    class(
        &cluster,
        "local-path",
        LOCAL_PATH,
        "WaitForFirstConsumer",
        true,
    );
    let created = claim(&cluster, "data", "2Gi", None);
    let (binder, provisioner, scheduler) =
        (VolumeController, LocalPathProvisioner, Scheduler::default());
    settle(&cluster, &[&binder, &provisioner]);
    assert!(
        cluster.list(VOLUMES, "").is_empty(),
        "nothing before a consumer"
    );
    assert!(cluster
        .events_about("data")
        .iter()
        .any(|(r, _)| r == "WaitForFirstConsumer"));
    pod_using(&cluster, "app", "data");
    settle(&cluster, &[&binder, &provisioner, &scheduler]);
    let uid = created["metadata"]["uid"].as_str().unwrap();
    let volume_name = format!("pvc-{uid}");
    let pv = get_volume(&cluster, &volume_name);
    assert_eq!(
        pv["spec"]["hostPath"],
        json!({"path": format!("/srv/storage/{volume_name}_default_data"), "type": "DirectoryOrCreate"})
    );
    assert_eq!(pv["metadata"]["annotations"][PROVISIONED_BY], LOCAL_PATH);
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"],
        json!(["pi-1"])
    );
    assert_eq!(pv["status"]["phase"], "Bound");
    assert!(pv["metadata"]["annotations"][BOUND_BY_CONTROLLER].is_null());
    let data = get_claim(&cluster, "data");
    assert_eq!(data["metadata"]["annotations"][SELECTED_NODE], "pi-1");
    assert_eq!(data["status"]["phase"], "Bound");
    assert_eq!(data["spec"]["volumeName"], volume_name.as_str());
    let pod = cluster.get("core/pods", &key("app")).unwrap();
    assert_eq!(
        pod["spec"]["nodeName"], "pi-1",
        "the pod is bound once its claim is"
    );
    let reasons: Vec<String> = cluster
        .events_about("data")
        .into_iter()
        .map(|e| e.0)
        .collect();
    for reason in [
        "ExternalProvisioning",
        "Provisioning",
        "ProvisioningSucceeded",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    // Once the claim goes, the volume is Released and left for the node to clean.
    cluster.delete(
        "core/pods",
        &key("app"),
        &DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        },
    );
    cluster.delete(CLAIMS, &key("data"), &DeleteOptions::default());
    settle(&cluster, &[&binder, &provisioner]);
    assert_eq!(
        get_volume(&cluster, &volume_name)["status"]["phase"],
        "Released"
    );
}

#[test]
fn the_scheduler_waits_for_the_claim_and_follows_the_volume() {
    let cluster = TestCluster::new();
    node(&cluster, "pi-1", None);
    node(&cluster, "pi-2", None);
    class(
        &cluster,
        "local-path",
        LOCAL_PATH,
        "WaitForFirstConsumer",
        true,
    );
    claim(&cluster, "data", "1Gi", None);
    pod_using(&cluster, "app", "data");
    let scheduler = Scheduler::default();
    cluster.reconcile(&scheduler, &key("app"));
    let selected = get_claim(&cluster, "data")["metadata"]["annotations"][SELECTED_NODE].clone();
    assert!(selected == "pi-1" || selected == "pi-2", "{selected}");
    assert_eq!(
        cluster.get("core/pods", &key("app")).unwrap()["spec"]["nodeName"],
        Value::Null,
        "not bound before its claim"
    );
    // The claim's binding brings the pod back.
    cluster.sync();
    settle(&cluster, &[&VolumeController, &LocalPathProvisioner]);
    cluster.reconcile(&scheduler, &key("app"));
    let pod = cluster.get("core/pods", &key("app")).unwrap();
    assert_eq!(pod["spec"]["nodeName"], selected);
    // A second pod of the same claim follows the volume's node affinity.
    pod_using(&cluster, "second", "data");
    cluster.reconcile(&scheduler, &key("second"));
    assert_eq!(
        cluster.get("core/pods", &key("second")).unwrap()["spec"]["nodeName"],
        selected
    );
}

#[test]
fn an_unbound_immediate_claim_keeps_its_pod_pending() {
    let cluster = TestCluster::new();
    node(&cluster, "pi-1", None);
    claim(&cluster, "data", "1Gi", Some(""));
    pod_using(&cluster, "app", "data");
    cluster.reconcile(&Scheduler::default(), &key("app"));
    assert!(cluster.events_about("app").contains(&(
        "FailedScheduling".into(),
        // As upstream prints it: preemption cannot help a pod its volumes keep off every node.
        "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: \
         0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            .into()
    )));
    pod_using(&cluster, "lost", "missing");
    cluster.reconcile(&Scheduler::default(), &key("lost"));
    assert!(cluster.events_about("lost").contains(&(
        "FailedScheduling".into(),
        "0/1 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: \
         0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            .into()
    )));
}

#[test]
fn immediate_local_path_claims_get_a_ready_node() {
    let cluster = TestCluster::new();
    node(&cluster, "pi-1", None);
    class(&cluster, "now", LOCAL_PATH, "Immediate", false);
    let created = claim(&cluster, "data", "1Gi", Some("now"));
    settle(&cluster, &[&VolumeController, &LocalPathProvisioner]);
    let volume_name = format!("pvc-{}", created["metadata"]["uid"].as_str().unwrap());
    let pv = get_volume(&cluster, &volume_name);
    assert_eq!(
        pv["spec"]["hostPath"]["path"],
        format!("/var/lib/bramble/storage/{volume_name}_default_data")
    );
    assert_eq!(get_claim(&cluster, "data")["status"]["phase"], "Bound");
}
