//! The CSR API (`certificates.k8s.io/v1` CertificateSigningRequest) as the server handles it:
//! the requester written into the spec, validation, the `approval` and `status` subresources,
//! and who may approve or sign, as upstream's registry strategy, validation and certificate
//! admission plugins (approval, signing, subject restriction).
//!
//! ```text
//!   create ──► Pending ──PUT approval (verb approve on signers/<signerName>)──► Approved
//!                 │                                                              │ signer controller
//!                 └──────────────PUT approval──► Denied         Failed ◄─────────┤ (bad request)
//!                                                                                ▼
//!                                                          status.certificate (PEM): Issued
//! ```

use base64::Engine;
use serde_json::{json, Value};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::admission::{FieldError, FieldErrorKind};
use crate::api::error::ApiError;
use crate::api::objects::Part;
use crate::api::ApiState;
use crate::auth::{RequestAttributes, UserInfo, MASTERS};
use crate::resources::Resource;

/// The API group of CertificateSigningRequests.
pub const GROUP: &str = "certificates.k8s.io";
/// The kind.
pub const KIND: &str = "CertificateSigningRequest";
/// Storage key of CertificateSigningRequests.
pub const STORAGE_KEY: &str = "certificates.k8s.io/certificatesigningrequests";
/// The signer of client certificates for the API server, the one bramble signs for.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The signer name v1 refuses (v1beta1's default).
const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// Key usages a request may ask for (upstream's `allValidUsages`).
const VALID_USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// Whether `resource` is the CertificateSigningRequest resource.
pub fn is_csr(resource: &Resource) -> bool {
    resource.group == GROUP && resource.kind == KIND
}

/// The DER bytes of the request in `spec.request` (base64 of PEM, as JSON carries `[]byte`),
/// with its signature checked. The error says what upstream's `ParseCSR` and
/// `CheckSignature` say.
pub fn request_der(csr: &Value) -> Result<Vec<u8>, String> {
    let encoded = csr["spec"]["request"].as_str().unwrap_or_default();
    let pem_bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem_bytes)
        .next()
        .and_then(Result::ok)
        .filter(|block| block.label == "CERTIFICATE REQUEST")
        .ok_or("PEM block type must be CERTIFICATE REQUEST")?;
    let (_, request) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("asn1: structure error: {e}"))?;
    request
        .verify_signature()
        .map_err(|_| "x509: signature of the certificate request does not verify".to_owned())?;
    Ok(block.contents)
}

/// The organizations (groups) of a DER request's subject.
pub fn request_organizations(der: &[u8]) -> Vec<String> {
    let Ok((_, request)) = X509CertificationRequest::from_der(der) else {
        return Vec::new();
    };
    request
        .certification_request_info
        .subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect()
}

/// The conditions of a request of `kind` (`Approved`, `Denied`, `Failed`).
fn conditions_of<'a>(csr: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |c| c["type"] == kind)
}

/// Whether the request has a condition of `kind` (any status: upstream allows only True).
pub fn has_condition(csr: &Value, kind: &str) -> bool {
    conditions_of(csr, kind).next().is_some()
}

/// Whether the request is approved and not denied (upstream's `IsCertificateRequestApproved`).
pub fn is_approved(csr: &Value) -> bool {
    has_condition(csr, "Approved") && !has_condition(csr, "Denied")
}

/// The issued certificate (PEM), if any.
pub fn issued_certificate(csr: &Value) -> Option<Vec<u8>> {
    let encoded = csr["status"]["certificate"].as_str()?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|pem| !pem.is_empty())
}

