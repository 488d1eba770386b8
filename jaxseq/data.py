"""Length bucketing: batches of similar lengths padded to a few fixed lengths (host-side, numpy).

Under ``jit`` every distinct batch shape is one compilation, and a masked scan costs
``B * T_padded`` steps whatever the lengths. Random batches padded to their own longest member
waste steps on a skewed length distribution and produce one shape per distinct maximum; padding
everything to the global maximum gives one shape but wastes more. :func:`bucket_by_length` groups
examples of similar length and pads each batch to its bucket's upper boundary, so padding is small
and the set of shapes is fixed (one per bucket, plus one per bucket for a last partial batch unless
``drop_last``).

>>> lengths = [3, 9, 4, 10, 2, 8]
>>> batches = list(bucket_by_length(lengths, batch_size=2, boundaries=(4, 10), shuffle=False))
>>> [(b.indices.tolist(), b.padded_length) for b in batches]
[([0, 2], 4), ([4], 4), ([1, 3], 10), ([5], 10)]
>>> round(padding_fraction(lengths, batches), 3)
0.143
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Optional

import numpy as np


class Batch(NamedTuple):
    """One batch: which examples, and the time length to pad them to."""

    indices: np.ndarray   # int [b]: positions in the dataset
    padded_length: int    # >= the length of every member


def _host_lengths(lengths: Sequence[int]) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-D integer sequence, got {lengths.dtype} "
                         f"{lengths.shape}")
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"lengths must be >= 0, found {int(lengths.min())}")
    return lengths


def bucket_boundaries(lengths: Sequence[int], num_buckets: int, multiple: int = 1) -> tuple[int, ...]:
    """The (at most) ``num_buckets`` upper boundaries that minimise the total padding.

    Padding every example to its bucket's boundary, the total padding is
    ``sum(boundary(b) - length(b))``; the optimum over boundaries that are multiples of ``multiple``
    (the last one covers the longest example) is found by dynamic programming over the distinct
    rounded lengths. Fewer boundaries come back when there are fewer distinct rounded lengths.

    >>> bucket_boundaries([1, 2, 3, 4, 5, 6, 7, 100], num_buckets=2)
    (7, 100)
    >>> bucket_boundaries([1, 2, 3, 4, 5, 6, 7, 100], num_buckets=3, multiple=4)
    (4, 8, 100)
    """
    lengths = _host_lengths(lengths)
    if num_buckets < 1 or multiple < 1:
        raise ValueError(f"num_buckets and multiple must be >= 1, got {num_buckets}, {multiple}")
    if not lengths.size:
        return ()
    rounded = -(-np.maximum(lengths, 1) // multiple) * multiple
    values, counts = np.unique(rounded, return_counts=True)
    sums = np.bincount(np.searchsorted(values, rounded), weights=lengths, minlength=len(values))
    n_before = np.concatenate([[0], np.cumsum(counts)])       # examples in values[:j]
    s_before = np.concatenate([[0], np.cumsum(sums)])
    # cost[j]: least padding of values[:j] with the buckets so far, the last bound at values[j-1].
    cost = (n_before[1:] * values - s_before[1:]).astype(np.float64)
    cuts = []
    for _ in range(num_buckets - 1):
        # best[j-1]: start i >= 1 of a new last bucket values[i:j] (padded to values[j-1]), or 0
        # to keep the current buckets for values[:j].
        best, new_cost = np.zeros(len(values), np.int64), cost.copy()
        for j in range(2, len(values) + 1):
            i = np.arange(1, j)
            total = cost[i - 1] + ((n_before[j] - n_before[i]) * values[j - 1]
                                   - (s_before[j] - s_before[i]))
            k = int(np.argmin(total))
            if total[k] < cost[j - 1]:
                best[j - 1], new_cost[j - 1] = i[k], total[k]
        cuts.append(best)
        cost = new_cost
    bounds, j = [], len(values)
    for best in reversed(cuts):
        bounds.append(int(values[j - 1]))
        if best[j - 1]:
            j = best[j - 1]
        # best[j-1] == 0 keeps j: this round added no bucket
    bounds.append(int(values[j - 1]))
    return tuple(sorted(set(bounds)))


def bucket_by_length(lengths: Sequence[int], batch_size: int, *,
                     boundaries: Optional[Sequence[int]] = None, num_buckets: int = 8,
                     shuffle: bool = True, seed: int = 0, drop_last: bool = False
                     ) -> Iterator[Batch]:
    """Yield one epoch of batches, each drawn from one length bucket.

    Args:
      lengths: ``[N]`` lengths of the dataset's examples.
      batch_size: examples per batch (the last batch of a bucket may be smaller).
      boundaries: increasing bucket upper bounds; an example goes to the first bucket whose bound is
        ``>=`` its length, and that bound is its batch's ``padded_length``. Default:
        :func:`bucket_boundaries` with ``num_buckets``.
      num_buckets: used when ``boundaries`` is ``None``.
      shuffle: shuffle examples within each bucket and the order of all batches.
      seed: seed of the shuffles (use e.g. ``seed + epoch`` for a new order every epoch).
      drop_last: drop each bucket's last partial batch (then every batch has ``batch_size`` rows).

    Yields:
      :class:`Batch` objects; every example appears exactly once per epoch (unless dropped).

    Raises:
      ValueError: bad ``batch_size`` or ``boundaries``, or a length above the last boundary.
    """
    lengths = _host_lengths(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bounds = np.asarray(bucket_boundaries(lengths, num_buckets) if boundaries is None
                        else boundaries, dtype=np.int64)
    if bounds.ndim != 1 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"boundaries must be strictly increasing, got {bounds.tolist()}")
    if lengths.size and (not bounds.size or lengths.max() > bounds[-1]):
        raise ValueError(f"a length of {int(lengths.max())} exceeds the last boundary "
                         f"{bounds[-1] if bounds.size else None}")
    rng = np.random.default_rng(seed)
    bucket_of = np.searchsorted(bounds, lengths, side="left")
    batches = []
    for bucket, bound in enumerate(bounds.tolist()):
        members = np.flatnonzero(bucket_of == bucket)
        if shuffle:
            members = rng.permutation(members)
        stop = len(members) - len(members) % batch_size if drop_last else len(members)
        batches += [Batch(members[i:i + batch_size], bound) for i in range(0, stop, batch_size)]
    order = rng.permutation(len(batches)) if shuffle else range(len(batches))
    for i in order:
        yield batches[i]


def random_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                   seed: int = 0, drop_last: bool = False) -> Iterator[Batch]:
    """The usual baseline: random batches, each padded to its own longest member."""
    lengths = _host_lengths(lengths)
    order = np.random.default_rng(seed).permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for i in range(0, stop, batch_size):
        members = order[i:i + batch_size]
        yield Batch(members, int(lengths[members].max()))


def padding_fraction(lengths: Sequence[int], batches: Iterable[Batch]) -> float:
    """Fraction of padded row-steps: ``1 - valid tokens / sum(rows * padded_length)``."""
    lengths = _host_lengths(lengths)
    valid = padded = 0
    for batch in batches:
        valid += int(lengths[batch.indices].sum())
        padded += len(batch.indices) * batch.padded_length
    return 1.0 - valid / padded if padded else 0.0


def batch_shapes(batches: Iterable[Batch]) -> set[tuple[int, int]]:
    """Distinct ``(rows, padded_length)`` shapes: the number of compilations a jitted step needs."""
    return {(len(b.indices), b.padded_length) for b in batches}
