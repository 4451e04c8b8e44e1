"""Typed experiment configs: the frozen dataclasses each stage receives, never the raw params dict.

Built from params that `ncp/params.py` has overlaid, filled with the schema's defaults and validated.
The typed configs nest as the params do (``cfg.sample.sir.num_proposals`` is ``sample: sir:
num_proposals``), and their field names are the schema's.

The backbone sections (``vae.nvae``, ``vae.mlp``, ``vae.conv``) are the exception for defaults: the schema
lists their keys, types and meanings, but a key left out takes the backbone's own default (NVAE's
argparse defaults, the MLP / conv config classes), so that a checkpoint's arguments rebuild the same
model without the schema.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from ncp.params import ConfigError, resolve_params, with_run_settings

if TYPE_CHECKING:
    from ncp.models.conv_vae import ConvVAEConfig
    from ncp.models.mlp_vae import MLPVAEConfig
    from ncp.models.nvae.config import NVAEConfig

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
    grid_readjust_passes: int  # = run.grid_readjust_passes
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
    grid_readjust_passes: int
    mem_mb: dict


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
