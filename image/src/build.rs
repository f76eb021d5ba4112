//! `bramble image build`: the flashable card, without root, loop mounts or Docker.
//!
//! ```text
//!  Debian arm64 .debs ──apt-get download──▶ unpacked pool (cached)
//!       │ kernel, modules, raspi-firmware,      │
//!       │ busybox-static, nftables, wpa, dropbear│ programs + only the libraries they need
//!       ▼                                       ▼
//!  boot/ (firmware, kernel, DTBs,          root/ (busybox, bramble, modules, firmware,
//!   initramfs, config.txt, cmdline.txt,     nft, wpa_supplicant, dropbear, /etc)
//!   bramble.toml)                               │
//!       │ mkfs.vfat --invariant + mcopy         │ mkfs.ext4 -d (fixed UUID, hash seed, time)
//!       ▼                                       ▼
//!  bramble-<version>-arm64.img = MBR │ 4 MiB gap │ FAT32 boot │ ext4 root  (+ .sha256)
//! ```
//!
//! Every time stamp is one fixed time (`SOURCE_DATE_EPOCH`, or the kernel package's), every
//! identifier is derived from the inputs, and archives are written in path order, so the same
//! inputs give the same bytes. The root partition is sized to its contents plus some room; the
//! Pi grows it to the whole card on its first boot (see `boot`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::debian::{self, Apt, Deb};
use crate::mbr::{self, Mbr, Partition};

/// Where the boot partition starts: 4 MiB, the erase-block alignment SD cards like.
pub const BOOT_START: u64 = 4 << 20;
/// The boot partition's size.
pub const BOOT_SIZE: u64 = 128 << 20;
/// Free room left in the root partition before it grows on first boot.
pub const ROOT_ROOM: u64 = 48 << 20;
/// The file names of the card's first-boot config and its README.
pub const CONFIG_FILE: &str = "bramble.toml";

/// Firmware files from `raspi-firmware` for Pi 3, Pi 4, 400, Zero 2 W and CM3/CM4
/// (the `cd` variants run with `gpu_mem=16`, the `x`/`db` ones are camera/debug builds).
const FIRMWARE: [&str; 9] = [
    "bootcode.bin",
    "start.elf",
    "fixup.dat",
    "start_cd.elf",
    "fixup_cd.dat",
    "start4.elf",
    "fixup4.dat",
    "start4cd.elf",
    "fixup4cd.dat",
];

/// Wi-Fi firmware of the Pis' Broadcom/Cypress chips: 43430 (Pi 3B, Zero W), 43436 (Zero 2 W;
/// not in bookworm's firmware-brcm80211 yet, so its Wi-Fi does not come up), 43455 (Pi 3B+,
/// 4, 400, CM4), 43456 (Pi 400, some Pi 4s).
const WIFI_FIRMWARE_PREFIXES: [&str; 4] = [
    "brcmfmac43430",
    "brcmfmac43436",
    "brcmfmac43455",
    "brcmfmac43456",
];

/// Kernel modules on the root partition (paths under `kernel/`, by prefix); what they depend
/// on comes along. Hardware modules load by device alias at boot, the others on demand.
const ROOT_MODULES: [&str; 45] = [
    "fs/ext4/",
    "crypto/crc32c_generic.ko",
    "lib/libcrc32c.ko",
    "fs/overlayfs/",
    "fs/fat/",
    "fs/nls/nls_cp437.ko",
    "fs/nls/nls_ascii.ko",
    "fs/nls/nls_iso8859-1.ko",
    "fs/nls/nls_utf8.ko",
    "net/bridge/",
    "net/netfilter/",
    "net/ipv4/netfilter/",
    "net/ipv6/",
    "net/802/",
    "net/llc/",
    "net/wireless/",
    "net/rfkill/",
    "net/packet/",
    "drivers/net/veth.ko",
    "drivers/net/dummy.ko",
    "drivers/net/virtio_net.ko",
    "drivers/net/ethernet/broadcom/genet/",
    "drivers/net/usb/",
    "drivers/net/phy/",
    "drivers/net/mdio/",
    "drivers/net/wireless/broadcom/brcm80211/",
    "drivers/mmc/",
    "drivers/block/virtio_blk.ko",
    "drivers/virtio/",
    "drivers/char/hw_random/",
    "drivers/usb/dwc2/",
    "drivers/usb/host/",
    "drivers/usb/storage/",
    "drivers/scsi/sd_mod.ko",
    "drivers/clk/bcm/",
    "drivers/regulator/gpio-regulator.ko",
    "drivers/regulator/fixed.ko",
    "drivers/gpio/gpio-raspberrypi-exp.ko",
    "drivers/mailbox/bcm2835-mailbox.ko",
    "drivers/dma/bcm2835-dma.ko",
    "drivers/reset/reset-raspberrypi.ko",
    "drivers/soc/bcm/",
    "drivers/watchdog/bcm2835_wdt.ko",
    "drivers/thermal/broadcom/",
    "drivers/hwmon/raspberrypi-hwmon.ko",
];

