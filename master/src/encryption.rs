//! Secrets encrypted at rest: the keys, the envelope of each stored row, and who may rewrite them.
//!
//! As kube-apiserver's `aesgcm` provider ("Encrypting Confidential Data at Rest"), every stored
//! version of a Secret is sealed with AES-256-GCM under a random 96-bit nonce and written as
//!
//! ```text
//!   bramble:enc:aesgcm:v1:<key name>:<nonce, 12 bytes><ciphertext><tag, 16 bytes>
//! ```
//!
//! The associated data binds the ciphertext to its place: the storage key, namespace, name and
//! revision of its row. A row copied onto another secret, or an older version copied over a newer
//! one, fails to open instead of being served. Upstream binds to the etcd key only; bramble adds
//! the revision because its history rows live side by side in one table. That difference is why
//! the prefix says `bramble:` rather than upstream's `k8s:enc:aesgcm:v1:`: the bytes are not
//! interchangeable with an etcd dump, and claiming the same prefix would suggest they are.
//!
//! Rows without the prefix are plaintext written before encryption existed, and are read as they
//! are (upstream's `identity` provider listed last). A row naming a key that is not listed, or
//! that does not open, is an error naming the key and the object, never an empty secret.
//!
//! # Keys
//!
//! `DIR/pki/encryption-keys` (mode 0600) lists `name:base64(32 bytes)` lines; the first key
//! encrypts, all of them decrypt, as the key list of upstream's EncryptionConfiguration. It is
//! created on the master's first start. It lives in the data directory on the Pi's root
//! partition, never on the card's FAT partition beside `bramble.toml` (which any laptop mounts).
//! What this protects against: copies of the database (backups, support bundles, a card image
//! with the key file left out) and the FAT partition. It does not protect against someone who
//! has the whole root file system, as upstream's local-key providers do not: the key must be
//! readable by the process that serves secrets.
//!
//! # Migration and rotation
//!
//! At every start, under [`FileLock::data_dir`], the master rewrites every stored version of every
//! secret not sealed by the first key (plaintext from an older bramble, or an older key) in one
//! transaction, then drops from the key file the keys no row uses any more, vacuums the database
//! and truncates its WAL, so freed pages and old WAL frames do not keep old plaintext.
//!
//! `bramble encryption-key rotate --data-dir DIR` puts a new key first in the file. It never
//! rewrites rows behind a running master's back: if a master holds the data directory's lock,
//! the command only adds the key, the running master keeps sealing with the key it started with
//! (still listed, so still readable), and the rewrite happens at the master's next start. If no
//! master runs, the command takes the lock and rewrites at once. The key file is changed in two
//! atomic steps around the committed rewrite (new key added before, unused keys dropped after),
//! so a power cut at any point leaves every row readable by the keys on disk, and an
//! acknowledged secret is never lost. Dropping old keys automatically means a database backup
//! from before a rotation needs the key file of its time; keep them together.
//!
//! # Why ring
//!
//! `ring::aead` is already linked (rustls and rcgen use it) and maintained; adding RustCrypto's
//! `aes-gcm` would put a second AES implementation in a binary meant for a 1 GB Pi. ring uses
//! the ARMv8 crypto extensions where the CPU has them (Pi 5) and a constant-time vector
//! implementation where it does not (Pi 4): either way a few-kilobyte secret seals in
//! microseconds, far below one SQLite commit.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The storage keys whose objects are encrypted at rest.
pub const ENCRYPTED_RESOURCES: &[&str] = &["core/secrets"];
/// What every encrypted row starts with, followed by the key's name and a colon.
const PREFIX: &[u8] = b"bramble:enc:aesgcm:v1:";
/// Length of an AES-256 key.
const KEY_LEN: usize = 32;
/// Length of the GCM tag after the ciphertext.
const TAG_LEN: usize = 16;

/// Whether objects of `resource` are encrypted at rest.
pub fn is_encrypted(resource: &str) -> bool {
    ENCRYPTED_RESOURCES.contains(&resource)
}

/// The key file in a data directory.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("pki").join("encryption-keys")
}

