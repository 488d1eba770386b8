"""Decoding helpers: masked attention against its torch twin, greedy and beam search against
exhaustive search, state reordering, teacher forcing against a Python loop."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from torch_ref.seq2seq import masked_dot_attention


@pytest.mark.parametrize("batch_first", [True, False])
def test_dot_attention_matches_torch_twin_and_ignores_padding(batch_first):
    rng = np.random.default_rng(0)
    B, T, H, F = 4, 6, 3, 2
    lengths = np.array([6, 1, 3, 0])
    q, k, v = rng.standard_normal((B, H)), rng.standard_normal((B, T, H)), rng.standard_normal((B, T, F))
    pad = np.arange(T)[None] >= lengths[:, None]
    k_nan, v_nan = k.copy(), v.copy()
    k_nan[pad], v_nan[pad] = np.nan, np.nan                              # padding must not matter
    layout = (lambda a: a) if batch_first else (lambda a: np.swapaxes(a, 0, 1))

    def loss(q, k, v):
        ctx, w = jaxseq.dot_attention(q, k, v, jnp.asarray(lengths), batch_first=batch_first)
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(jnp.cos(w) * jnp.arange(T)), (ctx, w)

    (_, (ctx, w)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        jnp.asarray(q), jnp.asarray(layout(k_nan)), jnp.asarray(layout(v_nan)))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_ctx, t_w = masked_dot_attention(tq, tk, tv, torch.tensor(lengths))
    (torch.sin(t_ctx).sum() + (torch.cos(t_w) * torch.arange(T)).sum()).backward()
    np.testing.assert_allclose(ctx, t_ctx.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(w, t_w.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(w)[pad] == 0) and np.all(np.asarray(w)[3] == 0)   # empty row: no NaN
    for g, t in zip(grads, (tq, tk, tv)):
        g = np.asarray(g) if g.ndim == 2 or batch_first else np.swapaxes(np.asarray(g), 0, 1)
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-11, atol=1e-13)
    gk = np.asarray(grads[1]) if batch_first else np.swapaxes(np.asarray(grads[1]), 0, 1)
    assert np.all(gk[pad] == 0) and np.all(np.isfinite(gk))


def test_dot_attention_multi_query_equals_single_steps():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3))
    lengths = jnp.array([5, 2])
    ctx, w = jaxseq.dot_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(k), lengths)
    assert ctx.shape == (2, 4, 3) and w.shape == (2, 4, 5)
    for t in range(4):
        c1, w1 = jaxseq.dot_attention(jnp.asarray(q[:, t]), jnp.asarray(k), jnp.asarray(k), lengths)
        np.testing.assert_allclose(ctx[:, t], c1, rtol=1e-6)
        np.testing.assert_allclose(w[:, t], w1, rtol=1e-6)
    with pytest.raises(ValueError, match="disagree on B or H"):
        jaxseq.dot_attention(jnp.ones((2, 4)), jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)), lengths)
    with pytest.raises(ValueError, match="lengths"):
        jaxseq.dot_attention(jnp.ones((2, 3)), jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)),
                             jnp.array([6, 1]))


# --- search: a toy "language model" whose next-token distribution depends on the last token ----
V, EOS = 5, 0


def _table(seed):
    logits = np.random.default_rng(seed).standard_normal((V, V)) * 2
    return jax.nn.log_softmax(jnp.asarray(logits), axis=-1)


def _step(table):
    """carry: the running count of steps (checks reordering), tokens [N] -> logits [N, V]."""
    def step(carry, tokens):
        return table[tokens], carry + 1
    return step


def _exhaustive(table, start, max_len):
    """Every token sequence of length <= max_len, ending at EOS or at max_len; best first."""
    table = np.asarray(table)
    results = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=n):
            if any(t == EOS for t in seq[:-1]) or (n < max_len and seq[-1] != EOS):
                continue
            prev, score = start, 0.0
            for t in seq:
                score += table[prev, t]
                prev = t
            results.append((score, seq))
    return sorted(results, reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_finds_the_exhaustive_best(seed):
    table, max_len = _table(seed), 4
    starts = jnp.array([1, 2, 3])
    beams = jax.jit(lambda c, s: jaxseq.beam_search(_step(table), c, s, beam_size=V ** 3,
                                                    max_len=max_len, eos_id=EOS))(
        jnp.zeros(3, jnp.int32), starts)
    for b, start in enumerate(starts.tolist()):
        best = _exhaustive(table, start, max_len)
        score_of = {seq: score for score, seq in best}
        for rank in range(10):     # the 10 best hypotheses in order (ties in any order), scored right
            n = int(beams.lengths[b, rank])
            seq = tuple(np.asarray(beams.tokens[b, rank, :n]).tolist())
            np.testing.assert_allclose(float(beams.scores[b, rank]), best[rank][0], rtol=1e-12)
            np.testing.assert_allclose(score_of[seq], best[rank][0], rtol=1e-12)
            assert np.all(np.asarray(beams.tokens[b, rank, n:]) == 0)      # pad after EOS


def test_beam_size_one_is_greedy_and_greedy_stops_at_eos():
    table = _table(3)
    starts = jnp.array([1, 4])
    tokens, lengths = jaxseq.greedy_decode(_step(table), jnp.zeros(2, jnp.int32), starts, 6,
                                           eos_id=EOS, pad_id=-1)
    beams = jaxseq.beam_search(_step(table), jnp.zeros(2, jnp.int32), starts, 1, 6, eos_id=EOS,
                               pad_id=-1)
    np.testing.assert_array_equal(beams.tokens[:, 0], tokens)
    np.testing.assert_array_equal(beams.lengths[:, 0], lengths)
    t = np.asarray(table)
    for b, start in enumerate(starts.tolist()):              # the Python greedy loop
        prev, want = start, []
        for _ in range(6):
            prev = int(np.argmax(t[prev]))
            want.append(prev)
            if prev == EOS:
                break
        n = int(lengths[b])
        assert np.asarray(tokens[b, :n]).tolist() == want
        assert np.all(np.asarray(tokens[b, n:]) == -1)


def test_beam_search_reorders_the_carry_with_each_beam():
    """A model whose next distribution depends on its carry (the running sum of the beam's tokens,
    a [B*K] leaf with batch axis 0, and the same sum in a [1, B*K] leaf with batch axis 1): a
    full-width beam search must equal exhaustive search over that model."""
    table = np.asarray(_table(5))

    def step(carry, tokens):
        total, layer_like = carry
        return jnp.asarray(table)[(total + tokens) % V], (total + tokens, layer_like + tokens)

    max_len = 4
    carry0 = (jnp.array([0, 3]), jnp.array([[0, 3]]))
    beams = jaxseq.beam_search(step, carry0, jnp.array([1, 2]), V ** 3, max_len, eos_id=EOS,
                               batch_axis=(0, 1))
    for b, (start, offset) in enumerate([(1, 0), (2, 3)]):
        results = []
        for n in range(1, max_len + 1):
            for seq in itertools.product(range(V), repeat=n):
                if any(t == EOS for t in seq[:-1]) or (n < max_len and seq[-1] != EOS):
                    continue
                total, prev, score = offset, start, 0.0
                for t in seq:
                    total += prev
                    score += table[total % V, t]
                    prev = t
                results.append((score, seq))
        score, seq = max(results)
        n = int(beams.lengths[b, 0])
        assert tuple(np.asarray(beams.tokens[b, 0, :n]).tolist()) == seq
        np.testing.assert_allclose(float(beams.scores[b, 0]), score, rtol=1e-5)


def test_reorder_state_with_batch_axis_prefix():
    cell = (jnp.arange(6.0).reshape(3, 2), jnp.arange(6.0).reshape(3, 2) + 10)
    layer = jnp.arange(12.0).reshape(2, 3, 2)                       # [L*D, B, H]
    idx = jnp.array([2, 0, 0])
    new_cell, new_layer = jaxseq.reorder_state((cell, layer), idx, batch_axis=(0, 1))
    np.testing.assert_array_equal(new_cell[1], np.asarray(cell[1])[[2, 0, 0]])
    np.testing.assert_array_equal(new_layer, np.asarray(layer)[:, [2, 0, 0]])


def test_teacher_forcing_matches_a_python_loop():
    rng = np.random.default_rng(5)
    W = jnp.asarray(rng.standard_normal((3, 3)))
    xs = jnp.asarray(rng.standard_normal((2, 4, 3)))                # [B, T, F]

    def step(h, x):
        h = jnp.tanh(h @ W + x)
        return h, 2 * h

    carry, ys = jaxseq.teacher_forcing(step, jnp.zeros((2, 3)), xs)
    h, want = jnp.zeros((2, 3)), []
    for t in range(4):
        h, y = step(h, xs[:, t])
        want.append(y)
    np.testing.assert_allclose(ys, jnp.stack(want, 1), rtol=1e-12)
    np.testing.assert_allclose(carry, h, rtol=1e-12)
    _, ys_tm = jaxseq.teacher_forcing(step, jnp.zeros((2, 3)), jnp.swapaxes(xs, 0, 1),
                                      batch_first=False)
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ys, rtol=1e-12)


# -- steps whose NNX modules draw from their own RNG streams (state carried through the scan) ----
class _DropoutCell(nnx.Module):
    """``h' = tanh(W h + dropout(x))``: an ``nnx.Dropout`` drawing from its own stream each step."""

    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, h, x):
        h = jnp.tanh(self.lin(h) + self.drop(x))
        return h, h

    def step(self, h, x):                       # a bound method as the step
        return self(h, x)

    def logits_step(self, h, tokens):           # for greedy / beam search: (logits, carry)
        h, _ = self(h, jax.nn.one_hot(tokens, 3))
        return h, h


