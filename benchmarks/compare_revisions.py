"""Time jaxseq's training step against an earlier revision of jaxseq, in one process.

    python -m benchmarks.compare_revisions REV [--config NAME ...] [--runs N]

The revision is imported beside the current jaxseq (:mod:`benchmarks.revision`), so both versions
run side by side on the same batch and weights, interleaved round-robin; printed: median ms of a
jitted forward + backward step with concrete lengths (the staircase) and with traced lengths, the
ratio ``rev / current`` (above 1: the current code is faster), compile seconds, and the loss
difference. Used for the reverse-mode cost of the custom JVP (``docs/benchmarks.md``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq
from benchmarks.configs import CONFIGS, GROUPS
from benchmarks.contenders import objective
from benchmarks.revision import load_revision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare against, e.g. a commit or tag")
    parser.add_argument("--config", action="append", choices=sorted(GROUPS["main"]))
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        print(f"current jaxseq {jaxseq.__version__} vs {args.rev} ({old.__file__})")
        for name in args.config or ["lstm", "bilstm2", "gru"]:
            cfg = CONFIGS[name]
            params = {k: jnp.asarray(v.detach().numpy())
                      for k, v in cfg.torch_module().state_dict().items()}
            x, lengths = jnp.asarray(cfg.inputs()), cfg.lengths()
            steps = {}
            for lib in (jaxseq, old):
                for traced in (False, True):
                    def loss(p, xx, lens, lib=lib, cfg=cfg):
                        return objective(cfg, *lib.functional.recurrent(cfg.mode, p, xx, lens),
                                         jnp.zeros(()))
                    grad = jax.value_and_grad(loss, argnums=(0, 1))
                    fn = jax.jit(grad) if traced else jax.jit(
                        lambda p, xx, g=grad, lens=lengths: g(p, xx, lens))
                    fargs = (params, x, jnp.asarray(lengths, jnp.int32)) if traced else (params, x)
                    start = time.perf_counter()
                    value = float(jax.block_until_ready(fn(*fargs))[0])
                    steps[lib.__name__, traced] = (fn, fargs, time.perf_counter() - start, value)
            times = {k: [] for k in steps}
            for _ in range(args.runs):
                for k, (fn, fargs, _, _) in steps.items():
                    start = time.perf_counter()
                    jax.block_until_ready(fn(*fargs))
                    times[k].append(time.perf_counter() - start)
            for traced in (False, True):
                new, prev = (np.median(times[n, traced]) for n in ("jaxseq", "jaxseq_rev"))
                print(f"| {name} | {'traced lengths' if traced else 'staircase'} | {new * 1e3:.1f} | "
                      f"{prev * 1e3:.1f} | {prev / new:.2f}x | "
                      f"{steps['jaxseq', traced][2]:.1f} / {steps['jaxseq_rev', traced][2]:.1f} | "
                      f"{abs(steps['jaxseq', traced][3] - steps['jaxseq_rev', traced][3]):.1e} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
