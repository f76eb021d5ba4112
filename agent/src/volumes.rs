//! Persistent volumes on the node, the way kubelet's volume plugins set them up: a pod's
//! `persistentVolumeClaim` is followed to its bound PersistentVolume, whose `hostPath` or
//! `local` directory is bind-mounted into containers as it is, and whose `nfs` share is
//! mounted with the kernel's NFS client under the pod's directory. Also what every volume
//! shares: `subPath`/`subPathExpr` with kubelet's checks, `fsGroup` ownership, and unmounting
//! when the pod goes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NFSVolumeSource, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, PodSecurityContext,
};
use nix::mount::MsFlags;

use crate::pod_config::{ConfigError, ObjectSource};

/// The provisioner bramble's master runs for the default `local-path` class.
pub const LOCAL_PATH_PROVISIONER: &str = "bramble.dev/local-path";
/// The annotation a dynamically provisioned PV names its provisioner in.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The legacy annotation whose mount options win over `spec.mountOptions`.
const MOUNT_OPTIONS_ANNOTATION: &str = "volume.beta.kubernetes.io/mount-options";

/// A volume ready on the node: the host path containers bind-mount, and whether every mount
/// of it is read-only (a claim's or an NFS volume's `readOnly`, config maps and secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// The host path.
    pub path: PathBuf,
    /// Every container mount of it is read-only.
    pub read_only: bool,
    /// Where its subPaths are bound for containers ([`sub_path_binds_dir`]).
    pub sub_path_binds: PathBuf,
}

/// Where a pod's own volume directories (emptyDir, config maps, NFS mount points) live.
pub fn pod_volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Whether a name is a DNS-1123 label, as the API server requires of volume and container
/// names: the only names the agent turns into one element of a host path.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The directory of one of the pod's volumes. The API server refuses volume names that are
/// not DNS labels; a pod that arrives with one anyway (an older or foreign server) is refused
/// here rather than turned into a path like `volumes/../../../../etc`.
pub fn pod_volume_dir(pod_dir: &Path, name: &str) -> Result<PathBuf, String> {
    if !is_dns_label(name) {
        return Err(format!(
            "invalid volume name {name:?}: a volume name must be a lowercase RFC 1123 label"
        ));
    }
    Ok(pod_volumes_dir(pod_dir).join(name))
}

// ---- claims ---------------------------------------------------------------------------------

/// Why a claim cannot be used yet, in kubelet's words; the pod stays `ContainerCreating`.
fn claim_error(namespace: &str, claim: &str, volume: &str, why: String) -> ConfigError {
    ConfigError(format!(
        "Unable to attach or mount volumes: unmounted volumes=[{volume}], unattached volumes=[], \
         failed to process volumes=[{volume}]: error processing PVC {namespace}/{claim}: {why}"
    ))
}

