//! Reclaiming this node's local-path volumes: the master provisions a claim of the default
//! class as a `pvc-…` directory in a node's storage directory; when the claim is deleted
//! and the PV's reclaim policy is `Delete`, the PV controller marks it `Released` and the node
//! that holds the directory removes it and then deletes the PV object, as
//! local-path-provisioner's teardown helper and the external provisioner library do.
//!
//! Every PV change also wakes pod workers that wait for a claim to be bound.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::volumes::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY};
use protocol::client::{Client, Event};

/// The node label local-path PVs name their node by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// How long a reclaim that failed waits before the next try.
const RETRY: Duration = Duration::from_secs(10);

/// A PV this node should reclaim: its name, UID and the directory to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    /// The PV's name.
    pub name: String,
    /// Its UID (the delete is conditional on it).
    pub uid: String,
    /// The volume's directory.
    pub dir: PathBuf,
}

/// Whether `pv` is a local-path volume of `node` that is `Released` with policy `Delete`;
/// then the directory to remove, which must be a direct child of `storage_dir` named `pvc-…`
/// (anything else is refused, with a warning: a PV could name any path).
pub fn reclaimable(pv: &PersistentVolume, node: &str, storage_dir: &Path) -> Option<Reclaim> {
    let name = pv.metadata.name.as_deref()?;
    let annotations = pv.metadata.annotations.as_ref()?;
    if annotations.get(PROVISIONED_BY).map(String::as_str) != Some(LOCAL_PATH_PROVISIONER) {
        return None;
    }
    let spec = pv.spec.as_ref()?;
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Released")
        || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete")
    {
        return None;
    }
    if !names_node(pv, node) {
        return None;
    }
    let path = spec
        .host_path
        .as_ref()
        .map(|h| h.path.as_str())
        .or(spec.local.as_ref().map(|l| l.path.as_str()))?;
    let Some(dir) = inside_storage_dir(Path::new(path), storage_dir) else {
        tracing::warn!(
            pv = name,
            path,
            storage = %storage_dir.display(),
            "not removing a released volume outside this node's storage directory"
        );
        return None;
    };
    Some(Reclaim {
        name: name.to_owned(),
        uid: pv.metadata.uid.clone().unwrap_or_default(),
        dir,
    })
}

/// Whether the PV's required node affinity names `node` by host name.
fn names_node(pv: &PersistentVolume, node: &str) -> bool {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|term| term.match_expressions.iter().flatten())
        .any(|expression| {
            expression.key == HOSTNAME_LABEL
                && expression.operator == "In"
                && expression.values.iter().flatten().any(|v| v == node)
        })
}

/// `path` when it is `storage_dir/pvc-…` exactly (absolute, no `.` or `..` on the way).
fn inside_storage_dir(path: &Path, storage_dir: &Path) -> Option<PathBuf> {
    let plain = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    if !plain(path) || !plain(storage_dir) {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    (path.parent()? == storage_dir && name.starts_with("pvc-")).then(|| path.to_owned())
}

/// Removes the volume's directory (not following a link in its place).
fn remove_volume_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(dir),
        Ok(_) => std::fs::remove_file(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Follows PersistentVolumes for the life of the agent: reclaims this node's released
/// local-path volumes and bumps `changes` on every PV change.
pub async fn follow_volumes(
    client: Arc<Client>,
    node: String,
    storage_dir: PathBuf,
    changes: watch::Sender<u64>,
) {
    let (queue, mut work) = mpsc::unbounded_channel::<Reclaim>();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    {
        let client = client.clone();
        let in_flight = in_flight.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            while let Some(reclaim) = work.recv().await {
                match reclaim_volume(&client, &reclaim).await {
                    Ok(()) => {
                        in_flight
                            .lock()
                            .expect("reclaim lock")
                            .remove(&reclaim.name);
                    }
                    Err(error) => {
                        tracing::warn!(pv = reclaim.name, error, "reclaim failed; trying again");
                        let queue = queue.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RETRY).await;
                            let _ = queue.send(reclaim);
                        });
                    }
                }
            }
        });
    }
    client
        .follow("/api/v1/persistentvolumes", |event| {
            let object = match event {
                Event::InitApply(object) | Event::Apply(object) => object,
                Event::Init | Event::InitDone | Event::Delete(_) => return,
            };
            changes.send_modify(|n| *n = n.wrapping_add(1));
            let Ok(pv) = serde_json::from_value::<PersistentVolume>(object.clone()) else {
                return;
            };
            if let Some(reclaim) = reclaimable(&pv, &node, &storage_dir) {
                if in_flight
                    .lock()
                    .expect("reclaim lock")
                    .insert(reclaim.name.clone())
                {
                    let _ = queue.send(reclaim);
                }
            }
        })
        .await;
}

