"""The results table and Tables 2/6 show the paired NLL difference with its full error, log Z over seeds,
the indicative-only flag, KID's spread, SIR's log Z_k spread and where every metrics file came from; the
summary keeps all provenance under one key, so two runs compare equal without it."""

from __future__ import annotations

import json

from ncp import paper_tables, tables
from ncp.config import ExperimentConfig
from ncp.provenance import strip_provenance


def _block(job: str, commit: str = "feedfacecafe0123456789") -> dict:
    return {
        "job": job,
        "git_commit": commit,
        "git_dirty": False,
        "params_sha256": "0123456789abcdef",
        "seed": 0,
        "device": "cpu (x86_64)",
        "wall_time_s": 42.0,
    }


def _nll(indicative: bool) -> dict:
    seeds = {
        "seed_std": 0.4 if indicative else 0.05,
        "delta_method_se": 0.1,
        "seeds": [1, 2, 3, 4, 5],
        "ess_fraction": 0.0074 if indicative else 0.2,
    }
    warnings = ["std of log Z over seeds is 0.400 (> the paper's 0.23)"] if indicative else []
    return {
        "base": {"nats": 80.0, "std_error": 1.5},
        "ncp": {"nats": 79.0, "std_error": 1.6, "std_error_images": 1.5},
        "base_minus_ncp": {"nats": 1.0, "std_error": 0.25, "std_error_images": 0.05},
        "log_z": 2.0,
        "log_z_se": 0.18,
        "log_z_ess": 370.0,
        "log_z_samples": 50000,
        "log_z_seeds": seeds,
        "indicative_only": indicative,
        "warnings": warnings,
        "iw_samples": 50,
        "num_images": 250,
        "provenance": _block("evaluate nll"),
    }


def _metrics(folder, indicative: bool, commit: str = "feedfacecafe0123456789"):
    fid = {
        "features": "domain",
        "num_samples": 100,
        "num_reference": 900,
        "methods": {
            m: {"fid": 10.0 + i, "fid_bootstrap_std": 0.5, "kid": 0.01, "kid_std": 0.002}
            for i, m in enumerate(("base", "sir", "recon"))
        },
        "sampling": {"sir": {"diagnostics": {"1": {"mean_ess": 5.0, "std_log_mean_r": 0.31}}}},
        "provenance": _block("evaluate fid", commit),
    }
    mmd = {
        "per_group": [],
        "num_samples": 10,
        "ncp_method": "sir",
        "provenance": _block("evaluate mmd", commit),
    }
    files = {"fid.json": fid, "mmd.json": mmd, "nll.json": _nll(indicative)}
    for k in (0, 1):
        files[f"nce/group_{k}.json"] = {
            "group": k,
            "final_loss": 1.3,
            "js_estimate": 0.0,
            "mean_log_r_q": 0.1,
            "mean_log_r_p": -0.1,
            "accuracy": 0.6,
        }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _cfg():
    return ExperimentConfig.from_params({"experiment": "main", "paper": {"tables": ["table6"]}})


