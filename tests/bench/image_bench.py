"""Benchmark of the card image: build time (cold cache and warm), image size, and the time an
emulated Pi (qemu-system-aarch64 -M virt, software emulation) takes from power-on to a Ready
node of a master on this machine.

    target/test-venv/bin/python tests/bench/image_bench.py [--boots 3] [--cold]

Needs what tests/run installs and the static binary from cross/build; run as root."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

from conftest import BRAMBLE, ROOT, Master  # noqa: E402
from test_qemu_boot import EmulatedPi  # noqa: E402

ARM64 = os.environ.get("BRAMBLE_ARM64_BIN", str(ROOT / "target/aarch64-unknown-linux-musl/release/bramble"))
SECRET = "bench-join-secret-0123456789"


def build(out: Path, cache: Path) -> tuple[Path, float]:
    started = time.monotonic()
    subprocess.run(
        [BRAMBLE, "image", "build", "--out", str(out), "--binary", ARM64, "--cache", str(cache)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("bramble-*-arm64.img")), time.monotonic() - started


def boot_to_ready(work: Path, image: Path, master: Master, index: int) -> tuple[float, float]:
    name = f"bench-pi-{index}"
    toml = f'master = "10.0.2.2:{master.port}"\njoin_token = "{SECRET}"\nhostname = "{name}"\nntp = []\n[panel]\ngpio = "none"\n'
    pi = EmulatedPi(work, image, toml, 1 << 30).start()
    try:
        userspace = None
        while True:
            log = pi.log()
            if userspace is None and "bramble: bramble" in log and "starting" in log:
                userspace = time.monotonic() - pi.started
            result = subprocess.run(
                [str(ROOT / "target/test-venv/bin/kubectl"), "--kubeconfig", str(master.kubeconfig), "get", "node", name,
                 "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                capture_output=True, text=True,
            )
            if result.stdout.strip() == "True":
                return userspace or 0.0, time.monotonic() - pi.started
            if time.monotonic() - pi.started > 600 or pi.process.poll() is not None:
                raise SystemExit("the emulated Pi did not become Ready:\n" + pi.log()[-3000:])
            time.sleep(0.25)
    finally:
        pi.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=3, help="emulated boots to time")
    parser.add_argument("--cold", action="store_true", help="also time a build with an empty download cache")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bramble-image-bench-"))
    cache = ROOT / "target" / "image-cache"
    try:
        if args.cold:
            _, cold = build(work / "cold", work / "cold-cache")
            print(f"image build, empty cache (downloads ~70 MB of .debs): {cold:6.1f} s")
        image, warm = build(work / "warm", cache)
        build(work / "warm2", cache)  # the figure below is a build with everything cached
        image, warm = build(work / "warm3", cache)
        size = image.stat().st_size
        print(f"image build, cached packages:                        {warm:6.1f} s")
        print(f"image size:                                          {size / (1 << 20):6.0f} MiB ({size} bytes)")
        data = work / "master"
        data.mkdir()
        (data / "join.secret").write_text(SECRET)
        master = Master(data, "--tls-san", "10.0.2.2", "--profile", "demo").start()
        try:
            for index in range(args.boots):
                boot_dir = work / f"boot-{index}"
                boot_dir.mkdir()
                userspace, ready = boot_to_ready(boot_dir, image, master, index)
                print(f"emulated boot {index + 1}: bramble boot running at {userspace:5.1f} s, node Ready at {ready:5.1f} s")
                shutil.rmtree(boot_dir)
        finally:
            master.kill(signal.SIGTERM)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
