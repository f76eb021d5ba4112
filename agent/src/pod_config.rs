//! What a container sees besides its image: environment variables (literal, `$(VAR)`
//! references, config maps, secrets, the downward API) and volumes (`emptyDir`, `hostPath`,
//! `configMap`, `secret`), written the way kubelet writes them.
//!
//! Config map and secret volumes use kubelet's atomic layout: the files live in a
//! timestamped directory, `..data` is a symlink to it, and each key is a symlink through
//! `..data`. An update writes a new directory and swaps `..data` with one rename, so a reader
//! inside the container sees either the old files or the new ones, never a mix.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::pods::{ApiError, PodApi};
use crate::runtime::spec::{expand, BindMount};
use protocol::quantity;

/// A container's configuration cannot be built yet; kubelet reports this as
/// `CreateContainerConfigError` and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Fetches the config maps and secrets a pod refers to, once per sync.
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

    /// The config map or secret, `None` when it does not exist.
    pub async fn get(&mut self, kind: &str, name: &str) -> Result<Option<Value>, ConfigError> {
        let key = (kind.to_owned(), name.to_owned());
        if let Some(found) = self.cache.get(&key) {
            return Ok(found.clone());
        }
        let found = match self.api.get_object(&self.namespace, kind, name).await {
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

    /// The string data of a config map or (decoded) secret.
    pub async fn data(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        let Some(object) = self.get(kind, name).await? else {
            return Ok(None);
        };
        let mut data = BTreeMap::new();
        if kind == "secrets" {
            for (key, value) in object["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap_or(""))
                    .map_err(|_| {
                        ConfigError(format!("secret {name:?} key {key:?} is not base64"))
                    })?;
                data.insert(key.clone(), bytes);
            }
            for (key, value) in object["stringData"].as_object().into_iter().flatten() {
                data.insert(
                    key.clone(),
                    value.as_str().unwrap_or("").as_bytes().to_vec(),
                );
            }
        } else {
            for (key, value) in object["data"].as_object().into_iter().flatten() {
                data.insert(
                    key.clone(),
                    value.as_str().unwrap_or("").as_bytes().to_vec(),
                );
            }
            for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap_or(""))
                    .unwrap_or_default();
                data.insert(key.clone(), bytes);
            }
        }
        Ok(Some(data))
    }
}

fn kind_name(kind: &str) -> &'static str {
    if kind == "secrets" {
        "secret"
    } else {
        "configmap"
    }
}

/// The pod fields the downward API can expose.
pub struct PodFacts<'a> {
    /// The pod object.
    pub pod: &'a Value,
    /// The pod's IP.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// Variables for the services the pod can see (they come before the container's own,
    /// which win).
    pub service_env: Vec<(String, String)>,
}

fn field_value(facts: &PodFacts, path: &str) -> Result<String, ConfigError> {
    let meta = &facts.pod["metadata"];
    let lookup = |map: &Value, key: &str| map[key].as_str().unwrap_or("").to_owned();
    let value = match path {
        "metadata.name" => lookup(meta, "name"),
        "metadata.namespace" => lookup(meta, "namespace"),
        "metadata.uid" => lookup(meta, "uid"),
        "spec.nodeName" => facts.pod["spec"]["nodeName"].as_str().unwrap_or("").into(),
        "spec.serviceAccountName" => facts.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .into(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => {
            let inside = |prefix: &str| {
                other
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix("']"))
                    .map(str::to_owned)
            };
            if let Some(key) = inside("metadata.labels['") {
                lookup(&meta["labels"], &key)
            } else if let Some(key) = inside("metadata.annotations['") {
                lookup(&meta["annotations"], &key)
            } else if other == "metadata.labels" || other == "metadata.annotations" {
                let map = &meta[other.trim_start_matches("metadata.")];
                map.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            } else {
                return Err(ConfigError(format!("unsupported fieldRef {other:?}")));
            }
        }
    };
    Ok(value)
}

fn resource_value(container: &Value, reference: &Value) -> Result<String, ConfigError> {
    let resource = reference["resource"].as_str().unwrap_or("");
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {resource:?}")))?;
    let amount = container["resources"][section][name]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            container["resources"][section][name]
                .as_f64()
                .map(|n| n.to_string())
        });
    let divisor = reference["divisor"]
        .as_str()
        .and_then(quantity::parse)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    let Some(amount) = amount.and_then(|a| quantity::parse(&a)) else {
        // An absent limit or request reads as 0 here; upstream reports allocatable for limits.
        return Ok("0".into());
    };
    Ok(((amount / divisor).ceil() as i64).to_string())
}

