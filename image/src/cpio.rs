//! A gzip'd cpio "newc" archive: the initramfs format. Written here rather than with the host's
//! `cpio` so the result is the same on every machine: entries in path order, owner root,
//! one fixed time.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Archives the tree at `root` into gzip'd newc bytes, every entry stamped `mtime`.
pub fn archive(root: &Path, mtime: u32) -> std::io::Result<Vec<u8>> {
    let paths = crate::tree::entries(root)?;
    let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for (index, relative) in paths.iter().enumerate() {
        let path = root.join(relative);
        let meta = std::fs::symlink_metadata(&path)?;
        let data = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)?
                .as_os_str()
                .as_encoded_bytes()
                .to_vec()
        } else if meta.is_file() {
            std::fs::read(&path)?
        } else {
            Vec::new()
        };
        let mode = meta.mode() & 0o170000 | meta.permissions().mode() & 0o7777;
        let nlink = if meta.is_dir() { 2 } else { 1 };
        entry(
            &mut out,
            relative,
            index as u32 + 1,
            mode,
            nlink,
            mtime,
            &data,
        )?;
    }
    entry(&mut out, "TRAILER!!!", 0, 0, 1, 0, &[])?;
    out.finish()
}

fn entry(
    out: &mut impl Write,
    name: &str,
    inode: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let name_len = name.len() + 1;
    let header = format!(
        "070701{inode:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(110 + name_len)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn entries_are_newc_and_the_archive_is_repeatable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("init"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("busybox", dir.path().join("bin/sh")).unwrap();
        let first = archive(dir.path(), 1_700_000_000).unwrap();
        assert_eq!(first, archive(dir.path(), 1_700_000_000).unwrap());
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&first[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text.len() % 4, 0);
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("070701"));
        let names: Vec<&str> = ["bin\0", "bin/sh\0\0\0\0busybox", "init\0", "TRAILER!!!\0"]
            .into_iter()
            .filter(|n| !text.contains(n))
            .collect();
        assert!(names.is_empty(), "missing {names:?}");
        assert!(text.find("bin\0").unwrap() < text.find("init\0").unwrap());
    }
}
