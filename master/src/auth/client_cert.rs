//! Client certificates signed by the cluster CA: CN is the user, each O a group.
//!
//! (Being built: until then no connection authenticates by certificate.)

use rustls_pki_types::CertificateDer;

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
    _ca_pem: String,
}

impl ClientCertificates {
    /// Certificates signed by the CA in `ca_pem`.
    pub fn new(ca_pem: &str) -> ClientCertificates {
        ClientCertificates {
            _ca_pem: ca_pem.to_owned(),
        }
    }

    /// Who a verified peer certificate chain names.
    pub fn identity_of(&self, _chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        None
    }
}
