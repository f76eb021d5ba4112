//! The node's cluster DNS server: answers `<service>.<namespace>.svc.<domain>` and friends from
//! the catalog the proxy uses, and forwards every other name to the node's own resolvers.
//!
//! Records (TTL 5 s, authoritative):
//!
//! | name | answer |
//! |---|---|
//! | `web.shop.svc.D` | A: the cluster IP; a headless service: its ready pods' IPs; ExternalName: CNAME |
//! | `_http._tcp.web.shop.svc.D` | SRV per matching port (headless: per ready pod), A records as additional |
//! | `db-0.db.shop.svc.D` | A: the pod whose `hostname`/`subdomain` put it there (and `10-42-1-5.db.shop.svc.D`) |
//! | `10-42-1-5.shop.pod.D` | A: 10.42.1.5 |
//! | `5.1.42.10.in-addr.arpa` | PTR for a cluster IP or a named pod |
//!
//! Names under the domain that do not exist get NXDOMAIN at once, which matters because the
//! search path (`ndots:5`) sends most outside names through several cluster suffixes first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::catalog::{Catalog, Endpoint, Service};

/// Time to live of cluster answers, in seconds: short, because pods come and go.
const TTL: u32 = 5;
/// The largest UDP answer without EDNS.
const UDP_LIMIT: usize = 512;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_PTR: u16 = 12;
const TYPE_SRV: u16 = 33;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// What the server answers and where it forwards.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The node's resolvers, for every other name.
    pub upstreams: Vec<SocketAddr>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The address could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Nameservers from a resolv.conf text, on port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The data of one resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An alias.
    Cname(String),
    /// A reverse name.
    Ptr(String),
    /// A service location.
    Srv {
        /// Priority (always 0).
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target host name.
        target: String,
    },
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its owner name, without the trailing dot.
    pub name: String,
    /// Its data.
    pub data: RecordData,
}

/// What the cluster knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records for the question, and additional ones (addresses of SRV targets).
    Answer {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section.
        additional: Vec<Record>,
    },
    /// The name exists but has no records of the type asked.
    NoData,
    /// The name is under the cluster domain and does not exist.
    NxDomain,
    /// Not a cluster name: forward it.
    Elsewhere,
}

fn answer(answers: Vec<Record>, additional: Vec<Record>) -> Lookup {
    if answers.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Answer {
            answers,
            additional,
        }
    }
}

fn a_record(name: &str, ip: Ipv4Addr) -> Record {
    Record {
        name: name.to_owned(),
        data: RecordData::A(ip),
    }
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// Answers `name` (any case, with or without the trailing dot) for `qtype` from the catalog.
pub fn lookup(catalog: &Catalog, domain: &str, name: &str, qtype: u16) -> Lookup {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(reversed) = name.strip_suffix(".in-addr.arpa") {
        return reverse_lookup(catalog, &domain, &name, reversed, qtype);
    }
    let rest = if name == domain {
        ""
    } else if let Some(rest) = name.strip_suffix(&format!(".{domain}")) {
        rest
    } else {
        return Lookup::Elsewhere;
    };
    let labels: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] | [_, "pod"] => Lookup::NoData,
        [namespace, "svc"] => {
            if catalog.services.keys().any(|(ns, _)| ns == namespace) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            }
        }
        [service, namespace, "svc"] => match catalog.service(namespace, service) {
            Some(service) => service_records(catalog, &name, service, qtype, None),
            None => Lookup::NxDomain,
        },
        [port, protocol, service, namespace, "svc"]
            if port.starts_with('_') && protocol.starts_with('_') =>
        {
            match catalog.service(namespace, service) {
                Some(service) => {
                    let wanted = (&port[1..], &protocol[1..]);
                    service_records(catalog, &name, service, qtype, Some(wanted))
                }
                None => Lookup::NxDomain,
            }
        }
        [host, service, namespace, "svc"] => {
            let Some(service) = catalog.service(namespace, service) else {
                return Lookup::NxDomain;
            };
            let found = catalog
                .endpoints_of(service)
                .iter()
                // As CoreDNS: only ready endpoints (publishNotReadyAddresses makes them all
                // ready), so a StatefulSet pod is found once it is Ready.
                .find(|e| e.ready && endpoint_host(service, e).as_deref() == Some(*host));
            match found {
                Some(endpoint) if matches!(qtype, TYPE_A | TYPE_ANY) => {
                    answer(vec![a_record(&name, endpoint.ip)], Vec::new())
                }
                Some(_) => Lookup::NoData,
                None => Lookup::NxDomain,
            }
        }
        [ip, _namespace, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(ip) if matches!(qtype, TYPE_A | TYPE_ANY) => {
                answer(vec![a_record(&name, ip)], Vec::new())
            }
            Ok(_) => Lookup::NoData,
            Err(_) => Lookup::NxDomain,
        },
        _ => Lookup::NxDomain,
    }
}