/// Upstream's `ValidateSignerName`.
fn validate_signer_name(signer: &str, errors: &mut Vec<FieldError>) {
    let field = "spec.signerName";
    if signer.is_empty() {
        errors.push(FieldError::new(FieldErrorKind::Required, field, None, ""));
        return;
    }
    let invalid = |value: &str, detail: String| {
        FieldError::new(
            FieldErrorKind::Invalid,
            field,
            Some(value.to_owned()),
            &detail,
        )
    };
    let Some((domain, path)) = signer.split_once('/').filter(|(_, p)| !p.contains('/')) else {
        errors.push(invalid(
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .to_owned(),
        ));
        return;
    };
    if domain.len() > 253 {
        errors.push(FieldError::new(
            FieldErrorKind::TooLong,
            field,
            None,
            "may not be more than 253 bytes",
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some(bad) = labels.iter().find(|l| !crate::admission::is_dns_label(l)) {
        errors.push(invalid(
            domain,
            format!(
                "validating label \"{bad}\": {}",
                crate::admission::DNS1123_LABEL
            ),
        ));
    }
    if labels.len() < 2 {
        errors.push(invalid(
            domain,
            "should be a domain with at least two segments separated by dots".to_owned(),
        ));
    }
    if let Some(bad) = path
        .split('.')
        .find(|l| !crate::admission::is_dns_subdomain(l))
    {
        errors.push(invalid(
            path,
            format!(
                "validating label \"{bad}\": {}",
                crate::admission::DNS1123_SUBDOMAIN
            ),
        ));
    }
    if signer.len() > 253 + 253 + 63 + 1 + 1 {
        errors.push(FieldError::new(
            FieldErrorKind::TooLong,
            field,
            None,
            "may not be more than 571 bytes",
        ));
    }
}

/// `status.certificate`, when set, must be PEM CERTIFICATE blocks that parse (upstream's
/// `validateCertificate`).
fn validate_certificate(pem: &[u8]) -> Result<(), String> {
    if pem.is_empty() {
        return Ok(());
    }
    let mut blocks = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found \"{}\"",
                block.label
            ));
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        blocks += 1;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".to_owned());
    }
    Ok(())
}

/// Validation of a request on create and on every update (upstream's
/// `validateCertificateSigningRequest`; metadata is checked by the caller).
pub fn validate(csr: &Value, errors: &mut Vec<FieldError>) {
    let spec = &csr["spec"];
    if let Err(why) = request_der(csr) {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.request",
            Some("<request data>".to_owned()),
            &why,
        ));
    }
    let usages: Vec<&str> = spec["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| u.as_str().unwrap_or_default())
        .collect();
    if usages.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            "spec.usages",
            None,
            "",
        ));
    }
    let supported = VALID_USAGES
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, usage) in usages.iter().enumerate() {
        let field = format!("spec.usages[{i}]");
        if !VALID_USAGES.contains(usage) {
            errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                &field,
                Some((*usage).to_owned()),
                &format!("supported values: {supported}"),
            ));
        }
        if usages[..i].contains(usage) {
            errors.push(FieldError::new(
                FieldErrorKind::Duplicate,
                &field,
                Some((*usage).to_owned()),
                "",
            ));
        }
    }
    let signer = spec["signerName"].as_str().unwrap_or_default();
    if signer == LEGACY_UNKNOWN {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.signerName",
            Some(signer.to_owned()),
            "the legacy signerName is not allowed via this API version",
        ));
    } else {
        validate_signer_name(signer, errors);
    }
    if let Some(seconds) = spec["expirationSeconds"].as_i64() {
        if seconds < 600 {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                "spec.expirationSeconds",
                Some(seconds.to_string()),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    validate_conditions(csr, errors);
    let certificate = match csr["status"]["certificate"].as_str() {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| b"?".to_vec()),
        None => Vec::new(),
    };
    if let Err(why) = validate_certificate(&certificate) {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "status.certificate",
            Some("<certificate data>".to_owned()),
            &why,
        ));
    }
}

fn validate_conditions(csr: &Value, errors: &mut Vec<FieldError>) {
    let conditions = csr["status"]["conditions"].as_array().cloned();
    let mut seen: Vec<String> = Vec::new();
    for (i, condition) in conditions.iter().flatten().enumerate() {
        let kind = condition["type"].as_str().unwrap_or_default();
        let status = condition["status"].as_str().unwrap_or_default();
        let field = format!("status.conditions[{i}]");
        if kind.is_empty() {
            errors.push(FieldError::new(
                FieldErrorKind::Required,
                &format!("{field}.type"),
                None,
                "",
            ));
        }
        let true_only = matches!(kind, "Approved" | "Denied" | "Failed");
        let allowed: &[&str] = if true_only {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        if status.is_empty() {
            errors.push(FieldError::new(
                FieldErrorKind::Required,
                &format!("{field}.status"),
                None,
                "",
            ));
        } else if !allowed.contains(&status) {
            let values: Vec<String> = allowed.iter().map(|v| format!("\"{v}\"")).collect();
            errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                &format!("{field}.status"),
                Some(status.to_owned()),
                &format!("supported values: {}", values.join(", ")),
            ));
        }
        let other = match kind {
            "Approved" => Some("Denied"),
            "Denied" => Some("Approved"),
            _ => None,
        };
        if other.is_some_and(|other| seen.iter().any(|s| s == other)) {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                &format!("{field}.type"),
                Some(kind.to_owned()),
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
        if seen.iter().any(|s| s == kind) {
            errors.push(FieldError::new(
                FieldErrorKind::Duplicate,
                &format!("{field}.type"),
                Some(kind.to_owned()),
                "",
            ));
        }
        seen.push(kind.to_owned());
    }
}