/// The part of [`ROOT_MODULES`] the initramfs needs to find and mount the root partition:
/// SD card and USB storage on a Pi, virtio disks under QEMU.
const INITRAMFS_MODULES: [&str; 19] = [
    "fs/ext4/",
    "crypto/crc32c_generic.ko",
    "lib/libcrc32c.ko",
    "drivers/mmc/",
    "drivers/block/virtio_blk.ko",
    "drivers/virtio/",
    "drivers/usb/dwc2/",
    "drivers/usb/host/",
    "drivers/usb/storage/",
    "drivers/scsi/sd_mod.ko",
    "drivers/clk/bcm/",
    "drivers/regulator/gpio-regulator.ko",
    "drivers/regulator/fixed.ko",
    "drivers/gpio/gpio-raspberrypi-exp.ko",
    "drivers/mailbox/bcm2835-mailbox.ko",
    "drivers/dma/bcm2835-dma.ko",
    "drivers/reset/reset-raspberrypi.ko",
    "drivers/soc/bcm/",
    "drivers/char/hw_random/",
];

/// Programs from Debian's dynamic packages: `nft` (the agent's service proxy and pod NAT),
/// `wpa_supplicant` (Wi-Fi) and `dropbear` (SSH). Their libraries are found by `DT_NEEDED`.
const PROGRAMS: [(&str, &str); 5] = [
    ("nftables", "usr/sbin/nft"),
    ("wpasupplicant", "sbin/wpa_supplicant"),
    ("dropbear-bin", "usr/sbin/dropbear"),
    ("dropbear-bin", "usr/bin/dropbearkey"),
    ("wpasupplicant", "sbin/wpa_cli"),
];

/// Busybox applets linked at build time; the rest are linked by the init at boot.
const APPLETS: [&str; 12] = [
    "bin/sh",
    "bin/ash",
    "bin/ip",
    "bin/mount",
    "bin/umount",
    "sbin/modprobe",
    "sbin/insmod",
    "sbin/udhcpc",
    "sbin/switch_root",
    "sbin/reboot",
    "sbin/poweroff",
    "usr/sbin/ntpd",
];

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Host tools are missing.
    #[error("missing tools: {missing}\n  install them with: apt-get install {packages}")]
    MissingTools {
        /// The programs.
        missing: String,
        /// The Debian packages holding them.
        packages: String,
    },
    /// The binary to package is not right.
    #[error("{0}")]
    Binary(String),
    /// Fetching or reading packages failed.
    #[error("Debian packages: {0}")]
    Debian(String),
    /// A tool failed.
    #[error("{command} failed: {output}")]
    Tool {
        /// What ran.
        command: String,
        /// What it said.
        output: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// A closure turning an I/O error on `path` into a [`BuildError`].
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
        move |source| BuildError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs `command`, returning its standard output, or its output as the error.
pub fn output(command: &mut Command) -> Result<String, BuildError> {
    let shown = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(OsStr::to_string_lossy)
            .take(8)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let result = command.output().map_err(|e| BuildError::Tool {
        command: shown.clone(),
        output: e.to_string(),
    })?;
    if !result.status.success() {
        let mut text = String::from_utf8_lossy(&result.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&result.stdout));
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        return Err(BuildError::Tool {
            command: shown,
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where the image goes.
    pub out_dir: PathBuf,
    /// The static aarch64 `bramble` binary.
    pub binary: PathBuf,
    /// The version in the image's name.
    pub version: String,
    /// Downloads and unpacked packages, kept between builds.
    pub cache_dir: PathBuf,
    /// The time every file carries; `None`: `SOURCE_DATE_EPOCH` or the kernel package's.
    pub epoch: Option<u64>,
}

/// A finished image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The image file.
    pub path: PathBuf,
    /// Its SHA-256 (hex), also in `<path>.sha256`.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The kernel release.
    pub kernel: String,
    /// Debian packages used, `name version`.
    pub packages: Vec<String>,
    /// How long it took.
    pub took: Duration,
}

/// One step of the build, for progress output.
pub struct Progress<'a> {
    step: usize,
    started: Instant,
    report: &'a mut dyn FnMut(&str),
}

/// Steps a build reports.
pub const STEPS: usize = 9;

impl Progress<'_> {
    fn step(&mut self, what: &str) {
        self.step += 1;
        let line = format!(
            "[{}/{STEPS}] {what} ({:.1} s)",
            self.step,
            self.started.elapsed().as_secs_f64()
        );
        (self.report)(&line);
    }

    fn detail(&mut self, what: &str) {
        (self.report)(&format!("      {what}"));
    }
}

