"""Authentication as kube-apiserver does it: service-account tokens from TokenRequest, client
certificates from the cluster CA, TokenReview, impersonation and the issuer's documents, with
real kubectl and the official Python client."""

import base64
import json
import os
import subprocess

from kubernetes import client

from conftest import KUBECTL

ISSUER = "https://kubernetes.default.svc.cluster.local"


def whoami(master, *args, env=None):
    result = subprocess.run(
        [KUBECTL, *args, "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["status"]["userInfo"]


def test_tokens_from_kubectl_create_token_authenticate(master):
    token = master.kubectl("create", "token", "default", "-n", "default", "--duration", "10m").stdout.strip()
    assert token.count(".") == 2
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["kid"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["iss"] == ISSUER and claims["aud"] == [ISSUER]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["sub"] == "system:serviceaccount:default:default"

    user = whoami(master, "--server", master.url, "--certificate-authority", master.ca, "--token", token)
    assert user["username"] == "system:serviceaccount:default:default"
    assert user["groups"] == ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]
    assert user["extra"]["authentication.kubernetes.io/credential-id"] == [f"JTI={claims['jti']}"]

    short = master.kubectl("create", "token", "default", "--duration", "5m", check=False)
    assert short.returncode != 0
    assert "may not specify a duration less than 10 minutes" in short.stderr
    missing = master.kubectl("create", "token", "ghost", check=False)
    assert 'serviceaccounts "ghost" not found' in missing.stderr

    # Bound to a pod: the pod's name and uid come along, and the token ends with the pod.
    master.kubectl("run", "web", "--image", "busybox:1.36", "--", "sleep", "1d")
    pod_uid = master.kubectl_json("get", "pod", "web")["metadata"]["uid"]
    bound = master.kubectl(
        "create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name", "web"
    ).stdout.strip()
    user = whoami(master, "--server", master.url, "--certificate-authority", master.ca, "--token", bound)
    assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [pod_uid]

    # TokenReview through the Python client.
    authentication = client.AuthenticationV1Api(master.client())
    review = authentication.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=bound)))
    assert review.status.authenticated
    assert review.status.user.username == "system:serviceaccount:default:default"
    assert review.status.audiences == [ISSUER]
    master.kubectl("delete", "pod", "web", "--grace-period=0", "--force")
    review = authentication.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=bound)))
    assert not review.status.authenticated
    assert review.status.error == "service account token has been invalidated"
    vault = authentication.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=["vault"]))
    )
    assert not vault.status.authenticated and "invalid for the target audiences" in vault.status.error


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_client_certificates_from_the_cluster_ca_authenticate(master, tmp_path):
    pki = master.data_dir / "pki"
    (tmp_path / "client.ext").write_text("extendedKeyUsage = clientAuth\nkeyUsage = digitalSignature\n")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "alice.key", cwd=tmp_path)
    openssl("req", "-new", "-key", "alice.key", "-subj", "/O=dev/O=ops/CN=alice", "-out", "alice.csr", cwd=tmp_path)
    openssl(
        "x509", "-req", "-in", "alice.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
        "-CAcreateserial", "-days", "1", "-extfile", "client.ext", "-out", "alice.crt",
        cwd=tmp_path,
    )
    kubeconfig = client_kubeconfig(master, tmp_path, "alice.crt", "alice.key")
    for env in ({}, {"DISABLE_HTTP2": "true"}):  # HTTP/2, then HTTP/1.1
        user = whoami(master, "--kubeconfig", str(kubeconfig), env=env)
        assert user == {"username": "alice", "groups": ["dev", "ops", "system:authenticated"]}

    # A certificate from another CA gets nowhere.
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other-ca.key", cwd=tmp_path)
    openssl("req", "-x509", "-new", "-key", "other-ca.key", "-subj", "/CN=bramble-ca", "-days", "1",
            "-out", "other-ca.crt", cwd=tmp_path)
    openssl(
        "x509", "-req", "-in", "alice.csr", "-CA", "other-ca.crt", "-CAkey", "other-ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "client.ext", "-out", "alice.crt",
        cwd=tmp_path,
    )
    kubeconfig = client_kubeconfig(master, tmp_path, "alice.crt", "alice.key")
    refused = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), "auth", "whoami"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0


def client_kubeconfig(master, directory, certificate, key):
    """A kubeconfig for `master` that shows the client certificate and key in `directory`."""
    data = lambda path: base64.b64encode(open(path, "rb").read()).decode()
    kubeconfig = directory / "client.kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: bramble
  cluster:
    server: {master.url}
    certificate-authority-data: {data(master.ca)}
users:
- name: client
  user:
    client-certificate-data: {data(directory / certificate)}
    client-key-data: {data(directory / key)}
contexts:
- name: client
  context: {{cluster: bramble, user: client}}
current-context: client
"""
    )
    return kubeconfig


def test_impersonation_and_the_issuer_documents(master):
    user = whoami(master, "--kubeconfig", str(master.kubeconfig), "--as", "bob", "--as-group", "dev")
    assert user == {"username": "bob", "groups": ["dev", "system:authenticated"]}
    account = whoami(master, "--kubeconfig", str(master.kubeconfig), "--as", "system:serviceaccount:kube-system:builder")
    assert account["groups"] == ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]

    configuration = json.loads(master.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert configuration["issuer"] == ISSUER
    assert configuration["jwks_uri"] == f"{master.url}/openid/v1/jwks"
    assert configuration["response_types_supported"] == ["id_token"]
    assert configuration["subject_types_supported"] == ["public"]
    assert configuration["id_token_signing_alg_values_supported"] == ["ES256"]
    keys = json.loads(master.kubectl("get", "--raw", "/openid/v1/jwks").stdout)["keys"]
    token = master.kubectl("create", "token", "default").stdout.strip()
    kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
    assert [key["kid"] for key in keys] == [kid]
