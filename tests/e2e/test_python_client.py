"""Drives `bramble master` with the official Python `kubernetes` client."""

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def pod(name, labels=None):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": "demo"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36", command=["sleep", "1d"])]),
    )


def test_crud_selectors_and_paging(master):
    core = client.CoreV1Api(master.client())
    for i in range(5):
        core.create_namespaced_pod("default", pod(f"p{i}", {"app": "demo", "index": str(i)}))
    created = core.read_namespaced_pod("p0", "default")
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"
    assert created.spec.containers[0].termination_message_path == "/dev/termination-log"

    assert len(core.list_namespaced_pod("default", label_selector="index in (1,3)").items) == 2
    assert len(core.list_namespaced_pod("default", label_selector="index notin (1,3),app").items) == 3
    assert len(core.list_namespaced_pod("default", field_selector="metadata.name=p4").items) == 1
    assert len(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items) == 5

    first = core.list_namespaced_pod("default", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    second = core.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod("default", limit=2, _continue=second.metadata._continue)
    names = [p.metadata.name for page in (first, second, third) for p in page.items]
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    assert not third.metadata._continue

    generated = core.create_namespaced_pod(
        "default", client.V1Pod(metadata=client.V1ObjectMeta(generate_name="gen-"), spec=pod("x").spec)
    )
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == 9

    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_pod("default", pod("p0"))
    assert conflict.value.status == 409

    core.delete_namespaced_pod("p0", "default")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("p0", "default")
    assert missing.value.status == 404

    core.delete_collection_namespaced_pod("default", label_selector="app=demo")
    assert core.list_namespaced_pod("default", label_selector="app=demo").items == []


def test_stale_update_conflicts(master):
    core = client.CoreV1Api(master.client())
    cm = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"a": "1"}))
    cm.data["a"] = "2"
    core.replace_namespaced_config_map("c", "default", cm)
    cm.data["a"] = "3"
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("c", "default", cm)
    assert stale.value.status == 409
    assert "the object has been modified" in stale.value.body
    assert core.read_namespaced_config_map("c", "default").data == {"a": "2"}


def test_patch_types_from_python(master):
    apps = client.AppsV1Api(master.client())
    body = {
        "metadata": {"name": "api", "labels": {"app": "api"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}},
                         "spec": {"containers": [{"name": "api", "image": "busybox:1.36"},
                                                 {"name": "log", "image": "busybox:1.36"}]}},
        },
    }
    apps.create_namespaced_deployment("default", body)
    # The Python client sends strategic merge patch for dict bodies.
    patched = apps.patch_namespaced_deployment(
        "api", "default", {"spec": {"template": {"spec": {"containers": [{"name": "log", "image": "busybox:1.37"}]}}}}
    )
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [
        ("api", "busybox:1.36"), ("log", "busybox:1.37")]
    scaled = apps.patch_namespaced_deployment_scale("api", "default", {"spec": {"replicas": 4}})
    assert scaled.spec.replicas == 4
    assert apps.read_namespaced_deployment_scale("api", "default").status.selector == "app=api"
    status = apps.patch_namespaced_deployment_status("api", "default", {"status": {"replicas": 4, "readyReplicas": 2},
                                                                            "spec": {"replicas": 9}})
    assert status.status.ready_replicas == 2 and status.spec.replicas == 4


