"""Benchmark of the dashboard watching a big cluster. Prints figures; asserts nothing.

Run after `cargo build --release` (needs tmux):
    target/test-venv/bin/python tests/bench/tui_bench.py [--nodes 100] [--pods 3000] [--seconds 30]

A master (demo profile) with --nodes simulated nodes and --pods pods in 10 Deployments; then
`bramble tui` in a 200x60 tmux pane. Prints the dashboard's RSS and CPU:
- at start, once it shows every pod;
- idle for --seconds (watches open, nothing changes);
- under churn for --seconds: every 2 s one Deployment scales by ±50 pods, and one node is
  killed and revived, so the pods move.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from master_bench import rss_kib  # noqa: E402
from scale_bench import BRAMBLE, Cluster, cpu_seconds  # noqa: E402


def hwm_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Pane:
    def __init__(self, command, width=200, height=60):
        self.socket = f"bramble-bench-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "LANG": "C.UTF-8"}
        self.tmux("new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height), shlex.join(command))
        pid = int(self.tmux("display-message", "-p", "-t", "tui", "#{pane_pid}").strip())
        # The pane runs the command through a shell, which may or may not exec it.
        if Path(f"/proc/{pid}/comm").read_text().strip() != "bramble":
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        self.pid = pid

    def tmux(self, *args):
        return subprocess.run(["tmux", "-u", "-L", self.socket, *args], env=self.env,
                              capture_output=True, text=True, check=True).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def close(self):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def measure(pid, seconds, during=None):
    """CPU share and RSS of `pid` over `seconds`, calling `during(elapsed)` every 2 s."""
    cpu_before, start = cpu_seconds(pid), time.monotonic()
    samples = []
    step = 0
    while (elapsed := time.monotonic() - start) < seconds:
        if during and elapsed >= step * 2:
            during(step)
            step += 1
        samples.append(rss_kib(pid))
        time.sleep(0.5)
    cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - start) * 100
    return cpu, max(samples) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bramble-tui-bench-") as workdir:
        print(f"starting a master with {args.nodes} simulated nodes ...", flush=True)
        cluster = Cluster(workdir, "demo", args.nodes)
        pane = None
        try:
            per_deployment = args.pods // 10
            for i in range(10):
                cluster.deployment(f"app-{i}", per_deployment)
            print(f"waiting for {per_deployment * 10} pods to run ...", flush=True)
            cluster.wait(lambda: len([p for p in cluster.pods("app") if p.get("status", {}).get("phase") == "Running"])
                         >= per_deployment * 10, 900, interval=2)
            pane = Pane([BRAMBLE, "tui", "--kubeconfig", str(cluster.kubeconfig), "--demo"])
            started = time.monotonic()
            try:
                cluster.wait(lambda: f"pods {per_deployment * 10}" in pane.screen(), 120, interval=0.2)
            except TimeoutError:
                sys.exit(f"the dashboard did not show {per_deployment * 10} pods:\n{pane.screen()}")
            print(f"dashboard shows all {per_deployment * 10} pods {time.monotonic() - started:.1f} s after start; "
                  f"RSS {rss_kib(pane.pid) / 1024:.1f} MiB, CPU so far {cpu_seconds(pane.pid):.2f} s", flush=True)

            idle_cpu, idle_rss = measure(pane.pid, args.seconds)
            print(f"idle  {args.seconds} s: CPU {idle_cpu:.1f} % of a core, RSS max {idle_rss:.1f} MiB", flush=True)

            def churn(step):
                name = f"app-{step % 10}"
                replicas = per_deployment + (50 if step % 2 == 0 else 0)
                cluster.kubectl("scale", "deployment", name, f"--replicas={replicas}")
                if step % 5 == 0:
                    node = f"sim-{step // 5 % args.nodes + 1}"
                    subprocess.run([BRAMBLE, "sim", "kill", node, "--kubeconfig", str(cluster.kubeconfig)],
                                   capture_output=True)
                elif step % 5 == 3:
                    node = f"sim-{step // 5 % args.nodes + 1}"
                    subprocess.run([BRAMBLE, "sim", "revive", node, "--kubeconfig", str(cluster.kubeconfig)],
                                   capture_output=True)

            churn_cpu, churn_rss = measure(pane.pid, args.seconds, churn)
            print(f"churn {args.seconds} s: CPU {churn_cpu:.1f} % of a core, RSS max {churn_rss:.1f} MiB "
                  f"(peak over the run {hwm_kib(pane.pid) / 1024:.1f} MiB)", flush=True)
        finally:
            if pane:
                pane.close()
            cluster.stop()


if __name__ == "__main__":
    main()
