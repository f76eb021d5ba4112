//! Label and field selectors: parsing the query-string forms and matching objects.

use serde_json::{Map, Value};

/// Why a selector could not be parsed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectorError {
    /// The label selector text is malformed.
    #[error("unable to parse requirement: {detail} (in \"{selector}\")")]
    Label {
        /// The selector as given.
        selector: String,
        /// What is wrong.
        detail: String,
    },
    /// The field selector text is malformed.
    #[error("invalid field selector \"{selector}\": {detail}")]
    Field {
        /// The selector as given.
        selector: String,
        /// What is wrong.
        detail: String,
    },
    /// The resource cannot be selected by that field.
    #[error("field label not supported: {field}")]
    UnsupportedField {
        /// The field.
        field: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Operator {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    operator: Operator,
}

impl Requirement {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.matches_value(labels.get(&self.key).and_then(Value::as_str))
    }

    fn matches_value(&self, value: Option<&str>) -> bool {
        match &self.operator {
            Operator::Equals(wanted) => value == Some(wanted.as_str()),
            Operator::NotEquals(unwanted) => value != Some(unwanted.as_str()),
            Operator::In(values) => value.is_some_and(|v| values.iter().any(|w| w == v)),
            Operator::NotIn(values) => !value.is_some_and(|v| values.iter().any(|w| w == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan(bound) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *bound),
            Operator::LessThan(bound) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *bound),
        }
    }
}

/// A parsed label selector; all requirements must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A nil selector in an object selects nothing (upstream's semantics for controllers).
    nothing: bool,
}

/// Whether `key` is a valid label key (an optional DNS-subdomain prefix and a name).
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

/// Whether `value` is a valid label value (empty, or up to 63 alphanumerics with `-_.` inside).
pub fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

