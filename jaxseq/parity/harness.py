"""Run one configuration through torch (packed) and jaxseq with identical weights; measure errors.

Shared by the pytest suite (``parity_tests/``) and the ``jaxseq-parity`` report. Both sides see the
same input,
with NaN at every padded position, the same initial state and the same output cotangents; the
torch side runs ``pack_padded_sequence(enforce_sorted=False)``. Gradients are taken with respect
to the input, the initial state(s) and every parameter (matched by torch name).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jaxseq
from jaxseq import functional
from torch_ref.packed import run_packed

TORCH_CLASSES = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN_TANH": torch.nn.RNN,
                 "RNN_RELU": torch.nn.RNN}
JAX_CLASSES = {"LSTM": jaxseq.LSTM, "GRU": jaxseq.GRU, "RNN_TANH": jaxseq.RNN, "RNN_RELU": jaxseq.RNN}
DTYPES = {"float64": (torch.float64, jnp.float64), "float32": (torch.float32, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class Config:
    mode: str = "LSTM"
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    bias: bool = True
    batch_first: bool = False
    with_hx: bool = False
    input_size: int = 3
    hidden_size: int = 5
    batch: int = 6
    time: int = 7
    zero_rows: int = 0        # how many rows get length 0 (checked against hx, not torch)
    seed: int = 0

    def label(self) -> str:
        parts = [self.mode, f"L{self.num_layers}", "bi" if self.bidirectional else "uni"]
        parts += [f"P{self.proj_size}"] if self.proj_size else []
        parts += [] if self.bias else ["nobias"]
        parts += ["bf"] if self.batch_first else []
        parts += ["hx"] if self.with_hx else []
        parts += [f"zero{self.zero_rows}"] if self.zero_rows else []
        return "-".join(parts)

    def torch_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(num_layers=self.num_layers, bias=self.bias,
                                  batch_first=self.batch_first,
                                  bidirectional=self.bidirectional)
        if self.mode == "LSTM":
            kw["proj_size"] = self.proj_size
        if self.mode.startswith("RNN"):
            kw["nonlinearity"] = self.mode[4:].lower()
        return kw


def random_lengths(rng: np.random.Generator, batch: int, time: int, zero_rows: int = 0) -> np.ndarray:
    """Unsorted lengths in ``[1, T]`` that include 1 and T, then ``zero_rows`` rows set to 0."""
    lengths = rng.integers(1, time + 1, size=batch)
    head = [time, 1][:batch]
    lengths[:len(head)] = head
    lengths[2:2 + zero_rows] = 0
    return rng.permutation(lengths)


def _time_major(a: np.ndarray, batch_first: bool) -> np.ndarray:
    return np.swapaxes(a, 0, 1) if batch_first else a


def _grad(t: torch.Tensor) -> np.ndarray:
    """A leaf tensor's gradient as numpy (it must have one after ``backward()``)."""
    assert t.grad is not None, "no gradient reached this tensor"
    return t.grad.numpy()


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def run(cfg: Config, dtype: str = "float64", *, concrete_lengths: bool = False,
        **options) -> dict[str, float]:
    """Compare one configuration; return ``{quantity: max relative error}``.

    ``options`` go to :func:`jaxseq.functional.recurrent` (e.g. ``time_chunks``, ``unroll``). The
    lengths are traced inside ``jit`` unless ``concrete_lengths`` (then they are host values, which
    enables the staircase schedule).

    Quantities: ``output``, ``h_n``, ``c_n`` (LSTM), ``grad_x``, ``grad_h0``, ``grad_c0`` (with hx),
    ``grad_<torch param name>`` for every parameter, plus ``zero_rows`` checks (0.0 when exact).
    Relative error = max |jax - torch| / max |torch| over the compared entries.
    """
    t_dtype, j_dtype = DTYPES[dtype]
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    tmod = TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs()).to(t_dtype)
    jmod = JAX_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs(),
                                 param_dtype=j_dtype, rngs=nnx.Rngs(cfg.seed))
    jaxseq.load_torch_state_dict(jmod, tmod.state_dict())

    T, B, D = cfg.time, cfg.batch, 2 if cfg.bidirectional else 1
    H_out = cfg.proj_size or cfg.hidden_size
    lengths = random_lengths(rng, B, T, cfg.zero_rows)
    x_tm = rng.standard_normal((T, B, cfg.input_size))
    x_tm[np.arange(T)[:, None] >= lengths[None, :]] = np.nan        # padding must never matter
    x = _time_major(x_tm, cfg.batch_first)
    state_shapes = [(D * cfg.num_layers, B, H_out)]
    if cfg.mode == "LSTM":
        state_shapes.append((D * cfg.num_layers, B, cfg.hidden_size))
    hx = [rng.standard_normal(s) for s in state_shapes] if cfg.with_hx else None
    cot_out = _time_major(rng.standard_normal((T, B, D * H_out)), cfg.batch_first)
    cot_states = [rng.standard_normal(s) for s in state_shapes]

    # --- jaxseq: outputs and the VJP of (output, states) with the same cotangents, one jit ----
    pack = (lambda s: tuple(s)) if cfg.mode == "LSTM" else (lambda s: s[0])
    unpack = (lambda s: list(s)) if cfg.mode == "LSTM" else (lambda s: [s])
    jx = jnp.asarray(x, j_dtype)
    jhx = None if hx is None else pack([jnp.asarray(h, j_dtype) for h in hx])
    cots = (jnp.asarray(cot_out, j_dtype), pack([jnp.asarray(c, j_dtype) for c in cot_states]))

    @jax.jit
    def forward_and_grads(params, xx, h0):
        def run_it(p, xi, hi):
            return functional.recurrent(cfg.mode, p, xi, lengths if concrete_lengths
                                        else jnp.asarray(lengths), hi, **options,
                                        batch_first=cfg.batch_first)
        result, vjp = jax.vjp(run_it, params, xx, h0)
        return result, vjp(cots)

    (j_out, j_state), j_grads = forward_and_grads(jmod.param_dict(), jx, jhx)

    # --- torch on the non-empty rows (torch rejects zero lengths) ---------------------------
    keep = np.flatnonzero(lengths > 0)
    b_axis = 0 if cfg.batch_first else 1
    tx = torch.tensor(np.take(x, keep, axis=b_axis), dtype=t_dtype, requires_grad=True)
    thx = None
    if hx is not None:
        thx = [torch.tensor(h[:, keep], dtype=t_dtype, requires_grad=True) for h in hx]
    t_out, t_state = run_packed(tmod, tx, lengths[keep], None if thx is None else pack(thx))
    t_states = unpack(t_state)
    total = (t_out * torch.tensor(np.take(cot_out, keep, axis=b_axis), dtype=t_dtype)).sum()
    for s, c in zip(t_states, cot_states):
        total = total + (s * torch.tensor(c[:, keep], dtype=t_dtype)).sum()
    tmod.zero_grad()
    total.backward()

    errors: dict[str, float] = {}
    errors["output"] = _rel_err(np.take(np.asarray(j_out), keep, axis=b_axis), t_out.detach().numpy())
    for name, js, ts in zip(["h_n", "c_n"], unpack(j_state), t_states):
        errors[name] = _rel_err(np.asarray(js)[:, keep], ts.detach().numpy())
    g_params, g_x, g_hx = j_grads
    errors["grad_x"] = _rel_err(np.take(np.asarray(g_x), keep, axis=b_axis), _grad(tx))
    if hx is not None:
        for name, jg, th in zip(["grad_h0", "grad_c0"], unpack(g_hx), thx or []):
            errors[name] = _rel_err(np.asarray(jg)[:, keep], _grad(th))
    for name, p in tmod.named_parameters():
        errors[f"grad_{name}"] = _rel_err(g_params[name], _grad(p))

    # --- exact expectations that need no torch -----------------------------------------------
    pad = np.arange(T)[:, None] >= lengths[None, :]
    out_tm = _time_major(np.asarray(j_out), cfg.batch_first)
    gx_tm = _time_major(np.asarray(g_x), cfg.batch_first)
    problems = int(np.count_nonzero(out_tm[pad])) + int(np.count_nonzero(gx_tm[pad]))
    problems += int(not np.all(np.isfinite(np.asarray(g_x))))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        init = hx if hx is not None else [np.zeros(s) for s in state_shapes]
        for js, h0, c, g in zip(unpack(j_state), init, cot_states, unpack(g_hx) if hx else [None] * 2):
            problems += int(not np.array_equal(np.asarray(js)[:, empty], h0[:, empty].astype(js.dtype)))
            if g is not None:  # d h_n / d h_0 is the identity for an empty row
                problems += int(not np.allclose(np.asarray(g)[:, empty], c[:, empty], rtol=0, atol=1e-6))
    errors["padding_and_empty_rows_exact"] = float(problems)
    return errors


