"""length_mask / reverse_padded / last_valid vs torch (packed sequences and the correct gather)."""
import jax
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxseq  # noqa: E402
from jaxseq.masking import last_valid, length_mask, reverse_padded  # noqa: E402
from torch_ref.packing import from_packed, to_packed  # noqa: E402

T = 6
LENGTHS = np.array([4, 1, 6, 0, 2])


def _padded(trailing, batch_first, seed=0):
    """Random ``[T, B, *]`` / ``[B, T, *]`` float64 data with NaN at every padded position."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(LENGTHS), T, *trailing))  # [B, T, *]
    x[np.arange(T)[None, :] >= LENGTHS[:, None]] = np.nan
    return x if batch_first else np.swapaxes(x, 0, 1)


def test_length_mask_matches_packed_sequence():
    lengths = LENGTHS[LENGTHS > 0]  # torch cannot pack zero lengths
    packed = to_packed(np.ones((T, len(lengths))), lengths)
    ref = from_packed(packed, total_length=T, batch_first=True)[0].numpy() != 0
    np.testing.assert_array_equal(np.asarray(length_mask(jnp.asarray(lengths), T)), ref)


def test_length_mask_zero_length_and_errors():
    mask = np.asarray(length_mask(jnp.asarray(LENGTHS), T))
    np.testing.assert_array_equal(mask.sum(1), LENGTHS)
    assert not mask[3].any()
    with pytest.raises(ValueError, match=r"T=6.*7"):
        length_mask(jnp.array([7]), T)
    with pytest.raises(ValueError, match=r"lengths.*-1"):
        length_mask(jnp.array([-1]), T)
    with pytest.raises(TypeError, match="integer"):
        length_mask(jnp.array([1.0]), T)


def _torch_reverse(x, batch_first):
    """Reference: flip each row's valid prefix with torch.flip, keep the padding in place."""
    xb = torch.from_numpy(np.array(x if batch_first else np.swapaxes(x, 0, 1)))  # [B, T, *]
    for b, n in enumerate(LENGTHS):
        xb[b, :n] = torch.flip(xb[b, :n], dims=[0])
    out = xb.numpy()
    return out if batch_first else np.swapaxes(out, 0, 1)


@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_reverse_padded_matches_torch_and_is_involution(trailing, batch_first):
    x = _padded(trailing, batch_first)
    once = reverse_padded(jnp.asarray(x), jnp.asarray(LENGTHS), batch_first=batch_first)
    np.testing.assert_array_equal(np.asarray(once), _torch_reverse(x, batch_first))
    twice = reverse_padded(once, jnp.asarray(LENGTHS), batch_first=batch_first)
    np.testing.assert_array_equal(np.asarray(twice), x)


