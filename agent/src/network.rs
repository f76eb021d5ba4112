//! Pod networking with rtnetlink: a bridge per node holding the first address of the node's
//! pod CIDR, a veth pair per pod (the pod's end is `eth0` in its network namespace), and a route
//! to every other node's pod CIDR through that node's address, so pods reach pods anywhere.
//!
//! Routes the agent installs carry its own protocol number, so it can tell them from the
//! administrator's and remove exactly the ones that went stale.
//!
//! A peer's pod CIDR is what that node's Node says, and a Node is only as trustworthy as the
//! master's checks: [`choose_routes`] routes only CIDRs a master could have handed out (inside
//! the cluster CIDR, of the node mask size) that touch neither this node's LAN, the service
//! range, this node's pods nor another node's (the older claimant keeps an overlapped range).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Protocol number marking routes the agent owns (`ip route` shows "proto 66").
const BRAMBLE_ROUTE_PROTOCOL: u8 = 66;

/// A network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request failed.
    #[error("{action}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// Entering a namespace or opening a netlink socket failed.
    #[error("{action}")]
    System {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pod's host ports could not be published or withdrawn (nft's words).
    #[error("{0}")]
    HostPorts(String),
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink { action, source }
}

fn system(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::System { action, source }
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let address: Ipv4Addr = address.parse().ok()?;
        let mask = Cidr::mask(prefix);
        Some(Cidr {
            address: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    /// The `n`th address of the network.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) + n)
    }

    /// How many addresses the network holds.
    pub fn size(&self) -> u32 {
        1u32.checked_shl(32 - self.prefix as u32).unwrap_or(0)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Cidr::mask(self.prefix) == u32::from(self.address)
    }
}

impl Cidr {
    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.address) || other.contains(self.address)
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.address)
    }
}

/// Routes shorter than this are never installed for a peer, whatever else is known: a
/// default route or a slice of the Internet would take this node's traffic away.
pub const SHORTEST_PEER_PREFIX: u8 = 8;

/// Another node's claim to a pod CIDR, as its Node says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClaim {
    /// The node's name.
    pub node: String,
    /// `spec.podCIDR` as written.
    pub pod_cidr: String,
    /// The node's InternalIP, the route's gateway.
    pub via: Ipv4Addr,
    /// `metadata.creationTimestamp` (RFC 3339): the older claimant keeps an overlapped range.
    pub created: String,
}

/// What a peer's pod CIDR must respect on this node.
#[derive(Debug, Clone, Default)]
pub struct RouteBounds {
    /// This node's own pod CIDR; its prefix is the node mask size the master hands out.
    pub own: Option<Cidr>,
    /// The cluster's pod CIDR, if the master published it.
    pub cluster: Option<Cidr>,
    /// The service range, if the master published it.
    pub services: Option<Cidr>,
    /// The networks this node reaches directly (its uplink's addresses and routes).
    pub lan: Vec<Cidr>,
}

/// A peer's pod CIDR this node does not route, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredClaim {
    /// The node's name.
    pub node: String,
    /// Its pod CIDR as written.
    pub pod_cidr: String,
    /// Why it is not routed.
    pub reason: String,
}

/// The routes to other nodes' pods (CIDR via node address) and the claims left out. Claims
/// are judged oldest first, so when two nodes claim overlapping ranges the older one keeps
/// its route whatever order the Nodes arrive in.
pub fn choose_routes(
    claims: &[PeerClaim],
    bounds: &RouteBounds,
) -> (Vec<(Cidr, Ipv4Addr)>, Vec<IgnoredClaim>) {
    let mut ordered: Vec<&PeerClaim> = claims.iter().collect();
    ordered.sort_by(|a, b| (&a.created, &a.node).cmp(&(&b.created, &b.node)));
    let mut routes: Vec<(Cidr, Ipv4Addr, &str)> = Vec::new();
    let mut ignored = Vec::new();
    for claim in ordered {
        match judge(claim, bounds, &routes) {
            Ok(cidr) => routes.push((cidr, claim.via, &claim.node)),
            Err(reason) => ignored.push(IgnoredClaim {
                node: claim.node.clone(),
                pod_cidr: claim.pod_cidr.clone(),
                reason,
            }),
        }
    }
    ignored.sort_by(|a, b| a.node.cmp(&b.node));
    let routes = routes
        .into_iter()
        .map(|(cidr, via, _)| (cidr, via))
        .collect();
    (routes, ignored)
}

