//! `bramble.toml`: the one file a Pi owner edits, on the card's FAT boot partition.
//!
//! One image serves every Pi: the file holds the cluster's settings, and `[mac."…"]` tables
//! override them for the Pi with that Ethernet address (its role, hostname, static address).
//! [`BrambleToml::parse`] reports TOML mistakes with their line; [`BrambleToml::resolve`] merges
//! the overrides for one MAC address and checks everything, listing every problem at once so
//! the Pi can show them all on its console. [`scrub_secrets`] rewrites the file without the
//! join token and the Wi-Fi password once the Pi has kept them on its own root partition.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

/// The master's API port when `master` names no port.
pub const DEFAULT_API_PORT: u16 = 6443;

/// Shortest join token accepted: guessing it must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The keys [`scrub_secrets`] removes, as (table, key); "" is the top level.
pub const SECRET_KEYS: [(&str, &str); 2] = [("", "join_token"), ("wifi", "password")];

/// What the file says, as written: every field optional, so that the same shape serves the
/// shared settings and each `[mac."…"]` override.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `master` or `agent`.
    pub role: Option<String>,
    /// The cluster's name (shown on the dashboard and in node labels).
    pub cluster: Option<String>,
    /// The master's address, `HOST` or `HOST:PORT` (agents).
    pub master: Option<String>,
    /// The shared join secret (removed from the card after first boot).
    pub join_token: Option<String>,
    /// This Pi's host name and node name.
    pub hostname: Option<String>,
    /// Registries reached over plain HTTP (host:port).
    pub insecure_registries: Option<Vec<String>>,
    /// Extra node labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Where the node keeps local-path volumes (an absolute path, e.g. a USB disk's mount
    /// point); default: the agent's data directory's `storage`.
    pub storage_dir: Option<String>,
    /// Containers that name no seccomp profile run under the runtime's default profile
    /// (the agent's `--seccomp-default`; default false, as kubelet's).
    pub seccomp_default: Option<bool>,
    /// Sysctls pods may set beyond the safe set (the agent's `--allowed-unsafe-sysctls`).
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    /// Time servers; an empty list means none (the clock then follows the master).
    pub ntp: Option<Vec<String>>,
    /// Wired or wireless addressing.
    pub network: Option<NetworkSettings>,
    /// Wireless network.
    pub wifi: Option<WifiSettings>,
    /// SSH access.
    pub ssh: Option<SshSettings>,
    /// LEDs and buttons.
    pub panel: Option<PanelSettings>,
    /// Settings only the master uses.
    #[serde(rename = "master-options")]
    pub master_options: Option<MasterSettings>,
    /// Per-Pi overrides keyed by MAC address (top level only).
    pub mac: Option<BTreeMap<String, Settings>>,
}

/// `[network]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// `eth0`, `wlan0`, …; default: wlan0 when `[wifi]` is set, else eth0.
    pub interface: Option<String>,
    /// `dhcp` or `ADDRESS/PREFIX` (static).
    pub address: Option<String>,
    /// The default gateway (static addressing).
    pub gateway: Option<String>,
    /// DNS servers (static addressing; DHCP brings its own).
    pub dns: Option<Vec<String>>,
}

/// `[wifi]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WifiSettings {
    /// The network's name.
    pub ssid: Option<String>,
    /// WPA passphrase (8-63 characters); absent for an open network.
    pub password: Option<String>,
    /// Two-letter regulatory country code (GB, US, DE, …).
    pub country: Option<String>,
}

/// `[ssh]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Public keys allowed to log in as root.
    pub authorized_keys: Option<Vec<String>>,
}

/// `[panel]`: the same values as the `--gpio`, `--status-led`, `--strip`, `--buttons` and
/// `--brightness` flags.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PanelSettings {
    /// none, gpiochip, gpiochip:/dev/gpiochipN, rppal or simulated.
    pub gpio: Option<String>,
    /// A BCM pin, rgb:R,G,B or none.
    pub status_led: Option<String>,
    /// blinkt, apa102:DATA,CLOCK,LEDS or none.
    pub strip: Option<String>,
    /// kill=27, monkey=22, … or none.
    pub buttons: Option<String>,
    /// 0-31.
    pub brightness: Option<u8>,
}

/// `[master-options]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MasterSettings {
    /// LoadBalancer addresses, `FIRST-LAST` or a CIDR.
    pub load_balancer_pool: Option<String>,
    /// The DNS domain of services.
    pub cluster_domain: Option<String>,
    /// How fast failures are handled: `demo` (the card's default: a dead node is noticed
    /// within 2 s) or `default` (upstream-like).
    pub profile: Option<String>,
    /// Pod Security admission's cluster-wide defaults and exemptions.
    pub pod_security: Option<PodSecuritySettings>,
}

