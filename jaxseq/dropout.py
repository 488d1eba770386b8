"""Dropout masks for sequences: element-wise (torch), locked over time (AWD-LSTM), recurrent, weights.

A *mask* here is a multiplier: ``bernoulli(1 - rate) / (1 - rate)`` (all zeros when ``rate == 1``).
Every dropout in jaxseq takes either a key (a mask is drawn) or an explicit mask (so results can be
checked exactly against torch with the same mask; see ``torch_ref.dropout`` for the torch twins).

* :func:`keep_mask`: the scaled mask itself;
* :class:`LockedDropout`: one mask ``[1, B, F]`` per sequence, shared over time (AWD-LSTM);
* :func:`embedding_dropout` / :class:`EmbeddingDropout`: drop whole word types, mask ``[V, 1]`` on the
  embedding table (AWD-LSTM's ``embedded_dropout``);
* recurrent-state dropout and weight drop on ``W_hh`` are options of :class:`jaxseq.LSTM` (and GRU, RNN):
  ``recurrent_dropout=`` and ``weight_drop=``.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.module import first_from

from jaxseq.segments import infer_max_segments, segment_broadcast
from jaxseq.validation import rejects_torch


def check_rate(rate: float, name: str = "dropout") -> float:
    """Return ``float(rate)`` or raise torch's ``ValueError`` for a rate outside ``[0, 1]``."""
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability of "
                         f"an element being zeroed, got {rate!r}")
    return float(rate)


def keep_mask(key: jax.Array, rate: float, shape: Sequence[int], dtype: jnp.dtype = jnp.float32
              ) -> jax.Array:
    """Scaled keep mask ``bernoulli(1 - rate) / (1 - rate)`` of ``shape`` (zeros when ``rate == 1``).

    >>> m = keep_mask(jax.random.key(0), 0.5, (1000,))
    >>> sorted(set(m.tolist()))
    [0.0, 2.0]
    """
    rate = check_rate(rate)
    if rate == 1.0:
        return jnp.zeros(shape, dtype)
    keep = jax.random.bernoulli(key, 1.0 - rate, tuple(shape))
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


def _key_from(rngs: nnx.Rngs | nnx.RngStream | jax.Array) -> jax.Array:
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    return rngs


def _check_mask(mask: Any, target: Sequence[int], what: str) -> jax.Array:
    """Return ``mask`` as an array, or raise ``ValueError`` if it does not broadcast to ``target``."""
    mask = jnp.asarray(mask)
    try:
        ok = jnp.broadcast_shapes(mask.shape, tuple(target)) == tuple(target)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{what}: mask of shape {mask.shape} does not broadcast to {tuple(target)}")
    return mask


