//! `bramble boot`: the init (PID 1) of a bramble card, started by the initramfs once the root
//! partition is mounted.
//!
//! ```text
//!  mounts (proc, sys, dev, run, tmp, cgroup2) ─▶ clock floor ─▶ modules (needed + by alias)
//!   ─▶ grow root (first boot) ─▶ mount boot partition ─▶ bramble.toml for this MAC
//!        │ invalid: problems on the console, status LED blinks red, file re-read every 10 s
//!        ▼
//!   keep secrets on root, scrub them from the card ─▶ hostname ─▶ SSH ─▶ Wi-Fi ─▶ address
//!   ─▶ ntpd ─▶ bramble master + local agent | bramble agent   (each restarted when it exits)
//! ```
//!
//! PID 1 blocks the signals it handles and waits for them with `sigtimedwait`: SIGCHLD reaps
//! children (and restarts services), SIGTERM/SIGUSR2/SIGUSR1/SIGINT (busybox `reboot`,
//! `poweroff`, `halt`, Ctrl-Alt-Del) stop the services, save the clock and reboot or power off.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::reboot::RebootMode;

use protocol::command_line::{self, AgentArgs, MasterArgs, JOIN_TOKEN_ENV};

use crate::config::{self, Addressing, BrambleToml, NodeConfig, Role};

/// Where bramble keeps its state on the root partition.
pub const STATE_DIR: &str = "/var/lib/bramble";
/// Where the boot partition is mounted.
pub const BOOT_MOUNT: &str = "/boot/firmware";
/// The master's API port.
const API_PORT: u16 = config::DEFAULT_API_PORT;
/// How often an invalid bramble.toml is read again.
const RETRY_CONFIG: Duration = Duration::from_secs(10);
/// How often the clock is saved (Pis have no clock battery).
const SAVE_CLOCK: Duration = Duration::from_secs(600);

/// Modules loaded at every boot; hardware drivers load by device alias besides.
const MODULES: [&str; 14] = [
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nf_conntrack",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// A console message: to the kernel log, which every console shows.
pub fn say(message: &str) {
    for line in message.lines() {
        let text = format!("<5>bramble: {line}\n");
        if std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .and_then(|mut kmsg| kmsg.write_all(text.as_bytes()))
            .is_err()
        {
            eprintln!("bramble: {line}");
        }
    }
}

/// Runs the init. Returns only on a fatal error before the services start.
pub fn run() -> anyhow::Result<()> {
    if std::process::id() != 1 {
        anyhow::bail!(
            "bramble boot is the init of a bramble card (PID 1); it configures the whole machine, so it refuses to run as PID {}",
            std::process::id()
        );
    }
    let signals = block_signals()?;
    mount_basics();
    let _ = Command::new("/bin/busybox")
        .args(["--install", "-s"])
        .status();
    let release = std::fs::read_to_string("/etc/bramble-release").unwrap_or_default();
    let version = release_field(&release, "VERSION").unwrap_or("?");
    say(&format!("bramble {version} starting"));
    set_clock_floor(&release);
    load_modules();
    if let Err(e) = grow_root() {
        say(&format!("could not grow the root partition: {e:#}"));
    }
    mount_boot_partition();
    let mac = wait_for_mac();
    say(&format!("this Pi's Ethernet address is {mac}"));
    let mut init = Init {
        services: BTreeMap::new(),
        signals,
        clock_saved: Instant::now(),
    };
    let node = init.read_config_until_valid(&mac);
    init.bring_up(&node);
    init.supervise()
}

fn release_field<'a>(release: &'a str, key: &str) -> Option<&'a str> {
    release
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn block_signals() -> anyhow::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    // Ctrl-Alt-Del sends SIGINT to init instead of rebooting at once.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    Ok(set)
}

fn mount_basics() {
    use nix::mount::{mount, MsFlags};
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=20%"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777,size=20%"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid,
            Some("nsdelegate"),
        ),
    ];
    for (source, target, kind, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(source), target, Some(kind), flags, data) {
            if e != nix::errno::Errno::EBUSY {
                say(&format!("cannot mount {kind} on {target}: {e}"));
            }
        }
    }
    // Root may come from the initramfs read-only on some setups.
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOATIME,
        None::<&str>,
    );
    let _ = std::fs::create_dir_all("/run/bramble");
}

