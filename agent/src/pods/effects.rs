//! What a pod worker does to the node and the cluster, behind small traits: the container
//! runtime, the pod network, the image store, the API server, services and the clock. The agent
//! wires in the real ones; unit tests use fakes.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::host_ports::HostPort;
use crate::image::{Credentials, Image, ImageError, ImageStore, PullPolicy};
use crate::network::{NetworkError, PodNetwork};
use crate::runtime::containers::{Attempt, AttemptState, ContainerRunner};
use crate::runtime::exec::ExecOutput;
use crate::runtime::monitor::Exited;
use crate::runtime::sandbox;
use crate::runtime::spec::{ContainerPlan, PodNamespaces};
use crate::services::proxy::NftProgram;
use crate::services::NodeServices;

/// A boxed future, so that the traits can be used as `dyn` objects.
pub type Effect<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the API server did not do what the worker asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object does not exist (any more).
    #[error("not found")]
    NotFound,
    /// A precondition (the pod's UID) did not hold.
    #[error("conflict")]
    Conflict,
    /// Anything else: unreachable, refused, unreadable.
    #[error("API request failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The API calls a pod worker makes, with the node's credentials.
pub trait PodApi: Send + Sync {
    /// Merge-patches the pod's status subresource.
    fn patch_pod_status<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        status: &'a Value,
    ) -> Effect<'a, Result<(), ApiError>>;
    /// Deletes the pod at once, if it still has `uid`.
    fn delete_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> Effect<'a, Result<(), ApiError>>;
    /// Records an event.
    fn create_event<'a>(
        &'a self,
        namespace: &'a str,
        event: &'a Value,
    ) -> Effect<'a, Result<(), ApiError>>;
    /// An object the pod refers to (`kind` is the plural resource: config maps, secrets,
    /// claims; with an empty `namespace` a cluster-scoped one: persistent volumes), `None`
    /// when absent.
    fn get_object<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
    ) -> Effect<'a, Result<Option<Value>, ApiError>>;
    /// Asks for a token of service account `account` (`serviceaccounts/{name}/token`);
    /// `request` is the TokenRequest, the answer the TokenRequest with its status.
    fn create_token<'a>(
        &'a self,
        namespace: &'a str,
        account: &'a str,
        request: &'a Value,
    ) -> Effect<'a, Result<Value, ApiError>>;
}

// The one place that knows the worker's API calls are made with the agent's `Client`.
mod client_api {
    use super::{ApiError, Effect, PodApi};
    use protocol::client::{Client, ClientError};
    use serde_json::{json, Value};

    fn api_error(error: ClientError) -> ApiError {
        match error.code() {
            Some(404) => ApiError::NotFound,
            Some(409) => ApiError::Conflict,
            _ => ApiError::Failed(Box::new(error)),
        }
    }

    /// A write whose answer the worker does not need, only whether it was done.
    fn done(answer: Result<Value, ClientError>) -> Result<(), ApiError> {
        answer.map(drop).map_err(api_error)
    }

    impl PodApi for Client {
        fn patch_pod_status<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
            status: &'a Value,
        ) -> Effect<'a, Result<(), ApiError>> {
            Box::pin(async move {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
                done(self.merge_patch(&path, &json!({ "status": status })).await)
            })
        }

        fn delete_pod<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
            uid: &'a str,
        ) -> Effect<'a, Result<(), ApiError>> {
            Box::pin(async move {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
                let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
                done(self.delete(&path, &options).await)
            })
        }

        fn create_event<'a>(
            &'a self,
            namespace: &'a str,
            event: &'a Value,
        ) -> Effect<'a, Result<(), ApiError>> {
            Box::pin(async move {
                let path = format!("/api/v1/namespaces/{namespace}/events");
                done(self.create(&path, event).await)
            })
        }

        fn get_object<'a>(
            &'a self,
            namespace: &'a str,
            kind: &'a str,
            name: &'a str,
        ) -> Effect<'a, Result<Option<Value>, ApiError>> {
            Box::pin(async move {
                let path = match namespace {
                    "" => format!("/api/v1/{kind}/{name}"),
                    namespace => format!("/api/v1/namespaces/{namespace}/{kind}/{name}"),
                };
                match self.get(&path).await.map_err(api_error) {
                    Ok(object) => Ok(Some(object)),
                    Err(ApiError::NotFound) => Ok(None),
                    Err(error) => Err(error),
                }
            })
        }

        fn create_token<'a>(
            &'a self,
            namespace: &'a str,
            account: &'a str,
            request: &'a Value,
        ) -> Effect<'a, Result<Value, ApiError>> {
            Box::pin(async move {
                let path =
                    format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token");
                self.create(&path, request).await.map_err(api_error)
            })
        }
    }
}

