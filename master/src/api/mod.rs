//! The HTTPS API server: connections, authentication, and routing of Kubernetes-style paths to handlers.
//!
//! Paths served:
//!
//! ```text
//!   /version /healthz /livez /readyz                       public
//!   /api /api/v1 /apis /apis/{group}[/{version}]           discovery (legacy and aggregated v2)
//!   /openapi/v3[/{api/v1 | apis/{group}/{version}}]        OpenAPI v3, enough for kubectl validation
//!   /api/v1[/namespaces/{ns}]/{plural}[/{name}[/{sub}]]    core objects
//!   /apis/{group}/{version}[/namespaces/{ns}]/{plural}...  grouped objects
//!   /api/v1/namespaces/{ns}/pods/{name}/{log|exec}         relayed to the pod's agent
//!   /bramble/v1/ca.crt  /bramble/v1/join                   how agents join (see node_auth)
//!   /.well-known/openid-configuration  /openid/v1/jwks     the service-account issuer
//! ```

pub mod codec;
mod discovery;
pub mod error;
pub mod eviction;
pub mod node_auth;
mod node_proxy;
pub mod objects;
mod reviews;
mod watch;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{watch as standing, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::resources::{self, Resource};
use crate::store::Store;
use codec::ResponseFormat;
use error::ApiError;

/// A response body: whole, or streamed for watches.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// What every request handler shares.
pub struct ApiState {
    /// The object store.
    pub store: Arc<Store>,
    /// Credentials accepted besides node tokens (see `auth`).
    pub auth: crate::auth::AuthState,
    /// The RBAC authorizer.
    pub rbac: crate::rbac::Authorizer,
    /// Cluster settings handlers need (service ranges).
    pub cluster: crate::ClusterSettings,
    /// Serialises cluster IP and node port allocation.
    pub allocation: std::sync::Mutex<()>,
    /// Serialises creates from admission to commit, so quota checks see every earlier create.
    pub admission: std::sync::Mutex<()>,
    /// Usage reported by nodes (the metrics API).
    pub metrics: Arc<crate::metrics::MetricsRegistry>,
    /// The master's credentials towards agents, for logs and exec.
    pub node_client: Option<node_proxy::NodeClient>,
    /// The join token and the nodes' own tokens.
    pub nodes: node_auth::NodeCredentials,
}

pub use node_proxy::NodeClient;

/// What one peer can hold of the server. Connections are guests until a request on them
/// authenticates: handshaking and unauthenticated connections share a small pool whose oldest
/// member is closed to make room for a new one, so idle or slow strangers cannot starve
/// clients with credentials, whose connections count against a pool of their own.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a request's headers (HTTP/1.1), also how long a kept-alive connection may
    /// idle; upstream's `ReadHeaderTimeout` is 32 s too.
    pub header_read_timeout: Duration,
    /// How long a connection may stay unauthenticated.
    pub guest_lifetime: Duration,
    /// Connections handshaking or not yet authenticated.
    pub guest_connections: usize,
    /// Connections that authenticated.
    pub member_connections: usize,
    /// Largest body of a request without credentials (the join request).
    pub guest_body_bytes: usize,
    /// Unauthenticated requests reading a body at once.
    pub guest_bodies: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            guest_lifetime: Duration::from_secs(60),
            guest_connections: 128,
            member_connections: 1024,
            guest_body_bytes: 16 * 1024,
            guest_bodies: 16,
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Guest,
    Member,
    Evicted,
}

/// The guest pool: connections in arrival order, the oldest evicted when a new one needs room.
struct Guests {
    limit: usize,
    queue: std::sync::Mutex<VecDeque<(u64, Arc<standing::Sender<Standing>>)>>,
    next_id: AtomicU64,
}

impl Guests {
    fn admit(self: &Arc<Self>) -> Peer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let standing = Arc::new(standing::Sender::new(Standing::Guest));
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while queue.len() >= self.limit.max(1) {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.send_replace(Standing::Evicted);
            }
        }
        queue.push_back((id, standing.clone()));
        Peer {
            id,
            guests: self.clone(),
            standing,
            membership: std::sync::Mutex::new(None),
        }
    }

    fn leave(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.retain(|(queued, _)| *queued != id);
    }
}

