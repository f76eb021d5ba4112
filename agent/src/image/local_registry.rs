//! A local OCI registry for `bramble up` and the tests: Debian's `docker-registry` (the CNCF
//! distribution server) with its storage in a directory of ours.
//!
//! The registry speaks plain HTTP to a Pi network, so it must not let anyone who reaches it
//! replace or delete images. `docker-registry` listens only on a Unix socket in our directory
//! (0700), and a small proxy of ours listens on the network: pulls (`GET`, `HEAD`) pass
//! anonymously; every other method (pushes, deletes) needs HTTP basic or bearer credentials
//! matching the configured ones, else `401` with a `WWW-Authenticate` challenge, as the
//! distribution spec says. Without configured credentials the registry is read-only to
//! everyone but this process, which seeds the demo image with a random key of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixStream};

use super::registry::Credentials;

/// The registry program `tests/setup-host` installs.
pub const REGISTRY_PROGRAM: &str = "docker-registry";

/// Who may push: the credentials configured for people (`user:password` for basic auth, or
/// a bearer token), if any.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PushAccess {
    /// `user:password` or a token; `None`: read-only to everyone else.
    pub secret: Option<String>,
}

impl std::fmt::Debug for PushAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.secret.is_some() {
            "***"
        } else {
            "read-only"
        };
        write!(f, "PushAccess({shown})")
    }
}

