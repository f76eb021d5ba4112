//! The API server over real sockets: an in-process server (no controllers) and raw HTTP/1.1
//! over TLS, so a panic in a connection's task shows as a connection closed without an answer.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{ApiState, ServeLimits};

/// A served API on 127.0.0.1 with an admin token.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub ca_pem: String,
    pub state: Arc<ApiState>,
    connector: TlsConnector,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One answer: status code and body.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS client trusting the CA in `ca_pem`, showing `certificate` (DER and key PEM) if given.
pub fn client_config(
    ca_pem: &str,
    certificate: Option<(CertificateDer<'static>, String)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match certificate {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServeLimits::default()).await
    }

    pub async fn start_with(limits: ServeLimits) -> TestServer {
        Self::start_with_users(limits, Vec::new()).await
    }

    /// A server that also accepts these bearer tokens for these users (who are not admins).
    pub async fn start_with_users(
        limits: ServeLimits,
        users: Vec<(String, crate::auth::UserInfo)>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = tokio::task::spawn_blocking(move || {
            let volatile = crate::resources::volatile_storage_keys();
            let volatile: Vec<&str> = volatile.iter().map(String::as_str).collect();
            let store =
                crate::store::Store::open(&data_dir.join("store.db"), &volatile, 1000).unwrap();
            let credentials =
                crate::pki::ensure_credentials(&data_dir, &["127.0.0.1".to_owned()]).unwrap();
            let nodes = super::node_auth::NodeCredentials::load(
                &data_dir,
                &credentials.ca_pem,
                &format!("https://{addr}"),
            )
            .unwrap();
            let mut auth = crate::auth::AuthState::load(
                &data_dir,
                &credentials.ca_pem,
                Some(&credentials.admin_token),
            )
            .unwrap();
            auth.tokens.extend(users);
            let state = Arc::new(ApiState {
                store: Arc::new(store),
                auth,
                rbac: crate::rbac::Authorizer::default(),
                cluster: crate::ClusterSettings::default(),
                allocation: std::sync::Mutex::new(()),
                admission: std::sync::Mutex::new(()),
                metrics: Arc::new(crate::metrics::MetricsRegistry::default()),
                node_client: None,
                nodes,
            });
            crate::bootstrap(&state, None).unwrap();
            (state, credentials)
        })
        .await
        .unwrap();
        let (state, credentials) = state;
        let acceptor = crate::tls_acceptor(&credentials).unwrap();
        let server = tokio::spawn(super::serve(listener, acceptor, state.clone(), limits));
        let config = client_config(&credentials.ca_pem, None);
        TestServer {
            addr,
            token: credentials.admin_token,
            ca_pem: credentials.ca_pem.clone(),
            state,
            connector: TlsConnector::from(Arc::new(config)),
            server,
            _dir: dir,
        }
    }

    /// The master's data directory (its CA, keys and tokens).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A TLS connection, handshake done.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        self.connector.connect(name, tcp).await.unwrap()
    }

    /// One request with the admin token on a new connection.
    pub async fn call(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let auth = format!("Bearer {}", self.token);
        self.call_with(
            method,
            path,
            &[("Authorization", &auth), ("Content-Type", content_type)],
            body,
        )
        .await
    }

    /// One request with these headers on a new connection. Panics when the connection closes
    /// without an answer.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut stream = self.connect().await;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.flush().await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        parse_reply(&answer)
            .unwrap_or_else(|| panic!("{method} {path}: the connection closed without an answer"))
    }

    /// Creates a ConfigMap `default/{name}`.
    pub async fn config_map(&self, name: &str) {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "x"}}, "data": {"a": "1"}});
        let reply = self
            .call(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                body.to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
    }
}

/// Parses an HTTP/1.1 response (Content-Length or chunked).
pub fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?, 16).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(line_end + 2..line_end + 2 + size)?);
            rest = rest.get(line_end + 4 + size..)?;
        }
        body
    } else {
        rest.to_vec()
    };
    Some(Reply { code, body })
}

