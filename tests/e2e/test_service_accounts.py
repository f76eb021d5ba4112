"""Service accounts in pods on virtual Pis: the ServiceAccount admission's kube-api-access
volume, the root CA publisher's kube-root-ca.crt, bound tokens the agent requests and
refreshes, and the official Python client's `load_incluster_config()` in a real container.

The pods run the host's Python read-only (conftest's `python_client_pod`): a real container
running the real client against the API through the `kubernetes` service."""

import json
import os

import pytest

from conftest import manifest, python_client_pod as python_pod, wait_for

# The long run (documented in README): tests that wait minutes of real time.
LONG = os.environ.get("BRAMBLE_E2E_LONG") == "1"

# Lists the pods of the pod's own namespace, then tries another namespace, and prints both.
IN_CLUSTER_SCRIPT = """
import base64, json, os
from kubernetes import client, config
config.load_incluster_config()
api = client.CoreV1Api()
namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
own = [p.metadata.name for p in api.list_namespaced_pod(namespace).items]
try:
    api.list_namespaced_pod("kube-system")
    elsewhere = "allowed"
except client.exceptions.ApiException as e:
    elsewhere = e.status
token = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()
payload = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
print(json.dumps({"namespace": namespace, "own": own, "elsewhere": elsewhere,
                  "bound_to": claims["kubernetes.io"]["pod"]["name"],
                  "subject": claims["sub"],
                  "host": os.environ["KUBERNETES_SERVICE_HOST"],
                  "port": os.environ["KUBERNETES_SERVICE_PORT"]}))
"""


def finished(pis, namespace, name):
    pod = pis.kubectl_json("get", "pod", name, "-n", namespace)
    return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None


def test_a_pod_lists_pods_with_the_python_clients_in_cluster_config(pis, namespace):
    # Upstream's default account may do nothing: a Role lets it read the pods of its namespace.
    rbac = "rbac.authorization.k8s.io"
    for obj in [
        {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": {"name": "pod-reader"},
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "pod-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]},
    ]:
        pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(obj))
    # A pod created right after its namespace: the default account exists at once.
    pis.kubectl("apply", "-n", namespace, "-f", "-",
                input=manifest(python_pod(pis, "lister", IN_CLUSTER_SCRIPT)))
    pod = pis.kubectl_json("get", "pod", "lister", "-n", namespace)
    assert pod["spec"]["serviceAccountName"] == "default"
    access = [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(access) == 1 and access[0]["projected"]["defaultMode"] == 420
    mount = pod["spec"]["containers"][0]["volumeMounts"][-1]
    assert mount == {"name": access[0]["name"], "readOnly": True,
                     "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}

    done = wait_for(lambda: finished(pis, namespace, "lister"), timeout=120, what="the client pod")
    logs = pis.kubectl("logs", "lister", "-n", namespace).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])
    assert result["namespace"] == namespace
    assert "lister" in result["own"]
    assert result["port"] == "443"
    # The agent's TokenRequest bound the token to this pod.
    assert result["bound_to"] == "lister"
    assert result["subject"] == f"system:serviceaccount:{namespace}:default"
    service = pis.kubectl_json("get", "service", "kubernetes", "-n", "default")
    assert result["host"] == service["spec"]["clusterIP"]
    # The default account has no role in kube-system.
    assert result["elsewhere"] == 403


def test_the_root_ca_is_published_and_opting_out_mounts_nothing(pis, namespace):
    ca = wait_for(lambda: pis.kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace,
                                      "-o", "json", check=False).stdout or None,
                  timeout=30, what="kube-root-ca.crt")
    ca = json.loads(ca)
    assert ca["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert "kubernetes.default.svc" in ca["metadata"]["annotations"]["kubernetes.io/description"]
    pis.kubectl("delete", "configmap", "kube-root-ca.crt", "-n", namespace)
    wait_for(lambda: pis.kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace,
                                 check=False).returncode == 0,
             timeout=30, what="kube-root-ca.crt made again")

    quiet = python_pod(pis, "quiet", "print('hi')", automountServiceAccountToken=False)
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(quiet))
    pod = pis.kubectl_json("get", "pod", "quiet", "-n", namespace)
    assert not [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]

    missing = python_pod(pis, "robot", "print('hi')", serviceAccountName="robot")
    refused = pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(missing), check=False)
    assert refused.returncode != 0
    assert (f'pods "robot" is forbidden: error looking up service account {namespace}/robot: '
            f'serviceaccount "robot" not found') in refused.stderr