/// The label an endpoint has under its service: its hostname, or (headless services) its IP
/// with dashes.
fn endpoint_host(service: &Service, endpoint: &Endpoint) -> Option<String> {
    match &endpoint.hostname {
        Some(hostname) => Some(hostname.to_ascii_lowercase()),
        None if service.headless => Some(dashed(endpoint.ip)),
        None => None,
    }
}

fn service_name(service: &Service, domain_suffix: &str) -> String {
    format!("{}.{}.svc.{domain_suffix}", service.name, service.namespace)
}

fn service_records(
    catalog: &Catalog,
    name: &str,
    service: &Service,
    qtype: u16,
    srv_port: Option<(&str, &str)>,
) -> Lookup {
    // The domain is whatever follows `<service>.<namespace>.svc.` in the asked name.
    let prefix = format!("{}.{}.svc.", service.name, service.namespace);
    let domain = name
        .find(&prefix)
        .map(|at| &name[at + prefix.len()..])
        .unwrap_or_default();
    let fqdn = service_name(service, domain);
    if let Some(alias) = &service.external_name {
        return answer(
            vec![Record {
                name: name.to_owned(),
                data: RecordData::Cname(alias.trim_end_matches('.').to_owned()),
            }],
            Vec::new(),
        );
    }
    let ready: Vec<&Endpoint> = {
        let mut seen = std::collections::HashSet::new();
        catalog
            .endpoints_of(service)
            .iter()
            .filter(|e| e.ready && seen.insert(e.ip))
            .collect()
    };
    match qtype {
        TYPE_A | TYPE_ANY if srv_port.is_none() => {
            let answers = match service.cluster_ip {
                Some(ip) => vec![a_record(name, ip)],
                None => ready.iter().map(|e| a_record(name, e.ip)).collect(),
            };
            answer(answers, Vec::new())
        }
        TYPE_SRV | TYPE_ANY => {
            let ports = service.ports.iter().filter(|p| match srv_port {
                Some((port, protocol)) => {
                    p.name.eq_ignore_ascii_case(port) && p.protocol.lower() == protocol
                }
                None => true,
            });
            let mut answers = Vec::new();
            let mut additional = Vec::new();
            for port in ports {
                match service.cluster_ip {
                    Some(ip) => {
                        answers.push(Record {
                            name: name.to_owned(),
                            data: RecordData::Srv {
                                priority: 0,
                                weight: 100,
                                port: port.port,
                                target: fqdn.clone(),
                            },
                        });
                        if !additional.iter().any(|r: &Record| r.name == fqdn) {
                            additional.push(a_record(&fqdn, ip));
                        }
                    }
                    None => {
                        let weight = (100 / ready.len().max(1)) as u16;
                        for endpoint in &ready {
                            let Some(host) = endpoint_host(service, endpoint) else {
                                continue;
                            };
                            let target = format!("{host}.{fqdn}");
                            answers.push(Record {
                                name: name.to_owned(),
                                data: RecordData::Srv {
                                    priority: 0,
                                    weight: weight.max(1),
                                    port: port.port,
                                    target: target.clone(),
                                },
                            });
                            if !additional.iter().any(|r: &Record| r.name == target) {
                                additional.push(a_record(&target, endpoint.ip));
                            }
                        }
                    }
                }
            }
            if answers.is_empty() && srv_port.is_some() {
                return Lookup::NxDomain;
            }
            answer(answers, additional)
        }
        _ => Lookup::NoData,
    }
}

