//! `bramble up` and `bramble down`: a local cluster of virtual Pis on one Linux machine.
//!
//! Each virtual Pi is a network namespace on a host bridge (the "LAN") running a real
//! `bramble agent` that runs real containers. The master runs inside the `up` process, and a
//! local OCI registry on the LAN holds the multi-arch demo image:
//!
//! ```text
//!   host ── bramble-lan 10.99.0.1/24 ── master :6443, registry :5000
//!              ├── veth ── netns bramble-pi-1  10.99.0.11  bramble agent ── pods 10.42.x.0/24
//!              ├── veth ── netns bramble-pi-2  10.99.0.12  bramble agent ── pods
//!              └── ...
//! ```
//!
//! Everything `up` creates is named or placed so that `down` (or the next `up`) can find and
//! remove it after a crash: namespaces /run/netns/bramble-pi-*, the bridge, cgroups under
//! /bramble/pi-*, mounts under the data directory, and the PID file DIR/up.pid.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::client::Client;
use protocol::command_line::{AgentArgs, MasterArgs, JOIN_TOKEN_ENV};

use crate::image::demo::{installed_busyboxes, push_demo_image};
use crate::image::local_registry::{LocalRegistry, PushAccess, REGISTRY_PROGRAM};
use crate::image::Registry;
use crate::network::{create_netns, delete_link, remove_netns, Cidr, PodNetwork};
use crate::runtime::containers::{kill_cgroup_tree, recorded_monitors, remove_cgroup_tree};

/// Why a local cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Something the user must do first (run as root, stop the running cluster, ...).
    #[error("{0}")]
    Refused(String),
    /// A step failed.
    #[error("{what}")]
    Step {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Names the step a fallible call belongs to.
trait Step<T> {
    fn step(self, what: &str) -> Result<T, UpError>;
    fn with_step(self, what: impl FnOnce() -> String) -> Result<T, UpError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Step<T> for Result<T, E> {
    fn step(self, what: &str) -> Result<T, UpError> {
        self.with_step(|| what.to_owned())
    }

    fn with_step(self, what: impl FnOnce() -> String) -> Result<T, UpError> {
        self.map_err(|source| UpError::Step {
            what: what(),
            source: source.into(),
        })
    }
}

macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(UpError::Refused(format!($($arg)*)))
    };
}

/// The host bridge the virtual Pis share.
pub const LAN_BRIDGE: &str = "bramble-lan";
/// The registry's port on the LAN address.
pub const REGISTRY_PORT: u16 = 5000;
const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "bramble-pi-";

/// How `bramble up` is set up.
pub struct UpOptions {
    /// The cluster's state directory.
    pub data_dir: PathBuf,
    /// How many virtual Pis.
    pub nodes: usize,
    /// The LAN's network; the host takes its first address.
    pub lan: Cidr,
    /// The master's port on the LAN address.
    pub port: u16,
    /// The master's settings (its data directory, listen and advertise addresses are set
    /// here).
    pub master: MasterArgs,
    /// Started by [`start_in_background`]: stopped with `bramble down`, not Ctrl-C.
    pub in_background: bool,
    /// How the user runs bramble (for the commands the welcome shows).
    pub program: String,
}

