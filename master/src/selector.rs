//! STUB selector.
#![allow(missing_docs, dead_code, unused)]
use serde_json::Value;
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("x")]
    X,
}
#[derive(Debug, Clone)]
pub struct LabelSelector;
impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        Ok(Self)
    }
    pub fn matches_object(&self, o: &Value) -> bool {
        true
    }
    pub fn is_everything(&self) -> bool {
        true
    }
}
#[derive(Debug, Clone)]
pub struct FieldSelector {
    r: Vec<(String, bool, String)>,
}
impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        Ok(Self { r: vec![] })
    }
    pub fn matches_object(&self, o: &Value) -> bool {
        true
    }
    pub fn check_fields(&self, g: &str, p: &str) -> Result<(), SelectorError> {
        Ok(())
    }
    pub fn requirements(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.r.iter().map(|(a, b, c)| (a.as_str(), *b, c.as_str()))
    }
}
