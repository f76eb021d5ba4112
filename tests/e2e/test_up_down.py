"""`bramble up` leaves a cluster running in the background; `bramble down` removes every process,
namespace, link, mount and cgroup it made, and the next `up` finds the cluster's objects again."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import BRAMBLE, VirtualPis, wait_for


def leftovers(data_dir: Path):
    found = []
    if Path("/run/netns").exists():
        found += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith("bramble-pi-")]
    if subprocess.run(["ip", "link", "show", "bramble-lan"], capture_output=True).returncode == 0:
        found.append("link bramble-lan")
    with open("/proc/self/mountinfo") as mounts:
        found += [f"mount {line.split()[4]}" for line in mounts if str(data_dir) in line.split()[4]]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in ps.splitlines() if str(data_dir) in line]
    for controller in ("memory", "pids", "cpu", "unified", ""):
        if Path("/sys/fs/cgroup", controller, "bramble").exists():
            found.append(f"cgroup {controller}/bramble")
    return found


def test_down_removes_everything_and_up_brings_the_objects_back(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("virtual Pis need root")
    data_dir = tmp_path / "data"
    cluster = VirtualPis(data_dir, nodes=1)
    try:
        cluster.kubectl("run", "keeper", f"--image={cluster.demo}:1")
        wait_for(
            lambda: cluster.kubectl_json("get", "pod", "keeper")["status"].get("phase") == "Running",
            timeout=60,
            what="the pod to run",
        )
        again = subprocess.run([BRAMBLE, "up", "--data-dir", str(data_dir)], capture_output=True, text=True)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        cluster.stop()
    assert leftovers(data_dir) == []
    assert (data_dir / "store.db").exists(), "down keeps the cluster's objects"

    cluster = VirtualPis(data_dir, nodes=1)
    try:
        wait_for(
            lambda: cluster.kubectl_json("get", "pod", "keeper")["status"].get("phase") == "Running",
            timeout=60,
            what="the pod to run again after up",
        )
    finally:
        cluster.stop()
    purge = subprocess.run([BRAMBLE, "down", "--data-dir", str(data_dir), "--purge"], capture_output=True, text=True)
    assert purge.returncode == 0, purge.stderr
    assert not data_dir.exists()
