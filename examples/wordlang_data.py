"""Word → language data set built from wordfreq's bundled word lists (no downloads), and its loaders.

Shared, unchanged, by the JAX examples (``word_language.py``, ``char_lm.py``) and their torch twins
(``torch_word_language.py``, the parity tests): both sides see the same words, vocabulary, splits and
batches. Only numpy is used here.

Data: for each language, the most frequent words of wordfreq's ``"small"`` list (lower-case, already
case-folded by wordfreq) that are purely alphabetic. Words that occur in the lists of several of the
chosen languages (``de``, ``a``, ``in``, ``radio``...) are ambiguous and dropped everywhere; the first
``words_per_language`` remaining words of each language (by frequency rank) are kept, so the classes
are balanced. wordfreq's code is Apache-2.0, its data CC BY-SA 4.0 (see ``docs/porting.md``).

Batches are padded, not packed: ``tokens [B, T]`` (``PAD = 0`` after each word), ``lengths [B]`` and
``labels [B]``. ``T`` is the longest word of the batch rounded up to a multiple of ``time_multiple``
(few distinct shapes, hence few ``jit`` compilations), and every batch has the same number of rows
``B``: the last, short batch and any rows added to make ``B`` divisible by ``row_multiple`` (e.g. the
device count) are *filler rows* of length 1 whose labels / targets are ``IGNORE = -100``, so that a
loss with ``ignore_index=-100`` (torch) or :func:`jaxseq.losses.masked_cross_entropy` skips them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "tr")
SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(len(SPECIALS))
IGNORE = -100  # label / target of filler and padded positions (torch's default ignore_index)
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: ``words`` (tuple of ``N`` strings) and their language ids ``labels [N]`` (int32)."""

    words: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.words)


