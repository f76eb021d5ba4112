//! Pods on this node: one worker per pod bound here, driving its life cycle (see [`worker`]).

mod containers;
pub mod effects;
pub mod error;
pub mod fields;
mod probes;
pub mod security;
mod status;
mod termination;
mod worker;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::network::Cidr;

pub use effects::{
    ApiError, Clock, ContainerRuntime, PodApi, PodImages, PodNetworking, PodServices, SystemClock,
};

/// What every pod worker on the node shares.
pub struct NodeContext {
    /// The API calls (with the node's credentials).
    pub api: Arc<dyn PodApi>,
    /// This node's name.
    pub node_name: String,
    /// This node's address.
    pub node_ip: Ipv4Addr,
    /// `pods/` under the agent's data directory.
    pub pods_dir: PathBuf,
    /// Starts and stops containers, holds pods' namespaces.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The node's images.
    pub images: Arc<dyn PodImages>,
    /// Pod networking.
    pub network: Arc<dyn PodNetworking>,
    /// Pod IPs in use.
    pub ips: Mutex<IpAllocator>,
    /// The first restart back-off; doubles per restart up to five minutes.
    pub crash_backoff: Duration,
    /// Services: the environment variables and resolv.conf of new pods.
    pub services: Arc<dyn PodServices>,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Set while the chaos hook holds the node down: workers leave pods alone.
    pub paused: Arc<AtomicBool>,
    /// Bumped when a PersistentVolume on the node changes: workers whose volumes failed try
    /// again at once.
    pub volume_changes: watch::Sender<u64>,
    /// The node's seccomp default, admitted sysctls and AppArmor support.
    pub security: security::SecuritySettings,
}

/// Hands out pod IPs from the node's pod CIDR (.1 is the bridge), round-robin: a pod's
/// address is not given to the next pod at once, so neighbour caches and conntrack entries
/// that still name the old pod cannot send a new pod's traffic astray.
pub struct IpAllocator {
    cidr: Cidr,
    used: HashSet<Ipv4Addr>,
    /// Where the next search starts (an offset into the CIDR).
    next: u32,
}

impl IpAllocator {
    /// An allocator for `cidr` with nothing in use.
    pub fn new(cidr: Cidr) -> IpAllocator {
        IpAllocator {
            cidr,
            used: HashSet::new(),
            next: 2,
        }
    }

    /// Marks an address as used (adopted pods).
    pub fn claim(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    /// The first free address after the last one handed out.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let last = self.cidr.size().saturating_sub(1);
        let start = self.next.clamp(2, last.max(2));
        let offset = (start..last)
            .chain(2..start)
            .find(|n| !self.used.contains(&self.cidr.nth(*n)))?;
        let ip = self.cidr.nth(offset);
        self.used.insert(ip);
        self.next = offset + 1;
        Some(ip)
    }

    /// Returns an address.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

/// The handle the agent keeps per pod worker.
pub struct PodHandle {
    /// The latest pod object; `None` once it left the API.
    pub object: watch::Sender<Option<Value>>,
}

/// Starts the worker of one pod.
pub fn spawn_worker(ctx: Arc<NodeContext>, uid: String, pod: Option<Value>) -> PodHandle {
    let (sender, receiver) = watch::channel(pod);
    tokio::spawn(async move {
        let mut worker = worker::PodWorker::new(ctx, uid);
        worker.run(receiver).await;
    });
    PodHandle { object: sender }
}

/// Waits until the process `pid` has exited (through a pidfd, so it works for processes that
/// are not our children, such as monitors adopted after an agent restart).
pub async fn wait_for_exit(pid: i32) {
    let Some(owned) = crate::runtime::monitor::pidfd_open(pid) else {
        return;
    };
    // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(_) => {
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod ip_tests {
    use super::*;

    #[test]
    fn pod_ips_skip_the_bridge_and_broadcast() {
        let mut ips = IpAllocator::new(Cidr::parse("10.42.1.0/30").unwrap());
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 2)));
        assert_eq!(ips.allocate(), None);
        ips.release(Ipv4Addr::new(10, 42, 1, 2));
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 2)));
    }

    #[test]
    fn a_released_pod_ip_is_not_handed_out_again_at_once() {
        let mut ips = IpAllocator::new(Cidr::parse("10.42.1.0/29").unwrap());
        let first = ips.allocate().unwrap();
        let second = ips.allocate().unwrap();
        ips.release(first);
        let third = ips.allocate().unwrap();
        assert_eq!(
            [first, second, third].map(|ip| ip.octets()[3]),
            [2, 3, 4],
            "round-robin, not the lowest free"
        );
        ips.claim(Ipv4Addr::new(10, 42, 1, 5));
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 42, 1, 6)));
        assert_eq!(
            ips.allocate(),
            Some(Ipv4Addr::new(10, 42, 1, 2)),
            "wraps around"
        );
    }
}
