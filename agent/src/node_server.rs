//! The agent's own HTTPS endpoint (port 10250, like the kubelet's), which the master calls for
//! `kubectl logs` and `kubectl exec`:
//!
//! ```text
//!   GET      /healthz
//!   GET      /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&previous&timestamps&sinceSeconds&limitBytes
//!   GET|POST /exec/{namespace}/{pod}/{container}?command=...&stdin&stdout&stderr&tty   (WebSocket)
//! ```
//!
//! Only the master gets in: clients must present a certificate signed by the cluster CA (the
//! CA in the agent's kubeconfig). The agent's own certificate is self-signed; its SHA-256 is
//! published on the Node (annotation [`protocol::node::CERT_ANNOTATION`]) and the master pins it.
//!
//! Exec speaks the Kubernetes WebSocket stream protocols `v5.channel.k8s.io` and
//! `v4.channel.k8s.io`: every binary message starts with a channel byte (0 stdin, 1 stdout,
//! 2 stderr, 3 the final status, 4 terminal resize, 255 close a stream in v5). The WebSocket
//! framing is tungstenite's, which refuses unmasked client frames and oversized messages. The
//! master relays the upgraded connection byte for byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{
    self,
    protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig},
    Message,
};
use tokio_tungstenite::WebSocketStream;

use crate::pods::PodHandle;
use crate::runtime::containers::{Attempt, AttemptState, ContainerRunner};

/// The port the agent serves on.
pub const AGENT_PORT: u16 = 10250;

type Body = BoxBody<Bytes, std::io::Error>;

/// What the server needs from the rest of the agent.
pub struct NodeServer {
    /// The pods bound here, by UID.
    pub workers: Arc<Mutex<HashMap<String, PodHandle>>>,
    /// Where pod directories live.
    pub pods_dir: PathBuf,
    /// How to exec into containers.
    pub runner: ContainerRunner,
    /// The node's front panel, if it has one (`GET /gpio`, simulated presses).
    pub panel: Option<Arc<crate::panel::NodePanel>>,
}

/// The agent's TLS identity: its certificate and key (PEM) and the certificate's SHA-256.
pub struct AgentIdentity {
    cert_pem: String,
    key_pem: String,
    /// Hex SHA-256 of the certificate (DER), published on the Node.
    pub fingerprint: String,
}

/// Loads the agent's self-signed certificate from `pki_dir`, creating it on first start.
pub fn ensure_identity(
    pki_dir: &Path,
    node_name: &str,
    node_ip: std::net::Ipv4Addr,
) -> std::io::Result<AgentIdentity> {
    let cert_path = pki_dir.join("agent.crt");
    let key_path = pki_dir.join("agent.key");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(pki_dir)?;
        let mut params =
            rcgen::CertificateParams::new(vec![node_name.to_owned(), node_ip.to_string()])
                .map_err(std::io::Error::other)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("bramble-agent-{node_name}"),
        );
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
        let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
        crate::runtime::monitor::write_atomic(&key_path, key.serialize_pem().as_bytes())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        }
        crate::runtime::monitor::write_atomic(&cert_path, cert.pem().as_bytes())?;
    }
    let cert_pem = std::fs::read_to_string(&cert_path)?;
    let key_pem = std::fs::read_to_string(&key_path)?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| std::io::Error::other(format!("{}: {e}", cert_path.display())))?;
    let fingerprint = protocol::join::der_pin(der.as_ref());
    Ok(AgentIdentity {
        cert_pem,
        key_pem,
        fingerprint,
    })
}

/// Serves on `address` until the task is dropped. Clients must hold a certificate signed by
/// `ca_pem`.
pub async fn serve(
    server: Arc<NodeServer>,
    address: SocketAddr,
    identity: &AgentIdentity,
    ca_pem: &[u8],
) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem).flatten() {
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(std::io::Error::other)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(std::io::Error::other)?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving logs and exec for the master");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake refused");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(value: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(value).expect("JSON serializes")))
        .expect("valid response")
}

fn no_panel() -> Response<Body> {
    status_error(
        404,
        "NotFound",
        "this node has no front panel: start its agent with --gpio (e.g. --gpio simulated)",
    )
}

