"""Stateful workloads on real containers: StatefulSets with claims on the default class
(local-path), their data through pod deletion, a node's death and scaling, per-pod DNS, and the
published manifests of well-known projects (tests/e2e/published/, with source and licence).

Three virtual Pis (the `pis` fixture), the demo image (busybox and a small web server) from the
local registry, and real kubectl.
"""

import json
from pathlib import Path

import pytest

from conftest import manifest, wait_for

PUBLISHED = Path(__file__).resolve().parent / "published"

# Each pod appends its name to its volume's log on every start, then serves: the log is the
# volume's history.
WRITER = "echo $(hostname) >> /data/log; exec /bin/demo-server"


def stateful_set(pis, name, replicas=3, policy="OrderedReady"):
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {
            "serviceName": name, "replicas": replicas, "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app", "image": f"{pis.demo}:1", "command": ["sh", "-c", WRITER],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
            }},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}],
        },
    }


def headless(name):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"clusterIP": "None", "selector": {"app": name}, "ports": [{"port": 8080, "name": "http"}]}}


def apply(pis, namespace, *objects):
    pis.kubectl("apply", "-n", namespace, "-f", "-", input="---\n".join(manifest(o) for o in objects))


def volume_log(pis, namespace, pod):
    return pis.kubectl("exec", "-n", namespace, pod, "--", "cat", "/data/log").stdout.split()


def ready_replicas(pis, namespace, name):
    sts = pis.kubectl_json("get", "sts", name, "-n", namespace)
    return sts.get("status", {}).get("readyReplicas", 0)


def test_a_stateful_set_keeps_each_pods_data(pis, namespace):
    apply(pis, namespace, headless("web"), stateful_set(pis, "web"))
    pis.kubectl("rollout", "status", "sts/web", "-n", namespace, "--timeout=180s")
    pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    started = sorted((p["status"]["startTime"], p["metadata"]["name"]) for p in pods)
    assert [name for _, name in started] == ["web-0", "web-1", "web-2"], "OrderedReady starts 0, 1, 2"
    claims = pis.kubectl_json("get", "pvc", "-n", namespace)["items"]
    assert sorted(c["metadata"]["name"] for c in claims) == ["data-web-0", "data-web-1", "data-web-2"]
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    assert volume_log(pis, namespace, "web-1") == ["web-1"]

    # A deleted pod comes back with its name and its data.
    pis.kubectl("delete", "pod", "web-1", "-n", namespace)
    wait_for(lambda: ready_replicas(pis, namespace, "web") == 3, timeout=120, what="web-1 back")
    assert volume_log(pis, namespace, "web-1") == ["web-1", "web-1"]

    # A node killed and revived: its pod returns to it (the claim's PV has node affinity).
    node = pis.kubectl_json("get", "pod", "web-2", "-n", namespace)["spec"]["nodeName"]
    pis.chaos("kill", node)
    wait_for(lambda: ready_replicas(pis, namespace, "web") < 3, timeout=60, what="web-2 to be lost")
    pis.chaos("revive", node)
    wait_for(lambda: ready_replicas(pis, namespace, "web") == 3, timeout=180, what="web-2 back")
    assert pis.kubectl_json("get", "pod", "web-2", "-n", namespace)["spec"]["nodeName"] == node
    assert volume_log(pis, namespace, "web-2")[0] == "web-2"

    # Scale to 1 and back: the claims stay, and the pods find their data again.
    pis.kubectl("scale", "sts/web", "--replicas=1", "-n", namespace)
    wait_for(lambda: len(pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]) == 1,
             timeout=120, what="scale down to web-0")
    assert len(pis.kubectl_json("get", "pvc", "-n", namespace)["items"]) == 3, "claims are retained"
    pis.kubectl("scale", "sts/web", "--replicas=3", "-n", namespace)
    pis.kubectl("rollout", "status", "sts/web", "-n", namespace, "--timeout=180s")
    assert volume_log(pis, namespace, "web-1")[:2] == ["web-1", "web-1"]

    # Per-pod DNS through the governing headless service, from another pod.
    answer = pis.kubectl("exec", "-n", namespace, "web-0", "--", "nslookup",
                         f"web-1.web.{namespace}.svc.cluster.local").stdout
    web1_ip = pis.kubectl_json("get", "pod", "web-1", "-n", namespace)["status"]["podIP"]
    assert web1_ip in answer, answer


