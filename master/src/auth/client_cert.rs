//! Client certificates signed by the cluster CA: CN is the user, each O a group.
//!
//! (Being built: until then no connection authenticates by certificate.)

use rustls_pki_types::CertificateDer;

use super::UserInfo;

/// What the master checks client certificates against.
pub struct ClientCertificates {
    _ca_pem: String,
}

impl ClientCertificates {
    /// Certificates signed by the CA in `ca_pem`.
    pub fn new(ca_pem: &str) -> ClientCertificates {
        ClientCertificates {
            _ca_pem: ca_pem.to_owned(),
        }
    }

    /// The user a verified peer certificate chain names.
    pub fn user_of(&self, _chain: &[CertificateDer<'_>]) -> Option<UserInfo> {
        None
    }
}
