"""`ktc local` as a subprocess for tests: started in its own session, found through the
endpoints file it writes (never by parsing its output), always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from kt_cluster import endpoints
from kt_cluster.core.protocol import status as chief_status


class LocalRun:
    """A running `ktc local`: its output so far and, once written, its endpoints file."""

    def __init__(self, proc: subprocess.Popen, search_dir: Path):
        self.proc, self.search_dir = proc, search_dir
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def endpoints(self, timeout: float = 120.0) -> dict[str, Any]:
        """This run's endpoints file, once written (an older run's file is ignored)."""
        path = endpoints.run_dir(self.search_dir) / endpoints.FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                found = endpoints.read(path)
                if found["launcher_pid"] == self.proc.pid:
                    return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"ktc local wrote no endpoints file (exit {self.proc.poll()}):\n{self.output[-3000:]}")

    def status(self) -> dict[str, Any] | None:
        where = self.endpoints()
        try:
            return chief_status(where["chief"], Path(where["token_file"]).read_text(), timeout=2.0)
        except Exception:  # noqa: BLE001 - starting, busy or gone
            return None

    def wait_for(self, predicate, timeout: float = 180.0, what: str = "condition") -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = self.status()
            if last is not None and predicate(last):
                return last
            assert self.proc.poll() is None, f"ktc local exited with {self.proc.returncode}:\n{self.output[-3000:]}"
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.output[-3000:]}")

    def finish(self, timeout: float) -> int:
        """Wait for the exit; the whole output is in `output` afterwards."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ktc local still running after {timeout}s:\n{self.output[-3000:]}") from None
        self._reader.join(timeout=10)
        return code


@contextlib.contextmanager
def local_run(args: list[str], search_dir: Path, env: dict[str, str] | None = None) -> Iterator[LocalRun]:
    """`ktc local ARGS` (output captured); killed with its process group if still running at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "kt_cluster", "local", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))
    run = LocalRun(proc, search_dir)
    try:
        yield run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in processes_mentioning(str(search_dir)):  # children left behind: a failure, cleaned up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found
