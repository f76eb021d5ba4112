//! The `bramble` binary: one executable whose subcommands run the parts of the cluster.

mod encryption_key_command;
mod gpio_command;
mod image_command;
mod user_command;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent::local_cluster;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use protocol::command_line::{AgentArgs, ClusterArgs, MasterArgs, MonkeyArgs};

/// bramble: a Raspberry Pi micro-datacenter that speaks the Kubernetes API.
///
/// Flash one image per Pi; the first becomes the master and the others join it. On a PC,
/// `bramble up` starts a local cluster you can use with kubectl.
#[derive(Parser)]
#[command(name = "bramble", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the master: the Kubernetes-compatible API server on SQLite.
    ///
    /// It creates a cluster CA, a server certificate and an admin token in the data directory on
    /// first start, and writes DIR/admin.kubeconfig once it serves:
    ///
    ///   bramble master --data-dir /var/lib/bramble
    ///   KUBECONFIG=/var/lib/bramble/admin.kubeconfig kubectl get nodes
    #[command(verbatim_doc_comment)]
    Master(MasterArgs),
    /// Start a local cluster of virtual Pis on this machine, state in ./.bramble.
    ///
    /// Each virtual Pi is a network namespace on the bridge bramble-lan running a real agent
    /// with real containers; the master and a registry holding the demo image run on the
    /// bridge's address. Returns once every Pi is Ready and keeps running in the background
    /// until `bramble down`. Needs root and, once, ./tests/setup-host:
    ///
    ///   sudo bramble up --nodes 3 --profile demo
    ///   export KUBECONFIG=$PWD/.bramble/admin.kubeconfig
    ///   kubectl create deployment hello --image=10.99.0.1:5000/bramble/demo:1 --replicas=6
    ///   sudo bramble down
    ///
    /// With --foreground it runs in the terminal until Ctrl-C. With --simulated the nodes are
    /// simulated instead (no root, no containers; see `bramble sim --help`).
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Stop a local cluster started by `bramble up` and remove what it left on the host
    /// (containers, network namespaces, mounts, the bridge, cgroups).
    ///
    ///   sudo bramble down            # keeps the cluster's objects for the next `up`
    ///   sudo bramble down --purge    # also deletes the data directory
    #[command(verbatim_doc_comment)]
    Down(DownArgs),
    /// Simulate nodes (like kwok): N fake Pis that register, heartbeat and "run" their pods.
    ///
    /// Pods bound to a simulated node become Running with a pod IP, report CPU and memory
    /// usage for `kubectl top` and autoscaling, and are finished when deleted:
    ///
    ///   bramble sim --kubeconfig .bramble/admin.kubeconfig --nodes 3
    ///   bramble sim kill sim-2        # the node stops heartbeating: watch the cluster heal
    ///   bramble sim revive sim-2
    ///
    /// Pod annotations steer the simulation: sim.bramble.dev/cpu (e.g. 400m),
    /// sim.bramble.dev/memory, sim.bramble.dev/ready-after-seconds,
    /// sim.bramble.dev/exit-after-seconds and sim.bramble.dev/exit-code.
    #[command(verbatim_doc_comment)]
    Sim(SimArgs),
    /// Show the dashboard: where every pod runs, live, with chaos controls.
    ///
    /// One card per node (Ready or not, CPU and memory, virtual LEDs) with its pods as coloured
    /// glyphs, one colour per owner; side panes with details, deployments and events. Keys kill
    /// and revive nodes, cordon, drain, scale, delete pods and run a chaos monkey; `?` lists
    /// them. Works over SSH and in 80x24:
    ///
    ///   bramble tui                               # $KUBECONFIG, ./.bramble/admin.kubeconfig, ...
    ///   bramble tui --demo                        # no confirmations, for the stage
    ///   bramble tui --monkey-interval 20s --monkey-dead-for 15s --monkey-min-ready 2
    #[command(verbatim_doc_comment)]
    Tui(TuiArgs),
    /// Show a node's front panel (status LED, pod LEDs, buttons) and press its buttons.
    ///
    /// Reads the panel through the master (GET /api/v1/nodes/NODE/proxy/gpio). The virtual Pis
    /// of `bramble up` have a simulated panel whose buttons can be pressed from here:
    ///
    ///   bramble gpio pi-2                       # what its LEDs show, LED by LED
    ///   bramble gpio pi-2 --press kill          # a short press: the node dies
    ///   bramble gpio pi-2 --press kill --hold 2s   # a long press: it comes back
    #[command(verbatim_doc_comment)]
    Gpio(gpio_command::GpioArgs),
    /// Run the node agent: join a master and run the pods it schedules here in real containers.
    ///
    /// Registers this machine as a Node, heartbeats, and runs pods with youki's libcontainer
    /// (no container daemon), pulling images and wiring each pod onto a bridge with its own IP.
    /// The first start joins with the master's join token (DIR/join.token on the master) and
    /// keeps the node's own credentials in the data directory:
    ///
    ///   bramble agent --server https://192.168.1.10:6443 --join-token bramble1.… --node-name pi-2
    ///
    /// Pods keep running when the agent stops; a restarted agent adopts them. Needs root.
    #[command(verbatim_doc_comment)]
    Agent(AgentArgs),
    /// Run a local OCI registry holding the multi-arch demo image bramble/demo:1 and :2
    /// (amd64 + arm64), as `bramble up` does, for Pis on your network to pull from.
    ///
    ///   bramble registry --listen 0.0.0.0:5000 --dir ~/bramble-registry
    ///   kubectl create deployment hello --image=LAPTOP_IP:5000/bramble/demo:1
    ///
    /// The Pis need the registry in bramble.toml's insecure_registries (plain HTTP). It is
    /// read-only unless started with push credentials (pulls are always anonymous):
    ///
    ///   BRAMBLE_REGISTRY_PUSH_AUTH=me:long-password bramble registry
    ///   docker login LAPTOP_IP:5000 -u me && docker push LAPTOP_IP:5000/me/app:1
    ///
    /// Needs Debian's docker-registry and busybox-static (./tests/setup-host installs both).
    #[command(verbatim_doc_comment)]
    Registry(RegistryArgs),
    /// Give people client certificates and kubeconfigs, list them, revoke them.
    ///
    /// Each user gets a key made on this machine and a certificate from the cluster CA (through
    /// the CSR API), optionally a role in a namespace; revocation takes effect at once:
    ///
    ///   bramble user add alice --group team --namespace team-a --role edit -o alice.kubeconfig
    ///   kubectl --kubeconfig alice.kubeconfig auth whoami
    ///   bramble user list
    ///   bramble user revoke alice
    #[command(verbatim_doc_comment)]
    User(user_command::UserArgs),
    /// Build the Raspberry Pi card image, or write it to a card.
    Image(image_command::ImageArgs),
    /// Manage the keys that encrypt secrets at rest in the master's store.
    ///
    /// Secrets are encrypted (AES-256-GCM) in DIR/store.db with the keys in
    /// DIR/pki/encryption-keys, which the master creates on first start:
    ///
    ///   bramble encryption-key rotate --data-dir /var/lib/bramble
    #[command(verbatim_doc_comment)]
    EncryptionKey(encryption_key_command::EncryptionKeyArgs),
    /// The init of a bramble card (PID 1): reads bramble.toml from the boot partition,
    /// brings up the network and starts the master or the agent. The card's initramfs runs
    /// it; it refuses to run anywhere else.
    Boot,
    /// Internal: watch over one container (the agent starts one monitor per container).
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// Internal: run a command inside a running container (kubectl exec, exec probes).
    #[command(hide = true)]
    ExecIn(ExecInArgs),
}

