"""Users with client certificates: `bramble user add/list/revoke`, the CSR API through real
kubectl (`get csr`, `certificate approve/deny`) with requests made by openssl, and revocation."""

import base64
import json
import stat
import subprocess

import yaml

from conftest import BRAMBLE, KUBECTL, wait_for


def bramble_user(m, *args, check=True):
    result = subprocess.run(
        [BRAMBLE, "user", "--kubeconfig", str(m.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"bramble user {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def kubectl_as(kubeconfig, *args):
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60)


def openssl_request(tmp_path, subject):
    key = tmp_path / "user.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    request = subprocess.run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", subject],
        check=True,
        capture_output=True,
    ).stdout
    return base64.b64encode(request).decode()


def csr_manifest(name, request, usages=("client auth",), seconds=86400):
    return json.dumps(
        {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": request,
                "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": list(usages),
                "expirationSeconds": seconds,
            },
        }
    )


def test_user_add_gives_a_working_kubeconfig_and_revoke_ends_it(master, tmp_path):
    m = master
    m.kubectl("create", "namespace", "team-a")
    kubeconfig = tmp_path / "alice.kubeconfig"
    added = bramble_user(
        m, "add", "alice", "--group", "team", "--namespace", "team-a", "--role", "edit", "-o", str(kubeconfig)
    )
    assert "alice" in added.stdout and "bramble-user:alice:edit" in added.stdout, added.stdout
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600

    config = yaml.safe_load(kubeconfig.read_text())
    assert config["contexts"][0]["context"]["namespace"] == "team-a"
    user = config["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}
    certificate = tmp_path / "alice.crt"
    certificate.write_bytes(base64.b64decode(user["client-certificate-data"]))
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-subject", "-ext", "extendedKeyUsage"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CN=alice" in text.replace(" ", "") and "O=team" in text.replace(" ", ""), text
    assert "TLS Web Client Authentication" in text and "Server" not in text, text
    verified = subprocess.run(["openssl", "verify", "-CAfile", m.ca, str(certificate)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    binding = m.kubectl_json("get", "rolebinding", "-n", "team-a", "bramble-user:alice:edit")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]

    listed = bramble_user(m, "list").stdout
    assert listed.splitlines()[0].split() == ["USER", "GROUPS", "SERIAL", "EXPIRES", "STATE", "REQUEST"]
    row = next(line.split() for line in listed.splitlines()[1:] if line.startswith("alice"))
    assert row[1] == "team" and row[4] == "valid", listed
    serial = subprocess.run(
        ["openssl", "x509", "-in", str(certificate), "-noout", "-serial"], check=True, capture_output=True, text=True
    ).stdout.strip().split("=")[1]
    assert row[2] == serial.lower().lstrip("0"), (row, serial)

    # The certificate authenticates (needs client-certificate authentication in the server).
    whoami = kubectl_as(kubeconfig, "auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    info = json.loads(whoami.stdout)["status"]["userInfo"]
    assert info["username"] == "alice"
    assert "team" in info["groups"] and "system:authenticated" in info["groups"]
    assert kubectl_as(kubeconfig, "get", "pods").returncode == 0
    # RBAC: edit in team-a only.
    elsewhere = kubectl_as(kubeconfig, "get", "pods", "-n", "kube-system")
    assert elsewhere.returncode != 0 and "Forbidden" in elsewhere.stderr, elsewhere.stderr
    assert 'User "alice" cannot list resource "pods"' in elsewhere.stderr, elsewhere.stderr

    revoked = bramble_user(m, "revoke", "alice").stdout
    assert serial.lower().lstrip("0") in revoked, revoked
    after = kubectl_as(kubeconfig, "get", "pods")
    assert after.returncode != 0 and "Unauthorized" in after.stderr, after.stderr
    listed = bramble_user(m, "list").stdout
    assert any(line.startswith("alice") and "revoked" in line for line in listed.splitlines()), listed
    recorded = m.kubectl_json("get", "configmap", "-n", "kube-system", "bramble-revoked-certificates")
    assert json.loads(recorded["data"][serial.lower().lstrip("0")])["user"] == "alice"


def test_kubectl_lists_approves_and_denies_requests_made_with_openssl(master, tmp_path):
    m = master
    m.kubectl("create", "-f", "-", input=csr_manifest("bob", openssl_request(tmp_path, "/CN=bob/O=dev")))
    m.kubectl("create", "-f", "-", input=csr_manifest("carol", openssl_request(tmp_path, "/CN=carol")))

    table = m.kubectl("get", "csr").stdout.splitlines()
    assert table[0].split() == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
    bob = next(line.split() for line in table if line.startswith("bob"))
    assert bob[2:] == ["kubernetes.io/kube-apiserver-client", "admin", "24h", "Pending"], bob
    stored = m.kubectl_json("get", "csr", "bob")
    assert stored["spec"]["username"] == "admin"
    assert "system:masters" in stored["spec"]["groups"]

    approved = m.kubectl("certificate", "approve", "bob")
    assert approved.stdout.strip() == "certificatesigningrequest.certificates.k8s.io/bob approved"
    wait_for(
        lambda: m.kubectl_json("get", "csr", "bob").get("status", {}).get("certificate"),
        timeout=15,
        what="bob's certificate",
    )
    row = next(line.split() for line in m.kubectl("get", "csr").stdout.splitlines() if line.startswith("bob"))
    assert row[-1] == "Approved,Issued", row
    certificate = tmp_path / "bob.crt"
    certificate.write_bytes(base64.b64decode(m.kubectl_json("get", "csr", "bob")["status"]["certificate"]))
    verified = subprocess.run(["openssl", "verify", "-CAfile", m.ca, str(certificate)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    condition = m.kubectl_json("get", "csr", "bob")["status"]["conditions"][0]
    assert (condition["type"], condition["reason"]) == ("Approved", "KubectlApprove")
    assert condition["lastUpdateTime"] and condition["lastTransitionTime"]

    denied = m.kubectl("certificate", "deny", "carol")
    assert denied.stdout.strip() == "certificatesigningrequest.certificates.k8s.io/carol denied"
    row = next(line.split() for line in m.kubectl("get", "csr").stdout.splitlines() if line.startswith("carol"))
    assert row[-1] == "Denied"
    both = m.kubectl("certificate", "approve", "carol", check=False)
    assert both.returncode != 0 and "already Denied" in both.stderr, both.stderr

    # The spec cannot change after creation: an edit of the usages is dropped, as upstream.
    m.kubectl("patch", "csr", "bob", "--type=merge", "-p", '{"spec":{"usages":["server auth"]}}')
    assert m.kubectl_json("get", "csr", "bob")["spec"]["usages"] == ["client auth"]


def test_bad_requests_are_refused_with_upstream_messages(master, tmp_path):
    m = master
    bad = m.kubectl(
        "create", "-f", "-", input=csr_manifest("junk", base64.b64encode(b"not pem").decode(), seconds=60), check=False
    )
    assert bad.returncode != 0
    assert "spec.request: Invalid value" in bad.stderr and "PEM block type must be CERTIFICATE REQUEST" in bad.stderr
    assert "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 600 seconds" in bad.stderr

    masters = m.kubectl(
        "create", "-f", "-", input=csr_manifest("root", openssl_request(tmp_path, "/CN=root/O=system:masters")), check=False
    )
    assert masters.returncode != 0
    assert (
        'certificatesigningrequests.certificates.k8s.io "root" is forbidden: use of '
        "kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    ) in masters.stderr

    m.kubectl(
        "create", "-f", "-", input=csr_manifest("web", openssl_request(tmp_path, "/CN=web"), usages=["server auth"])
    )
    m.kubectl("certificate", "approve", "web")
    wait_for(
        lambda: any(c["type"] == "Failed" for c in m.kubectl_json("get", "csr", "web")["status"]["conditions"]),
        timeout=15,
        what="the signer to fail the server-auth request",
    )
    failed = next(c for c in m.kubectl_json("get", "csr", "web")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SignerValidationFailure"
    assert failed["message"] == "invalid usage for client certificate: server auth"
