//! Service-account tokens: JWTs the master signs (TokenRequest) and accepts as bearer tokens,
//! as upstream's bound service-account tokens.
//!
//! ```text
//!   header  {"alg":"ES256","kid":<base64url SHA-256 of the DER public key>}
//!   claims  aud exp iat iss jti nbf sub="system:serviceaccount:<ns>:<name>"
//!           kubernetes.io: {namespace, serviceaccount{name,uid},
//!                           pod{name,uid} | secret{name,uid}, node{name,uid}}
//! ```
//!
//! The signing key is an ECDSA P-256 key made once in `DIR/pki/sa.key` (ES256: small tokens,
//! fast signatures on a Pi, and rcgen makes the key without another crate). A token is accepted
//! when its issuer is ours, its signature and times check out, one of its audiences is asked
//! for (the API's audience is the issuer), and the service account and the object it is bound
//! to still exist with the same uid (an object deleted more than a minute ago no longer counts,
//! as upstream's validator).
//!
//! JWTs are made and checked here with `ring` directly rather than the `jsonwebtoken` crate:
//! `ring` is already linked (rustls uses it), while current `jsonwebtoken` releases bring a
//! second cryptography stack (aws-lc-rs, a C build, or RustCrypto), and the compact form of one
//! fixed algorithm is a few lines; the claims checks are Kubernetes-specific either way.
//! Legacy tokens of `kubernetes.io/service-account-token` Secrets are not accepted: nothing in
//! bramble fills such Secrets (upstream stopped creating them in 1.24).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

use super::{UserInfo, SERVICE_ACCOUNTS, SERVICE_ACCOUNT_PREFIX};
use crate::pki::PkiError;
use crate::store::Store;

/// Where the JWKS document is served (beside `/.well-known/openid-configuration`).
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// The only signing algorithm: ECDSA P-256 with SHA-256.
const ALGORITHM: &str = "ES256";
/// Clock skew tolerated on exp, nbf and iat, and how long a deleted object's tokens keep
/// working, as upstream's `jwt.DefaultLeeway`.
const LEEWAY_SECONDS: i64 = 60;
/// User extra keys a token's bindings become.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The issuer upstream uses for a cluster domain (`--service-account-issuer` as kubeadm sets it).
pub fn default_issuer(cluster_domain: &str) -> String {
    format!("https://kubernetes.default.svc.{cluster_domain}")
}

/// An object a token names: its name and uid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// The object's name.
    pub name: String,
    /// The object's uid (may be empty for a node that could not be read).
    pub uid: String,
}

/// What a new token says.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: ObjectRef,
    /// The pod the token is bound to.
    pub pod: Option<ObjectRef>,
    /// The Secret the token is bound to.
    pub secret: Option<ObjectRef>,
    /// The node the token (or its pod) is bound to.
    pub node: Option<ObjectRef>,
    /// Audiences (never empty: TokenRequest defaults them).
    pub audiences: Vec<String>,
    /// Lifetime in seconds.
    pub expiration_seconds: i64,
}

/// Why a token does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not a JWT of this issuer: other authenticators may know it; no error to report.
    NotOurs,
    /// Ours but invalid: the message upstream reports (TokenReview's `status.error`).
    Invalid(String),
}

/// A token that authenticated: who, and for which of the asked audiences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The service account's user.
    pub user: UserInfo,
    /// The audiences both the token and the request name.
    pub audiences: Vec<String>,
}

