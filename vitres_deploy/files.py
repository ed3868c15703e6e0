"""Atomic file writes, durable log appends and file hashing, in one place.

Every file vitres-deploy keeps (checkpoints, latency tables, search results, cached ONNX files and
engines, plots) is written through :func:`atomic_write`: to a temporary file in the target's directory
(same file system, so the rename is atomic), given the permissions of a normally created file, then
renamed over the target with ``os.replace``. Readers see the old file or the new one, never a partial
one, and a failed write leaves no temporary file behind; its ``OSError`` (a full disk, a read-only file
system) names the target, not the temporary file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object], *, suffix: str = ".tmp",
                 fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path``; returns ``path``.

    ``suffix`` ends the temporary file's name (for writers that pick the format from the extension, e.g.
    ``".tmp.png"``); with ``fsync`` the data is flushed to disk before the rename.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make shipped files private
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` (a full disk, a read-only file system) as an error of ``path``, not of its temporary file: the
    same type, errno and reason, with ``path`` as its file name."""
    return type(error)(error.errno, error.strerror or str(error), str(path))


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), fsync=fsync)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, data: Any, *, indent: int = 2, fsync: bool = False) -> Path:
    """Write ``data`` as indented strict JSON (no NaN or infinity) with a final newline to ``path`` atomically.

    Data that strict JSON cannot hold raises ``ValueError`` before anything is written.
    """
    return atomic_write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n", fsync=fsync)


def append_json_line(path: str | Path, data: Any) -> None:
    """Append ``data`` as one compact JSON line to ``path`` and flush it to disk (logs that jobs resume from).

    An interruption can tear at most the line being written; readers drop a torn last line. The line is
    strict JSON: NaN or infinity raises ``ValueError`` before anything is written.
    """
    line = json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class JSONError(ValueError):
    """Text that is not JSON this program can read (see :func:`loads_json`); the message says why."""


def loads_json(text: str | bytes) -> Any:
    """Parse JSON text; whatever makes it unreadable is a :class:`JSONError` with a one-line message.

    Besides malformed JSON: an integer of more digits than Python converts (``ValueError``) and nesting
    deeper than the parser's recursion (``RecursionError``), which ``json.loads`` raises as other types.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONError(str(e)) from None
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits; bad bytes
        raise JSONError(str(e).strip().splitlines()[0]) from None


@contextlib.contextmanager
def scratch_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A temporary folder ``.<prefix>-<pid>-*`` in ``parent``, removed after the block.

    Not in the system temp folder: a process killed in the block (SIGKILL runs no cleanup) leaves it beside
    the outputs it was for, and the next :func:`scratch_folder` of ``prefix`` there removes it: folders of
    ``prefix`` whose process is no longer running are removed first (a running one's are left to it).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{glob.escape(prefix)}-*"):
        pid = stale.name[len(prefix) + 2:].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's, which this one may not signal, included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
