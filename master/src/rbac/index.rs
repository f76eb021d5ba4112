//! The RBAC objects in memory, with bindings indexed by subject, so that a decision looks only
//! at the bindings that name the user or one of their groups, however many bindings exist.
//!
//! ```text
//!   roles          (namespace, name) → rules        cluster_roles  name → rules
//!   cluster bindings  subject → binding names        role bindings  (namespace, subject) → names
//!   subject = the user name (User subjects, and ServiceAccount subjects as
//!             system:serviceaccount:<ns>:<name>) or a group name
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::rule::Rule;
use crate::auth::{UserInfo, SERVICE_ACCOUNT_PREFIX};

/// Storage keys of the four RBAC kinds.
pub const ROLES: &str = "rbac.authorization.k8s.io/roles";
/// Storage key of ClusterRoles.
pub const CLUSTER_ROLES: &str = "rbac.authorization.k8s.io/clusterroles";
/// Storage key of RoleBindings.
pub const ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/rolebindings";
/// Storage key of ClusterRoleBindings.
pub const CLUSTER_ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/clusterrolebindings";

/// Who a binding subject stands for, as the index keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    User(String),
    Group(String),
}

/// A binding subject.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// The service account's namespace, when given.
    pub namespace: String,
}

impl Subject {
    fn of(value: &Value) -> Subject {
        let text = |field: &str| value[field].as_str().unwrap_or_default().to_owned();
        Subject {
            kind: text("kind"),
            name: text("name"),
            namespace: text("namespace"),
        }
    }

    /// The index key: a service account becomes its user name, its namespace defaulting to
    /// the binding's (none for ClusterRoleBindings, where it then matches nobody).
    fn key(&self, binding_namespace: &str) -> Option<SubjectKey> {
        match self.kind.as_str() {
            "User" => Some(SubjectKey::User(self.name.clone())),
            "Group" => Some(SubjectKey::Group(self.name.clone())),
            "ServiceAccount" => {
                let namespace = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                (!namespace.is_empty()).then(|| {
                    SubjectKey::User(format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{}", self.name))
                })
            }
            _ => None,
        }
    }

    /// Upstream's `describeSubject`: `User "alice"`, `ServiceAccount "sa/ns"`.
    fn describe(&self, binding_namespace: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let namespace = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                format!("ServiceAccount \"{}/{namespace}\"", self.name)
            }
            kind => format!("{kind} \"{}\"", self.name),
        }
    }
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Name.
    pub name: String,
    /// Namespace; empty for ClusterRoleBindings.
    pub namespace: String,
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    /// The role's name.
    pub role_name: String,
    /// Subjects in order.
    pub subjects: Vec<Subject>,
}

impl Binding {
    fn of(object: &Value) -> Binding {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        Binding {
            name: text(&object["metadata"]["name"]),
            namespace: text(&object["metadata"]["namespace"]),
            role_kind: text(&object["roleRef"]["kind"]),
            role_name: text(&object["roleRef"]["name"]),
            subjects: object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Subject::of)
                .collect(),
        }
    }

    fn keys(&self) -> HashSet<SubjectKey> {
        self.subjects
            .iter()
            .filter_map(|s| s.key(&self.namespace))
            .collect()
    }

    /// The first subject that names `user`, described as upstream's rule sources are.
    fn subject_for(&self, user: &UserInfo) -> Option<&Subject> {
        self.subjects.iter().find(|s| match s.key(&self.namespace) {
            Some(SubjectKey::User(name)) => name == user.name,
            Some(SubjectKey::Group(group)) => user.in_group(&group),
            None => false,
        })
    }

    /// Where rules came from, as upstream's allow reasons name it:
    /// `ClusterRoleBinding "x" of ClusterRole "y" to User "alice"`.
    pub fn describe(&self, subject: &Subject) -> String {
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding \"{}\" of {} \"{}\" to {}",
                self.name,
                self.role_kind,
                self.role_name,
                subject.describe("")
            )
        } else {
            format!(
                "RoleBinding \"{}/{}\" of {} \"{}\" to {}",
                self.name,
                self.namespace,
                self.role_kind,
                self.role_name,
                subject.describe(&self.namespace)
            )
        }
    }
}

/// The RBAC objects, indexed.
#[derive(Default)]
pub struct Index {
    roles: HashMap<(String, String), Arc<[Rule]>>,
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    cluster_bindings: BTreeMap<String, Arc<Binding>>,
    role_bindings: HashMap<String, BTreeMap<String, Arc<Binding>>>,
    cluster_by_subject: HashMap<SubjectKey, Vec<Arc<Binding>>>,
    role_by_subject: HashMap<(String, SubjectKey), Vec<Arc<Binding>>>,
}

/// One rule source met while resolving a user's rules.
pub enum Source<'a> {
    /// Rules bound by this binding through this subject.
    Rules(&'a Binding, &'a Subject, &'a [Rule]),
    /// A binding whose role cannot be found: upstream's resolution error.
    Missing(String),
}

