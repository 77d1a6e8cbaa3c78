"""Hostile and malformed requests against a real chief: each is refused with INVALID_ARGUMENT (or the
holder check's FAILED_PRECONDITION) before anything changes, and the read paths (Status,
GetBestTrials, /metrics) keep answering. In-process: a call whose journal write fails is undone."""

from __future__ import annotations

import json
import math
import os

import grpc
import keras_tuner
import pytest
from keras_tuner.engine import trial as trial_module

from harness import TOKEN
from kt_cluster.core import compat, protocol

pytestmark = pytest.mark.timeout(300)
Status = trial_module.TrialStatus
WORKER = [(protocol.SESSION, "session-1"), (protocol.TUNER_ID, "worker-1")]
AUTH = [(protocol.AUTHORIZATION, f"Bearer {TOKEN}")]


def oracle_call(address, method, request, metadata=WORKER):
    messages = compat.oracle_messages()
    with grpc.insecure_channel(address) as channel:
        stub = compat.oracle_stub_class()(channel)
        return getattr(stub, method)(getattr(messages, f"{method}Request")(**request),
                                     metadata=AUTH + list(metadata), timeout=10, wait_for_ready=True)


def raw_call(address, service, method, body: bytes, metadata=WORKER):
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(protocol.method_path(service, method))
        return call(body, metadata=AUTH + list(metadata), timeout=10, wait_for_ready=True)


def code_of(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    from harness import running_chief

    with running_chief(tmp_path_factory.mktemp("validation"), {"max_trials": 20}) as c:
        yield c


def space(chief) -> list:
    hps = keras_tuner.HyperParameters.from_proto(oracle_call(chief.address, "GetSpace", {}).hyperparameters)
    return sorted(json.dumps(hp.get_config(), sort_keys=True) for hp in hps.space)


def reads_still_answer(chief) -> dict:
    status = chief.status()
    assert status is not None
    oracle_call(chief.address, "GetBestTrials", {"num_trials": 5})
    assert "ktc_chief_trials" in chief.scrape(chief.chief_metrics_port)
    return status


def ended(trial_proto, status=Status.COMPLETED, change=None):
    hps = keras_tuner.HyperParameters.from_proto(trial_proto.hyperparameters)
    if change:
        change(hps)
    return {"trial": trial_module.Trial(hps, trial_id=trial_proto.trial_id, status=status).to_proto()}


def test_completed_without_the_objective_is_refused_and_leaves_the_trial_running(chief):
    a = chief.address
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "worker-1"}).trial
    assert code_of(lambda: oracle_call(a, "EndTrial", ended(trial))) == grpc.StatusCode.INVALID_ARGUMENT
    assert oracle_call(a, "GetTrial", {"trial_id": trial.trial_id}).trial.status == Status.to_proto(Status.RUNNING)
    status = reads_still_answer(chief)
    assert status["trials"] == {"RUNNING": 1}
    # The same trial then ends properly, once.
    oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": {"val_f1": 0.25}, "step": 0})
    oracle_call(a, "EndTrial", ended(trial))
    assert reads_still_answer(chief)["best"]["score"] == pytest.approx(0.25)


def test_a_trials_hyperparameters_are_the_ones_handed_out(chief):
    a = chief.address
    before = space(chief)
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "worker-1"}).trial
    oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": {"val_f1": 0.5}, "step": 0})

    def rewrite(hps):
        hps.values["start_neurons"] = 99999

    def redefine(hps):
        hps.Int("start_neurons_new_space", 1, 2)
        hps.values["start_neurons_new_space"] = 2  # not its default

    def other_choice(hps):
        hps.values["activation"] = "elu" if hps.values["activation"] == "relu" else "relu"

    for change in (rewrite, redefine, other_choice):
        assert code_of(lambda: oracle_call(a, "EndTrial", ended(trial, change=change))) == grpc.StatusCode.INVALID_ARGUMENT
    kept = oracle_call(a, "GetTrial", {"trial_id": trial.trial_id}).trial
    assert keras_tuner.HyperParameters.from_proto(kept.hyperparameters).values == \
        keras_tuner.HyperParameters.from_proto(trial.hyperparameters).values
    oracle_call(a, "EndTrial", ended(trial, change=lambda hps: hps.Boolean("met_in_build")))  # at its default
    assert space(chief) == before  # EndTrial never grows the search space