/// The container's environment after the image's: `NAME=value` pairs in Kubernetes order
/// (envFrom first, then env, later entries winning, `$(VAR)` expanded against earlier ones).
pub async fn container_env(
    container: &Value,
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
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or("");
        let (kind, reference) = if source.get("secretRef").is_some() {
            ("secrets", &source["secretRef"])
        } else {
            ("configmaps", &source["configMapRef"])
        };
        let name = reference["name"].as_str().unwrap_or("");
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
            None if reference["optional"].as_bool() == Some(true) => {}
            None => {
                return Err(ConfigError(format!(
                    "{} \"{name}\" not found",
                    kind_name(kind)
                )))
            }
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        let Some(name) = entry["name"].as_str() else {
            continue;
        };
        let value = if let Some(value) = entry.get("value").and_then(Value::as_str) {
            Some(expand(value, &vars))
        } else if let Some(from) = entry.get("valueFrom") {
            if let Some(field) = from.get("fieldRef") {
                Some(field_value(
                    facts,
                    field["fieldPath"].as_str().unwrap_or(""),
                )?)
            } else if let Some(resource) = from.get("resourceFieldRef") {
                Some(resource_value(container, resource)?)
            } else {
                let (kind, reference) = if from.get("secretKeyRef").is_some() {
                    ("secrets", &from["secretKeyRef"])
                } else {
                    ("configmaps", &from["configMapKeyRef"])
                };
                let object = reference["name"].as_str().unwrap_or("");
                let key = reference["key"].as_str().unwrap_or("");
                let optional = reference["optional"].as_bool() == Some(true);
                match objects.data(kind, object).await? {
                    Some(data) => match data.get(key) {
                        Some(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {key} in {} {}/{object}",
                                kind_name(kind),
                                facts.pod["metadata"]["namespace"].as_str().unwrap_or("")
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
            set(&mut vars, name.to_owned(), value);
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A path relative to a volume, refusing absolute paths and `..`.
fn relative(path: &str) -> Result<PathBuf, ConfigError> {
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

/// Prepares every volume of the pod under `pod_dir/volumes` and returns the host path of each.
/// Config map and secret volumes are rewritten when their object changed.
pub async fn prepare_volumes(
    pod: &Value,
    pod_dir: &Path,
    objects: &mut ObjectSource<'_>,
) -> Result<HashMap<String, PathBuf>, ConfigError> {
    let mut paths = HashMap::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or("");
        let dir = pod_dir.join("volumes").join(name);
        let io = |e: std::io::Error| ConfigError(format!("volume {name:?}: {e}"));
        if volume.get("emptyDir").is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            paths.insert(name.to_owned(), dir);
        } else if let Some(host) = volume.get("hostPath") {
            let path = PathBuf::from(host["path"].as_str().unwrap_or(""));
            match host["type"].as_str().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io)?,
                "FileOrCreate" if !path.exists() => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::write(&path, b"").map_err(io)?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath {} is not a directory",
                        path.display()
                    )))
                }
                "File" if !path.is_file() => {
                    return Err(ConfigError(format!(
                        "hostPath {} is not a file",
                        path.display()
                    )))
                }
                _ => {}
            }
            paths.insert(name.to_owned(), path);
        } else if volume.get("configMap").is_some() || volume.get("secret").is_some() {
            let (kind, source, object) = if let Some(secret) = volume.get("secret") {
                (
                    "secrets",
                    secret,
                    secret["secretName"].as_str().unwrap_or(""),
                )
            } else {
                let cm = &volume["configMap"];
                ("configmaps", cm, cm["name"].as_str().unwrap_or(""))
            };
            let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            let optional = source["optional"].as_bool() == Some(true);
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
            match source["items"].as_array() {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().unwrap_or("");
                        let path = relative(item["path"].as_str().unwrap_or(key))?;
                        let mode = item["mode"]
                            .as_u64()
                            .map(|m| m as u32)
                            .unwrap_or(default_mode);
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
            write_atomic_dir(&dir, &files).map_err(io)?;
            paths.insert(name.to_owned(), dir);
        } else {
            tracing::debug!(volume = name, "volume type not supported; mounted empty");
            std::fs::create_dir_all(&dir).map_err(io)?;
            paths.insert(name.to_owned(), dir);
        }
    }
    Ok(paths)
}

/// The bind mounts of a container's `volumeMounts`.
pub fn volume_mounts(
    container: &Value,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<BindMount>, ConfigError> {
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().unwrap_or("");
        let source = volumes
            .get(name)
            .ok_or_else(|| ConfigError(format!("volume {name:?} is not defined in the pod")))?;
        let source = match mount["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let path = source.join(relative(sub)?);
                if !path.exists() {
                    std::fs::create_dir_all(&path)
                        .map_err(|e| ConfigError(format!("subPath {sub:?}: {e}")))?;
                }
                path
            }
            None => source.clone(),
        };
        mounts.push(BindMount {
            destination: mount["mountPath"].as_str().unwrap_or("/").to_owned(),
            source,
            read_only: mount["readOnly"].as_bool() == Some(true),
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
        let pod = json!({"metadata": {"name": "web-1", "namespace": "demo",
            "labels": {"app": "web"}}, "spec": {"nodeName": "pi-2"}});
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "10.42.1.5".into(),
            host_ip: "10.99.0.12".into(),
            service_env: Vec::new(),
        };
        assert_eq!(field_value(&facts, "metadata.name").unwrap(), "web-1");
        assert_eq!(field_value(&facts, "spec.nodeName").unwrap(), "pi-2");
        assert_eq!(field_value(&facts, "status.podIP").unwrap(), "10.42.1.5");
        assert_eq!(
            field_value(&facts, "metadata.labels['app']").unwrap(),
            "web"
        );
        assert!(field_value(&facts, "spec.bogus").is_err());
        let container = json!({"resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}});
        let mem = json!({"resource": "limits.memory", "divisor": "1Mi"});
        assert_eq!(resource_value(&container, &mem).unwrap(), "128");
        let cpu = json!({"resource": "limits.cpu", "divisor": "1m"});
        assert_eq!(resource_value(&container, &cpu).unwrap(), "500");
    }

    #[test]
    fn volume_paths_cannot_escape() {
        assert!(relative("../etc/passwd").is_err());
        assert!(relative("/etc/passwd").is_err());
        assert!(relative("conf/app.yaml").is_ok());
    }
}
