"""Persistent volumes on virtual Pis with real containers: a claim of the default `local-path`
class provisioned in a Pi's storage directory, its data outliving the pod, the directory
removed when the claim goes (reclaim policy Delete); and an NFS PersistentVolume served by
Debian's kernel NFS server from a network namespace on the test LAN, mounted read-write by
pods on two Pis."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import manifest, wait_for


def apply(pis, namespace, obj):
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(obj))


def running(pod):
    return pod["status"].get("phase") == "Running" and all(
        c.get("ready") for c in pod["status"].get("containerStatuses", [])
    )


def pods(pis, namespace, selector):
    return pis.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def one_running_pod(pis, namespace, selector, other_than=None):
    def found():
        live = [
            p for p in pods(pis, namespace, selector)
            if running(p) and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["name"] != other_than
        ]
        return live[0] if len(live) == 1 else None

    return wait_for(found, timeout=120, interval=0.5, what=f"one running pod {selector}")


def exec_in(pis, namespace, pod, script):
    return pis.kubectl("exec", "-n", namespace, pod, "--", "sh", "-c", script).stdout


def test_a_claim_on_the_default_class_keeps_its_data_and_goes_with_the_claim(pis, namespace):
    apply(pis, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    })
    claim = pis.kubectl_json("get", "pvc", "data", "-n", namespace)
    assert claim["spec"]["storageClassName"] == "local-path", "the default class"
    apply(pis, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "store"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "store"}},
            "template": {
                "metadata": {"labels": {"app": "store"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                    "containers": [{
                        "name": "demo", "image": f"{pis.demo}:1",
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "data", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)"},
                        ],
                    }],
                },
            },
        },
    })
    first = one_running_pod(pis, namespace, "app=store")
    node = first["spec"]["nodeName"]
    claim = pis.kubectl_json("get", "pvc", "data", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    pv = pis.kubectl_json("get", "pv", claim["spec"]["volumeName"])
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"

    # The directory is in the Pi's storage directory, which the Pi reports on its Node.
    storage = Path(os.path.realpath(pis.data_dir / "nodes" / node / "storage"))
    reported = pis.kubectl_json("get", "node", node)["metadata"]["annotations"]["bramble.dev/storage-dir"]
    assert Path(reported) == storage
    directory = Path(pv["spec"]["hostPath"]["path"])
    assert directory == storage / f"pvc-{claim['metadata']['uid']}_{namespace}_data"

    exec_in(pis, namespace, first["metadata"]["name"], "echo kept > /data/note && echo line > /logs/out")
    assert (directory / "note").read_text() == "kept\n"
    assert (directory / "logs" / first["metadata"]["name"] / "out").read_text() == "line\n"

    # A new pod (on the same Pi: the volume's node affinity) finds the data.
    pis.kubectl("delete", "pod", first["metadata"]["name"], "-n", namespace, "--wait=false")
    second = one_running_pod(pis, namespace, "app=store", other_than=first["metadata"]["name"])
    assert second["spec"]["nodeName"] == node
    assert exec_in(pis, namespace, second["metadata"]["name"], "cat /data/note") == "kept\n"

    # The claim goes: the Pi removes the directory, then the PersistentVolume.
    pis.kubectl("delete", "deployment", "store", "-n", namespace)
    wait_for(lambda: not pods(pis, namespace, "app=store"), timeout=60, what="the pods to go")
    pis.kubectl("delete", "pvc", "data", "-n", namespace, "--wait=false")
    wait_for(
        lambda: pis.kubectl("get", "pv", pv["metadata"]["name"], check=False).returncode != 0,
        timeout=90, interval=0.5, what="the PersistentVolume to be deleted",
    )
    assert not directory.exists()
    assert storage.is_dir(), "only the volume's own directory goes"


# ---- NFS -----------------------------------------------------------------------------------

NFS_NETNS = "bramble-nfs-test"
NFS_ADDRESS = "10.98.7.250"
NFS_TOOLS = ["rpc.nfsd", "rpc.mountd", "exportfs"]

# Runs inside `ip netns exec` (its own mount namespace): nfsd's file system for this network
# namespace, private NFS state and exports, mountd and the nfsd threads; stops them on TERM.
NFS_SERVER_SCRIPT = r"""
set -e
mount -t nfsd nfsd /proc/fs/nfsd
mount -t tmpfs tmpfs /var/lib/nfs
mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/v4recovery
mount -t tmpfs tmpfs /run
printf '%s 10.98.7.0/24(rw,sync,no_subtree_check,no_root_squash,insecure)\n' "$EXPORT" > "$WORK/exports"
mount --bind "$WORK/exports" /etc/exports
if command -v rpcbind >/dev/null; then rpcbind -w || true; fi
exportfs -ra
rpc.mountd --foreground &
mountd=$!
rpc.nfsd 8
stop() { rpc.nfsd 0; exportfs -ua; kill "$mountd"; exit 0; }
trap stop TERM INT
echo serving
sleep infinity &
wait
"""


def nfs_unavailable():
    """Why the kernel NFS server and client cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NFS server needs root"
    missing = [tool for tool in NFS_TOOLS if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (tests/setup-host installs nfs-kernel-server)"
    subprocess.run(["modprobe", "-q", "nfsd"], capture_output=True)
    subprocess.run(["modprobe", "-q", "nfs"], capture_output=True)
    filesystems = Path("/proc/filesystems").read_text().split()
    for fs, role in (("nfsd", "server"), ("nfs", "client"), ("nfs4", "NFSv4 client")):
        if fs not in filesystems:
            return f"this kernel has no NFS {role} (no {fs!r} in /proc/filesystems)"
    return None


@pytest.fixture
def nfs_server(pis, tmp_path):
    """An NFS server on the test LAN at NFS_ADDRESS, exporting a fresh directory."""
    why = nfs_unavailable()
    if why:
        pytest.skip(why)
    export = tmp_path / "export"
    export.mkdir()
    export.chmod(0o777)
    run = lambda *args: subprocess.run(args, check=True, capture_output=True)
    subprocess.run(["ip", "netns", "del", NFS_NETNS], capture_output=True)
    run("ip", "netns", "add", NFS_NETNS)
    server = None
    try:
        run("ip", "link", "add", "bnfs-lan", "type", "veth", "peer", "name", "bnfs-srv")
        run("ip", "link", "set", "bnfs-srv", "netns", NFS_NETNS)
        run("ip", "link", "set", "bnfs-lan", "master", "bramble-lan", "up")
        inside = ["ip", "netns", "exec", NFS_NETNS]
        run(*inside, "ip", "addr", "add", f"{NFS_ADDRESS}/24", "dev", "bnfs-srv")
        run(*inside, "ip", "link", "set", "bnfs-srv", "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen(
            [*inside, "sh", "-c", NFS_SERVER_SCRIPT],
            env={**os.environ, "EXPORT": str(export), "WORK": str(tmp_path)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = server.stdout.readline()
        if line.strip() != "serving":
            server.wait(timeout=10)
            pytest.skip(f"the kernel NFS server did not start here: {line}{server.stdout.read()}")
        yield export
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        subprocess.run(["ip", "link", "del", "bnfs-lan"], capture_output=True)
        subprocess.run(["ip", "netns", "del", NFS_NETNS], capture_output=True)


def nfs_mounts():
    """Mount points of the test server's shares in this (the Pis') mount table."""
    return [
        line.split(" - ")[0].split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if f" {NFS_ADDRESS}:" in line
    ]


def test_an_nfs_volume_is_shared_read_write_by_pods_on_two_pis(pis, namespace, nfs_server):
    pv_name = f"nfs-{namespace}"[:63]
    pis.kubectl("apply", "-f", "-", input=manifest({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "mountOptions": ["hard"],
            "nfs": {"server": NFS_ADDRESS, "path": str(nfs_server)},
        },
    }))
    try:
        apply(pis, namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        wait_for(
            lambda: pis.kubectl_json("get", "pvc", "shared", "-n", namespace)["status"].get("phase") == "Bound",
            timeout=60, what="the claim to bind to the NFS volume",
        )
        names = {"pi-1": "writer-1", "pi-2": "writer-2"}
        for node, name in names.items():
            apply(pis, namespace, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "nfs"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}],
                    "containers": [{"name": "demo", "image": f"{pis.demo}:1",
                                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
                },
            })
        wait_for(
            lambda: (lambda p: len(p) == 2 and all(map(running, p)))(pods(pis, namespace, "app=nfs")),
            timeout=120, interval=0.5, what="a running pod on each of two Pis",
        )
        for name in names.values():
            exec_in(pis, namespace, name, f"echo from {name} > /shared/{name}")
        # Each sees the other's file, and the server holds both.
        assert exec_in(pis, namespace, "writer-1", "cat /shared/writer-2") == "from writer-2\n"
        assert exec_in(pis, namespace, "writer-2", "cat /shared/writer-1") == "from writer-1\n"
        assert sorted(p.name for p in nfs_server.iterdir()) == ["writer-1", "writer-2"]
        assert len(nfs_mounts()) == 2, nfs_mounts()

        # Pods that go unmount their shares.
        pis.kubectl("delete", "pods", "-l", "app=nfs", "-n", namespace, "--wait=true", timeout=90)
        wait_for(lambda: not nfs_mounts(), timeout=30, what="the NFS shares to be unmounted")
        assert sorted(p.name for p in nfs_server.iterdir()) == ["writer-1", "writer-2"], "data kept"
    finally:
        pis.kubectl("delete", "pvc", "shared", "-n", namespace, "--wait=false", check=False)
        pis.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
        # A share left mounted would keep the server's namespace busy.
        for point in nfs_mounts():
            subprocess.run(["umount", "-l", point], capture_output=True)
