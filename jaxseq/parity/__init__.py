"""Parity checks against torch, installed with jaxseq (they need the ``torch`` extra).

* :func:`compare_models` (:mod:`jaxseq.parity.models`): a whole torch model against its JAX port
  (loss, named outputs, the gradient of every torch parameter by name, buffers after the call);
  it returns a :class:`~jaxseq.parity.models.ModelReport` to print and ``assert_close``.
* ``jaxseq-parity`` (or ``python -m jaxseq.parity``) prints the parity table of jaxseq's own layers
  on the current JAX backend (CPU, GPU or TPU) and exits non-zero if any error exceeds the
  tolerance: :mod:`jaxseq.parity.report`. :mod:`jaxseq.parity.harness` runs one layer
  configuration through torch's packed RNN and jaxseq with identical weights and measures every
  error; the test suite in ``parity_tests/`` is built on it.

``import jaxseq.parity`` alone imports neither torch nor these modules; ``jaxseq.parity.compare_models``
(first access) and the submodules import torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["compare_models"]


def __getattr__(name: str) -> Any:
    if name == "compare_models":   # lazy: torch is imported on first use only
        from jaxseq.parity.models import compare_models

        return compare_models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
