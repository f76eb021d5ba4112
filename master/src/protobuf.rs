//! STUB protobuf.
#![allow(missing_docs, dead_code, unused)]
pub const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("x")]
    X,
}
pub fn decode_object(b: &[u8]) -> Result<serde_json::Value, ProtobufError> {
    Err(ProtobufError::X)
}
