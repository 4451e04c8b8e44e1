# Validation, result paths, the per-stage params and the run settings; no logic beyond what wiring needs.
import json
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from ncp.params import ConfigError, num_latent_groups, resolve_params, stage_params_json
from ncp.gpu_slots import visible_gpus
from ncp.workflow.code_deps import stage_code
from ncp.workflow.machine import memory_mb as machine_memory_mb
from ncp.workflow.study import (
    overlay_study,
    sharing_owner,
    study_experiments,
    sweep_variants,
    table_metric_files,
    table9_run,
    table_runs,
    written_tables,
)

# The SLURM profile says its GPU jobs run on GPU nodes (`--config cluster_gpus=true`): a dry run on a
# login node could not tell otherwise (Snakemake runs it with its dry-run executor, not the cluster's).
CLUSTER_GPUS = bool(config.pop("cluster_gpus", False))
# An overlay (--configfile x.yaml) inherits params/default.yaml's science, not its study (`paper`) or
# its run settings (`run`, sized for the small CPU default).
_overlay_config = dict(overlay_study(config, DEFAULT_PARAMS, workflow.overwrite_configfiles))
for _section in ("paper", "run"):  # --config paper=... / run=... still apply
    if _section in (workflow.config_settings.overwrite_config or {}):
        _overlay_config[_section] = workflow.config_settings.overwrite_config[_section]
config.clear()
config.update(_overlay_config)
try:
    PARAMS = resolve_params(config)  # the same defaults and checks `ncp <stage>` applies
except ConfigError as error:
    # One line where the user looks, naming the params files (Snakemake's own report is ~10 lines).
    files = " + ".join([DEFAULT_PARAMS] + [str(f) for f in workflow.overwrite_configfiles])
    sys.exit(f"snakemake: {error} (in {files})")
validate(config, "../../ncp/params.schema.yaml")  # fills the defaults into `config` too
MAIN = PARAMS["experiment"]
# This run and the sub-experiments its paper tables gather (Tables 1, 2 and 7; see ncp/workflow/study.py): every
# pipeline rule works for any of them through the {experiment} wildcard.
EXPERIMENTS = {e.name: e for e in study_experiments(PARAMS, repo=REPO)}
RESULTS = "results/{experiment}"
MAIN_RESULTS = f"results/{MAIN}"
SAMPLE_METHODS = ["base"] + list(PARAMS["sample"]["methods"])  # this run's
NCP_METHOD = (SAMPLE_METHODS[1:] or ["base"])[0]  # the sampler Fig. 4 shows
TABLE8_VARIANTS = sweep_variants(PARAMS)


wildcard_constraints:
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),
    group=r"\d+",


def experiment_params(wildcards):
    """The resolved params of the wildcards' experiment."""
    return EXPERIMENTS[wildcards.experiment].params


def groups_of(experiment):
    """The latent groups of ``experiment``."""
    return list(range(num_latent_groups(EXPERIMENTS[experiment].params["vae"])))


def groups(wildcards):
    return groups_of(wildcards.experiment)


def overlay(wildcards):
    """A sub-experiment's params overlay, as an input (a change to it reruns that experiment's jobs)."""
    path = EXPERIMENTS[wildcards.experiment].overlay
    return [path] if path else []


def shared(stage, path):
    """``path`` under the first experiment with the same ``stage`` params (data splits and FID features
    are computed once per study)."""
    experiments = list(EXPERIMENTS.values())
    return lambda wildcards: f"results/{sharing_owner(experiments, wildcards.experiment, stage)}/{path}"


def classifiers(wildcards):
    return expand(f"results/{wildcards.experiment}/nce/group_{{group}}.pt", group=groups(wildcards))


def samples(wildcards):
    """The experiment's sample files: the base prior's and each of its NCP samplers'."""
    methods = ["base"] + list(experiment_params(wildcards)["sample"]["methods"])
    return expand(f"results/{wildcards.experiment}/samples/{{method}}.pt", method=methods)


def run_settings(experiment):
    """The `run` section of ``experiment`` (device, threads, ...): how its jobs execute."""
    return EXPERIMENTS[experiment].params["run"]


# Run settings reach the jobs through one JSON file per experiment (`--run-json`), written when the
# workflow starts executing. They are in no rule's params or inputs, and the shell command names the
# file only through the {experiment} wildcard, so neither Snakemake's params, input nor code trigger
# sees them: changing a run setting reruns nothing that is finished (the next jobs use the new values).
RUN_JSON = ".snakemake/ncp-run/{wildcards.experiment}.json"  # the shell commands name it literally