/// `[master-options.pod_security]`: upstream's `PodSecurityConfiguration` (its `defaults` and
/// `exemptions`, with upstream's key names).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PodSecuritySettings {
    /// Levels and versions for namespaces without Pod Security labels.
    pub defaults: Option<PodSecurityDefaults>,
    /// Requests never evaluated.
    pub exemptions: Option<PodSecurityExemptions>,
}

/// `defaults`: each level privileged, baseline or restricted; each version latest or v1.N.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PodSecurityDefaults {
    /// Enforced level.
    pub enforce: Option<String>,
    /// Its version.
    pub enforce_version: Option<String>,
    /// Audited (logged) level.
    pub audit: Option<String>,
    /// Its version.
    pub audit_version: Option<String>,
    /// Warned-about level.
    pub warn: Option<String>,
    /// Its version.
    pub warn_version: Option<String>,
}

/// `exemptions`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityExemptions {
    /// User names.
    pub usernames: Option<Vec<String>>,
    /// Namespaces.
    pub namespaces: Option<Vec<String>>,
    /// Runtime class names.
    pub runtime_classes: Option<Vec<String>>,
}

/// A Pi's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs `bramble master`.
    Master,
    /// Runs `bramble agent`.
    Agent,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Agent => "agent",
        })
    }
}

/// How the Pi gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// DHCP (busybox udhcpc).
    Dhcp,
    /// A fixed address.
    Static {
        /// The address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// The default gateway.
        gateway: Option<Ipv4Addr>,
        /// DNS servers.
        dns: Vec<IpAddr>,
    },
}

/// A wireless network to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wifi {
    /// Its name.
    pub ssid: String,
    /// Its passphrase, if any.
    pub password: Option<String>,
    /// Regulatory country.
    pub country: String,
}

/// Everything one Pi needs at boot, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Master or agent.
    pub role: Role,
    /// The cluster's name.
    pub cluster: String,
    /// The master's API URL (`https://HOST:PORT`); `None` on the master.
    pub master_url: Option<String>,
    /// The join secret; `None` on a master that generates its own.
    pub join_token: Option<String>,
    /// Host name and node name.
    pub hostname: String,
    /// The interface the cluster runs on.
    pub interface: String,
    /// Its addressing.
    pub addressing: Addressing,
    /// The wireless network, if any.
    pub wifi: Option<Wifi>,
    /// Keys allowed to log in as root over SSH.
    pub ssh_keys: Vec<String>,
    /// Time servers.
    pub ntp: Vec<String>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// The agent's `--storage-dir`, when the file sets one.
    pub storage_dir: Option<String>,
    /// The agent's `--seccomp-default`.
    pub seccomp_default: bool,
    /// The agent's `--allowed-unsafe-sysctls`.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Panel flags for `bramble master`/`bramble agent`, as `--flag value` pairs.
    pub panel_args: Vec<String>,
    /// Extra `bramble master` flags from `[master-options]`.
    pub master_args: Vec<String>,
}

/// A TOML mistake, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("bramble.toml is not valid TOML or has an unknown setting: {0}")]
pub struct ParseError(String);

/// The whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct BrambleToml {
    settings: Settings,
}

impl BrambleToml {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<BrambleToml, ParseError> {
        let settings: Settings = toml::from_str(text).map_err(|e| ParseError(e.to_string()))?;
        Ok(BrambleToml { settings })
    }

    /// A file from settings already parsed (e.g. merged with kept secrets).
    pub fn from_settings(settings: Settings) -> BrambleToml {
        BrambleToml { settings }
    }

    /// The settings as written, before any override.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings for the Pi whose Ethernet address is `mac` (any case, `:` or `-`),
    /// checked. Every problem is listed.
    pub fn resolve(&self, mac: &str) -> Result<NodeConfig, Vec<String>> {
        let mut problems = Vec::new();
        let wanted = normalize_mac(mac);
        let mut merged = self.settings.clone();
        let overrides = merged.mac.take().unwrap_or_default();
        for (key, over) in &overrides {
            let Some(normalized) = normalize_mac(key) else {
                problems.push(format!(
                    "[mac.\"{key}\"]: not a MAC address (write it as dc:a6:32:01:02:03)"
                ));
                continue;
            };
            if over.mac.is_some() {
                problems.push(format!("[mac.\"{key}\"] cannot hold further [mac] tables"));
            }
            if Some(&normalized) == wanted.as_ref() {
                merged = overlay(merged, over.clone());
            }
        }
        let config = check(merged, wanted.as_deref().unwrap_or(mac), &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems),
        }
    }
}

/// `dc:a6:32:01:02:03` from any spelling of six hex bytes.
pub fn normalize_mac(text: &str) -> Option<String> {
    let bytes: Vec<&str> = text.trim().split([':', '-']).collect();
    let valid = bytes.len() == 6
        && bytes
            .iter()
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    valid.then(|| bytes.join(":").to_ascii_lowercase())
}

