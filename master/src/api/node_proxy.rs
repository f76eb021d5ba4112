//! `pods/{name}/log` and `pods/{name}/exec`: the master finds the pod's node and relays the
//! request to that node's agent (`https://{InternalIP}:{kubeletEndpoint}`), like the
//! kube-apiserver relays to the kubelet.
//!
//! The master proves itself with a client certificate signed by the cluster CA; it trusts the
//! agent's self-signed certificate only if its SHA-256 matches the one the agent published on
//! its Node (annotation `bramble.dev/agent-cert-sha256`). Exec is a WebSocket upgrade: the
//! master forwards the upgrade request, and once the agent switches protocols it copies bytes
//! both ways without looking at them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use protocol::join::PinnedServer;
use protocol::node::CERT_ANNOTATION;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use super::error::ApiError;
use super::objects::blocking;
use super::{ApiState, Body, Target};

/// The master's credentials towards agents.
pub struct NodeClient {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl NodeClient {
    /// From the PEM client certificate and key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<NodeClient, String> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("agent client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("agent client key: {e}"))?;
        Ok(NodeClient { certs, key })
    }

    fn tls(&self, fingerprint: &str) -> Result<rustls::ClientConfig, ApiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedServer::pinned(fingerprint, provider.clone()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::internal(format!("TLS to the agent: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| ApiError::internal(format!("TLS to the agent: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A node's agent: its address and the SHA-256 of its certificate.
struct Endpoint {
    address: String,
    fingerprint: String,
}

/// Where a pod's container runs: its node's agent, and the container.
struct Destination {
    endpoint: Endpoint,
    namespace: String,
    pod: String,
    container: String,
}

async fn destination(
    state: &Arc<ApiState>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Destination, ApiError> {
    let namespace = target.namespace.clone().unwrap_or_else(|| "default".into());
    let name = target.name.clone().unwrap_or_default();
    let store = state.store.clone();
    let resource = target.resource;
    let (pod_namespace, pod_name) = (namespace.clone(), name.clone());
    let pod = blocking(move || {
        store
            .get(&resource.storage_key(), &pod_namespace, &pod_name)
            .map_err(|e| ApiError::from_store(e, resource, &pod_name))?
            .ok_or_else(|| ApiError::not_found(resource, &pod_name))
    })
    .await?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(container) if containers.contains(container) => container.clone(),
        Some(container) => {
            return Err(ApiError::bad_request(format!(
                "container {container} is not valid for pod {name}"
            )))
        }
        None => {
            let regular: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match regular.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        regular.join(" ")
                    )))
                }
            }
        }
    };
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled yet"
        )));
    };
    Ok(Destination {
        endpoint: node_endpoint(state, node_name).await?,
        namespace,
        pod: name,
        container,
    })
}

/// The agent of `node_name`, from its Node object.
async fn node_endpoint(state: &Arc<ApiState>, node_name: &str) -> Result<Endpoint, ApiError> {
    let store = state.store.clone();
    let node_key = crate::resources::find("", "v1", "nodes")
        .expect("nodes are a resource")
        .storage_key();
    let node_name_owned = node_name.to_owned();
    let node: Option<Value> = blocking(move || {
        store
            .get(&node_key, "", &node_name_owned)
            .map_err(|e| ApiError::internal_logged("reading the node failed", &e))
    })
    .await?;
    let unavailable = |why: String| ApiError::new(503, "ServiceUnavailable", why);
    let node = node.ok_or_else(|| unavailable(format!("node {node_name} no longer exists")))?;
    let ip = protocol::node::internal_ip(&node)
        .ok_or_else(|| unavailable(format!("node {node_name} has no InternalIP")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            unavailable(format!(
                "node {node_name} does not serve logs and exec (a simulated node?)"
            ))
        })?;
    let fingerprint = node["metadata"]["annotations"][CERT_ANNOTATION]
        .as_str()
        .ok_or_else(|| {
            unavailable(format!(
                "node {node_name} has not published its agent certificate"
            ))
        })?
        .to_owned();
    let address = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Ok(Endpoint {
        address,
        fingerprint,
    })
}

async fn connect<B>(
    client: &NodeClient,
    destination: &Endpoint,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<B>,
        tokio::task::JoinHandle<()>,
    ),
    ApiError,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unreachable = |why: String| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("cannot reach the agent at {}: {why}", destination.address),
        )
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&destination.address),
    )
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client.tls(&destination.fingerprint)?));
    let server_name = ServerName::try_from("bramble-agent").expect("valid name");
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok((sender, driver))
}

