"""Pod Security admission through real kubectl: namespaces labelled `enforce`, `warn` or with bad
values, pods and Deployments refused or warned about in upstream's exact words, the dry-run of
existing pods when a namespace's enforce level changes, and the cluster-wide defaults and
exemptions of `bramble master --pod-security-*`."""

import signal

from conftest import Master, manifest, wait_for

ENFORCE = "pod-security.kubernetes.io/enforce"
WARN = "pod-security.kubernetes.io/warn"

BARE_POD_REASONS = (
    'allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), '
    'unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), '
    'runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), '
    'seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
)
BARE_POD_SHORT = "allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"


def namespace(m, name, labels):
    m.kubectl("apply", "-f", "-", input=manifest(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))


def pod(name, namespace, security_context=None):
    container = {"name": "c", "image": "registry.local/app:1"}
    if security_context is not None:
        container["securityContext"] = security_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [container]}}


def deployment(name, namespace):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}]}},
        },
    }


def warnings(stderr):
    return [line[len("Warning: "):] for line in stderr.splitlines() if line.startswith("Warning: ")]


def test_a_restricted_namespace_refuses_with_upstreams_message(master):
    namespace(master, "secure", {ENFORCE: "restricted"})
    privileged = master.kubectl("apply", "-f", "-", check=False,
                                input=manifest(pod("priv", "secure", {"privileged": True})))
    assert privileged.returncode != 0
    assert privileged.stderr.strip() == (
        'Error from server (Forbidden): error when creating "STDIN": pods "priv" is forbidden: '
        'violates PodSecurity "restricted:latest": privileged (container "c" must not set '
        f'securityContext.privileged=true), {BARE_POD_REASONS}'
    ), privileged.stderr

    bare = master.kubectl("run", "bare", "-n", "secure", "--image", "registry.local/app:1", check=False)
    assert bare.returncode != 0
    # `kubectl run` names its container after the pod.
    assert bare.stderr.strip() == (
        'Error from server (Forbidden): pods "bare" is forbidden: violates PodSecurity "restricted:latest": '
        + BARE_POD_REASONS.replace('"c"', '"bare"')
    ), bare.stderr

    from kubernetes import client
    from kubernetes.client.rest import ApiException
    import json

    core = client.CoreV1Api(master.client())
    try:
        core.create_namespaced_pod("secure", pod("py", "secure"))
        raise AssertionError("created")
    except ApiException as refused:
        assert refused.status == 403
        status = json.loads(refused.body)
        assert status["reason"] == "Forbidden"
        assert status["details"] == {"name": "py", "kind": "pods"}
        assert status["message"] == f'pods "py" is forbidden: violates PodSecurity "restricted:latest": {BARE_POD_REASONS}'

    hardened = pod("ok", "secure", {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
    })
    created = master.kubectl("apply", "-f", "-", input=manifest(hardened))
    assert created.stdout.strip() == "pod/ok created"
    assert warnings(created.stderr) == []


def test_warn_prints_upstreams_warning_for_pods_and_deployments(master):
    namespace(master, "loose", {WARN: "restricted"})
    applied = master.kubectl("apply", "-f", "-", input=manifest(deployment("web", "loose")))
    assert applied.stdout.strip() == "deployment.apps/web created"
    assert warnings(applied.stderr) == [f'would violate PodSecurity "restricted:latest": {BARE_POD_REASONS}'], applied.stderr

    applied = master.kubectl("apply", "-f", "-", input=manifest(pod("p", "loose")))
    assert applied.stdout.strip() == "pod/p created"
    assert warnings(applied.stderr) == [f'would violate PodSecurity "restricted:latest": {BARE_POD_REASONS}'], applied.stderr
    assert master.kubectl_json("get", "pod", "p", "-n", "loose")["metadata"]["name"] == "p"


def test_audit_violations_are_logged_with_upstreams_annotation_keys(master):
    namespace(master, "audited", {"pod-security.kubernetes.io/audit": "baseline"})
    applied = master.kubectl("apply", "-f", "-", input=manifest(pod("p", "audited", {"privileged": True})))
    assert applied.stdout.strip() == "pod/p created"
    assert warnings(applied.stderr) == []
    expected = ('pod-security.kubernetes.io/audit-violations="would violate PodSecurity \\"baseline:latest\\": '
                'privileged (container \\"c\\" must not set securityContext.privileged=true)" '
                'pod-security.kubernetes.io/enforce-policy="privileged:latest"')
    line = wait_for(lambda: next((l for l in master.log.read_text().splitlines() if "audit-violations" in l), None),
                    timeout=10, what="the audit line in the master's log")
    assert expected in line, line
    assert 'namespace="audited" name="p"' in line, line


