"""The holder check across a chief restart, with real processes: a restarted chief knows which
trials are running but not yet their holders' sessions; a caller that names no worker must not end
or update one of them in that window."""

import uuid

import grpc
import pytest

from harness import TOKEN
from kt_cluster.core import compat, protocol

pytestmark = pytest.mark.timeout(300)


def call(address, method, request, metadata):
    with grpc.insecure_channel(address) as channel:
        stub = compat.oracle_stub_class()(channel)
        return getattr(stub, method)(request, metadata=[(protocol.AUTHORIZATION, f"Bearer {TOKEN}"), *metadata],
                                     timeout=10, wait_for_ready=True)


def test_a_restarted_chief_lets_no_anonymous_caller_end_or_update_a_workers_trial(cluster):
    c = cluster(config={"max_trials": 5})
    c.start_chief()
    c.wait_for(lambda s: True, timeout=120, what="chief up")
    m = compat.oracle_messages()
    worker = [(protocol.SESSION, uuid.uuid4().hex), (protocol.TUNER_ID, "worker-0")]
    trial = call(c.address, "CreateTrial", m.CreateTrialRequest(tuner_id="worker-0"), worker).trial
    call(c.address, "UpdateTrial", m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.5}, step=0),
         worker)
    c.kill("chief")
    c.start_chief()
    c.wait_for(lambda s: True, timeout=120, what="chief back")

    ended = m.EndTrialRequest(trial=trial)
    ended.trial.status = compat.status_proto("COMPLETED")
    for method, request in (("UpdateTrial", m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.9},
                                                                 step=1)),
                            ("EndTrial", ended)):
        with pytest.raises(grpc.RpcError) as err:
            call(c.address, method, request, [])  # no tuner id, no session
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), method
    status = c.status()
    assert [r["trial_id"] for r in status["running"]] == [trial.trial_id] and status["completed"] == 0
    # Its holder, back with its session, carries on and ends it.
    call(c.address, "UpdateTrial", m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.6}, step=1),
         worker)
    call(c.address, "EndTrial", ended, worker)
    assert c.status()["completed"] == 1
