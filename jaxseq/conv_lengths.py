"""Sequence lengths through a convolution: torch's output-size formula, per sequence of a batch.

A strided (or unpadded) convolution over a padded batch shortens every sequence; what comes after it
(the LSTM's ``lengths``, masks, a batch norm over valid frames, ``ctc_loss``'s ``input_lengths``)
takes the output lengths, never the input ones. Along one spatial axis, for input length ``L``
(torch's ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` docs, "Shape", with the padding of each side)::

    L_out = floor((L + pad_low + pad_high - dilation * (kernel_size - 1) - 1) / stride) + 1

Length 0 and sequences shorter than one window. torch refuses such an input (``Kernel size can't be
greater than actual input size``); in a padded batch one short sequence is normal. Here the output
length is 0 whenever the formula gives ``<= 0`` (the padded sequence is shorter than one window) and
whenever ``L == 0`` (an empty sequence stays empty, as jaxseq's layers treat ``lengths[b] == 0``),
even where padding alone would make frames (``kernel_size=3, padding=2``: the formula gives 2 for
``L == 0``). Otherwise it is torch's formula exactly, and it never exceeds the output's time extent
for lengths up to the input's.

:func:`conv_output_lengths` takes torch's constructor arguments (``kernel_size``, ``stride``,
``padding``, ``dilation`` of one axis); :func:`nnx_conv_output_lengths` reads them from an
``nnx.Conv``. Both are jit-able and return what they are given: numpy for numpy (no device work), a
``jax.Array`` for a ``jax.Array`` (or a tracer), an ``int`` for an ``int``.
"""
from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseq.validation import check_size, is_concrete, rejects_torch

#: ``padding``: an int (both sides, torch's), a ``(low, high)`` pair (Flax's explicit padding), or
#: a string: ``"valid"`` (none), ``"same"`` (output ``ceil(L / stride)``: torch's ``"same"``
#: (stride 1 only there) and Flax's ``"SAME"``, ``"SAME_LOWER"``, ``"CIRCULAR"``, ``"REFLECT"``),
#: ``"causal"`` (``dilation * (kernel_size - 1)`` on the left: Flax's ``"CAUSAL"``). Case-insensitive.
Padding = Union[int, tuple[int, int], str]

#: Strings whose total padding is the dilated window minus one, so ``L_out = ceil(L / stride)``:
#: their padding may be split otherwise (and, with a stride, depend on ``L``), never their size.
_SAME = ("same", "same_lower", "circular", "reflect")


def _total_padding(padding: Padding, span: int) -> int:
    """``pad_low + pad_high`` of ``padding`` for a window of ``span + 1`` (dilated) steps."""
    if isinstance(padding, str):
        name = padding.lower()
        if name in _SAME or name == "causal":
            return span
        if name == "valid":
            return 0
        known = ", ".join(map(repr, ("valid", "causal") + _SAME))
        raise ValueError(f"padding string must be one of {known} (any case), got {padding!r}")
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        return 2 * check_size(padding, "padding", minimum=0)
    if isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 2:
        low, high = padding
        return (check_size(low, "padding (low)", minimum=0)
                + check_size(high, "padding (high)", minimum=0))
    raise TypeError(f"padding must be an int, a (low, high) pair or a string, got {padding!r}")


@functools.partial(jax.jit, static_argnums=(1, 2))
def _jax_lengths(lengths: jax.Array, excess: int, stride: int) -> jax.Array:
    out = (lengths + excess) // stride + 1
    return jnp.where(lengths > 0, jnp.maximum(out, 0), 0).astype(lengths.dtype)