/// Follows a pod's claim to its bound PV and sets up the PV's source: `hostPath` (with its
/// type check), `local` (which must exist) or `nfs` (mounted at `mount_point`). `fs_group`
/// is applied to `local` volumes, as kubelet's local plugin does. A claim being deleted is
/// refused for a pod that has not `started` (one adopted after an agent restart keeps it).
/// `binds`: where its subPaths are bound.
#[allow(clippy::too_many_arguments)]
pub async fn claim_volume(
    volume: &str,
    source: &PersistentVolumeClaimVolumeSource,
    mount_point: &Path,
    binds: &Path,
    security: Option<&PodSecurityContext>,
    started: bool,
    objects: &mut ObjectSource<'_>,
) -> Result<PreparedVolume, ConfigError> {
    let namespace = objects.namespace().to_owned();
    let claim_name = source.claim_name.as_str();
    let fail = |why: String| claim_error(&namespace, claim_name, volume, why);
    let claim: PersistentVolumeClaim = objects
        .typed("persistentvolumeclaims", claim_name)
        .await?
        .ok_or_else(|| {
            fail(format!(
                "failed to fetch PVC from API server: persistentvolumeclaims \"{claim_name}\" not found"
            ))
        })?;
    if claim.metadata.deletion_timestamp.is_some() && !started {
        return Err(fail(format!(
            "can't start pod because PVC {namespace}/{claim_name} is being deleted"
        )));
    }
    let pv_name = bound_volume_name(&claim).map_err(fail)?.to_owned();
    let pv: PersistentVolume = objects
        .typed("persistentvolumes", &pv_name)
        .await?
        .ok_or_else(|| {
            fail(format!(
                "failed to fetch PV \"{pv_name}\" from API server: persistentvolumes \"{pv_name}\" not found"
            ))
        })?;
    check_claim_ref(&pv, &claim).map_err(fail)?;
    let read_only = source.read_only == Some(true);
    let setup_failed = |why: String| {
        ConfigError(format!(
            "MountVolume.SetUp failed for volume \"{pv_name}\" : {why}"
        ))
    };
    let spec = pv.spec.as_ref();
    if let Some(host) = spec.and_then(|s| s.host_path.as_ref()) {
        let provisioned_here = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROVISIONED_BY))
            .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
        // The local-path provisioner makes its directories world-writable (its helper's
        // `mkdir -m 0777`), so that containers that are not root can write to them.
        let mode = if provisioned_here { 0o777 } else { 0o755 };
        check_host_path(host, mode).map_err(setup_failed)?;
        return Ok(PreparedVolume {
            path: PathBuf::from(&host.path),
            read_only,
            sub_path_binds: binds.to_owned(),
        });
    }
    if let Some(local) = spec.and_then(|s| s.local.as_ref()) {
        let path = PathBuf::from(&local.path);
        if !path.exists() {
            return Err(ConfigError(format!(
                "MountVolume.NewMounter initialization failed for volume \"{pv_name}\" : path \"{}\" does not exist",
                local.path
            )));
        }
        if let Some(group) = security.and_then(|s| s.fs_group) {
            if !read_only {
                let policy = security.and_then(|s| s.fs_group_change_policy.as_deref());
                set_volume_ownership(&path, group as u32, false, policy)
                    .map_err(|e| setup_failed(format!("applying fsGroup: {e}")))?;
            }
        }
        return Ok(PreparedVolume {
            path,
            read_only,
            sub_path_binds: binds.to_owned(),
        });
    }
    if let Some(nfs) = spec.and_then(|s| s.nfs.as_ref()) {
        let options = pv_mount_options(&pv);
        mount_nfs_off_thread(nfs, &options, read_only, mount_point)
            .await
            .map_err(setup_failed)?;
        return Ok(PreparedVolume {
            path: mount_point.to_owned(),
            read_only,
            sub_path_binds: binds.to_owned(),
        });
    }
    Err(setup_failed(
        "bramble mounts only hostPath, local and nfs persistent volumes".to_owned(),
    ))
}

/// The PV a claim is bound to, or kubelet's complaint that it is not bound.
fn bound_volume_name(claim: &PersistentVolumeClaim) -> Result<&str, String> {
    let phase = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    if phase != "Bound" || volume.is_empty() {
        let namespace = claim.metadata.namespace.as_deref().unwrap_or("");
        let name = claim.metadata.name.as_deref().unwrap_or("");
        return Err(format!(
            "PVC {namespace}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume:?})"
        ));
    }
    Ok(volume)
}

/// The PV must point back at this very claim (kubelet's check against stale bindings).
fn check_claim_ref(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<(), String> {
    let name = pv.metadata.name.as_deref().unwrap_or("");
    let Some(reference) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Err(format!(
            "found PV object \"{name}\" but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
        ));
    };
    let claim_uid = claim.metadata.uid.as_deref().unwrap_or("");
    let ref_uid = reference.uid.as_deref().unwrap_or("");
    if ref_uid != claim_uid {
        return Err(format!(
            "found PV object \"{name}\" but its pv.Spec.ClaimRef.UID ({ref_uid:?}) does not point to claim.UID ({claim_uid:?})"
        ));
    }
    Ok(())
}

// ---- hostPath -------------------------------------------------------------------------------

