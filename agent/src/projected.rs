//! Projected volumes as kubelet writes them (upstream's `pkg/volume/projected` and
//! `pkg/kubelet/token`): service-account tokens, config maps, secrets and downward-API files
//! in one directory with the atomic `..data` layout of [`crate::pod_config::write_atomic_dir`].
//!
//! Tokens come from the TokenRequest API with the node's own credentials, bound to the pod
//! (its name and uid), so that the token dies with the pod. A pod's worker keeps the tokens it
//! fetched and asks again when kubelet's rule says: at 80% of the token's lifetime, or when it
//! is older than a day, whichever comes first. Each sync rewrites the directory when any
//! file changed, so a running container sees the fresh token with one rename.
//!
//! ```text
//!   issued ─────────────── 80% of the lifetime (or 24h) ── refresh ──── expires
//!     │ cached, written unchanged each sync                 │ new token   │
//!     └──────────────────────────────────────────────────────┘ written     │ (a failed
//!                                                              atomically  │ refresh keeps
//!                                                                          │ the old one
//!                                                                          │ until here)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod, ServiceAccountTokenProjection};
use serde_json::{json, Value};

use crate::pod_config::{self, ConfigError, ObjectSource, PodFacts};
use crate::pods::PodApi;

/// Files of a volume: relative path → (bytes, mode).
type Files = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// A projected volume's mode when it names none (`ProjectedVolumeSourceDefaultMode`).
const DEFAULT_MODE: u32 = 0o644;
/// The token lifetime when a projection names none (the API's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// kubelet refreshes a token older than this whatever its lifetime.
const MAX_TOKEN_AGE: SignedDuration = SignedDuration::from_hours(24);

/// What a token was asked for; a pod asks for one token per distinct projection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    account: String,
    audience: String,
    seconds: i64,
}

/// A token the API issued.
#[derive(Debug, Clone)]
struct IssuedToken {
    token: String,
    /// When the API says it expires.
    expires: Timestamp,
    /// The lifetime asked for: kubelet counts the issue time back from the expiry with it.
    seconds: i64,
}

impl IssuedToken {
    /// When kubelet would ask for a new one: 80% into its lifetime or a day after it was
    /// issued, whichever is first. (kubelet adds up to 10 s of random jitter; a Pi's few pods
    /// do not need spreading.)
    fn refresh_at(&self) -> Timestamp {
        let lifetime = SignedDuration::from_secs(self.seconds);
        let issued = self.expires - lifetime;
        let at_80_percent = self.expires - SignedDuration::from_secs(self.seconds * 20 / 100);
        at_80_percent.min(issued + MAX_TOKEN_AGE)
    }
}

/// The tokens one pod's worker holds, for the pod's life.
#[derive(Debug, Default)]
pub struct ServiceAccountTokens {
    issued: HashMap<TokenKey, IssuedToken>,
}

impl ServiceAccountTokens {
    /// The earliest time a held token wants refreshing, if the pod holds any.
    pub fn next_refresh(&self) -> Option<Timestamp> {
        self.issued.values().map(IssuedToken::refresh_at).min()
    }

    /// The token for `projection`: the held one while it is fresh, else a new one from the
    /// API. When asking fails, a held token that has not expired is still used, as kubelet
    /// does.
    async fn token(
        &mut self,
        api: &dyn PodApi,
        pod: &Pod,
        account: &str,
        projection: &ServiceAccountTokenProjection,
        now: Timestamp,
    ) -> Result<String, ConfigError> {
        let key = TokenKey {
            account: account.to_owned(),
            audience: projection.audience.clone().unwrap_or_default(),
            seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_SECONDS),
        };
        let held = self.issued.get(&key);
        if let Some(held) = held.filter(|h| now < h.refresh_at()) {
            return Ok(held.token.clone());
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let request = token_request(pod, &key);
        let answer = api.create_token(namespace, account, &request).await;
        let fresh = answer
            .map_err(|e| protocol::error::error_chain(&e))
            .and_then(|answer| issued_from(&answer, &key, now));
        match fresh {
            Ok(fresh) => {
                let token = fresh.token.clone();
                self.issued.insert(key, fresh);
                Ok(token)
            }
            Err(why) => match held.filter(|h| now < h.expires) {
                Some(held) => {
                    tracing::warn!(account, error = %why, "refreshing a service-account token failed; the current one is still valid");
                    Ok(held.token.clone())
                }
                None => Err(ConfigError(format!("failed to fetch token: {why}"))),
            },
        }
    }
}

/// The TokenRequest kubelet sends: the projection's audience (none: the API server's own),
/// its lifetime, bound to the pod.
fn token_request(pod: &Pod, key: &TokenKey) -> Value {
    let mut spec = json!({
        "expirationSeconds": key.seconds,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name.as_deref().unwrap_or_default(),
            "uid": pod.metadata.uid.as_deref().unwrap_or_default(),
        },
    });
    if !key.audience.is_empty() {
        spec["audiences"] = json!([key.audience]);
    }
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

