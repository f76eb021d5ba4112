//! The command lines of `bramble master` and `bramble agent`, which bramble also writes for
//! itself: the card's init starts the master and the agent, `bramble up` starts both for its
//! virtual Pis. The same clap structs parse a command line and write one
//! ([`MasterArgs::command_line`], [`AgentArgs::command_line`]), so what bramble starts is
//! always something it accepts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use hardware::backend::BackendChoice;
use hardware::pins::{StatusLedPins, StripPins};

use crate::address_pool::{format_address_pool, parse_address_range};
use crate::chaos::{parse_duration, MonkeyPolicy};

/// `bramble master`: the API server, the store, the controllers and the scheduler.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct MasterArgs {
    /// Directory for the database, certificates and kubeconfig.
    #[arg(long, env = "BRAMBLE_DATA_DIR", default_value = "/var/lib/bramble")]
    pub data_dir: PathBuf,
    /// Address and port to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub panel: PanelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub monkey: MonkeyArgs,
}

/// The cluster's settings, shared by `bramble master` and `bramble up`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ClusterArgs {
    /// Address clients and agents use to reach the master (default: the listen address, or
    /// 127.0.0.1 when listening on all addresses). Added to the server certificate.
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// Extra DNS name or IP for the server certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Range that services' cluster IPs come from.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Range of node ports, as LOW-HIGH.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: (i64, i64),
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Range pod IPs come from; each node gets a slice of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Prefix length of each node's slice of the cluster CIDR.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(8..=30))]
    pub node_cidr_mask: u32,
    /// How fast failures are handled: `default` (upstream-like: a dead node is noticed after
    /// 40 s, its pods move after 5 min) or `demo` (noticed within 2 s, pods replaced at once).
    #[arg(long, default_value = "default", value_parser = ["default", "demo"])]
    pub profile: String,
    /// Addresses LoadBalancer services get on the LAN; one healthy node answers ARP for each,
    /// and it moves when that node dies. Without a pool, LoadBalancer services answer on every
    /// node's address (like k3s). RANGE is FIRST-LAST (192.168.1.240-192.168.1.250) or a CIDR
    /// (192.168.1.240/28: all but its network and broadcast addresses); repeatable or comma
    /// separated. Keep it out of your DHCP server's range.
    #[arg(
        long = "load-balancer-pool",
        value_name = "RANGE",
        value_delimiter = ',',
        value_parser = parse_address_range
    )]
    pub load_balancer_pool: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Seconds between writes of leases and events to disk (they live in memory in between,
    /// so heartbeats do not wear out the SD card).
    #[arg(long, default_value_t = 300)]
    pub checkpoint_seconds: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pod_security: PodSecurityArgs,
}

/// Pod Security admission's cluster-wide defaults and exemptions: upstream's
/// `PodSecurityConfiguration` (`defaults`, `exemptions`) as options. A namespace's
/// `pod-security.kubernetes.io/*` labels override the defaults.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct PodSecurityArgs {
    /// Pod Security level enforced where a namespace sets none: privileged, baseline or
    /// restricted.
    #[arg(long, default_value = "privileged", value_parser = POD_SECURITY_LEVELS)]
    pub pod_security_enforce: String,
    /// Version of the enforced level's checks: latest or v1.N.
    #[arg(long, default_value = "latest", value_parser = parse_pod_security_version)]
    pub pod_security_enforce_version: String,
    /// Pod Security level whose violations are logged where a namespace sets none.
    #[arg(long, default_value = "privileged", value_parser = POD_SECURITY_LEVELS)]
    pub pod_security_audit: String,
    /// Version of the audited level's checks: latest or v1.N.
    #[arg(long, default_value = "latest", value_parser = parse_pod_security_version)]
    pub pod_security_audit_version: String,
    /// Pod Security level clients are warned about where a namespace sets none.
    #[arg(long, default_value = "privileged", value_parser = POD_SECURITY_LEVELS)]
    pub pod_security_warn: String,
    /// Version of the warned level's checks: latest or v1.N.
    #[arg(long, default_value = "latest", value_parser = parse_pod_security_version)]
    pub pod_security_warn_version: String,
    /// A user whose requests Pod Security never evaluates (repeatable or comma separated).
    #[arg(
        long = "pod-security-exempt-user",
        value_name = "USER",
        value_delimiter = ','
    )]
    pub pod_security_exempt_users: Vec<String>,
    /// A namespace Pod Security never evaluates, e.g. kube-system (repeatable or comma
    /// separated).
    #[arg(
        long = "pod-security-exempt-namespace",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub pod_security_exempt_namespaces: Vec<String>,
    /// A runtime class whose pods Pod Security never evaluates (repeatable or comma separated).
    #[arg(
        long = "pod-security-exempt-runtime-class",
        value_name = "CLASS",
        value_delimiter = ','
    )]
    pub pod_security_exempt_runtime_classes: Vec<String>,
}

