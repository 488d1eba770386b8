"""CTC loss: the twin of ``torch.nn.functional.ctc_loss`` / ``torch.nn.CTCLoss``, on padded batches
and packed rows.

Connectionist temporal classification (Graves et al., 2006) scores a label sequence
``y_1 .. y_L`` against ``n`` frames of log-probabilities ``lp [n, C]`` by summing over every
alignment: a path of ``n`` classes that reads ``y`` after merging repeats and removing ``blank``.
With the blank-extended labels ``l' = (blank, y_1, blank, y_2, ..., y_L, blank)`` (``2L + 1``
states), the forward recursion is::

    alpha_0 = [lp_0[blank], lp_0[y_1], -inf, ...]
    alpha_t[s] = logsumexp(alpha_{t-1}[s], alpha_{t-1}[s-1], alpha_{t-1}[s-2] if skip[s])
                 + lp_t[l'[s]]            # skip[s]: l'[s] is a label unlike l'[s-2]
    loss = -logsumexp(alpha_{n-1}[2L], alpha_{n-1}[2L-1])

computed here in log space with a true ``-inf`` (no ``log_epsilon``): a sequence whose labels no
alignment can produce (``n < L + number of adjacent repeats``, or ``-inf`` log-probabilities on
every alignment) gets exactly ``-inf`` log-likelihood, i.e. an infinite loss, as in torch.

Gradient convention (torch's): the gradient w.r.t. ``log_probs`` is ``exp(log_probs) - posterior``
at valid frames (``posterior[t, c]``: the probability that an alignment emits ``c`` at ``t``), 0 at
padding. That is the gradient w.r.t. the *logits* of a log-softmax in front, which torch folds into
its CTC backward. jaxseq adds the ``exp(log_probs)`` term as a zero-valued
``exp(lp) - stop_gradient(exp(lp))``, so the value is torch's (computed on ``log_probs`` as given,
not re-normalised) and ``jax.grad`` / ``jax.jvp`` give torch's gradient. Through
``jax.nn.log_softmax`` the gradient w.r.t. the logits is the same array, exactly as in torch.
One deliberate difference: where a log-probability is ``-inf`` (a class masked out), jaxseq's
gradient is its limit ``0``; torch's formula evaluates ``exp(-inf - -inf)`` and gives NaN there,
even in a row with a finite loss.

Infinite losses (torch's rules): ``zero_infinity=False`` returns ``+inf`` and a NaN gradient at the
row's valid frames (0 at its padding, and a row with no frames has zero gradient);
``zero_infinity=True`` returns 0 with zero gradient for that row.

Why not ``optax.ctc_loss`` (0.2.8): measured against torch in float64 it is exact on ordinary
inputs (1.7e-16) but not in general. Its ``log(0)`` is a finite ``log_epsilon=-1e5``, so once the
true log-likelihood falls below about ``-1e5`` the impossible paths win (a 500-frame, 200-label
sequence of confidently wrong frames: torch 119666.8, optax 99999.3); a larger ``|log_epsilon|``
only moves that threshold. It never returns inf (an infeasible row costs about ``1e5``, with
finite gradients). It gathers log-probabilities with a one-hot ``einsum``, so a ``-inf``
log-probability of any class makes the whole row NaN, whatever ``log_epsilon`` is, and the gather
is a matmul, subject to the backend's matmul precision. It re-applies ``log_softmax``, which
changes the value for inputs that are not exactly normalised. The recursion above is short, so
jaxseq writes it.

Packed rows (``segment_ids``, see :mod:`jaxseq.segments`) use the same scan: the recursion restarts
at every segment's first frame and each segment's loss is read at its last frame; a padded batch
is the special case of one segment per row, ``t < input_lengths[b]``.

Eager calls run one module-level jitted core per (shapes, dtypes, ``blank``, ``reduction``,
``zero_infinity``, ``batch_first``); all checks run on the host before it.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from jaxseq.segments import (
    SegmentLayout,
    check_segment_ids,
    lengths_as_segments,
    reduce_per_segment,
    segment_layout,
    sequence_starts,
)
from jaxseq.validation import check_floating, check_lengths, is_concrete, rejects_torch, traced_policy

#: ``reduction`` of :func:`ctc_loss`.
REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------------------------
# The forward algorithm (pure, traced inside the jitted core)
# --------------------------------------------------------------------------------------------
def _logsumexp3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``log(exp(a) + exp(b) + exp(c))`` elementwise, exact at ``-inf``.

    Three ``-inf`` give ``-inf`` with a zero gradient (``jax.nn.logsumexp`` and ``jnp.logaddexp``
    give NaN gradients there, which a zero cotangent does not cancel); a NaN input gives NaN.
    """
    top = lax.stop_gradient(jnp.maximum(jnp.maximum(a, b), c))
    reachable = top != -jnp.inf
    top = jnp.where(reachable, top, 0)
    total = jnp.exp(a - top) + jnp.exp(b - top) + jnp.exp(c - top)
    return jnp.where(reachable, top + jnp.log(jnp.where(reachable, total, 1)), -jnp.inf)


