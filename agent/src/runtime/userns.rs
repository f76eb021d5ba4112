//! Pods with `hostUsers: false`: one user namespace per pod, its root mapped to an unprivileged
//! range of the node's IDs, and files still owned as the image and the volumes intend.
//!
//! **Ranges.** As kubelet (`pkg/kubelet/userns/userns_manager.go`): every pod gets 65536 IDs
//! starting at a multiple of 65536; the first block (the node's own IDs, 0‥65535) is never
//! handed out. The pod's choice is kept in its directory as kubelet's `userns` file
//! (`{"uidMappings":[{"hostId":…,"containerId":0,"length":65536}],"gidMappings":[…]}`), so it
//! survives agent restarts, and the range is free again once the pod directory is gone: the
//! allocator looks at the `userns` files of every pod directory, there is no other record.
//!
//! **Namespaces.** The pod's user namespace is created together with its network, IPC and UTS
//! namespaces, which it owns (as containerd 2.x does for a sandbox), and bound to `ns/user` in
//! the pod directory beside them. Containers join all four by path. This order is forced by
//! youki: its intermediate process enters the user namespace *first* and joins the other
//! namespaces afterwards, and joining a network namespace owned by the node's user namespace
//! from inside the pod's is refused (setns needs CAP_SYS_ADMIN over the namespace's owner). A
//! network namespace owned by the pod's user namespace also lets the container mount its own
//! sysfs, where runc has to bind-mount the node's `/sys` instead.
//!
//! **Files.** youki 0.7 ignores the id-mapped mount fields of the OCI spec, so the agent makes
//! the mounts itself before the container starts (`mount_setattr(2)`, `MOUNT_ATTR_IDMAP`,
//! Linux ≥ 5.12 and a file system that supports it): each image layer is an id-mapped,
//! detached clone under the overlay (on-disk 0 appears as the pod's first host ID), while the
//! upper directory is plain, so a file the container's root writes is owned by the pod's host
//! ID on the node, as with containerd's id-mapped snapshots. Volumes and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are id-mapped clones attached under
//! the attempt's `idmapped/` directory only while the container starts: its mount namespace
//! has its own copies once it runs, and [`unmount_attempt`] detaches them from the node's
//! (again in `Attempt::remove` and `sandbox::remove`, after an interrupted start), since
//! deleting a directory through them would delete the volumes' files.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::spec::BindMount;

/// How many IDs a pod gets (kubelet's `userNsLength`).
pub const RANGE_LENGTH: u32 = 1 << 16;

/// The pod directory's record of its range (kubelet's name).
pub const MAPPINGS_FILE: &str = "userns";

/// Where the pod's user namespace is bound, inside the pod directory.
pub fn namespace_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("ns").join("user")
}

/// A pod's mapping: container IDs `0..length` are host IDs `host_id..host_id + length`, for
/// users and groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// The first host ID (container ID 0).
    pub host_id: u32,
    /// How many IDs.
    pub length: u32,
}

/// What a container of a user-namespaced pod needs: the namespace to join and its mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    /// The pod's bound user namespace (`ns/user`).
    pub path: PathBuf,
    /// The pod's mapping.
    pub mapping: IdMapping,
}

impl UserNamespace {
    /// The user namespace of a pod directory whose range is `mapping`.
    pub fn of_pod(pod_dir: &Path, mapping: IdMapping) -> UserNamespace {
        UserNamespace {
            path: namespace_file(pod_dir),
            mapping,
        }
    }
}

/// One line of kubelet's mappings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileMapping {
    host_id: u32,
    container_id: u32,
    length: u32,
}

/// kubelet's `userns` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingsFile {
    #[serde(default)]
    uid_mappings: Vec<FileMapping>,
    #[serde(default)]
    gid_mappings: Vec<FileMapping>,
}