/// A running registry process and its proxy.
pub struct LocalRegistry {
    child: Child,
    proxy: tokio::task::JoinHandle<()>,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its storage directory.
    pub storage: PathBuf,
    /// This process's own push key.
    seeder: Credentials,
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
    /// The proxy could not listen on the address.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
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
    /// Starts a registry listening on `address`, keeping its blobs and its log in `dir`;
    /// pushes need `access`'s credentials (or [`LocalRegistry::seeder`]'s).
    pub async fn start(
        dir: &Path,
        address: SocketAddr,
        access: PushAccess,
    ) -> Result<LocalRegistry, LocalRegistryError> {
        let directory = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalRegistryError::Directory { path, source }
        };
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).map_err(directory(&storage))?;
        // The socket's directory: only root reaches the unauthenticated registry behind it.
        let private = dir.join("private");
        std::fs::create_dir_all(&private).map_err(directory(&private))?;
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(directory(&private))?;
        let socket = private.join("registry.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| LocalRegistryError::Listen { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| LocalRegistryError::Listen { address, source })?;
        let config = dir.join("config.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  net: unix\n  addr: {}\n",
            storage.display(),
            socket.display()
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
        let seeder = Credentials {
            username: "bramble".into(),
            password: random_key().map_err(directory(Path::new("/dev/urandom")))?,
        };
        let allowed = Arc::new(Allowed {
            configured: access.secret,
            seeder: seeder.password.clone(),
        });
        let proxy = tokio::spawn(serve(listener, socket.clone(), allowed));
        let mut registry = LocalRegistry {
            child,
            proxy,
            address,
            storage,
            seeder,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let connect =
            || tokio::time::timeout(Duration::from_millis(200), UnixStream::connect(&socket));
        while !matches!(connect().await, Ok(Ok(_))) {
            let exited = registry.child.try_wait().ok().flatten().is_some();
            if exited || tokio::time::Instant::now() > deadline {
                return Err(LocalRegistryError::NotListening { address, log });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(registry)
    }

    /// Credentials that may push, for this process's own pushes (the demo image).
    pub fn seeder(&self) -> Credentials {
        self.seeder.clone()
    }

    /// The process ID, for callers that leave it running.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` as image names spell it.
    pub fn host(&self) -> String {
        self.address.to_string()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.proxy.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secrets a push may present.
struct Allowed {
    configured: Option<String>,
    seeder: String,
}

impl Allowed {
    /// Whether an `Authorization` header carries allowed credentials: basic `user:password`
    /// equal to a configured pair (or the seeder's); for a configured token, a bearer token or
    /// a basic password equal to it.
    fn permits(&self, authorization: Option<&str>) -> bool {
        let Some((scheme, value)) = authorization.and_then(|a| a.split_once(' ')) else {
            return false;
        };
        let value = value.trim();
        let (pair, token) = if scheme.eq_ignore_ascii_case("basic") {
            let Some(pair) = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
            else {
                return false;
            };
            let password = pair.split_once(':').map(|(_, p)| p.to_owned());
            (Some(pair), password)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            (None, Some(value.to_owned()))
        } else {
            return false;
        };
        let seeder = format!("bramble:{}", self.seeder);
        let mut pairs = vec![seeder.as_str()];
        let mut tokens = Vec::new();
        match self.configured.as_deref() {
            Some(secret) if secret.contains(':') => pairs.push(secret),
            Some(secret) => tokens.push(secret),
            None => {}
        }
        let matches = |presented: &Option<String>, allowed: &[&str]| {
            presented.as_deref().is_some_and(|p| {
                allowed
                    .iter()
                    .any(|a| same_secret(p.as_bytes(), a.as_bytes()))
            })
        };
        matches(&pair, &pairs) || matches(&token, &tokens)
    }
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn answer(status: StatusCode, headers: &[(&str, &str)], body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response")
}

async fn serve(listener: TcpListener, socket: PathBuf, allowed: Arc<Allowed>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (socket, allowed) = (socket.clone(), allowed.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (socket, allowed) = (socket.clone(), allowed.clone());
                async move { Ok::<_, Infallible>(forward(request, &socket, &allowed).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Lets a pull through, or a push with allowed credentials; answers everything else `401`.
async fn forward(
    request: Request<hyper::body::Incoming>,
    socket: &Path,
    allowed: &Allowed,
) -> Response<ProxyBody> {
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !read && !allowed.permits(authorization) {
        return answer(
            StatusCode::UNAUTHORIZED,
            &[
                ("www-authenticate", "Basic realm=\"bramble registry\""),
                ("content-type", "application/json"),
                ("docker-distribution-api-version", "registry/2.0"),
            ],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required: this registry takes pushes and deletes only with the credentials it was started with","detail":null}]}"#,
        );
    }
    let unavailable = || {
        answer(
            StatusCode::BAD_GATEWAY,
            &[("content-type", "application/json")],
            r#"{"errors":[{"code":"UNAVAILABLE","message":"the registry behind the proxy does not answer","detail":null}]}"#,
        )
    };
    let Ok(stream) = UnixStream::connect(socket).await else {
        return unavailable();
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return unavailable();
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    match sender.send_request(request).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(pair: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[test]
    fn only_the_configured_or_the_seeders_credentials_push() {
        let allowed = Allowed {
            configured: Some("alice:s3cret".into()),
            seeder: "k".repeat(64),
        };
        assert!(allowed.permits(Some(&basic("alice:s3cret"))));
        assert!(allowed.permits(Some(&basic(&format!("bramble:{}", "k".repeat(64))))));
        assert!(!allowed.permits(Some(&basic("alice:wrong"))));
        assert!(!allowed.permits(Some(&basic("mallory:s3cret"))));
        assert!(!allowed.permits(Some("Bearer wrong")));
        assert!(!allowed.permits(Some("Basic !!!")));
        assert!(!allowed.permits(Some(&basic("mallory:alice:s3cret"))));
        assert!(!allowed.permits(Some(&format!("Bearer {}", "k".repeat(64)))));
        assert!(!allowed.permits(None));
        let token = Allowed {
            configured: Some("t0ken".into()),
            seeder: "k".repeat(64),
        };
        assert!(token.permits(Some("Bearer t0ken")));
        assert!(token.permits(Some(&basic("anyone:t0ken"))));
        let read_only = Allowed {
            configured: None,
            seeder: "k".repeat(64),
        };
        assert!(!read_only.permits(Some(&basic("bramble:"))));
        assert!(!read_only.permits(Some("Bearer ")));
    }
}
