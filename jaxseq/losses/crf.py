"""Linear-chain CRF: the twin of pytorch-crf's ``torchcrf.CRF``, on padded batches and packed rows.

A sequence of ``n`` tags ``y_0 .. y_{n-1}`` over emissions ``e [n, K]`` scores::

    score(y) = start[y_0] + sum_t e[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{n-1}]

and its log-likelihood is ``score(y) - logsumexp_{y'} score(y')`` over all ``K**n`` tag
sequences (the forward algorithm computes the normaliser); :func:`crf_decode` finds the best
``y`` (Viterbi with backtracking). Both are one recursion over time in two semirings
(log-sum-exp and max), restarted wherever a sequence begins:

* a **padded batch** ``emissions [T, B, K]`` (``[B, T, K]`` with ``batch_first``) holds one sequence
  per row, valid on a prefix given by ``mask`` (bool, pytorch-crf's form) or ``lengths [B]``;
* **packed rows** (``segment_ids``, see :mod:`jaxseq.segments`) hold several sequences per row,
  each an independent sequence; per-sequence results are ``[B, S]``.

Values, gradients and paths equal pytorch-crf's wherever pytorch-crf is defined. Beyond it:
a row of length 0 (pytorch-crf raises) has log-likelihood 0, zero gradient and an all ``-1``
path; padding content (NaN, inf, huge values, out-of-range tags) is removed with ``jnp.where``
before use, so it changes no value, gradient or path (pytorch-crf multiplies scores by the mask,
so NaN at padding makes its row NaN).

The math is pure and jit-able over :class:`CRFParams` (:func:`crf_log_likelihood`,
:func:`crf_decode`); :class:`CRF` is the NNX module owning the three parameters, with
pytorch-crf's names, so ``jaxseq.load_torch_state_dict`` reads a ``torchcrf.CRF.state_dict()``.
Eager calls run module-level jitted cores (one compilation per shapes, dtypes and static
options); arguments are checked on the host before them.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.experimental import checkify

from jaxseq.segments import (
    SegmentLayout,
    check_segment_ids,
    lengths_as_segments,
    reduce_per_segment,
    segment_layout,
    sequence_ends,
    sequence_starts,
)
from jaxseq.torch_attributes import TorchAttributes
from jaxseq.validation import (
    check_floating,
    check_lengths,
    check_size,
    host_array,
    is_concrete,
    layout_hint,
    rejects_torch,
    traced_policy,
)

#: ``reduction`` of :func:`crf_log_likelihood`.
REDUCTIONS = ("none", "sum", "mean", "token_mean")


class CRFParams(NamedTuple):
    """The three parameter arrays of a linear-chain CRF over ``K`` tags (pytorch-crf's names)."""

    start_transitions: jax.Array   # [K]: score of a sequence starting with tag j
    end_transitions: jax.Array     # [K]: score of a sequence ending with tag j
    transitions: jax.Array         # [K, K]: [i, j] scores tag i followed by tag j

    @property
    def num_tags(self) -> int:
        return int(self.transitions.shape[-1])


def init_crf_params(key: jax.Array, num_tags: int, dtype: Any = jnp.float32) -> CRFParams:
    """pytorch-crf's initialisation: every parameter ``U(-0.1, 0.1)``.

    >>> init_crf_params(jax.random.key(0), 3).transitions.shape
    (3, 3)
    """
    check_floating(dtype, "dtype")
    return _init_core(key, check_size(num_tags, "num_tags"), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("num_tags", "dtype"))
def _init_core(key: jax.Array, num_tags: int, dtype: Any) -> CRFParams:
    flat = jax.random.uniform(key, (num_tags * (num_tags + 2),), dtype, -0.1, 0.1)  # one draw
    return CRFParams(flat[:num_tags], flat[num_tags:2 * num_tags],
                     flat[2 * num_tags:].reshape(num_tags, num_tags))


# --------------------------------------------------------------------------------------------
# The recursion (time-major, on checked inputs)
# --------------------------------------------------------------------------------------------
class _Steps(NamedTuple):
    """Where each sequence lies, ``bool [T, B]`` each (from scan-order segment ids)."""

    valid: jax.Array    # a real token
    starts: jax.Array   # a sequence's first token
    ends: jax.Array     # a sequence's last token


def _steps(ids: jax.Array) -> _Steps:
    """The :class:`_Steps` of time-major ``ids [T, B]``."""
    return _Steps(ids > 0, sequence_starts(ids), sequence_ends(ids))


def _sequence_ids(lengths: Optional[jax.Array], ids: Optional[jax.Array], max_len: int
                  ) -> jax.Array:
    """Time-major ids ``[T, B]`` of packed rows (``ids``) or of a padded batch (``lengths``)."""
    if ids is not None:
        return ids
    assert lengths is not None
    return lengths_as_segments(lengths, max_len)


def _chain_scan(params: CRFParams, emissions: jax.Array, steps: _Steps, viterbi: bool
                ) -> tuple[jax.Array, Optional[jax.Array]]:
    """The forward recursion over ``emissions [T, B, K]`` (zero at padding).

    ``score_t[j] = start[j] + e_t[j]`` at a sequence start, else
    ``reduce_i(score_{t-1}[i] + transitions[i, j] + e_t[j])`` with ``reduce`` = logsumexp (forward
    algorithm) or max (``viterbi``); the carry does not change at padding.

    Returns:
      ``(scores [T, B, K], backpointers)``: the score of every step (read at a sequence's last
      step), and with ``viterbi`` the argmax ``i`` of every step, ``int32 [T, B, K]`` (else None).
    """
    def body(carry, inputs):
        e_t, valid_t, start_t = inputs
        pairs = carry[:, :, None] + params.transitions + e_t[:, None, :]      # [B, K_prev, K]
        if viterbi:
            reduced, back = jnp.max(pairs, axis=1), jnp.argmax(pairs, axis=1).astype(jnp.int32)
        else:
            reduced, back = jax.nn.logsumexp(pairs, axis=1), None
        new = jnp.where(start_t[:, None], params.start_transitions + e_t, reduced)
        return jnp.where(valid_t[:, None], new, carry), (new, back)

    init = jnp.zeros(emissions.shape[1:], emissions.dtype)
    _, (scores, back) = lax.scan(body, init, (emissions, steps.valid, steps.starts))
    return scores, back


def _segment_log_likelihood(params: CRFParams, emissions: jax.Array, tags: jax.Array,
                            layout: SegmentLayout) -> jax.Array:
    """``[B, S]`` log-likelihood of every segment (0 where absent); NaN for a segment holding a tag
    outside ``[0, K)``."""
    steps = _steps(layout.ids)
    num_tags = params.num_tags
    e = jnp.where(steps.valid[..., None], emissions, jnp.zeros((), emissions.dtype))
    in_range = (tags >= 0) & (tags < num_tags)
    y = jnp.where(steps.valid & in_range, tags, 0)                                  # [T, B]
    y_prev = jnp.concatenate([y[:1], y[:-1]])
    zero = jnp.zeros((), e.dtype)
    gold = (jnp.take_along_axis(e, y[..., None], axis=-1)[..., 0]
            + jnp.where(steps.starts, params.start_transitions[y], params.transitions[y_prev, y])
            + jnp.where(steps.ends, params.end_transitions[y], zero))
    gold = jnp.where(in_range, gold, jnp.asarray(jnp.nan, e.dtype))
    scores, _ = _chain_scan(params, e, steps, viterbi=False)
    log_z = jax.nn.logsumexp(scores + params.end_transitions, axis=-1)               # [T, B]
    parts = jnp.stack([jnp.where(steps.valid, gold, zero),
                       jnp.where(steps.ends, log_z, zero)], axis=-1)                 # [T, B, 2]
    numerator, normaliser = jnp.moveaxis(reduce_per_segment(parts, layout, jax.ops.segment_sum, 0),
                                         -1, 0)
    return numerator - normaliser


def _best_paths(params: CRFParams, emissions: jax.Array, ids: jax.Array) -> jax.Array:
    """Viterbi paths ``int32 [T, B]`` of every sequence in time-major ``ids``, ``-1`` at padding."""
    steps = _steps(ids)
    e = jnp.where(steps.valid[..., None], emissions, jnp.zeros((), emissions.dtype))
    scores, back = _chain_scan(params, e, steps, viterbi=True)
    best_last = jnp.argmax(scores + params.end_transitions, axis=-1).astype(jnp.int32)  # [T, B]

    def trace(tag, inputs):          # reverse time: the tag of step t, then of step t - 1
        back_t, last_t, valid_t, end_t = inputs
        tag = jnp.where(end_t, last_t, tag)
        return (jnp.take_along_axis(back_t, tag[:, None], axis=1)[:, 0],
                jnp.where(valid_t, tag, -1))

    start = jnp.zeros(ids.shape[1], jnp.int32)
    _, paths = lax.scan(trace, start, (back, best_last, steps.valid, steps.ends), reverse=True)
    return paths


def _time_major(x: jax.Array, batch_first: bool) -> jax.Array:
    return jnp.swapaxes(x, 0, 1) if batch_first else x


def _compute_params(params: CRFParams) -> CRFParams:
    """All three arrays in the compute dtype, that of ``transitions``."""
    return CRFParams(*(jnp.asarray(p, params.transitions.dtype) for p in params))


@functools.partial(jax.jit, static_argnames=("max_segments", "reduction", "batch_first"))
def _log_likelihood_core(params: CRFParams, emissions: jax.Array, tags: jax.Array,
                         lengths: Optional[jax.Array], ids: Optional[jax.Array], *,
                         max_segments: int, reduction: str, batch_first: bool) -> jax.Array:
    """Checked inputs; exactly one of ``lengths [B]`` (a padded batch) or time-major ``ids``."""
    params = _compute_params(params)
    e = _time_major(emissions, batch_first).astype(params.transitions.dtype)
    y = _time_major(tags, batch_first)
    layout = segment_layout(_sequence_ids(lengths, ids, e.shape[0]), max_segments)
    llh = _segment_log_likelihood(params, e, y, layout)                               # [B, S]
    if reduction == "none":
        return llh if ids is not None else llh[:, 0]
    total = jnp.sum(llh)
    if reduction == "sum":
        return total
    count = jnp.sum(layout.sizes > 0) if reduction == "mean" else jnp.sum(layout.sizes)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.zeros((), total.dtype))


