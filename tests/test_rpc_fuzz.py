"""A seeded fuzz of every RPC the chief serves, against a real chief process: random bytes,
mutated valid requests and hostile JSON. Every call gets a status that names the caller's mistake
(never UNKNOWN or INTERNAL), and afterwards the chief still serves, its search space is unchanged,
`/metrics` answers and a normal trial completes."""

import collections
import json
import random
import time
import uuid

import grpc
import pytest

from harness import TOKEN
from kt_cluster.core import compat, protocol

pytestmark = pytest.mark.timeout(400)

BODIES_PER_METHOD = 250
SECONDS_PER_METHOD = 20  # bounded in time on a loaded machine; the count reached is asserted
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    from harness import running_chief

    with running_chief(tmp_path_factory.mktemp("fuzz"), {
        "max_trials": 100_000, "space": {"start_neurons": {"min": 8, "max": 100_000, "step": 1}}}) as c:
        yield c


class Raw:
    """Calls with raw request bytes, as a hostile client sends them."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(address)
        self.session, self.tuner_id = uuid.uuid4().hex, "fuzz-worker"

    def call(self, service, method, body: bytes, metadata=()):
        call = self.channel.unary_unary(protocol.method_path(service, method))
        auth = [(protocol.AUTHORIZATION, f"Bearer {TOKEN}")]
        try:
            call(body, metadata=auth + list(metadata), timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            return err.code(), err.details()


def valid_requests(raw: Raw) -> dict[str, bytes]:
    """One valid serialized request per Oracle method, on a real trial of the fuzzer's own."""
    m = compat.oracle_messages()
    meta = [(protocol.SESSION, raw.session), (protocol.TUNER_ID, raw.tuner_id)]
    create = m.CreateTrialRequest(tuner_id=raw.tuner_id).SerializeToString()
    trial = m.CreateTrialResponse.FromString(
        raw.channel.unary_unary(protocol.method_path(protocol.ORACLE_SERVICE, "CreateTrial"))(
            create, metadata=[(protocol.AUTHORIZATION, f"Bearer {TOKEN}"), *meta], timeout=10)).trial
    space = m.GetSpaceResponse.FromString(raw.channel.unary_unary(
        protocol.method_path(protocol.ORACLE_SERVICE, "GetSpace"))(
            b"", metadata=[(protocol.AUTHORIZATION, f"Bearer {TOKEN}")], timeout=10)).hyperparameters
    ended = m.EndTrialRequest(trial=trial)
    ended.trial.status = compat.status_proto("COMPLETED")
    return {
        "GetSpace": m.GetSpaceRequest().SerializeToString(),
        "UpdateSpace": m.UpdateSpaceRequest(hyperparameters=space).SerializeToString(),
        "CreateTrial": create,
        "UpdateTrial": m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.5}, step=1).SerializeToString(),
        "EndTrial": ended.SerializeToString(),
        "GetTrial": m.GetTrialRequest(trial_id=trial.trial_id).SerializeToString(),
        "GetBestTrials": m.GetBestTrialsRequest(num_trials=3).SerializeToString(),
    }


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:
            del data[rng.randrange(len(data)):]
        elif kind == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and data:
            data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        else:
            data += rng.choice([b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x12\xff\xff\xff\x0f",
                                b"\x1a\x00", b"\x0a" * 200])
    return bytes(data)


def hostile_json(rng: random.Random) -> bytes:
    """Coordinator bodies: valid-looking JSON with hostile values, broken JSON, deep nesting."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 64))
    if kind == 1:
        depth = rng.choice([50, 1000, 100_000])
        return b"[" * depth + b"]" * depth
    values = [10 ** 400, -10 ** 400, 1e308, float("nan"), -1, 2 ** 63, "", "x" * 300, "\x00\x07", None, [], {},
              True, "../../x", "worker-0"]
    body = {key: rng.choice(values) for key in rng.sample(["tuner_id", "session", "trial_id", "epoch", "extra"],
                                                          rng.randint(0, 5))}
    text = json.dumps(body, default=str)
    if kind == 5:
        text = text.replace("NaN", "Infinity")
    return text.encode()


def test_every_method_survives_a_seeded_fuzz_and_the_search_is_unchanged(chief):
    raw = Raw(chief.address)
    m = compat.oracle_messages()
    space_before = raw.call(protocol.ORACLE_SERVICE, "GetSpace", b"")
    assert space_before[0] == grpc.StatusCode.OK
    get_space = raw.channel.unary_unary(protocol.method_path(protocol.ORACLE_SERVICE, "GetSpace"))
    auth = [(protocol.AUTHORIZATION, f"Bearer {TOKEN}")]
    before = m.GetSpaceResponse.FromString(get_space(b"", metadata=auth, timeout=10)).hyperparameters
    valid = valid_requests(raw)
    rng = random.Random(11)
    bad: list[tuple[str, str, str]] = []
    counts = {}
    for service, methods in ((protocol.ORACLE_SERVICE, sorted(valid)),
                             (protocol.COORDINATOR_SERVICE, protocol.COORDINATOR_METHODS)):
        for method in methods:
            deadline, sent = time.monotonic() + SECONDS_PER_METHOD, 0
            while sent < BODIES_PER_METHOD and time.monotonic() < deadline:
                if service == protocol.COORDINATOR_SERVICE:
                    body = hostile_json(rng)
                elif rng.random() < 0.3:
                    body = rng.randbytes(rng.randint(0, 300))
                else:
                    body = mutate(rng, valid[method])
                metadata = rng.choice([(), [(protocol.TUNER_ID, raw.tuner_id)], [(protocol.SESSION, raw.session)],
                                       [(protocol.SESSION, raw.session), (protocol.TUNER_ID, "someone-else")]])
                code, detail = raw.call(service, method, body, metadata)
                if code not in ALLOWED:
                    bad.append((method, code.name, detail[:160]))
                sent += 1
            counts[method] = sent
    by_kind = collections.Counter((method, code) for method, code, _ in bad)
    assert not bad, f"{len(bad)} calls answered outside {sorted(c.name for c in ALLOWED)}: {dict(by_kind)}; e.g. {bad[:3]}"
    assert all(n >= 100 for n in counts.values()), counts

    after = m.GetSpaceResponse.FromString(get_space(b"", metadata=auth, timeout=10)).hyperparameters
    assert after == before, "the fuzz changed the search space"
    assert chief.procs["chief"].poll() is None
    assert "ktc_chief_trials" in chief.scrape(chief.chief_metrics_port)
    status = chief.status()
    assert status is not None and status["failure"] is None

    # A normal trial still completes, start to end, and is the chief's best.
    stub = compat.oracle_stub_class()(raw.channel)
    meta = auth + [(protocol.SESSION, "normal-session"), (protocol.TUNER_ID, "normal-worker")]
    trial = stub.CreateTrial(m.CreateTrialRequest(tuner_id="normal-worker"), metadata=meta, timeout=10).trial
    assert trial.status == compat.status_proto("RUNNING")
    stub.UpdateTrial(m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.99}, step=0),
                     metadata=meta, timeout=10)
    trial.status = compat.status_proto("COMPLETED")
    stub.EndTrial(m.EndTrialRequest(trial=trial), metadata=meta, timeout=10)
    ended = stub.GetTrial(m.GetTrialRequest(trial_id=trial.trial_id), metadata=auth, timeout=10).trial
    assert ended.status == compat.status_proto("COMPLETED") and ended.score.value == pytest.approx(0.99)
    best = stub.GetBestTrials(m.GetBestTrialsRequest(num_trials=1), metadata=auth, timeout=10).trials
    assert best[0].trial_id == trial.trial_id
