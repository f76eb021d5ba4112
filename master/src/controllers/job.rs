//! Jobs: run pods until `completions` succeed, `parallelism` at a time, giving up after
//! `backoffLimit` failures; Indexed Jobs give each pod an index; a pod failure policy decides
//! what a failure means; failed pods are replaced after an exponential back-off.
//!
//! ```text
//!   running ──success reached──▶ SuccessCriteriaMet ──no pod left terminating──▶ Complete
//!      │
//!      └──FailJob rule, backoffLimit, deadline, failed indexes──▶ FailureTarget ──▶ Failed
//! ```
//!
//! The interim conditions come first, as upstream writes them since 1.31: a finished Job's
//! pods are stopped, and `Complete` or `Failed` follows once none is left terminating.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use super::replicas::{claim_pods, create_pods, deletion_order, pod_from_template, selector_of};
use super::view::{unix_seconds, Key, PodInfo, View};
use super::{
    condition, key_of, now, now_seconds, now_time, set_condition, Action, Context, Reconciler,
};
use crate::api::error::ApiError;
use crate::store::Change;

/// The label and annotation that carry an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The first back-off after a failed pod; it doubles with each further failure.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// The longest back-off (upstream's `MaxJobPodFailureBackOff`).
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// The Job controller.
pub struct JobController;

fn has_condition(job: &Value, kind: &str) -> bool {
    condition(job, kind).is_some_and(|c| c["status"] == "True")
}

/// `Complete` or `Failed` is True.
pub fn finished(job: &Value) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// A set of indexes as upstream writes it: `1,3-5,7,8` (a run of two stays a list).
pub fn format_indexes(indexes: &BTreeSet<i64>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().unwrap_or(last);
        }
        match last - first {
            0 => parts.push(first.to_string()),
            1 => parts.push(format!("{first},{last}")),
            _ => parts.push(format!("{first}-{last}")),
        }
    }
    parts.join(",")
}

/// Reads `1,3-5` back, ignoring what is malformed or not below `completions`.
pub fn parse_indexes(text: &str, completions: i64) -> BTreeSet<i64> {
    let mut indexes = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i64>(), b.parse::<i64>()),
            None => (part.parse(), part.parse()),
        };
        if let (Ok(first), Ok(last)) = (first, last) {
            indexes.extend((first.max(0)..=last.min(completions - 1)).take(100_000));
        }
    }
    indexes
}

/// What the pod failure policy makes of one failed pod.
#[derive(Debug, Clone, PartialEq)]
enum PolicyAction {
    FailJob(String),
    FailIndex,
    Ignore,
    Count,
}

/// The first rule of `podFailurePolicy` that matches a failed pod (upstream's
/// `matchPodFailurePolicy`): exit codes of terminated containers (never 0), then conditions.
fn match_failure_policy(policy: &Value, pod: &Value) -> Option<PolicyAction> {
    let rules = policy["rules"].as_array()?;
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    for (index, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or_default();
        let decide = |message: String| match action {
            "FailJob" => PolicyAction::FailJob(message),
            "FailIndex" => PolicyAction::FailIndex,
            "Ignore" => PolicyAction::Ignore,
            _ => PolicyAction::Count,
        };
        let codes = &rule["onExitCodes"];
        if codes.is_object() {
            let values = codes["values"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let only = codes["containerName"].as_str();
            let statuses = ["containerStatuses", "initContainerStatuses"]
                .iter()
                .flat_map(|field| pod["status"][*field].as_array().into_iter().flatten());
            for status in statuses {
                let container = status["name"].as_str().unwrap_or_default();
                let Some(code) = status["state"]["terminated"]["exitCode"].as_i64() else {
                    continue;
                };
                if code == 0 || only.is_some_and(|c| c != container) {
                    continue;
                }
                let listed = values.iter().any(|v| v.as_i64() == Some(code));
                if listed == (codes["operator"] == "In") {
                    return Some(decide(format!(
                        "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {action} rule at index {index}"
                    )));
                }
            }
        }
        for pattern in rule["onPodConditions"].as_array().into_iter().flatten() {
            let wanted = pattern["status"].as_str().unwrap_or("True");
            let kind = pattern["type"].as_str().unwrap_or_default();
            let present = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == kind && c["status"] == wanted);
            if present {
                return Some(decide(format!(
                    "Pod {namespace}/{name} has condition {kind} matching {action} rule at index {index}"
                )));
            }
        }
    }
    None
}