def _python_loop(cell, h, xs):
    ys = []
    for t in range(xs.shape[1]):
        h, y = cell(h, xs[:, t])
        ys.append(y)
    return h, jnp.stack(ys, 1)


def _cell():
    cell = _DropoutCell(nnx.Rngs(0))
    cell.train()
    return cell


def test_teacher_forcing_carries_the_dropout_stream_like_a_python_loop():
    """Every form draws one fresh mask per step from the module's own stream, exactly as an
    unrolled Python loop does, eagerly and under ``nnx.jit``; the stream ends where the loop's
    does."""
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 3)))
    h0 = jnp.zeros((2, 3))
    reference = _cell()
    want_h, want_ys = _python_loop(reference, h0, xs)
    forms = [lambda c: jaxseq.teacher_forcing(c, h0, xs),                # the module
             lambda c: jaxseq.teacher_forcing(c.step, h0, xs),           # a bound method
             lambda c: jaxseq.teacher_forcing(lambda m, h, x: m["cell"](h, x), h0, xs,
                                              modules={"cell": c})]      # step(modules, ...)
    for run in [*forms, nnx.jit(forms[0])]:
        cell = _cell()
        h, ys = run(cell)
        np.testing.assert_array_equal(ys, want_ys)
        np.testing.assert_array_equal(h, want_h)
        assert int(cell.drop.rngs.count[...]) == int(reference.drop.rngs.count[...]) == 5
    assert len({tuple(np.asarray(want_ys[0, t] == 0).tolist()) for t in range(5)}) > 1  # masks vary


