//! Pod Security admission: the Pod Security Standards enforced, audited and warned about per
//! namespace, as upstream's `PodSecurity` admission plugin (`pod-security-admission`).
//!
//! A namespace chooses its levels with the `pod-security.kubernetes.io/{enforce,audit,warn}`
//! labels (and `-version` ones) on top of the cluster's defaults (`--pod-security-*` flags,
//! upstream's `PodSecurityConfiguration`). It runs after defaults and validation, like
//! upstream's validating plugin, on the typed pod (k8s-openapi), so odd JSON is refused by the
//! structural check before and never reaches a check:
//!
//! ```text
//!  pods (create; update that changes images or containers) ─► enforce ─► 403 `violates PodSecurity`
//!                                                            ├► audit ──► a log line (no audit log)
//!                                                            └► warn ───► `Warning: would violate …`
//!  pod controllers' templates (create, update) ─────────────► audit and warn only, never refused
//!  namespaces: labels checked (422 on create); a new enforce level dry-runs the pods already there
//! ```
//!
//! Bramble's controllers create pods through the same path with no user, so a ReplicaSet in a
//! restricted namespace is refused like anyone and records upstream's `FailedCreate` event.

pub mod checks;
mod namespace;
pub mod policy;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::resources::Resource;
use checks::{evaluate, Outcome, PodView};
use policy::{aggregate_errors, policy_to_evaluate, Level, LevelVersion, Policy};

/// Upstream's `PodSecurityConfiguration`: the policy of namespaces without labels, and who and
/// what is never evaluated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Levels and versions where a namespace has no label (upstream: privileged, latest).
    pub defaults: Policy,
    /// Exempt requests are admitted without evaluation.
    pub exemptions: Exemptions,
}

/// Requests never evaluated, by exact match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// Authenticated (or impersonated) user names.
    pub usernames: Vec<String>,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// `spec.runtimeClassName`s.
    pub runtime_classes: Vec<String>,
}

impl Configuration {
    /// The configuration `bramble master`'s `--pod-security-*` options give (clap has checked
    /// each value; one it had not would mean upstream's default).
    pub fn from_args(args: &protocol::command_line::PodSecurityArgs) -> Configuration {
        use policy::Version;
        let mode = |level: &str, version: &str| LevelVersion {
            level: Level::parse(level).unwrap_or(Level::Privileged),
            version: Version::parse(version).unwrap_or(Version::Latest),
        };
        Configuration {
            defaults: Policy {
                enforce: mode(
                    &args.pod_security_enforce,
                    &args.pod_security_enforce_version,
                ),
                audit: mode(&args.pod_security_audit, &args.pod_security_audit_version),
                warn: mode(&args.pod_security_warn, &args.pod_security_warn_version),
            },
            exemptions: Exemptions {
                usernames: args.pod_security_exempt_users.clone(),
                namespaces: args.pod_security_exempt_namespaces.clone(),
                runtime_classes: args.pod_security_exempt_runtime_classes.clone(),
            },
        }
    }

    fn exempt_namespace(&self, namespace: &str) -> bool {
        !namespace.is_empty() && self.exemptions.namespaces.iter().any(|n| n == namespace)
    }

    fn exempt_user(&self, user: Option<&str>) -> bool {
        user.is_some_and(|u| !u.is_empty() && self.exemptions.usernames.iter().any(|n| n == u))
    }

    fn exempt_runtime_class(&self, class: Option<&str>) -> bool {
        class.is_some_and(|c| {
            !c.is_empty() && self.exemptions.runtime_classes.iter().any(|n| n == c)
        })
    }
}

/// Create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A change to a stored object.
    Update,
}

/// What admission knows of a request besides the object.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Create or update.
    pub operation: Operation,
    /// Who asks; `None` for the master's own controllers (never exempt by name).
    pub user: Option<&'a str>,
    /// `status`, `scale`, `finalize`... or `None` for the object itself.
    pub subresource: Option<&'a str>,
    /// The object's name (a generated name is already chosen).
    pub name: &'a str,
    /// The request's namespace: the object's, or for a namespace update its own name, and
    /// empty for a namespace create (upstream's request attributes: `POST /namespaces` names
    /// no namespace, so exemptions do not apply to it).
    pub namespace: &'a str,
}

/// Audit annotations, upstream's keys without the `pod-security.kubernetes.io/` prefix.
type Annotations = BTreeMap<&'static str, String>;

/// Pod subresources upstream never evaluates (`ephemeralcontainers` and others are).
const IGNORED_POD_SUBRESOURCES: &[&str] = &[
    "exec",
    "attach",
    "binding",
    "eviction",
    "log",
    "portforward",
    "proxy",
    "status",
];

