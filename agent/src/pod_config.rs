//! What a container sees besides its image: environment variables (literal, `$(VAR)`
//! references, config maps, secrets, the downward API) and volumes (`emptyDir`, `hostPath`,
//! `configMap`, `secret`, `downwardAPI`, `projected` through [`crate::projected`], and through
//! [`crate::volumes`] `persistentVolumeClaim` and `nfs`),
//! set up the way kubelet sets them up.
//!
//! Config map and secret volumes use kubelet's atomic layout: the files live in a
//! timestamped directory, `..data` is a symlink to it, and each key is a symlink through
//! `..data`. An update writes a new directory and swaps `..data` with one rename, so a reader
//! inside the container sees either the old files or the new ones, never a mix.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Pod, ResourceFieldSelector, Secret, Volume,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::pods::{ApiError, PodApi};
use crate::projected::{self, ServiceAccountTokens};
use crate::runtime::spec::{expand, BindMount};
use crate::volumes::{self, PreparedVolume};
use protocol::quantity;

/// A container's configuration cannot be built yet; kubelet reports this as
/// `CreateContainerConfigError` and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Fetches the objects a pod refers to (config maps, secrets, claims and their volumes), once
/// per sync.
pub struct ObjectSource<'a> {
    api: &'a dyn PodApi,
    namespace: String,
    cache: HashMap<(String, String), Option<Value>>,
}

impl<'a> ObjectSource<'a> {
    /// A source for one namespace.
    pub fn new(api: &'a dyn PodApi, namespace: &str) -> ObjectSource<'a> {
        ObjectSource {
            api,
            namespace: namespace.to_owned(),
            cache: HashMap::new(),
        }
    }

    /// The API the source reads through (with the node's credentials).
    pub fn api(&self) -> &'a dyn PodApi {
        self.api
    }

    /// The namespace the source reads from.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The object of the plural resource `kind` (in the pod's namespace, or cluster-wide for
    /// `persistentvolumes`), `None` when it does not exist.
    pub async fn get(&mut self, kind: &str, name: &str) -> Result<Option<Value>, ConfigError> {
        let key = (kind.to_owned(), name.to_owned());
        if let Some(found) = self.cache.get(&key) {
            return Ok(found.clone());
        }
        let namespace = if kind == "persistentvolumes" {
            ""
        } else {
            self.namespace.as_str()
        };
        let found = match self.api.get_object(namespace, kind, name).await {
            Ok(found) => found,
            Err(ApiError::NotFound) => None,
            Err(e) => {
                let e = protocol::error::error_chain(&e);
                return Err(ConfigError(format!("cannot read {kind} {name:?}: {e}")));
            }
        };
        self.cache.insert(key, found.clone());
        Ok(found)
    }

    /// The object as its typed form; one that does not read as that type is an error.
    pub async fn typed<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(object) = self.get(kind, name).await? else {
            return Ok(None);
        };
        serde_json::from_value(object)
            .map(Some)
            .map_err(|e| ConfigError(format!("{} {name:?} is unreadable: {e}", kind_name(kind))))
    }

    /// The data of a config map (string and binary) or a secret (decoded), by key.
    pub async fn data(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let mut data = BTreeMap::new();
        if kind == "secrets" {
            let Some(secret) = self.typed::<Secret>(kind, name).await? else {
                return Ok(None);
            };
            for (key, bytes) in secret.data.into_iter().flatten() {
                data.insert(key, bytes.0);
            }
            for (key, text) in secret.string_data.into_iter().flatten() {
                data.insert(key, text.into_bytes());
            }
        } else {
            let Some(config_map) = self.typed::<ConfigMap>(kind, name).await? else {
                return Ok(None);
            };
            for (key, text) in config_map.data.into_iter().flatten() {
                data.insert(key, text.into_bytes());
            }
            for (key, bytes) in config_map.binary_data.into_iter().flatten() {
                data.insert(key, bytes.0);
            }
        }
        Ok(Some(data))
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "secrets" => "secret",
        "configmaps" => "configmap",
        "persistentvolumeclaims" => "persistentvolumeclaim",
        "persistentvolumes" => "persistentvolume",
        _ => "object",
    }
}

