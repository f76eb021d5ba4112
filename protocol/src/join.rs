//! How a node joins: the token format, the master's proof of its CA, the endpoints and the
//! certificate pins, written once for the master that checks them and the agent that sends them.
//!
//! ```text
//!   agent                                             master
//!     GET  /bramble/v1/ca.crt (any certificate) ───►  CA PEM + header bramble-ca-proof
//!     token bramble1.<CA hash>.<secret>: SHA-256 of the CA must equal <CA hash>
//!     bare <secret> (bramble.toml):      the proof must equal HMAC-SHA256(secret, CA PEM)
//!     POST /bramble/v1/join {"node": NAME, "identity": …}, Bearer <secret> ──► a kubeconfig
//!                                                             with the node's token
//! ```
//!
//! A name whose Node is live (Ready, or its lease fresh) is taken: the master refuses a join
//! under it (409) unless the join carries `identity`, the proof that it comes from the same
//! machine: the agent's serving certificate (whose SHA-256 the Node pins, [`der_pin`]) and a
//! signature with its key over [`identity_message`] (the node, the master's time from the CA
//! answer's `Date` header, the CA's pin).

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

/// How far the time in an identity proof may be from the master's clock, in seconds.
pub const IDENTITY_MAX_SKEW_SECONDS: i64 = 300;

/// What an agent signs with its serving key to prove, when it joins under a name that is
/// already live, that it is the machine the Node's certificate pin names: bound to the node's
/// name, to a time on the master's clock (so an old proof does not serve again) and to the
/// cluster's CA (so a proof made for one cluster does not serve in another).
pub fn identity_message(node: &str, unix_seconds: i64, ca_pin: &str) -> String {
    format!("bramble-join-identity-v1\nnode={node}\ntime={unix_seconds}\nca={ca_pin}\n")
}

/// The shortest join secret, in bits of entropy, a master or an agent accepts: what the
/// generated ones hold at least (16 random bytes), so that no one guesses it offline from
/// the CA proof every master publishes.
pub const MIN_SECRET_BITS: f64 = 128.0;

/// How to make a good secret, for the messages that refuse a weak one.
pub const MAKE_A_SECRET: &str = "make one with `openssl rand -hex 16` (or leave join_token out of the master's bramble.toml: the master makes one)";

/// The entropy of a secret as counted for [`check_secret_strength`]: its length times the bits
/// of the smallest alphabet it is written in (hex digits, else the classes it uses: lower
/// case, upper case, digits, `-`/`_`/`.`).
pub fn secret_bits(secret: &str) -> f64 {
    let bytes = secret.as_bytes();
    let hex = bytes.iter().all(u8::is_ascii_digit)
        || bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        || bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let alphabet = if bytes.iter().all(u8::is_ascii_digit) {
        10.0
    } else if hex {
        16.0
    } else {
        let has = |member: fn(&u8) -> bool, size: f64| {
            if bytes.iter().any(member) {
                size
            } else {
                0.0
            }
        };
        has(u8::is_ascii_lowercase, 26.0)
            + has(u8::is_ascii_uppercase, 26.0)
            + has(u8::is_ascii_digit, 10.0)
            + has(|b| !b.is_ascii_alphanumeric(), 3.0)
    };
    bytes.len() as f64 * f64::log2(alphabet)
}

/// Refuses a join secret someone could guess: under [`MIN_SECRET_BITS`] as [`secret_bits`]
/// counts them, or written with fewer than 8 different characters (`aaaa…`, `abab…`).
/// A full token (`bramble1.<hash>.<secret>`) is judged by its secret.
pub fn check_secret_strength(token: &str) -> Result<(), String> {
    let secret = token.trim().rsplit('.').next().unwrap_or_default();
    let bits = secret_bits(secret);
    let distinct = secret
        .bytes()
        .collect::<std::collections::BTreeSet<u8>>()
        .len();
    if bits < MIN_SECRET_BITS {
        return Err(format!(
            "the join token is too weak: {} characters hold about {bits:.0} bits, at least {MIN_SECRET_BITS:.0} are needed (32 hex digits, or 22 letters of both cases and digits); {MAKE_A_SECRET}",
            secret.len()
        ));
    }
    if distinct < 8 {
        return Err(format!(
            "the join token is too weak: it repeats {distinct} different characters; {MAKE_A_SECRET}"
        ));
    }
    Ok(())
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

    #[test]
    fn weak_join_secrets_are_refused() {
        // What masters make: 24 random bytes in hex; what bramble.toml examples suggest: 16.
        assert!(check_secret_strength("2f1c9d0b6e4a8f3c7d5e1b2a9c0f4e6d").is_ok());
        assert!(check_secret_strength("5e0a7c1f93b2d84e6a0c17f5b3d9e2a4c68f01b7d3e5a9c2").is_ok());
        assert!(check_secret_strength(&format!(
            "bramble1.{}.{}",
            "ab".repeat(32),
            "2f1c9d0b6e4a8f3c7d5e1b2a9c0f4e6d"
        ))
        .is_ok());
        assert!(check_secret_strength("Correct-Horse-Battery-Staple-42").is_ok());
        let weak = check_secret_strength("0123456789abcdef").unwrap_err();
        assert!(
            weak.starts_with(
                "the join token is too weak: 16 characters hold about 64 bits, at least 128"
            ),
            "{weak}"
        );
        assert!(weak.contains("openssl rand -hex 16"), "{weak}");
        assert!(
            check_secret_strength("change-me-to-a-long-secret").is_err(),
            "26 lower case and '-': 124 bits"
        );
        assert!(check_secret_strength(&"ab".repeat(40))
            .unwrap_err()
            .contains("2 different characters"));
        assert!(check_secret_strength("").is_err());
        assert_eq!(secret_bits("ffff"), 16.0);
        assert_eq!(secret_bits("aB3-"), 4.0 * f64::log2(65.0));
    }

    #[test]
    fn the_identity_message_binds_node_time_and_cluster() {
        assert_eq!(
            identity_message("pi-2", 1_700_000_000, "abcd"),
            "bramble-join-identity-v1\nnode=pi-2\ntime=1700000000\nca=abcd\n"
        );
    }
}