@functools.partial(jax.jit, static_argnames=("batch_first",))
def _decode_core(params: CRFParams, emissions: jax.Array, lengths: Optional[jax.Array],
                 ids: Optional[jax.Array], *, batch_first: bool) -> jax.Array:
    params = _compute_params(params)
    e = _time_major(emissions, batch_first).astype(params.transitions.dtype)
    paths = _best_paths(params, e, _sequence_ids(lengths, ids, e.shape[0]))
    return _time_major(paths, batch_first)


# --------------------------------------------------------------------------------------------
# Validation (host side, before the jitted cores)
# --------------------------------------------------------------------------------------------
class _Bounds(NamedTuple):
    """Checked sequence boundaries: ``lengths [B]`` (padded batch) or time-major ``ids [T, B]``."""

    lengths: Optional[jax.Array]
    ids: Optional[jax.Array]
    max_segments: int

    def valid(self, max_len: int) -> Any:
        """``bool [T, B]`` real tokens: numpy when the boundaries are concrete, else traced."""
        source = self.ids if self.ids is not None else self.lengths
        if is_concrete(source):
            host = np.asarray(source)
            return host > 0 if self.ids is not None else np.arange(max_len)[:, None] < host[None]
        return _sequence_ids(self.lengths, self.ids, max_len) > 0


