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
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use sha2::Digest;

use crate::client::Client;

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

/// Accepts any server certificate: used only to download the CA, which is then checked
/// against the hash in the join token.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CA hash inside a join token.
fn token_ca_hash(token: &str) -> Option<&str> {
    let mut parts = token.trim().split('.');
    let (Some("bramble1"), Some(hash), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(hash)
}

/// HMAC-SHA256 of `ca_pem` keyed with the join secret, in hex: what a master that knows the
/// secret sends beside its CA (header `bramble-ca-proof`).
#[cfg(test)]
fn ca_proof(join_secret: &str, ca_pem: &[u8]) -> String {
    use hmac::Mac;
    hex::encode(ca_mac(join_secret, ca_pem).finalize().into_bytes())
}

fn ca_mac(join_secret: &str, ca_pem: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(join_secret.as_bytes()).expect("any key length");
    mac.update(ca_pem);
    mac
}

/// Whether `proof` (hex) is the master's HMAC of `ca_pem` under the join secret, compared in
/// constant time so that its timing tells nothing about the right proof.
fn proof_holds(proof: &str, join_secret: &str, ca_pem: &[u8]) -> bool {
    use hmac::Mac;
    hex::decode(proof.trim())
        .is_ok_and(|proof| ca_mac(join_secret, ca_pem).verify_slice(&proof).is_ok())
}

/// A bare join secret (as in bramble.toml): no `bramble1.` prefix, no dots.
fn is_bare_secret(token: &str) -> bool {
    let token = token.trim();
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
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
    let request = http::Request::get("/bramble/v1/ca.crt")
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
        .get("bramble-ca-proof")
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
    let expected = token_ca_hash(token);
    if expected.is_none() && !is_bare_secret(token) {
        return Err(JoinError::BadToken);
    }
    let (ca_pem, proof) = fetch_ca(server).await.map_err(|problem| JoinError::Fetch {
        server: server.to_owned(),
        problem,
    })?;
    let der = CertificateDer::from_pem_slice(&ca_pem).map_err(|e| JoinError::Fetch {
        server: server.to_owned(),
        problem: format!("the CA is not PEM: {e}"),
    })?;
    let trusted = match expected {
        Some(expected) => {
            hex::encode(sha2::Sha256::digest(der.as_ref())).eq_ignore_ascii_case(expected)
        }
        // A bare secret: the master proves it knows the secret too.
        None => proof.is_some_and(|proof| proof_holds(&proof, token.trim(), &ca_pem)),
    };
    if !trusted {
        return Err(JoinError::CaMismatch {
            server: server.to_owned(),
        });
    }
    let client = Client::new(server, &ca_pem, token.trim()).map_err(JoinError::Refused)?;
    let answer = client
        .create("/bramble/v1/join", &json!({"node": node}))
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

    #[test]
    fn the_ca_proof_is_hmac_sha256() {
        // RFC 4231, test case 2; the master's node_auth::ca_proof checks the same vector.
        assert_eq!(
            ca_proof("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let proof = ca_proof("Jefe", b"what do ya want for nothing?");
        assert!(proof_holds(&proof, "Jefe", b"what do ya want for nothing?"));
        assert!(proof_holds(
            &proof.to_uppercase(),
            "Jefe",
            b"what do ya want for nothing?"
        ));
        assert!(!proof_holds(
            &proof,
            "Jefe",
            b"what do ya want for something?"
        ));
        assert!(!proof_holds(
            &proof[..62],
            "Jefe",
            b"what do ya want for nothing?"
        ));
        assert!(!proof_holds(
            "not hex",
            "Jefe",
            b"what do ya want for nothing?"
        ));
        assert!(is_bare_secret("change-me-to-a-long-secret_1"));
        assert!(!is_bare_secret("bramble1.abc.def"));
        assert!(!is_bare_secret(""));
    }

    #[test]
    fn join_tokens_carry_a_ca_hash() {
        let hash = "ab".repeat(32);
        assert_eq!(
            token_ca_hash(&format!("bramble1.{hash}.s3cret\n")),
            Some(hash.as_str())
        );
        assert_eq!(token_ca_hash("bramble1.abc.s3cret"), None);
        assert_eq!(token_ca_hash(&format!("k10.{hash}.x")), None);
        assert_eq!(token_ca_hash(&format!("bramble1.{hash}.")), None);
    }
}
