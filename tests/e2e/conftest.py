"""Shared fixtures: a real `bramble master` per test, real kubectl, the real Python client."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BRAMBLE = os.environ.get("BRAMBLE_BIN", str(ROOT / "target" / "debug" / "bramble"))
KUBECTL = os.environ.get("KUBECTL", str(ROOT / "target" / "test-venv" / "bin" / "kubectl"))


class KubectlUser:
    """Real kubectl and the Python client against `self.kubeconfig`."""

    kubeconfig: Path

    def kubectl(self, *args, input=None, check=True, timeout=60):
        """Runs real kubectl with this kubeconfig; returns the completed process."""
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def kubectl_json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def client(self):
        """A Python `kubernetes` ApiClient for this cluster."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)


class Master(KubectlUser):
    """A `bramble master` process with its own data directory, listening on a free port."""

    def __init__(self, data_dir: Path, *extra_args: str):
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.kubeconfig = data_dir / "admin.kubeconfig"
        self.process = None
        self.log = data_dir.parent / "master.log"

    def start(self, timeout=30.0):
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        # A fixed port keeps watches and kubeconfigs valid across restarts in one test.
        if not hasattr(self, "port"):
            self.port = free_port()
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [BRAMBLE, "master", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}", *self.extra_args],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while not self.kubeconfig.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"master exited with {self.process.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError("master did not write its kubeconfig")
            time.sleep(0.05)
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    @property
    def token(self):
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self):
        return str(self.data_dir / "pki" / "ca.crt")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def master(tmp_path):
    m = Master(tmp_path / "data").start()
    yield m
    m.kill(signal.SIGTERM)


