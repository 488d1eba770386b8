"""Flax NNX twins of ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN``.

Thin modules: they own torch-named parameters (``module.weight_ih_l0`` ... as ``nnx.Param``) and a
dropout RNG stream, and call :func:`jaxseq.functional.recurrent`. See that function for the exact
semantics (packed-sequence parity, zero padding, ``h_n`` layout, zero-length rows).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from

from jaxseq import functional, hooks
from jaxseq import init as initializers
from jaxseq.dropout import _key_from, check_rate, keep_mask
from jaxseq.fused import IMPLS, cudnn_problem
from jaxseq.layout import Structure, describe, param_name, param_shapes
from jaxseq.scan import Staircase, scan_options
from jaxseq.segments import infer_max_segments
from jaxseq.torch_attributes import StructureAttributes
from jaxseq.validation import check_floating, check_size, rejects_torch


class RecurrentBase(StructureAttributes, nnx.Module):
    """Shared implementation of :class:`LSTM`, :class:`GRU` and :class:`RNN` (use those).

    Extra keyword arguments (beyond torch's):
      recurrent_dropout: rate of a variational mask on ``h_{t-1}`` where it enters ``W_hh`` (one mask
        per sequence, layer and direction, reused at every step; Gal & Ghahramani). Training only.
      weight_drop: DropConnect on ``W_hh`` (one mask per call, shared by all steps and rows;
        AWD-LSTM's ``WeightDrop``), training only: a rate for every ``W_hh`` of every layer and
        direction, or ``{torch name: rate}`` for chosen ones, e.g. ``{"weight_hh_l0": 0.5}`` as
        torch's ``WeightDrop(lstm, ["weight_hh_l0"], 0.5)`` (the others are not dropped).
      weight_drop_mode: ``"element"`` (default: every entry of ``W_hh`` on its own) or ``"row"``
        (whole rows of ``W_hh``, a mask ``[G, 1]``: WeightDrop's ``variational=True``, without its
        bug of also dropping in evaluation).
      param_dtype: dtype of the parameters, which is also the compute dtype (default float32).
      deterministic: initial mode; ``True`` (evaluation: no dropout) by default. ``module.train()`` /
        ``module.eval()`` switch it, as for ``nnx.Dropout``.
      unroll: ``lax.scan`` unroll factor.
      time_chunks: ``1`` (default) runs the plain masked scan; ``k > 1`` asks for a staircase of at
        most ``k`` chunks when ``lengths`` are concrete (one compilation per length pattern; see
        :func:`jaxseq.functional.recurrent`). A call may override it (e.g. with a
        :class:`jaxseq.scan.Staircase` for traced lengths).
      compute_dtype: ``None`` (default) or the matmul operand dtype, e.g. ``jnp.bfloat16`` for mixed
        precision with float32 parameters and states (see :func:`jaxseq.functional.recurrent`).
      forward_mode: ``True`` makes forward-mode AD work (``jax.jvp``, ``jacfwd``, ``hessian``...)
        at some cost in reverse mode; default ``False``, the fastest training step (see
        :func:`jaxseq.functional.recurrent`).
      input_projection: ``"in_loop"``, ``"hoisted"`` or ``None`` (the backend's default): where
        ``x_t @ W_ih`` is computed (see :func:`jaxseq.functional.recurrent`).
      impl: ``"scan"`` (default), ``"cudnn"`` or ``"auto"``: the masked scan or the fused cuDNN
        LSTM (see :func:`jaxseq.functional.recurrent` and :mod:`jaxseq.fused`); GRU and RNN take
        ``"scan"`` and ``"auto"`` only. ``"cudnn"`` is checked against the module's static
        options here (cell, ``proj_size``, dtypes, ``recurrent_dropout``, ``forward_mode``,
        ``remat``) and against each call's (``segment_ids``, backend) when called.
      remat: ``None`` (default: the backward pass keeps every step's activations) or an int ``k``:
        it keeps only the state every ``k`` steps and recomputes each chunk of ``k`` steps when it
        needs it, so the saved activations grow as ``T/k + k`` instead of ``T``, for about one more
        forward loop. Same results and gradients (up to float rounding); ``k`` near ``sqrt(T)``
        saves the most (see :func:`jaxseq.functional.recurrent`).
      init: parameter initializer, a name in :data:`jaxseq.init.INITIALIZERS` (``"torch_default"``,
        the default, or ``"recommended"``: orthogonal gate blocks, zero biases, LSTM forget bias 1) or
        a callable with the signature of :func:`jaxseq.init.torch_default`.

    torch's attributes, read-only and equal to torch's for the same arguments: ``mode``,
    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``,
    ``bidirectional``, ``proj_size`` (and ``nonlinearity`` on :class:`RNN`).
    """

    TORCH_ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
        "bidirectional", "proj_size")

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *, rngs: nnx.Rngs,
                 recurrent_dropout: float = 0.0,
                 weight_drop: float | Mapping[str, float] = 0.0, weight_drop_mode: str = "element",
                 param_dtype: jnp.dtype = jnp.float32, deterministic: bool = True, unroll: int = 1,
                 time_chunks: int = functional.DEFAULT_TIME_CHUNKS, compute_dtype: Any = None,
                 forward_mode: bool = False, input_projection: Optional[str] = None,
                 impl: str = "scan", remat: Optional[int] = None,
                 init: str | initializers.Initializer = "torch_default"):
        input_size = check_size(input_size, "input_size")
        hidden_size = check_size(hidden_size, "hidden_size")
        num_layers = check_size(num_layers, "num_layers")
        proj_size = check_size(proj_size, "proj_size", minimum=0)
        options = scan_options(unroll, compute_dtype, forward_mode, input_projection,  # validates
                               remat)
        time_chunks = check_size(time_chunks, "time_chunks")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f"and hidden_size={hidden_size}")
        check_floating(param_dtype, "param_dtype")
        self._dropout = check_rate(dropout, "dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, "recurrent_dropout")
        if weight_drop_mode not in ("element", "row"):
            raise ValueError(f"weight_drop_mode must be 'element' or 'row', got {weight_drop_mode!r}")
        self.weight_drop_mode = weight_drop_mode
        if self.dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        self.structure = Structure(mode, input_size, hidden_size, num_layers, bool(bias),
                                   bool(bidirectional), proj_size)
        self.weight_drop = _weight_drop_rates(weight_drop, self.structure)
        self._batch_first = bool(batch_first)
        self.deterministic = deterministic
        self.unroll = unroll
        self.time_chunks = time_chunks
        self.compute_dtype = compute_dtype
        self.forward_mode = bool(forward_mode)
        self.input_projection = input_projection
        self.remat = options.remat
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl == "cudnn":
            problem = cudnn_problem(self.structure, param_dtype, options, packed=False,
                                    state_masks=self.recurrent_dropout > 0, backend=False)
            if problem is not None:
                raise ValueError(f"impl='cudnn' cannot serve {describe(self.structure)}: {problem}. "
                                 "Use impl='scan' or impl='auto'")
        self.impl = impl
        values = initializers.initialize(init, rngs.params(), self.structure, param_dtype)
        for name, value in values.items():
            setattr(self, name, nnx.Param(value))
        uses_rng = self._max_rate() > 0
        self.rngs = rngs["dropout"].fork() if uses_rng else nnx.data(None)

    def _max_rate(self) -> float:
        return max(self.dropout, self.recurrent_dropout, *self.weight_drop.values())

    # -- torch-facing views ------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.structure.num_layers

    @property
    def bidirectional(self) -> bool:
        return self.structure.bidirectional

    @property
    def proj_size(self) -> int:
        return self.structure.proj_size

    @property
    def batch_first(self) -> bool:
        return self._batch_first

    @property
    def dropout(self) -> float:
        """torch's inter-layer dropout rate (a float, as torch stores it)."""
        return self._dropout

    def param_names(self) -> tuple[str, ...]:
        """Torch parameter names of this module, in ``state_dict`` order."""
        return tuple(param_shapes(self.structure))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch parameter names and shapes of this module, in ``state_dict`` order."""
        return param_shapes(self.structure)

    def param_dict(self) -> dict[str, jax.Array]:
        """``{torch name: current value}`` (the ``params`` argument of :mod:`jaxseq.functional`)."""
        return {name: getattr(self, name)[...] for name in self.param_names()}

    def __repr__(self) -> str:  # torch-like, e.g. LSTM(8, 16, num_layers=2, bidirectional=True)
        return describe(self.structure)

    # -- dropout masks -----------------------------------------------------------------------
    def _draw_masks(self, x: jax.Array, key: jax.Array,
                    max_segments: Optional[int] = None) -> dict[str, Optional[list]]:
        s = self.structure
        out_shape = (x.shape[:-1] if x.ndim == 3 else (x.shape[0],)) + (
            s.num_directions * s.output_size,)
        spec = _MaskSpec(s, jnp.dtype(self.param_dict()["weight_ih_l0"].dtype), self.dropout,
                         self.recurrent_dropout,
                         tuple(self.weight_drop[param_name("weight_hh", layer, d)]
                               for layer in range(s.num_layers) for d in range(s.num_directions)),
                         self.weight_drop_mode == "row", out_shape,
                         x.shape[0 if self.batch_first else 1] if x.ndim == 3 else 1, max_segments)
        # an observer (compare_models' dropout replay) must see every draw: not the cached compile
        draw = _draw_masks.__wrapped__ if hooks.active() else _draw_masks  # type: ignore[attr-defined]
        return draw(key, spec=spec)

    @rejects_torch
    def __call__(self, x: jax.Array, lengths: Optional[jax.Array] = None, hx: Any = None, *,
                 segment_ids: Optional[jax.Array] = None, max_segments: Optional[int] = None,
                 deterministic: Optional[bool] = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
                 dropout_masks: Optional[Sequence[jax.Array]] = None,
                 state_masks: Optional[Sequence[jax.Array]] = None,
                 weight_hh_masks: Optional[Sequence[jax.Array]] = None,
                 time_chunks: int | Staircase | None = None) -> tuple[jax.Array, Any]:
        """Run the stack. ``x [T, B, I]`` (``[B, T, I]`` if ``batch_first``), ``lengths [B]``, ``hx``.

        Returns ``(output, h_n)`` (GRU/RNN) or ``(output, (h_n, c_n))`` (LSTM), as torch on a
        ``PackedSequence`` after ``pad_packed_sequence(total_length=T)``.

        Packed rows: ``segment_ids`` (in the layout of ``x``'s first two axes) and a static
        ``max_segments=S`` run several independent sequences per row instead of ``lengths``;
        ``h_n`` / ``c_n`` and ``hx`` are then per segment, ``[D*L, B, S, ·]`` (see
        :func:`jaxseq.functional.recurrent`), and recurrent dropout draws one mask per segment.

        In training mode (``deterministic=False``) masks are drawn from ``rngs`` (a key, stream or
        ``Rngs``; default: the module's own ``dropout`` stream) for every dropout with a positive rate.
        Explicit ``dropout_masks`` / ``state_masks`` / ``weight_hh_masks`` (see
        :func:`jaxseq.functional.recurrent`) are always applied as given and replace drawn ones.
        ``time_chunks`` overrides the module's setting for this call.
        """
        explicit = {"dropout_masks": dropout_masks, "state_masks": state_masks,
                    "weight_hh_masks": weight_hh_masks}
        masks: dict[str, Any] = {}
        deterministic = first_from(deterministic, self.deterministic, error_msg="deterministic not set")
        if not deterministic and self._max_rate() > 0:
            source = first_from(rngs, self.rngs,
                                error_msg=f"{self!r} in training mode needs `rngs` to draw "
                                          "dropout masks")
            functional._check_input(self.structure, x, self.batch_first)  # before drawing masks
            if segment_ids is not None and max_segments is None:
                max_segments = infer_max_segments(segment_ids)
            masks = self._draw_masks(x, _key_from(source),
                                     None if segment_ids is None else max_segments)
        masks.update({k: v for k, v in explicit.items() if v is not None})
        return functional.recurrent(self.mode, self.param_dict(), x, lengths, hx,
                                    segment_ids=segment_ids, max_segments=max_segments,
                                    batch_first=self.batch_first, unroll=self.unroll,
                                    time_chunks=self.time_chunks if time_chunks is None
                                    else time_chunks,
                                    compute_dtype=self.compute_dtype,
                                    forward_mode=self.forward_mode,
                                    input_projection=self.input_projection, impl=self.impl,
                                    remat=self.remat, **masks)


class _MaskSpec(NamedTuple):
    """What :func:`_draw_masks` draws (static: the jitted draw's cache key)."""

    structure: Structure
    dtype: Any
    dropout: float
    recurrent_dropout: float
    weight_drop: tuple[float, ...]     # per (layer, direction), in that order
    row_mode: bool                     # weight_drop_mode == "row"
    out_shape: tuple[int, ...]         # a layer's output, in the caller's layout
    batch: int
    max_segments: Optional[int]


@partial(jax.jit, static_argnames=("spec",))
def _draw_masks(key: jax.Array, *, spec: _MaskSpec) -> dict[str, list]:
    """The training-mode dropout masks of one call (``dropout_masks`` / ``state_masks`` /
    ``weight_hh_masks`` of :func:`jaxseq.functional.recurrent`), in one compiled draw; drawn in
    the order torch draws them (weight drop before the layers run, then between layers)."""
    s = spec.structure
    D, L, H_out = s.num_directions, s.num_layers, s.output_size
    k_drop, k_state, k_weight = jax.random.split(key, 3)
    masks: dict[str, list] = {}
    if max(spec.weight_drop) > 0:    # first: torch's WeightDrop draws before the layer runs
        shape = (s.gates * s.hidden_size, 1 if spec.row_mode else H_out)
        keys = jax.random.split(k_weight, L * D)
        masks["weight_hh_masks"] = [
            jnp.stack([keep_mask(keys[layer * D + d], spec.weight_drop[layer * D + d], shape,
                                 spec.dtype) for d in range(D)])
            for layer in range(L)]
    if spec.dropout > 0 and L > 1:
        masks["dropout_masks"] = [keep_mask(k, spec.dropout, spec.out_shape, spec.dtype)
                                  for k in jax.random.split(k_drop, L - 1)]
    if spec.recurrent_dropout > 0:
        state_shape = (D, spec.batch) + (
            () if spec.max_segments is None else (spec.max_segments,)) + (H_out,)
        masks["state_masks"] = [keep_mask(k, spec.recurrent_dropout, state_shape, spec.dtype)
                                for k in jax.random.split(k_state, L)]
    return masks


def _weight_drop_rates(weight_drop: float | Mapping[str, float], s: Structure) -> dict[str, float]:
    """``{weight_hh name: rate}`` for every ``W_hh`` of ``s`` from a rate or a partial mapping."""
    names = [param_name("weight_hh", layer, d) for layer in range(s.num_layers)
             for d in range(s.num_directions)]
    if not isinstance(weight_drop, Mapping):
        rate = check_rate(weight_drop, "weight_drop")
        return dict.fromkeys(names, rate)
    unknown = sorted(set(weight_drop) - set(names))
    if unknown:
        raise ValueError(f"weight_drop names {unknown} are not recurrent weights of {describe(s)}; "
                         f"expected some of {names}")
    return {name: check_rate(weight_drop.get(name, 0.0), f"weight_drop[{name!r}]") for name in names}


class LSTM(RecurrentBase):
    """Twin of ``torch.nn.LSTM`` over padded batches with explicit ``lengths``.

    ``output, (h_n, c_n) = lstm(x, lengths=None, hx=None)`` with ``x [T, B, I]`` (``[B, T, I]`` if
    ``batch_first``), ``output [T, B, D*H_out]`` (0 at padding), ``h_n [D*L, B, H_out]``,
    ``c_n [D*L, B, H]``, ``H_out = proj_size or hidden_size``. Constructor arguments are torch's;
    extra keywords are documented on :class:`RecurrentBase`.

    >>> lstm = LSTM(3, 8, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    >>> out, (h_n, c_n) = lstm(jnp.ones((5, 2, 3)), lengths=jnp.array([5, 3]))
    >>> out.shape, h_n.shape, c_n.shape
    ((5, 2, 16), (4, 2, 8), (4, 2, 8))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, rngs: nnx.Rngs, **extras: Any):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, rngs=rngs, **extras)


class GRU(RecurrentBase):
    """Twin of ``torch.nn.GRU`` (gates ``r, z, n``, with ``b_hn`` inside ``r * (W_hn h + b_hn)``).

    ``output, h_n = gru(x, lengths=None, hx=None)``; shapes as :class:`LSTM` without ``c``.

    >>> gru = GRU(3, 4, batch_first=True, rngs=nnx.Rngs(0))
    >>> out, h_n = gru(jnp.ones((2, 5, 3)), lengths=jnp.array([5, 1]))
    >>> out.shape, h_n.shape
    ((2, 5, 4), (1, 2, 4))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 rngs: nnx.Rngs, **extras: Any):
        if extras.get("proj_size"):
            raise ValueError("proj_size is only supported by LSTM (torch.nn.GRU has no proj_size)")
        extras.pop("proj_size", None)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, rngs=rngs, **extras)


class RNN(RecurrentBase):
    """Twin of ``torch.nn.RNN`` (Elman, ``nonlinearity`` ``"tanh"`` or ``"relu"``).

    ``output, h_n = rnn(x, lengths=None, hx=None)``; shapes as :class:`GRU`.

    >>> rnn = RNN(3, 4, nonlinearity="relu", rngs=nnx.Rngs(0))
    >>> rnn(jnp.ones((5, 2, 3)))[0].shape
    (5, 2, 4)
    """

    TORCH_ATTRIBUTES = (*RecurrentBase.TORCH_ATTRIBUTES, "nonlinearity")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *, rngs: nnx.Rngs,
                 **extras: Any):
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        if extras.get("proj_size"):
            raise ValueError("proj_size is only supported by LSTM (torch.nn.RNN has no proj_size)")
        extras.pop("proj_size", None)
        super().__init__(modes[nonlinearity], input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, rngs=rngs, **extras)

    @property
    def nonlinearity(self) -> str:
        return "relu" if self.mode == "RNN_RELU" else "tanh"
