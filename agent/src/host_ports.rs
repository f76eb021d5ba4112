//! A container's `hostPort`: connections to the node's port reach the pod, as the CNI
//! `portmap` plugin arranges it for the kubelet. Each pod with host ports gets its own nftables
//! table (`ip bramble-hostport-<uid>`) of DNAT rules, added once its network is up and deleted
//! with it, so no pod's rules can touch another's. The scheduler keeps two pods asking for the
//! same port and protocol off one node.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

use crate::services::proxy::{Nftables, ProxyError};

/// One published port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Only connections to this node address (`hostIP`); every local address when `None`.
    pub host_ip: Option<Ipv4Addr>,
    /// The node's port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
}

/// The host ports of every container of `pod` (init containers' too, as kubelet counts
/// them), in the order they appear.
pub fn of_pod(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?).ok().filter(|p| *p > 0)?;
            let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => "udp",
                "SCTP" => "sctp",
                _ => "tcp",
            };
            let host_ip = port
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .filter(|ip| !ip.is_unspecified());
            Some(HostPort {
                protocol,
                host_ip,
                host_port,
                container_port: u16::try_from(port.container_port).ok()?,
            })
        })
        .collect()
}

/// The pod's table.
fn table(pod_uid: &str) -> String {
    let uid: String = pod_uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("bramble-hostport-{uid}")
}

/// The script that (re)creates the pod's table: connections from outside (prerouting) and from
/// the node itself (output) to a local address and the port go to the pod.
pub fn script(pod_uid: &str, pod_ip: Ipv4Addr, ports: &[HostPort]) -> String {
    let table = table(pod_uid);
    let mut script = format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; }}\n\
         \tchain output {{ type nat hook output priority -100; }}\n}}\n"
    );
    for port in ports {
        let destination = match port.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".to_string(),
        };
        for chain in ["prerouting", "output"] {
            script.push_str(&format!(
                "add rule ip {table} {chain} {destination} {} dport {} dnat to {pod_ip}:{}\n",
                port.protocol, port.host_port, port.container_port
            ));
        }
    }
    script
}

/// The script that deletes the pod's table, whether or not it exists.
pub fn removal(pod_uid: &str) -> String {
    let table = table(pod_uid);
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// Publishes the pod's host ports (replacing what it had).
pub fn publish(
    nft: &dyn Nftables,
    pod_uid: &str,
    pod_ip: Ipv4Addr,
    ports: &[HostPort],
) -> Result<(), String> {
    nft.apply(&script(pod_uid, pod_ip, ports))
        .map_err(|e| describe("publishing the pod's host ports", e))
}

/// Takes the pod's host ports away.
pub fn withdraw(nft: &dyn Nftables, pod_uid: &str) -> Result<(), String> {
    nft.apply(&removal(pod_uid))
        .map_err(|e| describe("removing the pod's host ports", e))
}

fn describe(action: &str, error: ProxyError) -> String {
    match error {
        ProxyError::Refused { message } => format!("{action}: nft: {message}"),
        other => format!("{action}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn host_ports_are_read_from_every_container() {
        let pod = pod(serde_json::json!({
            "initContainers": [{"name": "i", "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}]}],
            "containers": [
                {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080},
                                        {"containerPort": 81}]},
                {"name": "b", "ports": [{"containerPort": 443, "hostPort": 8443, "hostIP": "10.0.0.5"},
                                        {"containerPort": 9, "hostPort": 9, "hostIP": "0.0.0.0"}]},
            ],
        }));
        let ports = of_pod(&pod);
        let seen: Vec<_> = ports
            .iter()
            .map(|p| (p.protocol, p.host_ip, p.host_port, p.container_port))
            .collect();
        assert_eq!(
            seen,
            [
                ("udp", None, 5353, 53),
                ("tcp", None, 8080, 80),
                ("tcp", Some(Ipv4Addr::new(10, 0, 0, 5)), 8443, 443),
                ("tcp", None, 9, 9),
            ]
        );
    }

    #[test]
    fn the_table_sends_the_nodes_port_to_the_pod() {
        let ports = [
            HostPort {
                protocol: "tcp",
                host_ip: None,
                host_port: 8080,
                container_port: 80,
            },
            HostPort {
                protocol: "udp",
                host_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                host_port: 5353,
                container_port: 53,
            },
        ];
        let script = script("1f2e-33", Ipv4Addr::new(10, 42, 0, 7), &ports);
        assert!(script.starts_with(
            "table ip bramble-hostport-1f2e33 {}\ndelete table ip bramble-hostport-1f2e33\n"
        ));
        for chain in ["prerouting", "output"] {
            assert!(script.contains(&format!(
                "add rule ip bramble-hostport-1f2e33 {chain} fib daddr type local tcp dport 8080 dnat to 10.42.0.7:80\n"
            )), "{script}");
            assert!(script.contains(&format!(
                "add rule ip bramble-hostport-1f2e33 {chain} ip daddr 10.0.0.5 udp dport 5353 dnat to 10.42.0.7:53\n"
            )), "{script}");
        }
        assert_eq!(
            removal("1f2e-33"),
            "table ip bramble-hostport-1f2e33 {}\ndelete table ip bramble-hostport-1f2e33\n"
        );
    }

    #[test]
    fn nft_accepts_the_table() {
        // Checked by the real nft when it is there (it parses without applying with -c).
        let Ok(mut child) = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipped: no nft");
            return;
        };
        let ports = [HostPort {
            protocol: "tcp",
            host_ip: None,
            host_port: 8080,
            container_port: 80,
        }];
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script("u1", Ipv4Addr::new(10, 42, 0, 7), &ports).as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: nft -c needs root");
            return;
        }
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
