"""Every JAX transformation on every layer and option: forward-mode AD, higher orders, vmap, remat,
shard_map, donation, empty batches and export.

* forward mode (``forward_mode=True``: ``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``) against the
  reverse-mode gradient on layers (uni/bi, projection, GRU, RNN), explicit dropout masks, the
  staircase (concrete lengths), ``compute_dtype``, packed rows and cells; ``jax.hessian`` against
  ``jacrev(jacrev)``; both modes give the same gradients, and the default says why jvp fails;
* forward-over-reverse (Hessian-vector products) against torch's double backward
  (``create_graph=True``) through packed sequences, float64;
* empty batches (B = 0) in layers, cells, functional, utilities and losses; T = 0 raises as torch;
* ``vmap`` (an extra batch axis, and over lengths), ``jax.checkpoint``, grad of grad, ``jit`` with
  donated buffers, ``shard_map`` over the batch (2 CPU devices, subprocess);
* ``jaxseq.export.export_model``: an artifact with symbolic batch and time, saved, loaded and run in
  a process that imports neither jaxseq nor flax, equal to the live model at several shapes.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq import functional as F
from jaxseq import init
from torch_ref.packed import run_packed

REPO = Path(__file__).resolve().parents[1]
T, B, I, H = 6, 3, 3, 4
LENGTHS = np.array([6, 2, 4])


def _params(mode, layers=1, bidi=False, proj=0, dtype=jnp.float64, seed=0):
    return init.torch_default(jax.random.key(seed), mode, I, H, layers, bidirectional=bidi,
                              proj_size=proj, dtype=dtype)


def _x(seed=1, shape=(T, B, I)):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _scalar(out, state):
    """A non-linear scalar of every output (so second derivatives are non-trivial)."""
    return jnp.sum(jnp.sin(out)) + sum(jnp.sum(jnp.cos(s)) for s in jax.tree.leaves(state))


def _tangent(tree, seed=2):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree)


def _masks(mode, layers, bidi, proj, seed=3):
    D, H_out = (2 if bidi else 1), proj or H
    G = {"LSTM": 4, "GRU": 3}.get(mode, 1) * H
    rng = np.random.default_rng(seed)
    keep = lambda shape: jnp.asarray((rng.random(shape) > 0.3) / 0.7)     # noqa: E731
    return dict(dropout_masks=[keep((T, B, D * H_out)) for _ in range(layers - 1)],
                state_masks=[keep((D, B, H_out)) for _ in range(layers)],
                weight_hh_masks=[keep((D, G, H_out)) for _ in range(layers)])


FORWARD_CASES = {
    "LSTM-uni": dict(mode="LSTM"),
    "LSTM-bi-proj-hx": dict(mode="LSTM", layers=2, bidi=True, proj=2, hx=True),
    "GRU-bi": dict(mode="GRU", bidi=True, layers=2),
    "RNN_RELU": dict(mode="RNN_RELU", hx=True),
    "LSTM-masks": dict(mode="LSTM", layers=2, bidi=True, masks=True),
    "GRU-staircase": dict(mode="GRU", bidi=True, concrete=True),
    "LSTM-packed-rows": dict(mode="LSTM", bidi=True, packed=True, hx=True),
    "GRU-packed-rows-masks": dict(mode="GRU", packed=True, masks=True),
}


def _problem(mode, layers=1, bidi=False, proj=0, hx=False, masks=False, concrete=False,
             packed=False):
    """``(f, args)``: ``f(params, x, hx, masks) -> scalar`` and its float arguments."""
    D, H_out = (2 if bidi else 1), proj or H
    params = _params(mode, layers, bidi, proj)
    lead = (D * layers, B) + ((3,) if packed else ())
    state = None
    if hx:
        parts = [_x(5, lead + (H_out,))] + ([_x(6, lead + (H,))] if mode == "LSTM" else [])
        state = tuple(parts) if mode == "LSTM" else parts[0]
    m = _masks(mode, layers, bidi, proj) if masks else {}
    if packed and masks:
        m = {"state_masks": [jnp.broadcast_to(s[:, :, None], (D, B, 3, H_out))
                             for s in m["state_masks"]]}
    ids = jnp.array([[1, 1, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1], [1, 2, 2, 0, 0, 0]]).T

    def f(p, x, h, mm):
        if packed:
            return _scalar(*F.recurrent(mode, p, x, hx=h, segment_ids=ids, max_segments=3,
                                        forward_mode=True, **mm))
        lengths = LENGTHS if concrete else jnp.asarray(LENGTHS)
        return _scalar(*F.recurrent(mode, p, x, lengths, h, forward_mode=True, **mm))

    return f, (params, _x(), state, m)


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_mode_equals_reverse_mode(case):
    """``jvp`` in every argument (parameters, input, initial state, masks) gives ``<grad, t>``."""
    f, args = _problem(**FORWARD_CASES[case])
    tangents = _tangent(args)

    @jax.jit
    def both(a, t):
        grads = jax.grad(f, argnums=(0, 1, 2, 3))(*a)
        dot = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(t)))
        return jax.jvp(f, a, t)[1], dot

    jvp, want = both(args, tangents)
    np.testing.assert_allclose(jvp, want, rtol=1e-10)


def test_both_modes_give_the_same_gradients_and_the_default_says_why_jvp_fails():
    f, (params, x, hx, _) = _problem(mode="LSTM", layers=2, bidi=True, proj=2, hx=True)
    fast = lambda p, xx, h: _scalar(*F.lstm(p, xx, jnp.asarray(LENGTHS), h))   # noqa: E731
    g_fast = jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(params, x, hx)
    g_jvp = jax.jit(jax.grad(lambda p, xx, h: f(p, xx, h, {}), argnums=(0, 1, 2)))(params, x, hx)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_jvp)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jax.jvp(lambda xx: fast(params, xx, hx), (x,), (x,))
    lstm = jaxseq.LSTM(I, H, forward_mode=True, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _, tangent = jax.jvp(lambda xx: jnp.sum(lstm(xx)[0]), (x,), (x,))    # the module option
    assert np.isfinite(tangent)


def test_linearize_and_jacfwd_equal_reverse_mode():
    f, args = _problem(mode="LSTM", bidi=True, hx=True)
    tangents = _tangent(args)
    grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(*args)
    want = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangents)))
    _, lin = jax.linearize(jax.jit(f), *args)
    np.testing.assert_allclose(lin(*tangents), want, rtol=1e-10)
    fx = lambda x: f(args[0], x, *args[2:])                                  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.jacfwd(fx))(args[1]), grads[1], rtol=1e-10, atol=1e-13)


def test_forward_mode_with_bfloat16_compute_and_cells():
    p = _params("LSTM", dtype=jnp.float32)
    x = _x().astype(jnp.float32)

    def f(pp, xx):
        return _scalar(*F.lstm(pp, xx, jnp.asarray(LENGTHS), compute_dtype=jnp.bfloat16,
                               forward_mode=True))

    t = _tangent((p, x))

    @jax.jit
    def both(pp, xx, tt):
        g = jax.grad(f, argnums=(0, 1))(pp, xx)
        return (jax.jvp(f, (pp, xx), tt)[1],
                sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(tt))))

    jvp, want = both(p, x, t)
    np.testing.assert_allclose(jvp, want, rtol=2e-2)          # bf16 operands: the two orders differ
    cp = {k[:-3]: v for k, v in _params("GRU").items()}
    cell = lambda x: jnp.sum(jnp.tanh(F.gru_cell(cp, x, jnp.ones((B, H)))))   # noqa: E731
    np.testing.assert_allclose(jax.jacfwd(cell)(_x(shape=(B, I))), jax.grad(cell)(_x(shape=(B, I))),
                               rtol=1e-12)


def test_hessian_matches_reverse_over_reverse():
    p = _params("LSTM", bidi=True)
    x = _x(shape=(4, 2, I))
    f = lambda xx: _scalar(*F.lstm(p, xx, jnp.array([4, 2]), forward_mode=True))  # noqa: E731
    hess = jax.jit(jax.hessian(f))(x)
    np.testing.assert_allclose(hess, jax.jit(jax.jacrev(jax.jacrev(f)))(x), rtol=1e-9, atol=1e-12)
    assert hess.shape == (4, 2, I, 4, 2, I)
    assert not np.any(np.asarray(hess)[2:, 1])                # padding of row 1: no curvature


def test_hessian_vector_products_match_torch_double_backward():
    """``jvp(grad)`` (forward over reverse) == torch's ``grad(grad(...) . v, create_graph=True)``
    through a packed 2-layer BiLSTM, for the input and every parameter."""
    torch.manual_seed(0)
    tmod = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in tmod.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((T, B, I))
    v_x = np.random.default_rng(1).standard_normal((T, B, I))
    v_p = {k: np.random.default_rng(2).standard_normal(v.shape) for k, v in params.items()}

    def f(p, xx):
        return _scalar(*F.lstm(p, xx, jnp.asarray(LENGTHS), forward_mode=True))

    _, (hvp_p, hvp_x) = jax.jit(lambda p, xx, vp, vx: jax.jvp(
        jax.grad(f, argnums=(0, 1)), (p, xx), (vp, vx)))(
        params, jnp.asarray(x), {k: jnp.asarray(v) for k, v in v_p.items()}, jnp.asarray(v_x))

    tx = torch.tensor(x, requires_grad=True)
    out, (h, c) = run_packed(tmod, tx, LENGTHS)
    total = torch.sin(out).sum() + torch.cos(h).sum() + torch.cos(c).sum()   # as _scalar
    names = [n for n, _ in tmod.named_parameters()]
    grads = torch.autograd.grad(total, [tx] + list(tmod.parameters()), create_graph=True)
    dot = (grads[0] * torch.tensor(v_x)).sum() + sum(
        (g * torch.tensor(v_p[n])).sum() for g, n in zip(grads[1:], names))
    second = torch.autograd.grad(dot, [tx] + list(tmod.parameters()))
    np.testing.assert_allclose(hvp_x, second[0].numpy(), rtol=1e-9, atol=1e-12)
    for name, g in zip(names, second[1:]):
        np.testing.assert_allclose(hvp_p[name], g.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


# --- empty batches ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_empty_batch_layers(batch_first, with_lengths):
    lstm = jaxseq.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                       param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    x = jnp.zeros((0, T, I) if batch_first else (T, 0, I))
    lengths = jnp.zeros((0,), jnp.int32) if with_lengths else None
    out, (h, c) = lstm(x, lengths)
    assert out.shape == ((0, T, 2 * H) if batch_first else (T, 0, 2 * H))
    assert h.shape == c.shape == (4, 0, H)                            # torch's shapes
    g_p, g_x = jax.grad(lambda p, xx: F.lstm(p, xx, lengths, batch_first=batch_first)[0].sum(),
                        argnums=(0, 1))(lstm.param_dict(), x)
    assert g_x.shape == x.shape
    assert all(not np.any(np.asarray(g)) and np.all(np.isfinite(g)) for g in g_p.values())
    gru_out, gru_h = F.gru(_params("GRU"), jnp.zeros((T, 0, I)), segment_ids=jnp.zeros((T, 0),
                                                                                      jnp.int32),
                           max_segments=2)
    assert gru_out.shape == (T, 0, H) and gru_h.shape == (1, 0, 2, H)
    with pytest.raises(ValueError, match="Expected sequence length to be larger than 0"):
        lstm(jnp.zeros((2, 0, I) if batch_first else (0, 2, I)))


def test_empty_batch_cells_utilities_and_losses():
    h, c = jaxseq.LSTMCell(I, H, rngs=nnx.Rngs(0))(jnp.zeros((0, I)))
    assert h.shape == c.shape == (0, H)
    empty_lengths = jnp.zeros((0,), jnp.int32)
    x = jnp.zeros((T, 0, 2))
    assert jaxseq.length_mask(empty_lengths, T).shape == (0, T)
    assert jaxseq.reverse_padded(x, empty_lengths).shape == (T, 0, 2)
    assert jaxseq.last_valid(x, empty_lengths).shape == (0, 2)
    for pool in (jaxseq.masked_sum, jaxseq.masked_mean, jaxseq.masked_max):
        assert pool(x, empty_lengths).shape == (0, 2)
    assert jaxseq.unpad_sequence(x, empty_lengths) == []
    logits, targets = jnp.zeros((0, T, 5)), jnp.zeros((0, T), jnp.int32)
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (0, T)), ("sequence_mean", ())):
        loss = jaxseq.masked_cross_entropy(logits, targets, reduction=reduction)
        assert loss.shape == shape and np.all(np.isfinite(loss))
    assert float(jaxseq.masked_mse(jnp.zeros((0, 3)), jnp.zeros((0, 3)))) == 0.0
    assert jaxseq.segment_mean(jnp.zeros((0, T, 2)), jnp.zeros((0, T), jnp.int32), 3,
                               batch_first=True).shape == (0, 3, 2)
    g = jax.grad(lambda l: jaxseq.masked_cross_entropy(l, targets))(logits)
    assert g.shape == logits.shape and not np.any(np.isnan(g))


# --- other transformations ------------------------------------------------------------------------
def test_vmap_over_an_extra_batch_axis_and_over_lengths():
    p = _params("GRU", bidi=True)
    xs = _x(shape=(2, T, B, I))
    lengths = jnp.array([[6, 2, 4], [1, 6, 3]])
    gru = jax.jit(lambda xx, ll: F.gru(p, xx, ll))
    batched = jax.jit(jax.vmap(gru))(xs, lengths)
    for k in range(2):
        single = gru(xs[k], lengths[k])
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[k], b, rtol=1e-12, atol=1e-14)
    over_lengths = jax.jit(jax.vmap(lambda ll: gru(xs[0], ll)[1]))(lengths)
    np.testing.assert_allclose(over_lengths[1], gru(xs[0], lengths[1])[1], rtol=1e-12)
    grad = jax.grad(lambda pp, xx, ll: _scalar(*F.gru(pp, xx, ll)))
    per_example = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(p, xs, lengths)
    np.testing.assert_allclose(per_example["weight_hh_l0"][1],
                               jax.jit(grad)(p, xs[1], lengths[1])["weight_hh_l0"], rtol=1e-10)


def test_checkpoint_grad_of_grad_and_donation():
    p = _params("GRU")
    x = _x()
    f = lambda pp, xx: _scalar(*F.gru(pp, xx, jnp.asarray(LENGTHS), forward_mode=True))  # noqa
    g = jax.jit(jax.grad(f))(p, x)
    g_remat = jax.jit(jax.grad(jax.checkpoint(f)))(p, x)
    for k in g:
        np.testing.assert_allclose(g_remat[k], g[k], rtol=1e-12)
    # grad of grad (reverse over reverse) against forward over reverse, along one direction
    v = _tangent(x)
    hvp_rr = jax.jit(jax.grad(lambda xx: jnp.vdot(jax.grad(f, argnums=1)(p, xx), v)))(x)
    hvp_fr = jax.jit(lambda xx: jax.jvp(lambda y: jax.grad(f, argnums=1)(p, y), (xx,), (v,))[1])(x)
    np.testing.assert_allclose(hvp_rr, hvp_fr, rtol=1e-9, atol=1e-12)

    def sgd(pp, xx):
        grads = jax.grad(f)(pp, xx)
        return jax.tree.map(lambda a, b: a - 0.1 * b, pp, grads)

    expected = jax.jit(sgd)(p, x)
    donated = jax.jit(sgd, donate_argnums=0)(jax.tree.map(jnp.copy, p), x)
    for k in p:
        np.testing.assert_allclose(donated[k], expected[k], rtol=1e-12)


def test_shard_map_over_the_batch_axis(tmp_path):
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import json, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        jax.config.update("jax_enable_x64", True)
        from jaxseq import functional as F, init
        try:
            from jax import shard_map
        except ImportError:
            from jax.experimental.shard_map import shard_map
        p = init.torch_default(jax.random.key(0), "LSTM", 3, 4, 2, bidirectional=True,
                               dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4, 3)))
        lengths = jnp.array([6, 1, 4, 3])
        mesh = Mesh(np.array(jax.devices()), ("b",))
        run = lambda pp, xx, ll: F.lstm(pp, xx, ll)
        sharded = shard_map(run, mesh=mesh, in_specs=(P(), P(None, "b"), P("b")),
                            out_specs=(P(None, "b"), (P(None, "b"), P(None, "b"))))
        got = jax.jit(sharded)(p, x, lengths)
        want = run(p, x, lengths)
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got),
                                                                    jax.tree.leaves(want)))
        print(json.dumps({"devices": len(jax.devices()), "err": err}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["err"] < 1e-12


# --- export -------------------------------------------------------------------------------------
class Tagger(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(20, 5, rngs=rngs)
        self.lstm = jaxseq.LSTM(5, 6, bidirectional=True, batch_first=True, rngs=rngs)
        self.head = nnx.Linear(12, 4, rngs=rngs)

    def __call__(self, tokens, lengths):
        out, _ = self.lstm(self.embed(tokens), lengths)
        return self.head(out)


def test_export_runs_without_jaxseq_or_flax(tmp_path):
    pytest.importorskip("flatbuffers")
    model = Tagger(nnx.Rngs(0))
    b, t = jax.export.symbolic_shape("b, t")
    exported = jaxseq.export.export_model(model, jax.ShapeDtypeStruct((b, t), jnp.int32),
                                          jax.ShapeDtypeStruct((b,), jnp.int32))
    artifact = tmp_path / "tagger.jax"
    artifact.write_bytes(exported.serialize())
    shapes = [(1, 1), (3, 7), (8, 2)]
    inputs = {}
    for k, (bb, tt) in enumerate(shapes):
        rng = np.random.default_rng(k)
        tokens = rng.integers(0, 20, (bb, tt)).astype(np.int32)
        lengths = rng.integers(1, tt + 1, bb).astype(np.int32)
        np.savez(tmp_path / f"in{k}.npz", tokens=tokens, lengths=lengths)
        inputs[k] = (tokens, lengths)
    script = textwrap.dedent(f"""
        import sys, numpy as np, jax
        exp = jax.export.deserialize(open({str(artifact)!r}, "rb").read())
        for k in range({len(shapes)}):
            a = np.load({str(tmp_path)!r} + f"/in{{k}}.npz")
            np.save({str(tmp_path)!r} + f"/out{{k}}.npy", np.asarray(exp.call(a["tokens"], a["lengths"])))
        assert not any(m.split(".")[0] in ("jaxseq", "flax") for m in sys.modules), "imported"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    for k, (tokens, lengths) in inputs.items():
        np.testing.assert_allclose(np.load(tmp_path / f"out{k}.npy"), model(tokens, lengths),
                                   rtol=1e-6, atol=1e-6)
    model.lstm.train()
    with pytest.raises(ValueError, match="lstm is in training mode"):
        jaxseq.export.export_model(model, jax.ShapeDtypeStruct((b, t), jnp.int32),
                                   jax.ShapeDtypeStruct((b,), jnp.int32))
