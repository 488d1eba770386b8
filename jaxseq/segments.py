"""Packed rows: several sequences end to end in one row, told apart by ``segment_ids``.

A padded batch spends ``B * T`` steps whatever the lengths; under ``jit`` shapes are static, so
the steps spent on padding cannot be skipped. Packing several short sequences into each row of a
fixed length ``T`` keeps one static shape and makes nearly every step a real token.

``segment_ids`` is an integer array in the layout of the data's first two axes (``[B, T]``, or
``[T, B]`` time-major). Each row holds segments ``1, 2, ..., k`` as contiguous runs starting at
``t = 0``, then ``0`` (padding) to its end::

    row:          a1 a2 a3 b1 b2 c1 c2 c3 c4 .  .
    segment_ids:  1  1  1  2  2  3  3  3  3  0  0

Every segment is an independent sequence: the recurrent layers (``segment_ids=`` on
:class:`jaxseq.LSTM` and :func:`jaxseq.functional.recurrent`) start each one from its own initial
state and read it backwards within itself in the reverse direction. ``max_segments=S`` (static)
shapes everything per segment, ``[B, S, ...]``; segment ``s`` of row ``b`` is entry ``[b, s-1]``.

This module holds the per-segment twins of the per-sequence helpers (:func:`segment_last`,
:func:`segment_sum`, :func:`segment_mean`, :func:`segment_max`, :func:`segment_lengths`,
:func:`segment_broadcast`, the per-step masks :func:`segment_starts` and :func:`segment_ends`)
and the validation of ``segment_ids``. Host-side packing of a data set
into rows is :func:`jaxseq.data.pack_rows`.

>>> import jax.numpy as jnp
>>> ids = jnp.array([[1, 1, 2, 2, 2, 0], [1, 2, 3, 0, 0, 0]])          # [B=2, T=6]
>>> segment_lengths(ids, max_segments=3, batch_first=True).tolist()
[[2, 3, 0], [1, 1, 1]]
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxseq.validation import check_size, is_concrete, layout_hint, rejects_torch, traced_policy

_LAYOUT_RULE = ("each row must hold segments 1, 2, ..., k as contiguous runs starting at t = 0, "
                "then 0 (padding) to its end")


def _problems(ids: Any, max_segments: int) -> tuple[Any, Any]:
    """``(out_of_range, broken_layout)`` bool ``[T, B]`` for time-major ``ids`` (numpy or jax)."""
    xp = np if isinstance(ids, np.ndarray) else jnp
    prev = xp.concatenate([xp.zeros_like(ids[:1]), ids[:-1]])
    out_of_range = (ids < 0) | (ids > max_segments)
    first = xp.arange(ids.shape[0])[:, None] == 0
    # a nonzero id continues its segment or opens the next one, and never follows padding
    broken = (ids != 0) & (((ids - prev) != 0) & ((ids - prev) != 1) | ((prev == 0) & ~first))
    return out_of_range, broken


@rejects_torch
def check_segment_ids(segment_ids: Any, max_len: int, batch_size: Optional[int],
                      max_segments: Optional[int], *, batch_first: bool = False,
                      name: str = "segment_ids") -> tuple[jax.Array, int]:
    """Validate ``segment_ids`` and return it time-major as ``int32 [T, B]``, with ``S``.

    Args:
      segment_ids: integer ``[T, B]`` (``[B, T]`` with ``batch_first``).
      max_len: ``T``.
      batch_size: expected ``B``; ``None`` skips that check.
      max_segments: ``S``, a static int ``>= 1``; ``None`` takes the largest id when the ids are
        concrete (an error when they are traced).
      batch_first: layout of ``segment_ids``.
      name: argument name used in messages.

    Raises:
      TypeError: not an integer dtype, or ``max_segments`` not an int.
      ValueError: wrong shape, ``max_segments`` missing under ``jit``, or (concrete ids) an id
        outside ``[0, S]`` or a row that is not ``1..k`` runs from ``t = 0`` then padding. Under
        :func:`jaxseq.checked` the same value checks run on traced ids.

    >>> check_segment_ids(jnp.array([[1, 2, 0]]), 3, 1, None, batch_first=True)[1]
    2
    >>> check_segment_ids(jnp.array([[1, 0, 2]]), 3, 1, 2, batch_first=True)
    Traceback (most recent call last):
    ...
    ValueError: `segment_ids`: each row must hold segments 1, 2, ... row 0 breaks this at t = 2 ...
    """
    if not isinstance(segment_ids, jax.Array):
        segment_ids = np.asarray(segment_ids)
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype, got {segment_ids.dtype}")
    layout = "[B, T]" if batch_first else "[T, B]"
    want = (batch_size, max_len) if batch_first else (max_len, batch_size)
    shape = tuple(segment_ids.shape)
    if len(shape) != 2 or any(w is not None and w != g for w, g in zip(want, shape)):
        expected = tuple("B" if w is None else w for w in want)
        hint = "." + layout_hint(batch_first) if len(shape) == 2 and shape == want[::-1] else ""
        raise ValueError(f"`{name}` must have shape {layout} = {expected} (the first two axes of "
                         f"the input), got {shape}{hint}")
    ids = segment_ids.T if batch_first else segment_ids          # [T, B]
    concrete = is_concrete(ids)
    max_segments = check_size(infer_max_segments(ids) if max_segments is None else max_segments,
                              "max_segments")
    if concrete:
        host = np.asarray(ids)
        out_of_range, broken = _problems(host, max_segments)
        for bad, what in ((out_of_range, f"ids must lie in [0, max_segments={max_segments}]"),
                          (broken, _LAYOUT_RULE)):
            if bad.any():
                b, t = np.argwhere(bad.T)[0]                     # first bad row, earliest t
                raise ValueError(f"`{name}`: {what}; row {b} breaks this at t = {t} "
                                 f"(value {host[t, b]})")
    elif traced_policy() == "checkify":
        out_of_range, broken = _problems(ids, max_segments)
        for bad, what in ((out_of_range, f"ids must lie in [0, max_segments={max_segments}]"),
                          (broken, _LAYOUT_RULE)):
            flat = jnp.argmax(bad.T.reshape(-1))
            b, t = flat // max_len, flat % max_len
            checkify.check(~jnp.any(bad), f"`{name}`: {what}; row {{}} breaks this at t = {{}} "
                           "(value {})", b, t, ids[t, b])
    if isinstance(ids, np.ndarray):   # host values: no device op (jnp.asarray compiles one)
        return jax.device_put(ids.astype(np.int32)), max_segments
    return jnp.asarray(ids, jnp.int32), max_segments


def infer_max_segments(segment_ids: Any) -> int:
    """The default ``max_segments``: the largest id (at least 1) of concrete ``segment_ids``.

    Raises:
      ValueError: ``segment_ids`` is traced (under ``jit`` shapes cannot depend on values).
    """
    if not is_concrete(segment_ids):
        raise ValueError("`max_segments` must be given (a static int) when `segment_ids` is "
                         "traced, e.g. under jit")
    return max(int(np.max(np.asarray(segment_ids), initial=0)), 1)


class SegmentLayout(NamedTuple):
    """Where every segment lies in a packed batch (time-major; derived from valid ids)."""

    ids: jax.Array          # int32 [T, B]
    row_lengths: jax.Array  # int32 [B]: non-padding steps of each row
    starts: jax.Array       # int32 [B, S]: first step of each segment (0 when absent)
    sizes: jax.Array        # int32 [B, S]: length of each segment (0 when absent)

    @property
    def max_segments(self) -> int:
        return self.sizes.shape[1]

    def scan_ids(self, direction: int) -> jax.Array:
        """``[T, B]`` ids in the order direction ``direction`` reads the row (1: time-flipped,
        which reads each segment backwards and the segments in reverse order)."""
        return self.ids if direction == 0 else jnp.flip(self.ids, 0)

    def last_steps(self, direction: int) -> jax.Array:
        """``int32 [B, S]``: the scan position of each segment's final step in ``direction``."""
        if direction == 0:
            return jnp.maximum(self.starts + self.sizes - 1, 0)
        return self.ids.shape[0] - 1 - self.starts


