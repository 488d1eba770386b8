"""Length bucketing (jaxseq.data): coverage, padding bounds, determinism and padding reduction."""
import itertools

import numpy as np
import pytest

from jaxseq import data


def skewed_lengths(n=4000, seed=0, cap=400):
    """Log-normal lengths (median ~20, long tail), as in text corpora."""
    rng = np.random.default_rng(seed)
    return np.minimum(np.ceil(rng.lognormal(3.0, 0.8, size=n)).astype(int), cap)


def _all_indices(batches):
    return np.sort(np.concatenate([b.indices for b in batches]))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_example_once_and_padded_length_covers(shuffle, drop_last):
    lengths = skewed_lengths()
    batches = list(data.bucket_by_length(lengths, 32, num_buckets=6, shuffle=shuffle, seed=3,
                                         drop_last=drop_last))
    seen = _all_indices(batches)
    assert len(np.unique(seen)) == len(seen)                 # no example twice
    if drop_last:
        assert all(len(b.indices) == 32 for b in batches)
        assert len(seen) > len(lengths) - 6 * 32              # at most one partial batch per bucket
    else:
        np.testing.assert_array_equal(seen, np.arange(len(lengths)))
    bounds = data.bucket_boundaries(lengths, 6)
    for b in batches:
        assert 1 <= len(b.indices) <= 32
        assert b.padded_length >= lengths[b.indices].max()
        assert b.padded_length in bounds


def test_deterministic_with_seed_and_different_across_seeds():
    lengths = skewed_lengths()

    def epoch(seed):
        return [(b.indices.tolist(), b.padded_length)
                for b in data.bucket_by_length(lengths, 16, seed=seed)]

    assert epoch(7) == epoch(7)
    assert epoch(7) != epoch(8)
    assert sorted(epoch(7)) != sorted(epoch(8))               # members change, not only the order


def test_padding_lower_than_random_batching_on_skewed_lengths():
    lengths = skewed_lengths()
    bucketed = list(data.bucket_by_length(lengths, 32, num_buckets=8, seed=0))
    random_ = list(data.random_batches(lengths, 32, seed=0))
    global_max = 1 - lengths.mean() / lengths.max()
    pad_b, pad_r = data.padding_fraction(lengths, bucketed), data.padding_fraction(lengths, random_)
    # Measured: bucketed ~0.19, random batches padded to their own max ~0.75, global max ~0.90.
    assert pad_b < 0.25
    assert pad_r > 0.6 and global_max > 0.85
    assert pad_b < pad_r / 3
    # ... with a fixed, small set of shapes (<= one full and one partial per bucket).
    assert len(data.batch_shapes(bucketed)) <= 16 < len(data.batch_shapes(random_))
    full_only = list(data.bucket_by_length(lengths, 32, num_buckets=8, drop_last=True))
    assert len(data.batch_shapes(full_only)) <= 8


def _total_padding(lengths, bounds):
    bounds = np.asarray(bounds)
    return int((bounds[np.searchsorted(bounds, lengths)] - lengths).sum())


def test_bucket_boundaries_are_optimal():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(1, 30, size=int(rng.integers(1, 14)))
        k, multiple = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        got = data.bucket_boundaries(lengths, k, multiple)
        assert len(got) <= k and got[-1] >= lengths.max()
        assert all(b % multiple == 0 for b in got)
        candidates = np.unique(-(-lengths // multiple) * multiple)
        best = min(_total_padding(lengths, sorted(set(c) | {candidates[-1]}))
                   for n in range(k) for c in itertools.combinations(candidates[:-1], n))
        assert _total_padding(lengths, got) == best


def test_explicit_boundaries_and_small_example():
    lengths = [3, 9, 4, 10, 2, 8, 0]
    batches = list(data.bucket_by_length(lengths, 2, boundaries=(4, 10), shuffle=False))
    assert [(b.indices.tolist(), b.padded_length) for b in batches] == [
        ([0, 2], 4), ([4, 6], 4), ([1, 3], 10), ([5], 10)]
    assert data.batch_shapes(batches) == {(2, 4), (2, 10), (1, 10)}
    assert data.padding_fraction(lengths, batches) == pytest.approx(1 - 36 / 46)


@pytest.mark.parametrize("kwargs, match", [
    (dict(boundaries=(4, 8)), "exceeds the last boundary"),
    (dict(boundaries=(8, 4, 10)), "strictly increasing"),
    (dict(batch_size=0), "batch_size"),
])
def test_errors(kwargs, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        list(data.bucket_by_length([3, 9], **kwargs))
    with pytest.raises(ValueError, match="integer"):
        data.bucket_boundaries([1.5, 2.0], 2)
    with pytest.raises(ValueError, match=">= 0"):
        data.bucket_boundaries([-1, 2], 2)
