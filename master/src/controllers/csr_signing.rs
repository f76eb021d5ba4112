//! The CSR signer and cleaner: approved requests for `kubernetes.io/kube-apiserver-client`
//! get a client certificate from the cluster CA (upstream's `csrsigning` controller); finished
//! and abandoned requests are deleted (upstream's `csrcleaner`).
//!
//! Requests whose usages a client certificate cannot have get a `Failed` condition
//! (`SignerValidationFailure`), as upstream. The cleaner deletes denied and failed requests an
//! hour after that and pending ones after a day, as upstream; but an issued request stays
//! until its certificate expires (upstream: an hour after approval), because it is the
//! cluster's only record of who holds a certificate: `bramble user list` and `revoke` read it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::view::{Key, View};
use super::{now, now_time, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::certificates::{self, KUBE_APISERVER_CLIENT, STORAGE_KEY};
use crate::pki::CertificateAuthority;
use crate::store::Change;

/// Longest certificate the signer issues (upstream's default `--cluster-signing-duration`).
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest (upstream: twice the clock skew it allows).
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// How long pending requests are kept.
const PENDING_FOR: Duration = Duration::from_secs(24 * 3600);
/// How long denied and failed requests are kept.
const FINISHED_FOR: Duration = Duration::from_secs(3600);

/// The signer of `kubernetes.io/kube-apiserver-client` and the cleaner of requests.
pub struct CsrSigningController {
    authority: Option<Arc<CertificateAuthority>>,
}

impl CsrSigningController {
    /// A signer with the cluster CA (without one, requests are approved but never issued).
    pub fn new(authority: Option<Arc<CertificateAuthority>>) -> CsrSigningController {
        CsrSigningController { authority }
    }
}

/// The lifetime a request gets: `expirationSeconds` within [10 minutes, 1 year], else a year.
pub fn lifetime(csr: &Value) -> Duration {
    match csr["spec"]["expirationSeconds"].as_u64() {
        Some(seconds) => Duration::from_secs(seconds).clamp(MIN_LIFETIME, MAX_LIFETIME),
        None => MAX_LIFETIME,
    }
}

/// Upstream's `validAPIServerClientUsages`: client auth, optionally digital signature and key
/// encipherment, nothing else.
fn check_client_usages(csr: &Value) -> Result<(), String> {
    let mut client_auth = false;
    for usage in csr["spec"]["usages"].as_array().into_iter().flatten() {
        match usage.as_str().unwrap_or_default() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !client_auth {
        return Err("missing required usage for client certificate: client auth".to_owned());
    }
    Ok(())
}

/// When a condition of `kind` was last updated.
fn condition_time(csr: &Value, kind: &str) -> Option<jiff::Timestamp> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["lastUpdateTime"].as_str())
        .and_then(|t| t.parse().ok())
}

/// When the issued certificate expires.
fn certificate_expiry(csr: &Value) -> Option<jiff::Timestamp> {
    let pem = certificates::issued_certificate(csr)?;
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem).next()?.ok()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&block.contents).ok()?;
    jiff::Timestamp::from_second(certificate.validity().not_after.timestamp()).ok()
}

