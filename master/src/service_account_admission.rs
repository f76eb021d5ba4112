//! The ServiceAccount admission for new pods (upstream's `plugin/pkg/admission/serviceaccount`):
//! a pod runs as a service account of its namespace, `default` unless it names one, the
//! account must exist, and unless the pod or its account opts out the pod gets the projected
//! volume `kube-api-access-xxxxx` (a bound token, the cluster CA, the namespace) mounted
//! read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in its containers — what
//! `rest.InClusterConfig()` of every client library reads.
//!
//! Mirror pods (`kubernetes.io/config.mirror`) are left as they are but may not reference
//! service accounts, secrets, config maps or token projections: the kubelet made them from
//! files, and they must not reach what the API guards.

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::objects::meta_str;
use crate::api::ApiState;
use crate::resources::{self, Resource};

/// The account a pod that names none runs as.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where containers find the token, `ca.crt` and `namespace`.
pub const API_ACCESS_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the automounted volume's name.
pub const API_ACCESS_VOLUME_PREFIX: &str = "kube-api-access-";
/// The token's lifetime the admission asks for: upstream's "warn only" bound-token expiry,
/// one hour and seven seconds, which marks tokens that are legacy-tolerant.
pub const API_ACCESS_TOKEN_SECONDS: i64 = 3607;
/// The annotation of pods the kubelet made from static files.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The projected volume's file mode (0644), as upstream's `ProjectedVolumeSourceDefaultMode`.
const PROJECTED_DEFAULT_MODE: i64 = 0o644;

/// Runs the plugin on a pod being created; other kinds pass untouched. `name` is what
/// admission calls the pod (its generateName prefix when the name is generated).
pub fn admit_create(
    state: &ApiState,
    resource: &Resource,
    pod: &mut Value,
    name: &str,
) -> Result<(), ApiError> {
    if (resource.group, resource.kind) != ("", "Pod") {
        return Ok(());
    }
    let namespace = meta_str(pod, "namespace");
    let mirror = !pod["metadata"]["annotations"][MIRROR_POD_ANNOTATION].is_null();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(()); // validation reports the missing spec
    };
    // `serviceAccount` is the deprecated spelling: upstream's conversion reads it when the
    // new field is empty and writes the new field's value back into it.
    let mut account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| spec.get("serviceAccount").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    if mirror {
        sync_deprecated_field(spec, &account);
        return check_mirror_pod(resource, name, pod, &account);
    }
    if account.is_empty() {
        account = DEFAULT_SERVICE_ACCOUNT.to_owned();
    }
    sync_deprecated_field(spec, &account);
    let accounts = resources::by_kind("", "ServiceAccount").expect("service accounts are served");
    let Some(service_account) = state
        .store
        .get(&accounts.storage_key(), &namespace, &account)?
    else {
        // Upstream's NamespaceLifecycle runs first: a missing namespace is reported as such.
        let namespaces = resources::by_kind("", "Namespace").expect("namespaces are served");
        if state
            .store
            .get(&namespaces.storage_key(), "", &namespace)?
            .is_none()
        {
            return Ok(());
        }
        return Err(ApiError::forbidden_object(
            resource,
            name,
            &format!(
                "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
            ),
        ));
    };
    if should_automount(spec, &service_account) {
        mount_api_access(spec);
    }
    let no_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_pull_secrets {
        if let Some(secrets) = service_account["imagePullSecrets"]
            .as_array()
            .filter(|s| !s.is_empty())
        {
            spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
        }
    }
    Ok(())
}

fn sync_deprecated_field(spec: &mut serde_json::Map<String, Value>, account: &str) {
    if account.is_empty() {
        return;
    }
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));
}

/// The pod's own `automountServiceAccountToken` wins, then the account's; the default mounts.
fn should_automount(spec: &serde_json::Map<String, Value>, service_account: &Value) -> bool {
    spec.get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| service_account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// The projected volume upstream's `TokenVolumeSource` describes.
pub fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": PROJECTED_DEFAULT_MODE,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": API_ACCESS_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": crate::controllers::root_ca::ROOT_CA_CONFIG_MAP,
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Mounts a new `kube-api-access-xxxxx` volume in every init and app container that has
/// nothing mounted at the path yet, and adds the volume if any container took it. Ephemeral
/// containers cannot exist on a new pod, and upstream adds none to them later.
fn mount_api_access(spec: &mut serde_json::Map<String, Value>) {
    let taken: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let volume_name = loop {
        let candidate = format!(
            "{API_ACCESS_VOLUME_PREFIX}{}",
            crate::api::objects::random_suffix()
        );
        if !taken.contains(&candidate) {
            break candidate;
        }
    };
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": API_ACCESS_MOUNT_PATH});
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = array_entry(container, "volumeMounts");
            let Some(mounts) = mounts.as_array_mut() else {
                continue; // validation reports the malformed list
            };
            if mounts
                .iter()
                .any(|m| m["mountPath"] == API_ACCESS_MOUNT_PATH)
            {
                continue;
            }
            mounts.push(mount.clone());
            mounted = true;
        }
    }
    if !mounted {
        return;
    }
    let volumes = array_entry(spec, "volumes");
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(api_access_volume(&volume_name));
    }
}

