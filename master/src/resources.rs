//! The catalogue of API resources the master serves: names, scopes, versions and subresources.

/// One resource as served at one group-version.
#[derive(Debug)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// The version served.
    pub version: &'static str,
    /// Kind of the objects.
    pub kind: &'static str,
    /// Plural resource name used in URLs.
    pub plural: &'static str,
    /// Singular name for discovery.
    pub singular: &'static str,
    /// Short names kubectl accepts (`po`, `deploy`, ...).
    pub short_names: &'static [&'static str],
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Discovery categories (`all` makes `kubectl get all` include it).
    pub categories: &'static [&'static str],
    /// Subresources served, e.g. `status`, `scale`.
    pub subresources: &'static [&'static str],
    /// Kept in memory between checkpoints rather than written on each change.
    pub volatile: bool,
    /// The version objects are stored in, when it differs from `version`.
    pub storage_version: Option<&'static str>,
}

impl Resource {
    /// The key the store files objects of this resource under; shared by all versions.
    pub fn storage_key(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("{group}/{}", self.plural)
    }

    /// `apiVersion` as objects spell it: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `apiVersion` of the stored form.
    pub fn storage_api_version(&self) -> String {
        let version = self.storage_version.unwrap_or(self.version);
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether objects of this resource live in the store (metrics and reviews do not).
    pub fn is_stored(&self) -> bool {
        self.group != "metrics.k8s.io" && !self.is_review()
    }

    /// Whether this is a review: a request object answered at once and never stored
    /// (SubjectAccessReview, TokenReview, ...), served by `api::reviews`.
    pub fn is_review(&self) -> bool {
        matches!(self.group, "authorization.k8s.io" | "authentication.k8s.io")
    }

    /// Verbs for discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.is_review() {
            return &["create"];
        }
        if !self.is_stored() {
            return &["get", "list"];
        }
        if self.kind == "Namespace" {
            // As upstream: namespaces go one by one, through NamespaceLifecycle admission.
            return &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ];
        }
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $short:expr,
     namespaced: $ns:expr, categories: $cat:expr, subresources: $sub:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: $short,
            namespaced: $ns,
            categories: $cat,
            subresources: $sub,
            volatile: false,
            storage_version: None,
        }
    };
}

/// Every resource served, in discovery order.
pub static RESOURCES: &[Resource] = &[
    resource!("", "v1", "Namespace", "namespaces", "namespace", &["ns"],
        namespaced: false, categories: NONE, subresources: &["status", "finalize"]),
    resource!("", "v1", "Pod", "pods", "pod", &["po"],
        namespaced: true, categories: ALL, subresources: &["status", "binding", "eviction", "log", "exec"]),
    resource!("", "v1", "Service", "services", "service", &["svc"],
        namespaced: true, categories: ALL, subresources: &["status"]),
    resource!("", "v1", "Endpoints", "endpoints", "endpoints", &["ep"],
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("", "v1", "Node", "nodes", "node", &["no"],
        namespaced: false, categories: NONE, subresources: &["status"]),
    resource!("", "v1", "ConfigMap", "configmaps", "configmap", &["cm"],
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("", "v1", "Secret", "secrets", "secret", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", &["rc"],
        namespaced: true, categories: ALL, subresources: &["status", "scale"]),
    Resource {
        volatile: true,
        ..resource!("", "v1", "Event", "events", "event", &["ev"],
            namespaced: true, categories: NONE, subresources: NONE)
    },
    resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", &["sa"],
        namespaced: true, categories: NONE, subresources: &["token"]),
    resource!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", &["quota"],
        namespaced: true, categories: NONE, subresources: &["status"]),
    resource!("", "v1", "LimitRange", "limitranges", "limitrange", &["limits"],
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", &["pv"],
        namespaced: false, categories: NONE, subresources: &["status"]),
    resource!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", &["pvc"],
        namespaced: true, categories: NONE, subresources: &["status"]),
    Resource {
        volatile: true,
        ..resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", NONE,
            namespaced: true, categories: NONE, subresources: NONE)
    },
    resource!("apps", "v1", "Deployment", "deployments", "deployment", &["deploy"],
        namespaced: true, categories: ALL, subresources: &["status", "scale"]),
    resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", &["rs"],
        namespaced: true, categories: ALL, subresources: &["status", "scale"]),
    resource!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", &["ds"],
        namespaced: true, categories: ALL, subresources: &["status"]),
    resource!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", &["sts"],
        namespaced: true, categories: ALL, subresources: &["status", "scale"]),
    resource!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("batch", "v1", "Job", "jobs", "job", NONE,
        namespaced: true, categories: ALL, subresources: &["status"]),
    resource!("batch", "v1", "CronJob", "cronjobs", "cronjob", &["cj"],
        namespaced: true, categories: ALL, subresources: &["status"]),
    resource!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", &["hpa"],
        namespaced: true, categories: ALL, subresources: &["status"]),
    Resource {
        storage_version: Some("v2"),
        ..resource!("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", &["hpa"],
            namespaced: true, categories: ALL, subresources: &["status"])
    },
    resource!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", &["pdb"],
        namespaced: true, categories: NONE, subresources: &["status"]),
    resource!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", &["pc"],
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", &["sc"],
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", &["csr"],
        namespaced: false, categories: NONE, subresources: &["status", "approval"]),
    resource!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
    resource!("metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", "", NONE,
        namespaced: false, categories: NONE, subresources: NONE),
    resource!("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", "", NONE,
        namespaced: true, categories: NONE, subresources: NONE),
];

/// The group-versions served, preferred version first within a group.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut seen: Vec<(&'static str, &'static str)> = Vec::new();
    for resource in RESOURCES {
        if !seen.contains(&(resource.group, resource.version)) {
            seen.push((resource.group, resource.version));
        }
    }
    seen
}

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of `kind` in `group`, at its storage version.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind && r.storage_version.is_none())
}

/// Storage keys of the resources kept in memory between checkpoints.
pub fn volatile_storage_keys() -> Vec<String> {
    RESOURCES
        .iter()
        .filter(|r| r.volatile)
        .map(Resource::storage_key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_storage_version() {
        for resource in RESOURCES {
            let stored = by_kind(resource.group, resource.kind).expect("storage version");
            assert_eq!(stored.storage_key(), resource.storage_key());
        }
    }

    #[test]
    fn core_group_versions_come_first() {
        assert_eq!(group_versions()[0], ("", "v1"));
        assert!(group_versions().contains(&("autoscaling", "v1")));
    }
}
