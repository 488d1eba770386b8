"""One-off measurements that pick machine-dependent options (run once on your machine, then pass
the result as a static option; jaxseq never times anything behind a call).

Where ``x_t @ W_ih`` is computed is such an option: hoisted into one large GEMM before the loop,
or at every step next to ``h @ W_hh``. Which is faster depends on the processor and its memory
system (on a 2-core AMD EPYC the in-loop projection won, on a 2-core Intel Xeon the hoisted GEMM;
``docs/benchmarks.md``), so :data:`jaxseq.scan.INPUT_PROJECTION_DEFAULTS` holds a per-backend
guess and :func:`measure_input_projection` measures it for a given model and batch shape.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import functional
from jaxseq.recurrent import RecurrentBase
from jaxseq.scan import INPUT_PROJECTION_DEFAULTS, INPUT_PROJECTIONS
from jaxseq.validation import check_size


class InputProjectionTiming(NamedTuple):
    """What :func:`measure_input_projection` measured.

    ``best``: the faster ``input_projection``; ``seconds``: median seconds of one jitted training
    step (forward and backward) per choice; ``default``: what ``input_projection=None`` picks on
    this backend (:data:`jaxseq.scan.INPUT_PROJECTION_DEFAULTS`).
    """

    best: str
    seconds: dict[str, float]
    default: str

    @property
    def speedup(self) -> float:
        """Time of the default choice over time of the best (``1.0``: the default is right)."""
        return self.seconds[self.default] / self.seconds[self.best]


def measure_input_projection(model: RecurrentBase, batch: int, time_steps: int, *,
                             rounds: int = 5, seed: int = 0) -> InputProjectionTiming:
    """Time a training step of ``model`` with ``input_projection="in_loop"`` and ``"hoisted"``.

    Each choice is one ``jax.jit`` of ``value_and_grad`` over the parameters and the input, with
    ``model``'s parameters and static options (``compute_dtype``, ``unroll``, ``forward_mode``,
    ``remat``) and random inputs ``[time_steps, batch, input_size]`` of the parameters' dtype
    with traced random lengths in ``[1, time_steps]`` (packed rows run the same loop, so the
    answer holds for them too). After one warm-up call each, ``rounds`` rounds run both choices
    interleaved (so load from other processes hits both alike) and the medians are compared.
    Compiling both takes a few seconds; the timed steps take ``2 * rounds`` step times.

    Args:
      model: a :class:`jaxseq.LSTM`, :class:`jaxseq.GRU` or :class:`jaxseq.RNN`.
      batch: ``B`` of the batches you train on.
      time_steps: ``T`` (padded length) of those batches.
      rounds: timed rounds (each runs both choices once).
      seed: seed of the random inputs and lengths.

    Returns:
      an :class:`InputProjectionTiming`; pass ``best`` as the layer's ``input_projection``.

    Raises:
      ValueError: a ``batch``, ``time_steps`` or ``rounds`` below 1.

    Example:
      >>> import jaxseq
      >>> from flax import nnx
      >>> from jaxseq.tuning import measure_input_projection
      >>> lstm = jaxseq.LSTM(8, 16, rngs=nnx.Rngs(0))
      >>> timing = measure_input_projection(lstm, batch=4, time_steps=6, rounds=2)
      >>> timing.best in ("in_loop", "hoisted"), sorted(timing.seconds)
      (True, ['hoisted', 'in_loop'])
      >>> faster = jaxseq.LSTM(8, 16, input_projection=timing.best, rngs=nnx.Rngs(0))
    """
    batch = check_size(batch, "batch")
    time_steps = check_size(time_steps, "time_steps")
    rounds = check_size(rounds, "rounds")
    params = model.param_dict()
    dtype = params["weight_ih_l0"].dtype
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((time_steps, batch, model.structure.input_size)), dtype)
    lengths = jnp.asarray(rng.integers(1, time_steps + 1, batch), jnp.int32)

    def step_for(choice: str):
        def loss(p, xx, lens):
            output, _ = functional.recurrent(model.mode, p, xx, lens, unroll=model.unroll,
                                             compute_dtype=model.compute_dtype,
                                             forward_mode=model.forward_mode,
                                             remat=model.remat, input_projection=choice)
            return jnp.sum(output)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    steps = {choice: step_for(choice) for choice in INPUT_PROJECTIONS}
    for step in steps.values():
        jax.block_until_ready(step(params, x, lengths))
    times: dict[str, list[float]] = {choice: [] for choice in steps}
    for _ in range(rounds):
        for choice, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(params, x, lengths))
            times[choice].append(time.perf_counter() - start)
    seconds = {choice: float(np.median(t)) for choice, t in times.items()}
    best = min(seconds, key=seconds.__getitem__)
    default = INPUT_PROJECTION_DEFAULTS.get(jax.default_backend(), "hoisted")
    return InputProjectionTiming(best, seconds, default)
