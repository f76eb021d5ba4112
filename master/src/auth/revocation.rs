//! Revoked client certificates: a list in the store, checked on every request a client
//! certificate authenticates.
//!
//! The list is the ConfigMap `kube-system/bramble-revoked-certificates`: one key per revoked
//! serial number (lower-case hex without leading zeros), its value a small JSON record of
//! whose certificate it was and who revoked it when. A ConfigMap because a revocation list
//! is public by nature (CAs publish theirs), needs no encryption at rest, and is then written
//! through the API like any object: only who may write ConfigMaps in `kube-system` (the
//! cluster's administrators) can revoke or unrevoke, and `kubectl get configmap -n
//! kube-system bramble-revoked-certificates -o yaml` shows it.
//!
//! Checking costs a lock and a hash look-up: each store's list is cached with a subscription
//! to the store's change feed, and read again only after a change to the ConfigMap (or when
//! the feed overflowed). Changes are published after their commit, so the list read then is
//! never older than the change that invalidated it. A connection's certificate is checked at
//! each request, so a revoked certificate's open connections stop working at their next one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::store::{Change, Store};

/// Namespace of the revocation list.
pub const NAMESPACE: &str = "kube-system";
/// Name of the revocation list's ConfigMap.
pub const NAME: &str = "bramble-revoked-certificates";
const STORAGE_KEY: &str = "core/configmaps";

/// One store's list and the feed that says when it changes.
struct Cached {
    changes: broadcast::Receiver<Arc<Change>>,
    revoked: HashSet<String>,
    /// Read again before the next answer.
    stale: bool,
}

/// Cached lists by store (its address: one store per master, a few in tests).
static CACHE: Mutex<Option<HashMap<usize, Cached>>> = Mutex::new(None);

/// The serials a revocation-list ConfigMap names.
pub fn serials_of(config_map: &Value) -> HashSet<String> {
    config_map["data"]
        .as_object()
        .map(|data| {
            data.keys()
                .map(|serial| serial.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

fn is_the_list(change: &Change) -> bool {
    change.resource == STORAGE_KEY && change.namespace == NAMESPACE && change.name == NAME
}

impl Cached {
    fn new(store: &Store) -> Cached {
        Cached {
            // Subscribe before reading, so no change falls in between.
            changes: store.subscribe(),
            revoked: HashSet::new(),
            stale: true,
        }
    }

    /// Takes the news from the change feed; false when the store is gone (the address is
    /// being reused by another store).
    fn catch_up(&mut self) -> bool {
        loop {
            match self.changes.try_recv() {
                Ok(change) => self.stale |= is_the_list(&change),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Lagged(_)) => self.stale = true,
                Err(TryRecvError::Closed) => return false,
            }
        }
    }

    fn reload(&mut self, store: &Store) -> Result<(), crate::store::StoreError> {
        self.revoked = store
            .get(STORAGE_KEY, NAMESPACE, NAME)?
            .map(|list| serials_of(&list))
            .unwrap_or_default();
        self.stale = false;
        Ok(())
    }
}

/// Whether the certificate with `serial` (lower-case hex) has been revoked. When the list
/// cannot be read, every certificate counts as revoked (the request gets 401 and may retry).
pub fn is_revoked(store: &Store, serial: &str) -> bool {
    let key = store as *const Store as usize;
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let caches = cache.get_or_insert_with(HashMap::new);
    let cached = caches.entry(key).or_insert_with(|| Cached::new(store));
    if !cached.catch_up() {
        *cached = Cached::new(store);
    }
    if cached.stale {
        if let Err(error) = cached.reload(store) {
            tracing::warn!(error = %protocol::error::error_chain(&error), "cannot read the certificate revocation list");
            return true;
        }
    }
    cached.revoked.contains(&serial.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &dir.path().join("store.db"),
            &[],
            crate::store::DEFAULT_HISTORY_REVISIONS,
        )
        .unwrap()
    }

    #[test]
    fn revocations_are_seen_at_the_next_check_and_unrelated_changes_keep_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert!(!is_revoked(&store, "1a2b"));
        let list = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "data": {"1a2b": "{\"user\":\"alice\"}"},
        });
        store
            .create(STORAGE_KEY, NAMESPACE, NAME, list.clone())
            .unwrap();
        assert!(is_revoked(&store, "1a2b"));
        assert!(
            is_revoked(&store, "1A2B"),
            "serials compare case-insensitively"
        );
        assert!(!is_revoked(&store, "ffff"));

        // Another object changing does not make the check read the list again: a list
        // changed behind the feed's back (impossible outside this test) is not noticed.
        let key = &store as *const Store as usize;
        CACHE
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .get_mut(&key)
            .unwrap()
            .revoked
            .insert("cafe".into());
        store
            .create(
                STORAGE_KEY,
                NAMESPACE,
                "other",
                json!({"metadata": {"name": "other", "namespace": NAMESPACE}}),
            )
            .unwrap();
        assert!(is_revoked(&store, "cafe"), "served from the cache");

        // A change to the list is.
        store
            .update::<crate::store::StoreError>(STORAGE_KEY, NAMESPACE, NAME, |current| {
                let mut next = current.clone();
                next["data"]["ffff"] = json!("{}");
                Ok(next)
            })
            .unwrap();
        assert!(is_revoked(&store, "ffff"));
        assert!(!is_revoked(&store, "cafe"), "read again from the store");
        store
            .delete::<crate::store::StoreError>(STORAGE_KEY, NAMESPACE, NAME, |_| Ok(()))
            .unwrap();
        assert!(!is_revoked(&store, "1a2b"), "unrevoked with the list");
    }
}
