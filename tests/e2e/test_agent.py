"""The agent with real containers: `bramble up` with three virtual Pis (network namespaces on a
bridge, each running `bramble agent`), the demo image from a real local registry, and the real
kubectl and Python client against it."""

import os
import signal
import time

from conftest import manifest, wait_for


def pods(pis, namespace, selector=None):
    args = ["get", "pods", "-n", namespace]
    if selector:
        args += ["-l", selector]
    return pis.kubectl_json(*args)["items"]


def running(pod):
    return pod["status"].get("phase") == "Running" and all(
        c.get("ready") for c in pod["status"].get("containerStatuses", [])
    )


def container_status(pis, namespace, name, container=None):
    pod = pis.kubectl_json("get", "pod", name, "-n", namespace)
    statuses = pod["status"].get("containerStatuses", [])
    for status in statuses:
        if container is None or status["name"] == container:
            return status
    return {}


def create(pis, namespace, obj):
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(obj))


def pod_spec(name, containers, **spec):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec},
    }


def test_a_deployment_runs_on_several_pis_and_pods_talk_across_them(pis, namespace):
    pis.kubectl("create", "deployment", "hello", f"--image={pis.demo}:1", "--replicas=6", "-n", namespace)
    ready = wait_for(
        lambda: (lambda p: p if len(p) == 6 and all(map(running, p)) else None)(pods(pis, namespace, "app=hello")),
        timeout=120,
        what="six running demo pods",
    )
    nodes = {p["spec"]["nodeName"] for p in ready}
    assert len(nodes) >= 2, f"pods were not spread: {nodes}"
    ips = {p["status"]["podIP"] for p in ready}
    assert len(ips) == 6
    # From a pod on one Pi to a pod on another, over the routes the agents installed.
    source = ready[0]
    target = next(p for p in ready if p["spec"]["nodeName"] != source["spec"]["nodeName"])
    answer = pis.kubectl(
        "exec", "-n", namespace, source["metadata"]["name"], "--",
        "timeout", "5", "wget", "-qO-", f"http://{target['status']['podIP']}:8080/",
    ).stdout
    assert answer.strip() == f"hello from {target['metadata']['name']} version=1"

    # Outside the cluster: the registry on the LAN host answers pods (outbound NAT on each Pi).
    registry = pis.kubectl(
        "exec", "-n", namespace, source["metadata"]["name"], "--",
        "timeout", "5", "wget", "-qO-", f"http://{pis.registry}/v2/",
    ).stdout
    assert registry.strip() == "{}"

    # A rolling update to version 2 replaces every pod; the new ones answer with the new version.
    pis.kubectl("set", "image", "deployment/hello", f"demo={pis.demo}:2", "-n", namespace)
    pis.kubectl("rollout", "status", "deployment/hello", "-n", namespace, "--timeout=120s", timeout=130)
    fresh = wait_for(
        lambda: (lambda p: p if len(p) == 6 and all(map(running, p)) else None)(pods(pis, namespace, "app=hello")),
        timeout=60,
        what="six running pods after the update",
    )
    one = fresh[0]
    answer = pis.kubectl(
        "exec", "-n", namespace, fresh[1]["metadata"]["name"], "--",
        "timeout", "5", "wget", "-qO-", f"http://{one['status']['podIP']}:8080/",
    ).stdout
    assert answer.strip() == f"hello from {one['metadata']['name']} version=2"


