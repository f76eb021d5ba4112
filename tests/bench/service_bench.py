"""Benchmark of services on three virtual Pis. Prints figures; asserts nothing. Needs root and
./tests/setup-host; stop your own `bramble up` first (it uses the same names).

Run after `cargo build --release --bin bramble --example http_load`:
    sudo target/test-venv/bin/python tests/bench/service_bench.py [--seconds 5]

- throughput and latency through a cluster IP next to straight to the pod IP, in the same run,
  against one demo pod (so the server is the same and only the path differs), from a client on
  the pod's own Pi and from one on another Pi: requests per second and p50/p99 with a fresh
  TCP connection per request (each one goes through the NAT rules), from examples/http_load.rs;
- how long a new endpoint takes to get traffic: a client in a Pi sends requests to the service
  back to back while the deployment scales from 1 to 2; the time from the API showing the new
  pod Ready to the first answer from it, over --rounds rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("BRAMBLE_BIN", str(ROOT / "target" / "release" / "bramble"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
LOAD = ROOT / "target" / "release" / "examples" / "http_load"

from conftest import VirtualPis, manifest, wait_for  # noqa: E402

POLLER = """
import sys, time, socket
host, port = sys.argv[1], int(sys.argv[2])
while True:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        body = data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip()
        print(f"{time.time():.4f} {body}", flush=True)
    except OSError as error:
        print(f"{time.time():.4f} FAIL {error}", flush=True)
"""


def in_pi(node, *command, **kwargs):
    return subprocess.run(["nsenter", f"--net=/run/netns/bramble-{node}", *command], **kwargs)


def load(node, target, seconds, concurrency):
    result = in_pi(node, str(LOAD), target, str(seconds), str(concurrency), capture_output=True, text=True,
                   check=True)
    return json.loads(result.stdout)


def deployment(name, image, replicas):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            # The preStop pause lets every Pi drop a pod being deleted before it stops.
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                "name": "demo", "image": image, "ports": [{"containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}]}}},
    }


def service(name):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}


def ready_pods(pis, name, count):
    def check():
        pods = pis.kubectl_json("get", "pods", "-l", f"app={name}")["items"]
        ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return ready if len(ready) == count and len(pods) == count else None
    return wait_for(check, timeout=120, interval=0.02, what=f"{count} ready {name} pods")


def throughput(pis, seconds, concurrency):
    pis.kubectl("apply", "-f", "-", input=manifest(deployment("one", f"{pis.demo}:1", 1)) + "---\n"
                + manifest(service("one")))
    [pod] = ready_pods(pis, "one", 1)
    pod_ip = pod["status"]["podIP"]
    cluster_ip = pis.kubectl_json("get", "service", "one")["spec"]["clusterIP"]
    home = pod["spec"]["nodeName"]
    away = next(n for n in pis.nodes if n != home)
    time.sleep(1)
    print(f"\nthroughput: one demo pod on {home}, {concurrency} clients, {seconds} s per run, "
          "a new connection per request")
    print(f"{'client on':<16}{'path':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}")
    for client, where in ((away, "another Pi"), (home, "the same Pi")):
        # Linux offsets TCP timestamps by a hash of the destination address, so the two paths
        # (pod IP, cluster IP) present different clocks to the same server. The server's
        # TIME_WAIT sockets from one run would then refuse the other run's reused ports
        # (PAWS) and cost it 1 s SYN retries: a benchmark artifact, not the data path.
        # Timestamps without per-destination offsets (2) keep the runs independent.
        in_pi(client, "sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=2", check=True)
        runs = {"pod IP": [], "cluster IP": []}
        for _ in range(5):  # interleaved, so drift on the machine hits both paths alike
            runs["pod IP"].append(load(client, f"{pod_ip}:8080", seconds, concurrency))
            runs["cluster IP"].append(load(client, f"{cluster_ip}:80", seconds, concurrency))
        medians = {}
        for path, results in runs.items():
            best = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
            medians[path] = best
            print(f"{where:<16}{path:<12}{best['rps']:>10.0f}{best['p50_ms']:>10.2f}{best['p99_ms']:>10.2f}"
                  f"{sum(r['failures'] for r in results):>8}")
        ratio = medians["cluster IP"]["rps"] / medians["pod IP"]["rps"]
        print(f"{'':<16}cluster IP throughput is {ratio * 100:.1f}% of the pod IP's")
    pis.kubectl("delete", "deployment,service", "one")


def endpoint_latency(pis, rounds):
    pis.kubectl("apply", "-f", "-", input=manifest(deployment("grow", f"{pis.demo}:1", 1)) + "---\n"
                + manifest(service("grow")))
    ready_pods(pis, "grow", 1)
    cluster_ip = pis.kubectl_json("get", "service", "grow")["spec"]["clusterIP"]
    from kubernetes import client

    core = client.CoreV1Api(pis.client())
    delays = []
    with tempfile.TemporaryDirectory() as work:
        answers = Path(work) / "answers"
        with answers.open("w") as out:
            poller = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/bramble-{pis.nodes[0]}", sys.executable, "-c", POLLER,
                 cluster_ip, "80"], stdout=out, text=True)
        try:
            for _ in range(rounds):
                before = {p["metadata"]["name"] for p in ready_pods(pis, "grow", 1)}
                pis.kubectl("scale", "deployment/grow", "--replicas=2")
                new = wait_for(lambda: newly_ready(core, before), timeout=60, interval=0.01,
                               what="the new pod to be Ready")
                ready_at = time.time()
                first = wait_for(lambda: first_answer(answers, new), timeout=10, interval=0.05,
                                 what=f"an answer from {new}")
                delays.append(max(0.0, first - ready_at))
                pis.kubectl("scale", "deployment/grow", "--replicas=1")
                ready_pods(pis, "grow", 1)  # and the removed one gone
        finally:
            poller.kill()
            poller.wait()
        lines = answers.read_text().splitlines()
    failures = sum(1 for line in lines if " FAIL " in line)
    print(f"\nnew endpoint to traffic: API shows the pod Ready -> first answer from it through the "
          f"cluster IP ({rounds} rounds, a client on {pis.nodes[0]} sending back to back)")
    print(f"  median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms; "
          f"{failures} of {len(lines)} requests failed while pods came and went")
    pis.kubectl("delete", "deployment,service", "grow")


def newly_ready(core, before):
    """The name of a Ready `grow` pod not in `before`, read with the Python client (a few ms
    per poll, so the moment it turns Ready is seen closely)."""
    for pod in core.list_namespaced_pod("default", label_selector="app=grow").items:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready and pod.metadata.name not in before and not pod.metadata.deletion_timestamp:
            return pod.metadata.name
    return None


def first_answer(answers, pod):
    for line in answers.read_text().splitlines():
        if f" hello from {pod} " in line:
            return float(line.split()[0])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (virtual Pis)")
    if not LOAD.exists():
        sys.exit("build it first: cargo build --release --bin bramble --example http_load")
    with tempfile.TemporaryDirectory() as work:
        pis = VirtualPis(Path(work) / "data", 3)
        try:
            throughput(pis, args.seconds, args.concurrency)
            endpoint_latency(pis, args.rounds)
        finally:
            pis.stop()


if __name__ == "__main__":
    main()
