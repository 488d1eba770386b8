"""Where the time of one ``compare_models`` call on a decoder-loop model goes.

    python -m benchmarks.compare_models_time [--steps T] [--variants a,b]

The model: an attention decoder (embedding -> packed BiLSTM encoder -> ``T`` decoder steps of a
``LSTMCell`` fed a prenet of the previous frame and the attention context, dot attention over the
valid encoder steps, a linear frame output), masked MSE; its torch twin runs the decoder in a
Python loop. JAX variants: the decoder loop as :func:`jaxseq.teacher_forcing` (a ``lax.scan``) or
as a Python loop (unrolled into the program), with a :class:`jaxseq.LSTMCell` or the same cell
written in ``jnp``. For each variant, from cold caches (``jax.clear_caches()``):

* ``call``: the wall time of one ``compare_models`` call (float64), and of a second call with the
  same shapes (cached compilation);
* the JAX side alone, as ``compare_models`` runs it: tracing + lowering of the loss and its
  gradient (``jax.jit(...).lower``), XLA compilation with ``compare_models``' options
  (:data:`jaxseq.parity.jax_side.COMPILER_OPTIONS`) and with XLA's defaults, one run; and the
  same for the loss without its gradient.

Times are wall clock on this machine (name printed); process CPU time in brackets. Measured on
the 2-core AMD EPYC (load average 6-14 from other jobs: read the CPU seconds), T = 40, CPU s::

    variant        trace+lower  grad, O0  grad, XLA defaults  loss, O0
    scan-jaxseq    0.28         1.66      3.52                0.62
    scan-jnp       0.32         1.95      3.61                0.57
    python-jaxseq  1.35         12.32     27.62               1.81
    python-jnp     1.37         12.29     26.15               1.92

(the last three columns: XLA compilation of the loss and its gradient, or of the loss alone).
A first ``compare_models`` call (cold, after a warm-up call on another model; min over 2-3 runs,
CPU s) before issue 23's changes (main at 8bbf92f: XLA defaults, eager casts compiling per
shape) and after:
scan-jaxseq 4.3 -> 3.1, scan-jnp 4.6 -> 3.5, python-jaxseq 33.9 -> 17.1, python-jnp 34.1 -> 15.8.
"""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

import jaxseq
from jaxseq.parity import compare_models
from jaxseq.parity.jax_side import COMPILER_OPTIONS

V, E, H, M = 20, 16, 32, 8          # vocabulary, embedding, hidden, frame size
B, S = 4, 12                        # batch, encoder steps


