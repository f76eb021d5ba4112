//! How agents join and what a node may do.
//!
//! Joining: the master keeps a join token, `bramble1.<SHA-256 of the CA certificate>.<secret>`
//! (DIR/join.token). A new agent fetches the CA from `GET /bramble/v1/ca.crt` (public), checks it
//! against the hash in the token, then calls `POST /bramble/v1/join` with the secret as bearer
//! token and its node name. The master answers with a kubeconfig holding a token of the node's
//! own, user `system:node:<name>`; tokens live in DIR/node-tokens (a re-join replaces the old).
//!
//! Authorization, like upstream's Node authorizer: a node may change only its own Node (and its
//! status), its own Lease, the status of pods bound to it, delete those pods, create events and
//! report its own usage; it may read config maps, secrets and claims only when a pod bound to it
//! uses them (in volumes, projected volumes, env or pull secrets), and volumes bound to such
//! claims; it may list and watch volumes and delete the local volumes pinned to it; it may
//! create a token for a service account one of its pods runs as, bound to that pod. Everything
//! else it asks to change is refused with 403.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use http::Method;
use protocol::join;
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::blocking;
use super::{ApiState, Target};

mod restriction;
pub use restriction::admit_update as admit_node_update;

/// The prefix of node users.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The join token and the tokens issued to nodes.
pub struct NodeCredentials {
    join_secret: String,
    ca_hash: String,
    ca_pem: String,
    server_url: String,
    tokens_file: PathBuf,
    /// Node token → node name.
    tokens: RwLock<HashMap<String, String>>,
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|part| !part.is_empty() && !part.starts_with('-') && !part.ends_with('-'))
}

impl NodeCredentials {
    /// Loads (or creates) the join secret and the node tokens in `data_dir`.
    pub fn load(
        data_dir: &std::path::Path,
        ca_pem: &str,
        server_url: &str,
    ) -> Result<NodeCredentials, crate::pki::PkiError> {
        let secret_file = data_dir.join("join.secret");
        if !secret_file.exists() {
            crate::pki::write_private(&secret_file, crate::pki::new_token().as_bytes())?;
        }
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| crate::pki::PkiError::Io {
                path: path.clone(),
                source,
            })
        };
        let join_secret = read(&secret_file)?.trim().to_owned();
        let tokens_file = data_dir.join("node-tokens");
        let tokens = std::fs::read_to_string(&tokens_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (token, node) = line.split_once(' ')?;
                Some((token.to_owned(), node.to_owned()))
            })
            .collect();
        let credentials = NodeCredentials {
            ca_hash: join::certificate_pin(ca_pem.as_bytes()).unwrap_or_default(),
            ca_pem: ca_pem.to_owned(),
            join_secret,
            server_url: server_url.to_owned(),
            tokens_file,
            tokens: RwLock::new(tokens),
        };
        crate::pki::write_private(
            &data_dir.join("join.token"),
            format!("{}\n", credentials.join_token()).as_bytes(),
        )?;
        Ok(credentials)
    }

    /// The CA's proof of the join secret: an agent that has only the secret (from
    /// bramble.toml) checks the CA it downloads with it, as [`join::ca_proof`] computes.
    pub fn ca_proof(&self) -> String {
        join::ca_proof(&self.join_secret, self.ca_pem.as_bytes())
    }

    /// The token agents join with.
    pub fn join_token(&self) -> String {
        join::format_token(&self.ca_hash, &self.join_secret)
    }

    /// The cluster CA certificate (PEM) that signs the API server's certificate: what pods
    /// find as `ca.crt` in the `kube-root-ca.crt` config map.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node a bearer token belongs to.
    pub fn node_of(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .expect("tokens lock")
            .iter()
            .find(|(known, _)| crate::auth::constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(_, node)| node.clone())
    }

    fn accepts_join_secret(&self, presented: &str) -> bool {
        join::secret_matches(presented, &self.join_secret)
    }

    /// Issues a fresh token for `node` (replacing an older one) and returns its kubeconfig.
    fn issue(&self, node: &str) -> Result<String, ApiError> {
        let token = crate::pki::new_token();
        let mut tokens = self.tokens.write().expect("tokens lock");
        tokens.retain(|_, owner| owner != node);
        tokens.insert(token.clone(), node.to_owned());
        let mut lines: Vec<String> = tokens.iter().map(|(t, n)| format!("{t} {n}")).collect();
        lines.sort();
        crate::pki::write_private(&self.tokens_file, (lines.join("\n") + "\n").as_bytes())
            .map_err(|e| ApiError::internal_logged("storing the node's token failed", &e))?;
        Ok(crate::pki::kubeconfig(
            "bramble",
            &self.server_url,
            &self.ca_pem,
            &format!("{NODE_USER_PREFIX}{node}"),
            &token,
        ))
    }
}

