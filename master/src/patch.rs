//! STUB patch.
#![allow(missing_docs, dead_code, unused)]
use serde_json::Value;
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("x")]
    X,
}
pub fn apply_json_patch(t: &Value, p: &Value) -> Result<Value, PatchError> {
    Ok(t.clone())
}
pub fn apply_merge_patch(t: &Value, p: &Value) -> Result<Value, PatchError> {
    Ok(t.clone())
}
pub fn apply_strategic_merge_patch(
    t: &Value,
    p: &Value,
    g: &str,
    k: &str,
) -> Result<Value, PatchError> {
    Ok(t.clone())
}
