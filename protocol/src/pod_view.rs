//! How a pod looks to people: its state in `kubectl get pods` words, its owner, and the app
//! that gives it a colour. The dashboard and the pod LEDs both read pods through here, so the
//! screen and the LEDs agree.

use serde_json::Value;

use hardware::status::PodLight;

/// The string at a JSON pointer, or an empty string.
pub fn str_at(object: &Value, pointer: &str) -> String {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What owns a pod, for its colour and its deployment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    /// `Deployment`, `DaemonSet`, `Job`, `ReplicaSet`, ... or `Pod` for a bare pod.
    pub kind: String,
    /// Its name (a ReplicaSet made by a Deployment counts as the Deployment).
    pub name: String,
}

/// A pod's state, in the words of `kubectl get pods`' STATUS column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PodState {
    /// Not bound to a node yet.
    Pending,
    /// Bound; containers being created (image pulls, init containers).
    ContainerCreating,
    /// Running and Ready.
    Running,
    /// Running, not Ready yet (or not any more).
    NotReady,
    /// Being deleted.
    Terminating,
    /// A container keeps crashing.
    CrashLoopBackOff,
    /// An image cannot be pulled.
    ImagePullBackOff,
    /// Ended with a failure.
    Failed,
    /// Ended successfully.
    Completed,
}

impl PodState {
    /// How the pod's LED shows it.
    pub fn light(self) -> PodLight {
        match self {
            s if s.is_failing() => PodLight::Failing,
            PodState::Running => PodLight::Running,
            _ => PodLight::Pending,
        }
    }

    /// The STATUS word.
    pub fn word(self) -> &'static str {
        match self {
            PodState::Pending => "Pending",
            PodState::ContainerCreating => "ContainerCreating",
            PodState::Running => "Running",
            PodState::NotReady => "Running (not ready)",
            PodState::Terminating => "Terminating",
            PodState::CrashLoopBackOff => "CrashLoopBackOff",
            PodState::ImagePullBackOff => "ImagePullBackOff",
            PodState::Failed => "Failed",
            PodState::Completed => "Completed",
        }
    }

    /// Whether the pod is on its way up (the node LED blinks meanwhile).
    pub fn is_starting(self) -> bool {
        matches!(self, PodState::ContainerCreating | PodState::NotReady)
    }

    /// Whether something is wrong with it.
    pub fn is_failing(self) -> bool {
        matches!(
            self,
            PodState::CrashLoopBackOff | PodState::ImagePullBackOff | PodState::Failed
        )
    }
}

/// The owner that gives a pod its colour: its controller, with a Deployment's ReplicaSet
/// counted as the Deployment (its name minus the pod-template-hash).
pub fn owner_of(object: &Value) -> Owner {
    let controller = object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true);
    let Some(controller) = controller else {
        return Owner {
            kind: "Pod".to_owned(),
            name: str_at(object, "/metadata/name"),
        };
    };
    let kind = str_at(controller, "/kind");
    let name = str_at(controller, "/name");
    let hash = str_at(object, "/metadata/labels/pod-template-hash");
    if kind == "ReplicaSet" && !hash.is_empty() {
        if let Some(deployment) = name.strip_suffix(&format!("-{hash}")) {
            return Owner {
                kind: "Deployment".to_owned(),
                name: deployment.to_owned(),
            };
        }
    }
    Owner { kind, name }
}

/// A pod's state, from its object.
pub fn pod_state(object: &Value) -> PodState {
    if object["metadata"]["deletionTimestamp"].is_string() {
        return PodState::Terminating;
    }
    let status = &object["status"];
    match status["phase"].as_str() {
        Some("Succeeded") => return PodState::Completed,
        Some("Failed") => return PodState::Failed,
        _ => {}
    }
    let statuses = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|key| status[key].as_array().into_iter().flatten());
    let mut creating = false;
    for container in statuses {
        match container["state"]["waiting"]["reason"].as_str() {
            Some("CrashLoopBackOff") => return PodState::CrashLoopBackOff,
            Some("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName") => {
                return PodState::ImagePullBackOff
            }
            Some(_) => creating = true,
            None => {}
        }
    }
    if object["spec"]["nodeName"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return PodState::Pending;
    }
    let ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    match status["phase"].as_str() {
        Some("Running") if ready => PodState::Running,
        Some("Running") if !creating => PodState::NotReady,
        _ => PodState::ContainerCreating,
    }
}

/// The app a pod belongs to, which picks its colour: its `app` label, else
/// `app.kubernetes.io/name`, else its owner's name.
pub fn app_of(object: &Value, owner: &Owner) -> String {
    let labels = &object["metadata"]["labels"];
    labels["app"]
        .as_str()
        .or_else(|| labels["app.kubernetes.io/name"].as_str())
        .map_or_else(|| owner.name.clone(), str::to_owned)
}