/// The pod fields the downward API can expose.
pub struct PodFacts<'a> {
    /// The pod object.
    pub pod: &'a Pod,
    /// The pod's IP.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// Variables for the services the pod can see (they come before the container's own,
    /// which win).
    pub service_env: Vec<(String, String)>,
}

pub(crate) fn field_value(facts: &PodFacts, path: &str) -> Result<String, ConfigError> {
    let meta = &facts.pod.metadata;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let spec = facts.pod.spec.as_ref();
    let value = match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => {
            let inside = |prefix: &str| {
                other
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix("']"))
                    .map(str::to_owned)
            };
            let empty = BTreeMap::new();
            let labels = meta.labels.as_ref().unwrap_or(&empty);
            let annotations = meta.annotations.as_ref().unwrap_or(&empty);
            let lines = |map: &BTreeMap<String, String>| {
                map.iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if let Some(key) = inside("metadata.labels['") {
                labels.get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = inside("metadata.annotations['") {
                annotations.get(&key).cloned().unwrap_or_default()
            } else if other == "metadata.labels" {
                lines(labels)
            } else if other == "metadata.annotations" {
                lines(annotations)
            } else {
                return Err(ConfigError(format!("unsupported fieldRef {other:?}")));
            }
        }
    };
    Ok(value)
}

