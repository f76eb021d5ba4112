//! Endpoints and EndpointSlices: for each Service with a selector, the IPs and ports of its pods, ready ones apart from the rest.
//!
//! Both forms are written: Endpoints for older clients, EndpointSlices (one per set of
//! resolved ports, named after the service) for kubectl's `describe service` and newer
//! proxies. Slices are owned by their Service, so the garbage collector removes them with it.
//! As upstream, a terminating pod leaves the Endpoints but stays in its slice, marked
//! `terminating` (and `serving` while still ready), until it is gone.

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
        if resolved.is_empty() && !ports.is_empty() {
            // It serves none of the service's ports (a named port it lacks): no address.
            continue;
        }
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
        // Upstream: never ready while terminating, unless not-ready addresses are published.
        let ready = publish_not_ready || (pod.ready && !pod.deleting);
        let mut endpoint = json!({
            "addresses": [pod.ip],
            "conditions": {"ready": ready, "serving": pod.ready, "terminating": pod.deleting},
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
        let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
        let (subsets, slices) = {
            let view = ctx.view();
            let finished = |p: &PodInfo| p.phase == "Succeeded" || p.phase == "Failed";
            let mut pods: Vec<&PodInfo> = view
                .pods_in(&key.0)
                .filter(|p| !p.ip.is_empty() && !finished(p) && selector.matches_map(&p.labels))
                .map(|p| p.as_ref())
                .collect();
            pods.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.name.cmp(&b.name)));
            // Terminating pods stay in the slices, marked so; Endpoints leave them out.
            let addressed: Vec<&PodInfo> = pods
                .iter()
                .copied()
                .filter(|p| !p.deleting || publish_not_ready)
                .collect();
            (subsets(&service, &addressed), slices(&service, &pods))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{key, seconds_ago, TestCluster};

    /// A pod labelled app=web serving metrics on 9100 and, if given, "http" on `http`.
    fn server(name: &str, app: &str, http: Option<i64>) -> Value {
        let mut ports = vec![json!({"name": "metrics", "containerPort": 9100})];
        if let Some(port) = http {
            ports.push(json!({"name": "http", "containerPort": port}));
        }
        json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1", "ports": ports}]},
        })
    }

    fn service(name: &str, ports: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        })
    }

    fn web_ports() -> Value {
        json!([{"name": "http", "port": 80, "targetPort": "http"},
               {"name": "metrics", "port": 9000, "targetPort": 9100}])
    }

    /// Creates a pod and does what the scheduler and its node would: bound to pi-1 at `ip`.
    fn running(cluster: &TestCluster, pod: Value, ip: &str, ready: bool) -> Value {
        let created = cluster.create("core/pods", pod);
        let since = seconds_ago(60);
        cluster.run_pod(
            &key_of(&created),
            "pi-1",
            ip,
            ready.then_some(since.as_str()),
        )
    }

    fn address(pod: &Value) -> Value {
        json!({
            "ip": pod["status"]["podIP"], "nodeName": "pi-1",
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod["metadata"]["name"],
                          "uid": pod["metadata"]["uid"]},
        })
    }

    fn endpoint(pod: &Value, ready: bool, serving: bool, terminating: bool) -> Value {
        json!({
            "addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": "pi-1",
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod["metadata"]["name"],
                          "uid": pod["metadata"]["uid"]},
        })
    }

    fn ports(http: Option<i64>) -> Value {
        let mut ports = Vec::new();
        if let Some(port) = http {
            ports.push(json!({"name": "http", "port": port, "protocol": "TCP"}));
        }
        ports.push(json!({"name": "metrics", "port": 9100, "protocol": "TCP"}));
        json!(ports)
    }

    fn subsets_of(cluster: &TestCluster, name: &str) -> Value {
        cluster
            .get("core/endpoints", &key(name))
            .expect("endpoints")["subsets"]
            .clone()
    }

    /// Slice name → (ports, endpoints).
    fn slices_of(cluster: &TestCluster) -> BTreeMap<String, (Value, Value)> {
        cluster
            .list("discovery.k8s.io/endpointslices", "default")
            .into_iter()
            .map(|s| {
                (
                    s["metadata"]["name"].as_str().unwrap().to_owned(),
                    (s["ports"].clone(), s["endpoints"].clone()),
                )
            })
            .collect()
    }

    #[test]
    fn ready_and_not_ready_pods_are_published_per_resolved_port() {
        let cluster = TestCluster::new();
        let a = running(&cluster, server("a", "web", Some(8080)), "10.42.0.2", true);
        let b = running(&cluster, server("b", "web", Some(8080)), "10.42.0.3", false);
        let c = running(&cluster, server("c", "web", Some(8081)), "10.42.0.4", true);
        let h = running(&cluster, server("h", "web", None), "10.42.0.9", true);
        cluster.create("core/pods", server("unplaced", "web", Some(8080)));
        running(&cluster, server("db", "db", Some(8080)), "10.42.0.7", true);
        let done = running(
            &cluster,
            server("done", "web", Some(8080)),
            "10.42.0.8",
            false,
        );
        cluster.set_pod_status(&key_of(&done), "Succeeded", "10.42.0.8", None);
        let e = running(&cluster, server("e", "web", Some(8080)), "10.42.0.6", true);
        cluster.delete("core/pods", &key("e"), &Default::default());
        let svc = cluster.create("core/services", service("web", web_ports()));
        let controller = EndpointsController;

        assert_eq!(cluster.reconcile(&controller, &key("web")), Action::Done);
        let endpoints = cluster.get("core/endpoints", &key("web")).unwrap();
        assert_eq!(
            endpoints["metadata"]["labels"],
            json!({"team": "a", "endpoints.bramble.dev/managed": "true"})
        );
        assert_eq!(
            endpoints["subsets"],
            json!([
                {"addresses": [address(&a)], "notReadyAddresses": [address(&b)], "ports": ports(Some(8080))},
                {"addresses": [address(&c)], "ports": ports(Some(8081))},
                {"addresses": [address(&h)], "ports": ports(None)},
            ]),
            "no unplaced, unmatched, finished or terminating pods"
        );

        let slices = cluster.list("discovery.k8s.io/endpointslices", "default");
        for slice in &slices {
            assert_eq!(
                slice["metadata"]["labels"],
                json!({SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: MANAGED_BY})
            );
            assert_eq!(
                slice["metadata"]["ownerReferences"][0]["uid"],
                svc["metadata"]["uid"]
            );
            assert_eq!(slice["addressType"], "IPv4");
        }
        let e = cluster.get("core/pods", &key_of(&e)).unwrap();
        assert_eq!(
            slices_of(&cluster),
            BTreeMap::from([
                (
                    "web".to_owned(),
                    (
                        ports(Some(8080)),
                        json!([
                            endpoint(&a, true, true, false),
                            endpoint(&b, false, false, false),
                            endpoint(&e, false, true, true),
                        ])
                    )
                ),
                (
                    "web-1".to_owned(),
                    (ports(Some(8081)), json!([endpoint(&c, true, true, false)]))
                ),
                (
                    "web-2".to_owned(),
                    (ports(None), json!([endpoint(&h, true, true, false)]))
                ),
            ]),
            "a terminating pod stays in its slice, marked so"
        );
    }

    #[test]
    fn endpoints_and_slices_follow_the_pods_and_go_with_the_service() {
        let cluster = TestCluster::new();
        let a = running(&cluster, server("a", "web", Some(8080)), "10.42.0.2", true);
        let b = running(&cluster, server("b", "web", Some(8080)), "10.42.0.3", false);
        running(&cluster, server("c", "web", Some(8081)), "10.42.0.4", true);
        cluster.create("core/services", service("web", web_ports()));
        let controller = EndpointsController;
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(slices_of(&cluster).len(), 2);

        let b = cluster.set_pod_status(&key_of(&b), "Running", "10.42.0.3", Some(&seconds_ago(0)));
        cluster.delete(
            "core/pods",
            &key("c"),
            &crate::api::objects::DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(
            cluster.queued(&controller),
            [key("web")],
            "pod changes reach the service"
        );
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(
            subsets_of(&cluster, "web"),
            json!([{"addresses": [address(&a), address(&b)], "ports": ports(Some(8080))}])
        );
        assert_eq!(
            slices_of(&cluster),
            BTreeMap::from([(
                "web".to_owned(),
                (
                    ports(Some(8080)),
                    json!([
                        endpoint(&a, true, true, false),
                        endpoint(&b, true, true, false)
                    ])
                )
            )]),
            "the slice for c's ports is gone"
        );

        cluster.delete("core/services", &key("web"), &Default::default());
        assert_eq!(cluster.queued(&controller), [key("web")]);
        cluster.reconcile(&controller, &key("web"));
        assert!(cluster.get("core/endpoints", &key("web")).is_none());
    }

    #[test]
    fn a_pod_serving_none_of_the_ports_is_no_address() {
        let cluster = TestCluster::new();
        let a = running(&cluster, server("a", "web", Some(8080)), "10.42.0.2", true);
        let h = running(&cluster, server("h", "web", None), "10.42.0.9", true);
        cluster.create(
            "core/services",
            service(
                "api",
                json!([{"name": "http", "port": 80, "targetPort": "http"}]),
            ),
        );
        cluster.reconcile(&EndpointsController, &key("api"));
        assert_eq!(
            subsets_of(&cluster, "api"),
            json!([{"addresses": [address(&a)], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]),
            "h has no port named http"
        );
        let slices: Vec<(Value, Value)> = slices_of(&cluster).into_values().collect();
        assert!(
            slices.contains(&(json!([]), json!([endpoint(&h, true, true, false)]))),
            "upstream's slices keep it, with no ports: {slices:?}"
        );
    }

    #[test]
    fn publishing_not_ready_addresses_makes_every_pod_ready() {
        let cluster = TestCluster::new();
        let a = running(&cluster, server("a", "web", Some(8080)), "10.42.0.2", false);
        let e = running(&cluster, server("e", "web", Some(8080)), "10.42.0.6", true);
        cluster.delete("core/pods", &key("e"), &Default::default());
        let mut svc = service(
            "web",
            json!([{"name": "http", "port": 80, "targetPort": "http"}]),
        );
        svc["spec"]["publishNotReadyAddresses"] = json!(true);
        cluster.create("core/services", svc);
        cluster.reconcile(&EndpointsController, &key("web"));
        assert_eq!(
            subsets_of(&cluster, "web"),
            json!([{"addresses": [address(&a), address(&e)], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]),
            "terminating pods too, as upstream"
        );
        let e = cluster.get("core/pods", &key("e")).unwrap();
        assert_eq!(
            slices_of(&cluster)["web"].1,
            json!([
                endpoint(&a, true, false, false),
                endpoint(&e, true, true, true)
            ])
        );
    }

    #[test]
    fn a_pod_is_named_only_in_the_service_its_subdomain_names() {
        let cluster = TestCluster::new();
        let mut member = server("web-0", "web", Some(8080));
        member["spec"]["hostname"] = json!("web-0");
        member["spec"]["subdomain"] = json!("nginx");
        running(&cluster, member, "10.42.0.2", true);
        let mut other = server("web-1", "web", Some(8080));
        other["spec"]["hostname"] = json!("web-1");
        other["spec"]["subdomain"] = json!("elsewhere");
        running(&cluster, other, "10.42.0.3", true);
        for name in ["nginx", "web"] {
            let mut svc = service(
                name,
                json!([{"name": "http", "port": 80, "targetPort": "http"}]),
            );
            svc["spec"]["clusterIP"] = json!("None");
            cluster.create("core/services", svc);
            cluster.reconcile(&EndpointsController, &key(name));
        }
        let hostnames = |name: &str| -> Vec<Value> {
            subsets_of(&cluster, name)[0]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["hostname"].clone())
                .collect()
        };
        assert_eq!(hostnames("nginx"), [json!("web-0"), Value::Null]);
        assert_eq!(hostnames("web"), [Value::Null, Value::Null]);
        let slices = slices_of(&cluster);
        assert_eq!(slices["nginx"].1[0]["hostname"], "web-0");
        assert!(slices["nginx"].1[1].get("hostname").is_none());
    }
}
