"""Service accounts in pods on virtual Pis: the ServiceAccount admission's kube-api-access
volume, the root CA publisher's kube-root-ca.crt, bound tokens the agent requests and
refreshes, and the official Python client's `load_incluster_config()` in a real container.

The demo image is a static binary with no Python, so the pod mounts the host's Python (the
interpreter, its libraries and the test venv with the `kubernetes` package) read-only: a real
container running the real client against the API through the `kubernetes` service."""

import json
import os

from conftest import manifest, wait_for

PYENV = os.path.realpath("/work/venv/bin/python3").rsplit("/bin/", 1)[0]
HOST_PATHS = ["/usr", "/lib", "/lib64", "/etc/ssl", "/work/venv", PYENV]

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


def python_pod(pis, name, script, node="pi-1", **spec):
    volumes, mounts = [], []
    for i, path in enumerate(HOST_PATHS):
        volumes.append({"name": f"host-{i}", "hostPath": {"path": path}})
        mounts.append({"name": f"host-{i}", "mountPath": path, "readOnly": True})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "volumes": volumes,
            "containers": [{
                "name": "client", "image": f"{pis.demo}:1",
                "command": ["/work/venv/bin/python", "-c", script],
                "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "volumeMounts": mounts,
            }],
            **spec,
        },
    }


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
    # TODO(lead, after the RBAC merge): the default account has no role in kube-system, so
    # this must then be 403. Until RBAC lands every authenticated identity is allowed.
    # assert result["elsewhere"] == 403
    assert result["elsewhere"] in ("allowed", 403)


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