/// Errors of encryption at rest.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// A row names a key the key file does not list.
    #[error(
        "{resource} {namespace}/{name} (revision {revision}) is encrypted with key {key:?}, \
         which the encryption key file does not list"
    )]
    UnknownKey {
        /// The key the row names.
        key: String,
        /// Storage key of the resource.
        resource: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The row's revision.
        revision: u64,
    },
    /// A row does not open with the key it names: a different key of that name, or the row was
    /// altered or moved to another object or revision.
    #[error(
        "{resource} {namespace}/{name} (revision {revision}) does not decrypt with key {key:?}: \
         the key is not the one it was sealed with, or the row was altered or moved"
    )]
    Undecryptable {
        /// The key the row names.
        key: String,
        /// Storage key of the resource.
        resource: String,
        /// Namespace of the object.
        namespace: String,
        /// Name of the object.
        name: String,
        /// The row's revision.
        revision: u64,
    },
    /// The key file cannot be read or written.
    #[error("cannot access the encryption key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a list of `name:base64` keys.
    #[error("{}, line {line}: {problem}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The system's random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// Another process holds the data directory.
    #[error(
        "another bramble process (a running master, or a key rotation) holds {} ({})",
        data_dir.display(),
        lock.display()
    )]
    Busy {
        /// The data directory.
        data_dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
}

/// Where a stored row belongs; sealed into its ciphertext as associated data.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// Storage key of the resource, e.g. `core/secrets`.
    pub resource: &'a str,
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The revision of the row.
    pub revision: u64,
}

impl Place<'_> {
    /// The associated data: fields separated by NUL, which no storage key, namespace or name
    /// contains, so two different places never give the same bytes.
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "{}\0{}\0{}\0{}",
            self.resource, self.namespace, self.name, self.revision
        )
        .into_bytes()
    }

    fn unknown_key(&self, key: &str) -> EncryptionError {
        EncryptionError::UnknownKey {
            key: key.to_owned(),
            resource: self.resource.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            revision: self.revision,
        }
    }

    fn undecryptable(&self, key: &str) -> EncryptionError {
        EncryptionError::Undecryptable {
            key: key.to_owned(),
            resource: self.resource.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            revision: self.revision,
        }
    }
}

/// One named AES-256-GCM key.
struct NamedKey {
    name: String,
    secret: [u8; KEY_LEN],
    key: LessSafeKey,
}

impl NamedKey {
    fn new(name: String, secret: [u8; KEY_LEN]) -> NamedKey {
        let unbound = UnboundKey::new(&AES_256_GCM, &secret).expect("a 32-byte AES-256 key");
        NamedKey {
            name,
            secret,
            key: LessSafeKey::new(unbound),
        }
    }

    fn generate(random: &SystemRandom) -> Result<NamedKey, EncryptionError> {
        let mut secret = [0u8; KEY_LEN];
        random
            .fill(&mut secret)
            .map_err(|_| EncryptionError::Random)?;
        let mut tag = [0u8; 4];
        random.fill(&mut tag).map_err(|_| EncryptionError::Random)?;
        Ok(NamedKey::new(format!("key-{}", hex::encode(tag)), secret))
    }
}

/// The keys: the first encrypts, all decrypt.
pub struct Keyring {
    keys: Vec<NamedKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: key material never reaches a log.
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.name))
            .finish()
    }
}

impl Keyring {
    /// A keyring with one new random key.
    pub fn generate() -> Result<Keyring, EncryptionError> {
        let random = SystemRandom::new();
        let key = NamedKey::generate(&random)?;
        Ok(Keyring {
            keys: vec![key],
            random,
        })
    }

    /// Reads the key file of `data_dir`, creating it with one new key if it does not exist.
    pub fn load_or_create(data_dir: &Path) -> Result<Keyring, EncryptionError> {
        let path = key_file(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Keyring::parse(&text, &path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let keyring = Keyring::generate()?;
                keyring.save(data_dir)?;
                tracing::info!(file = %path.display(), "created the key that encrypts secrets at rest");
                Ok(keyring)
            }
            Err(source) => Err(EncryptionError::Io { path, source }),
        }
    }

