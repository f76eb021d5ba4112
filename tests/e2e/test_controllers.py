"""Controllers, scheduler and node health against simulated nodes, driven with real kubectl."""

import json
import threading
import time

from conftest import manifest, wait_for


def pods(master, selector, namespace="default"):
    return master.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def is_ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def live(pod):
    return "deletionTimestamp" not in pod["metadata"] and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


def ready_by_node(master, selector):
    placement = {}
    for pod in pods(master, selector):
        if live(pod) and is_ready(pod):
            node = pod["spec"]["nodeName"]
            placement[node] = placement.get(node, 0) + 1
    return placement


def deployment(name, replicas, image="registry.local/web:v1", annotations=None, strategy=None, requests=None):
    container = {"name": "web", "image": image}
    if requests:
        container["resources"] = {"requests": requests}
    spec = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
            "spec": {"containers": [container]},
        },
    }
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def test_deployment_spreads_evenly_and_heals_when_a_node_dies(demo_cluster):
    master, sim = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 6)))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    assert wait_for(lambda: ready_by_node(master, "app=web") == {"sim-1": 2, "sim-2": 2, "sim-3": 2}, what="2/2/2 placement")

    killed = time.monotonic()
    sim.chaos("kill", "sim-2")

    def healed():
        placement = ready_by_node(master, "app=web")
        return sum(placement.values()) == 6 and "sim-2" not in placement and placement

    # The demo profile promises replacements within 5 s of a node's death.
    placement = wait_for(healed, timeout=5.0, interval=0.05, what="6 ready pods on the surviving nodes")
    print(f"healed in {time.monotonic() - killed:.2f}s: {placement}")
    assert placement == {"sim-1": 3, "sim-3": 3}
    node = master.kubectl_json("get", "node", "sim-2")
    assert {t["key"] for t in node["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown"
    events = master.kubectl("get", "events", "--field-selector", "reason=TaintManagerEviction").stdout
    assert "Marking for deletion Pod default/web-" in events

    # The node comes back: it is Ready again, untainted, and the pods it was running are gone
    # rather than duplicated.
    sim.chaos("revive", "sim-2")
    wait_for(lambda: sim.ready_nodes() == 3, what="sim-2 to rejoin")
    wait_for(lambda: all(p["spec"]["nodeName"] != "sim-2" for p in pods(master, "app=web")), what="stale pods to be cleaned up")
    assert sum(ready_by_node(master, "app=web").values()) == 6
    assert len(pods(master, "app=web")) == 6


def test_rolling_update_keeps_enough_pods_ready_and_rolls_back(demo_cluster):
    master, _ = demo_cluster
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
    slow_start = {"sim.bramble.dev/ready-after-seconds": "0.5"}
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 4, annotations=slow_start, strategy=strategy)))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")

    lowest = [4]
    stop = threading.Event()

    def watch_ready():
        while not stop.is_set():
            ready = sum(ready_by_node(master, "app=web").values())
            lowest[0] = min(lowest[0], ready)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_ready)
    watcher.start()
    try:
        master.kubectl("set", "image", "deployment/web", "web=registry.local/web:v2")
        status = master.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert "successfully rolled out" in status.stdout
    finally:
        stop.set()
        watcher.join()
    assert lowest[0] >= 4 - 1, f"ready pods dropped to {lowest[0]} during the rollout"
    images = {p["spec"]["containers"][0]["image"] for p in pods(master, "app=web") if live(p)}
    assert images == {"registry.local/web:v2"}

    history = master.kubectl("rollout", "history", "deployment/web").stdout
    assert "1 " in history and "2 " in history
    master.kubectl("rollout", "undo", "deployment/web")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    d = master.kubectl_json("get", "deployment", "web")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/web:v1"
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    wait_for(
        lambda: {p["spec"]["containers"][0]["image"] for p in pods(master, "app=web")} == {"registry.local/web:v1"},
        what="only v1 pods after the undo",
    )
    # The rollback reused the first ReplicaSet rather than making a third; it remembers the
    # revision it had.
    sets = master.kubectl_json("get", "rs", "-l", "app=web")["items"]
    assert len(sets) == 2
    reused = next(s for s in sets if s["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3")
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"

    master.kubectl("rollout", "restart", "deployment/web")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    assert len(master.kubectl_json("get", "rs", "-l", "app=web")["items"]) == 3


def test_replication_controller_keeps_its_count_and_releases_relabelled_pods(demo_cluster):
    master, _ = demo_cluster
    rc = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "kitten"},
        "spec": {
            "replicas": 4,
            "selector": {"app": "kitten"},
            "template": {"metadata": {"labels": {"app": "kitten"}}, "spec": {"containers": [{"name": "c", "image": "kitten"}]}},
        },
    }
    master.kubectl("apply", "-f", "-", input=manifest(rc))
    wait_for(lambda: sum(ready_by_node(master, "app=kitten").values()) == 4, what="4 kittens")
    first = sorted(p["metadata"]["name"] for p in pods(master, "app=kitten"))
    master.kubectl("delete", "pod", first[0], first[1], "--wait=false")
    wait_for(
        lambda: sum(ready_by_node(master, "app=kitten").values()) == 4
        and not {first[0], first[1]} & {p["metadata"]["name"] for p in pods(master, "app=kitten")},
        what="the RC to replace deleted pods",
    )
    status = master.kubectl_json("get", "rc", "kitten")["status"]
    assert status["replicas"] == 4 and status["readyReplicas"] == 4

    # Relabelling a pod takes it out of the set: it keeps running, unowned, and is replaced.
    victim = pods(master, "app=kitten")[0]["metadata"]["name"]
    master.kubectl("label", "pod", victim, "app=debug", "--overwrite")
    wait_for(lambda: sum(ready_by_node(master, "app=kitten").values()) == 4, what="a replacement for the relabelled pod")
    released = master.kubectl_json("get", "pod", victim)
    assert not released["metadata"].get("ownerReferences")
    # Labelling it back makes the RC adopt it and remove a surplus pod.
    master.kubectl("label", "pod", victim, "app=kitten", "--overwrite")
    wait_for(lambda: len([p for p in pods(master, "app=kitten") if live(p)]) == 4, what="the surplus pod to go")
    adopted = master.kubectl_json("get", "pod", victim)
    if "deletionTimestamp" not in adopted["metadata"]:
        assert adopted["metadata"]["ownerReferences"][0]["name"] == "kitten"


