//! seccomp filters for containers: which profile a container gets (`RuntimeDefault` is the same
//! profile containerd gives), compiled to classic BPF here in Rust and loaded by the container's
//! executor just before it runs the workload (see `runtime::monitor` and `runtime::exec`).
//!
//! Pure Rust on purpose: bramble is one static musl binary, and youki's seccomp support needs the
//! C libseccomp. [`resolve`] gives the OCI profile (it goes into the bundle's `linux.seccomp`),
//! [`Filter::compile`] turns it into BPF before the container process is cloned, and
//! [`Filter::install`] loads it in the process right before execve.

mod arch;
mod bpf;
mod filter;
mod profile;
#[cfg(test)]
mod tests;

use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;

pub use filter::Filter;

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
///
/// RuntimeDefault is containerd's `DefaultProfile` for this host (its architectures, kernel
/// version) and `bounding_caps` (names like `CAP_SYS_ADMIN`). Localhost reads
/// `<profiles_dir>/<name>` and decodes it as is, as containerd's `WithProfile` does; errors are
/// containerd's (`cannot load seccomp profile "…": …`, `decoding seccomp profile failed "…": …`).
pub fn resolve(
    choice: &Choice,
    bounding_caps: &[String],
    profiles_dir: &Path,
) -> Result<Option<LinuxSeccomp>, String> {
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => {
            profile::runtime_default(bounding_caps, &profile::Host::current()).map(Some)
        }
        Choice::Localhost(name) => profile::localhost(name, profiles_dir).map(Some),
    }
}
