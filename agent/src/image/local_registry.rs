//! A local OCI registry for `bramble up` and the tests: Debian's `docker-registry` (the CNCF
//! distribution server) with its storage in a directory of ours.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

/// The registry program `tests/setup-host` installs.
pub const REGISTRY_PROGRAM: &str = "docker-registry";

/// A running registry process.
pub struct LocalRegistry {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its storage directory.
    pub storage: PathBuf,
}

/// The registry could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalRegistryError {
    /// The program is missing or would not run.
    #[error("cannot run {REGISTRY_PROGRAM} (install it with tests/setup-host)")]
    Spawn(#[source] std::io::Error),
    /// Its directory could not be prepared.
    #[error("cannot prepare the registry directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not start listening.
    #[error("{REGISTRY_PROGRAM} did not start listening on {address} (see {log})")]
    NotListening {
        /// The address.
        address: SocketAddr,
        /// Its log file.
        log: PathBuf,
    },
}

impl LocalRegistry {
    /// Starts a registry listening on `address`, keeping its blobs and its log in `dir`.
    pub async fn start(
        dir: &Path,
        address: SocketAddr,
    ) -> Result<LocalRegistry, LocalRegistryError> {
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).map_err(|source| LocalRegistryError::Directory {
            path: storage.clone(),
            source,
        })?;
        let config = dir.join("config.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            storage.display()
        );
        let log = dir.join("registry.log");
        let prepared = std::fs::write(&config, text).and_then(|_| std::fs::File::create(&log));
        let log_file = prepared.map_err(|source| LocalRegistryError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let child = Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(LocalRegistryError::Spawn)?)
            .stderr(log_file)
            .spawn()
            .map_err(LocalRegistryError::Spawn)?;
        let mut registry = LocalRegistry {
            child,
            address,
            storage,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let connect =
            || tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(address));
        while !matches!(connect().await, Ok(Ok(_))) {
            let exited = registry.child.try_wait().ok().flatten().is_some();
            if exited || tokio::time::Instant::now() > deadline {
                return Err(LocalRegistryError::NotListening { address, log });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(registry)
    }

    /// The process ID, for callers that leave it running.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Leaves the registry running after this handle is gone.
    pub fn detach(self) -> u32 {
        let pid = self.child.id();
        std::mem::forget(self);
        pid
    }

    /// `host:port` as image names spell it.
    pub fn host(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
