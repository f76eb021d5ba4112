//! Defaults and validation of Role, ClusterRole, RoleBinding and ClusterRoleBinding, as
//! upstream's `pkg/apis/rbac/v1/defaults.go` and `pkg/apis/rbac/validation`.

use serde_json::{json, Value};

use crate::admission::{FieldError, FieldErrorKind};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Upstream's `ValidateRBACName` (a path segment): what is wrong with `name`.
pub fn name_problems(name: &str) -> Vec<&'static str> {
    let mut problems = Vec::new();
    if name == "." {
        problems.push("may not be '.'");
    }
    if name == ".." {
        problems.push("may not be '..'");
    }
    if name.contains('/') {
        problems.push("may not contain '/'");
    }
    if name.contains('%') {
        problems.push("may not contain '%'");
    }
    problems
}

/// Fills `roleRef.apiGroup` and the API group of User and Group subjects.
pub fn apply_defaults(kind: &str, object: &mut Value) {
    if !matches!(kind, "RoleBinding" | "ClusterRoleBinding") {
        return;
    }
    if let Some(role_ref) = object.get_mut("roleRef").and_then(Value::as_object_mut) {
        if role_ref
            .get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            role_ref.insert("apiGroup".into(), json!(GROUP));
        }
    }
    for subject in object
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(subject) = subject.as_object_mut() else {
            continue;
        };
        let kind = subject
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let group_missing = subject
            .get("apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if matches!(kind, "User" | "Group") && group_missing {
            subject.insert("apiGroup".into(), json!(GROUP));
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn go_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn not_supported(field: &str, value: &str, allowed: &[&str]) -> FieldError {
    let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    FieldError::new(
        FieldErrorKind::NotSupported,
        field,
        Some(value.to_owned()),
        &format!("supported values: {}", allowed.join(", ")),
    )
}

fn validate_rule(rule: &Value, namespaced: bool, path: &str, errors: &mut Vec<FieldError>) {
    let field = |name: &str| format!("{path}.{name}");
    if strings(&rule["verbs"]).is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            &field("verbs"),
            None,
            "verbs must contain at least one value",
        ));
    }
    let urls = strings(&rule["nonResourceURLs"]);
    if !urls.is_empty() {
        if namespaced {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                &field("nonResourceURLs"),
                None,
                &format!(
                    "{}: namespaced rules cannot apply to non-resource URLs",
                    go_list(&urls)
                ),
            ));
        }
        let resource_fields = ["apiGroups", "resources", "resourceNames"];
        if resource_fields
            .iter()
            .any(|f| !strings(&rule[*f]).is_empty())
        {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                &field("nonResourceURLs"),
                None,
                &format!(
                    "{}: rules cannot apply to both regular resources and non-resource URLs",
                    go_list(&urls)
                ),
            ));
        }
        return;
    }
    if strings(&rule["apiGroups"]).is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            &field("apiGroups"),
            None,
            "resource rules must supply at least one api group",
        ));
    }
    if strings(&rule["resources"]).is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            &field("resources"),
            None,
            "resource rules must supply at least one resource",
        ));
    }
}

