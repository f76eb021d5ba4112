//! Client certificates signed by the cluster CA: CN is the user, each O a group, as
//! upstream's x509 authenticator (`CommonNameUserConversion`).
//!
//! The TLS server asks every client for a certificate but does not require one (tokens still
//! work); one that is shown must chain to the cluster CA, be within its validity and allow
//! client authentication (an extended key usage without `clientAuth` is refused, as upstream's
//! `ExtKeyUsageClientAuth` check), or the handshake fails. The leaf is then read with
//! `x509-parser` (rustls-webpki verifies but does not expose subject names; rcgen writes
//! certificates and only reads back what it wrote).

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::UserInfo;

/// Who a verified client certificate names.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// CN as the user name, each O as a group.
    pub user: UserInfo,
    /// The certificate's serial number, lower-case hex without leading zeros (what the
    /// revocation list names).
    pub serial: String,
}

/// What the master checks client certificates against.
pub struct ClientCertificates {
    /// Verifies chains against the cluster CA; `None` without a usable CA (no certificate
    /// then authenticates).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertificates {
    /// Certificates signed by the CA in `ca_pem`.
    pub fn new(ca_pem: &str) -> ClientCertificates {
        ClientCertificates {
            verifier: client_verifier(ca_pem),
        }
    }

    /// Who a peer certificate chain (leaf first) names: verified again against the CA (so an
    /// identity never comes from an unverified chain), then CN and O of the leaf. `None` when
    /// it does not verify or has no CN.
    pub fn identity_of(&self, chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let verifier = self.verifier.as_ref()?;
        let (leaf, intermediates) = chain.split_first()?;
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .ok()?;
        identity_of_leaf(leaf)
    }
}

/// The handshake's verifier: certificates from the CA in `ca_pem`, optional. `None` when
/// `ca_pem` holds no certificate.
pub fn client_verifier(ca_pem: &str) -> Option<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        roots.add(cert).ok()?;
    }
    if roots.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|error| tracing::warn!(%error, "client certificates will not authenticate"))
        .ok()
}

/// CN, O and serial of a (verified) leaf certificate.
fn identity_of_leaf(leaf: &CertificateDer<'_>) -> Option<ClientIdentity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = certificate.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())?;
    let groups: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    let serial = hex::encode(certificate.raw_serial());
    let serial = serial.trim_start_matches('0');
    Some(ClientIdentity {
        user: UserInfo::new(user, &groups),
        serial: if serial.is_empty() { "0" } else { serial }.to_owned(),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// A test CA: its PEM and what signs with it.
    pub struct TestCa {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// The CA of a master's data directory (`DIR/pki/ca.crt`, `ca.key`).
        pub fn of_data_dir(dir: &std::path::Path) -> TestCa {
            let pem = std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
            let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("pki/ca.key")).unwrap())
                .unwrap();
            TestCa {
                issuer: Issuer::new(crate::pki::ca_params(), key),
                pem,
            }
        }

        /// A client certificate (DER) and its key (PEM) for `cn` in `organizations`, with the
        /// extended key usages given.
        pub fn client(
            &self,
            cn: &str,
            organizations: &[&str],
            usages: Vec<ExtendedKeyUsagePurpose>,
            serial: u64,
        ) -> (CertificateDer<'static>, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            for organization in organizations {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, *organization);
            }
            params.extended_key_usages = usages;
            params.serial_number = Some(serial.into());
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.der().clone(), key.serialize_pem())
        }
    }

    #[test]
    fn certificates_from_the_ca_name_their_subject() {
        let ca = TestCa::new("cluster-ca");
        let certificates = ClientCertificates::new(&ca.pem);
        // (rcgen keeps one value per attribute: several O are tested end to end with openssl.)
        let (alice, _) = ca.client(
            "alice",
            &["dev"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            0x00ab_cdef,
        );
        let identity = certificates.identity_of(&[alice]).unwrap();
        assert_eq!(identity.user.name, "alice");
        assert_eq!(identity.user.groups, ["dev", "system:authenticated"]);
        assert_eq!(identity.serial, "abcdef");
        // No extended key usage at all: any usage, as Go's x509 (and upstream) accept.
        let (plain, _) = ca.client("bob", &[], Vec::new(), 7);
        assert_eq!(
            certificates.identity_of(&[plain]).unwrap().user.groups,
            ["system:authenticated"]
        );
    }

    #[test]
    fn certificates_from_elsewhere_or_for_servers_name_nobody() {
        let ca = TestCa::new("cluster-ca");
        let certificates = ClientCertificates::new(&ca.pem);
        let foreign = TestCa::new("cluster-ca");
        let (mallory, _) = foreign.client(
            "mallory",
            &["system:masters"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            1,
        );
        assert!(certificates.identity_of(&[mallory]).is_none());
        let (server, _) = ca.client("web", &[], vec![ExtendedKeyUsagePurpose::ServerAuth], 2);
        assert!(certificates.identity_of(&[server]).is_none());
        let (nameless, _) = ca.client("", &["dev"], Vec::new(), 3);
        assert!(certificates.identity_of(&[nameless]).is_none());
        assert!(certificates.identity_of(&[]).is_none());
        assert!(ClientCertificates::new("").identity_of(&[]).is_none());
    }
}
