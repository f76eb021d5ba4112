//! What the node knows about services: every Service and its Endpoints, parsed once from the
//! watch into the few fields the proxy, the DNS server and the pod environment read.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

/// A Service's identity: namespace and name.
pub type ServiceKey = (String, String);

/// The annotation naming the node that answers ARP for a service's load-balancer address.
pub const ANNOUNCING_NODE_ANNOTATION: &str = "bramble.dev/load-balancer-node";

/// How a service is exposed (`spec.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIp,
    /// Also on a port of every node's address.
    NodePort,
    /// Also on a load-balancer address (or, without a pool, on every node's address).
    LoadBalancer,
    /// A DNS alias for a name outside the cluster.
    ExternalName,
}

/// A transport protocol a service port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Option<Protocol> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The lower-case name nftables and SRV records use (`tcp`, `udp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The upper-case name Kubernetes uses (`TCP`, `UDP`).
    pub fn upper(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; empty for a single unnamed port.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port on the cluster IP.
    pub port: u16,
    /// The port on every node's address, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

/// A Service as the node uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// How it is exposed.
    pub kind: ServiceType,
    /// The virtual IP; `None` for headless and ExternalName services.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Whether it is headless (`clusterIP: None`): DNS answers with the pods' IPs.
    pub headless: bool,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// With ClientIP session affinity, how long a client stays with its endpoint.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`: outside traffic goes only to this node's endpoints,
    /// keeping the client's address.
    pub external_local: bool,
    /// Load-balancer addresses from `status.loadBalancer.ingress`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs`: addresses routed to the nodes by someone else, served like
    /// load-balancer addresses.
    pub external_ips: Vec<Ipv4Addr>,
    /// The node that answers ARP for the load-balancer addresses (when they come from a pool).
    pub announcing_node: Option<String>,
    /// The name an ExternalName service aliases.
    pub external_name: Option<String>,
}

impl Service {
    /// Reads a Service object; `None` when it lacks a namespace or name.
    pub fn parse(object: &Value) -> Option<Service> {
        let spec = &object["spec"];
        let kind = match spec["type"].as_str().unwrap_or("ClusterIP") {
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            _ => ServiceType::ClusterIp,
        };
        let cluster_ip_text = spec["clusterIP"].as_str().unwrap_or_default();
        let ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                    protocol: Protocol::parse(p["protocol"].as_str())?,
                    port: u16::try_from(p["port"].as_u64()?).ok()?,
                    node_port: p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()),
                })
            })
            .collect();
        let affinity_seconds = (spec["sessionAffinity"] == "ClientIP").then(|| {
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s > 0)
                .unwrap_or(10800)
        });
        let load_balancer_ips = object["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        let external_ips = spec["externalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str()?.parse().ok())
            .collect();
        Some(Service {
            namespace: object["metadata"]["namespace"].as_str()?.to_owned(),
            name: object["metadata"]["name"].as_str()?.to_owned(),
            kind,
            cluster_ip: cluster_ip_text.parse().ok(),
            headless: cluster_ip_text == "None",
            ports,
            affinity_seconds,
            external_local: spec["externalTrafficPolicy"] == "Local",
            load_balancer_ips,
            external_ips,
            announcing_node: object["metadata"]["annotations"][ANNOUNCING_NODE_ANNOTATION]
                .as_str()
                .map(str::to_owned),
            external_name: spec["externalName"]
                .as_str()
                .filter(|_| kind == ServiceType::ExternalName)
                .map(str::to_owned),
        })
    }
}

/// One pod behind a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: Option<String>,
    /// Its DNS hostname under the service (a pod whose `subdomain` is the service's name).
    pub hostname: Option<String>,
    /// Whether it is ready to receive traffic.
    pub ready: bool,
    /// The ports it serves, by service port name: (name, port, protocol).
    pub ports: Vec<(String, u16, Protocol)>,
}

impl Endpoint {
    /// The pod port that a service port sends to, if this endpoint serves it.
    pub fn port_for(&self, port: &ServicePort) -> Option<u16> {
        self.ports
            .iter()
            .find(|(name, _, protocol)| *name == port.name && *protocol == port.protocol)
            .map(|(_, number, _)| *number)
    }
}

