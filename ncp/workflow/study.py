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

from ncp.paper_results import paper_results
from ncp.params import ConfigError, deep_merge, num_latent_groups, resolve_params, stage_params
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


def _find_overlay(path: str, repo: str | Path | None) -> str:
    """``path`` as given when it exists from here, else under ``repo`` (a work directory elsewhere,
    `snakemake -d /scratch/run`, still finds the repository's params/ files)."""
    if Path(path).is_file() or repo is None or Path(path).is_absolute():
        return path
    in_repo = Path(repo) / path
    return str(in_repo) if in_repo.is_file() else path


def study_experiments(params: dict, repo: str | Path | None = None) -> list[Experiment]:
    """The main experiment first, then each sub-experiment of ``paper.experiments`` (params resolved).
    Overlay paths are relative to the working directory or, failing that, to ``repo``."""
    main = Experiment(params["experiment"], params)
    found = [main]
    for table, overlays in params["paper"]["experiments"].items():
        for given in overlays:
            path = _find_overlay(given, repo)
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


def overlay_study(params: dict, default_file: str | Path, overlay_files: list[str | Path]) -> dict:
    """``params`` (the default file with the overlays merged in, as Snakemake merges configfiles) with the
    default's study and run settings taken out: an overlay inherits the default's science, not its
    `paper` section (its tables, rows, sub-experiments and Table 8 sweep belong to the default experiment
    alone) nor its `run` section (sized for the small CPU default: 2 threads, a few GB, where the schema's
    defaults fit the paper's configs). With overlays given, both are what the overlays say; without, the
    default's.

    So `--configfile x.yaml` with `experiment: x` runs just x, unless x.yaml lists sub-experiments or a
    sweep of its own (what `paper` gave before an overlay file replaced the default).
    """
    default = Path(default_file).resolve()
    overlays = [Path(f) for f in overlay_files if Path(f).resolve() != default]
    if not overlays:
        return params
    own: dict = {"paper": {}, "run": {}}
    for path in overlays:
        content = yaml.safe_load(path.read_text()) or {}
        for section in own:
            if isinstance(content, dict) and isinstance(content.get(section), dict):
                own[section] = deep_merge(own[section], content[section])
    return {**params, **own}


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


def table9_run(experiments: list[Experiment]) -> str:
    """The experiment Table 9 (MMD per group) reads: `paper.table9_from` names a sub-experiment (the paper's
    Table 9 is consistent with its 15-group Fig. 5(a), so the CelebA-64 study pairs it with its 15-group
    Table 7 run); without it, this run."""
    wanted = experiments[0].params["paper"].get("table9_from")
    if not wanted:
        return experiments[0].name
    for experiment in experiments[1:]:
        if experiment.name.rsplit("/", 1)[-1] == wanted:
            return experiment.name
    labels = ", ".join(e.name.rsplit("/", 1)[-1] for e in experiments[1:]) or "none"
    raise ConfigError(f"paper.table9_from: no sub-experiment named {wanted!r} (sub-experiments: {labels})")


def table_runs(experiments: list[Experiment], table: str) -> list[str]:
    """The experiments whose metrics a paper table reads: this run first, then the table's sub-experiments
    (Table 9: the one run `table9_run` picks)."""
    if table == "table9":
        return [table9_run(experiments)]
    return [experiments[0].name] + [e.name for e in experiments if e.table == table]


def table_metric_files(experiments: list[Experiment], table: str, variants: list[str]) -> list[str]:
    """The metric files (under results/) paper table ``table`` is built from: its Snakemake inputs."""
    main = f"results/{experiments[0].name}/metrics"
    if table == "table9":
        return [f"results/{table9_run(experiments)}/metrics/mmd.json"]
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
