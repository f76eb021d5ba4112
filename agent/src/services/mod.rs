//! Services on a node: the catalog of services and endpoints the agent follows, the kernel
//! proxy that sends service traffic to pods, the cluster DNS server, load-balancer addresses
//! and the service environment variables of new pods.
//!
//! ```text
//!  watch services ──┐                  ┌─▶ proxy: one nft transaction per change (debounced)
//!                   ├─▶ Catalog ─notify┼─▶ load-balancer addresses this node answers for
//!  watch endpoints ─┘   (RwLock)       ├─▶ DNS server (reads the catalog per query)
//!                                      └─▶ pod workers: service env vars, resolv.conf
//! ```

pub mod announce;
pub mod catalog;
pub mod dns;
pub mod env;
pub mod proxy;
pub mod resolv;

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};

use catalog::{parse_endpoints, Catalog, Service, ServiceKey};
use protocol::client::{Client, Event};
use proxy::{NftProgram, NodeFacts, ServiceProxy};
use resolv::ClusterDns;

/// How often the rules are rewritten even without changes, repairing outside meddling.
const RESYNC: Duration = Duration::from_secs(60);
/// How long changes are gathered before one sync (a rolling update changes many at once).
const DEBOUNCE: Duration = Duration::from_millis(5);

/// What the node's service machinery needs.
pub struct ServicesConfig {
    /// The API client.
    pub client: Arc<Client>,
    /// This node, for the rules.
    pub node: NodeFacts,
    /// This node's address (its uplink holds load-balancer addresses).
    pub node_ip: Ipv4Addr,
    /// Where pods find cluster DNS (the bridge address, port 53).
    pub dns: ClusterDns,
    /// The node's resolv.conf text (upstream resolvers; pods with `dnsPolicy: Default`).
    pub node_resolv_conf: String,
    /// Set while the chaos hook holds the node down: no rules, no addresses.
    pub dead: Arc<AtomicBool>,
}

/// The node's view of services, shared with the pod workers.
pub struct NodeServices {
    catalog: Arc<RwLock<Catalog>>,
    changed: Arc<Notify>,
    synced: watch::Receiver<bool>,
    dns: ClusterDns,
    node_resolv_conf: String,
}

impl NodeServices {
    /// Asks for a sync now (the chaos hook changed the node's state).
    pub fn nudge(&self) {
        self.changed.notify_one();
    }

    /// Waits (a bounded time) until the first lists of services and endpoints arrived, so
    /// a container that starts right after the agent still gets its service variables.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s)).await;
    }

    /// The service environment variables of a container in `namespace`; with
    /// `enableServiceLinks: false` only the API server's.
    pub fn env(&self, namespace: &str, service_links: bool) -> Vec<(String, String)> {
        let catalog = self.catalog.read().expect("catalog lock");
        env::service_env(&catalog, namespace, service_links)
    }

    /// The resolv.conf of a pod.
    pub fn resolv_conf(&self, pod: &k8s_openapi::api::core::v1::Pod) -> String {
        resolv::pod_resolv_conf(pod, &self.node_resolv_conf, Some(&self.dns))
    }

    /// The cluster's DNS domain.
    pub fn cluster_domain(&self) -> String {
        self.dns.domain.clone()
    }
}

/// Starts following services and endpoints, the proxy, the load-balancer addresses and the
/// DNS server. Runs until the agent stops.
pub fn start(config: ServicesConfig) -> Arc<NodeServices> {
    let catalog: Arc<RwLock<Catalog>> = Arc::default();
    let changed = Arc::new(Notify::new());
    let (synced_tx, synced) = watch::channel(false);
    let services = Arc::new(NodeServices {
        catalog: catalog.clone(),
        changed: changed.clone(),
        synced,
        dns: config.dns.clone(),
        node_resolv_conf: config.node_resolv_conf.clone(),
    });
    let lists_done = Arc::new(Mutex::new((false, false)));
    let synced_tx = Arc::new(synced_tx);

    for collection in [Collection::Services, Collection::Endpoints] {
        let client = config.client.clone();
        let catalog = catalog.clone();
        let changed = changed.clone();
        let lists_done = lists_done.clone();
        let synced_tx = synced_tx.clone();
        tokio::spawn(async move {
            let mut listed: HashSet<ServiceKey> = HashSet::new();
            client
                .follow(collection.path(), |event| {
                    match event {
                        Event::Init => listed.clear(),
                        Event::InitDone => {
                            let mut catalog = catalog.write().expect("catalog lock");
                            collection.retain(&mut catalog, &listed);
                            let mut done = lists_done.lock().expect("lists lock");
                            match collection {
                                Collection::Services => done.0 = true,
                                Collection::Endpoints => done.1 = true,
                            }
                            catalog.synced = done.0 && done.1;
                            if catalog.synced {
                                let _ = synced_tx.send(true);
                            }
                        }
                        Event::InitApply(object) | Event::Apply(object) | Event::Delete(object) => {
                            let Some(key) = object_key(object) else {
                                return;
                            };
                            listed.insert(key.clone());
                            let deleted = matches!(event, Event::Delete(_));
                            let mut catalog = catalog.write().expect("catalog lock");
                            collection.apply(&mut catalog, deleted, key, object);
                        }
                    }
                    changed.notify_one();
                })
                .await;
        });
    }

    let listen = SocketAddr::from((config.dns.server, 53));
    let dns_config = dns::DnsConfig {
        cluster_domain: config.dns.domain.clone(),
        upstreams: dns::upstreams_from_resolv_conf(&config.node_resolv_conf),
    };
    {
        // DNS runs on a thread and runtime of its own: pod start-up and teardown do blocking
        // work on the agent's runtime, and name lookups must not wait for it (a resolver
        // that misses one answer waits five seconds before asking again).
        let catalog = catalog.clone();
        let spawned = std::thread::Builder::new()
            .name("cluster-dns".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "cluster DNS cannot start");
                        return;
                    }
                };
                tracing::info!(%listen, "cluster DNS serving");
                if let Err(error) = runtime.block_on(dns::serve(listen, dns_config, catalog)) {
                    tracing::error!(%listen, error = %protocol::error::error_chain(&error), "cluster DNS stopped");
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cluster DNS cannot start");
        }
    }

    tokio::spawn(sync_loop(config, catalog, changed));
    services
}

