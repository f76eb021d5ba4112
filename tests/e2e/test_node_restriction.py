"""What a node may do to its own Node, and joining under a taken name (issue 21).

A node credential is obtained as the agent obtains it: POST /bramble/v1/join with the join secret.
Upstream's NodeRestriction texts for labels and taints; only the master sets a pod CIDR; a join
under the name of a live Node is refused unless it proves (with the key whose certificate the
Node pins) that it comes from the same machine."""

import base64
import hashlib
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from conftest import KubectlUser, wait_for

NODE = "pi-7"
CERT_ANNOTATION = "bramble.dev/agent-cert-sha256"


def call(master, method, path, token, body=None, content_type="application/json"):
    """An HTTPS request to the master; returns (status, parsed JSON body)."""
    context = ssl.create_default_context(cafile=master.ca)
    context.check_hostname = False
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(master.url + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def join_secret(master):
    return (master.data_dir / "join.token").read_text().strip().rsplit(".", 1)[-1]


def join(master, name, identity=None):
    body = {"node": name}
    if identity is not None:
        body["identity"] = identity
    return call(master, "POST", "/bramble/v1/join", join_secret(master), body)


def token_of(kubeconfig_text):
    for line in kubeconfig_text.splitlines():
        if line.strip().startswith("token:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no token in the node's kubeconfig")


class NodeUser(KubectlUser):
    """kubectl as `system:node:<name>` with the token the join gave."""

    def __init__(self, master, token, path):
        self.token = token
        self.kubeconfig = path
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: bramble
  cluster:
    server: {master.url}
    certificate-authority: {master.ca}
users:
- name: node
  user:
    token: {token}
contexts:
- name: node
  context: {{cluster: bramble, user: node}}
current-context: node
"""
        )


class Machine:
    """A machine's serving key pair (ECDSA P-256, as the agent makes it), made with openssl."""

    def __init__(self, directory):
        self.key = directory / "agent.key"
        self.cert = directory / "agent.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(self.key), "-out", str(self.cert), "-subj", f"/CN=bramble-agent-{NODE}", "-days", "30"],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self.pin = hashlib.sha256(der).hexdigest()

    def identity(self, master, node, when=None):
        """The join request's proof: the certificate and a signature over the identity message."""
        when = int(time.time()) if when is None else when
        ca_pin = (master.data_dir / "join.token").read_text().strip().split(".")[1]
        message = f"bramble-join-identity-v1\nnode={node}\ntime={when}\nca={ca_pin}\n"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=message.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return {
            "certificate": self.cert.read_text(),
            "time": when,
            "scheme": "ECDSA_NISTP256_SHA256",
            "signature": base64.b64encode(signature).decode(),
        }


def registered_node(master, tmp_path, machine):
    """Joins as NODE, registers its Node (pinning `machine`) and reports it Ready."""
    status, answer = join(master, NODE)
    assert status == 200, answer
    node = NodeUser(master, token_of(answer["kubeconfig"]), tmp_path / "node.kubeconfig")
    manifest = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"},
            "annotations": {CERT_ANNOTATION: machine.pin},
        },
    }
    node.kubectl("create", "-f", "-", input=json.dumps(manifest))
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                        "message": "ready"}],
                        "addresses": [{"type": "InternalIP", "address": "192.168.1.77"}]}}
    node.kubectl("patch", "node", NODE, "--subresource=status", "--type=merge", "-p", json.dumps(ready))
    return node


def test_a_node_never_sets_its_pod_cidr_and_no_one_changes_it(master, tmp_path):
    machine = Machine(tmp_path)
    node = registered_node(master, tmp_path, machine)
    cidr = wait_for(
        lambda: master.kubectl_json("get", "node", NODE)["spec"].get("podCIDR"),
        timeout=30,
        what="the master's pod CIDR",
    )
    for patch in [{"spec": {"podCIDR": "0.0.0.0/0"}}, {"spec": {"podCIDRs": ["192.168.1.0/24"]}}]:
        result = node.kubectl("patch", "node", NODE, "--type=merge", "-p", json.dumps(patch), check=False)
        assert result.returncode != 0
        assert (
            f'nodes "{NODE}" is forbidden: node "{NODE}" is not allowed to modify spec.podCIDR: '
            "the master assigns pod CIDRs" in result.stderr
        ), result.stderr
    spec = master.kubectl_json("get", "node", NODE)["spec"]
    assert (spec["podCIDR"], spec["podCIDRs"]) == (cidr, [cidr])

    # Nobody changes a set pod CIDR (upstream's ValidateNodeUpdate), the admin included.
    result = master.kubectl(
        "patch", "node", NODE, "--type=merge", "-p", '{"spec":{"podCIDRs":["10.42.200.0/24"]}}', check=False
    )
    assert result.returncode != 0
    assert (
        f'The Node "{NODE}" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR '
        'except from "" to valid' in result.stderr
    ), result.stderr

    # A node creating itself with a pod CIDR is refused too.
    status, answer = join(master, "pi-8")
    assert status == 200
    other = NodeUser(master, token_of(answer["kubeconfig"]), tmp_path / "pi-8.kubeconfig")
    claimed = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-8"}, "spec": {"podCIDR": cidr}}
    result = other.kubectl("create", "-f", "-", input=json.dumps(claimed), check=False)
    assert result.returncode != 0
    assert 'node "pi-8" is not allowed to set spec.podCIDR' in result.stderr, result.stderr


