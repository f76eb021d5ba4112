"""Benchmark of stateful and scheduled workloads on virtual Pis. Prints figures; asserts nothing.
Needs root and ./tests/setup-host; stop your own `bramble up` first (it uses the same names).

Run after `cargo build --release`:
    sudo target/test-venv/bin/python tests/bench/workloads_bench.py [--replicas 10] [--cron-runs 2]

On 3 virtual Pis with the demo image cached:
- a StatefulSet of --replicas pods, each with a claim on the default class (local-path):
  time from create to all Ready, with podManagementPolicy OrderedReady and with Parallel;
- a claim's provisioning: from its pod being scheduled (the claim's selected-node) to the claim
  Bound, and to the pod Running with the volume mounted, over 10 claims;
- a CronJob `* * * * *`: how long after each minute its Job is created (--cron-runs minutes);
- the master's RSS with all of it loaded.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRAMBLE = os.environ.get("BRAMBLE_BIN", str(ROOT / "target" / "release" / "bramble"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from master_bench import rss_kib  # noqa: E402


def stateful_set(name, image, replicas, policy):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {
            "serviceName": name, "replicas": replicas, "podManagementPolicy": policy,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": image,
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}],
        },
    }


def master_pid(data_dir):
    """The `bramble master` that `bramble up` started for `data_dir`."""
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"master" in words and any(str(data_dir).encode() in word for word in words):
            return int(proc.name)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--cron-runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the workloads benchmark runs real containers: run it as root")

    import conftest
    from conftest import VirtualPis, manifest, wait_for  # noqa: E402

    conftest.BRAMBLE = BRAMBLE
    work = Path(tempfile.mkdtemp(prefix="bramble-workloads-bench-"))
    cluster = VirtualPis(work / "data", 3)
    try:
        image = f"{cluster.demo}:1"
        cluster.kubectl("create", "namespace", "bench")
        # Warm the image cache on every Pi.
        cluster.kubectl("create", "deployment", "warm", f"--image={image}", "--replicas=6", "-n", "bench")
        cluster.kubectl("rollout", "status", "deployment/warm", "-n", "bench", "--timeout=180s")
        cluster.kubectl("delete", "deployment", "warm", "-n", "bench")

        def ready_count(name):
            sts = cluster.kubectl_json("get", "sts", name, "-n", "bench")
            return sts.get("status", {}).get("readyReplicas", 0)

        print(f"\nStatefulSet of {args.replicas}, a claim each, 3 virtual Pis, image cached:")
        for policy in ("OrderedReady", "Parallel"):
            name = policy.lower()
            cluster.kubectl("create", "service", "clusterip", name, "--clusterip=None", "-n", "bench")
            started = time.perf_counter()
            cluster.kubectl("apply", "-n", "bench", "-f", "-",
                            input=manifest(stateful_set(name, image, args.replicas, policy)))
            wait_for(lambda: ready_count(name) == args.replicas, timeout=300, interval=0.05,
                     what=f"{policy} StatefulSet Ready")
            print(f"  {policy:<13} all Ready in {time.perf_counter() - started:.2f} s")

        # Claims: watched from here (one machine, one clock), so the figures are to the millisecond.
        from kubernetes import client, watch

        core = client.CoreV1Api(cluster.client())
        batch = client.BatchV1Api(cluster.client())
        seen_at = {}
        job_seen = {}

        def record(what, key):
            seen_at.setdefault((what, key), time.perf_counter())

        def watch_claims():
            for event in watch.Watch().stream(core.list_namespaced_persistent_volume_claim, "bench",
                                              timeout_seconds=600):
                claim = event["object"]
                if (claim.metadata.annotations or {}).get("volume.kubernetes.io/selected-node"):
                    record("selected", claim.metadata.name)
                if claim.status and claim.status.phase == "Bound":
                    record("bound", claim.metadata.name)

        def watch_pods():
            for event in watch.Watch().stream(core.list_namespaced_pod, "bench", timeout_seconds=600):
                pod = event["object"]
                if pod.status and pod.status.phase == "Running":
                    record("running", pod.metadata.name)

        def watch_jobs():
            for event in watch.Watch().stream(batch.list_namespaced_job, "bench", timeout_seconds=900):
                job = event["object"]
                if event["type"] == "ADDED":
                    job_seen.setdefault(job.metadata.name, time.time())

        def quietly(watcher):
            # The streams end when the cluster stops at the end; that is not news.
            def run():
                try:
                    watcher()
                except Exception:  # noqa: BLE001
                    pass
            return run

        for watcher in (watch_claims, watch_pods, watch_jobs):
            threading.Thread(target=quietly(watcher), daemon=True).start()
        time.sleep(1)
        to_bound, to_running = [], []
        for i in range(10):
            claim = f"c{i}"
            cluster.kubectl("apply", "-n", "bench", "-f", "-", input=manifest({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}}))
            cluster.kubectl("apply", "-n", "bench", "-f", "-", input=manifest({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"user-{i}"},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "app", "image": image, "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}))
            wait_for(lambda: ("running", f"user-{i}") in seen_at, timeout=60, interval=0.02, what="the pod")
            selected = seen_at.get(("selected", claim))
            if selected is not None and ("bound", claim) in seen_at:
                to_bound.append((seen_at[("bound", claim)] - selected) * 1000)
                to_running.append((seen_at[("running", f"user-{i}")] - selected) * 1000)
        if to_bound:
            print(f"\nclaim provisioning, {len(to_bound)} claims on the default class (WaitForFirstConsumer):")
            print(f"  selected node to claim Bound:        median {statistics.median(to_bound):.0f} ms, "
                  f"max {max(to_bound):.0f} ms")
            print(f"  selected node to pod Running (mounted): median {statistics.median(to_running):.0f} ms, "
                  f"max {max(to_running):.0f} ms")

        # CronJob lag: when each Job appears here, against the minute it was scheduled for.
        cluster.kubectl("create", "cronjob", "tick", f"--image={image}", "--schedule=* * * * *",
                        "-n", "bench", "--", "true")
        deadline = time.monotonic() + 65 * (args.cron_runs + 1)
        wait_for(lambda: len(job_seen) >= args.cron_runs,
                 timeout=deadline - time.monotonic(), interval=0.5, what="the CronJob's runs")
        # Each run is due on a whole minute; a lag under a minute is the seconds past it.
        lags = [(wall % 60) * 1000 for wall in job_seen.values()]
        if lags:
            print(f"\nCronJob `* * * * *` schedule lag over {len(lags)} runs: "
                  f"median {statistics.median(lags):.0f} ms, max {max(lags):.0f} ms")
        master = master_pid(cluster.data_dir)
        if master:
            print(f"\nmaster RSS with all of it loaded: {rss_kib(master) / 1024:.1f} MiB")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
