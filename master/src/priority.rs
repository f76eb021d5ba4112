//! Pod priority: PriorityClass defaults and validation, the built-in system classes, and the
//! Priority admission that turns a pod's `priorityClassName` into `spec.priority`.
//!
//! Upstream's `pkg/apis/scheduling` (validation, defaults), `pkg/registry/scheduling` (the
//! system classes made at start) and `plugin/pkg/admission/priority`.

use serde_json::{json, Value};

use crate::admission::{FieldError, FieldErrorKind};
use crate::api::error::ApiError;
use crate::api::objects::{self, meta_str};
use crate::api::ApiState;
use crate::resources::{self, Resource};

/// The highest value a class not named `system-*` may have.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;
/// The value of `system-cluster-critical`.
pub const SYSTEM_CRITICAL_PRIORITY: i64 = 2_000_000_000;
const SYSTEM_PREFIX: &str = "system-";
/// What a pod gets when it names no class and no class is the global default.
const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";

/// The system classes upstream's API server creates at start: (name, value, description).
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        SYSTEM_CRITICAL_PRIORITY + 1000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        SYSTEM_CRITICAL_PRIORITY,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

fn priority_classes() -> &'static Resource {
    resources::by_kind("scheduling.k8s.io", "PriorityClass").expect("priority classes are served")
}

/// Creates the system classes that are missing (existing ones are left as they are).
pub fn ensure_system_classes(state: &ApiState) -> Result<(), ApiError> {
    for (name, value, description) in SYSTEM_CLASSES {
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description,
        });
        match objects::create_object(state, priority_classes(), class, false) {
            Ok(_) => tracing::info!(name, value, "created PriorityClass"),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `SetDefaults_PriorityClass`: kubectl's describe dereferences `preemptionPolicy`, so it is
/// always there.
pub fn apply_defaults(class: &mut Value) {
    if class.get("preemptionPolicy").is_none_or(Value::is_null) {
        class["preemptionPolicy"] = json!(PREEMPT_LOWER_PRIORITY);
    }
}

fn check_preemption_policy(value: &Value, field: &str, errors: &mut Vec<FieldError>) {
    match value.as_str() {
        None | Some("Never" | PREEMPT_LOWER_PRIORITY) => {}
        Some(other) => errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            field,
            Some(other.to_owned()),
            "supported values: \"Never\", \"PreemptLowerPriority\"",
        )),
    }
}