/// `over`'s values where it has them, `base`'s otherwise; sections merge key by key.
fn overlay(base: Settings, over: Settings) -> Settings {
    fn merge<T>(base: Option<T>, over: Option<T>, each: impl FnOnce(T, T) -> T) -> Option<T> {
        match (base, over) {
            (Some(base), Some(over)) => Some(each(base, over)),
            (base, over) => over.or(base),
        }
    }
    Settings {
        role: over.role.or(base.role),
        cluster: over.cluster.or(base.cluster),
        master: over.master.or(base.master),
        join_token: over.join_token.or(base.join_token),
        hostname: over.hostname.or(base.hostname),
        insecure_registries: over.insecure_registries.or(base.insecure_registries),
        labels: merge(base.labels, over.labels, |mut base, over| {
            base.extend(over);
            base
        }),
        storage_dir: over.storage_dir.or(base.storage_dir),
        seccomp_default: over.seccomp_default.or(base.seccomp_default),
        allowed_unsafe_sysctls: over.allowed_unsafe_sysctls.or(base.allowed_unsafe_sysctls),
        ntp: over.ntp.or(base.ntp),
        network: merge(base.network, over.network, |base, over| NetworkSettings {
            interface: over.interface.or(base.interface),
            address: over.address.or(base.address),
            gateway: over.gateway.or(base.gateway),
            dns: over.dns.or(base.dns),
        }),
        wifi: merge(base.wifi, over.wifi, |base, over| WifiSettings {
            ssid: over.ssid.or(base.ssid),
            password: over.password.or(base.password),
            country: over.country.or(base.country),
        }),
        ssh: merge(base.ssh, over.ssh, |base, over| SshSettings {
            authorized_keys: over.authorized_keys.or(base.authorized_keys),
        }),
        panel: merge(base.panel, over.panel, |base, over| PanelSettings {
            gpio: over.gpio.or(base.gpio),
            status_led: over.status_led.or(base.status_led),
            strip: over.strip.or(base.strip),
            buttons: over.buttons.or(base.buttons),
            brightness: over.brightness.or(base.brightness),
        }),
        master_options: merge(base.master_options, over.master_options, |base, over| {
            MasterSettings {
                load_balancer_pool: over.load_balancer_pool.or(base.load_balancer_pool),
                cluster_domain: over.cluster_domain.or(base.cluster_domain),
                profile: over.profile.or(base.profile),
                pod_security: over.pod_security.or(base.pod_security),
            }
        }),
        mac: None,
    }
}

/// A DNS label: what a host name and a node name must be.
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The default host name: `bramble-` and the MAC address's last three bytes.
pub fn default_hostname(mac: &str) -> String {
    let tail: String = mac
        .split(':')
        .skip(3)
        .collect::<Vec<_>>()
        .concat()
        .to_ascii_lowercase();
    if tail.is_empty() {
        "bramble".to_owned()
    } else {
        format!("bramble-{tail}")
    }
}

/// `https://HOST:PORT` from `HOST`, `HOST:PORT` or a URL.
fn master_url(text: &str) -> Result<String, String> {
    let rest = text
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(format!(
            "master = {text:?}: write the master's address, e.g. \"192.168.1.10\" or \"pi-1.local:6443\""
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("master = {text:?}: {port:?} is not a port number"))?;
            (host.to_owned(), port)
        }
        _ if rest.parse::<std::net::Ipv6Addr>().is_ok() => (format!("[{rest}]"), DEFAULT_API_PORT),
        _ => (rest.to_owned(), DEFAULT_API_PORT),
    };
    Ok(format!("https://{host}:{port}"))
}

