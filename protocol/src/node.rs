//! Facts about a Node object that every part reads the same way: its Ready condition, its
//! InternalIP, its board, the annotations bramble's parts use to talk about nodes, and the labels a
//! node may set on itself (upstream's NodeRestriction rules, shared by the master and the agent).

use std::collections::BTreeSet;
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

// ----- Labels a node may set on itself ------------------------------------------------------

/// Label namespaces a node may set under `kubernetes.io` (and their subdomains).
pub const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The `kubernetes.io` labels kubelet sets itself (`k8s.io/kubelet/pkg/apis`'s `kubeletLabels`).
pub const KUBELET_LABELS: [&str; 11] = [
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// The label namespace no node may write to: labels an administrator sets to steer workloads
/// to nodes the nodes themselves cannot claim to be.
const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// The part of a label key before `/`, or "".
fn label_namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(namespace, _)| namespace)
}

/// `namespace` is `domain` or a subdomain of it.
fn within(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Whether kubelet may set `key` (upstream's `IsKubeletLabel`).
pub fn is_kubelet_label(key: &str) -> bool {
    let namespace = label_namespace(key);
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|allowed| within(namespace, allowed))
}

/// Whether `key` is in the `kubernetes.io` or `k8s.io` namespaces (or their subdomains).
pub fn is_kubernetes_label(key: &str) -> bool {
    let namespace = label_namespace(key);
    within(namespace, "kubernetes.io") || within(namespace, "k8s.io")
}

/// The keys among `keys` a node may not set on itself, sorted (upstream's `getForbiddenLabels`
/// in the NodeRestriction admission): the master refuses them from nodes, the agent refuses them
/// in `--labels` before it joins (kubelet's `--node-labels` check).
pub fn forbidden_labels<'a>(keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    keys.into_iter()
        .filter(|key| {
            within(label_namespace(key), NODE_RESTRICTION_NAMESPACE)
                || (is_kubernetes_label(key) && !is_kubelet_label(key))
        })
        .map(str::to_owned)
        .collect()
}

/// Kubelet's start-up refusal of `--node-labels` it may not set, or `None` when all are fine.
pub fn refuse_node_labels<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let unknown: BTreeSet<String> = keys
        .into_iter()
        .filter(|key| is_kubernetes_label(key) && !is_kubelet_label(key))
        .map(str::to_owned)
        .collect();
    if unknown.is_empty() {
        return None;
    }
    Some(format!(
        "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: [{}]\n--node-labels in the 'kubernetes.io' namespace must begin with an allowed prefix ({}) or be in the specifically allowed set ({})",
        unknown.into_iter().collect::<Vec<_>>().join(" "),
        KUBELET_LABEL_NAMESPACES.join(", "),
        KUBELET_LABELS.join(", "),
    ))
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

    #[test]
    fn kubelet_labels_are_upstreams() {
        for key in KUBELET_LABELS {
            assert!(is_kubelet_label(key), "{key}");
        }
        assert!(is_kubelet_label(
            "node.kubernetes.io/exclude-from-external-load-balancers"
        ));
        assert!(is_kubelet_label("kubelet.kubernetes.io/x"));
        assert!(is_kubelet_label("a.node.kubernetes.io/x"));
        assert!(!is_kubelet_label("xnode.kubernetes.io/x"));
        assert!(!is_kubelet_label("node-role.kubernetes.io/worker"));
        assert!(!is_kubelet_label("kubernetes.io/role"));
    }

    #[test]
    fn forbidden_labels_follow_get_forbidden_labels() {
        let keys = [
            "node-restriction.kubernetes.io/x",
            "a.node-restriction.kubernetes.io/y",
            "node-role.kubernetes.io/worker",
            "k8s.io/z",
            "example.k8s.io/z",
            "kubernetes.io/hostname",
            "node.kubernetes.io/instance-type",
            "topology.kubernetes.io/zone",
            "bramble.dev/x",
            "node.bramble.dev/board",
            "plain",
            "notkubernetes.io/x",
        ];
        let forbidden: Vec<String> = forbidden_labels(keys).into_iter().collect();
        assert_eq!(
            forbidden,
            [
                "a.node-restriction.kubernetes.io/y",
                "example.k8s.io/z",
                "k8s.io/z",
                "node-restriction.kubernetes.io/x",
                "node-role.kubernetes.io/worker",
            ]
        );
    }

    #[test]
    fn kubelets_own_check_of_node_labels() {
        assert_eq!(
            refuse_node_labels(["bramble.dev/x", "node.kubernetes.io/y"]),
            None
        );
        assert_eq!(
            refuse_node_labels(["node-role.kubernetes.io/worker", "kubernetes.io/hostname", "a.k8s.io/b"]).unwrap(),
            "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: [a.k8s.io/b node-role.kubernetes.io/worker]\n--node-labels in the 'kubernetes.io' namespace must begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the specifically allowed set (beta.kubernetes.io/arch, beta.kubernetes.io/instance-type, beta.kubernetes.io/os, failure-domain.beta.kubernetes.io/region, failure-domain.beta.kubernetes.io/zone, kubernetes.io/arch, kubernetes.io/hostname, kubernetes.io/os, node.kubernetes.io/instance-type, topology.kubernetes.io/region, topology.kubernetes.io/zone)"
        );
    }
}