/// Turns an agent's error answer into the same error from the master.
async fn agent_error(response: Response<Incoming>) -> ApiError {
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    match code {
        404 => ApiError::new(404, "NotFound", message),
        400 => ApiError::bad_request(message),
        _ => ApiError::new(503, "ServiceUnavailable", message),
    }
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Serves `GET pods/{name}/log` by streaming the agent's answer.
pub async fn logs(
    state: &Arc<ApiState>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let client = state
        .node_client
        .as_ref()
        .ok_or_else(|| ApiError::internal("the master has no credentials for agents"))?;
    let destination = destination(state, target, query).await?;
    let (mut sender, _driver) = connect(client, &destination.endpoint).await?;
    let mut path = format!(
        "/containerLogs/{}/{}/{}?",
        encode(&destination.namespace),
        encode(&destination.pod),
        encode(&destination.container)
    );
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(value) = query.get(key) {
            path.push_str(&format!("{key}={}&", encode(value)));
        }
    }
    let request = Request::get(path)
        .header(header::HOST, "bramble-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::bad_request(format!("cannot relay this request: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the agent did not answer: {e}"),
        )
    })?;
    if !response.status().is_success() {
        return Err(agent_error(response).await);
    }
    let body = response.into_body().map_err(std::io::Error::other).boxed();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("valid response"))
}

/// Serves `pods/{name}/exec`: forwards the WebSocket upgrade and relays the connection.
pub async fn exec(
    state: &Arc<ApiState>,
    target: &Target,
    query: &HashMap<String, String>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let client = state
        .node_client
        .as_ref()
        .ok_or_else(|| ApiError::internal("the master has no credentials for agents"))?;
    let is_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Err(ApiError::bad_request(
            "exec needs a WebSocket upgrade (kubectl 1.30 or newer, or a client speaking v4.channel.k8s.io)",
        ));
    }
    let destination = destination(state, target, query).await?;
    let (mut sender, _driver) = connect(client, &destination.endpoint).await?;
    let mut path = format!(
        "/exec/{}/{}/{}?",
        encode(&destination.namespace),
        encode(&destination.pod),
        encode(&destination.container)
    );
    // Commands repeat the key, so take them from the raw query.
    for pair in request.uri().query().unwrap_or("").split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if ["command", "stdin", "stdout", "stderr", "tty"].contains(&key) {
            path.push_str(pair);
            path.push('&');
        }
    }
    let mut forwarded = Request::builder()
        .method(request.method().clone())
        .uri(path)
        .header(header::HOST, "bramble-agent");
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        for value in request.headers().get_all(&name) {
            forwarded = forwarded.header(&name, value);
        }
    }
    let forwarded = forwarded
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::bad_request(format!("cannot relay this request: {e}")))?;
    let mut response = sender.send_request(forwarded).await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the agent did not answer: {e}"),
        )
    })?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(response).await);
    }
    let mut reply = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in response.headers() {
        reply = reply.header(name, value);
    }
    let agent_side = hyper::upgrade::on(&mut response);
    let client_side = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let (Ok(agent), Ok(client)) = (agent_side.await, client_side.await) else {
            return;
        };
        let mut agent = TokioIo::new(agent);
        let mut client = TokioIo::new(client);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
    });
    Ok(reply
        .body(super::full(Bytes::new()))
        .expect("valid response"))
}

/// Serves `nodes/{name}/proxy/{path}`: relays the request to the node's agent, as the
/// kube-apiserver relays to the kubelet (`kubectl get --raw /api/v1/nodes/pi-1/proxy/gpio`).
pub async fn proxy(
    state: &Arc<ApiState>,
    node: &str,
    path: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let client = state
        .node_client
        .as_ref()
        .ok_or_else(|| ApiError::internal("the master has no credentials for agents"))?;
    let endpoint = node_endpoint(state, node).await?;
    let method = request.method().clone();
    let uri = match request.uri().query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let body = super::read_body(request, super::codec::MAX_BODY_BYTES).await?;
    let (mut sender, _driver) = connect(client, &endpoint).await?;
    let mut forwarded = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "bramble-agent");
    if let Some(content_type) = content_type {
        forwarded = forwarded.header(header::CONTENT_TYPE, content_type);
    }
    let forwarded = forwarded
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::bad_request(format!("cannot relay this request: {e}")))?;
    let response = sender.send_request(forwarded).await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the agent did not answer: {e}"),
        )
    })?;
    let mut reply = Response::builder().status(response.status());
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = response.headers().get(&name) {
            reply = reply.header(name, value);
        }
    }
    let body = response.into_body().map_err(std::io::Error::other).boxed();
    Ok(reply.body(body).expect("valid response"))
}