fn check(settings: Settings, mac: &str, problems: &mut Vec<String>) -> Option<NodeConfig> {
    let role = match settings.role.as_deref() {
        Some("master") => Some(Role::Master),
        Some("agent") | None => Some(Role::Agent),
        Some(other) => {
            problems.push(format!("role = {other:?}: use \"master\" or \"agent\""));
            None
        }
    };
    let cluster = settings.cluster.unwrap_or_else(|| "bramble".to_owned());
    if !is_hostname(&cluster) {
        problems.push(format!(
            "cluster = {cluster:?}: use lower-case letters, digits and '-' (at most 63)"
        ));
    }
    let master_url = match (role, settings.master.as_deref()) {
        (_, Some(master)) => master_url(master).map_err(|e| problems.push(e)).ok(),
        (Some(Role::Agent), None) => {
            problems.push(
                "master is missing: an agent needs the master's address, e.g. master = \"192.168.1.10\""
                    .to_owned(),
            );
            None
        }
        _ => None,
    };
    let join_token = settings.join_token.map(|t| t.trim().to_owned());
    match (&join_token, role) {
        (Some(token), _) if token.len() < MIN_TOKEN_LEN && !token.starts_with("bramble1.") => {
            problems.push(format!(
                "join_token is {} characters: use at least {MIN_TOKEN_LEN} (letters and digits)",
                token.len()
            ))
        }
        (Some(token), _)
            if !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') =>
        {
            problems.push("join_token: use letters, digits, '-', '_' and '.' only".to_owned())
        }
        (Some(token), Some(Role::Master)) if token.starts_with("bramble1.") => problems.push(
            "join_token: on the master write only the secret (the part after the last '.')"
                .to_owned(),
        ),
        (None, Some(Role::Agent)) => problems.push(
            "join_token is missing: an agent needs the cluster's join token (the one in the master's bramble.toml, or shown on the master's console)"
                .to_owned(),
        ),
        _ => {}
    }
    let hostname = settings.hostname.unwrap_or_else(|| default_hostname(mac));
    if !is_hostname(&hostname) {
        problems.push(format!(
            "hostname = {hostname:?}: use lower-case letters, digits and '-' (at most 63)"
        ));
    }
    let wifi = settings.wifi.and_then(|wifi| check_wifi(wifi, problems));
    let network = settings.network.unwrap_or_default();
    let interface = network
        .interface
        .clone()
        .unwrap_or_else(|| if wifi.is_some() { "wlan0" } else { "eth0" }.to_owned());
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
        problems.push(format!(
            "network.interface = {interface:?}: not an interface name"
        ));
    }
    let addressing = check_addressing(&network, problems);
    let ssh_keys = settings
        .ssh
        .and_then(|ssh| ssh.authorized_keys)
        .unwrap_or_default();
    for (index, key) in ssh_keys.iter().enumerate() {
        let kind = key.split_whitespace().next().unwrap_or_default();
        if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
            || key.split_whitespace().count() < 2
        {
            problems.push(format!(
                "ssh.authorized_keys[{index}] is not a public key line (ssh-ed25519 AAAA… you@laptop)"
            ));
        }
    }
    let mut labels = settings.labels.unwrap_or_default();
    for (key, value) in &labels {
        if key.is_empty() || key.contains([' ', '=']) || value.contains([' ', '=']) {
            problems.push(format!("labels: {key:?} = {value:?} is not a valid label"));
        }
    }
    labels
        .entry("bramble.dev/cluster".to_owned())
        .or_insert_with(|| cluster.clone());
    let storage_dir = settings.storage_dir;
    if let Some(dir) = &storage_dir {
        if !dir.starts_with('/') || dir.split('/').any(|part| part == "..") {
            problems.push(format!(
                "storage_dir = {dir:?}: use an absolute path without '..', e.g. \"/mnt/usb/storage\""
            ));
        }
    }
    let panel_args = check_panel(settings.panel.unwrap_or_default(), problems);
    let mut master_args = Vec::new();
    if let Some(options) = settings.master_options {
        if let Some(pool) = options.load_balancer_pool {
            master_args.extend(["--load-balancer-pool".to_owned(), pool]);
        }
        if let Some(domain) = options.cluster_domain {
            master_args.extend(["--cluster-domain".to_owned(), domain]);
        }
        match options.profile.as_deref() {
            Some(profile @ ("demo" | "default")) => {
                master_args.extend(["--profile".to_owned(), profile.to_owned()])
            }
            Some(other) => problems.push(format!(
                "master-options.profile = {other:?}: use \"demo\" or \"default\""
            )),
            None => {}
        }
        if let Some(pod_security) = options.pod_security {
            master_args.extend(pod_security_args(pod_security, problems));
        }
    }
    Some(NodeConfig {
        role: role?,
        cluster,
        master_url,
        join_token,
        hostname,
        interface,
        addressing,
        wifi,
        ssh_keys,
        ntp: settings
            .ntp
            .unwrap_or_else(|| vec!["pool.ntp.org".to_owned()]),
        insecure_registries: settings.insecure_registries.unwrap_or_default(),
        labels,
        storage_dir,
        seccomp_default: settings.seccomp_default.unwrap_or(false),
        allowed_unsafe_sysctls: settings.allowed_unsafe_sysctls.unwrap_or_default(),
        panel_args,
        master_args,
    })
}