#[derive(Args)]
struct RegistryArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Where the registry keeps its blobs and log.
    #[arg(long, default_value = "bramble-registry")]
    dir: PathBuf,
    /// Who may push and delete: `USER:PASSWORD` (HTTP basic auth) or a TOKEN (bearer, or the
    /// basic password). Without it the registry is read-only (pulls are always anonymous).
    #[arg(long, env = "BRAMBLE_REGISTRY_PUSH_AUTH", hide_env_values = true)]
    push_auth: Option<String>,
}

async fn run_registry(args: RegistryArgs) -> anyhow::Result<()> {
    use agent::image::demo::{installed_busyboxes, push_demo_image};
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let access = agent::image::local_registry::PushAccess {
        secret: args.push_auth.filter(|s| !s.is_empty()),
    };
    let writable = access.secret.is_some();
    let registry =
        agent::image::local_registry::LocalRegistry::start(&dir, args.listen, access).await?;
    let host = registry.host();
    let client = agent::image::Registry::new(&host, true, Some(registry.seeder()));
    for tag in ["1", "2"] {
        push_demo_image(&client, "bramble/demo", tag, &installed_busyboxes())
            .await
            .context("pushing the demo image")?;
    }
    println!("bramble: registry {host} holds {host}/bramble/demo:1 and :2 (amd64 + arm64); Ctrl-C stops it");
    if writable {
        println!(
            "bramble: pushes and deletes need the --push-auth credentials; pulls are anonymous"
        );
    } else {
        println!(
            "bramble: the registry is read-only (start it with --push-auth USER:PASSWORD to push)"
        );
    }
    shutdown_signal().await;
    drop(registry);
    Ok(())
}

