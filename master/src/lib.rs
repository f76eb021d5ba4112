//! The bramble master: a Kubernetes-compatible API server on SQLite, in one low-memory process.
//!
//! Start-up order: open the store, prepare the CA and certificates, bind the port, create the
//! built-in namespaces and the `kubernetes` service, write the admin kubeconfig, start the
//! controllers and the scheduler, then serve. Background upkeep compacts history, checkpoints
//! volatile objects, expires old events and re-creates missing built-in objects.
#![deny(missing_docs)]

pub(crate) mod admission;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod certificates;
pub(crate) mod controllers;
pub(crate) mod conversion;
pub(crate) mod cron;
pub mod encryption;
pub(crate) mod lifecycle;
pub(crate) mod limit_range;
pub(crate) mod metrics;
pub(crate) mod patch;
pub(crate) mod pki;
pub mod pod_security;
pub(crate) mod priority;
pub(crate) mod protobuf;
pub(crate) mod rbac;
pub(crate) mod resources;
pub(crate) mod service_account_admission;
pub(crate) mod store;
pub(crate) mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use api::ApiState;
use protocol::address_pool::format_address_pool;
pub use protocol::address_pool::{parse_address_pool, parse_address_range, AddressPool};
use protocol::error::error_chain;
use store::{Store, StoreError};

/// How quickly the cluster notices failures and reacts, as a named profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTimings {
    /// `default` or `demo`.
    pub profile: &'static str,
    /// How often nodes renew their lease (published to nodes in `kube-system/bramble-settings`).
    pub node_lease_renew: Duration,
    /// How long a node may stay silent before it is NotReady (upstream: 40 s).
    pub node_monitor_grace: Duration,
    /// How often every node's health is checked.
    pub node_monitor_period: Duration,
    /// How long pods stay on an unreachable or not-ready node (upstream: 300 s).
    pub default_toleration_seconds: i64,
    /// How often autoscalers look at usage (upstream: 15 s).
    pub hpa_sync: Duration,
    /// How often nodes report usage.
    pub metrics_interval: Duration,
    /// How soon an unschedulable pod is tried again without any change.
    pub scheduler_retry: Duration,
}

impl HealthTimings {
    /// Upstream-like timings: a dead node is noticed after 40 s and its pods move after 5 min.
    pub fn standard() -> Self {
        HealthTimings {
            profile: "default",
            node_lease_renew: Duration::from_secs(10),
            node_monitor_grace: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            default_toleration_seconds: 300,
            hpa_sync: Duration::from_secs(15),
            metrics_interval: Duration::from_secs(15),
            scheduler_retry: Duration::from_secs(10),
        }
    }

    /// For the stage: a dead node is noticed within 2 s and its pods are replaced at once.
    pub fn demo() -> Self {
        HealthTimings {
            profile: "demo",
            node_lease_renew: Duration::from_millis(400),
            node_monitor_grace: Duration::from_millis(1500),
            node_monitor_period: Duration::from_millis(250),
            default_toleration_seconds: 0,
            hpa_sync: Duration::from_secs(3),
            metrics_interval: Duration::from_secs(2),
            scheduler_retry: Duration::from_secs(1),
        }
    }

    /// The profile of a name, if it is one.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::standard()),
            "demo" => Some(Self::demo()),
            _ => None,
        }
    }
}

/// Cluster-wide settings the API server and controllers apply.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The range cluster IPs of services come from.
    pub service_cidr: String,
    /// The range node ports come from, inclusive.
    pub node_port_range: (i64, i64),
    /// The DNS domain of the cluster.
    pub cluster_domain: String,
    /// The range pod IPs come from; each node gets a slice of it.
    pub cluster_cidr: String,
    /// The prefix length of each node's slice of `cluster_cidr`.
    pub node_cidr_mask: u32,
    /// Failure detection and sync timings.
    pub timings: HealthTimings,
    /// Addresses LoadBalancer services get on the LAN (inclusive ranges); empty: services
    /// answer on every node's address instead.
    pub load_balancer_pool: AddressPool,
    /// Pod Security admission's cluster-wide defaults and exemptions.
    pub pod_security: pod_security::Configuration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            service_cidr: "10.43.0.0/16".into(),
            node_port_range: (30000, 32767),
            cluster_domain: "cluster.local".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask: 24,
            timings: HealthTimings::standard(),
            load_balancer_pool: Vec::new(),
            pod_security: pod_security::Configuration::default(),
        }
    }
}

