//! DaemonSets: one pod on every eligible node, replaced node by node on template changes.
//!
//! Pods are placed by the controller itself (`spec.nodeName`), as DaemonSets did before the
//! default scheduler took them over upstream: a Pi cluster has few nodes, and a daemon must run
//! on a node even when the scheduler would call it full. Eligibility follows nodeSelector,
//! required node affinity and NoSchedule/NoExecute taints; a daemon already running stays
//! through a new NoSchedule taint, only NoExecute evicts it. DaemonSet pods tolerate the node
//! condition taints, so they stay on a node that is merely unreachable. A replacement waits
//! until the daemon before it has terminated; failed daemons are deleted and replaced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::deployment::{int_or_percent, template_hash};
use super::history::{self, Flavor};
use super::replicas::{claim_pods, create_pods, pod_from_template, selector_of};
use super::view::{str_of, Key, PodInfo, Toleration, View};
use super::{key_of, now_seconds, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;

const HASH_LABEL: &str = "controller-revision-hash";

/// How DaemonSet revisions are named: bramble's own template hash, which DaemonSet pods carry
/// as `controller-revision-hash` (upstream's hashes a Go struct dump no other language makes).
const FLAVOR: Flavor = Flavor {
    hash_label: HASH_LABEL,
    hash: |template, _, collisions| template_hash(template, collisions),
};

/// The DaemonSet controller.
pub struct DaemonSetController;

/// Tolerations every DaemonSet pod gets, as upstream adds them.
fn daemon_tolerations() -> Vec<Value> {
    let mut tolerations = vec![
        json!({"key": super::nodes::NOT_READY, "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": super::nodes::UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}),
    ];
    for key in [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        super::nodes::UNSCHEDULABLE,
    ] {
        tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoSchedule"}));
    }
    tolerations
}

/// Whether a daemon should start on `node`, and whether one already there may stay: a
/// NoSchedule taint keeps new daemons off a node without evicting the one running (upstream's
/// shouldRun and shouldContinueRunning).
fn placement(template: &Value, node: &Value) -> (bool, bool) {
    let labels = node["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let selector_ok = template["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = template["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array();
    let affinity_ok = terms.is_none_or(|terms| {
        terms
            .iter()
            .any(|t| super::scheduler::node_term_matches(t, name, &labels))
    });
    if !selector_ok || !affinity_ok {
        return (false, false);
    }
    let mut tolerations = Toleration::of_spec(&template["spec"]);
    tolerations.extend(Toleration::of_spec(
        &json!({"tolerations": daemon_tolerations()}),
    ));
    let untolerated = |effect: &str| {
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == effect)
            .any(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
    };
    let may_stay = !untolerated("NoExecute");
    (may_stay && !untolerated("NoSchedule"), may_stay)
}

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "apps/daemonsets" => vec![(change.namespace.clone(), change.name.clone())],
            "core/pods" => {
                super::replicas::owners_of_pod_change(change, view, "apps/daemonsets", "DaemonSet")
            }
            "core/nodes" => self.all_keys(view),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("apps/daemonsets").map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(set) = ctx.view().get("apps/daemonsets", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        if !set["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let template = &set["spec"]["template"];
        let revisions = history::sync_revisions(ctx, &set, &FLAVOR)?;
        let hash = str_of(&revisions.update["metadata"]["labels"][HASH_LABEL]);
        let owned = claim_pods(ctx, &set, &selector_of(&set))?;
        let nodes: Vec<Arc<Value>> = ctx.view().list("core/nodes").cloned().collect();
        let mut by_node: HashMap<String, Vec<Arc<PodInfo>>> = HashMap::new();
        // Nodes where a daemon is still terminating: its successor waits for it, as upstream's
        // does (two daemons on a node would contend for its host ports).
        let mut terminating: HashSet<&str> = HashSet::new();
        let mut failed: Vec<&Arc<PodInfo>> = Vec::new();
        for pod in &owned {
            if pod.is_active() {
                by_node
                    .entry(pod.node.clone())
                    .or_default()
                    .push(pod.clone());
            } else if pod.deleting {
                if pod.phase != "Succeeded" && pod.phase != "Failed" {
                    terminating.insert(&pod.node);
                }
            } else if pod.phase == "Failed" {
                failed.push(pod);
            }
        }
        let min_ready = set["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = now_seconds();
        let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
            (0, 0, 0, 0, 0, 0);
        let mut old_pods: Vec<Arc<PodInfo>> = Vec::new();
        let mut new_pods: Vec<Value> = Vec::new();
        for node in &nodes {
            let name = str_of(&node["metadata"]["name"]);
            let pods = by_node.remove(&name).unwrap_or_default();
            for pod in failed.iter().filter(|p| p.node == name) {
                ctx.event(
                    &set,
                    "Warning",
                    "FailedDaemonPod",
                    &format!(
                        "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                        pod.namespace, pod.name
                    ),
                );
                ctx.delete_pod(pod)?;
            }
            let (should_run, may_stay) = placement(template, node);
            if !should_run {
                misscheduled += i64::from(!pods.is_empty());
                if !may_stay {
                    for pod in pods {
                        ctx.delete_pod(&pod)?;
                    }
                }
                continue;
            }
            desired += 1;
            if pods.is_empty() {
                if terminating.contains(name.as_str()) {
                    continue;
                }
                let mut pod = pod_from_template(&set, template, &key.1);
                pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
                pod["spec"]["nodeName"] = json!(name);
                let mut tolerations = pod["spec"]["tolerations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                tolerations.extend(daemon_tolerations());
                pod["spec"]["tolerations"] = json!(tolerations);
                new_pods.push(pod);
                continue;
            }
            current += 1;
            // One daemon per node: the oldest stays.
            let mut pods = pods;
            pods.sort_by_key(|p| p.created);
            for extra in &pods[1..] {
                ctx.delete_pod(extra)?;
            }
            let pod = &pods[0];
            ready += i64::from(pod.ready);
            available += i64::from(pod.is_available(min_ready, now));
            if pod.labels.get(HASH_LABEL) == Some(&hash) {
                updated += 1;
            } else {
                old_pods.push(pod.clone());
            }
        }
        if let (_, Some(error)) = create_pods(ctx, &set, new_pods) {
            return Err(error);
        }
        // Pods on nodes that no longer exist are left to the node controller's clean-up.
        let rolling = set["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling && !old_pods.is_empty() {
            let max_unavailable = int_or_percent(
                &set["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
                desired,
                false,
                "1",
            )
            .max(1);
            let mut unavailable = desired - available;
            // Old pods that are not available anyway go first.
            old_pods.sort_by_key(|p| p.is_available(min_ready, now));
            for pod in old_pods {
                let counts = pod.is_available(min_ready, now);
                if counts && unavailable >= max_unavailable {
                    break;
                }
                ctx.delete_pod(&pod)?;
                if counts {
                    unavailable += 1;
                }
            }
        }
        let generation = set["metadata"]["generation"].clone();
        let result = ctx.update_status("apps/daemonsets", &key.0, &key.1, |ds| {
            ds["status"] = json!({
                "currentNumberScheduled": current,
                "numberMisscheduled": misscheduled,
                "desiredNumberScheduled": desired,
                "numberReady": ready,
                "observedGeneration": generation,
                "updatedNumberScheduled": updated,
                "numberAvailable": available,
                "numberUnavailable": (desired - available).max(0),
            });
            if revisions.collisions > 0 {
                ds["status"]["collisionCount"] = json!(revisions.collisions);
            }
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        // Revisions a daemon still runs stay, whatever the limit (upstream's cleanupHistory).
        let mut live: HashSet<String> = HashSet::new();
        live.insert(str_of(&revisions.update["metadata"]["name"]));
        let running: HashSet<String> = owned
            .iter()
            .filter(|p| !p.deleting)
            .filter_map(|p| p.labels.get(HASH_LABEL).cloned())
            .collect();
        for revision in &revisions.all {
            if let Some(hash) = revision["metadata"]["labels"][HASH_LABEL].as_str() {
                if running.contains(hash) {
                    live.insert(str_of(&revision["metadata"]["name"]));
                }
            }
        }
        let limit = set["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10);
        history::truncate_history(ctx, &revisions.all, &live, limit)?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::controllers::testing::{key, pod_spec, seconds_ago, TestCluster};

    fn node(cluster: &TestCluster, name: &str, disk: &str, spec: Value) {
        cluster.create(
            "core/nodes",
            json!({
                "metadata": {"name": name, "labels": {"disk": disk}},
                "spec": spec,
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }),
        );
    }

    fn node_key(name: &str) -> Key {
        (String::new(), name.to_owned())
    }

    fn daemon_set() -> Value {
        json!({
            "metadata": {"name": "logs", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "logs"}},
                "template": {
                    "metadata": {"labels": {"app": "logs"}},
                    "spec": {
                        "nodeSelector": {"disk": "ssd"},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
                        "containers": pod_spec()["containers"],
                    },
                },
            },
        })
    }

    /// Node name → live daemon pod on it.
    fn daemons(cluster: &TestCluster) -> BTreeMap<String, Value> {
        cluster
            .live_pods()
            .into_iter()
            .map(|p| (str_of(&p["spec"]["nodeName"]), p))
            .collect()
    }

    fn nodes_of(cluster: &TestCluster) -> Vec<String> {
        daemons(cluster).into_keys().collect()
    }

    fn ds_status(cluster: &TestCluster) -> Value {
        cluster.get("apps/daemonsets", &key("logs")).unwrap()["status"].clone()
    }

    fn taint(cluster: &TestCluster, node: &str, taint: Value) {
        cluster.update("core/nodes", &node_key(node), |n| {
            n["spec"]["taints"] = json!([taint])
        });
    }

    /// A cluster whose ssd nodes `names` each run a Running daemon of `daemon_set()`.
    fn daemons_running_on(names: &[&str]) -> TestCluster {
        let cluster = TestCluster::new();
        for name in names {
            node(&cluster, name, "ssd", json!({}));
        }
        cluster.create("apps/daemonsets", daemon_set());
        cluster.reconcile(&DaemonSetController, &key("logs"));
        run_all(&cluster);
        cluster
    }

    fn run_all(cluster: &TestCluster) {
        for (i, (node, pod)) in daemons(cluster).into_iter().enumerate() {
            let key = key(pod["metadata"]["name"].as_str().unwrap());
            cluster.set_pod_status(
                &key,
                "Running",
                &format!("10.42.{i}.2"),
                Some(&seconds_ago(60)),
            );
            assert!(!node.is_empty());
        }
    }

    #[test]
    fn one_daemon_on_each_node_its_selector_and_tolerations_allow() {
        let cluster = TestCluster::new();
        node(&cluster, "pi-1", "ssd", json!({}));
        node(
            &cluster,
            "pi-2",
            "ssd",
            json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        node(&cluster, "pi-3", "hdd", json!({}));
        node(
            &cluster,
            "pi-4",
            "ssd",
            json!({"unschedulable": true,
            "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
        );
        node(
            &cluster,
            "pi-5",
            "ssd",
            json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
        );
        node(
            &cluster,
            "pi-6",
            "ssd",
            json!({"taints": [{"key": "maintenance", "effect": "NoExecute"}]}),
        );
        let ds = cluster.create("apps/daemonsets", daemon_set());
        let controller = DaemonSetController;

        assert_eq!(cluster.reconcile(&controller, &key("logs")), Action::Done);
        assert_eq!(
            nodes_of(&cluster),
            ["pi-1", "pi-2", "pi-4"],
            "pi-3: selector; pi-5: NoSchedule taint; pi-6: NoExecute taint; cordoned pi-4 is fine"
        );
        let hash = template_hash(&ds["spec"]["template"], 0);
        for pod in daemons(&cluster).values() {
            assert_eq!(pod["metadata"]["generateName"], "logs-");
            assert_eq!(
                pod["metadata"]["labels"],
                json!({"app": "logs", HASH_LABEL: hash})
            );
            assert_eq!(
                pod["metadata"]["ownerReferences"][0]["uid"],
                ds["metadata"]["uid"]
            );
            assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
            let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
            for expected in daemon_tolerations() {
                assert!(
                    tolerations.contains(&expected),
                    "{expected} in {tolerations:?}"
                );
            }
        }
        assert_eq!(
            cluster
                .events_about("logs")
                .iter()
                .filter(|(reason, _)| reason == "SuccessfulCreate")
                .count(),
            3
        );

        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(
            nodes_of(&cluster),
            ["pi-1", "pi-2", "pi-4"],
            "no second daemon"
        );
        assert_eq!(
            ds_status(&cluster),
            json!({
                "currentNumberScheduled": 3, "numberMisscheduled": 0, "desiredNumberScheduled": 3,
                "numberReady": 0, "observedGeneration": 1, "updatedNumberScheduled": 3,
                "numberAvailable": 0, "numberUnavailable": 3,
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_and_available_daemons_are_counted() {
        let cluster = TestCluster::new();
        node(&cluster, "pi-1", "ssd", json!({}));
        node(&cluster, "pi-2", "ssd", json!({}));
        node(&cluster, "pi-3", "ssd", json!({}));
        let mut ds = daemon_set();
        ds["spec"]["minReadySeconds"] = json!(30);
        cluster.create("apps/daemonsets", ds);
        let controller = DaemonSetController;
        cluster.reconcile(&controller, &key("logs"));
        let pods = daemons(&cluster);
        let name = |node: &str| key(pods[node]["metadata"]["name"].as_str().unwrap());
        cluster.set_pod_status(
            &name("pi-1"),
            "Running",
            "10.42.1.2",
            Some(&seconds_ago(30)),
        );
        cluster.set_pod_status(&name("pi-2"), "Running", "10.42.2.2", Some(&seconds_ago(5)));
        cluster.set_pod_status(&name("pi-3"), "Running", "10.42.3.2", None);

        cluster.reconcile(&controller, &key("logs"));
        let status = ds_status(&cluster);
        assert_eq!(status["desiredNumberScheduled"], 3);
        assert_eq!(status["currentNumberScheduled"], 3);
        assert_eq!(status["numberReady"], 2);
        assert_eq!(status["numberAvailable"], 1);
        assert_eq!(status["numberUnavailable"], 2);

        tokio::time::advance(Duration::from_secs(25)).await;
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(ds_status(&cluster)["numberAvailable"], 2);
    }

    #[test]
    fn daemons_leave_nodes_that_stop_matching_and_follow_new_ones() {
        let cluster = daemons_running_on(&["pi-1", "pi-2"]);
        let controller = DaemonSetController;
        assert_eq!(nodes_of(&cluster), ["pi-1", "pi-2"]);

        cluster.update("core/nodes", &node_key("pi-1"), |n| {
            n["metadata"]["labels"]["disk"] = json!("hdd")
        });
        assert_eq!(cluster.queued(&controller), [key("logs")], "a node change");
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(nodes_of(&cluster), ["pi-2"]);
        let status = ds_status(&cluster);
        assert_eq!(status["desiredNumberScheduled"], 1);
        assert_eq!(status["currentNumberScheduled"], 1);
        assert_eq!(status["numberMisscheduled"], 1, "counted as it was found");

        node(&cluster, "pi-3", "ssd", json!({}));
        assert_eq!(cluster.queued(&controller), [key("logs")]);
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(nodes_of(&cluster), ["pi-2", "pi-3"]);
    }

    #[test]
    fn a_running_daemon_stays_through_a_no_schedule_taint_but_not_a_no_execute_one() {
        let cluster = daemons_running_on(&["pi-1"]);
        let controller = DaemonSetController;

        taint(
            &cluster,
            "pi-1",
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}),
        );
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(
            nodes_of(&cluster),
            ["pi-1"],
            "NoSchedule keeps new pods off, no more"
        );
        let status = ds_status(&cluster);
        assert_eq!(status["desiredNumberScheduled"], 0);
        assert_eq!(status["numberMisscheduled"], 1);

        taint(
            &cluster,
            "pi-1",
            json!({"key": "dedicated", "value": "db", "effect": "NoExecute"}),
        );
        cluster.reconcile(&controller, &key("logs"));
        assert!(nodes_of(&cluster).is_empty(), "NoExecute evicts");
    }

    #[test]
    fn a_daemon_stays_on_an_unreachable_node_and_none_is_added_there() {
        let cluster = daemons_running_on(&["pi-1"]);
        let controller = DaemonSetController;
        // What the node lifecycle controller puts on a node that stopped reporting.
        let unreachable = json!([
            {"key": super::super::nodes::UNREACHABLE, "effect": "NoSchedule"},
            {"key": super::super::nodes::UNREACHABLE, "effect": "NoExecute"},
        ]);
        cluster.update("core/nodes", &node_key("pi-1"), |n| {
            n["spec"]["taints"] = unreachable.clone()
        });
        node(&cluster, "pi-2", "ssd", json!({"taints": unreachable}));
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(
            nodes_of(&cluster),
            ["pi-1"],
            "kept on pi-1, none started on pi-2"
        );
    }

    #[test]
    fn a_failed_daemon_is_deleted_and_replaced() {
        let cluster = TestCluster::new();
        node(&cluster, "pi-1", "ssd", json!({}));
        cluster.create("apps/daemonsets", daemon_set());
        let controller = DaemonSetController;
        cluster.reconcile(&controller, &key("logs"));
        let failed = daemons(&cluster)["pi-1"]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        cluster.set_pod_status(&key(&failed), "Failed", "", None);

        cluster.reconcile(&controller, &key("logs"));
        assert!(cluster.get("core/pods", &key(&failed)).is_none(), "deleted");
        let pods = daemons(&cluster);
        assert_eq!(pods.len(), 1);
        assert_ne!(
            pods["pi-1"]["metadata"]["name"],
            failed.as_str(),
            "a new one"
        );
        assert!(cluster.events_about("logs").contains(&(
            "FailedDaemonPod".to_owned(),
            format!("Found failed daemon pod default/{failed} on node pi-1, will try to kill it"),
        )));
    }

    #[test]
    fn a_template_change_replaces_one_daemon_at_a_time() {
        let cluster = daemons_running_on(&["pi-1", "pi-2"]);
        let controller = DaemonSetController;
        let old = daemons(&cluster);
        let ds = cluster.update("apps/daemonsets", &key("logs"), |ds| {
            ds["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.local/app:2")
        });
        let new_hash = template_hash(&ds["spec"]["template"], 0);

        cluster.reconcile(&controller, &key("logs"));
        let status = ds_status(&cluster);
        assert_eq!(status["updatedNumberScheduled"], 0);
        assert_eq!(status["observedGeneration"], 2);
        let replaced: Vec<&String> = old
            .iter()
            .filter(|(_, pod)| {
                let key = key(pod["metadata"]["name"].as_str().unwrap());
                !cluster.get("core/pods", &key).unwrap()["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|(node, _)| node)
            .collect();
        assert_eq!(replaced.len(), 1, "maxUnavailable 1: {replaced:?}");

        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(
            nodes_of(&cluster).len(),
            1,
            "no new daemon beside one still terminating"
        );
        let terminating = old[replaced[0]]["metadata"]["name"].as_str().unwrap();
        cluster.delete(
            "core/pods",
            &key(terminating),
            &crate::api::objects::DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        );
        cluster.reconcile(&controller, &key("logs"));
        let now = daemons(&cluster);
        assert_eq!(now.len(), 2);
        assert_eq!(
            now[replaced[0]]["metadata"]["labels"][HASH_LABEL],
            new_hash.as_str()
        );
    }

    #[test]
    fn revisions_follow_the_template_and_undo_renumbers_the_old_one() {
        let cluster = daemons_running_on(&["pi-1"]);
        let controller = DaemonSetController;
        let revisions = |cluster: &TestCluster| {
            let mut found: Vec<(i64, String)> = cluster
                .list("apps/controllerrevisions", "default")
                .iter()
                .map(|r| {
                    (
                        r["revision"].as_i64().unwrap(),
                        str_of(&r["metadata"]["labels"][HASH_LABEL]),
                    )
                })
                .collect();
            found.sort();
            found
        };
        let first = daemons(&cluster)["pi-1"]["metadata"]["labels"][HASH_LABEL]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(revisions(&cluster), [(1, first.clone())]);
        let revision = cluster
            .get("apps/controllerrevisions", &key(&format!("logs-{first}")))
            .expect("named <set>-<hash>");
        assert_eq!(revision["metadata"]["labels"]["app"], "logs");
        assert_eq!(
            revision["metadata"]["ownerReferences"][0]["kind"],
            "DaemonSet"
        );

        cluster.update("apps/daemonsets", &key("logs"), |ds| {
            ds["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.local/app:2")
        });
        cluster.reconcile(&controller, &key("logs"));
        let second = revisions(&cluster)[1].1.clone();
        assert_eq!(
            revisions(&cluster),
            [(1, first.clone()), (2, second.clone())]
        );

        let current = cluster.get("apps/daemonsets", &key("logs")).unwrap();
        let undone = crate::patch::apply_strategic_merge_patch(
            &current,
            &revision["data"],
            "apps",
            "DaemonSet",
        )
        .unwrap();
        cluster.update("apps/daemonsets", &key("logs"), |ds| {
            ds["spec"] = undone["spec"].clone()
        });
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(revisions(&cluster), [(2, second), (3, first.clone())]);

        cluster.update("apps/daemonsets", &key("logs"), |ds| {
            ds["spec"]["revisionHistoryLimit"] = json!(0)
        });
        for pod in cluster.list("core/pods", "default") {
            cluster.delete(
                "core/pods",
                &key(pod["metadata"]["name"].as_str().unwrap()),
                &crate::api::objects::DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            );
        }
        cluster.reconcile(&controller, &key("logs"));
        assert_eq!(
            revisions(&cluster),
            [(3, first)],
            "no daemon runs the second"
        );
    }
}
