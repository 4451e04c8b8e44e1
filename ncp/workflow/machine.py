"""What this machine offers a local Snakemake run: its memory, for the `mem_mb` resource.

Snakemake caps a local run's threads at --cores but its memory at nothing unless --resources mem_mb=N
is given, so two jobs whose peaks each fit could still be started side by side and meet the kernel's
OOM killer together. The workflow registers this machine's memory as the `mem_mb` resource instead
(workflow/rules/common.smk); each job asks for its experiment's `run.mem_mb`, and Snakemake lowers a
request above the machine's memory to it, so such a job runs alone rather than never.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")  # cgroup v2: a container's or a SLURM step's limit


def memory_mb() -> int:
    """This machine's memory in MB (10^6 bytes, Snakemake's mem_mb), or its cgroup's limit if lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = CGROUP_LIMIT.read_text().strip()
    except OSError:  # no cgroup v2 here (macOS, cgroup v1): the physical memory is the bound
        limit = "max"
    bound = min(physical, int(limit)) if limit.isdigit() else physical
    return bound // 10**6