    /// Parses a key file: `name:base64` lines, `#` comments and blank lines ignored.
    pub fn parse(text: &str, path: &Path) -> Result<Keyring, EncryptionError> {
        let bad = |line: usize, problem: String| EncryptionError::BadKeyFile {
            path: path.to_owned(),
            line,
            problem,
        };
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, encoded)) = line.split_once(':') else {
                return Err(bad(line_number, "expected NAME:BASE64-KEY".into()));
            };
            if !valid_key_name(name) {
                return Err(bad(
                    line_number,
                    format!("key name {name:?} must be letters, digits, '-' or '_'"),
                ));
            }
            if keys.iter().any(|k| k.name == name) {
                return Err(bad(line_number, format!("key {name:?} is listed twice")));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| bad(line_number, format!("key {name:?} is not base64: {e}")))?;
            let secret: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                bad(
                    line_number,
                    format!(
                        "key {name:?} is {} bytes; AES-256 needs {KEY_LEN}",
                        bytes.len()
                    ),
                )
            })?;
            keys.push(NamedKey::new(name.to_owned(), secret));
        }
        if keys.is_empty() {
            return Err(bad(0, "the file lists no key".into()));
        }
        Ok(Keyring {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Writes the key file of `data_dir` (0600, atomically).
    pub fn save(&self, data_dir: &Path) -> Result<(), EncryptionError> {
        let path = key_file(data_dir);
        let io = |source| EncryptionError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut text = String::from(
            "# Keys that encrypt secrets at rest (bramble encryption-key --help).\n\
             # The first encrypts; all decrypt. Keep this file with any copy of store.db.\n",
        );
        for key in &self.keys {
            text.push_str(&key.name);
            text.push(':');
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(key.secret));
            text.push('\n');
        }
        crate::pki::write_private(&path, text.as_bytes()).map_err(|error| match error {
            crate::pki::PkiError::Io { path, source } => EncryptionError::Io { path, source },
            other => EncryptionError::Io {
                path: path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// Puts a new random key first; the others stay listed so existing rows still open.
    pub fn add_new_first(&mut self) -> Result<&str, EncryptionError> {
        let key = NamedKey::generate(&self.random)?;
        self.keys.insert(0, key);
        Ok(&self.keys[0].name)
    }

    /// The name of the key that encrypts.
    pub fn current(&self) -> &str {
        &self.keys[0].name
    }

    /// The names of every key, the current first.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.name.as_str()).collect()
    }

    /// Keeps the first key, `sealing` (the key a running store seals with, which may already be
    /// second if a rotation added one since it started), and the keys `in_use` names.
    pub fn retain_used(&mut self, in_use: &[String], sealing: &str) {
        let first = self.keys[0].name.clone();
        self.keys
            .retain(|k| k.name == first || k.name == sealing || in_use.contains(&k.name));
    }

    /// Seals `plaintext` for `place` under the current key.
    pub fn encrypt(&self, place: &Place<'_>, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut sealed = Vec::with_capacity(
            PREFIX.len() + key.name.len() + 1 + NONCE_LEN + plaintext.len() + TAG_LEN,
        );
        sealed.extend_from_slice(PREFIX);
        sealed.extend_from_slice(key.name.as_bytes());
        sealed.push(b':');
        sealed.extend_from_slice(&nonce);
        let body = sealed.len();
        sealed.extend_from_slice(plaintext);
        let mut in_out = sealed.split_off(body);
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.associated_data()),
                &mut in_out,
            )
            .map_err(|_| EncryptionError::Random)?;
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens a stored row of `place`: sealed rows with the key they name, plaintext as it is.
    pub fn decrypt<'a>(
        &self,
        place: &Place<'_>,
        data: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, EncryptionError> {
        let Some((name, body)) = split_sealed(data) else {
            return Ok(Cow::Borrowed(data));
        };
        let Some(key) = self.keys.iter().find(|k| k.name == name) else {
            return Err(place.unknown_key(name));
        };
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(place.undecryptable(name));
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| place.undecryptable(name))?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = key
            .key
            .open_in_place(nonce, Aad::from(place.associated_data()), &mut in_out)
            .map_err(|_| place.undecryptable(name))?;
        let len = plaintext.len();
        in_out.truncate(len);
        Ok(Cow::Owned(in_out))
    }
}

/// Which key a stored row is sealed with; `None` for plaintext.
pub fn key_of(data: &[u8]) -> Option<&str> {
    split_sealed(data).map(|(name, _)| name)
}

