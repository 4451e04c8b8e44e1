"""`ncp sync`: after `git checkout` + `dvc checkout`, make Snakemake agree that nothing needs to rerun.

DVC restores outputs by content, with fresh modification times, and Snakemake's own records
(.snakemake/metadata: params, code, input checksums) are local and unversioned, so Snakemake would rerun
jobs whose outputs are in fact current. `snakemake --touch --forceall` marks the restored outputs up to
date, in DAG order, and records the current params and code for every job. Outputs that are absent (stages never run
or not pulled) are reported, and the jobs that need them are left for Snakemake to run.

The other direction needs no helper: run `snakemake` (locally, or on a cluster with the SLURM profile),
then `dvc commit -f` hashes the outputs and records them in dvc.lock, after which `dvc status` is clean.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ncp.workflow.export_dvc import JobSpec, workflow_graph


def restored_jobs(jobs: Sequence[JobSpec], root: Path) -> tuple[list[JobSpec], list[str]]:
    """Jobs whose outputs, and all their upstream jobs' outputs, exist; and the outputs that are missing."""
    producer = {path: job for job in jobs for path in job.outputs}
    complete: dict[str, bool] = {}
    missing: list[str] = []
    for job in jobs:  # topological order: every producer is settled before its consumers
        absent = [path for path in job.outputs if not (root / path).exists()]
        missing += absent
        upstream_ok = all(complete[producer[path].stage_name] for path in job.inputs if path in producer)
        complete[job.stage_name] = not absent and upstream_ok
    return [job for job in jobs if complete[job.stage_name]], missing


def touch_command(configfiles: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The `snakemake --touch` command that marks ``targets`` (and what they need) as up to date."""
    command = ["snakemake"]
    if configfiles:  # before the other flags: --configfile takes every word up to the next flag
        command += ["--configfile", *configfiles]
    # --forceall: touch every job (not only those Snakemake thinks stale), so each gets its metadata recorded
    return command + ["--touch", "--forceall", "--cores", "1", *targets]


def sync(
    configfiles: Sequence[str] = (), workdir: str | Path = ".", checkout: bool = False, dry_run: bool = False
) -> int:
    """Touch every restored output of the experiment so Snakemake sees it as current; return an exit status."""
    root = Path(workdir)
    if checkout:
        status = subprocess.run(["dvc", "checkout"], cwd=root, check=False).returncode
        if status != 0:
            return status
    graph = workflow_graph(configfiles, root)
    done, missing = restored_jobs(graph.jobs, root)
    if missing:
        print(
            f"ncp sync: {len(missing)} outputs are absent (`dvc pull` or `dvc checkout` restores versioned ones; "
            "`snakemake` builds the rest):",
            file=sys.stderr,
        )
        for path in missing:
            print(f"  {path}", file=sys.stderr)
    if not done:
        print("ncp sync: no complete job to mark; nothing touched", file=sys.stderr)
        return 0
    # Touch the complete jobs only: naming the default target would make Snakemake touch missing outputs too.
    targets = [path for job in done for path in job.outputs]
    command = touch_command(graph.cli_configfiles, targets)
    if dry_run:
        command.insert(1, "--dry-run")
    return subprocess.run(command, cwd=root, check=False).returncode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncp sync", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="the experiment's params overlays, exactly as given to `snakemake --configfile`",
    )
    parser.add_argument("--checkout", action="store_true", help="run `dvc checkout` first")
    parser.add_argument("--dry-run", "-n", action="store_true", help="show what would be touched")
    parser.add_argument("--directory", default=".", help="the workflow (repository) root")
    return parser


def main_sync(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ncp sync`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return sync(args.configfile, args.directory, checkout=args.checkout, dry_run=args.dry_run)
    except ValueError as error:
        print(f"ncp sync: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_sync())