/// What an update through `part` may not change (upstream's
/// `validateCertificateSigningRequestUpdate` with the options of each subresource).
pub fn validate_update(part: Part, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let forbidden = |detail: String| {
        FieldError::new(
            FieldErrorKind::Forbidden,
            "status.conditions",
            None,
            &detail,
        )
    };
    for kind in ["Approved", "Denied", "Failed"] {
        if conditions_of(new, kind).count() < conditions_of(old, kind).count() {
            errors.push(forbidden(format!(
                "updates may not remove a condition of type \"{kind}\""
            )));
        }
    }
    if part != Part::Approval {
        for kind in ["Approved", "Denied"] {
            let before: Vec<&Value> = conditions_of(old, kind).collect();
            let after: Vec<&Value> = conditions_of(new, kind).collect();
            if after.len() > before.len() {
                errors.push(forbidden(format!(
                    "updates may not add a condition of type \"{kind}\""
                )));
            } else if after.len() == before.len() && after != before {
                errors.push(forbidden(format!(
                    "updates may not modify a condition of type \"{kind}\""
                )));
            }
        }
    }
    if new["status"]["certificate"] != old["status"]["certificate"] {
        let detail = if part != Part::Status {
            Some("updates may not set certificate content")
        } else if issued_certificate(old).is_some() {
            Some("updates may not modify existing certificate content")
        } else {
            None
        };
        if let Some(detail) = detail {
            errors.push(FieldError::new(
                FieldErrorKind::Forbidden,
                "status.certificate",
                None,
                detail,
            ));
        }
    }
    errors
}

/// Upstream's `PrepareForCreate`: the requester is whoever asks, whatever the body says, and
/// nobody creates a request already approved.
pub fn prepare_create(csr: &mut Value, user: &UserInfo) {
    if !csr["spec"].is_object() {
        csr["spec"] = json!({});
    }
    let spec = &mut csr["spec"];
    for field in ["username", "uid", "groups", "extra"] {
        if let Some(map) = spec.as_object_mut() {
            map.remove(field);
        }
    }
    if !user.name.is_empty() {
        spec["username"] = json!(user.name);
    }
    if !user.uid.is_empty() {
        spec["uid"] = json!(user.uid);
    }
    if !user.groups.is_empty() {
        spec["groups"] = json!(user.groups);
    }
    if !user.extra.is_empty() {
        spec["extra"] = json!(user.extra);
    }
    if let Some(map) = csr.as_object_mut() {
        map.remove("status");
    }
}

/// Upstream's `PrepareForUpdate` of the object and its subresources: the spec never changes;
/// an update of the object keeps the status; `status` keeps the approval conditions;
/// `approval` keeps the certificate. Conditions get their times.
pub fn prepare_update(part: Part, current: &Value, next: &mut Value, now: &str) {
    next["spec"] = current["spec"].clone();
    match part {
        Part::Main => match current.get("status") {
            Some(status) => next["status"] = status.clone(),
            None => {
                if let Some(map) = next.as_object_mut() {
                    map.remove("status");
                }
            }
        },
        Part::Status => {
            for kind in ["Approved", "Denied"] {
                preserve_conditions(current, next, kind);
            }
        }
        Part::Approval => {
            if next["status"].is_object() {
                match current["status"].get("certificate") {
                    Some(certificate) => next["status"]["certificate"] = certificate.clone(),
                    None => {
                        if let Some(status) = next["status"].as_object_mut() {
                            status.remove("certificate");
                        }
                    }
                }
            }
        }
    }
    if part != Part::Main {
        stamp_conditions(current, next, now);
    }
}