/// kubelet's hostPath type check; `DirectoryOrCreate` makes the directory with `mode`,
/// `FileOrCreate` an empty file (and its parents).
pub fn check_host_path(source: &HostPathVolumeSource, mode: u32) -> Result<(), String> {
    let path = Path::new(&source.path);
    let shown = &source.path;
    let failed = |what: &str| format!("hostPath type check failed: {shown} is not {what}");
    let metadata = std::fs::metadata(path).ok();
    match source.type_.as_deref().unwrap_or("") {
        "DirectoryOrCreate" => match metadata {
            Some(m) if m.is_dir() => Ok(()),
            Some(_) => Err(failed("a directory")),
            None => make_dir_with_mode(path, mode).map_err(|e| format!("{shown}: {e}")),
        },
        "Directory" if !metadata.as_ref().is_some_and(|m| m.is_dir()) => Err(failed("a directory")),
        "FileOrCreate" => match metadata {
            Some(m) if m.is_file() => Ok(()),
            Some(_) => Err(failed("a file")),
            None => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("{shown}: {e}"))?;
                }
                std::fs::write(path, b"").map_err(|e| format!("{shown}: {e}"))
            }
        },
        "File" if !metadata.as_ref().is_some_and(|m| m.is_file()) => Err(failed("a file")),
        "Socket" | "CharDevice" | "BlockDevice" => {
            use std::os::unix::fs::FileTypeExt;
            let kind = metadata.map(|m| m.file_type());
            match source.type_.as_deref() {
                Some("Socket") if !kind.is_some_and(|k| k.is_socket()) => {
                    Err(failed("a socket file"))
                }
                Some("CharDevice") if !kind.is_some_and(|k| k.is_char_device()) => {
                    Err(failed("a character device"))
                }
                Some("BlockDevice") if !kind.is_some_and(|k| k.is_block_device()) => {
                    Err(failed("a block device"))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// `mkdir -p` whose new directories get exactly `mode` (not masked by the umask).
fn make_dir_with_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = path;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---- NFS ------------------------------------------------------------------------------------

/// A PV's mount options: the legacy annotation (comma-separated) wins over `spec.mountOptions`.
pub fn pv_mount_options(pv: &PersistentVolume) -> Vec<String> {
    let annotation = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MOUNT_OPTIONS_ANNOTATION));
    match annotation {
        Some(text) => text
            .split(',')
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect(),
        None => pv
            .spec
            .as_ref()
            .and_then(|s| s.mount_options.clone())
            .unwrap_or_default(),
    }
}

/// What one `mount(2)` of an NFS share is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsMount {
    /// `server:/path` (an IPv6 server in brackets).
    pub source: String,
    /// The generic flags (`ro`, `noatime`, `nosuid`, ...), which the kernel's NFS option
    /// parser does not take as text.
    pub flags: MsFlags,
    /// The NFS options as the kernel reads them: `vers=4.2,addr=…,clientaddr=…`.
    pub data: String,
}

