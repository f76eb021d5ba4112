"""Persistent volumes on the master: classes, claims, binding, reclaim and WaitForFirstConsumer,
against simulated nodes with real kubectl."""

import time

from conftest import manifest, wait_for


def claim(name, size="1Gi", class_name=None, modes=("ReadWriteOnce",)):
    spec = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if class_name is not None:
        spec["storageClassName"] = class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}


def volume(name, size, class_name, policy="Retain"):
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"tier": "manual"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": policy,
            "storageClassName": class_name,
            "hostPath": {"path": f"/data/{name}"},
        },
    }


def pod(name, claim_name):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "app", "image": "registry.local/app:1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


def rows(master, *args):
    """`kubectl get` output as header + rows of whitespace-separated cells."""
    lines = master.kubectl("get", *args).stdout.strip().splitlines()
    return [line.split() for line in lines]


def phase(master, kind, name):
    return master.kubectl_json("get", kind, name).get("status", {}).get("phase")


def test_classes_claims_and_volumes_bind_and_print_as_upstream(demo_cluster):
    master, _ = demo_cluster
    manual = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "manual"},
        "provisioner": "kubernetes.io/no-provisioner",
    }
    objects = [manual, volume("pv-small", "1Gi", "manual"), volume("pv-big", "5Gi", "manual"), claim("data", "1Gi", "manual")]
    master.kubectl("apply", "-f", "-", input="---\n".join(manifest(o) for o in objects))

    header, *classes = rows(master, "storageclass")
    assert header == ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"]
    by_name = {c[0]: c for c in classes}
    assert by_name["local-path"][:5] == ["local-path", "(default)", "bramble.dev/local-path", "Delete", "WaitForFirstConsumer"]
    assert by_name["manual"][:5] == ["manual", "kubernetes.io/no-provisioner", "Delete", "Immediate", "false"]

    wait_for(lambda: phase(master, "pvc", "data") == "Bound", what="the claim to bind")
    header, *claims = rows(master, "pvc")
    assert header == ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"]
    assert claims[0][:7] == ["data", "Bound", "pv-small", "1Gi", "RWO", "manual", "<unset>"]
    header, *volumes = rows(master, "pv")
    assert header == ["NAME", "CAPACITY", "ACCESS", "MODES", "RECLAIM", "POLICY", "STATUS", "CLAIM",
                      "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "REASON", "AGE"]
    by_name = {v[0]: v for v in volumes}
    assert by_name["pv-small"][:7] == ["pv-small", "1Gi", "RWO", "Retain", "Bound", "default/data", "manual"]
    assert by_name["pv-big"][:5] == ["pv-big", "5Gi", "RWO", "Retain", "Available"]

    claimed = master.kubectl_json("get", "pvc", "data")
    assert claimed["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert claimed["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"

    # Retain: the claim goes, the volume stays Released with its old claim.
    master.kubectl("delete", "pvc", "data", "--timeout=20s")
    wait_for(lambda: phase(master, "pv", "pv-small") == "Released", what="the volume to be released")
    assert master.kubectl_json("get", "pv", "pv-small")["spec"]["claimRef"]["name"] == "data"

    # Upstream's messages for common mistakes.
    bad = master.kubectl("apply", "-f", "-", input=manifest({**claim("bad"), "spec": {"resources": {}}}), check=False)
    assert bad.returncode != 0
    assert "spec.accessModes: Required value: at least 1 access mode is required" in bad.stderr
    assert "spec.resources[storage]: Required value" in bad.stderr


def test_wait_for_first_consumer_binds_once_the_pod_is_scheduled(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(claim("cache")))
    created = master.kubectl_json("get", "pvc", "cache")
    assert created["spec"]["storageClassName"] == "local-path"
    time.sleep(0.5)
    assert phase(master, "pvc", "cache") == "Pending"
    events = master.kubectl("get", "events", "--field-selector", "involvedObject.name=cache").stdout
    assert "waiting for first consumer to be created before binding" in events

    master.kubectl("apply", "-f", "-", input=manifest(pod("app", "cache")))
    scheduled = wait_for(lambda: master.kubectl_json("get", "pod", "app")["spec"].get("nodeName"), timeout=10,
                         interval=0.02, what="the pod to be scheduled")
    bound = master.kubectl_json("get", "pvc", "cache")
    assert bound["status"]["phase"] == "Bound", "the pod is bound only after its claim"
    assert bound["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == scheduled
    volume_name = f"pvc-{created['metadata']['uid']}"
    assert bound["spec"]["volumeName"] == volume_name
    pv = master.kubectl_json("get", "pv", volume_name)
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "bramble.dev/local-path"
    assert pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert pv["spec"]["hostPath"]["path"].endswith(f"/{volume_name}_default_cache")
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [scheduled]

    # A claim in use stays Terminating until its pod goes.
    master.kubectl("delete", "pvc", "cache", "--wait=false")
    time.sleep(0.5)
    header, *claims = rows(master, "pvc")
    assert claims[0][:2] == ["cache", "Terminating"]
    master.kubectl("delete", "pod", "app", "--grace-period=0", "--force", check=False)
    wait_for(lambda: not master.kubectl("get", "pvc", "cache", check=False).returncode == 0, timeout=20,
             what="the claim to go with its pod")
    # Delete policy: the volume is Released and left for its node to clean up.
    wait_for(lambda: phase(master, "pv", volume_name) == "Released", what="the provisioned volume to be released")


def test_a_pod_with_an_unbound_immediate_claim_is_unschedulable(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(claim("orphan", class_name="")))
    master.kubectl("apply", "-f", "-", input=manifest(pod("waiting", "orphan")))

    def message():
        conditions = master.kubectl_json("get", "pod", "waiting").get("status", {}).get("conditions", [])
        return next((c.get("message") for c in conditions if c["type"] == "PodScheduled"), None)

    text = wait_for(message, what="a FailedScheduling condition")
    assert text == ("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
                    "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
