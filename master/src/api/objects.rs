//! The object verbs: get, list, create, update, patch, delete and deletecollection, with their subresources.
//!
//! Every write follows one path: decode the body, convert to the storage version, check it
//! against the typed API, set server-owned metadata, apply defaults, validate, then commit
//! through the store, which assigns the resourceVersion. Updates run inside the store's
//! read-modify-write, so the resourceVersion precondition is checked against what is committed.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::Response;
use serde_json::{json, Map, Value};

use super::codec::{self, IncludeObject, ResponseFormat};
use super::error::ApiError;
use super::{respond_value, ApiState, Body, Target};
use crate::admission::{self, FieldError, FieldErrorKind};
use crate::certificates;
use crate::conversion;
use crate::lifecycle;
use crate::patch;
use crate::pod_security;
use crate::resources::{self, Resource, RESOURCES};
use crate::store::{Store, StoreError};
use crate::table;
use protocol::error::error_chain;
use protocol::selector::{FieldSelector, LabelSelector};

/// One API call on a resource path.
pub struct Call {
    /// Shared server state.
    pub state: Arc<ApiState>,
    /// Who asks (after impersonation).
    pub user: Arc<crate::auth::UserInfo>,
    /// What the path names.
    pub target: Target,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
    /// How to write the response.
    pub format: ResponseFormat,
    /// The request's Content-Type.
    pub content_type: Option<String>,
    /// The request body.
    pub body: Bytes,
}

/// Runs store work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal_logged("the request's task failed", &e))?
}

/// `fieldValidation` as the request asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but the status (for resources with a status subresource).
    Main,
    /// Only the status.
    Status,
    /// Only the approval conditions of a CertificateSigningRequest (its `approval` subresource).
    Approval,
}

