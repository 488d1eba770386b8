"""Flax NNX twins of ``torch.nn.LSTMCell``, ``torch.nn.GRUCell`` and ``torch.nn.RNNCell``.

One time step, for the loops torch users write by hand (attention decoders, beam search, custom
recurrences). Thin modules over :func:`jaxseq.functional.cell_step`, which shares the gate
equations (:mod:`jaxseq.gates`) and the bias folding of the layers, so a cell and a one-layer,
one-step :class:`jaxseq.LSTM` with the same weights compute the same function.

Parameters have torch's names and shapes: ``weight_ih [G, I]``, ``weight_hh [G, H]``,
``bias_ih [G]``, ``bias_hh [G]`` (``G`` = 4H, 3H, H), so ``jaxseq.load_torch_state_dict`` /
``jaxseq.torch_state_dict`` exchange them with a torch cell's ``state_dict`` unchanged.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseq import functional
from jaxseq import init as initializers
from jaxseq.layout import Structure, cell_param_shapes
from jaxseq.torch_attributes import StructureAttributes
from jaxseq.validation import check_floating, check_size, rejects_torch


class CellBase(StructureAttributes, nnx.Module):
    """Shared implementation of :class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell`.

    Extra keyword arguments (beyond torch's):
      param_dtype: dtype of the parameters, which is also the compute dtype (default float32).
      init: a name in :data:`jaxseq.init.INITIALIZERS` (``"torch_default"``, the default: every
        parameter ``U(-1/sqrt(H), 1/sqrt(H))`` as torch; or ``"recommended"``) or a callable with
        the signature of :func:`jaxseq.init.torch_default`.

    torch's attributes, read-only: ``input_size``, ``hidden_size``, ``bias`` (and ``nonlinearity``
    on :class:`RNNCell`); ``mode`` is the gate kind, as on the layers.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, *,
                 rngs: nnx.Rngs, param_dtype: Any = jnp.float32,
                 init: str | initializers.Initializer = "torch_default"):
        input_size = check_size(input_size, "input_size")
        hidden_size = check_size(hidden_size, "hidden_size")
        check_floating(param_dtype, "param_dtype")
        self.structure = Structure(mode, input_size, hidden_size, 1, bool(bias), False, 0)
        values = initializers.initialize(init, rngs.params(), self.structure, param_dtype)
        for name in self.param_shapes():
            setattr(self, name, nnx.Param(values[f"{name}_l0"]))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch parameter names and shapes of this cell, in ``state_dict`` order."""
        return cell_param_shapes(self.mode, self.input_size, self.hidden_size, self.bias)

    def param_dict(self) -> dict[str, jax.Array]:
        """``{torch name: current value}`` (the ``params`` of :func:`jaxseq.functional.cell_step`)."""
        return {name: getattr(self, name)[...] for name in self.param_shapes()}

    @rejects_torch
    def __call__(self, x: jax.Array, hx: Any = None) -> Any:
        """One step: ``x [B, I]`` (or unbatched ``[I]``), ``hx`` as torch; see the subclasses."""
        return functional.cell_step(self.mode, self.param_dict(), x, hx)

    def __repr__(self) -> str:
        cls = {"LSTM": "LSTMCell", "GRU": "GRUCell"}.get(self.mode, "RNNCell")
        extra = [] if self.bias else ["bias=False"]
        extra += ["nonlinearity='relu'"] if self.mode == "RNN_RELU" else []
        return f"{cls}({', '.join([str(self.input_size), str(self.hidden_size)] + extra)})"


class LSTMCell(CellBase):
    """Twin of ``torch.nn.LSTMCell``: ``h_1, c_1 = cell(x, hx=None)``.

    ``x [B, I]`` or unbatched ``[I]``; ``hx = (h_0, c_0)``, each ``[B, H]`` (``[H]``), zeros when
    ``None``; gates ``i, f, g, o`` as torch.

    >>> cell = LSTMCell(3, 4, rngs=nnx.Rngs(0))
    >>> h, c = cell(jnp.ones((2, 3)))
    >>> h.shape, c.shape, cell.weight_ih.shape
    ((2, 4), (2, 4), (16, 3))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, rngs: nnx.Rngs,
                 **extras: Any):
        super().__init__("LSTM", input_size, hidden_size, bias, rngs=rngs, **extras)


class GRUCell(CellBase):
    """Twin of ``torch.nn.GRUCell`` (gates ``r, z, n``, ``b_hn`` inside ``r * (W_hn h + b_hn)``):
    ``h_1 = cell(x, hx=None)`` with ``x [B, I]`` (or ``[I]``), ``hx [B, H]`` (or ``[H]``).

    >>> GRUCell(3, 4, rngs=nnx.Rngs(0))(jnp.ones(3)).shape     # unbatched
    (4,)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, rngs: nnx.Rngs,
                 **extras: Any):
        super().__init__("GRU", input_size, hidden_size, bias, rngs=rngs, **extras)


class RNNCell(CellBase):
    """Twin of ``torch.nn.RNNCell`` (Elman, ``nonlinearity`` ``"tanh"`` or ``"relu"``):
    ``h_1 = cell(x, hx=None)``.

    >>> RNNCell(3, 4, nonlinearity="relu", rngs=nnx.Rngs(0))
    RNNCell(3, 4, nonlinearity='relu')
    """

    TORCH_ATTRIBUTES = (*CellBase.TORCH_ATTRIBUTES, "nonlinearity")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", *, rngs: nnx.Rngs, **extras: Any):
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(modes[nonlinearity], input_size, hidden_size, bias, rngs=rngs, **extras)

    @property
    def nonlinearity(self) -> str:
        return "relu" if self.mode == "RNN_RELU" else "tanh"
