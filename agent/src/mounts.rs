//! The mount table, read once for everyone who needs it (`bramble down`, the card's first boot,
//! `bramble image flash`): procfs parses `/proc/self/mountinfo`; mount points come back
//! unescaped (the kernel writes space, tab, newline and backslash as `\ooo`, which procfs
//! leaves as it found them).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub use procfs::process::MountInfo;

/// This process's mount table.
pub fn table() -> std::io::Result<Vec<MountInfo>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    parse(&text)
}

/// A mount table in mountinfo's format; an error names the line that does not parse.
pub fn parse(text: &[u8]) -> std::io::Result<Vec<MountInfo>> {
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line = String::from_utf8_lossy(line);
            let mut mount = MountInfo::from_line(&line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("mountinfo line {line:?}: {e}"),
                )
            })?;
            mount.mount_point = unescape(mount.mount_point.as_os_str().as_bytes());
            Ok(mount)
        })
        .collect()
}

/// A mount point as mountinfo writes it (`/a\040b`), as the path it is (`/a b`).
pub fn unescape(raw: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let octal = raw
            .get(i + 1..i + 4)
            .filter(|d| raw[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Detaches every mount at or below `dir`, deepest first; how many went. An unreadable table
/// unmounts nothing.
pub fn unmount_under(dir: &Path) -> usize {
    let Ok(table) = table() else {
        return 0;
    };
    let mut points: Vec<PathBuf> = table
        .into_iter()
        .map(|mount| mount.mount_point)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
        .iter()
        .filter(|point| nix::mount::umount2(*point, nix::mount::MntFlags::MNT_DETACH).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_unescape_octal() {
        assert_eq!(unescape(b"/a\\040b\\011c\\134d"), Path::new("/a b\tc\\d"));
        assert_eq!(unescape(b"/plain\\9"), Path::new("/plain\\9"));
        assert_eq!(unescape(b"/end\\04"), Path::new("/end\\04"));
    }

    #[test]
    fn a_table_parses_with_its_points_unescaped() {
        let text = b"36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n";
        let table = parse(text).unwrap();
        assert_eq!(table[0].mount_point, Path::new("/mnt two"));
        assert_eq!(table[0].majmin, "98:0");
        assert!(parse(b"garbage\n").is_err());
    }

    #[test]
    fn this_machine_has_a_root() {
        assert!(table()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == Path::new("/")));
    }
}
