//! LoadBalancer services on bare metal: an address from the cluster's pool and the one Ready
//! node that answers ARP for it, or (with no pool) every Ready node's address, as k3s does.
//!
//! ```text
//!   pool set:    status.loadBalancer.ingress = [address from the pool]
//!                annotation bramble.dev/load-balancer-node = a Ready node (kept while Ready;
//!                Local policy prefers nodes with a ready endpoint; fewest addresses first)
//!   no pool:     status.loadBalancer.ingress = InternalIP of every Ready node
//!   not LB any more: status and annotation cleared
//! ```
//!
//! The agent of the named node puts the address on its uplink and announces it; when that
//! node stops being Ready, the next reconcile names another and the address moves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::view::{Key, View};
use super::{condition, key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;

/// The annotation naming the node that answers ARP for a service's address.
pub const ANNOUNCING_NODE_ANNOTATION: &str = "bramble.dev/load-balancer-node";
/// A node label that keeps a node out of load balancing (as upstream's).
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Inclusive ranges of addresses LoadBalancer services get.
pub type AddressPool = Vec<(Ipv4Addr, Ipv4Addr)>;

/// Reads a pool range: `A.B.C.D-E.F.G.H` or a CIDR (its usable addresses).
pub fn parse_address_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let text = text.trim();
    if let Some((low, high)) = text.split_once('-') {
        let low: Ipv4Addr = low
            .trim()
            .parse()
            .map_err(|_| format!("{low:?} is not an IPv4 address"))?;
        let high: Ipv4Addr = high
            .trim()
            .parse()
            .map_err(|_| format!("{high:?} is not an IPv4 address"))?;
        if low > high {
            return Err(format!("{text}: the first address is after the last"));
        }
        return Ok((low, high));
    }
    if let Some((address, prefix)) = text.split_once('/') {
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u32 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length"))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let network = u32::from(address) & mask;
        let broadcast = network | !mask;
        return Ok(if prefix >= 31 {
            (network.into(), broadcast.into())
        } else {
            ((network + 1).into(), (broadcast - 1).into())
        });
    }
    Err(format!(
        "expected FIRST-LAST (10.99.0.200-10.99.0.250) or a CIDR (10.99.0.192/27), got {text:?}"
    ))
}

/// The LoadBalancer controller. Its keys are Service keys.
pub struct LoadBalancerController {
    pool: AddressPool,
}

impl LoadBalancerController {
    /// A controller handing out addresses from `pool` (none: node addresses, like k3s).
    pub fn new(pool: AddressPool) -> LoadBalancerController {
        LoadBalancerController { pool }
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&ip))
    }

    /// The service's address: the one it has, the one it asks for, or the lowest free one.
    fn choose_address(&self, service: &Value, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let usable = |ip: &Ipv4Addr| self.in_pool(*ip) && !taken.contains(ip);
        let current = ingress_ips(service).into_iter().find(usable);
        let requested = service["spec"]["loadBalancerIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .filter(usable);
        current.or(requested).or_else(|| {
            self.pool.iter().find_map(|(low, high)| {
                (u32::from(*low)..=u32::from(*high))
                    .map(Ipv4Addr::from)
                    .find(|ip| !taken.contains(ip))
            })
        })
    }
}

fn is_load_balancer(service: &Value) -> bool {
    service["spec"]["type"] == "LoadBalancer"
}

fn ingress_ips(service: &Value) -> Vec<Ipv4Addr> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

fn announcing_node(service: &Value) -> Option<&str> {
    service["metadata"]["annotations"][ANNOUNCING_NODE_ANNOTATION].as_str()
}

/// What a node offers for load balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node's name.
    pub name: String,
    /// Its InternalIP.
    pub address: Option<Ipv4Addr>,
    /// Whether it is Ready.
    pub ready: bool,
    /// Whether it should carry load-balanced traffic only as a last resort (cordoned or
    /// labelled out).
    pub reluctant: bool,
}

