"""Drives `bramble master` with real kubectl 1.37, as an operator would."""

import json
import subprocess
import time

import yaml

from conftest import KUBECTL, manifest, wait_for


def deployment(image="nginx:1.25", replicas=2, sidecar=True):
    containers = [{"name": "web", "image": image, "ports": [{"containerPort": 80}],
                   "env": [{"name": "MODE", "value": "demo"}]}]
    if sidecar:
        containers.append({"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "3600"]})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}},
        },
    }


def test_namespaces_lifecycle(master):
    out = master.kubectl("get", "namespaces").stdout
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"]:
        assert name in out
    # `kubectl create namespace` sends a protobuf body.
    master.kubectl("create", "namespace", "demo")
    ns = master.kubectl_json("get", "namespace", "demo")
    assert ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "demo"
    assert master.kubectl_json("get", "serviceaccount", "default", "-n", "demo")["metadata"]["name"] == "default"
    master.kubectl("create", "configmap", "settings", "-n", "demo", "--from-literal=colour=green")
    master.kubectl("delete", "namespace", "demo", timeout=60)
    gone = master.kubectl("get", "namespace", "demo", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert master.kubectl("get", "configmaps", "-n", "demo", "-o", "name").stdout.strip() == ""


def test_system_namespaces_may_not_be_deleted_and_come_back(master):
    master.kubectl("create", "namespace", "demo")
    result = master.kubectl("delete", "namespace", "--all", "--wait=false", check=False)
    assert result.returncode != 0
    for name in ["default", "kube-system", "kube-public"]:
        assert (
            f'Error from server (Forbidden): namespaces "{name}" is forbidden: this namespace may not be deleted'
            in result.stderr
        )
    assert 'namespace "demo" deleted' in result.stdout
    names = {n["metadata"]["name"] for n in master.kubectl_json("get", "namespaces")["items"]}
    assert {"default", "kube-system", "kube-public"} <= names
    assert master.kubectl_json("get", "service", "kubernetes")["spec"]["clusterIP"] == "10.43.0.1"
    # kube-node-lease may go, as upstream; the master's upkeep brings it back.
    wait_for(
        lambda: master.kubectl("get", "namespace", "kube-node-lease", check=False).returncode == 0
        and master.kubectl_json("get", "namespace", "kube-node-lease")["status"]["phase"] == "Active",
        what="kube-node-lease to be re-created",
    )


def test_autoscale_defaults_to_80_percent_cpu(master):
    master.kubectl("apply", "-f", "-", input=manifest(deployment()))
    master.kubectl("autoscale", "deployment", "web", "--max=5")
    hpa = master.kubectl_json("get", "horizontalpodautoscalers.v2.autoscaling", "web")
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
    ]
    v1 = json.loads(master.kubectl("get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web").stdout)
    assert v1["spec"]["targetCPUUtilizationPercentage"] == 80
    assert "cpu: <unknown>/80%" in master.kubectl("get", "hpa", "web").stdout