def worst(errors: dict[str, float], prefix: Optional[str] = None) -> float:
    """Largest error among quantities (optionally those whose name starts with ``prefix``)."""
    return max(v for k, v in errors.items() if prefix is None or k.startswith(prefix))


# ------------------------------------------------------------------------------------------------
# Packed rows: several sequences per row (``segment_ids``) against torch on each sequence alone
# ------------------------------------------------------------------------------------------------
def random_rows(rng: np.random.Generator, batch: int, time: int, max_per_row: int,
                empty_rows: int = 0) -> list[list[int]]:
    """Segment lengths of each row: row 0 is one full-length segment, row 1 is full with
    ``max_per_row`` segments (no trailing padding), row 2 has one short segment, the last
    ``empty_rows`` rows hold nothing, the others are random (1..max_per_row segments, usually with
    trailing padding)."""
    rows: list[list[int]] = []
    for b in range(batch):
        if b >= batch - empty_rows:
            rows.append([])
            continue
        if b == 0:
            rows.append([time])
            continue
        k = max_per_row if b == 1 else 1 if b == 2 else int(rng.integers(1, max_per_row + 1))
        cuts = np.sort(rng.choice(np.arange(1, time), size=k - 1, replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [time]])).astype(int)
        if b >= 2:  # trailing padding: shorten the last segment (keep it non-empty)
            sizes[-1] = int(rng.integers(1, sizes[-1] + 1))
        rows.append(sizes.tolist())
    return rows