def write_run_settings():
    for name, experiment in EXPERIMENTS.items():
        path = Path(RUN_JSON.format(wildcards=type("W", (), {"experiment": name})))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(experiment.params["run"], sort_keys=True, indent=2) + "\n")
        os.replace(tmp, path)


# `ncp <stage>` ends itself if this Snakemake process ends before it (see ncp.runtime.exit_with_workflow).
os.environ.update(NCP_WORKFLOW_PID=str(os.getpid()))


def _gpus_here():
    if CLUSTER_GPUS or workflow.non_local_exec or workflow.remote_exec:
        return True  # a cluster job: the compute node has GPUs even where this login node has none
    return bool(visible_gpus())


# A local run caps its GPU jobs at the GPUs this machine shows (CUDA_VISIBLE_DEVICES respected) unless
# --resources gpu=N says otherwise; each job then claims a GPU of its own (ncp/gpu_slots.py). Not set in
# the default profile: Snakemake applies that profile over --profile slurm, whose cap would be lost.
if not (workflow.non_local_exec or workflow.remote_exec) and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", len(visible_gpus()))
# ... and its jobs' memory at this machine's (ncp/workflow/machine.py), unless --resources mem_mb=N: jobs
# run side by side only while their `run.mem_mb` requests add up to no more; a larger request runs alone.
if not (workflow.non_local_exec or workflow.remote_exec) and "mem_mb" not in workflow.global_resources:
    workflow.register_resource("mem_mb", machine_memory_mb())


_GPUS_HERE = None


def gpus(count=1):
    """A GPU job's `gpu` resource: ``count`` GPUs unless its experiment runs on the CPU (`run.device:
    cpu`) or no GPU is there to use. The `gpu` resource caps how many GPU jobs run at once
    (`--resources gpu=N`; on SLURM it becomes --gpus); each job then claims its own GPU (ncp/gpu_slots.py)."""

    def request(wildcards):
        global _GPUS_HERE
        if run_settings(wildcards.experiment)["device"] == "cpu":
            return 0
        if _GPUS_HERE is None:
            _GPUS_HERE = _gpus_here()
        if not _GPUS_HERE:
            return 0
        return count(wildcards) if callable(count) else count

    return request


def job_threads(multiplier=None):
    """A compute job's threads: its experiment's `run.threads` (times its processes for DDP training)."""
    return lambda wildcards: run_settings(wildcards.experiment)["threads"] * (
        multiplier(wildcards) if multiplier else 1
    )


def mem_mb(kind):
    """A job's memory request (MB) from its experiment's `run.mem_mb`."""
    return lambda wildcards: run_settings(wildcards.experiment)["mem_mb"][kind]


def training_processes(wildcards):
    return experiment_params(wildcards)["vae"]["train"]["num_processes"]


def code(stage):
    """The code files a stage runs (a Snakemake input): its module and the ncp/ modules it imports."""
    return stage_code(stage, relative_to=Path.cwd())


def sweep_sample_count(wildcards):
    """`--num-samples N` for a Table 8 setting when `paper.table8.num_samples` sets N, else nothing."""
    count = experiment_params(wildcards)["paper"]["table8"]["num_samples"]
    sweep_setting = wildcards.method.startswith(("sir_m", "ld_t"))
    return f"--num-samples {count}" if sweep_setting and count else ""


def params_json(stage):
    """The params sections `stage` reads, as the JSON passed to `ncp <stage> --params-json`."""
    return lambda wildcards: stage_params_json(experiment_params(wildcards), stage)


def main_params_json(stage):
    """``params_json`` for the rules that only this run has (its tables and figures)."""
    return stage_params_json(PARAMS, stage)


PAPER_TABLE_NAMES = [f"table{n}" for n in range(1, 10)]


def paper_table_inputs(table):
    """The metric files of every run that supplies rows to ``table``."""
    return table_metric_files(list(EXPERIMENTS.values()), table, TABLE8_VARIANTS)


def paper_table_runs(table):
    """The metrics folders of those runs, this run's first (what `ncp paper-table --runs` takes)."""
    return [f"results/{name}/metrics" for name in table_runs(list(EXPERIMENTS.values()), table)]


def all_outputs():
    """What `snakemake` builds by default for this experiment: its summary, tables, figures and grids."""
    return (
        [
            f"{MAIN_RESULTS}/metrics/summary.json",
            f"{MAIN_RESULTS}/tables/results.md",
            f"{MAIN_RESULTS}/figures/fig4_neighbours.png",
        ]
        + expand(f"{MAIN_RESULTS}/figures/samples_{{method}}.png", method=SAMPLE_METHODS)
        + expand(f"{MAIN_RESULTS}/tables/{{table}}.{{ext}}", table=written_tables(PARAMS), ext=["md", "tex"])
    )
