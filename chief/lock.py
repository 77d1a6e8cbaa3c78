"""One chief per search: an exclusive lock on `<search folder>/chief.lock`.

The lock is a POSIX record lock (`fcntl.lockf`, i.e. `fcntl(F_SETLK)` on the whole file), the kind
NFS supports: NFSv4 has byte-range locks in the protocol, NFSv3 through the NLM side protocol
(`flock` on a Linux NFS client is emulated with the same locks). The chart's ReadWriteMany
volumes (EFS, Filestore, Azure Files over NFS) are such mounts. The kernel releases the lock when
the process exits, however it dies; on NFSv4 a client that cannot reach the server (a node cut off
from the network) loses its locks when its lease expires (90 s by default), after which a new chief
may take the search over; the old one then gets EIO on its writes, and its journal writes fail
(calls answer errors and change nothing). The file holds the holder's host, pid and pod name, so
that a refused chief can name it. Local mounts without lock support (some FUSE file systems)
refuse the lock with an error that says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "chief.lock"


class Locked(Exception):
    """Another chief holds this search."""


def holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pod": os.environ.get("POD_NAME") or os.environ.get("HOSTNAME"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class ChiefLock:
    """Held from `acquire()` until the process exits (or `release()`)."""

    def __init__(self, search_dir: Path):
        self.path = Path(search_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise Locked(f"{self.path}: another chief serves this search ({self.holder()}); "
                             "stop it first (one chief per search)") from None
            raise Locked(f"{self.path}: cannot lock it ({exc.strerror}): the results volume must support "
                         "POSIX (fcntl) locks, as NFSv3 with NLM and NFSv4 do") from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        except OSError:  # a full disk: the lock holds all the same; a refused chief names no holder
            pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"host {info.get('host')}, pid {info.get('pid')}, pod {info.get('pod')}, since {info.get('since')}"
        except (OSError, ValueError, AttributeError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
