//! Endpoints and EndpointSlices: for each Service with a selector, the IPs and ports of its pods, ready ones apart from the rest.
//!
//! Both forms are written: Endpoints for older clients, EndpointSlices (one per set of
//! resolved ports, named after the service) for kubectl's `describe service` and newer
//! proxies. Slices are owned by their Service, so the garbage collector removes them with it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::view::{string_map, Key, PodInfo, View};
use super::{key_of, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::store::{Change, EventType};
use protocol::selector::LabelSelector;

/// The Endpoints controller. Its keys are Service keys.
pub struct EndpointsController;

fn service_selector(service: &Value) -> Option<LabelSelector> {
    let map = service["spec"]["selector"]
        .as_object()
        .filter(|m| !m.is_empty())?;
    Some(LabelSelector::from_map(map))
}

/// The pod port a service port sends to, or `None` when a named port is missing on the pod.
fn target_port(port: &Value, pod: &PodInfo) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) if !name.is_empty() => pod
            .ports
            .iter()
            .find(|(port_name, _, protocol)| {
                port_name == name && *protocol == port["protocol"].as_str().unwrap_or("TCP")
            })
            .map(|(_, number, _)| *number),
        _ => port["port"].as_i64(),
    }
}

/// Resolved ports (name, number, protocol) of a group of pods.
type PortSet = Vec<(String, i64, String)>;
/// Ready and not-ready addresses.
type Addresses = (Vec<Value>, Vec<Value>);

/// The service's ports as one pod serves them; ports naming a port the pod lacks are left out.
fn resolve_ports(ports: &[&Value], pod: &PodInfo) -> PortSet {
    ports
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str().unwrap_or_default().to_owned(),
                target_port(p, pod)?,
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            ))
        })
        .collect()
}

/// The `subsets` of the Endpoints for a service and its pods.
pub fn subsets(service: &Value, pods: &[&PodInfo]) -> Value {
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
    let ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    // Pods whose named ports resolve differently end up in different subsets.
    let mut groups: BTreeMap<PortSet, Addresses> = BTreeMap::new();
    let service_name = service["metadata"]["name"].as_str().unwrap_or_default();
    for pod in pods {
        let resolved = resolve_ports(&ports, pod);
        let mut address = json!({
            "ip": pod.ip,
            "nodeName": pod.node,
            "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
        });
        if !pod.hostname.0.is_empty() && pod.hostname.1 == service_name {
            address["hostname"] = json!(pod.hostname.0);
        }
        let entry = groups.entry(resolved).or_default();
        if pod.ready || publish_not_ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut subset = json!({});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            if !ports.is_empty() {
                subset["ports"] = json!(ports);
            }
            subset
        })
        .collect();
    json!(subsets)
}

/// Label that ties a slice to its service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming who manages a slice.
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The EndpointSlices for a service and its pods: one per distinct set of resolved ports.
pub fn slices(service: &Value, pods: &[&PodInfo]) -> Vec<Value> {
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
    let ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut groups: BTreeMap<PortSet, Vec<Value>> = BTreeMap::new();
    for pod in pods {
        let resolved = resolve_ports(&ports, pod);
        let ready = pod.ready || publish_not_ready;
        let mut endpoint = json!({
            "addresses": [pod.ip],
            "conditions": {"ready": ready, "serving": pod.ready, "terminating": false},
            "nodeName": pod.node,
            "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
        });
        if !pod.hostname.0.is_empty() && pod.hostname.1 == name {
            endpoint["hostname"] = json!(pod.hostname.0);
        }
        groups.entry(resolved).or_default().push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(PortSet::new(), Vec::new());
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(index, (ports, endpoints))| {
            let slice_name = if index == 0 { name.to_owned() } else { format!("{name}-{index}") };
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(port_name, port, protocol)| json!({"name": port_name, "port": port, "protocol": protocol}))
                .collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": service["metadata"]["namespace"],
                    "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                    "ownerReferences": [super::controller_ref(service)],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            })
        })
        .collect()
}

