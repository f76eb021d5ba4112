//! Request body decoding (JSON, YAML, protobuf) and response format negotiation (JSON, YAML, Table).

use serde_json::Value;

use super::error::ApiError;
use crate::protobuf;

/// Largest request body accepted; upstream's limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What `includeObject` asks a Table's rows to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (kubectl's default, enough for `-A`, `--show-labels`, `-L`).
    Metadata,
    /// The whole object.
    Object,
}

/// How a response body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `application/json`.
    Json,
    /// `application/yaml`.
    Yaml,
    /// A `meta.k8s.io/v1` Table for printing.
    Table(IncludeObject),
}

impl ResponseFormat {
    /// Picks the format from the `Accept` header and `includeObject` query parameter.
    pub fn negotiate(accept: Option<&str>, include_object: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return ResponseFormat::Json;
        };
        for option in accept.split(',') {
            let mut parts = option.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let params: Vec<&str> = parts.collect();
            let is_table = params.contains(&"as=Table")
                && params.iter().any(|p| p.starts_with("g=meta.k8s.io"));
            if is_table && (media == "application/json" || media == "*/*") {
                let include = match include_object {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                };
                return ResponseFormat::Table(include);
            }
            if params.iter().any(|p| p.starts_with("as=")) {
                // Another transformed form (e.g. PartialObjectMetadata) we do not serve: try the
                // next option, as upstream falls through to plain JSON.
                continue;
            }
            match media {
                "application/json" | "*/*" | "application/*" => return ResponseFormat::Json,
                "application/yaml" => return ResponseFormat::Yaml,
                _ => {}
            }
        }
        ResponseFormat::Json
    }

    /// The Content-Type of the response.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Yaml => "application/yaml",
            _ => "application/json",
        }
    }
}

/// Serialises a response body in `format` (Tables are built before this).
pub fn encode(value: &Value, format: ResponseFormat) -> Vec<u8> {
    match format {
        ResponseFormat::Yaml => serde_saphyr::to_string(value)
            .map(String::into_bytes)
            .unwrap_or_else(|_| serde_json::to_vec(value).unwrap_or_default()),
        _ => serde_json::to_vec(value).unwrap_or_default(),
    }
}

/// The media type of a request body, without parameters.
pub fn media_type(content_type: Option<&str>) -> &str {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .unwrap_or("application/json")
}

/// Decodes an object body. A missing Content-Type means JSON (the Python client sends none).
pub fn decode_object(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    let value = match media_type(content_type) {
        "application/json" | "" | "*/*" | "text/plain" => decode_json(body)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body)?,
        protobuf::PROTOBUF_MEDIA_TYPE => protobuf::decode_object(body).map_err(|e| {
            ApiError::unsupported_media_type(super::error::error_chain(&e))
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
            )))
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    Ok(value)
}

/// Decodes a JSON body with upstream's wording for errors.
pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))
}

fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_saphyr::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_manifests_decode_and_responses_read_back() {
        let manifest = b"---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {app: web, tier: \"1\"}\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n        args: [\"--flag=true\", \"yes\"]\n        ports:\n        - containerPort: 80\n";
        let object = decode_object(Some("application/yaml"), manifest).unwrap();
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["metadata"]["labels"]["tier"], "1");
        let container = &object["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["containerPort"], 80);
        assert_eq!(container["args"][1], "yes");
        // Strings that look like other scalars stay strings on the way back.
        let tricky = serde_json::json!({"a": "true", "b": "1", "c": "null", "d": "", "e": "x: y",
            "f": "line\nbreak", "g": "~", "n": 1.5, "t": true, "z": null, "l": [1, "2"]});
        let yaml = encode(&tricky, ResponseFormat::Yaml);
        let back = decode_object(Some("application/yaml"), &yaml).unwrap();
        assert_eq!(back, tricky, "{}", String::from_utf8_lossy(&yaml));
        // Bad YAML is a 400, not a panic.
        assert!(decode_object(Some("application/yaml"), b"a: [1, 2\n").is_err());
    }

    #[test]
    fn kubectl_get_asks_for_tables() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            ResponseFormat::negotiate(Some(accept), None),
            ResponseFormat::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            ResponseFormat::negotiate(Some(accept), Some("Object")),
            ResponseFormat::Table(IncludeObject::Object)
        );
    }

    #[test]
    fn partial_metadata_falls_back_to_json() {
        let accept =
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(
            ResponseFormat::negotiate(Some(accept), None),
            ResponseFormat::Json
        );
        assert_eq!(
            ResponseFormat::negotiate(Some("application/yaml"), None),
            ResponseFormat::Yaml
        );
    }

    #[test]
    fn bodies_decode_or_fail_cleanly() {
        assert!(decode_object(None, br#"{"a":1}"#).is_ok());
        assert_eq!(decode_object(None, b"{nope").unwrap_err().code, 400);
        assert_eq!(decode_object(None, b"[1]").unwrap_err().code, 400);
        assert_eq!(
            decode_object(
                Some("application/yaml"),
                b"kind: Pod\nmetadata:\n  name: a\n"
            )
            .unwrap()["kind"],
            "Pod"
        );
        assert_eq!(
            decode_object(Some("image/png"), b"x").unwrap_err().code,
            415
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(decode_object(None, &huge).unwrap_err().code, 413);
    }
}
