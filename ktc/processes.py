"""`ktc worker --processes N`: several worker processes in one pod (or machine), each its own worker.

What for: a small model leaves most of a large GPU idle, and one process spends part of each
trial on the CPU (building, tracing, checkpoints) while the GPU waits; N processes sharing a GPU
keep it busy with N trials. With `--gpus-per-trial 1` a multi-GPU pod runs its trials side by
side, each process on one GPU (`--processes` a multiple of `--gpus`), instead of each trial on all
of them.

Each child is an ordinary `ktc worker` (same flags, same config and token) with:

- tuner id `<KERASTUNER_TUNER_ID>.<i>` (worker-3 -> worker-3.0, worker-3.1, ...; the pod's id never
  contains "chief", so neither does a child's);
- metrics port `--metrics-port + i`;
- `--threads` cores / N unless given (processes would otherwise each start a thread per core);
- `--gpu-memory-mb` as given (TensorFlow's per-process cap; without it, memory growth), and
  `XLA_PYTHON_CLIENT_PREALLOCATE=false` for Keras on JAX, which would otherwise take 75 % of the
  GPU in each process;
- with `--gpus-per-trial 1`, `CUDA_VISIBLE_DEVICES` naming its one GPU (i mod --gpus).

The children's output is this process's output. SIGTERM or SIGINT is passed on to every child:
each hands its trial back, and this process exits 0 once they all have (it waits
`--grace-seconds` plus a little, then kills what is left). A child that exits 0 (the search is
over) stays down; this process exits 0 when every child has. A child that fails is started again
after a pause (1 s, doubling to a minute), as the kubelet restarts a container, without touching
the others; exit code 2 (bad config, flags or token: the same in every child) stops them all and
this process exits 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from kt_cluster.core.config import ConfigError
from kt_cluster.supervisor import Child, stop_all

log = logging.getLogger("ktc.worker")
SUPERVISOR_FLAGS = {"--processes", "--gpus", "--gpus-per-trial", "--metrics-port", "--threads"}
USAGE_ERROR = 2
RESTART_PAUSE = (1.0, 60.0)
STOP_MARGIN_SECONDS = 5.0


@dataclass
class Slot:
    """One child: what it is started with, and the process running now."""

    index: int
    tuner_id: str
    argv: list[str]
    env: dict[str, str]
    process: Child | None = None
    pause: float = RESTART_PAUSE[0]
    restart_at: float | None = None
    done: bool = False


def gpu_list(gpus: int, environ: Mapping[str, str]) -> list[str]:
    """The pod's GPUs as CUDA_VISIBLE_DEVICES names them: that variable's entries if set, else 0..gpus-1."""
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        if len(visible) < gpus:
            raise ConfigError(f"--gpus: {gpus} GPUs asked for but CUDA_VISIBLE_DEVICES lists {len(visible)}")
        return visible[:gpus]
    return [str(i) for i in range(gpus)]


def plan(argv: list[str], tuner_id: str, processes: int, metrics_port: int, threads: int | None,
         gpus: int, gpus_per_trial: str, environ: Mapping[str, str] | None = None) -> list[Slot]:
    """The children of this pod: argv (this process's `ktc` arguments, `argv`, with the per-child
    flags replaced) and environment (`environ`, default this process's, plus each child's own
    settings), checked before anything starts."""
    environ = os.environ if environ is None else environ
    if processes < 1:
        raise ConfigError(f"--processes: must be >= 1, got {processes}")
    if gpus_per_trial == "1":
        if gpus < 1:
            raise ConfigError("--gpus-per-trial 1: needs --gpus, the number of GPUs to spread the processes over")
        if processes % gpus:
            raise ConfigError(f"--processes: {processes} processes do not spread evenly over {gpus} GPUs "
                              f"(--gpus-per-trial 1); use a multiple of {gpus}")
    devices = gpu_list(gpus, environ) if gpus_per_trial == "1" else []
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    base = _without_supervisor_flags(argv)
    slots = []
    for i in range(processes):
        child_id = f"{tuner_id}.{i}"
        env = dict(environ, KERASTUNER_TUNER_ID=child_id, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
        child_argv = [sys.executable, "-m", "kt_cluster", *base,
                      "--metrics-port", str(metrics_port + i), "--threads", str(threads)]
        slots.append(Slot(i, child_id, child_argv, env))
    return slots


def supervise(slots: list[Slot], grace_seconds: float) -> int:
    """Run the children until they are all done (0), or until SIGTERM/SIGINT (0 once all have
    handed back), or until one exits with a usage error (2)."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for slot in slots:
        _start(slot)
    log.info("started %d worker processes: %s", len(slots), ", ".join(s.tuner_id for s in slots))
    code = 0
    while not stopping.is_set() and not all(s.done for s in slots):
        for slot in slots:
            if _check(slot) == USAGE_ERROR:
                stopping.set()
                code = USAGE_ERROR
        stopping.wait(0.2)
    stopped = _stop(slots, grace_seconds + STOP_MARGIN_SECONDS)
    return code or (0 if stopped == 0 else 1)


def _start(slot: Slot) -> None:
    slot.process = Child.start(slot.tuner_id, slot.argv, log=None, env=slot.env)
    slot.restart_at = None


def _check(slot: Slot) -> int | None:
    """Restart a failed child when its pause is over; the exit code it just ended with, if any."""
    if slot.done:
        return None
    if slot.process is None:
        if time.monotonic() >= slot.restart_at:
            log.info("restarting worker process %s", slot.tuner_id)
            _start(slot)
        return None
    code = slot.process.poll()
    if code is None:
        return None
    slot.process = None
    if code == 0:
        slot.done = True
    elif code != USAGE_ERROR:
        log.warning("worker process %s exited with %d; restarting it in %.0f s", slot.tuner_id, code, slot.pause)
        slot.restart_at = time.monotonic() + slot.pause
        slot.pause = min(slot.pause * 2, RESTART_PAUSE[1])
    return code


def _stop(slots: list[Slot], seconds: float) -> int:
    """SIGTERM every running child, wait up to `seconds`, SIGKILL what is left; 0 when every
    child exited 0."""
    running = [s.process for s in slots if s.process is not None and s.process.running()]
    stop_all(running, seconds)
    return next((c.returncode for c in running if c.returncode != 0), 0)


def _without_supervisor_flags(argv: list[str]) -> list[str]:
    """`argv` without the flags this process sets per child (`--flag value` and `--flag=value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in SUPERVISOR_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out
