"""Child processes that never outlive their parent: start, signal, stop, read their logs.

`ktc local` runs its chief and workers through `Child`, `ktc worker --processes` its worker
processes, and so do the tests that run real processes (tests/harness.py, tests/test_chart_e2e.py). Each child runs in its own session, so a
Ctrl-C in the terminal reaches only the parent, which decides the order of shutdown, and a
signal sent by `Child` reaches the child's own children too. Everything the child prints goes
to its log file; `tail` gives its last lines without TensorFlow's start-up noise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

STOP_GRACE_SECONDS = 30.0

# What TensorFlow, absl, XLA and CUDA print while they start (absl's `I0000 00:00:...` lines
# among them); none of it is the chief's or a worker's own log. Kept in the log file, left out
# of `tail`.
NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|.*(?:oneDNN custom operations are on|This TensorFlow binary is optimized|To enable the following "
    r"instructions:|rebuild TensorFlow with the appropriate compiler flags|Could not find cuda drivers|"
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|TF-TRT Warning|failed call to cuInit|"
    r"computation placer already registered|cuda_(?:dnn|fft|blas|platform)\.cc))")


def is_noise(line: str) -> bool:
    """A start-up line of TensorFlow or its libraries, not of our processes."""
    return bool(NOISE.match(line))


def python_module(module: str, *args: str) -> list[str]:
    """argv running `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


class Child:
    """One child process in its own session, its output in `log`."""

    def __init__(self, name: str, process: subprocess.Popen, log: Path | None):
        self.name, self.process, self.log = name, process, log

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log: Path | None, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None, append: bool = False) -> "Child":
        """Start `argv` with stdout and stderr to `log` (appended to with `append`: a restart), or
        to this process's own output when `log` is None (a pod's worker processes: the pod's log)."""
        env = dict(env) if env is not None else None
        if log is None:
            return cls(name, subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                              start_new_session=True), None)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab" if append else "wb") as out:
            process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: int) -> None:
        """Send `sig` to the child's process group (the child and whatever it started)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:  # exited since the poll
                pass

    def kill(self) -> None:
        """SIGKILL the process group and reap the child."""
        self.signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int:
        """SIGTERM, then SIGKILL if it is still running after `grace` seconds; the exit code."""
        stop_all([self], grace)
        return self.process.returncode

    def tail(self, lines: int = 15, noise: bool = False) -> str:
        """The last `lines` lines of the log, without TensorFlow's start-up lines unless `noise`."""
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join([line for line in text if noise or not is_noise(line)][-lines:])


def wait_all(children: Iterable[Child], seconds: float) -> bool:
    """Wait up to `seconds` in all for every child to exit; True when they all have."""
    deadline = time.monotonic() + seconds
    for child in children:
        if child.wait(timeout=max(0.0, deadline - time.monotonic())) is None:
            return False
    return True


def stop_all(children: Sequence[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every child at once, wait up to `grace` seconds, SIGKILL what is left."""
    for child in children:
        child.signal(signal.SIGTERM)
    wait_all(children, grace)
    for child in children:
        if child.running():
            child.kill()
