"""Parameter initialisation for torch-named recurrent parameter dicts.

Every initializer has the signature of :func:`torch_default`,
``init(key, mode, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False, proj_size=0,
dtype=float32) -> {torch name: array}``, so one can be passed to the modules as
``jaxseq.LSTM(..., init="recommended")`` (a name from :data:`INITIALIZERS` or such a callable).

* :func:`torch_default` reproduces ``torch.nn.LSTM/GRU/RNN.reset_parameters``: every parameter
  (weights, both biases, projection) is drawn from ``U(-1/sqrt(H), 1/sqrt(H))``. The draws come from
  JAX's PRNG, so values differ from torch's; the distribution is the same.
* :func:`recommended`: orthogonal gate blocks, zero biases and (LSTM) a forget-gate bias of 1, the
  usual recipe for training recurrent nets; ``torch_ref.init.recommended_init_`` is its torch twin.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.layout import Structure, check_param_shapes, param_shapes

Initializer = Callable[..., dict[str, jax.Array]]


def torch_default(key: jax.Array, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                  bias: bool = True, bidirectional: bool = False, proj_size: int = 0,
                  dtype: jnp.dtype = jnp.float32) -> dict[str, jax.Array]:
    """torch's default initialisation: every parameter ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``bidirectional`` and ``proj_size``
    are those of ``torch.nn.LSTM``.

    Args:
      key: a JAX PRNG key.
      mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
      dtype: parameter dtype.

    Returns:
      ``{torch name: array}`` in torch's ``state_dict`` order.

    >>> p = torch_default(jax.random.key(0), "GRU", 3, 4)
    >>> {k: v.shape for k, v in p.items()}
    {'weight_ih_l0': (12, 3), 'weight_hh_l0': (12, 4), 'bias_ih_l0': (12,), 'bias_hh_l0': (12,)}
    """
    s = Structure(mode, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
    return _torch_order(_uniform(key, s, np.dtype(dtype)), s)


def _torch_order(params: dict[str, jax.Array], structure: Structure) -> dict[str, jax.Array]:
    """``params`` in torch's ``state_dict`` order (a jitted function returns its dicts sorted)."""
    return {name: params[name] for name in param_shapes(structure)}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _uniform(key: jax.Array, structure: Structure, dtype: np.dtype) -> dict[str, jax.Array]:
    """:func:`torch_default` for ``structure``: one jitted draw per model structure, traceable (so
    modules can be built under ``nnx.eval_shape`` / ``nnx.jit``) and one compilation eagerly."""
    shapes = param_shapes(structure)
    bound = 1.0 / math.sqrt(structure.hidden_size)
    sizes = [math.prod(shape) for shape in shapes.values()]
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -bound, bound)
    chunks = jnp.split(flat, np.cumsum(sizes)[:-1])
    return {name: chunk.reshape(shape) for chunk, (name, shape) in zip(chunks, shapes.items())}


def _orthogonal(normal: jax.Array, rows: int, cols: int) -> jax.Array:
    """Orthogonal blocks ``[n, rows, cols]`` from standard normals ``[n * rows * cols]`` (QR with the
    sign of ``diag(R)`` fixed, as ``jax.nn.initializers.orthogonal``): orthonormal rows if
    ``rows <= cols``, else columns."""
    q, r = jnp.linalg.qr(normal.reshape(-1, max(rows, cols), min(rows, cols)))
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    return q if rows >= cols else jnp.swapaxes(q, -1, -2)