/// The generic mount options and their flags; `mount.nfs` turns these into flags too.
const GENERIC_FLAGS: &[(&str, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("sync", MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
    ("lazytime", MsFlags::MS_LAZYTIME),
];

/// Options that mean something to mount(8) or fstab only.
const USERSPACE_ONLY: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "suid",
    "dev",
    "exec",
    "async",
    "atime",
    "diratime",
    "norelatime",
    "nostrictatime",
    "bg",
    "fg",
];

/// The mount request for an NFS volume, as kubelet builds the options (the PV's options plus
/// `ro` when read-only, de-duplicated and sorted) and as `mount.nfs` hands them to the
/// kernel: generic options become flags, and the server's address (`addr=`) and, for NFSv4,
/// the address the server calls back (`clientaddr=`) are added. `version` is used when the
/// options name none.
pub fn nfs_mount_request(
    nfs: &NFSVolumeSource,
    options: &[String],
    read_only: bool,
    server_addr: IpAddr,
    client_addr: IpAddr,
    version: &str,
) -> NfsMount {
    let mut joined: BTreeSet<String> = options.iter().cloned().collect();
    if read_only {
        joined.insert("ro".to_owned());
    }
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &joined {
        if let Some((_, flag)) = GENERIC_FLAGS.iter().find(|(name, _)| name == option) {
            flags |= *flag;
        } else if USERSPACE_ONLY.contains(&option.as_str()) {
            continue;
        } else if option.starts_with("addr=") || option.starts_with("clientaddr=") {
            // Always the addresses resolved here.
            continue;
        } else {
            data.push(option.clone());
        }
    }
    let named_version = data.iter().find_map(|o| {
        o.strip_prefix("vers=")
            .or_else(|| o.strip_prefix("nfsvers="))
            .map(str::to_owned)
    });
    let version = match named_version {
        Some(named) => named,
        None => {
            data.push(format!("vers={version}"));
            version.to_owned()
        }
    };
    data.push(format!("addr={server_addr}"));
    if version.starts_with('4') {
        data.push(format!("clientaddr={client_addr}"));
    }
    let server = match server_addr {
        IpAddr::V6(_) if nfs.server.contains(':') => format!("[{}]", nfs.server),
        _ => nfs.server.clone(),
    };
    NfsMount {
        source: format!("{server}:{}", nfs.path),
        flags,
        data: data.join(","),
    }
}

/// Whether something is mounted exactly at `point`.
fn is_mount_point(point: &Path) -> bool {
    crate::mounts::table().is_ok_and(|table| table.iter().any(|m| m.mount_point == point))
}

/// Mounts the share at `target` (once: an existing mount is kept). Without a version in the
/// options it tries 4.2, 4.1, 4.0 and then 3, as `mount.nfs` negotiates.
pub fn mount_nfs(
    nfs: &NFSVolumeSource,
    options: &[String],
    read_only: bool,
    target: &Path,
) -> Result<(), String> {
    // The mount table holds absolute paths.
    let target = &std::path::absolute(target).map_err(|e| format!("{}: {e}", target.display()))?;
    if is_mount_point(target) {
        return Ok(());
    }
    make_dir_with_mode(target, 0o750).map_err(|e| format!("{}: {e}", target.display()))?;
    let server_addr = (nfs.server.as_str(), 2049)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|a| a.ip())
        .ok_or_else(|| format!("mount failed: cannot resolve NFS server {:?}", nfs.server))?;
    let client_addr = local_address_towards(server_addr)
        .map_err(|e| format!("mount failed: no route to {server_addr}: {e}"))?;
    let mut errors = Vec::new();
    for version in ["4.2", "4.1", "4.0", "3"] {
        let request = nfs_mount_request(nfs, options, read_only, server_addr, client_addr, version);
        let named = request.data.split(',').any(|o| {
            (o.starts_with("vers=") || o.starts_with("nfsvers=")) && o != format!("vers={version}")
        });
        let result = nix::mount::mount(
            Some(request.source.as_str()),
            target,
            Some("nfs"),
            request.flags,
            Some(request.data.as_str()),
        );
        match result {
            Ok(()) => {
                tracing::info!(source = request.source, target = %target.display(), options = request.data, "NFS share mounted");
                return Ok(());
            }
            Err(errno) => errors.push(format!("{} ({}): {errno}", request.source, request.data)),
        }
        // Options that name their version are tried as given, once.
        if named {
            break;
        }
    }
    Err(format!("mount failed: {}", errors.join("; ")))
}

/// [`mount_nfs`] on a blocking thread: mount(2) waits for the server (minutes when it does
/// not answer), and the agent's other pods must not wait with it.
pub async fn mount_nfs_off_thread(
    nfs: &NFSVolumeSource,
    options: &[String],
    read_only: bool,
    target: &Path,
) -> Result<(), String> {
    let (nfs, options, target) = (nfs.clone(), options.to_vec(), target.to_owned());
    tokio::task::spawn_blocking(move || mount_nfs(&nfs, &options, read_only, &target))
        .await
        .map_err(|e| format!("mount failed: {e}"))?
}

/// The local address the kernel would use to reach `server` (the NFSv4 callback address).
fn local_address_towards(server: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
        IpAddr::V6(_) => "[::]:0".parse().expect("an address"),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(SocketAddr::new(server, 2049))?;
    Ok(socket.local_addr()?.ip())
}

/// Unmounts what the pod mounted under its directory (NFS shares); true when nothing is left
/// mounted there, so the directory can be removed without reaching into a share.
pub fn unmount_pod_volumes(pod_dir: &Path) -> bool {
    let volumes = pod_volumes_dir(pod_dir);
    crate::mounts::unmount_under(&volumes);
    !crate::mounts::table()
        .is_ok_and(|table| table.iter().any(|m| m.mount_point.starts_with(&volumes)))
}

// ---- subPath ----------------------------------------------------------------------------------

/// `subPathExpr` with `$(VAR)` taken from the container's environment; a variable that is
/// missing or empty is an error naming every such variable (kubelet's
/// `ExpandContainerVolumeMounts`).
pub fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, String> {
    let mut missing = BTreeSet::new();
    let out = crate::runtime::spec::expand_with(expr, |name| {
        match env.iter().rev().find(|(k, _)| k == name) {
            Some((_, value)) if !value.is_empty() => Some(value.clone()),
            _ => {
                missing.insert(name.to_owned());
                Some(String::new())
            }
        }
    });
    if !missing.is_empty() {
        let names: Vec<String> = missing.into_iter().collect();
        return Err(format!("missing value for {}", names.join(", ")));
    }
    Ok(out)
}

