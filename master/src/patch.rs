//! Applies the Kubernetes patch formats (JSON patch, JSON merge patch, strategic merge patch) to stored objects.
//!
//! Strategic merge patch needs to know, for each list in an object, whether it is replaced
//! whole, merged as a set of primitives, or merged element by element on a key (containers by
//! `name`, container ports by `containerPort`, ...). Upstream reads that from Go struct tags
//! (`patchStrategy`/`patchMergeKey`); [`list_strategy`] holds the same facts for the kinds
//! bramble serves, keyed by where the list sits in the object.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document has the wrong shape.
    #[error("invalid patch: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// A JSON patch path does not exist in the object.
    #[error("the path \"{path}\" does not exist in the object")]
    MissingPath {
        /// The JSON pointer.
        path: String,
    },
    /// A JSON patch `test` operation failed.
    #[error("test operation failed: the value at \"{path}\" is not the one the patch expects")]
    TestFailed {
        /// The JSON pointer.
        path: String,
    },
    /// A merge-keyed list element lacks its key.
    #[error("map: {element} does not contain declared merge key: {key}")]
    MissingMergeKey {
        /// The element, as JSON.
        element: String,
        /// The merge key.
        key: String,
    },
}

fn invalid(reason: impl Into<String>) -> PatchError {
    PatchError::Invalid {
        reason: reason.into(),
    }
}

// ----- RFC 7386 JSON merge patch -------------------------------------------------------------

/// RFC 7386 JSON merge patch: null deletes, objects merge recursively, anything else replaces.
pub fn apply_merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    Ok(merge_patch_value(target, patch))
}

fn merge_patch_value(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch_map) = patch else {
        return patch.clone();
    };
    let mut result = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch_map {
        if value.is_null() {
            result.remove(key);
        } else {
            let current = result.get(key).cloned().unwrap_or(Value::Null);
            result.insert(key.clone(), merge_patch_value(&current, value));
        }
    }
    Value::Object(result)
}

// ----- RFC 6902 JSON patch -------------------------------------------------------------------

fn pointer_tokens(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| invalid(format!("path \"{path}\" must start with '/'")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, allow_end: bool, path: &str) -> Result<usize, PatchError> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let index: usize = token
        .parse()
        .map_err(|_| invalid(format!("\"{token}\" in \"{path}\" is not an array index")))?;
    let bound = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if index > bound || (!allow_end && len == 0) {
        return Err(PatchError::MissingPath {
            path: path.to_owned(),
        });
    }
    Ok(index)
}

fn parent_mut<'a>(
    root: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut current = root;
    for token in tokens {
        current = match current {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => {
                let index = array_index(token, items.len(), false, path)?;
                items.get_mut(index)
            }
            _ => None,
        }
        .ok_or_else(|| PatchError::MissingPath {
            path: path.to_owned(),
        })?;
    }
    Ok(current)
}

fn json_get(root: &Value, path: &str) -> Result<Value, PatchError> {
    let tokens = pointer_tokens(path)?;
    let mut current = root;
    for token in &tokens {
        current = match current {
            Value::Object(map) => map.get(token),
            Value::Array(items) => items.get(array_index(token, items.len(), false, path)?),
            _ => None,
        }
        .ok_or_else(|| PatchError::MissingPath {
            path: path.to_owned(),
        })?;
    }
    Ok(current.clone())
}

fn json_add(root: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *root = value;
        return Ok(());
    };
    match parent_mut(root, parents, path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let index = array_index(last, items.len(), true, path)?;
            items.insert(index, value);
        }
        _ => {
            return Err(PatchError::MissingPath {
                path: path.to_owned(),
            })
        }
    }
    Ok(())
}

