"""``spaces`` and ``info``: the search spaces and the cost of one architecture."""

from __future__ import annotations

import click

from ..arch import max_arch, min_arch
from ..archfile import resolve_arch
from ..macs import arch_cost
from ..space import PRESETS, load_space
from .boundary import Command
from .output import human, print_json, print_table


@click.command(cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def spaces(as_json: bool) -> None:
    """List the preset search spaces with their size and MAC range."""
    rows = []
    for name, space in PRESETS.items():
        lo, hi = arch_cost(min_arch(space), space).macs, arch_cost(max_arch(space), space).macs
        rows.append({
            "name": name, "image_size": space.image_size, "classes": space.num_classes,
            "tokens": list(space.tokens), "subnets": space.num_subnets(), "macs_min": lo, "macs_max": hi,
            "description": space.description,
        })
    if as_json:
        print_json(rows)
        return
    print_table("search spaces", ["space", "input", "tokens/stage", "sub-networks", "MACs min", "MACs max"], [
        (r["name"], f"{r['image_size']}x{r['image_size']}, {r['classes']} classes",
         " -> ".join(map(str, r["tokens"])), f"{r['subnets']:.3e}", human(r["macs_min"]), human(r["macs_max"]))
        for r in rows
    ])


@click.command(cls=Command)
@click.option("--space", "space_name", required=True, help="Preset name or a space .json/.yaml file.")
@click.option("--arch", "arch_spec", required=True, help="Architecture file, max, min or random:SEED.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(space_name: str, arch_spec: str, as_json: bool) -> None:
    """MACs, parameters and a per-stage summary of one architecture."""
    space = load_space(space_name)
    arch = resolve_arch(arch_spec, space)
    cost = arch_cost(arch, space)
    stages = [
        {"embed_dim": s.embed_dim, "depth": s.depth, "heads": [b.heads for b in s.blocks],
         "mlp": [b.mlp for b in s.blocks], "tokens": space.tokens[i],
         "macs": cost.parts[f"stage{i + 1}"][0], "params": cost.parts[f"stage{i + 1}"][1]}
        for i, s in enumerate(arch.stages)
    ]
    if as_json:
        print_json({"space": space.name, "hash": arch.hash, "macs": cost.macs, "params": cost.params,
                    "stages": stages, "arch": arch.to_dict()})
        return
    click.echo(f"{space.name}  arch {arch.hash}: {human(cost.macs)} MACs, {human(cost.params)} params")
    print_table(None, ["stage", "tokens", "embed", "depth", "heads", "mlp", "MACs", "params"], [
        (i + 1, s["tokens"], s["embed_dim"], s["depth"], ",".join(map(str, s["heads"])),
         ",".join(map(str, s["mlp"])), human(s["macs"]), human(s["params"]))
        for i, s in enumerate(stages)
    ])


COMMANDS = [spaces, info]
