"""`ncp export-dvc`: write dvc.yaml from the Snakemake job graph, one DVC stage per Snakemake job.

Snakemake holds the DAG; DVC versions what it produces. Each generated stage
- runs exactly one Snakemake job: `snakemake --cores all [--configfile ...] --rerun-incomplete
  --allowed-rules <rule> --force <outputs>` (upstream jobs never run: DVC has run them already);
- depends on the job's inputs: data files and the ncp/ code files the rule lists;
- depends on the params sections the job reads (the keys of the JSON its rule passes as `--params-json`,
  i.e. `ncp.params.STAGE_SECTIONS`), listed under every params file that holds them: the Snakefile's
  `configfile:` (params/default.yaml) and each --configfile overlay. DVC fails on a listed key that
  its file lacks, so a section added to a params file later is tracked only once dvc.yaml is
  regenerated (`--check` reports a stale file);
- declares the job's outputs: JSON under results/*/metrics/ as `metrics:`, the rest as `outs:`. All are
  cached: results/*/ is git-ignored, so a `cache: false` output would be kept by neither git nor DVC.
The job graph comes from Snakemake's DAG, which its public API does not expose; we call the private
`Workflow._prepare_dag` / `_build_dag` (as `snakemake --d3dag` does). Only this command needs them,
so Snakemake is not pinned for the workflow; a release that changes them makes this command stop with
a one-line error naming the versions it was tested with (TESTED_SNAKEMAKE) and the pip command to get
one, not a traceback. tests/test_dvc.py covers this module.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_OUT = "dvc.yaml"
_METRICS_DIR = "/metrics/"  # outputs under results/<experiment>/metrics/ are DVC metrics


@dataclass(frozen=True)
class JobSpec:
    """One Snakemake job as DVC needs it: rule, wildcards, files in and out, params sections read."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sections: tuple[str, ...]
    description: str

    @property
    def stage_name(self) -> str:
        """`<rule>` or `<rule>_<wildcard values>`; never '@', which DVC keeps for foreach stages."""
        name = "_".join([self.rule] + [value for _, value in self.wildcards])
        return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


@dataclass(frozen=True)
class WorkflowGraph:
    """The jobs of one experiment in topological order, and the params files the workflow read."""

    jobs: tuple[JobSpec, ...]
    params_files: tuple[str, ...]  # in merge order: the Snakefile's `configfile:`, then --configfile ones
    cli_configfiles: tuple[str, ...]  # only the --configfile ones (what a stage's command repeats)


def _natural_key(value: str) -> tuple:
    # group 10 sorts after group 9
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _relative(path: str | Path, root: Path) -> str:
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ValueError(
                f"{path} lies outside the workflow directory {root}; DVC needs paths inside the repo"
            ) from None
    return path.as_posix()


def _job_sections(job) -> tuple[str, ...]:
    """The params sections a job reads: the keys of the JSON its rule passes as --params-json."""
    cfg = dict(job.params.items()).get("cfg")
    if cfg is None:
        return ()
    return tuple(json.loads(cfg).keys())


def _describe(job) -> str:
    """The rule's docstring on one line, with this job's wildcard values filled in."""
    doc = " ".join((job.rule.docstring or "").split())
    for name, value in job.wildcards.items():
        doc = doc.replace(f"{{wildcards.{name}}}", str(value))
    return doc


