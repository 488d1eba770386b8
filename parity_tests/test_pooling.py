"""masked_sum / masked_mean / masked_max vs torch reductions over each row's valid slice."""
import jax
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxseq.pooling import masked_max, masked_mean, masked_sum  # noqa: E402

T = 6
LENGTHS = np.array([4, 1, 6, 0, 2])
POOLS = {"sum": (masked_sum, lambda v: v.sum(0)),
         "mean": (masked_mean, lambda v: v.mean(0)),
         "max": (masked_max, lambda v: v.amax(0))}


def _padded(trailing, batch_first, seed=0):
    """Random float64 ``[T, B, *]`` / ``[B, T, *]`` with NaN, inf and -inf in the padding."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(LENGTHS), T, *trailing))  # [B, T, *]
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    x[pad] = rng.choice([np.nan, np.inf, -np.inf, 1e300], size=(pad.sum(), *trailing))
    return x if batch_first else np.swapaxes(x, 0, 1)


def _torch_pool(x, reduce, batch_first, cotangent):
    """Reference value and gradient: torch reduction of each row's valid slice (0 for empty rows)."""
    xt = torch.from_numpy(np.array(x)).requires_grad_()
    rows = xt if batch_first else xt.transpose(0, 1)  # [B, T, *]
    out = torch.stack([reduce(rows[b, :n]) if n else torch.zeros(rows.shape[2:], dtype=xt.dtype)
                       for b, n in enumerate(LENGTHS)])
    (out * torch.from_numpy(cotangent)).sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("trailing", [(), (2, 3)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_pool_matches_torch_values_and_grads(pool, trailing, batch_first):
    ours_fn, torch_reduce = POOLS[pool]
    x = _padded(trailing, batch_first)
    cotangent = np.random.default_rng(1).standard_normal((len(LENGTHS), *trailing))
    out, vjp = jax.vjp(lambda v: ours_fn(v, jnp.asarray(LENGTHS), batch_first=batch_first),
                       jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(cotangent))
    ref_out, ref_grad = _torch_pool(x, torch_reduce, batch_first, cotangent)
    assert out.shape == ref_out.shape == (len(LENGTHS), *trailing)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-13, atol=0)
    assert np.isfinite(np.asarray(grad)).all()
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]  # [B, T]
    grad_rows = np.asarray(grad) if batch_first else np.swapaxes(np.asarray(grad), 0, 1)
    assert (grad_rows[pad] == 0).all()  # row 3 has length 0: all of it is padding
    assert (np.asarray(out)[LENGTHS == 0] == 0).all()


def test_masked_max_empty_value_and_integers():
    x = jnp.array([[3, 9, 1], [-5, 2, 7]], jnp.int32)[..., None]  # [B=2, T=3, F=1]
    out = masked_max(x, jnp.array([2, 0]), batch_first=True, empty_value=-1)
    assert out.dtype == jnp.int32
    assert out.tolist() == [[9], [-1]]
    neg = masked_max(jnp.array([[-4.0, -2.0]]), jnp.array([2]), batch_first=True)
    assert neg.tolist() == [-2.0]


def test_masked_max_ties_share_gradient_like_amax():
    x = np.array([[2.0, 2.0, 1.0, 2.0]])  # [B=1, T=4]; the tie at t=3 is padding
    grad = jax.grad(lambda v: masked_max(v, jnp.array([3]), batch_first=True).sum())(jnp.asarray(x))
    xt = torch.from_numpy(x[:, :3].copy()).requires_grad_()
    xt.amax(1).sum().backward()
    np.testing.assert_array_equal(np.asarray(grad), np.concatenate([xt.grad.numpy(), [[0.0]]], 1))


def test_masked_mean_integer_input_promotes():
    out = masked_mean(jnp.array([[1, 2, 100]]), jnp.array([2]), batch_first=True)
    assert jnp.issubdtype(out.dtype, jnp.floating)
    assert out.tolist() == [1.5]


def test_jit_with_traced_lengths():
    x = jnp.asarray(_padded((3,), batch_first=False))
    fn = jax.jit(lambda v, n: (masked_sum(v, n), masked_mean(v, n), masked_max(v, n)))
    for got, pool in zip(fn(x, jnp.asarray(LENGTHS)), ("sum", "mean", "max")):
        np.testing.assert_allclose(np.asarray(got), POOLS[pool][0](x, LENGTHS), rtol=1e-15)


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_errors(pool):
    fn = POOLS[pool][0]
    with pytest.raises(ValueError, match=r"T=3.*4"):
        fn(jnp.zeros((3, 2)), jnp.array([4, 1]))
    with pytest.raises(ValueError, match="batch_size"):
        fn(jnp.zeros((3, 2)), jnp.array([1, 1, 1]))
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        fn(jnp.zeros(3), jnp.array([1]))
    with pytest.raises(TypeError, match="integer"):
        fn(jnp.zeros((3, 2)), jnp.array([1.0, 2.0]))
