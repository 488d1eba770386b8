"""Parameter initialisation for torch-named recurrent parameter dicts.

:func:`torch_default` reproduces ``torch.nn.LSTM/GRU/RNN.reset_parameters``: every parameter
(weights, both biases, projection) is drawn from ``U(-1/sqrt(H), 1/sqrt(H))``. The draws come from
JAX's PRNG, so values differ from torch's; the distribution is the same.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.layout import Structure, param_shapes


def torch_default(key: jax.Array, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                  bias: bool = True, bidirectional: bool = False, proj_size: int = 0,
                  dtype: jnp.dtype = jnp.float32) -> dict[str, jax.Array]:
    """torch's default initialisation: every parameter ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.

    Args:
      key: a JAX PRNG key.
      mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
      input_size, hidden_size, num_layers, bias, bidirectional, proj_size: as ``torch.nn.LSTM``.
      dtype: parameter dtype.

    Returns:
      ``{torch name: array}`` in torch's ``state_dict`` order.

    >>> p = torch_default(jax.random.key(0), "GRU", 3, 4)
    >>> {k: v.shape for k, v in p.items()}
    {'weight_ih_l0': (12, 3), 'weight_hh_l0': (12, 4), 'bias_ih_l0': (12,), 'bias_hh_l0': (12,)}
    """
    shapes = param_shapes(Structure(mode, input_size, hidden_size, num_layers, bias, bidirectional,
                                    proj_size))
    bound = 1.0 / math.sqrt(hidden_size)
    sizes = [math.prod(shape) for shape in shapes.values()]
    # One draw for all parameters (one compiled kernel per model size, not one per shape).
    flat = np.asarray(jax.random.uniform(key, (sum(sizes),), dtype, -bound, bound))
    chunks = np.split(flat, np.cumsum(sizes)[:-1])
    return {name: jnp.asarray(chunk.reshape(shape))
            for chunk, (name, shape) in zip(chunks, shapes.items())}