class TorchDecoderModel(nn.Module):
    """Encoder (embedding, packed BiLSTM) and an attention decoder of an ``LSTMCell`` in a
    Python loop."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.encoder = nn.LSTM(E, H, batch_first=True, bidirectional=True)
        self.prenet = nn.Linear(M, H)
        self.cell = nn.LSTMCell(3 * H, H)
        self.query = nn.Linear(H, 2 * H)
        self.out = nn.Linear(3 * H, M)

    def forward(self, tokens, lengths, frames):                      # frames [B, T, M]
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(tokens), lengths.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        memory, _ = nn.utils.rnn.pad_packed_sequence(self.encoder(packed)[0], batch_first=True,
                                                     total_length=tokens.shape[1])
        valid = torch.arange(tokens.shape[1])[None] < lengths[:, None]
        h = c = frames.new_zeros(frames.shape[0], H)
        context = frames.new_zeros(frames.shape[0], 2 * H)
        outputs = []
        for t in range(frames.shape[1]):
            x = torch.relu(self.prenet(frames[:, t]))
            h, c = self.cell(torch.cat([x, context], -1), (h, c))
            scores = (self.query(h)[:, None] * memory).sum(-1).masked_fill(~valid, -torch.inf)
            context = (scores.softmax(-1)[..., None] * memory).sum(1)
            outputs.append(self.out(torch.cat([h, context], -1)))
        return torch.stack(outputs, 1)


class JnpLSTMCell(nnx.Module):
    """``nn.LSTMCell`` in plain ``jnp`` (torch's parameter names)."""

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.uniform(1.0)
        self.weight_ih = nnx.Param(init(rngs.params(), (4 * hidden_size, input_size)))
        self.weight_hh = nnx.Param(init(rngs.params(), (4 * hidden_size, hidden_size)))
        self.bias_ih = nnx.Param(jnp.zeros(4 * hidden_size))
        self.bias_hh = nnx.Param(jnp.zeros(4 * hidden_size))

    def __call__(self, x, hx):
        h, c = hx
        gates = (x @ self.weight_ih[...].T + self.bias_ih[...] + h @ self.weight_hh[...].T
                 + self.bias_hh[...])
        i, f, g, o = jnp.split(gates, 4, -1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c


class JaxDecoderModel(nnx.Module):
    """The port; ``loop``: ``"scan"`` (``jaxseq.teacher_forcing``) or ``"python"``."""

    def __init__(self, *, cell: str, loop: str, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(V, E, rngs=rngs)
        self.encoder = jaxseq.LSTM(E, H, batch_first=True, bidirectional=True, rngs=rngs)
        self.prenet = nnx.Linear(M, H, rngs=rngs)
        self.cell = (jaxseq.LSTMCell(3 * H, H, rngs=rngs) if cell == "jaxseq"
                     else JnpLSTMCell(3 * H, H, rngs=rngs))
        self.query = nnx.Linear(H, 2 * H, rngs=rngs)
        self.out = nnx.Linear(3 * H, M, rngs=rngs)
        self.loop = loop

    def step(self, carry, frame):
        (h, c), context, memory, lengths = carry
        x = jax.nn.relu(self.prenet(frame))
        h, c = self.cell(jnp.concatenate([x, context], -1), (h, c))
        context, _ = jaxseq.dot_attention(self.query(h), memory, memory, lengths)
        return ((h, c), context, memory, lengths), self.out(jnp.concatenate([h, context], -1))

    def __call__(self, tokens, lengths, frames):
        memory, _ = self.encoder(self.embedding(tokens), lengths)
        zeros = jnp.zeros((frames.shape[0], H), frames.dtype)
        carry = ((zeros, zeros), jnp.zeros((frames.shape[0], 2 * H), frames.dtype), memory,
                 lengths)
        if self.loop == "scan":
            return jaxseq.teacher_forcing(self.step, carry, frames)[1]
        outputs = []
        for t in range(frames.shape[1]):
            carry, y = self.step(carry, frames[:, t])
            outputs.append(y)
        return jnp.stack(outputs, 1)


def make_batch(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([S, 5, 9, 3][:B])
    tokens = rng.integers(1, V, (B, S))
    tokens[np.arange(S)[None] >= lengths[:, None]] = 0
    frames = rng.standard_normal((B, steps + 1, M)).astype(np.float32)
    return {"tokens": tokens, "lengths": lengths, "frames_in": frames[:, :-1],
            "frames_out": frames[:, 1:]}


def torch_loss(model, batch):
    pred = model(batch["tokens"], batch["lengths"], batch["frames_in"])
    return F.mse_loss(pred, batch["frames_out"]), {"pred": pred}


def jax_loss(model, batch):
    pred = model(batch["tokens"], batch["lengths"], batch["frames_in"])
    return jnp.mean((pred - batch["frames_out"]) ** 2), {"pred": pred}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def jax_side(model: nnx.Module, batch: dict[str, np.ndarray], grad: bool,
             options: dict[str, Any]) -> dict[str, float]:
    """Trace + lower, XLA compile and one run of the loss (and its gradient) in float64, as
    ``compare_models`` runs them (parameters and the floating batch leaves differentiated)."""
    with jax.enable_x64(True):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        floats = {k: jnp.asarray(v, jnp.float64) for k, v in batch.items() if v.dtype.kind == "f"}
        others = {k: jnp.asarray(v) for k, v in batch.items() if v.dtype.kind != "f"}

        def loss(p, f, o):
            return jax_loss(nnx.merge(graphdef, p, rest), {**f, **o})

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True) if grad else loss)
        lowered, t_lower, c_lower = _timed(lambda: fn.lower(params, floats, others))
        compiled, t_compile, c_compile = _timed(lambda: lowered.compile(options))
        _, t_run, _ = _timed(lambda: jax.block_until_ready(compiled(params, floats, others)))
    return {"trace+lower": t_lower, "trace+lower cpu": c_lower, "compile": t_compile,
            "compile cpu": c_compile, "run": t_run}


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="decoder steps T")
    parser.add_argument("--variants", default="scan-jaxseq,scan-jnp,python-jaxseq,python-jnp")
    args = parser.parse_args(argv)
    print(f"CPU: {platform.processor() or platform.machine()}, {jax.devices()[0].platform}; "
          f"jax {jax.__version__}, torch {torch.__version__}; T = {args.steps}")
    batch = make_batch(args.steps)
    torch.manual_seed(0)
    torch_model = TorchDecoderModel()
    for variant in args.variants.split(","):
        loop, cell = variant.split("-")
        jax.clear_caches()
        port = JaxDecoderModel(cell=cell, loop=loop, rngs=nnx.Rngs(0))
        def call(port: nnx.Module = port) -> Any:
            return compare_models(torch_model, port, batch, torch_loss=torch_loss,
                                  jax_loss=jax_loss)

        report, t_first, c_first = _timed(call)
        _, t_second, _ = _timed(call)
        report.assert_close(rtol=1e-9)
        parts = {}
        for what, grad, options in (("grad", True, COMPILER_OPTIONS),
                                    ("grad, XLA defaults", True, {}),
                                    ("loss", False, COMPILER_OPTIONS)):
            jax.clear_caches()
            parts[what] = jax_side(port, batch, grad, options)
        print(f"{variant:14s} call {t_first:6.2f} s [{c_first:6.2f}]  again {t_second:5.2f} s  "
              f"worst {report.worst():.1e}")
        for what, p in parts.items():
            print(f"  {what:18s}: trace+lower {p['trace+lower']:6.2f} s [{p['trace+lower cpu']:6.2f}]"
                  f"  compile {p['compile']:6.2f} s [{p['compile cpu']:6.2f}]  run {p['run']:.3f} s")


if __name__ == "__main__":
    main()
