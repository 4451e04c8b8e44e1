"""Stage 5 (`ncp tables`): `metrics/summary.json`, the results table and the Fig. 5 plots.

Every table is built as a pandas frame and written as Markdown (tabulate) and LaTeX, with the protocol
underneath (sample counts, feature network, temperature, seed, the errors' meaning, and the provenance of
every metrics file behind it: job, git commit, params hash, seed; see ncp/provenance.py). The paper's own tables, with its values
(from `paper_results.yaml`, the one place those numbers live) beside ours, come from ncp/paper_tables.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ncp import model_origin
from ncp.config import ExperimentConfig
from ncp.data.stand_in import STAND_IN_WARNING
from ncp.provenance import PROVENANCE_KEY, describe, provenance
from ncp.reporting import fid_summary, nll_protocol, nll_summary, write_table
from ncp.runtime import atomic_savefig, read_json, write_json


def sir_spread_lines(summary: dict) -> list[str]:
    """A protocol line on SIR's per-context log Z_k: how far the sampled and the scored priors differ."""
    spreads = [(g["group"], g.get("sir_log_z_k_std")) for g in summary["nce"]["per_group"]]
    if not any(value is not None for _, value in spreads):
        return []
    listed = ", ".join(f"group {k}: {value:.3f}" for k, value in spreads if value is not None)
    return [
        "std over contexts of SIR's log Z_k(z_<k) (fig5_log_z_k.png): " + listed + "; samplers draw from "
        "prod_k r_k p_k / Z_k, the NLL scores r p / Z with one Z, so they agree only where these are ~0 "
        "(each value includes Monte Carlo noise of about 1 / sqrt(ESS))"
    ]


def provenance_lines(summary: dict) -> list[str]:
    """Protocol lines tracing each metrics file of a summary to its job, commit, params and seed."""
    blocks = summary.get(PROVENANCE_KEY, {})
    return [f"{name}: {describe(block)}" for name, block in sorted(blocks.items())]


def _nce_files(metrics_dir: Path) -> list[Path]:
    return sorted((metrics_dir / "nce").glob("group_*.json"), key=lambda p: int(p.stem.split("_")[1]))


def nce_per_group(nce_groups: list[dict], fid: dict) -> list[dict]:
    """Each group's classifier figures (on its test images) beside SIR's diagnostics for that group."""
    sir_stats = fid.get("sampling", {}).get("sir", {}).get("diagnostics", {})
    return [
        {
            "group": g["group"],
            "final_loss": g["final_loss"],
            "js_estimate": g["js_estimate"],
            "mean_log_r_q": g["mean_log_r_q"],
            "mean_log_r_p": g["mean_log_r_p"],
            "accuracy": g["accuracy"],
            "sir_ess": sir_stats.get(str(g["group"]), {}).get("mean_ess"),
            "sir_log_z_k_std": sir_stats.get(str(g["group"]), {}).get("std_log_mean_r"),
        }
        for g in nce_groups
    ]


