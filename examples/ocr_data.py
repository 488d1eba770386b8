"""Rendered word images for text-line recognition (CTC), their batches, decoders and error rates.

Shared, unchanged, by ``ocr_ctc.py`` (JAX) and its torch twin ``torch_ocr_ctc.py``: both see the
same images, batches, decodings and metrics. numpy and Pillow only (matplotlib for its fonts).

Data (nothing is downloaded): the most frequent English words of wordfreq's ``"small"`` list made
of ``a-z`` only (2 to 12 letters), split into disjoint train / valid / test *word* sets (the test
words are never seen in training), each word rendered once by :func:`render_word` into a grayscale
image of height :data:`HEIGHT` whose width follows the word: one of the DejaVu fonts shipped with
matplotlib, a random size, letter spacing, slant (affine shear), blur, contrast, margins and
Gaussian noise. Images hold *ink*: ``0`` is the background, so the convolutions' zero padding and
the batches' padding look like empty paper. Every image is at least ``WIDTH_STRIDE * (L + r)``
columns wide (``L`` letters, ``r`` adjacent repeats): after the model's time stride of
:data:`WIDTH_STRIDE` columns every word still has an alignment (CTC needs ``L + r`` frames).
Deterministic for given arguments (and wordfreq version). wordfreq's data is CC BY-SA 4.0.

Batches (:func:`batches`) group images of similar width (:func:`jaxseq.data.bucket_by_length`)
and pad them to their bucket's width: few shapes, hence few ``jit`` compilations. Classes: ``0``
is the CTC blank, ``1 + i`` the letter ``ALPHABET[i]``.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from examples.training import History, save_figure

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
BLANK = 0
NUM_CLASSES = len(ALPHABET) + 1
HEIGHT = 32
#: Pooling (height, width) of the models' conv blocks (``torch_ref.ocr.POOLS`` is the same).
POOLS = ((2, 2), (2, 2), (2, 1), (2, 1))
#: Image columns per output frame of the models: the product of the pooling widths.
WIDTH_STRIDE = math.prod(width for _, width in POOLS)
MIN_LETTERS, MAX_LETTERS = 2, 12
#: Fonts shipped with matplotlib (``mpl-data/fonts/ttf``).
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf")
SPLITS = ("train", "valid", "test")


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------
def encode(word: str) -> np.ndarray:
    """Class ids ``[len(word)]`` (int32) of a lowercase ``a-z`` word (``a`` is 1)."""
    if not re.fullmatch(f"[{ALPHABET}]*", word):
        raise ValueError(f"words must be lowercase a-z, got {word!r}")
    return np.array([ALPHABET.index(c) + 1 for c in word], np.int32)


def decode_labels(labels: Sequence[int]) -> str:
    """The word of class ids ``1..26`` (blanks are not allowed)."""
    return "".join(ALPHABET[int(c) - 1] for c in labels)


def frames_needed(word: str) -> int:
    """Fewest frames that a CTC alignment of ``word`` needs: letters + adjacent repeats."""
    return len(word) + sum(a == b for a, b in itertools.pairwise(word))


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
@functools.cache
def _font(name: str, size: int) -> Any:
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def render_word(word: str, rng: np.random.Generator, *, height: int = HEIGHT) -> np.ndarray:
    """One image of ``word``: ``uint8 [height, W]``, ink ``> 0`` on a dark (``~0``) background.

    Style drawn from ``rng``: font (:data:`FONTS`), size 16-24 px, extra letter spacing -0.5 to 3
    px, slant (shear) -0.35 to 0.35, vertical jitter, Gaussian blur (radius < 0.8), background
    0-0.25 and ink 0.6-1 (of 255), margins 2-8 px, Gaussian noise (sigma 0.02-0.12). The width is
    the ink's extent plus the margins, widened on the right to ``WIDTH_STRIDE *
    frames_needed(word)`` if narrower.
    """
    from PIL import Image, ImageDraw, ImageFilter

    font = _font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(16, 25)))
    spacing, slant = rng.uniform(-0.5, 3.0), rng.uniform(-0.35, 0.35)
    advances = [font.getlength(c) for c in word]
    pad = int(abs(slant) * height) + 4
    canvas = Image.new("L", (math.ceil(sum(advances) + spacing * len(word)) + 2 * pad, height), 0)
    ascent, descent = font.getmetrics()
    baseline = (height + ascent - descent) / 2 + rng.uniform(-2, 2)
    draw, x = ImageDraw.Draw(canvas), float(pad)
    for char, advance in zip(word, advances):
        draw.text((x, baseline), char, fill=255, font=font, anchor="ls")
        x += advance + spacing
    # output pixel (x, y) reads input (x + slant * (y - height / 2), y): a slant about the middle
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                              (1, slant, -slant * height / 2, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    radius = rng.uniform(0, 0.8)
    if radius > 0.2:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    ink = np.asarray(canvas, np.float64) / 255
    columns = np.flatnonzero(ink.max(axis=0) > 0.1)
    left, right = rng.integers(2, 9, size=2)
    ink = np.pad(ink[:, columns[0]:columns[-1] + 1], ((0, 0), (left, right)))
    short = WIDTH_STRIDE * frames_needed(word) - ink.shape[1]
    if short > 0:
        ink = np.pad(ink, ((0, 0), (0, short)))
    background, level = rng.uniform(0.0, 0.25), rng.uniform(0.6, 1.0)
    image = background + (level - background) * ink
    image = image + rng.normal(0.0, rng.uniform(0.02, 0.12), image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class OCRSplit:
    """One split: ``words`` (``N`` strings) and their ``images`` (``N`` arrays ``uint8 [H, W_i]``)."""

    words: tuple[str, ...]
    images: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def widths(self) -> np.ndarray:
        """``int64 [N]``: each image's width ``W_i``."""
        return np.array([im.shape[1] for im in self.images], np.int64)