fn json_remove(root: &mut Value, path: &str) -> Result<Value, PatchError> {
    let tokens = pointer_tokens(path)?;
    let (last, parents) = tokens
        .split_last()
        .ok_or_else(|| invalid("cannot remove the whole document"))?;
    let missing = || PatchError::MissingPath {
        path: path.to_owned(),
    };
    match parent_mut(root, parents, path)? {
        Value::Object(map) => map.shift_remove(last).ok_or_else(missing),
        Value::Array(items) => {
            let index = array_index(last, items.len(), false, path)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy and test.
pub fn apply_json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| invalid("a JSON patch must be a list of operations"))?;
    let mut document = target.clone();
    for operation in operations {
        let field = |name: &str| -> Result<String, PatchError> {
            operation
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("operation {operation} has no \"{name}\"")))
        };
        let value = || -> Result<Value, PatchError> {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| invalid(format!("operation {operation} has no \"value\"")))
        };
        let path = field("path")?;
        match field("op")?.as_str() {
            "add" => json_add(&mut document, &path, value()?)?,
            "remove" => {
                json_remove(&mut document, &path)?;
            }
            "replace" => {
                json_remove(&mut document, &path)?;
                json_add(&mut document, &path, value()?)?;
            }
            "move" => {
                let from = field("from")?;
                let moved = json_remove(&mut document, &from)?;
                json_add(&mut document, &path, moved)?;
            }
            "copy" => {
                let from = field("from")?;
                let copied = json_get(&document, &from)?;
                json_add(&mut document, &path, copied)?;
            }
            "test" => {
                if json_get(&document, &path)? != value()? {
                    return Err(PatchError::TestFailed { path });
                }
            }
            other => return Err(invalid(format!("unknown operation \"{other}\""))),
        }
    }
    Ok(document)
}

// ----- strategic merge patch -----------------------------------------------------------------

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (no patch strategy upstream).
    Replace,
    /// Primitives merged as a set.
    Set,
    /// Objects merged element by element on this key.
    Merge(&'static str),
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// The strategy for the list at `path` (object keys from the root, list indices left out) in
/// an object of `kind`.
pub fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    let field = path.last().map(String::as_str).unwrap_or_default();
    let parent = path
        .len()
        .checked_sub(2)
        .map(|i| path[i].as_str())
        .unwrap_or_default();
    let in_container = CONTAINER_LISTS.contains(&parent);
    match (parent, field) {
        ("metadata", "ownerReferences") => ListStrategy::Merge("uid"),
        ("metadata", "finalizers") => ListStrategy::Set,
        ("spec", f) if CONTAINER_LISTS.contains(&f) => ListStrategy::Merge("name"),
        ("spec", "volumes" | "imagePullSecrets" | "resourceClaims") => ListStrategy::Merge("name"),
        ("spec", "hostAliases") => ListStrategy::Merge("ip"),
        ("spec", "topologySpreadConstraints") => ListStrategy::Merge("topologyKey"),
        ("spec", "ports") if kind == "Service" => ListStrategy::Merge("port"),
        ("spec", "podCIDRs") if kind == "Node" => ListStrategy::Set,
        (_, "ports") if in_container => ListStrategy::Merge("containerPort"),
        (_, "env") if in_container => ListStrategy::Merge("name"),
        (_, "volumeMounts") if in_container => ListStrategy::Merge("mountPath"),
        (_, "volumeDevices") if in_container => ListStrategy::Merge("devicePath"),
        ("status", "conditions") => ListStrategy::Merge("type"),
        ("status", "addresses") if kind == "Node" => ListStrategy::Merge("type"),
        _ => ListStrategy::Replace,
    }
}

/// Kubernetes strategic merge patch for the built-in `kind` of API `group` ("" for core).
pub fn apply_strategic_merge_patch(
    target: &Value,
    patch: &Value,
    _group: &str,
    kind: &str,
) -> Result<Value, PatchError> {
    let Value::Object(patch_map) = patch else {
        return Err(invalid("a strategic merge patch must be a JSON object"));
    };
    let mut result = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    match merge_map(&mut result, patch_map, kind, &mut Vec::new())? {
        MapOutcome::Keep => Ok(Value::Object(result)),
        MapOutcome::Delete => Ok(Value::Object(Map::new())),
    }
}

enum MapOutcome {
    Keep,
    Delete,
}

fn directive(map: &Map<String, Value>) -> Result<Option<&str>, PatchError> {
    match map.get("$patch") {
        None => Ok(None),
        Some(Value::String(d)) if matches!(d.as_str(), "replace" | "delete" | "merge") => {
            Ok(Some(d))
        }
        Some(other) => Err(invalid(format!("unknown $patch directive {other}"))),
    }
}