def test_a_deployment_in_a_restricted_namespace_gets_failed_create_events(master):
    namespace(master, "secure", {ENFORCE: "restricted"})
    applied = master.kubectl("apply", "-f", "-", input=manifest(deployment("web", "secure")))
    # The template is warned about (warn follows enforce), never refused.
    assert applied.stdout.strip() == "deployment.apps/web created"
    assert warnings(applied.stderr) == [f'would violate PodSecurity "restricted:latest": {BARE_POD_REASONS}']

    def failed_create():
        events = master.kubectl_json("get", "events", "-n", "secure")["items"]
        return [e["message"] for e in events if e["reason"] == "FailedCreate"]

    message = wait_for(failed_create, timeout=30, what="a FailedCreate event")[0]
    assert message.startswith('Error creating: pods "web-'), message
    assert message.endswith(
        f'" is forbidden: violates PodSecurity "restricted:latest": {BARE_POD_REASONS}'), message
    assert master.kubectl_json("get", "pods", "-n", "secure")["items"] == []


def test_labelling_over_violating_pods_warns_and_bad_values_are_refused(master):
    namespace(master, "apps", {})
    for name in ["web-2", "web-1"]:
        master.kubectl("apply", "-f", "-", input=manifest(pod(name, "apps")))
    master.kubectl("apply", "-f", "-", input=manifest(pod("admin", "apps", {"privileged": True})))

    labelled = master.kubectl("label", "ns", "apps", f"{ENFORCE}=restricted")
    assert labelled.stdout.strip() == "namespace/apps labeled"
    assert warnings(labelled.stderr) == [
        'existing pods in namespace "apps" violate the new PodSecurity enforce level "restricted:latest"',
        f"admin: privileged, {BARE_POD_SHORT}",
        f"web-1 (and 1 other pod): {BARE_POD_SHORT}",
    ], labelled.stderr
    assert master.kubectl_json("get", "ns", "apps")["metadata"]["labels"][ENFORCE] == "restricted"

    bad = master.kubectl("label", "ns", "apps", "--overwrite", f"{ENFORCE}=foo", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip() == (
        'The Namespace "apps" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: '
        'Invalid value: "foo": must be one of privileged, baseline, restricted'
    ), bad.stderr
    created = master.kubectl("create", "-f", "-", check=False, input=manifest(
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "odd", "labels": {f"{ENFORCE}-version": "1.25"}}}))
    assert created.returncode != 0
    assert created.stderr.strip() == (
        'The Namespace "odd" is invalid: metadata.labels[pod-security.kubernetes.io/enforce-version]: '
        'Invalid value: "1.25": must be "latest" or "v1.x"'
    ), created.stderr


def test_cluster_defaults_and_exemptions_come_from_the_masters_options(tmp_path):
    m = Master(tmp_path / "data", "--pod-security-enforce", "baseline", "--pod-security-warn", "restricted",
               "--pod-security-warn-version", "v1.30", "--pod-security-exempt-namespace", "kube-system").start()
    try:
        refused = m.kubectl("apply", "-f", "-", check=False, input=manifest(pod("p", "default", {"privileged": True})))
        assert refused.returncode != 0
        assert 'pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)' in refused.stderr
        warned = m.kubectl("apply", "-f", "-", input=manifest(pod("b", "default")))
        assert warnings(warned.stderr) == [f'would violate PodSecurity "restricted:v1.30": {BARE_POD_REASONS}']
        exempt = m.kubectl("apply", "-f", "-", input=manifest(pod("p", "kube-system", {"privileged": True})))
        assert exempt.stdout.strip() == "pod/p created"
        assert warnings(exempt.stderr) == []
        labelled = m.kubectl("label", "ns", "kube-system", f"{ENFORCE}=restricted")
        assert warnings(labelled.stderr) == [
            'namespace "kube-system" is exempt from Pod Security, and the policy (enforce=restricted:latest) will be ignored'
        ]
    finally:
        m.kill(signal.SIGTERM)