def _check_params(params: Any) -> CRFParams:
    if not isinstance(params, CRFParams):
        raise TypeError(f"`params` must be a CRFParams, got {type(params).__name__}")
    num_tags = params.transitions.shape[-1] if jnp.ndim(params.transitions) else 0
    want = {"start_transitions": (num_tags,), "end_transitions": (num_tags,),
            "transitions": (num_tags, num_tags)}
    for name, value in zip(params._fields, params):
        check_floating(jnp.result_type(value), f"params.{name}")
        if jnp.shape(value) != want[name]:
            raise ValueError(f"`params.{name}` must have shape {want[name]} (K={num_tags} from "
                             f"`params.transitions`), got {tuple(jnp.shape(value))}")
    return params


def _check_emissions(emissions: Any, num_tags: int, batch_first: bool) -> jax.Array:
    emissions = jnp.asarray(emissions)
    layout = "[B, T, K]" if batch_first else "[T, B, K]"
    if emissions.ndim != 3:
        raise ValueError(f"`emissions` must have dimension of 3 ({layout}), got {emissions.ndim}")
    if emissions.shape[2] != num_tags:
        raise ValueError(f"expected last dimension of `emissions` is {num_tags} (num_tags), got "
                         f"{emissions.shape[2]}")
    check_floating(emissions.dtype, "`emissions`")
    return emissions