def test_logs_and_exec_reach_the_container(pis, namespace):
    create(pis, namespace, pod_spec("shell", [{"name": "demo", "image": f"{pis.demo}:1"}]))
    wait_for(lambda: running(pis.kubectl_json("get", "pod", "shell", "-n", namespace)), timeout=60, what="pod running")
    logs = wait_for(lambda: pis.kubectl("logs", "shell", "-n", namespace).stdout, timeout=20, what="logs")
    assert "demo server shell version=1 listening on :8080" in logs
    stamped = pis.kubectl("logs", "shell", "-n", namespace, "--timestamps").stdout
    assert stamped.split(" ", 1)[0].endswith("Z")

    assert pis.kubectl("exec", "shell", "-n", namespace, "--", "hostname").stdout.strip() == "shell"
    failed = pis.kubectl("exec", "shell", "-n", namespace, "--", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert failed.returncode == 3
    assert "oops" in failed.stderr
    echoed = pis.kubectl("exec", "-i", "shell", "-n", namespace, "--", "cat", input="through stdin\n")
    assert echoed.stdout == "through stdin\n"
    missing = pis.kubectl("exec", "shell", "-n", namespace, "-c", "nope", "--", "true", check=False)
    assert missing.returncode != 0 and "not valid" in missing.stderr

    # The Python client speaks the older v4 channel protocol.
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(pis.client())
    output = stream(
        core.connect_get_namespaced_pod_exec, "shell", namespace,
        command=["sh", "-c", "echo from-python; cat /etc/hostname 2>/dev/null || hostname"],
        stderr=True, stdin=False, stdout=True, tty=False,
    )
    assert "from-python" in output
    assert "demo server" in core.read_namespaced_pod_log("shell", namespace)


def test_a_crashing_container_backs_off_and_keeps_its_previous_logs(pis, namespace):
    create(pis, namespace, pod_spec("crash", [{
        "name": "crash", "image": f"{pis.demo}:1",
        "command": ["sh", "-c", "echo boom $(date +%s%N); exit 2"],
    }]))
    status = wait_for(
        lambda: (lambda s: s if s.get("restartCount", 0) >= 2 else None)(container_status(pis, namespace, "crash")),
        timeout=90,
        what="two restarts",
    )
    assert status["lastState"]["terminated"]["exitCode"] == 2
    wait_for(
        lambda: container_status(pis, namespace, "crash").get("state", {}).get("waiting", {}).get("reason")
        == "CrashLoopBackOff",
        timeout=60,
        what="CrashLoopBackOff",
    )
    previous = pis.kubectl("logs", "crash", "-n", namespace, "--previous").stdout
    assert previous.startswith("boom ")


def test_a_failing_liveness_probe_restarts_the_container(pis, namespace):
    create(pis, namespace, pod_spec("sick", [{
        "name": "demo", "image": f"{pis.demo}:1",
        "livenessProbe": {"httpGet": {"path": "/", "port": 9999}, "periodSeconds": 1, "failureThreshold": 2},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }]))
    wait_for(
        lambda: container_status(pis, namespace, "sick").get("restartCount", 0) >= 1,
        timeout=60,
        what="a restart from the liveness probe",
    )
    events = pis.kubectl("get", "events", "-n", namespace).stdout
    assert "Liveness probe failed" in events or "Unhealthy" in events


def test_a_container_over_its_memory_limit_is_oom_killed(pis, namespace):
    create(pis, namespace, pod_spec("hungry", [{
        "name": "hungry", "image": f"{pis.demo}:1",
        "command": ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"],
        "resources": {"limits": {"memory": "32Mi"}},
    }], restartPolicy="Never"))
    terminated = wait_for(
        lambda: container_status(pis, namespace, "hungry").get("state", {}).get("terminated"),
        timeout=90,
        what="the container to end",
    )
    assert terminated["reason"] == "OOMKilled", terminated
    assert pis.kubectl_json("get", "pod", "hungry", "-n", namespace)["status"]["phase"] == "Failed"


def test_config_maps_and_secrets_reach_env_and_live_volumes(pis, namespace):
    pis.kubectl("create", "configmap", "settings", "--from-literal=greeting=hi", "-n", namespace)
    pis.kubectl("create", "secret", "generic", "creds", "--from-literal=password=s3cret", "-n", namespace)
    create(pis, namespace, pod_spec("configured", [{
        "name": "demo", "image": f"{pis.demo}:1",
        "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"}],
    }], volumes=[{"name": "settings", "configMap": {"name": "settings"}}]))
    wait_for(lambda: running(pis.kubectl_json("get", "pod", "configured", "-n", namespace)), timeout=60, what="running")
    env = pis.kubectl("exec", "configured", "-n", namespace, "--", "env").stdout
    assert "GREETING=hi" in env and "password=s3cret" in env
    pod_ip = pis.kubectl_json("get", "pod", "configured", "-n", namespace)["status"]["podIP"]
    assert f"POD_IP={pod_ip}" in env
    read = lambda: pis.kubectl("exec", "configured", "-n", namespace, "--", "cat", "/etc/settings/greeting").stdout
    assert read() == "hi"
    pis.kubectl("patch", "configmap", "settings", "-n", namespace, "-p", '{"data":{"greeting":"hello again"}}')
    wait_for(lambda: read() == "hello again", timeout=60, interval=1, what="the volume to follow the config map")


