"""Shared output helpers: a readable table for people, JSON for programs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text


def print_json(data: Any) -> None:
    """Print ``data`` as indented strict JSON (no NaN or infinity) on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, allow_nan=False))


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table on stdout; numbers are right-aligned, cells are plain text (``[gpu]`` is not markup)."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(_fmt(v)) for v in row))
    Console(width=max(shutil.get_terminal_size().columns, 120)).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def human(n: float) -> str:
    """1234567 -> '1.23M' (for MACs and parameter counts)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
