//! STUB table.
#![allow(missing_docs, dead_code, unused)]
use serde_json::{json, Value};
pub struct Column {
    pub name: &'static str,
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}
impl Column {
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.type_, "format": self.format, "description": self.description, "priority": self.priority})
    }
}
pub fn columns(g: &str, p: &str) -> Vec<Column> {
    vec![Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: "",
        priority: 0,
    }]
}
pub fn cells(g: &str, p: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    vec![o["metadata"]["name"].clone()]
}
pub fn human_duration(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}