/// `GET /bramble/v1/ca.crt`: the cluster CA, for agents to check against their join token.
pub fn ca_certificate(state: &ApiState) -> Vec<u8> {
    state.nodes.ca_pem.as_bytes().to_vec()
}

/// `POST /bramble/v1/join` with the join token as bearer token and `{"node": NAME}`: the
/// node's kubeconfig. A name whose Node is live stays its own: the join is refused (409, the
/// node's token kept) unless it carries `identity`, the proof that it comes from the machine
/// whose certificate the Node pins (see [`protocol::join`]).
pub fn join(state: &ApiState, bearer: Option<&str>, body: &[u8]) -> Result<String, ApiError> {
    let presented = bearer.unwrap_or_default();
    if presented.is_empty() || !state.nodes.accepts_join_secret(presented) {
        return Err(ApiError::unauthorized());
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("join request: {e}")))?;
    let node = request["node"].as_str().unwrap_or_default();
    if !is_dns_subdomain(node) {
        return Err(ApiError::bad_request(format!(
            "node name {node:?} is not a valid DNS subdomain (lower-case letters, digits, '-' and '.')"
        )));
    }
    if let Some(existing) = live_node(state, node)? {
        let identity = request.get("identity").filter(|v| !v.is_null());
        let proof = identity.map(|identity| {
            check_identity(
                &existing,
                node,
                identity,
                &state.nodes.ca_hash,
                crate::controllers::now_seconds(),
            )
        });
        match proof {
            Some(Ok(())) => {
                tracing::info!(node, "node joined again, proving it is the same machine")
            }
            refused => {
                let why = match refused {
                    Some(Err(why)) => {
                        format!(" (the proof that this is the same machine was refused: {why})")
                    }
                    _ => String::new(),
                };
                tracing::warn!(node, "refused a join under the name of a live node{why}");
                return Err(ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("a Node with name {node:?} is already joined and live; delete it (kubectl delete node {node}) or join under another name{why}"),
                ));
            }
        }
    } else {
        tracing::info!(node, "node joined");
    }
    state.nodes.issue(node)
}

/// The Node called `name` if it is live: Ready, or its lease renewed within the node monitor's
/// grace period (on the master's clock). A node that stopped long ago frees its name.
fn live_node(state: &ApiState, name: &str) -> Result<Option<Value>, ApiError> {
    let read = |key: &str, namespace: &str| {
        state
            .store
            .get(key, namespace, name)
            .map_err(|e| ApiError::internal_logged("reading the store failed", &e))
    };
    let Some(node) = read("core/nodes", "")? else {
        return Ok(None);
    };
    if protocol::node::is_ready(&node) {
        return Ok(Some(node));
    }
    let grace = state.cluster.timings.node_monitor_grace.as_secs_f64();
    let renewed = read("coordination.k8s.io/leases", "kube-node-lease")?
        .and_then(|lease| {
            lease
                .pointer("/spec/renewTime")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        })
        .is_some_and(|renewed| {
            let now = jiff::Timestamp::from_second(crate::controllers::now_seconds())
                .unwrap_or_else(|_| jiff::Timestamp::now());
            now.duration_since(renewed).as_secs_f64() <= grace.ceil()
        });
    Ok(renewed.then_some(node))
}

/// Checks a join's proof that it comes from the machine `node` pins: its certificate is the
/// pinned one, and it signed [`join::identity_message`] with that certificate's key at a time
/// near `now` (Unix seconds). Why not, otherwise.
fn check_identity(
    node: &Value,
    name: &str,
    identity: &Value,
    ca_pin: &str,
    now: i64,
) -> Result<(), String> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    let pem = identity["certificate"]
        .as_str()
        .ok_or("it holds no certificate")?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "its certificate is not PEM")?;
    let pinned = node
        .pointer(&format!(
            "/metadata/annotations/{}",
            protocol::node::CERT_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let presented = join::der_pin(der.as_ref());
    if pinned.is_empty() || !crate::auth::constant_time_eq(pinned.as_bytes(), presented.as_bytes())
    {
        return Err("its certificate is not the one pinned on the Node".to_owned());
    }
    let time = identity["time"].as_i64().ok_or("it holds no time")?;
    if (time - now).abs() > join::IDENTITY_MAX_SKEW_SECONDS {
        return Err(format!(
            "it was made {}s away from the master's time",
            (time - now).abs()
        ));
    }
    let signature = identity["signature"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or("its signature is not base64")?;
    let algorithm: &dyn ring::signature::VerificationAlgorithm =
        match identity["scheme"].as_str().unwrap_or_default() {
            "ECDSA_NISTP256_SHA256" => &ring::signature::ECDSA_P256_SHA256_ASN1,
            "ECDSA_NISTP384_SHA384" => &ring::signature::ECDSA_P384_SHA384_ASN1,
            "ED25519" => &ring::signature::ED25519,
            other => return Err(format!("its signature scheme {other:?} is not supported")),
        };
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| "its certificate cannot be read")?;
    let key = &certificate.public_key().subject_public_key.data;
    let message = join::identity_message(name, time, ca_pin);
    ring::signature::UnparsedPublicKey::new(algorithm, key)
        .verify(message.as_bytes(), &signature)
        .map_err(|_| "its signature does not verify with the pinned certificate".to_owned())
}

/// What a node asks to do.
pub struct NodeRequest<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The HTTP method.
    pub method: &'a Method,
    /// The resource path's target.
    pub target: &'a Target,
    /// The request body (for creates).
    pub body: &'a [u8],
    /// Whether the request watches.
    pub watching: bool,
}

