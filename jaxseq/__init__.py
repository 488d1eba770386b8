"""jaxseq: PyTorch packed-sequence RNN semantics in JAX / Flax NNX, with length masks and ``lax.scan``.

Public API (see ``docs/`` and the README's torch -> jaxseq map):

* layers: :class:`LSTM`, :class:`GRU`, :class:`RNN` (twins of ``torch.nn``), pure math in
  :mod:`jaxseq.functional`;
* torch interop: :func:`load_torch_state_dict`, :func:`torch_state_dict`;
* sequences: :func:`length_mask`, :func:`reverse_padded`, :func:`last_valid`, :func:`check_lengths`;
* dropout: :class:`LockedDropout`, :func:`keep_mask`.
"""
from jaxseq import functional, init, layout
from jaxseq.dropout import LockedDropout, keep_mask
from jaxseq.interop import load_torch_state_dict, torch_state_dict
from jaxseq.masking import last_valid, length_mask, reverse_padded
from jaxseq.recurrent import GRU, LSTM, RNN, RecurrentBase
from jaxseq.validation import check_lengths

__version__ = "0.1.0"

__all__ = [
    "LSTM", "GRU", "RNN", "RecurrentBase", "functional", "init", "layout",
    "load_torch_state_dict", "torch_state_dict",
    "length_mask", "reverse_padded", "last_valid", "check_lengths",
    "LockedDropout", "keep_mask",
]
