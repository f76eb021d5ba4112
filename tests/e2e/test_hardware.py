"""The front panels of virtual Pis: `bramble up` gives each Pi a simulated GPIO header with the
demo kit (status LED on BCM17, a Blinkt! on BCM23/24, a kill button on BCM27), driven by the
same drivers as real pins. The panels are read and pressed through the master's node proxy
with the real kubectl, the Python client and `bramble gpio`."""

import json
import subprocess

from conftest import BRAMBLE, wait_for
from test_agent import pods, running


def panel(pis, node):
    return json.loads(pis.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/gpio").stdout)


def lit(panel):
    """{pod key: colour} of the LEDs that show a pod (black while a flash is in its off phase)."""
    strip = panel["strip"]
    return {key: colour for key, colour in zip(strip["showing"], strip["leds"]) if key}


def node_ready(pis, node):
    conditions = pis.kubectl_json("get", "node", node)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Ready")["status"] == "True"


def test_a_button_press_kills_its_pi_and_the_pods_light_up_where_they_land(pis, namespace):
    pis.kubectl("create", "deployment", "lights", f"--image={pis.demo}:1", "--replicas=4", "-n", namespace)

    def placed():
        items = pods(pis, namespace, "app=lights")
        return len(items) == 4 and all(map(running, items)) and items

    items = wait_for(placed, timeout=90, what="four running pods")
    by_node = {}
    for pod in items:
        by_node.setdefault(pod["spec"]["nodeName"], set()).add(f"{namespace}/{pod['metadata']['name']}")

    # Every Pi shows its own pods, one LED each, all in the app's one colour once the flashes
    # of their arrival are over.
    def shown_everywhere():
        shown = {node: lit(panel(pis, node)) for node in by_node}
        settled = all(set(shown[node]) >= keys and "#000000" not in shown[node].values() for node, keys in by_node.items())
        return settled and {colour for node in shown for colour in shown[node].values()}

    colours = wait_for(shown_everywhere, timeout=15, what="each pod on its Pi's LEDs")
    assert len(colours) == 1, colours
    (app_colour,) = colours
    victim = max(by_node, key=lambda node: len(by_node[node]))
    before = panel(pis, victim)
    assert before["backend"] == "simulated"
    assert before["statusLed"]["health"] == "ready"
    assert before["buttons"] == [{"pin": 27, "action": "kill", "pressed": False}]

    # A short press on the victim's button, through the Python client's node proxy call.
    from kubernetes import client

    core = client.CoreV1Api(pis.client())
    core.connect_post_node_proxy_with_path(victim, "gpio/buttons/kill/press")
    try:
        wait_for(
            lambda: (lambda p: p["statusLed"]["health"] == "notready" and not lit(p))(panel(pis, victim)),
            timeout=5,
            what=f"{victim}'s panel to go red and dark",
        )
        wait_for(lambda: not node_ready(pis, victim), timeout=30, what=f"{victim} to be NotReady")

        def moved():
            live = [p for p in pods(pis, namespace, "app=lights") if not p["metadata"].get("deletionTimestamp")]
            ok = len(live) == 4 and all(running(p) and p["spec"]["nodeName"] != victim for p in live)
            return ok and live

        live = wait_for(moved, timeout=60, what=f"the pods of {victim} to run elsewhere")
        receivers = {}
        for pod in live:
            receivers.setdefault(pod["spec"]["nodeName"], set()).add(f"{namespace}/{pod['metadata']['name']}")

        # The receiving Pis light an LED in the app's colour for each pod they took in.
        def lit_where_they_landed():
            for node, keys in receivers.items():
                shown = lit(panel(pis, node))
                if not keys <= set(shown) or any(shown[k] != app_colour for k in keys):
                    return False
            return True

        wait_for(lit_where_they_landed, timeout=15, what="the moved pods on their new Pis' LEDs")
        events = pis.kubectl_json("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={victim}")
        assert any(e["reason"] == "ButtonKill" for e in events["items"]), events
    finally:
        # A long press revives it: through `bramble gpio`, as a presenter without hardware would.
        shown = subprocess.run(
            [BRAMBLE, "gpio", victim, "--press", "kill", "--hold", "2s", "--kubeconfig", str(pis.kubeconfig)],
            capture_output=True, text=True, timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"{victim}: simulated GPIO" in shown.stdout, shown.stdout
    wait_for(lambda: node_ready(pis, victim), timeout=30, what=f"{victim} to be Ready again")
    wait_for(lambda: panel(pis, victim)["statusLed"]["health"] == "ready", timeout=15, what="a green status LED")


def test_panel_errors_are_clear(pis):
    missing = pis.kubectl("get", "--raw", "/api/v1/nodes/pi-1/proxy/gpio/buttons/reboot/press", check=False)
    assert missing.returncode != 0
    pressed = subprocess.run(
        [BRAMBLE, "gpio", "pi-1", "--press", "reboot", "--kubeconfig", str(pis.kubeconfig)],
        capture_output=True, text=True, timeout=30,
    )
    assert pressed.returncode != 0
    assert 'no button "reboot"; this panel has: kill (BCM27)' in pressed.stderr, pressed.stderr
    nowhere = subprocess.run(
        [BRAMBLE, "gpio", "pi-9", "--kubeconfig", str(pis.kubeconfig)], capture_output=True, text=True, timeout=30
    )
    assert nowhere.returncode != 0
    assert "pi-9" in nowhere.stderr, nowhere.stderr
