"""The one error boundary of the command line: library errors become ``error: <one line>`` and an exit code.

:class:`Command` and :class:`Group` are the click classes of every command. A
:class:`~vitres_deploy.errors.VitresError` that names a ``field`` has the field's name replaced by the
command's flag for it (``parents`` -> ``--parents``), so library messages name fields and still read right
on the command line. Only this module prints errors.
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from ..errors import VitresError, first_line
from ..runtime.cache import cache_root


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


def _fail(error: VitresError, command: click.Command | None) -> NoReturn:
    click.echo(f"error: {cli_message(error, command)}", err=True)
    sys.exit(error.exit_code)


def _usage_failed(error: click.ClickException) -> NoReturn:
    """A usage error (unknown option, missing or bad value) as one ``error:`` line, with where to look; a
    group called without a command shows its help, as click does."""
    ctx = getattr(error, "ctx", None)
    if isinstance(error, getattr(click.exceptions, "NoArgsIsHelpError", ())) and ctx is not None:
        click.echo(ctx.get_help(), err=True)
        sys.exit(error.exit_code)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    click.echo(f"error: {error.format_message()}{hint}", err=True)
    sys.exit(error.exit_code)


def _full_disk_fix(filename: str | None) -> str:
    """What to do about a full disk (or quota) that refused a write to ``filename``: how much is free there and
    where else to write (the export cache has its own variable)."""
    if not filename:
        return ": free disk space"
    path = Path(filename).absolute()
    folder = next((p for p in path.parents if p.is_dir()), Path(path.anchor))
    free = f" ({shutil.disk_usage(folder).free >> 20} MiB free there)"
    if cache_root().absolute() in path.parents:
        return f"{free}: free space there, or point VITRES_DEPLOY_CACHE at a larger disk (the export cache)"
    return f"{free}: free space there, or write to a larger disk"


def _system_failed(error: OSError) -> NoReturn:
    """An error of the file system (read-only, full, a file where a folder should be) as one line; a full disk
    says how much is free and where else to write."""
    where = f"{error.filename}: " if error.filename else ""
    fix = _full_disk_fix(error.filename) if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    click.echo(f"error: {where}{error.strerror or first_line(error)}{fix}", err=True)
    sys.exit(2)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Handle SIGTERM as SIGINT (a :class:`KeyboardInterrupt`): the same cleanup (temporary files, partial
    tables saved, worker pools shut down), then ``interrupted`` and exit 130. Only the main thread can."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


@contextlib.contextmanager
def one_line_errors(command: click.Command) -> Iterator[None]:
    """Turn what a user can cause into one ``error:`` line and its exit code: library errors (naming
    ``command``'s flags), usage errors, file system errors; an interrupt is ``interrupted`` and exit 130."""
    try:
        yield
    except VitresError as e:
        _fail(e, command)
    except click.ClickException as e:
        _usage_failed(e)
    except OSError as e:
        _system_failed(e)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


class Command(click.Command):
    """A command whose :class:`VitresError` becomes one line naming its flags, and whose usage and file system
    errors are one ``error:`` line too."""

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors(self):
            return super().invoke(ctx)


class Group(click.Group):
    """A group with the same boundary, for its own callback and for commands that are not :class:`Command`,
    and for the usage errors of parsing its arguments and its commands' (click's "Usage: ... Error:")."""

    command_class = Command

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as e:
            _usage_failed(e)

    def invoke(self, ctx: click.Context) -> Any:
        interrupt_on_sigterm()
        with one_line_errors(self):
            return super().invoke(ctx)
