//! CronJobs: a Job from the template at each scheduled time, with upstream's concurrency
//! policies, starting deadline, missed-schedule rules and history limits.
//!
//! Each reconcile looks at the CronJob's Jobs, settles `status.active`, trims the history,
//! then decides whether a scheduled time is due, and asks to be woken 100 ms after the next
//! one (upstream's `nextScheduleDelta`): no polling, so a Job starts well within a second of
//! its minute. Only the most recent missed time runs; older ones are skipped, as upstream.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::view::{owner_refs, Key, View};
use super::{controller_ref, key_of, now, Action, Context, Reconciler};
use crate::api::error::ApiError;
use crate::api::objects::DeleteOptions;
use crate::cron::{self, Schedule};
use crate::store::Change;

/// The annotation that tells a Job the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// How long after a scheduled time the controller looks (upstream's `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// More missed times than this earn a warning.
const MISSED_TIMES_WARNING: i64 = 100;

/// The CronJob controller.
pub struct CronJobController;

/// `Complete` or `Failed` when the Job has finished that way.
fn finished_as(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|kind| super::condition(job, kind).is_some_and(|c| c["status"] == "True"))
}

fn time_of(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

/// The Jobs whose controller reference names this CronJob (upstream matches by name).
fn jobs_of(view: &View, cronjob: &Value) -> Vec<Value> {
    let namespace = cronjob["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let name = cronjob["metadata"]["name"].as_str().unwrap_or_default();
    view.list_in("batch/jobs", namespace)
        .filter(|job| {
            owner_refs(job)
                .iter()
                .any(|o| o.controller && o.kind == "CronJob" && o.name == name)
        })
        .map(|job| (**job).clone())
        .collect()
}

/// An RFC 3339 time in a zone, as Go's `Format(time.RFC3339)` writes it (`Z` at offset zero).
fn rfc3339_in(time: Timestamp, zone: &TimeZone) -> String {
    let offset = zone.to_offset(time);
    if offset.seconds() == 0 {
        time.to_string()
    } else {
        time.display_with_offset(offset).to_string()
    }
}

/// The times that matter now: whether one is due, and from when to count the next.
struct Due {
    /// Where counting started: the last scheduled time, or the creation time.
    earliest: Timestamp,
    /// The most recent scheduled time not after now, if any since `earliest`.
    most_recent: Option<Timestamp>,
    /// Roughly how many times were missed.
    missed: i64,
}

/// Upstream's `mostRecentScheduleTime`.
fn most_recent_schedule_time(
    cronjob: &Value,
    now: Timestamp,
    schedule: &Schedule,
    with_deadline: bool,
) -> Result<Due, String> {
    let status = &cronjob["status"];
    let mut earliest = time_of(&status["lastScheduleTime"])
        .or_else(|| time_of(&cronjob["metadata"]["creationTimestamp"]))
        .unwrap_or(now);
    if let Some(deadline) = cronjob["spec"]["startingDeadlineSeconds"]
        .as_i64()
        .filter(|_| with_deadline)
    {
        let scheduling_deadline = now - SignedDuration::from_secs(deadline);
        earliest = earliest.max(scheduling_deadline);
    }
    let none = |missed| Due {
        earliest,
        most_recent: None,
        missed,
    };
    let Some(t1) = schedule.next(earliest) else {
        return Ok(none(0));
    };
    if now < t1 {
        return Ok(none(0));
    }
    let Some(t2) = schedule.next(t1) else {
        return Ok(Due {
            earliest,
            most_recent: Some(t1),
            missed: 1,
        });
    };
    if now < t2 {
        return Ok(Due {
            earliest,
            most_recent: Some(t1),
            missed: 1,
        });
    }
    let between = t2.duration_since(t1).as_secs();
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed = elapsed / between + 1;
    // Jump close to now by whole intervals, then step with the schedule: exact for regular
    // schedules, and a step back leaves room for irregular ones (`30 6-16/4 * * 1-5`).
    let jump = SignedDuration::from_secs((missed - 2).max(0) * between);
    let mut most_recent = None;
    let mut t = schedule.next(t1 + jump);
    while let Some(time) = t.filter(|t| *t <= now) {
        most_recent = Some(time);
        t = schedule.next(time);
    }
    Ok(Due {
        earliest,
        most_recent: most_recent.or(Some(t1)),
        missed,
    })
}

/// How long until a look just after the next scheduled time.
fn until_next(cronjob: &Value, now: Timestamp, schedule: &Schedule) -> Action {
    let Ok(due) = most_recent_schedule_time(cronjob, now, schedule, false) else {
        return Action::Done;
    };
    let from = due.most_recent.unwrap_or(due.earliest);
    match schedule.next(from) {
        Some(next) => {
            let wait = next.duration_since(now).max(SignedDuration::ZERO);
            Action::RequeueAfter(Duration::try_from(wait).unwrap_or_default() + NEXT_SCHEDULE_DELTA)
        }
        None => Action::Done,
    }
}

/// The Job for one scheduled time (upstream's `getJobFromTemplate2`).
fn job_for(cronjob: &Value, scheduled: Timestamp, zone: &TimeZone) -> Value {
    let template = &cronjob["spec"]["jobTemplate"];
    let name = format!(
        "{}-{}",
        cronjob["metadata"]["name"].as_str().unwrap_or_default(),
        scheduled.as_second().div_euclid(60)
    );
    let mut annotations = template["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        json!(rfc3339_in(scheduled, zone)),
    );
    let mut metadata = json!({
        "name": name,
        "namespace": cronjob["metadata"]["namespace"],
        "annotations": annotations,
        "ownerReferences": [controller_ref(cronjob)],
    });
    if let Some(labels) = template["metadata"]["labels"].as_object() {
        metadata["labels"] = json!(labels);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// A reference in `status.active`, as `ref.GetReference` writes one.
fn reference_to(job: &Value) -> Value {
    let meta = &job["metadata"];
    json!({
        "kind": "Job",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "apiVersion": "batch/v1",
        "resourceVersion": meta["resourceVersion"],
    })
}

/// What one reconcile changes in the status.
struct Status {
    active: Vec<Value>,
    last_schedule: Option<Timestamp>,
    last_successful: Option<Timestamp>,
}

impl Status {
    fn of(cronjob: &Value) -> Status {
        let status = &cronjob["status"];
        Status {
            active: status["active"].as_array().cloned().unwrap_or_default(),
            last_schedule: time_of(&status["lastScheduleTime"]),
            last_successful: time_of(&status["lastSuccessfulTime"]),
        }
    }

    fn has(&self, uid: &Value) -> bool {
        self.active.iter().any(|r| r["uid"] == *uid)
    }

    fn remove(&mut self, uid: &Value) {
        self.active.retain(|r| r["uid"] != *uid);
    }

    fn write_to(&self, cronjob: &mut Value) {
        let mut status = serde_json::Map::new();
        if !self.active.is_empty() {
            status.insert("active".into(), json!(self.active));
        }
        let whole = |t: Timestamp| json!(t.round(jiff::Unit::Second).unwrap_or(t).to_string());
        if let Some(time) = self.last_schedule {
            status.insert("lastScheduleTime".into(), whole(time));
        }
        if let Some(time) = self.last_successful {
            status.insert("lastSuccessfulTime".into(), whole(time));
        }
        cronjob["status"] = Value::Object(status);
    }
}

impl CronJobController {
    /// Deletes a Job (its pods follow in the background) and drops it from `active`.
    fn delete_job(&self, ctx: &Context, cronjob: &Value, job: &Value, status: &mut Status) -> bool {
        let (namespace, name) = key_of(job);
        let options = DeleteOptions {
            propagation: Some("Background".into()),
            ..DeleteOptions::default()
        };
        match ctx.delete("batch/jobs", &namespace, &name, &options) {
            Ok(()) => {
                status.remove(&job["metadata"]["uid"]);
                ctx.event(
                    cronjob,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                );
                true
            }
            Err(error) => {
                ctx.event(
                    cronjob,
                    "Warning",
                    "FailedDelete",
                    &format!("Deleted job: {}", error.message),
                );
                false
            }
        }
    }

    /// Deletes the oldest finished Jobs beyond the history limits (`cleanupFinishedJobs`).
    fn trim_history(&self, ctx: &Context, cronjob: &Value, jobs: &[Value], status: &mut Status) {
        for (kind, limit) in [
            ("Complete", "successfulJobsHistoryLimit"),
            ("Failed", "failedJobsHistoryLimit"),
        ] {
            let Some(limit) = cronjob["spec"][limit].as_i64() else {
                continue;
            };
            let mut finished: Vec<&Value> = jobs
                .iter()
                .filter(|j| finished_as(j) == Some(kind))
                .collect();
            let excess = finished.len() as i64 - limit.max(0);
            if excess <= 0 {
                continue;
            }
            // Oldest start first; Jobs that never started last; names break ties.
            finished.sort_by_key(|j| {
                let start = time_of(&j["status"]["startTime"]);
                (
                    start.is_none(),
                    start,
                    j["metadata"]["name"].as_str().map(str::to_owned),
                )
            });
            for job in finished.into_iter().take(excess as usize) {
                self.delete_job(ctx, cronjob, job, status);
            }
        }
    }

    /// Settles `status.active` with the Jobs there are (the first part of `syncCronJob`).
    fn settle_active(
        &self,
        ctx: &Context,
        cronjob: &Value,
        jobs: &[Value],
        status: &mut Status,
    ) -> Result<(), ApiError> {
        let (namespace, name) = key_of(cronjob);
        for job in jobs {
            let uid = &job["metadata"]["uid"];
            let job_name = job["metadata"]["name"].as_str().unwrap_or_default();
            let found = status.has(uid);
            let finished = finished_as(job);
            if !found && finished.is_none() {
                // The view may be behind the status this controller wrote.
                let fresh = ctx.get("batch/cronjobs", &namespace, &name)?;
                if fresh.is_some_and(|f| Status::of(&f).has(uid)) {
                    status.active.push(reference_to(job));
                    continue;
                }
                ctx.event(
                    cronjob,
                    "Warning",
                    "UnexpectedJob",
                    &format!("Saw a job that the controller did not create or forgot: {job_name}"),
                );
            } else if let Some(condition) = finished {
                if found {
                    status.remove(uid);
                    ctx.event(
                        cronjob,
                        "Normal",
                        "SawCompletedJob",
                        &format!("Saw completed job: {job_name}, condition: {condition}"),
                    );
                }
                if condition == "Complete" {
                    if let Some(done) = time_of(&job["status"]["completionTime"]) {
                        status.last_successful =
                            Some(status.last_successful.map_or(done, |t| t.max(done)));
                    }
                }
            }
        }
        let missing: Vec<Value> = status
            .active
            .iter()
            .filter(|r| !jobs.iter().any(|j| j["metadata"]["uid"] == r["uid"]))
            .cloned()
            .collect();
        for reference in missing {
            let job_name = reference["name"].as_str().unwrap_or_default();
            if ctx.get("batch/jobs", &namespace, job_name)?.is_none() {
                ctx.event(
                    cronjob,
                    "Normal",
                    "MissingJob",
                    &format!("Active job went missing: {job_name}"),
                );
                status.remove(&reference["uid"]);
            }
        }
        Ok(())
    }

    /// Starts the Job that is due, if one is (the rest of `syncCronJob`); returns when to look
    /// again.
    fn run_schedule(
        &self,
        ctx: &Context,
        cronjob: &Value,
        status: &mut Status,
    ) -> Result<Action, ApiError> {
        let spec = &cronjob["spec"];
        let text = spec["schedule"].as_str().unwrap_or_default();
        let zone_name = spec["timeZone"].as_str();
        let zone = match zone_name.map(cron::load_zone).transpose() {
            Ok(zone) => zone.unwrap_or(TimeZone::UTC),
            Err(error) => {
                let name = zone_name.unwrap_or_default();
                let message = format!("invalid timeZone: {name:?}: {error}");
                ctx.event(cronjob, "Warning", "UnknownTimeZone", &message);
                return Ok(Action::Done);
            }
        };
        if spec["suspend"] == true {
            return Ok(Action::Done);
        }
        if text.contains("TZ") {
            ctx.event(
                cronjob,
                "Warning",
                "UnsupportedSchedule",
                &format!("CRON_TZ or TZ used in schedule {text:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details"),
            );
        }
        let schedule = match cron::parse_standard(text) {
            Ok(schedule) => schedule.in_zone(zone.clone()),
            Err(error) => {
                let message = format!("unparseable schedule: {text:?} : {error}");
                ctx.event(cronjob, "Warning", "UnparseableSchedule", &message);
                return Ok(Action::Done);
            }
        };
        // Later decisions read the status as this reconcile has settled it.
        let mut current = cronjob.clone();
        status.write_to(&mut current);
        let now = now();
        let due = match most_recent_schedule_time(&current, now, &schedule, true) {
            Ok(due) => due,
            Err(error) => {
                let message = format!("invalid schedule: {text} : {error}");
                ctx.event(cronjob, "Warning", "InvalidSchedule", &message);
                return Ok(Action::Done);
            }
        };
        if due.missed > MISSED_TIMES_WARNING {
            ctx.event(
                cronjob,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            );
        }
        let Some(scheduled) = due.most_recent else {
            return Ok(until_next(&current, now, &schedule));
        };
        if let Some(deadline) = spec["startingDeadlineSeconds"].as_i64() {
            if scheduled + SignedDuration::from_secs(deadline) < now {
                let when = scheduled.strftime("%a, %d %b %Y %H:%M:%S +0000");
                let message = format!("Missed scheduled time to start a job: {when}");
                ctx.event(cronjob, "Warning", "MissSchedule", &message);
                return Ok(until_next(&current, now, &schedule));
            }
        }
        let job = job_for(cronjob, scheduled, &zone);
        let job_name = job["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status.active.iter().any(|r| r["name"] == job_name.as_str())
            || status.last_schedule == Some(scheduled)
        {
            return Ok(until_next(&current, now, &schedule));
        }
        match spec["concurrencyPolicy"].as_str() {
            Some("Forbid") if !status.active.is_empty() => {
                ctx.event(
                    cronjob,
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                );
                return Ok(until_next(&current, now, &schedule));
            }
            Some("Replace") => {
                for reference in status.active.clone() {
                    let name = reference["name"].as_str().unwrap_or_default();
                    let namespace = reference["namespace"].as_str().unwrap_or_default();
                    match ctx.get("batch/jobs", namespace, name) {
                        Ok(Some(running)) => {
                            if !self.delete_job(ctx, cronjob, &running, status) {
                                return Err(ApiError::internal(format!(
                                    "could not replace job {namespace}/{name}"
                                )));
                            }
                        }
                        Ok(None) => status.remove(&reference["uid"]),
                        Err(error) => {
                            let message = format!("Get job: {}", error.message);
                            ctx.event(cronjob, "Warning", "FailedGet", &message);
                            return Err(error);
                        }
                    }
                }
            }
            _ => {}
        }
        let created = match ctx.create("batch/jobs", job) {
            Ok(created) => {
                let message = format!("Created job {job_name}");
                ctx.event(cronjob, "Normal", "SuccessfulCreate", &message);
                created
            }
            Err(error) if error.code == 409 => {
                // Made before, and the status write was lost: take it back into `active`.
                let (namespace, _) = key_of(cronjob);
                let Some(existing) = ctx.get("batch/jobs", &namespace, &job_name)? else {
                    return Err(error);
                };
                let ours = owner_refs(&existing)
                    .iter()
                    .any(|o| o.controller && cronjob["metadata"]["uid"] == o.uid.as_str());
                if !ours || status.has(&existing["metadata"]["uid"]) {
                    return Ok(until_next(&current, now, &schedule));
                }
                existing
            }
            Err(error) => {
                let message = format!("Error creating job: {}", error.message);
                ctx.event(cronjob, "Warning", "FailedCreate", &message);
                return Err(error);
            }
        };
        status.active.push(reference_to(&created));
        status.last_schedule = Some(scheduled);
        status.write_to(&mut current);
        Ok(until_next(&current, now, &schedule))
    }
}

impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob-controller"
    }

    fn keys_for(&self, change: &Change, _view: &View) -> Vec<Key> {
        match change.resource.as_str() {
            "batch/cronjobs" => vec![(change.namespace.clone(), change.name.clone())],
            "batch/jobs" => {
                let mut keys: Vec<Key> = std::iter::once(&change.object)
                    .chain(change.previous.iter())
                    .flat_map(|o| owner_refs(o))
                    .filter(|o| o.controller && o.kind == "CronJob")
                    .map(|o| (change.namespace.clone(), o.name))
                    .collect();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, view: &View) -> Vec<Key> {
        view.list("batch/cronjobs").map(|o| key_of(o)).collect()
    }

    fn reconcile(&self, ctx: &Context, key: &Key) -> Result<Action, ApiError> {
        let (cronjob, jobs) = {
            let view = ctx.view();
            let Some(cronjob) = view.get("batch/cronjobs", &key.0, &key.1) else {
                return Ok(Action::Done);
            };
            let jobs = jobs_of(&view, cronjob);
            ((**cronjob).clone(), jobs)
        };
        let mut status = Status::of(&cronjob);
        let before = {
            let mut copy = cronjob.clone();
            status.write_to(&mut copy);
            copy["status"].clone()
        };
        self.trim_history(ctx, &cronjob, &jobs, &mut status);
        self.settle_active(ctx, &cronjob, &jobs, &mut status)?;
        // The status is written even when starting a Job failed: what was settled stays.
        let action = if cronjob["metadata"]["deletionTimestamp"].is_null() {
            self.run_schedule(ctx, &cronjob, &mut status)
        } else {
            Ok(Action::Done)
        };
        let mut after = cronjob.clone();
        status.write_to(&mut after);
        if after["status"] != before || cronjob["status"] != before {
            let written = ctx.update_status("batch/cronjobs", &key.0, &key.1, |c| {
                status.write_to(c);
                Ok(())
            });
            match written {
                Ok(_) => {}
                Err(e) if e.code == 404 => return Ok(Action::Done),
                Err(e) => return Err(e),
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{key, pod_spec, TestCluster};

    fn cronjob(schedule: &str, spec: Value) -> Value {
        let mut cronjob = json!({
            "metadata": {"name": "tick", "namespace": "default"},
            "spec": {
                "schedule": schedule,
                "jobTemplate": {
                    "metadata": {"labels": {"app": "tick"}, "annotations": {"note": "hi"}},
                    "spec": {"template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": pod_spec()["containers"],
                    }}},
                },
            },
        });
        for (field, value) in spec.as_object().unwrap() {
            cronjob["spec"][field] = value.clone();
        }
        cronjob
    }

    fn jobs(cluster: &TestCluster) -> Vec<String> {
        let mut names: Vec<String> = cluster
            .list("batch/jobs", "default")
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    fn status(cluster: &TestCluster) -> Value {
        cluster.get("batch/cronjobs", &key("tick")).unwrap()["status"].clone()
    }

    /// Seconds from now to the next whole minute, on the controllers' clock.
    fn to_next_minute() -> u64 {
        60 - now().as_second().rem_euclid(60) as u64
    }

    fn minute_name(time: Timestamp) -> String {
        format!("tick-{}", time.as_second() / 60)
    }

    async fn advance(duration: Duration) {
        tokio::time::advance(duration).await;
    }

    fn finish(cluster: &TestCluster, name: &str, condition: &str) {
        cluster.update_status("batch/jobs", &key(name), |job| {
            job["status"]["startTime"] = json!(now().to_string());
            job["status"]["conditions"] =
                json!([{"type": condition, "status": "True", "lastTransitionTime": now().to_string()}]);
            if condition == "Complete" {
                job["status"]["completionTime"] = json!(now().to_string());
            }
        });
    }

    /// Creates the CronJob, reconciles once, and returns the wait until its first time.
    fn start(cluster: &TestCluster, object: Value) -> Action {
        cluster.create("batch/cronjobs", object);
        cluster.reconcile(&CronJobController, &key("tick"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_starts_at_each_minute_and_the_wait_ends_just_after_the_next() {
        let cluster = TestCluster::new();
        let controller = CronJobController;
        let wait = to_next_minute();
        let first = start(&cluster, cronjob("* * * * *", json!({})));
        assert_eq!(
            first,
            Action::RequeueAfter(Duration::from_secs(wait) + NEXT_SCHEDULE_DELTA)
        );
        assert!(jobs(&cluster).is_empty(), "nothing before the first minute");
        let created = cluster.get("batch/cronjobs", &key("tick")).unwrap();
        assert_eq!(created["status"], json!({}));
        assert_eq!(created["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(created["spec"]["successfulJobsHistoryLimit"], 3);

        advance(Duration::from_secs(wait) + NEXT_SCHEDULE_DELTA).await;
        let scheduled = Timestamp::from_second(now().as_second()).unwrap();
        let next = cluster.reconcile(&controller, &key("tick"));
        assert_eq!(
            next,
            Action::RequeueAfter(Duration::from_secs(60)),
            "the next look is 100 ms after the next minute"
        );
        assert_eq!(jobs(&cluster), [minute_name(scheduled)]);
        let job = cluster
            .get("batch/jobs", &key(&minute_name(scheduled)))
            .unwrap();
        assert_eq!(
            job["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
            scheduled.to_string()
        );
        assert_eq!(job["metadata"]["annotations"]["note"], "hi");
        assert_eq!(job["metadata"]["labels"]["app"], "tick");
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].clone(), owner["controller"].clone()),
            (json!("CronJob"), json!(true))
        );
        let written = status(&cluster);
        assert_eq!(written["lastScheduleTime"], scheduled.to_string());
        assert_eq!(written["active"][0]["name"], minute_name(scheduled));
        assert_eq!(written["active"][0]["uid"], job["metadata"]["uid"]);
        assert_eq!(written["active"][0]["kind"], "Job");
        assert!(cluster.events_about("tick").contains(&(
            "SuccessfulCreate".into(),
            format!("Created job {}", minute_name(scheduled))
        )));

        // Looking again within the minute starts nothing more.
        advance(Duration::from_secs(30)).await;
        cluster.reconcile(&controller, &key("tick"));
        assert_eq!(jobs(&cluster).len(), 1);

        // Allow: the next minute's Job runs beside the first.
        advance(Duration::from_secs(30)).await;
        cluster.reconcile(&controller, &key("tick"));
        assert_eq!(jobs(&cluster).len(), 2);
        assert_eq!(status(&cluster)["active"].as_array().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn descriptors_and_time_zones_decide_the_next_time() {
        let cluster = TestCluster::new();
        let controller = CronJobController;
        let hourly = start(&cluster, cronjob("@hourly", json!({})));
        let to_hour = 3600 - now().as_second().rem_euclid(3600) as u64;
        assert_eq!(
            hourly,
            Action::RequeueAfter(Duration::from_secs(to_hour) + NEXT_SCHEDULE_DELTA)
        );

        // 09:00 in Tokyo (no daylight saving: always 00:00 UTC).
        cluster.update("batch/cronjobs", &key("tick"), |c| {
            c["spec"]["schedule"] = json!("0 9 * * *");
            c["spec"]["timeZone"] = json!("Asia/Tokyo");
        });
        let to_midnight = 86400 - now().as_second().rem_euclid(86400) as u64;
        assert_eq!(
            cluster.reconcile(&controller, &key("tick")),
            Action::RequeueAfter(Duration::from_secs(to_midnight) + NEXT_SCHEDULE_DELTA)
        );
        advance(Duration::from_secs(to_midnight) + NEXT_SCHEDULE_DELTA).await;
        cluster.reconcile(&controller, &key("tick"));
        let scheduled = Timestamp::from_second(now().as_second()).unwrap();
        let job = cluster
            .get("batch/jobs", &key(&minute_name(scheduled)))
            .unwrap();
        let stamp = job["metadata"]["annotations"][SCHEDULED_TIMESTAMP]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(stamp.ends_with("T09:00:00+09:00"), "{stamp}");
    }

    #[tokio::test(start_paused = true)]
    async fn forbid_skips_while_a_job_runs_and_replace_swaps_it() {
        let cluster = TestCluster::new();
        let controller = CronJobController;
        let wait = to_next_minute();
        start(
            &cluster,
            cronjob("* * * * *", json!({"concurrencyPolicy": "Forbid"})),
        );
        advance(Duration::from_secs(wait)).await;
        cluster.reconcile(&controller, &key("tick"));
        let first = jobs(&cluster);
        assert_eq!(first.len(), 1);

        advance(Duration::from_secs(60)).await;
        cluster.reconcile(&controller, &key("tick"));
        assert_eq!(jobs(&cluster), first, "Forbid: the first still runs");
        assert!(cluster.events_about("tick").contains(&(
            "JobAlreadyActive".into(),
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .into()
        )));

        finish(&cluster, &first[0], "Complete");
        let done_at = now().to_string();
        cluster.reconcile(&controller, &key("tick"));
        assert!(cluster.events_about("tick").contains(&(
            "SawCompletedJob".into(),
            format!("Saw completed job: {}, condition: Complete", first[0])
        )));
        let after = status(&cluster);
        assert_eq!(after["lastSuccessfulTime"], done_at);
        // The skipped minute is still the most recent time, and nothing runs now: it starts.
        assert_eq!(
            jobs(&cluster).len(),
            2,
            "the skipped run starts once the first finished"
        );

        cluster.update("batch/cronjobs", &key("tick"), |c| {
            c["spec"]["concurrencyPolicy"] = json!("Replace");
        });
        let running = status(&cluster)["active"][0]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        advance(Duration::from_secs(60)).await;
        cluster.reconcile(&controller, &key("tick"));
        assert!(
            cluster.get("batch/jobs", &key(&running)).is_none(),
            "replaced"
        );
        let active = status(&cluster)["active"].clone();
        assert_eq!(active.as_array().unwrap().len(), 1);
        assert_ne!(active[0]["name"], running.as_str());
        assert!(cluster
            .events_about("tick")
            .contains(&("SuccessfulDelete".into(), format!("Deleted job {running}"))));
    }

    #[tokio::test(start_paused = true)]
    async fn suspended_cronjobs_start_nothing() {
        let cluster = TestCluster::new();
        let wait = to_next_minute();
        let action = start(&cluster, cronjob("* * * * *", json!({"suspend": true})));
        assert_eq!(action, Action::Done);
        advance(Duration::from_secs(wait + 120)).await;
        assert_eq!(
            cluster.reconcile(&CronJobController, &key("tick")),
            Action::Done
        );
        assert!(jobs(&cluster).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_past_its_starting_deadline_is_skipped() {
        let cluster = TestCluster::new();
        let controller = CronJobController;
        let to_hour = 3600 - now().as_second().rem_euclid(3600) as u64;
        start(
            &cluster,
            cronjob("0 * * * *", json!({"startingDeadlineSeconds": 10})),
        );
        // The controller comes back 30 s after the hour: too late for that run.
        advance(Duration::from_secs(to_hour + 30)).await;
        assert_eq!(
            cluster.reconcile(&controller, &key("tick")),
            Action::RequeueAfter(Duration::from_secs(3600 - 30) + NEXT_SCHEDULE_DELTA)
        );
        assert!(jobs(&cluster).is_empty());
        // Within the deadline at the next hour, it runs.
        advance(Duration::from_secs(3600 - 30 + 5)).await;
        cluster.reconcile(&controller, &key("tick"));
        assert_eq!(jobs(&cluster).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_many_missed_times_only_the_most_recent_runs() {
        let cluster = TestCluster::new();
        cluster.create("batch/cronjobs", cronjob("* * * * *", json!({})));
        let three_hours_ago = now() - SignedDuration::from_hours(3);
        cluster.update_status("batch/cronjobs", &key("tick"), |c| {
            c["status"]["lastScheduleTime"] = json!(three_hours_ago.to_string());
        });
        cluster.reconcile(&CronJobController, &key("tick"));
        let most_recent = Timestamp::from_second(now().as_second() / 60 * 60).unwrap();
        assert_eq!(jobs(&cluster), [minute_name(most_recent)]);
        assert!(cluster.events_about("tick").contains(&(
            "TooManyMissedTimes".into(),
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into()
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn history_limits_keep_the_newest_finished_jobs() {
        let cluster = TestCluster::new();
        let controller = CronJobController;
        let made = cluster.create(
            "batch/cronjobs",
            cronjob(
                "0 0 1 1 *",
                json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 0}),
            ),
        );
        for (name, outcome) in [
            ("tick-1", "Complete"),
            ("tick-2", "Complete"),
            ("tick-3", "Failed"),
            ("tick-4", "Complete"),
            ("tick-5", ""),
        ] {
            let mut job = json!({
                "metadata": {"name": name, "namespace": "default", "ownerReferences": [controller_ref(&made)]},
                "spec": made["spec"]["jobTemplate"]["spec"],
            });
            job["spec"]["template"]["metadata"] = json!({});
            cluster.create("batch/jobs", job);
            if !outcome.is_empty() {
                finish(&cluster, name, outcome);
            }
            advance(Duration::from_secs(1)).await;
        }
        cluster.reconcile(&controller, &key("tick"));
        assert_eq!(jobs(&cluster), ["tick-2", "tick-4", "tick-5"]);
        let events = cluster.events_about("tick");
        for gone in ["tick-1", "tick-3"] {
            assert!(events.contains(&("SuccessfulDelete".into(), format!("Deleted job {gone}"))));
        }
        assert!(
            events.contains(&(
                "UnexpectedJob".into(),
                "Saw a job that the controller did not create or forgot: tick-5".into()
            )),
            "{events:?}"
        );
    }

    #[test]
    fn schedules_and_zones_are_validated_with_upstreams_words() {
        let cluster = TestCluster::new();
        let refused = |object: Value| {
            cluster
                .try_create("batch/cronjobs", object)
                .unwrap_err()
                .message
        };
        let message = refused(cronjob("TZ=Europe/Paris 0 9 * * *", json!({})));
        assert!(
            message.contains("spec.schedule: Invalid value: \"TZ=Europe/Paris 0 9 * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
            "{message}"
        );
        let message = refused(cronjob("0 9 * *", json!({})));
        assert!(
            message.contains("expected exactly 5 fields, found 4: [0 9 * *]"),
            "{message}"
        );
        let message = refused(cronjob("0 9 * * *", json!({"timeZone": "Mars/Olympus"})));
        assert!(
            message.contains(
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
            ),
            "{message}"
        );
        let message = refused(cronjob("0 9 * * *", json!({"timeZone": "Local"})));
        assert!(
            message.contains("timeZone must be an explicit time zone"),
            "{message}"
        );
        let mut long = cronjob("@daily", json!({}));
        long["metadata"]["name"] = json!("x".repeat(53));
        assert!(refused(long).contains("must be no more than 52 characters"));
        let mut selected = cronjob("@daily", json!({}));
        selected["spec"]["jobTemplate"]["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        assert!(refused(selected).contains("`selector` will be auto-generated"));
        cluster.create(
            "batch/cronjobs",
            cronjob("@every 1h", json!({"timeZone": "Europe/Paris"})),
        );
    }
}
