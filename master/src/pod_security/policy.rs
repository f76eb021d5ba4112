//! Pod Security levels, versions and the namespace labels that choose them (upstream's
//! `pod-security-admission/api`).

use std::fmt;

use serde_json::{Map, Value};

use crate::admission::{FieldError, FieldErrorKind};

/// The prefix of every Pod Security label and audit annotation.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// `pod-security.kubernetes.io/enforce`.
pub const ENFORCE_LEVEL_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// `pod-security.kubernetes.io/enforce-version`.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// `pod-security.kubernetes.io/audit`.
pub const AUDIT_LEVEL_LABEL: &str = "pod-security.kubernetes.io/audit";
/// `pod-security.kubernetes.io/audit-version`.
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
/// `pod-security.kubernetes.io/warn`.
pub const WARN_LEVEL_LABEL: &str = "pod-security.kubernetes.io/warn";
/// `pod-security.kubernetes.io/warn-version`.
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// A Pod Security Standard, from the most to the least permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations refused.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// The level a label value names; upstream's error text otherwise.
    pub fn parse(text: &str) -> Result<Level, String> {
        match text {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err("must be one of privileged, baseline, restricted".to_owned()),
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes release whose checks apply: `v1.<minor>` or `latest` (newer than any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// `v1.<minor>`.
    Minor(u64),
    /// `latest`.
    Latest,
}

impl Version {
    /// The version a label value names (`latest`, `v1.x` without leading zeros); upstream's
    /// error text otherwise.
    pub fn parse(text: &str) -> Result<Version, String> {
        let invalid = || "must be \"latest\" or \"v1.x\"".to_owned();
        if text == "latest" {
            return Ok(Version::Latest);
        }
        let minor = text.strip_prefix("v1.").ok_or_else(invalid)?;
        let well_formed = !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor == "0" || !minor.starts_with('0'));
        if !well_formed {
            return Err(invalid());
        }
        // Go's Atoi fails beyond 64 bits; so does this.
        minor
            .parse::<i64>()
            .map(|m| Version::Minor(m as u64))
            .map_err(|_| invalid())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(minor) => write!(f, "v1.{minor}"),
        }
    }
}

/// A level at a version, written `restricted:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    /// The standard.
    pub level: Level,
    /// Whose checks.
    pub version: Version,
}

impl LevelVersion {
    /// `privileged:latest`, upstream's default for every mode.
    pub const PRIVILEGED_LATEST: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };

    /// Privileged at any version is the same policy; otherwise level and version must match.
    pub fn equivalent(&self, other: &LevelVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged) || self == other
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// What a namespace enforces, audits and warns about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Violations are refused (403).
    pub enforce: LevelVersion,
    /// Violations are recorded (bramble logs them; it has no audit log).
    pub audit: LevelVersion,
    /// Violations are returned as warnings.
    pub warn: LevelVersion,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enforce: LevelVersion::PRIVILEGED_LATEST,
            audit: LevelVersion::PRIVILEGED_LATEST,
            warn: LevelVersion::PRIVILEGED_LATEST,
        }
    }
}

impl Policy {
    /// Every mode privileged: nothing to evaluate.
    pub fn fully_privileged(&self) -> bool {
        self.enforce.level == Level::Privileged
            && self.audit.level == Level::Privileged
            && self.warn.level == Level::Privileged
    }

    /// Each mode equivalent.
    pub fn equivalent(&self, other: &Policy) -> bool {
        self.enforce.equivalent(&other.enforce)
            && self.audit.equivalent(&other.audit)
            && self.warn.equivalent(&other.warn)
    }
}