def test_apply_then_apply_changed_copy_stores_exactly_the_change(master, tmp_path):
    first = tmp_path / "web.yaml"
    first.write_text(manifest(deployment()))
    assert "deployment.apps/web created" in master.kubectl("apply", "-f", str(first)).stdout
    stored = master.kubectl_json("get", "deployment", "web")
    assert stored["spec"]["strategy"]["type"] == "RollingUpdate"
    assert stored["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert stored["metadata"]["generation"] == 1
    assert [c["name"] for c in stored["spec"]["template"]["spec"]["containers"]] == ["web", "sidecar"]

    changed = tmp_path / "web-changed.yaml"
    changed.write_text(manifest(deployment(image="nginx:1.27", replicas=3, sidecar=False)))
    assert "deployment.apps/web configured" in master.kubectl("apply", "-f", str(changed)).stdout
    stored = master.kubectl_json("get", "deployment", "web")
    containers = stored["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web"]
    assert containers[0]["image"] == "nginx:1.27"
    assert containers[0]["env"] == [{"name": "MODE", "value": "demo"}]
    assert containers[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert stored["spec"]["replicas"] == 3
    assert stored["metadata"]["generation"] == 2
    applied = json.loads(stored["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"]["replicas"] == 3
    # Applying the same file again changes nothing.
    rv = stored["metadata"]["resourceVersion"]
    assert "unchanged" in master.kubectl("apply", "-f", str(changed)).stdout
    assert master.kubectl_json("get", "deployment", "web")["metadata"]["resourceVersion"] == rv


def test_get_output_formats(master, tmp_path):
    (tmp_path / "web.yaml").write_text(manifest(deployment()))
    master.kubectl("apply", "-f", str(tmp_path / "web.yaml"))
    table = master.kubectl("get", "deployments").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[0:2] == ["web", "0/2"]
    wide = master.kubectl("get", "deploy", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert "nginx:1.25,busybox:1.36" in wide[1]
    assert "app=web" in wide[1]
    doc = yaml.safe_load(master.kubectl("get", "deploy", "web", "-o", "yaml").stdout)
    assert doc["kind"] == "Deployment" and doc["apiVersion"] == "apps/v1"
    all_ns = master.kubectl("get", "deploy", "-A", "--show-labels").stdout.splitlines()
    assert all_ns[0].split()[0] == "NAMESPACE" and all_ns[0].split()[-1] == "LABELS"
    assert "app=web" in all_ns[1]
    assert "deployment.apps/web" in master.kubectl("get", "all").stdout
    svc = master.kubectl("get", "svc", "kubernetes").stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1].split()[1:5] == ["ClusterIP", "10.43.0.1", "<none>", "443/TCP"]


def test_scale_label_annotate_and_patches(master, tmp_path):
    (tmp_path / "web.yaml").write_text(manifest(deployment()))
    master.kubectl("apply", "-f", str(tmp_path / "web.yaml"))
    master.kubectl("scale", "deployment", "web", "--replicas=5")
    assert master.kubectl_json("get", "deploy", "web")["spec"]["replicas"] == 5
    master.kubectl("label", "deployment", "web", "tier=frontend")
    master.kubectl("annotate", "deployment", "web", "owner=team-a")
    stored = master.kubectl_json("get", "deploy", "web")
    assert stored["metadata"]["labels"] == {"app": "web", "tier": "frontend"}
    assert stored["metadata"]["annotations"]["owner"] == "team-a"
    master.kubectl("label", "deployment", "web", "tier-")
    assert "tier" not in master.kubectl_json("get", "deploy", "web")["metadata"]["labels"]
    assert master.kubectl_json("get", "deploy", "-l", "app=web")["items"][0]["metadata"]["name"] == "web"
    assert master.kubectl_json("get", "deploy", "-l", "app!=web")["items"] == []

    # Strategic merge: containers merge by name.
    master.kubectl("patch", "deployment", "web", "-p",
                   '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}}}')
    containers = master.kubectl_json("get", "deploy", "web")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("web", "nginx:1.26"), ("sidecar", "busybox:1.36")]
    # JSON merge: lists are replaced.
    master.kubectl("patch", "deployment", "web", "--type=merge", "-p",
                   '{"spec":{"template":{"spec":{"containers":[{"name":"only","image":"busybox:1.36"}]}}}}')
    containers = master.kubectl_json("get", "deploy", "web")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["only"]
    # JSON patch.
    master.kubectl("patch", "deployment", "web", "--type=json", "-p",
                   '[{"op":"replace","path":"/spec/replicas","value":1},{"op":"add","path":"/metadata/labels/x","value":"y"}]')
    stored = master.kubectl_json("get", "deploy", "web")
    assert stored["spec"]["replicas"] == 1 and stored["metadata"]["labels"]["x"] == "y"
    failed = master.kubectl("patch", "deployment", "web", "--type=json", "-p",
                            '[{"op":"test","path":"/spec/replicas","value":9}]', check=False)
    assert failed.returncode != 0

    master.kubectl("rollout", "restart", "deployment", "web")
    annotations = master.kubectl_json("get", "deploy", "web")["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations

    assert 'deployment.apps "web" deleted' in master.kubectl("delete", "deployment", "web").stdout
    assert master.kubectl("get", "deploy", "web", check=False).returncode != 0


def test_generator_commands_send_protobuf(master):
    master.kubectl("create", "deployment", "gen", "--image=nginx:1.27", "--replicas=2", "--port=80")
    d = master.kubectl_json("get", "deploy", "gen")
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 80
    master.kubectl("create", "configmap", "cfg", "--from-literal=a=b")
    assert master.kubectl_json("get", "cm", "cfg")["data"] == {"a": "b"}
    master.kubectl("create", "secret", "generic", "s", "--from-literal=password=hunter2")
    assert master.kubectl_json("get", "secret", "s")["data"] == {"password": "aHVudGVyMg=="}
    master.kubectl("create", "service", "nodeport", "gen", "--tcp=80:8080")
    svc = master.kubectl_json("get", "svc", "gen")
    assert svc["spec"]["type"] == "NodePort"
    assert 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
    assert svc["spec"]["clusterIP"].startswith("10.43.")
    master.kubectl("create", "serviceaccount", "robot")
    assert master.kubectl_json("get", "sa", "robot")["metadata"]["name"] == "robot"
    master.kubectl("create", "job", "once", "--image=busybox:1.36", "--", "echo", "hi")
    job = master.kubectl_json("get", "job", "once")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["echo", "hi"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    master.kubectl("run", "solo", "--image=busybox:1.36", "--labels=app=solo", "--", "sleep", "1d")
    master.kubectl("create", "quota", "small", "--hard=pods=10,cpu=2")
    assert master.kubectl_json("get", "quota", "small")["spec"]["hard"] == {"cpu": "2", "pods": "10"}
    pod = master.kubectl_json("get", "pod", "solo")
    assert pod["metadata"]["labels"] == {"app": "solo"}
    assert pod["spec"]["containers"][0]["args"] == ["sleep", "1d"]
    assert "solo" in master.kubectl("get", "pods").stdout


def test_watch_sees_changes(master):
    watcher = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(master.kubeconfig), "get", "configmaps", "-w", "--output-watch-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.5)
        master.kubectl("create", "configmap", "watched", "--from-literal=a=1")
        master.kubectl("label", "configmap", "watched", "seen=yes")
        master.kubectl("delete", "configmap", "watched")
        time.sleep(1.5)
    finally:
        watcher.terminate()
    out, _ = watcher.communicate(timeout=10)
    events = [line.split()[:2] for line in out.splitlines() if "watched" in line]
    assert ["ADDED", "watched"] in events
    assert ["MODIFIED", "watched"] in events
    assert ["DELETED", "watched"] in events


def test_describe_and_explain_free_paths(master, tmp_path):
    (tmp_path / "web.yaml").write_text(manifest(deployment()))
    master.kubectl("apply", "-f", str(tmp_path / "web.yaml"))
    out = master.kubectl("describe", "deployment", "web").stdout
    assert "Name:" in out and "web" in out
    assert "RollingUpdate" in out
    assert "nginx:1.25" in out
    ns = master.kubectl("describe", "namespace", "default").stdout
    assert "Active" in ns


def test_validation_errors_name_the_field(master, tmp_path):
    bad = deployment()
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    (tmp_path / "bad.yaml").write_text(manifest(bad))
    result = master.kubectl("apply", "-f", str(tmp_path / "bad.yaml"), check=False)
    assert result.returncode != 0
    assert "spec.template.metadata.labels" in result.stderr
    typo = deployment()
    typo["spec"]["replicaz"] = 3
    (tmp_path / "typo.yaml").write_text(manifest(typo))
    result = master.kubectl("create", "-f", str(tmp_path / "typo.yaml"), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.replicaz"' in result.stderr


def test_unauthenticated_requests_are_rejected(master):
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=master.ca)
    try:
        urllib.request.urlopen(f"{master.url}/api/v1/namespaces", context=context)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as error:
        assert error.code == 401
        assert json.loads(error.read())["reason"] == "Unauthorized"
    request = urllib.request.Request(f"{master.url}/api/v1/namespaces", headers={"Authorization": "Bearer wrong"})
    try:
        urllib.request.urlopen(request, context=context)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as error:
        assert error.code == 401


def test_the_join_token_is_a_kube_system_secret(master):
    import base64

    secret = master.kubectl_json("get", "secret", "bramble-join-token", "-n", "kube-system")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert token == (master.data_dir / "join.token").read_text().strip()
    assert token.endswith("." + base64.b64decode(secret["data"]["secret"]).decode())
