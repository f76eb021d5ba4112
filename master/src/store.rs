//! The SQLite store: objects, one global revision, and the bounded change history watches resume from.
//!
//! Two tables hold durable objects, and each object version is kept once:
//!
//! ```text
//!   objects(resource, namespace, name) ──revision──▶ revisions(revision, event, data)
//! ```
//!
//! `revisions` is the change log: every create, update and delete appends a row, and `objects`
//! points at the row holding each live object's current version. Compaction deletes log rows older
//! than the retained window that no live object points at, so the file stays bounded under steady
//! updates. A watch from revision R replays `revisions` rows after R; one older than the window
//! gets [`StoreError::Expired`] (HTTP 410), as etcd does.
//!
//! *Volatile* resources (node leases and events) are the write load of an idle cluster, so they
//! live in memory and are checkpointed to the database every few minutes instead of being written
//! to the SD card on every heartbeat. Losing a few seconds of lease renewals on power loss is
//! harmless: holders renew again. They share the global revision counter; to keep revisions
//! monotonic across restarts, the counter's high-water mark is reserved in blocks in `meta`.
//!
//! Durable writes commit in WAL mode with `synchronous=FULL`: an acknowledged write survives
//! `kill -9` and power loss.
//!
//! Every stored version of a Secret is sealed with AES-256-GCM before it reaches a row and opened
//! after it is read (`encryption.rs`: the envelope, the keys, rotation), so the bytes on the card
//! never hold a secret's value. `secure_delete` zeroes what deletions free, and
//! [`Store::migrate_encryption`] vacuums after rewriting old rows, so neither free pages nor the
//! WAL keep plaintext.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::encryption::{self, EncryptionError, Keyring, Place};

/// How many revisions of history durable watches can resume from.
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;
/// How many recent volatile changes watches can resume from.
const VOLATILE_HISTORY: usize = 1_024;
/// The most events kept in memory; beyond it the oldest go first (as if their TTL ran out),
/// so creating 30,000 pods does not hold 60,000 events on a 1 GB Pi.
pub const MAX_EVENTS: usize = 5_000;
/// The storage key of events, which are capped.
const EVENTS: &str = "core/events";
/// Revisions reserved at a time for volatile writes, so the counter survives restarts with one
/// small durable write per block instead of one per heartbeat.
const REVISION_BLOCK: u64 = 10_000;
/// Live change fan-out capacity; a watcher further behind than this is ended and re-watches.
const BROADCAST_CAPACITY: usize = 1_024;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was removed; the change carries its last state.
    Deleted,
}

impl EventType {
    /// The watch event type as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }

    fn code(self) -> i64 {
        match self {
            EventType::Added => 0,
            EventType::Modified => 1,
            EventType::Deleted => 2,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            0 => EventType::Added,
            2 => EventType::Deleted,
            _ => EventType::Modified,
        }
    }
}

/// One change to one object, as watches deliver it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The revision the change was written at.
    pub revision: u64,
    /// The storage key of the resource, e.g. `apps/deployments`.
    pub resource: String,
    /// The object's namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// What happened.
    pub event: EventType,
    /// The object after the change (before it, for deletions).
    pub object: Arc<Value>,
    /// The object before a modification, when known (live changes carry it; replayed history
    /// does not). Watches with selectors use it to turn changes into ADDED or DELETED.
    pub previous: Option<Arc<Value>>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects in (namespace, name) order.
    pub items: Vec<Value>,
    /// The revision the list is consistent with.
    pub revision: u64,
    /// Where the next page starts, if the limit cut the list short.
    pub next: Option<(String, String)>,
}

/// A page of a list as the stored JSON documents.
#[derive(Debug)]
pub struct RawListPage {
    /// Matching objects' JSON in (namespace, name) order.
    pub items: Vec<Vec<u8>>,
    /// The revision the list is consistent with.
    pub revision: u64,
    /// Where the next page starts, if the limit cut the list short.
    pub next: Option<(String, String)>,
}

type ScanResult<T> = (Vec<T>, u64, Option<(String, String)>);

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or prepared.
    #[error("cannot open the database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed (disk full, I/O error, corruption).
    #[error("database {action} failed")]
    Sql {
        /// What the store was doing.
        action: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row is not valid JSON: the file was damaged outside the store.
    #[error("stored object {resource} {namespace}/{name} is not valid JSON")]
    Corrupt {
        /// Storage key of the resource.
        resource: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Create found an object with that name.
    #[error("{resource} {namespace}/{name} already exists")]
    AlreadyExists {
        /// Storage key of the resource.
        resource: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
    },
    /// The object does not exist.
    #[error("{resource} {namespace}/{name} not found")]
    NotFound {
        /// Storage key of the resource.
        resource: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
    },
    /// A secret's row cannot be opened (its key is not listed, or it was altered or moved).
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
    /// A watch asked for history that has been compacted away.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision a watch can start from.
        oldest: u64,
    },
}

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { action, source }
}

type Key = (String, String, String);

/// Whether a live object holds that name.
fn object_exists(
    conn: &Connection,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<bool, StoreError> {
    let revision: Option<i64> = conn
        .query_row(
            "SELECT revision FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
            params![resource, namespace, name],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("read"))?;
    Ok(revision.is_some())
}

/// Volatile objects and their recent history, held in memory.
#[derive(Default)]
struct VolatileState {
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    /// Events in the order they were created, for the cap (may hold keys already gone).
    event_order: VecDeque<Key>,
    /// Live events.
    event_count: usize,
    /// The oldest revision volatile watches can resume from.
    floor: u64,
    dirty: bool,
}

impl VolatileState {
    /// The key of a volatile object and its current state, or NotFound.
    fn current(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(Key, Arc<Value>), StoreError> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        match self.objects.get(&key) {
            Some(current) => Ok((key, current.clone())),
            None => Err(not_found(resource, namespace, name)),
        }
    }
}

/// The store. Methods block on SQLite; call them from blocking tasks.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    revision: AtomicU64,
    reserved: AtomicU64,
    compacted: AtomicU64,
    volatile_resources: Vec<String>,
    volatile: Mutex<VolatileState>,
    changes: broadcast::Sender<Arc<Change>>,
    /// In-process followers that must see every change (the controllers' informer).
    followers: Mutex<Vec<std::sync::mpsc::Sender<Arc<Change>>>>,
    history_revisions: u64,
    /// The keys secrets are sealed with; `None` stores them as plaintext (unit tests of other
    /// parts), though rows sealed earlier are still refused rather than served as garbage.
    keys: Option<Keyring>,
    /// The data directory's lock, held as long as the store is open (see [`Store::hold`]).
    _lock: Option<encryption::FileLock>,
}