/// Why a container could not be started.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// What the runtime said.
    pub message: String,
}

/// Runs containers and holds pods' namespaces; [`ContainerRunner`] is the real one.
pub trait ContainerRuntime: Send + Sync {
    /// Every attempt recorded for a pod, oldest first per container.
    fn attempts(&self, pod_dir: &Path) -> Vec<Attempt>;
    /// What an attempt is doing.
    fn state(&self, attempt: &Attempt) -> AttemptState;
    /// Starts an attempt; returns once it runs. A failure is recorded as the attempt's exit
    /// (reason `StartError`), so it counts as a restart.
    fn start<'a>(
        &'a self,
        attempt: &'a Attempt,
        pod_uid: &'a str,
        layers: &'a [PathBuf],
        plan: ContainerPlan,
    ) -> Effect<'a, Result<(), RuntimeError>>;
    /// Sends a signal to the attempt's process, if it runs.
    fn signal(&self, attempt: &Attempt, signal: Signal);
    /// Resolves once the attempt no longer runs (or never will).
    fn stopped(&self, attempt: &Attempt) -> Effect<'static, ()>;
    /// Runs a command in the attempt's container.
    fn exec<'a>(
        &'a self,
        attempt: &'a Attempt,
        command: &'a [String],
        timeout: Duration,
    ) -> Effect<'a, Result<ExecOutput, String>>;
    /// Deletes an attempt's directory and its log (old attempts).
    fn remove(&self, attempt: &Attempt);
    /// Whether the pod's namespaces exist.
    fn sandbox_exists(&self, pod_dir: &Path) -> bool;
    /// Creates the pod's namespaces.
    /// `own_users`: the pod has `hostUsers: false` and gets its own user namespace.
    fn create_sandbox(
        &self,
        pod_dir: &Path,
        hostname: &str,
        host_network: bool,
        own_users: bool,
    ) -> std::io::Result<PodNamespaces>;
    /// Frees the pod's namespaces and its containers' root file systems.
    fn remove_sandbox(&self, pod_dir: &Path);
    /// Removes the pod's cgroup once its containers are gone.
    fn remove_pod(&self, pod_uid: &str);
}

impl ContainerRuntime for ContainerRunner {
    fn attempts(&self, pod_dir: &Path) -> Vec<Attempt> {
        Attempt::all(pod_dir)
    }

    fn state(&self, attempt: &Attempt) -> AttemptState {
        attempt.state()
    }