fn forbidden(request: &NodeRequest<'_>, why: &str) -> ApiError {
    let verb = match *request.method {
        Method::GET if request.watching => "watch",
        Method::GET if request.target.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "use",
    };
    let resource = match &request.target.subresource {
        Some(sub) => format!("{}/{sub}", request.target.resource.plural),
        None => request.target.resource.plural.to_owned(),
    };
    let object = match request.target.name.as_deref() {
        Some(name) => format!("{resource} \"{name}\""),
        None => resource.clone(),
    };
    let scope = match &request.target.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    ApiError::forbidden(format!(
        "{object} is forbidden: User \"{NODE_USER_PREFIX}{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}: {why}",
        request.node, request.target.resource.group
    ))
}

fn pod_uses(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let (volume_key, env_key, env_from_key) = if kind == "secrets" {
        ("secret", "secretKeyRef", "secretRef")
    } else {
        ("configMap", "configMapKeyRef", "configMapRef")
    };
    let volume_name = |v: &Value| {
        if kind == "secrets" {
            v[volume_key]["secretName"].as_str().map(str::to_owned)
        } else {
            v[volume_key]["name"].as_str().map(str::to_owned)
        }
    };
    let volumes = || spec["volumes"].as_array().into_iter().flatten();
    let in_volumes = volumes().any(|v| volume_name(v).as_deref() == Some(name));
    // Projected volumes name config maps and secrets with `name` in every source.
    let in_projections = volumes()
        .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
        .any(|source| source[volume_key]["name"] == name);
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    let in_env = containers.into_iter().any(|c| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["valueFrom"][env_key]["name"] == name)
            || c["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e[env_from_key]["name"] == name)
    });
    let pull_secret = kind == "secrets"
        && spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == name);
    in_volumes || in_projections || in_env || pull_secret
}

