//! Unpacks one image layer (tar, gzip or zstd) into its own directory, in overlayfs's format.
//!
//! OCI whiteouts become what overlayfs understands: `.wh.NAME` turns into a 0/0 character
//! device named NAME and `.wh..wh..opq` into the `trusted.overlay.opaque` attribute on its
//! directory. No entry may land outside the layer directory: `..` is refused and absolute names
//! are taken as relative to the layer (as Docker and containerd do); a whiteout must name one
//! entry of its directory (not empty, `.` or `..`); nothing is written through a symlink a
//! previous entry planted (an entry replaces a symlink at its own path instead of following
//! it); hard links may only point at entries inside the layer; and device nodes are not
//! created (containers get their /dev from the runtime, and a node on the host's disk would
//! give any host user who can reach it the device).

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
const META_PREFIX: &str = ".wh..wh.";

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
        let kind = entry.header().entry_type();
        if name == OPAQUE_MARKER {
            let dir = real_directory(dest, parent).map_err(write_error)?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y").map_err(write_error)?;
        } else if name.starts_with(META_PREFIX) {
            // Other `.wh..wh.` names are reserved by the OCI spec for the tools' own use.
            continue;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(hidden, "" | "." | "..") || hidden.contains('/') {
                return Err(UnpackError::Escapes { path: stored });
            }
            let dir = real_directory(dest, parent).map_err(write_error)?;
            make_whiteout(&dir.join(hidden)).map_err(write_error)?;
        } else if kind.is_block_special() || kind.is_character_special() {
            tracing::debug!(entry = %stored.display(), "device node in an image layer not created");
            continue;
        } else {
            let dir = real_directory(dest, parent).map_err(write_error)?;
            replace_unless_directory(
                &dir.join(relative.file_name().unwrap_or_default()),
                kind.is_dir(),
            )
            .map_err(write_error)?;
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

/// Removes what is at `path` unless both it and the new entry are directories (Docker's rule):
/// a directory entry over a planted symlink replaces the symlink rather than changing the mode
/// and owner of whatever it points at.
fn replace_unless_directory(path: &Path, entry_is_dir: bool) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() && entry_is_dir => Ok(()),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

    /// A layer unpacked into `tmp/staging` next to files of the store's `tmp/`, as the store does.
    fn staging_beside_a_sibling() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("other-download.blob"), b"x").unwrap();
        let staging = tmp.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        (tmp, staging)
    }

    #[test]
    fn whiteouts_naming_the_directory_or_its_parent_are_refused() {
        for hostile in [".wh...", ".wh..", ".wh.", "a/.wh...", "a/.wh."] {
            let (tmp, staging) = staging_beside_a_sibling();
            std::fs::create_dir(staging.join("a")).unwrap();
            std::fs::write(staging.join("a/keep"), b"x").unwrap();
            let layer = tar_with(&[(hostile, tar::EntryType::Regular, b"", None)]);
            let error = unpack_layer(&layer[..], &staging).unwrap_err();
            assert!(
                matches!(error, UnpackError::Escapes { .. }),
                "{hostile}: {error}"
            );
            assert!(tmp.path().join("other-download.blob").exists(), "{hostile}");
            assert!(staging.join("a/keep").exists(), "{hostile}");
        }
    }

    #[test]
    fn reserved_whiteout_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[("a/.wh..wh.plnk", tar::EntryType::Regular, b"", None)]);
        unpack_layer(&layer[..], dir.path()).unwrap();
        let entries = std::fs::read_dir(dir.path().join("a"))
            .into_iter()
            .flatten();
        assert_eq!(entries.count(), 0, "a reserved name became an entry");
    }

    #[test]
    fn absolute_names_stay_inside_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let name = format!("{}/abs", outside.path().display());
        let layer = tar_with(&[(&name, tar::EntryType::Regular, b"x", None)]);
        unpack_layer(&layer[..], dir.path()).unwrap();
        assert!(!outside.path().join("abs").exists());
        let inside = dir.path().join(name.trim_start_matches('/'));
        assert_eq!(std::fs::read(inside).unwrap(), b"x");
    }

    #[test]
    fn hard_links_to_outside_files_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        let target = secret.to_str().unwrap().to_owned();
        let through_symlink = format!("out/{}", "secret");
        for layer in [
            tar_with(&[("h", tar::EntryType::Link, b"", Some(&target))]),
            tar_with(&[("h", tar::EntryType::Link, b"", Some("../../etc/passwd"))]),
            tar_with(&[
                (
                    "out",
                    tar::EntryType::Symlink,
                    b"",
                    Some(outside.path().to_str().unwrap()),
                ),
                ("h", tar::EntryType::Link, b"", Some(&through_symlink)),
            ]),
            tar_with(&[
                ("s", tar::EntryType::Symlink, b"", Some(&target)),
                ("h", tar::EntryType::Link, b"", Some("s")),
                ("h", tar::EntryType::Regular, b"overwritten", None),
            ]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let _ = unpack_layer(&layer[..], dir.path());
            assert_eq!(std::fs::read(&secret).unwrap(), b"s");
            let linked = std::fs::metadata(&secret).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(linked.nlink(), 1, "a hard link to an outside file was made");
        }
    }

    #[test]
    fn entries_replace_planted_symlinks_instead_of_following_them() {
        use std::os::unix::fs::PermissionsExt;
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(outside.path().join("file"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let to_dir = outside.path().to_str().unwrap();
        let to_file = outside.path().join("file");
        let layer = tar_with(&[
            ("d", tar::EntryType::Symlink, b"", Some(to_dir)),
            ("d", tar::EntryType::Directory, b"", None),
            (
                "f",
                tar::EntryType::Symlink,
                b"",
                Some(to_file.to_str().unwrap()),
            ),
            ("f", tar::EntryType::Regular, b"new", None),
        ]);
        unpack_layer(&layer[..], dir.path()).unwrap();
        let mode = std::fs::metadata(outside.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "a directory entry changed a symlink's target"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("d"))
            .unwrap()
            .is_dir());
        assert_eq!(std::fs::read(outside.path().join("file")).unwrap(), b"s");
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn device_nodes_are_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind) in [
            ("sda", tar::EntryType::Block),
            ("mem", tar::EntryType::Char),
        ] {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_size(0);
            header.set_mode(0o666);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            header.set_device_major(8).unwrap();
            header.set_device_minor(0).unwrap();
            header.set_path(name).unwrap();
            header.set_cksum();
            builder.append(&header, &b""[..]).unwrap();
        }
        let layer = builder.into_inner().unwrap();
        unpack_layer(&layer[..], dir.path()).unwrap();
        for name in ["sda", "mem"] {
            // Neither a device node nor the empty file the tar crate would make of it.
            assert!(
                std::fs::symlink_metadata(dir.path().join(name)).is_err(),
                "{name} was written"
            );
        }
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