/// Starts `bramble up --foreground ARGS` as a background process with its output in
/// DIR/logs/up.log, shows its progress, and returns once the cluster is Ready (or failed).
pub async fn start_in_background(data_dir: &Path, args: &[String]) -> Result<(), UpError> {
    preflight()?;
    std::fs::create_dir_all(data_dir.join("logs"))
        .with_step(|| format!("creating {}", data_dir.display()))?;
    if let Some(pid) = running_up(data_dir) {
        refuse!(
            "bramble up is already running for {} (pid {pid}); stop it with `bramble down`",
            data_dir.display()
        );
    }
    let log_path = data_dir.join("logs").join("up.log");
    let log = std::fs::File::create(&log_path)
        .with_step(|| format!("creating {}", log_path.display()))?;
    let ready_file = data_dir.join("up.ready");
    let _ = std::fs::remove_file(&ready_file);
    let mut command = Command::new(bramble_exe()?);
    command
        .arg("up")
        .args(args)
        .arg("--foreground")
        .arg("--in-background")
        .stdin(Stdio::null())
        .stdout(log.try_clone().step("opening the log")?)
        .stderr(log);
    // SAFETY: setsid is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .step("starting bramble up in the background")?;
    let mut shown = 0;
    loop {
        // Checked before reading the log, so the welcome written just before the ready file
        // is always shown.
        let ready = ready_file.exists();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        if complete > shown {
            print!("{}", &text[shown..complete]);
            shown = complete;
        }
        if ready {
            return Ok(());
        }
        if let Some(status) = child.try_wait().step("watching bramble up")? {
            print!("{}", &text[shown..]);
            refuse!(
                "bramble up stopped ({status}) before the cluster was Ready; its log is {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A virtual Pi's name, namespace file, LAN address and directories.
struct VirtualPi {
    name: String,
    netns: PathBuf,
    ip: Ipv4Addr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl VirtualPi {
    fn new(data_dir: &Path, lan: Cidr, number: usize) -> VirtualPi {
        let name = format!("pi-{number}");
        VirtualPi {
            netns: Path::new(NETNS_DIR).join(format!("{NETNS_PREFIX}{number}")),
            ip: lan.nth(10 + number as u32),
            data_dir: data_dir.join("nodes").join(&name),
            log: data_dir.join("logs").join(format!("{name}.log")),
            name,
        }
    }
}

/// Checks what `up` needs before touching anything, with advice for each gap.
fn preflight() -> Result<(), UpError> {
    if !nix::unistd::geteuid().is_root() {
        refuse!(
            "bramble up runs real containers and network namespaces, which needs root: \
             run it with sudo (or use --simulated for simulated nodes without root)"
        );
    }
    let registry_found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(REGISTRY_PROGRAM).is_file())
    });
    let missing_busybox: Vec<_> = installed_busyboxes()
        .into_iter()
        .filter(|b| !b.path.is_file())
        .map(|b| b.path.display().to_string())
        .collect();
    if !registry_found || !missing_busybox.is_empty() {
        let mut missing = Vec::new();
        if !registry_found {
            missing.push(REGISTRY_PROGRAM.to_owned());
        }
        missing.extend(missing_busybox);
        refuse!(
            "missing {} (the local registry and the demo image need them): run ./tests/setup-host once",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Runs the local cluster until Ctrl-C or SIGTERM, then takes it all down again. The master's
/// database and the registry's blobs stay in the data directory for the next `up`.
pub async fn up(options: UpOptions) -> Result<(), UpError> {
    let program = options.program.clone();
    let in_background = options.in_background;
    preflight()?;
    std::fs::create_dir_all(&options.data_dir)
        .with_step(|| format!("creating {}", options.data_dir.display()))?;
    let data_dir = options
        .data_dir
        .canonicalize()
        .with_step(|| format!("finding {}", options.data_dir.display()))?;
    claim_pid_file(&data_dir)?;
    let leftovers = clean_up(&data_dir, None).await;
    if leftovers > 0 {
        println!("bramble: removed {leftovers} leftovers of an earlier run");
    }
    std::fs::create_dir_all(data_dir.join("logs")).step("creating the log directory")?;

    let gateway = options.lan.nth(1);
    let lan = PodNetwork::bridge(None, LAN_BRIDGE, options.lan)
        .await
        .with_step(|| format!("creating the LAN bridge {LAN_BRIDGE}"))?;
    println!("bramble: LAN {LAN_BRIDGE} {gateway}/{}", options.lan.prefix);

    let registry_address = SocketAddr::from((gateway, REGISTRY_PORT));
    // Read-only to the virtual Pis and everyone else; this process seeds it.
    let registry = LocalRegistry::start(
        &data_dir.join("registry"),
        registry_address,
        PushAccess::default(),
    )
    .await
    .step("starting the registry")?;
    let registry_host = registry.host();
    let client = Registry::new(&registry_host, true, Some(registry.seeder()));
    for tag in ["1", "2"] {
        push_demo_image(&client, "bramble/demo", tag, &installed_busyboxes())
            .await
            .step("pushing the demo image")?;
    }
    let demo = format!("{registry_host}/bramble/demo");
    println!("bramble: registry {registry_host} holds {demo}:1 and {demo}:2 (amd64 + arm64)");

    let mut master = options.master;
    if master.cluster.load_balancer_pool.is_empty() && options.lan.size() >= 256 {
        // LoadBalancer services get addresses on the LAN, well above the Pis'.
        master.cluster.load_balancer_pool = vec![(options.lan.nth(200), options.lan.nth(249))];
    }
    if let Some((first, last)) = master.cluster.load_balancer_pool.first() {
        println!("bramble: LoadBalancer services get addresses {first}-{last}");
    }
    master.listen = SocketAddr::from((gateway, options.port));
    master.cluster.advertise_address = Some(gateway.to_string());
    master.data_dir = data_dir.clone();
    let kubeconfig = data_dir.join("admin.kubeconfig");
    let mut master_process = start_master(&master, &data_dir)?;
    wait_for_master(&kubeconfig, &data_dir, &mut master_process).await?;
    let join = Join {
        server: format!("https://{gateway}:{}", options.port),
        token: std::fs::read_to_string(data_dir.join("join.token"))
            .step("reading the master's join token")?
            .trim()
            .to_owned(),
    };
    println!("bramble: master https://{gateway}:{}", options.port);

    let pis: Vec<VirtualPi> = (1..=options.nodes)
        .map(|n| VirtualPi::new(&data_dir, options.lan, n))
        .collect();
    let mut agents = Vec::new();
    let result = async {
        for pi in &pis {
            create_netns(&pi.netns)
                .with_step(|| format!("creating network namespace {}", pi.netns.display()))?;
            lan.attach(&pi.name, &pi.netns, pi.ip)
                .await
                .with_step(|| format!("wiring {} onto {LAN_BRIDGE}", pi.name))?;
            agents.push(start_agent(pi, &join, &registry_host)?);
            println!(
                "bramble: {} started at {} (log: {})",
                pi.name,
                pi.ip,
                pi.log.display()
            );
        }
        wait_until_ready(&kubeconfig, &pis, &mut agents).await
    }
    .await;

    if result.is_ok() {
        print_welcome(&program, in_background, &kubeconfig, &demo, &pis, &data_dir);
        let _ = std::fs::write(data_dir.join("up.ready"), b"");
        supervise(
            &master,
            &mut master_process,
            &pis,
            &mut agents,
            &join,
            &registry_host,
        )
        .await;
    }
    println!("bramble: stopping");
    // The master goes first: otherwise it would see the Pis die and evict their pods, and the
    // next `up` would find bare pods gone.
    stop_processes(
        std::slice::from_mut(&mut master_process),
        Duration::from_secs(10),
    )
    .await;
    stop_processes(&mut agents, Duration::from_secs(5)).await;
    clean_up(&data_dir, Some(&pis)).await;
    drop(registry);
    let _ = std::fs::remove_file(data_dir.join("up.pid"));
    let _ = std::fs::remove_file(data_dir.join("up.ready"));
    result?;
    println!(
        "bramble: down; the cluster's objects stay in {} for the next `bramble up`",
        data_dir.display()
    );
    Ok(())
}

/// Stops a running `bramble up` (or cleans up after one that died): containers, namespaces,
/// mounts, the LAN bridge and cgroups go; with `purge`, the data directory too.
pub async fn down(data_dir: &Path, purge: bool) -> Result<(), UpError> {
    if !nix::unistd::geteuid().is_root() {
        refuse!("bramble down removes namespaces, mounts and cgroups, which needs root: use sudo");
    }
    if let Some(pid) = running_up(data_dir) {
        println!("bramble: stopping bramble up (pid {pid})");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let removed = clean_up(data_dir, None).await;
    println!("bramble: removed {removed} leftovers");
    if purge && data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_step(|| format!("removing {}", data_dir.display()))?;
        println!("bramble: removed {}", data_dir.display());
    }
    Ok(())
}

/// The PID of a live `bramble up` using `data_dir`, from its PID file.
fn running_up(data_dir: &Path) -> Option<nix::unistd::Pid> {
    let text = std::fs::read_to_string(data_dir.join("up.pid")).ok()?;
    let pid = nix::unistd::Pid::from_raw(text.trim().parse().ok()?);
    let alive = nix::sys::signal::kill(pid, None).is_ok();
    // The command line, not /proc/PID/exe: a rebuilt binary shows there as "(deleted)".
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&str> = cmdline.split('\0').collect();
    let ours = args.first().is_some_and(|program| {
        Path::new(program)
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains("bramble"))
    }) && args.contains(&"up");
    (alive && ours && pid != nix::unistd::getpid()).then_some(pid)
}

fn claim_pid_file(data_dir: &Path) -> Result<(), UpError> {
    if let Some(pid) = running_up(data_dir) {
        refuse!(
            "bramble up is already running for {} (pid {pid}); stop it with `bramble down`",
            data_dir.display()
        );
    }
    std::fs::write(data_dir.join("up.pid"), format!("{}\n", std::process::id()))
        .step("writing up.pid")?;
    Ok(())
}

/// How virtual Pis reach and join the master.
struct Join {
    server: String,
    token: String,
}

/// Starts `bramble master` for the cluster, its log in DIR/logs/master.log.
fn start_master(master: &MasterArgs, data_dir: &Path) -> Result<Child, UpError> {
    // The master writes its kubeconfig once it serves: a stale one must not look like that.
    let _ = std::fs::remove_file(data_dir.join("admin.kubeconfig"));
    let log_path = data_dir.join("logs").join("master.log");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_step(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(bramble_exe()?);
    command
        .args(master.command_line())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().step("opening the master's log")?)
        .stderr(log)
        // Ctrl-C reaches `up`, which stops the master first.
        .process_group(0);
    command.spawn().step("starting the master")
}

/// Waits until the master serves (its kubeconfig appears), or says why it stopped.
async fn wait_for_master(
    kubeconfig: &Path,
    data_dir: &Path,
    master: &mut Child,
) -> Result<(), UpError> {
    let log = data_dir.join("logs").join("master.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        if let Some(status) = master.try_wait().step("watching the master")? {
            refuse!(
                "the master stopped ({status}) before it served; its log is {}",
                log.display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            refuse!(
                "the master did not serve within a minute; its log is {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn bramble_exe() -> Result<PathBuf, UpError> {
    std::env::current_exe().step("finding the bramble binary")
}

fn start_agent(pi: &VirtualPi, join: &Join, registry: &str) -> Result<Child, UpError> {
    std::fs::create_dir_all(&pi.data_dir)
        .with_step(|| format!("creating {}", pi.data_dir.display()))?;
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&pi.log)
        .with_step(|| format!("opening {}", pi.log.display()))?;
    let netns =
        std::fs::File::open(&pi.netns).with_step(|| format!("opening {}", pi.netns.display()))?;
    let mut agent = AgentArgs::new(pi.data_dir.clone());
    agent.server = Some(join.server.clone());
    agent.node_name = Some(pi.name.clone());
    agent.node_ip = Some(pi.ip);
    agent.insecure_registries = vec![registry.to_owned()];
    agent.labels = vec![("bramble.dev/virtual".to_owned(), "true".to_owned())];
    // Virtual Pis have the demo kit on a simulated header: `bramble gpio pi-N`.
    agent.panel.gpio = hardware::backend::BackendChoice::Simulated;
    let mut command = Command::new(bramble_exe()?);
    command
        .args(agent.command_line())
        .env(JOIN_TOKEN_ENV, &join.token)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().step("opening the agent's log")?)
        .stderr(log)
        // Ctrl-C reaches `up`, which stops the agents in order.
        .process_group(0);
    // SAFETY: setns is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .spawn()
        .with_step(|| format!("starting the agent of {}", pi.name))?;
    std::fs::write(pi.data_dir.join("agent.pid"), child.id().to_string())
        .with_step(|| format!("recording the agent of {}", pi.name))?;
    Ok(child)
}

async fn wait_until_ready(
    kubeconfig: &Path,
    pis: &[VirtualPi],
    agents: &mut [Child],
) -> Result<(), UpError> {
    let client = Client::from_kubeconfig(kubeconfig).step("reading the admin kubeconfig")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reported = 0;
    loop {
        for (pi, agent) in pis.iter().zip(agents.iter_mut()) {
            if let Some(status) = agent.try_wait().step("watching the agents")? {
                refuse!(
                    "the agent of {} stopped ({status}); its log is {}",
                    pi.name,
                    pi.log.display()
                );
            }
        }
        let ready = match client.get("/api/v1/nodes").await {
            Ok(list) => list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| pis.iter().any(|p| n["metadata"]["name"] == p.name.as_str()))
                .filter(|n| protocol::node::is_ready(n))
                .count(),
            Err(_) => 0,
        };
        if ready != reported {
            println!("bramble: {ready}/{} virtual Pis Ready", pis.len());
            reported = ready;
        }
        if ready == pis.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            refuse!(
                "only {ready} of {} virtual Pis became Ready within 2 minutes; see the logs in {}",
                pis.len(),
                pis[0].log.parent().unwrap_or(Path::new(".")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn print_welcome(
    program: &str,
    in_background: bool,
    kubeconfig: &Path,
    demo: &str,
    pis: &[VirtualPi],
    data_dir: &Path,
) {
    let last = pis.len();
    let stop = if in_background {
        format!(
            "Stop it with `{program} down --data-dir {}` (--purge forgets its objects too).",
            data_dir.display()
        )
    } else {
        format!(
            "Press Ctrl-C to stop; `{program} down --data-dir {}` cleans up if this process dies.",
            data_dir.display()
        )
    };
    println!(
        "
bramble is up: {last} virtual Pis (pi-1..pi-{last}) running real containers.

  export KUBECONFIG={kubeconfig}
  kubectl get nodes -o wide
  kubectl create deployment hello --image={demo}:1 --replicas=6
  kubectl get pods -o wide                     # which Pi runs what
  kubectl logs deploy/hello
  kubectl set image deployment/hello demo={demo}:2   # a rolling update

Watch it live, and kill a Pi with `x` (`r` revives it, `?` lists the keys):
  {program} tui --kubeconfig {kubeconfig}

Or kill a Pi from the shell and watch its pods move, then bring it back:
  {program} sim kill pi-2
  {program} sim revive pi-2

The virtual Pis reach the local registry and each other, not the internet.
{stop}
Logs: {data_dir}/logs",
        kubeconfig = kubeconfig.display(),
        data_dir = data_dir.display(),
    );
}

/// Waits for Ctrl-C or SIGTERM, restarting the master and agents that stop on their own (as
/// systemd does on a Pi); pods keep running and a new agent adopts them.
async fn supervise(
    master: &MasterArgs,
    master_process: &mut Child,
    pis: &[VirtualPi],
    agents: &mut [Child],
    join: &Join,
    registry: &str,
) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = terminate.recv() => return,
            _ = tick.tick() => {}
        }
        if let Ok(Some(status)) = master_process.try_wait() {
            eprintln!(
                "bramble: the master stopped ({status}); restarting it (log: logs/master.log)"
            );
            match start_master(master, &master.data_dir) {
                Ok(child) => *master_process = child,
                Err(error) => eprintln!(
                    "bramble: cannot restart the master: {}",
                    protocol::error::error_chain(&error)
                ),
            }
        }
        for (pi, agent) in pis.iter().zip(agents.iter_mut()) {
            if let Ok(Some(status)) = agent.try_wait() {
                eprintln!(
                    "bramble: the agent of {} stopped ({status}); restarting it (log: {})",
                    pi.name,
                    pi.log.display()
                );
                match start_agent(pi, join, registry) {
                    Ok(child) => *agent = child,
                    Err(error) => eprintln!(
                        "bramble: cannot restart {}: {}",
                        pi.name,
                        protocol::error::error_chain(&error)
                    ),
                }
            }
        }
    }
}

/// Asks processes to stop (SIGTERM), and SIGKILLs those still running after `grace`. An
/// agent's containers keep running until [`clean_up`].
async fn stop_processes(processes: &mut [Child], grace: Duration) {
    for process in processes.iter() {
        let pid = nix::unistd::Pid::from_raw(process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    for process in processes.iter_mut() {
        while matches!(process.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = process.kill();
        let _ = process.wait();
    }
}

/// Removes everything a local cluster leaves on the host, finding it by name and place rather
/// than trusting the previous run's memory. Returns how many things it removed.
async fn clean_up(data_dir: &Path, pis: Option<&[VirtualPi]>) -> usize {
    let mut removed = 0;
    let nodes_dir = data_dir.join("nodes");
    let mut names: Vec<String> = std::fs::read_dir(&nodes_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.extend(pis.into_iter().flatten().map(|p| p.name.clone()));
    names.sort();
    names.dedup();
    for name in &names {
        let pid_file = nodes_dir.join(name).join("agent.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let is_agent = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split('\0').any(|arg| arg == "agent"));
            if is_agent && nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                removed += 1;
            }
        }
        removed += kill_cgroup_tree(&format!("/bramble/{name}"));
        removed += kill_monitors(&nodes_dir.join(name));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    removed += crate::mounts::unmount_under(data_dir);
    for entry in std::fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(NETNS_PREFIX)
            && remove_netns(&entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    if delete_link(LAN_BRIDGE).await.is_ok() {
        // Deleting a missing link is not an error, so this counts nothing.
    }
    for name in &names {
        remove_cgroup_tree(&format!("/bramble/{name}"));
    }
    remove_cgroup_tree("/bramble");
    if nodes_dir.exists() && std::fs::remove_dir_all(&nodes_dir).is_ok() {
        removed += names.len();
    }
    removed
}

/// SIGKILLs the container monitors recorded under a virtual Pi's directory.
fn kill_monitors(node_dir: &Path) -> usize {
    recorded_monitors(&crate::node::pods_dir(node_dir))
        .into_iter()
        .filter(|pid| {
            let pid = nix::unistd::Pid::from_raw(*pid);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_pis_get_addresses_after_the_gateway() {
        let lan = Cidr::parse("10.99.0.0/24").unwrap();
        let pi = VirtualPi::new(Path::new("/d"), lan, 2);
        assert_eq!(pi.name, "pi-2");
        assert_eq!(pi.ip, Ipv4Addr::new(10, 99, 0, 12));
        assert_eq!(pi.netns, PathBuf::from("/run/netns/bramble-pi-2"));
        assert_eq!(pi.data_dir, PathBuf::from("/d/nodes/pi-2"));
    }
}