/// Allows or refuses what a node asks.
pub async fn authorize(state: &Arc<ApiState>, request: NodeRequest<'_>) -> Result<(), ApiError> {
    let target = request.target;
    let plural = target.resource.plural;
    let group = target.resource.group;
    let name = target.name.as_deref();
    let namespace = target.namespace.as_deref();
    let sub = target.subresource.as_deref();
    let node = request.node;
    let reading = *request.method == Method::GET;
    match (group, plural) {
        ("", "secrets") | ("", "configmaps") => {
            if !reading {
                return Err(forbidden(
                    &request,
                    "nodes only read config maps and secrets",
                ));
            }
            let Some(name) = name else {
                return Err(forbidden(
                    &request,
                    "a node reads config maps and secrets one by one, for its pods",
                ));
            };
            if plural == "configmaps"
                && namespace == Some("kube-system")
                && name == "bramble-settings"
            {
                return Ok(());
            }
            let namespace = namespace.unwrap_or("default").to_owned();
            if pods_on(state, node, &namespace)
                .await?
                .iter()
                .any(|pod| pod_uses(pod, plural, name))
            {
                return Ok(());
            }
            Err(forbidden(&request, "no pod bound to this node uses it"))
        }
        ("", "pods") if reading => match sub {
            None | Some("status") => Ok(()),
            _ => Err(forbidden(&request, "nodes do not read logs or exec")),
        },
        ("", "pods") => {
            let allowed_write = matches!(
                (request.method, sub),
                (&Method::PATCH | &Method::PUT, Some("status")) | (&Method::DELETE, None)
            );
            let Some(pod_name) = name.filter(|_| allowed_write) else {
                return Err(forbidden(
                    &request,
                    "a node may only update the status of its pods and delete them",
                ));
            };
            let namespace = namespace.unwrap_or("default").to_owned();
            let store = state.store.clone();
            let resource = target.resource;
            let pod_name = pod_name.to_owned();
            let pod = blocking(move || {
                store
                    .get(&resource.storage_key(), &namespace, &pod_name)
                    .map_err(|e| ApiError::from_store(e, resource, &pod_name))
            })
            .await?;
            match pod {
                // A missing pod answers 404 as usual.
                None => Ok(()),
                Some(pod) if pod["spec"]["nodeName"] == node => Ok(()),
                Some(_) => Err(forbidden(&request, "the pod is not bound to this node")),
            }
        }
        ("", "nodes") => {
            if reading {
                return Ok(());
            }
            let own = match (request.method, name) {
                (&Method::POST, None) => {
                    let body: Value = serde_json::from_slice(request.body).unwrap_or(Value::Null);
                    if body["metadata"]["name"] == node {
                        // What it may write on update is checked against the stored Node
                        // (`admit_node_update`); a new Node is all in the body.
                        restriction::admit_create(node, &body)?;
                        true
                    } else {
                        false
                    }
                }
                (&Method::PUT | &Method::PATCH, Some(name)) => {
                    name == node && matches!(sub, None | Some("status"))
                }
                _ => false,
            };
            if own {
                Ok(())
            } else {
                Err(forbidden(
                    &request,
                    "a node may change only its own Node object",
                ))
            }
        }
        ("coordination.k8s.io", "leases") => {
            if reading {
                return Ok(());
            }
            let in_lease_namespace = namespace == Some("kube-node-lease");
            let own = match (request.method, name) {
                (&Method::POST, None) => {
                    let body: Value = serde_json::from_slice(request.body).unwrap_or(Value::Null);
                    body["metadata"]["name"] == node
                }
                (&Method::PUT | &Method::PATCH, Some(name)) => name == node && sub.is_none(),
                _ => false,
            };
            if own && in_lease_namespace {
                Ok(())
            } else {
                Err(forbidden(&request, "a node may change only its own lease"))
            }
        }
        ("", "events") | ("events.k8s.io", "events") => {
            if matches!(
                *request.method,
                Method::GET | Method::POST | Method::PATCH | Method::PUT
            ) {
                Ok(())
            } else {
                Err(forbidden(&request, "nodes create and update events"))
            }
        }
        ("", "serviceaccounts") if !reading || sub.is_some() => {
            authorize_token_request(state, &request).await
        }
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => {
            authorize_volume_request(state, &request).await
        }
        _ if reading => Ok(()),
        _ => Err(forbidden(&request, "nodes may not change this")),
    }
}

/// A node reads the claims its pods use and the volumes bound to them, lists and watches
/// volumes, and deletes the local volumes pinned to it (after removing their directory).
async fn authorize_volume_request(
    state: &Arc<ApiState>,
    request: &NodeRequest<'_>,
) -> Result<(), ApiError> {
    let target = request.target;
    let node = request.node;
    let claims = target.resource.plural == "persistentvolumeclaims";
    let method = request.method;
    let Some(name) = target.name.as_deref() else {
        return if !claims && *method == Method::GET {
            Ok(())
        } else {
            Err(forbidden(
                request,
                "a node reads claims one by one, for its pods, and may list only volumes",
            ))
        };
    };
    let load = |storage_key: &'static str, namespace: String, name: String| {
        let store = state.store.clone();
        blocking(move || {
            store
                .get(storage_key, &namespace, &name)
                .map_err(|e| ApiError::internal_logged("reading the store failed", &e))
        })
    };
    match (claims, method) {
        (true, &Method::GET) => {
            let namespace = target.namespace.as_deref().unwrap_or("default").to_owned();
            if pods_on(state, node, &namespace)
                .await?
                .iter()
                .any(|pod| crate::controllers::view::claims_of(pod).iter().any(|c| c == name))
            {
                return Ok(());
            }
            Err(forbidden(request, "no pod bound to this node uses it"))
        }
        (false, &Method::GET) => {
            let Some(volume) = load(VOLUMES, String::new(), name.to_owned()).await? else {
                return Ok(()); // a missing volume answers 404 as usual
            };
            let reference = &volume["spec"]["claimRef"];
            let (namespace, claim) = (
                reference["namespace"].as_str().unwrap_or_default(),
                reference["name"].as_str().unwrap_or_default(),
            );
            if !claim.is_empty()
                && pods_on(state, node, namespace)
                    .await?
                    .iter()
                    .any(|pod| crate::controllers::view::claims_of(pod).iter().any(|c| c == claim))
            {
                return Ok(());
            }
            Err(forbidden(request, "no pod bound to this node uses it"))
        }
        (false, &Method::DELETE) => {
            let Some(volume) = load(VOLUMES, String::new(), name.to_owned()).await? else {
                return Ok(());
            };
            if crate::controllers::local_path::node_of_volume(&volume).as_deref() == Some(node) {
                return Ok(());
            }
            Err(forbidden(request, "the volume is not pinned to this node"))
        }
        _ => Err(forbidden(
            request,
            "a node may only read the claims and volumes of its pods and delete its own local volumes",
        )),
    }
}