impl IdMapping {
    /// The mappings file's contents, as kubelet writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let line = FileMapping {
            host_id: self.host_id,
            container_id: 0,
            length: self.length,
        };
        let file = MappingsFile {
            uid_mappings: vec![line],
            gid_mappings: vec![line],
        };
        serde_json::to_vec(&file).expect("mappings serialize")
    }

    /// Reads a mappings file, with kubelet's checks (one mapping, the same for users and
    /// groups, root mapped, a whole aligned range).
    pub fn from_json(content: &[u8]) -> Result<IdMapping, String> {
        let file: MappingsFile =
            serde_json::from_slice(content).map_err(|e| format!("can't parse file: {e}"))?;
        if file.uid_mappings.len() != 1 {
            return Err(
                "invalid user namespace configuration: no more than one mapping allowed.".into(),
            );
        }
        if file.uid_mappings.len() != file.gid_mappings.len() {
            return Err(
                "invalid user namespace configuration: GID and UID mappings should be identical."
                    .into(),
            );
        }
        let (uid, gid) = (file.uid_mappings[0], file.gid_mappings[0]);
        if uid != gid {
            return Err(
                "invalid user namespace configuration: GID and UID mapping should be identical"
                    .into(),
            );
        }
        if uid.container_id != 0 {
            return Err("invalid user namespace configuration: UID 0 must be mapped".into());
        }
        if uid.length != RANGE_LENGTH {
            return Err(format!("wrong user namespace length {}", uid.length));
        }
        if uid.host_id % RANGE_LENGTH != 0 || uid.host_id == 0 {
            return Err(format!(
                "wrong user namespace offset specified {}",
                uid.host_id
            ));
        }
        Ok(IdMapping {
            host_id: uid.host_id,
            length: uid.length,
        })
    }

    /// The host ID a container ID maps to, if it is in the range.
    pub fn host_id_of(&self, container_id: u32) -> Option<u32> {
        (container_id < self.length).then(|| self.host_id + container_id)
    }

    /// The slot of the range (its first ID / 65536).
    fn slot(&self) -> u32 {
        self.host_id / RANGE_LENGTH
    }
}

/// The highest slot: the last block would end at 2^32, and ID 2^32−1 is not a valid ID.
const LAST_SLOT: u32 = u32::MAX / RANGE_LENGTH - 1;

