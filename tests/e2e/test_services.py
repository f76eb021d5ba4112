"""Services on three virtual Pis: cluster IPs and node ports programmed into each Pi's kernel by
its agent, cluster DNS (with the seeds' `k8s.local` domain), service environment variables,
blue/green by selector, endpoints leaving rotation before their pods stop, a rolling update
without a failed request, session affinity, `externalTrafficPolicy: Local`, and a load-balancer
address that moves when the Pi answering for it dies. Real kubectl, real containers."""

import os
import subprocess
import sys
import time

import pytest

from conftest import VirtualPis, manifest, wait_for

DOMAIN = "k8s.local"
POOL = ("10.98.7.200", "10.98.7.209")


@pytest.fixture(scope="module")
def pis(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("virtual Pis need root")
    cluster = VirtualPis(
        tmp_path_factory.mktemp("service-pis") / "data", 3,
        "--cluster-domain", DOMAIN, "--load-balancer-pool", f"{POOL[0]}-{POOL[1]}",
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def namespace(pis, request):
    name = "s-" + request.node.name.replace("_", "-")[5:50].strip("-").lower()
    pis.kubectl("create", "namespace", name)
    yield name
    pis.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(pis, namespace, *objects):
    pis.kubectl("apply", "-n", namespace, "-f", "-", input="---\n".join(manifest(o) for o in objects))


def deployment(name, image, replicas=3, labels=None, pre_stop_seconds=3):
    """Demo web servers with a readiness probe, and a preStop pause so that a pod being deleted
    keeps answering while every Pi takes it out of rotation."""
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "containers": [{
                        "name": "demo", "image": image,
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        "lifecycle": {"preStop": {"sleep": {"seconds": pre_stop_seconds}}},
                    }],
                },
            },
        },
    }


def service(name, selector, kind="ClusterIP", **spec):
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": kind, "selector": selector,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}], **spec},
    }


def client_pod(pis, namespace, name="client", node=None):
    """A pod to send requests from (the demo image with a shell as PID 1, which reaps the
    watcher processes busybox `timeout` leaves behind)."""
    idle = "trap 'exit 0' TERM; while true; do sleep 1; done"
    spec = {"containers": [{"name": "client", "image": f"{pis.demo}:1", "command": ["sh", "-c", idle]}],
            "terminationGracePeriodSeconds": 0}
    if node:
        spec["nodeName"] = node
    apply(pis, namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    wait_for(lambda: pod_ready(pis, namespace, name), timeout=60, what=f"pod {name} running")
    return pis.kubectl_json("get", "pod", name, "-n", namespace)


def pod_ready(pis, namespace, name):
    pod = pis.kubectl_json("get", "pod", name, "-n", namespace)
    statuses = pod["status"].get("containerStatuses", [])
    return pod["status"].get("phase") == "Running" and statuses and all(s.get("ready") for s in statuses)


def ready_pods(pis, namespace, selector, count):
    def check():
        pods = pis.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
        ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return ready if len(ready) == count else None
    return wait_for(check, timeout=120, what=f"{count} ready pods with {selector}")


def shell(pis, namespace, pod, script, timeout=120):
    return pis.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", script, timeout=timeout).stdout


def fetch(pis, namespace, pod, url, count):
    """`count` requests from inside `pod`, one connection each; a failed one reads FAIL."""
    script = f"for i in $(seq {count}); do timeout 5 wget -qO- {url} 2>/dev/null || echo FAIL; done"
    return shell(pis, namespace, pod, script, timeout=count * 6 + 30).splitlines()


def answered_by(lines):
    """Pod names from demo answers ("hello from POD version=N")."""
    return {line.split()[2] for line in lines if line.startswith("hello from")}


GET = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=float(sys.argv[2])).read().decode().strip())
except OSError as error:
    sys.exit(f"{sys.argv[1]}: {error}")