/// One connection's place in the pools.
pub struct Peer {
    id: u64,
    guests: Arc<Guests>,
    standing: Arc<standing::Sender<Standing>>,
    membership: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

impl Peer {
    /// Moves an authenticated connection out of the guest pool into the members' pool; 429
    /// when that is full (the connection stays a guest).
    fn promote(&self, members: &Arc<Semaphore>) -> Result<(), ApiError> {
        let mut membership = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        if membership.is_some() {
            return Ok(());
        }
        let permit = members.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                429,
                "TooManyRequests",
                "too many connections, please try again later",
            )
        })?;
        *membership = Some(permit);
        self.guests.leave(self.id);
        self.standing.send_if_modified(|standing| {
            let guest = *standing == Standing::Guest;
            if guest {
                *standing = Standing::Member;
            }
            guest
        });
        Ok(())
    }

    /// Completes when the connection must close: evicted, or a guest for too long.
    async fn closing(&self, lifetime: Duration) -> &'static str {
        let mut standing = self.standing.subscribe();
        let deadline = tokio::time::Instant::now() + lifetime;
        loop {
            let now = *standing.borrow_and_update();
            match now {
                Standing::Member => std::future::pending::<()>().await,
                Standing::Evicted => return "closed to make room for another connection",
                Standing::Guest => {}
            }
            tokio::select! {
                _ = standing.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return "unauthenticated for too long",
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.guests.leave(self.id);
    }
}

/// What the connections share besides the API state.
struct Gate {
    limits: ServeLimits,
    guests: Arc<Guests>,
    members: Arc<Semaphore>,
    guest_bodies: Arc<Semaphore>,
}

/// Serves HTTPS on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<ApiState>,
    limits: ServeLimits,
) {
    let gate = Arc::new(Gate {
        guests: Arc::new(Guests {
            limit: limits.guest_connections,
            queue: std::sync::Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }),
        members: Arc::new(Semaphore::new(limits.member_connections)),
        guest_bodies: Arc::new(Semaphore::new(limits.guest_bodies)),
        limits,
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors must not end the server; wait and go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let connection = Arc::new(gate.guests.admit());
            let limits = &gate.limits;
            let serving = async {
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                // A client certificate, verified in the handshake, names a user for every
                // request on the connection that carries no bearer token.
                let peer_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| state.auth.client_certs.identity_of(chain))
                    .map(Arc::new);
                let service = {
                    let connection = connection.clone();
                    let gate = gate.clone();
                    service_fn(move |request| {
                        let state = state.clone();
                        let connection = connection.clone();
                        let gate = gate.clone();
                        let peer_user = peer_user.clone();
                        async move {
                            let peer = Client {
                                connection: &connection,
                                user: peer_user.as_deref(),
                            };
                            Ok::<_, Infallible>(handle(state, &gate, peer, request).await)
                        }
                    })
                };
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout);
                builder.http2().timer(TokioTimer::new());
                if let Err(error) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            };
            tokio::select! {
                _ = serving => {}
                why = connection.closing(limits.guest_lifetime) => {
                    tracing::debug!(%peer, why, "connection closed");
                }
            }
        });
    }
}

/// A whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response with a ready body.
pub fn respond(code: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// A JSON (or YAML) response.
pub fn respond_value(code: u16, value: &Value, format: ResponseFormat) -> Response<Body> {
    respond(code, format.content_type(), codec::encode(value, format))
}

fn error_response(error: &ApiError, format: ResponseFormat) -> Response<Body> {
    let format = match format {
        ResponseFormat::Yaml => ResponseFormat::Yaml,
        _ => ResponseFormat::Json,
    };
    let mut response = respond_value(error.code, &error.status(), format);
    let retry_after = error
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_i64())
        .filter(|s| *s > 0);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("Retry-After", http::HeaderValue::from(seconds));
    }
    response
}

/// The connection a request came on, and the user its client certificate names.
#[derive(Clone, Copy)]
struct Client<'a> {
    connection: &'a Peer,
    user: Option<&'a crate::auth::client_cert::ClientIdentity>,
}

