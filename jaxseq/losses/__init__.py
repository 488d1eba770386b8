"""Sequence losses, torch-exact on padded batches and packed rows.

* :mod:`jaxseq.losses.masked`: :func:`masked_cross_entropy`, :func:`masked_mse`, :func:`masked_l1`
  (twins of ``torch.nn.functional.cross_entropy`` / ``mse_loss`` / ``l1_loss`` over valid positions).
"""
from jaxseq.losses.masked import masked_cross_entropy, masked_l1, masked_mse

__all__ = ["masked_cross_entropy", "masked_l1", "masked_mse"]