/// Programs the build runs, and the Debian packages they come in.
const TOOLS: [(&str, &str); 8] = [
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("depmod", "kmod"),
    ("debugfs", "e2fsprogs"),
    ("fakeroot", "fakeroot"),
];

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Checks the host has the tools a build runs; `fakeroot` only matters without root.
pub fn check_tools() -> Result<(), BuildError> {
    let missing: Vec<(&str, &str)> = TOOLS
        .into_iter()
        .filter(|(tool, _)| !(*tool == "fakeroot" && is_root()))
        .filter(|(tool, _)| !on_path(tool))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let keyring = Path::new(debian::KEYRING).exists();
    Err(BuildError::MissingTools {
        missing: missing
            .iter()
            .map(|(tool, _)| *tool)
            .collect::<Vec<_>>()
            .join(", "),
        packages: missing
            .iter()
            .map(|(_, package)| *package)
            .chain((!keyring).then_some("debian-archive-keyring"))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// Checks that `binary` is a static aarch64 executable.
pub fn check_binary(binary: &Path) -> Result<(), BuildError> {
    let info = crate::elf::read(binary)
        .map_err(|e| BuildError::Binary(format!("cannot read {}: {e}", binary.display())))?;
    match info {
        Some(info) if info.is_static_aarch64() => Ok(()),
        Some(info) if info.machine != crate::elf::EM_AARCH64 => Err(BuildError::Binary(format!(
            "{} is not an arm64 (aarch64) program; build one with cross/build",
            binary.display()
        ))),
        Some(_) => Err(BuildError::Binary(format!(
            "{} is dynamically linked; the card needs the static build from cross/build",
            binary.display()
        ))),
        None => Err(BuildError::Binary(format!(
            "{} is not a 64-bit ELF program",
            binary.display()
        ))),
    }
}

/// Builds the image.
pub fn build(
    options: &BuildOptions,
    report: &mut dyn FnMut(&str),
) -> Result<BuiltImage, BuildError> {
    let mut progress = Progress {
        step: 0,
        started: Instant::now(),
        report,
    };
    progress.step("Checking the host's tools and the bramble binary");
    check_tools()?;
    check_binary(&options.binary)?;
    let work = options.cache_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    for dir in ["boot", "root", "initramfs"] {
        std::fs::create_dir_all(work.join(dir)).map_err(BuildError::io(&work))?;
    }

    progress.step("Fetching Debian arm64 packages (cached after the first build)");
    let apt = Apt::new(&options.cache_dir.join("apt"))?;
    apt.update()?;
    let kernel_package = apt.first_dependency("linux-image-arm64")?;
    let mut wanted: BTreeSet<String> = apt
        .closure(&["nftables", "wpasupplicant", "dropbear-bin"])?
        .into_iter()
        .collect();
    for package in [
        kernel_package.as_str(),
        "raspi-firmware",
        "firmware-brcm80211",
        "busybox-static",
    ] {
        wanted.insert(package.to_owned());
    }
    let wanted: Vec<String> = wanted.into_iter().collect();
    let debs = apt.download(&wanted)?;
    progress.detail(&format!(
        "{} packages, kernel {}",
        debs.len(),
        debs.iter()
            .find(|d| d.name == kernel_package)
            .map_or("?", |d| d.version.as_str())
    ));

    progress.step("Unpacking");
    let pool_dir = options.cache_dir.join("pool");
    let mut pool: BTreeMap<String, PathBuf> = BTreeMap::new();
    for deb in &debs {
        pool.insert(deb.name.clone(), debian::unpack(deb, &pool_dir)?);
    }
    let kernel_dir = &pool[&kernel_package];
    let kernel_release = kernel_package
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_package)
        .to_owned();
    let vmlinuz = kernel_dir.join(format!("boot/vmlinuz-{kernel_release}"));
    let epoch = options
        .epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .or_else(|| {
            let modified = std::fs::metadata(&vmlinuz).ok()?.modified().ok()?;
            Some(
                modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs(),
            )
        })
        .unwrap_or(1_700_000_000);
    let ids = Identifiers::derive(&options.binary, &debs, &options.version)?;

    progress.step("Assembling the root file system");
    let root = work.join("root");
    stage_root(
        &root,
        options,
        &pool,
        &kernel_dir.join("lib/modules").join(&kernel_release),
        &kernel_release,
        &debs,
        epoch,
    )?;

    progress.step("Making the initramfs");
    let initramfs_dir = work.join("initramfs");
    stage_initramfs(
        &initramfs_dir,
        &pool["busybox-static"],
        &kernel_dir.join("lib/modules").join(&kernel_release),
        &kernel_release,
        &ids.partuuid(2),
    )?;
    set_times(&initramfs_dir, epoch)?;
    let initrd = crate::cpio::archive(&initramfs_dir, epoch as u32)
        .map_err(BuildError::io(&initramfs_dir))?;
    progress.detail(&format!("initramfs {} KiB", initrd.len() / 1024));

    progress.step("Assembling the boot partition");
    let boot = work.join("boot");
    stage_boot(
        &boot,
        &pool["raspi-firmware"],
        kernel_dir,
        &kernel_release,
        &initrd,
        &ids.partuuid(2),
    )?;
    set_times(&boot, epoch)?;

    progress.step("Making the ext4 root partition (mkfs.ext4 -d)");
    let root_bytes = tree_bytes(&root)?;
    let root_size = round_up(root_bytes + root_bytes / 5 + ROOT_ROOM, 4 << 20);
    let root_fs = work.join("root.ext4");
    make_ext4(&root, &root_fs, root_size, &ids.root_uuid, epoch)?;
    progress.detail(&format!(
        "{} MiB of files in a {} MiB partition",
        root_bytes >> 20,
        root_size >> 20
    ));

    progress.step("Making the FAT boot partition (mkfs.vfat + mcopy)");
    let boot_fs = work.join("boot.fat");
    make_fat(&boot, &boot_fs, BOOT_SIZE, ids.fat_serial)?;

    progress.step("Writing the image and its checksum");
    std::fs::create_dir_all(&options.out_dir).map_err(BuildError::io(&options.out_dir))?;
    let path = options
        .out_dir
        .join(format!("bramble-{}-arm64.img", options.version));
    let mbr = Mbr {
        disk_id: ids.disk_id,
        partitions: [
            Some(Partition {
                kind: mbr::TYPE_FAT32_LBA,
                bootable: true,
                start: (BOOT_START / mbr::SECTOR) as u32,
                sectors: (BOOT_SIZE / mbr::SECTOR) as u32,
            }),
            Some(Partition {
                kind: mbr::TYPE_LINUX,
                bootable: false,
                start: ((BOOT_START + BOOT_SIZE) / mbr::SECTOR) as u32,
                sectors: (root_size / mbr::SECTOR) as u32,
            }),
            None,
            None,
        ],
    };
    let size = assemble(&path, &mbr, &boot_fs, &root_fs)?;
    let sha256 = sha256_file(&path)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let sum_path = PathBuf::from(format!("{}.sha256", path.display()));
    std::fs::write(&sum_path, format!("{sha256}  {file_name}\n"))
        .map_err(BuildError::io(&sum_path))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(BuiltImage {
        path,
        sha256,
        size,
        kernel: kernel_release,
        packages: debs
            .iter()
            .map(|d| format!("{} {}", d.name, d.version))
            .collect(),
        took: progress.started.elapsed(),
    })
}

/// Identifiers derived from the inputs, so a rebuild gives the same bytes.
struct Identifiers {
    disk_id: u32,
    fat_serial: u32,
    root_uuid: String,
}

impl Identifiers {
    fn derive(binary: &Path, debs: &[Deb], version: &str) -> Result<Identifiers, BuildError> {
        let mut hasher = sha2::Sha256::new();
        hasher.update(sha256_file(binary)?.as_bytes());
        for deb in debs {
            hasher.update(format!("{} {}\n", deb.name, deb.version).as_bytes());
        }
        hasher.update(version.as_bytes());
        let digest = hasher.finalize();
        let word = |at: usize| u32::from_be_bytes(digest[at..at + 4].try_into().expect("4"));
        let hex: String = digest[8..24].iter().map(|b| format!("{b:02x}")).collect();
        let root_uuid = format!(
            "{}-{}-4{}-8{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        );
        Ok(Identifiers {
            disk_id: word(0),
            fat_serial: word(4),
            root_uuid,
        })
    }

    fn partuuid(&self, number: usize) -> String {
        format!("{:08x}-{number:02}", self.disk_id)
    }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut file = std::fs::File::open(path).map_err(BuildError::io(path))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(BuildError::io(path))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<(), BuildError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
    }
    std::fs::write(path, contents).map_err(BuildError::io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(BuildError::io(path))
}

fn copy_file(from: &Path, to: &Path) -> Result<(), BuildError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
    }
    std::fs::copy(from, to).map_err(BuildError::io(from))?;
    Ok(())
}

fn symlink(target: &str, link: &Path) -> Result<(), BuildError> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(BuildError::io(parent))?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(BuildError::io(link))
}