fn judge(
    claim: &PeerClaim,
    bounds: &RouteBounds,
    kept: &[(Cidr, Ipv4Addr, &str)],
) -> Result<Cidr, String> {
    let cidr = Cidr::parse(&claim.pod_cidr).ok_or("it is not an IPv4 CIDR")?;
    if cidr.to_string() != claim.pod_cidr.trim() {
        return Err(format!(
            "it is not a network address (the network is {cidr})"
        ));
    }
    if cidr.prefix < SHORTEST_PEER_PREFIX {
        return Err(format!(
            "a /{} is a default route or a very short prefix",
            cidr.prefix
        ));
    }
    if let Some(cluster) = bounds.cluster {
        if !cluster.covers(&cidr) {
            return Err(format!("it is not inside the cluster CIDR {cluster}"));
        }
    }
    if let Some(own) = bounds.own {
        if cidr.prefix != own.prefix {
            return Err(format!(
                "it is a /{}, not of the node mask size /{}",
                cidr.prefix, own.prefix
            ));
        }
        if cidr.overlaps(&own) {
            return Err(format!("it overlaps this node's pod CIDR {own}"));
        }
    }
    if let Some(services) = bounds.services.filter(|s| s.overlaps(&cidr)) {
        return Err(format!("it overlaps the service range {services}"));
    }
    if let Some(lan) = bounds.lan.iter().find(|lan| lan.overlaps(&cidr)) {
        return Err(format!("it overlaps this node's network {lan}"));
    }
    if cidr.contains(claim.via) {
        return Err(format!("the node's own address {} is inside it", claim.via));
    }
    if let Some((other, _, node)) = kept.iter().find(|(other, _, _)| other.overlaps(&cidr)) {
        return Err(format!(
            "it overlaps {other}, the pod CIDR of node {node}, which claimed it first"
        ));
    }
    Ok(cidr)
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Runs `work` on a short-lived thread inside the network namespace at `netns` (the current
/// one when `None`), so the agent's own threads never change namespace.
pub fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || {
        if let Some(path) = &netns {
            let file = File::open(path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
        }
        work()
    })
    .join()
    .expect("namespace thread does not panic")
}

/// Opens a netlink connection inside the network namespace at `netns` (the current one when
/// `None`); the socket stays in that namespace.
pub fn connect(netns: Option<&Path>) -> Result<Handle, NetworkError> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle) = in_netns(netns, move || {
        let _entered = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok((connection, handle))
    })
    .map_err(system("opening a netlink socket"))?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(netlink(format!("looking up link {name}"))(e)),
    }
}

fn already_exists(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::EEXIST)
}

/// The node's side of pod networking.
pub struct PodNetwork {
    handle: Handle,
    bridge: String,
    cidr: Cidr,
}

