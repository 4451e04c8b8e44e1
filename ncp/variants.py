"""Names of sampling runs: the samplers `base`, `sir`, `ld`, and Table 8's settings `sir_m<M>` (SIR with
M proposals) and `ld_t<T>` (Langevin dynamics with T steps).

The workflow planner (ncp/workflow/study.py) names the sweep's jobs with ``variant_name``; the sampling
stage (ncp/sample.py) reads a name back with ``apply_variant``. Pure Python, no torch.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ncp.config import SampleConfig

_VARIANT = re.compile(r"^(?:(base|sir|ld)|sir_m(\d+)|ld_t(\d+))$")
# The field of SampleConfig.sir / SampleConfig.ld that a Table 8 setting changes, and its name's tag.
_SWEPT = {"sir": ("num_proposals", "m"), "ld": ("num_steps", "t")}


def variant_name(sampler: str, value: int) -> str:
    """`("sir", 500)` -> `sir_m500`, `("ld", 7)` -> `ld_t7`."""
    return f"{sampler}_{_SWEPT[sampler][1]}{value}"


def parse_variant(name: str) -> tuple[str, dict[str, int]]:
    """`sir_m500` -> ("sir", {"num_proposals": 500}), `ld_t7` -> ("ld", {"num_steps": 7}): the sampler and
    the fields of its section of SampleConfig the setting changes; plain `base`/`sir`/`ld` change none."""
    match = _VARIANT.match(name)
    if not match:
        raise ValueError(f"unknown sampling method {name!r}; expected base, sir, ld, sir_m<M> or ld_t<T>")
    plain, proposals, steps = match.groups()
    if plain:
        return plain, {}
    if proposals:
        return "sir", {_SWEPT["sir"][0]: int(proposals)}
    return "ld", {_SWEPT["ld"][0]: int(steps)}


def apply_variant(sample: SampleConfig, name: str) -> tuple[str, SampleConfig]:
    """(sampler, ``sample`` with the setting ``name`` applied to that sampler's section)."""
    sampler, changes = parse_variant(name)
    if changes:
        sample = replace(sample, **{sampler: replace(getattr(sample, sampler), **changes)})
    return sampler, sample
