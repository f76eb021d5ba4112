//! The node's images: pulled from OCI registries, one unpacked directory per layer, shared by
//! every container that uses it through overlayfs.
//!
//! Layout under the store's root:
//!
//! ```text
//! layers/<hex>/             one unpacked layer, complete (it is renamed in only when whole)
//! images/<sha256 of name>   one JSON record per image name: digest, config, layer digests
//! tmp/                      downloads and unpacks in progress; emptied at start-up
//! ```
//!
//! A corrupt or truncated download never becomes a layer: blobs are checked against their
//! digest before they are unpacked, and unpacking happens in `tmp/` first. Every digest a
//! registry, a manifest or a record names is parsed as a [`Digest`] before it becomes part of a
//! path or a URL.

pub mod demo;
pub mod digest;
pub mod local_registry;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use digest::Digest;
pub use platform::Platform;
pub use reference::Reference;
pub use registry::{Credentials, Registry, RegistryError};

/// When to contact the registry, as a container's `imagePullPolicy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the name at the registry on every container start.
    Always,
    /// Use the local image when there is one.
    IfNotPresent,
    /// Never pull; fail when the image is missing.
    Never,
}

impl PullPolicy {
    /// The policy a container asks for, or Kubernetes' default: Always for `:latest` and
    /// untagged names, IfNotPresent otherwise.
    pub fn for_container(policy: Option<&str>, reference: &Reference) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if reference.is_latest() => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Why an image is not available.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The name cannot be an image reference.
    #[error("{0}")]
    InvalidName(String),
    /// The policy forbids pulling and the image is not on the node.
    #[error("image {reference} is not present on the node and its pull policy is Never")]
    NeverPull {
        /// The image name.
        reference: String,
    },
    /// The registry refused or failed.
    #[error("pulling {reference}")]
    Registry {
        /// The image name.
        reference: String,
        /// The cause.
        #[source]
        source: RegistryError,
    },
    /// The image has no build for this machine.
    #[error("image {reference} has no build for {platform} (it has {available})")]
    NoPlatform {
        /// The image name.
        reference: String,
        /// This node's platform.
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The manifest or config is not a usable image.
    #[error("image {reference}: {problem}")]
    Malformed {
        /// The image name.
        reference: String,
        /// What is wrong.
        problem: String,
    },
    /// A layer could not be unpacked.
    #[error("image {reference}: layer {digest} cannot be unpacked")]
    Layer {
        /// The image name.
        reference: String,
        /// The layer's digest.
        digest: String,
        /// The cause.
        #[source]
        source: unpack::UnpackError,
    },
    /// The store's disk failed (full, read-only, ...).
    #[error("image store at {path}")]
    Disk {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The waiting reason kubelet reports for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidName(_) => "InvalidImageName",
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// What the image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    /// The image's ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// WORKDIR.
    #[serde(default)]
    pub working_dir: String,
    /// USER (`uid[:gid]` or a name).
    #[serde(default)]
    pub user: String,
}

/// A pulled image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The name as written in the pod.
    pub reference: String,
    /// The platform manifest's digest (what kubelet reports as imageID).
    pub digest: String,
    /// How to run it.
    pub config: RunConfig,
    /// Layer digests, bottom first. Parsed on load, so a record naming a malformed digest
    /// does not load at all.
    pub layers: Vec<Digest>,
    /// Total unpacked-from size in bytes of the compressed layers.
    pub size: u64,
    /// Seconds since the epoch of the last container start that used it.
    #[serde(default)]
    pub last_used: u64,
}

/// The on-disk image store.
pub struct ImageStore {
    root: PathBuf,
    platform: Platform,
    insecure: HashSet<String>,
    /// One pull per image name at a time; others wait for it and then find it present.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Disk {
        path: path.to_path_buf(),
        source,
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl ImageStore {
    /// Opens (creating) a store under `root`; registries named in `insecure` are spoken to over
    /// plain HTTP.
    pub fn open(
        root: &Path,
        platform: Platform,
        insecure: impl IntoIterator<Item = String>,
    ) -> Result<ImageStore, ImageError> {
        for dir in ["layers", "images", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(disk(&path))?;
        }
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(disk(&tmp))?.flatten() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            platform,
            insecure: insecure.into_iter().collect(),
            pulls: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The unpacked directory of a layer. Callers pass the digests of a loaded [`Image`],
    /// which are parsed already; text that is not a digest gets a name that is never created
    /// (no layer directory contains `.`), never a path built from the text.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        match Digest::parse(digest) {
            Ok(digest) => self.layer_path(&digest),
            Err(_) => self.root.join("layers").join(".invalid"),
        }
    }

