"""Typed user-facing errors.

Every error a user can cause (bad file, bad flag, missing backend, failed check) is a subclass of
:class:`VitresError`. The CLI turns them into one-line messages with a non-zero exit code in one
place (``vitres_deploy.cli``); library code never uses ``assert`` for user input.
"""

from __future__ import annotations


class VitresError(Exception):
    """Base class of errors caused by user input or by the environment, shown as one line."""

    exit_code = 2


class SpaceError(VitresError):
    """A search space is unknown or malformed."""


class ArchError(VitresError):
    """An architecture is malformed or outside its search space."""


class CheckpointError(VitresError):
    """A checkpoint is missing, corrupt or belongs to another search space."""


class DataError(VitresError):
    """A data set is missing or malformed."""


class BackendUnavailable(VitresError):
    """A runtime backend or precision cannot be used on this machine."""


class ProfileError(VitresError):
    """A latency table is missing, malformed, or does not cover what is asked of it."""


class BudgetError(VitresError):
    """A latency budget cannot be met by any architecture of the space."""


class CheckFailed(VitresError):
    """An accuracy or latency check failed; the message says which artifact, which check, by how much."""

    exit_code = 1