/// Pod Security admission for a create or update: `Ok` with the warnings for the client, or
/// the refusal (403 for a pod that violates the enforced level, 422 for bad namespace labels).
pub fn admit(
    state: &ApiState,
    resource: &Resource,
    request: &Request,
    object: &Value,
    old: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let config = &state.cluster.pod_security;
    let mut annotations = Annotations::new();
    let result = match (resource.group, resource.kind) {
        ("", "Namespace") => namespace::admit(state, config, request, object, old),
        ("", "Pod") => admit_pod(state, config, request, object, old, &mut annotations),
        (group, kind) if template_path(group, kind).is_some() => {
            admit_controller(state, config, resource, request, object, &mut annotations)
        }
        _ => return Ok(Vec::new()),
    };
    record_audit(resource, request, &annotations);
    result
}

/// Where the pod template of a pod controller is.
fn template_path(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("", "ReplicationController")
        | ("apps", "ReplicaSet")
        | ("apps", "Deployment")
        | ("apps", "StatefulSet")
        | ("apps", "DaemonSet")
        | ("batch", "Job") => Some("/spec/template"),
        ("", "PodTemplate") => Some("/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The labels of a stored namespace: `Err` when it cannot be read (500, as upstream's
/// `failed to lookup namespace`).
fn namespace_labels(
    state: &ApiState,
    namespace: &str,
) -> Result<Option<serde_json::Map<String, Value>>, String> {
    match state.store.get("core/namespaces", "", namespace) {
        Ok(Some(ns)) => Ok(ns
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()),
        Ok(None) => Err(format!("namespaces \"{namespace}\" not found")),
        Err(error) => Err(protocol::error::error_chain(&error)),
    }
}

fn admit_pod(
    state: &ApiState,
    config: &Configuration,
    request: &Request,
    object: &Value,
    old: Option<&Value>,
    annotations: &mut Annotations,
) -> Result<Vec<String>, ApiError> {
    if request
        .subresource
        .is_some_and(|s| IGNORED_POD_SUBRESOURCES.contains(&s))
    {
        return Ok(Vec::new());
    }
    if config.exempt_namespace(request.namespace) {
        annotations.insert("exempt", "namespace".into());
        return Ok(Vec::new());
    }
    if config.exempt_user(request.user) {
        annotations.insert("exempt", "user".into());
        return Ok(Vec::new());
    }
    let labels = namespace_labels(state, request.namespace).map_err(|error| {
        annotations.insert(
            "error",
            format!(
                "Internal error occurred: failed to lookup namespace \"{}\": {error}",
                request.namespace
            ),
        );
        ApiError::internal(format!(
            "failed to lookup namespace \"{}\"",
            request.namespace
        ))
    })?;
    let (policy, errors) = policy_to_evaluate(labels.as_ref(), &config.defaults);
    if errors.is_empty() && policy.fully_privileged() {
        annotations.insert(
            "enforce-policy",
            LevelVersion::PRIVILEGED_LATEST.to_string(),
        );
        return Ok(Vec::new());
    }
    let pod =
        Pod::deserialize(object).map_err(|_| ApiError::bad_request("failed to decode pod"))?;
    if request.operation == Operation::Update {
        let old_pod = old
            .map(Pod::deserialize)
            .transpose()
            .ok()
            .flatten()
            .ok_or_else(|| ApiError::bad_request("failed to decode old pod"))?;
        if !significant_pod_update(&pod, &old_pod) {
            return Ok(Vec::new());
        }
    }
    let spec = pod.spec.unwrap_or_default();
    let pod_annotations = pod.metadata.annotations.unwrap_or_default();
    evaluate_pod(
        config,
        &policy,
        &errors,
        &pod_annotations,
        &spec,
        Some(request.name),
        annotations,
    )
}

fn admit_controller(
    state: &ApiState,
    config: &Configuration,
    resource: &Resource,
    request: &Request,
    object: &Value,
    annotations: &mut Annotations,
) -> Result<Vec<String>, ApiError> {
    if request.subresource.is_some() {
        return Ok(Vec::new());
    }
    if config.exempt_namespace(request.namespace) {
        annotations.insert("exempt", "namespace".into());
        return Ok(Vec::new());
    }
    if config.exempt_user(request.user) {
        annotations.insert("exempt", "user".into());
        return Ok(Vec::new());
    }
    // Nothing here ever refuses a controller: problems only become audit annotations.
    let labels = match namespace_labels(state, request.namespace) {
        Ok(labels) => labels,
        Err(error) => {
            annotations.insert(
                "error",
                format!(
                    "failed to lookup namespace \"{}\": {error}",
                    request.namespace
                ),
            );
            return Ok(Vec::new());
        }
    };
    let (policy, errors) = policy_to_evaluate(labels.as_ref(), &config.defaults);
    if errors.is_empty()
        && policy.warn.level == Level::Privileged
        && policy.audit.level == Level::Privileged
    {
        return Ok(Vec::new());
    }
    let path = template_path(resource.group, resource.kind).unwrap_or_default();
    let Some(template) = object.pointer(path) else {
        return Ok(Vec::new());
    };
    let template = match PodTemplateSpec::deserialize(template) {
        Ok(template) => template,
        Err(error) => {
            annotations.insert("error", format!("failed to extract pod template: {error}"));
            return Ok(Vec::new());
        }
    };
    let spec = template.spec.unwrap_or_default();
    let pod_annotations = template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    evaluate_pod(
        config,
        &policy,
        &errors,
        &pod_annotations,
        &spec,
        None,
        annotations,
    )
}

/// Upstream's `EvaluatePod`: with `enforce_name` (pods) the enforced level may refuse with a
/// 403 naming the pod; then audit; then, unless refused, warn. Results are shared between
/// modes with the same level and version.
fn evaluate_pod(
    config: &Configuration,
    policy: &Policy,
    policy_errors: &[crate::admission::FieldError],
    pod_annotations: &BTreeMap<String, String>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    enforce_name: Option<&str>,
    annotations: &mut Annotations,
) -> Result<Vec<String>, ApiError> {
    if config.exempt_runtime_class(spec.runtime_class_name.as_deref()) {
        annotations.insert("exempt", "runtimeClass".into());
        return Ok(Vec::new());
    }
    if !policy_errors.is_empty() {
        annotations.insert(
            "error",
            format!(
                "Failed to parse policy: {}",
                aggregate_errors(policy_errors)
            ),
        );
    }
    let view = PodView::new(pod_annotations, spec);
    let mut cache: Vec<(LevelVersion, Outcome)> = Vec::new();
    let mut outcome_of = |level_version: LevelVersion| -> Outcome {
        if let Some((_, outcome)) = cache.iter().find(|(lv, _)| *lv == level_version) {
            return outcome.clone();
        }
        let outcome = evaluate(level_version, &view);
        cache.push((level_version, outcome.clone()));
        outcome
    };
    let mut refusal = None;
    if let Some(name) = enforce_name {
        annotations.insert("enforce-policy", policy.enforce.to_string());
        let outcome = outcome_of(policy.enforce);
        if !outcome.allowed() {
            let pods = crate::resources::by_kind("", "Pod").expect("pods are served");
            refusal = Some(ApiError::forbidden_object(
                pods,
                name,
                &format!(
                    "violates PodSecurity \"{}\": {}",
                    policy.enforce,
                    outcome.forbidden_detail()
                ),
            ));
        }
    }
    let audit = outcome_of(policy.audit);
    if !audit.allowed() {
        annotations.insert(
            "audit-violations",
            format!(
                "would violate PodSecurity \"{}\": {}",
                policy.audit,
                audit.forbidden_detail()
            ),
        );
    }
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    let warn = outcome_of(policy.warn);
    if warn.allowed() {
        return Ok(Vec::new());
    }
    Ok(vec![format!(
        "would violate PodSecurity \"{}\": {}",
        policy.warn,
        warn.forbidden_detail()
    )])
}

/// Whether a pod update can change what Pod Security sees: containers added or removed, an
/// image changed, an ephemeral container added or its image changed. Other fields of a pod
/// that matter cannot change after creation.
fn significant_pod_update(pod: &Pod, old: &Pod) -> bool {
    let empty = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let old_spec = old.spec.as_ref().unwrap_or(&empty);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let old_init = old_spec.init_containers.as_deref().unwrap_or_default();
    if spec.containers.len() != old_spec.containers.len() || init.len() != old_init.len() {
        return true;
    }
    let images_differ = spec
        .containers
        .iter()
        .zip(&old_spec.containers)
        .chain(init.iter().zip(old_init))
        .any(|(new, old)| new.image != old.image);
    if images_differ {
        return true;
    }
    let old_ephemeral = old_spec.ephemeral_containers.as_deref().unwrap_or_default();
    spec.ephemeral_containers.iter().flatten().any(|c| {
        match old_ephemeral.iter().find(|o| o.name == c.name) {
            None => true,
            Some(old) => old.image != c.image,
        }
    })
}

/// Bramble has no audit log: what upstream would annotate the audit event with is logged,
/// at info when something was found (violations, errors), at debug otherwise.
fn record_audit(resource: &Resource, request: &Request, annotations: &Annotations) {
    if annotations.is_empty() {
        return;
    }
    let text: Vec<String> = annotations
        .iter()
        .map(|(key, value)| format!("{}{key}={}", policy::LABEL_PREFIX, policy::go_quote(value)))
        .collect();
    let text = text.join(" ");
    let notable = annotations.contains_key("audit-violations") || annotations.contains_key("error");
    if notable {
        tracing::info!(
            resource = resource.plural,
            namespace = request.namespace,
            name = request.name,
            user = request.user.unwrap_or_default(),
            "pod security audit: {text}"
        );
    } else {
        tracing::debug!(
            resource = resource.plural,
            namespace = request.namespace,
            name = request.name,
            "pod security audit: {text}"
        );
    }
}

#[cfg(test)]
mod tests;
