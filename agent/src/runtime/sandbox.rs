//! A pod's shared namespaces (network, IPC, UTS) without a pause process: a short-lived thread
//! unshares them, sets the pod's hostname and bind-mounts each namespace onto a file in the pod
//! directory, which keeps it alive. Containers join them by path; removing the mounts frees
//! them once the last container is gone. A pod with `hostUsers: false` also has a user
//! namespace, which owns the other three (see `userns`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::spec::PodNamespaces;

const KINDS: [&str; 3] = ["net", "ipc", "uts"];

/// The namespace files of a pod directory (they may not exist yet).
pub fn namespaces(pod_dir: &Path) -> PodNamespaces {
    let dir = pod_dir.join("ns");
    PodNamespaces {
        network: dir.join("net"),
        ipc: dir.join("ipc"),
        uts: dir.join("uts"),
    }
}

fn is_mount_point(path: &Path) -> bool {
    // A bound namespace file reports the nsfs device, unlike the empty file under it.
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(file), Some(Ok(dir))) => file.dev() != dir.dev(),
        _ => false,
    }
}

/// Whether the pod's namespaces exist (all three bound, and its user namespace if it has
/// one).
pub fn exists(pod_dir: &Path) -> bool {
    let ns = namespaces(pod_dir);
    let user = super::userns::namespace_file(pod_dir);
    [ns.network, ns.ipc, ns.uts]
        .iter()
        .all(|p| is_mount_point(p))
        && (!user.exists() || is_mount_point(&user))
}

/// Creates the pod's namespaces with `hostname` and returns their paths. A `host_network` pod
/// gets its own IPC and UTS namespaces but binds the node's network namespace.
pub fn create(
    pod_dir: &Path,
    hostname: &str,
    host_network: bool,
) -> std::io::Result<PodNamespaces> {
    let dir = pod_dir.join("ns");
    std::fs::create_dir_all(&dir)?;
    remove(pod_dir)?;
    std::fs::create_dir_all(&dir)?;
    for kind in KINDS {
        std::fs::File::create(dir.join(kind))?;
    }
    let hostname = hostname.to_owned();
    let target: PathBuf = dir.clone();
    std::thread::spawn(move || -> std::io::Result<()> {
        // Only this thread moves into the new namespaces, and it ends right after.
        let mut flags = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        if !host_network {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags)?;
        nix::unistd::sethostname(&hostname)?;
        for kind in KINDS {
            mount(
                Some(Path::new(&format!("/proc/thread-self/ns/{kind}"))),
                &target.join(kind),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
        }
        Ok(())
    })
    .join()
    .expect("namespace thread does not panic")?;
    Ok(namespaces(pod_dir))
}

/// Creates the namespaces of a pod with `hostUsers: false`: its user namespace with
/// `mapping`, and network, IPC and UTS namespaces owned by it (so that its containers, which
/// enter the user namespace first, may join them and mount their own sysfs). The user
/// namespace is bound to `ns/user` beside the others.
pub fn create_in_user_namespace(
    pod_dir: &Path,
    hostname: &str,
    mapping: super::userns::IdMapping,
) -> Result<PodNamespaces, String> {
    let dir = pod_dir.join("ns");
    let prepare = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        remove(pod_dir)?;
        std::fs::create_dir_all(&dir)?;
        for kind in KINDS.iter().chain(["user"].iter()) {
            std::fs::File::create(dir.join(kind))?;
        }
        Ok(())
    };
    prepare().map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
    super::userns::unshare_pod_namespaces(&dir, hostname, mapping).inspect_err(|_| {
        let _ = remove(pod_dir);
    })?;
    Ok(namespaces(pod_dir))
}

/// Unmounts and deletes the pod's namespace files. Missing ones are fine. Id-mapped volume
/// mounts an interrupted container start left behind go too, before anyone deletes the pod
/// directory through them.
pub fn remove(pod_dir: &Path) -> std::io::Result<()> {
    for attempt in super::containers::Attempt::all(pod_dir) {
        super::userns::unmount_attempt(&attempt.dir);
    }
    let dir = pod_dir.join("ns");
    for kind in KINDS.iter().chain(["user"].iter()) {
        let path = dir.join(kind);
        if is_mount_point(&path) {
            umount2(&path, MntFlags::MNT_DETACH)?;
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
