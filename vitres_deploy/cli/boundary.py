"""The one error boundary of the command line: library errors become ``error: <one line>`` and an exit code.

:class:`Command` and :class:`Group` are the click classes of every command. A
:class:`~vitres_deploy.errors.VitresError` that names a ``field`` has the field's name replaced by the
command's flag for it (``parents`` -> ``--parents``), so library messages name fields and still read right
on the command line. Only this module prints errors.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from ..errors import VitresError, first_line


def flag_for(command: click.Command, field: str) -> str | None:
    """The longest option string of ``command``'s parameter named ``field`` (None if it has none)."""
    for param in command.params:
        if param.name == field and isinstance(param, click.Option):
            return max(param.opts, key=len)
    return None


def cli_message(error: VitresError, command: click.Command | None) -> str:
    """The one-line message of ``error``, with its field's name replaced by ``command``'s flag for it."""
    message = first_line(error)
    field = getattr(error, "field", None)
    flag = flag_for(command, field) if command is not None and field else None
    if flag is not None and field is not None:
        # the field as a word of its own: not part of a longer name, a path or a file name
        pattern = rf"(?<![\w/.-]){re.escape(field)}(?![\w/-]|\.\w)"
        message = re.sub(pattern, flag, message, count=1) if re.search(pattern, message) else f"{flag}: {message}"
    return message


def _fail(error: VitresError, command: click.Command | None) -> None:
    click.echo(f"error: {cli_message(error, command)}", err=True)
    sys.exit(error.exit_code)


class Command(click.Command):
    """A command whose :class:`VitresError` becomes one line naming its flags."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VitresError as e:
            _fail(e, self)


class Group(click.Group):
    """A group with the same boundary, for its own callback and for commands that are not :class:`Command`."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VitresError as e:
            _fail(e, self)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