/// The clock starts at 1970 on a Pi: move it to the latest time this card has seen (the
/// image's build time, or the time saved at the last shutdown or every 10 minutes), so that
/// certificates and logs are sane before a time server answers.
fn set_clock_floor(release: &str) {
    let built: u64 = release_field(release, "BUILT")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let saved: u64 = std::fs::read_to_string(format!("{STATE_DIR}/clock"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let floor = built.max(saved);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now < floor {
        let time = libc::timespec {
            tv_sec: floor as _,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec. (nix wraps this only behind its "time" feature, which
        // nothing else here needs.)
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } == 0 {
            say(&format!(
                "the clock was {now}; set it to {floor} (the last time this card saw) until a time server answers"
            ));
        }
    }
}

fn save_clock() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = format!("{STATE_DIR}/clock");
    let _ = std::fs::write(format!("{path}.new"), now.to_string())
        .and_then(|()| std::fs::rename(format!("{path}.new"), &path));
}

fn load_modules() {
    let _ = Command::new("/sbin/modprobe")
        .arg("-qa")
        .args(MODULES)
        .status();
    coldplug();
}

/// Loads the drivers of the devices present, by their `modalias`.
fn coldplug() {
    fn walk(dir: &Path, aliases: &mut std::collections::BTreeSet<String>, depth: usize) {
        if depth > 12 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                walk(&path, aliases, depth + 1);
            } else if path.file_name().is_some_and(|n| n == "modalias") {
                if let Ok(alias) = std::fs::read_to_string(&path) {
                    let alias = alias.trim();
                    if !alias.is_empty() {
                        aliases.insert(alias.to_owned());
                    }
                }
            }
        }
    }
    let mut aliases = std::collections::BTreeSet::new();
    walk(Path::new("/sys/devices"), &mut aliases, 0);
    if !aliases.is_empty() {
        let _ = Command::new("/sbin/modprobe")
            .arg("-qab")
            .args(&aliases)
            .status();
    }
}

/// The block device (`/sys/class/block/NAME`) the root file system is on, and its disk.
fn root_device() -> Option<(String, String)> {
    let numbers = agent::mounts::table()
        .ok()?
        .into_iter()
        .find(|mount| mount.mount_point == Path::new("/"))?
        .majmin;
    let link = std::fs::canonicalize(format!("/sys/dev/block/{numbers}")).ok()?;
    let partition = link.file_name()?.to_string_lossy().into_owned();
    let disk = link.parent()?.file_name()?.to_string_lossy().into_owned();
    Some((partition, disk))
}

/// The partition entry that makes partition 2 reach the end of a disk of `disk_sectors`;
/// `None` when it already does (or the table is not bramble's).
pub fn grown_table(mbr: &crate::mbr::Mbr, disk_sectors: u64) -> Option<crate::mbr::Mbr> {
    let root = mbr.partitions[1]?;
    let end = disk_sectors.min(u64::from(u32::MAX));
    // Grow only by a useful amount (at least 64 MiB): not on every boot by a sector.
    if end <= root.end() + (64 << 20) / crate::mbr::SECTOR {
        return None;
    }
    let mut grown = mbr.clone();
    let sectors = end - u64::from(root.start);
    // Keep the end on a 4 MiB boundary, as the rest of the card is.
    let align = (4 << 20) / crate::mbr::SECTOR;
    let sectors = (u64::from(root.start) + sectors) / align * align - u64::from(root.start);
    grown.partitions[1] = Some(crate::mbr::Partition {
        sectors: sectors as u32,
        ..root
    });
    Some(grown)
}

/// First boot: partition 2 to the end of the card, then ext4 online resize.
fn grow_root() -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let marker = Path::new(STATE_DIR).join(".root-grown");
    if marker.exists() {
        return Ok(());
    }
    let (partition, disk) = root_device().ok_or_else(|| anyhow::anyhow!("root device unknown"))?;
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{disk}/size"))?
        .trim()
        .parse()?;
    let mut device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/{disk}"))?;
    let mut sector = [0u8; 512];
    device.read_exact(&mut sector)?;
    let mbr = crate::mbr::Mbr::parse(&sector).ok_or_else(|| anyhow::anyhow!("no MBR"))?;
    if let Some(grown) = grown_table(&mbr, sectors) {
        let root = grown.partitions[1].expect("grown has a root");
        device.seek(SeekFrom::Start(0))?;
        device.write_all(&grown.to_bytes())?;
        device.sync_all()?;
        // Tell the kernel the partition's new size while it is mounted (BLKPG resize).
        let number: i32 =
            std::fs::read_to_string(format!("/sys/class/block/{partition}/partition"))?
                .trim()
                .parse()?;
        let mut part = BlkpgPartition {
            start: root.offset() as i64,
            length: root.len() as i64,
            pno: number,
            devname: [0; 64],
            volname: [0; 64],
        };
        let mut arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as i32,
            data: (&mut part as *mut BlkpgPartition).cast(),
        };
        // SAFETY: BLKPG with a valid, live argument.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKPG, &mut arg) };
        if rc != 0 {
            anyhow::bail!("BLKPG resize: {}", std::io::Error::last_os_error());
        }
        // And the file system, online.
        let blocks: u64 = root.len() / 4096;
        let rootdir = std::fs::File::open("/")?;
        // SAFETY: EXT4_IOC_RESIZE_FS takes a pointer to the new block count.
        let rc = unsafe { libc::ioctl(rootdir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) };
        if rc != 0 {
            anyhow::bail!("ext4 resize: {}", std::io::Error::last_os_error());
        }
        say(&format!(
            "grew the root partition to the whole card: {} MiB",
            root.len() >> 20
        ));
    }
    std::fs::create_dir_all(STATE_DIR)?;
    std::fs::write(&marker, "")?;
    Ok(())
}

