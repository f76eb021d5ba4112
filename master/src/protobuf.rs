//! Decodes the Kubernetes protobuf encoding that kubectl sends for create requests into JSON objects.
//!
//! kubectl's generator commands (`kubectl create namespace|deployment|configmap|secret|service|
//! serviceaccount|job|quota|token`, `kubectl auth whoami`) send bodies as `k8s\0` followed by a
//! `runtime.Unknown` envelope whose `raw` field holds the object. The schema table below lists,
//! for the messages those commands produce, each field's number, JSON name and type (from the upstream
//! `generated.proto` files). Fields the table does not know are skipped, as protobuf readers do,
//! and reported in [`Decoded::unknown_fields`]: the API refuses such bodies (a newer kubectl
//! would otherwise lose what it sent without a word).

use base64::Engine;
use jiff::Timestamp;
use serde_json::{json, Map, Value};

/// The media type of Kubernetes protobuf bodies.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with the Kubernetes protobuf magic.
    #[error("the body is not Kubernetes protobuf (missing the k8s\\0 prefix)")]
    NotKubernetes,
    /// The wire data ends early or is malformed.
    #[error("malformed protobuf in {message}: {detail}")]
    Malformed {
        /// The message being read.
        message: &'static str,
        /// What went wrong.
        detail: &'static str,
    },
    /// The object's kind is not one bramble decodes from protobuf.
    #[error("protobuf bodies of {api_version} {kind} are not supported; send JSON instead")]
    UnsupportedKind {
        /// apiVersion of the object.
        api_version: String,
        /// kind of the object.
        kind: String,
    },
}

#[derive(Clone, Copy)]
enum Type {
    Str,
    Int32,
    Int64,
    Bool,
    Message(&'static str),
    IntOrString,
    Quantity,
    Time,
    MapStr,
    MapBytes,
    MapQuantity,
    /// An embedded Go struct (`json:",inline"`): its fields join the enclosing object.
    Inline(&'static str),
}

use Type::*;

#[derive(Clone, Copy)]
struct Field {
    number: u64,
    name: &'static str,
    kind: Type,
    repeated: bool,
}

const fn one(number: u64, name: &'static str, kind: Type) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
    }
}

const fn many(number: u64, name: &'static str, kind: Type) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: true,
    }
}

