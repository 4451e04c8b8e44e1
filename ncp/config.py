"""Typed experiment configs, built from params YAML files checked against `params.schema.yaml`.

The schema is the one place that holds every parameter's default, type and range; Snakemake validates
`config` against it and `ncp <stage>` does the same here, so both see identical values. Stage code
receives the frozen dataclasses below, never the raw dict. The typed configs nest as the params do
(``cfg.sample.sir.num_proposals`` is ``sample: sir: num_proposals``).

The backbone sections (``vae.nvae``, ``vae.mlp``, ``vae.conv``) are the exception for defaults: the schema
lists their keys, types and meanings, but a key left out takes the backbone's own default (NVAE's
argparse defaults, the MLP / conv config classes), so that a checkpoint's arguments rebuild the same
model without the schema.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import jsonschema
import yaml

from ncp.models.nvae.config import num_groups_of_args

if TYPE_CHECKING:
    from ncp.models.conv_vae import ConvVAEConfig
    from ncp.models.mlp_vae import MLPVAEConfig
    from ncp.models.nvae.config import NVAEConfig

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
    "sample": ("seed", "data", "vae", "sample"),  # data: NVAE's typed config needs data.name
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
# Typed sections. Field names mirror the schema, nested as the params are; defaults live only in the schema.


def _build(cls, section: dict):
    """A frozen section dataclass from its (resolved) params: nested sections become their dataclasses,
    lists become tuples (of floats where the field says so)."""
    hints = get_type_hints(cls)
    values = {}
    for field in fields(cls):
        value, hint = section[field.name], hints[field.name]
        if is_dataclass(hint):
            value = _build(hint, value)
        elif get_origin(hint) is tuple:
            value = tuple(float(v) for v in value) if get_args(hint)[0] is float else tuple(value)
        elif get_origin(hint) is dict:
            value = {key: tuple(item) for key, item in value.items()}
        values[field.name] = value
    return cls(**values)


@dataclass(frozen=True)
class Table8Config:
    """Table 8's sampling sweep: extra runs from this run's VAE and classifiers."""

    sir_num_proposals: tuple[int, ...]
    ld_num_steps: tuple[int, ...]
    num_samples: int | None  # images per setting (None: sample.num_samples)


@dataclass(frozen=True)
class PaperConfig:
    """Which of the paper's tables this experiment fills, as which row, and from which sub-experiments."""

    tables: tuple[str, ...]
    row: str | None
    experiments: dict[str, tuple[str, ...]]  # table -> params overlays of its sub-experiments
    table8: Table8Config
    table9_from: str | None  # the sub-experiment whose latents fill Table 9 (None: this run)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how much of it to use."""

    name: Literal["mnist5k", "mnist", "cifar10", "celeba64", "celebahq256", "folder", "idx"]
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
    optimizer: Literal["adamax", "adam"]
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
    """Which backbone, its typed architecture config, and how to train it.

    Only the backbone in use (``arch``) has its section built (the other two are None; the schema has
    still checked their keys): NVAE's config depends on the data set, which another backbone's run
    need not give NVAE a name for.
    """

    arch: Literal["nvae", "mlp", "conv"]
    init_checkpoint: str | None
    nvae: NVAEConfig | None
    mlp: MLPVAEConfig | None
    conv: ConvVAEConfig | None
    base_prior: Literal["gaussian", "gmm"]
    gmm_components: int
    train: VAETrainConfig

    @classmethod
    def from_section(cls, section: dict, data_name: str) -> VAEConfig:
        """Build from the resolved ``vae`` section; ``data_name`` is ``data.name`` (NVAE's dataset)."""
        from ncp.models.registry import backbone_config

        arch = section["arch"]
        if section["base_prior"] == "gmm" and arch == "nvae":
            raise ConfigError(
                "params: vae.base_prior: gmm needs a single-group backbone (vae.arch mlp or conv)"
            )
        try:
            backbone = backbone_config(arch, section[arch], data_name)
        except ValueError as error:
            raise ConfigError(f"params: vae.{arch}: {error}") from None
        built = {name: backbone if name == arch else None for name in ("nvae", "mlp", "conv")}
        return cls(
            arch=arch,
            init_checkpoint=section["init_checkpoint"],
            base_prior=section["base_prior"],
            gmm_components=section["gmm_components"],
            train=_build(VAETrainConfig, section["train"]),
            **built,
        )

    @property
    def backbone(self) -> Any:
        """The typed config of the backbone in use (NVAEConfig, MLPVAEConfig or ConvVAEConfig)."""
        return getattr(self, self.arch)

    def to_section(self) -> dict:
        """Back to a params ``vae`` section that rebuilds this config (``ncp train-vae --params-json``)."""
        backbone = asdict(self.backbone)
        for name in ("base_prior", "gmm_components", "gmm_covariance"):  # vae.base_prior sets those
            backbone.pop(name, None)
        section = {
            "arch": self.arch,
            "init_checkpoint": self.init_checkpoint,
            self.arch: backbone,
            "base_prior": self.base_prior,
            "gmm_components": self.gmm_components,
            # checkpoint_every lives in `run` (how the job runs): the science section leaves it out
            "train": {k: v for k, v in asdict(self.train).items() if k != "checkpoint_every"},
        }
        return json.loads(json.dumps(section))  # plain JSON values (tuples -> lists), as params are