/// Bytes of file data under `dir`, each file and directory rounded up to a 4 KiB block.
fn tree_bytes(dir: &Path) -> Result<u64, BuildError> {
    let mut total = 0;
    for relative in crate::tree::entries(dir).map_err(BuildError::io(dir))? {
        let path = dir.join(relative);
        let meta = std::fs::symlink_metadata(&path).map_err(BuildError::io(&path))?;
        total += if meta.is_dir() {
            4096
        } else {
            round_up(meta.len().max(1), 4096)
        };
    }
    Ok(total)
}

/// Sets every entry's access and modification time under `dir` (and `dir`'s) to `epoch`.
pub fn set_times(dir: &Path, epoch: u64) -> Result<(), BuildError> {
    fn stamp(path: &Path, epoch: u64) -> Result<(), BuildError> {
        let time = nix::sys::time::TimeSpec::new(epoch as _, 0);
        nix::sys::stat::utimensat(
            None,
            path,
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|errno| BuildError::io(path)(errno.into()))
    }
    for relative in crate::tree::entries(dir).map_err(BuildError::io(dir))? {
        stamp(&dir.join(relative), epoch)?;
    }
    stamp(dir, epoch)
}

/// Copies the modules matching `prefixes`, and what they depend on, from `source` (a
/// `/lib/modules/RELEASE`) into `target`/lib/modules/RELEASE, then indexes them with depmod.
fn install_modules(
    source: &Path,
    target_root: &Path,
    release: &str,
    prefixes: &[&str],
) -> Result<usize, BuildError> {
    let dependencies = module_dependencies(source, release)?;
    let mut chosen: BTreeSet<String> = dependencies
        .keys()
        .filter(|module| {
            let under = module.strip_prefix("kernel/").unwrap_or(module);
            prefixes.iter().any(|prefix| under.starts_with(prefix))
        })
        .cloned()
        .collect();
    let mut queue: Vec<String> = chosen.iter().cloned().collect();
    while let Some(module) = queue.pop() {
        for dependency in dependencies.get(&module).into_iter().flatten() {
            if chosen.insert(dependency.clone()) {
                queue.push(dependency.clone());
            }
        }
    }
    let target = target_root.join("lib/modules").join(release);
    for module in &chosen {
        copy_file(&source.join(module), &target.join(module))?;
    }
    for index in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if source.join(index).exists() {
            copy_file(&source.join(index), &target.join(index))?;
        }
    }
    output(
        Command::new("depmod")
            .arg("-b")
            .arg(target_root)
            .arg(release),
    )?;
    Ok(chosen.len())
}