/// The list under `key`, made empty when missing or null (defaulting may leave `null` behind).
fn array_entry<'a>(map: &'a mut serde_json::Map<String, Value>, key: &str) -> &'a mut Value {
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = json!([]);
    }
    entry
}

fn check_mirror_pod(
    resource: &Resource,
    name: &str,
    pod: &Value,
    account: &str,
) -> Result<(), ApiError> {
    let refuse = |why: &str| Err(ApiError::forbidden_object(resource, name, why));
    if !account.is_empty() {
        return refuse("a mirror pod may not reference service accounts");
    }
    let spec = &pod["spec"];
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let projections = || {
        volumes
            .iter()
            .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
    };
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten())
        .collect();
    let env_uses = |key_ref: &str, from_ref: &str| {
        containers.iter().any(|c| {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| !e["valueFrom"][key_ref].is_null())
                || c["envFrom"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| !e[from_ref].is_null())
        })
    };
    let secrets = volumes.iter().any(|v| !v["secret"].is_null())
        || projections().any(|p| !p["secret"].is_null())
        || env_uses("secretKeyRef", "secretRef")
        || spec["imagePullSecrets"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
    if secrets {
        return refuse("a mirror pod may not reference secrets");
    }
    let config_maps = volumes.iter().any(|v| !v["configMap"].is_null())
        || projections().any(|p| !p["configMap"].is_null())
        || env_uses("configMapKeyRef", "configMapRef");
    if config_maps {
        return refuse("a mirror pod may not reference configmaps");
    }
    if projections().any(|p| !p["serviceAccountToken"].is_null()) {
        return refuse("a mirror pod may not use ServiceAccountToken volume projections");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{key, TestCluster};

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn app() -> Value {
        json!({"name": "app", "image": "registry.local/app:1"})
    }

    fn api_access_volumes(pod: &Value) -> Vec<Value> {
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(API_ACCESS_VOLUME_PREFIX))
            })
            .cloned()
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_runs_as_default_with_the_api_access_volume_in_every_container() {
        let cluster = TestCluster::new();
        let created = cluster.create(
            "core/pods",
            pod(
                json!({"initContainers": [{"name": "init", "image": "registry.local/init:1"}],
                       "containers": [app()]}),
            ),
        );
        let spec = &created["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let volumes = api_access_volumes(&created);
        assert_eq!(volumes.len(), 1);
        let volume_name = volumes[0]["name"].as_str().unwrap();
        assert_eq!(volume_name.len(), API_ACCESS_VOLUME_PREFIX.len() + 5);
        assert_eq!(volumes[0], api_access_volume(volume_name));
        assert_eq!(volumes[0]["projected"]["defaultMode"], 420);
        for container in [&spec["initContainers"][0], &spec["containers"][0]] {
            assert_eq!(
                container["volumeMounts"],
                json!([{"name": volume_name, "readOnly": true, "mountPath": API_ACCESS_MOUNT_PATH}])
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pod_or_its_account_can_opt_out_and_the_pod_wins() {
        let cluster = TestCluster::new();
        cluster.create(
            "core/serviceaccounts",
            json!({"metadata": {"name": "quiet", "namespace": "default"},
                   "automountServiceAccountToken": false}),
        );
        let opted_out = cluster.create(
            "core/pods",
            pod(json!({"automountServiceAccountToken": false, "containers": [app()]})),
        );
        assert!(api_access_volumes(&opted_out).is_empty());
        assert!(opted_out["spec"]["containers"][0]["volumeMounts"].is_null());

        let mut by_account = pod(json!({"serviceAccountName": "quiet", "containers": [app()]}));
        by_account["metadata"]["name"] = json!("by-account");
        let by_account = cluster.create("core/pods", by_account);
        assert_eq!(by_account["spec"]["serviceAccount"], "quiet");
        assert!(api_access_volumes(&by_account).is_empty());

        let mut insists = pod(json!({"serviceAccountName": "quiet",
                                     "automountServiceAccountToken": true, "containers": [app()]}));
        insists["metadata"]["name"] = json!("insists");
        assert_eq!(
            api_access_volumes(&cluster.create("core/pods", insists)).len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_account_refuses_the_pod_as_upstream() {
        let cluster = TestCluster::new();
        let error = cluster
            .try_create(
                "core/pods",
                pod(json!({"serviceAccountName": "robot", "containers": [app()]})),
            )
            .unwrap_err();
        assert_eq!(error.code, 403);
        assert_eq!(
            error.message,
            "pods \"web\" is forbidden: error looking up service account default/robot: serviceaccount \"robot\" not found"
        );
        // The deprecated field names the account when the new one is empty.
        let error = cluster
            .try_create(
                "core/pods",
                pod(json!({"serviceAccount": "robot", "containers": [app()]})),
            )
            .unwrap_err();
        assert!(error.message.contains("default/robot"), "{}", error.message);
        assert!(cluster.get("core/pods", &key("web")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_in_a_missing_namespace_hears_about_the_namespace() {
        let cluster = TestCluster::new();
        let mut elsewhere = pod(json!({"containers": [app()]}));
        elsewhere["metadata"]["namespace"] = json!("nowhere");
        let error = cluster.try_create("core/pods", elsewhere).unwrap_err();
        assert_eq!(error.code, 404);
        assert_eq!(error.message, "namespaces \"nowhere\" not found");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_in_a_new_namespace_is_admitted_at_once() {
        let cluster = TestCluster::new();
        cluster.create("core/namespaces", json!({"metadata": {"name": "fresh"}}));
        let mut fresh = pod(json!({"containers": [app()]}));
        fresh["metadata"]["namespace"] = json!("fresh");
        let created = cluster.create("core/pods", fresh);
        assert_eq!(created["spec"]["serviceAccountName"], "default");
    }

    #[tokio::test(start_paused = true)]
    async fn an_existing_mount_at_the_path_is_kept() {
        let cluster = TestCluster::new();
        let mut own = app();
        own["volumeMounts"] = json!([{"name": "mine", "mountPath": API_ACCESS_MOUNT_PATH}]);
        let mut sidecar = app();
        sidecar["name"] = json!("sidecar");
        let created = cluster.create(
            "core/pods",
            pod(json!({"volumes": [{"name": "mine", "emptyDir": {}}],
                       "containers": [own.clone(), sidecar]})),
        );
        let containers = &created["spec"]["containers"];
        assert_eq!(containers[0]["volumeMounts"], own["volumeMounts"]);
        let volume_name = api_access_volumes(&created)[0]["name"].clone();
        assert_eq!(containers[1]["volumeMounts"][0]["name"], volume_name);

        // Nobody needs it: no volume.
        let mut only_own = pod(json!({"volumes": [{"name": "mine", "emptyDir": {}}],
                                      "containers": [own]}));
        only_own["metadata"]["name"] = json!("only-own");
        assert!(api_access_volumes(&cluster.create("core/pods", only_own)).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pull_secrets_come_from_the_account_when_the_pod_has_none() {
        let cluster = TestCluster::new();
        cluster.create(
            "core/serviceaccounts",
            json!({"metadata": {"name": "puller", "namespace": "default"},
                   "imagePullSecrets": [{"name": "registry"}]}),
        );
        let created = cluster.create(
            "core/pods",
            pod(json!({"serviceAccountName": "puller", "containers": [app()]})),
        );
        assert_eq!(
            created["spec"]["imagePullSecrets"],
            json!([{"name": "registry"}])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mirror_pods_are_left_alone_but_may_not_reach_guarded_objects() {
        let cluster = TestCluster::new();
        let mirror = |spec: Value, name: &str| {
            let mut pod = pod(spec);
            pod["metadata"]["name"] = json!(name);
            pod["metadata"]["annotations"] = json!({MIRROR_POD_ANNOTATION: "hash"});
            pod
        };
        let plain = cluster.create("core/pods", mirror(json!({"containers": [app()]}), "m1"));
        assert!(plain["spec"]["serviceAccountName"].is_null());
        assert!(api_access_volumes(&plain).is_empty());
        let refusals = [
            (
                json!({"serviceAccountName": "default", "containers": [app()]}),
                "a mirror pod may not reference service accounts",
            ),
            (
                json!({"volumes": [{"name": "s", "secret": {"secretName": "tls"}}],
                       "containers": [app()]}),
                "a mirror pod may not reference secrets",
            ),
            (
                json!({"volumes": [{"name": "c", "configMap": {"name": "settings"}}],
                       "containers": [app()]}),
                "a mirror pod may not reference configmaps",
            ),
            (
                json!({"volumes": [{"name": "t", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}}]}}],
                       "containers": [app()]}),
                "a mirror pod may not use ServiceAccountToken volume projections",
            ),
        ];
        for (spec, why) in refusals {
            let error = cluster
                .try_create("core/pods", mirror(spec, "m2"))
                .unwrap_err();
            assert_eq!(error.code, 403);
            assert_eq!(error.message, format!("pods \"m2\" is forbidden: {why}"));
        }
    }
}