def segment_layout(ids: jax.Array, max_segments: int) -> SegmentLayout:
    """The :class:`SegmentLayout` of checked, time-major ``ids [T, B]``."""
    onehot = ids[:, :, None] == jnp.arange(1, max_segments + 1, dtype=ids.dtype)   # [T, B, S]
    sizes = jnp.sum(onehot, axis=0, dtype=jnp.int32)                               # [B, S]
    starts = jnp.cumsum(sizes, axis=1) - sizes
    return SegmentLayout(ids, jnp.sum(sizes, axis=1), starts, sizes)


def sequence_starts(ids: jax.Array) -> jax.Array:
    """``bool [T, B]``: where a segment begins in scan-order ``ids`` (its id differs from the
    previous step's and is not padding)."""
    prev = jnp.concatenate([jnp.zeros_like(ids[:1]), ids[:-1]])
    return (ids != prev) & (ids != 0)


def lengths_as_segments(lengths: jax.Array, max_len: int) -> jax.Array:
    """A padded batch as packed rows of one segment each: ``int32 [T, B]``, 1 where
    ``t < lengths[b]`` (unchecked: ``lengths`` must be valid), so one per-segment scan serves both."""
    return (jnp.arange(max_len)[:, None] < lengths[None, :]).astype(jnp.int32)