impl Call {
    fn resource(&self) -> &'static Resource {
        self.target.resource
    }

    fn namespace(&self) -> String {
        self.target.namespace.clone().unwrap_or_default()
    }

    fn name(&self) -> Result<String, ApiError> {
        self.target
            .name
            .clone()
            .ok_or_else(|| ApiError::method_not_allowed("a collection"))
    }

    fn check_scope(&self) -> Result<(), ApiError> {
        let resource = self.resource();
        if resource.namespaced && self.target.namespace.is_none() && self.target.name.is_some() {
            return Err(ApiError::no_route(resource.plural));
        }
        if !resource.namespaced && self.target.namespace.is_some() {
            return Err(ApiError::no_route(resource.plural));
        }
        Ok(())
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    /// Replaces `part` of the named object with what `change` makes of its current state, off
    /// the async threads (SQLite blocks).
    async fn update_stored(
        &self,
        name: String,
        part: Part,
        change: impl FnOnce(&Value) -> Result<Value, ApiError> + Send + 'static,
    ) -> Result<Admitted, ApiError> {
        let (state, resource) = (self.state.clone(), self.resource());
        let (namespace, dry_run) = (self.namespace(), self.dry_run());
        let (user, subresource) = (self.user.clone(), self.target.subresource.clone());
        let (user_name, requested_part) = (user.name.clone(), subresource.clone());
        blocking(move || {
            let requester = Requester {
                user: Some(&user_name),
                subresource: requested_part.as_deref(),
            };
            let admitted_state = state.clone();
            let change = move |current: &Value| {
                let next = change(current)?;
                crate::rbac::escalation::check(
                    &admitted_state,
                    &user,
                    resource,
                    &next,
                    Some(current),
                )?;
                if certificates::is_csr(resource) {
                    certificates::admit_update(
                        &admitted_state,
                        resource,
                        &user,
                        subresource.as_deref(),
                        current,
                        &next,
                    )?;
                }
                Ok(next)
            };
            update_object_as(
                &state, resource, &namespace, &name, part, dry_run, requester, change,
            )
        })
        .await
    }

    fn field_validation(&self) -> FieldValidation {
        match self.query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }

    fn respond(&self, code: u16, object: &Value) -> Response<Body> {
        match self.format {
            ResponseFormat::Table(include) => {
                let table = build_table(
                    self.resource(),
                    std::slice::from_ref(object),
                    include,
                    json!({}),
                );
                respond_value(code, &table, ResponseFormat::Json)
            }
            format => respond_value(code, object, format),
        }
    }

    fn respond_with_warnings(
        &self,
        code: u16,
        object: &Value,
        warnings: &[String],
    ) -> Response<Body> {
        let mut response = self.respond(code, object);
        for warning in warnings {
            let text = warning_header(warning);
            if let Ok(value) = http::HeaderValue::from_str(&text) {
                response.headers_mut().append("Warning", value);
            }
        }
        response
    }

    // ----- GET -------------------------------------------------------------------------------

    /// GET: an object, a list, a watch, or a subresource.
    pub async fn get(self) -> Result<Response<Body>, ApiError> {
        self.check_scope()?;
        let watching = self
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1" || w.is_empty());
        match (self.target.name.clone(), self.target.subresource.as_deref()) {
            (None, _) if watching => super::watch::serve(self).await,
            (None, _) => self.list().await,
            (Some(name), None) | (Some(name), Some("status")) => {
                let object = self.load(&name).await?;
                Ok(self.respond(200, &conversion::from_storage(self.resource(), object)))
            }
            (Some(name), Some("scale")) if self.resource().subresources.contains(&"scale") => {
                let object = self.load(&name).await?;
                Ok(respond_value(
                    200,
                    &conversion::scale_of(self.resource(), &object),
                    self.plain_format(),
                ))
            }
            (Some(_), Some(other)) => Err(ApiError::no_route(other)),
        }
    }

    /// The response format, with a Table request answered as JSON.
    pub fn plain_format(&self) -> ResponseFormat {
        match self.format {
            ResponseFormat::Yaml => ResponseFormat::Yaml,
            _ => ResponseFormat::Json,
        }
    }

    async fn load(&self, name: &str) -> Result<Value, ApiError> {
        let store = self.state.store.clone();
        let resource = self.resource();
        let namespace = self.namespace();
        let key = resource.storage_key();
        let name = name.to_owned();
        blocking(move || {
            store
                .get(&key, &namespace, &name)
                .map_err(|e| ApiError::from_store(e, resource, &name))?
                .ok_or_else(|| ApiError::not_found(resource, &name))
        })
        .await
    }

    /// The label and field selectors of the request.
    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(
            self.query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(
            self.query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let resource = self.resource();
        fields
            .check_fields(resource.group, resource.plural)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((labels, fields))
    }

    async fn list(self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        parse_resource_version(&self.query)?;
        let limit: usize = match self.query.get("limit") {
            Some(text) if !text.is_empty() => text
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {text}")))?
                .max(0) as usize,
            _ => 0,
        };
        let after = match self.query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let store = self.state.store.clone();
        let resource = self.resource();
        let namespace = self.target.namespace.clone();
        let everything = labels.is_everything() && fields.requirements().next().is_none();
        let continue_metadata = |revision: u64, next: &Option<(String, String)>| {
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if let Some((ns, name)) = next {
                metadata["continue"] = json!(encode_continue(ns, name, revision));
            }
            metadata
        };
        // Plain JSON of the stored version: splice the stored documents into the response
        // instead of parsing and re-encoding every object.
        if self.format == ResponseFormat::Json && resource.storage_version.is_none() {
            let page = blocking(move || {
                let filter = move |object: &Value| {
                    labels.matches_object(object) && fields.matches_object(object)
                };
                store
                    .list_raw(
                        &resource.storage_key(),
                        namespace.as_deref(),
                        after
                            .as_ref()
                            .map(|(ns, name)| (ns.as_str(), name.as_str())),
                        limit,
                        if everything { None } else { Some(&filter) },
                    )
                    .map_err(ApiError::from)
            })
            .await?;
            let head = json!({
                "kind": resource.list_kind(),
                "apiVersion": resource.api_version(),
                "metadata": continue_metadata(page.revision, &page.next),
            });
            let mut body = serde_json::to_vec(&head).unwrap_or_default();
            body.pop(); // the closing brace; items follow
            body.extend_from_slice(b",\"items\":[");
            for (index, item) in page.items.iter().enumerate() {
                if index > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.extend_from_slice(b"]}");
            return Ok(super::respond(200, "application/json", body));
        }
        let page = blocking(move || {
            let filter =
                |object: &Value| labels.matches_object(object) && fields.matches_object(object);
            store
                .list(
                    &resource.storage_key(),
                    namespace.as_deref(),
                    after
                        .as_ref()
                        .map(|(ns, name)| (ns.as_str(), name.as_str())),
                    limit,
                    &filter,
                )
                .map_err(ApiError::from)
        })
        .await?;
        let metadata = continue_metadata(page.revision, &page.next);
        let items: Vec<Value> = page
            .items
            .into_iter()
            .map(|object| conversion::from_storage(resource, object))
            .collect();
        let body = match self.format {
            ResponseFormat::Table(include) => build_table(resource, &items, include, metadata),
            format => {
                let list = json!({
                    "kind": resource.list_kind(),
                    "apiVersion": resource.api_version(),
                    "metadata": metadata,
                    "items": items,
                });
                return Ok(respond_value(200, &list, format));
            }
        };
        Ok(respond_value(200, &body, ResponseFormat::Json))
    }

    // ----- POST ------------------------------------------------------------------------------

    /// POST: create, the pod `binding` and `eviction` subresources, or a service account's `token`.
    pub async fn post(self) -> Result<Response<Body>, ApiError> {
        self.check_scope()?;
        match (self.target.name.clone(), self.target.subresource.as_deref()) {
            (None, None) => self.create().await,
            (Some(name), Some("binding")) if self.resource().kind == "Pod" => self.bind(name).await,
            (Some(name), Some("eviction")) if self.resource().kind == "Pod" => {
                self.evict(name).await
            }
            (Some(name), Some("token")) if self.resource().kind == "ServiceAccount" => {
                self.request_token(name).await
            }
            (Some(_), _) => Err(ApiError::method_not_allowed("POST on an object")),
            (None, Some(_)) => Err(ApiError::no_route(self.resource().plural)),
        }
    }

    fn decode(&self) -> Result<Value, ApiError> {
        let object = codec::decode_object(
            self.content_type.as_deref(),
            &self.body,
            self.resource().kind,
        )?;
        check_type_meta(self.resource(), object)
    }

    /// Checks the object against the typed API and applies `fieldValidation`.
    fn structure(&self, object: Value) -> Result<(Value, Vec<String>), ApiError> {
        let resource = self.resource();
        let storage = conversion::to_storage(resource, object);
        let structural = admission::check_structure(resource.group, resource.kind, &storage)
            .map_err(|error| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {}",
                    resource.kind,
                    resource.version,
                    resource.kind,
                    error.message()
                ))
            })?;
        let mut warnings = Vec::new();
        if !structural.unknown_fields.is_empty() {
            match self.field_validation() {
                FieldValidation::Strict => {
                    let fields: Vec<String> = structural
                        .unknown_fields
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        fields.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings = structural
                        .unknown_fields
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok((structural.object, warnings))
    }

    async fn create(self) -> Result<Response<Body>, ApiError> {
        let resource = self.resource();
        if resource.namespaced && self.target.namespace.is_none() {
            return Err(ApiError::no_route(resource.plural));
        }
        let object = self.decode()?;
        let object = set_namespace(resource, object, self.target.namespace.as_deref())?;
        let (mut object, warnings) = self.structure(object)?;
        if certificates::is_csr(resource) {
            certificates::admit_create(resource, &mut object, &self.user)?;
        }
        let dry_run = self.dry_run();
        let state = self.state.clone();
        let user = self.user.clone();
        let created = blocking(move || {
            crate::rbac::escalation::check(&state, &user, resource, &object, None)?;
            let requester = Requester {
                user: Some(&user.name),
                subresource: None,
            };
            create_object_as(&state, resource, object, dry_run, requester)
        })
        .await?;
        let mut warnings = warnings;
        warnings.extend(created.warnings);
        Ok(self.respond_with_warnings(
            201,
            &conversion::from_storage(resource, created.object),
            &warnings,
        ))
    }

    async fn bind(self, name: String) -> Result<Response<Body>, ApiError> {
        let binding = codec::decode_object(self.content_type.as_deref(), &self.body, "Binding")?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    "",
                    &name,
                    &[FieldError {
                        kind: FieldErrorKind::Required,
                        field: "target.name".into(),
                        value: None,
                        detail: String::new(),
                    }],
                )
            })?
            .to_owned();
        let state = self.state.clone();
        let namespace = self.namespace();
        blocking(move || bind_pod(&state, &namespace, &name, &node)).await?;
        Ok(respond_value(201, &success_status(), ResponseFormat::Json))
    }

    async fn evict(self, name: String) -> Result<Response<Body>, ApiError> {
        let eviction = codec::decode_object(self.content_type.as_deref(), &self.body, "Eviction")?;
        let state = self.state.clone();
        let namespace = self.namespace();
        let dry_run = self.dry_run();
        blocking(move || super::eviction::evict(&state, &namespace, &name, &eviction, dry_run))
            .await?;
        Ok(respond_value(201, &success_status(), ResponseFormat::Json))
    }

    /// The `token` subresource of a ServiceAccount: TokenRequest (see `auth::token_request`).
    async fn request_token(self, name: String) -> Result<Response<Body>, ApiError> {
        let request =
            codec::decode_object(self.content_type.as_deref(), &self.body, "TokenRequest")?;
        let state = self.state.clone();
        let namespace = self.namespace();
        let answer = blocking(move || {
            crate::auth::token_request::create(&state, &namespace, &name, request)
        })
        .await?;
        Ok(respond_value(201, &answer, self.plain_format()))
    }

    // ----- PUT -------------------------------------------------------------------------------

    /// PUT: replace an object, its status, or its scale.
    pub async fn put(self) -> Result<Response<Body>, ApiError> {
        self.check_scope()?;
        let name = self.name()?;
        match self.target.subresource.clone().as_deref() {
            None => {
                let object = self.decode()?;
                self.replace(name, object, Part::Main).await
            }
            Some("status") if self.resource().subresources.contains(&"status") => {
                let object = self.decode()?;
                self.replace(name, object, Part::Status).await
            }
            Some("scale") if self.resource().subresources.contains(&"scale") => {
                let scale =
                    codec::decode_object(self.content_type.as_deref(), &self.body, "Scale")?;
                self.set_scale(name, move |_| Ok(scale)).await
            }
            Some("approval") if certificates::is_csr(self.resource()) => {
                let object = self.decode()?;
                self.replace(name, object, Part::Approval).await
            }
            Some("finalize") if self.resource().kind == "Namespace" => {
                let object = self.decode()?;
                self.replace(name, object, Part::Main).await
            }
            Some(other) => Err(ApiError::no_route(other)),
        }
    }

    async fn replace(
        self,
        name: String,
        object: Value,
        part: Part,
    ) -> Result<Response<Body>, ApiError> {
        let resource = self.resource();
        let body_name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let object = set_namespace(resource, object, self.target.namespace.as_deref())?;
        let (mut object, warnings) = self.structure(object)?;
        object["metadata"]["name"] = json!(name);
        let stored = self
            .update_stored(name, part, |_current| Ok(object))
            .await?;
        let mut warnings = warnings;
        warnings.extend(stored.warnings);
        Ok(self.respond_with_warnings(
            200,
            &conversion::from_storage(resource, stored.object),
            &warnings,
        ))
    }

    async fn set_scale(
        self,
        name: String,
        make_scale: impl FnOnce(&Value) -> Result<Value, ApiError> + Send + 'static,
    ) -> Result<Response<Body>, ApiError> {
        let resource = self.resource();
        let stored = self
            .update_stored(name.clone(), Part::Main, move |current| {
                let scale = make_scale(&conversion::scale_of(resource, current))?;
                // A scale that does not decode (`"replicas": "x"`) must not scale to zero.
                serde_json::from_value::<k8s_openapi::api::autoscaling::v1::Scale>(scale.clone())
                    .map_err(|e| {
                    ApiError::bad_request(format!(
                        "Scale in version \"v1\" cannot be handled as a Scale: {e}"
                    ))
                })?;
                let wanted_version = scale
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let current_version = current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if wanted_version.is_some_and(|v| !v.is_empty())
                    && wanted_version != current_version
                {
                    return Err(ApiError::stale(resource, &name));
                }
                let replicas = scale
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "Scale",
                        "autoscaling",
                        &name,
                        &[FieldError {
                            kind: FieldErrorKind::Invalid,
                            field: "spec.replicas".into(),
                            value: Some(replicas.to_string()),
                            detail: "must be greater than or equal to 0".into(),
                        }],
                    ));
                }
                let mut next = current.clone();
                next["spec"]["replicas"] = json!(replicas);
                // The store's precondition check compares this with what is committed.
                next["metadata"]["resourceVersion"] = json!(current_version.unwrap_or_default());
                Ok(next)
            })
            .await?;
        Ok(respond_value(
            200,
            &conversion::scale_of(resource, &stored.object),
            self.plain_format(),
        ))
    }

    // ----- PATCH -----------------------------------------------------------------------------

    /// PATCH: strategic merge, JSON merge or JSON patch on an object, its status, or its scale.
    pub async fn patch(self) -> Result<Response<Body>, ApiError> {
        self.check_scope()?;
        let name = self.name()?;
        let media = codec::media_type(self.content_type.as_deref()).to_owned();
        let kind = match media.as_str() {
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            "application/merge-patch+json" => PatchKind::Merge,
            "application/json-patch+json" => PatchKind::Json,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                return Err(ApiError::unsupported_media_type(
                    "server-side apply is not supported by bramble yet; use client-side `kubectl apply` (without --server-side)",
                ))
            }
            other => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other})"
                )))
            }
        };
        if self.body.len() > codec::MAX_BODY_BYTES {
            return Err(ApiError::too_large(codec::MAX_BODY_BYTES));
        }
        let patch_document = codec::decode_json(&self.body)?;
        check_patch_document(kind, &patch_document)?;
        let resource = self.resource();
        let apply = move |target: &Value,
                          kind_name: &str,
                          group: &str|
              -> Result<Value, ApiError> {
            let result = match kind {
                PatchKind::Json => patch::apply_json_patch(target, &patch_document),
                PatchKind::Merge => patch::apply_merge_patch(target, &patch_document),
                PatchKind::Strategic => {
                    patch::apply_strategic_merge_patch(target, &patch_document, group, kind_name)
                }
            };
            let patched = result.map_err(|e| ApiError::new(422, "Invalid", error_chain(&e)))?;
            check_patched_shape(&patched)?;
            Ok(patched)
        };
        match self.target.subresource.clone().as_deref() {
            Some("scale") if resource.subresources.contains(&"scale") => {
                self.set_scale(name, move |scale| apply(scale, "Scale", "autoscaling"))
                    .await
            }
            None | Some("status") | Some("approval") => {
                let part = match self.target.subresource.as_deref() {
                    None => Part::Main,
                    Some("approval") if certificates::is_csr(resource) => Part::Approval,
                    Some("status") if resource.subresources.contains(&"status") => Part::Status,
                    Some(other) => return Err(ApiError::no_route(other)),
                };
                let validation = self.field_validation();
                let stored = self
                    .update_stored(name, part, move |current| {
                        let current_version = current.pointer("/metadata/resourceVersion").cloned();
                        let requested = conversion::from_storage(resource, current.clone());
                        let patched = apply(&requested, resource.kind, resource.group)?;
                        let patched = check_type_meta(resource, patched)?;
                        let storage = conversion::to_storage(resource, patched);
                        let structural =
                            admission::check_structure(resource.group, resource.kind, &storage)
                                .map_err(|e| patch_result_invalid(&storage, &e.message()))?;
                        if validation == FieldValidation::Strict
                            && !structural.unknown_fields.is_empty()
                        {
                            return Err(ApiError::bad_request(format!(
                                "strict decoding error: unknown field \"{}\"",
                                structural.unknown_fields.join("\", unknown field \"")
                            )));
                        }
                        let mut next = structural.object;
                        // A patch carries a precondition only if it sets resourceVersion itself.
                        if next.pointer("/metadata/resourceVersion").is_none() {
                            if let Some(version) = current_version {
                                next["metadata"]["resourceVersion"] = version;
                            }
                        }
                        Ok(next)
                    })
                    .await?;
                Ok(self.respond_with_warnings(
                    200,
                    &conversion::from_storage(resource, stored.object),
                    &stored.warnings,
                ))
            }
            Some(other) => Err(ApiError::no_route(other)),
        }
    }

    // ----- DELETE ----------------------------------------------------------------------------

    /// DELETE: one object or a collection.
    pub async fn delete(self) -> Result<Response<Body>, ApiError> {
        self.check_scope()?;
        let body = if self.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(codec::decode_json(&self.body)?)
        };
        let options = DeleteOptions::from(body.as_ref(), &self.query)?;
        let resource = self.resource();
        let state = self.state.clone();
        let namespace = self.namespace();
        match self.target.name.clone() {
            Some(name) => {
                if self.target.subresource.is_some() {
                    return Err(ApiError::method_not_allowed("DELETE on a subresource"));
                }
                let outcome =
                    blocking(move || delete_object(&state, resource, &namespace, &name, &options))
                        .await?;
                Ok(self.respond(200, &conversion::from_storage(resource, outcome)))
            }
            None => {
                if !resource.verbs().contains(&"deletecollection") {
                    return Err(ApiError::method_not_allowed(&format!(
                        "delete {}",
                        resource.plural
                    )));
                }
                let (labels, fields) = self.selectors()?;
                let all_namespaces = self.target.namespace.is_none();
                blocking(move || {
                    let filter = |o: &Value| labels.matches_object(o) && fields.matches_object(o);
                    let page = state.store.list(
                        &resource.storage_key(),
                        if all_namespaces {
                            None
                        } else {
                            Some(namespace.as_str())
                        },
                        None,
                        0,
                        &filter,
                    )?;
                    for object in page.items {
                        let ns = meta_str(&object, "namespace");
                        let name = meta_str(&object, "name");
                        match delete_object(&state, resource, &ns, &name, &options) {
                            Ok(_) => {}
                            Err(e) if e.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await?;
                Ok(respond_value(200, &success_status(), ResponseFormat::Json))
            }
        }
    }
}

/// Most operations a JSON patch may carry, as upstream (`maxJSONPatchOperations`).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Refuses patch documents upstream's decoders refuse before applying anything (400): a merge
/// patch must be an object (an array replaces the object, and fails later like upstream), a
/// strategic merge patch an object, a JSON patch a list of at most 10,000 operations (413).
fn check_patch_document(kind: PatchKind, document: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge if !document.is_object() && !document.is_array() => {
            Err(ApiError::bad_request("Invalid JSON Patch"))
        }
        PatchKind::Strategic if !document.is_object() => Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            codec::go_type(document)
        ))),
        PatchKind::Json => match document.as_array() {
            None => Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
                codec::go_type(document)
            ))),
            Some(operations) if operations.len() > MAX_JSON_PATCH_OPERATIONS => Err(ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!(
                    "Request entity too large: The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                    operations.len()
                ),
            )),
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A patched object must still be an object with object `metadata`: a patch that breaks the
/// shape (`{"metadata": "x"}`, replacing the whole document with a string) is refused and the
/// stored object stays as it was.
fn check_patched_shape(patched: &Value) -> Result<(), ApiError> {
    let Some(object) = patched.as_object() else {
        return Err(patch_result_invalid(
            patched,
            &format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                codec::go_type(patched)
            ),
        ));
    };
    match object.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(patch_result_invalid(
            patched,
            &format!(
                "json: cannot unmarshal {} into Go struct field .metadata of type v1.ObjectMeta",
                codec::go_type(other)
            ),
        )),
    }
}