/// The Pod Security levels, from the most permissive.
pub const POD_SECURITY_LEVELS: [&str; 3] = ["privileged", "baseline", "restricted"];

/// Reads a Pod Security version: `latest` or `v1.N` (no leading zeros), as upstream.
pub fn parse_pod_security_version(text: &str) -> Result<String, String> {
    let minor = text.strip_prefix("v1.").unwrap_or_default();
    let well_formed = text == "latest"
        || (!minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor == "0" || !minor.starts_with('0'))
            && minor.parse::<i64>().is_ok());
    if well_formed {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?}: must be \"latest\" or \"v1.x\""))
    }
}

/// LEDs and buttons on the Pi's GPIO (see the README's wiring guide).
#[derive(Args, Debug, Clone, PartialEq)]
pub struct PanelArgs {
    /// Where LEDs and buttons are: none, simulated (no hardware; see `bramble gpio`),
    /// gpiochip (the GPIO character device, any kernel; gpiochip:/dev/gpiochipN to pick the
    /// chip) or rppal (Raspberry Pi OS; only in a bramble built with `--features rppal`).
    #[arg(long, default_value = "none", value_name = "BACKEND")]
    pub gpio: BackendChoice,
    /// The status LED: a BCM pin (17), an RGB LED (rgb:5,6,13), or none.
    #[arg(long, default_value = "17", value_name = "PINS", value_parser = parse_status_led)]
    pub status_led: ::std::option::Option<StatusLedPins>,
    /// The APA102 strip: blinkt (BCM23 data, BCM24 clock, 8 LEDs), apa102:DATA,CLOCK,LEDS, or
    /// none. A node shows one LED per pod, the master one per node.
    #[arg(long, default_value = "blinkt", value_name = "STRIP", value_parser = parse_strip)]
    pub strip: ::std::option::Option<StripPins>,
    /// Buttons (to ground) as ACTION=PIN, comma-separated: kill=27 on a node (press kills it,
    /// a long press revives it), monkey=22 on the master (starts and stops the chaos monkey);
    /// none for no buttons. Default: kill=27 on a node, monkey=22 on the master.
    #[arg(long, value_name = "BUTTONS")]
    pub buttons: Option<String>,
    /// The strip's brightness, 0-31.
    #[arg(long, default_value_t = hardware::pins::DEFAULT_BRIGHTNESS, value_parser = clap::value_parser!(u8).range(0..=31))]
    pub brightness: u8,
}

/// The chaos monkey's policy, shared by the dashboard and the master's monkey button.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct MonkeyArgs {
    /// The chaos monkey kills a node this often (20s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub monkey_interval: Duration,
    /// How long a node the monkey killed stays dead.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub monkey_dead_for: Duration,
    /// Only nodes matching this label selector may die (default: any node but the master).
    #[arg(long)]
    pub monkey_nodes: Option<String>,
    /// The monkey never leaves fewer Ready nodes than this.
    #[arg(long, default_value_t = 2)]
    pub monkey_min_ready: usize,
}

