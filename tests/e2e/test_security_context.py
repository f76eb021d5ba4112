"""Pods that cannot hurt their Pi, nodes that cannot hurt the cluster (issue 21), on three
virtual Pis with real containers: a pod's securityContext applied to its process and to every
`kubectl exec`, seccomp's RuntimeDefault, runAsNonRoot, sysctls, Pod Security admission, user
namespaces, and what a node's own credentials may not do.

The probes run the host's Python in the container (conftest's `python_client_pod` mounts it
read-only): the demo image's busybox has no chown, no raw sockets and no unshare to try."""

import json
import os
import subprocess
import sys

from conftest import BRAMBLE, manifest, python_client_pod, wait_for

# The host's shared libraries, mounted at the same paths.
HOST_LIBRARIES = ("/usr", "/lib", "/lib64")

# Tries what a hostile tenant would try and prints what happened, then stays up for exec.
PROBE = r"""
import ctypes, errno, json, os, socket, time

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

libc = ctypes.CDLL(None, use_errno=True)

def unshare_user():
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")

open("/scratch/owned", "w").close()
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "write_root": attempt(lambda: open("/probe", "w").close()),
    "chown": attempt(lambda: os.chown("/scratch/owned", 1234, 1234)),
    "raw_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
    "alg_socket": attempt(lambda: socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0).close()),
    "unshare_user": attempt(unshare_user),
    "NoNewPrivs": status["NoNewPrivs"].strip(),
    "Seccomp": status["Seccomp"].strip(),
    "CapEff": status["CapEff"].strip(),
}), flush=True)
time.sleep(3600)
"""


def probe_pod(pis, name, pod_security=None, container_security=None, node="pi-1"):
    """A pod running PROBE with the host's interpreter, mounted at /opt/python: wherever it
    lives on the host (pyenv keeps it under /root, which a non-root user cannot pass), the
    probe needs only its standard library and the host's shared libraries."""
    pod = python_client_pod(pis, name, PROBE, node=node)
    executable = os.path.relpath(os.path.realpath(sys.executable), sys.base_prefix)
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["hostPath"]["path"] in HOST_LIBRARIES]
    pod["spec"]["volumes"] += [{"name": "python", "hostPath": {"path": sys.base_prefix}},
                               {"name": "scratch", "emptyDir": {}}]
    container = pod["spec"]["containers"][0]
    container["command"] = [os.path.join("/opt/python", executable), "-I", "-c", PROBE]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] in HOST_LIBRARIES]
    container["volumeMounts"] += [{"name": "python", "mountPath": "/opt/python", "readOnly": True},
                                  {"name": "scratch", "mountPath": "/scratch"}]
    if pod_security:
        pod["spec"]["securityContext"] = pod_security
    if container_security:
        container["securityContext"] = container_security
    return pod


def probe_result(pis, namespace, name):
    def printed():
        logs = pis.kubectl("logs", name, "-n", namespace, check=False).stdout.strip()
        return json.loads(logs.splitlines()[0]) if logs.startswith("{") else None

    return wait_for(printed, timeout=90, what=f"{name}'s probe")


def container_waiting(pis, namespace, name):
    statuses = pis.kubectl_json("get", "pod", name, "-n", namespace)["status"].get("containerStatuses") or []
    waiting = statuses[0]["state"].get("waiting") if statuses else None
    return waiting if waiting and waiting.get("reason") != "ContainerCreating" else None


HARDENED_POD = {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                "seccompProfile": {"type": "RuntimeDefault"}}
HARDENED_CONTAINER = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                      "capabilities": {"drop": ["ALL"]}}