/// Checks that an unprivileged user may pass every directory above `pod_dir`: a container
/// with its own user namespace is an unprivileged ID on the node, and its runtime reaches the
/// root file system beneath the pod's directory by path.
pub fn check_searchable(pod_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in pod_dir.ancestors().skip(1) {
        let Ok(metadata) = std::fs::metadata(dir) else {
            continue;
        };
        if metadata.permissions().mode() & 0o001 == 0 {
            return Err(format!(
                "user namespaces are not supported under {}: a pod's unprivileged root cannot \
                 pass {} (mode {:o}); make it searchable (chmod o+x) or move the data directory",
                pod_dir.display(),
                dir.display(),
                metadata.permissions().mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Serializes allocations: two pods must never pick the same free slot.
static ALLOCATION: Mutex<()> = Mutex::new(());

/// The pod's range: the one its directory records, else the lowest free one, recorded before
/// it is returned. `pods_dir` holds every pod directory of the node (`pod_dir` among them).
pub fn mapping_for_pod(pods_dir: &Path, pod_dir: &Path) -> Result<IdMapping, String> {
    let _guard = ALLOCATION.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mapping) = recorded(pod_dir)? {
        return Ok(mapping);
    }
    let mut used: Vec<u32> = std::fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path() != pod_dir)
        // A file that no longer parses still holds its slot if it names one.
        .filter_map(|entry| recorded(&entry.path()).ok().flatten())
        .map(|mapping| mapping.slot())
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut slot = 1;
    for taken in used {
        if taken == slot {
            slot += 1;
        } else if taken > slot {
            break;
        }
    }
    if slot > LAST_SLOT {
        return Err("could not find an empty slot to allocate a user namespace".into());
    }
    let mapping = IdMapping {
        host_id: slot * RANGE_LENGTH,
        length: RANGE_LENGTH,
    };
    std::fs::create_dir_all(pod_dir)
        .map_err(|e| format!("cannot create {}: {e}", pod_dir.display()))?;
    let file = pod_dir.join(MAPPINGS_FILE);
    super::monitor::write_atomic(&file, &mapping.to_json())
        .and_then(|()| std::fs::File::open(pod_dir)?.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(mapping)
}

/// The range a pod directory records, if any.
pub fn recorded(pod_dir: &Path) -> Result<Option<IdMapping>, String> {
    let file = pod_dir.join(MAPPINGS_FILE);
    match std::fs::read(&file) {
        Ok(content) if content.is_empty() => Ok(None),
        Ok(content) => IdMapping::from_json(&content)
            .map(Some)
            .map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// The words every refusal starts with.
fn unsupported(what: impl std::fmt::Display) -> String {
    format!("user namespaces are not supported on this node: {what}")
}

/// Adds the pod's user namespace to a container's OCI spec: joined by path, with the mapping
/// written out as the spec expects it beside a user namespace.
pub fn add_to_spec(spec: &mut Value, userns: &UserNamespace) {
    let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        namespaces.insert(0, json!({"type": "user", "path": userns.path}));
    }
    let mapping = json!([{
        "containerID": 0,
        "hostID": userns.mapping.host_id,
        "size": userns.mapping.length,
    }]);
    linux.insert("uidMappings".into(), mapping.clone());
    linux.insert("gidMappings".into(), mapping);
    // The kernel refuses a ping group range with groups the namespace does not map (EINVAL),
    // so the pod-wide default `0 2147483647` ends at the pod's last group.
    let last_gid = userns.mapping.length.saturating_sub(1);
    if let Some(range) = linux
        .get_mut("sysctl")
        .and_then(|s| s.get_mut("net.ipv4.ping_group_range"))
    {
        let bounds: Vec<u64> = range
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [low, high] = bounds[..] {
            if high > u64::from(last_gid) {
                *range = json!(format!("{} {last_gid}", low.min(u64::from(last_gid))));
            }
        }
    }
}

/// Creates a user namespace with `mapping` that owns new network (unless `host_network`),
/// IPC and UTS namespaces with `hostname`, and bind-mounts each onto `dir/<kind>` (`user`,
/// `net`, `ipc`, `uts`; the files must exist).
///
/// A multi-threaded process cannot enter a new user namespace, so a forked child does it:
/// it only makes system calls (no allocation) until it exits.
pub fn unshare_pod_namespaces(
    dir: &Path,
    hostname: &str,
    mapping: IdMapping,
) -> Result<(), String> {
    let hostname = CString::new(hostname).map_err(|_| "the host name holds a NUL".to_string())?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    // SAFETY: the child calls only async-signal-safe system calls on memory prepared before
    // the fork, then `_exit`s.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => unsafe {
            // The parent's ends: holding them would keep the child from seeing it finish.
            libc::close(ready_r.as_raw_fd());
            libc::close(done_w.as_raw_fd());
            let flags =
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            let mut status = b'0';
            if libc::unshare(flags) != 0 {
                status = b'u';
            } else if libc::sethostname(hostname.as_ptr(), hostname.as_bytes().len()) != 0 {
                status = b'h';
            }
            let errno = *libc::__errno_location();
            let report = [status, errno as u8];
            libc::write(ready_w.as_raw_fd(), report.as_ptr().cast(), 2);
            // Wait until the parent has bound the namespaces (it closes its end).
            let mut byte = 0u8;
            libc::read(done_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        },
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("cannot fork: {e}")),
    };
    drop(ready_w);
    drop(done_r);
    let result = bind_child_namespaces(child, &ready_r, dir, mapping);
    drop(done_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

fn bind_child_namespaces(
    child: nix::unistd::Pid,
    ready: &OwnedFd,
    dir: &Path,
    mapping: IdMapping,
) -> Result<(), String> {
    let mut report = [0u8; 2];
    let read = nix::unistd::read(ready.as_raw_fd(), &mut report)
        .map_err(|e| format!("cannot hear from the namespace child: {e}"))?;
    let errno = nix::errno::Errno::from_raw(report[1] as i32);
    match (read, report[0]) {
        (2, b'0') => {}
        (2, b'u') => return Err(unsupported(format!("cannot create one: {errno}"))),
        (2, _) => return Err(format!("cannot set the pod's host name: {errno}")),
        _ => return Err("the namespace child ended early".into()),
    }
    let line = format!("0 {} {}\n", mapping.host_id, mapping.length);
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{child}/{map}"), &line)
            .map_err(|e| unsupported(format!("cannot write the {map} {line:?}: {e}")))?;
    }
    for kind in ["user", "net", "ipc", "uts"] {
        let source = PathBuf::from(format!("/proc/{child}/ns/{kind}"));
        mount(
            Some(&source),
            &dir.join(kind),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot bind the pod's {kind} namespace: {e}"))?;
    }
    Ok(())
}

// The new mount API (Linux 5.2, id-mapping 5.12). libc has the syscall numbers, not all flags.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` (the first version, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn path_cstring(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL", path.display()))
}

/// A detached copy of the mount tree at `path`, id-mapped through the user namespace `userns`:
/// an ID `n` on disk appears as whatever `n` maps to in `userns` (0 → the pod's first host ID).
pub fn idmapped_clone(path: &Path, userns: &std::fs::File) -> Result<OwnedFd, String> {
    let c_path = path_cstring(path)?;
    // SAFETY: plain system calls on valid, NUL-terminated paths and a live struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ENOSYS) => unsupported(format!("open_tree: {error}")),
            _ => format!("cannot clone the mount at {}: {error}", path.display()),
        });
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: as above; the size is the struct's.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        return Err(unsupported(format!(
            "cannot id-map the mount at {}: {error}",
            path.display()
        )));
    }
    Ok(tree)
}

