"""`bramble image flash` on a real block device (a loop device over a file): it writes and
checks the image with progress, and refuses partitions, disks with a mounted partition,
images that do not match their .sha256, and erasing without --yes when nobody can be asked."""

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import BRAMBLE, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
MiB = 1 << 20


def small_image(path: Path) -> Path:
    """A 40 MiB card image: an MBR with one ext4 partition at 1 MiB (this VM's kernel has no
    FAT driver to mount), and a .sha256."""
    with open(path, "wb") as f:
        f.truncate(40 * MiB)
        mbr = bytearray(512)
        struct.pack_into("<I", mbr, 440, 0xB0A710AD)
        entry = bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF]) + struct.pack("<II", 2048, 32 * 2048)
        mbr[446:462] = entry
        mbr[510:512] = b"\x55\xaa"
        f.write(mbr)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", str(path), "32M"],
        check=True,
        capture_output=True,
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    return path


@pytest.fixture
def card(tmp_path):
    backing = tmp_path / "card.raw"
    with open(backing, "wb") as f:
        f.truncate(128 * MiB)
    device = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    yield device, backing
    subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True)
    subprocess.run(["losetup", "-d", device], capture_output=True)


def add_partitions(device):
    if not Path(f"{device}p1").exists():
        subprocess.run(["partx", "--add", device], capture_output=True)


def flash(image, device, *extra):
    return subprocess.run(
        [BRAMBLE, "image", "flash", str(image), device, *extra],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_an_image_is_written_checked_and_shows_progress(tmp_path, card):
    device, backing = card
    image = small_image(tmp_path / "bramble-test-arm64.img")
    result = flash(image, device, "--yes")
    assert result.returncode == 0, result.stderr
    assert "matches its .sha256" in result.stderr
    assert "100%" in result.stderr and "MiB/s" in result.stderr, result.stderr
    assert "Wrote and checked" in result.stdout
    written = backing.read_bytes()[: image.stat().st_size]
    assert written == image.read_bytes()
    # The card's partition is there (partx, as some kernels, like this VM's, do not parse MBRs).
    add_partitions(device)
    wait_for(lambda: Path(f"{device}p1").exists(), timeout=10, what="the new partition")


def test_a_card_in_use_or_a_partition_is_refused(tmp_path, card):
    device, backing = card
    image = small_image(tmp_path / "bramble-test-arm64.img")
    assert flash(image, device, "--yes").returncode == 0
    add_partitions(device)
    wait_for(lambda: Path(f"{device}p1").exists(), timeout=10, what="the new partition")

    result = flash(image, f"{device}p1", "--yes")
    assert result.returncode != 0
    assert "a partition; give the whole disk" in result.stderr, result.stderr

    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    subprocess.run(["mount", f"{device}p1", str(mount_point)], check=True)
    (mount_point / "keep.txt").write_text("acknowledged data")
    before = backing.read_bytes()
    result = flash(image, device, "--yes")
    assert result.returncode != 0
    assert f"{device}p1 is mounted on {mount_point}" in result.stderr, result.stderr
    assert f"umount {mount_point}" in result.stderr
    assert backing.read_bytes() == before, "nothing was written"
    subprocess.run(["umount", str(mount_point)], check=True)


def test_no_yes_without_a_terminal_and_a_corrupt_image_are_refused(tmp_path, card):
    device, backing = card
    image = small_image(tmp_path / "bramble-test-arm64.img")
    result = flash(image, device)
    assert result.returncode != 0 and "add --yes" in result.stderr, result.stderr
    with open(image, "r+b") as f:
        f.seek(20 * MiB)
        f.write(b"flipped")
    result = flash(image, device, "--yes")
    assert result.returncode != 0 and "does not match its .sha256" in result.stderr, result.stderr
    assert backing.read_bytes()[:512] == bytes(512), "nothing was written"
    result = flash(image, str(tmp_path / "not-a-disk"), "--yes")
    assert result.returncode != 0
