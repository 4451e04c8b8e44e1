"""`ncp paper-table <tableN>`: one of the paper's tables, with ours beside the paper's published values.

Each table reads the metric files of the runs that supply its rows: this run, and the sub-experiments
`paper.experiments` names for it (see ncp/workflow/study.py). A paper row without a figure of ours is kept, with
ours left blank, and listed under the table as missing, so a table never fails for want of a
paper-scale run. Tables 1-6 compare single figures; Table 7 is FID against the number of latent groups;
Table 8 is FID, time and memory against SIR proposals and LD iterations; Table 9 is MMD per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ncp import model_origin
from ncp.config import ExperimentConfig
from ncp.paper_results import paper_results
from ncp.provenance import PROVENANCE_KEY, describe, provenance
from ncp.reporting import fid_summary, lookup, nll_protocol, nll_summary, write_table
from ncp.runtime import read_json

COMPARISON_TABLES = ("table1", "table2", "table3", "table4", "table5", "table6")
METRIC_FILES = ("fid.json", "nll.json", "mmd.json")  # the files whose provenance a table lists


class Run:
    """The metric files of one experiment (a folder results/<experiment>/metrics), read on demand."""

    def __init__(self, metrics_dir: Path):
        self.metrics_dir = Path(metrics_dir)
        self.label = self.metrics_dir.parent.name  # a sub-experiment's overlay name, or the experiment

    def read(self, name: str) -> dict | None:
        """The JSON metric file ``name`` (e.g. `fid.json`), or None where this run has none."""
        path = self.metrics_dir / name
        return read_json(path) if path.is_file() else None

    def summary(self) -> dict:
        """The figures `ours:` keys name (fid.*, nll.*), from whichever metric files this run has."""
        fid, nll = self.read("fid.json"), self.read("nll.json")
        return {"fid": fid_summary(fid) if fid else {}, "nll": nll_summary(nll) if nll else {}}

    def provenance_lines(self, names: Sequence[str]) -> list[str]:
        """One line per metrics file ``names`` this run has: the job, commit, params and seed that made it."""
        lines = []
        for name in names:
            record = self.read(name)
            if record is not None:
                lines.append(f"{self.label}/{name}: {describe(record.get(PROVENANCE_KEY))}")
        return lines

    def model_origin(self) -> dict:
        """Decoder and data of this run's VAE, from whichever metric files it has (ncp/model_origin.py)."""
        records = [self.read(name) for name in ("fid.json", "mmd.json", "nll.json")]
        records += [read_json(path) for path in sorted(self.metrics_dir.glob("fid/*.json"))]
        return model_origin.merge(record.get("model_origin") for record in records if record)

    def decoder(self) -> str | None:
        """This run's image decoder, e.g. "Gaussian" (None where no metric file says)."""
        return self.model_origin().get("decoder")

    def num_groups(self) -> int:
        """Latent groups of the run: one classifier metrics file each."""
        return len(list((self.metrics_dir / "nce").glob("group_*.json")))


def _notes(cfg: ExperimentConfig, runs: Sequence[Run], missing: list[str]) -> list[str]:
    notes = [
        f"ours: experiment `{cfg.experiment}`"
        + (f" and sub-experiments {', '.join(r.label for r in runs[1:])}" if len(runs) > 1 else "")
        + "; samples at temperature 1; the paper's setting differs unless the params are the paper's"
    ]
    if missing:
        notes.append(
            "rows without a figure of ours (other models, or runs not made here): " + ", ".join(missing)
        )
    return notes


def spread_key(dotted: str | None) -> str | None:
    """The summary key of a figure's ±: `nll.X` -> `nll.X_se`, `fid.ncp_sir` -> `fid.fid_std.sir`."""
    if not dotted:
        return None
    section, _, name = dotted.partition(".")
    if section == "nll":
        return f"nll.{name}_se"
    if section == "fid":
        return f"fid.fid_std.{name.removeprefix('ncp_')}"
    return None


