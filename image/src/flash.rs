//! `bramble image flash`: writes the image to a card, refusing any disk that has a partition
//! in use (mounted, or swap), above all the one the running system lives on.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
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

/// The mounted (or swap) partitions of `disk`, as (partition, where).
pub fn in_use(disk: &Disk) -> Vec<(String, String)> {
    let mut names = vec![disk.name.clone()];
    if let Ok(entries) = std::fs::read_dir(format!("/sys/class/block/{}", disk.name)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().join("partition").exists() {
                names.push(name);
            }
        }
    }
    let numbers: Vec<(String, String)> = names
        .iter()
        .filter_map(|name| {
            let dev = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).ok()?;
            Some((name.clone(), dev.trim().to_owned()))
        })
        .collect();
    let mut used = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if let Some((name, _)) = numbers.iter().find(|(_, number)| number == dev) {
            used.push((format!("/dev/{name}"), point.replace("\\040", " ")));
        }
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(device) = line.split_whitespace().next() {
            let base = device.trim_start_matches("/dev/");
            if names.iter().any(|n| n == base) {
                used.push((device.to_owned(), "swap".to_owned()));
            }
        }
    }
    used
}

/// Refuses a disk with a partition in use.
pub fn check_unused(disk: &Disk) -> Result<(), FlashError> {
    let used = in_use(disk);
    let Some((partition, mount_point)) = used
        .iter()
        .find(|(_, point)| is_system(point))
        .or_else(|| used.first())
        .cloned()
    else {
        return Ok(());
    };
    let hint = if is_system(&mount_point) {
        " — that is this computer's own system disk, not a card".to_owned()
    } else if mount_point == "swap" {
        format!(": turn it off first (swapoff {partition})")
    } else {
        format!(": if it is the card, unmount it first (umount {mount_point})")
    };
    Err(FlashError::InUse {
        device: disk.path.display().to_string(),
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