/// The policy a namespace's labels give on top of the cluster's defaults, and the problems
/// with those labels (upstream's `PolicyToEvaluate`). A bad enforce level fails closed
/// (restricted); bad audit or warn levels fail open (privileged); bad versions mean latest.
/// An enforce level stricter than the default warn level raises warn with it, unless a warn
/// label is set.
pub fn policy_to_evaluate(
    labels: Option<&Map<String, Value>>,
    defaults: &Policy,
) -> (Policy, Vec<FieldError>) {
    let mut policy = *defaults;
    let mut errors = Vec::new();
    let Some(labels) = labels.filter(|l| !l.is_empty()) else {
        return (policy, errors);
    };
    let label = |key: &str| labels.get(key).map(|v| v.as_str().unwrap_or_default());
    let mut note = |key: &str, value: &str, error: String| {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            &format!("metadata.labels[{key}]"),
            Some(go_quote(value)),
            &error,
        ));
    };

    let mut has_enforce_level = false;
    if let Some(value) = label(ENFORCE_LEVEL_LABEL) {
        match Level::parse(value) {
            Ok(level) => {
                policy.enforce.level = level;
                has_enforce_level = true;
            }
            Err(error) => {
                policy.enforce.level = Level::Restricted;
                note(ENFORCE_LEVEL_LABEL, value, error);
            }
        }
    }
    if let Some(value) = label(ENFORCE_VERSION_LABEL) {
        policy.enforce.version = Version::parse(value).unwrap_or_else(|error| {
            note(ENFORCE_VERSION_LABEL, value, error);
            Version::Latest
        });
    }
    if let Some(value) = label(AUDIT_LEVEL_LABEL) {
        policy.audit.level = Level::parse(value).unwrap_or_else(|error| {
            note(AUDIT_LEVEL_LABEL, value, error);
            Level::Privileged
        });
    }
    if let Some(value) = label(AUDIT_VERSION_LABEL) {
        policy.audit.version = Version::parse(value).unwrap_or_else(|error| {
            note(AUDIT_VERSION_LABEL, value, error);
            Version::Latest
        });
    }
    let has_warn_level = label(WARN_LEVEL_LABEL).is_some();
    if let Some(value) = label(WARN_LEVEL_LABEL) {
        policy.warn.level = Level::parse(value).unwrap_or_else(|error| {
            note(WARN_LEVEL_LABEL, value, error);
            Level::Privileged
        });
    }
    let has_warn_version = label(WARN_VERSION_LABEL).is_some();
    if let Some(value) = label(WARN_VERSION_LABEL) {
        policy.warn.version = Version::parse(value).unwrap_or_else(|error| {
            note(WARN_VERSION_LABEL, value, error);
            Version::Latest
        });
    }
    if !has_warn_level && has_enforce_level && policy.enforce.level > policy.warn.level {
        policy.warn.level = policy.enforce.level;
        if !has_warn_version {
            policy.warn.version = policy.enforce.version;
        }
    }
    (policy, errors)
}