def _traced_check(bad: jax.Array, message: str, batch_first: bool, values: jax.Array) -> None:
    """Under :func:`jaxseq.checked`: ``checkify.check`` that no entry of time-major ``bad [T, B]``
    holds; ``message`` has slots for the row, the step and the value there."""
    if traced_policy() != "checkify":
        return
    max_len = bad.shape[0]
    flat = jnp.argmax(bad.T.reshape(-1))
    b, t = flat // max_len, flat % max_len
    value = values[b, t] if batch_first else values[t, b]
    checkify.check(~jnp.any(bad), message, b, t, value)


def _check_mask(mask: Any, max_len: int, batch: int, batch_first: bool) -> jax.Array:
    """``lengths [B]`` of a bool prefix mask in the layout of the emissions' first two axes."""
    if not isinstance(mask, jax.Array):
        mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"`mask` must be a bool array, got dtype {mask.dtype} (use "
                        "mask.astype(bool))")
    want = (batch, max_len) if batch_first else (max_len, batch)
    if tuple(mask.shape) != want:
        hint = "." + layout_hint(batch_first) if tuple(mask.shape) == want[::-1] else ""
        raise ValueError(f"the first two dimensions of `emissions` and `mask` must match, got "
                         f"{want} and {tuple(mask.shape)}{hint}")
    rule = ("`mask` must be a prefix of each row (True for t < its length, then False); "
            "row {} breaks this at t = {} (value {})")
    if is_concrete(mask):
        host = np.asarray(mask)
        steps = host.T if batch_first else host                                     # [T, B]
        lengths = steps.sum(axis=0)
        bad = steps != (np.arange(max_len)[:, None] < lengths[None])
        if bad.any():
            b, t = np.argwhere(bad.T)[0]
            raise ValueError(rule.format(b, t, steps[t, b]))
        return check_lengths(lengths.astype(np.int32), max_len, batch)
    traced = _time_major(mask, batch_first)
    lengths = jnp.sum(traced, axis=0, dtype=jnp.int32)
    _traced_check(traced != (lengths_as_segments(lengths, max_len) > 0), rule, batch_first, mask)
    return lengths