@dataclass(frozen=True)
class CacheConfig:
    """How many (z_q, z_p, context) triples stage 2 learns from."""

    num_images: int | None
    passes: int
    batch_size: int
    dtype: Literal["float32", "float16"]
    shard_mb: float
    mode: Literal[
        "shards", "stream"
    ]  # shards: pairs cached on disk; stream: NCE jobs draw pairs from the VAE


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
class SIRConfig:
    """Sampling-importance-resampling: M proposals per group, scored ``chunk_size`` at a time."""

    num_proposals: int
    chunk_size: int  # = run.sir_chunk_size


@dataclass(frozen=True)
class LDConfig:
    """Langevin dynamics on the NCP energy of each group."""

    num_steps: int
    step_size: float
    step_scaling: Literal["prior_variance", "fixed"]  # the step per latent (see ncp/samplers/langevin.py)


@dataclass(frozen=True)
class SampleConfig:
    """Sampling from the base prior and the NCP prior (SIR and Langevin dynamics)."""

    num_samples: int
    batch_size: int
    temperature: float
    methods: tuple[Literal["sir", "ld"], ...]
    sir: SIRConfig
    ld: LDConfig
    grid_size: int  # = run.grid_size
    timed_batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class FIDConfig:
    """The FID feature network and the reference images."""

    features: Literal["domain", "inception"]
    domain_epochs: int
    reference_images: int | None
    bootstrap: int
    kid_subsets: int


@dataclass(frozen=True)
class MMDConfig:
    """Per-group latent MMD (Table 9)."""

    num_samples: int
    num_q: int | None
    pca_dim: int
    bandwidth_scales: tuple[float, ...]


@dataclass(frozen=True)
class NLLConfig:
    """Importance-weighted test NLL and the log Z estimate."""

    iw_samples: int
    num_images: int | None
    batch_size: int
    log_z_samples: int
    log_z_seeds: int


@dataclass(frozen=True)
class NeighboursConfig:
    """Fig. 4: NCP samples beside their nearest training images."""

    num_queries: int
    num_neighbours: int
    resize: int
    crop: int


@dataclass(frozen=True)
class EvaluateConfig:
    """FID, MMD, NLL and log Z settings, and Fig. 4's nearest neighbours."""

    fid: FIDConfig
    mmd: MMDConfig
    nll: NLLConfig
    neighbours: NeighboursConfig


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
    VAETrainConfig, NCEConfig and SampleConfig are filled from `run`, never from the science sections)."""
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
    paper: PaperConfig
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
            paper=_build(PaperConfig, params["paper"]),
            data=_build(DataConfig, params["data"]),
            vae=VAEConfig.from_section(params["vae"], params["data"]["name"]),
            cache=_build(CacheConfig, params["cache"]),
            nce=_build(NCEConfig, params["nce"]),
            sample=_build(SampleConfig, params["sample"]),
            evaluate=_build(EvaluateConfig, params["evaluate"]),
        )


def num_latent_groups(vae_section: dict) -> int:
    """How many latent groups (and so NCE classifiers) the configured backbone has (no torch needed)."""
    if vae_section.get("arch", "nvae") == "nvae":
        return num_groups_of_args(vae_section.get("nvae", {}))
    return 1