fn schema(message: &str) -> &'static [Field] {
    match message {
        "ObjectMeta" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "generateName", Str),
                    one(3, "namespace", Str),
                    one(5, "uid", Str),
                    one(6, "resourceVersion", Str),
                    one(7, "generation", Int64),
                    one(8, "creationTimestamp", Time),
                    one(11, "labels", MapStr),
                    one(12, "annotations", MapStr),
                    many(13, "ownerReferences", Message("OwnerReference")),
                    many(14, "finalizers", Str),
                ]
            }
        }
        "OwnerReference" => {
            const {
                &[
                    one(1, "kind", Str),
                    one(3, "name", Str),
                    one(4, "uid", Str),
                    one(5, "apiVersion", Str),
                    one(6, "controller", Bool),
                    one(7, "blockOwnerDeletion", Bool),
                ]
            }
        }
        "Namespace" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("NamespaceSpec")),
                ]
            }
        }
        "NamespaceSpec" => const { &[many(1, "finalizers", Str)] },
        "ConfigMap" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "data", MapStr),
                    one(3, "binaryData", MapBytes),
                    one(4, "immutable", Bool),
                ]
            }
        }
        "Secret" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "data", MapBytes),
                    one(3, "type", Str),
                    one(4, "stringData", MapStr),
                    one(5, "immutable", Bool),
                ]
            }
        }
        "ServiceAccount" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(3, "automountServiceAccountToken", Bool),
                    many(4, "imagePullSecrets", Message("LocalObjectReference")),
                ]
            }
        }
        "LocalObjectReference" => const { &[one(1, "name", Str)] },
        // `kubectl auth whoami` sends an empty review: only its metadata.
        "SelfSubjectReview" => const { &[one(1, "metadata", Message("ObjectMeta"))] },
        "TokenRequest" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("TokenRequestSpec")),
                ]
            }
        }
        "TokenRequestSpec" => {
            const {
                &[
                    many(1, "audiences", Str),
                    one(3, "boundObjectRef", Message("BoundObjectReference")),
                    one(4, "expirationSeconds", Int64),
                ]
            }
        }
        "BoundObjectReference" => {
            const {
                &[
                    one(1, "kind", Str),
                    one(2, "apiVersion", Str),
                    one(3, "name", Str),
                    one(4, "uid", Str),
                ]
            }
        }
        "Service" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("ServiceSpec")),
                ]
            }
        }
        "ServiceSpec" => {
            const {
                &[
                    many(1, "ports", Message("ServicePort")),
                    one(2, "selector", MapStr),
                    one(3, "clusterIP", Str),
                    one(4, "type", Str),
                    many(5, "externalIPs", Str),
                    one(7, "sessionAffinity", Str),
                    one(8, "loadBalancerIP", Str),
                    one(10, "externalName", Str),
                    one(11, "externalTrafficPolicy", Str),
                ]
            }
        }
        "ServicePort" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "protocol", Str),
                    one(3, "port", Int32),
                    one(4, "targetPort", IntOrString),
                    one(5, "nodePort", Int32),
                    one(6, "appProtocol", Str),
                ]
            }
        }
        "Deployment" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("DeploymentSpec")),
                ]
            }
        }
        "DeploymentSpec" => {
            const {
                &[
                    one(1, "replicas", Int32),
                    one(2, "selector", Message("LabelSelector")),
                    one(3, "template", Message("PodTemplateSpec")),
                    one(4, "strategy", Message("DeploymentStrategy")),
                    one(5, "minReadySeconds", Int32),
                    one(6, "revisionHistoryLimit", Int32),
                    one(7, "paused", Bool),
                    one(9, "progressDeadlineSeconds", Int32),
                ]
            }
        }
        "DeploymentStrategy" => {
            const {
                &[
                    one(1, "type", Str),
                    one(2, "rollingUpdate", Message("RollingUpdateDeployment")),
                ]
            }
        }
        "RollingUpdateDeployment" => {
            const {
                &[
                    one(1, "maxUnavailable", IntOrString),
                    one(2, "maxSurge", IntOrString),
                ]
            }
        }
        "LabelSelector" => {
            const {
                &[
                    one(1, "matchLabels", MapStr),
                    many(2, "matchExpressions", Message("LabelSelectorRequirement")),
                ]
            }
        }
        "LabelSelectorRequirement" => {
            const {
                &[
                    one(1, "key", Str),
                    one(2, "operator", Str),
                    many(3, "values", Str),
                ]
            }
        }
        "HorizontalPodAutoscaler" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("HorizontalPodAutoscalerSpec")),
                ]
            }
        }
        "HorizontalPodAutoscalerSpec" => {
            const {
                &[
                    one(1, "scaleTargetRef", Message("CrossVersionObjectReference")),
                    one(2, "minReplicas", Int32),
                    one(3, "maxReplicas", Int32),
                    many(4, "metrics", Message("MetricSpec")),
                    one(5, "behavior", Message("HorizontalPodAutoscalerBehavior")),
                ]
            }
        }
        "HorizontalPodAutoscalerSpecV1" => {
            const {
                &[
                    one(1, "scaleTargetRef", Message("CrossVersionObjectReference")),
                    one(2, "minReplicas", Int32),
                    one(3, "maxReplicas", Int32),
                    one(4, "targetCPUUtilizationPercentage", Int32),
                ]
            }
        }
        "HorizontalPodAutoscalerV1" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("HorizontalPodAutoscalerSpecV1")),
                ]
            }
        }
        "CrossVersionObjectReference" => {
            const {
                &[
                    one(1, "kind", Str),
                    one(2, "name", Str),
                    one(3, "apiVersion", Str),
                ]
            }
        }
        "MetricSpec" => {
            const {
                &[
                    one(1, "type", Str),
                    one(4, "resource", Message("ResourceMetricSource")),
                ]
            }
        }
        "ResourceMetricSource" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "target", Message("MetricTarget")),
                ]
            }
        }
        "MetricTarget" => {
            const {
                &[
                    one(1, "type", Str),
                    one(2, "value", Quantity),
                    one(3, "averageValue", Quantity),
                    one(4, "averageUtilization", Int32),
                ]
            }
        }
        "HorizontalPodAutoscalerBehavior" => {
            const {
                &[
                    one(1, "scaleUp", Message("HPAScalingRules")),
                    one(2, "scaleDown", Message("HPAScalingRules")),
                ]
            }
        }
        "HPAScalingRules" => {
            const {
                &[
                    one(1, "selectPolicy", Str),
                    many(2, "policies", Message("HPAScalingPolicy")),
                    one(3, "stabilizationWindowSeconds", Int32),
                ]
            }
        }
        "HPAScalingPolicy" => {
            const {
                &[
                    one(1, "type", Str),
                    one(2, "value", Int32),
                    one(3, "periodSeconds", Int32),
                ]
            }
        }
        "Job" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("JobSpec")),
                ]
            }
        }
        "JobSpec" => {
            const {
                &[
                    one(1, "parallelism", Int32),
                    one(2, "completions", Int32),
                    one(3, "activeDeadlineSeconds", Int64),
                    one(4, "selector", Message("LabelSelector")),
                    one(5, "manualSelector", Bool),
                    one(6, "template", Message("PodTemplateSpec")),
                    one(7, "backoffLimit", Int32),
                    one(8, "ttlSecondsAfterFinished", Int32),
                    one(9, "completionMode", Str),
                    one(10, "suspend", Bool),
                    one(11, "podFailurePolicy", Message("PodFailurePolicy")),
                    one(12, "backoffLimitPerIndex", Int32),
                    one(13, "maxFailedIndexes", Int32),
                    one(14, "podReplacementPolicy", Str),
                    one(15, "managedBy", Str),
                ]
            }
        }
        "PodFailurePolicy" => const { &[many(1, "rules", Message("PodFailurePolicyRule"))] },
        "PodFailurePolicyRule" => {
            const {
                &[
                    one(1, "action", Str),
                    one(2, "onExitCodes", Message("PodFailurePolicyOnExitCodes")),
                    many(
                        3,
                        "onPodConditions",
                        Message("PodFailurePolicyOnPodConditions"),
                    ),
                ]
            }
        }
        "PodFailurePolicyOnExitCodes" => {
            const {
                &[
                    one(1, "containerName", Str),
                    one(2, "operator", Str),
                    many(3, "values", Int32),
                ]
            }
        }
        "PodFailurePolicyOnPodConditions" => {
            const { &[one(1, "type", Str), one(2, "status", Str)] }
        }
        "CronJob" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("CronJobSpec")),
                ]
            }
        }
        "CronJobSpec" => {
            const {
                &[
                    one(1, "schedule", Str),
                    one(8, "timeZone", Str),
                    one(2, "startingDeadlineSeconds", Int64),
                    one(3, "concurrencyPolicy", Str),
                    one(4, "suspend", Bool),
                    one(5, "jobTemplate", Message("JobTemplateSpec")),
                    one(6, "successfulJobsHistoryLimit", Int32),
                    one(7, "failedJobsHistoryLimit", Int32),
                ]
            }
        }
        "JobTemplateSpec" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("JobSpec")),
                ]
            }
        }
        "ResourceQuota" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("ResourceQuotaSpec")),
                ]
            }
        }
        "ResourceQuotaSpec" => const { &[one(1, "hard", MapQuantity), many(2, "scopes", Str)] },
        "Pod" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("PodSpec")),
                ]
            }
        }
        "PodTemplateSpec" => {
            const {
                &[
                    one(1, "metadata", Message("ObjectMeta")),
                    one(2, "spec", Message("PodSpec")),
                ]
            }
        }
        "PodSpec" => {
            const {
                &[
                    many(1, "volumes", Message("Volume")),
                    many(2, "containers", Message("Container")),
                    one(3, "restartPolicy", Str),
                    one(4, "terminationGracePeriodSeconds", Int64),
                    one(5, "activeDeadlineSeconds", Int64),
                    one(6, "dnsPolicy", Str),
                    one(7, "nodeSelector", MapStr),
                    one(8, "serviceAccountName", Str),
                    one(9, "serviceAccount", Str),
                    one(10, "nodeName", Str),
                    one(11, "hostNetwork", Bool),
                    one(12, "hostPID", Bool),
                    one(13, "hostIPC", Bool),
                    one(14, "securityContext", Message("PodSecurityContext")),
                    many(15, "imagePullSecrets", Message("LocalObjectReference")),
                    one(16, "hostname", Str),
                    one(17, "subdomain", Str),
                    one(19, "schedulerName", Str),
                    many(20, "initContainers", Message("Container")),
                    one(21, "automountServiceAccountToken", Bool),
                    many(22, "tolerations", Message("Toleration")),
                    one(24, "priorityClassName", Str),
                    one(25, "priority", Int32),
                    one(27, "shareProcessNamespace", Bool),
                    one(29, "runtimeClassName", Str),
                    one(30, "enableServiceLinks", Bool),
                    one(31, "preemptionPolicy", Str),
                    one(35, "setHostnameAsFQDN", Bool),
                    one(37, "hostUsers", Bool),
                ]
            }
        }
        "Container" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "image", Str),
                    many(3, "command", Str),
                    many(4, "args", Str),
                    one(5, "workingDir", Str),
                    many(6, "ports", Message("ContainerPort")),
                    many(7, "env", Message("EnvVar")),
                    one(8, "resources", Message("ResourceRequirements")),
                    many(9, "volumeMounts", Message("VolumeMount")),
                    one(13, "terminationMessagePath", Str),
                    one(14, "imagePullPolicy", Str),
                    one(15, "securityContext", Message("SecurityContext")),
                    many(19, "envFrom", Message("EnvFromSource")),
                    one(16, "stdin", Bool),
                    one(17, "stdinOnce", Bool),
                    one(18, "tty", Bool),
                    one(20, "terminationMessagePolicy", Str),
                ]
            }
        }
        "ContainerPort" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "hostPort", Int32),
                    one(3, "containerPort", Int32),
                    one(4, "protocol", Str),
                    one(5, "hostIP", Str),
                ]
            }
        }
        "EnvVar" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "value", Str),
                    one(3, "valueFrom", Message("EnvVarSource")),
                ]
            }
        }
        "EnvVarSource" => {
            const {
                &[
                    one(1, "fieldRef", Message("ObjectFieldSelector")),
                    one(3, "configMapKeyRef", Message("KeySelector")),
                    one(4, "secretKeyRef", Message("KeySelector")),
                ]
            }
        }
        "ObjectFieldSelector" => const { &[one(1, "apiVersion", Str), one(2, "fieldPath", Str)] },
        "KeySelector" => {
            const {
                &[
                    one(1, "", Inline("LocalObjectReference")),
                    one(2, "key", Str),
                    one(3, "optional", Bool),
                ]
            }
        }
        "EnvFromSource" => {
            const {
                &[
                    one(1, "prefix", Str),
                    one(2, "configMapRef", Message("EnvSource")),
                    one(3, "secretRef", Message("EnvSource")),
                ]
            }
        }
        "EnvSource" => {
            const {
                &[
                    one(1, "", Inline("LocalObjectReference")),
                    one(2, "optional", Bool),
                ]
            }
        }
        "Volume" => const { &[one(1, "name", Str), one(2, "", Inline("VolumeSource"))] },
        "VolumeSource" => {
            const {
                &[
                    one(1, "hostPath", Message("HostPathVolumeSource")),
                    one(2, "emptyDir", Message("EmptyDirVolumeSource")),
                    one(6, "secret", Message("SecretVolumeSource")),
                    one(
                        10,
                        "persistentVolumeClaim",
                        Message("PersistentVolumeClaimVolumeSource"),
                    ),
                    one(19, "configMap", Message("ConfigMapVolumeSource")),
                ]
            }
        }
        "HostPathVolumeSource" => const { &[one(1, "path", Str), one(2, "type", Str)] },
        "EmptyDirVolumeSource" => const { &[one(1, "medium", Str), one(2, "sizeLimit", Quantity)] },
        "SecretVolumeSource" => {
            const {
                &[
                    one(1, "secretName", Str),
                    many(2, "items", Message("KeyToPath")),
                    one(3, "defaultMode", Int32),
                    one(4, "optional", Bool),
                ]
            }
        }
        "ConfigMapVolumeSource" => {
            const {
                &[
                    one(1, "", Inline("LocalObjectReference")),
                    many(2, "items", Message("KeyToPath")),
                    one(3, "defaultMode", Int32),
                    one(4, "optional", Bool),
                ]
            }
        }
        "KeyToPath" => {
            const {
                &[
                    one(1, "key", Str),
                    one(2, "path", Str),
                    one(3, "mode", Int32),
                ]
            }
        }
        "PersistentVolumeClaimVolumeSource" => {
            const { &[one(1, "claimName", Str), one(2, "readOnly", Bool)] }
        }
        "Toleration" => {
            const {
                &[
                    one(1, "key", Str),
                    one(2, "operator", Str),
                    one(3, "value", Str),
                    one(4, "effect", Str),
                    one(5, "tolerationSeconds", Int64),
                ]
            }
        }
        "PodSecurityContext" => {
            const {
                &[
                    one(2, "runAsUser", Int64),
                    one(3, "runAsNonRoot", Bool),
                    many(4, "supplementalGroups", Int64),
                    one(5, "fsGroup", Int64),
                    one(6, "runAsGroup", Int64),
                ]
            }
        }
        "SecurityContext" => {
            const {
                &[
                    one(1, "capabilities", Message("Capabilities")),
                    one(2, "privileged", Bool),
                    one(4, "runAsUser", Int64),
                    one(5, "runAsNonRoot", Bool),
                    one(6, "readOnlyRootFilesystem", Bool),
                    one(7, "allowPrivilegeEscalation", Bool),
                    one(8, "runAsGroup", Int64),
                ]
            }
        }
        "Capabilities" => const { &[many(1, "add", Str), many(2, "drop", Str)] },
        "ResourceRequirements" => {
            const {
                &[
                    one(1, "limits", MapQuantity),
                    one(2, "requests", MapQuantity),
                ]
            }
        }
        "VolumeMount" => {
            const {
                &[
                    one(1, "name", Str),
                    one(2, "readOnly", Bool),
                    one(3, "mountPath", Str),
                    one(4, "subPath", Str),
                ]
            }
        }
        _ => &[],
    }
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    data: &'a [u8],
    message: &'static str,
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn malformed(&self, detail: &'static str) -> ProtobufError {
        ProtobufError::Malformed {
            message: self.message,
            detail,
        }
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in 0..10 {
            let (&byte, rest) = self
                .data
                .split_first()
                .ok_or_else(|| self.malformed("truncated varint"))?;
            self.data = rest;
            value |= u64::from(byte & 0x7f) << (shift * 7);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ProtobufError> {
        if length > self.data.len() {
            return Err(self.malformed("length past the end of the data"));
        }
        let (head, rest) = self.data.split_at(length);
        self.data = rest;
        Ok(head)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtobufError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed(self.take(8)?),
            2 => {
                let length = self.varint()?;
                let length = usize::try_from(length).map_err(|_| self.malformed("huge length"))?;
                Wire::Bytes(self.take(length)?)
            }
            5 => Wire::Fixed(self.take(4)?),
            _ => return Err(self.malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn reader<'a>(data: &'a [u8], message: &'static str) -> Reader<'a> {
    Reader { data, message }
}

fn utf8(bytes: &[u8], message: &'static str) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::Malformed {
        message,
        detail: "a string field is not UTF-8",
    })
}

/// Reads a map entry message {1: key, 2: value}.
fn map_entry<'a>(
    bytes: &'a [u8],
    message: &'static str,
) -> Result<(String, &'a [u8]), ProtobufError> {
    let mut entry = reader(bytes, message);
    let (mut key, mut value): (String, &[u8]) = (String::new(), &[]);
    while let Some((number, wire)) = entry.field()? {
        match (number, wire) {
            (1, Wire::Bytes(k)) => key = utf8(k, message)?,
            (2, Wire::Bytes(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn decode_scalar(
    kind: Type,
    wire: Wire<'_>,
    message: &'static str,
    unknown: &mut Unknown,
) -> Result<Option<Value>, ProtobufError> {
    let wrong = || ProtobufError::Malformed {
        message,
        detail: "a field has the wrong wire type",
    };
    Ok(Some(match (kind, wire) {
        (Str, Wire::Bytes(b)) => Value::String(utf8(b, message)?),
        (Int32, Wire::Varint(v)) => json!(v as i64 as i32),
        (Int64, Wire::Varint(v)) => json!(v as i64),
        (Bool, Wire::Varint(v)) => json!(v != 0),
        (Message(name), Wire::Bytes(b)) => decode_message(b, name, unknown)?,
        (Quantity, Wire::Bytes(b)) => {
            let mut quantity = reader(b, "Quantity");
            let mut text = String::new();
            while let Some((number, wire)) = quantity.field()? {
                if let (1, Wire::Bytes(s)) = (number, wire) {
                    text = utf8(s, "Quantity")?;
                }
            }
            json!(text)
        }
        (IntOrString, Wire::Bytes(b)) => {
            let mut value = reader(b, "IntOrString");
            let (mut is_string, mut int, mut text) = (false, 0i64, String::new());
            while let Some((number, wire)) = value.field()? {
                match (number, wire) {
                    (1, Wire::Varint(t)) => is_string = t == 1,
                    (2, Wire::Varint(i)) => int = i64::from(i as i64 as i32),
                    (3, Wire::Bytes(s)) => text = utf8(s, "IntOrString")?,
                    _ => {}
                }
            }
            if is_string {
                json!(text)
            } else {
                json!(int)
            }
        }
        (Time, Wire::Bytes(b)) => {
            let mut time = reader(b, "Time");
            let (mut seconds, mut nanos) = (0i64, 0i32);
            while let Some((number, wire)) = time.field()? {
                match (number, wire) {
                    (1, Wire::Varint(s)) => seconds = s as i64,
                    (2, Wire::Varint(n)) => nanos = n as i64 as i32,
                    _ => {}
                }
            }
            // The zero time is how Go encodes "unset" (e.g. creationTimestamp of a new object).
            if seconds == 0 && nanos == 0 {
                return Ok(None);
            }
            let at = Timestamp::new(seconds, nanos).map_err(|_| ProtobufError::Malformed {
                message: "Time",
                detail: "time out of range",
            })?;
            json!(at.to_string())
        }
        _ => return Err(wrong()),
    }))
}

/// Fields whose zero value is meaningful: Go pointers (absent is different from zero) and
/// required fields. Go's protobuf encoding writes every other scalar even when it is zero, where
/// JSON's `omitempty` leaves it out, so those zeros are dropped to match the JSON form.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "minReplicas",
    "stabilizationWindowSeconds",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "parallelism",
    "completions",
    "activeDeadlineSeconds",
    "backoffLimit",
    "ttlSecondsAfterFinished",
    "terminationGracePeriodSeconds",
    "port",
    "containerPort",
    "immutable",
    "manualSelector",
    "suspend",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "priority",
    "optional",
    "defaultMode",
    "mode",
    "tolerationSeconds",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "privileged",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "hostUsers",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "controller",
    "blockOwnerDeletion",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
];

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        _ => false,
    }
}

/// Fields the schema table does not know, as `path (field N of Message)`, the path in JSON
/// names from the object's root.
#[derive(Debug, Default)]
struct Unknown {
    path: Vec<&'static str>,
    fields: Vec<String>,
}

fn decode_message(
    data: &[u8],
    message: &'static str,
    unknown: &mut Unknown,
) -> Result<Value, ProtobufError> {
    let fields = schema(message);
    let mut out = Map::new();
    let mut wire_reader = reader(data, message);
    while let Some((number, wire)) = wire_reader.field()? {
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            // Go writes every non-pointer field, zero or not: an unknown field holding its zero
            // value loses nothing when skipped (JSON would have left it out).
            if is_zero_wire(&wire, 0) {
                continue;
            }
            let at = if unknown.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", unknown.path.join("."))
            };
            unknown
                .fields
                .push(format!("{at}field {number} of {message}"));
            continue;
        };
        unknown.path.push(field.name);
        let value = decode_field(field, wire, message, unknown, &mut out);
        unknown.path.pop();
        value?;
    }
    Ok(Value::Object(out))
}

/// Whether a field holds its type's zero value: 0, empty, or a message of zero fields (as far
/// as the bytes read as one; a few levels deep).
fn is_zero_wire(wire: &Wire<'_>, depth: usize) -> bool {
    match wire {
        Wire::Varint(value) => *value == 0,
        Wire::Fixed(bytes) => bytes.iter().all(|b| *b == 0),
        Wire::Bytes([]) => true,
        Wire::Bytes(bytes) if depth < 8 => {
            let mut inner = reader(bytes, "unknown");
            loop {
                match inner.field() {
                    Ok(Some((_, wire))) if is_zero_wire(&wire, depth + 1) => {}
                    Ok(None) => return true,
                    _ => return false,
                }
            }
        }
        Wire::Bytes(_) => false,
    }
}

fn decode_field(
    field: &Field,
    wire: Wire<'_>,
    message: &'static str,
    unknown: &mut Unknown,
    out: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    match field.kind {
        MapStr | MapBytes | MapQuantity => {
            let Wire::Bytes(bytes) = wire else {
                return Err(ProtobufError::Malformed {
                    message,
                    detail: "a map entry is not length-delimited",
                });
            };
            let (key, value) = map_entry(bytes, message)?;
            let value = match field.kind {
                MapStr => json!(utf8(value, message)?),
                MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(value)),
                _ => decode_scalar(Quantity, Wire::Bytes(value), message, unknown)?
                    .unwrap_or_default(),
            };
            let entry = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(map) = entry.as_object_mut() {
                map.insert(key, value);
            }
        }
        Inline(name) => {
            let Wire::Bytes(bytes) = wire else {
                return Err(ProtobufError::Malformed {
                    message,
                    detail: "an embedded message is not length-delimited",
                });
            };
            if let Value::Object(fields) = decode_message(bytes, name, unknown)? {
                out.extend(fields);
            }
        }
        kind => {
            let Some(value) = decode_scalar(kind, wire, message, unknown)? else {
                return Ok(());
            };
            let scalar = matches!(kind, Str | Int32 | Int64 | Bool);
            if scalar && !field.repeated && is_zero(&value) && !KEEP_ZERO.contains(&field.name) {
                return Ok(());
            }
            if field.repeated {
                let entry = out.entry(field.name).or_insert_with(|| json!([]));
                if let Some(items) = entry.as_array_mut() {
                    items.push(value);
                }
            } else {
                out.insert(field.name.to_owned(), value);
            }
        }
    }
    Ok(())
}

fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => "Namespace",
        ("v1", "ConfigMap") => "ConfigMap",
        ("v1", "Secret") => "Secret",
        ("v1", "Service") => "Service",
        ("v1", "ServiceAccount") => "ServiceAccount",
        ("authentication.k8s.io/v1", "TokenRequest") => "TokenRequest",
        ("authentication.k8s.io/v1", "SelfSubjectReview") => "SelfSubjectReview",
        ("v1", "ResourceQuota") => "ResourceQuota",
        ("v1", "Pod") => "Pod",
        ("apps/v1", "Deployment") => "Deployment",
        ("batch/v1", "Job") => "Job",
        ("batch/v1", "CronJob") => "CronJob",
        ("autoscaling/v2", "HorizontalPodAutoscaler") => "HorizontalPodAutoscaler",
        ("autoscaling/v1", "HorizontalPodAutoscaler") => "HorizontalPodAutoscalerV1",
        _ => return None,
    })
}

/// A decoded body and the fields the schema table does not know (skipped).
#[derive(Debug)]
pub struct Decoded {
    /// The object, as JSON.
    pub object: Value,
    /// Fields left out, as `spec.template: field 99 of PodTemplateSpec`.
    pub unknown_fields: Vec<String>,
}

/// Decodes a request body, skipping unknown fields as protobuf readers do; see [`decode`] for
/// the fields skipped. The tests' short form; the API refuses unknown fields.
#[cfg(test)]
fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    decode(body).map(|decoded| decoded.object)
}