/// `modules.dep` of the whole kernel package (computed once per kernel, in the pool).
fn module_dependencies(
    source: &Path,
    release: &str,
) -> Result<BTreeMap<String, Vec<String>>, BuildError> {
    // source = POOL/lib/modules/RELEASE; depmod -b wants the directory holding lib/.
    let base = source
        .ancestors()
        .nth(3)
        .ok_or_else(|| BuildError::Debian("odd kernel module path".into()))?;
    let dep_file = source.join("modules.dep");
    if !dep_file.exists() {
        output(Command::new("depmod").arg("-b").arg(base).arg(release))?;
    }
    let text = std::fs::read_to_string(&dep_file).map_err(BuildError::io(&dep_file))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect())
}

/// Finds `library` in the unpacked pool's library directories.
fn find_library(pool: &BTreeMap<String, PathBuf>, library: &str) -> Option<(PathBuf, String)> {
    for dir in pool.values() {
        for lib_dir in ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib"] {
            let candidate = dir.join(lib_dir).join(library);
            if candidate.exists() {
                return Some((candidate, format!("{lib_dir}/{library}")));
            }
        }
    }
    None
}

/// Copies `program` and, transitively, the shared libraries it needs into `root`.
fn install_program(
    pool: &BTreeMap<String, PathBuf>,
    package: &str,
    program: &str,
    root: &Path,
    installed: &mut BTreeSet<String>,
) -> Result<(), BuildError> {
    let source = pool
        .get(package)
        .map(|dir| dir.join(program))
        .filter(|path| path.exists())
        .ok_or_else(|| BuildError::Debian(format!("{package} has no {program}")))?;
    copy_file(&source, &root.join(program))?;
    let mut queue = vec![source];
    while let Some(elf) = queue.pop() {
        let info = crate::elf::read(&elf)
            .map_err(BuildError::io(&elf))?
            .ok_or_else(|| BuildError::Debian(format!("{} is not ELF", elf.display())))?;
        let mut libraries = info.needed;
        if let Some(interpreter) = info.interpreter {
            libraries.push(
                Path::new(&interpreter)
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        for library in libraries {
            if !installed.insert(library.clone()) {
                continue;
            }
            let (path, relative) = find_library(pool, &library).ok_or_else(|| {
                BuildError::Debian(format!("no package holds {library}, needed by {program}"))
            })?;
            // Copy the real file under the library's name (links resolved).
            let real = std::fs::canonicalize(&path).map_err(BuildError::io(&path))?;
            copy_file(&real, &root.join(&relative))?;
            queue.push(real);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn stage_root(
    root: &Path,
    options: &BuildOptions,
    pool: &BTreeMap<String, PathBuf>,
    modules: &Path,
    release: &str,
    debs: &[Deb],
    epoch: u64,
) -> Result<(), BuildError> {
    for dir in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt",
        "root/.ssh",
        "boot/firmware",
        "var/lib/bramble",
        "var/log",
        "etc/dropbear",
        "usr/bin",
        "usr/sbin",
        "sbin",
    ] {
        std::fs::create_dir_all(root.join(dir)).map_err(BuildError::io(root))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(BuildError::io(root))?;
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(BuildError::io(root))?;
    copy_file(
        &pool["busybox-static"].join("bin/busybox"),
        &root.join("bin/busybox"),
    )?;
    for applet in APPLETS {
        let depth = applet.matches('/').count();
        symlink(
            &format!("{}bin/busybox", "../".repeat(depth)),
            &root.join(applet),
        )?;
    }
    copy_file(&options.binary, &root.join("usr/bin/bramble"))?;
    std::fs::set_permissions(
        root.join("usr/bin/bramble"),
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(BuildError::io(root))?;
    // The kernel starts /sbin/init if the initramfs is ever skipped.
    symlink("../usr/bin/bramble", &root.join("sbin/init"))?;
    let mut libraries = BTreeSet::new();
    for (package, program) in PROGRAMS {
        install_program(pool, package, program, root, &mut libraries)?;
    }
    // glibc finds ld.so at /lib/ld-linux-aarch64.so.1.
    if !root.join("lib/ld-linux-aarch64.so.1").exists() {
        symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            &root.join("lib/ld-linux-aarch64.so.1"),
        )?;
    }
    install_modules(modules, root, release, &ROOT_MODULES)?;
    let firmware_dir = root.join("lib/firmware/brcm");
    for package in ["firmware-brcm80211", "raspi-firmware"] {
        let dir = pool[package].join("lib/firmware/brcm");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if WIFI_FIRMWARE_PREFIXES.iter().any(|p| name.starts_with(p)) {
                // Many are links into ../cypress/: copy what they point at.
                if let Ok(real) = std::fs::canonicalize(entry.path()) {
                    copy_file(&real, &firmware_dir.join(&name))?;
                }
            }
        }
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        // No password: root logs in only with an SSH key (bramble.toml's [ssh]).
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("etc/shells", "/bin/sh\n", 0o644),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
            0o644,
        ),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644),
        ("etc/resolv.conf", "", 0o644),
        ("usr/share/udhcpc/default.script", UDHCPC_SCRIPT, 0o755),
    ];
    for (path, text, mode) in files {
        write_file(&root.join(path), text, mode)?;
    }
    let packages: Vec<String> = debs
        .iter()
        .map(|d| format!("#   {} {}", d.name, d.version))
        .collect();
    write_file(
        &root.join("etc/bramble-release"),
        format!(
            "VERSION={}\nKERNEL={release}\nBUILT={epoch}\n# Built from Debian {} packages:\n{}\n",
            options.version,
            debian::SUITE,
            packages.join("\n")
        ),
        0o644,
    )?;
    set_times(root, epoch)
}

/// busybox udhcpc's hook: applies a lease to the interface, the default route and DNS.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Called by busybox udhcpc (started by bramble's init) with deconfig, bound, renew or nak.
case "$1" in
  deconfig)
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr replace "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      for gateway in $router; do
        ip route replace default via "$gateway" dev "$interface"
        break
      done
    fi
    {
      [ -n "$domain" ] && echo "search $domain"
      for server in $dns; do echo "nameserver $server"; done
    } > /etc/resolv.conf.new && mv /etc/resolv.conf.new /etc/resolv.conf
    echo "bramble: $interface has $ip/${mask:-24} (DHCP)" > /dev/kmsg
    ;;
esac
exit 0
"#;

/// The initramfs's `/init`: load the storage drivers, find the root partition by the card's
/// disk identifier, mount it and hand over to `bramble boot`.
fn initramfs_init(partuuid: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() {{ echo "bramble: $*" > /dev/kmsg; }}

want={partuuid}
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=PARTUUID=*) want="${{arg#root=PARTUUID=}}" ;; esac
done
disk_id="${{want%-*}}"
part="${{want##*-}}"
part="${{part#0}}"

# Load the drivers for the devices the kernel found (SD card, USB, virtio), by alias.
coldplug() {{
  for alias in $(cat $(find /sys/devices -name modalias 2>/dev/null) 2>/dev/null | sort -u); do
    modprobe -qb "$alias" 2>/dev/null
  done
  # ext4 asks the crypto API for crc32c, which no module dependency names.
  modprobe -qa crc32c_generic ext4
}}

find_root() {{
  for disk in /sys/block/*; do
    name="${{disk##*/}}"
    case "$name" in loop*|ram*|zram*) continue ;; esac
    [ -b "/dev/$name" ] || continue
    id=$(dd if="/dev/$name" bs=1 skip=440 count=4 2>/dev/null | od -An -tx4 | tr -d ' \n')
    if [ "$id" = "$disk_id" ]; then
      case "$name" in *[0-9]) echo "/dev/${{name}}p$part" ;; *) echo "/dev/$name$part" ;; esac
      return 0
    fi
  done
  return 1
}}