impl Candidate {
    fn of(node: &Value) -> Candidate {
        Candidate {
            name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            address: node["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str()?.parse().ok()),
            ready: condition(node, "Ready").is_some_and(|c| c["status"] == "True")
                && node["metadata"]["deletionTimestamp"].is_null(),
            reluctant: node["spec"]["unschedulable"] == true
                || node["metadata"]["labels"].get(EXCLUDE_LABEL).is_some(),
        }
    }
}

/// The node to answer for an address: the current one while it is Ready; else a Ready node,
/// preferring willing nodes, then (Local policy) nodes with a ready endpoint, then the node
/// announcing the fewest addresses, then the name.
pub fn choose_node<'a>(
    current: Option<&str>,
    nodes: &'a [Candidate],
    with_endpoints: &BTreeSet<String>,
    prefer_endpoints: bool,
    load: &BTreeMap<String, usize>,
) -> Option<&'a Candidate> {
    if let Some(node) = nodes
        .iter()
        .find(|n| Some(n.name.as_str()) == current && n.ready)
    {
        let lost_endpoints = prefer_endpoints
            && !with_endpoints.contains(&node.name)
            && nodes
                .iter()
                .any(|n| n.ready && with_endpoints.contains(&n.name));
        if !lost_endpoints {
            return Some(node);
        }
    }
    nodes.iter().filter(|n| n.ready).min_by_key(|n| {
        (
            n.reluctant,
            prefer_endpoints && !with_endpoints.contains(&n.name),
            load.get(&n.name).copied().unwrap_or(0),
            n.name.clone(),
        )
    })
}