def build_summary(cfg: ExperimentConfig, metrics_dir: Path) -> dict:
    """Collect every metric file of one run into the machine-readable summary."""
    metrics_dir = Path(metrics_dir)
    fid, mmd, nll = (read_json(metrics_dir / f"{name}.json") for name in ("fid", "mmd", "nll"))
    nce_files = _nce_files(metrics_dir)
    nce_groups = [read_json(path) for path in nce_files]
    sampling = fid.get("sampling", {})
    # every number's origin, under the one key a comparison of two runs drops
    origins = {
        f"{name}.json": record.get(PROVENANCE_KEY)
        for name, record in (("fid", fid), ("mmd", mmd), ("nll", nll))
    }
    origins |= {f"nce/{path.name}": g.get(PROVENANCE_KEY) for path, g in zip(nce_files, nce_groups)}
    origins["summary.json"] = provenance("tables", cfg, cfg.seed)
    run_origin = model_origin.merge(record.get("model_origin") for record in (fid, mmd, nll))
    return {
        # first, so no reader of the file misses it: the data were a synthetic stand-in (smoke runs)
        **({"data_warning": f"{STAND_IN_WARNING}: not real images"} if run_origin.get("synthetic") else {}),
        PROVENANCE_KEY: origins,
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "model_origin": run_origin,
        "fid": fid_summary(fid),
        "nll": nll_summary(nll),
        "mmd": {
            "per_group": [
                {
                    k: g.get(k)
                    for k in ("group", "q_p", "q_p_se", "q_pncp", "q_pncp_se", "z_score", "bandwidth", "dim")
                }
                for g in mmd["per_group"]
            ],
            "num_samples": mmd["num_samples"],
            "num_q": mmd.get("num_q"),
            "ncp_method": mmd["ncp_method"],
            "ncp_closer": mmd.get("ncp_closer"),
        },
        "nce": {"per_group": nce_per_group(nce_groups, fid)},
        "sampling": {
            name: {
                key: s.get(key)
                for key in (
                    "seconds_per_image",
                    "num_samples",
                    "peak_memory_bytes",
                    "memory_kind",
                    "time_1_s",
                    "time_10_s",
                    "setting",
                )
            }
            for name, s in sampling.items()
        },
    }


def results_frame(summary: dict) -> pd.DataFrame:
    """Base VAE vs NCP-VAE (and reconstructions) on every metric of this run."""
    fid, nll = summary["fid"], summary["nll"]
    sampling, spread, kid_spread = summary["sampling"], fid.get("fid_std", {}), fid.get("kid_std", {})
    ncp = "NCP-VAE" + (" †" if nll.get("indicative_only") else "")  # † : NLL indicative only (see below)

    def row(model, method, fid_value, nll_value=None, nll_se=None, gain=None, gain_se=None):
        return (
            model,
            decoder,
            fid_value,
            spread.get(method),
            fid["kid"].get(method),
            kid_spread.get(method),
            nll_value,
            nll_se,
            gain,
            gain_se,
            sampling.get(method, {}).get("seconds_per_image"),
        )

    paired = (nll.get("base_minus_ncp"), nll.get("base_minus_ncp_se"))
    decoder = summary.get("model_origin", {}).get("decoder")  # one VAE behind every row

    rows = [
        row("Base VAE (prior p)", "base", fid["base"], nll["base"], nll.get("base_se")),
        row(f"{ncp}, SIR", "sir", fid["ncp_sir"], nll["ncp"], nll.get("ncp_se"), *paired),
    ]
    if fid.get("ncp_ld") is not None:
        rows.append(row(f"{ncp}, LD", "ld", fid["ncp_ld"], nll["ncp"], nll.get("ncp_se"), *paired))
    rows.append(row("Base VAE-Recon (q)", "recon", fid["recon"]))
    columns = [
        "model",
        "decoder",
        "FID",
        "FID ±",
        "KID",
        "KID ±",
        "NLL (nats)",
        "NLL ±",
        "NLL base − NCP",
        "±",
        "s / image",
    ]
    return pd.DataFrame(rows, columns=columns)


def _finish(fig, ax, title: str | None) -> None:
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()


