//! A client for the OCI distribution API: manifests and blobs, token and basic auth, pushes.
//!
//! One HTTP/1.1 connection per request is plenty for a node pulling a few layers, and keeps the
//! client free of pools. Blobs stream to disk while their SHA-256 is checked; nothing whose
//! digest does not match is kept.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use sha2::Sha256;

use super::digest::Digest;

/// The manifest media types the agent understands, for the Accept header.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;

/// A registry could not give us what we asked for.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or the connection broke.
    #[error("cannot reach registry {host}")]
    Transport {
        /// The registry host.
        host: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered with an error.
    #[error("{what}: registry answered {code}{detail}")]
    Status {
        /// What was requested.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The registry's error text, prefixed with ": " when there is one.
        detail: String,
    },
    /// The content does not match its digest or is malformed.
    #[error("{what}: {problem}")]
    Content {
        /// What was fetched.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// Writing the blob to disk failed.
    #[error("cannot store {what}")]
    Disk {
        /// What was being stored.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Whether the registry refused for lack of (valid) credentials.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            RegistryError::Status {
                code: 401 | 403,
                ..
            }
        )
    }

    /// Whether the image or tag does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { code: 404, .. })
    }
}

/// A user name and password (or token) for a registry, as `imagePullSecrets` carry them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// One registry, spoken to over HTTPS, or plain HTTP when the node lists it as insecure.
pub struct Registry {
    host: String,
    insecure: bool,
    credentials: Option<Credentials>,
    tls: tokio_rustls::TlsConnector,
    /// The Authorization header value earned by the last challenge (Bearer or Basic).
    auth: Mutex<Option<String>>,
}