impl EndpointsController {
    /// Makes the stored slices of a service match `wanted`, deleting slices it no longer needs.
    fn write_slices(
        &self,
        ctx: &Context,
        namespace: &str,
        service: &str,
        wanted: Vec<Value>,
    ) -> Result<(), ApiError> {
        let ours = |slice: &Value| {
            slice["metadata"]["labels"][SERVICE_NAME_LABEL] == service
                && slice["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
        };
        let existing = ctx
            .shared
            .api
            .store
            .list(
                "discovery.k8s.io/endpointslices",
                Some(namespace),
                None,
                0,
                &ours,
            )?
            .items;
        for slice in &wanted {
            let name = slice["metadata"]["name"].as_str().unwrap_or_default();
            match existing.iter().find(|e| e["metadata"]["name"] == name) {
                None => match ctx.create("discovery.k8s.io/endpointslices", slice.clone()) {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                },
                Some(current) => {
                    if current["endpoints"] != slice["endpoints"]
                        || current["ports"] != slice["ports"]
                    {
                        let (endpoints, ports) =
                            (slice["endpoints"].clone(), slice["ports"].clone());
                        ctx.update("discovery.k8s.io/endpointslices", namespace, name, |s| {
                            s["endpoints"] = endpoints;
                            s["ports"] = ports;
                            Ok(())
                        })?;
                    }
                }
            }
        }
        for stale in existing.iter().filter(|e| {
            !wanted
                .iter()
                .any(|w| w["metadata"]["name"] == e["metadata"]["name"])
        }) {
            let name = stale["metadata"]["name"].as_str().unwrap_or_default();
            ctx.delete(
                "discovery.k8s.io/endpointslices",
                namespace,
                name,
                &DeleteOptions::default(),
            )?;
        }
        Ok(())
    }
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoint-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "core/services" => vec![(change.namespace.clone(), change.name.clone())],
            "core/pods" => {
                let labels: Vec<_> = std::iter::once(&change.object)
                    .chain(change.previous.iter())
                    .map(|o| string_map(&o["metadata"]["labels"]))
                    .collect();
                view.list_in("core/services", &change.namespace)
                    .filter(|s| {
                        service_selector(s)
                            .is_some_and(|sel| labels.iter().any(|l| sel.matches_map(l)))
                    })
                    .map(|s| key_of(s))
                    .collect()
            }
            "core/endpoints" if change.event == EventType::Deleted => {
                vec![(change.namespace.clone(), change.name.clone())]
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("core/services").map(|s| key_of(s)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let service = ctx.view().get("core/services", &key.0, &key.1).cloned();
        let existing = ctx.get("core/endpoints", &key.0, &key.1)?;
        let Some(service) = service else {
            // The service went: so do the endpoints the controller made for it.
            if existing
                .is_some_and(|e| e["metadata"]["labels"]["endpoints.bramble.dev/managed"] == "true")
            {
                ctx.delete("core/endpoints", &key.0, &key.1, &DeleteOptions::default())?;
            }
            return Ok(Action::Done);
        };
        let Some(selector) = service_selector(&service) else {
            return Ok(Action::Done);
        };
        let (subsets, slices) = {
            let view = ctx.view();
            let mut pods: Vec<&PodInfo> = view
                .pods_in(&key.0)
                .filter(|p| !p.ip.is_empty() && p.is_active() && selector.matches_map(&p.labels))
                .map(|p| p.as_ref())
                .collect();
            pods.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
            (subsets(&service, &pods), slices(&service, &pods))
        };
        self.write_slices(ctx, &key.0, &key.1, slices)?;
        let mut labels = service["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert("endpoints.bramble.dev/managed".into(), json!("true"));
        match existing {
            None => {
                let endpoints = json!({
                    "apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": key.1, "namespace": key.0, "labels": labels},
                    "subsets": subsets,
                });
                match ctx.create("core/endpoints", endpoints) {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {
                        return Ok(Action::RequeueAfter(std::time::Duration::from_millis(10)))
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(current) => {
                if current["subsets"] != subsets || current["metadata"]["labels"] != json!(labels) {
                    ctx.update("core/endpoints", &key.0, &key.1, |e| {
                        e["subsets"] = subsets;
                        e["metadata"]["labels"] = json!(labels);
                        Ok(())
                    })?;
                }
            }
        }
        Ok(Action::Done)
    }
}