/// Puts back the old conditions of `kind` where the new object has as many of them.
fn preserve_conditions(current: &Value, next: &mut Value, kind: &str) {
    let old: Vec<Value> = conditions_of(current, kind).cloned().collect();
    let Some(conditions) = next["status"]["conditions"].as_array_mut() else {
        return;
    };
    let positions: Vec<usize> = conditions
        .iter()
        .enumerate()
        .filter(|(_, c)| c["type"] == kind)
        .map(|(i, _)| i)
        .collect();
    if positions.len() != old.len() {
        return;
    }
    for (position, condition) in positions.into_iter().zip(old) {
        conditions[position] = condition;
    }
}

/// Upstream's `populateConditionTimestamps`: a condition without `lastUpdateTime` gets now; one
/// without `lastTransitionTime` keeps the old one of the same type and status, else now.
fn stamp_conditions(current: &Value, next: &mut Value, now: &str) {
    let old: Vec<Value> = current["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(conditions) = next["status"]["conditions"].as_array_mut() else {
        return;
    };
    for condition in conditions.iter_mut().filter(|c| c.is_object()) {
        if condition["lastUpdateTime"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            condition["lastUpdateTime"] = json!(now);
        }
        if condition["lastTransitionTime"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            let earlier = old
                .iter()
                .find(|o| o["type"] == condition["type"] && o["status"] == condition["status"])
                .and_then(|o| o["lastTransitionTime"].as_str())
                .filter(|t| !t.is_empty());
            condition["lastTransitionTime"] = json!(earlier.unwrap_or(now));
        }
    }
}

/// Whether `user` may `verb` (`approve`, `sign`) requests for `signer`: on `signers` named
/// the signer, or its domain's wildcard `example.com/*` (upstream's
/// `IsAuthorizedForSignerName`).
pub fn authorized_for_signer(state: &ApiState, user: &UserInfo, verb: &str, signer: &str) -> bool {
    let allowed = |name: &str| {
        let attributes = RequestAttributes {
            verb: verb.to_owned(),
            resource_request: true,
            api_group: GROUP.to_owned(),
            resource: "signers".to_owned(),
            name: name.to_owned(),
            ..RequestAttributes::default()
        };
        matches!(
            state.rbac.authorize(user, &attributes),
            crate::rbac::Decision::Allow
        )
    };
    if allowed(signer) {
        return true;
    }
    signer
        .split_once('/')
        .is_some_and(|(domain, _)| allowed(&format!("{domain}/*")))
}

/// The admission plugins of a create by `user`: the requester is set (strategy), and
/// `kube-apiserver-client` never signs for `system:masters` (upstream's
/// `CertificateSubjectRestriction`).
pub fn admit_create(resource: &Resource, csr: &mut Value, user: &UserInfo) -> Result<(), ApiError> {
    prepare_create(csr, user);
    if csr["spec"]["signerName"] != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let Ok(der) = request_der(csr) else {
        return Ok(()); // validation reports it
    };
    if request_organizations(&der).iter().any(|o| o == MASTERS) {
        let name = csr["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::forbidden_object(
            resource,
            name,
            &format!("use of {KUBE_APISERVER_CLIENT} signer with {MASTERS} group is not allowed"),
        ));
    }
    Ok(())
}

