"""The one timing core: items timed in interleaved passes until each one's statistic is stable.

Tables (every entry), validation (whole networks), the drift check and the export's latency gate all time
through :func:`time_until_stable`, so they measure the same statistic with the same protocol.

**The statistic.** On a shared machine the low end of a latency distribution is the device; the median is
whatever the neighbours do (measured here: over eight 1-second trials of one network the minimum moved
±3% while the median moved ±20%). So a pass is cut into *windows* of about ``window_s`` of wall time, each
window is summarised by its median (one disturbed iteration does not move it), and a pass by its quietest
window: the *window floor*. An item's latency is the lowest window floor over its passes, and its
interval is [lowest, second lowest] pass floor: two passes at different times of the run that found the
same quiet level.

**Stopping.** Every item is timed in at least ``min_rounds`` passes and at most ``rounds``; an item leaves
the schedule once its interval is narrower than ``stable_within`` (relative). Passes alternate their
order (odd passes run backwards), so slow drift of the machine meets every item alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def window_floor(samples_ms: Sequence[float], seconds: float, window_s: float) -> float:
    """The lowest median over consecutive windows of about ``window_s`` seconds of a pass's samples.

    ``seconds`` is the wall time the samples took; a window holds at least 3 samples, and a pass too short
    for two windows is one window (its median).
    """
    n = len(samples_ms)
    if n == 0:
        raise ValueError("no timing samples")
    per_sample = seconds / n if seconds > 0 else 0.0
    size = max(3, math.ceil(window_s / per_sample)) if per_sample > 0 else n
    if n < 2 * size:
        return float(np.median(samples_ms))
    a = np.asarray(samples_ms[: n - n % size], dtype=np.float64).reshape(-1, size)
    return float(np.median(a, axis=1).min())


@dataclass(frozen=True)
class Stability:
    """An item's estimate after some passes: the lowest pass floor and how far the next one is from it."""

    floor_ms: float
    second_ms: float | None
    passes: int

    @property
    def spread(self) -> float:
        """Relative distance of the second-lowest pass floor from the lowest (inf with one pass)."""
        if self.second_ms is None:
            return math.inf
        return (self.second_ms - self.floor_ms) / self.floor_ms

    @classmethod
    def of(cls, floors: Sequence[float]) -> Stability:
        """The estimate from the pass floors of one item."""
        if not floors:
            raise ValueError("no passes")
        low = sorted(floors)
        return cls(low[0], low[1] if len(low) > 1 else None, len(low))

    def stable(self, within: float, min_rounds: int) -> bool:
        """True once at least ``min_rounds`` passes were timed and the two lowest agree within ``within``."""
        return self.passes >= min_rounds and self.spread <= within


def time_until_stable(
    items: Mapping[str, Callable[[], float]],
    *,
    min_rounds: int,
    max_rounds: int,
    stable_within: float,
    done: Mapping[str, Sequence[float]] | None = None,
    on_pass: Callable[[str, list[float]], None] | None = None,
    deadline_s: float | None = None,
) -> dict[str, list[float]]:
    """Time each item in interleaved passes until its two lowest pass floors agree, and return every item's floors.

    ``items[name]()`` times one pass of that item (a fresh runner, warm-up, timed windows) and returns the
    pass's window floor in ms. ``done`` holds floors measured before (a resumed table). After pass ``r``
    an item is timed again only if it has fewer than ``min_rounds`` passes, or is not yet stable and has
    fewer than ``max_rounds``. ``on_pass(name, floors)`` is called after each pass of an item;
    ``deadline_s`` (seconds from now) ends the schedule after the pass in progress.
    """
    floors = {name: list((done or {}).get(name, ())) for name in items}
    start = time.monotonic()
    for r in range(max_rounds):
        order = [name for name in items if len(floors[name]) <= r
                 and not Stability.of(floors[name] or [math.inf]).stable(stable_within, min_rounds)]
        if not order:
            break
        for name in reversed(order) if r % 2 else order:
            floors[name].append(items[name]())
            if on_pass is not None:
                on_pass(name, floors[name])
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                return floors
    return floors
