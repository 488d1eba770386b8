"""Subprocesses of the device check (probes, tests, the timing): own process groups, logs under
``OUT/logs``, hard timeouts, none left running after the deadline."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from benchmarks.gpu.cases import ROOT
from benchmarks.gpu.record import Recorder


@dataclasses.dataclass
class Job:
    name: str
    argv: list[str]
    timeout: float
    env: dict[str, str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    started: Optional[float] = None
    seconds: float = 0.0
    rc: Optional[int] = None
    timed_out: bool = False
    skipped: str = ""

    def done(self) -> bool:
        return self.rc is not None or bool(self.skipped)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def child_env(emulate: bool, **extra: str) -> dict[str, str]:
    """This process's environment for a child: the checkout importable, TF32 off, the GPU
    shared, no slow tests (the emulated check runs inside a slow test), CPU when emulating."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    env.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_DEFAULT_MATMUL_PRECISION="highest",
               NVIDIA_TF32_OVERRIDE="0", PYTHONUNBUFFERED="1")
    env.pop("JAXSEQ_SLOW", None)
    if emulate:
        env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


class Jobs:
    """Run subprocesses beside the in-process checks: at most ``parallel`` at a time, in the
    order added, none started or left running after ``deadline`` (monotonic seconds)."""

    def __init__(self, out: Path, parallel: int, deadline: float):
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.parallel = parallel
        self.deadline = deadline
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, name: str, argv: Sequence[str], timeout: float, env: dict[str, str]) -> Job:
        job = Job(name, list(argv), timeout, env, self.logs / f"{name}.log")
        with self._lock:
            self.jobs[name] = job
        return job

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._tick()
            time.sleep(0.2)

    def _tick(self) -> None:
        now = time.monotonic()
        running = [j for j in self.jobs.values() if j.proc is not None and j.rc is None]
        for job in running:
            assert job.proc is not None and job.started is not None
            job.seconds = now - job.started
            rc = job.proc.poll()
            if rc is not None:
                job.rc = rc
            elif job.seconds > job.timeout or now > self.deadline:
                job.timed_out = True
                kill(job.proc)
                job.rc = job.proc.wait()
        free = self.parallel - sum(1 for j in self.jobs.values() if j.proc is not None and j.rc is None)
        for job in self.jobs.values():
            if free <= 0:
                break
            if job.proc is None and not job.skipped:
                left = self.deadline - now
                if left < 5:
                    job.skipped = f"budget: {max(left, 0):.0f}s left for subprocesses"
                    continue
                job.timeout = min(job.timeout, left)
                job.started = now
                with open(job.log, "w") as log:
                    job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=job.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                free -= 1

    def wait(self, name: str) -> Job:
        """Block until job ``name`` has ended (or been skipped)."""
        job = self.jobs[name]
        while not job.done():
            time.sleep(0.2)
        return job

    def stop(self) -> None:
        """End every job still running, skip every job not started."""
        with self._lock:
            for job in self.jobs.values():
                if job.proc is not None and job.rc is None:
                    job.timed_out = True
                    kill(job.proc)
                    job.rc = job.proc.wait()
                elif job.proc is None and not job.skipped:
                    job.skipped = "stopped before it started"
        self._stop.set()


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)   # the group this script started for the job


def run_now(job: Job) -> Job:
    """Run ``job`` in the foreground with its timeout."""
    job.started = time.monotonic()
    with open(job.log, "w") as log:
        job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=job.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            job.rc = job.proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            job.timed_out = True
            kill(job.proc)
            job.rc = job.proc.wait()
    job.seconds = time.monotonic() - job.started
    return job


def record_job(rec: Recorder, job: Job, keep: str = r".") -> None:
    """One line for a finished job: pass when it exited 0, its key output lines as the summary."""
    if job.skipped:
        rec.write(job.name, "skip", job.skipped)
        return
    text = job.output()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    key = [ln for ln in lines if re.search(keep, ln)] or lines[-1:]
    status = "error" if job.timed_out else "pass" if job.rc == 0 else "fail"
    head = f"timed out after {job.seconds:.0f}s; " if job.timed_out else f"rc {job.rc}; "
    rec.write(job.name, status, head + " | ".join(key[-3:])[:500],
              {"argv": job.argv[1:], "rc": job.rc, "log": str(job.log), "tail": lines[-40:]},
              job.seconds)


def probe_result(job: Job) -> dict:
    """The JSON line a probe printed last, or what is known of its end."""
    for line in reversed(job.output().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)
    return {"ended_without_result": True, "rc": job.rc, "timed_out": job.timed_out,
            "tail": job.output().splitlines()[-15:]}