/// When the cleaner deletes the request.
fn deadline(csr: &Value) -> Option<jiff::Timestamp> {
    let after = |at: Option<jiff::Timestamp>, keep: Duration| {
        at.and_then(|at| {
            at.checked_add(jiff::SignedDuration::try_from(keep).ok()?)
                .ok()
        })
    };
    if certificates::issued_certificate(csr).is_some() {
        return certificate_expiry(csr);
    }
    if certificates::has_condition(csr, "Denied") {
        return after(condition_time(csr, "Denied"), FINISHED_FOR);
    }
    if certificates::has_condition(csr, "Failed") {
        return after(condition_time(csr, "Failed"), FINISHED_FOR);
    }
    if csr["status"]["conditions"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        let created = csr["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok());
        return after(created, PENDING_FOR);
    }
    None
}

impl CsrSigningController {
    /// Signs an approved request, or fails it; `Ok(true)` when it wrote something.
    fn sign(&self, ctx: &Context, csr: &Value) -> Result<bool, ApiError> {
        let wanted = csr["spec"]["signerName"] == KUBE_APISERVER_CLIENT
            && certificates::is_approved(csr)
            && !certificates::has_condition(csr, "Failed")
            && certificates::issued_certificate(csr).is_none();
        let Some(authority) = self.authority.as_ref().filter(|_| wanted) else {
            return Ok(false);
        };
        let name = csr["metadata"]["name"].as_str().unwrap_or_default();
        let issued = check_client_usages(csr)
            .and_then(|()| certificates::request_der(csr))
            .and_then(|der| {
                authority
                    .sign_client_certificate(&der, now(), lifetime(csr))
                    .map_err(|e| protocol::error::error_chain(&e))
            });
        let uid = csr["metadata"]["uid"].clone();
        ctx.update_status(STORAGE_KEY, "", name, |current| {
            if current["metadata"]["uid"] != uid {
                return Err(ApiError::conflict(
                    crate::controllers::resource_of(STORAGE_KEY),
                    name,
                    "the request was replaced",
                ));
            }
            match &issued {
                Ok(pem) => {
                    current["status"]["certificate"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(pem));
                }
                Err(why) => {
                    if !current["status"]["conditions"].is_array() {
                        current["status"]["conditions"] = json!([]);
                    }
                    if let Some(conditions) = current["status"]["conditions"].as_array_mut() {
                        let at = now_time();
                        conditions.push(json!({
                            "type": "Failed",
                            "status": "True",
                            "reason": "SignerValidationFailure",
                            "message": why,
                            "lastUpdateTime": at,
                            "lastTransitionTime": at,
                        }));
                    }
                }
            }
            Ok(())
        })?;
        Ok(true)
    }
}

impl Reconciler for CsrSigningController {
    fn name(&self) -> &'static str {
        "csrsigning-controller"
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        if change.resource == STORAGE_KEY {
            vec![(String::new(), change.name.clone())]
        } else {
            Vec::new()
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list(STORAGE_KEY)
            .map(|csr| super::key_of(csr))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        // Read from the store: signing twice would issue two certificates.
        let Some(csr) = ctx.get(STORAGE_KEY, "", &key.1)? else {
            return Ok(Action::Done);
        };
        if self.sign(ctx, &csr)? {
            return Ok(Action::Done); // the write brings the request back
        }
        let Some(deadline) = deadline(&csr) else {
            return Ok(Action::Done);
        };
        let left = deadline.duration_since(now());
        if left.is_positive() {
            // Certificates live up to a year: look again at least daily.
            let wait = Duration::try_from(left).unwrap_or_default();
            return Ok(Action::RequeueAfter(wait.min(PENDING_FOR)));
        }
        let options = DeleteOptions {
            precondition_uid: csr["metadata"]["uid"].as_str().map(str::to_owned),
            ..DeleteOptions::default()
        };
        match ctx.delete(STORAGE_KEY, "", &key.1, &options) {
            Ok(()) => Ok(Action::Done),
            Err(e) if e.code == 404 || e.code == 409 => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::tests::{csr, request_pem};
    use crate::controllers::testing::TestCluster;
    use x509_parser::prelude::*;

    fn key(name: &str) -> Key {
        (String::new(), name.to_owned())
    }

    fn approve(cluster: &TestCluster, name: &str) {
        crate::api::objects::update_object(
            cluster.api(),
            crate::controllers::resource_of(STORAGE_KEY),
            "",
            name,
            crate::api::objects::Part::Approval,
            false,
            |current| {
                let mut next = current.clone();
                next["status"]["conditions"] = json!([{
                    "type": "Approved", "status": "True", "reason": "Test",
                }]);
                Ok(next)
            },
        )
        .unwrap();
    }

    fn authority() -> (Arc<CertificateAuthority>, String) {
        let dir = tempfile::tempdir().unwrap();
        let credentials =
            crate::pki::ensure_credentials(dir.path(), &["localhost".into()]).unwrap();
        let authority = CertificateAuthority::load(dir.path()).unwrap();
        (Arc::new(authority), credentials.ca_pem)
    }

    #[tokio::test(start_paused = true)]
    async fn approved_requests_get_a_client_certificate_from_the_ca() {
        let cluster = TestCluster::new();
        let (authority, ca_pem) = authority();
        let controller = CsrSigningController::new(Some(authority));
        cluster.create(STORAGE_KEY, csr("alice", &request_pem("alice", &["team"])));
        assert_eq!(cluster.queued(&controller), [key("alice")]);
        cluster.reconcile(&controller, &key("alice"));
        let pending = cluster.get(STORAGE_KEY, &key("alice")).unwrap();
        assert!(
            pending["status"].get("certificate").is_none(),
            "not approved yet"
        );

        approve(&cluster, "alice");
        cluster.reconcile(&controller, &key("alice"));
        let issued = cluster.get(STORAGE_KEY, &key("alice")).unwrap();
        let pem = certificates::issued_certificate(&issued).expect("a certificate");
        let (_, block) = parse_x509_pem(&pem).unwrap();
        let certificate = block.parse_x509().unwrap();
        let names = |name: &X509Name, f: fn(&X509Name) -> Vec<String>| f(name);
        let common_names = |n: &X509Name| {
            n.iter_common_name()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let organizations = |n: &X509Name| {
            n.iter_organization()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(certificate.subject(), common_names), ["alice"]);
        assert_eq!(names(certificate.subject(), organizations), ["team"]);
        assert_eq!(names(certificate.issuer(), common_names), ["bramble-ca"]);
        let usage = certificate.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && !usage.server_auth);
        assert!(!certificate.is_ca());
        // Chains to the CA: its key verifies the signature.
        let (_, ca_block) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let ca = ca_block.parse_x509().unwrap();
        certificate
            .verify_signature(Some(ca.public_key()))
            .expect("signed by the cluster CA");
        // expirationSeconds 3600: an hour from now; valid from 2000 for Pis without a clock.
        let not_after = certificate.validity().not_after.timestamp();
        assert_eq!(not_after, now().as_second() + 3600);
        assert_eq!(certificate.validity().not_before.timestamp(), 946_684_800);

        // Signed once: reconciling again changes nothing.
        let version = issued["metadata"]["resourceVersion"].clone();
        cluster.reconcile(&controller, &key("alice"));
        assert_eq!(
            cluster.get(STORAGE_KEY, &key("alice")).unwrap()["metadata"]["resourceVersion"],
            version
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_usages_fail_and_lifetimes_are_bounded() {
        let cluster = TestCluster::new();
        let controller = CsrSigningController::new(Some(authority().0));
        let mut server = csr("web", &request_pem("web", &[]));
        server["spec"]["usages"] = json!(["server auth", "client auth"]);
        cluster.create(STORAGE_KEY, server);
        approve(&cluster, "web");
        cluster.reconcile(&controller, &key("web"));
        let failed = cluster.get(STORAGE_KEY, &key("web")).unwrap();
        assert!(certificates::issued_certificate(&failed).is_none());
        let condition = &failed["status"]["conditions"][1];
        assert_eq!(
            (
                &condition["type"],
                &condition["reason"],
                &condition["message"]
            ),
            (
                &json!("Failed"),
                &json!("SignerValidationFailure"),
                &json!("invalid usage for client certificate: server auth")
            )
        );

        assert_eq!(lifetime(&json!({"spec": {}})), MAX_LIFETIME);
        assert_eq!(
            lifetime(&json!({"spec": {"expirationSeconds": 10 * 365 * 24 * 3600}})),
            MAX_LIFETIME
        );
        assert_eq!(
            lifetime(&json!({"spec": {"expirationSeconds": 7200}})),
            Duration::from_secs(7200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cleaner_removes_failed_requests_after_an_hour_and_pending_after_a_day() {
        let cluster = TestCluster::new();
        let controller = CsrSigningController::new(Some(authority().0));
        let mut server = csr("web", &request_pem("web", &[]));
        server["spec"]["usages"] = json!(["server auth"]);
        cluster.create(STORAGE_KEY, server);
        approve(&cluster, "web");
        cluster.reconcile(&controller, &key("web"));
        assert_eq!(
            cluster.reconcile(&controller, &key("web")),
            Action::RequeueAfter(FINISHED_FOR)
        );
        tokio::time::advance(FINISHED_FOR).await;
        assert_eq!(cluster.reconcile(&controller, &key("web")), Action::Done);
        assert!(cluster.get(STORAGE_KEY, &key("web")).is_none());

        cluster.create(STORAGE_KEY, csr("idle", &request_pem("idle", &[])));
        assert!(matches!(
            cluster.reconcile(&controller, &key("idle")),
            Action::RequeueAfter(_)
        ));
        tokio::time::advance(PENDING_FOR).await;
        cluster.reconcile(&controller, &key("idle"));
        assert!(cluster.get(STORAGE_KEY, &key("idle")).is_none());
    }
}
