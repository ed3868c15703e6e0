"""Worker processes that die with the process that spawned them, however it dies.

A spawned worker (:mod:`multiprocessing`'s ``spawn``) outlives a parent killed with SIGKILL: nothing runs in
a killed process to stop it, and a worker still importing torch does not notice for many seconds. On Linux
the kernel sends a process a signal when its parent dies (``PR_SET_PDEATHSIG``). The parent exports its pid
in :data:`PARENT_ENV` while it spawns (:func:`spawning_workers`); the worker asks for the signal when
``vitres_deploy`` is imported, the first thing it imports of this package, before torch
(:func:`adopt_parent_death`). This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

#: The environment variable through which spawned workers learn their parent's pid.
PARENT_ENV = "VITRES_DEPLOY_PARENT_PID"


@contextlib.contextmanager
def spawning_workers() -> Iterator[None]:
    """Export this process's pid in :data:`PARENT_ENV` while the block spawns workers (a child inherits the
    environment of the moment it is spawned), and put the environment back after it."""
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before


def adopt_parent_death() -> None:
    """In a worker spawned inside :func:`spawning_workers`: die with the parent (:func:`die_with_parent`), and
    take :data:`PARENT_ENV` out of the environment (the worker's own children are not workers of it).
    Anywhere else (no variable, or not a spawned multiprocessing child) nothing happens."""
    parent = os.environ.pop(PARENT_ENV, None)
    # a spawned child's command line ends so; its sys.argv is already the parent's (multiprocessing copies it)
    if parent is not None and parent.isdigit() and sys.orig_argv[-1:] == ["--multiprocessing-fork"]:
        die_with_parent(int(parent))


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``); exit at once if
    the parent ``parent`` (pid) is already gone. Elsewhere a no-op: the pool's own shutdown is all there is."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util
    import signal

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
