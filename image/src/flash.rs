//! `bramble image flash`: writes the image to a card, refusing any disk that has a partition
//! in use (mounted, swap, or held by device-mapper or RAID: LVM, LUKS, md), above all the one
//! the running system lives on. When the kernel's tables cannot be read, it refuses too: the
//! check fails closed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::mounts::MountInfo;
use sha2::Digest;

/// Why a card was not written.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// Not a disk.
    #[error("{0} is not a block device (a card reader shows up as /dev/sdX or /dev/mmcblkN)")]
    NotADisk(String),
    /// One of its partitions is in use.
    #[error("refusing to write to {device}: {partition} is mounted on {mount_point}{hint}")]
    InUse {
        /// The disk.
        device: String,
        /// The partition in use.
        partition: String,
        /// Where.
        mount_point: String,
        /// What to do.
        hint: String,
    },
    /// A partition (or the disk) carries another block device: LVM, LUKS or RAID.
    #[error("refusing to write to {device}: {partition} is in use by {holder} (LVM, LUKS or RAID): close it first (vgchange -an, cryptsetup close or mdadm --stop)")]
    Held {
        /// The disk.
        device: String,
        /// The partition that is held.
        partition: String,
        /// The device built on it (`/dev/dm-0`, `/dev/md0`).
        holder: String,
    },
    /// Whether the disk is in use could not be found out.
    #[error("refusing to write to {device}: cannot tell whether it is in use (reading {what})")]
    Unchecked {
        /// The disk.
        device: String,
        /// What could not be read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The card is smaller than the image.
    #[error("{device} holds {device_mib} MiB, the image needs {image_mib} MiB")]
    TooSmall {
        /// The disk.
        device: String,
        /// Its size.
        device_mib: u64,
        /// The image's size.
        image_mib: u64,
    },
    /// The image does not match its .sha256.
    #[error("{0} does not match its .sha256 file: download or build it again")]
    Corrupt(String),
    /// What was read back differs from the image.
    #[error("the card does not read back what was written (a failing card or reader?)")]
    Verify,
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A disk's kernel name (`sdb`), its partitions' names and its size in bytes.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The device path.
    pub path: PathBuf,
    /// `sdb`, `mmcblk0`, `loop3`.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Vendor and model, when the kernel knows them.
    pub model: String,
}

/// Looks `device` up: it must be a whole block device.
pub fn disk(device: &Path) -> Result<Disk, FlashError> {
    let meta = std::fs::metadata(device).map_err(io(device))?;
    if !meta.file_type().is_block_device() {
        return Err(FlashError::NotADisk(device.display().to_string()));
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .map_err(io(Path::new("/sys/dev/block")))?;
    let name = sys
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if sys.join("partition").exists() {
        let parent = sys
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(FlashError::NotADisk(format!(
            "{} (a partition; give the whole disk, /dev/{parent})",
            device.display()
        )));
    }
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let read = |file: &str| {
        std::fs::read_to_string(sys.join("device").join(file))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let model = format!("{} {}", read("vendor"), read("model"))
        .trim()
        .to_owned();
    Ok(Disk {
        path: device.to_owned(),
        name,
        size: sectors * 512,
        model,
    })
}

/// What the kernel says about block devices and their users: [`Kernel`] reads `/sys` and
/// `/proc`; tests use a fake.
pub trait BlockDevices {
    /// The partitions of `disk`, by kernel name (`sdb1`).
    fn partitions(&self, disk: &str) -> std::io::Result<Vec<String>>;
    /// A device's `major:minor`.
    fn number(&self, name: &str) -> std::io::Result<String>;
    /// The devices built on this one (`dm-0` for LVM or LUKS, `md0` for RAID).
    fn holders(&self, name: &str) -> std::io::Result<Vec<String>>;
    /// The mount table.
    fn mounts(&self) -> std::io::Result<Vec<MountInfo>>;
    /// The text of `/proc/swaps`.
    fn swaps(&self) -> std::io::Result<String>;
}

/// The running kernel, through `/sys/class/block` and `/proc`.
pub struct Kernel;

fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

impl BlockDevices for Kernel {
    fn partitions(&self, disk: &str) -> std::io::Result<Vec<String>> {
        let dir = Path::new("/sys/class/block").join(disk);
        Ok(names_in(&dir)?
            .into_iter()
            .filter(|name| dir.join(name).join("partition").exists())
            .collect())
    }

    fn number(&self, name: &str) -> std::io::Result<String> {
        std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).map(|n| n.trim().to_owned())
    }

    fn holders(&self, name: &str) -> std::io::Result<Vec<String>> {
        names_in(&Path::new("/sys/class/block").join(name).join("holders"))
    }

    fn mounts(&self) -> std::io::Result<Vec<MountInfo>> {
        agent::mounts::table()
    }

    fn swaps(&self) -> std::io::Result<String> {
        std::fs::read_to_string("/proc/swaps")
    }
}

/// How a partition of the disk is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// Mounted here.
    Mounted(String),
    /// Swap.
    Swap,
    /// Carries another block device that is itself unused (a closed-but-open LUKS mapping,
    /// an inactive LVM volume group's device, a RAID member).
    Held,
}

