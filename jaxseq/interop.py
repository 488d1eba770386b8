"""Exchange parameters with ``torch.nn.LSTM/GRU/RNN`` ``state_dict``\\ s.

Values may be torch tensors (any device, contiguous or not, any float dtype including bfloat16) or
numpy arrays; torch is never imported here. Loading casts to the module's parameter dtype (as
``torch.nn.Module.load_state_dict`` copies into existing parameters); torch -> jaxseq -> torch is
bit-exact when the dtypes agree.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jaxseq.layout import check_param_shapes
from jaxseq.recurrent import RecurrentBase
from jaxseq.validation import check_floating


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen exactly
            value = value.float()
        value = value.numpy()
    # A private copy: jnp.asarray may alias host memory, and the caller's tensor may later be
    # updated in place (optimizer.step()), which must not reach the jaxseq module.
    array = np.array(value, copy=True)
    check_floating(array.dtype, f"state_dict[{key!r}]")
    return array


def load_torch_state_dict(module: RecurrentBase, state_dict: Mapping[str, Any], *,
                          prefix: str = "") -> RecurrentBase:
    """Copy a torch ``state_dict`` into ``module`` in place and return ``module``.

    Args:
      module: a :class:`jaxseq.LSTM`, :class:`jaxseq.GRU` or :class:`jaxseq.RNN`.
      state_dict: ``{torch name: tensor or array}`` as ``torch.nn.LSTM(...).state_dict()`` gives.
      prefix: read only keys starting with ``prefix`` (e.g. ``"encoder.lstm."`` for a submodule of a
        larger torch model), with the prefix stripped; other keys are ignored.

    Raises:
      ValueError: unknown or missing keys, or a shape mismatch (naming the key and both shapes).
      TypeError: ``state_dict`` is not a mapping, or a value is not floating-point.

    Nothing is written unless every entry checks out.

    >>> import numpy as np
    >>> from flax import nnx
    >>> from jaxseq import GRU
    >>> gru = GRU(2, 3, rngs=nnx.Rngs(0))
    >>> sd = {k: np.zeros_like(v) for k, v in torch_state_dict(gru).items()}
    >>> float(load_torch_state_dict(gru, sd).weight_hh_l0[...].sum())
    0.0
    """
    if not isinstance(module, RecurrentBase):
        raise TypeError(f"module must be a jaxseq LSTM/GRU/RNN, got {type(module).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping {{torch name: tensor}}, got "
                        f"{type(state_dict).__name__}")
    entries = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    arrays = {k: _to_numpy(prefix + k, v) for k, v in entries.items()}
    check_param_shapes(module.structure, {k: a.shape for k, a in arrays.items()},
                       what=f"state_dict{f' (prefix {prefix!r})' if prefix else ''}")
    for name in module.param_names():
        param = getattr(module, name)
        param[...] = jnp.asarray(arrays[name], dtype=param.dtype)
    return module


def torch_state_dict(module: RecurrentBase) -> dict[str, np.ndarray]:
    """``{torch name: numpy array}`` of ``module``'s parameters, in torch's order.

    The arrays are writable copies (``torch.from_numpy`` accepts them without a warning, and writing
    to them does not touch ``module``).

    Load it into torch with ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``
    (for a bfloat16 module, convert with ``torch.from_numpy(v.astype(np.float32)).bfloat16()``).

    >>> from flax import nnx
    >>> from jaxseq import LSTM
    >>> sorted(torch_state_dict(LSTM(2, 3, bias=False, rngs=nnx.Rngs(0))))
    ['weight_hh_l0', 'weight_ih_l0']
    """
    if not isinstance(module, RecurrentBase):
        raise TypeError(f"module must be a jaxseq LSTM/GRU/RNN, got {type(module).__name__}")
    return {name: np.array(value) for name, value in module.param_dict().items()}  # writable copies



