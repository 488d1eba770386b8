"""What the device checks compute: random batches, and jaxseq's layer and the raw kernel on them.

:func:`make_case` draws a float64 batch (torch-named parameters, ragged lengths, random ``hx`` and
cotangents); :func:`layer_run` runs jaxseq's LSTM (``impl="scan"`` or ``"cudnn"``) and its VJP,
:func:`raw_run` the kernel itself on jaxseq's flat weights; :func:`rel_errors` and
:func:`summarize` compare two runs. :class:`Kernel` names the kernel under test: cuDNN
(``jax.experimental.rnn.lstm``), or under ``--emulate`` its pure-JAX reference.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5                  # float32 kernel against the float64 scan (GPU.md: 2.7e-7 .. 1e-6 seen)
MIN_CUDNN = 8800            # jax-ml/jax#16138: known wrong RNN outputs before cuDNN 8.8


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The kernel under test: cuDNN, or (``emulate``) ``jax.experimental.rnn.lstm_ref``."""

    emulate: bool

    @property
    def name(self) -> str:
        """Its name in :data:`jaxseq.fused.KERNELS`."""
        from jaxseq import fused

        return fused.REFERENCE if self.emulate else fused.KERNEL

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Where ``impl="cudnn"`` runs this kernel (the reference one when emulating)."""
        from jaxseq import fused

        with fused.use_reference_kernel() if self.emulate else contextlib.nullcontext():
            yield


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    time: int
    input_size: int
    hidden_size: int


#: GPU.md's float32 accuracy shape (cheap on a CPU too: compilation dominates there).
SMALL = Shape(batch=16, time=64, input_size=32, hidden_size=64)



# ---------------------------------------------------------------------------------------------
# Cases and the two computations under test (jaxseq's layer, the raw kernel)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One batch: float64 torch-named ``params``, ``x [B, T, I]`` (padding filled), ``lengths``,
    ``hx = (h_0, c_0)`` each ``[D*L, B, H]`` and cotangents ``(dy, (dh_n, dc_n))``."""

    params: dict[str, np.ndarray]
    x: np.ndarray
    lengths: np.ndarray
    hx: tuple[np.ndarray, np.ndarray]
    cots: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]

    @property
    def padding(self) -> np.ndarray:
        """``bool [B, T]``: padded steps."""
        return np.arange(self.x.shape[1])[None, :] >= self.lengths[:, None]