/// Upstream's 422 for a patch whose result does not decode as the object's type: an invalid
/// value of the field `patch`, the patched document shown as a quoted string (shortened here).
fn patch_result_invalid(patched: &Value, why: &str) -> ApiError {
    let mut text = patched.to_string();
    if text.len() > 256 {
        let cut = (0..=256)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    let quoted = serde_json::to_string(&text).unwrap_or_default();
    let message = format!("patch: Invalid value: {quoted}: {why}");
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!(" \"\" is invalid: {message}"),
        details: Some(json!({"causes": [
            {"reason": "FieldValueInvalid", "message": format!("Invalid value: {quoted}: {why}"), "field": "patch"}
        ]})),
    }
}

#[derive(Clone, Copy)]
enum PatchKind {
    Strategic,
    Merge,
    Json,
}

fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// The `resourceVersion` a list or watch asks for: none (absent, empty or "0") or a revision;
/// anything else is a 400, as upstream's storage refuses it.
pub fn parse_resource_version(query: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: \"{text}\": strconv.ParseUint: parsing \"{text}\": invalid syntax"
            ))
        }),
    }
}

/// A string field of `metadata`, or empty.
pub fn meta_str(object: &Value, field: &str) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn not_found_as(error: ApiError, resource: &Resource, name: &str) -> ApiError {
    if error.code == 404 {
        ApiError::not_found(resource, name)
    } else {
        error
    }
}