def test_watch_from_resource_version_and_bookmarks(master):
    core = client.CoreV1Api(master.client())
    listed = core.list_namespaced_config_map("default")
    seen = []

    def consume():
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version,
                              timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 3:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    import time
    time.sleep(1)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w")))
    core.patch_namespaced_config_map("w", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w", "default")
    thread.join(timeout=15)
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_graceful_pod_deletion_and_binding(master):
    core = client.CoreV1Api(master.client())
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="pi-1")))
    core.create_namespaced_pod("default", pod("bound"))
    core.create_namespaced_pod_binding(
        "bound", "default",
        client.V1Binding(metadata=client.V1ObjectMeta(name="bound"), target=client.V1ObjectReference(kind="Node", name="pi-1")),
        _preload_content=False,
    )
    bound = core.read_namespaced_pod("bound", "default")
    assert bound.spec.node_name == "pi-1"
    assert any(c.type == "PodScheduled" and c.status == "True" for c in bound.status.conditions)
    with pytest.raises(ApiException) as again:
        core.create_namespaced_pod_binding(
            "bound", "default",
            client.V1Binding(metadata=client.V1ObjectMeta(name="bound"), target=client.V1ObjectReference(kind="Node", name="pi-2")),
            _preload_content=False,
        )
    assert again.value.status == 409
    # A pod on a node terminates gracefully: it stays, marked, until its agent confirms.
    core.delete_namespaced_pod("bound", "default")
    terminating = core.read_namespaced_pod("bound", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("bound", "default", grace_period_seconds=0)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("bound", "default")


def test_finalizers_hold_deletion(master):
    core = client.CoreV1Api(master.client())
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="held", finalizers=["example.com/hold"]))
    )
    core.delete_namespaced_config_map("held", "default")
    held = core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("held", "default")
    assert gone.value.status == 404


def test_other_resources_round_trip(master):
    api = master.client()
    core = client.CoreV1Api(api)
    core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"}))
    assert core.read_namespaced_secret("s", "default").data == {"k": "dg=="}
    svc = core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="headless"),
        spec=client.V1ServiceSpec(cluster_ip="None", selector={"app": "x"}, ports=[client.V1ServicePort(port=80)])))
    assert svc.spec.cluster_ip == "None"
    batch = client.BatchV1Api(api)
    job = batch.create_namespaced_job("default", client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never", containers=[client.V1Container(name="c", image="busybox:1.36")])))))
    assert job.spec.backoff_limit == 6
    assert job.spec.selector.match_labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid
    v1 = client.AutoscalingV1Api(api)
    hpa = v1.create_namespaced_horizontal_pod_autoscaler("default", client.V1HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V1CrossVersionObjectReference(kind="Deployment", name="web", api_version="apps/v1"),
            max_replicas=5, target_cpu_utilization_percentage=60)))
    assert hpa.spec.target_cpu_utilization_percentage == 60
    v2 = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("web", "default")
    assert v2.spec.metrics[0].resource.target.average_utilization == 60
    leases = client.CoordinationV1Api(api)
    leases.create_namespaced_lease("kube-node-lease", client.V1Lease(
        metadata=client.V1ObjectMeta(name="pi-1"), spec=client.V1LeaseSpec(holder_identity="pi-1", lease_duration_seconds=40)))
    assert leases.read_namespaced_lease("pi-1", "kube-node-lease").spec.holder_identity == "pi-1"
    quota = core.create_namespaced_resource_quota("default", client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="q"), spec=client.V1ResourceQuotaSpec(hard={"pods": "10"})))
    assert quota.spec.hard == {"pods": "10"}