def _bounds(shape: tuple[int, ...], mask: Any, lengths: Any, segment_ids: Any,
            max_segments: Optional[int], batch_first: bool, *, decoding: bool) -> _Bounds:
    """Check the sequence boundaries of emissions of ``shape`` (its layout)."""
    max_len, batch = (shape[1], shape[0]) if batch_first else (shape[0], shape[1])
    if segment_ids is not None:
        if mask is not None or lengths is not None:
            raise ValueError("`segment_ids` excludes `mask` and `lengths`: packed rows take their "
                             "sequence boundaries from `segment_ids`")
        # decoding needs no per-segment shapes: any id a row of T steps can hold is fine
        if decoding and max_segments is None:
            max_segments = max_len
        ids, max_segments = check_segment_ids(segment_ids, max_len, batch, max_segments,
                                              batch_first=batch_first)
        return _Bounds(None, ids, max_segments)
    if max_segments is not None:
        raise ValueError("`max_segments` only applies together with `segment_ids`")
    if mask is not None and lengths is not None:
        raise ValueError("give `mask` or `lengths`, not both")
    if mask is not None:
        return _Bounds(_check_mask(mask, max_len, batch, batch_first), None, 1)
    if lengths is None:
        return _Bounds(jnp.full((batch,), max_len, jnp.int32), None, 1)
    return _Bounds(check_lengths(lengths, max_len, batch, batch_first=batch_first), None, 1)


def _check_tags(tags: Any, shape: tuple[int, ...], bounds: _Bounds, num_tags: int,
                batch_first: bool) -> jax.Array:
    """``tags`` (integer, the emissions' first two axes) within ``[0, K)`` at every real token."""
    if not isinstance(tags, jax.Array):
        tags = np.asarray(tags)
    if not jnp.issubdtype(tags.dtype, jnp.integer):
        raise TypeError(f"`tags` must have an integer dtype, got {tags.dtype}")
    if tuple(tags.shape) != tuple(shape[:2]):
        raise ValueError(f"the first two dimensions of `emissions` and `tags` must match, got "
                         f"{tuple(shape[:2])} and {tuple(tags.shape)}")
    max_len = shape[1] if batch_first else shape[0]
    valid = bounds.valid(max_len)
    rule = f"`tags` must lie in [0, {num_tags}) at valid steps; row {{}} at t = {{}} holds {{}}"
    if is_concrete(tags) and isinstance(valid, np.ndarray):
        host = np.asarray(tags)
        steps = host.T if batch_first else host
        bad = valid & ((steps < 0) | (steps >= num_tags))
        if bad.any():
            b, t = np.argwhere(bad.T)[0]
            raise ValueError(rule.format(b, t, steps[t, b]))
    else:
        traced = _time_major(jnp.asarray(tags), batch_first)
        _traced_check(jnp.asarray(valid) & ((traced < 0) | (traced >= num_tags)), rule,
                      batch_first, jnp.asarray(tags))
    return jnp.asarray(tags)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------