class Sim:
    """A `bramble sim` process keeping simulated nodes alive against a master."""

    def __init__(self, master: Master, nodes: int, *extra_args: str):
        self.master = master
        self.log = master.data_dir.parent / "sim.log"
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [BRAMBLE, "sim", "--kubeconfig", str(master.kubeconfig), "--nodes", str(nodes), *extra_args],
            stdout=log,
            stderr=log,
        )
        wait_for(lambda: self.ready_nodes() >= nodes, timeout=30, what=f"{nodes} ready simulated nodes")

    def ready_nodes(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"sim exited with {self.process.returncode}: {self.log.read_text()}")
        nodes = self.master.kubectl_json("get", "nodes")["items"]
        return sum(
            1
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            and not n.get("spec", {}).get("taints")
        )

    def chaos(self, verb, node):
        subprocess.run(
            [BRAMBLE, "sim", verb, node, "--kubeconfig", str(self.master.kubeconfig)],
            check=True,
            capture_output=True,
        )

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def wait_for(condition, timeout=30.0, interval=0.1, what="condition"):
    """Polls `condition` until it returns something truthy; returns that or fails with `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def mtools(disk, offset, *args):
    """Runs an mtools command (`mdir`, `mtype`, `mcopy`) on the FAT partition at byte `offset`
    of the disk image `disk`; its output."""
    result = subprocess.run(
        [args[0], "-i", f"{disk}@@{offset}", *args[1:]],
        capture_output=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def demo_cluster(tmp_path):
    """A master with the demo profile and three simulated nodes."""
    m = Master(tmp_path / "data", "--profile", "demo").start()
    sim = Sim(m, 3)
    yield m, sim
    sim.stop()
    m.kill(signal.SIGTERM)


def manifest(obj) -> str:
    return yaml.safe_dump(obj)


class VirtualPis(KubectlUser):
    """`bramble up`: the master, a local registry and N virtual Pis running real containers.

    Needs root and tests/setup-host. The test LAN and port differ from `bramble up`'s defaults,
    but the namespace and bridge names are the same: do not run the tests next to a cluster of
    your own."""

    LAN = "10.98.7.0/24"
    GATEWAY = "10.98.7.1"
    PORT = 16443

    def __init__(self, data_dir: Path, nodes: int = 3, *extra_args: str):
        self.data_dir = data_dir
        self.nodes = [f"pi-{i}" for i in range(1, nodes + 1)]
        self.kubeconfig = data_dir / "admin.kubeconfig"
        self.output = data_dir.parent / "up.out"
        self.registry = f"{self.GATEWAY}:5000"
        self.demo = f"{self.registry}/bramble/demo"
        data_dir.mkdir(parents=True, exist_ok=True)
        # pytest's base directory is private (0700): a user-namespaced pod's unprivileged root
        # must pass it to reach its root file system, as on a Pi's /var/lib/bramble.
        for parent in data_dir.parents:
            if parent == Path(tempfile.gettempdir()):
                break
            if not parent.stat().st_mode & 0o001:
                parent.chmod(parent.stat().st_mode | 0o001)
        # `bramble up` returns once every Pi is Ready and leaves the cluster in the background.
        started = subprocess.run(
            [BRAMBLE, "up", "--data-dir", str(data_dir), "--nodes", str(nodes), "--lan", self.LAN,
             "--port", str(self.PORT), "--profile", "demo", *extra_args],
            capture_output=True, text=True, timeout=300,
        )
        self.output.write_text(started.stdout + started.stderr)
        if started.returncode != 0 or "bramble is up" not in started.stdout:
            # Whatever part of it started must not linger into the next module's cluster.
            subprocess.run([BRAMBLE, "down", "--data-dir", str(data_dir)], capture_output=True, timeout=120)
            raise RuntimeError(f"bramble up failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")

    def node_ip(self, node):
        """The LAN address of `pi-N`: the (10+N)th address of the LAN."""
        return f"10.98.7.{10 + int(node.split('-')[1])}"

    def agent_log(self, node):
        return (self.data_dir / "logs" / f"{node}.log").read_text()

    def agent_pid(self, node):
        return int((self.data_dir / "nodes" / node / "agent.pid").read_text())

    def chaos(self, verb, node):
        subprocess.run([BRAMBLE, "sim", verb, node, "--kubeconfig", str(self.kubeconfig)],
                       check=True, capture_output=True)

    def stop(self):
        down = subprocess.run([BRAMBLE, "down", "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def pis(tmp_path_factory):
    """Three virtual Pis shared by a test module; each test works in its own namespace."""
    if os.geteuid() != 0:
        pytest.skip("virtual Pis need root")
    cluster = VirtualPis(tmp_path_factory.mktemp("pis") / "data")
    yield cluster
    cluster.stop()


def python_client_pod(pis, name, script, node="pi-1", **spec):
    """A pod on a virtual Pi that runs `script` with the official Python client.

    The demo image is a static binary with no Python, so the pod mounts, read-only at the same
    paths, the host's Python: the interpreter and its libraries, and the test venv holding the
    `kubernetes` package (wherever they are: /usr, pyenv, target/test-venv)."""
    paths = ["/usr", "/lib", "/lib64", sys.prefix, sys.base_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))]
    host_paths = []
    for path in paths:
        if os.path.exists(path) and not any(path == p or path.startswith(p + "/") for p in host_paths):
            host_paths = [p for p in host_paths if not p.startswith(path + "/")] + [path]
    volumes, mounts = [], []
    for i, path in enumerate(host_paths):
        volumes.append({"name": f"host-{i}", "hostPath": {"path": path}})
        mounts.append({"name": f"host-{i}", "mountPath": path, "readOnly": True})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "volumes": volumes,
            "containers": [{
                "name": "client", "image": f"{pis.demo}:1",
                "command": [os.path.join(sys.prefix, "bin", "python"), "-c", script],
                "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "volumeMounts": mounts,
            }],
            **spec,
        },
    }


@pytest.fixture
def namespace(pis, request):
    # A DNS label from the test's name (parameters included), unique when it has to be cut.
    full = re.sub(r"[^a-z0-9-]+", "-", request.node.name.replace("_", "-").lower()).strip("-")
    if len(full) > 50:
        full = full[:43].strip("-") + "-" + hashlib.sha1(full.encode()).hexdigest()[:6]
    name = "t-" + full
    pis.kubectl("create", "namespace", name)
    yield name
    pis.kubectl("delete", "namespace", name, "--wait=false", check=False)