def test_every_kind_reads_back_through_the_typed_api(master):
    """Each kind's create answer and read-back deserialise into the client's models, whose
    required status fields (a DaemonSet's counts, an HPA's replicas) must be there."""
    api = master.client()
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    labels = {"app": "kinds"}
    selector = client.V1LabelSelector(match_labels=labels)
    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")],
                              volumes=[client.V1Volume(name="scratch")]))

    def meta(name="kinds"):
        return client.V1ObjectMeta(name=name)

    daemon_set = apps.create_namespaced_daemon_set("default", client.V1DaemonSet(
        metadata=meta(), spec=client.V1DaemonSetSpec(selector=selector, template=template)))
    assert (daemon_set.status.current_number_scheduled, daemon_set.status.desired_number_scheduled,
            daemon_set.status.number_misscheduled, daemon_set.status.number_ready) == (0, 0, 0, 0)
    assert apps.read_namespaced_daemon_set("kinds", "default").status.number_ready == 0
    # A volume naming no source is an emptyDir, in templates as in pods.
    assert daemon_set.spec.template.spec.volumes[0].empty_dir == client.V1EmptyDirVolumeSource()

    deployment = apps.create_namespaced_deployment("default", client.V1Deployment(
        metadata=meta(), spec=client.V1DeploymentSpec(selector=selector, template=template)))
    assert deployment.status is not None
    replica_set = apps.create_namespaced_replica_set("default", client.V1ReplicaSet(
        metadata=meta("kinds-rs"), spec=client.V1ReplicaSetSpec(replicas=0, selector=selector, template=template)))
    assert replica_set.status.replicas == 0
    rc = core.create_namespaced_replication_controller("default", client.V1ReplicationController(
        metadata=meta(), spec=client.V1ReplicationControllerSpec(replicas=0, selector=labels, template=template)))
    assert rc.status.replicas == 0
    job_template = client.V1PodTemplateSpec(spec=client.V1PodSpec(
        restart_policy="Never", containers=[client.V1Container(name="c", image="busybox:1.36")]))
    job = batch.create_namespaced_job("default", client.V1Job(metadata=meta(), spec=client.V1JobSpec(template=job_template)))
    assert job.status is not None

    target = client.V2CrossVersionObjectReference(kind="Deployment", name="kinds", api_version="apps/v1")
    hpa = client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler("default", client.V2HorizontalPodAutoscaler(
        metadata=meta(), spec=client.V2HorizontalPodAutoscalerSpec(scale_target_ref=target, max_replicas=5)))
    assert hpa.status.desired_replicas == 0
    assert hpa.spec.metrics[0].resource.target.average_utilization == 80
    hpa_v1 = client.AutoscalingV1Api(api).read_namespaced_horizontal_pod_autoscaler("kinds", "default")
    # Present from the first response; the autoscaler may already have counted the target.
    assert isinstance(hpa_v1.status.current_replicas, int)
    assert isinstance(hpa_v1.status.desired_replicas, int)

    pod = core.create_namespaced_pod("default", client.V1Pod(metadata=meta(), spec=template.spec))
    assert (pod.status.phase, pod.status.qos_class) == ("Pending", "BestEffort")
    assert pod.spec.volumes[0].empty_dir is not None
    service = core.create_namespaced_service("default", client.V1Service(
        metadata=meta(), spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(port=80)])))
    assert service.status.load_balancer == client.V1LoadBalancerStatus()
    namespace = core.create_namespace(client.V1Namespace(metadata=meta()))
    assert namespace.status.phase == "Active"
    node = core.create_node(client.V1Node(metadata=meta("kinds-node")))
    assert node.status.node_info.kubelet_version == ""
    assert node.status.daemon_endpoints.kubelet_endpoint.port == 0
    assert core.read_node("kinds-node").status.node_info.architecture == ""
    quota = core.create_namespaced_resource_quota("default", client.V1ResourceQuota(
        metadata=meta(), spec=client.V1ResourceQuotaSpec(hard={"pods": "10"})))
    assert quota.spec.hard == {"pods": "10"}

    # Lists go through the same models.
    assert [d.metadata.name for d in apps.list_namespaced_daemon_set("default").items] == ["kinds"]
    assert "kinds-node" in [n.metadata.name for n in core.list_node().items]


def test_watch_with_selector_sees_objects_leave_and_enter(master):
    core = client.CoreV1Api(master.client())
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="m", labels={"app": "web"})))
    listed = core.list_namespaced_config_map("default", label_selector="app=web")
    seen = []

    def consume():
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_config_map, "default", label_selector="app=web",
                              resource_version=listed.metadata.resource_version, timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 2:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    import time
    time.sleep(1)
    # Relabelled out of the selector: the watcher sees it leave, then come back.
    core.patch_namespaced_config_map("m", "default", {"metadata": {"labels": {"app": "other"}}})
    core.patch_namespaced_config_map("m", "default", {"metadata": {"labels": {"app": "web"}}})
    thread.join(timeout=15)
    assert seen == [("DELETED", "m"), ("ADDED", "m")]


def test_server_side_dry_run_stores_nothing(master):
    result = master.kubectl("create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server", "-o", "json")
    assert '"dry"' in result.stdout
    assert master.kubectl("get", "configmap", "dry", check=False).returncode != 0