/// Reads the endpoints in an Endpoints object's subsets, ready and not.
pub fn parse_endpoints(object: &Value) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for subset in object["subsets"].as_array().into_iter().flatten() {
        let ports: Vec<(String, u16, Protocol)> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    u16::try_from(p["port"].as_u64()?).ok()?,
                    Protocol::parse(p["protocol"].as_str())?,
                ))
            })
            .collect();
        for (key, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for address in subset[key].as_array().into_iter().flatten() {
                let Some(ip) = address["ip"].as_str().and_then(|ip| ip.parse().ok()) else {
                    continue;
                };
                endpoints.push(Endpoint {
                    ip,
                    node: address["nodeName"].as_str().map(str::to_owned),
                    hostname: address["hostname"].as_str().map(str::to_owned),
                    ready,
                    ports: ports.clone(),
                });
            }
        }
    }
    endpoints
}

/// Every service and its endpoints, as last seen on the watches.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Services by namespace and name.
    pub services: BTreeMap<ServiceKey, Service>,
    /// Endpoints by the namespace and name of their service.
    pub endpoints: BTreeMap<ServiceKey, Vec<Endpoint>>,
    /// Whether both watches have delivered their first full list.
    pub synced: bool,
}

impl Catalog {
    /// A service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The endpoints of a service (empty when it has none).
    pub fn endpoints_of(&self, service: &Service) -> &[Endpoint] {
        self.endpoints
            .get(&(service.namespace.clone(), service.name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The ready endpoints of a service that serve `port`, with the pod port each sends to.
    pub fn ready_backends<'a>(
        &'a self,
        service: &Service,
        port: &'a ServicePort,
    ) -> impl Iterator<Item = (&'a Endpoint, u16)> + 'a {
        self.endpoints
            .get(&(service.namespace.clone(), service.name.clone()))
            .into_iter()
            .flatten()
            .filter(|e| e.ready)
            .filter_map(move |e| Some((e, e.port_for(port)?)))
    }
}

#[cfg(test)]
impl Catalog {
    /// A catalog holding the services `objects` describe, without endpoints.
    pub fn with_services(objects: impl IntoIterator<Item = Value>) -> Catalog {
        let mut catalog = Catalog::default();
        for object in objects {
            let service = Service::parse(&object).expect("a valid service");
            catalog
                .services
                .insert((service.namespace.clone(), service.name.clone()), service);
        }
        catalog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_read_their_exposure() {
        let service = Service::parse(&json!({
            "metadata": {"namespace": "shop", "name": "web",
                         "annotations": {ANNOUNCING_NODE_ANNOTATION: "pi-2"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20",
                     "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "sctp", "port": 90, "protocol": "SCTP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.200"}]}},
        }))
        .unwrap();
        assert_eq!(service.kind, ServiceType::LoadBalancer);
        assert_eq!(service.cluster_ip, Some(Ipv4Addr::new(10, 43, 0, 20)));
        assert_eq!(service.ports.len(), 1, "SCTP is left out");
        assert_eq!(service.ports[0].node_port, Some(30080));
        assert_eq!(service.affinity_seconds, Some(10800));
        assert!(service.external_local);
        assert_eq!(
            service.load_balancer_ips,
            vec![Ipv4Addr::new(10, 99, 0, 200)]
        );
        assert_eq!(service.announcing_node.as_deref(), Some("pi-2"));

        let headless = Service::parse(&json!({
            "metadata": {"namespace": "db", "name": "pg"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        }))
        .unwrap();
        assert!(headless.headless);
        assert_eq!(headless.cluster_ip, None);
        assert_eq!(headless.ports[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn endpoints_keep_readiness_and_ports() {
        let endpoints = parse_endpoints(&json!({"subsets": [
            {"addresses": [{"ip": "10.42.1.5", "nodeName": "pi-1", "hostname": "db-0"}],
             "notReadyAddresses": [{"ip": "10.42.2.7", "nodeName": "pi-2"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        ]}));
        assert_eq!(endpoints.len(), 2);
        assert!(endpoints[0].ready && !endpoints[1].ready);
        assert_eq!(endpoints[0].hostname.as_deref(), Some("db-0"));
        let port = ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
        };
        assert_eq!(endpoints[1].port_for(&port), Some(8080));
        let udp = ServicePort {
            protocol: Protocol::Udp,
            ..port
        };
        assert_eq!(endpoints[1].port_for(&udp), None);
    }
}