def comparison_table(paper: dict, runs: Sequence[Run], own_rows: bool) -> tuple[pd.DataFrame, list[str]]:
    """Tables 1-6: each paper row, ours (with its ±) from the run that supplies it, and ours - paper. A row
    naming a `run` takes that sub-experiment's figure; the others take this run's (``own_rows``: the table is
    in its `paper.tables`), else its first sub-experiment's (Table 2 from the default's single-group VAE)."""
    by_label = {run.label: run for run in runs[1:]}
    default_source = runs[0] if own_rows else (runs[1] if len(runs) > 1 else None)
    rows, missing = [], []
    for row in paper["rows"]:
        source = by_label.get(row["run"]) if "run" in row else default_source
        summary = source.summary() if source is not None else {}
        ours = lookup(summary, row.get("ours"))
        rows.append(
            {
                "model": row["model"],
                "paper": row["value"],
                "ours": ours,
                "ours ±": lookup(summary, spread_key(row.get("ours"))) if ours is not None else None,
                "ours - paper": None if ours is None else ours - row["value"],
                "ours from": source.label if ours is not None else "",
                "ours decoder": source.decoder() if ours is not None else "",
            }
        )
        if ours is None:
            missing.append(row["model"])
    return pd.DataFrame(rows), missing


def comparison_sources(paper: dict, runs: Sequence[Run], own_rows: bool) -> list[Run]:
    """The runs whose figures a comparison table shows (in row order, each once)."""
    by_label = {run.label: run for run in runs[1:]}
    default_source = runs[0] if own_rows else (runs[1] if len(runs) > 1 else None)
    sources = [by_label.get(row["run"]) if "run" in row else default_source for row in paper["rows"]]
    return list(dict.fromkeys(s for s in sources if s is not None))


def comparison_notes(paper: dict, runs: Sequence[Run], own_rows: bool) -> list[str]:
    """Tables 1-6's lines on errors: what ± means, and for NLL tables log Z over seeds and base - NCP."""
    notes = []
    for source in comparison_sources(paper, runs, own_rows):
        nll = source.read("nll.json")
        if nll is not None and any(str(row.get("ours", "")).startswith("nll.") for row in paper["rows"]):
            notes += [f"{source.label}: {line}" for line in nll_protocol(nll_summary(nll))]
    if any(str(row.get("ours", "")).startswith("fid.") for row in paper["rows"]):
        notes.append("FID ±: std over bootstrap resamples of both the samples and the reference")
    return notes


def groups_table(paper: dict, runs: Sequence[Run]) -> tuple[pd.DataFrame, list[str]]:
    """Table 7: FID of the base prior and of NCP against the number of latent groups."""
    table: dict[int, dict] = {}
    for row in paper["rows"]:
        table[row["groups"]] = {
            "groups": row["groups"],
            "paper NVAE": row["NVAE"],
            "paper NCP-VAE": row["NCP-VAE"],
        }
    for run in runs:
        fid = run.summary()["fid"]
        entry = table.setdefault(run.num_groups(), {"groups": run.num_groups()})
        ncp = fid.get("ncp_sir") if fid.get("ncp_sir") is not None else fid.get("ncp_ld")
        spread = fid.get("fid_std", {})
        entry.update(
            {
                "ours NVAE": fid.get("base"),
                "ours NVAE ±": spread.get("base"),
                "ours NCP-VAE": ncp,
                "ours NCP-VAE ±": spread.get("sir" if fid.get("ncp_sir") is not None else "ld"),
                "ours from": run.label,
                "ours decoder": run.decoder(),
            }
        )
    columns = [
        "groups",
        "paper NVAE",
        "paper NCP-VAE",
        "ours NVAE",
        "ours NVAE ±",
        "ours NCP-VAE",
        "ours NCP-VAE ±",
        "ours from",
        "ours decoder",
    ]
    frame = pd.DataFrame([table[k] for k in sorted(table)]).reindex(columns=columns)
    # ±: bootstrap spread of FID over the generated images (the paper reports none)
    missing = [f"{k} groups" for k in sorted(table) if pd.isna(frame.set_index("groups").loc[k, "ours NVAE"])]
    return frame, missing