def test_reverse_padded_matches_torch_reverse_rnn_direction():
    """A reverse-only RNN equals a forward RNN on the reversed-within-length input, reversed back."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 4, bidirectional=True).double()
    lengths = LENGTHS[LENGTHS > 0]
    x = np.nan_to_num(_padded((3,), batch_first=False)[:, LENGTHS > 0])
    out, _ = rnn(to_packed(x, lengths))
    out = from_packed(out, T)[0].detach().numpy()
    fwd = torch.nn.RNN(3, 4).double()
    fwd.load_state_dict({k.removesuffix("_reverse"): v for k, v in rnn.state_dict().items()
                         if k.endswith("_reverse")})
    xr = np.asarray(reverse_padded(jnp.asarray(x), jnp.asarray(lengths)))
    out_r, _ = fwd(to_packed(xr, lengths))
    out_r = from_packed(out_r, T)[0].detach().numpy()
    back = np.asarray(reverse_padded(jnp.asarray(out_r), jnp.asarray(lengths)))
    np.testing.assert_allclose(back, out[..., 4:], rtol=1e-12, atol=1e-14)


def _torch_last_valid(x, batch_first):
    """Reference: the standard torch gather at ``lengths-1`` (zeros for zero-length rows)."""
    xt = torch.from_numpy(np.array(x))
    t_axis = 1 if batch_first else 0
    lengths = torch.from_numpy(LENGTHS)
    idx = (lengths - 1).clamp(min=0)
    shape = [1] * xt.dim()
    shape[1 - t_axis] = len(LENGTHS)
    idx = idx.view(shape).expand(*[1 if d == t_axis else s for d, s in enumerate(xt.shape)])
    picked = xt.gather(t_axis, idx).squeeze(t_axis)
    keep = (lengths > 0).view([-1] + [1] * (picked.dim() - 1))
    return torch.where(keep, picked, torch.zeros(())).numpy()


@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_last_valid_matches_torch_gather(trailing, batch_first):
    x = _padded(trailing, batch_first)
    ours = last_valid(jnp.asarray(x), jnp.asarray(LENGTHS), batch_first=batch_first)
    ref = _torch_last_valid(x, batch_first)
    assert ours.shape == ref.shape == (len(LENGTHS), *trailing)
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert np.isfinite(np.asarray(ours)).all()
    naive = np.asarray(x[:, -1] if batch_first else x[-1])
    assert not np.array_equal(np.asarray(ours), naive, equal_nan=True)


@pytest.mark.parametrize("batch_first", [False, True])
def test_last_valid_gradient_only_at_last_step(batch_first):
    """d/dx sum(last_valid(x)**2) is 2x at each row's last valid step and exactly 0 elsewhere."""
    x = _padded((3,), batch_first)
    grad = np.asarray(jax.grad(lambda v: jnp.sum(
        last_valid(v, jnp.asarray(LENGTHS), batch_first=batch_first) ** 2))(jnp.asarray(x)))
    xt = torch.from_numpy(np.nan_to_num(x)).requires_grad_()
    t_axis = 1 if batch_first else 0
    idx = torch.from_numpy(np.maximum(LENGTHS - 1, 0)).view(
        [-1 if d == 1 - t_axis else 1 for d in range(3)]).expand(
        *[1 if d == t_axis else s for d, s in enumerate(xt.shape)])
    keep = torch.from_numpy(LENGTHS > 0)[:, None]
    (torch.where(keep, xt.gather(t_axis, idx).squeeze(t_axis), 0.0) ** 2).sum().backward()
    np.testing.assert_array_equal(grad, xt.grad.numpy())
    assert np.count_nonzero(grad) == 3 * np.count_nonzero(LENGTHS)


def test_jit_with_traced_lengths():
    x = jnp.asarray(np.nan_to_num(_padded((3,), batch_first=True)))
    fn = jax.jit(lambda v, n: (length_mask(n, T), reverse_padded(v, n, True),
                               last_valid(v, n, True)))
    mask, rev, last = fn(x, jnp.asarray(LENGTHS))
    np.testing.assert_array_equal(np.asarray(mask), np.arange(T)[None] < LENGTHS[:, None])
    np.testing.assert_array_equal(np.asarray(rev), _torch_reverse(np.asarray(x), True))
    np.testing.assert_array_equal(np.asarray(last), _torch_last_valid(np.asarray(x), True))


def test_length_mask_time_major_is_the_transpose():
    lengths = jnp.array([3, 0, 5, 1])
    batch_major = jaxseq.length_mask(lengths, 5)
    time_major = jaxseq.length_mask(lengths, 5, batch_first=False)
    assert time_major.shape == (5, 4)
    np.testing.assert_array_equal(time_major, batch_major.T)
    with pytest.raises(ValueError, match="lengths"):
        jaxseq.length_mask(jnp.array([6]), 5, batch_first=False)


def _segment_marks(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last step of every segment of batch-first ``ids [B, T]``, by a plain loop."""
    starts, ends = np.zeros(ids.shape, bool), np.zeros(ids.shape, bool)
    for b, row in enumerate(ids):
        for t, v in enumerate(row):
            if v:
                starts[b, t] = t == 0 or row[t - 1] != v
                ends[b, t] = t == len(row) - 1 or row[t + 1] != v
    return starts, ends


@pytest.mark.parametrize("batch_first", [True, False])
def test_segment_start_and_end_masks(batch_first):
    ids = np.array([[1, 1, 2, 3, 3, 0], [1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1], [0] * 6])
    starts, ends = _segment_marks(ids)
    given = ids if batch_first else ids.T
    layout = (lambda a: a) if batch_first else (lambda a: a.T)
    np.testing.assert_array_equal(jaxseq.segment_starts(given, batch_first=batch_first),
                                  layout(starts))
    np.testing.assert_array_equal(jaxseq.segment_ends(given, batch_first=batch_first), layout(ends))
    traced = jax.jit(lambda i: jaxseq.segment_ends(i, batch_first=batch_first))(jnp.asarray(given))
    np.testing.assert_array_equal(traced, layout(ends))
    bad = np.array([[1, 0, 2, 0, 0, 0]])
    with pytest.raises(ValueError, match="segment_ids"):
        jaxseq.segment_starts(bad if batch_first else bad.T, batch_first=batch_first)