#[derive(Args)]
struct TuiArgs {
    /// The kubeconfig (default: $KUBECONFIG, ./.bramble/admin.kubeconfig,
    /// /var/lib/bramble/admin.kubeconfig, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Destructive keys (kill, drain, delete, monkey) act without asking.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    monkey: MonkeyArgs,
    /// Write the dashboard's own log here (the screen has no room for it).
    #[arg(long)]
    log: Option<PathBuf>,
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let storage_dir = args.storage_dir();
    let panel =
        agent::panel::PanelConfig::from_args(args.panel, "kill=27").map_err(anyhow::Error::msg)?;
    let node_name = match args.node_name {
        Some(name) => name,
        None => nix_hostname()?,
    };
    let kubeconfig = args
        .kubeconfig
        .unwrap_or_else(|| args.data_dir.join("node.kubeconfig"));
    if let Some(refusal) =
        protocol::node::refuse_node_labels(args.labels.iter().map(|(key, _)| key.as_str()))
    {
        anyhow::bail!("--label: {refusal}");
    }
    restrict_to_owner(&args.data_dir, &AGENT_CREDENTIAL_FILES)
        .with_context(|| format!("securing the data directory {}", args.data_dir.display()))?;
    if !kubeconfig.exists() {
        match (&args.server, &args.join_token) {
            (Some(server), Some(token)) => {
                protocol::join::check_secret_strength(token)
                    .map_err(|weak| anyhow::anyhow!("--join-token: {weak}"))?;
                let identity = agent::join::MachineIdentity::load(&args.data_dir.join("pki"));
                agent::join::join(server, token, &node_name, &kubeconfig, identity.as_ref())
                    .await?;
                tracing::info!(node = node_name, kubeconfig = %kubeconfig.display(), "joined the cluster");
            }
            _ => anyhow::bail!(
                "{} does not exist: give --server and --join-token to join a master",
                kubeconfig.display()
            ),
        }
    }
    let config = agent::node::AgentConfig {
        kubeconfig,
        node_name,
        node_ip: args.node_ip,
        storage_dir,
        data_dir: args.data_dir,
        insecure_registries: args.insecure_registries,
        labels: args.labels,
        max_pods: args.max_pods,
        bridge: args.bridge,
        monitor_exe: std::env::current_exe().context("finding the bramble binary")?,
        resolv_conf: args.resolv_conf,
        panel,
        seccomp_default: args.seccomp_default,
        allowed_unsafe_sysctls: args.allowed_unsafe_sysctls,
    };
    tokio::select! {
        result = agent::node::run(config) => result?,
        _ = shutdown_signal() => {}
    }
    Ok(())
}

