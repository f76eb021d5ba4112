//! A small Kubernetes API client: kubeconfig, one multiplexed HTTP/2 connection, JSON verbs and watches.
//!
//! The agents, the simulated nodes and the dashboard need a handful of calls, not a general
//! client: get, list, create, merge-patch, delete and watch, authenticated with a bearer token
//! or a client certificate against the cluster CA from the kubeconfig. Requests share one HTTP/2 connection, so a
//! thousand simulated nodes cost the master one TLS session.
//!
//! [`Client::follow`] lists then watches a collection, as kube-runtime's watcher does, and
//! hands out typed [`Event`]s:
//!
//! ```text
//!   Init ─► InitApply(obj)... ─► InitDone ─► Apply(obj) / Delete(obj)... ─┐
//!    ▲                                                                     │ watch ended,
//!    └────────────────────── re-list ◄─────────────────────────────────────┘ expired or failed
//! ```

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read or lacks what the client needs.
    #[error("kubeconfig {path}: {problem}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the API server at {server}")]
    Transport {
        /// The server address.
        server: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: {code} {message}")]
    Status {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
        /// The HTTP status code.
        code: u16,
        /// The Status message from the server.
        message: String,
    },
    /// The server address or the CA cannot be used.
    #[error("cannot talk to {server}: {problem}")]
    Setup {
        /// The server address.
        server: String,
        /// What is wrong.
        problem: String,
    },
    /// The server's answer was not the JSON expected.
    #[error("{path}: unreadable response")]
    Decode {
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status code, when the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Body = Full<Bytes>;

/// A connection to one API server.
pub struct Client {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    /// The bearer token, unless the client certificate says who this is.
    token: Option<String>,
    ca_pem: Vec<u8>,
    connection: Mutex<Option<SendRequest<Body>>>,
}

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// `Authorization: Bearer <token>` (the admin token, a node's, a service account's).
    Token(String),
    /// A client certificate from the cluster CA and its key, PEM (`bramble user add`).
    Certificate {
        /// The certificate (chain).
        cert_pem: Vec<u8>,
        /// Its private key.
        key_pem: Vec<u8>,
    },
}

/// The current context of a kubeconfig: where the server is, whom to trust, who to be.
pub struct KubeconfigContext {
    /// `https://host:port`.
    pub server: String,
    /// The cluster CA, PEM.
    pub ca_pem: Vec<u8>,
    /// The user's credentials.
    pub credentials: Credentials,
}

impl KubeconfigContext {
    /// Reads the current context of the kubeconfig at `path` (data inline or in files).
    pub fn read(path: &Path) -> Result<KubeconfigContext, ClientError> {
        let problem = |problem: String| ClientError::Kubeconfig {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
        let config: Value = serde_saphyr::from_str(&text).map_err(|e| problem(e.to_string()))?;
        let current = config["current-context"].as_str().unwrap_or_default();
        let named = |section: &str, name: &str| -> Option<Value> {
            config[section]
                .as_array()?
                .iter()
                .find(|entry| name.is_empty() || entry["name"] == name)
                .cloned()
        };
        let context =
            named("contexts", current).ok_or_else(|| problem(format!("no context {current:?}")))?;
        let cluster_name = context["context"]["cluster"].as_str().unwrap_or_default();
        let user_name = context["context"]["user"].as_str().unwrap_or_default();
        let cluster = named("clusters", cluster_name)
            .ok_or_else(|| problem(format!("no cluster {cluster_name:?}")))?;
        let user =
            named("users", user_name).ok_or_else(|| problem(format!("no user {user_name:?}")))?;
        let server = cluster["cluster"]["server"]
            .as_str()
            .ok_or_else(|| problem("the cluster has no server".into()))?;
        // `<field>-data` inline (base64), else `<field>` naming a file.
        let material = |section: &Value, field: &str| -> Result<Option<Vec<u8>>, ClientError> {
            if let Some(data) = section[format!("{field}-data")].as_str() {
                return base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map(Some)
                    .map_err(|e| problem(format!("{field}-data: {e}")));
            }
            match section[field].as_str() {
                Some(file) => std::fs::read(file)
                    .map(Some)
                    .map_err(|e| problem(format!("{file}: {e}"))),
                None => Ok(None),
            }
        };
        let ca_pem = material(&cluster["cluster"], "certificate-authority")?
            .ok_or_else(|| problem("the cluster has no certificate authority".into()))?;
        let user = &user["user"];
        let credentials = match user["token"].as_str() {
            Some(token) => Credentials::Token(token.to_owned()),
            None => match (
                material(user, "client-certificate")?,
                material(user, "client-key")?,
            ) {
                (Some(cert_pem), Some(key_pem)) => Credentials::Certificate { cert_pem, key_pem },
                _ => {
                    return Err(problem(
                        "the user has neither a token nor a client certificate and key".into(),
                    ))
                }
            },
        };
        Ok(KubeconfigContext {
            server: server.to_owned(),
            ca_pem,
            credentials,
        })
    }
}

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
    /// `BOOKMARK`: only the resourceVersion is news.
    Bookmark,
    /// `ERROR`: the object is a Status (410 Gone when the version expired).
    Error,
}

impl WatchKind {
    fn parse(text: &str) -> Option<WatchKind> {
        Some(match text {
            "ADDED" => WatchKind::Added,
            "MODIFIED" => WatchKind::Modified,
            "DELETED" => WatchKind::Deleted,
            "BOOKMARK" => WatchKind::Bookmark,
            "ERROR" => WatchKind::Error,
            _ => return None,
        })
    }
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchKind,
    /// The object.
    pub object: Value,
}

/// One step of [`Client::follow`], in kube-runtime's manner.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A (re-)list starts: what follows up to [`Event::InitDone`] is the whole collection.
    Init,
    /// An object of the list.
    InitApply(&'a Value),
    /// The list is complete: whatever the follower knew that the list did not hold is gone.
    InitDone,
    /// An object was added or changed.
    Apply(&'a Value),
    /// An object was deleted (its last state).
    Delete(&'a Value),
}

/// Objects per page when [`Client::follow`] lists.
pub const FOLLOW_PAGE: usize = 500;
/// The first pause before a follower tries the server again.
pub const FOLLOW_RETRY_MIN: Duration = Duration::from_millis(250);
/// The longest pause between a follower's attempts.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(3);

/// How [`Client::follow_with`] follows a collection: the page size of its lists, what to do
/// with each [`Event`], and what to do when the server cannot be reached. Either hook stops
/// the follower by answering [`ControlFlow::Break`].
pub struct Follower<H, L> {
    /// Objects per list page.
    pub page: usize,
    /// Takes each event.
    pub handle: H,
    /// Hears of each failed list.
    pub lost: L,
}

impl<'a> Event<'a> {
    /// The object the event carries, if any.
    pub fn object(&self) -> Option<&'a Value> {
        match *self {
            Event::InitApply(object) | Event::Apply(object) | Event::Delete(object) => Some(object),
            Event::Init | Event::InitDone => None,
        }
    }
}

impl Client {
    /// A client for the current context of a kubeconfig.
    pub fn from_kubeconfig(path: &Path) -> Result<Arc<Client>, ClientError> {
        let context = KubeconfigContext::read(path)?;
        Client::build(&context.server, &context.ca_pem, context.credentials).map_err(|problem| {
            ClientError::Setup {
                server: context.server.clone(),
                problem,
            }
        })
    }

    /// A client for `server` (https://host:port) trusting the PEM CA, sending `token`.
    pub fn new(server: &str, ca_pem: &[u8], token: &str) -> Result<Arc<Client>, ClientError> {
        Client::build(server, ca_pem, Credentials::Token(token.to_owned())).map_err(|problem| {
            ClientError::Setup {
                server: server.to_owned(),
                problem,
            }
        })
    }

    fn build(server: &str, ca_pem: &[u8], credentials: Credentials) -> Result<Arc<Client>, String> {
        let address = server
            .strip_prefix("https://")
            .ok_or_else(|| format!("server {server} is not an https:// address"))?
            .trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || address.starts_with('[') => (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port.parse::<u16>()
                    .map_err(|_| format!("bad port in {server}"))?,
            ),
            _ => (address.to_owned(), 443),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("certificate authority: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("certificate authority: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let (mut tls, token) = match credentials {
            Credentials::Token(token) => (tls.with_no_client_auth(), Some(token)),
            Credentials::Certificate { cert_pem, key_pem } => {
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("client key: {e}"))?;
                let tls = tls
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?;
                (tls, None)
            }
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| format!("server name {host}: {e}"))?;
        Ok(Arc::new(Client {
            host,
            port,
            server_name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            token,
            ca_pem: ca_pem.to_vec(),
            connection: Mutex::new(None),
        }))
    }

    /// The cluster CA this client trusts (PEM).
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// `host:port` of the API server.
    pub fn server_address(&self) -> String {
        self.server()
    }

    fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn transport(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ClientError {
        ClientError::Transport {
            server: self.server(),
            source: source.into(),
        }
    }

    async fn sender(&self) -> Result<SendRequest<Body>, ClientError> {
        let mut slot = self.connection.lock().await;
        if let Some(sender) = slot.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|e| self.transport(e))?
        .map_err(|e| self.transport(e))?;
        tcp.set_nodelay(true).ok();
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.transport(e))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "API connection closed");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(|e| self.transport(e))?;
        let mut request =
            Request::builder()
                .method(method)
                .uri(format!("https://{}{}", self.server(), path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .header("accept", "application/json")
            .header("content-type", content_type)
            .header("user-agent", "bramble-agent")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.transport(e))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.transport(e))
    }

    /// Sends one request and returns the decoded JSON answer; error statuses become
    /// [`ClientError::Status`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let response = self.send(method.clone(), path, content_type, bytes).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if !status.is_success() {
            return Err(status_error(method, path, status, &body));
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, "application/json", None)
            .await
    }

    /// POST (create) an object.
    pub async fn create(&self, path: &str, object: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, "application/json", Some(object))
            .await
    }

    /// PUT (replace) an object.
    pub async fn replace(&self, path: &str, object: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, "application/json", Some(object))
            .await
    }

    /// PATCH with a JSON merge patch.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.request(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    /// DELETE with DeleteOptions.
    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, "application/json", Some(options))
            .await
    }

    /// Starts a watch on a collection path from `resource_version`; events arrive on the
    /// returned channel until the server ends the stream, when the channel closes.
    pub async fn watch(
        &self,
        collection: &str,
        resource_version: &str,
    ) -> Result<mpsc::Receiver<WatchEvent>, ClientError> {
        let separator = if collection.contains('?') { '&' } else { '?' };
        let path = format!(
            "{collection}{separator}watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}"
        );
        let response = self
            .send(Method::GET, &path, "application/json", None)
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(status_error(Method::GET, &path, status, &bytes));
        }
        let (events, receiver) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(mut event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let Some(kind) = event["type"].as_str().and_then(WatchKind::parse) else {
                        continue;
                    };
                    let event = WatchEvent {
                        kind,
                        object: event["object"].take(),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    /// Lists `collection`, then watches it from the list's version, feeding every change to
    /// `handle` as an [`Event`]; re-lists (from [`Event::Init`]) when the watch fails or
    /// expires. Runs until the task is dropped.
    pub async fn follow(&self, collection: &str, mut handle: impl FnMut(Event<'_>)) {
        let follower = Follower {
            page: FOLLOW_PAGE,
            handle: |event: Event<'_>| {
                handle(event);
                ControlFlow::Continue(())
            },
            lost: |error: &ClientError| {
                tracing::warn!(%error, collection, "list failed; retrying");
                ControlFlow::Continue(())
            },
        };
        self.follow_with(collection, follower).await
    }

    /// [`Client::follow`] with a say in it: lists in pages of `follower.page`, tells
    /// `follower.lost` each time the server cannot be reached (the follower keeps retrying,
    /// pausing longer each time up to [`FOLLOW_RETRY_MAX`]), and returns as soon as either
    /// hook answers [`ControlFlow::Break`].
    pub async fn follow_with<H, L>(&self, collection: &str, mut follower: Follower<H, L>)
    where
        H: FnMut(Event<'_>) -> ControlFlow<()>,
        L: FnMut(&ClientError) -> ControlFlow<()>,
    {
        let mut pause = FOLLOW_RETRY_MIN;
        loop {
            let version = match self.list_in_pages(collection, &mut follower).await {
                Ok(Some(version)) => version,
                Ok(None) => return,
                Err(error) => {
                    if (follower.lost)(&error).is_break() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(FOLLOW_RETRY_MAX);
                    continue;
                }
            };
            let watched = tokio::time::Instant::now();
            match self.watch(collection, &version).await {
                Ok(mut events) => {
                    while let Some(event) = events.recv().await {
                        let flow = match event.kind {
                            WatchKind::Added | WatchKind::Modified => {
                                (follower.handle)(Event::Apply(&event.object))
                            }
                            WatchKind::Deleted => (follower.handle)(Event::Delete(&event.object)),
                            WatchKind::Bookmark => ControlFlow::Continue(()),
                            // Expired (410 Gone) or refused midway: list again.
                            WatchKind::Error => break,
                        };
                        if flow.is_break() {
                            return;
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, collection, "watch refused; listing again"),
            }
            // A watch that ends at once (410 Gone, a server shutting down) must not turn into a
            // tight list loop; one that ran a while resets the pause.
            if watched.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(FOLLOW_RETRY_MAX);
            } else {
                pause = FOLLOW_RETRY_MIN;
            }
        }
    }

    /// Lists a collection in pages, handing out `Init`, each object and `InitDone`; the
    /// version to watch from, or `None` when the follower has had enough.
    async fn list_in_pages<H, L>(
        &self,
        collection: &str,
        follower: &mut Follower<H, L>,
    ) -> Result<Option<String>, ClientError>
    where
        H: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let separator = if collection.contains('?') { '&' } else { '?' };
        let mut continue_token = String::new();
        let mut version = None;
        loop {
            let mut path = format!("{collection}{separator}limit={}", follower.page.max(1));
            if !continue_token.is_empty() {
                path.push_str("&continue=");
                path.push_str(&crate::query::escape(&continue_token));
            }
            let page = self.get(&path).await?;
            // Later pages show the state when they are read; watching from the first page's
            // version replays whatever changed meanwhile (applying a change twice is harmless).
            if version.is_none() {
                let first = page
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                version = Some(first.unwrap_or("0").to_owned());
                if (follower.handle)(Event::Init).is_break() {
                    return Ok(None);
                }
            }
            for item in page["items"].as_array().into_iter().flatten() {
                if (follower.handle)(Event::InitApply(item)).is_break() {
                    return Ok(None);
                }
            }
            continue_token = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if continue_token.is_empty() {
                if (follower.handle)(Event::InitDone).is_break() {
                    return Ok(None);
                }
                return Ok(version);
            }
        }
    }
}

fn status_error(method: Method, path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ClientError::Status {
        method,
        path: path.to_owned(),
        code: status.as_u16(),
        message,
    }
}

/// Renews `node`'s lease in kube-node-lease, creating it when it is missing (leases live in
/// the master's memory between checkpoints, so a master that lost power comes back without
/// them). A 409 from a racing create counts as success.
pub async fn renew_node_lease(client: &Client, node: &str) -> Result<(), ClientError> {
    let collection = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let spec = serde_json::json!({"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro_time()});
    let renewed = client
        .merge_patch(
            &format!("{collection}/{node}"),
            &serde_json::json!({"spec": spec}),
        )
        .await;
    let result = match renewed {
        Err(e) if e.code() == Some(404) => {
            let lease = serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": spec,
            });
            client.create(collection, &lease).await
        }
        other => other,
    };
    match result {
        Err(error) if error.code() != Some(409) => Err(error),
        _ => Ok(()),
    }
}

/// The strings of a JSON array (non-strings skipped); empty when it is not an array.
pub fn string_array(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An RFC 3339 timestamp of now, to the second, as Kubernetes writes `Time`.
pub fn now_time() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// An RFC 3339 timestamp of now with microseconds, as Kubernetes writes `MicroTime`.
pub fn now_micro_time() -> String {
    let now = jiff::Timestamp::now();
    let micros = now.round(jiff::Unit::Microsecond).unwrap_or(now);
    format!("{:.6}", micros)
}