/// Signs and verifies service-account tokens.
pub struct Issuer {
    signer: EcdsaKeyPair,
    /// The public key, parsed once; ring checks the point per verification (cheap next to
    /// the signature check itself).
    verifier: UnparsedPublicKey<Vec<u8>>,
    /// The uncompressed public point (0x04 || x || y), for the JWKS.
    point: Vec<u8>,
    key_id: String,
    issuer: String,
    jwks_uri: String,
    random: SystemRandom,
    /// SHA-256 of tokens whose signature already checked out: the signature is the dear part
    /// of a verification (~100 µs here, more on a Pi) and an in-cluster client sends the same
    /// token for minutes. Times, audiences and the bound objects are still checked on every
    /// request. Emptied when full.
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

/// How many verified signatures are remembered before the memory is emptied.
const VERIFIED_TOKENS: usize = 4096;

impl Issuer {
    /// The issuer whose signing key lives in `data_dir` (`pki/sa.key`, made on first use),
    /// named for the default cluster domain until [`Issuer::configure`] says otherwise.
    pub fn load(data_dir: &Path) -> Result<Issuer, PkiError> {
        let pki = data_dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(|source| PkiError::Io {
            path: pki.clone(),
            source,
        })?;
        let path = pki.join("sa.key");
        if !path.exists() {
            let key =
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                    PkiError::Certificate {
                        action: "generate the service-account signing key",
                        source,
                    }
                })?;
            crate::pki::write_private(&path, key.serialize_pem().as_bytes())?;
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = || PkiError::BadPem { path: path.clone() };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|_| bad())?;
        let random = SystemRandom::new();
        let signer = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &random,
        )
        .map_err(|_| bad())?;
        let point = signer.public_key().as_ref().to_vec();
        let issuer = default_issuer("cluster.local");
        Ok(Issuer {
            verifier: UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point.clone()),
            key_id: key_id(&point),
            point,
            signer,
            jwks_uri: format!("{issuer}{JWKS_PATH}"),
            issuer,
            random,
            verified: Default::default(),
        })
    }

    /// Names the issuer (`iss`, also the API audience) and the address the JWKS is published
    /// at (upstream: the API server's external address).
    pub fn configure(&mut self, issuer: &str, external_url: &str) {
        self.issuer = issuer.to_owned();
        self.jwks_uri = format!("{}{JWKS_PATH}", external_url.trim_end_matches('/'));
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server accepts (upstream's `--api-audiences`, defaulting to the
    /// issuer).
    pub fn api_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone()]
    }

    /// A signed token for `grant`, issued at `now` (seconds since the epoch).
    pub fn sign(&self, grant: &Grant, now: i64) -> Result<String, ring::error::Unspecified> {
        let reference = |r: &ObjectRef| {
            let mut value = json!({"name": r.name});
            if !r.uid.is_empty() {
                value["uid"] = json!(r.uid);
            }
            value
        };
        let mut kubernetes = json!({
            "namespace": grant.namespace,
            "serviceaccount": reference(&grant.service_account),
        });
        if let Some(pod) = &grant.pod {
            kubernetes["pod"] = reference(pod);
        }
        if let Some(secret) = &grant.secret {
            kubernetes["secret"] = reference(secret);
        }
        if let Some(node) = &grant.node {
            kubernetes["node"] = reference(node);
        }
        // Alphabetical, as upstream's encoder writes them.
        let claims = json!({
            "aud": grant.audiences,
            "exp": now + grant.expiration_seconds,
            "iat": now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": kubernetes,
            "nbf": now,
            "sub": format!(
                "{SERVICE_ACCOUNT_PREFIX}{}:{}",
                grant.namespace, grant.service_account.name
            ),
        });
        let header = json!({"alg": ALGORITHM, "kid": self.key_id});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signer.sign(&self.random, signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The service account a bearer token authenticates, if it is one of ours, valid, and
    /// meant for the API server (requests go through `auth::authenticate_token`, which also
    /// knows the static and node tokens).
    #[cfg(test)]
    pub fn authenticate(&self, store: &Store, token: &str) -> Option<UserInfo> {
        self.review(store, token, &self.api_audiences(), unix_now())
            .ok()
            .map(|authenticated| authenticated.user)
    }

    /// Checks `token` for `audiences` at `now`: signature, issuer, times, audiences, then that
    /// the service account and the bound objects still exist (upstream's jwt authenticator
    /// and service-account validator).
    pub fn review(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<Authenticated, Rejection> {
        let claims = self.verify(token, now)?;
        let token_audiences = claims.aud.clone().into_vec();
        let wanted: Vec<String> = token_audiences
            .iter()
            .filter(|a| audiences.contains(a))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Err(Rejection::Invalid(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quoted(&token_audiences),
                go_quoted(audiences)
            )));
        }
        let user = validate(store, &claims, now).map_err(Rejection::Invalid)?;
        Ok(Authenticated {
            user,
            audiences: wanted,
        })
    }

    /// The claims of a token whose issuer is ours and whose signature and times check out.
    fn verify(&self, token: &str, now: i64) -> Result<Claims, Rejection> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::NotOurs);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
        let (Some(header_json), Some(payload_json), Some(signature_bytes)) =
            (decode(header), decode(payload), decode(signature))
        else {
            return Err(Rejection::NotOurs);
        };
        let Ok(claims) = serde_json::from_slice::<Claims>(&payload_json) else {
            return Err(Rejection::NotOurs);
        };
        // Tokens of other issuers are left to other authenticators, as upstream's union.
        if claims.iss != self.issuer {
            return Err(Rejection::NotOurs);
        }
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|_| Rejection::Invalid("the token's header is not valid JSON".into()))?;
        if header.alg != ALGORITHM {
            return Err(Rejection::Invalid(format!(
                "unexpected signature algorithm \"{}\"; expected [\"{ALGORITHM}\"]",
                header.alg
            )));
        }
        let signed = &token[..token.len() - signature.len() - 1];
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if !verified.contains(&digest) {
            self.verifier
                .verify(signed.as_bytes(), &signature_bytes)
                .map_err(|_| {
                    Rejection::Invalid("go-jose/go-jose: error in cryptographic primitive".into())
                })?;
            if verified.len() >= VERIFIED_TOKENS {
                verified.clear();
            }
            verified.insert(digest);
        }
        drop(verified);
        let seconds = |date: Option<f64>| date.map(|d| d as i64);
        if let Some(exp) = seconds(claims.exp) {
            if now > exp + LEEWAY_SECONDS {
                return Err(Rejection::Invalid(
                    "service account token has expired".into(),
                ));
            }
        }
        let not_before = seconds(claims.nbf).into_iter().chain(seconds(claims.iat));
        for date in not_before {
            if now + LEEWAY_SECONDS < date {
                return Err(Rejection::Invalid(
                    "service account token is not valid yet".into(),
                ));
            }
        }
        Ok(claims)
    }

    /// The OpenID provider configuration (`/.well-known/openid-configuration`).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
        })
    }

    /// The public keys tokens are signed with (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let (x, y) = self.point[1..].split_at(32);
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.key_id,
            "crv": "P-256",
            "alg": ALGORITHM,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }
}