/// The admission plugins of an update by `user` through `subresource`: `approval` needs verb
/// `approve` on the signer, a `status` update that changes the certificate needs `sign`
/// (upstream's `CertificateApproval` and `CertificateSigning`).
pub fn admit_update(
    state: &ApiState,
    resource: &Resource,
    user: &UserInfo,
    subresource: Option<&str>,
    current: &Value,
    requested: &Value,
) -> Result<(), ApiError> {
    let signer = current["spec"]["signerName"].as_str().unwrap_or_default();
    let name = current["metadata"]["name"].as_str().unwrap_or_default();
    let verb = match subresource {
        Some("approval") => "approve",
        Some("status")
            if requested["status"]["certificate"] != current["status"]["certificate"] =>
        {
            "sign"
        }
        _ => return Ok(()),
    };
    if authorized_for_signer(state, user, verb, signer) {
        return Ok(());
    }
    Err(ApiError::forbidden_object(
        resource,
        name,
        &format!("user not permitted to {verb} requests with signerName \"{signer}\""),
    ))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A PEM request for `subject` made with a fresh key (rcgen, as `bramble user add`).
    pub fn request_pem(common_name: &str, organizations: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        for o in organizations {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// A CertificateSigningRequest object for `request_pem`.
    pub fn csr(name: &str, request_pem: &str) -> Value {
        json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
                "signerName": KUBE_APISERVER_CLIENT,
                "usages": ["client auth"],
                "expirationSeconds": 3600,
            },
        })
    }

    fn messages(csr: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        validate(csr, &mut errors);
        errors.iter().map(FieldError::message).collect()
    }

    #[test]
    fn a_good_request_passes_and_bad_ones_are_refused_as_upstream() {
        let good = csr("alice", &request_pem("alice", &["team"]));
        assert_eq!(messages(&good), Vec::<String>::new());

        let mut not_a_request = good.clone();
        not_a_request["spec"]["request"] = json!(base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
        assert_eq!(
            messages(&not_a_request),
            ["spec.request: Invalid value: \"<request data>\": PEM block type must be CERTIFICATE REQUEST"]
        );

        // A request whose signature was made by another key.
        let pem = request_pem("alice", &[]);
        let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let mut der = block.contents.clone();
        let last = der.len() - 1;
        der[last] ^= 0xff;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let mut bad_signature = good.clone();
        bad_signature["spec"]["request"] =
            json!(base64::engine::general_purpose::STANDARD.encode(tampered));
        let found = messages(&bad_signature);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("signature"), "{found:?}");

        let mut bad = good.clone();
        bad["spec"]["signerName"] = json!("");
        bad["spec"]["usages"] = json!(["client auth", "flying", "client auth"]);
        bad["spec"]["expirationSeconds"] = json!(599);
        let found = messages(&bad);
        assert_eq!(found[0], "spec.usages[1]: Unsupported value: \"flying\": supported values: \"any\", \"cert sign\", \"client auth\", \"code signing\", \"content commitment\", \"crl sign\", \"data encipherment\", \"decipher only\", \"digital signature\", \"email protection\", \"encipher only\", \"ipsec end system\", \"ipsec tunnel\", \"ipsec user\", \"key agreement\", \"key encipherment\", \"microsoft sgc\", \"netscape sgc\", \"ocsp signing\", \"s/mime\", \"server auth\", \"signing\", \"timestamping\"");
        assert_eq!(
            found[1..],
            [
                "spec.usages[2]: Duplicate value: \"client auth\"",
                "spec.signerName: Required value",
                "spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 600 seconds (10 minutes)",
            ]
        );

        let mut no_usages = good.clone();
        no_usages["spec"]["usages"] = json!([]);
        no_usages["spec"]["signerName"] = json!("example");
        assert_eq!(
            messages(&no_usages),
            [
                "spec.usages: Required value",
                "spec.signerName: Invalid value: \"example\": must be a fully qualified domain and path of the form 'example.com/signer-name'",
            ]
        );
        let mut one_label = good.clone();
        one_label["spec"]["signerName"] = json!("example/signer");
        assert_eq!(
            messages(&one_label),
            ["spec.signerName: Invalid value: \"example\": should be a domain with at least two segments separated by dots"]
        );
    }

    #[test]
    fn conditions_are_checked_and_approval_is_only_for_the_approval_subresource() {
        let pending = csr("alice", &request_pem("alice", &[]));
        let mut both = pending.clone();
        both["status"] = json!({"conditions": [
            {"type": "Approved", "status": "True"},
            {"type": "Denied", "status": "False"},
        ]});
        assert_eq!(
            messages(&both),
            [
                "status.conditions[1].status: Unsupported value: \"False\": supported values: \"True\"",
                "status.conditions[1].type: Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive",
            ]
        );

        let mut approved = pending.clone();
        approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        let message = |errors: Vec<FieldError>| -> Vec<String> {
            errors.iter().map(FieldError::message).collect()
        };
        assert_eq!(
            message(validate_update(Part::Approval, &approved, &pending)),
            Vec::<String>::new()
        );
        assert_eq!(
            message(validate_update(Part::Status, &approved, &pending)),
            ["status.conditions: Forbidden: updates may not add a condition of type \"Approved\""]
        );
        assert_eq!(
            message(validate_update(Part::Approval, &pending, &approved)),
            ["status.conditions: Forbidden: updates may not remove a condition of type \"Approved\""]
        );
        let mut issued = approved.clone();
        issued["status"]["certificate"] = json!("Y2VydA==");
        assert_eq!(
            message(validate_update(Part::Approval, &issued, &approved)),
            ["status.certificate: Forbidden: updates may not set certificate content"]
        );
        assert!(validate_update(Part::Status, &issued, &approved).is_empty());
        let mut reissued = issued.clone();
        reissued["status"]["certificate"] = json!("b3RoZXI=");
        assert_eq!(
            message(validate_update(Part::Status, &reissued, &issued)),
            ["status.certificate: Forbidden: updates may not modify existing certificate content"]
        );
    }

    #[test]
    fn the_requester_comes_from_the_user_and_updates_keep_the_spec() {
        let mut request = csr("alice", &request_pem("alice", &[]));
        request["spec"]["username"] = json!("admin");
        request["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        let mut user = UserInfo::new("alice", &["team"]);
        user.extra
            .insert("scopes".into(), vec!["a".to_owned(), "b".to_owned()]);
        prepare_create(&mut request, &user);
        assert_eq!(request["spec"]["username"], "alice");
        assert_eq!(
            request["spec"]["groups"],
            json!(["team", "system:authenticated"])
        );
        assert_eq!(request["spec"]["extra"], json!({"scopes": ["a", "b"]}));
        assert!(request.get("status").is_none(), "no pre-approved requests");

        let mut changed = request.clone();
        changed["spec"]["signerName"] = json!("example.com/other");
        changed["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        prepare_update(Part::Main, &request, &mut changed, "2026-01-01T00:00:00Z");
        assert_eq!(changed["spec"], request["spec"]);
        assert!(changed.get("status").is_none());

        let mut approving = request.clone();
        approving["status"] = json!({
            "certificate": "Y2VydA==",
            "conditions": [{"type": "Approved", "status": "True", "reason": "KubectlApprove"}],
        });
        prepare_update(
            Part::Approval,
            &request,
            &mut approving,
            "2026-01-01T00:00:00Z",
        );
        assert!(approving["status"].get("certificate").is_none());
        assert_eq!(
            approving["status"]["conditions"][0]["lastUpdateTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            approving["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn approving_needs_approve_and_issuing_needs_sign_on_the_signer() {
        let cluster = crate::controllers::testing::TestCluster::new();
        let state = cluster.api();
        let resource = crate::resources::by_kind(GROUP, KIND).unwrap();
        let pending = csr("alice", &request_pem("alice", &[]));
        let mut approved = pending.clone();
        approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        let bob = UserInfo::new("bob", &[]);
        let error =
            admit_update(state, resource, &bob, Some("approval"), &pending, &approved).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(error.message, "certificatesigningrequests.certificates.k8s.io \"alice\" is forbidden: user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\"");
        let mut issued = approved.clone();
        issued["status"]["certificate"] = json!("Y2VydA==");
        let error =
            admit_update(state, resource, &bob, Some("status"), &approved, &issued).unwrap_err();
        assert!(error.message.ends_with("user not permitted to sign requests with signerName \"kubernetes.io/kube-apiserver-client\""));
        // A status update that leaves the certificate alone needs no `sign`.
        assert!(admit_update(state, resource, &bob, Some("status"), &approved, &approved).is_ok());
        let admin = UserInfo::new("admin", &[MASTERS]);
        assert!(admit_update(
            state,
            resource,
            &admin,
            Some("approval"),
            &pending,
            &approved
        )
        .is_ok());
    }

    #[test]
    fn the_api_server_client_signer_never_signs_for_system_masters() {
        let resource = crate::resources::by_kind(GROUP, KIND).unwrap();
        let mut request = csr("root", &request_pem("root", &["system:masters"]));
        let error = admit_create(resource, &mut request, &UserInfo::new("bob", &[])).unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(error.message, "certificatesigningrequests.certificates.k8s.io \"root\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed");
        let mut other_signer = csr("root", &request_pem("root", &["system:masters"]));
        other_signer["spec"]["signerName"] = json!("example.com/signer");
        assert!(admit_create(resource, &mut other_signer, &UserInfo::new("bob", &[])).is_ok());
    }
}