say "looking for the root partition PARTUUID=$want"
tries=0
while :; do
  coldplug
  root=$(find_root) && [ -b "$root" ] && break
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    say "cannot find the root partition PARTUUID=$want: is this the card bramble was flashed to?"
    say "dropping to a shell on the console"
    exec sh
  fi
  sleep 0.5
done
if ! mount -t ext4 -o rw,noatime "$root" /newroot; then
  say "cannot mount $root; dropping to a shell"
  exec sh
fi
say "root is $root"
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /usr/bin/bramble boot
"#
    )
}

fn stage_initramfs(
    dir: &Path,
    busybox: &Path,
    modules: &Path,
    release: &str,
    partuuid: &str,
) -> Result<(), BuildError> {
    copy_file(&busybox.join("bin/busybox"), &dir.join("bin/busybox"))?;
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(BuildError::io(dir))?;
    write_file(&dir.join("init"), initramfs_init(partuuid), 0o755)?;
    install_modules(modules, dir, release, &INITRAMFS_MODULES)?;
    Ok(())
}

/// `config.txt`: what the Pi's firmware reads (QEMU never does; the image test checks it).
pub fn config_txt(release: &str) -> String {
    format!(
        "# Raspberry Pi firmware settings for bramble (Pi 3, 3B+, 3A+, 4, 400, Zero 2 W, CM3, CM4).\n\
         # See https://www.raspberrypi.com/documentation/computers/config_txt.html\n\
         # The cluster's settings are in bramble.toml, not here.\n\
         arm_64bit=1\n\
         # Device trees and names as the mainline (Debian) kernel has them.\n\
         upstream_kernel=1\n\
         kernel=vmlinuz-{release}\n\
         initramfs initrd.img-{release} followkernel\n\
         # A serial console on GPIO 14/15, at 115200 baud.\n\
         enable_uart=1\n\
         # No desktop: give the GPU as little memory as it takes.\n\
         gpu_mem=16\n\
         disable_splash=1\n"
    )
}