impl LabelSelector {
    /// Selects everything.
    pub fn everything() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: false,
        }
    }

    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h,i==j,k>1,l<5`; empty selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |detail: String| SelectorError::Label {
            selector: text.to_owned(),
            detail,
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self::everything());
        }
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(error("found empty requirement".into()));
            }
            let requirement = parse_requirement(part).map_err(error)?;
            if !valid_label_key(&requirement.key) {
                return Err(error(format!(
                    "invalid label key \"{}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                    requirement.key
                )));
            }
            let values: Vec<&String> = match &requirement.operator {
                Operator::Equals(v) | Operator::NotEquals(v) => vec![v],
                Operator::In(vs) | Operator::NotIn(vs) => vs.iter().collect(),
                _ => Vec::new(),
            };
            if let Some(bad) = values.into_iter().find(|v| !valid_label_value(v)) {
                return Err(error(format!(
                    "invalid label value: \"{bad}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                )));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Builds a selector from a `metav1.LabelSelector` object. A null or absent selector
    /// selects nothing; `{}` selects everything.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        if selector.is_null() {
            return Ok(LabelSelector {
                requirements: Vec::new(),
                nothing: true,
            });
        }
        let error = |detail: String| SelectorError::Label {
            selector: selector.to_string(),
            detail,
        };
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in labels {
                let value = value
                    .as_str()
                    .ok_or_else(|| error(format!("matchLabels[{key}] must be a string")))?;
                requirements.push(Requirement {
                    key: key.clone(),
                    operator: Operator::Equals(value.to_owned()),
                });
            }
        }
        for expression in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expression
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| error("matchExpressions entry without a key".into()))?
                .to_owned();
            let values: Vec<String> = expression
                .get("values")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let operator = match expression.get("operator").and_then(Value::as_str) {
                Some("In") => Operator::In(values),
                Some("NotIn") => Operator::NotIn(values),
                Some("Exists") => Operator::Exists,
                Some("DoesNotExist") => Operator::DoesNotExist,
                // Node selector terms (node affinity) also compare integers.
                Some(op @ ("Gt" | "Lt")) => {
                    let bound = values
                        .first()
                        .and_then(|v| v.parse::<i64>().ok())
                        .ok_or_else(|| error(format!("{op} needs one integer value")))?;
                    if op == "Gt" {
                        Operator::GreaterThan(bound)
                    } else {
                        Operator::LessThan(bound)
                    }
                }
                other => {
                    return Err(error(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            };
            requirements.push(Requirement { key, operator });
        }
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether a plain label map satisfies every requirement.
    pub fn matches_map(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_value(labels.get(&r.key).map(String::as_str)))
    }

    /// A selector from a plain map of required labels (ReplicationController and Service
    /// selectors); an empty map selects nothing, as upstream's controllers treat it.
    pub fn from_map(labels: &Map<String, Value>) -> Self {
        LabelSelector {
            requirements: labels
                .iter()
                .map(|(key, value)| Requirement {
                    key: key.clone(),
                    operator: Operator::Equals(value.as_str().unwrap_or_default().to_owned()),
                })
                .collect(),
            nothing: labels.is_empty(),
        }
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        self.matches(labels)
    }

    /// Whether the selector selects every object.
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }
}

fn parse_values(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            format!(
                "expected a parenthesised value list, found \"{}\"",
                text.trim()
            )
        })?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if values.len() == 1 && values[0].is_empty() {
        return Err("found empty value list".into());
    }
    Ok(values)
}

/// Builds an operator from the value text after its symbol.
type OperatorBuilder = fn(String) -> Result<Operator, String>;

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: key.trim().to_owned(),
            operator: Operator::DoesNotExist,
        });
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        if let Some(index) = part.find(word) {
            let key = part[..index].trim().to_owned();
            let values = parse_values(&part[index + word.len()..])?;
            let operator = if negated {
                Operator::NotIn(values)
            } else {
                Operator::In(values)
            };
            return Ok(Requirement { key, operator });
        }
    }
    let operators: [(&str, OperatorBuilder); 5] = [
        ("!=", |v| Ok(Operator::NotEquals(v))),
        ("==", |v| Ok(Operator::Equals(v))),
        ("=", |v| Ok(Operator::Equals(v))),
        (">", |v| {
            v.parse().map(Operator::GreaterThan).map_err(|_| {
                format!("for 'Gt' operator, the value must be an integer, found \"{v}\"")
            })
        }),
        ("<", |v| {
            v.parse().map(Operator::LessThan).map_err(|_| {
                format!("for 'Lt' operator, the value must be an integer, found \"{v}\"")
            })
        }),
    ];
    for (symbol, build) in operators {
        if let Some((key, value)) = part.split_once(symbol) {
            return Ok(Requirement {
                key: key.trim().to_owned(),
                operator: build(value.trim().to_owned())?,
            });
        }
    }
    if part.contains(['(', ')', ' ']) {
        return Err(format!(
            "found '{part}', expected: '=', '!=', '==', 'in', 'notin'"
        ));
    }
    Ok(Requirement {
        key: part.to_owned(),
        operator: Operator::Exists,
    })
}

/// A parsed field selector; all requirements must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

/// Splits on an unescaped `sep`, undoing `\` escapes in the pieces.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                parts.last_mut().expect("never empty").push('\\');
                parts.last_mut().expect("never empty").push(next);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fields every resource can be selected by.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

fn resource_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

/// The value of a selectable field as upstream compares it: missing is "", booleans and
/// numbers as text.
fn field_value(object: &Value, field: &str) -> String {
    let path = match field {
        "source" => "/source/component".to_owned(),
        other => format!("/{}", other.replace('.', "/")),
    };
    match object.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if field == "status.podIPs" => items
            .iter()
            .filter_map(|i| i.get("ip").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(","),
        _ if field == "spec.unschedulable" || field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d,e==f` with `\` escapes in values; empty selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        for part in split_unescaped(text, ',') {
            let error = |detail: &str| SelectorError::Field {
                selector: text.to_owned(),
                detail: detail.to_owned(),
            };
            let (field, equals, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(error(&format!("expected an operator in \"{part}\"")));
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(error("a field name is required"));
            }
            requirements.push((field.to_owned(), equals, unescape(value.trim())));
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether the object's selectable fields satisfy every requirement.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.requirements
            .iter()
            .all(|(field, equals, value)| (field_value(object, field) == *value) == *equals)
    }

    /// Rejects fields the resource cannot be selected by, as upstream does (400).
    pub fn check_fields(&self, group: &str, plural: &str) -> Result<(), SelectorError> {
        let allowed = resource_fields(group, plural);
        for (field, _, _) in &self.requirements {
            if !COMMON_FIELDS.contains(&field.as_str()) && !allowed.contains(&field.as_str()) {
                return Err(SelectorError::UnsupportedField {
                    field: field.clone(),
                });
            }
        }
        Ok(())
    }

    /// The requirements as (field, equals, value).
    pub fn requirements(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.requirements
            .iter()
            .map(|(f, e, v)| (f.as_str(), *e, v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_operator_parses_and_matches() {
        let web = labels(json!({"app": "web", "tier": "a", "rank": "3"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("tier notin (a, b)", false),
            ("app", true),
            ("!missing", true),
            ("!app", false),
            ("rank>2", true),
            ("rank<3", false),
            ("app=web, tier in (a)", true),
            ("", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
        ];
        for (selector, expected) in cases {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&web), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for bad in [
            "a in (",
            "a in ()",
            "a in x",
            "Bad Key=x",
            ",",
            "a=b,",
            "a=-x",
            "k>x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_selectors_follow_upstream_nil_semantics() {
        let web = json!({"metadata": {"labels": {"app": "web", "tier": "a"}}});
        let selector = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]
        }))
        .unwrap();
        assert!(selector.matches_object(&web));
        assert!(LabelSelector::from_json(&json!({}))
            .unwrap()
            .matches_object(&web));
        assert!(!LabelSelector::from_json(&Value::Null)
            .unwrap()
            .matches_object(&web));
        assert!(LabelSelector::from_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Nope"}]})
        )
        .is_err());
    }

    #[test]
    fn field_selectors_match_missing_as_empty_and_check_support() {
        let pending = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {}, "status": {"phase": "Pending"}});
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches_object(&pending));
        assert!(
            FieldSelector::parse("status.phase!=Running,metadata.name==p")
                .unwrap()
                .matches_object(&pending)
        );
        assert!(!FieldSelector::parse("metadata.namespace=x")
            .unwrap()
            .matches_object(&pending));
        let escaped = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert!(escaped.matches_object(&json!({"metadata": {"name": "a,b"}})));
        assert!(FieldSelector::parse("spec.nodeName=n1")
            .unwrap()
            .check_fields("", "pods")
            .is_ok());
        assert!(FieldSelector::parse("spec.bogus=x")
            .unwrap()
            .check_fields("", "pods")
            .is_err());
        assert!(FieldSelector::parse("spec.unschedulable=false")
            .unwrap()
            .matches_object(&json!({"spec": {}})));
        assert!(FieldSelector::parse("novalue").is_err());
        let event = json!({"involvedObject": {"kind": "Pod", "name": "web"}, "source": {"component": "kubelet"}});
        assert!(
            FieldSelector::parse("involvedObject.kind=Pod,source=kubelet")
                .unwrap()
                .matches_object(&event)
        );
    }
}