/// How to run the master.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// Where the database, certificates and kubeconfig live.
    pub data_dir: PathBuf,
    /// The address to serve HTTPS on.
    pub listen: SocketAddr,
    /// The address clients should use, if not the listen address (or 127.0.0.1 for 0.0.0.0).
    pub advertise_address: Option<String>,
    /// More DNS names or IPs for the server certificate.
    pub extra_names: Vec<String>,
    /// Cluster-wide settings.
    pub cluster: ClusterSettings,
    /// How many revisions of history watches can resume from.
    pub history_revisions: u64,
    /// How often volatile objects (leases, events) are written to disk.
    pub checkpoint_interval: Duration,
}

impl MasterConfig {
    /// The settings a `bramble master` (or `bramble up`) command line gives.
    pub fn from_cluster_args(
        data_dir: PathBuf,
        listen: SocketAddr,
        cluster: protocol::command_line::ClusterArgs,
    ) -> MasterConfig {
        let mut config = MasterConfig::new(data_dir);
        config.listen = listen;
        config.advertise_address = cluster.advertise_address;
        config.extra_names = cluster.tls_san;
        config.cluster = ClusterSettings {
            service_cidr: cluster.service_cidr,
            node_port_range: cluster.node_port_range,
            cluster_domain: cluster.cluster_domain,
            cluster_cidr: cluster.cluster_cidr,
            node_cidr_mask: cluster.node_cidr_mask,
            load_balancer_pool: cluster.load_balancer_pool,
            pod_security: pod_security::Configuration::from_args(&cluster.pod_security),
            // clap accepts only the known profiles; an unknown one gets the defaults.
            timings: HealthTimings::named(&cluster.profile).unwrap_or_else(|| {
                HealthTimings::named("default").expect("the default profile exists")
            }),
        };
        config.checkpoint_interval = Duration::from_secs(cluster.checkpoint_seconds.max(1));
        config
    }

    /// Defaults for a data directory: port 6443 on all addresses.
    pub fn new(data_dir: PathBuf) -> Self {
        MasterConfig {
            data_dir,
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            advertise_address: None,
            extra_names: Vec::new(),
            cluster: ClusterSettings::default(),
            history_revisions: store::DEFAULT_HISTORY_REVISIONS,
            checkpoint_interval: Duration::from_secs(300),
        }
    }