    fn layer_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.hex())
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        let name = registry::sha256_digest(reference.as_bytes());
        self.root
            .join("images")
            .join(name.trim_start_matches("sha256:"))
    }

    /// The image recorded under a name, if all its layers are still on disk.
    pub fn local(&self, reference: &str) -> Option<Image> {
        let bytes = std::fs::read(self.record_path(reference)).ok()?;
        let image: Image = serde_json::from_slice(&bytes).ok()?;
        image
            .layers
            .iter()
            .all(|digest| self.layer_path(digest).is_dir())
            .then_some(image)
    }

    fn save(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.reference);
        let tmp = self.root.join("tmp").join(format!(
            "record-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        let bytes = serde_json::to_vec_pretty(image).expect("images serialize");
        std::fs::write(&tmp, bytes).map_err(disk(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(disk(&path))
    }

    /// Makes the image available according to `policy`, pulling it if needed, and marks it used.
    /// `credentials` maps registry hosts to the pod's pull secrets.
    pub async fn ensure(
        &self,
        name: &str,
        policy: PullPolicy,
        credentials: &HashMap<String, Credentials>,
    ) -> Result<Image, ImageError> {
        let reference = Reference::parse(name).map_err(ImageError::InvalidName)?;
        let lock = {
            let mut pulls = self.pulls.lock().await;
            pulls.entry(name.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let local = self.local(name);
        let mut image = match (policy, local) {
            (PullPolicy::Never, None) => {
                return Err(ImageError::NeverPull {
                    reference: name.to_owned(),
                })
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(image)) => image,
            (_, local) => {
                let creds = credentials.get(&reference.registry).cloned();
                self.pull(name, &reference, local, creds).await?
            }
        };
        image.last_used = now_seconds();
        self.save(&image)?;
        Ok(image)
    }

    async fn pull(
        &self,
        name: &str,
        reference: &Reference,
        local: Option<Image>,
        credentials: Option<Credentials>,
    ) -> Result<Image, ImageError> {
        let insecure = self.insecure.contains(&reference.registry);
        let registry = Registry::new(reference.api_host(), insecure, credentials);
        let failed = |source| ImageError::Registry {
            reference: name.to_owned(),
            source,
        };
        let malformed = |problem: String| ImageError::Malformed {
            reference: name.to_owned(),
            problem,
        };
        let parse_digest = |text: Option<&str>, what: &str| {
            let text = text.ok_or_else(|| malformed(format!("{what} without a digest")))?;
            Digest::parse(text).map_err(|e| malformed(format!("{what}: {e}")))
        };
        let repo = &reference.repository;
        let mut manifest = registry
            .manifest(repo, reference.manifest_selector())
            .await
            .map_err(failed)?;
        if manifest.json.get("manifests").is_some() {
            let chosen = self.platform.choose(&manifest.json).ok_or_else(|| {
                let available = manifest.json["manifests"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|m| {
                                let p = m.get("platform")?;
                                let mut text = format!(
                                    "{}/{}",
                                    p.get("os")?.as_str()?,
                                    p.get("architecture")?.as_str()?
                                );
                                if let Some(v) = p.get("variant").and_then(Value::as_str) {
                                    text.push_str(&format!("/{v}"));
                                }
                                Some(text)
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                ImageError::NoPlatform {
                    reference: name.to_owned(),
                    platform: self.platform.to_string(),
                    available,
                }
            })?;
            let digest = parse_digest(chosen["digest"].as_str(), "index entry")?;
            manifest = registry.manifest(repo, &digest).await.map_err(failed)?;
        }
        if let Some(local) = local {
            if local.digest == manifest.digest {
                return Ok(local);
            }
        }
        let config_digest = parse_digest(manifest.json["config"]["digest"].as_str(), "config")?;
        let config_bytes = registry.blob(repo, &config_digest).await.map_err(failed)?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| malformed(format!("config is not JSON: {e}")))?;
        let layers = manifest.json["layers"]
            .as_array()
            .ok_or_else(|| malformed("manifest without layers".into()))?;
        let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
        tracing::info!(
            image = name,
            layers = layers.len(),
            bytes = total,
            "pulling image"
        );
        // Every digest is checked before the first download, so a bad one leaves nothing behind.
        let digests = layers
            .iter()
            .map(|layer| parse_digest(layer["digest"].as_str(), "layer"))
            .collect::<Result<Vec<Digest>, ImageError>>()?;
        for (layer, digest) in layers.iter().zip(&digests) {
            self.fetch_layer(&registry, name, repo, digest, layer["size"].as_u64())
                .await?;
        }
        let run = &config["config"];
        Ok(Image {
            reference: name.to_owned(),
            digest: manifest.digest,
            config: RunConfig {
                entrypoint: protocol::client::string_array(&run["Entrypoint"]),
                cmd: protocol::client::string_array(&run["Cmd"]),
                env: protocol::client::string_array(&run["Env"]),
                working_dir: run["WorkingDir"].as_str().unwrap_or("").to_owned(),
                user: run["User"].as_str().unwrap_or("").to_owned(),
            },
            layers: digests,
            size: total,
            last_used: 0,
        })
    }

    async fn fetch_layer(
        &self,
        registry: &Registry,
        name: &str,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<(), ImageError> {
        let dir = self.layer_path(digest);
        if dir.is_dir() {
            return Ok(());
        }
        let hex = digest.hex();
        let blob = self.root.join("tmp").join(format!("{hex}.blob"));
        let staging = self.root.join("tmp").join(format!("{hex}.dir"));
        let started = std::time::Instant::now();
        registry
            .blob_to_file(repo, digest, size, &blob, |_| {})
            .await
            .map_err(|source| ImageError::Registry {
                reference: name.to_owned(),
                source,
            })?;
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(disk(&staging))?;
        let unpacked = {
            let blob = blob.clone();
            let staging = staging.clone();
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&blob)?;
                unpack::unpack_layer(file, &staging).map_err(std::io::Error::other)
            })
            .await
            .expect("unpack task does not panic")
        };
        let _ = std::fs::remove_file(&blob);
        if let Err(error) = unpacked {
            let _ = std::fs::remove_dir_all(&staging);
            let source = match error
                .into_inner()
                .map(|e| e.downcast::<unpack::UnpackError>())
            {
                Some(Ok(e)) => *e,
                Some(Err(e)) => unpack::UnpackError::Archive(std::io::Error::other(e)),
                None => unpack::UnpackError::Archive(std::io::Error::other("unreadable blob")),
            };
            return Err(ImageError::Layer {
                reference: name.to_owned(),
                digest: digest.to_string(),
                source,
            });
        }
        std::fs::rename(&staging, &dir).map_err(disk(&dir))?;
        tracing::info!(
            image = name,
            layer = &hex[..12],
            bytes = size.unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layer ready"
        );
        Ok(())
    }

    /// Every image on the node.
    pub fn list(&self) -> Vec<Image> {
        let dir = self.root.join("images");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// The share of the store's file system in use, 0.0 to 1.0.
    pub fn disk_usage(&self) -> Option<f64> {
        let stats = nix::sys::statvfs::statvfs(&self.root).ok()?;
        let total = stats.blocks() as f64;
        if total == 0.0 {
            return None;
        }
        Some(1.0 - stats.blocks_available() as f64 / total)
    }

    /// When the disk is fuller than `high`, removes images no container uses (least recently
    /// used first) until it is below `low`, then every layer no remaining image needs.
    /// Returns the names removed.
    pub fn collect_garbage(&self, in_use: &HashSet<String>, high: f64, low: f64) -> Vec<String> {
        let Some(usage) = self.disk_usage() else {
            return Vec::new();
        };
        if usage < high {
            return Vec::new();
        }
        let mut images = self.list();
        images.sort_by_key(|image| image.last_used);
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        for image in images {
            let below = self.disk_usage().is_some_and(|u| u < low);
            if below || in_use.contains(&image.reference) {
                kept.push(image);
                continue;
            }
            let _ = std::fs::remove_file(self.record_path(&image.reference));
            let needed: HashSet<&Digest> = kept.iter().flat_map(|i| &i.layers).collect();
            for layer in &image.layers {
                if !needed.contains(layer) && !self.still_needed(layer, &image.reference) {
                    let _ = std::fs::remove_dir_all(self.layer_path(layer));
                }
            }
            tracing::info!(
                image = image.reference,
                usage,
                "removed unused image: disk is filling"
            );
            removed.push(image.reference);
        }
        removed
    }

    fn still_needed(&self, layer: &Digest, except: &str) -> bool {
        self.list()
            .iter()
            .any(|image| image.reference != except && image.layers.contains(layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry that answers every request from a table of paths, over plain HTTP.
    async fn serve(answers: Vec<(String, Vec<u8>)>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    let (status, body) = answers
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, b)| ("200 OK", b.clone()))
                        .unwrap_or(("404 Not Found", b"{}".to_vec()));
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        host
    }

    /// A manifest whose one layer has the given digest text.
    fn hostile_registry_answers(layer_digest: &str) -> Vec<(String, Vec<u8>)> {
        let config = br#"{"config":{"Cmd":["sh"]}}"#.to_vec();
        let config_digest = registry::sha256_digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": 1}],
        }))
        .unwrap();
        vec![
            ("/v2/evil/manifests/1".into(), manifest),
            (format!("/v2/evil/blobs/{config_digest}"), config),
        ]
    }

    #[tokio::test]
    async fn a_layer_digest_that_is_a_path_is_refused_and_nothing_outside_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), b"x").unwrap();
        let root = dir.path().join("store");
        // `layers/` + `././…/../../victim` is the store's sibling `victim`.
        let traversal = format!("sha256:{}../../victim", "./".repeat(26));
        assert_eq!(traversal.len(), 71);
        let host = serve(hostile_registry_answers(&traversal)).await;
        let store = ImageStore::open(&root, Platform::host(), [host.clone()]).unwrap();
        let name = format!("{host}/evil:1");
        let error = store
            .ensure(&name, PullPolicy::IfNotPresent, &HashMap::new())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ImageError::Malformed { .. }),
            "unexpected {error}"
        );
        assert!(error.to_string().contains("invalid digest"), "{error}");
        assert!(store.local(&name).is_none());
        store.collect_garbage(&HashSet::new(), 0.0, 0.0);
        assert!(
            victim.join("precious").exists(),
            "a host directory was removed"
        );
    }

    #[tokio::test]
    async fn index_and_config_digests_are_parsed_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"digest": "sha256:../../../../x", "platform": {
                "os": "linux", "architecture": Platform::host().architecture}}],
        }))
        .unwrap();
        let host = serve(vec![("/v2/evil/manifests/1".into(), index)]).await;
        let store = ImageStore::open(dir.path(), Platform::host(), [host.clone()]).unwrap();
        let error = store
            .ensure(
                &format!("{host}/evil:1"),
                PullPolicy::Always,
                &HashMap::new(),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid digest"), "{error}");
    }

    #[test]
    fn image_records_naming_bad_layers_are_ignored_and_never_collected() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let root = dir.path().join("store");
        let store = ImageStore::open(&root, Platform::host(), Vec::new()).unwrap();
        // A record an older agent might have written for a hostile image.
        let record = serde_json::json!({
            "reference": "evil:1", "digest": "sha256:00", "config": {},
            "layers": [format!("sha256:{}../../victim", "./".repeat(26))],
            "size": 0, "lastUsed": 0,
        });
        std::fs::write(
            store.record_path("evil:1"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        assert!(store.local("evil:1").is_none());
        store.collect_garbage(&HashSet::new(), 0.0, 0.0);
        assert!(victim.exists(), "a host directory was removed");
    }
}