fn protobuf_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
    let varint = |mut value: u64, out: &mut Vec<u8>| loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    varint(number << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

mod requests {
    use super::*;

    const CM: &str = "/api/v1/namespaces/default/configmaps/x";

    async fn stored(server: &TestServer) -> Value {
        let reply = server.call("GET", CM, "", b"").await;
        assert_eq!(reply.code, 200, "{}", reply.text());
        reply.json()
    }

    #[tokio::test]
    async fn patches_that_are_not_objects_are_refused_and_the_server_lives() {
        let server = TestServer::start().await;
        server.config_map("x").await;
        let before = stored(&server).await;
        let cases: &[(&str, &str, u16)] = &[
            ("application/merge-patch+json", r#""hello""#, 400),
            ("application/merge-patch+json", "null", 400),
            ("application/merge-patch+json", "[1]", 422),
            ("application/strategic-merge-patch+json", r#""hello""#, 400),
            ("application/strategic-merge-patch+json", "[1]", 400),
            ("application/json-patch+json", r#""hello""#, 400),
            ("application/json-patch+json", "{}", 400),
            (
                "application/json-patch+json",
                r#"[{"op":"replace","path":"","value":"x"}]"#,
                422,
            ),
            (
                "application/json-patch+json",
                r#"[{"op":"add","path":"/metadata","value":[]}]"#,
                422,
            ),
        ];
        for (content_type, body, code) in cases {
            let reply = server
                .call("PATCH", CM, content_type, body.as_bytes())
                .await;
            assert_eq!(reply.code, *code, "{content_type} {body}: {}", reply.text());
            let status = reply.json();
            assert_eq!(status["kind"], "Status", "{content_type} {body}");
            assert_eq!(status["code"], *code);
        }
        assert_eq!(stored(&server).await, before);
    }

    #[tokio::test]
    async fn shape_breaking_merge_patches_leave_the_object_untouched() {
        let server = TestServer::start().await;
        server.config_map("x").await;
        let before = stored(&server).await;
        for body in [
            r#"{"metadata":"x"}"#,
            r#"{"metadata":5}"#,
            r#"{"metadata":["a"]}"#,
            r#"{"data":5}"#,
            r#"{"data":{"a":5}}"#,
            r#"{"metadata":{"labels":"x"}}"#,
        ] {
            for content_type in [
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ] {
                let reply = server
                    .call("PATCH", CM, content_type, body.as_bytes())
                    .await;
                assert!(
                    (400..500).contains(&reply.code),
                    "{content_type} {body}: {} {}",
                    reply.code,
                    reply.text()
                );
                assert_eq!(reply.json()["reason"], "Invalid", "{body}");
            }
        }
        let reply = server
            .call(
                "PATCH",
                CM,
                "application/merge-patch+json",
                br#"{"metadata":"x"}"#,
            )
            .await;
        let status = reply.json();
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .starts_with(r#" "" is invalid: patch: Invalid value: "{\"apiVersion\":"#),
            "{status}"
        );
        assert_eq!(status["details"]["causes"][0]["field"], "patch");
        assert_eq!(stored(&server).await, before);
        // The same for a spec that becomes a number, and a scale that does not decode.
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        let path = "/apis/apps/v1/namespaces/default/deployments";
        let reply = server
            .call(
                "POST",
                path,
                "application/json",
                deployment.to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
        let web = format!("{path}/web");
        let before = server.call("GET", &web, "", b"").await.json();
        for (target, body) in [
            (web.clone(), r#"{"spec":5}"#),
            (web.clone(), r#"{"spec":{"replicas":"three"}}"#),
            (format!("{web}/scale"), r#"{"spec":{"replicas":"three"}}"#),
            (format!("{web}/scale"), r#"{"spec":7}"#),
            (format!("{web}/status"), r#"{"status":"x"}"#),
        ] {
            let reply = server
                .call(
                    "PATCH",
                    &target,
                    "application/merge-patch+json",
                    body.as_bytes(),
                )
                .await;
            assert!(
                (400..500).contains(&reply.code),
                "{target} {body}: {} {}",
                reply.code,
                reply.text()
            );
        }
        let after = server.call("GET", &web, "", b"").await.json();
        assert_eq!(after["spec"], before["spec"]);
        assert_eq!(after["metadata"], before["metadata"]);
    }

    #[tokio::test]
    async fn odd_query_strings_are_answered() {
        let server = TestServer::start().await;
        for query in [
            "resourceVersion=1;2&fieldSelector=spec.nodeName=",
            "resourceVersion=1;2",
            "fieldSelector=spec.nodeName=",
            "limit=99999999999999999999999",
            "limit=-5",
            "continue=%ff%fe",
            "labelSelector=%ff",
            "resourceVersion=x&watch=true&timeoutSeconds=99999999999999999999",
            "watch=1&resourceVersion=1;2",
            "watch=1&resourceVersion=99999999999999999999",
            "watch=1&resourceVersion=-1",
        ] {
            let path = format!("/api/v1/namespaces/default/secrets?{query}");
            let reply = server.call("GET", &path, "", b"").await;
            assert!(
                reply.code == 200 || (400..500).contains(&reply.code),
                "{query}: {} {}",
                reply.code,
                reply.text()
            );
            if reply.code != 200 {
                assert_eq!(reply.json()["kind"], "Status", "{query}");
            }
        }
        let reply = server
            .call(
                "GET",
                "/api/v1/namespaces/default/secrets?resourceVersion=1;2&fieldSelector=spec.nodeName=",
                "",
                b"",
            )
            .await;
        assert_eq!(reply.code, 400, "{}", reply.text());
        assert_eq!(reply.json()["reason"], "BadRequest");
        // A malformed resourceVersion is refused by lists as by watches.
        for query in [
            "resourceVersion=1;2",
            "resourceVersion=1;2&watch=1",
            "resourceVersion=-1",
        ] {
            let path = format!("/api/v1/namespaces/default/secrets?{query}");
            let reply = server.call("GET", &path, "", b"").await;
            assert_eq!(reply.code, 400, "{query}: {}", reply.text());
            assert!(
                reply.json()["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("resourceVersion: Invalid value: "),
                "{}",
                reply.text()
            );
        }
    }

    #[tokio::test]
    async fn huge_grace_periods_are_answered() {
        let server = TestServer::start().await;
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "pi-1", "terminationGracePeriodSeconds": i64::MAX,
                     "containers": [{"name": "c", "image": "nginx"}]}});
        let pods = "/api/v1/namespaces/default/pods";
        let reply = server
            .call("POST", pods, "application/json", pod.to_string().as_bytes())
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
        let reply = server
            .call(
                "DELETE",
                &format!("{pods}/p?gracePeriodSeconds={}", i64::MAX),
                "",
                b"",
            )
            .await;
        assert_eq!(reply.code, 200, "{}", reply.text());
        assert!(reply.json()["metadata"]["deletionTimestamp"].is_string());
        let reply = server.call("DELETE", &format!("{pods}/p"), "", b"").await;
        assert_eq!(reply.code, 200, "{}", reply.text());
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_case_insensitive() {
        let server = TestServer::start().await;
        for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
            let auth = format!("{scheme} {}", server.token);
            let reply = server
                .call_with(
                    "GET",
                    CM.trim_end_matches("/x"),
                    &[("Authorization", &auth)],
                    b"",
                )
                .await;
            assert_eq!(reply.code, 200, "{scheme}: {}", reply.text());
        }
        let reply = server
            .call_with(
                "GET",
                "/api/v1/namespaces",
                &[("Authorization", "Basic abc")],
                b"",
            )
            .await;
        assert_eq!(reply.code, 401);
    }

    #[tokio::test]
    async fn status_bodies_are_written_as_upstream_writes_them() {
        let server = TestServer::start().await;
        let reply = server
            .call("GET", "/api/v1/namespaces/default/configmaps/nope", "", b"")
            .await;
        assert_eq!(reply.code, 404);
        assert_eq!(
            reply.text(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"configmaps"},"code":404}"#
        );
        let reply = server
            .call(
                "GET",
                "/apis/apps/v1/namespaces/default/deployments/nope",
                "",
                b"",
            )
            .await;
        assert_eq!(
            reply.text(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"deployments.apps \"nope\" not found","reason":"NotFound","details":{"name":"nope","group":"apps","kind":"deployments"},"code":404}"#
        );
        let bad =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}});
        let reply = server
            .call(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                bad.to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 422);
        let keys: Vec<String> = reply.json().as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "kind",
                "apiVersion",
                "metadata",
                "status",
                "message",
                "reason",
                "details",
                "code"
            ]
        );
        let details = reply.json()["details"].clone();
        assert!(details.get("group").is_none(), "{details}");
        assert_eq!(details["kind"], "ConfigMap");
    }

    #[tokio::test]
    async fn empty_metadata_fields_are_left_out_as_upstream_does() {
        let server = TestServer::start().await;
        let owner = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}});
        let reply = server
            .call(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                owner.to_string().as_bytes(),
            )
            .await;
        let uid = reply.json()["metadata"]["uid"].as_str().unwrap().to_owned();
        let dependent = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "dependent", "labels": {}, "annotations": {}, "finalizers": [],
            "generateName": "",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
        let reply = server
            .call(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                dependent.to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
        let metadata = reply.json()["metadata"].clone();
        for field in ["labels", "annotations", "finalizers", "generateName"] {
            assert!(metadata.get(field).is_none(), "{field}: {metadata}");
        }
        // Orphaning releases the dependent: its last owner reference goes, and so does the list.
        let reply = server
            .call(
                "DELETE",
                "/api/v1/namespaces/default/configmaps/owner?propagationPolicy=Orphan",
                "",
                b"",
            )
            .await;
        assert_eq!(reply.code, 200, "{}", reply.text());
        let reply = server
            .call(
                "GET",
                "/api/v1/namespaces/default/configmaps/dependent",
                "",
                b"",
            )
            .await;
        let metadata = reply.json()["metadata"].clone();
        assert!(metadata.get("ownerReferences").is_none(), "{metadata}");
        // An update that empties the labels leaves them out too.
        let reply = server
            .call(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/dependent",
                "application/merge-patch+json",
                br#"{"metadata":{"labels":{"a":"b"}}}"#,
            )
            .await;
        assert_eq!(reply.json()["metadata"]["labels"]["a"], "b");
        let reply = server
            .call(
                "PATCH",
                "/api/v1/namespaces/default/configmaps/dependent",
                "application/json-patch+json",
                br#"[{"op":"remove","path":"/metadata/labels/a"}]"#,
            )
            .await;
        assert!(
            reply.json()["metadata"].get("labels").is_none(),
            "{}",
            reply.text()
        );
    }

    #[tokio::test]
    async fn yaml_sent_as_json_is_refused_with_upstreams_words() {
        let server = TestServer::start().await;
        let reply = server
            .call(
                "POST",
                "/api/v1/namespaces",
                "application/json",
                b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
            )
            .await;
        assert_eq!(reply.code, 400);
        let status = reply.json();
        assert_eq!(status["reason"], "BadRequest");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .starts_with("the object provided is unrecognized (must be of type Namespace): couldn't get version/kind; json parse error: invalid character 'a' looking for beginning of value ("),
            "{status}"
        );
    }

    #[tokio::test]
    async fn protobuf_bodies_with_unknown_fields_are_refused_naming_the_field() {
        let server = TestServer::start().await;
        let namespace = |extra: bool| {
            let mut meta = Vec::new();
            protobuf_field(1, if extra { b"pb-new" } else { b"pb-old" }, &mut meta);
            let mut object = Vec::new();
            protobuf_field(1, &meta, &mut object);
            if extra {
                protobuf_field(77, b"from the future", &mut object);
            }
            let mut type_meta = Vec::new();
            protobuf_field(1, b"v1", &mut type_meta);
            protobuf_field(2, b"Namespace", &mut type_meta);
            let mut body = b"k8s\0".to_vec();
            protobuf_field(1, &type_meta, &mut body);
            protobuf_field(2, &object, &mut body);
            body
        };
        let protobuf = "application/vnd.kubernetes.protobuf";
        let reply = server
            .call("POST", "/api/v1/namespaces", protobuf, &namespace(false))
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
        let reply = server
            .call("POST", "/api/v1/namespaces", protobuf, &namespace(true))
            .await;
        assert_eq!(reply.code, 415, "{}", reply.text());
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("field 77 of Namespace"), "{message}");
        let reply = server
            .call("GET", "/api/v1/namespaces/pb-new", "", b"")
            .await;
        assert_eq!(reply.code, 404);
    }

    #[tokio::test]
    async fn events_are_bounded() {
        let server = TestServer::start().await;
        let event = |name: &str, message: &str, annotation: &str| {
            json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "annotations": {"a": annotation}},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "reason": "Started", "message": message, "type": "Normal"})
            .to_string()
        };
        let path = "/api/v1/namespaces/default/events";
        let reply = server
            .call(
                "POST",
                path,
                "application/json",
                event("ok", "fine", "").as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 201, "{}", reply.text());
        let long = "x".repeat(crate::admission::EVENT_MESSAGE_LIMIT + 1);
        let reply = server
            .call(
                "POST",
                path,
                "application/json",
                event("long", &long, "").as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 422, "{}", reply.text());
        assert_eq!(reply.json()["details"]["causes"][0]["field"], "message");
        let big = "x".repeat(super::super::objects::VOLATILE_OBJECT_LIMIT);
        let reply = server
            .call(
                "POST",
                path,
                "application/json",
                event("big", "m", &big).as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 413, "{}", reply.text());
        let reply = server
            .call(
                "PATCH",
                &format!("{path}/ok"),
                "application/merge-patch+json",
                json!({"metadata": {"annotations": {"a": big}}})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 413, "{}", reply.text());
    }
}

