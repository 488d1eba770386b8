"""``jaxseq.BatchNorm`` / ``jaxseq.batch_norm.batch_norm`` against torch.

* no mask: ``nn.BatchNorm1d`` on ``[N, C]`` and ``[N, C, L]``, ``nn.BatchNorm2d`` on ``[N, C, H, W]``
  (features moved last for jaxseq): outputs, gradients w.r.t. input, weight and bias, running
  statistics and ``num_batches_tracked`` after each of 3 training steps (momentum 0.1, 0.3, None),
  then evaluation; ``affine=False``, ``track_running_stats=False``; float64 to 1e-12;
* masked (``lengths`` time-major / batch-first, ``segment_ids``, ``mask`` over extra axes) against
  the torch twin ``torch_ref.batch_norm.MaskedBatchNorm`` with NaN at padding: the same quantities,
  0 output and 0 gradient at padding; float64 and float32;
* the twin itself: unmasked it is ``nn.BatchNorm1d``, and its ``state_dict`` is interchangeable;
* modes (eval after construction, ``train()`` / ``eval()``, ``nnx.jit``), fewer than 2 valid
  positions, errors, compilations of eager calls;
* the documented recipe for Flax's ``nnx.BatchNorm`` (momentum complement, biased running
  variance, float32 statistics), measured.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq.batch_norm import BatchNorm, RunningStats, batch_norm
from parity_tests.cases import split_cases
from parity_tests.compiles import count_compiles
from torch_ref.batch_norm import MaskedBatchNorm, length_mask

F = 4
TOL64 = dict(rtol=1e-12, atol=1e-12)


def _torch_bn(cls, momentum, *, affine=True, track=True, dtype=torch.float64, seed=0):
    """A torch batch norm with random weight, bias and running statistics."""
    torch.manual_seed(seed)
    bn = cls(F, momentum=momentum, affine=affine, track_running_stats=track).to(dtype)
    with torch.no_grad():
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if track:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return bn


def _jax_twin(tbn, dtype=jnp.float64, **kw):
    jbn = BatchNorm(F, momentum=tbn.momentum, affine=tbn.affine,
                    track_running_stats=tbn.track_running_stats, param_dtype=dtype, **kw)
    return jaxseq.load_torch_state_dict(jbn, tbn.state_dict())


def _jax_step(jbn, x, r, **call):
    """One call with gradients: ``(y, grads by torch name, dx)``; updates ``jbn``'s statistics."""
    def loss(m, x):
        y = m(x, **call)
        return jnp.sum(y * r), y

    (_, y), (g_model, g_x) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(jbn, x)
    return np.asarray(y), jaxseq.torch_state_dict(g_model), np.asarray(g_x)


def _torch_step(tbn, x, r, forward):
    xt = torch.tensor(x, requires_grad=True)
    y = forward(tbn, xt)
    (y * torch.from_numpy(r)).sum().backward()
    grads = {k: p.grad.numpy() for k, p in tbn.named_parameters()}
    tbn.zero_grad()
    return y.detach().numpy(), grads, xt.grad.numpy()


def _assert_same(jbn, tbn, got, want, **tol):
    """Same ``(output, grads by torch name, input grad)`` and the same state_dict afterwards."""
    (y, grads, dx), (t_y, t_grads, t_dx) = got, want
    np.testing.assert_allclose(y, t_y, **tol, err_msg="output")
    np.testing.assert_allclose(dx, t_dx, **tol, err_msg="input gradient")
    assert sorted(grads) == sorted(t_grads)
    for k, g in t_grads.items():
        np.testing.assert_allclose(grads[k], g, **tol, err_msg=k)
    _assert_same_state(jbn, tbn, **tol)


def _assert_same_state(jbn, tbn, **tol):
    exported = jaxseq.torch_state_dict(jbn)
    assert sorted(exported) == sorted(tbn.state_dict())
    for k, v in tbn.state_dict().items():
        if k == "num_batches_tracked":
            assert exported[k] == v.item()
        else:
            np.testing.assert_allclose(exported[k], v.numpy(), **tol, err_msg=k)


