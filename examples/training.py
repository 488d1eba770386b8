"""Framework-neutral pieces of the example training scripts: configuration, history and plot.

Shared by ``word_language.py`` (JAX) and ``torch_word_language.py`` (torch) so that both train with
the same hyper-parameters and report in the same format; ``char_lm.py`` uses them too.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the word → language classifier and the character LM.

    ``quick()`` is the short CPU budget of ``--quick`` (about a minute on 2 cores, compile included);
    ``max_steps`` caps the number of training steps of every epoch (``None``: whole epochs).
    """

    words_per_language: int = 4000
    embed_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.3
    batch_size: int = 64
    learning_rate: float = 3e-3
    epochs: int = 12
    max_steps: Optional[int] = None
    seed: int = 0

    @classmethod
    def quick(cls) -> TrainConfig:
        return cls(epochs=3)


def parse_config(description: str, argv: Optional[Sequence[str]] = None,
                 config_class: Any = TrainConfig) -> tuple[Any, Path]:
    """Parse the command line shared by the example scripts: ``--quick`` plus overrides.

    ``config_class`` is a frozen dataclass with a ``quick()`` classmethod (default
    :class:`TrainConfig`): one ``--field-name`` per field (``Optional`` fields as integers, tuples
    as comma-separated integers), ``--quick`` (its ``quick()``) and ``--out``.

    Returns:
      ``(config, out_dir)``; ``out_dir`` (default ``runs/``) receives plots and checkpoints.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short CPU budget (about a minute)")
    fields = dataclasses.fields(config_class)
    for field in fields:
        default = field.default
        kind: Any = type(default) if default is not None else int
        if isinstance(default, tuple):
            kind = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--out", type=Path, default=RUNS_DIR, help="output folder (default runs/)")
    args = parser.parse_args(argv)
    config = config_class.quick() if args.quick else config_class()
    overrides = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
    return dataclasses.replace(config, **overrides), args.out


def save_figure(fig: Any, title: str, path: Path) -> Path:
    """Title, lay out, write ``fig`` to the PNG ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclasses.dataclass
class History:
    """Training curves: per-step training loss and metric (accuracy, perplexity...), per-epoch
    validation loss and metric, and the wall time of each epoch."""

    step_loss: list[float] = dataclasses.field(default_factory=list)
    step_metric: list[float] = dataclasses.field(default_factory=list)
    epoch_step: list[int] = dataclasses.field(default_factory=list)
    valid_loss: list[float] = dataclasses.field(default_factory=list)
    valid_metric: list[float] = dataclasses.field(default_factory=list)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)

    def add_epoch(self, valid_loss: float, valid_metric: float, seconds: float) -> None:
        self.epoch_step.append(len(self.step_loss))
        self.valid_loss.append(valid_loss)
        self.valid_metric.append(valid_metric)
        self.epoch_seconds.append(seconds)

    def plot(self, path: Path, title: str, metric: str = "accuracy") -> Path:
        """Save a two-panel PNG (loss and ``metric`` vs step) to ``path``; returns ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        window = max(1, len(self.step_loss) // 50)
        steps = range(window, len(self.step_loss) + 1)
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for ax, train, valid, name in ((ax_loss, self.step_loss, self.valid_loss, "loss"),
                                       (ax_acc, self.step_metric, self.valid_metric, metric)):
            ax.plot(steps, _moving_average(train, window), label=f"train (mean of {window} steps)")
            ax.plot(self.epoch_step, valid, "o-", label="valid")
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        return save_figure(fig, title, path)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Means of ``values[i - window + 1 : i + 1]`` for ``i >= window - 1``."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i] - sums[i - window]) / window for i in range(window, len(sums))]

