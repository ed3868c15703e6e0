"""Supernet training with multi-architectural sampling (Liao et al., 2021), and the epoch loop it shares with
fine-tuning (:mod:`vitres_deploy.finetune`).

Each batch is split into G groups (``archs_per_batch``), each trained as a different random
sub-network in one forward-backward pass; ``sandwich`` makes the first two groups the largest and the
smallest open sub-network, ``distill`` adds in-place distillation from the largest (measured against the
default in docs/training.md). Choices open progressively, largest first, until every choice is open after
``warmup_epochs``. AdamW with a linear-warm-up cosine schedule, label smoothing,
drop-path; bf16 autocast on CUDA. Under ``torchrun`` the supernet is wrapped in
DistributedDataParallel and every rank samples its own sub-networks.

Every epoch writes ``last.safetensors`` atomically (weights, optimizer state, config, metrics) and
appends a line to ``log.jsonl``; ``resume`` continues bit-for-bit from the last finished epoch
because every random stream is derived from (seed, epoch, step, rank) by :mod:`vitres_deploy.seeding`.

A kind of run is a :class:`Run` subclass (how a step runs the network, what an epoch's hold-out metrics are,
how its checkpoint is written); :func:`run_ranks`, :func:`make_run`, :func:`run_epochs` and
:func:`write_final` are the rest, the same for every kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch, max_arch, min_arch, sample_arch, smallest_open_arch
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint, save_without_optimizer
from .data import HoldoutSpec, ImageData, data_spec, open_data
from .distributed import Ranks, join_ranks
from .errors import DataError, RuntimeFailure, SettingsError, TrainingDiverged
from .evaluate import evaluate_arch
from .files import JSONError, append_json_line, atomic_write_text, loads_json
from .progress import progress_bar
from .rundir import check_same_settings, check_start, hold_output
from .seeding import drop_path_seed, stream_rng
from .space import load_space
from .supernet import ViTResNASSupernet
from .values import check_count, check_real

LAST, FINAL, LOG = "last.safetensors", "supernet.safetensors", "log.jsonl"


def check_fields(settings: object, *, counts: tuple[str, ...] = (), optional_counts: tuple[str, ...] = (),
                 positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 fractions: tuple[str, ...] = ()) -> None:
    """Check the named fields of ``settings``: whole numbers >= 1 (``optional_counts`` may be None), numbers
    > 0, numbers >= 0, and fractions in [0, 1); the first bad one raises :class:`SettingsError` naming it."""
    for name in counts:
        check_count(name, getattr(settings, name))
    for name in optional_counts:
        if getattr(settings, name) is not None:
            check_count(name, getattr(settings, name))
    for name in positive:
        check_real(name, getattr(settings, name), low_open=0.0)
    for name in non_negative:
        check_real(name, getattr(settings, name), low=0.0)
    for name in fractions:
        check_real(name, getattr(settings, name), low=0.0, high_open=1.0)


class RunSettings(Protocol):
    """What the shared epoch loop reads of a run's settings (:class:`TrainConfig`, ``FinetuneConfig``)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def min_lr(self) -> float: ...
    @property
    def lr_warmup_epochs(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def label_smoothing(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def steps_per_epoch(self) -> int | None: ...
    @property
    def eval_limit(self) -> int | None: ...


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; recorded in its checkpoints."""

    space: str = "fmnist"
    data: str = "fmnist"
    epochs: int = 20
    batch_size: int = 256
    archs_per_batch: int = 4
    sandwich: bool = False
    distill: bool = False
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

    def __post_init__(self) -> None:
        """Refuse values no run can use, naming the field (:class:`SettingsError`)."""
        check_fields(self, counts=("epochs", "batch_size", "archs_per_batch"),
                     optional_counts=("steps_per_epoch", "eval_limit", "holdout_per_class"), positive=("lr",),
                     non_negative=("min_lr", "weight_decay", "warmup_epochs", "lr_warmup_epochs"),
                     fractions=("label_smoothing", "drop_path"))
        if self.sandwich and self.archs_per_batch < 2:
            raise SettingsError("sandwich needs archs_per_batch >= 2 (its first two groups are the largest and "
                                "the smallest sub-network)", field="archs_per_batch")
        if self.distill and not self.sandwich:
            raise SettingsError("distill needs sandwich (the largest sub-network, trained on the labels, is the "
                                "teacher of the others)", field="distill")
        if self.holdout_fraction is not None:
            check_real("holdout_fraction", self.holdout_fraction, low_open=0.0, high_open=1.0)

    def holdout(self) -> HoldoutSpec | None:
        """The hold-out spec asked for, or None for the data set's default."""
        if self.holdout_fraction is None and self.holdout_per_class is None:
            return None
        return HoldoutSpec(self.holdout_seed, self.holdout_fraction, self.holdout_per_class)


def lr_at(cfg: RunSettings, step: int, steps_per_epoch: int) -> float:
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


# ------------------------------------------------------------------------------------ the shared loop


@dataclass
class Run:
    """What the epochs of a run share; a subclass says what differs between kinds of run.

    ``net`` is the network whose weights are trained and saved; ``model`` is ``net``, wrapped in
    DistributedDataParallel under torchrun. ``meta`` is what every checkpoint of the run records besides
    the epoch, the data and the metrics (the settings, where the weights came from).
    """

    cfg: Any  # a RunSettings; a resumed run's own settings, with the epochs asked for now
    data: ImageData
    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps: int  # per epoch
    start_epoch: int
    meta: dict[str, Any]

    find_unused: ClassVar[bool] = False  # DDP: some parameters get no gradient in a step
    diverged_hint: ClassVar[str] = "lower lr, raise lr_warmup_epochs"

    def logits(self, x: torch.Tensor, epoch: int, step: int, rank: int) -> torch.Tensor:
        """The logits that step ``step`` of ``epoch`` trains on, for this rank's batch ``x``."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int, rank: int) -> torch.Tensor:
        """The loss that step ``step`` of ``epoch`` minimises: cross-entropy of :meth:`logits` against the labels,
        with label smoothing."""
        return F.cross_entropy(self.logits(x, epoch, step, rank).float(), y, label_smoothing=self.cfg.label_smoothing)

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """Fields of the epoch's log record beyond loss, lr and speed (none by default)."""
        return {}

    def holdout_metrics(self) -> dict[str, float]:
        """Hold-out accuracies after an epoch (rank 0), added to its record."""
        raise NotImplementedError

    def save(self, path: Path, meta: dict[str, Any], optimizer_tensors: dict[str, torch.Tensor]) -> None:
        """Write the checkpoint of ``net`` with ``meta`` and the optimizer's tensors to ``path``."""
        raise NotImplementedError


@contextlib.contextmanager
def run_ranks(out: Path, resume: bool, holds: str) -> Iterator[Ranks]:
    """Join the ranks of this launch and, on rank 0, hold ``out``; refuse to start over another run (``holds``,
    e.g. ``"a training run"``) or to resume none (:func:`~vitres_deploy.rundir.check_start`)."""
    with join_ranks() as ranks, contextlib.ExitStack() as held:
        if ranks.main:  # one process writes the folder
            held.enter_context(hold_output(out, field="out_dir"))
        check_start(out, resume, holds, (LAST,))
        yield ranks


def make_run(kind: type[Run], cfg: RunSettings, data: ImageData, net: nn.Module, ranks: Ranks, *,
             meta: dict[str, Any], start_epoch: int = 0,
             optimizer_tensors: dict[str, torch.Tensor] | None = None) -> Run:
    """A run of ``kind`` training ``net`` on this rank's device: wrapped in DDP under torchrun, with AdamW (its
    resumed state when ``optimizer_tensors`` are given) and the steps of an epoch."""
    steps = _steps_per_epoch(cfg, data, ranks)
    net.to(ranks.device)
    model: nn.Module = net
    if ranks.world > 1:
        # Sliced weights give gradients whose strides differ from DDP's buckets: slower, still exact.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = nn.parallel.DistributedDataParallel(net, find_unused_parameters=kind.find_unused)
    optimizer = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr)
    if optimizer_tensors is not None:
        _load_optimizer(optimizer, optimizer_tensors, ranks.device)
    return kind(cfg, data, net, model, optimizer, steps, start_epoch, meta)


def run_epochs(run: Run, out: Path, ranks: Ranks, progress: bool,
               on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Train the run's remaining epochs; each ends (on rank 0) with a checkpoint, a log line and
    ``on_epoch(record)``."""
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_log(out / LOG, run.start_epoch)
    for epoch in range(run.start_epoch, run.cfg.epochs):
        record = _train_epoch(run, epoch, ranks, progress)
        if ranks.main:
            _record_epoch(out, run, epoch, record)
            if on_epoch:
                on_epoch(record)
        ranks.barrier()


def write_final(out: Path, name: str, run: Run, ranks: Ranks) -> Path:
    """Write ``out/name`` from the last checkpoint without its optimizer state, with every rank's weight digest
    (checked equal)."""
    digests = _rank_digests(run.net, ranks)
    final = out / name
    if ranks.main:
        save_without_optimizer(out / LAST, final, {"world_size": ranks.world, "rank_weight_digests": digests})
    ranks.barrier()
    return final


# ------------------------------------------------------------------------------------ supernet training


class _SupernetRun(Run):
    """A supernet run: every step trains ``archs_per_batch`` sampled sub-networks."""

    find_unused = True
    diverged_hint = "lower lr, raise warmup_epochs"

    def logits(self, x: torch.Tensor, epoch: int, step: int, rank: int) -> torch.Tensor:
        """The batch split among the step's sub-networks (:meth:`step_archs`)."""
        return self.model(x, archs=self.step_archs(epoch, step, rank))

    def step_archs(self, epoch: int, step: int, rank: int) -> list[Arch]:
        """``archs_per_batch`` sub-networks sampled from the stream (seed, epoch, step, rank) among the choices
        open at this point; with ``sandwich`` the first two are the largest and the smallest open one (the
        sandwich rule inside multi-architectural sampling: each gets 1/G of the batch, at no extra cost)."""
        rng = stream_rng(self.cfg.seed, epoch, step, rank)
        fraction = opened_fraction(self.cfg, epoch, step, self.steps)
        space = self.net.space
        fixed = [max_arch(space), smallest_open_arch(space, fraction)] if self.cfg.sandwich else []
        return fixed + [sample_arch(space, rng, fraction) for _ in range(self.cfg.archs_per_batch - len(fixed))]

    def loss(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int, rank: int) -> torch.Tensor:
        """Cross-entropy against the labels; with ``distill`` (in-place distillation, as in BigNAS) the largest
        sub-network learns from the labels on the whole batch, and the other G-1 sub-networks, splitting the
        batch among them, learn from its predicted distribution on their images (soft cross-entropy against its
        detached output): one forward of the supernet over the batch twice."""
        if not self.cfg.distill:
            return super().loss(x, y, epoch, step, rank)
        largest, *students = self.step_archs(epoch, step, rank)
        sizes = [len(x)] + [len(part) for part in x.tensor_split(len(students))]
        logits = self.model(torch.cat([x, x]), archs=[largest, *students], sizes=sizes).float()
        teacher, student = logits[:len(x)], logits[len(x):]
        hard = F.cross_entropy(teacher, y, label_smoothing=self.cfg.label_smoothing)
        soft = -(teacher.detach().softmax(-1) * student.log_softmax(-1)).sum(-1).mean()
        return hard + soft

    def epoch_fields(self, epoch: int) -> dict[str, Any]:
        """The share of choices open after the epoch."""
        return {"opened_fraction": opened_fraction(self.cfg, epoch + 1, 0, self.steps)}

    def holdout_metrics(self) -> dict[str, float]:
        """Hold-out top-1 of the largest and the smallest sub-network."""
        space = self.net.space
        largest = evaluate_arch(self.net, max_arch(space), self.data, "holdout", limit=self.cfg.eval_limit)
        smallest = evaluate_arch(self.net, min_arch(space), self.data, "holdout", limit=self.cfg.eval_limit)
        return {"holdout_top1_max": largest.top1, "holdout_top1_min": smallest.top1}

    def save(self, path: Path, meta: dict[str, Any], optimizer_tensors: dict[str, torch.Tensor]) -> None:
        """A supernet checkpoint."""
        save_checkpoint(path, self.net, meta, optimizer_tensors)


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, data_dir: str | Path | None = None,
          progress: bool = True, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train a supernet as ``cfg`` says into ``out_dir``; return the final checkpoint's path.

    Set up (or resume) the run, train its epochs (each ends with a checkpoint and a log line, then
    ``on_epoch(record)`` on rank 0), and write the final checkpoint.
    """
    out = Path(out_dir)
    with run_ranks(out, resume, "a training run") as ranks:
        resumed = load_checkpoint(out / LAST, map_location=ranks.device) if resume else None
        if resumed is not None:
            check_resume_settings(out, resumed, cfg)
        run = _set_up(cfg, resumed, data_dir, ranks)
        run_epochs(run, out, ranks, progress, on_epoch)
        return write_final(out, FINAL, run, ranks)


def check_resume_settings(out: Path, resumed: Checkpoint, cfg: TrainConfig) -> None:
    """Refuse to resume the run in ``out`` with settings other than its checkpoint's, naming the first that
    differs (:func:`~vitres_deploy.rundir.check_same_settings`); only ``epochs`` may grow."""
    stored = dataclasses.asdict(TrainConfig(**resumed.meta["train_config"]))
    wanted = dataclasses.asdict(cfg)
    for settings in (stored, wanted):
        del settings["epochs"]
    check_same_settings(out, stored, wanted, made="trained")


def _set_up(cfg: TrainConfig, resumed: Checkpoint | None, data_dir: str | Path | None, ranks: Ranks) -> Run:
    """The run's settings, data, supernet (new, or the resumed weights) and optimizer, on this rank's device."""
    start_epoch = 0
    if resumed is not None:
        cfg = dataclasses.replace(TrainConfig(**resumed.meta["train_config"]), epochs=cfg.epochs)
        start_epoch = int(resumed.meta["epoch"])
    space = load_space(cfg.space)
    data = open_data(cfg.data, data_dir, space.image_size, cfg.holdout())
    if resumed is not None and resumed.data.get("holdout_sha256") != data.holdout_digest:
        raise DataError("the hold-out split of this data differs from the checkpoint's: resume with the same "
                        "data_dir", field="data_dir")
    _steps_per_epoch(cfg, data, ranks)  # a batch larger than the data is refused before the supernet is built
    torch.manual_seed(cfg.seed)
    supernet = resumed.supernet if resumed else ViTResNASSupernet(space)
    supernet.set_drop_path(cfg.drop_path)
    return make_run(_SupernetRun, cfg, data, supernet, ranks, meta={"train_config": dataclasses.asdict(cfg)},
                    start_epoch=start_epoch, optimizer_tensors=resumed.optimizer_tensors if resumed else None)


def _steps_per_epoch(cfg: RunSettings, data: ImageData, ranks: Ranks) -> int:
    """Steps of one epoch: every rank takes a whole batch per step, at most ``steps_per_epoch``."""
    full = data.num_train() // (cfg.batch_size * ranks.world)
    if full < 1:
        raise SettingsError(f"batch_size {cfg.batch_size} x {ranks.world} ranks exceeds the {data.num_train()} "
                            "training images", field="batch_size")
    return min(full, cfg.steps_per_epoch or full)


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


def _rank_digests(net: nn.Module, ranks: Ranks) -> list[str]:
    """Every rank's parameter digest; ranks that drifted apart are an error, not a silent average."""
    digests = [str(d) for d in ranks.all_gather(weight_digest(net))]
    if len(set(digests)) != 1:
        raise RuntimeFailure(f"distributed ranks ended with different weights ({len(set(digests))} distinct digests)")
    return digests


def _train_epoch(run: Run, epoch: int, ranks: Ranks, progress: bool) -> dict[str, Any]:
    """Train one epoch; its log record (loss, learning rate, speed, and the run's own fields)."""
    cfg = run.cfg
    torch.manual_seed(drop_path_seed(cfg.seed, epoch, ranks.rank))
    run.model.train()
    total_loss, seen, t0 = 0.0, 0, time.perf_counter()
    bar = progress_bar(progress and ranks.main, f"epoch {epoch + 1}/{cfg.epochs}",
                       after="loss {task.fields[loss]:.3f}", transient=True)
    with bar:
        task = bar.add_task("train", total=run.steps, loss=float("nan"))
        batches = run.data.train_batches(cfg.batch_size, epoch, cfg.seed, ranks.rank, ranks.world)
        for step, (x, y) in zip(range(run.steps), batches):
            total_loss += _train_step(run, epoch, step, x, y, ranks) * len(y)
            seen += len(y)
            bar.update(task, advance=1, loss=total_loss / seen)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "lr": run.optimizer.param_groups[0]["lr"],
            "images_per_s": seen * ranks.world / seconds, "seconds": seconds, **run.epoch_fields(epoch)}


def _train_step(run: Run, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, ranks: Ranks) -> float:
    """One optimizer step on the run's loss (:meth:`Run.loss`); its value."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch * run.steps + step, run.steps)
    x, y = x.to(ranks.device, non_blocking=True), y.to(ranks.device, non_blocking=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ranks.device.type == "cuda"):
        loss = run.loss(x, y, epoch, step, ranks.rank)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return float(loss.detach())


def _record_epoch(out: Path, run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Add the hold-out accuracies to ``record``; write the epoch's checkpoint, then its log line.

    A diverged epoch (a loss that is not finite) stops the run with a one-line error and writes nothing: the
    last checkpoint stays the last good epoch, to resume from with other settings.
    """
    if not math.isfinite(record["loss"]):
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the loss is {record['loss']} "
                               f"({run.diverged_hint}); the last checkpoint is the previous epoch's", field="lr")
    record.update(run.holdout_metrics())
    meta = {**run.meta, "data": data_spec(run.data), "epoch": epoch + 1, "metrics": record}
    run.save(out / LAST, meta, _optimizer_tensors(run.optimizer))
    append_json_line(out / LOG, record)


def _trim_log(path: Path, epochs_kept: int) -> None:
    """Drop log lines of epochs that will be trained again (after an interrupted run)."""
    if not path.is_file():
        return
    kept = []
    for ln in path.read_text().splitlines():
        try:
            if loads_json(ln)["epoch"] <= epochs_kept:
                kept.append(ln)
        except (JSONError, KeyError, TypeError):
            continue  # a line torn by the interruption: that epoch is trained again
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))
