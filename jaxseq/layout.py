"""torch's parameter naming and shapes for ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``.

Parameters are kept in a flat dict keyed exactly like ``torch.nn.LSTM(...).state_dict()``:
``weight_ih_l{k}{suffix}``, ``weight_hh_l{k}{suffix}``, ``bias_ih_l{k}{suffix}``,
``bias_hh_l{k}{suffix}``
and, for an LSTM with ``proj_size > 0``, ``weight_hr_l{k}{suffix}``, with ``suffix`` ``""`` (forward) or
``"_reverse"``. Shapes (``G = gates * H``, ``H_out = proj_size or H``, ``D`` directions):

==================  ======================================================
``weight_ih_l0``    ``[G, input_size]``; later layers ``[G, D * H_out]``
``weight_hh_lk``    ``[G, H_out]``
``bias_ih_lk``      ``[G]`` (both biases absent with ``bias=False``)
``bias_hh_lk``      ``[G]``
``weight_hr_lk``    ``[proj_size, H]`` (LSTM with projection only)
==================  ======================================================
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

#: torch's ``mode`` strings and the number of gate blocks of each cell.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
DIRECTION_SUFFIXES = ("", "_reverse")


class Structure(NamedTuple):
    """Static description of a recurrent stack (everything but the parameter values)."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    bidirectional: bool
    proj_size: int

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    @property
    def output_size(self) -> int:
        """``H_out``: the size of ``h`` (``proj_size`` when projecting, else ``hidden_size``)."""
        return self.proj_size or self.hidden_size


def param_name(kind: str, layer: int, direction: int) -> str:
    """``param_name("weight_ih", 1, 1) == "weight_ih_l1_reverse"``."""
    return f"{kind}_l{layer}{DIRECTION_SUFFIXES[direction]}"


def param_shapes(s: Structure) -> dict[str, tuple[int, ...]]:
    """Torch names and shapes of every parameter, in torch's ``state_dict`` order."""
    g = s.gates * s.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(s.num_layers):
        in_size = s.input_size if layer == 0 else s.num_directions * s.output_size
        for d in range(s.num_directions):
            shapes[param_name("weight_ih", layer, d)] = (g, in_size)
            shapes[param_name("weight_hh", layer, d)] = (g, s.output_size)
            if s.bias:
                shapes[param_name("bias_ih", layer, d)] = (g,)
                shapes[param_name("bias_hh", layer, d)] = (g,)
            if s.proj_size:
                shapes[param_name("weight_hr", layer, d)] = (s.proj_size, s.hidden_size)
    return shapes


_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def infer_structure(mode: str, params: Mapping[str, object]) -> Structure:
    """Recover the :class:`Structure` of a torch-named parameter dict, and check it is complete.

    Raises:
      ValueError: unknown mode, unknown / missing keys, or shapes inconsistent with each other.
    """
    if mode not in GATES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {sorted(GATES)}")
    unknown = sorted(k for k in params if not _NAME.match(k))
    if unknown:
        raise ValueError(f"Unknown parameter names {unknown}; expected torch names like 'weight_ih_l0'")
    if "weight_ih_l0" not in params or "weight_hh_l0" not in params:
        raise ValueError("Parameters must contain 'weight_ih_l0' and 'weight_hh_l0'")
    w_ih0 = params["weight_ih_l0"]
    gates_rows = w_ih0.shape[0]  # type: ignore[attr-defined]
    if gates_rows % GATES[mode]:
        raise ValueError(f"'weight_ih_l0' has {gates_rows} rows, not a multiple of {GATES[mode]} "
                         f"gates for mode {mode}")
    layers = {int(m.group(2)) for m in map(_NAME.match, params)}  # type: ignore[union-attr]
    hidden = gates_rows // GATES[mode]
    proj = params["weight_hr_l0"].shape[0] if "weight_hr_l0" in params else 0  # type: ignore[attr-defined]
    s = Structure(mode=mode, input_size=w_ih0.shape[1], hidden_size=hidden,  # type: ignore[attr-defined]
                  num_layers=max(layers) + 1, bias="bias_ih_l0" in params,
                  bidirectional="weight_ih_l0_reverse" in params, proj_size=proj)
    check_param_shapes(s, {k: tuple(v.shape) for k, v in params.items()})  # type: ignore[attr-defined]
    return s