fn validate_subject(subject: &Value, namespaced: bool, path: &str, errors: &mut Vec<FieldError>) {
    let text = |f: &str| subject[f].as_str().unwrap_or_default();
    let (name, group) = (text("name"), text("apiGroup"));
    if name.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            &format!("{path}.name"),
            None,
            "",
        ));
    }
    match text("kind") {
        "ServiceAccount" => {
            let valid = name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !name.is_empty() && !valid {
                errors.push(FieldError::new(
                    FieldErrorKind::Invalid,
                    &format!("{path}.name"),
                    Some(name.to_owned()),
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                ));
            }
            if !group.is_empty() {
                errors.push(not_supported(&format!("{path}.apiGroup"), group, &[""]));
            }
            if !namespaced && text("namespace").is_empty() {
                errors.push(FieldError::new(
                    FieldErrorKind::Required,
                    &format!("{path}.namespace"),
                    None,
                    "",
                ));
            }
        }
        "User" | "Group" => {
            if group != GROUP {
                errors.push(not_supported(&format!("{path}.apiGroup"), group, &[GROUP]));
            }
        }
        other => errors.push(not_supported(
            &format!("{path}.kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// Validation of a new or changed object of one of the four kinds.
pub fn validate(kind: &str, object: &Value, errors: &mut Vec<FieldError>) {
    match kind {
        "Role" | "ClusterRole" => {
            let namespaced = kind == "Role";
            for (i, rule) in object["rules"].as_array().into_iter().flatten().enumerate() {
                validate_rule(rule, namespaced, &format!("rules[{i}]"), errors);
            }
            let aggregation = &object["aggregationRule"];
            if kind == "ClusterRole" && aggregation.is_object() {
                let selectors = aggregation["clusterRoleSelectors"].as_array();
                if selectors.is_none_or(Vec::is_empty) {
                    errors.push(FieldError::new(
                        FieldErrorKind::Required,
                        "aggregationRule.clusterRoleSelectors",
                        None,
                        "at least one clusterRoleSelector required if aggregationRule is non-nil",
                    ));
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_ref = &object["roleRef"];
            let text = |f: &str| role_ref[f].as_str().unwrap_or_default();
            if text("apiGroup") != GROUP {
                errors.push(not_supported(
                    "roleRef.apiGroup",
                    text("apiGroup"),
                    &[GROUP],
                ));
            }
            let kinds: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !kinds.contains(&text("kind")) {
                errors.push(not_supported("roleRef.kind", text("kind"), kinds));
            }
            let name = text("name");
            if name.is_empty() {
                errors.push(FieldError::new(
                    FieldErrorKind::Required,
                    "roleRef.name",
                    None,
                    "",
                ));
            }
            for problem in name_problems(name) {
                errors.push(FieldError::new(
                    FieldErrorKind::Invalid,
                    "roleRef.name",
                    Some(name.to_owned()),
                    problem,
                ));
            }
            let namespaced = kind == "RoleBinding";
            for (i, subject) in object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                validate_subject(subject, namespaced, &format!("subjects[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// What may not change on update: a binding's `roleRef`.
pub fn validate_update(kind: &str, new: &Value, old: &Value, errors: &mut Vec<FieldError>) {
    if !matches!(kind, "RoleBinding" | "ClusterRoleBinding") || new["roleRef"] == old["roleRef"] {
        return;
    }
    let text = |f: &str| new["roleRef"][f].as_str().unwrap_or_default().to_owned();
    errors.push(FieldError::new(
        FieldErrorKind::Invalid,
        "roleRef",
        None,
        &format!(
            "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}: cannot change roleRef",
            text("apiGroup"),
            text("kind"),
            text("name")
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(kind: &str, object: Value) -> Vec<String> {
        let mut object = object;
        apply_defaults(kind, &mut object);
        let mut errors = Vec::new();
        validate(kind, &object, &mut errors);
        errors.iter().map(FieldError::message).collect()
    }

    #[test]
    fn rules_and_bindings_are_checked_as_upstream() {
        assert_eq!(
            messages("Role", json!({"rules": [{"apiGroups": [""], "resources": ["pods"]},
                                              {"verbs": ["get"], "nonResourceURLs": ["/x"]}]})),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs",
            ]
        );
        assert!(messages(
            "ClusterRole",
            json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]})
        )
        .is_empty());
        assert_eq!(
            messages("ClusterRole", json!({"rules": [{"verbs": ["get"]}]})),
            [
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resources: Required value: resource rules must supply at least one resource",
            ]
        );
        let binding = json!({"roleRef": {"kind": "Role", "name": "r"},
                             "subjects": [{"kind": "User", "name": "alice"},
                                          {"kind": "ServiceAccount", "name": "sa"},
                                          {"kind": "Robot", "name": "x"}]});
        assert_eq!(
            messages("RoleBinding", binding.clone()),
            ["subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\""]
        );
        assert_eq!(
            messages("ClusterRoleBinding", binding),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[1].namespace: Required value",
                "subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
            ]
        );
        assert_eq!(
            messages("RoleBinding", json!({"roleRef": {"kind": "Role"}})),
            ["roleRef.name: Required value"]
        );
        let old = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}});
        let new = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"}});
        let mut errors = Vec::new();
        validate_update("RoleBinding", &new, &old, &mut errors);
        assert_eq!(
            errors[0].message(),
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
        );
        assert_eq!(
            name_problems("system:aggregate-to-edit"),
            Vec::<&str>::new()
        );
        assert_eq!(name_problems("a/b"), ["may not contain '/'"]);
    }
}