class LockedDropout(nnx.Module):
    """Dropout with one mask per sequence, shared by every time step (AWD-LSTM's ``LockedDropout``).

    The mask has shape ``[1, B, F]`` (``[B, 1, F]`` with ``batch_first``) and is drawn afresh at every
    call in training mode; it is the identity in evaluation mode (the default after construction;
    call ``.train()`` to enable it, as for every jaxseq dropout).

    Args:
      rate: probability of zeroing a feature of a sequence; a call's ``rate=`` overrides it (as
        AWD-LSTM calls one ``LockedDropout()`` with a different rate at each place).
      batch_first: layout of the inputs (``[B, T, F]`` if True, else ``[T, B, F]``).
      deterministic: initial mode; ``True`` (evaluation) by default.
      rngs: source of the ``dropout`` stream.

    Call ``layer(x, *, rate=None, mask=None, segment_ids=None, max_segments=None,
    deterministic=None, rngs=None)``: an explicit ``mask`` (a scaled multiplier broadcastable to
    ``x``, e.g. from :func:`keep_mask`) is applied as given; ``rngs`` (a key, ``RngStream`` or
    ``Rngs``) overrides the stored stream.

    Packed rows (:mod:`jaxseq.segments`): with ``segment_ids`` (in the layout of ``x``'s first two
    axes) one mask ``[B, S, F]`` is drawn per *segment*, so every sequence of a row gets its own
    mask, shared by its steps (``max_segments`` defaults to the largest id of concrete ids).

    >>> drop = LockedDropout(0.5, rngs=nnx.Rngs(0))
    >>> drop.train()
    >>> y = drop(jnp.ones((4, 2, 3)))                   # [T, B, F]
    >>> bool((y == y[0]).all())                           # same mask at every step
    True
    """

    def __init__(self, rate: float, *, batch_first: bool = False, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        self.rate = check_rate(rate, "rate")
        self.batch_first = batch_first
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if rngs is not None else nnx.data(None)

    def mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        """``[1, B, F...]`` (or ``[B, 1, F...]``): the shape of the mask for input ``x``."""
        t_axis = 1 if self.batch_first else 0
        return x.shape[:t_axis] + (1,) + x.shape[t_axis + 1:]

    @rejects_torch
    def __call__(self, x: jax.Array, *, rate: Optional[float] = None,
                 mask: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None, max_segments: Optional[int] = None,
                 deterministic: Optional[bool] = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
        rate = self.rate if rate is None else check_rate(rate, "rate")
        if mask is not None:
            return x * _check_mask(mask, x.shape, "LockedDropout").astype(x.dtype)
        if first_from(deterministic, self.deterministic, error_msg="deterministic not set") or rate == 0:
            return x
        key = _key_from(first_from(rngs, self.rngs,
                                   error_msg="LockedDropout in training mode needs `rngs`"))
        if segment_ids is None:
            return x * keep_mask(key, rate, self.mask_shape(x), x.dtype)
        if x.ndim < 3:
            raise ValueError(f"LockedDropout with segment_ids expects x of shape [T, B, F...] (or "
                             f"[B, T, F...]), got {x.shape}")
        S = infer_max_segments(segment_ids) if max_segments is None else max_segments
        batch = x.shape[0] if self.batch_first else x.shape[1]
        per_segment = keep_mask(key, rate, (batch, S) + x.shape[2:], x.dtype)
        return x * segment_broadcast(per_segment, segment_ids, self.batch_first)


def _is_key(a: jax.Array) -> bool:
    """A typed PRNG key, or a raw ``uint32[2]`` key."""
    typed = jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
    return typed or (a.dtype == jnp.uint32 and a.shape == (2,))


def _embedding_mask(key_or_mask: jax.Array, num_embeddings: int, rate: float, dtype: jnp.dtype
                    ) -> jax.Array:
    """``[V, 1]`` row mask: drawn from a key with ``rate``, or an explicit ``[V, 1]`` / ``[V]`` mask."""
    a = jnp.asarray(key_or_mask)
    if _is_key(a):
        return keep_mask(a, rate, (num_embeddings, 1), dtype)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"key_or_mask must be a PRNG key or a floating mask, got dtype {a.dtype}")
    if a.shape not in ((num_embeddings,), (num_embeddings, 1)):
        raise ValueError(f"embedding dropout mask must have shape ({num_embeddings}, 1) or "
                         f"({num_embeddings},), got {a.shape}")
    return a.reshape(num_embeddings, 1).astype(dtype)


@rejects_torch
def embedding_dropout(key_or_mask: jax.Array, embedding: jax.Array, rate: float = 0.0) -> jax.Array:
    """Drop whole rows (word types) of an embedding table: AWD-LSTM's ``embedded_dropout``.

    Every occurrence of a dropped word is zero; kept rows are scaled by ``1 / (1 - rate)``. Pure and
    jit-able; apply it only in training (or use :class:`EmbeddingDropout`, which does).

    Args:
      key_or_mask: a PRNG key (a mask ``keep_mask(key, rate, (V, 1))`` is drawn) or an explicit scaled
        mask ``[V, 1]`` / ``[V]``, e.g. the one given to the torch twin.
      embedding: the table ``[V, E]``.
      rate: probability of dropping a row; used only when a key is given. Default 0 (identity).

    Returns:
      ``embedding * mask``, shape ``[V, E]``; look words up in it as in the table.

    Raises:
      ValueError: ``embedding`` is not 2-D, a mask has the wrong shape or dtype, or ``rate`` is
        outside ``[0, 1]``.

    >>> table = jnp.ones((6, 2))                                       # [V=6, E=2]
    >>> embedding_dropout(jnp.array([1., 0, 1, 1, 0, 1]), table)[:, 0].tolist()
    [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    >>> dropped = embedding_dropout(jax.random.key(0), table, 0.5)
    >>> sorted(set(dropped.ravel().tolist()))                          # whole rows 0 or 1/(1-p)
    [0.0, 2.0]
    """
    rate = check_rate(rate, "rate")
    if jnp.ndim(embedding) != 2:
        raise ValueError(f"embedding must be a table [V, E], got shape {jnp.shape(embedding)}")
    return embedding * _embedding_mask(key_or_mask, embedding.shape[0], rate, embedding.dtype)


class EmbeddingTable(Protocol):
    """What :class:`EmbeddingDropout` wraps: a table of ``num_embeddings`` rows looked up by
    ``__call__(ids [...]) -> [..., E]``: ``nnx.Embed``, :class:`jaxseq.Embedding` (torch's
    ``padding_idx``), or a module of your own with both."""

    @property
    def num_embeddings(self) -> int: ...

    def __call__(self, inputs: jax.Array) -> jax.Array: ...


class EmbeddingDropout(nnx.Module):
    """An embedding (``nnx.Embed``, :class:`jaxseq.Embedding`) whose lookups drop whole word types
    in training (AWD-LSTM's ``dropoute``).

    Wraps ``embed`` (kept as ``self.embed``, e.g. for weight tying with ``self.embed.attend``). In
    training mode each call draws one mask ``[V, 1]`` over the vocabulary, so every occurrence of a
    dropped word in the batch is zero and kept words are scaled by ``1 / (1 - rate)``; the result
    equals looking ``inputs`` up in :func:`embedding_dropout` of the table, without materialising
    the masked table. Evaluation mode (the default after construction) is a plain lookup.

    Args:
      embed: an :class:`EmbeddingTable`: ``nnx.Embed``, :class:`jaxseq.Embedding` (its padding
        row still gets no gradient), or any module with ``num_embeddings`` and ``__call__(int ids)
        -> [..., E]``.
      rate: probability of dropping a word type.
      deterministic: initial mode; ``True`` (evaluation) by default. ``.train()`` / ``.eval()`` switch.
      rngs: source of the ``dropout`` stream (may be omitted when ``rate == 0`` or masks are explicit).

    Call ``layer(inputs, *, mask=None, deterministic=None, rngs=None)`` with integer ``inputs [...]``;
    returns ``[..., E]``. An explicit ``mask`` (``[V, 1]`` or ``[V]``, already scaled) is always applied.

    Raises:
      TypeError: ``embed`` is not callable or has no integer ``num_embeddings``.

    >>> emb = EmbeddingDropout(nnx.Embed(10, 3, rngs=nnx.Rngs(0)), 0.5, rngs=nnx.Rngs(1))
    >>> ids = jnp.array([[1, 2, 1], [3, 1, 0]])                     # [B, T]
    >>> bool((emb(ids) == emb.embed(ids)).all())                     # evaluation: plain lookup
    True
    >>> emb.train()
    >>> y = emb(ids)
    >>> bool((y[0, 0] == y[0, 2]).all() and (y[0, 0] == y[1, 1]).all())   # word 1: one decision
    True
    """

    def __init__(self, embed: EmbeddingTable, rate: float, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        rows = getattr(embed, "num_embeddings", None)
        if not (callable(embed) and isinstance(rows, numbers.Integral)):
            raise TypeError(f"embed must be an embedding (nnx.Embed, jaxseq.Embedding: callable, "
                            f"with an integer num_embeddings), got {type(embed).__name__}")
        self.embed = embed
        self.rate = check_rate(rate, "rate")
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if rngs is not None else nnx.data(None)

    @rejects_torch
    def __call__(self, inputs: jax.Array, *, mask: Optional[jax.Array] = None,
                 deterministic: Optional[bool] = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
        out = self.embed(inputs)
        if mask is None:
            deterministic = first_from(deterministic, self.deterministic,
                                       error_msg="deterministic not set")
            if deterministic or self.rate == 0:
                return out
            mask = _key_from(first_from(rngs, self.rngs,
                                        error_msg="EmbeddingDropout in training mode needs `rngs`"))
        rows = _embedding_mask(mask, self.embed.num_embeddings, self.rate, out.dtype)
        return out * jnp.take(rows, inputs, axis=0)