/// Field errors as one text, as upstream's aggregate error writes them.
pub fn aggregate_errors(errors: &[FieldError]) -> String {
    let mut messages: Vec<String> = Vec::new();
    for error in errors {
        let message = error.message();
        if !messages.contains(&message) {
            messages.push(message);
        }
    }
    match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// A string in double quotes with `"` and `\` escaped (Go's `%q` for printable text).
pub fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\x{:02x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn lv(level: Level, version: Version) -> LevelVersion {
        LevelVersion { level, version }
    }

    #[test]
    fn versions_parse_as_upstream() {
        assert_eq!(Version::parse("latest"), Ok(Version::Latest));
        assert_eq!(Version::parse("v1.0"), Ok(Version::Minor(0)));
        assert_eq!(Version::parse("v1.37"), Ok(Version::Minor(37)));
        for bad in [
            "v1.05", "v1.", "1.25", "v2.1", "v1.2.3", "Latest", "", "v1.-1",
        ] {
            assert_eq!(
                Version::parse(bad),
                Err("must be \"latest\" or \"v1.x\"".to_owned()),
                "{bad}"
            );
        }
        assert!(Version::Minor(36) < Version::Minor(37));
        assert!(Version::Minor(1000) < Version::Latest);
        assert_eq!(Version::Minor(25).to_string(), "v1.25");
    }

    #[test]
    fn labels_override_defaults_and_bad_ones_fail_closed_for_enforce_only() {
        let defaults = Policy::default();
        let (policy, errors) = policy_to_evaluate(
            Some(&labels(json!({
                ENFORCE_LEVEL_LABEL: "strict",
                AUDIT_LEVEL_LABEL: "nope",
                WARN_VERSION_LABEL: "v1.05",
            }))),
            &defaults,
        );
        assert_eq!(policy.enforce, lv(Level::Restricted, Version::Latest));
        assert_eq!(policy.audit.level, Level::Privileged);
        assert_eq!(policy.warn, LevelVersion::PRIVILEGED_LATEST);
        let messages: Vec<String> = errors.iter().map(FieldError::message).collect();
        assert_eq!(
            messages,
            [
                "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted",
                "metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: \"nope\": must be one of privileged, baseline, restricted",
                "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: \"v1.05\": must be \"latest\" or \"v1.x\"",
            ]
        );
    }

    #[test]
    fn numeric_looking_values_are_still_quoted() {
        let (_, errors) = policy_to_evaluate(
            Some(&labels(json!({ENFORCE_VERSION_LABEL: "1.25"}))),
            &Policy::default(),
        );
        assert_eq!(
            errors[0].message(),
            "metadata.labels[pod-security.kubernetes.io/enforce-version]: Invalid value: \"1.25\": must be \"latest\" or \"v1.x\""
        );
    }

    #[test]
    fn warn_follows_a_stricter_enforce_unless_set() {
        let defaults = Policy::default();
        let (policy, _) = policy_to_evaluate(
            Some(&labels(json!({
                ENFORCE_LEVEL_LABEL: "baseline",
                ENFORCE_VERSION_LABEL: "v1.30",
            }))),
            &defaults,
        );
        assert_eq!(policy.warn, lv(Level::Baseline, Version::Minor(30)));

        let (policy, _) = policy_to_evaluate(
            Some(&labels(json!({
                ENFORCE_LEVEL_LABEL: "baseline",
                ENFORCE_VERSION_LABEL: "v1.30",
                WARN_VERSION_LABEL: "v1.20",
            }))),
            &defaults,
        );
        assert_eq!(policy.warn, lv(Level::Baseline, Version::Minor(20)));

        let (policy, _) = policy_to_evaluate(
            Some(&labels(
                json!({ENFORCE_LEVEL_LABEL: "restricted", WARN_LEVEL_LABEL: "privileged"}),
            )),
            &defaults,
        );
        assert_eq!(
            policy.warn.level,
            Level::Privileged,
            "an explicit warn wins"
        );

        // A bad enforce level is restricted but does not raise warn.
        let (policy, _) =
            policy_to_evaluate(Some(&labels(json!({ENFORCE_LEVEL_LABEL: "x"}))), &defaults);
        assert_eq!(policy.warn.level, Level::Privileged);

        // Stricter defaults are not lowered by a laxer enforce label.
        let strict = Policy {
            warn: lv(Level::Restricted, Version::Latest),
            ..Policy::default()
        };
        let (policy, _) = policy_to_evaluate(
            Some(&labels(json!({ENFORCE_LEVEL_LABEL: "baseline"}))),
            &strict,
        );
        assert_eq!(policy.warn, lv(Level::Restricted, Version::Latest));
    }

    #[test]
    fn no_labels_means_the_defaults() {
        let defaults = Policy {
            enforce: lv(Level::Baseline, Version::Minor(30)),
            ..Policy::default()
        };
        assert_eq!(policy_to_evaluate(None, &defaults), (defaults, vec![]));
        assert!(Policy::default().fully_privileged());
        assert!(
            lv(Level::Privileged, Version::Minor(3)).equivalent(&LevelVersion::PRIVILEGED_LATEST)
        );
        assert!(!lv(Level::Baseline, Version::Minor(3))
            .equivalent(&lv(Level::Baseline, Version::Latest)));
    }

    #[test]
    fn aggregates_read_as_upstream() {
        let (_, errors) = policy_to_evaluate(
            Some(&labels(
                json!({ENFORCE_LEVEL_LABEL: "a", WARN_LEVEL_LABEL: "b"}),
            )),
            &Policy::default(),
        );
        assert_eq!(
            aggregate_errors(&errors),
            "[metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"a\": must be one of privileged, baseline, restricted, metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: \"b\": must be one of privileged, baseline, restricted]"
        );
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
    }
}
