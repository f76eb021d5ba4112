//! Admission for stored objects: defaults, structural checks against the Kubernetes types, and validation.
//!
//! The structural check round-trips an object through its `k8s-openapi` type: a wrongly typed
//! field is reported with its path, and fields the type does not know are listed (for
//! `fieldValidation=Strict` or `Warn`) and dropped, as upstream drops them. Defaults and
//! validation follow upstream's defaulters and validators for what kubectl users see.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The kind of a field error, as upstream's `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// A value is malformed or out of range.
    Invalid,
    /// A value is not one of the allowed ones.
    NotSupported,
    /// The change is not allowed.
    Forbidden,
    /// A value that must be unique is repeated.
    Duplicate,
    /// A value is too long.
    TooLong,
    /// A value has the wrong JSON type.
    TypeInvalid,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The field's path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// The offending value, as text.
    pub value: Option<String>,
    /// More detail.
    pub detail: String,
}

impl FieldError {
    /// An error of any kind.
    pub fn new(kind: FieldErrorKind, field: &str, value: Option<String>, detail: &str) -> Self {
        FieldError {
            kind,
            field: field.to_owned(),
            value,
            detail: detail.to_owned(),
        }
    }

    fn required(field: &str, detail: &str) -> Self {
        Self::new(FieldErrorKind::Required, field, None, detail)
    }

    fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self::new(
            FieldErrorKind::Invalid,
            field,
            Some(value.to_owned()),
            detail,
        )
    }

    /// The `metav1.CauseType` of the error.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// Upstream's text for the error, e.g. `spec.replicas: Invalid value: -1: must be greater than or equal to 0`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }

    /// The message without the field (upstream's `ErrorBody`): what a Status cause says, next
    /// to its own `field`.
    pub fn body(&self) -> String {
        let value = self.value.as_deref().map(|v| {
            // Already quoted (a string that looks like a number, quoted by its validator).
            let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
            if quoted || v.parse::<f64>().is_ok() || v.starts_with('{') || v.starts_with('[') {
                v.to_owned()
            } else {
                format!("\"{v}\"")
            }
        });
        let with_detail = |head: String| {
            if self.detail.is_empty() {
                head
            } else {
                format!("{head}: {}", self.detail)
            }
        };
        match self.kind {
            FieldErrorKind::Required => with_detail("Required value".to_owned()),
            FieldErrorKind::Forbidden => with_detail("Forbidden".to_owned()),
            FieldErrorKind::Duplicate => {
                format!("Duplicate value: {}", value.unwrap_or_default())
            }
            FieldErrorKind::NotSupported => {
                with_detail(format!("Unsupported value: {}", value.unwrap_or_default()))
            }
            FieldErrorKind::TooLong => with_detail("Too long".to_owned()),
            FieldErrorKind::Invalid | FieldErrorKind::TypeInvalid => match value {
                Some(value) => with_detail(format!("Invalid value: {value}")),
                None => with_detail("Invalid value".to_owned()),
            },
        }
    }
}

/// An object after the structural check.
#[derive(Debug)]
pub struct Structural {
    /// The object as its type round-trips it (unknown fields dropped).
    pub object: Value,
    /// Paths of fields the type does not know.
    pub unknown_fields: Vec<String>,
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, FieldError> {
    let typed: T = serde_path_to_error::deserialize(object).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(
            FieldErrorKind::TypeInvalid,
            &field,
            None,
            &error.into_inner().to_string(),
        )
    })?;
    serde_json::to_value(&typed)
        .map_err(|e| FieldError::new(FieldErrorKind::TypeInvalid, "", None, &e.to_string()))
}

fn unknown_fields(input: &Value, output: &Value, path: &str, found: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(input), Value::Object(output)) => {
            for (key, value) in input {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match output.get(key) {
                    Some(out) => unknown_fields(value, out, &child, found),
                    None if value.is_null() => {}
                    None => found.push(child),
                }
            }
        }
        (Value::Array(input), Value::Array(output)) => {
            for (index, (i, o)) in input.iter().zip(output).enumerate() {
                unknown_fields(i, o, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// Round-trips the object through its k8s-openapi type.
pub fn check_structure(group: &str, kind: &str, object: &Value) -> Result<Structural, FieldError> {
    use k8s_openapi::api::{apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch};
    use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
    let output = match (group, kind) {
        ("", "Namespace") => round_trip::<core::Namespace>(object)?,
        ("", "Pod") => round_trip::<core::Pod>(object)?,
        ("", "Service") => round_trip::<core::Service>(object)?,
        ("", "Endpoints") => round_trip::<core::Endpoints>(object)?,
        ("", "Node") => round_trip::<core::Node>(object)?,
        ("", "ConfigMap") => round_trip::<core::ConfigMap>(object)?,
        ("", "Secret") => round_trip::<core::Secret>(object)?,
        ("", "ReplicationController") => round_trip::<core::ReplicationController>(object)?,
        ("", "Event") => round_trip::<core::Event>(object)?,
        ("", "ServiceAccount") => round_trip::<core::ServiceAccount>(object)?,
        ("", "ResourceQuota") => round_trip::<core::ResourceQuota>(object)?,
        ("", "LimitRange") => round_trip::<core::LimitRange>(object)?,
        ("", "PersistentVolume") => round_trip::<core::PersistentVolume>(object)?,
        ("", "PersistentVolumeClaim") => round_trip::<core::PersistentVolumeClaim>(object)?,
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::Lease>(object)?,
        ("discovery.k8s.io", "EndpointSlice") => {
            round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>(object)?
        }
        ("apps", "Deployment") => round_trip::<apps::Deployment>(object)?,
        ("apps", "ReplicaSet") => round_trip::<apps::ReplicaSet>(object)?,
        ("apps", "DaemonSet") => round_trip::<apps::DaemonSet>(object)?,
        ("apps", "StatefulSet") => round_trip::<apps::StatefulSet>(object)?,
        ("apps", "ControllerRevision") => round_trip::<apps::ControllerRevision>(object)?,
        ("batch", "Job") => round_trip::<batch::Job>(object)?,
        ("batch", "CronJob") => round_trip::<batch::CronJob>(object)?,
        ("policy", "PodDisruptionBudget") => {
            round_trip::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(object)?
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            round_trip::<k8s_openapi::api::scheduling::v1::PriorityClass>(object)?
        }
        ("storage.k8s.io", "StorageClass") => {
            round_trip::<k8s_openapi::api::storage::v1::StorageClass>(object)?
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            round_trip::<autoscaling::HorizontalPodAutoscaler>(object)?
        }
        ("rbac.authorization.k8s.io", kind) => {
            use k8s_openapi::api::rbac::v1 as rbac;
            match kind {
                "ClusterRole" => round_trip::<rbac::ClusterRole>(object)?,
                "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(object)?,
                "Role" => round_trip::<rbac::Role>(object)?,
                "RoleBinding" => round_trip::<rbac::RoleBinding>(object)?,
                _ => object.clone(),
            }
        }
        ("authorization.k8s.io", kind) => {
            use k8s_openapi::api::authorization::v1 as authorization;
            match kind {
                "LocalSubjectAccessReview" => {
                    round_trip::<authorization::LocalSubjectAccessReview>(object)?
                }
                "SelfSubjectAccessReview" => {
                    round_trip::<authorization::SelfSubjectAccessReview>(object)?
                }
                "SelfSubjectRulesReview" => {
                    round_trip::<authorization::SelfSubjectRulesReview>(object)?
                }
                "SubjectAccessReview" => round_trip::<authorization::SubjectAccessReview>(object)?,
                _ => object.clone(),
            }
        }
        ("authentication.k8s.io", kind) => {
            use k8s_openapi::api::authentication::v1 as authentication;
            match kind {
                "SelfSubjectReview" => round_trip::<authentication::SelfSubjectReview>(object)?,
                "TokenReview" => round_trip::<authentication::TokenReview>(object)?,
                "TokenRequest" => round_trip::<authentication::TokenRequest>(object)?,
                _ => object.clone(),
            }
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            round_trip::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>(object)?
        }
        _ => object.clone(),
    };
    let mut unknown = Vec::new();
    unknown_fields(object, &output, "", &mut unknown);
    Ok(Structural {
        object: output,
        unknown_fields: unknown,
    })
}

// ----- defaults ------------------------------------------------------------------------------

fn set_default(object: &mut Value, field: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        if map.get(field).is_none_or(Value::is_null) {
            map.insert(field.to_owned(), value);
        }
    }
}

fn child<'a>(object: &'a mut Value, field: &str) -> &'a mut Value {
    set_default(object, field, json!({}));
    &mut object[field]
}

