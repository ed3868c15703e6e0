"""Small statistics for judging predictions: MAPE, share within a tolerance, Kendall's tau-b, Spearman's rho."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError("need two non-empty sequences of the same length")


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    """Signed relative errors ``(predicted - measured) / measured``."""
    _check(predicted, measured)
    return [(p - m) / m for p, m in zip(predicted, measured)]


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    errs = relative_errors(predicted, measured)
    return 100.0 * sum(abs(e) for e in errs) / len(errs)


def max_abs_error_pct(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Largest absolute relative error, in percent."""
    return 100.0 * max(abs(e) for e in relative_errors(predicted, measured))


def within(predicted: Sequence[float], measured: Sequence[float], tolerance: float) -> float:
    """Fraction of predictions whose relative error is at most ``tolerance`` (0.10 for ±10%)."""
    errs = relative_errors(predicted, measured)
    return sum(abs(e) <= tolerance + 1e-12 for e in errs) / len(errs)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either sequence handled); nan when one sequence is constant."""
    _check(x, y)
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else math.nan


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan when one sequence is constant."""
    _check(x, y)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    return pearson(ranks(x), ranks(y))


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    s = sorted(values)
    if not s:
        raise ValueError("median of an empty sequence")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
