"""torch twins of jaxseq's dropouts, every one taking an explicit mask so both sides can share it.

* :class:`LockedDropout`: AWD-LSTM's locked dropout (mask ``[1, B, F]``, or ``[B, 1, F]`` batch-first).
* :func:`embedded_dropout`: AWD-LSTM's embedding dropout (mask ``[V, 1]`` on the table).
* :func:`run_packed_with_dropout`: torch's own inter-layer ``dropout``, made explicit: each layer runs
  as a packed single-layer copy of the module (sharing its parameters) and its padded output is
  multiplied by the given mask before re-packing.
* :func:`run_loop`: an explicit time-step loop over the padded batch using the module's own
  parameters and torch's gate formulas, with optional state masks on ``h_{t-1}`` before ``W_hh``
  (variational recurrent dropout), ``W_hh`` masks (weight drop) and inter-layer masks. With no mask
  it equals :func:`torch_ref.packed.run_packed`, which the parity suite checks.

Masks follow :func:`jaxseq.functional.recurrent`: already scaled by ``1/(1-p)``; ``dropout_masks``
(``L-1`` of them) broadcast to a layer's output ``[T, B, D*H_out]`` (``[B, T, ·]`` if
``rnn.batch_first``); ``state_masks`` (``L``) to ``[D, B, H_out]``; ``weight_hh_masks`` (``L``) to
``[D, G, H_out]``. ``None`` (the whole list or an entry) means no mask there.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from torch_ref.packed import run_packed

Masks = Optional[Sequence[Optional[torch.Tensor]]]


class LockedDropout(nn.Module):
    """One dropout mask per sequence, shared over time (AWD-LSTM), with an optional explicit mask.

    ``forward(x, mask=None)``: ``x * mask`` when a mask is given (any mode); otherwise in training a
    fresh ``bernoulli(1-p)/(1-p)`` mask of shape ``[1, B, F]`` (``[B, 1, F]`` with ``batch_first``),
    zeros when ``p == 1``; identity in ``eval()`` or with ``p == 0``.

    >>> drop = LockedDropout(0.5).train()
    >>> y = drop(torch.ones(4, 2, 3))
    >>> bool((y == y[0]).all())
    True
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.batch_first = p, batch_first

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None:
            return x * mask
        if not self.training or self.p == 0:
            return x
        t_axis = 1 if self.batch_first else 0
        shape = x.shape[:t_axis] + (1,) + x.shape[t_axis + 1:]
        if self.p == 1:
            return x * x.new_zeros(shape)
        return x * (x.new_empty(shape).bernoulli_(1 - self.p) / (1 - self.p))


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, dropout: float = 0.1,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """AWD-LSTM's ``embedded_dropout``: look ``words`` up in ``embed.weight * mask`` (mask ``[V, 1]``).

    Without ``mask``, one is drawn: ``bernoulli(1 - dropout) / (1 - dropout)`` per row (zeros when
    ``dropout == 1``; no mask when ``dropout == 0``). Like the original, it does not look at
    ``embed.training``: pass ``dropout=0`` in evaluation.

    >>> emb = nn.Embedding(5, 2)
    >>> out = embedded_dropout(emb, torch.tensor([[0, 1]]), mask=torch.zeros(5, 1))
    >>> out.shape, bool((out == 0).all())
    (torch.Size([1, 2, 2]), True)
    """
    weight = embed.weight
    if mask is None and dropout:
        rows = weight.new_empty((weight.shape[0], 1))
        mask = rows.zero_() if dropout == 1 else rows.bernoulli_(1 - dropout) / (1 - dropout)
    if mask is not None:
        weight = weight * mask.reshape(-1, 1)
    return F.embedding(words, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse)


# --- structure helpers ----------------------------------------------------------------------------
def _directions(rnn: nn.RNNBase) -> int:
    return 2 if rnn.bidirectional else 1


def _layer_params(rnn: nn.RNNBase, layer: int, direction: int) -> dict[str, Optional[torch.Tensor]]:
    suffix = "_reverse" if direction else ""
    return {kind: getattr(rnn, f"{kind}_l{layer}{suffix}", None)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}


def _zero_state(rnn: nn.RNNBase, batch: int, like: torch.Tensor) -> Any:
    rows = _directions(rnn) * rnn.num_layers
    h0 = like.new_zeros(rows, batch, rnn.proj_size or rnn.hidden_size)
    return (h0, like.new_zeros(rows, batch, rnn.hidden_size)) if rnn.mode == "LSTM" else h0


def _entry(masks: Masks, index: int, count: int, what: str) -> Optional[torch.Tensor]:
    if masks is None:
        return None
    if len(masks) != count:
        raise ValueError(f"{what}: expected {count} masks, got {len(masks)}")
    return masks[index]