/// Fills or checks `apiVersion` and `kind` against the endpoint.
fn check_type_meta(resource: &Resource, mut object: Value) -> Result<Value, ApiError> {
    let cannot_handle = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            resource.kind, resource.version, resource.kind
        ))
    };
    if !object.is_object() {
        return Err(cannot_handle(format!(
            "json: cannot unmarshal {} into Go value of type {}",
            codec::go_type(&object),
            resource.kind
        )));
    }
    match object.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(cannot_handle(format!(
                "json: cannot unmarshal {} into Go struct field {}.metadata of type v1.ObjectMeta",
                codec::go_type(other),
                resource.kind
            )))
        }
    }
    let expected_version = resource.api_version();
    match object.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => object["apiVersion"] = json!(expected_version),
        Some(version) if version == expected_version => {}
        Some(version) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({version}) does not match the expected API version ({expected_version})"
            )))
        }
    }
    match object.get("kind").and_then(Value::as_str) {
        None | Some("") => object["kind"] = json!(resource.kind),
        Some(kind) if kind == resource.kind => {}
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                resource.kind
            )))
        }
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    Ok(object)
}

fn set_namespace(
    resource: &Resource,
    mut object: Value,
    namespace: Option<&str>,
) -> Result<Value, ApiError> {
    let metadata = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if resource.namespaced {
        let wanted = namespace.unwrap_or_default();
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != wanted => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                metadata.insert("namespace".into(), json!(wanted));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(object)
}

/// Now to the second, on the controllers' clock (the tests' clock in their tests).
fn now_rfc3339() -> String {
    crate::controllers::now_time()
}

/// Five random characters of upstream's name generator, as `generateName` appends.
pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    // Upstream's alphabet leaves out vowels and confusable characters, so names never spell words.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Binds a pending pod to a node (the `binding` subresource); refuses pods being deleted or
/// already bound.
pub fn bind_pod(
    state: &ApiState,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<Value, ApiError> {
    let resource = resources::by_kind("", "Pod").expect("pods are served");
    state
        .store
        .update(&resource.storage_key(), namespace, name, |pod| {
            bound(pod, node)
        })
        .map_err(|e| not_found_as(e, resource, name))
}

/// Binds several pods in one commit: `(namespace, name, node)` each, a result each.
pub fn bind_pods(
    state: &ApiState,
    bindings: &[(String, String, String)],
) -> Result<Vec<Result<Value, ApiError>>, ApiError> {
    let keys: Vec<(String, String)> = bindings
        .iter()
        .map(|(ns, name, _)| (ns.clone(), name.clone()))
        .collect();
    let mut nodes = bindings.iter().map(|(_, _, node)| node.as_str());
    state.store.update_many("core/pods", &keys, |pod| {
        let node = nodes.next().unwrap_or_default();
        bound(pod, node)
    })
}

/// The pod bound to `node`, or why it cannot be.
fn bound(pod: &Value, node: &str) -> Result<Value, ApiError> {
    let resource = resources::by_kind("", "Pod").expect("pods are served");
    let name = meta_str(pod, "name");
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict(
            resource,
            &name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    if let Some(current) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::conflict(
            resource,
            &name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    let mut pod = pod.clone();
    pod["spec"]["nodeName"] = json!(node);
    lifecycle::set_condition(&mut pod, "PodScheduled", "True", None, None);
    Ok(pod)
}

/// Who makes a write, and through which subresource, for admission plugins that look at
/// them (Pod Security's exemptions and skipped subresources). The master's own controllers and
/// bootstrap write with no user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requester<'a> {
    /// The user's name, after impersonation.
    pub user: Option<&'a str>,
    /// The subresource the request names (`status`, `scale`, `finalize`...).
    pub subresource: Option<&'a str>,
}

/// A stored (or dry-run) object and the warnings admission has for the client.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The object as stored.
    pub object: Value,
    /// `Warning` headers to send (e.g. Pod Security's `would violate PodSecurity ...`).
    pub warnings: Vec<String>,
}

/// A `Warning` header value as apimachinery writes one: code 299, agent `-`, the text quoted
/// with `"` and `\` escaped.
fn warning_header(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("299 - \"{escaped}\"")
}

/// Creates an object through the whole admission path. Used by the controllers and by
/// bootstrap, which have no user and no use for warnings.
pub fn create_object(
    state: &ApiState,
    resource: &'static Resource,
    object: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    create_object_as(state, resource, object, dry_run, Requester::default()).map(|a| a.object)
}

/// Creates an object through the whole admission path for `requester`.
pub fn create_object_as(
    state: &ApiState,
    resource: &'static Resource,
    object: Value,
    dry_run: bool,
    requester: Requester,
) -> Result<Admitted, ApiError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        // From admission to commit one create at a time, so a quota check sees every create
        // before it (the store serialises the commits anyway). Events and leases are not
        // counted by quotas and must not queue behind pod commits.
        let admitting =
            (!resource.volatile).then(|| state.admission.lock().unwrap_or_else(|p| p.into_inner()));
        let Some((namespace, name, candidate, warnings)) =
            admit_new(state, resource, &object, attempts, requester)?
        else {
            continue;
        };
        if !dry_run && !resource.volatile {
            crate::controllers::quota::admit(state, resource, &candidate)?;
        }
        if dry_run {
            return Ok(Admitted {
                object: candidate,
                warnings,
            });
        }
        let committed = state
            .store
            .create(&resource.storage_key(), &namespace, &name, candidate);
        drop(admitting);
        match committed {
            Ok(created) => {
                lifecycle::after_create(state, resource, &created);
                return Ok(Admitted {
                    object: created,
                    warnings,
                });
            }
            Err(StoreError::AlreadyExists { .. }) if is_generated(&object) && attempts < 5 => {
                continue
            }
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(resource, &name))
            }
            Err(e) => return Err(ApiError::from_store(e, resource, &name)),
        }
    }
}

