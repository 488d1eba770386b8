"""The benchmark problems: every shape, batch of lengths and selection the scripts share.

Two kinds of problem:

* :class:`BenchConfig` (the main table, ``python -m benchmarks.run``): a torch-style recurrent
  stack and a ragged batch, lengths ``U[T/10, T]`` with one full row; the loss of a step is the sum
  of the valid outputs and of the final states, differentiated with respect to every parameter
  and the input;
* :class:`FastRNNsConfig` (torch's own RNN benchmark, ``benchmarks/fastrnns/factory.py`` in the
  pytorch repository, ``python -m benchmarks.run --config fastrnns``): its ``vl_py`` (varlen) and
  ``cudnn`` (dense) problems as torch defines them: random ``hx``/``cx``, lengths
  ``randint(30, 100)`` for varlen, and the backward pass of a random gradient of the padded output
  with respect to the parameters only.

Nothing here imports another benchmark module.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

TORCH_CLASSES = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
GATES = {"LSTM": 4, "GRU": 3}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A benchmark problem: a torch-style recurrent stack and a ragged batch of lengths."""

    name: str
    mode: str            # "LSTM" or "GRU"
    batch: int
    time: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    seed: int = 0
    remat: Optional[int] = None   # the GPU table also times jaxseq with ``remat=k`` (long T)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def padded_time(self) -> int:
        """``T`` of the padded batch every contender runs."""
        return self.time

    @property
    def input_grad(self) -> bool:
        """Whether a training step differentiates the input too (not only the parameters)."""
        return True

    def describe(self) -> str:
        bi = " bi" if self.bidirectional else ""
        return (f"{self.mode} B={self.batch} T={self.time} I={self.input_size} H={self.hidden_size} "
                f"L={self.num_layers}{bi}")

    def lengths(self) -> np.ndarray:
        """``U[T/10, T]`` lengths, one row of length ``T``, in random order."""
        rng = np.random.default_rng(self.seed)
        lengths = rng.integers(max(1, self.time // 10), self.time + 1, size=self.batch)
        lengths[0] = self.time
        return rng.permutation(lengths)

    def inputs(self) -> np.ndarray:
        """``x [T, B, I]`` float32, zero at padded positions."""
        rng = np.random.default_rng(self.seed + 1)
        x = rng.standard_normal((self.time, self.batch, self.input_size)).astype(np.float32)
        x[np.arange(self.time)[:, None] >= self.lengths()[None, :]] = 0
        return x

    def matmul_flops(self, tokens: int) -> float:
        """Matmul FLOPs of one training step over ``tokens`` row-steps: forward ``x W_ih + h W_hh``,
        backward ``dgates W_hh``, ``dW_ih``, ``dW_hh`` and (with :attr:`input_grad`, or above the
        first layer) ``dx``."""
        gates = GATES[self.mode] * self.hidden_size
        total = 0.0
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else self.directions * self.hidden_size
            forward = 2 * gates * (fan_in + self.hidden_size)
            backward = 2 * forward - (0 if self.input_grad or layer else 2 * gates * fan_in)
            total += self.directions * tokens * (forward + backward)
        return total

    def valid_flops(self) -> float:
        """Matmul FLOPs of one training step counting valid tokens only."""
        return self.matmul_flops(int(self.lengths().sum()))

    def torch_module(self) -> torch.nn.RNNBase:
        torch.manual_seed(self.seed)
        return TORCH_CLASSES[self.mode](self.input_size, self.hidden_size, self.num_layers,
                                        bidirectional=self.bidirectional)


@dataclasses.dataclass(frozen=True)
class FastRNNsConfig(BenchConfig):
    """A problem of torch's ``benchmarks/fastrnns``: ``varlen`` (``vl_py``: ``pack_sequence``
    of lengths ``randint(min_length, time)``, ``nn.LSTM``, ``pad_packed_sequence``) or dense
    (``cudnn``: ``[T, B, I]`` with no padding, where torch runs its fused LSTM). Random ``hx``
    and ``cx``; the step is the backward pass of a random gradient of the padded output, with
    respect to the parameters (torch's inputs and states do not require grad)."""

    varlen: bool = True
    min_length: int = 30

    def describe(self) -> str:
        kind = (f"lengths randint({self.min_length}, {self.time})" if self.varlen
                else "dense, no padding")
        return f"{super().describe()}, {kind}"

    def lengths(self) -> np.ndarray:
        """varlen: ``torch.randint(min_length, time, [B])`` (seeded); dense: all ``T``."""
        if not self.varlen:
            return np.full(self.batch, self.time, np.int64)
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(self.min_length, self.time, (self.batch,), generator=generator).numpy()

    @property
    def padded_time(self) -> int:
        """The padded length of the output: ``max(lengths)`` (``pad_packed_sequence`` without
        ``total_length``), ``T`` when dense."""
        return int(self.lengths().max())

    def inputs(self) -> np.ndarray:
        """``x [T', B, I]`` (``T' = padded_time``), zero at padding."""
        rng = np.random.default_rng(self.seed + 1)
        T = self.padded_time
        x = rng.standard_normal((T, self.batch, self.input_size)).astype(np.float32)
        x[np.arange(T)[:, None] >= self.lengths()[None, :]] = 0
        return x

    def states(self) -> tuple[np.ndarray, np.ndarray]:
        """Random ``(h_0, c_0)``, each ``[D*L, B, H]``."""
        rng = np.random.default_rng(self.seed + 2)
        shape = (self.directions * self.num_layers, self.batch, self.hidden_size)
        return (rng.standard_normal(shape).astype(np.float32),
                rng.standard_normal(shape).astype(np.float32))

    def output_grad(self) -> np.ndarray:
        """The random gradient of the padded output ``[T', B, D*H]`` (zero at padding: torch's
        padded output there is a constant, so its gradient goes nowhere)."""
        rng = np.random.default_rng(self.seed + 3)
        T = self.padded_time
        g = rng.standard_normal((T, self.batch, self.directions * self.hidden_size))
        g[np.arange(T)[:, None] >= self.lengths()[None, :]] = 0
        return g.astype(np.float32)

    @property
    def input_grad(self) -> bool:
        return False


CONFIGS: dict[str, BenchConfig] = {c.name: c for c in [
    BenchConfig("lstm", "LSTM", batch=64, time=100, input_size=128, hidden_size=256),
    BenchConfig("bilstm2", "LSTM", batch=32, time=200, input_size=64, hidden_size=128,
                num_layers=2, bidirectional=True),
    BenchConfig("long", "LSTM", batch=16, time=1000, input_size=64, hidden_size=128),
    BenchConfig("small", "LSTM", batch=64, time=100, input_size=32, hidden_size=32),
    BenchConfig("gru", "GRU", batch=64, time=100, input_size=128, hidden_size=256),
    BenchConfig("deepspeech", "LSTM", batch=32, time=500, input_size=161, hidden_size=1024,
                num_layers=5, bidirectional=True),
    # long sequences (issue 25): where memory, not time, stops a user on an accelerator
    BenchConfig("long_bi2", "LSTM", batch=16, time=4000, input_size=64, hidden_size=128,
                num_layers=2, bidirectional=True, remat=64),
    # torch's benchmarks/fastrnns defaults (miniBatch 64, inputSize = hiddenSize = 512)
    FastRNNsConfig("vl_py", "LSTM", batch=64, time=100, input_size=512, hidden_size=512),
    FastRNNsConfig("dense", "LSTM", batch=64, time=100, input_size=512, hidden_size=512,
                   varlen=False),
]}
#: Default selections: the CPU table and the GPU table (``--gpu``); ``--config NAME`` also takes
#: these group names.
GROUPS: dict[str, tuple[str, ...]] = {
    "main": ("lstm", "bilstm2", "long", "small", "gru"),
    "fastrnns": ("vl_py", "dense"),
    "gpu": ("vl_py", "dense", "long_bi2", "lstm", "bilstm2", "deepspeech", "gru"),
}
CPU_CONFIGS = GROUPS["main"]
GPU_CONFIGS = GROUPS["gpu"]
#: ``--quick`` default: every contender and every cell kind at least once, in well under a minute.
QUICK_CONFIGS = ("lstm", "bilstm2", "gru")


def select(names: Optional[list[str]], default: tuple[str, ...]) -> list[str]:
    """Config names from ``--config`` values (names or :data:`GROUPS`), in order, each once."""
    chosen = [n for name in (names or default) for n in GROUPS.get(name, (name,))]
    return list(dict.fromkeys(chosen))


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """Tiny shapes of the same structure, for the smoke test."""
    return dataclasses.replace(cfg, batch=min(cfg.batch, 8), time=min(cfg.time, 24),
                               input_size=8, hidden_size=16,
                               **({"min_length": 6} if isinstance(cfg, FastRNNsConfig) else {}))