/// The two collections the node follows.
#[derive(Clone, Copy)]
enum Collection {
    Services,
    Endpoints,
}

impl Collection {
    fn path(self) -> &'static str {
        match self {
            Collection::Services => "/api/v1/services",
            Collection::Endpoints => "/api/v1/endpoints",
        }
    }

    fn apply(self, catalog: &mut Catalog, deleted: bool, key: ServiceKey, object: &Value) {
        match (self, deleted) {
            (Collection::Services, true) => {
                catalog.services.remove(&key);
            }
            (Collection::Services, false) => match Service::parse(object) {
                Some(service) => {
                    catalog.services.insert(key, service);
                }
                None => {
                    catalog.services.remove(&key);
                }
            },
            (Collection::Endpoints, true) => {
                catalog.endpoints.remove(&key);
            }
            (Collection::Endpoints, false) => {
                catalog.endpoints.insert(key, parse_endpoints(object));
            }
        }
    }

    /// After a full list: drops what the list no longer holds.
    fn retain(self, catalog: &mut Catalog, listed: &HashSet<ServiceKey>) {
        match self {
            Collection::Services => catalog.services.retain(|k, _| listed.contains(k)),
            Collection::Endpoints => catalog.endpoints.retain(|k, _| listed.contains(k)),
        }
    }
}

fn object_key(object: &Value) -> Option<ServiceKey> {
    Some((
        object["metadata"]["namespace"].as_str()?.to_owned(),
        object["metadata"]["name"].as_str()?.to_owned(),
    ))
}

/// Applies the catalog to the kernel after every change: the proxy rules, then the
/// load-balancer addresses this node answers for.
async fn sync_loop(config: ServicesConfig, catalog: Arc<RwLock<Catalog>>, changed: Arc<Notify>) {
    let proxy = Arc::new(Mutex::new(ServiceProxy::new(Box::new(NftProgram))));
    let mut failing = false;
    let mut held: Option<BTreeSet<Ipv4Addr>> = None;
    loop {
        let wait = if failing {
            Duration::from_secs(1)
        } else {
            RESYNC
        };
        if tokio::time::timeout(wait, changed.notified())
            .await
            .is_err()
        {
            // A quiet minute: check the addresses too, in case someone removed them.
            held = None;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let snapshot = {
            let catalog = catalog.read().expect("catalog lock");
            if !catalog.synced {
                continue;
            }
            catalog.clone()
        };
        let dead = config.dead.load(Ordering::SeqCst);
        let node = config.node.clone();
        let proxy = proxy.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut proxy = proxy.lock().expect("proxy lock");
            if dead {
                proxy.clear()
            } else {
                proxy.sync(&snapshot, &node)
            }
            .map(|()| snapshot)
        })
        .await
        .expect("the proxy does not panic");
        let snapshot = match applied {
            Ok(snapshot) => snapshot,
            Err(error) => {
                if !failing {
                    tracing::error!(error = %protocol::error::error_chain(&error), "service rules not applied; retrying");
                }
                failing = true;
                continue;
            }
        };
        let announced: BTreeSet<Ipv4Addr> = if dead {
            BTreeSet::new()
        } else {
            snapshot
                .services
                .values()
                .filter(|s| s.announcing_node.as_deref() == Some(config.node.node_name.as_str()))
                .flat_map(|s| s.load_balancer_ips.iter().copied())
                .collect()
        };
        if held.as_ref() == Some(&announced) {
            failing = false;
            continue;
        }
        match announce::hold_addresses(config.node_ip, &announced).await {
            Ok(_) => {
                failing = false;
                held = Some(announced);
            }
            Err(error) => {
                if !failing {
                    tracing::error!(error = %protocol::error::error_chain(&error), "load-balancer addresses not updated; retrying");
                }
                failing = true;
            }
        }
    }
}