def test_greedy_and_beam_search_carry_the_stream():
    start = jnp.array([0, 1])
    reference = _cell()
    h, tokens, want = jnp.zeros((2, 3)), start, []
    for _ in range(4):                                          # greedy, unrolled
        logits, h = reference.logits_step(h, tokens)
        tokens = jnp.argmax(logits, -1).astype(tokens.dtype)
        want.append(tokens)
    cell = _cell()
    got, _ = jaxseq.greedy_decode(cell.logits_step, jnp.zeros((2, 3)), start, 4)
    np.testing.assert_array_equal(got, jnp.stack(want, 1))
    assert int(cell.drop.rngs.count[...]) == 4
    cell = _cell()
    beams = jaxseq.beam_search(cell.logits_step, jnp.zeros((2, 3)), start, 2, 4, eos_id=2)
    assert beams.tokens.shape == (2, 2, 4) and int(cell.drop.rngs.count[...]) == 4


def test_a_closure_that_changes_module_state_is_refused_with_the_fix():
    cell = _cell()
    with pytest.raises(ValueError, match=r"teacher_forcing: the step changes the state of an NNX "
                                         r"module it reaches through a closure.*modules=module"):
        jaxseq.teacher_forcing(lambda h, x: cell(h, x), jnp.zeros((2, 3)), jnp.ones((2, 4, 3)))
    cell.eval()                                 # reading parameters through a closure is fine
    h, _ = jaxseq.teacher_forcing(lambda h, x: cell(h, x), jnp.zeros((2, 3)), jnp.ones((2, 4, 3)))
    assert h.shape == (2, 3)

    def assigns(m, h, x):
        m.lin.bias[...] = m.lin.bias[...] + 1.0
        return m(h, x)

    with pytest.raises(ValueError, match=r"assigns an nnx\.Param"):
        jaxseq.teacher_forcing(assigns, jnp.zeros((2, 3)), jnp.ones((2, 4, 3)), modules=cell)

    def grows(m, h, x):
        m.extra = nnx.BatchStat(h)
        return m(h, x)

    with pytest.raises(ValueError, match="changed the structure of its modules"):
        jaxseq.teacher_forcing(grows, jnp.zeros((2, 3)), jnp.ones((2, 4, 3)), modules=cell)
