//! Facts about a Node object that every part reads the same way: its Ready condition, its
//! InternalIP, its board, and the annotations bramble's parts use to talk about nodes.

use std::net::Ipv4Addr;

use serde_json::Value;

/// The SHA-256 (hex) of the agent's serving certificate, which the agent writes on its Node
/// and the master checks before it relays logs, exec or proxy requests to the agent.
pub const CERT_ANNOTATION: &str = "bramble.dev/agent-cert-sha256";
/// The Pi's model as its device tree names it ("Raspberry Pi 4 Model B Rev 1.4").
pub const BOARD_MODEL_ANNOTATION: &str = "bramble.dev/board-model";
/// The board model as a label value, for node selectors.
pub const BOARD_LABEL: &str = "node.bramble.dev/board";
/// The agent's storage directory (absolute), where the master's local-path provisioner puts
/// this node's volumes.
pub const STORAGE_DIR_ANNOTATION: &str = "bramble.dev/storage-dir";
/// The node that answers ARP for a LoadBalancer service's address (on the Service).
pub const ANNOUNCING_NODE_ANNOTATION: &str = "bramble.dev/load-balancer-node";

/// What a Node's `Ready` condition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready=True`.
    Ready,
    /// `Ready=False`.
    NotReady,
    /// No condition, or `Unknown` (the master stopped hearing from the node).
    Unknown,
}

/// The condition of `kind` in an object's `status.conditions`.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// What the node's Ready condition says.
pub fn readiness(node: &Value) -> Readiness {
    match condition(node, "Ready").and_then(|c| c["status"].as_str()) {
        Some("True") => Readiness::Ready,
        Some("False") => Readiness::NotReady,
        _ => Readiness::Unknown,
    }
}

/// Whether the node's Ready condition is `True`.
pub fn is_ready(node: &Value) -> bool {
    readiness(node) == Readiness::Ready
}

/// The node's InternalIP as written.
pub fn internal_ip(node: &Value) -> Option<&str> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()
}

/// The node's InternalIP as an IPv4 address.
pub fn internal_ipv4(node: &Value) -> Option<Ipv4Addr> {
    internal_ip(node)?.parse().ok()
}

/// The board model for people: "Pi 4 Model B Rev 1.4" from the agent's annotation, else the
/// OS image, else empty.
pub fn board(node: &Value) -> String {
    let model = node["metadata"]["annotations"][BOARD_MODEL_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    match model.strip_prefix("Raspberry ") {
        Some(short) => short.to_owned(),
        None if !model.is_empty() => model.to_owned(),
        None => node["status"]["nodeInfo"]["osImage"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// A label value from free text (a board model): letters, digits, `-_.`, at most 63
/// characters, starting and ending with a letter or digit.
pub fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect();
    trimmed
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn facts_from_a_node() {
        let node = json!({
            "metadata": {"annotations": {BOARD_MODEL_ANNOTATION: "Raspberry Pi 4 Model B Rev 1.4"}},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"},
                               {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "pi-1"},
                              {"type": "InternalIP", "address": "10.99.0.11"}],
            },
        });
        assert!(is_ready(&node));
        assert_eq!(internal_ipv4(&node), Some(Ipv4Addr::new(10, 99, 0, 11)));
        assert_eq!(board(&node), "Pi 4 Model B Rev 1.4");

        let silent = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}],
                                       "nodeInfo": {"osImage": "Debian GNU/Linux 12"}}});
        assert_eq!(readiness(&silent), Readiness::Unknown);
        assert_eq!(
            readiness(&json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
            Readiness::NotReady
        );
        assert_eq!(internal_ip(&silent), None);
        assert_eq!(board(&silent), "Debian GNU/Linux 12");
        assert_eq!(readiness(&json!("not a node")), Readiness::Unknown);
    }

    #[test]
    fn board_models_become_label_values() {
        assert_eq!(
            label_value("Raspberry Pi 4 Model B Rev 1.4"),
            "Raspberry-Pi-4-Model-B-Rev-1.4"
        );
        assert!(label_value(&"x".repeat(100)).len() <= 63);
        let long = label_value(&format!("{}.x", "x".repeat(62)));
        assert!(long.len() <= 63 && long.ends_with('x'));
    }
}