    /// The URL clients use to reach the API server.
    pub fn server_url(&self) -> String {
        let host = match &self.advertise_address {
            Some(address) => address.clone(),
            None if self.listen.ip().is_unspecified() => "127.0.0.1".into(),
            None => self.listen.ip().to_string(),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("https://{host}:{}", self.listen.port())
    }
}

/// Why the master could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The data directory cannot be created or written.
    #[error("the data directory {} is not usable", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the store")]
    Store(#[source] StoreError),
    /// The keys that encrypt secrets at rest could not be prepared.
    #[error("cannot prepare the encryption of secrets at rest")]
    Encryption(#[source] encryption::EncryptionError),
    /// Certificates or tokens could not be prepared.
    #[error("cannot prepare certificates and credentials")]
    Pki(#[source] pki::PkiError),
    /// The TLS configuration was rejected.
    #[error("cannot configure TLS")]
    Tls(#[source] rustls::Error),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address} (is another master or program using the port?)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The built-in objects could not be created.
    #[error("cannot create the built-in objects: {message}")]
    Bootstrap {
        /// What failed.
        message: String,
    },
}

/// A started master, before it serves.
pub struct Master {
    config: MasterConfig,
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Where the admin kubeconfig was written.
    pub kubeconfig_path: PathBuf,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The controllers and the scheduler, running on their own threads.
    pub controllers: controllers::Runtime,
}

impl Master {
    /// The URL clients and agents use to reach this master.
    pub fn server_url(&self) -> String {
        self.config.server_url()
    }

    /// Opens the store, prepares credentials, binds the port, creates built-in objects and
    /// writes the admin kubeconfig.
    pub async fn start(mut config: MasterConfig) -> Result<Master, MasterError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| MasterError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let probe = data_dir.join(".write-test");
        std::fs::write(&probe, b"ok")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| MasterError::DataDir {
                path: data_dir.clone(),
                source,
            })?;

        let history = config.history_revisions;
        let store = {
            let data_dir = data_dir.clone();
            tokio::task::spawn_blocking(move || {
                let lock =
                    encryption::FileLock::data_dir(&data_dir).map_err(MasterError::Encryption)?;
                let (mut store, _) = open_encrypted_store(&data_dir, history)?;
                store.hold(lock);
                Ok::<_, MasterError>(store)
            })
            .await
            .map_err(|e| MasterError::Bootstrap {
                message: e.to_string(),
            })??
        };
        let store = Arc::new(store);

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Bind {
                address: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| MasterError::Bind {
            address: config.listen,
            source,
        })?;
        config.listen = local_addr;

        let names = certificate_names(&config);
        let credentials = pki::ensure_credentials(&data_dir, &names).map_err(MasterError::Pki)?;
        let acceptor = tls_acceptor(&credentials)?;

        let nodes = api::node_auth::NodeCredentials::load(
            &data_dir,
            &credentials.ca_pem,
            &config.server_url(),
        )
        .map_err(MasterError::Pki)?;
        let state = Arc::new(ApiState {
            store: store.clone(),
            auth: {
                let mut auth = auth::AuthState::load(
                    &data_dir,
                    &credentials.ca_pem,
                    Some(&credentials.admin_token),
                )
                .map_err(MasterError::Pki)?;
                auth.service_accounts.configure(
                    &auth::service_account::default_issuer(&config.cluster.cluster_domain),
                    &config.server_url(),
                );
                auth
            },
            rbac: rbac::Authorizer::default(),
            cluster: config.cluster.clone(),
            allocation: std::sync::Mutex::new(()),
            admission: std::sync::Mutex::new(()),
            metrics: Arc::new(metrics::MetricsRegistry::default()),
            node_client: match api::NodeClient::new(
                &credentials.agent_client_cert_pem,
                &credentials.agent_client_key_pem,
            ) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(%error, "kubectl logs and exec will not work");
                    None
                }
            },
            nodes,
        });
        {
            let state = state.clone();
            let api_endpoint = api_endpoint(&config);
            tokio::task::spawn_blocking(move || bootstrap(&state, api_endpoint))
                .await
                .map_err(|e| MasterError::Bootstrap {
                    message: e.to_string(),
                })??;
        }

        let kubeconfig_path = data_dir.join("admin.kubeconfig");
        let kubeconfig = pki::kubeconfig(
            "bramble",
            &config.server_url(),
            &credentials.ca_pem,
            "admin",
            &credentials.admin_token,
        );
        pki::write_private(&kubeconfig_path, kubeconfig.as_bytes()).map_err(MasterError::Pki)?;
        let controllers = controllers::Runtime::start(
            state.clone(),
            config.cluster.timings,
            state.metrics.clone(),
        );
        Ok(Master {
            controllers,
            config,
            state,
            listener,
            acceptor,
            kubeconfig_path,
            local_addr,
        })
    }