/// A patch value with every `$` directive removed, as it is stored when nothing merges into it.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| item.get("$patch").is_none())
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<MapOutcome, PatchError> {
    match directive(patch)? {
        Some("delete") => return Ok(MapOutcome::Delete),
        Some("replace") => {
            *target = match without_directives(&Value::Object(patch.clone())) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            return Ok(MapOutcome::Keep);
        }
        _ => {}
    }
    let mut orders: Vec<(String, &Value)> = Vec::new();
    let mut deletions: Vec<(String, &Value)> = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), value));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            deletions.push((field.to_owned(), value));
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                target.shift_remove(key);
            }
            Value::Object(patch_child) => match target.get_mut(key) {
                Some(Value::Object(target_child)) => {
                    if let MapOutcome::Delete = merge_map(target_child, patch_child, kind, path)? {
                        target.shift_remove(key);
                    }
                }
                _ => {
                    if directive(patch_child)? == Some("delete") {
                        target.shift_remove(key);
                    } else {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, patch_child, kind, path)?;
                        target.insert(key.clone(), Value::Object(fresh));
                    }
                }
            },
            Value::Array(patch_items) => {
                let current = match target.get(key) {
                    Some(Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                };
                let merged =
                    merge_list(current, patch_items, list_strategy(kind, path), kind, path)?;
                target.insert(key.clone(), Value::Array(merged));
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, values) in deletions {
        let values = values
            .as_array()
            .ok_or_else(|| invalid(format!("$deleteFromPrimitiveList/{field} must be a list")))?;
        if let Some(Value::Array(items)) = target.get_mut(&field) {
            items.retain(|item| !values.contains(item));
        }
    }
    for (field, order) in orders {
        let order = order
            .as_array()
            .ok_or_else(|| invalid(format!("$setElementOrder/{field} must be a list")))?;
        path.push(field.clone());
        let strategy = list_strategy(kind, path);
        path.pop();
        if let Some(Value::Array(items)) = target.get_mut(&field) {
            reorder(items, order, strategy);
        }
    }
    Ok(MapOutcome::Keep)
}

/// Orders a merged list as `$setElementOrder` says; elements it does not name keep their
/// relative order after those it does.
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let identity = |item: &Value| -> Value {
        match strategy {
            ListStrategy::Merge(key) => item.get(key).cloned().unwrap_or(Value::Null),
            _ => item.clone(),
        }
    };
    let wanted: Vec<Value> = order
        .iter()
        .map(|entry| match strategy {
            ListStrategy::Merge(key) => entry.get(key).cloned().unwrap_or(Value::Null),
            _ => entry.clone(),
        })
        .collect();
    let mut ordered = Vec::with_capacity(items.len());
    for id in &wanted {
        if let Some(position) = items.iter().position(|item| identity(item) == *id) {
            ordered.push(items.remove(position));
        }
    }
    ordered.append(items);
    *items = ordered;
}