/// Creates several objects of one kind in one namespace through admission, committed in one
/// transaction (one disk flush): a ReplicaSet scaling up by 500 pods costs one flush, not 500.
/// Where a quota applies, objects are created one by one so each check sees the last create.
pub fn create_objects(
    state: &ApiState,
    resource: &'static Resource,
    objects: Vec<Value>,
) -> Vec<Result<Value, ApiError>> {
    let namespace = objects
        .first()
        .map(|o| meta_str(o, "namespace"))
        .unwrap_or_default();
    let quota_applies = resource.namespaced
        && state
            .store
            .list("core/resourcequotas", Some(&namespace), None, 1, &|_| true)
            .map(|page| !page.items.is_empty())
            .unwrap_or(true);
    if objects.len() < 2 || resource.volatile || quota_applies {
        return objects
            .into_iter()
            .map(|object| create_object(state, resource, object, false))
            .collect();
    }
    let admitting = state.admission.lock().unwrap_or_else(|p| p.into_inner());
    let mut results: Vec<Option<Result<Value, ApiError>>> = objects.iter().map(|_| None).collect();
    let mut staged: Vec<(usize, (String, String, Value))> = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        let mut attempts = 0;
        let admitted = loop {
            attempts += 1;
            match admit_new(state, resource, object, attempts, Requester::default()) {
                Ok(Some((namespace, name, candidate, _warnings))) => {
                    break Ok((namespace, name, candidate))
                }
                Ok(None) => continue,
                Err(error) => break Err(error),
            }
        };
        match admitted {
            Ok(admitted) => staged.push((index, admitted)),
            Err(error) => results[index] = Some(Err(error)),
        }
    }
    let (indexes, items): (Vec<usize>, Vec<(String, String, Value)>) = staged.into_iter().unzip();
    let names: Vec<String> = items.iter().map(|(_, name, _)| name.clone()).collect();
    match state.store.create_many(&resource.storage_key(), items) {
        Ok(outcomes) => {
            drop(admitting);
            for ((index, name), outcome) in indexes.into_iter().zip(names).zip(outcomes) {
                results[index] = Some(match outcome {
                    Ok(created) => {
                        lifecycle::after_create(state, resource, &created);
                        Ok(created)
                    }
                    Err(e) => Err(ApiError::from_store(e, resource, &name)),
                });
            }
        }
        Err(error) => {
            let failed = ApiError::internal_logged("the object store failed", &error);
            for index in indexes {
                results[index] = Some(Err(failed.clone()));
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::internal("not created"))))
        .collect()
}