/// `cmdline.txt`: the kernel's command line.
pub fn cmdline_txt(partuuid: &str) -> String {
    format!(
        "console=ttyS1,115200 console=tty0 root=PARTUUID={partuuid} rootfstype=ext4 rootwait net.ifnames=0 cma=64M\n"
    )
}

/// What a Pi owner sees first when they open the card on their computer.
const BOOT_README: &str = "bramble: a Raspberry Pi cluster appliance\r\n\
\r\n\
Edit bramble.toml (any text editor) to say whether this Pi is the master or an agent,\r\n\
the cluster's join token, and its network. Then put the card in the Pi and power it up.\r\n\
\r\n\
The other files here are the Pi's firmware and Linux kernel: leave them as they are.\r\n";

fn stage_boot(
    boot: &Path,
    firmware: &Path,
    kernel: &Path,
    release: &str,
    initrd: &[u8],
    partuuid: &str,
) -> Result<(), BuildError> {
    for file in FIRMWARE {
        copy_file(
            &firmware.join("usr/lib/raspi-firmware").join(file),
            &boot.join(file),
        )?;
    }
    copy_file(
        &kernel.join(format!("boot/vmlinuz-{release}")),
        &boot.join(format!("vmlinuz-{release}")),
    )?;
    let dtbs = kernel.join(format!("usr/lib/linux-image-{release}/broadcom"));
    for entry in std::fs::read_dir(&dtbs).map_err(BuildError::io(&dtbs))? {
        let path = entry.map_err(BuildError::io(&dtbs))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("bcm27") || name.starts_with("bcm2837") {
            copy_file(&path, &boot.join(&*name))?;
        }
    }
    write_file(&boot.join(format!("initrd.img-{release}")), initrd, 0o644)?;
    write_file(&boot.join("config.txt"), config_txt(release), 0o644)?;
    write_file(&boot.join("cmdline.txt"), cmdline_txt(partuuid), 0o644)?;
    write_file(
        &boot.join(CONFIG_FILE),
        include_str!("../examples/bramble.toml"),
        0o644,
    )?;
    write_file(&boot.join("README.txt"), BOOT_README, 0o644)?;
    Ok(())
}

fn make_ext4(
    dir: &Path,
    image: &Path,
    size: u64,
    uuid: &str,
    epoch: u64,
) -> Result<(), BuildError> {
    make_ext4_as(dir, image, size, uuid, epoch, is_root())
}

