"""Exchange parameters with torch ``state_dict``\\ s: one jaxseq layer or cell, or a whole model.

Values may be torch tensors (any device, contiguous or not, any float dtype including bfloat16) or
numpy arrays; torch is never imported here. Loading casts to the parameters' dtype (as
``torch.nn.Module.load_state_dict`` copies into existing parameters); torch -> jaxseq -> torch is
bit-exact when the dtypes agree.

Keys. Every ``nnx.Param`` of the model gets the torch key of the module path that holds it
(attribute names and list indices joined by ``.``, as torch names submodules) plus its torch name:

=================================  ==============================================================
jaxseq ``LSTM`` / ``GRU`` / ``RNN``  torch names as they are (``weight_ih_l0``, ``bias_hh_l1_reverse``)
jaxseq ``LSTMCell`` / ...          ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``
``nnx.Linear``                     ``kernel [in, out]`` <-> ``weight [out, in]`` (transposed), ``bias``
``nnx.Embed``                      ``embedding`` <-> ``weight``
``nnx.LayerNorm``                  ``scale`` <-> ``weight``, ``bias``
a custom module's own ``nnx.Param``  its attribute name, as is
=================================  ==============================================================

so ``model.encoder.lstm.weight_ih_l0`` is ``encoder.lstm.weight_ih_l0`` and
``model.layers[1].kernel`` is ``layers.1.weight``. Other Flax layers with parameters (convolutions,
batch norm...) have no rule and raise. Torch keys that are named differently (AWD-LSTM's
``WeightDrop`` renames ``weight_hh_l0`` to ``module.weight_hh_l0_raw``; a tied decoder repeats
the embedding) are mapped with ``rename=``.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Optional, Union

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseq.cells import CellBase
from jaxseq.layout import check_shapes, describe
from jaxseq.recurrent import RecurrentBase
from jaxseq.validation import check_floating

#: ``rename``: a callable ``torch key -> new key or None`` (``None`` drops the key), or
#: ``(pattern, replacement)`` pairs (a mapping or a sequence) applied in order with ``re.sub``
#: to every key they match (``re.search``); a ``None`` replacement drops a matching key.
Rename = Union[Callable[[str], Optional[str]], Mapping[str, Optional[str]],
               Iterable[tuple[str, Optional[str]]]]


class _Slot(NamedTuple):
    param: nnx.Param
    transpose: bool


def _flax_rules() -> dict[type, dict[str, tuple[str, bool]]]:
    """Flax layer -> {attribute: (torch name, transposed)}."""
    return {nnx.Linear: {"kernel": ("weight", True), "bias": ("bias", False)},
            nnx.Embed: {"embedding": ("weight", False)},
            nnx.LayerNorm: {"scale": ("weight", False), "bias": ("bias", False)}}


def _torch_named(module: nnx.Module) -> Optional[list[str]]:
    """The torch names of a jaxseq layer's or cell's parameters, in torch's order (else None)."""
    return list(module.param_shapes()) if isinstance(module, (RecurrentBase, CellBase)) else None


def _slots(model: nnx.Module) -> dict[str, _Slot]:
    """``{torch key: slot}`` for every ``nnx.Param`` reachable from ``model``, in model order."""
    rules = _flax_rules()
    slots: dict[str, _Slot] = {}
    seen: set[int] = set()

    def visit(node: Any, path: tuple) -> None:
        if id(node) in seen:       # shared submodules / parameters: first path wins (as torch)
            return
        seen.add(id(node))
        key = lambda name: ".".join(map(str, path + (name,)))   # noqa: E731
        names = _torch_named(node) if isinstance(node, nnx.Module) else None
        if names is not None:
            for name in names:
                slots[key(name)] = _Slot(getattr(node, name), False)
                seen.add(id(getattr(node, name)))
            return
        rule = next((r for cls, r in rules.items() if type(node) is cls), None)
        children: list[tuple[Any, Any]] = (
            list(enumerate(node)) if isinstance(node, (list, tuple, nnx.List))
            else sorted(node.items()) if isinstance(node, dict)
            else list(vars(node).items()) if isinstance(node, nnx.Module) else [])
        for name, child in children:
            if isinstance(child, nnx.Param):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                if rule is not None:
                    if name not in rule:
                        raise TypeError(f"no torch name for parameter {name!r} of "
                                        f"{type(node).__name__} at {'.'.join(map(str, path))!r}")
                    torch_name, transpose = rule[name]
                    slots[key(torch_name)] = _Slot(child, transpose)
                elif type(node).__module__.startswith("flax.nnx.nn."):   # Conv, BatchNorm...
                    where = ".".join(map(str, path)) or "the top"
                    raise TypeError(f"{type(node).__name__} at {where!r} "
                                    "has no torch mapping (supported: jaxseq layers and cells, "
                                    "nnx.Linear, nnx.Embed, nnx.LayerNorm, custom modules' own Params)")
                else:
                    slots[key(str(name))] = _Slot(child, False)
            elif isinstance(child, (nnx.Module, list, tuple, dict)):
                visit(child, path + (name,))

    visit(model, ())
    return slots