/// kubelet's checks of a subPath: relative, and no `..` element.
pub fn check_sub_path(sub_path: &str) -> Result<(), String> {
    if Path::new(sub_path).is_absolute() {
        return Err(format!(
            "error SubPath `{sub_path}` must not be an absolute path"
        ));
    }
    if sub_path.split('/').any(|part| part == "..") {
        return Err(format!(
            "unable to provision SubPath `{sub_path}`: must not contain '..'"
        ));
    }
    Ok(())
}

/// Where the subPath binds of one of the pod's volumes go: inside the pod's volumes directory
/// (so [`unmount_pod_volumes`] takes them down with the pod) but never inside a volume, where a
/// container could reach them. `..` cannot start a volume name, which is a DNS label.
pub fn sub_path_binds_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_volumes_dir(pod_dir).join("..subpaths").join(volume)
}

/// The host path a container's runtime binds for `sub_path` inside `volume`: the subPath is
/// opened without leaving the volume (openat2 `RESOLVE_BENEATH`: symbolic links are followed
/// only while they stay inside it, as kubelet's checks allow), created when missing (with the
/// volume root's mode, so fsGroup's setgid and group bits carry on), and the opened file itself
/// is bind-mounted at `binds/<container>/<index>` through `/proc/self/fd`. Another container
/// of the pod that swaps the subPath for a link after the check (CVE-2017-1002101) changes
/// nothing: the bind shows what was opened.
pub fn prepare_sub_path(
    volume: &Path,
    binds: &Path,
    sub_path: &str,
    mount: &str,
    container: &str,
    index: usize,
) -> Result<PathBuf, String> {
    check_sub_path(sub_path)?;
    let prepare_failed = || {
        format!(
            "failed to prepare subPath for volumeMount \"{mount}\" of container \"{container}\""
        )
    };
    if !is_dns_label(container) {
        return Err(prepare_failed());
    }
    let relative: PathBuf = Path::new(sub_path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let root = open_dir(volume).map_err(|error| {
        tracing::warn!(%error, volume = %volume.display(), "volume not opened for a subPath");
        prepare_failed()
    })?;
    let opened = match open_beneath(&root, volume, &relative) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let mode = std::fs::metadata(volume)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o755);
            make_dir_beneath(&root, volume, &relative, mode).map_err(|error| {
                tracing::warn!(%error, sub_path, volume = %volume.display(), "subPath directory not created");
                format!(
                    "failed to create subPath directory for volumeMount \"{mount}\" of container \"{container}\""
                )
            })?
        }
        other => other.map_err(|error| {
            tracing::warn!(%error, sub_path, volume = %volume.display(), "subPath leaves its volume");
            prepare_failed()
        })?,
    };
    let target = binds.join(container).join(index.to_string());
    bind_opened(&opened, &target).map_err(|error| {
        tracing::warn!(%error, target = %target.display(), "subPath not bound");
        prepare_failed()
    })?;
    Ok(target)
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn from_raw(fd: libc::c_int) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn open_dir(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let name = c_path(path)?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    from_raw(fd)
}

/// Opens `relative` (`O_PATH`) beneath the directory `root` (opened from `root_path`): with
/// openat2 `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, which follows a symbolic link only while
/// it stays beneath. Where the kernel lacks openat2, or a link is absolute (which
/// `RESOLVE_BENEATH` refuses even when it points inside), kubelet's way: resolve the links,
/// require the result inside the volume, then open it one element at a time refusing every
/// link, so a swap after the check fails instead of leading out.
fn open_beneath(
    root: &std::os::fd::OwnedFd,
    root_path: &Path,
    relative: &Path,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let name = c_path(if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    })?;
    // SAFETY: open_how is plain data; zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, path and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    match from_raw(fd as libc::c_int) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ENOSYS)) => {
            let canonical_root = root_path.canonicalize()?;
            let resolved = root_path.join(relative).canonicalize()?;
            let inside = resolved
                .strip_prefix(&canonical_root)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EXDEV))?;
            open_no_links(root, inside)
        }
        other => other,
    }
}