/// [`make_ext4`], owning the files as root (`run_as_root`) or through fakeroot.
fn make_ext4_as(
    dir: &Path,
    image: &Path,
    size: u64,
    uuid: &str,
    epoch: u64,
    run_as_root: bool,
) -> Result<(), BuildError> {
    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image).map_err(BuildError::io(image))?;
    file.set_len(size).map_err(BuildError::io(image))?;
    drop(file);
    let inodes = crate::tree::entries(dir)
        .map_err(BuildError::io(dir))?
        .len()
        + 8192;
    // Everything in the image belongs to root. Without root, fakeroot makes it so: its
    // made-up owners are kept in a session file from the chown to mkfs.ext4's reading. The
    // fakeroot script evals that file's path, so it lives in a directory of our own naming.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let session_dir =
        std::env::temp_dir().join(format!("bramble-fakeroot-{}-{nanos}", std::process::id()));
    if !run_as_root {
        std::fs::create_dir(&session_dir).map_err(BuildError::io(&session_dir))?;
    }
    let session = session_dir.join("session");
    let as_root = |program: &str, session_flag: &str| {
        if run_as_root {
            Command::new(program)
        } else {
            let mut command = Command::new("fakeroot");
            command
                .arg(session_flag)
                .arg(&session)
                .arg("--")
                .arg(program);
            command
        }
    };
    let mut chown = as_root("chown", "-s");
    chown.args(["-R", "-h", "0:0"]).arg(dir);
    let mut mkfs = as_root("mkfs.ext4", "-i");
    mkfs.args(["-q", "-F", "-b", "4096", "-I", "256", "-N"])
        .arg(inodes.to_string())
        .args(["-m", "1", "-L", "bramble-root", "-U", uuid, "-E"])
        .arg(format!(
            "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0"
        ))
        .arg("-d")
        .arg(dir)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    let made = output(&mut chown).and_then(|_| output(&mut mkfs));
    let _ = std::fs::remove_dir_all(&session_dir);
    made?;
    // mke2fs copies each file's change time from the host, which no one can set, and the access
    // time, which reading the file for mke2fs moved: stamp both.
    let mut paths = vec!["/".to_owned(), "/lost+found".to_owned()];
    paths.extend(
        crate::tree::entries(dir)
            .map_err(BuildError::io(dir))?
            .into_iter()
            .map(|relative| format!("/{relative}")),
    );
    let script: String = paths
        .iter()
        .flat_map(|path| {
            ["ctime", "atime"].map(|field| format!("set_inode_field \"{path}\" {field} @{epoch}\n"))
        })
        .collect();
    let script_file = image.with_extension("debugfs");
    std::fs::write(&script_file, script).map_err(BuildError::io(&script_file))?;
    output(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_file)
            .arg(image)
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
    )?;
    Ok(())
}

fn make_fat(dir: &Path, image: &Path, size: u64, serial: u32) -> Result<(), BuildError> {
    let _ = std::fs::remove_file(image);
    output(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "BRAMBLEBOOT", "--invariant", "-i"])
            .arg(format!("{serial:08x}"))
            .arg("-C")
            .arg(image)
            .arg((size / 1024).to_string()),
    )?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(BuildError::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(BuildError::io(dir))?;
    files.sort();
    output(
        Command::new("mcopy")
            .env("TZ", "UTC")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .args(["-m", "-Q", "-s"])
            .args(&files)
            .arg("::/"),
    )?;
    Ok(())
}

fn assemble(path: &Path, mbr: &Mbr, boot: &Path, root: &Path) -> Result<u64, BuildError> {
    let partial = path.with_extension("img.partial");
    let mut out = std::fs::File::create(&partial).map_err(BuildError::io(&partial))?;
    out.write_all(&mbr.to_bytes())
        .map_err(BuildError::io(&partial))?;
    let mut end = 0;
    for (partition, source) in mbr.partitions.iter().flatten().zip([boot, root]) {
        use std::io::Seek;
        out.seek(std::io::SeekFrom::Start(partition.offset()))
            .map_err(BuildError::io(&partial))?;
        let mut input = std::fs::File::open(source).map_err(BuildError::io(source))?;
        let copied = std::io::copy(&mut input, &mut out).map_err(BuildError::io(source))?;
        if copied > partition.len() {
            return Err(BuildError::Binary(format!(
                "{} is larger than its partition",
                source.display()
            )));
        }
        end = end.max(partition.offset() + partition.len());
    }
    out.set_len(end).map_err(BuildError::io(&partial))?;
    out.sync_all().map_err(BuildError::io(&partial))?;
    std::fs::rename(&partial, path).map_err(BuildError::io(path))?;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner of `path` inside an ext4 image, as debugfs reads it.
    fn owner_in_image(image: &Path, path: &str) -> String {
        let text = output(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {path}"))
                .arg(image),
        )
        .unwrap();
        let user = text.split("User:").nth(1).unwrap_or_default();
        user.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn ext4_images_take_paths_with_quotes_and_spaces() {
        // Once a shell script: a quote in the output path broke it (or ran what followed).
        let work = tempfile::tempdir().unwrap();
        for run_as_root in [true, false] {
            if run_as_root && !is_root() {
                continue;
            }
            let dir = work.path().join(format!("it's a tree {run_as_root}"));
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            std::fs::write(dir.join("etc/hostname"), "pi\n").unwrap();
            if is_root() {
                // Someone else's file on the host; root's in the image.
                std::os::unix::fs::lchown(dir.join("etc/hostname"), Some(1000), Some(1000))
                    .unwrap();
            }
            let image = work
                .path()
                .join(format!("o'ut $(touch x) {run_as_root}.img"));
            make_ext4_as(
                &dir,
                &image,
                16 << 20,
                "2b1e7a9c-4f1d-4c1b-9b59-0f0a1c2d3e4f",
                1_700_000_000,
                run_as_root,
            )
            .unwrap();
            assert_eq!(
                owner_in_image(&image, "/etc/hostname"),
                "0",
                "root: {run_as_root}"
            );
            assert!(!work.path().join("x").exists());
        }
    }
}
