"""What both table stages (ncp/tables.py, ncp/paper_tables.py) share: the summaries of the metric files
(fid.json, nll.json) that tables and `ours:` keys read, and writing a table as Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ncp import model_origin
from ncp.data.stand_in import STAND_IN_WARNING
from ncp.runtime import atomic_write_text


def lookup(summary: dict, dotted: str | None) -> float | None:
    """The number at a dotted key of a summary (e.g. `fid.ncp_sir`), or None where there is none."""
    value: Any = summary
    for part in (dotted or "").split("."):
        if not part or not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def fid_summary(fid: dict) -> dict:
    """The FID part of the summary, from `metrics/fid.json`."""
    methods = fid["methods"]
    return {
        "base": methods.get("base", {}).get("fid"),
        "ncp_sir": methods.get("sir", {}).get("fid"),
        "ncp_ld": methods.get("ld", {}).get("fid"),
        "recon": methods.get("recon", {}).get("fid"),
        "fid_std": {name: m.get("fid_bootstrap_std") for name, m in methods.items()},
        "kid": {name: m.get("kid") for name, m in methods.items()},
        "kid_std": {name: m.get("kid_std") for name, m in methods.items()},
        "features": fid["features"],
        "num_samples": fid["num_samples"],
        "num_reference": fid["num_reference"],
    }


def nll_summary(nll: dict) -> dict:
    """The NLL part of the summary, from `metrics/nll.json` (files from before the paired difference and the
    log Z seeds existed give None for those keys)."""
    seeds = nll.get("log_z_seeds") or {}
    paired = nll.get("base_minus_ncp") or {}
    return {
        "base": nll["base"]["nats"],
        "base_se": nll["base"]["std_error"],
        "ncp": nll["ncp"]["nats"],
        "ncp_se": nll["ncp"]["std_error"],  # with log Z's error in quadrature
        "ncp_se_images": nll["ncp"].get("std_error_images"),
        "base_minus_ncp": paired.get("nats"),
        "base_minus_ncp_se": paired.get("std_error"),  # per-image pairs, log Z's error in quadrature
        "base_minus_ncp_se_images": paired.get("std_error_images"),
        "log_z": nll["log_z"],
        "log_z_se": nll["log_z_se"],
        "log_z_delta_method_se": seeds.get("delta_method_se"),
        "log_z_seed_std": seeds.get("seed_std"),
        "log_z_num_seeds": len(seeds["seeds"]) if "seeds" in seeds else None,
        "log_z_ess": nll["log_z_ess"],
        "log_z_ess_fraction": seeds.get("ess_fraction"),
        "log_z_samples": nll["log_z_samples"],
        "indicative_only": nll.get("indicative_only"),
        "warnings": nll.get("warnings", []),
        "iw_samples": nll["iw_samples"],
        "num_images": nll["num_images"],
        "units": "nats per image",
    }


def nll_protocol(nll: dict) -> list[str]:
    """Protocol lines for an NLL summary: log Z over seeds, the paired difference, and the flag."""
    lines = [
        f"NLL: {nll['num_images']} test images, {nll['iw_samples']} importance samples; NCP NLL includes -log Z, "
        f"log Z = {nll['log_z']:.3f} ± {nll['log_z_se']:.2g} from {nll['log_z_samples']} prior samples "
        f"(ESS {nll['log_z_ess']:.0f})"
    ]
    if nll.get("log_z_seed_std") is not None:
        lines.append(
            f"log Z over {nll['log_z_num_seeds']} seeds: std {nll['log_z_seed_std']:.3f} per seed (the paper's "
            f"criterion: <= 0.23) beside the delta-method error {nll['log_z_delta_method_se']:.2g}; the ± of log Z "
            "is the larger of that error and std / sqrt(seeds)"
        )
    if nll.get("base_minus_ncp") is not None:
        lines.append(
            f"paired NLL(base) - NLL(NCP) = {nll['base_minus_ncp']:.3f} ± {nll['base_minus_ncp_se']:.3f} nats "
            f"(same images and binarisations; per-image pairs ± {nll['base_minus_ncp_se_images']:.3f}, log Z's "
            "error in quadrature); NCP's NLL ± includes log Z's error"
        )
    if nll.get("indicative_only"):
        lines.append("† NCP NLL indicative only: " + "; ".join(nll["warnings"]))
    return lines


def write_table(
    frame: pd.DataFrame, title: str, protocol: list[str], stem: Path, run_origin: dict | None = None
) -> None:
    """Write ``frame`` as <stem>.md (title, table, protocol) and <stem>.tex; missing cells stay blank.
    A run on synthetic stand-in data says so in the title and the first note (ncp/model_origin.py)."""
    run_origin = run_origin or {}
    if run_origin.get("synthetic"):
        title = f"{STAND_IN_WARNING}: {title}"
    protocol = model_origin.notes(run_origin) + list(protocol)
    notes = "\n".join(f"- {line}" for line in protocol)
    cells = frame.astype(object).where(frame.notna(), None)  # tabulate leaves None blank, prints NaN as "nan"
    markdown = f"### {title}\n\n{cells.to_markdown(index=False, floatfmt='.4g', missingval='')}\n\n{notes}\n"
    atomic_write_text(markdown, stem.with_suffix(".md"))
    latex = frame.to_latex(index=False, float_format=lambda v: f"{v:.4g}", na_rep="--", caption=title)
    if run_origin.get("synthetic"):  # LaTeX readers see the caption and this comment
        latex = f"% {STAND_IN_WARNING}: not a measurement of real images\n{latex}"
    atomic_write_text(latex, stem.with_suffix(".tex"))
