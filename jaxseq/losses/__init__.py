"""Sequence losses, torch-exact on padded batches and packed rows.

* :mod:`jaxseq.losses.masked`: :func:`masked_cross_entropy`, :func:`masked_mse`, :func:`masked_l1`
  (twins of ``torch.nn.functional.cross_entropy`` / ``mse_loss`` / ``l1_loss`` over valid positions).
* :mod:`jaxseq.losses.crf`: :class:`CRF`, the twin of pytorch-crf's ``torchcrf.CRF`` (log-likelihood
  and Viterbi decoding), over :func:`crf_log_likelihood` / :func:`crf_decode` / :class:`CRFParams`,
  and :func:`paths_to_lists`.
* :mod:`jaxseq.losses.ctc`: :func:`ctc_loss`, the twin of ``torch.nn.functional.ctc_loss`` /
  ``torch.nn.CTCLoss`` (padded or 1-D targets, packed rows).
"""
from jaxseq.losses.crf import CRF, CRFParams, crf_decode, crf_log_likelihood, paths_to_lists
from jaxseq.losses.ctc import ctc_loss
from jaxseq.losses.masked import masked_cross_entropy, masked_l1, masked_mse

__all__ = ["CRF", "CRFParams", "crf_decode", "crf_log_likelihood", "ctc_loss",
           "masked_cross_entropy", "masked_l1", "masked_mse", "paths_to_lists"]
