"""Text-to-"speech" data: words, their character ids, and their rendering as spectrogram-like frames.

Used by ``port_tts.py``. Nothing is downloaded: the words are wordfreq's most frequent English
words made of ``a-z`` (:func:`examples.ocr_data.candidate_words`), the "speech" is the word drawn
in DejaVu Sans (a font shipped with matplotlib) on a strip :data:`N_MEL` pixels high, read left to
right: each output frame is the mean of :data:`COLUMNS_PER_FRAME` pixel columns, a vector of
``N_MEL`` "mel bins" (ink in ``[0, 1]``, 0 is blank paper). A word's frame count follows its
printed width, so target lengths vary as an utterance's do; the stop target is 1 at a word's last
frame. Deterministic: one font, one size, no noise (the model has to learn the text -> image map,
not a random style).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from examples.ocr_data import _font, candidate_words, encode

#: Frame size (pixel rows of the rendering): the "mel bins".
N_MEL = 24
FONT = "DejaVuSans.ttf"
FONT_SIZE = 18
#: Pixel columns averaged into one frame.
COLUMNS_PER_FRAME = 2
#: Character ids: 0 is padding, ``a``..``z`` are 1..26 (:func:`examples.ocr_data.encode`).
N_SYMBOLS = 27


@functools.cache
def render_frames(word: str, columns_per_frame: int = COLUMNS_PER_FRAME) -> np.ndarray:
    """``float32 [T, N_MEL]``: ``word`` drawn in :data:`FONT` at :data:`FONT_SIZE` px with one blank
    column before and after, ``columns_per_frame`` columns per frame (the last frame padded with
    blank columns).

    >>> render_frames("to").shape, render_frames("committee").shape
    ((11, 24), (50, 24))
    >>> float(render_frames("to").max()) <= 1.0 and float(render_frames("to")[0].max()) < 0.5
    True
    """
    from PIL import Image, ImageDraw

    encode(word)                                                        # a-z only
    font = _font(FONT, FONT_SIZE)
    width = int(np.ceil(font.getlength(word))) + 2
    canvas = Image.new("L", (width, N_MEL), 0)
    ascent, descent = font.getmetrics()
    ImageDraw.Draw(canvas).text((1, (N_MEL + ascent - descent) / 2), word, fill=255, font=font,
                                anchor="ls")
    columns = np.asarray(canvas, np.float32).T / 255                    # [W, N_MEL], row 0 on top
    frames = -(-width // columns_per_frame)
    columns = np.pad(columns, ((0, frames * columns_per_frame - width), (0, 0)))
    return columns.reshape(frames, columns_per_frame, N_MEL).mean(axis=1)


def word_splits(num_words: int, max_letters: int, *, test_words: int = 8, seed: int = 0
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train, test)``: the ``num_words`` most frequent words of at most ``max_letters``
    letters, shuffled with ``seed``; the last ``test_words`` are held out."""
    words = [w for w in candidate_words(3 * num_words) if len(w) <= max_letters][:num_words]
    if len(words) < num_words or not 0 < test_words < num_words:
        raise ValueError(f"need 0 < test_words < num_words <= {len(words)} words of at most "
                         f"{max_letters} letters, got test_words={test_words}, "
                         f"num_words={num_words}")
    order = np.random.default_rng(seed).permutation(num_words)
    shuffled = tuple(words[i] for i in order)
    return shuffled[:-test_words], shuffled[-test_words:]


def make_batch(words: Sequence[str], *, text_length: int, num_frames: int,
               columns_per_frame: int = COLUMNS_PER_FRAME, pad_value: float = 0.0
               ) -> dict[str, np.ndarray]:
    """A padded batch of ``words`` (fixed padded sizes: one compilation for every batch).

    Returns ``{"text": int64 [B, text_length] (0 at padding), "text_lengths": int64 [B],
    "mels": float32 [B, num_frames, N_MEL], "stop": float32 [B, num_frames] (1 at each word's
    last frame), "mel_lengths": int64 [B]}``; ``mels`` and ``stop`` hold ``pad_value`` at the
    padded frames (NaN shows that padding reaches nothing).

    Raises:
      ValueError: a word longer than ``text_length`` letters or ``num_frames`` frames.
    """
    B = len(words)
    batch = {"text": np.zeros((B, text_length), np.int64), "text_lengths": np.zeros(B, np.int64),
             "mels": np.full((B, num_frames, N_MEL), pad_value, np.float32),
             "stop": np.full((B, num_frames), pad_value, np.float32),
             "mel_lengths": np.zeros(B, np.int64)}
    for b, word in enumerate(words):
        frames = render_frames(word, columns_per_frame)
        if len(word) > text_length or len(frames) > num_frames:
            raise ValueError(f"{word!r} has {len(word)} letters and {len(frames)} frames, more "
                             f"than text_length={text_length} or num_frames={num_frames}")
        batch["text"][b, :len(word)] = encode(word)
        batch["text_lengths"][b] = len(word)
        batch["mels"][b, :len(frames)] = frames
        batch["stop"][b, :len(frames)] = 0.0
        batch["stop"][b, len(frames) - 1] = 1.0
        batch["mel_lengths"][b] = len(frames)
    return batch


def max_frames(words: Sequence[str], columns_per_frame: int = COLUMNS_PER_FRAME) -> int:
    """The most frames any of ``words`` has."""
    return max(len(render_frames(w, columns_per_frame)) for w in words)
