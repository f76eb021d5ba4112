//! The service proxy: nftables rules that send connections for a service's addresses to one
//! of its ready endpoints, in the kernel (no user-space copying on the data path).
//!
//! Everything lives in the table `ip bramble-services`. A connection's first packet is
//! matched against verdict maps and DNATed; conntrack carries the rest of the connection, so
//! a rules change never breaks connections already open and an endpoint that leaves stops
//! getting *new* connections at once.
//!
//! ```text
//!  prerouting / output (nat)
//!    └─ services: daddr.proto.port  ─vmap @service-addresses─▶ svc-… (cluster IP)
//!                                                          └▶ ext-… (load-balancer address)
//!                 local daddr, proto.port ─vmap @node-ports──▶ ext-…
//!  ext-…  Cluster policy: mark for masquerade ─▶ svc-…
//!         Local policy: pods and the node ─▶ svc-…; others ─▶ this node's endpoints only
//!  svc-…  [ClientIP affinity: saddr in @aff-… ─▶ that ep-…]
//!         numgen random mod N ─▶ ep-…
//!  ep-…   [mark for masquerade if client and endpoint share this node's bridge]
//!         [remember saddr in @aff-…] dnat to pod:port
//!  postrouting (nat): marked ─▶ masquerade
//!  forward / output / input (filter): services with no ready endpoint ─▶ reject
//! ```
//!
//! Each sync is one `nft -f` transaction that flushes and refills our chains and maps and
//! deletes the chains of services that went, so rules never half-apply. Affinity sets are
//! kept across syncs (their names depend only on the endpoint and the timeout), so clients
//! keep their endpoint while other endpoints come and go.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::catalog::{Catalog, Endpoint, Service, ServicePort, ServiceType};
use crate::network::Cidr;

/// The nftables table the proxy owns.
pub const TABLE: &str = "bramble-services";

/// The packet mark that asks postrouting to masquerade.
const MASQUERADE_MARK: u32 = 0x4000;

/// Why rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The `nft` program is not installed.
    #[error("nft not found (install nftables)")]
    Missing,
    /// The `nft` program could not be run.
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the rules.
    #[error("nft refused the service rules: {message}")]
    Refused {
        /// What nft said.
        message: String,
    },
}

/// Runs nftables scripts: the real `nft` program, or a recorder in unit tests.
pub trait Nftables: Send + Sync {
    /// Applies a script as one transaction.
    fn apply(&self, script: &str) -> Result<(), ProxyError>;
    /// The current text of a table, or `None` when it does not exist.
    fn list_table(&self, table: &str) -> Option<String>;
}

/// The `nft` program.
pub struct NftProgram;

impl Nftables for NftProgram {
    fn apply(&self, script: &str) -> Result<(), ProxyError> {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => ProxyError::Missing,
                _ => ProxyError::Spawn(error),
            })?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes())
            .map_err(ProxyError::Spawn)?;
        let output = child.wait_with_output().map_err(ProxyError::Spawn)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ProxyError::Refused {
                message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    fn list_table(&self, table: &str) -> Option<String> {
        let output = std::process::Command::new("nft")
            .args(["list", "table", "ip", table])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// What the rules need to know about this node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// This node's name (for `externalTrafficPolicy: Local`).
    pub node_name: String,
    /// This node's pod CIDR: pods on its bridge.
    pub pod_cidr: Cidr,
    /// The whole cluster's pod range, if known (traffic from pods counts as internal).
    pub cluster_cidr: Option<Cidr>,
}

/// The chains and sets the proxy installed, so the next sync can delete what went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    chains: BTreeSet<String>,
    sets: BTreeSet<String>,
}

impl Installed {
    /// Reads our chains and sets from a listing of the table (after an agent restart, so
    /// affinity sets and rules survive it).
    pub fn from_listing(listing: &str) -> Installed {
        let mut installed = Installed::default();
        for line in listing.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("chain"), Some(name)) if !BASE_CHAINS.contains(&name) => {
                    installed.chains.insert(name.to_owned());
                }
                (Some("set"), Some(name)) => {
                    installed.sets.insert(name.to_owned());
                }
                _ => {}
            }
        }
        installed
    }
}