impl MonkeyArgs {
    /// The policy these options describe.
    pub fn policy(self) -> MonkeyPolicy {
        MonkeyPolicy {
            interval: self.monkey_interval,
            dead_for: self.monkey_dead_for,
            nodes: self.monkey_nodes,
            min_ready: self.monkey_min_ready,
        }
    }
}

/// `bramble agent`: a node that runs pods.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct AgentArgs {
    /// The master, as https://HOST:PORT (needed to join).
    #[arg(long)]
    pub server: Option<String>,
    /// The master's join token, used once to obtain this node's credentials. Never written on
    /// a command line bramble builds (`ps` would show it): pass it in BRAMBLE_JOIN_TOKEN.
    #[arg(long, env = JOIN_TOKEN_ENV, hide_env_values = true)]
    pub join_token: Option<String>,
    /// Kubeconfig with this node's credentials (default: DATA_DIR/node.kubeconfig, written
    /// when the node joins).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address other nodes reach this one on (default: the one that routes to the master).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Where pods, images and container state live.
    #[arg(long, default_value = "/var/lib/bramble/agent")]
    pub data_dir: PathBuf,
    /// Where the node's local-path volumes live, one directory per claim (default:
    /// DATA_DIR/storage). The node reports it on its Node for the master's provisioner.
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// A registry to pull from over plain HTTP (host:port); repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// An extra node label KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Name of the pod bridge.
    #[arg(long, default_value = "bramble0")]
    pub bridge: String,
    /// The resolv.conf given to pods.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Containers that name no seccomp profile run under the runtime's default profile
    /// (kubelet's --seccomp-default).
    #[arg(long)]
    pub seccomp_default: bool,
    /// Sysctls pods may set beyond the safe set: names or `prefix*` patterns, namespaced only
    /// (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*); comma-separated or repeated.
    #[arg(long = "allowed-unsafe-sysctls", value_delimiter = ',')]
    pub allowed_unsafe_sysctls: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub panel: PanelArgs,
}

/// The environment variable that carries the join token to `bramble agent`.
pub const JOIN_TOKEN_ENV: &str = "BRAMBLE_JOIN_TOKEN";

/// Parses one of these structs from arguments (without the subcommand's name), as clap does
/// for the `bramble` binary; the defaults come from the same definitions.
pub fn parse<T: Args + FromArgMatches>(args: &[String]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("bramble").no_binary_name(true));
    let matches = command.try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

impl MasterArgs {
    /// The settings every option leaves at its default, in `data_dir`.
    pub fn new(data_dir: PathBuf) -> MasterArgs {
        let mut args: MasterArgs = parse(&[]).expect("the defaults parse");
        args.data_dir = data_dir;
        args
    }

    /// `master`, where it keeps its state and listens, and the options that differ from the
    /// defaults.
    pub fn command_line(&self) -> Vec<String> {
        let defaults = MasterArgs::new(self.data_dir.clone());
        let mut line = vec!["master".to_owned()];
        push(&mut line, "--data-dir", self.data_dir.display());
        push(&mut line, "--listen", self.listen);
        self.cluster.write(&defaults.cluster, &mut line);
        self.panel.write(&defaults.panel, &mut line);
        self.monkey.write(&defaults.monkey, &mut line);
        line
    }
}

