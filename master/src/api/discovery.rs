//! Discovery documents (legacy and aggregated v2), `/version`, and the OpenAPI v3 documents kubectl validates against.

use http::{header, Response};
use serde_json::{json, Value};

use super::codec::ResponseFormat;
use super::error::ApiError;
use super::{full, respond_value, Body};
use crate::resources::{self, Resource, RESOURCES};

/// The Kubernetes version bramble's API matches.
pub const KUBERNETES_VERSION: &str = "v1.37.0";

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The `/version` body.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "gitVersion": format!("{KUBERNETES_VERSION}+bramble-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none (Rust)",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// Answers discovery and OpenAPI paths; `None` for anything else.
pub fn serve(segments: &[&str], accept: &str) -> Result<Option<Response<Body>>, ApiError> {
    let wants_aggregated = accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList"));
    let json = |value: Value| Ok(Some(respond_value(200, &value, ResponseFormat::Json)));
    match segments {
        ["api"] if wants_aggregated => Ok(Some(aggregated(true))),
        ["apis"] if wants_aggregated => Ok(Some(aggregated(false))),
        ["api"] => json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        })),
        ["apis"] => json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups()})),
        ["api", "v1"] => json(resource_list("", "v1")),
        ["apis", group] => match groups().into_iter().find(|g| g["name"] == *group) {
            Some(mut found) => {
                found["kind"] = json!("APIGroup");
                found["apiVersion"] = json!("v1");
                json(found)
            }
            None => Err(ApiError::no_route(&format!("/apis/{group}"))),
        },
        ["apis", group, version] => {
            if resources::group_versions().contains(&(*group, *version)) {
                json(resource_list(group, version))
            } else {
                Err(ApiError::no_route(&format!("/apis/{group}/{version}")))
            }
        }
        ["openapi", "v3"] => json(openapi_index()),
        ["openapi", "v3", "api", "v1"] => json(openapi_document("", "v1")),
        ["openapi", "v3", "apis", group, version] => {
            if resources::group_versions().contains(&(*group, *version)) {
                json(openapi_document(group, version))
            } else {
                Err(ApiError::no_route("openapi"))
            }
        }
        _ => Ok(None),
    }
}

fn group_version_string(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

fn groups() -> Vec<Value> {
    let mut groups: Vec<Value> = Vec::new();
    for (group, version) in resources::group_versions() {
        if group.is_empty() {
            continue;
        }
        let entry =
            json!({"groupVersion": group_version_string(group, version), "version": version});
        match groups.iter_mut().find(|g| g["name"] == group) {
            Some(existing) => {
                if let Some(versions) = existing["versions"].as_array_mut() {
                    versions.push(entry);
                }
            }
            None => groups.push(json!({
                "name": group,
                "versions": [entry.clone()],
                "preferredVersion": entry,
            })),
        }
    }
    groups
}

fn subresource_kind(
    resource: &Resource,
    subresource: &str,
) -> (&'static str, &'static str, &'static str) {
    match subresource {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "log" | "exec" => ("", "v1", "Pod"),
        _ => (resource.group, resource.version, resource.kind),
    }
}

fn subresource_verbs(subresource: &str) -> &'static [&'static str] {
    match subresource {
        "binding" | "eviction" => &["create"],
        "log" => &["get"],
        "exec" => &["create", "get"],
        "finalize" => &["update"],
        _ => &["get", "patch", "update"],
    }
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": resource.verbs(),
            "shortNames": resource.short_names,
            "categories": resource.categories,
        });
        if resource.is_stored() {
            entry["storageVersionHash"] = json!(storage_version_hash(resource));
        }
        list.push(entry);
        for sub in resource.subresources {
            let (g, v, kind) = subresource_kind(resource, sub);
            let mut entry = json!({
                "name": format!("{}/{sub}", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": kind,
                "verbs": subresource_verbs(sub),
            });
            if (g, v) != (resource.group, resource.version) {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            list.push(entry);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version_string(group, version),
        "resources": list,
    })
}