def make_case(seed: int, shape: Shape, num_layers: int, bidirectional: bool, *, ragged: bool = True,
              zero_rows: int = 0, nan_padding: bool = False, bias: bool = True) -> Case:
    """A random batch; ragged lengths include 1 and ``T`` (then ``zero_rows`` rows of length 0)."""
    from jaxseq import init
    from jaxseq.parity.harness import random_lengths

    rng = np.random.default_rng(seed)
    B, T, H = shape.batch, shape.time, shape.hidden_size
    params = init.torch_default(jax.random.key(seed), "LSTM", shape.input_size, H, num_layers,
                                bias, bidirectional, dtype=jnp.float64)
    lengths = (random_lengths(rng, B, T, zero_rows) if ragged else np.full(B, T)).astype(np.int32)
    x = rng.standard_normal((B, T, shape.input_size))
    x[np.arange(T)[None, :] >= lengths[:, None]] = np.nan if nan_padding else 0.0
    states = (2 if bidirectional else 1) * num_layers, B, H
    hx = (rng.standard_normal(states), rng.standard_normal(states))
    cots = (rng.standard_normal((B, T, states[0] // num_layers * H)),
            (rng.standard_normal(states), rng.standard_normal(states)))
    return Case({k: np.asarray(v) for k, v in params.items()}, x, lengths, hx, cots)


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` as ``dtype`` device arrays (integer leaves kept)."""
    def leaf(a: Any) -> Any:
        a = np.asarray(a)
        return jnp.asarray(a, dtype if np.issubdtype(a.dtype, np.floating) else a.dtype)
    return jax.tree.map(leaf, tree)


def _results(out: Any, grads: Any) -> dict[str, np.ndarray]:
    (y, (h_n, c_n)), (g_params, g_x, (g_h0, g_c0)) = out, grads
    named = {"y": y, "h_n": h_n, "c_n": c_n, "dx": g_x, "dh0": g_h0, "dc0": g_c0}
    named.update({f"d{k}": v for k, v in g_params.items()})
    return {k: np.asarray(v) for k, v in named.items()}


@partial(jax.jit, static_argnames=("impl",))
def _layer_vjp(params, x, lengths, hx, cots, masks, *, impl):
    from jaxseq import functional as F

    def forward(p, xx, h):
        return F.lstm(p, xx, lengths, h, batch_first=True, impl=impl,
                      dropout_masks=masks["dropout"], weight_hh_masks=masks["weight_hh"])

    out, vjp = jax.vjp(forward, params, x, hx)
    return out, vjp(cots)


def layer_run(case: Case, dtype: Any, impl: str, masks: Optional[dict] = None
              ) -> dict[str, np.ndarray]:
    """jaxseq's LSTM (``batch_first``, traced lengths) and its VJP: outputs and gradients."""
    masks = masks or {"dropout": None, "weight_hh": None}
    out, grads = _layer_vjp(cast(case.params, dtype), cast(case.x, dtype),
                            jnp.asarray(case.lengths), cast(case.hx, dtype),
                            cast(case.cots, dtype), cast(masks, dtype), impl=impl)
    return _results(out, grads)


@partial(jax.jit, static_argnames=("kernel",))
def _raw_vjp(params, x, lengths, hx, cots, *, kernel):
    from jaxseq import fused
    from jaxseq.layout import infer_structure

    s = infer_structure("LSTM", params)
    layers = range(s.num_layers)

    def forward(p, xx, h):
        w = fused.flat_weights(p, s, layers, [None] * s.num_layers)
        y, h_n, c_n = fused.KERNELS[kernel](xx, h[0], h[1], w, lengths, input_size=s.input_size,
                                            hidden_size=s.hidden_size, num_layers=s.num_layers,
                                            dropout=0.0, bidirectional=s.bidirectional)
        return y, (h_n, c_n)

    out, vjp = jax.vjp(forward, params, x, hx)
    return out, vjp(cots)


def raw_run(case: Case, dtype: Any, kernel: str) -> dict[str, np.ndarray]:
    """The kernel itself (``jax.experimental.rnn.lstm`` or its reference) on jaxseq's flat weights."""
    out, grads = _raw_vjp(cast(case.params, dtype), cast(case.x, dtype),
                          jnp.asarray(case.lengths, jnp.int32), cast(case.hx, dtype),
                          cast(case.cots, dtype), kernel=kernel)
    return _results(out, grads)


def rel_errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """``max |got - want| / max |want|`` per quantity (``inf`` where ``got`` is not finite)."""
    errors = {}
    for k, w in want.items():
        g, w = np.asarray(got[k], np.float64), np.asarray(w, np.float64)
        ok = np.isfinite(g).all() and g.shape == w.shape
        errors[k] = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)) if ok else math.inf
    return errors


def summarize(errors: dict[str, float]) -> dict[str, float]:
    """Worst error of outputs, states and gradients (``dW``: every parameter)."""
    groups = {"y": ["y"], "states": ["h_n", "c_n"], "dx_dhx": ["dx", "dh0", "dc0"],
              "dW": [k for k in errors if k.startswith(("dweight", "dbias"))]}
    return {g: max(errors[k] for k in keys) for g, keys in groups.items() if keys}


def fmt_errors(errors: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1e}" for k, v in errors.items())


def structure(params: dict) -> Any:
    """The layer structure of torch-named LSTM ``params``."""
    from jaxseq.layout import infer_structure

    return infer_structure("LSTM", params)