pub(crate) fn resource_value(
    container: &Container,
    reference: &ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let resource = reference.resource.as_str();
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {resource:?}")))?;
    let resources = container.resources.as_ref();
    let amounts = match section {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let divisor = reference
        .divisor
        .as_ref()
        .and_then(|d| quantity::parse(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    let Some(amount) = amounts
        .and_then(|a| a.get(name))
        .and_then(|a| quantity::parse(&a.0))
    else {
        // An absent limit or request reads as 0 here; upstream reports allocatable for limits.
        return Ok("0".into());
    };
    Ok(((amount / divisor).ceil() as i64).to_string())
}

/// The container's environment after the image's: `NAME=value` pairs in Kubernetes order
/// (envFrom first, then env, later entries winning, `$(VAR)` expanded against earlier ones).
pub async fn container_env(
    container: &Container,
    image_env: &[String],
    facts: &PodFacts<'_>,
    objects: &mut ObjectSource<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let set = |vars: &mut Vec<(String, String)>, key: String, value: String| {
        vars.retain(|(k, _)| *k != key);
        vars.push((key, value));
    };
    for (key, value) in &facts.service_env {
        set(&mut vars, key.clone(), value.clone());
    }
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        let (kind, name, optional) = match (&source.secret_ref, &source.config_map_ref) {
            (Some(secret), _) => ("secrets", secret.name.as_str(), secret.optional),
            (None, Some(config_map)) => {
                ("configmaps", config_map.name.as_str(), config_map.optional)
            }
            (None, None) => continue,
        };
        match objects.data(kind, name).await? {
            Some(data) => {
                for (key, value) in data {
                    set(
                        &mut vars,
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&value).into(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(ConfigError(format!(
                    "{} \"{name}\" not found",
                    kind_name(kind)
                )))
            }
        }
    }
    for entry in container.env.iter().flatten() {
        let value = if let Some(value) = &entry.value {
            Some(expand(value, &vars))
        } else if let Some(from) = &entry.value_from {
            if let Some(field) = &from.field_ref {
                Some(field_value(facts, &field.field_path)?)
            } else if let Some(resource) = &from.resource_field_ref {
                Some(resource_value(container, resource)?)
            } else {
                let (kind, object, key, optional) =
                    match (&from.secret_key_ref, &from.config_map_key_ref) {
                        (Some(r), _) => ("secrets", r.name.as_str(), r.key.as_str(), r.optional),
                        (None, Some(r)) => {
                            ("configmaps", r.name.as_str(), r.key.as_str(), r.optional)
                        }
                        (None, None) => continue,
                    };
                let optional = optional == Some(true);
                match objects.data(kind, object).await? {
                    Some(data) => match data.get(key) {
                        Some(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {key} in {} {}/{object}",
                                kind_name(kind),
                                facts.pod.metadata.namespace.as_deref().unwrap_or("")
                            )))
                        }
                    },
                    None if optional => None,
                    None => {
                        return Err(ConfigError(format!(
                            "{} \"{object}\" not found",
                            kind_name(kind)
                        )))
                    }
                }
            }
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            set(&mut vars, entry.name.clone(), value);
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A path relative to a volume, refusing absolute paths and `..`.
pub(crate) fn relative(path: &str) -> Result<PathBuf, ConfigError> {
    let candidate = Path::new(path);
    if path.is_empty()
        || candidate
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ConfigError(format!("invalid path {path:?} in a volume")));
    }
    Ok(candidate.to_path_buf())
}

/// Writes `files` (relative path → bytes and mode) into `dir` with kubelet's atomic layout.
/// Returns whether anything changed.
pub fn write_atomic_dir(
    dir: &Path,
    files: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok().map(|t| dir.join(t));
    if let Some(current) = &current {
        let unchanged = files.iter().all(|(path, (bytes, _))| {
            std::fs::read(current.join(path)).is_ok_and(|old| old == *bytes)
        }) && count_files(current) == files.len();
        if unchanged {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for (path, (bytes, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
    }
    let swap = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&swap);
    std::os::unix::fs::symlink(&stamp, &swap)?;
    std::fs::rename(&swap, &data_link)?;
    // Top-level names point through ..data so they follow every swap.
    let mut tops: Vec<String> = files
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    tops.dedup();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_data = name.starts_with("..") && name != "..data" && name != stamp;
        let stale_link = !name.starts_with("..") && !tops.contains(&name);
        if stale_data {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if stale_link {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut count = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                count += count_files(&entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

/// Prepares every volume of the pod and returns where each is on the host. Volumes in `known`
/// were set up by an earlier pass and are kept as they are (a mounted claim stays mounted
/// while the pod lives, as with kubelet); config map, secret, downward-API and projected
/// volumes are rewritten each pass when a file changed (a projected token when `tokens` says
/// it is due at `now`). `started`: some container of the pod ran already.
pub async fn prepare_volumes(
    pod: &Pod,
    pod_dir: &Path,
    started: bool,
    objects: &mut ObjectSource<'_>,
    known: &mut HashMap<String, PreparedVolume>,
    tokens: &mut ServiceAccountTokens,
    now: jiff::Timestamp,
) -> Result<HashMap<String, PreparedVolume>, ConfigError> {
    let security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let fs_group = security.and_then(|s| s.fs_group).map(|g| g as u32);
    let change_policy = security.and_then(|s| s.fs_group_change_policy.as_deref());
    let mut prepared = HashMap::new();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
    for volume in volumes.unwrap_or_default() {
        let name = volume.name.as_str();
        let dir = volumes::pod_volume_dir(pod_dir, name).map_err(ConfigError)?;
        let binds = volumes::sub_path_binds_dir(pod_dir, name);
        let io = |e: std::io::Error| ConfigError(format!("volume {name:?}: {e}"));
        let rewritten = if volume.config_map.is_some() || volume.secret.is_some() {
            Some(write_object_volume(volume, &dir, objects).await?)
        } else if volume.projected.is_some() {
            let written =
                projected::write_projected_volume(pod, name, &dir, fs_group, objects, tokens, now);
            Some(written.await?)
        } else if let Some(downward) = &volume.downward_api {
            let default_mode = downward.default_mode.map_or(0o644, |m| m as u32);
            let items = downward.items.as_deref().unwrap_or_default();
            let files = projected::downward_files(pod, items, default_mode).await?;
            Some(write_atomic_dir(&dir, &files).map_err(io)?)
        } else {
            None
        };
        if let Some(changed) = rewritten {
            if let (true, Some(group)) = (changed, fs_group) {
                volumes::set_volume_ownership(&dir, group, true, None).map_err(io)?;
            }
            prepared.insert(
                name.to_owned(),
                PreparedVolume {
                    path: dir,
                    read_only: true,
                    sub_path_binds: binds.clone(),
                },
            );
            continue;
        }
        if let Some(done) = known.get(name) {
            prepared.insert(name.to_owned(), done.clone());
            continue;
        }
        let ready = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            if let Some(group) = fs_group {
                volumes::set_volume_ownership(&dir, group, false, change_policy).map_err(io)?;
            }
            PreparedVolume {
                path: dir,
                read_only: false,
                sub_path_binds: binds.clone(),
            }
        } else if let Some(host) = &volume.host_path {
            volumes::check_host_path(host, 0o755).map_err(|why| {
                ConfigError(format!(
                    "MountVolume.SetUp failed for volume \"{name}\" : {why}"
                ))
            })?;
            PreparedVolume {
                path: PathBuf::from(&host.path),
                read_only: false,
                sub_path_binds: binds.clone(),
            }
        } else if let Some(claim) = &volume.persistent_volume_claim {
            volumes::claim_volume(name, claim, &dir, &binds, security, started, objects).await?
        } else if let Some(nfs) = &volume.nfs {
            let read_only = nfs.read_only == Some(true);
            let mounted = volumes::mount_nfs_off_thread(nfs, &[], read_only, &dir).await;
            mounted.map_err(|why| {
                ConfigError(format!(
                    "MountVolume.SetUp failed for volume \"{name}\" : {why}"
                ))
            })?;
            PreparedVolume {
                path: dir,
                read_only,
                sub_path_binds: binds.clone(),
            }
        } else {
            tracing::debug!(volume = name, "volume type not supported; mounted empty");
            std::fs::create_dir_all(&dir).map_err(io)?;
            PreparedVolume {
                path: dir,
                read_only: false,
                sub_path_binds: binds.clone(),
            }
        };
        known.insert(name.to_owned(), ready.clone());
        prepared.insert(name.to_owned(), ready);
    }
    Ok(prepared)
}

/// Writes a config map or secret volume with kubelet's atomic layout; whether it changed.
async fn write_object_volume(
    volume: &Volume,
    dir: &Path,
    objects: &mut ObjectSource<'_>,
) -> Result<bool, ConfigError> {
    let name = volume.name.as_str();
    let (kind, object, default_mode, optional, items): (_, _, _, _, Option<&[KeyToPath]>) =
        match (&volume.secret, &volume.config_map) {
            (Some(secret), _) => (
                "secrets",
                secret.secret_name.as_deref().unwrap_or(""),
                secret.default_mode,
                secret.optional,
                secret.items.as_deref(),
            ),
            (None, Some(config_map)) => (
                "configmaps",
                config_map.name.as_str(),
                config_map.default_mode,
                config_map.optional,
                config_map.items.as_deref(),
            ),
            (None, None) => return Ok(false),
        };
    let default_mode = default_mode.map_or(0o644, |m| m as u32);
    let files = object_files(kind, object, default_mode, optional, items, objects).await?;
    write_atomic_dir(dir, &files).map_err(|e| ConfigError(format!("volume {name:?}: {e}")))
}

/// The files a config map or secret gives a volume: every key, or the `items` asked for, with
/// their modes (`default_mode` unless an item says otherwise). A missing object or key is an
/// error unless `optional`.
pub(crate) async fn object_files(
    kind: &str,
    object: &str,
    default_mode: u32,
    optional: Option<bool>,
    items: Option<&[KeyToPath]>,
    objects: &mut ObjectSource<'_>,
) -> Result<BTreeMap<PathBuf, (Vec<u8>, u32)>, ConfigError> {
    let optional = optional == Some(true);
    let data = match objects.data(kind, object).await? {
        Some(data) => data,
        None if optional => BTreeMap::new(),
        None => {
            return Err(ConfigError(format!(
                "{} \"{object}\" not found",
                kind_name(kind)
            )))
        }
    };
    let mut files = BTreeMap::new();
    match items {
        Some(items) => {
            for item in items {
                let key = item.key.as_str();
                let path = relative(if item.path.is_empty() {
                    key
                } else {
                    &item.path
                })?;
                let mode = item.mode.map_or(default_mode, |m| m as u32);
                match data.get(key) {
                    Some(bytes) => {
                        files.insert(path, (bytes.clone(), mode));
                    }
                    None if optional => {}
                    None => {
                        return Err(ConfigError(format!(
                            "{} \"{object}\" has no key {key:?}",
                            kind_name(kind)
                        )))
                    }
                }
            }
        }
        None => {
            for (key, bytes) in &data {
                files.insert(relative(key)?, (bytes.clone(), default_mode));
            }
        }
    }
    Ok(files)
}

/// The bind mounts of a container's `volumeMounts`: `subPath` (or `subPathExpr`, expanded
/// with the container's environment `env`) checked and created as kubelet does; read-only
/// when the mount or the volume says so.
pub fn volume_mounts(
    container: &Container,
    volumes: &HashMap<String, PreparedVolume>,
    env: &[(String, String)],
) -> Result<Vec<BindMount>, ConfigError> {
    let mut mounts = Vec::new();
    for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let name = mount.name.as_str();
        let volume = volumes.get(name).ok_or_else(|| {
            ConfigError(format!(
                "cannot find volume {name:?} to mount into container {:?}",
                container.name
            ))
        })?;
        let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
            (Some(sub), _) if !sub.is_empty() => sub.clone(),
            (_, Some(expr)) if !expr.is_empty() => {
                volumes::expand_sub_path_expr(expr, env).map_err(ConfigError)?
            }
            _ => String::new(),
        };
        let source = if sub_path.is_empty() {
            volume.path.clone()
        } else {
            volumes::prepare_sub_path(
                &volume.path,
                &volume.sub_path_binds,
                &sub_path,
                name,
                &container.name,
                index,
            )
            .map_err(ConfigError)?
        };
        mounts.push(BindMount {
            destination: mount.mount_path.clone(),
            source,
            read_only: mount.read_only == Some(true) || volume.read_only,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn atomic_volume_updates_swap_data_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert(PathBuf::from("color"), (b"blue".to_vec(), 0o644));
        files.insert(PathBuf::from("size"), (b"L".to_vec(), 0o644));
        assert!(write_atomic_dir(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("color")).unwrap(), b"blue");
        assert!(
            !write_atomic_dir(dir.path(), &files).unwrap(),
            "unchanged data rewrote"
        );
        files.insert(PathBuf::from("color"), (b"green".to_vec(), 0o644));
        files.remove(&PathBuf::from("size"));
        assert!(write_atomic_dir(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("color")).unwrap(), b"green");
        assert!(!dir.path().join("size").exists(), "a removed key stayed");
        let data_dirs = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(data_dirs, 1, "old data directories were kept");
    }

    #[test]
    fn downward_api_fields() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-1",
            "namespace": "demo", "labels": {"app": "web", "tier": "front"}},
            "spec": {"nodeName": "pi-2", "containers": []}}))
        .unwrap();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "10.42.1.5".into(),
            host_ip: "10.99.0.12".into(),
            service_env: Vec::new(),
        };
        assert_eq!(field_value(&facts, "metadata.name").unwrap(), "web-1");
        assert_eq!(field_value(&facts, "spec.nodeName").unwrap(), "pi-2");
        assert_eq!(
            field_value(&facts, "spec.serviceAccountName").unwrap(),
            "default"
        );
        assert_eq!(field_value(&facts, "status.podIP").unwrap(), "10.42.1.5");
        assert_eq!(
            field_value(&facts, "metadata.labels['app']").unwrap(),
            "web"
        );
        assert_eq!(
            field_value(&facts, "metadata.labels").unwrap(),
            "app=\"web\"\ntier=\"front\""
        );
        assert_eq!(
            field_value(&facts, "metadata.annotations['x']").unwrap(),
            ""
        );
        assert!(field_value(&facts, "spec.bogus").is_err());
        let container: Container = serde_json::from_value(json!({"name": "app",
            "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}}))
        .unwrap();
        let selector = |value: serde_json::Value| -> ResourceFieldSelector {
            serde_json::from_value(value).unwrap()
        };
        let mem = selector(json!({"resource": "limits.memory", "divisor": "1Mi"}));
        assert_eq!(resource_value(&container, &mem).unwrap(), "128");
        let cpu = selector(json!({"resource": "limits.cpu", "divisor": "1m"}));
        assert_eq!(resource_value(&container, &cpu).unwrap(), "500");
        let unset = selector(json!({"resource": "requests.memory"}));
        assert_eq!(resource_value(&container, &unset).unwrap(), "0");
    }

    #[test]
    fn mounts_follow_sub_paths_and_read_only_volumes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: subPath binds need root");
            return;
        }
        let volume = tempfile::tempdir().unwrap();
        let pod = tempfile::tempdir().unwrap();
        let mut volumes = HashMap::new();
        let prepared = |read_only| PreparedVolume {
            path: volume.path().to_owned(),
            read_only,
            sub_path_binds: volumes::sub_path_binds_dir(pod.path(), "data"),
        };
        volumes.insert("data".to_owned(), prepared(false));
        volumes.insert("config".to_owned(), prepared(true));
        let container: Container = serde_json::from_value(json!({"name": "db",
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/db", "subPathExpr": "$(POD)/db"},
            {"name": "data", "mountPath": "/backup", "readOnly": true},
            {"name": "config", "mountPath": "/etc/db"},
        ]}))
        .unwrap();
        let env = vec![("POD".to_owned(), "db-0".to_owned())];
        let mounts = volume_mounts(&container, &volumes, &env).unwrap();
        let shown: Vec<(&str, bool)> = mounts
            .iter()
            .map(|m| (m.destination.as_str(), m.read_only))
            .collect();
        assert_eq!(
            shown,
            [("/var/lib/db", false), ("/backup", true), ("/etc/db", true)]
        );
        assert!(volume.path().join("db-0/db").is_dir());
        crate::mounts::unmount_under(&volumes::pod_volumes_dir(pod.path()));
        assert_eq!(
            volume_mounts(&container, &volumes, &[]).unwrap_err().0,
            "missing value for POD"
        );
        let unknown: Container = serde_json::from_value(
            json!({"name": "db", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        )
        .unwrap();
        assert_eq!(
            volume_mounts(&unknown, &volumes, &env).unwrap_err().0,
            "cannot find volume \"nope\" to mount into container \"db\""
        );
    }

    #[tokio::test]
    async fn volume_names_that_are_not_labels_never_become_host_paths() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join("pods/uid/a/b");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let api = crate::pods::fake::FakeApi::default();
        for name in ["../../../../escaped", "..", ".", "a/b", "", "UPPER"] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [], "volumes": [{"name": name, "emptyDir": {}}]}}))
            .unwrap();
            let mut objects = ObjectSource::new(&api, "default");
            let error = prepare_volumes(
                &pod,
                &pod_dir,
                false,
                &mut objects,
                &mut HashMap::new(),
                &mut crate::projected::ServiceAccountTokens::default(),
                jiff::Timestamp::now(),
            )
            .await
            .unwrap_err();
            assert!(
                error.0.contains("invalid volume name"),
                "{name:?}: {}",
                error.0
            );
        }
        assert!(!dir.path().join("pods/escaped").exists());
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn volume_paths_cannot_escape() {
        assert!(relative("../etc/passwd").is_err());
        assert!(relative("/etc/passwd").is_err());
        assert!(relative("conf/app.yaml").is_ok());
    }
}