/// Removes the directory, then the PV object (only if it is still the same PV).
async fn reclaim_volume(client: &Client, reclaim: &Reclaim) -> Result<(), String> {
    let dir = reclaim.dir.clone();
    tokio::task::spawn_blocking(move || remove_volume_dir(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("removing {}: {e}", reclaim.dir.display()))?;
    tracing::info!(pv = reclaim.name, dir = %reclaim.dir.display(), "released volume removed");
    let path = format!("/api/v1/persistentvolumes/{}", reclaim.name);
    let options = json!({"preconditions": {"uid": reclaim.uid}});
    match client.delete(&path, &options).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(404) | Some(409)) => Ok(()),
        Err(e) => Err(protocol::error::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(phase: &str, policy: &str, node: &str, path: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "uid": "u-1",
                "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER}},
            "spec": {
                "persistentVolumeReclaimPolicy": policy,
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn only_released_deletable_volumes_of_this_node_in_its_storage_dir() {
        let storage = Path::new("/var/lib/bramble/agent/storage");
        let dir = "/var/lib/bramble/agent/storage/pvc-1_shop_data";
        assert_eq!(
            reclaimable(&pv("Released", "Delete", "pi-2", dir), "pi-2", storage),
            Some(Reclaim {
                name: "pvc-1".into(),
                uid: "u-1".into(),
                dir: dir.into(),
            })
        );
        let none = |pv: PersistentVolume| reclaimable(&pv, "pi-2", storage).is_none();
        assert!(none(pv("Bound", "Delete", "pi-2", dir)));
        assert!(none(pv("Released", "Retain", "pi-2", dir)));
        assert!(none(pv("Released", "Delete", "pi-3", dir)));
        for outside in [
            "/var/lib/bramble/agent/storage",
            "/var/lib/bramble/agent/storage/pvc-1/deeper",
            "/var/lib/bramble/agent/storage/../pvc-1",
            "/var/lib/bramble/agent/storage/data",
            "/etc/pvc-1",
            "storage/pvc-1",
        ] {
            assert!(none(pv("Released", "Delete", "pi-2", outside)), "{outside}");
        }
        let mut other = pv("Released", "Delete", "pi-2", dir);
        other.metadata.annotations = Some(
            [(
                PROVISIONED_BY.to_owned(),
                "rancher.io/local-path".to_owned(),
            )]
            .into(),
        );
        assert!(none(other));
    }

    #[test]
    fn a_volume_directory_goes_but_a_link_in_its_place_is_not_followed() {
        let storage = tempfile::tempdir().unwrap();
        let dir = storage.path().join("pvc-1_shop_data");
        std::fs::create_dir_all(dir.join("nested")).unwrap();
        std::fs::write(dir.join("nested/file"), b"x").unwrap();
        remove_volume_dir(&dir).unwrap();
        assert!(!dir.exists());
        remove_volume_dir(&dir).unwrap();
        let precious = tempfile::tempdir().unwrap();
        std::fs::write(precious.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(precious.path(), &dir).unwrap();
        remove_volume_dir(&dir).unwrap();
        assert!(precious.path().join("keep").exists());
        assert!(std::fs::symlink_metadata(&dir).is_err());
    }
}