    /// Serves until `shutdown` completes, then writes volatile objects to disk.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), MasterError> {
        let store = self.state.store.clone();
        let upkeep = tokio::spawn(upkeep(
            self.state.clone(),
            api_endpoint(&self.config),
            self.config.checkpoint_interval,
        ));
        let server = tokio::spawn(api::serve(
            self.listener,
            self.acceptor,
            self.state,
            api::ServeLimits::default(),
        ));
        shutdown.await;
        server.abort();
        upkeep.abort();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.checkpoint_volatile() {
                tracing::error!(error = %error_chain(&error), "final checkpoint failed");
            }
        })
        .await
        .ok();
        Ok(())
    }
}

/// Opens the store of `data_dir` with secrets encrypted at rest: loads (or creates) the keys,
/// rewrites every secret row not sealed by the current key, and drops the keys no row uses any
/// more. The caller holds the data directory's lock (`encryption.rs` explains why).
fn open_encrypted_store(
    data_dir: &std::path::Path,
    history: u64,
) -> Result<(Store, store::Migration), MasterError> {
    let keys = encryption::Keyring::load_or_create(data_dir).map_err(MasterError::Encryption)?;
    let current = keys.current().to_owned();
    let listed = keys.names().len();
    let volatile = resources::volatile_storage_keys();
    let volatile: Vec<&str> = volatile.iter().map(String::as_str).collect();
    let store = Store::open_encrypted(&data_dir.join("store.db"), &volatile, history, keys)
        .map_err(MasterError::Store)?;
    let migration = store.migrate_encryption().map_err(MasterError::Store)?;
    if migration.rewritten > 0 {
        tracing::info!(
            rewritten = migration.rewritten,
            key = %current,
            "secrets rewritten under the current encryption key"
        );
    }
    if listed > 1 {
        let _key_file =
            encryption::FileLock::key_file(data_dir).map_err(MasterError::Encryption)?;
        // Read again under the key file's lock: a rotation may have added a key since.
        let mut keys =
            encryption::Keyring::load_or_create(data_dir).map_err(MasterError::Encryption)?;
        let before = keys.names().len();
        keys.retain_used(&migration.keys_in_use, &current);
        if keys.names().len() < before {
            keys.save(data_dir).map_err(MasterError::Encryption)?;
            tracing::info!(keys = ?keys, "dropped encryption keys no secret uses any more");
        }
    }
    Ok((store, migration))
}

/// What [`rotate_encryption_key`] did.
#[derive(Debug)]
pub enum Rotation {
    /// No master ran: every secret was rewritten under the new key and older keys dropped.
    Rewritten {
        /// The new key's name.
        key: String,
        /// Rows (secret versions, history included) rewritten.
        rewritten: usize,
    },
    /// A master holds the data directory: the new key is listed first and the master rewrites
    /// the secrets under it at its next start; until then it keeps using the key it started
    /// with, which stays listed.
    Deferred {
        /// The new key's name.
        key: String,
    },
}

/// Adds a new key, first in `DIR/pki/encryption-keys`, and rewrites every secret under it now
/// if no master runs on `data_dir`, or at the master's next start if one does.
pub fn rotate_encryption_key(data_dir: &std::path::Path) -> Result<Rotation, MasterError> {
    if !data_dir.join("store.db").exists() {
        return Err(MasterError::DataDir {
            path: data_dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no store.db: not the data directory of a master",
            ),
        });
    }
    let lock = match encryption::FileLock::data_dir(data_dir) {
        Ok(lock) => Some(lock),
        Err(encryption::EncryptionError::Busy { .. }) => None,
        Err(error) => return Err(MasterError::Encryption(error)),
    };
    let key = {
        let _key_file =
            encryption::FileLock::key_file(data_dir).map_err(MasterError::Encryption)?;
        let mut keys =
            encryption::Keyring::load_or_create(data_dir).map_err(MasterError::Encryption)?;
        let key = keys
            .add_new_first()
            .map_err(MasterError::Encryption)?
            .to_owned();
        keys.save(data_dir).map_err(MasterError::Encryption)?;
        key
    };
    let Some(lock) = lock else {
        return Ok(Rotation::Deferred { key });
    };
    let (mut store, migration) = open_encrypted_store(data_dir, store::DEFAULT_HISTORY_REVISIONS)?;
    store.hold(lock);
    Ok(Rotation::Rewritten {
        key,
        rewritten: migration.rewritten,
    })
}

