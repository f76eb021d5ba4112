//! Joining a master with a join token (`bramble1.<CA SHA-256>.<secret>`): fetch the cluster CA,
//! check it against the hash in the token (so a machine in the middle cannot pose as the
//! master), then trade the secret for the node's own kubeconfig. A bare secret (what
//! bramble.toml holds, written before the master made its CA) works too: the master then sends
//! an HMAC of its CA keyed with the secret, which only a master knowing the secret can make.
//!
//! An agent that has joined before keeps its serving key pair (`<data>/pki/agent.{crt,key}`),
//! whose certificate its Node pins; joining again under its name while the Node is live, it
//! proves it is that machine by signing [`join::identity_message`] with the key, at the time the
//! master's clock gave in the CA answer (a Pi has no clock of its own before NTP).

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

/// What the master answered for its CA.
struct CaAnswer {
    pem: Vec<u8>,
    /// The `bramble-ca-proof` header, if any.
    proof: Option<String>,
    /// The master's clock (the `Date` header) in Unix seconds, if it said.
    time: Option<i64>,
}

/// An HTTP date (`Thu, 03 Dec 2026 18:46:55 GMT`) in Unix seconds.
fn http_date_seconds(text: &str) -> Option<i64> {
    jiff::fmt::rfc2822::parse(text)
        .ok()
        .map(|zoned| zoned.timestamp().as_second())
}

async fn fetch_ca(server: &str) -> Result<CaAnswer, String> {
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
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let proof = header(join::CA_PROOF_HEADER);
    let time = header(http::header::DATE.as_str()).and_then(|date| http_date_seconds(&date));
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(CaAnswer {
        pem: body.to_vec(),
        proof,
        time,
    })
}

/// The machine's serving identity, to prove who it is when it joins again.
pub struct MachineIdentity {
    /// The certificate (PEM) its Node pins.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl MachineIdentity {
    /// The identity kept in `pki_dir` (`agent.crt`, `agent.key`), if the agent made one before.
    pub fn load(pki_dir: &Path) -> Option<MachineIdentity> {
        Some(MachineIdentity {
            cert_pem: std::fs::read_to_string(pki_dir.join("agent.crt")).ok()?,
            key_pem: std::fs::read_to_string(pki_dir.join("agent.key")).ok()?,
        })
    }

    /// The join request's `identity`: the certificate and a signature with the key over
    /// [`join::identity_message`] for `node` at `time` (Unix seconds) in the cluster of `ca_pin`.
    pub fn proof(&self, node: &str, time: i64, ca_pin: &str) -> Result<serde_json::Value, String> {
        use base64::Engine;
        use rustls::SignatureScheme;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("reading the agent's key: {e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("reading the agent's key: {e}"))?;
        let signer = signing
            .choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::ED25519,
            ])
            .ok_or("the agent's key is neither ECDSA nor Ed25519")?;
        let message = join::identity_message(node, time, ca_pin);
        let signature = signer
            .sign(message.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok(json!({
            "certificate": self.cert_pem,
            "time": time,
            "scheme": format!("{:?}", signer.scheme()),
            "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        }))
    }
}

/// Joins the master at `server` as `node` and writes the node's kubeconfig to `kubeconfig`.
/// With the machine's `identity` (from an earlier join), it may join again under a name
/// whose Node is still live.
pub async fn join(
    server: &str,
    token: &str,
    node: &str,
    kubeconfig: &Path,
    identity: Option<&MachineIdentity>,
) -> Result<(), JoinError> {
    let token = JoinToken::parse(token).ok_or(JoinError::BadToken)?;
    let CaAnswer {
        pem: ca_pem,
        proof,
        time,
    } = fetch_ca(server).await.map_err(|problem| JoinError::Fetch {
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
    let mut request = json!({"node": node});
    if let (Some(identity), Some(ca_pin)) = (identity, join::certificate_pin(&ca_pem)) {
        let time = time.unwrap_or_else(|| jiff::Timestamp::now().as_second());
        match identity.proof(node, time, &ca_pin) {
            Ok(proof) => request["identity"] = proof,
            Err(error) => {
                tracing::warn!(%error, "joining without proof of this machine's identity")
            }
        }
    }
    let answer = client
        .create(join::JOIN_PATH, &request)
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
    fn http_dates_are_read() {
        assert_eq!(
            http_date_seconds("Thu, 03 Dec 2026 18:46:55 GMT"),
            Some(1_796_323_615)
        );
        assert_eq!(http_date_seconds("yesterday"), None);
    }

    #[test]
    fn the_proof_signs_the_identity_message_with_the_machines_key() {
        let dir = tempfile::tempdir().unwrap();
        let identity =
            crate::node_server::ensure_identity(dir.path(), "pi-2", "10.0.0.2".parse().unwrap())
                .unwrap();
        let machine = MachineIdentity::load(dir.path()).expect("kept in pki");
        assert_eq!(
            protocol::join::certificate_pin(machine.cert_pem.as_bytes()),
            Some(identity.fingerprint)
        );
        let proof = machine.proof("pi-2", 1_700_000_000, "ab").unwrap();
        assert_eq!(proof["time"], 1_700_000_000);
        assert_eq!(proof["scheme"], "ECDSA_NISTP256_SHA256");
        use base64::Engine;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(proof["signature"].as_str().unwrap())
            .unwrap();
        // Checked with the certificate's key (the master reads it from the certificate).
        let public_key = rcgen::KeyPair::from_pem(&machine.key_pem)
            .unwrap()
            .public_key_raw()
            .to_vec();
        let provider = rustls::crypto::ring::default_provider();
        let (_, algorithms) = provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            .unwrap();
        let message = join::identity_message("pi-2", 1_700_000_000, "ab");
        let verify = |message: &str| {
            algorithms.iter().any(|algorithm| {
                algorithm
                    .verify_signature(&public_key, message.as_bytes(), &signature)
                    .is_ok()
            })
        };
        assert!(verify(&message));
        assert!(!verify(&join::identity_message(
            "pi-3",
            1_700_000_000,
            "ab"
        )));
        assert!(MachineIdentity::load(&dir.path().join("none")).is_none());
    }

    #[test]
    fn the_kubeconfig_keeps_the_address_the_node_joined_with() {
        let given = "clusters:\n- cluster:\n    certificate-authority-data: AAAA\n    server: https://127.0.0.1:6443\n  name: bramble\n";
        let kept = with_server(given, "https://10.0.2.2:6443/");
        assert_eq!(kept, given.replace("127.0.0.1", "10.0.2.2"));
    }
}