def test_a_job_runs_to_completion(pis, namespace):
    create(pis, namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "count"},
        "spec": {"backoffLimit": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "count", "image": f"{pis.demo}:1", "command": ["sh", "-c", "seq 1 3"]}],
        }}},
    })
    pis.kubectl("wait", "--for=condition=complete", "job/count", "-n", namespace, "--timeout=90s", timeout=100)
    assert pis.kubectl("logs", "job/count", "-n", namespace).stdout == "1\n2\n3\n"


def test_a_missing_image_reports_a_pull_error(pis, namespace):
    create(pis, namespace, pod_spec("ghost", [{"name": "ghost", "image": f"{pis.registry}/bramble/ghost:1"}]))
    waiting = wait_for(
        lambda: container_status(pis, namespace, "ghost").get("state", {}).get("waiting", {}).get("reason")
        in ("ErrImagePull", "ImagePullBackOff")
        and container_status(pis, namespace, "ghost")["state"]["waiting"],
        timeout=60,
        what="an image pull error",
    )
    assert "ghost" in waiting.get("message", "")


def test_a_restarted_agent_adopts_its_running_pods(pis, namespace):
    create(pis, namespace, pod_spec("steady", [{"name": "demo", "image": f"{pis.demo}:1"}], nodeName="pi-1"))
    wait_for(lambda: running(pis.kubectl_json("get", "pod", "steady", "-n", namespace)), timeout=60, what="running")
    before = container_status(pis, namespace, "steady")
    old_pid = pis.agent_pid("pi-1")
    joins = pis.agent_log("pi-1").count("node re-joined")
    os.kill(old_pid, signal.SIGKILL)
    # `bramble up` restarts the agent, as systemd would on a Pi.
    wait_for(lambda: pis.agent_log("pi-1").count("node re-joined") > joins, timeout=30, what="a new agent")
    time.sleep(3)
    after = container_status(pis, namespace, "steady")
    assert after["restartCount"] == before["restartCount"] == 0
    assert after["state"]["running"]["startedAt"] == before["state"]["running"]["startedAt"]
    # Logs and exec still work through the new agent.
    assert pis.kubectl("exec", "steady", "-n", namespace, "--", "hostname").stdout.strip() == "steady"


def test_killing_a_pi_moves_its_pods_and_reviving_it_brings_it_back(pis, namespace):
    pis.kubectl("create", "deployment", "spread", f"--image={pis.demo}:1", "--replicas=3", "-n", namespace)
    wait_for(
        lambda: (lambda p: len(p) == 3 and all(map(running, p)))(pods(pis, namespace, "app=spread")),
        timeout=90,
        what="three running pods",
    )
    victim = pods(pis, namespace, "app=spread")[0]["spec"]["nodeName"]
    killed_at = time.monotonic()
    pis.chaos("kill", victim)
    try:
        wait_for(
            lambda: (lambda p: len(p) == 3 and all(running(x) and x["spec"]["nodeName"] != victim for x in p))(
                [x for x in pods(pis, namespace, "app=spread") if not x["metadata"].get("deletionTimestamp")]
            ),
            timeout=60,
            what=f"the pods of {victim} to run elsewhere",
        )
        healed = time.monotonic() - killed_at
        print(f"healed in {healed:.1f}s")
        node = pis.kubectl_json("get", "node", victim)
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] != "True"
    finally:
        pis.chaos("revive", victim)
    wait_for(
        lambda: next(
            c for c in pis.kubectl_json("get", "node", victim)["status"]["conditions"] if c["type"] == "Ready"
        )["status"] == "True",
        timeout=30,
        what=f"{victim} to be Ready again",
    )