def test_a_hardened_pod_gets_exactly_what_its_manifest_says_and_so_does_exec(pis, namespace):
    pis.kubectl("apply", "-n", namespace, "-f", "-",
                input=manifest(probe_pod(pis, "hardened", HARDENED_POD, HARDENED_CONTAINER)))
    seen = probe_result(pis, namespace, "hardened")
    assert (seen["uid"], seen["gid"]) == (1000, 3000), seen
    assert 2000 in seen["groups"], seen
    assert seen["write_root"] == "EROFS", seen
    assert seen["chown"] == "EPERM", seen
    assert seen["raw_socket"] == "EPERM", seen
    # Refused by the filter, not by a capability: RuntimeDefault has no AF_ALG and no unshare.
    assert seen["alg_socket"] == "EPERM", seen
    assert seen["unshare_user"] == "EPERM", seen
    assert (seen["NoNewPrivs"], seen["Seccomp"], seen["CapEff"]) == ("1", "2", "0000000000000000"), seen

    # kubectl exec runs as the container does: its user, groups, capabilities and filter.
    identity = pis.kubectl("exec", "hardened", "-n", namespace, "--", "id").stdout
    assert "uid=1000" in identity and "gid=3000" in identity and "2000" in identity, identity
    status = pis.kubectl("exec", "hardened", "-n", namespace, "--", "cat", "/proc/self/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NoNewPrivs"].strip() == "1", status
    assert fields["Seccomp"].strip() == "2", status
    assert fields["CapEff"].strip() == "0000000000000000", status
    assert fields["CapBnd"].strip() == "0000000000000000", status
    refused = pis.kubectl("exec", "hardened", "-n", namespace, "--", "touch", "/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr + refused.stdout


def test_capabilities_are_dropped_for_root_too_and_a_plain_pod_keeps_the_default_set(pis, namespace):
    pis.kubectl("apply", "-n", namespace, "-f", "-",
                input=manifest(probe_pod(pis, "root-dropped", None, {"capabilities": {"drop": ["ALL"]}})))
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(probe_pod(pis, "plain", node="pi-2")))
    dropped = probe_result(pis, namespace, "root-dropped")
    plain = probe_result(pis, namespace, "plain")
    assert dropped["uid"] == 0 and plain["uid"] == 0
    # The same calls, the same user: only the capabilities differ.
    assert (dropped["chown"], dropped["raw_socket"], dropped["CapEff"]) == ("EPERM", "EPERM", "0000000000000000")
    assert (plain["chown"], plain["raw_socket"], plain["write_root"]) == ("ok", "ok", "ok"), plain
    # Upstream's default: no filter and no no_new_privs unless asked for.
    assert (plain["Seccomp"], plain["NoNewPrivs"]) == ("0", "0"), plain
    assert plain["CapEff"] == "00000000a80425fb", plain  # containerd's 14 default capabilities


def test_run_as_non_root_refuses_a_root_image_with_kubelets_reason(pis, namespace):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nonroot"},
           "spec": {"securityContext": {"runAsNonRoot": True},
                    "containers": [{"name": "demo", "image": f"{pis.demo}:1"}]}}
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(pod))
    waiting = wait_for(lambda: container_waiting(pis, namespace, "nonroot"), timeout=60,
                       what="the refused container")
    uid = pis.kubectl_json("get", "pod", "nonroot", "-n", namespace)["metadata"]["uid"]
    text = (f'container has runAsNonRoot and image will run as root '
            f'(pod: "nonroot_{namespace}({uid})", container: demo)')
    assert waiting == {"reason": "CreateContainerConfigError", "message": text}, waiting
    events = pis.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                              "involvedObject.name=nonroot,reason=Failed")["items"]
    assert f"Error: {text}" in [e["message"] for e in events], events
    assert pis.kubectl_json("get", "pod", "nonroot", "-n", namespace)["status"]["phase"] == "Pending"


def test_safe_sysctls_are_set_and_unsafe_ones_refuse_the_pod(pis, namespace):
    safe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tuned"},
            "spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range",
                                                      "value": "20000 30000"}]},
                     "containers": [{"name": "demo", "image": f"{pis.demo}:1"}]}}
    unsafe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "untuned"},
              "spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]},
                       "containers": [{"name": "demo", "image": f"{pis.demo}:1"}]}}
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(safe) + "---\n" + manifest(unsafe))
    wait_for(lambda: pis.kubectl_json("get", "pod", "tuned", "-n", namespace)["status"].get("phase") == "Running",
             timeout=60, what="the tuned pod")
    ports = pis.kubectl("exec", "tuned", "-n", namespace, "--", "cat",
                        "/proc/sys/net/ipv4/ip_local_port_range").stdout.split()
    assert ports == ["20000", "30000"]
    refused = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        pis.kubectl_json("get", "pod", "untuned", "-n", namespace)["status"]), timeout=60, what="the refusal")
    assert refused["reason"] == "SysctlForbidden", refused
    assert refused["message"] == 'Pod was rejected: forbidden sysctl: "kernel.msgmax" not allowlisted', refused


def test_pod_security_admission_refuses_and_warns_on_the_pis(pis, namespace):
    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root-of-all"},
                  "spec": {"containers": [{"name": "demo", "image": f"{pis.demo}:1",
                                           "securityContext": {"privileged": True}}]}}
    pis.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    refused = pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(privileged), check=False)
    assert refused.returncode != 0
    assert ('pods "root-of-all" is forbidden: violates PodSecurity "restricted:latest": privileged '
            '(container "demo" must not set securityContext.privileged=true), allowPrivilegeEscalation != false '
            '(container "demo" must set securityContext.allowPrivilegeEscalation=false)') in refused.stderr, refused.stderr

    pis.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce-",
                "pod-security.kubernetes.io/warn=baseline")
    warned = pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(privileged))
    assert ('Warning: would violate PodSecurity "baseline:latest": privileged '
            '(container "demo" must not set securityContext.privileged=true)') in warned.stderr, warned.stderr
    # Warned, not refused: the privileged pod runs.
    wait_for(lambda: pis.kubectl_json("get", "pod", "root-of-all", "-n", namespace)["status"].get("phase")
             == "Running", timeout=60, what="the warned pod")


