//! Jobs: run pods until `completions` succeed, `parallelism` at a time, giving up after `backoffLimit` failures.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::replicas::{claim_pods, create_pods, deletion_order, pod_from_template, selector_of};
use super::view::{unix_seconds, Key, PodInfo, View};
use super::{condition, key_of, now_seconds, now_time, set_condition, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::store::Change;

/// The Job controller.
pub struct JobController;

fn finished(job: &Value) -> bool {
    ["Complete", "Failed"]
        .iter()
        .any(|kind| condition(job, kind).is_some_and(|c| c["status"] == "True"))
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
        let active: Vec<Arc<PodInfo>> = pods.iter().filter(|p| p.is_active()).cloned().collect();
        let succeeded = pods.iter().filter(|p| p.phase == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| p.phase == "Failed").count() as i64;
        let ready = active.iter().filter(|p| p.ready).count() as i64;
        let spec = &job["spec"];
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let completions = spec["completions"].as_i64();
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let suspended = spec["suspend"] == true;
        let now = now_seconds();
        let start = job["status"]["startTime"].as_str().and_then(unix_seconds);
        let deadline_passed = spec["activeDeadlineSeconds"]
            .as_i64()
            .zip(start)
            .is_some_and(|(deadline, start)| now >= start + deadline);

        let mut outcome: Option<(&str, &str, String)> = None;
        if finished(&job) {
            // Done already: only make sure nothing keeps running.
        } else if failed > backoff_limit {
            outcome = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if deadline_passed {
            outcome = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
        } else if completions.is_some_and(|c| succeeded >= c)
            || (completions.is_none() && succeeded > 0 && active.is_empty())
        {
            outcome = Some(("Complete", "", String::new()));
        }
        let done = finished(&job) || outcome.is_some();
        let mut created = 0;
        if done || suspended {
            for pod in &active {
                ctx.delete_pod(pod)?;
            }
        } else {
            let wanted = match completions {
                Some(c) => parallelism.min(c - succeeded),
                // A work queue: after the first success what runs may finish, nothing starts.
                None if succeeded > 0 => active.len() as i64,
                None => parallelism,
            }
            .max(0) as usize;
            if active.len() < wanted {
                let template = &job["spec"]["template"];
                let pods: Vec<Value> = (active.len()..wanted)
                    .map(|_| pod_from_template(&job, template, &key.1))
                    .collect();
                let (made, failure) = create_pods(ctx, &job, pods);
                created += made as i64;
                if let Some(error) = failure {
                    return Err(error);
                }
            } else if active.len() > wanted {
                let mut extra = active.clone();
                deletion_order(&mut extra);
                for pod in extra.iter().take(active.len() - wanted) {
                    ctx.delete_pod(pod)?;
                }
            }
        }
        match &outcome {
            Some(("Complete", _, _)) => ctx.event(&job, "Normal", "Completed", "Job completed"),
            Some((_, reason, message)) => ctx.event(&job, "Warning", reason, message),
            None => {}
        }
        let active_now = if done || suspended {
            0
        } else {
            active.len() as i64 + created
        };
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
            status["ready"] = json!(ready);
            status["terminating"] = json!(0);
            match &outcome {
                Some(("Complete", _, _)) => {
                    j["status"]["completionTime"] = json!(now_time());
                    set_condition(
                        j,
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                    set_condition(
                        j,
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                }
                Some((_, reason, message)) => {
                    set_condition(j, "FailureTarget", "True", reason, message);
                    set_condition(j, "Failed", "True", reason, message);
                }
                None => {}
            }
            Ok(())
        });
        match result {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        // The active deadline passes without any change to look at.
        if let (Some(deadline), Some(start), false) =
            (spec["activeDeadlineSeconds"].as_i64(), start, done)
        {
            return Ok(Action::RequeueAfter(Duration::from_secs(
                (start + deadline - now).max(1) as u64,
            )));
        }
        Ok(Action::Done)
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
        cluster.set_pod_status(pod, phase, "", None);
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

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job() {
        let cluster = TestCluster::new();
        cluster.create("batch/jobs", job(json!({"backoffLimit": 1})));
        let controller = JobController;
        cluster.reconcile(&controller, &key("pi"));
        let first = live_pods(&cluster);
        assert_eq!(first.len(), 1);

        finish(&cluster, &first[0], "Failed");
        cluster.reconcile(&controller, &key("pi"));
        let second: Vec<Key> = live_pods(&cluster)
            .into_iter()
            .filter(|p| *p != first[0])
            .collect();
        assert_eq!(second.len(), 1, "one failure of a limit of one: try again");
        assert!(condition(&job_now(&cluster), "Failed").is_none());

        finish(&cluster, &second[0], "Failed");
        cluster.reconcile(&controller, &key("pi"));
        assert_eq!(live_pods(&cluster).len(), 2, "no third try");
        let failed = job_now(&cluster);
        assert_eq!(failed["status"]["failed"], 2);
        assert!(failed["status"].get("active").is_none());
        let exceeded = (
            "True".to_owned(),
            "BackoffLimitExceeded".to_owned(),
            "Job has reached the specified backoff limit".to_owned(),
        );
        assert_eq!(condition_of(&failed, "FailureTarget"), exceeded);
        assert_eq!(condition_of(&failed, "Failed"), exceeded);
        assert!(condition(&failed, "Complete").is_none());
        assert!(cluster.events_about("pi").contains(&(
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into()
        )));
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
        let failed = job_now(&cluster);
        assert_eq!(
            condition_of(&failed, "Failed"),
            (
                "True".into(),
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into()
            )
        );
        assert!(live_pods(&cluster).is_empty(), "its pods are stopped");
        for pod in &pods {
            assert_eq!(
                cluster.get("core/pods", pod).unwrap()["metadata"]["deletionGracePeriodSeconds"],
                30
            );
        }
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
