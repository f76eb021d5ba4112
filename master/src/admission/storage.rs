//! Validation of PersistentVolumes, PersistentVolumeClaims and StorageClasses, in upstream's words
//! (`pkg/apis/core/validation`, `pkg/apis/storage/validation`).

use serde_json::Value;

use super::{is_dns_subdomain, FieldError, FieldErrorKind, DNS1123_SUBDOMAIN};
use protocol::quantity;

/// The access modes upstream knows, sorted as its "supported values" lists print them.
const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The volume sources a PersistentVolume may name (one of them), as JSON field names.
pub const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "cinder",
    "flexVolume",
    "flocker",
    "glusterfs",
    "azureFile",
    "azureDisk",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "vsphereVolume",
    "quobyte",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn supported(field: &str, value: &str, values: &[&str]) -> FieldError {
    let list: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    FieldError::new(
        FieldErrorKind::NotSupported,
        field,
        Some(value.to_owned()),
        &format!("supported values: {}", list.join(", ")),
    )
}

fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError::new(FieldErrorKind::Forbidden, field, None, detail)
}

fn validate_access_modes(spec: &Value, required_detail: &str, errors: &mut Vec<FieldError>) {
    let modes: Vec<&str> = spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if modes.is_empty() {
        errors.push(FieldError::required("spec.accessModes", required_detail));
    }
    for mode in &modes {
        if !ACCESS_MODES.contains(mode) {
            errors.push(supported("spec.accessModes", mode, &ACCESS_MODES));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        errors.push(forbidden(
            "spec.accessModes",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn validate_class_name(spec: &Value, errors: &mut Vec<FieldError>) {
    if let Some(class) = spec["storageClassName"].as_str().filter(|c| !c.is_empty()) {
        if !is_dns_subdomain(class) {
            errors.push(FieldError::invalid(
                "spec.storageClassName",
                class,
                DNS1123_SUBDOMAIN,
            ));
        }
    }
}

fn validate_volume_mode(spec: &Value, errors: &mut Vec<FieldError>) {
    if let Some(mode) = spec["volumeMode"].as_str() {
        if mode != "Block" && mode != "Filesystem" {
            errors.push(supported("spec.volumeMode", mode, &["Block", "Filesystem"]));
        }
    }
}

/// A claim on create (`ValidatePersistentVolumeClaimSpec`).
pub fn validate_claim(claim: &Value, errors: &mut Vec<FieldError>) {
    let spec = &claim["spec"];
    validate_access_modes(spec, "at least 1 access mode is required", errors);
    match spec["resources"]["requests"]["storage"].as_str() {
        None => errors.push(FieldError::required("spec.resources[storage]", "")),
        Some(text) => {
            if quantity::parse(text).is_none_or(|q| q <= 0.0) {
                errors.push(FieldError::invalid(
                    "spec.resources[storage]",
                    text,
                    "must be greater than zero",
                ));
            }
        }
    }
    validate_class_name(spec, errors);
    validate_volume_mode(spec, errors);
}

/// A claim's spec may not change, except: `volumeName` once (from empty), `storageClassName`
/// from unset (a default class assigned later), and the storage request of a bound claim.
pub fn validate_claim_update(new: &Value, old: &Value, errors: &mut Vec<FieldError>) {
    let mut old_spec = old["spec"].clone();
    let mut new_spec = new["spec"].clone();
    if !old_spec.is_object() || !new_spec.is_object() {
        return;
    }
    if old_spec["volumeName"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        old_spec["volumeName"] = new_spec["volumeName"].clone();
    }
    if old_spec["storageClassName"].is_null() {
        old_spec["storageClassName"] = new_spec["storageClassName"].clone();
    }
    if new["status"]["phase"] == "Bound" {
        for spec in [&mut old_spec, &mut new_spec] {
            if let Some(requests) = spec
                .pointer_mut("/resources/requests")
                .and_then(Value::as_object_mut)
            {
                requests.remove("storage");
            }
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("volumeAttributesClassName");
            }
        }
    }
    let strip_nulls = |spec: &Value| -> Value {
        match spec {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    };
    if strip_nulls(&old_spec) != strip_nulls(&new_spec) {
        errors.push(forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let request = |claim: &Value| {
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(quantity::parse)
    };
    let capacity = old["status"]["capacity"]["storage"]
        .as_str()
        .and_then(quantity::parse);
    if let (Some(before), Some(after)) = (request(old), request(new)) {
        if after < before && capacity.is_none_or(|c| after <= c) {
            errors.push(forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            ));
        }
    }
    if old["spec"]["volumeMode"] != new["spec"]["volumeMode"] {
        errors.push(FieldError::invalid(
            "volumeMode",
            new["spec"]["volumeMode"].as_str().unwrap_or_default(),
            "field is immutable",
        ));
    }
}

/// A volume on create (`ValidatePersistentVolumeSpec`).
pub fn validate_volume(volume: &Value, errors: &mut Vec<FieldError>) {
    let spec = &volume["spec"];
    validate_access_modes(spec, "", errors);
    match spec["capacity"].as_object() {
        None => errors.push(FieldError::required("spec.capacity", "")),
        Some(capacity) if capacity.is_empty() => {
            errors.push(FieldError::required("spec.capacity", ""))
        }
        Some(capacity) => {
            for (name, value) in capacity {
                if name != "storage" {
                    errors.push(supported("spec.capacity", name, &["storage"]));
                    continue;
                }
                let text = value.as_str().unwrap_or_default();
                if quantity::parse(text).is_none_or(|q| q <= 0.0) {
                    errors.push(FieldError::invalid(
                        "spec.capacity[storage]",
                        text,
                        "must be greater than zero",
                    ));
                }
            }
        }
    }
    if let Some(policy) = spec["persistentVolumeReclaimPolicy"].as_str() {
        if !["Delete", "Recycle", "Retain"].contains(&policy) {
            errors.push(supported(
                "spec.persistentVolumeReclaimPolicy",
                policy,
                &["Delete", "Recycle", "Retain"],
            ));
        }
    }
    validate_class_name(spec, errors);
    validate_volume_mode(spec, errors);
    let sources: Vec<&str> = VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match sources.as_slice() {
        [] => errors.push(FieldError::required("spec", "must specify a volume type")),
        [_] => {}
        [_, rest @ ..] => {
            for source in rest {
                errors.push(forbidden(
                    &format!("spec.{source}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    if spec["hostPath"].is_object()
        && spec["hostPath"]["path"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    {
        errors.push(FieldError::required("spec.hostPath.path", ""));
    }
    if spec["local"].is_object() {
        if spec["local"]["path"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            errors.push(FieldError::required("spec.local.path", ""));
        }
        if spec["nodeAffinity"].is_null() {
            errors.push(FieldError::required(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
    }
    if spec["nfs"].is_object() {
        if spec["nfs"]["server"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            errors.push(FieldError::required("spec.nfs.server", ""));
        }
        match spec["nfs"]["path"].as_str().unwrap_or_default() {
            "" => errors.push(FieldError::required("spec.nfs.path", "")),
            path if !path.starts_with('/') => errors.push(FieldError::invalid(
                "spec.nfs.path",
                path,
                "must be an absolute path",
            )),
            _ => {}
        }
    }
}

/// A volume's source and mode may not change.
pub fn validate_volume_update(new: &Value, old: &Value, errors: &mut Vec<FieldError>) {
    let source = |volume: &Value| -> Vec<(String, Value)> {
        VOLUME_SOURCES
            .iter()
            .filter_map(|s| {
                let v = &volume["spec"][*s];
                (!v.is_null()).then(|| (s.to_string(), v.clone()))
            })
            .collect()
    };
    if source(new) != source(old) {
        errors.push(forbidden(
            "spec.persistentvolumesource",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    if old["spec"]["volumeMode"] != new["spec"]["volumeMode"] {
        errors.push(FieldError::invalid(
            "volumeMode",
            new["spec"]["volumeMode"].as_str().unwrap_or_default(),
            "field is immutable",
        ));
    }
}

/// A StorageClass on create.
pub fn validate_class(class: &Value, errors: &mut Vec<FieldError>) {
    match class["provisioner"].as_str().unwrap_or_default() {
        "" => errors.push(FieldError::required("provisioner", "")),
        provisioner if provisioner.len() > 63 => errors.push(FieldError::new(
            FieldErrorKind::TooLong,
            "provisioner",
            Some(provisioner.to_owned()),
            "must have at most 63 bytes",
        )),
        _ => {}
    }
    if let Some(policy) = class["reclaimPolicy"].as_str() {
        if policy != "Delete" && policy != "Retain" {
            errors.push(supported("reclaimPolicy", policy, &["Delete", "Retain"]));
        }
    }
    if let Some(mode) = class["volumeBindingMode"].as_str() {
        if mode != "Immediate" && mode != "WaitForFirstConsumer" {
            errors.push(supported(
                "volumeBindingMode",
                mode,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
    }
}

/// What a StorageClass may not change after creation.
pub fn validate_class_update(new: &Value, old: &Value, errors: &mut Vec<FieldError>) {
    let empty_as_null = |v: &Value| match v {
        Value::Object(map) if map.is_empty() => Value::Null,
        other => other.clone(),
    };
    if empty_as_null(&old["parameters"]) != empty_as_null(&new["parameters"]) {
        errors.push(forbidden(
            "parameters",
            "updates to parameters are forbidden.",
        ));
    }
    if old["provisioner"] != new["provisioner"] {
        errors.push(forbidden(
            "provisioner",
            "updates to provisioner are forbidden.",
        ));
    }
    if old["reclaimPolicy"] != new["reclaimPolicy"] {
        errors.push(forbidden(
            "reclaimPolicy",
            "updates to reclaimPolicy are forbidden.",
        ));
    }
    if old["volumeBindingMode"] != new["volumeBindingMode"] {
        errors.push(FieldError::invalid(
            "volumeBindingMode",
            new["volumeBindingMode"].as_str().unwrap_or_default(),
            "field is immutable",
        ));
    }
}