class _Labels(NamedTuple):
    """The blank-extended labels ``l'`` of every (row, segment), ``2N + 1`` states each."""

    states: jax.Array   # int32 [B, K, 2N+1]: the class of each state (blank beyond 2L)
    skip: jax.Array     # bool [B, K, 2N+1]: state s may be entered from s - 2
    final: jax.Array    # int32 [B, K]: 2L, the index of the last blank


def _extended_labels(targets: jax.Array, target_lengths: jax.Array, blank: int) -> _Labels:
    """:class:`_Labels` of ``targets [B, K, N]``; entries at ``n >= target_lengths`` are not read."""
    max_len = targets.shape[-1]
    labels = jnp.where(jnp.arange(max_len) < target_lengths[..., None], targets, blank)
    states = jnp.full(targets.shape[:-1] + (2 * max_len + 1,), blank, jnp.int32)
    states = states.at[..., 1::2].set(labels)
    skip = jnp.zeros(states.shape, bool).at[..., 3::2].set(labels[..., 1:] != labels[..., :-1])
    return _Labels(states, skip, 2 * target_lengths)


def _shift(alpha: jax.Array, by: int) -> jax.Array:
    """``alpha [B, W]`` moved ``by`` states to the right, ``-inf`` entering on the left."""
    return jnp.pad(alpha, ((0, 0), (by, 0)), constant_values=-jnp.inf)[:, :alpha.shape[1]]


def _forward_variables(emissions: jax.Array, skip: jax.Array, starts: jax.Array) -> jax.Array:
    """The CTC forward recursion, time-major: ``alpha_t [T, B, W]`` over ``W = 2N + 1`` states.

    Args:
      emissions: ``[T, B, W]``, ``lp_t[l'[s]]`` of the current segment's labels (finite at
        padding).
      skip: bool ``[T, B, W]``, the current segment's :attr:`_Labels.skip`.
      starts: bool ``[T, B]``, a segment's first frame: the recursion restarts from
        ``[0, -inf, ...]``.
    """
    init = jnp.full(emissions.shape[1:], -jnp.inf, emissions.dtype).at[:, 0].set(0)

    def step(alpha, inputs):
        emission_t, skip_t, start_t = inputs
        alpha = jnp.where(start_t[:, None], init, alpha)
        alpha = _logsumexp3(alpha, _shift(alpha, 1),
                            jnp.where(skip_t, _shift(alpha, 2), -jnp.inf)) + emission_t
        return alpha, alpha

    return lax.scan(step, init, (emissions, skip, starts))[1]


def _segment_nll(log_probs: jax.Array, labels: _Labels, layout: SegmentLayout) -> jax.Array:
    """``[B, K]`` negative log-likelihood of every segment, with torch's gradient.

    Read at a segment's last frame: ``-logsumexp(alpha[2L], alpha[2L-1])``; a segment without
    frames has loss 0 if its target is empty, else ``inf``.
    """
    batch = layout.ids.shape[1]
    segment = jnp.maximum(layout.ids - 1, 0)                                   # [T, B]
    rows = jnp.arange(batch)[None, :]
    states = labels.states[rows, segment]                                      # [T, B, W]
    alphas = _forward_variables(jnp.take_along_axis(log_probs, states, axis=2),
                                labels.skip[rows, segment], sequence_starts(layout.ids))
    no_path = jnp.full(labels.final.shape, -jnp.inf, log_probs.dtype)
    if alphas.shape[0]:
        at = lambda s: alphas[layout.last_steps(0), rows.T, s]                 # noqa: E731
        last_label = jnp.where(labels.final > 0, at(jnp.maximum(labels.final - 1, 0)), no_path)
        at_end = _logsumexp3(at(labels.final), last_label, no_path)
    else:                           # T = 0: no segment has frames
        at_end = no_path
    no_frames = jnp.where(labels.final == 0, jnp.zeros((), no_path.dtype), no_path)
    log_likelihood = jnp.where(layout.sizes > 0, at_end, no_frames)
    probs = jnp.exp(log_probs)
    softmax_term = jnp.sum(probs - lax.stop_gradient(probs), axis=-1)          # [T, B], all 0
    return reduce_per_segment(softmax_term, layout, jax.ops.segment_sum, 0) - log_likelihood