/// When a finished pod finished: its last container's `finishedAt`, else when it stopped
/// being ready, else its deletion or creation time.
fn finish_time(pod: &Value) -> Option<Timestamp> {
    let parse = |v: &Value| v.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let status = &pod["status"];
    let containers = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|field| status[*field].as_array().into_iter().flatten())
        .filter_map(|c| parse(&c["state"]["terminated"]["finishedAt"]))
        .max();
    containers
        .or_else(|| {
            status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready" && c["status"] == "False")
                .and_then(|c| parse(&c["lastTransitionTime"]))
        })
        .or_else(|| parse(&pod["metadata"]["deletionTimestamp"]))
        .or_else(|| parse(&pod["metadata"]["creationTimestamp"]))
}

/// The back-off before the next pod after `failures` failures: 10 s doubling, at most 10 min.
fn failure_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FAILURE_BACKOFF * 2u32.pow(doublings)).min(MAX_FAILURE_BACKOFF)
}

/// An Indexed Job's pod index, when it is one below `completions`.
fn index_of(pod: &PodInfo, completions: i64) -> Option<i64> {
    pod.labels
        .get(COMPLETION_INDEX)
        .and_then(|i| i.parse().ok())
        .filter(|i| (0..completions).contains(i))
}

/// A pod for index `index` of an Indexed Job: the index as annotation and label, the hostname
/// `<job>-<index>`, and `JOB_COMPLETION_INDEX` from the label for every container that does
/// not set it (the job controller injects it upstream, not the kubelet).
fn indexed_pod(job: &Value, name: &str, index: i64) -> Value {
    let mut pod = pod_from_template(job, &job["spec"]["template"], name);
    // Room for `-<index>-` and the five random characters in 63.
    let suffix = format!("-{index}-");
    let prefix: String = name
        .chars()
        .take(58usize.saturating_sub(suffix.len() - 1))
        .collect();
    pod["metadata"]["generateName"] = json!(format!("{prefix}{suffix}"));
    pod["metadata"]["annotations"][COMPLETION_INDEX] = json!(index.to_string());
    pod["metadata"]["labels"][COMPLETION_INDEX] = json!(index.to_string());
    if pod["spec"].is_object() {
        pod["spec"]["hostname"] = json!(format!("{name}-{index}"));
    }
    let env = json!({
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.labels['{COMPLETION_INDEX}']")}},
    });
    for field in ["containers", "initContainers"] {
        let containers = pod["spec"].get_mut(field).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten().filter(|c| c.is_object()) {
            if !container["env"].is_array() {
                container["env"] = json!([]);
            }
            if let Some(list) = container["env"].as_array_mut() {
                if !list.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX") {
                    list.push(env.clone());
                }
            }
        }
    }
    pod
}

/// How a Job ends: (final condition, reason, message).
type Outcome = (&'static str, String, String);

fn failure(reason: &str, message: &str) -> Outcome {
    ("Failed", reason.to_owned(), message.to_owned())
}

/// The interim condition that announces a final one.
fn interim_of(kind: &str) -> &'static str {
    if kind == "Complete" {
        "SuccessCriteriaMet"
    } else {
        "FailureTarget"
    }
}

/// The outcome an interim condition already announced.
fn announced(job: &Value) -> Option<Outcome> {
    for (interim, kind) in [
        ("FailureTarget", "Failed"),
        ("SuccessCriteriaMet", "Complete"),
    ] {
        if let Some(c) = condition(job, interim).filter(|c| c["status"] == "True") {
            let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
            return Some((kind, text("reason"), text("message")));
        }
    }
    None
}

/// Failed pods as the policy sees them.
struct Failures {
    /// Failed pods that count, with their index and finish time.
    counted: Vec<(Option<i64>, Option<Timestamp>)>,
    /// The first FailJob match's message.
    fail_job: Option<String>,
    /// Indexes a FailIndex rule failed.
    fail_index: BTreeSet<i64>,
}

fn read_failures(
    ctx: &Context,
    job: &Value,
    failed: &[&Arc<PodInfo>],
    completions: i64,
) -> Result<Failures, ApiError> {
    let policy = &job["spec"]["podFailurePolicy"];
    let mut result = Failures {
        counted: Vec::new(),
        fail_job: None,
        fail_index: BTreeSet::new(),
    };
    for pod in failed {
        let Some(object) = ctx.get("core/pods", &pod.namespace, &pod.name)? else {
            continue;
        };
        let index = index_of(pod, completions);
        match match_failure_policy(policy, &object) {
            Some(PolicyAction::Ignore) => continue,
            Some(PolicyAction::FailJob(message)) => {
                result.fail_job.get_or_insert(message);
            }
            Some(PolicyAction::FailIndex) => result.fail_index.extend(index),
            Some(PolicyAction::Count) | None => {}
        }
        result.counted.push((index, finish_time(&object)));
    }
    Ok(result)
}

impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job-controller"
    }

    fn keys_for(&self, change: &Change, view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "batch/jobs" => vec![(change.namespace.clone(), change.name.clone())],
            "core/pods" => super::replicas::owners_of_pod_change(change, view, "batch/jobs", "Job"),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("batch/jobs").map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(job) = ctx.view().get("batch/jobs", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        if !job["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let pods = claim_pods(ctx, &job, &selector_of(&job))?;
        let spec = &job["spec"];
        let indexed = spec["completionMode"] == "Indexed";
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let completions = spec["completions"].as_i64();
        let index_limit = completions.unwrap_or(0);
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let per_index_limit = spec["backoffLimitPerIndex"].as_i64().filter(|_| indexed);
        let suspended = spec["suspend"] == true;
        let wait_for_terminal = spec["podReplacementPolicy"] == "Failed";
        let now_secs = now_seconds();
        let start = job["status"]["startTime"].as_str().and_then(unix_seconds);

        let mut active: Vec<Arc<PodInfo>> =
            pods.iter().filter(|p| p.is_active()).cloned().collect();
        let terminating = pods
            .iter()
            .filter(|p| p.deleting && p.phase != "Succeeded" && p.phase != "Failed")
            .count() as i64;
        let failed_pods: Vec<&Arc<PodInfo>> = pods.iter().filter(|p| p.phase == "Failed").collect();
        let failures = read_failures(ctx, &job, &failed_pods, index_limit)?;
        let failed = failures.counted.len() as i64;

        // Indexes: what succeeded (kept in the status too: pods may be gone) and what failed.
        let mut completed = BTreeSet::new();
        let mut failed_indexes = BTreeSet::new();
        if indexed {
            let status = &job["status"];
            completed = parse_indexes(
                status["completedIndexes"].as_str().unwrap_or(""),
                index_limit,
            );
            completed.extend(
                pods.iter()
                    .filter(|p| p.phase == "Succeeded")
                    .filter_map(|p| index_of(p, index_limit)),
            );
            if let Some(limit) = per_index_limit {
                failed_indexes =
                    parse_indexes(status["failedIndexes"].as_str().unwrap_or(""), index_limit);
                let mut per_index: BTreeMap<i64, i64> = BTreeMap::new();
                for index in failures.counted.iter().filter_map(|(i, _)| *i) {
                    *per_index.entry(index).or_default() += 1;
                }
                failed_indexes.extend(
                    per_index
                        .into_iter()
                        .filter(|(_, n)| *n > limit)
                        .map(|(i, _)| i),
                );
                failed_indexes.extend(failures.fail_index.iter().copied());
                failed_indexes.retain(|i| !completed.contains(i));
            }
        }
        let succeeded = if indexed {
            completed.len() as i64
        } else {
            pods.iter().filter(|p| p.phase == "Succeeded").count() as i64
        };

        // Active pods that must go: duplicates of an index, indexes already done or failed,
        // and pods with no valid index.
        let mut surplus: Vec<Arc<PodInfo>> = Vec::new();
        if indexed {
            let mut seen = BTreeSet::new();
            let mut ordered = active.clone();
            ordered.sort_by_key(|p| (p.created, p.name.clone()));
            for pod in ordered {
                match index_of(&pod, index_limit) {
                    Some(i)
                        if !completed.contains(&i)
                            && !failed_indexes.contains(&i)
                            && seen.insert(i) => {}
                    _ => surplus.push(pod),
                }
            }
            active.retain(|p| !surplus.iter().any(|s| s.name == p.name));
        }

        let restarts: i64 = active.iter().map(|p| p.restarts).sum();
        let on_failure = spec["template"]["spec"]["restartPolicy"] == "OnFailure";
        let restarts_exceeded = on_failure
            && if backoff_limit == 0 {
                restarts > 0
            } else {
                restarts >= backoff_limit
            };
        let deadline_passed = !suspended
            && spec["activeDeadlineSeconds"]
                .as_i64()
                .zip(start)
                .is_some_and(|(deadline, start)| now_secs >= start + deadline);
        let max_failed_indexes = spec["maxFailedIndexes"].as_i64();

        let previously = announced(&job);
        let mut outcome: Option<Outcome> = None;
        if finished(&job) || previously.is_some() {
            // Decided already: what is left is stopping the pods.
        } else if let Some(message) = &failures.fail_job {
            outcome = Some(failure("PodFailurePolicy", message));
        } else if failed > backoff_limit || restarts_exceeded {
            outcome = Some(failure(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if deadline_passed {
            outcome = Some(failure(
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        } else if max_failed_indexes.is_some_and(|m| failed_indexes.len() as i64 > m) {
            outcome = Some(failure(
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            ));
        } else if indexed
            && !failed_indexes.is_empty()
            && active.is_empty()
            && (completed.len() + failed_indexes.len()) as i64 >= index_limit
        {
            outcome = Some(failure("FailedIndexes", "Job has failed indexes"));
        } else if if indexed {
            succeeded >= index_limit
        } else {
            completions.is_some_and(|c| succeeded >= c)
                || (completions.is_none() && succeeded > 0 && active.is_empty())
        } {
            outcome = Some((
                "Complete",
                "CompletionsReached".into(),
                "Reached expected number of succeeded pods".into(),
            ));
        }
        let decided = finished(&job) || previously.is_some() || outcome.is_some();

        let mut created = 0;
        let mut backoff_wait = None;
        let mut stopping: Vec<Arc<PodInfo>> = surplus;
        if decided || suspended {
            stopping.extend(active.iter().cloned());
        } else {
            let occupied = active.len()
                + if wait_for_terminal {
                    terminating as usize
                } else {
                    0
                };
            let wanted = match completions {
                Some(c) => parallelism.min(c - succeeded - failed_indexes.len() as i64),
                // A work queue: after the first success what runs may finish, nothing starts.
                None if succeeded > 0 => active.len() as i64,
                None => parallelism,
            }
            .max(0) as usize;
            // Failures since the last success (pods failed after the newest succeeded pod was
            // made) wait out a doubling back-off before new pods.
            if occupied < wanted && !failures.counted.is_empty() {
                let last_success = pods
                    .iter()
                    .filter(|p| p.phase == "Succeeded")
                    .map(|p| p.created)
                    .max()
                    .unwrap_or(i64::MIN);
                let recent: Vec<Timestamp> = failures
                    .counted
                    .iter()
                    .filter_map(|(_, at)| *at)
                    .filter(|at| at.as_second() >= last_success)
                    .collect();
                if let Some(last) = recent.iter().max() {
                    let delay = failure_backoff(recent.len() as u32);
                    let ready_at =
                        *last + jiff::SignedDuration::try_from(delay).unwrap_or_default();
                    let current = now();
                    if current < ready_at {
                        backoff_wait = Some(
                            Duration::try_from(ready_at.duration_since(current))
                                .unwrap_or_default(),
                        );
                    }
                }
            }
            if occupied < wanted && backoff_wait.is_none() {
                let new_pods: Vec<Value> = if indexed {
                    let taken: BTreeSet<i64> = active
                        .iter()
                        .chain(pods.iter().filter(|p| {
                            wait_for_terminal
                                && p.deleting
                                && p.phase != "Succeeded"
                                && p.phase != "Failed"
                        }))
                        .filter_map(|p| index_of(p, index_limit))
                        .collect();
                    (0..index_limit)
                        .filter(|i| {
                            !completed.contains(i)
                                && !failed_indexes.contains(i)
                                && !taken.contains(i)
                        })
                        .take(wanted - occupied)
                        .map(|i| indexed_pod(&job, &key.1, i))
                        .collect()
                } else {
                    (occupied..wanted)
                        .map(|_| pod_from_template(&job, &spec["template"], &key.1))
                        .collect()
                };
                let (made, failure) = create_pods(ctx, &job, new_pods);
                created += made as i64;
                if let Some(error) = failure {
                    return Err(error);
                }
            } else if active.len() > wanted {
                let mut extra = active.clone();
                deletion_order(&mut extra);
                stopping.extend(extra.into_iter().take(active.len() - wanted));
            }
        }
        for pod in &stopping {
            ctx.delete_pod(pod)?;
        }
        // Pods on nodes stop gracefully: they are terminating until their node reports them.
        let still_terminating =
            terminating + stopping.iter().filter(|p| !p.node.is_empty()).count() as i64;
        let ending = outcome
            .clone()
            .or(previously.clone())
            .filter(|_| !finished(&job));
        let final_now = ending.is_some() && still_terminating == 0;
        if let (true, Some((kind, reason, message))) = (final_now, &ending) {
            match *kind {
                "Complete" => ctx.event(&job, "Normal", "Completed", "Job completed"),
                _ => ctx.event(&job, "Warning", reason, message),
            }
            if *kind == "Complete" && completions.is_some_and(|c| succeeded > c) {
                ctx.event(
                    &job,
                    "Warning",
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                );
            }
        }
        let active_now = if decided || suspended {
            0
        } else {
            active.len() as i64 + created - stopping.len() as i64
        }
        .max(0);
        let ready = active
            .iter()
            .filter(|p| p.ready && !stopping.iter().any(|s| s.name == p.name))
            .count() as i64;
        let result = ctx.update_status("batch/jobs", &key.0, &key.1, |j| {
            if !j["status"].is_object() {
                j["status"] = json!({});
            }
            if j["status"]["startTime"].is_null() && !suspended {
                j["status"]["startTime"] = json!(now_time());
            }
            let status = &mut j["status"];
            for (field, value) in [
                ("active", active_now),
                ("succeeded", succeeded),
                ("failed", failed),
            ] {
                if value > 0 {
                    status[field] = json!(value);
                } else if let Some(map) = status.as_object_mut() {
                    map.remove(field);
                }
            }
            status["ready"] = json!(if decided { 0 } else { ready });
            status["terminating"] = json!(still_terminating);
            status["uncountedTerminatedPods"] = json!({});
            for (field, set) in [
                ("completedIndexes", &completed),
                ("failedIndexes", &failed_indexes),
            ] {
                if indexed && !set.is_empty() {
                    status[field] = json!(format_indexes(set));
                } else if let Some(map) = status.as_object_mut() {
                    map.remove(field);
                }
            }
            if let Some((kind, reason, message)) = &ending {
                set_condition(j, interim_of(kind), "True", reason, message);
                if final_now {
                    set_condition(j, kind, "True", reason, message);
                    if *kind == "Complete" {
                        let at = condition(j, "Complete")
                            .map(|c| c["lastTransitionTime"].clone())
                            .unwrap_or_else(|| json!(now_time()));
                        j["status"]["completionTime"] = at;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        let mut wake = backoff_wait;
        // The active deadline passes without any change to look at.
        if let (Some(deadline), Some(start), false) =
            (spec["activeDeadlineSeconds"].as_i64(), start, decided)
        {
            let left = Duration::from_secs((start + deadline - now_secs).max(1) as u64);
            wake = Some(wake.map_or(left, |w| w.min(left)));
        }
        Ok(wake.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{key, pod_spec, seconds_ago, TestCluster};

    fn job(spec: Value) -> Value {
        let mut job = json!({
            "metadata": {"name": "pi", "namespace": "default"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": pod_spec()["containers"]}}},
        });
        for (field, value) in spec.as_object().unwrap() {
            job["spec"][field] = value.clone();
        }
        job
    }

    fn live_pods(cluster: &TestCluster) -> Vec<Key> {
        cluster.live_pods().iter().map(key_of).collect()
    }

    fn job_now(cluster: &TestCluster) -> Value {
        cluster.get("batch/jobs", &key("pi")).unwrap()
    }

    fn finish(cluster: &TestCluster, pod: &Key, phase: &str) {
        finish_with(
            cluster,
            pod,
            phase,
            if phase == "Failed" { 1 } else { 0 },
            json!([]),
        );
    }

    /// Reports a pod finished now, its container with `code`, with extra pod conditions.
    fn finish_with(cluster: &TestCluster, pod: &Key, phase: &str, code: i64, conditions: Value) {
        cluster.update_status("core/pods", pod, |p| {
            p["status"]["phase"] = json!(phase);
            p["status"]["containerStatuses"] = json!([{
                "name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": code, "finishedAt": seconds_ago(0)}},
            }]);
            p["status"]["conditions"] = conditions;
        });
    }

    fn new_pods(cluster: &TestCluster, old: &[Key]) -> Vec<Key> {
        live_pods(cluster)
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect()
    }

    fn condition_of(job: &Value, kind: &str) -> (String, String, String) {
        let c = condition(job, kind).unwrap_or_else(|| panic!("no {kind} condition: {job}"));
        let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
        (text("status"), text("reason"), text("message"))
    }

    #[tokio::test(start_paused = true)]
    async fn pods_run_parallelism_at_a_time_until_completions_succeed() {
        let cluster = TestCluster::new();
        let created = cluster.create(
            "batch/jobs",
            job(json!({"completions": 3, "parallelism": 2})),
        );
        let controller = JobController;
        let started = seconds_ago(0);

        cluster.reconcile(&controller, &key("pi"));
        let first = live_pods(&cluster);
        assert_eq!(first.len(), 2, "parallelism");
        for pod in cluster.live_pods() {
            assert_eq!(pod["metadata"]["generateName"], "pi-");
            assert_eq!(
                pod["metadata"]["ownerReferences"][0]["uid"],
                created["metadata"]["uid"]
            );
            assert_eq!(pod["metadata"]["labels"]["job-name"], "pi");
        }
        let status = job_now(&cluster)["status"].clone();
        assert_eq!(status["active"], 2);
        assert_eq!(status["startTime"], started.as_str());

        finish(&cluster, &first[0], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 3, "the finished pod stays");
        let status = job_now(&cluster)["status"].clone();
        assert_eq!(
            (status["active"].clone(), status["succeeded"].clone()),
            (json!(2), json!(1))
        );

        let rest: Vec<Key> = live_pods(&cluster)
            .into_iter()
            .filter(|p| *p != first[0])
            .collect();
        finish(&cluster, &rest[0], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(
            live_pods(&cluster).len(),
            3,
            "one more to succeed, and it runs"
        );
        assert_eq!(job_now(&cluster)["status"]["active"], 1);

        tokio::time::advance(Duration::from_secs(42)).await;
        finish(&cluster, &rest[1], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        let done = job_now(&cluster);
        assert_eq!(done["status"]["succeeded"], 3);
        assert!(done["status"].get("active").is_none(), "{done}");
        assert_eq!(done["status"]["startTime"], started.as_str());
        assert_eq!(done["status"]["completionTime"], seconds_ago(0).as_str());
        let reached = (
            "True".to_owned(),
            "CompletionsReached".to_owned(),
            "Reached expected number of succeeded pods".to_owned(),
        );
        assert_eq!(condition_of(&done, "SuccessCriteriaMet"), reached);
        assert_eq!(condition_of(&done, "Complete"), reached);
        assert!(cluster
            .events_about("pi")
            .contains(&("Completed".into(), "Job completed".into())));

        tokio::time::advance(Duration::from_secs(5)).await;
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 3, "nothing more runs");
        assert_eq!(
            job_now(&cluster)["status"]["completionTime"],
            done["status"]["completionTime"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pods_are_replaced_after_a_back_off_until_the_limit() {
        let cluster = TestCluster::new();
        cluster.create("batch/jobs", job(json!({"backoffLimit": 2})));
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let first = live_pods(&cluster);
        assert_eq!(first.len(), 1);

        finish(&cluster, &first[0], "Failed");
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(10)),
            "the first replacement waits 10 s"
        );
        assert!(new_pods(&cluster, &first).is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        cluster.reconcile(&controller, &key("pi"));
        let second = new_pods(&cluster, &first);
        assert_eq!(second.len(), 1, "one failure of a limit of two: try again");

        finish(&cluster, &second[0], "Failed");
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(20)),
            "then 20 s"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        cluster.reconcile(&controller, &key("pi"));
        let seen: Vec<Key> = first.iter().chain(&second).cloned().collect();
        let third = new_pods(&cluster, &seen);
        assert_eq!(third.len(), 1);
        assert!(condition(&job_now(&cluster), "Failed").is_none());

        finish(&cluster, &third[0], "Failed");
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 3, "no fourth try");
        let failed = job_now(&cluster);
        assert_eq!(failed["status"]["failed"], 3);
        assert!(failed["status"].get("active").is_none());
        let exceeded = (
            "True".to_owned(),
            "BackoffLimitExceeded".to_owned(),
            "Job has reached the specified backoff limit".to_owned(),
        );
        assert_eq!(condition_of(&failed, "FailureTarget"), exceeded);
        assert_eq!(
            condition_of(&failed, "Failed"),
            exceeded,
            "no pod left to stop"
        );
        assert!(condition(&failed, "Complete").is_none());
        assert!(cluster.events_about("pi").contains(&(
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into()
        )));
    }

    #[test]
    fn the_back_off_doubles_up_to_ten_minutes() {
        let secs = |n| failure_backoff(n).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(6)], [10, 20, 40, 320]);
        assert_eq!([secs(7), secs(40)], [600, 600]);
    }

    #[test]
    fn completed_indexes_are_written_as_upstream_writes_them() {
        let set: BTreeSet<i64> = [1, 3, 4, 5, 7, 8].into();
        assert_eq!(format_indexes(&set), "1,3-5,7,8");
        assert_eq!(parse_indexes("1,3-5,7,8", 100), set);
        assert_eq!(parse_indexes("0-3,9,x,2-", 3), [0, 1, 2].into());
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[tokio::test(start_paused = true)]
    async fn indexed_jobs_run_each_index_once_with_its_identity() {
        let cluster = TestCluster::new();
        cluster.create(
            "batch/jobs",
            job(json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed"})),
        );
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let pods = cluster.live_pods();
        assert_eq!(pods.len(), 2);
        let mut by_index = BTreeMap::new();
        for pod in &pods {
            let index = pod["metadata"]["labels"][COMPLETION_INDEX]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(
                pod["metadata"]["annotations"][COMPLETION_INDEX],
                index.as_str()
            );
            assert_eq!(pod["spec"]["hostname"], format!("pi-{index}"));
            assert_eq!(pod["metadata"]["generateName"], format!("pi-{index}-"));
            assert_eq!(
                pod["spec"]["containers"][0]["env"][0],
                json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']"}}})
            );
            by_index.insert(index, key_of(pod));
        }
        assert_eq!(by_index.keys().collect::<Vec<_>>(), ["0", "1"]);

        finish(&cluster, &by_index["1"], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        let status = job_now(&cluster)["status"].clone();
        assert_eq!(status["completedIndexes"], "1");
        assert_eq!(status["succeeded"], 1);
        let third: Vec<Value> = cluster
            .live_pods()
            .into_iter()
            .filter(|p| p["metadata"]["labels"][COMPLETION_INDEX] == "2")
            .collect();
        assert_eq!(third.len(), 1, "the next free index runs");

        // A failed index runs again (after the back-off), under the same index.
        finish(&cluster, &by_index["0"], "Failed");
        tokio::time::advance(Duration::from_secs(10)).await;
        cluster.reconcile(&controller, &key("pi"));
        let retries: Vec<Value> = cluster
            .live_pods()
            .into_iter()
            .filter(|p| {
                p["metadata"]["labels"][COMPLETION_INDEX] == "0" && key_of(p) != by_index["0"]
            })
            .collect();
        assert_eq!(retries.len(), 1);

        finish(&cluster, &key_of(&retries[0]), "Succeeded");
        finish(&cluster, &key_of(&third[0]), "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        let done = job_now(&cluster);
        assert_eq!(done["status"]["completedIndexes"], "0-2");
        assert_eq!(done["status"]["succeeded"], 3);
        assert_eq!(condition_of(&done, "Complete").0, "True");
        assert_eq!(
            condition_of(&done, "SuccessCriteriaMet").1,
            "CompletionsReached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pod_failure_policy_fails_the_job_ignores_or_counts() {
        let cluster = TestCluster::new();
        let policy = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "app", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]});
        let created = cluster.create(
            "batch/jobs",
            job(json!({"backoffLimit": 0, "podFailurePolicy": policy})),
        );
        assert_eq!(created["spec"]["podReplacementPolicy"], "Failed");
        assert_eq!(
            created["spec"]["podFailurePolicy"]["rules"][1]["onPodConditions"][0]["status"],
            "True"
        );
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let first = live_pods(&cluster);

        // A disruption is ignored: no failure counted, the pod is replaced at once.
        let disrupted = json!([{"type": "DisruptionTarget", "status": "True"}]);
        finish_with(&cluster, &first[0], "Failed", 137, disrupted);
        cluster.reconcile(&controller, &key("pi"));
        let second = new_pods(&cluster, &first);
        assert_eq!(second.len(), 1);
        let status = job_now(&cluster)["status"].clone();
        assert!(status.get("failed").is_none(), "{status}");
        assert!(condition(&job_now(&cluster), "FailureTarget").is_none());

        // Exit code 42 fails the Job.
        finish_with(&cluster, &second[0], "Failed", 42, json!([]));
        cluster.reconcile(&controller, &key("pi"));
        let failed = job_now(&cluster);
        let message = format!(
            "Container app for pod default/{} failed with exit code 42 matching FailJob rule at index 0",
            second[0].1
        );
        let expected = ("True".to_owned(), "PodFailurePolicy".to_owned(), message);
        assert_eq!(condition_of(&failed, "FailureTarget"), expected);
        assert_eq!(condition_of(&failed, "Failed"), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn an_index_over_its_own_limit_fails_and_the_job_with_it() {
        let cluster = TestCluster::new();
        let created = cluster.create(
            "batch/jobs",
            job(json!({"completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimitPerIndex": 0})),
        );
        assert_eq!(created["spec"]["backoffLimit"], i32::MAX);
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let pods = cluster.live_pods();
        let index = |p: &Value| {
            p["metadata"]["labels"][COMPLETION_INDEX]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let zero = pods.iter().find(|p| index(p) == "0").map(key_of).unwrap();
        let one = pods.iter().find(|p| index(p) == "1").map(key_of).unwrap();
        finish(&cluster, &zero, "Failed");
        tokio::time::advance(Duration::from_secs(60)).await;
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 2, "index 0 does not run again");
        assert_eq!(job_now(&cluster)["status"]["failedIndexes"], "0");
        assert!(
            condition(&job_now(&cluster), "FailureTarget").is_none(),
            "index 1 still runs"
        );

        finish(&cluster, &one, "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        let failed = job_now(&cluster);
        assert_eq!(failed["status"]["completedIndexes"], "1");
        assert_eq!(
            condition_of(&failed, "Failed"),
            (
                "True".into(),
                "FailedIndexes".into(),
                "Job has failed indexes".into()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_past_its_active_deadline_fails_and_stops_its_pods() {
        let cluster = TestCluster::new();
        cluster.create(
            "batch/jobs",
            job(json!({"completions": 4, "parallelism": 2, "activeDeadlineSeconds": 60})),
        );
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let pods = live_pods(&cluster);
        for (i, pod) in pods.iter().enumerate() {
            cluster.run_pod(
                pod,
                "pi-1",
                &format!("10.42.0.{}", i + 2),
                Some(&seconds_ago(0)),
            );
        }
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(60)),
            "the deadline passes without any change to see"
        );

        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(1))
        );
        assert!(condition(&job_now(&cluster), "Failed").is_none());

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cluster.reconcile(&controller, &key("pi")), Action::Done);
        let exceeded = (
            "True".to_owned(),
            "DeadlineExceeded".to_owned(),
            "Job was active longer than specified deadline".to_owned(),
        );
        let failing = job_now(&cluster);
        assert_eq!(condition_of(&failing, "FailureTarget"), exceeded);
        assert!(
            condition(&failing, "Failed").is_none(),
            "Failed waits for the pods to stop"
        );
        assert_eq!(failing["status"]["terminating"], 2);
        assert!(live_pods(&cluster).is_empty(), "its pods are stopped");
        for pod in &pods {
            assert_eq!(
                cluster.get("core/pods", pod).unwrap()["metadata"]["deletionGracePeriodSeconds"],
                30
            );
        }

        // The node reports them gone.
        let now_gone = crate::api::objects::DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        for pod in &pods {
            cluster.delete("core/pods", pod, &now_gone);
        }
        cluster.reconcile(&controller, &key("pi"));
        let failed = job_now(&cluster);
        assert_eq!(condition_of(&failed, "Failed"), exceeded);
        assert_eq!(failed["status"]["terminating"], 0);
    }

    #[test]
    fn a_work_queue_job_completes_when_one_pod_succeeded_and_the_rest_finished() {
        let cluster = TestCluster::new();
        let created = cluster.create("batch/jobs", job(json!({"parallelism": 2})));
        assert!(
            created["spec"]["completions"].is_null(),
            "completions stay unset when parallelism is given: {}",
            created["spec"]
        );
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let pods = live_pods(&cluster);
        assert_eq!(pods.len(), 2);

        finish(&cluster, &pods[0], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(
            live_pods(&cluster),
            pods,
            "no new worker; the other keeps running"
        );
        assert!(condition(&job_now(&cluster), "Complete").is_none());
        assert_eq!(job_now(&cluster)["status"]["active"], 1);

        finish(&cluster, &pods[1], "Succeeded");
        cluster.reconcile(&controller, &key("pi"));
        let done = job_now(&cluster);
        assert_eq!(condition_of(&done, "Complete").0, "True");
        assert_eq!(done["status"]["succeeded"], 2);
    }

    #[test]
    fn a_suspended_job_runs_nothing() {
        let cluster = TestCluster::new();
        cluster.create(
            "batch/jobs",
            job(json!({"parallelism": 2, "completions": 2})),
        );
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 2);
        cluster.update("batch/jobs", &key("pi"), |j| {
            j["spec"]["suspend"] = json!(true)
        });
        cluster.reconcile(&controller, &key("pi"));
        assert!(live_pods(&cluster).is_empty());
        assert!(job_now(&cluster)["status"].get("active").is_none());
    }
}
