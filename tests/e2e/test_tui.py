"""The dashboard in a real terminal: `bramble tui` in tmux against a master with simulated nodes."""

import os
import shlex
import signal
import subprocess
import uuid

import pytest

from conftest import BRAMBLE, wait_for


class Dashboard:
    """`bramble tui` running in a detached tmux session of its own (a private tmux server)."""

    def __init__(self, kubeconfig, *args, width=160, height=40):
        self.socket = f"bramble-test-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "LANG": "C.UTF-8"}
        command = shlex.join([BRAMBLE, "tui", "--kubeconfig", str(kubeconfig), *args])
        self.tmux("new-session", "-d", "-s", "tui", "-x", str(width), "-y", str(height), command)

    def tmux(self, *args):
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "tui")

    def press(self, *keys):
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for_screen(self, condition, what, timeout=30):
        try:
            return wait_for(lambda: condition(self.screen()), timeout=timeout, interval=0.2, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\nscreen:\n{self.screen()}") from None

    def running(self):
        result = subprocess.run(
            ["tmux", "-L", self.socket, "has-session", "-t", "tui"], env=self.env, capture_output=True
        )
        return result.returncode == 0

    def close(self):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True)


@pytest.fixture
def dashboard(demo_cluster):
    master, _ = demo_cluster
    board = Dashboard(master.kubeconfig, "--demo")
    yield board
    board.close()


def pods_by_node(master, app):
    pods = master.kubectl_json("get", "pods", "-l", f"app={app}")["items"]
    placed = {}
    for pod in pods:
        if pod["status"].get("phase") == "Running" and "deletionTimestamp" not in pod["metadata"]:
            placed.setdefault(pod["spec"]["nodeName"], []).append(pod["metadata"]["name"])
    return placed


def test_killing_a_node_with_its_key_moves_its_pods(demo_cluster, dashboard):
    master, _ = demo_cluster
    master.kubectl("create", "deployment", "web", "--image=demo:1", "--replicas=6")
    placed = wait_for(
        lambda: (p := pods_by_node(master, "web")) and sum(map(len, p.values())) == 6 and p,
        what="6 running web pods",
    )
    screen = dashboard.wait_for_screen(
        # "pods 6 5 waiting": the dashboard has not seen every binding yet; wait for them.
        lambda s: "nodes 3/3 Ready" in s and "pods 6" in s and "waiting" not in s and s,
        "the dashboard to show 6 pods on 3 nodes",
    )
    for names in placed.values():
        for name in names:
            assert name in screen
    # The first node is selected at start; move right and back to make sure keys arrive.
    dashboard.press("Right")
    dashboard.press("Left")
    victim = "sim-1"
    doomed = set(placed.get(victim, []))
    assert doomed, f"no web pod on {victim}: {placed}"
    dashboard.press("x")
    dashboard.wait_for_screen(lambda s: f"{victim} NotReady killed" in s, f"{victim} marked NotReady")
    # Its pods come back on the other nodes, and the dashboard shows the new ones.
    moved = wait_for(
        lambda: (p := pods_by_node(master, "web"))
        and victim not in p
        and sum(map(len, p.values())) == 6
        and p,
        timeout=60,
        what="6 web pods running away from the killed node",
    )
    replacements = {name for names in moved.values() for name in names} - {
        name for names in placed.values() for name in names
    }
    assert len(replacements) == len(doomed)
    dashboard.wait_for_screen(
        lambda s: all(name in s for name in replacements) and "nodes 2/3 Ready" in s,
        "the replacement pods on the dashboard",
    )
    # `r` brings the node back.
    dashboard.press("r")
    dashboard.wait_for_screen(lambda s: "nodes 3/3 Ready" in s and "killed" not in s.split("events")[0], "sim-1 back")
    dashboard.press("q")
    wait_for(lambda: not dashboard.running(), timeout=10, what="the dashboard to quit on q")


def test_the_dashboard_says_when_the_master_is_gone_and_reconnects(demo_cluster, dashboard):
    master, _ = demo_cluster
    dashboard.wait_for_screen(lambda s: "nodes 3/3 Ready" in s, "3 ready nodes")
    master.kill(signal.SIGKILL)
    dashboard.wait_for_screen(lambda s: "master unreachable" in s, "the master reported unreachable", timeout=15)
    # Still responsive: the help opens and closes while the master is gone.
    dashboard.press("?")
    dashboard.wait_for_screen(lambda s: "help: keys and glyphs" in s, "the help screen")
    dashboard.press("Escape")
    master.start()
    master.kubectl("create", "deployment", "after", "--image=demo:1", "--replicas=2")
    dashboard.wait_for_screen(
        lambda s: "master unreachable" not in s and "pods 2" in s and "nodes 3/3 Ready" in s,
        "the dashboard to reconnect and show the new pods",
        timeout=45,
    )


def test_a_narrower_identity_is_told_in_words_what_it_may_not_see(demo_cluster, tmp_path):
    """`bramble tui` with a person's kubeconfig (a client certificate bound to `view` in one
    namespace): the server answers, so the dashboard does not call the master lost; it says
    which list is refused, in the server's words."""
    master, _ = demo_cluster
    kubeconfig = tmp_path / "viewer.kubeconfig"
    subprocess.run([BRAMBLE, "user", "add", "viewer", "--namespace", "default", "--role", "view",
                    "--kubeconfig", str(master.kubeconfig), "-o", str(kubeconfig)],
                   check=True, capture_output=True, timeout=60)
    board = Dashboard(kubeconfig, width=240)
    try:
        screen = board.wait_for_screen(lambda s: "not allowed:" in s and s, "the refusal to be shown")
        assert 'User "viewer" cannot list resource' in screen, screen
        assert "unreachable" not in screen, screen
        assert board.running()
    finally:
        board.close()
