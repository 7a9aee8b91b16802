"""One writer at a time: a file lock (the `filelock` library) held for a whole run, with its holder named.

An embedding store and a neighbour table each have one lock file. The lock is an OS lock on an open file, so
the kernel releases it when its process dies: a lock left by a killed run is simply taken over. Beside the
lock, a small side file records the holder's process id, host and start time, so that a second run can say
who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cbmir.errors import CbmirError


class LockedError(CbmirError, RuntimeError):
    """Another process is writing the same store or table."""


def owner_path(lock_path: Path) -> Path:
    """The side file naming the holder of `lock_path`."""
    return lock_path.with_name(lock_path.name + ".owner")


def describe_holder(lock_path: Path) -> str:
    """'process 123 on host h (since ...)', from the side file; a note if it cannot be read."""
    try:
        owner = json.loads(owner_path(lock_path).read_text())
        return f"process {owner['pid']} on host {owner['host']} (since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its pid file could not be read)"


@contextlib.contextmanager
def writer_lock(
    lock_path: str | os.PathLike,
    what: str,
    wait: bool = False,
    error: type[LockedError] = LockedError,
) -> Iterator[None]:
    """Hold the lock at `lock_path` for the `with` block; `what` names the store or table in messages.

    Without `wait` a lock held by a live process raises `error` (a `LockedError`) naming that process; with
    `wait` the call blocks until the lock is free. A lock whose holder was killed is free (the OS released it).
    """
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    lock = FileLock(lock_path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise error(
            f"{what} is being written by {describe_holder(lock_path)}; wait for it to finish, "
            "or pass wait=True (--wait) to queue behind it"
        ) from None
    side = owner_path(lock_path)
    try:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "monotonic": time.monotonic(),
        }
        with contextlib.suppress(OSError):  # informational only: a full disk must not stop the run here
            side.write_text(json.dumps(owner) + "\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            side.unlink()
        lock.release()