/// Chains and maps every ruleset has; they are never deleted, only flushed.
const BASE_CHAINS: &[&str] = &[
    "prerouting",
    "output",
    "postrouting",
    "services",
    "filter-forward",
    "filter-output",
    "filter-input",
    "reject-service",
];
const MAPS: &[(&str, &str)] = &[
    ("service-addresses", "ipv4_addr . inet_proto . inet_service"),
    ("node-ports", "inet_proto . inet_service"),
    ("no-endpoints", "ipv4_addr . inet_proto . inet_service"),
    ("no-endpoint-ports", "inet_proto . inet_service"),
];

/// A short stable name for a chain or set: a prefix and a hash of what it stands for.
fn object_name(prefix: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn port_key(service: &Service, port: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        service.namespace,
        service.name,
        port.protocol.lower(),
        port.port
    )
}

/// A ruleset under construction: the script text and the objects it keeps.
struct Ruleset {
    /// Chain and set declarations (after the flushes, before deletions and rules).
    declarations: String,
    rules: String,
    wanted: Installed,
}

impl Ruleset {
    fn chain(&mut self, name: &str) {
        if self.wanted.chains.insert(name.to_owned()) {
            let _ = writeln!(self.declarations, "add chain ip {TABLE} {name}");
            let _ = writeln!(self.declarations, "flush chain ip {TABLE} {name}");
        }
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        let _ = writeln!(self.rules, "add rule ip {TABLE} {chain} {rule}");
    }

    fn element(&mut self, map: &str, element: &str) {
        let _ = writeln!(self.rules, "add element ip {TABLE} {map} {{ {element} }}");
    }
}

/// The `numgen` jump that spreads new connections evenly over `chains`.
fn spread(chains: &[String]) -> String {
    if chains.len() == 1 {
        return format!("goto {}", chains[0]);
    }
    let arms: Vec<String> = chains
        .iter()
        .enumerate()
        .map(|(i, chain)| format!("{i} : goto {chain}"))
        .collect();
    format!(
        "numgen random mod {} vmap {{ {} }}",
        chains.len(),
        arms.join(", ")
    )
}

/// The whole transaction that makes the table match `catalog`, and what it leaves installed.
pub fn ruleset(catalog: &Catalog, node: &NodeFacts, previous: &Installed) -> (String, Installed) {
    let mut set = Ruleset {
        declarations: String::new(),
        rules: String::new(),
        wanted: Installed::default(),
    };
    for service in catalog.services.values() {
        if service.kind == ServiceType::ExternalName || service.headless {
            continue;
        }
        for port in &service.ports {
            service_port_rules(&mut set, catalog, node, service, port);
        }
    }

    let mut script = String::new();
    let t = TABLE;
    let _ = writeln!(script, "add table ip {t}");
    for (map, key) in MAPS {
        let _ = writeln!(
            script,
            "add map ip {t} {map} {{ type {key} : verdict ; }}\nflush map ip {t} {map}"
        );
    }
    for (chain, hook) in [
        ("prerouting", "type nat hook prerouting priority dstnat ;"),
        ("output", "type nat hook output priority -100 ;"),
        ("postrouting", "type nat hook postrouting priority srcnat ;"),
        (
            "filter-forward",
            "type filter hook forward priority filter - 10 ;",
        ),
        (
            "filter-output",
            "type filter hook output priority filter - 10 ;",
        ),
        (
            "filter-input",
            "type filter hook input priority filter - 10 ;",
        ),
    ] {
        let _ = writeln!(
            script,
            "add chain ip {t} {chain} {{ {hook} policy accept ; }}\nflush chain ip {t} {chain}"
        );
    }
    for chain in ["services", "reject-service"] {
        let _ = writeln!(
            script,
            "add chain ip {t} {chain}\nflush chain ip {t} {chain}"
        );
    }
    // Chains that went are flushed before any is deleted: a deleted chain must not be the
    // target of a rule still in place.
    let stale_chains: Vec<&String> = previous.chains.difference(&set.wanted.chains).collect();
    for chain in &stale_chains {
        let _ = writeln!(script, "flush chain ip {t} {chain}");
    }
    script.push_str(&set.declarations);
    for chain in &stale_chains {
        let _ = writeln!(script, "delete chain ip {t} {chain}");
    }
    for stale in previous.sets.difference(&set.wanted.sets) {
        let _ = writeln!(script, "delete set ip {t} {stale}");
    }
    let mark = MASQUERADE_MARK;
    let _ = writeln!(
        script,
        "add rule ip {t} prerouting jump services\n\
         add rule ip {t} output jump services\n\
         add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-addresses\n\
         add rule ip {t} services fib daddr type local meta l4proto . th dport vmap @node-ports\n\
         add rule ip {t} postrouting meta mark & {mark:#x} == {mark:#x} meta mark set meta mark ^ {mark:#x} masquerade\n\
         add rule ip {t} filter-forward ct state new ip daddr . meta l4proto . th dport vmap @no-endpoints\n\
         add rule ip {t} filter-output ct state new ip daddr . meta l4proto . th dport vmap @no-endpoints\n\
         add rule ip {t} filter-input ct state new ip daddr . meta l4proto . th dport vmap @no-endpoints\n\
         add rule ip {t} filter-input ct state new fib daddr type local meta l4proto . th dport vmap @no-endpoint-ports\n\
         add rule ip {t} reject-service meta l4proto tcp reject with tcp reset\n\
         add rule ip {t} reject-service reject"
    );
    script.push_str(&set.rules);
    (script, set.wanted)
}

