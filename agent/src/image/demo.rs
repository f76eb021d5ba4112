//! The demo image: busybox plus a tiny web server that answers with its pod's name, built for
//! several architectures as one multi-arch index and pushed to a registry.
//!
//! `bramble up` pushes it to the local registry so a new user has something to deploy that
//! shows, in every answer, which pod (and so which virtual Pi) served it. The build is
//! reproducible: the same busybox binaries give the same digests.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{json, Value};

use super::platform::Platform;
use super::registry::{sha256_digest, Registry, RegistryError};

/// The port the demo server listens on.
pub const DEMO_PORT: u16 = 8080;

/// The server script: answers `GET /` with the pod name, the node and a version.
const SERVER_SCRIPT: &str = r#"#!/bin/sh
# bramble demo server: every answer says which pod served it.
# VERSION and MESSAGE come from the pod's environment; PORT defaults to 8080.
# The shell stays PID 1 and stops the server on SIGTERM, so pods end at once when deleted.
mkdir -p /tmp/www
echo "${MESSAGE:-hello from} $(hostname) version=${VERSION:-1}" > /tmp/www/index.html
echo "demo server $(hostname) version=${VERSION:-1} listening on :${PORT:-8080}"
httpd -f -v -p "${PORT:-8080}" -h /tmp/www &
server=$!
trap 'echo "demo server stopping"; kill $server; exit 0' TERM INT
wait $server
"#;

/// Busybox applets linked into /bin.
const APPLETS: &[&str] = &[
    "[", "ash", "awk", "cat", "chmod", "cp", "cut", "date", "dd", "df", "du", "echo", "env",
    "expr", "false", "find", "free", "grep", "head", "hostname", "httpd", "id", "ifconfig", "ip",
    "kill", "ln", "ls", "mkdir", "mount", "mv", "nc", "nslookup", "ping", "printf", "ps", "rm",
    "sed", "seq", "sh", "sleep", "sort", "stat", "sync", "tail", "test", "timeout", "top", "touch",
    "tr", "true", "uname", "uniq", "vi", "watch", "wc", "wget", "xargs", "yes",
];

/// One architecture's busybox binary.
pub struct Busybox {
    /// The platform the binary runs on.
    pub platform: Platform,
    /// Where the static binary is.
    pub path: PathBuf,
}

/// A built layer: the gzip bytes and the digest of the uncompressed tar (its diff ID).
struct Layer {
    gzip: Bytes,
    diff_id: String,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1);
    header
}

fn build_layer(busybox: &[u8]) -> std::io::Result<Layer> {
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let files: [(&str, &[u8], u32); 4] = [
        ("bin/demo-server", SERVER_SCRIPT.as_bytes(), 0o755),
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        ),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
    ];
    for (path, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, path, data)?;
    }
    let plain = tar.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain)?;
    Ok(Layer {
        gzip: Bytes::from(gz.finish()?),
        diff_id: sha256_digest(&plain),
    })
}

/// Errors building or pushing the demo image.
#[derive(Debug, thiserror::Error)]
pub enum DemoImageError {
    /// A busybox binary could not be read.
    #[error("cannot read busybox for {platform} at {path}")]
    Busybox {
        /// Its platform.
        platform: String,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry refused.
    #[error("pushing the demo image")]
    Push(#[source] RegistryError),
}

fn platform_json(platform: &Platform) -> Value {
    let mut value = json!({"os": platform.os, "architecture": platform.architecture});
    if let Some(variant) = &platform.variant {
        value["variant"] = json!(variant);
    }
    value
}

/// Where `tests/setup-host` installs busybox: `$BRAMBLE_SHARE/busybox/<arch>/busybox`, with
/// `BRAMBLE_SHARE` defaulting to /usr/local/share/bramble.
pub fn installed_busyboxes() -> Vec<Busybox> {
    let share = std::env::var_os("BRAMBLE_SHARE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/share/bramble"));
    [("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64")]
        .into_iter()
        .map(|(platform, arch)| Busybox {
            platform: Platform::parse(platform).expect("known platform"),
            path: share.join("busybox").join(arch).join("busybox"),
        })
        .collect()
}

/// Builds the demo image for every given busybox and pushes it as `repository:tag`; the
/// server reports the tag as its version unless the pod sets VERSION. Returns the index
/// digest.
pub async fn push_demo_image(
    registry: &Registry,
    repository: &str,
    tag: &str,
    busyboxes: &[Busybox],
) -> Result<String, DemoImageError> {
    let mut entries = Vec::new();
    for busybox in busyboxes {
        let read_error = |source| DemoImageError::Busybox {
            platform: busybox.platform.to_string(),
            path: busybox.path.clone(),
            source,
        };
        let binary = std::fs::read(&busybox.path).map_err(read_error)?;
        let layer = build_layer(&binary).map_err(read_error)?;
        let layer_size = layer.gzip.len();
        let layer_digest = registry
            .push_blob(repository, layer.gzip)
            .await
            .map_err(DemoImageError::Push)?;
        let mut config = platform_json(&busybox.platform);
        config["config"] = json!({
            "Env": ["PATH=/bin", "PORT=8080", format!("VERSION={tag}")],
            "Cmd": ["/bin/demo-server"],
            "ExposedPorts": {format!("{DEMO_PORT}/tcp"): {}},
            "WorkingDir": "/",
        });
        config["rootfs"] = json!({"type": "layers", "diff_ids": [layer.diff_id]});
        let config = Bytes::from(serde_json::to_vec(&config).expect("JSON serializes"));
        let config_size = config.len();
        let config_digest = registry
            .push_blob(repository, config)
            .await
            .map_err(DemoImageError::Push)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("JSON serializes"));
        let size = manifest.len();
        let digest = sha256_digest(&manifest);
        registry
            .push_manifest(
                repository,
                &digest,
                "application/vnd.oci.image.manifest.v1+json",
                manifest,
            )
            .await
            .map_err(DemoImageError::Push)?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": platform_json(&busybox.platform),
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index = Bytes::from(serde_json::to_vec(&index).expect("JSON serializes"));
    registry
        .push_manifest(
            repository,
            tag,
            "application/vnd.oci.image.index.v1+json",
            index,
        )
        .await
        .map_err(DemoImageError::Push)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_is_reproducible_and_unpacks_to_a_usable_root() {
        let a = build_layer(b"fake busybox").unwrap();
        let b = build_layer(b"fake busybox").unwrap();
        assert_eq!(a.gzip, b.gzip);
        assert_eq!(a.diff_id, b.diff_id);
        let dir = tempfile::tempdir().unwrap();
        crate::image::unpack::unpack_layer(&a.gzip[..], dir.path()).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/httpd")).unwrap(),
            std::path::Path::new("busybox")
        );
        let script = std::fs::read_to_string(dir.path().join("bin/demo-server")).unwrap();
        assert!(script.contains("httpd"));
    }
}