def plot_figure5(groups: list[dict], figures_dir: Path, suffix: str = "", title: str | None = None) -> None:
    """Fig. 5: (a) final classifier loss per group, (b) SIR effective sample size vs that loss, and beside it
    (c) the std over contexts of SIR's per-context log Z_k per group; files ``fig5_<panel><suffix>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([g["group"] for g in groups], [g["final_loss"] for g in groups], color="tab:blue")
    ax.axhline(1.3863, color="gray", linestyle="--", linewidth=1, label="2 log 2 (p = q)")
    ax.set_xlabel("latent group")
    ax.set_ylabel("final NCE loss L*")
    ax.legend(loc="lower right")
    _finish(fig, ax, title)
    atomic_savefig(fig, figures_dir / f"fig5_loss{suffix}.png", dpi=120)
    plt.close(fig)
    with_ess = [g for g in groups if g.get("sir_ess") is not None]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.scatter([g["final_loss"] for g in with_ess], [g["sir_ess"] for g in with_ess], color="tab:orange")
    for g in with_ess:
        ax.annotate(str(g["group"]), (g["final_loss"], g["sir_ess"]), fontsize=8)
    ax.set_xlabel("final NCE loss L*")
    ax.set_ylabel("SIR effective sample size")
    _finish(fig, ax, title)
    atomic_savefig(fig, figures_dir / f"fig5_ess{suffix}.png", dpi=120)
    plt.close(fig)
    # beside Fig. 5: how much SIR's per-context normaliser Z_k(z_<k) varies; sampling uses the locally
    # normalised prod_k r_k p_k / Z_k, the NLL scores r p / Z with one Z: they agree only where this is ~0
    with_spread = [g for g in groups if g.get("sir_log_z_k_std") is not None]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([g["group"] for g in with_spread], [g["sir_log_z_k_std"] for g in with_spread], color="tab:green")
    ax.set_xlabel("latent group")
    ax.set_ylabel("std over contexts of log Z_k")
    _finish(fig, ax, title)
    atomic_savefig(fig, figures_dir / f"fig5_log_z_k{suffix}.png", dpi=120)
    plt.close(fig)


def run(
    cfg: ExperimentConfig,
    metrics_dir: Path,
    summary_out: Path,
    tables_dir: Path,
    figures_dir: Path,
    figure5_from: Path | None = None,
) -> None:
    """Write the summary, the results table and Fig. 5 (the paper's tables: ncp/paper_tables.py).

    ``figure5_from``: the metrics folder of the sub-experiment ``paper.table9_from`` names; its Fig. 5 is
    drawn too (``fig5_<panel>_table9_run.png``): the paper's Table 9 and Fig. 5(a) describe one
    15-group model, not the 30-group run whose tables this is.
    """
    summary = build_summary(cfg, metrics_dir)
    write_json(summary, summary_out)
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    fid, nll = summary["fid"], summary["nll"]
    protocol = [  # every line a reader needs to judge the figures, and where each came from
        f"experiment `{cfg.experiment}`, seed {cfg.seed}; samples at temperature 1 (the quantitative protocol)",
        f"FID/KID: {fid['num_samples']} samples vs {fid['num_reference']} training images, features: {fid['features']}; "
        "FID ± = std over bootstrap resamples of both the samples and the reference; KID ± = std over "
        "clean-fid's random subsets",
        *nll_protocol(nll),
        f"SIR with {cfg.sample.sir.num_proposals} proposals per group; LD {cfg.sample.ld.num_steps} steps of size "
        f"{cfg.sample.ld.step_size} ({cfg.sample.ld.step_scaling} step scaling)",
        *sir_spread_lines(summary),
        "made by (job, commit, params hash, seed, device, wall time; full record in summary.json's provenance):",
        *provenance_lines(summary),
    ]
    write_table(
        results_frame(summary),
        f"Base VAE vs NCP-VAE ({cfg.experiment})",
        protocol,
        tables_dir / "results",
        summary["model_origin"],
    )
    plot_figure5(summary["nce"]["per_group"], figures_dir, title=f"{cfg.experiment} (this run)")
    if figure5_from is not None:
        figure5_from = Path(figure5_from)
        nce_groups = [read_json(path) for path in _nce_files(figure5_from)]
        groups = nce_per_group(nce_groups, read_json(figure5_from / "fid.json"))
        title = f"{figure5_from.parent.name} ({len(groups)} groups; Table 9's run)"  # results/<name>/metrics
        plot_figure5(groups, figures_dir, "_table9_run", title)
