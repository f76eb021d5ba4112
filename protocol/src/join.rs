//! How a node joins: the token format, the master's proof of its CA, the endpoints and the
//! certificate pins, written once for the master that checks them and the agent that sends them.
//!
//! ```text
//!   agent                                             master
//!     GET  /bramble/v1/ca.crt (any certificate) ───►  CA PEM + header bramble-ca-proof
//!     token bramble1.<CA hash>.<secret>: SHA-256 of the CA must equal <CA hash>
//!     bare <secret> (bramble.toml):      the proof must equal HMAC-SHA256(secret, CA PEM)
//!     POST /bramble/v1/join {"node": NAME}, Bearer <secret> ──► a kubeconfig with the node's token
//! ```

use std::sync::Arc;

use hmac::Mac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// Where the master serves its CA to nodes that do not trust it yet.
pub const CA_PATH: &str = "/bramble/v1/ca.crt";
/// Where a node trades the join secret for its own credentials.
pub const JOIN_PATH: &str = "/bramble/v1/join";
/// The response header of [`CA_PATH`] carrying [`ca_proof`].
pub const CA_PROOF_HEADER: &str = "bramble-ca-proof";
/// The first part of a full join token.
pub const TOKEN_PREFIX: &str = "bramble1";

/// What a node was given to join with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinToken<'a> {
    /// `bramble1.<CA hash>.<secret>`, as the master's join.token holds it: the CA is checked
    /// against the hash.
    Full {
        /// The hex SHA-256 of the CA certificate (DER).
        ca_hash: &'a str,
        /// The join secret.
        secret: &'a str,
    },
    /// The secret alone (letters, digits, `-`, `_`), as bramble.toml may hold it before the
    /// master exists: the CA is checked with the master's proof.
    Bare(&'a str),
}

impl<'a> JoinToken<'a> {
    /// Reads a token, or `None` when it is neither form.
    pub fn parse(token: &'a str) -> Option<JoinToken<'a>> {
        let token = token.trim();
        let mut parts = token.split('.');
        if let (Some(TOKEN_PREFIX), Some(ca_hash), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let hash_ok = ca_hash.len() == 64 && ca_hash.bytes().all(|b| b.is_ascii_hexdigit());
            return (hash_ok && !secret.is_empty()).then_some(JoinToken::Full { ca_hash, secret });
        }
        let bare = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        bare.then_some(JoinToken::Bare(token))
    }

    /// The join secret, which the node sends as its bearer token.
    pub fn secret(&self) -> &'a str {
        match self {
            JoinToken::Full { secret, .. } | JoinToken::Bare(secret) => secret,
        }
    }

    /// Whether `ca_pem` is the CA this token trusts, given the master's `proof` header.
    pub fn trusts(&self, ca_pem: &[u8], proof: Option<&str>) -> bool {
        match self {
            JoinToken::Full { ca_hash, .. } => {
                certificate_pin(ca_pem).is_some_and(|actual| actual.eq_ignore_ascii_case(ca_hash))
            }
            JoinToken::Bare(secret) => proof.is_some_and(|proof| {
                let expected = ca_proof(secret, ca_pem);
                proof
                    .to_ascii_lowercase()
                    .as_bytes()
                    .ct_eq(expected.as_bytes())
                    .into()
            }),
        }
    }
}

/// A full join token for a CA hash and a secret.
pub fn format_token(ca_hash: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}.{ca_hash}.{secret}")
}

