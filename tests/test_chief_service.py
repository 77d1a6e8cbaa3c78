"""The chief's gRPC surface with a real chief process: auth, bad requests, stock workers."""

import subprocess
import sys
import textwrap

import grpc
import pytest

from harness import TOKEN
from kt_cluster.core import compat, protocol

pytestmark = pytest.mark.timeout(300)


def oracle_call(address, method, request, token=TOKEN, metadata=()):
    messages = compat.oracle_messages()
    with grpc.insecure_channel(address) as channel:
        stub = compat.oracle_stub_class()(channel)
        auth = [(protocol.AUTHORIZATION, f"Bearer {token}")] if token else []
        return getattr(stub, method)(getattr(messages, f"{method}Request")(**request),
                                     metadata=auth + list(metadata), timeout=10, wait_for_ready=True)


def coordinator_call(address, method, raw: bytes, token=TOKEN):
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(protocol.method_path(protocol.COORDINATOR_SERVICE, method))
        return call(raw, metadata=[(protocol.AUTHORIZATION, f"Bearer {token}")], timeout=10, wait_for_ready=True)


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    from harness import running_chief

    with running_chief(tmp_path_factory.mktemp("service"), {"max_trials": 2}) as c:
        yield c


def code_of(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
def test_calls_without_the_right_token_are_unauthenticated(chief, token):
    assert code_of(lambda: oracle_call(chief.address, "CreateTrial", {"tuner_id": "w"}, token=token)) \
        == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: oracle_call(chief.address, "GetSpace", {}, token=token)) == grpc.StatusCode.UNAUTHENTICATED