fn reverse_lookup(
    catalog: &Catalog,
    domain: &str,
    name: &str,
    reversed: &str,
    qtype: u16,
) -> Lookup {
    let octets: Vec<&str> = reversed.split('.').collect();
    let Some(ip) = (octets.len() == 4)
        .then(|| {
            format!("{}.{}.{}.{}", octets[3], octets[2], octets[1], octets[0])
                .parse::<Ipv4Addr>()
                .ok()
        })
        .flatten()
    else {
        return Lookup::Elsewhere;
    };
    let mut targets = Vec::new();
    for service in catalog.services.values() {
        if service.cluster_ip == Some(ip) {
            targets.push(service_name(service, domain));
        }
        for endpoint in catalog.endpoints_of(service) {
            if endpoint.ip == ip {
                if let Some(hostname) = &endpoint.hostname {
                    targets.push(format!("{hostname}.{}", service_name(service, domain)));
                }
            }
        }
    }
    if targets.is_empty() {
        return Lookup::Elsewhere;
    }
    if !matches!(qtype, TYPE_PTR | TYPE_ANY) {
        return Lookup::NoData;
    }
    targets.dedup();
    answer(
        targets
            .into_iter()
            .map(|target| Record {
                name: name.to_owned(),
                data: RecordData::Ptr(target),
            })
            .collect(),
        Vec::new(),
    )
}

// ---- the wire format ---------------------------------------------------------------------

/// A parsed query: its question and where the question ends in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The name asked, lower case, without the trailing dot.
    pub name: String,
    /// The type asked.
    pub qtype: u16,
    /// The class asked.
    pub qclass: u16,
    question_end: usize,
}

/// Why a message cannot be answered normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not even a header: no answer at all.
    Drop,
    /// Answer with this response code and no question.
    Code(u8),
}

/// Reads a name starting at `offset`; returns it and the offset just after it in place
/// (compression pointers are followed, at most a bounded number of times).
fn read_name(message: &[u8], offset: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut position = offset;
    let mut end = None;
    let mut jumps = 0;
    let mut length = 0;
    loop {
        let byte = *message.get(position)?;
        match byte & 0xC0 {
            0x00 if byte == 0 => {
                end.get_or_insert(position + 1);
                break;
            }
            0x00 => {
                let label = message.get(position + 1..position + 1 + byte as usize)?;
                length += label.len() + 1;
                if length > 255 {
                    return None;
                }
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                position += 1 + byte as usize;
            }
            0xC0 => {
                let low = *message.get(position + 1)?;
                end.get_or_insert(position + 2);
                jumps += 1;
                if jumps > 16 {
                    return None;
                }
                position = (usize::from(byte & 0x3F) << 8) | usize::from(low);
            }
            _ => return None,
        }
    }
    Some((labels.join("."), end?))
}

/// Parses a query message.
pub fn parse_query(message: &[u8]) -> Result<Query, Refusal> {
    if message.len() < 12 {
        return Err(Refusal::Drop);
    }
    let flags = u16::from_be_bytes([message[2], message[3]]);
    if flags & 0x8000 != 0 {
        // A response, not a query: answering it could start a loop.
        return Err(Refusal::Drop);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Refusal::Code(RCODE_NOTIMP));
    }
    let questions = u16::from_be_bytes([message[4], message[5]]);
    if questions != 1 {
        return Err(Refusal::Code(RCODE_FORMERR));
    }
    let (name, after) = read_name(message, 12).ok_or(Refusal::Code(RCODE_FORMERR))?;
    let fixed = message
        .get(after..after + 4)
        .ok_or(Refusal::Code(RCODE_FORMERR))?;
    Ok(Query {
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        question_end: after + 4,
    })
}

