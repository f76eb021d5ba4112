//! The cluster's certificate authority, the API server's certificate, bearer tokens and the admin kubeconfig.
//!
//! Everything is generated on first start and kept in the data directory:
//!
//! ```text
//!   DIR/pki/ca.crt  ca.key         the cluster CA (clients trust it)
//!   DIR/pki/server.crt server.key  the API server's certificate, re-issued when its names change
//!   DIR/pki/agent-client.crt .key  the master's client certificate for agents (logs, exec)
//!   DIR/pki/sa.key                 the service-account token signing key (auth::service_account)
//!   DIR/admin.token                the admin bearer token
//!   DIR/admin.kubeconfig           kubectl config with the CA embedded
//! ```
//!
//! Pis have no real-time clock and may boot in 1970, so certificates are valid from 2000 on
//! rather than from "now".

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Errors while preparing certificates and credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file in the data directory could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("cannot {action}")]
    Certificate {
        /// What was being done.
        action: &'static str,
        /// What rcgen said.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM file in the data directory is damaged.
    #[error("{} holds no usable PEM data", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
    },
}

/// The PEM-encoded credentials the API server needs.
pub struct ServerCredentials {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate chain, PEM.
    pub cert_pem: String,
    /// The server private key, PEM.
    pub key_pem: String,
    /// The admin bearer token.
    pub admin_token: String,
    /// The client certificate the master shows agents, PEM.
    pub agent_client_cert_pem: String,
    /// Its private key, PEM.
    pub agent_client_key_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cert_error(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { action, source }
}

/// Writes a file readable only by its owner, atomically (temporary file then rename), so a
/// power cut never leaves half a key behind.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The CA's parameters (its subject, as issuer of what it signs).
pub(crate) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "bramble-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 100);
    params
}

fn validity(params: &mut CertificateParams, years: i32) {
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2026 + years, 1, 1);
}

/// Loads the credentials from `pki_dir`, creating what is missing. `names` are the DNS names and
/// IP addresses the server certificate must cover; a certificate missing one is re-issued.
pub fn ensure_credentials(
    data_dir: &Path,
    names: &[String],
) -> Result<ServerCredentials, PkiError> {
    let pki = data_dir.join("pki");
    fs::create_dir_all(&pki).map_err(io(&pki))?;
    let ca_crt = pki.join("ca.crt");
    let ca_key = pki.join("ca.key");
    if !ca_crt.exists() || !ca_key.exists() {
        let key = KeyPair::generate().map_err(cert_error("generate the CA key"))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(cert_error("sign the CA certificate"))?;
        write_private(&ca_key, key.serialize_pem().as_bytes())?;
        write_private(&ca_crt, cert.pem().as_bytes())?;
    }
    let ca_pem = fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    let ca_key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;

    let server_crt = pki.join("server.crt");
    let server_key = pki.join("server.key");
    let names_file = pki.join("server.names");
    let issued_for = fs::read_to_string(&names_file).unwrap_or_default();
    let issued: Vec<&str> = issued_for.lines().collect();
    let covered = names.iter().all(|n| issued.contains(&n.as_str()));
    if !covered || !server_crt.exists() || !server_key.exists() {
        let ca_key_pair = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::BadPem {
            path: ca_key.clone(),
        })?;
        // The issuer is the CA's subject and key; rebuilding its parameters avoids parsing the
        // certificate back.
        let issuer = Issuer::new(ca_params(), ca_key_pair);
        let key = KeyPair::generate().map_err(cert_error("generate the server key"))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(cert_error("use the server's names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "bramble-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 20);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_error("sign the server certificate"))?;
        write_private(&server_key, key.serialize_pem().as_bytes())?;
        write_private(&server_crt, cert.pem().as_bytes())?;
        write_private(&names_file, names.join("\n").as_bytes())?;
    }

    let client_crt = pki.join("agent-client.crt");
    let client_key = pki.join("agent-client.key");
    if !client_crt.exists() || !client_key.exists() {
        let ca_key_pair = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::BadPem {
            path: ca_key.clone(),
        })?;
        let issuer = Issuer::new(ca_params(), ca_key_pair);
        let key = KeyPair::generate().map_err(cert_error("generate the agent client key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "bramble-master");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, 20);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_error("sign the agent client certificate"))?;
        write_private(&client_key, key.serialize_pem().as_bytes())?;
        write_private(&client_crt, cert.pem().as_bytes())?;
    }

    let token_file = data_dir.join("admin.token");
    if !token_file.exists() {
        write_private(&token_file, new_token().as_bytes())?;
    }
    let admin_token = fs::read_to_string(&token_file)
        .map_err(io(&token_file))?
        .trim()
        .to_owned();
    Ok(ServerCredentials {
        ca_pem,
        cert_pem: fs::read_to_string(&server_crt).map_err(io(&server_crt))?,
        key_pem: fs::read_to_string(&server_key).map_err(io(&server_key))?,
        admin_token,
        agent_client_cert_pem: fs::read_to_string(&client_crt).map_err(io(&client_crt))?,
        agent_client_key_pem: fs::read_to_string(&client_key).map_err(io(&client_key))?,
    })
}

/// A fresh random bearer token.
pub fn new_token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// A kubeconfig for `user` with `token`, trusting the cluster CA, pointing at `server`.
pub fn kubeconfig(cluster: &str, server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
    namespace: default
current-context: {cluster}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_created_once_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = ensure_credentials(dir.path(), &names).unwrap();
        let again = ensure_credentials(dir.path(), &names).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        assert_eq!(first.admin_token, again.admin_token);
        let more = vec!["localhost".to_owned(), "10.0.0.5".to_owned()];
        let reissued = ensure_credentials(dir.path(), &more).unwrap();
        assert_ne!(first.cert_pem, reissued.cert_pem);
        assert_eq!(first.ca_pem, reissued.ca_pem);
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
