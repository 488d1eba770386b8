"""Decoding helpers for encoder-decoder models: masked attention, teacher forcing, greedy and beam
search, all pure and jit-able.

The decoder step is a function the caller writes around jaxseq cells (or layers):
``step(carry, tokens [B]) -> (logits [B, V], carry)`` for search, ``step(carry, x_t) -> (carry, y_t)``
for teacher forcing (a ``lax.scan`` body). ``carry`` is any pytree: a cell's ``(h, c)`` (each
``[B, H]``), a layer's ``(h_n, c_n)`` (each ``[L*D, B, H]``), attention context, the encoder
outputs... Beam search reorders it with :func:`reorder_state`, which needs to know each leaf's
batch axis: ``batch_axis`` is an int for every leaf or a pytree prefix of the carry (as
``jax.vmap``'s ``in_axes``), e.g. ``(0, 1)`` for ``(cell_state, layer_state)``.

NNX modules can be called inside these functions: a step that only reads their parameters may
reach them through a closure (see ``examples/seq2seq.py``); a step whose modules draw from their
own RNG streams (an ``nnx.Dropout`` in training mode) or update other state is passed as the
module itself, as a bound method (``model.decoder_step``), or as ``step(modules, carry, x)`` with
``modules=``: that state is carried from step to step and the results equal an unrolled Python
loop's (:mod:`jaxseq.loop`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq.loop import eval_step, scan_steps
from jaxseq.validation import check_lengths, check_size, rejects_torch

Step = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


@rejects_torch
def attention_weights(scores: jax.Array, lengths: jax.Array) -> jax.Array:
    """Softmax over the last axis of ``scores [B, ..., T]`` that puts no weight on ``t >= lengths[b]``.

    Twin of torch's ``scores.masked_fill(~mask, -inf).softmax(-1)``, except that a row with
    ``lengths[b] == 0`` gets all-zero weights (torch: NaN). Padded scores (NaN included) reach
    neither the weights nor any gradient.

    >>> w = attention_weights(jnp.array([[1.0, 1.0, jnp.nan], [0.0, 0.0, 0.0]]), jnp.array([2, 0]))
    >>> w.tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    """
    scores = jnp.asarray(scores)
    if scores.ndim < 2:
        raise ValueError(f"scores must be [B, ..., T], got shape {scores.shape}")
    lengths = check_lengths(lengths, scores.shape[-1], scores.shape[0])
    mask = jnp.arange(scores.shape[-1]) < lengths.reshape((-1,) + (1,) * (scores.ndim - 1))
    lowest = jnp.finfo(scores.dtype).min
    weights = jax.nn.softmax(jnp.where(mask, scores, lowest), axis=-1)
    return jnp.where(mask, weights, jnp.zeros((), weights.dtype))


@rejects_torch
def dot_attention(query: jax.Array, keys: jax.Array, values: jax.Array, lengths: jax.Array, *,
                  batch_first: bool = True) -> tuple[jax.Array, jax.Array]:
    """Luong dot-product attention over padded encoder outputs.

    Args:
      query: ``[B, H]`` (one decoder step) or ``[B, Tq, H]`` (every step at once).
      keys: ``[B, T, H]`` (``[T, B, H]`` with ``batch_first=False``), e.g. an encoder's output.
      values: ``[B, T, F]`` (or ``[T, B, F]``); often ``keys`` itself.
      lengths: integer ``[B]``: the encoder lengths; no weight goes to ``t >= lengths[b]``.
      batch_first: layout of ``keys`` and ``values``.

    Returns:
      ``(context, weights)``: ``[B, F]`` and ``[B, T]`` (``[B, Tq, F]``, ``[B, Tq, T]`` for a
      ``[B, Tq, H]`` query).

    >>> keys = jnp.array([[[1.0], [1.0], [jnp.nan]]])               # [B=1, T=3, H=1]
    >>> ctx, w = dot_attention(jnp.array([[2.0]]), keys, keys, jnp.array([2]))
    >>> ctx.tolist(), w.tolist()
    ([[1.0]], [[0.5, 0.5, 0.0]])
    """
    if not batch_first:
        keys, values = jnp.swapaxes(keys, 0, 1), jnp.swapaxes(values, 0, 1)
    single = query.ndim == 2
    q = query[:, None] if single else query                             # [B, Tq, H]
    if keys.ndim != 3 or values.ndim != 3 or q.ndim != 3 or keys.shape[:2] != values.shape[:2]:
        raise ValueError(f"expected query [B, H] or [B, Tq, H], keys [B, T, H], values [B, T, F]; "
                         f"got {query.shape}, {keys.shape}, {values.shape}")
    if q.shape[0] != keys.shape[0] or q.shape[-1] != keys.shape[-1]:
        raise ValueError(f"query {query.shape} and keys {keys.shape} disagree on B or H")
    T = keys.shape[1]
    lengths = check_lengths(lengths, T, keys.shape[0])
    valid = (jnp.arange(T) < lengths[:, None])[..., None]               # [B, T, 1]
    keys = jnp.where(valid, keys, jnp.zeros((), keys.dtype))            # padding never matters
    values = jnp.where(valid, values, jnp.zeros((), values.dtype))
    weights = attention_weights(jnp.einsum("bqh,bth->bqt", q, keys), lengths)
    context = jnp.einsum("bqt,btf->bqf", weights, values)
    return (context[:, 0], weights[:, 0]) if single else (context, weights)


@rejects_torch
def teacher_forcing(step: Callable, carry: Any, inputs: Any, *, batch_first: bool = True,
                    modules: Any = None) -> tuple[Any, Any]:
    """Run ``step(carry, x_t) -> (carry, y_t)`` over the time axis of ``inputs`` (a ``lax.scan``).

    The decoder loop of a teacher-forced training step: ``inputs`` holds the gold previous tokens
    (or their embeddings), ``[B, T, ...]`` (``[T, B, ...]`` with ``batch_first=False``; any
    pytree of such arrays). Returns ``(final carry, outputs)`` with the outputs stacked in the same
    layout. Steps past a sequence's end run too: mask them in the loss.

    ``step`` may be a function, an ``nnx.Module`` or a bound method of one; with ``modules=`` it
    is called as ``step(modules, carry, x_t)``. In the last three forms the modules' RNG streams
    and other non-parameter state are carried from step to step (:mod:`jaxseq.loop`): an
    ``nnx.Dropout`` in the step draws a fresh mask at every step, as in a Python loop.
    ``teacher_forcing(step, carry, xs, batch_first=False)`` is ``lax.scan(step, carry, xs)`` with
    that, and with the hooks of :mod:`jaxseq.hooks` (``compare_models`` sees into the loop).

    Raises:
      ValueError: the step changes module state it reaches through a closure (pass the module),
        assigns a parameter, or changes its modules' structure.

    >>> step = lambda h, x: (h + x, 2 * h)
    >>> carry, ys = teacher_forcing(step, jnp.zeros(2), jnp.ones((2, 3)))
    >>> carry.tolist(), ys.tolist()
    ([3.0, 3.0], [[0.0, 2.0, 4.0], [0.0, 2.0, 4.0]])
    >>> from flax import nnx
    >>> drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))                  # draws from its own stream
    >>> cell = lambda d, h, x: (h + d(x), h)
    >>> h, _ = teacher_forcing(cell, jnp.zeros(4), jnp.ones((4, 3)), modules=drop)
    >>> set(h.tolist()) <= {0.0, 2.0, 4.0, 6.0}                  # 3 steps, each adds 0 or 2
    True
    """
    swap = (lambda a: jnp.swapaxes(a, 0, 1)) if batch_first else (lambda a: a)
    carry, ys = scan_steps(None, step, carry,
                           jax.tree.map(swap, inputs), modules=modules, who="teacher_forcing")
    return carry, jax.tree.map(swap, ys)


@rejects_torch
def reorder_state(state: Any, indices: jax.Array, batch_axis: Any = 0) -> Any:
    """Pick batch entries ``indices`` of every leaf of ``state`` (e.g. surviving beams).

    Args:
      state: a pytree of arrays.
      indices: integer ``[B']``, rows to take (repeats allowed).
      batch_axis: the batch axis of every leaf, an int or a pytree prefix of ``state`` (a jaxseq
        cell state ``[B, H]``: 0; a layer's ``h_n`` / ``c_n`` ``[L*D, B, H]``: 1).

    Examples:
        >>> h = jnp.arange(6.0).reshape(3, 2)                           # cell state [B=3, H=2]
        >>> layer_h = jnp.arange(6.0).reshape(1, 3, 2)                  # layer state [L*D=1, B=3, H=2]
        >>> new = reorder_state((h, layer_h), jnp.array([2, 2, 0]), batch_axis=(0, 1))
        >>> new[0][:, 0].tolist(), new[1][0, :, 0].tolist()
        ([4.0, 4.0, 0.0], [4.0, 4.0, 0.0])
    """
    return jax.tree.map(lambda axis, sub: jax.tree.map(lambda a: jnp.take(a, indices, axis=axis),
                                                       sub), batch_axis, state)


def _repeat_state(state: Any, times: int, batch_axis: Any) -> Any:
    return jax.tree.map(lambda axis, sub: jax.tree.map(lambda a: jnp.repeat(a, times, axis=axis),
                                                       sub), batch_axis, state)


@rejects_torch
def greedy_decode(step: Step, carry: Any, start_tokens: jax.Array, max_len: int, *,
                  eos_id: Optional[int] = None, pad_id: int = 0,
                  modules: Any = None) -> tuple[jax.Array, jax.Array]:
    """Greedy search: feed back the argmax token for ``max_len`` steps (one ``lax.scan``).

    Args:
      step: ``step(carry, tokens [B]) -> (logits [B, V], carry)``: a function, an
        ``nnx.Module`` or a bound method; with ``modules``, ``step(modules, carry, tokens)``
        (module state carried from step to step as in :func:`teacher_forcing`).
      carry: the decoder's initial state (any pytree).
      start_tokens: integer ``[B]``, the first input (e.g. ``BOS``).
      max_len: static number of steps.
      eos_id: optional end token: a row that produced it emits ``pad_id`` afterwards.
      pad_id: token after the end.
      modules: the modules a ``step(modules, carry, tokens)`` runs on.

    Returns:
      ``(tokens [B, max_len], lengths [B])``: the produced tokens (``eos_id`` included) and how
      many of them are real.

    >>> table = jnp.array([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])   # next = f(prev)
    >>> toks, n = greedy_decode(lambda c, t: (table[t], c), None, jnp.array([0, 1]), 3, eos_id=2)
    >>> toks.tolist(), n.tolist()
    ([[1, 2, 0], [2, 0, 0]], [2, 1])
    """
    max_len = check_size(max_len, "max_len")

    def body(call, state, _):
        carry, tokens, done = state
        logits, carry = call(carry, tokens)
        nxt = jnp.argmax(logits, axis=-1).astype(tokens.dtype)
        out = jnp.where(done, jnp.asarray(pad_id, tokens.dtype), nxt)
        now_done = done | (nxt == eos_id) if eos_id is not None else done
        return (carry, nxt, now_done), (out, ~done)

    start_tokens = jnp.asarray(start_tokens)
    done0 = jnp.zeros(start_tokens.shape, bool)
    _, (tokens, real) = scan_steps(body, step, (carry, start_tokens, done0), None, length=max_len,
                                   modules=modules, who="greedy_decode")
    return tokens.T, jnp.sum(real, axis=0, dtype=jnp.int32)


class Beams(NamedTuple):
    """Result of :func:`beam_search`, best beam first."""

    tokens: jax.Array    # int [B, K, max_len]: each beam's tokens (pad_id after its eos_id)
    lengths: jax.Array   # int32 [B, K]: real tokens of each beam (eos_id included)
    scores: jax.Array    # [B, K]: sum of log-probabilities / lengths ** length_penalty


@rejects_torch
def beam_search(step: Step, carry: Any, start_tokens: jax.Array, beam_size: int, max_len: int, *,
                eos_id: int, pad_id: int = 0, length_penalty: float = 0.0,
                batch_axis: Any = 0, modules: Any = None) -> Beams:
    """Beam search under ``jit``: ``beam_size`` hypotheses per row, ``max_len`` steps.

    Every row is expanded to ``K = beam_size`` beams (the carry repeated along its batch axis, so
    ``step`` sees a batch of ``B * K``, row-major: beams of row ``b`` at ``b*K .. b*K+K-1``). At each
    step the ``K`` best continuations of all ``K * V`` candidates are kept and the carry is
    reordered with :func:`reorder_state`. A beam that produced ``eos_id`` is finished: it keeps its
    score and only extends with ``pad_id``. At the end beams are ranked by ``score / length **
    length_penalty`` (0: raw log-probability, the torch tutorials' default).

    Args:
      step: ``step(carry, tokens [B*K]) -> (logits [B*K, V], carry)`` (logits are normalised here
        with ``log_softmax``): a function, an ``nnx.Module`` or a bound method; with ``modules``,
        ``step(modules, carry, tokens)`` (module state carried as in :func:`teacher_forcing`).
      carry: the decoder's initial state for ``B`` rows (any pytree).
      start_tokens: integer ``[B]``.
      beam_size: ``K >= 1`` (1 is greedy search).
      max_len: static number of steps.
      eos_id: end token.
      pad_id: token after the end.
      length_penalty: ``alpha`` of the ranking (GNMT-style normalisation; 0 for none).
      batch_axis: batch axis of each carry leaf (an int or a pytree prefix), see
        :func:`reorder_state`.
      modules: the modules a ``step(modules, carry, tokens)`` runs on.

    Returns:
      :class:`Beams` sorted best first.

    >>> logp = jnp.log(jnp.array([[0.1, 0.5, 0.4], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]))
    >>> beams = beam_search(lambda c, t: (logp[t], c), None, jnp.array([0]), 2, 3, eos_id=0)
    >>> beams.tokens[0].tolist(), beams.lengths[0].tolist()     # 0.5*0.8*0.8 > 0.4*0.8*0.8
    ([[1, 2, 2], [2, 2, 2]], [3, 3])
    """
    K = check_size(beam_size, "beam_size")
    max_len = check_size(max_len, "max_len")
    start_tokens = jnp.asarray(start_tokens)
    B = start_tokens.shape[0]
    carry = _repeat_state(carry, K, batch_axis)
    tokens0 = jnp.repeat(start_tokens, K)
    logits_shape = eval_step(step, carry, tokens0, modules=modules, who="beam_search")[0]
    dtype = jnp.promote_types(logits_shape.dtype, jnp.float32)
    neg = -jnp.inf

    def body(call, state, t):
        carry, tokens, scores, done, history, lengths = state
        logits, carry = call(carry, tokens)
        logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)         # [B*K, V]
        V = logp.shape[-1]
        logp = logp.reshape(B, K, V)
        # a finished beam extends only with pad_id, at no cost
        ended = jnp.full((V,), neg, dtype).at[pad_id].set(0.0)
        logp = jnp.where(done[..., None], ended, logp)
        total = (scores[..., None] + logp).reshape(B, K * V)
        scores, flat = lax.top_k(total, K)                                # [B, K]
        beam, token = flat // V, (flat % V).astype(tokens.dtype)
        rows = (jnp.arange(B)[:, None] * K + beam).reshape(-1)            # [B*K] into old beams
        carry = reorder_state(carry, rows, batch_axis)
        history = jnp.take_along_axis(history, beam[..., None], axis=1).at[:, :, t].set(token)
        was_done = jnp.take_along_axis(done, beam, axis=1)
        lengths = jnp.take_along_axis(lengths, beam, axis=1) + (~was_done).astype(jnp.int32)
        done = was_done | (token == eos_id)
        return (carry, token.reshape(-1), scores, done, history, lengths), None

    scores0 = jnp.tile(jnp.asarray([0.0] + [neg] * (K - 1), dtype), (B, 1))   # one live beam first
    state = (carry, tokens0, scores0, jnp.zeros((B, K), bool),
             jnp.full((B, K, max_len), pad_id, start_tokens.dtype), jnp.zeros((B, K), jnp.int32))
    (_, _, scores, _, history, lengths), _ = scan_steps(body, step, state, jnp.arange(max_len),
                                                        modules=modules, who="beam_search")
    ranked = scores / jnp.maximum(lengths, 1).astype(scores.dtype) ** length_penalty
    order = jnp.argsort(-ranked, axis=1)
    take = lambda a: jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)  # noqa
    return Beams(take(history), take(lengths), take(ranked))