/// HMAC-SHA256 of the CA's PEM keyed with the join secret, in hex. Only a master that knows
/// the secret can present it, so an agent joining with a bare secret still refuses a machine
/// in the middle.
pub fn ca_proof(join_secret: &str, ca_pem: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(join_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(ca_pem);
    hex::encode(mac.finalize().into_bytes())
}

/// The pin of a certificate: the hex SHA-256 of its DER. Join tokens pin the CA this way,
/// and agents pin their serving certificate on their Node (`node::CERT_ANNOTATION`).
pub fn der_pin(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// The pin of the first certificate in a PEM text.
pub fn certificate_pin(pem: &[u8]) -> Option<String> {
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    Some(der_pin(der.as_ref()))
}

/// Whether a presented join secret (or a whole token) is `secret`, in constant time.
pub fn secret_matches(presented: &str, secret: &str) -> bool {
    let presented = presented.rsplit('.').next().unwrap_or(presented);
    presented.as_bytes().ct_eq(secret.as_bytes()).into()
}

/// The server certificates a TLS client accepts where no CA vouches for them: exactly the one
/// with a pin (the master reaching an agent, whose certificate's pin is on its Node), or any
/// (a node fetching the CA it then checks against its join token). Signatures are checked
/// either way, with the provider's algorithms.
#[derive(Debug)]
pub struct PinnedServer {
    pin: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedServer {
    /// Accepts only the certificate with this pin ([`der_pin`]).
    pub fn pinned(pin: &str, provider: Arc<CryptoProvider>) -> PinnedServer {
        PinnedServer {
            pin: Some(pin.to_ascii_lowercase()),
            provider,
        }
    }

    /// Accepts any certificate: only for what is checked another way afterwards.
    pub fn any(provider: Arc<CryptoProvider>) -> PinnedServer {
        PinnedServer {
            pin: None,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some(pin) if der_pin(end_entity.as_ref()) != *pin => Err(rustls::Error::General(
                "the server's certificate is not the one pinned for it".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        let hash = "ab".repeat(32);
        let full = format_token(&hash, "s3cret");
        assert_eq!(
            JoinToken::parse(&full),
            Some(JoinToken::Full {
                ca_hash: &hash,
                secret: "s3cret"
            })
        );
        assert_eq!(
            JoinToken::parse(" my-secret_1\n"),
            Some(JoinToken::Bare("my-secret_1"))
        );
        assert_eq!(JoinToken::parse("bramble1.abc.s"), None);
        assert_eq!(JoinToken::parse("has space"), None);
        assert_eq!(JoinToken::parse(""), None);
        assert!(secret_matches(&full, "s3cret"));
        assert!(secret_matches("s3cret", "s3cret"));
        assert!(!secret_matches("s3cre", "s3cret"));
    }

    #[test]
    fn the_ca_proof_is_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            ca_proof("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let is_bare = |token| matches!(JoinToken::parse(token), Some(JoinToken::Bare(_)));
        assert!(is_bare("change-me-to-a-long-secret_1"));
        assert!(!is_bare("bramble1.abc.def"));
        assert!(!is_bare(""));
    }

    #[test]
    fn join_tokens_carry_a_ca_hash() {
        let hash = "ab".repeat(32);
        let ca_hash = |token: &str| match JoinToken::parse(token) {
            Some(JoinToken::Full { ca_hash, .. }) => Some(ca_hash.to_owned()),
            _ => None,
        };
        assert_eq!(
            ca_hash(&format!("bramble1.{hash}.s3cret\n")),
            Some(hash.clone())
        );
        assert_eq!(ca_hash("bramble1.abc.s3cret"), None);
        assert_eq!(ca_hash(&format!("k10.{hash}.x")), None);
        assert_eq!(ca_hash(&format!("bramble1.{hash}.")), None);
    }

    #[test]
    fn a_bare_secret_trusts_only_a_proven_ca() {
        let ca = b"-----BEGIN CERTIFICATE-----\n...";
        let proof = ca_proof("secret", ca);
        assert_eq!(proof.len(), 64);
        let token = JoinToken::Bare("secret");
        assert!(token.trusts(ca, Some(&proof)));
        assert!(token.trusts(ca, Some(&proof.to_ascii_uppercase())));
        assert!(!token.trusts(ca, Some(&ca_proof("other", ca))));
        assert!(!token.trusts(ca, None));
        assert!(!token.trusts(ca, Some(&proof[..62])));
        assert!(!token.trusts(ca, Some("not hex")));
        assert!(!token.trusts(b"another CA", Some(&proof)));
    }

    #[test]
    fn a_pinned_server_accepts_only_its_certificate() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ours = CertificateDer::from(b"the agent's certificate".to_vec());
        let theirs = CertificateDer::from(b"someone else's".to_vec());
        let name = ServerName::try_from("10.99.0.11").unwrap();
        let check = |verifier: &PinnedServer, cert: &CertificateDer<'_>| {
            verifier
                .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        };
        let pinned = PinnedServer::pinned(&der_pin(&ours).to_ascii_uppercase(), provider.clone());
        assert!(check(&pinned, &ours));
        assert!(!check(&pinned, &theirs));
        let any = PinnedServer::any(provider);
        assert!(check(&any, &ours) && check(&any, &theirs));
    }
}
