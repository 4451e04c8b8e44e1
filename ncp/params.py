"""Reading params files: overlay them in order, fill the schema's defaults, validate, and cut out the
sections each stage reads.

`params.schema.yaml` (beside this file) is the one place that holds every parameter's default, type and
range; Snakemake validates `config` against it and `ncp <stage>` does the same here, so both see identical
values. The typed configs the stages receive are built from the result in `ncp/config.py`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ncp.models.nvae.config import num_groups_of_args

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


def with_run_settings(params: dict) -> dict:
    """The science sections with the run settings the stage modules read in place (those fields of
    VAETrainConfig, NCEConfig and SampleConfig are filled from `run`, never from the science sections)."""
    params = copy.deepcopy(params)
    run = params["run"]
    params["vae"]["train"]["checkpoint_every"] = run["checkpoint_every"]
    params["nce"]["checkpoint_every"] = run["nce_checkpoint_every"]
    params["sample"]["temperature"] = run["grid_temperature"]
    params["sample"]["grid_size"] = run["grid_size"]
    params["sample"]["grid_readjust_passes"] = run["grid_readjust_passes"]
    params["sample"]["sir"]["chunk_size"] = run["sir_chunk_size"]
    return params


def num_latent_groups(vae_section: dict) -> int:
    """How many latent groups (and so NCE classifiers) the configured backbone has (no torch needed)."""
    if vae_section.get("arch", "nvae") == "nvae":
        return num_groups_of_args(vae_section.get("nvae", {}))
    return 1