mod limits {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn join_bodies_are_small_before_authentication() {
        let server = TestServer::start().await;
        let body = vec![b'x'; 1024 * 1024];
        let reply = server
            .call_with(
                "POST",
                "/bramble/v1/join",
                &[("Content-Type", "application/json")],
                &body,
            )
            .await;
        assert_eq!(reply.code, 413, "{}", reply.text());
        // A real join request still fits.
        let token = server.state.nodes.join_token();
        let auth = format!("Bearer {token}");
        let reply = server
            .call_with(
                "POST",
                "/bramble/v1/join",
                &[("Authorization", &auth)],
                br#"{"node":"pi-1"}"#,
            )
            .await;
        assert_eq!(reply.code, 200, "{}", reply.text());
    }

    /// Whether the server closes the stream within `within`.
    async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
        let mut buffer = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Whether the server closes the stream within a day of paused time (its timeouts come
    /// long before).
    async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
        closed_within(stream, Duration::from_secs(86_400)).await
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_are_closed_after_the_handshake_timeout() {
        let server = TestServer::start().await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        assert!(closed_by_server(&mut tcp).await);
        assert!(opened.elapsed() >= ServeLimits::default().handshake_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn unfinished_headers_are_closed_after_the_header_timeout() {
        let server = TestServer::start().await;
        let mut tls = server.connect().await;
        tls.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        assert!(closed_by_server(&mut tls).await);
    }

    #[tokio::test(start_paused = true)]
    async fn unauthenticated_connections_do_not_live_forever() {
        let server = TestServer::start().await;
        let mut tls = server.connect().await;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        assert!(closed_by_server(&mut tls).await);
        // An authenticated connection outlives a guest's lifetime (here: a quiet watch).
        let mut member = server.connect().await;
        let request = format!(
            "GET /api/v1/namespaces?watch=1&timeoutSeconds=3600 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            server.token
        );
        member.write_all(request.as_bytes()).await.unwrap();
        member.flush().await.unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let read = member.read(&mut buffer).await.unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        assert!(
            !closed_within(&mut member, ServeLimits::default().guest_lifetime * 10).await,
            "the authenticated connection was closed"
        );
    }

    #[tokio::test]
    async fn idle_strangers_cannot_starve_clients() {
        let server = TestServer::start_with(ServeLimits {
            guest_connections: 8,
            ..ServeLimits::default()
        })
        .await;
        // Idle TCP connections (no handshake) and idle TLS connections (no request).
        let mut idle_tcp = Vec::new();
        for _ in 0..20 {
            idle_tcp.push(TcpStream::connect(server.addr).await.unwrap());
        }
        let mut idle_tls = Vec::new();
        for _ in 0..20 {
            idle_tls.push(server.connect().await);
        }
        for _ in 0..3 {
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                server.call("GET", "/api/v1/namespaces", "", b""),
            )
            .await
            .expect("an authenticated client is served");
            assert_eq!(reply.code, 200);
        }
        // The oldest strangers were closed to make room.
        assert!(closed_within(&mut idle_tcp[0], Duration::from_secs(30)).await);
        assert!(closed_within(&mut idle_tls[0], Duration::from_secs(30)).await);
    }
}

/// The protocol client's list-then-watch against the real server: pages, then changes, and a
/// follower that stops when its hook says so.
#[tokio::test]
async fn a_follower_lists_in_pages_then_watches_until_it_stops() {
    use protocol::client::{Client, Event, Follower};
    use std::ops::ControlFlow;

    let server = TestServer::start().await;
    for i in 0..7 {
        server.config_map(&format!("cm-{i}")).await;
    }
    let client = Client::new(
        &format!("https://{}", server.addr),
        server.ca_pem.as_bytes(),
        &server.token,
    )
    .unwrap();
    let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel::<String>();
    let follow = tokio::spawn(async move {
        let name = |object: &Value| object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let follower = Follower {
            page: 3,
            handle: |event: Event<'_>| {
                let (word, stop) = match event {
                    Event::Init => ("init".to_owned(), false),
                    Event::InitApply(o) => (format!("listed {}", name(o)), false),
                    Event::InitDone => ("listed".to_owned(), false),
                    Event::Apply(o) => (format!("applied {}", name(o)), false),
                    Event::Delete(o) => (format!("deleted {}", name(o)), true),
                };
                let _ = seen.send(word);
                if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            lost: |_: &protocol::client::ClientError| ControlFlow::Break(()),
        };
        client
            .follow_with("/api/v1/namespaces/default/configmaps", follower)
            .await;
    });
    let mut words = Vec::new();
    while words.last().map(String::as_str) != Some("listed") {
        words.push(heard.recv().await.expect("the follower lists"));
    }
    let mut expected = vec!["init".to_owned()];
    expected.extend((0..7).map(|i| format!("listed cm-{i}")));
    expected.push("listed".to_owned());
    assert_eq!(words, expected, "seven objects over three pages, in order");

    server.config_map("late").await;
    let reply = server
        .call(
            "DELETE",
            "/api/v1/namespaces/default/configmaps/cm-3",
            "application/json",
            b"",
        )
        .await;
    assert_eq!(reply.code, 200, "{}", reply.text());
    tokio::time::timeout(std::time::Duration::from_secs(10), follow)
        .await
        .expect("the follower stops on its hook's Break")
        .unwrap();
    let rest: Vec<String> = std::iter::from_fn(|| heard.try_recv().ok()).collect();
    assert_eq!(rest, ["applied late", "deleted cm-3"]);
}