async fn handle(
    state: Arc<ApiState>,
    gate: &Gate,
    client: Client<'_>,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or_default());
    let accept = header_str(&request, header::ACCEPT);
    let format = ResponseFormat::negotiate(
        accept.as_deref(),
        query.get("includeObject").map(String::as_str),
    );
    let response = match route(&state, gate, client, request, &path, query, format).await {
        Ok(response) => response,
        Err(error) => error_response(&error, format),
    };
    tracing::debug!(
        %method, %path, status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn header_str<B>(request: &Request<B>, name: header::HeaderName) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Decodes `a=b&c=d` with percent-decoding; later duplicates win.
pub fn parse_query(query: &str) -> HashMap<String, String> {
    protocol::query::map(query)
}

fn percent_decode(text: &str) -> String {
    protocol::query::decode_segment(text)
}

/// What a resource path names.
#[derive(Debug)]
pub struct Target {
    /// The resource.
    pub resource: &'static Resource,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource, if any.
    pub subresource: Option<String>,
}

fn parse_target(segments: &[&str]) -> Result<Option<Target>, ApiError> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let find = |plural: &str| resources::find(group, version, plural);
    let target = match rest {
        ["namespaces", namespace, plural, tail @ ..]
            if find(plural).is_some_and(|r| r.namespaced) =>
        {
            let resource = find(plural).expect("checked above");
            Target {
                resource,
                namespace: Some((*namespace).to_owned()),
                name: tail.first().map(|s| (*s).to_owned()),
                subresource: tail.get(1).map(|s| (*s).to_owned()),
            }
        }
        [plural, tail @ ..] => {
            let Some(resource) = find(plural) else {
                return Ok(None);
            };
            Target {
                resource,
                namespace: None,
                name: tail.first().map(|s| (*s).to_owned()),
                subresource: tail.get(1).map(|s| (*s).to_owned()),
            }
        }
        [] => return Ok(None),
    };
    let depth = rest.len();
    let max_depth = if target.namespace.is_some() { 5 } else { 3 };
    if depth > max_depth {
        return Ok(None);
    }
    Ok(Some(target))
}

async fn route(
    state: &Arc<ApiState>,
    gate: &Gate,
    client: Client<'_>,
    request: Request<Incoming>,
    path: &str,
    query: HashMap<String, String>,
    format: ResponseFormat,
) -> Result<Response<Body>, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => {
            return Ok(respond(200, "text/plain", b"ok".to_vec()))
        }
        ["version"] => {
            return Ok(respond_value(
                200,
                &discovery::version(),
                ResponseFormat::Json,
            ))
        }
        ["bramble", "v1", "ca.crt"] if request.method() == Method::GET => {
            let mut response = respond(
                200,
                "application/x-pem-file",
                node_auth::ca_certificate(state),
            );
            if let Ok(proof) = http::HeaderValue::from_str(&state.nodes.ca_proof()) {
                response
                    .headers_mut()
                    .insert(protocol::join::CA_PROOF_HEADER, proof);
            }
            return Ok(response);
        }
        ["bramble", "v1", "join"] if request.method() == Method::POST => {
            let bearer = header_str(&request, header::AUTHORIZATION)
                .and_then(|h| crate::auth::bearer_token(&h).map(str::to_owned));
            // Without credentials: a small body, and only a few read at once.
            let Ok(_reading) = gate.guest_bodies.clone().try_acquire_owned() else {
                return Err(ApiError::new(
                    429,
                    "TooManyRequests",
                    "too many join requests, please try again later",
                ));
            };
            let body = read_body(request, gate.limits.guest_body_bytes).await?;
            let state = state.clone();
            let kubeconfig =
                objects::blocking(move || node_auth::join(&state, bearer.as_deref(), &body))
                    .await?;
            return Ok(respond_value(
                200,
                &node_auth::join_answer(kubeconfig),
                ResponseFormat::Json,
            ));
        }
        _ => {}
    }
    let user = crate::auth::authenticate(state, &request, client.user)?;
    client.connection.promote(&gate.members)?;
    let user = crate::auth::impersonation::apply(state, &request, user)?;
    let node = user.node().map(str::to_owned);
    if node.is_none() {
        let attributes = crate::auth::RequestAttributes::of(request.method(), path, &query);
        if let crate::rbac::Decision::Deny { reason } = state.rbac.authorize(&user, &attributes) {
            return Err(crate::rbac::forbidden(&user, &attributes, &reason));
        }
    }
    let user = Arc::new(user);
    let accept = header_str(&request, header::ACCEPT).unwrap_or_default();
    if let Some(response) = discovery::serve(&segments, &accept)? {
        return Ok(response);
    }
    if let Some(response) = service_account_issuer(state, &segments, request.method()) {
        return Ok(response);
    }
    if let ["api", "v1", "nodes", name, "proxy", rest @ ..] = segments.as_slice() {
        if node.is_some() {
            return Err(ApiError::forbidden("nodes do not proxy to other nodes"));
        }
        // Clients may send the path as one escaped segment (`gpio%2Fbuttons%2F...`).
        let path: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
        return node_proxy::proxy(state, name, &path.join("/"), request).await;
    }
    if let ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] = segments.as_slice() {
        let method = request.method().clone();
        if let Some(node) = &node {
            node_auth::may_report_usage(node, &method, rest)?;
        }
        let body = read_body(request, codec::MAX_BODY_BYTES).await?;
        let state = state.clone();
        let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
        let value = objects::blocking(move || {
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            crate::metrics::serve(&state, &method, &rest, &query, &body)
        })
        .await?;
        return Ok(respond_value(200, &value, ResponseFormat::Json));
    }
    let target = parse_target(&segments)?.ok_or_else(|| ApiError::no_route(path))?;
    let method = request.method().clone();
    if target.resource.kind == "Pod" && target.name.is_some() {
        if node.is_some() && matches!(target.subresource.as_deref(), Some("log" | "exec")) {
            return Err(ApiError::forbidden(
                "nodes do not read logs or exec into pods",
            ));
        }
        match (&method, target.subresource.as_deref()) {
            (&Method::GET, Some("log")) => return node_proxy::logs(state, &target, &query).await,
            (&Method::GET | &Method::POST, Some("exec")) => {
                return node_proxy::exec(state, &target, &query, request).await
            }
            _ => {}
        }
    }
    let content_type = header_str(&request, header::CONTENT_TYPE);
    let body = if method == Method::GET {
        Bytes::new()
    } else {
        read_body(request, codec::MAX_BODY_BYTES).await?
    };
    if let Some(node) = &node {
        let watching = query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1" || w.is_empty());
        node_auth::authorize(
            state,
            node_auth::NodeRequest {
                node,
                method: &method,
                target: &target,
                body: &body,
                watching,
            },
        )
        .await?;
    }
    let call = objects::Call {
        state: state.clone(),
        user,
        target,
        query,
        format,
        content_type,
        body,
    };
    if call.target.resource.is_review() {
        return match method {
            Method::POST => reviews::create(call).await,
            other => Err(ApiError::method_not_allowed(other.as_str())),
        };
    }
    match method {
        Method::GET => call.get().await,
        Method::POST => call.post().await,
        Method::PUT => call.put().await,
        Method::PATCH => call.patch().await,
        Method::DELETE => call.delete().await,
        other => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

/// The service-account issuer's OpenID discovery documents (upstream's `openidmetadata`),
/// which let others verify service-account tokens: `/.well-known/openid-configuration` and
/// `/openid/v1/jwks`.
fn service_account_issuer(
    state: &ApiState,
    segments: &[&str],
    method: &Method,
) -> Option<Response<Body>> {
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    let issuer = &state.auth.service_accounts;
    let (document, content_type) = match segments {
        [".well-known", "openid-configuration"] => {
            (issuer.openid_configuration(), "application/json")
        }
        ["openid", "v1", "jwks"] => (issuer.jwks(), "application/jwk-set+json"),
        _ => return None,
    };
    let mut response = respond(
        200,
        content_type,
        serde_json::to_vec(&document).unwrap_or_default(),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=3600"),
    );
    Some(response)
}

/// The whole body, at most `limit` bytes held: 413 beyond.
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = request.into_body();
    let mut collected = bytes::BytesMut::new();
    let mut discarded = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(format!("cannot read the request body: {error}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() <= limit && discarded == 0 {
            collected.extend_from_slice(&data);
            continue;
        }
        // Too large: drop what was read, and keep reading (up to a bound) and discarding, so
        // the client, still sending, receives the 413 instead of a reset connection.
        collected = bytes::BytesMut::new();
        discarded += data.len();
        if discarded > 4 * limit {
            break;
        }
    }
    if discarded > 0 {
        return Err(ApiError::too_large(limit));
    }
    Ok(collected.freeze())
}

#[cfg(test)]
mod server_tests;

#[cfg(test)]
mod auth_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+(a)&limit=5&watch");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["watch"], "");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn paths_name_targets() {
        let t = parse_target(&[
            "apis",
            "apps",
            "v1",
            "namespaces",
            "default",
            "deployments",
            "web",
            "scale",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(t.resource.kind, "Deployment");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        let ns = parse_target(&["api", "v1", "namespaces", "kube-system"])
            .unwrap()
            .unwrap();
        assert_eq!(ns.resource.kind, "Namespace");
        assert_eq!(ns.name.as_deref(), Some("kube-system"));
        assert!(parse_target(&["api", "v1", "widgets"]).unwrap().is_none());
        assert!(parse_target(&["api", "v1", "pods"])
            .unwrap()
            .unwrap()
            .namespace
            .is_none());
    }
}