/// A node may create a token only for a service account one of its pods runs as, bound to
/// that pod (upstream's Node authorizer, which follows node → pod → service account, and the
/// NodeRestriction admission, which checks the binding).
async fn authorize_token_request(
    state: &Arc<ApiState>,
    request: &NodeRequest<'_>,
) -> Result<(), ApiError> {
    let target = request.target;
    let Some(account) = target
        .name
        .as_deref()
        .filter(|_| *request.method == Method::POST)
    else {
        return Err(forbidden(
            request,
            "can only create tokens for individual service accounts",
        ));
    };
    if target.subresource.as_deref() != Some("token") {
        return Err(forbidden(
            request,
            "can only create token subresource of serviceaccount",
        ));
    }
    let namespace = target.namespace.as_deref().unwrap_or("default");
    let pods = pods_on(state, request.node, namespace).await?;
    let runs_as = |pod: &Value| pod["spec"]["serviceAccountName"] == account;
    if !pods.iter().any(runs_as) {
        return Err(forbidden(
            request,
            &format!(
                "no relationship found between node '{}' and this object",
                request.node
            ),
        ));
    }
    let refuse = |why: &str| {
        ApiError::forbidden(format!("serviceaccounts \"{account}\" is forbidden: {why}"))
    };
    let body: Value = serde_json::from_slice(request.body).unwrap_or(Value::Null);
    let reference = &body["spec"]["boundObjectRef"];
    let pod_name = reference["name"].as_str().unwrap_or_default();
    if reference["apiVersion"] != "v1" || reference["kind"] != "Pod" || pod_name.is_empty() {
        return Err(refuse("node requested token not bound to a pod"));
    }
    let uid = reference["uid"].as_str().unwrap_or_default();
    if uid.is_empty() {
        return Err(refuse(
            "node requested token with a pod binding without a uid",
        ));
    }
    let pod = match pods.iter().find(|p| p["metadata"]["name"] == pod_name) {
        Some(pod) => pod.clone(),
        None => {
            let store = state.store.clone();
            let key = POD_KEY.to_owned();
            let (namespace, name) = (namespace.to_owned(), pod_name.to_owned());
            let elsewhere = blocking(move || {
                store
                    .get(&key, &namespace, &name)
                    .map_err(|e| ApiError::internal_logged("reading the store failed", &e))
            })
            .await?;
            if elsewhere.is_none() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("pods \"{pod_name}\" not found"),
                ));
            }
            return Err(refuse(
                "node requested token bound to a pod scheduled on a different node",
            ));
        }
    };
    if pod["metadata"]["uid"] != uid {
        return Err(refuse(&format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    if !runs_as(&pod) {
        return Err(refuse(&format!(
            "cannot bind token for serviceaccount \"{account}\" to pod running with different serviceaccount name."
        )));
    }
    Ok(())
}

const POD_KEY: &str = "core/pods";
const VOLUMES: &str = "core/persistentvolumes";

async fn pods_on(
    state: &Arc<ApiState>,
    node: &str,
    namespace: &str,
) -> Result<Vec<Value>, ApiError> {
    let store = state.store.clone();
    let key = crate::resources::find("", "v1", "pods")
        .expect("pods are a resource")
        .storage_key();
    let namespace = namespace.to_owned();
    let node = node.to_owned();
    blocking(move || {
        let page = store
            .list(&key, Some(&namespace), None, 100_000, &|pod: &Value| {
                pod["spec"]["nodeName"] == node.as_str()
            })
            .map_err(|e| ApiError::internal_logged("listing the node's pods failed", &e))?;
        Ok(page.items)
    })
    .await
}

/// Whether a node may write its usage report at `rest` (`nodes/NAME` under the metrics API).
pub fn may_report_usage(node: &str, method: &Method, rest: &[&str]) -> Result<(), ApiError> {
    match (method, rest) {
        (&Method::GET, _) => Ok(()),
        (_, ["nodes", name]) if *name == node => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "User \"{NODE_USER_PREFIX}{node}\" may report only its own usage"
        ))),
    }
}

