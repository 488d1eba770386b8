"""torch's ``nn.Embedding`` with ``padding_idx``: a lookup whose padding row never gets a gradient.

:func:`embedding_lookup` is the pure function (``F.embedding``), :class:`Embedding` the thin NNX
module that owns torch's parameter ``weight [N, E]``, so ``jaxseq.load_torch_state_dict`` /
``jaxseq.torch_state_dict`` exchange it with an ``nn.Embedding``'s ``state_dict`` (key ``weight``).

Semantics (torch's):

* the output is ``weight[ids]``, the row ``padding_idx`` included (zero after construction, but a
  loaded or trained value is returned as it is, as torch does);
* the gradient of ``weight`` is the sum of the output gradients of every position, except the
  positions whose id is ``padding_idx``: those contribute nothing (torch's embedding backward skips
  them), so row ``padding_idx`` never receives a gradient, even where a pad id sits at a real
  (unmasked) position. ``nnx.Embed`` has no ``padding_idx``: a pad id at a real position gives
  that row a gradient torch never gives. Implemented with ``jax.lax.stop_gradient`` on the looked-up
  rows where ``ids == padding_idx``: a pure function, so every JAX transformation (``grad``,
  ``jvp``, ``vmap``, ``jit``) sees the same rule;
* a negative ``padding_idx`` counts from the end (``-1`` is ``N - 1``) and is stored normalised;
* ids must lie in ``[0, N)``: a ``ValueError`` names the first bad one when the ids are concrete
  (and under :func:`jaxseq.checked`); traced ids outside the range give NaN rows (never a wrapped
  or clipped row).

Not covered: torch's ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` options.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from jaxseq.validation import check_floating, check_size, is_concrete, rejects_torch, traced_policy


def check_padding_idx(padding_idx: Optional[int], num_embeddings: int) -> Optional[int]:
    """torch's check of ``padding_idx``, normalised: ``None``, or an index in ``[0, N)``.

    >>> check_padding_idx(-1, 10)
    9
    >>> check_padding_idx(10, 10)
    Traceback (most recent call last):
    ...
    ValueError: padding_idx must be within num_embeddings: -10 <= padding_idx < 10, got 10
    """
    if padding_idx is None:
        return None
    if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx must be an int or None, got {type(padding_idx).__name__} "
                        f"({padding_idx!r})")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within num_embeddings: {-num_embeddings} <= "
                         f"padding_idx < {num_embeddings}, got {padding_idx}")
    return int(padding_idx) % num_embeddings


def _range_message(num_embeddings: int) -> str:
    """Message for an id outside the table; ``{}`` slots take the flat position and the value."""
    return (f"ids must satisfy 0 <= id < num_embeddings={num_embeddings} (torch: 'index out of "
            "range in self'), but found ids.flat[{}] = {}")


def _check_ids(ids: Any, num_embeddings: int) -> Any:
    """Integer ids, range-checked when concrete (or under :func:`jaxseq.checked`)."""
    if not isinstance(ids, jax.Array):    # lists, numpy arrays, CPU torch tensors
        ids = np.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must have an integer dtype, got {ids.dtype} (cast token ids with "
                        ".astype(int))")
    if is_concrete(ids):
        host = np.asarray(ids).ravel()
        bad = np.flatnonzero((host < 0) | (host >= num_embeddings))
        if bad.size:
            raise ValueError(_range_message(num_embeddings).format(int(bad[0]), int(host[bad[0]])))
    elif traced_policy() == "checkify":
        flat = jnp.ravel(ids)
        outside = (flat < 0) | (flat >= num_embeddings)
        first = jnp.argmax(outside)
        checkify.check(~jnp.any(outside), _range_message(num_embeddings), first, flat[first])
    return ids


#: ``padding_idx=None`` inside the compiled functions (one compilation serves every padding_idx).
_NO_PADDING = -1


@jax.jit
def _lookup(weight: jax.Array, ids: jax.Array, padding_idx: jax.Array) -> jax.Array:
    # Negative ids are out of range (a NaN row), never counted from the end as jnp.take would.
    inside = jnp.where(ids < 0, weight.shape[0], ids)
    rows = jnp.take(weight, inside, axis=0, mode="fill", fill_value=jnp.nan)
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)


@rejects_torch
def embedding_lookup(weight: jax.Array, ids: Any, padding_idx: Optional[int] = None) -> jax.Array:
    """``weight[ids]`` with torch's ``padding_idx`` gradient rule (``F.embedding``). Pure, jit-able.

    Args:
      weight: the table ``[N, E]`` (floating).
      ids: integer ids ``[...]`` in ``[0, N)``.
      padding_idx: a row that gets no gradient from any position (``-1`` is ``N - 1``); ``None``
        (default): every row gets its gradient.

    Returns:
      ``[..., E]`` in ``weight``'s dtype: ``weight[ids]``. Its gradient with respect to ``weight``
      sums the output gradients per id, skipping the positions whose id is ``padding_idx``.

    Raises:
      ValueError: ``weight`` is not 2-D; ``padding_idx`` outside ``[-N, N)``; an id outside
        ``[0, N)`` (concrete ids, or under :func:`jaxseq.checked`; traced ids outside it give NaN
        rows).
      TypeError: ``weight`` is not floating, ``ids`` not integer.

    >>> weight = jnp.arange(6.0).reshape(3, 2)                       # [N=3, E=2]
    >>> ids = jnp.array([[1, 0], [2, 0]])                            # [B=2, T=2], id 0 = padding
    >>> embedding_lookup(weight, ids, padding_idx=0)[1].tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    >>> grad = jax.grad(lambda w: embedding_lookup(w, ids, padding_idx=0).sum())(weight)
    >>> grad.tolist()                                                # row 0: no gradient
    [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    """
    if jnp.ndim(weight) != 2:
        raise ValueError(f"weight must be a table [N, E], got shape {jnp.shape(weight)}")
    check_floating(jnp.result_type(weight), "weight")
    num_embeddings = int(jnp.shape(weight)[0])
    padding_idx = check_padding_idx(padding_idx, num_embeddings)
    return _lookup(weight, _check_ids(ids, num_embeddings),
                   _NO_PADDING if padding_idx is None else padding_idx)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal_table(key: jax.Array, shape: tuple[int, int], dtype: Any,
                  padding_idx: jax.Array) -> jax.Array:
    """torch's ``nn.Embedding`` init: ``N(0, 1)``, row ``padding_idx`` zero."""
    weight = jax.random.normal(key, shape, dtype)
    return jnp.where(jnp.arange(shape[0])[:, None] == padding_idx, 0, weight).astype(dtype)


class Embedding(nnx.Module):
    """torch's ``nn.Embedding(num_embeddings, embedding_dim, padding_idx)``: ``emb(ids) -> [..., E]``.

    Owns ``weight [N, E]`` (an ``nnx.Param``, torch's name and layout), drawn from ``N(0, 1)`` with
    row ``padding_idx`` zero, as torch's. Row ``padding_idx`` gets no gradient from any position
    (:func:`embedding_lookup`; see the module docs). ``num_embeddings``, ``embedding_dim`` and
    ``padding_idx`` (normalised: ``-1`` reads ``N - 1``) are read-only, equal to torch's for the same
    arguments. ``jaxseq.load_torch_state_dict`` / ``jaxseq.torch_state_dict`` exchange ``weight``
    with ``nn.Embedding``'s state_dict as it is; :class:`jaxseq.EmbeddingDropout` wraps it.

    Args:
      num_embeddings: ``N``, the vocabulary size.
      embedding_dim: ``E``.
      padding_idx: the row without gradient (``None``: none), in ``[-N, N)``.
      rngs: ``rngs.params()`` draws the table.
      param_dtype: dtype of ``weight`` (default float32); the lookup computes in it.

    Raises:
      TypeError / ValueError: a size that is not an integer ``>= 0``, or a ``padding_idx`` outside
        ``[-N, N)``.

    >>> emb = Embedding(10, 3, padding_idx=0, rngs=nnx.Rngs(0))
    >>> emb
    Embedding(10, 3, padding_idx=0)
    >>> emb.weight.shape, emb.weight[0].tolist()
    ((10, 3), [0.0, 0.0, 0.0])
    >>> emb(jnp.array([[4, 0]])).shape                              # [B, T] -> [B, T, E]
    (1, 2, 3)
    >>> emb.attend(jnp.ones((1, 3))).shape                          # tied output layer: [..., N]
    (1, 10)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        self._num_embeddings = check_size(num_embeddings, "num_embeddings", minimum=0)
        self._embedding_dim = check_size(embedding_dim, "embedding_dim", minimum=0)
        self._padding_idx = check_padding_idx(padding_idx, self._num_embeddings)
        check_floating(param_dtype, "param_dtype")
        shape = (self._num_embeddings, self._embedding_dim)
        pad = _NO_PADDING if self._padding_idx is None else self._padding_idx
        self.weight = nnx.Param(_normal_table(rngs.params(), shape, np.dtype(param_dtype), pad))

    @property
    def num_embeddings(self) -> int:
        return self._num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    @property
    def padding_idx(self) -> Optional[int]:
        return self._padding_idx

    def __repr__(self) -> str:  # torch-like
        pad = "" if self._padding_idx is None else f", padding_idx={self._padding_idx}"
        return f"Embedding({self._num_embeddings}, {self._embedding_dim}{pad})"

    @rejects_torch
    def __call__(self, ids: Any) -> jax.Array:
        """``ids [...]`` (integers in ``[0, N)``) -> ``[..., E]`` (see :func:`embedding_lookup`)."""
        return embedding_lookup(self.weight[...], ids, self._padding_idx)

    @rejects_torch
    def attend(self, query: jax.Array) -> jax.Array:
        """The tied output layer: ``query [..., E] @ weight.T -> [..., N]`` (``nnx.Embed.attend``;
        torch's ``F.linear(query, embedding.weight)``). Row ``padding_idx`` gets its gradient here,
        as in torch, where only the lookup skips it.

        Raises:
          ValueError: ``query``'s last axis is not ``embedding_dim``.
        """
        if jnp.ndim(query) < 1 or jnp.shape(query)[-1] != self._embedding_dim:
            raise ValueError(f"query must be [..., E] with E = embedding_dim = "
                             f"{self._embedding_dim}, got shape {jnp.shape(query)}")
        return jnp.matmul(query, self.weight[...].T)