impl PodNetwork {
    /// Creates (or finds) the node's bridge with the gateway address of `cidr`, and lets the
    /// node forward packets between pods and other nodes. `node_netns` is the node's network
    /// namespace when it is not the agent's own (tests).
    pub async fn setup(
        node_netns: Option<&Path>,
        bridge: &str,
        cidr: Cidr,
    ) -> Result<PodNetwork, NetworkError> {
        let network = PodNetwork::bridge(node_netns, bridge, cidr).await?;
        in_netns(node_netns, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .map_err(system("enabling IP forwarding"))?;
        Ok(network)
    }

    /// Creates (or finds) a bridge with the first address of `cidr`, without touching
    /// forwarding: `bramble up` uses it as the virtual Pis' LAN, attaching each Pi's network
    /// namespace like a pod's.
    pub async fn bridge(
        node_netns: Option<&Path>,
        bridge: &str,
        cidr: Cidr,
    ) -> Result<PodNetwork, NetworkError> {
        let handle = connect(node_netns)?;
        if link_index(&handle, bridge).await?.is_none() {
            handle
                .link()
                .add(LinkBridge::new(bridge).build())
                .execute()
                .await
                .or_else(|e| if already_exists(&e) { Ok(()) } else { Err(e) })
                .map_err(netlink(format!("creating bridge {bridge}")))?;
        }
        let index = link_index(&handle, bridge).await?.ok_or_else(|| {
            system(format!("bridge {bridge}"))(std::io::ErrorKind::NotFound.into())
        })?;
        let gateway = cidr.nth(1);
        handle
            .address()
            .add(index, gateway.into(), cidr.prefix)
            .execute()
            .await
            .or_else(|e| if already_exists(&e) { Ok(()) } else { Err(e) })
            .map_err(netlink(format!("addressing bridge {bridge}")))?;
        // A bridge without an address of its own takes the lowest of its ports' and changes
        // it when that port goes: every pod's neighbour entry for its gateway then points
        // nowhere until it expires (seconds of lost packets, a 5 s stall for DNS). A fixed,
        // locally administered address derived from the gateway IP keeps it stable.
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(bridge_mac(gateway).to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("bringing bridge {bridge} up")))?;
        Ok(PodNetwork {
            handle,
            bridge: bridge.to_owned(),
            cidr,
        })
    }

    /// The node's pod CIDR.
    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// The host-side interface name of a pod's veth pair.
    pub fn host_interface(pod_uid: &str) -> String {
        let short: String = pod_uid.chars().filter(|c| *c != '-').take(11).collect();
        format!("vb{short}")
    }