/// The JSON body of a join answer.
pub fn join_answer(kubeconfig: String) -> Value {
    json!({"kubeconfig": kubeconfig})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_proof_is_hmac_sha256() {
        // RFC 4231, test case 2; the agent's join checks the same vector.
        assert_eq!(
            join::ca_proof("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn node_names_must_be_dns_subdomains() {
        assert!(is_dns_subdomain("pi-2"));
        assert!(is_dns_subdomain("rack1.pi-2"));
        assert!(!is_dns_subdomain("Pi"));
        assert!(!is_dns_subdomain("-pi"));
        assert!(!is_dns_subdomain("pi/2"));
        assert!(!is_dns_subdomain(""));
    }

    use crate::controllers::testing::{key, TestCluster};

    /// Asks as node `node` to do `method` on the API path `path` with `body`.
    async fn ask(
        cluster: &TestCluster,
        node: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<(), ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let target = super::super::parse_target(&segments)
            .expect("a valid path")
            .expect("a resource path");
        let body = body.to_string();
        let request = NodeRequest {
            node,
            method: &method,
            target: &target,
            body: body.as_bytes(),
            watching: false,
        };
        authorize(&cluster.shared_api(), request).await
    }

    /// Two pods, `web` on pi-1 running as `builder`, `db` on pi-2 running as `default`.
    fn cluster_with_pods() -> (TestCluster, String) {
        let cluster = TestCluster::new();
        cluster.create(
            "core/serviceaccounts",
            json!({"metadata": {"name": "builder", "namespace": "default"}}),
        );
        let web = cluster.create(
            "core/pods",
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"serviceAccountName": "builder",
                            "containers": [{"name": "app", "image": "registry.local/app:1"}]}}),
        );
        cluster.create(
            "core/pods",
            json!({"metadata": {"name": "db", "namespace": "default"},
                   "spec": {"containers": [{"name": "app", "image": "registry.local/db:1"}]}}),
        );
        cluster.run_pod(&key("web"), "pi-1", "10.0.0.5", None);
        cluster.run_pod(&key("db"), "pi-2", "10.0.0.6", None);
        let uid = web["metadata"]["uid"].as_str().unwrap().to_owned();
        (cluster, uid)
    }

    fn token_request(pod: &str, uid: &str) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3607,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}})
    }

    const BUILDER_TOKEN: &str = "/api/v1/namespaces/default/serviceaccounts/builder/token";

    #[tokio::test]
    async fn a_node_creates_tokens_only_for_accounts_of_its_pods_bound_to_them() {
        let (cluster, uid) = cluster_with_pods();
        let request = token_request("web", &uid);
        ask(
            &cluster,
            "pi-1",
            Method::POST,
            BUILDER_TOKEN,
            request.clone(),
        )
        .await
        .expect("pi-1 runs web as builder");

        let other_node = ask(
            &cluster,
            "pi-2",
            Method::POST,
            BUILDER_TOKEN,
            request.clone(),
        )
        .await
        .unwrap_err();
        assert_eq!(other_node.code, 403);
        assert!(
            other_node
                .message
                .ends_with("no relationship found between node 'pi-2' and this object"),
            "{}",
            other_node.message
        );

        let refusals = [
            (json!({"spec": {}}), "node requested token not bound to a pod"),
            (token_request("web", ""), "node requested token with a pod binding without a uid"),
            (
                token_request("web", "someone-else"),
                "the UID in the bound object reference (someone-else) does not match the UID in record. The object might have been deleted and then recreated",
            ),
            (
                token_request("db", "x"),
                "node requested token bound to a pod scheduled on a different node",
            ),
        ];
        for (body, why) in refusals {
            let error = ask(&cluster, "pi-1", Method::POST, BUILDER_TOKEN, body)
                .await
                .unwrap_err();
            assert_eq!(error.code, 403);
            assert_eq!(
                error.message,
                format!("serviceaccounts \"builder\" is forbidden: {why}")
            );
        }
        let missing = ask(
            &cluster,
            "pi-1",
            Method::POST,
            BUILDER_TOKEN,
            token_request("gone", "x"),
        )
        .await
        .unwrap_err();
        assert_eq!(missing.code, 404);
    }

    #[tokio::test]
    async fn a_token_for_a_pod_of_another_account_is_refused() {
        let (cluster, uid) = cluster_with_pods();
        cluster.create(
            "core/pods",
            json!({"metadata": {"name": "side", "namespace": "default"},
                   "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}}),
        );
        cluster.run_pod(&key("side"), "pi-1", "10.0.0.7", None);
        let side_uid = cluster.get("core/pods", &key("side")).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        // pi-1 runs pods as both accounts, but `side` runs as default, not builder.
        let error = ask(
            &cluster,
            "pi-1",
            Method::POST,
            BUILDER_TOKEN,
            token_request("side", &side_uid),
        )
        .await
        .unwrap_err();
        assert!(
            error.message.contains("different serviceaccount name"),
            "{}",
            error.message
        );
        assert!(ask(
            &cluster,
            "pi-1",
            Method::POST,
            BUILDER_TOKEN,
            token_request("web", &uid)
        )
        .await
        .is_ok());
    }

    #[tokio::test]
    async fn a_node_may_not_change_service_accounts_or_ask_other_subresources() {
        let (cluster, _) = cluster_with_pods();
        let update = ask(
            &cluster,
            "pi-1",
            Method::PUT,
            "/api/v1/namespaces/default/serviceaccounts/builder",
            json!({}),
        )
        .await
        .unwrap_err();
        assert!(
            update
                .message
                .ends_with("can only create tokens for individual service accounts"),
            "{}",
            update.message
        );
        let no_subresource = ask(
            &cluster,
            "pi-1",
            Method::POST,
            "/api/v1/namespaces/default/serviceaccounts/builder",
            json!({}),
        )
        .await
        .unwrap_err();
        assert!(no_subresource
            .message
            .ends_with("can only create token subresource of serviceaccount"));
        let list = ask(
            &cluster,
            "pi-1",
            Method::POST,
            "/api/v1/namespaces/default/serviceaccounts",
            json!({}),
        )
        .await
        .unwrap_err();
        assert!(list
            .message
            .ends_with("can only create tokens for individual service accounts"));
        ask(
            &cluster,
            "pi-1",
            Method::GET,
            "/api/v1/namespaces/default/serviceaccounts/builder",
            Value::Null,
        )
        .await
        .expect("reading is allowed");
    }

    #[tokio::test]
    async fn a_node_reads_the_root_ca_its_pods_project_and_nothing_else() {
        let (cluster, _) = cluster_with_pods();
        let root_ca = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt";
        ask(&cluster, "pi-1", Method::GET, root_ca, Value::Null)
            .await
            .expect("web projects kube-root-ca.crt");
        let other = ask(
            &cluster,
            "pi-1",
            Method::GET,
            "/api/v1/namespaces/default/configmaps/settings",
            Value::Null,
        )
        .await
        .unwrap_err();
        assert_eq!(other.code, 403);
        let elsewhere = ask(&cluster, "pi-3", Method::GET, root_ca, Value::Null)
            .await
            .unwrap_err();
        assert_eq!(elsewhere.code, 403);
    }

    #[test]
    fn pods_use_config_maps_and_secrets_by_volume_env_and_pull_secret() {
        let pod = json!({"spec": {
            "volumes": [{"name": "v", "configMap": {"name": "settings"}},
                        {"name": "s", "secret": {"secretName": "tls"}}],
            "containers": [{"name": "c",
                "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}],
                "envFrom": [{"configMapRef": {"name": "flags"}}]}],
            "imagePullSecrets": [{"name": "registry"}],
        }});
        assert!(pod_uses(&pod, "configmaps", "settings"));
        assert!(pod_uses(&pod, "configmaps", "flags"));
        assert!(pod_uses(&pod, "secrets", "tls"));
        assert!(pod_uses(&pod, "secrets", "db"));
        assert!(pod_uses(&pod, "secrets", "registry"));
        assert!(!pod_uses(&pod, "secrets", "settings"));
        assert!(!pod_uses(&pod, "configmaps", "other"));
    }

    #[test]
    fn projected_volumes_name_config_maps_and_secrets_too() {
        let pod = json!({"spec": {"volumes": [{"name": "p", "projected": {"sources": [
            {"configMap": {"name": "kube-root-ca.crt"}},
            {"secret": {"name": "tls"}},
            {"serviceAccountToken": {"path": "token"}},
        ]}}]}});
        assert!(pod_uses(&pod, "configmaps", "kube-root-ca.crt"));
        assert!(pod_uses(&pod, "secrets", "tls"));
        assert!(!pod_uses(&pod, "secrets", "kube-root-ca.crt"));
        assert!(!pod_uses(&pod, "configmaps", "tls"));
    }

    /// A machine's serving identity: its certificate's PEM and a signer with its key.
    fn machine() -> (String, Box<dyn rustls::sign::Signer>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pi-2".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let signer = signing
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        (cert.pem(), signer)
    }

    fn identity(cert: &str, signer: &dyn rustls::sign::Signer, ca_pin: &str, time: i64) -> Value {
        use base64::Engine;
        let message = join::identity_message("pi-2", time, ca_pin);
        let signature = signer.sign(message.as_bytes()).unwrap();
        json!({"certificate": cert, "time": time, "scheme": format!("{:?}", signer.scheme()),
               "signature": base64::engine::general_purpose::STANDARD.encode(signature)})
    }

    fn join_as(cluster: &TestCluster, request: Value) -> Result<String, ApiError> {
        let state = cluster.shared_api();
        let secret = state.nodes.join_secret.clone();
        join(&state, Some(&secret), request.to_string().as_bytes())
    }

    fn token_of(kubeconfig: &str) -> String {
        let line = kubeconfig
            .lines()
            .find(|l| l.trim_start().starts_with("token:"))
            .expect("a token line");
        line.trim_start()["token:".len()..].trim().to_owned()
    }

    /// pi-2, Ready, pinning `cert`.
    fn live_node(cluster: &TestCluster, cert: &str) {
        let pin = join::certificate_pin(cert.as_bytes()).unwrap();
        cluster.create(
            "core/nodes",
            json!({"metadata": {"name": "pi-2", "annotations": {protocol::node::CERT_ANNOTATION: pin}}}),
        );
        cluster.update_status("core/nodes", &(String::new(), "pi-2".to_owned()), |node| {
            node["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        });
    }

    #[tokio::test]
    async fn a_live_name_is_refused_and_its_token_kept() {
        let cluster = TestCluster::new();
        let first = token_of(&join_as(&cluster, json!({"node": "pi-2"})).unwrap());
        let (cert, signer) = machine();
        live_node(&cluster, &cert);

        let error = join_as(&cluster, json!({"node": "pi-2"})).unwrap_err();
        assert_eq!((error.code, error.reason), (409, "AlreadyExists"));
        assert_eq!(
            error.message,
            "a Node with name \"pi-2\" is already joined and live; delete it (kubectl delete node pi-2) or join under another name"
        );
        let state = cluster.shared_api();
        assert_eq!(state.nodes.node_of(&first).as_deref(), Some("pi-2"));

        // A proof from another machine, or an old one, is refused too.
        let ca_pin = state.nodes.ca_hash.clone();
        let now = crate::controllers::now_seconds();
        let (other_cert, other_signer) = machine();
        let refusals = [
            (
                identity(&other_cert, &*other_signer, &ca_pin, now),
                "its certificate is not the one pinned on the Node",
            ),
            (
                identity(&cert, &*signer, &ca_pin, now - 3600),
                "it was made 3600s away from the master's time",
            ),
            (
                identity(&cert, &*signer, "another-cluster", now),
                "its signature does not verify with the pinned certificate",
            ),
        ];
        for (proof, why) in refusals {
            let error = join_as(&cluster, json!({"node": "pi-2", "identity": proof})).unwrap_err();
            assert_eq!(error.code, 409);
            assert!(
                error.message.ends_with(&format!(
                    "(the proof that this is the same machine was refused: {why})"
                )),
                "{}",
                error.message
            );
        }
        let mut forged = identity(&cert, &*signer, &ca_pin, now);
        forged["time"] = json!(now + 1);
        assert!(join_as(&cluster, json!({"node": "pi-2", "identity": forged})).is_err());
        assert_eq!(state.nodes.node_of(&first).as_deref(), Some("pi-2"));

        // The same machine proves it and gets a new token; the old one ends.
        let proof = identity(&cert, &*signer, &ca_pin, now);
        let second =
            token_of(&join_as(&cluster, json!({"node": "pi-2", "identity": proof})).unwrap());
        assert_eq!(state.nodes.node_of(&second).as_deref(), Some("pi-2"));
        assert_eq!(state.nodes.node_of(&first), None);
    }

    #[tokio::test]
    async fn a_name_is_free_when_its_node_is_gone_or_silent() {
        let cluster = TestCluster::new();
        let (cert, _) = machine();
        live_node(&cluster, &cert);
        let key = (String::new(), "pi-2".to_owned());
        cluster.update_status("core/nodes", &key, |node| {
            node["status"] = json!({"conditions": [{"type": "Ready", "status": "Unknown"}]});
        });
        let lease = |renewed: String| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "pi-2", "namespace": "kube-node-lease"},
                   "spec": {"holderIdentity": "pi-2", "renewTime": renewed}})
        };
        cluster.create(
            "core/namespaces",
            json!({"metadata": {"name": "kube-node-lease"}}),
        );
        let now = jiff::Timestamp::from_second(crate::controllers::now_seconds()).unwrap();
        cluster.create("coordination.k8s.io/leases", lease(format!("{:.6}", now)));
        assert_eq!(
            join_as(&cluster, json!({"node": "pi-2"})).unwrap_err().code,
            409,
            "a fresh lease keeps a NotReady node live"
        );
        cluster.update(
            "coordination.k8s.io/leases",
            &("kube-node-lease".to_owned(), "pi-2".to_owned()),
            |lease| {
                let old = now - jiff::SignedDuration::from_secs(60);
                lease["spec"]["renewTime"] = json!(format!("{:.6}", old));
            },
        );
        join_as(&cluster, json!({"node": "pi-2"}))
            .expect("silent for longer than the grace period");

        cluster.update_status("core/nodes", &key, |node| {
            node["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        });
        assert!(join_as(&cluster, json!({"node": "pi-2"})).is_err());
        cluster.delete("core/nodes", &key, &Default::default());
        join_as(&cluster, json!({"node": "pi-2"})).expect("kubectl delete node frees the name");
    }
}
