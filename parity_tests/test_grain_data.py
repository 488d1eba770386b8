"""grain pipelines (``jaxseq.grain_data``): grain's packers into jaxseq's packed rows, per-sequence
labels and CTC targets into ``[rows, S]``, results back to the source sequences, padded batches.

The packed batches go through a jaxseq layer and CTC loss and are compared, sequence by sequence,
with torch run on each sequence alone (float64)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxseq
from jaxseq.segments import check_segment_ids

grain = pytest.importorskip("grain")
from jaxseq.grain_data import pack_sequences, pad_and_batch, unpack_per_sequence  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T, S, N_TARGET, C = 16, 4, 5, 6           # row length, segments per row, CTC target room, classes


def _records(count=40, features=3, seed=0):
    """Sequences of 1..12 steps, a label each, CTC targets of 0..N_TARGET labels in [1, C)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        n = int(rng.integers(1, 13))
        records.append({"x": rng.standard_normal((n, features)),
                        "label": np.int32(rng.integers(0, 3)),
                        "index": np.int32(i),
                        "targets": rng.integers(1, C, int(rng.integers(0, min(n // 2, N_TARGET) + 1)))})
    return records


def _packed(records, **kwargs):
    source = grain.MapDataset.source(records).shuffle(seed=1)
    return pack_sequences(source, T, max_segments=S,
                          per_sequence={"label": None, "index": None, "targets": N_TARGET},
                          padding={"index": -1, "label": -100}, **kwargs)


def test_import_jaxseq_does_not_import_grain():
    code = ("import sys, jaxseq, jaxseq.grain_data\n"
            "assert 'grain' not in sys.modules, sorted(m for m in sys.modules if 'grain' in m)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("best_fit", [True, False])
def test_rows_carry_tokens_labels_targets_and_index_of_every_sequence_once(best_fit):
    records = _records()
    rows = list(_packed(records, best_fit=best_fit, num_packing_bins=8))
    seen = []
    for row in rows:
        ids = row["segment_ids"]
        assert ids.shape == (T,) and row["x"].shape == (T, 3) and row["label"].shape == (S,)
        assert row["targets"].shape == (S, N_TARGET) and row["targets_lengths"].shape == (S,)
        check_segment_ids(ids[None], T, 1, S, batch_first=True)      # jaxseq's layout rule
        count = int(ids.max())
        assert (row["index"][count:] == -1).all() and (row["label"][count:] == -100).all()
        assert (row["x"][ids == 0] == 0).all() and (row["targets_lengths"][count:] == 0).all()
        for s in range(1, count + 1):
            source = records[int(row["index"][s - 1])]
            np.testing.assert_array_equal(row["x"][ids == s], source["x"])
            np.testing.assert_array_equal(row["positions"][ids == s], np.arange(len(source["x"])))
            assert row["label"][s - 1] == source["label"]
            m = len(source["targets"])
            assert row["targets_lengths"][s - 1] == m
            np.testing.assert_array_equal(row["targets"][s - 1, :m], source["targets"])
            seen.append(int(row["index"][s - 1]))
    assert sorted(seen) == list(range(len(records)))
    density = sum(len(r["x"]) for r in records) / (len(rows) * T)
    assert density > 0.7, density                                   # rows are actually packed


def test_grain_packed_batches_match_torch_per_sequence():
    """A grain pipeline -> GRU on packed rows + CTC per segment -> back to each sequence: equal
    to torch run on each sequence alone (float64)."""
    records = _records(count=24, seed=2)
    gru_t = torch.nn.GRU(3, 4, bidirectional=True).double()
    head_t = torch.nn.Linear(8, C).double()
    gru = jaxseq.load_torch_state_dict(
        jaxseq.GRU(3, 4, bidirectional=True, batch_first=True, param_dtype=jnp.float64,
                   rngs=nnx.Rngs(0)), gru_t.state_dict())
    weight, bias = (jnp.asarray(p.detach().numpy()) for p in (head_t.weight, head_t.bias))
    batches = pad_and_batch(_packed(records, num_packing_bins=6), 3,
                            padding={"index": -1, "label": -100})
    h_rows, loss_rows, index_rows = [], [], []
    for batch in batches:
        ids = jnp.asarray(batch["segment_ids"])                       # [3, T]
        out, h_n = gru(jnp.asarray(batch["x"]), segment_ids=ids, max_segments=S)
        log_probs = jax.nn.log_softmax(out @ weight.T + bias)            # [3, T, C]
        loss_rows.append(jaxseq.ctc_loss(log_probs, batch["targets"], None,
                                         batch["targets_lengths"], segment_ids=ids,
                                         batch_first=True, reduction="none", zero_infinity=True))
        h_rows.append(jnp.moveaxis(h_n, 0, 2))                        # [3, S, D, H]
        index_rows.append(batch["index"])
    order, h_seq = unpack_per_sequence(np.concatenate(h_rows), np.concatenate(index_rows))
    _, loss_seq = unpack_per_sequence(np.concatenate(loss_rows), np.concatenate(index_rows))
    assert order.tolist() == list(range(len(records)))
    for i, record in enumerate(records):
        x_t = torch.from_numpy(record["x"])[:, None]                  # [L, 1, 3]
        out_t, h_t = gru_t(x_t)
        np.testing.assert_allclose(h_seq[i], h_t[:, 0].detach().numpy(), rtol=1e-12, atol=1e-14)
        loss_t = torch.nn.functional.ctc_loss(
            head_t(out_t).log_softmax(-1), torch.from_numpy(record["targets"])[None],
            [len(record["x"])], [len(record["targets"])], reduction="none", zero_infinity=True)
        np.testing.assert_allclose(loss_seq[i], loss_t.item(), rtol=1e-12, atol=1e-12)


def test_pad_and_batch_gives_fixed_shapes_lengths_and_empty_filler_rows():
    words = [{"tokens": np.arange(1, n + 1, dtype=np.int32), "label": np.int32(n)}
             for n in (3, 9, 1, 4, 2)]
    batches = list(pad_and_batch(grain.MapDataset.source(words), 2, sequences=["tokens"],
                                 padding={"label": -100}, time_multiple=8, num_rows=4))
    assert [b["tokens"].shape for b in batches] == [(4, 16), (4, 8), (4, 8)]
    assert [b["lengths"].tolist() for b in batches] == [[3, 9, 0, 0], [1, 4, 0, 0], [2, 0, 0, 0]]
    assert batches[2]["label"].tolist() == [2, -100, -100, -100]
    assert (batches[0]["tokens"][1, :9] == np.arange(1, 10)).all()
    assert (batches[0]["tokens"][1, 9:] == 0).all() and (batches[0]["tokens"][2:] == 0).all()
    lstm = jaxseq.LSTM(1, 2, batch_first=True, rngs=nnx.Rngs(0))
    out, _ = lstm(batches[2]["tokens"][..., None].astype(np.float32), batches[2]["lengths"])
    assert (np.asarray(out)[1:] == 0).all()                             # filler rows: padding


def test_packed_rows_batch_to_one_shape_with_empty_rows():
    rows = _packed(_records(count=10), num_packing_bins=4)
    batches = list(pad_and_batch(rows, 4, padding={"index": -1, "label": -100}))
    assert {b["segment_ids"].shape for b in batches} == {(4, T)}
    last = batches[-1]
    empty = last["segment_ids"].max(axis=1) == 0
    assert empty.any() and (last["index"][empty] == -1).all()
    assert (last["targets_lengths"][empty] == 0).all()


@pytest.mark.parametrize("record, match", [
    ({"x": np.zeros((T + 1, 3)), "label": np.int32(0)}, "a sequence of length 17 does not fit"),
    ({"x": np.zeros((0, 3)), "label": np.int32(0)}, "a sequence of length 0 cannot be packed"),
    ({"x": np.zeros((2, 3)), "y": np.zeros(3), "label": np.int32(0)},
     r"must be arrays \[L, ...\] of one length L, got lengths \{'x': 2, 'y': 3\}"),
    ({"x": np.zeros((2, 3)), "label": np.zeros(N_TARGET + 1, np.int32)},
     r"per_sequence\['label'\] = 5: each value must be an array \[M, ...\] with M <= 5"),
    ({"x": torch.zeros(2, 3), "label": np.int32(0)}, r"`x` is a torch.Tensor"),
])
def test_bad_sequences_raise_while_iterating(record, match):
    good = {k: np.zeros((2, 3)) if k == "x" else v for k, v in record.items()}
    width = N_TARGET if np.ndim(record["label"]) else None
    rows = pack_sequences(grain.MapDataset.source([good, record]), T, max_segments=S,
                          per_sequence={"label": width})
    with pytest.raises((ValueError, TypeError), match=match):
        list(rows)


def test_bad_arguments_and_unpacking_errors():
    source = grain.MapDataset.source([{"x": np.zeros(2), "segment_ids": np.zeros(2)}])
    with pytest.raises(ValueError, match=r"feature names \['segment_ids'\] are taken"):
        pack_sequences(source, T, max_segments=S)
    with pytest.raises(ValueError, match=r"per_sequence names \['label'\] are not features"):
        pack_sequences(grain.MapDataset.source([{"x": np.zeros(2)}]), T, max_segments=S,
                       per_sequence={"label": None})
    with pytest.raises(ValueError, match="num_rows=1 must be >= batch_size=2"):
        pad_and_batch(source, 2, num_rows=1)
    with pytest.raises(ValueError, match="sequence index 3 occurs twice"):
        unpack_per_sequence(np.zeros((2, 2)), np.array([[3, -1], [3, 0]]))
    with pytest.raises(ValueError, match="index must be an integer array of the leading shape"):
        unpack_per_sequence(np.zeros((2, 2)), np.zeros((2, 3), np.int32))
