"""Files written whole or not at all: a reader (or a restarted process) never sees a torn file.

Every file kt-cluster replaces in place goes through here: the chief's snapshot and trial files and
its results, the workers' resume checkpoints. The new content goes to a temporary file next to
the target (same folder, so the same file system), which then replaces the target with one
rename (`os.replace`, atomic on POSIX). `fsync` makes the content survive a power loss too;
without it, it survives a kill of the process, which is what most callers need.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def temporary_name(path: str) -> str:
    """A hidden name next to `path`, unique to this process, that keeps the file's suffixes
    (`.weights.h5`, `.keras`): writers such as Keras choose the format from them."""
    folder, name = os.path.split(path)
    stem, dot, suffixes = name.partition(".")
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}{dot}{suffixes}")


def atomic_write(path: str | os.PathLike, data: str | bytes, fsync: bool = True, new_folder: bool = False) -> None:
    """Write `data` as the whole content of `path`, creating missing folders; on failure neither
    `path` nor a temporary file changes or stays.

    `new_folder` says the file's folder is most likely missing (a trial's): making it first saves
    the failed open. Plain `os` calls on string paths: the chief writes a `trial.json` per trial
    on its serving thread, where pathlib and buffered file objects cost more than the system calls."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    tmp = temporary_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if new_folder:
        try:
            os.mkdir(folder)
        except (FileExistsError, FileNotFoundError):  # a parent missing too: made below
            pass
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:  # creating the folder only when missing saves a system call per write
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(data.encode() if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave no half-written temporary file behind
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = False) -> Iterator[str]:
    """For writers that want a path (Keras' `save`, `save_weights`): yields a temporary path to
    write, which replaces `path` when the block succeeds and is removed when it raises."""
    path = os.fspath(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
