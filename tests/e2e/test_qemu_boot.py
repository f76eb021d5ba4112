"""An emulated Pi boots the card image: the image's own kernel, initramfs and root partition in
`qemu-system-aarch64 -M virt` (software emulation, no KVM), with a master and a registry on
this machine. QEMU's user networking puts this machine at 10.0.2.2 for the guest. The Pi reads
bramble.toml from its boot partition (a bare join token, as a Pi owner writes it), joins as a
node, becomes Ready and runs a pod; it grows its root partition to the card's size and takes
the join token off the card. `tests/run` builds the aarch64 binary and sets BRAMBLE_ARM64_BIN."""

import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BRAMBLE, KUBECTL, Master, free_port, manifest, wait_for
from conftest import mtools as mtools_on
from test_image import build as build_card

ARM64_BIN = os.environ.get("BRAMBLE_ARM64_BIN")
QEMU = shutil.which("qemu-system-aarch64")
SECRET = "qemu-test-join-secret-0123"

pytestmark = pytest.mark.skipif(
    not (ARM64_BIN and QEMU and os.geteuid() == 0),
    reason="run through tests/run (as root), which builds the aarch64 binary and installs qemu-system-arm",
)


class EmulatedPi:
    """The card image booted in QEMU; its console goes to console.log."""

    def __init__(self, work: Path, image: Path, bramble_toml: str, card_size: int):
        self.work = work
        self.disk = work / "card.img"
        shutil.copyfile(image, self.disk)
        with open(self.disk, "r+b") as f:
            f.truncate(card_size)  # a bigger card than the image, as after flashing
        mbr = self.disk.read_bytes()[:512]
        self.disk_id = struct.unpack_from("<I", mbr, 440)[0]
        self.boot_offset = struct.unpack_from("<I", mbr, 446 + 8)[0] * 512
        (work / "bramble.toml").write_text(bramble_toml)
        self.mtools("mcopy", "-o", str(work / "bramble.toml"), "::/bramble.toml")
        config = self.mtools("mtype", "::/config.txt").decode()
        kernel = next(l.split("=", 1)[1] for l in config.splitlines() if l.startswith("kernel="))
        initrd = next(l.split()[1] for l in config.splitlines() if l.startswith("initramfs "))
        self.mtools("mcopy", f"::/{kernel}", str(work / "kernel"))
        self.mtools("mcopy", f"::/{initrd}", str(work / "initrd"))
        self.console = work / "console.log"
        self.process = None
        self.forward = ""  # QEMU hostfwd rules, e.g. "hostfwd=tcp:127.0.0.1:PORT-:6443"

    def mtools(self, *args):
        return mtools_on(self.disk, self.boot_offset, *args)

    def start(self):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                QEMU, "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
                "-nographic", "-no-reboot",
                "-kernel", str(self.work / "kernel"), "-initrd", str(self.work / "initrd"),
                "-append", f"console=ttyAMA0 root=PARTUUID={self.disk_id:08x}-02 rootwait",
                "-drive", f"file={self.disk},format=raw,if=virtio",
                "-netdev", ",".join(filter(None, ["user,id=lan", self.forward])),
                "-device", "virtio-net-pci,netdev=lan,mac=dc:a6:32:00:00:07",
                "-device", "virtio-rng-pci",
            ],
            stdin=subprocess.DEVNULL,
            stdout=open(self.console, "wb"),
            stderr=subprocess.STDOUT,
        )
        return self

    def root_partition(self) -> Path:
        """A copy of the card's root partition as it is now (for debugfs)."""
        mbr = self.disk.read_bytes()[:512]
        start, sectors = struct.unpack_from("<II", mbr, 446 + 16 + 8)
        copy = self.work / "root-now.ext4"
        with open(self.disk, "rb") as src, open(copy, "wb") as dst:
            src.seek(start * 512)
            dst.write(src.read(sectors * 512))
        return copy

    def log(self):
        return self.console.read_text(errors="replace")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def registry(tmp_path):
    port = free_port()
    log = open(tmp_path / "registry.log", "wb")
    process = subprocess.Popen(
        [BRAMBLE, "registry", "--listen", f"127.0.0.1:{port}", "--dir", str(tmp_path / "registry")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: "holds" in (tmp_path / "registry.log").read_text(), timeout=60, what="the registry")
    yield port
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def build_image(out: Path) -> Path:
    image, _ = build_card(out)
    return image


def test_an_emulated_pi_boots_the_card_joins_and_runs_a_pod(tmp_path, registry):
    data = tmp_path / "master"
    data.mkdir()
    (data / "join.secret").write_text(SECRET)
    master = Master(data, "--tls-san", "10.0.2.2", "--profile", "demo").start()
    pi = None
    try:
        image = build_image(tmp_path / "dist")
        toml = f"""# as a Pi owner writes it
role = "agent"
master = "10.0.2.2:{master.port}"
join_token = "{SECRET}"
insecure_registries = ["10.0.2.2:{registry}"]
ntp = []

[mac."DC:A6:32:00:00:07"]
hostname = "emulated-pi"

[panel]
gpio = "none"
"""
        card_size = 1 << 30
        pi = EmulatedPi(tmp_path, image, toml, card_size).start()

        def ready():
            assert pi.process.poll() is None, "QEMU exited:\n" + pi.log()[-3000:]
            assert pi.log().count("agent stopped") < 3, "the agent keeps failing:\n" + pi.log()[-3000:]
            nodes = master.kubectl_json("get", "nodes")["items"]
            for node in nodes:
                if node["metadata"]["name"] == "emulated-pi":
                    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
            return False

        try:
            wait_for(ready, timeout=600, interval=2, what="the emulated Pi to be a Ready node")
        except Exception:
            print(pi.log()[-6000:])
            raise
        boot_to_ready = time.monotonic() - pi.started
        print(f"emulated boot to Ready: {boot_to_ready:.1f} s")
        node = master.kubectl_json("get", "node", "emulated-pi")
        assert node["status"]["nodeInfo"]["architecture"] == "arm64"
        assert node["metadata"]["labels"]["bramble.dev/cluster"] == "bramble"
        console = pi.log()
        assert "bramble: grew the root partition" in console, console[-3000:]
        assert "took the secrets in bramble.toml" in console

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hello-pi"},
            "spec": {
                "nodeName": "emulated-pi",
                "containers": [
                    {
                        "name": "hello",
                        "image": f"10.0.2.2:{registry}/bramble/demo:1",
                        "command": ["sh", "-c", "uname -m; echo hello from the card; sleep 3600"],
                    }
                ],
            },
        }
        master.kubectl("apply", "-f", "-", input=manifest(pod))

        def running():
            assert pi.process.poll() is None, "QEMU exited:\n" + pi.log()[-3000:]
            status = master.kubectl_json("get", "pod", "hello-pi")["status"]
            return status.get("phase") == "Running"

        try:
            wait_for(running, timeout=300, interval=2, what="the pod to run on the emulated Pi")
        except Exception:
            print(pi.log()[-6000:])
            print(master.kubectl("get", "pod", "hello-pi", "-o", "yaml").stdout)
            raise
        pod_ip = master.kubectl_json("get", "pod", "hello-pi")["status"]["podIP"]
        assert pod_ip, "the pod has an address on the Pi's bridge"
    finally:
        if pi:
            pi.stop()
        master.kill(signal.SIGTERM)
    # After shutdown the card no longer holds the join token.
    card_toml = pi.mtools("mtype", "::/bramble.toml").decode()
    assert SECRET not in card_toml, card_toml
    assert "removed" in card_toml