@rejects_torch
def conv_output_lengths(lengths: Any, kernel_size: int, stride: int = 1, padding: Padding = 0,
                        dilation: int = 1) -> Any:
    """The output lengths of a convolution along one axis (torch's formula, see the module docs).

    Args:
      lengths: integer input lengths ``[B]`` (any shape, or an ``int``), ``>= 0``: numpy, a
        ``jax.Array`` (traced under ``jit`` too) or a Python int.
      kernel_size: the conv's window along this axis (torch's ``nn.Conv1d(..., kernel_size,
        stride, padding, dilation)`` arguments; ``nnx.Conv``'s ``kernel_size``), ``>= 1``.
      stride: the conv's stride (``nnx.Conv``'s ``strides``), ``>= 1``; default 1.
      padding: an int (each side), a ``(low, high)`` pair, or ``"valid"``, ``"same"``,
        ``"causal"`` (see :data:`Padding`); default 0 (torch's default; ``nnx.Conv``'s is
        ``"SAME"``).
      dilation: the conv's dilation (``nnx.Conv``'s ``kernel_dilation``), ``>= 1``; default 1.

    Returns:
      ``L_out``, same shape and kind as ``lengths`` (numpy in: numpy out, in its dtype; jax in: jax
      out; int in: int out); 0 for ``L == 0`` and for sequences shorter than one window.

    Raises:
      TypeError: non-integer ``lengths`` or sizes; a ``padding`` of another kind.
      ValueError: a size ``< 1`` (padding ``< 0``), an unknown padding string, a negative length
        (concrete lengths).

    >>> import numpy as np
    >>> conv_output_lengths(np.array([0, 1, 4, 9, 10]), kernel_size=5, stride=2, padding=2)
    array([0, 1, 2, 5, 5])
    >>> conv_output_lengths(np.array([0, 2, 3, 7]), kernel_size=3, dilation=2)   # no padding
    array([0, 0, 0, 3])
    >>> conv_output_lengths(16, kernel_size=5, stride=2, padding=(2, 2))       # an int: an int
    8
    """
    kernel_size = check_size(kernel_size, "kernel_size")
    stride = check_size(stride, "stride")
    span = check_size(dilation, "dilation") * (kernel_size - 1)
    excess = _total_padding(padding, span) - span - 1           # L_out = (L + excess) // s + 1
    if isinstance(lengths, (jax.Array, jax.core.Tracer)):
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
        if is_concrete(lengths) and lengths.size and np.asarray(lengths).min() < 0:
            raise ValueError(f"lengths must be >= 0, got {np.asarray(lengths).tolist()}")
        return _jax_lengths(lengths, excess, stride)
    host = np.asarray(lengths)
    if not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"lengths must have an integer dtype, got {host.dtype}")
    if host.size and host.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {host.tolist()}")
    out = np.where(host > 0, np.maximum((host + excess) // stride + 1, 0), 0).astype(host.dtype)
    return int(out) if isinstance(lengths, numbers.Integral) else out


def _along(value: Any, axis: int, default: int = 1) -> int:
    """An ``nnx.Conv`` option (``None``, an int, or one value per spatial axis) along ``axis``."""
    if value is None:
        return default
    return int(value[axis]) if isinstance(value, Sequence) else int(value)


@rejects_torch
def nnx_conv_output_lengths(lengths: Any, conv: nnx.Conv, axis: int = -1) -> Any:
    """The output lengths of ``conv`` along its spatial ``axis`` (:func:`conv_output_lengths` with
    the conv's ``kernel_size``, ``strides``, ``padding``, ``kernel_dilation``).

    Args:
      lengths: integer input lengths ``[B]`` (or an ``int``), as :func:`conv_output_lengths`.
      conv: an ``nnx.Conv`` (1-D, 2-D, 3-D) with any ``padding``: an int, per-axis ints or
        ``(low, high)`` pairs, or a string (``"SAME"``, ``"VALID"``, ``"CAUSAL"``,
        ``"SAME_LOWER"``, ``"CIRCULAR"``, ``"REFLECT"``).
      axis: the spatial axis, counted over the conv's spatial axes (``[B, *spatial, C]``); default
        -1, the last one: time for ``[B, T, C]`` and for ``[B, F, T, C]``.

    Returns:
      As :func:`conv_output_lengths`. With ``"SAME"`` padding and a stride, Flax splits the padding
      by the padded batch's extent ``T``, not by each sequence's ``L``: the count of output frames
      is ``ceil(L / stride)`` but a shorter sequence's windows may sit one step off from that
      sequence run alone; explicit pairs (torch's ``padding=p`` is ``[(p, p)]``) have no such offset.

    Raises:
      ValueError: ``axis`` outside the conv's spatial axes, ``input_dilation`` other than 1 (a
        transposed-style conv; this is not its formula), or as :func:`conv_output_lengths`.
      TypeError: ``conv`` is not an ``nnx.Conv``.

    >>> from flax import nnx
    >>> conv = nnx.Conv(1, 4, (5, 3), strides=(2, 1), padding=[(2, 2), (1, 1)], rngs=nnx.Rngs(0))
    >>> nnx_conv_output_lengths(np.array([0, 5, 10]), conv, axis=0)      # frequency, [B, F, T, C]
    array([0, 3, 5])
    >>> nnx_conv_output_lengths(np.array([0, 5, 10]), conv)              # time: stride 1
    array([ 0,  5, 10])
    """
    if not isinstance(conv, nnx.Conv):
        raise TypeError(f"conv must be an nnx.Conv, got {type(conv).__name__}")
    ndim = len(conv.kernel_size)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must index the conv's {ndim} spatial axes ({-ndim} <= axis < "
                         f"{ndim}), got {axis}")
    axis %= ndim
    if any(d != 1 for d in np.broadcast_to(1 if conv.input_dilation is None
                                           else conv.input_dilation, (ndim,))):
        raise ValueError(f"input_dilation={conv.input_dilation} is not supported (the formula is "
                         "a plain convolution's)")
    padding: Any = conv.padding
    if not isinstance(padding, (str, numbers.Integral)):
        padding = padding[axis]                 # per axis: an int or a (low, high) pair
    return conv_output_lengths(lengths, kernel_size=conv.kernel_size[axis],
                               stride=_along(conv.strides, axis), padding=padding,
                               dilation=_along(conv.kernel_dilation, axis))