@pytest.mark.parametrize("declare", [
    lambda hp: hp.Int("zero_step", 1, 10, step=0),
    lambda hp: hp.Int("huge", -2**63, 2**63 - 1),
    lambda hp: hp.Float("nan_to_inf", float("nan"), float("inf")),
    lambda hp: hp.Float("reversed", 1.0, 2.0) and None or setattr(hp.space[-1], "min_value", 3.0),
    lambda hp: hp.Choice("mixed", [1, 2]),
    lambda hp: hp.Int("../../x", 1, 2),
    lambda hp: hp.Int("bell\x07", 1, 2),
    lambda hp: hp.Fixed("", 1),
    lambda hp: hp.Int("start_neurons", 1, 99999),  # declared again differently
    lambda hp: [hp.Boolean(f"b{i}") for i in range(300)],
], ids=["step 0", "int64 range", "NaN to inf", "min above max", "mixed choice", "path name", "control char",
        "empty name", "redeclared", "300 booleans"])
def test_malformed_spaces_are_refused_and_the_space_stays(chief, declare):
    before = space(chief)
    hp = keras_tuner.HyperParameters()
    declare(hp)
    proto = hp.to_proto()
    for choice in proto.space.choice_space:  # keras-tuner itself would refuse to make a mixed one
        choice.values[1].string_value = "a"
    assert code_of(lambda: oracle_call(chief.address, "UpdateSpace", {"hyperparameters": proto})) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert space(chief) == before


def test_a_condition_on_a_missing_parent_and_new_entries_the_config_does_not_allow_are_refused(chief):
    before = space(chief)
    hp = keras_tuner.HyperParameters()
    hp.Choice("ghost", ["a", "b"])
    with hp.conditional_scope("ghost", ["a"]):
        hp.Int("orphan", 1, 3)
    proto = hp.to_proto()
    del proto.space.choice_space[:]  # the parent is not sent
    assert code_of(lambda: oracle_call(chief.address, "UpdateSpace", {"hyperparameters": proto})) \
        == grpc.StatusCode.INVALID_ARGUMENT
    well_formed = keras_tuner.HyperParameters()
    well_formed.Float("learning_rate_new", 1e-4, 1e-2, sampling="log")
    for metadata in (WORKER, ()):  # the built-in hypermodel: no new entries, from anyone
        assert code_of(lambda: oracle_call(chief.address, "UpdateSpace", {"hyperparameters": well_formed.to_proto()},
                                           metadata=metadata)) == grpc.StatusCode.INVALID_ARGUMENT
    assert space(chief) == before
    # What the space already holds may be sent back (keras-tuner's workers do at start).
    current = oracle_call(chief.address, "GetSpace", {}).hyperparameters
    oracle_call(chief.address, "UpdateSpace", {"hyperparameters": current}, metadata=())


def test_the_holder_check_cannot_be_skipped_by_leaving_out_the_tuner_id(chief):
    a = chief.address
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "worker-1"}).trial
    update = {"trial_id": trial.trial_id, "metrics": {"val_f1": 0.9}, "step": 0}
    assert code_of(lambda: oracle_call(a, "UpdateTrial", update, metadata=())) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: oracle_call(a, "UpdateTrial", update, metadata=[(protocol.SESSION, "session-1")])) \
        == grpc.StatusCode.INVALID_ARGUMENT  # a session without its tuner id
    other = [(protocol.SESSION, "session-2"), (protocol.TUNER_ID, "worker-2")]
    assert code_of(lambda: oracle_call(a, "UpdateTrial", update, metadata=other)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: oracle_call(a, "EndTrial", ended(trial, Status.FAILED), metadata=())) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert oracle_call(a, "GetTrial", {"trial_id": trial.trial_id}).trial.status == Status.to_proto(Status.RUNNING)
    oracle_call(a, "EndTrial", ended(trial, Status.FAILED))  # its holder