@dataclasses.dataclass(frozen=True)
class WordLangData:
    """The data set: languages (class ``i`` is ``languages[i]``), splits and character vocabulary.

    ``chars[i]`` is the symbol of token id ``i``: the 4 ``SPECIALS`` first, then every character of
    the training words in sorted order. Characters never seen in training encode to ``UNK``.
    """

    languages: tuple[str, ...]
    train: Split
    valid: Split
    test: Split
    chars: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def num_classes(self) -> int:
        return len(self.languages)

    def split(self, name: str) -> Split:
        """The split called ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    @functools.cached_property
    def char_ids(self) -> dict[str, int]:
        """``{character: token id}``, the inverse of ``chars``."""
        return {c: i for i, c in enumerate(self.chars)}

    def encode(self, word: str) -> np.ndarray:
        """Token ids ``[len(word)]`` (int32) of ``word``; unknown characters become ``UNK``."""
        return np.array([self.char_ids.get(c, UNK) for c in word], dtype=np.int32)


def _candidate_words(language: str, count: int) -> list[str]:
    """The ``count`` most frequent purely alphabetic words of ``language`` (wordfreq "small" list)."""
    import wordfreq  # optional dependency (the `examples` extra), imported only where needed

    words = wordfreq.top_n_list(language, count, wordlist="small")
    return [w for w in words if w.isalpha()]


def build_dataset(languages: Sequence[str] = LANGUAGES, words_per_language: int = 4000, *,
                  seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                  candidates_per_word: int = 3) -> WordLangData:
    """Build the word → language data set; deterministic for given arguments and wordfreq version.

    Args:
      languages: wordfreq language codes, at least 2.
      words_per_language: words kept per language (after removing words shared between languages).
      seed: seed of the per-language shuffle that assigns words to splits.
      valid_fraction, test_fraction: share of each language's words held out (stratified split).
      candidates_per_word: the ``candidates_per_word * words_per_language`` most frequent words of
        each list are read, enough for ``words_per_language`` unambiguous ones to remain.

    Returns:
      A :class:`WordLangData`; every split holds every language in the same proportion.

    Raises:
      ValueError: fewer than 2 languages, a duplicated language, bad fractions, or a language with
        fewer than ``words_per_language`` unambiguous candidates.
    """
    languages = tuple(languages)
    if len(languages) < 2 or len(set(languages)) != len(languages):
        raise ValueError(f"need at least 2 distinct languages, got {languages}")
    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions valid={valid_fraction}, test={test_fraction}")
    candidates = {lang: _candidate_words(lang, candidates_per_word * words_per_language)
                  for lang in languages}
    shared = Counter(w for words in candidates.values() for w in set(words))
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {name: ([], []) for name in SPLITS}
    for label, lang in enumerate(languages):
        unique = [w for w in dict.fromkeys(candidates[lang]) if shared[w] == 1]
        if len(unique) < words_per_language:
            raise ValueError(f"{lang!r} has only {len(unique)} unambiguous words among its "
                             f"{len(candidates[lang])} candidates; lower words_per_language")
        words = [unique[i] for i in rng.permutation(words_per_language)]
        n_valid = round(valid_fraction * words_per_language)
        n_test = round(test_fraction * words_per_language)
        bounds = {"valid": (0, n_valid), "test": (n_valid, n_valid + n_test),
                  "train": (n_valid + n_test, words_per_language)}
        for name, (lo, hi) in bounds.items():
            parts[name][0].extend(words[lo:hi])
            parts[name][1].extend([label] * (hi - lo))
    splits = {name: Split(tuple(words), np.array(labels, dtype=np.int32))
              for name, (words, labels) in parts.items()}
    chars = SPECIALS + tuple(sorted({c for w in splits["train"].words for c in w}))
    return WordLangData(languages, splits["train"], splits["valid"], splits["test"], chars)


@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded classification batch: ``tokens [B, T]``, ``lengths [B]``, ``labels [B]`` (int32).

    Filler rows have length 1, ``tokens`` all ``PAD`` and label ``IGNORE``.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class LMBatch:
    """A padded next-character batch: ``inputs [B, T]`` = ``BOS`` + word, ``targets [B, T]`` = word +
    ``EOS`` (``IGNORE`` at padding and on filler rows), ``lengths [B]`` = ``len(word) + 1``.
    """

    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _batch_rows(n: int, batch_size: int, shuffle: bool, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of the examples of each batch (the last one may be short)."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _pad(sequences: Sequence[np.ndarray], rows: int, time_multiple: int, fill: int) -> np.ndarray:
    """``[rows, T]`` int32: ``sequences`` left-aligned, ``fill`` elsewhere, ``T`` rounded up."""
    T = _round_up(max(len(s) for s in sequences), time_multiple)
    out = np.full((rows, T), fill, dtype=np.int32)
    for b, s in enumerate(sequences):
        out[b, :len(s)] = s
    return out


def num_batches(data: WordLangData, split: str, batch_size: int) -> int:
    """How many batches :func:`batches` / :func:`lm_batches` yield for ``split``."""
    return math.ceil(len(data.split(split)) / batch_size)


def batches(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
            seed: int = 0, row_multiple: int = 1, time_multiple: int = 8) -> Iterator[Batch]:
    """Classification batches over every word of ``split`` (each exactly once).

    Args:
      data: the data set.
      split: ``"train"``, ``"valid"`` or ``"test"``.
      batch_size: real examples per batch.
      shuffle: permute the split first with ``seed`` (use a new seed per epoch).
      seed: shuffle seed.
      row_multiple: every batch has ``B = round_up(batch_size, row_multiple)`` rows (pad with
        filler rows), e.g. the number of devices a batch is split across.
      time_multiple: ``T`` is the batch's longest word rounded up to a multiple of this.

    Yields:
      :class:`Batch` with ``tokens [B, T]``, ``lengths [B]``, ``labels [B]``.
    """
    part = data.split(split)
    rows = _round_up(batch_size, row_multiple)
    for idx in _batch_rows(len(part), batch_size, shuffle, seed):
        seqs = [data.encode(part.words[i]) for i in idx]
        lengths = np.ones(rows, dtype=np.int32)
        lengths[:len(idx)] = [len(s) for s in seqs]
        labels = np.full(rows, IGNORE, dtype=np.int32)
        labels[:len(idx)] = part.labels[idx]
        yield Batch(_pad(seqs, rows, time_multiple, PAD), lengths, labels)


def lm_batches(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
               seed: int = 0, row_multiple: int = 1, time_multiple: int = 8) -> Iterator[LMBatch]:
    """Next-character batches over every word of ``split``; arguments as :func:`batches`.

    Yields:
      :class:`LMBatch`: ``inputs [B, T]`` (``BOS`` + word), ``targets [B, T]`` (word + ``EOS``,
      ``IGNORE`` at padding), ``lengths [B]`` (``len(word) + 1``; 1 for filler rows).
    """
    part = data.split(split)
    rows = _round_up(batch_size, row_multiple)
    for idx in _batch_rows(len(part), batch_size, shuffle, seed):
        words = [data.encode(part.words[i]) for i in idx]
        inputs = [np.concatenate([[BOS], w]) for w in words]
        targets = [np.concatenate([w, [EOS]]) for w in words]
        lengths = np.ones(rows, dtype=np.int32)
        lengths[:len(idx)] = [len(s) for s in inputs]
        padded_inputs = _pad(inputs + [np.array([BOS])] * (rows - len(idx)), rows, time_multiple, PAD)
        yield LMBatch(padded_inputs, lengths, _pad(targets, rows, time_multiple, IGNORE))


@dataclasses.dataclass(frozen=True)
class ReversalBatch:
    """A word-reversal (seq2seq) batch: ``source [B, S]`` the word, ``source_lengths [B]``,
    ``target_in [B, T]`` = ``BOS`` + reversed word, ``target_out [B, T]`` = reversed word + ``EOS``
    (``IGNORE`` at padding and on filler rows). Filler rows have a source of length 1 (``PAD``).
    """

    source: np.ndarray
    source_lengths: np.ndarray
    target_in: np.ndarray
    target_out: np.ndarray


#: Longest word of the data set (20) + EOS: every reversal batch has this target length, and
#: sources are padded to ``REVERSAL_LENGTH - 1``, so one compilation serves every batch.
REVERSAL_LENGTH = 21


def reversal_batches(data: WordLangData, split: str, batch_size: int, *, shuffle: bool = False,
                     seed: int = 0, max_words: int | None = None) -> Iterator[ReversalBatch]:
    """Word-reversal batches over ``split`` (the first ``max_words`` words of it, if given): the
    model reads a word and must write it backwards. Every batch has ``batch_size`` rows."""
    part = data.split(split)
    n = len(part) if max_words is None else min(max_words, len(part))
    S, T = REVERSAL_LENGTH - 1, REVERSAL_LENGTH
    for idx in _batch_rows(n, batch_size, shuffle, seed):
        words = [data.encode(part.words[i]) for i in idx]
        if max(len(w) for w in words) > S:
            raise ValueError(f"a word is longer than {S} characters")
        source = np.full((batch_size, S), PAD, np.int32)
        lengths = np.ones(batch_size, np.int32)
        target_in = np.full((batch_size, T), PAD, np.int32)
        target_out = np.full((batch_size, T), IGNORE, np.int32)
        target_in[:, 0] = BOS
        for b, w in enumerate(words):
            source[b, :len(w)] = w
            lengths[b] = len(w)
            target_in[b, 1:len(w) + 1] = w[::-1]
            target_out[b, :len(w)] = w[::-1]
            target_out[b, len(w)] = EOS
        yield ReversalBatch(source, lengths, target_in, target_out)
