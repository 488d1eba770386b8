"""grain pipelines into jaxseq's two batch layouts: packed rows, and padded batches with lengths.

`grain <https://github.com/google/grain>`_ loads, shuffles and batches the data of JAX training
scripts (``grain.MapDataset.source(records).shuffle(seed=...).map(...)``). Its packers,
``grain.experimental.FirstFitPackIterDataset`` and ``BestFitPackIterDataset``, lay sequences end to
end in rows and emit ``<feature>_segment_ids`` numbered ``1..k`` from ``t = 0``, then ``0``: jaxseq's
packed-row layout as it is (``LSTM(x, segment_ids=ids, max_segments=S)``). This module adds what
they do not do:

* :func:`pack_sequences`: per-sequence values (a class label, a sequence index) and ragged
  per-sequence targets (CTC label sequences) through the packer, into the ``[rows, S]`` /
  ``[rows, S, N]`` layout of jaxseq's per-segment helpers and losses
  (:func:`jaxseq.segment_mean`, ``masked_cross_entropy(..., present)``, ``ctc_loss(...,
  segment_ids=)``, ``CRF(..., segment_ids=)``), with one ``segment_ids [T]`` per row;
* :func:`unpack_per_sequence`: per-segment results back to the source sequences, by a carried
  index;
* :func:`pad_and_batch`: fixed-shape batches, as ``jit`` wants them: one sequence per row padded to
  a multiple of ``time_multiple`` with ``lengths [B]``, or stacked packed rows; the last, short
  batch is filled up with empty rows (length 0 / segment ids 0).

grain is an optional dependency (``pip install "jaxseq[grain]"``, grain >= 0.2.13, the first with
``BestFitPackIterDataset`` and ``max_sequences_per_bin``); it is imported when a function here is
called, never by ``import jaxseq``.

When to use which: grain's packers work online, over a window of ``num_packing_bins`` rows, on a
stream of any size, reshuffled every epoch; :func:`jaxseq.pack_rows` packs a whole data set
offline (best-fit decreasing over all lengths: the densest rows, a deterministic layout, cut long
sequences with ``split_long``), for data that fits in memory and a fixed layout.
:func:`jaxseq.bucket_by_length` groups padded batches by length for the staircase schedule, and
:func:`pad_and_batch` pads random batches to a few lengths (``time_multiple``).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from jaxseq.validation import check_size, reject_torch

#: grain's first version with ``BestFitPackIterDataset`` and ``max_sequences_per_bin``.
MIN_GRAIN_VERSION = "0.2.13"


def _grain() -> Any:
    """``import grain`` with an error that names the extra, and its version checked."""
    try:
        import grain
        import grain.experimental
    except ImportError as err:
        raise ImportError('jaxseq.grain_data needs grain: pip install "jaxseq[grain]" (grain >= '
                          f'{MIN_GRAIN_VERSION})') from err
    if not hasattr(grain.experimental, "BestFitPackIterDataset"):
        raise ImportError(f"jaxseq.grain_data needs grain >= {MIN_GRAIN_VERSION} "
                          "(BestFitPackIterDataset, max_sequences_per_bin); upgrade grain")
    return grain


_SEGMENT_IDS, _POSITIONS, _LENGTHS = "segment_ids", "positions", "lengths"


def _serial_reads(grain: Any) -> Any:
    """Read options without reader threads: the packer is sequential, and on few cores grain's
    default 16 prefetch threads cost more than the reads (4x slower measured on 2 cores)."""
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def pack_sequences(dataset: Any, row_length: int, *, max_segments: int,
                   per_sequence: Optional[Mapping[str, Optional[int]]] = None,
                   padding: Optional[Mapping[str, Any]] = None, num_packing_bins: int = 32,
                   best_fit: bool = True, seed: int = 0) -> Any:
    """Pack a grain dataset of sequences into rows of ``row_length`` steps, jaxseq's layout.

    Each element of ``dataset`` is a dict: per-token features (every key not in
    ``per_sequence``), arrays ``[L, ...]`` of one length ``L >= 1``; and the ``per_sequence``
    values. Each element of the result is one row, a dict of:

    * every per-token feature ``[T, ...]`` (``T = row_length``; ``padding[name]``, default 0, at
      padded steps);
    * ``segment_ids`` ``int32 [T]`` (``1..k`` as contiguous runs from ``t = 0``, then 0) and
      ``positions`` ``int32 [T]`` (each token's index in its sequence);
    * a per-sequence value (``per_sequence[name]`` is ``None``: a scalar or fixed-shape array
      such as a class label or the sequence's index in the data set) as ``[S, ...]``, entry
      ``s - 1`` for segment ``s`` (``S = max_segments``; ``padding[name]`` in unused slots);
    * a ragged per-sequence array (``per_sequence[name] = N``: at most ``N`` values, e.g. CTC
      targets) as ``[S, N, ...]`` plus ``<name>_lengths`` ``int32 [S]``.

    It runs grain's ``BestFitPackIterDataset`` (``best_fit=False``:
    ``FirstFitPackIterDataset``) with ``max_sequences_per_bin=max_segments``, so ``S`` is one static
    number. Per-sequence values travel through the packer as per-token features (the value repeated
    at every step of its sequence) and are read back at the segment's steps; ragged ones as a
    feature of their own (room ``max_segments * N`` per row), whose segment ids name their owner.
    Batch the rows with :func:`pad_and_batch` (fixed shapes) or grain's ``.batch``.

    Args:
      dataset: a ``grain.MapDataset`` or ``grain.IterDataset`` of dicts (shuffle it first: the
        packer keeps the order of what it is given, within its window of rows). A
        ``MapDataset`` is read without reader threads; for parallel reads of costly records
        pass ``dataset.to_iter_dataset(grain.ReadOptions(...))`` instead.
      row_length: ``T``; a sequence longer than this raises (cut it first, or use
        :func:`jaxseq.pack_rows` with ``split_long=True``).
      max_segments: ``S``, the most sequences in one row.
      per_sequence: ``{name: None | N}`` (see above); default none.
      padding: ``{name: value}`` at padded steps and unused slots; default 0.
      num_packing_bins: rows the packer fills at a time (more: denser rows, more memory).
      best_fit: best-fit (default) or first-fit packing.
      seed: seed of the order in which each window's rows are emitted.

    Returns:
      A ``grain.IterDataset`` of rows. Iterating raises ``ValueError`` for an element of another
      shape: per-token features of different lengths, an empty sequence, a sequence longer than
      ``row_length`` or a ragged value longer than its ``N``.

    >>> import grain, numpy as np
    >>> words = [{"x": np.arange(1, n + 1), "label": np.int32(n % 2)} for n in (3, 2, 4, 1)]
    >>> rows = pack_sequences(grain.MapDataset.source(words), 5, max_segments=2,
    ...                       per_sequence={"label": None})
    >>> for row in rows:
    ...     print("x", row["x"].tolist(), "ids", row["segment_ids"].tolist(), "label",
    ...           row["label"].tolist())
    x [1, 2, 3, 1, 2] ids [1, 1, 1, 2, 2] label [1, 0]
    x [1, 2, 3, 4, 1] ids [1, 1, 1, 1, 2] label [0, 1]
    """
    grain = _grain()
    row_length = check_size(row_length, "row_length")
    max_segments = check_size(max_segments, "max_segments")
    per_sequence = dict(per_sequence or {})
    for name, width in per_sequence.items():
        if width is not None:
            check_size(width, f"per_sequence[{name!r}]")
    padding = dict(padding or {})
    spec = _PackSpec(row_length, max_segments, tuple(per_sequence.items()))
    iterable = (dataset.to_iter_dataset(_serial_reads(grain)) if hasattr(dataset, "to_iter_dataset")
                else dataset)
    first = _first_element(dataset)
    tokens = tuple(k for k in first if k not in per_sequence)
    _check_names(first, tokens, per_sequence)
    lengths = dict.fromkeys(first, row_length)
    lengths.update({name: max_segments * width for name, width in per_sequence.items()
                    if width is not None})
    packer = (grain.experimental.BestFitPackIterDataset if best_fit
              else grain.experimental.FirstFitPackIterDataset)
    packed = packer(iterable.map(functools.partial(_as_tokens, spec=spec, tokens=tokens)),
                    length_struct=lengths, num_packing_bins=num_packing_bins, seed=seed,
                    padding_struct={name: padding.get(name, 0) if name in tokens else 0
                                    for name in lengths},
                    max_sequences_per_bin=max_segments)
    return packed.map(functools.partial(_as_segments, spec=spec, tokens=tokens, padding=padding))


class _PackSpec(NamedTuple):
    """The static description of a packing (arguments of :func:`pack_sequences`)."""

    row_length: int
    max_segments: int
    per_sequence: tuple[tuple[str, Optional[int]], ...]


def _first_element(dataset: Any) -> Mapping[str, Any]:
    """The first element, to learn the feature names (a MapDataset by index, else by iterating)."""
    element = dataset[0] if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") \
        else next(iter(dataset))
    if not isinstance(element, Mapping):
        raise TypeError(f"pack_sequences needs dataset elements that are dicts of arrays, got "
                        f"{type(element).__name__}")
    return element


def _check_names(first: Mapping[str, Any], tokens: tuple[str, ...],
                 per_sequence: Mapping[str, Optional[int]]) -> None:
    missing = sorted(set(per_sequence) - set(first))
    if missing:
        raise ValueError(f"per_sequence names {missing} are not features of the elements "
                         f"(features: {sorted(first)})")
    if not tokens:
        raise ValueError("the elements need at least one per-token feature (an array [L, ...]) "
                         "besides the per_sequence values")
    taken = {_SEGMENT_IDS, _POSITIONS} | {f"{n}_{_LENGTHS}" for n, w in per_sequence.items()
                                          if w is not None}
    clash = sorted(taken & set(first))
    if clash:
        raise ValueError(f"feature names {clash} are taken by the packed rows' own outputs; "
                         "rename them")


def _as_tokens(element: Mapping[str, Any], *, spec: _PackSpec, tokens: tuple[str, ...]
               ) -> dict[str, np.ndarray]:
    """One sequence as the packer's input: per-sequence values repeated at every step."""
    for name, value in element.items():
        reject_torch(value, name)
    arrays = {name: np.asarray(element[name]) for name in tokens}
    sizes = {name: a.shape[0] if a.ndim else None for name, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"the per-token features of a sequence must be arrays [L, ...] of one "
                         f"length L, got lengths {sizes}")
    length = int(arrays[tokens[0]].shape[0])
    if length == 0:
        raise ValueError("a sequence of length 0 cannot be packed (it would hold a segment id "
                         "without a step): filter empty sequences out first")
    if length > spec.row_length:
        raise ValueError(f"a sequence of length {length} does not fit in rows of "
                         f"row_length={spec.row_length}: use longer rows, or cut long sequences "
                         "first (jaxseq.pack_rows(..., split_long=True) does it offline)")
    for name, width in spec.per_sequence:
        value = np.asarray(element[name])
        if width is None:
            arrays[name] = np.broadcast_to(value, (length, *value.shape)).copy()
            continue
        if value.ndim == 0 or value.shape[0] > width:
            raise ValueError(f"per_sequence[{name!r}] = {width}: each value must be an array "
                             f"[M, ...] with M <= {width}, got shape {value.shape}")
        arrays[name] = value
    return arrays


def _as_segments(row: Mapping[str, np.ndarray], *, spec: _PackSpec, tokens: tuple[str, ...],
                 padding: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A packed row in jaxseq's layout: one ``segment_ids``, per-sequence values ``[S, ...]``."""
    ids = row[f"{tokens[0]}_segment_ids"].astype(np.int32)
    out = {name: row[name] for name in tokens}
    out[_SEGMENT_IDS], out[_POSITIONS] = ids, row[f"{tokens[0]}_positions"].astype(np.int32)
    S, valid = spec.max_segments, ids > 0
    for name, width in spec.per_sequence:
        values = row[name]
        fill = padding.get(name, 0)
        if width is None:
            per_segment = np.full((S, *values.shape[1:]), fill, values.dtype)
            per_segment[ids[valid] - 1] = values[valid]          # every step holds the same value
        else:
            owner = row[f"{name}_segment_ids"]
            where = row[f"{name}_positions"]
            kept = owner > 0
            per_segment = np.full((S, width, *values.shape[1:]), fill, values.dtype)
            per_segment[owner[kept] - 1, where[kept]] = values[kept]
            out[f"{name}_{_LENGTHS}"] = np.bincount(owner[kept], minlength=S + 1)[1:].astype(
                np.int32)
        out[name] = per_segment
    return out


def pad_and_batch(dataset: Any, batch_size: int, *, sequences: Sequence[str] = (),
                  padding: Optional[Mapping[str, Any]] = None, time_multiple: int = 1,
                  num_rows: Optional[int] = None) -> Any:
    """Batches of one static shape: grain's ``.batch`` with jaxseq's padding.

    Every batch stacks ``batch_size`` elements (dicts of arrays). The ``sequences`` features
    (``[L, ...]``, one ``L`` per element) are padded at the end to ``T`` = the batch's longest
    ``L`` rounded up to a multiple of ``time_multiple`` (few distinct shapes, hence few
    compilations), and ``lengths`` ``int32 [B]`` is added; other features are stacked as they
    are (packed rows from :func:`pack_sequences` need no ``sequences``). Every batch has
    ``num_rows`` rows (default ``batch_size``; more, e.g., to make it a multiple of the device
    count): the missing ones, and those of the last, short batch, are empty rows (every feature
    ``padding[name]``, default 0; length 0; segment ids 0), which jaxseq's layers, masks and
    losses skip.

    Args:
      dataset: a ``grain.MapDataset`` or ``IterDataset`` of dicts.
      batch_size: real elements per batch.
      sequences: the ragged per-token features.
      padding: ``{name: value}`` at padded steps and in empty rows (e.g. ``{"label": -100}``).
      time_multiple: ``T`` is rounded up to a multiple of this.
      num_rows: rows of every batch, ``>= batch_size``.

    Returns:
      The batched dataset (of the same kind as ``dataset``).

    >>> import grain, numpy as np
    >>> words = [{"x": np.arange(1, n + 1), "y": np.int32(n)} for n in (3, 1, 5)]
    >>> batches = pad_and_batch(grain.MapDataset.source(words), 2, sequences=["x"],
    ...                         padding={"y": -1}, time_multiple=4)
    >>> for batch in batches:
    ...     print("x", batch["x"].shape, "lengths", batch["lengths"].tolist(), "y",
    ...           batch["y"].tolist())
    x (2, 4) lengths [3, 1] y [3, 1]
    x (2, 8) lengths [5, 0] y [5, -1]
    """
    batch_size = check_size(batch_size, "batch_size")
    rows = batch_size if num_rows is None else check_size(num_rows, "num_rows")
    if rows < batch_size:
        raise ValueError(f"num_rows={rows} must be >= batch_size={batch_size}")
    if _LENGTHS in sequences:
        raise ValueError("`lengths` is the name of pad_and_batch's own output; rename that feature")
    stack = functools.partial(_stack, rows=rows, sequences=tuple(sequences),
                              padding=dict(padding or {}),
                              time_multiple=check_size(time_multiple, "time_multiple"))
    return dataset.batch(batch_size, batch_fn=stack)


def _stack(elements: Sequence[Mapping[str, Any]], *, rows: int, sequences: tuple[str, ...],
           padding: Mapping[str, Any], time_multiple: int) -> dict[str, np.ndarray]:
    """The ``batch_fn`` of :func:`pad_and_batch`."""
    out: dict[str, np.ndarray] = {}
    lengths = np.zeros(rows, np.int32)
    for name in elements[0]:
        reject_torch([e[name] for e in elements], name)
        values = [np.asarray(e[name]) for e in elements]
        fill = padding.get(name, 0)
        if name in sequences:
            sizes = [v.shape[0] for v in values]
            T = -(-max(sizes) // time_multiple) * time_multiple
            batch = np.full((rows, T, *values[0].shape[1:]), fill, values[0].dtype)
            for b, v in enumerate(values):
                batch[b, :len(v)] = v
            if name == sequences[0]:
                lengths[:len(values)] = sizes
            elif sizes != lengths[:len(values)].tolist():
                raise ValueError(f"the `sequences` features of an element must have one length; "
                                 f"{name!r} has lengths {sizes}, {sequences[0]!r} "
                                 f"{lengths[:len(values)].tolist()}")
        else:
            batch = np.full((rows, *values[0].shape), fill, values[0].dtype)
            batch[:len(values)] = np.stack(values)
        out[name] = batch
    if sequences:
        out[_LENGTHS] = lengths
    return out


def unpack_per_sequence(per_segment: Any, index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment results back to the source sequences, by the index carried through packing.

    Args:
      per_segment: ``[..., S, *F]`` per-segment results (e.g. a layer's ``h_n[-1]`` moved to
        ``[rows, S, H]``, :func:`jaxseq.segment_mean`, a per-sequence loss ``[rows, S]``), over any
        leading axes (rows, or batches of rows).
      index: ``int [..., S]``: each slot's sequence index (a ``per_sequence`` value of
        :func:`pack_sequences`), negative for an unused slot (pad it with ``-1``).

    Returns:
      ``(indices, values)``: the indices present, increasing, and ``values [n, *F]`` aligned with
      them.

    Raises:
      ValueError: shapes that do not line up, or an index that occurs twice.

    >>> unpack_per_sequence(np.array([[10., 11.], [12., 0.]]), np.array([[2, 0], [1, -1]]))
    (array([0, 1, 2]), array([11., 12., 10.]))
    """
    values, index = np.asarray(per_segment), np.asarray(index)
    if values.shape[:index.ndim] != index.shape or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"index must be an integer array of the leading shape of per_segment "
                         f"{values.shape[:index.ndim]}, got {index.dtype} {index.shape}")
    flat_index = index.reshape(-1)
    present = flat_index >= 0
    order = np.argsort(flat_index[present], kind="stable")
    indices = flat_index[present][order]
    if indices.size > 1 and (np.diff(indices) == 0).any():
        twice = int(indices[np.flatnonzero(np.diff(indices) == 0)[0]])
        raise ValueError(f"sequence index {twice} occurs twice (several epochs in one call?)")
    return indices, values.reshape(-1, *values.shape[index.ndim:])[present][order]
