"""The chief's oracle in-process: leases, idempotence, lock safety, early stopping, journal."""

import json

import keras_tuner
import pytest
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.engine import trial as trial_module

from kt_cluster.chief.oracle import NotHolder, UnknownTrial
from oracle_support import finish, make_oracle

Status = trial_module.TrialStatus


def test_silent_worker_loses_its_trial_to_the_next_worker(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("w0", session="s0")
    oracle.leases.clock.now += 11
    assert oracle.expire_leases() == [trial.trial_id]
    assert "w0" not in oracle.tuner_ids
    again = oracle.create_trial("w1", session="s1")
    assert again.trial_id == trial.trial_id and again.hyperparameters.values == trial.hyperparameters.values
    with pytest.raises(NotHolder):
        oracle.update_trial(trial.trial_id, {"val_f1": 0.5}, tuner_id="w0", session="s0")
    assert oracle.heartbeat("w0", "s0", trial.trial_id, 1)["held"] is False


def test_heartbeat_keeps_the_lease(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("w0", session="s0")
    for _ in range(5):
        oracle.leases.clock.now += 6
        assert oracle.heartbeat("w0", "s0", trial.trial_id, 0)["held"]
        assert oracle.expire_leases() == []


def test_a_repeated_end_trial_completes_a_trial_once(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("w0", session="s0")
    assert finish(oracle, trial, 0.5) is True
    assert oracle.end_trial(trial, tuner_id="w0", session="s0") is False
    assert oracle.end_order.count(trial.trial_id) == 1


def test_a_requeued_trial_finished_by_its_old_holder_is_kept(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("w0", session="s0")
    oracle.leases.clock.now += 11
    oracle.expire_leases()
    trial.status = Status.COMPLETED
    oracle.trials[trial.trial_id].metrics.update("val_f1", 0.7, step=0)
    assert oracle.end_trial(trial, tuner_id="w0", session="s0") is True
    assert oracle.trials[trial.trial_id].status == Status.COMPLETED
    assert trial.trial_id not in oracle._retry_queue


def test_unknown_trial_ids_are_rejected(tmp_path):
    oracle = make_oracle(tmp_path)
    with pytest.raises(UnknownTrial):
        oracle.update_trial("999", {"val_f1": 1.0})
    with pytest.raises(UnknownTrial):
        oracle.get_trial("999")


def test_an_exception_inside_the_oracle_does_not_leak_its_lock(tmp_path, monkeypatch):
    oracle = make_oracle(tmp_path)
    calls = {"n": 0}
    original = type(oracle).populate_space

    def flaky(self, trial_id):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom inside populate_space")
        return original(self, trial_id)

    monkeypatch.setattr(type(oracle), "populate_space", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        oracle.create_trial("w0", session="s0")
    assert not kt_oracle.LOCKS[oracle].locked()
    assert oracle.create_trial("w0", session="s0").status == Status.RUNNING


def test_consecutive_failures_end_the_search_with_the_reason(tmp_path):
    oracle = make_oracle(tmp_path)
    for tuner in ("w0", "w1"):
        trial = oracle.create_trial(tuner, session=tuner)
        trial.status, trial.message = Status.FAILED, "DataError: /data/x.png: not an image"
        oracle.end_trial(trial, tuner_id=tuner, session=tuner)
    assert oracle.done and "consecutive failures" in oracle.failure
    assert not kt_oracle.LOCKS[oracle].locked()
    assert oracle.create_trial("w2", session="s2").status == Status.STOPPED


def test_workers_wait_rather_than_exit_while_a_trial_may_come_back(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=1)
    trial = oracle.create_trial("w0", session="s0")
    assert oracle.create_trial("w1", session="s1").status == Status.IDLE
    finish(oracle, trial, 0.4)
    assert oracle.create_trial("w1", session="s1").status == Status.STOPPED
    assert oracle.done and oracle.failure is None


def test_median_rule_stops_a_trial_worse_than_finished_ones(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=10, early_stopping=True)
    for value in (0.6, 0.7, 0.8):
        finish(oracle, oracle.create_trial("w0", session="s0"), value)
    good = oracle.create_trial("w0", session="s0")
    oracle.update_trial(good.trial_id, {"val_f1": 0.75}, step=0, tuner_id="w0", session="s0")
    assert good.trial_id not in oracle.stop_requested
    finish(oracle, good, 0.75)
    bad = oracle.create_trial("w0", session="s0")
    oracle.update_trial(bad.trial_id, {"val_f1": 0.1}, step=0, tuner_id="w0", session="s0")
    assert bad.trial_id in oracle.stop_requested
    assert oracle.heartbeat("w0", "s0", bad.trial_id, 0)["stop"] is True
    bad.status = Status.COMPLETED
    oracle.end_trial(bad, tuner_id="w0", session="s0", stopped_early=True)
    assert bad.trial_id in oracle.stopped_early
    assert json.loads((tmp_path / "search" / f"trial_{bad.trial_id}" / "trial.json").read_text())["stopped_early"]


def test_restored_oracle_keeps_trials_order_and_running_holders(tmp_path):
    oracle = make_oracle(tmp_path)
    done = oracle.create_trial("w0", session="s0")
    finish(oracle, done, 0.9)
    running = oracle.create_trial("w1", session="s1")
    oracle.journal.close()

    again = make_oracle(tmp_path, restore=True)
    assert again.end_order == [done.trial_id]
    assert again.trials[done.trial_id].score == pytest.approx(0.9)
    assert again.ongoing_trials["w1"].trial_id == running.trial_id
    # The holder reconnects under its session and keeps its trial; nobody else gets it.
    assert again.heartbeat("w1", "s1", running.trial_id, 0)["held"]
    other = again.create_trial("w2", session="s2")
    assert other.trial_id not in (done.trial_id, running.trial_id)
    assert again._compute_values_hash(done.hyperparameters.values) in again._tried_so_far


def test_torn_journal_tail_is_dropped_on_restore(tmp_path):
    oracle = make_oracle(tmp_path)
    finish(oracle, oracle.create_trial("w0", session="s0"), 0.5)
    oracle.journal.close()
    journal = next((tmp_path / "state").glob("journal-*.jsonl"))
    with open(journal, "ab") as handle:
        handle.write(b'{"trial": {"trial_id": "000", "hyperpar')  # a kill mid-write
    again = make_oracle(tmp_path, restore=True)
    assert len(again.trials) == 1


def test_restore_right_after_an_end_trial_neither_loses_nor_reissues_trials(tmp_path):
    oracle = make_oracle(tmp_path)
    ended = oracle.create_trial("w0", session="s0")
    running = oracle.create_trial("w1", session="s1")
    for step, value in enumerate((0.2, 0.3)):  # journaled as small "update" records
        oracle.update_trial(running.trial_id, {"val_f1": value}, step=step, tuner_id="w1", session="s1")
    finish(oracle, ended, 0.9)  # the chief is killed right after this EndTrial
    oracle.journal.close()

    again = make_oracle(tmp_path, restore=True)
    assert {t: trial.trial_id for t, trial in again.ongoing_trials.items()} == {"w1": running.trial_id}
    history = again.trials[running.trial_id].metrics.get_history("val_f1")
    assert [(o.step, o.value) for o in history] == [(0, [0.2]), (1, [0.3])]
    assert again.create_trial("w0", session="s0").trial_id not in (ended.trial_id, running.trial_id)


def test_workers_that_left_are_forgotten_and_busy_ones_kept(tmp_path):
    import time

    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("busy", session="s0")
    oracle.create_trial("gone", session="s1")
    finish(oracle, oracle.trials[oracle.ongoing_trials["gone"].trial_id], 0.5, tuner_id="gone", session="s1")
    oracle.last_seen["busy"] = oracle.last_seen["gone"] = time.time() - 11  # silent for more than a lease term
    oracle.create_trial("new", session="s2")
    assert oracle.expire_leases() == []  # "busy" still holds a lease on the fake clock
    assert set(oracle.status()["workers"]) == {"busy", "new"}
    assert oracle.ongoing_trials["busy"].trial_id == trial.trial_id


def test_journal_records_only_the_running_trials_that_changed_and_restores_them_all(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=20)
    trials = {f"w{i}": oracle.create_trial(f"w{i}", session=f"s{i}") for i in range(6)}
    finish(oracle, trials["w0"], 0.5, tuner_id="w0", session="s0")
    oracle.hand_back("w1", "s1", trials["w1"].trial_id)
    again_w0 = oracle.create_trial("w0", session="s0")  # takes the handed-back trial
    oracle.journal.close()
    records = [json.loads(line) for line in next((tmp_path / "state").glob("journal-*.jsonl")).read_text().splitlines()]
    saves = [r for r in records if "oracle" in r]
    assert all("ongoing_trials" not in r["oracle"] for r in saves)
    # One change per call, except the end's drop, which keras-tuner saves only with the next call.
    assert [len(r.get("ongoing_set", {})) + len(r.get("ongoing_drop", [])) for r in saves] == [0] + [1] * 6 + [0, 2, 1]

    expected = {t: trial.trial_id for t, trial in oracle.ongoing_trials.items()}
    assert expected["w0"] == again_w0.trial_id == trials["w1"].trial_id and "w1" not in expected
    restored = make_oracle(tmp_path, restore=True)  # replays the journal, then compacts it
    assert {t: trial.trial_id for t, trial in restored.ongoing_trials.items()} == expected
    restored.journal.close()
    from_snapshot = make_oracle(tmp_path, restore=True)
    assert {t: trial.trial_id for t, trial in from_snapshot.ongoing_trials.items()} == expected


def test_journal_records_the_search_space_when_it_changes_and_restores_the_last(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=20)
    for i in range(3):
        oracle.create_trial(f"w{i}", session=f"s{i}")
    grown = keras_tuner.HyperParameters()
    grown.Float("lr", 1e-4, 1e-1, sampling="log")
    oracle.update_space(grown)  # a worker's hypermodel registered one more hyperparameter
    oracle.create_trial("w3", session="s3")
    oracle.journal.close()
    records = [json.loads(line) for line in next((tmp_path / "state").glob("journal-*.jsonl")).read_text().splitlines()]
    # Journaled by the UpdateSpace itself (before it answers), then not again.
    assert ["hyperparameters" in r["oracle"] for r in records if "oracle" in r] == [True, False, False, False, True, False]
    restored = make_oracle(tmp_path, restore=True)
    assert restored.hyperparameters.get_config() == oracle.hyperparameters.get_config()
    assert [hp.name for hp in restored.hyperparameters.space] == ["units", "lr"]


def test_journals_that_saved_the_whole_running_map_still_replay():
    from kt_cluster.chief.state import Replayed

    replayed = Replayed()
    space = {"space": [], "values": {}}
    replayed.apply({"oracle": {"ongoing_trials": {"w0": "00", "w1": "01"}, "seed": 1, "hyperparameters": space}})
    replayed.apply({"oracle": {"seed": 1}, "ongoing_set": {"w2": "02"}, "ongoing_drop": ["w0"]})
    assert replayed.ongoing == {"w1": "01", "w2": "02"} and replayed.oracle == {"seed": 1, "hyperparameters": space}
    assert Replayed.from_snapshot(replayed.to_snapshot()).ongoing == replayed.ongoing


def test_no_trial_starts_once_the_worker_time_budget_is_spent_and_restored_spending_counts(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=10)
    oracle.max_worker_seconds = 10.0
    first = oracle.create_trial("w0", session="s0")
    second = oracle.create_trial("w1", session="s1")
    oracle.update_trial(first.trial_id, {"val_f1": 0.5, "epoch_seconds": 6.0}, step=0, tuner_id="w0", session="s0")
    first.status = Status.COMPLETED
    oracle.end_trial(first, tuner_id="w0", session="s0")
    assert oracle.create_trial("w0", session="s0").status == Status.RUNNING  # 6 of 10 seconds spent
    oracle.update_trial(second.trial_id, {"val_f1": 0.4, "epoch_seconds": 5.0}, step=0, tuner_id="w1", session="s1")
    status = oracle.status()
    assert (status["worker_seconds"], status["max_worker_seconds"]) == (11.0, 10.0)
    # Spent, with two trials running: they finish, nothing new starts, the workers wait.
    assert oracle.create_trial("w2", session="s2").status == Status.IDLE
    oracle.journal.close()

    restored = make_oracle(tmp_path, max_trials=10, restore=True)  # the spending comes back with the trials
    restored.max_worker_seconds = 10.0
    assert restored.status()["worker_seconds"] == 11.0
    for tuner_id, trial in list(restored.ongoing_trials.items()):
        finish(restored, trial, 0.3, tuner_id=tuner_id, session=f"s{tuner_id[1]}")
    assert restored.create_trial("w3", session="s3").status == Status.STOPPED
    assert restored.done and restored.failure is None and len(restored.trials) == 3
