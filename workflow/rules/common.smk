# Validation, result paths and the per-stage params; no logic beyond what wiring needs.
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from ncp.config import ConfigError, num_latent_groups, resolve_params, stage_params_json
from ncp.workflow.study import (
    sharing_owner,
    study_experiments,
    sweep_variants,
    table_metric_files,
    table_runs,
    written_tables,
)


def _cuda_available():
    import torch

    return torch.cuda.is_available()


try:
    PARAMS = resolve_params(config)  # the same defaults and checks `ncp <stage>` applies
except ConfigError as error:
    # One line where the user looks, naming the params files (Snakemake's own report is ~10 lines).
    files = " + ".join(["params/default.yaml"] + [str(f) for f in workflow.overwrite_configfiles])
    sys.exit(f"snakemake: {error} (in {files})")
validate(config, "../../ncp/params.schema.yaml")  # fills the defaults into `config` too
MAIN = PARAMS["experiment"]
# This run and the sub-experiments its paper tables gather (Tables 1, 2 and 7; see ncp/workflow/study.py): every
# pipeline rule works for any of them through the {experiment} wildcard.
EXPERIMENTS = {e.name: e for e in study_experiments(PARAMS)}
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


# Jobs that run on the GPU ask for one where a GPU will be used, so the profile's `gpu` resource caps
# how many run at once; on a CPU-only machine they ask for none and run side by side.
GPU_PER_JOB = int(PARAMS["device"] != "cpu" and _cuda_available())

# The ncp/ modules each stage runs: declared as inputs, so a code change reruns exactly its jobs.
_SHARED_CODE = ["ncp/config.py", "ncp/runtime.py", "ncp/cli.py", "ncp/params.schema.yaml"]
_MODEL_CODE = ["ncp/models/base.py", "ncp/models/registry.py"] + sorted(
    str(p)
    for p in Path("ncp/models").rglob("*.py")
    if p.name not in ("base.py", "registry.py", "__init__.py")
)
_PRIOR_CODE = ["ncp/priors/classifiers.py", "ncp/priors/ncp_prior.py", "ncp/priors/checkpoints.py"]
STAGE_CODE = {
    "prepare-data": _SHARED_CODE + ["ncp/prepare_data.py", "ncp/data/datasets.py"],
    "train-vae": _SHARED_CODE
    + _MODEL_CODE
    + ["ncp/train_vae.py", "ncp/training_state.py", "ncp/data/datasets.py", "ncp/priors/gmm.py"],
    "cache-latents": _SHARED_CODE + _MODEL_CODE + ["ncp/cache_latents.py", "ncp/data/datasets.py"],
    "train-nce": _SHARED_CODE + _PRIOR_CODE + ["ncp/train_nce.py", "ncp/priors/nce.py"],
    "sample": _SHARED_CODE
    + _MODEL_CODE
    + _PRIOR_CODE
    + [
        "ncp/sample.py",
        "ncp/variants.py",
        "ncp/data/datasets.py",
        "ncp/samplers/sir.py",
        "ncp/samplers/langevin.py",
    ],
    "evaluate": _SHARED_CODE
    + _MODEL_CODE
    + _PRIOR_CODE
    + [
        "ncp/evaluate.py",
        "ncp/data/datasets.py",
        "ncp/metrics/fid.py",
        "ncp/metrics/feature_nets.py",
        "ncp/metrics/mmd.py",
        "ncp/metrics/nll.py",
        "ncp/metrics/log_z.py",
        "ncp/metrics/neighbours.py",
        "ncp/provenance.py",
    ],
    "tables": _SHARED_CODE
    + [
        "ncp/tables.py",
        "ncp/paper_tables.py",
        "ncp/reporting.py",
        "ncp/paper_results.py",
        "ncp/paper_results.yaml",
        "ncp/workflow/study.py",
        "ncp/provenance.py",
    ],
}


def code(stage):
    """The code files a stage runs (a Snakemake input)."""
    return [path for path in STAGE_CODE[stage] if Path(path).exists()]


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