/// Opens `relative` beneath `root` one element at a time with `O_NOFOLLOW`: any symbolic link
/// on the way is an error.
fn open_no_links(
    root: &std::os::fd::OwnedFd,
    relative: &Path,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut current = root.try_clone()?;
    for part in relative.components() {
        let name = c_path(Path::new(part.as_os_str()))?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                current.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let next = from_raw(fd)?;
        let meta = nix::sys::stat::fstat(next.as_raw_fd()).map_err(std::io::Error::from)?;
        if meta.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
        }
        current = next;
    }
    Ok(current)
}

/// Creates the missing directories of `relative` beneath `root`, each with `mode`, never
/// through a link that leads out; returns the last one, opened.
fn make_dir_beneath(
    root: &std::os::fd::OwnedFd,
    root_path: &Path,
    relative: &Path,
    mode: u32,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut prefix = PathBuf::new();
    let mut parent = root.try_clone()?;
    for part in relative.components() {
        prefix.push(part);
        let opened = match open_beneath(root, root_path, &prefix) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = c_path(Path::new(part.as_os_str()))?;
                // SAFETY: a valid directory descriptor and a NUL-terminated name.
                let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) };
                if made != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: as above; O_NOFOLLOW: the directory just made, not a link put there.
                let fd = unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                let made = from_raw(fd)?;
                nix::sys::stat::fchmod(
                    made.as_raw_fd(),
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                )
                .map_err(std::io::Error::from)?;
                made
            }
            other => other?,
        };
        parent = opened;
    }
    Ok(parent)
}

