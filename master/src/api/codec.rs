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

/// Decodes an object body meant to be a `kind`. A missing Content-Type means JSON (the Python
/// client sends none).
pub fn decode_object(
    content_type: Option<&str>,
    body: &[u8],
    kind: &str,
) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    let value = match media_type(content_type) {
        "application/json" | "" | "*/*" | "text/plain" => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| unrecognized(kind, &go_json_error(body, &e), body))?;
            if !value.is_object() {
                let why = format!(
                    "json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
                    go_type(&value)
                );
                return Err(unrecognized(kind, &why, body));
            }
            value
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body)?,
        protobuf::PROTOBUF_MEDIA_TYPE => {
            let decoded = protobuf::decode(body).map_err(|e| {
                ApiError::unsupported_media_type(protocol::error::error_chain(&e))
            })?;
            // bramble's protobuf schema is a hand-written table of the fields kubectl's
            // generators send. A field it does not know (a newer kubectl, a newer API) would be
            // dropped without a word, so the body is refused instead, naming the field; 415
            // says "this encoding of this body cannot be read", and JSON always can. Unknown
            // fields holding zero values are not counted: Go writes every non-pointer field,
            // and kubectl 1.37 sends several the table leaves out, all zero.
            if let Some(field) = decoded.unknown_fields.first() {
                return Err(ApiError::unsupported_media_type(format!(
                    "the protobuf body has a field bramble cannot decode ({field}{}); send the object as JSON or YAML instead (e.g. `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -`)",
                    match decoded.unknown_fields.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                )));
            }
            decoded.object
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
            )))
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): the body is not an object"
        )));
    }
    Ok(value)
}

/// Upstream's 400 for a body that is not an object of any kind (YAML sent as JSON, a list):
/// `the object provided is unrecognized (must be of type Namespace): couldn't get version/kind;
/// json parse error: ... (<the first 30 bytes>)`.
fn unrecognized(kind: &str, why: &str, body: &[u8]) -> ApiError {
    ApiError::bad_request(format!(
        "the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: {why} ({})",
        summarize(body, 30)
    ))
}

/// The start of a body as upstream's `summarizeData` shows it: JSON objects as text, anything
/// else in hex, `...` after the first `limit` bytes.
fn summarize(body: &[u8], limit: usize) -> String {
    let shown = &body[..body.len().min(limit)];
    let more = if body.len() > limit { " ..." } else { "" };
    match body.first() {
        None => "<empty>".to_owned(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(shown)),
        Some(_) => {
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}{more}")
        }
    }
}

/// Go's `encoding/json` wording for the commonest syntax errors, serde's otherwise.
fn go_json_error(body: &[u8], error: &serde_json::Error) -> String {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => "unexpected end of JSON input".to_owned(),
        Some(&c) if !b"{[\"-0123456789tfn".contains(&c) => {
            format!(
                "invalid character '{}' looking for beginning of value",
                c as char
            )
        }
        Some(_) => error.to_string(),
    }
}

/// Go's name for a JSON value's type in decoding errors.
pub fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
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
        let object = decode_object(Some("application/yaml"), manifest, "Deployment").unwrap();
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["metadata"]["labels"]["tier"], "1");
        let container = &object["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["containerPort"], 80);
        assert_eq!(container["args"][1], "yes");
        // Strings that look like other scalars stay strings on the way back.
        let tricky = serde_json::json!({"a": "true", "b": "1", "c": "null", "d": "", "e": "x: y",
            "f": "line\nbreak", "g": "~", "n": 1.5, "t": true, "z": null, "l": [1, "2"]});
        let yaml = encode(&tricky, ResponseFormat::Yaml);
        let back = decode_object(Some("application/yaml"), &yaml, "Widget").unwrap();
        assert_eq!(back, tricky, "{}", String::from_utf8_lossy(&yaml));
        // Bad YAML is a 400, not a panic.
        assert!(decode_object(Some("application/yaml"), b"a: [1, 2\n", "Widget").is_err());
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
        assert!(decode_object(None, br#"{"a":1}"#, "Pod").is_ok());
        assert_eq!(decode_object(None, b"{nope", "Pod").unwrap_err().code, 400);
        assert_eq!(decode_object(None, b"[1]", "Pod").unwrap_err().code, 400);
        assert_eq!(
            decode_object(
                Some("application/yaml"),
                b"kind: Pod\nmetadata:\n  name: a\n",
                "Pod"
            )
            .unwrap()["kind"],
            "Pod"
        );
        assert_eq!(
            decode_object(Some("image/png"), b"x", "Pod")
                .unwrap_err()
                .code,
            415
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(decode_object(None, &huge, "Pod").unwrap_err().code, 413);
    }

    #[test]
    fn yaml_sent_as_json_is_unrecognized_as_upstream_says() {
        let yaml = b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";
        let error = decode_object(Some("application/json"), yaml, "Namespace").unwrap_err();
        assert_eq!(error.code, 400);
        assert_eq!(error.reason, "BadRequest");
        assert_eq!(
            error.message,
            "the object provided is unrecognized (must be of type Namespace): couldn't get version/kind; json parse error: invalid character 'a' looking for beginning of value (61706956657273696f6e3a2076310a6b696e643a204e616d657370616365 ...)"
        );
        let list = decode_object(None, b"[1]", "Pod").unwrap_err();
        assert!(
            list.message.starts_with("the object provided is unrecognized (must be of type Pod): couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of type struct"),
            "{}",
            list.message
        );
        assert!(list.message.ends_with("(5b315d)"), "{}", list.message);
    }
}