# Calls the API with the pod's own service account: each check is [method, path, body], each
# answer its status code.
CHECKS_SCRIPT = """
import json, os
from kubernetes import client, config
config.load_incluster_config()
api = client.ApiClient()
codes = []
for method, path, body in json.loads(os.environ["CHECKS"]):
    request = api.param_serialize(method, path, body=body, auth_settings=["BearerToken"],
                                  header_params={"Content-Type": "application/json",
                                                 "Accept": "application/json"})
    try:
        codes.append(api.call_api(*request).status)
    except client.exceptions.ApiException as e:
        codes.append(e.status)
print(json.dumps(codes))
"""

PUBLISHED = __import__("pathlib").Path(__file__).resolve().parent / "published"


def run_checks(pis, namespace, account, checks, node="pi-2"):
    """Runs CHECKS_SCRIPT as `account` in `namespace`; returns the status codes."""
    name = f"checks-{account}"[:50].rstrip("-")
    # A pod that asks for the token has it even when its account says no (kube-state-metrics').
    pod = python_pod(pis, name, CHECKS_SCRIPT, node=node, serviceAccountName=account,
                     automountServiceAccountToken=True)
    pod["metadata"]["namespace"] = namespace
    pod["spec"]["containers"][0]["env"].append({"name": "CHECKS", "value": json.dumps(checks)})
    pis.kubectl("apply", "-f", "-", input=manifest(pod))
    done = wait_for(lambda: finished(pis, namespace, name), timeout=120, what=f"the {account} checks")
    logs = pis.kubectl("logs", name, "-n", namespace).stdout
    pis.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    assert done["status"]["phase"] == "Succeeded", logs
    return json.loads(logs.strip().splitlines()[-1])