def sequence_ends(ids: jax.Array) -> jax.Array:
    """``bool [T, B]``: where a segment has its last step in scan-order ``ids``."""
    return sequence_starts(jnp.flip(ids, 0))[::-1]


def per_step(values: jax.Array, ids: jax.Array) -> jax.Array:
    """``[B, S, F] -> [T, B, F]``: every step gets its segment's entry (entry 0 at padding)."""
    idx = jnp.maximum(ids.T - 1, 0)[:, :, None]                                   # [B, T, 1]
    return jnp.swapaxes(jnp.take_along_axis(values, idx, axis=1), 0, 1)


def take_steps(seq: jax.Array, steps: jax.Array) -> jax.Array:
    """``seq [T, B, F]`` at ``steps [B, S]`` -> ``[B, S, F]``."""
    return jnp.take_along_axis(jnp.swapaxes(seq, 0, 1), steps[:, :, None], axis=1)


# --------------------------------------------------------------------------------------------
# Public per-segment helpers
# --------------------------------------------------------------------------------------------
def _checked_layout(x: jax.Array, segment_ids: Any, max_segments: Optional[int],
                    batch_first: bool) -> tuple[jax.Array, SegmentLayout]:
    """``x`` time-major and the layout of its checked ``segment_ids``."""
    if jnp.ndim(x) < 2:
        raise ValueError(f"`x` must be [T, B, *] or [B, T, *], got shape {jnp.shape(x)}")
    x = jnp.asarray(x)
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    ids, max_segments = check_segment_ids(segment_ids, x.shape[0], x.shape[1], max_segments,
                                          batch_first=batch_first)
    return x, segment_layout(ids, max_segments)


def _checked_ids(segment_ids: Any, max_segments: Optional[int], batch_first: bool
                 ) -> tuple[jax.Array, int]:
    """Checked time-major ``int32 [T, B]`` ids of a ``[T, B]`` / ``[B, T]`` array, and ``S``."""
    if jnp.ndim(segment_ids) != 2:
        raise ValueError(f"`segment_ids` must have shape [T, B] or [B, T], got "
                         f"{jnp.shape(segment_ids)}")
    t_axis = 1 if batch_first else 0
    shape = jnp.shape(segment_ids)
    return check_segment_ids(segment_ids, shape[t_axis], shape[1 - t_axis], max_segments,
                             batch_first=batch_first)


@rejects_torch
def segment_starts(segment_ids: Any, batch_first: bool = False) -> jax.Array:
    """``bool``, the layout of ``segment_ids``: True at the first step of every segment.

    The packed-row twin of ``t == 0`` (e.g. where a decoder's or CRF's state restarts, or a
    begin-of-sequence feature); padding is False.

    Args:
      segment_ids: integer ``[T, B]`` (``[B, T]`` with ``batch_first``), see the module docs.
      batch_first: layout of ``segment_ids`` and of the result.

    Raises:
      ValueError / TypeError: as :func:`check_segment_ids` (a bad layout of concrete ids).

    >>> ids = jnp.array([[1, 1, 2, 3, 3, 0]])                  # [B=1, T=6]
    >>> segment_starts(ids, batch_first=True).astype(int).tolist()
    [[1, 0, 1, 1, 0, 0]]
    """
    return _step_mask(sequence_starts, segment_ids, batch_first)


@rejects_torch
def segment_ends(segment_ids: Any, batch_first: bool = False) -> jax.Array:
    """``bool``, the layout of ``segment_ids``: True at the last step of every segment.

    The packed-row twin of ``t == lengths[b] - 1`` (where :func:`segment_last` reads); padding is
    False. Args and errors as :func:`segment_starts`.

    >>> ids = jnp.array([[1, 1, 2, 3, 3, 0]])                  # [B=1, T=6]
    >>> segment_ends(ids, batch_first=True).astype(int).tolist()
    [[0, 1, 1, 0, 1, 0]]
    """
    return _step_mask(sequence_ends, segment_ids, batch_first)