def test_numbers_are_bounded_and_nan_is_accepted(chief):
    a = chief.address
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "worker-1"}).trial
    for metrics, step in (({"val_f1": 1e308}, 0), ({"val_f1": -math.inf}, 0), ({"val_f1": 0.5}, -5),
                          ({"val_f1": 0.5}, 2**62)):
        assert code_of(lambda: oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": metrics,
                                                              "step": step})) == grpc.StatusCode.INVALID_ARGUMENT
    beat = {"tuner_id": "worker-1", "session": "session-1", "trial_id": trial.trial_id}
    for epoch in (10**400, -2, 1.5, True):
        body = (json.dumps(dict(beat, epoch=epoch))).encode()
        assert code_of(lambda: raw_call(a, protocol.COORDINATOR_SERVICE, "Heartbeat", body)) \
            == grpc.StatusCode.INVALID_ARGUMENT
    oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": {"val_f1": math.nan}, "step": 0})
    reads_still_answer(chief)
    oracle_call(a, "EndTrial", ended(trial, Status.FAILED))


@pytest.mark.parametrize("method", ["GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial",
                                    "GetBestTrials"])
def test_undecodable_bodies_are_invalid_argument(chief, method):
    for body in (b"\xff\xff\xff\xff", b"\x0a\xff" + b"\x00" * 3, b"\x08" + b"\xff" * 11):
        code = code_of(lambda: raw_call(chief.address, protocol.ORACLE_SERVICE, method, body))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, body, code)


def test_json_nested_deep_is_invalid_argument(chief):
    body = b"[" * 100_000 + b"]" * 100_000
    for method in protocol.COORDINATOR_METHODS:
        assert code_of(lambda: raw_call(chief.address, protocol.COORDINATOR_SERVICE, method, body)) \
            == grpc.StatusCode.INVALID_ARGUMENT


def test_heartbeats_from_unknown_tuner_ids_add_no_worker_and_no_series(chief):
    before = chief.status()["workers"]
    for index in range(300):
        body = json.dumps({"tuner_id": f"stranger-{index}", "session": "s", "trial_id": "0"}).encode()
        reply = protocol.decode(raw_call(chief.address, protocol.COORDINATOR_SERVICE, "Heartbeat", body))
        assert reply["held"] is False
    assert set(chief.status()["workers"]) == set(before)
    assert "stranger-" not in chief.scrape(chief.chief_metrics_port)


def test_duplicate_session_metadata_is_refused(chief):
    twice = WORKER + [(protocol.SESSION, "session-9")]
    assert code_of(lambda: oracle_call(chief.address, "CreateTrial", {"tuner_id": "worker-1"}, metadata=twice)) \
        == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_whose_journal_write_fails_changes_nothing_and_a_retry_completes_it_once(tmp_path):
    """The journal is the truth: after a failed write the oracle is what the journal says, so the
    error reply means nothing happened, before and after a restart."""
    from kt_cluster.chief.oracle import cluster_oracle_class
    from kt_cluster.chief.state import JournalWriteError

    def make(restore=False):
        hp = keras_tuner.HyperParameters()
        hp.Int("units", 1, 1000)
        oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
            objective=keras_tuner.Objective("val_f1", "max"), max_trials=10, hyperparameters=hp, seed=1)
        oracle._set_project_dir(str(tmp_path), "search")
        oracle.setup_cluster(tmp_path / "state", 60.0, 600.0, False)
        if restore:
            assert oracle.restore()
        else:
            oracle.save()  # as `ktc chief` does for a new search
        return oracle

    oracle = make()
    trial = oracle.create_trial("w0", session="s0")
    oracle.update_trial(trial.trial_id, {"val_f1": 0.5}, step=0, tuner_id="w0", session="s0")
    journal = oracle.journal
    real_fd = journal._open()
    size = os.fstat(real_fd).st_size
    read_only = os.open(os.devnull, os.O_RDONLY)  # every write to it fails, as on a full disk
    journal._fd = read_only
    ending = trial_module.Trial(trial.hyperparameters, trial_id=trial.trial_id, status=Status.COMPLETED)
    with pytest.raises(JournalWriteError):
        oracle.end_trial(ending, tuner_id="w0", session="s0")
    journal._fd = real_fd
    os.close(read_only)
    assert os.fstat(real_fd).st_size == size
    assert oracle.trials[trial.trial_id].status == Status.RUNNING
    assert oracle.ongoing_trials["w0"].trial_id == trial.trial_id
    assert oracle.heartbeat("w0", "s0", trial.trial_id, 0)["held"]  # its holder keeps its lease
    oracle.journal.close()
    assert make(restore=True).trials[trial.trial_id].status == Status.RUNNING  # nor after a restart

    again = make(restore=True)
    retry = trial_module.Trial(again.trials[trial.trial_id].hyperparameters, trial_id=trial.trial_id,
                               status=Status.COMPLETED)
    assert again.end_trial(retry, tuner_id="w0", session="s0")
    assert not again.end_trial(retry, tuner_id="w0", session="s0")
    again.journal.close()
    final = make(restore=True)
    assert final.trials[trial.trial_id].status == Status.COMPLETED and final.end_order == [trial.trial_id]


