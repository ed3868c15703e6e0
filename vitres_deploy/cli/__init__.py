"""The ``vitres-deploy`` command line.

Commands live in small modules of this package; heavy dependencies (onnxruntime, tensorrt,
matplotlib) are imported inside commands so that ``--help`` works without them. User errors
(:class:`~vitres_deploy.errors.VitresError`) become one-line messages in :mod:`.boundary`, and only there.
"""

from __future__ import annotations

import click

from .. import __version__
from .boundary import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vitres-deploy")
def main() -> None:
    """Profile a device, search the most accurate ViT-ResNAS under a latency budget, export it."""


def _register() -> None:
    from . import demo, export, profile, search, spaces, train

    for module in (spaces, train, profile, search, export, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