def _step_mask(mark: Any, segment_ids: Any, batch_first: bool) -> jax.Array:
    """``mark(checked time-major ids)`` in the layout of ``segment_ids`` (ids <= T always hold)."""
    ids, _ = _checked_ids(segment_ids, jnp.shape(segment_ids)[1 if batch_first else 0],
                          batch_first)
    marked = mark(ids)
    return marked.T if batch_first else marked


@rejects_torch
def segment_lengths(segment_ids: Any, max_segments: Optional[int] = None,
                    batch_first: bool = False) -> jax.Array:
    """Length of every segment: ``int32 [B, S]`` (0 for a segment number a row does not hold).

    ``segment_lengths(...) > 0`` marks the segments that exist (e.g. the ``mask`` of a
    per-sequence loss on ``[B, S, C]`` logits).

    Args:
      segment_ids: integer ``[T, B]`` (``[B, T]`` with ``batch_first``), see the module docs.
      max_segments: ``S``; default: the largest id (concrete ids only).
      batch_first: layout of ``segment_ids``.
    """
    ids, max_segments = _checked_ids(segment_ids, max_segments, batch_first)
    return segment_layout(ids, max_segments).sizes


@rejects_torch
def segment_last(output: jax.Array, segment_ids: Any, max_segments: Optional[int] = None,
                 batch_first: bool = False) -> jax.Array:
    """Each segment's output at its own last step: the packed-row twin of :func:`last_valid`.

    Args:
      output: ``[T, B, F...]`` (``[B, T, F...]`` with ``batch_first``).
      segment_ids: integer, in the layout of ``output``'s first two axes.
      max_segments: ``S``; default: the largest id (concrete ids only).
      batch_first: layout of ``output`` and ``segment_ids``.

    Returns:
      ``[B, S, F...]``; zeros for segment numbers a row does not hold. For a bidirectional layer's
      output, the reverse half's summary of a segment is at its *first* step: use ``h_n`` instead.

    >>> out = jnp.arange(6.0).reshape(1, 6, 1)                  # [B=1, T=6, F=1]
    >>> ids = jnp.array([[1, 1, 1, 2, 2, 0]])
    >>> segment_last(out, ids, 3, batch_first=True)[..., 0].tolist()
    [[2.0, 4.0, 0.0]]
    """
    x, layout = _checked_layout(output, segment_ids, max_segments, batch_first)
    picked = take_steps(x.reshape(x.shape[:2] + (-1,)), layout.last_steps(0))
    picked = jnp.where(layout.sizes[:, :, None] > 0, picked, jnp.zeros((), picked.dtype))
    return picked.reshape(picked.shape[:2] + x.shape[2:])


def reduce_per_segment(x: jax.Array, layout: SegmentLayout, reducer, empty) -> jax.Array:
    """Reduce time-major ``x [T, B, F...]`` over each segment's steps with ``jax.ops.segment_*``."""
    T, B = x.shape[:2]
    S = layout.max_segments
    flat = jnp.swapaxes(x, 0, 1).reshape((B * T,) + x.shape[2:])
    ids = layout.ids.T                                                           # [B, T]
    # one bucket per (row, segment); padding goes to an extra bucket that is dropped
    bucket = jnp.where(ids > 0, jnp.arange(B)[:, None] * S + ids - 1, B * S).reshape(-1)
    valid = (ids > 0).reshape((B * T,) + (1,) * (x.ndim - 2))
    flat = jnp.where(valid, flat, jnp.asarray(empty, x.dtype))
    reduced = reducer(flat, bucket, num_segments=B * S + 1)[:B * S]
    return reduced.reshape((B, S) + x.shape[2:])


