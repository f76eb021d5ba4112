"""Benchmark of `bramble master`: memory, latency and disk writes. Prints figures; asserts nothing.

Run after `cargo build --release`:
    target/test-venv/bin/python tests/bench/master_bench.py [--pods 30000] [--idle-seconds 60]
"""

import argparse
import http.client
import json
import os
import queue
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTPS connection with the admin token."""

    def __init__(self, port, token, ca):
        self.port, self.token = port, token
        self.context = ssl.create_default_context(cafile=ca)
        self.connection = None

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in range(3):
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=60)
                headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
                self.connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                return response.status, data
            except (http.client.HTTPException, OSError):
                self.connection = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def io_counters(pid):
    counters = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        counters[key] = int(value)
    return counters


def pod(name):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "shard": str(hash(name) % 10)}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def fmt_ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def create_pods(port, token, ca, namespace, start, count, threads):
    work = queue.Queue()
    for i in range(start, start + count):
        work.put(i)
    latencies, errors = [], []

    def worker():
        client = Client(port, token, ca)
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            began = time.perf_counter()
            status, data = client.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod(f"pod-{i:05d}"))
            latencies.append(time.perf_counter() - began)
            if status != 201:
                errors.append((status, data[:200]))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        print(f"  {len(errors)} create errors, first: {errors[0]}")
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "bramble"))
    parser.add_argument("--pods", type=int, default=30000)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="bramble-bench-"))
    port = free_port()
    print(f"binary {args.binary}\ndata   {data_dir}")
    master = subprocess.Popen([args.binary, "master", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (data_dir / "admin.kubeconfig").exists():
            time.sleep(0.05)
        token = (data_dir / "admin.token").read_text().strip()
        ca = str(data_dir / "pki" / "ca.crt")
        client = Client(port, token, ca)
        time.sleep(3)
        print(f"\nidle RSS                       {rss_kib(master.pid) / 1024:.1f} MiB")

        # Ten nodes heartbeating: leases renewed every 10 s, as kubelets do.
        for i in range(10):
            client.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": f"pi-{i}"}, "spec": {"holderIdentity": f"pi-{i}", "leaseDurationSeconds": 40}})
        os.sync()
        time.sleep(1)
        before = io_counters(master.pid)
        began = time.monotonic()
        renewals = 0
        while time.monotonic() - began < args.idle_seconds:
            for i in range(10):
                now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
                status, _ = client.request("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pi-{i}",
                                           {"spec": {"renewTime": now}}, "application/merge-patch+json")
                renewals += status == 200
            time.sleep(10)
        elapsed = time.monotonic() - began
        after = io_counters(master.pid)
        written = after["write_bytes"] - before["write_bytes"]
        print(f"idle disk writes, 10 leases    {written / elapsed:.1f} B/s = {written / elapsed * 60 / 1024:.2f} KiB/min "
              f"({renewals} renewals in {elapsed:.0f} s; syscall writes {(after['wchar'] - before['wchar']) / elapsed:.1f} B/s)")

        client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        latencies = create_pods(port, token, ca, "bench", 0, 1000, 1)
        print(f"create pod (1 client)          p50 {fmt_ms(statistics.median(latencies))}  p99 {fmt_ms(percentile(latencies, 0.99))}")
        print(f"RSS holding 1,000 pods         {rss_kib(master.pid) / 1024:.1f} MiB")
        list_latencies = []
        for _ in range(50):
            began = time.perf_counter()
            status, data = client.request("GET", "/api/v1/namespaces/bench/pods")
            list_latencies.append(time.perf_counter() - began)
        count = len(json.loads(data)["items"])
        print(f"list {count} pods                 p50 {fmt_ms(statistics.median(list_latencies))}  p99 {fmt_ms(percentile(list_latencies, 0.99))}")

        if args.pods > 1000:
            began = time.monotonic()
            bulk = create_pods(port, token, ca, "bench", 1000, args.pods - 1000, args.threads)
            took = time.monotonic() - began
            print(f"create {len(bulk)} more ({args.threads} clients)  {len(bulk) / took:.0f}/s  "
                  f"p50 {fmt_ms(statistics.median(bulk))}  p99 {fmt_ms(percentile(bulk, 0.99))}")
            time.sleep(2)
            print(f"RSS holding {args.pods:,} pods        {rss_kib(master.pid) / 1024:.1f} MiB")
            list_latencies = []
            for _ in range(20):
                began = time.perf_counter()
                client.request("GET", "/api/v1/namespaces/bench/pods?limit=1000")
                list_latencies.append(time.perf_counter() - began)
            print(f"list 1,000 of {args.pods:,} (limit)     p50 {fmt_ms(statistics.median(list_latencies))}  p99 {fmt_ms(percentile(list_latencies, 0.99))}")
            print(f"RSS after lists                {rss_kib(master.pid) / 1024:.1f} MiB")
        db = data_dir / "store.db"
        print(f"database size                  {db.stat().st_size / 1024 / 1024:.1f} MiB (+ WAL {Path(str(db) + '-wal').stat().st_size / 1024 / 1024:.1f} MiB)")
    finally:
        master.terminate()
        master.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