/// `bramble master`'s `--pod-security-*` options for `[master-options.pod_security]`.
fn pod_security_args(settings: PodSecuritySettings, problems: &mut Vec<String>) -> Vec<String> {
    use protocol::command_line::{parse_pod_security_version, POD_SECURITY_LEVELS};
    let mut args = Vec::new();
    let defaults = settings.defaults.unwrap_or_default();
    let modes = [
        ("enforce", defaults.enforce, defaults.enforce_version),
        ("audit", defaults.audit, defaults.audit_version),
        ("warn", defaults.warn, defaults.warn_version),
    ];
    for (mode, level, version) in modes {
        if let Some(level) = level {
            if POD_SECURITY_LEVELS.contains(&level.as_str()) {
                args.extend([format!("--pod-security-{mode}"), level]);
            } else {
                problems.push(format!(
                    "master-options.pod_security.defaults.{mode} = {level:?}: use \"privileged\", \"baseline\" or \"restricted\""
                ));
            }
        }
        if let Some(version) = version {
            match parse_pod_security_version(&version) {
                Ok(version) => args.extend([format!("--pod-security-{mode}-version"), version]),
                Err(_) => problems.push(format!(
                    "master-options.pod_security.defaults.{mode}-version = {version:?}: use \"latest\" or \"v1.N\", e.g. \"v1.37\""
                )),
            }
        }
    }
    let exemptions = settings.exemptions.unwrap_or_default();
    let lists = [
        ("user", exemptions.usernames),
        ("namespace", exemptions.namespaces),
        ("runtime-class", exemptions.runtime_classes),
    ];
    for (what, names) in lists {
        for name in names.unwrap_or_default() {
            args.extend([format!("--pod-security-exempt-{what}"), name]);
        }
    }
    args
}

fn check_wifi(wifi: WifiSettings, problems: &mut Vec<String>) -> Option<Wifi> {
    let Some(ssid) = wifi.ssid.filter(|s| !s.is_empty()) else {
        problems.push("[wifi] needs ssid = \"your network's name\"".to_owned());
        return None;
    };
    if ssid.len() > 32 {
        problems.push(format!("wifi.ssid {ssid:?} is longer than 32 bytes"));
    }
    if let Some(password) = &wifi.password {
        if !(8..=63).contains(&password.len()) {
            problems.push(format!(
                "wifi.password is {} characters: WPA needs 8 to 63",
                password.len()
            ));
        }
    }
    let country = wifi.country.unwrap_or_default().to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        problems.push(
            "wifi.country: give your two-letter country code (GB, US, DE, …); radios must obey local rules"
                .to_owned(),
        );
    }
    if ssid.contains(['"', '\n']) || wifi.password.as_deref().unwrap_or("").contains(['"', '\n']) {
        problems.push("wifi: ssid and password cannot contain '\"' or line breaks".to_owned());
    }
    Some(Wifi {
        ssid,
        password: wifi.password,
        country,
    })
}

fn check_addressing(network: &NetworkSettings, problems: &mut Vec<String>) -> Addressing {
    let address = network.address.as_deref().unwrap_or("dhcp");
    if address == "dhcp" {
        if network.gateway.is_some() || network.dns.is_some() {
            problems.push(
                "network.gateway and network.dns go with a static address (DHCP brings its own)"
                    .to_owned(),
            );
        }
        return Addressing::Dhcp;
    }
    let parsed = address
        .split_once('/')
        .and_then(|(ip, prefix)| Some((ip.parse::<Ipv4Addr>().ok()?, prefix.parse::<u8>().ok()?)));
    let Some((address, prefix)) = parsed.filter(|(_, prefix)| (1..=32).contains(prefix)) else {
        problems.push(format!(
            "network.address = {address:?}: write \"dhcp\" or an address with its prefix, e.g. \"192.168.1.20/24\""
        ));
        return Addressing::Dhcp;
    };
    let gateway = network.gateway.as_deref().and_then(|gw| {
        gw.parse::<Ipv4Addr>()
            .map_err(|_| problems.push(format!("network.gateway = {gw:?} is not an IPv4 address")))
            .ok()
    });
    let dns = network
        .dns
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|server| {
            server
                .parse::<IpAddr>()
                .map_err(|_| problems.push(format!("network.dns: {server:?} is not an address")))
                .ok()
        })
        .collect();
    Addressing::Static {
        address,
        prefix,
        gateway,
        dns,
    }
}

fn check_panel(panel: PanelSettings, problems: &mut Vec<String>) -> Vec<String> {
    let mut args = Vec::new();
    let mut flag =
        |name: &str, value: Option<String>, valid: &dyn Fn(&str) -> Result<(), String>| {
            if let Some(value) = value {
                match valid(&value) {
                    Ok(()) => args.extend([format!("--{name}"), value]),
                    Err(e) => problems.push(format!("panel.{}: {e}", name.replace('-', "_"))),
                }
            }
        };
    let gpio = panel.gpio.or_else(|| Some("gpiochip".to_owned()));
    flag("gpio", gpio, &|v| {
        v.parse::<hardware::backend::BackendChoice>().map(drop)
    });
    flag("status-led", panel.status_led, &|v| {
        if v == "none" {
            return Ok(());
        }
        v.parse::<hardware::pins::StatusLedPins>().map(drop)
    });
    flag("strip", panel.strip, &|v| {
        if v == "none" {
            return Ok(());
        }
        v.parse::<hardware::pins::StripPins>().map(drop)
    });
    flag("buttons", panel.buttons, &|v| {
        if v == "none" {
            return Ok(());
        }
        v.split(',')
            .try_for_each(|b| b.trim().parse::<agent::panel::ButtonPin>().map(drop))
    });
    flag(
        "brightness",
        panel.brightness.map(|b| b.to_string()),
        &|v| match v.parse::<u8>() {
            Ok(0..=31) => Ok(()),
            _ => Err(format!("{v} is not 0-31")),
        },
    );
    args
}

