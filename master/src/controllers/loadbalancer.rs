//! LoadBalancer services on bare metal: an address from the cluster's pool and the one Ready
//! node that answers ARP for it, or (with no pool) every Ready node's address, as k3s does.
//!
//! ```text
//!   pool set:    status.loadBalancer.ingress = [address from the pool]
//!                  (the one it has ▸ spec.loadBalancerIP ▸ the lowest free one)
//!                annotation bramble.dev/load-balancer-node = a Ready node
//!                  (kept while Ready; else willing nodes first, Local policy prefers nodes
//!                   with a ready endpoint, then the fewest addresses, then the name)
//!   no pool:     status.loadBalancer.ingress = InternalIP of every Ready node
//!   not LB any more: status and annotation cleared
//! ```
//!
//! The agent of the named node puts the address on its uplink and announces it; when that
//! node stops being Ready, the next reconcile names another and the address moves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::view::{Key, View};
use super::{key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::{Change, EventType};

use protocol::address_pool::{format_address_pool, AddressPool};
use protocol::node::ANNOUNCING_NODE_ANNOTATION;
/// A node label that keeps a node out of load balancing (as upstream's).
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The LoadBalancer controller. Its keys are Service keys.
pub struct LoadBalancerController {
    pool: AddressPool,
    /// Services already warned that the pool is exhausted: the warning is recorded when a
    /// service runs out of luck, not on every reconcile while it waits.
    exhausted: Mutex<BTreeSet<Key>>,
}

impl LoadBalancerController {
    /// A controller handing out addresses from `pool` (none: node addresses, like k3s).
    pub fn new(pool: AddressPool) -> LoadBalancerController {
        LoadBalancerController {
            pool,
            exhausted: Mutex::new(BTreeSet::new()),
        }
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
            // At most `taken.len() + 1` steps per range, however large the range.
            self.pool.iter().find_map(|(low, high)| {
                (u32::from(*low)..=u32::from(*high))
                    .map(Ipv4Addr::from)
                    .find(|ip| !taken.contains(ip))
            })
        })
    }

    /// Records whether the pool is exhausted for a service; returns whether that is news.
    fn note_exhausted(&self, key: &Key, exhausted: bool) -> bool {
        let mut warned = self.exhausted.lock().expect("exhausted lock");
        if exhausted {
            warned.insert(key.clone())
        } else {
            warned.remove(key)
        }
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

/// Whether a change frees an address a LoadBalancer service held, so a service waiting for a
/// free one can be looked at again. A replayed change without its previous state may have, so
/// it counts.
fn frees_address(change: &Change) -> bool {
    let held = |s: &Value| {
        if is_load_balancer(s) {
            ingress_ips(s)
        } else {
            Vec::new()
        }
    };
    let before = match (&change.previous, change.event) {
        (Some(previous), _) => held(previous),
        // A deletion carries the object as it was.
        (None, EventType::Deleted) => held(&change.object),
        (None, EventType::Added) => Vec::new(),
        (None, _) => return true,
    };
    let after = if change.event == EventType::Deleted {
        Vec::new()
    } else {
        held(&change.object)
    };
    before.iter().any(|ip| !after.contains(ip))
}

/// What a node offers for load balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node's name.
    pub name: String,
    /// Its InternalIP.
    pub address: Option<Ipv4Addr>,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Whether it is being deleted.
    pub deleting: bool,
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
            address: protocol::node::internal_ipv4(node),
            ready: protocol::node::is_ready(node),
            deleting: !node["metadata"]["deletionTimestamp"].is_null(),
            reluctant: node["spec"]["unschedulable"] == true
                || node["metadata"]["labels"].get(EXCLUDE_LABEL).is_some(),
        }
    }

    /// Whether it can answer at all.
    pub fn usable(&self) -> bool {
        self.ready && !self.deleting
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
        .find(|n| Some(n.name.as_str()) == current && n.usable())
    {
        if !lost_endpoints(node, nodes, with_endpoints, prefer_endpoints) {
            return Some(node);
        }
    }
    nodes.iter().filter(|n| n.usable()).min_by_key(|n| {
        (
            n.reluctant,
            prefer_endpoints && !with_endpoints.contains(&n.name),
            load.get(&n.name).copied().unwrap_or(0),
            n.name.clone(),
        )
    })
}

