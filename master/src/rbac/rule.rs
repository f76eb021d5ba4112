//! Policy rules: what one rule allows (upstream's `RuleAllows`), whether rules cover others
//! (`Covers`, for escalation checks), and the compact text escalation refusals list.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::RequestAttributes;

/// Matches every verb, group, resource or non-resource URL.
pub const ALL: &str = "*";

/// One `PolicyRule` of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Verbs (`get`, `list`, ..., or `*`).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` is core, `*` any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources: `pods`, `pods/log`, `*/scale`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Object names; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Paths that are not resources (`/healthz`, `/api/*`).
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn strings(value: &[&str]) -> Vec<String> {
    value.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    /// A resource rule.
    pub fn resource(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
        Rule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            ..Rule::default()
        }
    }

    /// The same rule limited to `names`.
    pub fn named(mut self, names: &[&str]) -> Rule {
        self.resource_names = strings(names);
        self
    }

    /// A non-resource rule.
    pub fn urls(verbs: &[&str], urls: &[&str]) -> Rule {
        Rule {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..Rule::default()
        }
    }

    /// The rules of a Role or ClusterRole object (`rules`); rules that do not decode are skipped.
    pub fn all_of(role: &Value) -> Vec<Rule> {
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|rule| serde_json::from_value(rule.clone()).ok())
            .collect()
    }

    /// Whether this rule allows the request (upstream's `RuleAllows`).
    pub fn allows(&self, request: &RequestAttributes) -> bool {
        if !any_is(&self.verbs, &request.verb) {
            return false;
        }
        if !request.resource_request {
            return self.non_resource_urls.iter().any(|url| {
                url == ALL
                    || *url == request.path
                    || url.strip_suffix('*').is_some_and(|prefix| {
                        request.path.starts_with(prefix.trim_end_matches('*'))
                    })
            });
        }
        any_is(&self.api_groups, &request.api_group)
            && self.resource_matches(&request.resource, &request.subresource)
            && (self.resource_names.is_empty() || self.resource_names.contains(&request.name))
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|rule| {
            if rule == ALL {
                return true;
            }
            if subresource.is_empty() {
                return rule == resource;
            }
            match rule.split_once('/') {
                Some((head, tail)) => tail == subresource && (head == ALL || head == resource),
                None => false,
            }
        })
    }

    /// Upstream's `CompactString`: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
    pub fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        for (label, values) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ] {
            if !values.is_empty() {
                parts.push(format!("{label}:{}", quoted_list(values)));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }

    /// The rule split into rules of one group, resource, verb and name each (upstream's
    /// `BreakdownRule`).
    fn breakdown(&self) -> Vec<Rule> {
        let mut parts = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    let part = Rule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        ..Rule::default()
                    };
                    if self.resource_names.is_empty() {
                        parts.push(part);
                    } else {
                        for name in &self.resource_names {
                            parts.push(Rule {
                                resource_names: vec![name.clone()],
                                ..part.clone()
                            });
                        }
                    }
                }
            }
        }
        for url in &self.non_resource_urls {
            for verb in &self.verbs {
                parts.push(Rule::urls(&[verb], &[url]));
            }
        }
        parts
    }

    /// Whether this rule covers `part`, a rule of at most one verb, resource and name.
    fn covers(&self, part: &Rule) -> bool {
        let verbs = any_is(&self.verbs, ALL) || contains_all(&self.verbs, &part.verbs);
        let groups =
            any_is(&self.api_groups, ALL) || contains_all(&self.api_groups, &part.api_groups);
        let names = self.resource_names.is_empty()
            || (!part.resource_names.is_empty()
                && contains_all(&self.resource_names, &part.resource_names));
        verbs && groups && names && self.covers_resources(part) && self.covers_urls(part)
    }

    fn covers_resources(&self, part: &Rule) -> bool {
        if any_is(&self.resources, ALL) || contains_all(&self.resources, &part.resources) {
            return true;
        }
        part.resources.iter().all(|resource| {
            self.resources.contains(resource)
                || resource
                    .split_once('/')
                    .is_some_and(|(_, sub)| self.resources.contains(&format!("*/{sub}")))
        })
    }

    fn covers_urls(&self, part: &Rule) -> bool {
        part.non_resource_urls.iter().all(|path| {
            self.non_resource_urls.iter().any(|owner| {
                owner == path
                    || owner
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
            })
        })
    }
}

fn any_is(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == ALL || v == wanted)
}