impl ClusterArgs {
    fn write(&self, defaults: &ClusterArgs, line: &mut Vec<String>) {
        if let Some(address) = &self.advertise_address {
            push(line, "--advertise-address", address);
        }
        for name in &self.tls_san {
            push(line, "--tls-san", name);
        }
        if self.service_cidr != defaults.service_cidr {
            push(line, "--service-cidr", &self.service_cidr);
        }
        if self.node_port_range != defaults.node_port_range {
            let (low, high) = self.node_port_range;
            push(line, "--node-port-range", format!("{low}-{high}"));
        }
        if self.cluster_domain != defaults.cluster_domain {
            push(line, "--cluster-domain", &self.cluster_domain);
        }
        if self.cluster_cidr != defaults.cluster_cidr {
            push(line, "--cluster-cidr", &self.cluster_cidr);
        }
        if self.node_cidr_mask != defaults.node_cidr_mask {
            push(line, "--node-cidr-mask", self.node_cidr_mask);
        }
        if self.profile != defaults.profile {
            push(line, "--profile", &self.profile);
        }
        if !self.load_balancer_pool.is_empty() {
            let pool = format_address_pool(&self.load_balancer_pool);
            push(line, "--load-balancer-pool", pool);
        }
        if self.checkpoint_seconds != defaults.checkpoint_seconds {
            push(line, "--checkpoint-seconds", self.checkpoint_seconds);
        }
        self.pod_security.write(&defaults.pod_security, line);
    }
}

impl PodSecurityArgs {
    fn write(&self, defaults: &PodSecurityArgs, line: &mut Vec<String>) {
        let modes = [
            (
                "--pod-security-enforce",
                &self.pod_security_enforce,
                &defaults.pod_security_enforce,
            ),
            (
                "--pod-security-enforce-version",
                &self.pod_security_enforce_version,
                &defaults.pod_security_enforce_version,
            ),
            (
                "--pod-security-audit",
                &self.pod_security_audit,
                &defaults.pod_security_audit,
            ),
            (
                "--pod-security-audit-version",
                &self.pod_security_audit_version,
                &defaults.pod_security_audit_version,
            ),
            (
                "--pod-security-warn",
                &self.pod_security_warn,
                &defaults.pod_security_warn,
            ),
            (
                "--pod-security-warn-version",
                &self.pod_security_warn_version,
                &defaults.pod_security_warn_version,
            ),
        ];
        for (flag, value, default) in modes {
            if value != default {
                push(line, flag, value);
            }
        }
        for user in &self.pod_security_exempt_users {
            push(line, "--pod-security-exempt-user", user);
        }
        for namespace in &self.pod_security_exempt_namespaces {
            push(line, "--pod-security-exempt-namespace", namespace);
        }
        for class in &self.pod_security_exempt_runtime_classes {
            push(line, "--pod-security-exempt-runtime-class", class);
        }
    }
}

impl PanelArgs {
    /// The options that differ from the defaults, then always `--gpio`: whether a process
    /// drives pins shows on its command line.
    fn write(&self, defaults: &PanelArgs, line: &mut Vec<String>) {
        if self.status_led != defaults.status_led {
            let pins = self.status_led.map_or("none".to_owned(), |p| p.to_string());
            push(line, "--status-led", pins);
        }
        if self.strip != defaults.strip {
            let pins = self.strip.map_or("none".to_owned(), |p| p.to_string());
            push(line, "--strip", pins);
        }
        if let Some(buttons) = &self.buttons {
            push(line, "--buttons", buttons);
        }
        if self.brightness != defaults.brightness {
            push(line, "--brightness", self.brightness);
        }
        push(line, "--gpio", &self.gpio);
    }
}

impl MonkeyArgs {
    fn write(&self, defaults: &MonkeyArgs, line: &mut Vec<String>) {
        if self.monkey_interval != defaults.monkey_interval {
            push(line, "--monkey-interval", millis(self.monkey_interval));
        }
        if self.monkey_dead_for != defaults.monkey_dead_for {
            push(line, "--monkey-dead-for", millis(self.monkey_dead_for));
        }
        if let Some(nodes) = &self.monkey_nodes {
            push(line, "--monkey-nodes", nodes);
        }
        if self.monkey_min_ready != defaults.monkey_min_ready {
            push(line, "--monkey-min-ready", self.monkey_min_ready);
        }
    }
}

