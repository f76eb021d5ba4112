//! Why a pod or one of its containers is not running, each with the reason kubelet reports.

use std::time::Duration;

use crate::image::ImageError;
use crate::network::NetworkError;
use crate::pod_config::ConfigError;

use super::effects::RuntimeError;

/// The pod's sandbox (namespaces, IP) could not be made: the pod waits in
/// `ContainerCreating` and a `FailedCreatePodSandBox` event says why.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The pod directory could not be written.
    #[error("pod directory")]
    Directory(#[source] std::io::Error),
    /// unshare or the namespace bind mounts failed.
    #[error("cannot create the pod's namespaces")]
    Namespaces(#[source] std::io::Error),
    /// Every address of the node's pod CIDR is in use.
    #[error("the node has no free pod IP")]
    NoFreeIp,
    /// The veth pair or the addresses could not be set up.
    #[error("cannot connect the pod to the network")]
    Network(#[source] NetworkError),
}

/// A container could not be started; [`StartError::reason`] is its waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The image name is not a reference.
    #[error("{problem}")]
    InvalidImageName {
        /// What is wrong with it.
        problem: String,
    },
    /// A recent pull failed; the next try waits.
    #[error("Back-off {}s pulling image \"{image}\"", delay.as_secs())]
    PullBackOff {
        /// The image name.
        image: String,
        /// The current back-off.
        delay: Duration,
    },
    /// The pull failed (or the policy forbids it).
    #[error("Failed to pull image \"{image}\"")]
    Pull {
        /// The image name.
        image: String,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// The environment or the volume mounts cannot be built: a missing config map, secret
    /// or key, an undefined volume.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither the container nor the image says what to run.
    #[error("the image has no command and the container gives none")]
    NoCommand,
    /// /etc/hosts, /etc/hostname or /etc/resolv.conf could not be written.
    #[error("cannot write the pod's {file}")]
    EtcFiles {
        /// Which file.
        file: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container's security context cannot be met as written (runAsNonRoot).
    #[error("{0}")]
    Security(String),
    /// The container cannot be created: a user name the image does not list, a seccomp or
    /// AppArmor profile that cannot be loaded.
    #[error("{0}")]
    Create(String),
    /// The runtime failed to create or start the container.
    #[error(transparent)]
    Run(RuntimeError),
}

impl StartError {
    /// The container's waiting reason, as kubelet reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::InvalidImageName { .. } => "InvalidImageName",
            StartError::PullBackOff { .. } => "ImagePullBackOff",
            StartError::Pull { source, .. } => source.reason(),
            StartError::Config(_)
            | StartError::NoCommand
            | StartError::EtcFiles { .. }
            | StartError::Security(_) => "CreateContainerConfigError",
            StartError::Create(_) => "CreateContainerError",
            StartError::Run(_) => "RunContainerError",
        }
    }

    /// The reason of the Warning event kubelet records (`Failed` for pull errors and for
    /// containers it could not configure or create).
    pub fn event_reason(&self) -> &'static str {
        match self.reason() {
            "CreateContainerConfigError" | "CreateContainerError" => "Failed",
            _ => match self {
                StartError::Pull { .. } => "Failed",
                StartError::PullBackOff { .. } => "BackOff",
                other => other.reason(),
            },
        }
    }

    /// The message of that event: kubelet writes `Error: <why>` for containers it could not
    /// configure or create.
    pub fn event_message(&self) -> String {
        let text = protocol::error::error_chain(self);
        match self.event_reason() {
            "Failed" if !matches!(self, StartError::Pull { .. }) => format!("Error: {text}"),
            _ => text,
        }
    }

    /// Whether the next try waits out kubelet's pod-worker back-off (10 s) rather than
    /// coming at once: the container was never created.
    pub fn retried_later(&self) -> bool {
        matches!(
            self.reason(),
            "CreateContainerConfigError" | "CreateContainerError"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_carry_kubelet_reasons() {
        let never = StartError::Pull {
            image: "x".into(),
            source: ImageError::NeverPull {
                reference: "x".into(),
            },
        };
        assert_eq!(never.reason(), "ErrImageNeverPull");
        let pull = StartError::Pull {
            image: "x".into(),
            source: ImageError::Malformed {
                reference: "x".into(),
                problem: "no layers".into(),
            },
        };
        assert_eq!(pull.reason(), "ErrImagePull");
        assert_eq!(pull.event_reason(), "Failed");
        assert_eq!(
            protocol::error::error_chain(&pull),
            "Failed to pull image \"x\": image x: no layers"
        );
        let missing = StartError::from(ConfigError("configmap \"c\" not found".into()));
        assert_eq!(missing.reason(), "CreateContainerConfigError");
        assert_eq!(missing.event_reason(), "Failed");
        assert_eq!(missing.event_message(), "Error: configmap \"c\" not found");
        let profile = StartError::Create("cannot load seccomp profile \"x\": gone".into());
        assert_eq!(profile.reason(), "CreateContainerError");
        assert_eq!(
            profile.event_message(),
            "Error: cannot load seccomp profile \"x\": gone"
        );
        assert_eq!(
            pull.event_message(),
            "Failed to pull image \"x\": image x: no layers"
        );
        assert_eq!(
            StartError::PullBackOff {
                image: "x".into(),
                delay: Duration::from_secs(10)
            }
            .to_string(),
            "Back-off 10s pulling image \"x\""
        );
    }
}