fn certificate_names(config: &MasterConfig) -> Vec<String> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", config.cluster.cluster_domain),
    ];
    if let Some(ip) = lifecycle::first_service_ip(&config.cluster.service_cidr) {
        names.push(ip.to_string());
    }
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let hostname = hostname.trim();
        if !hostname.is_empty() {
            names.push(hostname.to_owned());
        }
    }
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    names.extend(config.advertise_address.iter().cloned());
    names.extend(config.extra_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

fn tls_acceptor(
    credentials: &pki::ServerCredentials,
) -> Result<tokio_rustls::TlsAcceptor, MasterError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
        .map_err(|e| MasterError::Tls(rustls::Error::General(format!("server key: {e}"))))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(MasterError::Tls)?;
    // Clients may show a certificate from the cluster CA (see `auth::client_cert`).
    let builder = match auth::client_cert::client_verifier(&credentials.ca_pem) {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(MasterError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Where pods reach the API server: the advertised (or listen) address when it is one pods
/// can route to, not loopback or "any".
fn api_endpoint(config: &MasterConfig) -> Option<(std::net::Ipv4Addr, u16)> {
    let ip = match &config.advertise_address {
        Some(address) => address.parse().ok()?,
        None => match config.listen.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => return None,
        },
    };
    (!ip.is_loopback() && !ip.is_unspecified()).then_some((ip, config.listen.port()))
}

/// Creates what every cluster has (the system objects, see `ensure_system_objects`), points
/// the `kubernetes` endpoints at this API server, and publishes the settings and the join token
/// nodes read.
fn bootstrap(
    state: &ApiState,
    api_endpoint: Option<(std::net::Ipv4Addr, u16)>,
) -> Result<(), MasterError> {
    let fail = |what: &str, error: api::error::ApiError| MasterError::Bootstrap {
        message: format!("{what}: {}", error.message),
    };
    ensure_system_objects(state, api_endpoint)?;
    rbac::start(state).map_err(|e| fail("the default RBAC roles and bindings", e))?;
    if let Some(endpoints) = kubernetes_endpoints(api_endpoint) {
        // The master may have moved (a new address or port): the service follows it.
        create_or_set(state, "Endpoints", endpoints, "subsets")
            .map_err(|e| fail("the kubernetes endpoints", e))?;
    }
    publish_settings(state).map_err(|e| fail("kube-system/bramble-settings", e))?;
    publish_join_token(state).map_err(|e| fail("kube-system/bramble-join-token", e))?;
    create_default_storage_class(state).map_err(|e| fail("the local-path StorageClass", e))?;
    Ok(())
}

/// Creates the default StorageClass `local-path` (as k3s ships one) when the cluster has none of
/// that name: claims without a class get a directory on the node their pod runs on.
fn create_default_storage_class(state: &ApiState) -> Result<(), api::error::ApiError> {
    use controllers::volumes::{DEFAULT_CLASS, LOCAL_PATH};
    let classes =
        resources::by_kind("storage.k8s.io", "StorageClass").expect("storage classes are served");
    let class = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path", "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": LOCAL_PATH,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    match api::objects::create_object(state, classes, class, false) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the system objects that are missing, as upstream's bootstrap controllers do at start
/// and then periodically: the built-in namespaces with their default service accounts, and the
/// `kubernetes` service with its endpoint (this API server, so pods can use the service as
/// their in-cluster API address). Existing objects are left as they are.
fn ensure_system_objects(
    state: &ApiState,
    api_endpoint: Option<(std::net::Ipv4Addr, u16)>,
) -> Result<(), MasterError> {
    let fail = |what: &str, error: api::error::ApiError| MasterError::Bootstrap {
        message: format!("{what}: {}", error.message),
    };
    let namespaces = resources::by_kind("", "Namespace").expect("namespaces are served");
    for name in lifecycle::IMMORTAL_NAMESPACES
        .iter()
        .chain(&["kube-node-lease"])
    {
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match api::objects::create_object(state, namespaces, namespace, false) {
            Ok(_) => {}
            Err(e) if e.code == 409 => lifecycle::ensure_default_service_account(state, name),
            Err(e) => return Err(fail(name, e)),
        }
    }
    let services = resources::by_kind("", "Service").expect("services are served");
    if let Some(ip) = lifecycle::first_service_ip(&state.cluster.service_cidr) {
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                     "targetPort": api_endpoint.map_or(6443, |(_, port)| port)}]},
        });
        match api::objects::create_object(state, services, service, false) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(fail("the kubernetes service", e)),
        }
    }
    priority::ensure_system_classes(state).map_err(|e| fail("the system priority classes", e))?;
    let endpoints = resources::by_kind("", "Endpoints").expect("endpoints are served");
    if let Some(object) = kubernetes_endpoints(api_endpoint) {
        match api::objects::create_object(state, endpoints, object, false) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(fail("the kubernetes endpoints", e)),
        }
    }
    Ok(())
}

