"""The serving bundle on disk: staged in a temporary directory and renamed into place, hashed, read back.

Layout::

    BUNDLE/
      model.onnx                 the network (fp32, or strongly typed fp16 with fp32 inputs/outputs)
      model.plan                 TensorRT engine, when built (tied to its GPU and TensorRT version)
      arch.json                  the architecture file
      reference.npz              the seeded check batch: inputs, labels, PyTorch fp32 logits
      manifest.json              sha256 of every other file, versions, device, I/O, checks, latency
      triton/<name>/config.pbtxt, triton/<name>/1/model.onnx
      triton/<name>_trt/config.pbtxt, triton/<name>_trt/1/model.plan   (with an engine)

A bundle is built in ``.BUNDLE.tmp-*`` beside the target and renamed over it only when everything passed,
so a failed or interrupted export leaves nothing at the target.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import BundleError, SettingsError
from ..files import JSONError, atomic_write_json, current_umask, loads_json, sha256_file
from ..rundir import hold_output
from .manifest import BundleCorrupt, Manifest

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
ARCH = "arch.json"


def file_hashes(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root`` except the manifest."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p != root / MANIFEST}


class Stage:
    """A bundle being built in a temporary directory beside its target (see :func:`staging`)."""

    def __init__(self, target: Path, path: Path) -> None:
        self.target = target
        self.path = path
        self.committed = False

    def commit(self) -> Path:
        """Rename the staged bundle to its target, replacing an existing one only after the new one is complete."""
        os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp made it private
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.replace(self.target, old / "bundle")
        os.replace(self.path, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target


@contextlib.contextmanager
def staging(target: str | Path, *, force: bool = False) -> Iterator[Stage]:
    """A fresh directory beside ``target`` to build a bundle in; whatever is not committed is removed on exit.

    An existing ``target`` is an error unless ``force`` (then :meth:`Stage.commit` replaces it); the target's
    lock is held meanwhile (a second process is refused).
    """
    target = Path(target)
    with hold_output(target):  # one process writes the bundle
        check_target(target, force)
        remove_stale(target)
        stage = Stage(target, Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)))
        try:
            yield stage
        finally:
            if not stage.committed:
                shutil.rmtree(stage.path, ignore_errors=True)


#: Folders an export makes beside its target (``.<name>.<kind>-*``): the staging bundle, the replaced one, the
#: build's scratch files. A killed export leaves them; the next export to that target removes them.
SCRATCH_KINDS = ("tmp", "old", "work")


def remove_stale(target: Path) -> list[Path]:
    """Remove what a killed export to ``target`` left beside it; call with the target's lock held (then no
    other process is using them). Returns what was removed."""
    stale = [p for kind in SCRATCH_KINDS for p in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*")]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def check_target(target: Path, force: bool) -> None:
    """Raise :class:`SettingsError` when ``target`` cannot become a bundle (a file, or a non-empty directory
    without ``force``); the error's field is ``out`` or ``force``."""
    if target.exists() and not target.is_dir():
        raise SettingsError(f"out {target} is an existing file: choose a directory path for the bundle", field="out")
    if target.exists() and not force and any(target.iterdir()):
        raise SettingsError(f"{target} already exists: pass force to replace it or choose another path",
                            field="force")


def write_reference(path: Path, inputs: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> None:
    """Store the seeded check batch and PyTorch fp32's outputs on it."""
    with open(path, "wb") as f:
        np.savez_compressed(f, inputs=inputs.astype(np.float32), labels=labels.astype(np.int64),
                            logits=logits.astype(np.float32))


def read_reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels and reference logits of a bundle's check batch (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["inputs"], z["labels"], z["logits"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BundleCorrupt(f"{path.name} is unreadable ({type(e).__name__}): the bundle is corrupt; "
                            "re-export") from None


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as the bundle's ``manifest.json``."""
    atomic_write_json(root / MANIFEST, manifest.to_dict())


def read_manifest(bundle: str | Path) -> Manifest:
    """The manifest of the bundle directory ``bundle``; a missing or unreadable one is a one-line error."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory: pass the directory an export wrote", field="bundle")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleCorrupt(f"{root} has no {MANIFEST}: not a vitres-deploy bundle, or an incomplete copy")
    try:
        data = loads_json(path.read_text())
    except (JSONError, UnicodeDecodeError) as e:
        raise BundleCorrupt(f"{path} is not valid JSON ({e}): the bundle is corrupt; re-export it") from None
    return Manifest.from_dict(data, str(path))


def check_listing(bundle: str | Path, files: Mapping[str, str], required: Iterable[str]) -> None:
    """Raise :class:`BundleCorrupt` when a file of the bundle (other than the manifest) is not in ``files``,
    or one of ``required`` (the model files) has no hash there."""
    root = Path(bundle)
    unhashed = sorted(set(required) - set(files))
    if unhashed:
        raise BundleCorrupt(f"{MANIFEST} has no sha256 for {', '.join(unhashed)}: nothing vouches for the model "
                            "files; re-export the bundle")
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
    unlisted = [rel for rel in on_disk if rel != MANIFEST and rel not in files]
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise BundleCorrupt(f"{unlisted[0]}{more} is in the bundle but not in {MANIFEST}: a file was added, or "
                            "removed from the manifest; re-export the bundle")


def verify_hashes(bundle: str | Path, files: Mapping[str, str]) -> dict[str, str]:
    """Check every file of ``files`` (a manifest's ``{relative path: sha256}``) against its sha256; raise
    :class:`BundleCorrupt` on the first mismatch."""
    root = Path(bundle).resolve()
    for rel, expected in files.items():
        path = (root / rel).resolve()
        if root not in path.parents:
            raise BundleCorrupt(f"manifest lists {rel!r}, a path outside the bundle: the manifest is corrupt")
        if not path.is_file():
            raise BundleCorrupt(f"{rel} is missing from the bundle (listed in {MANIFEST}): re-export or restore it")
        found = sha256_file(path)
        if found != expected:
            raise BundleCorrupt(f"{rel}: sha256 {found[:16]}… does not match the manifest's {str(expected)[:16]}…: "
                                "the file was modified or corrupted; re-export the bundle")
    return dict(files)