/// Bind-mounts the opened file or directory at `target` (made to match it), replacing the bind
/// an earlier start of the container left there.
fn bind_opened(opened: &std::os::fd::OwnedFd, target: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let meta = nix::sys::stat::fstat(opened.as_raw_fd()).map_err(std::io::Error::from)?;
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    while is_mount_point(&std::path::absolute(target)?) {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
            .map_err(std::io::Error::from)?;
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() == is_dir && !m.file_type().is_symlink() => {}
        Ok(m) if m.is_dir() => std::fs::remove_dir(target)?,
        Ok(_) => std::fs::remove_file(target)?,
        Err(_) => {}
    }
    if std::fs::symlink_metadata(target).is_err() {
        if is_dir {
            std::fs::create_dir(target)?;
        } else {
            std::fs::File::create(target)?;
        }
    }
    let source = format!("/proc/self/fd/{}", opened.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

// ---- fsGroup ----------------------------------------------------------------------------------

/// Gives the volume to `group` as kubelet's `SetVolumeOwnership` does: every file's group
/// becomes `group` (owner untouched), files gain `rw` (`r` when read-only) for the group,
/// directories also `x` and setgid, so new files inherit the group. Bits are only added.
/// With `fsGroupChangePolicy: OnRootMismatch` nothing is walked when the root already has
/// the group, the bits and setgid.
pub fn set_volume_ownership(
    root: &Path,
    group: u32,
    read_only: bool,
    policy: Option<&str>,
) -> std::io::Result<()> {
    let mask = if read_only { 0o440 } else { 0o660 };
    if policy == Some("OnRootMismatch") {
        let meta = std::fs::metadata(root)?;
        let wanted = mask | 0o110 | 0o2000;
        if meta.is_dir() && meta.gid() == group && meta.mode() & wanted == wanted {
            return Ok(());
        }
    }
    walk_ownership(root, group, mask)
}

fn walk_ownership(path: &Path, group: u32, mask: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            walk_ownership(&entry?.path(), group, mask)?;
        }
    }
    std::os::unix::fs::lchown(path, None, Some(group))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mode = meta.mode() & 0o7777 | mask;
    if meta.is_dir() {
        mode |= 0o2000 | 0o110;
    }
    if mode != meta.mode() & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(phase: &str, volume: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "c-1"},
            "spec": {"volumeName": volume},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn a_claim_is_used_only_when_bound_to_a_volume_that_names_it() {
        assert_eq!(
            bound_volume_name(&claim("Pending", "")).unwrap_err(),
            "PVC shop/data has non-bound phase (\"Pending\") or empty pvc.Spec.VolumeName (\"\")"
        );
        assert_eq!(bound_volume_name(&claim("Bound", "pv-1")).unwrap(), "pv-1");
        let pv = |claim_ref: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({"metadata": {"name": "pv-1"}, "spec": claim_ref}))
                .unwrap()
        };
        let bound = claim("Bound", "pv-1");
        assert!(check_claim_ref(&pv(json!({"claimRef": {"uid": "c-1"}})), &bound).is_ok());
        assert_eq!(
            check_claim_ref(&pv(json!({})), &bound).unwrap_err(),
            "found PV object \"pv-1\" but it has a nil pv.Spec.ClaimRef indicating it is not yet bound to the claim"
        );
        assert!(
            check_claim_ref(&pv(json!({"claimRef": {"uid": "c-0"}})), &bound)
                .unwrap_err()
                .contains("does not point to claim.UID (\"c-1\")")
        );
    }

    #[test]
    fn host_path_types_are_checked_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let source = |path: &Path, kind: &str| HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some(kind.to_owned()),
        };
        let made = dir.path().join("pvc-1_shop_data/deeper");
        check_host_path(&source(&made, "DirectoryOrCreate"), 0o777).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o777, "not masked by the umask");
        let file = dir.path().join("conf/app.ini");
        check_host_path(&source(&file, "FileOrCreate"), 0o755).unwrap();
        assert!(file.is_file());
        assert_eq!(
            check_host_path(&source(&file, "Directory"), 0o755).unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        assert!(check_host_path(&source(&made, "File"), 0o755)
            .unwrap_err()
            .ends_with("is not a file"));
        assert!(check_host_path(&source(&file, "Socket"), 0o755)
            .unwrap_err()
            .ends_with("is not a socket file"));
        let missing = dir.path().join("missing");
        assert!(check_host_path(&source(&missing, "Directory"), 0o755).is_err());
        assert!(check_host_path(&source(&missing, ""), 0o755).is_ok());
        assert!(!missing.exists(), "an unset type creates nothing");
    }

    #[test]
    fn nfs_options_split_into_flags_and_kernel_text() {
        let nfs = NFSVolumeSource {
            server: "nfs.lan".into(),
            path: "/exports/shared".into(),
            read_only: None,
        };
        let server: IpAddr = "10.99.0.50".parse().unwrap();
        let client: IpAddr = "10.99.0.12".parse().unwrap();
        let options = vec![
            "hard".to_owned(),
            "noatime".to_owned(),
            "nolock".to_owned(),
            "hard".to_owned(),
            "_netdev".to_owned(),
        ];
        let request = nfs_mount_request(&nfs, &options, true, server, client, "4.2");
        assert_eq!(request.source, "nfs.lan:/exports/shared");
        assert_eq!(request.flags, MsFlags::MS_NOATIME | MsFlags::MS_RDONLY);
        assert_eq!(
            request.data,
            "hard,nolock,vers=4.2,addr=10.99.0.50,clientaddr=10.99.0.12"
        );
        let v3 = nfs_mount_request(
            &nfs,
            &["nfsvers=3".to_owned(), "addr=1.2.3.4".to_owned()],
            false,
            server,
            client,
            "4.2",
        );
        assert_eq!(v3.flags, MsFlags::empty());
        assert_eq!(
            v3.data, "nfsvers=3,addr=10.99.0.50",
            "no callback address for v3"
        );
    }

    #[test]
    fn pv_mount_options_prefer_the_annotation() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv", "annotations": {MOUNT_OPTIONS_ANNOTATION: "vers=3, hard"}},
            "spec": {"mountOptions": ["vers=4.1"]},
        }))
        .unwrap();
        assert_eq!(pv_mount_options(&pv), ["vers=3", "hard"]);
        let plain: PersistentVolume =
            serde_json::from_value(json!({"spec": {"mountOptions": ["vers=4.1"]}})).unwrap();
        assert_eq!(pv_mount_options(&plain), ["vers=4.1"]);
    }

    #[test]
    fn sub_path_exprs_expand_from_the_environment() {
        let env = vec![
            ("POD_NAME".to_owned(), "web-0".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ];
        assert_eq!(
            expand_sub_path_expr("logs/$(POD_NAME)", &env).unwrap(),
            "logs/web-0"
        );
        assert_eq!(
            expand_sub_path_expr("$$(POD_NAME)", &env).unwrap(),
            "$(POD_NAME)"
        );
        assert_eq!(
            expand_sub_path_expr("$(ZONE)/$(EMPTY)/$(ABSENT)", &env).unwrap_err(),
            "missing value for ABSENT, EMPTY, ZONE"
        );
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        assert_eq!(
            check_sub_path("/etc").unwrap_err(),
            "error SubPath `/etc` must not be an absolute path"
        );
        assert_eq!(
            check_sub_path("a/../b").unwrap_err(),
            "unable to provision SubPath `a/../b`: must not contain '..'"
        );
        assert!(check_sub_path("a/..b/c").is_ok());
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let pod = tempfile::tempdir().unwrap();
        let volume = pod.path().join("volumes/store");
        std::fs::create_dir_all(&volume).unwrap();
        let binds = sub_path_binds_dir(pod.path(), "store");
        let prepare = |sub_path| prepare_sub_path(&volume, &binds, sub_path, "store", "db", 0);
        std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let made = prepare("data/pg").unwrap();
        assert!(made.is_dir());
        assert!(volume.join("data/pg").is_dir());
        let mode = std::fs::metadata(volume.join("data/pg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o2775, "the volume root's mode");
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), volume.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../..", volume.join("up")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), volume.join("dangling")).unwrap();
        for (sub_path, error) in [
            (
                "escape",
                "failed to prepare subPath for volumeMount \"store\" of container \"db\"",
            ),
            (
                "up",
                "failed to prepare subPath for volumeMount \"store\" of container \"db\"",
            ),
            (
                "escape/new",
                "failed to create subPath directory for volumeMount \"store\" of container \"db\"",
            ),
            (
                "dangling",
                "failed to create subPath directory for volumeMount \"store\" of container \"db\"",
            ),
        ] {
            assert_eq!(prepare(sub_path).unwrap_err(), error, "{sub_path}");
        }
        assert!(!outside.path().join("new").exists());
        assert!(!outside.path().join("x").exists());
        // Links that stay inside are followed, as a config map's `key -> ..data/key`.
        std::fs::create_dir(volume.join("..data")).unwrap();
        std::fs::write(volume.join("..data/key"), b"value").unwrap();
        std::os::unix::fs::symlink("..data/key", volume.join("key")).unwrap();
        let absolute = volume.join("..data/key");
        std::os::unix::fs::symlink(&absolute, volume.join("absolute")).unwrap();
        for sub_path in ["key", "absolute"] {
            let bound = prepare(sub_path).unwrap();
            assert_eq!(std::fs::read(&bound).unwrap(), b"value", "{sub_path}");
        }
        crate::mounts::unmount_under(&pod_volumes_dir(pod.path()));
    }

    #[test]
    fn a_sub_path_swapped_for_a_symlink_after_the_check_still_mounts_what_was_checked() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let pod = tempfile::tempdir().unwrap();
        let volume = pod.path().join("volumes/data");
        std::fs::create_dir_all(volume.join("work")).unwrap();
        std::fs::write(volume.join("work/inside"), b"in").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let binds = sub_path_binds_dir(pod.path(), "data");
        let source = prepare_sub_path(&volume, &binds, "work", "data", "app", 0).unwrap();
        // Another container of the pod swaps the checked directory for a link out of the
        // volume before the runtime binds the source.
        std::fs::rename(volume.join("work"), volume.join("old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), volume.join("work")).unwrap();
        let inside = source.join("inside").exists();
        let secret = source.join("secret").exists();
        crate::mounts::unmount_under(&pod_volumes_dir(pod.path()));
        assert!(inside && !secret, "the source now shows the link's target");
    }

    #[test]
    fn fs_group_adds_group_bits_and_setgid_and_skips_a_matching_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's group to any group needs root");
            return;
        }
        let volume = tempfile::tempdir().unwrap();
        let root = volume.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("sub/file"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("link")).unwrap();
        set_volume_ownership(root, 4321, false, None).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(meta("sub/file").gid(), 4321);
        assert_eq!(meta("sub/file").mode() & 0o7777, 0o660);
        assert_eq!(meta("sub").mode() & 0o2070, 0o2070);
        assert_eq!(meta("link").gid(), 4321, "links are chowned, not followed");
        assert_eq!(meta("").gid(), 4321);
        // A file added later keeps its group under OnRootMismatch: the root already matches.
        std::fs::write(root.join("later"), b"y").unwrap();
        std::os::unix::fs::lchown(root.join("later"), None, Some(0)).unwrap();
        set_volume_ownership(root, 4321, false, Some("OnRootMismatch")).unwrap();
        assert_eq!(meta("later").gid(), 0);
        set_volume_ownership(root, 4321, false, Some("Always")).unwrap();
        assert_eq!(meta("later").gid(), 4321);
    }
}
