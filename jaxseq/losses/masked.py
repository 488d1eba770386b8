"""Masked sequence losses with ``torch.nn.functional`` semantics and the class axis last.

A position *contributes* when its ``mask`` entry is True (``mask=None``: everywhere) and, for cross
entropy, its target differs from ``ignore_index``. Non-contributing positions are removed with
``jnp.where`` before any arithmetic, so their values (NaN and inf included) reach neither the loss nor
any gradient: their gradient is exactly ``0``.

Reductions follow torch: ``"none"`` returns the per-position loss (``0`` where nothing
contributes), ``"sum"`` its sum, ``"mean"`` its sum divided by the (weighted) number of contributing
positions or elements. One deliberate difference: when nothing contributes (or the contributing
weights sum to ``0``), ``"mean"`` returns ``0`` with zero gradient where torch returns NaN, so that an
all-padding batch cannot poison a training run.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.validation import is_concrete, rejects_torch

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, extra: tuple[str, ...] = ()) -> None:
    if reduction not in _REDUCTIONS + extra:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS + extra}, got {reduction!r}")


def _broadcast_mask(mask: jax.Array | None, shape: tuple[int, ...], what: str) -> jax.Array:
    """``mask`` broadcast to ``shape`` as a bool array (all True for ``None``)."""
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be a bool array, got dtype {mask.dtype} "
                        "(use mask.astype(bool))")
    try:
        broadcast = np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        swapped = mask.ndim >= 2 and len(shape) >= 2 and (mask.shape[1], mask.shape[0]) == tuple(
            shape[:2]) and shape[0] != shape[1]
        hint = (". Its first two axes fit the other layout: length_mask(lengths, T) gives [B, T] "
                "(batch_first=True, its default); time-major [T, B, ...] data needs "
                "length_mask(lengths, T, batch_first=False).") if swapped else ""
        raise ValueError(f"`mask` of shape {tuple(mask.shape)} does not broadcast to the {what} "
                         f"shape {tuple(shape)}{hint}")
    return jnp.broadcast_to(mask, shape)


def _reduce(per_item: jax.Array, denominator: jax.Array, reduction: str) -> jax.Array:
    """Apply ``reduction`` to a loss that is already ``0`` where nothing contributes."""
    if reduction == "none":
        return per_item
    total = jnp.sum(per_item)
    if reduction == "sum":
        return total
    nonzero = denominator != 0
    return jnp.where(nonzero, total / jnp.where(nonzero, denominator, 1), jnp.zeros((), total.dtype))


@rejects_torch
def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *,
                         ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, weight: jax.Array | None = None,
                         segment_ids: jax.Array | None = None) -> jax.Array:
    """Cross entropy from unnormalised ``logits`` and integer ``targets``, as torch computes it.

    Equals ``torch.nn.functional.cross_entropy(moveaxis(logits, -1, 1), targets', weight=weight,
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)`` where
    ``targets'`` is ``targets`` with ``ignore_index`` written wherever ``mask`` is False. With
    ``lp = log_softmax(logits)``, ``w`` the class weights (ones when ``None``), ``eps`` the label
    smoothing and ``y`` the target, a contributing position's loss is::

        (1 - eps) * (-w[y] * lp[y]) + (eps / C) * (-sum_c w[c] * lp[c])

    and ``"mean"`` divides the sum over contributing positions by ``sum w[y]`` over the same positions
    (their count when ``weight`` is None), for both terms, exactly like torch.

    Args:
      logits: float ``[..., C]``, e.g. ``[B, T, C]``; class axis last.
      targets: integer ``[...]`` (``logits.shape[:-1]``), values in ``[0, C)`` or ``ignore_index``.
        Values at non-contributing positions are never read.
      mask: optional bool array broadcastable to ``targets.shape`` (e.g. ``length_mask(lengths, T)``
        for batch-first ``[B, T]``); False positions behave exactly like ``ignore_index``.
      ignore_index: target value that contributes nothing (default ``-100``); may be a class index.
      reduction: ``"mean"`` (default), ``"sum"``, ``"none"``, or ``"sequence_mean"``: the mean over
        each sequence's contributing positions (weighted as ``"mean"``), then the mean over the
        sequences that have any (allennlp's ``average="batch"``). Sequences are the entries of the
        first axis of ``targets`` (batch-first ``[B, T]``), or with ``segment_ids`` the segments of
        packed rows.
      label_smoothing: ``eps`` in ``[0, 1]`` (default ``0.0``), a Python float.
      weight: optional float ``[C]`` class weights.
      segment_ids: only with ``"sequence_mean"``: integer, the shape of ``targets`` (``[B, T]`` of
        packed rows, :mod:`jaxseq.segments`); positions with id 0 contribute nothing.

    Returns:
      Scalar for ``"mean"`` / ``"sum"`` / ``"sequence_mean"``; ``[...]`` for ``"none"`` (``0`` at
      non-contributing positions). ``"mean"`` with nothing contributing gives ``0`` (torch: NaN).

    Raises:
      ValueError: bad ``reduction`` or ``label_smoothing``; ``targets`` shape is not
        ``logits.shape[:-1]``; ``mask`` does not broadcast; ``weight`` is not ``[C]``; or, when
        ``targets`` and ``mask`` are concrete, a contributing target lies outside ``[0, C)``. Under
        ``jit`` such a target yields NaN instead.
      TypeError: ``logits`` is not floating, ``targets`` is not integer or ``mask`` is not bool.

    >>> logits = jnp.array([[[0.0, 0.0], [5.0, jnp.nan]]])        # [B=1, T=2, C=2]
    >>> targets = jnp.array([[1, 0]])
    >>> mask = jnp.array([[True, False]])
    >>> round(float(masked_cross_entropy(logits, targets, mask)), 6)   # log(2)
    0.693147
    """
    _check_reduction(reduction, ("sequence_mean",))
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    if segment_ids is not None and reduction != "sequence_mean":
        raise ValueError("`segment_ids` only applies with reduction='sequence_mean'")
    if reduction == "sequence_mean" and targets.ndim < 1:
        raise ValueError("reduction='sequence_mean' needs targets with a sequence axis [B, ...]")
    if logits.ndim < 1:
        raise ValueError("`logits` must have a class axis [..., C], got a 0-d array")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"`targets` must be integer class indices, got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"`targets` shape {tuple(targets.shape)} must equal the `logits` shape "
                         f"{tuple(logits.shape)} without its class axis")
    if not jnp.issubdtype(logits.dtype, jnp.inexact):
        raise TypeError(f"`logits` must have a floating dtype, got {logits.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}")
    num_classes = logits.shape[-1]
    if weight is not None:
        weight = jnp.asarray(weight, logits.dtype)
        if weight.shape != (num_classes,):
            raise ValueError(f"`weight` must have shape [C]=({num_classes},) for `logits` of shape "
                             f"{tuple(logits.shape)}, got shape {tuple(weight.shape)}")
    contributes = (targets != ignore_index) & _broadcast_mask(mask, targets.shape, "targets")
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        if segment_ids.shape != targets.shape or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"`segment_ids` must be an integer array of the targets' shape "
                             f"{tuple(targets.shape)}, got {segment_ids.dtype} {segment_ids.shape}")
        contributes = contributes & (segment_ids > 0)
    if is_concrete(targets) and is_concrete(contributes):
        bad = np.asarray(contributes) & ((np.asarray(targets) < 0)
                                         | (np.asarray(targets) >= num_classes))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"`targets` must lie in [0, {num_classes}) at contributing positions, "
                             f"got {int(np.asarray(targets)[index])} at index {index}")
    safe_targets = jnp.where(contributes, targets, 0)
    safe_logits = jnp.where(contributes[..., None], logits, jnp.zeros((), logits.dtype))
    log_probs = jax.nn.log_softmax(safe_logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, safe_targets[..., None], axis=-1)[..., 0]
    if weight is None:
        target_weight = jnp.ones(targets.shape, log_probs.dtype)
        weighted_log_probs = log_probs
    else:
        target_weight = weight[safe_targets]
        weighted_log_probs = log_probs * weight
    per_position = -target_weight * picked
    if label_smoothing:
        smooth = -jnp.sum(weighted_log_probs, axis=-1)
        per_position = ((1.0 - label_smoothing) * per_position
                        + (label_smoothing / num_classes) * smooth)
    zero = jnp.zeros((), per_position.dtype)
    per_position = jnp.where(contributes, per_position, zero)
    target_weight = jnp.where(contributes, target_weight, zero)
    if reduction == "sequence_mean":
        return _sequence_mean(per_position, target_weight, segment_ids)
    return _reduce(per_position, jnp.sum(target_weight), reduction)


def _sequence_mean(per_position: jax.Array, weights: jax.Array,
                   segment_ids: jax.Array | None) -> jax.Array:
    """Mean over sequences (with a nonzero weight) of ``sum(loss) / sum(weight)`` per sequence."""
    if segment_ids is None:
        axes = tuple(range(1, per_position.ndim))
        totals, counts = jnp.sum(per_position, axes), jnp.sum(weights, axes)
    else:   # one bucket per (row, segment); ids are < T, so row * T + id - 1 is unique
        row_length = segment_ids.shape[-1] if segment_ids.ndim else 1
        rows = jnp.arange(segment_ids.size) // row_length
        bucket = jnp.where(segment_ids.reshape(-1) > 0,
                           rows * row_length + segment_ids.reshape(-1) - 1, segment_ids.size)
        sums = lambda a: jax.ops.segment_sum(a.reshape(-1), bucket,            # noqa: E731
                                             num_segments=segment_ids.size + 1)[:-1]
        totals, counts = sums(per_position), sums(weights)
    present = counts != 0
    means = jnp.where(present, totals / jnp.where(present, counts, 1), jnp.zeros((), totals.dtype))
    count = jnp.sum(present)
    return jnp.where(count > 0, jnp.sum(means) / jnp.maximum(count, 1), jnp.zeros((), means.dtype))


def _masked_elementwise(loss_fn: Callable[[jax.Array], jax.Array], pred: jax.Array,
                        target: jax.Array, mask: jax.Array | None, reduction: str) -> jax.Array:
    """``loss_fn(pred - target)`` at contributing elements (``loss_fn(0)`` must be ``0``), reduced."""
    _check_reduction(reduction)
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"`pred` shape {tuple(pred.shape)} and `target` shape "
                         f"{tuple(target.shape)} must be equal")
    contributes = _broadcast_mask(mask, pred.shape, "pred")
    diff = jnp.where(contributes, pred - target, jnp.zeros((), jnp.result_type(pred, target)))
    return _reduce(loss_fn(diff), jnp.sum(contributes), reduction)


def _abs_zero_grad_at_zero(x: jax.Array) -> jax.Array:
    """``|x|`` whose gradient at ``0`` is ``sign(0) = 0`` as in torch (``jnp.abs`` gives 1 there)."""
    return jnp.sign(x) * x


@rejects_torch
def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None, *,
               reduction: str = "mean") -> jax.Array:
    """Squared error ``(pred - target)**2`` over contributing elements, as torch's ``mse_loss``.

    ``"mean"`` divides by the number of contributing *elements*: a per-position mask ``[B, T, 1]``
    broadcast over features ``[B, T, F]`` counts ``F`` elements per valid position, which equals
    ``torch.nn.functional.mse_loss(pred[m], target[m])`` for the position mask ``m``. Pass a
    ``[B, T]`` position mask as ``mask[..., None]`` (broadcasting aligns trailing axes).

    Args:
      pred: float ``[...]``, e.g. ``[B, T, F]``.
      target: float, same shape as ``pred``.
      mask: optional bool array broadcastable to ``pred.shape``; False elements contribute nothing.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
      Scalar for ``"mean"`` / ``"sum"``; ``pred``-shaped for ``"none"`` (``0`` where masked).
      ``"mean"`` with nothing contributing gives ``0`` (torch: NaN).

    Raises:
      ValueError: bad ``reduction``, ``pred`` / ``target`` shapes differ, ``mask`` does not broadcast.
      TypeError: ``mask`` is not bool.

    >>> pred = jnp.array([[1.0, 2.0], [3.0, jnp.nan]])
    >>> target = jnp.zeros((2, 2))
    >>> round(float(masked_mse(pred, target, jnp.array([[True, True], [True, False]]))), 5)
    4.66667
    """
    return _masked_elementwise(jnp.square, pred, target, mask, reduction)


@rejects_torch
def masked_l1(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None, *,
              reduction: str = "mean") -> jax.Array:
    """Absolute error ``|pred - target|`` over contributing elements, as torch's ``l1_loss``.

    Same masking, reductions and ``"mean"`` denominator as :func:`masked_mse`; the gradient at
    ``pred == target`` is ``0``, as in torch.

    Args:
      pred: float ``[...]``, e.g. ``[B, T, F]``.
      target: float, same shape as ``pred``.
      mask: optional bool array broadcastable to ``pred.shape``; False elements contribute nothing.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Returns:
      Scalar for ``"mean"`` / ``"sum"``; ``pred``-shaped for ``"none"`` (``0`` where masked).
      ``"mean"`` with nothing contributing gives ``0`` (torch: NaN).

    Raises:
      ValueError: bad ``reduction``, ``pred`` / ``target`` shapes differ, ``mask`` does not broadcast.
      TypeError: ``mask`` is not bool.

    >>> pred = jnp.array([[1.0, -2.0], [3.0, jnp.inf]])
    >>> masked_l1(pred, jnp.zeros((2, 2)), jnp.array([[True], [False]]), reduction="none").tolist()
    [[1.0, 2.0], [0.0, 0.0]]
    """
    return _masked_elementwise(_abs_zero_grad_at_zero, pred, target, mask, reduction)
