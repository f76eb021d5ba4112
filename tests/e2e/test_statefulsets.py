"""StatefulSets and ControllerRevisions against simulated nodes, driven with real kubectl."""

import threading
import time

from conftest import manifest, wait_for


def pods(master, selector):
    return master.kubectl_json("get", "pods", "-l", selector)["items"]


def is_ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def live(pod):
    return "deletionTimestamp" not in pod["metadata"]


def images(master, selector):
    """Live pod name → image."""
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods(master, selector) if live(p)}


def headless_service():
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "nginx"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    }


def stateful_set(replicas):
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "serviceName": "nginx",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                # Each pod takes a moment to become ready, so an out-of-order start would show.
                "metadata": {"labels": {"app": "web"}, "annotations": {"sim.bramble.dev/ready-after-seconds": "0.4"}},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:v1", "ports": [{"name": "http", "containerPort": 80}]}]},
            },
        },
    }


class Watcher:
    """Polls the set's pods: the order they appear in, and whether each lower pod was Ready then."""

    def __init__(self, master):
        self.master = master
        self.order = []
        self.violations = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            found = {p["metadata"]["name"]: p for p in pods(self.master, "app=web") if live(p)}
            for name in sorted(found, key=lambda n: int(n.rsplit("-", 1)[1])):
                if name in self.order:
                    continue
                self.order.append(name)
                ordinal = int(name.rsplit("-", 1)[1])
                lower = [found.get(f"web-{i}") for i in range(ordinal)]
                if not all(p is not None and is_ready(p) for p in lower):
                    self.violations.append(name)
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join()


def test_statefulset_comes_up_in_order_scales_and_rolls_by_partition(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(headless_service()))
    watcher = Watcher(master)
    try:
        master.kubectl("apply", "-f", "-", input=manifest(stateful_set(3)))
        status = master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    finally:
        watcher.finish()
    assert "partitioned roll out complete: 3 new pods have been updated..." in status.stdout
    assert watcher.order == ["web-0", "web-1", "web-2"]
    assert watcher.violations == [], f"created before the pods below were ready: {watcher.violations}"

    web1 = master.kubectl_json("get", "pod", "web-1")
    assert web1["spec"]["hostname"] == "web-1" and web1["spec"]["subdomain"] == "nginx"
    labels = web1["metadata"]["labels"]
    assert labels["statefulset.kubernetes.io/pod-name"] == "web-1"
    assert labels["apps.kubernetes.io/pod-index"] == "1"
    sts = master.kubectl_json("get", "sts", "web")
    assert labels["controller-revision-hash"] == sts["status"]["updateRevision"]
    assert "3/3" in master.kubectl("get", "sts", "web").stdout
    revisions = master.kubectl("get", "controllerrevisions").stdout
    assert "statefulset.apps/web" in revisions, revisions

    def hostnames():
        endpoints = master.kubectl_json("get", "endpoints", "nginx")
        return sorted(a.get("hostname") for s in endpoints.get("subsets", []) for a in s.get("addresses", []))

    wait_for(lambda: hostnames() == ["web-0", "web-1", "web-2"], what="per-pod hostnames in the headless service")

    # Scale down removes the highest ordinals; scale up brings the same names back.
    master.kubectl("scale", "sts/web", "--replicas=1")
    wait_for(lambda: sorted(images(master, "app=web")) == ["web-0"], timeout=30, what="only web-0 left")
    master.kubectl("scale", "sts/web", "--replicas=3")
    master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    assert sorted(images(master, "app=web")) == ["web-0", "web-1", "web-2"]

    # A partitioned rolling update touches only the ordinals at or above the partition.
    master.kubectl("patch", "sts/web", "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}')
    master.kubectl("set", "image", "sts/web", "web=registry.local/web:v2")
    status = master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    assert "partitioned roll out complete: 1 new pods have been updated..." in status.stdout
    wait_for(
        lambda: images(master, "app=web")
        == {"web-0": "registry.local/web:v1", "web-1": "registry.local/web:v1", "web-2": "registry.local/web:v2"},
        timeout=30,
        what="only web-2 on v2",
    )


def history_rows(output):
    """The REVISION numbers `kubectl rollout history` lists."""
    lines = output.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("REVISION"))
    return [int(line.split()[0]) for line in lines[header + 1 :] if line.strip()]


def test_rollout_history_and_undo_for_a_statefulset_and_a_daemonset(demo_cluster):
    master, _ = demo_cluster
    master.kubectl("apply", "-f", "-", input=manifest(headless_service()))
    master.kubectl("apply", "-f", "-", input=manifest(stateful_set(2)))
    master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    master.kubectl("set", "image", "sts/web", "web=registry.local/web:v2")
    master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    wait_for(lambda: set(images(master, "app=web").values()) == {"registry.local/web:v2"}, timeout=30, what="v2 pods")

    history = master.kubectl("rollout", "history", "sts/web").stdout
    assert history.startswith("statefulset.apps/web \n"), history
    assert history_rows(history) == [1, 2]
    detail = master.kubectl("rollout", "history", "sts/web", "--revision=1").stdout
    assert "registry.local/web:v1" in detail, detail

    undo = master.kubectl("rollout", "undo", "sts/web")
    assert undo.stdout.strip() == "statefulset.apps/web rolled back"
    master.kubectl("rollout", "status", "sts/web", "--timeout=60s")
    wait_for(lambda: set(images(master, "app=web").values()) == {"registry.local/web:v1"}, timeout=30, what="v1 pods again")
    assert history_rows(master.kubectl("rollout", "history", "sts/web").stdout) == [2, 3]

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
    master.kubectl("set", "image", "daemonset/agent", "c=agent:v2")
    master.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    assert history_rows(master.kubectl("rollout", "history", "daemonset/agent").stdout) == [1, 2]
    undo = master.kubectl("rollout", "undo", "daemonset/agent")
    assert undo.stdout.strip() == "daemonset.apps/agent rolled back"
    master.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    wait_for(lambda: set(images(master, "app=agent").values()) == {"agent:v1"}, timeout=30, what="v1 daemons again")
    assert history_rows(master.kubectl("rollout", "history", "daemonset/agent").stdout) == [2, 3]
    pod = pods(master, "app=agent")[0]
    revision = master.kubectl_json("get", "controllerrevisions", "-l", "app=agent")["items"]
    hashes = {r["metadata"]["labels"]["controller-revision-hash"]: r["revision"] for r in revision}
    assert hashes[pod["metadata"]["labels"]["controller-revision-hash"]] == 3
