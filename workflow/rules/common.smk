# Validation, result paths and the per-stage params; no logic beyond what wiring needs.
import json
from pathlib import Path

import yaml
from snakemake.utils import validate

import ncp
from ncp.config import num_latent_groups, resolve_params, stage_params_json


def _cuda_available():
    import torch

    return torch.cuda.is_available()


validate(config, "../../ncp/params.schema.yaml")
PARAMS = resolve_params(config)  # the same defaults and checks `ncp <stage>` applies
RESULTS = f"results/{PARAMS['experiment']}"
GROUPS = list(range(num_latent_groups(PARAMS["vae"])))
SAMPLE_METHODS = ["base"] + list(PARAMS["sample"]["methods"])
# Jobs that run on the GPU ask for one where a GPU will be used, so the profile's `gpu` resource caps
# how many run at once; on a CPU-only machine they ask for none and run side by side.
GPU_PER_JOB = int(PARAMS["device"] != "cpu" and _cuda_available())

# The ncp/ modules each stage runs: declared as inputs, so a code change reruns exactly its jobs.
_SHARED_CODE = ["ncp/config.py", "ncp/runtime.py", "ncp/cli.py", "ncp/params.schema.yaml"]
_MODEL_CODE = ["ncp/models/base.py", "ncp/models/registry.py"] + sorted(
    str(p) for p in Path("ncp/models").rglob("*.py") if p.name not in ("base.py", "registry.py", "__init__.py")
)
_PRIOR_CODE = ["ncp/priors/classifiers.py", "ncp/priors/ncp_prior.py", "ncp/priors/checkpoints.py"]
STAGE_CODE = {
    "prepare-data": _SHARED_CODE + ["ncp/prepare_data.py", "ncp/data/datasets.py"],
    "train-vae": _SHARED_CODE + _MODEL_CODE + ["ncp/train_vae.py", "ncp/data/datasets.py", "ncp/priors/gmm.py"],
    "cache-latents": _SHARED_CODE + _MODEL_CODE + ["ncp/cache_latents.py", "ncp/data/datasets.py"],
    "train-nce": _SHARED_CODE + _PRIOR_CODE + ["ncp/train_nce.py", "ncp/priors/nce.py"],
    "sample": _SHARED_CODE + _MODEL_CODE + _PRIOR_CODE
    + ["ncp/sample.py", "ncp/samplers/sir.py", "ncp/samplers/langevin.py"],
    "evaluate": _SHARED_CODE + _MODEL_CODE + _PRIOR_CODE
    + ["ncp/evaluate.py", "ncp/data/datasets.py", "ncp/metrics/fid.py", "ncp/metrics/feature_nets.py",
       "ncp/metrics/mmd.py", "ncp/metrics/nll.py", "ncp/metrics/log_z.py"],
    "tables": _SHARED_CODE + ["ncp/tables.py", "ncp/paper_results.yaml"],
}


def code(stage):
    """The code files a stage runs (a Snakemake input)."""
    return [path for path in STAGE_CODE[stage] if Path(path).exists()]


def params_json(stage):
    """The params sections `stage` reads, as the JSON passed to `ncp <stage> --params-json`."""
    return stage_params_json(PARAMS, stage)


def written_paper_tables(requested):
    """The paper tables `ncp tables` writes for this run: table9, and those with per-run rows (as ncp/tables.py)."""
    paper = yaml.safe_load((Path(ncp.__file__).parent / "paper_results.yaml").read_text())["tables"]
    return [
        name
        for name in requested
        if name == "table9" or ("rows" in paper.get(name, {}) and "value" in paper[name]["rows"][0])
    ]


PAPER_TABLES = written_paper_tables(PARAMS["paper"]["tables"])


def all_outputs():
    """What `snakemake` builds by default for this experiment."""
    return [
        f"{RESULTS}/metrics/summary.json",
        f"{RESULTS}/tables/results.md",
    ] + expand(f"{RESULTS}/figures/samples_{{method}}.png", method=SAMPLE_METHODS)
