#!/usr/bin/env python3
"""The chief's RPC handlers alone: CPU per trial with N workers holding trials, no gRPC.

Not part of the test run. From the repository root, in the project's virtualenv:

    python benchmarks/handler_bench.py                  # 512 workers, 6,000 trials
    python benchmarks/handler_bench.py --workers 16 --trials 3000

It builds the chief's oracle (random search, median early stopping on, journal and trial files in
a temporary folder) and its `OracleService`, calls the handlers directly on one event loop as the
chief's loop thread would, with each request's serialized bytes as gRPC hands them over
(CreateTrial, 5 x UpdateTrial, EndTrial per trial, the workers taking turns at random) after `gc.freeze()` as `ktc chief` does, and prints the wall time per call of each
RPC and the process CPU per trial. Without gRPC's own cost (see chief_bench.py for the whole
server), it shows what the oracle, the journal and the protos cost, and how that grows with the
number of workers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import keras_tuner  # noqa: E402
from keras_tuner.src import protos  # noqa: E402

import chief_bench  # noqa: E402
from kt_cluster.chief.exporter import ChiefMetrics  # noqa: E402
from kt_cluster.chief.oracle import cluster_oracle_class  # noqa: E402
from kt_cluster.chief.service import OracleService  # noqa: E402


class Context:
    """What a handler reads of a grpc.aio ServicerContext."""

    def __init__(self, tuner_id: str):
        self._metadata = (("x-ktc-session", f"s-{tuner_id}"), ("x-ktc-tuner-id", tuner_id))

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code, detail):
        raise RuntimeError(f"{code}: {detail}")


async def drive(service: OracleService, workers: int, trials: int, seed: int = 0) -> tuple[dict[str, float], float]:
    """Seconds spent in each RPC's handler, and CPU seconds, once every worker holds a trial."""
    messages, status = protos.get_service(), protos.get_proto().TrialStatus
    contexts = [Context(f"w{w}") for w in range(workers)]
    spent = {"CreateTrial": 0.0, "UpdateTrial": 0.0, "EndTrial": 0.0}

    async def call(name: str, request, context):
        # The handlers take the request's bytes, as gRPC hands them over (they parse them).
        body = request.SerializeToString()
        started = time.perf_counter()
        reply = await getattr(service, name)(body, context)
        spent[name] += time.perf_counter() - started
        return reply

    async def create(w: int):
        reply = await call("CreateTrial", messages.CreateTrialRequest(tuner_id=f"w{w}"), contexts[w])
        return [reply.trial, 0]

    held = [await create(w) for w in range(workers)]
    for name in spent:
        spent[name] = 0.0
    rng, ended, cpu = random.Random(seed), 0, time.process_time()
    while ended < trials:
        w = rng.randrange(workers)
        trial, epoch = held[w]
        if epoch < 5:
            request = messages.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"score": rng.random()}, step=epoch)
            await call("UpdateTrial", request, contexts[w])
            held[w][1] += 1
        else:
            trial.status = status.COMPLETED
            await call("EndTrial", messages.EndTrialRequest(trial=trial), contexts[w])
            held[w] = await create(w)
            ended += 1
    return spent, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=512)
    parser.add_argument("--trials", type=int, default=6000)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="handler-bench-"))
    space = keras_tuner.HyperParameters()
    chief_bench.build_space_no_model(space)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("score", "max"), max_trials=10**7, hyperparameters=space, seed=1)
    oracle._set_project_dir(str(folder), "search")
    metrics = ChiefMetrics()
    oracle.setup_cluster(folder / "state", 600.0, 21600.0, early_stopping=True, events=metrics)
    oracle.save()
    service = OracleService(oracle, metrics)
    gc.collect()
    gc.freeze()
    spent, cpu = asyncio.run(drive(service, args.workers, args.trials))
    per_call = {"CreateTrial": 1, "UpdateTrial": 5, "EndTrial": 1}
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.workers} workers, {args.trials} trials")
    for name, seconds in spent.items():
        print(f"  {name:<12} {1e6 * seconds / args.trials / per_call[name]:6.0f} us per call")
    print(f"  CPU per trial (all handlers): {1e3 * cpu / args.trials:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
