"""What hardening costs a pod start, on one virtual Pi. Prints figures; asserts nothing. Needs
root and ./tests/setup-host; stop your own `bramble up` first (it uses the same names).

Run after `cargo build --release`:
    sudo target/test-venv/bin/python tests/bench/hardening_bench.py [--pods 40]

Pods are started one at a time, alternating a plain pod and a hardened one (RuntimeDefault
seccomp, every capability dropped, no privilege escalation, read-only root, a non-root user), so
both kinds see the same machine; the figure is API create to Running for each kind and the
difference of their medians (issue 21's goal: under 5 ms).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRAMBLE = os.environ.get("BRAMBLE_BIN", str(ROOT / "target" / "release" / "bramble"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

HARDENED_POD = {
    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"}},
}
HARDENED_CONTAINER = {
    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=40, help="pods of each kind")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the hardening benchmark runs real containers: run it as root")

    import conftest
    from conftest import VirtualPis, wait_for
    from agent_bench import percentile, monitors
    from kubernetes import client, watch

    os.environ["BRAMBLE_BIN"] = BRAMBLE
    conftest.BRAMBLE = BRAMBLE

    work = Path(tempfile.mkdtemp(prefix="bramble-hardening-bench-"))
    cluster = VirtualPis(work / "data", nodes=1)
    try:
        core = client.CoreV1Api(cluster.client())
        namespace = "bench"
        core.create_namespace({"metadata": {"name": namespace}})
        image = f"{cluster.demo}:1"

        def pod(name, hardened):
            container = {"name": "sleep", "image": image, "command": ["sleep", "3600"]}
            spec = {"terminationGracePeriodSeconds": 1, "containers": [container]}
            if hardened:
                container.update(HARDENED_CONTAINER)
                spec.update(HARDENED_POD)
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

        core.create_namespaced_pod(namespace, pod("warm", True))
        wait_for(lambda: core.read_namespaced_pod("warm", namespace).status.phase == "Running", timeout=120,
                 what="the warm-up pod")
        core.delete_namespaced_pod("warm", namespace, grace_period_seconds=0)
        wait_for(lambda: not monitors(cluster.data_dir), timeout=60, what="the warm-up pod to go")

        latencies = {False: [], True: []}
        stream = watch.Watch()
        for i in range(args.pods * 2):
            hardened = i % 2 == 1
            name = f"{'hard' if hardened else 'plain'}-{i:03d}"
            created = time.perf_counter()
            core.create_namespaced_pod(namespace, pod(name, hardened))
            for event in stream.stream(core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
                                       timeout_seconds=60):
                statuses = event["object"].status.container_statuses or []
                if event["object"].status.phase == "Running" and statuses and statuses[0].state.running:
                    latencies[hardened].append((time.perf_counter() - created) * 1000)
                    stream.stop()
                    break
            else:
                sys.exit(f"pod {name} did not start")

        print(f"\npod start, API create to Running, image cached, {args.pods} pods of each kind, alternating:")
        for hardened, label in ((False, "plain"), (True, "hardened")):
            values = latencies[hardened]
            print(f"  {label:9} p50 {percentile(values, 50):.1f} ms   p99 {percentile(values, 99):.1f} ms   "
                  f"max {max(values):.1f} ms")
        difference = statistics.median(latencies[True]) - statistics.median(latencies[False])
        print(f"  hardening costs {difference:+.1f} ms at the median "
              "(RuntimeDefault seccomp, drop ALL, no_new_privs, read-only root, uid 1000)")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