fn candidates(view: &View) -> Vec<Candidate> {
    let mut nodes: Vec<Candidate> = view.list("core/nodes").map(|n| Candidate::of(n)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// What of a node matters here: readiness, address and willingness.
fn node_signature(node: &Value) -> Candidate {
    Candidate::of(node)
}

impl Reconciler for LoadBalancerController {
    fn name(&self) -> &'static str {
        "service-lb-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        let load_balancers = || {
            view.list("core/services")
                .filter(|s| is_load_balancer(s))
                .map(|s| key_of(s))
                .collect()
        };
        match change.resource.as_str() {
            "core/services" => vec![(change.namespace.clone(), change.name.clone())],
            "core/nodes" => {
                let unchanged = change
                    .previous
                    .as_ref()
                    .is_some_and(|p| node_signature(p) == node_signature(&change.object));
                if unchanged {
                    Vec::new()
                } else {
                    load_balancers()
                }
            }
            "core/endpoints" => view
                .get("core/services", &change.namespace, &change.name)
                .filter(|s| is_load_balancer(s) && s["spec"]["externalTrafficPolicy"] == "Local")
                .map(|s| vec![key_of(s)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("core/services")
            .filter(|s| {
                is_load_balancer(s) || announcing_node(s).is_some() || !ingress_ips(s).is_empty()
            })
            .map(|s| key_of(s))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(service) = ctx.view().get("core/services", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        let (namespace, name) = (key.0.as_str(), key.1.as_str());
        if !is_load_balancer(&service) {
            // No longer a LoadBalancer: give the address back.
            if !ingress_ips(&service).is_empty() {
                ctx.update_status("core/services", namespace, name, |s| {
                    s["status"]["loadBalancer"] = json!({});
                    Ok(())
                })?;
            }
            if announcing_node(&service).is_some() {
                set_announcing_node(ctx, namespace, name, None)?;
            }
            return Ok(Action::Done);
        }

        let nodes = candidates(&ctx.view());
        if self.pool.is_empty() {
            let mut addresses: Vec<Ipv4Addr> = nodes
                .iter()
                .filter(|n| n.ready)
                .filter_map(|n| n.address)
                .collect();
            addresses.sort();
            let ingress: Vec<Value> = addresses
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect();
            write_ingress(ctx, &service, ingress)?;
            if announcing_node(&service).is_some() {
                set_announcing_node(ctx, namespace, name, None)?;
            }
            return Ok(Action::Done);
        }

        let (taken, load) = {
            let view = ctx.view();
            let mut taken = BTreeSet::new();
            let mut load: BTreeMap<String, usize> = BTreeMap::new();
            for other in view.list("core/services") {
                if key_of(other) == *key || !is_load_balancer(other) {
                    continue;
                }
                taken.extend(ingress_ips(other));
                if let Some(node) = announcing_node(other) {
                    *load.entry(node.to_owned()).or_default() += 1;
                }
            }
            (taken, load)
        };
        let Some(address) = self.choose_address(&service, &taken) else {
            if !ingress_ips(&service).is_empty() || announcing_node(&service).is_some() {
                write_ingress(ctx, &service, Vec::new())?;
                set_announcing_node(ctx, namespace, name, None)?;
            }
            let pool: Vec<String> = self
                .pool
                .iter()
                .map(|(low, high)| format!("{low}-{high}"))
                .collect();
            ctx.event(
                &service,
                "Warning",
                "AllocationFailed",
                &format!(
                    "no free address in the load-balancer pool {}",
                    pool.join(", ")
                ),
            );
            return Ok(Action::Done);
        };
        write_ingress(
            ctx,
            &service,
            vec![json!({"ip": address.to_string(), "ipMode": "VIP"})],
        )?;

        let local = service["spec"]["externalTrafficPolicy"] == "Local";
        let with_endpoints: BTreeSet<String> = if local {
            ctx.get("core/endpoints", namespace, name)?
                .map(|e| {
                    e["subsets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
                        .filter_map(|a| a["nodeName"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        let current = announcing_node(&service);
        let chosen = choose_node(current, &nodes, &with_endpoints, local, &load);
        let chosen_name = chosen.map(|n| n.name.as_str());
        if chosen_name != current {
            set_announcing_node(ctx, namespace, name, chosen_name)?;
            let message = match (chosen_name, current) {
                (Some(new), Some(old)) => {
                    format!("{address} is answered by {new} ({old} is not ready)")
                }
                (Some(new), None) => format!("{address} is answered by {new}"),
                (None, _) => format!("no Ready node can answer for {address}"),
            };
            let kind = if chosen_name.is_some() {
                "Normal"
            } else {
                "Warning"
            };
            ctx.event(&service, kind, "AnnouncingNode", &message);
        }
        Ok(Action::Done)
    }
}

/// Sets `status.loadBalancer.ingress` when it differs.
fn write_ingress(ctx: &Context, service: &Value, ingress: Vec<Value>) -> Result<(), ApiError> {
    let current = service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if current == ingress {
        return Ok(());
    }
    let (namespace, name) = key_of(service);
    ctx.update_status("core/services", &namespace, &name, |s| {
        s["status"]["loadBalancer"] = if ingress.is_empty() {
            json!({})
        } else {
            json!({"ingress": ingress})
        };
        Ok(())
    })?;
    Ok(())
}

fn set_announcing_node(
    ctx: &Context,
    namespace: &str,
    name: &str,
    node: Option<&str>,
) -> Result<(), ApiError> {
    ctx.update("core/services", namespace, name, |s| {
        match node {
            Some(node) => {
                if !s["metadata"]["annotations"].is_object() {
                    s["metadata"]["annotations"] = json!({});
                }
                s["metadata"]["annotations"][ANNOUNCING_NODE_ANNOTATION] = json!(node);
            }
            None => {
                if let Some(annotations) = s["metadata"]["annotations"].as_object_mut() {
                    annotations.remove(ANNOUNCING_NODE_ANNOTATION);
                }
            }
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, reluctant: bool) -> Candidate {
        Candidate {
            name: name.into(),
            address: None,
            ready,
            reluctant,
        }
    }

    #[test]
    fn pool_ranges_parse_from_ranges_and_cidrs() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            parse_address_range("10.99.0.200-10.99.0.250"),
            Ok((ip("10.99.0.200"), ip("10.99.0.250")))
        );
        assert_eq!(
            parse_address_range("10.99.0.192/27"),
            Ok((ip("10.99.0.193"), ip("10.99.0.222")))
        );
        assert_eq!(
            parse_address_range("10.99.0.7/32"),
            Ok((ip("10.99.0.7"), ip("10.99.0.7")))
        );
        assert!(parse_address_range("10.99.0.9-10.99.0.1").is_err());
        assert!(parse_address_range("pool").is_err());
        assert!(parse_address_range("10.99.0.0/33").is_err());
    }

    #[test]
    fn addresses_stay_put_then_follow_requests_then_fill_from_the_bottom() {
        let controller = LoadBalancerController::new(vec![(
            "10.99.0.200".parse().unwrap(),
            "10.99.0.202".parse().unwrap(),
        )]);
        let taken: BTreeSet<Ipv4Addr> = ["10.99.0.200".parse().unwrap()].into();
        let fresh = json!({"spec": {"type": "LoadBalancer"}});
        assert_eq!(
            controller.choose_address(&fresh, &taken),
            Some("10.99.0.201".parse().unwrap())
        );
        let asking = json!({"spec": {"type": "LoadBalancer", "loadBalancerIP": "10.99.0.202"}});
        assert_eq!(
            controller.choose_address(&asking, &taken),
            Some("10.99.0.202".parse().unwrap())
        );
        let holding = json!({"spec": {"loadBalancerIP": "10.99.0.201"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.202"}]}}});
        assert_eq!(
            controller.choose_address(&holding, &taken),
            Some("10.99.0.202".parse().unwrap())
        );
        let full: BTreeSet<Ipv4Addr> = ["10.99.0.200", "10.99.0.201", "10.99.0.202"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(controller.choose_address(&fresh, &full), None);
    }

    #[test]
    fn the_announcing_node_stays_while_ready_and_moves_when_not() {
        let nodes = vec![
            node("pi-1", true, false),
            node("pi-2", true, false),
            node("pi-3", true, true),
        ];
        let none = BTreeSet::new();
        let load: BTreeMap<String, usize> = [("pi-1".to_owned(), 2)].into();
        let pick = |current, nodes: &[Candidate]| {
            choose_node(current, nodes, &none, false, &load).map(|n| n.name.clone())
        };
        assert_eq!(pick(Some("pi-1"), &nodes), Some("pi-1".into()), "sticky");
        assert_eq!(pick(None, &nodes), Some("pi-2".into()), "least loaded");
        let mut pi2_down = nodes.clone();
        pi2_down[1].ready = false;
        assert_eq!(pick(Some("pi-2"), &pi2_down), Some("pi-1".into()));
        let mut only_cordoned = nodes.clone();
        only_cordoned[0].ready = false;
        only_cordoned[1].ready = false;
        assert_eq!(
            pick(None, &only_cordoned),
            Some("pi-3".into()),
            "last resort"
        );
        let mut all_down = only_cordoned;
        all_down[2].ready = false;
        assert_eq!(pick(Some("pi-3"), &all_down), None);
    }

    #[test]
    fn local_policy_prefers_nodes_with_endpoints() {
        let nodes = vec![node("pi-1", true, false), node("pi-2", true, false)];
        let on_pi2: BTreeSet<String> = ["pi-2".to_owned()].into();
        let load = BTreeMap::new();
        let chosen = choose_node(Some("pi-1"), &nodes, &on_pi2, true, &load).unwrap();
        assert_eq!(chosen.name, "pi-2", "the endpoint moved away from pi-1");
        let chosen = choose_node(None, &nodes, &BTreeSet::new(), true, &load).unwrap();
        assert_eq!(chosen.name, "pi-1", "no endpoints anywhere: any Ready node");
    }
}
