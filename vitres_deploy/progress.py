"""The one progress display of long jobs (profiling, validation, checks, training, search): a rich bar on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, label: str = "{task.description:<8}", *, after: str | None = None,
                 transient: bool = False) -> Progress:
    """A progress display on stderr: ``label``, bar, done/total, elapsed and remaining time, then ``after``.

    ``label`` and ``after`` are rich format strings over the task (``{task.fields[loss]:.3f}``); a disabled
    display (``enabled`` false, e.g. for ``--json`` or a rank other than 0) prints nothing. Use it as a
    context manager.
    """
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if after:
        columns.append(TextColumn(after))
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=transient)