/// The file without its secrets (see [`SECRET_KEYS`], also inside `[mac."…"]` tables), with a
/// comment saying where they went; `None` when there is nothing to remove. Comments and layout
/// are kept.
pub fn scrub_secrets(text: &str) -> Option<String> {
    let mut document: toml_edit::DocumentMut = text.parse().ok()?;
    let mut removed = Vec::new();
    scrub_document(&mut document, &mut removed);
    if removed.is_empty() {
        return None;
    }
    let note = format!(
        "# bramble read {} on first boot, kept {} on the Pi, and removed {} from this card.\n",
        removed.join(", "),
        if removed.len() == 1 { "it" } else { "them" },
        if removed.len() == 1 { "it" } else { "them" },
    );
    Some(note + &document.to_string())
}

fn scrub_document(document: &mut toml_edit::DocumentMut, removed: &mut Vec<String>) {
    fn scrub(table: &mut dyn toml_edit::TableLike, prefix: &str, removed: &mut Vec<String>) {
        for (section, key) in SECRET_KEYS {
            if section.is_empty() {
                if table.remove(key).is_some() {
                    removed.push(format!("{prefix}{key}"));
                }
            } else if let Some(inner) = table.get_mut(section).and_then(|i| i.as_table_like_mut()) {
                if inner.remove(key).is_some() {
                    removed.push(format!("{prefix}{section}.{key}"));
                }
            }
        }
    }
    scrub(document.as_table_mut(), "", removed);
    if let Some(macs) = document
        .get_mut("mac")
        .and_then(|item| item.as_table_like_mut())
    {
        for (mac, item) in macs.iter_mut() {
            if let Some(table) = item.as_table_like_mut() {
                scrub(table, &format!("mac.\"{mac}\"."), removed);
            }
        }
    }
}

/// The secrets in `settings` (top level and every override), to keep on the root partition.
pub fn secrets_of(settings: &Settings) -> Settings {
    let keep = |s: &Settings| Settings {
        join_token: s.join_token.clone(),
        wifi: s.wifi.as_ref().and_then(|w| {
            w.password.as_ref().map(|p| WifiSettings {
                password: Some(p.clone()),
                ..WifiSettings::default()
            })
        }),
        ..Settings::default()
    };
    let mut secrets = keep(settings);
    let macs: BTreeMap<String, Settings> = settings
        .mac
        .iter()
        .flatten()
        .map(|(mac, over)| (mac.clone(), keep(over)))
        .filter(|(_, kept)| *kept != Settings::default())
        .collect();
    secrets.mac = (!macs.is_empty()).then_some(macs);
    secrets
}

/// `settings` with the secrets kept from an earlier boot filled in where the card has none.
pub fn with_kept_secrets(settings: Settings, kept: &Settings) -> Settings {
    let fill = |s: &mut Settings, k: &Settings| {
        if s.join_token.is_none() {
            s.join_token = k.join_token.clone();
        }
        if let (Some(wifi), Some(password)) = (
            s.wifi.as_mut(),
            k.wifi.as_ref().and_then(|w| w.password.clone()),
        ) {
            if wifi.password.is_none() {
                wifi.password = Some(password);
            }
        }
    };
    let mut settings = settings;
    fill(&mut settings, kept);
    if let (Some(macs), Some(kept_macs)) = (settings.mac.as_mut(), kept.mac.as_ref()) {
        for (mac, over) in macs.iter_mut() {
            if let Some(k) = kept_macs.get(mac) {
                fill(over, k);
            }
        }
    }
    settings
}