/// A fetched manifest: its bytes, media type and digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest's digest (`sha256:…`), computed over the bytes.
    pub digest: String,
    /// The Content-Type the registry gave, or the manifest's own mediaType.
    pub media_type: String,
    /// The decoded JSON.
    pub json: Value,
    /// The raw bytes, for pushing elsewhere or re-checking.
    pub bytes: Bytes,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Registry {
    /// A client for `host` (`name[:port]`).
    pub fn new(host: &str, insecure: bool, credentials: Option<Credentials>) -> Arc<Registry> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(Registry {
            host: host.to_owned(),
            insecure,
            credentials,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            auth: Mutex::new(None),
        })
    }

    fn base(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }

    fn transport(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> RegistryError {
        RegistryError::Transport {
            host: self.host.clone(),
            source: source.into(),
        }
    }

    /// Sends one request to an absolute URL, without auth handling.
    async fn send_once(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RegistryError> {
        let host = uri
            .host()
            .ok_or_else(|| self.transport(format!("no host in {uri}")))?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|e| self.transport(e))?
        .map_err(|e| self.transport(e))?;
        tcp.set_nodelay(true).ok();
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("host", uri.authority().map(|a| a.as_str()).unwrap_or(host))
            .header("user-agent", "bramble-agent");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body.clone()))
            .map_err(|e| self.transport(e))?;
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut sender, connection) = hyper::client::conn::http1::handshake($io)
                    .await
                    .map_err(|e| self.transport(e))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| self.transport(e))
            }};
        }
        if https {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| self.transport(e))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| self.transport(e))?;
            exchange!(TokioIo::new(tls))
        } else {
            exchange!(TokioIo::new(tcp))
        }
    }

    /// Sends a request to a registry path, answering auth challenges and following redirects.
    async fn send(
        &self,
        method: Method,
        target: &str,
        mut headers: HeaderMap,
        body: Bytes,
        scope: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RegistryError> {
        let mut uri: Uri = if target.starts_with("http") {
            target.parse()
        } else {
            format!("{}{}", self.base(), target).parse()
        }
        .map_err(|e| self.transport(e))?;
        let mut tried_auth = false;
        let mut redirects = 0;
        loop {
            let own_host = uri.authority().map(|a| a.as_str()) == Some(self.host.as_str());
            headers.remove("authorization");
            if own_host {
                if let Some(value) = self.authorization() {
                    headers.insert(
                        "authorization",
                        value.parse().map_err(|e| self.transport(e))?,
                    );
                }
            }
            let response = self.send_once(&method, &uri, &headers, &body).await?;
            match response.status() {
                StatusCode::UNAUTHORIZED if own_host && !tried_auth => {
                    tried_auth = true;
                    let challenge = response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    self.authenticate(&challenge, scope).await?;
                }
                status if status.is_redirection() && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    let location = response
                        .headers()
                        .get("location")
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| self.transport("redirect without a location"))?;
                    uri = if location.starts_with('/') {
                        format!(
                            "{}://{}{location}",
                            uri.scheme_str().unwrap_or("http"),
                            uri.authority().map(|a| a.as_str()).unwrap_or("")
                        )
                        .parse()
                    } else {
                        location.parse()
                    }
                    .map_err(|e| self.transport(e))?;
                }
                _ => return Ok(response),
            }
        }
    }

    fn authorization(&self) -> Option<String> {
        self.auth.lock().expect("auth lock").clone()
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|c| {
            let pair = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        })
    }

    /// Answers a `WWW-Authenticate` challenge: fetches a bearer token from the realm (with the
    /// credentials if any), or remembers to send basic auth.
    async fn authenticate(&self, challenge: &str, scope: &str) -> Result<(), RegistryError> {
        let (kind, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if kind.eq_ignore_ascii_case("basic") {
            let basic = self.basic().ok_or_else(|| RegistryError::Status {
                what: format!("registry {}", self.host),
                code: 401,
                detail: ": credentials required (add an imagePullSecret)".into(),
            })?;
            *self.auth.lock().expect("auth lock") = Some(basic);
            return Ok(());
        }
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Content {
                what: format!("registry {}", self.host),
                problem: format!("unsupported authentication challenge {challenge:?}"),
            });
        }
        let param = |name: &str| challenge_param(params, name);
        let realm = param("realm").ok_or_else(|| RegistryError::Content {
            what: format!("registry {}", self.host),
            problem: "bearer challenge without a realm".into(),
        })?;
        let mut url = format!("{realm}?");
        if let Some(service) = param("service") {
            url.push_str(&format!("service={}&", encode_query(&service)));
        }
        let scope = param("scope").unwrap_or_else(|| scope.to_owned());
        url.push_str(&format!("scope={}", encode_query(&scope)));
        let uri: Uri = url.parse().map_err(|e| self.transport(e))?;
        let mut headers = HeaderMap::new();
        if let Some(basic) = self.basic() {
            headers.insert(
                "authorization",
                basic.parse().map_err(|e| self.transport(e))?,
            );
        }
        let response = self
            .send_once(&Method::GET, &uri, &headers, &Bytes::new())
            .await?;
        let status = response.status();
        let body = collect(response, MAX_MANIFEST_BYTES, "token").await?;
        if !status.is_success() {
            return Err(status_error("token", status, &body));
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| RegistryError::Content {
            what: "token".into(),
            problem: e.to_string(),
        })?;
        let token = json
            .get("token")
            .or_else(|| json.get("access_token"))
            .and_then(Value::as_str)
            .ok_or_else(|| RegistryError::Content {
                what: "token".into(),
                problem: "no token in the answer".into(),
            })?;
        *self.auth.lock().expect("auth lock") = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// Fetches a manifest or index by tag or digest and checks it against a pinned digest.
    pub async fn manifest(
        &self,
        repository: &str,
        selector: &str,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {}/{repository}:{selector}", self.host);
        // A selector with a colon is a digest (tags have none): it must parse before it goes
        // into a URL, and the content must match it.
        let pinned = if selector.contains(':') {
            Some(Digest::parse(selector).map_err(|e| RegistryError::Content {
                what: what.clone(),
                problem: e.to_string(),
            })?)
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        headers.insert("accept", MANIFEST_TYPES.parse().expect("static header"));
        let response = self
            .send(
                Method::GET,
                &format!("/v2/{repository}/manifests/{selector}"),
                headers,
                Bytes::new(),
                &format!("repository:{repository}:pull"),
            )
            .await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = collect(response, MAX_MANIFEST_BYTES, &what).await?;
        if !status.is_success() {
            return Err(status_error(&what, status, &bytes));
        }
        let digest = sha256_digest(&bytes);
        if let Some(pinned) = &pinned {
            if !pinned.matches(&bytes) {
                return Err(RegistryError::Content {
                    what,
                    problem: format!("content has digest {digest}, not the one asked for"),
                });
            }
        }
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Content {
            what: what.clone(),
            problem: format!("not JSON: {e}"),
        })?;
        let media_type = json
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(content_type);
        Ok(Manifest {
            digest,
            media_type,
            json,
            bytes,
        })
    }

    /// Streams a blob into `dest`, checking size and digest; on any mismatch the file is
    /// removed and an error says which blob was bad. Calls `progress` with bytes so far.
    pub async fn blob_to_file(
        &self,
        repository: &str,
        digest: &Digest,
        size: Option<u64>,
        dest: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<(), RegistryError> {
        let what = format!("layer {digest}");
        let response = self.get_blob(repository, digest).await?;
        let status = response.status();
        if !status.is_success() {
            let body = collect(response, 64 * 1024, &what)
                .await
                .unwrap_or_default();
            return Err(status_error(&what, status, &body));
        }
        let disk = |source| RegistryError::Disk {
            what: what.clone(),
            source,
        };
        let mut file = std::fs::File::create(dest).map_err(disk)?;
        let mut hasher = digest.verifier();
        let mut written = 0u64;
        let mut body = response.into_body();
        let result: Result<(), RegistryError> = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| self.transport(e))?;
                if let Some(chunk) = frame.data_ref() {
                    hasher.update(chunk);
                    file.write_all(chunk).map_err(disk)?;
                    written += chunk.len() as u64;
                    progress(written);
                    if size.is_some_and(|size| written > size) {
                        return Err(RegistryError::Content {
                            what: what.clone(),
                            problem: "larger than its manifest says".into(),
                        });
                    }
                }
            }
            file.sync_all().map_err(disk)?;
            if let Err(actual) = hasher.verify() {
                return Err(RegistryError::Content {
                    what: what.clone(),
                    problem: format!("corrupted download: content has digest {actual}"),
                });
            }
            if size.is_some_and(|size| written != size) {
                return Err(RegistryError::Content {
                    what: what.clone(),
                    problem: format!("truncated: {written} of {} bytes", size.unwrap_or(0)),
                });
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// Asks for a blob; the answer's body is still to be read.
    async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RegistryError> {
        self.send(
            Method::GET,
            &format!("/v2/{repository}/blobs/{digest}"),
            HeaderMap::new(),
            Bytes::new(),
            &format!("repository:{repository}:pull"),
        )
        .await
    }

    /// Fetches a small blob (an image config) into memory, verifying its digest.
    pub async fn blob(&self, repository: &str, digest: &Digest) -> Result<Bytes, RegistryError> {
        let what = format!("blob {digest}");
        let response = self.get_blob(repository, digest).await?;
        let status = response.status();
        let bytes = collect(response, MAX_MANIFEST_BYTES, &what).await?;
        if !status.is_success() {
            return Err(status_error(&what, status, &bytes));
        }
        if !digest.matches(&bytes) {
            return Err(RegistryError::Content {
                what,
                problem: "content does not match its digest".into(),
            });
        }
        Ok(bytes)
    }

    /// Uploads a blob unless the registry has it already.
    pub async fn push_blob(
        &self,
        repository: &str,
        content: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&content);
        let scope = format!("repository:{repository}:pull,push");
        let head = self
            .send(
                Method::HEAD,
                &format!("/v2/{repository}/blobs/{digest}"),
                HeaderMap::new(),
                Bytes::new(),
                &scope,
            )
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let what = format!("upload of {digest}");
        let started = self
            .send(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/"),
                HeaderMap::new(),
                Bytes::new(),
                &scope,
            )
            .await?;
        let status = started.status();
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = collect(started, 64 * 1024, &what).await?;
        if status != StatusCode::ACCEPTED {
            return Err(status_error(&what, status, &body));
        }
        let location = location.ok_or_else(|| RegistryError::Content {
            what: what.clone(),
            problem: "no upload location".into(),
        })?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/octet-stream".parse().expect("static"),
        );
        let put = self
            .send(
                Method::PUT,
                &format!("{location}{separator}digest={digest}"),
                headers,
                content,
                &scope,
            )
            .await?;
        let status = put.status();
        let body = collect(put, 64 * 1024, &what).await?;
        if !status.is_success() {
            return Err(status_error(&what, status, &body));
        }
        Ok(digest)
    }

    /// Uploads a manifest or index under a tag or digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        content: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&content);
        let what = format!("manifest {repository}:{reference}");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            media_type.parse().map_err(|e| self.transport(e))?,
        );
        let response = self
            .send(
                Method::PUT,
                &format!("/v2/{repository}/manifests/{reference}"),
                headers,
                content,
                &format!("repository:{repository}:pull,push"),
            )
            .await?;
        let status = response.status();
        let body = collect(response, 64 * 1024, &what).await?;
        if !status.is_success() {
            return Err(status_error(&what, status, &body));
        }
        Ok(digest)
    }
}

async fn collect(
    response: hyper::Response<hyper::body::Incoming>,
    limit: usize,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let limited = http_body_util::Limited::new(response.into_body(), limit);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| RegistryError::Content {
            what: what.to_owned(),
            problem: format!("unreadable answer: {e}"),
        })
}

fn status_error(what: &str, status: StatusCode, body: &[u8]) -> RegistryError {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("errors")?.as_array()?.first().map(|e| {
                let code = e.get("code").and_then(Value::as_str).unwrap_or("");
                let message = e.get("message").and_then(Value::as_str).unwrap_or("");
                format!(": {code} {message}").trim_end().to_owned()
            })
        })
        .unwrap_or_default();
    RegistryError::Status {
        what: what.to_owned(),
        code: status.as_u16(),
        detail,
    }
}

/// Reads `name="value"` out of a challenge's parameter list.
fn challenge_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_owned());
        }
        rest = after.trim_start_matches(',').trim_start();
    }
    None
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed() {
        let params = r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            challenge_param(params, "realm").as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(
            challenge_param(params, "scope").as_deref(),
            Some("repository:library/busybox:pull")
        );
        assert_eq!(challenge_param(params, "missing"), None);
    }

    #[test]
    fn digests_and_query_encoding() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            encode_query("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