    /// Connects the pod's network namespace: veth pair, `eth0` with `ip`, loopback up, a
    /// default route through the bridge. Safe to repeat: an existing pair is replaced.
    pub async fn attach(
        &self,
        pod_uid: &str,
        netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        let host = PodNetwork::host_interface(pod_uid);
        let peer = format!("vp{}", &host[2..]);
        self.detach(pod_uid).await?;
        self.handle
            .link()
            .add(LinkVeth::new(&host, &peer).build())
            .execute()
            .await
            .map_err(netlink(format!("creating veth {host}")))?;
        let bridge = link_index(&self.handle, &self.bridge)
            .await?
            .ok_or_else(|| {
                system(format!("bridge {}", self.bridge))(std::io::ErrorKind::NotFound.into())
            })?;
        let host_index = link_index(&self.handle, &host).await?.unwrap_or(0);
        let peer_index = link_index(&self.handle, &peer).await?.unwrap_or(0);
        let netns_file =
            File::open(netns).map_err(system(format!("opening {}", netns.display())))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(netns_file.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("moving {peer} into the pod")))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("attaching {host} to {}", self.bridge)))?;
        let pod = connect(Some(netns))?;
        let inside = link_index(&pod, &peer).await?.ok_or_else(|| {
            system(format!("{peer} in the pod"))(std::io::ErrorKind::NotFound.into())
        })?;
        pod.link()
            .set(LinkUnspec::new_with_index(inside).name("eth0").up().build())
            .execute()
            .await
            .map_err(netlink("naming the pod's eth0"))?;
        pod.address()
            .add(inside, ip.into(), self.cidr.prefix)
            .execute()
            .await
            .or_else(|e| if already_exists(&e) { Ok(()) } else { Err(e) })
            .map_err(netlink(format!("giving the pod {ip}")))?;
        if let Some(lo) = link_index(&pod, "lo").await? {
            pod.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(netlink("bringing the pod's loopback up"))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.cidr.nth(1))
            .build();
        pod.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink("adding the pod's default route"))?;
        Ok(())
    }

    /// Removes the pod's veth pair (both ends go together). Missing is fine.
    pub async fn detach(&self, pod_uid: &str) -> Result<(), NetworkError> {
        let host = PodNetwork::host_interface(pod_uid);
        if let Some(index) = link_index(&self.handle, &host).await? {
            self.handle
                .link()
                .del(index)
                .execute()
                .await
                .or_else(|e| match &e {
                    rtnetlink::Error::NetlinkError(n) if n.raw_code() == -libc::ENODEV => Ok(()),
                    _ => Err(e),
                })
                .map_err(netlink(format!("deleting {host}")))?;
        }
        Ok(())
    }

    /// The networks this node reaches without a gateway or through its own routes: the
    /// networks of its IPv4 addresses and the destinations of its routes in the main table,
    /// leaving out the pod bridge, the agent's own routes and the default route.
    pub async fn local_networks(&self) -> Result<Vec<Cidr>, NetworkError> {
        let mut networks = Vec::new();
        let mut addresses = self.handle.address().get().execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(netlink("listing addresses"))?
        {
            for attribute in &message.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(
                    std::net::IpAddr::V4(ip),
                ) = attribute
                {
                    let network = Cidr::parse(&format!("{ip}/{}", message.header.prefix_len));
                    networks.extend(network.filter(|n| !ip.is_loopback() && *n != self.cidr));
                }
            }
        }
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await.map_err(netlink("listing routes"))? {
            let prefix = route.header.destination_prefix_length;
            if route.header.protocol == RouteProtocol::Other(BRAMBLE_ROUTE_PROTOCOL) || prefix == 0
            {
                continue;
            }
            for attribute in &route.attributes {
                if let RouteAttribute::Destination(
                    rtnetlink::packet_route::route::RouteAddress::Inet(address),
                ) = attribute
                {
                    let network = Cidr {
                        address: *address,
                        prefix,
                    };
                    if network != self.cidr
                        && !address.is_loopback()
                        && !networks.contains(&network)
                    {
                        networks.push(network);
                    }
                }
            }
        }
        Ok(networks)
    }

    /// Makes the node's routes to other nodes' pod CIDRs exactly `desired` (CIDR, via node IP).
    pub async fn sync_routes(&self, desired: &[(Cidr, Ipv4Addr)]) -> Result<(), NetworkError> {
        let mut existing = Vec::new();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await.map_err(netlink("listing routes"))? {
            if route.header.protocol != RouteProtocol::Other(BRAMBLE_ROUTE_PROTOCOL) {
                continue;
            }
            let mut destination = None;
            let mut gateway = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Destination(
                        rtnetlink::packet_route::route::RouteAddress::Inet(a),
                    ) => destination = Some(*a),
                    RouteAttribute::Gateway(
                        rtnetlink::packet_route::route::RouteAddress::Inet(a),
                    ) => gateway = Some(*a),
                    _ => {}
                }
            }
            let key = destination.map(|d| Cidr {
                address: d,
                prefix: route.header.destination_prefix_length,
            });
            let wanted = key
                .is_some_and(|k| desired.contains(&(k, gateway.unwrap_or(Ipv4Addr::UNSPECIFIED))));
            if wanted {
                existing.push(key.expect("checked"));
            } else {
                self.handle
                    .route()
                    .del(route.clone())
                    .execute()
                    .await
                    .map_err(netlink("removing a stale pod route"))?;
            }
        }
        for (cidr, via) in desired {
            if existing.contains(cidr) || *cidr == self.cidr {
                continue;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.address, cidr.prefix)
                .gateway(*via)
                .protocol(RouteProtocol::Other(BRAMBLE_ROUTE_PROTOCOL))
                .build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("adding a route to {cidr} via {via}")))?;
        }
        Ok(())
    }
}

/// The bridge's MAC address: locally administered unicast (02:), then "b7", then the
/// gateway's IPv4 address, so each node's bridge has its own and keeps it.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0xb7, a, b, c, d]
}

