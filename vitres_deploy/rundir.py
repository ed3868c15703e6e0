"""The rules of a run that can be resumed: a search's folder, a training run's folder, a latency table.

A run leaves marker files that say it is there (``search.json``, ``last.safetensors``). Three rules, the
same for every kind of run:

* starting without ``resume`` where a run already is, is refused: nothing is overwritten;
* resuming where no run is, is refused;
* resuming with settings other than the stored ones is refused, naming the first setting that differs;
* one process at a time writes an output (:func:`hold_output`): a second one is refused.

Errors name their field (``resume``, or the setting that differs), so the command line shows the flag.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import RunDirError, VitresError


def check_start(folder: Path, resume: bool, holds: str, markers: Sequence[str], *,
                error: type[VitresError] = RunDirError) -> None:
    """Refuse to start a run in ``folder`` over another, or to resume one that is not there.

    ``folder`` holds a run (``holds``, e.g. ``"a search"``) when any of ``markers`` (file names) is in it;
    it can be resumed when the first marker is. ``error`` is the error type (a :class:`RunDirError` unless
    the caller's family is a narrower one).
    """
    if not resume and any((folder / m).exists() for m in markers):
        raise error(f"{folder} already holds {holds}: pass resume to continue it, or choose another folder",
                    field="resume")
    if resume and not (folder / markers[0]).is_file():
        raise error(f"resume: nothing to resume in {folder} ({markers[0]} not found): start without it",
                    field="resume")


def first_difference(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (in key order; nested mappings by their own keys) whose values differ, or None.

    Returns ``(name, stored value, wanted value)``; a nested setting is named by its innermost key.
    """
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            inner = first_difference(old, new)
            if inner is not None:
                return inner
        elif old != new:
            return key, old, new
    return None


def check_same_settings(where: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any], *, made: str = "made",
                        error: type[VitresError] = RunDirError) -> None:
    """Refuse to resume the run at ``where`` (``made`` with ``stored``) with other settings (``wanted``).

    The message names the first setting that differs, with both values; the error's field is that setting.
    """
    diff = first_difference(stored, wanted)
    if diff is not None:
        name, old, new = diff
        raise error(f"cannot resume {where}: it was {made} with {name}={old!r}, now {name}={new!r}: use the same "
                    "settings, or start afresh elsewhere", field=name)


def lock_path(target: Path) -> Path:
    """The lock file of output ``target`` (a folder or a file): ``.<name>.lock`` beside it."""
    return target.parent / f".{target.name}.lock"


def _lock(lock: Path) -> int | None:
    """Open and lock ``lock`` without waiting; the descriptor, or None when another process holds it.

    A lock file that was removed (or replaced) while we waited for it is opened again, so two processes
    never hold locks on two different files of one name.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold_output(target: str | Path, *, field: str = "out") -> Iterator[Path]:
    """Hold the lock of output ``target`` (a run folder, a table file, a bundle) while the block runs.

    The lock is a ``flock`` on :func:`lock_path` (released by the system when the process dies, however it
    dies; the file is removed on a normal exit). A second process is refused with a :class:`RunDirError`
    naming the holder's pid; ``field`` names the setting of ``target``. ``target``'s parent is created.
    """
    target = Path(target)
    lock = lock_path(target)
    blocked = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise RunDirError(f"{field} {target} cannot be written: {blocked} is a file, not a folder", field=field)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(lock)
    except OSError as e:
        raise RunDirError(f"{field} {target} cannot be written: {e.strerror or e}", field=field) from None
    if fd is None:
        try:
            holder = f" (pid {int(lock.read_text())})"
        except (OSError, ValueError):
            holder = ""
        raise RunDirError(f"{field} {target} is in use by another vitres-deploy process{holder}: wait for it to "
                          "end, or choose another folder", field=field)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield target
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