def test_a_pod_without_host_users_is_root_inside_and_nobody_on_the_node(pis, namespace):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "userns"},
           "spec": {"hostUsers": False,
                    "containers": [{"name": "demo", "image": f"{pis.demo}:1",
                                    "command": ["sh", "-c", "touch /made-here && exec sleep 3601"]}]}}
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(pod))
    wait_for(lambda: pis.kubectl_json("get", "pod", "userns", "-n", namespace)["status"].get("phase") == "Running",
             timeout=60, what="the user-namespaced pod")
    assert pis.kubectl("exec", "userns", "-n", namespace, "--", "id", "-u").stdout.strip() == "0"
    assert "made-here" in pis.kubectl("exec", "userns", "-n", namespace, "--", "ls", "/").stdout

    def host_uid():
        ps = subprocess.run(["pgrep", "-f", "^sleep 3601$"], capture_output=True, text=True).stdout.split()
        for pid in ps:
            for line in open(f"/proc/{pid}/status").read().splitlines():
                if line.startswith("Uid:"):
                    return int(line.split()[1])
        return None

    uid = wait_for(host_uid, timeout=10, what="the container's process on the node")
    assert uid >= 65536, f"the container's root is uid {uid} on the node"


def node_routes(pis, node):
    return subprocess.run(["ip", "netns", "exec", f"bramble-{node}", "ip", "route"],
                          capture_output=True, text=True, check=True).stdout


def test_a_nodes_own_credentials_cannot_take_traffic_or_roles_or_another_identity(pis, namespace):
    own = pis.data_dir / "nodes" / "pi-2" / "node.kubeconfig"

    def as_pi2(*args):
        return pis.kubectl("--kubeconfig", str(own), *args, check=False)

    before = pis.kubectl_json("get", "node", "pi-2")["spec"]
    for cidr in (pis.LAN, "0.0.0.0/0", pis.kubectl_json("get", "node", "pi-1")["spec"]["podCIDR"]):
        patch = json.dumps({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        refused = as_pi2("patch", "node", "pi-2", "-p", patch)
        assert refused.returncode != 0, refused.stdout
        assert "podCIDR" in refused.stderr, refused.stderr
    assert pis.kubectl_json("get", "node", "pi-2")["spec"]["podCIDR"] == before["podCIDR"]
    routes = node_routes(pis, "pi-1")
    assert "default via" not in routes.replace(f"default via {pis.GATEWAY}", ""), routes
    assert f"{pis.LAN} via" not in routes, routes

    refused = as_pi2("label", "node", "pi-2", "node-role.kubernetes.io/control-plane=")
    assert "is not allowed to modify labels: node-role.kubernetes.io/control-plane" in refused.stderr, refused.stderr
    refused = as_pi2("label", "node", "pi-2", "node-restriction.kubernetes.io/trusted=yes")
    assert "is not allowed to modify labels: node-restriction.kubernetes.io/trusted" in refused.stderr, refused.stderr
    assert as_pi2("label", "node", "pi-2", "bramble.dev/room=lab", "--overwrite").returncode == 0

    # The join token under a live node's name: refused, and the real pi-3 keeps its identity.
    token = (pis.data_dir / "join.token").read_text().strip()
    joined = subprocess.run(
        [BRAMBLE, "agent", "--server", f"https://{pis.GATEWAY}:{pis.PORT}", "--join-token", token,
         "--node-name", "pi-3", "--data-dir", str(pis.data_dir.parent / "impostor")],
        capture_output=True, text=True, timeout=30,
    )
    assert joined.returncode != 0, joined.stdout
    assert 'a Node with name "pi-3"' in joined.stderr, joined.stderr
    pi3 = pis.data_dir / "nodes" / "pi-3" / "node.kubeconfig"
    assert pis.kubectl("--kubeconfig", str(pi3), "get", "node", "pi-3", check=False).returncode == 0
    ready = next(c for c in pis.kubectl_json("get", "node", "pi-3")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_a_host_port_reaches_the_pod_from_the_lan_until_the_pod_goes(pis, namespace):
    import urllib.request

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "published"},
           "spec": {"nodeName": "pi-2", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "demo", "image": f"{pis.demo}:1",
                                    "ports": [{"containerPort": 8080, "hostPort": 18080}]}]}}
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(pod))
    url = f"http://{pis.node_ip('pi-2')}:18080/"

    def answer():
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return None

    assert "published" in wait_for(answer, timeout=60, what="the pod behind pi-2's port 18080")
    tables = subprocess.run(["ip", "netns", "exec", "bramble-pi-2", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "bramble-hostport-" in tables, tables
    pis.kubectl("delete", "pod", "published", "-n", namespace)
    tables = subprocess.run(["ip", "netns", "exec", "bramble-pi-2", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "bramble-hostport-" not in tables, tables
    assert answer() is None
