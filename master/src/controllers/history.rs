//! ControllerRevisions: numbered snapshots of a StatefulSet's or DaemonSet's pod template.
//!
//! ```text
//!   template ──▶ data = {"spec":{"template":{"$patch":"replace", ...}}}   (keys sorted)
//!   newest revision has equal data ─▶ it is the update revision
//!   an older one has equal data     ─▶ it is renumbered highest + 1 (a rollback)
//!   none                            ─▶ a new revision "<owner>-<hash>", numbered highest + 1
//!                                      (the name taken by other data: collisionCount + 1)
//! ```
//!
//! The data is exactly what `kubectl rollout undo` sends back as a strategic merge patch, and
//! revisions carry the template's labels and a controller reference, which is how
//! `kubectl rollout history` finds them. Revisions no pod runs beyond `revisionHistoryLimit`
//! are deleted, oldest first.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::view::{str_of, View};
use super::{controller_ref, Context};
use crate::api::error::ApiError;

const STORAGE_KEY: &str = "apps/controllerrevisions";

/// A revision's data: the strategic merge patch that puts `template` back, keys sorted as
/// upstream's encoder writes them.
pub fn revision_data(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    sorted(&json!({"spec": {"template": template}}))
}

/// The pod template a revision holds.
pub fn template_of(revision: &Value) -> Value {
    let mut template = revision["data"]["spec"]["template"].clone();
    if let Some(map) = template.as_object_mut() {
        map.shift_remove("$patch");
    }
    template
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Compact JSON with sorted keys and `<`, `>`, `&` escaped, as Go's `json.Marshal` writes a map.
fn go_json(value: &Value) -> String {
    sorted(value)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// 32-bit FNV-1 (multiply, then xor), as Go's `hash/fnv.New32`.
fn fnv1(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| {
        hash.wrapping_mul(0x0100_0193) ^ u32::from(*byte)
    })
}

/// Upstream's `rand.SafeEncodeString`: each character to a letter or digit that cannot spell
/// words.
fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.chars()
        .map(|c| ALPHANUMS[c as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// A StatefulSet revision's hash: FNV-1 of the data and the collision count
/// (upstream's `HashControllerRevision`).
pub fn stateful_set_hash(data: &Value, collisions: i64) -> String {
    let mut bytes = go_json(data).into_bytes();
    bytes.extend(collisions.to_string().bytes());
    safe_encode(&fnv1(&bytes).to_string())
}

/// How one owner kind names and labels its revisions.
pub struct Flavor {
    /// The label holding the hash on the revision.
    pub hash_label: &'static str,
    /// The hash of a template (and its data) with a collision count.
    pub hash: fn(template: &Value, data: &Value, collisions: i64) -> String,
}

/// The revisions an owner controls, oldest first (by number, then creation, then name).
pub fn owned_revisions(view: &View, owner: &Value) -> Vec<Arc<Value>> {
    let uid = str_of(&owner["metadata"]["uid"]);
    let mut revisions: Vec<Arc<Value>> = view
        .dependents
        .get(&uid)
        .into_iter()
        .flatten()
        .filter(|(resource, _)| *resource == STORAGE_KEY)
        .filter_map(|(resource, key)| view.get(resource, &key.0, &key.1).cloned())
        .filter(|r| {
            super::view::owner_refs(r)
                .iter()
                .any(|o| o.controller && o.uid == uid)
        })
        .collect();
    revisions.sort_by(|a, b| {
        let order = |r: &Value| {
            (
                r["revision"].as_i64().unwrap_or(0),
                str_of(&r["metadata"]["creationTimestamp"]),
                str_of(&r["metadata"]["name"]),
            )
        };
        order(a).cmp(&order(b))
    });
    revisions
}

/// An owner's revisions after [`sync_revisions`].
pub struct Revisions {
    /// Every revision it controls, oldest first.
    pub all: Vec<Value>,
    /// The revision of its current template.
    pub update: Value,
    /// The collision count to keep in its status.
    pub collisions: i64,
}

/// Finds or makes the revision of the owner's current template: reuses the newest, renumbers an
/// older equal one (a rollback), or creates one.
pub fn sync_revisions(
    ctx: &Context,
    owner: &Value,
    flavor: &Flavor,
) -> Result<Revisions, ApiError> {
    let mut all: Vec<Value> = owned_revisions(&ctx.view(), owner)
        .into_iter()
        .map(|r| (*r).clone())
        .collect();
    let template = &owner["spec"]["template"];
    let data = revision_data(template);
    let mut collisions = owner["status"]["collisionCount"].as_i64().unwrap_or(0);
    let next = all
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .max()
        .unwrap_or(0)
        + 1;
    if all.last().is_some_and(|newest| newest["data"] == data) {
        let update = all.last().cloned().expect("checked above");
        return Ok(Revisions {
            all,
            update,
            collisions,
        });
    }
    if let Some(index) = all.iter().rposition(|r| r["data"] == data) {
        let (namespace, name) = super::key_of(&all[index]);
        let renumbered = ctx.update(STORAGE_KEY, &namespace, &name, |r| {
            r["revision"] = json!(next);
            Ok(())
        })?;
        all.remove(index);
        all.push(renumbered.clone());
        return Ok(Revisions {
            all,
            update: renumbered,
            collisions,
        });
    }
    let namespace = str_of(&owner["metadata"]["namespace"]);
    let owner_name = str_of(&owner["metadata"]["name"]);
    let prefix: String = owner_name.chars().take(223).collect();
    let first_hash = (flavor.hash)(template, &data, collisions);
    for _ in 0..100 {
        let hash = (flavor.hash)(template, &data, collisions);
        let name = format!("{prefix}-{hash}");
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert(flavor.hash_label.into(), json!(first_hash));
        let mut metadata = json!({
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [controller_ref(owner)],
        });
        if let Some(annotations) = owner["metadata"]["annotations"]
            .as_object()
            .filter(|a| !a.is_empty())
        {
            metadata["annotations"] = json!(annotations);
        }
        let revision = json!({
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": metadata,
            "data": data,
            "revision": next,
        });
        match ctx.create(STORAGE_KEY, revision) {
            Ok(created) => {
                all.push(created.clone());
                return Ok(Revisions {
                    all,
                    update: created,
                    collisions,
                });
            }
            Err(e) if e.code == 409 => {
                let existing = ctx.get(STORAGE_KEY, &namespace, &name)?;
                if let Some(existing) = existing.filter(|e| e["data"] == data) {
                    return Ok(Revisions {
                        all,
                        update: existing,
                        collisions,
                    });
                }
                collisions += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(format!(
        "no free revision name for {namespace}/{owner_name}"
    )))
}

/// Deletes the oldest revisions that are not `live` until at most `limit` of those remain
/// (a negative limit keeps them all).
pub fn truncate_history(
    ctx: &Context,
    revisions: &[Value],
    live: &HashSet<String>,
    limit: i64,
) -> Result<(), ApiError> {
    if limit < 0 {
        return Ok(());
    }
    let history: Vec<&Value> = revisions
        .iter()
        .filter(|r| !live.contains(&str_of(&r["metadata"]["name"])))
        .collect();
    let excess = history.len().saturating_sub(limit as usize);
    for revision in history.into_iter().take(excess) {
        let (namespace, name) = super::key_of(revision);
        ctx.delete(STORAGE_KEY, &namespace, &name, &Default::default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_upstreams_for_the_same_bytes() {
        let data = revision_data(&json!({}));
        assert_eq!(
            go_json(&data),
            r#"{"spec":{"template":{"$patch":"replace"}}}"#
        );
        assert_eq!(
            fnv1(br#"{"spec":{"template":{"$patch":"replace"}}}0"#),
            1459418616
        );
        assert_eq!(stateful_set_hash(&data, 0), "589f85db5b");
        assert_ne!(stateful_set_hash(&data, 1), stateful_set_hash(&data, 0));
    }

    #[test]
    fn data_is_sorted_and_gives_the_template_back() {
        let template = json!({"spec": {"containers": [{"name": "a", "image": "x<y"}]}, "metadata": {"labels": {"b": "1", "a": "2"}}});
        let data = revision_data(&template);
        assert_eq!(
            go_json(&data),
            r#"{"spec":{"template":{"$patch":"replace","metadata":{"labels":{"a":"2","b":"1"}},"spec":{"containers":[{"image":"x\u003cy","name":"a"}]}}}}"#
        );
        assert_eq!(
            template_of(&json!({"data": data})),
            template,
            "equal as JSON values"
        );
    }
}