/// The agent's credentials: its node kubeconfig and its serving key.
const AGENT_CREDENTIAL_FILES: [&str; 2] = ["node.kubeconfig", "pki/agent.key"];

/// The master's store files: the database and SQLite's write-ahead log and shared memory.
const MASTER_STORE_FILES: [&str; 3] = ["store.db", "store.db-wal", "store.db-shm"];

/// Makes a data directory private to its owner (root on a Pi): the directory 0711 and the
/// named files in it 0600, made so if an older bramble left them open. The master's store
/// holds every secret of the cluster and the agent's directory its credentials and the pods'
/// secret volumes; a card taken out of a Pi is read with the owner's rights anyway, but no
/// other local user or pod with a host mount should read them. Others may pass through the
/// directory but not list it: a `hostUsers: false` container's root is an unprivileged ID on
/// the node and must reach its own root file system beneath it.
fn restrict_to_owner(dir: &std::path::Path, files: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    for name in files {
        let path = dir.join(name);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn nix_hostname() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname()
        .map_err(|e| anyhow::anyhow!("cannot read the host name ({e}); give --node-name"))?;
    Ok(name.to_string_lossy().to_lowercase())
}

#[derive(Args)]
struct ExecInArgs {
    /// libcontainer's state root.
    #[arg(long)]
    state_root: PathBuf,
    /// The container ID.
    #[arg(long)]
    id: String,
    /// The command to run.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct MonitorArgs {
    /// The container's directory (holds bundle/).
    #[arg(long)]
    dir: PathBuf,
    /// The container ID.
    #[arg(long)]
    id: String,
    /// libcontainer's state root.
    #[arg(long)]
    state_root: PathBuf,
    /// The container's log file.
    #[arg(long)]
    log: PathBuf,
    /// Rotate the log at this size.
    #[arg(long, default_value_t = 10 << 20)]
    log_max_bytes: u64,
    /// Rotated log files to keep.
    #[arg(long, default_value_t = 2)]
    log_keep: usize,
}

/// The monitor logs libcontainer's messages to a file in the container's directory, never to
/// the agent's terminal or the container's own output.
fn run_monitor(args: MonitorArgs) -> ! {
    if let Ok(file) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(args.dir.join("monitor.log"))
    {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,libcgroups=error"))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    agent::runtime::monitor::run(agent::runtime::monitor::MonitorArgs {
        dir: args.dir,
        id: args.id,
        state_root: args.state_root,
        log: args.log,
        log_max_bytes: args.log_max_bytes,
        log_keep: args.log_keep,
    })
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SimArgs {
    #[command(subcommand)]
    command: Option<SimCommand>,
    /// Kubeconfig of the cluster.
    #[arg(
        long,
        env = "KUBECONFIG",
        global = true,
        default_value = ".bramble/admin.kubeconfig"
    )]
    kubeconfig: PathBuf,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node names: this prefix and a number from 1.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// CPU capacity of each node.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "8Gi")]
    memory: String,
    /// Pods each node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Spread nodes over this many zones (topology.kubernetes.io/zone); 0 for none.
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Extra node label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = protocol::command_line::parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Kill a node: it stops heartbeating and touching its pods, as if its plug was pulled.
    Kill {
        /// The node's name.
        node: String,
    },
    /// Bring a killed node back.
    Revive {
        /// The node's name.
        node: String,
    },
    /// Pull a real node's network cable: its agent takes its link down for a while, then
    /// brings it back (its pods move meanwhile, as when a cable is pulled on stage).
    LinkDown {
        /// The node's name.
        node: String,
        /// How long the link stays down.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Directory for the local cluster's state.
    #[arg(long, default_value = ".bramble")]
    data_dir: PathBuf,
    /// Port the master serves HTTPS on (on the LAN address; on 127.0.0.1 with --simulated).
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// How many virtual Pis to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
    /// The virtual Pis' LAN; the host takes its first address, pi-N the (10+N)th.
    #[arg(long, default_value = "10.99.0.0/24", value_parser = parse_cidr)]
    lan: agent::network::Cidr,
    /// Simulate the nodes instead of running agents (no root, no containers): pods are
    /// scheduled, "run", report usage and heal. Runs in the foreground.
    #[arg(long)]
    simulated: bool,
    /// Stay in the foreground until Ctrl-C instead of returning once the cluster is Ready.
    #[arg(long)]
    foreground: bool,
    /// Internal: this is the background process `bramble up` started.
    #[arg(long, hide = true)]
    in_background: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct DownArgs {
    /// The local cluster's state directory.
    #[arg(long, default_value = ".bramble")]
    data_dir: PathBuf,
    /// Also delete the data directory (the cluster's objects and the registry).
    #[arg(long)]
    purge: bool,
}

fn parse_cidr(text: &str) -> Result<agent::network::Cidr, String> {
    agent::network::Cidr::parse(text).ok_or_else(|| format!("expected A.B.C.D/N, got {text}"))
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let client = protocol::client::Client::from_kubeconfig(&args.kubeconfig)?;
    match args.command {
        Some(SimCommand::Kill { node }) => {
            protocol::chaos::set_node_alive(&client, &node, false).await?;
            println!("node/{node} killed");
        }
        Some(SimCommand::Revive { node }) => {
            protocol::chaos::set_node_alive(&client, &node, true).await?;
            println!("node/{node} revived");
        }
        Some(SimCommand::LinkDown { node, seconds }) => {
            protocol::chaos::set_node_chaos(&client, &node, Some(&format!("link-down:{seconds}")))
                .await?;
            println!("node/{node} takes its link down for {seconds} s");
        }
        None => {
            let config = agent::sim::SimConfig {
                nodes: args.nodes,
                prefix: args.prefix,
                cpu: args.cpu,
                memory: args.memory,
                max_pods: args.max_pods,
                zones: args.zones,
                labels: args.labels,
            };
            tokio::select! {
                result = agent::sim::Simulator::run(client, config) => result?,
                _ = shutdown_signal() => {}
            }
        }
    }
    Ok(())
}

async fn run_tui(args: TuiArgs) -> anyhow::Result<()> {
    let kubeconfig = args.kubeconfig.or_else(tui::default_kubeconfig).context(
        "no kubeconfig: pass --kubeconfig FILE (a local cluster's is .bramble/admin.kubeconfig)",
    )?;
    let options = tui::Options {
        kubeconfig,
        demo: args.demo,
        monkey: args.monkey.policy(),
    };
    Ok(tui::run(options).await?)
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The master's front panel: one LED per node and the monkey button.
struct MasterPanel {
    config: agent::panel::PanelConfig,
    monkey: protocol::chaos::MonkeyPolicy,
}

async fn run_master(
    config: master::MasterConfig,
    up_nodes: Option<usize>,
    panel: Option<MasterPanel>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let secure = |data_dir: &std::path::Path| {
        restrict_to_owner(data_dir, &MASTER_STORE_FILES)
            .with_context(|| format!("securing the data directory {}", data_dir.display()))
    };
    secure(&data_dir)?;
    if let Ok(secret) = std::fs::read_to_string(data_dir.join("join.secret")) {
        if let Err(weak) = protocol::join::check_secret_strength(&secret) {
            tracing::warn!(
                file = %data_dir.join("join.secret").display(),
                "{weak}; anyone who guesses it can join a node (replace the file and restart the master)"
            );
        }
    }
    let started = master::Master::start(config)
        .await
        .with_context(|| format!("cannot start the master in {}", data_dir.display()))?;
    // A new store's files exist only now.
    secure(&data_dir)?;
    let kubeconfig = started
        .kubeconfig_path
        .canonicalize()
        .unwrap_or(started.kubeconfig_path.clone());
    tracing::info!(address = %started.local_addr, kubeconfig = %kubeconfig.display(), "master serving");
    tracing::info!(
        "agents join with: bramble agent --server {} --join-token $(cat {})",
        started.server_url(),
        data_dir.join("join.token").display()
    );
    let panel = match panel {
        Some(panel) if panel.config.backend != hardware::backend::BackendChoice::None => {
            let client = protocol::client::Client::from_kubeconfig(&started.kubeconfig_path)?;
            Some(tokio::spawn(agent::panel::run_master_panel(
                client,
                panel.config,
                panel.monkey,
            )))
        }
        _ => None,
    };
    let mut nodes = None;
    if let Some(count) = up_nodes {
        if count > 0 {
            let client = protocol::client::Client::from_kubeconfig(&started.kubeconfig_path)?;
            let config = agent::sim::SimConfig {
                nodes: count,
                prefix: "pi-".into(),
                cpu: "4".into(),
                memory: "4Gi".into(),
                max_pods: 110,
                zones: 0,
                labels: Vec::new(),
            };
            nodes = Some(tokio::spawn(async move {
                if let Err(error) = agent::sim::Simulator::run(client, config).await {
                    tracing::error!(error = %format!("{:#}", anyhow::Error::from(error)), "simulated nodes stopped");
                }
            }));
        }
        println!(
            "bramble is up: the master serves on https://{} with {count} simulated nodes (pi-1..pi-{count})\n\n  export KUBECONFIG={}\n  kubectl get nodes\n  kubectl create deployment web --image=nginx --replicas=6\n  bramble sim kill pi-2 --kubeconfig $KUBECONFIG    # and watch the pods move\n\nPress Ctrl-C to stop; state stays in {}.",
            started.local_addr,
            kubeconfig.display(),
            data_dir.display()
        );
    }
    started.serve(shutdown_signal()).await?;
    for task in [nodes, panel].into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}

/// glibc gives every thread that allocates its own arena, and the blocking pool has many
/// threads: on a 1 GB Pi that multiplies idle memory. Two arenas are plenty for two cores.
fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// How the user ran bramble, for commands shown to them: `bramble` when that is on the PATH.
fn program_name() -> String {
    let invoked = std::env::args().next().unwrap_or_else(|| "bramble".into());
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("bramble").is_file())
    });
    if on_path || !invoked.contains('/') {
        "bramble".into()
    } else {
        invoked
    }
}

