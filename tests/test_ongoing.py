"""The running-trials map: its holder index and change set agree with a plain dict under any use,
and a journal built from its changes restores the very map the oracle had."""

import random

import pytest

from kt_cluster.chief.ongoing import OngoingTrials
from oracle_support import finish, make_oracle


class T:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def _mutate(rng, tracked, plain):
    """One random mutation, through a random dict method, applied to both maps."""
    tuner_id = f"w{rng.randrange(6)}"
    op = rng.choice(["set", "del", "pop", "pop_default", "popitem", "setdefault", "update", "ior", "clear"])
    if op in ("del", "pop", "popitem") and not plain:
        op = "set"
    if op == "del" and tuner_id not in plain:
        tuner_id = next(iter(plain))
    trial = T(f"t{rng.randrange(1000)}")
    while any(t.trial_id == trial.trial_id for t in plain.values()):  # one tuner id per trial
        trial = T(f"t{rng.randrange(1000)}")
    if op == "set":
        tracked[tuner_id] = plain[tuner_id] = trial
    elif op == "del":
        del tracked[tuner_id], plain[tuner_id]
    elif op == "pop":
        tuner_id = rng.choice(list(plain))
        assert tracked.pop(tuner_id) is plain.pop(tuner_id)
    elif op == "pop_default":
        assert tracked.pop(tuner_id, None) is plain.pop(tuner_id, None)
    elif op == "popitem":
        assert tracked.popitem() == (key := next(reversed(plain)), plain.pop(key))
    elif op == "setdefault":
        assert tracked.setdefault(tuner_id, trial) is plain.setdefault(tuner_id, trial)
    elif op in ("update", "ior"):
        if op == "update":
            tracked.update({tuner_id: trial})
        else:
            tracked |= {tuner_id: trial}
        plain[tuner_id] = trial
    else:
        tracked.clear()
        plain.clear()


@pytest.mark.parametrize("seed", range(5))
def test_holder_index_and_changes_match_a_plain_dict_under_any_mutation(seed):
    rng = random.Random(seed)
    tracked, plain = OngoingTrials(), {}
    journaled: dict = {}  # the map as of the last take_changes()
    seen: set[str] = set()
    for _ in range(400):
        _mutate(rng, tracked, plain)
        assert dict(tracked) == plain
        seen |= {t.trial_id for t in plain.values()}
        for trial_id in seen:
            scan = next((k for k, t in plain.items() if t.trial_id == trial_id), None)
            assert tracked.holder(trial_id) == scan, trial_id
        if rng.random() < 0.2:
            differ = {k for k in plain.keys() | journaled.keys() if plain.get(k) is not journaled.get(k)}
            assert tracked.take_changes() >= differ and tracked.changed == set()
            journaled = dict(plain)


def test_a_reassigned_map_reports_the_keys_it_lost_as_changed(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=10)
    for i in range(3):
        oracle.create_trial(f"w{i}", session=f"s{i}")
    oracle.save()
    oracle.ongoing_trials = {"w0": oracle.ongoing_trials["w0"]}  # as keras-tuner's set_state does
    assert {"w1", "w2"} <= oracle.ongoing_trials.take_changes()


@pytest.mark.parametrize("seed", range(3))
def test_a_journal_of_changes_restores_the_running_map_after_any_sequence(tmp_path, seed):
    rng = random.Random(seed)
    oracle = make_oracle(tmp_path, max_trials=200)
    sessions = {f"w{i}": f"s{i}" for i in range(12)}
    for _ in range(150):
        tuner_id = rng.choice(list(sessions))
        held = oracle.ongoing_trials.get(tuner_id)
        action = rng.random()
        if held is None or action < 0.3:
            oracle.create_trial(tuner_id, session=sessions[tuner_id])
        elif action < 0.7:
            finish(oracle, held, rng.random(), tuner_id=tuner_id, session=sessions[tuner_id])
        elif action < 0.85:
            oracle.hand_back(tuner_id, sessions[tuner_id], held.trial_id)
        else:
            oracle.leases.clock.now += 11  # every lease lapses: all running trials are requeued
            oracle.expire_leases()
    expected = {t: trial.trial_id for t, trial in oracle.ongoing_trials.items()}
    assert expected, "the sequence should leave trials running"
    oracle.journal.close()
    restored = make_oracle(tmp_path, max_trials=200, restore=True)
    assert {t: trial.trial_id for t, trial in restored.ongoing_trials.items()} == expected