const BLKPG: libc::Ioctl = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;
/// `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::Ioctl = 0x4008_6610;

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

fn mount_boot_partition() {
    let Some((partition, disk)) = root_device() else {
        say("cannot tell which disk the root partition is on; bramble.toml cannot be read");
        return;
    };
    let boot = if partition.ends_with('2') {
        format!("{}1", &partition[..partition.len() - 1])
    } else {
        say(&format!(
            "the root partition {partition} of {disk} is not partition 2"
        ));
        return;
    };
    let _ = std::fs::create_dir_all(BOOT_MOUNT);
    let result = nix::mount::mount(
        Some(format!("/dev/{boot}").as_str()),
        BOOT_MOUNT,
        Some("vfat"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("umask=0077,shortname=mixed,flush"),
    );
    if let Err(e) = result {
        say(&format!("cannot mount the boot partition /dev/{boot}: {e}"));
    }
}

/// The Ethernet address that names this Pi in bramble.toml (eth0's, else wlan0's, else the
/// first interface's), waiting a little for USB network chips to appear.
fn wait_for_mac() -> String {
    let started = Instant::now();
    loop {
        for name in ["eth0", "wlan0"] {
            if let Ok(mac) = std::fs::read_to_string(format!("/sys/class/net/{name}/address")) {
                return mac.trim().to_owned();
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            let first = std::fs::read_dir("/sys/class/net")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .min();
            return first
                .and_then(|n| std::fs::read_to_string(format!("/sys/class/net/{n}/address")).ok())
                .map_or_else(|| "00:00:00:00:00:00".to_owned(), |m| m.trim().to_owned());
        }
        coldplug();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A process the init keeps running.
struct Service {
    command: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

struct Init {
    services: BTreeMap<String, Service>,
    signals: nix::sys::signal::SigSet,
    clock_saved: Instant,
}

/// The card's config file.
fn config_path() -> PathBuf {
    Path::new(BOOT_MOUNT).join(crate::build::CONFIG_FILE)
}

fn kept_secrets_path() -> PathBuf {
    Path::new(STATE_DIR).join("boot-secrets.toml")
}

/// Reads bramble.toml (with the secrets kept from earlier boots) and resolves it for `mac`.
pub fn read_config(
    card: &Path,
    kept: &Path,
    mac: &str,
) -> Result<(NodeConfig, String), Vec<String>> {
    let text = std::fs::read_to_string(card).map_err(|e| {
        vec![format!(
            "cannot read {}: {e} (is it on the card's boot partition?)",
            card.display()
        )]
    })?;
    let file = BrambleToml::parse(&text).map_err(|e| vec![e.to_string()])?;
    let kept_settings = std::fs::read_to_string(kept)
        .ok()
        .and_then(|t| BrambleToml::parse(&t).ok())
        .map(|f| f.settings().clone())
        .unwrap_or_default();
    let merged = config::with_kept_secrets(file.settings().clone(), &kept_settings);
    let node = BrambleToml::from_settings(merged).resolve(mac)?;
    Ok((node, text))
}

/// Moves the secrets in the card's `text` to `kept` (mode 0600, merged with what is there)
/// and rewrites the card's file without them.
pub fn keep_and_scrub_secrets(card: &Path, kept: &Path, text: &str) -> std::io::Result<bool> {
    let Some(scrubbed) = config::scrub_secrets(text) else {
        return Ok(false);
    };
    let Ok(file) = BrambleToml::parse(text) else {
        return Ok(false);
    };
    let earlier = std::fs::read_to_string(kept)
        .ok()
        .and_then(|t| BrambleToml::parse(&t).ok())
        .map(|f| f.settings().clone())
        .unwrap_or_default();
    // The card's secrets win; earlier ones fill in what the card no longer has.
    let secrets = config::with_kept_secrets(config::secrets_of(file.settings()), &earlier);
    if let Some(parent) = kept.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = kept.with_extension("new");
    std::fs::write(&partial, config::secrets_toml(&secrets))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, kept)?;
    // Only then take them off the card.
    let card_partial = card.with_extension("new");
    std::fs::write(&card_partial, scrubbed)?;
    std::fs::File::open(&card_partial)?.sync_all()?;
    std::fs::rename(&card_partial, card)?;
    // The rename lives in FAT's directory and tables: flush the whole file system, so a
    // pulled plug leaves either the old file or the new one.
    let directory = std::fs::File::open(card.parent().unwrap_or(Path::new(".")))?;
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(directory.as_raw_fd())?;
    Ok(true)
}

impl Init {
    /// Reads bramble.toml until it is valid for this Pi, saying what is wrong meanwhile.
    fn read_config_until_valid(&mut self, mac: &str) -> NodeConfig {
        let mut warned: Option<Vec<String>> = None;
        let mut panel: Option<agent::panel::Panel> = None;
        loop {
            match read_config(&config_path(), &kept_secrets_path(), mac) {
                Ok((node, text)) => {
                    if warned.is_some() {
                        say("bramble.toml is valid now: going on");
                    }
                    match keep_and_scrub_secrets(&config_path(), &kept_secrets_path(), &text) {
                        Ok(true) => say(
                            "took the secrets in bramble.toml (join token, Wi-Fi password) off the card; this Pi keeps them on its root partition",
                        ),
                        Ok(false) => {}
                        Err(e) => say(&format!("could not remove the secrets from the card: {e}")),
                    }
                    drop(panel);
                    return node;
                }
                Err(problems) => {
                    if warned.as_ref() != Some(&problems) {
                        say(&format!(
                            "bramble.toml on the boot partition is not usable for this Pi ({mac}):"
                        ));
                        for problem in &problems {
                            say(&format!("  - {problem}"));
                        }
                        say("fix it on any computer and put the card back, or edit /boot/firmware/bramble.toml over SSH; it is read again every 10 seconds");
                        warned = Some(problems);
                    }
                    if panel.is_none() {
                        panel = error_panel();
                    }
                    self.wait(RETRY_CONFIG);
                }
            }
        }
    }

    /// Waits up to `duration`, reaping children and obeying shutdown signals.
    fn wait(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let timeout = libc::timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a valid signal set, siginfo and timeout.
            let signal = unsafe { libc::sigtimedwait(self.signals.as_ref(), &mut info, &timeout) };
            match signal {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGINT => self.shutdown(RebootMode::RB_AUTOBOOT),
                libc::SIGUSR2 => self.shutdown(RebootMode::RB_POWER_OFF),
                libc::SIGUSR1 => self.shutdown(RebootMode::RB_HALT_SYSTEM),
                _ => {}
            }
            if signal < 0 {
                break;
            }
        }
    }

    fn bring_up(&mut self, node: &NodeConfig) {
        set_hostname(&node.hostname);
        if !node.ssh_keys.is_empty() {
            let keys = node.ssh_keys.join("\n") + "\n";
            let _ = std::fs::create_dir_all("/root/.ssh");
            if std::fs::write("/root/.ssh/authorized_keys", keys).is_ok() {
                let _ = std::fs::set_permissions(
                    "/root/.ssh/authorized_keys",
                    std::fs::Permissions::from_mode(0o600),
                );
            }
            // -R: make host keys on first use; -s: keys only, no passwords; -F: foreground.
            self.add(
                "ssh",
                &["/usr/sbin/dropbear", "-R", "-F", "-E", "-s", "-p", "22"],
                &[],
            );
        }
        let _ = Command::new("/bin/ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if let Some(wifi) = &node.wifi {
            let conf = "/run/wpa_supplicant.conf";
            let _ = std::fs::write(conf, wpa_supplicant_conf(wifi));
            let _ = std::fs::set_permissions(conf, std::fs::Permissions::from_mode(0o600));
            let interface = node.interface.clone();
            self.add(
                "wifi",
                &[
                    "/sbin/wpa_supplicant",
                    "-i",
                    &interface,
                    "-c",
                    conf,
                    "-D",
                    "nl80211",
                ],
                &[],
            );
        }
        let _ = Command::new("/bin/ip")
            .args(["link", "set", &node.interface, "up"])
            .status();
        match &node.addressing {
            Addressing::Dhcp => {
                let hostname = format!("hostname:{}", node.hostname);
                self.add(
                    "dhcp",
                    &[
                        "/sbin/udhcpc",
                        "-f",
                        "-i",
                        &node.interface,
                        "-s",
                        "/usr/share/udhcpc/default.script",
                        "-x",
                        &hostname,
                        "-t",
                        "5",
                        "-T",
                        "2",
                        "-A",
                        "5",
                    ],
                    &[],
                );
            }
            Addressing::Static {
                address,
                prefix,
                gateway,
                dns,
            } => {
                let _ = Command::new("/bin/ip")
                    .args([
                        "addr",
                        "replace",
                        &format!("{address}/{prefix}"),
                        "dev",
                        &node.interface,
                    ])
                    .status();
                if let Some(gateway) = gateway {
                    let _ = Command::new("/bin/ip")
                        .args(["route", "replace", "default", "via", &gateway.to_string()])
                        .status();
                }
                let resolv: String = dns.iter().map(|s| format!("nameserver {s}\n")).collect();
                let _ = std::fs::write("/etc/resolv.conf", resolv);
                say(&format!(
                    "{} has {address}/{prefix} (static)",
                    node.interface
                ));
            }
        }
        let address = self.wait_for_address(&node.interface);
        if !node.ntp.is_empty() {
            let mut ntpd = vec!["/usr/sbin/ntpd".to_owned(), "-n".to_owned()];
            for server in &node.ntp {
                ntpd.extend(["-p".to_owned(), server.clone()]);
            }
            let ntpd: Vec<&str> = ntpd.iter().map(String::as_str).collect();
            self.add("ntp", &ntpd, &[]);
        }
        let mut node = node.clone();
        if node.role == Role::Master {
            match master_join_secret(&node) {
                Ok(secret) => node.join_token = Some(secret),
                Err(e) => say(&format!("cannot store the join token: {e}")),
            }
        }
        let services = services_for(&node, address.as_deref()).unwrap_or_else(|error| {
            say(&format!("bramble.toml's options are not accepted: {error}"));
            Vec::new()
        });
        for spec in services {
            let command: Vec<&str> = spec.command.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = spec
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.add(&spec.name, &command, &env);
        }
        if node.role == Role::Master {
            say(&format!(
                "master of cluster {:?} starting: https://{}:{API_PORT} ({})",
                node.cluster,
                address.as_deref().unwrap_or("?"),
                node.hostname
            ));
        } else {
            say(&format!(
                "joining cluster {:?} at {} as {}",
                node.cluster,
                node.master_url.as_deref().unwrap_or("?"),
                node.hostname
            ));
        }
    }

    /// Waits (up to a minute, saying so) for `interface` to have an IPv4 address.
    fn wait_for_address(&mut self, interface: &str) -> Option<String> {
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            if let Some(address) = ipv4_of(interface) {
                return Some(address);
            }
            if started.elapsed() > Duration::from_secs(60) {
                say(&format!(
                    "{interface} has no address after a minute; starting anyway (DHCP keeps trying)"
                ));
                return None;
            }
            if said.elapsed() > Duration::from_secs(10) {
                say(&format!("waiting for an address on {interface}"));
                said = Instant::now();
            }
            self.wait(Duration::from_millis(250));
        }
    }

    fn add(&mut self, name: &str, command: &[&str], env: &[(&str, &str)]) {
        let mut service = Service {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            started: Instant::now(),
            backoff: Duration::from_secs(1),
            restart_at: None,
        };
        start(name, &mut service);
        self.services.insert(name.to_owned(), service);
    }

    fn reap(&mut self) {
        loop {
            match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    for (name, service) in &mut self.services {
                        if service.child.as_ref().map(|c| c.id() as i32) == Some(pid.as_raw()) {
                            service.child = None;
                            if service.started.elapsed() > Duration::from_secs(60) {
                                service.backoff = Duration::from_secs(1);
                            }
                            let why = last_log_line(name);
                            say(&format!(
                                "{name} stopped ({}); starting it again in {} s{}",
                                describe(&status),
                                service.backoff.as_secs(),
                                why.map(|line| format!(": {line}")).unwrap_or_default()
                            ));
                            service.restart_at = Some(Instant::now() + service.backoff);
                            service.backoff = (service.backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        }
    }

    fn supervise(&mut self) -> anyhow::Result<()> {
        let mut shown_token = false;
        loop {
            self.wait(Duration::from_secs(1));
            let now = Instant::now();
            for (name, service) in &mut self.services {
                if service.restart_at.is_some_and(|at| at <= now) {
                    service.restart_at = None;
                    start(name, service);
                }
            }
            if !shown_token {
                if let Ok(token) = std::fs::read_to_string(format!("{STATE_DIR}/master/join.token"))
                {
                    say(&format!(
                        "agents join with join_token = \"{}\" in their bramble.toml (or the pinned form {})",
                        token.trim().rsplit('.').next().unwrap_or_default(),
                        token.trim()
                    ));
                    shown_token = true;
                } else if !self.services.contains_key("master") {
                    shown_token = true;
                }
            }
            if self.clock_saved.elapsed() > SAVE_CLOCK {
                save_clock();
                self.clock_saved = Instant::now();
            }
        }
    }

    fn shutdown(&mut self, how: RebootMode) -> ! {
        say("stopping");
        for service in self.services.values_mut() {
            if let Some(child) = &service.child {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && self.services.values().any(|s| {
                s.child.as_ref().is_some_and(|c| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), None).is_ok()
                        && !is_zombie(c.id())
                })
            })
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Pid -1: every process but init.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-1),
            nix::sys::signal::Signal::SIGKILL,
        );
        save_clock();
        let _ = nix::mount::umount(BOOT_MOUNT);
        nix::unistd::sync();
        let _ = nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        );
        say("the card is safe to remove");
        let _ = nix::sys::reboot::reboot(how);
        std::process::exit(0);
    }
}

fn describe(status: &nix::sys::wait::WaitStatus) -> String {
    match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => format!("exit {code}"),
        nix::sys::wait::WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// The last line a service logged (`/var/log/NAME.log`), to say why it stopped.
fn last_log_line(name: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(format!("/var/log/{name}.log")).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(2048))).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.chars().take(300).collect())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn start(name: &str, service: &mut Service) {
    let mut command = Command::new(&service.command[0]);
    command.args(&service.command[1..]);
    for (key, value) in &service.env {
        command.env(key, value);
    }
    command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("/var/log/{name}.log"))
    {
        if let Ok(second) = log.try_clone() {
            command.stdout(log).stderr(second);
        }
    }
    service.started = Instant::now();
    match command.spawn() {
        Ok(child) => service.child = Some(child),
        Err(e) => {
            say(&format!(
                "cannot start {name} ({}): {e}",
                service.command[0]
            ));
            service.restart_at = Some(Instant::now() + service.backoff);
            service.backoff = (service.backoff * 2).min(Duration::from_secs(30));
        }
    }
}