/// Upstream's `storageVersionHash`: base64 of the first 8 bytes of the SHA-256 of the stored
/// form's `group/version/kind` (`/v1/Pod` for the core group). It changes when the storage
/// version does, which tells storage migrators to rewrite objects. Aggregated discovery has no
/// such field.
fn storage_version_hash(resource: &Resource) -> String {
    use base64::Engine;
    use sha2::Digest;
    let version = resource.storage_version.unwrap_or(resource.version);
    let gvk = format!("{}/{version}/{}", resource.group, resource.kind);
    let digest = sha2::Sha256::digest(gvk.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

fn aggregated(core: bool) -> Response<Body> {
    let mut items = Vec::new();
    let mut order: Vec<&str> = Vec::new();
    for (group, _) in resources::group_versions() {
        if (group.is_empty()) == core && !order.contains(&group) {
            order.push(group);
        }
    }
    for group in order {
        let versions: Vec<Value> = resources::group_versions()
            .into_iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, version)| {
                let resources: Vec<Value> = RESOURCES
                    .iter()
                    .filter(|r| r.group == group && r.version == version)
                    .map(|r| {
                        let subresources: Vec<Value> = r
                            .subresources
                            .iter()
                            .map(|sub| {
                                let (g, v, kind) = subresource_kind(r, sub);
                                json!({
                                    "subresource": sub,
                                    "responseKind": {"group": g, "version": v, "kind": kind},
                                    "verbs": subresource_verbs(sub),
                                })
                            })
                            .collect();
                        json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": r.verbs(),
                            "shortNames": r.short_names,
                            "categories": r.categories,
                            "subresources": subresources,
                        })
                    })
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions}),
        );
    }
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, AGGREGATED)
        .header(header::VARY, "Accept")
        .body(full(serde_json::to_vec(&body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(full(Vec::new())))
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (group, version) in resources::group_versions() {
        let path = openapi_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

/// A v3 document per group-version whose operations carry the group-version-kind and the
/// `fieldValidation` parameter: that is what kubectl looks for before it leaves validation of
/// `create -f` and `apply -f` to the server.
fn openapi_document(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let field_validation = json!({
        "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "Ignore, Warn or Strict handling of unknown and duplicate fields"
    });
    for resource in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk =
            json!({"group": resource.group, "version": resource.version, "kind": resource.kind});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", resource.kind),
                "parameters": [field_validation.clone()],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk.clone(),
            })
        };
        let collection = if resource.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", resource.plural)
        } else {
            format!("{prefix}/{}", resource.plural)
        };
        paths.insert(collection.clone(), json!({"post": operation("post")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"put": operation("put"), "patch": operation("patch")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        // No component schemas: kubectl then computes apply patches from its compiled-in types,
        // which know every patch strategy, instead of from an incomplete schema.
        "components": {"schemas": {}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(list: &Value, name: &str) -> Value {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is listed"))
    }

    #[test]
    fn stored_resources_carry_upstreams_storage_version_hash() {
        // Values a kube-apiserver answers.
        let core = resource_list("", "v1");
        assert_eq!(entry(&core, "pods")["storageVersionHash"], "xPOwRZ+Yhw8=");
        assert_eq!(
            entry(&core, "namespaces")["storageVersionHash"],
            "Q3oi5N2YM8M="
        );
        let apps = resource_list("apps", "v1");
        assert_eq!(
            entry(&apps, "deployments")["storageVersionHash"],
            "8aSe+NMegvE="
        );
        // Subresources and objects that are not stored have none.
        assert!(entry(&core, "pods/status")
            .get("storageVersionHash")
            .is_none());
        let metrics = resource_list("metrics.k8s.io", "v1beta1");
        assert!(entry(&metrics, "pods").get("storageVersionHash").is_none());
        // Both HPA versions hash the stored version.
        let v1 = entry(
            &resource_list("autoscaling", "v1"),
            "horizontalpodautoscalers",
        );
        let v2 = entry(
            &resource_list("autoscaling", "v2"),
            "horizontalpodautoscalers",
        );
        assert_eq!(v1["storageVersionHash"], v2["storageVersionHash"]);
    }
}