fn is_generated(object: &Value) -> bool {
    meta_str(object, "name").is_empty() && !meta_str(object, "generateName").is_empty()
}

/// A new object through admission, short of quota and commit: its namespace, name (generated
/// when asked) and stored form. `None` when a generated name is taken: try again.
/// A new object as admission leaves it: namespace, name, the object, the client's warnings.
type NewObject = (String, String, Value, Vec<String>);

fn admit_new(
    state: &ApiState,
    resource: &'static Resource,
    object: &Value,
    attempt: u32,
    requester: Requester,
) -> Result<Option<NewObject>, ApiError> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    let namespace = meta_str(object, "namespace");
    let generated = is_generated(object);
    let mut candidate = object.clone();
    if generated {
        let prefix = meta_str(object, "generateName");
        candidate["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    let name = meta_str(&candidate, "name");
    // What admission plugins call the object: upstream names it before generating the name.
    let admission_name = if generated {
        meta_str(object, "generateName")
    } else {
        name.clone()
    };
    // Upstream reports a taken name before anything admission would say about the object.
    if !name.is_empty()
        && state
            .store
            .get(&resource.storage_key(), &namespace, &name)?
            .is_some()
    {
        if !generated || attempt >= 5 {
            return Err(ApiError::already_exists(resource, &name));
        }
        return Ok(None);
    }
    prepare_create(resource, &mut candidate);
    admission::apply_defaults(resource.group, resource.kind, &mut candidate);
    // Mutating admission plugins, in upstream's order, before validation.
    crate::limit_range::admit_defaults(state, resource, &mut candidate)?;
    crate::service_account_admission::admit_create(
        state,
        resource,
        &mut candidate,
        &admission_name,
    )?;
    crate::priority::admit_create(state, resource, &mut candidate, &admission_name)?;
    let errors = admission::validate_create(resource.group, resource.kind, &candidate);
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            resource.kind,
            resource.group,
            &name,
            &errors,
        ));
    }
    admission::omit_empty_metadata(&mut candidate);
    check_volatile_size(resource, &candidate)?;
    if resource.namespaced {
        check_namespace_accepts(&state.store, &namespace, resource)?;
    }
    lifecycle::admit_create(state, resource, &mut candidate)?;
    // Validating admission: LimitRanger comes before the quota check of the caller.
    crate::limit_range::admit_limits(state, resource, &candidate, &admission_name)?;
    let request = pod_security::Request {
        operation: pod_security::Operation::Create,
        user: requester.user,
        subresource: requester.subresource,
        name: &name,
        // `POST /namespaces` names no namespace (upstream's request attributes).
        namespace: &namespace,
    };
    let warnings = pod_security::admit(state, resource, &request, &candidate, None)?;
    Ok(Some((namespace, name, candidate, warnings)))
}

fn check_namespace_accepts(
    store: &Store,
    namespace: &str,
    resource: &Resource,
) -> Result<(), ApiError> {
    let Some(ns) = store.get("core/namespaces", "", namespace)? else {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        ));
    };
    if ns.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::forbidden(format!(
            "{} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
            super::error::qualified(resource)
        )));
    }
    Ok(())
}

/// Server-owned metadata for a new object.
fn prepare_create(resource: &Resource, object: &mut Value) {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return; // checked by admit_new
    };
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        metadata.remove(field);
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
    if lifecycle::has_generation(resource) {
        metadata.insert("generation".into(), json!(1));
    }
    lifecycle::prepare_on_create(resource, object);
}

