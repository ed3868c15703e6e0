"""Supernet training with multi-architectural sampling (Liao et al., 2021).

Each batch is split into G groups (``archs_per_batch``), each trained as a different random
sub-network in one forward-backward pass. Choices open progressively, largest first, until every
choice is open after ``warmup_epochs``. AdamW with a linear-warm-up cosine schedule, label smoothing,
drop-path; bf16 autocast on CUDA. Under ``torchrun`` the supernet is wrapped in
DistributedDataParallel and every rank samples its own sub-networks.

Every epoch writes ``last.safetensors`` atomically (weights, optimizer state, config, metrics) and
appends a line to ``log.jsonl``; ``resume`` continues bit-for-bit from the last finished epoch
because every random stream is derived from (seed, epoch, step, rank).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .arch import max_arch, min_arch, sample_arch
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import HoldoutSpec, ImageData, data_spec, open_data
from .errors import CheckpointError, VitresError
from .evaluate import evaluate_arch
from .files import append_json_line, atomic_write_text
from .progress import progress_bar
from .rundir import check_start
from .space import load_space
from .supernet import ViTResNASSupernet

LAST, FINAL, LOG = "last.safetensors", "supernet.safetensors", "log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; recorded in its checkpoints."""

    space: str = "fmnist"
    data: str = "fmnist"
    epochs: int = 20
    batch_size: int = 256
    archs_per_batch: int = 4
    warmup_epochs: float = 4.0
    lr: float = 2e-3
    min_lr: float = 1e-5
    lr_warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    seed: int = 0
    holdout_seed: int = 0
    holdout_fraction: float | None = None
    holdout_per_class: int | None = None
    steps_per_epoch: int | None = None
    eval_limit: int | None = None

    def holdout(self) -> HoldoutSpec | None:
        """The hold-out spec asked for, or None for the data set's default."""
        if self.holdout_fraction is None and self.holdout_per_class is None:
            return None
        return HoldoutSpec(self.holdout_seed, self.holdout_fraction, self.holdout_per_class)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a step: linear warm-up, then cosine decay to ``min_lr``."""
    warm = cfg.lr_warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def opened_fraction(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Share of each choice list open to sampling: grows from the largest choice to all of them."""
    if cfg.warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + step / steps_per_epoch) / cfg.warmup_epochs)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{idx}/{key}"] = torch.as_tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return _Dist(rank, world, device)


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, data_dir: str | Path | None = None,
          progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train a supernet as ``cfg`` says into ``out_dir``; return the final checkpoint's path."""
    out = Path(out_dir)
    env = _init_distributed()
    resumed = _resume_from(out, resume, env)
    start_epoch = 0
    if resumed is not None:
        cfg = dataclasses.replace(TrainConfig(**resumed.meta["train_config"]), epochs=cfg.epochs)
        start_epoch = int(resumed.meta["epoch"])

    space = load_space(cfg.space)
    data = open_data(cfg.data, data_dir, space.image_size, cfg.holdout())
    if resumed is not None and resumed.data.get("holdout_sha256") != data.holdout_digest:
        raise CheckpointError("the hold-out split of this data differs from the checkpoint's: same --data needed")
    torch.manual_seed(cfg.seed)
    supernet = resumed.supernet if resumed else ViTResNASSupernet(space, cfg.drop_path)
    supernet = _with_drop_path(supernet, cfg.drop_path).to(env.device)
    model: nn.Module = supernet
    if env.world > 1:
        # Sliced weights give gradients whose strides differ from DDP's buckets: slower, still exact.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = nn.parallel.DistributedDataParallel(supernet, find_unused_parameters=True)
    opt = torch.optim.AdamW(_param_groups(supernet, cfg.weight_decay), lr=cfg.lr)
    if resumed is not None:
        _load_optimizer(opt, resumed.optimizer_tensors, env.device)

    full_steps = data.num_train() // (cfg.batch_size * env.world)
    steps = min(full_steps, cfg.steps_per_epoch or full_steps)
    if steps < 1:
        raise VitresError(f"batch size {cfg.batch_size} x {env.world} ranks exceeds the {data.num_train()} images")
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_log(out / LOG, start_epoch)
    meta_base = {"train_config": dataclasses.asdict(cfg), "data": data_spec(data)}
    for epoch in range(start_epoch, cfg.epochs):
        record = _train_epoch(cfg, model, supernet, opt, data, epoch, steps, env, progress)
        if env.main:
            record.update(_holdout_metrics(supernet, data, cfg.eval_limit))
            save_checkpoint(out / LAST, supernet, {**meta_base, "epoch": epoch + 1, "metrics": record},
                            _optimizer_tensors(opt))
            append_json_line(out / LOG, record)
            if on_epoch:
                on_epoch(record)
        if env.world > 1:
            dist.barrier()
    return _write_final(out, supernet, env)