def _gigabytes(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 1e9


def sampler_sweep_table(
    paper: dict, run: Run, variants: Sequence[str]
) -> tuple[pd.DataFrame, list[str], dict]:
    """Table 8: FID, time for 1 and 10 images and peak memory per SIR / LD setting; also the protocol
    (memory kind, sample count, feature network) the settings' records share."""
    table: dict[tuple[str, int], dict] = {}
    for row in paper["rows"]:
        table[(row["method"], row["steps"])] = {
            "method": row["method"],
            "steps": row["steps"],
            "paper FID": row["FID"],
            "paper 1 img (s)": row["time_1_s"],
            "paper 10 img (s)": row["time_10_s"],
            "paper memory (GB)": row["memory_gb"],
        }
    protocol = {}
    for variant in variants:
        record = run.read(f"fid/{variant}.json")
        if record is None:
            continue
        sampling = next(iter(record["sampling"].values()))
        sampler = sampling["sampler"]
        steps = sampling["setting"]["num_proposals" if sampler == "sir" else "num_steps"]
        protocol = {
            "memory_kind": sampling["memory_kind"],
            "num_samples": record["num_samples"],
            "features": record["features"],
        }
        scored = next(iter(record["methods"].values()))  # the one method a setting's FID file holds
        table.setdefault((sampler, steps), {"method": sampler, "steps": steps}).update(
            {
                "ours FID": scored["fid"],
                "ours FID ±": scored.get("fid_bootstrap_std"),
                "ours 1 img (s)": sampling.get("time_1_s"),
                "ours 10 img (s)": sampling.get(
                    "time_10_s"
                ),  # absent where sample.timed_batch_sizes lacks 10
                "ours memory (GB)": _gigabytes(
                    sampling.get("peak_memory_10_bytes") or sampling.get("peak_memory_bytes")
                ),
            }
        )
    order = sorted(table, key=lambda key: (key[0] != "sir", key[1]))  # SIR rows first, as the paper
    columns = ["method", "steps"] + [
        f"{who} {what}"
        for who in ("paper", "ours")
        for what in ("FID", "1 img (s)", "10 img (s)", "memory (GB)")
    ]
    columns.insert(columns.index("ours FID") + 1, "ours FID ±")  # bootstrap spread; the paper reports none
    frame = pd.DataFrame([table[k] for k in order]).reindex(columns=columns)
    missing = [f"{m} {s}" for m, s in order if table[(m, s)].get("ours FID") is None]
    return frame, missing, protocol


def mmd_table(run: Run) -> pd.DataFrame:
    """Table 9 for this run: MMD^2 of q against p and against p_NCP, per group and bandwidth scale, with errors."""
    rows = []
    for group in run.read("mmd.json")["per_group"]:
        scales = group.get("scales") or [
            {
                "scale": 1.0,
                "bandwidth": group["bandwidth"],
                "mmd2_q_p": group["q_p"],
                "mmd2_q_ncp": group["q_pncp"],
            }
        ]  # files written before the errors existed
        for entry in scales:
            rows.append(
                {
                    "group": group["group"],
                    "dim": group["dim"],
                    "scale": entry["scale"],
                    "bandwidth": entry["bandwidth"],
                    "q_p": entry["mmd2_q_p"],
                    "q_p ±": entry.get("mmd2_q_p_se"),
                    "q_pncp": entry["mmd2_q_ncp"],
                    "q_pncp ±": entry.get("mmd2_q_ncp_se"),
                    "z": entry.get("z_score"),
                }
            )
    return pd.DataFrame(rows)


def _mmd_notes(run: Run, mmd: dict, paper_rows: Sequence[dict]) -> list[str]:
    """Table 9's protocol lines: which run, sample counts, estimator, errors, and the per-scale tally."""
    notes = [
        f"ours: run `{run.label}` ({run.num_groups()} groups), {mmd['num_samples']} samples of p and of p_NCP "
        f"(by {mmd['ncp_method']}), {mmd.get('num_q', mmd['num_samples'])} of q per group; {mmd['estimator']}; "
        "bandwidth = scale x the median heuristic, shared by both columns"
    ]
    if "q_source" in mmd:
        notes.append(f"q: {mmd['q_source']}, {mmd['num_test_images']} images, {mmd['q_passes']} pass(es)")
    if "ncp_closer" in mmd:
        notes.append(
            "± = standard error (first-order, Bounliphone et al. 2016); z = (q_p - q_pncp) / its standard "
            "error, > 2: p_NCP closer to q than p is"
        )
        headline_first = sorted(mmd["ncp_closer"].items(), key=lambda item: -float(item[0]))
        notes += [
            f"scale {scale}: q_pncp below q_p in {t['lower']} of {t['groups']} groups, by more than 2 standard "
            f"errors in {t['closer']}, above by more than 2 in {t['farther']}"
            for scale, t in headline_first
        ]
    notes.append(
        "paper (CelebA-64, 5k samples): "
        + ", ".join(f"group {r['group']}: {r['q_p']} / {r['q_pncp']}" for r in paper_rows)
    )
    return notes


def run(
    name: str, cfg: ExperimentConfig, metrics_dirs: Sequence[Path], variants: Sequence[str], out_stem: Path
) -> None:
    """Write <out_stem>.md and .tex for paper table ``name`` from the runs' metric folders (this run first)."""
    paper = paper_results()["tables"]
    if name not in paper:
        raise ValueError(f"unknown paper table {name!r}; expected one of {', '.join(paper)}")
    runs = [Run(path) for path in metrics_dirs]
    if not runs:
        raise ValueError(f"`ncp paper-table {name}` needs --runs (this run's metrics folder first)")
    spec = paper[name]
    if name in COMPARISON_TABLES:
        own_rows = name in cfg.paper.tables
        frame, missing = comparison_table(spec, runs, own_rows=own_rows)
        notes = _notes(cfg, runs, missing) + comparison_notes(spec, runs, own_rows)
    elif name == "table7":
        frame, missing = groups_table(spec, runs)
        notes = _notes(cfg, runs, missing) + [
            "the paper's groups are on CelebA-64; ours are those this study ran"
        ]
    elif name == "table8":
        frame, missing, protocol = sampler_sweep_table(spec, runs[0], variants)
        notes = _notes(cfg, runs, missing) + [
            f"ours: one VAE and one set of classifiers for every setting; FID from {protocol.get('num_samples')} samples "
            f"({protocol.get('features')}); times are wall seconds to draw a batch of 1 and of 10 images after a "
            f"warm-up draw; memory: {protocol.get('memory_kind')} after the 10-image batch (the paper: GPU memory)"
        ]
    elif name == "table9":
        frame = mmd_table(runs[0])
        notes = _mmd_notes(runs[0], runs[0].read("mmd.json"), spec["rows"])
    else:
        raise ValueError(f"no builder for paper table {name!r}")
    sources = {"table7": runs, "table8": runs[:1], "table9": runs[:1]}.get(name) or comparison_sources(
        spec, runs, name in cfg.paper.tables
    )
    files = [f"fid/{variant}.json" for variant in variants] if name == "table8" else METRIC_FILES
    notes.append("made by (job, commit, params hash, seed, device, wall time):")
    notes += [line for run in sources for line in run.provenance_lines(files)]
    notes.append(f"this table: {describe(provenance(f'paper-table {name}', cfg, cfg.seed))}")
    # a stand-in in any run marks the whole table; the decoder note names this run's (rows say their own)
    run_origin = model_origin.merge(run.model_origin() for run in runs)
    run_origin["decoder"] = runs[0].decoder()
    write_table(frame, spec["title"], notes, Path(out_stem), run_origin)
