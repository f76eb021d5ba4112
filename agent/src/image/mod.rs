//! The node's images: pulled from OCI registries, one unpacked directory per layer, shared by
//! every container that uses it through overlayfs.
//!
//! Layout under the store's root:
//!
//! ```text
//! layers/<sha256 hex>/      one unpacked layer, complete (it is renamed in only when whole)
//! images/<sha256 of name>   one JSON record per image name: digest, config, layer digests
//! tmp/                      downloads and unpacks in progress; emptied at start-up
//! ```
//!
//! A corrupt or truncated download never becomes a layer: blobs are checked against their
//! digest before they are unpacked, and unpacking happens in `tmp/` first.

pub mod demo;
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
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
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

    /// The unpacked directory of a layer.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(digest.trim_start_matches("sha256:"))
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
            .all(|digest| self.layer_dir(digest).is_dir())
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
            let digest = chosen["digest"]
                .as_str()
                .ok_or_else(|| malformed("index entry without a digest".into()))?
                .to_owned();
            manifest = registry.manifest(repo, &digest).await.map_err(failed)?;
        }
        if let Some(local) = local {
            if local.digest == manifest.digest {
                return Ok(local);
            }
        }
        let config_digest = manifest.json["config"]["digest"]
            .as_str()
            .ok_or_else(|| malformed("manifest without a config".into()))?;
        let config_bytes = registry.blob(repo, config_digest).await.map_err(failed)?;
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
        let mut digests = Vec::new();
        for layer in layers {
            let digest = layer["digest"]
                .as_str()
                .filter(|d| d.starts_with("sha256:") && d.len() == 71)
                .ok_or_else(|| malformed("layer without a sha256 digest".into()))?;
            self.fetch_layer(&registry, name, repo, digest, layer["size"].as_u64())
                .await?;
            digests.push(digest.to_owned());
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
        digest: &str,
        size: Option<u64>,
    ) -> Result<(), ImageError> {
        let dir = self.layer_dir(digest);
        if dir.is_dir() {
            return Ok(());
        }
        let hex = digest.trim_start_matches("sha256:");
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
                digest: digest.to_owned(),
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
            let needed: HashSet<&String> = kept.iter().flat_map(|i| &i.layers).collect();
            for layer in &image.layers {
                if !needed.contains(layer) && !self.still_needed(layer, &image.reference) {
                    let _ = std::fs::remove_dir_all(self.layer_dir(layer));
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

    fn still_needed(&self, layer: &String, except: &str) -> bool {
        self.list()
            .iter()
            .any(|image| image.reference != except && image.layers.contains(layer))
    }
}