/// Splits a sealed row into its key name and the nonce, ciphertext and tag after it.
fn split_sealed(data: &[u8]) -> Option<(&str, &[u8])> {
    let rest = data.strip_prefix(PREFIX)?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let name = std::str::from_utf8(&rest[..colon]).ok()?;
    Some((name, &rest[colon + 1..]))
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An exclusive advisory lock (`flock`) on a file. The kernel drops it when the process ends,
/// even on `kill -9`, so a crashed master never leaves a stale lock behind.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// `DIR/master.lock`: held by a running master for its whole life, and by
    /// `bramble encryption-key rotate` while it rewrites rows. Fails with
    /// [`EncryptionError::Busy`] if another process holds it.
    pub fn data_dir(data_dir: &Path) -> Result<FileLock, EncryptionError> {
        let path = data_dir.join("master.lock");
        match FileLock::take(&path, libc::LOCK_EX | libc::LOCK_NB)? {
            Some(lock) => Ok(lock),
            None => Err(EncryptionError::Busy {
                data_dir: data_dir.to_owned(),
                lock: path,
            }),
        }
    }

    /// `DIR/pki/encryption-keys.lock`, held briefly around each read-modify-write of the key
    /// file, so a rotation adding a key while a starting master drops unused ones loses neither
    /// change. Waits for the other holder.
    pub fn key_file(data_dir: &Path) -> Result<FileLock, EncryptionError> {
        let path = key_file(data_dir).with_extension("lock");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| EncryptionError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        FileLock::take(&path, libc::LOCK_EX)?.ok_or(EncryptionError::Busy {
            data_dir: data_dir.to_owned(),
            lock: path,
        })
    }

    /// Locks `path` (created if needed); `None` if a non-blocking attempt found it held.
    fn take(path: &Path, operation: libc::c_int) -> Result<Option<FileLock>, EncryptionError> {
        let io = |source| EncryptionError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Some(FileLock { _file: file }));
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(io(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(name: &str, revision: u64) -> Place<'_> {
        Place {
            resource: "core/secrets",
            namespace: "default",
            name,
            revision,
        }
    }

    #[test]
    fn sealed_rows_open_only_at_their_place() {
        let keys = Keyring::generate().unwrap();
        let sealed = keys.encrypt(&place("a", 7), b"{\"data\":1}").unwrap();
        assert!(sealed.starts_with(PREFIX));
        assert_eq!(key_of(&sealed), Some(keys.current()));
        assert_eq!(
            &*keys.decrypt(&place("a", 7), &sealed).unwrap(),
            b"{\"data\":1}"
        );
        for wrong in [place("b", 7), place("a", 8)] {
            let error = keys.decrypt(&wrong, &sealed).unwrap_err();
            assert!(matches!(error, EncryptionError::Undecryptable { .. }));
        }
        // Two seals of the same bytes differ: the nonce is fresh each time.
        assert_ne!(
            sealed,
            keys.encrypt(&place("a", 7), b"{\"data\":1}").unwrap()
        );
        // Plaintext from before encryption is read as it is.
        assert_eq!(&*keys.decrypt(&place("a", 7), b"{}").unwrap(), b"{}");
    }

    #[test]
    fn the_key_file_round_trips_and_refuses_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Keyring::load_or_create(dir.path()).unwrap();
        let first = keys.current().to_owned();
        keys.add_new_first().unwrap();
        keys.save(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(key_file(dir.path()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let again = Keyring::load_or_create(dir.path()).unwrap();
        assert_eq!(again.names(), keys.names());
        assert_eq!(again.names()[1], first);
        let sealed = keys.encrypt(&place("a", 1), b"x").unwrap();
        assert_eq!(&*again.decrypt(&place("a", 1), &sealed).unwrap(), b"x");

        let path = Path::new("keys");
        for (text, problem) in [
            ("", "no key"),
            ("k1", "NAME:BASE64"),
            ("k1:AAAA", "needs 32"),
            ("k.1:AAAA", "key name"),
            ("k1:!!", "not base64"),
        ] {
            let error = Keyring::parse(text, path).unwrap_err().to_string();
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_second_lock_on_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = FileLock::data_dir(dir.path()).unwrap();
        let error = FileLock::data_dir(dir.path()).err().unwrap();
        assert!(error.to_string().contains("master.lock"), "{error}");
        drop(held);
        FileLock::data_dir(dir.path()).unwrap();
    }
}