fn issued_from(answer: &Value, key: &TokenKey, now: Timestamp) -> Result<IssuedToken, String> {
    let token = answer["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("the TokenRequest answer holds no token")?;
    let expires = answer["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or_else(|| now + SignedDuration::from_secs(key.seconds));
    Ok(IssuedToken {
        token: token.to_owned(),
        expires,
        seconds: key.seconds,
    })
}

/// The files of a `downwardAPI` volume or projection: pod metadata fields and containers'
/// resources, one file each.
pub async fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Files, ConfigError> {
    let facts = PodFacts {
        pod,
        pod_ip: String::new(),
        host_ip: String::new(),
        service_env: Vec::new(),
    };
    let mut files = Files::new();
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(field), _) => pod_config::field_value(&facts, &field.field_path)?,
            (None, Some(resource)) => {
                let wanted = resource.container_name.as_deref().unwrap_or_default();
                let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
                let container = containers
                    .unwrap_or_default()
                    .iter()
                    .find(|c| c.name == wanted)
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "container {wanted:?} not found for resourceFieldRef {:?}",
                            resource.resource
                        ))
                    })?;
                pod_config::resource_value(container, resource)?
            }
            (None, None) => continue,
        };
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        files.insert(
            pod_config::relative(&item.path)?,
            (value.into_bytes(), mode),
        );
    }
    Ok(files)
}

