"""One training at a time in a run folder: an exclusive ``out/.lock`` file holding the owner's pid and host.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> with run_lock(out):
    ...     (out / LOCK_FILE).is_file()
    True
    >>> (out / LOCK_FILE).exists()
    False
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLockedError", "run_lock"]

LOCK_FILE = ".lock"


class RunLockedError(FileExistsError):
    """Another process is training into the same run folder (``out/.lock`` names it)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read_owner(path: Path) -> dict[str, object] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _take(path: Path, me: dict[str, object]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(me))
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire(out: Path) -> Path:
    """Create ``out/.lock`` exclusively (``O_CREAT | O_EXCL``); take over a stale one with a warning.

    A lock is stale when its host is this host and its pid is no longer alive.

    Raises:
        RunLockedError: a live process (or one on another host) holds the lock.
    """
    path = out / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        if _take(path, me):
            return path
        owner = _read_owner(path)
        if owner is None and not path.exists():
            continue  # released between our two looks
        pid, host = (owner or {}).get("pid"), (owner or {}).get("host")
        if isinstance(pid, int) and host == me["host"] and not _pid_alive(pid):
            warnings.warn(
                f"{path} was left by process {pid}, which is no longer running; taking the run folder over",
                stacklevel=3,
            )
            stale = path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, stale)  # atomic: of two processes taking over, one moves it
                if _read_owner(stale) == owner:
                    stale.unlink(missing_ok=True)
                else:  # another process took over first and we moved its fresh lock: put it back
                    os.replace(stale, path)
            continue
        who = f"process {pid} on {host}" if owner is not None else "an unknown process (unreadable lock file)"
        raise RunLockedError(
            f"{out} is in use: {who} is training into it ({path}). Wait for it to finish, stop it, or "
            "choose another out= folder (--out on the command line); if no training is running there, "
            f"delete {path}"
        )
    raise RunLockedError(
        f"could not lock {path}: other processes keep taking it; retry, or use another out folder"
    )


def release(path: Path) -> None:
    """Remove ``path`` if this process still owns it."""
    owner = _read_owner(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/.lock`` for the duration of the block (released on any exception, Ctrl-C included).

    Args:
        out: the run folder (created if needed).

    Raises:
        RunLockedError: another live process holds the lock.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = acquire(out)
    try:
        yield path
    finally:
        release(path)