def test_deleting_a_deployment_removes_its_replica_sets_and_pods(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 3)))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    master.kubectl("delete", "deployment", "web")
    wait_for(lambda: not master.kubectl_json("get", "rs", "-l", "app=web")["items"], what="the ReplicaSet to go")
    wait_for(lambda: not pods(master, "app=web"), what="the pods to go")

    # Foreground: the Deployment itself stays until its dependents are gone.
    master.kubectl("apply", "-f", "-", input=manifest(deployment("api", 2)))
    master.kubectl("rollout", "status", "deployment/api", "--timeout=30s")
    master.kubectl("delete", "deployment", "api", "--cascade=foreground", "--timeout=30s")
    assert not master.kubectl_json("get", "rs", "-l", "app=api")["items"]
    assert master.kubectl("get", "deployment", "api", check=False).returncode != 0

    # Foreground with nothing to wait for still completes.
    empty = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "empty"},
             "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "empty"}},
                      "template": {"metadata": {"labels": {"app": "empty"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    master.kubectl("apply", "-f", "-", input=manifest(empty))
    master.kubectl("delete", "rs", "empty", "--cascade=foreground", "--timeout=20s")

    # Orphan: the ReplicaSet and pods stay, without an owner.
    master.kubectl("apply", "-f", "-", input=manifest(deployment("keep", 2)))
    master.kubectl("rollout", "status", "deployment/keep", "--timeout=30s")
    master.kubectl("delete", "deployment", "keep", "--cascade=orphan")
    time.sleep(1)
    sets = master.kubectl_json("get", "rs", "-l", "app=keep")["items"]
    assert len(sets) == 1 and not sets[0]["metadata"].get("ownerReferences")
    assert len(pods(master, "app=keep")) == 2


def test_unschedulable_pod_stays_pending_with_the_reason(demo_cluster):
    master, _ = demo_cluster
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "x"}]},
    }
    master.kubectl("apply", "-f", "-", input=manifest(pod))

    def unschedulable():
        p = master.kubectl_json("get", "pod", "picky")
        return next((c for c in p["status"].get("conditions", []) if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    condition = wait_for(unschedulable, what="PodScheduled=False")
    assert condition["reason"] == "Unschedulable"
    # As upstream since preemption: what was tried after the filters failed follows.
    assert condition["message"] == ("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
                                     "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    described = master.kubectl("describe", "pod", "picky").stdout
    assert "FailedScheduling" in described and "didn't match Pod's node affinity/selector" in described
    assert master.kubectl_json("get", "pod", "picky")["status"]["phase"] == "Pending"

    # A node that matches arrives: the pod is scheduled there.
    master.kubectl("label", "node", "sim-3", "disk=ssd")
    wait_for(lambda: master.kubectl_json("get", "pod", "picky")["spec"].get("nodeName") == "sim-3", what="the pod on sim-3")

    # Pods for another scheduler are left alone.
    other = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "custom"},
             "spec": {"schedulerName": "my-scheduler", "containers": [{"name": "c", "image": "x"}]}}
    master.kubectl("apply", "-f", "-", input=manifest(other))
    time.sleep(1.5)
    assert not master.kubectl_json("get", "pod", "custom")["spec"].get("nodeName")


def test_autoscaler_follows_reported_cpu(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 2, requests={"cpu": "100m"})))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2,
            "maxReplicas": 6,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
    }
    # kubectl's generator sends the HPA as protobuf.
    master.kubectl("autoscale", "deployment", "web", "--cpu=70%", "--min=1", "--max=3", "--name=generated")
    generated = master.kubectl_json("get", "hpa", "generated")["spec"]
    assert generated["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert (generated["minReplicas"], generated["maxReplicas"]) == (1, 3)
    master.kubectl("delete", "hpa", "generated")
    master.kubectl("apply", "-f", "-", input=manifest(hpa))
    wait_for(lambda: "cpu: " in master.kubectl("get", "hpa", "web").stdout and "<unknown>" not in master.kubectl("get", "hpa", "web").stdout,
             timeout=30, what="the HPA to read usage")
    top = master.kubectl("top", "pods", "-l", "app=web").stdout
    assert "CPU(cores)" in top and "web-" in top

    # Load: each pod reports 4x its request.
    master.kubectl("annotate", "pods", "-l", "app=web", "sim.bramble.dev/cpu=400m", "--overwrite")
    wait_for(lambda: master.kubectl_json("get", "deployment", "web")["spec"]["replicas"] == 6, timeout=30, what="scale up to 6")
    events = master.kubectl("describe", "hpa", "web").stdout
    assert "SuccessfulRescale" in events and "above target" in events

    # The load goes away.
    master.kubectl("annotate", "pods", "-l", "app=web", "sim.bramble.dev/cpu=5m", "--overwrite")
    wait_for(lambda: master.kubectl_json("get", "deployment", "web")["spec"]["replicas"] == 2, timeout=40, what="scale down to 2")


def test_quota_refuses_the_pod_over_it(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("create", "namespace", "small")
    master.kubectl("create", "quota", "tiny", "-n", "small", "--hard=pods=2,requests.cpu=1")
    for name in ["a", "b"]:
        master.kubectl("run", name, "-n", "small", "--image=x", "--overrides",
                       json.dumps({"spec": {"containers": [{"name": name, "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}))
    refused = master.kubectl("run", "c", "-n", "small", "--image=x", "--overrides",
                             json.dumps({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "100m"}}}]}}),
                             check=False)
    assert refused.returncode != 0
    assert 'pods "c" is forbidden: exceeded quota: tiny, requested: pods=1, used: pods=2, limited: pods=2' in refused.stderr
    no_request = master.kubectl("run", "d", "-n", "small", "--image=x", check=False)
    assert "failed quota: tiny: must specify requests.cpu for: d" in no_request.stderr
    wait_for(lambda: master.kubectl_json("get", "quota", "tiny", "-n", "small").get("status", {}).get("used", {}).get("pods") == "2",
             what="quota status")
    assert master.kubectl_json("get", "quota", "tiny", "-n", "small")["status"]["used"]["requests.cpu"] == "200m"


def test_jobs_complete_and_daemon_sets_cover_every_node(demo_cluster):
    master, _ = demo_cluster
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {
            "completions": 3,
            "parallelism": 2,
            "template": {
                "metadata": {"annotations": {"sim.bramble.dev/exit-after-seconds": "0.3"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    master.kubectl("apply", "-f", "-", input=manifest(job))
    master.kubectl("wait", "--for=condition=complete", "job/batch", "--timeout=30s")
    status = master.kubectl_json("get", "job", "batch")["status"]
    assert status["succeeded"] == 3 and "completionTime" in status

    failing = json.loads(json.dumps(job))
    failing["metadata"]["name"] = "doomed"
    failing["spec"]["backoffLimit"] = 1
    failing["spec"]["template"]["metadata"]["annotations"]["sim.bramble.dev/exit-code"] = "1"
    master.kubectl("apply", "-f", "-", input=manifest(failing))
    master.kubectl("wait", "--for=condition=failed", "job/doomed", "--timeout=30s")
    assert master.kubectl_json("get", "job", "doomed")["status"]["failed"] == 2

    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "agent:v1"}]}},
        },
    }
    master.kubectl("apply", "-f", "-", input=manifest(ds))
    master.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    assert ready_by_node(master, "app=agent") == {"sim-1": 1, "sim-2": 1, "sim-3": 1}
    master.kubectl("set", "image", "daemonset/agent", "c=agent:v2")
    master.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in pods(master, "app=agent")} == {"agent:v2"}, what="v2 daemons")


