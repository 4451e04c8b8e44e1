"""After a failed `snakemake` run: the one-line errors of the failed jobs, repeated at the very end.

Each `ncp <stage> --log FILE` already echoes its error line to the terminal when it fails, but with
several jobs running that line scrolls away under Snakemake's report. The Snakefile's ``onerror``
handler calls :func:`failed_job_errors` with Snakemake's own log, which names the log file of every
failed job, and prints the error lines found there.
"""

from __future__ import annotations

import re
from pathlib import Path

_FAILED_JOB_LOG = re.compile(r"^\s*log: (.+?) \(check log file\(s\) for error details\)\s*$")
_ERROR_LINE = re.compile(r"^ncp [a-z-]+( [a-z]+)?: error: ")


def failed_job_errors(snakemake_logs: str | Path | list) -> list[str]:
    """``<job log>: <error line>`` for every failed job Snakemake's log(s) name (in order, no repeats)."""
    paths = [snakemake_logs] if isinstance(snakemake_logs, (str, Path)) else list(snakemake_logs)
    lines = [
        line
        for path in map(Path, paths)
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
    ]
    found: list[str] = []
    for line in lines:
        match = _FAILED_JOB_LOG.match(line)
        if not match:
            continue
        for job_log in match.group(1).split(", "):
            job_log_path = Path(job_log)
            if not job_log_path.is_file():
                continue
            errors = [
                text
                for text in job_log_path.read_text(errors="replace").splitlines()
                if _ERROR_LINE.match(text)
            ]
            entry = f"{job_log}: {errors[-1]}" if errors else f"{job_log}: no error line (see the log)"
            if entry not in found:
                found.append(entry)
    return found