def test_published_manifests_with_rbac_apply_unchanged_and_their_accounts_get_what_they_grant(pis):
    """The Kubernetes Dashboard, kube-state-metrics and metrics-server's RBAC, applied as
    published (tests/e2e/published/, with source and licence). Their images come from the
    internet, so their Deployments are scaled to zero; pods running as their service accounts
    with the Python client show what the manifests' roles and bindings grant, and refuse."""
    for name in ["dashboard.yaml", "kube-state-metrics.yaml", "metrics-server-rbac.yaml"]:
        applied = pis.kubectl("apply", "-f", str(PUBLISHED / name), check=False)
        assert applied.returncode == 0, applied.stderr
    for namespace, deployment in [("kubernetes-dashboard", "kubernetes-dashboard"),
                                  ("kubernetes-dashboard", "dashboard-metrics-scraper"),
                                  ("kube-system", "kube-state-metrics")]:
        pis.kubectl("scale", "deployment", deployment, "-n", namespace, "--replicas=0")
    try:
        # The dashboard: its own secrets and settings by name, metrics, nothing else.
        dashboard = run_checks(pis, "kubernetes-dashboard", "kubernetes-dashboard", [
            ["GET", "/api/v1/namespaces/kubernetes-dashboard/secrets/kubernetes-dashboard-csrf", None],
            ["GET", "/api/v1/namespaces/kubernetes-dashboard/configmaps/kubernetes-dashboard-settings", None],
            ["GET", "/apis/metrics.k8s.io/v1beta1/nodes", None],
            ["GET", "/api/v1/namespaces/kubernetes-dashboard/secrets", None],
            ["GET", "/api/v1/namespaces/kube-system/secrets/bramble-join-token", None],
            ["DELETE", "/api/v1/namespaces/kubernetes-dashboard/configmaps/kubernetes-dashboard-settings", None],
        ])
        assert dashboard == [200, 200, 200, 403, 403, 403], dashboard
        # kube-state-metrics (its account says automount false; its pod template says true):
        # list and watch of everything across namespaces, no reads by name, no writes.
        state_metrics = run_checks(pis, "kube-system", "kube-state-metrics", [
            ["GET", "/api/v1/pods", None],
            ["GET", "/apis/apps/v1/deployments", None],
            ["GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", None],
            ["GET", "/api/v1/namespaces/kube-system/secrets/bramble-join-token", None],
            ["POST", "/api/v1/namespaces/kube-system/configmaps",
             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nope"}}],
        ])
        assert state_metrics == [200, 200, 200, 403, 403], state_metrics
        # metrics-server: nodes and pods, token and access reviews (system:auth-delegator).
        metrics_server = run_checks(pis, "kube-system", "metrics-server", [
            ["GET", "/api/v1/nodes", None],
            ["POST", "/apis/authentication.k8s.io/v1/tokenreviews",
             {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "not-a-token"}}],
            ["POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
             {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": "alice", "resourceAttributes": {"verb": "get", "resource": "pods"}}}],
            ["GET", "/api/v1/secrets", None],
        ])
        assert metrics_server == [200, 201, 201, 403], metrics_server
        # The aggregated metrics reader reached `view` through its label.
        view = pis.kubectl_json("get", "clusterrole", "view")
        assert any("metrics.k8s.io" in rule.get("apiGroups", []) for rule in view["rules"]), view["rules"]
    finally:
        pis.kubectl("delete", "-f", str(PUBLISHED / "dashboard.yaml"), "--wait=false", check=False)
        for name in ["kube-state-metrics.yaml", "metrics-server-rbac.yaml"]:
            pis.kubectl("delete", "-f", str(PUBLISHED / name), "--wait=false", check=False)


# Watches the projected token file until the agent rewrites it, then lists pods with the new one.
ROTATION_SCRIPT = """
import base64, json, time
from kubernetes import client, config
path = "/var/run/secrets/tokens/api-token"
def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
first = open(path).read()
while True:
    time.sleep(5)
    now = open(path).read()
    if now != first:
        break
seen_at = time.time()
config.load_incluster_config()
configuration = client.Configuration.get_default_copy()
configuration.api_key = {"authorization": "Bearer " + now}
api = client.CoreV1Api(client.ApiClient(configuration))
namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
listed = len(api.list_namespaced_pod(namespace).items)
print(json.dumps({"first": claims(first), "second": claims(now), "seen_at": seen_at, "listed": listed}))
"""


@pytest.mark.skipif(not LONG, reason="the long run (BRAMBLE_E2E_LONG=1): a token's rotation takes 8 minutes")
def test_a_projected_token_is_rotated_before_it_expires(pis, namespace):
    """A projected token of the shortest life upstream allows (600 s): the agent rewrites it
    at 80% of its life, before it expires, and the new one works."""
    rbac = "rbac.authorization.k8s.io"
    pis.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb", "list", "--resource", "pods")
    pis.kubectl("create", "rolebinding", "pod-reader", "-n", namespace, "--role", "pod-reader",
                "--serviceaccount", f"{namespace}:default")
    assert pis.kubectl_json("get", "rolebinding", "pod-reader", "-n", namespace)["roleRef"]["apiGroup"] == rbac
    pod = python_pod(pis, "rotation", ROTATION_SCRIPT, node="pi-3")
    pod["spec"]["volumes"].append({"name": "api-token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "api-token", "expirationSeconds": 600}}]}})
    pod["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "api-token", "mountPath": "/var/run/secrets/tokens", "readOnly": True})
    pis.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(pod))
    done = wait_for(lambda: finished(pis, namespace, "rotation"), timeout=660, interval=5,
                    what="the token to be rotated")
    logs = pis.kubectl("logs", "rotation", "-n", namespace).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])
    first, second = result["first"], result["second"]
    assert first["exp"] - first["iat"] == 600
    assert second["iat"] > first["iat"] and second["exp"] > first["exp"]
    # Rewritten after 80% of the first token's life, and before it ran out.
    assert first["iat"] + 0.8 * 600 - 5 <= second["iat"] < first["exp"], (first, second)
    assert result["seen_at"] < first["exp"]
    assert result["listed"] >= 1
