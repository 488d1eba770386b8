"""Word segmentation data: English words run together without spaces, tagged B / I per character.

Shared, unchanged, by ``segment_crf.py`` (JAX) and its torch twin ``torch_segment_crf.py``: both
see the same lines, batches, decodings and metrics. numpy only.

Data (nothing is downloaded): a vocabulary of the ``num_words`` most frequent English words of
wordfreq's ``"small"`` list made of ``a-z`` only; each *line* is 3 to 8 words drawn with
probability proportional to ``frequency ** 0.5`` (flattened Zipf: frequent words stay frequent,
rare ones still appear) and concatenated without spaces, at most :data:`ROW_LENGTH` characters.
Each character is tagged ``B`` (a word starts here) or ``I``. Train, valid and test lines are drawn
independently from the same distribution (they share the vocabulary, as a segmenter's dictionary
would). Deterministic for given arguments (and wordfreq version). wordfreq's data is CC BY-SA 4.0.

Batches (:func:`batches`) hold the same lines in two layouts: *packed rows* for the JAX model
(:func:`jaxseq.pack_rows`: lines end to end in rows of :data:`ROW_LENGTH`, ``segment_ids`` telling
them apart; one static shape ``[rows_per_batch, ROW_LENGTH]``) and a *padded batch* of one line
per row with ``lengths`` for the torch twin (``pack_padded_sequence``), with the map between them.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from examples.training import History, parse_config, save_figure

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PAD = 0
VOCAB_SIZE = len(ALPHABET) + 1       # PAD, then a-z
TAGS = ("B", "I")
B_TAG, I_TAG = 0, 1
NUM_TAGS = len(TAGS)
MIN_WORDS, MAX_WORDS = 3, 8
#: Characters per packed row; also the longest line.
ROW_LENGTH = 64
#: Lines per packed row at most (the static ``max_segments``).
MAX_SEGMENTS = 8
SPLITS = ("train", "valid", "test")


def encode(text: str) -> np.ndarray:
    """Token ids ``[len(text)]`` (int32) of lowercase ``a-z`` text (``a`` is 1)."""
    if not re.fullmatch(f"[{ALPHABET}]*", text):
        raise ValueError(f"text must be lowercase a-z, got {text!r}")
    return np.array([ALPHABET.index(c) + 1 for c in text], np.int32)


def tags_of(words: Sequence[str]) -> np.ndarray:
    """Tags ``[sum(len(w))]`` (int32) of the words run together: ``B`` at each word's first
    character, ``I`` elsewhere.

    >>> tags_of(["to", "a", "cat"]).tolist()
    [0, 1, 0, 0, 1, 1]
    """
    return np.concatenate([[B_TAG] + [I_TAG] * (len(w) - 1) for w in words]).astype(np.int32)


def word_spans(tags: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of every word: cut before each ``B`` (the first character always starts a
    word, whatever its tag).

    >>> word_spans([1, 1, 0, 1])
    [(0, 2), (2, 4)]
    """
    starts = [0] + [t for t in range(1, len(tags)) if tags[t] == B_TAG] + [len(tags)]
    return list(itertools.pairwise(starts))


def split_by_tags(text: str, tags: Sequence[int]) -> list[str]:
    """The words of ``text`` cut before every ``B`` (the first character always starts a word).

    >>> split_by_tags("toacat", [0, 1, 0, 0, 1, 1])
    ['to', 'a', 'cat']
    >>> split_by_tags("toacat", [1, 1, 1, 0, 1, 1])
    ['toa', 'cat']
    """
    if len(tags) != len(text):
        raise ValueError(f"need one tag per character: {len(text)} characters, {len(tags)} tags")
    return [text[a:b] for a, b in word_spans(tags)]


