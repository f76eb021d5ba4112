"""RBAC through real kubectl and the Python client: a person made with `bramble user add` and
bound to `edit` in one namespace deploys there, is refused elsewhere with upstream's words, sees
their rules with `kubectl auth can-i --list`, cannot grant more than they hold, cannot
impersonate, and gains what an aggregated ClusterRole adds to `edit`."""

import subprocess

import pytest

from conftest import BRAMBLE, KUBECTL, manifest, wait_for


def add_user(m, tmp_path, name, *args):
    kubeconfig = tmp_path / f"{name}.kubeconfig"
    subprocess.run([BRAMBLE, "user", "add", name, "--kubeconfig", str(m.kubeconfig), "-o", str(kubeconfig), *args],
                   check=True, capture_output=True, timeout=60)
    return kubeconfig


def kubectl_as(kubeconfig, *args, input=None):
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], input=input,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def alice(master, tmp_path):
    master.kubectl("create", "namespace", "team-a")
    return add_user(master, tmp_path, "alice", "--namespace", "team-a", "--role", "edit")


def test_an_editor_deploys_in_her_namespace_and_is_refused_elsewhere_in_upstreams_words(master, alice):
    created = kubectl_as(alice, "create", "deployment", "web", "--image", "nginx:1.27", "--replicas", "2")
    assert created.returncode == 0, created.stderr
    assert kubectl_as(alice, "get", "deployment", "web").returncode == 0
    assert kubectl_as(alice, "create", "configmap", "settings", "--from-literal", "a=b").returncode == 0

    refused = kubectl_as(alice, "get", "pods", "-n", "kube-system")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" '
        'in API group "" in the namespace "kube-system"'
    ), refused.stderr
    nodes = kubectl_as(alice, "get", "nodes")
    assert 'User "alice" cannot list resource "nodes" in API group "" at the cluster scope' in nodes.stderr
    named = kubectl_as(alice, "delete", "namespace", "team-a")
    assert ('namespaces "team-a" is forbidden: User "alice" cannot delete resource "namespaces" '
            'in API group "" in the namespace "team-a"') in named.stderr, named.stderr

    assert kubectl_as(alice, "auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    assert kubectl_as(alice, "auth", "can-i", "create", "deployments", "-n", "default").stdout.strip() == "no"
    assert kubectl_as(alice, "auth", "can-i", "create", "roles").stdout.strip() == "no"
    # `edit` may not read or change roles, and never reads the RBAC of others.
    rules = kubectl_as(alice, "auth", "can-i", "--list")
    assert rules.returncode == 0, rules.stderr
    lines = rules.stdout.splitlines()
    assert lines[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    deployments = next(line for line in lines if line.startswith("deployments.apps "))
    assert "create" in deployments and "delete" in deployments, deployments
    assert any(line.split()[0] == "selfsubjectaccessreviews.authorization.k8s.io" for line in lines)
    assert not any(line.startswith("roles.rbac.authorization.k8s.io") for line in lines)
    # The admin asks on her behalf.
    assert master.kubectl("auth", "can-i", "list", "secrets", "-n", "team-a", "--as", "alice").stdout.strip() == "yes"
    as_alice = master.kubectl("auth", "can-i", "list", "secrets", "-n", "kube-system", "--as", "alice", check=False)
    assert as_alice.stdout.strip() == "no"


def test_the_python_client_gets_the_same_refusal(master, alice):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(alice), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    assert core.list_namespaced_pod("team-a").items == []
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_secret("kube-system")
    assert refused.value.status == 403
    assert 'cannot list resource \\"secrets\\"' in refused.value.body or \
        'cannot list resource "secrets"' in refused.value.body


def test_an_editor_cannot_grant_what_she_does_not_hold(master, alice):
    binding = manifest({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "take-over", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    })
    refused = kubectl_as(alice, "apply", "-f", "-", input=binding)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr, refused.stderr
    # `edit` cannot write RoleBindings at all; with that right (but not cluster-admin's rules)
    # the escalation check itself speaks.
    master.kubectl("create", "role", "binder", "-n", "team-a", "--verb", "create,get,list",
                   "--resource", "rolebindings.rbac.authorization.k8s.io")
    master.kubectl("create", "rolebinding", "alice-binds", "-n", "team-a", "--role", "binder", "--user", "alice")
    escalation = kubectl_as(alice, "create", "-f", "-", input=binding)
    assert escalation.returncode != 0
    assert ('rolebindings.rbac.authorization.k8s.io "take-over" is forbidden: user "alice" '
            '(groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:') \
        in escalation.stderr, escalation.stderr
    # A role she holds in full she may bind.
    ok = kubectl_as(alice, "create", "rolebinding", "bob-views", "--clusterrole", "view", "--user", "bob")
    assert ok.returncode == 0, ok.stderr
    # Impersonation needs `impersonate`, which `edit` does not give.
    impersonating = kubectl_as(alice, "get", "pods", "--as", "admin", "--as-group", "system:masters")
    assert impersonating.returncode != 0
    assert 'cannot impersonate resource "users" in API group ""' in impersonating.stderr, impersonating.stderr


def test_an_aggregated_cluster_role_extends_edit_at_once(master, alice):
    assert kubectl_as(alice, "auth", "can-i", "list", "roles").stdout.strip() == "no"
    master.kubectl("apply", "-f", "-", input=manifest({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "roles-reader", "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["get", "list"]}],
    }))
    wait_for(lambda: any("roles" in rule.get("resources", [])
                         for rule in master.kubectl_json("get", "clusterrole", "edit").get("rules", [])),
             timeout=10, what="edit to aggregate the roles reader")
    assert kubectl_as(alice, "auth", "can-i", "list", "roles").stdout.strip() == "yes"
    assert kubectl_as(alice, "get", "roles").returncode == 0
    # The defaults carry their upstream labels and aggregation rules.
    view = master.kubectl_json("get", "clusterrole", "view")
    assert view["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
    assert view["aggregationRule"]["clusterRoleSelectors"] == [
        {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]