/// Mounts a container's overlay root at `rootfs` for a user-namespaced pod: its layers
/// (`layers`, lowest first) id-mapped, its upper directory owned by the pod's root so the
/// container's root owns `/` and what it writes lands in `upper` with the pod's host IDs.
pub fn mount_rootfs(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    rootfs: &Path,
    userns: &UserNamespace,
) -> Result<(), String> {
    let ns = std::fs::File::open(&userns.path)
        .map_err(|e| format!("cannot open the pod's user namespace: {e}"))?;
    let clones: Vec<OwnedFd> = layers
        .iter()
        .map(|layer| idmapped_clone(layer, &ns))
        .collect::<Result<_, _>>()?;
    let root = nix::unistd::Uid::from_raw(userns.mapping.host_id);
    let group = nix::unistd::Gid::from_raw(userns.mapping.host_id);
    nix::unistd::chown(upper, Some(root), Some(group))
        .map_err(|e| format!("cannot hand {} to the pod: {e}", upper.display()))?;
    // The detached clones are named through this process's descriptors; the overlay keeps
    // its own references, so they may close right after.
    let pid = std::process::id();
    let layers: Vec<String> = clones
        .iter()
        .map(|fd| format!("/proc/{pid}/fd/{}", fd.as_raw_fd()))
        .collect();
    super::containers::mount_overlay(&layers, upper, work, rootfs)
        .map_err(|e| unsupported(format!("cannot mount an overlay on id-mapped layers: {e}")))
}

/// The user namespace of a pod directory: `None` for a pod in the node's user namespace (no
/// mappings file), an error when the file is there but the namespace is not bound.
pub fn of_pod(pod_dir: &Path) -> Result<Option<UserNamespace>, String> {
    let Some(mapping) = recorded(pod_dir)? else {
        return Ok(None);
    };
    let path = namespace_file(pod_dir);
    if !path.exists() || !super::sandbox::exists(pod_dir) {
        return Err(format!(
            "the pod's user namespace ({}) is not there",
            path.display()
        ));
    }
    Ok(Some(UserNamespace { path, mapping }))
}

/// Prepares an attempt (`pods/<uid>/containers/<name>.<n>`, with `rootfs`, `upper` and
/// `work` made) of a user-namespaced pod: mounts its id-mapped root file system and turns
/// `mounts` into id-mapped ones. Returns `None`, having done nothing, for other pods.
pub fn prepare_attempt(
    attempt_dir: &Path,
    layers: &[PathBuf],
    mounts: &mut [BindMount],
) -> Result<Option<UserNamespace>, String> {
    let Some(pod_dir) = attempt_dir.parent().and_then(Path::parent) else {
        return Ok(None);
    };
    let Some(userns) = of_pod(pod_dir)? else {
        return Ok(None);
    };
    mount_rootfs(
        layers,
        &attempt_dir.join("upper"),
        &attempt_dir.join("work"),
        &attempt_dir.join("rootfs"),
        &userns,
    )?;
    idmap_bind_mounts(attempt_dir, mounts, &userns)?;
    Ok(Some(userns))
}

