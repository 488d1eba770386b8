"""``jaxseq.conv_output_lengths`` / ``nnx_conv_output_lengths`` against real convolutions.

* torch's ``Conv1d`` output size over a grid of ``(L, kernel_size, stride, padding, dilation)``
  (numpy, jax and int lengths, ``jit`` included); where torch refuses the input (shorter than one
  window) the helper says 0; ``L == 0`` gives 0;
* torch's ``Conv2d`` per axis and its ``padding="same"`` / ``"valid"``;
* ``nnx.Conv`` output shapes for every padding form (ints, per-axis pairs, ``"SAME"``,
  ``"VALID"``, ``"CAUSAL"``, ``"SAME_LOWER"``, ``"CIRCULAR"``, ``"REFLECT"``), strides, dilations;
* errors; eager calls compile once per conv.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import jaxseq
from parity_tests.compiles import count_compiles

LENGTHS = np.arange(0, 14)
GRID = list(itertools.product([1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2]))   # k, s, p, d


def _torch_size(length: int, kernel: int, stride: int, padding, dilation: int) -> int:
    """torch's ``Conv1d`` output size, 0 where torch refuses the input (too short, or empty)."""
    try:
        out = F.conv1d(torch.zeros(1, 1, length), torch.zeros(1, 1, kernel), stride=stride,
                       padding=padding, dilation=dilation)
    except RuntimeError:
        return 0
    return out.shape[-1] if length else 0


@pytest.mark.parametrize("kernel, stride, padding, dilation", GRID)
def test_lengths_are_torch_conv1d_output_sizes(kernel, stride, padding, dilation):
    sizes = [_torch_size(int(n), kernel, stride, padding, dilation) for n in LENGTHS]
    geometry = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    host = jaxseq.conv_output_lengths(LENGTHS, **geometry)
    assert isinstance(host, np.ndarray) and host.dtype == LENGTHS.dtype
    assert host.tolist() == sizes
    assert jaxseq.conv_output_lengths(jnp.asarray(LENGTHS), **geometry).tolist() == sizes
    assert [jaxseq.conv_output_lengths(int(n), **geometry) for n in LENGTHS] == sizes


def test_jit_and_length_zero_semantics():
    """Traced lengths give the same; ``L == 0`` stays 0 where padding alone makes frames (torch
    refuses an empty input), a sequence shorter than one window has 0 frames."""
    geometry = dict(kernel_size=3, padding=2)
    assert (0 + 2 * 2 - 2 - 1) // 1 + 1 == 2                       # the bare formula at L == 0
    traced = jax.jit(lambda n: jaxseq.conv_output_lengths(n, **geometry))(jnp.asarray(LENGTHS))
    assert traced.tolist() == jaxseq.conv_output_lengths(LENGTHS, **geometry).tolist()
    assert traced.tolist()[:3] == [0, 3, 4]
    assert jaxseq.conv_output_lengths(np.array([0, 3, 4, 5]), kernel_size=5).tolist() == [0, 0, 0, 1]


def test_torch_conv2d_per_axis_and_padding_strings():
    conv = torch.nn.Conv2d(1, 1, kernel_size=(5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2))
    for axis in (0, 1):
        geometry = dict(kernel_size=conv.kernel_size[axis], stride=conv.stride[axis],
                        padding=conv.padding[axis], dilation=conv.dilation[axis])
        for n in range(6, 12):
            shape = (1, 1, n, 9) if axis == 0 else (1, 1, 9, n)
            assert jaxseq.conv_output_lengths(n, **geometry) == conv(torch.zeros(shape)).shape[2 + axis]
    for padding in ("same", "valid"):
        conv1d = torch.nn.Conv1d(1, 1, 4, padding=padding, dilation=2)
        sizes = [conv1d(torch.zeros(1, 1, n)).shape[-1] for n in range(7, 12)]
        assert jaxseq.conv_output_lengths(np.arange(7, 12), 4, padding=padding,
                                          dilation=2).tolist() == sizes


NNX_PADDINGS = [0, 2, [(3, 1)], [(0, 2)], "SAME", "VALID", "CAUSAL", "SAME_LOWER", "CIRCULAR",
                "REFLECT"]


@pytest.mark.parametrize("padding", NNX_PADDINGS, ids=str)
def test_nnx_conv_output_shapes(padding):
    for kernel, stride, dilation in [(3, 1, 1), (4, 2, 1), (3, 3, 2), (1, 2, 1)]:
        conv = nnx.Conv(1, 1, kernel, strides=stride, padding=padding, kernel_dilation=dilation,
                        rngs=nnx.Rngs(0))
        for n in range(max(1, dilation * (kernel - 1) - 1), 12):
            try:
                size = jax.eval_shape(conv, jax.ShapeDtypeStruct((1, n, 1), jnp.float32)).shape[1]
            except (TypeError, ValueError):        # lax refuses a negative output size
                size = 0
            assert jaxseq.nnx_conv_output_lengths(n, conv) == max(size, 0), (kernel, stride,
                                                                              dilation, n)


def test_nnx_conv2d_axes():
    conv = nnx.Conv(1, 2, (5, 3), strides=(2, 1), padding=[(2, 2), (0, 1)], kernel_dilation=(1, 2),
                    rngs=nnx.Rngs(0))
    out = jax.eval_shape(conv, jax.ShapeDtypeStruct((1, 16, 11, 1), jnp.float32)).shape
    assert jaxseq.nnx_conv_output_lengths(16, conv, axis=0) == out[1]
    assert jaxseq.nnx_conv_output_lengths(11, conv) == jaxseq.nnx_conv_output_lengths(
        11, conv, axis=1) == out[2]
    assert jaxseq.nnx_conv_output_lengths(np.array([0, 16]), conv, axis=-2).tolist() == [0, out[1]]


def test_errors():
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        jaxseq.conv_output_lengths(np.array([3, -1]), 3)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        jaxseq.conv_output_lengths(jnp.array([3, -1]), 3)
    with pytest.raises(TypeError, match="integer dtype"):
        jaxseq.conv_output_lengths(np.array([3.0]), 3)
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1"):
        jaxseq.conv_output_lengths(3, 0)
    with pytest.raises(ValueError, match="padding must be an integer >= 0"):
        jaxseq.conv_output_lengths(3, 3, padding=-1)
    with pytest.raises(ValueError, match="padding string must be one of 'valid', 'causal'"):
        jaxseq.conv_output_lengths(3, 3, padding="full")
    with pytest.raises(TypeError, match=r"padding must be an int, a \(low, high\) pair"):
        jaxseq.conv_output_lengths(3, 3, padding=(1, 2, 3))
    conv = nnx.Conv(1, 1, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="axis must index the conv's 2 spatial axes"):
        jaxseq.nnx_conv_output_lengths(3, conv, axis=2)
    dilated = nnx.Conv(1, 1, 3, input_dilation=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_dilation=2 is not supported"):
        jaxseq.nnx_conv_output_lengths(3, dilated)
    with pytest.raises(TypeError, match=r"conv must be an nnx\.Conv"):
        jaxseq.nnx_conv_output_lengths(3, nnx.Linear(1, 1, rngs=nnx.Rngs(0)))


def test_eager_calls_compile_once_per_conv():
    geometry = dict(kernel_size=5, stride=2, padding=2)
    jaxseq.conv_output_lengths(jnp.array([4, 9]), **geometry).block_until_ready()
    with count_compiles() as again:
        for lengths in ([1, 7], [3, 3]):
            jaxseq.conv_output_lengths(jnp.array(lengths), **geometry).block_until_ready()
    assert again.count == 0, again.names