def _resume_from(out: Path, resume: bool, env: _Dist) -> Checkpoint | None:
    """The last checkpoint of ``out`` to continue from (``resume``), or None for a new run in an unused ``out``."""
    check_start(out, resume, "a training run", (LAST,))
    return load_checkpoint(out / LAST, map_location=env.device) if resume else None


def _write_final(out: Path, supernet: ViTResNASSupernet, env: _Dist) -> Path:
    """Write ``supernet.safetensors`` from the last checkpoint, with every rank's weight digest (checked equal)."""
    digests = _rank_digests(supernet, env)
    final = out / FINAL
    if env.main:
        last = load_checkpoint(out / LAST)
        meta = {k: v for k, v in last.meta.items() if k not in ("format", "space", "packages")}
        save_checkpoint(final, last.supernet, {**meta, "world_size": env.world, "rank_weight_digests": digests})
    if env.world > 1:
        dist.barrier()
    return final


def weight_digest(model: nn.Module) -> str:
    """sha256 over every parameter, in registration order.

    Buffers (BatchNorm running statistics) are left out: under DDP each rank updates them from its
    own batch and DDP re-broadcasts rank 0's at every forward, so the checkpoint keeps rank 0's.
    """
    h = hashlib.sha256()
    for name, t in model.named_parameters():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rank_digests(supernet: ViTResNASSupernet, env: _Dist) -> list[str]:
    """Every rank's parameter digest; ranks that drifted apart are an error, not a silent average."""
    mine = weight_digest(supernet)
    if env.world == 1:
        return [mine]
    gathered: list[str | None] = [None] * env.world
    dist.all_gather_object(gathered, mine)
    if len(set(gathered)) != 1:
        raise VitresError(f"distributed ranks ended with different weights ({len(set(gathered))} distinct digests)")
    return [str(d) for d in gathered]


def _with_drop_path(supernet: ViTResNASSupernet, rate: float) -> ViTResNASSupernet:
    total = sum(len(blocks) for blocks in supernet.stages)
    for i, block in enumerate(b for blocks in supernet.stages for b in blocks):
        block.drop_path = rate * i / max(total - 1, 1)
    return supernet


def _train_epoch(cfg: TrainConfig, model: nn.Module, supernet: ViTResNASSupernet, opt: torch.optim.Optimizer,
                 data: ImageData, epoch: int, steps: int, env: _Dist, progress: bool) -> dict[str, Any]:
    torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 1_009 + env.rank)  # drop-path stream
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda")
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    bar = progress_bar(progress and env.main, f"epoch {epoch + 1}/{cfg.epochs}", after="loss {task.fields[loss]:.3f}",
                       transient=True)
    with bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        batches = data.train_batches(cfg.batch_size, epoch, cfg.seed, env.rank, env.world)
        for step, (x, y) in zip(range(steps), batches):
            global_step = epoch * steps + step
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, global_step, steps)
            rng = random.Random(f"{cfg.seed}/{epoch}/{step}/{env.rank}")
            fraction = opened_fraction(cfg, epoch, step, steps)
            archs = [sample_arch(supernet.space, rng, fraction) for _ in range(cfg.archs_per_batch)]
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(model(x, archs=archs).float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            bar.update(task, advance=1, loss=total_loss / seen)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "lr": opt.param_groups[0]["lr"],
            "images_per_s": seen * env.world / seconds, "seconds": seconds,
            "opened_fraction": opened_fraction(cfg, epoch + 1, 0, steps)}


def _holdout_metrics(supernet: ViTResNASSupernet, data: ImageData, limit: int | None) -> dict[str, float]:
    space = supernet.space
    largest = evaluate_arch(supernet, max_arch(space), data, "holdout", limit=limit)
    smallest = evaluate_arch(supernet, min_arch(space), data, "holdout", limit=limit)
    return {"holdout_top1_max": largest.top1, "holdout_top1_min": smallest.top1}


def _trim_log(path: Path, epochs_kept: int) -> None:
    """Drop log lines of epochs that will be trained again (after an interrupted run)."""
    if not path.is_file():
        return
    kept = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["epoch"] <= epochs_kept:
                kept.append(ln)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by the interruption: that epoch is trained again
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))