def test_a_partitioned_rolling_update_and_undo(pis, namespace):
    sts = stateful_set(pis, "db")
    apply(pis, namespace, headless("db"), sts)
    pis.kubectl("rollout", "status", "sts/db", "-n", namespace, "--timeout=180s")
    pis.kubectl("patch", "sts/db", "-n", namespace, "-p",
                json.dumps({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}}))
    pis.kubectl("set", "image", "sts/db", f"app={pis.demo}:2", "-n", namespace)

    def images():
        pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=db")["items"]
        return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}

    wait_for(lambda: images().get("db-2") == f"{pis.demo}:2" and ready_replicas(pis, namespace, "db") == 3,
             timeout=180, what="db-2 updated")
    assert images()["db-0"] == images()["db-1"] == f"{pis.demo}:1", "the partition keeps 0 and 1"
    history = pis.kubectl("rollout", "history", "sts/db", "-n", namespace).stdout
    assert "REVISION" in history and "2" in history, history
    pis.kubectl("rollout", "undo", "sts/db", "-n", namespace)
    wait_for(lambda: images().get("db-2") == f"{pis.demo}:1" and ready_replicas(pis, namespace, "db") == 3,
             timeout=180, what="db-2 rolled back")


def test_a_claim_of_a_deployment_survives_its_pod_and_goes_with_its_claim(pis, namespace):
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "notes"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "notes"},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": "notes"}},
                 "template": {"metadata": {"labels": {"app": "notes"}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": f"{pis.demo}:1", "command": ["sh", "-c", WRITER],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "notes"}}]}}},
    }
    apply(pis, namespace, claim, deployment)
    pis.kubectl("rollout", "status", "deployment/notes", "-n", namespace, "--timeout=120s")

    def the_pod():
        pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=notes")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live[0]["metadata"]["name"] if len(live) == 1 and live[0]["status"].get("phase") == "Running" else None

    first = wait_for(the_pod, timeout=60, what="the notes pod")
    pis.kubectl("delete", "pod", first, "-n", namespace)
    second = wait_for(lambda: the_pod() not in (None, first) and the_pod(), timeout=120, what="a new notes pod")
    assert len(volume_log(pis, namespace, second)) == 2, "the second pod sees the first one's line"

    pv = pis.kubectl_json("get", "pvc", "notes", "-n", namespace)["spec"]["volumeName"]
    path = pis.kubectl_json("get", "pv", pv)["spec"]["hostPath"]["path"]
    assert Path(path).is_dir(), path
    pis.kubectl("delete", "deployment", "notes", "-n", namespace)
    pis.kubectl("delete", "pvc", "notes", "-n", namespace, "--timeout=60s")
    wait_for(lambda: pis.kubectl("get", "pv", pv, check=False).returncode != 0, timeout=60,
             what="the PV to be reclaimed (Delete)")
    assert not Path(path).exists(), "the provisioner removed the directory"


def swap_in_demo_image(pis, namespace, kind_name):
    """The published images come from the internet; the demo image stands in, with the probes
    that call those images' own tools removed and its own server as the command. Pods already
    made from the old template (pulling from the internet, never Ready) are deleted, as
    upstream's documentation says for a StatefulSet stuck on a broken revision."""
    patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": f"{pis.demo}:1"},
        {"op": "add", "path": "/spec/template/spec/containers/0/command", "value": ["/bin/demo-server"]},
        {"op": "remove", "path": "/spec/template/spec/containers/0/readinessProbe"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/livenessProbe"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/lifecycle"},
    ]
    spec = pis.kubectl_json("get", kind_name, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]
    patch = [p for p in patch if p["op"] != "remove" or p["path"].rsplit("/", 1)[1] in spec]
    pis.kubectl("patch", kind_name, "-n", namespace, "--type=json", "-p", json.dumps(patch))
    labels = pis.kubectl_json("get", kind_name, "-n", namespace)["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    pis.kubectl("delete", "pods", "-n", namespace, "-l", selector, "--wait=false")


@pytest.mark.parametrize("name,workloads", [
    ("cassandra.yaml", ["statefulset/cassandra"]),
    ("zookeeper.yaml", ["statefulset/zk"]),
    ("web.yaml", ["statefulset/web"]),
    ("wordpress-mysql.yaml", ["deployment/wordpress-mysql", "deployment/wordpress"]),
])
def test_published_manifests_apply_unchanged_and_run(pis, namespace, name, workloads):
    if name == "wordpress-mysql.yaml":
        pis.kubectl("create", "secret", "generic", "mysql-pass", "--from-literal=password=s3cret", "-n", namespace)
    applied = pis.kubectl("apply", "-n", namespace, "-f", str(PUBLISHED / name), check=False)
    assert applied.returncode == 0, applied.stderr
    for workload in workloads:
        swap_in_demo_image(pis, namespace, workload)
    for workload in workloads:
        status = pis.kubectl("rollout", "status", workload, "-n", namespace, "--timeout=240s",
                             check=False, timeout=260)
        assert status.returncode == 0, status.stdout + status.stderr
    claims = pis.kubectl_json("get", "pvc", "-n", namespace)["items"]
    assert claims and all(c["status"]["phase"] == "Bound" for c in claims), claims


def test_drain_honours_a_disruption_budget(pis, namespace):
    """A PDB of minAvailable 2 over 3 pods: draining the node that holds two of them evicts one,
    waits (kubectl retries on 429) until its replacement is Ready elsewhere, then the other."""
    spare = pis.nodes[2]
    pis.kubectl("cordon", spare)
    try:
        pis.kubectl("create", "deployment", "guarded", f"--image={pis.demo}:1", "--replicas=3", "-n", namespace)
        pis.kubectl("rollout", "status", "deployment/guarded", "-n", namespace, "--timeout=120s")
        pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
               "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}}
        pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(pdb))
        wait_for(lambda: pis.kubectl_json("get", "pdb", "guarded", "-n", namespace)
                 .get("status", {}).get("disruptionsAllowed") == 1, timeout=30, what="the budget's status")
    finally:
        pis.kubectl("uncordon", spare)
    pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=guarded")["items"]
    nodes = [p["spec"]["nodeName"] for p in pods]
    busiest = max(set(nodes), key=nodes.count)
    assert nodes.count(busiest) == 2, nodes
    drained = pis.kubectl("drain", busiest, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s",
                          check=False, timeout=200)
    pis.kubectl("uncordon", busiest)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "Cannot evict pod as it would violate the pod's disruption budget." in drained.stderr, drained.stderr
    assert f"node/{busiest} drained" in drained.stdout, drained.stdout
    pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=guarded")["items"]
    assert all(p["spec"]["nodeName"] != busiest for p in pods if not p["metadata"].get("deletionTimestamp"))