/// The `default/kubernetes` Endpoints: this API server, when pods can reach it.
fn kubernetes_endpoints(api_endpoint: Option<(std::net::Ipv4Addr, u16)>) -> Option<Value> {
    let (ip, port) = api_endpoint?;
    let subsets = json!([{
        "addresses": [{"ip": ip.to_string()}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }]);
    Some(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    }))
}

/// Writes `kube-system/bramble-join-token`, a Secret (as kubeadm keeps its bootstrap tokens):
/// `token` is the pinned form agents join with, `secret` the bare one bramble.toml takes. The
/// dashboard shows it in its help; `kubectl -n kube-system get secret bramble-join-token`
/// reads it. Nodes cannot read it (they read only the secrets of their own pods).
fn publish_join_token(state: &ApiState) -> Result<(), api::error::ApiError> {
    use base64::Engine;
    let token = state.nodes.join_token();
    let secret = token.rsplit('.').next().unwrap_or_default();
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let object = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "bramble-join-token", "namespace": "kube-system"},
        "data": {"token": encode(&token), "secret": encode(secret)},
    });
    create_or_set(state, "Secret", object, "data")
}

/// Writes `kube-system/bramble-settings`: the timings nodes follow (lease renewal, usage
/// reports), so agents and simulated nodes match the master's profile.
fn publish_settings(state: &ApiState) -> Result<(), api::error::ApiError> {
    let timings = state.cluster.timings;
    let data = json!({
        "profile": timings.profile,
        "nodeLeaseRenewSeconds": timings.node_lease_renew.as_secs_f64().to_string(),
        "nodeMonitorGraceSeconds": timings.node_monitor_grace.as_secs_f64().to_string(),
        "metricsIntervalSeconds": timings.metrics_interval.as_secs_f64().to_string(),
        "clusterCIDR": state.cluster.cluster_cidr,
        "serviceCIDR": state.cluster.service_cidr,
        "clusterDomain": state.cluster.cluster_domain,
        "loadBalancerPool": format_address_pool(&state.cluster.load_balancer_pool),
    });
    let settings = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bramble-settings", "namespace": "kube-system"},
        "data": data,
    });
    create_or_set(state, "ConfigMap", settings, "data")
}