impl AgentArgs {
    /// The storage directory: `--storage-dir`, else `storage` in the data directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("storage"))
    }

    /// The settings every option leaves at its default, in `data_dir`.
    pub fn new(data_dir: PathBuf) -> AgentArgs {
        let mut args: AgentArgs = parse(&[]).expect("the defaults parse");
        args.data_dir = data_dir;
        args.join_token = None;
        args
    }

    /// `agent` and the options that differ from the defaults. The join token is left out:
    /// the caller puts it in the environment ([`JOIN_TOKEN_ENV`]).
    pub fn command_line(&self) -> Vec<String> {
        let defaults = AgentArgs::new(self.data_dir.clone());
        let mut line = vec!["agent".to_owned()];
        if let Some(server) = &self.server {
            push(&mut line, "--server", server);
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            push(&mut line, "--kubeconfig", kubeconfig.display());
        }
        if let Some(name) = &self.node_name {
            push(&mut line, "--node-name", name);
        }
        if let Some(ip) = &self.node_ip {
            push(&mut line, "--node-ip", ip);
        }
        push(&mut line, "--data-dir", self.data_dir.display());
        if let Some(storage) = &self.storage_dir {
            push(&mut line, "--storage-dir", storage.display());
        }
        for registry in &self.insecure_registries {
            push(&mut line, "--insecure-registry", registry);
        }
        for (key, value) in &self.labels {
            push(&mut line, "--label", format!("{key}={value}"));
        }
        if self.max_pods != defaults.max_pods {
            push(&mut line, "--max-pods", self.max_pods);
        }
        if self.bridge != defaults.bridge {
            push(&mut line, "--bridge", &self.bridge);
        }
        if self.resolv_conf != defaults.resolv_conf {
            push(&mut line, "--resolv-conf", self.resolv_conf.display());
        }
        if self.seccomp_default {
            line.push("--seccomp-default".to_owned());
        }
        if !self.allowed_unsafe_sysctls.is_empty() {
            push(
                &mut line,
                "--allowed-unsafe-sysctls",
                self.allowed_unsafe_sysctls.join(","),
            );
        }
        self.panel.write(&defaults.panel, &mut line);
        line
    }
}

fn push(line: &mut Vec<String>, flag: &str, value: impl std::fmt::Display) {
    line.push(flag.to_owned());
    line.push(value.to_string());
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Reads `LOW-HIGH` port ranges.
pub fn parse_port_range(text: &str) -> Result<(i64, i64), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH, got {text}"))?;
    let low: i64 = low.trim().parse().map_err(|_| format!("bad port {low}"))?;
    let high: i64 = high
        .trim()
        .parse()
        .map_err(|_| format!("bad port {high}"))?;
    if !(1..=65535).contains(&low) || !(low..=65535).contains(&high) {
        return Err(format!("{text} is not a valid port range"));
    }
    Ok((low, high))
}

/// Reads `KEY=VALUE` labels.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text}"))
}

fn parse_status_led(text: &str) -> Result<Option<StatusLedPins>, String> {
    (text != "none").then(|| text.parse()).transpose()
}