def test_an_invalid_bramble_toml_is_explained_on_the_console(tmp_path):
    image = build_image(tmp_path / "dist")
    toml = 'role = "agent"\njoin_token = "short"\n[network]\naddress = "10.0.0.300/24"\n[panel]\ngpio = "none"\n'
    pi = EmulatedPi(tmp_path, image, toml, 1 << 30).start()
    try:
        wait_for(
            lambda: "read again every 10 seconds" in pi.log(),
            timeout=240,
            interval=1,
            what="the Pi to explain its bramble.toml",
        )
        console = pi.log()
        for problem in ["master is missing", "join_token: the join token is too weak: 5 characters", 'network.address = "10.0.0.300/24"']:
            assert problem in console, console[-3000:]
        assert "joining cluster" not in console, "it does not boot into a broken node"
    finally:
        pi.stop()


def test_a_master_card_runs_the_master_and_its_own_node(tmp_path):
    image = build_image(tmp_path / "dist")
    port = free_port()
    toml = 'role = "master"\nhostname = "pi-master"\nntp = []\n[panel]\ngpio = "none"\n'
    pi = EmulatedPi(tmp_path, image, toml, 1 << 30)
    pi.forward = f"hostfwd=tcp:127.0.0.1:{port}-:6443"
    pi.start()
    try:
        wait_for(lambda: "agents join with join_token" in pi.log(), timeout=300, interval=1, what="the master to start")
        console = pi.log()
        assert "made up a join token" in console, console[-3000:]
        token = None

        def admin_token():
            nonlocal token
            # The guest's ext4 commits every 5 s; read the admin token off the live disk.
            result = subprocess.run(
                ["debugfs", "-c", "-R", "cat /var/lib/bramble/master/admin.token", str(pi.root_partition())],
                capture_output=True, text=True,
            )
            token = result.stdout.strip() or None
            return token

        wait_for(admin_token, timeout=60, interval=2, what="the admin token on the card")

        def own_node_ready():
            result = subprocess.run(
                [KUBECTL, "--server", f"https://127.0.0.1:{port}", "--token", token, "--insecure-skip-tls-verify",
                 "get", "node", "pi-master", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                capture_output=True, text=True, timeout=30,
            )
            return result.stdout.strip() == "True"

        wait_for(own_node_ready, timeout=300, interval=2, what="the master's own node to be Ready")
    finally:
        pi.stop()