/// One partition (or the whole disk) in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// `/dev/sdb1`.
    pub partition: String,
    /// The device built on it that is actually used (`/dev/dm-0`), when there is one.
    pub through: Option<String>,
    /// How.
    pub usage: Usage,
}

/// How the disk and its partitions are in use, following holders (LUKS on a partition, LVM
/// on LUKS) up to what is mounted. An error when a table cannot be read: never "unused" on
/// a guess.
pub fn in_use(disk: &Disk, kernel: &dyn BlockDevices) -> Result<Vec<InUse>, FlashError> {
    let unchecked = |what: String| {
        let device = disk.path.display().to_string();
        move |source| FlashError::Unchecked {
            device,
            what,
            source,
        }
    };
    let mut names = vec![disk.name.clone()];
    names.extend(
        kernel
            .partitions(&disk.name)
            .map_err(unchecked(format!("/sys/class/block/{}", disk.name)))?,
    );
    let mounts = kernel
        .mounts()
        .map_err(unchecked("/proc/self/mountinfo".to_owned()))?;
    let swaps = kernel
        .swaps()
        .map_err(unchecked("/proc/swaps".to_owned()))?;
    let swapped: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(|device| device.trim_start_matches("/dev/"))
        .collect();
    let mut used = Vec::new();
    for name in &names {
        let partition = format!("/dev/{name}");
        let found = used.len();
        let mut first_holder = None;
        // The partition, then what is built on it, and so on (a small graph; stop on loops).
        let mut pending = vec![name.clone()];
        let mut seen: Vec<String> = Vec::new();
        while let Some(device) = pending.pop() {
            if seen.contains(&device) || seen.len() >= 64 {
                continue;
            }
            let through = (&device != name).then(|| format!("/dev/{device}"));
            let number = kernel
                .number(&device)
                .map_err(unchecked(format!("/sys/class/block/{device}/dev")))?;
            for mount in mounts.iter().filter(|m| m.majmin == number) {
                used.push(InUse {
                    partition: partition.clone(),
                    through: through.clone(),
                    usage: Usage::Mounted(mount.mount_point.to_string_lossy().into_owned()),
                });
            }
            if swapped.contains(&device.as_str()) {
                used.push(InUse {
                    partition: partition.clone(),
                    through: through.clone(),
                    usage: Usage::Swap,
                });
            }
            let holders = kernel
                .holders(&device)
                .map_err(unchecked(format!("/sys/class/block/{device}/holders")))?;
            if first_holder.is_none() {
                first_holder = holders.first().map(|h| format!("/dev/{h}"));
            }
            pending.extend(holders);
            seen.push(device);
        }
        if used.len() == found {
            if let Some(holder) = first_holder {
                used.push(InUse {
                    partition,
                    through: Some(holder),
                    usage: Usage::Held,
                });
            }
        }
    }
    Ok(used)
}

/// Refuses a disk with a partition in use, or one whose use cannot be checked.
pub fn check_unused(disk: &Disk) -> Result<(), FlashError> {
    check_unused_on(disk, &Kernel)
}