@dataclasses.dataclass(frozen=True)
class SegmentData:
    """The vocabulary and three splits, each a tuple of lines (a line: a tuple of words)."""

    vocabulary: tuple[str, ...]
    train: tuple[tuple[str, ...], ...]
    valid: tuple[tuple[str, ...], ...]
    test: tuple[tuple[str, ...], ...]

    def split(self, name: str) -> tuple[tuple[str, ...], ...]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def vocabulary(num_words: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The ``num_words`` most frequent ``a-z`` English words and their sampling probabilities
    (``frequency ** 0.5``, normalised)."""
    import wordfreq  # optional dependency (the `examples` extra)

    pattern = re.compile(f"[{ALPHABET}]+")
    words = [w for w in wordfreq.top_n_list("en", 2 * num_words, wordlist="small")
             if pattern.fullmatch(w)][:num_words]
    if len(words) < num_words:
        raise ValueError(f"wordfreq has only {len(words)} such words, asked for {num_words}")
    weights = np.array([wordfreq.word_frequency(w, "en", wordlist="small") for w in words]) ** 0.5
    return tuple(words), weights / weights.sum()


def sample_lines(count: int, words: Sequence[str], probabilities: np.ndarray,
                 rng: np.random.Generator) -> tuple[tuple[str, ...], ...]:
    """``count`` lines of ``MIN_WORDS``-``MAX_WORDS`` words; lines longer than ``ROW_LENGTH``
    characters are drawn again."""
    lines: list[tuple[str, ...]] = []
    while len(lines) < count:
        picks = rng.choice(len(words), int(rng.integers(MIN_WORDS, MAX_WORDS + 1)), p=probabilities)
        line = tuple(words[i] for i in picks)
        if sum(map(len, line)) <= ROW_LENGTH:
            lines.append(line)
    return tuple(lines)


def build_dataset(num_words: int = 5000, train_lines: int = 40000, valid_lines: int = 1000,
                  test_lines: int = 2000, *, seed: int = 0) -> SegmentData:
    """Draw the three splits from the vocabulary of ``num_words`` words (see the module doc)."""
    words, probabilities = vocabulary(num_words)
    rng = np.random.default_rng(seed)
    train, valid, test = (sample_lines(n, words, probabilities, rng)
                          for n in (train_lines, valid_lines, test_lines))
    return SegmentData(words, train, valid, test)


# ------------------------------------------------------------------------------------------------
# Batches: packed rows (JAX) and the same lines padded (torch)
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SegmentBatch:
    """One batch of ``N`` lines in two layouts.

    Packed (``R = rows_per_batch`` rows of ``L = ROW_LENGTH``): ``tokens``, ``segment_ids``,
    ``tags``, each ``int32 [R, L]`` (``PAD`` / 0 / 0 at padding; empty rows complete the last
    batch). Padded: ``padded_tokens``, ``padded_tags`` ``int64 [N, T]`` (``T`` the longest line of
    the batch), ``lengths int64 [N]``. Map: line ``n`` of the padded batch is segment
    ``segment[n]`` of packed row ``row[n]``, from column ``offset[n]``; ``index [N]`` its position
    in the split.
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    tags: np.ndarray
    padded_tokens: np.ndarray
    padded_tags: np.ndarray
    lengths: np.ndarray
    row: np.ndarray
    segment: np.ndarray
    offset: np.ndarray
    index: np.ndarray


@dataclasses.dataclass(frozen=True)
class PackedSplit:
    """A split's lines encoded and packed into rows once (:func:`pack_split`)."""

    texts: tuple[str, ...]
    tokens: np.ndarray          # int32 [rows, L]
    segment_ids: np.ndarray     # int32 [rows, L]
    tags: np.ndarray            # int32 [rows, L]
    packing: Any                # jaxseq.data.RowPacking

    def __len__(self) -> int:
        return len(self.texts)


def pack_split(lines: Sequence[Sequence[str]]) -> PackedSplit:
    """Encode ``lines`` and pack them into rows of :data:`ROW_LENGTH` (best-fit decreasing,
    at most :data:`MAX_SEGMENTS` lines per row)."""
    from jaxseq.data import pack_rows

    texts = tuple("".join(line) for line in lines)
    packing = pack_rows([len(t) for t in texts], ROW_LENGTH, max_segments=MAX_SEGMENTS)
    tokens = packing.pack([encode(t) for t in texts], padding_value=PAD)
    tags = packing.pack([tags_of(line) for line in lines], padding_value=0)
    return PackedSplit(texts, tokens, packing.segment_ids(), tags, packing)


def batches(split: PackedSplit, rows_per_batch: int, *, shuffle: bool = False, seed: int = 0
            ) -> Iterator[SegmentBatch]:
    """One epoch of :class:`SegmentBatch` es over every line of ``split`` exactly once:
    ``rows_per_batch`` packed rows at a time (shuffled with ``seed`` if ``shuffle``)."""
    packing = split.packing
    for rows in packing.batches(rows_per_batch, shuffle=shuffle, seed=seed):
        fill = ((0, rows_per_batch - len(rows)), (0, 0))
        position = np.full(packing.num_rows, -1)
        position[rows] = np.arange(len(rows))
        members = np.flatnonzero(position[packing.row] >= 0)           # line indices, sorted
        members = members[np.lexsort((packing.segment[members], position[packing.row[members]]))]
        lengths = packing.length[members].astype(np.int64)
        padded_tokens = np.zeros((len(members), int(lengths.max())), np.int64)
        padded_tags = np.zeros_like(padded_tokens)
        for n, i in enumerate(members):
            b, o = position[packing.row[i]], packing.offset[i]
            padded_tokens[n, :lengths[n]] = split.tokens[rows[b], o:o + lengths[n]]
            padded_tags[n, :lengths[n]] = split.tags[rows[b], o:o + lengths[n]]
        yield SegmentBatch(np.pad(split.tokens[rows], fill), np.pad(split.segment_ids[rows], fill),
                           np.pad(split.tags[rows], fill), padded_tokens, padded_tags, lengths,
                           position[packing.row[members]].astype(np.int64),
                           packing.segment[members].astype(np.int64),
                           packing.offset[members].astype(np.int64), members)


def num_batches(split: PackedSplit, rows_per_batch: int) -> int:
    """How many batches :func:`batches` yields."""
    return -(-split.packing.num_rows // rows_per_batch)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SegmentScores:
    """``accuracy``: tags right over characters; ``boundary_f1``: F1 of the word boundaries inside
    the lines (a ``B`` at ``t >= 1``); ``word_f1``: F1 of the words as character spans (a word is
    right when both its ends are)."""

    accuracy: float
    boundary_f1: float
    word_f1: float
    lines: int


def _f1(correct: int, predicted: int, gold: int) -> float:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def scores(predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> SegmentScores:
    """:class:`SegmentScores` of predicted tag sequences against the gold ones (same lengths).

    >>> s = scores([[0, 1, 0, 1, 1]], [[0, 1, 1, 0, 1]])     # "ab|cde" vs "abc|de"
    >>> round(s.accuracy, 2), s.boundary_f1, s.word_f1
    (0.6, 0.0, 0.0)
    """
    if len(predicted) != len(gold) or not gold:
        raise ValueError(f"need as many predictions as lines (> 0): {len(predicted)}, {len(gold)}")
    right = chars = hits = cuts_pred = cuts_gold = word_hits = words_pred = words_gold = 0
    for pred_tags, gold_tags in zip(predicted, gold):
        p, g = np.asarray(pred_tags), np.asarray(gold_tags)
        if p.shape != g.shape:
            raise ValueError(f"a prediction has {p.size} tags for a line of {g.size}")
        right, chars = right + int((p == g).sum()), chars + g.size
        p_cut, g_cut = p[1:] == B_TAG, g[1:] == B_TAG              # boundaries inside the line
        hits += int((p_cut & g_cut).sum())
        cuts_pred, cuts_gold = cuts_pred + int(p_cut.sum()), cuts_gold + int(g_cut.sum())
        p_spans, g_spans = set(word_spans(p.tolist())), set(word_spans(g.tolist()))
        word_hits += len(p_spans & g_spans)
        words_pred, words_gold = words_pred + len(p_spans), words_gold + len(g_spans)
    return SegmentScores(right / chars, _f1(hits, cuts_pred, cuts_gold),
                         _f1(word_hits, words_pred, words_gold), len(gold))


# ------------------------------------------------------------------------------------------------
# Configuration, loops and the plot (shared by both twins)
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Sizes of the data and the model, and the training budget.

    ``quick()`` is the ``--quick`` budget (about a minute on 2 cores, compilation included);
    ``max_steps`` caps the steps of every epoch (``None``: whole epochs).
    """

    num_words: int = 5000
    train_lines: int = 40000
    valid_lines: int = 1000
    test_lines: int = 2000
    embed_dim: int = 32
    hidden_size: int = 128
    num_layers: int = 1
    rows_per_batch: int = 32
    learning_rate: float = 3e-3
    epochs: int = 5
    max_steps: Optional[int] = None
    seed: int = 0

    @classmethod
    def quick(cls) -> SegmentConfig:
        return cls(train_lines=12000, valid_lines=500, test_lines=1000, hidden_size=64, epochs=4)


def parse_args(description: str, argv: Optional[Sequence[str]] = None
               ) -> tuple[SegmentConfig, Path]:
    """``(config, out_dir)`` from the command line: ``--quick``, one ``--field-name`` per
    :class:`SegmentConfig` field, ``--out`` (default ``runs/``)."""
    return parse_config(description, argv, SegmentConfig)


def load(config: SegmentConfig) -> tuple[SegmentData, dict[str, PackedSplit]]:
    """The data of ``config`` and every split packed."""
    data = build_dataset(config.num_words, config.train_lines, config.valid_lines,
                         config.test_lines, seed=config.seed)
    return data, {name: pack_split(data.split(name)) for name in SPLITS}


#: ``decode(batch) -> (best tags of each line of the padded batch, in its order; mean negative
#: log-likelihood per line)``, in evaluation mode.
Decode = Callable[[SegmentBatch], tuple[list[list[int]], float]]
#: ``step(batch) -> mean negative log-likelihood per line`` (before the optimizer step).
Step = Callable[[SegmentBatch], float]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Mean negative log-likelihood per line, the scores, and the predicted tags in split order."""

    loss: float
    scores: SegmentScores
    predicted: tuple[tuple[int, ...], ...]


def evaluate(decode: Decode, split: PackedSplit, config: SegmentConfig) -> Evaluation:
    """Viterbi-decode every line of ``split`` with ``decode``."""
    predicted: list[tuple[int, ...]] = [()] * len(split)
    gold: list[tuple[int, ...]] = [()] * len(split)
    total = 0.0
    for batch in batches(split, config.rows_per_batch):
        paths, loss = decode(batch)
        total += loss * len(batch.index)
        for n, i in enumerate(batch.index):
            predicted[i] = tuple(paths[n])
            gold[i] = tuple(batch.padded_tags[n, :batch.lengths[n]].tolist())
    return Evaluation(total / len(split), scores(predicted, gold), tuple(predicted))


def train_epochs(step: Step, decode: Decode, set_training: Callable[[bool], None],
                 splits: dict[str, PackedSplit], config: SegmentConfig, *, progress: bool = True
                 ) -> History:
    """``config.epochs`` epochs of ``step`` over the training lines, validating with ``decode``
    after each; the history's metric is the validation word-boundary F1 (the training batches'
    metric is not computed: ``nan``). Epoch times cover the training steps only."""
    import itertools

    from tqdm import tqdm

    history = History()
    steps = num_batches(splits["train"], config.rows_per_batch)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    for epoch in range(config.epochs):
        start = time.perf_counter()
        set_training(True)
        epoch_batches = batches(splits["train"], config.rows_per_batch, shuffle=True,
                                seed=config.seed * 1000 + epoch)
        bar = tqdm(itertools.islice(epoch_batches, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for batch in bar:
            history.step_loss.append(step(batch))
            bar.set_postfix(loss=f"{history.step_loss[-1]:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        set_training(False)
        valid = evaluate(decode, splits["valid"], config)
        history.add_epoch(valid.loss, valid.scores.boundary_f1, seconds)
        if progress:
            print(f"epoch {epoch + 1}: {seconds:.1f} s, train loss "
                  f"{np.mean(history.step_loss[-steps:]):.3f}, valid loss {valid.loss:.3f}, "
                  f"tag accuracy {valid.scores.accuracy:.4f}, boundary F1 "
                  f"{valid.scores.boundary_f1:.4f}, word F1 {valid.scores.word_f1:.4f}")
    return history


def plot_results(path: Path, history: History, texts: Sequence[str],
                 gold: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]],
                 title: str) -> Path:
    """Save a PNG: the loss curves (training steps, validation per epoch), the validation
    boundary F1, and ``texts`` segmented by the gold and predicted tags; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7))
    ax_loss, ax_f1 = fig.add_subplot(2, 2, 1), fig.add_subplot(2, 2, 2)
    window = max(1, len(history.step_loss) // 50)
    smooth = np.convolve(history.step_loss, np.ones(window) / window, mode="valid")
    ax_loss.plot(np.arange(window, len(history.step_loss) + 1), smooth,
                 label=f"train (mean of {window} steps)")
    ax_loss.plot(history.epoch_step, history.valid_loss, "o-", label="valid")
    ax_loss.set_ylabel("negative log-likelihood per line")
    ax_f1.plot(range(1, len(history.valid_metric) + 1), history.valid_metric, "o-")
    ax_f1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("valid word-boundary F1")
    ax_loss.set_xlabel("step")
    ax_loss.legend()
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
    ax_text = fig.add_subplot(2, 1, 2)
    ax_text.axis("off")
    lines = []
    for text, g, p in zip(texts, gold, predicted):
        mark = "ok " if list(g) == list(p) else "ERR"
        lines.append(f"{mark}  gold: {' '.join(split_by_tags(text, g))}")
        lines.append(f"     pred: {' '.join(split_by_tags(text, p))}")
    ax_text.text(0, 1, "\n".join(lines), family="monospace", fontsize=8, va="top")
    return save_figure(fig, title, path)


def finish(name: str, out: Path, splits: dict[str, PackedSplit], history: History,
           test: Evaluation, seconds: float, examples: int = 8) -> dict[str, float]:
    """Plot ``out/<name>.png`` (curves and the first test lines segmented), print the summary
    shared by both twins; returns the test figures."""
    framework = "torch (packed BiLSTM, pytorch-crf)" if name.startswith("torch") \
        else "JAX (jaxseq BiLSTM on packed rows, jaxseq.CRF)"
    split = splits["test"]
    shown = range(min(examples, len(split)))
    gold_tags = [_gold_tags(split, i) for i in shown]
    plot = plot_results(out / f"{name}.png", history, [split.texts[i] for i in shown], gold_tags,
                        [test.predicted[i] for i in shown], f"word segmentation, {framework}")
    epochs = history.epoch_seconds
    steady = float(np.median(epochs[1:])) if len(epochs) > 1 else epochs[0]
    s = test.scores
    print(f"plot: {plot}")
    print(f"time per epoch: {', '.join(f'{t:.1f} s' for t in epochs)} "
          f"(median after the first: {steady:.1f} s); total {seconds:.0f} s")
    print(f"test ({s.lines} lines): tag accuracy {s.accuracy:.4f}, word-boundary F1 "
          f"{s.boundary_f1:.4f}, word F1 {s.word_f1:.4f}")
    return {"accuracy": s.accuracy, "boundary_f1": s.boundary_f1, "word_f1": s.word_f1,
            "epoch_seconds": steady, "test_loss": test.loss}


def _gold_tags(split: PackedSplit, i: int) -> list[int]:
    """The gold tags of line ``i`` of ``split``."""
    p = split.packing
    row, offset, length = p.row[i], p.offset[i], p.length[i]
    return split.tags[row, offset:offset + length].tolist()

