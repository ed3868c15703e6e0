"""The ``vitres-deploy`` command line.

Commands live in small modules of this package; heavy dependencies (onnxruntime, tensorrt,
matplotlib) are imported inside commands so that ``--help`` works without them. User errors
(:class:`~vitres_deploy.errors.VitresError`) become one-line messages here, and only here.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..errors import VitresError


class _Group(click.Group):
    """Click group that turns :class:`VitresError` into ``error: <message>`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VitresError as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vitres-deploy")
def main() -> None:
    """Profile a device, search the most accurate ViT-ResNAS under a latency budget, export it."""


def _register() -> None:
    from . import demo, export, profile, search, spaces, train

    for module in (spaces, train, profile, search, export, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