fn default_probe(probe: &mut Value) {
    if probe.is_object() {
        set_default(probe, "timeoutSeconds", json!(1));
        set_default(probe, "periodSeconds", json!(10));
        set_default(probe, "successThreshold", json!(1));
        set_default(probe, "failureThreshold", json!(3));
        if let Some(http) = probe.get_mut("httpGet").filter(|h| h.is_object()) {
            set_default(http, "path", json!("/"));
            set_default(http, "scheme", json!("HTTP"));
        }
    }
}

fn default_container(container: &mut Value) {
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    let image = container["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
    set_default(
        container,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(container, "resources", json!({}));
    for port in container["ports"].as_array_mut().into_iter().flatten() {
        set_default(port, "protocol", json!("TCP"));
    }
    for env in container["env"].as_array_mut().into_iter().flatten() {
        if let Some(field_ref) = env.pointer_mut("/valueFrom/fieldRef") {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = container.get_mut(probe) {
            default_probe(probe);
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    for field in ["containers", "initContainers"] {
        for container in spec[field].as_array_mut().into_iter().flatten() {
            default_container(container);
        }
    }
    for volume in spec["volumes"].as_array_mut().into_iter().flatten() {
        // A volume that names no source is an emptyDir (upstream's SetDefaults_Volume).
        let has_source = volume
            .as_object()
            .is_some_and(|v| v.iter().any(|(k, v)| k != "name" && !v.is_null()));
        if volume.is_object() && !has_source {
            volume["emptyDir"] = json!({});
        }
        for source in ["configMap", "secret"] {
            if let Some(source) = volume.get_mut(source).filter(|s| s.is_object()) {
                set_default(source, "defaultMode", json!(420));
            }
        }
    }
}

/// Upstream's `SetDefaults_StatefulSet`: a `rollingUpdate` block (with partition 0) appears
/// only when the strategy type was left out; the claim templates get the claim defaults.
fn default_stateful_set(object: &mut Value) {
    let spec = child(object, "spec");
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = child(spec, "updateStrategy");
    if strategy["type"].is_null() {
        set_default(strategy, "type", json!("RollingUpdate"));
        set_default(strategy, "rollingUpdate", json!({}));
    }
    if strategy["type"] == "RollingUpdate" {
        if let Some(rolling) = strategy.get_mut("rollingUpdate") {
            set_default(rolling, "partition", json!(0));
        }
    }
    let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
    set_default(retention, "whenDeleted", json!("Retain"));
    set_default(retention, "whenScaled", json!("Retain"));
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    for claim in spec["volumeClaimTemplates"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter(|c| c.is_object())
    {
        set_default(child(claim, "spec"), "volumeMode", json!("Filesystem"));
        set_default(child(claim, "status"), "phase", json!("Pending"));
    }
    default_template(object);
}

/// Upstream's `SetDefaults_Job` past completions and parallelism.
fn default_job_spec(spec: &mut Value) {
    let per_index = !spec["backoffLimitPerIndex"].is_null();
    set_default(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let replacement = if spec["podFailurePolicy"].is_object() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    let rules = spec
        .pointer_mut("/podFailurePolicy/rules")
        .and_then(Value::as_array_mut);
    for rule in rules.into_iter().flatten() {
        let patterns = rule
            .get_mut("onPodConditions")
            .and_then(Value::as_array_mut);
        for pattern in patterns.into_iter().flatten() {
            set_default(pattern, "status", json!("True"));
        }
    }
}

fn default_template(object: &mut Value) {
    let template = child(child(object, "spec"), "template");
    default_pod_spec(child(template, "spec"));
}

/// Fills the defaults upstream's defaulters set, only where absent.
pub fn apply_defaults(group: &str, kind: &str, object: &mut Value) {
    if !object.is_object() {
        return;
    }
    match (group, kind) {
        ("", "Pod") => {
            default_pod_spec(child(object, "spec"));
            crate::limit_range::requests_from_limits(child(object, "spec"));
        }
        ("", "LimitRange") => crate::limit_range::apply_defaults(object),
        ("rbac.authorization.k8s.io", kind) => {
            crate::rbac::validation::apply_defaults(kind, object)
        }
        ("scheduling.k8s.io", "PriorityClass") => crate::priority::apply_defaults(object),
        ("apps", "Deployment") => {
            let spec = child(object, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = child(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!("25%"));
                set_default(rolling, "maxSurge", json!("25%"));
            }
            default_template(object);
        }
        ("apps", "ReplicaSet") => {
            set_default(child(object, "spec"), "replicas", json!(1));
            default_template(object);
        }
        ("", "ReplicationController") => {
            let template_labels = object.pointer("/spec/template/metadata/labels").cloned();
            let spec = child(object, "spec");
            set_default(spec, "replicas", json!(1));
            if let Some(labels) = template_labels {
                set_default(spec, "selector", labels.clone());
                set_default(child(object, "metadata"), "labels", labels);
            }
            default_template(object);
        }
        ("apps", "DaemonSet") => {
            let spec = child(object, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = child(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!(1));
                set_default(rolling, "maxSurge", json!(0));
            }
            default_template(object);
        }
        ("apps", "StatefulSet") => default_stateful_set(object),
        ("batch", "Job") => {
            let spec = child(object, "spec");
            // Upstream: a Job with parallelism but no completions is a work queue.
            if spec["parallelism"].is_null() {
                set_default(spec, "completions", json!(1));
            }
            set_default(spec, "parallelism", json!(1));
            default_job_spec(spec);
            default_template(object);
        }
        ("batch", "CronJob") => {
            let spec = child(object, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            // Only the pod template is defaulted: the Job's own defaults come when it is made.
            let template = child(child(child(spec, "jobTemplate"), "spec"), "template");
            default_pod_spec(child(template, "spec"));
        }
        ("", "Service") => {
            let spec = child(object, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let kind = spec["type"].as_str().unwrap_or_default().to_owned();
            if kind != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if kind == "NodePort" || kind == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            for port in spec["ports"].as_array_mut().into_iter().flatten() {
                set_default(port, "protocol", json!("TCP"));
                let number = port["port"].clone();
                set_default(port, "targetPort", number);
            }
        }
        ("", "Namespace") => {
            set_default(child(object, "spec"), "finalizers", json!(["kubernetes"]));
        }
        ("", "Secret") => {
            set_default(object, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) =
                object.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                let data = child(object, "data");
                for (key, value) in string_data {
                    let text = value.as_str().unwrap_or_default();
                    data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        ("", "PersistentVolume") => {
            let spec = child(object, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            if let Some(host_path) = spec.get_mut("hostPath").filter(|h| h.is_object()) {
                set_default(host_path, "type", json!(""));
            }
            set_default(child(object, "status"), "phase", json!("Pending"));
        }
        ("", "PersistentVolumeClaim") => {
            set_default(child(object, "spec"), "volumeMode", json!("Filesystem"));
            set_default(child(object, "status"), "phase", json!("Pending"));
        }
        ("storage.k8s.io", "StorageClass") => {
            set_default(object, "reclaimPolicy", json!("Delete"));
            set_default(object, "volumeBindingMode", json!("Immediate"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = child(object, "spec");
            set_default(spec, "minReplicas", json!(1));
            if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
                spec["metrics"] = json!([{
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }]);
            }
        }
        _ => {}
    }
}

// ----- validation ----------------------------------------------------------------------------

mod storage;

pub(crate) const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub(crate) fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

pub(crate) fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

use protocol::selector::{
    valid_label_key as is_qualified_name, valid_label_value as is_label_value,
};

#[derive(Clone, Copy, PartialEq)]
enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// A path segment (RBAC names such as `system:basic-user`).
    PathSegment,
}

fn validate_metadata(
    object: &Value,
    namespaced: bool,
    rule: NameRule,
    errors: &mut Vec<FieldError>,
) {
    let metadata = &object["metadata"];
    let name = metadata["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        if metadata["generateName"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            errors.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        let (ok, message) = match rule {
            NameRule::PathSegment => {
                for problem in crate::rbac::validation::name_problems(name) {
                    errors.push(FieldError::invalid("metadata.name", name, problem));
                }
                (true, "")
            }
            NameRule::Subdomain => (is_dns_subdomain(name), DNS1123_SUBDOMAIN),
            NameRule::Label => (is_dns_label(name), DNS1123_LABEL),
            NameRule::Dns1035 => (
                is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
                DNS1035_LABEL,
            ),
        };
        if !ok {
            errors.push(FieldError::invalid("metadata.name", name, message));
        }
    }
    if namespaced
        && metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    {
        errors.push(FieldError::required("metadata.namespace", ""));
    }
    validate_labels(&metadata["labels"], "metadata.labels", errors);
    if let Some(annotations) = metadata["annotations"].as_object() {
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        for key in annotations.keys() {
            if !is_qualified_name(&key.to_lowercase()) {
                errors.push(FieldError::invalid("metadata.annotations", key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
        if total > 256 * 1024 {
            errors.push(FieldError::new(
                FieldErrorKind::TooLong,
                "metadata.annotations",
                None,
                "must have at most 262144 bytes",
            ));
        }
    }
}

fn validate_labels(labels: &Value, field: &str, errors: &mut Vec<FieldError>) {
    for (key, value) in labels.as_object().into_iter().flatten() {
        if !is_qualified_name(key) {
            errors.push(FieldError::invalid(field, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"));
        }
        let text = value.as_str().unwrap_or_default();
        if !is_label_value(text) {
            errors.push(FieldError::invalid(field, text, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
        }
    }
}

/// Upstream's `IsDNS1123Label` messages for a non-empty name: too long, dots (a name that is
/// a subdomain but no label) or the label pattern.
fn dns_label_problems(name: &str) -> Vec<String> {
    let label_pattern = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    let mut problems = Vec::new();
    if name.len() > 63 {
        problems.push("must be no more than 63 characters".to_owned());
    }
    if !label_pattern(name) {
        if name.split('.').all(label_pattern) {
            problems.push("must not contain dots".to_owned());
        } else {
            problems.push(DNS1123_LABEL.to_owned());
        }
    }
    problems
}

/// The volume-name part of upstream's `ValidateVolumes`: each name is a DNS-1123 label (the
/// agent makes directories named after them) and unique. Returns the valid names, which are
/// the only ones volume mounts may refer to, as upstream.
fn validate_volume_names<'a>(
    spec: &'a Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<&'a str> {
    let mut valid: Vec<&str> = Vec::new();
    for (index, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{index}].name");
        let name = volume["name"].as_str().unwrap_or_default();
        let mut problems = Vec::new();
        if name.is_empty() {
            problems.push(FieldError::required(&at, ""));
        } else {
            for problem in dns_label_problems(name) {
                problems.push(FieldError::invalid(&at, name, &problem));
            }
        }
        if valid.contains(&name) {
            problems.push(FieldError::new(
                FieldErrorKind::Duplicate,
                &at,
                Some(name.to_owned()),
                "",
            ));
        }
        if problems.is_empty() {
            valid.push(name);
        } else {
            errors.extend(problems);
        }
    }
    valid
}

fn validate_pod_spec(
    spec: &Value,
    path: &str,
    allowed_restart: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        errors.push(FieldError::required(&format!("{path}.containers"), ""));
    }
    let volumes = validate_volume_names(spec, path, errors);
    let mut names: Vec<&str> = Vec::new();
    for field in ["initContainers", "containers"] {
        for (index, container) in spec[field].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{field}[{index}]");
            let name = container["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errors.push(FieldError::required(&format!("{at}.name"), ""));
            } else if !is_dns_label(name) {
                errors.push(FieldError::invalid(
                    &format!("{at}.name"),
                    name,
                    DNS1123_LABEL,
                ));
            } else if names.contains(&name) {
                errors.push(FieldError::new(
                    FieldErrorKind::Duplicate,
                    &format!("{at}.name"),
                    Some(name.to_owned()),
                    "",
                ));
            }
            names.push(name);
            if container["image"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .is_empty()
            {
                errors.push(FieldError::required(&format!("{at}.image"), ""));
            }
            for (p, port) in container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let number = port["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&number) {
                    errors.push(FieldError::invalid(
                        &format!("{at}.ports[{p}].containerPort"),
                        &number.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            for (m, mount) in container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let volume = mount["name"].as_str().unwrap_or_default();
                if !volumes.contains(&volume) {
                    errors.push(FieldError::new(
                        FieldErrorKind::NotSupported,
                        &format!("{at}.volumeMounts[{m}].name"),
                        Some(volume.to_owned()),
                        "volume not found",
                    ));
                }
            }
            for (e, env) in container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if env["name"].as_str().unwrap_or_default().is_empty() {
                    errors.push(FieldError::required(&format!("{at}.env[{e}].name"), ""));
                }
            }
        }
    }
    let restart = spec["restartPolicy"].as_str().unwrap_or("Always");
    if !allowed_restart.contains(&restart) {
        let supported: Vec<String> = allowed_restart.iter().map(|r| format!("\"{r}\"")).collect();
        errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            &format!("{path}.restartPolicy"),
            Some(restart.to_owned()),
            &format!("supported values: {}", supported.join(", ")),
        ));
    }
}

fn selector_matches_labels(selector: &Value, labels: &Value) -> bool {
    protocol::selector::LabelSelector::from_json(selector)
        .map(|s| s.matches_object(&json!({"metadata": {"labels": labels}})))
        .unwrap_or(false)
}

fn validate_workload(object: &Value, kind: &str, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    if let Some(replicas) = spec["replicas"].as_i64() {
        if replicas < 0 {
            errors.push(FieldError::invalid(
                "spec.replicas",
                &replicas.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let manual_job_selector =
        kind != "Job" || spec["manualSelector"] == json!(true) || spec["selector"].is_object();
    if kind == "ReplicationController" {
        let selector = spec["selector"].as_object().cloned().unwrap_or_default();
        if selector.is_empty() {
            errors.push(FieldError::required("spec.selector", ""));
        } else if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                &labels.to_string(),
                "`selector` does not match template `labels`",
            ));
        }
    } else if manual_job_selector {
        let selector = &spec["selector"];
        let empty = selector.is_null()
            || (selector["matchLabels"]
                .as_object()
                .is_none_or(Map::is_empty)
                && selector["matchExpressions"]
                    .as_array()
                    .is_none_or(Vec::is_empty));
        if empty {
            errors.push(FieldError::required("spec.selector", ""));
        } else if !selector_matches_labels(selector, labels) {
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                &labels.to_string(),
                "`selector` does not match template `labels`",
            ));
        }
    }
    let restart: &[&str] = if kind == "Job" {
        &["OnFailure", "Never"]
    } else {
        &["Always"]
    };
    validate_pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
        restart,
        errors,
    );
    if kind == "Job" {
        validate_job_spec(spec, "spec", errors);
    }
    if kind == "Deployment" {
        let strategy = &spec["strategy"];
        match strategy["type"].as_str() {
            Some("Recreate") if !strategy["rollingUpdate"].is_null() => {
                errors.push(FieldError::new(
                    FieldErrorKind::Forbidden,
                    "spec.strategy.rollingUpdate",
                    None,
                    "may not be specified when strategy `type` is 'Recreate'",
                ))
            }
            Some("Recreate") | Some("RollingUpdate") | None => {}
            Some(other) => errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                "spec.strategy.type",
                Some(other.to_owned()),
                "supported values: \"Recreate\", \"RollingUpdate\"",
            )),
        }
        let zero = |v: &Value| v == &json!(0) || v == &json!("0%") || v == &json!("0");
        let rolling = &strategy["rollingUpdate"];
        if zero(&rolling["maxSurge"]) && zero(&rolling["maxUnavailable"]) {
            errors.push(FieldError::invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                "0",
                "may not be 0 when `maxSurge` is 0",
            ));
        }
    }
}

fn non_negative(value: &Value, field: &str, errors: &mut Vec<FieldError>) {
    if let Some(number) = value.as_i64().filter(|n| *n < 0) {
        errors.push(FieldError::invalid(
            field,
            &number.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// Upstream's `ValidateStatefulSetSpec`. The template's volume mounts may name claim templates,
/// which become volumes only in each pod.
fn validate_stateful_set(object: &Value, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    match spec["podManagementPolicy"].as_str() {
        None | Some("OrderedReady") | Some("Parallel") => {}
        Some(other) => errors.push(FieldError::invalid(
            "spec.podManagementPolicy",
            other,
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    let strategy = &spec["updateStrategy"];
    match strategy["type"].as_str() {
        None | Some("RollingUpdate") => non_negative(
            &strategy["rollingUpdate"]["partition"],
            "spec.updateStrategy.rollingUpdate.partition",
            errors,
        ),
        Some("OnDelete") if !strategy["rollingUpdate"].is_null() => {
            errors.push(FieldError::invalid(
                "spec.updateStrategy.rollingUpdate",
                &strategy["rollingUpdate"].to_string(),
                "only allowed for updateStrategy 'RollingUpdate'",
            ))
        }
        Some("OnDelete") => {}
        Some(_) => errors.push(FieldError::invalid(
            "spec.updateStrategy",
            &strategy.to_string(),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
    let retention = &spec["persistentVolumeClaimRetentionPolicy"];
    for field in ["whenDeleted", "whenScaled"] {
        if let Some(policy) = retention[field].as_str() {
            if policy != "Retain" && policy != "Delete" {
                errors.push(FieldError::new(
                    FieldErrorKind::NotSupported,
                    &format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                    Some(policy.to_owned()),
                    "supported values: \"Delete\", \"Retain\"",
                ));
            }
        }
    }
    if let Some(service) = spec["serviceName"].as_str().filter(|s| !s.is_empty()) {
        if !(is_dns_label(service) && service.starts_with(|c: char| c.is_ascii_lowercase())) {
            errors.push(FieldError::invalid(
                "spec.serviceName",
                service,
                DNS1035_LABEL,
            ));
        }
    }
    non_negative(&spec["replicas"], "spec.replicas", errors);
    non_negative(&spec["minReadySeconds"], "spec.minReadySeconds", errors);
    non_negative(&spec["ordinals"]["start"], "spec.ordinals.start", errors);
    let selector = &spec["selector"];
    let labels = &spec["template"]["metadata"]["labels"];
    if selector.is_null() {
        errors.push(FieldError::required("spec.selector", ""));
    } else if selector["matchLabels"]
        .as_object()
        .is_none_or(Map::is_empty)
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(Vec::is_empty)
    {
        errors.push(FieldError::invalid(
            "spec.selector",
            &selector.to_string(),
            "empty selector is invalid for statefulset",
        ));
    } else if !selector_matches_labels(selector, labels) {
        errors.push(FieldError::invalid(
            "spec.template.metadata.labels",
            &labels.to_string(),
            "`selector` does not match template `labels`",
        ));
    }
    let mut pod_spec = spec["template"]["spec"].clone();
    if let Some(map) = pod_spec.as_object_mut() {
        let mut volumes = map
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for claim in spec["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = &claim["metadata"]["name"];
            if name.as_str().is_none_or(str::is_empty) {
                continue;
            }
            if !volumes.iter().any(|v| &v["name"] == name) {
                volumes.push(json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
            }
        }
        map.insert("volumes".into(), json!(volumes));
    }
    validate_pod_spec(&pod_spec, "spec.template.spec", &["Always"], errors);
}

/// The StatefulSet spec fields an update may change (upstream's `ValidateStatefulSetUpdate`).
const STATEFUL_SET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn validate_stateful_set_update(new: &Value, old: &Value, errors: &mut Vec<FieldError>) {
    let frozen = |object: &Value| {
        let mut spec = object["spec"].as_object().cloned().unwrap_or_default();
        spec.retain(|field, value| {
            !STATEFUL_SET_MUTABLE.contains(&field.as_str()) && !value.is_null()
        });
        spec
    };
    if frozen(new) != frozen(old) {
        errors.push(FieldError::new(
            FieldErrorKind::Forbidden,
            "spec",
            None,
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

/// Upstream's `validateJobSpec` checks bramble honours: the completion mode and what Indexed
/// needs, and the pod failure policy's actions and operators.
fn validate_job_spec(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let indexed = match spec["completionMode"].as_str() {
        None | Some("NonIndexed") => false,
        Some("Indexed") => true,
        Some(other) => {
            errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                &format!("{path}.completionMode"),
                Some(other.to_owned()),
                "supported values: \"NonIndexed\", \"Indexed\"",
            ));
            false
        }
    };
    if indexed && spec["completions"].is_null() {
        errors.push(FieldError::required(
            &format!("{path}.completions"),
            "when completion mode is Indexed",
        ));
    }
    if !spec["backoffLimitPerIndex"].is_null() && !indexed {
        errors.push(FieldError::invalid(
            &format!("{path}.backoffLimitPerIndex"),
            &spec["backoffLimitPerIndex"].to_string(),
            "requires indexed completion mode",
        ));
    }
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
    ] {
        if let Some(value) = spec[field].as_i64().filter(|v| *v < 0) {
            errors.push(FieldError::invalid(
                &format!("{path}.{field}"),
                &value.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let rules = spec
        .pointer("/podFailurePolicy/rules")
        .and_then(Value::as_array);
    for (index, rule) in rules.into_iter().flatten().enumerate() {
        let at = format!("{path}.podFailurePolicy.rules[{index}]");
        let action = rule["action"].as_str().unwrap_or_default();
        if !["FailJob", "FailIndex", "Ignore", "Count"].contains(&action) {
            errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                &format!("{at}.action"),
                Some(action.to_owned()),
                "supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
            ));
        }
        if action == "FailIndex" && spec["backoffLimitPerIndex"].is_null() {
            errors.push(FieldError::invalid(
                &format!("{at}.action"),
                action,
                "requires the backoffLimitPerIndex to be set",
            ));
        }
        let codes = &rule["onExitCodes"];
        let conditions = &rule["onPodConditions"];
        if codes.is_null() == conditions.is_null() {
            errors.push(FieldError::invalid(
                &at,
                "",
                "specifying one of OnExitCodes and OnPodConditions is required",
            ));
        }
        if codes.is_object() {
            let operator = codes["operator"].as_str().unwrap_or_default();
            if operator != "In" && operator != "NotIn" {
                errors.push(FieldError::new(
                    FieldErrorKind::NotSupported,
                    &format!("{at}.onExitCodes.operator"),
                    Some(operator.to_owned()),
                    "supported values: \"In\", \"NotIn\"",
                ));
            }
            let values = codes["values"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if operator == "In" && values.contains(&json!(0)) {
                errors.push(FieldError::invalid(
                    &format!("{at}.onExitCodes.values"),
                    "0",
                    "must not be 0 for the In operator",
                ));
            }
        }
    }
}

/// The name of a CronJob leaves room for the 11 characters of its Jobs' suffix in a label.
const CRONJOB_NAME_MAX: usize = 52;

/// Upstream's `validTimeZoneCharacters` for each `/` segment of a time zone.
fn valid_zone_segment(segment: &str) -> bool {
    (1..=14).contains(&segment.len())
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        && segment != "."
        && segment != ".."
        && !segment.starts_with('-')
}

/// Upstream's CronJob validation; `old` on update, when the name is no longer checked and a
/// `TZ=` the schedule already had may stay.
fn validate_cronjob(object: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if old.is_none() && name.len() > CRONJOB_NAME_MAX {
        errors.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let zone = spec["timeZone"].as_str();
    match spec["schedule"].as_str().unwrap_or_default() {
        "" => errors.push(FieldError::required("spec.schedule", "")),
        schedule => {
            if let Err(error) = crate::cron::parse_standard(schedule) {
                errors.push(FieldError::invalid("spec.schedule", schedule, &error));
            }
            let had_zone = old
                .and_then(|o| o["spec"]["schedule"].as_str())
                .is_some_and(|s| s.contains("TZ"));
            if schedule.contains("TZ") {
                if !had_zone {
                    errors.push(FieldError::invalid(
                        "spec.schedule",
                        schedule,
                        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                    ));
                } else if zone.is_some() {
                    errors.push(FieldError::invalid(
                        "spec.schedule",
                        schedule,
                        "cannot use both timeZone field and TZ or CRON_TZ in schedule",
                    ));
                }
            }
        }
    }
    let zone_changed = old.is_none_or(|o| o["spec"]["timeZone"].as_str() != zone);
    if let Some(zone) = zone.filter(|_| zone_changed) {
        let field = "spec.timeZone";
        if zone.is_empty() {
            errors.push(FieldError::invalid(
                field,
                zone,
                "timeZone must be nil or non-empty string",
            ));
        } else if !zone.split('/').all(valid_zone_segment) {
            errors.push(FieldError::invalid(
                field,
                zone,
                &format!("unknown time zone {zone}"),
            ));
        } else if zone.eq_ignore_ascii_case("Local") {
            errors.push(FieldError::invalid(
                field,
                zone,
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ));
        } else if let Err(error) = crate::cron::load_zone(zone) {
            errors.push(FieldError::invalid(field, zone, &error));
        }
    }
    match spec["concurrencyPolicy"].as_str().unwrap_or_default() {
        "Allow" | "Forbid" | "Replace" => {}
        "" => errors.push(FieldError::required("spec.concurrencyPolicy", "")),
        other => errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            "spec.concurrencyPolicy",
            Some(other.to_owned()),
            "supported values: \"Allow\", \"Forbid\", \"Replace\"",
        )),
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        if let Some(value) = spec[field].as_i64().filter(|v| *v < 0) {
            errors.push(FieldError::invalid(
                &format!("spec.{field}"),
                &value.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    let job_spec = &spec["jobTemplate"]["spec"];
    if !job_spec["selector"].is_null() {
        errors.push(FieldError::invalid(
            "spec.jobTemplate.spec.selector",
            &job_spec["selector"].to_string(),
            "`selector` will be auto-generated",
        ));
    }
    if job_spec["manualSelector"] == json!(true) {
        errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            "spec.jobTemplate.spec.manualSelector",
            Some("true".into()),
            "supported values: \"nil\", \"false\"",
        ));
    }
    validate_job_spec(job_spec, "spec.jobTemplate.spec", errors);
    validate_pod_spec(
        &job_spec["template"]["spec"],
        "spec.jobTemplate.spec.template.spec",
        &["OnFailure", "Never"],
        errors,
    );
}

fn validate_service(object: &Value, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            "spec.type",
            Some(kind.to_owned()),
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
    }
    let headless = spec["clusterIP"] == "None";
    let ports = spec["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.is_empty() && !headless && kind != "ExternalName" {
        errors.push(FieldError::required("spec.ports", ""));
    }
    let mut names = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errors.push(FieldError::invalid(
                &format!("spec.ports[{index}].port"),
                &number.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = port["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            errors.push(FieldError::required(
                &format!("spec.ports[{index}].name"),
                "",
            ));
        }
        if !name.is_empty() && names.contains(&name) {
            errors.push(FieldError::new(
                FieldErrorKind::Duplicate,
                &format!("spec.ports[{index}].name"),
                Some(name.to_owned()),
                "",
            ));
        }
        names.push(name);
    }
}

fn validate_data_keys(object: &Value, errors: &mut Vec<FieldError>) {
    let mut total = 0;
    for field in ["data", "binaryData"] {
        for (key, value) in object[field].as_object().into_iter().flatten() {
            total += key.len() + value.as_str().map_or(0, str::len);
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !valid {
                errors.push(FieldError::invalid(&format!("{field}[{key}]"), key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
    }
    if total > 1024 * 1024 {
        errors.push(FieldError::new(
            FieldErrorKind::TooLong,
            "data",
            None,
            "must have at most 1048576 bytes",
        ));
    }
}

/// Drops the `metadata` fields upstream leaves out when empty (every ObjectMeta field is
/// `omitempty`): `ownerReferences: []` after the last owner is released, `finalizers: []`,
/// `labels: {}`, `generateName: ""` and the like.
pub fn omit_empty_metadata(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|_, value| match value {
            Value::Null => false,
            Value::String(text) => !text.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Object(map) => !map.is_empty(),
            _ => true,
        });
    }
}

/// Longest Event message: events are kept in memory, so a node cannot grow the master with
/// large ones (upstream's events.k8s.io API allows 1024 for `note`; core v1 events carry
/// container termination messages of up to 4096 bytes).
pub const EVENT_MESSAGE_LIMIT: usize = 4096;

/// Longest Event `reason`, `action` and `reportingInstance`, as upstream's events.k8s.io API.
const EVENT_FIELD_LIMIT: usize = 128;

fn validate_event(object: &Value, errors: &mut Vec<FieldError>) {
    let too_long = |field: &str, limit: usize| {
        FieldError::new(
            FieldErrorKind::TooLong,
            field,
            None,
            &format!("may not be more than {limit} bytes"),
        )
    };
    let length = |field: &str| object[field].as_str().map_or(0, str::len);
    if length("message") > EVENT_MESSAGE_LIMIT {
        errors.push(too_long("message", EVENT_MESSAGE_LIMIT));
    }
    for field in ["reason", "action", "reportingInstance"] {
        if length(field) > EVENT_FIELD_LIMIT {
            errors.push(too_long(field, EVENT_FIELD_LIMIT));
        }
    }
}

/// Validation on create; empty means valid.
pub fn validate_create(group: &str, kind: &str, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let cluster_scoped = crate::resources::by_kind(group, kind).is_some_and(|r| !r.namespaced);
    let rule = match kind {
        _ if group == "rbac.authorization.k8s.io" => NameRule::PathSegment,
        "Namespace" => NameRule::Label,
        "Service" => NameRule::Dns1035,
        _ => NameRule::Subdomain,
    };
    validate_metadata(object, !cluster_scoped, rule, &mut errors);
    match (group, kind) {
        ("", "Pod") => validate_pod_spec(
            &object["spec"],
            "spec",
            &["Always", "OnFailure", "Never"],
            &mut errors,
        ),
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => validate_workload(object, kind, &mut errors),
        ("apps", "StatefulSet") => validate_stateful_set(object, &mut errors),
        ("apps", "ControllerRevision") => {
            non_negative(&object["revision"], "revision", &mut errors)
        }
        ("batch", "CronJob") => validate_cronjob(object, None, &mut errors),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            crate::certificates::validate(object, &mut errors)
        }
        ("", "Service") => validate_service(object, &mut errors),
        ("", "ConfigMap") | ("", "Secret") => validate_data_keys(object, &mut errors),
        ("", "Event") => validate_event(object, &mut errors),
        ("", "PersistentVolumeClaim") => storage::validate_claim(object, &mut errors),
        ("", "PersistentVolume") => storage::validate_volume(object, &mut errors),
        ("storage.k8s.io", "StorageClass") => storage::validate_class(object, &mut errors),
        ("", "LimitRange") => errors.extend(crate::limit_range::validate(object)),
        ("rbac.authorization.k8s.io", kind) => {
            crate::rbac::validation::validate(kind, object, &mut errors)
        }
        ("policy", "PodDisruptionBudget") => {
            errors.extend(crate::controllers::disruption::validate(object))
        }
        ("scheduling.k8s.io", "PriorityClass") => errors.extend(crate::priority::validate(object)),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = &object["spec"];
            let max = spec["maxReplicas"].as_i64().unwrap_or(0);
            let min = spec["minReplicas"].as_i64().unwrap_or(1);
            if max < 1 {
                errors.push(FieldError::invalid(
                    "spec.maxReplicas",
                    &max.to_string(),
                    "must be greater than or equal to 1",
                ));
            }
            if min > max {
                errors.push(FieldError::invalid(
                    "spec.minReplicas",
                    &min.to_string(),
                    "must be less than or equal to maxReplicas",
                ));
            }
        }
        _ => {}
    }
    errors
}

/// Validation on update, including fields that may not change.
pub fn validate_update(group: &str, kind: &str, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errors = if (group, kind) == ("batch", "CronJob") {
        let mut errors = Vec::new();
        validate_metadata(new, true, NameRule::Subdomain, &mut errors);
        validate_cronjob(new, Some(old), &mut errors);
        errors
    } else {
        validate_create(group, kind, new)
    };
    if (group, kind) == ("scheduling.k8s.io", "PriorityClass") {
        errors.extend(crate::priority::validate_update(new, old));
    }
    let immutable: &[&str] = match (group, kind) {
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") => {
            &["/spec/selector"]
        }
        ("batch", "Job") => &["/spec/selector", "/spec/template", "/spec/completions"],
        ("", "Service") => &["/spec/clusterIP"],
        ("apps", "ControllerRevision") => &["/data"],
        _ => &[],
    };
    if (group, kind) == ("apps", "StatefulSet") {
        validate_stateful_set_update(new, old, &mut errors);
    }
    for pointer in immutable {
        let (before, after) = (old.pointer(pointer), new.pointer(pointer));
        if before.is_some() && before != after {
            let field = pointer.trim_start_matches('/').replace('/', ".");
            errors.push(FieldError::invalid(
                &field,
                &after.map(Value::to_string).unwrap_or_default(),
                "field is immutable",
            ));
        }
    }
    match (group, kind) {
        ("", "PersistentVolumeClaim") => storage::validate_claim_update(new, old, &mut errors),
        ("", "PersistentVolume") => storage::validate_volume_update(new, old, &mut errors),
        ("storage.k8s.io", "StorageClass") => storage::validate_class_update(new, old, &mut errors),
        ("rbac.authorization.k8s.io", kind) => {
            crate::rbac::validation::validate_update(kind, new, old, &mut errors)
        }
        _ => {}
    }
    if (kind == "ConfigMap" || kind == "Secret") && old["immutable"] == json!(true) {
        for field in ["data", "binaryData", "immutable"] {
            if old.get(field) != new.get(field) {
                errors.push(FieldError::new(
                    FieldErrorKind::Forbidden,
                    field,
                    None,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
        })
    }

    #[test]
    fn deployment_defaults_match_what_kubectl_shows() {
        let mut d = deployment();
        apply_defaults("apps", "Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            pod["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
        assert!(validate_create("apps", "Deployment", &d).is_empty());
    }

    #[test]
    fn volumes_without_a_source_are_empty_dirs() {
        let volumes = json!([{"name": "scratch"}, {"name": "cm", "configMap": {"name": "c"}}]);
        let mut pod =
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "volumes": volumes}});
        apply_defaults("", "Pod", &mut pod);
        assert_eq!(
            pod["spec"]["volumes"][0],
            json!({"name": "scratch", "emptyDir": {}})
        );
        assert!(pod["spec"]["volumes"][1].get("emptyDir").is_none());
        for (group, kind) in [
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("", "ReplicationController"),
            ("batch", "Job"),
        ] {
            let mut object = deployment();
            object["spec"]["template"]["spec"]["volumes"] = json!([{"name": "scratch"}]);
            apply_defaults(group, kind, &mut object);
            assert_eq!(
                object["spec"]["template"]["spec"]["volumes"][0]["emptyDir"],
                json!({}),
                "{kind}"
            );
        }
    }

    #[test]
    fn volume_names_are_dns_labels_and_unique() {
        let pod = |volumes: Value| {
            let mut pod = json!({"metadata": {"name": "p", "namespace": "default"},
                                 "spec": {"containers": [{"name": "a", "image": "x:1"}],
                                          "volumes": volumes}});
            apply_defaults("", "Pod", &mut pod);
            validate_create("", "Pod", &pod)
                .iter()
                .map(FieldError::message)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pod(json!([{"name": "../../../../etc"}])),
            vec![format!(
                "spec.volumes[0].name: Invalid value: \"../../../../etc\": {DNS1123_LABEL}"
            )]
        );
        assert_eq!(
            pod(json!([{"name": "a.b"}])),
            vec!["spec.volumes[0].name: Invalid value: \"a.b\": must not contain dots"]
        );
        let long = "a".repeat(64);
        assert_eq!(
            pod(json!([{"name": long}])),
            vec![format!(
                "spec.volumes[0].name: Invalid value: \"{long}\": must be no more than 63 characters"
            )]
        );
        assert_eq!(
            pod(json!([{"emptyDir": {}}])),
            vec!["spec.volumes[0].name: Required value"]
        );
        assert_eq!(
            pod(json!([{"name": "data"}, {"name": "data"}])),
            vec!["spec.volumes[1].name: Duplicate value: \"data\""]
        );
        assert!(pod(json!([{"name": "data"}, {"name": "cache-1"}])).is_empty());
        // A template's volumes are checked the same way.
        let mut object = deployment();
        object["spec"]["template"]["spec"]["volumes"] = json!([{"name": "../x"}]);
        apply_defaults("apps", "Deployment", &mut object);
        let errors = validate_create("apps", "Deployment", &object);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.template.spec.volumes[0].name");
    }

    #[test]
    fn autoscalers_default_to_80_percent_cpu() {
        let mut hpa = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5}});
        apply_defaults("autoscaling", "HorizontalPodAutoscaler", &mut hpa);
        assert_eq!(hpa["spec"]["minReplicas"], 1);
        assert_eq!(
            hpa["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])
        );
        let memory = json!([{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]);
        let mut chosen = json!({"spec": {"maxReplicas": 5, "metrics": memory.clone()}});
        apply_defaults("autoscaling", "HorizontalPodAutoscaler", &mut chosen);
        assert_eq!(chosen["spec"]["metrics"], memory);
    }

    #[test]
    fn latest_images_are_always_pulled() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "reg:5000/x:latest"}, {"name": "c", "image": "reg:5000/x:1"}]}});
        apply_defaults("", "Pod", &mut pod);
        let policies: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(policies, ["Always", "Always", "IfNotPresent"]);
    }

    #[test]
    fn selector_must_match_template() {
        let mut d = deployment();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let errors = validate_create("apps", "Deployment", &d);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.template.metadata.labels");
        assert!(errors[0]
            .message()
            .contains("`selector` does not match template `labels`"));
    }

    #[test]
    fn names_and_containers_are_checked() {
        let pod = json!({"metadata": {"name": "Web_1", "namespace": "d"}, "spec": {"containers": [{"name": "a"}]}});
        let errors = validate_create("", "Pod", &pod);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.containers[0].image"]);
        assert!(errors[0].message().starts_with(
            "metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain"
        ));
        assert_eq!(
            errors[1].message(),
            "spec.containers[0].image: Required value"
        );
    }

    #[test]
    fn structure_reports_types_and_unknown_fields() {
        let mut d = deployment();
        d["spec"]["replicaz"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("x");
        let checked = check_structure("apps", "Deployment", &d).unwrap();
        assert_eq!(
            checked.unknown_fields,
            [
                "spec.template.spec.containers[0].imagePullPolicyy",
                "spec.replicaz"
            ]
        );
        assert!(checked.object["spec"].get("replicaz").is_none());
        let mut typed = deployment();
        typed["spec"]["replicas"] = json!("three");
        let error = check_structure("apps", "Deployment", &typed).unwrap_err();
        assert_eq!(error.field, "spec.replicas");
        let round = check_structure("apps", "Deployment", &deployment()).unwrap();
        assert_eq!(round.object, deployment());
    }

    #[test]
    fn secrets_fold_string_data_and_immutables_hold() {
        let mut secret =
            json!({"metadata": {"name": "s", "namespace": "d"}, "stringData": {"k": "v"}});
        apply_defaults("", "Secret", &mut secret);
        assert_eq!(secret["data"], json!({"k": "dg=="}));
        assert_eq!(secret["type"], "Opaque");
        let old = deployment();
        let mut new = deployment();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "x": "y"}});
        new["spec"]["template"]["metadata"]["labels"]["x"] = json!("y");
        let errors = validate_update("apps", "Deployment", &new, &old);
        assert_eq!(errors[0].field, "spec.selector");
    }

    fn stateful_set() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"serviceName": "nginx",
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                            "volumeMounts": [{"name": "www", "mountPath": "/data"}]}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "www"},
                                               "spec": {"accessModes": ["ReadWriteOnce"]}}]}
        })
    }

    #[test]
    fn stateful_set_defaults_match_upstream() {
        let mut set = stateful_set();
        apply_defaults("apps", "StatefulSet", &mut set);
        let spec = &set["spec"];
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );
        assert!(
            validate_create("apps", "StatefulSet", &set).is_empty(),
            "claim mounts are volumes"
        );

        let mut typed = stateful_set();
        typed["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"});
        apply_defaults("apps", "StatefulSet", &mut typed);
        assert_eq!(
            typed["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate"}),
            "no block made"
        );
    }

    #[test]
    fn stateful_set_mistakes_get_upstreams_messages() {
        let messages = |set: &Value| -> Vec<String> {
            validate_create("apps", "StatefulSet", set)
                .iter()
                .map(FieldError::message)
                .collect()
        };
        let mut mismatched = stateful_set();
        mismatched["spec"]["selector"]["matchLabels"]["app"] = json!("db");
        assert_eq!(
            messages(&mismatched),
            [
                r#"spec.template.metadata.labels: Invalid value: {"app":"web"}: `selector` does not match template `labels`"#
            ]
        );
        let mut bad = stateful_set();
        bad["spec"]["serviceName"] = json!("Nginx_1");
        bad["spec"]["podManagementPolicy"] = json!("Random");
        bad["spec"]["updateStrategy"] =
            json!({"type": "OnDelete", "rollingUpdate": {"partition": 1}});
        let found = messages(&bad);
        assert!(found.contains(&r#"spec.podManagementPolicy: Invalid value: "Random": must be 'OrderedReady' or 'Parallel'"#.to_owned()), "{found:?}");
        assert!(
            found.iter().any(|m| m
                .starts_with(r#"spec.serviceName: Invalid value: "Nginx_1": a DNS-1035 label"#)),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.ends_with("only allowed for updateStrategy 'RollingUpdate'")),
            "{found:?}"
        );

        let mut old = stateful_set();
        apply_defaults("apps", "StatefulSet", &mut old);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        assert!(validate_update("apps", "StatefulSet", &scaled, &old).is_empty());
        let mut renamed = old.clone();
        renamed["spec"]["serviceName"] = json!("other");
        let errors = validate_update("apps", "StatefulSet", &renamed, &old);
        assert_eq!(
            errors.iter().map(FieldError::message).collect::<Vec<_>>(),
            ["spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"]
        );
    }
}