def segment_ids_of(rows: list[list[int]], time: int) -> np.ndarray:
    """``int32 [B, T]`` ids for rows of segment lengths."""
    ids = np.zeros((len(rows), time), np.int32)
    for b, sizes in enumerate(rows):
        ids[b, :sum(sizes)] = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    return ids


def run_rows(cfg: Config, dtype: str = "float64", *, max_per_row: int = 3, **options
             ) -> dict[str, float]:
    """Compare packed rows with torch run on every segment as its own sequence.

    jaxseq gets ``[T, B]`` (or ``[B, T]``) rows holding several sequences each (``segment_ids``),
    NaN at padding, per-segment initial states (with ``cfg.with_hx``) and random cotangents on the
    outputs and on every per-segment final state. torch gets every segment as one sequence of a
    packed batch (sequences of a ``PackedSequence`` are independent, so this is each one alone),
    with the same inputs, initial states and cotangents. ``max_segments`` is one more than the
    most segments in a row, so every row has a segment number it does not hold; ``cfg.zero_rows``
    rows hold no segment at all.

    Quantities as :func:`run` (``output``, ``h_n``, ``c_n``, ``grad_x``, ``grad_h0``, ``grad_c0``,
    ``grad_<param>``) plus ``padding_and_empty_rows_exact``: outputs and input gradients exactly
    0 at padding, absent segments' states equal to their initial states with identity gradient.
    """
    t_dtype, j_dtype = DTYPES[dtype]
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    tmod = TORCH_CLASSES[cfg.mode](cfg.input_size, cfg.hidden_size, **cfg.torch_kwargs()).to(t_dtype)
    params = {k: jnp.asarray(v.detach().numpy(), j_dtype) for k, v in tmod.state_dict().items()}
    T, B, D, L = cfg.time, cfg.batch, 2 if cfg.bidirectional else 1, cfg.num_layers
    H_out = cfg.proj_size or cfg.hidden_size
    rows = random_rows(rng, B, T, max_per_row, cfg.zero_rows)
    S = max(len(r) for r in rows) + 1
    ids = segment_ids_of(rows, T)                                   # [B, T]
    x_bt = rng.standard_normal((B, T, cfg.input_size))
    x_bt[ids == 0] = np.nan
    sizes = [(D * L, B, S, H_out)] + ([(D * L, B, S, cfg.hidden_size)] if cfg.mode == "LSTM" else [])
    hx = [rng.standard_normal(s) for s in sizes] if cfg.with_hx else None
    cot_out_bt = rng.standard_normal((B, T, D * H_out))
    cot_states = [rng.standard_normal(s) for s in sizes]
    layout = (lambda a: a) if cfg.batch_first else (lambda a: np.swapaxes(a, 0, 1))
    pack = (lambda s: tuple(s)) if cfg.mode == "LSTM" else (lambda s: s[0])
    unpack = (lambda s: list(s)) if cfg.mode == "LSTM" else (lambda s: [s])

    @jax.jit
    def forward_and_grads(p, xx, h0, seg):
        def run_it(p, xi, hi):
            return functional.recurrent(cfg.mode, p, xi, hx=hi, segment_ids=seg, max_segments=S,
                                        batch_first=cfg.batch_first, **options)
        result, vjp = jax.vjp(run_it, p, xx, h0)
        cots = (jnp.asarray(layout(cot_out_bt), j_dtype),
                pack([jnp.asarray(c, j_dtype) for c in cot_states]))
        return result, vjp(cots)

    jhx = None if hx is None else pack([jnp.asarray(h, j_dtype) for h in hx])
    (j_out, j_state), (g_params, g_x, g_hx) = forward_and_grads(
        params, jnp.asarray(layout(x_bt), j_dtype), jhx, jnp.asarray(layout(ids)))
    j_out_bt, g_x_bt = (layout(np.asarray(a)) for a in (j_out, g_x))     # layout is an involution
    j_states = [np.asarray(s) for s in unpack(j_state)]

    # --- torch: every segment is one sequence of a packed batch (time-major, as torch's default) -
    spans = [(b, k, int(sum(r[:k])), n) for b, r in enumerate(rows) for k, n in enumerate(r)]
    N = len(spans)
    seq_x = np.zeros((T, N, cfg.input_size))
    seq_cot = np.zeros((T, N, D * H_out))
    for i, (b, _, start, n) in enumerate(spans):
        seq_x[:n, i] = x_bt[b, start:start + n]
        seq_cot[:n, i] = cot_out_bt[b, start:start + n]
    tmod.batch_first = False
    tx = torch.tensor(seq_x, dtype=t_dtype, requires_grad=True)
    per_seq = lambda a: np.stack([a[:, b, k] for b, k, _, _ in spans], axis=1)   # noqa: E731
    thx = None if hx is None else [torch.tensor(per_seq(h), dtype=t_dtype, requires_grad=True)
                                   for h in hx]
    t_out, t_state = run_packed(tmod, tx, [n for *_, n in spans], None if thx is None else pack(thx))
    t_states = unpack(t_state)
    total = (t_out * torch.tensor(seq_cot, dtype=t_dtype)).sum()
    for st, c in zip(t_states, cot_states):
        total = total + (st * torch.tensor(per_seq(c), dtype=t_dtype)).sum()
    tmod.zero_grad()
    total.backward()

    def from_segments(seq: np.ndarray) -> np.ndarray:     # torch [T, N, F] -> rows [B, T, F]
        rows_out = np.zeros((B, T) + seq.shape[2:])
        for i, (b, _, start, n) in enumerate(spans):
            rows_out[b, start:start + n] = seq[:n, i]
        return rows_out

    errors: dict[str, float] = {}
    errors["output"] = _rel_err(j_out_bt, from_segments(t_out.detach().numpy()))
    for name, js, ts in zip(["h_n", "c_n"], j_states, t_states):
        errors[name] = _rel_err(per_seq(js), ts.detach().numpy())
    errors["grad_x"] = _rel_err(g_x_bt[ids > 0], from_segments(_grad(tx))[ids > 0])
    if hx is not None:
        for name, jg, th in zip(["grad_h0", "grad_c0"], unpack(g_hx), thx or []):
            errors[name] = _rel_err(per_seq(np.asarray(jg)), _grad(th))
    for name, p in tmod.named_parameters():
        errors[f"grad_{name}"] = _rel_err(g_params[name], _grad(p))

    # --- exact expectations: padding, and segment numbers a row does not hold ------------------
    problems = int(np.count_nonzero(j_out_bt[ids == 0])) + int(np.count_nonzero(g_x_bt[ids == 0]))
    problems += int(not np.all(np.isfinite(g_x_bt)))
    absent = [(b, k) for b, r in enumerate(rows) for k in range(len(r), S)]
    init = hx if hx is not None else [np.zeros(s) for s in sizes]
    grads = unpack(g_hx) if hx is not None else [None] * len(sizes)
    for js, h0, c, g in zip(j_states, init, cot_states, grads):
        for b, k in absent:
            problems += int(not np.array_equal(js[:, b, k], h0[:, b, k].astype(js.dtype)))
            if g is not None:
                problems += int(not np.allclose(np.asarray(g)[:, b, k], c[:, b, k], rtol=0, atol=1e-6))
    errors["padding_and_empty_rows_exact"] = float(problems)
    return errors
