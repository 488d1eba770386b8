"""Recording the device check: one printed line and one strict JSON line per result, flushed at once
(a run cut short still reports)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass
class Result:
    status: str                       # "pass", "fail", "info"
    summary: str
    metrics: dict = dataclasses.field(default_factory=dict)


def verdict(ok: bool, summary: str, **metrics: Any) -> Result:
    return Result("pass" if ok else "fail", summary, metrics)


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats as strings, numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Recorder:
    """Appends one JSON line per result to ``out/gpu_check.jsonl`` (flushed) and prints a line."""

    def __init__(self, out: Path, budget: float, emulate: bool):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"
        self.t0 = time.monotonic()
        self.budget = budget
        self.emulate = emulate
        self.run = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def write(self, check: str, status: str, summary: str, metrics: Optional[dict] = None,
              seconds: float = 0.0) -> None:
        line = {"run": self.run, "emulate": self.emulate, "check": check, "status": status,
                "summary": summary, "seconds": round(seconds, 2),
                "elapsed": round(self.elapsed(), 1), "metrics": jsonable(metrics or {})}
        with self._lock:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.counts[status] = self.counts.get(status, 0) + 1
        print(f"{status.upper():5s} {check}: {summary} ({seconds:.1f}s)", flush=True)

    def check(self, name: str, fn: Callable[[], Result], min_left: float = 10.0) -> Optional[Result]:
        """Run one in-process check unless less than ``min_left`` seconds are left; record it."""
        if self.left() < min_left:
            self.write(name, "skip", f"budget: {self.left():.0f}s left")
            return None
        start = time.monotonic()
        try:
            result = fn()
        except Exception as err:  # one broken check must not end the run
            self.write(name, "error", f"{type(err).__name__}: {err}"[:400],
                       {"traceback": traceback.format_exc()[-4000:]}, time.monotonic() - start)
            return None
        self.write(name, result.status, result.summary, result.metrics, time.monotonic() - start)
        return result

    def close(self) -> None:
        self._file.close()