fn set_hostname(name: &str) {
    let _ = nix::unistd::sethostname(name);
    let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
    let _ = std::fs::write(
        "/etc/hosts",
        format!("127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost\n"),
    );
}

/// The IPv4 address of `interface`, if it has one.
fn ipv4_of(interface: &str) -> Option<String> {
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    for entry in addresses {
        if entry.interface_name != interface {
            continue;
        }
        if let Some(address) = entry.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Some(address.ip().to_string());
        }
    }
    None
}

/// The master's join secret: bramble.toml's, else the one made on an earlier boot, else a new
/// one; written where `bramble master` reads it (DIR/join.secret).
fn master_join_secret(node: &NodeConfig) -> std::io::Result<String> {
    let dir = Path::new(STATE_DIR).join("master");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("join.secret");
    let existing = std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_owned());
    let secret = match (&node.join_token, existing) {
        (Some(configured), _) => configured.clone(),
        (None, Some(existing)) if !existing.is_empty() => existing,
        (None, _) => {
            let mut bytes = [0u8; 16];
            // SAFETY: getrandom writes at most bytes.len() bytes.
            let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if n != bytes.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            say(&format!(
                "made up a join token: {secret} (put it in the agents' bramble.toml as join_token)"
            ));
            secret
        }
    };
    if std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_owned())
        != Some(secret.clone())
    {
        std::fs::write(&file, &secret)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// The Wi-Fi settings as wpa_supplicant reads them.
pub fn wpa_supplicant_conf(wifi: &config::Wifi) -> String {
    let security = match &wifi.password {
        Some(password) => {
            format!("  psk=\"{password}\"\n  key_mgmt=WPA-PSK WPA-PSK-SHA256 SAE\n  ieee80211w=1\n")
        }
        None => "  key_mgmt=NONE\n".to_owned(),
    };
    format!(
        "country={}\nupdate_config=0\nnetwork={{\n  ssid=\"{}\"\n  scan_ssid=1\n{security}}}\n",
        wifi.country, wifi.ssid
    )
}

/// A process to keep running: its name (also its log's, /var/log/NAME.log), its command line
/// and its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// The bramble processes a Pi runs: the master and a local agent on the master, an agent
/// elsewhere. Each is (name, command, environment); the join token goes in the environment,
/// not on the command line where `ps` shows it. The command lines are written by the same clap
/// structs that parse them; bramble.toml's master and panel options are read through them
/// too, so an option they refuse is an error here rather than a crash loop.
pub fn services_for(
    node: &NodeConfig,
    address: Option<&str>,
) -> Result<Vec<ServiceSpec>, clap::Error> {
    let bramble = "/usr/bin/bramble".to_owned();
    let token_env = || {
        let token = node.join_token.clone().unwrap_or_default();
        vec![(JOIN_TOKEN_ENV.to_owned(), token)]
    };
    let agent = |server: String, panel_args: &[String]| -> Result<Vec<String>, clap::Error> {
        let mut args: AgentArgs = command_line::parse(panel_args)?;
        args.join_token = None;
        args.server = Some(server);
        args.node_name = Some(node.hostname.clone());
        args.data_dir = format!("{STATE_DIR}/agent").into();
        args.storage_dir = node.storage_dir.as_ref().map(Into::into);
        args.seccomp_default = node.seccomp_default;
        args.allowed_unsafe_sysctls = node.allowed_unsafe_sysctls.clone();
        args.insecure_registries = node.insecure_registries.clone();
        args.labels = node
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok([vec![bramble.clone()], args.command_line()].concat())
    };
    let mut services = Vec::new();
    match node.role {
        Role::Master => {
            let mut given = node.master_args.clone();
            given.extend(node.panel_args.iter().cloned());
            let mut args: MasterArgs = command_line::parse(&given)?;
            args.data_dir = format!("{STATE_DIR}/master").into();
            args.listen = SocketAddr::from(([0, 0, 0, 0], API_PORT));
            args.cluster.tls_san = vec![node.hostname.clone(), format!("{}.local", node.hostname)];
            args.cluster.advertise_address = address.map(str::to_owned);
            if !node.master_args.iter().any(|a| a == "--profile") {
                args.cluster.profile = "demo".to_owned();
            }
            services.push(ServiceSpec {
                name: "master".to_owned(),
                command: [vec![bramble.clone()], args.command_line()].concat(),
                env: Vec::new(),
            });
            // The master's Pi runs pods too, through its own agent on loopback; the master's
            // own panel has the LEDs, so this agent has none.
            let no_panel = ["--gpio".to_owned(), "none".to_owned()];
            services.push(ServiceSpec {
                name: "agent".to_owned(),
                command: agent(format!("https://127.0.0.1:{API_PORT}"), &no_panel)?,
                env: token_env(),
            });
        }
        Role::Agent => {
            let server = node.master_url.clone().unwrap_or_default();
            services.push(ServiceSpec {
                name: "agent".to_owned(),
                command: agent(server, &node.panel_args)?,
                env: token_env(),
            });
        }
    }
    Ok(services)
}

/// Blinks the status LED red (fast) while bramble.toml is unusable, if the panel can start.
fn error_panel() -> Option<agent::panel::Panel> {
    let config = agent::panel::PanelConfig::node_kit(hardware::backend::BackendChoice::Chip(None));
    let (panel, _presses) = agent::panel::Panel::start(&config).ok()??;
    panel.set_health(hardware::status::NodeHealth::NotReady);
    Some(panel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbr::{Mbr, Partition, TYPE_FAT32_LBA, TYPE_LINUX};

    fn card() -> Mbr {
        Mbr {
            disk_id: 0x1234_5678,
            partitions: [
                Some(Partition {
                    kind: TYPE_FAT32_LBA,
                    bootable: true,
                    start: 8192,
                    sectors: 262_144,
                }),
                Some(Partition {
                    kind: TYPE_LINUX,
                    bootable: false,
                    start: 270_336,
                    sectors: 253_952,
                }),
                None,
                None,
            ],
        }
    }

    #[test]
    fn the_root_partition_grows_to_the_end_of_the_card_once() {
        let sixteen_gb = 31_116_288; // sectors of a typical "16 GB" card
        let grown = grown_table(&card(), sixteen_gb).expect("grows");
        let root = grown.partitions[1].unwrap();
        assert_eq!(root.start, 270_336, "the start stays");
        assert!(root.end() <= sixteen_gb);
        assert!(sixteen_gb - root.end() < 8192, "at most 4 MiB left over");
        assert_eq!(root.end() % 8192, 0, "ends on a 4 MiB boundary");
        assert_eq!(grown.partitions[0], card().partitions[0]);
        assert_eq!(grown.disk_id, card().disk_id, "PARTUUIDs stay");
        assert_eq!(grown_table(&grown, sixteen_gb), None, "already grown");
        // The image written to a file no larger than itself: nothing to do.
        assert_eq!(
            grown_table(&card(), card().partitions[1].unwrap().end()),
            None
        );
    }

    fn node(text: &str) -> NodeConfig {
        BrambleToml::parse(text)
            .unwrap()
            .resolve("dc:a6:32:00:00:07")
            .unwrap()
    }

    #[test]
    fn an_agent_runs_one_agent_with_the_token_out_of_sight() {
        let agent = node(
            "master = \"10.0.2.2:7443\"\njoin_token = \"0123456789abcdef\"\ninsecure_registries = [\"10.0.2.2:5000\"]\nstorage_dir = \"/mnt/usb/storage\"\nseccomp_default = true\nallowed_unsafe_sysctls = [\"net.core.somaxconn\"]\n[panel]\ngpio = \"none\"\n",
        );
        let services = services_for(&agent, Some("10.0.2.15")).unwrap();
        assert_eq!(services.len(), 1);
        let ServiceSpec { name, command, env } = &services[0];
        assert_eq!(name, "agent");
        let line = command.join(" ");
        assert!(
            line.starts_with(
                "/usr/bin/bramble agent --server https://10.0.2.2:7443 --node-name bramble-000007"
            ),
            "{line}"
        );
        assert!(line.contains("--insecure-registry 10.0.2.2:5000"), "{line}");
        assert!(line.contains("--storage-dir /mnt/usb/storage"), "{line}");
        assert!(line.contains(" --seccomp-default "), "{line}");
        assert!(
            line.contains("--allowed-unsafe-sysctls net.core.somaxconn"),
            "{line}"
        );
        assert!(
            line.contains("--label bramble.dev/cluster=bramble"),
            "{line}"
        );
        assert!(line.ends_with("--gpio none"), "{line}");
        assert!(
            !line.contains("0123456789abcdef"),
            "the token is not on the command line"
        );
        assert_eq!(
            env,
            &[(
                "BRAMBLE_JOIN_TOKEN".to_owned(),
                "0123456789abcdef".to_owned()
            )]
        );
    }

    #[test]
    fn a_master_runs_the_master_and_a_local_agent() {
        let mut master = node(
            "role = \"master\"\nhostname = \"pi-1\"\n[master-options]\nload_balancer_pool = \"192.168.1.240-192.168.1.250\"\n[panel]\nbuttons = \"monkey=22\"\n",
        );
        master.join_token = Some("0123456789abcdef".to_owned());
        let services = services_for(&master, Some("192.168.1.10")).unwrap();
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["master", "agent"]);
        let line = services[0].command.join(" ");
        for part in [
            "--listen 0.0.0.0:6443",
            "--tls-san pi-1 --tls-san pi-1.local",
            "--advertise-address 192.168.1.10",
            "--profile demo",
            "--load-balancer-pool 192.168.1.240-192.168.1.250",
            "--buttons monkey=22",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        let agent = services[1].command.join(" ");
        assert!(agent.contains("--server https://127.0.0.1:6443"), "{agent}");
        assert!(
            agent.ends_with("--gpio none"),
            "the master's panel has the LEDs: {agent}"
        );
    }

    #[test]
    fn every_command_line_parses_as_the_subcommand_it_starts() {
        let mut master = node("role = \"master\"\nhostname = \"pi-1\"\n[master-options]\nload_balancer_pool = \"192.168.1.240/28\"\n");
        master.join_token = Some("0123456789abcdef".to_owned());
        let agent = node("master = \"10.0.2.2:7443\"\njoin_token = \"0123456789abcdef\"\n[panel]\ngpio = \"simulated\"\n");
        for node in [master, agent] {
            for service in services_for(&node, Some("192.168.1.10")).unwrap() {
                let args = &service.command[2..];
                match service.command[1].as_str() {
                    "master" => {
                        let parsed: MasterArgs = command_line::parse(args).unwrap();
                        assert_eq!(parsed.command_line(), service.command[1..]);
                    }
                    "agent" => {
                        let parsed: AgentArgs = command_line::parse(args).unwrap();
                        assert_eq!(parsed.command_line(), service.command[1..]);
                    }
                    other => panic!("bramble {other} is not started by the card"),
                }
            }
        }
        let mut refused = node("role = \"master\"\n");
        refused.master_args = vec!["--node-port-range".into(), "3-1".into()];
        assert!(services_for(&refused, None).is_err());
    }

    #[test]
    fn wifi_settings_become_a_wpa_supplicant_network() {
        let conf = wpa_supplicant_conf(&config::Wifi {
            ssid: "demo-net".into(),
            password: Some("correct horse".into()),
            country: "GB".into(),
        });
        assert!(conf.starts_with("country=GB\n"));
        assert!(conf.contains("ssid=\"demo-net\""));
        assert!(conf.contains("psk=\"correct horse\""));
        let open = wpa_supplicant_conf(&config::Wifi {
            ssid: "cafe".into(),
            password: None,
            country: "DE".into(),
        });
        assert!(open.contains("key_mgmt=NONE"));
    }

    #[test]
    fn secrets_move_from_the_card_to_the_pi_before_the_card_loses_them() {
        let dir = tempfile::tempdir().unwrap();
        let card = dir.path().join("bramble.toml");
        let kept = dir.path().join("state/boot-secrets.toml");
        let text = "master = \"10.0.0.1\"\njoin_token = \"0123456789abcdef\"\n";
        std::fs::write(&card, text).unwrap();
        let (first, _) = read_config(&card, &kept, "dc:a6:32:00:00:07").unwrap();
        assert!(keep_and_scrub_secrets(&card, &kept, text).unwrap());
        let on_card = std::fs::read_to_string(&card).unwrap();
        assert!(!on_card.contains("0123456789abcdef"), "{on_card}");
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The next boot reads the same settings from the card and the kept secrets.
        let (again, _) = read_config(&card, &kept, "dc:a6:32:00:00:07").unwrap();
        assert_eq!(again, first);
        assert!(!keep_and_scrub_secrets(&card, &kept, &on_card).unwrap());
    }
}
