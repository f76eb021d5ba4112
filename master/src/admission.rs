//! STUB admission.
#![allow(missing_docs, dead_code, unused)]
use serde_json::Value;
#[derive(Debug, Clone, Copy)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    Duplicate,
    TooLong,
    TypeInvalid,
}
#[derive(Debug, Clone)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    pub value: Option<String>,
    pub detail: String,
}
impl FieldError {
    pub fn reason(&self) -> &'static str {
        "FieldValueInvalid"
    }
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.detail)
    }
}
pub struct Structural {
    pub object: Value,
    pub unknown_fields: Vec<String>,
}
pub fn check_structure(_g: &str, _k: &str, o: &Value) -> Result<Structural, FieldError> {
    Ok(Structural {
        object: o.clone(),
        unknown_fields: vec![],
    })
}
pub fn apply_defaults(_g: &str, _k: &str, _o: &mut Value) {}
pub fn validate_create(_g: &str, _k: &str, _o: &Value) -> Vec<FieldError> {
    vec![]
}
pub fn validate_update(_g: &str, _k: &str, _n: &Value, _o: &Value) -> Vec<FieldError> {
    vec![]
}