fn write_name(out: &mut Vec<u8>, name: &str, question_name: &str) {
    if name == question_name {
        out.extend_from_slice(&[0xC0, 12]);
        return;
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

fn write_record(out: &mut Vec<u8>, record: &Record, question_name: &str) {
    write_name(out, &record.name, question_name);
    let rtype = match record.data {
        RecordData::A(_) => TYPE_A,
        RecordData::Cname(_) => TYPE_CNAME,
        RecordData::Ptr(_) => TYPE_PTR,
        RecordData::Srv { .. } => TYPE_SRV,
    };
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&TTL.to_be_bytes());
    let mut data = Vec::new();
    match &record.data {
        RecordData::A(ip) => data.extend_from_slice(&ip.octets()),
        RecordData::Cname(target) | RecordData::Ptr(target) => write_name(&mut data, target, ""),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            data.extend_from_slice(&priority.to_be_bytes());
            data.extend_from_slice(&weight.to_be_bytes());
            data.extend_from_slice(&port.to_be_bytes());
            write_name(&mut data, target, "");
        }
    }
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
}

/// A response to `message` (whose question is `query`, if it could be read).
fn response(
    message: &[u8],
    query: Option<&Query>,
    rcode: u8,
    authoritative: bool,
    answers: &[Record],
    additional: &[Record],
    limit: Option<usize>,
) -> Vec<u8> {
    let request_flags = u16::from_be_bytes([message[2], message[3]]);
    let recursion_desired = request_flags & 0x0100;
    let mut flags = 0x8000 | recursion_desired | 0x0080 | u16::from(rcode);
    if authoritative {
        flags |= 0x0400;
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&message[0..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&u16::from(query.is_some()).to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(additional.len() as u16).to_be_bytes());
    let Some(query) = query else {
        return out;
    };
    out.extend_from_slice(&message[12..query.question_end]);
    let question_name = query.name.as_str();
    let header_and_question = out.len();
    for record in answers {
        write_record(&mut out, record, question_name);
    }
    for record in additional {
        write_record(&mut out, record, question_name);
    }
    if limit.is_some_and(|limit| out.len() > limit) {
        // Too big for UDP: the client asks again over TCP.
        out.truncate(header_and_question);
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
    out
}

/// How the query arrived (answers over UDP are size-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The server's shared state.
struct Resolver {
    config: DnsConfig,
    catalog: Arc<RwLock<Catalog>>,
    forward_timeout: Duration,
}

impl Resolver {
    /// The answer to one message, or `None` to stay silent.
    async fn answer(&self, message: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let limit = (transport == Transport::Udp).then_some(UDP_LIMIT);
        let query = match parse_query(message) {
            Ok(query) => query,
            Err(Refusal::Drop) => return None,
            Err(Refusal::Code(rcode)) => {
                return Some(response(message, None, rcode, false, &[], &[], None))
            }
        };
        let (found, synced) = if query.qclass == CLASS_IN || query.qclass == TYPE_ANY {
            let catalog = self.catalog.read().expect("catalog lock");
            let found = lookup(
                &catalog,
                &self.config.cluster_domain,
                &query.name,
                query.qtype,
            );
            (found, catalog.synced)
        } else {
            (Lookup::Elsewhere, true)
        };
        let reply = |rcode, answers: &[Record], additional: &[Record]| {
            response(
                message,
                Some(&query),
                rcode,
                true,
                answers,
                additional,
                limit,
            )
        };
        Some(match found {
            Lookup::Answer {
                answers,
                additional,
            } => reply(0, &answers, &additional),
            Lookup::NoData => reply(0, &[], &[]),
            // Before the first full list "no such name" may be wrong: say "try again".
            Lookup::NxDomain if !synced => reply(RCODE_SERVFAIL, &[], &[]),
            Lookup::NxDomain => reply(RCODE_NXDOMAIN, &[], &[]),
            Lookup::Elsewhere => match self.forward(message, transport).await {
                Some(answer) => answer,
                None => response(
                    message,
                    Some(&query),
                    RCODE_SERVFAIL,
                    false,
                    &[],
                    &[],
                    limit,
                ),
            },
        })
    }

    /// Asks every upstream resolver at once; the first answer wins. (One at a time would make
    /// a dead first resolver cost every outside lookup its whole timeout.)
    async fn forward(&self, message: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if self.config.upstreams.is_empty() {
            return None;
        }
        let attempts = self.config.upstreams.iter().map(|upstream| {
            Box::pin(async move {
                let result = match transport {
                    Transport::Udp => forward_udp(*upstream, message).await,
                    Transport::Tcp => forward_tcp(*upstream, message).await,
                };
                if let Err(error) = &result {
                    tracing::debug!(%upstream, %error, "upstream DNS failed");
                }
                result
            })
        });
        match tokio::time::timeout(
            self.forward_timeout,
            futures_util::future::select_ok(attempts),
        )
        .await
        {
            Ok(Ok((answer, _))) => Some(answer),
            _ => None,
        }
    }
}

async fn forward_udp(upstream: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(message).await?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // Only an answer to this query (same ID) counts.
        if n >= 12 && buffer[0..2] == message[0..2] {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, message).await?;
    read_framed(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::other("upstream closed the connection"))
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Serves DNS on UDP and TCP at `listen` until the task is dropped, reading the catalog on
/// every query.
pub async fn serve(
    listen: SocketAddr,
    config: DnsConfig,
    catalog: Arc<RwLock<Catalog>>,
) -> Result<(), DnsError> {
    let bind = |source| DnsError::Bind {
        address: listen,
        source,
    };
    let udp = UdpSocket::bind(listen).await.map_err(bind)?;
    let tcp = TcpListener::bind(listen).await.map_err(bind)?;
    serve_on(udp, tcp, config, catalog, Duration::from_secs(2)).await;
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves on sockets the caller bound; forwarded queries wait `forward_timeout` per upstream.
async fn serve_on(
    udp: UdpSocket,
    tcp: TcpListener,
    config: DnsConfig,
    catalog: Arc<RwLock<Catalog>>,
    forward_timeout: Duration,
) {
    let resolver = Arc::new(Resolver {
        config,
        catalog,
        forward_timeout,
    });
    let udp = Arc::new(udp);
    let tcp_resolver = resolver.clone();
    // Dropping the server (the agent stopping it) stops the TCP side with it.
    let _tcp = AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let resolver = tcp_resolver.clone();
            tokio::spawn(async move {
                while let Ok(Ok(Some(message))) =
                    tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
                {
                    let Some(answer) = resolver.answer(&message, Transport::Tcp).await else {
                        break;
                    };
                    if write_framed(&mut stream, &answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    }));
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((n, client)) = udp.recv_from(&mut buffer).await else {
            continue;
        };
        let message = buffer[..n].to_vec();
        let resolver = resolver.clone();
        let udp = udp.clone();
        // Each query on its own task: a slow upstream must not hold up cluster names.
        tokio::spawn(async move {
            if let Some(answer) = resolver.answer(&message, Transport::Udp).await {
                let _ = udp.send_to(&answer, client).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::catalog::parse_endpoints;
    use serde_json::json;

    fn catalog() -> Catalog {
        let mut catalog = Catalog::with_services([
            json!({"metadata": {"namespace": "shop", "name": "web"},
                   "spec": {"clusterIP": "10.43.0.20",
                            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"namespace": "shop", "name": "db"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"namespace": "shop", "name": "search"},
                   "spec": {"type": "ExternalName", "externalName": "search.example.org."}}),
        ]);
        catalog.endpoints.insert(
            ("shop".into(), "db".into()),
            parse_endpoints(&json!({"subsets": [{
                "addresses": [{"ip": "10.42.1.5", "hostname": "db-0"}, {"ip": "10.42.2.6"}],
                "notReadyAddresses": [{"ip": "10.42.3.7", "hostname": "db-2"}],
                "ports": [{"name": "pg", "port": 5432}]}]})),
        );
        catalog
    }

    fn addresses(found: &Lookup) -> Vec<Ipv4Addr> {
        match found {
            Lookup::Answer { answers, .. } => answers
                .iter()
                .filter_map(|r| match r.data {
                    RecordData::A(ip) => Some(ip),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_or_their_pods() {
        let catalog = catalog();
        let web = lookup(&catalog, "k8s.local", "Web.Shop.svc.k8s.local.", TYPE_A);
        assert_eq!(addresses(&web), [Ipv4Addr::new(10, 43, 0, 20)]);
        let db = lookup(&catalog, "k8s.local", "db.shop.svc.k8s.local", TYPE_A);
        assert_eq!(
            addresses(&db),
            [Ipv4Addr::new(10, 42, 1, 5), Ipv4Addr::new(10, 42, 2, 6)],
            "ready pods only"
        );
        let search = lookup(&catalog, "k8s.local", "search.shop.svc.k8s.local", TYPE_A);
        assert!(matches!(search, Lookup::Answer { ref answers, .. }
            if answers[0].data == RecordData::Cname("search.example.org".into())));
        assert_eq!(
            lookup(&catalog, "k8s.local", "web.shop.svc.k8s.local", 28),
            Lookup::NoData,
            "AAAA of an existing name"
        );
    }

    #[test]
    fn pods_resolve_by_hostname_and_by_address() {
        let catalog = catalog();
        let named = lookup(&catalog, "k8s.local", "db-0.db.shop.svc.k8s.local", TYPE_A);
        assert_eq!(addresses(&named), [Ipv4Addr::new(10, 42, 1, 5)]);
        let by_ip = lookup(
            &catalog,
            "k8s.local",
            "10-42-2-6.db.shop.svc.k8s.local",
            TYPE_A,
        );
        assert_eq!(addresses(&by_ip), [Ipv4Addr::new(10, 42, 2, 6)]);
        let pod = lookup(
            &catalog,
            "k8s.local",
            "10-42-9-9.shop.pod.k8s.local",
            TYPE_A,
        );
        assert_eq!(addresses(&pod), [Ipv4Addr::new(10, 42, 9, 9)]);
        assert_eq!(
            lookup(&catalog, "k8s.local", "db-9.db.shop.svc.k8s.local", TYPE_A),
            Lookup::NxDomain
        );
        assert_eq!(
            lookup(&catalog, "k8s.local", "db-2.db.shop.svc.k8s.local", TYPE_A),
            Lookup::NxDomain,
            "not ready yet"
        );
    }

    #[test]
    fn srv_records_name_ports_and_targets() {
        let catalog = catalog();
        let web = lookup(
            &catalog,
            "k8s.local",
            "_http._tcp.web.shop.svc.k8s.local",
            TYPE_SRV,
        );
        let Lookup::Answer {
            answers,
            additional,
        } = web
        else {
            panic!("{web:?}");
        };
        assert_eq!(answers.len(), 1);
        assert!(
            matches!(&answers[0].data, RecordData::Srv { port: 80, target, .. }
            if target == "web.shop.svc.k8s.local")
        );
        assert_eq!(
            additional,
            [a_record(
                "web.shop.svc.k8s.local",
                Ipv4Addr::new(10, 43, 0, 20)
            )]
        );
        let db = lookup(
            &catalog,
            "k8s.local",
            "_pg._tcp.db.shop.svc.k8s.local",
            TYPE_SRV,
        );
        let Lookup::Answer { answers, .. } = db else {
            panic!("{db:?}");
        };
        let targets: Vec<_> = answers
            .iter()
            .map(|r| match &r.data {
                RecordData::Srv { target, .. } => target.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                "db-0.db.shop.svc.k8s.local",
                "10-42-2-6.db.shop.svc.k8s.local"
            ]
        );
        assert_eq!(
            lookup(
                &catalog,
                "k8s.local",
                "_http._udp.web.shop.svc.k8s.local",
                TYPE_SRV
            ),
            Lookup::NxDomain
        );
    }

    #[test]
    fn names_outside_the_domain_are_forwarded_and_missing_ones_denied() {
        let catalog = catalog();
        assert_eq!(
            lookup(&catalog, "k8s.local", "example.org", TYPE_A),
            Lookup::Elsewhere
        );
        assert_eq!(
            lookup(
                &catalog,
                "k8s.local",
                "example.org.shop.svc.k8s.local",
                TYPE_A
            ),
            Lookup::NxDomain
        );
        assert_eq!(
            lookup(&catalog, "k8s.local", "nothing.shop.svc.k8s.local", TYPE_A),
            Lookup::NxDomain
        );
        assert_eq!(
            lookup(&catalog, "k8s.local", "shop.svc.k8s.local", TYPE_A),
            Lookup::NoData
        );
        assert_eq!(
            lookup(&catalog, "k8s.local", "gone.svc.k8s.local", TYPE_A),
            Lookup::NxDomain
        );
        assert_eq!(
            lookup(&catalog, "k8s.local", "k8s.local", TYPE_A),
            Lookup::NoData
        );
    }

    #[test]
    fn reverse_names_point_at_services_and_named_pods() {
        let catalog = catalog();
        let service = lookup(&catalog, "k8s.local", "20.0.43.10.in-addr.arpa", TYPE_PTR);
        assert!(matches!(service, Lookup::Answer { ref answers, .. }
            if answers[0].data == RecordData::Ptr("web.shop.svc.k8s.local".into())));
        let pod = lookup(&catalog, "k8s.local", "5.1.42.10.in-addr.arpa", TYPE_PTR);
        assert!(matches!(pod, Lookup::Answer { ref answers, .. }
            if answers[0].data == RecordData::Ptr("db-0.db.shop.svc.k8s.local".into())));
        assert_eq!(
            lookup(&catalog, "k8s.local", "1.1.168.192.in-addr.arpa", TYPE_PTR),
            Lookup::Elsewhere
        );
    }

    /// A query message for `name` and `qtype` with ID 0x1234 and recursion desired.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut message = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        write_name(&mut message, name, "");
        message.extend_from_slice(&qtype.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        message
    }

    /// The rcode and the A addresses of an answer message.
    fn read_answer(message: &[u8]) -> (u8, Vec<Ipv4Addr>) {
        let rcode = message[3] & 0x0F;
        let answers = u16::from_be_bytes([message[6], message[7]]);
        let query = parse_query(&{
            let mut copy = message.to_vec();
            copy[2] &= 0x7F; // read it as a query to skip the question
            copy
        })
        .unwrap();
        let mut offset = query.question_end;
        let mut ips = Vec::new();
        for _ in 0..answers {
            let (_, after) = read_name(message, offset).unwrap();
            let rtype = u16::from_be_bytes([message[after], message[after + 1]]);
            let length = usize::from(u16::from_be_bytes([message[after + 8], message[after + 9]]));
            let data = &message[after + 10..after + 10 + length];
            if rtype == TYPE_A {
                ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            }
            offset = after + 10 + length;
        }
        (rcode, ips)
    }

    #[test]
    fn queries_round_trip_through_the_wire_format() {
        let message = query("web.shop.svc.k8s.local", TYPE_A);
        let parsed = parse_query(&message).unwrap();
        assert_eq!(parsed.name, "web.shop.svc.k8s.local");
        assert_eq!((parsed.qtype, parsed.qclass), (TYPE_A, CLASS_IN));
        let answers = [a_record(
            "web.shop.svc.k8s.local",
            Ipv4Addr::new(10, 43, 0, 20),
        )];
        let out = response(
            &message,
            Some(&parsed),
            0,
            true,
            &answers,
            &[],
            Some(UDP_LIMIT),
        );
        assert_eq!(&out[0..2], &[0x12, 0x34]);
        assert_eq!(out[2] & 0x84, 0x84, "a response, authoritative");
        assert_eq!(read_answer(&out), (0, vec![Ipv4Addr::new(10, 43, 0, 20)]));
        // Too many answers for UDP: truncated, the client retries over TCP.
        let many: Vec<Record> = (0..60)
            .map(|i| a_record("web.shop.svc.k8s.local", Ipv4Addr::new(10, 42, 0, i)))
            .collect();
        let out = response(
            &message,
            Some(&parsed),
            0,
            true,
            &many,
            &[],
            Some(UDP_LIMIT),
        );
        assert!(out.len() <= UDP_LIMIT && out[2] & 0x02 != 0);
        let out = response(&message, Some(&parsed), 0, true, &many, &[], None);
        assert_eq!(read_answer(&out).1.len(), 60);
    }

    #[test]
    fn malformed_messages_never_panic() {
        assert_eq!(parse_query(&[1, 2, 3]), Err(Refusal::Drop));
        let mut looped = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        assert_eq!(parse_query(&looped), Err(Refusal::Code(RCODE_FORMERR)));
        looped[2] = 0x28; // opcode 5 (UPDATE)
        assert_eq!(parse_query(&looped), Err(Refusal::Code(RCODE_NOTIMP)));
        // Every truncation and a pseudo-random stream of byte flips of a real query.
        let message = query("_http._tcp.web.shop.svc.k8s.local", TYPE_SRV);
        for end in 0..message.len() {
            let _ = parse_query(&message[..end]);
        }
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let mut copy = message.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let at = state as usize % copy.len();
                copy[at] = (state >> 8) as u8;
            }
            if let Ok(parsed) = parse_query(&copy) {
                let _ = lookup(&catalog(), "k8s.local", &parsed.name, parsed.qtype);
                let _ = response(&copy, Some(&parsed), 0, true, &[], &[], Some(UDP_LIMIT));
            }
        }
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let text = "search lan\nnameserver 192.168.1.1\nnameserver fe80::1\nnameserver bogus\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            [
                "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    /// A real upstream on loopback that answers every query with 192.0.2.1, or stays silent.
    async fn upstream(silent: bool) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 512];
            while let Ok((n, client)) = socket.recv_from(&mut buffer).await {
                if silent {
                    continue;
                }
                let message = &buffer[..n];
                let parsed = parse_query(message).unwrap();
                let record = a_record(&parsed.name, Ipv4Addr::new(192, 0, 2, 1));
                let out = response(message, Some(&parsed), 0, false, &[record], &[], None);
                socket.send_to(&out, client).await.unwrap();
            }
        });
        address
    }

    async fn server(upstreams: Vec<SocketAddr>, synced: bool) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(address).await.unwrap();
        let config = DnsConfig {
            cluster_domain: "k8s.local".into(),
            upstreams,
        };
        let mut catalog = catalog();
        catalog.synced = synced;
        let catalog = Arc::new(RwLock::new(catalog));
        tokio::spawn(serve_on(
            udp,
            tcp,
            config,
            catalog,
            Duration::from_millis(300),
        ));
        address
    }

    async fn ask_udp(server: SocketAddr, message: &[u8]) -> Vec<u8> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(message, server).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        buffer.truncate(n);
        buffer
    }

    #[tokio::test]
    async fn the_server_answers_cluster_names_and_forwards_the_rest() {
        let upstream = upstream(false).await;
        let server = server(vec![upstream], true).await;
        let cluster = ask_udp(server, &query("web.shop.svc.k8s.local", TYPE_A)).await;
        assert_eq!(
            read_answer(&cluster),
            (0, vec![Ipv4Addr::new(10, 43, 0, 20)])
        );
        let missing = ask_udp(server, &query("nope.shop.svc.k8s.local", TYPE_A)).await;
        assert_eq!(read_answer(&missing).0, RCODE_NXDOMAIN);
        let outside = ask_udp(server, &query("example.org", TYPE_A)).await;
        assert_eq!(
            read_answer(&outside),
            (0, vec![Ipv4Addr::new(192, 0, 2, 1)])
        );
        // The same over TCP, two queries on one connection.
        let mut stream = TcpStream::connect(server).await.unwrap();
        for _ in 0..2 {
            write_framed(&mut stream, &query("db.shop.svc.k8s.local", TYPE_A))
                .await
                .unwrap();
            let answer = read_framed(&mut stream).await.unwrap().unwrap();
            assert_eq!(read_answer(&answer).1.len(), 2);
        }
    }

    #[tokio::test]
    async fn before_the_first_list_missing_names_are_not_denied() {
        let server = server(Vec::new(), false).await;
        let missing = ask_udp(server, &query("new.shop.svc.k8s.local", TYPE_A)).await;
        assert_eq!(read_answer(&missing).0, RCODE_SERVFAIL);
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_servfail() {
        let silent = upstream(true).await;
        let server = server(vec![silent], true).await;
        let outside = ask_udp(server, &query("example.org", TYPE_A)).await;
        assert_eq!(read_answer(&outside).0, RCODE_SERVFAIL);
        // Cluster names do not wait for the upstream.
        let cluster = ask_udp(server, &query("web.shop.svc.k8s.local", TYPE_A)).await;
        assert_eq!(read_answer(&cluster).0, 0);
    }
}