@jax.custom_jvp
def _scale_tangent(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``x``, whose tangent (so also its cotangent) is multiplied by ``scale``."""
    return x


@_scale_tangent.defjvp
def _scale_tangent_jvp(primals: tuple, tangents: tuple) -> tuple:
    x, scale = primals
    return x, tangents[0] * scale


@functools.partial(jax.jit, static_argnames=("blank", "reduction", "zero_infinity",
                                             "batch_first"))
def _ctc_core(log_probs: jax.Array, targets: jax.Array, target_lengths: jax.Array,
              bounds: jax.Array, *, blank: int, reduction: str, zero_infinity: bool,
              batch_first: bool) -> jax.Array:
    """Checked inputs: ``targets int32 [B, K, N]``, ``target_lengths int32 [B, K]``; ``bounds``:
    ``input_lengths [B]`` (a padded batch, ``K = 1``) or time-major segment ids ``[T, B]``."""
    packed = bounds.ndim == 2
    lp = jnp.swapaxes(log_probs, 0, 1) if batch_first else log_probs
    lp = lp.astype(jnp.promote_types(lp.dtype, jnp.float32))
    ids = bounds if packed else lengths_as_segments(bounds, lp.shape[0])
    layout = segment_layout(ids, targets.shape[1])
    lp = jnp.where((ids > 0)[..., None], lp, jnp.zeros((), lp.dtype))
    nll = _segment_nll(lp, _extended_labels(targets, target_lengths, blank), layout)
    infinite = nll == jnp.inf
    if zero_infinity:
        nll = jnp.where(infinite, jnp.zeros((), nll.dtype), nll)
    else:               # torch: inf, and a NaN gradient at the row's frames
        nll = _scale_tangent(nll, lax.stop_gradient(jnp.where(infinite, jnp.nan, 1)
                                                    ).astype(nll.dtype))
    present = jnp.greater(layout.sizes, 0) if packed else jnp.ones(nll.shape, bool)
    nll = jnp.where(present, nll, jnp.zeros((), nll.dtype))
    if reduction == "none":
        out = nll if packed else nll[:, 0]
    elif reduction == "sum":
        out = jnp.sum(nll)
    else:
        per_label = nll / jnp.maximum(target_lengths, 1).astype(nll.dtype)
        count = jnp.sum(present)
        out = jnp.where(count > 0, jnp.sum(per_label) / jnp.maximum(count, 1),
                        jnp.zeros((), nll.dtype))
    return out.astype(log_probs.dtype)


# --------------------------------------------------------------------------------------------
# Validation (host side, before the jitted core)
# --------------------------------------------------------------------------------------------
def _integers(x: Any, name: str) -> Any:
    """``x`` as an array (kept as a jax array or tracer) with an integer dtype."""
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    if x.size and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype, got {x.dtype}")
    return x


def _reject(bad: Any, values: Any, message: str) -> None:
    """Fail where ``bad`` holds: a ``ValueError`` when ``bad`` is numpy, a ``checkify.check`` (under
    :func:`jaxseq.checked`) when it is traced. ``message`` has one ``{}`` per axis of ``bad``,
    then one for the value ``values[index]`` there."""
    if isinstance(bad, np.ndarray):
        if bad.any():
            index = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise ValueError(message.format(*(int(i) for i in index), np.asarray(values)[index]))
    elif traced_policy() == "checkify":
        where = jnp.unravel_index(jnp.argmax(bad.reshape(-1)), bad.shape)
        checkify.check(~jnp.any(bad), message, *where, jnp.asarray(values)[where])


def _xp(*arrays: Any) -> Any:
    """numpy when every array is concrete (checks raise now), else ``jax.numpy`` (traced)."""
    return np if all(is_concrete(a) for a in arrays) else jnp


def _check_target_lengths(lengths: Any, shape: tuple[int, ...], bound: Optional[int],
                          bound_name: str) -> Any:
    """Integer ``target_lengths`` of ``shape`` with ``0 <= value <= bound`` (``None``: no bound)."""
    lengths = _integers(lengths, "target_lengths")
    if tuple(lengths.shape) != shape:
        raise ValueError(f"`target_lengths` must have shape {shape}, got {tuple(lengths.shape)}")
    xp = _xp(lengths)
    host = np.asarray(lengths) if xp is np else lengths
    bad = host < 0 if bound is None else (host < 0) | (host > bound)
    limit = "" if bound is None else f" <= {bound_name}={bound}"
    slots = ", ".join(["{}"] * len(shape))
    _reject(bad, host, f"`target_lengths` must satisfy 0 <= target_lengths[...]{limit}, but "
                       f"found target_lengths[{slots}] = {{}}")
    return host


def _check_labels(targets: Any, valid: Any, num_classes: int, blank: int) -> None:
    """Targets at ``valid`` positions lie in ``[0, C)`` and differ from ``blank``."""
    slots = ", ".join(["{}"] * targets.ndim)
    _reject(valid & ((targets < 0) | (targets >= num_classes) | (targets == blank)), targets,
            f"`targets` must lie in [0, {num_classes}) and differ from blank={blank} at valid "
            f"positions (s < target_lengths), but found targets[{slots}] = {{}}")


def _pad_concatenated(targets: Any, lengths: Any, max_len: int, xp: Any) -> Any:
    """torch's concatenated targets ``[sum(lengths)]`` as ``[B, max_len]`` (0 at padding)."""
    if targets.shape[0] == 0:
        return xp.zeros((lengths.shape[0], max_len), np.int32)
    position = xp.arange(max_len)
    index = (xp.cumsum(lengths) - lengths)[:, None] + position[None, :]
    picked = targets[xp.minimum(index, targets.shape[0] - 1)]
    return xp.where(position[None, :] < lengths[:, None], picked, 0)


class _Targets(NamedTuple):
    """Checked targets as ``[B, K, N]`` with lengths ``[B, K]`` (``K = 1`` for a padded batch)."""

    targets: Any
    lengths: Any


def _padded_targets(targets: Any, target_lengths: Any, batch: int, num_classes: int, blank: int,
                    max_target_length: Optional[int]) -> _Targets:
    """Checked ``[B, S]`` padded or 1-D concatenated targets, as ``[B, 1, N]``."""
    if targets.ndim == 2:
        if max_target_length is not None:
            raise ValueError("`max_target_length` only applies to 1-D (concatenated) targets: "
                             "padded targets [B, S] have S = targets.shape[1]")
        if targets.shape[0] != batch:
            raise ValueError(f"`targets` [B, S] must have B={batch} rows (the batch of "
                             f"`log_probs`), got shape {tuple(targets.shape)}")
        lengths = _check_target_lengths(target_lengths, (batch,), targets.shape[1], "S")
        xp = _xp(targets, lengths)
        host = np.asarray(targets) if xp is np else jnp.asarray(targets)
        _check_labels(host, xp.arange(targets.shape[1])[None, :] < lengths[:, None],
                      num_classes, blank)
        return _Targets(host[:, None, :], lengths[:, None])
    if targets.ndim != 1:
        raise ValueError(f"`targets` must be [B, S] (padded) or 1-D (concatenated), got shape "
                         f"{tuple(targets.shape)}")
    if max_target_length is not None and (isinstance(max_target_length, bool) or not isinstance(
            max_target_length, numbers.Integral) or max_target_length < 0):
        raise ValueError(f"`max_target_length` must be a non-negative int, got "
                         f"{max_target_length!r}")
    lengths = _check_target_lengths(target_lengths, (batch,), max_target_length,
                                    "max_target_length")
    total = targets.shape[0]
    xp = _xp(targets, lengths)
    host = np.asarray(targets) if xp is np else jnp.asarray(targets)
    total_message = (f"1-D `targets` must hold sum(target_lengths) entries: got {total} "
                     "entries and sum(target_lengths) = {}")
    if xp is np:
        if int(lengths.sum()) != total:
            raise ValueError(total_message.format(int(lengths.sum())))
    elif traced_policy() == "checkify":
        checkify.check(jnp.sum(lengths) == total, total_message, jnp.sum(lengths))
    _check_labels(host, xp.ones(host.shape, bool), num_classes, blank)
    if max_target_length is None:   # concrete: the longest target; traced: all of them
        max_target_length = int(lengths.max(initial=0)) if xp is np else total
    return _Targets(_pad_concatenated(host, lengths, max_target_length, xp)[:, None, :],
                    lengths[:, None])


def _segment_targets(targets: Any, target_lengths: Any, batch: int, num_classes: int,
                     blank: int) -> _Targets:
    """Checked per-segment targets ``[B, K, N]`` with lengths ``[B, K]``."""
    if targets.ndim != 3 or targets.shape[0] != batch:
        raise ValueError(f"with `segment_ids`, `targets` must be [B, K, N] (B={batch}, K the "
                         f"segments per row), got shape {tuple(targets.shape)}")
    lengths = _check_target_lengths(target_lengths, tuple(targets.shape[:2]), targets.shape[2],
                                    "N")
    xp = _xp(targets, lengths)
    host = np.asarray(targets) if xp is np else jnp.asarray(targets)
    _check_labels(host, xp.arange(targets.shape[2]) < lengths[..., None], num_classes, blank)
    return _Targets(host, lengths)


def _check_blank(blank: Any, num_classes: int) -> int:
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral):
        raise TypeError(f"`blank` must be an int, got {type(blank).__name__} ({blank!r})")
    blank = int(blank)
    if not 0 <= blank < num_classes:
        raise ValueError(f"`blank` must be in the label range [0, C={num_classes}), got {blank}")
    return blank


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
@rejects_torch
def ctc_loss(log_probs: jax.Array, targets: jax.Array, input_lengths: Optional[jax.Array],
             target_lengths: jax.Array, *, blank: int = 0, reduction: str = "mean",
             zero_infinity: bool = False, batch_first: bool = False,
             max_target_length: Optional[int] = None,
             segment_ids: Optional[jax.Array] = None) -> jax.Array:
    """Connectionist temporal classification loss: ``torch.nn.functional.ctc_loss``.

    Values and gradients equal torch's (see the module docs for the gradient convention): the
    gradient w.r.t. ``log_probs`` is torch's ``exp(log_probs) - posterior``, and through
    ``jax.nn.log_softmax`` the gradient w.r.t. the logits is the same. Padding of ``log_probs``
    (``t >= input_lengths[b]``) and of ``targets`` is removed with ``jnp.where`` before use, so its
    content (NaN included) reaches no value and no gradient (the gradient there is exactly 0).

    Args:
      log_probs: float ``[T, B, C]`` (``[B, T, C]`` with ``batch_first``): log-probabilities, e.g.
        ``jax.nn.log_softmax(logits)``, used as given (not re-normalised). float16 / bfloat16 are
        computed in float32; the result has the dtype of ``log_probs``.
      targets: integer, either padded ``[B, S]`` (entries at ``s >= target_lengths[b]`` are never
        read, whatever they hold) or torch's 1-D concatenated form ``[sum(target_lengths)]``. Valid
        entries lie in ``[0, C)`` and differ from ``blank``. With ``segment_ids``: ``[B, K, N]``,
        the targets of segment ``k + 1`` of row ``b`` in ``targets[b, k]``.
      input_lengths: integer ``[B]``, ``0 <= input_lengths[b] <= T``; ``None`` only with
        ``segment_ids``. A row of length 0 has loss 0 if its target is empty, else ``inf``, and
        zero gradient (torch's values; ``T = 0``, which torch refuses, follows the same rule).
      target_lengths: integer ``[B]`` (``[B, K]`` with ``segment_ids``), ``>= 0``; at most ``S``
        (padded form), summing to ``len(targets)`` (1-D form), at most ``N`` (packed rows).
      blank: the blank class, in ``[0, C)`` (default 0).
      reduction: ``"mean"`` (default): each sequence's loss divided by ``max(target_length, 1)``,
        then averaged over the batch (torch's rule; with ``segment_ids``, over the segments that
        occur); ``"sum"``; ``"none"``: ``[B]`` (with ``segment_ids``: ``[B, K]``, 0 for a segment
        number a row does not hold).
      zero_infinity: if True, an infinite loss (no alignment can produce the target: fewer frames
        than ``target_length`` + its adjacent repeats, or ``-inf`` log-probabilities on every
        alignment) becomes 0 with zero gradient. If False (default), it stays ``inf`` and that
        row's gradient is NaN at its frames, as in torch.
      batch_first: layout of ``log_probs`` (and of ``segment_ids``).
      max_target_length: only for 1-D targets: ``N``, the padded length they are spread to (a
        static int ``>= max(target_lengths)``). Default: ``max(target_lengths)`` when the lengths
        are concrete; under ``jit`` (traced lengths) ``len(targets)``, which always suffices but
        costs ``O(T * B * len(targets))``: pass it, or use padded targets, in jitted code.
      segment_ids: packed rows instead of ``input_lengths``: integer ``[T, B]`` (``[B, T]`` with
        ``batch_first``), segments ``1..k`` as contiguous runs from ``t = 0`` then ``0``
        (padding), see :mod:`jaxseq.segments`. Every segment is an independent sequence scored
        against its own targets; ``K`` (``targets.shape[1]``) is the number of segment slots.

    Returns:
      A scalar for ``"mean"`` / ``"sum"``; ``[B]`` (``[B, K]`` with ``segment_ids``) for
      ``"none"``.

    Raises:
      TypeError: ``log_probs`` not floating; non-integer ``targets``, lengths or ``segment_ids``;
        ``blank`` not an int.
      ValueError: a bad ``reduction``; ``log_probs`` not 3-D; wrong shapes of ``targets`` or the
        lengths; ``blank`` outside ``[0, C)``; ``input_lengths`` together with ``segment_ids`` (or
        neither); ``max_target_length`` with padded targets; and, on concrete values:
        ``input_lengths`` outside ``[0, T]``, ``target_lengths`` below 0 or above ``S`` / ``N`` /
        ``max_target_length``, 1-D targets whose length is not ``sum(target_lengths)``, a target
        outside ``[0, C)`` or equal to ``blank`` at a valid position, bad ``segment_ids``. Under
        ``jit`` these values go unchecked (results for such inputs are unspecified) unless the
        step is wrapped in :func:`jaxseq.checked`, which checks them on the device.

    Differences from ``optax.ctc_loss(logits, logit_paddings, labels, label_paddings)``: lengths
    instead of padding indicators, torch's layout and reductions, ``blank`` anywhere; no
    ``log_softmax`` inside; exact ``-inf`` (an infinite loss for an impossible target, where optax
    gives about ``1e5`` with gradients, and optax is wrong once the true log-likelihood falls
    below its ``log_epsilon = -1e5``); ``-inf`` log-probabilities are fine (optax: NaN).

    >>> import jax.numpy as jnp
    >>> log_probs = jnp.log(jnp.array([[[0.5, 0.5]], [[0.5, 0.5]]]))    # [T=2, B=1, C=2]
    >>> # target "1" in 2 frames: alignments (1,1), (0,1), (1,0), each of probability 1/4
    >>> round(float(ctc_loss(log_probs, jnp.array([[1]]), jnp.array([2]), jnp.array([1]))), 6)
    0.287682
    >>> ctc_loss(log_probs, jnp.array([[1, 1]]), jnp.array([2]), jnp.array([2]),
    ...          reduction="none").tolist()                             # "1 1" needs 3 frames
    [inf]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    log_probs = jnp.asarray(log_probs)
    layout = "[B, T, C]" if batch_first else "[T, B, C]"
    if log_probs.ndim != 3:
        raise ValueError(f"`log_probs` must be {layout}, got shape {tuple(log_probs.shape)}")
    check_floating(log_probs.dtype, "`log_probs`")
    batch, max_len = (log_probs.shape[0], log_probs.shape[1]) if batch_first else \
        (log_probs.shape[1], log_probs.shape[0])
    num_classes = log_probs.shape[2]
    blank = _check_blank(blank, num_classes)
    targets = _integers(targets, "targets")
    if segment_ids is None:
        if input_lengths is None:
            raise ValueError("`input_lengths` is required (it may be None only with "
                             "`segment_ids`)")
        bounds = check_lengths(input_lengths, max_len, batch, name="input_lengths",
                               batch_first=batch_first)
        checked = _padded_targets(targets, target_lengths, batch, num_classes, blank,
                                  max_target_length)
    else:
        if input_lengths is not None:
            raise ValueError("`segment_ids` excludes `input_lengths`: packed rows take their "
                             "sequence boundaries from `segment_ids`")
        if max_target_length is not None:
            raise ValueError("`max_target_length` only applies to 1-D (concatenated) targets")
        checked = _segment_targets(targets, target_lengths, batch, num_classes, blank)
        bounds, _ = check_segment_ids(segment_ids, max_len, batch, targets.shape[1],
                                      batch_first=batch_first)
    return _ctc_core(log_probs, jnp.asarray(checked.targets, jnp.int32),
                     jnp.asarray(checked.lengths, jnp.int32), bounds, blank=blank,
                     reduction=reduction, zero_infinity=bool(zero_infinity),
                     batch_first=bool(batch_first))