def workflow_graph(configfiles: Sequence[str | Path] = (), workdir: str | Path = ".") -> WorkflowGraph:
    """Build the Snakemake DAG of the workflow in ``workdir`` (with --configfile ``configfiles``) and list its jobs."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, Quietness

    root = Path(workdir).resolve()
    cli_files = [(root / Path(f)) if not Path(f).is_absolute() else Path(f) for f in configfiles]
    for path in cli_files:
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
    # dryrun: no log file under .snakemake/log; quiet: the DAG is all we want
    output = OutputSettings(dryrun=True, quiet={Quietness.ALL})
    cwd = os.getcwd()  # the API changes into the workflow directory
    try:
        return _graph(SnakemakeApi(output), cli_files, root)
    finally:
        os.chdir(cwd)


TESTED_SNAKEMAKE = ("9.20", "9.27")  # dvc.yaml was byte-identical with both
TESTED_PIN = "snakemake>=9.20,<9.28"


class SnakemakeInternalsChanged(ValueError):
    """The installed Snakemake no longer has the private DAG internals this command reads."""


def _internals_error(error: Exception) -> SnakemakeInternalsChanged:
    import snakemake

    low, high = TESTED_SNAKEMAKE
    return SnakemakeInternalsChanged(
        f"snakemake {snakemake.__version__} changed the private DAG internals this command reads "
        f"({type(error).__name__}: {error}); it was tested with snakemake {low} to {high}: "
        f"pip install '{TESTED_PIN}' and rerun it"
    )


def _graph(snakemake_api, cli_files: list[Path], root: Path) -> WorkflowGraph:
    """Parse the workflow, build its DAG with every job forced, and read the jobs off it."""
    from snakemake.settings.types import ConfigSettings, DAGSettings, ResourceSettings

    with snakemake_api as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=cli_files),
            workdir=root,
        )
        workflow_api.dag(DAGSettings(forceall=True))
        workflow = _built_workflow(workflow_api)
        rule_order = {rule.name: index for index, rule in enumerate(workflow.rules)}
        jobs = []
        for level in workflow.dag.toposorted():
            ordered = sorted(
                level, key=lambda j: (rule_order[j.rule.name], [_natural_key(v) for v in j.wildcards])
            )
            for job in ordered:
                if not job.output:  # target rules (all, default) produce nothing
                    continue
                jobs.append(
                    JobSpec(
                        rule=job.rule.name,
                        wildcards=tuple((name, str(value)) for name, value in job.wildcards.items()),
                        inputs=tuple(dict.fromkeys(_relative(f, root) for f in job.input)),
                        outputs=tuple(_relative(f, root) for f in job.output),
                        sections=_job_sections(job),
                        description=_describe(job),
                    )
                )
        cli_rel = [_relative(f, root) for f in cli_files]
        read = [_relative(f, root) for f in workflow.configfiles]
    params_files = tuple(dict.fromkeys([f for f in read if f not in cli_rel] + cli_rel))
    return WorkflowGraph(jobs=tuple(jobs), params_files=params_files, cli_configfiles=tuple(cli_rel))


def _built_workflow(workflow_api):
    """The parsed workflow with its DAG built, through Snakemake's private internals (the only way to the
    job graph, see the module docstring); a one-line error if they changed."""
    try:
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        workflow.dag.toposorted  # noqa: B018 (read below; checked here)
    except (AttributeError, TypeError) as error:  # what a renamed or re-shaped internal raises
        raise _internals_error(error) from None
    return workflow


def stage_command(job: JobSpec, cli_configfiles: Sequence[str]) -> str:
    """The command that runs exactly ``job`` through Snakemake (its inputs must exist; nothing upstream runs)."""
    words = ["snakemake", "--cores", "all"]
    if cli_configfiles:
        words += ["--configfile", *cli_configfiles]
    # --force: DVC decided the job must run; --rerun-incomplete: a stage killed earlier is simply redone
    words += ["--rerun-incomplete", "--allowed-rules", job.rule, "--force", *job.outputs]
    return shlex.join(words)


def _top_level_keys(path: Path) -> list[str]:
    with open(path) as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ValueError(f"params file {path} must hold a mapping, not {type(content).__name__}")
    return list(content)


def dvc_stages(graph: WorkflowGraph, root: Path) -> dict:
    """The `stages:` mapping of dvc.yaml for ``graph`` (paths relative to ``root``)."""
    keys_by_file = {name: _top_level_keys(root / name) for name in graph.params_files}
    stages: dict = {}
    for job in graph.jobs:
        if job.stage_name in stages:
            raise ValueError(f"two Snakemake jobs map to the DVC stage name {job.stage_name!r}")
        stage: dict = {"desc": job.description} if job.description else {}
        stage["cmd"] = stage_command(job, graph.cli_configfiles)
        stage["deps"] = list(job.inputs)
        params = []
        for name, keys in keys_by_file.items():
            # only keys the file holds: DVC fails on a params key missing from its file
            listed = [section for section in job.sections if section in keys]
            if listed:
                params.append({name: listed})
        if params:
            stage["params"] = params
        outs = [path for path in job.outputs if not _is_metric(path)]
        metrics = [path for path in job.outputs if _is_metric(path)]
        if outs:
            stage["outs"] = outs
        if metrics:
            stage["metrics"] = metrics
        stages[job.stage_name] = stage
    return stages


def _is_metric(path: str) -> bool:
    return _METRICS_DIR in f"/{path}" and path.endswith(".json")


class _NoAliasDumper(yaml.SafeDumper):
    """A YAML dumper that copies repeated lists instead of writing &anchors / *aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


