"""Fitness of a candidate: top-1 on the checkpoint's hold-out split with the supernet's weights, in the
precision the network will run in.

Each arch is run through its extracted static sub-network in inference mode
(:func:`vitres_deploy.evaluate.evaluate_arch`), never on the test split; in int8 (a ``calibration`` is given),
through its static int8 ONNX calibrated on training images, in ONNX Runtime
(:func:`vitres_deploy.quantized.evaluate_arch_int8`; a :class:`~vitres_deploy.arch.MixedArch` with only its
int8 stages quantized). Results are cached by arch hash (one fitness holds one
precision and calibration). Under ``torchrun`` the archs still to evaluate are dealt out to the ranks
round-robin and the results gathered, so every rank holds every result, the same as one process computes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import Arch
from ..data import ImageData
from ..distributed import Ranks
from ..evaluate import TopKAccuracy, evaluate_arch
from ..quantized import Calibration, evaluate_arch_int8
from ..supernet import ViTResNASSupernet


class Fitness:
    """Hold-out accuracy of archs, cached by hash, evaluated across ``ranks`` (in int8 with ``calibration``)."""

    def __init__(self, supernet: ViTResNASSupernet, data: ImageData, ranks: Ranks | None = None,
                 batch_size: int = 500, limit: int | None = None, calibration: Calibration | None = None) -> None:
        self.ranks = ranks or Ranks()
        self.supernet = supernet.to(self.ranks.device).eval()
        self.data, self.batch_size, self.limit = data, batch_size, limit
        self.calibration = calibration
        self.cache: dict[str, TopKAccuracy] = {}

    def evaluate(self, archs: Sequence[Arch]) -> list[TopKAccuracy]:
        """Hold-out accuracy of each arch (in order); uncached archs are sharded across the ranks."""
        todo = list(dict.fromkeys(a.hash for a in archs if a.hash not in self.cache))
        by_hash = {a.hash: a for a in archs}
        self.cache.update(self.ranks.shard_map(todo, lambda h: self._run(by_hash[h])))
        return [self.cache[a.hash] for a in archs]

    def _run(self, arch: Arch) -> TopKAccuracy:
        if self.calibration is not None:
            return evaluate_arch_int8(self.supernet, arch, self.data, self.calibration, "holdout", self.batch_size,
                                      self.limit)
        return evaluate_arch(self.supernet, arch, self.data, "holdout", self.batch_size, self.limit)
