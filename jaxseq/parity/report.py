"""Print the parity table of this install: ``jaxseq-parity [--dtype float32|float64|both]``.

Runs a fixed matrix of configurations through torch (packed sequences) and jaxseq on the current
JAX backend, with TF32 disabled on both sides, and prints per configuration and dtype the largest
relative error of outputs, final states, input/state gradients and parameter gradients: padded
batches with ``lengths`` (rows of length 0 included) and packed rows (several sequences per row,
``segment_ids``). Exits with status 1 if any error exceeds the suite's tolerance (float64 1e-10,
float32 1e-5). Runs from any directory; needs torch (``pip install jaxseq[torch]``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

TOL = {"float64": 1e-10, "float32": 1e-5}


def matrix():
    """``[(kind, Config)]``: ``"padded"`` runs :func:`harness.run`, ``"packed"``
    :func:`harness.run_rows`."""
    from jaxseq.parity.harness import Config

    padded = [
        Config(mode="LSTM"),
        Config(mode="LSTM", num_layers=2, bidirectional=True, with_hx=True),
        Config(mode="LSTM", num_layers=2, bidirectional=True, proj_size=3, batch_first=True,
               with_hx=True),
        Config(mode="LSTM", num_layers=3, bidirectional=True, bias=False, zero_rows=2, with_hx=True),
        Config(mode="GRU", num_layers=2, bidirectional=True, with_hx=True),
        Config(mode="GRU", bias=False, batch_first=True, zero_rows=1),
        Config(mode="RNN_TANH", num_layers=2, bidirectional=True, with_hx=True),
        Config(mode="RNN_RELU", num_layers=3, batch_first=True),
        Config(mode="LSTM", input_size=32, hidden_size=64, batch=16, time=40, bidirectional=True),
    ]
    packed = [
        Config(mode="LSTM", num_layers=2, bidirectional=True, proj_size=2, with_hx=True, time=12),
        Config(mode="GRU", bidirectional=True, batch_first=True, zero_rows=1, time=12),
    ]
    return [("padded", c) for c in padded] + [("packed", c) for c in packed]


def _tol(dtype: str) -> str:
    return f"{TOL[dtype]:.0e}".replace("e-0", "e-")


#: ``jaxseq-parity --help``: plain text (the module docstring is reStructuredText for the docs).
HELP_DESCRIPTION = "Print the parity table of this install: torch against jaxseq, case by case."
HELP_EPILOG = f"""\
Runs a fixed matrix of LSTM / GRU / RNN configurations through torch (packed
sequences) and jaxseq on the current JAX backend, with TF32 disabled on both
sides: padded batches with lengths (rows of length 0 included) and packed rows
(several sequences per row, segment_ids). For each configuration and dtype it
prints the largest relative error of the outputs, the final states, the input
and state gradients and the parameter gradients.

Exit status: 0 if every error is within the test suite's tolerance (float64
{_tol("float64")}, float32 {_tol("float32")}), 1 otherwise. Runs from any directory; needs torch
(pip install "jaxseq[torch]").

Examples:
  jaxseq-parity                  both dtypes (the default)
  jaxseq-parity --dtype float32  the quick check that make demo runs"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``jaxseq-parity``."""
    cli = argparse.ArgumentParser(prog="jaxseq-parity", description=HELP_DESCRIPTION,
                                  epilog=HELP_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--dtype", choices=["float64", "float32", "both"], default="both",
                     help=f"the dtype(s) to compare in: float64 (x64 mode, tolerance "
                          f"{_tol('float64')}), float32 (tolerance {_tol('float32')}) or both, one "
                          "after the other (default: %(default)s)")
    return cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch

    from jaxseq.parity.harness import run, run_rows

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}; "
          f"torch {torch.__version__}")
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    header = (f"{'layout':7s} {'config':42s} {'dtype':8s} {'output':>9s} {'states':>9s} "
              f"{'grad x/hx':>9s} {'grad W':>9s}  ok")
    print(header)
    print("-" * len(header))
    failures = cases = 0
    worst = dict.fromkeys(dtypes, 0.0)
    for kind, cfg in matrix():
        for dtype in dtypes:
            e = (run if kind == "padded" else run_rows)(cfg, dtype)
            exact = e.pop("padding_and_empty_rows_exact") == 0
            cols = [e["output"], max(e[k] for k in ("h_n", "c_n") if k in e),
                    max(v for k, v in e.items() if k in ("grad_x", "grad_h0", "grad_c0")),
                    max(v for k, v in e.items() if k.startswith(("grad_weight", "grad_bias")))]
            ok = exact and max(cols) <= TOL[dtype]
            failures += not ok
            cases += 1
            worst[dtype] = max(worst[dtype], max(cols))
            print(f"{kind:7s} {cfg.label():42s} {dtype:8s} " + " ".join(f"{c:9.2e}" for c in cols)
                  + ("  yes" if ok else "  NO"))
    print("worst relative error: " + ", ".join(f"{d} {v:.2e} (tol {TOL[d]:.0e})"
                                               for d, v in worst.items()))
    print(f"{cases - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