def _time_major(a: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return a.transpose(0, 1) if batch_first and a is not None and a.dim() == 3 else a


# --- inter-layer dropout through torch's own packed path ---------------------------------------
class _Packed(nn.Module):
    """Holds a single-layer module so ``functional_call`` can run it packed with borrowed weights."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, lengths: Any, hx: Any) -> tuple[torch.Tensor, Any]:
        return run_packed(self.rnn, x, lengths, hx)


def _single_layer(rnn: nn.RNNBase, layer: int) -> _Packed:
    in_size = rnn.input_size if layer == 0 else _directions(rnn) * (rnn.proj_size or rnn.hidden_size)
    kwargs: dict[str, Any] = dict(bias=rnn.bias, batch_first=rnn.batch_first,
                                  bidirectional=rnn.bidirectional)
    if isinstance(rnn, nn.LSTM):
        kwargs["proj_size"] = rnn.proj_size
    if isinstance(rnn, nn.RNN):
        kwargs["nonlinearity"] = rnn.nonlinearity
    ref = rnn.weight_ih_l0
    cls: Any = type(rnn)   # nn.LSTM / nn.GRU / nn.RNN: (input_size, hidden_size, **kwargs)
    return _Packed(cls(in_size, rnn.hidden_size, **kwargs, dtype=ref.dtype, device=ref.device))


def run_packed_with_dropout(rnn: nn.RNNBase, x: torch.Tensor, lengths: Any, hx: Any = None,
                            dropout_masks: Masks = None) -> tuple[torch.Tensor, Any]:
    """torch's packed stack, layer by layer, with explicit inter-layer dropout masks.

    Layer ``k`` runs as a packed single-layer module whose parameters are ``rnn``'s own layer-``k``
    parameters (through ``torch.func.functional_call``, so gradients reach ``rnn``); its padded output
    is multiplied by ``dropout_masks[k]`` and re-packed for layer ``k+1``. This is what ``rnn`` does
    in training mode with ``dropout=p``, with the mask made explicit (torch drops on the packed data,
    i.e. only valid positions: padded positions of the mask do not matter). ``rnn.dropout`` itself is
    not applied.

    Args:
      rnn: ``nn.LSTM`` / ``GRU`` / ``RNN``; ``x [T, B, I]`` (``[B, T, I]`` if ``rnn.batch_first``).
      lengths: ``[B]`` in ``[1, T]``; hx: as for ``rnn``; dropout_masks: ``L-1`` masks or ``None``.

    Returns:
      ``(output, state)`` as :func:`torch_ref.packed.run_packed`.

    >>> lstm = nn.LSTM(3, 4, num_layers=2)
    >>> x, lengths = torch.randn(5, 2, 3), [5, 2]
    >>> out, _ = run_packed_with_dropout(lstm, x, lengths, dropout_masks=[torch.ones(5, 2, 4)])
    >>> bool(torch.allclose(out, run_packed(lstm, x, lengths)[0], atol=1e-6))
    True
    """
    D, L = _directions(rnn), rnn.num_layers
    batch = x.shape[0 if rnn.batch_first else 1]
    state = _zero_state(rnn, batch, x) if hx is None else hx
    states = list(state) if rnn.mode == "LSTM" else [state]
    finals, layer_in = [], x
    for layer in range(L):
        borrowed = {f"rnn.{name}_l0{'_reverse' if d else ''}": p
                    for d in range(D) for name, p in _layer_params(rnn, layer, d).items()
                    if p is not None}
        h = [s[layer * D:(layer + 1) * D] for s in states]
        layer_in, st = functional_call(_single_layer(rnn, layer), borrowed,
                                       (layer_in, lengths, tuple(h) if rnn.mode == "LSTM" else h[0]))
        finals.append(list(st) if rnn.mode == "LSTM" else [st])
        mask = _entry(dropout_masks, layer, L - 1, "dropout_masks") if layer < L - 1 else None
        if mask is not None:
            layer_in = layer_in * mask
    h_n = [torch.cat([f[i] for f in finals]) for i in range(len(states))]
    return layer_in, (tuple(h_n) if rnn.mode == "LSTM" else h_n[0])


# --- explicit time-step loop ------------------------------------------------------------------------
Cell = Callable[[torch.Tensor, torch.Tensor, tuple, dict], tuple]


def _lstm_cell(x: torch.Tensor, h_rec: torch.Tensor, carry: tuple, w: dict) -> tuple:
    gates = F.linear(x, w["weight_ih"], w["bias_ih"]) + F.linear(h_rec, w["weight_hh"], w["bias_hh"])
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * carry[1] + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w["weight_hr"] is None else F.linear(h, w["weight_hr"])), c


def _gru_cell(x: torch.Tensor, h_rec: torch.Tensor, carry: tuple, w: dict) -> tuple:
    x_r, x_z, x_n = F.linear(x, w["weight_ih"], w["bias_ih"]).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h_rec, w["weight_hh"], w["bias_hh"]).chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * carry[0],)


def _elman_cell(activation: Callable[[torch.Tensor], torch.Tensor]) -> Cell:
    def cell(x: torch.Tensor, h_rec: torch.Tensor, carry: tuple, w: dict) -> tuple:
        return (activation(F.linear(x, w["weight_ih"], w["bias_ih"])
                           + F.linear(h_rec, w["weight_hh"], w["bias_hh"])),)
    return cell


CELLS: dict[str, Cell] = {"LSTM": _lstm_cell, "GRU": _gru_cell, "RNN_TANH": _elman_cell(torch.tanh),
                          "RNN_RELU": _elman_cell(torch.relu)}


def run_loop(rnn: nn.RNNBase, x: torch.Tensor, lengths: Any, hx: Any = None, *,
             dropout_masks: Masks = None, state_masks: Masks = None,
             weight_hh_masks: Masks = None) -> tuple[torch.Tensor, Any]:
    """Explicit-loop reference of ``rnn`` on a padded batch, with optional dropout masks.

    Each layer and direction steps through time one token at a time with torch's gate formulas and
    ``rnn``'s own parameters (gradients reach them). Row ``b`` only advances while ``t < lengths[b]``:
    its state is frozen afterwards (forward) or before (reverse, which reads ``lengths[b]-1 .. 0``),
    and its output is 0 at padded steps. Padded input values are replaced by 0 first, so NaN there
    never matters. ``state_masks[k][d]`` multiplies ``h_{t-1}`` where it enters ``W_hh`` (the carried
    state is not masked); ``weight_hh_masks[k][d]`` multiplies ``W_hh`` for the whole call;
    ``dropout_masks[k]`` multiplies layer ``k``'s output. ``rnn.dropout`` itself is not applied.
    Zero lengths are allowed (the row returns ``hx``), unlike torch's packed path.

    Args:
      rnn: ``nn.LSTM`` / ``GRU`` / ``RNN``; ``x [T, B, I]`` (``[B, T, I]`` if ``rnn.batch_first``).
      lengths: ``[B]`` ints in ``[0, T]``; hx: as for ``rnn`` (zeros if ``None``).
      dropout_masks, state_masks, weight_hh_masks: see the module docstring.

    Returns:
      ``(output, (h_n, c_n))`` for LSTM, ``(output, h_n)`` otherwise, as ``run_packed``.

    >>> gru = nn.GRU(3, 4, bidirectional=True)
    >>> x, lengths = torch.randn(5, 2, 3), [5, 2]
    >>> out, h = run_loop(gru, x, lengths)
    >>> ref, h_ref = run_packed(gru, x, lengths)
    >>> bool(torch.allclose(out, ref, atol=1e-6) and torch.allclose(h, h_ref, atol=1e-6))
    True
    """
    cell, D, L = CELLS[rnn.mode], _directions(rnn), rnn.num_layers
    x = _time_major(x, rnn.batch_first)
    T, B = x.shape[:2]
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=x.device)
    if lengths.shape != (B,) or bool((lengths < 0).any()) or bool((lengths > T).any()):
        raise ValueError(f"lengths must be [B={B}] ints in [0, T={T}], got {lengths.tolist()}")
    valid = (torch.arange(T, device=x.device)[:, None] < lengths[None, :])[..., None]   # [T, B, 1]
    state = _zero_state(rnn, B, x) if hx is None else hx
    states = list(state) if rnn.mode == "LSTM" else [state]
    layer_in = torch.where(valid, x, torch.zeros_like(x))
    finals = []
    for layer in range(L):
        smask = _entry(state_masks, layer, L, "state_masks")
        wmask = _entry(weight_hh_masks, layer, L, "weight_hh_masks")
        outputs = []
        for d in range(D):
            w = _layer_params(rnn, layer, d)
            carry = tuple(s[layer * D + d] for s in states)
            w_hh = w["weight_hh"]
            if wmask is not None and w_hh is not None:
                w["weight_hh"] = w_hh * torch.broadcast_to(wmask, (D,) + w_hh.shape)[d]
            s_d = None if smask is None else torch.broadcast_to(smask, (D,) + carry[0].shape)[d]
            out: list[torch.Tensor] = [torch.empty(0)] * T
            for t in (range(T) if d == 0 else reversed(range(T))):
                new = cell(layer_in[t], carry[0] if s_d is None else carry[0] * s_d, carry, w)
                carry = tuple(torch.where(valid[t], n, o) for n, o in zip(new, carry))
                out[t] = torch.where(valid[t], new[0], torch.zeros_like(new[0]))
            outputs.append(torch.stack(out))
            finals.append(carry)
        layer_in = torch.cat(outputs, dim=-1)
        mask = _entry(dropout_masks, layer, L - 1, "dropout_masks") if layer < L - 1 else None
        if mask is not None:
            layer_in = layer_in * _time_major(mask, rnn.batch_first)
    output = _time_major(layer_in, rnn.batch_first)
    h_n = [torch.stack([f[i] for f in finals]) for i in range(len(states))]
    return output, (tuple(h_n) if rnn.mode == "LSTM" else h_n[0])
