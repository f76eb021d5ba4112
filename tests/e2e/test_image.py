"""The flashable card image from `bramble image build`: its partition table, the boot
partition's files and settings, the root partition's static aarch64 binary and modules, that a
rebuild gives the same bytes, and that the card's bramble.toml examples are accepted.
`tests/run` builds the aarch64 binary and sets BRAMBLE_ARM64_BIN."""

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import BRAMBLE, ROOT
from conftest import mtools as mtools_on

ARM64_BIN = os.environ.get("BRAMBLE_ARM64_BIN")
CACHE = ROOT / "target" / "image-cache"
needs_arm64 = pytest.mark.skipif(not ARM64_BIN, reason="run through tests/run, which builds the aarch64 binary")
MiB = 1 << 20


def build(out: Path):
    result = subprocess.run(
        [BRAMBLE, "image", "build", "--out", str(out), "--binary", ARM64_BIN, "--cache", str(CACHE)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    images = list(out.glob("bramble-*-arm64.img"))
    assert len(images) == 1, images
    return images[0], result


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    if not ARM64_BIN:
        pytest.skip("needs BRAMBLE_ARM64_BIN")
    image, result = build(tmp_path_factory.mktemp("image"))
    return image, result


def partitions(image: Path):
    with open(image, "rb") as f:
        mbr = f.read(512)
    assert mbr[510:512] == b"\x55\xaa", "an MBR"
    disk_id = struct.unpack_from("<I", mbr, 440)[0]
    parts = []
    for slot in range(4):
        entry = mbr[446 + slot * 16 : 446 + (slot + 1) * 16]
        kind = entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if kind:
            parts.append({"boot": entry[0] == 0x80, "type": kind, "start": start * 512, "size": sectors * 512})
    return disk_id, parts


def mtools(*args, image: Path):
    return mtools_on(image, partitions(image)[1][0]["start"], *args)


def extract_root(image: Path, into: Path) -> Path:
    root = partitions(image)[1][1]
    path = into / "root.ext4"
    with open(image, "rb") as src, open(path, "wb") as dst:
        src.seek(root["start"])
        dst.write(src.read(root["size"]))
    return path


def debugfs(fs: Path, command: str) -> str:
    """debugfs's answer; it reports a missing file on stderr, so both are returned."""
    result = subprocess.run(["debugfs", "-R", command, str(fs)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@needs_arm64
def test_the_card_has_a_fat_boot_and_an_ext4_root_partition(card):
    image, result = card
    assert "[9/9]" in result.stderr, "progress is shown:\n" + result.stderr
    size = image.stat().st_size
    assert size < 300 * MiB, f"the image is {size / MiB:.0f} MiB"
    disk_id, parts = partitions(image)
    assert len(parts) == 2
    boot, root = parts
    assert boot == {"boot": True, "type": 0x0C, "start": 4 * MiB, "size": boot["size"]}, boot
    assert root["type"] == 0x83
    assert root["start"] == boot["start"] + boot["size"], "root follows boot"
    assert root["start"] + root["size"] == size, "the image ends with the root partition"
    assert all(p["start"] % (4 * MiB) == 0 for p in parts), "aligned to 4 MiB erase blocks"
    # The checksum file is sha256sum's format and right.
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert Path(f"{image}.sha256").read_text() == f"{digest}  {image.name}\n"


@needs_arm64
def test_the_boot_partition_holds_firmware_kernel_device_trees_and_settings(card):
    image, _ = card
    disk_id, _ = partitions(image)
    listing = mtools("mdir", "-b", "::/", image=image).decode()
    files = {line.strip().removeprefix("::/") for line in listing.splitlines()}
    for firmware in ["bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat", "start_cd.elf", "start4cd.elf"]:
        assert firmware in files, f"{firmware} missing: {sorted(files)}"
    # Device trees of every supported board (mainline names; config.txt sets upstream_kernel).
    for dtb in [
        "bcm2837-rpi-3-b.dtb",
        "bcm2837-rpi-3-b-plus.dtb",
        "bcm2837-rpi-3-a-plus.dtb",
        "bcm2837-rpi-zero-2-w.dtb",
        "bcm2837-rpi-cm3-io3.dtb",
        "bcm2711-rpi-4-b.dtb",
        "bcm2711-rpi-400.dtb",
        "bcm2711-rpi-cm4-io.dtb",
    ]:
        assert dtb in files, f"{dtb} missing"
    config = mtools("mtype", "::/config.txt", image=image).decode()
    settings = {}
    for line in config.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=") if "=" in line else line.partition(" ")
            settings[key] = value
    assert settings["arm_64bit"] == "1"
    assert settings["upstream_kernel"] == "1"
    assert settings["enable_uart"] == "1"
    assert settings["kernel"] in files, "config.txt names the kernel that is there"
    initramfs, follow = settings["initramfs"].split()
    assert initramfs in files and follow == "followkernel"
    cmdline = mtools("mtype", "::/cmdline.txt", image=image).decode()
    assert cmdline.count("\n") == 1, "cmdline.txt is one line"
    args = cmdline.split()
    assert f"root=PARTUUID={disk_id:08x}-02" in args, cmdline
    assert "rootwait" in args and "console=ttyS1,115200" in args
    kernel = mtools("mtype", f"::/{settings['kernel']}", image=image)
    assert kernel[56:60] == b"ARM\x64", "an arm64 Linux Image"
    toml = mtools("mtype", "::/bramble.toml", image=image).decode()
    assert 'role = "agent"' in toml and "[mac." in toml
    assert "README.txt" in files


@needs_arm64
def test_the_root_partition_holds_the_static_binary_modules_and_tools(card, tmp_path):
    image, _ = card
    fs = extract_root(image, tmp_path)
    binary = tmp_path / "bramble"
    debugfs(fs, f"dump /usr/bin/bramble {binary}")
    header = binary.read_bytes()[:64]
    assert header[:4] == b"\x7fELF" and header[4] == 2
    assert struct.unpack_from("<H", header, 18)[0] == 183, "aarch64"
    assert binary.read_bytes() == Path(ARM64_BIN).read_bytes()
    check = subprocess.run(["readelf", "-lW", str(binary)], capture_output=True, text=True)
    if check.returncode == 0:
        assert "INTERP" not in check.stdout and "DYNAMIC" not in check.stdout, "statically linked"
    release = debugfs(fs, "cat /etc/bramble-release")
    kernel = next(line.split("=", 1)[1] for line in release.splitlines() if line.startswith("KERNEL="))
    modules_dep = debugfs(fs, f"cat /lib/modules/{kernel}/modules.dep")
    for module in ["overlay.ko", "veth.ko", "bridge.ko", "br_netfilter.ko", "nf_tables.ko", "ext4.ko", "brcmfmac.ko", "genet.ko", "lan78xx.ko", "smsc95xx.ko", "sdhci-iproc.ko"]:
        assert f"/{module}:" in modules_dep, f"{module} missing"
    for path in ["/bin/busybox", "/usr/sbin/nft", "/sbin/wpa_supplicant", "/usr/sbin/dropbear", "/usr/share/udhcpc/default.script", "/lib/ld-linux-aarch64.so.1"]:
        assert "File not found" not in debugfs(fs, f"stat {path}"), f"{path} missing"
    owner = debugfs(fs, "stat /usr/bin/bramble")
    assert "User:     0   Group:     0" in owner, "files belong to root"
    # Only what the programs need: no package management, no documentation.
    assert "File not found" in debugfs(fs, "stat /usr/bin/dpkg")
    # Wi-Fi firmware of the Pi 3 (43430) and Pi 3B+/4/400 (43455): real files, not links.
    for firmware in ["brcmfmac43430-sdio.bin", "brcmfmac43455-sdio.bin", "brcmfmac43455-sdio.clm_blob"]:
        info = debugfs(fs, f"stat /lib/firmware/brcm/{firmware}")
        assert "Type: regular" in info, f"{firmware}: {info}"


@needs_arm64
def test_a_rebuild_gives_the_same_bytes(card, tmp_path):
    image, _ = card
    again, result = build(tmp_path)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(image.read_bytes()).hexdigest()


def test_the_card_examples_are_accepted_and_mistakes_are_explained(tmp_path):
    for example in sorted((ROOT / "image" / "examples").glob("*.toml")):
        result = subprocess.run([BRAMBLE, "image", "check", str(example)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{example.name}: {result.stdout}{result.stderr}"
    shared = ROOT / "image" / "examples" / "one-card-for-all.toml"
    result = subprocess.run(
        [BRAMBLE, "image", "check", str(shared), "--mac", "DC:A6:32:00:00:01"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "role: master" in result.stdout and "hostname: pi-1" in result.stdout, result.stdout
    bad = tmp_path / "bramble.toml"
    bad.write_text('role = "agent"\njoin_token = "short"\n[network]\naddress = "10.0.0.300/24"\n')
    result = subprocess.run([BRAMBLE, "image", "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    for problem in ["master is missing", "join_token: the join token is too weak: 5 characters", "network.address"]:
        assert problem in result.stderr, result.stderr
    bad.write_text("role = agent\n")
    result = subprocess.run([BRAMBLE, "image", "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "line 1" in result.stderr, result.stderr
