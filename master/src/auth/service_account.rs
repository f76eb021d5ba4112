//! Service-account tokens: signed JWTs bound to a pod and expiring.
//!
//! (Being built: until then no bearer token authenticates as a service account.)

use super::UserInfo;
use crate::store::Store;

/// Signs and verifies service-account tokens.
pub struct Issuer {}

impl Issuer {
    /// The issuer whose signing key lives in `data_dir`.
    pub fn load(_data_dir: &std::path::Path) -> Result<Issuer, crate::pki::PkiError> {
        Ok(Issuer {})
    }

    /// The service account a bearer token authenticates, if it is one of ours and valid.
    pub fn authenticate(&self, _store: &Store, _token: &str) -> Option<UserInfo> {
        None
    }
}