def test_results_table_shows_paired_difference_spreads_flag_and_sources(tmp_path):
    metrics = _metrics(tmp_path / "results/main/metrics", indicative=True)
    tables.run(_cfg(), metrics, metrics / "summary.json", tmp_path / "tables", tmp_path / "figures")
    text = (tmp_path / "tables/results.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert "KID ±" in header and "NLL base − NCP" in header
    sir_row = next(_cells(line) for line in text.splitlines() if "NCP-VAE †, SIR" in line)
    assert sir_row[-3:-1] == ["1", "0.25"]  # the paired difference and its full error
    assert "† NCP NLL indicative only: std of log Z over seeds is 0.400" in text
    assert "log Z over 5 seeds: std 0.400 per seed" in text and "delta-method error 0.1;" in text
    assert "paired NLL(base) - NLL(NCP) = 1.000 ± 0.250" in text
    assert "group 1: 0.310" in text  # SIR's per-context log Z_k spread
    assert "nll.json: `evaluate nll`: commit feedfacecafe" in text
    assert "summary.json: `tables`" in text
    summary = json.loads((metrics / "summary.json").read_text())
    assert summary["fid"]["kid_std"]["sir"] == 0.002
    assert summary["nll"]["base_minus_ncp_se"] == 0.25 and summary["nll"]["indicative_only"] is True
    assert set(summary["provenance"]) >= {"fid.json", "mmd.json", "nll.json", "summary.json"}
    assert (tmp_path / "figures/fig5_log_z_k.png").is_file()


def test_no_flag_when_log_z_meets_the_criteria(tmp_path):
    metrics = _metrics(tmp_path / "results/main/metrics", indicative=False)
    tables.run(_cfg(), metrics, metrics / "summary.json", tmp_path / "tables", tmp_path / "figures")
    text = (tmp_path / "tables/results.md").read_text()
    assert "†" not in text and "NCP-VAE, SIR" in text


def test_two_runs_differ_only_in_their_provenance(tmp_path):
    summaries = []
    for run, commit in (("a", "aaaaaaaaaaaa"), ("b", "bbbbbbbbbbbb")):
        metrics = _metrics(tmp_path / run / "results/main/metrics", indicative=False, commit=commit)
        tables.run(_cfg(), metrics, metrics / "summary.json", tmp_path / run / "t", tmp_path / run / "f")
        summaries.append(json.loads((metrics / "summary.json").read_text()))
    assert summaries[0] != summaries[1]
    assert strip_provenance(summaries[0]) == strip_provenance(summaries[1])


def test_table6_notes_give_the_paired_difference_seed_spread_flag_and_sources(tmp_path):
    metrics = _metrics(tmp_path / "results/main/metrics", indicative=True)
    paper_tables.run("table6", _cfg(), [metrics], [], tmp_path / "table6")
    text = (tmp_path / "table6.md").read_text()
    ncp_row = next(_cells(line) for line in text.splitlines() if line.startswith("| NCP-VAE (ours)"))
    assert ncp_row[2:4] == ["79", "1.6"]  # ours, and its ± with log Z's error
    assert "main: paired NLL(base) - NLL(NCP) = 1.000 ± 0.250" in text
    assert "main: log Z over 5 seeds: std 0.400" in text
    assert "main: † NCP NLL indicative only" in text
    assert "main/nll.json: `evaluate nll`: commit feedfacecafe" in text
    assert "this table: `paper-table table6`" in text


def test_fig5_is_drawn_also_from_the_run_table9_names(tmp_path, monkeypatch):
    # The paper's Table 9 and Fig. 5(a) describe one 15-group model, not the 30-group run whose tables
    # these are: with `figure5_from`, Fig. 5 must show that run's classifiers and SIR, not this run's again.
    metrics = _metrics(tmp_path / "results/main/metrics", indicative=False)
    sub = tmp_path / "results/main/table7/groups_3/metrics"
    diagnostics = {str(k): {"mean_ess": 7.0 + k, "std_log_mean_r": 0.1} for k in range(3)}
    (sub / "nce").mkdir(parents=True)
    (sub / "fid.json").write_text(json.dumps({"sampling": {"sir": {"diagnostics": diagnostics}}}))
    for k, loss in enumerate([1.1, 1.2, 1.3]):
        record = {
            "group": k,
            "final_loss": loss,
            "js_estimate": 0,
            "mean_log_r_q": 0,
            "mean_log_r_p": 0,
        }
        (sub / f"nce/group_{k}.json").write_text(json.dumps({**record, "accuracy": 0.5}))
    drawn = []
    real_plot = tables.plot_figure5

    def spy(groups, figures_dir, suffix="", title=None):
        drawn.append((suffix, groups, title))
        real_plot(groups, figures_dir, suffix, title)

    monkeypatch.setattr(tables, "plot_figure5", spy)
    tables.run(_cfg(), metrics, metrics / "summary.json", tmp_path / "t", tmp_path / "f", figure5_from=sub)
    assert [suffix for suffix, _, _ in drawn] == ["", "_table9_run"]
    assert [g["final_loss"] for g in drawn[0][1]] == [1.3, 1.3]  # this run's two groups
    assert [(g["final_loss"], g["sir_ess"]) for g in drawn[1][1]] == [(1.1, 7.0), (1.2, 8.0), (1.3, 9.0)]
    assert drawn[1][2].startswith("groups_3 (3 groups")
    for panel in ("loss", "ess", "log_z_k"):
        assert (tmp_path / f"f/fig5_{panel}.png").is_file() and (
            tmp_path / f"f/fig5_{panel}_table9_run.png"
        ).is_file()
