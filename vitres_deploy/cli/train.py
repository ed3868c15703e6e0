"""``train`` and ``evaluate``: supernet training and the accuracy of one sub-network."""

from __future__ import annotations

import dataclasses
import os

import click

from ..train import TrainConfig
from .boundary import Command
from .output import print_json, print_table

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@click.command(cls=Command)
@click.option("--space", default=_DEFAULTS["space"], show_default=True, help="Preset or space file.")
@click.option("--data-kind", "data_kind", type=click.Choice(["fmnist", "folder"]), default="fmnist",
              show_default=True, help="Fashion-MNIST IDX files or ImageNet-style train/ val/ folders.")
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--out", "out_dir", required=True,
              help="Run directory (last.safetensors, log.jsonl, supernet.safetensors).")
@click.option("--epochs", type=int, default=_DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], show_default=True, help="Per rank.")
@click.option("--archs-per-batch", type=int, default=_DEFAULTS["archs_per_batch"], show_default=True,
              help="G sub-networks per step, each on 1/G of the batch (1 = one sub-network per step).")
@click.option("--warmup-epochs", type=float, default=_DEFAULTS["warmup_epochs"], show_default=True,
              help="Epochs over which choices open, largest first.")
@click.option("--lr", type=float, default=_DEFAULTS["lr"], show_default=True)
@click.option("--min-lr", type=float, default=_DEFAULTS["min_lr"], show_default=True)
@click.option("--lr-warmup-epochs", type=float, default=_DEFAULTS["lr_warmup_epochs"], show_default=True)
@click.option("--weight-decay", type=float, default=_DEFAULTS["weight_decay"], show_default=True)
@click.option("--label-smoothing", type=float, default=_DEFAULTS["label_smoothing"], show_default=True)
@click.option("--drop-path", type=float, default=_DEFAULTS["drop_path"], show_default=True)
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True)
@click.option("--holdout-fraction", type=float, default=None, help="Hold-out share of each class (fmnist: 0.1).")
@click.option("--holdout-per-class", type=int, default=None, help="Hold-out images per class (folders: 25).")
@click.option("--steps-per-epoch", type=int, default=None, help="Cap steps per epoch (quick runs).")
@click.option("--eval-limit", type=int, default=None, help="Hold-out images evaluated per epoch (default: all).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the supernet's path and the epochs' records as JSON (the epoch lines go to stderr).")
def train(out_dir: str, data_dir: str | None, data_kind: str, resume: bool, as_json: bool, **options) -> None:
    """Train a supernet with multi-architectural sampling (works under torchrun)."""
    from ..train import train as run

    cfg = TrainConfig(data=data_kind, **options)
    epochs: list[dict] = []

    def on_epoch(r: dict) -> None:
        epochs.append(r)
        click.echo(f"epoch {r['epoch']}: loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['images_per_s']:.0f} img/s  "
                   f"hold-out top-1 max {r['holdout_top1_max']:.4f} min {r['holdout_top1_min']:.4f}", err=as_json)

    final = run(cfg, out_dir, resume=resume, data_dir=data_dir, on_epoch=on_epoch)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        print_json({"supernet": str(final), "epochs": epochs})
    else:
        click.echo(f"supernet written to {final}")


@click.command(cls=Command)
@click.option("--supernet", "ckpt", required=True, help="Checkpoint file or fmnist-demo.")
@click.option("--arch", "arch_spec", required=True, help="Architecture file, max, min or random:SEED.")
@click.option("--split", type=click.Choice(["holdout", "test"]), default="holdout", show_default=True)
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(ckpt: str, arch_spec: str, split: str, data_dir: str | None, batch_size: int, as_json: bool) -> None:
    """Top-1 and top-5 of one sub-network with the supernet's weights."""
    from ..archfile import resolve_arch
    from ..checkpoint import load_checkpoint
    from ..data import open_checkpoint_data
    from ..evaluate import evaluate_arch
    from ..macs import arch_cost

    checkpoint = load_checkpoint(ckpt)
    arch = resolve_arch(arch_spec, checkpoint.space)
    data = open_checkpoint_data(checkpoint, data_dir)
    acc = evaluate_arch(checkpoint.supernet, arch, data, split, batch_size)
    cost = arch_cost(arch, checkpoint.space)
    result = {**acc.to_dict(), "split": split, "arch_hash": arch.hash, "macs": cost.macs, "params": cost.params,
              "supernet": str(checkpoint.path)}
    if as_json:
        print_json(result)
    else:
        print_table(f"{checkpoint.space.name} {arch.hash} on {split}", ["top-1", "top-5", "images", "MACs", "params"],
                    [(f"{acc.top1:.2%}", f"{acc.top5:.2%}", acc.images, cost.macs, cost.params)])


COMMANDS = [train, evaluate]
