"""The static aarch64 binary from `cross/build`, run under qemu-aarch64 user emulation: it is
what a Pi runs, so it must start a master that the real kubectl can use. `tests/run` builds it
and sets BRAMBLE_ARM64_BIN."""

import os
import shutil
import signal
import subprocess

import pytest

from conftest import Master, wait_for

ARM64_BIN = os.environ.get("BRAMBLE_ARM64_BIN")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")

needs_arm64 = pytest.mark.skipif(
    not (ARM64_BIN and QEMU), reason="run through tests/run, which builds the aarch64 binary and installs qemu"
)


@needs_arm64
def test_the_aarch64_binary_is_static_and_runs_under_emulation():
    with open(ARM64_BIN, "rb") as f:
        header = f.read(64)
    assert header[:4] == b"\x7fELF" and header[4] == 2, "a 64-bit ELF file"
    assert int.from_bytes(header[18:20], "little") == 183, "built for aarch64"
    version = subprocess.run([QEMU, ARM64_BIN, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("bramble "), version.stdout


@needs_arm64
def test_an_aarch64_master_serves_kubectl(tmp_path, monkeypatch):
    # The Master fixture runs BRAMBLE; run the aarch64 binary through qemu instead.
    wrapper = tmp_path / "bramble-arm64"
    wrapper.write_text(f'#!/bin/sh\nexec {QEMU} {ARM64_BIN} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr("conftest.BRAMBLE", str(wrapper))
    master = Master(tmp_path / "data").start(timeout=120)
    try:
        assert os.path.realpath(f"/proc/{master.process.pid}/exe") == os.path.realpath(QEMU), "runs under qemu"
        master.kubectl("create", "namespace", "on-arm64")
        master.kubectl("create", "configmap", "greeting", "-n", "on-arm64", "--from-literal=hello=pi")
        data = master.kubectl_json("get", "configmap", "greeting", "-n", "on-arm64")["data"]
        assert data == {"hello": "pi"}
        wait_for(
            lambda: "Active" in master.kubectl("get", "namespace", "on-arm64").stdout,
            timeout=30,
            what="the namespace to be Active",
        )
    finally:
        master.kill(signal.SIGTERM)