@rejects_torch
def crf_log_likelihood(params: CRFParams, emissions: jax.Array, tags: jax.Array,
                       mask: Optional[jax.Array] = None, *, lengths: Optional[jax.Array] = None,
                       segment_ids: Optional[jax.Array] = None, max_segments: Optional[int] = None,
                       reduction: str = "sum", batch_first: bool = False) -> jax.Array:
    """Log-likelihood of ``tags`` under a linear-chain CRF: ``torchcrf.CRF.forward``.

    Args:
      params: :class:`CRFParams` (``start_transitions [K]``, ``end_transitions [K]``,
        ``transitions [K, K]``); their dtype (that of ``transitions``) is the compute dtype.
      emissions: float ``[T, B, K]`` (``[B, T, K]`` with ``batch_first``).
      tags: integer, the emissions' first two axes (``[T, B]`` / ``[B, T]``), in ``[0, K)`` at
        valid steps; entries at padding are never read.
      mask: bool, the emissions' first two axes: True on a prefix of each row (pytorch-crf's
        ``mask``; a row may be all False). Default: every step valid.
      lengths: integer ``[B]`` in ``[0, T]``, instead of ``mask``.
      segment_ids: packed rows, instead of ``mask`` and ``lengths``: integer, the emissions' first
        two axes, segments ``1..k`` as contiguous runs from ``t = 0`` then ``0`` (padding), see
        :mod:`jaxseq.segments`. Every segment is an independent sequence.
      max_segments: ``S``, a static int, with ``segment_ids`` (default: the largest id; required
        under ``jit``).
      reduction: ``"sum"`` (default) over sequences; ``"none"``: per sequence, ``[B]`` (packed
        rows: ``[B, S]``, entry ``[b, s-1]`` segment ``s`` of row ``b``, 0 where absent);
        ``"mean"``: over the sequences with at least one token (rows of length > 0, present
        segments), which is pytorch-crf's mean over the batch wherever it is defined;
        ``"token_mean"``: the sum over the number of valid tokens (pytorch-crf: ``mask.sum()``).
        ``"mean"`` and ``"token_mean"`` are 0 (zero gradient) when there is no token.
      batch_first: layout of ``emissions``, ``tags``, ``mask`` and ``segment_ids``.

    Returns:
      The log-likelihood (maximise it, or minimise its negative): a scalar, ``[B]`` or ``[B, S]``.
      A sequence of length 0 has log-likelihood 0 and zero gradient.

    Raises:
      TypeError: ``params`` not a :class:`CRFParams`; non-floating ``emissions`` or parameters;
        non-integer ``tags``, ``lengths`` or ``segment_ids``; non-bool ``mask``.
      ValueError: wrong shapes; a bad ``reduction``; ``mask`` together with ``lengths``, or either
        with ``segment_ids``; ``max_segments`` without ``segment_ids``; and, on concrete values, a
        mask that is not a prefix of its row, lengths outside ``[0, T]``, bad segment ids, or a tag
        outside ``[0, K)`` at a valid step. Under ``jit`` these values go unchecked (such a tag
        gives its sequence NaN; a mask is read as ``lengths = mask.sum(time)``) unless the step is
        wrapped in :func:`jaxseq.checked`, which checks them on the device.

    >>> params = CRFParams(jnp.zeros(2), jnp.zeros(2), jnp.zeros((2, 2)))
    >>> emissions = jnp.zeros((1, 3, 2))                       # [B=1, T=3, K=2], batch-first
    >>> tags = jnp.array([[0, 1, 0]])
    >>> llh = crf_log_likelihood(params, emissions, tags, lengths=jnp.array([2]), batch_first=True)
    >>> round(float(llh), 6)                                   # log(1/4): 4 equally likely paths
    -1.386294
    >>> ids = jnp.array([[1, 1, 2]])                           # two sequences in one row
    >>> crf_log_likelihood(params, emissions, tags, segment_ids=ids, reduction="none",
    ...                    batch_first=True).round(4)                    # [B=1, S=2]
    Array([[-1.3863, -0.6931]], dtype=float32)
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    params = _check_params(params)
    emissions = _check_emissions(emissions, params.num_tags, batch_first)
    bounds = _bounds(emissions.shape, mask, lengths, segment_ids, max_segments, batch_first,
                     decoding=False)
    tags = _check_tags(tags, emissions.shape, bounds, params.num_tags, batch_first)
    return _log_likelihood_core(params, emissions, tags, bounds.lengths, bounds.ids,
                                max_segments=bounds.max_segments, reduction=reduction,
                                batch_first=batch_first)


@rejects_torch
def crf_decode(params: CRFParams, emissions: jax.Array, mask: Optional[jax.Array] = None, *,
               lengths: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
               max_segments: Optional[int] = None, batch_first: bool = False) -> jax.Array:
    """The most likely tag sequence of every sequence (Viterbi): ``torchcrf.CRF.decode``.

    Arguments as :func:`crf_log_likelihood` (``max_segments`` is optional here even under ``jit``:
    given, it bounds the ids that are accepted).

    Returns:
      ``int32`` paths in the layout of the emissions' first two axes (``[T, B]``, or ``[B, T]`` with
      ``batch_first``): the best tag of each valid step, ``-1`` at padding (a row of length 0 is
      all ``-1``). With ``segment_ids`` each segment holds its own best path. pytorch-crf returns
      ``List[List[int]]``; :func:`paths_to_lists` turns these paths into that.

    Raises:
      As :func:`crf_log_likelihood`, without the ``tags`` and ``reduction`` checks.

    >>> params = CRFParams(jnp.zeros(2), jnp.zeros(2), jnp.array([[-5.0, 0.0], [0.0, 0.0]]))
    >>> emissions = jnp.array([[[1.0, 0.0], [0.6, 0.5], [9.0, 9.0]]])    # [B=1, T=3, K=2]
    >>> crf_decode(params, emissions, lengths=jnp.array([2]), batch_first=True).tolist()
    [[0, 1, -1]]

    (The best emission of each step, ``[0, 0]``, pays ``transitions[0, 0] = -5``.)
    """
    params = _check_params(params)
    emissions = _check_emissions(emissions, params.num_tags, batch_first)
    bounds = _bounds(emissions.shape, mask, lengths, segment_ids, max_segments, batch_first,
                     decoding=True)
    return _decode_core(params, emissions, bounds.lengths, bounds.ids, batch_first=batch_first)


@rejects_torch
def paths_to_lists(paths: Any, segment_ids: Any = None, *, batch_first: bool = False) -> list:
    """Host-side: Viterbi paths as Python lists of tags, one list per sequence.

    Args:
      paths: concrete integer paths from :func:`crf_decode` / :meth:`CRF.decode`, ``[T, B]``
        (``[B, T]`` with ``batch_first``), ``-1`` at padding.
      segment_ids: the packed rows' ids the paths were decoded with (same layout), or None.
      batch_first: layout of ``paths`` and ``segment_ids``.

    Returns:
      Without ``segment_ids``: ``List[List[int]]``, row ``b``'s tags (its ``-1`` padding dropped),
      exactly what ``torchcrf.CRF.decode`` returns. With ``segment_ids``:
      ``List[List[List[int]]]``: for each row, the tags of each of its segments ``1, 2, ..., k``.
      Map these back to a data set's order with the packing's ``row`` and ``segment`` arrays
      (:class:`jaxseq.data.RowPacking`): sequence ``i`` is ``out[r]`` at segment ``s - 1`` with
      ``r, s = packing.row[i], packing.segment[i]``.

    Raises:
      ValueError: traced or mis-shaped ``paths`` / ``segment_ids``.

    >>> paths_to_lists(jnp.array([[1, 0, -1], [2, -1, -1]]), batch_first=True)
    [[1, 0], [2]]
    >>> paths_to_lists(jnp.array([[1, 0, 2, -1]]), jnp.array([[1, 1, 2, 0]]), batch_first=True)
    [[[1, 0], [2]]]
    """
    host = host_array(paths, "paths")
    if host.ndim != 2 or not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"`paths` must be an integer [T, B] or [B, T] array, got {host.dtype} "
                         f"{host.shape}")
    rows = host if batch_first else host.T                                          # [B, T]
    if segment_ids is None:
        return [[int(tag) for tag in row[row >= 0]] for row in rows]
    ids = host_array(segment_ids, "segment_ids")
    if ids.shape != host.shape:
        raise ValueError(f"`segment_ids` must have the shape of `paths` {host.shape}, got "
                         f"{ids.shape}")
    id_rows = ids if batch_first else ids.T
    return [[[int(tag) for tag in row[id_row == s]] for s in range(1, int(id_row.max(initial=0)) + 1)]
            for row, id_row in zip(rows, id_rows)]


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
class CRF(TorchAttributes, nnx.Module):
    """Twin of ``torchcrf.CRF(num_tags, batch_first)`` (pytorch-crf 0.7.2).

    Parameters (``nnx.Param``), named and shaped as pytorch-crf's, each ``U(-0.1, 0.1)``:
    ``start_transitions [K]``, ``end_transitions [K]``, ``transitions [K, K]`` (``[i, j]``: tag ``i``
    followed by tag ``j``). ``jaxseq.load_torch_state_dict(crf, torch_crf.state_dict())`` and
    ``jaxseq.torch_state_dict(crf)`` exchange them bit-exactly.

    Args:
      num_tags: ``K >= 1``.
      batch_first: layout of every input: ``[B, T, ...]`` if True, else ``[T, B, ...]`` (default).
      rngs: ``rngs.params()`` draws the initial values.
      param_dtype: the parameters' dtype, which is also the compute dtype (default float32).

    Attributes ``num_tags`` and ``batch_first`` are pytorch-crf's, read-only.

    Raises:
      TypeError / ValueError: ``num_tags`` not an integer ``>= 1``, ``param_dtype`` not floating.

    >>> crf = CRF(3, batch_first=True, rngs=nnx.Rngs(0))
    >>> emissions = jax.random.normal(jax.random.key(1), (2, 4, 3))      # [B, T, K]
    >>> mask = jnp.array([[True, True, True, True], [True, True, False, False]])
    >>> llh = crf(emissions, jnp.zeros((2, 4), jnp.int32), mask)          # "sum": a scalar
    >>> paths = crf.decode(emissions, mask)                               # int32 [B, T]
    >>> list(map(len, paths_to_lists(paths, batch_first=True)))
    [4, 2]
    """

    TORCH_ATTRIBUTES = ("num_tags", "batch_first")

    def __init__(self, num_tags: int, batch_first: bool = False, *, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32):
        num_tags = check_size(num_tags, "num_tags")
        self._batch_first = bool(batch_first)
        values = init_crf_params(rngs.params(), num_tags, param_dtype)
        self.start_transitions = nnx.Param(values.start_transitions)
        self.end_transitions = nnx.Param(values.end_transitions)
        self.transitions = nnx.Param(values.transitions)

    @property
    def num_tags(self) -> int:
        """``K``, from the parameters' shape."""
        return int(self.transitions.shape[-1])

    @property
    def batch_first(self) -> bool:
        return self._batch_first

    def crf_params(self) -> CRFParams:
        """The current parameter values, for :func:`crf_log_likelihood` / :func:`crf_decode`."""
        return CRFParams(self.start_transitions[...], self.end_transitions[...],
                         self.transitions[...])

    @rejects_torch
    def __call__(self, emissions: jax.Array, tags: jax.Array, mask: Optional[jax.Array] = None,
                 reduction: str = "sum", *, lengths: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None,
                 max_segments: Optional[int] = None) -> jax.Array:
        """Log-likelihood of ``tags``: :func:`crf_log_likelihood` in this module's layout."""
        return crf_log_likelihood(self.crf_params(), emissions, tags, mask, lengths=lengths,
                                  segment_ids=segment_ids, max_segments=max_segments,
                                  reduction=reduction, batch_first=self.batch_first)

    @rejects_torch
    def decode(self, emissions: jax.Array, mask: Optional[jax.Array] = None, *,
               lengths: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
               max_segments: Optional[int] = None) -> jax.Array:
        """Viterbi paths ``int32`` in the emissions' layout, ``-1`` at padding: :func:`crf_decode`."""
        return crf_decode(self.crf_params(), emissions, mask, lengths=lengths,
                          segment_ids=segment_ids, max_segments=max_segments,
                          batch_first=self.batch_first)

    def __repr__(self) -> str:
        return f"CRF(num_tags={self.num_tags}{', batch_first=True' if self.batch_first else ''})"