fn contains_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| set.contains(w))
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn quoted_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%q` of a string.
pub fn go_quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// The parts of `wanted` that `held` does not cover (upstream's `Covers`), empty when covered.
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    wanted
        .iter()
        .flat_map(Rule::breakdown)
        .filter(|part| !held.iter().any(|owner| owner.covers(part)))
        .collect()
}

/// Upstream's `CompactRules`: rules of one group and one resource and nothing else but verbs
/// merge into one rule with all their verbs.
pub fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut compacted: Vec<Rule> = Vec::new();
    let mut simple: Vec<Rule> = Vec::new();
    for rule in rules {
        let is_simple = rule.resource_names.is_empty()
            && rule.non_resource_urls.is_empty()
            && rule.api_groups.len() == 1
            && rule.resources.len() == 1;
        if !is_simple {
            compacted.push(rule);
            continue;
        }
        match simple
            .iter_mut()
            .find(|s| s.api_groups == rule.api_groups && s.resources == rule.resources)
        {
            Some(existing) => existing.verbs.extend(rule.verbs),
            None => simple.push(rule),
        }
    }
    compacted.extend(simple);
    compacted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RequestAttributes;

    fn request(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        name: &str,
    ) -> RequestAttributes {
        RequestAttributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "a".into(),
            ..RequestAttributes::default()
        }
    }

    fn path(verb: &str, path: &str) -> RequestAttributes {
        RequestAttributes {
            verb: verb.into(),
            path: path.into(),
            ..RequestAttributes::default()
        }
    }

    #[test]
    fn rules_match_requests_as_upstream() {
        let pods = Rule::resource(&["get", "list"], &[""], &["pods"]);
        let cases = [
            (&pods, request("get", "", "pods", "", "web"), true),
            (&pods, request("delete", "", "pods", "", "web"), false),
            (&pods, request("get", "apps", "pods", "", "web"), false),
            (&pods, request("get", "", "pods", "log", "web"), false),
            (&pods, request("get", "", "services", "", ""), false),
        ];
        for (rule, request, allowed) in cases {
            assert_eq!(rule.allows(&request), allowed, "{rule:?} {request:?}");
        }
        let logs = Rule::resource(&["get"], &[""], &["pods/log"]);
        assert!(logs.allows(&request("get", "", "pods", "log", "web")));
        assert!(!logs.allows(&request("get", "", "pods", "", "web")));
        let any_status = Rule::resource(&["update"], &["*"], &["*/status"]);
        assert!(any_status.allows(&request("update", "apps", "deployments", "status", "w")));
        assert!(!any_status.allows(&request("update", "apps", "deployments", "", "w")));
        assert!(!any_status.allows(&request("update", "apps", "deployments", "scale", "w")));
        let everything = Rule::resource(&["*"], &["*"], &["*"]);
        assert!(everything.allows(&request("escalate", "x.io", "things", "sub", "n")));
        let named = Rule::resource(&["get"], &[""], &["configmaps"]).named(&["settings"]);
        assert!(named.allows(&request("get", "", "configmaps", "", "settings")));
        assert!(!named.allows(&request("get", "", "configmaps", "", "other")));
        assert!(!named.allows(&request("list", "", "configmaps", "", "")));
        let urls = Rule::urls(&["get"], &["/healthz", "/api/*"]);
        assert!(urls.allows(&path("get", "/healthz")));
        assert!(!urls.allows(&path("get", "/healthz/etcd")));
        assert!(urls.allows(&path("get", "/api/v1")));
        assert!(urls.allows(&path("get", "/api/")));
        assert!(!urls.allows(&path("get", "/api")));
        assert!(!urls.allows(&path("post", "/api/v1")));
        assert!(Rule::urls(&["*"], &["*"]).allows(&path("delete", "/anything")));
        // A resource rule never allows a path, and a URL rule never a resource.
        assert!(!everything.allows(&path("get", "/healthz")));
        assert!(!urls.allows(&request("get", "", "pods", "", "")));
    }

    #[test]
    fn coverage_and_compact_text_follow_upstream() {
        let held = vec![
            Rule::resource(&["get", "list"], &[""], &["pods", "*/status"]),
            Rule::urls(&["get"], &["/api/*"]),
        ];
        assert!(uncovered(&held, &[Rule::resource(&["get"], &[""], &["pods"])]).is_empty());
        assert!(uncovered(
            &held,
            &[Rule::resource(&["list"], &[""], &["services/status"])]
        )
        .is_empty());
        assert!(uncovered(&held, &[Rule::urls(&["get"], &["/api/v1"])]).is_empty());
        let missing = uncovered(
            &held,
            &[Rule::resource(
                &["get", "delete", "create"],
                &["", "apps"],
                &["pods"],
            )],
        );
        let text: Vec<String> = compact(missing).iter().map(Rule::compact_string).collect();
        assert_eq!(
            text,
            [
                "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\" \"create\"]}",
                "{APIGroups:[\"apps\"], Resources:[\"pods\"], Verbs:[\"get\" \"delete\" \"create\"]}",
            ]
        );
        // Names: a rule limited to names does not cover the unnamed rule.
        let named = vec![Rule::resource(&["get"], &[""], &["secrets"]).named(&["a"])];
        assert!(!uncovered(&named, &[Rule::resource(&["get"], &[""], &["secrets"])]).is_empty());
        assert!(uncovered(
            &named,
            &[Rule::resource(&["get"], &[""], &["secrets"]).named(&["a"])]
        )
        .is_empty());
    }
}