/// Replaces an object (or its status) through the admission path inside the store's
/// read-modify-write. `make` builds the requested object from the current one.
pub fn update_object(
    state: &ApiState,
    resource: &'static Resource,
    namespace: &str,
    name: &str,
    part: Part,
    dry_run: bool,
    make: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let requester = Requester::default();
    update_object_as(
        state, resource, namespace, name, part, dry_run, requester, make,
    )
    .map(|a| a.object)
}

/// Replaces an object (or its status) through the admission path for `requester`.
#[allow(clippy::too_many_arguments)]
pub fn update_object_as(
    state: &ApiState,
    resource: &'static Resource,
    namespace: &str,
    name: &str,
    part: Part,
    dry_run: bool,
    requester: Requester,
    make: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Admitted, ApiError> {
    let mut result_for_dry_run = None;
    let mut warnings = Vec::new();
    let updated = state
        .store
        .update(&resource.storage_key(), namespace, name, |current| {
            let requested = make(current)?;
            if !requested.get("metadata").is_some_and(Value::is_object) {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
            let wanted = requested
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let have = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !wanted.is_empty() && wanted != have {
                return Err(ApiError::stale(resource, name));
            }
            let next = merge_update(
                state,
                resource,
                current,
                requested,
                part,
                requester,
                &mut warnings,
            )?;
            if dry_run {
                result_for_dry_run = Some(next);
                return Ok(current.clone());
            }
            Ok(next)
        })
        .map_err(|e| not_found_as(e, resource, name))?;
    if let Some(next) = result_for_dry_run {
        return Ok(Admitted {
            object: next,
            warnings,
        });
    }
    // An update that removes the last finalizer of an object being deleted completes the deletion.
    if lifecycle::deletion_complete(resource, &updated) {
        // Checked again under the store's lock: a concurrent update may have added a finalizer.
        let still_complete = |current: &Value| {
            if lifecycle::deletion_complete(resource, current) {
                Ok(())
            } else {
                Err(ApiError::conflict(resource, name, "a finalizer was added"))
            }
        };
        return match state
            .store
            .delete(&resource.storage_key(), namespace, name, still_complete)
        {
            Ok(deleted) => Ok(Admitted {
                object: deleted,
                warnings,
            }),
            Err(e) if e.code == 404 || e.code == 409 => Ok(Admitted {
                object: updated,
                warnings,
            }),
            Err(e) => Err(e),
        };
    }
    Ok(Admitted {
        object: updated,
        warnings,
    })
}

/// The stored object an update produces: server-owned metadata kept, the other part of the
/// object kept, generation bumped on spec changes, defaults applied, validated.
fn merge_update(
    state: &ApiState,
    resource: &Resource,
    current: &Value,
    requested: Value,
    part: Part,
    requester: Requester,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let mut next = match part {
        Part::Status | Part::Approval => {
            let mut next = current.clone();
            match requested.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(map) = next.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            next
        }
        Part::Main => {
            let mut next = requested;
            if resource.subresources.contains(&"status") && resource.kind != "Namespace" {
                match current.get("status") {
                    Some(status) => next["status"] = status.clone(),
                    None => {
                        if let Some(map) = next.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            if resource.kind == "Namespace" {
                // Namespace phase is owned by the server.
                if let Some(status) = current.get("status") {
                    next["status"] = status.clone();
                }
            }
            let metadata = next["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match current.get("metadata").and_then(|m| m.get(field)) {
                    Some(value) => {
                        metadata.insert(field.into(), value.clone());
                    }
                    None => {
                        metadata.remove(field);
                    }
                }
            }
            metadata.remove("managedFields");
            next
        }
    };
    admission::apply_defaults(resource.group, resource.kind, &mut next);
    match part {
        Part::Main => {
            lifecycle::carry_over_on_update(state, resource, current, &mut next)?;
            match (resource.group, resource.kind) {
                ("", "Pod") => crate::priority::carry_over_pod_priority(current, &mut next),
                ("scheduling.k8s.io", "PriorityClass") => {
                    crate::priority::admit_update(state, &next, current)?
                }
                _ => {}
            }
        }
        Part::Status => lifecycle::carry_over_on_status_update(resource, current, &mut next),
        Part::Approval => {}
    }
    if certificates::is_csr(resource) {
        certificates::prepare_update(part, current, &mut next, &now_rfc3339());
    }
    if lifecycle::has_generation(resource) && spec_changed(current, &next) {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        next["metadata"]["generation"] = json!(generation);
    }
    admission::omit_empty_metadata(&mut next);
    let mut errors = admission::validate_update(resource.group, resource.kind, &next, current);
    if certificates::is_csr(resource) {
        errors.extend(certificates::validate_update(part, &next, current));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            resource.kind,
            resource.group,
            &meta_str(current, "name"),
            &errors,
        ));
    }
    check_volatile_size(resource, &next)?;
    let name = meta_str(current, "name");
    let namespace = if resource.kind == "Namespace" && resource.group.is_empty() {
        name.clone()
    } else {
        meta_str(current, "namespace")
    };
    let request = pod_security::Request {
        operation: pod_security::Operation::Update,
        user: requester.user,
        subresource: match part {
            Part::Main => requester.subresource,
            Part::Status => Some("status"),
            Part::Approval => Some("approval"),
        },
        name: &name,
        namespace: &namespace,
    };
    warnings.extend(pod_security::admit(
        state,
        resource,
        &request,
        &next,
        Some(current),
    )?);
    Ok(next)
}

/// Largest object of a kind kept in memory (Events, Leases), encoded.
pub const VOLATILE_OBJECT_LIMIT: usize = 64 * 1024;

/// Events and Leases live in memory: one may not be larger than [`VOLATILE_OBJECT_LIMIT`] (413).
fn check_volatile_size(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    if resource.volatile && object.to_string().len() > VOLATILE_OBJECT_LIMIT {
        return Err(ApiError::too_large(VOLATILE_OBJECT_LIMIT));
    }
    Ok(())
}

/// Whether anything but metadata and status differs: upstream bumps `generation` only then.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(old) != strip(new)
}

/// DeleteOptions from the body or query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Seconds the object gets to finish, if given.
    pub grace_period_seconds: Option<i64>,
    /// Background, Foreground or Orphan.
    pub propagation: Option<String>,
    /// Required uid of the object.
    pub precondition_uid: Option<String>,
    /// Required resourceVersion of the object.
    pub precondition_version: Option<String>,
    /// Only pretend.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// The options of a request body alone (an Eviction's `deleteOptions`).
    pub fn from_body(body: Option<&Value>) -> Result<Self, ApiError> {
        Self::from(body, &HashMap::new())
    }

    fn from(body: Option<&Value>, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut options = DeleteOptions::default();
        if let Some(body) = body.filter(|b| !b.is_null()) {
            if !body.is_object() {
                return Err(ApiError::bad_request("DeleteOptions must be an object"));
            }
            options.grace_period_seconds = body.get("gracePeriodSeconds").and_then(Value::as_i64);
            options.propagation = body
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if body.get("orphanDependents") == Some(&json!(true)) {
                options.propagation = Some("Orphan".into());
            }
            options.precondition_uid = body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            options.precondition_version = body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            options.dry_run = body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        }
        if let Some(grace) = query.get("gracePeriodSeconds") {
            options.grace_period_seconds = Some(grace.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: {grace}"))
            })?);
        }
        if let Some(policy) = query.get("propagationPolicy") {
            options.propagation = Some(policy.clone());
        }
        if query.get("dryRun").is_some_and(|d| d == "All") {
            options.dry_run = true;
        }
        if let Some(policy) = &options.propagation {
            if !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan") {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                ));
            }
        }
        Ok(options)
    }
}

