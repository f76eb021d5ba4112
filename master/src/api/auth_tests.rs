//! Authentication over real sockets: client certificates in the TLS handshake, service-account
//! tokens from TokenRequest, TokenReview, impersonation headers and the issuer's documents.

use std::sync::Arc;

use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::server_tests::{client_config, parse_reply, Reply, TestServer};
use crate::auth::client_cert::tests::TestCa;

/// One HTTP/1.1 request over TLS showing `client` (certificate and key PEM), or an error
/// when the handshake fails.
async fn call_as(
    server: &TestServer,
    client: (CertificateDer<'static>, String),
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Reply> {
    let config = client_config(&server.ca_pem, Some(client));
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    parse_reply(&answer).ok_or_else(|| std::io::Error::other("no answer"))
}

const WHOAMI: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

fn whoami_body() -> Vec<u8> {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn a_client_certificate_from_the_cluster_ca_authenticates() {
    let server = TestServer::start().await;
    let ca = TestCa::of_data_dir(server.data_dir());
    let alice = ca.client(
        "alice",
        &["dev"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        42,
    );
    let reply = call_as(&server, alice, "POST", WHOAMI, &whoami_body())
        .await
        .unwrap();
    assert_eq!(reply.code, 201, "{}", reply.text());
    assert_eq!(
        reply.json()["status"]["userInfo"],
        json!({"username": "alice", "groups": ["dev", "system:authenticated"]})
    );
    // A certificate from another CA does not get through the handshake.
    let foreign = TestCa::new("bramble-ca").client(
        "mallory",
        &["system:masters"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        43,
    );
    let refused = call_as(&server, foreign, "POST", WHOAMI, &whoami_body()).await;
    assert!(refused.is_err(), "{refused:?}");
    // Connections without a certificate still authenticate by token.
    let reply = server
        .call("POST", WHOAMI, "application/json", &whoami_body())
        .await;
    assert_eq!(reply.json()["status"]["userInfo"]["username"], "admin");
}

async fn post(server: &TestServer, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {}", server.token);
    let mut all = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    all.extend_from_slice(headers);
    server
        .call_with("POST", path, &all, body.to_string().as_bytes())
        .await
}

#[tokio::test]
async fn token_requests_issue_tokens_the_server_accepts_and_reviews() {
    let server = TestServer::start().await;
    let reply = post(
        &server,
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600}}),
        &[],
    )
    .await;
    assert_eq!(reply.code, 201, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["kind"], "TokenRequest");
    let token = answer["status"]["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let whoami = server
        .call_with(
            "POST",
            WHOAMI,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            &whoami_body(),
        )
        .await;
    assert_eq!(whoami.code, 201, "{}", whoami.text());
    let user = &whoami.json()["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:default:default");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    let review = |token: &str, audiences: Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences}})
    };
    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    let reviewed = post(&server, reviews, review(&token, json!([])), &[]).await;
    assert_eq!(reviewed.code, 201, "{}", reviewed.text());
    let status = &reviewed.json()["status"];
    assert_eq!(status["authenticated"], true);
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        status["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let elsewhere = post(&server, reviews, review(&token, json!(["vault"])), &[]).await;
    let status = &elsewhere.json()["status"];
    assert_eq!(status.get("authenticated"), None);
    assert_eq!(
        status["error"],
        "token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"vault\"]"
    );
    let unknown = post(&server, reviews, review("nonsense", json!([])), &[]).await;
    assert_eq!(unknown.json()["status"], json!({"user": {}}));
    let admin = post(&server, reviews, review(&server.token, json!([])), &[]).await;
    assert_eq!(admin.json()["status"]["user"]["username"], "admin");
    let empty = post(&server, reviews, review("", json!([])), &[]).await;
    assert_eq!(empty.code, 400);
}

#[tokio::test]
async fn impersonation_headers_swap_the_user() {
    let server = TestServer::start().await;
    let reply = post(
        &server,
        WHOAMI,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        &[
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "dev"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Extra-Scopes", "view"),
        ],
    )
    .await;
    assert_eq!(reply.code, 201, "{}", reply.text());
    assert_eq!(
        reply.json()["status"]["userInfo"],
        json!({"username": "bob", "groups": ["dev", "ops", "system:authenticated"],
            "extra": {"scopes": ["view"]}})
    );
    let headless = post(
        &server,
        WHOAMI,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        &[("Impersonate-Group", "dev")],
    )
    .await;
    assert_eq!(headless.code, 500, "{}", headless.text());
}

#[tokio::test]
async fn the_issuer_publishes_its_discovery_documents() {
    let server = TestServer::start().await;
    let auth = format!("Bearer {}", server.token);
    let config = server
        .call_with(
            "GET",
            "/.well-known/openid-configuration",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
    assert_eq!(config.code, 200, "{}", config.text());
    let config = config.json();
    assert_eq!(
        config["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(config["response_types_supported"], json!(["id_token"]));
    assert_eq!(config["subject_types_supported"], json!(["public"]));
    assert_eq!(
        config["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let jwks = server
        .call_with("GET", "/openid/v1/jwks", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(jwks.code, 200);
    let key = &jwks.json()["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let anonymous = server.call_with("GET", "/openid/v1/jwks", &[], b"").await;
    assert_eq!(anonymous.code, 401);
}

/// The project's own client (the dashboard's) with a person's kubeconfig from
/// `bramble user add`: a client certificate, no token; RBAC answers it in upstream's words.
#[tokio::test]
async fn the_protocol_client_speaks_as_a_kubeconfigs_client_certificate() {
    use base64::Engine;
    let server = TestServer::start().await;
    let ca = TestCa::of_data_dir(server.data_dir());
    let (cert, key_pem) = ca.client(
        "carol",
        &["team"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        44,
    );
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cert_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        encode(cert.as_ref())
    );
    let kubeconfig = server.data_dir().join("carol.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: b\n  cluster:\n    \
             server: https://{}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  \
             context:\n    cluster: b\n    user: carol\nusers:\n- name: carol\n  user:\n    \
             client-certificate-data: {}\n    client-key-data: {}\n",
            server.addr,
            encode(server.ca_pem.as_bytes()),
            encode(cert_pem.as_bytes()),
            encode(key_pem.as_bytes()),
        ),
    )
    .unwrap();
    let client = protocol::client::Client::from_kubeconfig(&kubeconfig).unwrap();
    let review = client
        .create(
            WHOAMI,
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await
        .unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "carol");
    let refused = client.get("/api/v1/nodes").await.unwrap_err();
    assert_eq!(refused.code(), Some(403));
    assert!(
        refused.to_string().contains(
            "nodes is forbidden: User \"carol\" cannot list resource \"nodes\" in API group \"\" \
             at the cluster scope"
        ),
        "{refused}"
    );
}