impl Index {
    /// Applies a stored object (`deleted`: its removal) of one of the four kinds.
    pub fn apply(&mut self, storage_key: &str, object: &Value, deleted: bool) {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match storage_key {
            ROLES => {
                let key = (namespace, name);
                if deleted {
                    self.roles.remove(&key);
                } else {
                    self.roles.insert(key, Rule::all_of(object).into());
                }
            }
            CLUSTER_ROLES => {
                if deleted {
                    self.cluster_roles.remove(&name);
                } else {
                    self.cluster_roles.insert(name, Rule::all_of(object).into());
                }
            }
            ROLE_BINDINGS | CLUSTER_ROLE_BINDINGS => {
                self.remove_binding(&namespace, &name);
                if !deleted {
                    self.insert_binding(Arc::new(Binding::of(object)));
                }
            }
            _ => {}
        }
    }

    fn insert_binding(&mut self, binding: Arc<Binding>) {
        for key in binding.keys() {
            if binding.namespace.is_empty() {
                self.cluster_by_subject
                    .entry(key)
                    .or_default()
                    .push(binding.clone());
            } else {
                self.role_by_subject
                    .entry((binding.namespace.clone(), key))
                    .or_default()
                    .push(binding.clone());
            }
        }
        if binding.namespace.is_empty() {
            self.cluster_bindings.insert(binding.name.clone(), binding);
        } else {
            self.role_bindings
                .entry(binding.namespace.clone())
                .or_default()
                .insert(binding.name.clone(), binding);
        }
    }

    fn remove_binding(&mut self, namespace: &str, name: &str) {
        let removed = if namespace.is_empty() {
            self.cluster_bindings.remove(name)
        } else {
            let in_namespace = self.role_bindings.get_mut(namespace);
            let removed = in_namespace.and_then(|bindings| bindings.remove(name));
            if self
                .role_bindings
                .get(namespace)
                .is_some_and(BTreeMap::is_empty)
            {
                self.role_bindings.remove(namespace);
            }
            removed
        };
        let Some(removed) = removed else {
            return;
        };
        for key in removed.keys() {
            let list = if namespace.is_empty() {
                self.cluster_by_subject.get_mut(&key)
            } else {
                self.role_by_subject
                    .get_mut(&(namespace.to_owned(), key.clone()))
            };
            let Some(list) = list else { continue };
            list.retain(|b| !Arc::ptr_eq(b, &removed));
            if list.is_empty() {
                if namespace.is_empty() {
                    self.cluster_by_subject.remove(&key);
                } else {
                    self.role_by_subject.remove(&(namespace.to_owned(), key));
                }
            }
        }
    }

    /// The rules of a role reference, or upstream's error text when it cannot be resolved.
    pub fn role_rules(
        &self,
        kind: &str,
        name: &str,
        namespace: &str,
    ) -> Result<Arc<[Rule]>, String> {
        match kind {
            "Role" => self
                .roles
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
                .ok_or_else(|| format!("role.rbac.authorization.k8s.io \"{name}\" not found")),
            "ClusterRole" => self.cluster_roles.get(name).cloned().ok_or_else(|| {
                format!("clusterrole.rbac.authorization.k8s.io \"{name}\" not found")
            }),
            other => Err(format!("unsupported role reference kind: \"{other}\"")),
        }
    }

    /// Bindings that may name `user` in `keys`, each once, in name order.
    fn candidates<'a>(
        &'a self,
        user: &UserInfo,
        lookup: impl Fn(&SubjectKey) -> Option<&'a Vec<Arc<Binding>>>,
    ) -> Vec<&'a Arc<Binding>> {
        let mut found: Vec<&Arc<Binding>> = Vec::new();
        let user_key = SubjectKey::User(user.name.clone());
        let groups = user.groups.iter().map(|g| SubjectKey::Group(g.clone()));
        for key in std::iter::once(user_key).chain(groups) {
            if let Some(bindings) = lookup(&key) {
                found.extend(bindings);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| Arc::ptr_eq(a, b));
        found
    }

    /// Visits the rules that apply to `user` in `namespace` (cluster-wide bindings first, then
    /// the namespace's), as upstream's `VisitRulesFor`; stops when `visit` returns false.
    pub fn visit(&self, user: &UserInfo, namespace: &str, mut visit: impl FnMut(Source) -> bool) {
        let cluster = self.candidates(user, |key| self.cluster_by_subject.get(key));
        let local = if namespace.is_empty() {
            Vec::new()
        } else {
            self.candidates(user, |key| {
                self.role_by_subject
                    .get(&(namespace.to_owned(), key.clone()))
            })
        };
        for binding in cluster.into_iter().chain(local) {
            let Some(subject) = binding.subject_for(user) else {
                continue;
            };
            let source =
                match self.role_rules(&binding.role_kind, &binding.role_name, &binding.namespace) {
                    Ok(rules) => {
                        if !visit(Source::Rules(binding, subject, &rules)) {
                            return;
                        }
                        continue;
                    }
                    Err(error) => Source::Missing(error),
                };
            if !visit(source) {
                return;
            }
        }
    }

    /// Every rule `user` holds in `namespace`, and resolution errors.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let (mut rules, mut errors) = (Vec::new(), Vec::new());
        self.visit(user, namespace, |source| {
            match source {
                Source::Rules(_, _, found) => rules.extend(found.iter().cloned()),
                Source::Missing(error) => errors.push(error),
            }
            true
        });
        (rules, errors)
    }
}
