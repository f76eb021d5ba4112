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
                None if succeeded > 0 => 0,
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