/// Presses a simulated button, named by its pin (`27`) or its action (`kill`), for `hold`
/// (`300ms` by default; `2s` is a long press).
async fn press_button(
    panel: &crate::panel::NodePanel,
    button: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let view = panel.panel().view();
    let pin = button.parse::<u8>().ok().or_else(|| {
        view.buttons
            .iter()
            .find(|b| b.action.to_string() == button)
            .map(|b| b.pin)
    });
    let Some(pin) = pin else {
        let known: Vec<String> = view
            .buttons
            .iter()
            .map(|b| format!("{} (BCM{})", b.action, b.pin))
            .collect();
        return status_error(
            404,
            "NotFound",
            format!("no button {button:?}; this panel has: {}", known.join(", ")),
        );
    };
    let hold = match query.iter().find(|(k, _)| k == "hold") {
        None => Duration::from_millis(300),
        Some((_, text)) => match protocol::chaos::parse_duration(text) {
            Ok(hold) if hold <= Duration::from_secs(10) => hold,
            Ok(_) => return status_error(400, "BadRequest", "hold a button for at most 10s"),
            Err(error) => return status_error(400, "BadRequest", error),
        },
    };
    match panel.panel().press(pin, hold).await {
        Ok(()) => json_response(&json!({"pressed": pin, "heldMillis": hold.as_millis() as u64})),
        Err(error) => status_error(409, "Conflict", error),
    }
}

/// Why a request is refused: HTTP code, Status reason, message.
struct Refusal(u16, &'static str, String);

/// A Kubernetes Status error response.
fn status_error(code: u16, reason: &str, message: impl Into<String>) -> Response<Body> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code,
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(&body).expect("JSON serializes")))
        .expect("valid response")
}

fn number(query: &[(String, String)], name: &str) -> Option<i64> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

