"""Benchmark of the agent on one virtual Pi. Prints figures; asserts nothing. Needs root and
./tests/setup-host; stop your own `bramble up` first (it uses the same names).

Run after `cargo build --release`:
    sudo target/test-venv/bin/python tests/bench/agent_bench.py [--pods 100]

- pod start latency: API create to Running (container started, image cached), one pod at a
  time, p50 and p99 over --pods pods, next to `runc run -d` of the same image root and command;
- agent RSS idle, with 30 pods and with --pods pods, and the memory each extra pod costs (the
  agent's own growth, and the proportional set size of the pod's container monitor).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRAMBLE = os.environ.get("BRAMBLE_BIN", str(ROOT / "target" / "release" / "bramble"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def monitors(data_dir):
    pids = []
    for path in (data_dir / "nodes").glob("*/pods/*/containers/*/monitor.pid"):
        try:
            pid = int(path.read_text())
            os.kill(pid, 0)
            pids.append(pid)
        except (OSError, ValueError):
            pass
    return pids


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def settle_rss(pid, seconds=5):
    time.sleep(seconds)
    return rss_kib(pid)


def runc_latency(rootfs, runs):
    """`runc run -d` of the demo image's root with the same command, until it returns."""
    if not shutil.which("runc"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "runc"], check=False, capture_output=True)
    if not shutil.which("runc"):
        return None
    bundle = Path(tempfile.mkdtemp(prefix="bramble-runc-"))
    try:
        subprocess.run(["cp", "-a", str(rootfs), str(bundle / "rootfs")], check=True)
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["process"]["args"] = ["/bin/sleep", "3600"]
        spec["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(spec))
        times = []
        for i in range(runs):
            name = f"bramble-bench-{os.getpid()}-{i}"
            started = time.perf_counter()
            subprocess.run(["runc", "run", "-d", "--bundle", str(bundle), name], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append((time.perf_counter() - started) * 1000)
            subprocess.run(["runc", "delete", "-f", name], check=False, capture_output=True)
        return times
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the agent benchmark runs real containers: run it as root")

    from conftest import VirtualPis, wait_for  # noqa: E402
    from kubernetes import client, watch

    os.environ["BRAMBLE_BIN"] = BRAMBLE
    import conftest
    conftest.BRAMBLE = BRAMBLE

    work = Path(tempfile.mkdtemp(prefix="bramble-agent-bench-"))
    cluster = VirtualPis(work / "data", nodes=1)
    try:
        core = client.CoreV1Api(cluster.client())
        namespace = "bench"
        core.create_namespace({"metadata": {"name": namespace}})
        image = f"{cluster.demo}:1"

        def pod(name):
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "sleep", "image": image, "command": ["sleep", "3600"]}]}}

        # Warm the image cache, then let the agent settle.
        core.create_namespaced_pod(namespace, pod("warm"))
        wait_for(lambda: core.read_namespaced_pod("warm", namespace).status.phase == "Running", timeout=120,
                 what="the warm-up pod")
        core.delete_namespaced_pod("warm", namespace, grace_period_seconds=0)
        wait_for(lambda: not monitors(cluster.data_dir), timeout=60, what="the warm-up pod to go")
        agent = cluster.agent_pid("pi-1")
        idle = settle_rss(agent, 10)

        latencies = []
        rss_at_30 = None
        monitor_pss = []
        stream = watch.Watch()
        for i in range(args.pods):
            name = f"p{i:03d}"
            created = time.perf_counter()
            core.create_namespaced_pod(namespace, pod(name))
            for event in stream.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                                       timeout_seconds=60):
                statuses = event["object"].status.container_statuses or []
                if event["object"].status.phase == "Running" and statuses and statuses[0].state.running:
                    latencies.append((time.perf_counter() - created) * 1000)
                    stream.stop()
                    break
            if i + 1 == 30:
                rss_at_30 = settle_rss(agent)
                monitor_pss = [pss_kib(p) for p in monitors(cluster.data_dir)]
        rss_at_n = settle_rss(agent)
        rootfs = next((cluster.data_dir / "nodes" / "pi-1" / "images" / "layers").iterdir(), None)
        runc = runc_latency(rootfs, 20) if rootfs else None

        print(f"\npod start, API create to Running, image cached ({len(latencies)} pods, one at a time):")
        print(f"  p50 {percentile(latencies, 50):.0f} ms   p99 {percentile(latencies, 99):.0f} ms   "
              f"max {max(latencies):.0f} ms")
        if runc:
            print(f"runc run -d of the same root and command (20 runs): p50 {percentile(runc, 50):.0f} ms   "
                  f"p99 {percentile(runc, 99):.0f} ms")
        else:
            print("runc run: runc not available")
        print("\nagent RSS:")
        print(f"  idle          {idle / 1024:.1f} MiB")
        print(f"  30 pods       {rss_at_30 / 1024:.1f} MiB")
        print(f"  {args.pods} pods      {rss_at_n / 1024:.1f} MiB")
        extra = (rss_at_n - idle) / max(1, args.pods)
        print(f"  per extra pod {extra:.0f} KiB (agent)")
        if monitor_pss:
            print(f"  per pod       {statistics.median(monitor_pss):.0f} KiB (its container monitor, PSS, median of "
                  f"{len(monitor_pss)})")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
