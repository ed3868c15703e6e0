"""Typed user-facing errors, one family per kind of failure.

Every error a user can cause (bad file, bad setting, missing backend, a library that fails on their model,
a failed check) is a subclass of :class:`VitresError`. Each third-party library is wrapped in the one
module that calls it, which raises one of these types. The CLI turns them into one-line messages with a
non-zero exit code in one place (``vitres_deploy.cli.boundary``); library code never uses ``assert`` for
user input.

Messages name *fields* (``parents``, ``max_macs``), not command-line flags: an error that concerns one
setting passes ``field=``, and the CLI puts the flag in place of the field's name, so the same message reads
right from Python and from the shell.
"""

from __future__ import annotations


class VitresError(Exception):
    """Base class of errors caused by user input or by the environment, shown as one line.

    ``field``: the setting the error is about (a dataclass field or function parameter name), if one.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SettingsError(VitresError):
    """A setting (option, configuration field) is out of range or contradicts another."""


class SpaceError(VitresError):
    """A search space is unknown or malformed."""


class ArchError(VitresError):
    """An architecture is malformed or outside its search space."""


class CheckpointError(VitresError):
    """A checkpoint is missing, corrupt or belongs to another search space."""


class DataError(VitresError):
    """A data set is missing or malformed."""


class TrainingDiverged(VitresError):
    """Training produced a loss that is not finite (NaN or infinity)."""


class RunDirError(VitresError):
    """An output folder cannot be used as asked: it holds another run, nothing to resume, or a corrupt record."""


class BackendUnavailable(VitresError):
    """A runtime backend or precision cannot be used on this machine."""


class RuntimeFailure(VitresError):
    """A runtime (ONNX Runtime, TensorRT, PyTorch) failed to load or run a model."""


class EngineBuildError(RuntimeFailure):
    """TensorRT could not parse a model or build an engine of it."""


class ConversionError(VitresError):
    """A model could not be converted: the PyTorch ONNX exporter, the ONNX checker, or the fp16 conversion failed."""


class Fp16ConversionError(ConversionError):
    """The fp16 conversion met a construct it does not handle (named in the message)."""


class ProfileError(VitresError):
    """A latency table is missing, malformed, or does not cover what is asked of it."""


class BudgetError(VitresError):
    """A latency budget cannot be met by any architecture of the space."""


class BundleError(VitresError):
    """A serving bundle is missing, malformed, or does not match its manifest."""


class CheckFailed(VitresError):
    """An accuracy or latency check failed; the message says which artifact, which check, by how much."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: what a one-line report shows."""
    for line in str(error).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
