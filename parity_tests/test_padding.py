"""pad_sequence / unpad_sequence vs torch.nn.utils.rnn, and the torch_ref packing converters."""
import jax
import torch

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.nn.utils import rnn as trnn  # noqa: E402

from jaxseq.padding import pad_sequence, unpad_sequence  # noqa: E402
from torch_ref.packing import from_packed, to_packed  # noqa: E402

LENGTHS = [4, 1, 6, 6, 2]


def _sequences(trailing, dtype=np.float64, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *trailing)).astype(dtype) for n in lengths]


@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_sequence_matches_torch(trailing, batch_first, padding_side):
    seqs = _sequences(trailing, lengths=LENGTHS + [0])
    ours = pad_sequence([jnp.asarray(s) for s in seqs], batch_first=batch_first,
                        padding_value=-7.5, padding_side=padding_side)
    ref = trnn.pad_sequence([torch.from_numpy(s) for s in seqs], batch_first=batch_first,
                            padding_value=-7.5, padding_side=padding_side)
    assert ours.dtype == jnp.float64
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


def test_pad_sequence_integer_and_numpy_inputs():
    seqs = [np.array([1, 2, 3], np.int32), np.array([4], np.int32)]
    ours = pad_sequence(seqs, batch_first=True, padding_value=-1)
    assert ours.dtype == jnp.int32
    assert ours.tolist() == [[1, 2, 3], [4, -1, -1]]


@pytest.mark.parametrize("bad, match", [
    ([], "empty"),
    ([np.ones((2, 3)), np.ones((2, 4))], r"\(2, 3\).*\(2, 4\)"),
    ([np.ones((2, 3)), np.ones((2,))], "trailing shape"),
    ([np.ones(()), np.ones((2,))], "0-d"),
])
def test_pad_sequence_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        pad_sequence(bad)


def test_pad_sequence_bad_side():
    with pytest.raises(ValueError, match="padding_side"):
        pad_sequence([np.ones(2)], padding_side="both")


@pytest.mark.parametrize("trailing", [(), (3,)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unpad_matches_torch_and_does_not_mutate(trailing, batch_first):
    seqs = _sequences(trailing, lengths=LENGTHS + [0])
    padded = np.asarray(pad_sequence(seqs, batch_first=batch_first, padding_value=np.nan))
    before = padded.copy()
    lengths = np.array([len(s) for s in seqs])
    ours = unpad_sequence(padded, lengths, batch_first=batch_first)
    ref = trnn.unpad_sequence(torch.from_numpy(padded.copy()), torch.from_numpy(lengths),
                              batch_first=batch_first)
    assert len(ours) == len(ref) == len(seqs)
    for o, r, s in zip(ours, ref, seqs):
        np.testing.assert_array_equal(np.asarray(o), r.numpy())
        np.testing.assert_array_equal(np.asarray(o), s)
    np.testing.assert_array_equal(padded, before)


def test_unpad_errors():
    x = jnp.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"T=4.*5"):
        unpad_sequence(x, jnp.array([5, 1]))
    with pytest.raises(ValueError, match="batch_size"):
        unpad_sequence(x, jnp.array([1, 1, 1]))
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda n: unpad_sequence(x, n)[0])(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        unpad_sequence(jnp.zeros(3), jnp.array([1]))


@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_ref_packing_round_trip(batch_first):
    seqs = _sequences((3,))
    lengths = np.array(LENGTHS)
    padded = pad_sequence(seqs, batch_first=batch_first, padding_value=np.nan)
    packed = to_packed(padded, lengths, batch_first=batch_first)
    ref = trnn.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted=False)
    torch.testing.assert_close(packed.data, ref.data, rtol=0, atol=0)
    assert packed.batch_sizes.tolist() == ref.batch_sizes.tolist()
    back, back_lengths = from_packed(packed, total_length=8, batch_first=batch_first)
    assert back_lengths.tolist() == LENGTHS
    expected = np.asarray(pad_sequence(seqs, batch_first=batch_first))
    t_axis = 1 if batch_first else 0
    expected = np.concatenate([expected, np.zeros_like(expected.take([0, 1], axis=t_axis))],
                              axis=t_axis)
    np.testing.assert_array_equal(back.numpy(), expected)


def test_to_packed_rejects_lengths_beyond_t():
    with pytest.raises(ValueError, match="T=3"):
        to_packed(np.zeros((3, 2)), [4, 1])
