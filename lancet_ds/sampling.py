"""Seeded sampling from a stream, shared by the stages (the fitting set, the replay sample)."""

from __future__ import annotations

import random
from typing import Iterable, TypeVar

T = TypeVar("T")


def reservoir(samples: Iterable[T], k: int, seed: int) -> list[T]:
    """k samples drawn uniformly from a stream (Algorithm R), in stream order; the same seed, the same draw."""
    rng = random.Random(seed)
    kept: list[tuple[int, T]] = []
    for i, s in enumerate(samples):
        if len(kept) < k:
            kept.append((i, s))
        else:
            j = rng.randint(0, i)
            if j < k:
                kept[j] = (i, s)
    return [s for _, s in sorted(kept, key=lambda x: x[0])]
