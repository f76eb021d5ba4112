//! TTL after finished: deletes a finished Job `ttlSecondsAfterFinished` after it finished,
//! in the foreground so that its pods go first (upstream's `ttlafterfinished` controller).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::view::{Key, View};
use super::{condition, key_of, now, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::store::Change;

/// The TTL-after-finished controller.
pub struct TtlAfterFinishedController;

/// When the Job finished (its `Complete` or `Failed` condition's transition), if it has.
fn finished_at(job: &Value) -> Option<Result<Timestamp, String>> {
    let finish = ["Complete", "Failed"]
        .into_iter()
        .filter_map(|kind| condition(job, kind))
        .find(|c| c["status"] == "True")?;
    Some(
        finish["lastTransitionTime"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                let (namespace, name) = key_of(job);
                format!("unable to find the time when the Job {namespace}/{name} finished")
            }),
    )
}

/// How long until the Job expires; `None` when it has no TTL, has not finished or is going.
fn left(job: &Value, now: Timestamp) -> Option<Result<SignedDuration, String>> {
    let ttl = job["spec"]["ttlSecondsAfterFinished"].as_i64()?;
    if !job["metadata"]["deletionTimestamp"].is_null() {
        return None;
    }
    Some(finished_at(job)?.map(|at| (at + SignedDuration::from_secs(ttl)).duration_since(now)))
}

fn wants(job: &Value) -> bool {
    !job["spec"]["ttlSecondsAfterFinished"].is_null()
}

impl Reconciler for TtlAfterFinishedController {
    fn name(&self) -> &'static str {
        "ttl-after-finished-controller"
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        if change.resource == "batch/jobs" && wants(&change.object) {
            vec![(change.namespace.clone(), change.name.clone())]
        } else {
            Vec::new()
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("batch/jobs")
            .filter(|j| wants(j))
            .map(|j| key_of(j))
            .collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let Some(job) = ctx.view().get("batch/jobs", &key.0, &key.1).cloned() else {
            return Ok(Action::Done);
        };
        let remaining = match left(&job, now()) {
            None => return Ok(Action::Done),
            Some(Err(why)) => return Err(ApiError::internal(why)),
            Some(Ok(remaining)) => remaining,
        };
        if remaining.is_positive() {
            let wait = Duration::try_from(remaining).unwrap_or_default();
            return Ok(Action::RequeueAfter(wait));
        }
        // The view may be behind: decide again on the stored Job before deleting it.
        let Some(fresh) = ctx.get("batch/jobs", &key.0, &key.1)? else {
            return Ok(Action::Done);
        };
        match left(&fresh, now()) {
            Some(Ok(remaining)) if !remaining.is_positive() => {}
            Some(Ok(remaining)) => {
                let wait = Duration::try_from(remaining).unwrap_or_default();
                return Ok(Action::RequeueAfter(wait));
            }
            _ => return Ok(Action::Done),
        }
        let options = DeleteOptions {
            propagation: Some("Foreground".into()),
            precondition_uid: fresh["metadata"]["uid"].as_str().map(str::to_owned),
            ..DeleteOptions::default()
        };
        match ctx.delete("batch/jobs", &key.0, &key.1, &options) {
            Ok(()) => Ok(Action::Done),
            // Replaced by a Job of the same name: that one has its own clock.
            Err(e) if e.code == 409 => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::gc::FOREGROUND;
    use crate::controllers::testing::{key, pod_spec, seconds_ago, TestCluster};
    use serde_json::json;

    fn job(ttl: i64) -> Value {
        json!({
            "metadata": {"name": "pi", "namespace": "default"},
            "spec": {
                "ttlSecondsAfterFinished": ttl,
                "template": {"spec": {"restartPolicy": "Never", "containers": pod_spec()["containers"]}},
            },
        })
    }

    fn finish(cluster: &TestCluster) {
        cluster.update_status("batch/jobs", &key("pi"), |j| {
            j["status"]["conditions"] = json!([{
                "type": "Complete", "status": "True", "lastTransitionTime": seconds_ago(0),
            }]);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_job_goes_after_its_ttl_in_the_foreground() {
        let cluster = TestCluster::new();
        let controller = TtlAfterFinishedController;
        cluster.create("batch/jobs", job(100));
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::Done,
            "running: no clock yet"
        );
        finish(&cluster);
        assert_eq!(cluster.queued(&controller), [key("pi")]);
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(100))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            cluster.reconcile(&controller, &key("pi")),
            Action::RequeueAfter(Duration::from_secs(40))
        );
        assert!(cluster.get("batch/jobs", &key("pi")).is_some());
        tokio::time::advance(Duration::from_secs(40)).await;
        cluster.reconcile(&controller, &key("pi"));
        let going = cluster.get("batch/jobs", &key("pi")).unwrap();
        assert!(!going["metadata"]["deletionTimestamp"].is_null());
        assert_eq!(going["metadata"]["finalizers"], json!([FOREGROUND]));
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_without_a_ttl_stay() {
        let cluster = TestCluster::new();
        let mut plain = job(0);
        plain["spec"]
            .as_object_mut()
            .unwrap()
            .remove("ttlSecondsAfterFinished");
        cluster.create("batch/jobs", plain);
        finish(&cluster);
        assert!(cluster.queued(&TtlAfterFinishedController).is_empty());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(
            cluster.reconcile(&TtlAfterFinishedController, &key("pi")),
            Action::Done
        );
        assert!(
            cluster.get("batch/jobs", &key("pi")).unwrap()["metadata"]["deletionTimestamp"]
                .is_null()
        );
    }
}