impl NodeServer {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let query = protocol::query::pairs(request.uri().query().unwrap_or(""));
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (request.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Response::new(full("ok")),
            (&Method::GET, ["containerLogs", namespace, pod, container]) => {
                match self.attempts(namespace, pod, container) {
                    Ok(attempts) => self.logs(attempts, &query, pod, container).await,
                    Err(Refusal(code, reason, message)) => status_error(code, reason, message),
                }
            }
            (&Method::GET | &Method::POST, ["exec", namespace, pod, container]) => {
                let attempts = match self.attempts(namespace, pod, container) {
                    Ok(attempts) => attempts,
                    Err(Refusal(code, reason, message)) => {
                        return status_error(code, reason, message)
                    }
                };
                self.exec(request, attempts, query, container).await
            }
            (&Method::GET, ["gpio"]) => match &self.panel {
                Some(panel) => json_response(&panel.panel().view()),
                None => no_panel(),
            },
            (&Method::POST, ["gpio", "buttons", button, "press"]) => match &self.panel {
                Some(panel) => press_button(panel, button, &query).await,
                None => no_panel(),
            },
            _ => status_error(404, "NotFound", format!("no route for {path}")),
        }
    }

    /// The attempts of `container` in the pod, oldest first; an error response when the pod is
    /// not here or the container has never been started.
    fn attempts(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<Vec<Attempt>, Refusal> {
        let uid = {
            let workers = self.workers.lock().expect("workers lock");
            workers.iter().find_map(|(uid, handle)| {
                let object = handle.object.borrow();
                let object = object.as_ref()?;
                (object["metadata"]["namespace"] == namespace && object["metadata"]["name"] == pod)
                    .then(|| uid.clone())
            })
        };
        let Some(uid) = uid else {
            return Err(Refusal(
                404,
                "NotFound",
                format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node"),
            ));
        };
        let attempts: Vec<Attempt> = Attempt::all(&self.pods_dir.join(&uid))
            .into_iter()
            .filter(|a| a.name == container)
            .collect();
        if attempts.is_empty() {
            return Err(Refusal(
                400,
                "BadRequest",
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start"),
            ));
        }
        Ok(attempts)
    }

    // ---- logs ------------------------------------------------------------------------------

    async fn logs(
        &self,
        mut attempts: Vec<Attempt>,
        query: &[(String, String)],
        pod: &str,
        container: &str,
    ) -> Response<Body> {
        let attempt = if protocol::query::flag(query, "previous") {
            if attempts.len() < 2 {
                return status_error(
                    400,
                    "BadRequest",
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
            attempts.swap_remove(attempts.len() - 2)
        } else {
            attempts.pop().expect("attempts are not empty")
        };
        let options = LogOptions {
            follow: protocol::query::flag(query, "follow")
                && !protocol::query::flag(query, "previous"),
            timestamps: protocol::query::flag(query, "timestamps"),
            tail_lines: number(query, "tailLines").map(|n| n.max(0) as usize),
            limit_bytes: number(query, "limitBytes").map(|n| n.max(1) as usize),
            since: since(query),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
        tokio::spawn(stream_log(attempt, options, sender));
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|chunk| (Ok::<_, std::io::Error>(Frame::data(chunk)), receiver))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("valid response")
    }

    // ---- exec ------------------------------------------------------------------------------

    async fn exec(
        &self,
        mut request: Request<Incoming>,
        attempts: Vec<Attempt>,
        query: Vec<(String, String)>,
        container: &str,
    ) -> Response<Body> {
        let attempt = attempts.last().expect("attempts are not empty").clone();
        if !matches!(attempt.state(), AttemptState::Running(_)) {
            return status_error(
                400,
                "BadRequest",
                format!("container \"{container}\" is not running"),
            );
        }
        let command: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        if command.is_empty() {
            return status_error(400, "BadRequest", "you must specify at least 1 command");
        }
        let headers = request.headers();
        let is_websocket = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let key = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let offered: Vec<String> = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
            .collect();
        let protocol = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
            .into_iter()
            .find(|p| offered.iter().any(|o| o == p));
        let (Some(key), Some(protocol), true) = (key, protocol, is_websocket) else {
            return status_error(
                400,
                "BadRequest",
                "exec needs a WebSocket upgrade with protocol v5.channel.k8s.io or v4.channel.k8s.io",
            );
        };
        let options = ExecOptions {
            stdin: protocol::query::flag(&query, "stdin"),
            stdout: protocol::query::flag(&query, "stdout"),
            stderr: protocol::query::flag(&query, "stderr"),
            tty: protocol::query::flag(&query, "tty"),
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let runner = self.runner.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    if let Err(error) = run_exec(io, &runner, &attempt, command, options).await {
                        tracing::debug!(%error, "exec session ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%error, "exec upgrade failed"),
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header("Sec-WebSocket-Accept", websocket_accept(&key))
            .header("Sec-WebSocket-Protocol", protocol)
            .body(full(Bytes::new()))
            .expect("valid response")
    }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 section 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
}

fn since(query: &[(String, String)]) -> Option<jiff::Timestamp> {
    if let Some(seconds) = number(query, "sinceSeconds") {
        return jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(seconds.max(0)))
            .ok();
    }
    query
        .iter()
        .find(|(k, _)| k == "sinceTime")
        .and_then(|(_, v)| v.parse().ok())
}

// ---- log files ----------------------------------------------------------------------------

struct LogOptions {
    follow: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    since: Option<jiff::Timestamp>,
}

/// One record of a CRI log file: `<RFC 3339 time> <stream> <P|F> <text>`.
struct LogRecord<'a> {
    time: &'a str,
    full: bool,
    text: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(LogRecord {
        time,
        full: tag != b"P",
        text,
    })
}

/// Turns CRI records into what `kubectl logs` shows, joining partial lines.
struct LogRenderer {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    pending_time: Option<String>,
}

impl LogRenderer {
    /// Appends the rendering of one record to `out`; returns whether a whole line ended.
    fn render(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(record) = parse_record(line) else {
            return false;
        };
        if let Some(since) = self.since {
            if record
                .time
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t < since)
            {
                return false;
            }
        }
        if self.pending_time.is_none() {
            if self.timestamps {
                out.extend_from_slice(record.time.as_bytes());
                out.push(b' ');
            }
            self.pending_time = Some(record.time.to_owned());
        }
        out.extend_from_slice(record.text);
        if record.full {
            out.push(b'\n');
            self.pending_time = None;
        }
        record.full
    }
}

async fn stream_log(
    attempt: Attempt,
    options: LogOptions,
    sender: tokio::sync::mpsc::Sender<Bytes>,
) {
    let path = attempt.log_path();
    let keep = 5;
    let mut files: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| crate::runtime::monitor::rotated(&path, n))
        .filter(|p| p.exists())
        .collect();
    files.push(path.clone());
    let mut renderer = LogRenderer {
        timestamps: options.timestamps,
        since: options.since,
        pending_time: None,
    };
    // What is there now: whole lines, so that tailLines can count them.
    let mut lines: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut current = Vec::new();
    let mut offset = 0u64;
    for file in &files {
        let Ok(bytes) = tokio::fs::read(file).await else {
            continue;
        };
        let complete = bytes.last().map_or(0, |_| {
            bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
        });
        for line in bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if renderer.render(line, &mut current) {
                lines.push_back(std::mem::take(&mut current));
                if let Some(tail) = options.tail_lines {
                    while lines.len() > tail {
                        lines.pop_front();
                    }
                }
            }
        }
        if file == &path {
            offset = complete as u64;
        }
    }
    let mut budget = options.limit_bytes.unwrap_or(usize::MAX);
    let send = |chunk: Vec<u8>, budget: &mut usize| {
        let chunk = if chunk.len() > *budget {
            chunk[..*budget].to_vec()
        } else {
            chunk
        };
        *budget -= chunk.len();
        chunk
    };
    let mut initial = Vec::new();
    for line in lines {
        initial.extend_from_slice(&line);
    }
    if options.tail_lines != Some(0) || !current.is_empty() {
        initial.extend_from_slice(&current);
    }
    let initial = send(initial, &mut budget);
    if !initial.is_empty() && sender.send(Bytes::from(initial)).await.is_err() {
        return;
    }
    if !options.follow {
        return;
    }
    // Follow the current file until the container has exited and everything is sent.
    let mut file: Option<tokio::io::BufReader<tokio::fs::File>> = None;
    let mut identity = None;
    loop {
        if budget == 0 || sender.is_closed() {
            return;
        }
        let exited = matches!(attempt.state(), AttemptState::Exited(_));
        let metadata = tokio::fs::metadata(&path).await.ok();
        let now = metadata.as_ref().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        if now != identity || metadata.as_ref().is_some_and(|m| m.len() < offset) {
            // Rotated (or replaced): read the new file from its start.
            if identity.is_some() {
                offset = 0;
            }
            identity = now;
            file = match tokio::fs::File::open(&path).await {
                Ok(mut opened) => {
                    let _ = opened.seek(std::io::SeekFrom::Start(offset)).await;
                    Some(tokio::io::BufReader::new(opened))
                }
                Err(_) => None,
            };
        }
        let mut sent_any = false;
        if let Some(reader) = file.as_mut() {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if line.last() != Some(&b'\n') => {
                        // A record still being written: read it again next time.
                        let _ = reader.seek(std::io::SeekFrom::Current(-(n as i64))).await;
                        break;
                    }
                    Ok(n) => {
                        offset += n as u64;
                        let mut out = Vec::new();
                        renderer.render(&line[..n - 1], &mut out);
                        let out = send(out, &mut budget);
                        if !out.is_empty() {
                            sent_any = true;
                            if sender.send(Bytes::from(out)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if exited && !sent_any {
            return;
        }
        if !sent_any {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---- exec over WebSocket ------------------------------------------------------------------

struct ExecOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The largest message (and frame) a client may send. Clients send stdin in chunks of a few
/// KiB and resize requests of a few bytes; anything larger is refused, not buffered.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;

/// What the server sends: channel messages, then a normal close.
enum Outgoing {
    Binary(Vec<u8>),
    Close,
}

/// The exec session's WebSocket over the upgraded connection (the handshake was the HTTP
/// exchange): client frames must be masked, messages and frames are limited in size.
async fn exec_socket<S>(io: S) -> WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// The next binary message from the client (channel byte first); `Ok(None)` when the client
/// closed or went away. Pings are answered and text messages skipped on the way.
async fn read_message<S>(stream: &mut S) -> Result<Option<Bytes>, tungstenite::Error>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(payload))) => return Ok(Some(payload)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            )) => return Ok(None),
            Some(Err(error)) => return Err(error),
        }
    }
}

fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

async fn run_exec(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    runner: &ContainerRunner,
    attempt: &Attempt,
    command: Vec<String>,
    options: ExecOptions,
) -> std::io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    let (mut writer, mut reader) = exec_socket(io).await.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Outgoing>(32);
    let write_task = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let sent = match message {
                Outgoing::Binary(payload) => writer.send(Message::binary(payload)).await,
                Outgoing::Close => {
                    let close = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    let _ = writer.send(Message::Close(Some(close))).await;
                    let _ = writer.close().await;
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });

    let mut process = crate::runtime::exec::exec_command(runner, attempt, &command);
    process.kill_on_drop(true);
    let mut terminal = None;
    if options.tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let secondary = std::fs::File::from(pty.slave);
        process
            .stdin(secondary.try_clone()?)
            .stdout(secondary.try_clone()?)
            .stderr(secondary);
        // SAFETY: setsid and the TIOCSCTTY ioctl are plain system calls, fine after fork.
        unsafe {
            process.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        terminal = Some(std::fs::File::from(pty.master));
    } else {
        use std::process::Stdio;
        process
            .stdin(if options.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if options.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if options.stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            });
    }
    let spawned = process.spawn();
    // The command holds our copies of the terminal's secondary end; the child has its own.
    drop(process);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let status = json!({"metadata": {}, "status": "Failure",
                "message": format!("cannot start the exec helper: {error}"), "reason": "InternalError"});
            let mut payload = vec![ERROR];
            payload.extend_from_slice(&serde_json::to_vec(&status).expect("JSON serializes"));
            let _ = out_tx.send(Outgoing::Binary(payload)).await;
            let _ = out_tx.send(Outgoing::Close).await;
            let _ = write_task.await;
            return Ok(());
        }
    };

    // Output: stdout and stderr (or the terminal) to their channels.
    let mut pumps = Vec::new();
    let pump = |mut source: Box<dyn tokio::io::AsyncRead + Send + Unpin>, channel: u8| {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match source.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut payload = Vec::with_capacity(n + 1);
                        payload.push(channel);
                        payload.extend_from_slice(&buffer[..n]);
                        if out_tx.send(Outgoing::Binary(payload)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let mut terminal_writer = None;
    let mut terminal_fd = None;
    if let Some(primary) = terminal {
        use std::os::fd::AsRawFd;
        terminal_fd = Some(primary.as_raw_fd());
        let reader = tokio::fs::File::from_std(primary.try_clone()?);
        terminal_writer = Some(tokio::fs::File::from_std(primary));
        pumps.push(pump(Box::new(reader), STDOUT));
    }
    if let Some(stdout) = child.stdout.take() {
        pumps.push(pump(Box::new(stdout), STDOUT));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(pump(Box::new(stderr), STDERR));
    }
    let mut stdin = child.stdin.take();

    // Input: stdin, resizes and close from the client, until the process ends.
    let input = tokio::spawn(async move {
        loop {
            let payload = match read_message(&mut reader).await {
                Ok(Some(payload)) => payload,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "exec client broke the WebSocket protocol");
                    break;
                }
            };
            let Some((&channel, data)) = payload.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(writer) = terminal_writer.as_mut() {
                        let _ = writer.write_all(data).await;
                    } else if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let (Some(fd), Ok(size)) =
                        (terminal_fd, serde_json::from_slice::<Value>(data))
                    {
                        let size = libc::winsize {
                            ws_row: size["Height"].as_u64().unwrap_or(24) as u16,
                            ws_col: size["Width"].as_u64().unwrap_or(80) as u16,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
                        unsafe {
                            libc::ioctl(fd, libc::TIOCSWINSZ, &size);
                        }
                    }
                }
                CLOSE if data.first() == Some(&STDIN) => {
                    stdin = None;
                    if let Some(mut writer) = terminal_writer.take() {
                        // End of input on a terminal: send ^D.
                        let _ = writer.write_all(&[4]).await;
                    }
                }
                _ => {}
            }
        }
    });
    let status = child.wait().await?;
    let code = status
        .code()
        .or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            status.signal().map(|s| 128 + s)
        })
        .unwrap_or(255);
    for pump in pumps {
        if options.tty {
            // The terminal stays open while we hold it; give the output a moment to drain.
            let _ = tokio::time::timeout(Duration::from_millis(200), pump).await;
        } else {
            let _ = pump.await;
        }
    }
    input.abort();
    let mut payload = vec![ERROR];
    payload.extend_from_slice(
        &serde_json::to_vec(&exit_status(&command, code)).expect("JSON serializes"),
    );
    let _ = out_tx.send(Outgoing::Binary(payload)).await;
    let _ = out_tx.send(Outgoing::Close).await;
    drop(out_tx);
    let _ = write_task.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_the_rfc_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn partial_records_join_into_one_line() {
        let mut renderer = LogRenderer {
            timestamps: true,
            since: None,
            pending_time: None,
        };
        let mut out = Vec::new();
        assert!(!renderer.render(b"2026-01-01T00:00:00Z stdout P hel", &mut out));
        assert!(renderer.render(b"2026-01-01T00:00:01Z stdout F lo", &mut out));
        assert!(renderer.render(b"2026-01-01T00:00:02Z stderr F ", &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-01-01T00:00:00Z hello\n2026-01-01T00:00:02Z \n"
        );
    }

    /// A frame as a client puts it on the wire: masked with `mask`, or unmasked.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut wire = vec![if fin { 0x80 } else { 0 } | opcode];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => wire.push(masked | n as u8),
            n if n <= 0xffff => {
                wire.push(masked | 126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                wire.push(masked | 127);
                wire.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(mask) => {
                wire.extend_from_slice(&mask);
                wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            None => wire.extend_from_slice(payload),
        }
        wire
    }

    /// The server's side of an exec socket that has received `wire` and then end of file.
    async fn server_reading(wire: Vec<u8>) -> WebSocketStream<tokio::io::DuplexStream> {
        let (mut client, server) = tokio::io::duplex(wire.len() + 1024);
        client.write_all(&wire).await.unwrap();
        drop(client);
        exec_socket(server).await
    }

    #[tokio::test]
    async fn masked_fragmented_messages_are_read_whole() {
        let mask = [1u8, 2, 3, 4];
        let mut wire = client_frame(false, 0x2, b"\x00ab", Some(mask));
        wire.extend(client_frame(true, 0x0, b"cd", Some(mask)));
        let mut reader = server_reading(wire).await;
        let payload = read_message(&mut reader).await.unwrap().unwrap();
        assert_eq!(payload, &b"\x00abcd"[..]);
        assert!(read_message(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unmasked_client_frames_are_refused() {
        let wire = client_frame(true, 0x2, b"\x00ls\n", None);
        let mut reader = server_reading(wire).await;
        let error = read_message(&mut reader).await.unwrap_err();
        assert!(
            matches!(
                error,
                tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::UnmaskedFrameFromClient
                )
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn fragments_may_not_add_up_past_the_limit() {
        // Each fragment is small; together they pass the limit.
        let mask = [9u8, 8, 7, 6];
        let part = vec![b'x'; MAX_CLIENT_MESSAGE / 4];
        let mut wire = client_frame(false, 0x2, &part, Some(mask));
        for _ in 0..4 {
            wire.extend(client_frame(false, 0x0, &part, Some(mask)));
        }
        wire.extend(client_frame(true, 0x0, b"end", Some(mask)));
        let mut reader = server_reading(wire).await;
        let error = read_message(&mut reader).await.unwrap_err();
        assert!(matches!(error, tungstenite::Error::Capacity(_)), "{error}");
    }

    #[tokio::test]
    async fn one_frame_past_the_limit_is_refused() {
        let wire = client_frame(
            true,
            0x2,
            &vec![0u8; MAX_CLIENT_MESSAGE + 1],
            Some([1, 1, 1, 1]),
        );
        let mut reader = server_reading(wire).await;
        assert!(read_message(&mut reader).await.is_err());
    }

    async fn body_json(response: Response<Body>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn an_overlong_hold_is_refused_not_a_panic() {
        let config =
            crate::panel::PanelConfig::node_kit(hardware::backend::BackendChoice::Simulated);
        let (panel, _presses) = crate::panel::Panel::start(&config).unwrap().unwrap();
        let panel = crate::panel::NodePanel::new(panel);
        for hold in ["99999999999999999999h", "1e400", "11s"] {
            let query = protocol::query::pairs(&format!("hold={hold}"));
            let response = press_button(&panel, "kill", &query).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "hold={hold}");
            assert_eq!(body_json(response).await["reason"], "BadRequest");
        }
    }

    #[test]
    fn failures_carry_the_exit_code() {
        let status = exit_status(&["false".into()], 3);
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }
}