def export_command(configfiles: Sequence[str], out: str) -> str:
    """The `ncp export-dvc` command line that regenerates a file (written into its header)."""
    words = ["ncp", "export-dvc"]
    if configfiles:
        words += ["--configfile", *configfiles]
    return shlex.join(words + ["--out", out])


def render_dvc_yaml(
    configfiles: Sequence[str | Path] = (), workdir: str | Path = ".", out: str = DEFAULT_OUT
) -> str:
    """The text of dvc.yaml for the workflow in ``workdir`` run with --configfile ``configfiles``."""
    root = Path(workdir).resolve()
    graph = workflow_graph(configfiles, root)
    out_path = (root / out).resolve()
    if out_path.name != "dvc.yaml" or not out_path.is_relative_to(root):
        raise ValueError(f"--out {out}: DVC reads only files named dvc.yaml inside the repository ({root})")
    # A pipeline in a subfolder (e.g. pipelines/groups_15/dvc.yaml) runs its stages from the root.
    wdir = os.path.relpath(root, out_path.parent)
    header = [
        "# Generated from the Snakemake job graph; do not edit. One DVC stage per Snakemake job.",
        f"# Regenerate with: {export_command(graph.cli_configfiles, out)}",
        "# Params files (merge order): " + ", ".join(graph.params_files),
        "# Snakemake runs the DAG (in parallel, on a cluster); afterwards `dvc commit -f` records results in",
        "# dvc.lock. After `git checkout` + `dvc checkout`, `ncp sync` makes Snakemake agree nothing reruns.",
    ]
    stages = dvc_stages(graph, root)
    if wdir != ".":
        stages = {name: {"wdir": wdir, **stage} for name, stage in stages.items()}
    body = yaml.dump(
        {"stages": stages},
        Dumper=_NoAliasDumper,
        sort_keys=False,
        default_flow_style=False,
        width=10_000,
        allow_unicode=True,
    )
    return "\n".join(header) + "\n" + body


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ncp export-dvc", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        metavar="FILE",
        help="params overlays, exactly as given to `snakemake --configfile` (repeated in every stage)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="where to write (default dvc.yaml; '-' for stdout)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 with a diff if --out is out of date"
    )
    parser.add_argument("--directory", default=".", help="the workflow (repository) root")
    return parser


def main_export(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ncp export-dvc`; returns the exit status."""
    args = _parser().parse_args(argv)
    root = Path(args.directory)
    try:
        text = render_dvc_yaml(args.configfile, root, DEFAULT_OUT if args.out == "-" else args.out)
    except ValueError as error:
        print(f"ncp export-dvc: error: {error}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    target = root / args.out
    if args.check:
        current = target.read_text() if target.is_file() else ""
        if current == text:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(target), "generated")
        )
        print(
            f"ncp export-dvc: {target} is out of date; regenerate with: {export_command(args.configfile, args.out)}",
            file=sys.stderr,
        )
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main_export())