def check_param_shapes(s: Structure, shapes: Mapping[str, tuple[int, ...]],
                       what: str = "the params dict") -> None:
    """Raise ``ValueError`` naming every unknown, missing or mis-shaped key (with both shapes)."""
    check_shapes(param_shapes(s), shapes, what, describe(s))


def check_shapes(expected: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]],
                 what: str, described: str, hint: str = "") -> None:
    """Raise ``ValueError`` naming every unknown, missing or mis-shaped key (with both shapes).

    ``what`` (a singular noun: ``"state_dict"``) and ``described`` (``"LSTM(3, 4)"``) make the
    message: ``state_dict does not match LSTM(3, 4): missing keys ...``; a ``hint`` about the
    unmatched keys ends it.
    """
    problems = []
    missing = [k for k in expected if k not in shapes]
    unknown = [k for k in shapes if k not in expected]
    if missing:
        problems.append("missing keys " + ", ".join(f"{k!r} (expected shape {expected[k]})"
                                                    for k in missing))
    if unknown:
        problems.append("unexpected keys " + ", ".join(f"{k!r} (shape {tuple(shapes[k])})"
                                                       for k in unknown))
    for k, want in expected.items():
        if k in shapes and tuple(shapes[k]) != want:
            problems.append(f"{k!r}: expected shape {want}, got {tuple(shapes[k])}")
    if problems:
        raise ValueError(f"{what} does not match {described}: " + "; ".join(problems)
                         + (f"; {hint}" if hint and (missing or unknown) else ""))


def describe(s: Structure) -> str:
    """A torch-like constructor string, e.g. ``LSTM(8, 16, num_layers=2, bidirectional=True)``."""
    cls = {"LSTM": "LSTM", "GRU": "GRU"}.get(s.mode, "RNN")
    extra = [f"num_layers={s.num_layers}"] if s.num_layers != 1 else []
    if not s.bias:
        extra.append("bias=False")
    if s.bidirectional:
        extra.append("bidirectional=True")
    if s.proj_size:
        extra.append(f"proj_size={s.proj_size}")
    if s.mode == "RNN_RELU":
        extra.append("nonlinearity='relu'")
    return f"{cls}({', '.join([str(s.input_size), str(s.hidden_size)] + extra)})"


#: torch's parameter names of a single-step cell (``nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``).
CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
CELL_MODES = {"LSTM": "LSTMCell", "GRU": "GRUCell", "RNN_TANH": "RNNCell", "RNN_RELU": "RNNCell"}


def cell_param_shapes(mode: str, input_size: int, hidden_size: int, bias: bool = True
                      ) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a torch cell's parameters, in ``state_dict`` order.

    >>> cell_param_shapes("GRU", 3, 4)
    {'weight_ih': (12, 3), 'weight_hh': (12, 4), 'bias_ih': (12,), 'bias_hh': (12,)}
    """
    g = GATES[mode] * hidden_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (g, input_size),
                                          "weight_hh": (g, hidden_size)}
    if bias:
        shapes.update(bias_ih=(g,), bias_hh=(g,))
    return shapes


def infer_cell(mode: str, params: Mapping[str, object]) -> tuple[int, int, bool]:
    """``(input_size, hidden_size, bias)`` of a torch-named cell parameter dict; checks it.

    Raises:
      ValueError: unknown mode, unknown / missing keys, or inconsistent shapes.
    """
    if mode not in GATES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {sorted(GATES)}")
    if "weight_ih" not in params or "weight_hh" not in params:
        raise ValueError(f"cell parameters must contain 'weight_ih' and 'weight_hh' (torch "
                         f"{CELL_MODES[mode]} names {list(CELL_NAMES)}), got {sorted(params)}")
    rows, input_size = params["weight_ih"].shape  # type: ignore[attr-defined]
    hidden = rows // GATES[mode]
    bias = "bias_ih" in params or "bias_hh" in params
    expected = cell_param_shapes(mode, input_size, hidden, bias)
    described = f"{CELL_MODES[mode]}({input_size}, {hidden}{'' if bias else ', bias=False'})"
    check_shapes(expected, {k: tuple(v.shape) for k, v in params.items()},  # type: ignore[attr-defined]
                 "the params dict", described)
    return input_size, hidden, bias