/// With the Local policy a node without a ready endpoint drops the traffic it gets, so the
/// address leaves it for a node that has one, although the node is Ready.
fn lost_endpoints(
    node: &Candidate,
    nodes: &[Candidate],
    with_endpoints: &BTreeSet<String>,
    prefer_endpoints: bool,
) -> bool {
    prefer_endpoints
        && !with_endpoints.contains(&node.name)
        && nodes
            .iter()
            .any(|n| n.usable() && with_endpoints.contains(&n.name))
}

/// Why the address left `previous`, as the event about the move says it.
pub fn why_moved(
    previous: &str,
    nodes: &[Candidate],
    with_endpoints: &BTreeSet<String>,
    prefer_endpoints: bool,
) -> &'static str {
    match nodes.iter().find(|n| n.name == previous) {
        None => "is gone",
        Some(n) if n.deleting => "is being deleted",
        Some(n) if !n.ready => "is not ready",
        Some(n) if lost_endpoints(n, nodes, with_endpoints, prefer_endpoints) => {
            "has no ready endpoint of the service"
        }
        Some(_) => "is not ready",
    }
}

fn candidates(view: &View) -> Vec<Candidate> {
    let mut nodes: Vec<Candidate> = view.list("core/nodes").map(|n| Candidate::of(n)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The nodes that run a ready endpoint of the service, from its Endpoints.
fn endpoint_nodes(endpoints: &Value) -> BTreeSet<String> {
    endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["nodeName"].as_str().map(str::to_owned))
        .collect()
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
            "core/services" => {
                let key = (change.namespace.clone(), change.name.clone());
                let mut keys = Vec::new();
                if !self.pool.is_empty() && frees_address(change) {
                    // Services the exhausted pool left without an address get their chance.
                    keys.extend(
                        view.list("core/services")
                            .filter(|s| is_load_balancer(s) && ingress_ips(s).is_empty())
                            .map(|s| key_of(s))
                            .filter(|k| *k != key),
                    );
                }
                keys.push(key);
                keys
            }
            "core/nodes" => {
                // Heartbeats rewrite node status every few seconds; only readiness, address and
                // willingness decide anything here.
                let unchanged = change
                    .previous
                    .as_ref()
                    .is_some_and(|p| Candidate::of(p) == Candidate::of(&change.object));
                if unchanged {
                    Vec::new()
                } else {
                    load_balancers()
                }
            }
            "core/endpoints" => {
                let unchanged = change.event != EventType::Deleted
                    && change
                        .previous
                        .as_ref()
                        .is_some_and(|p| endpoint_nodes(p) == endpoint_nodes(&change.object));
                if unchanged {
                    return Vec::new();
                }
                view.get("core/services", &change.namespace, &change.name)
                    .filter(|s| {
                        is_load_balancer(s) && s["spec"]["externalTrafficPolicy"] == "Local"
                    })
                    .map(|s| vec![key_of(s)])
                    .unwrap_or_default()
            }
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
            self.note_exhausted(key, false);
            return Ok(Action::Done);
        };
        let (namespace, name) = (key.0.as_str(), key.1.as_str());
        if !is_load_balancer(&service) {
            // No longer a LoadBalancer: give the address back.
            self.note_exhausted(key, false);
            write_ingress(ctx, &service, Vec::new())?;
            if announcing_node(&service).is_some() {
                set_announcing_node(ctx, namespace, name, None)?;
            }
            return Ok(Action::Done);
        }

        let nodes = candidates(&ctx.view());
        if self.pool.is_empty() {
            let mut addresses: Vec<Ipv4Addr> = nodes
                .iter()
                .filter(|n| n.usable())
                .filter_map(|n| n.address)
                .collect();
            addresses.sort();
            addresses.dedup();
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
            write_ingress(ctx, &service, Vec::new())?;
            if announcing_node(&service).is_some() {
                set_announcing_node(ctx, namespace, name, None)?;
            }
            if self.note_exhausted(key, true) {
                ctx.event(
                    &service,
                    "Warning",
                    "AllocationFailed",
                    &format!(
                        "the load-balancer pool {} is exhausted: every address belongs to another LoadBalancer service",
                        format_address_pool(&self.pool)
                    ),
                );
            }
            return Ok(Action::Done);
        };
        self.note_exhausted(key, false);
        let had = ingress_ips(&service);
        write_ingress(
            ctx,
            &service,
            vec![json!({"ip": address.to_string(), "ipMode": "VIP"})],
        )?;
        if had != [address] {
            ctx.event(
                &service,
                "Normal",
                "IPAllocated",
                &format!(
                    "assigned {address} from the load-balancer pool {}",
                    format_address_pool(&self.pool)
                ),
            );
        }

        let local = service["spec"]["externalTrafficPolicy"] == "Local";
        let with_endpoints: BTreeSet<String> = if local {
            ctx.get("core/endpoints", namespace, name)?
                .map(|e| endpoint_nodes(&e))
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        let current = announcing_node(&service);
        let chosen = choose_node(current, &nodes, &with_endpoints, local, &load);
        let chosen_name = chosen.map(|n| n.name.as_str());
        if chosen_name != current {
            set_announcing_node(ctx, namespace, name, chosen_name)?;
            let why = current.map(|old| {
                format!(
                    " ({old} {})",
                    why_moved(old, &nodes, &with_endpoints, local)
                )
            });
            let why = why.unwrap_or_default();
            let (kind, message) = match chosen_name {
                Some(new) => ("Normal", format!("{address} is answered by {new}{why}")),
                None => (
                    "Warning",
                    format!("no Ready node can answer for {address}{why}"),
                ),
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
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::api::objects::{self, Part};
    use crate::api::ApiState;
    use crate::controllers::resource_of;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn node(name: &str, ready: bool, reluctant: bool) -> Candidate {
        Candidate {
            name: name.into(),
            address: None,
            ready,
            deleting: false,
            reluctant,
        }
    }

    #[test]
    fn addresses_stay_put_then_follow_requests_then_fill_from_the_bottom() {
        let controller = LoadBalancerController::new(vec![(ip("10.99.0.200"), ip("10.99.0.202"))]);
        let taken: BTreeSet<Ipv4Addr> = [ip("10.99.0.200")].into();
        let fresh = json!({"spec": {"type": "LoadBalancer"}});
        assert_eq!(
            controller.choose_address(&fresh, &taken),
            Some(ip("10.99.0.201"))
        );
        let asking = json!({"spec": {"type": "LoadBalancer", "loadBalancerIP": "10.99.0.202"}});
        assert_eq!(
            controller.choose_address(&asking, &taken),
            Some(ip("10.99.0.202"))
        );
        let asking_outside =
            json!({"spec": {"type": "LoadBalancer", "loadBalancerIP": "10.99.0.7"}});
        assert_eq!(
            controller.choose_address(&asking_outside, &taken),
            Some(ip("10.99.0.201"))
        );
        let holding = json!({"spec": {"loadBalancerIP": "10.99.0.201"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.202"}]}}});
        assert_eq!(
            controller.choose_address(&holding, &taken),
            Some(ip("10.99.0.202"))
        );
        let holding_a_taken_one =
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.200"}]}}});
        assert_eq!(
            controller.choose_address(&holding_a_taken_one, &taken),
            Some(ip("10.99.0.201"))
        );
        let full: BTreeSet<Ipv4Addr> = ["10.99.0.200", "10.99.0.201", "10.99.0.202"]
            .iter()
            .map(|s| ip(s))
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
        assert_eq!(
            pick(Some("pi-3"), &nodes),
            Some("pi-3".into()),
            "cordoning does not move an address"
        );
        assert_eq!(pick(None, &nodes), Some("pi-2".into()), "least loaded");
        assert_eq!(
            pick(Some("pi-9"), &nodes),
            Some("pi-2".into()),
            "the node is gone"
        );
        let mut pi2_down = nodes.clone();
        pi2_down[1].ready = false;
        assert_eq!(pick(Some("pi-2"), &pi2_down), Some("pi-1".into()));
        assert_eq!(why_moved("pi-2", &pi2_down, &none, false), "is not ready");
        let mut pi2_leaving = nodes.clone();
        pi2_leaving[1].deleting = true;
        assert_eq!(pick(Some("pi-2"), &pi2_leaving), Some("pi-1".into()));
        assert_eq!(
            why_moved("pi-2", &pi2_leaving, &none, false),
            "is being deleted"
        );
        assert_eq!(why_moved("pi-9", &nodes, &none, false), "is gone");
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
    fn ties_go_to_the_first_name() {
        let nodes = vec![node("pi-2", true, false), node("pi-1", true, false)];
        let chosen = choose_node(None, &nodes, &BTreeSet::new(), false, &BTreeMap::new());
        assert_eq!(chosen.map(|n| n.name.as_str()), Some("pi-1"));
    }

    #[test]
    fn local_policy_prefers_nodes_with_endpoints() {
        let nodes = vec![
            node("pi-1", true, false),
            node("pi-2", true, false),
            node("pi-3", true, false),
        ];
        let on_pi2: BTreeSet<String> = ["pi-2".to_owned()].into();
        let load: BTreeMap<String, usize> = [("pi-1".to_owned(), 1)].into();
        let chosen = choose_node(Some("pi-1"), &nodes, &on_pi2, true, &load).unwrap();
        assert_eq!(chosen.name, "pi-2", "the endpoint moved away from pi-1");
        assert_eq!(
            why_moved("pi-1", &nodes, &on_pi2, true),
            "has no ready endpoint of the service"
        );
        let chosen = choose_node(None, &nodes, &on_pi2, false, &load).unwrap();
        assert_eq!(chosen.name, "pi-2", "Cluster policy: the least loaded");
        let chosen = choose_node(None, &nodes, &BTreeSet::new(), true, &load).unwrap();
        assert_eq!(
            chosen.name, "pi-2",
            "no endpoints anywhere: any Ready node, least loaded"
        );
        let mut pi2_down = nodes.clone();
        pi2_down[1].ready = false;
        let chosen = choose_node(Some("pi-1"), &pi2_down, &on_pi2, true, &load).unwrap();
        assert_eq!(
            chosen.name, "pi-1",
            "the only endpoint is on a dead node: stay put"
        );
    }

    #[test]
    fn heartbeats_are_not_node_changes_that_matter() {
        let node = |heartbeat: &str, ready: &str| {
            json!({"metadata": {"name": "pi-1"},
                   "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}],
                              "addresses": [{"type": "InternalIP", "address": "10.99.0.11"}]}})
        };
        let before = node("2026-01-01T00:00:00Z", "True");
        assert_eq!(
            Candidate::of(&before),
            Candidate::of(&node("2026-01-01T00:00:10Z", "True"))
        );
        assert_ne!(
            Candidate::of(&before),
            Candidate::of(&node("2026-01-01T00:00:10Z", "Unknown"))
        );
        let mut cordoned = before.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert!(Candidate::of(&cordoned).reluctant);
        let mut excluded = before.clone();
        excluded["metadata"]["labels"][EXCLUDE_LABEL] = json!("");
        assert!(Candidate::of(&excluded).reluctant);
    }

    #[test]
    fn waiting_services_look_again_when_an_address_is_freed() {
        let with_ip = |kind: &str, ip: &str| {
            let ingress = if ip.is_empty() {
                json!([])
            } else {
                json!([{ "ip": ip }])
            };
            Arc::new(
                json!({"spec": {"type": kind}, "status": {"loadBalancer": {"ingress": ingress}}}),
            )
        };
        let change = |event, object, previous| Change {
            revision: 1,
            resource: "core/services".into(),
            namespace: "default".into(),
            name: "web".into(),
            event,
            object,
            previous,
        };
        let lb = with_ip("LoadBalancer", "10.99.0.200");
        assert!(frees_address(&change(EventType::Deleted, lb.clone(), None)));
        assert!(frees_address(&change(
            EventType::Modified,
            with_ip("ClusterIP", "10.99.0.200"),
            Some(lb.clone())
        )));
        assert!(!frees_address(&change(
            EventType::Modified,
            lb.clone(),
            Some(lb.clone())
        )));
        assert!(!frees_address(&change(
            EventType::Modified,
            lb.clone(),
            Some(with_ip("LoadBalancer", ""))
        )));
        assert!(!frees_address(&change(EventType::Added, lb, None)));
    }

    /// Polls the store until `check` holds; the controllers run on their own threads.
    async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = check() {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn create_node(api: &ApiState, name: &str, address: &str) {
        let node = json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": super::super::now_time()}],
                "addresses": [{"type": "InternalIP", "address": address}],
            },
        });
        objects::create_object(api, resource_of("core/nodes"), node, false).unwrap();
    }

    fn create_service(api: &ApiState, name: &str) {
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]},
        });
        objects::create_object(api, resource_of("core/services"), service, false).unwrap();
    }

    fn service_named(api: &ApiState, name: &str) -> Value {
        api.store
            .get("core/services", "default", name)
            .unwrap()
            .expect("the service exists")
    }

    fn service(api: &ApiState) -> Value {
        service_named(api, "web")
    }

    fn set_ready(api: &ApiState, node: &str, status: &str) {
        objects::update_object(
            api,
            resource_of("core/nodes"),
            "",
            node,
            Part::Status,
            false,
            |n| {
                let mut n = n.clone();
                n["status"]["conditions"][0]["status"] = json!(status);
                Ok(n)
            },
        )
        .unwrap();
    }

    fn events(api: &ApiState, reason: &str) -> Vec<Value> {
        api.store
            .list("core/events", Some("default"), None, 0, &|e: &Value| {
                e["reason"] == reason
            })
            .unwrap()
            .items
    }

    /// A master of its own in a temporary directory; the directory goes with the test.
    async fn start_master(pool: AddressPool) -> (tempfile::TempDir, Arc<ApiState>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::MasterConfig::new(dir.path().to_owned());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.cluster.load_balancer_pool = pool;
        let master = crate::Master::start(config).await.unwrap();
        let api = master.controllers.shared().api.clone();
        (dir, api)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_address_from_the_pool_moves_off_a_node_that_stops_being_ready() {
        let (_dir, api) = start_master(vec![(ip("10.99.0.200"), ip("10.99.0.201"))]).await;
        create_node(&api, "pi-1", "10.99.0.11");
        create_node(&api, "pi-2", "10.99.0.12");
        create_service(&api, "web");

        let first = eventually("an address and an announcing node", || {
            let web = service(&api);
            let node = announcing_node(&web)?.to_owned();
            (!ingress_ips(&web).is_empty()).then_some((web, node))
        })
        .await;
        assert_eq!(
            first.0["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "10.99.0.200", "ipMode": "VIP"}])
        );
        assert_eq!(first.1, "pi-1", "equal load: the first name");

        set_ready(&api, "pi-1", "False");
        let moved = eventually("the address to move to pi-2", || {
            let web = service(&api);
            (announcing_node(&web) == Some("pi-2")).then_some(web)
        })
        .await;
        assert_eq!(
            ingress_ips(&moved),
            [ip("10.99.0.200")],
            "the address stays"
        );
        let events = events(&api, "AnnouncingNode");
        assert!(
            events
                .iter()
                .any(|e| e["message"] == "10.99.0.200 is answered by pi-2 (pi-1 is not ready)"),
            "{events:?}"
        );

        objects::update_object(
            &api,
            resource_of("core/services"),
            "default",
            "web",
            Part::Main,
            false,
            |s| {
                let mut s = s.clone();
                s["spec"]["type"] = json!("ClusterIP");
                for port in s["spec"]["ports"].as_array_mut().into_iter().flatten() {
                    port.as_object_mut().unwrap().remove("nodePort");
                }
                Ok(s)
            },
        )
        .unwrap();
        eventually("a ClusterIP service to lose its address", || {
            let web = service(&api);
            (ingress_ips(&web).is_empty() && announcing_node(&web).is_none()).then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_pool_services_answer_on_every_ready_node() {
        let (_dir, api) = start_master(Vec::new()).await;
        create_node(&api, "pi-2", "10.99.0.12");
        create_node(&api, "pi-10", "10.99.0.110");
        create_node(&api, "pi-1", "10.99.0.11");
        create_service(&api, "web");
        let all = vec![ip("10.99.0.11"), ip("10.99.0.12"), ip("10.99.0.110")];
        let web = eventually("every node's address", || {
            let web = service(&api);
            (ingress_ips(&web) == all).then_some(web)
        })
        .await;
        assert_eq!(
            web["status"]["loadBalancer"]["ingress"][0],
            json!({"ip": "10.99.0.11", "ipMode": "VIP"})
        );
        assert_eq!(announcing_node(&web), None);

        set_ready(&api, "pi-2", "Unknown");
        eventually("pi-2's address to go", || {
            (ingress_ips(&service(&api)) == [ip("10.99.0.11"), ip("10.99.0.110")]).then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_waits_for_an_exhausted_pool_and_gets_the_freed_address() {
        let (_dir, api) = start_master(vec![(ip("10.99.0.200"), ip("10.99.0.200"))]).await;
        create_node(&api, "pi-1", "10.99.0.11");
        create_service(&api, "first");
        eventually("the only address", || {
            (ingress_ips(&service_named(&api, "first")) == [ip("10.99.0.200")]).then_some(())
        })
        .await;
        create_service(&api, "second");
        let warnings = eventually("a warning that the pool is exhausted", || {
            let warnings = events(&api, "AllocationFailed");
            (!warnings.is_empty()).then_some(warnings)
        })
        .await;
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0]["type"], "Warning");
        assert_eq!(warnings[0]["involvedObject"]["name"], "second");
        assert_eq!(
            warnings[0]["message"],
            "the load-balancer pool 10.99.0.200-10.99.0.200 is exhausted: every address belongs to another LoadBalancer service"
        );
        // The warning is news once, not on every reconcile while the service waits.
        objects::update_object(
            &api,
            resource_of("core/services"),
            "default",
            "second",
            Part::Main,
            false,
            |s| {
                let mut s = s.clone();
                s["metadata"]["labels"] = json!({"touched": "yes"});
                Ok(s)
            },
        )
        .unwrap();
        objects::delete_object(
            &api,
            resource_of("core/services"),
            "default",
            "first",
            &objects::DeleteOptions::default(),
        )
        .unwrap();
        // The address and its announcing node are set by separate reconciles: wait for both
        // (under qemu emulation the second can lag).
        let second = eventually("the freed address to go to the waiting service", || {
            let second = service_named(&api, "second");
            (ingress_ips(&second) == [ip("10.99.0.200")] && announcing_node(&second).is_some())
                .then_some(second)
        })
        .await;
        assert_eq!(announcing_node(&second), Some("pi-1"));
        let warnings = events(&api, "AllocationFailed");
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0]["count"], 1, "{warnings:?}");
    }
}
