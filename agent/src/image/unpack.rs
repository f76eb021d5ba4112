//! Unpacks one image layer (tar, gzip or zstd) into its own directory, in overlayfs's format.
//!
//! OCI whiteouts become what overlayfs understands: `.wh.NAME` turns into a 0/0 character
//! device named NAME and `.wh..wh..opq` into the `trusted.overlay.opaque` attribute on its
//! directory. No entry may land outside the layer directory: absolute names and `..` are
//! refused, and nothing is written through a symlink a previous entry planted.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is not a readable tar stream (truncated, corrupt or the wrong format).
    #[error("layer is not a readable tar archive")]
    Archive(#[source] std::io::Error),
    /// An entry names a path outside the layer.
    #[error("layer entry {path:?} points outside the image")]
    Escapes {
        /// The entry's name as stored in the archive.
        path: PathBuf,
    },
    /// Writing an entry failed.
    #[error("cannot write layer entry {path:?}")]
    Write {
        /// The entry's name.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks a layer stream into `dest` (which must exist and be empty). Compression is
/// recognised from the first bytes, so media types that lie do not matter. Returns the number
/// of entries written.
pub fn unpack_layer(stream: impl Read, dest: &Path) -> Result<u64, UnpackError> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let head = reader.fill_buf().map_err(UnpackError::Archive)?.to_vec();
    if head.starts_with(&GZIP_MAGIC) {
        unpack_tar(flate2::read::GzDecoder::new(reader), dest)
    } else if head.starts_with(&ZSTD_MAGIC) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| {
            UnpackError::Archive(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        unpack_tar(decoder, dest)
    } else {
        unpack_tar(reader, dest)
    }
}

fn unpack_tar(stream: impl Read, dest: &Path) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut count = 0;
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        let stored = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let relative = inside_path(&stored)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = relative.parent().unwrap_or(Path::new(""));
        let write_error = |source| UnpackError::Write {
            path: stored.clone(),
            source,
        };
        if name == OPAQUE_MARKER {
            let dir = real_directory(dest, parent).map_err(write_error)?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y").map_err(write_error)?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let dir = real_directory(dest, parent).map_err(write_error)?;
            make_whiteout(&dir.join(hidden)).map_err(write_error)?;
        } else {
            real_directory(dest, parent).map_err(write_error)?;
            if let Some(target) = entry.link_name().map_err(UnpackError::Archive)? {
                if entry.header().entry_type().is_hard_link() {
                    inside_path(&target)?;
                }
            }
            let written = entry.unpack_in(dest).map_err(write_error)?;
            if !written {
                return Err(UnpackError::Escapes { path: stored });
            }
        }
        count += 1;
    }
    Ok(count)
}

/// The entry's path relative to the layer root, refusing `..` and any root or prefix.
fn inside_path(stored: &Path) -> Result<PathBuf, UnpackError> {
    let mut clean = PathBuf::new();
    for component in stored.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir if clean.as_os_str().is_empty() => {}
            _ => {
                return Err(UnpackError::Escapes {
                    path: stored.to_owned(),
                })
            }
        }
    }
    Ok(clean)
}

/// Creates `relative` under `root` as real directories, refusing to pass through a symlink
/// (which an earlier entry could have pointed anywhere).
fn real_directory(root: &Path, relative: &Path) -> std::io::Result<PathBuf> {
    let mut current = root.to_path_buf();
    for part in relative.components() {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a directory", current.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&current)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn make_whiteout(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    // A 0/0 character device is overlayfs's whiteout.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    Ok(())
}

fn set_xattr(path: &Path, key: &str, value: &[u8]) -> std::io::Result<()> {
    let name = c_path(path)?;
    let key = CString::new(key).expect("attribute names have no NUL");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            name.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            // Write the raw name so hostile paths reach the unpacker unchanged.
            let name = path.as_bytes();
            header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn files_directories_and_symlinks_unpack_from_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[
            ("bin/", tar::EntryType::Directory, b"", None),
            ("bin/busybox", tar::EntryType::Regular, b"\x7fELF", None),
            ("bin/sh", tar::EntryType::Symlink, b"", Some("busybox")),
            ("./etc/hostname", tar::EntryType::Regular, b"pi\n", None),
        ]);
        let count = unpack_layer(&gzip(&layer)[..], dir.path()).unwrap();
        assert_eq!(count, 4);
        assert_eq!(
            std::fs::read(dir.path().join("bin/busybox")).unwrap(),
            b"\x7fELF"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::read(dir.path().join("etc/hostname")).unwrap(),
            b"pi\n"
        );
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[
            ("etc/.wh.motd", tar::EntryType::Regular, b"", None),
            ("var/cache/.wh..wh..opq", tar::EntryType::Regular, b"", None),
        ]);
        unpack_layer(&layer[..], dir.path()).unwrap();
        let meta = std::fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(meta.file_type().is_char_device());
        let cache = c_path(&dir.path().join("var/cache")).unwrap();
        let key = CString::new("trusted.overlay.opaque").unwrap();
        let mut value = [0u8; 4];
        // SAFETY: valid strings and buffer.
        let n =
            unsafe { libc::lgetxattr(cache.as_ptr(), key.as_ptr(), value.as_mut_ptr().cast(), 4) };
        assert_eq!(n, 1, "opaque attribute missing");
        assert_eq!(value[0], b'y');
    }

    #[test]
    fn entries_outside_the_layer_are_refused() {
        for hostile in ["../escape", "a/../../escape"] {
            let dir = tempfile::tempdir().unwrap();
            let layer = tar_with(&[(hostile, tar::EntryType::Regular, b"x", None)]);
            let error = unpack_layer(&layer[..], dir.path()).unwrap_err();
            assert!(
                matches!(error, UnpackError::Escapes { .. }),
                "{hostile}: {error}"
            );
        }
    }

    #[test]
    fn nothing_is_written_through_a_planted_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let layer = tar_with(&[
            ("evil", tar::EntryType::Symlink, b"", Some(target)),
            ("evil/planted", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(unpack_layer(&layer[..], dir.path()).is_err());
        assert!(!outside.path().join("planted").exists());
    }

    #[test]
    fn truncated_archives_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let layer = gzip(&tar_with(&[(
            "big",
            tar::EntryType::Regular,
            &[7u8; 4096],
            None,
        )]));
        let cut = &layer[..layer.len() / 2];
        assert!(unpack_layer(cut, dir.path()).is_err());
    }
}
