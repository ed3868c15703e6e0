"""Options every command that trusts a latency table takes: the drift check, rescaling, another device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def trust_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--no-drift-check``, ``--rescale`` and ``--allow-other-device``; ``what`` says what the check precedes."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([
            click.option("--no-drift-check", "no_drift_check", is_flag=True,
                         help=f"Skip re-timing a handful of the table's entries and networks (about 10-30 s) before "
                              f"{what}."),
            click.option("--rescale", is_flag=True,
                         help="If the drift check finds the machine faster or slower than the table, scale the "
                              "table's predictions by the measured ratio (recorded in the outputs) instead of "
                              "stopping."),
            click.option("--allow-other-device", is_flag=True,
                         help="Use a table whose device fingerprint (CPU/GPU model, flags, clock, cores) differs "
                              "from this machine's."),
        ]):
            command = option(command)
        return command

    return decorate
