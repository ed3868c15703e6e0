"""Top-1/top-5 accuracy of a sub-network with the supernet's weights, on the hold-out or test split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .arch import Arch
from .data import Batch, ImageData
from .errors import SettingsError
from .supernet import ViTResNASSupernet


@dataclass(frozen=True)
class TopKAccuracy:
    """Top-1 and top-5 accuracy of a classifier, in [0, 1], over ``images`` images."""

    top1: float
    top5: float
    images: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON form."""
        return asdict(self)


@torch.inference_mode()
def topk_accuracy(model: nn.Module, batches: Iterable[Batch], device: torch.device | str = "cpu") -> TopKAccuracy:
    """Top-1 and top-5 accuracy of ``model`` (put in eval mode) over ``batches``."""
    model.eval()
    return count_topk(lambda x: model(x.to(device, non_blocking=True)), batches)


def count_topk(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Batch]) -> TopKAccuracy:
    """Top-1 and top-5 accuracy of the logits ``predict`` gives for each batch's images, over ``batches``."""
    correct1 = correct5 = n = 0
    for x, y in batches:
        logits = predict(x)
        y = y.to(logits.device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    return TopKAccuracy(correct1 / max(n, 1), correct5 / max(n, 1), n)


def evaluate_arch(supernet: ViTResNASSupernet, arch: Arch, data: ImageData, split: str = "holdout",
                  batch_size: int = 500, limit: int | None = None) -> TopKAccuracy:
    """Top-1/top-5 accuracy of ``arch`` through its extracted static sub-network, in inference mode."""
    return evaluate_model(supernet.extract(arch), data, split, batch_size, limit)


def evaluate_model(model: nn.Module, data: ImageData, split: str = "holdout", batch_size: int = 500,
                   limit: int | None = None) -> TopKAccuracy:
    """Top-1/top-5 accuracy of a static network (extracted or fine-tuned) on ``split``, in inference mode."""
    if batch_size < 1:
        raise SettingsError(f"batch_size {batch_size} must be at least 1", field="batch_size")
    if limit is not None and limit < 1:
        raise SettingsError(f"limit {limit} must be at least 1", field="limit")
    device = next(model.parameters()).device
    return topk_accuracy(model.eval(), data.eval_batches(split, batch_size, limit), device)
