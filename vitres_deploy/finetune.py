"""Fine-tuning a searched architecture: its static network, from the supernet's inherited weights.

The supernet's search finds an arch; the paper then retrains that network on its own. ``finetune`` extracts
the arch's static network (:meth:`~vitres_deploy.supernet.ViTResNASSupernet.extract`: at epoch 0 it computes
exactly what the supernet computes for the arch) and trains it for N epochs with the epoch loop of
:mod:`vitres_deploy.train`: AdamW with the linear-warm-up cosine schedule, label smoothing, bf16 autocast on
CUDA, DistributedDataParallel under ``torchrun``, a checkpoint and a log line per epoch, a bit-exact
``resume`` that refuses other settings (naming the first), and the divergence check.

It trains on the supernet's own data and training split: the hold-out part stays out of training and gives
each epoch's ``holdout_top1`` (the test split is never looked at). Every checkpoint is a fine-tuned checkpoint
(:func:`~vitres_deploy.checkpoint.save_finetuned`): the static network's weights, the arch, the source
supernet (file, path, sha256, its metrics), the settings, the epochs done and the package versions; the final
one (``finetuned.safetensors``) is what ``export --supernet`` takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .arch import Arch
from .archfile import resolve_arch
from .checkpoint import Checkpoint, FinetunedCheckpoint, load_checkpoint, load_finetuned, save_finetuned
from .data import open_checkpoint_data
from .distributed import Ranks
from .evaluate import topk_accuracy
from .files import sha256_file
from .rundir import check_same_settings
from .train import LAST, Run, check_fields, make_run, run_epochs, run_ranks, write_final
from .vit_resnas import ViTResNAS, vit_resnas

FINAL = "finetuned.safetensors"
EVAL_BATCH = 500


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run; recorded in its checkpoints.

    The data and its hold-out split are the supernet's (recorded in its checkpoint), not settings of their own.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 5e-4
    min_lr: float = 1e-6
    lr_warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    steps_per_epoch: int | None = None
    eval_limit: int | None = None
    from_scratch: bool = False

    def __post_init__(self) -> None:
        """Refuse values no run can use, naming the field (:class:`~vitres_deploy.errors.SettingsError`)."""
        check_fields(self, counts=("epochs", "batch_size"), optional_counts=("steps_per_epoch", "eval_limit"),
                     positive=("lr",), non_negative=("min_lr", "weight_decay", "lr_warmup_epochs"),
                     fractions=("label_smoothing",))


class _FinetuneRun(Run):
    """A fine-tuning run: every step trains the one static network."""

    def logits(self, x: torch.Tensor, epoch: int, step: int, rank: int) -> torch.Tensor:
        """The static network's logits of ``x``."""
        return self.model(x)

    def holdout_metrics(self) -> dict[str, float]:
        """Hold-out top-1 of the network (the first ``eval_limit`` hold-out images)."""
        batches = self.data.eval_batches("holdout", EVAL_BATCH, self.cfg.eval_limit)
        return {"holdout_top1": topk_accuracy(self.net, batches, next(self.net.parameters()).device).top1}

    def save(self, path: Path, meta: dict[str, Any], optimizer_tensors: dict[str, torch.Tensor]) -> None:
        """A fine-tuned checkpoint."""
        save_finetuned(path, self.net, meta, optimizer_tensors)


def source_record(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a fine-tuned checkpoint records of the supernet it started from: file name, path, sha256, metrics."""
    return {"file": checkpoint.path.name, "path": str(checkpoint.path), "sha256": sha256_file(checkpoint.path),
            "metrics": checkpoint.meta.get("metrics")}


def check_finetune_settings(out: Path, resumed: FinetunedCheckpoint, cfg: FinetuneConfig, source: dict[str, Any],
                            arch: Arch) -> None:
    """Refuse to resume the fine-tuning run in ``out`` with other settings, another supernet (by sha256) or
    another arch (by hash) than its checkpoint's, naming the first that differs; only ``epochs`` may grow."""
    stored = {**dataclasses.asdict(FinetuneConfig(**resumed.meta["finetune_config"])),
              "supernet": resumed.meta["supernet"]["sha256"], "arch": resumed.arch.hash}
    wanted = {**dataclasses.asdict(cfg), "supernet": source["sha256"], "arch": arch.hash}
    for settings in (stored, wanted):
        del settings["epochs"]
    check_same_settings(out, stored, wanted, made="fine-tuned")


def initial_network(source: Checkpoint, arch: Arch, cfg: FinetuneConfig) -> ViTResNAS:
    """The static network a run starts from: ``arch`` extracted with the supernet's weights, or with
    ``cfg.from_scratch`` freshly initialised (seeded by ``cfg.seed``): the paper's retraining, and the reference
    that tells how well the supernet's inherited weights rank archs."""
    if not cfg.from_scratch:
        return source.supernet.extract(arch)
    torch.manual_seed(cfg.seed)
    return vit_resnas(arch, source.space).to(next(source.supernet.parameters()).device)


def prepare_finetune(cfg: FinetuneConfig, supernet: str | Path, arch: Arch | str | Path, out: Path, *,
                     resume: bool = False, data_dir: str | Path | None = None, ranks: Ranks | None = None) -> Run:
    """The run that fine-tunes ``arch`` of ``supernet``: the static network extracted with the supernet's
    weights (or, with ``resume``, the one of ``out``'s last checkpoint, with its optimizer state), the
    supernet's data with its hold-out split, on ``ranks``' device (one CPU process by default).

    ``arch`` is an :class:`Arch` or a spec (``max``, ``min``, ``random:SEED``, an architecture file).
    """
    ranks = ranks or Ranks()
    source = load_checkpoint(supernet, map_location=ranks.device)
    chosen = arch.validate(source.space) if isinstance(arch, Arch) else resolve_arch(arch, source.space)
    record = source_record(source)
    data = open_checkpoint_data(source, data_dir)
    meta = {"finetune_config": dataclasses.asdict(cfg), "supernet": record}
    if not resume:
        return make_run(_FinetuneRun, cfg, data, initial_network(source, chosen, cfg), ranks, meta=meta)
    resumed = load_finetuned(out / LAST, map_location=ranks.device)
    check_finetune_settings(out, resumed, cfg, record, chosen)
    return make_run(_FinetuneRun, cfg, data, resumed.model, ranks, meta=meta,
                    start_epoch=int(resumed.meta["epoch"]), optimizer_tensors=resumed.optimizer_tensors)


def finetune(cfg: FinetuneConfig, supernet: str | Path, arch: Arch | str | Path, out_dir: str | Path, *,
             resume: bool = False, data_dir: str | Path | None = None, progress: bool = True,
             on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Fine-tune the static network of ``arch`` from ``supernet``'s weights into ``out_dir``; return the final
    checkpoint's path (``finetuned.safetensors``).

    ``out_dir`` follows the rules of a training run (:mod:`vitres_deploy.rundir`): a new run needs an unused
    folder, ``resume`` continues the last finished epoch with the same settings. Each epoch ends with
    ``last.safetensors``, a line of ``log.jsonl`` and ``on_epoch(record)`` on rank 0.
    """
    out = Path(out_dir)
    with run_ranks(out, resume, "a fine-tuning run") as ranks:
        run = prepare_finetune(cfg, supernet, arch, out, resume=resume, data_dir=data_dir, ranks=ranks)
        run_epochs(run, out, ranks, progress, on_epoch)
        return write_final(out, FINAL, run, ranks)
