"""The parity check against torch, installed with jaxseq (needs the ``torch`` extra).

``jaxseq-parity`` (or ``python -m jaxseq.parity``) prints the parity table of this install on the
current JAX backend (CPU, GPU or TPU) and exits non-zero if any error exceeds the tolerance:
:mod:`jaxseq.parity.report`. :mod:`jaxseq.parity.harness` runs one configuration through torch's
packed RNN and jaxseq with identical weights and measures every error; the test suite in
``parity_tests/`` is built on it. Importing this package imports torch.
"""