def health_check(address, service="", token=None):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    auth = [(protocol.AUTHORIZATION, f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          metadata=auth, timeout=10, wait_for_ready=True)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_health_check_answers_without_the_token_and_nothing_else_does(chief):
    """Kubernetes' gRPC probe sends no token: Check must answer it; every other call still needs one."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for service in ("", protocol.ORACLE_SERVICE, protocol.COORDINATOR_SERVICE):
        assert health_check(chief.address, service) == "SERVING", service
    assert health_check(chief.address, token="wrong-token-0123456789") == "SERVING"  # a token is ignored
    assert code_of(lambda: health_check(chief.address, "no.such.Service")) == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(chief.address) as channel:  # the stream stays behind the token
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert code_of(lambda: next(watch)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: oracle_call(chief.address, "GetSpace", {}, token=None)) == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(chief.address) as channel:
        status = channel.unary_unary(protocol.method_path(protocol.COORDINATOR_SERVICE, "Status"))
        assert code_of(lambda: status(b"{}", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_not_serving_until_the_server_says_so_and_after_it_stops():
    """ChiefHealth starts NOT_SERVING (grpc's servicer would say SERVING) until `serving()`, which
    ChiefServer calls once its server has started; `stopping()` is final."""
    import asyncio

    from kt_cluster.chief.health import ChiefHealth

    async def scenario():
        server, health = grpc.aio.server(), ChiefHealth()
        await health.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        address = f"127.0.0.1:{port}"
        try:
            seen = [await asyncio.to_thread(health_check, address)]
            await health.serving()
            seen.append(await asyncio.to_thread(health_check, address, protocol.ORACLE_SERVICE))
            await health.stopping()
            await health.serving()  # too late: stopping is final
            seen.append(await asyncio.to_thread(health_check, address))
        finally:
            await server.stop(0)
        return seen

    assert asyncio.run(scenario()) == ["NOT_SERVING", "SERVING", "NOT_SERVING"]


def test_bad_requests_get_status_codes_and_the_chief_keeps_serving(chief):
    a = chief.address
    assert code_of(lambda: oracle_call(a, "GetTrial", {"trial_id": "no-such-trial"})) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: oracle_call(a, "UpdateTrial", {"trial_id": "nope", "metrics": {"val_f1": 1.0}})) \
        == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: oracle_call(a, "CreateTrial", {"tuner_id": ""})) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: oracle_call(a, "GetBestTrials", {"num_trials": -1})) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: coordinator_call(a, "Heartbeat", b"{not json")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: coordinator_call(a, "Heartbeat", b'{"tuner_id": 3}')) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: coordinator_call(a, "Status", b"x" * (5 * 1024 * 1024))) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "probe"}).trial
    assert code_of(lambda: oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": {"loss": 1.0}})) \
        == grpc.StatusCode.INVALID_ARGUMENT  # the objective val_f1 is missing
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    space = HyperParameters.from_proto(oracle_call(a, "GetSpace", {}).hyperparameters)
    assert {"start_neurons", "activation"} <= {p.name for p in space.space}
    assert chief.procs["chief"].poll() is None


def test_hyperparameters_a_worker_adds_during_its_trial_are_kept(chief):
    from keras_tuner.src.engine import trial as trial_module
    from keras_tuner.src.engine.hyperparameters import HyperParameters

    a, tuner = chief.address, [(protocol.TUNER_ID, "hp-adder")]
    trial = oracle_call(a, "CreateTrial", {"tuner_id": "hp-adder"}).trial
    hps = HyperParameters.from_proto(trial.hyperparameters)
    hps.Int("added_in_build", 3, 9)  # as a hypermodel does when it meets a new hyperparameter
    oracle_call(a, "UpdateTrial", {"trial_id": trial.trial_id, "metrics": {"val_f1": 0.5}, "step": 0}, metadata=tuner)
    ended = trial_module.Trial(hps, trial_id=trial.trial_id, status=trial_module.TrialStatus.COMPLETED).to_proto()
    oracle_call(a, "EndTrial", {"trial": ended}, metadata=tuner)
    kept = HyperParameters.from_proto(oracle_call(a, "GetTrial", {"trial_id": trial.trial_id}).trial.hyperparameters)
    assert kept.values == hps.values and kept.values["added_in_build"] == 3


def test_chief_refuses_to_start_without_auth_or_insecure(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kt_cluster", "chief"], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "--auth-token-file" in result.stderr and "--insecure" in result.stderr


@pytest.mark.parametrize("tuner_id", ["chief-worker-1", "mychief"])
def test_worker_with_a_chief_like_id_is_refused(tmp_path, tuner_id):
    result = subprocess.run([sys.executable, "-m", "kt_cluster", "worker", "--insecure"], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                              "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1"})
    assert result.returncode == 2
    assert "KERASTUNER_TUNER_ID" in result.stderr and "chief" in result.stderr


STOCK_WORKER = textwrap.dedent("""
    import sys
    import keras_tuner
    from kt_cluster.core.config import load
    from kt_cluster.worker.data import pipeline
    from kt_cluster.core.hypermodel import build_hypermodel

    config = load(sys.argv[1], env={{}})
    train, val, steps, val_steps = pipeline.datasets(config)
    tuner = keras_tuner.RandomSearch(hypermodel=build_hypermodel(config), objective=keras_tuner.Objective("val_f1", "max"),
                                     max_trials=config.max_trials, directory=config.results, project_name=config.search_id)
    tuner.search(train, validation_data=val, epochs=config.epochs, steps_per_epoch=steps,
                 validation_steps=val_steps, verbose=0)
""")


def test_stock_keras_tuner_worker_completes_a_search_against_an_insecure_chief(cluster, tmp_path):
    import os

    c = cluster(auth=False, config={"max_trials": 2})
    c.start_chief()
    script = tmp_path / "stock_worker.py"
    script.write_text(STOCK_WORKER.format())
    env = dict(os.environ, KERASTUNER_TUNER_ID="stock-0", KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(c.port), TF_CPP_MIN_LOG_LEVEL="2")
    stock = subprocess.run([sys.executable, str(script), str(c.config_path)], env=env, capture_output=True,
                           text=True, timeout=240)
    assert stock.returncode == 0, stock.stdout[-2000:] + stock.stderr[-3000:]
    assert c.wait_exit("chief", timeout=60) == 0, c.tail("chief")
    trials = c.trial_files()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"COMPLETED"}


def test_status_command_shows_progress_and_json(chief):
    base = [sys.executable, "-m", "kt_cluster", "status", "--chief", chief.address, "--auth-token-file", str(chief.token_path)]
    text = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "trials" in text.stdout and "best:" in text.stdout
    as_json = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=120)
    import json
    assert json.loads(as_json.stdout)["max_trials"] == 2


def test_status_command_with_a_wrong_token_says_unauthenticated(chief, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-token-0123456789")
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "status", "--chief", chief.address, "--auth-token-file",
                          str(wrong)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr


def test_missing_token_file_names_the_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "status", "--auth-token-file", str(tmp_path / "no-token")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no-token" in out.stderr


def test_chief_with_a_bad_hypermodel_fails_before_serving_naming_it(tmp_path):
    from harness import make_dataset

    out = subprocess.run([sys.executable, "-m", "kt_cluster", "chief", "--insecure", "--hypermodel", "nope.mod:build",
                          "--data", str(make_dataset(tmp_path / "data")), "--image-size", "32",
                          "--results", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nope.mod:build" in out.stderr
