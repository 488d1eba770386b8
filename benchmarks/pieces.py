"""Where the time of a step goes: its parts timed alone, in JAX (XLA) and in torch.

A section of ``python -m benchmarks.run --pieces`` for torch's fastrnns problems with a single
unidirectional LSTM layer (``--config dense``, ``vl_py``). In one process, interleaved rounds:

* the whole training step of jaxseq (traced lengths) and torch, each with and without the input
  gradient, and their forward passes alone (torch in grad mode, as in a step);
* each product of the step alone, the same shapes in both frameworks: the input projection of all
  steps as one GEMM, ``T`` per-step ``h @ W_hh`` and ``dgates @ W_hh`` products (a JAX scan; a
  Python loop of ``torch.mm``), and the weight gradients ``x^T dgates``, ``h^T dgates``.

The objective is the config's own (:func:`benchmarks.contenders.objective`); the parts carry no
gate math, so ``step - sum of parts`` is what the rest costs.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from benchmarks.configs import BenchConfig, FastRNNsConfig
from benchmarks.contenders import initial_states, objective, torch_params
from benchmarks.timing import Contender, compile_step, time_round_robin
from jaxseq import functional

PIECES_TEXT = """`benchmarks/pieces.py` (`python -m benchmarks.run --config dense --pieces`): one
process, interleaved rounds. The steps: jaxseq with traced lengths (`input_projection` default) and
torch, with and without the input gradient, and their forward passes alone (torch in grad mode, as
in a step). The parts: each product of the step alone with the step's shapes, JAX (XLA's GEMMs, the
per-step products in a `lax.scan`) against torch (`torch.mm`, the per-step products in a Python
loop); GFLOP/s over both cores."""


def supports(cfg: BenchConfig) -> bool:
    """The parts are written for torch's fastrnns problems with one unidirectional LSTM layer."""
    return isinstance(cfg, FastRNNsConfig) and (cfg.mode, cfg.num_layers, cfg.bidirectional) == (
        "LSTM", 1, False)


