"""CronJobs and Jobs as real manifests use them, against simulated nodes, with real kubectl."""

import datetime
import time

from conftest import manifest, wait_for

SCHEDULED = "batch.kubernetes.io/cronjob-scheduled-timestamp"
INDEX = "batch.kubernetes.io/job-completion-index"


def cronjob(name, runs_for, **spec):
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"sim.bramble.dev/exit-after-seconds": str(runs_for)}},
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
                    }
                }
            },
            **spec,
        },
    }


def jobs_of(master, cronjob_name):
    return [
        job
        for job in master.kubectl_json("get", "jobs")["items"]
        if any(o["kind"] == "CronJob" and o["name"] == cronjob_name for o in job["metadata"].get("ownerReferences", []))
    ]


def finished(job):
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in job.get("status", {}).get("conditions", []))


def timestamp(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_cronjobs_run_on_schedule_and_jobs_from_manifests(demo_cluster):
    master, _ = demo_cluster
    # Every minute: short runs, one kept. Forbid: a run longer than a minute, so the next
    # minute finds it active; its starting deadline makes that minute a skip, not a late start.
    master.kubectl("apply", "-f", "-", input=manifest(cronjob("every", 1, successfulJobsHistoryLimit=1)))
    master.kubectl(
        "apply",
        "-f",
        "-",
        input=manifest(cronjob("slow", 75, concurrencyPolicy="Forbid", startingDeadlineSeconds=10)),
    )
    created_at = time.time()
    first_minute = (int(created_at) // 60 + 1) * 60

    table = master.kubectl("get", "cronjobs").stdout
    assert table.split("\n")[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"]
    assert "every   * * * * *   <none>     False     0        <none>" in table, table

    # While waiting for the minute: a Job from a CronJob, as kubectl builds it.
    master.kubectl("apply", "-f", "-", input=manifest(cronjob("source", 0.3, suspend=True)))
    out = master.kubectl("create", "job", "by-hand", "--from=cronjob/source").stdout
    assert out.strip() == "job.batch/by-hand created"
    by_hand = master.kubectl_json("get", "job", "by-hand")
    assert by_hand["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert by_hand["metadata"]["ownerReferences"][0]["name"] == "source"
    master.kubectl("wait", "--for=condition=complete", "job/by-hand", "--timeout=30s")

    # An Indexed Job: every index once, each pod with its index and hostname.
    indexed = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "shards"},
        "spec": {
            "completions": 3,
            "parallelism": 2,
            "completionMode": "Indexed",
            "template": {
                "metadata": {"annotations": {"sim.bramble.dev/exit-after-seconds": "0.3"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    master.kubectl("apply", "-f", "-", input=manifest(indexed))
    master.kubectl("wait", "--for=condition=complete", "job/shards", "--timeout=30s")
    shards = master.kubectl_json("get", "job", "shards")
    assert shards["status"]["completedIndexes"] == "0-2"
    assert shards["status"]["succeeded"] == 3
    pods = master.kubectl_json("get", "pods", "-l", "job-name=shards")["items"]
    indexes = sorted(p["metadata"]["labels"][INDEX] for p in pods)
    assert indexes == ["0", "1", "2"]
    for pod in pods:
        index = pod["metadata"]["labels"][INDEX]
        assert pod["spec"]["hostname"] == f"shards-{index}"
        env = pod["spec"]["containers"][0]["env"]
        assert env[0]["name"] == "JOB_COMPLETION_INDEX"
        assert env[0]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{INDEX}']"

    # The first minute: both CronJobs start a Job, named for the minute, within a few seconds.
    first = wait_for(lambda: jobs_of(master, "every"), timeout=first_minute - time.time() + 10, what="the first job")
    seen_at = time.time()
    job = first[0]
    assert job["metadata"]["name"] == f"every-{first_minute // 60}"
    scheduled = timestamp(job["metadata"]["annotations"][SCHEDULED])
    assert scheduled.timestamp() == first_minute
    lag = (timestamp(job["metadata"]["creationTimestamp"]) - scheduled).total_seconds()
    print(f"first job created {lag:.0f}s after its minute (creationTimestamp), seen {seen_at - first_minute:.2f}s after")
    assert 0 <= lag <= 2
    assert [j["metadata"]["name"] for j in jobs_of(master, "slow")] == [f"slow-{first_minute // 60}"]

    # The second minute: "slow" still runs, so Forbid starts nothing.
    second_minute = first_minute + 60
    second = wait_for(
        lambda: [j for j in jobs_of(master, "every") if j["metadata"]["name"] == f"every-{second_minute // 60}"],
        timeout=second_minute - time.time() + 10,
        what="the second job",
    )[0]
    lag = (timestamp(second["metadata"]["creationTimestamp"]) - timestamp(second["metadata"]["annotations"][SCHEDULED])).total_seconds()
    print(f"second job created {lag:.0f}s after its minute")
    assert 0 <= lag <= 2
    events = master.kubectl_json("get", "events", "--field-selector", "involvedObject.name=slow")["items"]
    assert any(e["reason"] == "JobAlreadyActive" for e in events), [e["reason"] for e in events]

    # History: once the second run is done, only it is kept.
    wait_for(
        lambda: [j["metadata"]["name"] for j in jobs_of(master, "every")] == [f"every-{second_minute // 60}"]
        and finished(jobs_of(master, "every")[0]),
        timeout=20,
        what="the history limit",
    )
    status = master.kubectl_json("get", "cronjob", "every")["status"]
    assert timestamp(status["lastScheduleTime"]).timestamp() == second_minute
    assert "lastSuccessfulTime" in status

    # "slow" finishes after its second minute's deadline passed: that minute was skipped.
    wait_for(lambda: all(finished(j) for j in jobs_of(master, "slow")), timeout=first_minute + 90 - time.time(), what="the slow run")
    time.sleep(2)
    assert [j["metadata"]["name"] for j in jobs_of(master, "slow")] == [f"slow-{first_minute // 60}"]
    assert "active" not in master.kubectl_json("get", "cronjob", "slow")["status"]