/// The directory of an attempt that holds its id-mapped volume mounts.
fn staging_dir(attempt_dir: &Path) -> PathBuf {
    attempt_dir.join("idmapped")
}

/// Replaces each bind mount's source by an id-mapped clone attached under the attempt's
/// `idmapped/` directory (the container binds that instead).
pub fn idmap_bind_mounts(
    attempt_dir: &Path,
    mounts: &mut [BindMount],
    userns: &UserNamespace,
) -> Result<(), String> {
    if mounts.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(&userns.path)
        .map_err(|e| format!("cannot open the pod's user namespace: {e}"))?;
    let staging = staging_dir(attempt_dir);
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    for (index, bind) in mounts.iter_mut().enumerate() {
        let target = staging.join(index.to_string());
        let is_dir = std::fs::metadata(&bind.source)
            .map_err(|e| format!("cannot mount {}: {e}", bind.source.display()))?
            .is_dir();
        if is_dir {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        }
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let tree = idmapped_clone(&bind.source, &ns)?;
        let c_target = path_cstring(&target)?;
        let empty = c"";
        // SAFETY: a plain system call on valid descriptors and paths.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c_target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved != 0 {
            return Err(format!(
                "cannot attach the id-mapped {}: {}",
                bind.source.display(),
                std::io::Error::last_os_error()
            ));
        }
        bind.source = target;
    }
    Ok(())
}

