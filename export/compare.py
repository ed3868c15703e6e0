"""A framework-free comparator of model outputs (numpy only), with Polygraphy's element-wise rule.

An element fails only if its absolute error exceeds ``atol`` *and* its relative error exceeds ``rtol``
(relative to the reference), as in Polygraphy's ``check_error_stat=elemwise``. Beside that rule the
comparison reports the maximum absolute and relative errors, the smallest per-sample cosine similarity,
top-1 agreement (argmax over the last axis) and NaN/Inf counts, and turns each into PASS/FAIL against
:class:`Tolerances`.

A limit of ``None`` is off. int8 has no element-wise rule by default (quantization moves every logit by a
few quantization steps, so no ``atol`` separates a good int8 model from a broken one); it is held to the
*mean* per-sample cosine similarity of the batch, a per-sample floor, top-1 agreement and NaN/Inf instead.
The mean, not the smallest value, is what separates them: over the 6,000 hold-out images of a ``fmnist``
arch, a well calibrated int8 model had 0.25% of its images below cosine 0.99 (a 32-image batch holds one
8% of the time) and a mean of 0.9993; one losing 3.8 points of top-1 had a mean of 0.971.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Denominator floor for relative errors: a zero reference gives a huge but finite relative error.
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Tolerances:
    """Limits of a numerics check: element-wise ``atol``/``rtol`` (``None``: that limit is off; an element fails
    when it is beyond every limit that is on, and none fails with both off), the smallest per-sample cosine,
    top-1 agreement, and the smallest mean per-sample cosine of the batch (``None``: off)."""

    atol: float | None
    rtol: float | None
    min_cosine: float
    min_top1_agreement: float
    min_mean_cosine: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """Plain-JSON form."""
        return asdict(self)

    @property
    def elementwise(self) -> str:
        """The element-wise rule in words (``"atol 0.0001 and rtol 0.001"``); empty when it is off."""
        return " and ".join(f"{name} {value:g}" for name, value in (("atol", self.atol), ("rtol", self.rtol))
                            if value is not None)


# Defaults per precision. fp32: errors of a different kernel order (~1e-6 relative on logits) pass with a
# wide margin; fp16: ~1e-3 relative error of half-precision activations; int8 (see the module docstring): no
# element-wise rule, the logits' direction kept on average (mean cosine >= 0.99), no image's output turned
# around (cosine >= 0.5 each), most predictions unchanged.
DEFAULT_TOLERANCES = {
    "fp32": Tolerances(atol=1e-4, rtol=1e-3, min_cosine=0.99999, min_top1_agreement=0.99),
    "fp16": Tolerances(atol=2e-2, rtol=2e-2, min_cosine=0.999, min_top1_agreement=0.97),
    "int8": Tolerances(atol=None, rtol=None, min_cosine=0.5, min_top1_agreement=0.9, min_mean_cosine=0.99),
}


@dataclass(frozen=True)
class Comparison:
    """Result of comparing an output array with its reference; ``failures`` lists why it failed ([] = PASS)."""

    shape: tuple[int, ...]
    elements: int
    max_abs: float
    mean_abs: float
    max_rel: float
    failed_elements: int
    min_cosine: float
    mean_cosine: float
    top1_agreement: float
    nan: int
    inf: int
    tolerances: Tolerances
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every criterion holds."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the tolerances under ``limits``)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["limits"] = d.pop("tolerances")
        d["passed"] = self.passed
        return d


def cosine_per_sample(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (first axis) flattened; two all-zero samples count as 1."""
    a = reference.reshape(reference.shape[0], -1).astype(np.float64) if reference.ndim else reference.reshape(1, 1)
    b = actual.reshape(actual.shape[0], -1).astype(np.float64) if actual.ndim else actual.reshape(1, 1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))


def compare(reference: np.ndarray, actual: np.ndarray, tolerances: Tolerances) -> Comparison:
    """Compare ``actual`` with ``reference`` (same shape) under ``tolerances``.

    NaN or Inf in ``actual`` always fails; statistics are computed over the finite elements.
    """
    reference = np.asarray(reference)
    actual = np.asarray(actual)
    if reference.shape != actual.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, actual {actual.shape}")
    ref = reference.astype(np.float64)
    out = actual.astype(np.float64)
    nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
    finite = np.isfinite(out) & np.isfinite(ref)
    abs_err = np.where(finite, np.abs(out - ref), 0.0)
    rel_err = abs_err / np.maximum(np.abs(ref), _TINY)
    beyond = np.full(ref.shape, bool(tolerances.elementwise))
    for error, limit in ((abs_err, tolerances.atol), (rel_err, tolerances.rtol)):
        if limit is not None:
            beyond &= error > limit
    failed = int(beyond.sum()) + nan + inf
    cos = cosine_per_sample(np.where(finite, ref, 0.0), np.where(finite, out, 0.0))
    min_cos = float(cos.min()) if cos.size else 1.0
    mean_cos = float(cos.mean()) if cos.size else 1.0
    if ref.ndim >= 1 and ref.shape[-1] > 1 and ref.size:
        top1 = float((ref.argmax(axis=-1) == np.where(finite, out, -np.inf).argmax(axis=-1)).mean())
    else:
        top1 = 1.0
    failures = []
    if nan or inf:
        failures.append(f"{nan} NaN and {inf} Inf values")
    if failed - nan - inf > 0:
        failures.append(f"{failed - nan - inf} of {ref.size} elements beyond {tolerances.elementwise} "
                        f"(max abs error {abs_err.max():.3g}, max rel {rel_err.max():.3g})")
    if tolerances.min_mean_cosine is not None and mean_cos < tolerances.min_mean_cosine:
        failures.append(f"mean cosine similarity {mean_cos:.6f} below {tolerances.min_mean_cosine:g}")
    if min_cos < tolerances.min_cosine:
        failures.append(f"cosine similarity {min_cos:.6f} below {tolerances.min_cosine:g}")
    if top1 < tolerances.min_top1_agreement:
        failures.append(f"top-1 agreement {top1:.2%} below {tolerances.min_top1_agreement:.2%}")
    return Comparison(
        shape=tuple(int(s) for s in ref.shape),
        elements=int(ref.size),
        max_abs=float(abs_err.max()) if ref.size else 0.0,
        mean_abs=float(abs_err.mean()) if ref.size else 0.0,
        max_rel=float(rel_err.max()) if ref.size else 0.0,
        failed_elements=failed,
        min_cosine=min_cos,
        mean_cosine=mean_cos,
        top1_agreement=top1,
        nan=nan,
        inf=inf,
        tolerances=tolerances,
        failures=failures,
    )
