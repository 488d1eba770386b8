"""Length bucketing: batches of similar lengths padded to a few fixed lengths (host-side, numpy).

Under ``jit`` every distinct batch shape is one compilation, and a masked scan costs
``B * T_padded`` steps whatever the lengths. Random batches padded to their own longest member
waste steps on a skewed length distribution and produce one shape per distinct maximum; padding
everything to the global maximum gives one shape but wastes more. :func:`bucket_by_length` groups
examples of similar length and pads each batch to its bucket's upper boundary, so padding is small
and the set of shapes is fixed (one per bucket, plus one per bucket for a last partial batch unless
``drop_last``).

Examples:
    >>> lengths = [3, 9, 4, 10, 2, 8]
    >>> batches = list(bucket_by_length(lengths, batch_size=2, boundaries=(4, 10), shuffle=False))
    >>> [(b.indices.tolist(), b.padded_length) for b in batches]
    [([0, 2], 4), ([4], 4), ([1, 3], 10), ([5], 10)]
    >>> round(padding_fraction(lengths, batches), 3)
    0.143
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from jaxseq.validation import host_array, rejects_torch


class Batch(NamedTuple):
    """One batch: which examples, and the time length to pad them to."""

    indices: np.ndarray   # int [b]: positions in the dataset
    padded_length: int    # >= the length of every member


def _host_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    values = host_array(lengths, "lengths")
    if values.size == 0:          # an empty list is float to numpy
        values = values.astype(np.int64)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-D integer sequence, got {values.dtype} "
                         f"{values.shape}")
    if values.size and values.min() < 0:
        raise ValueError(f"lengths must be >= 0, found {int(values.min())}")
    return values


def bucket_boundaries(lengths: Sequence[int] | np.ndarray, num_buckets: int,
                      multiple: int = 1) -> tuple[int, ...]:
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
    lens = _host_lengths(lengths)
    if num_buckets < 1 or multiple < 1:
        raise ValueError(f"num_buckets and multiple must be >= 1, got {num_buckets}, {multiple}")
    if not lens.size:
        return ()
    rounded = -(-np.maximum(lens, 1) // multiple) * multiple
    values, counts = np.unique(rounded, return_counts=True)
    sums = np.bincount(np.searchsorted(values, rounded), weights=lens, minlength=len(values))
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


@rejects_torch
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
    lens = _host_lengths(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bounds = np.asarray(bucket_boundaries(lens, num_buckets) if boundaries is None
                        else boundaries, dtype=np.int64)
    if bounds.ndim != 1 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"boundaries must be strictly increasing, got {bounds.tolist()}")
    if lens.size and (not bounds.size or lens.max() > bounds[-1]):
        raise ValueError(f"a length of {int(lens.max())} exceeds the last boundary "
                         f"{bounds[-1] if bounds.size else None}")
    rng = np.random.default_rng(seed)
    bucket_of = np.searchsorted(bounds, lens, side="left")
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
    lens = _host_lengths(lengths)
    order = np.random.default_rng(seed).permutation(len(lens)) if shuffle else np.arange(len(lens))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for i in range(0, stop, batch_size):
        members = order[i:i + batch_size]
        yield Batch(members, int(lens[members].max()))


def padding_fraction(lengths: Sequence[int], batches: Iterable[Batch]) -> float:
    """Fraction of padded row-steps: ``1 - valid tokens / sum(rows * padded_length)``."""
    lens = _host_lengths(lengths)
    valid = padded = 0
    for batch in batches:
        valid += int(lens[batch.indices].sum())
        padded += len(batch.indices) * batch.padded_length
    return 1.0 - valid / padded if padded else 0.0


def batch_shapes(batches: Iterable[Batch]) -> set[tuple[int, int]]:
    """Distinct ``(rows, padded_length)`` shapes: the number of compilations a jitted step needs."""
    return {(len(b.indices), b.padded_length) for b in batches}


# --------------------------------------------------------------------------------------------
# Packed rows: many sequences end to end in rows of one fixed length
# --------------------------------------------------------------------------------------------
class RowPacking(NamedTuple):
    """Where every sequence (or piece of one) of a data set sits in rows of ``row_length`` steps.

    Made by :func:`pack_rows`. Entry ``i`` describes piece ``i``: a whole sequence, or with
    ``split_long`` a chunk of one. Pieces are ordered by ``(source, start)``, so without
    splitting piece ``i`` is sequence ``i``. Within a row, pieces are segments ``1, 2, ...`` in
    the order they were placed.
    """

    row: np.ndarray         # int [P]: the row of each piece
    segment: np.ndarray     # int [P]: its segment number in that row (1-based)
    offset: np.ndarray      # int [P]: its first time step in that row
    length: np.ndarray      # int [P]: its length
    source: np.ndarray      # int [P]: the sequence it comes from
    start: np.ndarray       # int [P]: where in that sequence it starts (0 unless split)
    num_rows: int
    row_length: int
    max_segments: int       # most segments in any row (the static ``max_segments`` to use)

    @property
    def density(self) -> float:
        """Fraction of the rows' steps that hold a real token."""
        return float(self.length.sum()) / max(self.num_rows * self.row_length, 1)

    def _pieces(self, rows: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, pieces)``: the rows asked for and the pieces in them (batch order, then slot)."""
        picked = np.arange(self.num_rows) if rows is None else np.asarray(rows, np.int64)
        if picked.ndim != 1 or (picked.size and (picked.min() < 0 or picked.max() >= self.num_rows)):
            raise ValueError(f"rows must be a 1-D array of row indices in [0, {self.num_rows}), got "
                             f"{picked.tolist() if picked.size < 20 else picked.shape}")
        position = np.full(self.num_rows, -1)
        position[picked] = np.arange(len(picked))
        pieces = np.flatnonzero(position[self.row] >= 0)
        order = np.lexsort((self.segment[pieces], position[self.row[pieces]]))
        return picked, pieces[order]

    def segment_ids(self, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """``int32 [len(rows), row_length]`` segment ids of the given rows (default: all)."""
        picked, pieces = self._pieces(rows)
        position = np.empty(self.num_rows, np.int64)
        position[picked] = np.arange(len(picked))
        ids = np.zeros((len(picked), self.row_length), np.int32)
        for p in pieces:
            b, o = position[self.row[p]], self.offset[p]
            ids[b, o:o + self.length[p]] = self.segment[p]
        return ids

    @rejects_torch
    def pack(self, sequences: Sequence[Any], rows: Optional[Sequence[int]] = None, *,
             padding_value: Any = 0) -> np.ndarray:
        """Lay per-token data out in rows: ``sequences[i] [L_i, *F] -> [len(rows), row_length, *F]``.

        Use it for the inputs and for per-token targets alike (e.g. next-token ids); padding
        steps hold ``padding_value``.
        """
        picked, pieces = self._pieces(rows)
        self._check_sequences(sequences)
        first = np.asarray(sequences[int(self.source[pieces[0]])]) if pieces.size else np.zeros(0)
        out = np.full((len(picked), self.row_length) + first.shape[1:], padding_value, first.dtype)
        position = np.empty(self.num_rows, np.int64)
        position[picked] = np.arange(len(picked))
        for p in pieces:
            seq = np.asarray(sequences[int(self.source[p])])
            b, o, n, s = position[self.row[p]], self.offset[p], self.length[p], self.start[p]
            out[b, o:o + n] = seq[s:s + n]
        return out

    @rejects_torch
    def pack_per_sequence(self, values: Any, rows: Optional[Sequence[int]] = None, *,
                          fill: Any = 0) -> np.ndarray:
        """Per-sequence data (labels...) per segment: ``values [N, *F] -> [len(rows), S, *F]``.

        ``S`` is :attr:`max_segments`; slots a row does not use hold ``fill`` (mask them with
        ``jaxseq.segment_lengths(ids, S) > 0``).
        """
        values = np.asarray(values)
        picked, pieces = self._pieces(rows)
        position = np.empty(self.num_rows, np.int64)
        position[picked] = np.arange(len(picked))
        out = np.full((len(picked), self.max_segments) + values.shape[1:], fill, values.dtype)
        out[position[self.row[pieces]], self.segment[pieces] - 1] = values[self.source[pieces]]
        return out

    @rejects_torch
    def unpack_per_sequence(self, per_segment: Any, rows: Optional[Sequence[int]] = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Map per-segment results back to the pieces they belong to.

        Args:
          per_segment: ``[len(rows), S', *F]`` with ``S' >= max segments of those rows``, e.g. a
            layer's ``h_n[-1]`` moved to ``[B, S, H]``, or :func:`jaxseq.segment_last`.
          rows: the rows that ``per_segment`` covers, in its batch order (default: all rows).

        Returns:
          ``(pieces, values)``: the piece indices held by those rows, in increasing order (without
          splitting, piece ``i`` is sequence ``i``), and ``values [len(pieces), *F]`` aligned with
          them. ``values[np.argsort(pieces)]``-style reordering is not needed: they are sorted.
        """
        per_segment = np.asarray(per_segment)
        picked, pieces = self._pieces(rows)
        if per_segment.ndim < 2 or per_segment.shape[0] != len(picked):
            raise ValueError(f"per_segment must be [len(picked)={len(picked)}, S, ...], got "
                             f"{per_segment.shape}")
        need = int(self.segment[pieces].max(initial=0))
        if per_segment.shape[1] < need:
            raise ValueError(f"per_segment has {per_segment.shape[1]} segment slots, but these picked "
                             f"hold up to {need} segments")
        position = np.empty(self.num_rows, np.int64)
        position[picked] = np.arange(len(picked))
        order = np.argsort(pieces)
        pieces = pieces[order]
        return pieces, per_segment[position[self.row[pieces]], self.segment[pieces] - 1]

    def batches(self, rows_per_batch: int, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[np.ndarray]:
        """One epoch of row indices, ``rows_per_batch`` at a time (every batch one static shape
        ``[rows_per_batch, row_length]`` when ``drop_last`` or the rows divide evenly)."""
        if rows_per_batch < 1:
            raise ValueError(f"rows_per_batch must be >= 1, got {rows_per_batch}")
        order = (np.random.default_rng(seed).permutation(self.num_rows) if shuffle
                 else np.arange(self.num_rows))
        stop = self.num_rows - self.num_rows % rows_per_batch if drop_last else self.num_rows
        for i in range(0, stop, rows_per_batch):
            yield order[i:i + rows_per_batch]

    def _check_sequences(self, sequences: Sequence[Any]) -> None:
        count = int(self.source.max(initial=-1)) + 1
        if len(sequences) < count:
            raise ValueError(f"this packing was made for {count} sequences, got {len(sequences)}")


@rejects_torch
def pack_rows(lengths: Sequence[int], row_length: int, *, max_segments: Optional[int] = None,
              split_long: bool = False) -> RowPacking:
    """Pack sequences end to end into rows of ``row_length`` steps (best-fit decreasing).

    Sequences are placed longest first, each into the row with the least room that still fits it
    (and has fewer than ``max_segments`` segments), a new row when none does. Best-fit decreasing
    uses at most ``11/9 OPT + 6/9`` rows (the same bound as first-fit decreasing) and in practice
    reaches a density above 95% when sequences are short next to ``row_length``. The result is
    deterministic for given lengths.

    Args:
      lengths: ``[N]`` sequence lengths (``>= 1``; zero-length sequences are not placed).
      row_length: ``T``, the static time length of every row.
      max_segments: optional cap on sequences per row (bounds the ``S`` axis of per-segment
        outputs); default: no cap.
      split_long: cut sequences longer than ``row_length`` into ``row_length`` pieces (the last one
        shorter), each an independent sequence (no state is carried between pieces); default:
        such a sequence raises.

    Returns:
      A :class:`RowPacking`; its ``density`` is the fraction of real tokens.

    Raises:
      ValueError: a sequence longer than ``row_length`` (without ``split_long``), bad arguments.

    >>> packing = pack_rows([5, 3, 2, 4, 1], row_length=5)
    >>> packing.num_rows, round(packing.density, 2)
    (3, 1.0)
    >>> packing.segment_ids().tolist()
    [[1, 1, 1, 1, 1], [1, 1, 1, 1, 2], [1, 1, 1, 2, 2]]
    """
    lens = _host_lengths(lengths)
    if isinstance(row_length, bool) or not isinstance(row_length, (int, np.integer)) or row_length < 1:
        raise ValueError(f"row_length must be an integer >= 1, got {row_length!r}")
    if max_segments is not None and (not isinstance(max_segments, (int, np.integer))
                                     or max_segments < 1):
        raise ValueError(f"max_segments must be an integer >= 1 or None, got {max_segments!r}")
    too_long = np.flatnonzero(lens > row_length)
    if too_long.size and not split_long:
        raise ValueError(f"sequence {int(too_long[0])} has length {int(lens[too_long[0]])} > "
                         f"row_length={row_length} ({too_long.size} sequences are too long); use a "
                         "longer row_length, or split_long=True to cut them into independent pieces")
    pieces = [(i, s, min(row_length, n - s)) for i, n in enumerate(lens.tolist())
              for s in range(0, n, row_length)]
    source, start, size = (np.asarray([p[k] for p in pieces], np.int64).reshape(-1)
                           for k in range(3))
    cap = max_segments or row_length
    # rooms[r]: rows with r free steps that can take another segment (best fit: smallest r >= n)
    rooms: list[list[int]] = [[] for _ in range(row_length + 1)]
    used: list[int] = []
    segments: list[int] = []
    row = np.zeros(len(size), np.int64)
    slot, offset = np.zeros_like(row), np.zeros_like(row)
    for p in np.argsort(-size, kind="stable"):
        n = int(size[p])
        r = next((r for r in range(n, row_length + 1) if rooms[r]), None)
        if r is None:
            used.append(0)
            segments.append(0)
            b = len(used) - 1
        else:
            b = rooms[r].pop()
        row[p], offset[p], slot[p] = b, used[b], segments[b] + 1
        used[b] += n
        segments[b] += 1
        if segments[b] < cap and used[b] < row_length:
            rooms[row_length - used[b]].append(b)
    return RowPacking(row, slot, offset, size, source, start, len(used), int(row_length),
                      max(segments, default=1))