/// Detaches the attempt's id-mapped volume mounts. It must run before the attempt's directory
/// is deleted: deleting through them would delete the volumes' files.
pub fn unmount_attempt(attempt_dir: &Path) {
    let staging = staging_dir(attempt_dir);
    let Ok(entries) = std::fs::read_dir(&staging) else {
        return;
    };
    for entry in entries.flatten() {
        // Stacked mounts (a retried start) come off one by one.
        while umount2(&entry.path(), MntFlags::MNT_DETACH).is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(pods: &Path, uid: &str) -> PathBuf {
        let dir = pods.join(uid);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_pod_directory_under_a_private_directory_is_refused_with_the_way_out() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let private = root.path().join("private");
        let pod_dir = private.join("pods/p1");
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let refusal = check_searchable(&pod_dir).unwrap_err();
        assert!(
            refusal.contains(&format!("cannot pass {} (mode 700)", private.display())),
            "{refusal}"
        );
        assert!(refusal.contains("chmod o+x"), "{refusal}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_searchable(&pod_dir).unwrap();
    }

    #[test]
    fn pods_get_the_lowest_free_range_above_the_nodes_ids_and_keep_it() {
        let pods = tempfile::tempdir().unwrap();
        let a = pod(pods.path(), "a");
        let b = pod(pods.path(), "b");
        let c = pod(pods.path(), "c");
        let first = mapping_for_pod(pods.path(), &a).unwrap();
        assert_eq!(
            first,
            IdMapping {
                host_id: 65536,
                length: 65536
            }
        );
        let second = mapping_for_pod(pods.path(), &b).unwrap();
        assert_eq!(second.host_id, 2 * 65536);
        // Asked again (an agent restart reads the same files): the same range.
        assert_eq!(mapping_for_pod(pods.path(), &a).unwrap(), first);
        assert_eq!(recorded(&b).unwrap(), Some(second));
        // The first pod goes: its range is the next one handed out.
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(mapping_for_pod(pods.path(), &c).unwrap(), first);
        let d = pod(pods.path(), "d");
        assert_eq!(mapping_for_pod(pods.path(), &d).unwrap().host_id, 3 * 65536);
        assert_eq!(recorded(&pod(pods.path(), "e")).unwrap(), None);
    }

    #[test]
    fn a_slot_in_the_middle_is_reused() {
        let pods = tempfile::tempdir().unwrap();
        for (name, slot) in [("x", 1u32), ("y", 3)] {
            let dir = pod(pods.path(), name);
            let mapping = IdMapping {
                host_id: slot * RANGE_LENGTH,
                length: RANGE_LENGTH,
            };
            std::fs::write(dir.join(MAPPINGS_FILE), mapping.to_json()).unwrap();
        }
        let z = pod(pods.path(), "z");
        assert_eq!(mapping_for_pod(pods.path(), &z).unwrap().host_id, 2 * 65536);
        let w = pod(pods.path(), "w");
        assert_eq!(mapping_for_pod(pods.path(), &w).unwrap().host_id, 4 * 65536);
    }

    #[test]
    fn the_mappings_file_is_kubelets() {
        let mapping = IdMapping {
            host_id: 131072,
            length: 65536,
        };
        let text = String::from_utf8(mapping.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"uidMappings":[{"hostId":131072,"containerId":0,"length":65536}],"gidMappings":[{"hostId":131072,"containerId":0,"length":65536}]}"#
        );
        assert_eq!(IdMapping::from_json(text.as_bytes()).unwrap(), mapping);
        assert_eq!(mapping.host_id_of(1000), Some(132072));
        assert_eq!(mapping.host_id_of(65536), None);
    }

    #[test]
    fn bad_mappings_files_are_refused_with_kubelets_words() {
        let cases = [
            ("{", "can't parse file"),
            (
                r#"{"uidMappings":[],"gidMappings":[]}"#,
                "no more than one mapping allowed",
            ),
            (
                r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":65536}],"gidMappings":[]}"#,
                "GID and UID mappings should be identical.",
            ),
            (
                r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":65536}],"gidMappings":[{"hostId":131072,"containerId":0,"length":65536}]}"#,
                "GID and UID mapping should be identical",
            ),
            (
                r#"{"uidMappings":[{"hostId":65536,"containerId":1,"length":65536}],"gidMappings":[{"hostId":65536,"containerId":1,"length":65536}]}"#,
                "UID 0 must be mapped",
            ),
            (
                r#"{"uidMappings":[{"hostId":65536,"containerId":0,"length":10}],"gidMappings":[{"hostId":65536,"containerId":0,"length":10}]}"#,
                "wrong user namespace length 10",
            ),
            (
                r#"{"uidMappings":[{"hostId":1000,"containerId":0,"length":65536}],"gidMappings":[{"hostId":1000,"containerId":0,"length":65536}]}"#,
                "wrong user namespace offset specified 1000",
            ),
            (
                r#"{"uidMappings":[{"hostId":0,"containerId":0,"length":65536}],"gidMappings":[{"hostId":0,"containerId":0,"length":65536}]}"#,
                "wrong user namespace offset specified 0",
            ),
        ];
        for (text, expected) in cases {
            let error = IdMapping::from_json(text.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    /// Runs `write` as root of the user namespace bound at `userns` in a forked child; returns
    /// whether it succeeded.
    fn as_pod_root(userns: &Path, file: &Path) -> bool {
        let ns = std::fs::File::open(userns).unwrap();
        let path = path_cstring(file).unwrap();
        // SAFETY: the child makes plain system calls on memory prepared before the fork.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let mut code = 1;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) == 0
                    && libc::setresgid(0, 0, 0) == 0
                    && libc::setresuid(0, 0, 0) == 0
                {
                    let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                    if fd >= 0 && libc::write(fd, b"x".as_ptr().cast(), 1) == 1 {
                        code = 0;
                    }
                }
                libc::_exit(code);
            },
            nix::unistd::ForkResult::Parent { child } => matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ),
        }
    }

    #[test]
    fn a_pods_namespaces_and_id_mapped_files_work_on_this_kernel() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let work = tempfile::tempdir().unwrap();
        // The pod's root must be able to walk to its files, as under the agent's data dir.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pods = work.path().join("pods");
        let pod_dir = pod(&pods, "uid-1");
        let mapping = mapping_for_pod(&pods, &pod_dir).unwrap();
        let namespaces =
            super::super::sandbox::create_in_user_namespace(&pod_dir, "web-1", mapping).unwrap();
        let userns = of_pod(&pod_dir).unwrap().expect("a user-namespaced pod");
        assert_eq!(userns.mapping, mapping);
        // The network namespace belongs to the pod's user namespace.
        let net = std::fs::File::open(&namespaces.network).unwrap();
        // SAFETY: NS_GET_USERNS on an open namespace file returns a new descriptor.
        let owner = unsafe { libc::ioctl(net.as_raw_fd(), 0xb701 as _) };
        assert!(owner >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: the ioctl's new descriptor is ours.
        let owner = unsafe { OwnedFd::from_raw_fd(owner) };
        let owner_ino = std::fs::metadata(format!("/proc/self/fd/{}", owner.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(owner_ino, std::fs::metadata(&userns.path).unwrap().ino());

        // An image layer with a root-owned file and one owned by 1000.
        let attempt = pod_dir.join("containers/web.0");
        let layer = work.path().join("layer");
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join("root-file"), "r").unwrap();
        std::fs::write(layer.join("user-file"), "u").unwrap();
        nix::unistd::chown(
            &layer.join("user-file"),
            Some(1000.into()),
            Some(1000.into()),
        )
        .unwrap();
        let volume = work.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        for dir in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(attempt.join(dir)).unwrap();
        }
        let mut mounts = vec![BindMount {
            destination: "/data".into(),
            source: volume.clone(),
            read_only: false,
        }];
        let prepared = prepare_attempt(&attempt, std::slice::from_ref(&layer), &mut mounts);
        let result = std::panic::catch_unwind(|| {
            assert_eq!(prepared.unwrap(), Some(userns.clone()));
            let rootfs = attempt.join("rootfs");
            let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
            assert_eq!(owner(&rootfs.join("root-file")), mapping.host_id);
            assert_eq!(owner(&rootfs.join("user-file")), mapping.host_id + 1000);
            assert_eq!(owner(&rootfs), mapping.host_id);
            // The pod's root writes to its root file system: the upper directory has the
            // file with the pod's host ID.
            assert!(as_pod_root(&userns.path, &rootfs.join("new-file")));
            assert_eq!(owner(&attempt.join("upper/new-file")), mapping.host_id);
            // Its volume is id-mapped too: what it writes is root's on disk.
            assert_eq!(mounts[0].source, attempt.join("idmapped/0"));
            assert!(as_pod_root(&userns.path, &mounts[0].source.join("out")));
            assert_eq!(owner(&volume.join("out")), 0);
        });
        let _ = umount2(&attempt.join("rootfs"), MntFlags::MNT_DETACH);
        unmount_attempt(&attempt);
        super::super::sandbox::remove(&pod_dir).unwrap();
        std::fs::remove_dir_all(&attempt).unwrap();
        // Unmounting first kept the volume's files.
        assert!(volume.join("out").exists());
        assert!(!pod_dir.join("ns").exists());
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn the_spec_joins_the_pods_user_namespace_with_its_mapping() {
        let mut spec = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/p/ns/net"}]}});
        let userns = UserNamespace::of_pod(
            Path::new("/p"),
            IdMapping {
                host_id: 196608,
                length: 65536,
            },
        );
        add_to_spec(&mut spec, &userns);
        assert_eq!(
            spec["linux"]["namespaces"][0],
            json!({"type": "user", "path": "/p/ns/user"})
        );
        assert_eq!(spec["linux"]["namespaces"].as_array().unwrap().len(), 3);
        let expected = json!([{"containerID": 0, "hostID": 196608, "size": 65536}]);
        assert_eq!(spec["linux"]["uidMappings"], expected);
        assert_eq!(spec["linux"]["gidMappings"], expected);
        // The default ping group range is cut to the groups the pod maps.
        let mut spec = json!({"linux": {"namespaces": [], "sysctl": {
            "net.ipv4.ping_group_range": "0 2147483647", "net.ipv4.ip_unprivileged_port_start": "0"}}});
        add_to_spec(&mut spec, &userns);
        assert_eq!(
            spec["linux"]["sysctl"]["net.ipv4.ping_group_range"],
            "0 65535"
        );
        assert_eq!(
            spec["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        spec["linux"]["sysctl"]["net.ipv4.ping_group_range"] = json!("100 200");
        add_to_spec(&mut spec, &userns);
        assert_eq!(
            spec["linux"]["sysctl"]["net.ipv4.ping_group_range"],
            "100 200"
        );
        // The spec libcontainer reads accepts it.
        let full = json!({"ociVersion": "1.0.2", "root": {"path": "/r"}, "linux": spec["linux"]});
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(full).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 196608);
    }
}
