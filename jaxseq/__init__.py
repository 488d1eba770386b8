"""jaxseq: PyTorch packed-sequence RNN semantics in JAX / Flax NNX, with length masks and ``lax.scan``.

Public API (the README has the torch -> jaxseq map):

* layers: :class:`LSTM`, :class:`GRU`, :class:`RNN` and single-step cells :class:`LSTMCell`,
  :class:`GRUCell`, :class:`RNNCell` (twins of ``torch.nn``); the pure math is in
  :mod:`jaxseq.functional` (over :mod:`jaxseq.scan` and the gate equations in :mod:`jaxseq.gates`),
  initialisers in :mod:`jaxseq.init`;
* decoding: :func:`dot_attention`, :func:`attention_weights`, :func:`teacher_forcing`,
  :func:`greedy_decode`, :func:`beam_search`, :func:`reorder_state` (:mod:`jaxseq.decoding`);
* torch interop (a layer, a cell or a whole model, ``nnx.Sequential`` as ``nn.Sequential``):
  :func:`load_torch_state_dict`, :func:`torch_state_dict`, :func:`key_renamer` (what ``rename=``
  does to a key); :class:`Embedding` (``nn.Embedding`` with ``padding_idx``,
  :func:`embedding_lookup`); :func:`conv_output_lengths`, :func:`nnx_conv_output_lengths`
  (sequence lengths through a convolution, torch's formula);
* sequences (twins of ``torch.nn.utils.rnn``): :func:`pad_sequence`, :func:`unpad_sequence`,
  :func:`length_mask`, :func:`reverse_padded`, :func:`last_valid`, masked pooling;
* losses (:mod:`jaxseq.losses`): :func:`masked_cross_entropy`, :func:`masked_mse`,
  :func:`masked_l1`; :func:`ctc_loss` (twin of ``F.ctc_loss``); :class:`CRF` (twin of
  pytorch-crf; :func:`paths_to_lists` for its decoded paths);
* normalisation: :class:`BatchNorm` (torch's batch norm, features last, statistics over valid
  steps only with ``lengths`` / ``segment_ids``; :mod:`jaxseq.batch_norm`);
* dropout: :class:`LockedDropout`, :class:`EmbeddingDropout`, :func:`embedding_dropout`,
  :func:`keep_mask` (plus ``recurrent_dropout`` / ``weight_drop`` on the layers);
* packed rows (several sequences per row, ``segment_ids=`` on the layers): per-segment helpers
  :func:`segment_last`, :func:`segment_sum`, :func:`segment_mean`, :func:`segment_max`,
  :func:`segment_lengths`, :func:`segment_broadcast`, the per-step masks :func:`segment_starts`,
  :func:`segment_ends` (:mod:`jaxseq.segments`);
* host-side data: :mod:`jaxseq.data` (:func:`bucket_by_length`, :func:`pack_rows`); grain
  pipelines into packed rows or padded batches: :mod:`jaxseq.grain_data` (needs grain; not
  imported here);
* serving: :func:`jaxseq.export.export_model` (a ``jax.export`` artifact, symbolic batch and time);
* validation: :func:`check_lengths`, :func:`checked` (length checks under ``jit``).
"""
from jaxseq import (
    batch_norm,
    data,
    decoding,
    export,
    functional,
    fused,
    init,
    layout,
    segments,
    tuning,
)
from jaxseq.batch_norm import BatchNorm
from jaxseq.cells import GRUCell, LSTMCell, RNNCell
from jaxseq.conv_lengths import conv_output_lengths, nnx_conv_output_lengths
from jaxseq.data import bucket_by_length, pack_rows
from jaxseq.decoding import (
                             attention_weights,
                             beam_search,
                             dot_attention,
                             greedy_decode,
                             reorder_state,
                             teacher_forcing,
)
from jaxseq.dropout import EmbeddingDropout, LockedDropout, embedding_dropout, keep_mask
from jaxseq.embedding import Embedding, embedding_lookup
from jaxseq.interop import key_renamer, load_torch_state_dict, torch_state_dict
from jaxseq.losses import CRF, ctc_loss, masked_cross_entropy, masked_l1, masked_mse, paths_to_lists
from jaxseq.masking import last_valid, length_mask, reverse_padded
from jaxseq.padding import pad_sequence, unpad_sequence
from jaxseq.pooling import masked_max, masked_mean, masked_sum
from jaxseq.recurrent import GRU, LSTM, RNN, RecurrentBase
from jaxseq.segments import (
                             segment_broadcast,
                             segment_ends,
                             segment_last,
                             segment_lengths,
                             segment_max,
                             segment_mean,
                             segment_starts,
                             segment_sum,
)
from jaxseq.validation import check_lengths, checked

__version__ = "0.4.0"

__all__ = [
    "CRF",
    "GRU",
    "LSTM",
    "RNN",
    "BatchNorm",
    "Embedding",
    "EmbeddingDropout",
    "GRUCell",
    "LSTMCell",
    "LockedDropout",
    "RNNCell",
    "RecurrentBase",
    "attention_weights",
    "batch_norm",
    "beam_search",
    "bucket_by_length",
    "check_lengths",
    "checked",
    "conv_output_lengths",
    "ctc_loss",
    "data",
    "decoding",
    "dot_attention",
    "embedding_dropout",
    "embedding_lookup",
    "export",
    "functional",
    "fused",
    "greedy_decode",
    "init",
    "keep_mask",
    "key_renamer",
    "last_valid",
    "layout",
    "length_mask",
    "load_torch_state_dict",
    "masked_cross_entropy",
    "masked_l1",
    "masked_max",
    "masked_mean",
    "masked_mse",
    "masked_sum",
    "nnx_conv_output_lengths",
    "pack_rows",
    "pad_sequence",
    "paths_to_lists",
    "reorder_state",
    "reverse_padded",
    "segment_broadcast",
    "segment_ends",
    "segment_last",
    "segment_lengths",
    "segment_max",
    "segment_mean",
    "segment_starts",
    "segment_sum",
    "segments",
    "teacher_forcing",
    "torch_state_dict",
    "tuning",
    "unpad_sequence",
]


def __getattr__(name: str) -> object:
    """``jaxseq.parity`` on first access (its comparisons need torch; ``import jaxseq`` does not)."""
    if name == "parity":
        import importlib

        return importlib.import_module("jaxseq.parity")
    raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")