def test_a_cronjob_runs_real_jobs_on_schedule(pis, namespace):
    """A CronJob every minute on real containers: its Job is created on the minute, its pod
    runs the command and completes, and `kubectl create job --from` runs it at once."""
    pis.kubectl("create", "cronjob", "tick", f"--image={pis.demo}:1", "--schedule=* * * * *",
                "-n", namespace, "--", "sh", "-c", "echo tick from $(hostname)")
    pis.kubectl("create", "job", "tick-now", "--from=cronjob/tick", "-n", namespace)
    pis.kubectl("wait", "--for=condition=complete", "job/tick-now", "-n", namespace, "--timeout=60s")
    assert "tick from tick-now-" in pis.kubectl("logs", "job/tick-now", "-n", namespace).stdout

    def scheduled_jobs():
        jobs = pis.kubectl_json("get", "jobs", "-n", namespace)["items"]
        return [j for j in jobs if j["metadata"].get("annotations", {}).get(
            "batch.kubernetes.io/cronjob-scheduled-timestamp")]

    job = wait_for(lambda: scheduled_jobs(), timeout=75, interval=0.5, what="a scheduled Job")[0]
    name = job["metadata"]["name"]
    created = job["metadata"]["creationTimestamp"]
    assert created.endswith(":00Z") or created[-3:-1] in ("00", "01"), f"created {created}, on the minute"
    pis.kubectl("wait", "--for=condition=complete", f"job/{name}", "-n", namespace, "--timeout=60s")
    cronjob = wait_for(lambda: pis.kubectl_json("get", "cronjob", "tick", "-n", namespace)
                       .get("status", {}).get("lastSuccessfulTime") and
                       pis.kubectl_json("get", "cronjob", "tick", "-n", namespace),
                       timeout=30, what="lastSuccessfulTime")
    assert cronjob["status"]["lastScheduleTime"]
