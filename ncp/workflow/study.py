"""The experiments one params file's paper tables gather, and Table 8's sampling sweep.

Most rows of the paper's tables come from the run itself. Two tables need more:
- Tables 2 and 7 need other models (a single-group VAE; other group counts). `paper.experiments`
  names, per table, params overlays on this file; each becomes a sub-experiment of the same Snakemake
  DAG, under results/<experiment>/<table>/<overlay name>/, so one `snakemake` run builds them all.
- Table 8 sweeps SIR proposals and LD iterations. Those only change sampling, so the sweep reuses this
  run's VAE and classifiers: one sampling job (and one FID job) per setting, named like `sir_m500`.
This module is pure Python (no torch): the Snakefile and `ncp export-dvc` import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ncp.config import ConfigError, deep_merge, num_latent_groups, resolve_params, stage_params
from ncp.paper_results import paper_results
from ncp.variants import variant_name


@dataclass(frozen=True)
class Experiment:
    """One run of the DAG: its name (= its folder under results/), resolved params and overlay file."""

    name: str
    params: dict
    overlay: str | None = None  # the params overlay it adds to the main experiment's, if any
    table: str | None = None  # the paper table it supplies rows to, if it is a sub-experiment


def _read_overlay(path: str) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"paper.experiments: params overlay not found: {path}")
    content = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"paper.experiments: {path} must hold a mapping, not {type(content).__name__}")
    return content


def study_experiments(params: dict) -> list[Experiment]:
    """The main experiment first, then each sub-experiment of ``paper.experiments`` (params resolved)."""
    main = Experiment(params["experiment"], params)
    found = [main]
    for table, overlays in params["paper"]["experiments"].items():
        for path in overlays:
            overlay = _read_overlay(path)
            label = str(overlay.get("experiment") or Path(path).stem)
            sub = deep_merge(params, overlay)
            # a sub-experiment writes only metrics; it gathers no tables (and no sub-experiments) itself
            sub["paper"] = {"tables": [], "row": overlay.get("paper", {}).get("row") or label}
            sub["experiment"] = label
            resolved = resolve_params(sub)
            resolved["experiment"] = (
                f"{main.name}/{table}/{label}"  # its folder: results/<main>/<table>/<label>
            )
            if any(e.name == resolved["experiment"] for e in found):
                raise ConfigError(f"paper.experiments.{table}: two overlays are both named {label!r}")
            found.append(Experiment(resolved["experiment"], resolved, overlay=path, table=table))
    return found


def written_tables(params: dict) -> list[str]:
    """The paper tables a run writes: those its own figures fill (`paper.tables`), then those only its
    sub-experiments fill (e.g. Table 2 for the default, from the single-group VAE it runs)."""
    tables = list(params["paper"]["tables"])
    return tables + [
        t for t, overlays in params["paper"]["experiments"].items() if overlays and t not in tables
    ]


def sweep_variants(params: dict) -> list[str]:
    """Table 8's sampling settings as sample names (`sir_m<M>`, `ld_t<T>`); the run's own setting keeps
    its plain name (`sir`, `ld`), so it is not sampled twice."""
    sample, sweep = params["sample"], params["paper"]["table8"]
    same_count = sweep["num_samples"] in (None, sample["num_samples"])
    names = []
    for m in sweep["sir_num_proposals"]:
        own = same_count and "sir" in sample["methods"] and m == sample["sir"]["num_proposals"]
        names.append("sir" if own else variant_name("sir", m))
    for t in sweep["ld_num_steps"]:
        own = same_count and "ld" in sample["methods"] and t == sample["ld"]["num_steps"]
        names.append("ld" if own else variant_name("ld", t))
    return names


def table_runs(experiments: list[Experiment], table: str) -> list[str]:
    """The experiments whose metrics a paper table reads: this run first, then the table's sub-experiments."""
    return [experiments[0].name] + [e.name for e in experiments if e.table == table]


def table_metric_files(experiments: list[Experiment], table: str, variants: list[str]) -> list[str]:
    """The metric files (under results/) paper table ``table`` is built from: its Snakemake inputs."""
    main = f"results/{experiments[0].name}/metrics"
    if table == "table9":
        return [f"{main}/mmd.json"]
    if table == "table8":
        return [f"{main}/fid/{variant}.json" for variant in variants]
    runs = table_runs(experiments, table)
    if table == "table7":  # FID per run; its group count is its number of classifier metric files
        files = []
        for name in runs:
            groups = num_latent_groups(_by_name(experiments, name).params["vae"])
            files += [f"results/{name}/metrics/fid.json"]
            files += [f"results/{name}/metrics/nce/group_{k}.json" for k in range(groups)]
        return files
    # Tables 1-6: the files behind the rows' `ours:` keys (fid.* or nll.*), from this run where the table
    # is one of its own (`paper.tables`), and from the table's sub-experiments
    rows = paper_results()["tables"][table]["rows"]
    kinds = sorted({row["ours"].split(".")[0] for row in rows if row.get("ours")})
    own = table in experiments[0].params["paper"]["tables"]
    sources = runs if own else runs[1:]
    return [f"results/{name}/metrics/{kind}.json" for name in sources for kind in kinds]


def sharing_owner(experiments: list[Experiment], name: str, stage: str) -> str:
    """The first experiment whose params for ``stage`` equal ``name``'s: its outputs serve both (the
    data splits and FID reference features are computed once for a whole study)."""
    wanted = stage_params(_by_name(experiments, name).params, stage)
    return next(e.name for e in experiments if stage_params(e.params, stage) == wanted)


def _by_name(experiments: list[Experiment], name: str) -> Experiment:
    for experiment in experiments:
        if experiment.name == name:
            return experiment
    raise KeyError(f"no experiment named {name!r}")