/// TOML text for kept secrets (written mode 0600 on the root partition).
pub fn secrets_toml(secrets: &Settings) -> String {
    let mut out = String::from("# Secrets read from bramble.toml on the boot partition.\n");
    let line = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!("{key} = {}\n", toml_edit::Value::from(value)));
    };
    if let Some(token) = &secrets.join_token {
        line(&mut out, "join_token", token);
    }
    if let Some(password) = secrets.wifi.as_ref().and_then(|w| w.password.as_ref()) {
        line(&mut out, "wifi.password", password);
    }
    for (mac, over) in secrets.mac.iter().flatten() {
        out.push_str(&format!(
            "\n[mac.{}]\n",
            toml_edit::Value::from(mac.as_str())
        ));
        if let Some(token) = &over.join_token {
            line(&mut out, "join_token", token);
        }
        if let Some(password) = over.wifi.as_ref().and_then(|w| w.password.as_ref()) {
            line(&mut out, "wifi.password", password);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_MAC: &str = "dc:a6:32:00:00:01";

    fn example(name: &str) -> BrambleToml {
        let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("example exists");
        BrambleToml::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_card_default_is_a_dhcp_agent_with_the_node_kit() {
        let config = example("bramble.toml")
            .resolve("DC:A6:32:AB:CD:EF")
            .expect("valid");
        assert_eq!(config.role, Role::Agent);
        assert_eq!(
            config.master_url.as_deref(),
            Some("https://192.168.1.10:6443")
        );
        assert_eq!(config.hostname, "bramble-abcdef");
        assert_eq!(config.interface, "eth0");
        assert_eq!(config.addressing, Addressing::Dhcp);
        assert_eq!(config.panel_args, ["--gpio", "gpiochip"]);
        assert_eq!(config.ntp, ["pool.ntp.org"]);
    }

    #[test]
    fn one_file_serves_every_pi_through_mac_overrides() {
        let file = example("one-card-for-all.toml");
        let master = file.resolve(MASTER_MAC).expect("master valid");
        assert_eq!(master.role, Role::Master);
        assert_eq!(master.hostname, "pi-1");
        assert_eq!(
            master.addressing,
            Addressing::Static {
                address: "192.168.8.10".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.168.8.1".parse().unwrap()),
                dns: vec!["192.168.8.1".parse().unwrap()],
            }
        );
        assert_eq!(
            master.master_args,
            ["--load-balancer-pool", "192.168.8.240-192.168.8.250"]
        );
        assert_eq!(
            master.panel_args,
            ["--gpio", "gpiochip", "--buttons", "monkey=22"]
        );
        // Dashes, upper case: the same Pi.
        let four = file.resolve("dc-a6-32-00-00-04").expect("pi-4 valid");
        assert_eq!(four.hostname, "pi-4");
        assert_eq!(four.role, Role::Agent);
        assert_eq!(four.labels["bramble.dev/rack"], "top");
        assert_eq!(four.labels["bramble.dev/cluster"], "demo");
        assert_eq!(four.insecure_registries, ["192.168.8.10:5000"]);
        assert_eq!(four.ssh_keys.len(), 1);
        // A Pi the file does not name gets the shared settings.
        let stranger = file.resolve("b8:27:eb:12:34:56").expect("valid");
        assert_eq!(stranger.hostname, "bramble-123456");
        assert_eq!(stranger.addressing, Addressing::Dhcp);
    }

    #[test]
    fn wifi_moves_the_default_interface_to_wlan0() {
        let config = example("wifi-agent.toml")
            .resolve("2c:cf:67:00:00:09")
            .expect("valid");
        assert_eq!(config.interface, "wlan0");
        let wifi = config.wifi.expect("wifi");
        assert_eq!(wifi.ssid, "demo-net");
        assert_eq!(wifi.country, "GB");
        assert_eq!(config.panel_args, ["--gpio", "none"]);
        assert_eq!(
            config.master_url.as_deref(),
            Some("https://pi-1.local:6443")
        );
    }

    #[test]
    fn toml_mistakes_name_their_line() {
        let error = BrambleToml::parse("role = \"agent\"\nmaster = 192.168.1.10\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        let error = BrambleToml::parse("rol = \"agent\"\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `rol`"), "{error}");
        let error = BrambleToml::parse("[wifi]\nssid = \"x\"\npasword = \"y\"\n").unwrap_err();
        assert!(error.to_string().contains("pasword"), "{error}");
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = r#"
            role = "worker"
            join_token = "short"
            hostname = "Pi_2"
            storage_dir = "usb/storage"
            [network]
            address = "192.168.1.300/24"
            [wifi]
            ssid = "x"
            password = "123"
            [panel]
            strip = "apa102:23,24"
            brightness = 40
            [ssh]
            authorized_keys = ["hello"]
            [mac."not-a-mac"]
            hostname = "x"
        "#;
        let problems = BrambleToml::parse(text)
            .expect("parses")
            .resolve(MASTER_MAC)
            .unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "role = \"worker\"",
            "join_token is 5 characters",
            "hostname = \"Pi_2\"",
            "storage_dir = \"usb/storage\": use an absolute path",
            "network.address = \"192.168.1.300/24\"",
            "WPA needs 8 to 63",
            "wifi.country",
            "panel.strip",
            "panel.brightness: 40 is not 0-31",
            "ssh.authorized_keys[0]",
            "[mac.\"not-a-mac\"]",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn pod_security_settings_become_master_options() {
        let text = r#"
            role = "master"
            [master-options.pod_security.defaults]
            enforce = "baseline"
            warn = "restricted"
            warn-version = "v1.30"
            [master-options.pod_security.exemptions]
            namespaces = ["kube-system"]
            runtimeClasses = ["kata"]
        "#;
        let master = BrambleToml::parse(text)
            .unwrap()
            .resolve(MASTER_MAC)
            .expect("valid");
        assert_eq!(
            master.master_args,
            [
                "--pod-security-enforce",
                "baseline",
                "--pod-security-warn",
                "restricted",
                "--pod-security-warn-version",
                "v1.30",
                "--pod-security-exempt-namespace",
                "kube-system",
                "--pod-security-exempt-runtime-class",
                "kata",
            ]
        );
        let line: Vec<String> = master.master_args.clone();
        protocol::command_line::parse::<protocol::command_line::MasterArgs>(&line)
            .expect("the master accepts them");
        let bad = r#"
            role = "master"
            [master-options.pod_security.defaults]
            enforce = "strict"
            audit-version = "1.30"
        "#;
        let problems = BrambleToml::parse(bad)
            .unwrap()
            .resolve(MASTER_MAC)
            .unwrap_err();
        assert_eq!(
            problems,
            [
                "master-options.pod_security.defaults.enforce = \"strict\": use \"privileged\", \"baseline\" or \"restricted\"",
                "master-options.pod_security.defaults.audit-version = \"1.30\": use \"latest\" or \"v1.N\", e.g. \"v1.37\"",
            ]
        );
    }

    #[test]
    fn an_agent_needs_a_master_and_a_token_but_a_master_needs_neither() {
        let problems = BrambleToml::parse("role = \"agent\"\n")
            .unwrap()
            .resolve(MASTER_MAC)
            .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("master is missing"));
        assert!(problems[1].starts_with("join_token is missing"));
        let master = BrambleToml::parse("role = \"master\"\n")
            .unwrap()
            .resolve(MASTER_MAC)
            .expect("valid");
        assert_eq!(master.join_token, None);
        assert_eq!(master.master_url, None);
    }

    #[test]
    fn master_addresses_become_urls() {
        assert_eq!(master_url("10.0.0.1").unwrap(), "https://10.0.0.1:6443");
        assert_eq!(
            master_url("pi-1.local:7443").unwrap(),
            "https://pi-1.local:7443"
        );
        assert_eq!(
            master_url("https://10.0.0.1:6443/").unwrap(),
            "https://10.0.0.1:6443"
        );
        assert_eq!(master_url("fd00::1").unwrap(), "https://[fd00::1]:6443");
        assert!(master_url("10.0.0.1:http").is_err());
        assert!(master_url("").is_err());
    }

    #[test]
    fn secrets_leave_the_card_and_come_back_from_the_pi() {
        let text = std::fs::read_to_string(format!(
            "{}/examples/one-card-for-all.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
            + "\n[mac.\"dc:a6:32:00:00:05\"]\njoin_token = \"another-long-secret-1\"\nwifi = { ssid = \"n\", password = \"p4ssw0rd!\", country = \"DE\" }\n";
        let original = BrambleToml::parse(&text).unwrap();
        let scrubbed_text = scrub_secrets(&text).expect("something to scrub");
        assert!(!scrubbed_text.contains("hYk3pQ9sV7wZ2mT4nR8x"));
        assert!(!scrubbed_text.contains("another-long-secret-1"));
        assert!(!scrubbed_text.contains("p4ssw0rd!"));
        assert!(scrubbed_text.starts_with("# bramble read join_token, mac."));
        // Comments and the other settings stay.
        assert!(scrubbed_text.contains("# One bramble.toml for a four-Pi demo cluster"));
        assert!(scrubbed_text.contains("192.168.8.240-192.168.8.250"));
        assert_eq!(scrub_secrets(&scrubbed_text), None, "nothing left to scrub");

        let scrubbed = BrambleToml::parse(&scrubbed_text).unwrap();
        assert!(
            scrubbed.resolve("b8:27:eb:00:00:01").is_err(),
            "no token on the card"
        );
        let kept = BrambleToml::parse(&secrets_toml(&secrets_of(original.settings()))).unwrap();
        let restored = with_kept_secrets(scrubbed.settings().clone(), kept.settings());
        assert_eq!(restored, original.settings().clone());
        let five = BrambleToml { settings: restored }
            .resolve("dc:a6:32:00:00:05")
            .unwrap();
        assert_eq!(five.join_token.as_deref(), Some("another-long-secret-1"));
        assert_eq!(five.wifi.unwrap().password.as_deref(), Some("p4ssw0rd!"));
    }

    #[test]
    fn a_new_token_on_the_card_wins_over_the_kept_one() {
        let kept = BrambleToml::parse("join_token = \"old-secret-0123456789\"\n").unwrap();
        let card = BrambleToml::parse("join_token = \"new-secret-0123456789\"\n").unwrap();
        let merged = with_kept_secrets(card.settings().clone(), kept.settings());
        assert_eq!(merged.join_token.as_deref(), Some("new-secret-0123456789"));
    }
}