fn merge_list(
    mut current: Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    let replace_all = patch
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace_all || strategy == ListStrategy::Replace {
        return Ok(patch
            .iter()
            .filter(|item| item.get("$patch").is_none())
            .map(without_directives)
            .collect());
    }
    match strategy {
        ListStrategy::Set => {
            for item in patch {
                if !current.contains(item) {
                    current.push(item.clone());
                }
            }
            Ok(current)
        }
        ListStrategy::Merge(key) => {
            for item in patch {
                let Value::Object(element) = item else {
                    if !current.contains(item) {
                        current.push(item.clone());
                    }
                    continue;
                };
                let id = element
                    .get(key)
                    .ok_or_else(|| PatchError::MissingMergeKey {
                        element: item.to_string(),
                        key: key.to_owned(),
                    })?;
                let position = current.iter().position(|c| c.get(key) == Some(id));
                if directive(element)? == Some("delete") {
                    if let Some(position) = position {
                        current.remove(position);
                    }
                    continue;
                }
                match position.map(|p| &mut current[p]) {
                    Some(Value::Object(existing)) => {
                        if let MapOutcome::Delete = merge_map(existing, element, kind, path)? {
                            if let Some(p) = position {
                                current.remove(p);
                            }
                        }
                    }
                    _ => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, element, kind, path)?;
                        current.push(Value::Object(fresh));
                    }
                }
            }
            Ok(current)
        }
        ListStrategy::Replace => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "a"}, "finalizers": ["a"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "env": [{"name": "MODE", "value": "demo"}]},
                {"name": "sidecar", "image": "busybox:1.36"}
            ]}}},
            "status": {"conditions": [{"type": "Available", "status": "False"}, {"type": "Progressing", "status": "True"}]}
        })
    }

    fn smp(target: &Value, patch: Value) -> Value {
        apply_strategic_merge_patch(target, &patch, "apps", "Deployment").unwrap()
    }

    #[test]
    fn kubectl_apply_of_a_changed_copy() {
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 3, "template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [{"image": "nginx:1.27", "name": "web"}, {"$patch": "delete", "name": "sidecar"}]
            }}}
        });
        let result = smp(&deployment(), patch);
        let containers = &result["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 1);
        assert_eq!(containers[0]["image"], "nginx:1.27");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "MODE", "value": "demo"}])
        );
        assert_eq!(result["spec"]["replicas"], 3);
        assert_eq!(
            result["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}"
        );
        assert!(!result.to_string().contains('$'));
    }

    #[test]
    fn containers_merge_by_name_and_order_follows_directive() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"name": "sidecar", "image": "busybox:1.37"}]
        }}}});
        let result = smp(&deployment(), patch);
        let containers = &result["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "sidecar");
        assert_eq!(containers[0]["image"], "busybox:1.37");
        assert_eq!(containers[1]["image"], "nginx:1.25");
    }

    #[test]
    fn nested_lists_merge_on_their_keys() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web",
            "ports": [{"containerPort": 443}], "env": [{"name": "MODE", "value": "live"}]}]}}}});
        let result = smp(&deployment(), patch);
        let web = &result["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(web["ports"].as_array().unwrap().len(), 2);
        assert_eq!(web["env"], json!([{"name": "MODE", "value": "live"}]));
    }

    #[test]
    fn null_removes_labels_and_sets_merge_finalizers() {
        let patch = json!({"metadata": {"labels": {"tier": null}, "finalizers": ["b", "a"]}});
        let result = smp(&deployment(), patch);
        assert_eq!(result["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(result["metadata"]["finalizers"], json!(["a", "b"]));
        let removed = smp(
            &result,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(removed["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn conditions_merge_by_type_and_service_ports_by_port() {
        let result = smp(
            &deployment(),
            json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}}),
        );
        assert_eq!(result["status"]["conditions"][0]["status"], "True");
        assert_eq!(result["status"]["conditions"].as_array().unwrap().len(), 2);
        let service = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let patched = apply_strategic_merge_patch(
            &service,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            "",
            "Service",
        )
        .unwrap();
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn replace_and_retain_keys_directives() {
        let result = smp(
            &deployment(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
        );
        assert_eq!(result["metadata"]["labels"], json!({"only": "this"}));
        let strategy = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let recreated = smp(
            &strategy,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(recreated["spec"]["strategy"], json!({"type": "Recreate"}));
        let list = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "x", "image": "y"}]}}}}),
        );
        assert_eq!(
            list["spec"]["template"]["spec"]["containers"],
            json!([{"name": "x", "image": "y"}])
        );
    }

    #[test]
    fn bad_strategic_patches_are_errors() {
        assert!(
            apply_strategic_merge_patch(&deployment(), &json!([1]), "apps", "Deployment").is_err()
        );
        let no_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert!(matches!(
            apply_strategic_merge_patch(&deployment(), &no_key, "apps", "Deployment"),
            Err(PatchError::MissingMergeKey { .. })
        ));
        let bad_directive = json!({"metadata": {"$patch": "explode"}});
        assert!(
            apply_strategic_merge_patch(&deployment(), &bad_directive, "apps", "Deployment")
                .is_err()
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let patch = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(
            apply_merge_patch(&target, &patch).unwrap(),
            json!({"a": "z", "c": {"d": "e"}, "l": [3]})
        );
        assert_eq!(apply_merge_patch(&target, &json!("x")).unwrap(), json!("x"));
    }

    #[test]
    fn json_patch_operations() {
        let target = json!({"a": {"b": [1, 2]}, "k~/": 1});
        let patch = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/k~0~1", "value": 2},
            {"op": "copy", "from": "/a/b", "path": "/c"},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/d/3", "value": 3}
        ]);
        let result = apply_json_patch(&target, &patch).unwrap();
        assert_eq!(
            result,
            json!({"a": {"b": [0, 2, 3]}, "k~/": 2, "d": [0, 1, 2, 3]})
        );
        assert!(matches!(
            apply_json_patch(
                &target,
                &json!([{"op": "test", "path": "/k~0~1", "value": 9}])
            ),
            Err(PatchError::TestFailed { .. })
        ));
        assert!(apply_json_patch(&target, &json!([{"op": "remove", "path": "/missing"}])).is_err());
        assert!(apply_json_patch(
            &target,
            &json!([{"op": "add", "path": "/a/b/9", "value": 1}])
        )
        .is_err());
        assert!(apply_json_patch(&target, &json!([{"op": "fly", "path": "/a"}])).is_err());
        assert!(apply_json_patch(&target, &json!({"op": "add"})).is_err());
    }
}