/// What [`Store::migrate_encryption`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// Rows rewritten under the current key.
    pub rewritten: usize,
    /// The keys sealed rows use after the rewrite (the current one, if any row is sealed).
    pub keys_in_use: Vec<String>,
}

/// Opens a stored row of `place`: secrets are unsealed, everything else is read as it is.
fn open_row<'a>(
    keys: Option<&Keyring>,
    place: &Place<'_>,
    data: &'a [u8],
) -> Result<Cow<'a, [u8]>, StoreError> {
    if !encryption::is_encrypted(place.resource) {
        return Ok(Cow::Borrowed(data));
    }
    match keys {
        Some(keys) => Ok(keys.decrypt(place, data)?),
        None => match encryption::key_of(data) {
            Some(key) => Err(EncryptionError::UnknownKey {
                key: key.to_owned(),
                resource: place.resource.to_owned(),
                namespace: place.namespace.to_owned(),
                name: place.name.to_owned(),
                revision: place.revision,
            }
            .into()),
            None => Ok(Cow::Borrowed(data)),
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a store lock cannot leave SQLite half-written (transactions roll
    // back), so a poisoned lock is safe to keep using.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(open)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA secure_delete=FAST;
         PRAGMA cache_size=-2000;
         PRAGMA journal_size_limit=8388608;",
    )
    .map_err(open)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database at `path`. `volatile_resources` are the storage
    /// keys kept in memory and checkpointed rather than written on every change.
    pub fn open(
        path: &Path,
        volatile_resources: &[&str],
        history_revisions: u64,
    ) -> Result<Store, StoreError> {
        Store::open_with_keys(path, volatile_resources, history_revisions, None)
    }

    /// Like [`Store::open`], sealing secrets with `keys` (see [`Store::migrate_encryption`] for
    /// rows written before).
    pub fn open_encrypted(
        path: &Path,
        volatile_resources: &[&str],
        history_revisions: u64,
        keys: Keyring,
    ) -> Result<Store, StoreError> {
        Store::open_with_keys(path, volatile_resources, history_revisions, Some(keys))
    }

    fn open_with_keys(
        path: &Path,
        volatile_resources: &[&str],
        history_revisions: u64,
        keys: Option<Keyring>,
    ) -> Result<Store, StoreError> {
        let open = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let writer = open_connection(path)?;
        writer
            .execute_batch(
                "PRAGMA auto_vacuum=INCREMENTAL;
                 CREATE TABLE IF NOT EXISTS revisions (
                     revision INTEGER PRIMARY KEY,
                     resource TEXT NOT NULL,
                     namespace TEXT NOT NULL,
                     name TEXT NOT NULL,
                     event INTEGER NOT NULL,
                     data BLOB NOT NULL);
                 CREATE INDEX IF NOT EXISTS revisions_by_resource ON revisions(resource, revision);
                 CREATE TABLE IF NOT EXISTS objects (
                     resource TEXT NOT NULL,
                     namespace TEXT NOT NULL,
                     name TEXT NOT NULL,
                     revision INTEGER NOT NULL,
                     PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS objects_by_revision ON objects(revision);
                 CREATE TABLE IF NOT EXISTS volatile_objects (
                     resource TEXT NOT NULL,
                     namespace TEXT NOT NULL,
                     name TEXT NOT NULL,
                     data BLOB NOT NULL,
                     PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
            )
            .map_err(open)?;
        // Quick check catches a damaged file at start instead of on some later request.
        let check: String = writer
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(open)?;
        if check != "ok" {
            return Err(open(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        let meta = |key: &str| -> Result<u64, StoreError> {
            let value: Option<i64> = writer
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(open)?;
            Ok(value.unwrap_or(0) as u64)
        };
        let reserved = meta("reserved_revision")?;
        let compacted = meta("compacted_revision")?;
        let durable_max: i64 = writer
            .query_row(
                "SELECT coalesce(max(revision), 0) FROM revisions",
                [],
                |row| row.get(0),
            )
            .map_err(open)?;
        let revision = (durable_max as u64).max(reserved).max(1);

        let mut volatile: VolatileState = VolatileState {
            floor: revision,
            ..VolatileState::default()
        };
        {
            let mut statement = writer
                .prepare("SELECT resource, namespace, name, data FROM volatile_objects")
                .map_err(open)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .map_err(open)?;
            for row in rows {
                let (resource, namespace, name, data) = row.map_err(open)?;
                let object: Value =
                    serde_json::from_slice(&data).map_err(|source| StoreError::Corrupt {
                        resource: resource.clone(),
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source,
                    })?;
                let key = (resource, namespace, name);
                if key.0 == EVENTS {
                    volatile.event_count += 1;
                    volatile.event_order.push_back(key.clone());
                }
                volatile.objects.insert(key, Arc::new(object));
            }
        }

        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Store {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            followers: Mutex::new(Vec::new()),
            revision: AtomicU64::new(revision),
            reserved: AtomicU64::new(reserved),
            compacted: AtomicU64::new(compacted),
            volatile_resources: volatile_resources.iter().map(|s| s.to_string()).collect(),
            volatile: Mutex::new(volatile),
            changes,
            history_revisions,
            keys,
            _lock: None,
        })
    }

    /// Keeps `lock` until the store is dropped: nobody rewrites rows while this store writes.
    pub fn hold(&mut self, lock: encryption::FileLock) {
        self._lock = Some(lock);
    }

    /// Opens every stored version of every encrypted resource and rewrites those not sealed by
    /// the current key (plaintext from an older bramble, or an older key) in one transaction, then, if anything
    /// was rewritten, vacuums the file and truncates the WAL so no old plaintext or old
    /// ciphertext stays in free pages. A crash between the rewrite and the vacuum is caught up
    /// at the next call (a flag in `meta`, committed with the rewrite). Call it before serving,
    /// under the data directory's lock.
    pub fn migrate_encryption(&self) -> Result<Migration, StoreError> {
        let Some(keys) = &self.keys else {
            return Ok(Migration::default());
        };
        let current = keys.current();
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin migration"))?;
        let mut rewritten = 0;
        let mut keys_in_use = BTreeSet::new();
        for resource in encryption::ENCRYPTED_RESOURCES {
            let rows: Vec<(i64, String, String, Vec<u8>)> = {
                let mut statement = tx
                    .prepare(
                        "SELECT revision, namespace, name, data FROM revisions
                         WHERE resource = ?1 ORDER BY revision",
                    )
                    .map_err(sql("migration"))?;
                let rows = statement
                    .query_map([resource], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .map_err(sql("migration"))?;
                rows.collect::<Result<_, _>>().map_err(sql("migration"))?
            };
            for (revision, namespace, name, data) in rows {
                let place = Place {
                    resource,
                    namespace: &namespace,
                    name: &name,
                    revision: revision as u64,
                };
                // Every row is opened, those under the current key too: a wrong key file stops
                // the master at start, naming the key, rather than failing requests later.
                let plaintext = keys.decrypt(&place, &data)?;
                if encryption::key_of(&data) == Some(current) {
                    keys_in_use.insert(current.to_owned());
                    continue;
                }
                let sealed = keys.encrypt(&place, &plaintext)?;
                tx.execute(
                    "UPDATE revisions SET data = ?1 WHERE revision = ?2",
                    params![sealed, revision],
                )
                .map_err(sql("migration"))?;
                keys_in_use.insert(current.to_owned());
                rewritten += 1;
            }
        }
        if rewritten > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('encryption_vacuum_pending', 1)
                 ON CONFLICT (key) DO UPDATE SET value = 1",
                [],
            )
            .map_err(sql("migration"))?;
        }
        tx.commit().map_err(sql("migration"))?;
        let pending: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT value FROM meta WHERE key = 'encryption_vacuum_pending'), 0)",
                [],
                |row| row.get(0),
            )
            .map_err(sql("migration"))?;
        if pending != 0 {
            // VACUUM rebuilds the file from live rows only; the checkpoint then copies it back
            // and empties the WAL, whose frames still hold the pages as they were before.
            conn.execute_batch(
                "VACUUM;
                 PRAGMA wal_checkpoint(TRUNCATE);
                 DELETE FROM meta WHERE key = 'encryption_vacuum_pending';
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .map_err(sql("vacuum after migration"))?;
        }
        Ok(Migration {
            rewritten,
            keys_in_use: keys_in_use.into_iter().collect(),
        })
    }

    /// The newest revision handed out.
    pub fn current_revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// Whether `resource` lives in memory between checkpoints.
    pub fn is_volatile(&self, resource: &str) -> bool {
        self.volatile_resources.iter().any(|r| r == resource)
    }

    /// Hands a committed change to watchers and followers, in revision order (callers hold the
    /// writer or volatile lock).
    fn publish(&self, change: Arc<Change>) {
        let mut followers = lock(&self.followers);
        followers.retain(|follower| follower.send(change.clone()).is_ok());
        drop(followers);
        let _ = self.changes.send(change);
    }

    /// Every change from now on, without the broadcast's bound: for in-process followers that
    /// must never miss one (falling behind costs memory, not a reload).
    pub fn follow(&self) -> std::sync::mpsc::Receiver<Arc<Change>> {
        let (sender, receiver) = std::sync::mpsc::channel();
        lock(&self.followers).push(sender);
        receiver
    }

    /// Live changes from now on. Subscribe before reading history so nothing falls in between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    fn reader(&self) -> Result<PooledReader<'_>, StoreError> {
        let conn = match lock(&self.readers).pop() {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        Ok(PooledReader {
            store: self,
            conn: Some(conn),
        })
    }

    /// One object, or `None`.
    pub fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        if self.is_volatile(resource) {
            let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
            return Ok(lock(&self.volatile)
                .objects
                .get(&key)
                .map(|object| (**object).clone()));
        }
        let reader = self.reader()?;
        read_current(reader.conn(), self.keys.as_ref(), resource, namespace, name)
    }

    /// Objects of `resource` (in `namespace`, or all namespaces when `None`) that pass `filter`,
    /// starting after `after`, at most `limit` of them (0 = no limit).
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<ListPage, StoreError> {
        let (items, revision, next) =
            self.scan(resource, namespace, after, limit, |ns, name, data| {
                let object = parse(resource, ns, name, &data)?;
                Ok(filter(&object).then_some(object))
            })?;
        Ok(ListPage {
            items,
            revision,
            next,
        })
    }

    /// Like [`Store::list`], but hands back the stored JSON documents without re-encoding them,
    /// parsing only when there is a filter: listing is the hot path of every client.
    pub fn list_raw(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<RawListPage, StoreError> {
        let (items, revision, next) =
            self.scan(resource, namespace, after, limit, |ns, name, data| {
                if let Some(filter) = filter {
                    if !filter(&parse(resource, ns, name, &data)?) {
                        return Ok(None);
                    }
                }
                Ok(Some(data.into_owned()))
            })?;
        Ok(RawListPage {
            items,
            revision,
            next,
        })
    }

    /// Walks the objects of a resource in (namespace, name) order, keeping what `take` returns,
    /// and notes where the next page starts if `limit` cuts the walk short.
    fn scan<T>(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
        mut take: impl FnMut(&str, &str, Cow<'_, [u8]>) -> Result<Option<T>, StoreError>,
    ) -> Result<ScanResult<T>, StoreError> {
        let mut items = Vec::new();
        let mut last: Option<(String, String)> = None;
        let mut next = None;
        let mut offer = |ns: &str, name: &str, data: Cow<'_, [u8]>| -> Result<bool, StoreError> {
            let Some(item) = take(ns, name, data)? else {
                return Ok(true);
            };
            if limit > 0 && items.len() == limit {
                // Only report a continuation when something after the page matches.
                next = last.take();
                return Ok(false);
            }
            items.push(item);
            last = Some((ns.to_owned(), name.to_owned()));
            Ok(true)
        };
        if self.is_volatile(resource) {
            let state = lock(&self.volatile);
            for ((res, ns, name), object) in state.objects.iter() {
                if res != resource || namespace.is_some_and(|wanted| wanted != ns) {
                    continue;
                }
                if after.is_some_and(|after| (ns.as_str(), name.as_str()) <= after) {
                    continue;
                }
                let data = serde_json::to_vec(&**object).unwrap_or_default();
                if !offer(ns, name, Cow::Owned(data))? {
                    break;
                }
            }
            return Ok((items, self.current_revision(), next));
        }
        let mut reader = self.reader()?;
        let tx = reader.conn_mut().transaction().map_err(sql("begin read"))?;
        let revision: i64 = tx
            .query_row(
                "SELECT coalesce(max(revision), 0) FROM revisions",
                [],
                |row| row.get(0),
            )
            .map_err(sql("read revision"))?;
        let (after_ns, after_name) = after.unwrap_or(("", ""));
        let has_after = after.is_some();
        let mut statement = tx
            .prepare_cached(
                "SELECT o.namespace, o.name, r.data, r.revision FROM objects o
                 JOIN revisions r ON r.revision = o.revision
                 WHERE o.resource = ?1
                   AND (?2 IS NULL OR o.namespace = ?2)
                   AND (?3 = 0 OR (o.namespace, o.name) > (?4, ?5))
                 ORDER BY o.namespace, o.name",
            )
            .map_err(sql("list"))?;
        let mut rows = statement
            .query(params![
                resource, namespace, has_after, after_ns, after_name
            ])
            .map_err(sql("list"))?;
        while let Some(row) = rows.next().map_err(sql("list"))? {
            let ns = row
                .get_ref(0)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(sql("list"))?;
            let name = row
                .get_ref(1)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(sql("list"))?;
            let data = row
                .get_ref(2)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(sql("list"))?;
            let row_revision: i64 = row.get(3).map_err(sql("list"))?;
            let place = Place {
                resource,
                namespace: ns,
                name,
                revision: row_revision as u64,
            };
            let data = open_row(self.keys.as_ref(), &place, data)?;
            if !offer(ns, name, data)? {
                break;
            }
        }
        Ok((items, revision as u64, next))
    }

    /// Stores a new object; fails if one with that name exists. Returns it with its
    /// `resourceVersion` set.
    pub fn create(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, StoreError> {
        if self.is_volatile(resource) {
            let mut state = lock(&self.volatile);
            let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
            if state.objects.contains_key(&key) {
                return Err(already_exists(resource, namespace, name));
            }
            return Ok(self.write_volatile(&mut state, key, EventType::Added, object, None));
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin write"))?;
        if object_exists(&tx, resource, namespace, name)? {
            return Err(already_exists(resource, namespace, name));
        }
        self.commit_durable(
            tx,
            (resource, namespace, name),
            EventType::Added,
            object,
            None,
        )
    }

    /// Atomically replaces an object with what `change` makes of it. `change` sees the current
    /// object and may refuse with its own error; if it returns an object equal to the current one
    /// (ignoring `resourceVersion`), nothing is written, as upstream treats no-op updates.
    pub fn update<E: From<StoreError>>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&Value) -> Result<Value, E>,
    ) -> Result<Value, E> {
        if self.is_volatile(resource) {
            let mut state = lock(&self.volatile);
            let (key, current) = state.current(resource, namespace, name)?;
            let updated = change(&current)?;
            if same_ignoring_version(&current, &updated) {
                return Ok((*current).clone());
            }
            return Ok(self.write_volatile(
                &mut state,
                key,
                EventType::Modified,
                updated,
                Some(current),
            ));
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin write"))?;
        let current = read_current(&tx, self.keys.as_ref(), resource, namespace, name)?
            .ok_or_else(|| not_found(resource, namespace, name))?;
        let updated = change(&current)?;
        if same_ignoring_version(&current, &updated) {
            return Ok(current);
        }
        Ok(self.commit_durable(
            tx,
            (resource, namespace, name),
            EventType::Modified,
            updated,
            Some(current),
        )?)
    }

    /// Removes an object after `check` accepts its current state. Returns its last state, with
    /// the deletion's revision as `resourceVersion`.
    pub fn delete<E: From<StoreError>>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Value) -> Result<(), E>,
    ) -> Result<Value, E> {
        if self.is_volatile(resource) {
            let mut state = lock(&self.volatile);
            let (key, current) = state.current(resource, namespace, name)?;
            check(&current)?;
            return Ok(self.write_volatile(
                &mut state,
                key,
                EventType::Deleted,
                (*current).clone(),
                None,
            ));
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin write"))?;
        let current = read_current(&tx, self.keys.as_ref(), resource, namespace, name)?
            .ok_or_else(|| not_found(resource, namespace, name))?;
        check(&current)?;
        Ok(self.commit_durable(
            tx,
            (resource, namespace, name),
            EventType::Deleted,
            current,
            None,
        )?)
    }

    fn commit_durable(
        &self,
        tx: rusqlite::Transaction<'_>,
        key: (&str, &str, &str),
        event: EventType,
        object: Value,
        previous: Option<Value>,
    ) -> Result<Value, StoreError> {
        let change = self.stage(&tx, key, event, object, previous)?;
        tx.commit().map_err(sql("commit"))?;
        let object = change.object.clone();
        self.publish(Arc::new(change));
        Ok(Arc::unwrap_or_clone(object))
    }

    /// Writes one change into an open transaction; the caller commits, then broadcasts.
    fn stage(
        &self,
        tx: &rusqlite::Transaction<'_>,
        (resource, namespace, name): (&str, &str, &str),
        event: EventType,
        mut object: Value,
        previous: Option<Value>,
    ) -> Result<Change, StoreError> {
        // Durable writes take their revision under the writer lock, so they commit and broadcast
        // in revision order; a failed commit leaves a harmless gap.
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        set_resource_version(&mut object, revision);
        let data = serde_json::to_vec(&object).map_err(|source| StoreError::Corrupt {
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
        let data = match &self.keys {
            Some(keys) if encryption::is_encrypted(resource) => {
                let place = Place {
                    resource,
                    namespace,
                    name,
                    revision,
                };
                keys.encrypt(&place, &data)?
            }
            _ => data,
        };
        tx.execute(
            "INSERT INTO revisions (revision, resource, namespace, name, event, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                revision as i64,
                resource,
                namespace,
                name,
                event.code(),
                data
            ],
        )
        .map_err(sql("write"))?;
        if event == EventType::Deleted {
            tx.execute(
                "DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
                params![resource, namespace, name],
            )
            .map_err(sql("write"))?;
        } else {
            tx.execute(
                "INSERT INTO objects (resource, namespace, name, revision) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (resource, namespace, name) DO UPDATE SET revision = excluded.revision",
                params![resource, namespace, name, revision as i64],
            )
            .map_err(sql("write"))?;
        }
        Ok(Change {
            revision,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            event,
            object: Arc::new(object),
            previous: previous.map(Arc::new),
        })
    }

    /// Like [`Store::create`] for several objects of one durable resource, committed in one
    /// transaction. Each object gets its own result; the outer error means nothing was written.
    pub fn create_many(
        &self,
        resource: &str,
        objects: Vec<(String, String, Value)>,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        assert!(
            !self.is_volatile(resource),
            "create_many is for durable resources"
        );
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin write"))?;
        let mut results = Vec::with_capacity(objects.len());
        let mut staged = Vec::new();
        for (namespace, name, object) in objects {
            if object_exists(&tx, resource, &namespace, &name)? {
                results.push(Err(already_exists(resource, &namespace, &name)));
                continue;
            }
            let change = self.stage(
                &tx,
                (resource, &namespace, &name),
                EventType::Added,
                object,
                None,
            )?;
            results.push(Ok((*change.object).clone()));
            staged.push(change);
        }
        tx.commit().map_err(sql("commit"))?;
        for change in staged {
            self.publish(Arc::new(change));
        }
        Ok(results)
    }

    /// Like [`Store::update`] for several objects of one durable resource, committed in one
    /// transaction (one disk flush): the scheduler binds a batch of pods this way. Each object
    /// gets its own result; the outer error means nothing was written.
    pub fn update_many<E: From<StoreError>>(
        &self,
        resource: &str,
        keys: &[(String, String)],
        mut change: impl FnMut(&Value) -> Result<Value, E>,
    ) -> Result<Vec<Result<Value, E>>, E> {
        assert!(
            !self.is_volatile(resource),
            "update_many is for durable resources"
        );
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin write"))?;
        let mut results = Vec::with_capacity(keys.len());
        let mut staged = Vec::new();
        for (namespace, name) in keys {
            let Some(current) = read_current(&tx, self.keys.as_ref(), resource, namespace, name)?
            else {
                results.push(Err(not_found(resource, namespace, name).into()));
                continue;
            };
            let updated = match change(&current) {
                Ok(updated) => updated,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if same_ignoring_version(&current, &updated) {
                results.push(Ok(current));
                continue;
            }
            let staged_change = self.stage(
                &tx,
                (resource, namespace, name),
                EventType::Modified,
                updated,
                Some(current),
            )?;
            results.push(Ok((*staged_change.object).clone()));
            staged.push(staged_change);
        }
        tx.commit().map_err(sql("commit"))?;
        for change in staged {
            self.publish(Arc::new(change));
        }
        Ok(results)
    }

    fn write_volatile(
        &self,
        state: &mut VolatileState,
        key: Key,
        event: EventType,
        mut object: Value,
        previous: Option<Arc<Value>>,
    ) -> Value {
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        if revision + REVISION_BLOCK / 2 >= self.reserved.load(Ordering::SeqCst) {
            if let Err(error) = self.reserve_revisions() {
                tracing::error!(error = %error, "cannot reserve revisions for volatile objects");
            }
        }
        set_resource_version(&mut object, revision);
        let object = Arc::new(object);
        let is_event = key.0 == EVENTS;
        if event == EventType::Deleted {
            if state.objects.remove(&key).is_some() && is_event {
                state.event_count -= 1;
            }
        } else if state.objects.insert(key.clone(), object.clone()).is_none() && is_event {
            state.event_count += 1;
            state.event_order.push_back(key.clone());
        }
        state.dirty = true;
        let change = Arc::new(Change {
            revision,
            resource: key.0,
            namespace: key.1,
            name: key.2,
            event,
            object: object.clone(),
            previous,
        });
        state.history.push_back(change.clone());
        while state.history.len() > VOLATILE_HISTORY {
            if let Some(dropped) = state.history.pop_front() {
                state.floor = dropped.revision;
            }
        }
        self.publish(change);
        while is_event && state.event_count > MAX_EVENTS {
            let Some(oldest) = state.event_order.pop_front() else {
                break;
            };
            if let Some(gone) = state.objects.get(&oldest).cloned() {
                self.write_volatile(state, oldest, EventType::Deleted, (*gone).clone(), None);
            }
        }
        if state.event_order.len() > 2 * MAX_EVENTS {
            // Drop keys of events that went another way (expired, deleted).
            let VolatileState {
                objects,
                event_order,
                ..
            } = state;
            event_order.retain(|key| objects.contains_key(key));
        }
        Arc::unwrap_or_clone(object)
    }

    /// Changes to `resource` after `revision`, oldest first, for a watch to replay.
    pub fn changes_since(&self, resource: &str, revision: u64) -> Result<Vec<Change>, StoreError> {
        if self.is_volatile(resource) {
            let state = lock(&self.volatile);
            if revision < state.floor {
                return Err(StoreError::Expired {
                    requested: revision,
                    oldest: state.floor,
                });
            }
            return Ok(state
                .history
                .iter()
                .filter(|change| change.revision > revision && change.resource == resource)
                .map(|change| (**change).clone())
                .collect());
        }
        let compacted = self.compacted.load(Ordering::SeqCst);
        if revision < compacted {
            return Err(StoreError::Expired {
                requested: revision,
                oldest: compacted,
            });
        }
        let reader = self.reader()?;
        let mut statement = reader
            .conn()
            .prepare_cached(
                "SELECT revision, namespace, name, event, data FROM revisions
                 WHERE resource = ?1 AND revision > ?2 ORDER BY revision",
            )
            .map_err(sql("read history"))?;
        let mut rows = statement
            .query(params![resource, revision as i64])
            .map_err(sql("read history"))?;
        let mut changes = Vec::new();
        while let Some(row) = rows.next().map_err(sql("read history"))? {
            let namespace: String = row.get(1).map_err(sql("read history"))?;
            let name: String = row.get(2).map_err(sql("read history"))?;
            let data: Vec<u8> = row.get(4).map_err(sql("read history"))?;
            let revision = row.get::<_, i64>(0).map_err(sql("read history"))? as u64;
            let place = Place {
                resource,
                namespace: &namespace,
                name: &name,
                revision,
            };
            let data = open_row(self.keys.as_ref(), &place, &data)?;
            let object = parse(resource, &namespace, &name, &data)?;
            changes.push(Change {
                revision,
                resource: resource.to_owned(),
                namespace,
                name,
                event: EventType::from_code(row.get(3).map_err(sql("read history"))?),
                object: Arc::new(object),
                previous: None,
            });
        }
        Ok(changes)
    }

    /// Drops history older than the retained window and returns its pages to the file.
    ///
    /// The floor never passes the newest durable revision: a list of a durable kind reports
    /// that revision, and a client must be able to watch from it. Without the cap, a busy
    /// stretch of volatile changes (leases, events) alone would push the floor past it and
    /// every list-then-watch would end in 410 Gone until the next durable write.
    pub fn compact(&self) -> Result<(), StoreError> {
        let window_floor = self
            .current_revision()
            .saturating_sub(self.history_revisions);
        if window_floor <= self.compacted.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin compaction"))?;
        let newest_durable: i64 = tx
            .query_row(
                "SELECT coalesce(max(revision), 0) FROM revisions",
                [],
                |row| row.get(0),
            )
            .map_err(sql("compaction"))?;
        let floor = window_floor.min(newest_durable as u64);
        if floor <= self.compacted.load(Ordering::SeqCst) {
            return Ok(());
        }
        tx.execute(
            "DELETE FROM revisions WHERE revision <= ?1
             AND revision NOT IN (SELECT revision FROM objects)",
            [floor as i64],
        )
        .map_err(sql("compaction"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('compacted_revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [floor as i64],
        )
        .map_err(sql("compaction"))?;
        tx.commit().map_err(sql("compaction"))?;
        self.compacted.store(floor, Ordering::SeqCst);
        conn.execute_batch("PRAGMA incremental_vacuum(256);")
            .map_err(sql("vacuum"))?;
        Ok(())
    }

    /// Writes volatile objects to the database if they changed since the last checkpoint, and
    /// reserves the next block of revisions if volatile writes are close to the reserved mark.
    pub fn checkpoint_volatile(&self) -> Result<(), StoreError> {
        self.reserve_revisions()?;
        let snapshot: Vec<(Key, Arc<Value>)> = {
            let mut state = lock(&self.volatile);
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state
                .objects
                .iter()
                .map(|(key, object)| (key.clone(), object.clone()))
                .collect()
        };
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(sql("begin checkpoint"))?;
        tx.execute("DELETE FROM volatile_objects", [])
            .map_err(sql("checkpoint"))?;
        for ((resource, namespace, name), object) in snapshot {
            let data = serde_json::to_vec(&*object).unwrap_or_default();
            tx.execute(
                "INSERT INTO volatile_objects (resource, namespace, name, data) VALUES (?1, ?2, ?3, ?4)",
                params![resource, namespace, name, data],
            )
            .map_err(sql("checkpoint"))?;
        }
        tx.commit().map_err(sql("checkpoint"))
    }

    /// Keeps the durable reserved mark ahead of the in-memory counter, so a restart never hands
    /// out a revision that volatile objects already used.
    pub fn reserve_revisions(&self) -> Result<(), StoreError> {
        let current = self.current_revision();
        if current + REVISION_BLOCK / 2 < self.reserved.load(Ordering::SeqCst) {
            return Ok(());
        }
        let reserved = current + REVISION_BLOCK;
        let conn = lock(&self.writer);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('reserved_revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [reserved as i64],
        )
        .map_err(sql("reserve revisions"))?;
        self.reserved.store(reserved, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the volatile objects of `resource` that `expired` picks, as deletions watches
    /// see (events expire like upstream's one-hour TTL).
    pub fn expire_volatile(&self, resource: &str, expired: &dyn Fn(&Value) -> bool) -> Vec<Value> {
        let mut state = lock(&self.volatile);
        let keys: Vec<Key> = state
            .objects
            .iter()
            .filter(|((res, _, _), object)| res == resource && expired(object))
            .map(|(key, _)| key.clone())
            .collect();
        let mut removed = Vec::new();
        for key in keys {
            if let Some(object) = state.objects.get(&key).cloned() {
                removed.push(self.write_volatile(
                    &mut state,
                    key,
                    EventType::Deleted,
                    (*object).clone(),
                    None,
                ));
            }
        }
        removed
    }
}

struct PooledReader<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl PooledReader<'_> {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }
    fn conn_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = lock(&self.store.readers);
            // A few idle readers are enough on two cores; more would only hold page caches.
            if pool.len() < 4 {
                pool.push(conn);
            }
        }
    }
}

fn parse(resource: &str, namespace: &str, name: &str, data: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(data).map_err(|source| StoreError::Corrupt {
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}

fn read_current(
    conn: &Connection,
    keys: Option<&Keyring>,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT r.revision, r.data FROM objects o JOIN revisions r ON r.revision = o.revision
             WHERE o.resource = ?1 AND o.namespace = ?2 AND o.name = ?3",
            params![resource, namespace, name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sql("read"))?;
    let Some((revision, data)) = row else {
        return Ok(None);
    };
    let place = Place {
        resource,
        namespace,
        name,
        revision: revision as u64,
    };
    let data = open_row(keys, &place, &data)?;
    parse(resource, namespace, name, &data).map(Some)
}

fn same_ignoring_version(current: &Value, updated: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        v
    };
    strip(current) == strip(updated)
}

fn already_exists(resource: &str, namespace: &str, name: &str) -> StoreError {
    StoreError::AlreadyExists {
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn not_found(resource: &str, namespace: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &dir.path().join("store.db"),
            &["coordination.k8s.io/leases"],
            5,
        )
        .unwrap()
    }

    /// Creates lease n1 (volatile), then renews it `times` times.
    fn create_and_renew_lease(store: &Store, times: usize) {
        let lease = json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}});
        store
            .create("coordination.k8s.io/leases", "kube-node-lease", "n1", lease)
            .unwrap();
        renew_lease(store, times);
    }

    fn renew_lease(store: &Store, times: usize) {
        for i in 0..times {
            store
                .update::<StoreError>("coordination.k8s.io/leases", "kube-node-lease", "n1", |l| {
                    let mut l = l.clone();
                    l["spec"] = json!({"renewTime": i});
                    Ok(l)
                })
                .unwrap();
        }
    }

    #[test]
    fn create_get_update_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let created = store.create("core/pods", "default", "a", pod("a")).unwrap();
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            store.get("core/pods", "default", "a").unwrap().unwrap(),
            created
        );
        assert!(matches!(
            store.create("core/pods", "default", "a", pod("a")),
            Err(StoreError::AlreadyExists { .. })
        ));
        let updated = store
            .update::<StoreError>("core/pods", "default", "a", |current| {
                let mut next = current.clone();
                next["spec"] = json!({"nodeName": "n1"});
                Ok(next)
            })
            .unwrap();
        assert_ne!(updated["metadata"]["resourceVersion"].as_str().unwrap(), rv);
        let deleted = store
            .delete::<StoreError>("core/pods", "default", "a", |_| Ok(()))
            .unwrap();
        assert_eq!(deleted["spec"]["nodeName"], "n1");
        assert!(store.get("core/pods", "default", "a").unwrap().is_none());
    }

    #[test]
    fn no_op_update_keeps_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let created = store.create("core/pods", "default", "a", pod("a")).unwrap();
        let same = store
            .update::<StoreError>("core/pods", "default", "a", |current| Ok(current.clone()))
            .unwrap();
        assert_eq!(same, created);
    }

    #[test]
    fn list_pages_in_name_order_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for name in ["c", "a", "b", "d"] {
            store
                .create("core/pods", "default", name, pod(name))
                .unwrap();
        }
        let not_d = |o: &Value| o["metadata"]["name"] != "d";
        let first = store.list("core/pods", None, None, 2, &not_d).unwrap();
        let names: Vec<_> = first
            .items
            .iter()
            .map(|o| o["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("a"), json!("b")]);
        assert_eq!(first.next, Some(("default".into(), "b".into())));
        let rest = store
            .list(
                "core/pods",
                Some("default"),
                Some(("default", "b")),
                2,
                &not_d,
            )
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.next, None);
    }

    #[test]
    fn history_replays_and_expires_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let start = store.current_revision();
        for i in 0..10 {
            store
                .create(
                    "core/pods",
                    "default",
                    &format!("p{i}"),
                    pod(&format!("p{i}")),
                )
                .unwrap();
        }
        store
            .delete::<StoreError>("core/pods", "default", "p0", |_| Ok(()))
            .unwrap();
        let changes = store.changes_since("core/pods", start).unwrap();
        assert_eq!(changes.len(), 11);
        assert_eq!(changes.last().unwrap().event, EventType::Deleted);
        store.compact().unwrap();
        assert!(matches!(
            store.changes_since("core/pods", start),
            Err(StoreError::Expired { .. })
        ));
        // Live objects survive compaction even when their version is older than the window.
        assert!(store.get("core/pods", "default", "p1").unwrap().is_some());
        let recent = store
            .changes_since("core/pods", store.current_revision() - 2)
            .unwrap();
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn a_durable_list_can_always_be_watched_despite_volatile_churn() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir); // keeps 5 revisions
        store
            .create("core/pods", "default", "p0", pod("p0"))
            .unwrap();
        create_and_renew_lease(&store, 20);
        store.compact().unwrap();
        let list = store.list_raw("core/pods", None, None, 0, None).unwrap();
        assert!(list.revision < store.current_revision() - 5);
        assert_eq!(
            store
                .changes_since("core/pods", list.revision)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn durable_writes_and_revisions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let lease = json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}});
        let (revision, lease_revision) = {
            let store = open(&dir);
            store.create("core/pods", "default", "a", pod("a")).unwrap();
            let lease = store
                .create("coordination.k8s.io/leases", "kube-node-lease", "n1", lease)
                .unwrap();
            store.checkpoint_volatile().unwrap();
            (
                store.current_revision(),
                lease["metadata"]["resourceVersion"].clone(),
            )
        };
        let store = open(&dir);
        assert!(store.get("core/pods", "default", "a").unwrap().is_some());
        let lease = store
            .get("coordination.k8s.io/leases", "kube-node-lease", "n1")
            .unwrap()
            .unwrap();
        assert_eq!(lease["metadata"]["resourceVersion"], lease_revision);
        assert!(store.current_revision() >= revision);
        let created = store.create("core/pods", "default", "b", pod("b")).unwrap();
        let new_rv: u64 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(new_rv > revision);
    }

    #[test]
    fn file_stays_bounded_under_steady_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.db"), &[], 50).unwrap();
        let blob = "x".repeat(4096);
        store
            .create(
                "core/configmaps",
                "default",
                "c",
                json!({"metadata": {"name": "c"}}),
            )
            .unwrap();
        let update = |i: usize| {
            store
                .update::<StoreError>("core/configmaps", "default", "c", |current| {
                    let mut next = current.clone();
                    next["data"] = json!({"i": i.to_string(), "blob": blob});
                    Ok(next)
                })
                .unwrap();
        };
        let size = || {
            let conn = Connection::open(dir.path().join("store.db")).unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
            std::fs::metadata(dir.path().join("store.db"))
                .unwrap()
                .len()
        };
        for i in 0..300 {
            update(i);
            if i % 50 == 0 {
                store.compact().unwrap();
            }
        }
        store.compact().unwrap();
        let after_first_round = size();
        for i in 300..1200 {
            update(i);
            if i % 50 == 0 {
                store.compact().unwrap();
            }
        }
        store.compact().unwrap();
        let after_second_round = size();
        // Four times as many updates, yet the file does not grow beyond what the retained
        // window needs (50 revisions of a 4 KiB object, plus slack for free pages).
        assert!(
            after_second_round <= after_first_round + 64 * 1024,
            "{after_first_round} -> {after_second_round}"
        );
        assert!(after_second_round < 1024 * 1024, "{after_second_round}");
    }

    #[test]
    fn volatile_writes_do_not_touch_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.reserve_revisions().unwrap();
        create_and_renew_lease(&store, 0);
        let wal = dir.path().join("store.db-wal");
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        renew_lease(&store, 100);
        let after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(before, after);
        let changes = store
            .changes_since("coordination.k8s.io/leases", 1)
            .unwrap();
        assert_eq!(changes.len(), 101);
    }

    mod encryption_at_rest {
        use super::*;
        use base64::Engine;

        const PASSWORD: &str = "correct-horse-battery-staple";

        /// A keyring from (name, fill byte) pairs, the first encrypting.
        fn keyring(keys: &[(&str, u8)]) -> Keyring {
            let text: String = keys
                .iter()
                .map(|(name, byte)| {
                    let key = base64::engine::general_purpose::STANDARD.encode([*byte; 32]);
                    format!("{name}:{key}\n")
                })
                .collect();
            Keyring::parse(&text, Path::new("keys")).unwrap()
        }

        fn open_with(dir: &tempfile::TempDir, keys: Option<Keyring>) -> Store {
            let path = dir.path().join("store.db");
            match keys {
                Some(keys) => Store::open_encrypted(&path, &[], 1000, keys).unwrap(),
                None => Store::open(&path, &[], 1000).unwrap(),
            }
        }

        fn secret(name: &str, password: &str) -> Value {
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": "default"},
                   "data": {"password": base64::engine::general_purpose::STANDARD.encode(password)}})
        }

        fn password_of(object: &Value) -> String {
            let encoded = object["data"]["password"].as_str().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        }

        fn set_password(store: &Store, name: &str, password: &str) {
            store
                .update::<StoreError>("core/secrets", "default", name, |current| {
                    let mut next = current.clone();
                    next["data"] = secret(name, password)["data"].clone();
                    Ok(next)
                })
                .unwrap();
        }

        /// Whether any file of the store holds `needle` or its base64.
        fn on_disk(dir: &tempfile::TempDir, needle: &str) -> bool {
            let encoded = base64::engine::general_purpose::STANDARD.encode(needle);
            ["store.db", "store.db-wal"].iter().any(|file| {
                let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
                [needle.as_bytes(), encoded.as_bytes()]
                    .iter()
                    .any(|n| bytes.windows(n.len()).any(|w| w == *n))
            })
        }

        /// The stored rows of a resource, (revision, data), read behind the store's back.
        fn rows(dir: &tempfile::TempDir, name: &str) -> Vec<(i64, Vec<u8>)> {
            let conn = Connection::open(dir.path().join("store.db")).unwrap();
            let mut statement = conn
                .prepare("SELECT revision, data FROM revisions WHERE name = ?1 ORDER BY revision")
                .unwrap();
            let rows = statement
                .query_map([name], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            rows.map(Result::unwrap).collect()
        }

        #[test]
        fn secrets_round_trip_sealed_and_other_kinds_stay_plain() {
            let dir = tempfile::tempdir().unwrap();
            let store = open_with(&dir, Some(keyring(&[("k1", 1)])));
            let start = store.current_revision();
            store
                .create("core/secrets", "default", "s", secret("s", PASSWORD))
                .unwrap();
            set_password(&store, "s", "second-password");
            store
                .create(
                    "core/configmaps",
                    "default",
                    "c",
                    json!({"metadata": {"name": "c"}}),
                )
                .unwrap();
            let got = store.get("core/secrets", "default", "s").unwrap().unwrap();
            assert_eq!(password_of(&got), "second-password");
            let listed = store
                .list("core/secrets", None, None, 0, &|_| true)
                .unwrap();
            assert_eq!(password_of(&listed.items[0]), "second-password");
            let raw = store.list_raw("core/secrets", None, None, 0, None).unwrap();
            assert_eq!(
                password_of(&serde_json::from_slice(&raw.items[0]).unwrap()),
                "second-password"
            );
            let history = store.changes_since("core/secrets", start).unwrap();
            let passwords: Vec<_> = history.iter().map(|c| password_of(&c.object)).collect();
            assert_eq!(passwords, [PASSWORD, "second-password"]);

            for (_, data) in rows(&dir, "s") {
                assert_eq!(encryption::key_of(&data), Some("k1"));
            }
            assert!(rows(&dir, "c")[0].1.starts_with(b"{"));
            assert!(!on_disk(&dir, PASSWORD));
            assert!(!on_disk(&dir, "second-password"));
        }

        #[test]
        fn plaintext_rows_from_before_are_read_then_migrated_and_leave_no_trace() {
            let dir = tempfile::tempdir().unwrap();
            {
                let old = open_with(&dir, None);
                old.create("core/secrets", "default", "s", secret("s", PASSWORD))
                    .unwrap();
                set_password(&old, "s", "second-password");
                old.delete::<StoreError>("core/secrets", "default", "s", |_| Ok(()))
                    .unwrap();
                old.create(
                    "core/secrets",
                    "default",
                    "s",
                    secret("s", "third-password"),
                )
                .unwrap();
            }
            assert!(on_disk(&dir, PASSWORD));
            let store = open_with(&dir, Some(keyring(&[("k1", 1)])));
            // Before the migration, plaintext rows are read as they are.
            let got = store.get("core/secrets", "default", "s").unwrap().unwrap();
            assert_eq!(password_of(&got), "third-password");

            let migration = store.migrate_encryption().unwrap();
            assert_eq!(migration.rewritten, 4);
            assert_eq!(migration.keys_in_use, ["k1"]);
            for (_, data) in rows(&dir, "s") {
                assert_eq!(encryption::key_of(&data), Some("k1"));
            }
            for password in [PASSWORD, "second-password", "third-password"] {
                assert!(!on_disk(&dir, password), "{password} is still on disk");
            }
            let passwords: Vec<_> = store
                .changes_since("core/secrets", 0)
                .unwrap()
                .iter()
                .map(|c| password_of(&c.object))
                .collect();
            assert_eq!(
                passwords,
                [
                    PASSWORD,
                    "second-password",
                    "second-password",
                    "third-password"
                ]
            );
            // Nothing left to do the second time.
            assert_eq!(store.migrate_encryption().unwrap().rewritten, 0);
        }

        #[test]
        fn a_missing_or_wrong_key_is_an_error_naming_it() {
            let dir = tempfile::tempdir().unwrap();
            open_with(&dir, Some(keyring(&[("k1", 1)])))
                .create("core/secrets", "default", "s", secret("s", PASSWORD))
                .unwrap();
            let expect_error = |store: Store, wanted: &str| {
                let error = store.get("core/secrets", "default", "s").unwrap_err();
                let text = error.to_string();
                assert!(text.contains("\"k1\"") && text.contains(wanted), "{text}");
                assert!(text.contains("core/secrets default/s"), "{text}");
                let error = store
                    .list("core/secrets", None, None, 0, &|_| true)
                    .unwrap_err();
                assert!(matches!(error, StoreError::Encryption(_)), "{error}");
                if store.keys.is_some() {
                    let error = store.migrate_encryption().unwrap_err();
                    assert!(matches!(error, StoreError::Encryption(_)), "{error}");
                }
            };
            expect_error(open_with(&dir, None), "does not list");
            expect_error(
                open_with(&dir, Some(keyring(&[("k2", 2)]))),
                "does not list",
            );
            expect_error(
                open_with(&dir, Some(keyring(&[("k1", 9)]))),
                "does not decrypt",
            );
            // The row is untouched: the right key still reads it.
            let store = open_with(&dir, Some(keyring(&[("k1", 1)])));
            let got = store.get("core/secrets", "default", "s").unwrap().unwrap();
            assert_eq!(password_of(&got), PASSWORD);
        }

        #[test]
        fn rotation_rewrites_every_version_and_the_old_key_can_go() {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = open_with(&dir, Some(keyring(&[("k1", 1)])));
                store
                    .create("core/secrets", "default", "s", secret("s", PASSWORD))
                    .unwrap();
                set_password(&store, "s", "second-password");
            }
            let store = open_with(&dir, Some(keyring(&[("k2", 2), ("k1", 1)])));
            let migration = store.migrate_encryption().unwrap();
            assert_eq!(migration.rewritten, 2);
            assert_eq!(migration.keys_in_use, ["k2"]);
            drop(store);
            let store = open_with(&dir, Some(keyring(&[("k2", 2)])));
            let passwords: Vec<_> = store
                .changes_since("core/secrets", 0)
                .unwrap()
                .iter()
                .map(|c| password_of(&c.object))
                .collect();
            assert_eq!(passwords, [PASSWORD, "second-password"]);
            let got = store.get("core/secrets", "default", "s").unwrap().unwrap();
            assert_eq!(password_of(&got), "second-password");
        }

        #[test]
        fn a_row_moved_to_another_secret_or_revision_does_not_open() {
            let dir = tempfile::tempdir().unwrap();
            let store = open_with(&dir, Some(keyring(&[("k1", 1)])));
            store
                .create("core/secrets", "default", "a", secret("a", PASSWORD))
                .unwrap();
            set_password(&store, "a", "second-password");
            store
                .create("core/secrets", "default", "b", secret("b", "b-password"))
                .unwrap();
            let a = rows(&dir, "a");
            let b = rows(&dir, "b");
            let conn = Connection::open(dir.path().join("store.db")).unwrap();
            let overwrite = |revision: i64, data: &[u8]| {
                conn.execute(
                    "UPDATE revisions SET data = ?1 WHERE revision = ?2",
                    params![data, revision],
                )
                .unwrap();
            };
            // a's current version copied over b's.
            overwrite(b[0].0, &a[1].1);
            let error = store.get("core/secrets", "default", "b").unwrap_err();
            assert!(error.to_string().contains("does not decrypt"), "{error}");
            // a's first version copied over its current one: a rollback, refused too.
            overwrite(a[1].0, &a[0].1);
            let error = store.get("core/secrets", "default", "a").unwrap_err();
            assert!(error.to_string().contains("does not decrypt"), "{error}");
            // Put back, both read again.
            overwrite(b[0].0, &b[0].1);
            overwrite(a[1].0, &a[1].1);
            assert!(store.get("core/secrets", "default", "a").unwrap().is_some());
            assert!(store.get("core/secrets", "default", "b").unwrap().is_some());
        }

        #[test]
        fn secrets_are_never_volatile() {
            for resource in crate::resources::volatile_storage_keys() {
                assert!(!encryption::is_encrypted(&resource), "{resource}");
            }
        }
    }
}
