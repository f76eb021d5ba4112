"""Bad input, crashes and restarts: clear errors, nothing acknowledged is lost."""

import json
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request

from kubernetes import client, watch


def raw(master, method, path, body=None, content_type="application/json"):
    """Sends a raw request; returns (status, parsed body)."""
    request = urllib.request.Request(
        f"{master.url}{path}", data=body, method=method,
        headers={"Authorization": f"Bearer {master.token}", "Content-Type": content_type},
    )
    context = ssl.create_default_context(cafile=master.ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_malformed_and_oversized_bodies(master):
    path = "/api/v1/namespaces/default/configmaps"
    status, body = raw(master, "POST", path, b"{not json")
    assert status == 400 and body["kind"] == "Status" and body["reason"] == "BadRequest"
    status, body = raw(master, "POST", path, b"kind: [unclosed", "application/yaml")
    assert status == 400
    status, body = raw(master, "POST", path, b"[1,2,3]")
    assert status == 400
    status, body = raw(master, "POST", path, json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                                          "metadata": {"name": "Bad_Name"}}).encode())
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = raw(master, "POST", path, json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                                          "metadata": {"name": "typed"}, "data": {"a": 5}}).encode())
    assert status == 400 and "data" in body["message"]
    status, body = raw(master, "POST", path, b"x" * (4 * 1024 * 1024))
    assert status == 413
    status, body = raw(master, "POST", path, b"\x00\x01\x02", "application/vnd.kubernetes.protobuf")
    assert status in (400, 415)
    status, body = raw(master, "PATCH", path + "/nothing", b"{}", "application/merge-patch+json")
    assert status == 404
    status, body = raw(master, "GET", "/api/v1/namespaces/default/pods?labelSelector=a%20in%20(")
    assert status == 400
    status, body = raw(master, "GET", "/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx")
    assert status == 400
    # The master is still serving.
    status, _ = raw(master, "GET", "/api/v1/namespaces/default/configmaps")
    assert status == 200
    assert master.process.poll() is None


def test_sigkill_during_writes_loses_nothing_acknowledged(master):
    core = client.CoreV1Api(master.client())
    acknowledged = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            try:
                core.create_namespaced_config_map(
                    "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"w{i}"), data={"i": str(i)}))
                acknowledged.append(f"w{i}")
            except Exception:
                pass
            i += 1

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    before_kill = core.list_namespaced_config_map("default").metadata.resource_version
    time.sleep(1)
    master.kill(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) > 20

    master.start()
    core = client.CoreV1Api(master.client())
    stored = {cm.metadata.name for cm in core.list_namespaced_config_map("default").items}
    missing = [name for name in acknowledged if name not in stored]
    assert missing == [], f"acknowledged writes lost: {missing[:10]}"

    # A watch resumes from a revision seen before the crash: it replays what happened after it.
    events = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=before_kill, timeout_seconds=5):
        events.append(event["object"].metadata.name)
        if len(events) >= 5:
            w.stop()
    assert len(events) == 5 and all(name in stored for name in events)

    # New writes get newer revisions than anything before the crash.
    created = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after")))
    newest = max(int(cm.metadata.resource_version) for cm in core.list_namespaced_config_map("default").items
                 if cm.metadata.name != "after")
    assert int(created.metadata.resource_version) > newest


def test_start_failures_are_clear(master, tmp_path):
    import subprocess

    from conftest import BRAMBLE

    taken = subprocess.run(
        [BRAMBLE, "master", "--data-dir", str(tmp_path / "other"), "--listen", f"127.0.0.1:{master.port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert taken.returncode != 0
    assert "cannot listen on" in taken.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "store.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [BRAMBLE, "master", "--data-dir", str(corrupt), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "cannot open the database" in result.stderr
