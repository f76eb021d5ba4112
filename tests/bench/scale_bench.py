"""Benchmark of the controllers, the scheduler and failure handling on simulated nodes. Prints figures; asserts nothing.

Run after `cargo build --release`:
    target/test-venv/bin/python tests/bench/scale_bench.py [--only schedule,heal,scale]
        [--nodes 1000] [--pods 30000]

- schedule: time to schedule (and run) 1,000 pods of one Deployment onto 100 simulated nodes.
- heal:     demo profile, 10 nodes, 30 pods: time from a node's death to all pods Ready elsewhere.
- scale:    master RSS and CPU holding --nodes simulated nodes and --pods pods.
"""

import argparse
import re
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from master_bench import free_port, rss_kib  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BRAMBLE = os.environ.get("BRAMBLE_BIN", str(ROOT / "target" / "release" / "bramble"))
KUBECTL = os.environ.get("KUBECTL", str(ROOT / "target" / "test-venv" / "bin" / "kubectl"))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cluster:
    def __init__(self, workdir, profile, nodes, max_pods=110):
        self.dir = Path(workdir)
        self.kubeconfig = self.dir / "data" / "admin.kubeconfig"
        self.master = subprocess.Popen(
            [BRAMBLE, "master", "--data-dir", str(self.dir / "data"), "--listen", f"127.0.0.1:{free_port()}",
             "--profile", profile, "--cluster-cidr", "10.64.0.0/10"],
            stdout=open(self.dir / "master.log", "ab"), stderr=subprocess.STDOUT)
        while not self.kubeconfig.exists():
            time.sleep(0.05)
        self.sim = subprocess.Popen(
            [BRAMBLE, "sim", "--kubeconfig", str(self.kubeconfig), "--nodes", str(nodes), "--max-pods", str(max_pods),
             "--cpu", "64", "--memory", "256Gi"],
            stdout=open(self.dir / "sim.log", "ab"), stderr=subprocess.STDOUT)
        self.wait(lambda: self.count_ready_nodes() >= nodes, 600)

    def kubectl(self, *args, input=None):
        return subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, check=True).stdout

    def json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json"))

    def count_ready_nodes(self):
        return sum(1 for n in self.json("get", "nodes")["items"]
                   if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])))

    def pods(self, selector):
        return self.json("get", "pods", "-A", "-l", selector)["items"]

    @staticmethod
    def wait(condition, timeout, interval=0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(interval)
        raise TimeoutError("condition not reached")

    def deployment(self, name, replicas, namespace="default"):
        manifest = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "bench",
                                                           "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def stop(self):
        for process in (self.sim, self.master):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


def ready(pod):
    return "deletionTimestamp" not in pod["metadata"] and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def bench_schedule(workdir):
    cluster = Cluster(workdir, "default", 100)
    try:
        start = time.monotonic()
        cluster.deployment("burst", 1000)
        bound_at = running_at = None
        while running_at is None:
            pods = cluster.pods("app=burst")
            if bound_at is None and len(pods) == 1000 and all(p["spec"].get("nodeName") for p in pods):
                bound_at = time.monotonic() - start
            if len(pods) == 1000 and all(ready(p) for p in pods):
                running_at = time.monotonic() - start
            time.sleep(0.05)
        per_node = {}
        for pod in cluster.pods("app=burst"):
            per_node[pod["spec"]["nodeName"]] = per_node.get(pod["spec"]["nodeName"], 0) + 1
        print(f"schedule: 1,000 pods (Deployment) onto 100 nodes: all bound after {bound_at:.2f} s "
              f"({1000 / bound_at:.0f} pods/s incl. creation), all Running after {running_at:.2f} s; "
              f"pods per node min {min(per_node.values())} max {max(per_node.values())}")

        # The scheduler alone: 1,000 pods wait while every node is cordoned, then all nodes
        # open at once and the time to bind them all is measured.
        cluster.kubectl("delete", "deployment", "burst")
        cluster.wait(lambda: not cluster.pods("app=burst"), 120)
        cluster.kubectl("cordon", "-l", "node.bramble.dev/simulated=true")
        cluster.deployment("queued", 1000)
        cluster.wait(lambda: len(cluster.pods("app=queued")) == 1000, 120)
        # kubectl throttles itself when patching 100 nodes; the Python client does not.
        from kubernetes import client, config
        config.load_kube_config(str(cluster.kubeconfig))
        core = client.CoreV1Api()
        start = time.monotonic()
        for index in range(1, 101):
            core.patch_node(f"sim-{index}", {"spec": {"unschedulable": None}})
        cluster.wait(lambda: all(p["spec"].get("nodeName") for p in cluster.pods("app=queued")), 120, 0.02)
        elapsed = time.monotonic() - start
        print(f"schedule: 1,000 queued pods bound to 100 nodes in {elapsed:.2f} s after uncordoning "
              f"({1000 / elapsed:.0f} pods/s, including the uncordon of 100 nodes and pods' retry backoff)")
        log = re.sub(r"\x1b\[[0-9;]*m", "", (cluster.dir / "master.log").read_text())
        batches = [(int(p), float(ms)) for p, ms in re.findall(r"scheduler bound a batch pods=(\d+) elapsed_ms=([\d.]+)", log)]
        if batches:
            pods_bound = sum(p for p, _ in batches)
            seconds = sum(ms for _, ms in batches) / 1000
            print(f"schedule: the scheduler's own rate: {pods_bound} pods in {len(batches)} batches of 32 or more, "
                  f"{pods_bound / seconds:.0f} pods/s while deciding and binding")
    finally:
        cluster.stop()


def bench_heal(workdir, rounds=5):
    cluster = Cluster(workdir, "demo", 10)
    times = []
    try:
        cluster.deployment("web", 30)
        cluster.wait(lambda: sum(ready(p) for p in cluster.pods("app=web")) == 30, 120)
        for round_ in range(rounds):
            victim = f"sim-{round_ + 1}"
            start = time.monotonic()
            subprocess.run([BRAMBLE, "sim", "kill", victim, "--kubeconfig", str(cluster.kubeconfig)], check=True, capture_output=True)
            cluster.wait(lambda: sum(1 for p in cluster.pods("app=web") if ready(p) and p["spec"]["nodeName"] != victim) == 30, 60, 0.02)
            times.append(time.monotonic() - start)
            subprocess.run([BRAMBLE, "sim", "revive", victim, "--kubeconfig", str(cluster.kubeconfig)], check=True, capture_output=True)
            cluster.wait(lambda: cluster.count_ready_nodes() == 10, 60)
            time.sleep(1)
        print(f"heal (demo profile, 10 nodes, 30 pods): node death to all pods Ready elsewhere: "
              f"median {statistics.median(times):.2f} s, max {max(times):.2f} s over {rounds} kills")
    finally:
        cluster.stop()


def bench_scale(workdir, nodes, pods):
    cluster = Cluster(workdir, "default", nodes)
    pid = cluster.master.pid
    try:
        print(f"scale: {nodes} nodes registered; master RSS {rss_kib(pid) / 1024:.1f} MiB")
        per_deployment = 1000
        start = time.monotonic()
        for index in range(pods // per_deployment):
            cluster.deployment(f"app{index}", per_deployment)
        def all_running():
            items = cluster.json("get", "deployments")["items"]
            return sum(d.get("status", {}).get("readyReplicas", 0) for d in items) >= pods
        cluster.wait(all_running, 3600, 2)
        elapsed = time.monotonic() - start
        print(f"scale: {pods} pods Running on {nodes} nodes after {elapsed:.1f} s ({pods / elapsed:.0f} pods/s end to end)")
        time.sleep(30)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(60)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        print(f"scale: master with {nodes} nodes (leases every 10 s, usage every 15 s) and {pods} pods: "
              f"RSS {rss_kib(pid) / 1024:.1f} MiB, CPU {cpu * 100:.1f}% of one core over 60 s")
    finally:
        cluster.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="schedule,heal,scale")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=30000)
    args = parser.parse_args()
    for name in args.only.split(","):
        workdir = tempfile.mkdtemp(prefix=f"bramble-bench-{name}-")
        try:
            if name == "schedule":
                bench_schedule(workdir)
            elif name == "heal":
                bench_heal(workdir)
            elif name == "scale":
                bench_scale(workdir, args.nodes, args.pods)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