/// Upstream's key id: base64url of the SHA-256 of the DER (PKIX) public key.
fn key_id(point: &[u8]) -> String {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der))
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_quoted(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// `aud`: one string or a list, as RFC 7519 allows.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn into_vec(self) -> Vec<String> {
        match self {
            Audience::One(one) => vec![one],
            Audience::Many(many) => many,
        }
    }
}

#[derive(Deserialize, Default, Clone)]
struct Reference {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

#[derive(Deserialize, Default)]
struct Private {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    serviceaccount: Reference,
    pod: Option<Reference>,
    secret: Option<Reference>,
    node: Option<Reference>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<Private>,
}

/// Which objects must still exist for a token to be valid, and the user it names
/// (upstream's `validator.Validate` and `ServiceAccountInfo.UserInfo`).
fn validate(store: &Store, claims: &Claims, now: i64) -> Result<UserInfo, String> {
    let Some(private) = &claims.kubernetes else {
        return Err("service account token claims could not be validated".into());
    };
    let namespace = &private.namespace;
    let account = &private.serviceaccount;
    // Objects deleted before now - leeway no longer back tokens.
    let deleted_long_ago = |object: &Value| {
        object
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| t.as_second() < now - LEEWAY_SECONDS)
    };
    let uid_of = |object: &Value| {
        object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let get = |kind: &str, namespace: &str, name: &str| -> Option<Value> {
        let resource = crate::resources::by_kind("", kind)?;
        store
            .get(&resource.storage_key(), namespace, name)
            .ok()
            .flatten()
    };
    let Some(service_account) = get("ServiceAccount", namespace, &account.name) else {
        return Err(format!("serviceaccounts \"{}\" not found", account.name));
    };
    if deleted_long_ago(&service_account) {
        return Err(format!(
            "service account {namespace}/{} has been deleted",
            account.name
        ));
    }
    let uid = uid_of(&service_account);
    if uid != account.uid {
        return Err(format!(
            "service account UID ({uid}) does not match claim ({})",
            account.uid
        ));
    }
    let invalidated = || "service account token has been invalidated".to_owned();
    if let Some(secret_ref) = &private.secret {
        let secret = get("Secret", namespace, &secret_ref.name).ok_or_else(invalidated)?;
        if deleted_long_ago(&secret) {
            return Err(invalidated());
        }
        let uid = uid_of(&secret);
        if uid != secret_ref.uid {
            return Err(format!(
                "secret UID ({uid}) does not match service account secret ref claim ({})",
                secret_ref.uid
            ));
        }
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(pod_ref) = &private.pod {
        let pod = get("Pod", namespace, &pod_ref.name).ok_or_else(invalidated)?;
        if deleted_long_ago(&pod) {
            return Err(invalidated());
        }
        let uid = uid_of(&pod);
        if uid != pod_ref.uid {
            return Err(format!(
                "pod UID ({uid}) does not match service account pod ref claim ({})",
                pod_ref.uid
            ));
        }
        extra.insert(EXTRA_POD_NAME.into(), vec![pod_ref.name.clone()]);
        extra.insert(EXTRA_POD_UID.into(), vec![pod_ref.uid.clone()]);
    }
    if let Some(node_ref) = &private.node {
        // A pod's node is only reported; a token bound to the node itself needs the node.
        if private.pod.is_none() {
            let node = get("Node", "", &node_ref.name).ok_or_else(invalidated)?;
            if deleted_long_ago(&node) {
                return Err(invalidated());
            }
            let uid = uid_of(&node);
            if uid != node_ref.uid {
                return Err(format!(
                    "node UID ({uid}) does not match service account node ref claim ({})",
                    node_ref.uid
                ));
            }
        }
        extra.insert(EXTRA_NODE_NAME.into(), vec![node_ref.name.clone()]);
        if !node_ref.uid.is_empty() {
            extra.insert(EXTRA_NODE_UID.into(), vec![node_ref.uid.clone()]);
        }
    }
    if let Some(jti) = claims.jti.as_deref().filter(|j| !j.is_empty()) {
        extra.insert(EXTRA_CREDENTIAL_ID.into(), vec![format!("JTI={jti}")]);
    }
    let namespace_group = format!("{SERVICE_ACCOUNTS}:{namespace}");
    let mut user = UserInfo::new(
        format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{}", account.name),
        &[SERVICE_ACCOUNTS, &namespace_group],
    );
    user.uid = account.uid.clone();
    user.extra = extra;
    Ok(user)
}

/// The groups of a service account of `namespace` (upstream's `MakeGroupNames`).
pub fn groups_of_namespace(namespace: &str) -> Vec<String> {
    vec![
        SERVICE_ACCOUNTS.to_owned(),
        format!("{SERVICE_ACCOUNTS}:{namespace}"),
    ]
}

/// The namespace and name of a `system:serviceaccount:<ns>:<name>` user name.
pub fn split_user_name(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{bare_pod, key, TestCluster};

    fn new_issuer() -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::load(dir.path()).unwrap();
        (dir, issuer)
    }

    #[test]
    fn the_key_is_made_once_private_and_named_as_upstream() {
        let (dir, first) = new_issuer();
        let again = Issuer::load(dir.path()).unwrap();
        assert_eq!(first.key_id, again.key_id);
        let mode = std::fs::metadata(dir.path().join("pki/sa.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // The kid is the SHA-256 of the same DER public key rcgen reports.
        let pem = std::fs::read_to_string(dir.path().join("pki/sa.key")).unwrap();
        let der =
            rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::from_pem(&pem).unwrap());
        assert_eq!(
            first.key_id,
            URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der))
        );
        let jwks = first.jwks();
        assert_eq!(jwks["keys"][0]["kid"], json!(first.key_id));
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwks["keys"][0]["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }

    fn account(cluster: &TestCluster, namespace: &str, name: &str) -> ObjectRef {
        let created = cluster.create(
            "core/serviceaccounts",
            json!({"metadata": {"name": name, "namespace": namespace}}),
        );
        ObjectRef {
            name: name.into(),
            uid: created["metadata"]["uid"].as_str().unwrap().into(),
        }
    }

    fn grant(namespace: &str, service_account: ObjectRef, audiences: &[&str]) -> Grant {
        Grant {
            namespace: namespace.into(),
            service_account,
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            expiration_seconds: 3600,
            ..Grant::default()
        }
    }

    #[test]
    fn a_token_round_trips_to_its_service_account() {
        let cluster = TestCluster::new();
        let sa = account(&cluster, "default", "builder");
        let issuer = &cluster.api().auth.service_accounts;
        let now = unix_now();
        let token = issuer
            .sign(&grant("default", sa.clone(), &[issuer.issuer()]), now)
            .unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": issuer.key_id}));
        let user = issuer.authenticate(&cluster.api().store, &token).unwrap();
        assert_eq!(user.name, "system:serviceaccount:default:builder");
        assert_eq!(user.uid, sa.uid);
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        let jti = &user.extra[EXTRA_CREDENTIAL_ID][0];
        assert!(jti.starts_with("JTI=") && jti.len() > 10, "{jti}");
        // Not yet valid, expired, for another audience, tampered, or from another key: refused.
        let store = &cluster.api().store;
        let audiences = issuer.api_audiences();
        assert_eq!(
            issuer.review(store, &token, &audiences, now - 600),
            Err(Rejection::Invalid(
                "service account token is not valid yet".into()
            ))
        );
        assert_eq!(
            issuer.review(store, &token, &audiences, now + 3600 + 61),
            Err(Rejection::Invalid(
                "service account token has expired".into()
            ))
        );
        assert!(issuer
            .review(store, &token, &audiences, now + 3600 + 30)
            .is_ok());
        let other = issuer
            .sign(&grant("default", sa.clone(), &["vault"]), now)
            .unwrap();
        assert!(issuer.authenticate(store, &other).is_none());
        assert_eq!(
            issuer.review(store, &other, &audiences, now),
            Err(Rejection::Invalid(format!(
                "token audiences [\"vault\"] is invalid for the target audiences [\"{}\"]",
                issuer.issuer()
            )))
        );
        let for_vault = issuer
            .review(store, &other, &["vault".into(), "x".into()], now)
            .unwrap();
        assert_eq!(for_vault.audiences, ["vault"]);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        let tampered = parts.join(".");
        assert_eq!(
            issuer.review(store, &tampered, &audiences, now),
            Err(Rejection::Invalid(
                "go-jose/go-jose: error in cryptographic primitive".into()
            ))
        );
        let (_dir, stranger) = new_issuer();
        let foreign = stranger
            .sign(&grant("default", sa.clone(), &[issuer.issuer()]), now)
            .unwrap();
        assert!(issuer.authenticate(store, &foreign).is_none());
        assert_eq!(
            issuer.review(store, "not-a-jwt", &audiences, now),
            Err(Rejection::NotOurs)
        );
        // The account deleted and made again: its old tokens name a uid that is gone.
        let options = crate::api::objects::DeleteOptions::default();
        cluster.delete("core/serviceaccounts", &key("builder"), &options);
        assert!(issuer.authenticate(store, &token).is_none());
        account(&cluster, "default", "builder");
        assert!(matches!(
            issuer.review(store, &token, &audiences, now),
            Err(Rejection::Invalid(message)) if message.starts_with("service account UID")
        ));
    }

    #[test]
    fn a_pod_bound_token_ends_with_its_pod() {
        let cluster = TestCluster::new();
        let default_account = cluster
            .get("core/serviceaccounts", &key("default"))
            .expect("every namespace has a default service account");
        let sa = ObjectRef {
            name: "default".into(),
            uid: default_account["metadata"]["uid"].as_str().unwrap().into(),
        };
        let pod = cluster.create("core/pods", bare_pod("web", json!({})));
        let pod_ref = ObjectRef {
            name: "web".into(),
            uid: pod["metadata"]["uid"].as_str().unwrap().into(),
        };
        let issuer = &cluster.api().auth.service_accounts;
        let mut bound = grant("default", sa, &[issuer.issuer()]);
        bound.pod = Some(pod_ref.clone());
        bound.node = Some(ObjectRef {
            name: "pi-1".into(),
            uid: "node-uid".into(),
        });
        let token = issuer.sign(&bound, unix_now()).unwrap();
        let store = &cluster.api().store;
        let user = issuer.authenticate(store, &token).unwrap();
        assert_eq!(user.extra[EXTRA_POD_NAME], ["web"]);
        assert_eq!(user.extra[EXTRA_POD_UID], [pod_ref.uid.as_str()]);
        assert_eq!(user.extra[EXTRA_NODE_NAME], ["pi-1"]);
        assert_eq!(user.extra[EXTRA_NODE_UID], ["node-uid"]);
        // Deleted (no node runs it, so it goes at once): the token is invalidated.
        let options = crate::api::objects::DeleteOptions::default();
        cluster.delete("core/pods", &key("web"), &options);
        assert_eq!(
            issuer.review(store, &token, &issuer.api_audiences(), unix_now()),
            Err(Rejection::Invalid(
                "service account token has been invalidated".into()
            ))
        );
    }

    #[test]
    fn service_account_user_names_split() {
        assert_eq!(
            split_user_name("system:serviceaccount:ns:sa"),
            Some(("ns", "sa"))
        );
        assert_eq!(split_user_name("system:serviceaccount:ns"), None);
        assert_eq!(split_user_name("alice"), None);
    }
}
