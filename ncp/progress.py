"""Progress bars for long stages: images (or samples) done, rate and time left, written to the log.

Snakemake sends a job's stderr to its log file, which is not a terminal: there the bar is redrawn at
most every ``LOG_INTERVAL_S`` seconds in plain ASCII, so the log stays readable with ``tail -f`` or
``less`` and does not grow by a line per batch. At a terminal it refreshes like any tqdm bar.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # redraw interval when stderr is a file (a Snakemake log)
TERMINAL_INTERVAL_S = 0.5


def progress_bar(total: int, desc: str, unit: str = "img", disable: bool = False) -> tqdm:
    """A bar of ``total`` ``unit`` s; call ``.update(n)`` as work is done and ``.close()`` at the end."""
    to_terminal = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=False,
        file=sys.stderr,
        ascii=not to_terminal,
        ncols=None if to_terminal else 100,
        mininterval=TERMINAL_INTERVAL_S if to_terminal else LOG_INTERVAL_S,
        disable=disable,
    )
