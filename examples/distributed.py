"""Data-parallel training on several processes with JAX's own runtime (``jax.distributed``).

    python examples/distributed.py --processes 2      # two processes on localhost (CPU)
    python examples/distributed.py --processes 1      # the same run in one process

The launcher starts ``--processes`` copies of this script (``--worker``), which join one
``jax.distributed`` cluster on localhost. Each process:

* builds the same model (the word-language classifier of ``word_language.py``, same seed);
* loads only its own rows of every global batch (per-process data loading) and assembles the global
  batch with ``jax.make_array_from_process_local_data`` on a mesh over every process's devices;
* runs the same jitted training step: XLA reduces the gradients across processes;
* saves an orbax checkpoint together with the others, restores it and checks the parameters.

Process 0 writes the per-step losses to ``--out/distributed_losses_<N>.json``; they equal the
one-process run's to float32 accuracy (``parity_tests/test_distributed.py``). jaxseq inside the
step sees traced lengths; host-side helpers (``pack_rows``, ``bucket_by_length``, a ``Staircase``)
run on each process's local lengths before the global array is made.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python examples/distributed.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.training import RUNS_DIR, TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(processes: int, steps: int, out: Path) -> list[float]:
    """Start ``processes`` workers on localhost, wait for them; returns process 0's losses."""
    port = _free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--processes", str(processes),
           "--port", str(port), "--steps", str(steps), "--out", str(out)]
    workers = [subprocess.Popen(cmd + ["--process-id", str(i)]) for i in range(processes)]
    codes = [w.wait(timeout=600) for w in workers]
    if any(codes):
        raise RuntimeError(f"worker exit codes {codes}")
    return json.loads((out / f"distributed_losses_{processes}.json").read_text())["losses"]


def worker(processes: int, process_id: int, port: int, steps: int, out: Path) -> None:
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=processes,
                                   process_id=process_id)
    import jax.numpy as jnp
    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxseq
    from examples import word_language
    from examples.wordlang_data import batches, build_dataset

    config = dataclasses.replace(TrainConfig(), words_per_language=500, dropout=0.0)
    data = build_dataset(words_per_language=config.words_per_language, seed=config.seed)
    mesh = Mesh(np.array(jax.devices()), ("data",))              # every process's devices
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    model = word_language.build_model(data, config)
    optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
    def global_copy(a):   # every process holds the same value: make it one replicated global array
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(replicated,
                                                          np.asarray(jax.random.key_data(a)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jax.make_array_from_process_local_data(replicated, np.asarray(a))

    for obj in (model, optimizer):
        nnx.update(obj, jax.tree.map(global_copy, nnx.state(obj)))
    model.train()
    per_process = config.batch_size // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    losses = []
    for batch in itertools.islice(batches(data, "train", config.batch_size, shuffle=True,
                                          time_multiple=24), steps):
        local = (batch.tokens[mine], batch.lengths[mine], batch.labels[mine])   # this process's rows
        tokens, lengths, labels = (
            jax.make_array_from_process_local_data(rows, a, (config.batch_size,) + a.shape[1:])
            for a in local)
        loss, _ = word_language.train_step(model, optimizer, tokens, lengths, labels)
        losses.append(float(loss))

    # jaxseq outside jit with lengths on a global array: it never reads them on the host (the
    # traced path runs); a host-side helper asked for their values says why it cannot.
    embedded = model.embedding(tokens)
    eager, _ = model.lstm(embedded, lengths)
    jitted, _ = nnx.jit(lambda m, x, n: m.lstm(x, n))(model, embedded, lengths)
    if not bool(jnp.allclose(eager, jitted, atol=1e-6)):
        raise RuntimeError("eager and jitted outputs differ")
    if processes > 1:
        try:
            jaxseq.scan.staircase(lengths, tokens.shape[1])
            raise RuntimeError("expected a ValueError for global lengths")
        except ValueError as err:
            assert "global array spanning devices of other processes" in str(err), err

    path = (out / f"distributed_ckpt_{processes}").resolve()
    state = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state, force=True)
        ckpt.wait_until_finished()
        restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(restored),
                                                           jax.tree.leaves(state)))
    if not same:
        raise RuntimeError("restored checkpoint differs")
    if jax.process_index() == 0:
        (out / f"distributed_losses_{processes}.json").write_text(json.dumps(
            {"processes": processes, "devices": jax.device_count(), "losses": losses}))
        print(f"{processes} process(es), {jax.device_count()} devices: losses "
              f"{', '.join(f'{v:.4f}' for v in losses)}; checkpoint {path} restored identically")


def main(argv: Optional[Sequence[str]] = None) -> Optional[list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RUNS_DIR)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.processes, args.process_id, args.port, args.steps, args.out)
        return None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return launch(args.processes, args.steps, args.out)


if __name__ == "__main__":
    main()