def test_kubectl_top_shows_real_usage(pis, namespace):
    create(pis, namespace, pod_spec("busy", [{
        "name": "busy", "image": f"{pis.demo}:1", "command": ["sh", "-c", "while :; do :; done"],
    }]))
    wait_for(lambda: running(pis.kubectl_json("get", "pod", "busy", "-n", namespace)), timeout=60, what="running")
    top = wait_for(
        lambda: (lambda r: r.stdout if r.returncode == 0 and "busy" in r.stdout else None)(
            pis.kubectl("top", "pod", "busy", "-n", namespace, "--no-headers", check=False)
        ),
        timeout=60,
        interval=2,
        what="usage of the busy pod",
    )
    millicores = int(top.split()[1].rstrip("m"))
    assert millicores > 300, top
    nodes = pis.kubectl("top", "nodes", "--no-headers").stdout
    assert all(node in nodes for node in pis.nodes)


def test_each_node_has_its_own_credentials_and_may_change_only_its_own_objects(pis, namespace):
    own = pis.data_dir / "nodes" / "pi-1" / "node.kubeconfig"

    def as_node(*args, **kwargs):
        return pis.kubectl("--kubeconfig", str(own), *args, check=False, **kwargs)

    assert "system:node:pi-1" in own.read_text()
    assert as_node("label", "node", "pi-1", "checked=yes", "--overwrite").returncode == 0
    refused = as_node("label", "node", "pi-2", "checked=yes", "--overwrite")
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    assert "cannot list" in as_node("get", "secrets", "-A").stderr
    assert "is forbidden" in as_node("create", "deployment", "sneaky", "--image=x", "-n", namespace).stderr
    # Pods on another node are not this node's to change.
    create(pis, namespace, pod_spec("elsewhere", [{"name": "demo", "image": f"{pis.demo}:1"}], nodeName="pi-2"))
    refused = as_node("delete", "pod", "elsewhere", "-n", namespace, "--wait=false")
    assert "Forbidden" in refused.stderr, refused.stderr
    # A wrong join token gets nothing.
    import secrets
    import subprocess
    from conftest import BRAMBLE

    token = (pis.data_dir / "join.token").read_text().strip()
    forged = token.rsplit(".", 1)[0] + "." + secrets.token_hex(16)  # strong, and wrong
    joined = subprocess.run(
        [BRAMBLE, "agent", "--server", f"https://{pis.GATEWAY}:{pis.PORT}", "--join-token", forged,
         "--node-name", "intruder", "--data-dir", str(pis.data_dir.parent / "intruder")],
        capture_output=True, text=True, timeout=30,
    )
    assert joined.returncode != 0 and "refused" in joined.stderr, joined.stderr


def test_pulling_a_pis_cable_moves_its_pods_and_the_pi_comes_back(pis, namespace):
    create(pis, namespace, pod_spec("cabled", [{"name": "demo", "image": f"{pis.demo}:1"}], nodeName="pi-3"))
    pis.kubectl("create", "deployment", "moving", f"--image={pis.demo}:1", "--replicas=3", "-n", namespace)
    wait_for(
        lambda: (lambda p: len(p) == 3 and all(map(running, p)))(pods(pis, namespace, "app=moving")),
        timeout=90,
        what="three running pods",
    )
    pis.chaos("link-down", "pi-3")  # 20 s without a network link
    wait_for(
        lambda: next(c for c in pis.kubectl_json("get", "node", "pi-3")["status"]["conditions"]
                     if c["type"] == "Ready")["status"] != "True",
        timeout=15,
        what="pi-3 to be noticed gone",
    )
    wait_for(
        lambda: (lambda p: len(p) == 3 and all(running(x) and x["spec"]["nodeName"] != "pi-3" for x in p))(
            [x for x in pods(pis, namespace, "app=moving") if not x["metadata"].get("deletionTimestamp")]
        ),
        timeout=30,
        what="the deployment's pods to run off pi-3",
    )
    # The link comes back by itself; the node is Ready again and finishes the pods deleted meanwhile.
    wait_for(
        lambda: next(c for c in pis.kubectl_json("get", "node", "pi-3")["status"]["conditions"]
                     if c["type"] == "Ready")["status"] == "True",
        timeout=60,
        what="pi-3 to be back",
    )
    assert "chaos: link back up" in pis.agent_log("pi-3")
    wait_for(
        lambda: "cabled" not in pis.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout,
        timeout=60,
        what="the evicted bare pod to be finished",
    )