    fn start<'a>(
        &'a self,
        attempt: &'a Attempt,
        pod_uid: &'a str,
        layers: &'a [PathBuf],
        plan: ContainerPlan,
    ) -> Effect<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let Err(message) = ContainerRunner::start(self, attempt, pod_uid, layers, plan).await
            else {
                return Ok(());
            };
            if !attempt.dir.join("exit.json").exists() {
                let _ = std::fs::create_dir_all(&attempt.dir);
                let _ = Exited::start_error(message.clone()).write_to(&attempt.dir);
            }
            Err(RuntimeError { message })
        })
    }

    fn signal(&self, attempt: &Attempt, signal: Signal) {
        attempt.signal(signal);
    }

    fn stopped(&self, attempt: &Attempt) -> Effect<'static, ()> {
        let attempt = attempt.clone();
        Box::pin(async move {
            let monitor = std::fs::read_to_string(attempt.dir.join("monitor.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = monitor {
                // The monitor writes the exit file and then exits.
                super::wait_for_exit(pid).await;
            }
            loop {
                match attempt.state() {
                    AttemptState::Running(_) => {}
                    AttemptState::Creating if attempt.dir.join("monitor.pid").exists() => {}
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn exec<'a>(
        &'a self,
        attempt: &'a Attempt,
        command: &'a [String],
        timeout: Duration,
    ) -> Effect<'a, Result<ExecOutput, String>> {
        Box::pin(crate::runtime::exec::run_captured(
            self, attempt, command, timeout,
        ))
    }

    fn remove(&self, attempt: &Attempt) {
        let _ = attempt.remove();
        let _ = std::fs::remove_file(attempt.log_path());
    }

    fn sandbox_exists(&self, pod_dir: &Path) -> bool {
        sandbox::exists(pod_dir)
    }

    fn create_sandbox(
        &self,
        pod_dir: &Path,
        hostname: &str,
        host_network: bool,
        own_users: bool,
    ) -> std::io::Result<PodNamespaces> {
        if !own_users {
            return sandbox::create(pod_dir, hostname, host_network);
        }
        crate::runtime::userns::check_searchable(pod_dir).map_err(std::io::Error::other)?;
        let pods_dir = pod_dir.parent().unwrap_or(pod_dir);
        crate::runtime::userns::mapping_for_pod(pods_dir, pod_dir)
            .and_then(|mapping| sandbox::create_in_user_namespace(pod_dir, hostname, mapping))
            .map_err(std::io::Error::other)
    }

    fn remove_sandbox(&self, pod_dir: &Path) {
        let _ = sandbox::remove(pod_dir);
        for attempt in Attempt::all(pod_dir) {
            let _ = nix::mount::umount2(
                &attempt.dir.join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }

    fn remove_pod(&self, pod_uid: &str) {
        self.remove_pod_cgroup(pod_uid);
    }
}

/// Connects pods to the node's bridge; [`PodNetwork`] is the real one.
pub trait PodNetworking: Send + Sync {
    /// Gives the pod's network namespace `ip` on the bridge.
    fn attach<'a>(
        &'a self,
        pod_uid: &'a str,
        netns: &'a Path,
        ip: Ipv4Addr,
    ) -> Effect<'a, Result<(), NetworkError>>;
    /// Disconnects the pod (and takes its host ports away).
    fn detach<'a>(&'a self, pod_uid: &'a str) -> Effect<'a, Result<(), NetworkError>>;
    /// Sends connections to the node's `hostPort`s to the pod at `ip`.
    fn publish_host_ports(
        &self,
        pod_uid: &str,
        ip: Ipv4Addr,
        ports: &[HostPort],
    ) -> Result<(), NetworkError>;
}

impl PodNetworking for PodNetwork {
    fn attach<'a>(
        &'a self,
        pod_uid: &'a str,
        netns: &'a Path,
        ip: Ipv4Addr,
    ) -> Effect<'a, Result<(), NetworkError>> {
        Box::pin(PodNetwork::attach(self, pod_uid, netns, ip))
    }

    fn detach<'a>(&'a self, pod_uid: &'a str) -> Effect<'a, Result<(), NetworkError>> {
        Box::pin(async move {
            crate::host_ports::withdraw(&NftProgram, pod_uid).map_err(NetworkError::HostPorts)?;
            PodNetwork::detach(self, pod_uid).await
        })
    }

    fn publish_host_ports(
        &self,
        pod_uid: &str,
        ip: Ipv4Addr,
        ports: &[HostPort],
    ) -> Result<(), NetworkError> {
        crate::host_ports::publish(&NftProgram, pod_uid, ip, ports).map_err(NetworkError::HostPorts)
    }
}

/// The node's images; [`ImageStore`] is the real one.
pub trait PodImages: Send + Sync {
    /// Whether the image is on the node already.
    fn present(&self, reference: &str) -> bool;
    /// Makes the image available as `policy` says, pulling it with `credentials` if needed.
    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
        credentials: &'a HashMap<String, Credentials>,
    ) -> Effect<'a, Result<Image, ImageError>>;
    /// Where a layer is unpacked.
    fn layer_dir(&self, digest: &str) -> PathBuf;
}

impl PodImages for ImageStore {
    fn present(&self, reference: &str) -> bool {
        self.local(reference).is_some()
    }

    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: PullPolicy,
        credentials: &'a HashMap<String, Credentials>,
    ) -> Effect<'a, Result<Image, ImageError>> {
        Box::pin(ImageStore::ensure(self, reference, policy, credentials))
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        ImageStore::layer_dir(self, digest)
    }
}

/// What services give a new container; [`NodeServices`] is the real one.
pub trait PodServices: Send + Sync {
    /// Waits (a bounded time) for the first lists of services.
    fn wait_synced(&self) -> Effect<'_, ()>;
    /// The service variables of a container in `namespace`.
    fn env(&self, namespace: &str, service_links: bool) -> Vec<(String, String)>;
    /// The pod's resolv.conf.
    fn resolv_conf(&self, pod: &k8s_openapi::api::core::v1::Pod) -> String;
    /// The cluster's DNS domain (`cluster.local`), for a pod's fully qualified name.
    fn cluster_domain(&self) -> String;
}

impl PodServices for NodeServices {
    fn wait_synced(&self) -> Effect<'_, ()> {
        Box::pin(NodeServices::wait_synced(self))
    }

    fn env(&self, namespace: &str, service_links: bool) -> Vec<(String, String)> {
        NodeServices::env(self, namespace, service_links)
    }

    fn resolv_conf(&self, pod: &k8s_openapi::api::core::v1::Pod) -> String {
        NodeServices::resolv_conf(self, pod)
    }

    fn cluster_domain(&self) -> String {
        NodeServices::cluster_domain(self)
    }
}

/// The wall clock, for time stamps and for back-off measured against them.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> jiff::Timestamp;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A time stamp as Kubernetes writes `Time`: RFC 3339 to the second.
pub fn time_text(time: jiff::Timestamp) -> String {
    time.round(jiff::Unit::Second).unwrap_or(time).to_string()
}
