//! Impersonation: `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid` and
//! `Impersonate-Extra-*` headers (`kubectl --as`, `--as-group`).
//!
//! (Being built: until then a request that asks to impersonate is refused.)

use http::Request;

use super::UserInfo;
use crate::api::error::ApiError;
use crate::api::ApiState;

/// The user a request acts as: `user` itself, or whom its headers impersonate.
pub fn apply<B>(
    _state: &ApiState,
    request: &Request<B>,
    user: UserInfo,
) -> Result<UserInfo, ApiError> {
    let asks = request
        .headers()
        .keys()
        .any(|name| name.as_str().starts_with("impersonate-"));
    if asks {
        return Err(ApiError::forbidden("impersonation is not supported yet"));
    }
    Ok(user)
}