/// `ValidatePriorityClass`: reserved names, the user range and the preemption policy.
pub fn validate(class: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = meta_str(class, "name");
    let value = class["value"].as_i64().unwrap_or(0);
    let global_default = class["globalDefault"] == true;
    if name.starts_with(SYSTEM_PREFIX) {
        let problem = match SYSTEM_CLASSES.iter().find(|(n, ..)| *n == name) {
            None => Some(format!("{name} is not a known system priority class")),
            Some((_, expected, _)) if *expected != value => {
                Some(format!("value of {name} PriorityClass must be {expected}"))
            }
            Some(_) if global_default => Some(format!(
                "globalDefault of {name} PriorityClass must be false"
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            errors.push(FieldError::new(
                FieldErrorKind::Forbidden,
                "metadata.name",
                None,
                &format!("priority class names with 'system-' prefix are reserved for system use only. error: {problem}"),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE_PRIORITY {
        errors.push(FieldError::new(
            FieldErrorKind::Forbidden,
            "value",
            None,
            &format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    check_preemption_policy(&class["preemptionPolicy"], "preemptionPolicy", &mut errors);
    errors
}

/// `ValidatePriorityClassUpdate`: the value and the preemption policy are fixed.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if new["value"] != old["value"] {
        errors.push(FieldError::new(
            FieldErrorKind::Forbidden,
            "value",
            None,
            "may not be changed in an update.",
        ));
    }
    if new["preemptionPolicy"] != old["preemptionPolicy"] {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "preemptionPolicy",
            Some(
                new["preemptionPolicy"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            "field is immutable",
        ));
    }
    errors
}

/// A system class may not be deleted.
pub fn admit_delete(name: &str) -> Result<(), ApiError> {
    if SYSTEM_CLASSES.iter().any(|(n, ..)| *n == name) {
        return Err(ApiError::forbidden_object(
            priority_classes(),
            name,
            "this is a system priority class and cannot be deleted",
        ));
    }
    Ok(())
}

/// The class pods without a `priorityClassName` get: of several marked default (possible only
/// through races), the lowest value.
fn global_default(state: &ApiState) -> Result<Option<Value>, ApiError> {
    let classes = state.store.list(
        &priority_classes().storage_key(),
        None,
        None,
        0,
        &|c: &Value| c["globalDefault"] == true,
    )?;
    Ok(classes
        .items
        .into_iter()
        .min_by_key(|c| c["value"].as_i64().unwrap_or(0)))
}

/// The Priority admission plugin on create: a new PriorityClass may be the global default only
/// if no other is; a new pod gets its class's priority and preemption policy. `name` is what
/// upstream's admission errors call the object (its name, else its generateName).
pub fn admit_create(
    state: &ApiState,
    resource: &Resource,
    object: &mut Value,
    name: &str,
) -> Result<(), ApiError> {
    match (resource.group, resource.kind) {
        ("scheduling.k8s.io", "PriorityClass") if object["globalDefault"] == true => {
            if let Some(existing) = global_default(state)? {
                let existing = meta_str(&existing, "name");
                if existing != name {
                    return Err(ApiError::forbidden_object(
                        resource,
                        name,
                        &format!("PriorityClass {existing} is already marked as default. Only one default can exist"),
                    ));
                }
            }
            Ok(())
        }
        ("", "Pod") => admit_pod(state, resource, object, name),
        _ => Ok(()),
    }
}

/// The same check on update: marking a class default while another is refuses.
pub fn admit_update(state: &ApiState, new: &Value, old: &Value) -> Result<(), ApiError> {
    if new["globalDefault"] != true || old["globalDefault"] == true {
        return Ok(());
    }
    let name = meta_str(new, "name");
    if let Some(existing) = global_default(state)? {
        let existing = meta_str(&existing, "name");
        if existing != name {
            return Err(ApiError::forbidden_object(
                priority_classes(),
                &name,
                &format!("PriorityClass {existing} is already marked as default. Only one default can exist"),
            ));
        }
    }
    Ok(())
}

fn admit_pod(
    state: &ApiState,
    resource: &Resource,
    pod: &mut Value,
    name: &str,
) -> Result<(), ApiError> {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(()); // validation reports the missing spec
    };
    let class_name = spec["priorityClassName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (class_name, priority, policy) = if class_name.is_empty() {
        match global_default(state)? {
            Some(class) => (
                meta_str(&class, "name"),
                class["value"].as_i64().unwrap_or(0),
                class["preemptionPolicy"]
                    .as_str()
                    .unwrap_or(PREEMPT_LOWER_PRIORITY)
                    .to_owned(),
            ),
            None => (String::new(), 0, PREEMPT_LOWER_PRIORITY.to_owned()),
        }
    } else {
        let class = state
            .store
            .get(&priority_classes().storage_key(), "", &class_name)?
            .ok_or_else(|| {
                ApiError::forbidden_object(
                    resource,
                    name,
                    &format!("no PriorityClass with name {class_name} was found"),
                )
            })?;
        (
            class_name,
            class["value"].as_i64().unwrap_or(0),
            class["preemptionPolicy"]
                .as_str()
                .unwrap_or(PREEMPT_LOWER_PRIORITY)
                .to_owned(),
        )
    };
    if let Some(given) = spec.get("priority").filter(|p| !p.is_null()) {
        if given.as_i64() != Some(priority) {
            return Err(ApiError::forbidden_object(
                resource,
                name,
                &format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"),
            ));
        }
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str) {
        if given != policy {
            return Err(ApiError::forbidden_object(
                resource,
                name,
                &format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"),
            ));
        }
    }
    if !class_name.is_empty() {
        spec["priorityClassName"] = json!(class_name);
    }
    spec["priority"] = json!(priority);
    spec["preemptionPolicy"] = json!(policy);
    Ok(())
}

/// Pod updates keep the priority admission computed (the fields are immutable upstream).
pub fn carry_over_pod_priority(current: &Value, next: &mut Value) {
    for field in ["priority", "preemptionPolicy", "priorityClassName"] {
        let missing = next["spec"].get(field).is_none_or(Value::is_null);
        if let (true, Some(old), true) = (
            missing,
            current["spec"].get(field),
            next["spec"].is_object(),
        ) {
            next["spec"][field] = old.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::controllers::testing::{bare_pod, key, TestCluster};

    fn class(name: &str, value: i64, default: bool) -> serde_json::Value {
        json!({"metadata": {"name": name}, "value": value, "globalDefault": default})
    }

    #[test]
    fn pods_get_their_class_priority_or_are_refused() {
        let cluster = TestCluster::new();
        cluster.create(
            "scheduling.k8s.io/priorityclasses",
            class("high", 1000, false),
        );
        let mut pod = bare_pod("web", json!({"app": "web"}));
        pod["spec"]["priorityClassName"] = json!("high");
        let created = cluster.create("core/pods", pod.clone());
        assert_eq!(created["spec"]["priority"], 1000);
        assert_eq!(created["spec"]["preemptionPolicy"], "PreemptLowerPriority");

        pod["metadata"]["name"] = json!("other");
        pod["spec"]["priorityClassName"] = json!("missing");
        let error = cluster.try_create("core/pods", pod.clone()).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(
            error.message,
            "pods \"other\" is forbidden: no PriorityClass with name missing was found"
        );

        pod["spec"]["priorityClassName"] = json!("high");
        pod["spec"]["priority"] = json!(5);
        let error = cluster.try_create("core/pods", pod).unwrap_err();
        assert_eq!(error.message, "pods \"other\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name");
    }

    #[test]
    fn the_global_default_applies_and_is_unique() {
        let cluster = TestCluster::new();
        let plain = cluster.create("core/pods", bare_pod("before", json!({})));
        assert_eq!(plain["spec"]["priority"], 0);
        assert!(plain["spec"].get("priorityClassName").is_none());
        cluster.create(
            "scheduling.k8s.io/priorityclasses",
            class("normal", 100, true),
        );
        let pod = cluster.create("core/pods", bare_pod("after", json!({})));
        assert_eq!(pod["spec"]["priorityClassName"], "normal");
        assert_eq!(pod["spec"]["priority"], 100);
        let error = cluster
            .try_create("scheduling.k8s.io/priorityclasses", class("also", 5, true))
            .unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(error.message, "priorityclasses.scheduling.k8s.io \"also\" is forbidden: PriorityClass normal is already marked as default. Only one default can exist");
        // An update keeps the computed priority when the client leaves it out.
        let updated = cluster.update("core/pods", &key("after"), |p| {
            p["spec"].as_object_mut().unwrap().remove("priority");
            p["metadata"]["labels"] = json!({"x": "y"});
        });
        assert_eq!(updated["spec"]["priority"], 100);
    }

    #[test]
    fn reserved_names_and_values_are_refused() {
        let cluster = TestCluster::new();
        super::ensure_system_classes(cluster.api()).unwrap();
        let node_critical = cluster
            .get(
                "scheduling.k8s.io/priorityclasses",
                &(String::new(), "system-node-critical".into()),
            )
            .unwrap();
        assert_eq!(node_critical["value"], 2000001000);
        assert_eq!(node_critical["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(
            node_critical["description"],
            "Used for system critical pods that must not be moved from their current node."
        );
        let error = cluster
            .try_create(
                "scheduling.k8s.io/priorityclasses",
                class("high", 1_000_000_001, false),
            )
            .unwrap_err();
        assert_eq!(error.code, 422);
        assert_eq!(error.message, "PriorityClass.scheduling.k8s.io \"high\" is invalid: value: Forbidden: maximum allowed value of a user defined priority is 1000000000");
        let error = cluster
            .try_create(
                "scheduling.k8s.io/priorityclasses",
                class("system-foo", 5, false),
            )
            .unwrap_err();
        assert_eq!(error.message, "PriorityClass.scheduling.k8s.io \"system-foo\" is invalid: metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-foo is not a known system priority class");
        let resource = crate::resources::by_kind("scheduling.k8s.io", "PriorityClass").unwrap();
        let error = crate::api::objects::delete_object(
            cluster.api(),
            resource,
            "",
            "system-node-critical",
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(error.message, "priorityclasses.scheduling.k8s.io \"system-node-critical\" is forbidden: this is a system priority class and cannot be deleted");
    }
}