/// Where the log goes instead of stderr: the dashboard's `--log`.
fn log_file(command: &Command) -> Option<std::fs::File> {
    let Command::Tui(TuiArgs {
        log: Some(path), ..
    }) = command
    else {
        return None;
    };
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

fn main() {
    // Started by the kernel as /sbin/init (no initramfs): behave as `bramble boot`.
    let as_init = std::process::id() == 1
        && std::env::args_os()
            .next()
            .is_some_and(|arg| arg.to_string_lossy().ends_with("/init"));
    let cli = if as_init {
        Cli::parse_from(["bramble", "boot"])
    } else {
        Cli::parse()
    };
    match cli.command {
        Command::Monitor(args) => run_monitor(args),
        Command::ExecIn(args) => agent::runtime::exec::run_helper(agent::runtime::exec::ExecArgs {
            state_root: args.state_root,
            id: args.id,
            command: args.command,
        }),
        Command::Boot => {
            if let Err(error) = image::boot::run() {
                eprintln!("bramble: error: {error:#}");
                // As PID 1, exiting would panic the kernel: keep the message on screen.
                if std::process::id() == 1 {
                    image::boot::say(&format!("cannot boot: {error:#}"));
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                std::process::exit(1);
            }
            return;
        }
        Command::Image(args) => {
            if let Err(error) = image_command::run(args) {
                eprintln!("bramble: error: {error:#}");
                std::process::exit(1);
            }
            return;
        }
        Command::EncryptionKey(args) => {
            if let Err(error) = encryption_key_command::run(args) {
                eprintln!("bramble: error: {error:#}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    limit_allocator_arenas();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let quiet = matches!(cli.command, Command::Tui(TuiArgs { log: None, .. }));
    match log_file(&cli.command) {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init(),
        // The dashboard owns the terminal: without --log it logs nothing.
        None if quiet => {}
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .expect("building the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Master(args) => {
                let panel = MasterPanel {
                    config: agent::panel::PanelConfig::from_args(args.panel, "monkey=22")
                        .map_err(anyhow::Error::msg)?,
                    monkey: args.monkey.policy(),
                };
                run_master(
                    master::MasterConfig::from_cluster_args(
                        args.data_dir,
                        args.listen,
                        args.cluster,
                    ),
                    None,
                    Some(panel),
                )
                .await
            }
            Command::Up(args) if args.simulated => {
                let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
                run_master(
                    master::MasterConfig::from_cluster_args(args.data_dir, listen, args.cluster),
                    Some(args.nodes.into()),
                    None,
                )
                .await
            }
            Command::Up(args) if !args.foreground => {
                // Everything after `up` is passed on to the background process.
                let passed: Vec<String> =
                    std::env::args().skip_while(|a| a != "up").skip(1).collect();
                Ok(local_cluster::start_in_background(&args.data_dir, &passed).await?)
            }
            Command::Up(args) => {
                let mut master = MasterArgs::new(args.data_dir.clone());
                master.cluster = args.cluster;
                Ok(local_cluster::up(local_cluster::UpOptions {
                    master,
                    data_dir: args.data_dir,
                    nodes: args.nodes.into(),
                    lan: args.lan,
                    port: args.port,
                    in_background: args.in_background,
                    program: program_name(),
                })
                .await?)
            }
            Command::Down(args) => Ok(local_cluster::down(&args.data_dir, args.purge).await?),
            Command::Sim(args) => run_sim(args).await,
            Command::Tui(args) => run_tui(args).await,
            Command::Gpio(args) => gpio_command::run(args).await,
            Command::User(args) => user_command::run(args).await,
            Command::Registry(args) => run_registry(args).await,
            Command::Agent(args) => run_agent(args).await,
            Command::Monitor(_)
            | Command::ExecIn(_)
            | Command::Image(_)
            | Command::EncryptionKey(_)
            | Command::Boot => {
                unreachable!("these run before the async runtime")
            }
        }
    });
    if let Err(error) = result {
        eprintln!("bramble: error: {error:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_are_made_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("master");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["store.db", "store.db-wal", "admin.kubeconfig"] {
            std::fs::write(dir.join(name), b"x").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        restrict_to_owner(&dir, &MASTER_STORE_FILES).unwrap();
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&dir.join("store.db")), 0o600);
        assert_eq!(mode(&dir.join("store.db-wal")), 0o600);
        assert_eq!(
            mode(&dir.join("admin.kubeconfig")),
            0o644,
            "only the named files"
        );
        let fresh = root.path().join("agent/data");
        restrict_to_owner(&fresh, &AGENT_CREDENTIAL_FILES).unwrap();
        assert_eq!(mode(&fresh), 0o711);
    }
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn what_bramble_starts_for_itself_parses_as_its_subcommands() {
        let master = MasterArgs::new("/tmp/m".into());
        let agent = AgentArgs::new("/tmp/a".into());
        for line in [master.command_line(), agent.command_line()] {
            let argv = std::iter::once("bramble".to_owned()).chain(line.clone());
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            match cli.command {
                Command::Master(parsed) => assert_eq!(parsed, master),
                Command::Agent(parsed) => assert_eq!(
                    parsed,
                    AgentArgs {
                        join_token: parsed.join_token.clone(),
                        ..agent.clone()
                    }
                ),
                _ => panic!("{line:?} is neither the master nor the agent"),
            }
        }
    }
}