/// Lets pods reach addresses outside the cluster: traffic from `pod_cidr` to anywhere but
/// `cluster_cidr` leaves with the node's address (nftables masquerade, table `ip bramble`,
/// replaced as a whole so restarts do not stack rules).
pub fn masquerade(pod_cidr: Cidr, cluster_cidr: Cidr, bridge: &str) -> std::io::Result<()> {
    use std::io::Write;
    let rules = format!(
        "table ip bramble\n\
         delete table ip bramble\n\
         table ip bramble {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr {pod_cidr} ip daddr != {cluster_cidr} oifname != \"{bridge}\" masquerade\n\
           }}\n\
         }}\n"
    );
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())?;
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The index of the interface that holds `address` (the node's uplink, for its own IP).
pub async fn interface_holding(handle: &Handle, address: Ipv4Addr) -> Result<u32, NetworkError> {
    let mut addresses = handle.address().get().execute();
    let mut index = None;
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(netlink("listing addresses"))?
    {
        let holds = message.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(ip)
                if *ip == std::net::IpAddr::V4(address))
        });
        if holds {
            index = Some(message.header.index);
        }
    }
    index.ok_or_else(|| {
        system(format!("finding the interface with {address}"))(std::io::ErrorKind::NotFound.into())
    })
}

/// Takes the interface holding `address` down for `duration`, then brings it back with the
/// routes it had (the kernel drops them with the link): the chaos hook's "pulled cable".
pub async fn link_down_for(
    address: Ipv4Addr,
    duration: std::time::Duration,
) -> Result<String, NetworkError> {
    let handle = connect(None)?;
    let index = interface_holding(&handle, address).await?;
    let mut saved = Vec::new();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = routes.try_next().await.map_err(netlink("listing routes"))? {
        let through = route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(oif) if *oif == index));
        if through && route.header.protocol != RouteProtocol::Kernel {
            saved.push(route);
        }
    }
    let mut name = format!("link {index}");
    let mut links = handle.link().get().match_index(index).execute();
    if let Ok(Some(link)) = links.try_next().await {
        for attribute in &link.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(text) = attribute {
                name = text.clone();
            }
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(netlink(format!("taking {name} down")))?;
    tokio::time::sleep(duration).await;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing {name} up")))?;
    for route in saved {
        // The kernel restores the link's own subnet; the rest comes back from what was saved.
        let _ = handle.route().add(route).replace().execute().await;
    }
    Ok(name)
}

/// Deletes the link called `name` in the current network namespace. Missing is fine.
pub async fn delete_link(name: &str) -> Result<(), NetworkError> {
    let handle = connect(None)?;
    if let Some(index) = link_index(&handle, name).await? {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(netlink(format!("deleting {name}")))?;
    }
    Ok(())
}