"""


def curl(url, timeout=3, netns=None):
    """GET `url` from this host (or from inside the network namespace `netns`); the body, or
    None when the request fails."""
    command = [sys.executable, "-c", GET, url, str(timeout)]
    if netns:
        command = ["nsenter", f"--net=/run/netns/{netns}", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10)
    return result.stdout.strip() if result.returncode == 0 else None


def test_a_service_spreads_requests_over_its_pods_on_every_pi(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1"), service("web", {"app": "web"}, "NodePort"))
    web = ready_pods(pis, namespace, "app=web", 3)
    names = {p["metadata"]["name"] for p in web}
    svc = pis.kubectl_json("get", "service", "web", "-n", namespace)
    cluster_ip = svc["spec"]["clusterIP"]

    client = client_pod(pis, namespace)
    others = {p["spec"]["nodeName"] for p in web} - {client["spec"]["nodeName"]}
    assert others, "some web pod runs on another Pi than the client"

    # The short name works through the namespace's search path and the cluster DNS.
    lines = fetch(pis, namespace, "client", "http://web", 60)
    assert "FAIL" not in lines
    assert answered_by(lines) == names, "60 requests reach all three pods"

    # The full name, with the configured cluster domain, and the DNS answer is the cluster IP.
    lines = fetch(pis, namespace, "client", f"http://web.{namespace}.svc.{DOMAIN}/", 3)
    assert answered_by(lines) <= names and len(lines) == 3 and "FAIL" not in lines
    lookup = shell(pis, namespace, "client", f"nslookup web.{namespace}.svc.{DOMAIN}")
    assert cluster_ip in lookup
    resolv = shell(pis, namespace, "client", "cat /etc/resolv.conf")
    assert f"search {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}" in resolv

    # Service environment variables, for pods created after the service.
    env = dict(line.split("=", 1) for line in shell(pis, namespace, "client", "env").splitlines() if "=" in line)
    assert env["WEB_SERVICE_HOST"] == cluster_ip
    assert env["WEB_SERVICE_PORT"] == "80"
    assert env["WEB_SERVICE_PORT_HTTP"] == "80"
    assert env["WEB_PORT_80_TCP"] == f"tcp://{cluster_ip}:80"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"

    # The node port answers on every Pi's address, from outside the cluster.
    node_port = svc["spec"]["ports"][0]["nodePort"]
    for node in pis.nodes:
        answers = {curl(f"http://{pis.node_ip(node)}:{node_port}/") for _ in range(6)}
        assert None not in answers, f"node port on {node}"
        assert answered_by(answers) <= names

    # From the Pi itself (the node, not a pod), the cluster IP works too.
    on_node = curl(f"http://{cluster_ip}/", netns=f"bramble-{pis.nodes[0]}")
    assert on_node and on_node.startswith("hello from"), on_node


def test_changing_the_selector_switches_traffic_from_blue_to_green(pis, namespace):
    apply(pis, namespace,
          deployment("blue", f"{pis.demo}:1", 2, {"app": "shop", "version": "1"}),
          deployment("green", f"{pis.demo}:2", 2, {"app": "shop", "version": "2"}),
          service("shop", {"app": "shop", "version": "1"}))
    ready_pods(pis, namespace, "app=shop", 4)
    client_pod(pis, namespace)
    lines = fetch(pis, namespace, "client", "http://shop", 20)
    assert lines and all(line.endswith("version=1") for line in lines), lines

    pis.kubectl("patch", "service", "shop", "-n", namespace, "-p",
                '{"spec": {"selector": {"app": "shop", "version": "2"}}}')
    wait_for(lambda: all(line.endswith("version=2") for line in fetch(pis, namespace, "client", "http://shop", 10)),
             timeout=10, what="traffic to move to version 2")
    lines = fetch(pis, namespace, "client", "http://shop", 20)
    assert all(line.endswith("version=2") for line in lines), lines


def test_a_deleted_pod_leaves_rotation_before_it_stops_answering(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1", pre_stop_seconds=8), service("web", {"app": "web"}))
    web = ready_pods(pis, namespace, "app=web", 3)
    client_pod(pis, namespace)
    victim = web[0]
    name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
    assert name in answered_by(fetch(pis, namespace, "client", "http://web", 30))

    pis.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    deleted_at = time.monotonic()
    # Out of rotation: 30 requests through the service, none reaches the victim...
    wait_for(lambda: name not in answered_by(fetch(pis, namespace, "client", "http://web", 30)),
             timeout=4, what="the deleted pod to leave the service")
    # ...while it still answers when asked directly (its preStop pause is still running).
    direct = fetch(pis, namespace, "client", f"http://{ip}:8080/", 1)
    assert direct == [f"hello from {name} version=1"], direct
    assert time.monotonic() - deleted_at < 8


def test_a_rolling_update_behind_a_service_fails_no_request(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1"), service("web", {"app": "web"}))
    ready_pods(pis, namespace, "app=web", 3)
    client_pod(pis, namespace)
    # A client in the background, one request after another until told to stop.
    shell(pis, namespace, "client",
          "(while [ ! -e /tmp/stop ]; do timeout 5 wget -qO- http://web 2>&1 || echo FAIL; done"
          " > /tmp/answers) </dev/null >/dev/null 2>&1 &")
    wait_for(lambda: int(shell(pis, namespace, "client", "wc -l < /tmp/answers").strip() or 0) > 20,
             timeout=30, what="the client to get going")
    pis.kubectl("set", "image", "deployment/web", f"demo={pis.demo}:2", "-n", namespace)
    pis.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=180s", timeout=190)
    # Old pods finish terminating while the client keeps going.
    wait_for(lambda: len(pis.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]) == 3,
             timeout=60, what="the old pods to go")
    time.sleep(1)
    shell(pis, namespace, "client", "touch /tmp/stop; sleep 6")
    answers = shell(pis, namespace, "client", "cat /tmp/answers").splitlines()
    failures = [a for a in answers if not a.startswith("hello from")]
    versions = {a.rsplit("=", 1)[1] for a in answers if a.startswith("hello from")}
    assert versions == {"1", "2"}, "the client saw both versions"
    assert len(answers) > 50
    assert failures == [], f"{len(failures)} of {len(answers)} requests failed: {failures[:5]}"


def test_headless_services_and_pod_hostnames_resolve_to_pods(pis, namespace):
    pods = []
    for index in range(2):
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"db-{index}", "labels": {"app": "db"}},
            "spec": {"hostname": f"db-{index}", "subdomain": "db", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "demo", "image": f"{pis.demo}:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
        })
    headless = service("db", {"app": "db"}, clusterIP="None")
    apply(pis, namespace, *pods, headless)
    ready = ready_pods(pis, namespace, "app=db", 2)
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in ready}
    client_pod(pis, namespace)
    wait_for(lambda: all(ip in shell(pis, namespace, "client", f"nslookup db.{namespace}.svc.{DOMAIN}")
                         for ip in ips.values()),
             timeout=10, what="the headless name to list both pods")
    answer = shell(pis, namespace, "client", f"nslookup db-1.db.{namespace}.svc.{DOMAIN}")
    assert ips["db-1"] in answer and ips["db-0"] not in answer
    # Through the search path, as an application would write it.
    lines = fetch(pis, namespace, "client", "http://db-0.db:8080/", 1)
    assert lines == ["hello from db-0 version=1"]
    # A name that is not there is an error, not a hang.
    missing = pis.kubectl("exec", "-n", namespace, "client", "--", "nslookup",
                          f"nothing.{namespace}.svc.{DOMAIN}", check=False, timeout=30)
    assert missing.returncode != 0


def test_client_ip_affinity_keeps_a_client_on_one_pod(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1"),
          service("web", {"app": "web"}, sessionAffinity="ClientIP"))
    ready_pods(pis, namespace, "app=web", 3)
    client_pod(pis, namespace)
    lines = fetch(pis, namespace, "client", "http://web", 20)
    assert "FAIL" not in lines and len(answered_by(lines)) == 1, lines


def test_external_traffic_policy_local_keeps_the_client_address(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1", replicas=1),
          service("web", {"app": "web"}, "NodePort", externalTrafficPolicy="Local"))
    [pod] = ready_pods(pis, namespace, "app=web", 1)
    node_port = pis.kubectl_json("get", "service", "web", "-n", namespace)["spec"]["ports"][0]["nodePort"]
    home = pod["spec"]["nodeName"]
    answer = wait_for(lambda: curl(f"http://{pis.node_ip(home)}:{node_port}/"), timeout=10,
                      what="the node port on the pod's Pi")
    assert answer == f"hello from {pod['metadata']['name']} version=1"
    log = pis.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
    assert pis.GATEWAY in log, f"the pod saw the client's own address:\n{log}"
    # A Pi without a local endpoint does not forward outside traffic for this service.
    elsewhere = next(n for n in pis.nodes if n != home)
    assert curl(f"http://{pis.node_ip(elsewhere)}:{node_port}/", timeout=2) is None


def test_a_load_balancer_address_moves_when_its_pi_dies(pis, namespace):
    apply(pis, namespace, deployment("web", f"{pis.demo}:1"), service("web", {"app": "web"}, "LoadBalancer"))
    ready_pods(pis, namespace, "app=web", 3)

    def announced():
        svc = pis.kubectl_json("get", "service", "web", "-n", namespace)
        ingress = svc["status"].get("loadBalancer", {}).get("ingress") or [{}]
        node = svc["metadata"].get("annotations", {}).get("bramble.dev/load-balancer-node")
        return (ingress[0].get("ip"), node) if ingress[0].get("ip") and node else None

    address, holder = wait_for(announced, timeout=20, what="a load-balancer address and its Pi")
    first, last = (int(a.rsplit(".", 1)[1]) for a in POOL)
    assert address.startswith("10.98.7.") and first <= int(address.rsplit(".", 1)[1]) <= last
    assert wait_for(lambda: curl(f"http://{address}/"), timeout=10, what="the address to answer").startswith("hello")
    listing = pis.kubectl("get", "service", "web", "-n", namespace).stdout
    assert address in listing, "kubectl shows the external IP"

    pis.chaos("kill", holder)
    try:
        moved_to = wait_for(lambda: (lambda a: a[1] if a and a[1] != holder else None)(announced()),
                            timeout=30, what="the address to move to another Pi")
        assert moved_to != holder
        answer = wait_for(lambda: curl(f"http://{address}/", timeout=2), timeout=30,
                          what="the address to answer from its new Pi")
        assert answer.startswith("hello from")
    finally:
        pis.chaos("revive", holder)
