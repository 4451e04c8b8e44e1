"""Typed experiment configs, built from params YAML files checked against `params.schema.yaml`.

The schema is the one place that holds every parameter's default, type and range; Snakemake validates
`config` against it and `ncp <stage>` does the same here, so both see identical values. Stage code
receives the frozen dataclasses below, never the raw dict.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")

# The params sections each stage reads; Snakemake passes exactly these to `ncp <stage>` and the
# generated dvc.yaml lists them as the stage's params, so a change reruns only the stages that read it.
# The `run` section (device, threads, checkpoint frequency, grids, ...) is in none of them: it changes
# how a job runs, not what it computes, and reaches the job apart from the params (`--run-json`).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare-data": ("seed", "data"),
    "train-vae": ("seed", "data", "vae"),
    "cache-latents": ("seed", "data", "vae", "cache"),
    "train-nce": ("seed", "nce"),
    "sample": ("seed", "vae", "sample"),
    "evaluate": ("seed", "data", "vae", "sample", "evaluate"),
    "evaluate-features": ("seed", "data", "evaluate"),  # no vae/sample: features outlive them
    "tables": ("experiment", "paper", "sample", "evaluate"),
}

# Keys that moved into `run` (they were science keys before, so an old params file may still set them).
MOVED_TO_RUN = {
    ("device",): "run.device",
    ("vae", "train", "checkpoint_every"): "run.checkpoint_every",
    ("nce", "checkpoint_every"): "run.nce_checkpoint_every",
    ("sample", "temperature"): "run.grid_temperature",
    ("sample", "grid_size"): "run.grid_size",
    ("sample", "sir", "chunk_size"): "run.sir_chunk_size",
}


class ConfigError(ValueError):
    """A params file or value that does not fit the schema."""


def _load_schema() -> dict:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay one params dict on another (nested dicts merge; other values replace)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _fill_defaults(value: Any, schema: dict) -> Any:
    # jsonschema validates but does not fill defaults; Snakemake's validate() does, so we mirror it.
    if schema.get("type") == "object" and isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill_defaults(value[key], sub)
    return value


def resolve_params(params: dict) -> dict:
    """Fill the schema's defaults into ``params`` and validate it; raise ConfigError on a bad value."""
    for path, new in MOVED_TO_RUN.items():
        section = params
        for key in path[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and path[-1] in section:
            old = ".".join(path)
            raise ConfigError(
                f"params: {old} is now {new} (a run setting: changing it reruns nothing); move it there"
            )
    schema = _load_schema()
    resolved = _fill_defaults(copy.deepcopy(params), schema)
    try:
        jsonschema.validate(resolved, schema)
    except jsonschema.ValidationError as error:
        raise ConfigError(_one_line_schema_error(error)) from None
    return resolved


def _one_line_schema_error(error: jsonschema.ValidationError) -> str:
    """The problem and its fix in one line: the key's dotted path, what is wrong, what is allowed."""
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return (
            f"params: {where}: unknown key {', '.join(map(repr, unknown))} (a typo? the keys here are: "
            f"{', '.join(allowed)})"
        )
    return f"params: {where}: {error.message}; fix {where} in the params file (types and ranges: {SCHEMA_PATH.name})"


def load_params_files(paths: Iterable[str | Path]) -> dict:
    """Read and overlay params YAML files in order (later files win), then resolve them."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"params file not found: {path}")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(f"params file {path} is not valid YAML: {problem}{at}") from None
        if not isinstance(content, dict):
            raise ConfigError(f"params file {path} must hold a mapping, not {type(content).__name__}")
        merged = deep_merge(merged, content)
    return resolve_params(merged)


def stage_params(params: dict, stage: str) -> dict:
    """The part of the resolved params that ``stage`` reads."""
    return {key: params[key] for key in STAGE_SECTIONS[stage] if key in params}


def stage_params_json(params: dict, stage: str) -> str:
    """``stage_params`` as compact, key-sorted JSON (stable, so Snakemake sees no spurious change)."""
    return json.dumps(stage_params(params, stage), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------
# Typed sections. Field names mirror the schema; defaults live only in the schema.


def _build(cls, section: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how much of it to use."""

    name: str
    root: str
    download: bool
    train_limit: int | None
    test_limit: int | None
    image_size: int | None
    grayscale: bool
    test_fraction: float
    split_seed: int
    synthetic_if_missing: bool

    def folder_options(self) -> dict:
        """The options of the ``folder`` dataset, as ``load_dataset`` takes them."""
        return {
            "image_size": self.image_size,
            "grayscale": self.grayscale,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
        }


@dataclass(frozen=True)
class VAETrainConfig:
    """Stage-1 optimisation: Adamax/Adam, LR warm-up + cosine, KL warm-up and balancing."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    lr_min: float
    warmup_epochs: float
    weight_decay: float
    kl_anneal_portion: float
    kl_const_portion: float
    kl_const_coeff: float
    kl_balance: bool
    weight_decay_norm: float
    grad_clip: float | None
    checkpoint_every: int  # = run.checkpoint_every
    num_processes: int
    max_steps: int | None


@dataclass(frozen=True)
class VAEConfig:
    """Which backbone, its architecture arguments, and how to train it."""

    arch: str
    init_checkpoint: str | None
    nvae: dict
    mlp: dict
    conv: dict
    base_prior: str
    gmm_components: int
    train: VAETrainConfig

    @classmethod
    def from_section(cls, section: dict) -> VAEConfig:
        values = dict(section)
        values["train"] = _build(VAETrainConfig, section["train"])
        return _build(cls, values)


@dataclass(frozen=True)
class CacheConfig:
    """How many (z_q, z_p, context) triples stage 2 learns from."""

    num_images: int | None
    passes: int
    batch_size: int
    dtype: str
    shard_mb: float
    mode: str  # "shards": pairs cached on disk; "stream": NCE jobs draw pairs from the VAE


@dataclass(frozen=True)
class NCEConfig:
    """Architecture and optimisation of each per-group classifier D_k."""

    hidden: int
    num_blocks: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    val_fraction: float
    test_fraction: float
    buffer_shards: int
    checkpoint_every: int  # = run.nce_checkpoint_every


@dataclass(frozen=True)
class SampleConfig:
    """Sampling from the base prior and the NCP prior (SIR and Langevin dynamics)."""

    num_samples: int
    batch_size: int
    temperature: float
    methods: tuple[str, ...]
    sir_num_proposals: int
    sir_chunk_size: int  # = run.sir_chunk_size
    ld_num_steps: int
    ld_step_size: float
    grid_size: int
    ld_step_scaling: str = "prior_variance"
    timed_batch_sizes: tuple[int, ...] = (1, 10)  # the schema default; a default here for the field order

    @classmethod
    def from_section(cls, section: dict) -> SampleConfig:
        return cls(
            num_samples=section["num_samples"],
            batch_size=section["batch_size"],
            temperature=section["temperature"],
            methods=tuple(section["methods"]),
            sir_num_proposals=section["sir"]["num_proposals"],
            sir_chunk_size=section["sir"]["chunk_size"],
            ld_num_steps=section["ld"]["num_steps"],
            ld_step_size=section["ld"]["step_size"],
            ld_step_scaling=section["ld"]["step_scaling"],
            grid_size=section["grid_size"],
            timed_batch_sizes=tuple(section["timed_batch_sizes"]),
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """FID, MMD, NLL and log Z settings."""

    fid_features: str
    fid_domain_epochs: int
    fid_reference_images: int | None
    mmd_num_samples: int
    mmd_num_q: int | None
    mmd_pca_dim: int
    mmd_bandwidth_scales: tuple[float, ...]
    nll_iw_samples: int
    nll_num_images: int | None
    nll_batch_size: int
    log_z_samples: int
    neighbours: dict  # Fig. 4: num_queries, num_neighbours, resize, crop
    log_z_seeds: int = 5
    fid_bootstrap: int = 100
    kid_subsets: int = 100

    @classmethod
    def from_section(cls, section: dict) -> EvaluateConfig:
        fid, mmd, nll = section["fid"], section["mmd"], section["nll"]
        return cls(
            fid_features=fid["features"],
            fid_domain_epochs=fid["domain_epochs"],
            fid_reference_images=fid["reference_images"],
            mmd_num_samples=mmd["num_samples"],
            mmd_num_q=mmd["num_q"],
            mmd_pca_dim=mmd["pca_dim"],
            mmd_bandwidth_scales=tuple(float(scale) for scale in mmd["bandwidth_scales"]),
            nll_iw_samples=nll["iw_samples"],
            nll_num_images=nll["num_images"],
            nll_batch_size=nll["batch_size"],
            log_z_samples=nll["log_z_samples"],
            log_z_seeds=nll["log_z_seeds"],
            fid_bootstrap=fid["bootstrap"],
            kid_subsets=fid["kid_subsets"],
            neighbours=dict(section["neighbours"]),
        )


@dataclass(frozen=True)
class RunConfig:
    """How jobs execute (device, threads, checkpoint frequency, grids, memory); no result depends on it."""

    device: str
    threads: int
    checkpoint_every: int
    nce_checkpoint_every: int
    sir_chunk_size: int
    grid_temperature: float
    grid_size: int
    mem_mb: dict


def with_run_settings(params: dict) -> dict:
    """The science sections with the run settings the stage modules read in place (those fields of
    VAETrainConfig and SampleConfig are filled from `run`, never from the science sections)."""
    params = copy.deepcopy(params)
    run = params["run"]
    params["vae"]["train"]["checkpoint_every"] = run["checkpoint_every"]
    params["nce"]["checkpoint_every"] = run["nce_checkpoint_every"]
    params["sample"]["temperature"] = run["grid_temperature"]
    params["sample"]["grid_size"] = run["grid_size"]
    params["sample"]["sir"]["chunk_size"] = run["sir_chunk_size"]
    return params


@dataclass(frozen=True)
class ExperimentConfig:
    """All sections of one experiment, typed."""

    experiment: str
    seed: int
    device: str  # = run.device
    run: RunConfig
    paper_tables: tuple[str, ...]
    paper_row: str | None
    paper: dict  # the whole `paper` section: tables, row, sub-experiments, Table 8's sweep
    data: DataConfig
    vae: VAEConfig
    cache: CacheConfig
    nce: NCEConfig
    sample: SampleConfig
    evaluate: EvaluateConfig

    @classmethod
    def from_params(cls, params: dict) -> ExperimentConfig:
        """Build from a params dict (defaults are filled and values validated first)."""
        params = with_run_settings(resolve_params(params))
        return cls(
            experiment=params["experiment"],
            seed=params["seed"],
            device=params["run"]["device"],
            run=_build(RunConfig, params["run"]),
            paper_tables=tuple(params["paper"]["tables"]),
            paper_row=params["paper"]["row"],
            paper=params["paper"],
            data=_build(DataConfig, params["data"]),
            vae=VAEConfig.from_section(params["vae"]),
            cache=_build(CacheConfig, params["cache"]),
            nce=_build(NCEConfig, params["nce"]),
            sample=SampleConfig.from_section(params["sample"]),
            evaluate=EvaluateConfig.from_section(params["evaluate"]),
        )


def nvae_groups_per_scale(nvae_args: dict) -> list[int]:
    """NVAE's groups per latent scale, listed from the highest resolution down (ada_groups halves)."""
    scales = int(nvae_args.get("num_latent_scales", 1))
    groups = int(nvae_args.get("num_groups_per_scale", 10))
    minimum = int(nvae_args.get("min_groups_per_scale", 1))
    counts = []
    for _ in range(scales):
        counts.append(groups)
        if nvae_args.get("ada_groups", False):
            groups = max(minimum, groups // 2)
    return counts


def num_latent_groups(vae_section: dict) -> int:
    """How many latent groups (and so NCE classifiers) the configured backbone has."""
    if vae_section.get("arch", "nvae") == "nvae":
        return sum(nvae_groups_per_scale(vae_section.get("nvae", {})))
    return 1
