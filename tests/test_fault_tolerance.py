"""What a cluster does to a search, with real processes: kills, restarts, scale-down.

Leases are shortened so that the tests run in seconds; trials are long enough (several epochs)
to be caught mid-way.
"""

import re
import signal
import time

from kt_cluster.chief.state import Journal


def running_on(status, tuner_id, min_epoch=0):
    return [r for r in status["running"] if r["tuner_id"] == tuner_id and r["epoch"] >= min_epoch]


def val_f1_steps(trial):
    return sorted(o["step"] for o in trial["metrics"]["metrics"]["val_f1"]["observations"])


def end_order(cluster):
    state = Journal(cluster.results / "ktc-search" / "ktc-state").load()
    return state.end_order


def test_killed_worker_trial_resumes_elsewhere_from_its_checkpoint(cluster):
    c = cluster(config={"max_trials": 2, "epochs": 5, "lease_seconds": 3})
    c.start_chief("--linger")
    c.start_worker(0)
    status = c.wait_for(lambda s: running_on(s, "worker-0", min_epoch=1), what="worker-0 past epoch 1")
    victim = running_on(status, "worker-0")[0]["trial_id"]
    c.kill("worker-0")
    c.start_worker(1)
    c.wait_for(lambda s: s["done"], what="search done")
    trials = {t["trial_id"]: t for t in c.trial_files()}
    assert sorted(trials) == sorted(end_order(c)), "a trial ended twice or not at all"
    assert {t["status"] for t in trials.values()} == {"COMPLETED"} and len(trials) == 2
    assert val_f1_steps(trials[victim]) == [0, 1, 2, 3, 4], "history is not continuous"
    assert f"trial {victim}: resuming after epoch" in c.tail("worker-1", 400)
    metrics = c.scrape(c.chief_metrics_port)
    assert "ktc_chief_leases_expired_total 1.0" in metrics
    assert 'ktc_chief_trials_requeued_total{reason="lease_expired"} 1.0' in metrics


def test_killed_and_restarted_chief_resumes_without_losing_or_repeating_trials(cluster):
    c = cluster(config={"max_trials": 4, "epochs": 4, "lease_seconds": 20})
    c.start_chief()
    c.start_worker(0)
    c.start_worker(1)
    c.wait_for(lambda s: s["completed"] >= 1 and any(r["epoch"] >= 0 for r in s["running"]),
               what="one trial done and one running")
    c.kill("chief")
    time.sleep(2)  # workers keep training and wait for the chief
    c.start_chief()
    assert c.wait_exit("chief", timeout=300) == 0, c.tail("chief")
    for name in ("worker-0", "worker-1"):
        assert c.wait_exit(name, timeout=60) == 0, c.tail(name)
    trials = c.trial_files()
    order = end_order(c)
    assert len(order) == len(set(order)) == 4, f"end order {order}"
    assert len(trials) == 4 and {t["status"] for t in trials} == {"COMPLETED"}
    assert "resumed the search" in c.tail("chief", 400)


def test_sigterm_hands_the_trial_back_for_another_worker_to_resume(cluster):
    c = cluster(config={"max_trials": 1, "epochs": 40, "lease_seconds": 60})
    c.start_chief("--linger")
    c.start_worker(0)
    c.start_worker(1)  # together: the trial is still early on when both are up
    status = c.wait_for(lambda s: s["running"] and s["running"][0]["epoch"] >= 1 and len(s["workers"]) == 2,
                        what="one worker past epoch 1, the other polling")
    trial_id, holder = status["running"][0]["trial_id"], status["running"][0]["tuner_id"]
    other = "worker-1" if holder == "worker-0" else "worker-0"
    c.kill(holder, signal.SIGTERM)
    # Watch for what lasts, not for the moment `other` holds the trial: a worker may still be
    # exiting (TensorFlow's teardown, seconds under load) when the other has finished the trial.
    c.wait_for(lambda s: s["done"], what="search done")
    assert c.wait_exit(holder, timeout=30) == 0
    assert f"trial {trial_id}: handed_back" in c.tail(holder, 400)
    assert re.search(rf"trial {trial_id}: resuming after epoch [1-9]\d* ", c.tail(other, 400)), c.tail(other)
    trial = c.trial_files()[0]
    assert trial["trial_id"] == trial_id and trial["status"] == "COMPLETED"
    assert val_f1_steps(trial) == list(range(40))
    # Moved by the hand-back, long before the 60 s lease could lapse.
    metrics = c.scrape(c.chief_metrics_port)
    assert 'ktc_chief_trials_requeued_total{reason="handback"} 1.0' in metrics
    assert "ktc_chief_leases_expired_total 0.0" in metrics


def test_a_trial_that_raises_fails_with_its_message_and_the_search_ends_clearly(cluster, tmp_path):
    from harness import TINY, make_dataset
    from kt_cluster.core.dataset import DatasetError, check_dataset

    data = make_dataset(tmp_path / "bad-data")
    for corrupt in sorted((data / "train" / "images").iterdir()):
        original = corrupt.read_bytes()
        corrupt.write_bytes(b"this is not a png")
        try:
            check_dataset(data, TINY["data"]["classes"])
            break  # a page the chief's start-up check does not decode: a trial meets it
        except DatasetError:
            corrupt.write_bytes(original)
    else:
        raise AssertionError("the start-up check decodes every page of this dataset")
    c = cluster(data=data, config={"max_trials": 3, "max_retries_per_trial": 0,
                                   "max_consecutive_failed_trials": 2})
    c.start_chief()
    c.start_worker(0)
    assert c.wait_exit("chief", timeout=300) == 1
    assert "consecutive failures" in c.tail("chief", 200)
    assert c.wait_exit("worker-0", timeout=60) == 0, "the worker must survive failing trials"
    trials = c.trial_files()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"FAILED"}
    assert all(str(corrupt) in t["message"] for t in trials)


def test_median_rule_stops_a_real_worker_trial_early(cluster):
    """Three trials reported at val_f1 0.99 every epoch set the median no tiny U-Net reaches; the
    next trial a real worker trains is told to stop after its first epoch and recorded so."""
    from kt_cluster.worker.client import ChiefClient
    from harness import TOKEN

    c = cluster(config={"max_trials": 4, "epochs": 6, "early_stopping": True})
    c.start_chief("--linger")
    c.wait_for(lambda s: True, timeout=120, what="chief up")

    class LocalOracle:  # what ChiefClient borrows from a tuner's oracle
        objective = max_trials = None

    prior = ChiefClient(LocalOracle(), c.address, "prior-worker", TOKEN)
    for _ in range(3):
        trial = prior.create_trial("prior-worker")
        for epoch in range(6):
            prior.update_trial(trial.trial_id, {"val_f1": 0.99}, step=epoch)
        trial.status = "COMPLETED"
        prior.end_trial(trial)
    prior.close()
    c.start_worker(0)
    c.wait_for(lambda s: s["done"], what="search done")
    stopped = [t for t in c.trial_files() if t.get("stopped_early")]
    assert len(stopped) == 1 and stopped[0]["status"] == "COMPLETED"
    assert max(val_f1_steps(stopped[0])) < 5, "it ran all its epochs"
    assert "ktc_chief_trials_stopped_early_total 1.0" in c.scrape(c.chief_metrics_port)
    assert f"trial {stopped[0]['trial_id']}: stopped_early" in c.tail("worker-0", 400)
