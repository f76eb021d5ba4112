"""Benchmark of authorization: what RBAC costs a request. Prints figures; asserts nothing.

Run after `cargo build --release`:
    target/test-venv/bin/python tests/bench/rbac_bench.py [--bindings 1000] [--requests 2000]

One master on loopback. --bindings Roles and RoleBindings (spread over 50 namespaces, each
binding a different user, group or service account) plus the default policy; then the same
small list (`GET /api/v1/namespaces/bench/configmaps`, 10 items) is requested, interleaved, by:
- the admin fast path: the master's own client certificate (group system:masters, no RBAC);
- a user made by `bramble user add` and bound to `view` in `bench` (RBAC over every binding).
Both authenticate by client certificate on one kept-alive connection each, so the difference
between the two is the authorizer's (and the index's) cost per request. A third client, a
service account bound to `view` with a token from TokenRequest, adds what verifying a JWT
(ES256, its account and bound object looked up) costs on every request.
"""

import argparse
import base64
import http.client
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from master_bench import Client, free_port, percentile, rss_kib  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class CertificateClient:
    """One keep-alive HTTPS connection authenticated by a client certificate."""

    def __init__(self, port, ca, cert, key):
        self.port = port
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)
        self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=self.context, timeout=60)

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        self.connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read()


def kubeconfig_credentials(path, into):
    """Writes the client certificate and key of a kubeconfig's first user to files."""
    import yaml  # the Python client's dependency, in the test venv

    user = yaml.safe_load(Path(path).read_text())["users"][0]["user"]
    cert, key = into / "user.crt", into / "user.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    key.chmod(0o600)
    return str(cert), str(key)


def policy(bindings):
    """--bindings Roles and RoleBindings over 50 namespaces, subjects of every kind."""
    objects = []
    for i in range(bindings):
        namespace = f"team-{i % 50:02d}"
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": f"role-{i}", "namespace": namespace},
                        "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"],
                                   "resourceNames": [f"object-{i}"], "verbs": ["get", "update"]},
                                  {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]}]})
        subject = [{"kind": "User", "name": f"user-{i}", "apiGroup": "rbac.authorization.k8s.io"},
                   {"kind": "Group", "name": f"group-{i}", "apiGroup": "rbac.authorization.k8s.io"},
                   {"kind": "ServiceAccount", "name": f"account-{i}", "namespace": namespace}][i % 3]
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": f"binding-{i}", "namespace": namespace},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"role-{i}"},
                        "subjects": [subject]})
    return objects


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "bramble"))
    parser.add_argument("--bindings", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bramble-rbac-bench-"))
    data_dir = work / "data"
    port = free_port()
    print(f"binary {args.binary}")
    master = subprocess.Popen([args.binary, "master", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (data_dir / "admin.kubeconfig").exists():
            time.sleep(0.05)
        pki = data_dir / "pki"
        ca = str(pki / "ca.crt")
        admin = CertificateClient(port, ca, str(pki / "agent-client.crt"), str(pki / "agent-client.key"))
        for namespace in ["bench"] + [f"team-{i:02d}" for i in range(50)]:
            admin.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": namespace}})
        for i in range(10):
            admin.request("POST", "/api/v1/namespaces/bench/configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"settings-{i}"}, "data": {"n": str(i)}})
        began = time.monotonic()
        for obj in policy(args.bindings):
            plural = "roles" if obj["kind"] == "Role" else "rolebindings"
            status, body = admin.request(
                "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{obj['metadata']['namespace']}/{plural}", obj)
            if status != 201:
                sys.exit(f"creating {obj['kind']} {obj['metadata']['name']}: {status} {body[:200]!r}")
        print(f"{args.bindings} roles and {args.bindings} bindings created in {time.monotonic() - began:.1f} s")

        kubeconfig = work / "reader.kubeconfig"
        subprocess.run([args.binary, "user", "add", "reader", "--namespace", "bench", "--role", "view",
                        "--kubeconfig", str(data_dir / "admin.kubeconfig"), "-o", str(kubeconfig)],
                       check=True, stdout=subprocess.DEVNULL)
        cert, key = kubeconfig_credentials(kubeconfig, work)
        reader = CertificateClient(port, ca, cert, key)
        status, body = reader.request("GET", "/api/v1/namespaces/bench/configmaps")
        if status != 200:
            sys.exit(f"the reader cannot list: {status} {body[:300]!r}")
        status, _ = reader.request("GET", "/api/v1/namespaces/kube-system/secrets")
        print(f"the reader listing kube-system secrets: {status} (403 expected)")

        admin.request("POST", "/api/v1/namespaces/bench/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench-reader"}})
        admin.request("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bench-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "bench-reader", "namespace": "bench"}]})
        status, body = admin.request("POST", "/api/v1/namespaces/bench/serviceaccounts/bench-reader/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
        if status != 201:
            sys.exit(f"TokenRequest: {status} {body[:300]!r}")
        account = Client(port, json.loads(body)["status"]["token"], ca)

        timings = {"admin fast path (system:masters)": [], "user through RBAC": [],
                   "service account token + RBAC": []}
        clients = list(zip(timings.values(), [admin, reader, account]))
        for _ in range(200):  # warm up both connections and caches
            for _, client in clients:
                client.request("GET", "/api/v1/namespaces/bench/configmaps")
        for _ in range(args.requests):
            for samples, client in clients:
                began = time.perf_counter()
                client.request("GET", "/api/v1/namespaces/bench/configmaps")
                samples.append(time.perf_counter() - began)
        print(f"\nlist 10 configmaps, {args.requests} requests each, interleaved, "
              f"{args.bindings} roles + {args.bindings} bindings:")
        for name, samples in timings.items():
            print(f"  {name:34} p50 {statistics.median(samples) * 1e6:7.0f} µs   "
                  f"p99 {percentile(samples, 0.99) * 1e6:7.0f} µs")
        fast, rbac, _ = timings.values()
        print(f"  RBAC adds                          p50 {(statistics.median(rbac) - statistics.median(fast)) * 1e6:7.0f} µs   "
              f"p99 {(percentile(rbac, 0.99) - percentile(fast, 0.99)) * 1e6:7.0f} µs")
        print(f"master RSS                           {rss_kib(master.pid) / 1024:.1f} MiB")
    finally:
        master.terminate()
        master.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