/// Writes a projected volume into `dir`; whether any file changed. `fs_group`: the pod's
/// group, which makes the token file private to the owner (kubelet then lets the group read
/// it, as for every file of the volume).
pub async fn write_projected_volume(
    pod: &Pod,
    volume_name: &str,
    dir: &Path,
    fs_group: Option<u32>,
    objects: &mut ObjectSource<'_>,
    tokens: &mut ServiceAccountTokens,
    now: Timestamp,
) -> Result<bool, ConfigError> {
    let failed = |why: ConfigError| {
        ConfigError(format!(
            "MountVolume.SetUp failed for volume \"{volume_name}\" : {}",
            why.0
        ))
    };
    let Some(projected) = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == volume_name)
        .and_then(|v| v.projected.as_ref())
    else {
        return Ok(false);
    };
    let default_mode = projected.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    let mut files = Files::new();
    for source in projected.sources.iter().flatten() {
        let part = if let Some(config_map) = &source.config_map {
            let items = config_map.items.as_deref();
            pod_config::object_files(
                "configmaps",
                &config_map.name,
                default_mode,
                config_map.optional,
                items,
                objects,
            )
            .await
        } else if let Some(secret) = &source.secret {
            let items = secret.items.as_deref();
            pod_config::object_files(
                "secrets",
                &secret.name,
                default_mode,
                secret.optional,
                items,
                objects,
            )
            .await
        } else if let Some(downward) = &source.downward_api {
            let items = downward.items.as_deref().unwrap_or_default();
            downward_files(pod, items, default_mode).await
        } else if let Some(projection) = &source.service_account_token {
            let token = tokens
                .token(objects.api(), pod, account, projection, now)
                .await;
            let mode = if fs_group.is_some() {
                0o600
            } else {
                default_mode
            };
            token.and_then(|token| {
                let path = pod_config::relative(&projection.path)?;
                Ok(Files::from([(path, (token.into_bytes(), mode))]))
            })
        } else {
            // clusterTrustBundle and podCertificate projections need APIs bramble does not serve.
            Ok(Files::new())
        };
        files.extend(part.map_err(failed)?);
    }
    pod_config::write_atomic_dir(dir, &files)
        .map_err(|e| ConfigError(format!("volume {volume_name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fake::FakeApi;
    use std::os::unix::fs::PermissionsExt;

    fn pod(volume: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1",
                         "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "builder",
                     "containers": [{"name": "app", "image": "app:1",
                                     "resources": {"limits": {"memory": "64Mi"}}}],
                     "volumes": [volume]},
        }))
        .unwrap()
    }

    fn api_access() -> Value {
        json!({"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    }

    fn api_with_root_ca() -> FakeApi {
        let api = FakeApi::default();
        api.objects.lock().unwrap().insert(
            ("configmaps".into(), "kube-root-ca.crt".into()),
            json!({"data": {"ca.crt": "PEM", "other": "x"}}),
        );
        api
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    async fn write(
        pod: &Pod,
        dir: &Path,
        api: &FakeApi,
        tokens: &mut ServiceAccountTokens,
        now: Timestamp,
        fs_group: Option<u32>,
    ) -> Result<bool, ConfigError> {
        let mut objects = ObjectSource::new(api, "shop");
        let name = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0]
            .name
            .clone();
        write_projected_volume(pod, &name, dir, fs_group, &mut objects, tokens, now).await
    }

    #[tokio::test]
    async fn the_api_access_volume_holds_a_bound_token_the_ca_and_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let api = api_with_root_ca();
        api.set_token_clock(at(0));
        let pod = pod(api_access());
        let mut tokens = ServiceAccountTokens::default();
        assert!(write(&pod, dir.path(), &api, &mut tokens, at(0), None)
            .await
            .unwrap());
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("token"), "token-1");
        assert_eq!(read("ca.crt"), "PEM");
        assert_eq!(read("namespace"), "shop");
        assert!(
            !dir.path().join("other").exists(),
            "only the items asked for"
        );
        for file in ["token", "ca.crt", "namespace"] {
            assert_eq!(mode_of(&dir.path().join("..data").join(file)), 0o644);
        }
        let requests = api.token_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1);
        let (namespace, account, request) = &requests[0];
        assert_eq!((namespace.as_str(), account.as_str()), ("shop", "builder"));
        assert_eq!(
            request["spec"],
            json!({"expirationSeconds": 3607, "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-1"}})
        );
    }

    #[tokio::test]
    async fn the_token_is_refreshed_at_80_percent_of_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let api = api_with_root_ca();
        api.set_token_clock(at(0));
        let pod = pod(api_access());
        let mut tokens = ServiceAccountTokens::default();
        write(&pod, dir.path(), &api, &mut tokens, at(0), None)
            .await
            .unwrap();
        // 3607 s: 80% is 2886 s in (3607 - 721).
        assert_eq!(tokens.next_refresh(), Some(at(2886)));
        assert!(!write(&pod, dir.path(), &api, &mut tokens, at(2885), None)
            .await
            .unwrap());
        assert_eq!(api.token_requests.lock().unwrap().len(), 1);
        api.set_token_clock(at(2886));
        assert!(write(&pod, dir.path(), &api, &mut tokens, at(2886), None)
            .await
            .unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("token")).unwrap(),
            "token-2"
        );
        assert_eq!(tokens.next_refresh(), Some(at(2886 + 2886)));
    }

    #[tokio::test]
    async fn long_lived_tokens_are_refreshed_after_a_day_and_failures_keep_a_valid_one() {
        let dir = tempfile::tempdir().unwrap();
        let api = api_with_root_ca();
        api.set_token_clock(at(0));
        let week = 7 * 24 * 3600;
        let pod = pod(json!({"name": "long", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": week, "path": "token", "audience": "vault"}}]}}));
        let mut tokens = ServiceAccountTokens::default();
        write(&pod, dir.path(), &api, &mut tokens, at(0), None)
            .await
            .unwrap();
        assert_eq!(tokens.next_refresh(), Some(at(24 * 3600)));
        let request = api.token_requests.lock().unwrap()[0].2.clone();
        assert_eq!(request["spec"]["audiences"], json!(["vault"]));

        api.fail_tokens(true);
        assert!(
            !write(&pod, dir.path(), &api, &mut tokens, at(24 * 3600), None)
                .await
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("token")).unwrap(),
            "token-1"
        );
        let expired = write(&pod, dir.path(), &api, &mut tokens, at(week), None).await;
        let error = expired.unwrap_err().0;
        assert!(
            error.starts_with(
                "MountVolume.SetUp failed for volume \"long\" : failed to fetch token:"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn with_an_fs_group_the_token_is_private_to_the_owner_before_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let api = api_with_root_ca();
        let pod = pod(api_access());
        let mut tokens = ServiceAccountTokens::default();
        write(&pod, dir.path(), &api, &mut tokens, at(0), Some(2000))
            .await
            .unwrap();
        let data = dir.path().join("..data");
        assert_eq!(mode_of(&data.join("token")), 0o600);
        assert_eq!(mode_of(&data.join("ca.crt")), 0o644);
    }

    #[tokio::test]
    async fn items_modes_optional_sources_and_resources() {
        let dir = tempfile::tempdir().unwrap();
        let api = FakeApi::default();
        api.objects.lock().unwrap().insert(
            ("secrets".into(), "tls".into()),
            json!({"data": {"tls.key": "a2V5", "tls.crt": "Y3J0"}}),
        );
        let pod = pod(
            json!({"name": "mixed", "projected": {"defaultMode": 0o440, "sources": [
                {"secret": {"name": "tls", "items": [{"key": "tls.key", "path": "keys/tls.key", "mode": 0o400}]}},
                {"configMap": {"name": "absent", "optional": true}},
                {"downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "memory", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            ]}}),
        );
        let mut tokens = ServiceAccountTokens::default();
        write(&pod, dir.path(), &api, &mut tokens, at(0), None)
            .await
            .unwrap();
        let data = dir.path().join("..data");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keys/tls.key")).unwrap(),
            "key"
        );
        assert_eq!(mode_of(&data.join("keys/tls.key")), 0o400);
        assert!(!dir.path().join("tls.crt").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("labels")).unwrap(),
            "app=\"web\""
        );
        assert_eq!(mode_of(&data.join("labels")), 0o440);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("memory")).unwrap(),
            "64"
        );
        assert!(tokens.next_refresh().is_none());

        let missing = pod_with_missing_config_map();
        let error = write(&missing, dir.path(), &api, &mut tokens, at(0), None)
            .await
            .unwrap_err();
        assert_eq!(
            error.0,
            "MountVolume.SetUp failed for volume \"m\" : configmap \"absent\" not found"
        );
    }

    fn pod_with_missing_config_map() -> Pod {
        pod(json!({"name": "m", "projected": {"sources": [{"configMap": {"name": "absent"}}]}}))
    }
}