/// Decodes a request body: the magic `k8s\0`, then a `runtime.Unknown` envelope
/// (typeMeta{apiVersion, kind}, raw, contentEncoding, contentType) whose `raw` is the object.
pub fn decode(body: &[u8]) -> Result<Decoded, ProtobufError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::NotKubernetes)?;
    let mut unknown = reader(envelope, "Unknown");
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((number, wire)) = unknown.field()? {
        match (number, wire) {
            (1, Wire::Bytes(type_meta)) => {
                let mut meta = reader(type_meta, "TypeMeta");
                while let Some((number, wire)) = meta.field()? {
                    match (number, wire) {
                        (1, Wire::Bytes(v)) => api_version = utf8(v, "TypeMeta")?,
                        (2, Wire::Bytes(k)) => kind = utf8(k, "TypeMeta")?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    let message =
        message_for(&api_version, &kind).ok_or_else(|| ProtobufError::UnsupportedKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let mut unknown = Unknown::default();
    if let Value::Object(fields) = decode_message(raw, message, &mut unknown)? {
        object.extend(fields);
    }
    Ok(Decoded {
        object: Value::Object(object),
        unknown_fields: unknown.fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny encoder for building test messages.
    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn varint_field(number: u64, value: u64, out: &mut Vec<u8>) {
        varint(number << 3, out);
        varint(value, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut type_meta);
        bytes_field(2, kind.as_bytes(), &mut type_meta);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &type_meta, &mut body);
        bytes_field(2, raw, &mut body);
        bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut body);
        body
    }

    fn map_entry_bytes(key: &str, value: &[u8]) -> Vec<u8> {
        let mut entry = Vec::new();
        bytes_field(1, key.as_bytes(), &mut entry);
        bytes_field(2, value, &mut entry);
        entry
    }

    #[test]
    fn decodes_a_deployment_like_kubectl_create_sends() {
        let mut metadata = Vec::new();
        bytes_field(1, b"web", &mut metadata);
        bytes_field(11, &map_entry_bytes("app", b"web"), &mut metadata);
        bytes_field(8, &[], &mut metadata); // zero creationTimestamp
        let mut port = Vec::new();
        varint_field(3, 80, &mut port);
        let mut container = Vec::new();
        bytes_field(1, b"nginx", &mut container);
        bytes_field(2, b"nginx:1.27", &mut container);
        bytes_field(6, &port, &mut container);
        let mut resources = Vec::new();
        let mut quantity = Vec::new();
        bytes_field(1, b"100m", &mut quantity);
        bytes_field(2, &map_entry_bytes("cpu", &quantity), &mut resources);
        bytes_field(8, &resources, &mut container);
        let mut pod_spec = Vec::new();
        bytes_field(2, &container, &mut pod_spec);
        let mut template = Vec::new();
        let mut template_meta = Vec::new();
        bytes_field(11, &map_entry_bytes("app", b"web"), &mut template_meta);
        bytes_field(1, &template_meta, &mut template);
        bytes_field(2, &pod_spec, &mut template);
        let mut selector = Vec::new();
        bytes_field(1, &map_entry_bytes("app", b"web"), &mut selector);
        let mut spec = Vec::new();
        varint_field(1, 3, &mut spec);
        bytes_field(2, &selector, &mut spec);
        bytes_field(3, &template, &mut spec);
        varint_field(99, 7, &mut spec); // an unknown field is skipped
        varint_field(98, 0, &mut spec); // and zero-valued ones are not even reported
        bytes_field(97, &[0x0a, 0x00, 0x10, 0x00], &mut spec);
        let mut deployment = Vec::new();
        bytes_field(1, &metadata, &mut deployment);
        bytes_field(2, &spec, &mut deployment);
        let decoded = decode_object(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
        let reported = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(reported.object, decoded);
        assert_eq!(
            reported.unknown_fields,
            ["spec: field 99 of DeploymentSpec"]
        );
        assert_eq!(
            decoded,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                                               "ports": [{"containerPort": 80}],
                                                               "resources": {"requests": {"cpu": "100m"}}}]}}}
            })
        );
    }

    #[test]
    fn decodes_a_token_request_like_kubectl_create_token_sends() {
        let mut bound = Vec::new();
        bytes_field(1, b"Pod", &mut bound);
        bytes_field(2, b"v1", &mut bound);
        bytes_field(3, b"web", &mut bound);
        let mut spec = Vec::new();
        bytes_field(1, b"vault", &mut spec);
        bytes_field(3, &bound, &mut spec);
        varint_field(4, 600, &mut spec);
        let mut request = Vec::new();
        bytes_field(1, &[], &mut request);
        bytes_field(2, &spec, &mut request);
        let body = envelope("authentication.k8s.io/v1", "TokenRequest", &request);
        assert_eq!(
            decode_object(&body).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {},
                "spec": {"audiences": ["vault"], "expirationSeconds": 600,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web"}}})
        );
    }

    #[test]
    fn secrets_carry_bytes_as_base64_and_ports_int_or_string() {
        let mut metadata = Vec::new();
        bytes_field(1, b"s", &mut metadata);
        let mut secret = Vec::new();
        bytes_field(1, &metadata, &mut secret);
        bytes_field(2, &map_entry_bytes("password", b"hunter2"), &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        let decoded = decode_object(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(decoded["data"], json!({"password": "aHVudGVyMg=="}));
        let mut target = Vec::new();
        varint_field(1, 0, &mut target);
        varint_field(2, 8080, &mut target);
        let mut port = Vec::new();
        bytes_field(1, b"80-8080", &mut port);
        varint_field(3, 80, &mut port);
        bytes_field(4, &target, &mut port);
        let mut spec = Vec::new();
        bytes_field(1, &port, &mut spec);
        bytes_field(4, b"NodePort", &mut spec);
        let mut service = Vec::new();
        bytes_field(2, &spec, &mut service);
        let decoded = decode_object(&envelope("v1", "Service", &service)).unwrap();
        assert_eq!(
            decoded["spec"]["ports"][0],
            json!({"name": "80-8080", "port": 80, "targetPort": 8080})
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(
            decode_object(b"{}"),
            Err(ProtobufError::NotKubernetes)
        ));
        assert!(decode_object(b"k8s\0\x0a\xff").is_err());
        assert!(decode_object(b"k8s\0\x0a\x05ab").is_err());
        assert!(matches!(
            decode_object(&envelope("v1", "Widget", &[])),
            Err(ProtobufError::UnsupportedKind { .. })
        ));
        let mut truncated = envelope("v1", "ConfigMap", &[0x0a, 0x10, 0x01]);
        truncated.truncate(truncated.len() - 1);
        assert!(decode_object(&truncated).is_err());
    }
}
