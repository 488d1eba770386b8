"""Multi-process data-parallel training on ``jax.distributed`` (``examples/distributed.py``).

Two processes on localhost (CPU, gloo collectives), each loading its own rows of every batch,
against the same run in one process: the per-step losses must agree (rtol 1e-5). Each worker also
saves and restores an orbax checkpoint across processes, and checks that a jaxseq layer called
outside ``jit`` with lengths on a global array runs (no host read) while a host-side helper asked
for those values raises a clear error.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("wordfreq")
pytest.importorskip("orbax.checkpoint")

from examples import distributed  # noqa: E402


def test_two_processes_give_the_single_process_losses(tmp_path):
    two = distributed.launch(2, steps=4, out=tmp_path)
    one = distributed.launch(1, steps=4, out=tmp_path)
    assert len(two) == len(one) == 4 and two[0] > two[-1]       # it trains
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert (tmp_path / "distributed_ckpt_2").is_dir()
