"""Helpers shared by the tests that run Snakemake: a working copy of the workflow, and job counts."""

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path, link_code: bool = True) -> None:
    """Copy Snakefile, workflow/ and params/ into ``dest``; ncp/ as a symlink (enough for Snakemake,
    whose rules list ncp/ modules as inputs) or, with ``link_code=False``, as real files (git and DVC)."""
    for name in ("Snakefile", "workflow", "params"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, dest / name)
    if link_code:
        (dest / "ncp").symlink_to(REPO / "ncp")
    else:
        shutil.copytree(REPO / "ncp", dest / "ncp", ignore=shutil.ignore_patterns("__pycache__"))


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats" block Snakemake prints."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def jobs_by_experiment(output: str) -> dict[tuple[str, str], int]:
    """Jobs per (rule, experiment wildcard) in a dry run's job listing (rules without one: experiment "")."""
    counts: dict[tuple[str, str], int] = {}
    for block in output.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        experiment = ""
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("wildcards:"):
                fields = dict(part.strip().split("=", 1) for part in line[len("wildcards:") :].split(", "))
                experiment = fields.get("experiment", "").strip()
                break
            if line.startswith("Job stats") or line == "":
                break
        counts[(rule, experiment)] = counts.get((rule, experiment), 0) + 1
    return counts