def test_endpoints_follow_ready_pods(demo_cluster):
    master, sim = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 3)))
    master.kubectl("expose", "deployment", "web", "--port=80", "--target-port=8080")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")

    def addresses():
        subsets = master.kubectl_json("get", "endpoints", "web").get("subsets") or []
        return sorted(a["ip"] for s in subsets for a in s.get("addresses", []))

    ips = sorted(p["status"]["podIP"] for p in pods(master, "app=web"))
    wait_for(lambda: addresses() == ips, what="three endpoint addresses")
    ports = master.kubectl_json("get", "endpoints", "web")["subsets"][0]["ports"]
    assert ports == [{"port": 8080, "protocol": "TCP"}]
    # kubectl describe reads EndpointSlices.
    described = master.kubectl("describe", "service", "web").stdout
    assert "Endpoints:" in described and ",".join(f"{ip}:8080" for ip in ips) in described
    slice_ = master.kubectl_json("get", "endpointslices", "-l", "kubernetes.io/service-name=web")["items"][0]
    assert sorted(e["addresses"][0] for e in slice_["endpoints"]) == ips

    # The pod on a dead node leaves the endpoints; its replacement joins them.
    victim = next(p for p in pods(master, "app=web") if p["spec"]["nodeName"] == "sim-1")
    sim.chaos("kill", "sim-1")
    wait_for(lambda: victim["status"]["podIP"] not in addresses() and len(addresses()) == 3, what="endpoints without sim-1")
    master.kubectl("delete", "service", "web")
    wait_for(lambda: master.kubectl("get", "endpoints", "web", check=False).returncode != 0, what="endpoints to go with the service")
    wait_for(lambda: not master.kubectl_json("get", "endpointslices")["items"], what="slices to go with the service")


