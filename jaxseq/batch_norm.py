"""torch's batch normalisation (``nn.BatchNorm1d`` / ``2d`` / ``3d``), over valid sequence steps only.

:func:`batch_norm` is the pure function, :class:`BatchNorm` the thin NNX module that owns torch's
variables: ``weight``, ``bias`` (``nnx.Param``), ``running_mean``, ``running_var`` and
``num_batches_tracked`` (``nnx.BatchStat``), so ``jaxseq.load_torch_state_dict`` /
``jaxseq.torch_state_dict`` exchange them with a torch batch norm's ``state_dict`` as they are.

**Features on the last axis** (the JAX convention): ``x [..., F]``; the statistics of feature ``f``
are taken over every other axis. torch's ``nn.BatchNorm1d`` on ``[N, C]`` is ``x [N, F]``; on
``[N, C, L]`` it is ``x [N, L, F]``; ``nn.BatchNorm2d`` on ``[N, C, H, W]`` is ``x [N, H, W, F]``.

Semantics (torch's, ``F.batch_norm``):

* training: normalise with the batch mean and the *biased* batch variance; update
  ``running = (1 - momentum) * running + momentum * batch`` with the *unbiased* batch variance
  (``n / (n - 1)``); ``momentum=None`` is the cumulative average (``momentum = 1 /
  num_batches_tracked``); ``num_batches_tracked`` counts the training calls.
* evaluation: normalise with the running statistics; without ``track_running_stats`` there are
  none and the batch statistics are used in both modes, as torch does.
* ``y = (x - mean) / sqrt(var + eps) * weight + bias``, ``eps=1e-5``, ``weight = 1``, ``bias = 0``,
  ``running_mean = 0``, ``running_var = 1`` at construction; statistics are kept in the
  parameter dtype (float64 parameters give float64 statistics).

Sequences. Given ``valid`` (the module takes ``lengths=``, ``segment_ids=`` or ``mask=``) the batch
statistics, ``n`` of the unbiased correction, and so the running statistics cover the valid
positions only. Padding (NaN included) reaches no statistic, output or gradient; the output there
is exactly 0 (as a packed RNN's output). torch has no masked batch norm: DeepSpeech-style
``SequenceWise(nn.BatchNorm1d)`` normalises over padded frames too (the twin that does not is
``torch_ref.batch_norm.MaskedBatchNorm``). The unmasked case is the masked one with every position
valid. With fewer than 2 valid positions torch raises in training (``Expected more than 1 value per
channel``); jaxseq raises too when ``valid`` is concrete, and under ``jit`` leaves the running
statistics unchanged (the output is then ``bias`` at the single valid position). A batch with no
valid position changes no statistic but counts in ``num_batches_tracked``, as torch does with an
empty batch.

Keeping Flax's ``nnx.BatchNorm`` instead (it loads torch's keys too), three differences:

* momentum is the complement: ``nnx.BatchNorm(F, momentum=1 - torch_momentum, epsilon=1e-5,
  rngs=...)``; torch's default 0.1 is Flax's 0.9 (Flax's default is 0.99), and there is no
  ``momentum=None``;
* it updates the running variance with the *biased* batch variance: after training the two
  running variances drift apart by a factor ``n / (n - 1)`` per update (outputs in training agree;
  evaluation outputs then do not);
* its running statistics are float32 whatever ``param_dtype`` (and its batch statistics use
  ``E[x^2] - E[x]^2`` unless ``use_fast_variance=False``), which caps a float64 comparison with
  torch near 1e-8.

>>> import jax.numpy as jnp
>>> bn = BatchNorm(3)                                  # eval mode, as every jaxseq layer
>>> bn.train()
>>> x = jnp.arange(24.0).reshape(4, 2, 3)              # [T=4, B=2, F=3]
>>> y = bn(x, lengths=jnp.array([4, 1]))               # row 1 holds one valid step
>>> y.shape, float(y[1:, 1].sum())                     # exactly 0 at padding
((4, 2, 3), 0.0)
>>> [round(float(v), 4) for v in bn.running_mean[...]]   # 0.1 * mean of the 5 valid steps
[0.78, 0.88, 0.98]
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.module import first_from

from jaxseq.masking import length_mask
from jaxseq.segments import check_segment_ids
from jaxseq.torch_attributes import TorchAttributes
from jaxseq.validation import check_floating, check_lengths, check_size, is_concrete, rejects_torch


class RunningStats(NamedTuple):
    """torch's batch-norm buffers: ``mean [F]``, ``var [F]`` (running estimate of the unbiased
    variance) and ``num_batches_tracked`` (an integer scalar)."""

    mean: jax.Array
    var: jax.Array
    num_batches_tracked: jax.Array


def _check_momentum(momentum: Optional[float]) -> Optional[float]:
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be None (cumulative average) or a number in [0, 1], "
                         f"got {momentum!r}")
    return float(momentum)


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


@functools.partial(jax.jit, static_argnames=("use_batch_stats", "update", "momentum", "eps"))
@functools.partial(jax.jit, static_argnames=("use_batch_stats", "update", "momentum", "eps"))
def _batch_norm(x: jax.Array, weight: Optional[jax.Array], bias: Optional[jax.Array],
                running: Optional[RunningStats], valid: Optional[jax.Array], *,
                use_batch_stats: bool, update: bool, momentum: Optional[float], eps: float
                ) -> tuple[jax.Array, Optional[RunningStats]]:
    """The equations, for checked inputs (see :func:`batch_norm`); jitted, so an eager call
    compiles once per shape and options."""
    arrays = [a for a in (weight, bias) + (tuple(running[:2]) if running else ()) if a is not None]
    dtype = jnp.result_type(x.dtype, *(a.dtype for a in arrays))
    x = x.astype(dtype)
    if valid is None:                                   # unmasked: every position is valid
        valid = jnp.ones(x.shape[:-1], bool)
    keep = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim)), x.shape)
    axes = tuple(range(x.ndim - 1))
    xs = jnp.where(keep, x, jnp.zeros((), dtype))       # padding (NaN too) goes no further
    n = jnp.sum(keep[..., 0], dtype=jnp.int32)
    if use_batch_stats:
        count = jnp.maximum(n, 1).astype(dtype)
        mean = jnp.sum(xs, axis=axes) / count
        centred = jnp.where(keep, xs - mean, jnp.zeros((), dtype))
        var = jnp.sum(centred * centred, axis=axes) / count          # biased, as torch normalises
    else:
        assert running is not None
        mean, var = running.mean.astype(dtype), running.var.astype(dtype)
    y = (xs - mean) * jax.lax.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.astype(dtype)
    if bias is not None:
        y = y + bias.astype(dtype)
    y = jnp.where(keep, y, jnp.zeros((), dtype))
    if not update:
        return y, None
    assert running is not None
    batches = running.num_batches_tracked + 1
    factor = 1.0 / batches.astype(dtype) if momentum is None else momentum
    n_f = n.astype(dtype)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    unbiased = var * n_f / jnp.maximum(n_f - 1, 1)
    moved = n > 1                                       # torch raises for n == 1, skips n == 0

    def step(old: jax.Array, new: jax.Array) -> jax.Array:
        blended = (1 - factor) * old.astype(dtype) + factor * new
        return jnp.where(moved, blended, old.astype(dtype)).astype(old.dtype)

    return y, RunningStats(step(running.mean, mean), step(running.var, unbiased), batches)


def _check_valid(valid: Any, x_shape: tuple[int, ...]) -> jax.Array:
    valid = valid if isinstance(valid, jax.Array) else np.asarray(valid)
    if valid.dtype != bool:
        raise TypeError(f"the validity mask must be boolean, got {valid.dtype}")
    lead = x_shape[:valid.ndim]
    if valid.ndim > len(x_shape) - 1 or tuple(valid.shape) != lead:
        raise ValueError(f"the validity mask must have the shape of x's leading axes (not the "
                         f"feature axis): x has shape {x_shape}, mask {tuple(valid.shape)}")
    return jnp.asarray(valid)


@rejects_torch
def batch_norm(x: jax.Array, weight: Optional[jax.Array] = None, bias: Optional[jax.Array] = None,
               running: Optional[RunningStats] = None, *, valid: Optional[jax.Array] = None,
               training: bool = False, momentum: Optional[float] = 0.1, eps: float = 1e-5
               ) -> tuple[jax.Array, Optional[RunningStats]]:
    """torch's batch norm over the leading axes of ``x [..., F]``, on valid positions only.

    Args:
      x: floating ``[..., F]``, at least 2-D; features last.
      weight: ``[F]`` or ``None`` (``affine=False``).
      bias: ``[F]`` or ``None``.
      running: the running statistics (``None``: torch's ``track_running_stats=False``).
      valid: ``None`` (every position valid) or a boolean mask with the shape of ``x``'s leading
        axes, ``x.shape[:k]`` for some ``k <= x.ndim - 1``, broadcast over the rest: e.g.
        ``jaxseq.length_mask(lengths, T)`` ``[B, T]`` for ``x [B, T, F]`` or ``[B, T, H, F]``.
      training: batch statistics, and updated running ones (torch's ``module.training``).
        Evaluation uses ``running`` (the batch statistics when ``running`` is ``None``).
      momentum: torch's: ``running = (1 - momentum) * running + momentum * batch``; ``None`` is
        the cumulative average over the ``num_batches_tracked`` training calls.
      eps: added to the variance.

    Returns:
      ``(y, running)``: ``y`` in the dtype of ``x`` promoted with the parameters', exactly 0 at
      invalid positions; the updated statistics in training (in their own dtype, without
      gradient), ``running`` itself otherwise.

    Raises:
      TypeError: ``x`` not floating, ``valid`` not boolean.
      ValueError: ``x`` below 2-D; a parameter or statistic not ``[F]``; ``valid`` not the shape of
        leading axes of ``x``; in training with batch statistics, fewer than 2 valid positions
        (when ``valid`` is concrete; torch's check); ``momentum`` outside ``[0, 1]``, ``eps < 0``.

    >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0], [jnp.nan, 0.0]])     # [N=3, F=2]; row 2 padding
    >>> stats = RunningStats(jnp.zeros(2), jnp.ones(2), jnp.array(0))
    >>> y, stats = batch_norm(x, running=stats, valid=jnp.array([True, True, False]),
    ...                       training=True)
    >>> y.round(3).tolist(), stats.var.tolist()                     # unbiased: 0.9 + 0.1 * 2
    ([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], [1.100000023841858, 1.7000000476837158])
    """
    x = jnp.asarray(x)
    check_floating(x.dtype, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be [N, ..., F] (at least 2-D, features last), got shape {x.shape}")
    features = x.shape[-1]
    named = {"weight": weight, "bias": bias}
    if running is not None:
        named.update(running_mean=running.mean, running_var=running.var)
    for name, array in named.items():
        if array is not None and tuple(jnp.shape(array)) != (features,):
            raise ValueError(f"{name} must have shape ({features},) (x's last axis), got "
                             f"{tuple(jnp.shape(array))}")
    momentum, eps = _check_momentum(momentum), _check_eps(eps)
    if valid is not None:
        valid = _check_valid(valid, x.shape)
    use_batch_stats = training or running is None
    if training and (valid is None or is_concrete(valid)):
        rest = math.prod(x.shape[0 if valid is None else valid.ndim:-1])
        n = rest if valid is None else int(np.sum(np.asarray(valid))) * rest
        if n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got 1 valid "
                             f"position in x of shape {x.shape}")
    update = training and running is not None
    y, updated = _batch_norm(x, weight, bias, running, valid, use_batch_stats=use_batch_stats,
                             update=update, momentum=momentum, eps=eps)
    return y, updated if update else running


def _valid_positions(x: jax.Array, lengths: Any, segment_ids: Any, mask: Any, batch_first: bool
                     ) -> Optional[jax.Array]:
    """The ``valid`` mask of :func:`batch_norm` (leading axes of ``x``) from one of the three."""
    given = [name for name, v in (("lengths", lengths), ("segment_ids", segment_ids),
                                  ("mask", mask)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of lengths, segment_ids and mask, got {given}")
    if mask is not None or not given:
        return mask
    if jnp.ndim(x) < 3:
        raise ValueError(f"x must be [T, B, ..., F] (or [B, T, ..., F] with batch_first) with "
                         f"{given[0]}, got shape {jnp.shape(x)}")
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    if lengths is not None:
        valid = length_mask(check_lengths(lengths, T, B, batch_first=batch_first), T)   # [B, T]
        return valid if batch_first else valid.T
    # every segment occupies >= 1 step, so T bounds the number of segments
    ids, _ = check_segment_ids(segment_ids, T, B, T, batch_first=batch_first)   # [T, B]
    return (ids > 0).T if batch_first else ids > 0


class BatchNorm(TorchAttributes, nnx.Module):
    """torch's ``nn.BatchNorm1d`` / ``2d`` / ``3d`` with features last and sequence masks.

    Args:
      num_features: ``F``, the size of the last axis of the input.
      eps: added to the variance (torch's default ``1e-5``).
      momentum: torch's convention (default ``0.1``: ``running = 0.9 running + 0.1 batch``);
        ``None``: cumulative average.
      affine: learnable ``weight`` (ones) and ``bias`` (zeros).
      track_running_stats: keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked`` (0); without them the batch statistics are used in both modes.
      batch_first: layout for ``lengths`` / ``segment_ids``: ``x [B, T, ..., F]`` if True, else
        ``[T, B, ..., F]``; a call's ``batch_first=`` overrides it.
      param_dtype: dtype of the parameters and of the running statistics.
      deterministic: initial mode; ``True`` (evaluation: running statistics) by default, as every
        jaxseq layer. ``module.train()`` / ``module.eval()`` switch it.

    torch's attributes ``num_features``, ``eps``, ``momentum``, ``affine`` and
    ``track_running_stats`` are read-only.

    Call ``bn(x, lengths=None, *, segment_ids=None, mask=None, batch_first=None,
    deterministic=None)`` with ``x [..., F]``; at most one of ``lengths`` (``[B]``),
    ``segment_ids`` (packed rows, in the layout of ``x``'s first two axes; valid where ``> 0``) and
    ``mask`` (boolean, the shape of leading axes of ``x``) restricts the statistics to valid
    positions; returns ``y`` shaped as ``x``, 0 at invalid positions. Training mode updates the
    running statistics in place (under ``nnx.jit`` / ``nnx.grad`` too). No RNG is needed.

    >>> bn = BatchNorm(2, momentum=None)
    >>> bn.train()
    >>> _ = bn(jnp.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> bn.running_var[...].tolist(), int(bn.num_batches_tracked[...])   # cumulative: the batch
    ([2.0, 8.0], 1)
    """

    #: torch's ``state_dict`` keys, in its order (those present: see ``affine`` and
    #: ``track_running_stats``).
    TORCH_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    TORCH_ATTRIBUTES = ("num_features", "eps", "momentum", "affine", "track_running_stats")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 batch_first: bool = False, param_dtype: Any = jnp.float32,
                 deterministic: bool = True):
        self._num_features = check_size(num_features, "num_features")
        self._eps = _check_eps(eps)
        self._momentum = _check_momentum(momentum)
        self.batch_first = bool(batch_first)
        check_floating(param_dtype, "param_dtype")
        self.deterministic = deterministic
        shape = (self.num_features,)
        self.weight: Optional[nnx.Param] = nnx.data(None)
        self.bias: Optional[nnx.Param] = nnx.data(None)
        self.running_mean: Optional[nnx.BatchStat] = nnx.data(None)
        self.running_var: Optional[nnx.BatchStat] = nnx.data(None)
        self.num_batches_tracked: Optional[nnx.BatchStat] = nnx.data(None)
        if affine:
            self.weight = nnx.Param(jnp.ones(shape, param_dtype))
            self.bias = nnx.Param(jnp.zeros(shape, param_dtype))
        if track_running_stats:
            self.running_mean = nnx.BatchStat(jnp.zeros(shape, param_dtype))
            self.running_var = nnx.BatchStat(jnp.ones(shape, param_dtype))
            counter = jax.dtypes.canonicalize_dtype(jnp.int64)        # int32 without x64
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), counter))

    @property
    def num_features(self) -> int:
        return self._num_features

    @property
    def eps(self) -> float:
        return self._eps

    @property
    def momentum(self) -> Optional[float]:
        return self._momentum

    @property
    def affine(self) -> bool:
        """Whether there are ``weight`` and ``bias`` parameters."""
        return self.weight is not None

    @property
    def track_running_stats(self) -> bool:
        """Whether there are running statistics."""
        return self.running_mean is not None

    def __repr__(self) -> str:  # torch-like
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")

    @rejects_torch
    def __call__(self, x: jax.Array, lengths: Optional[jax.Array] = None, *,
                 segment_ids: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                 batch_first: Optional[bool] = None,
                 deterministic: Optional[bool] = None) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(f"x must be [..., F] with F = num_features = {self.num_features} "
                             f"(features last), got shape {x.shape}")
        batch_first = first_from(batch_first, self.batch_first, error_msg="batch_first not set")
        deterministic = first_from(deterministic, self.deterministic,
                                   error_msg="deterministic not set")
        valid = _valid_positions(x, lengths, segment_ids, mask, batch_first)
        stats = [v for v in (self.running_mean, self.running_var, self.num_batches_tracked)
                 if v is not None]
        running = RunningStats(*(v[...] for v in stats)) if stats else None
        y, updated = batch_norm(x, None if self.weight is None else self.weight[...],
                                None if self.bias is None else self.bias[...], running,
                                valid=valid, training=not deterministic, momentum=self.momentum,
                                eps=self.eps)
        if updated is not None and not deterministic:
            for variable, value in zip(stats, updated):
                variable[...] = value
        return y
