//! Joining a master with a join token (`bramble1.<CA SHA-256>.<secret>`): fetch the cluster CA,
//! check it against the hash in the token (so a machine in the middle cannot pose as the
//! master), then trade the secret for the node's own kubeconfig. A bare secret (what
//! bramble.toml holds, written before the master made its CA) works too: the master then sends
//! an HMAC of its CA keyed with the secret, which only a master knowing the secret can make.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use protocol::client::Client;
use protocol::join::{self, JoinToken};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::json;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not a bramble join token.
    #[error("the join token is malformed (expected bramble1.<ca-hash>.<secret>, as in the master's join.token, or the bare secret: letters, digits, '-' and '_')")]
    BadToken,
    /// The master could not be reached or answered nonsense.
    #[error("cannot fetch the cluster CA from {server}: {problem}")]
    Fetch {
        /// The master's address.
        server: String,
        /// What went wrong.
        problem: String,
    },
    /// The CA is not the one the token names.
    #[error("the master at {server} presents a CA that does not match the join token: refusing to join (wrong master, wrong token, or someone in the middle)")]
    CaMismatch {
        /// The master's address.
        server: String,
    },
    /// The master refused the token or the name.
    #[error("the master refused to let this node join: {0}")]
    Refused(String),
    /// The kubeconfig could not be saved.
    #[error("cannot save the node's kubeconfig to {path}")]
    Save {
        /// Where.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The CA's PEM and the `bramble-ca-proof` header, if any.
async fn fetch_ca(server: &str) -> Result<(Vec<u8>, Option<String>), String> {
    let address = server
        .strip_prefix("https://")
        .ok_or("the server must be an https:// address")?
        .trim_end_matches('/')
        .to_owned();
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connect_to = if address
        .rsplit_once(':')
        .is_some_and(|(h, _)| !h.ends_with(']') || address.starts_with('['))
    {
        address.clone()
    } else {
        format!("{address}:443")
    };
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(&connect_to),
    )
    .await
    .map_err(|_| "timed out connecting".to_owned())?
    .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(join::PinnedServer::any(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(join::CA_PATH)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the master answered {}", response.status()));
    }
    let proof = response
        .headers()
        .get(join::CA_PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((body.to_vec(), proof))
}

/// Joins the master at `server` as `node` and writes the node's kubeconfig to `kubeconfig`.
pub async fn join(
    server: &str,
    token: &str,
    node: &str,
    kubeconfig: &Path,
) -> Result<(), JoinError> {
    let token = JoinToken::parse(token).ok_or(JoinError::BadToken)?;
    let (ca_pem, proof) = fetch_ca(server).await.map_err(|problem| JoinError::Fetch {
        server: server.to_owned(),
        problem,
    })?;
    if CertificateDer::from_pem_slice(&ca_pem).is_err() {
        return Err(JoinError::Fetch {
            server: server.to_owned(),
            problem: "the CA is not PEM".to_owned(),
        });
    }
    let trusted = token.trusts(&ca_pem, proof.as_deref());
    if !trusted {
        return Err(JoinError::CaMismatch {
            server: server.to_owned(),
        });
    }
    let client = Client::new(server, &ca_pem, token.secret())
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    let answer = client
        .create(join::JOIN_PATH, &json!({"node": node}))
        .await
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    let text = answer["kubeconfig"]
        .as_str()
        .ok_or_else(|| JoinError::Refused("the answer held no kubeconfig".into()))?;
    let save = |source| JoinError::Save {
        path: kubeconfig.display().to_string(),
        source,
    };
    if let Some(parent) = kubeconfig.parent() {
        std::fs::create_dir_all(parent).map_err(save)?;
    }
    // The master names itself by its advertised address; this node reached it at `server`
    // (which differs behind NAT, or under QEMU's user networking), so that is what it keeps.
    let text = with_server(text, server);
    crate::runtime::monitor::write_atomic(kubeconfig, text.as_bytes()).map_err(save)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(kubeconfig, std::fs::Permissions::from_mode(0o600)).map_err(save)?;
    Ok(())
}

/// `kubeconfig` with its cluster's `server:` set to `server`.
fn with_server(kubeconfig: &str, server: &str) -> String {
    let mut out: String = kubeconfig
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with("server:") {
                format!(
                    "{}server: {}\n",
                    &line[..indent],
                    server.trim_end_matches('/')
                )
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if !kubeconfig.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_keeps_the_address_the_node_joined_with() {
        let given = "clusters:\n- cluster:\n    certificate-authority-data: AAAA\n    server: https://127.0.0.1:6443\n  name: bramble\n";
        let kept = with_server(given, "https://10.0.2.2:6443/");
        assert_eq!(kept, given.replace("127.0.0.1", "10.0.2.2"));
    }
}