/// The script that removes every service rule (a node the chaos hook killed answers nothing).
pub fn removal() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

fn service_port_rules(
    set: &mut Ruleset,
    catalog: &Catalog,
    node: &NodeFacts,
    service: &Service,
    port: &ServicePort,
) {
    let key = port_key(service, port);
    let proto = port.protocol.lower();
    let backends: Vec<(&Endpoint, u16)> = catalog.ready_backends(service, port).collect();
    // Load-balancer addresses and node ports lead to the external chain.
    let mut external_addresses = service.external_ips.clone();
    if service.kind == ServiceType::LoadBalancer {
        external_addresses.extend(&service.load_balancer_ips);
    }
    external_addresses.sort();
    external_addresses.dedup();
    let node_port = port.node_port.filter(|_| {
        matches!(
            service.kind,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    });

    if backends.is_empty() {
        if let Some(ip) = service.cluster_ip {
            set.element(
                "no-endpoints",
                &format!("{ip} . {proto} . {} : goto reject-service", port.port),
            );
        }
        for ip in &external_addresses {
            set.element(
                "no-endpoints",
                &format!("{ip} . {proto} . {} : goto reject-service", port.port),
            );
        }
        if let Some(node_port) = node_port {
            set.element(
                "no-endpoint-ports",
                &format!("{proto} . {node_port} : goto reject-service"),
            );
        }
        return;
    }

    let service_chain = object_name("svc", &key);
    let mut endpoint_chains = Vec::new();
    let mut local_chains = Vec::new();
    let mut affinity = Vec::new();
    for (endpoint, target) in &backends {
        let endpoint_key = format!("{key}/{}:{target}", endpoint.ip);
        let chain = object_name("ep", &endpoint_key);
        set.chain(&chain);
        if node.pod_cidr.contains(endpoint.ip) {
            // The reply would not pass through this node's NAT if it went straight back over
            // the bridge, so traffic from pods on the same bridge (and a pod to itself) is
            // masqueraded.
            set.rule(
                &chain,
                &format!(
                    "ip saddr {} meta mark set meta mark | {MASQUERADE_MARK:#x}",
                    node.pod_cidr
                ),
            );
        }
        if let Some(seconds) = service.affinity_seconds {
            let affinity_set = object_name("aff", &format!("{endpoint_key}/{seconds}"));
            if set.wanted.sets.insert(affinity_set.clone()) {
                let _ = writeln!(
                    set.declarations,
                    "add set ip {TABLE} {affinity_set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ; }}"
                );
            }
            set.rule(&chain, &format!("update @{affinity_set} {{ ip saddr }}"));
            affinity.push((affinity_set, chain.clone()));
        }
        set.rule(
            &chain,
            &format!("meta l4proto {proto} dnat to {}:{target}", endpoint.ip),
        );
        if endpoint.node.as_deref() == Some(node.node_name.as_str()) {
            local_chains.push(chain.clone());
        }
        endpoint_chains.push(chain);
    }

    set.chain(&service_chain);
    for (affinity_set, chain) in &affinity {
        set.rule(
            &service_chain,
            &format!("ip saddr @{affinity_set} goto {chain}"),
        );
    }
    set.rule(&service_chain, &spread(&endpoint_chains));
    if let Some(ip) = service.cluster_ip {
        set.element(
            "service-addresses",
            &format!("{ip} . {proto} . {} : goto {service_chain}", port.port),
        );
    }

    if external_addresses.is_empty() && node_port.is_none() {
        return;
    }
    let external_chain = object_name("ext", &key);
    set.chain(&external_chain);
    if service.external_local {
        // Pods and the node itself may use any endpoint; clients from outside go only to
        // this node's endpoints, unmasqueraded, so the pod sees their address.
        if let Some(cluster) = node.cluster_cidr {
            set.rule(
                &external_chain,
                &format!("ip saddr {cluster} goto {service_chain}"),
            );
        }
        set.rule(
            &external_chain,
            &format!("fib saddr type local goto {service_chain}"),
        );
        if local_chains.is_empty() {
            set.rule(&external_chain, "drop");
        } else {
            set.rule(&external_chain, &spread(&local_chains));
        }
    } else {
        set.rule(
            &external_chain,
            &format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
        );
        set.rule(&external_chain, &format!("goto {service_chain}"));
    }
    for ip in &external_addresses {
        set.element(
            "service-addresses",
            &format!("{ip} . {proto} . {} : goto {external_chain}", port.port),
        );
    }
    if let Some(node_port) = node_port {
        set.element(
            "node-ports",
            &format!("{proto} . {node_port} : goto {external_chain}"),
        );
    }
}

/// Keeps the kernel's service rules in step with the catalog.
pub struct ServiceProxy {
    nft: Box<dyn Nftables>,
    installed: Option<Installed>,
}

impl ServiceProxy {
    /// A proxy that applies rules through `nft`.
    pub fn new(nft: Box<dyn Nftables>) -> ServiceProxy {
        ServiceProxy {
            nft,
            installed: None,
        }
    }

    /// Makes the rules match `catalog`.
    pub fn sync(&mut self, catalog: &Catalog, node: &NodeFacts) -> Result<(), ProxyError> {
        let previous = match &self.installed {
            Some(installed) => installed.clone(),
            None => self
                .nft
                .list_table(TABLE)
                .map(|listing| Installed::from_listing(&listing))
                .unwrap_or_default(),
        };
        let (script, wanted) = ruleset(catalog, node, &previous);
        match self.nft.apply(&script) {
            Ok(()) => {
                self.installed = Some(wanted);
                Ok(())
            }
            Err(error) => {
                // Start over from what the kernel has next time.
                self.installed = None;
                Err(error)
            }
        }
    }

    /// Removes every service rule.
    pub fn clear(&mut self) -> Result<(), ProxyError> {
        self.installed = None;
        self.nft.apply(&removal())?;
        self.installed = Some(Installed::default());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::catalog::parse_endpoints;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn catalog() -> Catalog {
        let mut catalog = Catalog::with_services([
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}),
            json!({"metadata": {"namespace": "default", "name": "sticky"},
                   "spec": {"clusterIP": "10.43.0.21", "sessionAffinity": "ClientIP",
                            "externalIPs": ["192.168.1.50"],
                            "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "default", "name": "lb",
                                "annotations": {"bramble.dev/load-balancer-node": "pi-1"}},
                   "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.22",
                            "externalTrafficPolicy": "Local",
                            "ports": [{"port": 80, "nodePort": 30081}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.200"}]}}}),
            json!({"metadata": {"namespace": "default", "name": "empty"},
                   "spec": {"type": "NodePort", "clusterIP": "10.43.0.23",
                            "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]}}),
            json!({"metadata": {"namespace": "default", "name": "db"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}),
        ]);
        let endpoints = |ready: serde_json::Value, port: serde_json::Value| {
            parse_endpoints(&json!({"subsets": [{"addresses": ready, "ports": [port]}]}))
        };
        let two = json!([{"ip": "10.42.1.5", "nodeName": "pi-1"}, {"ip": "10.42.2.5", "nodeName": "pi-2"}]);
        catalog.endpoints.insert(
            ("default".into(), "web".into()),
            endpoints(two.clone(), json!({"name": "http", "port": 8080})),
        );
        catalog.endpoints.insert(
            ("default".into(), "sticky".into()),
            endpoints(two.clone(), json!({"port": 8080})),
        );
        catalog.endpoints.insert(
            ("default".into(), "lb".into()),
            endpoints(two, json!({"port": 8080})),
        );
        catalog
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "pi-1".into(),
            pod_cidr: Cidr::parse("10.42.1.0/24").unwrap(),
            cluster_cidr: Cidr::parse("10.42.0.0/16"),
        }
    }

    #[test]
    fn services_become_verdict_maps_and_dnat_chains() {
        let (script, installed) = ruleset(&catalog(), &node(), &Installed::default());
        let web = object_name("svc", "default/web/tcp/80");
        assert!(script.contains(&format!("10.43.0.20 . tcp . 80 : goto {web}")));
        assert!(script.contains("numgen random mod 2 vmap"));
        assert!(script.contains("meta l4proto tcp dnat to 10.42.1.5:8080"));
        assert!(script.contains("meta l4proto tcp dnat to 10.42.2.5:8080"));
        let web_external = object_name("ext", "default/web/tcp/80");
        assert!(script.contains(&format!("tcp . 30080 : goto {web_external}")));
        // Affinity: one set per endpoint, consulted before spreading.
        assert_eq!(installed.sets.len(), 2);
        assert!(script.contains("flags dynamic,timeout ; timeout 10800s"));
        // Local policy on pi-1: outside clients reach only pi-1's endpoint.
        let lb_external = object_name("ext", "default/lb/tcp/80");
        assert!(script.contains(&format!("10.99.0.200 . tcp . 80 : goto {lb_external}")));
        let local = object_name("ep", "default/lb/tcp/80/10.42.1.5:8080");
        assert!(script.contains(&format!("add rule ip {TABLE} {lb_external} goto {local}")));
        let sticky_external = object_name("ext", "default/sticky/tcp/80");
        assert!(script.contains(&format!("192.168.1.50 . tcp . 80 : goto {sticky_external}")));
        // No ready endpoint: rejected, not black-holed.
        assert!(script.contains("10.43.0.23 . udp . 53 : goto reject-service"));
        assert!(script.contains("udp . 30053 : goto reject-service"));
        // Headless services have no rules.
        assert!(!script.contains("5432"));
    }

    #[test]
    fn services_that_go_lose_their_chains() {
        let catalog = catalog();
        let (_, before) = ruleset(&catalog, &node(), &Installed::default());
        let mut smaller = catalog.clone();
        smaller
            .services
            .remove(&("default".to_owned(), "sticky".to_owned()));
        let (script, after) = ruleset(&smaller, &node(), &before);
        let sticky = object_name("svc", "default/sticky/tcp/80");
        assert!(before.chains.contains(&sticky) && !after.chains.contains(&sticky));
        assert!(script.contains(&format!("delete chain ip {TABLE} {sticky}")));
        let flush = script
            .find(&format!("flush chain ip {TABLE} {sticky}"))
            .unwrap();
        let delete = script
            .find(&format!("delete chain ip {TABLE} {sticky}"))
            .unwrap();
        assert!(flush < delete);
        assert_eq!(after.sets.len(), 0);
        assert_eq!(script.matches("delete set").count(), 2);
    }

    #[test]
    fn a_listing_gives_back_what_was_installed() {
        let listing = "table ip bramble-services {\n\tset aff-0011 {\n\t\ttype ipv4_addr\n\t}\n\tchain prerouting {\n\t}\n\tchain svc-00aa {\n\t}\n}\n";
        let installed = Installed::from_listing(listing);
        assert_eq!(installed.chains.iter().collect::<Vec<_>>(), ["svc-00aa"]);
        assert_eq!(installed.sets.iter().collect::<Vec<_>>(), ["aff-0011"]);
    }

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Nftables for Recorder {
        fn apply(&self, script: &str) -> Result<(), ProxyError> {
            self.0.lock().unwrap().push(script.to_owned());
            Ok(())
        }
        fn list_table(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn the_proxy_remembers_what_it_installed() {
        let recorder = Recorder::default();
        let mut proxy = ServiceProxy::new(Box::new(recorder.clone()));
        let mut catalog = catalog();
        proxy.sync(&catalog, &node()).unwrap();
        catalog.services.clear();
        proxy.sync(&catalog, &node()).unwrap();
        let scripts = recorder.0.lock().unwrap();
        assert_eq!(scripts.len(), 2);
        assert!(!scripts[0].contains("delete chain"));
        assert!(scripts[1].contains("delete chain"));
    }

    /// The generated rules are valid nftables: `nft --check` parses and validates them
    /// against the kernel without changing anything (needs root, as the test suite runs).
    #[test]
    fn nft_accepts_the_rules() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: nft --check needs root");
            return;
        }
        let (script, _) = ruleset(&catalog(), &node(), &Installed::default());
        let output = std::process::Command::new("nft")
            .args(["--check", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .expect("nft runs");
        assert!(
            output.status.success(),
            "nft refused:\n{}\n{script}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