# --- no mask: torch's own nn.BatchNorm1d / 2d ------------------------------------------------------
LAYOUTS = {"1d-NC": (torch.nn.BatchNorm1d, (9,)), "1d-NCL": (torch.nn.BatchNorm1d, (3, 5)),
           "2d-NCHW": (torch.nn.BatchNorm2d, (2, 3, 4))}
MOMENTA = [0.1, 0.3, None]


def _features_first(tbn, xt):
    """torch's layout: features on dim 1 (x is features-last), and back."""
    return tbn(xt.movedim(-1, 1)).movedim(1, -1)


@pytest.mark.parametrize("layout, momentum", split_cases(
    [(lay, m) for lay in LAYOUTS for m in MOMENTA],
    [("1d-NC", 0.1), ("1d-NCL", 0.3), ("2d-NCHW", None), ("1d-NC", None)]))
def test_unmasked_matches_torch_batch_norm(layout, momentum):
    cls, shape = LAYOUTS[layout]
    tbn = _torch_bn(cls, momentum)
    jbn = _jax_twin(tbn)
    rng = np.random.default_rng(0)
    jbn.train()
    tbn.train()
    for step in range(3):
        x = rng.standard_normal(shape + (F,)) * (1 + step) + step
        r = rng.standard_normal(x.shape)
        got = _jax_step(jbn, jnp.asarray(x), r)
        want = _torch_step(tbn, x, r, _features_first)
        _assert_same(jbn, tbn, got, want, **TOL64)
    assert int(jbn.num_batches_tracked[...]) == 3
    jbn.eval()
    tbn.eval()
    x = rng.standard_normal(shape + (F,))
    r = rng.standard_normal(x.shape)
    _assert_same(jbn, tbn, _jax_step(jbn, jnp.asarray(x), r),
                 _torch_step(tbn, x, r, _features_first), **TOL64)


@pytest.mark.parametrize("affine, track", [(False, True), (True, False), (False, False)])
def test_without_affine_or_running_stats(affine, track):
    tbn = _torch_bn(torch.nn.BatchNorm1d, 0.1, affine=affine, track=track)
    jbn = _jax_twin(tbn)
    assert sorted(jaxseq.torch_state_dict(jbn)) == sorted(tbn.state_dict())
    rng = np.random.default_rng(1)
    for mode in ("train", "eval", "train"):     # without running stats eval uses the batch's
        getattr(jbn, mode)()
        getattr(tbn, mode)()
        x = rng.standard_normal((6, F)) * 2 + 1
        r = rng.standard_normal(x.shape)
        _assert_same(jbn, tbn, _jax_step(jbn, jnp.asarray(x), r),
                     _torch_step(tbn, x, r, _features_first), **TOL64)