def test_a_node_sets_only_its_own_labels_and_never_taints(master, tmp_path):
    node = registered_node(master, tmp_path, Machine(tmp_path))
    for label in ["node-restriction.kubernetes.io/x=y", "node-role.kubernetes.io/worker="]:
        result = node.kubectl("label", "node", NODE, label, check=False)
        assert result.returncode != 0
        key = label.split("=")[0]
        assert (
            f'Error from server (Forbidden): nodes "{NODE}" is forbidden: is not allowed to modify labels: {key}'
            in result.stderr
        ), result.stderr

    # The admin's label stays while the node changes its own.
    master.kubectl("label", "node", NODE, "node-role.kubernetes.io/worker=")
    node.kubectl("label", "node", NODE, "bramble.dev/rack=2", "kubernetes.io/os=linux", "--overwrite")
    labels = master.kubectl_json("get", "node", NODE)["metadata"]["labels"]
    assert labels["node-role.kubernetes.io/worker"] == "" and labels["bramble.dev/rack"] == "2"
    result = node.kubectl("label", "node", NODE, "node-role.kubernetes.io/worker-", check=False)
    assert "is not allowed to modify labels: node-role.kubernetes.io/worker" in result.stderr

    result = node.kubectl("taint", "node", NODE, "k=v:NoSchedule", check=False)
    assert result.returncode != 0
    assert f'nodes "{NODE}" is forbidden: node "{NODE}" is not allowed to modify taints' in result.stderr

    # Creating itself with forbidden labels names them all, sorted.
    status, answer = join(master, "pi-8")
    other = NodeUser(master, token_of(answer["kubeconfig"]), tmp_path / "pi-8.kubeconfig")
    labelled = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pi-8", "labels": {
        "node-role.kubernetes.io/worker": "", "node-restriction.kubernetes.io/x": "y", "kubernetes.io/arch": "arm64"}}}
    result = other.kubectl("create", "-f", "-", input=json.dumps(labelled), check=False)
    assert (
        'nodes "pi-8" is forbidden: node "pi-8" is not allowed to set the following labels: '
        "node-restriction.kubernetes.io/x, node-role.kubernetes.io/worker" in result.stderr
    ), result.stderr


def test_a_live_name_is_joined_again_only_by_its_own_machine(master, tmp_path):
    machine = Machine(tmp_path)
    node = registered_node(master, tmp_path, machine)

    status, answer = join(master, NODE)
    assert status == 409, answer
    assert answer["message"] == (
        f'a Node with name "{NODE}" is already joined and live; delete it (kubectl delete node {NODE}) '
        "or join under another name"
    )
    assert node.kubectl("get", "node", NODE).returncode == 0, "the live node's token still works"

    impostor_dir = tmp_path / "impostor"
    impostor_dir.mkdir()
    impostor = Machine(impostor_dir)
    status, answer = join(master, NODE, impostor.identity(master, NODE))
    assert status == 409
    assert answer["message"].endswith(
        "(the proof that this is the same machine was refused: its certificate is not the one pinned on the Node)"
    ), answer
    status, answer = join(master, NODE, machine.identity(master, NODE, when=int(time.time()) - 3600))
    assert status == 409 and "away from the master's time" in answer["message"], answer
    assert node.kubectl("get", "node", NODE).returncode == 0

    status, answer = join(master, NODE, machine.identity(master, NODE))
    assert status == 200, answer
    again = NodeUser(master, token_of(answer["kubeconfig"]), tmp_path / "again.kubeconfig")
    assert again.kubectl("get", "node", NODE).returncode == 0
    old = node.kubectl("get", "node", NODE, check=False)
    assert old.returncode != 0 and "Unauthorized" in old.stderr, "the re-join replaced the old token"

    master.kubectl("delete", "node", NODE)
    status, answer = join(master, NODE)
    assert status == 200, "after kubectl delete node the name is free"


def test_the_data_directory_is_the_owners_only(master):
    # Others may pass through (a user-namespaced pod's root reaches its root file system
    # beneath a node's directory) but neither list it nor read the store.
    assert master.data_dir.stat().st_mode & 0o777 == 0o711
    for name in ["store.db", "store.db-wal"]:
        mode = (master.data_dir / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
