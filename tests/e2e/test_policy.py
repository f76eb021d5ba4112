"""Disruption budgets, `kubectl drain`, priorities with preemption, and limit ranges, through
real kubectl against a master with simulated nodes."""

import re

from conftest import manifest, wait_for


def deployment(name, replicas, labels, cpu="100m", priority_class=None):
    spec = {
        "containers": [
            {"name": "app", "image": "registry.local/app:1", "resources": {"requests": {"cpu": cpu}}}
        ]
    }
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def pods_of(m, selector):
    return m.kubectl_json("get", "pods", "-l", selector)["items"]


def ready(pod):
    return pod.get("metadata", {}).get("deletionTimestamp") is None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def test_drain_respects_a_disruption_budget(demo_cluster):
    m, _ = demo_cluster
    # Two of the three pods on one node: the third node takes none while cordoned.
    m.kubectl("cordon", "sim-3")
    m.kubectl("apply", "-f", "-", input=manifest(deployment("web", 3, {"app": "web"})))
    wait_for(lambda: sum(ready(p) for p in pods_of(m, "app=web")) == 3, timeout=60, what="3 ready pods")
    m.kubectl("uncordon", "sim-3")
    m.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "web-pdb", "namespace": "default"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            }
        ),
    )
    wait_for(
        lambda: m.kubectl_json("get", "pdb", "web-pdb")["status"].get("disruptionsAllowed") == 1,
        what="the budget to allow one disruption",
    )
    table = m.kubectl("get", "pdb").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == [
        "NAME",
        "MIN AVAILABLE",
        "MAX UNAVAILABLE",
        "ALLOWED DISRUPTIONS",
        "AGE",
    ]
    assert re.split(r"\s+", table[1].strip())[:4] == ["web-pdb", "2", "N/A", "1"]

    by_node = {}
    for pod in pods_of(m, "app=web"):
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod["metadata"]["name"])
    crowded = next(node for node, names in by_node.items() if len(names) == 2)
    drained = m.kubectl("drain", crowded, "--timeout=120s", timeout=150)
    out = drained.stdout + drained.stderr
    assert f"node/{crowded} cordoned" in out
    assert f"node/{crowded} drained" in out
    for name in by_node[crowded]:
        assert f"evicting pod default/{name}" in out
        assert f"pod/{name} evicted" in out
    # One of the two had to wait for the replacement of the other to be Ready.
    assert (
        "(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget." in out
    ), out
    node = m.kubectl_json("get", "node", crowded)
    assert node["spec"].get("unschedulable") is True
    pods = pods_of(m, "app=web")
    assert all(p["spec"]["nodeName"] != crowded for p in pods if p["metadata"].get("deletionTimestamp") is None)
    wait_for(lambda: sum(ready(p) for p in pods_of(m, "app=web")) == 3, timeout=60, what="3 ready pods again")


def test_a_high_priority_pod_preempts_on_a_full_cluster(demo_cluster):
    m, _ = demo_cluster
    classes = [
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": n}, "value": v}
        for n, v in [("batch", 10), ("urgent", 1000)]
    ]
    for c in classes:
        m.kubectl("apply", "-f", "-", input=manifest(c))
    table = m.kubectl("get", "priorityclass").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]
    rows = {re.split(r"\s+", line.strip())[0]: re.split(r"\s+", line.strip()) for line in table[1:]}
    assert rows["system-node-critical"][1:3] == ["2000001000", "false"]
    assert rows["system-node-critical"][4] == "PreemptLowerPriority"
    assert rows["urgent"][1] == "1000"

    # Each simulated node has 4 CPUs: three 3-CPU pods fill the cluster.
    m.kubectl("apply", "-f", "-", input=manifest(deployment("filler", 3, {"app": "filler"}, "3", "batch")))
    wait_for(lambda: sum(ready(p) for p in pods_of(m, "app=filler")) == 3, timeout=60, what="a full cluster")
    m.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "important", "namespace": "default"},
                "spec": {
                    "priorityClassName": "urgent",
                    "containers": [
                        {"name": "app", "image": "registry.local/app:1", "resources": {"requests": {"cpu": "2"}}}
                    ],
                },
            }
        ),
    )
    pod = wait_for(
        lambda: (p := m.kubectl_json("get", "pod", "important"))["spec"].get("nodeName") and p,
        timeout=60,
        what="the important pod to be bound",
    )
    assert pod["spec"]["priority"] == 1000
    events = m.kubectl("get", "events", "--field-selector", "reason=Preempted").stdout
    assert f"Preempted by pod {pod['metadata']['uid']} on node {pod['spec']['nodeName']}" in events
    # The preempted filler's replacement cannot fit anywhere and says so.
    pending = wait_for(
        lambda: [p for p in pods_of(m, "app=filler") if not p["spec"].get("nodeName")],
        timeout=60,
        what="a pending replacement",
    )
    message = wait_for(
        lambda: next(
            (
                c.get("message")
                for c in m.kubectl_json("get", "pod", pending[0]["metadata"]["name"])["status"].get("conditions", [])
                if c["type"] == "PodScheduled"
            ),
            None,
        ),
        what="the replacement's PodScheduled condition",
    )
    assert message.startswith("0/3 nodes are available: "), message
    assert "preemption: 0/3 nodes are available:" in message, message


def test_a_limit_range_defaults_and_refuses(demo_cluster):
    m, _ = demo_cluster
    m.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(
            {
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": {"name": "cpu-range", "namespace": "default"},
                "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"}}]},
            }
        ),
    )
    stored = m.kubectl_json("get", "limitrange", "cpu-range")["spec"]["limits"][0]
    assert stored["default"] == {"cpu": "1"}
    assert stored["defaultRequest"] == {"cpu": "1"}
    header = m.kubectl("get", "limits").stdout.splitlines()[0]
    assert re.split(r"\s{2,}", header.strip()) == ["NAME", "CREATED AT"]

    m.kubectl("run", "plain", "--image=registry.local/app:1")
    plain = m.kubectl_json("get", "pod", "plain")
    assert plain["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}
    assert (
        plain["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
        == "LimitRanger plugin set: cpu request for container plain; cpu limit for container plain"
    )

    refused = m.kubectl(
        "run", "greedy", "--image=registry.local/app:1", "--overrides",
        '{"spec": {"containers": [{"name": "greedy", "image": "registry.local/app:1", '
        '"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}}]}}',
        check=False,
    )
    assert refused.returncode != 0
    assert (
        'Error from server (Forbidden): pods "greedy" is forbidden: maximum cpu usage per Container is 1, but limit is 2'
        in refused.stderr
    ), refused.stderr