# --- masked: the torch twin -------------------------------------------------------------------------
T, B, H = 6, 3, 2
LENGTHS = np.array([6, 2, 4])
IDS = np.array([[1, 1, 2, 2, 2, 0], [1, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])     # [B, T]
HOWS = ["lengths", "lengths-batch-first", "segment_ids", "mask-extra-axis"]


def _masked_case(how, rng):
    """``(x with NaN at padding, jaxseq call kwargs, torch mask)`` for one way to mark padding."""
    if how == "lengths":
        valid = length_mask(LENGTHS, T).numpy()                      # [T, B]
        call = dict(lengths=jnp.asarray(LENGTHS))
    elif how == "lengths-batch-first":
        valid = length_mask(LENGTHS, T, batch_first=True).numpy()    # [B, T]
        call = dict(lengths=jnp.asarray(LENGTHS), batch_first=True)
    elif how == "segment_ids":
        valid = IDS > 0
        call = dict(segment_ids=jnp.asarray(IDS), batch_first=True)
    else:
        valid = length_mask(LENGTHS, T, batch_first=True).numpy()
        call = dict(mask=jnp.asarray(valid))
    shape = valid.shape + ((H,) if how == "mask-extra-axis" else ()) + (F,)
    x = rng.standard_normal(shape) * 2 + 0.5
    full = valid.reshape(valid.shape + (1,) * (x.ndim - 2))
    x = np.where(full, x, np.nan)                                     # NaN at every padded entry
    return x, call, torch.from_numpy(valid), np.broadcast_to(full, x.shape)


@pytest.mark.parametrize("how, momentum", split_cases(
    [(h, m) for h in HOWS for m in MOMENTA],
    [("lengths", 0.1), ("lengths-batch-first", None), ("segment_ids", 0.3),
     ("mask-extra-axis", 0.1)]))
def test_masked_matches_torch_twin(how, momentum):
    tbn = _torch_bn(MaskedBatchNorm, momentum)
    jbn = _jax_twin(tbn)
    rng = np.random.default_rng(2)
    for mode in ("train", "train", "eval"):
        getattr(jbn, mode)()
        getattr(tbn, mode)()
        x, call, mask, valid = _masked_case(how, rng)
        r = rng.standard_normal(x.shape)
        got = _jax_step(jbn, jnp.asarray(x), r, **call)
        want = _torch_step(tbn, x, r, lambda m, xt, mask=mask: m(xt, mask))
        _assert_same(jbn, tbn, got, want, **TOL64)
        y, grads, dx = got
        assert np.all(y[~valid] == 0) and np.all(dx[~valid] == 0)
        assert np.isfinite(y).all() and np.isfinite(dx).all()
        assert all(np.isfinite(g).all() for g in grads.values())
    assert int(jbn.num_batches_tracked[...]) == tbn.num_batches_tracked.item() == 2


def test_masked_float32_matches_torch_twin():
    tbn = _torch_bn(MaskedBatchNorm, 0.1, dtype=torch.float32)
    jbn = _jax_twin(tbn, jnp.float32)
    rng = np.random.default_rng(3)
    jbn.train()
    tbn.train()
    for _ in range(2):
        x, call, mask, _ = _masked_case("lengths", rng)
        x, r = x.astype(np.float32), rng.standard_normal(x.shape).astype(np.float32)
        got = _jax_step(jbn, jnp.asarray(x), r, **call)
        assert got[0].dtype == np.float32 and jbn.running_var[...].dtype == jnp.float32
        _assert_same(jbn, tbn, got, _torch_step(tbn, x, r, lambda m, xt, mask=mask: m(xt, mask)),
                     rtol=1e-5, atol=1e-5)


def test_twin_without_mask_is_batch_norm_1d():
    twin, plain = _torch_bn(MaskedBatchNorm, None), _torch_bn(torch.nn.BatchNorm1d, None)
    assert list(twin.state_dict()) == list(plain.state_dict())
    rng = np.random.default_rng(4)
    for _ in range(2):
        x = torch.from_numpy(rng.standard_normal((5, 3, F)))
        assert torch.equal(twin(x), plain(x.reshape(-1, F)).reshape(x.shape))
    for k, v in plain.state_dict().items():
        assert torch.equal(twin.state_dict()[k], v), k
    plain.load_state_dict(twin.state_dict())                          # strict, both ways
    twin.load_state_dict(torch.nn.BatchNorm2d(F).double().state_dict())


def test_padding_changes_nothing():
    """The same valid frames with more padding (NaN) give the same output and statistics, unlike
    ``SequenceWise(nn.BatchNorm1d)``, whose statistics include the padded frames."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, F))
    longer = np.concatenate([x, np.full((3, B, F), np.nan)])
    outs = []
    for data in (x, longer):
        jbn = BatchNorm(F, param_dtype=jnp.float64)
        jbn.train()
        outs.append((np.asarray(jbn(jnp.asarray(data), LENGTHS))[:T], jbn.running_var[...]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    seqwise = torch.nn.BatchNorm1d(F).double()                        # DeepSpeech's SequenceWise
    seqwise(torch.from_numpy(np.where(np.isnan(longer), 0.0, longer)).reshape(-1, F))
    assert not np.allclose(seqwise.running_var.numpy(), np.asarray(outs[0][1]))


# --- modes, degenerate batches, jit ------------------------------------------------------------------
class Block(nnx.Module):
    def __init__(self):
        self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
        self.norm = BatchNorm(F, param_dtype=jnp.float64)

    def __call__(self, x, lengths):
        return self.norm(self.drop(x), lengths)


def test_modes_follow_nnx_conventions_and_jit_updates_statistics():
    block = Block()
    assert block.norm.deterministic                                   # eval after construction
    x, lengths = jnp.asarray(np.random.default_rng(6).standard_normal((T, B, F))), LENGTHS
    before = np.asarray(block.norm.running_mean[...])
    block(x, lengths)
    np.testing.assert_array_equal(block.norm.running_mean[...], before)   # eval: no update
    block.train()
    block.drop.deterministic = True                                   # compare without dropout
    assert not block.norm.deterministic
    eager, jitted = nnx.clone(block), nnx.clone(block)
    step = nnx.jit(lambda m, x, lengths: m(x, lengths))
    for _ in range(2):
        np.testing.assert_allclose(step(jitted, x, jnp.asarray(lengths)), eager(x, lengths),
                                   **TOL64)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(jitted.norm, name)[...], getattr(eager.norm, name)[...]
        np.testing.assert_allclose(a, b, **TOL64, err_msg=name)
    assert int(jitted.norm.num_batches_tracked[...]) == 2
    block.eval()
    assert block.norm.deterministic


def test_fewer_than_two_valid_positions():
    tbn = _torch_bn(MaskedBatchNorm, 0.1)
    jbn = _jax_twin(tbn)
    jbn.train()
    tbn.train()
    x = np.random.default_rng(7).standard_normal((T, B, F))
    # no valid position: as torch with an empty batch, statistics kept, the batch counted
    y = jbn(jnp.asarray(x), np.zeros(B, int))
    tbn(torch.from_numpy(x), length_mask(np.zeros(B, int), T))
    assert np.all(np.asarray(y) == 0)
    _assert_same_state(jbn, tbn, **TOL64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        tbn(torch.from_numpy(x), length_mask([1, 0, 0], T))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training, "
                                         r"got 1 valid position in x of shape \(6, 3, 4\)"):
        jbn(jnp.asarray(x), np.array([1, 0, 0]))
    # traced: nothing to raise with; the statistics are kept and the output is the bias
    before = jaxseq.torch_state_dict(jbn)
    y = nnx.jit(lambda m, x, n: m(x, n))(jbn, jnp.asarray(x), jnp.array([1, 0, 0]))
    after = jaxseq.torch_state_dict(jbn)
    np.testing.assert_allclose(np.asarray(y)[0, 0], before["bias"], **TOL64)
    for k in ("running_mean", "running_var"):
        np.testing.assert_array_equal(after[k], before[k])
    assert after["num_batches_tracked"] == before["num_batches_tracked"] + 1


@pytest.mark.parametrize("call, exc, phrase", [
    (lambda bn: bn(jnp.ones((T, B, F)), LENGTHS, mask=jnp.ones((T, B), bool)), ValueError,
     "give at most one of lengths, segment_ids and mask, got ['lengths', 'mask']"),
    (lambda bn: bn(jnp.ones((T, B, F)), np.array([6, 7, 1])), ValueError,
     "`lengths` must satisfy 0 <= lengths[b] <= T=6, but found lengths[1] = 7"),
    (lambda bn: bn(jnp.ones((T, B, F)), np.array([6, 1])), ValueError,
     "Expected len(lengths) to be equal to batch_size, but got 2 (batch_size=3)"),
    (lambda bn: bn(jnp.ones((T, B, 5))), ValueError,
     "x must be [..., F] with F = num_features = 4 (features last), got shape (6, 3, 5)"),
    (lambda bn: bn(jnp.ones((T, B, F)), mask=jnp.ones((B, T), bool)), ValueError,
     "the validity mask must have the shape of x's leading axes (not the feature axis): x has "
     "shape (6, 3, 4), mask (3, 6)"),
    (lambda bn: bn(jnp.ones((T, B, F)), mask=jnp.ones((T, B))), TypeError,
     "the validity mask must be boolean, got float"),
    (lambda bn: bn(jnp.ones((T, B, F)), segment_ids=np.array([[1, 1, 1], [0, 1, 1]] + [[1, 1, 1]] * 4)),
     ValueError,
     "`segment_ids`: each row must hold segments 1, 2, ..., k"),
    (lambda bn: bn(jnp.ones((T, B, F), jnp.int32)), TypeError, "x must have a floating dtype"),
    (lambda bn: BatchNorm(F, momentum=1.5), ValueError,
     "momentum must be None (cumulative average) or a number in [0, 1], got 1.5"),
    (lambda bn: batch_norm(jnp.ones((3, F)), weight=jnp.ones(3)), ValueError,
     "weight must have shape (4,) (x's last axis), got (3,)"),
], ids=["two masks", "length > T", "wrong B", "features", "mask shape", "mask dtype", "segment layout",
        "int x", "momentum", "weight shape"])
def test_errors(call, exc, phrase):
    bn = BatchNorm(F)
    bn.train()
    with pytest.raises(exc) as info:
        call(bn)
    assert phrase in str(info.value)


def test_eager_calls_compile_once_per_shape():
    bn = BatchNorm(F)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((T, B, F)), jnp.float32)
    ids = lambda lengths: (np.arange(T)[:, None] < np.array(lengths)).astype(int)   # noqa: E731
    for mode in ("train", "eval"):
        getattr(bn, mode)()
        with count_compiles() as compiles:                            # warm-up: one of each kind
            bn(x, LENGTHS)
            bn(x)
            bn(x, segment_ids=ids(LENGTHS))
        assert compiles.names.count("jit(_batch_norm)") == 2, compiles.names   # masked, unmasked
        with count_compiles() as compiles:
            for lengths in ([6, 2, 4], [1, 5, 3], [6, 6, 6]):          # new values, same shapes
                bn(x, np.array(lengths))
                bn(x)
                bn(x, segment_ids=ids(lengths))
        assert compiles.count == 0, compiles.names
    assert int(bn.num_batches_tracked[...]) == 12


def test_pure_function_returns_statistics_without_touching_inputs():
    stats = RunningStats(jnp.zeros(F), jnp.ones(F), jnp.array(0))
    x = jnp.asarray(np.random.default_rng(9).standard_normal((5, F)), jnp.float32)
    _, new = batch_norm(x, running=stats, training=True, momentum=None)
    np.testing.assert_allclose(new.var, np.var(np.asarray(x), axis=0, ddof=1), rtol=1e-5)
    assert int(new.num_batches_tracked) == 1 and float(stats.var.sum()) == F
    y_eval, same = batch_norm(x, running=new)
    assert same is new
    np.testing.assert_allclose(y_eval, (x - new.mean) / jnp.sqrt(new.var + 1e-5), rtol=1e-5)


# --- the recipe for Flax's nnx.BatchNorm, measured ------------------------------------------------
def test_flax_batch_norm_recipe():
    """``nnx.BatchNorm(momentum=1 - m, epsilon=1e-5)`` with torch's weights: evaluation agrees;
    a training step normalises alike and moves the mean alike, but the running variance uses the
    biased batch variance; the statistics are float32 even with float64 parameters."""
    tbn = _torch_bn(torch.nn.BatchNorm1d, 0.1, dtype=torch.float32)
    fbn = jaxseq.load_torch_state_dict(nnx.BatchNorm(F, momentum=0.9, epsilon=1e-5,
                                                     rngs=nnx.Rngs(0)), tbn.state_dict())
    x = np.random.default_rng(10).standard_normal((8, F)).astype(np.float32) * 2 + 1
    fbn.eval()
    tbn.eval()
    np.testing.assert_allclose(fbn(jnp.asarray(x)), tbn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    old_var = np.asarray(fbn.var[...])
    fbn.train()
    tbn.train()
    np.testing.assert_allclose(fbn(jnp.asarray(x)), tbn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fbn.mean[...], tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fbn.var[...], 0.9 * old_var + 0.1 * x.var(0), rtol=1e-5)
    np.testing.assert_allclose(tbn.running_var.numpy(), 0.9 * old_var + 0.1 * x.var(0, ddof=1),
                               rtol=1e-5)
    wide = nnx.BatchNorm(F, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert wide.scale[...].dtype == jnp.float64 and wide.mean[...].dtype == jnp.float32
    assert BatchNorm(F, param_dtype=jnp.float64).running_mean[...].dtype == jnp.float64
