"""Write docs/cli.md from the click help of every command, with one example each.

    python docs/make_cli_reference.py          # rewrite docs/cli.md
    python docs/make_cli_reference.py --check  # exit 1 if docs/cli.md is out of date (tests/test_docs.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vitres_deploy.cli import main

TABLE = "profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json"
EXAMPLES = {
    "spaces": "vitres-deploy spaces",
    "info": "vitres-deploy info --space fmnist --arch max --json",
    "train": "vitres-deploy train --space fmnist --out runs/fmnist --epochs 30 --archs-per-batch 4",
    "finetune": "vitres-deploy finetune --supernet fmnist-demo --arch runs/search/best-0.25.json --epochs 10 "
                "--out runs/finetune",
    "evaluate": "vitres-deploy evaluate --supernet fmnist-demo --arch min --split test --json",
    "backends": "vitres-deploy backends",
    "profile": "vitres-deploy profile --space fmnist --backend ort-cpu --batch 1 --threads 1",
    "profile show": f"vitres-deploy profile show {TABLE} --plot runs/fmnist-latency.png",
    "profile validate": f"vitres-deploy profile validate --profile {TABLE} --samples 40",
    "predict": f"vitres-deploy predict --profile {TABLE} --arch random:3 --json",
    "search": f"vitres-deploy search --supernet fmnist-demo --profile {TABLE} --budget-ms 0.25,0.35 "
              "--preset demo --out runs/search",
    "export": "vitres-deploy export --supernet fmnist-demo --arch runs/search/best-0.25.json --formats onnx "
              f"--profile {TABLE} --out runs/bundle",
    "verify": "vitres-deploy verify runs/bundle",
    "demo": "vitres-deploy demo --reuse-profile --out runs/demo",
}
OUT = Path(__file__).with_name("cli.md")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        found.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, f"{prefix}{name} ")
    return found


def render() -> str:
    """The whole reference as Markdown."""
    parts = ["# CLI reference\n",
             "Generated from the commands' own help by `python docs/make_cli_reference.py`; "
             "`tests/test_docs.py` fails when it is out of date.\n"]
    for name, cmd in _commands(main):
        ctx = click.Context(cmd, info_name=f"vitres-deploy {name}", terminal_width=100, max_content_width=100)
        parts.append(f"## `{name}`\n\n```text\n{cmd.get_help(ctx).rstrip()}\n```\n")
        if name in EXAMPLES:
            parts.append(f"Example:\n\n```console\n{EXAMPLES[name]}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