def recommended(key: jax.Array, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                bias: bool = True, bidirectional: bool = False, proj_size: int = 0,
                dtype: jnp.dtype = jnp.float32, *, forget_bias: float = 1.0) -> dict[str, jax.Array]:
    """Orthogonal gate blocks, zero biases, LSTM forget-gate bias ``forget_bias``.

    * ``weight_ih`` / ``weight_hh``: each gate block ``[H, in]`` (rows ``k*H:(k+1)*H``) is drawn
      orthogonal on its own: orthonormal rows when ``H <= in``, else orthonormal columns.
    * ``weight_hr`` (projection ``[P, H]``): orthonormal rows.
    * biases: zero, except (LSTM) the forget block ``[H:2H]`` of ``bias_ih``, set to ``forget_bias``.
      torch adds ``bias_ih + bias_hh``, so the *effective* forget bias is ``forget_bias`` (setting it
      in both vectors, a common mistake, gives twice that). GRU/RNN: all biases zero.

    Takes the arguments of :func:`torch_default`, and:

    Args:
      forget_bias: effective LSTM forget-gate bias (default 1.0); ignored with ``bias=False``.

    Returns:
      ``{torch name: array}`` in torch's ``state_dict`` order.

    Use ``functools.partial(recommended, forget_bias=2.0)`` as a module ``init=`` for another value.

    Examples:
        >>> p = recommended(jax.random.key(0), "LSTM", 3, 2)
        >>> (p["bias_ih_l0"] + p["bias_hh_l0"]).tolist()          # gates i, f, g, o
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        >>> w = p["weight_hh_l0"][0:2]                             # gate i of W_hh, [H, H]
        >>> bool(jnp.allclose(w @ w.T, jnp.eye(2), atol=1e-6))
        True
    """
    s = Structure(mode, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
    return _torch_order(_orthogonal_params(key, s, np.dtype(dtype), float(forget_bias)), s)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _orthogonal_params(key: jax.Array, structure: Structure, dtype: np.dtype,
                       forget_bias: float) -> dict[str, jax.Array]:
    """:func:`recommended` for ``structure``: jitted and traceable, as :func:`_uniform`."""
    s, hidden = structure, structure.hidden_size
    shapes = param_shapes(s)
    # Each weight is a stack of `n` blocks [rows, cols]: `gates` blocks [H, in] for W_ih / W_hh,
    # one [P, H] for W_hr.
    blocks = {name: (1, *shape) if name.startswith("weight_hr") else (s.gates, hidden, shape[1])
              for name, shape in shapes.items() if name.startswith("weight")}
    sizes = [math.prod(stack) for stack in blocks.values()]
    # One draw for all blocks, QR in the default float type (float64 under jax_enable_x64).
    normals = jnp.split(jax.random.normal(key, (sum(sizes),)), np.cumsum(sizes)[:-1])
    params = {name: _orthogonal(normal, rows, cols).reshape(shapes[name]).astype(dtype)
              for normal, (name, (_, rows, cols)) in zip(normals, blocks.items())}
    for name, shape in shapes.items():
        if name.startswith("bias"):
            b = jnp.zeros(shape, dtype)
            if s.mode == "LSTM" and name.startswith("bias_ih"):
                b = b.at[hidden:2 * hidden].set(forget_bias)
            params[name] = b
    return params


#: Initializers known by name (the ``init=`` option of :class:`jaxseq.LSTM`, GRU and RNN).
INITIALIZERS: dict[str, Initializer] = {"torch_default": torch_default, "recommended": recommended}


def initialize(init: Union[str, Initializer], key: jax.Array, structure: Structure,
               dtype: jnp.dtype = jnp.float32) -> dict[str, jax.Array]:
    """Run ``init`` (a name from :data:`INITIALIZERS` or a callable) for ``structure``; check the result.

    Raises:
      ValueError: an unknown name, or a result whose keys or shapes are not torch's for ``structure``.

    >>> s = Structure("RNN_TANH", 2, 3, 1, True, False, 0)
    >>> sorted(initialize("recommended", jax.random.key(0), s))
    ['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0']
    """
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ValueError(f"Unknown init {init!r}; expected one of {sorted(INITIALIZERS)} or a "
                             "callable")
        init = INITIALIZERS[init]
    elif not callable(init):
        raise ValueError(f"init must be a name in {sorted(INITIALIZERS)} or a callable, got {init!r}")
    s = structure
    params = init(key, s.mode, s.input_size, s.hidden_size, s.num_layers, s.bias, s.bidirectional,
                  s.proj_size, dtype)
    check_param_shapes(s, {k: tuple(jnp.shape(v)) for k, v in params.items()},
                       what=f"the result of init={getattr(init, '__name__', init)!r}")
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}
