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
//! ```

pub mod codec;
mod discovery;
pub mod error;
pub mod node_auth;
mod node_proxy;
pub mod objects;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
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
    /// Bearer tokens accepted, each with the user it authenticates.
    pub tokens: HashMap<String, String>,
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

/// Serves HTTPS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<ApiState>) {
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
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
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
    respond_value(error.code, &error.status(), format)
}

async fn handle(state: Arc<ApiState>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or_default());
    let accept = header_str(&request, header::ACCEPT);
    let format = ResponseFormat::negotiate(
        accept.as_deref(),
        query.get("includeObject").map(String::as_str),
    );
    let response = match route(&state, request, &path, query, format).await {
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

fn authenticate<B>(state: &ApiState, request: &Request<B>) -> Result<String, ApiError> {
    let header = header_str(request, header::AUTHORIZATION).ok_or_else(ApiError::unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    // Compare against every token without stopping early, so timing does not reveal prefixes.
    let mut user = None;
    for (known, name) in &state.tokens {
        if constant_time_eq(known.as_bytes(), token.as_bytes()) {
            user = Some(name.clone());
        }
    }
    user.or_else(|| {
        state
            .nodes
            .node_of(token)
            .map(|node| format!("{}{node}", node_auth::NODE_USER_PREFIX))
    })
    .ok_or_else(ApiError::unauthorized)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Decodes `a=b&c=d` with percent-decoding; later duplicates win.
pub fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
                    .insert(node_auth::CA_PROOF_HEADER, proof);
            }
            return Ok(response);
        }
        ["bramble", "v1", "join"] if request.method() == Method::POST => {
            let bearer = header_str(&request, header::AUTHORIZATION)
                .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
            let body = read_body(request).await?;
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
    let user = authenticate(state, &request)?;
    let node = user
        .strip_prefix(node_auth::NODE_USER_PREFIX)
        .map(str::to_owned);
    let accept = header_str(&request, header::ACCEPT).unwrap_or_default();
    if let Some(response) = discovery::serve(&segments, &accept)? {
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
        let body = read_body(request).await?;
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
        read_body(request).await?
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
        target,
        query,
        format,
        content_type,
        body,
    };
    match method {
        Method::GET => call.get().await,
        Method::POST => call.post().await,
        Method::PUT => call.put().await,
        Method::PATCH => call.patch().await,
        Method::DELETE => call.delete().await,
        other => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
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
        if collected.len() + data.len() <= codec::MAX_BODY_BYTES && discarded == 0 {
            collected.extend_from_slice(&data);
            continue;
        }
        // Too large: keep reading (up to a bound) and discard, so the client, still sending,
        // receives the 413 instead of a reset connection.
        discarded += data.len();
        if discarded > 4 * codec::MAX_BODY_BYTES {
            break;
        }
    }
    if discarded > 0 {
        return Err(ApiError::too_large(codec::MAX_BODY_BYTES));
    }
    Ok(collected.freeze())
}

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
