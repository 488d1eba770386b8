"""Input validation shared by every public entry point.

Checks run on concrete (non-traced) values before any computation and raise ``ValueError`` /
``TypeError`` with a message naming the argument, what was expected and what was received.
Traced values (inside ``jit``) cannot be inspected on the host; :func:`check_lengths` documents how
to check them there.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a host/device value whose contents can be read now (not a jit tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_lengths(lengths: Any, max_len: int, batch_size: int | None = None,
                  *, name: str = "lengths") -> jax.Array:
    """Validate a ``[B]`` integer array of sequence lengths and return it as ``int32``.

    Args:
      lengths: integer array-like ``[B]`` with ``0 <= lengths[b] <= max_len``.
      max_len: the padded time extent ``T``.
      batch_size: expected ``B``; ``None`` skips that check.
      name: argument name used in error messages.

    Returns:
      ``jnp.int32`` array ``[B]``.

    Raises:
      TypeError: ``lengths`` is not of an integer dtype.
      ValueError: wrong rank, ``B`` mismatch, or (when concrete) a value ``< 0`` or ``> max_len``.

    Under ``jit`` the values are tracers and only dtype and shape are checked here. To check values
    inside a jitted step, use :func:`jaxseq.checked` (``jax.experimental.checkify``) or call this
    function on the concrete lengths before entering ``jit``.

    >>> check_lengths([3, 1], max_len=3)
    Array([3, 1], dtype=int32)
    """
    if isinstance(lengths, (list, tuple)):
        lengths = np.asarray(lengths)
    if not hasattr(lengths, "dtype") or not hasattr(lengths, "shape"):
        raise TypeError(f"`{name}` must be an integer array of shape [B], got {type(lengths).__name__}")
    if lengths.size and not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype, got {lengths.dtype}")
    if lengths.ndim != 1:
        raise ValueError(f"`{name}` must have shape [B], got shape {tuple(lengths.shape)}")
    if batch_size is not None and lengths.shape[0] != batch_size:
        raise ValueError(f"Expected len({name}) to be equal to batch_size, but got "
                         f"{lengths.shape[0]} (batch_size={batch_size})")
    if is_concrete(lengths) and lengths.size:
        host = np.asarray(lengths)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0:
            raise ValueError(f"`{name}` must be >= 0, but found {lo} at index {int(host.argmin())}")
        if hi > max_len:
            raise ValueError(f"`{name}` must be <= the padded length T={max_len}, but found {hi} at "
                             f"index {int(host.argmax())} (nothing is silently truncated)")
    return jnp.asarray(lengths, dtype=jnp.int32)
