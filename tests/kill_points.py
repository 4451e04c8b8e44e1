"""Kill a training job at a point of its own progress, not of a clock.

A fixed delay after start ("kill after 0.2-2.5 s") lands at a different step on every machine: on a fast
one it outlasted a whole run, so a kill test found a finished checkpoint and failed (CI, 2026-11-29). These
helpers read the step from the job's resume state instead, which is replaced atomically (a read sees one
whole state), and time the job's steps, so a kill can land a random fraction of a step after a chosen step.
"""

import subprocess
import time
from pathlib import Path

import torch


def wait_for_saved_step(resume: Path, step: int, job: subprocess.Popen, timeout: float = 300.0):
    """Wait until ``job`` has saved a state at ``step`` or later in ``resume``.

    Returns (the saved step, seconds per step), the latter timed between the last two states this job
    wrote (polling every 10 ms sees every state written more than 10 ms after the one before).
    """
    seen: dict[int, float] = {}
    stale = resume.exists()  # a state left by an earlier run: its step is not timed (it was not written now)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        try:
            saved_step = int(torch.load(resume, weights_only=True)["step"]) if resume.exists() else None
        except (OSError, RuntimeError, EOFError):  # replaced between exists() and the read
            saved_step = None
        if saved_step is not None and saved_step not in seen:
            seen[saved_step] = time.monotonic()
            timed = sorted(seen.items())[1:] if stale else sorted(seen.items())
            if saved_step >= step and len(timed) >= 2:
                (previous, at_previous), (last, at_last) = timed[-2:]
                return saved_step, (at_last - at_previous) / (last - previous)
        time.sleep(0.01)
    raise AssertionError(f"the job never saved step {step} (states seen: {sorted(seen)}, exit {job.poll()})")