@dataclasses.dataclass(frozen=True)
class OCRData:
    """The three splits; their word sets are disjoint."""

    train: OCRSplit
    valid: OCRSplit
    test: OCRSplit

    def split(self, name: str) -> OCRSplit:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def candidate_words(count: int) -> list[str]:
    """The ``count`` most frequent English words of 2-12 letters ``a-z`` (wordfreq "small")."""
    import wordfreq  # optional dependency (the `examples` extra)

    pattern = re.compile(f"[{ALPHABET}]{{{MIN_LETTERS},{MAX_LETTERS}}}")
    words = [w for w in wordfreq.top_n_list("en", 2 * count, wordlist="small")
             if pattern.fullmatch(w)]
    if len(words) < count:
        raise ValueError(f"wordfreq has only {len(words)} such words, asked for {count}")
    return words[:count]


def build_dataset(num_words: int = 12000, *, seed: int = 0, valid_fraction: float = 0.05,
                  test_fraction: float = 0.1) -> OCRData:
    """Render the ``num_words`` most frequent words, split into disjoint word sets.

    Args:
      num_words: words in all (most frequent first), each rendered once.
      seed: seed of the split and of every rendering style.
      valid_fraction, test_fraction: shares of the words held out.

    Raises:
      ValueError: bad fractions, or too few words.
    """
    if not (valid_fraction > 0 and test_fraction > 0 and valid_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions valid={valid_fraction}, test={test_fraction}")
    rng = np.random.default_rng(seed)
    words = candidate_words(num_words)
    words = [words[i] for i in rng.permutation(len(words))]
    n_valid, n_test = round(valid_fraction * num_words), round(test_fraction * num_words)
    parts = {"valid": words[:n_valid], "test": words[n_valid:n_valid + n_test],
             "train": words[n_valid + n_test:]}
    return OCRData(**{name: OCRSplit(tuple(ws), tuple(render_word(w, rng) for w in ws))
                      for name, ws in parts.items()})


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OCRBatch:
    """A padded batch of ``B`` images of one bucket width ``W``.

    ``images float32 [B, H, W]`` in ``[0, 1]`` (0 at padding), ``widths int32 [B]``, ``targets
    int32 [B, MAX_LETTERS]`` (0 after each word), ``target_lengths int32 [B]``, ``real bool [B]``
    (False for filler rows: blank images of full width with an empty target), ``index int64 [B]``
    (position in the split; -1 for filler rows).
    """

    images: np.ndarray
    widths: np.ndarray
    targets: np.ndarray
    target_lengths: np.ndarray
    real: np.ndarray
    index: np.ndarray


def width_boundaries(data: OCRData, num_buckets: int) -> tuple[int, ...]:
    """Bucket widths (multiples of 16) with the least padding over every image of ``data`` (the
    last one covers the widest image of any split)."""
    from jaxseq.data import bucket_boundaries

    widths = np.concatenate([data.split(name).widths for name in SPLITS])
    return bucket_boundaries(widths, num_buckets, multiple=16)


def batches(split: OCRSplit, batch_size: int, boundaries: Sequence[int], *, shuffle: bool = False,
            seed: int = 0, drop_last: bool = False) -> Iterator[OCRBatch]:
    """One epoch of :class:`OCRBatch` es, every one ``batch_size`` rows (filler rows complete the
    short ones unless ``drop_last`` drops them); images wider than the last boundary raise.

    Args:
      split: the images.
      batch_size: rows per batch.
      boundaries: increasing bucket widths (:func:`width_boundaries`); a batch is padded to its
        bucket's width.
      shuffle: shuffle within buckets and the order of batches (``seed``; new seed per epoch).
      seed: shuffle seed.
      drop_last: drop each bucket's last partial batch (training).
    """
    from jaxseq.data import bucket_by_length

    for bucket in bucket_by_length(split.widths, batch_size, boundaries=boundaries,
                                   shuffle=shuffle, seed=seed, drop_last=drop_last):
        idx, W = bucket.indices, bucket.padded_length
        images = np.zeros((batch_size, HEIGHT, W), np.float32)
        widths = np.full(batch_size, W, np.int32)
        targets = np.zeros((batch_size, MAX_LETTERS), np.int32)
        target_lengths = np.zeros(batch_size, np.int32)
        for b, i in enumerate(idx):
            image, word = split.images[i], split.words[i]
            images[b, :, :image.shape[1]] = image / np.float32(255)
            widths[b], target_lengths[b] = image.shape[1], len(word)
            targets[b, :len(word)] = encode(word)
        real = np.arange(batch_size) < len(idx)
        index = np.full(batch_size, -1, np.int64)
        index[:len(idx)] = idx
        yield OCRBatch(images, widths, targets, target_lengths, real, index)


def num_batches(split: OCRSplit, batch_size: int, boundaries: Sequence[int], *,
                drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields."""
    bucket = np.searchsorted(np.asarray(boundaries), split.widths, side="left")
    counts = np.bincount(bucket, minlength=len(boundaries))
    return int(sum(c // batch_size if drop_last else -(-c // batch_size) for c in counts))


# ------------------------------------------------------------------------------------------------
# Decoding and error rates (host side, numpy)
# ------------------------------------------------------------------------------------------------
def greedy_decode(log_probs: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """Best path: the argmax class of every valid frame, repeats merged, blanks removed.

    Args:
      log_probs: ``[B, T, C]`` (any monotone scores: logits or log-probabilities).
      lengths: ``[B]`` valid frames of each row.

    >>> scores = np.eye(3)[[1, 1, 0, 1, 2, 2, 0]][None]               # [B=1, T=7, C=3]
    >>> greedy_decode(scores, np.array([6]))
    [[1, 1, 2]]
    """
    best = np.asarray(log_probs).argmax(-1)
    out = []
    for row, n in zip(best, np.asarray(lengths)):
        path = row[:int(n)]
        keep = (path != BLANK) & np.concatenate([[True], path[1:] != path[:-1]])
        out.append([int(c) for c in path[keep]])
    return out


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))


def beam_decode(log_probs: np.ndarray, lengths: np.ndarray, beam_width: int = 8
                ) -> list[list[int]]:
    """CTC prefix beam search (no language model): the most probable *labelling* found with
    ``beam_width`` prefixes, each scored by the total probability of its alignments (ending in a
    blank or not); at each frame only the ``beam_width`` likeliest classes, and each prefix's own
    last class, extend a prefix.

    Args:
      log_probs: ``[B, T, C]`` log-probabilities (log-softmax outputs).
      lengths: ``[B]`` valid frames.
      beam_width: prefixes kept per frame.

    Two frames that each say ``a`` or blank: best path ``[]`` (blank, blank: 0.36) but ``[a]`` has
    three alignments (0.64):

    >>> lp = np.log(np.array([[[0.6, 0.4], [0.6, 0.4]]]))
    >>> greedy_decode(lp, np.array([2])), beam_decode(lp, np.array([2]))
    ([[]], [[1]])
    """
    log_probs = np.asarray(log_probs, np.float64)
    out = []
    for row, n in zip(log_probs, np.asarray(lengths)):
        beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
        for frame in row[:int(n)]:
            top = [int(c) for c in np.argsort(-frame)[:beam_width] if c != BLANK]
            grown: dict[tuple[int, ...], list[float]] = {}
            for prefix, (blank_end, label_end) in beams.items():
                total = _logaddexp(blank_end, label_end)
                here = grown.setdefault(prefix, [-math.inf, -math.inf])
                here[0] = _logaddexp(here[0], total + frame[BLANK])
                last = prefix[-1] if prefix else None
                if last is not None:        # the last label again, merged: same prefix
                    here[1] = _logaddexp(here[1], label_end + frame[last])
                for c in top + ([last] if last is not None and last not in top else []):
                    longer = grown.setdefault(prefix + (c,), [-math.inf, -math.inf])
                    source = blank_end if c == last else total   # a repeat needs a blank between
                    longer[1] = _logaddexp(longer[1], source + frame[c])
            ranked = sorted(grown.items(), key=lambda kv: -_logaddexp(*kv[1]))[:beam_width]
            beams = {prefix: (scores[0], scores[1]) for prefix, scores in ranked}
        best = max(beams.items(), key=lambda kv: _logaddexp(*kv[1]))[0]
        out.append(list(best))
    return out


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each 1).

    >>> edit_distance("kitten", "sitting"), edit_distance("", "abc"), edit_distance("ab", "ab")
    (3, 3, 0)
    """
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclasses.dataclass(frozen=True)
class ErrorRates:
    """``cer``: character edit distance over reference characters; ``wer``: share of words not
    recognised exactly (one word per image, so the word error rate is the word-level error)."""

    cer: float
    wer: float
    words: int


def error_rates(predictions: Sequence[str], references: Sequence[str]) -> ErrorRates:
    """:class:`ErrorRates` of ``predictions`` against ``references``.

    >>> error_rates(["cat", "dg"], ["cat", "dog"])
    ErrorRates(cer=0.16666666666666666, wer=0.5, words=2)
    """
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references (> 0), got "
                         f"{len(predictions)} and {len(references)}")
    edits = sum(edit_distance(p, r) for p, r in zip(predictions, references))
    chars = sum(len(r) for r in references)
    wrong = sum(p != r for p, r in zip(predictions, references))
    return ErrorRates(edits / chars, wrong / len(references), len(references))


def batch_cer(batch: OCRBatch, log_probs: np.ndarray, lengths: np.ndarray) -> float:
    """Greedy CER of a batch's real rows, from the model's ``log_probs [B, T, C]`` and output
    ``lengths [B]``."""
    real = batch.real
    words = [decode_labels(p) for p in greedy_decode(log_probs[real], lengths[real])]
    references = [decode_labels(t[:n]) for t, n in zip(batch.targets[real],
                                                       batch.target_lengths[real])]
    return error_rates(words, references).cer


# ------------------------------------------------------------------------------------------------
# Configuration, command line and the sample plot (shared by both twins)
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OCRConfig:
    """Sizes of the data and the model, and the training budget.

    ``quick()`` is the ``--quick`` budget (about a minute on 2 cores, data and compilation
    included); ``max_steps`` caps the steps of every epoch (``None``: whole epochs).
    """

    num_words: int = 12000
    channels: tuple[int, ...] = (16, 32, 64, 64)
    hidden_size: int = 128
    num_layers: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-3
    clip_norm: float = 5.0
    epochs: int = 5
    max_steps: Optional[int] = None
    num_buckets: int = 3
    beam_width: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> OCRConfig:
        return cls(num_words=2500, channels=(8, 16, 32, 32), hidden_size=64, batch_size=16,
                   learning_rate=3e-3, epochs=5, num_buckets=2)


def plot_samples(path: Path, split: OCRSplit, indices: Sequence[int], greedy: Sequence[str],
                 beam: Sequence[str], title: str) -> Path:
    """Save a PNG of the images ``split.images[indices]`` with their greedy and beam decodings
    (green: exact, red: wrong); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(indices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, g, b in zip(axes.flat, indices, greedy, beam):
        word = split.words[i]
        ax.imshow(split.images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"{word!r}: greedy {g!r}, beam {b!r}", fontsize=8,
                     color="green" if g == word and b == word else "red")
    return save_figure(fig, title, path)


# ------------------------------------------------------------------------------------------------
# The training and evaluation loops, around a framework's step and forward pass
# ------------------------------------------------------------------------------------------------
#: ``forward(batch) -> (log_probs [B, T, C], output lengths [B], loss per image over its target
#: length [B])`` as numpy, in evaluation mode.
Forward = Callable[[OCRBatch], tuple[np.ndarray, np.ndarray, np.ndarray]]
#: ``step(batch) -> (mean loss, log_probs [B, T, C], output lengths [B])`` of the batch before
#: the optimizer step, in training mode.
Step = Callable[[OCRBatch], tuple[float, np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Mean CTC loss per image (over its target length), the error rates of both decoders (beam:
    ``None`` when not run), and the decodings in split order."""

    loss: float
    greedy: ErrorRates
    beam: Optional[ErrorRates]
    greedy_words: tuple[str, ...]
    beam_words: tuple[str, ...]


def evaluate(forward: Forward, split: OCRSplit, config: OCRConfig, boundaries: Sequence[int], *,
             beam: bool = False) -> Evaluation:
    """Decode every image of ``split`` with ``forward``; beam search too if ``beam``."""
    n = len(split)
    greedy_words, beam_words = [""] * n, [""] * n
    total = 0.0
    for batch in batches(split, config.batch_size, boundaries):
        log_probs, lengths, losses = forward(batch)
        real, index = batch.real, batch.index[batch.real]
        total += float(losses[real].sum())
        for i, labels in zip(index, greedy_decode(log_probs[real], lengths[real])):
            greedy_words[i] = decode_labels(labels)
        if beam:
            for i, labels in zip(index, beam_decode(log_probs[real], lengths[real],
                                                    config.beam_width)):
                beam_words[i] = decode_labels(labels)
    return Evaluation(total / n, error_rates(greedy_words, split.words),
                      error_rates(beam_words, split.words) if beam else None,
                      tuple(greedy_words), tuple(beam_words))


def train_epochs(step: Step, forward: Forward, set_training: Callable[[bool], None],
                 data: OCRData, config: OCRConfig, boundaries: Sequence[int], *,
                 progress: bool = True) -> History:
    """``config.epochs`` epochs of ``step`` over ``data.train`` (whole batches: each bucket's last
    partial batch is dropped, a different one every epoch, since batches are shuffled), validating
    with ``forward`` after each. ``set_training(True / False)`` switches the model's mode. The
    history's metric is the greedy CER: of each training batch (before its step) and of the
    validation words. Epoch times cover the training steps only."""
    from tqdm import tqdm

    history = History()
    steps = num_batches(data.train, config.batch_size, boundaries, drop_last=True)
    steps = min(steps, config.max_steps) if config.max_steps else steps
    for epoch in range(config.epochs):
        start = time.perf_counter()
        set_training(True)
        epoch_batches = batches(data.train, config.batch_size, boundaries, shuffle=True,
                                seed=config.seed * 1000 + epoch, drop_last=True)
        bar = tqdm(itertools.islice(epoch_batches, steps), total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for batch in bar:
            loss, log_probs, lengths = step(batch)
            history.step_loss.append(loss)
            history.step_metric.append(batch_cer(batch, log_probs, lengths))
            bar.set_postfix(loss=f"{loss:.3f}", cer=f"{history.step_metric[-1]:.3f}",
                            refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        set_training(False)
        valid = evaluate(forward, data.valid, config, boundaries)
        history.add_epoch(valid.loss, valid.greedy.cer, seconds)
        if progress:
            print(f"epoch {epoch + 1}: {seconds:.1f} s, train loss "
                  f"{np.mean(history.step_loss[-steps:]):.3f}, valid loss {valid.loss:.3f}, "
                  f"valid CER {valid.greedy.cer:.4f}, WER {valid.greedy.wer:.4f}")
    return history


def finish(name: str, out: Path, data: OCRData, config: OCRConfig, history: History,
           test: Evaluation, seconds: float) -> dict[str, float]:
    """Plot (``out/<name>.png``: test images with their decodings; ``out/<name>_curves.png``),
    print the summary shared by both twins; returns the test figures."""
    assert test.beam is not None
    shown = np.random.default_rng(config.seed).choice(len(data.test), min(12, len(data.test)),
                                                       replace=False)
    framework = "torch (packed BiLSTM)" if name.startswith("torch") else "JAX (jaxseq BiLSTM)"
    plot = plot_samples(out / f"{name}.png", data.test, shown,
                        [test.greedy_words[i] for i in shown], [test.beam_words[i] for i in shown],
                        f"CRNN + CTC, {framework}, unseen test words")
    curves = history.plot(out / f"{name}_curves.png", f"CRNN + CTC, {framework}",
                          metric="CER (greedy)")
    epochs = history.epoch_seconds
    steady = float(np.median(epochs[1:])) if len(epochs) > 1 else epochs[0]
    print(f"plots: {plot}, {curves}")
    print(f"time per epoch: {', '.join(f'{s:.1f} s' for s in epochs)} "
          f"(median after the first: {steady:.1f} s); total {seconds:.0f} s")
    print(f"test ({test.greedy.words} unseen words): greedy CER {test.greedy.cer:.4f} "
          f"WER {test.greedy.wer:.4f}; beam CER {test.beam.cer:.4f} WER {test.beam.wer:.4f}")
    return {"cer": test.greedy.cer, "wer": test.greedy.wer, "beam_cer": test.beam.cer,
            "beam_wer": test.beam.wer, "epoch_seconds": steady, "test_loss": test.loss}