def test_while_writes_fail_a_call_is_refused_by_one_probe_without_a_reload(tmp_path, monkeypatch):
    """On a full disk every worker's retry would otherwise cost a reload of the whole state."""
    from kt_cluster.chief.oracle import cluster_oracle_class
    from kt_cluster.chief.state import JournalWriteError

    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=10, hyperparameters=hp, seed=1)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.setup_cluster(tmp_path / "state", 60.0, 600.0, False)
    oracle.save()
    journal = oracle.journal
    real_fd = journal._open()
    read_only = os.open(os.devnull, os.O_RDONLY)
    journal._fd = read_only
    with pytest.raises(JournalWriteError):
        oracle.create_trial("w0", session="s0")  # fails, and is undone by a reload
    reloads = []
    monkeypatch.setattr(type(oracle), "reload", lambda self: reloads.append(1))
    for _ in range(3):
        with pytest.raises(JournalWriteError):
            oracle.create_trial("w1", session="s1")
    assert reloads == [] and not oracle.trials and oracle.status()["trials"] == {}
    journal._fd = real_fd  # room again
    os.close(read_only)
    assert oracle.create_trial("w1", session="s1").status == Status.RUNNING
    assert not journal.failing


def test_a_config_that_allows_new_hyperparameters_takes_them_from_kt_cluster_workers_only(tmp_path):
    """The chief's gRPC server in this process, over an oracle whose config allows new entries."""
    from kt_cluster.chief.exporter import ChiefMetrics
    from kt_cluster.chief.oracle import cluster_oracle_class
    from kt_cluster.chief.service import ChiefServer

    def make(restore=False):
        hp = keras_tuner.HyperParameters()
        hp.Int("units", 1, 1000)
        oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
            objective=keras_tuner.Objective("val_f1", "max"), max_trials=10, hyperparameters=hp, seed=1)
        oracle._set_project_dir(str(tmp_path), "search")
        oracle.setup_cluster(tmp_path / "state", 60.0, 600.0, False)
        if restore:
            assert oracle.restore()
        else:
            oracle.save()
        return oracle

    oracle = make()
    server = ChiefServer(oracle, ChiefMetrics(), "127.0.0.1:0", None, search_info={}, allow_new_hyperparameters=True)
    try:
        address = f"127.0.0.1:{server.port}"
        grown = keras_tuner.HyperParameters()
        grown.Float("learning_rate", 1e-4, 1e-2, sampling="log")
        request = {"hyperparameters": grown.to_proto()}
        with grpc.insecure_channel(address) as channel:
            stub = compat.oracle_stub_class()(channel)
            update = compat.oracle_messages().UpdateSpaceRequest(**request)
            with pytest.raises(grpc.RpcError) as stock:
                stub.UpdateSpace(update, timeout=10)  # no session: a stock client, or anyone
            assert stock.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            stub.UpdateSpace(update, metadata=WORKER, timeout=10)
    finally:
        server.stop(grace=0)
    oracle.journal.close()
    assert [hp.name for hp in make(restore=True).hyperparameters.space] == ["units", "learning_rate"]
