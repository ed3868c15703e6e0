"""``train``, ``finetune`` and ``evaluate``: supernet training, fine-tuning a searched arch, and the accuracy of
one sub-network."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..finetune import FinetuneConfig
from ..train import TrainConfig
from .boundary import Command
from .output import print_json, print_table

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_FINETUNE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*options: Decorator) -> Decorator:
    """One decorator applying ``options`` in the order they are listed (as if written one above the other)."""
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _optimizer_options(defaults: dict[str, Any]) -> Decorator:
    """The AdamW and schedule options of a run, with ``defaults`` (its settings' own)."""
    return _options(
        click.option("--lr", type=float, default=defaults["lr"], show_default=True),
        click.option("--min-lr", type=float, default=defaults["min_lr"], show_default=True),
        click.option("--lr-warmup-epochs", type=float, default=defaults["lr_warmup_epochs"], show_default=True),
        click.option("--weight-decay", type=float, default=defaults["weight_decay"], show_default=True),
        click.option("--label-smoothing", type=float, default=defaults["label_smoothing"], show_default=True))


def _run_options(final: str) -> Decorator:
    """The options every resumable run takes after its settings: quick-run caps, ``--resume`` and ``--json``
    (which prints the path of the ``final`` checkpoint and the epochs' records)."""
    return _options(
        click.option("--steps-per-epoch", type=int, default=None, help="Cap steps per epoch (quick runs)."),
        click.option("--eval-limit", type=int, default=None,
                     help="Hold-out images evaluated per epoch (default: all)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch."),
        click.option("--json", "as_json", is_flag=True,
                     help=f"Print the {final}'s path and the epochs' records as JSON (the epoch lines go to stderr)."))


def _epoch_printer(epochs: list[dict], as_json: bool, holdout: Callable[[dict], str]) -> Callable[[dict], None]:
    """An ``on_epoch`` that keeps each record in ``epochs`` and prints its line (on stderr with ``--json``)."""
    def on_epoch(r: dict) -> None:
        epochs.append(r)
        click.echo(f"epoch {r['epoch']}: loss {r['loss']:.4f}  lr {r['lr']:.2e}  {r['images_per_s']:.0f} img/s  "
                   f"{holdout(r)}", err=as_json)
    return on_epoch


def _report(key: str, final: Path, epochs: list[dict], as_json: bool) -> None:
    """On rank 0: the final checkpoint's path (under ``key``) and the epochs as JSON, or one line."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        print_json({key: str(final), "epochs": epochs})
    else:
        click.echo(f"{key} written to {final}")


@click.command(cls=Command)
@click.option("--space", default=_DEFAULTS["space"], show_default=True, help="Preset or space file.")
# --data-kind sets TrainConfig's data: errors about that field (a refused resume) name the flag
@click.option("--data-kind", "data", type=click.Choice(["fmnist", "folder"]), default=_DEFAULTS["data"],
              show_default=True, help="Fashion-MNIST IDX files or ImageNet-style train/ val/ folders.")
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--out", "out_dir", required=True,
              help="Run directory (last.safetensors, log.jsonl, supernet.safetensors).")
@click.option("--epochs", type=int, default=_DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], show_default=True, help="Per rank.")
@click.option("--archs-per-batch", type=int, default=_DEFAULTS["archs_per_batch"], show_default=True,
              help="G sub-networks per step, each on 1/G of the batch (1 = one sub-network per step).")
@click.option("--sandwich", is_flag=True,
              help="Sandwich rule: the first two of the G sub-networks of every step are the largest and the "
                   "smallest open one (the rest random).")
@click.option("--distill", is_flag=True,
              help="In-place distillation (needs --sandwich): the largest sub-network learns from the labels on the "
                   "whole batch, the other G-1 from its predictions.")
@click.option("--warmup-epochs", type=float, default=_DEFAULTS["warmup_epochs"], show_default=True,
              help="Epochs over which choices open, largest first.")
@_optimizer_options(_DEFAULTS)
@click.option("--drop-path", type=float, default=_DEFAULTS["drop_path"], show_default=True)
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True)
@click.option("--holdout-fraction", type=float, default=None, help="Hold-out share of each class (fmnist: 0.1).")
@click.option("--holdout-per-class", type=int, default=None, help="Hold-out images per class (folders: 25).")
@_run_options("supernet")
def train(out_dir: str, data_dir: str | None, resume: bool, as_json: bool, **options) -> None:
    """Train a supernet with multi-architectural sampling (works under torchrun)."""
    from ..train import train as run

    epochs: list[dict] = []
    on_epoch = _epoch_printer(epochs, as_json, lambda r: f"hold-out top-1 max {r['holdout_top1_max']:.4f} "
                                                         f"min {r['holdout_top1_min']:.4f}")
    final = run(TrainConfig(**options), out_dir, resume=resume, data_dir=data_dir, on_epoch=on_epoch)
    _report("supernet", final, epochs, as_json)


@click.command(cls=Command)
@click.option("--supernet", "supernet", required=True, help="Supernet checkpoint file or fmnist-demo.")
@click.option("--arch", "arch", required=True,
              help="Architecture file (a search's best.json), max, min or random:SEED.")
@click.option("--data", "data_dir", default=None,
              help="Data directory (default: Debian's Fashion-MNIST); the supernet's hold-out split is kept out.")
@click.option("--out", "out_dir", required=True,
              help="Run directory (last.safetensors, log.jsonl, finetuned.safetensors).")
@click.option("--epochs", type=int, default=_FINETUNE_DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_FINETUNE_DEFAULTS["batch_size"], show_default=True,
              help="Per rank.")
@_optimizer_options(_FINETUNE_DEFAULTS)
@click.option("--seed", type=int, default=_FINETUNE_DEFAULTS["seed"], show_default=True)
@click.option("--from-scratch", is_flag=True,
              help="Start from freshly initialised weights (seeded by --seed) instead of the supernet's: "
                   "the arch trained alone.")
@_run_options("fine-tuned checkpoint")
def finetune(supernet: str, arch: str, out_dir: str, data_dir: str | None, resume: bool, as_json: bool,
             **options) -> None:
    """Fine-tune the static network of a searched arch from the supernet's weights, or train it alone with
    --from-scratch (works under torchrun); `export --supernet` takes its finetuned.safetensors."""
    from ..finetune import finetune as run

    epochs: list[dict] = []
    on_epoch = _epoch_printer(epochs, as_json, lambda r: f"hold-out top-1 {r['holdout_top1']:.4f}")
    final = run(FinetuneConfig(**options), supernet, arch, out_dir, resume=resume, data_dir=data_dir,
                on_epoch=on_epoch)
    _report("finetuned", final, epochs, as_json)


@click.command(cls=Command)
@click.option("--supernet", "ckpt", required=True,
              help="Supernet checkpoint file or fmnist-demo, or a fine-tuned checkpoint (finetune's output).")
@click.option("--arch", "arch_spec", required=True,
              help="Architecture file, max, min or random:SEED (a fine-tuned checkpoint's own arch).")
@click.option("--split", type=click.Choice(["holdout", "test"]), default="holdout", show_default=True)
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(ckpt: str, arch_spec: str, split: str, data_dir: str | None, batch_size: int, as_json: bool) -> None:
    """Top-1 and top-5 of one sub-network with the supernet's weights, or of a fine-tuned network."""
    from ..archfile import resolve_arch
    from ..checkpoint import FinetunedCheckpoint, load_any_checkpoint
    from ..data import open_checkpoint_data
    from ..evaluate import evaluate_arch, evaluate_model
    from ..macs import arch_cost

    checkpoint = load_any_checkpoint(ckpt)
    arch = resolve_arch(arch_spec, checkpoint.space)
    data = open_checkpoint_data(checkpoint, data_dir)
    if isinstance(checkpoint, FinetunedCheckpoint):
        checkpoint.check_arch(arch)
        acc = evaluate_model(checkpoint.model, data, split, batch_size)
    else:
        acc = evaluate_arch(checkpoint.supernet, arch, data, split, batch_size)
    cost = arch_cost(arch, checkpoint.space)
    result = {**acc.to_dict(), "split": split, "arch_hash": arch.hash, "macs": cost.macs, "params": cost.params,
              "supernet": str(checkpoint.path)}
    if as_json:
        print_json(result)
    else:
        print_table(f"{checkpoint.space.name} {arch.hash} on {split}", ["top-1", "top-5", "images", "MACs", "params"],
                    [(f"{acc.top1:.2%}", f"{acc.top5:.2%}", acc.images, cost.macs, cost.params)])


COMMANDS = [train, finetune, evaluate]