def _steps(cfg: FastRNNsConfig) -> list[Contender]:
    """jaxseq's and torch's step with and without the input gradient, and their forward passes."""
    params = torch_params(cfg.torch_module())
    x, lengths = jnp.asarray(cfg.inputs()), jnp.asarray(cfg.lengths(), jnp.int32)
    hx, g = initial_states(cfg), jnp.asarray(cfg.output_grad())

    def run(p, xx):
        return functional.lstm(p, xx, lengths, hx)

    def loss(p, xx):
        return objective(cfg, *run(p, xx), g)

    out = []
    for name, fn in (("jaxseq step", jax.grad(loss)),
                     ("jaxseq step with the input gradient", jax.grad(loss, argnums=(0, 1))),
                     ("jaxseq forward", lambda p, xx: run(p, xx)[0])):
        compiled, _, _ = compile_step(fn, params, x)
        out.append(Contender(name, lambda c=compiled: jax.block_until_ready(c(params, x)), 0.0))

    model = cfg.torch_module()
    tx, tg = torch.tensor(cfg.inputs()), torch.tensor(cfg.output_grad())
    thx = tuple(torch.tensor(s) for s in cfg.states())
    lens = torch.as_tensor(cfg.lengths())
    tx_grad = tx.clone().requires_grad_(True)
    rnn = torch.nn.utils.rnn

    def forward(xx: torch.Tensor) -> torch.Tensor:
        if not cfg.varlen:
            return model(xx, thx)[0]
        packed = rnn.pack_padded_sequence(xx, lens, enforce_sorted=False)
        return rnn.pad_packed_sequence(model(packed, thx)[0], total_length=xx.shape[0])[0]

    def torch_step(xx: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            for p in model.parameters():
                p.grad = None
            xx.grad = None
            forward(xx).backward(tg)
        return step

    out += [Contender("torch step", torch_step(tx), 0.0),
            Contender("torch step with the input gradient", torch_step(tx_grad), 0.0),
            Contender("torch forward", lambda: forward(tx), 0.0)]
    return out


def _parts(cfg: FastRNNsConfig) -> list[tuple[str, float, Contender, Contender]]:
    """``(part, FLOPs, JAX contender, torch contender)`` for each product of the step."""
    T, B, F, H = cfg.padded_time, cfg.batch, cfg.input_size, cfg.hidden_size
    G = 4 * H
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal(s).astype(np.float32) * 0.05 for k, s in dict(
        x=(T, B, F), w_ih=(F, G), w_hh=(H, G), h=(B, H), dg=(T, B, G), hs=(T, B, H)).items()}
    j = {k: jnp.asarray(v) for k, v in data.items()}
    t = {k: torch.tensor(v) for k, v in data.items()}

    def recurrent(xp, w, h):                # T steps of h @ W_hh (the next h a slice)
        def body(h, xp_t):
            pre = xp_t + h @ w
            return pre[:, :H], pre
        return lax.scan(body, h, xp)

    def recurrent_back(dg, w, h):           # T steps of dgates @ W_hh^T, in reverse
        def body(dh, dg_t):
            d = dg_t + jnp.tile(dh, 4)
            return d @ w.T, d
        return lax.scan(body, h, dg, reverse=True)

    def weight_grads(x, hs, dg):
        return (jnp.tensordot(x, dg, ([0, 1], [0, 1])), jnp.tensordot(hs, dg, ([0, 1], [0, 1])))

    x2, dg2, hs2 = t["x"].reshape(-1, F), t["dg"].reshape(-1, G), t["hs"].reshape(-1, H)
    dg_step, w_hh_t = t["dg"][0], t["w_hh"].T.contiguous()

    def t_recurrent() -> None:
        for _ in range(T):
            torch.mm(t["h"], t["w_hh"])

    def t_recurrent_back() -> None:
        for _ in range(T):
            torch.mm(dg_step, w_hh_t)

    specs = [(f"`x @ W_ih`, all {T} steps as one GEMM", 2 * T * B * G * F,
              lambda x, w: x.reshape(-1, F) @ w, ("x", "w_ih"), lambda: torch.mm(x2, t["w_ih"])),
             (f"`h @ W_hh`, {T} steps of `[{B}, {H}] x [{H}, {G}]`", 2 * T * B * G * H,
              recurrent, ("dg", "w_hh", "h"), t_recurrent),
             (f"`dgates @ W_hh^T`, {T} steps of `[{B}, {G}] x [{G}, {H}]`", 2 * T * B * G * H,
              recurrent_back, ("dg", "w_hh", "h"), t_recurrent_back),
             ("weight gradients `x^T dgates`, `h^T dgates`", 2 * T * B * G * (F + H),
              weight_grads, ("x", "hs", "dg"),
              lambda: (torch.mm(x2.T, dg2), torch.mm(hs2.T, dg2)))]
    out = []
    for name, flops, fn, keys, torch_fn in specs:
        args = tuple(j[k] for k in keys)
        compiled, _, _ = compile_step(fn, *args)
        out.append((name, flops,
                    Contender(f"jax: {name}", lambda c=compiled, a=args: jax.block_until_ready(c(*a)),
                              0.0),
                    Contender(f"torch: {name}", torch_fn, 0.0)))
    return out


def piece_rows(cfg: FastRNNsConfig, runs: int, warmup: int) -> list[dict]:
    """One row per step or part: JAX and torch medians (ms) and GFLOP/s of the parts."""
    steps, parts = _steps(cfg), _parts(cfg)
    contenders = steps + [c for _, _, jc, tc in parts for c in (jc, tc)]
    wall, _ = time_round_robin(contenders, runs, warmup)
    ms = {k: 1e3 * float(np.median(v)) for k, v in wall.items()}
    rows = [dict(config=cfg.name, kind="pieces", part=label, jax_ms=ms[f"jaxseq {label}"],
                 torch_ms=ms[f"torch {label}"], flops=None)
            for label in ("step", "step with the input gradient", "forward")]
    rows.append(dict(config=cfg.name, kind="pieces", part="backward (step - forward)",
                     jax_ms=rows[0]["jax_ms"] - rows[2]["jax_ms"],
                     torch_ms=rows[0]["torch_ms"] - rows[2]["torch_ms"], flops=None))
    rows += [dict(config=cfg.name, kind="pieces", part=name, jax_ms=ms[jc.name],
                  torch_ms=ms[tc.name], flops=flops) for name, flops, jc, tc in parts]
    return rows


def pieces_table(rows: list[dict]) -> list[str]:
    lines = ["| config | part | JAX / jaxseq ms | torch ms | JAX GFLOP/s | torch GFLOP/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        rate = ["-", "-"] if r["flops"] is None else [
            f"{r['flops'] / r[k] / 1e6:.0f}" for k in ("jax_ms", "torch_ms")]
        lines.append(f"| {r['config']} | {r['part']} | {r['jax_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{rate[0]} | {rate[1]} |")
    return lines