def _renamer(rename: Optional[Rename]) -> Callable[[str], Optional[str]]:
    if rename is None:
        return lambda key: key
    if callable(rename):
        return rename
    pairs = [(re.compile(p), r) for p, r in (rename.items() if isinstance(rename, Mapping) else rename)]

    def apply(key: str) -> Optional[str]:
        for pattern, replacement in pairs:
            if pattern.search(key):
                if replacement is None:
                    return None
                key = pattern.sub(replacement, key)
        return key

    return apply


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


def _described(model: nnx.Module) -> str:
    if isinstance(model, RecurrentBase):
        return describe(model.structure)
    return repr(model) if isinstance(model, CellBase) else f"the {type(model).__name__} model"


def load_torch_state_dict(module: nnx.Module, state_dict: Mapping[str, Any], *,
                          prefix: str = "", rename: Optional[Rename] = None) -> nnx.Module:
    """Copy a torch ``state_dict`` into ``module`` in place and return ``module``.

    Args:
      module: a jaxseq layer (:class:`jaxseq.LSTM` / ``GRU`` / ``RNN``) or cell
        (:class:`jaxseq.LSTMCell` / ...), or any NNX model built from them, ``nnx.Linear``,
        ``nnx.Embed``, ``nnx.LayerNorm`` and custom modules (keys as in the module docs).
      state_dict: ``{torch key: tensor or array}``, e.g. ``torch_model.state_dict()``.
      prefix: read only keys starting with ``prefix`` (e.g. ``"encoder.lstm."`` for a submodule of a
        larger torch model), with the prefix stripped; other keys are ignored.
      rename: maps torch keys (after ``prefix``) to jaxseq keys, or drops them (see :data:`Rename`):
        e.g. ``[(r"\\.module\\.", "."), (r"_raw$", "")]`` for AWD-LSTM's ``WeightDrop`` names,
        ``{r"^decoder\\.weight$": None}`` for a decoder tied to the embedding.

    Raises:
      ValueError: keys on either side without a counterpart (all of them listed, with shapes), or a
        shape mismatch (naming the key and both shapes).
      TypeError: ``state_dict`` is not a mapping, a value is not floating-point, or a Flax layer of
        the model has no torch mapping.

    Nothing is written unless every entry checks out.

    >>> import numpy as np
    >>> from flax import nnx
    >>> from jaxseq import GRU
    >>> gru = GRU(2, 3, rngs=nnx.Rngs(0))
    >>> sd = {k: np.zeros_like(v) for k, v in torch_state_dict(gru).items()}
    >>> float(load_torch_state_dict(gru, sd).weight_hh_l0[...].sum())
    0.0
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an NNX module (a jaxseq layer or cell, or a model built "
                        f"from them), got {type(module).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping {{torch name: tensor}}, got "
                        f"{type(state_dict).__name__}")
    slots = _slots(module)
    renamer = _renamer(rename)
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        new = renamer(key[len(prefix):])
        if new is not None:
            arrays[new] = _to_numpy(prefix + key[len(prefix):], value)
    expected = {k: tuple(s.param.shape[::-1] if s.transpose else s.param.shape)
                for k, s in slots.items()}
    what = f"state_dict{f' (prefix {prefix!r})' if prefix else ''}"
    check_shapes(expected, {k: a.shape for k, a in arrays.items()}, what, _described(module))
    for key, slot in slots.items():
        value = arrays[key].T if slot.transpose else arrays[key]
        slot.param[...] = jnp.asarray(value, dtype=slot.param.dtype)
    return module


def torch_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """``{torch key: numpy array}`` of every parameter of ``module``: the reverse of
    :func:`load_torch_state_dict` (same keys; ``nnx.Linear`` kernels transposed back).

    The arrays are writable copies (``torch.from_numpy`` accepts them without a warning, and writing
    to them does not touch ``module``). For a jaxseq layer or cell the keys come in torch's
    ``state_dict`` order. Load it into torch with
    ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`` (for bfloat16, convert
    with ``torch.from_numpy(v.astype(np.float32)).bfloat16()``); a tied torch weight (e.g. a decoder
    sharing the embedding) is one parameter here, so add its second key before a strict load.

    >>> from flax import nnx
    >>> from jaxseq import LSTM
    >>> sorted(torch_state_dict(LSTM(2, 3, bias=False, rngs=nnx.Rngs(0))))
    ['weight_hh_l0', 'weight_ih_l0']
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be an NNX module, got {type(module).__name__}")
    out = {}
    for key, slot in _slots(module).items():
        value = np.array(slot.param[...])
        out[key] = np.ascontiguousarray(value.T) if slot.transpose else value
    return out