/// Deletes (or starts the graceful deletion of) one object. Returns its last or current state.
pub fn delete_object(
    state: &ApiState,
    resource: &'static Resource,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    lifecycle::admit_delete(resource, name)?;
    let store = &state.store;
    let key = resource.storage_key();
    let current = store
        .get(&key, namespace, name)?
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    if let Some(uid) = &options.precondition_uid {
        let actual = meta_str(&current, "uid");
        if *uid != actual {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(version) = &options.precondition_version {
        let actual = meta_str(&current, "resourceVersion");
        if *version != actual {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {version}, ResourceVersion in object meta: {actual}"),
            ));
        }
    }
    if options.dry_run {
        return Ok(current);
    }
    let mut current = current;
    if options.propagation.as_deref() == Some("Orphan") {
        if resource.kind != "Pod" && resource.kind != "Namespace" {
            // Marked first, so no controller adopts the dependents back while they are released.
            current = store
                .update::<ApiError>(&key, namespace, name, |object| {
                    let mut object = object.clone();
                    if object.pointer("/metadata/deletionTimestamp").is_none() {
                        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    }
                    Ok(object)
                })
                .map_err(|e| not_found_as(e, resource, name))?;
        }
        lifecycle::orphan_dependents(state, &current)?;
    }
    match lifecycle::plan_deletion(resource, &current, options) {
        lifecycle::Deletion::Now => store
            .delete::<ApiError>(&key, namespace, name, |_| Ok(()))
            .map_err(|e| not_found_as(e, resource, name)),
        lifecycle::Deletion::Graceful { mark } => store
            .update::<ApiError>(&key, namespace, name, |object| Ok(mark(object)))
            .map_err(|e| not_found_as(e, resource, name)),
    }
}

fn encode_continue(namespace: &str, name: &str, revision: u64) -> String {
    let token = json!({"v": 1, "ns": namespace, "name": name, "rv": revision});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "continue key is not valid: the token is malformed; start the list again without it",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let ns = value
        .get("ns")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    Ok((ns.to_owned(), name.to_owned()))
}

/// A `meta.k8s.io/v1` Table of `items` (already in the request's version).
pub fn build_table(
    resource: &Resource,
    items: &[Value],
    include: IncludeObject,
    metadata: Value,
) -> Value {
    table_with(resource, items, include, metadata, true)
}

/// A Table, optionally without column definitions (watch events after the first).
pub fn table_with(
    resource: &Resource,
    items: &[Value],
    include: IncludeObject,
    metadata: Value,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let storage = resources::by_kind(resource.group, resource.kind).unwrap_or(resource);
    let columns: Vec<Value> = if with_columns {
        table::columns(storage.group, storage.plural)
            .iter()
            .map(|column| column.to_json())
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let storage_form = conversion::to_storage(resource, item.clone());
            let mut row =
                json!({"cells": table::cells(storage.group, storage.plural, &storage_form, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": item.get("metadata").cloned().unwrap_or_else(|| json!({})),
                    });
                }
                IncludeObject::Object => row["object"] = item.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// Every namespaced resource's storage key, once each.
pub fn namespaced_storage_keys() -> Vec<&'static Resource> {
    let mut seen: Vec<&'static Resource> = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.storage_version.is_none() && r.is_stored())
    {
        if !seen
            .iter()
            .any(|s| s.storage_key() == resource.storage_key())
        {
            seen.push(resource);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_headers_escape_quotes_and_backslashes_as_apimachinery() {
        assert_eq!(
            warning_header(r#"would violate PodSecurity "restricted:latest": a\b"#),
            r#"299 - "would violate PodSecurity \"restricted:latest\": a\\b""#
        );
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue("default", "web-1", 42);
        assert_eq!(
            decode_continue(&token).unwrap(),
            ("default".into(), "web-1".into())
        );
        assert_eq!(decode_continue("%%%").unwrap_err().code, 400);
        assert_eq!(decode_continue("e30").unwrap_err().code, 400);
    }

    #[test]
    fn generation_follows_spec_only() {
        let old =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}, "status": {}});
        let relabelled = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"replicas": 1}, "status": {"x": 1}});
        let scaled = json!({"metadata": {}, "spec": {"replicas": 2}});
        assert!(!spec_changed(&old, &relabelled));
        assert!(spec_changed(&old, &scaled));
    }

    #[test]
    fn type_meta_is_filled_or_checked() {
        let deployments = resources::find("apps", "v1", "deployments").unwrap();
        let filled = check_type_meta(deployments, json!({"metadata": {"name": "a"}})).unwrap();
        assert_eq!(filled["apiVersion"], "apps/v1");
        assert_eq!(filled["kind"], "Deployment");
        let wrong = check_type_meta(
            deployments,
            json!({"apiVersion": "v1", "kind": "Deployment"}),
        );
        assert_eq!(wrong.unwrap_err().code, 400);
    }
}
