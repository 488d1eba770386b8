"""Device check 6, ``jit_compiles``: a jitted training step, two length patterns: one compilation;
eager calls do not recompile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu.cases import SMALL, TOL, Kernel, cast, make_case
from benchmarks.gpu.record import Result, verdict


def check(kernel: Kernel) -> Result:
    from jaxseq import functional as F
    from parity_tests.compiles import count_compiles

    case = make_case(5, SMALL, 2, True, zero_rows=1)
    params, x, hx = (cast(v, jnp.float32) for v in (case.params, case.x, case.hx))
    other = np.roll(case.lengths, 3)
    lengths = [jnp.asarray(case.lengths), jnp.asarray(other)]

    @jax.jit
    def step(p, xx, ll):
        def loss(q):
            out, _ = F.lstm(q, xx, ll, hx, batch_first=True, impl="cudnn")
            return jnp.sum(out ** 2)
        return jax.value_and_grad(loss)(p)

    with count_compiles() as first:
        a = jax.block_until_ready(step(params, x, lengths[0]))
    with count_compiles() as second:
        b = jax.block_until_ready(step(params, x, lengths[1]))
    scan = F.lstm(params, x, lengths[1], hx, batch_first=True, impl="scan")[0]
    loss_err = abs(float(b[0]) - float(jnp.sum(scan ** 2))) / float(jnp.sum(scan ** 2))
    eager = [F.lstm(params, x, ll, hx, batch_first=True, impl="cudnn") for ll in lengths[:1]]
    with count_compiles() as eager_again:
        eager.append(F.lstm(params, x, lengths[1], hx, batch_first=True, impl="cudnn"))
        jax.block_until_ready(eager)
    ok = (first.count == 1 and second.count == 0 and eager_again.count == 0
          and loss_err <= TOL and float(a[0]) != float(b[0]))
    return verdict(ok, f"jit: {first.count} compile(s) for pattern 1, {second.count} for "
                       f"pattern 2; eager: {eager_again.count} for new lengths; loss vs scan "
                       f"{loss_err:.1e}", first=first.names, second=second.names,
                   eager_again=eager_again.names, loss_rel_err=loss_err)