/// Creates a core object the master owns, or, when it exists, sets its `field` to the new
/// value (the rest, such as labels users added, stays).
fn create_or_set(
    state: &ApiState,
    kind: &str,
    object: Value,
    field: &str,
) -> Result<(), api::error::ApiError> {
    let resource = resources::by_kind("", kind).expect("the master's own kinds are served");
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let value = object[field].clone();
    match api::objects::create_object(state, resource, object, false) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => state
            .store
            .update::<api::error::ApiError>(&resource.storage_key(), &namespace, &name, |current| {
                let mut current = current.clone();
                current[field] = value.clone();
                Ok(current)
            })
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// How long events are kept, as upstream's default `--event-ttl`.
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// How often missing system objects are re-created (upstream: the `kubernetes` service every
/// 10 s, the system namespaces every minute).
const SYSTEM_OBJECTS_INTERVAL: Duration = Duration::from_secs(10);

async fn upkeep(
    state: Arc<ApiState>,
    api_endpoint: Option<(std::net::Ipv4Addr, u16)>,
    checkpoint_interval: Duration,
) {
    let store = state.store.clone();
    let mut compaction = tokio::time::interval(Duration::from_secs(60));
    let mut checkpoint = tokio::time::interval(checkpoint_interval);
    let mut system_objects = tokio::time::interval(SYSTEM_OBJECTS_INTERVAL);
    checkpoint.tick().await;
    system_objects.tick().await;
    loop {
        tokio::select! {
            _ = system_objects.tick() => {
                let state = state.clone();
                let result = tokio::task::spawn_blocking(move || ensure_system_objects(&state, api_endpoint)).await;
                if let Ok(Err(error)) = result {
                    tracing::error!(error = %error_chain(&error), "cannot re-create the built-in objects");
                }
            }
            _ = compaction.tick() => {
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    store.compact()?;
                    store.reserve_revisions()?;
                    let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::try_from(EVENT_TTL).unwrap_or_default();
                    store.expire_volatile("core/events", &|event: &Value| event_time(event).is_some_and(|t| t < cutoff));
                    release_free_memory();
                    Ok::<_, StoreError>(())
                }).await;
                if let Ok(Err(error)) = result {
                    tracing::error!(error = %error_chain(&error), "store upkeep failed");
                }
            }
            _ = checkpoint.tick() => {
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.checkpoint_volatile()).await;
                if let Ok(Err(error)) = result {
                    tracing::error!(error = %error_chain(&error), "checkpoint of leases and events failed");
                }
            }
        }
    }
}

/// Hands memory freed after large responses back to the system, so RSS follows the live data.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn event_time(event: &Value) -> Option<jiff::Timestamp> {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .filter_map(|field| event.get(*field).and_then(Value::as_str))
        .chain(
            event
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str),
        )
        .find_map(|text| text.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_system_objects_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = MasterConfig::new(dir.path().to_owned());
        config.listen = "127.0.0.1:0".parse().unwrap();
        let master = Master::start(config).await.unwrap();
        let state = master.controllers.shared().api.clone();
        tokio::task::spawn_blocking(move || {
            // As an older master let `kubectl delete namespace --all` do.
            for (key, namespace, name) in [
                ("core/services", "default", "kubernetes"),
                ("core/serviceaccounts", "default", "default"),
                ("core/namespaces", "", "default"),
                ("core/namespaces", "", "kube-node-lease"),
            ] {
                state
                    .store
                    .delete::<StoreError>(key, namespace, name, |_| Ok(()))
                    .unwrap();
            }
            ensure_system_objects(&state, None).unwrap();
            let get = |key: &str, namespace: &str, name: &str| {
                state.store.get(key, namespace, name).unwrap()
            };
            assert_eq!(
                get("core/namespaces", "", "default").unwrap()["status"]["phase"],
                "Active"
            );
            assert!(get("core/namespaces", "", "kube-node-lease").is_some());
            assert!(get("core/serviceaccounts", "default", "default").is_some());
            let service = get("core/services", "default", "kubernetes").unwrap();
            assert_eq!(service["spec"]["clusterIP"], "10.43.0.1");
        })
        .await
        .unwrap();
    }
}