/// [`check_unused`] on what `kernel` says.
pub fn check_unused_on(disk: &Disk, kernel: &dyn BlockDevices) -> Result<(), FlashError> {
    let used = in_use(disk, kernel)?;
    let mounted_on = |usage: &InUse| match &usage.usage {
        Usage::Mounted(point) => Some(point.clone()),
        _ => None,
    };
    let Some(found) = used
        .iter()
        .find(|u| mounted_on(u).is_some_and(|p| is_system(&p)))
        .or_else(|| used.first())
        .cloned()
    else {
        return Ok(());
    };
    let device = disk.path.display().to_string();
    let partition = match &found.through {
        Some(through) if found.usage != Usage::Held => {
            format!("{} (through {through})", found.partition)
        }
        _ => found.partition.clone(),
    };
    let (mount_point, hint) = match &found.usage {
        Usage::Held => {
            return Err(FlashError::Held {
                device,
                partition,
                holder: found.through.unwrap_or_default(),
            })
        }
        Usage::Swap => {
            let swap = found.through.as_ref().unwrap_or(&found.partition);
            (
                "swap".to_owned(),
                format!(": turn it off first (swapoff {swap})"),
            )
        }
        Usage::Mounted(point) if is_system(point) => (
            point.clone(),
            " — that is this computer's own system disk, not a card".to_owned(),
        ),
        Usage::Mounted(point) => (
            point.clone(),
            format!(": if it is the card, unmount it first (umount {point})"),
        ),
    };
    Err(FlashError::InUse {
        device,
        partition,
        mount_point,
        hint,
    })
}

fn is_system(mount_point: &str) -> bool {
    ["/", "/boot", "/boot/efi", "/usr", "/var", "/home"].contains(&mount_point)
}

/// Checks `image` against `IMAGE.sha256` when that file exists.
pub fn check_checksum(image: &Path) -> Result<bool, FlashError> {
    let sum_file = PathBuf::from(format!("{}.sha256", image.display()));
    let Ok(text) = std::fs::read_to_string(&sum_file) else {
        return Ok(false);
    };
    let expected = text.split_whitespace().next().unwrap_or_default();
    let mut file = std::fs::File::open(image).map_err(io(image))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(image))?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(FlashError::Corrupt(image.display().to_string()));
    }
    Ok(true)
}

/// Writes `image` to `disk`, calling `progress(done, total)` as it goes, then reads it back
/// to compare. The caller has checked the disk is unused.
pub fn write(
    image: &Path,
    disk: &Disk,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), FlashError> {
    let total = std::fs::metadata(image).map_err(io(image))?.len();
    if disk.size < total {
        return Err(FlashError::TooSmall {
            device: disk.path.display().to_string(),
            device_mib: disk.size >> 20,
            image_mib: total.div_ceil(1 << 20),
        });
    }
    let mut input = std::fs::File::open(image).map_err(io(image))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&disk.path)
        .map_err(io(&disk.path))?;
    let mut buffer = vec![0u8; 4 << 20];
    let mut done = 0;
    let mut written_hash = sha2::Sha256::new();
    progress(0, total);
    loop {
        let n = read_full(&mut input, &mut buffer).map_err(io(image))?;
        if n == 0 {
            break;
        }
        output.write_all(&buffer[..n]).map_err(io(&disk.path))?;
        written_hash.update(&buffer[..n]);
        done += n as u64;
        // Flush as we go, so the bar shows the card's pace rather than the page cache's.
        if done % (64 << 20) == 0 {
            output.sync_data().map_err(io(&disk.path))?;
        }
        progress(done, total);
    }
    output.sync_all().map_err(io(&disk.path))?;
    // Read back what was written.
    output.seek(SeekFrom::Start(0)).map_err(io(&disk.path))?;
    let mut read_hash = sha2::Sha256::new();
    let mut left = total;
    while left > 0 {
        let want = left.min(buffer.len() as u64) as usize;
        output
            .read_exact(&mut buffer[..want])
            .map_err(io(&disk.path))?;
        read_hash.update(&buffer[..want]);
        left -= want as u64;
    }
    if read_hash.finalize() != written_hash.finalize() {
        return Err(FlashError::Verify);
    }
    // Have the kernel read the new partition table (BLKRRPART); harmless when it cannot.
    use std::os::fd::AsRawFd;
    // SAFETY: BLKRRPART takes no argument.
    unsafe { libc::ioctl(output.as_raw_fd(), BLKRRPART) };
    Ok(())
}

const BLKRRPART: libc::Ioctl = 0x125f;

fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A progress line: `[#########...........]  45%  115/256 MiB  21.3 MiB/s`.
pub fn progress_line(done: u64, total: u64, started: Instant) -> String {
    let width = 30;
    let filled = (done * width as u64)
        .checked_div(total)
        .map_or(width, |filled| filled.min(width as u64) as usize);
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    format!(
        "[{}{}] {:3}%  {}/{} MiB  {:.1} MiB/s",
        "#".repeat(filled),
        ".".repeat(width - filled),
        (done * 100).checked_div(total).unwrap_or(100),
        done >> 20,
        total >> 20,
        done as f64 / (1 << 20) as f64 / seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Block devices in memory: name → (number, partitions, holders).
    #[derive(Default)]
    struct FakeKernel {
        devices: HashMap<String, (String, Vec<String>, Vec<String>)>,
        mountinfo: Option<String>,
        swaps: Option<String>,
    }

    fn missing(what: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, what.to_owned())
    }

    impl FakeKernel {
        /// `sdb` with `sdb1` (8:17) and `sdb2` (8:18); nothing mounted, no swap.
        fn card() -> FakeKernel {
            let mut kernel = FakeKernel {
                mountinfo: Some(
                    "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                     26 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw\n"
                        .to_owned(),
                ),
                swaps: Some("Filename\tType\tSize\tUsed\tPriority\n".to_owned()),
                ..FakeKernel::default()
            };
            kernel.add("sdb", "8:16", &["sdb1", "sdb2"], &[]);
            kernel.add("sdb1", "8:17", &[], &[]);
            kernel.add("sdb2", "8:18", &[], &[]);
            kernel
        }

        fn add(&mut self, name: &str, number: &str, partitions: &[&str], holders: &[&str]) {
            let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
            self.devices.insert(
                name.to_owned(),
                (number.to_owned(), owned(partitions), owned(holders)),
            );
        }

        fn mount(&mut self, number: &str, point: &str) {
            let table = self.mountinfo.get_or_insert_with(String::new);
            table.push_str(&format!(
                "40 26 {number} / {point} rw,relatime shared:1 - ext4 /dev/x rw\n"
            ));
        }

        fn device(&self, name: &str) -> std::io::Result<&(String, Vec<String>, Vec<String>)> {
            self.devices.get(name).ok_or_else(|| missing(name))
        }
    }

    impl BlockDevices for FakeKernel {
        fn partitions(&self, disk: &str) -> std::io::Result<Vec<String>> {
            Ok(self.device(disk)?.1.clone())
        }
        fn number(&self, name: &str) -> std::io::Result<String> {
            Ok(self.device(name)?.0.clone())
        }
        fn holders(&self, name: &str) -> std::io::Result<Vec<String>> {
            Ok(self.device(name)?.2.clone())
        }
        fn mounts(&self) -> std::io::Result<Vec<MountInfo>> {
            let text = self
                .mountinfo
                .as_ref()
                .ok_or_else(|| missing("mountinfo"))?;
            agent::mounts::parse(text.as_bytes())
        }
        fn swaps(&self) -> std::io::Result<String> {
            self.swaps.clone().ok_or_else(|| missing("swaps"))
        }
    }

    fn sdb() -> Disk {
        Disk {
            path: PathBuf::from("/dev/sdb"),
            name: "sdb".to_owned(),
            size: 32 << 30,
            model: String::new(),
        }
    }

    #[test]
    fn an_unused_card_may_be_written() {
        check_unused_on(&sdb(), &FakeKernel::card()).unwrap();
    }

    #[test]
    fn a_mounted_partition_is_named_with_its_unescaped_mount_point() {
        let mut kernel = FakeKernel::card();
        kernel.mount("8:17", "/media/my\\040card");
        let error = check_unused_on(&sdb(), &kernel).unwrap_err().to_string();
        assert_eq!(
            error,
            "refusing to write to /dev/sdb: /dev/sdb1 is mounted on /media/my card: if it is the card, unmount it first (umount /media/my card)"
        );
    }

    #[test]
    fn an_unreadable_mount_table_fails_closed() {
        let kernel = FakeKernel {
            mountinfo: None,
            ..FakeKernel::card()
        };
        let error = check_unused_on(&sdb(), &kernel).unwrap_err();
        assert!(matches!(error, FlashError::Unchecked { .. }), "{error}");
        assert!(error.to_string().contains("/proc/self/mountinfo"));
        // A table that does not parse is no better than none.
        let kernel = FakeKernel {
            mountinfo: Some("garbage\n".to_owned()),
            ..FakeKernel::card()
        };
        assert!(matches!(
            check_unused_on(&sdb(), &kernel),
            Err(FlashError::Unchecked { .. })
        ));
        let kernel = FakeKernel {
            swaps: None,
            ..FakeKernel::card()
        };
        assert!(matches!(
            check_unused_on(&sdb(), &kernel),
            Err(FlashError::Unchecked { .. })
        ));
    }

    #[test]
    fn an_unreadable_partition_fails_closed() {
        let mut kernel = FakeKernel::card();
        kernel.devices.remove("sdb2");
        assert!(matches!(
            check_unused_on(&sdb(), &kernel),
            Err(FlashError::Unchecked { .. })
        ));
    }

    #[test]
    fn lvm_on_luks_on_a_partition_is_followed_to_the_system_mount() {
        // sda2 → dm-0 (LUKS) → dm-1 (LVM) mounted on /.
        let mut kernel = FakeKernel::card();
        kernel.add("sda", "8:0", &["sda1", "sda2"], &[]);
        kernel.add("sda1", "8:1", &[], &[]);
        kernel.add("sda2", "8:2", &[], &["dm-0"]);
        kernel.add("dm-0", "254:0", &[], &["dm-1"]);
        kernel.add("dm-1", "254:1", &[], &[]);
        kernel.mountinfo =
            Some("26 1 254:1 / / rw,relatime - ext4 /dev/mapper/vg-root rw\n".into());
        let sda = Disk {
            path: PathBuf::from("/dev/sda"),
            name: "sda".to_owned(),
            ..sdb()
        };
        let error = check_unused_on(&sda, &kernel).unwrap_err().to_string();
        assert_eq!(
            error,
            "refusing to write to /dev/sda: /dev/sda2 (through /dev/dm-1) is mounted on / — that is this computer's own system disk, not a card"
        );
    }

    #[test]
    fn a_held_partition_or_disk_is_refused_even_when_nothing_is_mounted() {
        let mut kernel = FakeKernel::card();
        kernel.add("sdb2", "8:18", &[], &["dm-3"]);
        kernel.add("dm-3", "254:3", &[], &[]);
        let error = check_unused_on(&sdb(), &kernel).unwrap_err().to_string();
        assert!(
            error.starts_with("refusing to write to /dev/sdb: /dev/sdb2 is in use by /dev/dm-3 (LVM, LUKS or RAID)"),
            "{error}"
        );
        // A whole disk that is a RAID member, without partitions.
        let mut kernel = FakeKernel::card();
        kernel.add("sdb", "8:16", &[], &["md0"]);
        kernel.add("md0", "9:0", &[], &[]);
        let error = check_unused_on(&sdb(), &kernel).unwrap_err();
        assert!(matches!(error, FlashError::Held { ref holder, .. } if holder == "/dev/md0"));
    }

    #[test]
    fn swap_on_a_partition_or_a_holder_is_refused() {
        let mut kernel = FakeKernel::card();
        kernel.swaps =
            Some("Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1048572 0 -2\n".into());
        let error = check_unused_on(&sdb(), &kernel).unwrap_err().to_string();
        assert!(
            error.ends_with("turn it off first (swapoff /dev/sdb2)"),
            "{error}"
        );
        let mut kernel = FakeKernel::card();
        kernel.add("sdb2", "8:18", &[], &["dm-2"]);
        kernel.add("dm-2", "254:2", &[], &[]);
        kernel.swaps =
            Some("Filename\tType\tSize\tUsed\tPriority\n/dev/dm-2 partition 1048572 0 -2\n".into());
        let error = check_unused_on(&sdb(), &kernel).unwrap_err().to_string();
        assert!(error.ends_with("(swapoff /dev/dm-2)"), "{error}");
    }

    #[test]
    fn the_real_kernel_tables_can_be_read() {
        // Whatever this machine has: reading must work, so that the check does not fail here.
        let mounts = Kernel.mounts().unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
        Kernel.swaps().unwrap();
    }
}
