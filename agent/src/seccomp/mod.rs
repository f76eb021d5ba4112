//! seccomp filters for containers: which profile a container gets (`RuntimeDefault` is the same
//! profile containerd gives), compiled to classic BPF here in Rust and loaded by the container's
//! executor just before it runs the workload (see `runtime::monitor` and `runtime::exec`).

use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;

/// The effective seccomp choice for one container: the container's `seccompProfile`, else the
/// pod's, else the agent's `--seccomp-default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// No filter.
    Unconfined,
    /// The runtime's default profile.
    RuntimeDefault,
    /// A profile file under the agent's `seccomp/` directory.
    Localhost(String),
}

/// The OCI profile for `choice` and the container's final bounding capabilities; `None` when
/// the container runs unconfined.
pub fn resolve(
    choice: &Choice,
    _bounding_caps: &[String],
    _profiles_dir: &Path,
) -> Result<Option<LinuxSeccomp>, String> {
    match choice {
        Choice::Unconfined => Ok(None),
        _ => Err("seccomp is not supported".to_string()),
    }
}