fn parse_strip(text: &str) -> Result<Option<StripPins>, String> {
    (text != "none").then(|| text.parse()).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_command_line_parses_back_to_what_wrote_it() {
        let defaults = MasterArgs::new("/var/lib/bramble/master".into());
        assert_eq!(
            defaults.command_line(),
            [
                "master",
                "--data-dir",
                "/var/lib/bramble/master",
                "--listen",
                "0.0.0.0:6443",
                "--gpio",
                "none"
            ]
        );
        let mut every = defaults.clone();
        every.listen = "10.99.0.1:7443".parse().unwrap();
        every.cluster = ClusterArgs {
            advertise_address: Some("10.99.0.1".into()),
            tls_san: vec!["pi-1".into(), "pi-1.local".into()],
            service_cidr: "10.96.0.0/12".into(),
            node_port_range: (31000, 31999),
            cluster_domain: "bramble.local".into(),
            cluster_cidr: "10.50.0.0/16".into(),
            node_cidr_mask: 26,
            profile: "demo".into(),
            load_balancer_pool: vec![
                (
                    "10.99.0.200".parse().unwrap(),
                    "10.99.0.249".parse().unwrap(),
                ),
                ("10.99.1.1".parse().unwrap(), "10.99.1.1".parse().unwrap()),
            ],
            checkpoint_seconds: 60,
            pod_security: PodSecurityArgs {
                pod_security_enforce: "baseline".into(),
                pod_security_enforce_version: "v1.30".into(),
                pod_security_audit: "restricted".into(),
                pod_security_audit_version: "latest".into(),
                pod_security_warn: "restricted".into(),
                pod_security_warn_version: "v1.37".into(),
                pod_security_exempt_users: vec!["ci-bot".into()],
                pod_security_exempt_namespaces: vec!["kube-system".into(), "monitoring".into()],
                pod_security_exempt_runtime_classes: vec!["kata".into()],
            },
        };
        every.panel = PanelArgs {
            gpio: BackendChoice::Simulated,
            status_led: None,
            strip: Some("apa102:10,11,30".parse().unwrap()),
            buttons: Some("monkey=22".into()),
            brightness: 3,
        };
        every.monkey = MonkeyArgs {
            monkey_interval: Duration::from_millis(1500),
            monkey_dead_for: Duration::from_secs(5),
            monkey_nodes: Some("role in (worker)".into()),
            monkey_min_ready: 1,
        };
        for args in [defaults, every] {
            let line = args.command_line();
            assert_eq!(line[0], "master");
            let parsed: MasterArgs = parse(&line[1..]).unwrap();
            assert_eq!(parsed, args, "{line:?}");
        }
    }

    #[test]
    fn an_agent_command_line_parses_back_and_keeps_the_token_off_it() {
        let defaults = AgentArgs::new("/var/lib/bramble/agent".into());
        let mut every = defaults.clone();
        every.server = Some("https://10.99.0.1:6443".into());
        every.join_token = Some("bramble1.secret".into());
        every.kubeconfig = Some("/etc/bramble/node.kubeconfig".into());
        every.node_name = Some("pi-2".into());
        every.node_ip = Some("10.99.0.12".parse().unwrap());
        every.insecure_registries = vec!["10.99.0.1:5000".into()];
        every.labels = vec![("bramble.dev/virtual".into(), "true".into())];
        every.max_pods = 30;
        every.bridge = "pods0".into();
        every.resolv_conf = "/run/resolv.conf".into();
        every.storage_dir = Some("/mnt/usb/storage".into());
        every.seccomp_default = true;
        every.allowed_unsafe_sysctls = vec!["kernel.msg*".into(), "net.core.somaxconn".into()];
        every.panel.gpio = BackendChoice::Simulated;
        every.panel.status_led = Some("rgb:5,6,13".parse().unwrap());
        every.panel.strip = None;
        for args in [defaults, every] {
            let line = args.command_line();
            assert!(!line.iter().any(|arg| arg.contains("secret")), "{line:?}");
            let parsed: AgentArgs = parse(&line[1..]).unwrap();
            assert_eq!(
                parsed,
                AgentArgs {
                    join_token: parsed.join_token.clone(),
                    ..args
                }
            );
        }
    }

    #[test]
    fn bad_options_are_refused_with_their_reason() {
        let error = parse::<MasterArgs>(&["--node-port-range".into(), "9-3".into()]).unwrap_err();
        assert!(
            error.to_string().contains("not a valid port range"),
            "{error}"
        );
        let error = parse::<MasterArgs>(&["--pod-security-enforce-version".into(), "v1.05".into()])
            .unwrap_err();
        assert!(
            error.to_string().contains("must be \"latest\" or \"v1.x\""),
            "{error}"
        );
        let error =
            parse::<MasterArgs>(&["--pod-security-warn".into(), "strict".into()]).unwrap_err();
        assert!(error.to_string().contains("restricted"), "{error}");
        let error = parse::<AgentArgs>(&["--label".into(), "novalue".into()]).unwrap_err();
        assert!(error.to_string().contains("KEY=VALUE"), "{error}");
    }
}
