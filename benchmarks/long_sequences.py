"""Long sequences: a training step's time and memory as ``T`` grows, with and without ``remat``.

    python -m benchmarks.long_sequences [--quick] [--times T ...] [--remat K ...]
                                        [--torch-max-time T] [--rounds N] [--torch-rounds N]
                                        [--json FILE]

The model: a 2-layer bidirectional LSTM, B=16, I=64, H=128 (``--quick``: B=4, I=8, H=16), lengths
``U[T/10, T]`` with one row of length ``T`` (:class:`benchmarks.contenders.BenchConfig`), one
jitted ``value_and_grad`` step over the parameters and the input with traced lengths. Every
(``T``, contender) runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own: compile the
step, read the compiled temporary memory (``memory_analysis().temp_size_in_bytes``), run one
warm-up and ``--rounds`` timed steps (torch: ``--torch-rounds``), report the median wall and
process CPU time (less sensitive to other processes' load). Contenders: jaxseq (``remat=None``),
jaxseq with each ``remat`` (``sqrt``: ``round(sqrt(T))``), and torch packed
(``pack_padded_sequence`` -> ``nn.LSTM`` -> ``pad_packed_sequence``, backward; 1 thread, as in
the documented ``benchmarks.run`` tables) up to ``--torch-max-time`` (its packed step grows
faster than linearly in ``T``). Ratios are against
jaxseq without remat at the same ``T``; time per 1000 valid tokens shows how cost scales. The
load average is printed with every row (the processes run one after another).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Optional

MODEL = dict(mode="LSTM", batch=16, input_size=64, hidden_size=128, num_layers=2,
             bidirectional=True)
QUICK_MODEL = dict(MODEL, batch=4, input_size=8, hidden_size=16)
TIMES = (500, 1000, 2000, 4000, 8000)
QUICK_TIMES = (48,)
REMATS = ("sqrt", "50", "200")
TORCH_MAX_TIME = 1000


def _config(time_steps: int, quick: bool):
    from benchmarks.configs import BenchConfig

    return BenchConfig(f"bilstm2-T{time_steps}", time=time_steps,
                       **(QUICK_MODEL if quick else MODEL))


def measure(time_steps: int, contender: str, remat: Optional[int], rounds: int,
            quick: bool) -> dict:
    """One row, in this process: compile, time ``rounds`` steps, read the peak RSS."""
    import jax
    import numpy as np

    from benchmarks.contenders import jax_step_fn, torch_step
    from jaxseq import functional

    cfg = _config(time_steps, quick)
    row = dict(T=time_steps, contender=contender, remat=remat,
               tokens=int(cfg.lengths().sum()), temp_mib=None, compile_s=None)
    if contender == "torch-packed":
        import torch

        torch.set_num_threads(1)   # on a shared machine its OpenMP threads wait for each other
        step = torch_step(cfg, cfg.torch_module(), "cpu").step
    else:
        def run(p, x, lengths, hx):
            return functional.recurrent(cfg.mode, p, x, lengths, hx, remat=remat)

        fn, args = jax_step_fn(cfg, cfg.torch_module(), run, traced_lengths=True)
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        row["compile_s"] = time.perf_counter() - start
        row["temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / 2**20

        def step():
            jax.block_until_ready(compiled(*args))
    step()                                                               # warm-up
    seconds, cpu_seconds = [], []
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        step()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu)
    row["step_s"], row["cpu_s"] = float(np.median(seconds)), float(np.median(cpu_seconds))
    row["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux
    return row


def _remat_values(time_steps: int, remats: list[str]) -> list[int]:
    values = {round(math.sqrt(time_steps)) if r == "sqrt" else int(r) for r in remats}
    return sorted(k for k in values if k < time_steps)


def _in_child(time_steps: int, contender: str, remat: Optional[int], rounds: int,
              quick: bool) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak RSS)."""
    args = [sys.executable, "-m", "benchmarks.long_sequences", "--child", str(time_steps),
            contender, str(remat or 0), "--rounds", str(rounds)] + (["--quick"] if quick else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(args, cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{contender} at T={time_steps} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]}, {len(names)} logical cores"
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and T (a smoke test)")
    parser.add_argument("--times", type=int, nargs="+", help=f"T values (default {TIMES})")
    parser.add_argument("--remat", nargs="+",
                        help=f"remat k values, 'sqrt' for round(sqrt(T)) (default {REMATS}; "
                             "--quick: sqrt)")
    parser.add_argument("--torch-max-time", type=int, default=TORCH_MAX_TIME,
                        help="largest T torch packed runs at (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per jaxseq row")
    parser.add_argument("--torch-rounds", type=int, default=1,
                        help="timed steps per torch row (each can take minutes)")
    parser.add_argument("--json", help="append one JSON line per row to this file")
    parser.add_argument("--child", nargs=3, metavar=("T", "CONTENDER", "REMAT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        t, contender, remat = args.child
        print(json.dumps(measure(int(t), contender, int(remat) or None, args.rounds, args.quick)))
        return 0

    times = args.times or (QUICK_TIMES if args.quick else TIMES)
    remats = args.remat or (["sqrt"] if args.quick else list(REMATS))
    torch_max = args.torch_max_time
    model = QUICK_MODEL if args.quick else MODEL
    print(f"# Long sequences: {model['num_layers']}-layer bidirectional LSTM, B={model['batch']} "
          f"I={model['input_size']} H={model['hidden_size']}, lengths U[T/10, T]\n")
    print(f"`python -m benchmarks.long_sequences {' '.join(argv or sys.argv[1:])}`".rstrip()
          + f" on {_cpu()}, Python {platform.python_version()}; load average at start "
          f"{_load()}\n")
    print("| T | contender | step s | CPU s | ms / 1k tokens | temp MiB | peak RSS GiB "
          "| time / default | CPU / default | temp / default | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in times:
        runs = [("jaxseq", None)] + [("jaxseq", k) for k in _remat_values(t, remats)]
        runs += [("torch-packed", None)] if t <= torch_max else []
        default = None
        for contender, remat in runs:
            rounds = args.torch_rounds if contender == "torch-packed" else args.rounds
            row = _in_child(t, contender, remat, rounds, args.quick)
            row["load"] = _load()
            if contender == "jaxseq" and remat is None:
                default = row
            name = contender if remat is None else f"{contender} remat={remat}"
            ratio_t = row["step_s"] / default["step_s"] if default else None
            ratio_c = row["cpu_s"] / default["cpu_s"] if default else None
            ratio_m = (row["temp_mib"] / default["temp_mib"]
                       if default and row["temp_mib"] is not None else None)
            print(f"| {t} | {name} | {row['step_s']:.3f} | {row['cpu_s']:.3f} | "
                  f"{1e6 * row['step_s'] / row['tokens']:.2f} | {_fmt(row['temp_mib'], '.1f')} | "
                  f"{row['rss_gib']:.2f} | {_fmt(ratio_t, '.2f')} | {_fmt(ratio_c, '.2f')} | "
                  f"{_fmt(ratio_m, '.3f')} | {row['load']} |", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"\nload average at end {_load()}; torch packed only up to T={torch_max}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