def test_master_restart_keeps_pods_and_nodes(demo_cluster):
    master, sim = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 3)))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    before = sorted(p["metadata"]["name"] for p in pods(master, "app=web"))

    # A pulled plug: the master dies without warning and comes back.
    master.kill()
    master.start()
    wait_for(lambda: sim.ready_nodes() == 3, what="nodes Ready after the restart")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    time.sleep(2)
    # The same pods, none duplicated, no node declared dead for the master's own absence.
    assert sorted(p["metadata"]["name"] for p in pods(master, "app=web")) == before
    assert "NodeNotReady" not in master.kubectl("get", "events").stdout


def test_drain_recreate_and_pause(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(deployment("web", 3, strategy={"type": "Recreate"})))
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")

    master.kubectl("drain", "sim-1", "--ignore-daemonsets", "--timeout=30s")
    wait_for(lambda: sum(ready_by_node(master, "app=web").values()) == 3 and "sim-1" not in ready_by_node(master, "app=web"),
             what="pods moved off the drained node")
    assert master.kubectl_json("get", "node", "sim-1")["spec"]["unschedulable"] is True
    master.kubectl("uncordon", "sim-1")

    # Recreate: the old pods are all gone before any new one exists.
    old = {p["metadata"]["name"] for p in pods(master, "app=web")}
    master.kubectl("set", "image", "deployment/web", "web=registry.local/web:v2")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    assert not old & {p["metadata"]["name"] for p in pods(master, "app=web")}
    events = master.kubectl("get", "events", "--field-selector", "involvedObject.kind=Deployment", "-o", "json").stdout
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert any("to 0" in m for m in messages)

    # Paused: template changes wait for resume.
    master.kubectl("rollout", "pause", "deployment/web")
    master.kubectl("set", "image", "deployment/web", "web=registry.local/web:v3")
    time.sleep(1)
    assert {p["spec"]["containers"][0]["image"] for p in pods(master, "app=web")} == {"registry.local/web:v2"}
    progressing = next(c for c in master.kubectl_json("get", "deployment", "web")["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "DeploymentPaused"
    master.kubectl("rollout", "resume", "deployment/web")
    master.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in pods(master, "app=web")} == {"registry.local/web:v3"}, what="v3 after resume")
