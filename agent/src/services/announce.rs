//! Load-balancer addresses on the LAN: the node the master picked for an address holds it on
//! its uplink (so the kernel answers ARP for it) and announces it with gratuitous ARP, so
//! the LAN's neighbour caches move to this node at once when the address moves here.
//!
//! The addresses carry the label `<uplink>:lb`, which is how an agent that restarted finds
//! the ones it added before.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::Handle;

use crate::network::{connect, interface_holding, NetworkError};

fn netlink(action: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { action, source }
}

/// The interface that load-balancer addresses go on.
struct Uplink {
    index: u32,
    name: String,
    mac: [u8; 6],
}

impl Uplink {
    async fn find(handle: &Handle, node_ip: Ipv4Addr) -> Result<Uplink, NetworkError> {
        let index = interface_holding(handle, node_ip).await?;
        let mut links = handle.link().get().match_index(index).execute();
        let mut name = None;
        let mut mac = [0u8; 6];
        if let Some(link) = links
            .try_next()
            .await
            .map_err(netlink(format!("reading link {index}")))?
        {
            for attribute in link.attributes {
                match attribute {
                    LinkAttribute::IfName(text) => name = Some(text),
                    LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                        mac.copy_from_slice(&bytes)
                    }
                    _ => {}
                }
            }
        }
        Ok(Uplink {
            index,
            name: name.unwrap_or_else(|| format!("if{index}")),
            mac,
        })
    }

    /// The address label marking our addresses (labels are at most 15 bytes).
    fn label(&self) -> String {
        let name: String = self.name.chars().take(12).collect();
        format!("{name}:lb")
    }
}

fn address_of(message: &AddressMessage) -> Option<Ipv4Addr> {
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

fn label_of(message: &AddressMessage) -> Option<&str> {
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Label(label) => Some(label.as_str()),
        _ => None,
    })
}

/// Makes the uplink hold exactly `wanted` as load-balancer addresses; returns the addresses
/// it added (which the caller announces).
pub async fn hold_addresses(
    node_ip: Ipv4Addr,
    wanted: &BTreeSet<Ipv4Addr>,
) -> Result<Vec<Ipv4Addr>, NetworkError> {
    let handle = connect(None)?;
    let uplink = Uplink::find(&handle, node_ip).await?;
    let label = uplink.label();
    let mut held = Vec::new();
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(uplink.index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(netlink("listing addresses".into()))?
    {
        if label_of(&message) == Some(label.as_str()) {
            held.push(message);
        }
    }
    for message in held.iter() {
        let Some(ip) = address_of(message) else {
            continue;
        };
        if !wanted.contains(&ip) {
            tracing::info!(address = %ip, "no longer answering for this load-balancer address");
            handle
                .address()
                .del(message.clone())
                .execute()
                .await
                .map_err(netlink(format!("removing {ip} from {}", uplink.name)))?;
        }
    }
    let mut added = Vec::new();
    for ip in wanted {
        if held.iter().any(|m| address_of(m) == Some(*ip)) {
            continue;
        }
        let mut request = handle.address().add(uplink.index, IpAddr::V4(*ip), 32);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Label(label.clone()));
        request
            .execute()
            .await
            .map_err(netlink(format!("adding {ip} to {}", uplink.name)))?;
        tracing::info!(address = %ip, interface = uplink.name, "answering for a load-balancer address");
        added.push(*ip);
    }
    if !added.is_empty() {
        announce(uplink, added.clone());
    }
    Ok(added)
}

/// Sends gratuitous ARP for `addresses` a few times (a frame can be lost; switches and
/// hosts update their caches from any of them).
fn announce(uplink: Uplink, addresses: Vec<Ipv4Addr>) {
    tokio::spawn(async move {
        for delay in [0, 200, 1000] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            for ip in &addresses {
                if let Err(error) = send_gratuitous_arp(uplink.index, uplink.mac, *ip) {
                    tracing::warn!(address = %ip, %error, "gratuitous ARP failed");
                }
            }
        }
    });
}

/// A gratuitous ARP request frame: "who has `ip`? tell `ip`", from `mac`, to everyone.
pub fn gratuitous_arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    frame[32..38].copy_from_slice(&[0xff; 6]);
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

fn send_gratuitous_arp(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<()> {
    let frame = gratuitous_arp_frame(mac, ip);
    let protocol = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: a plain socket call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and address outlive the call, and their lengths are passed with them.
    let sent = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    let result = if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: fd is our open socket.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = [0x02, 0, 0, 0, 0, 0x11];
        let frame = gratuitous_arp_frame(mac, Ipv4Addr::new(10, 99, 0, 200));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1]);
        assert_eq!(&frame[22..28], &mac);
        assert_eq!(&frame[28..32], &[10, 99, 0, 200]);
        assert_eq!(&frame[38..42], &[10, 99, 0, 200]);
    }
}