@rejects_torch
def segment_sum(x: jax.Array, segment_ids: Any, max_segments: Optional[int] = None,
                batch_first: bool = False) -> jax.Array:
    """Sum over each segment's steps: the packed-row twin of :func:`masked_sum`.

    Padding content (NaN included) reaches neither the result nor the gradient.

    Args:
      x: ``[T, B, *]`` (``[B, T, *]`` with ``batch_first``).
      segment_ids: integer, in the layout of ``x``'s first two axes.
      max_segments: ``S``; default: the largest id (concrete ids only).
      batch_first: layout of ``x`` and ``segment_ids``.

    Returns:
      ``[B, S, *]``; 0 for segment numbers a row does not hold.

    >>> x = jnp.array([[1.0, 2.0, 3.0, jnp.nan]])[..., None]    # [B=1, T=4, F=1]
    >>> segment_sum(x, jnp.array([[1, 1, 2, 0]]), 2, batch_first=True)[..., 0].tolist()
    [[3.0, 3.0]]
    """
    x, layout = _checked_layout(x, segment_ids, max_segments, batch_first)
    return reduce_per_segment(x, layout, jax.ops.segment_sum, 0)


@rejects_torch
def segment_mean(x: jax.Array, segment_ids: Any, max_segments: Optional[int] = None,
                 batch_first: bool = False) -> jax.Array:
    """Mean over each segment's steps: the packed-row twin of :func:`masked_mean`.

    Args and layout as :func:`segment_sum`. Returns ``[B, S, *]``; 0 (zero gradient) for segment
    numbers a row does not hold.

    >>> x = jnp.array([[1.0, 3.0, 5.0, jnp.nan]])[..., None]    # [B=1, T=4, F=1]
    >>> segment_mean(x, jnp.array([[1, 1, 2, 0]]), 3, batch_first=True)[..., 0].tolist()
    [[2.0, 5.0, 0.0]]
    """
    x, layout = _checked_layout(x, segment_ids, max_segments, batch_first)
    total = reduce_per_segment(x, layout, jax.ops.segment_sum, 0)
    count = jnp.maximum(layout.sizes, 1).reshape(layout.sizes.shape + (1,) * (total.ndim - 2))
    return total / count.astype(jnp.result_type(total.dtype, float))


@rejects_torch
def segment_max(x: jax.Array, segment_ids: Any, max_segments: Optional[int] = None,
                batch_first: bool = False, *, empty_value: float = 0.0) -> jax.Array:
    """Maximum over each segment's steps: the packed-row twin of :func:`masked_max`.

    Args and layout as :func:`segment_sum`; ``empty_value`` (default 0) is the result, with zero
    gradient, for segment numbers a row does not hold. Returns ``[B, S, *]``.

    >>> x = jnp.array([[1.0, -3.0, -5.0, jnp.inf]])[..., None]  # [B=1, T=4, F=1]
    >>> segment_max(x, jnp.array([[1, 1, 2, 0]]), 3, batch_first=True)[..., 0].tolist()
    [[1.0, -5.0, 0.0]]
    """
    x, layout = _checked_layout(x, segment_ids, max_segments, batch_first)
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.iinfo(x.dtype).min
    best = reduce_per_segment(x, layout, jax.ops.segment_max, lowest)
    present = (layout.sizes > 0).reshape(layout.sizes.shape + (1,) * (best.ndim - 2))
    return jnp.where(present, best, jnp.asarray(empty_value, x.dtype))


@rejects_torch
def segment_broadcast(values: jax.Array, segment_ids: Any, batch_first: bool = False) -> jax.Array:
    """Give every step its segment's entry: ``[B, S, F...] -> [T, B, F...]`` (or ``[B, T, F...]``).

    The inverse of a per-segment reduction, e.g. a per-sequence embedding added to every token, or
    a per-sequence dropout mask. Padding steps get 0.

    >>> vals = jnp.array([[10.0, 20.0]])                       # [B=1, S=2]
    >>> segment_broadcast(vals, jnp.array([[1, 1, 2, 0]]), batch_first=True).tolist()
    [[10.0, 10.0, 20.0, 0.0]]
    """
    values = jnp.asarray(values)
    if values.ndim < 2:
        raise ValueError(f"`values` must be [B, S, *], got shape {values.shape}")
    shape = jnp.shape(segment_ids)
    if len(shape) != 2:
        raise ValueError(f"`segment_ids` must have shape [T, B] or [B, T], got {shape}")
    t_axis = 1 if batch_first else 0
    ids, _ = check_segment_ids(segment_ids, shape[t_axis], values.shape[0], values.shape[1],
                               batch_first=batch_first)
    flat = values.reshape(values.shape[:2] + (-1,))
    out = per_step(flat, ids)
    out = jnp.where((ids > 0)[:, :, None], out, jnp.zeros((), out.dtype))
    out = out.reshape(out.shape[:2] + values.shape[2:])
    return jnp.swapaxes(out, 0, 1) if batch_first else out
