"""The one progress display of long jobs (profiling, validation, checks, training, search): a rich bar on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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


def advance_plan(bar: Progress, task: TaskID, *, another_step: bool) -> None:
    """Advance ``task`` by one step of a plan that can grow: by one more step when ``another_step`` is known to
    come beyond the plan, or to the steps done when unplanned ones came (a timing schedule's recheck)."""
    bar.advance(task)
    state = bar.tasks[task]
    if another_step:
        bar.update(task, total=(state.total or 0) + 1)
    elif state.total is not None and state.completed > state.total:
        bar.update(task, total=state.completed)