/// Creates a new network namespace kept alive by a bind mount on `path` (as `ip netns add`
/// does under /run/netns). An existing one is kept.
pub fn create_netns(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(file), Some(Ok(dir))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        if file.dev() != dir.dev() {
            return Ok(());
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    File::create(path)?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        // Only this thread enters the new namespace, and it ends right after.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .expect("namespace thread does not panic")
}

/// Unmounts and deletes a namespace file made by [`create_netns`]. Missing is fine.
pub fn remove_netns(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Where a pod's namespace files live.
pub fn namespace_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_macs_are_local_unicast_and_follow_the_gateway() {
        let mac = bridge_mac(Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(mac, [0x02, 0xb7, 10, 42, 3, 1]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn cidr_arithmetic() {
        let cidr = Cidr::parse("10.42.3.7/24").unwrap();
        assert_eq!(cidr.to_string(), "10.42.3.0/24");
        assert_eq!(cidr.nth(1), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(cidr.size(), 256);
        assert!(cidr.contains(Ipv4Addr::new(10, 42, 3, 200)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 42, 4, 1)));
        assert!(Cidr::parse("10.42.0.0/33").is_none());
        assert_eq!(
            PodNetwork::host_interface("0f1e2d3c-4b5a-6978"),
            "vb0f1e2d3c4b5"
        );
    }

    fn claim(node: &str, cidr: &str, via: [u8; 4], created: &str) -> PeerClaim {
        PeerClaim {
            node: node.to_owned(),
            pod_cidr: cidr.to_owned(),
            via: Ipv4Addr::from(via),
            created: created.to_owned(),
        }
    }

    fn bounds() -> RouteBounds {
        RouteBounds {
            own: Cidr::parse("10.42.1.0/24"),
            cluster: Cidr::parse("10.42.0.0/16"),
            services: Cidr::parse("10.43.0.0/16"),
            lan: vec![Cidr::parse("192.168.1.0/24").unwrap()],
        }
    }

    #[test]
    fn peers_are_routed_only_within_what_a_master_hands_out() {
        let old = "2026-01-01T00:00:00Z";
        let claims = [
            claim("pi-2", "10.42.2.0/24", [192, 168, 1, 12], old),
            claim("default", "0.0.0.0/0", [192, 168, 1, 13], old),
            claim("short", "10.0.0.0/7", [192, 168, 1, 13], old),
            claim("outside", "10.99.0.0/24", [192, 168, 1, 14], old),
            claim("wide", "10.42.0.0/16", [192, 168, 1, 15], old),
            claim("mine", "10.42.1.0/24", [192, 168, 1, 16], old),
            claim("garbage", "10.42.300.0/24", [192, 168, 1, 17], old),
            claim("host-bits", "10.42.5.7/24", [192, 168, 1, 18], old),
        ];
        let (routes, ignored) = choose_routes(&claims, &bounds());
        assert_eq!(
            routes,
            [(
                Cidr::parse("10.42.2.0/24").unwrap(),
                Ipv4Addr::new(192, 168, 1, 12)
            )]
        );
        let reasons: Vec<(&str, &str)> = ignored
            .iter()
            .map(|i| (i.node.as_str(), i.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("default", "a /0 is a default route or a very short prefix"),
                ("garbage", "it is not an IPv4 CIDR"),
                (
                    "host-bits",
                    "it is not a network address (the network is 10.42.5.0/24)"
                ),
                ("mine", "it overlaps this node's pod CIDR 10.42.1.0/24"),
                ("outside", "it is not inside the cluster CIDR 10.42.0.0/16"),
                ("short", "a /7 is a default route or a very short prefix"),
                ("wide", "it is a /16, not of the node mask size /24"),
            ]
        );
    }

    #[test]
    fn the_lan_and_the_services_are_never_routed_to_a_peer() {
        let mut open = bounds();
        open.cluster = None; // a master that published nothing
        let claims = [
            claim(
                "lan",
                "192.168.1.0/24",
                [192, 168, 1, 12],
                "2026-01-01T00:00:00Z",
            ),
            claim(
                "svc",
                "10.43.0.0/24",
                [192, 168, 1, 13],
                "2026-01-01T00:00:00Z",
            ),
            claim(
                "self",
                "192.168.2.0/24",
                [192, 168, 2, 9],
                "2026-01-01T00:00:00Z",
            ),
        ];
        let (routes, ignored) = choose_routes(&claims, &open);
        assert!(routes.is_empty(), "{routes:?}");
        assert_eq!(
            ignored
                .iter()
                .map(|i| i.reason.as_str())
                .collect::<Vec<_>>(),
            [
                "it overlaps this node's network 192.168.1.0/24",
                "the node's own address 192.168.2.9 is inside it",
                "it overlaps the service range 10.43.0.0/16",
            ]
        );
    }

    #[test]
    fn of_two_overlapping_claimants_the_older_keeps_the_range() {
        let first = claim(
            "pi-2",
            "10.42.2.0/24",
            [192, 168, 1, 12],
            "2026-01-01T00:00:00Z",
        );
        let thief = claim(
            "pi-9",
            "10.42.2.0/24",
            [192, 168, 1, 19],
            "2026-02-01T00:00:00Z",
        );
        for claims in [
            [first.clone(), thief.clone()],
            [thief.clone(), first.clone()],
        ] {
            let (routes, ignored) = choose_routes(&claims, &bounds());
            assert_eq!(routes, [(Cidr::parse("10.42.2.0/24").unwrap(), first.via)]);
            assert_eq!(
                ignored,
                [IgnoredClaim {
                    node: "pi-9".into(),
                    pod_cidr: "10.42.2.0/24".into(),
                    reason: "it overlaps 10.42.2.0/24, the pod CIDR of node pi-2, which claimed it first".into(),
                }]
            );
        }
    }
}
